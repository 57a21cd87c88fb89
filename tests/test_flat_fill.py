"""Flat-region filling (``fuse.flat_level``, :func:`bafusion.fusion.decide.fill_flat`)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from scipy import ndimage

from bafusion.fusion import FusionParams, fuse_images, load_nets_from_dir
from bafusion.fusion.decide import fill_flat, window_mean
from bafusion.fusion.scoring import score_multiscale

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _document(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A page of dark 'text lines' (random strokes, 3 px high, 6 px gaps of blank paper):
    A sharp in the top half and blurred (sigma 2.5) below, B the other way round; and where
    the choice matters (the sources differ by more than 8 gray levels)."""
    rng = np.random.default_rng(seed)
    h, w = 160, 192
    page = np.full((h, w), 200.0)
    for y in range(8, h - 8, 9):
        x = 6
        while x < w - 10:
            n = int(rng.integers(3, 9))
            page[y : y + 3, x : x + n] = rng.uniform(40, 90, size=(3, n))
            x += n + int(rng.integers(1, 5))
    blur = ndimage.gaussian_filter(page, 2.5)
    top = np.zeros((h, w), bool)
    top[: h // 2] = True
    a = np.where(top, page, blur)
    b = np.where(top, blur, page)
    return a, b, top


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def test_fill_keeps_informed_scores_and_fills_flat_pixels_from_their_neighbours() -> None:
    h, w = 64, 96
    ga = np.full((h, w), 120.0)
    gb = ga.copy()
    gb[:, :20] += 200 * (np.indices((h, 20)).sum(0) % 2)  # a textured strip where A and B differ
    gb[:, -20:] += 200 * (np.indices((h, 20)).sum(0) % 2)
    s = np.zeros((h, w), np.float32)
    s[:, :20] = 1.0  # the strips vote A ...
    s[:, -20:] = 1.0
    # ... the flat middle (A == B) votes B
    out = fill_flat(s, ga, gb, level=6.0, sigma=16.0)
    assert out.dtype == np.float32 and out.shape == s.shape
    assert out[:, 2:18].min() > 0.9  # informed pixels keep their score
    assert out[:, 40:56].min() > 0.6  # the flat middle takes the strips' decision (it voted 0)
    assert 0.0 <= out.min() and out.max() <= 1.0
    # sources that differ nowhere: nothing to fill from, the score is kept
    np.testing.assert_array_equal(fill_flat(s, ga, ga, 6.0, 16.0), s)
    with pytest.raises(ValueError, match="level"):
        fill_flat(s, ga, gb, 0.0, 16.0)


def test_decide_applies_the_fill_as_documented() -> None:
    """s0 is the net's score filled; the Eq. 1 mean is that of this s0; s1 is filled again
    after the boundary net; without refinement s1 is s0; flat_level 0 is the paper's rule."""
    decide_mod = sys.modules["bafusion.fusion.decide"]
    a, b, _ = _document()
    ga, gb = _u8(a), _u8(b)
    nets = load_nets_from_dir(None, "cpu")
    p0 = FusionParams(flat_level=0)
    p6 = FusionParams(flat_level=6.0, flat_sigma=16.0)
    s0_ref = score_multiscale(nets.initial, ga, gb, nets.patch_initial, p0, device=nets.device)
    s0, mean, near, s1, _ = decide_mod.decide(ga, gb, nets, p0)
    np.testing.assert_array_equal(s0, s0_ref)
    np.testing.assert_array_equal(mean, window_mean(s0_ref, p0.l))
    f0, fmean, fnear, fs1, _ = decide_mod.decide(ga, gb, nets, p6)
    np.testing.assert_array_equal(f0, fill_flat(s0_ref, ga, gb, 6.0, 16.0))
    np.testing.assert_array_equal(fmean, window_mean(f0, p6.l))
    np.testing.assert_array_equal(fnear, (fmean > p6.low) & (fmean < p6.high))
    assert fnear.any() and fs1.dtype == np.float32 and 0.0 <= fs1.min() and fs1.max() <= 1.0
    assert not np.array_equal(fs1, f0)  # the boundary net rescored, then filled again
    _, _, _, n1, _ = decide_mod.decide(ga, gb, nets, FusionParams(flat_level=6.0, refine=False))
    np.testing.assert_array_equal(n1, f0)


def test_fill_puts_a_real_page_of_text_on_the_right_source(shared_data) -> None:
    """savic-12 (real, ../shared): a tilted page, A focused on its upper part, B on its lower
    part (plain to see). Without the fill the blank paper between the lines votes B and half
    of the upper part goes to B; with it the upper part goes to A."""
    from bafusion.io import read_image

    folder = shared_data / "eval" / "real"
    a, b = read_image(folder / "savic-12-A.jpg"), read_image(folder / "savic-12-B.jpg")
    nets = load_nets_from_dir(None, "cpu")
    share = {}
    for wm in (0, 512):  # at its own size, and decided upscaled (fuse.working_min 512, the default)
        for level in (0.0, 6.0):
            dm = fuse_images(a, b, nets, FusionParams(flat_level=level, working_min=wm)).decision
            h = dm.shape[0]
            share[wm, level] = (float(dm[: int(0.55 * h)].mean()), float(1 - dm[int(0.8 * h) :].mean()))
    # measured: upper part to A 0.53 -> 0.68 at its own size, 0.77 -> 0.85 upscaled
    assert share[0, 6.0][0] > share[0, 0.0][0] + 0.1, share
    assert share[512, 6.0][0] > share[512, 0.0][0] + 0.05, share
    # the lower part stays B (0.98 -> 1.00, 0.94 -> 0.96)
    assert share[0, 6.0][1] >= share[0, 0.0][1] - 0.01 and share[512, 6.0][1] >= share[512, 0.0][1] - 0.01, share


def test_the_paper_preset_keeps_it_off_and_the_cli_sets_it() -> None:
    import argparse

    from bafusion.cli.fusion import _add_param_args, params_from_args
    from bafusion.config import load_preset

    assert load_preset("paper")["fuse"]["flat_level"] == 0
    ap = argparse.ArgumentParser()
    _add_param_args(ap)
    p, _ = params_from_args(ap.parse_args(["--flat-level", "0", "--flat-sigma", "8"]))
    assert (p.flat_level, p.flat_sigma) == (0.0, 8.0)
    assert FusionParams().flat_level == 0  # an option: off by default (BENCHMARKS.md, "Flat-region filling")
