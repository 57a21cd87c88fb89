"""Weighing the boundary net's vote with the initial net's (``fuse.boundary_weight``,
:func:`bafusion.fusion.decide.blend_scores`)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from bafusion.config import load_preset
from bafusion.fusion import FusionParams, load_nets_from_dir
from bafusion.fusion.decide import blend_scores, decide
from bafusion.fusion.scoring import boundary_steps, score

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_blend_scores_weighs_log_odds() -> None:
    sb = np.array([0.9, 0.2, 0.5, 0.99], np.float32)
    s0 = np.array([0.1, 0.2, 0.8, 0.5], np.float32)
    np.testing.assert_array_equal(blend_scores(sb, s0, 1.0), sb)  # the paper: replace
    np.testing.assert_allclose(blend_scores(sb, s0, 0.0), s0, atol=1e-6)
    half = blend_scores(sb, s0, 0.5)
    np.testing.assert_allclose(half[:2], [0.5, 0.2], atol=1e-6)  # opposite votes cancel; equal ones stay
    # log-odds, not probabilities: logit(0.8) / 2 = 0.693 -> sigmoid 2/3
    np.testing.assert_allclose(half[2], 2 / 3, atol=1e-6)
    assert half.dtype == np.float32 and 0.5 < half[3] < 0.99


def test_decide_weighs_both_nets_in_the_band_only() -> None:
    rng = np.random.default_rng(4)
    scene = ndimage.gaussian_filter(rng.uniform(0, 255, (96, 112)), 0.8)
    blur = ndimage.gaussian_filter(scene, 3.0)
    yy, xx = np.mgrid[:96, :112]
    inside = (yy - 48) ** 2 + (xx - 56) ** 2 < 30**2
    ga = np.round(np.where(inside, scene, blur)).astype(np.uint8)
    gb = np.round(np.where(inside, blur, scene)).astype(np.uint8)
    nets = load_nets_from_dir("default", "cpu")
    p1 = FusionParams(working_min=0, boundary_weight=1.0)
    p5 = FusionParams(working_min=0, boundary_weight=0.5)
    s0, _, near, s1_paper, _ = decide(ga, gb, nets, p1)
    s0b, _, near_b, s1, _ = decide(ga, gb, nets, p5)
    np.testing.assert_array_equal(s0, s0b)
    np.testing.assert_array_equal(near, near_b)
    assert near.sum() > 500  # a band to test on
    np.testing.assert_array_equal(s1[~near], s0[~near])
    sb = score(nets.boundary, ga, gb, nets.patch_boundary, p1, boundary_steps(p1, nets.patch_boundary)[0],
               mask=near, device="cpu")
    np.testing.assert_array_equal(s1_paper[near], sb[near])
    np.testing.assert_allclose(s1[near], blend_scores(sb[near], s0[near], 0.5), atol=1e-6)
    assert np.abs(s1[near] - s1_paper[near]).max() > 0.05  # the weight changes the band's scores


def test_paper_preset_replaces() -> None:
    assert load_preset("paper")["fuse"]["boundary_weight"] == 1.0
    with pytest.raises(Exception, match="boundary_weight"):
        FusionParams(boundary_weight=1.5)
