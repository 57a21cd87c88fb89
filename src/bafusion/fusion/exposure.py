"""Exposure matching for scoring (:attr:`FusionParams.exposure_match`): shots of a real focus
bracket differ in exposure and tone (auto-exposure, a changed aperture, flicker), and a net
trained on shots of equal exposure reads a brighter, higher-contrast shot as the sharper one, so
whole regions get the wrong source. Before the nets score the pair, the gray B is mapped onto
A's exposure by a gain and an offset fitted on heavily low-passed copies of both (a Gaussian of
``sigma`` px: what is left there is exposure and tone, not focus). Only the scoring input
changes: the fused pixels are the sources' own.

The fused pixels are composited as they are, so shots of different exposure or white balance
give a seam where the decision switches: :func:`exposure_note` says so (``bafusion fuse``
prints it), and :attr:`FusionParams.match_output_exposure` (off by default and in the paper
preset) brings B's pixels to A's exposure and colour first, by per-channel gains
(:func:`colour_gains`, :func:`apply_gains`). A is the reference, as for the scoring: the
output keeps the first shot's exposure.

Measured in ``benchmarks/realistic_validation.py`` and on the real development pairs
(BENCHMARKS.md, "Exposure matching").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from bafusion.errors import UserError
from bafusion.threads import side_by_side

__all__ = ["apply_gains", "auto_mode", "colour_gains", "estimate_noise", "exposure_note", "fit_exposure", "match_exposure",
           "match_noise", "match_pair", "StackExposure", "stack_exposure"]

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


def _block_mean(g: np.ndarray, step: int) -> np.ndarray:
    h, w = (g.shape[0] // step) * step, (g.shape[1] // step) * step
    return g[:h, :w].reshape(h // step, step, w // step, step).mean(axis=(1, 3))


#: Gray level at or above which a pixel counts as clipped for the fit of ``exposure_match:
#: brighter`` (:func:`fit_exposure` with ``unclipped``).
CLIP_LEVEL = 250
#: ``unclipped`` fit: a low-passed pixel is left out where the Gaussian-weighted share of clipped
#: pixels in its window exceeds this (a clipped pixel within about 1.35 sigma).
CLIP_REACH = 1e-3
#: ``unclipped`` fit: below this share of the pair's pixels left, the fit is made on the
#: low-pass of the unclipped pixels alone (:func:`_unclipped_low_pass`), and below it again on
#: all pixels.
CLIP_MIN_KEPT = 0.05
#: ``unclipped`` fit on the low-pass of the unclipped pixels alone: the share of a pixel's
#: Gaussian window that must be unclipped for it to be fitted on.
CLIP_WEIGHT = 0.8
#: ``exposure_match: auto`` takes ``brighter`` where one shot clips clearly more than the other
#: (shares of pixels at :data:`CLIP_LEVEL` or more differing by at least this and by the ratio
#: :data:`AUTO_CLIP_RATIO`), ``linear`` elsewhere. Set so that none of the 41 real development
#: pairs (whose shots clip alike: savic-18 43 % / 43 %, savic-19 11 % / 14 %) is moved.
AUTO_CLIP_DIFF = 0.01
AUTO_CLIP_RATIO = 2.0


def auto_mode(*grays: np.ndarray) -> str:
    """The mode ``exposure_match: auto`` takes for these gray shots: ``"brighter"`` where one
    shot clips clearly more than another (:data:`AUTO_CLIP_DIFF`, :data:`AUTO_CLIP_RATIO`: a
    brighter shot that clips), ``"linear"`` elsewhere.

    Parameters
    ----------
    *grays : ndarray
        Two or more gray shots, (H, W), on the [0, 255] scale.

    Returns
    -------
    str
        ``"brighter"`` or ``"linear"``.
    """
    shares = [float(np.count_nonzero(g >= CLIP_LEVEL)) / max(1, g.size) for g in grays]
    hi, lo = max(shares), min(shares)
    return "brighter" if hi - lo >= AUTO_CLIP_DIFF and hi >= AUTO_CLIP_RATIO * lo else "linear"


def fit_exposure(ga: np.ndarray, gb: np.ndarray, sigma: float = SIGMA, step: int = 1,
                 bar: Any = None, unclipped: bool = False) -> tuple[float, float, float]:
    """Gain and offset that map B's exposure onto A's, ``A ~ gain * B + offset``.

    The low-passed copies' means and standard deviations are matched (moment matching:
    symmetric in A and B, unlike a least-squares slope, which the focus difference left in
    the low-pass would bias towards 0).

    A shot that clips breaks the moments: its clipped plateau (a white page, sky) has less
    spread than the scene, so the gain that maps a brighter, clipping B down comes out too high
    (B 1 EV brighter, 29-40 % of it clipped: 0.85-0.93 for the true 0.73). With ``unclipped``
    the moments are taken only on the low-passed pixels whose window holds no clipped pixel
    (:data:`CLIP_LEVEL`) of either shot (the gain then 0.72-0.75 on those pairs); a pair with no
    clipped pixel gets the fit without it, bit for bit.

    Parameters
    ----------
    ga, gb : ndarray
        Gray sources, (H, W), of one size, on the [0, 255] scale.
    sigma : float
        Gaussian sigma (px) of the low-pass copies; a border of ``2 * sigma`` px is left out.
    step : int
        1: the fit at full resolution. N > 1 (``fuse.exposure_fit_step``): on N x N block means
        (sigma / N): N**2 times less filtering (a 24 MP pair's 10-30 s), a slightly different
        gain, so a slightly different matched B on pairs that differ in exposure.
    bar : tqdm bar, optional
        Advanced by one after each low-pass filter (two steps).
    unclipped : bool
        Leave out the pixels near a clipped one (see above; :data:`CLIP_REACH`); where fewer
        than :data:`CLIP_MIN_KEPT` of them are left, the low-pass of the unclipped pixels alone
        (:func:`_unclipped_low_pass`); fewer left than that too, all pixels.

    Notes
    -----
    The two low-pass filters run side by side on up to the command's threads
    (:func:`bafusion.threads.side_by_side`: torch's setting, ``--threads``); the result is the
    same bits with any number.

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
    clipped = _clipped(ga, gb) if unclipped else None
    if step > 1 and min(ga.shape) >= 8 * step:
        ga, gb, sigma = _block_mean(ga, step), _block_mean(gb, step), sigma / step
        if clipped is not None:  # a block with a clipped pixel counts as clipped
            h, w = ga.shape
            clipped = clipped[:h * step, :w * step].reshape(h, step, w, step).any(axis=(1, 3))
    # the two low-passes side by side on the command's threads (scipy releases the GIL): each
    # is the same filter of its own shot, so the same bits as one after the other
    la, lb = side_by_side([lambda: ndimage.gaussian_filter(ga, sigma, output=np.float64),
                           lambda: ndimage.gaussian_filter(gb, sigma, output=np.float64)],
                          done=None if bar is None else (lambda i: bar.update(1)))
    m = int(2 * sigma)
    border = m > 0 and min(ga.shape) > 4 * m  # m = 0 (blocks of 17 px or more): no border (x[0:-0] was empty, a NaN fit)

    def inside(x: np.ndarray) -> np.ndarray:
        return x[m:-m, m:-m] if border else x

    keep = None
    if clipped is not None:
        # the Gaussian-weighted share of clipped pixels in each low-passed pixel's window
        near = ndimage.gaussian_filter(clipped.astype(np.float32), sigma, output=np.float32) > CLIP_REACH
        keep = inside(~near)
        del near
        if keep.sum() < CLIP_MIN_KEPT * keep.size:  # scattered clipped spots: their windows cover the frame
            del la, lb
            la, lb, keep = _unclipped_low_pass(ga, gb, clipped, sigma)
            keep = inside(keep)
        del clipped
    if border:
        la, lb = _cropped_in_place(la, m), _cropped_in_place(lb, m)
    if keep is not None and keep.sum() >= CLIP_MIN_KEPT * keep.size:
        la = la[keep]  # one at a time: each full low-pass freed before the next copy is made
        lb = lb[keep]
    la, lb = la.ravel(), lb.ravel()
    # numpy's std, mean and the correlation's mean, the same sums in the same order (so the same
    # bits), each shot's deviations made once, in place, and one square buffer: a 24 MP pair's
    # std made its own deviations, and the correlation made them again
    n = la.size
    ma, mb = la.mean(), lb.mean()
    la -= ma
    lb -= mb
    sq = np.multiply(la, la)
    sa = float(np.sqrt(sq.sum() / n))
    sb = float(np.sqrt(np.multiply(lb, lb, out=sq).sum() / n))
    if sa < 1e-6 or sb < 1e-6:
        return 1.0, 0.0, 0.0
    corr = float(np.multiply(la, lb, out=sq).mean() / (sa * sb))
    gain = sa / sb
    return gain, float(ma - gain * mb), corr


def _unclipped_low_pass(ga: np.ndarray, gb: np.ndarray, clipped: np.ndarray,
                        sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The low-passed shots averaged over their pixels clipped in neither alone (normalised
    convolution: the Gaussian of the shot times the unclipped mask over the Gaussian of the
    mask), and the pixels to fit on: unclipped, with at least :data:`CLIP_WEIGHT` of their
    window's weight unclipped. For the ``unclipped`` fit where the pixels with no clipped pixel
    in their window are fewer than :data:`CLIP_MIN_KEPT` (small clipped spots scattered over the
    frame, as foliage against a bright sky): where A = gain * B + offset holds on the unclipped
    pixels it holds on these averages, which the clipped plateau does not pull. On the 70 of 96
    synthetic pairs of scattered clipped spots where it applies (spots of 6-40 px, B 1.37x or
    1.8x brighter, 10-40 % of B clipped): the gain within 9.4 % of the true one (mean 2.3 %;
    exact but for rounding without a defocused half, whose blooming highlights pull it), where
    the fit on all pixels was up to 88 % off (mean 25 %) (BENCHMARKS.md, "Exposure matching")."""
    unclipped = ~clipped
    weight = ndimage.gaussian_filter(unclipped.astype(np.float64), sigma, output=np.float64)
    lows = []
    for g in (ga, gb):
        # filtered from the shot's own type into float64 (ndimage computes in float64 either way):
        # no float64 copy of it beside the other low-pass, the weight and this output
        low = ndimage.gaussian_filter(np.where(unclipped, g, 0), sigma, output=np.float64)
        np.divide(low, weight, out=low, where=weight > 0)
        lows.append(low)
    keep = weight >= CLIP_WEIGHT
    keep &= unclipped
    return lows[0], lows[1], keep


def _clipped(ga: np.ndarray, gb: np.ndarray) -> np.ndarray | None:
    """Pixels clipped (:data:`CLIP_LEVEL` or above) in either gray shot; None where none is."""
    top = CLIP_LEVEL if ga.dtype == np.uint8 else float(CLIP_LEVEL)
    clipped = ga >= top
    clipped |= gb >= top
    return clipped if clipped.any() else None


def _cropped_in_place(x: np.ndarray, m: int) -> np.ndarray:
    """``x[m:-m, m:-m]`` as a contiguous array in ``x``'s own memory (``x`` is overwritten):
    its rows moved forward one at a time. ``ravel`` of the cropped view copied each shot's
    low-pass (192 MB at 24 MP, about 0.5 s of CPU each)."""
    h, w = x.shape
    hc, wc = h - 2 * m, w - 2 * m
    flat = x.reshape(-1)
    for r in range(hc):  # row r's crop lies at or after its destination: moved forward, in order
        src = (r + m) * w + m
        flat[r * wc:(r + 1) * wc] = flat[src:src + wc]
    return flat[: hc * wc].reshape(hc, wc)


#: Steps of the ``bar`` of :func:`match_exposure`: the two low-pass filters, the mapping.
MATCH_STEPS = 3


def match_exposure(ga: np.ndarray, gb: np.ndarray, sigma: float = SIGMA, step: int = 1,
                   bar: Any = None) -> np.ndarray:
    """B's gray mapped onto A's exposure (:func:`fit_exposure`), rounded to uint8.

    Parameters
    ----------
    ga, gb : ndarray
        uint8 gray sources, (H, W), of one size.
    sigma, step
        See :func:`fit_exposure`.
    bar : tqdm bar, optional
        Advanced by :data:`MATCH_STEPS` in all: after each low-pass filter and the mapping.

    Returns
    -------
    ndarray
        uint8 (H, W): ``round(gain * gb + offset)``, clipped to [0, 255]; ``gb`` itself when
        the shots are exposed alike (:data:`SAME_GAIN`, :data:`SAME_LEVEL`) or the fit is not
        reliable (correlation below :data:`MIN_CORRELATION`).
    """
    gain, offset, corr = fit_exposure(ga, gb, sigma, step, bar=bar)
    level = (gain - 1.0) * float(gb.mean()) + offset
    out = gb if _alike_or_unreliable(gain, level, corr) else _mapped(gb, gain, offset)
    if bar is not None:
        bar.update(1)
    return out


def _alike_or_unreliable(gain: float, level: float, corr: float) -> bool:
    return corr < MIN_CORRELATION or (abs(gain - 1.0) < SAME_GAIN and abs(level) < SAME_LEVEL)


def _mapped(g: np.ndarray, gain: float, offset: float) -> np.ndarray:
    """``round(gain * g + offset)`` clipped to [0, 255], uint8."""
    if g.dtype != np.uint8:
        return np.clip(np.round(gain * g.astype(np.float64) + offset), 0, 255).astype(np.uint8)
    # uint8: a table of the 256 levels (the same arithmetic, so the same bits), not 24 MP of float64
    return np.clip(np.round(gain * np.arange(256, dtype=np.float64) + offset), 0, 255).astype(np.uint8)[g]


def match_pair(ga: np.ndarray, gb: np.ndarray, mode: str, sigma: float = SIGMA, step: int = 1,
               bar: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """The two grays the nets score (:attr:`FusionParams.exposure_match`).

    Parameters
    ----------
    ga, gb : ndarray
        uint8 gray sources, (H, W), of one size.
    mode : str
        ``"none"``: both as they are. ``"linear"``: B mapped onto A's exposure
        (:func:`match_exposure`). ``"linear_clip"``: the same, and where B is the brighter
        shot, A clipped at the level B's white (255) is mapped to, as if A had been taken at
        B's exposure: B's clipped highlights have no detail left, and mapped down they are a
        flat plateau of gray beside A's texture there, which the nets read as A in focus
        (held-out composites with B 1 EV brighter, clipped: decision accuracy 0.84 with
        ``linear``, 0.90 with ``linear_clip``, 0.93 with ``none``; BENCHMARKS.md, "Exposure
        matching"). A brighter A needs nothing more: B mapped up clips at 255 by itself.
        ``"brighter"``: both at the brighter shot's exposure, the gain fitted where neither
        shot clips (:func:`fit_exposure` with ``unclipped``): a brighter B is kept and A is
        mapped up onto it (so A clips where B does, as if taken at B's exposure), a darker B
        is mapped up onto A as by ``linear``, with this fit (the same composites: 0.96; a
        brighter A that clips 0.952 -> 0.958). ``"auto"``: ``"brighter"`` where one shot
        clips clearly more than the other (:func:`auto_mode`), ``"linear"`` elsewhere.
    sigma, step
        See :func:`fit_exposure`.
    bar : tqdm bar, optional
        Advanced by :data:`MATCH_STEPS` in all.

    Returns
    -------
    tuple of ndarray
        uint8 ``(ga, gb)``; each the input itself where it is left as it is (``"none"``,
        shots exposed alike, an unreliable fit: see :func:`match_exposure`).
    """
    if mode == "auto":
        mode = auto_mode(ga, gb)
    if mode == "brighter":
        gain, offset, corr = fit_exposure(ga, gb, sigma, step, bar=bar, unclipped=True)
        level = (gain - 1.0) * float(gb.mean()) + offset
        if not _alike_or_unreliable(gain, level, corr):
            if gain < 1.0:  # B the brighter: A mapped up onto B (B = (A - offset) / gain)
                ga = _mapped(ga, 1.0 / gain, -offset / gain)
            else:
                gb = _mapped(gb, gain, offset)
        if bar is not None:
            bar.update(1)
        return ga, gb
    gb, top = _matched_b(ga, gb, mode, sigma, step, bar)
    return (np.minimum(ga, np.uint8(top)) if top < 255 else ga), gb


def _matched_b(ga: np.ndarray, gb: np.ndarray, mode: str, sigma: float = SIGMA, step: int = 1,
               bar: Any = None) -> tuple[np.ndarray, int]:
    """B as :func:`match_pair` gives it, and the level A is clipped at (255: not clipped)."""
    fit, top, _ = _fit_b(ga, gb, mode, sigma, step, bar)
    return (gb if fit is None else _mapped(gb, *fit)), top


def _fit_b(ga: np.ndarray, gb: np.ndarray, mode: str, sigma: float = SIGMA, step: int = 1,
           bar: Any = None) -> tuple[tuple[float, float] | None, int, bool]:
    """The map :func:`_matched_b` applies to B, ``(gain, offset)`` (None: B left as it is), the
    level A is clipped at (255: not clipped), and whether the fit is reliable (its correlation
    :data:`MIN_CORRELATION` or more; "none": True)."""
    if mode == "none":
        if bar is not None:
            bar.update(MATCH_STEPS)
        return None, 255, True
    if mode not in ("linear", "linear_clip", "brighter"):
        raise UserError(f"exposure matching: unknown mode {mode!r} (none, linear, linear_clip or brighter)")
    # brighter: the caller passes the brighter shot as A (fuse_stack_joint: the brightest)
    gain, offset, corr = fit_exposure(ga, gb, sigma, step, bar=bar, unclipped=mode == "brighter")
    level = (gain - 1.0) * float(gb.mean()) + offset
    top = 255
    fit = None
    if not _alike_or_unreliable(gain, level, corr):
        fit = (gain, offset)
        if mode == "linear_clip":  # where B's white lands
            top = int(_mapped(np.array([255], np.uint8), gain, offset)[0])
    if bar is not None:
        bar.update(1)
    return fit, top, corr >= MIN_CORRELATION


#: :func:`stack_exposure`: the shots tried as the reference, nearest the middle (the joint rule:
#: the first shot; or the brightest) first, where no other shot's fit onto the one before is reliable (a flat shot: a dropped frame).
REFERENCE_TRIES = 3


@dataclass(frozen=True)
class StackExposure:
    """How a stack rule (the chain's or the joint's) brings every shot's gray to one exposure
    before scoring (:func:`stack_exposure`): shot ``reference``'s; ``fits[k]`` is the ``(gain, offset)`` that
    maps shot ``k``'s gray onto it (None: left as it is), and every gray is clipped at ``top``
    (255: not clipped; ``linear_clip``)."""

    reference: int
    mode: str
    fits: tuple[tuple[float, float] | None, ...]
    top: int = 255

    def gray(self, k: int, g: np.ndarray) -> np.ndarray:
        """Shot ``k``'s uint8 gray ``g`` at the reference's exposure (``g`` itself where nothing changes)."""
        fit = self.fits[k]
        g = g if fit is None else _mapped(g, *fit)
        return np.minimum(g, np.uint8(self.top)) if self.top < 255 else g


def stack_exposure(grays: Sequence[np.ndarray], mode: str, step: int = 1, *,
                   around: int | None = None) -> StackExposure:
    """The exposure every shot of a stack is scored at: the chain rule's (:func:`bafusion.fusion.fuse_stack`),
    and with ``around=0`` the joint rule's (:func:`bafusion.fusion.stack.fuse_stack_joint`).

    One fixed reference, not the fusion so far: each step's A, a patchwork of the earlier
    shots' pixels, is scored as the composite of their grays mapped onto the reference, and its
    B as the new shot's gray mapped onto it. Fitting each new shot to the running fusion made
    a steady drift of the exposure across a stack cost the chain accuracy (synthetic focus
    sweeps, shots x0.9 -> x1.1: BENCHMARKS.md, "Exposure drift across a stack").

    Parameters
    ----------
    grays : sequence of ndarray
        The shots' uint8 grays, (H, W), in the stack's order; two or more.
    mode : str
        :attr:`FusionParams.exposure_match`: ``"linear"`` and ``"linear_clip"`` map every shot
        onto the middle shot's exposure (shot ``(N - 1) // 2``: under a steady drift its
        exposure is the nearest to the farthest shot's); ``"brighter"`` onto the brightest shot's
        (the highest mean gray), fitted where neither clips, as a pair's darker shot is mapped
        up; ``"auto"`` takes ``"brighter"`` where one shot clips clearly more than another
        (:func:`auto_mode`), else ``"linear"``; ``"none"``: every gray as it is.
    step : int
        See :func:`fit_exposure`.
    around : int, optional
        The shot to map onto under ``"linear"`` and ``"linear_clip"`` (and ``"auto"`` where it
        takes ``"linear"``) in place of the middle one, its nearest shots the next tried (see
        Notes): the joint rule passes 0, the first shot. ``"brighter"`` ignores it.

    Returns
    -------
    StackExposure
        The reference, the mode taken and each shot's fit; ``linear_clip``: every gray clipped
        where the brightest mapped white lands.

    Notes
    -----
    A reference onto which no other shot's fit is reliable (a flat shot, black, gray or
    white: a dropped frame; every fit's correlation below :data:`MIN_CORRELATION`) would leave
    every shot at its own exposure; the next shot nearest the middle (or ``around``; ties: the
    earlier shot; ``brighter``: the next brightest) is tried instead, up to
    :data:`REFERENCE_TRIES` shots, the first one's fits kept where none has a reliable fit.
    """
    n = len(grays)
    if mode == "auto":
        mode = auto_mode(*grays)
    if mode == "none":
        return StackExposure(0, mode, (None,) * n)
    if mode == "brighter":  # the brightest first (ties: the earlier shot, as argmax)
        means = [float(g.mean()) for g in grays]
        order = sorted(range(n), key=lambda k: (-means[k], k))
    else:  # the middle, (N - 1) // 2 (or around), then its neighbours, the earlier first
        mid = (n - 1) // 2 if around is None else around
        order = sorted(range(n), key=lambda k: (abs(k - mid), k))
    first = None
    for ref in order[:REFERENCE_TRIES]:
        fits, tops, reliable = [], [], False
        for k, g in enumerate(grays):
            fit, top, ok = (None, 255, False) if k == ref else _fit_b(grays[ref], g, mode, step=step)
            fits.append(fit)
            tops.append(top)
            reliable |= ok
        found = StackExposure(ref, mode, tuple(fits), min(tops))
        if reliable:
            return found
        first = first or found
    assert first is not None  # two or more shots: one tried at least
    return first


#: Noise matching (:attr:`FusionParams.noise_match`): Immerkaer's Laplacian-difference mask,
#: which cancels a linear ramp; its response to white noise of std s has std 6 s.
_NOISE_MASK = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
#: The noise is estimated on the pixels where both shots are flattest: this fraction of the
#: pair, ranked by the sum of the two shots' mask responses averaged over a Gaussian of
#: :data:`NOISE_FLAT_SIGMA` px (one shot's in-focus texture raises the sum, so it is left out).
NOISE_FLAT_FRACTION = 0.2
NOISE_FLAT_SIGMA = 3.0
#: The shots count as equally noisy (nothing is changed) unless the noisier one's estimate
#: exceeds the cleaner one's by at least this many gray levels and this ratio.
NOISE_MIN_DIFF = 1.5
NOISE_MIN_RATIO = 2.0
#: Seed of the matching noise (the same pair gives the same decision every run).
NOISE_SEED = 20261207
#: Columns per block of the estimate's filtering (memory, not the result).
_NOISE_BLOCK = 256


def estimate_noise(ga: np.ndarray, gb: np.ndarray) -> tuple[float, float]:
    """Sensor-noise standard deviation of each gray shot of a pair (gray levels).

    Immerkaer's estimate (the mean absolute Laplacian-difference response), taken on the
    pixels where both shots are flattest (:data:`NOISE_FLAT_FRACTION` of the pair), so that
    one shot's in-focus texture is not read as its noise.

    Parameters
    ----------
    ga, gb : ndarray
        Gray sources, (H, W), of one size (uint8 or float on the 0-255 scale).

    Returns
    -------
    tuple of float
        The noise std of A and of B, in gray levels (0 for a pair smaller than 3 x 3).
    """
    if min(ga.shape) < 3:
        return 0.0, 0.0
    # The responses of integer shots are integers below 2**24: exact in float32, which halves
    # the two full-size maps; the sums and filters below are float64 as before (same values).
    wide = np.float32 if all(g.dtype.kind in "ub" and g.dtype.itemsize <= 2 for g in (ga, gb)) else np.float64
    ha, hb = (np.abs(ndimage.convolve(g, _NOISE_MASK, output=wide, mode="reflect"))[1:-1, 1:-1]
              for g in (ga, gb))
    # Where the pair is flat is judged on the rows 0 mod 6 and the noise measured on the rows 3
    # mod 6: their 3 x 3 windows share no pixel, so the choice of pixels does not prefer those
    # whose noise happens to be low (on the same rows, white noise of std 3 read as 2.1).
    rows = np.arange(ha.shape[0]) % 6
    measured = rows == 3
    if not measured.any():  # fewer than 6 rows: the estimate on every row
        ma, mb = ha.astype(np.float64), hb.astype(np.float64)
        local = ma + mb
    else:
        ma, mb = ha[measured].astype(np.float64), hb[measured].astype(np.float64)
        # gaussian_filter((ha + hb) * judge) / gaussian_filter(judge) on the measured rows, the
        # same numbers in blocks of columns (the filter runs along the rows first, then along
        # the columns, each line on its own): a camera pair's full-size float64 copies (~46 MiB
        # per megapixel at 12 MP, more than the whole fusion's 36) are not made.
        judge = (rows == 0).astype(np.float64)[:, None]
        local = np.empty((int(measured.sum()), ha.shape[1]))
        for c0 in range(0, ha.shape[1], _NOISE_BLOCK):
            c1 = min(c0 + _NOISE_BLOCK, ha.shape[1])
            x = (ha[:, c0:c1].astype(np.float64) + hb[:, c0:c1]) * judge
            local[:, c0:c1] = ndimage.gaussian_filter1d(x, NOISE_FLAT_SIGMA, axis=0)[measured]
        ndimage.gaussian_filter1d(local, NOISE_FLAT_SIGMA, axis=1, output=local)
        # the judged rows' weight: the same in every column
        den = ndimage.gaussian_filter(np.broadcast_to(judge, (judge.shape[0], min(ha.shape[1], 8))).copy(),
                                      NOISE_FLAT_SIGMA)[measured][:, :1]
        local /= np.maximum(den, 1e-12)
    del ha, hb
    flat = local <= np.quantile(local, NOISE_FLAT_FRACTION)
    # Immerkaer's estimate: the mean |response| of white noise of std s is 6 s sqrt(2 / pi)
    out = [float(np.sqrt(np.pi / 2.0) * h[flat].mean() / 6.0) for h in (ma, mb)]
    return out[0], out[1]


def match_noise(ga: np.ndarray, gb: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """The gray shots brought to one noise level for scoring (:attr:`FusionParams.noise_match`).

    A defocused shot with more sensor noise than the other (a higher ISO, a shot denoised in
    the camera, a JPEG of another quality) reads as the sharper one on smooth subjects: the
    nets take its noise for detail. Where :func:`estimate_noise` finds one shot noisier by at
    least :data:`NOISE_MIN_DIFF` gray levels and :data:`NOISE_MIN_RATIO`, seeded Gaussian
    noise of std ``sqrt(s_noisy**2 - s_clean**2)`` is added to the cleaner shot's gray, so
    that both carry the same noise and only the focus differs. Only the scoring input
    changes: the fused pixels are the sources' own. Deterministic (:data:`NOISE_SEED`).

    Parameters
    ----------
    ga, gb : ndarray
        uint8 gray sources, (H, W), of one size (B after exposure matching).

    Returns
    -------
    tuple
        ``(ga, gb, (sa, sb))``: the gray shots, the cleaner one with the matching noise added
        (uint8, rounded and clipped; both the inputs themselves where the levels agree), and
        the two noise estimates.
    """
    sa, sb = estimate_noise(ga, gb)
    lo, hi = min(sa, sb), max(sa, sb)
    if hi - lo < NOISE_MIN_DIFF or hi < NOISE_MIN_RATIO * lo:
        return ga, gb, (sa, sb)
    extra = float(np.sqrt(hi * hi - lo * lo))
    # in blocks of rows (the generator's stream is the same as in one draw): no full-size
    # float64 copies of the shot and of the noise
    rng = np.random.default_rng(NOISE_SEED)
    clean = ga if sa < sb else gb
    out = np.empty_like(clean, dtype=np.uint8)
    rows = max(1, _NOISE_BLOCK * 256 // max(1, clean.shape[1]))
    for r0 in range(0, clean.shape[0], rows):
        part = clean[r0:r0 + rows].astype(np.float64) + rng.normal(0.0, extra, clean[r0:r0 + rows].shape)
        out[r0:r0 + rows] = np.clip(np.round(part), 0, 255)
    if sa < sb:
        ga = out
    else:
        gb = out
    return ga, gb, (sa, sb)


#: :func:`exposure_note` speaks up when B's exposure differs from A's by more than this (stops)
#: or one channel's ratio B/A differs from another's by more than :data:`NOTE_CHANNEL` (5 %):
#: about what shows as a seam where the output switches from one shot to the other.
NOTE_EV = 0.15
NOTE_CHANNEL = 0.05
#: The encoding gamma the note assumes (sRGB's, roughly) to give a ratio of pixel values in stops.
GAMMA = 2.2


def _colour(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 2:
        return x[..., None]
    if x.ndim == 3 and x.shape[2] == 2:  # gray + alpha: the gray (its alpha was taken for a channel)
        return x[..., :1]
    return x[..., :3]


#: Sampled pixels (of :func:`colour_gains`' ``step``) around a clipped one left out of the set
#: of pixels that gives the balance of the channels.
CLIP_MARGIN = 2


def colour_gains(a: np.ndarray, b: np.ndarray, step: int = 4) -> np.ndarray:
    """Per-channel gains that bring B's pixels to A's exposure and colour, ``A_c ~ g_c * B_c``.

    The ratio of the channel sums of A and B over the pixels (every ``step``-th row and
    column) that are clipped in neither shot (at most 252 on the 8-bit scale): the focus
    difference moves the pixels but not the sums, and clipped pixels would pull a brighter
    shot's gain towards 1. Dark pixels are kept: leaving out the near-black ones (below 3, as
    at first) left out more of the sharp shot's than of the blurred one's, whose blacks the
    blur lifts, and a Lytro pair of one exposure got a note of a tint (R/G/B x1.04/0.97/1.03).

    For colour, each channel's own unclipped pixels give the exposure (the level of the
    gains, weighted as gray), and one set of pixels for all three channels gives their
    balance: the pixels with no channel clipped in either shot, :data:`CLIP_MARGIN` sampled
    pixels away from any clipped one (a sharp highlight's neighbours differ from the blurred
    shot's, so leaving out only the clipped pixel leaves a bias). A brighter shot clips each
    channel in other places, and channel by channel the kept pixels differed, so a pure
    exposure change read as a colour cast (tsai-05's B +0.7 EV, clipping 44/31/42 % of
    R/G/B: R/G/B x1.27/1.24/1.19, "warmer", for 1.247 on each; now x1.24 on each). Where
    fewer than 100 such pixels are left the balance cannot be measured, and the three gains
    are the level's.

    Parameters
    ----------
    a, b : ndarray
        The sources, uint8 or uint16, (H, W) or (H, W, 2/3/4), of one size and channel count
        (alpha ignored: (H, W, 2) is gray).
    step : int
        Subsampling of rows and columns.

    Returns
    -------
    ndarray
        float64 (C,), one gain per channel, always finite: 1 where a channel has too few
        usable pixels or is black (all zero) in B (no signal to scale: 0/0 or x/0), 0 where
        it is black in A alone (B's channel brought to A's black).

    Raises
    ------
    bafusion.errors.UserError
        ``a`` and ``b`` differ in size or in channels (alpha ignored): a colour and a gray
        shot (an IndexError at the second channel), or shots of two sizes.
    """
    ca, cb = _colour(a), _colour(b)
    if ca.shape != cb.shape or ca.ndim != 3:
        raise UserError(f"colour_gains needs two images of one size and channel count (alpha ignored), got "
                        f"{np.shape(a)} and {np.shape(b)}: gray (H, W) or colour (H, W, 3) each")
    a, b = ca[::step, ::step], cb[::step, ::step]
    top = 65535.0 if a.dtype == np.uint16 or b.dtype == np.uint16 else 255.0
    fa = a.astype(np.float64) * (top / (65535.0 if a.dtype == np.uint16 else 255.0))
    fb = b.astype(np.float64) * (top / (65535.0 if b.dtype == np.uint16 else 255.0))
    lo, hi = 0.0, 252.0 * top / 255.0
    gains = np.ones(fa.shape[2])
    measured = 0
    for c in range(fa.shape[2]):
        ok = (fa[..., c] >= lo) & (fa[..., c] <= hi) & (fb[..., c] >= lo) & (fb[..., c] <= hi)
        if ok.sum() >= 100:
            sa, sb = float(fa[..., c][ok].sum()), float(fb[..., c][ok].sum())
            if sb > 0.0:  # a channel black in B has nothing to scale (0/0, x/0): left alone
                gains[c] = sa / sb
                measured += sa > 0.0
    if gains.size != 3 or measured < 3:  # gray, or a channel left alone or black in A: as it is
        return gains
    # the balance of the channels from one pixel set (docstring), at the level of the gains above
    from bafusion.io import RGB2GRAY

    clipped = ndimage.binary_dilation((fa > hi).any(axis=2) | (fb > hi).any(axis=2), iterations=CLIP_MARGIN)
    ok = ~clipped
    balance = np.ones(3)
    if ok.sum() >= 100:
        sa3, sb3 = fa[ok].sum(axis=0), fb[ok].sum(axis=0)
        if (sa3 > 0.0).all() and (sb3 > 0.0).all():
            balance = sa3 / sb3
    level = float((1.0 / gains) @ RGB2GRAY)  # B / A, gray-weighted
    return balance * (float((1.0 / balance) @ RGB2GRAY) / level)


def apply_gains(b: np.ndarray, gains: np.ndarray, top: int | None = None) -> np.ndarray:
    """B with each channel multiplied by its gain, rounded and clipped to its type's range
    (uint8 or uint16; alpha and gray kept as they are shaped), or to ``top``, the largest value
    of the data's scale (4095 for uint16 arrays of 12-bit data: ``bafusion.fuse``)."""
    b = np.asarray(b)
    if top is None:
        top = 65535 if b.dtype == np.uint16 else 255
    g = np.asarray(gains, dtype=np.float64)
    out = b.copy()
    if b.ndim == 2:
        return np.clip(np.round(b * g[0]), 0, top).astype(b.dtype)
    n = min(3, b.shape[2])
    gg = g if g.size == n else np.full(n, g[0])
    out[..., :n] = np.clip(np.round(b[..., :n] * gg), 0, top).astype(b.dtype)
    return out


def exposure_note(gains: np.ndarray, names: tuple[str, str] = ("A", "B"), option: str = "",
                  colour: bool = True) -> str | None:
    """A line saying that B's exposure or colour differs visibly from A's (gains from
    :func:`colour_gains`), or None when it does not (:data:`NOTE_EV`, :data:`NOTE_CHANNEL`).

    ``option`` names what brings B to A (``--match-output-exposure``, ...); ``colour`` False
    (a gray shot beside a colour one, noted apart): the exposure alone."""
    na, nb = names
    tail = ("the output takes pixels from both as they are, so seams may show where it switches between them"
            + (f"; {option} brings its pixels to the exposure and colour of {na} before compositing" if option else ""))
    g = np.asarray(gains, dtype=np.float64)
    if (g == 0).any():  # a channel black in A alone: no ratio of means to give
        which = " in " + "/".join(c for c, x in zip("RGB", g) if x == 0) if g.size == 3 and g.any() else ""
        return f"{nb} differs from {na}: {na} is black (all zero){which} where {nb} is not: " + tail
    ratio = 1.0 / g  # B / A per channel
    if ratio.size == 3:
        from bafusion.io import RGB2GRAY

        level = float(ratio @ RGB2GRAY)
    else:
        level = float(ratio.mean())
    # stops of light: the pixel values are gamma-encoded (sRGB: about 2.2), so a ratio r of
    # them is about r ** 2.2 of light (+0.5 EV: the values x 1.17)
    ev = GAMMA * float(np.log2(level)) if level > 0 else 0.0
    spread = float(ratio.max() / ratio.min() - 1.0) if ratio.min() > 0 and colour else 0.0
    if abs(ev) <= NOTE_EV and spread <= NOTE_CHANNEL:
        return None
    how = []
    if abs(ev) > NOTE_EV:
        how.append("brighter" if ev > 0 else "darker")
    if ratio.size == 3 and spread > NOTE_CHANNEL:
        warm = ratio[0] / ratio[2]
        how.append("warmer" if warm > 1 + NOTE_CHANNEL else "cooler" if warm < 1 - NOTE_CHANNEL else "tinted")
    per = "/".join(f"{r:.2f}" for r in ratio)
    what = f"by about {ev:+.1f} EV" if abs(ev) > NOTE_EV else "in colour balance"
    chans = "R/G/B " if ratio.size == 3 else ""
    return f"{nb} differs from {na} {what} ({', '.join(how)}; channel means {chans}x{per} those of {na}): " + tail
