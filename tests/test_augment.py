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
    y = torch.from_numpy(rng.integers(0, 2, size=n)).long()
    return PatchSplit(path=Path("mem"), split="train", kind="initial", patch=patch, x=x, y=y, attrs={})


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
        outs, labels = augment(data.x[i : i + 1].expand(12, -1, -1, -1), data.y[i].repeat(12), torch.arange(12))
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


def test_subset_per_epoch_and_determinism() -> None:
    data = _split(n=20)

    def epochs(seed: int, n: int) -> list[torch.Tensor]:
        ld = AugmentedLoader(data, batch_size=16, seed=seed, samples_per_epoch=50)
        return [torch.cat([x for x, _ in ld]) for _ in range(n)]

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
