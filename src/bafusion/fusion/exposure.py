"""Exposure matching for scoring (:attr:`FusionParams.exposure_match`): shots of a real focus
bracket differ in exposure and tone (auto-exposure, a changed aperture, flicker), and a net
trained on shots of equal exposure reads a brighter, higher-contrast shot as the sharper one, so
whole regions get the wrong source. Before the nets score the pair, the gray B is mapped onto
A's exposure by a gain and an offset fitted on heavily low-passed copies of both (a Gaussian of
``sigma`` px: what is left there is exposure and tone, not focus). Only the scoring input
changes: the fused pixels are the sources' own.

Measured in ``benchmarks/realistic_validation.py`` and on the real development pairs
(BENCHMARKS.md, "Exposure matching").
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from bafusion.errors import UserError

__all__ = ["fit_exposure", "match_exposure"]

#: Gaussian sigma (px) of the low-pass copies the gain and offset are fitted on.
SIGMA = 8.0
#: The fit is used only where the low-passed shots correlate at least this much (an exposure
#: difference keeps them proportional; a low correlation means the low-pass still sees the
#: focus difference, e.g. a page of text sharp in one shot: 0.53 on the classic newspaper pair,
#: 0.76 on the real savic-08; 0.94 and above on the other real pairs, 0.99 and above on Lytro and
#: the other classic pairs).
MIN_CORRELATION = 0.9
#: Shots whose gain is within this of 1 and whose mean level moves by less than
#: :data:`SAME_LEVEL` gray levels count as exposed alike and are left as they are (the research
#: pairs: Lytro gains 0.96-1.06; a fit there would only move B by rounding).
SAME_GAIN = 0.03
SAME_LEVEL = 2.0


def fit_exposure(ga: np.ndarray, gb: np.ndarray, sigma: float = SIGMA) -> tuple[float, float, float]:
    """Gain and offset that map B's exposure onto A's, ``A ~ gain * B + offset``.

    The low-passed copies' means and standard deviations are matched (moment matching:
    symmetric in A and B, unlike a least-squares slope, which the focus difference left in
    the low-pass would bias towards 0).

    Parameters
    ----------
    ga, gb : ndarray
        Gray sources, (H, W), of one size, on the [0, 255] scale.
    sigma : float
        Gaussian sigma (px) of the low-pass copies; a border of ``2 * sigma`` px is left out.

    Returns
    -------
    tuple of float
        ``(gain, offset, correlation)`` of the low-passed copies; ``(1.0, 0.0, 0.0)`` when
        either is flat.
    """
    if ga.shape != gb.shape or ga.ndim != 2:
        raise UserError(f"exposure matching needs two gray images of one size, got {ga.shape} and {gb.shape}")
    # uint8 in, float64 out: ndimage filters each line in float64 either way (the same bits as
    # filtering a float64 copy), without the copy
    la = ndimage.gaussian_filter(ga, sigma, output=np.float64)
    lb = ndimage.gaussian_filter(gb, sigma, output=np.float64)
    m = int(2 * sigma)
    if min(ga.shape) > 4 * m:
        la, lb = la[m:-m, m:-m], lb[m:-m, m:-m]
    la, lb = la.ravel(), lb.ravel()
    sa, sb = float(la.std()), float(lb.std())
    if sa < 1e-6 or sb < 1e-6:
        return 1.0, 0.0, 0.0
    corr = float(((la - la.mean()) * (lb - lb.mean())).mean() / (sa * sb))
    gain = sa / sb
    return gain, float(la.mean() - gain * lb.mean()), corr


def match_exposure(ga: np.ndarray, gb: np.ndarray, sigma: float = SIGMA) -> np.ndarray:
    """B's gray mapped onto A's exposure (:func:`fit_exposure`), rounded to uint8.

    Parameters
    ----------
    ga, gb : ndarray
        uint8 gray sources, (H, W), of one size.
    sigma : float
        See :func:`fit_exposure`.

    Returns
    -------
    ndarray
        uint8 (H, W): ``round(gain * gb + offset)``, clipped to [0, 255]; ``gb`` itself when
        the shots are exposed alike (:data:`SAME_GAIN`, :data:`SAME_LEVEL`) or the fit is not
        reliable (correlation below :data:`MIN_CORRELATION`).
    """
    gain, offset, corr = fit_exposure(ga, gb, sigma)
    level = (gain - 1.0) * float(gb.mean()) + offset
    if corr < MIN_CORRELATION or (abs(gain - 1.0) < SAME_GAIN and abs(level) < SAME_LEVEL):
        return gb
    if gb.dtype != np.uint8:
        return np.clip(np.round(gain * gb.astype(np.float64) + offset), 0, 255).astype(np.uint8)
    # uint8: a table of the 256 levels (the same arithmetic, so the same bits), not 24 MP of float64
    return np.clip(np.round(gain * np.arange(256, dtype=np.float64) + offset), 0, 255).astype(np.uint8)[gb]
