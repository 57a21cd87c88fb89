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

Do the shots move? :func:`coarse_motion` registers the same reduced shots (a similarity,
:func:`bafusion.fusion.align.estimate_transform`) and gives the motion in the shots' own pixels,
so that a fusion without ``--align`` can say when the shots look handheld
(:func:`motion_hints`); the threshold :data:`HINT_MOTION_PX` was measured
(``benchmarks/bench_motion_hint.py``, BENCHMARKS.md "Do the shots move?").
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from bafusion.errors import InputFileError, UserError
from bafusion.fusion.align import MOTION_ITERS, MOTION_SAMPLES, MOTION_TOL
from bafusion.fusion.params import HINT_MOTION_PX as _HINT_MOTION_PX
from bafusion.io import gray_float


def check_same_size(a: np.ndarray, b: np.ndarray, name_a: str = "A", name_b: str = "B") -> None:
    """Sources of different sizes are an error naming both sizes and both files.

    Parameters
    ----------
    a, b : ndarray
        The sources, (H, W) or (H, W, C): only height and width are compared.
    name_a, name_b : str
        Their names (file names) for the message.

    Raises
    ------
    bafusion.errors.InputFileError
        Different heights or widths (a :class:`bafusion.errors.UserError`, naming ``name_b``
        first, both sizes as WxH).
    """
    if a.shape[:2] != b.shape[:2]:
        ha, wa = a.shape[:2]
        hb, wb = b.shape[:2]
        raise InputFileError(
            name_b, f"size {wb}x{hb} (WxH) differs from {wa}x{ha} of {name_a}: the sources must have the same size"
        )


#: Below this correlation two shots are taken for two scenes (BENCHMARKS.md, "One scene?").
MIN_CORRELATION = 0.55

#: Gaussian blur (pixels at a long side of 520) before the correlation.
SIGMA = 4.0

#: Long side (pixels) the shots are reduced to before the check.
WORK_SIDE = 520

#: Shots with a shorter side are not checked.
MIN_SIDE = 64

#: A shot whose coarse-scale standard deviation is below this (1 gray level in 255) is flat.
#: Two flat shots are not judged (two shots of a blank page pass); one flat shot beside one
#: with structure is not the same scene at the coarse scale, where focus barely changes a shot
#: (a lens cap, a frame of a blank wall): correlation 0, refused.
FLAT_STD = 1.0 / 255.0


#: Samples (pixels x channels) of the source converted to float at a time by :func:`_reduce_k`.
REDUCE_CHUNK = 1 << 18

#: The reductions made inside :func:`shared_reductions`: (id of the shot, side) -> (the shot,
#: its reduction, factor); None outside it.
_SHARED: ContextVar[dict[tuple[int, int], tuple[np.ndarray, np.ndarray, int]] | None] = ContextVar(
    "bafusion_scene_reductions", default=None)


@contextmanager
def shared_reductions() -> Iterator[None]:
    """Within this block every shot is reduced (:func:`_reduce_k`) once per long side: the scene
    check and the motion estimate of one fusion work on the same reduced copies (a 24-megapixel
    shot takes about 0.25 s to reduce). The shots must not change inside the block. Nested
    blocks share the outermost one's copies."""
    if _SHARED.get() is not None:
        yield
        return
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


def _reduce(img: np.ndarray) -> np.ndarray:
    """Gray float image, block-mean reduced by the integer factor that brings its long side
    to at most :data:`WORK_SIDE`."""
    return _reduce_k(img)[0]


def _reduce_k(img: np.ndarray, side: int = WORK_SIDE) -> tuple[np.ndarray, int]:
    """:func:`_reduce` (to a long side of at most ``side``) and its reduction factor.

    The gray float64 values are made a band of rows at a time (:data:`REDUCE_CHUNK`), so a
    camera-size shot is never converted to float64 whole; the result is the same, to the bit,
    as reducing the whole float64 gray image. Inside :func:`shared_reductions` a shot's
    reduction is made once (read-only)."""
    shared = _SHARED.get()
    if shared is not None:
        hit = shared.get((id(img), side))
        if hit is not None and hit[0] is img:
            return hit[1], hit[2]
    a = np.asarray(img)
    k = math.ceil(max(a.shape[:2]) / side)
    h, w = (a.shape[0] // k) * k, (a.shape[1] // k) * k
    out = np.empty((h // k, w // k))
    band = max(1, REDUCE_CHUNK // (k * w * (a.shape[2] if a.ndim == 3 else 1)))  # output rows a band
    for i in range(0, h // k, band):
        f = np.asarray(a[i * k:min(i + band, h // k) * k, :w], dtype=np.float64)
        if f.ndim == 3:
            f = gray_float(f) if f.shape[2] in (1, 3, 4) else f[..., 0]
        out[i:i + band] = f.reshape(-1, k, w // k, k).mean(axis=(1, 3)) if k > 1 else f
    out /= 255.0
    if shared is not None:
        out.setflags(write=False)
        shared[(id(img), side)] = (img, out, k)  # the shot is kept: its id stays its own
    return out, k


def _coarse(img: np.ndarray) -> np.ndarray:
    """The shot reduced (:func:`_reduce`), blurred at the coarse scale (:data:`SIGMA`),
    flattened and centred: what :func:`scene_correlation` compares."""
    r = _reduce(img)
    r = ndimage.gaussian_filter(r, SIGMA * max(r.shape) / 520.0).ravel()
    return r - r.mean()


def is_flat(img: np.ndarray) -> bool:
    """Whether a shot has no structure at the coarse scale of :func:`scene_correlation`: its
    standard deviation there is below :data:`FLAT_STD` (a blank wall, a lens cap, sensor noise
    in the dark)."""
    r = _coarse(img)
    return float(r @ r) < FLAT_STD**2 * r.size


def scene_correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Correlation of two same-size uint8 shots at a coarse scale (see the module's doc): near 1
    for one scene however focused, near 0 for two scenes; None when they are too small or both
    too flat (:data:`FLAT_STD`) to judge; 0 when only one of them is flat.

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
    ra, rb = _coarse(a), _coarse(b)
    va, vb = float(ra @ ra), float(rb @ rb)
    flat = FLAT_STD**2 * ra.size
    if max(va, vb) < flat:
        return None  # both flat at this scale (two shots of a blank wall): nothing to judge by
    if min(va, vb) < flat:
        return 0.0  # one flat (a lens cap), one with structure: not one scene
    return float(ra @ rb / math.sqrt(va * vb))


def check_one_scene(images: Sequence[np.ndarray], names: Sequence[str], force: bool = False, *,
                    remedy: str = "use --force to fuse anyway") -> list[float | None]:
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
    remedy : str
        What the message advises (the command line's ``--force``; :func:`bafusion.fuse` has none).

    Returns
    -------
    list of float or None
        One per shot after the first.
    """
    with shared_reductions():  # the first shot is reduced once
        scores = [scene_correlation(images[0], im) for im in images[1:]]
    if not force:
        for name, c in zip(names[1:], scores):
            if c is not None and c < MIN_CORRELATION:
                raise UserError(
                    f"{name}: does not look like the same scene as {names[0]} (correlation {c:.2f} at a coarse "
                    f"scale, below {MIN_CORRELATION}); {remedy}"
                )
    return scores


#: How :func:`turned_by` names a turn of a shot (degrees clockwise against the first).
TURNS = {90: "90 degrees clockwise", 180: "180 degrees", 270: "90 degrees counter-clockwise"}


def turned_by(a: np.ndarray, b: np.ndarray) -> tuple[int, float] | None:
    """Whether shot ``b`` looks like shot ``a`` turned by a multiple of 90 degrees (a sideways
    shot whose orientation tag is missing): the degrees clockwise (90, 180 or 270) and the
    correlation (:func:`scene_correlation`) of ``b`` turned back, when that passes
    :data:`MIN_CORRELATION` (only turns that keep ``b``'s size the first's are tried); else None.
    Cheap: the coarse, reduced copies of the one-scene check."""
    best = None
    for k in (1, 2, 3):  # np.rot90 by k (counter-clockwise) undoes a clockwise turn of 90 k
        back = np.rot90(b, k)
        if back.shape[:2] != a.shape[:2]:
            continue
        c = scene_correlation(a, back)
        if c is not None and c >= MIN_CORRELATION and (best is None or c > best[1]):
            best = (90 * k, c)
    return best


#: What :func:`check_turned` tells to do with a shot that is not turned (a repeating pattern can
#: look turned) where the shots are fused unaligned or with ``--align auto``: aligning may match it.
TURNED_REMEDY = "fuse with --force, or --align similarity; force=True / align='similarity' in Python"


def check_turned(images: Sequence[np.ndarray], names: Sequence[str], suspects: Sequence[int], *,
                 remedy: str = TURNED_REMEDY) -> None:
    """Refuse the first of the shots ``suspects`` (indices) that looks turned against the first
    shot (:func:`turned_by`) with a :class:`UserError` that says so: aligning it would not help
    (it registers motion of a few degrees), turning it upright would. ``remedy`` says how to fuse
    a shot that is not turned (a repeating pattern can look turned) with what the caller already
    gave: after an alignment that did not match, only ``--force`` (aligning again would not help)."""
    for i in suspects:
        turn = turned_by(images[0], images[i])
        if turn:
            raise UserError(f"{names[i]}: looks turned by {TURNS[turn[0]]} against {names[0]} (correlation "
                            f"{turn[1]:.2f} turned back): its orientation tag may be missing or wrong; turn it upright and "
                            f"fuse again (if it is not turned, as a repeating pattern can look, {remedy})")


#: A shot that moves more than this against the first (RMS corner displacement, pixels of the
#: shots, :func:`coarse_motion`) gets a hint to fuse with ``--align`` (BENCHMARKS.md, "Do the
#: shots move?"). Defined in :mod:`bafusion.fusion.params`, which the command line's parser reads.
HINT_MOTION_PX = _HINT_MOTION_PX

#: ... and at least this many pixels of the reduced copies the motion is measured on, three times
#: the largest difference of :func:`coarse_motion` from the registration of the full shots on the
#: 73 real pairs (0.17 px): in a camera-size photo, reduced 8x, a registered pair's estimate may
#: read 1.4 px of its own pixels off, and the nets decide at a similar reduced scale anyway
#: (``working_side``).
HINT_REDUCED_PX = 0.5

#: A registration that lowers the match quality of the reduced copies by more than this is taken
#: for a failed estimate. Measured on the 73 real pairs (BENCHMARKS.md): a motion over 1 px lowers
#: it by at most 0.008 or raises it (up to 0.34); the one failure (g09-newspaper, 59 px) by 0.40.
FAILED_MATCH_DROP = 0.05

#: Gaussian sigma (pixels of the reduced copies) by which :func:`shot_motions` blurs either shot
#: before estimating again, when a shot seems to move: the defocus spread at a focus boundary (a
#: blurred object spreading over a smooth backdrop) reads as a magnification, which blurring the
#: sharper shot removes, while a real motion stays. Measured (BENCHMARKS.md, "Do the shots move?"):
#: on a registered synthetic product shot (defocus sigma 4 and 6 px at 600x800) the estimate falls
#: from 3.3 / 8.0 px to 0.4 / 0.8 px; of the 24 real pairs that seem to move, 23 keep the hint.
DEFOCUS_SIGMA = 3.0

#: A spread wider than :data:`DEFOCUS_SIGMA` removes: a blur ladder (Gaussian sigmas, pixels of
#: the reduced copies) and how much better no motion must fit than the estimated motion, with one
#: shot blurred by a sigma of the ladder (misfit ``1 - r``, ``r`` the correlation;
#: :func:`defocus_fit`), for the motion to be estimated again at that sigma too. A real motion is
#: fitted better by the motion than by no motion, however blurred (ratio 1.04 at most on the 73
#: real pairs, so their verdicts do not depend on the ladder); the spread of a registered pair is
#: fitted far better by no motion at the blur that matches it (1.8-14 on the product shots of
#: BENCHMARKS.md "Do the shots move?").
DEFOCUS_LADDER = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)
DEFOCUS_EXPLAINS = 1.4

#: Long side (pixels) of :func:`coarse_motion`; its Gauss-Newton iterations, samples a level and
#: convergence tolerance (pixels of a level) are :data:`bafusion.fusion.align.MOTION_ITERS`,
#: ``MOTION_SAMPLES`` and ``MOTION_TOL`` (there, as the turn check of ``--align translation``
#: fits as this does, and align does not import this module): measured against the
#: registration of the full shots on 73 real pairs (BENCHMARKS.md, "Do the shots move?").
MOTION_SIDE = 520


def _judgeable(shape: tuple[int, ...], side: int) -> bool:
    """Whether shots of ``shape``, and their copies reduced to a long side of at most ``side``,
    have a short side of at least :data:`MIN_SIDE` (a thin strip reduced has too few rows)."""
    h, w = shape[:2]
    k = math.ceil(max(h, w) / side)
    return min(h, w) >= MIN_SIDE and min(h, w) // k >= MIN_SIDE


def _coarse_registration(a: np.ndarray, b: np.ndarray, side: int, iters: int, samples: int,
                         tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The similarity registering ``b`` onto ``a`` reduced to a long side of at most ``side``:
    (matrix in reduced pixels, reduced a, reduced b, reduction factor)."""
    from bafusion.fusion.align import estimate_transform

    (ra, k), (rb, _) = _reduce_k(a, side), _reduce_k(b, side)
    # antialias=0: HINT_MOTION_PX and the verdicts were measured with the reduced shots sampled as they are
    return estimate_transform(ra, rb, "similarity", iters=iters, samples=samples, tol=tol, antialias=0.0), ra, rb, k


def coarse_motion(a: np.ndarray, b: np.ndarray, side: int = MOTION_SIDE, iters: int = MOTION_ITERS,
                  samples: int = MOTION_SAMPLES, tol: float = MOTION_TOL) -> float | None:
    """How far ``b`` moves against ``a``: the RMS displacement of the four image corners, in
    pixels of the shots, under the similarity (shift, rotation, scale) that registers the
    shots block-mean reduced to a long side of at most ``side`` (as for
    :func:`scene_correlation`); None when they or their reduced copies have a short side under
    :data:`MIN_SIDE` (too small to judge).

    Parameters
    ----------
    a, b : numpy.ndarray
        uint8 gray (H, W) or colour (H, W, 3) shots of the same size.
    side : int
        Long side (pixels) the shots are reduced to, at most.
    iters : int
        Most Gauss-Newton iterations per pyramid level.
    samples : int
        About this many pixels enter each level's fit.
    tol : float
        A level's iterations stop when an update moves by less than this (pixels of the level);
        ``side``, ``iters``, ``samples`` and ``tol`` go to
        :func:`bafusion.fusion.align.estimate_transform`.

    Returns
    -------
    float or None
    """
    from bafusion.fusion.align import corner_rms

    if not _judgeable(a.shape, side):
        return None
    m, ra, _, k = _coarse_registration(a, b, side, iters, samples, tol)
    return corner_rms(m, ra.shape) * k


@dataclass(frozen=True)
class ShotMotion:
    """How one shot moves against the first (:func:`shot_motions`).

    Attributes
    ----------
    index : int
        The shot's position in the stack (1 for B).
    px : float or None
        Its motion (:func:`coarse_motion`); None when not judged.
    verdict : str
        ``moves`` (more than the threshold, and the estimate holds), ``still``, ``implausible``
        (the estimate is not a motion a hand-held focus pair shows,
        :func:`bafusion.fusion.align.implausible_motion`: a failed registration, as on a scene
        with one-dimensional structure; no motion is reported), ``failed`` (the
        registration matches the shots worse than no motion: no motion is reported),
        ``defocus`` (the motion vanishes when either shot is blurred by :data:`DEFOCUS_SIGMA`, or
        by the sigma of :data:`DEFOCUS_LADDER` at which no motion fits the shots at least
        :data:`DEFOCUS_EXPLAINS` times better than the motion: the focus difference, not a
        motion), ``too small`` or ``too flat`` (not judged: a shot without structure at the
        coarse scale, :func:`is_flat`).
    blurred : float or None
        For ``moves`` and ``defocus``: the smallest motion with either shot blurred.
    explains : float or None
        For ``moves`` and ``defocus``: how many times better no motion fits than the motion with
        one shot blurred (:func:`defocus_fit`).
    reason : str or None
        For ``implausible``: why (:func:`bafusion.fusion.align.implausible_motion`).
    """

    index: int
    px: float | None
    verdict: str
    blurred: float | None = None
    explains: float | None = None
    reason: str | None = None


def shot_motions(images: Sequence[np.ndarray], threshold: float = HINT_MOTION_PX) -> list[ShotMotion]:
    """How every shot after the first moves against it, with a verdict (:class:`ShotMotion`).

    A shot ``moves`` when its motion (:func:`coarse_motion`) exceeds ``threshold`` pixels and
    :data:`HINT_REDUCED_PX` pixels of the reduced copies (a long side of at most
    :data:`MOTION_SIDE`), so that in large photos it stands above the estimate's own error. A
    motion whose registration matches the reduced shots worse than they match unmoved
    (:func:`bafusion.fusion.align.match_quality`, on the area both cover; by more than
    :data:`FAILED_MATCH_DROP`) is taken for a ``failed`` estimate, as on a strongly defocused pair.
    Else an estimate that is not a motion a hand-held focus pair shows (a scale, rotation or shift
    beyond the bounds of :func:`bafusion.fusion.align.implausible_motion`; a scene with
    one-dimensional structure) is ``implausible``.
    A motion that falls to the threshold or below when either reduced shot is blurred by
    :data:`DEFOCUS_SIGMA`, or by the sigma of :data:`DEFOCUS_LADDER` at which no motion fits the
    shots at least :data:`DEFOCUS_EXPLAINS` times better than the motion does, is the focus
    difference (``defocus``), not a motion.
    Shots under :data:`MIN_SIDE` pixels, or whose reduced copies are, are ``too small``; a shot
    without structure (:func:`is_flat`), or beside a first shot without it, is ``too flat``.

    Parameters
    ----------
    images : sequence of numpy.ndarray
        Same-size uint8 shots, the first the reference.
    threshold : float
        Motion (pixels of the shots, RMS over the corners) above which a shot moves.

    Returns
    -------
    list of ShotMotion
        One per shot after the first.
    """
    with shared_reductions():  # each shot reduced once, for the flatness test and the registration
        return _shot_motions(images, threshold)


def _shot_motions(images: Sequence[np.ndarray], threshold: float) -> list[ShotMotion]:
    from bafusion.fusion.align import corner_rms, coverage, implausible_motion, match_quality, warp_to_first

    out: list[ShotMotion] = []
    first_flat: bool | None = None
    for i, im in enumerate(images[1:], start=1):
        if not _judgeable(images[0].shape, MOTION_SIDE):
            out.append(ShotMotion(i, None, "too small"))
            continue
        if first_flat is None:
            first_flat = is_flat(images[0])
        if first_flat or is_flat(im):  # nothing to register by: any estimate is noise
            out.append(ShotMotion(i, None, "too flat"))
            continue
        m, ra, rb, k = _coarse_registration(images[0], im, MOTION_SIDE, MOTION_ITERS, MOTION_SAMPLES, MOTION_TOL)
        d = corner_rms(m, ra.shape) * k
        if d <= threshold or d / k <= HINT_REDUCED_PX:
            out.append(ShotMotion(i, d, "still"))
            continue
        mask = coverage(m, ra.shape)
        wb = warp_to_first(rb, m, ra.shape)
        if match_quality(ra, wb, mask) < match_quality(ra, rb, mask) - FAILED_MATCH_DROP:
            out.append(ShotMotion(i, d, "failed"))
            continue
        why = implausible_motion(m, ra.shape)
        if why:  # matches no worse, yet no hand-held pair moves so (one-dimensional structure)
            out.append(ShotMotion(i, d, "implausible", reason=why))
            continue
        blurred = _blurred_motion(ra, rb)
        explains, x, y = defocus_fit(ra, rb, wb, mask)
        if explains >= DEFOCUS_EXPLAINS:  # no motion fits far better at some blur: estimate there too
            blurred = min(blurred, _motion(x, y))
        blurred *= k
        defocus = blurred <= threshold or blurred / k <= HINT_REDUCED_PX
        out.append(ShotMotion(i, d, "defocus" if defocus else "moves", blurred, explains))
    return out


def _correlation(x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> float:
    u, v = x[mask] - x[mask].mean(), y[mask] - y[mask].mean()
    den = math.sqrt(float(u @ u) * float(v @ v))
    return float(u @ v) / den if den > 1e-12 else 0.0


def defocus_fit(ra: np.ndarray, rb: np.ndarray, wb: np.ndarray,
                mask: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """How much better no motion fits two reduced shots than a motion, once one is blurred.

    For every sigma of :data:`DEFOCUS_LADDER` and either shot blurred, the misfit ``1 - r``
    (``r`` the correlation on ``mask``) of the blurred pair under the motion (``wb``: ``rb``
    warped by it) over the misfit of the unmoved pair; the largest ratio, with that blurred pair.
    A ratio well above 1 says the motion is the defocus spread (see :data:`DEFOCUS_EXPLAINS`).

    Parameters
    ----------
    ra, rb : numpy.ndarray
        The reduced gray shots (float).
    wb : numpy.ndarray
        ``rb`` warped onto ``ra`` by the estimated motion.
    mask : numpy.ndarray
        Boolean, the pixels ``wb`` covers.

    Returns
    -------
    tuple
        (ratio, blurred first shot, blurred second shot), the shots unwarped.
    """
    best: tuple[float, np.ndarray, np.ndarray] = (0.0, ra, rb)
    for sigma in DEFOCUS_LADDER:
        ga = ndimage.gaussian_filter(ra, sigma)
        gb = ndimage.gaussian_filter(rb, sigma)
        for x, y, moved in ((ga, rb, wb), (ra, gb, ndimage.gaussian_filter(wb, sigma))):
            still = 1.0 - _correlation(x, y, mask)
            ratio = (1.0 - _correlation(x, moved, mask)) / max(still, 1e-12)
            if ratio > best[0]:
                best = (ratio, x, y)
    return best


def _motion(x: np.ndarray, y: np.ndarray) -> float:
    """The motion (pixels of ``x``, RMS over the corners) of the similarity registering ``y``
    onto ``x``, as :func:`coarse_motion` estimates it."""
    from bafusion.fusion.align import corner_rms, estimate_transform

    # as _coarse_registration, but as fitted: with one shot blurred (the defocus ladder, measured
    # so) the detail that align.SUPPORT_PX's check judges by is the blur's, not the scene's
    m = estimate_transform(x, y, "similarity", iters=MOTION_ITERS, samples=MOTION_SAMPLES, tol=MOTION_TOL,
                           antialias=0.0, check=False)
    return corner_rms(m, x.shape)


def _blurred_motion(ra: np.ndarray, rb: np.ndarray) -> float:
    """The smaller motion (pixels of the reduced copies) of the two registrations with ``ra``,
    then ``rb``, blurred by :data:`DEFOCUS_SIGMA` (see there)."""
    return min(_motion(ndimage.gaussian_filter(ra, DEFOCUS_SIGMA), rb),
               _motion(ra, ndimage.gaussian_filter(rb, DEFOCUS_SIGMA)))


def moving_shots(images: Sequence[np.ndarray], threshold: float = HINT_MOTION_PX) -> list[tuple[int, float]]:
    """The shots that move (:func:`shot_motions`, same parameters, verdict ``moves``) as (index,
    motion) pairs; empty when none does."""
    return [(sm.index, float(sm.px)) for sm in shot_motions(images, threshold) if sm.verdict == "moves"]


class AutoAlignWarning(UserWarning):
    """Issued by :func:`bafusion.fuse` with ``align="auto"`` for each shot it could not judge and
    so leaves as registered (where ``fuse --align auto`` says so on stderr): its motion estimate
    failed (``failed``, ``implausible``, ``error``) or the shot is too flat or too small to judge
    (:class:`ShotMotion`'s verdicts). The text is the command line's line, after
    ``align="auto": ``. Filter it with :mod:`warnings`; catch it to know that the fusion was not
    aligned for that shot."""


class MotionWarning(UserWarning):
    """Issued by :func:`bafusion.fuse` (``align=None``, its default) when a shot moves against
    the first by more than :data:`HINT_MOTION_PX`: the text is :func:`motion_hints`' line."""


def motion_hints(images: Sequence[np.ndarray], names: Sequence[str],
                 threshold: float = HINT_MOTION_PX,
                 advice: str = "--align similarity (or auto)") -> list[str]:
    """One line for every shot that moves (:func:`moving_shots`), suggesting ``advice``; empty
    when none does.

    Parameters
    ----------
    images : sequence of numpy.ndarray
        Same-size uint8 shots, the first the reference.
    names : sequence of str
        Their file names, for the lines.
    threshold : float
        As for :func:`moving_shots`.
    advice : str
        What registers the shots (the command line's option; the Python API's argument).

    Returns
    -------
    list of str
    """
    return [f"{names[i]}: moves about {d:.1f} px against {names[0]} (handheld?); the fusion may show doubled "
            f"edges where it switches source: {advice} registers the shots first"
            for i, d in moving_shots(images, threshold)]
