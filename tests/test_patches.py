"""Patch sampling: labels, boundary fractions, split by pair, determinism."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from bafusion.data.patches import (
    BOUNDARY_SUBSET,
    PatchOptions,
    passes_boundary_test,
    random_corners,
    read_split,
    run_patches,
    split_pairs,
    window_fraction,
)
from bafusion.errors import UserError


def _write_shard(path: Path, n_fg: int = 3, n_bg: int = 4, h: int = 70, w: int = 90) -> None:
    """A composite shard like the composite step writes, with blob mattes."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    with h5py.File(path, "w") as h5:
        for f in range(n_fg):
            g = h5.create_group(f"fg{f}")
            cy, cx, r = 20 + 10 * f, 30 + 8 * f, 18 + 3 * f
            matte = np.clip(255 * (r - np.hypot(yy - cy, xx - cx) + 0.5), 0, 255).astype(np.uint8)
            g["matte"] = matte
            g["A"] = rng.integers(0, 256, (n_bg, h, w), dtype=np.uint8)
            g["B"] = rng.integers(0, 256, (n_bg, h, w), dtype=np.uint8)
            g["pair"] = np.arange(n_bg, dtype=np.int64) + f * n_bg
            g["sigma"] = np.ones(n_bg, np.float32)


@pytest.fixture()
def shard(tmp_path: Path) -> Path:
    p = tmp_path / "shard-0.h5"
    _write_shard(p)
    return p


def _mattes(shard: Path) -> dict[int, np.ndarray]:
    out = {}
    with h5py.File(shard, "r") as h5:
        for k in h5:
            for pid in h5[k]["pair"][()]:
                out[int(pid)] = (h5[k]["matte"][()], h5[k]["A"][int(pid) % 4], h5[k]["B"][int(pid) % 4])
    return out


def test_labels_patches_and_boundary_fractions(shard: Path, tmp_path: Path) -> None:
    opts = PatchOptions(patch=16, per_pair=12, boundary_per_pair=9, val_fraction=0.25, seed=1)
    summary = run_patches([shard], opts, tmp_path / "out", progress=False)
    src = _mattes(shard)
    half = opts.patch // 2
    for kind in ("initial", "boundary"):
        for split in ("train", "val"):
            d = read_split(tmp_path / "out" / f"{kind}.h5", split)
            assert d["x"].shape[1:] == (2, 16, 16) and d["x"].dtype == np.uint8
            assert d["y_block"].shape == (len(d["y"]), 2, 2) and d["y_block"].dtype == np.uint8
            for x, y, yb, pid, (r, c) in zip(d["x"], d["y"], d["y_block"], d["pair"], d["centre"]):
                matte, A, B = src[int(pid)]
                assert y == (matte[r, c] >= 128)  # label = matte at the centre
                np.testing.assert_array_equal(yb, matte[r - 1 : r + 1, c - 1 : c + 1] >= 128)  # and its 2x2 block
                assert np.array_equal(x[0], A[r - half : r - half + 16, c - half : c - half + 16])
                assert np.array_equal(x[1], B[r - half : r - half + 16, c - half : c - half + 16])
                if kind == "boundary":
                    win = matte[r - half : r - half + 16, c - half : c - half + 16] >= 128
                    assert win.mean() >= 0.1 and (1 - win.mean()) >= 0.1
    assert summary["counts"]["initial"]["train"] + summary["counts"]["initial"]["val"] == 12 * 12
    # Deliberate sampling: every pair here has enough boundary windows for all 9.
    assert summary["counts"]["boundary"]["train"] + summary["counts"]["boundary"]["val"] == 12 * 9


@pytest.mark.parametrize("context", [0, 4])
def test_augmented_labels_are_the_matte_at_the_pixel_each_variant_centres(shard: Path, tmp_path: Path,
                                                                           context: int) -> None:
    """Patch files through training's augmentation: every variant of every patch is labelled by
    the matte at the image pixel that the variant brings to (s//2, s//2), the pixel fusion
    scores with the patch. At even patch sizes the turns and flips bring a neighbour of the
    stored centre there, and its label used to be the centre's."""
    import torch

    from bafusion.nets.augment import GEOMETRIC, N_VARIANTS, augment, geometric_op, load_split

    opts = PatchOptions(patch=16, per_pair=40, boundary_per_pair=BOUNDARY_SUBSET, seed=4, context=context)
    run_patches([shard], opts, tmp_path, progress=False)
    src = _mattes(shard)
    s = 16 + 2 * context
    grid = torch.arange(s * s).view(s, s)
    moved = 0
    for kind in ("initial", "boundary"):
        for split in ("train", "val"):
            d = load_split(tmp_path / f"{kind}.h5", split)
            assert d.y_block is not None
            centre = read_split(tmp_path / f"{kind}.h5", split)["centre"]
            pair = read_split(tmp_path / f"{kind}.h5", split)["pair"]
            n = len(d)
            for v in range(N_VARIANTS):
                _, yo = augment(d.x, d.y, torch.full((n,), v), y_block=d.y_block)
                r0, c0 = divmod(int(geometric_op(grid, GEOMETRIC[v % 6])[s // 2, s // 2]), s)
                for k in range(n):
                    matte = src[int(pair[k])][0]
                    r, c = centre[k] + np.array([r0, c0]) - s // 2  # crop index i is image row centre - s//2 + i
                    want = int(matte[r, c] >= 128)
                    assert int(yo[k]) == (1 - want if v >= 6 else want), (kind, split, k, v)
                    moved += want != int(d.y[k])
    assert moved > 0  # some variant moved a pixel of the other label to the centre: the case that was wrong


def test_a_matte_at_the_label_threshold_is_focused(tmp_path: Path) -> None:
    """Label 1 when ``matte >= label_threshold``: at 0.5 the uint8 threshold is
    ceil(127.5) = 128, and a matte of exactly 128 is focused in A (127 is not)."""
    assert PatchOptions(label_threshold=0.5).threshold_u8 == 128
    h, w = 40, 48
    matte = np.where(np.arange(w)[None, :] < w // 2, 127, 128).astype(np.uint8).repeat(h, 0)
    rng = np.random.default_rng(3)
    path = tmp_path / "shard-0.h5"
    with h5py.File(path, "w") as h5:
        g = h5.create_group("fg0")
        g["matte"] = matte
        g["A"] = rng.integers(0, 256, (4, h, w), dtype=np.uint8)
        g["B"] = rng.integers(0, 256, (4, h, w), dtype=np.uint8)
        g["pair"] = np.arange(4, dtype=np.int64)
        g["sigma"] = np.ones(4, np.float32)
    opts = PatchOptions(patch=16, per_pair=20, boundary_per_pair=5, val_fraction=0.25, label_threshold=0.5)
    summary = run_patches([path], opts, tmp_path / "out", progress=False)
    ys = []
    for kind in ("initial", "boundary"):
        for split in ("train", "val"):
            d = read_split(tmp_path / "out" / f"{kind}.h5", split)
            np.testing.assert_array_equal(d["y"], (d["centre"][:, 1] >= w // 2).astype(np.uint8))
            ys.append(d["y"])
    y = np.concatenate(ys)
    assert 0 < y.sum() < y.size  # both labels drawn
    # every pair has boundary windows (half its pixels are 128): all 5 per pair are drawn
    assert summary["counts"]["boundary"]["train"] + summary["counts"]["boundary"]["val"] == 4 * 5



@pytest.mark.parametrize("threshold, level", [(1e-300, 1), (3.9e-12, 1), (1e-11, 1), (1 / 255, 1), (128 / 255, 128),
                                              (0.5, 128), (1.0, 255), (0.0, 0)])
def test_any_label_threshold_above_zero_leaves_a_matte_of_zero_defocused(tmp_path: Path, threshold: float,
                                                                         level: int) -> None:
    """``patches.label_threshold`` below about 3.9e-12 (accepted by the schema) gave the uint8
    threshold ceil(t * 255 - 1e-9) = 0: every pixel focused in A and every patch labelled 1,
    what check_params refuses for 0 itself. A matte of 0 is below any threshold above 0."""
    assert PatchOptions(label_threshold=threshold).threshold_u8 == level
    if threshold != 3.9e-12:
        return
    shard = tmp_path / "half.h5"  # left half matte 0, right half 1 of 255
    with h5py.File(shard, "w") as h5:
        g = h5.create_group("fg0")
        g["matte"] = np.tile(np.uint8([0, 1]).repeat(20), (40, 1))
        g["A"] = np.zeros((2, 40, 40), np.uint8)
        g["B"] = np.zeros((2, 40, 40), np.uint8)
        g["pair"] = np.arange(2, dtype=np.int64)
        g["sigma"] = np.ones(2, np.float32)
    opts = PatchOptions(patch=16, per_pair=50, boundary_per_pair=0, val_fraction=0, label_threshold=threshold)
    run_patches([shard], opts, tmp_path / "out", progress=False)
    d = read_split(tmp_path / "out" / "initial.h5", "train")
    np.testing.assert_array_equal(d["y"], (d["centre"][:, 1] >= 20).astype(np.uint8))
    assert 0 < d["y"].sum() < d["y"].size

def test_train_and_validation_pairs_are_disjoint(shard: Path, tmp_path: Path) -> None:
    run_patches([shard], PatchOptions(patch=16, per_pair=5, boundary_per_pair=5, val_fraction=0.25), tmp_path, progress=False)
    for kind in ("initial", "boundary"):
        tr = set(read_split(tmp_path / f"{kind}.h5", "train")["pair"].tolist())
        va = set(read_split(tmp_path / f"{kind}.h5", "val")["pair"].tolist())
        assert tr and va and not (tr & va)
        assert len(va) == 3  # round(0.25 * 12)


def test_same_seed_same_bytes_other_seed_other_patches(shard: Path, tmp_path: Path) -> None:
    def digest(d: Path) -> dict[str, str]:
        return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.glob("*.h5"))}

    opts = PatchOptions(patch=16, per_pair=6, boundary_per_pair=6, seed=5)
    run_patches([shard], opts, tmp_path / "a", progress=False)
    run_patches([shard], opts, tmp_path / "b", progress=False)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    run_patches([shard], PatchOptions(patch=16, per_pair=6, boundary_per_pair=6, seed=6), tmp_path / "c", progress=False)
    a = read_split(tmp_path / "a" / "initial.h5", "train")["centre"]
    c = read_split(tmp_path / "c" / "initial.h5", "train")["centre"]
    assert a.shape != c.shape or not np.array_equal(a, c)


def test_window_fraction_matches_brute_force() -> None:
    rng = np.random.default_rng(2)
    mask = rng.random((23, 31)) > 0.6
    p = 7
    frac = window_fraction(mask, p)
    assert frac.shape == (17, 25)
    for r, c in [(0, 0), (5, 9), (16, 24), (10, 3)]:
        assert frac[r, c] == pytest.approx(mask[r : r + p, c : c + p].mean())


def test_split_pairs_fraction_and_determinism() -> None:
    ids = np.arange(100)
    v = split_pairs(ids, 0.15, 0)
    assert len(v) == 15 and v == split_pairs(ids[::-1], 0.15, 0)
    assert split_pairs(ids, 0.15, 1) != v
    assert len(split_pairs(np.arange(3), 0.15, 0)) == 1  # at least one validation pair


def test_split_pairs_rounds_and_leaves_a_training_pair() -> None:
    """val_pair_count's docstring: round(val_fraction * n) pairs, at least one and at most
    n - 1 when there are two or more pairs and val_fraction > 0."""
    assert len(split_pairs(np.arange(20), 0.18, 0)) == 4  # round(3.6), not its floor 3
    assert len(split_pairs(np.arange(20), 0.12, 0)) == 2  # round(2.4)
    for n, frac in ((2, 0.75), (2, 0.9), (4, 0.95)):  # round(frac * n) would take every pair
        v = split_pairs(np.arange(n), frac, 0)
        assert len(v) == n - 1, (n, frac, v)
    assert split_pairs(np.arange(5), 0.0, 0) == set()


def test_boundary_test_uses_both_fractions_and_includes_its_limits() -> None:
    """A window passes when its focused fraction is >= patches.min_focused and its defocused
    fraction >= patches.min_defocused, each its own parameter (here not equal)."""
    frac = np.array([0.2, 0.85, 0.5])
    np.testing.assert_array_equal(passes_boundary_test(frac, 0.3, 0.1), [False, True, True])
    np.testing.assert_array_equal(passes_boundary_test(frac, 0.1, 0.3), [True, False, True])
    # at the limits (a 10x10 window with 10 and with 90 focused pixels): "at least" includes them
    mask = np.zeros((10, 20), bool)
    mask[:, :1] = True
    mask[:, 10:19] = True
    f = window_fraction(mask, 10)[0, [0, 10]]
    np.testing.assert_array_equal(f, [0.1, 0.9])
    np.testing.assert_array_equal(passes_boundary_test(f, 0.1, 0.1), [True, True])


def test_random_corners_cover_every_position_of_a_whole_patch() -> None:
    """Random patches lie anywhere inside the image, each whole: top-left corners take every
    row 0..H-p and column 0..W-p (the last ones included), never more."""
    rng = np.random.default_rng(0)
    c = random_corners(rng, (10, 12), 8, 2000)
    assert c.shape == (2000, 2)
    assert set(c[:, 0].tolist()) == {0, 1, 2} and set(c[:, 1].tolist()) == {0, 1, 2, 3, 4}


def test_context_stores_the_same_patches_with_their_surroundings(shard: Path, tmp_path: Path) -> None:
    """patches.context: crops of side p + 2*context around the very patches (same centres,
    labels and boundary picks) that context 0 draws, reflect-padded at the image border."""
    base = PatchOptions(patch=16, per_pair=6, boundary_per_pair=4, val_fraction=0.25, seed=3)
    run_patches([shard], base, tmp_path / "plain", progress=False)
    ctx = PatchOptions(**{**base.__dict__, "context": 8})
    summary = run_patches([shard], ctx, tmp_path / "ctx", progress=False)
    assert summary["context"] == 8
    src = _mattes(shard)
    for kind in ("initial", "boundary"):
        with h5py.File(tmp_path / "ctx" / f"{kind}.h5", "r") as f:
            assert f.attrs["context"] == 8 and f.attrs["patch"] == 16
        with h5py.File(tmp_path / "plain" / f"{kind}.h5", "r") as f:
            assert "context" not in f.attrs  # the paper's files are unchanged
        for split in ("train", "val"):
            plain = read_split(tmp_path / "plain" / f"{kind}.h5", split)
            got = read_split(tmp_path / "ctx" / f"{kind}.h5", split)
            assert got["x"].shape[1:] == (2, 32, 32)
            for k in ("y", "pair", "centre"):
                assert np.array_equal(got[k], plain[k])
            assert np.array_equal(got["x"][:, :, 8:24, 8:24], plain["x"])
            for x, pid, (r, c) in zip(got["x"], got["pair"], got["centre"]):
                _, A, _ = src[int(pid)]
                padded = np.pad(A, 8, mode="reflect")
                # the crop covers rows r - 16 .. r + 15 of A, i.e. padded rows r - 8 .. r + 23
                assert np.array_equal(x[0], padded[r - 8 : r + 24, c - 8 : c + 24])


def test_context_must_be_a_multiple_of_the_stride() -> None:
    from bafusion.errors import UserError

    with pytest.raises(UserError, match="context"):
        PatchOptions(context=6)


def test_uncompressed_patch_set_holds_the_same_data(shard: Path, tmp_path: Path) -> None:
    """compress=False (`bafusion patches --no-compression`) drops only the gzip filter: every
    dataset and attribute is the same, and the fingerprinted attributes do not mention it."""
    opts = PatchOptions(patch=16, per_pair=6, boundary_per_pair=6, seed=3, context=4)
    a = run_patches([shard], opts, tmp_path / "gz", progress=False)
    b = run_patches([shard], opts, tmp_path / "raw", progress=False, compress=False)
    assert a == b
    for name in ("initial.h5", "boundary.h5"):
        with h5py.File(tmp_path / "gz" / name) as f, h5py.File(tmp_path / "raw" / name) as g:
            assert dict(f.attrs) == dict(g.attrs)
            for split in ("train", "val"):
                for key in ("x", "y", "pair", "centre", "y_block"):
                    assert f[split][key].compression == "gzip" and g[split][key].compression is None
                    np.testing.assert_array_equal(f[split][key][()], g[split][key][()])


def test_deflate_threads_give_byte_identical_files(shard: Path, tmp_path: Path) -> None:
    """`threads` deflates the patch chunks in parallel; the files, not just their contents, are
    the same for any number of threads (DVC hashes them), and they read back as the patches."""

    def digest(d: Path) -> dict[str, str]:
        return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.glob("*.h5"))}

    opts = PatchOptions(patch=16, per_pair=11, boundary_per_pair=7, seed=2, context=4)  # 132 / 84 patches: partial chunks
    s1 = run_patches([shard], opts, tmp_path / "t1", progress=False, threads=1)
    s3 = run_patches([shard], opts, tmp_path / "t3", progress=False, threads=3)
    assert s1 == s3
    assert digest(tmp_path / "t1") == digest(tmp_path / "t3")
    src = _mattes(shard)
    for kind in ("initial", "boundary"):
        with h5py.File(tmp_path / "t3" / f"{kind}.h5") as f:
            for split in ("train", "val"):
                x = f[split]["x"]
                assert x.compression == "gzip" and x.compression_opts == 4 and x.shuffle and x.chunks[0] == 64
                assert x.shape[0] == s3["counts"][kind][split] == len(f[split]["y"]) == len(f[split]["centre"])
                for patch, pid, (r, c) in zip(x[()], f[split]["pair"][()], f[split]["centre"][()]):
                    _, A, B = src[int(pid)]
                    r0, c0 = r - 8 - 4, c - 8 - 4  # centre - patch // 2 - context
                    if r0 >= 0 and c0 >= 0 and r0 + 24 <= A.shape[0] and c0 + 24 <= A.shape[1]:
                        assert np.array_equal(patch[0], A[r0 : r0 + 24, c0 : c0 + 24])
                        assert np.array_equal(patch[1], B[r0 : r0 + 24, c0 : c0 + 24])


def test_whole_chunks_and_an_empty_split(shard: Path, tmp_path: Path) -> None:
    """A split whose count is a whole number of chunks, and an empty one (no validation pairs)."""
    opts = PatchOptions(patch=16, per_pair=16, boundary_per_pair=0, val_fraction=0.0)  # 12 pairs x 16 = 3 chunks
    s = run_patches([shard], opts, tmp_path, progress=False, threads=2)
    assert s["counts"]["initial"] == {"train": 192, "val": 0}
    d = read_split(tmp_path / "initial.h5", "train")
    assert d["x"].shape == (192, 2, 16, 16) and d["y"].shape == (192,) and d["centre"].shape == (192, 2)
    half = 8
    for x, pid, (r, c) in zip(d["x"], d["pair"], d["centre"]):
        _, A, _ = _mattes(shard)[int(pid)]
        assert np.array_equal(x[0], A[r - half : r + half, c - half : c + half])
    for kind, split in (("initial", "val"), ("boundary", "train"), ("boundary", "val")):
        e = read_split(tmp_path / f"{kind}.h5", split)
        assert e["x"].shape == (0, 2, 16, 16) and e["y"].shape == (0,) and e["centre"].shape == (0, 2)
        assert e["y_block"].shape == (0, 2, 2)


def test_a_pair_smaller_than_the_patch_names_prepare_scale_and_patch(tmp_path: Path) -> None:
    """prepare.scale: 0.01 was accepted and the patches job said only "pair 0: image 5x3 is
    smaller than the patch side 16", naming neither key."""
    _write_shard(tmp_path / "s.h5", n_fg=1, n_bg=1, h=12, w=20)
    with pytest.raises(UserError) as e:
        run_patches([tmp_path / "s.h5"], PatchOptions(patch=16, per_pair=2, boundary_per_pair=2), tmp_path / "out",
                    progress=False)
    assert str(e.value).startswith("pair 0: image 20x12 is smaller than patch: 16") and "prepare.scale" in str(e.value)


def test_every_foreground_smaller_than_the_patch_is_named_before_any_patch(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # own data with small foregrounds: the job named only the first pair ("pair 4: image ..."), not
    # its foreground, after the pairs before it were cut, and not the other small foregrounds
    p = tmp_path / "s.h5"
    _write_shard(p, n_fg=3, n_bg=2, h=40, w=50)
    with h5py.File(p, "r+") as h5:  # fg1 and fg2 small
        for name in ("fg1", "fg2"):
            g = h5[name]
            for k in ("A", "B"):
                a = g[k][:, :12, :20]
                del g[k]
                g[k] = a
            m = g["matte"][:12, :20]
            del g["matte"]
            g["matte"] = m
    import bafusion.data.patches as patches_mod

    monkeypatch.setattr(patches_mod, "random_corners", lambda *a: pytest.fail("a patch was cut"))
    with pytest.raises(UserError) as e:
        run_patches([p], PatchOptions(patch=16, per_pair=2, boundary_per_pair=2), tmp_path / "out", progress=False)
    msg = str(e.value)
    assert msg.startswith("pair 2: image 20x12 is smaller than patch: 16") and "prepare.scale" in msg
    assert "foreground 'fg1' (pairs 2-3 of s.h5)" in msg and "also foreground 'fg2' (pairs 4-5 of s.h5): 20x12" in msg
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_threads_must_be_positive(shard: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="threads"):
        run_patches([shard], PatchOptions(patch=16), tmp_path / "out", progress=False, threads=0)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["no-matte", "short-B", "no-pair", "bad-chunk"])
def test_a_damaged_shard_is_named_not_a_traceback(shard: Path, tmp_path: Path, damage: str) -> None:
    """A composite shard with a group missing a dataset, datasets that do not fit together or an
    unreadable chunk: an InputFileError naming the file and the group; nothing written."""
    from bafusion.errors import InputFileError

    with h5py.File(shard, "a") as h5:
        g = h5["fg1"]
        if damage == "no-matte":
            del g["matte"]
        elif damage == "short-B":
            b = g["B"][()]
            del g["B"]
            g["B"] = b[:-1]
        elif damage == "no-pair":
            del g["pair"]
        else:
            a = g["A"][()]
            del g["A"]
            g.create_dataset("A", data=a, chunks=(1, *a.shape[1:]), compression="gzip")
    if damage == "bad-chunk":  # overwrite the deflated bytes of fg1/A's chunks
        with h5py.File(shard, "r") as h5:
            ds = h5["fg1"]["A"]
            spans = [(ds.id.get_chunk_info(i).byte_offset, ds.id.get_chunk_info(i).size)
                     for i in range(ds.id.get_num_chunks())]
        raw = bytearray(shard.read_bytes())
        for off, size in spans:
            raw[off:off + size] = b"\xff" * size
        shard.write_bytes(bytes(raw))
    with pytest.raises(InputFileError) as e:
        run_patches([shard], PatchOptions(patch=16, per_pair=2, boundary_per_pair=2), tmp_path / "out", progress=False)
    assert str(shard) in str(e.value) and "composite" in str(e.value)
    if damage != "no-pair":
        assert "'fg1'" in str(e.value)
    assert not list((tmp_path / "out").glob("*.h5")) if (tmp_path / "out").exists() else True


def test_a_shard_given_under_several_names_counts_once(shard: Path, tmp_path: Path) -> None:
    opts = PatchOptions(patch=16, per_pair=3, boundary_per_pair=3, seed=4)
    once = run_patches([shard], opts, tmp_path / "once", progress=False)
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.h5").symlink_to(shard)
    spellings = [shard, tmp_path / "sub" / ".." / shard.name, tmp_path / "link.h5"]  # one file, three names
    assert len(set(spellings)) == 3
    twice = run_patches(spellings, opts, tmp_path / "twice", progress=False)
    assert twice == once and twice["pairs"] == 12
    for kind in ("initial", "boundary"):
        assert (tmp_path / "once" / f"{kind}.h5").read_bytes() == (tmp_path / "twice" / f"{kind}.h5").read_bytes()


def _write_sharded(folder: Path, shards: int, n_fg: int = 5, n_bg: int = 3, h: int = 40, w: int = 48) -> list[Path]:
    """The same composited pairs as the composite step spreads them over ``shards`` files
    (foregrounds round-robin, pair id = fg * n_bg + bg)."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:h, 0:w]
    groups = []
    for f in range(n_fg):
        matte = np.clip(255 * (12 + f - np.hypot(yy - 15 - 3 * f, xx - 20)), 0, 255).astype(np.uint8)
        groups.append((f, matte, rng.integers(0, 256, (n_bg, h, w), dtype=np.uint8),
                       rng.integers(0, 256, (n_bg, h, w), dtype=np.uint8)))
    folder.mkdir()
    files = []
    for s in range(shards):
        path = folder / f"shard-{s}.h5"
        with h5py.File(path, "w", track_order=True) as h5:
            h5.attrs["shard"], h5.attrs["shards"] = s, shards
            for f, matte, a, b in groups[s::shards]:
                g = h5.create_group(f"fg{f}", track_order=True)
                g["matte"], g["A"], g["B"] = matte, a, b
                g["pair"] = np.arange(n_bg, dtype=np.int64) + f * n_bg
        files.append(path)
    return files


def test_patch_files_do_not_depend_on_the_number_or_order_of_shards(tmp_path: Path) -> None:
    """The composite step's shard count only says how many parallel jobs it ran: the patch
    files are byte-identical for 1, 2 or 3 shards, given in any order (they held the pairs
    shard by shard: another order of the same rows, and other nets trained from them)."""
    from bafusion.data.patches import _iter_pairs

    opts = PatchOptions(patch=16, per_pair=3, boundary_per_pair=2, val_fraction=0.3, seed=2)
    runs = {}
    for shards in (1, 2, 3):
        files = _write_sharded(tmp_path / f"c{shards}", shards)
        assert [pid for pid, *_ in _iter_pairs(files[::-1])] == list(range(15))
        for order, given in (("fwd", files), ("rev", files[::-1])):
            out = tmp_path / f"p{shards}{order}"
            runs[out.name] = run_patches(given, opts, out, progress=False)
    assert all(v == runs["p1fwd"] for v in runs.values())
    with h5py.File(tmp_path / "p1fwd" / "initial.h5") as h5:
        for sp in ("train", "val"):
            assert np.all(np.diff(h5[sp]["pair"][()]) >= 0)
    for kind in ("initial", "boundary"):
        ref = (tmp_path / "p1fwd" / f"{kind}.h5").read_bytes()
        for name in runs:
            assert (tmp_path / name / f"{kind}.h5").read_bytes() == ref, (name, kind)


def test_shards_of_two_composite_runs_are_refused(tmp_path: Path) -> None:
    one = _write_sharded(tmp_path / "c1", 1)
    two = _write_sharded(tmp_path / "c2", 2)
    with pytest.raises(UserError, match="pair 0 is also in .*shards of two composite runs"):
        run_patches([one[0], two[0]], PatchOptions(patch=16), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_the_smallest_patch_trains_on_a_batch_of_one() -> None:
    """patch 4 left the nets' last stage a 1x1 map: a batch of one sample (batch 16 with 17
    samples per epoch) stopped the training (BatchNorm: expected more than 1 value per
    channel). 8, the smallest allowed, trains on one."""
    import torch

    from bafusion.nets.model import build_model
    from bafusion.schema import problems

    with pytest.raises(UserError, match=r"patch must be a multiple of 4 >= 8 .*got 4"):
        PatchOptions(patch=4)
    assert PatchOptions(patch=8).patch == 8 and problems({"patch": 8}) == [] and problems({"patch": 4})
    net = build_model(8).train()
    net(torch.rand(1, 2, 8, 8)).sum().backward()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        net(torch.rand(1, 2, 4, 4))


# --------------------------------------------------------------------------------------
# The patch centres' stream: its own when the shard holds realistic draws
# --------------------------------------------------------------------------------------

_REAL = dict(kernel="mixed", spread=True, exposure=0.3, gamma=0.1, noise=2.0, jpeg=[75, 98], shift=1.5, scale=0.02)


def _write_stream_shard(path: Path, n_pairs: int, realistic: bool, h: int = 40, w: int = 40,
                        signal: str = "params") -> list:
    """One foreground with ``n_pairs`` backgrounds, its root ``params`` as the composite step
    writes them (``realistic`` only when on) and, when realistic, the group's draws; returns
    the draws (empty for the paper)."""
    import dataclasses
    import json

    from bafusion.data.composite import Realism, draw_realism

    r = Realism.from_mapping(_REAL)
    rng = np.random.default_rng(4)
    params: dict = {"sigma": [1.0, 3.0], "fit": "cover", "seed": 0}
    draws = [draw_realism(0, pid, r) for pid in range(n_pairs)] if realistic else []
    with h5py.File(path, "w", track_order=True) as h5:
        h5.attrs["shard"], h5.attrs["shards"], h5.attrs["n_backgrounds"] = 0, 1, n_pairs
        if realistic and signal == "params":
            params["realistic"] = r.as_dict()
        h5.attrs["params"] = json.dumps(params)
        g = h5.create_group("fg0", track_order=True)
        g["matte"] = np.where(np.arange(w)[None, :] < w // 2, 255, 0).astype(np.uint8).repeat(h, 0)
        g["A"] = rng.integers(0, 256, (n_pairs, h, w), dtype=np.uint8)
        g["B"] = rng.integers(0, 256, (n_pairs, h, w), dtype=np.uint8)
        g["pair"] = np.arange(n_pairs, dtype=np.int64)
        g["sigma"] = np.ones(n_pairs, np.float32)
        if draws and signal == "draws":
            g.attrs["realistic_draws"] = json.dumps([dataclasses.asdict(d) for d in draws])
    return draws


def _centres_by_pair(path: Path) -> dict[int, np.ndarray]:
    out: dict[int, list] = {}
    for sp in ("train", "val"):
        d = read_split(path, sp)
        for pid, c in zip(d["pair"], d["centre"]):
            out.setdefault(int(pid), []).append(c)
    return {k: np.array(v) for k, v in out.items()}


def _stream_centres(key: int, pid: int, opts: PatchOptions, shape: tuple[int, int]) -> np.ndarray:
    from bafusion.data.patches import random_corners

    rng = np.random.default_rng([opts.seed, pid, key])
    return random_corners(rng, shape, opts.patch, opts.per_pair) + opts.patch // 2


def test_paper_shards_keep_the_centres_of_stream_2(tmp_path: Path) -> None:
    """A paper shard (no realistic draws, nothing drawn from key 2 by the composite step)
    keeps its centres from (seed, pair, 2): the paper's patch files are unchanged."""
    _write_stream_shard(tmp_path / "paper.h5", 6, realistic=False)
    opts = PatchOptions(patch=16, per_pair=5, boundary_per_pair=3, val_fraction=0.2)
    run_patches([tmp_path / "paper.h5"], opts, tmp_path / "out", progress=False)
    got = _centres_by_pair(tmp_path / "out" / "initial.h5")
    assert sorted(got) == list(range(6))
    for pid, c in got.items():
        assert np.array_equal(c, _stream_centres(2, pid, opts, (40, 40)))


@pytest.mark.parametrize("signal", ["params", "draws"])
def test_realistic_shards_draw_centres_from_their_own_stream(tmp_path: Path, signal: str) -> None:
    """The realistic degradations come from (seed, pair, 2): patch centres drawn from it too
    were a function of them (the first centre's row told a disc kernel from a Gaussian, the
    4th row followed B's shift with corr 0.99999). A shard with realistic draws (its params,
    or its groups' draws) has its centres drawn from (seed, pair, 5), independent of them."""
    n = 1500
    draws = _write_stream_shard(tmp_path / "real.h5", n, realistic=True, signal=signal)
    opts = PatchOptions(patch=16, per_pair=8, boundary_per_pair=0, val_fraction=0.2)
    run_patches([tmp_path / "real.h5"], opts, tmp_path / "out", progress=False)
    got = _centres_by_pair(tmp_path / "out" / "initial.h5")
    assert sorted(got) == list(range(n))
    for pid in range(5):
        assert np.array_equal(got[pid], _stream_centres(5, pid, opts, (40, 40)))
    rows = np.array([got[pid][:, 0] for pid in range(n)])  # (pairs, per_pair)
    same = np.array([_stream_centres(2, pid, opts, (40, 40))[:, 0] for pid in range(n)])
    assert np.mean(rows == same) < 0.2  # not the draw stream's positions
    dy = np.array([d.shift[0] for d in draws])
    mag = np.array([d.magnification for d in draws])
    disc = np.array([d.kernel == "disc" for d in draws])
    # With key 2 these are 0.99999 and 1.0 (the module's old behaviour, kept for the record)
    assert abs(np.corrcoef(same[:, 3], dy)[0, 1]) > 0.9
    for k in range(opts.per_pair):
        for v in (dy, mag, disc.astype(float)):
            assert abs(np.corrcoef(rows[:, k], v)[0, 1]) < 0.1
    # the first row no longer tells the kernel: both kernels' rows span the range 8..32
    # (with key 2 a Gaussian pair's first corner row was in the lower half, a disc's upper)
    for sel in (disc, ~disc):
        assert rows[sel, 0].min() <= 9 and rows[sel, 0].max() >= 31


def test_the_stream_does_not_depend_on_the_number_of_realistic_shards(tmp_path: Path) -> None:
    """Every shard of a realistic run carries the params (even one left without a
    foreground): the patch files are byte-identical for 1 or 3 shards."""
    import json

    opts = PatchOptions(patch=16, per_pair=3, boundary_per_pair=2, val_fraction=0.3, seed=2)
    params = json.dumps({"sigma": [1.0, 3.0], "fit": "cover", "seed": 0, "realistic": _REAL})
    outs = []
    for shards in (1, 3, 6):  # 6 > 5 foregrounds: one shard holds no pair
        files = _write_sharded(tmp_path / f"c{shards}", shards)
        for f in files:
            with h5py.File(f, "a") as h5:
                h5.attrs["params"] = params
        run_patches(files, opts, tmp_path / f"p{shards}", progress=False)
        outs.append(tmp_path / f"p{shards}")
    got = _centres_by_pair(outs[0] / "initial.h5")
    assert np.array_equal(got[4], _stream_centres(5, 4, opts, (40, 48))[: opts.per_pair])
    for kind in ("initial", "boundary"):
        ref = (outs[0] / f"{kind}.h5").read_bytes()
        assert all((o / f"{kind}.h5").read_bytes() == ref for o in outs[1:])


def test_boundary_subset_is_the_random_patches_that_pass(shard: Path, tmp_path: Path) -> None:
    """patches.boundary_per_pair: subset (the paper's boundary set): boundary.h5 holds exactly the
    random patches of initial.h5 with >= min_focused focused and >= min_defocused defocused
    pixels, in the same order; initial.h5 is the file a count makes (the subset draws nothing)."""
    base = dict(patch=16, per_pair=12, val_fraction=0.25, seed=1)
    sub = run_patches([shard], PatchOptions(boundary_per_pair=BOUNDARY_SUBSET, **base), tmp_path / "sub", progress=False)
    run_patches([shard], PatchOptions(boundary_per_pair=5, **base), tmp_path / "cnt", progress=False)
    for split in ("train", "val"):
        a, b = read_split(tmp_path / "sub" / "initial.h5", split), read_split(tmp_path / "cnt" / "initial.h5", split)
        assert all(np.array_equal(a[k], b[k]) for k in a)
    src = _mattes(shard)
    total = 0
    for split in ("train", "val"):
        init = read_split(tmp_path / "sub" / "initial.h5", split)
        bnd = read_split(tmp_path / "sub" / "boundary.h5", split)
        keep = []
        for pid, (r, c) in zip(init["pair"], init["centre"]):
            win = src[int(pid)][0][r - 8 : r + 8, c - 8 : c + 8] >= 128
            keep.append(0.1 <= win.mean() <= 0.9)
        keep = np.array(keep, bool)
        assert 0 < keep.sum() < len(keep)  # the test shard has both kinds
        for k in init:
            assert np.array_equal(bnd[k], init[k][keep]), k
        total += int(keep.sum())
    assert sum(sub["counts"]["boundary"].values()) == total
    with pytest.raises(UserError, match="boundary_per_pair must be a count >= 0 or 'subset'"):
        PatchOptions(boundary_per_pair="some")


def test_no_random_patches_are_refused_before_any_work() -> None:
    """per_pair 0 wrote an empty initial set (exit 0) that only train refused ("the train split
    is empty"): at least 1, as params.schema.yaml's patches.per_pair."""
    with pytest.raises(UserError, match=r"patches.per_pair must be at least 1 \(the initial net's patches per pair\), got 0"):
        PatchOptions(per_pair=0, boundary_per_pair=0)


_FULL_DISK = r"""
import resource, signal, sys
from bafusion.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), resource.RLIM_INFINITY))
sys.exit(main(["patches", sys.argv[1], "-o", sys.argv[2], "--no-progress", "--per-pair", "50"]))
"""


@pytest.mark.parametrize("limit", [3000, 40000])
def test_a_patch_set_that_cannot_be_written_is_one_line(shard: Path, tmp_path: Path, limit: int) -> None:
    """h5py's "Can't decrement id ref count (unable to extend file properly, errno = 27)" at the
    close was an "internal error" traceback: one line naming the file, exit 2, nothing left."""
    import os
    import subprocess
    import sys

    out = tmp_path / "pt"
    src = Path(__file__).resolve().parents[1] / "src"
    done = subprocess.run([sys.executable, "-c", _FULL_DISK, str(shard), str(out), str(limit)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(src), "BAFUSION_MLFLOW": "0"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [f"bafusion patches: error: {out / 'initial.h5'}: File too large"]
    assert not out.exists() or list(out.iterdir()) == []


def test_boundary_fractions_summing_above_one_are_refused_with_their_values() -> None:
    """`patches={min_focused: 0.7, min_defocused: 0.4}` was refused as "patches.min_focused and
    min_defocused must be fractions summing to at most 1", naming neither the values nor the sum
    (nor min_defocused's section); snakemake -n says it through check_params."""
    from bafusion.cli.params_check import check_params
    from bafusion.config import deep_merge, load_params

    with pytest.raises(UserError) as e:
        PatchOptions(min_focused=0.7, min_defocused=0.4)
    assert str(e.value) == ("patches.min_focused + patches.min_defocused must be at most 1 (a boundary patch holds "
                            "both shares of its pixels), got 0.7 + 0.4 = 1.1"), str(e.value)
    with pytest.raises(UserError, match=r"^patches\.min_defocused must be a fraction in \[0, 1\], got -0\.1$"):
        PatchOptions(min_defocused=-0.1)
    PatchOptions(min_focused=0.6, min_defocused=0.4)
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    with pytest.raises(UserError) as e:
        check_params(deep_merge(params, {"patches": {"min_focused": 0.6, "min_defocused": 0.5}}), "p.yaml")
    assert str(e.value).startswith("p.yaml: patches.min_focused + patches.min_defocused must be at most 1 ") \
        and str(e.value).endswith(", got 0.6 + 0.5 = 1.1"), str(e.value)



@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="named pipes")
@pytest.mark.parametrize("command", ["patches", "train"])
@pytest.mark.parametrize("kind", ["pipe", "folder"])
def test_a_named_pipe_or_folder_as_the_hdf5_input_is_refused_not_waited_for(tmp_path: Path, command: str,
                                                                            kind: str) -> None:
    """``bafusion patches pipe.h5`` and ``bafusion train --patches pipe.h5`` hung for good: h5py
    opened the named pipe, which waits for a writer (holding the GIL: run in a process of its own
    here). A folder given as a shard was said in h5py's words ("file read failed: time = ...,
    buf = 0x7ffd..."). Both are now refused by name."""
    import os
    import subprocess
    import sys

    src = tmp_path / "in.h5"
    if kind == "pipe":
        os.mkfifo(src)
    else:
        src.mkdir()
    argv = (["patches", str(src), "-o", str(tmp_path / "out"), "--no-progress"] if command == "patches" else
            ["train", "--net", "initial", "--patches", str(src), "-o", str(tmp_path / "m" / "i.pt"), "--no-progress"])
    env = {**os.environ, "BAFUSION_MLFLOW": "0"}
    try:
        done = subprocess.run([sys.executable, "-m", "bafusion", *argv], capture_output=True, text=True, timeout=120,
                              env=env, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail("an HDF5 input that is a named pipe was waited for")
    why = "not a regular file (a named pipe" if kind == "pipe" else "is a folder, not a"
    assert done.returncode == 2 and f"error: {src}: {why}" in done.stderr and "Unable to" not in done.stderr, \
        done.stderr


def _free(monkeypatch: pytest.MonkeyPatch, free: int) -> list[Path]:
    """Make the patches step see ``free`` bytes free on every disk; the folders it asked about."""
    import collections
    import shutil

    from bafusion.data import patches

    asked: list[Path] = []
    usage = collections.namedtuple("usage", "total used free")

    def disk_usage(path: object) -> object:
        asked.append(Path(str(path)))
        return usage(10 * free, 9 * free, free)

    monkeypatch.setattr(patches.shutil, "disk_usage", disk_usage)
    assert shutil.disk_usage is disk_usage  # (patches' shutil is the module)
    return asked


def test_patch_sets_that_do_not_fit_on_the_disk_are_refused_before_writing(shard: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """patches.per_pair had no bound and the job no disk check: per_pair 1,000,000 for 48 pairs
    would have written ~98 GB until the disk was full. The estimate (12 pairs x (12 random + 9
    boundary) patches of 2x16x16 bytes and 21 bytes of labels = 134,316 bytes, times the shares
    gzip keeps of 12 of the first pair's random patches and of 9 of its boundary ones:
    overlapping crops of noise, about 80%) is compared with the free space before any file is
    written."""
    asked = _free(monkeypatch, 80_000)
    out = tmp_path / "new" / "pt"
    opts = PatchOptions(patch=16, per_pair=12, boundary_per_pair=9, seed=1)
    with pytest.raises(UserError) as e:
        run_patches([shard], opts, out, progress=False)
    text = str(e.value)
    assert re.fullmatch(re.escape(f"{out}: the patch sets would take about ") + r"1\d\d\.\d KiB \(144 initial and 108 "
                        r"boundary patches of 2x16x16 bytes, gzip keeps \d\d% of a sample of the first pair's "
                        r"random patches and \d\d% of its boundary ones\), more than the 78\.1 KiB free on the disk of " + re.escape(str(tmp_path)) +
                        r": lower patches\.per_pair \(--per-pair\) or patches\.boundary_per_pair \(--boundary-per-pair\), or free space", text), text
    assert asked == [tmp_path]  # the nearest existing folder of the output's
    assert not out.exists()
    _free(monkeypatch, 10**9)
    run_patches([shard], opts, out, progress=False)
    assert (out / "initial.h5").is_file()


def test_the_free_space_check_counts_what_gzip_keeps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flat pairs deflate to a small share of their bytes: a disk that holds the compressed
    sets but not the raw ones is no reason to refuse; without compression it is."""
    shard = tmp_path / "flat.h5"
    with h5py.File(shard, "w") as h5:
        g = h5.create_group("fg0")
        g["matte"] = np.tile(np.uint8([0, 255]).repeat(20), (40, 1))
        g["A"] = np.full((4, 40, 40), 100, np.uint8)
        g["B"] = np.full((4, 40, 40), 150, np.uint8)
        g["pair"] = np.arange(4, dtype=np.int64)
        g["sigma"] = np.ones(4, np.float32)
    opts = PatchOptions(patch=16, per_pair=100, boundary_per_pair=0)
    raw = 400 * (2 * 16 * 16 + 21)  # 213,200 bytes
    _free(monkeypatch, raw // 2)
    run_patches([shard], opts, tmp_path / "gz", progress=False)
    with pytest.raises(UserError, match=r"400 initial patches of 2x16x16 bytes, without compression\), more than"):
        run_patches([shard], opts, tmp_path / "raw", progress=False, compress=False)


def test_a_pairs_patches_are_cropped_in_bounded_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """crop() built all of a pair's patches at once and the appender copied them again, ~4 KB a
    patch at patch 32: patches.per_pair 1,000,000 would hold ~4 GB per pair (measured, one pair,
    no gzip, one run each: a peak RSS of 451 MiB at 100,000 and 848 MiB at 200,000; 75 and 79 MiB
    cropped in blocks). Now a pair is cropped CROP_BLOCK patches at a time, and the files are
    byte-identical to those of one whole crop."""
    import tracemalloc

    from bafusion.data import patches

    shard = tmp_path / "one.h5"
    _write_shard(shard, n_fg=1, n_bg=1, h=60, w=60)
    opts = PatchOptions(patch=16, per_pair=100_000, boundary_per_pair=5000, val_fraction=0, context=4)
    crops = 100_000 * 2 * 24 * 24  # 115 MB of the pair's random crops at once
    tracemalloc.start()
    try:
        run_patches([shard], opts, tmp_path / "big", progress=False, compress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < crops / 4, f"{peak:,} bytes at the peak"  # measured: 13.7 MB (236 MB before)
    opts = PatchOptions(patch=16, per_pair=9000, boundary_per_pair=5000, val_fraction=0, context=4)
    run_patches([shard], opts, tmp_path / "blocks", progress=False, compress=False)
    monkeypatch.setattr(patches, "CROP_BLOCK", 10**9)  # the whole pair at once, as before
    run_patches([shard], opts, tmp_path / "whole", progress=False, compress=False)
    for name in ("initial.h5", "boundary.h5"):
        assert (tmp_path / "blocks" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


def test_the_free_space_estimate_counts_the_boundary_patches_the_files_get(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """With a count of boundary patches above what a pair's boundary can give, the estimate
    counted every position of the pair (15,225 at patch 16 on 120x160) where only those that
    pass the boundary test are drawn from; and it took the share gzip keeps of the random
    patches for the boundary ones too, which, many drawn from one pair's boundary, overlap
    and deflate far better. Both made it several times the bytes written (measured on the
    builtin composites: 3.2x at 2000 boundary patches a pair, 6.8x at 20,000) and refused
    patch sets that fit. Now the count is the one the files get, and each set has its share."""
    shard = tmp_path / "s.h5"
    _write_shard(shard, h=120, w=160)
    opts = PatchOptions(patch=16, per_pair=10, boundary_per_pair=20_000, seed=1)
    _free(monkeypatch, 1000)
    with pytest.raises(UserError) as e:
        run_patches([shard], opts, tmp_path / "a", progress=False, compress=False)
    _free(monkeypatch, 10**9)
    summary = run_patches([shard], opts, tmp_path / "a", progress=False, compress=False)
    n_bnd = sum(summary["counts"]["boundary"].values())
    assert n_bnd < 12 * 15_225 and f"(120 initial and {n_bnd:,} boundary patches of 2x16x16 bytes" in str(e.value), \
        (n_bnd, str(e.value))
    opts = PatchOptions(patch=16, per_pair=10, boundary_per_pair=1000, seed=1)
    summary = run_patches([shard], opts, tmp_path / "b", progress=False)
    written = sum(f.stat().st_size for f in (tmp_path / "b").glob("*.h5"))  # 1.0 MiB; 5.4 MiB estimated before
    _free(monkeypatch, 2 * written)
    run_patches([shard], opts, tmp_path / "c", progress=False)
    for name in ("initial.h5", "boundary.h5"):
        assert (tmp_path / "c" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_labels_are_written_as_the_patches_come_not_held_to_the_end(tmp_path: Path) -> None:
    """The labels (``y``, ``pair``, ``centre``, ``y_block``: 21 bytes a patch) were held in
    memory until the files closed: the peak grew ~25 bytes a patch (tracemalloc: 3.2 MiB at
    66,768 patches, 13.7 MiB at 498,768), ~1.2 GB at 48,000,000. They are written a whole
    number of label chunks at a time now: the peak does not grow with the pairs (here 10x the
    pairs, 64,800 more patches: 1.22 MB then 2.39 MB before, 1.19 MB then 0.94 MB now; one run
    each), and the files hold the labels of their patches, the same bytes for any ``threads``."""
    import tracemalloc

    peaks, shards = [], {}
    for n_bg in (4, 40):  # 12 and 120 pairs, 600 patches each: what a pair takes alike
        shards[n_bg] = tmp_path / f"shard-{n_bg}.h5"
        _write_shard(shards[n_bg], n_fg=3, n_bg=n_bg)
        tracemalloc.start()
        s = run_patches([shards[n_bg]], PatchOptions(patch=8, per_pair=600, boundary_per_pair=0, seed=1),
                        tmp_path / f"p{n_bg}", progress=False)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert sum(s["counts"]["initial"].values()) == 120 * 600
    assert peaks[1] - peaks[0] < 512 * 1024, peaks  # 64,800 more patches: 1.17 MB more when held
    # written among the patch chunks, the same bytes for any number of deflate threads
    run_patches([shards[40]], PatchOptions(patch=8, per_pair=600, boundary_per_pair=0, seed=1), tmp_path / "t3",
                progress=False, threads=3)
    assert (tmp_path / "t3" / "initial.h5").read_bytes() == (tmp_path / "p40" / "initial.h5").read_bytes()
    with h5py.File(tmp_path / "p40" / "initial.h5") as f, h5py.File(shards[40]) as sh:
        mattes = {int(pid): sh[k]["matte"][()] for k in sh for pid in sh[k]["pair"][()]}
        g = f["train"]
        assert list(g) == ["x", "y", "pair", "centre", "y_block"] and g["y"].chunks == (4096,)
        n = len(g["x"])
        assert n > 3 * 4096 and {len(g[k]) for k in ("y", "pair", "centre", "y_block")} == {n}
        assert np.array_equal(g["y"][()], g["y_block"][:, 1, 1])
        for (r, c), pid, y in zip(g["centre"][::97], g["pair"][::97], g["y"][::97]):
            assert y == (mattes[int(pid)][r, c] >= 128)


def test_an_empty_boundary_set_is_warned_about_with_its_cause(tmp_path: Path) -> None:
    # mattes of one value give no boundary patch: the set was written empty without a word, and
    # train --net boundary refused it later ("the train split is empty")
    p = tmp_path / "shard-0.h5"
    _write_shard(p)
    with h5py.File(p, "r+") as h5:
        for k in h5:
            h5[k]["matte"][...] = 0
    opts = PatchOptions(patch=16, per_pair=6, boundary_per_pair=6, seed=1)
    with pytest.warns(UserWarning, match=r"the boundary patch set is empty: no 16x16 window of the 10 training pairs holds "
                                         r"at least 10% focused .* and 10% defocused pixels .*train --net boundary refuses"):
        summary = run_patches([p], opts, tmp_path / "out", progress=False)
    assert summary["counts"]["boundary"] == {"train": 0, "val": 0}
    _write_shard(p)  # blob mattes: boundary patches, no warning
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_patches([p], opts, tmp_path / "out2", progress=False)
