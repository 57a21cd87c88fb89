"""The pipeline's tools (Snakemake, DVC, MLflow) are the ``pipeline`` extra, not needed by the fusion tool."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PIPELINE_TOOLS = {"snakemake", "dvc", "mlflow"}


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_fusion_tool_installs_without_the_pipelines_tools() -> None:
    """`pip install bafusion` for the fuse tool installed Snakemake, DVC and MLflow (measured: the
    `.[test,slurm]` environment holds 202 distributions; fuse, fuse-dir and evaluate ran in one of
    36, pip and setuptools included; `pip install -e .` now installs 40): they are the `pipeline` extra
    now, which the README's pipeline command installs, and the test extra pulls in (the tests
    run the pipeline: the README's test command and .ci/run install `.[test,slurm]`)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert not _names(project["dependencies"]) & PIPELINE_TOOLS, project["dependencies"]
    assert _names(extras["pipeline"]) == PIPELINE_TOOLS | {"sqlalchemy"}  # MLflow's store, which tracking.py asks how it reads a URL
    assert "bafusion[pipeline]" in extras["test"]
    readme = (REPO / "README.md").read_text()
    pipeline_cmd, test_cmd = re.findall(r"^python3\.11 -m venv .*$", readme, re.M)[:2]
    assert "pip install -e '.[pipeline]' && dvc repro" in pipeline_cmd, pipeline_cmd
    assert "pip install -e '.[test,slurm]' && pytest" in test_cmd, test_cmd
    assert "pip install -e '.[test,slurm]' && pytest" in (REPO / ".ci" / "run").read_text()


def test_a_command_asked_to_track_without_mlflow_says_to_install_the_pipeline_extra(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Without MLflow (bafusion installed for the fusion tool), a command asked to track its run
    (BAFUSION_MLFLOW=1, MLFLOW_TRACKING_URI, a project folder) warned "MLflow tracking store
    ...: No module named 'mlflow'", as if the store had failed. It now says that MLflow is not
    installed and how to install it, once, and the work goes on untracked."""
    from bafusion import tracking

    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` fails, as where it is not installed
    monkeypatch.setenv("BAFUSION_MLFLOW", "1")
    monkeypatch.setenv(tracking.PARENT_ENV, "0123456789abcdef")  # as in a Snakemake job of a tracked run
    capsys.readouterr()
    with tracking.stage_run("fuse", {"fuse": {"a": 1}}) as run:
        run.log_metrics({"x": 1.0})
    tracking.end_invocation(True)
    with tracking.stage_run("evaluate") as run:
        run.log_metrics({"x": 1.0})
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "bafusion: warning: MLflow is not installed, so this run is not tracked: pip install 'bafusion[pipeline]' "
        "installs the pipeline's tools (BAFUSION_MLFLOW=0 turns tracking off)"], err


def test_the_fusion_tool_runs_without_the_pipelines_tools(tmp_path: Path) -> None:
    """Nothing held that the fusion tool keeps working without Snakemake, DVC and MLflow (an
    ``import mlflow`` added at the top of a fusion module passed every test, while ``bafusion
    fuse`` then failed where ``pip install bafusion`` is all there is): with the three made
    unimportable, every module of the package imports and ``fuse`` fuses a pair."""
    import subprocess

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (48, 40), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    script = (
        "import importlib, pkgutil, sys\n"
        "for name in ('mlflow', 'dvc', 'snakemake'):\n"
        "    sys.modules[name] = None  # import fails, as where it is not installed\n"
        "import bafusion\n"
        "for m in pkgutil.walk_packages(bafusion.__path__, 'bafusion.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "from bafusion.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("MLFLOW_", "BAFUSION_"))}
    r = subprocess.run([sys.executable, "-c", script, "fuse", "a.png", "b.png", "-o", "F.png", "--device", "cpu"],
                       cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO / "src")}, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert (tmp_path / "F.png").is_file()
