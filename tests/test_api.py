"""The public Python API (README "Python API"): ``from bafusion import fuse, load_model,
metrics, ...``, loaded lazily, and the same results as the functions it wraps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import bafusion
from bafusion.errors import UserError
from bafusion.fusion import FusionParams, fuse_images, fuse_stack, load_nets_from_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pair(tmp_path: Path) -> tuple[np.ndarray, np.ndarray, Path, Path]:
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)
    pa, pb = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(a).save(pa)
    Image.fromarray(b).save(pb)
    return a, b, pa, pb


def test_every_public_name_resolves() -> None:
    for name in bafusion.__all__:
        assert getattr(bafusion, name) is not None, name
        assert name in dir(bafusion)
    assert bafusion.metrics.__name__ == "bafusion.evaluation.metrics"
    assert bafusion.fuse.__doc__ and "Parameters" in bafusion.fuse.__doc__  # numpydoc
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        bafusion.nope  # noqa: B018


def test_import_bafusion_loads_nothing_heavy() -> None:
    code = "import sys, bafusion; print(sorted(m for m in ('torch', 'numpy', 'bafusion.fusion') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_fuse_equals_the_rule_on_arrays_and_on_paths(tmp_path: Path, tiny_nets: Path) -> None:
    a, b, pa, pb = _pair(tmp_path)
    nets = bafusion.load_model(tiny_nets, device="cpu")
    params = FusionParams(min_region=0.0)
    want = fuse_images(a, b, nets, params).fused
    assert np.array_equal(bafusion.fuse(a, b, model=nets, params=params), want)
    assert np.array_equal(bafusion.fuse(pa, pb, model=str(tiny_nets), device="cpu", params=params), want)
    assert np.array_equal(bafusion.fuse(pa, b, model=nets, params=params), want)  # a path and an array


def test_fuse_a_stack_follows_the_stack_rule(tmp_path: Path, tiny_nets: Path) -> None:
    a, b, _, _ = _pair(tmp_path)
    c = np.ascontiguousarray(a[::-1])
    nets = load_nets_from_dir(tiny_nets, "cpu")
    chain = bafusion.fuse(a, b, c, model=nets)
    assert np.array_equal(chain, fuse_stack([a, b, c], nets)[-1].fused)
    joint = bafusion.fuse(a, b, c, model=nets, params=FusionParams(stack_rule="joint"))
    assert joint.shape == a.shape and joint.dtype == np.uint8


def test_fuse_refuses_before_work(tmp_path: Path) -> None:
    a, b, _, _ = _pair(tmp_path)
    with pytest.raises(UserError, match="at least two"):
        bafusion.fuse(a)
    with pytest.raises(UserError, match="size"):
        bafusion.fuse(a, b[:20])
    with pytest.raises(UserError, match="align must be one of"):
        bafusion.fuse(a, b, align="affine")
    with pytest.raises(UserError, match="missing.png"):
        bafusion.fuse(a, tmp_path / "missing.png")
