"""Is it one scene? A cheap check, without alignment, that the shots of one fusion show the same
scene, so that a glob of two unrelated pairs is refused instead of fused into a collage.

The score is the normalised correlation of the gray shots blurred by a Gaussian of
:data:`SIGMA` x (long side / 520) pixels (a coarse scale, where the focus difference barely
changes them), on the shots as they are, after a block-mean reduction of large shots to a long
side of at most :data:`WORK_SIDE` pixels (so the cost does not grow with the camera's resolution
and the Gaussian sees the same share of the scene). The correlation of gradient magnitudes
(:func:`bafusion.fusion.align.match_quality`) was measured too and separates worse without alignment:
a strongly defocused real pair (savic-08) scores 0.21 there. Shots whose short side is below
:data:`MIN_SIDE` are too small to judge and are not checked. The threshold
:data:`MIN_CORRELATION` was measured on the real pairs of ``shared/data/eval`` (none may be
refused) and on mismatched pairs (all must be): ``benchmarks/bench_scene.py``, BENCHMARKS.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from bafusion.errors import UserError
from bafusion.io import gray_float

#: Below this correlation two shots are taken for two scenes (BENCHMARKS.md, "One scene?").
MIN_CORRELATION = 0.55

#: Gaussian blur (pixels at a long side of 520) before the correlation.
SIGMA = 4.0

#: Long side (pixels) the shots are reduced to before the check.
WORK_SIDE = 520

#: Shots with a shorter side are not checked.
MIN_SIDE = 64


def _reduce(img: np.ndarray) -> np.ndarray:
    """Gray float image, block-mean reduced by the integer factor that brings its long side
    to at most :data:`WORK_SIDE`."""
    a = np.asarray(img, dtype=np.float64)
    if a.ndim == 3:
        a = gray_float(a) if a.shape[2] in (1, 3, 4) else a[..., 0]
    k = math.ceil(max(a.shape) / WORK_SIDE)
    if k > 1:
        h, w = (a.shape[0] // k) * k, (a.shape[1] // k) * k
        a = a[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3))
    return a / 255.0


def scene_correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Correlation of two same-size uint8 shots at a coarse scale (see the module's doc): near 1
    for one scene however focused, near 0 for two scenes; None when they are too small to judge.

    Parameters
    ----------
    a, b : numpy.ndarray
        uint8 gray (H, W) or colour (H, W, 3) shots of the same size.

    Returns
    -------
    float or None
    """
    if min(a.shape[:2]) < MIN_SIDE:
        return None
    ra, rb = _reduce(a), _reduce(b)
    sigma = SIGMA * max(ra.shape) / 520.0
    ra = ndimage.gaussian_filter(ra, sigma).ravel()
    rb = ndimage.gaussian_filter(rb, sigma).ravel()
    ra -= ra.mean()
    rb -= rb.mean()
    den = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb / den) if den > 1e-12 else 0.0


def check_one_scene(images: Sequence[np.ndarray], names: Sequence[str], force: bool = False) -> list[float | None]:
    """Correlation of every shot with the first; raise :class:`UserError` naming the first shot
    below :data:`MIN_CORRELATION` unless ``force``.

    Parameters
    ----------
    images : sequence of numpy.ndarray
        Same-size uint8 shots.
    names : sequence of str
        Their file names, for the message.
    force : bool
        Return the correlations without refusing.

    Returns
    -------
    list of float or None
        One per shot after the first.
    """
    scores = [scene_correlation(images[0], im) for im in images[1:]]
    if not force:
        for name, c in zip(names[1:], scores):
            if c is not None and c < MIN_CORRELATION:
                raise UserError(
                    f"{name}: does not look like the same scene as {names[0]} (correlation {c:.2f} at a coarse "
                    f"scale, below {MIN_CORRELATION}); use --force to fuse anyway"
                )
    return scores
