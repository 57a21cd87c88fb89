"""Compositing: A = FG*GT + blur(BG)*(1-GT), B = blur(FG)*GT + BG*(1-GT)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from bafusion.data.composite import (
    CompositeOptions,
    blur,
    composite_pair_gray,
    draw_sigma,
    fit_background,
    write_index,
)
from bafusion.errors import InputFileError, UserError
from bafusion.io import to_gray_u8 as to_gray


def _hand_made(h: int = 40, w: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    fg = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    bg = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    matte = np.zeros((h, w), np.uint8)
    matte[:, : w // 2] = 255  # left half: foreground
    matte[:, w // 2 : w // 2 + 4] = 128  # a soft rim
    return fg, bg, matte


def test_a_is_fg_where_matte_is_one_and_blurred_bg_where_zero() -> None:
    fg, bg, matte = _hand_made()
    sigma = 2.0
    A, B = composite_pair_gray(fg, matte, bg, sigma)
    fg_g, bg_g = to_gray(fg).astype(int), to_gray(bg).astype(int)
    blur_bg = to_gray(np.clip(np.round(blur(bg.astype(float), sigma)), 0, 255).astype(np.uint8)).astype(int)
    blur_fg = to_gray(np.clip(np.round(blur(fg.astype(float), sigma)), 0, 255).astype(np.uint8)).astype(int)
    one, zero = matte == 255, matte == 0
    assert np.abs(A[one].astype(int) - fg_g[one]).max() <= 1
    assert np.abs(A[zero].astype(int) - blur_bg[zero]).max() <= 1
    assert np.abs(B[one].astype(int) - blur_fg[one]).max() <= 1
    assert np.abs(B[zero].astype(int) - bg_g[zero]).max() <= 1
    # The blur really blurs: the noise background loses contrast in A.
    assert A[zero].std() < 0.6 * bg_g[zero].std()


def test_soft_matte_mixes_linearly() -> None:
    fg = np.full((8, 8, 3), 200, np.uint8)
    bg = np.full((8, 8, 3), 100, np.uint8)
    matte = np.full((8, 8), 128, np.uint8)  # alpha ~ 0.502
    A, B = composite_pair_gray(fg, matte, bg, 1.0)
    # Flat images are unchanged by blur, so A = B = 200*a + 100*(1-a).
    expected = 200 * (128 / 255) + 100 * (1 - 128 / 255)
    assert abs(int(A[4, 4]) - expected) <= 1 and abs(int(B[4, 4]) - expected) <= 1


@pytest.mark.parametrize("bg_shape", [(30, 90, 3), (200, 50, 3), (40, 60, 3)])
def test_fit_cover_keeps_size_and_centre(bg_shape: tuple[int, int, int]) -> None:
    bg = np.zeros(bg_shape, np.uint8)
    bg[bg_shape[0] // 2 - 2 : bg_shape[0] // 2 + 2, bg_shape[1] // 2 - 2 : bg_shape[1] // 2 + 2] = 255
    out = fit_background(bg, (40, 60), "cover")
    assert out.shape == (40, 60, 3)
    # The bright centre square stays at the centre.
    ys, xs = np.nonzero(out[..., 0] > 128)
    assert abs(ys.mean() - 19.5) < 3 and abs(xs.mean() - 29.5) < 3
    assert fit_background(bg, (40, 60), "stretch").shape == (40, 60, 3)


@pytest.mark.parametrize("bg_shape", [(30, 90), (200, 50), (20, 30), (80, 120)])
def test_fit_cover_scales_both_sides_by_one_factor_and_crops_the_centre(bg_shape: tuple[int, int]) -> None:
    """``cover`` scales the background by s = max(h/bh, w/bw) (it covers the target), keeping
    its aspect ratio, and crops the centre: a 10x10 square at the background's centre becomes
    a square of about 10*s px at the target's centre (a stretch would make it a rectangle)."""
    bh, bw = bg_shape
    bg = np.zeros(bg_shape, np.uint8)
    bg[bh // 2 - 5 : bh // 2 + 5, bw // 2 - 5 : bw // 2 + 5] = 255
    out = fit_background(bg, (40, 60), "cover")
    assert out.shape == (40, 60)
    s = max(40 / bh, 60 / bw)
    ys, xs = np.nonzero(out > 128)
    height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    assert abs(height - 10 * s) <= 1.5 and abs(width - 10 * s) <= 1.5, (height, width, 10 * s)
    assert abs(ys.mean() - 19.5) <= 1 and abs(xs.mean() - 29.5) <= 1


def test_sigma_is_drawn_per_pair_deterministically() -> None:
    s = [draw_sigma(0, k, (1.0, 3.0)) for k in range(50)]
    assert s == [draw_sigma(0, k, (1.0, 3.0)) for k in range(50)]
    assert all(1.0 <= x <= 3.0 for x in s) and len(set(s)) == 50
    assert draw_sigma(1, 0, (1.0, 3.0)) != s[0]
    assert draw_sigma(0, 5, (2.0, 2.0)) == 2.0


def test_bad_options_are_rejected() -> None:
    with pytest.raises(UserError, match="sigma"):
        CompositeOptions(sigma=(3.0, 1.0))
    for sigma in ((1.0, float("inf")), (float("inf"), float("inf")), (1.0, float("nan"))):
        with pytest.raises(UserError, match=r"composite\.sigma must be .*finite"):
            CompositeOptions(sigma=sigma)
    with pytest.raises(UserError, match="fit"):
        CompositeOptions(fit="tile")


@pytest.mark.parametrize("sigma", [(1.0, 64.5), (65.0, 65.0), (1.0, 1e9)])
def test_options_refuse_the_sigmas_params_yaml_refuses(sigma: tuple[float, float]) -> None:
    """The schema bounds composite.sigma at 64 px; CompositeOptions took any finite sigma."""
    from bafusion.schema import validate_params

    with pytest.raises(UserError, match="composite.sigma"):
        validate_params({"composite": {"sigma": list(sigma)}}, "params.yaml")
    with pytest.raises(UserError, match=r"composite\.sigma must be .*<= 64 px"):
        CompositeOptions(sigma=sigma)
    assert CompositeOptions(sigma=(64.0, 64.0)).sigma == (64.0, 64.0)
    validate_params({"composite": {"sigma": [64.0, 64.0]}}, "params.yaml")


def test_options_refuse_a_sigma_of_zero_as_params_yaml_does() -> None:
    """0 < lo: a sigma of 0 blurs nothing, so with [0, 0] A and B are the same image under
    opposite labels. The schema refuses it; CompositeOptions' own check of the lower bound was
    untested (0 <= lo passed every test: a mutation test)."""
    from bafusion.schema import validate_params

    for sigma in ((0.0, 1.0), (0.0, 0.0)):
        with pytest.raises(UserError, match="composite.sigma"):
            validate_params({"composite": {"sigma": list(sigma)}}, "params.yaml")
        with pytest.raises(UserError, match=r"composite\.sigma must be \[lo, hi\] with 0 < lo"):
            CompositeOptions(sigma=sigma)


def test_composite_index_names_a_bad_shard(tmp_path: Path) -> None:
    good = tmp_path / "good.h5"
    with h5py.File(good, "w") as h5:
        h5.create_dataset("GT00/A", data=np.zeros((3, 4, 5), np.uint8))
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not an HDF5 file")  # was a traceback: 'file signature not found'
    odd = tmp_path / "odd.h5"
    with h5py.File(odd, "w") as h5:
        h5.create_dataset("GT00/matte", data=np.zeros((4, 5), np.uint8))
    out = tmp_path / "i.json"
    with pytest.raises(InputFileError, match=r"bad\.h5: unreadable HDF5 file"):
        write_index([good, bad], out)
    with pytest.raises(InputFileError, match=r"odd\.h5: not a composite shard"):
        write_index([odd], out)
    assert not out.exists()
    assert write_index([good], out) == {"pairs": 3, "shards": [{"file": "good.h5", "foregrounds": {"GT00": 3}, "pairs": 3}]}


def test_gray_training_pairs_match_the_colour_composite_within_a_level_unless_resized() -> None:
    """What the module docstring and README say of the gray path (run_shard's steps: gray
    first, the background resized in float and clipped, one rounding) against the gray of
    the colour composite (make_testset's steps: the uint8 background resized per channel):
    within one level when the background is not resized; more where it is, because the
    Lanczos overshoot is clipped after the gray conversion in one, per channel in the other."""
    from bafusion.data.composite import composite_float
    from bafusion.io import gray_float, to_uint8

    fg, _, matte = _hand_made(64, 64)
    alpha = matte / 255.0

    def worst(bg: np.ndarray) -> int:
        bg_g = np.clip(fit_background(gray_float(bg).astype(np.float32), (64, 64)), 0, 255).astype(np.float64)
        gray = composite_float(gray_float(fg), bg_g, alpha, 2.0)
        colour = composite_float(fg.astype(np.float64), fit_background(bg, (64, 64)).astype(np.float64), alpha, 2.0)
        return max(int(np.abs(to_uint8(g).astype(int) - to_gray(to_uint8(c)).astype(int)).max())
                   for g, c in zip(gray, colour))

    rng = np.random.default_rng(5)
    assert worst(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) <= 1  # not resized: rounding
    assert worst(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)) > 1  # upscaled noise: overshoot


_FULL_DISK = r"""
import resource, signal, sys
from bafusion.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
sys.exit(main(["composite", "--prepared", sys.argv[1], "--shard", "0", "--shards", "1", "--out", sys.argv[2],
               "--no-progress"]))
"""


@pytest.mark.parametrize("limit", [6000, 20000])
def test_a_shard_that_cannot_be_written_is_one_line_not_a_crash(tmp_path: Path, limit: int) -> None:
    """On a full disk h5py failed in a dataset's deallocation ("Exception ignored"), then at the
    close (an "internal error" traceback), then Python crashed at exit (Segmentation fault, 139):
    now one line naming the output, exit 2, and no file left."""
    import subprocess
    import sys

    from test_realistic import _prepared

    prepared = _prepared(tmp_path)
    out = tmp_path / "shards" / "s0.h5"
    out.parent.mkdir()
    src = Path(__file__).resolve().parents[1] / "src"
    done = subprocess.run([sys.executable, "-c", _FULL_DISK, str(prepared), str(out), str(limit)],
                          capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(src), "BAFUSION_MLFLOW": "0"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [f"bafusion composite: error: {out}: File too large"]
    assert list(out.parent.iterdir()) == []


def _save(path: Path, img: np.ndarray) -> str:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return f"{path.parent.name}/{path.name}"


def _tiny_prepared(tmp_path: Path) -> Path:
    """A prepared folder by hand: 2 train and 1 test foreground (40x60, a matte with a soft
    ramp 0..255 that holds the value 128), 3 train backgrounds (one of the foreground's size,
    a small black/white checkerboard that is upscaled with another aspect, so Lanczos
    overshoots, one larger) and 2 test backgrounds (one needs resizing)."""
    import json

    rng = np.random.default_rng(11)
    root = tmp_path / "prepared"
    manifest: dict = {"foregrounds": [], "backgrounds": []}
    ramp = np.clip(np.round(np.linspace(-40, 300, 60)), 0, 255).astype(np.uint8)
    for i, split in enumerate(("train", "train", "test")):
        fg = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
        matte = np.repeat(np.roll(ramp, 6 * i)[None, :], 40, axis=0)
        matte[:, 0] = 128  # the label's threshold exactly (GT = 0.502 >= 0.5)
        fid = f"F{i}"
        manifest["foregrounds"].append({"id": fid, "image": _save(root / "fg" / f"{fid}.png", fg),
                                        "matte": _save(root / "matte" / f"{fid}.png", matte), "split": split})
    checker = (((np.arange(24)[:, None] // 2 + np.arange(30)[None, :] // 2) % 2) * 255).astype(np.uint8)
    bgs = [rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), np.repeat(checker[..., None], 3, axis=2),
           rng.integers(0, 256, (70, 80, 3), dtype=np.uint8),
           rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), rng.integers(0, 256, (30, 90, 3), dtype=np.uint8)]
    for i, bg in enumerate(bgs):
        bid = f"b{i}"
        manifest["backgrounds"].append({"id": bid, "image": _save(root / "bg" / f"{bid}.png", bg),
                                        "split": "train" if i < 3 else "test"})
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_training_shards_hold_the_papers_gray_pairs_with_their_sigma_and_pair_ids(tmp_path: Path) -> None:
    """run_shard against the module docstring: per pair, A = FG*GT + blur(BG)*(1-GT) and
    B = blur(FG)*GT + BG*(1-GT) in gray, GT = the soft matte / 255, BG the gray background
    fitted (cover) in float with its Lanczos overshoot clipped, one sigma drawn per pair by
    draw_sigma(seed, pair id), pair id = fg index * n_backgrounds + bg index, rounded once."""
    from scipy import ndimage

    from bafusion.data.composite import run_shard
    from bafusion.io import gray_float, read_image, read_matte, to_uint8

    prepared = _tiny_prepared(tmp_path)
    opts = CompositeOptions(sigma=(1.0, 3.0), seed=7)
    shards = [tmp_path / "s0.h5", tmp_path / "s1.h5"]
    assert sum(run_shard(prepared, k, 2, opts, f, progress=False) for k, f in enumerate(shards)) == 6
    bgs = [gray_float(read_image(prepared / "bg" / f"b{i}.png", rgb=True)) for i in range(3)]
    seen_pairs, seen_sigmas = [], []
    for k, f in enumerate(shards):
        with h5py.File(f) as h5:
            assert list(h5.keys()) == [f"F{k}"]  # round-robin: foreground k in shard k
            g = h5[f"F{k}"]
            matte = read_matte(prepared / "matte" / f"F{k}.png")
            np.testing.assert_array_equal(g["matte"][()], matte)
            assert [b.decode() for b in g["background"][()]] == ["b0", "b1", "b2"]
            np.testing.assert_array_equal(g["pair"][()], k * 3 + np.arange(3))
            fg = gray_float(read_image(prepared / "fg" / f"F{k}.png", rgb=True))
            a = matte / 255.0
            for j in range(3):
                s = draw_sigma(7, k * 3 + j, (1.0, 3.0))
                assert g["sigma"][j] == np.float32(s)
                bg = np.clip(fit_background(bgs[j].astype(np.float32), (40, 60), "cover"), 0, 255).astype(np.float64)
                A = fg * a + ndimage.gaussian_filter(bg, s, mode="reflect") * (1 - a)
                B = ndimage.gaussian_filter(fg, s, mode="reflect") * a + bg * (1 - a)
                np.testing.assert_array_equal(g["A"][j], to_uint8(A))
                np.testing.assert_array_equal(g["B"][j], to_uint8(B))
            seen_pairs += list(g["pair"][()])
            seen_sigmas += list(g["sigma"][()])
    assert sorted(seen_pairs) == list(range(6))  # global ids: unique across shards
    assert len(set(seen_sigmas)) == 6 and all(1.0 <= x <= 3.0 for x in seen_sigmas)


def test_testset_holds_colour_pairs_their_truth_and_the_true_decision_map(tmp_path: Path) -> None:
    """make_testset against its docstring: per held-out pair, A and B the colour composites
    with the index's sigma, the truth FG*GT + BG*(1-GT) (all in focus: no blur), and the true
    decision map 255 where GT >= 0.5 (matte >= 128, the training label's threshold: a matte
    value of 128 is A's)."""
    import json

    from scipy import ndimage

    from bafusion.data.composite import make_testset
    from bafusion.data.patches import PatchOptions
    from bafusion.io import read_image, read_matte, to_uint8

    prepared = _tiny_prepared(tmp_path)
    out = tmp_path / "testset"
    index = make_testset(prepared, CompositeOptions(sigma=(1.0, 3.0), seed=3), out, progress=False)
    assert json.loads((out / "index.json").read_text()) == index
    assert [p["name"] for p in index["pairs"]] == ["F2__b3", "F2__b4"]
    fg = read_image(prepared / "fg" / "F2.png", rgb=True).astype(np.float64)
    matte = read_matte(prepared / "matte" / "F2.png")
    assert (matte == 128).any() and (matte == 127).any()
    a = (matte / 255.0)[..., None]
    for p in index["pairs"]:
        s = p["sigma"]
        assert 1.0 <= s <= 3.0 and (p["height"], p["width"]) == (40, 60)
        bg = fit_background(read_image(prepared / "bg" / f"{p['background']}.png", rgb=True), (40, 60), "cover")
        bg = bg.astype(np.float64)
        np.testing.assert_array_equal(read_image(out / f"{p['name']}-truth.png"), to_uint8(fg * a + bg * (1 - a)))
        dm = read_image(out / f"{p['name']}-dm.png")
        np.testing.assert_array_equal(dm, np.where(matte >= 128, 255, 0))
        np.testing.assert_array_equal(dm > 0, matte >= PatchOptions().threshold_u8)  # as training labels it
        blurred = [ndimage.gaussian_filter(x, (s, s, 0), mode="reflect") for x in (fg, bg)]
        np.testing.assert_array_equal(read_image(out / f"{p['name']}-A.png"), to_uint8(fg * a + blurred[1] * (1 - a)))
        np.testing.assert_array_equal(read_image(out / f"{p['name']}-B.png"), to_uint8(blurred[0] * a + bg * (1 - a)))
    assert index["pairs"][0]["sigma"] != index["pairs"][1]["sigma"]
    # the held-out pairs' documented stream key, [seed, 10_000_000 + k, 1] (bafusion.data.patches):
    # drawn as training pair k's, the test set's sigmas repeated the training set's first ones
    assert [p["sigma"] for p in index["pairs"]] == [draw_sigma(3, 10_000_000 + k, (1.0, 3.0)) for k in range(2)]


def test_composite_and_testset_say_how_far_they_got_in_a_log(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """With stderr a log (Snakemake's logs/composite/shard-0.log, nohup, SLURM) composite and
    testset drew no bar and printed nothing else until they ended (about 4 minutes at paper
    scale): now a plain line, without carriage returns, at most every
    bafusion.progress.PLAIN_INTERVAL_S seconds and one at the end; a step shorter than that
    (this one) prints none, and --no-progress none either."""
    import bafusion.progress as progress
    from bafusion.data.composite import make_testset, run_shard

    prepared = _tiny_prepared(tmp_path)
    opts = CompositeOptions(sigma=(1.0, 3.0), seed=7)
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: False)
    capsys.readouterr()
    run_shard(prepared, 0, 2, opts, tmp_path / "quick.h5", progress=True)
    make_testset(prepared, opts, tmp_path / "quick-testset", progress=True)
    assert capsys.readouterr().err == ""  # shorter than the interval: a short log
    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 0.0, raising=False)  # as if each pair took longer than it
    run_shard(prepared, 0, 2, opts, tmp_path / "s0.h5", progress=True)
    make_testset(prepared, opts, tmp_path / "testset", progress=True)
    run_shard(prepared, 1, 2, opts, tmp_path / "s1.h5", progress=False)
    err = capsys.readouterr().err
    assert "\r" not in err and "composite shard 1" not in err, err
    lines = [line.split(": ", 1)[1] for line in err.splitlines()]  # after the time and command (test_progress_log)
    assert any(line.startswith("composite shard 0: 33% 1/3 pair [") and line.endswith("pair/s]") for line in lines), lines
    assert any(line.startswith("composite shard 0: 100% 3/3 pair [") for line in lines), lines
    assert lines[-1].startswith("testset: 100% 2/2 pair ["), lines
