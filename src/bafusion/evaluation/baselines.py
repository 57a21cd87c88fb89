"""Native baseline fusion methods and access to other methods' published results.

* :func:`gff_fuse` -- guided-filter fusion (S. Li, X. Kang, J. Hu, "Image Fusion With Guided
  Filtering", IEEE TIP 22(7), 2013): two-scale decomposition by a 31x31 mean filter,
  Laplacian + Gaussian saliency, binary weight maps refined by guided filtering of the base
  (r1=45, eps1=0.3) and detail (r2=7, eps2=1e-6) layers. On the 20 Lytro pairs its output
  matches the survey's GFF images at 58.6-69.2 dB PSNR, and its QMI, QG, QY, QCB are within
  0.6% of the survey's values on every pair.
* :func:`laplacian_fuse` -- Laplacian-pyramid fusion: max-abs selection on the detail levels,
  average on the coarsest (base) level.
* :func:`read_method_results` -- fused images of other methods stored as
  ``<root>/<METHOD>/<pair>.<ext>``.

Both fusion functions take two images of one shape, gray (H x W) or colour (H x W x 3),
uint8 or float on the [0, 255] scale, and return a float64 image in [0, 255] of that shape.
The ``bafusion baseline`` command is :mod:`bafusion.cli.baselines`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage

from bafusion.errors import InputFileError, UserError
from bafusion.io import gray_float, read_image

__all__ = [
    "METHODS",
    "IMAGE_EXTENSIONS",
    "box_filter",
    "guided_filter",
    "gff_fuse",
    "laplacian_fuse",
    "fuse",
    "find_method_result",
    "read_method_results",
]

IMAGE_EXTENSIONS: tuple[str, ...] = ("png", "jpg", "jpeg", "tif", "tiff", "bmp")
"""The common extensions of a method's results, named in messages. :func:`read_method_results`
reads every photo format ``fuse-dir`` and a dataset's pairs take (:func:`bafusion.io.read_suffixes`:
WebP, GIF, ``.jfif``, ... too), in that order, the suffix in any case."""


# --------------------------------------------------------------------------------------------
# helpers


def _as_float_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise UserError(f"source images differ in shape: {a.shape} vs {b.shape}")
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3)):
        raise UserError(f"expected gray (H x W) or RGB (H x W x 3) images, got shape {a.shape}")
    return a.astype(np.float64), b.astype(np.float64)


def box_filter(img: np.ndarray, r: int) -> np.ndarray:
    """Sum over the (2r+1) x (2r+1) window around each pixel, truncated at the borders
    (He's ``boxfilter``); a running-sum filter, O(1) per pixel whatever ``r``."""
    size = 2 * r + 1
    mean = ndimage.uniform_filter(np.asarray(img, dtype=np.float64), size=size, mode="constant")
    return mean * float(size * size)


def guided_filter(guide: np.ndarray, src: np.ndarray, r: int, eps: float) -> np.ndarray:
    """He, Sun and Tang's guided filter with a gray guide (window (2r+1)^2, regulariser eps)."""
    n = box_filter(np.ones_like(guide, dtype=np.float64), r)
    mean_i = box_filter(guide, r) / n
    mean_p = box_filter(src, r) / n
    cov_ip = box_filter(guide * src, r) / n - mean_i * mean_p
    var_i = box_filter(guide * guide, r) / n - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return (box_filter(a, r) / n) * guide + box_filter(b, r) / n


def _per_channel(img: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    if img.ndim == 2:
        return fn(img)
    return np.stack([fn(img[:, :, c]) for c in range(img.shape[2])], axis=2)


# --------------------------------------------------------------------------------------------
# GFF


def gff_fuse(
    a: np.ndarray,
    b: np.ndarray,
    r1: int = 45,
    eps1: float = 0.3,
    r2: int = 7,
    eps2: float = 1e-6,
) -> np.ndarray:
    """Guided-filter fusion of two images (Li, Kang, Hu 2013) with the paper's parameters.

    Images are scaled to [0, 1]; base layers are 31x31 mean-filtered images (mirrored
    borders, scipy's ``reflect``), detail layers the remainders. Saliency is the absolute 3x3 Laplacian of the gray
    image smoothed by an 11x11 Gaussian (sigma 5); the binary weight maps (which source is most
    salient) are refined by a guided filter with the gray source as guide, (r1, eps1) for the
    base and (r2, eps2) for the detail layers, and normalised to sum to one per pixel.
    Returns a float64 image in [0, 255] of the input's shape.
    """
    fa, fb = _as_float_pair(a, b)
    srcs = [fa / 255.0, fb / 255.0]
    grays = [gray_float(s, matlab_order=True) for s in srcs]

    mean31 = lambda x: ndimage.uniform_filter(x, size=31, mode="reflect")  # noqa: E731
    bases = [_per_channel(s, mean31) for s in srcs]
    details = [s - base for s, base in zip(srcs, bases)]

    lap = np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
    x = np.arange(-5, 6, dtype=np.float64)
    g = np.exp(-(x * x) / (2.0 * 5.0 * 5.0))
    g /= g.sum()
    sal = []
    for gray in grays:
        h = np.abs(ndimage.correlate(gray, lap, mode="nearest"))
        h = ndimage.correlate1d(h, g, axis=0, mode="nearest")
        sal.append(ndimage.correlate1d(h, g, axis=1, mode="nearest"))
    sal_stack = np.stack(sal)
    winners = sal_stack == sal_stack.max(axis=0, keepdims=True)
    p = winners.astype(np.float64)

    wb = np.stack([guided_filter(gray, p[i], r1, eps1) for i, gray in enumerate(grays)])
    wd = np.stack([guided_filter(gray, p[i], r2, eps2) for i, gray in enumerate(grays)])
    wb = wb + 1e-12
    wd = wd + 1e-12
    wb /= wb.sum(axis=0, keepdims=True)
    wd /= wd.sum(axis=0, keepdims=True)

    if fa.ndim == 3:
        wb = wb[..., None]
        wd = wd[..., None]
    fused = sum(bases[i] * wb[i] + details[i] * wd[i] for i in range(2))
    return np.clip(np.asarray(fused) * 255.0, 0.0, 255.0)


# --------------------------------------------------------------------------------------------
# Laplacian pyramid

_BINOMIAL5 = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _blur(x: np.ndarray) -> np.ndarray:
    x = ndimage.correlate1d(x, _BINOMIAL5, axis=0, mode="mirror")
    return ndimage.correlate1d(x, _BINOMIAL5, axis=1, mode="mirror")


def _reduce(x: np.ndarray) -> np.ndarray:
    return _blur(x)[::2, ::2]


def _expand(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    up = np.zeros(shape, dtype=np.float64)
    up[::2, ::2] = x
    # each output pixel receives weights from the zero-interleaved grid: scale by 4
    return _blur(up) * 4.0


def _laplacian_pyramid(x: np.ndarray, levels: int) -> list[np.ndarray]:
    pyr = []
    cur = x
    for _ in range(levels - 1):
        down = _reduce(cur)
        pyr.append(cur - _expand(down, cur.shape))
        cur = down
    pyr.append(cur)
    return pyr


def _auto_levels(shape: tuple[int, ...], max_levels: int = 6, min_size: int = 8) -> int:
    levels = 1
    size = min(shape[:2])
    while levels < max_levels and size // 2 >= min_size:
        size //= 2
        levels += 1
    return levels


def laplacian_fuse(a: np.ndarray, b: np.ndarray, levels: int | None = None) -> np.ndarray:
    """Laplacian-pyramid fusion: detail coefficients of larger magnitude win, the base
    (coarsest) level is averaged. ``levels`` defaults to as many as keep the coarsest level at
    least 8 pixels (at most 6). Colour images are fused channel by channel with the selection
    taken from the gray images' coefficients, so that channels stay consistent.
    Returns a float64 image in [0, 255] of the input's shape.
    """
    fa, fb = _as_float_pair(a, b)
    n = levels if levels is not None else _auto_levels(fa.shape)
    if n < 1:
        raise UserError(f"pyramid levels must be at least 1, got {n}")
    ga = _laplacian_pyramid(gray_float(fa, matlab_order=True), n)
    gb = _laplacian_pyramid(gray_float(fb, matlab_order=True), n)
    choose_a = [np.abs(la) >= np.abs(lb) for la, lb in zip(ga[:-1], gb[:-1])]

    def fuse_channel(xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
        pa = _laplacian_pyramid(xa, n)
        pb = _laplacian_pyramid(xb, n)
        cur = 0.5 * (pa[-1] + pb[-1])
        for lvl in range(n - 2, -1, -1):
            detail = np.where(choose_a[lvl], pa[lvl], pb[lvl])
            cur = _expand(cur, detail.shape) + detail
        return cur

    if fa.ndim == 2:
        out = fuse_channel(fa, fb)
    else:
        out = np.stack([fuse_channel(fa[:, :, c], fb[:, :, c]) for c in range(fa.shape[2])], axis=2)
    return np.clip(out, 0.0, 255.0)


METHODS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "gff": gff_fuse,
    "laplacian": laplacian_fuse,
}
"""Native baseline name -> fusion function."""


def fuse(method: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Fuse ``a`` and ``b`` with a native baseline named in :data:`METHODS`."""
    key = method.lower()
    if key not in METHODS:
        raise UserError(f"unknown baseline method {method!r}; known: {', '.join(METHODS)}")
    return METHODS[key](a, b)


# --------------------------------------------------------------------------------------------
# other methods' results


def find_method_result(root: str | os.PathLike[str], method: str, pair: str) -> Path | None:
    """The file ``<root>/<method>/<pair>.<ext>`` (ext any photo format a dataset's pairs take,
    :func:`bafusion.io.read_suffixes`, in any case) that :func:`read_method_results` reads, or None.

    Raises
    ------
    bafusion.errors.InputFileError
        Naming the files when the pair's result is stored twice (``p1.png`` and ``p1.jpg``, as
        evaluate's own ``fused/<method>/`` holds with ``jpeg_quality``): which one is the image
        to measure cannot be told, and they differ (a JPEG and its lossless original)."""
    folder = Path(root) / method
    found = _method_result_files(folder, pair)
    if len(found) > 1:
        raise InputFileError(folder, f"the result of pair {pair!r} by method {method!r} is stored "
                                     f"{len(found)} times, {', '.join(f.name for f in found)}: keep one "
                                     "(rename or remove the others), as which one to measure cannot be told")
    return found[0] if found else None


def _method_result_files(folder: Path, pair: str) -> list[Path]:
    """Every ``<folder>/<pair>.<ext>`` of :func:`find_method_result` (one file counted once):
    a file, or an entry that is no file to read but for a folder (a named pipe, a device, a
    socket, a broken link), which the reader names for what it is
    (:func:`bafusion.io.formats._not_regular`): left out, it made the result "missing"."""
    from bafusion.io import read_suffixes

    # every format a dataset's pairs take (only png, jpg, jpeg, tif, tiff and bmp were: a method's
    # WebP results were "missing" beside the files), the suffix in any case (p1.Png was missing)
    suffixes = read_suffixes()
    by_stem = _names_by_stem(folder)
    if by_stem is None:  # no folder: nothing found, said by the callers
        return []
    names = [folder / n for n in by_stem.get(pair, ()) if Path(n).suffix.lower() in suffixes]
    found: list[Path] = []
    for path in sorted(names, key=lambda p: (suffixes.index(p.suffix.lower()), p.name)):
        if (path.is_file() or (os.path.lexists(path) and not path.is_dir())) \
                and not any(_same(path, f) for f in found):  # p1.png, p1.PNG: one file on macOS
            found.append(path)
    return found


#: A folder's names by stem, keyed by the folder as given and its identity and mtime (see
#: :func:`_names_by_stem`): a few folders, the oldest dropped first.
_LISTINGS: dict[tuple[str, int, int, int], dict[str, list[str]]] = {}
_LISTINGS_MAX = 32
#: A listing is kept only when the folder's mtime is this much older than the listing: a name
#: added or removed within one tick of the file system's clock (1 s on ext3 and HFS+, 2 s on
#: FAT) leaves the mtime as it was, and a listing of that tick would be stale unseen.
_RACY_NS = 2_500_000_000


def _names_by_stem(folder: Path) -> dict[str, list[str]] | None:
    """The names in ``folder`` (not those starting with a dot) by stem, or None when it cannot
    be listed. Every lookup of :func:`find_method_result` listed the whole folder, so a dataset's
    N pairs took N listings of N names (2000 pairs: 7.1 s, measured): a folder is listed once
    while its mtime stays as it was (a name added, removed or renamed changes it), unless it
    changed so recently that a change in the same clock tick could not be told
    (:data:`_RACY_NS`)."""
    try:
        st = os.stat(folder)
    except OSError:
        return None
    key = (os.fspath(folder), st.st_dev, st.st_ino, st.st_mtime_ns)
    cached = _LISTINGS.get(key)
    if cached is not None:
        return cached
    listed_at = time.time_ns()
    try:
        names = os.listdir(folder)
    except OSError:
        return None
    by_stem: dict[str, list[str]] = {}
    for name in names:
        if not name.startswith("."):
            by_stem.setdefault(Path(name).stem, []).append(name)
    if listed_at - st.st_mtime_ns >= _RACY_NS:
        while len(_LISTINGS) >= _LISTINGS_MAX:
            _LISTINGS.pop(next(iter(_LISTINGS)), None)
        _LISTINGS[key] = by_stem
    return by_stem


def _same(p: Path, q: Path) -> bool:
    try:
        return p.samefile(q)
    except OSError:  # a broken link: the link itself
        try:
            a, b = os.lstat(p), os.lstat(q)
        except OSError:
            return False
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _not_regular_result(path: Path, method: str, pair: str) -> None:
    """Raise an :class:`InputFileError` naming ``path`` (pair ``pair``'s result by ``method``)
    when it is no file to read: a named pipe, a device, a socket (read, a pipe hangs) or a
    broken link, said as evaluate says it of a source
    (:func:`bafusion.io.formats._not_regular`)."""
    from bafusion.io.formats import _not_regular

    why = _not_regular(path)
    if why:
        article = "a " if why.startswith("broken") else ""
        raise InputFileError(path, f"the fused image of pair {pair!r} by method {method!r} is {article}{why}")


def read_method_results(
    root: str | os.PathLike[str],
    method: str,
    pair: str,
    sources: tuple[str | os.PathLike[str], str | os.PathLike[str]] | None = None,
) -> np.ndarray:
    """Read ``<root>/<method>/<pair>.<ext>`` (ext png, jpg, tif, webp, ...: as a dataset's pairs) as uint8.

    Parameters
    ----------
    root : str or path-like
        The folder of the methods' folders.
    method, pair : str
        The method (its folder) and the pair (the file's stem).
    sources : (path, path), optional
        The pair's source files A and B: the result is read beside them as ``bafusion
        metrics`` reads an F (:func:`bafusion.evaluation.metrics.read_metric_files`): of more
        than 8 bits, scaled alike with them, and refused when it marks no significant bits
        beside an 8-bit A or B (its depth cannot be told: a dark 16-bit result would read 4 or
        16 times too bright). Without them the file is read alone (:func:`bafusion.io.read_image`).

    Returns
    -------
    numpy.ndarray
        uint8, (H, W) or (H, W, 3).

    Raises
    ------
    bafusion.errors.InputFileError
        Naming the pair, the method and the folder searched when no such file exists (or it
        cannot be decoded); naming the files when there are two (:func:`find_method_result`);
        naming the entry when it is a named pipe, a device, a socket or a broken link.
    bafusion.errors.UserError
        With ``sources``: naming the files, for an unmarked deeper result beside an 8-bit source.
    """
    folder = Path(root) / method
    path = find_method_result(root, method, pair)
    if path is not None:
        _not_regular_result(path, method, pair)
        if sources is None:
            return read_image(path)
        from bafusion.evaluation.metrics import read_metric_files

        return read_metric_files(sources[0], sources[1], path).images[2]
    if not folder.is_dir():
        problem = f"no results of method {method!r}: folder missing (wanted pair {pair!r})"
    else:
        problem = (
            f"no fused image of pair {pair!r} by method {method!r} "
            f"(looked for {pair}.{{{','.join(IMAGE_EXTENSIONS)},...}}, any format a dataset's pairs take)"
        )
    raise InputFileError(folder, problem)


# --------------------------------------------------------------------------------------------
