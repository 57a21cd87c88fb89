"""Shared fixtures. Real data lives in ``../shared/data`` beside the checkout (override with
``BAFUSION_SHARED_DATA``); tests that need it skip with a clear message when it is absent."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture(autouse=True)
def _no_params_yaml_note(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests run in the checkout, beside its params.yaml: the note of the commands given no
    params file, "./params.yaml is not read" (bafusion.cli.common.note_params_yaml_unread),
    would be in the stderr of every such command a test runs. Tests of the note request the
    fixture ``params_yaml_note``."""
    if "params_yaml_note" not in request.fixturenames:
        import bafusion.cli.common

        monkeypatch.setattr(bafusion.cli.common, "PARAMS_YAML", REPO / "tests" / "no-such-params.yaml")


@pytest.fixture
def params_yaml_note() -> None:
    """A test of the note that ./params.yaml is not read: the note is said (see _no_params_yaml_note)."""


def shared_data_dir() -> Path:
    return Path(os.environ.get("BAFUSION_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = shared_data_dir()
    if not d.is_dir():
        pytest.skip(f"real data not found at {d} (set BAFUSION_SHARED_DATA to use it)")
    return d


def mlflow_test_uri(base: Path) -> str:
    """The tests' MLflow store under pytest's ``base`` temporary folder (``getbasetemp()``)."""
    return f"sqlite:///{base / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def _isolated_mlflow(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never write into the developer's store from a test, nor read its settings: each test
    starts with the tests' own store and tracking as an unset ``$BAFUSION_MLFLOW`` leaves it
    (on: the store is given), whatever the developer's shell sets (``BAFUSION_MLFLOW=0`` failed
    35 of the tracking tests, ``MLFLOW_TRACKING_URI`` sent their runs to the developer's
    store). A test that wants tracking off, or another store, sets so itself; all is restored
    after it. A store that fails turns tracking off for the rest of the process
    (``bafusion.tracking._broken``, and ``$BAFUSION_MLFLOW=0`` for its child processes, set in
    ``os.environ`` directly): reset here too, so that no test passes or fails by the order."""
    from bafusion import tracking

    monkeypatch.setattr(tracking, "_broken", None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_test_uri(tmp_path_factory.getbasetemp()))
    # set, then removed: monkeypatch records it, so that after the test it removes what a failing
    # store set in os.environ directly, or puts back the developer's value
    monkeypatch.setenv("BAFUSION_MLFLOW", "1")
    monkeypatch.delenv("BAFUSION_MLFLOW")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a test module: deterministic, and far faster than two on a shared
    2-core machine (request it with ``pytestmark = pytest.mark.usefixtures(...)``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_tiny_nets(folder: Path, patch: int = 12) -> Path:
    """Untrained, seeded depth-8 initial and boundary nets for ``patch`` in ``folder``: fast
    stand-ins where a test checks the command, not the decision."""
    import torch

    from bafusion.nets.model import build_model, save_model

    torch.manual_seed(0)
    for kind in ("initial", "boundary"):
        save_model(build_model(8), folder / f"{kind}.pt", {"patch": patch})
    return folder


@pytest.fixture
def tiny_nets(tmp_path: Path) -> Path:
    """:func:`make_tiny_nets` in a fresh folder."""
    return make_tiny_nets(tmp_path / "nets")


@pytest.fixture
def pillow_decodes(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Pixel-data decodes of image files by Pillow from now on, per file name (a load with tiles)."""
    from PIL import ImageFile

    counts: dict[str, int] = {}
    load = ImageFile.ImageFile.load

    def counting(self):  # noqa: ANN001, ANN202 - Pillow's signature
        if self.tile:
            name = Path(getattr(self.fp, "name", "?")).name
            counts[name] = counts.get(name, 0) + 1
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting)
    return counts
