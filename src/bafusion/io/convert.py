"""Gray conversion, rounding to uint8 and resizing of image arrays.

Gray (:func:`gray_float`, :func:`to_gray_u8`): MATLAB ``rgb2gray``, coefficients
:data:`RGB2GRAY`. The uint8 variant (:func:`to_gray_u8`; as float64: ``gray_float(img,
rounded=True)``) is MATLAB's ``rgb2gray`` on uint8 data, the weighted sum rounded half away
from zero and clipped: how the reference metric code sees colour images, and what fusion
decides on. The float variant is the sum unrounded, in one of two summation orders that are a
documented fact, not a duplicate:

* the default, a matrix product ``img @ RGB2GRAY`` -- what the data stages (composite, COCO
  sharpness, stacks) always computed, kept so that their outputs stay bit for bit;
* ``matlab_order=True``: ``r*c0 + g*c1 + b*c2`` in that order, as MATLAB (and the ported GFF
  and Laplacian baselines) compute it; the rounded variant always uses it.

The two orders differ by up to one ulp (5.7e-14) on 18% of the 2**24 uint8 colours, which is
enough to flip a rounding or a ``>=`` deep inside the baselines (measured: 12 of the 146
baseline fusions of the evaluation pairs change in some pixels), so each side keeps its
order. After rounding they never differ on uint8 data: no uint8 colour's gray lies within
4.5e-6 of a rounding tie (``tests/test_io.py`` checks all 2**24), so the uint8 gray is one.

Also :func:`round_half_away` (MATLAB's ``round``), :func:`to_uint8` (a [0, 255] float image
to uint8), :func:`resize` (Lanczos) and :func:`scaled_size`.
"""

from __future__ import annotations

import threading

import numpy as np
from PIL import Image


#: MATLAB ``rgb2gray`` coefficients for R, G, B (the reference metric code and our patches use these).
RGB2GRAY = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])


def _gray_input(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[2] == 1:
        return a[..., 0]
    if a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4)):
        return a
    raise ValueError(f"expected a gray (H x W) or colour (H x W x 3 or 4) image, got shape {a.shape}")


def gray_float(img: np.ndarray, *, rounded: bool = False, matlab_order: bool = False) -> np.ndarray:
    """MATLAB ``rgb2gray`` as float64 on the [0, 255] scale.

    Parameters
    ----------
    img : numpy.ndarray
        Gray (H, W) or (H, W, 1), or colour (H, W, 3) or (H, W, 4) (alpha ignored), uint8 or
        float on the [0, 255] scale.
    rounded : bool
        False: the weighted sum, unrounded. True: the sum (in MATLAB's order) rounded half away
        from zero and clipped to [0, 255], as MATLAB's ``rgb2gray`` returns it for uint8 data
        (what the reference metric code sees); equal to ``to_gray_u8(img)`` as float64.
    matlab_order : bool
        Unrounded sum in MATLAB's order ``r*c0 + g*c1 + b*c2`` (the baselines) instead of the
        matrix product ``img @ RGB2GRAY`` (the data stages); see the module docstring for
        why both exist. Ignored when ``rounded`` (always MATLAB's order).

    Returns
    -------
    numpy.ndarray
        (H, W) float64. Gray input is returned as a float64 copy, never rounded.

    Raises
    ------
    ValueError
        For any other shape.
    """
    a = _gray_input(img)
    if a.ndim == 2:
        return a.astype(np.float64, copy=True)
    if not (rounded or matlab_order):
        return _rgb_dot(a)
    g = _matlab_sum(a)
    return np.clip(round_half_away(g), 0.0, 255.0) if rounded else g


#: Bytes of float64 colour that :func:`_rgb_dot` converts at once (a block of whole rows).
_DOT_BLOCK_BYTES = 1 << 24


def _rgb_dot(a: np.ndarray) -> np.ndarray:
    """``a[..., :3].astype(numpy.float64) @ RGB2GRAY``, the same values, a block of rows at a
    time: without the whole image's float64 colour copy (576 MB for a 24 MP shot, made three
    times by ``--align``; about 1 s of CPU each). numpy's matmul sums each pixel's three
    products by the same call whichever rows it is given, so the blocks change no bit (tested
    against the one-piece product)."""
    if a.ndim != 3 or a.shape[0] == 0:
        return a[..., :3].astype(np.float64) @ RGB2GRAY
    out = np.empty(a.shape[:-1], dtype=np.float64)
    h = a.shape[0]
    # two rows or more a block: a block of one row from an image whose rows are not its slowest
    # axis (Fortran order) is laid out otherwise by astype, and matmul took BLAS's path for it
    # (its last row's bits differed from the one-piece product's)
    rows = max(2, _DOT_BLOCK_BYTES // max(1, a.shape[1] * 3 * 8))
    r = 0
    while r < h:
        n = rows + 1 if h - r == rows + 1 else rows  # no last block of one row
        np.matmul(a[r:r + n, :, :3].astype(np.float64), RGB2GRAY, out=out[r:r + n])
        r += n
    return out


def _matlab_sum(a: np.ndarray) -> np.ndarray:
    """``r*c0 + g*c1 + b*c2`` in float64, in that order (MATLAB's)."""
    c = RGB2GRAY
    return a[..., 0].astype(np.float64) * c[0] + a[..., 1].astype(np.float64) * c[1] + a[..., 2].astype(np.float64) * c[2]


def round_half_away(a: np.ndarray) -> np.ndarray:
    """MATLAB ``round``: halves go away from zero (numpy's ``round`` goes to even).

    Parameters
    ----------
    a : ndarray
        Numbers of any shape.

    Returns
    -------
    ndarray
        The rounded values as floats, of ``a``'s shape (float32 stays float32; integers give
        float64).
    """
    return np.sign(a) * np.floor(np.abs(a) + 0.5)


def to_uint8(a: np.ndarray) -> np.ndarray:
    """A [0, 255] image as uint8: rounded half away from zero (MATLAB's ``round``), clipped.
    Computed in the input's own float type (float32 stays float32, as the data stages had it).

    Parameters
    ----------
    a : array_like
        An image of any shape on the 0-255 scale (float; values outside are clipped).

    Returns
    -------
    ndarray of uint8
        Of ``a``'s shape.
    """
    return np.clip(round_half_away(np.asarray(a)), 0, 255).astype(np.uint8)


def to_gray_u8(img: np.ndarray) -> np.ndarray:
    """MATLAB ``rgb2gray`` on uint8 data: the uint8 gray (H, W), ``gray_float(img,
    rounded=True)`` as uint8; gray input passes through (a float one rounded to uint8).

    Parameters
    ----------
    img : numpy.ndarray
        Gray (H, W) or (H, W, 1), or colour (H, W, 3) or (H, W, 4) (alpha ignored), uint8 or
        float on the [0, 255] scale.

    Returns
    -------
    numpy.ndarray
        (H, W) uint8: the weighted sum in MATLAB's order rounded half away from zero and
        clipped to [0, 255]; gray uint8 input as a copy, gray float input rounded so.

    Raises
    ------
    ValueError
        For any other shape.
    """
    a = _gray_input(img)
    if a.ndim == 2:
        return a.copy() if a.dtype == np.uint8 else to_uint8(a.astype(np.float64))
    if a.dtype == np.uint8 and a.shape[0] * a.shape[1] >= GRAY_TABLE_MIN_PIXELS:
        return _gray_by_table(a)  # a table of every (r, g, b): bit-identical, 10-20x faster than the sum
    return to_uint8(_matlab_sum(a))  # rounded once: the same as to_uint8(gray_float(a, rounded=True))


_GRAY_TABLE: np.ndarray | None = None
_GRAY_TABLE_LOCK = threading.Lock()

#: Colour images of at least this many pixels are converted by :func:`_gray_by_table`; smaller
#: ones by the sum (the same bits), so that a small image does not pay for building the table.
GRAY_TABLE_MIN_PIXELS = 1 << 20


def _gray_table() -> np.ndarray:
    """uint8 (2**24,): ``to_uint8(_matlab_sum(rgb))`` of every uint8 ``(r, g, b)``, indexed by
    ``r << 16 | g << 8 | b`` (16 MB, built once: the same float64 operations in the same order
    as :func:`_matlab_sum`, so the same bits; compared on every colour in tests/test_io.py)."""
    global _GRAY_TABLE
    if _GRAY_TABLE is not None:
        return _GRAY_TABLE
    with _GRAY_TABLE_LOCK:  # two shots converted side by side (bafusion.threads.side_by_side): built once
        if _GRAY_TABLE is not None:
            return _GRAY_TABLE
        v = np.arange(256, dtype=np.float64)
        c = RGB2GRAY
        table = np.empty((256, 256, 256), np.uint8)
        for r0 in range(0, 256, 16):  # 16 reds at a time: 8 MB of float64, not 134 MB
            r = v[r0:r0 + 16, None, None]
            table[r0:r0 + 16] = to_uint8((r * c[0] + v[None, :, None] * c[1]) + v[None, None, :] * c[2])
        _GRAY_TABLE = table.ravel()
    return _GRAY_TABLE


def _gray_by_table(a: np.ndarray, rows: int = 256) -> np.ndarray:
    """:func:`to_gray_u8` of uint8 colour (H, W, 3 or 4) by :func:`_gray_table`, a band of
    ``rows`` rows at a time (no float64 copies of a 24 MP image: 26 s of a camera pair under load)."""
    table = _gray_table()
    h, w = a.shape[:2]
    out = np.empty((h, w), np.uint8)
    for y in range(0, h, rows):
        s = a[y:y + rows]
        idx = s[..., 0].astype(np.uint32) << 16
        idx |= s[..., 1].astype(np.uint32) << 8
        idx |= s[..., 2]
        np.take(table, idx, out=out[y:y + rows])
    return out


def resize(img: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Antialiased (Lanczos) resize of a uint8 gray/RGB image or a float gray image; mattes too,
    so soft edges stay soft.

    Parameters
    ----------
    img : ndarray
        uint8 (H, W) or (H, W, C), or a float gray (H, W) image (computed in float32).
    size_hw : tuple of (int, int)
        The new (height, width).

    Returns
    -------
    ndarray
        uint8 for a uint8 image, float32 for a float one (not rounded or clipped: Lanczos
        overshoots); a copy when the size is unchanged.

    Raises
    ------
    ValueError
        A float image that is not gray (H, W).
    """
    h, w = size_hw
    if img.shape[:2] == (h, w):
        return img.copy()
    if img.dtype != np.uint8:  # float gray: resized in float (PIL mode "F"), no rounding
        if img.ndim != 2:
            raise ValueError("float images must be gray (H, W)")
        im = Image.fromarray(img.astype(np.float32), mode="F")
        return np.asarray(im.resize((w, h), Image.Resampling.LANCZOS, reducing_gap=None), dtype=np.float32).copy()
    im = Image.fromarray(img)
    return np.asarray(im.resize((w, h), Image.Resampling.LANCZOS, reducing_gap=None), dtype=np.uint8).copy()


def scaled_size(shape_hw: tuple[int, ...], scale: float) -> tuple[int, int]:
    """The (height, width) of an image of shape ``shape_hw`` resized by ``scale`` (for
    :func:`resize`), as the data stages and ``bafusion params check`` compute it.

    Parameters
    ----------
    shape_hw : tuple of int
        An array's shape; its first two entries (height, width) are used.
    scale : float
        The factor.

    Returns
    -------
    tuple of (int, int)
        ``(round(h * scale), round(w * scale))``, each at least 1 (Python's ``round``: halves
        to even).
    """
    h, w = shape_hw[:2]
    return max(1, round(h * scale)), max(1, round(w * scale))
