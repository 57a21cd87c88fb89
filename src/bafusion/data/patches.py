"""The ``patches`` step: two-channel gray patches with focus labels, stored in HDF5.

For each composited pair:

- ``per_pair`` random centres (uniform over positions whose patch lies inside the image);
  label 1 when the matte at the centre is >= ``label_threshold`` (the centre is focused in
  A), else 0. The labels of the central 2x2 pixels are stored too (``y_block``): the patch
  sizes are even, and the training's turns and flips bring one of the centre's neighbours to
  the centre (:mod:`bafusion.nets.augment`), which then takes that pixel's label.
- the boundary patches: those whose patch holds at least ``min_focused`` focused and
  ``min_defocused`` defocused pixels (a pixel is focused when its matte value is >=
  ``label_threshold``). Two ways to take them (``boundary_per_pair``):

  - a count (the project's default): that many random centres drawn among all the positions
    of the pair that pass the test, on their own stream after the random ones. The boundary
    net then gets a set of its chosen size, whatever share of the random patches passes.
  - ``"subset"`` (the paper's, section 3: the boundary set is the part of the random patches
    that passes the test): the random patches above that pass, the same crops; no draw of
    its own. On the paper's 27 halved mattes about 37% of 64-px positions pass, so 10 random
    patches per pair give about 3.7 boundary patches per pair, not a number of one's choice.

A patch "centred" at (r, c) covers rows r - p//2 .. r - p//2 + p - 1 (and likewise columns).
Pairs are split train/validation by pair (``val_fraction`` of the pairs, a seeded
permutation), so no pair is on both sides. Each pair's centres come from a generator
seeded by (seed, pair id) (keys below), and the pairs are read in pair-id order whatever shard
holds them: the files do not depend on how many shards the composite step wrote
(``composite.shards``) nor on the order the shard files are given.

Random streams of the data steps, ``numpy.random.default_rng(key)``, every key listed here
(``seed`` is ``composite.seed`` in :mod:`bafusion.data.composite`, ``patches.seed`` here;
held-out test pairs use pair id ``10_000_000 + k``):

- ``[seed, pair, 1]``: the pair's blur sigma (``draw_sigma``).
- ``[seed, pair, 2]``: the pair's realistic degradations (``draw_realism``: kernel, shift,
  magnification, per-shot gains, tone curves, noise levels, JPEG qualities).
- ``[seed, pair, 3]``: the realistic sensor noise itself (``composite_realistic``).
- ``[seed, pair, 4]``: the realistic residual defocus (``draw_realism``).
- ``[seed, pair, 5]``: this step's patch centres (random, then boundary) of a pair whose shard
  holds realistic draws (its ``params`` attribute has ``realistic``, or a group has the
  ``realistic_draws`` attribute). Key 2 would make the centres a function of the pair's
  degradations (the first centre's row told a disc kernel from a Gaussian one).
- ``[seed, pair, 2]``: this step's patch centres of a pair whose shard holds no realistic
  draws (the paper's composites, which draw nothing from key 2): the paper's patch files
  are those written before key 5 was added, byte for byte.
- ``[seed, 7]``: the train/validation split of the pairs (:func:`split_pairs`).

Which key a pair's centres use depends only on what its shard holds, and every shard of one
composite run holds the same ``params``: the same for any ``composite.shards``.

Output: ``initial.h5`` (all random patches) and ``boundary.h5`` (the boundary patches),
each with groups ``train`` and ``val`` holding ``x`` uint8 (N, 2, p, p) (channel 0 = A,
channel 1 = B; chunked, gzip), ``y`` uint8 (N,), ``pair`` int64 (N,), ``centre`` int32
(N, 2), ``y_block`` uint8 (N, 2, 2) (``y_block[n, i, j]``: the label of image pixel
``centre[n] + (i - 1, j - 1)``, so ``y == y_block[:, 1, 1]``; files of bafusion before it lack
it, and training warns and uses ``y`` for every variant); root attributes ``patch``, ``seed``,
``kind``, ``params`` (JSON), ``code_version``.
The x12 augmentation (rotations, flips, channel swap) is applied on the fly by
:mod:`bafusion.nets.augment`, not stored.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from bafusion._version import __version__
from bafusion.atomic import atomic_file
from bafusion.errors import InputFileError, UserError, json_loads
from bafusion.h5write import h5_output
from bafusion.progress import bar_options

SETS = ("initial", "boundary")
SPLITS = ("train", "val")
AUGMENTATION_FACTOR = 12  # 6 geometric variants (4 rotations, 2 flips) x channel swap
CHUNK = 64  # patches per HDF5 chunk of x
GZIP_LEVEL = 4
#: Last element of the patch centres' stream key ``[seed, pair, key]`` (see the module docstring):
#: the paper's composites, and composites with realistic draws (which use key 2 themselves).
PATCH_STREAM_PAPER = 2
PATCH_STREAM_REALISTIC = 5
#: ``boundary_per_pair`` value that takes the boundary set as the subset of the random patches
#: that pass the boundary test (the paper's), instead of a number of patches drawn for it.
BOUNDARY_SUBSET = "subset"
#: Bytes each patch takes besides its pixels: ``y`` (1), ``pair`` (8), ``centre`` (8), ``y_block`` (4).
LABEL_BYTES = 21
#: Patches of the first pair deflated before anything is written, to estimate the files' size.
SIZE_SAMPLE = 256
#: Patches cropped at a time (a multiple of :data:`CHUNK`): a pair's patches are cropped and
#: queued block by block, so memory does not grow with ``patches.per_pair``: cropped at once,
#: a pair's patches took ~4 KB each at patch 32 (the crops and their copy while queued; a peak
#: RSS of 848 MiB for 200,000, 79 MiB in blocks), ~4 GB for 1,000,000. The files do not depend
#: on it: the chunks hold the same patches in the same order.
CROP_BLOCK = 64 * CHUNK


@dataclass(frozen=True)
class PatchOptions:
    patch: int = 32
    per_pair: int = 10
    #: boundary patches drawn per pair, or :data:`BOUNDARY_SUBSET` (the random patches that pass)
    boundary_per_pair: int | str = 10
    min_focused: float = 0.1
    min_defocused: float = 0.1
    label_threshold: float = 0.5
    val_fraction: float = 0.15
    seed: int = 0
    #: Pixels of surroundings stored on every side of each patch (reflect-padded at the image
    #: border): the crops are ``patch + 2 * context`` wide, centred on the same patch, whose
    #: label and boundary test are unchanged. 0 (the paper): the patch alone. Training with
    #: ``train.consistency`` uses the surroundings (see bafusion.nets.train).
    context: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.patch, int) or self.patch < 8 or self.patch % 4:  # the schema's rule for patch
            raise UserError(f"patch must be a multiple of 4 >= 8 (the nets downsample by 4; at 4 their last map "
                            f"is 1x1 and training fails on a batch of one), got {self.patch!r}")
        if not 0 <= self.label_threshold <= 1:
            raise UserError(f"patches.label_threshold must be a fraction in [0, 1], got {self.label_threshold}")
        if self.per_pair < 1:  # 0: an empty initial set, written, that train refuses only then
            raise UserError(f"patches.per_pair must be at least 1 (the initial net's patches per pair), got "
                            f"{self.per_pair}")
        if self.boundary_per_pair != BOUNDARY_SUBSET and (
                isinstance(self.boundary_per_pair, bool) or not isinstance(self.boundary_per_pair, int)
                or self.boundary_per_pair < 0):
            raise UserError(f"patches.boundary_per_pair must be a count >= 0 or {BOUNDARY_SUBSET!r} (the random "
                            f"patches that pass the boundary test), got {self.boundary_per_pair!r}")
        for name in ("min_focused", "min_defocused"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"patches.{name} must be a fraction in [0, 1], got {getattr(self, name)}")
        if self.min_focused + self.min_defocused > 1:
            raise UserError("patches.min_focused + patches.min_defocused must be at most 1 (a boundary patch holds "
                            f"both shares of its pixels), got {self.min_focused:g} + {self.min_defocused:g} = "
                            f"{self.min_focused + self.min_defocused:g}")
        if not 0 <= self.val_fraction < 1:
            raise UserError(f"patches.val_fraction must be in [0, 1), got {self.val_fraction}")
        if not isinstance(self.context, int) or self.context < 0 or self.context % 4:
            raise UserError(f"patches.context must be a multiple of 4 (the nets' stride) >= 0, got {self.context!r}")

    @property
    def threshold_u8(self) -> int:
        """Matte values (uint8) at or above this count as focused in A: the least ``v`` with
        ``v / 255 >= label_threshold`` (within 1e-9 of a level, so that ``128 / 255`` is 128);
        at least 1 for any threshold above 0 (a matte of 0 is 0 < label_threshold: below
        about 3.9e-12 the tolerance alone made it 0, every pixel focused, as for 0 itself)."""
        v = int(np.ceil(self.label_threshold * 255.0 - 1e-9))
        return max(v, 1) if self.label_threshold > 0 else v


def window_fraction(mask: np.ndarray, p: int) -> np.ndarray:
    """Fraction of True pixels in every p x p window, indexed by the window's top-left corner:
    shape (H - p + 1, W - p + 1). Integral image, O(H W)."""
    m = mask.astype(np.int64)
    ii = np.zeros((m.shape[0] + 1, m.shape[1] + 1), np.int64)
    ii[1:, 1:] = m.cumsum(0).cumsum(1)
    s = ii[p:, p:] - ii[:-p, p:] - ii[p:, :-p] + ii[:-p, :-p]
    return s / float(p * p)


def random_corners(rng: np.random.Generator, shape: tuple[int, int], p: int, n: int) -> np.ndarray:
    h, w = shape
    r = rng.integers(0, h - p + 1, size=n)
    c = rng.integers(0, w - p + 1, size=n)
    return np.stack([r, c], axis=1)


def passes_boundary_test(frac: np.ndarray, min_focused: float, min_defocused: float) -> np.ndarray:
    """Whether each window (of focused fraction ``frac``) holds at least ``min_focused`` focused
    and ``min_defocused`` defocused pixels."""
    return (frac >= min_focused - 1e-12) & (1.0 - frac >= min_defocused - 1e-12)


def subset_corners(corners: np.ndarray, frac: np.ndarray, min_focused: float, min_defocused: float) -> np.ndarray:
    """The top-left ``corners`` (of the random patches) whose window passes the boundary test,
    in their order (``patches.boundary_per_pair: subset``)."""
    corners = np.asarray(corners, np.int64).reshape(-1, 2)
    keep = passes_boundary_test(frac[corners[:, 0], corners[:, 1]], min_focused, min_defocused)
    return corners[keep]


def boundary_corners(
    rng: np.random.Generator, frac: np.ndarray, n: int, min_focused: float, min_defocused: float
) -> np.ndarray:
    """Up to ``n`` distinct top-left corners whose window meets both fractions."""
    ok = np.flatnonzero(passes_boundary_test(frac, min_focused, min_defocused))
    if ok.size == 0 or n == 0:
        return np.zeros((0, 2), np.int64)
    pick = rng.choice(ok, size=min(n, ok.size), replace=False)
    pick.sort()
    return np.stack(np.unravel_index(pick, frac.shape), axis=1).astype(np.int64)


def crop(A: np.ndarray, B: np.ndarray, corners: np.ndarray, p: int, context: int = 0) -> np.ndarray:
    """(N, 2, s, s) uint8 crops, ``s = p + 2 * context``: the p x p patches at the given
    top-left corners with ``context`` pixels around them (the images reflect-padded, as in
    fusion, where the surroundings fall outside)."""
    if context:
        A = np.pad(A, context, mode="reflect")
        B = np.pad(B, context, mode="reflect")
    return _crop_padded(A, B, corners, p + 2 * context)


def _crop_padded(A: np.ndarray, B: np.ndarray, corners: np.ndarray, s: int) -> np.ndarray:
    """(N, 2, s, s) uint8: the s x s windows of ``A`` and ``B`` (already padded by the context)
    at the top-left ``corners``."""
    out = np.empty((len(corners), 2, s, s), np.uint8)
    for k, (r, c) in enumerate(corners):  # padded (r, c) is original (r - context, c - context)
        out[k, 0] = A[r : r + s, c : c + s]
        out[k, 1] = B[r : r + s, c : c + s]
    return out


def val_pair_count(n: int, val_fraction: float) -> int:
    """How many of ``n`` pairs :func:`split_pairs` holds out: round(val_fraction * n), at least
    one and at most n - 1 when there are two or more pairs and val_fraction > 0."""
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    return n_val


def centre_block(focus: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(N, 2, 2) uint8: ``focus`` at the central 2x2 pixels of each patch, ``[n, i, j]`` at
    ``centres[n] + (i - 1, j - 1)`` (``[:, 1, 1]`` is the label ``y``)."""
    r = np.asarray(centres[:, 0])[:, None, None] + np.array([-1, 0])[None, :, None]
    c = np.asarray(centres[:, 1])[:, None, None] + np.array([-1, 0])[None, None, :]
    return focus[r, c].astype(np.uint8)


def split_pairs(pair_ids: np.ndarray, val_fraction: float, seed: int) -> set[int]:
    """The validation pairs: a seeded permutation's first round(val_fraction * n) pairs
    (at least one when there are two or more pairs and val_fraction > 0)."""
    ids = np.sort(np.asarray(pair_ids, np.int64))
    n_val = val_pair_count(len(ids), val_fraction)
    perm = np.random.default_rng([int(seed), 7]).permutation(len(ids))
    return {int(ids[i]) for i in perm[:n_val]}


class _ChunkWriter:
    """Store pre-deflated chunks of ``x`` datasets in submission order.

    Each full chunk of ``CHUNK`` patches is deflated by :meth:`encode` (on a worker thread of
    ``pool`` when given: ``zlib`` releases the GIL) as HDF5's own gzip filter would store it
    (level 4; the shuffle filter is the identity on uint8), then written with
    :meth:`h5py.h5d.DatasetID.write_direct_chunk`: the file reads with any HDF5 and its chunks
    are byte-identical to a plain ``dataset[...] = x`` write. The dataset is extended just
    before each chunk is stored and the chunks are stored in the order they were submitted,
    so the files do not depend on the number of threads.
    """

    def __init__(self, compress: bool, pool: ThreadPoolExecutor | None) -> None:
        self.compress, self.pool = compress, pool
        self.keep = 2 * pool._max_workers if pool is not None else 0
        self.pending: deque[tuple[h5py.Dataset, int, int, Future[bytes] | bytes]] = deque()

    def encode(self, block: np.ndarray) -> bytes:
        data = np.ascontiguousarray(block).tobytes()
        return zlib.compress(data, GZIP_LEVEL) if self.compress else data

    def submit(self, x: h5py.Dataset, block: np.ndarray, start: int, size: int) -> None:
        """Queue ``block`` (one whole chunk) for rows ``start``.. of ``x``, whose extent must
        then be ``size``."""
        job = self.encode(block) if self.pool is None else self.pool.submit(self.encode, block)
        self.pending.append((x, start, size, job))
        self.drain(self.keep)

    def drain(self, keep: int = 0) -> None:
        """Store queued chunks, oldest first, until at most ``keep`` remain."""
        while len(self.pending) > keep:
            x, start, size, job = self.pending.popleft()
            data = job if isinstance(job, bytes) else job.result()
            if x.shape[0] < size:
                x.resize(size, axis=0)
            x.id.write_direct_chunk((start,) + (0,) * (x.ndim - 1), data)


#: Rows per HDF5 chunk of the label datasets (``y``, ``pair``, ``centre``, ``y_block``).
LABEL_CHUNK = 4096
#: The label datasets of a split group: (name, dtype, shape of a row).
_LABELS: tuple[tuple[str, type, tuple[int, ...]], ...] = (
    ("y", np.uint8, ()), ("pair", np.int64, ()), ("centre", np.int32, (2,)), ("y_block", np.uint8, (2, 2)))


class _Appender:
    """Grow the datasets of one split group as patches arrive.

    ``x`` goes to the :class:`_ChunkWriter` chunk by chunk; the labels (``y``, ``pair``,
    ``centre``, ``y_block``) are written as they arrive, a whole number of chunks of
    :data:`LABEL_CHUNK` rows at a time (the last, partial one by :meth:`close`): each chunk is
    written once, whole, and stored as before. Held until :meth:`close` (versions before
    2026-12-07), they took ~25 bytes a patch (tracemalloc; ~1.2 GB for 48,000,000 patches,
    extrapolated: BENCHMARKS.md).
    """

    def __init__(self, g: h5py.Group, p: int, writer: _ChunkWriter) -> None:  # p: the stored side
        kw: dict[str, Any] = {"track_times": False}
        if writer.compress:
            kw.update(compression="gzip", compression_opts=GZIP_LEVEL, shuffle=True)
        self.g, self.kw, self.writer = g, kw, writer
        self.chunk = (CHUNK, 2, p, p)
        self.x = g.create_dataset("x", shape=(0, 2, p, p), maxshape=(None, 2, p, p), dtype=np.uint8, chunks=self.chunk, **kw)
        self.labels = {name: g.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                                              chunks=(LABEL_CHUNK, *shape), **kw)
                       for name, dtype, shape in _LABELS}
        self.n = 0  # patches submitted
        self.buf: list[np.ndarray] = []  # patches not yet in a full chunk
        self.nbuf = 0
        self.rest: dict[str, list[np.ndarray]] = {name: [] for name, _, _ in _LABELS}  # labels not yet written
        self.nrest = 0
        self.nlabels = 0  # label rows written

    def append(self, x: np.ndarray, y: np.ndarray, pair: np.ndarray, centre: np.ndarray,
               y_block: np.ndarray) -> None:
        if len(x) == 0:
            return
        for name, v in (("y", y), ("pair", pair), ("centre", centre), ("y_block", y_block)):
            self.rest[name].append(v)
        self.nrest += len(y)
        if self.nrest >= LABEL_CHUNK:
            self._write_labels(whole=True)
        self.buf.append(x)
        self.nbuf += len(x)
        if self.nbuf >= CHUNK:
            allx = np.concatenate(self.buf)
            full = (len(allx) // CHUNK) * CHUNK
            for k in range(0, full, CHUNK):
                self.writer.submit(self.x, allx[k : k + CHUNK], self.n, self.n + CHUNK)
                self.n += CHUNK
            self.buf = [allx[full:]] if full < len(allx) else []
            self.nbuf = len(allx) - full

    def _write_labels(self, whole: bool) -> None:
        """Write the labels held: their whole chunks (``whole``), or all (the last, partial chunk)."""
        k = (self.nrest // LABEL_CHUNK) * LABEL_CHUNK if whole else self.nrest
        if not k:
            return
        # the patch chunks queued so far stored first: the files' layout does not depend on how
        # many the deflate threads hold back (without it, --threads 3 wrote other bytes than 1)
        self.writer.drain()
        for name, dtype, _ in _LABELS:
            v = np.concatenate(self.rest[name]).astype(dtype, copy=False)
            self.rest[name] = [v[k:].copy()] if k < len(v) else []
            d = self.labels[name]
            d.resize(self.nlabels + k, axis=0)
            d[self.nlabels :] = v[:k]
        self.nlabels += k
        self.nrest -= k

    def close(self) -> None:
        """Queue the last, partial chunk (zero-padded, as HDF5 pads edge chunks), store every
        queued chunk and write the last labels."""
        if self.nbuf:
            block = np.zeros(self.chunk, np.uint8)
            block[: self.nbuf] = np.concatenate(self.buf)
            self.writer.submit(self.x, block, self.n, self.n + self.nbuf)
            self.n += self.nbuf
            self.buf, self.nbuf = [], 0
        self.writer.drain()
        self._write_labels(whole=False)


class _Shards:
    """The composited pairs of several shard files, in pair-id order.

    Opens every shard (read-only) and indexes its groups' pair ids without reading any image;
    iterating yields ``(pair id, A, B, matte)`` pair by pair in ascending pair id, however the
    pairs are spread over the shards and in whatever order the files come, so the patch sets
    do not depend on ``composite.shards``. One group's matte is held at a time (a group's
    pairs are consecutive ids). A pair id found in two files is refused (shards of two
    composite runs).
    """

    def __init__(self, shard_files: list[Path]) -> None:
        self.stack = ExitStack()
        self.files: list[Path] = []
        self.h5: list[h5py.File] = []
        try:
            for f in map(Path, shard_files):
                if not f.exists():
                    raise InputFileError(f, "composite shard missing: run the composite step first")
                if f.is_dir():  # h5py's own text names the time and a buffer address
                    raise InputFileError(f, "is a folder, not a composite shard (pass its .h5 files, e.g. "
                                            "data/composite/shard-*.h5)")
                if not f.is_file():  # a named pipe: opening it waited for a writer for good
                    raise InputFileError(f, "not a regular file (a named pipe, a device or a socket), not a "
                                            "composite shard")
                try:
                    self.h5.append(self.stack.enter_context(h5py.File(f, "r")))
                except OSError as e:
                    raise InputFileError(f, f"unreadable HDF5 file: {e}") from e
                self.files.append(f)
            rows: list[tuple[int, int, str, int]] = []  # (pair id, file, group, row)
            #: (pairs, matte shape) of every group: how many patches of a size fit in them
            self.positions: list[tuple[int, tuple[int, ...]]] = []
            self._groups: list[tuple[Path, h5py.File, str]] = []  # (file, its handle, group) of each position
            #: pair ids whose shard holds realistic draws (their centres use PATCH_STREAM_REALISTIC)
            self.realistic_ids: set[int] = set()
            for i, (f, h5) in enumerate(zip(self.files, self.h5)):
                try:
                    names = list(h5.keys())
                except OSError as e:
                    raise InputFileError(f, f"unreadable HDF5 file: {e}") from e
                first = len(rows)
                for name in names:
                    try:
                        g = h5[name]
                        pairs, shape_m, shape_a, shape_b = g["pair"][()], g["matte"].shape, g["A"].shape, g["B"].shape
                        if len(shape_m) != 2 or shape_a != shape_b or shape_a != (len(pairs), *shape_m):
                            raise ValueError(f"A {shape_a}, B {shape_b}, matte {shape_m} and {len(pairs)} "
                                             "pair ids do not fit together")
                        ids = np.asarray(pairs, np.int64).reshape(-1)
                    except (KeyError, OSError, ValueError, TypeError, AttributeError) as e:
                        raise InputFileError(f, f"group {name!r} is damaged or not a composite group ({e}): "
                                             "run the composite step again") from e
                    rows.extend((int(pid), i, name, k) for k, pid in enumerate(ids))
                    self.positions += [(len(ids), shape_m)]
                    self._groups.append((f, h5, name))
                try:
                    realistic = _holds_realistic_draws(h5)
                except (OSError, KeyError, AttributeError) as e:
                    raise InputFileError(f, f"unreadable attributes ({e}): run the composite step again") from e
                if realistic:
                    self.realistic_ids.update(r[0] for r in rows[first:])
            rows.sort()
            for (pid, i, _, _), (pid2, j, _, _) in zip(rows, rows[1:]):
                if pid == pid2:
                    raise InputFileError(self.files[j], f"pair {pid} is also in {self.files[i]}: "
                                         "shards of two composite runs? Give the shards of one run")
            self.rows = rows
        except BaseException:
            self.stack.close()
            raise

    def patch_positions(self, p: int) -> list[tuple[int, int]]:
        """``(pairs, positions)`` of every group: the top-left corners a ``p`` x ``p`` patch
        may take in each of its pairs (0 for a pair smaller than the patch)."""
        return [(n, max(0, shape[0] - p + 1) * max(0, shape[1] - p + 1)) for n, shape in self.positions]

    def boundary_positions(self, opts: PatchOptions) -> list[tuple[int, int]]:
        """``(pairs, positions)`` of every group: the top-left corners of its pairs whose patch
        passes the boundary test (:func:`passes_boundary_test` on the group's matte), among which
        a count of boundary patches is drawn (:func:`boundary_corners`). Reads every matte."""
        out = []
        for (n, shape), (f, h5, name) in zip(self.positions, self._groups):
            if shape[0] < opts.patch or shape[1] < opts.patch:
                out.append((n, 0))
                continue
            try:
                matte = h5[name]["matte"][()]
            except (OSError, ValueError) as e:
                raise InputFileError(f, f"group {name!r}: unreadable matte ({e}): run the composite step again") from e
            frac = window_fraction(matte >= opts.threshold_u8, opts.patch)
            out.append((n, int(np.count_nonzero(passes_boundary_test(frac, opts.min_focused, opts.min_defocused)))))
        return out

    def smaller_than(self, p: int) -> list[tuple[str, list[int], Path, tuple[int, ...]]]:
        """``(group, its pair ids ascending, file, matte shape)`` of every group whose pairs are
        smaller than a ``p`` x ``p`` patch (a group is a foreground, named by its id), in the
        order of their first pair id; read from the files' indexes, no image read."""
        pids: dict[tuple[int, str], list[int]] = {}
        for pid, i, name, _ in self.rows:
            pids.setdefault((i, name), []).append(pid)
        out = []
        for (n, shape), (f, _, name) in zip(self.positions, self._groups):
            if n and (shape[0] < p or shape[1] < p):
                i = self.files.index(f)
                out.append((name, pids[(i, name)], f, shape))
        return sorted(out, key=lambda g: g[1][0])

    @property
    def ids(self) -> np.ndarray:
        """Every pair id, ascending."""
        return np.fromiter((r[0] for r in self.rows), np.int64, len(self.rows))

    def __iter__(self):
        group: tuple[int, str] | None = None
        for pid, i, name, k in self.rows:
            f, g = self.files[i], self.h5[i][name]
            if group != (i, name):
                try:
                    matte = g["matte"][()]
                except (OSError, ValueError) as e:
                    raise InputFileError(f, f"group {name!r}: unreadable matte ({e}): run the composite step again") from e
                group = (i, name)
            try:
                a, b = g["A"][k], g["B"][k]
            except (OSError, ValueError) as e:
                raise InputFileError(f, f"group {name!r}, pair {k}: unreadable data ({e}): "
                                     "run the composite step again") from e
            yield pid, a, b, matte

    def close(self) -> None:
        self.stack.close()

    def __enter__(self) -> _Shards:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _holds_realistic_draws(h5: h5py.File) -> bool:
    """Whether a composite shard was written with ``composite.realistic`` on: its ``params``
    attribute names ``realistic`` (written for every shard of such a run, even one without a
    foreground) or one of its groups has the ``realistic_draws`` attribute."""
    raw = h5.attrs.get("params")
    if raw is not None:
        try:
            params = json_loads(raw)
        except (TypeError, ValueError):
            params = None
        if isinstance(params, dict) and "realistic" in params:
            return True
    return any("realistic_draws" in h5[name].attrs for name in h5.keys())


def _iter_pairs(shard_files: list[Path]):
    """Yield (pair id, A, B, matte) for every composited pair, in pair-id order (see
    :class:`_Shards`)."""
    with _Shards(shard_files) as shards:
        yield from shards


def _all_pair_ids(shard_files: list[Path]) -> np.ndarray:
    ids = []
    for f in shard_files:
        try:
            with h5py.File(f, "r") as h5:
                for name in h5.keys():
                    ids.append(np.asarray(h5[name]["pair"][()], np.int64).reshape(-1))
        except (KeyError, TypeError, ValueError) as e:
            raise InputFileError(f, f"not a composite shard (a group without its pair ids: {e}): "
                                 "run the composite step again") from e
        except OSError as e:
            raise InputFileError(f, f"unreadable HDF5 file: {e}") from e
    return np.concatenate(ids) if ids else np.zeros(0, np.int64)


def free_space(folder: str | os.PathLike[str]) -> tuple[Path, int]:
    """Where the files of ``folder`` would go and the bytes free there.

    Parameters
    ----------
    folder : str or path-like
        An output folder, which may not exist yet.

    Returns
    -------
    tuple of (Path, int)
        The nearest existing folder (``folder`` itself or a parent) and its file system's free
        bytes (:func:`shutil.disk_usage`).
    """
    p = Path(os.path.abspath(folder))
    while not p.exists() and p.parent != p:
        p = p.parent
    return p, shutil.disk_usage(p).free


def size_text(n: float) -> str:
    """Bytes for a message, in binary units: ``97.7 KiB``, ``71.7 GiB`` (as
    :func:`bafusion.data.download.human_bytes`, up to TiB)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def patch_bytes(opts: PatchOptions) -> int:
    """Bytes one patch takes uncompressed: two ``patch + 2 * context`` wide uint8 channels and
    its labels (:data:`LABEL_BYTES`)."""
    s = opts.patch + 2 * opts.context
    return 2 * s * s + LABEL_BYTES


def _deflated_share(x: np.ndarray) -> float:
    """The share of its bytes ``x`` (patches) keeps deflated as the files store it, chunk by chunk."""
    if not len(x):
        return 1.0
    packed = sum(len(zlib.compress(np.ascontiguousarray(x[k : k + CHUNK]).tobytes(), GZIP_LEVEL))
                 for k in range(0, len(x), CHUNK))
    return min(1.0, packed / x.nbytes)


def _sample_ratio(shards: _Shards, opts: PatchOptions, boundary: bool = False) -> tuple[float, float]:
    """The share of its bytes a chunk of patches keeps once deflated as the files store it, for
    the random patches and for the boundary ones (``boundary``; else the random share again),
    measured on the first pair (streams of their own: the files do not change).

    The random share: on ``per_pair`` (at most :data:`SIZE_SAMPLE`) random patches. The
    boundary share: a count of boundary patches is drawn as the files draw it (that count among
    the passing positions, in their order) and :data:`SIZE_SAMPLE` consecutive ones from its
    middle are deflated: the more of a pair's positions are drawn, the more consecutive crops
    overlap and the better they deflate (with the random patches' share for both sets, 2000
    boundary patches a pair were estimated at 3.2x the bytes written, :func:`check_free_space`)."""
    pair_id, A, B, matte = next(iter(shards))
    p = opts.patch
    if A.shape[0] < p or A.shape[1] < p:
        return 1.0, 1.0  # refused by the write itself, naming the pair
    rng = np.random.default_rng([int(opts.seed), int(pair_id), 11])
    # as many as a pair gives, up to the sample: a chunk of the files holds 64 consecutive patches,
    # of one pair or (per_pair below 64) of several, and overlapping crops of one pair deflate better
    rand = _deflated_share(crop(A, B, random_corners(rng, A.shape[:2], p, min(SIZE_SAMPLE, opts.per_pair)), p,
                                opts.context))
    if not boundary or opts.boundary_per_pair == BOUNDARY_SUBSET:
        return rand, rand
    frac = window_fraction(matte >= opts.threshold_u8, p)
    corners = boundary_corners(np.random.default_rng([int(opts.seed), int(pair_id), 12]), frac,
                               int(opts.boundary_per_pair), opts.min_focused, opts.min_defocused)
    if not len(corners):
        return rand, rand
    k = max(0, (len(corners) - SIZE_SAMPLE) // 2)
    return rand, _deflated_share(crop(A, B, corners[k : k + SIZE_SAMPLE], p, opts.context))


def check_free_space(shards: _Shards, opts: PatchOptions, out_dir: Path, compress: bool = True) -> None:
    """Refuse, before anything is written, patch sets that would not fit on ``out_dir``'s disk.

    The size is estimated from the counts (``per_pair`` random patches a pair; for a count of
    boundary patches, that count or the positions of a pair that pass the boundary test,
    whichever is fewer: the count the files get; the subset's are not counted, they may be
    none) times :func:`patch_bytes`, times the shares gzip keeps of samples of the first pair's
    random and boundary patches (:func:`_sample_ratio`) when ``compress``. On shard 0 of 4 of
    the builtin composites (16 pairs; one run each) it was 1.03-1.23x the bytes then written
    (patch 32: 40 random + 40, 400, 2000 or 20,000 boundary patches a pair, 400 + 10; patch 64
    with context 16: 40 + 40 and 40 + 2000). Counted with all the positions of a pair and the
    random patches' share for both sets, as before, it was 1.12-1.32x for 10-40 boundary
    patches a pair and 2.45x, 3.17x and 6.79x for 400, 2000 and 20,000 at patch 32 (3.23x for
    2000 at patch 64). ``patches.per_pair`` has no bound (1,000,000 for 48 pairs would have
    written ~98 GB before the disk was full).

    Raises
    ------
    UserError
        Naming ``out_dir``, the estimate and the free space, when the estimate exceeds it.
    """
    groups = shards.patch_positions(opts.patch)
    n_init = sum(n for n, _ in groups) * opts.per_pair
    subset = opts.boundary_per_pair == BOUNDARY_SUBSET
    n_bnd = 0 if subset else sum(n * min(int(opts.boundary_per_pair), pos) for n, pos in groups)
    raw = (n_init + n_bnd) * patch_bytes(opts)
    where, free = free_space(out_dir)
    if raw <= free:  # (an upper bound: gzip keeps at most about all of it, and fewer positions may pass)
        return
    if n_bnd:  # those that pass the boundary test: reads the mattes
        n_bnd = sum(n * min(int(opts.boundary_per_pair), pos) for n, pos in shards.boundary_positions(opts))
    r_init, r_bnd = _sample_ratio(shards, opts, boundary=n_bnd > 0) if compress else (1.0, 1.0)
    need = int(n_init * patch_bytes(opts) * r_init + n_bnd * patch_bytes(opts) * r_bnd)
    if need <= free:
        return
    s = opts.patch + 2 * opts.context
    if not compress:
        how = "without compression"
    elif n_bnd:
        how = (f"gzip keeps {r_init:.0%} of a sample of the first pair's random patches and {r_bnd:.0%} of its "
               "boundary ones")
    else:
        how = f"gzip keeps {r_init:.0%} of a sample of the first pair's patches"
    raise UserError(f"{out_dir}: the patch sets would take about {size_text(need)} ({n_init:,} initial"
                    f"{f' and {n_bnd:,} boundary' if n_bnd else ''} patches of 2x{s}x{s} bytes, {how}), more than "
                    f"the {size_text(free)} free on the disk of {where}: lower patches.per_pair (--per-pair)"
                    f"{' or patches.boundary_per_pair (--boundary-per-pair)' if n_bnd else ''}, or free space")


def run_patches(shard_files: list[Path], opts: PatchOptions, out_dir: Path, progress: bool = True,
                compress: bool = True, threads: int = 1) -> dict[str, Any]:
    """Write ``initial.h5`` and ``boundary.h5`` into ``out_dir``; return counts.

    ``compress=False`` stores the datasets without gzip (scratch patch sets, e.g.
    ``benchmarks/device_train.py``): the same patches, labels and attributes; at patch 64 with
    16 px of context, about 1.8x the disk and written about 6x faster (BENCHMARKS.md).
    ``threads`` > 1 deflates the patch chunks on that many threads while the pairs are read
    and cropped; the files are byte-identical for any ``threads``. Patch sets that would not
    fit on the disk of ``out_dir`` are refused before anything is written
    (:func:`check_free_space`).
    """
    if not isinstance(threads, int) or threads < 1:
        raise UserError(f"threads must be a positive integer, got {threads!r}")
    out_dir = Path(out_dir)
    once: dict[Path, Path] = {}  # sorted, each file once however often or however spelled it is given
    for f in sorted(map(Path, shard_files)):
        once.setdefault(f.resolve(), f)
    shard_files = list(once.values())
    shards = _Shards(shard_files)
    with shards:
        return _write_patches(shards, opts, out_dir, progress, compress, threads)


def _write_patches(shards: _Shards, opts: PatchOptions, out_dir: Path, progress: bool, compress: bool,
                   threads: int) -> dict[str, Any]:
    """:func:`run_patches` once its shards are open."""
    p = opts.patch
    all_ids = shards.ids
    if all_ids.size == 0:
        raise UserError("no composited pairs found in " + ", ".join(str(f) for f in shards.files))
    small = shards.smaller_than(p)
    if small:
        raise UserError(_small_message(small, p))
    check_free_space(shards, opts, out_dir, compress)
    val_pairs = split_pairs(all_ids, opts.val_fraction, opts.seed)
    counts = {s: {sp: 0 for sp in SPLITS} for s in SETS}
    labels = {s: {sp: 0 for sp in SPLITS} for s in SETS}
    attrs = {
        "patch": p,
        "seed": opts.seed,
        "params": json.dumps(asdict(opts), sort_keys=True),
        "code_version": __version__,
    }
    if opts.context:  # (absent for the paper's isolated patches: files as before)
        attrs["context"] = opts.context
    thr = opts.threshold_u8
    with ExitStack() as stack:
        t_init = stack.enter_context(atomic_file(out_dir / "initial.h5"))
        t_bnd = stack.enter_context(atomic_file(out_dir / "boundary.h5"))
        pool = stack.enter_context(ThreadPoolExecutor(threads, thread_name_prefix="deflate")) if threads > 1 else None
        writer = _ChunkWriter(compress, pool)
        with h5_output(t_init, out_dir / "initial.h5", track_order=True) as f_init, \
                h5_output(t_bnd, out_dir / "boundary.h5", track_order=True) as f_bnd:
            files = {"initial": f_init, "boundary": f_bnd}
            app = {}
            for s, f in files.items():
                for k, v in attrs.items():
                    f.attrs[k] = v
                f.attrs["kind"] = s
                app[s] = {sp: _Appender(f.create_group(sp, track_order=True), p + 2 * opts.context, writer)
                          for sp in SPLITS}
            last_matte_id = None
            frac = None
            for pair_id, A, B, matte in tqdm(
                shards, total=int(all_ids.size), desc="patches", unit="pair", **bar_options(progress)
            ):
                h, w = matte.shape
                if h < p or w < p:
                    raise UserError(f"pair {pair_id}: image {w}x{h} is smaller than patch: {p} (a pair takes the size of "
                                    "its prepared foreground, the source's times prepare.scale): raise prepare.scale "
                                    "or lower patch")
                focus = matte >= thr
                if last_matte_id != id(matte) or frac is None:
                    frac = window_fraction(focus, p)
                    last_matte_id = id(matte)
                key = PATCH_STREAM_REALISTIC if pair_id in shards.realistic_ids else PATCH_STREAM_PAPER
                rng = np.random.default_rng([int(opts.seed), pair_id, key])
                split = "val" if pair_id in val_pairs else "train"
                rand = random_corners(rng, (h, w), p, opts.per_pair)
                if opts.boundary_per_pair == BOUNDARY_SUBSET:
                    bnd = subset_corners(rand, frac, opts.min_focused, opts.min_defocused)
                else:
                    bnd = boundary_corners(rng, frac, opts.boundary_per_pair, opts.min_focused, opts.min_defocused)
                if opts.context:  # once a pair, not once a block
                    A = np.pad(A, opts.context, mode="reflect")
                    B = np.pad(B, opts.context, mode="reflect")
                for s, corners in (("initial", rand), ("boundary", bnd)):
                    centres = corners + p // 2
                    y = focus[centres[:, 0], centres[:, 1]].astype(np.uint8)
                    y_block = centre_block(focus, centres)
                    pair = np.full(len(y), pair_id, np.int64)
                    centres = centres.astype(np.int32)
                    for k in range(0, len(y), CROP_BLOCK):  # memory bounded whatever per_pair
                        b = slice(k, k + CROP_BLOCK)
                        app[s][split].append(_crop_padded(A, B, corners[b], p + 2 * opts.context), y[b], pair[b],
                                             centres[b], y_block[b])
                    counts[s][split] += len(y)
                    labels[s][split] += int(y.sum())
            for s in SETS:
                for sp in SPLITS:
                    app[s][sp].close()
    if counts["boundary"]["train"] == 0 and opts.boundary_per_pair != 0:
        warnings.warn(empty_boundary_warning(opts, int(all_ids.size) - len(val_pairs)), stacklevel=3)
    summary = {
        "pairs": int(all_ids.size),
        "val_pairs": len(val_pairs),
        "patch": p,
        **({"context": opts.context} if opts.context else {}),
        "counts": counts,
        "positives": labels,
        "augmentation_factor": AUGMENTATION_FACTOR,
        "effective_samples": {s: {sp: counts[s][sp] * AUGMENTATION_FACTOR for sp in SPLITS} for s in SETS},
    }
    return summary


def _small_message(small: list[tuple[str, list[int], Path, tuple[int, ...]]], p: int) -> str:
    """The refusal of the foregrounds (:meth:`_Shards.smaller_than`) whose pairs are smaller
    than the patch ``p``: the first pair, then every such foreground by its id, pairs and shard."""

    def where(name: str, ids: list[int], f: Path) -> str:
        span = f"pair {ids[0]}" if len(ids) == 1 else f"pairs {ids[0]}-{ids[-1]}"
        return f"foreground {name!r} ({span} of {f.name})"

    name, ids, f, (h, w) = small[0]
    others = "".join(f"; also {where(n, i, g)}: {sw}x{sh}" for n, i, g, (sh, sw) in small[1:6])
    if len(small) > 6:
        others += f"; ... ({len(small)} foregrounds in all)"
    return (f"pair {ids[0]}: image {w}x{h} is smaller than patch: {p}, as is every pair of {where(name, ids, f)} (a pair "
            "takes the size of its prepared foreground, the source's times prepare.scale): raise prepare.scale or lower "
            f"patch{others}")


def empty_boundary_warning(opts: PatchOptions, train_pairs: int) -> str:
    """The line said when the boundary set has no training patch (``patches.boundary_per_pair``
    not 0): its cause, mattes of one value or on one side of the label threshold (the prepare
    step warns about each), and what then refuses it.

    Parameters
    ----------
    opts : PatchOptions
        The patch step's options (patch, fractions, label threshold).
    train_pairs : int
        The number of training pairs.

    Returns
    -------
    str
    """
    return (f"the boundary patch set is empty: no {opts.patch}x{opts.patch} window of the {train_pairs} training pairs "
            f"holds at least {opts.min_focused:.0%} focused (matte at or above patches.label_threshold "
            f"{opts.label_threshold:g}) and {opts.min_defocused:.0%} defocused pixels (are the mattes of one value? "
            "the prepare step warns about each): train --net boundary refuses it")


def read_split(path: Path, split: str) -> dict[str, np.ndarray]:
    """Load one split of a patch set into memory (x, y, pair, centre, and y_block where the file
    has it) with clear errors."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "patch set not found")
    try:
        with h5py.File(path, "r") as h5:
            if split not in h5:
                raise InputFileError(path, f"no '{split}' group (not a bafusion patch set?)")
            g = h5[split]
            return {k: g[k][()] for k in ("x", "y", "pair", "centre", "y_block") if k != "y_block" or k in g}
    except OSError as e:
        raise InputFileError(path, f"unreadable HDF5 file: {e}") from e
    except KeyError as e:
        raise InputFileError(path, f"missing dataset {e} in group '{split}'") from e
