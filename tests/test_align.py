"""Alignment of handheld brackets (issue 14): known transforms are recovered, registered shots
are left alone, the crop is the area every shot covers, two scenes are refused unless --force."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from bafusion.cli import main as cli_main
from bafusion.fusion import align
from bafusion.fusion.align import (
    align_images,
    corner_rms,
    estimate_transform,
    similarity_matrix,
    warp_to_first,
)


def _texture(seed: int, h: int = 200, w: int = 240) -> np.ndarray:
    """A textured RGB scene: smoothed noise at two scales, uint8."""
    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.normal(size=(h, w, 3)), (2, 2, 0)) * 4
    x += ndimage.gaussian_filter(rng.normal(size=(h, w, 3)), (8, 8, 0)) * 12
    return np.clip(128 + 40 * x / x.std(), 0, 255).astype(np.uint8)


def _focus_pair(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two shots of one scene: A blurred on the right half, B on the left half."""
    blur = ndimage.gaussian_filter(img.astype(np.float64), (3, 3, 0)).round().astype(np.uint8)
    w = img.shape[1]
    a, b = img.copy(), img.copy()
    a[:, w // 2:] = blur[:, w // 2:]
    b[:, : w // 2] = blur[:, : w // 2]
    return a, b


def _centre(img: np.ndarray) -> tuple[float, float]:
    h, w = img.shape[:2]
    return ((w - 1) / 2, (h - 1) / 2)


def test_a_known_similarity_is_recovered_despite_the_focus_difference() -> None:
    a, b = _focus_pair(_texture(1))
    t = similarity_matrix((3.4, -2.2), 0.5, 1.01, center=_centre(a))
    bw = warp_to_first(b, t)  # bw(t x) = b(x): bw's points map to a's by t^-1
    m = estimate_transform(a, bw, "similarity")
    assert corner_rms(m, a.shape, np.linalg.inv(t)) < 0.3


@pytest.mark.parametrize("model", ["translation", "homography"])
def test_other_models_recover_their_motion(model: str) -> None:
    a, b = _focus_pair(_texture(2))
    t = similarity_matrix((4.0, 2.5), 0.0, 1.0) if model == "translation" else similarity_matrix(
        (2.0, -1.5), 0.3, 1.005, center=_centre(a))
    m = estimate_transform(a, warp_to_first(b, t), model)
    assert corner_rms(m, a.shape, np.linalg.inv(t)) < 0.3


def test_lytro_similarity_recovered(shared_data: Path) -> None:
    """The issue's acceptance test: shift a few px, 0.5 deg, scale 1.01 applied to Lytro B."""
    from bafusion.io import read_image

    lytro = shared_data / "eval" / "lytro"
    a, b = read_image(lytro / "lytro-05-A.jpg"), read_image(lytro / "lytro-05-B.jpg")
    t = similarity_matrix((3.3, -2.4), 0.5, 1.01, center=_centre(a))
    truth = np.linalg.inv(t)
    m = estimate_transform(a, warp_to_first(b, t), "similarity")
    assert corner_rms(m, a.shape, truth) < 0.3
    # the added motion itself, net of the pair's own (focus-biased) estimate, to a few hundredths
    assert corner_rms(m, a.shape, estimate_transform(a, b, "similarity") @ truth) < 0.1


def _camera_pair(refs: Path, w: int, h: int, sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The camera probe's synthetic handheld pair (session 25, ``make_pairs.py``, seed 0): the
    all-in-focus Lytro references tiled (turned, mirrored) to ``w`` x ``h``; A sharp inside a
    wavy region and a disc, blurred (``sigma``) outside, B the other way round, then moved by
    (3.4, -2.6) px, 0.3 deg and 1.01x about the centre (cubic spline), brightened 1.12x; both
    JPEG q95. Returns A, B and the true transform of B's pixels onto A's."""
    import io

    rng = np.random.default_rng(0)
    tiles = [np.asarray(Image.open(f).convert("RGB")) for f in sorted(refs.glob("*.png"))]
    r = np.zeros((h, w, 3), np.uint8)
    for y in range(0, h, 520):
        for x in range(0, w, 520):
            t = np.rot90(tiles[rng.integers(len(tiles))], rng.integers(4))
            t = t[:, ::-1] if rng.integers(2) else t
            r[y:y + 520, x:x + 520] = t[:min(520, h - y), :min(520, w - x)]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    m = (xx < w * 0.45 + w * 0.06 * np.sin(yy / h * 3 * np.pi)) | (((xx - w * 0.78) ** 2 + (yy - h * 0.35) ** 2)
                                                                     < (h * 0.15) ** 2)
    m = ndimage.gaussian_filter(m.astype(np.float32), 2.0)[..., None]
    rf = r.astype(np.float32)
    bl = np.stack([ndimage.gaussian_filter(rf[..., c], sigma) for c in range(3)], -1)
    a, b_src = m * rf + (1 - m) * bl, (1 - m) * rf + m * bl
    truth = np.linalg.inv(similarity_matrix((3.4, -2.6), 0.3, 1.01, center=((w - 1) / 2, (h - 1) / 2)))
    # B(p) = B_src(truth @ p): affine_transform's (row, col) matrix and offset
    mat = np.array([[truth[1, 1], truth[1, 0]], [truth[0, 1], truth[0, 0]]])
    off = np.array([truth[1, 2], truth[0, 2]])
    b = np.stack([ndimage.affine_transform(b_src[..., c], mat, off, order=3, mode="reflect") for c in range(3)], -1)

    def jpeg(x: np.ndarray) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(np.clip(x + 0.5, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=95)
        return np.asarray(Image.open(buf))

    return jpeg(a), jpeg(b * 1.12), truth


def test_a_known_motion_of_a_camera_size_pair_is_recovered_without_aliasing(shared_data: Path) -> None:
    """The aligned camera-size output was 0.5-2 px off (0.72 px median at 24 MP, 0.17 px at
    1500 px, on the known motion): the finest levels were fitted on every 8th-17th pixel of an
    image blurred by only 1.5 px, so the samples aliased its detail. The sampled levels are now
    blurred by half a stride first: on the probe's pair at 2400x1600 (stride 6) the estimate's
    corner error falls from 0.76 to 0.44 px (6000x4000: median 0.72 to 0.07 px)."""
    a, b, truth = _camera_pair(shared_data / "reference" / "lytro" / "CNN", 2400, 1600, 12.0)
    err = corner_rms(estimate_transform(a, b, "similarity"), a.shape, truth)
    aliased = corner_rms(estimate_transform(a, b, "similarity", antialias=0.0), a.shape, truth)
    assert err < 0.55 < 0.65 < aliased, (err, aliased)


def test_a_registered_pair_is_left_untouched() -> None:
    a = _texture(3)
    noise = np.random.default_rng(0).integers(-3, 4, a.shape)
    b = np.clip(a.astype(int) + noise, 0, 255).astype(np.uint8)
    al = align_images([a, b], "similarity")
    assert al.rms_px[1] < 0.05 and al.warped == [False, False]
    assert al.crop == (0, 0, a.shape[1], a.shape[0])
    assert np.array_equal(al.images[0], a) and np.array_equal(al.images[1], b)
    assert al.quality[1] > 0.9
    none = align_images([a, b], "none")
    assert np.array_equal(none.images[1], b) and none.transforms[1].tolist() == np.eye(3).tolist()


def test_the_focus_difference_biases_a_registered_pair_by_less_than_the_target() -> None:
    """Measured, not hidden: the focus difference alone makes a registered pair look moved by
    a fraction of a pixel (so it is resampled); the bias stays below the 0.3 px target."""
    a, b = _focus_pair(_texture(3))
    assert align_images([a, b], "similarity").rms_px[1] < 0.3


def test_the_crop_of_a_pure_translation_is_the_common_area() -> None:
    img = _texture(4, 160, 180)
    h, w = img.shape[:2]
    t = similarity_matrix((5.0, -3.0))  # b(x + (5, -3)) = img(x)
    b = warp_to_first(img, t)
    al = align_images([img, b], "translation")
    assert corner_rms(al.transforms[1], img.shape, np.linalg.inv(t)) < 0.05
    # b covers img's points x in [0, w-1-5], y in [3, h-1]
    assert al.crop == (0, 3, w - 5, h)
    x0, y0, x1, y1 = al.crop
    assert al.images[0].shape == al.images[1].shape == (y1 - y0, x1 - x0, 3)
    assert np.abs(al.images[1].astype(int) - img[y0:y1, x0:x1]).max() <= 1
    line = "\n".join(al.describe(["A", "B"]))
    assert "shift of the centre (-5.00, +3.00) px" in line and f"x 0..{w - 5}, y 3..{h}" in line


def test_a_stack_of_three_is_registered_to_the_first_and_cropped_to_what_all_cover() -> None:
    img = _texture(8, 150, 170)
    h, w = img.shape[:2]
    t1, t2 = similarity_matrix((4.0, 0.0)), similarity_matrix((0.0, 6.0))
    al = align_images([img, warp_to_first(img, t1), warp_to_first(img, t2)], "translation")
    for m, t in zip(al.transforms[1:], (t1, t2)):
        assert corner_rms(m, img.shape, np.linalg.inv(t)) < 0.05
    assert al.crop == (0, 0, w - 4, h - 6)
    assert len(al.images) == 3 and all(im.shape == (h - 6, w - 4, 3) for im in al.images)


def test_the_quintic_warp_is_exact_on_integer_shifts_and_the_same_for_affine_and_projective_matrices() -> None:
    img = _texture(9, 90, 110)
    t = similarity_matrix((4.0, -3.0))  # out(x, y) = img(x - 4, y + 3)
    out = warp_to_first(img, t, order=5)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert np.array_equal(out[:-3, 4:], img[3:, :-4])
    m = similarity_matrix((2.3, -1.7), 0.7, 1.02, center=_centre(img))
    # 2 m is the same map, but not affine-normalised: the projective (map_coordinates) path
    diff = warp_to_first(img, m, order=5).astype(int) - warp_to_first(img, 2 * m, order=5)
    assert np.abs(diff).max() <= 1
    g = warp_to_first(img[..., 0].astype(np.float32) / 255, m, order=5)
    assert g.dtype == np.float32 and g.shape == img.shape[:2]
    with pytest.raises(align.UserError, match="order"):
        warp_to_first(img, m, order=2)


def test_a_round_trip_through_the_quintic_warp_loses_less_than_through_bicubic() -> None:
    """Why align_images resamples with order 5: a known motion undone exactly returns closer to
    the original (on Lytro, mean |error| 0.30 vs 0.67 levels; here measured 0.058 vs 0.121)."""
    img = _texture(10, 160, 180)
    m = similarity_matrix((3.3, -2.4), 0.5, 1.01, center=_centre(img))
    err = {}
    for order in (3, 5):
        back = warp_to_first(warp_to_first(img, m, order=order), np.linalg.inv(m), order=order)
        err[order] = np.abs(back.astype(int) - img)[12:-12, 12:-12].mean()
    assert err[5] < 0.7 * err[3]


def test_align_images_resamples_with_the_quintic_warp_unless_told_otherwise() -> None:
    img = _texture(11, 120, 140)
    t = similarity_matrix((2.6, -1.3), 0.4, 1.008, center=_centre(img))
    moved = warp_to_first(img, t, order=5)
    for order in (5, 3):
        al = align_images([img, moved], "similarity", **({} if order == 5 else {"order": 3}))
        x0, y0, x1, y1 = al.crop
        assert np.array_equal(al.images[1], warp_to_first(moved, al.transforms[1], order=order)[y0:y1, x0:x1])


def test_largest_rectangle_of_a_convex_mask() -> None:
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:9, 1:11] = True
    mask[2, 1:3] = False  # a cut corner
    assert align.largest_rectangle(mask) == (1, 3, 11, 9)


# ---------------------------------------------------------------- command line


@pytest.fixture
def nets(tiny_nets: Path) -> Path:
    return tiny_nets


def test_two_scenes_are_refused_unless_forced(tmp_path: Path, nets: Path, capsys) -> None:
    Image.fromarray(_texture(5, 96, 96)).save(tmp_path / "a.png")
    Image.fromarray(_texture(6, 96, 96)).save(tmp_path / "b.png")
    out = tmp_path / "f.png"
    argv = ["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(out), "--model", str(nets),
            "--device", "cpu", "--align", "similarity"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bafusion fuse: error: ") and "same scene" in err[0], err
    assert "--force" in err[0] and not out.exists()
    assert cli_main([*argv, "--force"]) == 0
    assert out.is_file()


def test_fuse_with_align_prints_the_transform_and_crops(tmp_path: Path, nets: Path, capsys) -> None:
    a, b = _focus_pair(_texture(7, 120, 136))
    t = similarity_matrix((3.0, 2.0), 0.5, 1.01, center=_centre(a))
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(warp_to_first(b, t)).save(tmp_path / "b.png")
    out = tmp_path / "f.png"
    assert cli_main(["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(out), "--model", str(nets),
                     "--device", "cpu", "--align", "similarity"]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in _unstamped(err) if ln.startswith("bafusion fuse: align")]  # (after the time in a log)
    assert len(lines) == 3 and "rotation -0.5" in lines[1] and "scale 0.99" in lines[1], err
    x0, x1, y0, y1 = (int(v) for v in re.search(r"x (\d+)\.\.(\d+), y (\d+)\.\.(\d+)", lines[2]).groups())
    assert np.asarray(Image.open(out)).shape == (y1 - y0, x1 - x0, 3)
    assert x1 - x0 < a.shape[1] and y1 - y0 < a.shape[0]


def _unstamped(err: str) -> list[str]:
    """The lines of ``err`` without the local time a line in a log starts with (fuse-dir's
    per-stack lines off a terminal: ``2026-12-06T16:57:56 bafusion fuse-dir: 1/1 s: ...``)."""
    return [re.sub(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d ", "", ln) for ln in err.splitlines()]


def test_the_alignment_lines_carry_the_command_prefix_and_keep_quiet_under_quiet(tmp_path: Path, nets: Path,
                                                                                   capsys) -> None:
    """The per-shot lines of --align ("align b.png -> a.png: shift ...", the crop) had no
    "bafusion fuse:" as every other line on stderr, and were printed under --quiet too. They
    now carry the command's prefix (fuse-dir's in a batch) and are details that --quiet drops;
    the --align auto line, which says what is done, stays."""
    a, b = _focus_pair(_texture(7, 120, 136))
    t = similarity_matrix((3.0, 2.0), 0.5, 1.01, center=_centre(a))
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(a).save(src / "s-A.png")
    Image.fromarray(warp_to_first(b, t)).save(src / "s-B.png")
    out = tmp_path / "out"
    # fuse-dir's lines about a stack also name the stack (s), as its other lines do
    for argv, prefix, lead in ((["fuse", str(src / "s-A.png"), str(src / "s-B.png"), "-o", str(tmp_path / "f.png")],
                                "bafusion fuse: ", "bafusion fuse: "),
                               (["fuse-dir", str(src), str(out)], "bafusion fuse-dir: ", "bafusion fuse-dir: s: ")):
        argv = [*argv, "--model", str(nets), "--device", "cpu", "--align"]
        for model in ("similarity", "auto"):
            assert cli_main([*argv, model]) == 0
            err = _unstamped(capsys.readouterr().err)
            assert all(ln.startswith(prefix) for ln in err), err
            assert any(ln.startswith(f"{lead}align ") and "s-B.png -> " in ln for ln in err), err
            assert any(ln.startswith(f"{lead}align crop: ") for ln in err), err
            assert any(ln.startswith(f"{lead}--align auto: ") for ln in err) == (model == "auto"), err
        assert cli_main([*argv, "auto", "--quiet"]) == 0
        err = _unstamped(capsys.readouterr().err)
        assert not any(ln.startswith(f"{lead}align ") for ln in err), err
        assert any(ln.startswith(f"{lead}--align auto: ") and "aligning (similarity)" in ln for ln in err), err


# ---------------------------------------------------------------- clipped, implausible, flat


def _blown_out_pair(seed: int = 31, h: int = 128, w: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """A registered pair (B a blur of A) whose A has its left half blown out to white, as a
    bright sky or window (the probe's D3 pair)."""
    img = _texture(seed, h, w)
    b = ndimage.gaussian_filter(img.astype(np.float64), (2, 2, 0)).round().astype(np.uint8)
    a = img.copy()
    a[:, : w // 2] = 255
    return a, b


def test_a_blown_out_half_neither_moves_a_registered_pair_nor_makes_it_two_scenes() -> None:
    """The clipped half carried no structure in A and the texture in B: the registration read a
    scale of 0.4 and a rotation of 24 deg, and the match quality of the right estimate was 0.3."""
    a, b = _blown_out_pair()
    assert align.clipped_regions(a) is not None and align.clipped_regions(b) is None
    al = align_images([a, b], "similarity")
    assert al.rms_px[1] < 1.0 and al.implausible[1] is None, al.describe()
    assert al.quality[1] > 0.9
    black = a.copy()
    black[:, : a.shape[1] // 2] = 0  # a shadow crushed to black, likewise
    assert align_images([black, b], "similarity").rms_px[1] < 1.0


@pytest.mark.parametrize("moved", [True, False])
def test_each_shot_is_made_gray_and_searched_for_clipped_regions_once(monkeypatch: pytest.MonkeyPatch,
                                                                      moved: bool) -> None:
    """A shot's clipped regions (and the gray copy they are found on, about a second at 24 MP)
    were computed four times per aligned shot: the first shot's in the estimate and again in
    the match quality, the moved shot's in the estimate, the warped shot's in the quality. Now
    once per image: the first, the moved shot, and the warped shot (another image) when it is
    warped; the results are those of the public functions, computed anew."""
    a, b = _blown_out_pair()
    if moved:
        b = warp_to_first(b, similarity_matrix((3.0, -2.0), 0.4, 1.01, center=_centre(b)))
    calls = {"gray": [], "clipped": 0}
    gray, clipped = align._gray, align._clipped

    def counted_gray(img: np.ndarray) -> np.ndarray:
        calls["gray"].append(img)
        return gray(img)

    def counted_clipped(g: np.ndarray) -> np.ndarray | None:
        calls["clipped"] += 1
        return clipped(g)

    monkeypatch.setattr(align, "_gray", counted_gray)
    monkeypatch.setattr(align, "_clipped", counted_clipped)
    al = align_images([a, b], "similarity", tolerance=0.1 if moved else 1.0)  # estimated 0.13 px unmoved
    assert al.warped[1] is moved, al.describe()
    assert calls["clipped"] == (3 if moved else 2), calls["clipped"]
    if moved:  # the first, the moved shot, the warped one: each once
        assert len(calls["gray"]) == 3 and calls["gray"][2] is not b, len(calls["gray"])
    monkeypatch.undo()
    assert np.array_equal(al.transforms[1], estimate_transform(a, b, "similarity"))
    m = al.transforms[1]
    if moved:
        assert al.quality[1] == align.match_quality(a, warp_to_first(b, m, order=5), align.coverage(m, a.shape[:2]))
    else:
        assert al.quality[1] == align.match_quality(a, b)


def test_an_estimate_no_hand_held_pair_shows_is_implausible() -> None:
    c = _centre(np.zeros((200, 240)))
    assert align.implausible_motion(similarity_matrix((3.0, -2.0), 0.9, 0.90, center=c), (200, 240)) is None  # savic-08
    why = align.implausible_motion(similarity_matrix((15.8, 20.7), -23.7, 0.40, center=c), (200, 240))
    assert why is not None and "scale 0.40" in why and "rotation -23.7 deg" in why
    assert "shift" in align.implausible_motion(similarity_matrix((80.0, 0.0), center=c), (200, 240))
    assert align.implausible_motion(np.eye(3), (200, 240)) is None


def _line_pair(h: int = 128, w: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """One bright horizontal line on gray and its blur: one-dimensional structure, registered
    (the estimate read a scale of 0.61 with a match quality of 1)."""
    a = np.full((h, w), 128, np.uint8)
    a[h // 2, :] = 255
    return a, ndimage.gaussian_filter(a.astype(np.float64), 2).round().astype(np.uint8)


def test_an_explicit_alignment_refuses_an_implausible_estimate_unless_forced(tmp_path: Path, nets: Path,
                                                                             capsys) -> None:
    a, b = _line_pair()
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    out = tmp_path / "f.png"
    argv = ["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(out), "--model", str(nets),
            "--device", "cpu", "--align", "similarity"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bafusion fuse: error: ") and "b.png: the similarity alignment" in err[0], err
    assert "is not a motion a hand-held focus pair shows" in err[0] and "--align none" in err[0], err
    assert not out.exists()
    assert cli_main([*argv, "--force"]) == 0 and "implausible: scale" in capsys.readouterr().err


def test_flat_shots_are_not_aligned_and_not_refused(tmp_path: Path, nets: Path, capsys) -> None:
    """Two frames of a blank wall (or black ones) under an explicit --align: nothing to register
    by, fused as registered, as --align auto does; they were refused as two scenes (match quality
    0.00), and black ones leaked scikit-image's warning."""
    import warnings

    for v in (0, 128):
        k = np.full((128, 160, 3), v, np.uint8)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            al = align_images([k, k.copy()], "similarity")
        assert al.flat == [False, True] and al.warped == [False, False] and al.quality[1] is None
        assert "too flat to align" in al.describe()[1]
    k = np.full((128, 160, 3), 128, np.uint8)
    Image.fromarray(k).save(tmp_path / "a.png")
    Image.fromarray(k).save(tmp_path / "b.png")
    out = tmp_path / "f.png"
    argv = ["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(out), "--model", str(nets),
            "--device", "cpu", "--align", "similarity"]
    assert cli_main(argv) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "b.png -> " in err and "a.png: too flat to align" in err, err
    assert np.array_equal(np.asarray(Image.open(out)), k)
    # one flat shot beside one with structure is not one scene (as without --align)
    Image.fromarray(_texture(32, 128, 160)).save(tmp_path / "b.png")
    assert cli_main(argv) == 2 and "same scene" in capsys.readouterr().err


def test_match_quality_of_an_empty_mask_is_zero_without_numpy_warnings() -> None:
    """Shots that share no area (--align auto on two different small images) gave an empty
    mask: numpy's "Mean of empty slice" and "invalid value" warnings reached the user; the
    value is 0 (nothing matches), now said without them."""
    import warnings

    rng = np.random.default_rng(0)
    a, b = rng.random((40, 40)), rng.random((40, 40))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert align.match_quality(a, b, np.zeros((40, 40), bool)) == 0.0
        a[:10] = 1.0  # a clipped region too: the mask stays empty
        assert align.match_quality(a, b, np.zeros((40, 40), bool)) == 0.0


def _gray_scene(seed: int, h: int, w: int, zoom: int) -> np.ndarray:
    """A gray scene (detail at 2 and 8 px) of ``h`` x ``w``, enlarged ``zoom`` times: the
    same scene at a camera's resolution."""
    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.normal(size=(h, w)), 2) * 4
    x += ndimage.gaussian_filter(rng.normal(size=(h, w)), 8) * 12
    x = 128 + 40 * x / x.std()
    return ndimage.zoom(x, zoom, order=1) if zoom > 1 else x


def _gray_focus_pair(img: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    blur = ndimage.gaussian_filter(img, sigma)
    w = img.shape[1]
    a, b = img.copy(), img.copy()
    a[:, w // 2:] = blur[:, w // 2:]
    b[:, : w // 2] = blur[:, : w // 2]
    return tuple(np.clip(np.round(x), 0, 255).astype(np.uint8) for x in (a, b))


def test_match_quality_of_one_scene_does_not_depend_on_the_resolution() -> None:
    """The match quality was judged at a fixed 6 px whatever the resolution: a registered
    24-megapixel focus pair scored 0.32 (the defocus removes 6-px detail there), and every
    camera-size pair was refused with --align as "not the same scene". Now it is judged at a
    long side of 520 px (sigma scaled): a pair of 520 px and the same pair enlarged 5 times
    (2600 px, its defocus too) score about the same, and another scene stays far below
    MIN_QUALITY at either size (also on a mask, reduced with the shots)."""
    scores = {}
    for zoom in (1, 5):
        a, b = _gray_focus_pair(_gray_scene(3, 390, 520, zoom), 3.0 * zoom)
        _, other = _gray_focus_pair(_gray_scene(4, 390, 520, zoom), 3.0 * zoom)
        mask = np.zeros(a.shape, bool)
        mask[8 * zoom:-11 * zoom, 13 * zoom:-6 * zoom] = True  # a crop after alignment
        scores[zoom] = (align.match_quality(a, b), align.match_quality(a, b, mask),
                        align.match_quality(a, other), align.match_quality(a, other, mask))
    for zoom, (same, same_masked, other, other_masked) in scores.items():
        assert min(same, same_masked) > 0.85 and max(other, other_masked) < 0.2, (zoom, scores)
    assert abs(scores[5][0] - scores[1][0]) < 0.03 and abs(scores[5][1] - scores[1][1]) < 0.03, scores


def test_the_match_quality_scale_follows_the_long_side() -> None:
    """The rule itself: up to 520 px the shots are judged as they are; above, block-mean
    reduced to at most 520 px with sigma scaled, continuous at 520 (the same sigma at full
    size: factor x reduced sigma = sigma x long side / 520)."""
    assert align._quality_scale((390, 520), 6.0) == (1, 6.0)
    for shape in [(521, 400), (1500, 2000), (4000, 6000), (5504, 8256)]:
        k, s = align._quality_scale(shape, 6.0)
        assert max(shape) / k <= align.QUALITY_SIDE and k == -(-max(shape) // 520), shape
        assert k * s == pytest.approx(6.0 * max(shape) / 520), shape
    x = np.arange(7 * 9, dtype=float).reshape(7, 9)
    assert align._block_mean(x, 3).tolist() == x[:6, :9].reshape(2, 3, 3, 3).mean(axis=(1, 3)).tolist()


def test_align_images_names_its_steps_the_levels_and_channels_of_camera_size_shots() -> None:
    """Aligning a 24-megapixel pair ran 1-4 minutes without a word (the estimate's pyramid,
    the quintic warp, the match quality). ``step`` now hears each step as it starts: the
    estimate, each pyramid level of at least STEP_MIN_PIXELS, each channel of the warp, the
    match; the result is the same with or without it."""
    img = np.repeat(_gray_scene(8, 300, 400, 3)[..., None], 3, axis=2).astype(np.uint8)  # 1200x900: 1.08 MP
    b = warp_to_first(img, similarity_matrix((3.0, -2.0), 0.3, 1.01, center=_centre(img)), order=1)
    said: list[str] = []
    al = align_images([img, b], "similarity", step=said.append)
    quiet = align_images([img, b], "similarity")
    assert np.array_equal(al.transforms[1], quiet.transforms[1]) and al.quality == quiet.quality
    assert al.warped[1] and al.quality[1] > align.MIN_QUALITY
    levels = len(align._pyramid(np.zeros((900, 1200))))
    assert said == [
        "shot 2 of 2: estimating its motion (similarity)",
        "shot 2 of 2: estimating its motion (similarity), blurring and reducing the first shot",
        "shot 2 of 2: estimating its motion (similarity), blurring and reducing the second shot",
        # the top's correlation and the levels under STEP_MIN_PIXELS: 5.2 s of CPU without a word
        # with the second shot's blurring at 24 MP (33 s under load), 3 s of it theirs
        "shot 2 of 2: estimating its motion (similarity), the coarse levels, up to 600x450 px",
        f"shot 2 of 2: estimating its motion (similarity), level {levels} of {levels} (1200x900 px)",
        # the check of an estimate of more than SUPPORT_PX and the coverage: 21 and 27 s without a
        # word after the last level and the last channel at 24 MP (load ~12)
        "shot 2 of 2: estimating its motion (similarity), checking it against the shots' detail",
        "shot 2 of 2: resampling (quintic spline), channel 1 of 3",
        "shot 2 of 2: resampling (quintic spline), channel 2 of 3",
        "shot 2 of 2: resampling (quintic spline), channel 3 of 3",
        "shot 2 of 2: finding the area it covers",
        "shot 2 of 2: judging the match",
    ], said
    small = _texture(9, 96, 120)  # below STEP_MIN_PIXELS: one line a step, no levels nor channels
    said.clear()
    align_images([small, warp_to_first(small, similarity_matrix((2.0, 1.0)), order=1)], "similarity",
                 step=said.append)
    assert said == ["shot 2 of 2: estimating its motion (similarity)", "shot 2 of 2: resampling (quintic spline)",
                    "shot 2 of 2: judging the match"], said


# ---------------------------------------------------------------- shots of another size


def _other_size(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The same frame at another size ``(width, height)``: another resolution setting, or
    focus breathing saved at its own size (skimage's anti-aliased resize)."""
    from skimage.transform import resize

    return (resize(img, (size[1], size[0]) + img.shape[2:], order=3, anti_aliasing=True) * 255).round().astype(np.uint8)


@pytest.mark.parametrize("kind", ["crop", "breathing", "double"])
def test_a_shot_of_another_size_is_registered_onto_the_first_frame(kind: str) -> None:
    """A B cropped by 7 px, saved 1.5 % larger (focus breathing) or at twice the resolution was
    refused ("shots differ in size"); it is scaled onto A's frame and its residual motion
    estimated as for shots of one size."""
    a, b = _focus_pair(_texture(40, 160, 192))
    h, w = a.shape[:2]
    if kind == "crop":
        bs = b[3:-4, 3:-4]
    elif kind == "breathing":
        bs = _other_size(b, (round(w * 1.015), round(h * 1.015)))
    else:
        bs = _other_size(b, (2 * w, 2 * h))
    al = align_images([a, bs], "similarity")
    assert al.sizes == [(w, h), (bs.shape[1], bs.shape[0])]
    assert al.implausible[1] is None and al.quality[1] > 0.9, al.describe()
    assert al.warped[1] and all(im.shape == al.images[0].shape for im in al.images)
    x0, y0, x1, y1 = al.crop
    assert (x1 - x0) >= w - 12 and (y1 - y0) >= h - 12, al.crop
    # B's points land on A's: the registered B is B as it was taken in A's frame
    err = np.abs(al.images[1].astype(int) - b[y0:y1, x0:x1])[4:-4, 4:-4].mean()
    assert err < (1.0 if kind == "crop" else 2.0), err
    # the line says where B's frame lies on A's: a crop as a part of it at scale 1 (it read as a
    # rescale onto A's size "then" a residual scale that undid it: "scale 1.0458 ... scale 0.9562")
    line = al.describe(["A", "B"])[1]
    got = re.search(rf"B -> A: {bs.shape[1]}x{bs.shape[0]} px, its frame lies at x ([-\d.]+)\.\.([-\d.]+), "
                    rf"y ([-\d.]+)\.\.([-\d.]+) of the first's {w}x{h}, rotation [-+\d.]+ deg, scale ([\d.]+); "
                    "match quality", line)
    assert got, line
    x0b, x1b, y0b, y1b, scale = (float(v) for v in got.groups())
    want = {"crop": (3, w - 4, 3, h - 4, 1.0), "breathing": (0, w, 0, h, w / bs.shape[1]),
            "double": (0, w, 0, h, 0.5)}[kind]
    assert np.allclose((x0b, x1b, y0b, y1b), want[:4], atol=0.6) and abs(scale - want[4]) < 0.005, line
    assert "resampled from" not in line and "then" not in line, line


def test_shots_turned_or_of_another_aspect_ratio_are_not_registered() -> None:
    a = _texture(41, 120, 160)
    with pytest.raises(align.UserError, match="turned by 90 degrees: an orientation tag may be missing or wrong"):
        align_images([a, np.rot90(a).copy()], "similarity")
    with pytest.raises(align.UserError, match="aspect ratio"):
        align_images([a, a[:, :140]], "similarity")
    with pytest.raises(align.UserError, match="shots differ in size"):
        align_images([a, a[:-4, :-4]], "none")


def test_fuse_registers_shots_of_another_size_with_align_and_says_how_without(tmp_path: Path, nets: Path,
                                                                            capsys) -> None:
    a, b = _focus_pair(_texture(42, 128, 160))
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(_other_size(b, (162, 130))).save(tmp_path / "b.png")  # 1.5 % larger
    Image.fromarray(np.rot90(a).copy()).save(tmp_path / "t.png")
    out = tmp_path / "f.png"
    base = ["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(out), "--model", str(nets),
            "--device", "cpu"]
    assert cli_main(base) == 2
    err = capsys.readouterr().err
    assert "size 162x130 (WxH) differs from 160x128" in err and "use --align similarity (or auto) to register" in err
    for mode in ("similarity", "auto"):
        assert cli_main([*base, "--align", mode]) == 0, capsys.readouterr().err
        err = capsys.readouterr().err
        assert re.search(r"b\.png -> \S*a\.png: 162x130 px, its frame lies at x \S+, y \S+ of the first's 160x128, ",
                         err), err
        assert "fused as registered" not in err, err  # it is registered: no line says otherwise
        # --align auto said it twice: "... as b.png is of another size" and "b.png is 162x130 px, ..."
        assert sum("of another size" in ln for ln in err.splitlines()) == (mode == "auto"), err
        h, w = np.asarray(Image.open(out)).shape[:2]
        assert 120 <= h <= 128 and 150 <= w <= 160
    turned = ["fuse", str(tmp_path / "a.png"), str(tmp_path / "t.png"), "-o", str(out), "--model", str(nets),
              "--device", "cpu"]
    for extra in ([], ["--align", "similarity"]):
        assert cli_main([*turned, *extra]) == 2
        err = capsys.readouterr().err
        # untagged files: the sizes' check says "its" tag; --align's, from the sizes alone, "an" ... "or wrong"
        assert ("the shot looks turned by 90 degrees: its orientation tag may be missing" in err if not extra else
                "the shot looks turned by 90 degrees: an orientation tag may be missing or wrong" in err), err
        assert "--align similarity (or auto)" not in err


def test_bafusion_fuse_registers_shots_of_another_size_when_asked(nets: Path) -> None:
    import bafusion

    a, b = _focus_pair(_texture(43, 128, 160))
    big = _other_size(b, (320, 256))
    with pytest.raises(align.UserError, match='use align="similarity"'):
        bafusion.fuse(a, big, model=nets, device="cpu")
    out = bafusion.fuse(a, big, model=nets, device="cpu", align="similarity")
    assert out.shape[0] >= 120 and out.shape[1] >= 150


# ---------------------------------------------------------------- --align auto and the one-scene check


def _moved_a_lot(seed: int = 50, n: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """A focus pair whose B moved 14 px and turned 2 degrees: correlation 0.27 before
    alignment (below the one-scene check's 0.55), match quality 0.95 after it."""
    a, b = _focus_pair(_texture(seed, n, n))
    return a, warp_to_first(b, similarity_matrix((12.0, -7.2), 2.0, 1.0, center=_centre(a)))


def test_align_auto_aligns_shots_that_fail_the_scene_check_only_before_alignment(tmp_path: Path, nets: Path,
                                                                                  capsys) -> None:
    """--align auto refused a large shift + rotation as "not the same scene (correlation 0.54)"
    before trying to align it, while --align similarity registered it at match quality 1.00:
    auto now aligns such shots and fuses them when the match quality after alignment passes;
    two scenes are still refused, the message giving both numbers."""
    a, b = _moved_a_lot()
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    Image.fromarray(_texture(51, 160, 160)).save(tmp_path / "o.png")
    out = tmp_path / "f.png"
    argv = ["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(out), "--model", str(nets),
            "--device", "cpu", "--align", "auto"]
    assert cli_main(argv) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "does not match" in err and "but does after similarity alignment (match quality 0.9" in err, err
    assert "rotation -1.99" in err, err
    assert np.asarray(Image.open(out)).shape[0] < 160
    argv[2] = str(tmp_path / "o.png")
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "o.png: does not look like the same scene" in err[0], err
    assert re.search(r"correlation -?0\.\d\d at a coarse scale, below 0\.55; match quality -?0\.\d\d after similarity "
                     r"alignment, below 0\.5\); use --force", err[0]), err
    assert cli_main([*argv, "--force"]) == 0


def test_bafusion_fuse_auto_aligns_shots_that_fail_the_scene_check_only_before_alignment(nets: Path) -> None:
    import bafusion

    a, b = _moved_a_lot()
    assert bafusion.fuse(a, b, model=nets, device="cpu", align="auto").shape[0] < 160
    with pytest.raises(align.UserError, match=r"after similarity alignment, below 0\.5\); use align=\"none\""):
        bafusion.fuse(a, _texture(51, 160, 160), model=nets, device="cpu", align="auto")


def _small_subject_over_sky(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A registered pair: a sky (vertical gradient, noise) with a small dark subject in its
    centre (0.4 % of the frame), sharp in A and blurred (sigma 3 px, spreading over the sky) in B."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, n)[:, None, None]
    sky = np.array([120, 160, 215.0]) * (1 - 0.25 * y) + np.zeros((n, n, 3))
    t = ndimage.gaussian_filter(rng.normal(size=(n, n)), 1.5)
    box = np.zeros((n, n), dtype=bool)
    box[int(0.35 * n):int(0.65 * n), int(0.35 * n):int(0.65 * n)] = True
    m = ((t > 2.0 * t.std()) & box)[..., None].astype(np.float64)
    dark = np.array([40, 35, 30.0])
    mb = ndimage.gaussian_filter(m, (3, 3, 0))
    a, b = sky * (1 - m) + dark * m, sky * (1 - mb) + dark * mb
    return tuple(np.clip(np.round(x + rng.normal(0, 1.5, x.shape)), 0, 255).astype(np.uint8) for x in (a, b))


def test_a_small_subject_over_a_smooth_sky_is_not_read_as_motion() -> None:
    """A registered pair whose only structure is a small subject focused differently over a
    sky read as 4.9 px of similarity motion (scale and rotation the shots do not determine),
    which --align applied and the motion hint reported; the estimate is now checked against the
    shots' detail and falls back to the translation (here about none), saying so."""
    a, b = _small_subject_over_sky()
    assert corner_rms(estimate_transform(a, b, "similarity"), a.shape) < 0.5
    al = align_images([a, b], "similarity")
    assert al.rms_px[1] < 0.5 and al.quality[1] > align.MIN_QUALITY, al.describe()
    assert "worse than" in al.replaced[1] and "no motion" in al.replaced[1], al.replaced
    assert al.replaced[1] in al.describe(["a", "b"])[1]
    # the check can be turned off: the estimate as fitted
    assert corner_rms(estimate_transform(a, b, "similarity", check=False), a.shape) > 2.0


@pytest.mark.parametrize("costs, words", [
    ((0.00527, 0.00500, 0.00600), "5.4 % worse than no motion (misfit 0.00527 against 0.00500"),
    # rounding that carries keeps its zeros (0.0049996 read 0.005)
    ((0.0053, 0.0049996, 0.0300), "6.0 % worse than no motion (misfit 0.00530 against 0.00500"),
    # the estimate lost to the shift, which beat no motion by less than the margin: the note named
    # no motion's misfit alone, which the estimate's may even undercut (here 0.0102 against 0.010)
    ((0.0102, 0.0100, 0.0097), "5.2 % worse than a shift (misfit 0.0102 against 0.00970; that shift fits it "
                               "less than 5 % better than no motion's 0.0100"),
])
def test_a_replacement_note_shows_by_how_much_the_estimate_misfits(
        monkeypatch: pytest.MonkeyPatch, costs: tuple[float, ...], words: str) -> None:
    """A replacement note read "misfit 0.005 against 0.005": three decimals hid the 5 %
    (SUPPORT_MARGIN) by which the estimate matched the detail worse. The misfits are now given
    to 3 significant digits, with the share by which the estimate's exceeds the one it lost to."""
    a, b = _small_subject_over_sky()
    monkeypatch.setattr(align, "_detail_costs", lambda *args, **kwargs: list(costs))
    al = align_images([a, b], "similarity")
    assert words in al.replaced[1] and al.replaced[1].endswith("taken for no motion"), al.replaced
    assert al.replaced[1] in al.describe(["a", "b"])[1]


def test_a_small_subject_over_a_smooth_sky_that_really_moves_is_registered_by_its_shift() -> None:
    """The same pair with B really shifted by (3, -1.5) px read a scale of 0.973 (4.96 px of
    corner motion; a sky variant of the probe's 42 px at scale 1.13): the invented motion matched
    the detail better than no motion, which is 3 px off, so the check kept it. The estimate is
    now also judged against the shift fitted where the detail lies, which it takes instead."""
    a, b = _small_subject_over_sky()
    moved = np.clip(np.round(ndimage.shift(b.astype(np.float64), (-1.5, 3.0, 0), order=3, mode="nearest")),
                    0, 255).astype(np.uint8)
    truth = similarity_matrix((-3.0, 1.5))  # B's content moved by (+3, -1.5): B -> A undoes it
    m = estimate_transform(a, moved, "similarity")
    assert corner_rms(m, a.shape, truth) < 0.6, (m, corner_rms(m, a.shape, truth))
    al = align_images([a, moved], "similarity")
    assert corner_rms(al.transforms[1], a.shape, truth) < 0.6 and "worse than a shift" in al.replaced[1], al.replaced
    assert "registered by translation instead" in al.describe(["a", "b"])[1]
    # the registered pair stays at no motion (the shift there does not fit the detail better)
    assert corner_rms(estimate_transform(a, b, "similarity"), a.shape) == 0.0


def _wire_strip_over_sky(shared_data: Path, n: int = 400, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """benchmarks/bench_align_support.py's strip: a registered pair of a sky (linear vertical
    gradient, noise sigma 1.5) with the dark fence wires of lytro-05-A (gray < 60) along its
    bottom (rows 330-400 of 400, the full width), sharp in A and blurred (sigma 3 px) in B."""
    rng = np.random.default_rng(seed)
    full = np.asarray(Image.open(shared_data / "eval" / "lytro" / "lytro-05-A.jpg").convert("RGB"))
    h, w = full.shape[:2]
    branch = full[(h - n) // 2:(h - n) // 2 + n, (w - n) // 2:(w - n) // 2 + n].astype(np.float64)
    sky = np.array([120, 160, 215.0]) * (1 - 0.25 * np.linspace(0, 1, n)[:, None, None]) + np.zeros((n, n, 3))
    mask = np.zeros((n, n), dtype=bool)
    mask[int(0.825 * n):, :] = True
    m = ((branch.mean(axis=2) < 60) & mask)[..., None].astype(np.float64)
    bm, bb = ndimage.gaussian_filter(m, (3, 3, 0)), ndimage.gaussian_filter(branch, (3, 3, 0))
    a, b = sky * (1 - m) + branch * m, sky * (1 - bm) + bb * bm
    return tuple(np.clip(np.round(x + rng.normal(0, 1.5, x.shape)), 0, 255).astype(np.uint8) for x in (a, b))


def test_a_strip_of_subject_over_a_smooth_sky_that_really_moves_is_registered_by_its_shift(
        shared_data: Path) -> None:
    """A strip of fence wires along the bottom of a sky, B really shifted by (3, -1.5) px, read
    scale 1.013 (about 3 px off at the frame's centre, 2 px on the wires): the strip's detail is
    spread (DETAIL_SPREAD), so the estimate was judged against no motion only, itself 3 px off.
    The shift fitted where the detail lies is now a candidate there too, taken where it also
    matches the whole frame better; the registered pair stays at no motion."""
    a, b = _wire_strip_over_sky(shared_data)
    moved = np.clip(np.round(ndimage.shift(b.astype(np.float64), (-1.5, 3.0, 0), order=3, mode="nearest")),
                    0, 255).astype(np.uint8)
    truth = similarity_matrix((-3.0, 1.5))
    m = estimate_transform(a, moved, "similarity")
    assert corner_rms(m, a.shape, truth) < 0.6, (m, corner_rms(m, a.shape, truth))
    assert corner_rms(estimate_transform(a, b, "similarity"), a.shape) < 0.5


@pytest.mark.parametrize("pair, shift_px, quality", [("savic-17", 2.09, 0.949), ("savic-20", 1.03, 0.934),
                                                     ("savic-05", 2.57, 0.786)])
def test_a_translation_pinned_by_spread_detail_is_kept(shared_data: Path, pair: str, shift_px: float,
                                                       quality: float) -> None:
    """--align translation on real indoor/foliage pairs that shift by 1-2.6 px (and turn a
    little) took them for no motion: the detail check, meant for a small subject over a sky,
    found the shift matched their detail slightly worse than no motion, and blamed "a small
    subject over a smooth backdrop?" (savic-17: match quality 0.9339 against 0.9493). Their
    detail is spread over the frame (DETAIL_SPREAD), which pins a shift: the estimate is kept."""
    a, b = (np.asarray(Image.open(shared_data / "eval" / "real" / f"{pair}-{x}.jpg").convert("RGB")) for x in "AB")
    al = align_images([a, b], "translation")
    assert al.replaced[1] is None, al.replaced
    assert abs(al.rms_px[1] - shift_px) < 0.05 and al.quality[1] > quality, (al.rms_px, al.quality)


def test_align_translation_says_when_the_shots_turn(tmp_path: Path, nets: Path, capsys) -> None:
    """--align translation on a pair turned by 3 degrees fused it silently misregistered (match
    quality 0.64, where registered pairs reach 0.92-0.99); it now says that a similarity
    alignment matches much better and suggests it. A pair that only shifts gets no such line."""
    a, b = _focus_pair(_texture(44, 160, 160))
    turned = warp_to_first(b, similarity_matrix((0.0, 0.0), 3.0, 1.0, center=_centre(a)))
    shifted = warp_to_first(b, similarity_matrix((3.0, -2.0)))
    for name, img in (("a", a), ("t", turned), ("s", shifted)):
        Image.fromarray(img).save(tmp_path / f"{name}.png")
    base = ["fuse", str(tmp_path / "a.png"), "-o", str(tmp_path / "f.png"), "--model", str(nets), "--device", "cpu",
            "--align", "translation"]
    assert cli_main([*base[:2], str(tmp_path / "t.png"), *base[2:]]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if "after translation alignment" in ln]
    assert len(err) == 1 and "t.png: match quality" in err[0] and "--align similarity registers them" in err[0], err
    q_t, q_s = (float(x) for x in re.findall(r"match quality (\d\.\d\d) after translation alignment to \S+, "
                                              r"(\d\.\d\d) after a similarity", err[0])[0])
    assert q_t < align.TRANSLATION_QUALITY and q_s >= q_t + align.SIMILARITY_GAIN, err
    assert "rotation -3.0" in err[0] or "rotation +3.0" in err[0], err
    assert cli_main([*base[:2], str(tmp_path / "s.png"), *base[2:]]) == 0
    assert "after translation alignment" not in capsys.readouterr().err


def test_the_turn_check_of_align_translation_aligns_again_at_the_reduced_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """A shot left below TRANSLATION_QUALITY by --align translation was aligned again by a full
    similarity alignment of the full-size shots, silently (lytro-19, a registered pair at 0.9198:
    36.3 s instead of 21.3 s for the fusion). That alignment is now made on the shots reduced to
    the size the match quality is judged at, with the motion hint's fit; it still finds the turn."""
    from bafusion.fusion import scene

    a, b = _focus_pair(_texture(45, 400, 640))  # judged at half size (QUALITY_SIDE)
    turned = warp_to_first(b, similarity_matrix((0.0, 0.0), 1.0, 1.0, center=_centre(a)), order=1)
    al = align_images([a, turned], "translation", order=1)
    assert al.quality[1] < align.TRANSLATION_QUALITY, al.quality
    seen = []
    real = align._estimate

    def spy(g_ref, g_mov, *args, **kwargs):
        seen.append((g_ref.shape, args[:5]))
        return real(g_ref, g_mov, *args, **kwargs)

    monkeypatch.setattr(align, "_estimate", spy)
    lines = align.translation_shortfalls(al, [a, turned], ["a", "t"])
    assert len(lines) == 1 and "t: match quality" in lines[0] and "--align similarity" in lines[0], lines
    assert re.search(r"rotation [+-]1\.0\d deg", lines[0]) and "corner motion" in lines[0], lines
    assert len(seen) == 1, seen
    shape, args = seen[0]  # (ref_clip, mov_clip, model, sigma, iters)
    assert max(shape) <= align.QUALITY_SIDE and args[2] == "similarity", seen
    assert len(args) == 5 and args[4] == scene.MOTION_ITERS, seen


def test_save_registered_writes_the_pair_an_aligned_fusion_was_made_of_for_bafusion_metrics(
        tmp_path: Path, nets: Path, capsys) -> None:
    """An aligned fusion (--align auto that aligns) could not be scored: its output is cropped,
    bafusion metrics refused it beside the sources, and nothing wrote the registered pair.
    --save-registered DIR writes it: the shots align_images registers and crops (the same pixels),
    of the fused image's size, and bafusion metrics scores F against them better than against the
    raw shots cut to the same rectangle (B unregistered)."""
    from bafusion.evaluation.metrics import compute_all

    a, b = _focus_pair(_texture(44, 160, 192))
    b = warp_to_first(b, similarity_matrix((5.0, -3.5), 0.8, 1.0, center=_centre(a)))
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    out, reg = tmp_path / "f.png", tmp_path / "reg"
    argv = ["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(out), "--model", str(nets),
            "--device", "cpu", "--align", "auto", "--save-registered", str(reg), "--save-maps", str(reg)]
    assert cli_main(argv) == 0, capsys.readouterr().err  # the maps' folder may be the registered sources'
    assert f"registered sources: {reg / 'f-registered1.png'}, {reg / 'f-registered2.png'}" in capsys.readouterr().err
    assert (reg / "f-dm.png").is_file()
    f = np.asarray(Image.open(out))
    r1, r2 = (np.asarray(Image.open(reg / f"f-registered{i}.png")) for i in (1, 2))
    al = align_images([a, b], "similarity")
    assert al.warped[1] and f.shape == r1.shape == r2.shape == al.images[0].shape and f.shape[0] < 160
    assert np.array_equal(r1, al.images[0]) and np.array_equal(r2, al.images[1])
    # the documented route: bafusion metrics on the files, the aligned pair's metrics
    names = ["QMI", "QG", "QY", "QCB"]
    assert cli_main(["metrics", str(reg / "f-registered1.png"), str(reg / "f-registered2.png"), str(out),
                     "--metrics", ",".join(names), "--format", "json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    registered = dict(compute_all(al.images[0], al.images[1], f, names))
    assert scored == pytest.approx(registered, abs=1e-12)
    x0, y0, x1, y1 = al.crop
    raw = dict(compute_all(a[y0:y1, x0:x1], b[y0:y1, x0:x1], f, names))
    # QMI 1.19 against 1.09, QG 0.622 against 0.599, QCB 0.705 against 0.699 (QY, the best SSIM of
    # either source per window, is higher against the raw cut on this smooth texture: 0.9987, 0.9916)
    assert all(registered[k] > raw[k] for k in ("QMI", "QG", "QCB")), (registered, raw)
    # the sources as given were refused beside the cropped F: the message names the way
    assert cli_main(["metrics", str(tmp_path / "a.png"), str(tmp_path / "b.png"), str(out)]) == 2
    assert "--save-registered" in capsys.readouterr().err


def test_save_registered_keeps_16_bit_sources_at_16_bits_for_bafusion_metrics(tmp_path: Path, nets: Path,
                                                                                capsys) -> None:
    """The fusion of 16-bit shots is composed from them, registered and cropped alike: the
    registered sources are 16-bit PNGs of those shots (marked with their bits), not the 8-bit
    copies the decision is made on, and bafusion metrics reads them beside the 16-bit output."""
    a, b = _focus_pair(_texture(45, 160, 192))
    b = warp_to_first(b, similarity_matrix((4.0, 3.0), 0.0, 1.0))
    for name, x in (("a", a), ("b", b)):  # 16-bit: the 8-bit values times 257, plus detail below 8 bits
        x16 = x.astype(np.uint16) * 257 + np.random.default_rng(len(name)).integers(0, 200, x.shape, dtype=np.uint16)
        Image.fromarray(np.ascontiguousarray(x16[..., 0])).save(tmp_path / f"{name}.png")
    out, reg = tmp_path / "f.png", tmp_path / "reg"
    assert cli_main(["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(out), "--model", str(nets),
                     "--device", "cpu", "--align", "similarity", "--save-registered", str(reg)]) == 0
    f = np.asarray(Image.open(out))
    r1, r2 = (np.asarray(Image.open(reg / f"f-registered{i}.png")) for i in (1, 2))
    assert f.dtype == r1.dtype == r2.dtype == np.uint16 and f.shape == r1.shape == r2.shape and f.shape[0] < 160
    assert np.count_nonzero(r1 % 257) > r1.size // 2  # the 16-bit data, not 8-bit values scaled up
    capsys.readouterr()
    assert cli_main(["metrics", str(reg / "f-registered1.png"), str(reg / "f-registered2.png"), str(out),
                     "--metrics", "QG", "--format", "json"]) == 0
    assert 0.3 < json.loads(capsys.readouterr().out)["QG"] <= 1


def test_save_registered_writes_the_8_bit_shots_an_8_bit_output_of_16_bit_sources_was_made_of(
        tmp_path: Path, nets: Path, capsys) -> None:
    """A .jpg output of 16-bit shots is composed from the 8-bit copies, registered at 8 bits: the
    registered sources are those copies (as README says, "at the depth the fusion was composed
    at"), not the 16-bit shots registered apart, whose rounding differs, so that bafusion metrics
    scores the output against the pair it was made of (on a synthetic 16-bit pair fused to .jpg by
    the shipped nets, one run: QMI 0.6808 against the 16-bit ones, 0.6843 against the 8-bit ones)."""
    from bafusion.evaluation.metrics import compute_all
    from bafusion.fusion.batch import prepare_sources

    a, b = _focus_pair(_texture(46, 160, 192))
    b = warp_to_first(b, similarity_matrix((4.0, -3.0), 0.6, 1.0, center=_centre(a)))
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for p, x in zip(paths, (a, b)):  # 16-bit: the 8-bit values times 257, plus detail below 8 bits
        x16 = x.astype(np.uint16) * 257 + np.random.default_rng(len(p.name)).integers(0, 200, x.shape, dtype=np.uint16)
        Image.fromarray(np.ascontiguousarray(x16[..., 1])).save(p)
    out, reg = tmp_path / "f.jpg", tmp_path / "reg"
    assert cli_main(["fuse", *map(str, paths), "-o", str(out), "--model", str(nets), "--device", "cpu",
                     "--align", "similarity", "--save-registered", str(reg)]) == 0
    src = prepare_sources(paths, align="similarity")  # what the fusion was made of
    r1, r2 = (np.asarray(Image.open(reg / f"f-registered{i}.png")) for i in (1, 2))
    assert r1.dtype == np.uint8 and np.array_equal(r1, src.images[0]) and np.array_equal(r2, src.images[1])
    capsys.readouterr()
    names = ["QMI", "QG"]
    assert cli_main(["metrics", str(reg / "f-registered1.png"), str(reg / "f-registered2.png"), str(out),
                     "--metrics", ",".join(names), "--format", "json"]) == 0
    f = np.asarray(Image.open(out))
    assert json.loads(capsys.readouterr().out) == pytest.approx(
        dict(compute_all(src.images[0], src.images[1], f, names)), abs=1e-12)


def test_fuse_dir_save_registered_writes_each_stacks_pair_as_fused_for_bafusion_metrics(tmp_path: Path, nets: Path,
                                                                                        capsys) -> None:
    """fuse-dir had no --save-registered (fuse had): a stack it aligned could not be scored. Now
    each stack fused gets DIR/<name>-registered1.png, -2.png: for a moved pair that --align auto
    aligns, the shots align_images registers and crops, of the output's size, which bafusion
    metrics takes beside it; for a registered pair, its shots' pixels. With --skip-existing a stack
    whose files there are missing is fused again (the other is kept), and a folder inside IN,
    which the next run would read for stacks, is refused before any work."""
    a, b = _focus_pair(_texture(46, 160, 192))
    moved = warp_to_first(b, similarity_matrix((5.0, -3.5), 0.8, 1.0, center=_centre(a)))
    still_a, still_b = _focus_pair(_texture(47, 160, 192))
    src, out, reg = tmp_path / "in", tmp_path / "out", tmp_path / "reg"
    src.mkdir()
    for name, img in (("m-A", a), ("m-B", moved), ("s-A", still_a), ("s-B", still_b)):
        Image.fromarray(img).save(src / f"{name}.png")
    argv = ["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu", "--align", "auto",
            "--save-registered", str(reg)]
    assert cli_main(argv) == 0, capsys.readouterr().err
    assert f"registered sources: {reg / '<name>-registered1.png'}, -registered2.png, ..." in capsys.readouterr().err
    al = align_images([a, moved], "similarity")
    r1, r2, f = (np.asarray(Image.open(p)) for p in (reg / "m-registered1.png", reg / "m-registered2.png", out / "m.png"))
    assert al.warped[1] and f.shape == r1.shape == al.images[0].shape and f.shape[0] < 160
    assert np.array_equal(r1, al.images[0]) and np.array_equal(r2, al.images[1])
    assert np.array_equal(np.asarray(Image.open(reg / "s-registered1.png")), still_a)
    assert np.array_equal(np.asarray(Image.open(reg / "s-registered2.png")), still_b)
    assert cli_main(["metrics", str(reg / "m-registered1.png"), str(reg / "m-registered2.png"), str(out / "m.png"),
                     "--metrics", "QG", "--format", "json"]) == 0
    assert 0.3 < json.loads(capsys.readouterr().out)["QG"] <= 1
    (reg / "m-registered2.png").unlink()
    assert cli_main([*argv, "--skip-existing"]) == 0
    rerun = capsys.readouterr()
    assert f"m: fused again: its registered source {reg / 'm-registered2.png'} (--save-registered) is missing" in rerun.err
    assert f"fused 1 stack(s) into {out}, 1 already there" in rerun.out, rerun.out
    assert np.array_equal(np.asarray(Image.open(reg / "m-registered2.png")), al.images[1])
    inside, other = src / "sub", tmp_path / "out2"
    assert cli_main(["fuse-dir", str(src), str(other), "--model", str(nets), "--device", "cpu",
                     "--save-registered", str(inside)]) == 2
    assert "the --save-registered folder is" in capsys.readouterr().err
    assert not other.exists() and not inside.exists()


def _disc_matte(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2 < 0.8).astype(np.uint8) * 255


@pytest.mark.parametrize("seed", [0, 2])
def test_a_handheld_stack_does_not_drift_with_the_focus_distance(seed: int) -> None:
    """A 5-shot synthetic focal stack (textured discs at 4 depths over a textured backdrop,
    :func:`bafusion.fusion.stack.synthetic_stack`), each shot moved by a known similarity, the
    scale growing through the stack (focus breathing). Estimated against the first shot, the
    last (focused 4 layers away, blur sigma 8) was 2.9 and 2.6 px off (seeds 0, 2); against the
    shot before it, its motion composed, 0.45 and 0.29 px."""
    from bafusion.fusion.stack import StackOptions, synthetic_stack

    n, size, mg = 5, 160, 16
    fgs = [(_texture(seed * 10 + j, 120, 100), _disc_matte(120, 100)) for j in range(n - 1)]
    st = synthetic_stack(fgs, _texture(seed + 99, size + 2 * mg, size + 2 * mg), StackOptions(layers=n, size=size + 2 * mg),
                         seed)
    rng = np.random.default_rng(seed)
    c = (size - 1) / 2
    off = similarity_matrix((mg, mg))
    shots, truth = [st.shots[0][mg:mg + size, mg:mg + size]], [np.eye(3)]
    for k in range(1, n):  # shot k's pixel p sees the canvas at off @ m @ p
        m = similarity_matrix(tuple(rng.uniform(-3, 3, 2)), float(rng.uniform(-0.6, 0.6)), 1 + 0.02 * k / (n - 1),
                              center=(c, c))
        shots.append(warp_to_first(st.shots[k], np.linalg.inv(off @ m), (size, size), order=5))
        truth.append(m)
    al = align_images(shots, "similarity")
    errs = [corner_rms(al.transforms[k], (size, size), truth[k]) for k in range(1, n)]
    assert max(errs) < 1.0, errs
    # the last shot's motion is its motion against the one before it, composed
    assert np.allclose(al.transforms[-1], al.transforms[-2] @ estimate_transform(shots[-2], shots[-1]), atol=1e-9)


def _handheld_stack(seed: int, n: int = 5, size: int = 160, mg: int = 16, perspective: float = 0.0
                    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The shots and true transforms of :func:`test_a_handheld_stack_does_not_drift_with_the_focus_distance`'s
    stack; ``perspective``: each motion also tilted by up to that much (a homography)."""
    from bafusion.fusion.stack import StackOptions, synthetic_stack

    fgs = [(_texture(seed * 10 + j, 120, 100), _disc_matte(120, 100)) for j in range(n - 1)]
    st = synthetic_stack(fgs, _texture(seed + 99, size + 2 * mg, size + 2 * mg), StackOptions(layers=n, size=size + 2 * mg),
                         seed)
    rng = np.random.default_rng(seed)
    c = (size - 1) / 2
    off = similarity_matrix((mg, mg))
    shots, truth = [st.shots[0][mg:mg + size, mg:mg + size]], [np.eye(3)]
    for k in range(1, n):
        m = similarity_matrix(tuple(rng.uniform(-3, 3, 2)), float(rng.uniform(-0.6, 0.6)), 1 + 0.02 * k / (n - 1),
                              center=(c, c))
        tilt = np.eye(3)
        tilt[2, :2] = rng.uniform(-perspective, perspective, 2)
        m = m @ tilt
        shots.append(warp_to_first(st.shots[k], np.linalg.inv(off @ m), (size, size), order=5))
        truth.append(m)
    return shots, truth


def test_a_stray_shot_in_a_stack_is_not_the_next_shots_reference() -> None:
    """A shot of another scene in the middle of a stack (fused with --force) had its estimate
    taken for no motion, a plausible one, and became the reference of the shots after it: they
    came out 19 and 33 px off (1.1 and 2.0 px estimated against the first, before the chain).
    A shot is the next one's reference only when it matches its own reference as one scene."""
    shots, truth = _handheld_stack(0)
    shots[2] = _texture(777, 160, 160).astype(shots[0].dtype)  # another scene
    assert shots[2].shape == shots[0].shape
    al = align_images(shots, "similarity")
    assert al.quality[2] is not None and al.quality[2] < align.MIN_QUALITY
    # refused without --force: it matches neither the first nor shot 2, its reference
    assert al.reference[2] == 1 and al.not_one_scene() == [2], (al.quality, al.quality_ref)
    errs = [corner_rms(al.transforms[k], (160, 160), truth[k]) for k in (1, 3, 4)]
    assert max(errs) < 1.0, errs
    assert al.implausible[3] is None and al.implausible[4] is None
    # estimated against shot 2, the last that matched its reference
    assert np.allclose(al.transforms[3], al.transforms[1] @ estimate_transform(shots[1], shots[3]), atol=1e-9)


def test_a_stacks_composed_homographies_are_normalised() -> None:
    """Each estimate is a homography with 1 in its corner; the product of two is not (1 - 1.2e-4
    on this stack), and the shift, rotation and scale read from it (:func:`describe_matrix`)
    were off by as much."""
    shots, truth = _handheld_stack(0, perspective=2e-5)
    al = align_images(shots, "homography")
    assert [m[2, 2] for m in al.transforms] == [1.0] * len(shots)
    errs = [corner_rms(al.transforms[k], (160, 160), truth[k]) for k in range(1, len(shots))]
    assert max(errs) < 1.0, errs


def _deep_stack(seed: int, n: int = 8, size: int = 160, sigma_step: float = 2.5) -> list[np.ndarray]:
    """An ``n``-shot synthetic focal stack (textured discs at ``n`` depths over a textured
    backdrop, defocus growing by ``sigma_step`` px a layer), each shot moved by a known
    similarity (a few px, under a degree, the scale growing through the stack)."""
    from bafusion.fusion.stack import StackOptions, synthetic_stack

    mg = 16
    fgs = [(_texture(seed * 10 + j, 120, 100), _disc_matte(120, 100)) for j in range(n - 1)]
    st = synthetic_stack(fgs, _texture(seed + 99, size + 2 * mg, size + 2 * mg),
                         StackOptions(layers=n, size=size + 2 * mg, sigma_step=sigma_step), seed)
    rng = np.random.default_rng(seed)
    c = (size - 1) / 2
    off = similarity_matrix((mg, mg))
    shots = [st.shots[0][mg:mg + size, mg:mg + size]]
    for k in range(1, n):
        m = similarity_matrix(tuple(rng.uniform(-3, 3, 2)), float(rng.uniform(-0.6, 0.6)), 1 + 0.02 * k / (n - 1),
                              center=(c, c))
        shots.append(warp_to_first(st.shots[k], np.linalg.inv(off @ m), (size, size), order=5))
    return shots


def test_a_deep_stack_is_one_scene_though_its_far_shots_match_the_first_poorly() -> None:
    """A stack of 8 shots, defocus growing by 2.5 px a layer: the far shots' match quality with
    the first falls below MIN_QUALITY (it falls with the focus distance), and the stack was
    refused as two scenes naming only the first such shot. Each shot is now judged against the
    shot it was registered against as well (0.9 or more here), and refused only when both fail."""
    from bafusion.fusion.align import MIN_QUALITY, check_alignment

    shots = _deep_stack(0)
    al = align_images(shots, "similarity")
    names = [f"s{k}.png" for k in range(len(shots))]
    assert min(al.quality[1:]) < MIN_QUALITY, al.quality  # the case: the far shots fail against the first
    check_alignment(al, names)  # does not raise
    assert al.reference == [0, 0, 1, 2, 3, 4, 5, 6], al.reference
    assert min(al.quality_ref[1:]) > 0.8, al.quality_ref
    assert al.not_one_scene() == []


def test_another_scene_in_a_deep_stack_is_still_refused_and_every_such_shot_named() -> None:
    """A different photo inserted as shot 5 of the deep stack (and another as shot 8) is still
    refused: it matches neither the first nor the shot it was registered against; every such
    shot is named, and the shot after the odd one is registered against the one before it."""
    from bafusion.errors import UserError
    from bafusion.fusion.align import check_alignment

    shots = _deep_stack(0)
    other = _deep_stack(3)
    odd = shots[:4] + [other[4]] + shots[4:6] + [other[6]] + shots[6:]
    names = [f"s{k}.png" for k in range(len(odd))]
    al = align_images(odd, "similarity")
    assert al.not_one_scene() == [4, 7], (al.quality, al.quality_ref)
    assert al.reference[5] == 3 and al.reference[8] == 6, al.reference  # the odd shots are nobody's reference
    with pytest.raises(UserError, match=r"^2 shots do not look like the same scene as s0\.png \(below 0\.5\): "
                                        r"s4\.png \(match quality -?0\.\d\d after similarity alignment, -?0\.\d\d "
                                        r"with s3\.png, the shot it was registered against\); s7\.png .*; use --force"):
        check_alignment(al, names)
    # a photo whose estimate is plausible (those above are not): without the match with its
    # reference it was the next shot's reference, and that shot misregistered
    one = shots[:4] + [_texture(77, 160, 160)] + shots[4:]
    al = align_images(one, "similarity")
    assert al.implausible[4] is None and al.not_one_scene() == [4], (al.quality, al.quality_ref)
    assert al.reference[5] == 3 and al.quality_ref[5] > 0.8, (al.reference, al.quality_ref)
    with pytest.raises(UserError, match=r"^s4\.png: does not look like the same scene as s0\.png \(match quality "
                                        r"-?0\.\d\d after similarity alignment, -?0\.\d\d with s3\.png, .*below 0\.5\)"):
        check_alignment(al, [f"s{k}.png" for k in range(len(one))])


def test_align_auto_says_a_deep_stacks_far_shot_matches_the_shot_it_was_registered_against() -> None:
    """``--align auto`` on a deep stack whose far shots fail the coarse one-scene check against
    the first: they are accepted as they match the shot they were registered against, and the
    line said they matched "after similarity alignment (match quality -0.16)", a quality with
    the first below MIN_QUALITY (s7). It gives that with the shot registered against too. A
    photo of another scene put in is refused, both qualities given."""
    import re

    from bafusion.errors import UserError
    from bafusion.fusion.align import MIN_QUALITY
    from bafusion.fusion.batch import align_despite_scene_check
    from bafusion.fusion.scene import check_one_scene

    shots = _deep_stack(0)
    names = [f"s{k}.png" for k in range(len(shots))]
    scores = check_one_scene(shots, names, True)
    lines: list[str] = []
    al = align_despite_scene_check(shots, names, scores, tell=lines.append)
    said = {ln.split()[2]: ln for ln in lines}
    assert "s7.png" in said and al.quality[7] < MIN_QUALITY, (lines, al.quality)
    for i in range(1, len(shots)):
        if f"s{i}.png" not in said:
            continue
        m = re.search(r"after similarity alignment \(match quality (-?[\d.]+) after similarity alignment"
                      r"(?:, ([\d.]+) with (s\d\.png), the shot it was registered against)?\): aligned$", said[f"s{i}.png"])
        assert m, said[f"s{i}.png"]
        assert float(m[1]) >= MIN_QUALITY or (float(m[2]) >= MIN_QUALITY and m[3] == names[al.reference[i]]), said
    odd = shots[:4] + [_texture(77, 160, 160)] + shots[4:]
    names = [f"s{k}.png" for k in range(len(odd))]
    with pytest.raises(UserError, match=r"^s4\.png: does not look like the same scene as s0\.png \(correlation -?0\.\d\d "
                                        r"at a coarse scale, below 0\.55; match quality -?0\.\d\d after similarity "
                                        r"alignment, -?0\.\d\d with s3\.png, the shot it was registered against, below 0\.5\)"):
        align_despite_scene_check(odd, names, check_one_scene(odd, names, True), tell=lines.append)
