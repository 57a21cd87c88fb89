"""Exposure matching before scoring (``fuse.exposure_match``, :mod:`bafusion.fusion.exposure`)."""

from __future__ import annotations

import re

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
    assert FusionParams().exposure_match in ("none", "linear", "linear_clip", "brighter", "auto")


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


def _brighter_pair() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A colour scene pair where B is A's exposure x 1.4 (clipped): A, B, B at A's exposure
    (the truth the output should show where it takes B), and the true map."""
    a, b, truth = _scene()
    tint = np.array([1.0, 0.95, 0.85])  # a colour scene, kept below 255 at A's exposure
    a3, b3 = _u8(0.7 * a[..., None] * tint), _u8(0.7 * b[..., None] * tint)
    bright = _u8(np.clip(b3 * 1.4, 0, 255))
    return a3, bright, b3, truth


def test_output_exposure_matching_leaves_no_seam_and_without_it_a_note_says_so() -> None:
    """B 1.4x brighter: the output took B's pixels as they are (a seam of two exposures where it
    switches) and nothing said so; ``match_output_exposure`` brings them to A's exposure first."""
    a, bright, b_at_a, truth = _brighter_pair()
    nets = load_nets_from_dir(None, "cpu")
    base = dict(flat_level=0, working_min=0)
    off = fuse_images(a, bright, nets, FusionParams(**base), names=("a.png", "b.png"))
    on = fuse_images(a, bright, nets, FusionParams(**base, match_output_exposure=True), names=("a.png", "b.png"))
    assert np.array_equal(off.decision, on.decision)  # the scoring is unchanged
    assert len(off.notes) == 1 and "b.png differs from a.png by about +1.1 EV (brighter" in off.notes[0]
    assert "--match-output-exposure" in off.notes[0] and on.notes == []
    took_b = ~on.decision
    err_on = np.abs(on.fused.astype(float) - b_at_a)[took_b].mean()
    err_off = np.abs(off.fused.astype(float) - b_at_a)[took_b].mean()
    assert err_on < 1.5 < 20 < err_off, (err_on, err_off)
    # across the boundary: the step between the two sides is the scene's, not an exposure's
    band = ndimage.binary_dilation(truth, iterations=3) & ~ndimage.binary_erosion(truth, iterations=3)
    ideal = np.where(truth[..., None], a, b_at_a).astype(float)
    assert np.abs(on.fused - ideal)[band].mean() < np.abs(off.fused - ideal)[band].mean() / 3
    # alike shots: no note
    same = fuse_images(a, b_at_a, nets, FusionParams(**base))
    assert same.notes == []


def test_fuse_prints_the_exposure_note_and_the_option_composites_at_as_exposure(tmp_path, capsys) -> None:
    from PIL import Image

    from bafusion.cli import main as cli_main

    a, bright, b_at_a, _ = _brighter_pair()
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(bright).save(tmp_path / "b.png")
    common = ["--device", "cpu", "--no-progress", "--working-min", "0"]  # the shipped nets
    assert cli_main(["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "f.png"),
                     *common]) == 0
    err = capsys.readouterr().err
    assert "b.png differs from" in err and "seams may show" in err and "--match-output-exposure" in err
    assert cli_main(["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "g.png"),
                     "--match-output-exposure", "--save-maps", str(tmp_path / "maps"), *common]) == 0
    assert "differs from" not in capsys.readouterr().err
    g = np.asarray(Image.open(tmp_path / "g.png")).astype(float)
    took_a = np.all(g == a, axis=2)
    assert 0.2 < took_a.mean() < 0.8 and np.abs(g - b_at_a)[~took_a].mean() < 1.5
    # Fig. 5's |B - F| compares F with the B it was composited from (B at A's exposure): black
    # where F took B (it compared with the original B: 148 of 255 there)
    dm = np.asarray(Image.open(tmp_path / "maps" / "g-dm.png")) > 127
    diff = np.asarray(Image.open(tmp_path / "maps" / "g-diff-gray.png")).astype(float)
    assert (~dm).mean() > 0.2 and diff[~dm].mean() < 5, diff[~dm].mean()


def test_the_paper_preset_and_the_defaults_keep_the_sources_pixels() -> None:
    from bafusion.config import load_preset

    assert load_preset("paper")["fuse"]["match_output_exposure"] is False
    assert FusionParams().match_output_exposure is False


def test_a_fit_on_block_means_is_an_option_close_to_the_full_one() -> None:
    """``exposure_fit_step`` N fits on N x N block means (a camera pair's 10-30 s of filtering
    cut N**2 times); 1, the default, is the full-resolution fit, bit for bit."""
    a, b, _ = _scene()
    ga, gb = _u8(a), _u8(0.6 * b + 20)
    full = fit_exposure(ga, gb)
    assert fit_exposure(ga, gb, step=1) == full and FusionParams().exposure_fit_step == 1
    gain, offset, corr = fit_exposure(ga, gb, step=4)
    assert gain == pytest.approx(full[0], rel=0.01) and offset == pytest.approx(full[1], abs=1.0)
    assert corr == pytest.approx(full[2], abs=0.01)
    assert np.abs(match_exposure(ga, gb, step=4).astype(int) - match_exposure(ga, gb)).max() <= 1
    from bafusion.config import load_preset

    assert load_preset("paper")["fuse"]["exposure_fit_step"] == 1


def test_a_fit_on_blocks_of_17_px_or_more_is_a_fit_not_nan() -> None:
    """``exposure_fit_step`` takes 1-64 (params schema), and at 17 or more the block means' sigma
    (8 / N) left a border of ``int(2 * sigma)`` = 0 px: ``x[0:-0]`` is empty, the fit was NaN and
    match_exposure mapped B to black (all zeros: the nets scored a black shot). No border then: the
    fit of the whole block means, near the full-resolution fit."""
    a, b, _ = _scene()
    ga, gb = _u8(a), _u8(0.6 * b + 20)
    full, matched = fit_exposure(ga, gb), match_exposure(ga, gb)
    big_a, big_b = (np.repeat(np.repeat(x, 2, axis=0), 2, axis=1) for x in (ga, gb))  # 512 px: blocks of 64
    for x, y, step in ((ga, gb, 17), (ga, gb, 32), (big_a, big_b, 64)):
        gain, offset, corr = fit_exposure(x, y, step=step)
        assert np.isfinite([gain, offset, corr]).all(), step
        assert gain == pytest.approx(full[0], rel=0.02) and offset == pytest.approx(full[1], abs=2.0), step
        assert corr > 0.99, step
    for step in (17, 32):
        assert np.abs(match_exposure(ga, gb, step=step).astype(int) - matched).max() <= 1, step


def test_a_sharp_shot_and_its_blurred_copy_have_one_exposure() -> None:
    """The gains were taken over pixels from 3 to 252 in both shots: a sharp shot's blacks,
    lifted by the blur in the other, were left out of one sum only, and a Lytro pair of one
    exposure (lytro-13) got a note of a tint. A fine black/gray pattern against its blurred
    copy: gains 1, no note."""
    from bafusion.fusion.exposure import colour_gains, exposure_note

    yy, xx = np.mgrid[0:128, 0:128]
    a = np.where((yy + xx) % 3 == 0, 0, 60).astype(np.uint8)  # a third black (period 3: not aliased by step 4)
    a = np.stack([a, a, a // 2 * 2], axis=-1)
    b = np.stack([ndimage.uniform_filter(a[..., c].astype(np.float64), 5) for c in range(3)], -1)
    b = np.round(b).astype(np.uint8)
    gains = colour_gains(a, b)
    assert np.allclose(gains, 1.0, atol=0.02), gains
    assert exposure_note(gains, ("a.png", "b.png")) is None


def test_a_stacks_maps_follow_match_output_exposure_as_a_pairs_do(tmp_path, capsys) -> None:
    """A pair's Fig. 5 map compares F with B at A's exposure under --match-output-exposure; the
    maps of a stack follow the same rule: a chain's step maps compare each step's fusion with
    the shot it composited (brought to the fusion's exposure), and the joint rule's maps are
    shot-index maps, which the option leaves alone (it changes pixels, not the decision)."""
    from PIL import Image

    from bafusion.cli import main as cli_main

    a, bright, _, _ = _brighter_pair()
    shots = []
    for n, x in (("a", a), ("b", bright), ("c", a)):
        Image.fromarray(x).save(tmp_path / f"{n}.png")
        shots.append(str(tmp_path / f"{n}.png"))
    common = ["--device", "cpu", "--no-progress", "--working-min", "0"]  # the shipped nets
    for rule in ("chain", "joint"):
        for opt in ("--match-output-exposure", "--no-match-output-exposure"):
            maps = tmp_path / f"maps-{rule}{opt}"
            assert cli_main(["fuse", *shots, "-o", str(tmp_path / "f.png"), "--stack-rule", rule, opt,
                             "--save-maps", str(maps), *common]) == 0
    capsys.readouterr()
    on, off = tmp_path / "maps-chain--match-output-exposure", tmp_path / "maps-chain--no-match-output-exposure"
    dm = np.asarray(Image.open(on / "f-step01-dm.png")) > 127
    diff_on = np.asarray(Image.open(on / "f-step01-diff-gray.png")).astype(float)
    diff_off = np.asarray(Image.open(off / "f-step01-diff-gray.png")).astype(float)
    assert (~dm).mean() > 0.2 and diff_on[~dm].mean() < 5 and diff_off[~dm].mean() < 5  # F is B (matched or not)
    on, off = tmp_path / "maps-joint--match-output-exposure", tmp_path / "maps-joint--no-match-output-exposure"
    for p in sorted(on.iterdir()):
        assert np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(off / p.name))), p.name


def test_a_black_channel_or_black_shots_give_gain_1_without_warnings(tiny_nets) -> None:
    """A channel all zero in both shots (or two black shots) gave 0/0: numpy's "invalid value
    encountered in scalar divide" leaked from every fuse, and with match_output_exposure the NaN
    gain was cast to uint8 (right only by chance); zero in B alone gave an infinite gain."""
    import warnings

    from bafusion.fusion.exposure import apply_gains, colour_gains

    a, b = (x[:64, :64].copy() for x in _brighter_pair()[:2])
    a[..., 2] = 0
    b[..., 2] = 0
    z = np.zeros_like(a)
    b_no_green = b.copy()
    b_no_green[..., 1] = 0
    nets = load_nets_from_dir(tiny_nets, "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = colour_gains(a, b)
        assert np.isfinite(g).all() and g[2] == 1.0 and g[0] != 1.0
        assert colour_gains(z, z).tolist() == [1.0, 1.0, 1.0]
        assert colour_gains(a, b_no_green)[1] == 1.0
        assert np.array_equal(apply_gains(b, g)[..., 2], b[..., 2])
        for x, y in ((a, b), (z, z), (a, b_no_green)):
            for match in (False, True):
                r = fuse_images(x, y, nets, FusionParams(working_min=0, match_output_exposure=match))
                assert r.fused.shape == x.shape
        assert not fuse_images(z, z, nets, FusionParams(working_min=0, match_output_exposure=True)).fused.any()


def test_a_channel_black_in_a_alone_keeps_gain_0_and_its_note() -> None:
    """A channel black in A but not in B had gain 0 (finite: with match_output_exposure B's
    channel is brought to A's black) until f4a962b made it 1 (B's channel kept); only gains that
    are not finite are replaced: 0/0 and x/0 (B black: nothing to scale) are 1. The note for the
    gain 0 said "+inf EV" after a RuntimeWarning; it now names the black channel."""
    import warnings

    from bafusion.fusion.exposure import apply_gains, colour_gains, exposure_note

    a, b = (x[:64, :64].copy() for x in _brighter_pair()[:2])
    a_no_green = a.copy()
    a_no_green[..., 1] = 0
    b_no_green = b.copy()
    b_no_green[..., 1] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        whole = colour_gains(a, b)
        g = colour_gains(a_no_green, b)
        assert g.tolist() == [whole[0], 0.0, whole[2]]  # as at eb0173c: [sum A / sum B, 0, sum A / sum B]
        out = apply_gains(b, g)
        assert not out[..., 1].any() and np.array_equal(out[..., 0], apply_gains(b, whole)[..., 0])
        note = exposure_note(g, ("a.png", "b.png"), "--match-output-exposure")
        assert note is not None and "a.png is black (all zero) in G where b.png is not" in note, note
        assert "inf" not in note and "--match-output-exposure" in note
        assert "a.png is black (all zero) where b.png is not" in exposure_note(np.zeros(1), ("a.png", "b.png"))
        assert colour_gains(a, b_no_green)[1] == 1.0  # x/0: B's channel has nothing to scale


def _fit_as_before(ga: np.ndarray, gb: np.ndarray, sigma: float = 8.0) -> tuple[float, float, float]:
    """fit_exposure at full resolution as it was up to session 33 (numpy's std and means of
    ravelled copies of the cropped low-pass): the reference of the same-bits test."""
    from scipy import ndimage

    la = ndimage.gaussian_filter(ga, sigma, output=np.float64)
    lb = ndimage.gaussian_filter(gb, sigma, output=np.float64)
    m = int(2 * sigma)
    if min(ga.shape) > 4 * m:
        la, lb = la[m:-m, m:-m], lb[m:-m, m:-m]
    la, lb = la.ravel(), lb.ravel()
    sa, sb = float(la.std()), float(lb.std())
    if sa < 1e-6 or sb < 1e-6:
        return 1.0, 0.0, 0.0
    corr = float(((la - la.mean()) * (lb - lb.mean())).mean() / (sa * sb))
    gain = sa / sb
    return gain, float(la.mean() - gain * lb.mean()), corr


def test_the_fit_gives_the_same_bits_with_no_copy_of_the_low_pass() -> None:
    """A 24 MP pair's fit copied each cropped low-pass (ravel) and made each shot's deviations
    twice (std, then the correlation): 192 MB arrays, about 1 s of CPU of its 3-4. The crop is
    now moved in place and the deviations made once; the gain, offset and correlation must be
    the same bits (pairs exposed alike and not, small ones with no border cropped, a flat one),
    and the fit must hold fewer float64 copies of the pair at once (tracemalloc)."""
    import tracemalloc

    from bafusion.fusion.exposure import fit_exposure

    rng = np.random.default_rng(11)
    for h, w in ((300, 401), (64, 70), (40, 40)):
        ga = rng.integers(0, 256, (h, w), dtype=np.uint8)
        for gb in (ga, np.clip(np.round(ga * 0.7 + 30 + rng.normal(0, 3, (h, w))), 0, 255).astype(np.uint8),
                   rng.integers(0, 256, (h, w), dtype=np.uint8), np.full((h, w), 9, np.uint8)):
            assert fit_exposure(ga, gb) == _fit_as_before(ga, gb), (h, w)
    ga = rng.integers(0, 256, (1000, 1000), dtype=np.uint8)
    gb = np.clip(ga * 0.8 + 10, 0, 255).astype(np.uint8)
    tracemalloc.start()
    try:
        fit_exposure(ga, gb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 26e6, peak  # the two low-passes and one buffer (8 MB each, 23.5 MB), not 31 MB as before


# --- noise matching (fuse.noise_match, match_noise) ---------------------------------------


def test_the_noise_estimate_reads_each_shots_noise_without_a_bias() -> None:
    """White noise of std 3 beside a clean shot: 3 (the flattest pixels judged on other rows
    than those measured; judged and measured on the same rows it read 2.1), either order."""
    from bafusion.fusion.exposure import estimate_noise

    rng = np.random.default_rng(0)
    flat = np.full((256, 256), 128, np.uint8)
    noisy = _u8(128 + rng.normal(0.0, 3.0, flat.shape))
    sa, sb = estimate_noise(flat, noisy)
    assert sa == 0.0 and sb == pytest.approx(3.0, abs=0.15)
    assert estimate_noise(noisy, flat) == (sb, sa)
    # the in-focus texture of one shot (B's sharp brick) is not read as noise: the scene's
    # shots read alike, well within what the matching takes for equal noise
    from bafusion.fusion.exposure import NOISE_MIN_DIFF

    a, b, _ = _scene()
    sa, sb = estimate_noise(_u8(a), _u8(b))
    assert abs(sa - sb) < NOISE_MIN_DIFF / 2 and max(sa, sb) < 1.0, (sa, sb)


def test_noise_matching_leaves_shots_of_equal_noise_alone() -> None:
    from bafusion.fusion.exposure import estimate_noise, match_noise

    a, b, _ = _scene()
    ga, gb = _u8(a), _u8(b)
    out_a, out_b, _ = match_noise(ga, gb)
    assert out_a is ga and out_b is gb
    rng = np.random.default_rng(1)
    na, nb = _u8(a + rng.normal(0, 4, a.shape)), _u8(b + rng.normal(0, 4, b.shape))
    out_a, out_b, (sa, sb) = match_noise(na, nb)
    assert out_a is na and out_b is nb and sa > 3 and sb > 3
    # B noisier: A gets the matching noise, B is left as it is; seeded (the same every call)
    nb = _u8(b + rng.normal(0, 6, b.shape))
    out_a, out_b, (sa, sb) = match_noise(ga, nb)
    assert out_b is nb and not np.array_equal(out_a, ga) and sb > 5 > 1 > sa
    assert np.array_equal(match_noise(ga, nb)[0], out_a)
    assert estimate_noise(out_a, nb)[0] == pytest.approx(sb, abs=0.6)  # A now as noisy as B


def test_noise_matching_restores_the_decision_of_a_noisy_defocused_shot() -> None:
    """B with noise of std 6: the noise read as detail and B won parts of A's in-focus disc
    (accuracy 0.939 against 0.992 clean); with noise_match 0.985. The fused pixels stay the
    sources' own, and a pair of equal noise gets the same output as without the option."""
    a, b, truth = _scene()
    nets = load_nets_from_dir(None, "cpu")
    ga, gb = _u8(a), _u8(b + np.random.default_rng(1).normal(0, 6, b.shape))
    base = dict(flat_level=0, working_min=0)
    acc = {}
    for on in (False, True):
        r = fuse_images(ga, gb, nets, FusionParams(**base, noise_match=on))
        acc[on] = decision_accuracy(r.decision, truth)
        dm = r.decision
        assert np.array_equal(r.fused[dm], ga[dm]) and np.array_equal(r.fused[~dm], gb[~dm])
    clean = decision_accuracy(fuse_images(_u8(a), _u8(b), nets, FusionParams(**base)).decision, truth)
    assert acc[True] > acc[False] + 0.03, acc
    assert acc[True] > clean - 0.015, (acc, clean)
    off = fuse_images(_u8(a), _u8(b), nets, FusionParams(**base))
    on = fuse_images(_u8(a), _u8(b), nets, FusionParams(**base, noise_match=True))
    assert np.array_equal(off.fused, on.fused) and np.array_equal(off.score_refined, on.score_refined)


def test_noise_matching_is_off_by_default_and_in_the_paper_preset() -> None:
    from bafusion.config import load_preset

    assert load_preset("paper")["fuse"]["noise_match"] is False
    assert FusionParams().noise_match is False
    assert FusionParams.from_mapping({"noise_match": True}).noise_match is True


def test_fuse_noise_match_option_reaches_the_fusion(tmp_path) -> None:
    """``bafusion fuse --noise-match`` changes the decision of a pair with noise in B; without
    it (and with ``--no-noise-match``) the output is byte for byte the default's."""
    from PIL import Image

    from bafusion.cli import main as cli_main

    a, b, _ = _scene()
    Image.fromarray(_u8(a)).save(tmp_path / "a.png")
    Image.fromarray(_u8(b + np.random.default_rng(1).normal(0, 6, b.shape))).save(tmp_path / "b.png")
    common = ["--device", "cpu", "--no-progress", "--working-min", "0", "--flat-level", "0"]
    out = {}
    for name, extra in (("plain", []), ("on", ["--noise-match"]), ("off", ["--no-noise-match"])):
        assert cli_main(["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o",
                         str(tmp_path / f"{name}.png"), *common, *extra]) == 0
        out[name] = (tmp_path / f"{name}.png").read_bytes()
    assert out["plain"] == out["off"] and out["on"] != out["plain"]


def _re_exposed(x: np.ndarray, ev: float, wb: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """``x`` given ``ev`` stops and channel gains ``wb`` in linear light (gamma 2.2), clipped."""
    lin = (x.astype(np.float64) / 255.0) ** 2.2 * 2.0 ** ev * (np.asarray(wb) if x.ndim == 3 else 1.0)
    return np.clip(np.round(255.0 * np.clip(lin, 0, 1) ** (1 / 2.2)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("pair", ["real/tsai-05", "real/tsai-12", "real/savic-18", "real/savic-21"])
def test_a_pure_exposure_change_that_clips_reads_as_exposure_not_colour(shared_data, pair: str) -> None:
    """B of a real pair 0.7 EV brighter (the same gain, x1.247, on R, G and B; 59-86 % of B's
    pixels clip in some channel): each channel summed over its own unclipped pixels gave other
    pixels per channel, and the note said "warmer" (tsai-05, R/G/B x1.27/1.24/1.19) or "cooler"
    (the others, up to x1.01/1.09/1.16), and --match-output-exposure tinted B's pixels. On
    tsai-05, where enough pixels clip in no channel, a real white balance change on top is
    still read as colour (tsai-12 and savic-18 keep too few such pixels to measure one)."""
    from bafusion.fusion.exposure import colour_gains, exposure_note
    from bafusion.io import read_image

    d = shared_data / "eval"
    a = read_image(next(d.glob(pair + "-A.*")))
    b = read_image(next(d.glob(pair + "-B.*")))
    clean = 1.0 / colour_gains(a, b)
    ratio = 1.0 / colour_gains(a, _re_exposed(b, 0.7)) / clean  # the change, the pair's own difference taken out
    assert ratio.max() / ratio.min() - 1.0 < 0.03, ratio  # before: 6.8 % (tsai-05), 13 % (savic-21)
    note = exposure_note(colour_gains(a, _re_exposed(b, 0.7)))
    assert note is not None and "brighter" in note and not any(w in note for w in ("warmer", "cooler", "tinted")), note
    if pair == "real/tsai-05":
        warm = exposure_note(colour_gains(a, _re_exposed(b, 0.7, (1.25, 1.0, 0.8))))
        assert warm is not None and "warmer" in warm, warm


def _page_scene(fg_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A disc of ``fg_name`` (focused in A) over scikit-image's page (focused in B; near white,
    it clips when B is brighter), 256 px, each shot blurred by sigma 3 on its other layer."""
    from skimage import transform

    def sized(x: np.ndarray) -> np.ndarray:
        return transform.resize(x.astype(np.float64), (256, 256), preserve_range=True, anti_aliasing=True)

    fg, bg = sized(getattr(data, fg_name)()), sized(data.page())
    yy, xx = np.mgrid[:256, :256]
    alpha = ndimage.gaussian_filter((((yy - 128) ** 2 + (xx - 128) ** 2) < 77 ** 2).astype(np.float64), 1.5)
    a = fg * alpha + ndimage.gaussian_filter(bg, 3) * (1 - alpha)
    b = ndimage.gaussian_filter(fg, 3) * alpha + bg * (1 - alpha)
    return _u8(a), b, alpha >= 0.5


def _accuracies(a: np.ndarray, b: np.ndarray, truth: np.ndarray, modes: tuple[str, ...]) -> dict[str, float]:
    """The shipped nets' decision accuracy on ``a``, ``b`` against ``truth`` under each
    ``exposure_match`` of ``modes`` (no flat fill, no working size, w = 1), each fused image
    checked to be the sources' own pixels (only the scoring input changes)."""
    nets = load_nets_from_dir(None, "cpu")
    acc = {}
    for mode in modes:
        r = fuse_images(a, b, nets, FusionParams(exposure_match=mode, flat_level=0, working_min=0,
                                                 boundary_weight=1.0))
        acc[mode] = decision_accuracy(r.decision, truth)
        dm = r.decision
        assert np.array_equal(r.fused[dm], a[dm]) and np.array_equal(r.fused[~dm], b[~dm])
    return acc


@pytest.mark.parametrize("fg_name", ["brick", "coins"])
def test_linear_clip_keeps_a_brighter_clipped_b_from_reading_as_out_of_focus(fg_name: str) -> None:
    """B 0.7 EV brighter in linear light, its page clipped (30 % of B at 254 or more). ``linear``
    maps B down: the clipped page is a flat gray beside A's blurred page texture, and the nets
    gave most of the page to A (measured: accuracy 0.82 for both scenes, 0.99 with ``none``).
    ``linear_clip`` clips A where B's white lands, so both are flat there (0.95 on both);
    a darker B or a brighter A is matched as by ``linear``, bit for bit."""
    from bafusion.fusion.exposure import match_pair

    a, b, truth = _page_scene(fg_name)
    bright = _re_exposed(_u8(b), 0.7)
    acc = _accuracies(a, bright, truth, ("linear", "linear_clip"))
    assert acc["linear_clip"] > acc["linear"] + 0.08 and acc["linear_clip"] > 0.92, acc
    for x, y in ((a, _re_exposed(_u8(b), -0.7)), (_re_exposed(a, 0.7), _u8(b))):  # B darker, A brighter
        got, lin = match_pair(x, y, "linear_clip"), match_pair(x, y, "linear")
        assert got[0] is x and np.array_equal(got[1], lin[1]) and not np.array_equal(got[1], y)


def test_noise_matching_makes_no_full_size_float64_copies() -> None:
    """The estimate and the matching of a camera-size pair held ~46 bytes a pixel at once
    (full-size float64 responses, filters and noise: 549 MiB at 12 MP, more per megapixel than the
    fusion's 36 MiB per megapixel, so ``fuse_need_mib`` fell short); in blocks, the same
    numbers with the responses in float32 (exact for 8-bit shots) and no full-size float64 copy."""
    import tracemalloc

    from bafusion.fusion.exposure import match_noise

    rng = np.random.default_rng(0)
    ga = _u8(np.linspace(40.0, 200.0, 1500)[None, :] + np.zeros((1000, 1)))  # smooth: noise 0
    gb = _u8(ga + rng.normal(0.0, 6.0, ga.shape))
    tracemalloc.start()
    try:
        out_a, out_b, (sa, sb) = match_noise(ga, gb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out_b is gb and not np.array_equal(out_a, ga) and sb > sa  # it fired
    assert peak < 24 * ga.size, peak / ga.size  # measured 16 bytes a pixel here (48 before; 13 and 46 at 12 MP)


def test_noise_matching_sees_the_grays_linear_clip_gives(monkeypatch) -> None:
    """The pair rule runs noise matching after exposure matching: with linear_clip it gets A
    clipped where the brighter B's white lands and B mapped onto A's exposure."""
    import bafusion.fusion.rule as rule

    rng = np.random.default_rng(6)
    g = np.clip(ndimage.gaussian_filter(rng.normal(0, 1, (160, 200)), 4) * 400 + 120, 0, 255)
    a = np.clip(np.round(g), 0, 255).astype(np.uint8)
    b = np.clip(np.round(g * 1.6), 0, 255).astype(np.uint8)
    seen = []

    class Seen(Exception):
        pass

    def spy(ga, gb, *x, **k):
        seen.append((ga, gb))
        raise Seen

    monkeypatch.setattr(rule, "match_noise", spy)
    with pytest.raises(Seen):
        fuse_images(a, b, load_nets_from_dir(None, "cpu"),
                    FusionParams(exposure_match="linear_clip", noise_match=True, working_min=0))
    ga, gb = seen[0]
    top = int(gb.max())
    assert 140 < top < 180, top  # B's 255 mapped down by about 1/1.6
    assert int(a.max()) > top + 40 and np.array_equal(ga, np.minimum(a, top))


def test_colour_gains_refuses_shots_of_other_channels_or_sizes() -> None:
    """``colour_gains(rgb, gray)`` raised IndexError (index 1 is out of bounds for axis 2), and
    ``colour_gains(gray, rgb)`` returned one gain of A's gray against B's red; shots of two sizes
    raised numpy's broadcast error or, one row against many, broadcast silently. Refused, naming
    both shapes; alpha is still ignored and gray (H, W) is (H, W, 1)."""
    from bafusion.errors import UserError
    from bafusion.fusion.exposure import colour_gains

    rng = np.random.default_rng(5)
    rgb = rng.integers(20, 200, (40, 40, 3), dtype=np.uint8)
    gray = rgb[..., 1].copy()
    for a, b in ((rgb, gray), (gray, rgb), (rgb, rgb[:32]), (gray, gray[:1]), (gray[0], gray[0])):
        with pytest.raises(UserError, match=r"colour_gains needs two images of one size and channel count .*got "
                           + re.escape(f"{a.shape} and {b.shape}")):
            colour_gains(a, b)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    assert colour_gains(rgba, rgb).tolist() == colour_gains(rgb, rgb).tolist() == [1.0, 1.0, 1.0]
    assert colour_gains(gray, gray[..., None]).tolist() == [1.0]


def test_the_unclipped_fit_recovers_the_gain_of_a_brighter_b_that_clips() -> None:
    """B 1 EV brighter in linear light (gain 2**(-1/2.2) = 0.730 back onto A), its page clipped
    (35 % of B at 250 or more): the clipped plateau has less spread than the page, and the
    moment fit gave 1.08 (offset -56); on the pixels whose window holds no clipped pixel it is
    0.723 (measured). Where nothing clips, the ``unclipped`` fit is the plain one, bit for bit."""
    a, b, _ = _page_scene("brick")
    bright = _re_exposed(_u8(b), 1.0)
    assert (bright >= 250).mean() > 0.2
    true = 2.0 ** (-1.0 / 2.2)
    plain = fit_exposure(a, bright)
    gain, offset, corr = fit_exposure(a, bright, unclipped=True)
    assert abs(plain[0] - true) > 0.2, plain
    assert abs(gain - true) < 0.02 and abs(offset) < 3.0 and corr > 0.99, (gain, offset, corr)
    assert fit_exposure(a, bright, step=4, unclipped=True)[0] == pytest.approx(true, abs=0.03)
    dark = _re_exposed(_u8(b), -0.7)  # nothing clips: the same fit
    assert not ((a >= 250) | (dark >= 250)).any()
    assert fit_exposure(a, dark, unclipped=True) == fit_exposure(a, dark)


def _scattered_spots() -> tuple[np.ndarray, np.ndarray]:
    """Gray shots of foliage against a bright sky: spots of sky (~16 px) over a fifth of the
    300 x 400 frame, B 1.8x brighter (23 % clipped) and out of focus on its right half."""
    rng = np.random.default_rng(0)
    h, w = 300, 400
    leaves = ndimage.gaussian_filter(rng.normal(size=(h, w)), 3)
    spots = ndimage.gaussian_filter(rng.normal(size=(h, w)), 4)
    a = np.where(spots > np.quantile(spots, 0.8), 225.0, 90 + 20 * leaves / leaves.std())
    s = a.copy()
    s[:, w // 2:] = ndimage.gaussian_filter(a, 2.5)[:, w // 2:]  # defocused before the sensor clips
    return _u8(a), _u8(1.8 * s)


def test_the_unclipped_fit_low_passes_the_unclipped_pixels_where_small_clipped_spots_are_scattered() -> None:
    """Foliage against a bright sky (:func:`_scattered_spots`). Every pixel's window held a
    clipped pixel, so the unclipped fit fell back to all pixels, the plain fit's gain 0.94 for
    the true 0.556; now it is made on the low-pass of the unclipped pixels alone: 0.510 (the
    defocused half's blooming sky pulls it down; 0.542 on 4 x 4 blocks; measured), and reliable
    enough to be used (correlation 0.940)."""
    from bafusion.fusion.exposure import CLIP_MIN_KEPT, CLIP_REACH, SIGMA

    ga, gb = _scattered_spots()
    clipped = (ga >= 250) | (gb >= 250)
    m = int(2 * SIGMA)
    share = ndimage.gaussian_filter(clipped.astype(np.float32), SIGMA)[m:-m, m:-m]
    assert (share <= CLIP_REACH).mean() < CLIP_MIN_KEPT  # the window rule keeps almost nothing
    true = 1.0 / 1.8
    plain = fit_exposure(ga, gb)
    gain, _, corr = fit_exposure(ga, gb, unclipped=True)
    assert abs(plain[0] - true) > 0.3, plain
    assert abs(gain - true) < 0.06 and corr > 0.9, (gain, corr)
    assert abs(fit_exposure(ga, gb, step=4, unclipped=True)[0] - true) < 0.06


def test_the_low_pass_of_the_unclipped_pixels_holds_no_float64_copy_of_a_shot() -> None:
    """The fit on the low-pass of the unclipped pixels (:func:`_scattered_spots`) made a float64
    copy of each masked shot to filter beside the other low-pass, the window weight and the
    filter's output: a peak of 4.4 float64 images (tracemalloc; the plain fit 2.9), 401 MiB at
    4000 x 3000 and +88 MiB on a 24 MP fuse's peak RSS (1292 MiB, 32 below the memory
    estimate). Filtered from the shot's own type into float64, the gain is the same to the bit
    and the peak is 3.5 images (320 MiB at 4000 x 3000; measured)."""
    import tracemalloc

    ga, gb = _scattered_spots()
    tracemalloc.start()
    try:
        fit_exposure(ga, gb, unclipped=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3.8 * ga.size * 8, peak / (ga.size * 8)


def test_brighter_maps_the_darker_shot_up_so_a_brighter_b_that_clips_is_not_read_as_out_of_focus() -> None:
    """``exposure_match: brighter``: a brighter B is kept and A mapped up onto it (fitted where
    neither clips), so A's page clips where B's does and neither reads as in focus there.
    The page scene with B 0.7 EV brighter (31 % of B clipped): decision accuracy linear 0.82,
    linear_clip 0.94, brighter 0.98 (none 0.99; measured). A darker B is mapped up onto A."""
    from bafusion.fusion.exposure import match_pair

    a, b, truth = _page_scene("brick")
    bright = _re_exposed(_u8(b), 0.7)
    ga, gb = match_pair(a, bright, "brighter")
    assert gb is bright and not np.array_equal(ga, a)
    page = (~truth) & (bright == 255)  # where B's page clips, A mapped up clips too (mostly)
    assert (ga[page] >= 250).mean() > 0.9, (ga[page] >= 250).mean()
    acc = _accuracies(a, bright, truth, ("linear", "brighter"))
    assert acc["brighter"] > acc["linear"] + 0.1 and acc["brighter"] > 0.97, acc
    dark = _re_exposed(_u8(b), -0.7)
    ga, gb = match_pair(a, dark, "brighter")
    assert ga is a and gb.mean() > dark.mean() + 10


def test_auto_takes_brighter_only_where_one_shot_clips_clearly_more() -> None:
    """``exposure_match: auto``: the page scene with B 0.7 EV brighter (31 % of B clipped, A
    none) is matched as by ``brighter``; the same scene with A 0.7 and B 0.9 EV brighter (both
    clip, alike, as the real pairs' shots do) and a darker B (nothing clips) as by ``linear``."""
    from bafusion.fusion.exposure import auto_mode, match_pair

    a, b, _ = _page_scene("brick")
    cases = {"brighter": (a, _re_exposed(_u8(b), 0.7)),
             "linear": (_re_exposed(a, 0.7), _re_exposed(_u8(b), 0.9))}
    cases["linear, darker B"] = (a, _re_exposed(_u8(b), -0.7))
    for want, (x, y) in cases.items():
        mode = want.split(",")[0]
        assert auto_mode(x, y) == mode, want
        got, ref = match_pair(x, y, "auto"), match_pair(x, y, mode)
        assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1]), want
    both = cases["linear"]
    assert (both[0] >= 250).mean() > 0.1 and (both[1] >= 250).mean() > 0.1
    assert not np.array_equal(match_pair(*both, "brighter")[0], match_pair(*both, "linear")[0])


def test_colour_gains_ignores_the_alpha_of_a_gray_shot() -> None:
    """``colour_gains`` ignores alpha, but kept the alpha of a gray + alpha (H, W, 2) shot as a
    second channel: two gains for (LA, LA), the alpha's among them, and (LA, gray) refused as of
    other channel counts. Gray + alpha is gray: one gain, as for the gray alone."""
    from bafusion.fusion.exposure import colour_gains

    rng = np.random.default_rng(7)
    a = rng.integers(20, 200, (40, 40), dtype=np.uint8)
    b = np.clip(a.astype(np.int32) * 3 // 4, 0, 255).astype(np.uint8)
    opaque = np.full_like(a, 255)
    want = colour_gains(a, b)
    assert want.shape == (1,) and abs(want[0] - 4 / 3) < 0.05, want
    for x, y in ((np.dstack([a, opaque]), np.dstack([b, opaque])), (np.dstack([a, opaque]), b),
                 (a, np.dstack([b, opaque // 2]))):
        assert np.array_equal(colour_gains(x, y), want), (x.shape, y.shape)
