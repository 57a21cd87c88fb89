"""Shared fixtures. Real data lives in ``../shared/data`` beside the checkout (override with
``BAFUSION_SHARED_DATA``); tests that need it skip with a clear message when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def shared_data_dir() -> Path:
    return Path(os.environ.get("BAFUSION_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = shared_data_dir()
    if not d.is_dir():
        pytest.skip(f"real data not found at {d} (set BAFUSION_SHARED_DATA to use it)")
    return d


@pytest.fixture(autouse=True)
def _isolated_mlflow(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never write into the developer's mlflow.db from a test."""
    if "MLFLOW_TRACKING_URI" not in os.environ:
        db = tmp_path_factory.getbasetemp() / "mlflow.db"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
