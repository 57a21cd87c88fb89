"""One snakemake run executing jobs in a project at a time (``.snakemake/bafusion-run.lock``).

Snakemake 9.17 and later delete the whole ``.snakemake/locks`` folder at the end of any run (a
dry run too), so Snakemake's own lock no longer kept a second run from rebuilding
data/prepared, data/composite and data/patches under a running training."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pipeline_project import make_project, run

from bafusion.cli.params_check import RUN_LOCK_FILE, run_lock


def test_a_second_snakemake_run_is_refused_while_one_executes_jobs(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The lock is held here, as a first run's onstart holds it while its jobs run: a second run
    that would execute jobs stops before any job (nothing made, no MLflow run opened) with one
    line naming the lock file, the holder and what to do; a dry run is not refused."""
    project = make_project(tmp_path / "p", git=False)
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    lock = project / ".snakemake" / RUN_LOCK_FILE
    with run_lock(project / ".snakemake") as held:
        assert held
        second = run(["snakemake", "--cores", "1", "prepare"], project, check=False)
        said = second.stdout + second.stderr
        assert second.returncode != 0, said[-3000:]
        assert f"error: {lock}: another snakemake run (process {os.getpid()}, running since " in said, said[-3000:]
        assert "Wait for it to end, or stop it" in said and "nothing to delete" in said, said[-3000:]
        assert "rule prepare" not in said and "Finished jobid" not in said, said[-3000:]
        assert not (project / "data" / "prepared").exists()
        assert not db.exists()  # refused before the parent run was opened
        dry = run(["snakemake", "-n", "--cores", "1", "prepare"], project)  # check=True: exit status 0
        assert "rule prepare" in dry.stdout + dry.stderr and str(lock) not in dry.stdout + dry.stderr
        # --nolock: the user asked for no lock of the working directory, so this one is not taken
        unlocked = run(["snakemake", "--nolock", "--cores", "1", "prepare"], project, check=False)
        assert unlocked.returncode == 0, (unlocked.stdout + unlocked.stderr)[-3000:]
        assert (project / "data" / "prepared").exists()
    assert not lock.exists()  # removed on release
