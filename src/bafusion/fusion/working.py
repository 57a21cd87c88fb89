"""Camera-size pairs: the decision at a working resolution, refined at full resolution.

A 32-pixel patch of a 12-megapixel photo sees a few percent of what it sees on a 520x520
pair, and the defocus blur is several times wider in pixels: the nets, trained where a patch
sees the focus cue, are slower there (the cost grows with the pixels and with the width of
the near-boundary band) and less sure. A pair whose long side exceeds
``FusionParams.working_above`` (1024) is therefore fused in three steps:

1. **Working resolution.** Both gray sources are downscaled (antialiased, Lanczos) so that
   the long side is ``working_side`` pixels, and the paper's rule runs there unchanged
   (:func:`bafusion.fusion.decide`: initial net, Eq. 1-2, boundary net on the near-boundary
   band), giving the refined score ``s1`` at working resolution. A pair wider than 16:9 (a
   panorama, :data:`WIDEST_FRAME`) keeps instead the short side of a 16:9 frame,
   ``working_side * 9 / 16`` (360 px at 640), never more than its own
   (:func:`working_resolution`): scaled by the long side alone, an 8:1 panorama was decided
   at 640x80, where its subject is a few patches high (every pixel was taken from B where
   the 520x520 fusion of the scene takes 17 % from A), and a pair whose working size would
   be its own is decided at its size.
2. **Full size.** The logit of ``s1`` is brought to full size (bilinear). Its decision
   boundary is accurate to about one working pixel, ``k = long side / working long side``
   full-resolution pixels (``long side / working_side`` up to 16:9).
3. **Boundary band at full resolution.** Only the pixels within ``working_band``
   full-resolution pixels of that boundary (a band whose width does not grow with the
   scale) are refined, tile by tile (bounded memory), by ``working_refine``:

   * ``"guided"``: a guided filter (He, Sun, Tang, 2013) of the upsampled score, with the gray
     of the provisional fusion (A where the score says A, else B: the in-focus edges of both
     sources) as the guide, radius ``2k``: the boundary snaps to the full-resolution edges;
   * ``"boundary"``: the boundary net rescored in the band at full resolution
     (:func:`bafusion.fusion.score`, adaptive grid), its vote weighed with the upsampled
     initial score by ``boundary_weight`` (:func:`bafusion.fusion.decide.blend_scores`),
     then the guided filter;
   * ``"none"``: the upsampled score as it is.

Pixels outside the band keep the upsampled score. The returned maps are full size: the
initial score and the Eq. 1 mean are the working maps brought to full size, ``near`` is the
band. Small-region removal and Eq. 3 then run at full size as for any pair
(:func:`bafusion.fusion.fuse_images`).

A pair of a camera's 4 megapixels or more (:data:`PROGRESS_MIN_PIXELS`: 3.5 MP) shows a
progress bar on stderr when stderr is a terminal (:func:`progress_bar`: one step per net, one
for the upsampling and one for the band, which its tiles advance in equal fractions), in
``fuse`` and ``fuse-set`` alike; logs (so the pipeline's steps) never get one, and ``--no-progress`` silences it. With ``params.refine``
off (the ``Ours-initial`` ablation) the band is still guided-filtered: only ``"boundary"``
uses the boundary net.

Timing, memory and the agreement with the 520x520 decision: ``benchmarks/bench_camera.py``
and BENCHMARKS.md ("Camera resolution").
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from bafusion.fusion.params import PROGRESS_MIN_PIXELS as _PROGRESS_MIN_PIXELS
from bafusion.threads import side_by_side

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from bafusion.fusion.models import FusionNets
    from bafusion.fusion.params import FusionParams


#: Side (full-resolution pixels) of the tiles the band is refined in.
BAND_TILE = 512

#: Largest factor a small pair is upscaled by (:func:`decide_upscaled`): on held-out
#: composites shrunk to ~256 px, accuracy and SSIM fell beyond x2 (BENCHMARKS.md,
#: "Small photographs").
MAX_UPSCALE = 2.0

#: Pixels from which a fusion shows a progress bar (when stderr is a terminal): a camera's
#: "4 megapixels" and up, a few seconds on a 2-core CPU. The sizes sold as 4 MP fall on both
#: sides of 4,000,000 (2272x1704 = 3.87 MP, 2304x1728 = 3.98, 2448x1632 = 3.995; 2560x1440,
#: 3.69, for 16:9): at 4,000,000 most of them got no bar, so 3.5 MP (1920x1080, 2.1, none).
#: Defined in :mod:`bafusion.fusion.params`, which the command line's parser reads.
PROGRESS_MIN_PIXELS = _PROGRESS_MIN_PIXELS

#: The steps of a camera-size pair's fusing bar (:func:`decide_working`, then the small
#: regions and the composite of :func:`bafusion.fusion.fuse_images`), each with its CPU seconds
#: per megapixel of the working resolution (the nets run there: 640 px long side by default,
#: whatever the pair's size) and per megapixel at full size (the reduction to the working size,
#: the maps, the band, the small regions): ``(name, per working MP, per full-size MP)``. The bar
#: advances by each step's share of the time these give for the pair's size
#: (:func:`fusing_step_seconds`). Fitted (non-negative least squares) to the CPU seconds of
#: lytro-05 upscaled to 4, 12 and 24 MP (JPEG q92, the defaults, one torch thread, five runs;
#: BENCHMARKS.md "Where a camera-size fusion's time goes"): the nets took 78 % of a 4 MP pair's
#: fusing CPU and 34 % of a 24 MP pair's; with one 24 MP pair's shares for every size (0.6.0) a
#: 4 MP pair's bar said 12-16 s were left after the nets when 3 s were (now 4-6 s).
FUSING_STEP_COST = (("initial net", 1.00, 0.017), ("boundary net", 3.9, 0.0), ("full size", 0.0, 0.058),
                    ("band", 0.42, 0.039), ("small regions", 0.0, 0.041))


def fusing_step_seconds(pixels: float, working_pixels: float) -> list[float]:
    """The CPU seconds each step of the fusing bar (:data:`FUSING_STEP_COST`) takes for a pair
    of ``pixels`` pixels decided at ``working_pixels``, as measured on one core.

    Parameters
    ----------
    pixels : float
        Pixels of one shot at full size (height times width).
    working_pixels : float
        Pixels of one shot at the working resolution (:func:`working_resolution`).

    Returns
    -------
    list of float
        One figure a step, in order.
    """
    return [per_working * working_pixels / 1e6 + per_full * pixels / 1e6
            for _, per_working, per_full in FUSING_STEP_COST]


def fusing_weights(post: bool = True, pixels: float = 6000 * 4000, working_pixels: float = 640 * 427) -> list[float]:
    """What each step of the fusing bar (:data:`FUSING_STEP_COST`) advances it by, in steps of
    the average cost: they sum to the number of steps.

    Parameters
    ----------
    post : bool
        With the small regions and the composite (the bar of :func:`bafusion.fusion.fuse_images`,
        five steps); False: :func:`decide_working`'s own bar, four steps.
    pixels, working_pixels : float
        Pixels of one shot at full size and at the working resolution (:func:`fusing_step_seconds`);
        by default a 24 MP pair's (6000x4000 decided at 640x427).

    Returns
    -------
    list of float
        One weight a step, in order.
    """
    w = fusing_step_seconds(pixels, working_pixels)[: 5 if post else 4]
    return [len(w) * x / sum(w) for x in w]


class _WeightedBar:
    """A tqdm bar's stand-in whose steps advance it by their weights: ``update(1)`` ends the
    current step, ``update(f)`` a fraction ``f`` of it (the band's tiles)."""

    def __init__(self, bar, weights: Sequence[float]) -> None:
        self.bar, self.weights = bar, list(weights)
        self.k, self.frac = 0, 0.0

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.bar.set_postfix_str(s, refresh=refresh)

    def update(self, n: float = 1) -> None:
        while n > 1e-12 and self.k < len(self.weights):
            take = min(n, 1.0 - self.frac)
            n -= take
            self.frac += take
            if self.frac >= 1.0 - 1e-9:  # the step's end: exactly at the sum of the weights so far
                self.k, self.frac = self.k + 1, 0.0
                self.bar.update(sum(self.weights[: self.k]) - self.bar.n)
            else:
                self.bar.update(self.weights[self.k] * take)

    def end_step(self) -> None:
        """The current step done, whatever fraction of it was counted."""
        if self.k < len(self.weights):
            self.update(1.0 - self.frac)


#: Widest frame (long side, short side) whose working resolution is set by its long side:
#: 16:9, the widest of ordinary photos and video frames. A wider pair keeps the short side
#: such a frame would have (:func:`working_resolution`).
WIDEST_FRAME = (16, 9)


def working_resolution(shape_hw: tuple[int, ...], working_side: int) -> tuple[int, int]:
    """(h, w) a camera-size pair is decided at (:func:`decide_working`).

    Up to 16:9 (:data:`WIDEST_FRAME`; 4:3, 3:2, 16:9 photos, either way up) the long side is
    ``working_side`` (:func:`working_size`). A wider pair (a panorama, a strip) is scaled so
    that its short side is that of a 16:9 frame, ``working_side * 9 / 16`` pixels, but never
    upscaled: scaled by its long side alone, an 8:1 pair's short side would be 80 px at
    640, a few patches, and a 64:1 strip's 10 px.

    Parameters
    ----------
    shape_hw : tuple of int
        (H, W, ...) of the sources.
    working_side : int
        ``FusionParams.working_side`` (> 0).

    Returns
    -------
    tuple of int
        (h, w), at most (H, W); (H, W) itself when the pair is not shrunk at all.
    """
    h, w = shape_hw[:2]
    long, short = max(h, w), min(h, w)
    wide, high = WIDEST_FRAME
    if high * long <= wide * short:  # up to 16:9: by the long side, as always
        return working_size(shape_hw, working_side)
    f = min(1.0, working_side * high / wide / short)
    return max(1, round(h * f)), max(1, round(w * f))


def uses_working(shape_hw: tuple[int, ...], params: "FusionParams") -> bool:
    """Whether a pair of this size is decided at the working resolution.

    Parameters
    ----------
    shape_hw : tuple of int
        (H, W, ...) of the sources.
    params : FusionParams
        ``working_side`` (0: never) and ``working_above``; ``exact`` (the reference) always
        works at full size.

    Returns
    -------
    bool
        True when ``working_side > 0``, the long side exceeds both ``working_above`` and
        ``working_side``, and the working resolution (:func:`working_resolution`) is smaller
        than the pair (a strip narrower than a 16:9 frame's short side is decided at its size).
    """
    long = max(shape_hw[:2])
    return (bool(params.working_side) and not params.exact and long > max(params.working_above, params.working_side)
            and working_resolution(shape_hw, params.working_side) != tuple(shape_hw[:2]))


def uses_upscale(shape_hw: tuple[int, ...], params: "FusionParams") -> bool:
    """Whether a pair this small is decided upscaled (:func:`decide_upscaled`).

    True when ``params.working_min > 0``, the long side is below it, and not ``exact``.
    """
    return bool(params.working_min) and not params.exact and max(shape_hw[:2]) < params.working_min


def upscale_side(shape_hw: tuple[int, ...], params: "FusionParams") -> float:
    """Long side a small pair is decided at (:func:`decide_upscaled`): ``params.working_min``,
    but at most :data:`MAX_UPSCALE` times the pair's own long side."""
    return min(params.working_min, MAX_UPSCALE * max(shape_hw[:2]))


def decision_size(shape_hw: tuple[int, ...], params: "FusionParams") -> tuple[int, int] | None:
    """(h, w) at which a pair of this size is decided, when that is not its own size.

    The working resolution when :func:`uses_working` (:func:`working_resolution`), the
    upscaled size when :func:`uses_upscale` (long side :func:`upscale_side`), checked in that
    order as :func:`bafusion.fusion.fuse_images` does; None: the pair is decided at its size.
    """
    if uses_working(shape_hw, params):
        return working_resolution(shape_hw, params.working_side)
    if uses_upscale(shape_hw, params):
        return working_size(shape_hw, upscale_side(shape_hw, params))
    return None


def patch_note(shape_hw: tuple[int, ...], params: "FusionParams", patch: int,
               names: "Sequence[str]" = ("A", "B")) -> str | None:
    """A note for a pair decided at a size narrower than the nets' patch, else None.

    The nets judge ``patch`` x ``patch`` windows (32 px); a pair decided at a height or width
    below that (a thumbnail of a few pixels, a strip a few rows high; after any upscaling,
    :func:`decision_size`) gives them windows that are mostly the reflected border, so the
    decision says little about focus (a 7x7 pair took every pixel from B). The fusion is
    still made (its pixels are the sources'); the note tells the user.

    Parameters
    ----------
    shape_hw : tuple of int
        (H, W, ...) of the sources.
    params : FusionParams
        The fusion's parameters (:func:`decision_size`).
    patch : int
        The nets' patch side (:attr:`bafusion.fusion.FusionNets.patch_initial`).
    names : sequence of str
        The sources' names (two: "a.png and b.png"; more: "the 5 shots a.png to e.png").

    Returns
    -------
    str or None
        The note, or None when both sides of the decided size are at least ``patch``.
    """
    h, w = shape_hw[:2]
    dh, dw = decision_size(shape_hw, params) or (h, w)
    if min(dh, dw) >= patch:
        return None
    at = "" if (dh, dw) == (h, w) else f", decided at {dw}x{dh}"
    who = f"{names[0]} and {names[1]}" if len(names) == 2 else f"the {len(names)} shots {names[0]} to {names[-1]}"
    return (f"{who} are {w}x{h} (WxH){at}: less than the nets' {patch}-pixel patch "
            f"{'high' if dh < patch else 'wide'}, their patches see mostly the mirrored border, so which "
            "shot each pixel comes from is a guess, not a measure of focus")


def scales_note(shape_hw: tuple[int, ...], params: "FusionParams", patch: int) -> str | None:
    """A note naming the scales of ``params.scales`` that the multi-scale scoring skips for a
    pair of this size, else None.

    :func:`bafusion.fusion.score_multiscale` scores the pair at a scale below 1 only while the
    downscaled pair, at the size it is decided at (:func:`decision_size`), keeps a short side of
    at least ``params.scale_min_side`` (and the nets' ``patch``: the note names whichever is the
    larger, the limit that skips it); a scale given and skipped was silent. The text names no file, so that a batch says it once a size (it starts with
    ``fuse.``, as the notes on settings do).

    Parameters
    ----------
    shape_hw : tuple of int
        (H, W, ...) of the sources.
    params : FusionParams
        The fusion's parameters: ``scales``, ``scale_min_side``, ``exact`` (one scale) and
        those of :func:`decision_size`.
    patch : int
        The initial net's patch side.

    Returns
    -------
    str or None
        The note, or None when every scale is used (or only the full one is given).
    """
    if params.exact:
        return None
    h, w = shape_hw[:2]
    dh, dw = decision_size(shape_hw, params) or (h, w)
    side = max(patch, params.scale_min_side)
    skipped = [s for s in params.scales if s < 1.0 and min(max(1, round(dh * s)), max(1, round(dw * s))) < side]
    if not skipped:
        return None
    at = f"{w}x{h}" + ("" if (dh, dw) == (h, w) else f", decided at {dw}x{dh}")
    listed = ", ".join(f"{s:g}" for s in skipped)
    # the limit that skips them: fuse.scale_min_side, or the nets' patch side where it is larger
    limit = (f"fuse.scale_min_side ({side} px)" if params.scale_min_side >= patch else
             f"the initial net's patch side ({patch} px; fuse.scale_min_side, {params.scale_min_side} px, is less)")
    return (f"fuse.scales (--scales): scale{'s' if len(skipped) > 1 else ''} {listed} skipped for a {at} (WxH) pair: "
            f"there its short side would be under {limit}, so the initial net judged it at the other scales only")


def resize_gray(g: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """A gray source resized to the size it is decided at: Lanczos (antialiased when
    shrinking) in float, clipped to [0, 255], float32."""
    from bafusion.io import resize

    return np.clip(resize(g.astype(np.float32), size_hw), 0, 255)


def decide_upscaled(
    ga: np.ndarray, gb: np.ndarray, nets: "FusionNets", params: "FusionParams", bar=None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """Steps 1-3 of the rule on a small pair, decided upscaled to ``working_min``.

    A small photo (a web-size copy, a thumbnail) has been downscaled from the camera's
    resolution: its defocus blur is a pixel or less and its details few pixels wide, so a
    patch sees little of the focus cue. Both gray sources are upscaled (Lanczos, in float) so
    that the long side is ``params.working_min`` (by at most :data:`MAX_UPSCALE`), the rule
    runs there unchanged
    (:func:`bafusion.fusion.decide`), and the scores are brought back to the source size
    (Lanczos, antialiased; clipped to [0, 1]); ``near`` is recomputed from the returned mean.
    Small-region removal and Eq. 3 then run at the source size. Measured on held-out
    composites shrunk to small-photo size: BENCHMARKS.md, "Small photographs".

    Parameters
    ----------
    ga, gb : ndarray, (H, W)
        Gray sources (uint8 or float, gray levels).
    nets, params
        As for :func:`bafusion.fusion.decide`; the other fields apply at the upscaled size.
    bar
        A tqdm bar, advanced by :func:`bafusion.fusion.decide`.

    Returns
    -------
    s0, mean, near, s1, seconds
        As :func:`bafusion.fusion.decide` returns them, at the source size.
    """
    from bafusion.fusion.decide import decide
    from bafusion.io import resize

    h, w = ga.shape
    hs, ws = working_size(ga.shape, upscale_side(ga.shape, params))
    sa, sb = resize_gray(ga, (hs, ws)), resize_gray(gb, (hs, ws))
    s0u, meanu, _nearu, s1u, t = decide(sa, sb, nets, replace(params, working_min=0, working_side=0), bar=bar)

    def back(m: np.ndarray) -> np.ndarray:
        return np.clip(resize(m.astype(np.float32), (h, w)), 0, 1).astype(np.float32)

    s0, mean, s1 = back(s0u), back(meanu), back(s1u)
    return s0, mean, (mean > params.low) & (mean < params.high), s1, t


def working_size(shape_hw: tuple[int, ...], working_side: float) -> tuple[int, int]:
    """(h, w) of the working resolution: the long side ``working_side``, aspect kept."""
    h, w = shape_hw[:2]
    f = working_side / max(h, w)
    return max(1, round(h * f)), max(1, round(w * f))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float32), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _upsample(m: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear (half-pixel centres) resize of a float map to ``size_hw``, float32."""
    import torch  # here, not at the top: the command line reads this module's constants without torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]
    return F.interpolate(t, size=size_hw, mode="bilinear", align_corners=False)[0, 0].numpy()


def boundary_band(dm: np.ndarray, half_width: int) -> np.ndarray:
    """Pixels within ``half_width`` pixels (chessboard distance) of a change of ``dm``.

    Parameters
    ----------
    dm : ndarray of bool, (H, W)
        A decision map.
    half_width : int
        Band half-width in pixels.

    Returns
    -------
    ndarray of bool, (H, W)
        True on both sides of every boundary between True and False pixels.
    """
    edge = np.zeros(dm.shape, dtype=bool)
    dv = dm[1:] != dm[:-1]
    edge[1:] |= dv
    edge[:-1] |= dv
    dh = dm[:, 1:] != dm[:, :-1]
    edge[:, 1:] |= dh
    edge[:, :-1] |= dh
    if half_width <= 1 or not edge.any():
        return edge
    return ndimage.maximum_filter(edge.view(np.uint8), size=2 * half_width - 1).astype(bool)


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """The guided filter of He, Sun and Tang (TPAMI 2013) with a gray guide.

    Parameters
    ----------
    guide : ndarray, (H, W)
        Guide image (float, any range; ``eps`` is in its squared units).
    src : ndarray, (H, W)
        Map to filter.
    radius : int
        Box radius: windows of (2 radius + 1)^2 pixels (reflect at the borders).
    eps : float
        Regularisation: edges of the guide with a local variance well above ``eps`` are kept.

    Returns
    -------
    ndarray of float32, (H, W)
        Locally a linear function of the guide that follows ``src`` on average.
    """
    size = 2 * radius + 1
    g = guide.astype(np.float32)
    s = src.astype(np.float32)

    def box(x: np.ndarray) -> np.ndarray:
        return ndimage.uniform_filter(x, size=size, mode="reflect")

    mg, ms = box(g), box(s)
    var = box(g * g) - mg * mg
    cov = box(g * s) - mg * ms
    a = cov / (var + np.float32(eps))
    b = ms - a * mg
    return (box(a) * g + box(b)).astype(np.float32)


def _tiles(band: np.ndarray, tile: int) -> list[tuple[int, int, int, int]]:
    """Tiles (r0, r1, c0, c1) of side ``tile`` that hold band pixels."""
    h, w = band.shape
    out = []
    for r0 in range(0, h, tile):
        for c0 in range(0, w, tile):
            r1, c1 = min(h, r0 + tile), min(w, c0 + tile)
            if band[r0:r1, c0:c1].any():
                out.append((r0, r1, c0, c1))
    return out


def progress_bar(total: int, pixels: int, progress: bool | None, desc: str = "fusing", *,
                 fractional: bool = False):
    """A tqdm bar on stderr, or a disabled one.

    Parameters
    ----------
    total : int
        Steps of the bar.
    pixels : int
        Pixels of the pair: below :data:`PROGRESS_MIN_PIXELS` the bar is not shown.
    progress : bool or None
        False: never; True: always (stderr even if not a terminal); None: when stderr is a
        terminal and the pair is large, and where it is a log (``fuse-set``, ``evaluate``, the
        pipeline) a plain line at most every 30 s, none for a pair fused sooner
        (:func:`bafusion.progress.bar_options`).
    fractional : bool
        Steps are advanced in fractions (the band's tiles, :func:`decide_working`): the count
        is shown with one decimal (``3.4/4``).

    Returns
    -------
    tqdm.tqdm
        The bar (``disable=True`` when not shown).
    """
    from tqdm import tqdm

    from bafusion.progress import bar_options, stderr_is_terminal

    if progress is None and not stderr_is_terminal():  # a log: a plain line now and then
        bar = tqdm(total=total, desc=desc, unit="step", **bar_options(True, fractional=fractional))
        # the steps' postfix ("boundary net") redrew the bar at once: a line each in a log
        set_postfix_str = bar.set_postfix_str
        bar.set_postfix_str = lambda s="", refresh=True: set_postfix_str(s, refresh=False)  # type: ignore[method-assign]
        return bar
    if progress is None:
        show = pixels >= PROGRESS_MIN_PIXELS
    else:
        show = bool(progress)
    fmt = ("{l_bar}{bar}| {n:.1f}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]" if fractional
           else None)
    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, disable=not show, leave=False,
                dynamic_ncols=True, bar_format=fmt)


def decide_working(
    ga: np.ndarray,
    gb: np.ndarray,
    nets: "FusionNets",
    params: "FusionParams",
    progress: bool | None = None,
    *,
    bar=None,
    step: "Callable[[str], None] | None" = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """Steps 1-3 of the fusion rule at the working resolution, refined at full resolution.

    Parameters
    ----------
    ga, gb : ndarray of uint8, (H, W)
        Gray sources at full size.
    nets : FusionNets
        The initial and boundary nets.
    params : FusionParams
        ``working_side`` (:func:`working_resolution`), ``working_band`` and ``working_refine``
        as in the module docstring; the other fields apply at the working resolution.
    progress : bool or None
        The progress bar (:func:`progress_bar`): four steps, each advancing it by its share of
        the time (:func:`fusing_weights`).
    bar : tqdm bar, optional
        A bar of five steps to advance instead (``progress`` unused): the first four by
        :func:`fusing_weights` with the small regions, whose step the caller ends
        (:func:`bafusion.fusion.fuse_images`, so that the bar is not full before they are).
    step : callable, optional
        Called with a line naming each step as it starts (``"the nets at 640x427 px"``, ``"the
        maps at full size, 6000x4000 px"``, ``"refining the boundary band, 89 tiles"``): a log
        says where a camera-size pair's tens of seconds go, where the bar prints a line at most
        every 30 s.

    Returns
    -------
    s0, mean, near, s1 : ndarray, (H, W)
        Full-size initial score, Eq. 1 mean, band of refined pixels (bool) and refined score,
        as :func:`bafusion.fusion.decide` returns them.
    seconds : dict
        ``working`` (the decision at working resolution), ``band`` (the full-size step).
    """
    from bafusion.fusion.decide import blend_scores, decide
    from bafusion.fusion.scoring import at_centre, boundary_steps, score

    h, w = ga.shape
    hs, ws = working_resolution(ga.shape, params.working_side)
    k = max(h, w) / max(hs, ws)  # full-resolution pixels per working pixel
    t: dict[str, float] = {}
    # four steps: the two nets, the upsampling, the band; the band's tiles (found only after the
    # nets, 0.06 s each against seconds a net) share its step, so the bar never goes back (it
    # went from 3/4 to 3/38, 75 % to 8 %, with the nets' rate promising minutes for the tiles)
    say = step if step is not None else (lambda text: None)
    with (contextlib.nullcontext(bar) if bar is not None else
          progress_bar(4, h * w, progress, fractional=True)) as outer:
        bar = _WeightedBar(outer, fusing_weights(post=outer.total == len(FUSING_STEP_COST), pixels=h * w,
                                                  working_pixels=hs * ws))
        t0 = time.perf_counter()
        say(f"the nets at {ws}x{hs} px")
        bar.set_postfix_str(f"initial net at {ws}x{hs}")
        sa, sb = resize_gray(ga, (hs, ws)), resize_gray(gb, (hs, ws))
        s0w, meanw, _nearw, s1w, _ = decide(sa, sb, nets, replace(params, working_side=0, working_above=0), bar=bar)
        t["working"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        say(f"the maps at full size, {w}x{h} px")
        bar.set_postfix_str("full size")
        z = _upsample(_logit(s1w), (h, w))
        t_logit = math.log(params.threshold / (1 - params.threshold))
        band = boundary_band(z > t_logit, params.working_band)
        s1_up = (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
        del z
        s1 = s1_up.copy()  # tiles read the upsampled score, so the result does not depend on their order
        s0 = np.clip(_upsample(s0w, (h, w)), 0, 1)
        mean = np.clip(_upsample(meanw, (h, w)), 0, 1)
        bar.update(1)

        tiles = _tiles(band, BAND_TILE) if params.working_refine != "none" else []
        say(f"refining the boundary band, {len(tiles)} tile{'' if len(tiles) == 1 else 's'}")
        bar.set_postfix_str(f"band, {len(tiles)} tiles")
        radius = max(1, round(2 * k))
        pb = nets.patch_boundary
        margin = 2 * radius + pb + 8
        import torch

        amp = torch.autocast(nets.device.type, dtype=torch.bfloat16, enabled=params.precision == "bf16")
        boundary = params.working_refine == "boundary" and params.refine

        def refine(tile: tuple[int, int, int, int]) -> None:
            r0, r1, c0, c1 = tile
            R0, R1, C0, C1 = max(0, r0 - margin), min(h, r1 + margin), max(0, c0 - margin), min(w, c1 + margin)
            sel = np.zeros((R1 - R0, C1 - C0), dtype=bool)
            sel[r0 - R0 : r1 - R0, c0 - C0 : c1 - C0] = band[r0:r1, c0:c1]
            src = s1_up[R0:R1, C0:C1].copy()
            ta, tb = ga[R0:R1, C0:C1], gb[R0:R1, C0:C1]
            if boundary:
                # The boundary net on the band pixels of this tile and a ring around them,
                # so that the guided filter sees rescored pixels on both sides.
                ring = ndimage.binary_dilation(sel, iterations=radius) if radius else sel
                bstep = boundary_steps(params, pb)[0]
                with amp:
                    sbn = score(nets.boundary, ta, tb, pb, params, bstep, mask=ring, device=nets.device,
                                centre=at_centre(params.score_position, nets.label_positions[1]))
                # The boundary net's vote weighed with the initial net's, as at any size
                # (``boundary_weight``; 1 replaces, the paper's rule).
                src[ring] = blend_scores(sbn[ring], s0[R0:R1, C0:C1][ring], params.boundary_weight)
            guide = np.where(src > params.threshold, ta, tb).astype(np.float32) / np.float32(255.0)
            q = guided_filter(guide, src, radius, eps=1e-3)
            out = s1[r0:r1, c0:c1]
            tsel = band[r0:r1, c0:c1]
            out[tsel] = np.clip(q[r0 - R0 : r1 - R0, c0 - C0 : c1 - C0][tsel], 0, 1)

        # The guided tiles side by side on the command's threads (numpy and scipy release the
        # GIL): each reads the upsampled score and writes its own tile of s1, so the same bits
        # in any order. The boundary net's tiles one after the other: torch's threads run them.
        side_by_side([lambda t=t: refine(t) for t in tiles], threads=1 if boundary else None,
                     done=lambda i: bar.update(1.0 / len(tiles)) if i + 1 < len(tiles) else None)
        bar.end_step()  # the last tile (or none) completes the band's step, exactly
        t["band"] = time.perf_counter() - t0
    return s0, mean, band, s1, t


__all__ = [
    "BAND_TILE",
    "MAX_UPSCALE",
    "patch_note",
    "scales_note",
    "PROGRESS_MIN_PIXELS",
    "boundary_band",
    "decide_upscaled",
    "decision_size",
    "resize_gray",
    "upscale_side",
    "uses_upscale",
    "decide_working",
    "FUSING_STEP_COST",
    "fusing_step_seconds",
    "fusing_weights",
    "guided_filter",
    "progress_bar",
    "uses_working",
    "WIDEST_FRAME",
    "working_resolution",
    "working_size",
]
