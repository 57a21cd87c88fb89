"""Dense-pass training (bafusion.nets.dense_train)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from bafusion.errors import UserError
from bafusion.nets.dense_train import (
    CropSampler,
    crop_labels,
    dense_grid,
    dense_logits,
    dense_train_step,
    read_shard_pairs,
)
from bafusion.nets.model import build_model


def _pairs_file(path, sizes=((96, 112), (80, 80)), seed=0):
    """A shard with one group per size; A bright where the matte says 'focused in A'."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as h5:
        pid = 0
        for k, (h, w) in enumerate(sizes):
            matte = np.zeros((h, w), np.uint8)
            matte[: h // 2] = 255
            matte[h // 2 :, : w // 3] = 255
            a = np.where(matte >= 128, 200, 50).astype(np.uint8)
            b = (250 - a).astype(np.uint8)
            g = h5.create_group(f"fg{k}")
            g["A"] = np.stack([a, a])
            g["B"] = np.stack([b, b])
            g["matte"] = matte
            g["pair"] = np.array([pid, pid + 1])
            pid += 2
    return path


def test_dense_grid_and_errors():
    assert dense_grid(128, 32) == 25
    assert dense_grid(32, 32) == 1
    with pytest.raises(UserError, match="multiple of 4"):
        dense_grid(130, 32)
    with pytest.raises(UserError, match="at least the patch"):
        dense_grid(28, 32)


@pytest.mark.parametrize("patch", [4, 0, -4, 10])
def test_a_patch_below_8_is_refused_as_everywhere_else(patch):
    """Patch 4 was accepted here (the patches step, the schema and training refuse it: the nets'
    last map is then 1x1 and BatchNorm fails on a batch of one); refused with the same words."""
    net = build_model(8)
    with pytest.raises(UserError, match=rf"patch must be a multiple of 4 >= 8 .*1x1.*, got {patch}$"):
        dense_grid(64, patch)
    with pytest.raises(UserError, match=rf"patch must be a multiple of 4 >= 8 .*, got {patch}$"):
        dense_logits(net, torch.rand(2, 2, 64, 64), patch)


def test_dense_logits_of_a_patch_sized_crop_is_the_isolated_classifier():
    torch.manual_seed(0)
    net = build_model(8).eval()
    x = torch.rand(3, 2, 32, 32)
    with torch.no_grad():
        d = dense_logits(net, x, 32)
        iso = net(x)
    assert d.shape == (3, 2, 1, 1)
    torch.testing.assert_close(d[:, :, 0, 0], iso, rtol=1e-5, atol=1e-5)


def test_dense_logits_grid_matches_the_fusion_dense_pass():
    """Cell (i, j) is the patch whose corner is (4i, 4j), seen in the crop (as score_dense)."""
    from bafusion.nets.model import context_logits

    torch.manual_seed(1)
    net = build_model(8).eval()
    x = torch.rand(1, 2, 64, 64)
    with torch.no_grad():
        d = dense_logits(net, x, 32)  # G = 9
        # The patch at corner (16, 16) with 16 px of context on every side is the whole crop.
        c = context_logits(net, x, 16)
    torch.testing.assert_close(d[:, :, 4, 4], c, rtol=1e-5, atol=1e-5)


def test_crop_labels_read_the_patch_centres():
    m = np.zeros((40, 40), np.uint8)
    m[:, 20:] = 255
    y = crop_labels(m, 32, 128)  # G = 3, centres at 16, 20, 24
    assert y.shape == (3, 3)
    assert (y[:, 0] == 0).all() and (y[:, 1:] == 1).all()


def test_sampler_labels_follow_the_focused_side_under_every_augmentation(tmp_path):
    pairs = read_shard_pairs([_pairs_file(tmp_path / "s.h5")])
    assert len(pairs) == 4 and pairs.a[0].shape == (96, 112) and pairs.a[2].shape == (80, 80)
    s = CropSampler(pairs, 64, 32, batch=16, seed=3)
    x, y = s.sample()
    assert x.shape == (16, 2, 64, 64) and y.shape == (16, 9, 9) and y.dtype == torch.int64
    idx = 16 + 4 * np.arange(9)
    a = x[:, 0][:, idx[:, None], idx[None, :]]
    b = x[:, 1][:, idx[:, None], idx[None, :]]
    # Channel 0 bright at a centre means that centre is focused in channel 0: label 1.
    assert torch.equal(y, (a > b).long())
    assert 0 < y.float().mean() < 1
    # Seeded: the same seed, the same batch.
    x2, y2 = CropSampler(pairs, 64, 32, batch=16, seed=3).sample()
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_read_shard_pairs_keep_and_drop(tmp_path):
    f = _pairs_file(tmp_path / "s.h5")
    assert sorted(read_shard_pairs([f], keep={1, 2}).pair.tolist()) == [1, 2]
    assert sorted(read_shard_pairs([f], drop={0}).pair.tolist()) == [1, 2, 3]
    with pytest.raises(UserError, match="no composited pairs"):
        read_shard_pairs([f], keep={99})
    with pytest.raises(UserError, match="larger than the smallest"):
        CropSampler(read_shard_pairs([f]), 96, 32, batch=2)


def test_dense_training_learns_the_toy_task(tmp_path):
    torch.manual_seed(0)
    pairs = read_shard_pairs([_pairs_file(tmp_path / "s.h5")])
    net = build_model(8)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    s = CropSampler(pairs, 64, 32, batch=4, seed=0)
    accs = [dense_train_step(net, opt, *s.sample(), 32)[1] for _ in range(30)]
    assert np.mean(accs[-5:]) > 0.9 > np.mean(accs[:2])
