"""Focal stacks (issue 14): the synthetic stack's truth, the joint stack rule, ``stack_rule``
on the command line. The accuracy test uses the shipped nets and the real training data
(skips without ``../shared/data``); the others run on made-up images and tiny nets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data_dir
from PIL import Image
from scipy import ndimage

from bafusion.cli import main as cli_main
from bafusion.data.mattes import object_matte
from bafusion.errors import InputFileError, UserError
from bafusion.fusion import (
    FusionNets,
    FusionParams,
    fuse_images,
    fuse_stack,
    load_nets,
    load_nets_from_dir,
)
from bafusion.fusion.stack import (
    AMBIGUOUS,
    STACK_MAP_KEYS,
    StackOptions,
    chain_index,
    compose,
    fuse_stack_joint,
    remove_small_labels,
    stack_accuracy,
    stack_from_data,
    synthetic_stack,
    visibility_weights,
)
from bafusion.nets.model import build_model, save_model

DATA = shared_data_dir()
needs_data = pytest.mark.skipif(
    not (DATA / "train" / "alphamatting").is_dir(), reason=f"real data not found at {DATA} (set BAFUSION_SHARED_DATA)"
)


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    x = ndimage.gaussian_filter(rng.uniform(0, 255, (h, w, 3)), (1.5, 1.5, 0))
    return np.clip((x - x.mean()) * 6 + 128, 0, 255).astype(np.uint8)


def _foreground(seed: int, h: int = 60, w: int = 50) -> tuple[np.ndarray, np.ndarray]:
    return _texture(np.random.default_rng(seed), h, w), object_matte((h, w), seed, coverage=(0.5, 0.6))


@pytest.fixture(scope="module")
def tiny_nets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, FusionNets]:
    d = tmp_path_factory.mktemp("nets")
    for i, kind in enumerate(("initial", "boundary")):
        import torch

        torch.manual_seed(i)
        save_model(build_model(8), d / f"{kind}.pt", {"patch": 12})
    return d, load_nets(d / "initial.pt", d / "boundary.pt", "cpu")


@pytest.fixture(scope="module")
def shipped() -> FusionNets:
    return load_nets_from_dir(None, "cpu")


def _lowfreq_texture(seed: int, h: int, w: int) -> np.ndarray:
    """:func:`_texture` at half contrast over a smooth random shading (sigma 12 px): a low-pass
    of the shots keeps structure, so an exposure fit (sigma 8 px) is reliable on it."""
    rng = np.random.default_rng(seed)
    t = _texture(rng, h, w).astype(np.float64)
    shade = ndimage.gaussian_filter(rng.normal(0, 1, (h, w, 1)), (12, 12, 0))
    return np.clip(0.5 * (t - 128) + 128 + 40 * shade / shade.std(), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def made_up_stack():
    """A 3-layer stack of made-up textures (no real data needed)."""
    rng = np.random.default_rng(11)
    return synthetic_stack([_foreground(21, 70, 60), _foreground(22, 70, 60)], _texture(rng, 120, 120),
                           StackOptions(layers=3, size=112), seed=1)


# -- the synthetic stack --------------------------------------------------------------


def test_visibility_weights_sum_to_one_and_the_front_layer_wins() -> None:
    a1 = np.array([[0.0, 1.0, 0.5]])
    a2 = np.array([[0.0, 0.0, 1.0]])
    w = visibility_weights([np.ones_like(a1), a1, a2])
    assert np.allclose(w.sum(0), 1.0)
    assert list(w.argmax(0)[0]) == [0, 1, 2]
    assert w[1, 0, 2] == 0.0  # layer 1 fully hidden behind the opaque layer 2


@pytest.mark.parametrize("layers", [3, 4])
def test_synthetic_truth_is_the_shot_that_shows_each_pixel_sharp(layers: int) -> None:
    rng = np.random.default_rng(1)
    bg = _texture(rng, 100, 120)
    fgs = [_foreground(10 + i) for i in range(layers - 1)]
    opts = StackOptions(layers=layers, size=96, sigma_step=2.0)
    st = synthetic_stack(fgs, bg, opts, seed=3)
    assert len(st.shots) == layers and all(s.shape == (96, 96, 3) and s.dtype == np.uint8 for s in st.shots)
    assert np.allclose(st.weights.sum(0), 1.0, atol=1e-5)
    ok = st.truth != AMBIGUOUS
    assert ok.mean() > 0.6
    assert set(np.unique(st.truth[ok])) == set(range(layers))  # every layer owns some pixels
    # The truth is the layer that owns the pixel in the all-in-focus image...
    assert np.array_equal(st.truth[ok], st.weights.argmax(0)[ok])
    # ... and the shot named by the truth is the one closest to the all-in-focus image there.
    layer_imgs = synthetic_stack(fgs, bg, StackOptions(layers=layers, size=96, sigma_step=1e-6), seed=3).shots[0]
    aif = layer_imgs.astype(np.float64)
    err = np.stack([np.abs(s.astype(np.float64) - aif).mean(2) for s in st.shots])
    closest = err.argmin(0)
    assert (closest[ok] == st.truth[ok]).mean() > 0.95
    right = np.take_along_axis(err, st.truth.clip(0)[None].astype(np.intp), 0)[0]
    assert right[ok].mean() < 0.3 * err.mean(0)[ok].mean()
    # Mixed and flat pixels are exactly the ambiguous ones; same seed, same stack.
    assert np.array_equal(~ok, st.mixed | st.flat)
    again = synthetic_stack(fgs, bg, opts, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(st.shots, again.shots))
    other = synthetic_stack(fgs, bg, opts, seed=4)
    assert not np.array_equal(st.truth, other.truth)


def test_flat_background_is_ambiguous_and_soft_edges_are_mixed() -> None:
    bg = np.full((120, 120, 3), 90, np.uint8)
    st = synthetic_stack([_foreground(5)], bg, StackOptions(layers=2, size=120, fg_scale=(0.4, 0.4)), seed=0)
    owned_by_bg = st.weights.argmax(0) == 0
    # Beyond any blur of the foreground (sigma 2) and the flat window:
    far = ndimage.binary_erosion(owned_by_bg, iterations=16, border_value=1)
    assert far.any() and st.flat[far].all() and (st.truth[far] == AMBIGUOUS).all()
    soft = (st.weights[1] > 0.2) & (st.weights[1] < 0.8)
    assert soft.any() and st.mixed[soft].all()


def test_stack_options_are_checked() -> None:
    with pytest.raises(UserError, match="layers"):
        StackOptions(layers=1)
    with pytest.raises(UserError, match="kernel"):
        StackOptions(kernel="box")
    with pytest.raises(UserError, match="needs 2 foregrounds"):
        synthetic_stack([_foreground(1)], np.zeros((80, 80, 3), np.uint8), StackOptions(layers=3, size=80))


def test_stack_accuracy_counts_decidable_pixels_only() -> None:
    truth = np.array([[0, 1, AMBIGUOUS, 2]], np.int16)
    assert stack_accuracy(np.array([[0, 1, 0, 0]]), truth) == pytest.approx(2 / 3)
    assert np.isnan(stack_accuracy(truth, np.full_like(truth, AMBIGUOUS)))


# -- pieces of the joint rule ---------------------------------------------------------


def test_small_label_regions_take_the_surrounding_label() -> None:
    idx = np.zeros((40, 40), np.int16)
    idx[:, 20:] = 2
    idx[5:8, 5:8] = 1  # 9 px island inside label 0
    idx[30:33, 30:33] = 0  # 9 px hole inside label 2
    out = remove_small_labels(idx, min_region=0.01)  # 16 px
    want = np.zeros((40, 40), np.int16)
    want[:, 20:] = 2
    assert np.array_equal(out, want)
    assert np.array_equal(remove_small_labels(idx, 0.0), idx)


def test_compose_takes_each_pixel_from_its_shot_and_matches_channels() -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (5, 6), dtype=np.uint8)
    rgb = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb[::-1], np.full((5, 6, 1), 7, np.uint8)], 2)
    idx = rng.integers(0, 3, (5, 6)).astype(np.int16)
    out = compose([gray, rgb, rgba], idx)
    assert out.shape == (5, 6, 3)
    assert np.array_equal(out[idx == 0], np.repeat(gray[idx == 0][:, None], 3, 1))
    assert np.array_equal(out[idx == 1], rgb[idx == 1])
    assert np.array_equal(out[idx == 2], rgb[::-1][idx == 2])


def test_compose_holds_no_copy_of_the_whole_stack() -> None:
    """compose stacked every shot, (N, H, W, 3), to pick from: a 15-shot stack of 24 MP held a
    1 GiB copy beside the shots; it now fills one output shot by shot (same pixels)."""
    import tracemalloc

    rng = np.random.default_rng(1)
    shots = [rng.integers(0, 256, (100, 100, 3), dtype=np.uint8) for _ in range(16)]
    idx = rng.integers(0, 16, (100, 100)).astype(np.int16)
    want = np.stack(shots)[idx, np.arange(100)[:, None], np.arange(100)[None, :]]
    tracemalloc.start()
    try:
        out = compose(shots, idx)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(out, want)
    assert peak < 4 * shots[0].nbytes, (peak, shots[0].nbytes)  # was > 16 shots' worth
    with pytest.raises(ValueError, match="out of range"):
        compose(shots[:2], idx)


def test_chain_index_names_the_shot_of_every_fused_pixel(shipped, made_up_stack) -> None:
    shots = made_up_stack.shots
    results = fuse_stack(shots, shipped, FusionParams(min_region=0.0))
    idx = chain_index(results)
    assert len(np.unique(idx)) == 3
    assert np.array_equal(compose(shots, idx), results[-1].fused)


def test_joint_rule_is_consistent_and_composes_by_its_index(shipped, made_up_stack) -> None:
    st = made_up_stack
    shots = [s.mean(2).astype(np.uint8) for s in st.shots]  # gray shots
    res = fuse_stack_joint(shots, shipped, FusionParams(stack_rule="joint"))
    assert stack_accuracy(res.index, st.truth) > 0.9
    assert res.scores.shape == (3, 112, 112)
    assert np.allclose(res.scores.sum(0), 0.0, atol=1e-3)  # z_ji = -z_ij
    assert np.array_equal(res.fused, compose(shots, res.index))
    assert set(np.unique(res.index)) <= {0, 1, 2}
    # Outside the band the boundary net changed nothing.
    assert np.array_equal(res.index_raw[~res.near_boundary], res.index_initial[~res.near_boundary])


# -- the pair rule's options in the joint rule (measured values in the comments) ------------


def test_joint_rule_matches_the_shots_exposures_before_scoring(shipped, one_torch_thread) -> None:
    """One shot of three 1.4x brighter (clipped): with ``exposure_match`` linear every gray is
    mapped onto the first shot's exposure before scoring, and the joint rule decides far better
    than on the shots as they are; the fused pixels are the shots' own."""
    fg = [(_lowfreq_texture(s, 100, 90), _foreground(s, 100, 90)[1]) for s in (21, 22)]
    st = synthetic_stack(fg, _lowfreq_texture(11, 170, 170), StackOptions(layers=3, size=160), seed=1)
    shots = list(st.shots)
    shots[1] = np.clip(np.round(shots[1] * 1.4), 0, 255).astype(np.uint8)
    acc = {}
    for mode in ("none", "linear", "linear_clip"):  # at the stack's own size, to see exposure matching alone
        res = fuse_stack_joint(shots, shipped, FusionParams(stack_rule="joint", exposure_match=mode, working_min=0,
                                                                boundary_weight=1.0))
        acc[mode] = stack_accuracy(res.index, st.truth)
        assert np.array_equal(res.fused, compose(shots, res.index))
    assert acc["linear"] >= acc["none"] + 0.02, acc  # measured 0.9894 vs 0.9488
    assert acc["linear"] > 0.98, acc
    assert acc["linear_clip"] > acc["none"] + 0.02, acc  # linear_clip also clips the other shots where it clips


def _joint_grays(monkeypatch: pytest.MonkeyPatch,
                 modes: tuple[str, ...]) -> tuple[list[np.ndarray], dict[str, list[np.ndarray]]]:
    """Three shots of one texture, the second 0.7x and the third 1.6x the first (clipped), and
    the grays the joint rule's nets would score under each ``exposure_match`` of ``modes``
    (``_joint_decide`` stopped there)."""
    import bafusion.fusion.stack as stack

    rng = np.random.default_rng(4)
    g = np.clip((ndimage.gaussian_filter(rng.normal(0, 1, (160, 160)), 4) * 400) + 120, 0, 255)
    shots = [np.clip(np.round(g * k), 0, 255).astype(np.uint8) for k in (1.0, 0.7, 1.6)]
    seen: dict[str, list[np.ndarray]] = {}

    class Scored(Exception):
        pass

    def spy(grays, *a, **k):
        seen[mode] = grays
        raise Scored

    monkeypatch.setattr(stack, "_joint_decide", spy)
    for mode in modes:
        with pytest.raises(Scored):
            fuse_stack_joint(shots, None, FusionParams(stack_rule="joint", exposure_match=mode, working_min=0))
    return shots, seen


def test_joint_rule_linear_clip_clips_every_gray_where_the_brightest_shots_white_lands(monkeypatch) -> None:
    """linear_clip in the joint rule: with one shot brighter (clipped) and one darker than the
    first, every gray the nets score (the first shot's and the darker one's mapped up too) is
    clipped at the level the brighter shot's white is mapped to; with linear, none is."""
    shots, seen = _joint_grays(monkeypatch, ("linear", "linear_clip"))
    top = int(seen["linear_clip"][2].max())
    assert 140 < top < 180, top  # 255 / 1.6
    assert int(seen["linear"][0].max()) > top + 40 and int(seen["linear"][1].max()) > top + 40
    for gl, gc in zip(seen["linear"], seen["linear_clip"]):
        assert np.array_equal(gc, np.minimum(gl, top))


def _chain_grays(monkeypatch: pytest.MonkeyPatch, nets: FusionNets, shots: list[np.ndarray],
                 params: FusionParams) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (A, B) grays the nets score at each step of :func:`fuse_stack` (the steps run on)."""
    import bafusion.fusion.rule as rule

    seen: list[tuple[np.ndarray, np.ndarray]] = []
    for name in ("decide", "decide_upscaled", "decide_working"):
        def spy(ga, gb, *a, _real=getattr(rule, name), **k):
            seen.append((ga.copy(), gb.copy()))
            return _real(ga, gb, *a, **k)

        monkeypatch.setattr(rule, name, spy)
    fuse_stack(shots, nets, params)
    return seen


def _drifting(gains: tuple[float, ...]) -> list[np.ndarray]:
    """One smooth texture (its mean 110, no pixel clipped at the highest gain) times each gain."""
    rng = np.random.default_rng(4)
    g = ndimage.gaussian_filter(rng.normal(0, 1, (96, 96)), 4)
    g = 110 + 60 * g / np.abs(g).max()
    return [np.clip(np.round(g * k), 0, 255).astype(np.uint8) for k in gains]


@pytest.mark.parametrize("mode", ["linear", "linear_clip", "auto"])
def test_chain_scores_every_step_at_the_middle_shots_exposure(tiny_nets, monkeypatch, mode: str) -> None:
    """A steady exposure drift (one scene, x0.8 -> x1.2 over five shots): each step of the chain
    scores its A (the fusion so far, a patchwork of the earlier shots) and its B at the middle
    shot's exposure. Before, B was fitted to the fusion so far, and step 1 scored shot 1 (x0.8)
    against shot 2 brought down to it: 22.8 gray levels (mean) below the middle shot."""
    _, nets = tiny_nets
    shots = _drifting((0.8, 0.9, 1.0, 1.1, 1.2))
    seen = _chain_grays(monkeypatch, nets, shots, FusionParams(exposure_match=mode, working_min=0))
    assert len(seen) == 4
    mid = shots[2].astype(np.float64)
    for i, (ga, gb) in enumerate(seen, start=1):
        for g in (ga, gb):
            assert g.shape == mid.shape and np.abs(g - mid).mean() < 1.0, (i, np.abs(g - mid).mean())


def test_chain_brighter_scores_every_step_at_the_brightest_shots_exposure(tiny_nets, monkeypatch) -> None:
    """``brighter`` (and ``auto`` where it takes it): the reference is the brightest shot, here
    the second of four, as in the joint rule; the grays the nets score are all at its exposure."""
    _, nets = tiny_nets
    shots = _drifting((0.9, 1.3, 1.0, 0.8))
    seen = _chain_grays(monkeypatch, nets, shots, FusionParams(exposure_match="brighter", working_min=0))
    ref = shots[1].astype(np.float64)
    for i, (ga, gb) in enumerate(seen, start=1):
        for g in (ga, gb):
            assert np.abs(g - ref).mean() < 1.0, (i, np.abs(g - ref).mean())


def test_chain_without_exposure_matching_is_the_pairs_one_into_the_next(tiny_nets, monkeypatch) -> None:
    """``exposure_match: none`` (the paper preset's): each step scores the fusion so far and the
    next shot as they are, the stack's fusion the pair fusions chained; two shots under any mode
    are the pair fusion, bit for bit."""
    _, nets = tiny_nets
    shots = _drifting((0.8, 0.9, 1.0, 1.1, 1.2))
    p = FusionParams(exposure_match="none", working_min=0)
    cur = shots[0]
    for i, step in enumerate(fuse_stack(shots, nets, p), start=1):
        want = fuse_images(cur, shots[i], nets, p)
        assert np.array_equal(step.fused, want.fused) and np.array_equal(step.decision, want.decision)
        cur = want.fused
    seen = _chain_grays(monkeypatch, nets, shots, p)
    assert np.array_equal(seen[0][0], shots[0]) and np.array_equal(seen[0][1], shots[1])
    for mode in ("linear", "auto"):
        p = FusionParams(exposure_match=mode, working_min=0)
        assert np.array_equal(fuse_stack(shots[:2], nets, p)[-1].fused, fuse_images(shots[0], shots[1], nets, p).fused)


def test_chain_scores_each_steps_a_as_the_composite_of_the_matched_grays(tiny_nets, monkeypatch) -> None:
    """Step i+1's A gray is step i's decision applied to step i's two scored grays (the shots it
    took, at the reference's exposure), not the first shot's gray alone nor the last B's: the
    drifting-texture tests above hold for either, their shots being one texture. The fused
    pixels are the shots' own, as they are."""
    import bafusion.fusion.rule as rule

    _, nets = tiny_nets
    rng = np.random.default_rng(7)
    shots = []
    for k, gain in enumerate((0.8, 0.9, 1.0, 1.1)):  # a texture of its own per shot, a shared layout
        g = ndimage.gaussian_filter(rng.normal(0, 1, (96, 96)), 2 + k) + ndimage.gaussian_filter(
            np.random.default_rng(1).normal(0, 1, (96, 96)), 6)
        shots.append(np.clip(np.round((110 + 50 * g / np.abs(g).max()) * gain), 0, 255).astype(np.uint8))
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    for name in ("decide", "decide_upscaled", "decide_working"):
        def spy(ga, gb, *a, _real=getattr(rule, name), **k):
            seen.append((ga.copy(), gb.copy()))
            return _real(ga, gb, *a, **k)

        monkeypatch.setattr(rule, name, spy)
    # the tiny nets' decisions all one way: each step takes its A's left half and B's right half
    half = np.zeros((96, 96), bool)
    half[:, :40] = True
    monkeypatch.setattr(rule, "clean_decision", lambda dm_raw, s0, params: half.copy())
    results = fuse_stack(shots, nets, FusionParams(exposure_match="linear", noise_match=False, working_min=0))
    assert len(seen) == 3
    mixed = 0
    for i in range(2):
        want = np.where(results[i].decision, seen[i][0], seen[i][1])
        assert np.array_equal(seen[i + 1][0], want), i
        mixed += not (np.array_equal(want, seen[i][0]) or np.array_equal(want, seen[i][1]))
    assert mixed  # a step took pixels of both: the composite is not one of its grays
    assert np.array_equal(results[-1].fused[:, :40], shots[0][:, :40])
    assert np.array_equal(results[-1].fused[:, 40:], shots[3][:, 40:])


@pytest.mark.parametrize("mode", ["linear", "linear_clip", "auto", "brighter"])
@pytest.mark.parametrize("level", [0, 128, 255])
def test_stack_exposure_passes_over_a_flat_reference(mode: str, level: int) -> None:
    """A flat shot (black, gray or white: a dropped frame, a lens cap) as the middle (or, with
    ``brighter``, the brightest) shot: no fit onto it is reliable, which left every shot at its
    own exposure (shots x0.8 and x1.2 of one scene scored 1.5x apart; before this change the
    chain matched the last shot onto the fusion so far). The reference is the nearest shot
    with a reliable fit instead, and the two others are matched onto one exposure."""
    from bafusion.fusion.exposure import stack_exposure

    shots = _drifting((0.8, 1.0, 1.2))
    flat = np.full_like(shots[0], level)
    grays = [shots[0], flat, shots[2]]
    s = stack_exposure(grays, mode)
    assert s.reference != 1
    g0, g2 = (s.gray(k, grays[k]).astype(np.float64) for k in (0, 2))
    assert np.abs(g0 - g2).mean() < 1.0, (s, np.abs(g0 - g2).mean())
    # a usable middle is kept: the flat shot elsewhere changes nothing of the choice
    assert stack_exposure([flat, shots[1], shots[2]], "linear").reference == 1


@pytest.mark.parametrize("mode", ["linear", "linear_clip", "auto", "brighter"])
@pytest.mark.parametrize("level", [0, 128, 255])
def test_joint_rule_passes_over_a_flat_reference(monkeypatch, mode: str, level: int) -> None:
    """The joint rule's twin of test_stack_exposure_passes_over_a_flat_reference: a flat shot
    (black, gray or white: a dropped frame, a lens cap) first (with ``brighter``, white as the
    brightest) left every shot at its own exposure (no fit onto it is reliable): shots x0.8 and
    x1.2 of one scene scored 45.6 gray levels apart (mean). The next shot is the reference
    instead, and the two are scored at one exposure; a usable first shot is kept."""
    import bafusion.fusion.stack as stack

    shots = _drifting((0.8, 1.0, 1.2))
    flat = np.full_like(shots[0], level)
    seen: list[list[np.ndarray]] = []

    class Scored(Exception):
        pass

    def spy(grays, *a, **k):
        seen.append(grays)
        raise Scored

    monkeypatch.setattr(stack, "_joint_decide", spy)
    # brighter: a flat black or gray shot is not the brightest (no flaw there), a white one is
    stacks = ([flat, shots[0], shots[2]], [shots[0], flat, shots[2]], [shots[0], shots[1], shots[2]])
    for st in stacks:
        with pytest.raises(Scored):
            fuse_stack_joint(st, None, FusionParams(stack_rule="joint", exposure_match=mode, working_min=0))
    gap = np.abs(seen[0][1].astype(np.float64) - seen[0][2].astype(np.float64)).mean()
    assert gap < 1.0, gap
    # the flat shot elsewhere changes nothing of the others' grays (the first shot is kept)
    others = [g for g, f in zip(seen[1], stacks[1]) if f is not flat]
    assert np.abs(others[0].astype(np.float64) - others[1].astype(np.float64)).mean() < 1.0
    if mode in ("linear", "linear_clip"):  # shot 0 is the reference: its gray as it is
        assert np.array_equal(seen[1][0], seen[2][0]) and np.array_equal(seen[2][0], shots[0])


@pytest.fixture(scope="module")
def stack_200():
    """A 3-layer stack of made-up textures, 200 px: small enough to be decided upscaled."""
    rng = np.random.default_rng(11)
    return synthetic_stack([_foreground(21, 120, 100), _foreground(22, 120, 100)], _texture(rng, 210, 210),
                           StackOptions(layers=3, size=200), seed=1)


def _check_full_size(res, shots, n: int = 3) -> None:
    h, w = shots[0].shape[:2]
    assert res.index.shape == res.index_initial.shape == res.index_raw.shape == res.near_boundary.shape == (h, w)
    assert res.scores.shape == (n, h, w)
    assert np.allclose(res.scores.sum(0), 0.0, atol=1e-3)
    assert np.array_equal(res.fused, compose(shots, res.index))
    assert np.array_equal(res.index_raw[~res.near_boundary], res.index_initial[~res.near_boundary])


def test_a_small_stack_is_decided_upscaled(shipped, one_torch_thread, stack_200) -> None:
    """``working_min`` 512: the 200 px stack is decided at 400 px (MAX_UPSCALE 2), its maps
    brought back to 200 px; it decides at least as well as at its own size."""
    shots = stack_200.shots
    own = fuse_stack_joint(shots, shipped, FusionParams(stack_rule="joint", working_min=0))
    up = fuse_stack_joint(shots, shipped, FusionParams(stack_rule="joint", working_min=512))
    _check_full_size(up, shots)
    assert "resize" in up.seconds and "resize" not in own.seconds
    assert not np.array_equal(up.scores, own.scores)
    acc_own, acc_up = stack_accuracy(own.index, stack_200.truth), stack_accuracy(up.index, stack_200.truth)
    assert acc_up >= acc_own, (acc_up, acc_own)  # measured 0.9960 vs 0.9906
    assert acc_up > 0.99, acc_up


def test_a_large_stack_is_decided_at_the_working_resolution(shipped, one_torch_thread, stack_200) -> None:
    """``working_side`` (here 128 with ``working_above`` 0, so that a 200 px stack counts as
    large): decided at 128 px, the index brought back by nearest neighbour, no band refinement."""
    shots = stack_200.shots
    res = fuse_stack_joint(shots, shipped, FusionParams(stack_rule="joint", working_min=0, working_side=128,
                                                        working_above=0))
    _check_full_size(res, shots)
    assert "resize" in res.seconds
    # Nearest neighbour from 128 px: full-size rows (and columns) that fall in one working row
    # are copies of it.
    src = ((np.arange(200) + 0.5) * 128 / 200).astype(int)
    twins = np.flatnonzero(src[1:] == src[:-1])
    assert len(twins) == 72
    for m in (res.index_initial, res.index_raw, res.near_boundary):
        assert np.array_equal(m[twins], m[twins + 1]) and np.array_equal(m[:, twins], m[:, twins + 1])
    own = fuse_stack_joint(shots, shipped, FusionParams(stack_rule="joint", working_min=0))
    assert not np.array_equal(own.index_initial[twins], own.index_initial[twins + 1])
    assert stack_accuracy(res.index, stack_200.truth) > 0.975  # measured 0.9855 (0.9906 at 200 px)


def test_flat_filling_moves_the_joint_decision_only_where_the_shots_hardly_differ(shipped, one_torch_thread) -> None:
    """``flat_level`` 6 on a stack whose background is half flat: the joint decision changes on
    most pixels where the shots hardly differ (the nets' votes there carry no focus cue) and on
    almost none where they differ, and the accuracy is kept. (This stack's decidable pixels
    include near-flat background by its sharp foregrounds, which no setting gets all right.)"""
    bg = _texture(np.random.default_rng(11), 120, 120)
    bg[:, :60] = 90
    st = synthetic_stack([_foreground(21, 70, 60), _foreground(22, 70, 60)], bg, StackOptions(layers=3, size=112),
                         seed=1)
    g = [s.astype(np.float32).mean(2) for s in st.shots]
    d = np.max([ndimage.gaussian_filter(np.abs(g[i] - g[j]), 2.0) for i in range(3) for j in range(i + 1, 3)], axis=0)
    off = fuse_stack_joint(st.shots, shipped, FusionParams(stack_rule="joint"))
    on = fuse_stack_joint(st.shots, shipped, FusionParams(stack_rule="joint", flat_level=6.0))
    _check_full_size(on, st.shots)
    changed = on.index != off.index
    assert (d < 2).mean() > 0.2 and (d > 20).mean() > 0.3
    assert changed[d < 2].mean() > 0.5, changed[d < 2].mean()  # measured 0.86
    assert changed[d > 20].mean() < 0.02, changed[d > 20].mean()  # measured 0.005
    acc_off, acc_on = stack_accuracy(off.index, st.truth), stack_accuracy(on.index, st.truth)
    assert acc_on >= acc_off - 0.005 and acc_on > 0.86, (acc_on, acc_off)  # measured 0.8863 vs 0.8839


def test_joint_rule_refuses_bad_stacks(tiny_nets) -> None:
    _, nets = tiny_nets
    a = np.zeros((20, 20), np.uint8)
    with pytest.raises(UserError, match="at least two"):
        fuse_stack_joint([a], nets)
    with pytest.raises(InputFileError, match="c.png: size 21x20"):
        fuse_stack_joint([a, a, np.zeros((20, 21), np.uint8)], nets, names=["a.png", "b.png", "c.png"])
    with pytest.raises(UserError, match=r"fuse\.stack_rule: 'tree' is not one of chain \| joint"):
        FusionParams(stack_rule="tree")


# -- the command line -----------------------------------------------------------------


def _write_shots(folder: Path, n: int, size: tuple[int, int] = (40, 48)) -> list[str]:
    rng = np.random.default_rng(7)
    paths = []
    for i in range(n):
        p = folder / f"s{i}.png"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def test_two_images_fuse_exactly_as_a_pair_under_both_rules(tiny_nets, tmp_path: Path) -> None:
    d, nets = tiny_nets
    a, b = _write_shots(tmp_path, 2)
    outs = {}
    for rule in ("chain", "joint"):
        out = tmp_path / f"{rule}.png"
        assert cli_main(["fuse", a, b, "-o", str(out), "--model", str(d), "--stack-rule", rule, "--device", "cpu"]) == 0
        outs[rule] = np.asarray(Image.open(out))
    pair = fuse_images(np.asarray(Image.open(a)), np.asarray(Image.open(b)), nets).fused
    assert np.array_equal(outs["chain"], pair) and np.array_equal(outs["joint"], pair)


def test_stack_rules_on_the_command_line_with_save_maps(tiny_nets, tmp_path: Path, capsys) -> None:
    d, nets = tiny_nets
    paths = _write_shots(tmp_path, 3)
    shots = [np.asarray(Image.open(p)) for p in paths]
    out = tmp_path / "joint.png"
    assert cli_main(["fuse", *paths, "-o", str(out), "--model", str(d), "--stack-rule", "joint",
                     "--save-maps", str(tmp_path / "maps"), "--device", "cpu"]) == 0
    want = fuse_stack_joint(shots, nets, FusionParams(stack_rule="joint")).fused
    assert np.array_equal(np.asarray(Image.open(out)), want)
    for key in STACK_MAP_KEYS:
        assert (tmp_path / "maps" / f"joint-{key}.png").is_file(), key
    err = capsys.readouterr().err
    assert f"bafusion fuse: maps: 5 files in {tmp_path / 'maps'} (joint-*.png: index-initial," in err, err
    index = np.asarray(Image.open(tmp_path / "maps" / "joint-index.png"))
    assert set(np.unique(index)) <= {0, 128, 255}
    out = tmp_path / "chain.png"
    assert cli_main(["fuse", *paths, "-o", str(out), "--model", str(d), "--stack-rule", "chain",
                     "--save-maps", str(tmp_path / "maps"), "--device", "cpu"]) == 0
    assert np.array_equal(np.asarray(Image.open(out)), fuse_stack(shots, nets)[-1].fused)
    assert (tmp_path / "maps" / "chain-step02-dm.png").is_file()
    assert f"bafusion fuse: maps: 18 files in {tmp_path / 'maps'} (chain-step01-*.png, chain-step02-*.png:" \
        in capsys.readouterr().err


def test_save_stack_maps_of_a_hand_built_result(tmp_path: Path) -> None:
    """A StackResult built by hand without ``shots`` (and without scores) was an AttributeError
    on None; now a clear error before any file, and with ``shots`` the maps are written."""
    from bafusion.fusion.stack import StackResult, save_stack_maps

    idx = np.zeros((8, 8), np.int16)
    idx[:, 4:] = 2
    near = np.zeros((8, 8), bool)
    bare = StackResult(np.zeros((8, 8, 3), np.uint8), None, idx, near, idx, idx)
    with pytest.raises(UserError, match="how many shots"):
        save_stack_maps(tmp_path, "hand", bare)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match=r"names shots 0..2, outside 0..1 of a stack of 2 shots"):
        save_stack_maps(tmp_path, "hand", StackResult(bare.fused, None, idx, near, idx, idx, shots=2))
    assert list(tmp_path.iterdir()) == []
    written = save_stack_maps(tmp_path, "hand", StackResult(bare.fused, None, idx, near, idx, idx, shots=5))
    assert [p.name for p in written] == [f"hand-{k}.png" for k in STACK_MAP_KEYS]
    assert set(np.unique(np.asarray(Image.open(tmp_path / "hand-index.png")))) == {0, 128}  # shot 2 of 0..4
    scored = StackResult(bare.fused, np.zeros((3, 8, 8), np.float32), idx, near, idx, idx)  # n from the scores
    save_stack_maps(tmp_path, "scored", scored)
    assert set(np.unique(np.asarray(Image.open(tmp_path / "scored-index.png")))) == {0, 255}


_STEP_MAPS = ("fused", "score_initial", "score_mean", "near_boundary", "score_refined", "decision_raw")


def test_a_chain_with_save_maps_encodes_each_steps_maps_as_it_is_done(tiny_nets, tmp_path: Path, monkeypatch) -> None:
    """``fuse --save-maps`` of a chain held every step's full-size maps (about 18 bytes a pixel a
    step) to write them after the fused image: 8 shots of 5.3 MP peaked at 1664 MiB, twice the
    fusion without the maps (BENCHMARKS.md "Memory of a stack"). Each step's maps are now
    encoded as PNG as the step is done and its arrays let go (only the last step's kept), and
    written after the fused image: every file byte for byte what ``save_maps`` writes from the
    steps' whole results."""
    import bafusion.fusion.batch as batch
    from bafusion.fusion.maps import MAP_KEYS, save_maps

    d, nets = tiny_nets
    n = 4
    paths = _write_shots(tmp_path, n)
    shots = [np.asarray(Image.open(p)) for p in paths]
    held: dict[str, object] = {}
    real = batch.fused_output

    def spy(src, results, output):
        held["chain"] = results
        return real(src, results, output)

    monkeypatch.setattr(batch, "fused_output", spy)
    out = tmp_path / "st.png"
    assert cli_main(["fuse", *paths, "-o", str(out), "--model", str(d), "--stack-rule", "chain",
                     "--save-maps", str(tmp_path / "maps"), "--device", "cpu"]) == 0
    chain = held["chain"]
    assert len(chain) == n - 1
    for r in chain[:-1]:
        assert [k for k in _STEP_MAPS if getattr(r, k) is not None] == []
    full = fuse_stack(shots, nets)  # every step's maps held, written by save_maps as before
    cur = shots[0]
    for i, res in enumerate(full):
        save_maps(tmp_path / "want", f"st-step{i + 1:02d}", res, cur, shots[i + 1])
        cur = res.fused
    names = sorted(p.name for p in (tmp_path / "maps").iterdir())
    assert names == sorted(f"st-step{i + 1:02d}-{k}.png" for i in range(n - 1) for k in MAP_KEYS)
    for name in names:
        assert (tmp_path / "maps" / name).read_bytes() == (tmp_path / "want" / name).read_bytes(), name
    assert np.array_equal(np.asarray(Image.open(out)), full[-1].fused)


@pytest.mark.parametrize("entry", ["fuse", "fuse-dir", "api"])
def test_stacks_hold_no_maps_that_nothing_reads(tiny_nets, tmp_path: Path, monkeypatch, entry: str) -> None:
    """The chain kept every step's full-size maps (about 18 bytes a pixel a step) to the end and
    the joint rule its N logit sums at full size (twice), though ``fuse``, ``fuse-dir`` and
    :func:`bafusion.fuse` read only the last fusion, each step's decision and gains (the 16-bit
    composition, chain_index) and the joint rule's index: at 5.3 MP the chain's peak grew
    ~115 MB a shot. Now only those are held; ``--save-maps`` keeps everything (its test above);
    the fused pixels are the same."""
    import bafusion
    import bafusion.fusion.api as api
    import bafusion.fusion.batch as batch

    d, nets = tiny_nets
    n = 5
    paths = _write_shots(tmp_path, n)
    shots = [np.asarray(Image.open(p)) for p in paths]
    full = fuse_stack(shots, nets)
    held: dict[str, object] = {}
    if entry == "api":
        real_chain, real_joint = api.fuse_stack, bafusion.fusion.stack.fuse_stack_joint
        monkeypatch.setattr(api, "fuse_stack", lambda *a, **k: held.setdefault("chain", real_chain(*a, **k)))
        monkeypatch.setattr(bafusion.fusion.stack, "fuse_stack_joint",
                            lambda *a, **k: held.setdefault("joint", real_joint(*a, **k)))
    else:
        real = batch.fused_output

        def spy(src, results, output):
            held["joint" if not isinstance(results, list) else "chain"] = results
            return real(src, results, output)
        monkeypatch.setattr(batch, "fused_output", spy)
    got = {}
    for rule in ("chain", "joint"):
        out = tmp_path / "out" / f"{rule}.png"
        out.parent.mkdir(exist_ok=True)
        if entry == "api":
            got[rule] = bafusion.fuse(*paths, model=d, device="cpu", params={"stack_rule": rule})
        elif entry == "fuse":
            assert cli_main(["fuse", *paths, "-o", str(out), "--model", str(d), "--stack-rule", rule,
                             "--device", "cpu"]) == 0
            got[rule] = np.asarray(Image.open(out))
        else:
            src = tmp_path / "in" / rule / "st"  # a sub-folder: one stack, its shots in name order
            src.mkdir(parents=True)
            for i, p in enumerate(paths):
                (src / f"{i}.png").write_bytes(Path(p).read_bytes())
            assert cli_main(["fuse-dir", str(src.parent), str(tmp_path / "out" / rule),
                             "--model", str(d), "--stack-rule", rule, "--device", "cpu"]) == 0
            got[rule] = np.asarray(Image.open(tmp_path / "out" / rule / "st.png"))
    chain = held["chain"]
    assert len(chain) == n - 1
    for r in chain[:-1]:  # the earlier steps: their decision, gains and notes only
        assert [k for k in _STEP_MAPS if getattr(r, k) is not None] == [], entry
        assert r.decision is not None
    assert all(getattr(chain[-1], k) is not None for k in _STEP_MAPS)
    assert held["joint"].scores is None and held["joint"].shots == n
    # the same pixels as with every map kept
    assert np.array_equal(got["chain"], full[-1].fused)
    assert np.array_equal(chain_index(chain), chain_index(full))
    assert np.array_equal(got["joint"], fuse_stack_joint(shots, nets, FusionParams(stack_rule="joint")).fused)


@pytest.mark.parametrize("rule", ["joint", "chain"])
def test_symmetric_regions_with_the_joint_rule_gets_a_note(tiny_nets, tmp_path: Path, capsys, rule: str) -> None:
    """``--stack-rule joint --symmetric-regions`` said nothing, though the flag changes nothing
    there (the joint rule judges its index map's regions alike already): now a note says so."""
    d, _ = tiny_nets
    paths = _write_shots(tmp_path, 3)
    assert cli_main(["fuse", *paths, "-o", str(tmp_path / "f.png"), "--model", str(d), "--stack-rule", rule,
                     "--symmetric-regions", "--device", "cpu", "--no-progress"]) == 0
    note = ("bafusion fuse: note: --symmetric-regions changes nothing with --stack-rule joint: the joint rule judges "
            "every region of its shot-index map alike already (it is for a pair and the chain rule's steps)")
    assert (note in capsys.readouterr().err) == (rule == "joint")
    # a pair is fused by the pair rule, whichever the stack rule: no note
    assert cli_main(["fuse", *paths[:2], "-o", str(tmp_path / "p.png"), "--model", str(d), "--stack-rule", "joint",
                     "--symmetric-regions", "--device", "cpu", "--no-progress"]) == 0
    assert "note: --symmetric-regions" not in capsys.readouterr().err


@pytest.mark.parametrize("rule", ["joint", "chain"])
def test_fuse_dir_symmetric_regions_with_the_joint_rule_gets_a_note(tiny_nets, tmp_path: Path, capsys,
                                                                   rule: str) -> None:
    """``fuse-dir --stack-rule joint --symmetric-regions`` said nothing (``fuse`` says that the
    flag changes nothing for the joint rule's stacks): a note, once, naming the stacks of 3+ shots."""
    d, _ = tiny_nets
    src = tmp_path / "in"
    src.mkdir()
    for name, n in (("x", 3), ("y", 2), ("z", 3)):
        for i, p in enumerate(_write_shots(tmp_path, n)):
            Path(p).rename(src / f"{name}-{'ABC'[i]}.png")
    args = ["--model", str(d), "--stack-rule", rule, "--symmetric-regions", "--device", "cpu", "--no-progress"]
    assert cli_main(["fuse-dir", str(src), str(tmp_path / "out"), *args]) == 0
    note = ("bafusion fuse-dir: note: --symmetric-regions changes nothing with --stack-rule joint for the 2 stack(s) "
            "of 3 or more shots: the joint rule judges every region of its shot-index map alike already (it is for "
            "the pairs and the chain rule's steps)")
    assert capsys.readouterr().err.count(note) == (rule == "joint")
    for p in (src / "x-C.png", src / "z-C.png"):  # pairs only: the flag is for them, no note
        p.unlink()
    assert cli_main(["fuse-dir", str(src), str(tmp_path / "out2"), *args]) == 0
    assert "note: --symmetric-regions" not in capsys.readouterr().err


def test_command_line_refuses_bad_stacks(tiny_nets, tmp_path: Path, capsys) -> None:
    d, _ = tiny_nets
    (tmp_path / "x").mkdir()
    paths = _write_shots(tmp_path, 2) + _write_shots(tmp_path / "x", 1, size=(40, 50))
    rc = cli_main(["fuse", *paths, "-o", str(tmp_path / "o.png"), "--model", str(d), "--stack-rule", "joint"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "x/s0.png: size 50x40" in err[0], err
    rc = cli_main(["fuse", paths[0], "-o", str(tmp_path / "o.png"), "--model", str(d), "--stack-rule", "joint"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "at least two" in err[0], err
    with pytest.raises(SystemExit):
        cli_main(["fuse", *paths[:2], "-o", str(tmp_path / "o.png"), "--stack-rule", "tree"])


# -- accuracy with the shipped nets on real data --------------------------------------


@needs_data
@pytest.mark.parametrize("rule", ["chain", "joint"])
def test_stack_rule_decides_at_least_98_percent_right(rule: str) -> None:
    import torch

    torch.set_num_threads(1)
    st = stack_from_data(DATA, StackOptions(layers=3, size=320), seed=0)
    nets = load_nets_from_dir(None, "cpu")
    params = FusionParams(stack_rule=rule)
    idx = fuse_stack_joint(st.shots, nets, params).index if rule == "joint" else chain_index(
        fuse_stack(st.shots, nets, params))
    assert (st.truth == AMBIGUOUS).mean() < 0.3
    assert stack_accuracy(idx, st.truth) >= 0.98


def test_fuse_set_report_is_the_same_under_both_rules(tiny_nets, tmp_path: Path) -> None:
    """fuse-set fuses pairs: the stack rule plays no part, and its report (a DVC output) does
    not change with it."""
    import json

    d, _ = tiny_nets
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    a, b = _write_shots(pairs, 2)
    Path(a).rename(pairs / "p-A.png")
    Path(b).rename(pairs / "p-B.png")
    (pairs / "index.json").write_text(json.dumps(["p"]))
    reports = []
    for rule in ("chain", "joint"):
        out = tmp_path / rule
        assert cli_main(["fuse-set", "--pairs", str(pairs), "--models", str(d), "--out", str(out),
                         "--params-json", json.dumps({"stack_rule": rule}), "--device", "cpu"]) == 0
        reports.append((out / "accuracy.json").read_text())
        assert (out / "p.png").is_file()
    assert reports[0] == reports[1] and "stack_rule" not in reports[0]


def test_joint_rule_weighs_both_nets_in_the_band(shipped, one_torch_thread, stack_200) -> None:
    """``boundary_weight`` < 1: the joint rule's band pixels weigh the leading pair's initial
    vote with the boundary net's, as the pair rule does; outside the band nothing changes."""
    shots = stack_200.shots
    paper = fuse_stack_joint(shots, shipped, FusionParams(stack_rule="joint", working_min=0, boundary_weight=1.0))
    half = fuse_stack_joint(shots, shipped, FusionParams(stack_rule="joint", working_min=0, boundary_weight=0.5))
    assert np.array_equal(paper.index_initial, half.index_initial)
    assert np.array_equal(paper.near_boundary, half.near_boundary)
    out = ~paper.near_boundary
    assert np.array_equal(paper.index_raw[out], half.index_raw[out])
    changed = (paper.index_raw != half.index_raw).sum()
    assert changed > 0  # the weight reaches the band
    assert stack_accuracy(half.index, stack_200.truth) > 0.98


def test_joint_rule_says_it_does_not_match_noise(tiny_nets) -> None:
    """``noise_match`` is the pair rule's (and the chain's); the joint rule scored the shots as
    they are and said nothing, so ``fuse a b c --stack-rule joint --noise-match`` silently gave
    the output without it. Now a note says so; the fusion is unchanged."""
    _, nets = tiny_nets
    rng = np.random.default_rng(3)
    shots = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(3)]
    off = fuse_stack_joint(shots, nets, FusionParams(stack_rule="joint", working_min=0))
    on = fuse_stack_joint(shots, nets, FusionParams(stack_rule="joint", working_min=0, noise_match=True))
    assert np.array_equal(off.fused, on.fused)
    assert not any("noise_match" in n for n in off.notes)
    assert any("noise_match" in n and "joint" in n for n in on.notes), on.notes


def test_joint_rule_brighter_maps_every_shot_onto_the_brightest_one(monkeypatch) -> None:
    """``exposure_match: brighter`` in the joint rule: the brightest shot (the highest mean gray,
    here the third, 1.6x and clipped) is kept and the others are mapped up onto its exposure, so
    they clip where it does; with linear every shot goes onto the first one's exposure."""
    shots, seen = _joint_grays(monkeypatch, ("linear", "brighter", "auto"))
    for x, y in zip(seen["auto"], seen["brighter"]):  # auto: one shot clips clearly more, so brighter
        assert np.array_equal(x, y)
    assert seen["brighter"][2] is not None and np.array_equal(seen["brighter"][2], shots[2])
    clipped = shots[2] == 255
    for x in seen["brighter"][:2]:
        assert abs(float(x[~clipped].mean()) - float(shots[2][~clipped].mean())) < 3
        assert (x[clipped] >= 250).mean() > 0.9
    assert np.array_equal(seen["linear"][0], shots[0])


def test_joint_rule_says_it_does_not_remove_unsure_regions(tiny_nets) -> None:
    """``unsure_region`` is the pair rule's (and the chain's); the joint rule removed only the
    regions under ``min_region`` and said nothing, so ``fuse a b c --stack-rule joint
    --unsure-region 0.03`` silently gave the output without it. Now a note says so (as for
    ``noise_match``); the fusion is unchanged, and an ``unsure_region`` not above ``min_region``
    (off) gets no note."""
    _, nets = tiny_nets
    rng = np.random.default_rng(3)
    shots = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(3)]
    off = fuse_stack_joint(shots, nets, FusionParams(stack_rule="joint", working_min=0))
    on = fuse_stack_joint(shots, nets, FusionParams(stack_rule="joint", working_min=0, unsure_region=0.03))
    below = fuse_stack_joint(shots, nets, FusionParams(stack_rule="joint", working_min=0, unsure_region=0.005))
    assert np.array_equal(off.fused, on.fused)
    assert not any("unsure_region" in n for n in off.notes + below.notes)
    assert any("unsure_region" in n and "joint" in n and "0.03" in n for n in on.notes), on.notes


def test_joint_rule_says_it_does_not_refine_the_working_band(tiny_nets) -> None:
    """``working_refine`` and ``working_band`` are the pair rule's (the chain's): the joint rule
    brings its working-resolution index to full size as it is, and ``fuse a b c --stack-rule joint
    --working-refine boundary`` gave the same output in silence (measured: 3 shots of 1300 x 1200,
    the shipped nets, guided / none / boundary / band 32: one sha1). Now a note says so (as for
    ``noise_match``); not for the defaults, nor for a stack decided at its own size."""
    _, nets = tiny_nets
    rng = np.random.default_rng(3)
    shots = [rng.integers(0, 256, (80, 96), dtype=np.uint8) for _ in range(3)]
    small = dict(stack_rule="joint", working_min=0, working_side=64, working_above=64)
    off = fuse_stack_joint(shots, nets, FusionParams(**small))
    on = fuse_stack_joint(shots, nets, FusionParams(**small, working_refine="boundary", working_band=4))
    own = fuse_stack_joint(shots, nets, FusionParams(stack_rule="joint", working_min=0, working_refine="none"))
    assert np.array_equal(off.fused, on.fused)
    assert not any("working_" in n for n in off.notes + own.notes), off.notes + own.notes
    assert any("fuse.working_refine (--working-refine boundary) and fuse.working_band (--working-band 4) are not used "
               "by the joint stack rule" in n for n in on.notes), on.notes


@pytest.mark.parametrize(("extra", "rule", "said"), [
    ([], "chain", "they set the difference maps that --save-maps writes, and it is not given"),
    (["--save-maps", "maps"], "joint", "the joint stack rule's maps (--save-maps) hold no difference map"),
    (["--save-maps", "maps"], "chain", None),
])
def test_fuse_alpha_and_diff_cmap_that_change_nothing_get_a_note(tiny_nets, tmp_path: Path, capsys, extra: list,
                                                                  rule: str, said: str | None) -> None:
    """``fuse --alpha 20 --diff-cmap jet`` set the difference maps' gain and colours, but without
    ``--save-maps`` (or with the joint rule, whose maps hold no difference map) nothing used them,
    and nothing was said: now a note says so; with ``--save-maps`` and a pair's rule, none."""
    d, _ = tiny_nets
    paths = _write_shots(tmp_path, 3)
    extra = [str(tmp_path / x) if x == "maps" else x for x in extra]
    assert cli_main(["fuse", *paths, "-o", str(tmp_path / "f.png"), "--model", str(d), "--stack-rule", rule,
                     "--alpha", "20", "--diff-cmap", "jet", *extra, "--device", "cpu", "--no-progress"]) == 0
    err = capsys.readouterr().err
    if said is None:
        assert "change nothing" not in err, err
    else:
        assert f"bafusion fuse: note: --alpha 20 and --diff-cmap jet change nothing: {said}" in err, err


def test_joint_rule_says_it_does_not_use_low(tiny_nets) -> None:
    """The joint rule's band is where no shot holds ``high`` of its window: ``low`` is not read
    (for two shots the band is the pair rule's for ``low = 1 - high``), so ``--low 0.05`` with
    ``--stack-rule joint`` changed nothing, in silence. Now a note says so when ``low`` is not
    ``1 - high``; the defaults (0.2, 0.8) get none, and the fusion is unchanged."""
    _, nets = tiny_nets
    rng = np.random.default_rng(3)
    shots = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(3)]
    off = fuse_stack_joint(shots, nets, FusionParams(stack_rule="joint", working_min=0))
    on = fuse_stack_joint(shots, nets, FusionParams(stack_rule="joint", working_min=0, low=0.05))
    assert np.array_equal(off.fused, on.fused) and np.array_equal(off.near_boundary, on.near_boundary)
    assert not any("fuse.low" in n for n in off.notes), off.notes
    assert any("fuse.low (--low 0.05)" in n and "joint" in n for n in on.notes), on.notes


def test_joint_rule_low_note_not_for_a_default_low_nobody_gave(tiny_nets) -> None:
    """``--stack-rule joint --high 0.9`` alone: ``low`` is its default (0.2), which nobody gave,
    and the note named it as if given ("fuse.low (--low 0.2) is not used"). A ``low`` equal to the
    default gets no note (a params file that holds the default neither); another one still does."""
    _, nets = tiny_nets
    rng = np.random.default_rng(3)
    shots = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(3)]
    high = fuse_stack_joint(shots, nets, FusionParams(stack_rule="joint", working_min=0, high=0.9))
    both = fuse_stack_joint(shots, nets, FusionParams(stack_rule="joint", working_min=0, high=0.9, low=0.3))
    assert not any("fuse.low" in n for n in high.notes), high.notes
    assert any("fuse.low (--low 0.3)" in n for n in both.notes), both.notes


def test_fuse_dir_says_a_joint_rule_parameter_note_once(tiny_nets, tmp_path: Path, capsys) -> None:
    """The joint rule's notes on the parameters (fuse.low, fuse.unsure_region, fuse.noise_match)
    are the same for every stack: fuse-dir said each once per stack (a wall of them for a
    folder of stacks); now once a run, as the other notes without a file name."""
    d, _ = tiny_nets
    src = tmp_path / "in"
    for name in ("a", "b", "c"):
        (src / name).mkdir(parents=True)
        _write_shots(src / name, 3)
    assert cli_main(["fuse-dir", str(src), str(tmp_path / "out"), "--model", str(d), "--stack-rule", "joint",
                     "--low", "0.05", "--device", "cpu", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert err.count("fuse.low (--low 0.05) is not used by the joint stack rule") == 1, err
    assert "bafusion fuse-dir: note: fuse.low (--low 0.05) is not used" in err, err
    assert cli_main(["fuse", *_write_shots(src / "a", 3), "-o", str(tmp_path / "f.png"), "--model", str(d),
                     "--stack-rule", "joint", "--low", "0.05", "--device", "cpu", "--no-progress"]) == 0
    assert "bafusion fuse: note: fuse.low (--low 0.05) is not used" in capsys.readouterr().err
