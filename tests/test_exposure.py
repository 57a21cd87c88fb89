"""Exposure matching before scoring (``fuse.exposure_match``, :mod:`bafusion.fusion.exposure`)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage import data

from bafusion.fusion import FusionParams, decision_accuracy, fuse_images, load_nets_from_dir
from bafusion.fusion.exposure import fit_exposure, match_exposure

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A and B (float, gray) of a disc of camera() over brick(), each focused on one layer
    (Gaussian sigma 3 for the other), and the true map (A focused)."""
    fg = data.camera().astype(np.float64)[::2, ::2]
    bg = data.brick().astype(np.float64)[::2, ::2]
    h, w = fg.shape
    yy, xx = np.mgrid[:h, :w]
    alpha = ndimage.gaussian_filter(((yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.3 * h) ** 2).astype(np.float64), 1.5)
    a = fg * alpha + ndimage.gaussian_filter(bg, 3) * (1 - alpha)
    b = ndimage.gaussian_filter(fg, 3) * alpha + bg * (1 - alpha)
    return a, b, alpha >= 0.5


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def test_the_fit_recovers_a_known_gain_and_offset_despite_the_focus_difference() -> None:
    a, b, _ = _scene()
    gain, offset, corr = fit_exposure(_u8(a), _u8(0.6 * b + 20))
    assert corr > 0.95
    # A ~ gain * (0.6 B + 20) + offset, so gain ~ 1/0.6 and offset ~ -20/0.6
    assert gain == pytest.approx(1 / 0.6, rel=0.03)
    assert offset == pytest.approx(-20 / 0.6, abs=3.0)
    assert fit_exposure(_u8(a), np.full_like(_u8(a), 7)) == (1.0, 0.0, 0.0)  # flat B: nothing to fit


def test_a_border_of_two_sigma_is_left_out_of_the_fit() -> None:
    """``fit_exposure`` leaves a border of ``2 * sigma`` px out: a frame of ``sigma`` px in B
    (a lens mount, vignetting: white at top and bottom, black at the sides) does not move the
    gain nor lower the correlation, and the shot is still matched."""
    a = data.camera().astype(np.float64)[::2, ::2]
    b = 0.6 * a + 20
    f = 8  # = sigma, inside the 16 px border left out
    b[:f], b[-f:] = 255, 255
    b[:, :f], b[:, -f:] = 0, 0
    ga, gb = _u8(a), _u8(b)
    gain, offset, corr = fit_exposure(ga, gb, sigma=8.0)
    assert gain == pytest.approx(1 / 0.6, rel=0.01)  # with the frame in the fit: 1.35
    assert offset == pytest.approx(-20 / 0.6, abs=2.0)
    assert corr > 0.99  # with the frame in the fit: 0.79, and B would be left alone
    inner = (slice(2 * f, -2 * f),) * 2
    assert np.abs(match_exposure(ga, gb).astype(float)[inner] - a[inner]).max() <= 2.0


def test_equal_exposure_and_an_unreliable_fit_leave_b_alone() -> None:
    a, b, _ = _scene()
    gb = _u8(b)
    assert match_exposure(_u8(a), gb) is gb  # exposed alike
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, gb.shape, dtype=np.uint8)
    assert match_exposure(_u8(a), noise) is noise  # nothing in common: no fit
    assert not np.array_equal(match_exposure(_u8(a), _u8(0.6 * b + 20)), _u8(0.6 * b + 20))


def test_matching_restores_the_decision_of_a_darker_or_brighter_shot() -> None:
    a, b, truth = _scene()
    nets = load_nets_from_dir(None, "cpu")  # the shipped nets
    acc = {}
    for label, bb in (("same", b), ("darker", 0.55 * b + 5), ("brighter", 1.6 * b - 10)):
        for mode in ("none", "linear"):
            # exposure matching alone: no flat filling, no upscaling of the 256-px pair
            r = fuse_images(_u8(a), _u8(bb), nets, FusionParams(exposure_match=mode, flat_level=0, working_min=0,
                                                                       boundary_weight=1.0))
            acc[label, mode] = decision_accuracy(r.decision, truth)
            if mode == "linear":  # only the scoring input changes: the pixels are the sources'
                dm = r.decision
                assert np.array_equal(r.fused[dm], _u8(a)[dm]) and np.array_equal(r.fused[~dm], _u8(bb)[~dm])
    for label in ("darker", "brighter"):
        assert acc[label, "linear"] > acc[label, "none"] + 0.015, acc
        assert acc[label, "linear"] > acc["same", "none"] - 0.005, acc
    assert abs(acc["same", "linear"] - acc["same", "none"]) < 0.003, acc


def test_the_paper_preset_keeps_it_off() -> None:
    from bafusion.config import load_preset

    assert load_preset("paper")["fuse"]["exposure_match"] == "none"
    assert FusionParams().exposure_match in ("none", "linear")


def test_the_fusing_time_counts_the_gray_conversion_and_exposure_matching(monkeypatch, tiny_nets) -> None:
    """The summary's "s fusing" is the sum of ``seconds``: exposure matching (30 s of a 24 MP
    pair's 36 s) and the gray conversion ran outside it, so the line said 12 s for 36 s of work."""
    import time

    import bafusion.fusion.exposure as exposure
    from bafusion.fusion.stack import fuse_stack_joint

    real = exposure.fit_exposure

    def slow_fit(*args, **kwargs):
        time.sleep(0.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(exposure, "fit_exposure", slow_fit)
    a, b, _ = _scene()
    nets = load_nets_from_dir(tiny_nets, "cpu")
    params = FusionParams(exposure_match="linear", working_min=0)
    r = fuse_images(_u8(a), _u8(0.6 * b + 20), nets, params)
    assert r.seconds["exposure"] >= 0.5 and "gray" in r.seconds
    assert sum(r.seconds.values()) >= 0.5
    s = fuse_stack_joint([_u8(a), _u8(0.6 * b + 20), _u8(b)], nets, params)
    assert s.seconds["exposure"] >= 1.0 and "gray" in s.seconds


def test_matching_by_a_table_of_levels_equals_the_float_arithmetic() -> None:
    """uint8 B is mapped by a table of its 256 levels: the same bits as the float64 formula."""
    a, b, _ = _scene()
    ga, gb = _u8(a), _u8(0.6 * b + 20)
    gain, offset, _ = fit_exposure(ga, gb)
    want = np.clip(np.round(gain * gb.astype(np.float64) + offset), 0, 255).astype(np.uint8)
    assert np.array_equal(match_exposure(ga, gb), want)
    la = ndimage.gaussian_filter(ga.astype(np.float64), 8.0)[16:-16, 16:-16]
    lb = ndimage.gaussian_filter(gb.astype(np.float64), 8.0)[16:-16, 16:-16]
    assert gain == float(la.std()) / float(lb.std())
