"""Dense-pass training: one trunk pass over a crop supervises every patch position in it.

Fusion already scores a pair densely: the trunk runs over a whole crop and each patch's
``p/4 x p/4`` cells are average-pooled (:func:`bafusion.fusion.score_dense`). The same pass can
train the net: for a crop of side ``S`` (a multiple of 4) it yields a ``G x G`` grid of patch
logits, ``G = (S - p) / 4 + 1``, the patch at grid cell ``(i, j)`` covering rows
``4i .. 4i + p - 1``; its label is the matte at the patch centre ``(4i + p // 2, 4j + p // 2)``
(1: focused in A), as for the isolated patches of :mod:`bafusion.data.patches`.

A crop of 128 px at patch 32 gives 625 labelled decisions for the trunk cost of 16 isolated
patches: many more labels per FLOP, but neighbouring labels are strongly correlated, and the
patches are seen in their surroundings (what the dense fusion pass computes) rather than
zero-padded alone (the paper's classifier). ``benchmarks/bench_dense_train.py`` measures both:
labelled decisions per second, and the isolated-patch validation accuracy reached per second of
training.

Only plain functions here; the pipeline's trainer (:mod:`bafusion.nets.train`) does not use them yet.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bafusion.errors import UserError
from bafusion.nets.augment import to_input
from bafusion.nets.model import CifarResNet

__all__ = ["CropSampler", "crop_labels", "dense_grid", "dense_logits", "dense_train_step", "read_shard_pairs"]


def check_patch(patch: int) -> None:
    """Refuse a patch side the nets cannot train on, with the words of the patches step
    (:class:`bafusion.data.patches.PatchOptions`) and the schema: a multiple of 4 >= 8 (at 4
    the trunk's last map of a patch-sized crop is 1x1 and BatchNorm fails on a batch of one)."""
    if not isinstance(patch, (int, np.integer)) or isinstance(patch, bool) or patch < 8 or patch % 4:
        raise UserError(f"patch must be a multiple of 4 >= 8 (the nets downsample by 4; at 4 their last map "
                        f"is 1x1 and training fails on a batch of one), got {patch!r}")


def dense_grid(crop: int, patch: int) -> int:
    """Grid side ``G`` of patch positions (4-px steps) in a crop of side ``crop``."""
    check_patch(patch)
    if crop % 4 or crop < patch:
        raise UserError(f"crop side must be a multiple of 4 and at least the patch ({patch}), got {crop}")
    return (crop - patch) // 4 + 1


def dense_logits(net: CifarResNet, x: torch.Tensor, patch: int) -> torch.Tensor:
    """Logits ``(N, classes, G, G)`` of every patch position of crops ``x`` ``(N, C, S, S)``:
    the trunk once over each crop, the linear layer as a 1x1 convolution, the average over each
    patch's ``patch/4`` cells (both linear, so their order does not matter)."""
    check_patch(patch)
    k = patch // 4
    feat = net.trunk(x)
    z = F.conv2d(feat, net.fc.weight[:, :, None, None], net.fc.bias)
    return F.avg_pool2d(z, k, stride=1)


def crop_labels(matte: np.ndarray, patch: int, threshold: int = 128) -> np.ndarray:
    """Labels ``(..., G, G)`` uint8 of the patch positions of matte crops ``(..., S, S)``
    (uint8): 1 where the matte at the patch centre is >= ``threshold``."""
    s = matte.shape[-1]
    g = dense_grid(s, patch)
    c = patch // 2
    idx = c + 4 * np.arange(g)
    return (matte[..., idx[:, None], idx[None, :]] >= threshold).astype(np.uint8)


@dataclass
class ShardPairs:
    """Composited pairs held in memory: ``a``, ``b``, ``matte`` lists of uint8 ``(H, W)``
    arrays (sizes may differ between pairs), ``pair`` ids."""

    a: list[np.ndarray]
    b: list[np.ndarray]
    matte: list[np.ndarray]
    pair: np.ndarray

    def __len__(self) -> int:
        return len(self.pair)


def read_shard_pairs(shards: Sequence[str | os.PathLike[str]], keep: set[int] | None = None,
                     drop: set[int] | None = None) -> ShardPairs:
    """Read the gray pairs of composite shards (:mod:`bafusion.data.composite` output), keeping
    pair ids in ``keep`` (if given) and not in ``drop``."""
    from bafusion.data.patches import _iter_pairs

    a, b, m, ids = [], [], [], []
    for pid, pa, pb, matte in _iter_pairs([Path(f) for f in shards]):
        if (keep is not None and pid not in keep) or (drop and pid in drop):
            continue
        if pa.ndim != 2:
            raise UserError(f"pair {pid}: expected gray composites (H, W), got shape {pa.shape}")
        a.append(pa)
        b.append(pb)
        m.append(matte)
        ids.append(pid)
    if not ids:
        raise UserError(f"no composited pairs selected from {len(shards)} shard(s)")
    return ShardPairs(a, b, m, np.asarray(ids, np.int64))


class CropSampler:
    """Random crops of side ``crop`` from in-memory pairs, augmented by a random dihedral
    map (4 rotations x optional flip) and the A/B swap that flips the labels, with the grid
    labels of :func:`crop_labels`.

    Yields ``(x, y)``: ``x`` float32 ``(batch, 2, crop, crop)`` network input, ``y`` int64
    ``(batch, G, G)``. Seeded: the same seed gives the same crops."""

    def __init__(self, pairs: ShardPairs, crop: int, patch: int, batch: int, seed: int = 0,
                 threshold: int = 128, augment: bool = True) -> None:
        small = min(min(x.shape) for x in pairs.a)
        if crop > small:
            raise UserError(f"crop {crop} larger than the smallest pair side ({small})")
        self.grid = dense_grid(crop, patch)
        self.pairs, self.crop, self.patch, self.batch = pairs, crop, patch, batch
        self.threshold, self.augment = threshold, augment
        self.rng = np.random.default_rng(seed)

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch."""
        s = self.crop
        x = np.empty((self.batch, 2, s, s), np.uint8)
        m = np.empty((self.batch, s, s), np.uint8)
        for i in range(self.batch):
            k = int(self.rng.integers(0, len(self.pairs)))
            h, w = self.pairs.a[k].shape
            r, c = int(self.rng.integers(0, h - s + 1)), int(self.rng.integers(0, w - s + 1))
            sl = (slice(r, r + s), slice(c, c + s))
            x[i, 0], x[i, 1], m[i] = self.pairs.a[k][sl], self.pairs.b[k][sl], self.pairs.matte[k][sl]
        swap = np.zeros(self.batch, bool)
        if self.augment:
            for i in range(self.batch):
                rot, flip = self.rng.integers(0, 4), self.rng.integers(0, 2)
                swap[i] = bool(self.rng.integers(0, 2))
                xi, mi = np.rot90(x[i], rot, axes=(1, 2)), np.rot90(m[i], rot)
                if flip:
                    xi, mi = xi[:, :, ::-1], mi[:, ::-1]
                if swap[i]:  # A and B exchanged: the label flips
                    xi = xi[::-1]
                x[i], m[i] = xi, mi
        # The crop is square and (S - p) a multiple of 4, so after a rotation or flip the patch
        # positions are the same grid: the labels are read from the transformed matte.
        y = crop_labels(m, self.patch, self.threshold)
        y[swap] = 1 - y[swap]
        return to_input(torch.from_numpy(x)), torch.from_numpy(y.astype(np.int64))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.sample()


def dense_train_step(net: CifarResNet, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                     patch: int) -> tuple[float, float, int]:
    """One SGD step on the dense loss (the cross-entropy averaged over every patch position);
    returns (mean loss, accuracy, labelled decisions)."""
    logits = dense_logits(net, x, patch)
    loss = F.cross_entropy(logits.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        acc = float((logits.argmax(1) == y).float().mean())
    return float(loss.detach()), acc, int(y.numel())
