"""MLflow glue: one place that resolves the tracking URI and logs a pipeline step as a run.

- The URI is ``$MLFLOW_TRACKING_URI`` when set; otherwise ``sqlite:///<repo root>/mlflow.db``
  where the repo root is ``$DVC_ROOT`` (set by DVC, also for ``dvc exp run --temp`` whose
  working copy is deleted afterwards), else the nearest folder above the working directory
  holding ``dvc.yaml`` or ``Snakefile``, else the working directory.
- A fresh sqlite database is created (and migrated) once, under a file lock, so that
  parallel Snakemake jobs never race on alembic migrations.
- ``BAFUSION_MLFLOW=0`` (or ``tracking.enabled: false`` in params) turns logging off.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

EXPERIMENT = "bafusion"

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def repo_root(start: Path | None = None) -> Path:
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "dvc.yaml").exists() or (d / "Snakefile").exists():
            return d
    return here


def tracking_uri(start: Path | None = None) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{repo_root(start) / 'mlflow.db'}"


def enabled() -> bool:
    return os.environ.get("BAFUSION_MLFLOW", "1").lower() not in ("0", "false", "no", "off")


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are kept as values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def ensure_db(uri: str | None = None) -> str:
    """Create and migrate the sqlite store once, serialised by a lock file beside it."""
    uri = uri or tracking_uri()
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
        lock = db.with_name(db.name + ".lock")
        with open(lock, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                from mlflow.tracking import MlflowClient

                # Creating the client's store runs the schema migrations when needed.
                client = MlflowClient(tracking_uri=uri)
                if client.get_experiment_by_name(EXPERIMENT) is None:
                    with contextlib.suppress(Exception):  # another process may have won
                        client.create_experiment(EXPERIMENT)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
    return uri


def git_commit(root: Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root or repo_root(), capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class _NullRun:
    """Stands in for a run when tracking is off, so callers need no ``if``."""

    info = None

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def set_tag(self, key: str, value: Any) -> None:
        pass


class _Run:
    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        self.client.log_metric(self.run_id, key, float(value), step=step or 0)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, float(v), ts, step or 0) for k, v in metrics.items()]
        )

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tag(self, key: str, value: Any) -> None:
        self.client.set_tag(self.run_id, key, str(value))


@contextlib.contextmanager
def stage_run(stage: str, params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None) -> Iterator[Any]:
    """Log one pipeline step as an MLflow run: flattened params, tags, duration, status.

    Yields an object with ``log_metric``/``log_metrics``/``log_artifact``/``set_tag``.
    Uses ``MlflowClient`` (not the fluent API) so nothing leaks between runs in one process.
    """
    if not enabled():
        yield _NullRun()
        return
    from mlflow.tracking import MlflowClient
    from mlflow.entities import Param

    uri = ensure_db()
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(EXPERIMENT)
    all_tags = {"stage": stage, "mlflow.runName": stage}
    commit = git_commit()
    if commit:
        all_tags["git_commit"] = commit
    for var in ("DVC_EXP_NAME", "DVC_STAGE"):
        if os.environ.get(var):
            all_tags[var.lower()] = os.environ[var]
    all_tags.update({k: str(v) for k, v in (tags or {}).items()})
    run = client.create_run(exp_id, tags=all_tags, run_name=all_tags["mlflow.runName"])
    run_id = run.info.run_id
    flat = flatten(params or {})
    items = [Param(k, str(v)[:6000]) for k, v in flat.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])
    t0 = time.perf_counter()
    handle = _Run(client, run_id)
    try:
        yield handle
    except BaseException as e:
        handle.log_metric("duration_s", time.perf_counter() - t0)
        # Ctrl-C, or SIGTERM turned into SystemExit by the CLI (bafusion.cli): the job was
        # stopped, not broken; either way the run does not stay RUNNING.
        killed = isinstance(e, (KeyboardInterrupt, SystemExit))
        client.set_terminated(run_id, status="KILLED" if killed else "FAILED")
        raise
    handle.log_metric("duration_s", time.perf_counter() - t0)
    client.set_terminated(run_id, status="FINISHED")
