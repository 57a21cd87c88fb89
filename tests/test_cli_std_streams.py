"""The commands with a failing standard output (``> /dev/full``) or a closed standard error
(``2>&-``), run as a user runs them: a process of its own, with and without PYTHONUNBUFFERED."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SRC = Path(__file__).resolve().parents[1] / "src"


def _env(unbuffered: bool) -> dict[str, str]:
    """A user's environment (no PYTHONUNBUFFERED: stdout is buffered) or a CI's (PYTHONUNBUFFERED=1)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env.update(PYTHONPATH=str(SRC), BAFUSION_MLFLOW="0")
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.mark.skipif(sys.platform == "win32", reason="closes fd 2 in the child (preexec_fn)")
@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
def test_a_closed_standard_error_does_not_write_into_the_result(tmp_path: Path, unbuffered: bool) -> None:
    """`metrics A B F --format json 2>&- > m.json` on constant images put its four "undefined"
    warnings before the JSON (Python sets sys.stderr to None, and print(file=None) writes to
    stdout), and `count --params nope.yaml 2>&-` printed its error line to stdout: the result
    on stdout is now the result alone (the diagnostics go nowhere, as the user asked)."""
    for name in ("A", "B", "F"):
        Image.fromarray(np.full((64, 64), 128, dtype=np.uint8)).save(tmp_path / f"c-{name}.png")

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bafusion", *argv], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, text=True, cwd=tmp_path, env=_env(unbuffered), timeout=300,
                              preexec_fn=lambda: os.close(2))  # noqa: PLW1509 - a test's child only

    r = run("metrics", "c-A.png", "c-B.png", "c-F.png", "--format", "json")
    assert r.returncode == 0, r.stdout
    assert json.loads(r.stdout)["QCB"] is None, r.stdout  # the case that warns (a 0/0 ratio)
    r = run("count", "--params", "nope.yaml")
    assert r.returncode == 2 and r.stdout == "", r.stdout


@pytest.mark.skipif(sys.platform == "win32", reason="closes fds in the child (preexec_fn)")
def test_closed_standard_streams_are_not_taken_by_the_files_the_command_opens(tmp_path: Path) -> None:
    """With fds 0, 1 and 2 closed, the first files a command opened took their numbers (a lock
    file became "stdout"): main opens them on /dev/null first."""
    code = ("import os, sys\n"
            "from bafusion.cli import main\n"
            "rc = main(['--version'])\n"
            "with open(sys.argv[1], 'w') as fh:\n"
            "    fh.write(' '.join(os.path.realpath(f'/proc/self/fd/{fd}') for fd in (0, 1, 2)) + f' {fh.fileno()}')\n")
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("no /proc")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "fds")], env=_env(False), timeout=300, check=True,
                   preexec_fn=lambda: [os.close(fd) for fd in (0, 1, 2)])  # noqa: PLW1509 - a test's child only
    *std, own = (tmp_path / "fds").read_text().split()
    assert std == [os.devnull] * 3 and int(own) > 2, (std, own)
