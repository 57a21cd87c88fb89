"""Steps 1-3 of the fusion rule on a gray pair at its own size: the initial net's score
``s0``, its Eq. 1 window mean, the Eq. 2 near-boundary mask and the refined score ``s1``
(:func:`decide`). Binarisation and post-processing: :mod:`bafusion.fusion.rule`; camera-size
pairs: :mod:`bafusion.fusion.working`.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from scipy import ndimage

from bafusion.fusion.models import FusionNets
from bafusion.fusion.params import FusionParams
from bafusion.fusion.scoring import boundary_steps, score, score_multiscale

__all__ = ["decide", "window_mean"]


def window_mean(s: np.ndarray, l: int) -> np.ndarray:  # noqa: E741
    """Eq. 1: mean over the (2l+1) x (2l+1) window around each pixel (reflect at borders)."""
    if l == 0:
        return s.astype(np.float32)
    return ndimage.uniform_filter(s.astype(np.float64), size=2 * l + 1, mode="reflect").astype(np.float32)


def decide(
    ga: np.ndarray, gb: np.ndarray, nets: FusionNets, params: FusionParams, bar=None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """Steps 1-3 of the rule on a gray pair at its own size: the initial score ``s0``, its
    window mean, the near-boundary mask and the refined score ``s1``, with the seconds taken.
    ``bar`` (a tqdm bar), if given, advances by one after each net."""
    dev = nets.device
    t = {}
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=params.precision == "bf16")
    t0 = time.perf_counter()
    with amp:
        s0 = score_multiscale(nets.initial, ga, gb, nets.patch_initial, params, device=dev)
    t["initial"] = time.perf_counter() - t0
    if bar is not None:
        bar.update(1)
        bar.set_postfix_str("boundary net")
    t0 = time.perf_counter()
    mean = window_mean(s0, params.l)
    near = (mean > params.low) & (mean < params.high)
    s1 = s0.copy()
    if params.refine and near.any():
        bstep = boundary_steps(params, nets.patch_boundary)[0]
        with amp:
            sb = score(nets.boundary, ga, gb, nets.patch_boundary, params, bstep, mask=near, device=dev)
        s1[near] = sb[near]
    t["boundary"] = time.perf_counter() - t0
    if bar is not None:
        bar.update(1)
    return s0, mean, near, s1, t
