"""Where a patch's score is placed (``fuse.score_position``, :func:`bafusion.fusion.scoring.score`):
the shipped nets, trained with bafusion 0.2.0's labels (on average the patch's geometric centre),
placed the focus boundary about half a pixel down and right of the truth; ``centre`` moves each
net's scores to the geometric centre, ``auto`` does so only for nets whose description records
a patch set written before 0.3.0."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from bafusion.config import load_preset
from bafusion.fusion import FusionParams, fuse_images, load_nets_from_dir
from bafusion.fusion.models import label_position
from bafusion.fusion.scoring import at_centre, centre_scores, score

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    from conftest import make_tiny_nets

    return load_nets_from_dir(make_tiny_nets(tmp_path_factory.mktemp("pos") / "nets"), device="cpu")


@pytest.fixture(scope="module")
def shipped_nets():
    from bafusion import load_model

    return load_model("default", device="cpu")


def _pair(h: int = 44, w: int = 58) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    scene = ndimage.gaussian_filter(rng.uniform(0, 255, (h, w)), 0.7)
    blur = ndimage.gaussian_filter(scene, 2.5)
    left = np.zeros((h, w), bool)
    left[:, : w // 2] = True
    return (np.round(np.where(left, scene, blur)).astype(np.uint8),
            np.round(np.where(left, blur, scene)).astype(np.uint8))


def test_label_position_follows_the_patch_files_version() -> None:
    for model in ("default", "lytro-2026-11"):  # both trained on patch files of 0.1.0 (the model cards)
        for net in ("initial", "boundary"):
            meta = json.loads((REPO / "models" / model / f"{net}.json").read_text())
            assert label_position(meta) == "centre", (model, net)
    meta = {"patch": 32, "patches_attrs": {"code_version": "0.1.0", "patch": 32, "context": 16}}
    assert label_position(meta) == "centre"
    for version in ("0.3.0", "0.6.0", "1.0"):  # y_block: each variant labelled at its own pixel
        assert label_position({**meta, "patches_attrs": {**meta["patches_attrs"], "code_version": version}}) == "pixel"
    assert label_position({"patch": 32}) == "pixel"  # nothing recorded: as before
    assert label_position({"patch": 33, "patches_attrs": {"code_version": "0.1.0", "patch": 33}}) == "pixel"  # odd


def test_at_centre() -> None:
    assert not at_centre("pixel", "centre") and not at_centre("auto", "pixel")
    assert at_centre("centre", "pixel") and at_centre("auto", "centre")
    with pytest.raises(Exception, match="score_position"):
        FusionParams(score_position="middle")


def test_centre_scores_is_the_half_pixel_bilinear_value() -> None:
    s = np.arange(12, dtype=np.float32).reshape(3, 4) ** 2
    c = centre_scores(s)
    assert c[0, 0] == pytest.approx((0 + 1 + 16 + 25) / 4)
    assert c[1, 3] == pytest.approx((49 + 121) / 2)  # the last column repeated
    assert c[2, 3] == s[2, 3]
    s[0, 1] = np.nan
    assert np.isnan(centre_scores(s)[0, 0]) and np.isfinite(centre_scores(s)[1, 1])


@pytest.mark.parametrize("mode", ["dense", "exact"])
def test_score_at_centre_is_the_mean_of_the_pixel_scores(tiny, mode: str) -> None:
    a, b = _pair()
    params = FusionParams(exact=mode == "exact", working_min=0)
    plain = score(tiny.initial, a, b, tiny.patch_initial, params, 4, device="cpu")
    moved = score(tiny.initial, a, b, tiny.patch_initial, params, 4, device="cpu", centre=True)
    np.testing.assert_allclose(moved, centre_scores(plain), atol=1e-6)
    assert np.abs(moved - plain).max() > 1e-3
    # masked (the boundary net's exact patches): the pixels right of and below the mask are
    # scored too, so each masked pixel gets the same value as in the whole map
    mask = np.zeros(a.shape, bool)
    mask[10:30, 20:40] = True
    mask[40:, 50:] = True  # up to the border
    p = FusionParams(working_min=0, boundary_mode="exact")
    full = centre_scores(score(tiny.boundary, a, b, tiny.patch_boundary, p, 4, device="cpu", mask=np.ones_like(mask)))
    s = score(tiny.boundary, a, b, tiny.patch_boundary, p, 4, mask=mask, device="cpu", centre=True)
    assert np.isnan(s[~mask]).all()
    np.testing.assert_allclose(s[mask], full[mask], atol=1e-6)


@pytest.mark.parametrize("kw", [{"working_min": 0}, {"working_min": 0, "tta": "dihedral"},
                                {"working_min": 0, "working_above": 100, "working_side": 64}])
def test_auto_changes_nothing_for_nets_with_todays_labels(shipped_nets, kw: dict) -> None:
    """Nets whose labels sit at the pixel (today's, or nothing recorded): ``auto`` gives the
    same bytes as ``pixel``; the shipped nets (0.2.0's labels) move with it."""
    import copy

    a, b = _pair(96, 110) if "working_side" in kw else _pair(72, 80)
    todays = copy.copy(shipped_nets)  # the same nets, described as trained with today's labels
    todays.label_positions = ("pixel", "pixel")
    base = fuse_images(a, b, todays, FusionParams(score_position="pixel", **kw), progress=False)
    auto = fuse_images(a, b, todays, FusionParams(score_position="auto", **kw), progress=False)
    for name in ("fused", "decision", "decision_raw", "score_initial", "score_refined", "near_boundary"):
        assert np.array_equal(getattr(base, name), getattr(auto, name)), name
    moved = fuse_images(a, b, shipped_nets, FusionParams(score_position="auto", **kw), progress=False)
    assert not np.array_equal(moved.score_initial, base.score_initial)


def _shifts(truth: np.ndarray, dm: np.ndarray, m: int = 2) -> dict[tuple[int, int], int]:
    """Decision errors of the map shifted by (dy, dx): truth(y, x) against dm(y + dy, x + dx)."""
    h, w = truth.shape
    return {(dy, dx): int((truth[m:h - m, m:w - m] != dm[m + dy:h - m + dy, m + dx:w - m + dx]).sum())
            for dy in range(-m, m + 1) for dx in range(-m, m + 1)}


def test_centre_removes_the_shipped_nets_shift_on_a_known_boundary(shipped_nets) -> None:
    """Three 128-px crops of scikit-image textures, sharp in A inside a disc and blurred
    (sigma 2.5) outside, B the reverse. With the scores at the pixel the shipped nets' map lines
    up best with the truth moved down and right by a pixel; at the geometric centre it lines up
    unshifted, with fewer errors (measured: 660 -> 532 errors; 1467 -> 1222 over six textures)."""
    from skimage import data

    from bafusion.data.composite import defocus

    s = 128
    yy, xx = np.mgrid[:s, :s]
    truth = (yy - s / 2 + 5) ** 2 + (xx - s / 2 + 3) ** 2 < (s * 0.3) ** 2
    total: dict[str, dict[tuple[int, int], int]] = {"pixel": {}, "centre": {}}
    for name in ("brick", "grass", "gravel"):
        img = getattr(data, name)().astype(np.float64)
        h, w = img.shape[:2]
        img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        bl = defocus(img, 2.5)
        a = np.clip(np.round(np.where(truth, img, bl)), 0, 255).astype(np.uint8)
        b = np.clip(np.round(np.where(truth, bl, img)), 0, 255).astype(np.uint8)
        for pos in total:
            dm = fuse_images(a, b, shipped_nets, FusionParams(score_position=pos, working_min=0),
                             progress=False).decision_raw
            for k, v in _shifts(truth, dm).items():
                total[pos][k] = total[pos].get(k, 0) + v
    best = {pos: min(t, key=t.get) for pos, t in total.items()}
    assert best["pixel"] in ((1, 1), (0, 1), (1, 0)), total["pixel"]
    assert best["centre"] == (0, 0), total["centre"]
    assert total["centre"][(0, 0)] < 0.9 * total["pixel"][(0, 0)]


def test_presets_pin_the_pixel() -> None:
    """The paper places a patch's score at its pixel; nets the paper preset trains (today's
    labels) would get it with ``auto`` too."""
    assert load_preset("paper")["fuse"]["score_position"] == "pixel"
