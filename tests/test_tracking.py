"""MLflow tracking of pipeline steps: a stopped step's run ends KILLED, a failed one FAILED,
never left RUNNING; SIGTERM to a ``bafusion`` command is turned into a clean exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bafusion import tracking


def _runs(uri: str) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(tracking.EXPERIMENT)
    return {r.info.run_name: r.info.status for r in client.search_runs([exp.experiment_id])}


def test_stage_run_status_on_success_failure_and_interrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with tracking.stage_run("ok"):
        pass
    with pytest.raises(ValueError):
        with tracking.stage_run("broken"):
            raise ValueError("bad input")
    with pytest.raises(KeyboardInterrupt):
        with tracking.stage_run("interrupted"):
            raise KeyboardInterrupt
    with pytest.raises(SystemExit):
        with tracking.stage_run("terminated"):
            raise SystemExit(143)
    assert _runs(uri) == {"ok": "FINISHED", "broken": "FAILED", "interrupted": "KILLED", "terminated": "KILLED"}


SCRIPT = """
import sys, time
from bafusion import cli, tracking
cli.install_sigterm_handler()
try:
    with tracking.stage_run("long"):
        print("ready", flush=True)
        time.sleep(60)
finally:
    print("cleaned up", flush=True)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_ends_the_run_as_killed(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    line = proc.stdout.readline()
    assert line.strip() == "ready" and time.monotonic() < deadline
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert "cleaned up" in out
    assert _runs(uri) == {"long": "KILLED"}
