"""Multi-scale scoring of the initial net (``fuse.scales``, ``fuse.scale_rule``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bafusion.data.composite import defocus
from bafusion.errors import UserError
from bafusion.fusion import (
    FusionParams,
    combine_scales,
    fuse_images,
    load_nets_from_dir,
    score,
    score_multiscale,
)
from bafusion.io import RGB2GRAY


def test_combine_rules() -> None:
    full = np.array([[3.0, -0.5, 0.2]], np.float32)
    coarse = np.array([[-1.0, -4.0, 0.6]], np.float32)
    assert np.allclose(combine_scales([full, coarse], "confident"), [[3.0, -4.0, 0.6]])
    assert np.allclose(combine_scales([full, coarse], "mean"), [[1.0, -2.25, 0.4]])
    # fill: the full scale where it is confident (|z| >= 2), the mean elsewhere.
    assert np.allclose(combine_scales([full, coarse], "fill", 2.0), [[3.0, -2.25, 0.4]])


@pytest.mark.parametrize("bad", [(0.5,), (1.0, 0.0), (1.0, 1.5), (), 1.0])
def test_scales_must_include_one_and_lie_in_range(bad: object) -> None:
    with pytest.raises(UserError, match="scales"):
        FusionParams(scales=bad)  # type: ignore[arg-type]


def test_scales_are_sorted_and_rule_checked() -> None:
    assert FusionParams(scales=[0.25, 1, 0.5]).scales == (1.0, 0.5, 0.25)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="scale_rule"):
        FusionParams(scale_rule="vote")


def _strong_blur_pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A photo at twice its size (as a camera's larger file would show it: little detail per
    32-pixel patch) with a disc defocus of radius 12 px outside an ellipse in A and inside in B."""
    from skimage import data
    from skimage.transform import rescale

    g0 = data.astronaut().astype(np.float64) @ RGB2GRAY
    g = rescale(g0, 2, order=3)[0:448, 256:768]
    h, w = g.shape
    yy, xx = np.mgrid[:h, :w]
    focus_a = ((yy - h / 2) ** 2 / (0.35 * h) ** 2 + (xx - w / 2) ** 2 / (0.3 * w) ** 2) < 1
    bl = defocus(g, 6.0, "disc")
    a = np.clip(np.where(focus_a, g, bl), 0, 255).astype(np.uint8)
    b = np.clip(np.where(focus_a, bl, g), 0, 255).astype(np.uint8)
    return a, b, focus_a


def test_multiscale_decides_better_where_the_blur_is_too_strong_for_one_scale() -> None:
    torch.manual_seed(0)
    nets = load_nets_from_dir("lytro-2026-11", "cpu")  # the nets the README's numbers are for
    a, b, truth = _strong_blur_pair()
    one = fuse_images(a, b, nets, FusionParams(scales=(1.0,)))
    multi = fuse_images(a, b, nets, FusionParams(scales=(1.0, 0.5, 0.25), scale_rule="confident", scale_min_side=32))
    acc = lambda m: float((m == truth).mean())  # noqa: E731
    # The initial net's map and the raw (refined, before small-region removal) decision.
    assert acc(multi.score_initial > 0.5) > acc(one.score_initial > 0.5) + 0.01
    assert acc(multi.decision_raw) > acc(one.decision_raw)
    assert acc(multi.decision) >= acc(one.decision) - 1e-3


def test_one_scale_is_the_plain_score_and_small_images_skip_coarse_scales() -> None:
    nets = load_nets_from_dir("lytro-2026-11", "cpu")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (96, 128), dtype=np.uint8)
    b = rng.integers(0, 256, (96, 128), dtype=np.uint8)
    p = FusionParams(scales=(1.0,))
    s = score(nets.initial, a, b, nets.patch_initial, p, p.initial_step)
    assert np.array_equal(score_multiscale(nets.initial, a, b, nets.patch_initial, p), s)
    # At 0.5 the pair is 48 x 64: below scale_min_side 256 it is skipped, with 32 it is used.
    skip = FusionParams(scales=(1.0, 0.5), scale_min_side=256)
    assert np.array_equal(score_multiscale(nets.initial, a, b, nets.patch_initial, skip), s)
    use = FusionParams(scales=(1.0, 0.5), scale_min_side=32)
    assert not np.array_equal(score_multiscale(nets.initial, a, b, nets.patch_initial, use), s)
    # At 0.25 (24 x 32) the pair is smaller than a 32-px patch: skipped whatever the bound.
    tiny = FusionParams(scales=(1.0, 0.25), scale_min_side=1)
    assert np.array_equal(score_multiscale(nets.initial, a, b, nets.patch_initial, tiny), s)


def test_scales_from_the_command_line_and_params(tmp_path) -> None:
    import argparse

    from bafusion.cli.fusion import _add_param_args, params_from_args

    ap = argparse.ArgumentParser()
    _add_param_args(ap)
    pf = tmp_path / "params.yaml"
    pf.write_text("fuse:\n  scales: [0.5, 1.0]\n  scale_rule: mean\n")
    p, _ = params_from_args(ap.parse_args(["--params-file", str(pf)]))
    assert p.scales == (1.0, 0.5) and p.scale_rule == "mean"
    p, _ = params_from_args(ap.parse_args(["--params-file", str(pf), "--scales", "1, 0.25", "--scale-rule", "fill"]))
    assert p.scales == (1.0, 0.25) and p.scale_rule == "fill"
    p, _ = params_from_args(ap.parse_args(["--params-json", '{"scales": [1, 0.5, 0.25]}']))
    assert p.scales == (1.0, 0.5, 0.25)
    with pytest.raises(UserError, match="scales"):
        params_from_args(ap.parse_args(["--params-json", '{"scales": 0.5}']))
