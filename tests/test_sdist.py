"""The source distribution (``python -m build --sdist``) holds what its README's commands need:
the sdist carried the test modules but not their conftests and helpers (collecting them failed:
``No module named 'conftest'``), and none of the pipeline (Snakefile, workflow/, params.yaml,
dvc.yaml), the benchmarks or the docs' figures. MANIFEST.in now grafts them in; the shipped nets
travel once (models/), and a wheel built from the sdist has them."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

#: Tracked files that the sdist leaves out, and why.
LEFT_OUT = {
    ".ci/run": "the project's CI script",
    ".ci/lowest.sh": "the lowest dependency versions' check, a developer's tool as .ci/run is",
    ".ci/lowest_constraints.py": "its helper",
    ".gitignore": "git's",
    ".dvc/.gitignore": "git's",
    "src/bafusion/models": "the symlink to models/, which the sdist carries itself",
}


def _tracked() -> list[str]:
    r = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        pytest.skip("not a git checkout (an unpacked sdist?): the tracked files are unknown")
    return r.stdout.splitlines()


@pytest.mark.slow
def test_the_sdist_holds_the_test_suite_and_the_pipeline(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")
    tracked = _tracked()
    tree = tmp_path / "tree"  # the tracked files only: not a developer's data/, .venv or caches
    for f in tracked:
        (tree / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, tree / f, follow_symlinks=False)
    code = "import sys; from setuptools import build_meta as b; print(b.build_sdist(sys.argv[1]))"
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "dist")], cwd=tree, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    sdist = tmp_path / "dist" / r.stdout.split()[-1]
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        members = {m.name.removeprefix(top + "/") for m in tar.getmembers() if not m.isdir()}
        tar.extractall(tmp_path / "unpacked", filter="data")
    missing = sorted(f for f in tracked if f not in members and f not in LEFT_OUT)
    assert not missing, missing
    for f in ("conftest.py", "tests/conftest.py", "tests/figure_panels.py", "Snakefile", "params.yaml",
              "dvc.yaml", "workflow/rules/common.smk", "models/default/initial.pt"):
        assert f in members, f
    extra = sorted(m for m in members - set(tracked)
                   if not (m.startswith("src/bafusion.egg-info/") or m in ("PKG-INFO", "setup.cfg")))
    assert not extra, extra  # no caches, build output or data
    assert sdist.stat().st_size < 12 * 2**20, sdist.stat().st_size  # the shipped nets (4.5 MB) once

    # the suite collects in the unpacked sdist (it failed on conftest and the helper modules)
    root = tmp_path / "unpacked" / top
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--co", "tests/test_fusion.py",
                        "tests/test_schema.py", "tests/test_shipped_model.py"], cwd=root, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and " collected" in r.stdout, (r.stdout + r.stderr)[-3000:]

    # and a wheel built from it has the shipped nets
    code = "import sys; from setuptools import build_meta as b; print(b.build_wheel(sys.argv[1]))"
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "wheel")], cwd=root, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    names = set(zipfile.ZipFile(tmp_path / "wheel" / r.stdout.split()[-1]).namelist())
    for name in ("default", "lytro-2026-11"):
        for f in ("initial.pt", "boundary.pt", "initial.json", "boundary.json"):
            assert f"bafusion/models/{name}/{f}" in names, (name, f)
    # PEP 561's marker: without it users' type checkers skipped bafusion's annotations
    assert "bafusion/py.typed" in names
