"""The docstring examples of the package run with the tests: ``pytest --doctest-modules
src/bafusion`` stopped at collection ("import file mismatch": ``bafusion/metrics.py`` puts
:mod:`bafusion.evaluation.metrics` in its own place in ``sys.modules``), so nothing ran them.
The repository's ``conftest.py`` leaves that file out (its examples are the module's it names)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "bafusion"


def _with_examples() -> list[str]:
    """The package's files with an example that runs (a ``>>>`` line without ``+SKIP``)."""
    out = []
    for f in sorted(PACKAGE.rglob("*.py")):
        lines = [x for x in f.read_text(encoding="utf-8").splitlines() if x.lstrip().startswith(">>>")]
        if any("+SKIP" not in x for x in lines):
            out.append(f.relative_to(REPO).as_posix())
    return out


def test_the_docstring_examples_are_collected_and_pass(tmp_path: Path) -> None:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", "--doctest-modules",
                        "src/bafusion"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    summary = r.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and not re.search(r"\d+ (failed|errors?)\b", summary), out
    passed = {m.group(1) for m in re.finditer(r"^PASSED (\S+?\.py)::", r.stdout, re.M)}
    expected = _with_examples()
    assert expected and passed == set(expected), (expected, out)
