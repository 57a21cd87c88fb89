"""The x12 augmentation and the epoch loader of bafusion.nets.augment."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from toy_patches import write_toy_patches

from bafusion.errors import InputFileError
from bafusion.nets.augment import (
    GEOMETRIC,
    N_VARIANTS,
    AugmentedLoader,
    PatchSplit,
    augment,
    centre_sources,
    geometric_op,
    load_split,
    to_input,
    variant_name,
    variant_table,
)

torch.set_num_threads(1)


def _split(n: int = 20, patch: int = 4, seed: int = 0) -> PatchSplit:
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.integers(0, 256, size=(n, 2, patch, patch), dtype=np.uint8))
    y_block = torch.from_numpy(rng.integers(0, 2, size=(n, 2, 2))).long()
    return PatchSplit(path=Path("mem"), split="train", kind="initial", patch=patch, x=x, y=y_block[:, 1, 1].clone(),
                      attrs={}, y_block=y_block)


def _label_maps(n: int, side: int, seed: int = 0) -> PatchSplit:
    """Patches whose channel 0 is 255 where a pixel is focused in A and 0 where not, channel 1
    the reverse, every one with a random label map (so the four central labels differ between
    patches): a sample's right label is then channel 0 at its pixel (side//2, side//2), after
    any variant, the swap included."""
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, 2, size=(n, side, side)).astype(np.uint8)
    x = torch.from_numpy(np.stack([255 * lab, 255 * (1 - lab)], axis=1))
    c = side // 2
    y_block = torch.from_numpy(lab[:, c - 1 : c + 1, c - 1 : c + 1].astype(np.int64))
    return PatchSplit(path=Path("mem"), split="train", kind="initial", patch=side, x=x,
                      y=torch.from_numpy(lab[:, c, c].astype(np.int64)), attrs={}, y_block=y_block)


def test_geometric_variants_are_the_named_ops() -> None:
    m = torch.tensor([[1, 2], [3, 4]])
    assert geometric_op(m, "rot90").tolist() == [[2, 4], [1, 3]]  # counter-clockwise
    assert geometric_op(m, "rot180").tolist() == [[4, 3], [2, 1]]
    assert geometric_op(m, "rot270").tolist() == [[3, 1], [4, 2]]
    assert geometric_op(m, "hflip").tolist() == [[2, 1], [4, 3]]
    assert geometric_op(m, "vflip").tolist() == [[3, 4], [1, 2]]
    assert geometric_op(m, "identity").tolist() == [[1, 2], [3, 4]]
    assert [variant_name(v) for v in (0, 1, 6, 11)] == ["identity", "rot90", "identity+swap", "vflip+swap"]


def test_gather_table_matches_reference_ops_for_all_12_variants() -> None:
    x = torch.randint(0, 256, (N_VARIANTS, 2, 5, 5), dtype=torch.uint8)
    y = torch.tensor([1, 0] * 6)
    out, yo = augment(x, y, torch.arange(N_VARIANTS))
    for v in range(N_VARIANTS):
        ref = geometric_op(x[v], GEOMETRIC[v % 6])
        if v >= 6:
            ref = ref.flip(0)
        assert torch.equal(out[v], ref), variant_name(v)
    # all 12 variants of one patch differ (a random patch has no symmetry)
    one = x[:1].expand(N_VARIANTS, -1, -1, -1)
    outs, _ = augment(one, torch.zeros(N_VARIANTS, dtype=torch.long), torch.arange(N_VARIANTS))
    assert len({o.numpy().tobytes() for o in outs}) == N_VARIANTS
    assert variant_table(5).shape == (N_VARIANTS, 50)


def test_channel_swap_flips_the_label_and_geometry_keeps_it() -> None:
    x = torch.randint(0, 256, (4, 2, 3, 3), dtype=torch.uint8)
    y = torch.tensor([1, 0, 1, 0])
    out, yo = augment(x, y, torch.tensor([6, 6, 3, 4]))
    assert yo.tolist() == [0, 1, 1, 0]
    assert torch.equal(out[0, 0], x[0, 1]) and torch.equal(out[0, 1], x[0, 0])
    assert torch.equal(out[2], torch.rot90(x[2], 3, dims=(-2, -1)))


def test_epoch_enumerates_every_index_variant_pair_once() -> None:
    data = _split(n=20)
    loader = AugmentedLoader(data, batch_size=7, seed=3)
    assert loader.num_samples == 20 * 12 == loader.epoch_samples
    assert len(loader) == -(-240 // 7)
    lookup = {}
    for i in range(20):
        outs, labels = augment(data.x[i : i + 1].expand(12, -1, -1, -1), data.y[i].repeat(12), torch.arange(12),
                               y_block=data.y_block[i : i + 1].expand(12, -1, -1))
        for v in range(12):
            lookup[(outs[v].numpy().tobytes())] = (i, v, int(labels[v]))
    seen = []
    for xb, yb in loader:
        assert xb.dtype == torch.float32 and float(xb.max()) <= 1.0
        for xs, ys in zip(xb, yb):
            key = (xs * 255).round().to(torch.uint8).numpy().tobytes()
            i, v, lab = lookup[key]
            assert int(ys) == lab
            seen.append((i, v))
    assert len(seen) == 240 and len(set(seen)) == 240
    assert seen != sorted(seen)  # shuffled
    assert loader.epoch == 1 and loader.position == 0


@pytest.mark.parametrize("side", [8, 64, 96, 7])
def test_each_variant_takes_the_label_of_the_pixel_it_brings_to_the_centre(side: int) -> None:
    """The label is that of the pixel (p//2, p//2), the one fusion scores with the patch. At
    even p the turns and flips put a neighbour there: 5 of the 6 geometric variants kept the
    original centre's label (2.9 % of the paper preset's boundary samples one pixel off).
    Every combination of the four central labels, every variant; side 96 is patch 64 with 16
    px of context, side 7 an odd side (whose centre stays: the label stays)."""
    data = _label_maps(16 * 12, side)
    c = side // 2
    combos = torch.tensor([[(k >> b) & 1 for b in range(4)] for k in range(16)]).view(16, 2, 2)
    block = combos.repeat_interleave(12, 0)  # patch n: central labels combos[n // 12], variant n % 12
    x = data.x.clone()
    x[:, 0, c - 1 : c + 1, c - 1 : c + 1] = (255 * block).to(torch.uint8)
    x[:, 1, c - 1 : c + 1, c - 1 : c + 1] = (255 * (1 - block)).to(torch.uint8)
    variant = torch.arange(16 * 12) % N_VARIANTS
    out, yo = augment(x, block[:, 1, 1], variant, y_block=block)
    want = (out[:, 0, c, c] == 255).long()
    for v in range(N_VARIANTS):
        sel = variant == v
        assert torch.equal(yo[sel], want[sel]), variant_name(v)
    if side % 2 == 0:  # the old labels (y whatever the variant) were wrong here
        old = torch.where(variant >= 6, 1 - block[:, 1, 1], block[:, 1, 1])
        assert not torch.equal(old, want)
        assert [int(k) for k in centre_sources(variant_table(side))] == [3, 2, 0, 1, 2, 1] * 2
    else:
        assert centre_sources(variant_table(side)).tolist() == [3] * 12
    # the loader (CPU path: grouped by variant) gives every sample the label of its centre pixel
    loader = AugmentedLoader(_label_maps(40, side, seed=1), batch_size=32, seed=2)
    n = 0
    for xb, yb in loader:
        assert torch.equal(yb, (xb[:, 0, c, c] > 0.5).long())
        n += len(yb)
    assert n == 40 * 12


def test_a_patch_set_without_y_block_warns_once_and_keeps_y(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A file of an older bafusion (no y_block) still trains, as before, and says once to
    regenerate it."""
    p = write_toy_patches(tmp_path / "initial.h5", n_train=9, n_val=4, patch=8)
    with h5py.File(p, "a") as f:
        for split in ("train", "val"):
            del f[split]["y_block"]
    tr = load_split(p, "train")
    assert tr.y_block is None
    for _ in range(3):
        labels = torch.cat([y for _, y in AugmentedLoader(tr, 4, seed=0)])
    assert labels.shape == (108,)
    err = capsys.readouterr().err
    assert err.startswith("bafusion train: warning: ") and err.count("warning") == 1, err
    assert "initial.h5" in err and "y_block" in err and "regenerate" in err, err
    assert len(err.strip().splitlines()) == 1
    AugmentedLoader(load_split(p, "val"), 4, augment=False)  # no augmentation, nothing to say
    assert capsys.readouterr().err == ""


def test_subset_per_epoch_and_determinism() -> None:
    data = _split(n=20)

    def epochs(seed: int, n: int) -> list[torch.Tensor]:
        ld = AugmentedLoader(data, batch_size=16, seed=seed, samples_per_epoch=50)
        return [torch.cat([x for x, _ in ld]) for _ in range(n)]

    def labels(seed: int) -> bytes:
        ld = AugmentedLoader(data, batch_size=16, seed=seed)
        return torch.cat([y for _, y in ld]).numpy().tobytes()

    assert labels(1) == labels(1)  # the labels (taken from y_block) too
    a, b, c = epochs(1, 2), epochs(1, 2), epochs(2, 1)
    assert a[0].shape[0] == 50 and a[1].shape[0] == 50
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a[0], c[0])


def test_loader_state_resumes_mid_epoch_exactly() -> None:
    data = _split(n=10)
    full = AugmentedLoader(data, batch_size=8, seed=5)
    ref = [x for _ in range(2) for x, _ in full]
    a = AugmentedLoader(data, batch_size=8, seed=5)
    got = [x for x, _ in a]
    it = iter(a)
    got += [next(it) [0] for _ in range(4)]
    state = a.state_dict()
    b = AugmentedLoader(data, batch_size=8, seed=99)  # the seed is overridden by the state
    b.load_state_dict(state)
    got += [x for x, _ in b]
    assert len(got) == len(ref) and all(torch.equal(p, q) for p, q in zip(got, ref))


def test_ranks_partition_the_epoch_evenly() -> None:
    data = _split(n=11)
    parts = [AugmentedLoader(data, batch_size=5, seed=0, rank=r, world_size=2) for r in (0, 1)]
    assert len(parts[0]) == len(parts[1])
    assert parts[0].rank_samples == parts[1].rank_samples == 66
    xs = [torch.cat([x for x, _ in p]) for p in parts]
    keys0 = {t.numpy().tobytes() for t in xs[0]}
    keys1 = {t.numpy().tobytes() for t in xs[1]}
    assert not keys0 & keys1 and len(keys0 | keys1) == 132
    val = [AugmentedLoader(data, 4, augment=False, rank=r, world_size=2, even_shards=False) for r in (0, 1)]
    assert sum(v.rank_samples for v in val) == 11 and val[0].num_samples == 11


def test_to_input_scales_to_unit_range() -> None:
    assert to_input(torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [0.0, 1.0]


def test_load_split_reads_the_patch_format(tmp_path: Path) -> None:
    p = write_toy_patches(tmp_path / "initial.h5", n_train=9, n_val=4, patch=8)
    tr = load_split(p, "train", expect_kind="initial", expect_patch=8)
    va = load_split(p, "val")
    assert (len(tr), len(va), tr.patch, tr.kind) == (9, 4, 8, "initial")
    assert tr.x.dtype == torch.uint8 and tr.y.dtype == torch.int64
    assert AugmentedLoader(tr, 4).num_samples == 108


def test_load_split_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.h5"
    with pytest.raises(InputFileError, match="nope.h5.*not found"):
        load_split(missing, "train")
    bad = tmp_path / "corrupt.h5"
    bad.write_bytes(b"this is not hdf5" * 10)
    with pytest.raises(InputFileError, match="corrupt.h5.*HDF5"):
        load_split(bad, "train")
    p = write_toy_patches(tmp_path / "mixed.h5", n_train=3, n_val=2, patch=8)
    with h5py.File(p, "a") as f:
        f["train"]["y_block"][1] = 1 - f["train"]["y_block"][1]
    with pytest.raises(InputFileError, match=r"mixed\.h5.*y_block\[:, 1, 1\] differs from train/y"):
        load_split(p, "train")
    p = write_toy_patches(tmp_path / "boundary.h5", n_train=3, n_val=2, patch=8, kind="boundary")
    with pytest.raises(InputFileError, match="boundary.h5.*'boundary'.*expected 'initial'"):
        load_split(p, "train", expect_kind="initial")
    with pytest.raises(InputFileError, match="boundary.h5.*patch=16"):
        load_split(p, "train", expect_patch=16)
    nog = tmp_path / "nogroup.h5"
    with h5py.File(nog, "w") as f:
        f.create_group("val")
    with pytest.raises(InputFileError, match="nogroup.h5.*no group 'train'"):
        load_split(nog, "train")


def test_the_training_benchmarks_patch_set_has_y_block_and_trains_without_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """benchmarks/bench_train.py wrote patch sets without y_block: the throughput it measured
    was the old label path's (no gather), and it printed the "regenerate" warning. It now
    writes them with the patches step's writer, y_block included (y == y_block[:, 1, 1])."""
    import sys

    bench = str(Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, bench)
    try:
        from bench_train import write_patches
    finally:
        sys.path.remove(bench)
    data = load_split(write_patches(tmp_path / "b.h5", 40, 8), "train")
    assert data.y_block is not None and data.y_block.shape == (40, 2, 2)
    assert torch.equal(data.y_block[:, 1, 1], data.y)
    assert len(torch.cat([y for _, y in AugmentedLoader(data, 16, seed=0)])) == 40 * 12
    assert capsys.readouterr().err == ""
