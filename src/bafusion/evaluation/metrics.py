"""Objective multi-focus fusion metrics that reproduce the survey's MATLAB reference values.

The reference values (Liu, Wang, Cheng, Li, Chen, Information Fusion 2020) were computed with
Zheng Liu's fusion-metric toolbox, with that survey's corrections. Every function here follows
the toolbox's conventions (see ``../shared/README.md``):

* colour images become gray with MATLAB's ``rgb2gray`` (rounded back to uint8), then float64
  (:func:`bafusion.io.gray_float` with ``rounded=True``); the functions take arrays, not
  paths: read image files with :func:`read_metric_files` (A, B and F as one set: scaled alike
  when of more than 8 bits; an unmarked deeper F beside an 8-bit source refused, see below), as
  ``bafusion metrics`` does;
* ``filter2(..., 'same')`` is a correlation with zero padding, ``'valid'`` keeps only the
  windows that lie fully inside the image;
* ``normalize1`` min-max stretches to [0, 255] and rounds half away from zero.

Metrics (higher is better except QCV): QMI, QG, QY, QCB (the paper's four) and QNCIE, QP, QE,
QCV. On the survey's 180 (pair, method) triples QMI, QG, QCB, QNCIE and QCV agree with the
MATLAB values to 1e-13 (largest difference 7.1e-14, QCV), QP to 1e-11 (largest 1.93e-12, the
classic "flowerpot" pair's CNN fusion). QY and QE depend, over perfectly flat windows, on
MATLAB's rounding noise: QY agrees to 1e-3 (largest 6.27e-4; 4.08e-3 on the very flat classic
"lab" pair); QE emulates that noise and agrees to 1e-14.

Degenerate inputs (e.g. constant images) give NaN where MATLAB does (QCB, QP, QE, QCV): the
metric's ratio is 0/0 and its definition gives no value. ``bafusion metrics`` writes such a
value as ``null`` (JSON) or an empty field (CSV) and warns on stderr naming the metric; it never
prints NaN.

All metrics take three images of one height and width (sources ``a``, ``b`` and fused
``f``), each gray (H, W) or (H, W, 1) or colour (H, W, 3) or (H, W, 4) (alpha ignored), and
bring them to the [0, 255] scale by their type:

* **uint8**: as they are (the reference values are computed so);
* **uint16**: scaled to uint8 alike, as :func:`bafusion.fuse` and
  :func:`bafusion.io.read_images` scale unmarked 16-bit data: from the smallest of 8, 10, 12,
  14 or 16 bits that holds the largest value of the uint16 ones (``round(v / (2**bits - 1) * 255)``;
  at 16 bits ``v / 257``), so a 16-bit fusion (``fuse`` on 16-bit sources) measured against
  those sources gives the value of the 8-bit triple. uint16 sources beside an 8-bit F (uint8,
  other integers within 0-255, floats) are scaled by the depth common to the uint16 ones, as
  ``fuse`` scales them, so its uint8 output (``keep_depth=False``) matches them. A uint16 A or
  B beside a 0-255 other source is refused, as :func:`bafusion.fuse` refuses such arrays: its
  depth cannot be told (a dark 16-bit shot would read as 12-bit data, 16 times too bright;
  :func:`read_metric_files` reads an unmarked 16-bit file beside an 8-bit one on its full
  scale). A uint16 F
  beside an 8-bit A or B is refused: its bit depth cannot be told (a dark 16-bit fusion,
  largest value below 16384, would read as 14-bit data, 4 times too bright); bring the three
  to one depth (``x.astype(np.uint16) * 257`` for 8-bit ones). Files alike: an F of more than
  8 bits that marks no significant bits (PNG ``sBIT``, OME-TIFF ``SignificantBits``) beside an
  8-bit A or B is refused by :func:`read_metric_files` (``bafusion metrics``), as the readers
  of :mod:`bafusion.io` would take a dark one for data of fewer bits; unmarked deeper A, B
  beside an 8-bit F (``fuse``'s ``.jpg``/``.bmp`` output of 16-bit sources) are read as ``fuse``
  reads them (one depth common to the two; one of them beside an 8-bit other on its file's
  full scale);
* **other integer types** (int64, ...): taken as uint8 when every value lies in 0-255;
* **floats**: taken on the 0-255 scale (gray as they are, colour rounded by ``rgb2gray``).
  Each image is checked on its own: one whose values all lie within [0, 1] with fractions
  (largest above 0) is refused as a 0-1 float image (multiply by 255), as are values outside
  0-255 (negative or above 255: clip them), NaN and infinite values; a float image of only
  0 and 1 is a nearly black 0-255 frame when another image is on the 0-255 scale (an integer
  type, or floats above 1), and refused as unclear when none is;
* anything else (bool, complex, paths, ...) is refused.

Refusals are :class:`bafusion.errors.UserError` naming the image (A, B or F). Colour inputs
are then converted with ``gray_float(x, rounded=True)``. Everything is vectorised with
numpy/scipy. The ``bafusion metrics`` command is :mod:`bafusion.cli.metrics`.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

from bafusion.errors import UserError
from bafusion.io import SourceSet, common_bits, gray_float, read_source_set, round_half_away, scale_to_u8

__all__ = [
    "REQUIRED_METRICS",
    "METRICS",
    "MetricCache",
    "check_same_size",
    "normalize1",
    "qmi",
    "qncie",
    "qg",
    "qy",
    "qcb",
    "qp",
    "qe",
    "qcv",
    "compute_all",
    "read_metric_files",
    "MIN_SIDE",
    "VALUE_RANGES",
]

ArrayLike = np.ndarray

MIN_SIDE: dict[str, int] = {"QY": 11, "QE": 8}
"""The smallest image side (pixels) that some metrics need (QY's 11x11 window, QE's 8x8 box);
the others take any size."""


# --------------------------------------------------------------------------------------------
# input helpers


def check_same_size(a: ArrayLike, b: ArrayLike, f: ArrayLike, names: Sequence[str] = ("A", "B", "F")) -> None:
    """Raise :class:`UserError` naming both sizes when the three images differ in height/width.

    Every metric checks this first; ``bafusion metrics`` calls it with the file names.

    Parameters
    ----------
    a, b, f : array_like
        The sources and the fused image (anything :func:`numpy.shape` takes); only height and
        width (the first two dimensions) are compared, F's and B's to A's.
    names : sequence of str
        Names of A, B and F for the message (file names; default "A", "B", "F").

    Raises
    ------
    bafusion.errors.UserError
        "image sizes differ: A is WxH (WxH) but B is WxH", for the first that differs. When F
        alone is smaller than A and B both ways (the output of ``bafusion fuse --align``,
        cropped to the area every registered shot covers), the message says so, and names
        ``fuse --save-registered``, which writes the registered sources to measure it against.
    """
    shapes = [np.shape(x)[:2] for x in (a, b, f)]
    for i in (1, 2):
        if shapes[i] != shapes[0]:
            (h0, w0), (h1, w1) = shapes[0], shapes[i]
            cropped = ""
            if i == 2 and h1 <= h0 and w1 <= w0:  # A and B agree (checked first): F is a crop
                cropped = (f"; {names[2]} is smaller than the sources: a fusion made with --align (or --align auto"
                           " that aligned) is cropped to the area every registered shot covers, and bafusion"
                           " metrics cannot measure it against the sources as they were before registration:"
                           " fuse with --save-registered DIR writes the registered, cropped sources it was made of,"
                           " to measure it against")
            raise UserError(
                f"image sizes differ: {names[0]} is {w0}x{h0} (WxH) but {names[i]} is {w1}x{h1}{cropped}"
            )


def _eight_bit_scale(a: ArrayLike, b: ArrayLike, f: ArrayLike) -> list[np.ndarray]:
    """A, B and F on the [0, 255] scale the metrics take, by the input rules of the module
    docstring: uint8 and floats as they are, uint16 scaled to uint8 alike (as :func:`bafusion.fuse`
    scales uint16 sources; a uint16 F only beside uint16 A and B), other integers within 0-255 as uint8;
    anything else refused."""
    images = [np.asarray(x) for x in (a, b, f)]
    out: list[np.ndarray] = []
    wide = [name for name, x in zip("ABF", images) if x.dtype == np.uint16]
    if "F" in wide and len(wide) < 3 and all(x.dtype.kind in "iuf" for x in images):  # other types: refused below
        # uint16 data carries no bit depth: a uint16 F beside a uint8 (or 0-255) source has no
        # safe reading (a dark 16-bit fusion, largest value below 16384, reads as 14-bit data:
        # 4 times too bright), so the three are asked for at one depth. uint16 sources beside a
        # 0-255 F are scaled by their common depth, as fuse scales them: its uint8 output of
        # them (keep_depth=False) matches them.
        def named(names: list[str], dtype: object) -> str:
            return f"{' and '.join(names)} {'are' if len(names) > 1 else 'is'} {dtype}"

        narrow: dict[str, list[str]] = {}
        for name, x in zip("ABF", images):
            if x.dtype != np.uint16:
                narrow.setdefault(str(x.dtype), []).append(name)
        raise UserError(
            f"image{'s' if len(wide) > 1 else ''} {named(wide, 'uint16')} but "
            + " and ".join(named(n, dt) for dt, n in narrow.items())
            + ": the metrics cannot tell the bit depth of a uint16 F beside 0-255 sources (a dark 16-bit fusion "
            "would read as brighter data of fewer bits); give A, B and F at one depth: all uint16 (the 16-bit "
            "arrays that were fused; x.astype(np.uint16) * 257 brings uint8 to the 16-bit scale) or all uint8 "
            "(bafusion.fuse(..., keep_depth=False))")
    sources16 = [name for name, x in zip("AB", images) if x.dtype == np.uint16]
    narrow_sources = [name for name, x in zip("AB", images) if x.dtype != np.uint16 and x.dtype.kind in "iuf"]
    if sources16 and narrow_sources:
        # a uint16 source beside a 0-255 one: its depth guessed from its largest value (a dark
        # 16-bit shot read as 12-bit data, 16 times too bright), where a file of it is read on
        # its full 16-bit scale and bafusion.fuse refuses the two arrays alike
        other = images["AB".index(narrow_sources[0])]
        raise UserError(
            f"image {sources16[0]} is uint16 but {narrow_sources[0]} is {other.dtype}: the metrics cannot tell the "
            "bit depth of a uint16 source beside a 0-255 one (12-bit camera data and a dark 16-bit image look "
            "alike); give A and B at one depth: both uint16 on one scale (x.astype(np.uint16) * 257 brings uint8 "
            "to the 16-bit scale) or both on the 0-255 scale (bafusion.io.scale_to_u8(x, bits)), or read the "
            "files with read_metric_files (an unmarked 16-bit file beside an 8-bit one is read on its full scale)")
    deep16 = [x for x in images if x.dtype == np.uint16 and x.size]
    bits = common_bits(max(float(x.max()) for x in deep16)) if deep16 else 8
    unit: list[tuple[str, np.ndarray]] = []  # float images with values all within [0, 1], largest above 0
    for name, x in zip("ABF", images):
        kind = x.dtype.kind
        if x.dtype == np.uint8:
            out.append(x)
        elif x.dtype == np.uint16:
            out.append(scale_to_u8(x, bits))
        elif kind == "f":
            if not np.isfinite(x).all():
                raise UserError(f"image {name} has NaN or infinite values")
            lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
            if lo < 0.0 or hi > 255.0:
                raise UserError(f"image {name} is {x.dtype} with values outside 0-255 ({lo:g} to {hi:g}): the "
                                "metrics take floats on the 0-255 scale (clip them to 0-255)")
            if 0.0 < hi <= 1.0:
                unit.append((name, x))
            out.append(x)
        elif kind in "iu":
            if x.size and (int(x.min()) < 0 or int(x.max()) > 255):
                raise UserError(f"image {name} is {x.dtype} with values outside 0-255 "
                                f"({x.min()} to {x.max()}): the metrics take uint8, uint16 or 0-255 values")
            out.append(x.astype(np.uint8))
        else:
            raise UserError(f"image {name} is {x.dtype}: the metrics take uint8, uint16, other integers within "
                            "0-255 or floats on the 0-255 scale")
    # Values within [0, 1] with fractions are a 0-1 image; only 0 and 1 (a nearly black frame)
    # are 0-255 values when another image is on the 0-255 scale (an integer type, or floats
    # above 1), and either scale when none is.
    scaled = any(x.dtype.kind != "f" or (x.size and float(x.max()) > 1.0) for x in images)
    for name, x in unit:
        if not np.array_equal(x, np.floor(x)):
            raise UserError(f"image {name} is {x.dtype} with values all within [0, 1] (largest {float(x.max()):g}): it "
                            "looks like a 0-1 float image, and the metrics take the 0-255 scale: multiply it by 255")
    if unit and not scaled:
        name, x = unit[0]
        raise UserError(f"image {name} is {x.dtype} with values only 0 and 1, and no image of the three is on the "
                        "0-255 scale (all are floats within [0, 1]): the scale is unclear; the metrics take the "
                        "0-255 scale: multiply 0-1 images by 255, or give 0-255 values as uint8")
    return out


def _refuse_paths(a: object, b: object, f: object) -> None:
    """Refuse a file path given for an image, pointing to the reader (the metrics take arrays)."""
    for name, x in zip("ABF", (a, b, f)):
        if isinstance(x, (str, bytes, os.PathLike)):
            raise UserError(f"image {name} is a path ({os.fsdecode(x)!r}): the metrics take image arrays; read the "
                            "files with bafusion.evaluation.metrics.read_metric_files(a, b, f) (A, B and F as one "
                            "set, scaled alike)")


def read_metric_files(
    a: str | os.PathLike[str], b: str | os.PathLike[str], f: str | os.PathLike[str]
) -> SourceSet:
    """Read the image files of sources A, B and fused F for the metrics, as one set (as
    ``bafusion metrics`` does): :func:`bafusion.io.read_source_set` without metadata, files of
    more than 8 bits per sample scaled alike (by the significant bits a file marks, else by one
    bit depth common to the unmarked ones).

    A fused F of more than 8 bits that marks no significant bits (PNG ``sBIT``, OME-TIFF
    ``SignificantBits``) beside an 8-bit A or B is refused: its bit depth cannot be told (a dark
    16-bit fusion, largest value below 16384, would read as 14-bit data, 4 times too bright,
    beside its 8-bit sources). All 8-bit, all unmarked deeper files, marked ones, or unmarked
    deeper A and B (or one of them) beside an 8-bit F are read: the sources as ``bafusion fuse``
    reads them (one depth common to the unmarked ones; an unmarked one beside an 8-bit other on
    its file's full scale, :func:`bafusion.io.read_source_set`), so its 8-bit output of them
    (``.jpg``, ``.bmp``) is measured against the data it was fused from.

    Parameters
    ----------
    a, b, f : str or path-like
        The files of source A, source B and the fused image F.

    Returns
    -------
    bafusion.io.SourceSet
        Its ``images`` are A, B and F as uint8 (the arrays the metrics take); its ``notes``
        the lines for the user (float samples clipped).

    Raises
    ------
    bafusion.errors.UserError
        Naming the files, for an unmarked deeper F beside an 8-bit A or B.
    bafusion.errors.InputFileError
        Naming the file when one is missing or not a readable image.
    """
    paths = [a, b, f]
    src = read_source_set(paths, metadata=False, sources=2)  # A and B as fuse read them, not by F's depth
    wide = [i for i, u in enumerate(src.unmarked) if u]
    narrow = [i for i, d in enumerate(src.depths[:2]) if d == 8]
    # F's depth guessed beside an 8-bit source; unmarked A, B beside an 8-bit F are read as fuse reads them
    if 2 in wide and narrow:
        def named(idx: list[int], what: str) -> str:
            files = " and ".join(f"{'ABF'[i]} ({os.fsdecode(os.fspath(paths[i]))})" for i in idx)
            return f"{files} {'are' if len(idx) > 1 else 'is'} {what}"

        deep = sorted({src.depths[i] for i in wide})
        raise UserError(
            named(wide, f"{'/'.join(map(str, deep))}-bit without marked significant bits") + " but "
            + named(narrow, "8-bit") + ": the metrics cannot tell the bit depth of an unmarked deeper F beside "
            "8-bit sources (a dark 16-bit fusion would read as brighter data of fewer bits, as if 10-, 12- or "
            "14-bit); give A, B and F at one depth (all 8-bit, or all 16-bit: the 16-bit sources that were "
            "fused, not 8-bit copies), or mark F's significant bits (PNG sBIT, OME-TIFF SignificantBits)")
    return src


def _prepare(a: ArrayLike, b: ArrayLike, f: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    _refuse_paths(a, b, f)
    for name, x in zip("ABF", (a, b, f)):
        shape = np.shape(x)
        if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3, 4)):
            what = f"{shape[2]} channels" if len(shape) == 3 else f"{len(shape)} dimensions"
            raise UserError(f"image {name} has {what} (shape {shape}): the metrics take a gray (H x W or H x W x 1) "
                            "or colour (H x W x 3, or 4 with alpha) image")
    check_same_size(a, b, f)
    ga, gb, gf = (gray_float(x, rounded=True) for x in _eight_bit_scale(a, b, f))
    return ga, gb, gf


class MetricCache:
    """Memo of intermediate results computed from the *source* images, keyed by their content.

    Pass one instance to several metric calls that share sources -- typically the fused images
    of several methods for one pair -- and the work on A and B (gradients, local statistics,
    contrast maps, phase congruency, ...) is done once::

        cache = MetricCache()
        for f in fused_images:
            values = compute_all(a, b, f, cache=cache)

    Keys are SHA-1 digests of the gray float64 images, so a changed image is never confused
    with a cached one. Results for fused images are not stored. Drop the cache when done with
    the pair (it holds several image-sized arrays per source).
    """

    def __init__(self) -> None:
        self._store: dict[tuple[str, object], object] = {}

    def __len__(self) -> int:
        return len(self._store)

    def clear(self) -> None:
        """Forget everything."""
        self._store.clear()

    @staticmethod
    def _digest(img: np.ndarray) -> tuple[tuple[int, ...], str]:
        arr = np.ascontiguousarray(img, dtype=np.float64)
        return arr.shape, hashlib.sha1(arr.data).hexdigest()

    def _get(self, key: tuple[str, object], compute: Callable[[], Any]) -> Any:
        if key not in self._store:
            self._store[key] = compute()
        return self._store[key]


Memo = Callable[[str, str, Callable[[], Any]], Any]
"""``memo(kind, which, compute)``: ``compute()``'s result for source ``which`` ('a', 'b' or
'ab' for both), cached when a :class:`MetricCache` is in use."""


def _no_memo(kind: str, which: str, compute: Callable[[], Any]) -> Any:
    return compute()


def _memo_for(cache: MetricCache | None, a: np.ndarray, b: np.ndarray) -> Memo:
    if cache is None:
        return _no_memo
    ka, kb = cache._digest(a), cache._digest(b)
    keys = {"a": ka, "b": kb, "ab": (ka, kb)}

    def memo(kind: str, which: str, compute: Callable[[], Any]) -> Any:
        return cache._get((kind, keys[which]), compute)

    return memo


def _run(
    impl: Callable[[np.ndarray, np.ndarray, np.ndarray, Memo], float],
    a: ArrayLike,
    b: ArrayLike,
    f: ArrayLike,
    cache: MetricCache | None,
) -> float:
    """Convert and check the inputs, then run a metric's implementation."""
    ga, gb, gf = _prepare(a, b, f)
    return impl(ga, gb, gf, _memo_for(cache, ga, gb))


def normalize1(x: np.ndarray) -> np.ndarray:
    """The toolbox's ``normalize1``: min-max stretch to [0, 255], rounded half away from zero.

    An all-zero image is returned unchanged; any other constant image (where MATLAB would
    divide 0 by 0) becomes all zeros.

    Parameters
    ----------
    x : array_like
        An image of any shape (the metrics pass gray float64 (H, W) on the 0-255 scale).

    Returns
    -------
    numpy.ndarray of float64
        ``round((x - min) / (max - min) * 255)``, integer values 0-255, ``x``'s shape.
    """
    x = np.asarray(x, dtype=np.float64)
    hi = float(x.max())
    lo = float(x.min())
    if hi == lo:
        return np.zeros_like(x)
    return round_half_away((x - lo) / (hi - lo) * 255.0)


def _filter2_same(kernel: np.ndarray, img: np.ndarray) -> np.ndarray:
    """MATLAB ``filter2(kernel, img, 'same')`` for an odd-sized kernel: correlation, zero padding."""
    return ndimage.correlate(img, kernel, mode="constant", cval=0.0)


def _correlate_sep_same(img: np.ndarray, k_row: np.ndarray, k_col: np.ndarray) -> np.ndarray:
    """Separable zero-padded 'same' correlation: ``k_col`` along axis 0, ``k_row`` along axis 1."""
    out = ndimage.correlate1d(img, k_col, axis=0, mode="constant", cval=0.0)
    return ndimage.correlate1d(out, k_row, axis=1, mode="constant", cval=0.0)


# --------------------------------------------------------------------------------------------
# QMI and QNCIE (information theory)


def _entropies(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Entropies H(x), H(y), H(x, y) in bits of two images of integers 0..255 (256 bins)."""
    idx = x.astype(np.int64).ravel() * 256 + y.astype(np.int64).ravel()
    joint = np.bincount(idx, minlength=256 * 256).reshape(256, 256).astype(np.float64)
    joint /= joint.sum()
    px = joint.sum(axis=1)
    py = joint.sum(axis=0)

    def ent(p: np.ndarray) -> float:
        p = p[p > 0]
        if p.size <= 1:  # one value: exactly 0 (its probability, summed from the joint one, may read 1 +- 2e-16)
            return 0.0
        return float(-np.sum(p * np.log2(p)))

    return ent(px), ent(py), ent(joint)


def qmi(a: ArrayLike, b: ArrayLike, f: ArrayLike, *, cache: MetricCache | None = None) -> float:
    """Hossny's normalised mutual information (toolbox ``metricMI(a, b, f, 1)``), range 0..2.

    QMI = 2 [I(A;F) / (H(A) + H(F)) + I(B;F) / (H(B) + H(F))] on images first stretched with
    :func:`normalize1`. A term whose entropies are both zero (constant images) counts as 0. The
    mutual information ``H(S) + H(F) - H(S, F)`` is clamped to ``[0, min(H(S), H(F))]``, where it
    lies exactly, and the entropy of a constant image is exactly 0: their rounding made QMI about
    -5e-16 beside a constant F (which shares no information: 0).

    Parameters
    ----------
    a, b : numpy.ndarray
        The source images.
    f : numpy.ndarray
        The fused image, of the sources' height and width. Each image gray (H, W) or colour
        (H, W, 3 or 4): uint8; uint16 (scaled to 8 bits alike, ``v / 257`` for 16-bit data;
        a uint16 F only beside uint16 A and B); other integers within 0-255; or finite floats
        on the 0-255 scale (not 0-1). See the module docstring.
    cache : MetricCache, optional
        Intermediate results of A and B, reused across calls with the same sources.

    Returns
    -------
    float
        QMI, 0..2 (2 when A, B and F are one image that is not constant; 0 when that image is
        constant: its entropy is 0 and such a term counts as 0).

    Raises
    ------
    UserError
        For images of different sizes, or of a type or values refused (module docstring).
    """
    return _run(_qmi, a, b, f, cache)


def _norm(memo: Memo, which: str, img: np.ndarray) -> np.ndarray:
    return memo("normalize1", which, lambda: normalize1(img))


def _qmi(a: np.ndarray, b: np.ndarray, f: np.ndarray, memo: Memo) -> float:
    a, b, f = _norm(memo, "a", a), _norm(memo, "b", b), normalize1(f)
    total = 0.0
    for src in (a, b):
        hs, hf, hsf = _entropies(src, f)
        denom = hs + hf
        if denom > 0:  # the mutual information, within its exact bounds (rounding: see qmi)
            total += min(max(hs + hf - hsf, 0.0), min(hs, hf)) / denom
    return 2.0 * total


def qncie(a: ArrayLike, b: ArrayLike, f: ArrayLike, *, cache: MetricCache | None = None) -> float:
    """Wang's nonlinear correlation information entropy Q_NCIE (toolbox ``metricWang``), 0..1.

    On :func:`normalize1`-stretched images, the nonlinear correlation coefficient of two images
    is NCC = (H(x) + H(y) - H(x, y)) / log2(256) (256-bin histograms); with R the 3x3 matrix of
    NCCs between A, B and F (ones on the diagonal) and r its eigenvalues,
    Q_NCIE = 1 + sum(r/3 * log2(r/3)) / log2(256).

    Parameters
    ----------
    a, b : numpy.ndarray
        The source images.
    f : numpy.ndarray
        The fused image, of the sources' height and width. Each image gray (H, W) or colour
        (H, W, 3 or 4): uint8; uint16 (scaled to 8 bits alike, ``v / 257`` for 16-bit data;
        a uint16 F only beside uint16 A and B); other integers within 0-255; or finite floats
        on the 0-255 scale (not 0-1). See the module docstring.
    cache : MetricCache, optional
        Intermediate results of A and B, reused across calls with the same sources.

    Returns
    -------
    float
        Q_NCIE, 0..1.

    Raises
    ------
    UserError
        For images of different sizes, or of a type or values refused (module docstring).
    """
    return _run(_qncie, a, b, f, cache)


def _qncie(a: np.ndarray, b: np.ndarray, f: np.ndarray, memo: Memo) -> float:
    a, b, f = _norm(memo, "a", a), _norm(memo, "b", b), normalize1(f)

    def ncc(x: np.ndarray, y: np.ndarray) -> float:
        hx, hy, hxy = _entropies(x, y)
        return (hx + hy - hxy) / 8.0

    nab = memo("ncc", "ab", lambda: ncc(a, b))
    naf, nbf = ncc(a, f), ncc(b, f)
    r = np.linalg.eigvalsh(np.array([[1.0, nab, naf], [nab, 1.0, nbf], [naf, nbf, 1.0]]))
    k = 3.0
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(r > 0, r * np.log2(r / k) / k, 0.0)
    return float(1.0 + np.sum(terms) / 8.0)


# --------------------------------------------------------------------------------------------
# QG (Xydeas-Petrovic)

_SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_SOBEL_Y = np.array([[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]])


def _sobel_strength_angle(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gx = _filter2_same(_SOBEL_X, img)
    gy = _filter2_same(_SOBEL_Y, img)
    g = np.sqrt(gx * gx + gy * gy)
    gx = gx + (gx == 0) * 0.00001
    return g, np.arctan(gy / gx)


def qg(a: ArrayLike, b: ArrayLike, f: ArrayLike, *, cache: MetricCache | None = None) -> float:
    """Xydeas-Petrovic gradient-based metric Q^{AB/F} (survey-corrected ``metricXydeas``), 0..1.

    Sobel edge strength and orientation of each image; edge-strength and orientation
    preservation pass through sigmoids (Gamma_g=0.9994, k_g=-15, sigma_g=0.5, Gamma_a=0.9879,
    k_a=-22, sigma_a=0.8); weights are the source edge strengths (L=1).

    Parameters
    ----------
    a, b : numpy.ndarray
        The source images.
    f : numpy.ndarray
        The fused image, of the sources' height and width. Each image gray (H, W) or colour
        (H, W, 3 or 4): uint8; uint16 (scaled to 8 bits alike, ``v / 257`` for 16-bit data;
        a uint16 F only beside uint16 A and B); other integers within 0-255; or finite floats
        on the 0-255 scale (not 0-1). See the module docstring.
    cache : MetricCache, optional
        Intermediate results of A and B, reused across calls with the same sources.

    Returns
    -------
    float
        Q^{AB/F}, 0..1.

    Raises
    ------
    UserError
        For images of different sizes, or of a type or values refused (module docstring).
    """
    return _run(_qg, a, b, f, cache)


def _qg(a: np.ndarray, b: np.ndarray, f: np.ndarray, memo: Memo) -> float:
    fg, fa = _sobel_strength_angle(f)
    ag, aa = memo("sobel", "a", lambda: _sobel_strength_angle(a))
    bg, ba = memo("sobel", "b", lambda: _sobel_strength_angle(b))

    gama1, gama2 = 0.9994, 0.9879
    k1, k2 = -15.0, -22.0
    d1, d2 = 0.5, 0.8

    def preservation(
        sg: np.ndarray, sa: np.ndarray, fg: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Same order of operations as the MATLAB code, including its tiny offsets for zeros;
        # returns the Q map, the (offset) source strength and the (offset) fused strength.
        bimap = sg > fg
        sg = sg + (sg == 0) * 0.00001
        buf1 = fg / sg
        fg = fg + (fg == 0) * 0.00001
        buf2 = sg / fg
        gsf = np.where(bimap, buf1, buf2)
        asf = 1.0 - np.abs(sa - fa) * 2.0 / np.pi
        qgm = gama1 / (1.0 + np.exp(k1 * (gsf - d1)))
        qam = gama2 / (1.0 + np.exp(k2 * (asf - d2)))
        return qgm * qam, sg, fg

    qaf, wa, fg = preservation(ag, aa, fg)
    qbf, wb, fg = preservation(bg, ba, fg)
    return float(np.sum(qaf * wa + qbf * wb) / np.sum(wa + wb))


# --------------------------------------------------------------------------------------------
# QY (Yang, SSIM based)


def _fspecial_gaussian(size: int, sigma: float) -> np.ndarray:
    """MATLAB ``fspecial('gaussian', size, sigma)``."""
    r = (size - 1) / 2.0
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    h = np.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
    h[h < np.finfo(float).eps * h.max()] = 0
    s = h.sum()
    return h / s if s != 0 else h


def _filter_valid(img: np.ndarray, k1d: np.ndarray) -> np.ndarray:
    """``filter2(outer(k1d, k1d), img, 'valid')`` done separably."""
    n = k1d.size
    out = ndimage.correlate1d(img, k1d, axis=0, mode="constant", cval=0.0)
    out = ndimage.correlate1d(out, k1d, axis=1, mode="constant", cval=0.0)
    lo = n // 2
    hi_r = img.shape[0] - (n - 1 - lo)
    hi_c = img.shape[1] - (n - 1 - lo)
    return out[lo:hi_r, lo:hi_c]


def _flat_windows(x: np.ndarray, size: int) -> np.ndarray:
    """True for every 'valid' ``size`` x ``size`` window of ``x`` whose pixels are all equal.

    Exact for any values: a window is constant iff each of its rows has no change between
    horizontal neighbours and its first column none between vertical ones (windowed counts of
    those changes come from integer cumulative sums)."""
    n = size
    rows, cols = x.shape
    h, w = rows - n + 1, cols - n + 1
    ch = np.zeros((rows + 1, cols), dtype=np.int64)  # changes to the right, summed 2-D
    ch[1:, 1:] = (x[:, 1:] != x[:, :-1]).cumsum(axis=0).cumsum(axis=1)
    horiz = ch[n : n + h, n - 1 :] - ch[:h, n - 1 :] - ch[n : n + h, :w] + ch[:h, :w]
    cv = np.zeros((rows, w), dtype=np.int64)  # changes downwards, summed along columns
    cv[1:] = (x[1:, :w] != x[:-1, :w]).cumsum(axis=0)
    vert = cv[n - 1 :] - cv[:h]
    return (horiz == 0) & (vert == 0)


class _LocalStats:
    """Local Gaussian-window statistics of one image for Yang's SSIM ('valid' 7x7 windows)."""

    def __init__(self, x: np.ndarray, k1d: np.ndarray) -> None:
        self.x = x
        self.k1d = k1d
        self.flat = _flat_windows(x, k1d.size)
        centre = x[3 : x.shape[0] - 3, 3 : x.shape[1] - 3]
        # over a constant window the mean is the constant and the variance exactly 0
        self.mu = np.where(self.flat, centre, _filter_valid(x, k1d))
        self.mu_sq = self.mu * self.mu
        self.var = np.where(self.flat, 0.0, _filter_valid(x * x, k1d) - self.mu_sq)


def _ssim_yang(sx: _LocalStats, sy: _LocalStats) -> np.ndarray:
    """SSIM map with a 7x7 Gaussian window (sigma 1.5), 'valid' filtering and C1=C2=2e-16.

    Over windows where an image is constant its variance (and its covariance with the other
    image) is exactly 0 and its mean the constant: with C1=C2=2e-16 the rounding noise of
    E[x^2] - E[x]^2 would otherwise decide the SSIM value there.
    """
    c1 = c2 = 2e-16
    mu12 = sx.mu * sy.mu
    cov = np.where(sx.flat | sy.flat, 0.0, _filter_valid(sx.x * sy.x, sx.k1d) - mu12)
    return ((2 * mu12 + c1) * (2 * cov + c2)) / ((sx.mu_sq + sy.mu_sq + c1) * (sx.var + sy.var + c2))


def qy(a: ArrayLike, b: ArrayLike, f: ArrayLike, *, cache: MetricCache | None = None) -> float:
    """Yang's SSIM-based metric (survey-corrected ``metricYang``), -1..1 (a mean of SSIM values).

    Where SSIM(A, B) >= 0.75 the local score is lambda SSIM(A, F) + (1 - lambda) SSIM(B, F)
    with lambda = var(A) / (var(A) + var(B)) (0.5 where both variances are 0); elsewhere it is
    max(SSIM(A, F), SSIM(B, F)). The result is the mean over all 7x7 windows ('valid').

    The reference MATLAB values differ from this by up to a few 1e-3 on images with large
    perfectly flat areas, where MATLAB's result depends on its rounding noise (see
    :func:`_ssim_yang`); elsewhere they agree to within 1e-3 (largest 6.27e-4; 90% of the triples within 5.6e-5).
    On the classic g03-lab pair the gap is 0.8e-3 to 4.08e-3. Emulating MATLAB's noise as for
    QE (swapping emulated statistics into the flat windows) was tried with the separable
    factors of numpy's and SciPy's SVDs, the plain 1-D Gaussian, and 48 Intel MKL 2019
    variants: on flat windows QY swings from ~1e-4 to 70 with the factors' last bits, and no
    candidate matched every method (the best, 5.7e-4, had same-signed errors on all six and
    did not help g04-disk: a fit by chance, not adopted).

    Parameters
    ----------
    a, b : numpy.ndarray
        The source images.
    f : numpy.ndarray
        The fused image, of the sources' height and width. Each image gray (H, W) or colour
        (H, W, 3 or 4): uint8; uint16 (scaled to 8 bits alike, ``v / 257`` for 16-bit data;
        a uint16 F only beside uint16 A and B); other integers within 0-255; or finite floats
        on the 0-255 scale (not 0-1). See the module docstring.
    cache : MetricCache, optional
        Intermediate results of A and B, reused across calls with the same sources.

    Returns
    -------
    float
        QY, -1..1.

    Raises
    ------
    UserError
        For images of different sizes, or of a type or values refused (module docstring), and
        images smaller than 11x11.
    """
    return _run(_qy, a, b, f, cache)


def _qy(a: np.ndarray, b: np.ndarray, f: np.ndarray, memo: Memo) -> float:
    if min(a.shape) < MIN_SIDE["QY"]:
        raise UserError(f"QY needs images of at least 11x11 pixels, got {a.shape[1]}x{a.shape[0]}")
    k1d = _fspecial_gaussian(7, 1.5).sum(axis=1)  # the window is separable: outer(k1d, k1d)
    sa = memo("yang_stats", "a", lambda: _LocalStats(a, k1d))
    sb = memo("yang_stats", "b", lambda: _LocalStats(b, k1d))
    sf = _LocalStats(f, k1d)
    ssim_ab = memo("yang_ssim", "ab", lambda: _ssim_yang(sa, sb))
    ssim_af = _ssim_yang(sa, sf)
    ssim_bf = _ssim_yang(sb, sf)
    s1 = sa.var
    s2 = sb.var
    zero = (s1 + s2 == 0) * 0.5
    s1 = s1 + zero
    s2 = s2 + zero
    lam = s1 / (s1 + s2)
    q = np.where(ssim_ab >= 0.75, lam * ssim_af + (1 - lam) * ssim_bf, np.maximum(ssim_af, ssim_bf))
    return float(np.mean(q))


# --------------------------------------------------------------------------------------------
# QCB (Chen-Blum)


def _freqspace(n: int) -> np.ndarray:
    """One axis of MATLAB ``freqspace``: ((0:n-1) - floor(n/2)) * 2/n."""
    return (np.arange(n) - n // 2) * (2.0 / n)


def _chen_blum_csf(shape: tuple[int, int]) -> np.ndarray:
    """The DoG contrast sensitivity function on the unshifted ``rfft2`` grid.

    It is symmetric (Sd(-u, -v) == Sd(u, v)), so filtering a real image gives a real image
    and the half spectrum of ``rfft2`` suffices."""
    hang, lie = shape
    f0, f1, a = 15.3870, 1.3456, 0.7622
    u = _freqspace(lie) * (lie / 30.0)
    v = _freqspace(hang) * (hang / 30.0)
    uu, vv = np.meshgrid(u, v)
    r = np.sqrt(uu * uu + vv * vv)
    sd = np.exp(-((r / f0) ** 2)) - a * np.exp(-((r / f1) ** 2))
    return np.fft.ifftshift(sd)[:, : lie // 2 + 1]


def _gauss31(sigma: float) -> np.ndarray:
    """1-D factor g of the toolbox's unnormalised 31x31 Gaussian: G = outer(g, g)."""
    x = np.arange(-15, 16, dtype=np.float64)
    return np.exp(-(x * x) / (2.0 * sigma * sigma)) / math.sqrt(2.0 * math.pi * sigma * sigma)


def qcb(a: ArrayLike, b: ArrayLike, f: ArrayLike, *, cache: MetricCache | None = None) -> float:
    """Chen-Blum human-perception metric (toolbox ``metricChenBlum``), 0..1.

    Images are stretched with :func:`normalize1`, filtered with a DoG contrast sensitivity
    function in the frequency domain, local contrast C = G_2 * I / G_4 * I - 1 (31x31
    Gaussians, zero padded) is masked with k=h=1, p=3, q=2, Z=1e-4, and the contrast
    preservation maps are combined with saliency weights and averaged.

    Parameters
    ----------
    a, b : numpy.ndarray
        The source images.
    f : numpy.ndarray
        The fused image, of the sources' height and width. Each image gray (H, W) or colour
        (H, W, 3 or 4): uint8; uint16 (scaled to 8 bits alike, ``v / 257`` for 16-bit data;
        a uint16 F only beside uint16 A and B); other integers within 0-255; or finite floats
        on the 0-255 scale (not 0-1). See the module docstring.
    cache : MetricCache, optional
        Intermediate results of A and B, reused across calls with the same sources.

    Returns
    -------
    float
        QCB, 0..1; NaN where undefined (0/0, e.g. constant images).

    Raises
    ------
    UserError
        For images of different sizes, or of a type or values refused (module docstring).
    """
    return _run(_qcb, a, b, f, cache)


def _qcb(a: np.ndarray, b: np.ndarray, f: np.ndarray, memo: Memo) -> float:
    sd = _chen_blum_csf(a.shape)
    g1 = _gauss31(2.0)
    g2 = _gauss31(4.0)
    k, h, p, q, z = 1.0, 1.0, 3.0, 2.0, 0.0001

    def masked_contrast(img: np.ndarray) -> np.ndarray:
        filtered = sfft.irfft2(sfft.rfft2(img) * sd, s=img.shape)
        buff = _correlate_sep_same(filtered, g1, g1)
        buff1 = _correlate_sep_same(filtered, g2, g2)
        with np.errstate(divide="ignore", invalid="ignore"):
            c = np.abs(buff / buff1 - 1.0)
            return (k * c**p) / (h * c**q + z)

    c1p = memo("chen_blum_contrast", "a", lambda: masked_contrast(_norm(memo, "a", a)))
    c2p = memo("chen_blum_contrast", "b", lambda: masked_contrast(_norm(memo, "b", b)))
    cfp = masked_contrast(normalize1(f))
    with np.errstate(divide="ignore", invalid="ignore"):
        q1f = np.where(c1p < cfp, c1p / cfp, cfp / c1p)
        q2f = np.where(c2p < cfp, c2p / cfp, cfp / c2p)
        s1 = c1p * c1p
        s2 = c2p * c2p
        lam1 = s1 / (s1 + s2)
        lam2 = s2 / (s1 + s2)
        qmap = lam1 * q1f + lam2 * q2f
    return float(np.mean(qmap))


# --------------------------------------------------------------------------------------------
# QP (Zhao, phase congruency)


def _centred_range(n: int) -> np.ndarray:
    """Kovesi's normalised frequency range for an axis of length n (odd and even sizes). For
    n = 1 it is 0/0: NaN, as in MATLAB (Q_P of an image one pixel wide or high is undefined),
    without numpy's warning."""
    if n == 1:
        return np.array([np.nan])
    if n % 2:
        return np.arange(-(n - 1) / 2, (n - 1) / 2 + 1) / (n - 1)
    return np.arange(-n / 2, n / 2) / n


@functools.lru_cache(maxsize=2)
def _phasecong_filters(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Log-Gabor filter bank of ``myphasecong3`` (4 scales, 6 orientations) for one image size.

    Returns the filters (orient x scale x rows x cols, zero frequency at the corner) and, per
    orientation, the mean squared smallest-scale filter value (EM_n) and the two sums used to
    estimate the noise energy (sum of squared, and of pairwise products of, the filters'
    spatial responses scaled by sqrt(rows*cols)).
    """
    nscale, norient = 4, 6
    min_wavelength, mult, sigma_onf, dtheta_on_sigma = 3.0, 2.1, 0.55, 1.2
    theta_sigma = np.pi / norient / dtheta_on_sigma
    x, y = np.meshgrid(_centred_range(cols), _centred_range(rows))
    radius = np.sqrt(x * x + y * y)
    radius[rows // 2, cols // 2] = 1.0
    theta = np.arctan2(-y, x)
    radius = np.fft.ifftshift(radius)
    theta = np.fft.ifftshift(theta)
    sintheta, costheta = np.sin(theta), np.cos(theta)
    # lowpassfilter([rows cols], .45, 15)
    xr, yr = np.meshgrid(_centred_range(cols), _centred_range(rows))
    lp = np.fft.ifftshift(1.0 / (1.0 + (np.sqrt(xr * xr + yr * yr) / 0.45) ** 30))

    log_gabor = []
    for sc in range(nscale):
        fo = 1.0 / (min_wavelength * mult**sc)
        lg = np.exp(-(np.log(radius / fo) ** 2) / (2 * np.log(sigma_onf) ** 2)) * lp
        lg[0, 0] = 0.0
        log_gabor.append(lg)

    filters = np.empty((norient, nscale, rows, cols))
    em_n = np.empty(norient)
    sum_an2 = np.empty(norient)
    sum_aiaj = np.empty(norient)
    scale = math.sqrt(rows * cols)
    for o in range(norient):
        angl = o * np.pi / norient
        ds = sintheta * math.cos(angl) - costheta * math.sin(angl)
        dc = costheta * math.cos(angl) + sintheta * math.sin(angl)
        dtheta = np.abs(np.arctan2(ds, dc))
        spread = np.exp(-(dtheta**2) / (2 * theta_sigma**2))
        for sc in range(nscale):
            filters[o, sc] = log_gabor[sc] * spread
        spatial = sfft.ifft2(filters[o], axes=(-2, -1)).real * scale  # per scale
        em_n[o] = float(np.sum(filters[o, 0] ** 2))
        sum_an2[o] = float(np.sum(spatial**2))
        sum_aiaj[o] = float(
            sum(np.sum(spatial[i] * spatial[j]) for i in range(nscale - 1) for j in range(i + 1, nscale))
        )
    filters.setflags(write=False)
    return filters, em_n, sum_an2, sum_aiaj


def _phase_congruency(im: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Phase congruency and its maximum and minimum moments (the toolbox's ``myphasecong3``
    with default parameters: 4 scales, 6 orientations, k=2, cutOff=0.5, g=10)."""
    rows, cols = im.shape
    filters, em_n, sum_an2, sum_aiaj = _phasecong_filters(rows, cols)
    norient, nscale = filters.shape[:2]
    eps = 0.0001
    k, cut_off, g = 2.0, 0.5, 10.0
    imagefft = sfft.fft2(im)
    total_energy = np.zeros((rows, cols))
    total_sum_an = np.zeros((rows, cols))
    covx2 = np.zeros((rows, cols))
    covy2 = np.zeros((rows, cols))
    covxy = np.zeros((rows, cols))
    for o in range(norient):
        angl = o * np.pi / norient
        eo = sfft.ifft2(imagefft[None] * filters[o], axes=(-2, -1), overwrite_x=True)
        even, odd = eo.real.copy(), eo.imag.copy()  # contiguous: faster than strided views
        an = np.hypot(even, odd)
        sum_an = an.sum(axis=0)
        sum_e = even.sum(axis=0)
        sum_o = odd.sum(axis=0)
        max_an = an.max(axis=0)
        x_energy = np.sqrt(sum_e * sum_e + sum_o * sum_o) + eps
        mean_e = sum_e / x_energy
        mean_o = sum_o / x_energy
        # sum over scales of E.MeanE + O.MeanO - |E.MeanO - O.MeanE|; the first two terms
        # sum to (sumE^2 + sumO^2) / XEnergy
        energy = (sum_e * sum_e + sum_o * sum_o) / x_energy
        energy -= np.abs(even * mean_o - odd * mean_e).sum(axis=0)
        median_e2n = float(np.median(an[0] ** 2))
        mean_e2n = -median_e2n / math.log(0.5)
        noise_power = mean_e2n / em_n[o]
        est_noise_energy2 = 2 * noise_power * sum_an2[o] + 4 * noise_power * sum_aiaj[o]
        tau = math.sqrt(est_noise_energy2 / 2)
        est_noise_energy = tau * math.sqrt(math.pi / 2)
        est_noise_sigma = math.sqrt((2 - math.pi / 2) * tau**2)
        threshold = (est_noise_energy + k * est_noise_sigma) / 1.7
        energy = np.maximum(energy - threshold, 0.0)
        width = sum_an / (max_an + eps) / nscale
        weight = 1.0 / (1 + np.exp((cut_off - width) * g))
        total_sum_an += sum_an
        total_energy += weight * energy
        with np.errstate(divide="ignore", invalid="ignore"):
            pc_o = weight * energy / sum_an
        covx = pc_o * math.cos(angl)
        covy = pc_o * math.sin(angl)
        covx2 += covx * covx
        covy2 += covy * covy
        covxy += covx * covy
    pc = total_energy / (total_sum_an + eps)
    covx2 /= norient / 2
    covy2 /= norient / 2
    covxy /= norient
    denom = np.sqrt(covxy * covxy + (covx2 - covy2) ** 2) + eps
    big_m = (covy2 + covx2 + denom) / 2
    small_m = (covy2 + covx2 - denom) / 2
    return pc, big_m, small_m


def _zhao_correlation(
    x1: np.ndarray,
    x2: np.ndarray,
    xmax: np.ndarray,
    xf: np.ndarray,
    m1: np.ndarray,
    m2: np.ndarray,
    m3: np.ndarray,
) -> float:
    """``correlation_coeffcient`` of ``metricZhao``: local (11x11 Gaussian, sigma 1.5, zero
    padded) correlation of each masked feature map with the fused one; the largest of the
    three at each pixel, summed and divided by the number of pixels of the max-map mask."""
    k1d = _fspecial_gaussian(11, 1.5).sum(axis=1)
    c = 0.0001
    x1 = m1 * x1
    x2 = m2 * x2
    xmax = m3 * xmax

    def filt(v: np.ndarray) -> np.ndarray:
        return _correlate_sep_same(v, k1d, k1d)

    muf = filt(xf)
    varf = filt(xf * xf) - muf * muf
    result = np.zeros_like(xf)
    for v, m in ((x1, m1), (x2, m2), (xmax, m3)):
        mu = filt(v)
        var = filt(v * v) - mu * mu
        cov = filt(v * xf) - mu * muf
        r = np.where(m, (cov + c) / (np.sqrt(np.abs(var * varf)) + c), 0.0)
        result = np.maximum(result, r) if v is not x1 else r
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.sum(result) / np.sum(m3))


def qp(a: ArrayLike, b: ArrayLike, f: ArrayLike, *, cache: MetricCache | None = None) -> float:
    """Zhao's phase-congruency metric Q_P (toolbox ``metricZhao``), -1..1.

    Phase congruency (PC) and its maximum (M) and minimum (m) moments of A, B and F; for each
    of the three features, the local correlation of F's map with A's, B's and the
    pixelwise-larger-PC source's maps (where PC > 0.1); Q_P = P_PC * P_M * P_m. Each factor
    is a mean of local correlations (-1..1): Q_P is negative where F's features lie off the
    sources' (vertical stripes with F shifted by half a period gave -0.12).

    Parameters
    ----------
    a, b : numpy.ndarray
        The source images.
    f : numpy.ndarray
        The fused image, of the sources' height and width. Each image gray (H, W) or colour
        (H, W, 3 or 4): uint8; uint16 (scaled to 8 bits alike, ``v / 257`` for 16-bit data;
        a uint16 F only beside uint16 A and B); other integers within 0-255; or finite floats
        on the 0-255 scale (not 0-1). See the module docstring.
    cache : MetricCache, optional
        Intermediate results of A and B, reused across calls with the same sources.

    Returns
    -------
    float
        Q_P, -1..1; NaN where undefined (sources without phase-congruency features).

    Raises
    ------
    UserError
        For images of different sizes, or of a type or values refused (module docstring).
    """
    return _run(_qp, a, b, f, cache)


def _qp(a: np.ndarray, b: np.ndarray, f: np.ndarray, memo: Memo) -> float:
    pc1, big1, small1 = memo("phase_congruency", "a", lambda: _phase_congruency(a))
    pc2, big2, small2 = memo("phase_congruency", "b", lambda: _phase_congruency(b))
    pcf, bigf, smallf = _phase_congruency(f)
    mask = pc1 > pc2
    m1 = pc1 > 0.1
    m2 = pc2 > 0.1
    pc_max = np.where(mask, pc1, pc2)
    m3 = pc_max > 0.1  # if empty (featureless sources) the result is NaN, as in MATLAB
    r_pc = _zhao_correlation(pc1, pc2, pc_max, pcf, m1, m2, m3)
    r_big = _zhao_correlation(big1, big2, np.where(mask, big1, big2), bigf, m1, m2, m3)
    r_small = _zhao_correlation(small1, small2, np.where(mask, small1, small2), smallf, m1, m2, m3)
    return r_pc * r_big * r_small


# --------------------------------------------------------------------------------------------
# QE (Piella and Heijmans, edge-dependent fusion quality index)


_BOX8 = np.full(8, 1.0 / 8.0)


def _box_valid_mean(img: np.ndarray) -> np.ndarray:
    """``filter2(ones(8)/64, img, 'valid')``, as direct separable sums (no running sums: their
    rounding error would be comparable to the tiny SSIM constants)."""
    return _filter_valid(img, _BOX8)


# MATLAB's filter2 separates a rank-1 window by SVD and filters with the two factors, which
# are not exactly 1/8, so the box filter of a constant image is not exactly the constant and
# the variance E[x^2] - E[x]^2 of a constant window is rounding noise, exactly 0 only for some
# constants. MATLAB's factors (from its LAPACK's SVD) are not known; these (0.125 or the next
# double up, the same for both passes, taps accumulated in order) were found by search to
# reproduce the reference QE of all 180 triples to ~1e-14: with them the noise is exactly 0 for
# the integers 0, 23, 46, 47, 91-95 and 182-191 (other factor sets that fit the references
# differ at most on 147, which they do not contain).
_BOX8_MATLAB = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0]) * 2.0**-55 + 0.125


def _matlab_box_of_constant(v: np.ndarray) -> np.ndarray:
    """What MATLAB's ``filter2(ones(8)/64, x, 'valid')`` gives over windows where ``x == v``."""
    t = np.zeros_like(v)
    for h in _BOX8_MATLAB:
        t = t + h * v
    out = np.zeros_like(v)
    for h in _BOX8_MATLAB:
        out = out + h * t
    return out


class _BoxStats:
    """8x8-box ('valid') mean and variance of one image; where its windows are constant, and
    MATLAB's (noisy) variance over those (computed when first needed: only for the sources)."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = x
        self.mean = _box_valid_mean(x)
        self.var = _box_valid_mean(x * x) - self.mean * self.mean

    @functools.cached_property
    def flat(self) -> np.ndarray:
        return _flat_windows(self.x, 8)

    @functools.cached_property
    def flat_noise_var(self) -> np.ndarray:
        """MATLAB's variance over the constant windows (rounding noise, often exactly 0);
        0 elsewhere, where it is not used."""
        x, flat = self.x, self.flat
        v = x[: x.shape[0] - 7, : x.shape[1] - 7][flat]
        m = _matlab_box_of_constant(v)
        out = np.zeros_like(self.var)
        out[flat] = _matlab_box_of_constant(v * v) - m * m
        return out


def _piella_weighted_index(sx: _BoxStats, sy: _BoxStats, sf: _BoxStats) -> float:
    """Piella's weighted fusion quality index Q_W (toolbox ``metricPeilla(..., 2)``).

    SSIM with an 8x8 box window ('valid') and K = [1e-6, 1e-6] (L = 255), i.e. almost UIQI;
    saliency = local variance; lambda = var(x) / (var(x) + var(y)) (0.5, with weight 0.5,
    where MATLAB's variances of both windows sum to exactly 0); window weights
    c_w = max(var(x), var(y)) normalised to sum to one.
    """
    c = (1e-6 * 255.0) ** 2
    mx, my, mf = sx.mean, sy.mean, sf.mean
    vx, vy, vf = sx.var, sy.var, sf.var
    cxf = _box_valid_mean(sx.x * sf.x) - mx * mf
    cyf = _box_valid_mean(sy.x * sf.x) - my * mf

    def ssim(m1: np.ndarray, m2: np.ndarray, v1: np.ndarray, v2: np.ndarray, cov: np.ndarray) -> np.ndarray:
        return ((2 * m1 * m2 + c) * (2 * cov + c)) / ((m1 * m1 + m2 * m2 + c) * (v1 + v2 + c))

    ssim_xf = ssim(mf, mx, vf, vx, cxf)
    ssim_yf = ssim(mf, my, vf, vy, cyf)
    # The toolbox adds 0.5 to both variances where their sum is exactly 0. That happens only
    # over windows constant in both images, and there only where MATLAB's rounding noise is
    # exactly 0 in both (see _BOX8_MATLAB); elsewhere on constant windows the noise leaves a
    # weight of ~1e-12, i.e. 0 (here their variance is 0 or, for non-integers, ~0).
    both_zero = sx.flat & sy.flat & (sx.flat_noise_var + sy.flat_noise_var == 0)
    vx = vx + both_zero * 0.5
    vy = vy + both_zero * 0.5
    denom = vx + vy
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = np.where(denom != 0, vx / denom, 0.5)
    cw = np.maximum(vx, vy)
    with np.errstate(divide="ignore", invalid="ignore"):  # all-constant images: NaN
        return float(np.sum(cw * (lam * ssim_xf + (1 - lam) * ssim_yf)) / np.sum(cw))


_PREWITT_X = np.array([[1.0, 0.0, -1.0], [1.0, 0.0, -1.0], [1.0, 0.0, -1.0]])
_PREWITT_Y = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -1.0, -1.0]])


def _prewitt_magnitude(img: np.ndarray) -> np.ndarray:
    gx = _filter2_same(_PREWITT_X, img)
    gy = _filter2_same(_PREWITT_Y, img)
    return np.sqrt(gx * gx + gy * gy)


def qe(a: ArrayLike, b: ArrayLike, f: ArrayLike, *, cache: MetricCache | None = None) -> float:
    """Piella's edge-dependent fusion quality index Q_E (survey-corrected
    ``metricPeilla(..., 3)``), -1..1: Q_W of the images times Q_W of their Prewitt edge
    magnitude images (alpha = 1). Q_W is a weighted mean of local UIQI-like indexes, each in
    -1..1; it is negative where F is anticorrelated with the sources, so Q_E can be negative
    too (a textured 64x64 A = B with F = 255 - A gives -0.78).

    Parameters
    ----------
    a, b : numpy.ndarray
        The source images.
    f : numpy.ndarray
        The fused image, of the sources' height and width. Each image gray (H, W) or colour
        (H, W, 3 or 4): uint8; uint16 (scaled to 8 bits alike, ``v / 257`` for 16-bit data;
        a uint16 F only beside uint16 A and B); other integers within 0-255; or finite floats
        on the 0-255 scale (not 0-1). See the module docstring.
    cache : MetricCache, optional
        Intermediate results of A and B, reused across calls with the same sources.

    Returns
    -------
    float
        Q_E, -1..1; NaN where undefined (0/0, e.g. constant images). As in MATLAB, a triple
        of one constant whose windows' rounding noise is exactly 0 there gives 1.0, not NaN:
        the toolbox adds 0.5 to both variances where they sum to exactly 0. That holds for an
        all-zero triple and for the constants 23, 46, 47, 91-95 and 182-191 (other constants,
        e.g. 100 or 255, give NaN).

    Raises
    ------
    UserError
        For images of different sizes, or of a type or values refused (module docstring), and
        images smaller than 8x8.
    """
    return _run(_qe, a, b, f, cache)


def _qe(a: np.ndarray, b: np.ndarray, f: np.ndarray, memo: Memo) -> float:
    if min(a.shape) < MIN_SIDE["QE"]:
        raise UserError(f"QE needs images of at least 8x8 pixels, got {a.shape[1]}x{a.shape[0]}")
    q = _piella_weighted_index(
        memo("box_stats", "a", lambda: _BoxStats(a)),
        memo("box_stats", "b", lambda: _BoxStats(b)),
        _BoxStats(f),
    )
    qw = _piella_weighted_index(
        memo("edge_box_stats", "a", lambda: _BoxStats(_prewitt_magnitude(a))),
        memo("edge_box_stats", "b", lambda: _BoxStats(_prewitt_magnitude(b))),
        _BoxStats(_prewitt_magnitude(f)),
    )
    return q * qw


# --------------------------------------------------------------------------------------------
# QCV (Chen-Varshney)


def _block_reduce_sum(x: np.ndarray, size: int) -> np.ndarray:
    """Sums over ``size`` x ``size`` blocks, the last ones zero padded (MATLAB ``blkproc``)."""
    h, w = x.shape
    ph, pw = -(-h // size) * size, -(-w // size) * size
    padded = np.zeros((ph, pw), dtype=np.float64)
    padded[:h, :w] = x
    return padded.reshape(ph // size, size, pw // size, size).sum(axis=(1, 3))


def qcv(a: ArrayLike, b: ArrayLike, f: ArrayLike, *, cache: MetricCache | None = None) -> float:
    """Chen-Varshney human-perception metric Q_CV (toolbox ``metricChen``); lower is better.

    On :func:`normalize1`-stretched images: region saliency = sum over 16x16 blocks of the
    Sobel edge strength to the power 5; dissimilarity = mean over each block of the squared
    source-minus-fused difference filtered by the Mannos-Sakrison CSF (frequencies scaled by
    size/8); Q_CV = sum(lambda_A D_A + lambda_B D_B) / sum(lambda_A + lambda_B).

    Parameters
    ----------
    a, b : numpy.ndarray
        The source images.
    f : numpy.ndarray
        The fused image, of the sources' height and width. Each image gray (H, W) or colour
        (H, W, 3 or 4): uint8; uint16 (scaled to 8 bits alike, ``v / 257`` for 16-bit data;
        a uint16 F only beside uint16 A and B); other integers within 0-255; or finite floats
        on the 0-255 scale (not 0-1). See the module docstring.
    cache : MetricCache, optional
        Intermediate results of A and B, reused across calls with the same sources.

    Returns
    -------
    float
        Q_CV, 0 or more (lower is better); NaN where undefined (flat sources).

    Raises
    ------
    UserError
        For images of different sizes, or of a type or values refused (module docstring).
    """
    return _run(_qcv, a, b, f, cache)


def _qcv(a: np.ndarray, b: np.ndarray, f: np.ndarray, memo: Memo) -> float:
    a, b, f = _norm(memo, "a", a), _norm(memo, "b", b), normalize1(f)
    window = 16
    alpha = 5.0
    hang, lie = a.shape

    def saliency(img: np.ndarray) -> np.ndarray:
        g, _ = _sobel_strength_angle(img)
        return _block_reduce_sum(g**alpha, window)

    lam_a = memo("chen_varshney_saliency", "a", lambda: saliency(a))
    lam_b = memo("chen_varshney_saliency", "b", lambda: saliency(b))

    u = _freqspace(lie) * (lie / 8.0)
    v = _freqspace(hang) * (hang / 8.0)
    uu, vv = np.meshgrid(u, v)
    r = np.sqrt(uu * uu + vv * vv)
    theta_m = 2.6 * (0.0192 + 0.144 * r) * np.exp(-((0.144 * r) ** 1.1))
    csf = np.fft.ifftshift(theta_m)[:, : lie // 2 + 1]  # symmetric: real output, half spectrum

    def dissimilarity(src: np.ndarray) -> np.ndarray:
        filtered = sfft.irfft2(sfft.rfft2(src - f) * csf, s=src.shape)
        return _block_reduce_sum(filtered * filtered, window) / (window * window)

    da = dissimilarity(a)
    db = dissimilarity(b)
    with np.errstate(divide="ignore", invalid="ignore"):  # flat sources: NaN, as in MATLAB
        return float(np.sum(lam_a * da + lam_b * db) / np.sum(lam_a + lam_b))


# --------------------------------------------------------------------------------------------
# registry and the combined call

METRICS: dict[str, Callable[..., float]] = {
    "QMI": qmi,
    "QG": qg,
    "QY": qy,
    "QCB": qcb,
    "QNCIE": qncie,
    "QP": qp,
    "QE": qe,
    "QCV": qcv,
}
"""Metric name -> function ``fn(a, b, f, *, cache=None)``, in output order (required first).
QCV is lower-is-better; all others higher-is-better."""

_IMPLS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray, Memo], float]] = {
    "QMI": _qmi,
    "QG": _qg,
    "QY": _qy,
    "QCB": _qcb,
    "QNCIE": _qncie,
    "QP": _qp,
    "QE": _qe,
    "QCV": _qcv,
}

REQUIRED_METRICS: tuple[str, ...] = ("QMI", "QG", "QY", "QCB")

VALUE_RANGES: dict[str, tuple[float, float]] = {
    "QMI": (0.0, 2.0),
    "QG": (0.0, 1.0),
    "QY": (-1.0, 1.0),
    "QCB": (0.0, 1.0),
    "QNCIE": (0.0, 1.0),
    "QP": (-1.0, 1.0),
    "QE": (-1.0, 1.0),
    "QCV": (0.0, math.inf),
}
"""Each metric's range as its function documents it, from its formula (QCV: at least 0):
:func:`bafusion.evaluation.evaluate.read_peer_metrics` refuses published values outside it.
QY, QP and QE are built from (local) correlations, each in -1..1, and are negative where F is
anticorrelated with the sources (QE of a textured A = B and F = 255 - A: -0.78). QG is below
0.9994 * 0.9879 (its sigmoids' gains) and QNCIE above 1 - log2(3)/8 (0.80), inside the ranges
given."""


def _parse_metric_names(names: str | Iterable[str] | None) -> list[str]:
    if names is None:
        return list(METRICS)
    if isinstance(names, str):  # "QG" or "QMI,QG" (it was walked letter by letter: 'Q' unknown)
        names = names.split(",")
    wanted: list[str] = []
    for raw in names:
        key = raw.strip().upper()
        if not key:
            continue
        if key not in METRICS:
            raise UserError(f"unknown metric {raw.strip()!r}; known: {', '.join(METRICS)}")
        if key not in wanted:
            wanted.append(key)
    if not wanted:
        raise UserError("no metric named")
    return [m for m in METRICS if m in wanted]


def compute_all(
    a: ArrayLike,
    b: ArrayLike,
    f: ArrayLike,
    metrics: str | Iterable[str] | None = None,
    *,
    cache: MetricCache | None = None,
    stage: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Compute several metrics of one triple (all of :data:`METRICS` by default; QP takes about
    a second on 520x520), ordered QMI, QG, QY, QCB, then the others. Colour inputs are
    converted to gray once, with :func:`bafusion.io.gray_float` (``rounded=True``). Pass a :class:`MetricCache` to reuse
    the sources' intermediate results across calls with the same A and B.

    Parameters
    ----------
    a, b : numpy.ndarray
        The source images.
    f : numpy.ndarray
        The fused image, of the sources' height and width. Each image gray (H, W) or colour
        (H, W, 3 or 4): uint8; uint16 (scaled to 8 bits alike, ``v / 257`` for 16-bit data;
        a uint16 F only beside uint16 A and B); other integers within 0-255; or finite floats
        on the 0-255 scale (not 0-1). See the module docstring.
    metrics : str or iterable of str, optional
        Metric names (any case), e.g. ``["QMI", "QG"]``, or one string ``"QG"`` or
        ``"QMI,QG"``; all eight when None.
    cache : MetricCache, optional
        Intermediate results of A and B, reused across calls with the same sources.
    stage : callable, optional
        Called with each metric's name just before it is computed (``bafusion metrics`` names
        them on a terminal: QP takes minutes on camera-size images).

    Returns
    -------
    dict of str to float
        Metric name -> value, in :data:`METRICS` order; NaN where a metric is undefined.

    Raises
    ------
    UserError
        For an unknown metric name, images of different sizes, or of a type or values
        refused (module docstring), or smaller than a metric asked for needs
        (:data:`MIN_SIDE`: every such metric named, before any is computed).
    """
    names = _parse_metric_names(metrics)
    ga, gb, gf = _prepare(a, b, f)
    # every metric the images are too small for, at once: QY's refusal of a 7x7 triple did not
    # say that QE needs 8x8, so asking for QE next was refused again
    small = [n for n in names if min(ga.shape) < MIN_SIDE.get(n, 0)]
    if small:
        need = " and ".join(f"{n} {'needs images ' if i == 0 else ''}of at least {MIN_SIDE[n]}x{MIN_SIDE[n]}"
                            + (" pixels" if i == 0 else "") for i, n in enumerate(small))
        raise UserError(f"{need}, got {ga.shape[1]}x{ga.shape[0]}")
    memo = _memo_for(cache, ga, gb)
    values: dict[str, float] = {}
    for name in names:
        if stage is not None:
            stage(name)
        values[name] = _IMPLS[name](ga, gb, gf, memo)
    return values


# --------------------------------------------------------------------------------------------
# command line


def _format_value(v: float | None) -> str:
    return "" if v is None else repr(float(v))


def undefined_reason(a: ArrayLike, b: ArrayLike, f: ArrayLike) -> str:
    """Why a metric can be undefined (NaN) on this triple, for the warning: which images are
    constant, whose flat contrast or saliency makes the metric's ratio 0/0."""
    flat = [n for n, x in zip("ABF", _prepare(a, b, f)) if x.size and np.ptp(x) == 0]
    if flat:
        which = flat[0] if len(flat) == 1 else ", ".join(flat[:-1]) + " and " + flat[-1]
        return f"{which} {'is' if len(flat) == 1 else 'are'} constant, so its ratio is 0/0"
    return "its ratio is 0/0 on these images"
