"""Steps 1-3 of the fusion rule on a gray pair at its own size: the initial net's score
``s0``, its Eq. 1 window mean, the Eq. 2 near-boundary mask and the refined score ``s1``
(:func:`decide`). Binarisation and post-processing: :mod:`bafusion.fusion.rule`; camera-size
pairs: :mod:`bafusion.fusion.working`.

Flat-region filling (``fuse.flat_level`` > 0; off in the paper preset, :func:`fill_flat`):
where the two sources hardly differ (a blank page, a clear sky, the gaps between lines of
text) the nets' vote carries no focus information, and the choice there does not change the
fused pixels; but the vote enters Eq. 1's window mean and the binarised map, and a net that
learnt "flat reads as defocused in A" pulls whole regions to the wrong source. With filling,
each pixel's score is blended with the mean score of its surroundings, both weighted by how
much A and B differ: pixels where they differ keep their own score, flat pixels take their
textured neighbours' decision. It is applied to ``s0`` before Eq. 1 and, when the boundary
net has rescored pixels, to ``s1`` again.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from scipy import ndimage

from bafusion.fusion.models import FusionNets
from bafusion.fusion.params import FusionParams
from bafusion.fusion.scoring import _logit, at_centre, boundary_steps, score, score_multiscale

__all__ = ["blend_scores", "decide", "fill_flat", "window_mean"]


def window_mean(s: np.ndarray, l: int) -> np.ndarray:  # noqa: E741
    """Eq. 1: mean over the (2l+1) x (2l+1) window around each pixel (reflect at borders).

    Parameters
    ----------
    s : ndarray, (H, W)
        Score map (probabilities in [0, 1]).
    l : int
        Window half-size, >= 0; 0: the map itself.

    Returns
    -------
    ndarray of float32, (H, W)
        The window means (computed in float64).
    """
    if l == 0:
        return s.astype(np.float32)
    return ndimage.uniform_filter(s.astype(np.float64), size=2 * l + 1, mode="reflect").astype(np.float32)


def fill_flat(s: np.ndarray, ga: np.ndarray, gb: np.ndarray, level: float, sigma: float,
              diff_sigma: float = 2.0) -> np.ndarray:
    """Flat-region filling of a score map: flat pixels take their textured neighbours' score.

    With ``d`` the absolute gray difference of the sources smoothed by a Gaussian of
    ``diff_sigma`` px and the confidence ``c = d / (d + level)``::

        fill = G_sigma * (c s) / G_sigma * c
        out  = c s + (1 - c) fill

    Parameters
    ----------
    s : ndarray, (H, W)
        Score map in [0, 1] (1: focused in A).
    ga, gb : ndarray, (H, W)
        The gray sources the nets scored (uint8 or float, gray levels 0-255).
    level : float
        Gray levels of difference at which a pixel keeps half its own score (> 0).
    sigma : float
        Gaussian sigma (px) of the neighbourhood the fill is taken from.
    diff_sigma : float
        Gaussian sigma (px) smoothing the difference ``|A - B|``.

    Returns
    -------
    ndarray of float32, (H, W)
        In [0, 1]. Where no pixel within reach differs (``G_sigma * c`` below 1e-6, e.g. two
        identical sources), the score is kept.
    """
    if level <= 0:
        raise ValueError(f"fill_flat: level must be > 0, got {level}")
    d = ndimage.gaussian_filter(np.abs(ga.astype(np.float32) - gb.astype(np.float32)), diff_sigma, mode="reflect")
    c = d / (d + np.float32(level))
    s = s.astype(np.float32)
    num = ndimage.gaussian_filter(s * c, sigma, mode="reflect")
    den = ndimage.gaussian_filter(c, sigma, mode="reflect")
    ok = den > 1e-6
    fill = np.where(ok, num / np.where(ok, den, 1.0), s)
    return np.clip(c * s + (1 - c) * fill, 0.0, 1.0).astype(np.float32)


def blend_scores(s_boundary: np.ndarray, s_initial: np.ndarray, weight: float) -> np.ndarray:
    """The refined score of a near-boundary pixel: ``sigmoid(w * logit(s_boundary) + (1 - w) *
    logit(s_initial))``, the two nets' votes weighted in log-odds (``fuse.boundary_weight``).

    Parameters
    ----------
    s_boundary, s_initial : ndarray
        The boundary and initial nets' scores in [0, 1] (1: focused in A), same shape.
    weight : float
        In [0, 1]. 1: the boundary net's score alone (the paper's Eq. 2 replacement), returned
        as it is; 0: the initial net's.

    Returns
    -------
    ndarray of float32
    """
    if weight >= 1.0:
        return s_boundary.astype(np.float32)
    z = weight * _logit(s_boundary).astype(np.float64) + (1.0 - weight) * _logit(s_initial).astype(np.float64)
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def decide(
    ga: np.ndarray, gb: np.ndarray, nets: FusionNets, params: FusionParams, bar=None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """Steps 1-3 of the rule on a gray pair at its own size: the initial score ``s0``, its
    window mean, the near-boundary mask and the refined score ``s1``, with the seconds taken.
    ``bar`` (a tqdm bar), if given, advances by one after each net.

    With ``params.flat_level`` > 0 (:func:`fill_flat`), ``s0`` is the initial net's score
    after filling (so that thresholding it is the rule without refinement, ``Ours-initial``),
    the window mean is that of this ``s0``, and ``s1`` is filled again after the boundary
    net has rescored the near-boundary pixels. With ``params.boundary_weight`` < 1 a
    near-boundary pixel's ``s1`` weighs both nets' votes (:func:`blend_scores`).

    Parameters
    ----------
    ga, gb : ndarray of uint8, (H, W)
        The gray sources (gray levels 0-255).
    nets : FusionNets
        The initial and boundary nets.
    params : FusionParams
        The rule's constants (a checked :class:`FusionParams`, not a mapping).
    bar : tqdm bar, optional
        Advanced by one after each net.

    Returns
    -------
    s0 : ndarray of float32, (H, W)
        The initial net's score (probability that A is in focus, in [0, 1]).
    mean : ndarray of float32, (H, W)
        Eq. 1: the window mean of ``s0`` (:func:`window_mean`, half-size ``params.l``).
    near : ndarray of bool, (H, W)
        Eq. 2: ``params.low < mean < params.high``, the near-boundary pixels.
    s1 : ndarray of float32, (H, W)
        ``s0`` with the near-boundary pixels rescored by the boundary net (equal to ``s0``
        without ``params.refine`` or near-boundary pixels).
    seconds : dict of str to float
        Seconds taken, under ``"initial"`` and ``"boundary"``.
    """
    dev = nets.device
    t = {}
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=params.precision == "bf16")
    t0 = time.perf_counter()
    with amp:
        s0 = score_multiscale(nets.initial, ga, gb, nets.patch_initial, params, device=dev,
                              centre=at_centre(params.score_position, nets.label_positions[0]))
    t["initial"] = time.perf_counter() - t0
    if bar is not None:
        bar.update(1)
        bar.set_postfix_str("boundary net")
    t0 = time.perf_counter()
    fill = params.flat_level > 0
    if fill:
        s0 = fill_flat(s0, ga, gb, params.flat_level, params.flat_sigma)
    mean = window_mean(s0, params.l)
    near = (mean > params.low) & (mean < params.high)
    s1 = s0.copy()
    if params.refine and near.any():
        bstep = boundary_steps(params, nets.patch_boundary)[0]
        with amp:
            sb = score(nets.boundary, ga, gb, nets.patch_boundary, params, bstep, mask=near, device=dev,
                       centre=at_centre(params.score_position, nets.label_positions[1]))
        s1[near] = blend_scores(sb[near], s0[near], params.boundary_weight)
        if fill:  # the boundary net's scores on flat pixels are no better informed
            s1 = fill_flat(s1, ga, gb, params.flat_level, params.flat_sigma)
    t["boundary"] = time.perf_counter() - t0
    if bar is not None:
        bar.update(1)
    return s0, mean, near, s1, t
