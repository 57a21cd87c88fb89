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
    assert _names(extras["pipeline"]) == PIPELINE_TOOLS
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
    monkeypatch.setattr(tracking, "_broken", None)
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
