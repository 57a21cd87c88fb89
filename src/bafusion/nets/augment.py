"""Patch-set loading and the paper's x12 augmentation, done as tensor ops on the training device.

A patch set (written by ``bafusion patches``) is an HDF5 file with groups ``train`` and ``val``,
each holding ``x`` uint8 (N, 2, p, p) (channel 0: gray A patch, channel 1: gray B patch),
``y`` uint8 (N,) (1: the centre pixel is focused in A), ``y_block`` uint8 (N, 2, 2) (the labels
of the central 2x2 pixels, see below), ``pair`` int64 (N,) and ``centre`` int32 (N, 2); root
attributes ``patch``, ``seed``, ``kind``, ``params``, ``code_version``.

:func:`load_split` reads one split into memory: onto the GPU when it fits there, else into
(pinned) host memory, from which each batch is gathered and copied.

Augmentation (section 3.1 of the paper): every patch gives 12 samples, the 6 geometric
variants :data:`GEOMETRIC` (identity, rotations by 90/180/270 degrees counter-clockwise,
horizontal flip, vertical flip) times an optional swap of the two channels, which turns
"focused in A" into "focused in B" and so flips the label. Variant ``v`` in ``0..11`` is
geometric op ``v % 6`` followed, when ``v >= 6``, by the swap. All 12 variants are
precomputed as index permutations of the ``2*p*p`` values of a patch, so augmenting a
batch is one ``gather`` on an accelerator (no host synchronisation) and, on the CPU, one
``index_select`` per variant present in the batch.

The label follows the pixel. A patch stands for the pixel at index ``(p//2, p//2)`` (the one
fusion scores with it and the one ``y`` labels). The patch sizes are even, so no pixel is the
geometric centre: the turns and flips move the pixel at ``(p//2, p//2)`` to ``(p//2 - 1, ...)``
on one axis or both, and put one of its neighbours in its place. The patch files store the
labels of the four central pixels, ``y_block[n, i, j]`` for pixel ``(p//2 - 1 + i, p//2 - 1 +
j)`` (``y == y_block[:, 1, 1]``), and each variant takes the label of the pixel it brings to
``(p//2, p//2)`` (:func:`centre_sources`), flipped by the swap. With context (crops of side
``s = p + 2 * context``) the same holds at ``(s//2, s//2)``, the same pixel. A patch set
written before ``y_block`` existed gives every variant the original ``y`` (a one-line warning
asks to regenerate it): counted over every patch position of the paper's 27 halved mattes at
patch 64, 1.2 % of the samples (2.9 % of those at the boundary net's positions) then carry the
label of a pixel next to the one they stand for.

:class:`AugmentedLoader` enumerates the ``N * 12`` (patch index, variant) pairs of an epoch
in an order drawn from a seeded ``torch.Generator``; ``samples_per_epoch`` optionally keeps
only the first ``M`` of that order (a fresh random subset every epoch). Its state (generator
state at the start of the epoch, epoch, batches already served) can be saved and restored,
so a resumed run sees exactly the batches an uninterrupted one would.

Inputs are scaled to ``[0, 1]`` (``x / 255``) by :func:`to_input`; fusion must do the same
(recorded in the model description as ``input_scale``).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from bafusion.errors import InputFileError, UserError

GEOMETRIC: tuple[str, ...] = ("identity", "rot90", "rot180", "rot270", "hflip", "vflip")
N_VARIANTS = 2 * len(GEOMETRIC)
INPUT_SCALE = 1.0 / 255.0
SPLITS = ("train", "val")


def geometric_op(x: torch.Tensor, name: str) -> torch.Tensor:
    """Apply one named geometric variant to the last two dimensions of ``x`` (reference ops)."""
    if name == "identity":
        return x
    if name == "rot90":
        return torch.rot90(x, 1, dims=(-2, -1))
    if name == "rot180":
        return torch.rot90(x, 2, dims=(-2, -1))
    if name == "rot270":
        return torch.rot90(x, 3, dims=(-2, -1))
    if name == "hflip":
        return torch.flip(x, dims=(-1,))
    if name == "vflip":
        return torch.flip(x, dims=(-2,))
    raise ValueError(f"unknown geometric variant {name!r}; known: {', '.join(GEOMETRIC)}")


def variant_name(v: int) -> str:
    """Human-readable name of variant ``v`` in ``0..11``, e.g. ``"rot90+swap"``."""
    if not 0 <= v < N_VARIANTS:
        raise ValueError(f"variant must be in 0..{N_VARIANTS - 1}, got {v}")
    g = GEOMETRIC[v % len(GEOMETRIC)]
    return g + ("+swap" if v >= len(GEOMETRIC) else "")


def variant_table(patch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(12, 2*p*p) int64: row ``v`` lists, for each output value, the flat input index it takes.

    ``x.view(B, -1).gather(1, table[v])`` equals variant ``v`` applied to ``x``.
    """
    idx = torch.arange(2 * patch * patch, dtype=torch.int64).view(2, patch, patch)
    rows = []
    for swap in (False, True):
        for name in GEOMETRIC:
            t = geometric_op(idx, name)
            if swap:
                t = t.flip(0)
            rows.append(t.reshape(-1))
    return torch.stack(rows).to(device)


def centre_sources(table: torch.Tensor) -> torch.Tensor:
    """(12,) int64: for each variant, which of the four central input pixels lands at ``(s//2, s//2)``.

    ``table`` is :func:`variant_table` of side ``s``. Entry ``v`` is ``2 * i + j`` for input
    pixel ``(s//2 - 1 + i, s//2 - 1 + j)``, an index into ``y_block.reshape(-1, 4)``: 3 (the
    pixel itself) for the identity and, at odd ``s``, for every variant.
    """
    s = math.isqrt(table.shape[1] // 2)
    src = table[:, (s // 2) * s + s // 2] % (s * s)  # the input pixel (any channel) the output centre takes
    i = src // s - (s // 2 - 1)
    j = src % s - (s // 2 - 1)
    return 2 * i + j


def augment(
    x: torch.Tensor, y: torch.Tensor, variant: torch.Tensor, table: torch.Tensor | None = None,
    y_block: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply per-sample variants to a batch.

    ``x`` (B, 2, p, p) of any dtype, ``y`` (B,) labels in {0, 1}, ``variant`` (B,) in ``0..11``.
    ``y_block`` (B, 2, 2), optional: the labels of the central 2x2 pixels (module docstring);
    each sample then gets the label of the pixel its variant brings to ``(p//2, p//2)``
    (:func:`centre_sources`), else ``y`` whatever the variant.
    Returns the transformed batch (same dtype, contiguous) and the labels, flipped (``1 - y``)
    where the variant swaps the channels.
    """
    b, c, p, q = x.shape
    if c != 2 or p != q:
        raise ValueError(f"expected a batch of shape (B, 2, p, p), got {tuple(x.shape)}")
    if table is None or table.shape[1] != 2 * p * p:
        table = variant_table(p, x.device)
    if y_block is not None and tuple(y_block.shape) != (b, 2, 2):
        raise ValueError(f"expected y_block of shape ({b}, 2, 2), got {tuple(y_block.shape)}")
    variant = variant.to(device=x.device, dtype=torch.int64)
    flat = x.reshape(b, -1)
    if x.device.type == "cpu":
        # Group the batch by variant: one index_select per variant present with a shared index
        # row, instead of materialising a (B, 2*p*p) int64 index (several times faster on CPU).
        out = torch.empty_like(flat)
        rows_by_variant = torch.argsort(variant, stable=True)
        start = 0
        for v, count in enumerate(torch.bincount(variant, minlength=N_VARIANTS).tolist()):
            if count:
                rows = rows_by_variant[start : start + count]
                out.index_copy_(0, rows, flat.index_select(0, rows).index_select(1, table[v]))
                start += count
        out = out.view(b, 2, p, p)
    else:
        # On accelerators one gather (no host synchronisation) is the fastest.
        out = flat.gather(1, table[variant]).view(b, 2, p, p)
    swapped = variant >= len(GEOMETRIC)
    if y_block is None:
        y = y.to(x.device)
    else:
        src = centre_sources(table)[variant]
        y = y_block.to(x.device).reshape(b, 4).gather(1, src[:, None]).squeeze(1).to(y.dtype)
    return out, torch.where(swapped, 1 - y, y)


def to_input(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 patches -> network input in ``[0, 1]`` (the scaling fusion must use too)."""
    return x.to(dtype) * INPUT_SCALE


# --------------------------------------------------------------------------------------
# Reading a patch set
# --------------------------------------------------------------------------------------


@dataclass
class PatchSplit:
    """One split of a patch set held in memory (``x`` uint8 (N,2,s,s), ``y`` int64 (N,)):
    ``s = patch + 2 * context``, the patches with ``context`` pixels of surroundings (0: the
    patches alone). ``y_block`` int64 (N,2,2): the labels of the central 2x2 pixels (module
    docstring), ``None`` for a file written before they were stored."""

    path: Path
    split: str
    kind: str
    patch: int
    x: torch.Tensor
    y: torch.Tensor
    attrs: dict
    context: int = 0
    y_block: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def device(self) -> torch.device:
        return self.x.device

    @property
    def nbytes(self) -> int:
        extra = 0 if self.y_block is None else self.y_block.numel() * self.y_block.element_size()
        return self.x.numel() * self.x.element_size() + self.y.numel() * self.y.element_size() + extra


def read_attrs(path: str | os.PathLike[str]) -> dict:
    """Root attributes of a patch-set file (``patch``, ``seed``, ``kind``, ...) as plain values."""
    import h5py

    p = Path(path)
    if not p.exists():
        raise InputFileError(p, "patch set not found (run the 'patches' step first)")
    if p.is_dir():  # h5py's own text names the time and a buffer address
        raise InputFileError(p, "is a folder, not a patch set file (pass the .h5 file, e.g. data/patches/initial.h5)")
    if not p.is_file():  # a named pipe: opening it waited for a writer for good
        raise InputFileError(p, "not a regular file (a named pipe, a device or a socket), not a patch set file")
    try:
        with h5py.File(p, "r") as f:
            return {k: _plain(v) for k, v in f.attrs.items()}
    except OSError as e:
        raise InputFileError(p, f"not a readable HDF5 patch set ({e})") from e


def _plain(v: object) -> object:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if hasattr(v, "item") and getattr(v, "shape", None) == ():
        return v.item()  # type: ignore[union-attr]
    if hasattr(v, "tolist"):
        return v.tolist()  # type: ignore[union-attr]
    return v


def _fits_on(device: torch.device, nbytes: int, fraction: float = 0.5) -> bool:
    if device.type != "cuda":
        return device.type != "meta"
    try:
        free, _total = torch.cuda.mem_get_info(device)
    except RuntimeError:
        return False
    return nbytes <= fraction * free


def load_split(
    path: str | os.PathLike[str],
    split: str,
    device: torch.device | str = "cpu",
    expect_kind: str | None = None,
    expect_patch: int | None = None,
    gpu_fraction: float = 0.5,
) -> PatchSplit:
    """Read split ``split`` of the patch set at ``path`` into memory.

    On a CUDA ``device`` the arrays go to GPU memory when they take at most ``gpu_fraction``
    of the free memory there, otherwise into pinned host memory. Raises
    :class:`InputFileError` naming the file when it is missing, not HDF5, lacks the split or
    its datasets, has inconsistent shapes, or has another ``kind``/``patch`` than expected.
    """
    import h5py
    import numpy as np

    p = Path(path)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    attrs = read_attrs(p)
    try:
        with h5py.File(p, "r") as f:
            if split not in f:
                raise InputFileError(p, f"no group {split!r} (groups: {', '.join(sorted(f.keys())) or 'none'})")
            g = f[split]
            for name in ("x", "y"):
                if name not in g:
                    raise InputFileError(p, f"group {split!r} has no dataset {name!r}")
            x = np.asarray(g["x"][...])
            y = np.asarray(g["y"][...])
            y_block = np.asarray(g["y_block"][...]) if "y_block" in g else None
    except OSError as e:
        raise InputFileError(p, f"cannot read split {split!r}: {e}") from e
    if x.ndim != 4 or x.shape[1] != 2 or x.shape[2] != x.shape[3]:
        raise InputFileError(p, f"{split}/x has shape {x.shape}, expected (N, 2, p, p)")
    if x.dtype != np.uint8:
        raise InputFileError(p, f"{split}/x has dtype {x.dtype}, expected uint8")
    if y.shape != (x.shape[0],):
        raise InputFileError(p, f"{split}/y has shape {y.shape}, expected ({x.shape[0]},)")
    if y.size and (y.min() < 0 or y.max() > 1):
        raise InputFileError(p, f"{split}/y holds labels outside {{0, 1}}")
    if y_block is not None:
        if y_block.shape != (x.shape[0], 2, 2):
            raise InputFileError(p, f"{split}/y_block has shape {y_block.shape}, expected ({x.shape[0]}, 2, 2)")
        if y_block.size and (y_block.min() < 0 or y_block.max() > 1):
            raise InputFileError(p, f"{split}/y_block holds labels outside {{0, 1}}")
        if not np.array_equal(y_block[:, 1, 1], y):
            raise InputFileError(p, f"{split}/y_block[:, 1, 1] differs from {split}/y (both label the patch's "
                                    "pixel (p//2, p//2)): a damaged file? Run the patches step again")
    side = int(x.shape[2])
    context = int(attrs.get("context", 0) or 0)  # type: ignore[call-overload]
    patch = side - 2 * context
    if "patch" in attrs and int(attrs["patch"]) != patch:  # type: ignore[call-overload]
        raise InputFileError(p, f"attributes patch={attrs['patch']}, context={context} but {split}/x holds "
                                f"{side}x{side} crops")
    if expect_patch is not None and patch != int(expect_patch):
        raise InputFileError(p, f"holds {patch}x{patch} patches but the parameters ask for patch={expect_patch}")
    kind = str(attrs.get("kind", ""))
    if expect_kind is not None and kind and kind != expect_kind:
        raise InputFileError(p, f"is a {kind!r} patch set, expected {expect_kind!r}")
    dev = torch.device(device)
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y.astype(np.int64))
    bt = None if y_block is None else torch.from_numpy(y_block.astype(np.int64))
    nbytes = xt.numel() + (yt.numel() + (0 if bt is None else bt.numel())) * 8
    if dev.type == "cuda":
        if _fits_on(dev, nbytes, gpu_fraction):
            xt, yt, bt = xt.to(dev), yt.to(dev), None if bt is None else bt.to(dev)
        else:
            xt, yt, bt = xt.pin_memory(), yt.pin_memory(), None if bt is None else bt.pin_memory()
    elif dev.type != "cpu" and _fits_on(dev, nbytes):
        xt, yt, bt = xt.to(dev), yt.to(dev), None if bt is None else bt.to(dev)
    return PatchSplit(path=p, split=split, kind=kind, patch=patch, x=xt, y=yt, attrs=attrs, context=context,
                      y_block=bt)


# --------------------------------------------------------------------------------------
# The epoch loader
# --------------------------------------------------------------------------------------

_warned_no_y_block: set[tuple[str, str]] = set()


def _warn_no_y_block(data: PatchSplit) -> None:
    """Say once per file and split that its turned and flipped samples keep the original label
    (a patch set written before ``y_block``; harmless at an odd side, where the centre stays)."""
    side = int(data.x.shape[-1])
    key = (str(data.path), data.split)
    if side % 2 or len(data) == 0 or key in _warned_no_y_block:
        return
    _warned_no_y_block.add(key)
    print(f"bafusion train: warning: {data.path}: split {data.split!r} has no y_block (written by an older bafusion): its "
          f"turned and flipped samples keep the original centre's label, that of a pixel next to the one they "
          f"stand for; regenerate the patch set (the patches step, e.g. dvc repro patches)", file=sys.stderr)


class AugmentedLoader:
    """Batches of augmented samples of one split, on ``device``.

    - ``augment=True``: an epoch enumerates the ``N * 12`` (index, variant) pairs in a random
      order from a generator seeded with ``seed``; ``samples_per_epoch`` (``> 0``) keeps only
      the first ``M`` pairs of that order, a fresh random subset every epoch.
      ``augment=False``: the ``N`` patches as they are (variant 0), in file order (validation).
    - ``rank``/``world_size`` shard every epoch's order: each rank takes every
      ``world_size``-th pair after trimming to a multiple of ``world_size``, so all ranks run
      the same number of steps (needed by DDP; ``even_shards=False`` keeps every pair and
      lets the last ranks take one fewer, fine for evaluation). ``batch_size`` is per rank.
    - Yields ``(x, y)``: float input (``to_input``) of shape (B, 2, s, s), int64 labels (``s``:
      the stored side, ``patch + 2 * context``; the geometric variants act on the whole crop,
      which keeps the patch centred in it).
    """

    def __init__(
        self,
        data: PatchSplit,
        batch_size: int,
        device: torch.device | str = "cpu",
        seed: int = 0,
        augment: bool = True,
        samples_per_epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        even_shards: bool = True,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.data = data
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.augment = augment
        self.samples_per_epoch = int(samples_per_epoch or 0)
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.even_shards = even_shards
        self.channels_last = channels_last
        self.dtype = dtype
        self.generator = torch.Generator().manual_seed(int(seed))
        self.table = variant_table(int(data.x.shape[-1]), self.device)
        if augment and data.y_block is None and rank == 0:
            _warn_no_y_block(data)
        self.epoch = 0
        self.position = 0  # batches of the current epoch already served
        self._epoch_rng: torch.Tensor = self.generator.get_state()
        self._order: torch.Tensor | None = None

    # counts ---------------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        """Effective size of the split: ``N * 12`` with augmentation, else ``N``."""
        return len(self.data) * (N_VARIANTS if self.augment else 1)

    @property
    def epoch_samples(self) -> int:
        """Samples (all ranks together) one epoch uses, after the optional subset and trimming."""
        n = self.num_samples
        if self.augment and 0 < self.samples_per_epoch < n:
            n = self.samples_per_epoch
        return n - n % self.world_size if self.even_shards else n

    @property
    def rank_samples(self) -> int:
        """Samples this rank sees per epoch."""
        n = len(range(self.rank, self.epoch_samples, self.world_size))
        if self.drop_last:
            n -= n % self.batch_size
        return n

    def __len__(self) -> int:
        n = len(range(self.rank, self.epoch_samples, self.world_size))
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    # state ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Where the loader stands: enough to replay the current epoch's order and skip ahead."""
        return {"epoch": self.epoch, "position": self.position, "epoch_rng": self._epoch_rng.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._epoch_rng = state["epoch_rng"].clone()
        self.generator.set_state(self._epoch_rng)
        self._order = None

    def _make_order(self) -> torch.Tensor:
        self._epoch_rng = self.generator.get_state()
        if self.augment:
            order = torch.randperm(self.num_samples, generator=self.generator)
        else:
            order = torch.arange(self.num_samples)
        order = order[: self.epoch_samples]
        return order[self.rank :: self.world_size].to(self.data.x.device)

    # iteration ------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Serve the rest of the current epoch (all of it unless resumed mid-epoch), then
        advance to the next epoch."""
        if self._order is None:
            self.generator.set_state(self._epoch_rng)
            self._order = self._make_order()
        order = self._order  # on the device that holds the data
        n_batches = len(self)
        while self.position < n_batches:
            sel = order[self.position * self.batch_size : (self.position + 1) * self.batch_size]
            self.position += 1
            if self.augment:
                idx, var = sel // N_VARIANTS, sel % N_VARIANTS
            else:
                idx, var = sel, torch.zeros_like(sel)
            xb = self.data.x[idx]
            yb = self.data.y[idx]
            bb = self.data.y_block[idx] if self.augment and self.data.y_block is not None else None
            if xb.device != self.device:
                xb = xb.to(self.device, non_blocking=True)
                yb = yb.to(self.device, non_blocking=True)
                bb = None if bb is None else bb.to(self.device, non_blocking=True)
            if self.augment:
                xb, yb = augment(xb, yb, var.to(self.device), self.table, bb)
            xf = to_input(xb, self.dtype)
            if self.channels_last:
                xf = xf.contiguous(memory_format=torch.channels_last)
            yield xf, yb
        self.epoch += 1
        self.position = 0
        self._order = None
        self._epoch_rng = self.generator.get_state()
