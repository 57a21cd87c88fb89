"""benchmarks/compare_io.py finds the shared data beside the checkout, from any working folder."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def test_compare_io_reads_the_shared_data_beside_the_checkout_from_any_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """compare_io.py took ``../shared/data`` from the working folder: run from anywhere but the
    checkout it hashed no image at all (only the random arrays) and said nothing. It now takes
    ``shared/data`` beside the checkout, as the other benchmarks do."""
    checkout = tmp_path / "repo"
    (checkout / "benchmarks").mkdir(parents=True)
    shutil.copy(REPO / "benchmarks" / "compare_io.py", checkout / "benchmarks" / "compare_io.py")
    pairs = tmp_path / "shared" / "data" / "eval" / "set"
    pairs.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for side in "AB":
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(pairs / f"p-{side}.png")
    elsewhere = tmp_path / "elsewhere" / "deeper"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("BAFUSION_SHARED_DATA", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))  # dump() puts the package's folder first
    spec = importlib.util.spec_from_file_location("compare_io_under_test", checkout / "benchmarks" / "compare_io.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    hashes = module.dump("new", str(REPO / "src"))
    assert {"eval/set/p-A.png:read_image", "eval/set/p-B.png:gray_u8", "p-A.png:gff", "p-A.png:laplacian"} <= set(hashes)
    monkeypatch.setenv("BAFUSION_SHARED_DATA", str(tmp_path / "shared" / "data" / "eval"))
    assert "set/p-A.png:read_image" in module.dump("new", str(REPO / "src"))
