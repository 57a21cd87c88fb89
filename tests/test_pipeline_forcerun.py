"""Under Snakemake: training progress reaches the console, logs stay clean, and a forced rerun
of a training rule (-R / --forcerun) trains from scratch instead of "resuming" a finished run."""

from __future__ import annotations

from pathlib import Path

import pytest
from pipeline_project import make_project, run

pytestmark = pytest.mark.slow


def test_forcerun_retrains_and_progress_reaches_the_console(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", git=False)
    first = run(["snakemake", "--cores", "2", "train_initial"], project)
    console = first.stdout + first.stderr
    assert "bafusion train: initial epoch 1/1 " in console, console[-3000:]  # not only in the log
    log = (project / "logs" / "train_initial.log").read_text()
    assert "initial epoch 1/1 " in log and "\r" not in log
    assert "training from scratch" not in log

    again = run(["snakemake", "train_initial", "--cores", "2", "-R", "train_initial"], project)
    console = again.stdout + again.stderr
    assert "belongs to a finished run" in console and "training from scratch" in console, console[-3000:]
    assert "initial epoch 1/1 " in console and "resuming" not in console
    assert "rule patches" not in console  # only the forced rule ran
