"""Procedural object mattes for the builtin data source.

Real alpha mattes (alphamatting.com) are an opaque object with a soft rim: a transition a
few pixels wide along smooth contours and wider, ragged transitions where there is hair or
fur. ``object_matte`` imitates that: a smooth random blob (a thresholded low-frequency
random field biased towards the image centre) whose edge is made soft by a logistic ramp,
with the ramp's width modulated along the contour by a second random field, so some
stretches are crisp and others fuzzy. Deterministic for a given seed.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    f -= f.mean()
    s = f.std()
    return f / s if s > 0 else f


def object_matte(
    shape: tuple[int, int],
    seed: int,
    coverage: tuple[float, float] = (0.25, 0.55),
    edge_px: tuple[float, float] = (0.5, 2.5),
) -> np.ndarray:
    """A soft object matte, uint8 (H, W), 255 = foreground.

    ``coverage``: range of the foreground's share of the image, drawn per matte.
    ``edge_px``: range of the logistic ramp's scale in pixels (crisp .. fuzzy), varied along
    the contour.
    """
    h, w = shape
    rng = np.random.default_rng(seed)
    side = min(h, w)
    # Centre bias: an ellipse around a jittered centre.
    cy = h * rng.uniform(0.35, 0.65)
    cx = w * rng.uniform(0.35, 0.65)
    ry = h * rng.uniform(0.25, 0.45)
    rx = w * rng.uniform(0.25, 0.45)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    ell = 1.0 - np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    shape_field = 2.0 * ell + 0.6 * _smooth_field(rng, (h, w), side / 10) + 0.25 * _smooth_field(rng, (h, w), side / 30)
    # Threshold at the quantile giving the drawn coverage.
    cov = rng.uniform(*coverage)
    t = np.quantile(shape_field, 1.0 - cov)
    # Signed distance to the contour (pixels), positive inside.
    inside = shape_field >= t
    if not inside.any() or inside.all():
        inside = ell >= 0
    dist = np.where(inside, ndimage.distance_transform_edt(inside), -ndimage.distance_transform_edt(~inside))
    # Edge softness varies along the contour.
    lo, hi = edge_px
    soft = lo + (hi - lo) * (0.5 + 0.5 * np.tanh(1.5 * _smooth_field(rng, (h, w), side / 12)))
    # Fine ragged structure in the fuzzy stretches (hair-like): perturb the distance.
    rag = _smooth_field(rng, (h, w), 1.0) * (soft - lo) * 0.6
    alpha = 1.0 / (1.0 + np.exp(-(dist + rag) / soft))
    return np.clip(np.round(alpha * 255.0), 0, 255).astype(np.uint8)


#: A matte with fewer than this share of its pixels on its minority side (foreground >= 128
#: or background < 128) is warned about: almost every label of its composites is one class.
#: The 27 alphamatting.com training mattes (low-resolution set) have 19% to 70% foreground.
MINORITY_WARN = 0.01


def check_matte_range(matte: np.ndarray, path: object) -> None:
    """Refuse a matte stored on the 0..1 scale (a numpy 0/1 mask saved as an 8-bit image):
    read as 0..255 it is background everywhere, and every label of its composites says "not
    focused in A". An all-0 matte is left to :func:`matte_warning`."""
    from bafusion.errors import InputFileError

    if matte.size and int(matte.max()) == 1:
        raise InputFileError(path, "matte values are 0..1; mattes are 0..255 (multiply by 255)")


def matte_warning(matte: np.ndarray) -> str | None:
    """A line when almost every pixel of ``matte`` (uint8, 255 = foreground) is on one side of
    128 (fewer than :data:`MINORITY_WARN` on the other), else None."""
    if not matte.size:
        return None
    fg = float(np.count_nonzero(matte >= 128)) / matte.size
    if min(fg, 1.0 - fg) >= MINORITY_WARN:
        return None
    share, side = (1.0 - fg, "background (0)") if fg < 0.5 else (fg, "foreground (255)")
    return (f"the matte is {100 * share:.2f}% {side}: almost every label of its composites is one class "
            "(mattes are 0..255, 255 = foreground)")
