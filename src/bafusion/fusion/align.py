"""Register handheld focus brackets: every shot onto the first, then crop to the common area.

Method (:func:`estimate_transform`): an ECC-like Gauss-Newton registration of lightly blurred
gray copies (Gaussian, ``sigma`` px) over an image pyramid, started from a phase-correlation
translation on the coarsest level. The residual is fitted with a gain and an offset per
iteration (as ECC's normalisation does), so the brightness of the shots may differ, and the
pixels are weighted robustly (Cauchy), so that the regions the focus difference makes disagree
count less; the clipped regions of either shot (a blown-out sky, a black shadow:
:func:`clipped_regions`) are left out. The models are ``translation`` (2 parameters), ``similarity`` (shift, rotation,
scale: camera shake and focus breathing) and ``homography`` (8). Motion up to a few percent of
the image side is found; larger motion is not.

Accuracy (measured, BENCHMARKS.md): a known motion is recovered to a few hundredths of a
pixel between shots of equal focus; the focus difference itself biases the estimate by a
fraction of a pixel (0.18 px on a synthetic registered pair whose halves are blurred in turn).
A larger pre-blur does not reduce that bias on Lytro (it grows), so ``sigma`` stays small. At
camera size the levels fitted on every ``stride``-th pixel are blurred by half a stride first
(:data:`_ANTIALIAS`): sampled as they were, a known motion came out 0.72 px off at 24 MP.
On composites of real mattes (registered by construction) the bias is 0.02-0.13 px at a
defocus of 2 px and up to 0.38 px at 4 px, with a scale within 0.07 % of 1; the 0.1-1.7 px the
estimate finds on the Lytro pairs (scales up to 0.45 % off 1) is mostly real where it is large
(refocusing magnifies; BENCHMARKS.md), so aligning a Lytro pair moves its B.

Stacks: the third and later shots are estimated against the shot before them (the last one
estimated with a plausible motion that matches its own reference as one scene) and that motion composed with the earlier shot's, so every
transform still maps onto the first's frame: estimated against the first, a shot focused far
from it drifted with the focus distance (synthetic handheld stacks, BENCHMARKS.md "Handheld
stacks": the 5th shot up to 1.12 px off, the 8th of 8 up to 1.67 px; chained 0.65 and 0.59);
a pair is as before.

Transforms are 3x3 matrices in pixel coordinates (x right, y down, pixel centres at integers)
that map a point of a shot to the same point of the first shot. :func:`warp_to_first` resamples
a shot onto the first's grid (quintic spline in :func:`align_images`, dtype kept). Crop: the fused result covers
only the pixels that every shot covers, cropped to the largest axis-aligned rectangle inside that
common area (:func:`largest_rectangle`); the crop box is reported.

Not one scene: after registration, the normalised correlation of the gradient magnitudes of
the shots at a coarse scale (Gaussian of 6 px per 520 px of long side, on shots reduced to at
most 520 px: the same at any resolution) on the common area (:attr:`Alignment.quality`)
is high for two shots of one scene, however differently focused, and near zero for two scenes; below
:data:`MIN_QUALITY` the shots are refused (``--force`` fuses them anyway). The threshold was
measured on the 20 Lytro pairs against mismatched Lytro pairs (BENCHMARKS.md). A stack's shot is
also judged against the shot it was estimated against (:attr:`Alignment.quality_ref`) and
refused only when both are below (:meth:`Alignment.not_one_scene`): with the first, the quality
falls with the focus distance (a synthetic handheld stack of 8 shots, defocus 2.5 px a layer:
0.45 and 0.41 at the 7th and 8th shots), with the neighbour it stayed 0.96-0.99; a photo of
another scene put in the stack matched neither (0.04).

Plausible motion: an estimate beyond what a hand-held focus pair shows (:data:`MAX_SCALE`,
:data:`MAX_ROTATION_DEG`, :data:`MAX_SHIFT`; :func:`implausible_motion`, :attr:`Alignment.implausible`)
is a failed one, as on a scene with one-dimensional structure; shots without structure
(:attr:`Alignment.flat`) are not aligned at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from bafusion.errors import UserError
from bafusion.io import gray_float

#: The registration models, fewest parameters first.
MODELS: tuple[str, ...] = ("translation", "similarity", "homography")

#: Shots whose estimated motion (RMS corner displacement) is below this many pixels are not
#: resampled: registered pairs (Lytro) stay byte-identical.
IDENTITY_TOLERANCE_PX = 0.1

#: Below this match quality the shots are taken for two scenes. Measured (BENCHMARKS.md) on
#: the 20 Lytro pairs: 0.92 to 0.99 for the pairs, at most 0.18 for 40 mismatched pairs.
MIN_QUALITY = 0.5

#: Smallest image side (pixels) the registration works on.
MIN_SIDE = 64

#: The motion a hand-held focus pair can show: scale (focus breathing) within
#: ``[1 / MAX_SCALE, MAX_SCALE]``, rotation (camera shake) up to :data:`MAX_ROTATION_DEG` either
#: way, and a shift of the image centre up to :data:`MAX_SHIFT` of the long side (the
#: registration finds motion up to a few percent of it, larger not). Measured (2026-12-04, the
#: coarse and the full registration alike) on the 73 real pairs of ``shared/data/eval``: scale 0.900 (savic-08) to
#: 1.071, rotation at most 0.91 deg, centre shift at most 3.8 % of the long side; the one failed
#: registration (g09-newspaper) reads scale 1.16 and 9.2 deg. An estimate outside these bounds is
#: a failed one (:func:`implausible_motion`): ``--align auto`` and the motion hint take it for no
#: motion, an explicit ``--align`` refuses it.
MAX_SCALE = 1.25
MAX_ROTATION_DEG = 5.0
MAX_SHIFT = 0.2

#: A pixel whose gray value (on [0, 1]) is at most this far from either end of the range is
#: clipped (a blown-out sky or window, a shadow crushed to black): 1.5 levels in 255, so a JPEG's
#: ringing around 255 counts too.
CLIP_MARGIN = 1.5 / 255.0

#: Only clipped regions count (:func:`clipped_regions`): pixels clipped throughout a square of
#: ``2 * CLIP_RADIUS + 1`` pixels, so a specular glint, the white gaps of printed text and the
#: outline of an object against a white or black backdrop still enter the registration.
CLIP_RADIUS = 2

#: :func:`align_images` names (its ``step``) each pyramid level and each channel it resamples of
#: at least this many pixels (the smaller ones take a fraction of a second each).
STEP_MIN_PIXELS = 1_000_000

#: An estimate that moves a shot by more than this (RMS corner displacement, pixels) must be
#: borne out by the shots' detail (:func:`_detail_costs`): it must not match the samples with
#: the most detail worse than no motion, nor worse than the translation fitted where that
#: detail lies (:data:`DETAIL_NEAR`; started from the estimate's shift there), by more than
#: :data:`SUPPORT_MARGIN`; else its parameters were not determined by the shots, and that
#: translation is used instead where it matches the detail better than no motion by the
#: margin, else no motion (where the detail is spread, only if that replacement also matches
#: the whole frame better: :data:`DETAIL_SPREAD`). A small subject whose focus differs between the shots, over a
#: smooth backdrop (a sky), read as a 1.13 scale and 43 px of motion on a registered pair, and
#: as much where B really moved by 3 px (the invented motion then matched the detail better
#: than no motion): the backdrop, matched up to a gain and an offset, does not constrain a
#: scale along its gradient, and the robust weights let the subject go (BENCHMARKS.md, "A
#: small subject over a smooth backdrop").
SUPPORT_PX = 1.0

#: ... "worse" (and the translation "better") by more than this fraction of the misfit.
#: Measured (BENCHMARKS.md): the check replaces the estimate on all 15 of 18 registered sky
#: pairs whose estimate exceeded 1 px (2.1-58 px), and on none of the 73 real pairs (at the
#: motion hint's 520 px) nor of 33 known motions of held-out composites.
SUPPORT_MARGIN = 0.05

#: The share of a level's samples, those of the largest gradient of the reference, on which
#: :func:`_detail_costs` judges an estimate ...
DETAIL_SHARE = 0.1

#: ... and at least this many times their median gradient (on a sky the median is its noise).
DETAIL_OVER_MEDIAN = 4.0

#: The translation an estimate is judged against (:data:`SUPPORT_PX`) is fitted on the samples
#: within this many sampling steps of the detail (:func:`_detail_samples`), as far as a defocus
#: spreads it: the smooth backdrop elsewhere, matched up to a gain and an offset, does not pin a
#: shift along its gradient (fitted on the whole frame, a sky pair shifted by 3 px read 1.3 px off).
DETAIL_NEAR = 4

#: Detail is spread where its RMS distance from its centroid (weighted by the squared gradient)
#: exceeds this share of half the long side: an estimate that such detail does not bear out is
#: replaced only where its replacement (that translation, or no motion) also matches the whole
#: frame better (:func:`match_quality`). Spread detail determines a rotation and a scale: on a
#: textured half frame turned by 0.5 deg and magnified 1 % (0.55) a shift fitted on the detail
#: matched it better than the right estimate; judged on that detail alone, the real shifts of
#: savic-05, -17 and -20 (1.0-2.6 px, spread 0.53-0.73; the shots also turn, ``--align
#: translation``) matched it slightly worse than no motion, and no motion lowered their match
#: quality (0.9493 -> 0.9339 on savic-17). A small subject (0.4-2.9 % of the frame) spreads
#: 0.2-0.37, a strip across the frame 0.64: a strip of subject along a sky, B shifted by 3 px,
#: read a scale of 1.013 (2.98 px off at the centre) while it was judged against no motion
#: alone (itself 3 px off); its shift now (0.25 px off). Registered, it read 1.37 px unchecked.
DETAIL_SPREAD = 0.45


#: :func:`estimate_transform`'s iterations, samples and tolerance (:func:`align_images` uses them).
_ITERS, _SAMPLES, _TOL = 50, 80000, 1e-3

#: A pyramid level larger than the samples is fitted on every ``stride``-th pixel: it is first
#: blurred by a Gaussian of this many strides, so that the samples do not alias its detail.
#: Measured on a synthetic handheld pair at 3000x2000 (stride 8): sampled as it was, the estimate
#: was 0.26 px off the known motion (median over the image; 0.09 and 0.24 px at 2x and 4x the
#: samples: aliasing, not too few samples), blurred by half a stride 0.03 px; at 1500x1000 0.17
#: and 0.06 px, at 4500x3000 0.06 px, at 6000x4000 0.72 and 0.07 px (max 1.29 and 0.14 px). The
#: levels of a 520-px shot have fewer pixels than the samples: unchanged. The motion estimate of
#: :mod:`bafusion.fusion.scene` (its thresholds measured without it) passes ``antialias=0``.
_ANTIALIAS = 0.5

#: Long side (pixels) at which :func:`match_quality` judges the shots, that of the Lytro pairs
#: :data:`MIN_QUALITY` was measured on: larger shots are reduced to it, their sigma scaled.
QUALITY_SIDE = 520

#: :func:`match_quality` leaves the clipped regions out only when at least this share of the
#: area it judges remains.
CLIP_KEEP = 0.1

#: A shot of another size than the first is registered (:func:`align_images`) when its aspect
#: ratio (width / height) is within this fraction of the first's: a crop of a few pixels, focus
#: breathing saved at another size, or another resolution setting. It is first scaled uniformly
#: onto the first's frame, centre on centre (:func:`size_matrix`), and the residual motion is
#: estimated as for shots of one size; a larger difference is not a resampled or slightly
#: cropped shot of the same frame (a frame turned by 90 degrees swaps width and height).
MAX_ASPECT_DIFF = 0.02


def size_matrix(src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    """The 3x3 uniform scale, centre on centre, that maps a shot of ``src`` ``(width, height)``
    onto a frame of ``dst``: the scale is the square root of the ratio of the areas (the ratio
    of the sides when the aspect ratios agree), so that the image's extent (pixel edges, not
    centres) maps onto the frame's."""
    sw, sh = src
    dw, dh = dst
    s = math.sqrt((dw * dh) / (sw * sh))
    return np.array([[s, 0.0, (dw - 1) / 2 - s * (sw - 1) / 2],
                     [0.0, s, (dh - 1) / 2 - s * (sh - 1) / 2],
                     [0.0, 0.0, 1.0]])


def size_problem(first: tuple[int, int], other: tuple[int, int]) -> str | None:
    """Why a shot of size ``other`` ``(width, height)`` cannot be registered onto a first shot
    of size ``first``, or None when it can (same size, or an aspect ratio within
    :data:`MAX_ASPECT_DIFF`): a frame turned by 90 degrees (width and height swapped), or
    another aspect ratio. The sizes alone do not tell whether a file has an orientation tag:
    the turned frame's tag "may be missing or wrong" (a tag of 180 degrees, applied, was said
    to be missing; :func:`bafusion.fusion.batch.check_alignable_sizes` names an applied one)."""
    if other == first:
        return None
    if other == first[::-1]:
        return "the shot looks turned by 90 degrees: an orientation tag may be missing or wrong"
    ra, rb = first[0] / first[1], other[0] / other[1]
    if abs(rb / ra - 1) > MAX_ASPECT_DIFF:
        return (f"its aspect ratio ({rb:.3f}) differs from the first's ({ra:.3f}) by more than "
                f"{100 * MAX_ASPECT_DIFF:g} %: not the same frame at another size; crop it to the first's aspect ratio")
    return None


def _to_frame(img: np.ndarray, m: np.ndarray, shape: tuple[int, int], order: int,
              step: Callable[[str], None] | None = None) -> np.ndarray:
    """:func:`warp_to_first` of a shot of another size: when ``m`` shrinks it, the shot is first
    low-passed (Gaussian of ``0.5 * sqrt(1 / s^2 - 1)`` px, ``s`` the scale) so that the
    resampled copy does not alias; the dtype is kept."""
    s = describe_matrix(m)["scale"]
    src = np.asarray(img)
    if s < 0.99:
        sig = 0.5 * math.sqrt(1.0 / s**2 - 1.0)
        f = ndimage.gaussian_filter(src.astype(np.float64), (sig, sig) + (0,) * (src.ndim - 2))
        out = warp_to_first(f, m, shape, order=order, step=step)
        if np.issubdtype(src.dtype, np.integer):
            info = np.iinfo(src.dtype)
            return np.clip(np.round(out), info.min, info.max).astype(src.dtype)
        return out.astype(src.dtype)
    return warp_to_first(src, m, shape, order=order, step=step)


def to_first_frame(images: Sequence[np.ndarray], order: int = 1) -> list[np.ndarray]:
    """The shots, each of another size than the first scaled onto the first's frame
    (:func:`size_matrix`, low-passed when shrunk): copies of one size for the checks that
    compare shots pixel by pixel (the one-scene check, the motion estimate of ``--align
    auto``); the shots of the first's size are returned as they are."""
    h, w = images[0].shape[:2]
    return [im if im.shape[:2] == (h, w) else
            _to_frame(im, size_matrix((im.shape[1], im.shape[0]), (w, h)), (h, w), order) for im in images]


@dataclass
class Alignment:
    """The result of :func:`align_images`.

    Attributes
    ----------
    model : str
        The registration model used.
    transforms : list of ndarray
        One 3x3 matrix per shot (the first is the identity) mapping a shot's pixel
        coordinates ``(x, y, 1)`` to the first shot's.
    rms_px : list of float
        RMS displacement of the four image corners under each transform, in pixels.
    warped : list of bool
        Whether each shot was resampled (motion above :data:`IDENTITY_TOLERANCE_PX`).
    quality : list of float or None
        Match quality of each shot with the first after registration (the first's is 1); None
        for a shot not aligned because it and the first are both too flat (:attr:`flat`).
    crop : tuple of int
        ``(x0, y0, x1, y1)``, end exclusive: the largest axis-aligned rectangle inside the area
        every shot covers; the whole image when nothing was resampled.
    images : list of ndarray
        The registered shots, cropped to ``crop``.
    seconds : float
        Time spent estimating and warping.
    size : tuple of int
        ``(width, height)`` of the shots before the crop.
    implausible : list of str or None
        For each shot whose estimate is not a motion a hand-held focus pair shows
        (:func:`implausible_motion`), why; else None. Such a shot is warped as estimated: the
        refusal is the caller's.
    flat : list of bool
        Whether a shot was left unaligned because it or the first has no structure to register
        by (:func:`bafusion.fusion.scene.is_flat`; the first's is False).
    sizes : list of tuple of int
        ``(width, height)`` of each shot as given: a shot of another size than the first was
        scaled onto its frame (:func:`size_matrix`) before its residual motion was estimated;
        its transform includes that scale, and :attr:`rms_px`, :attr:`implausible` and
        :meth:`describe` are of the residual motion.
    replaced : list of str or None
        For each shot whose estimate the shots' detail did not bear out (:data:`SUPPORT_PX`:
        a small subject over a smooth backdrop), why and what was used instead (the
        translation estimate, or no motion); else None (the first's is None).
    reference : list of int
        The shot (index) each shot's motion was estimated against: the first (0) for a pair's
        second shot, a flat one and the first itself; a stack's later shots the one before them
        that was estimated plausibly and matches its own reference (:func:`align_images`).
    quality_ref : list of float or None
        Match quality of each shot with its :attr:`reference`, in that shot's frame on the
        reduced shots (:func:`_pair_quality`); :attr:`quality` where the reference is the first,
        or where the estimate was implausible. A shot is refused only when both are below
        :data:`MIN_QUALITY` (:meth:`not_one_scene`).
    """

    model: str
    transforms: list[np.ndarray]
    rms_px: list[float]
    warped: list[bool]
    quality: list[float]
    crop: tuple[int, int, int, int]
    images: list[np.ndarray] = field(repr=False)
    seconds: float = 0.0
    size: tuple[int, int] = (0, 0)  #: (width, height) of the shots before the crop
    implausible: list[str | None] = field(default_factory=list)
    flat: list[bool] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    #: Interpolation the shots were resampled with (:func:`warp_to_first`'s ``order``).
    order: int = 5
    replaced: list[str | None] = field(default_factory=list)
    reference: list[int] = field(default_factory=list)
    quality_ref: list[float | None] = field(default_factory=list)

    def not_one_scene(self) -> list[int]:
        """The shots (indices, the first's 0) that do not look like the same scene: their
        match quality is below :data:`MIN_QUALITY` both with the first (:attr:`quality`) and
        with the shot they were estimated against (:attr:`quality_ref`; the first for a pair).
        A stack's shots are judged against their neighbour too, as the quality with the first
        falls with the focus distance (a synthetic handheld stack of 8 shots, defocus growing by
        2.5 px a layer: 0.45 and 0.41 with the first at the 7th and 8th, BENCHMARKS.md)."""
        refs = self.quality_ref or self.quality
        return [i for i in range(1, len(self.quality)) if self.quality[i] is not None
                and self.quality[i] < MIN_QUALITY and (refs[i] is None or refs[i] < MIN_QUALITY)]

    def match_text(self, i: int, names: Sequence[str]) -> str:
        """Shot ``i``'s match quality for a message: with the first after the alignment and,
        for a stack's shot estimated against another (:attr:`reference`), with that one too
        (``"match quality 0.38 after similarity alignment, 0.92 with b.png, the shot it was
        registered against"``); ``names`` the shots' names, the first's first."""
        refs = self.quality_ref or self.quality
        ref = self.reference[i] if self.reference else 0
        return (f"match quality {self.quality[i]:.2f} after {self.model} alignment"
                + (f", {refs[i]:.2f} with {names[ref]}, the shot it was registered against"
                   if ref and refs[i] is not None else ""))

    def apply(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The same registration and crop applied to other copies of the shots, of their sizes
        (the full-depth uint16 versions of 8-bit shots that were aligned): each shot resampled
        as its copy was (the same transform, interpolation and low-pass; a shot not resampled
        is taken as it is), the dtype kept, and cropped to :attr:`crop`."""
        h, w = self.size[1], self.size[0]
        x0, y0, x1, y1 = self.crop
        out = []
        for i, im in enumerate(images):
            im = np.asarray(im)
            if self.warped[i]:
                m = self.transforms[i]
                im = warp_to_first(im, m, (h, w), order=self.order) if im.shape[:2] == (h, w) else \
                    _to_frame(im, m, (h, w), self.order)
            out.append(im[y0:y1, x0:x1])
        return out

    def describe(self, names: Sequence[str] | None = None) -> list[str]:
        """One readable line per shot: its transform to the first (shift of the image centre,
        rotation and scale about it), motion and quality (a stack's later shot's with the shot it
        was estimated against too); for a shot of another size, where its
        frame lies on the first's (pixel edges: the first spans ``0..W``, ``0..H``; a crop of a
        few pixels lies inside it at scale 1), its rotation and scale; then the crop."""
        names = list(names) if names else [f"image {i + 1}" for i in range(len(self.transforms))]
        lines = []
        for i, (m, name) in enumerate(zip(self.transforms, names)):
            if i == 0:
                lines.append(f"align {name}: reference ({self.model})")
                continue
            if self.flat and self.flat[i]:
                lines.append(f"align {name} -> {names[0]}: too flat to align (no structure to register by, in it "
                             f"or in {names[0]}): not warped")
                continue
            # a stack's shot: its match with the shot it was estimated against too (not_one_scene)
            ref = self.reference[i] if self.reference else 0
            mq = f"match quality {self.quality[i]:.2f}" + (
                f" ({self.quality_ref[i]:.2f} with {names[ref]}, the shot it was estimated against)"
                if ref and self.quality_ref[i] is not None else "")
            tail = ((f"; implausible: {self.implausible[i]}" if self.implausible and self.implausible[i] else "")
                    + (f"; {self.replaced[i]}" if self.replaced and self.replaced[i] else ""))
            if self.sizes and self.sizes[i] != self.size:
                # where its frame lies on the first's (pixel edges; the first spans 0..W, 0..H):
                # a crop reads as a part of the first's frame at scale 1, not as a rescale to the
                # first's size and a residual motion that undoes it
                bw, bh = self.sizes[i]
                p = describe_matrix(m)
                q = m @ np.array([[-0.5, bw - 0.5, -0.5, bw - 0.5], [-0.5, -0.5, bh - 0.5, bh - 0.5], [1.0] * 4])
                xs, ys = q[0] / q[2] + 0.5, q[1] / q[2] + 0.5
                lines.append(
                    f"align {name} -> {names[0]}: {bw}x{bh} px, its frame lies at x {xs.min():.2f}..{xs.max():.2f}, "
                    f"y {ys.min():.2f}..{ys.max():.2f} of the first's {self.size[0]}x{self.size[1]}, "
                    f"rotation {p['rotation_deg']:+.3f} deg, scale {p['scale']:.4f}"
                    + (f", perspective ({m[2, 0]:+.2e}, {m[2, 1]:+.2e})" if self.model == "homography" else "")
                    + f"; {mq}, resampled onto the first's frame" + tail)
                continue
            p = describe_matrix(m)
            c = np.array([(self.size[0] - 1) / 2, (self.size[1] - 1) / 2, 1.0])
            mc = m @ c
            dx, dy = mc[0] / mc[2] - c[0], mc[1] / mc[2] - c[1]
            state = "warped" if self.warped[i] else "not resampled (its motion is below the tolerance)"
            lines.append(
                f"align {name} -> {names[0]}: shift of the centre ({dx:+.2f}, {dy:+.2f}) px, "
                f"rotation {p['rotation_deg']:+.3f} deg, scale {p['scale']:.4f}"
                + (f", perspective ({m[2, 0]:+.2e}, {m[2, 1]:+.2e})" if self.model == "homography" else "")
                + f"; corner motion {self.rms_px[i]:.2f} px RMS, {mq}, {state}" + tail
            )
        x0, y0, x1, y1 = self.crop
        lines.append(f"align crop: x {x0}..{x1}, y {y0}..{y1} ({x1 - x0}x{y1 - y0} px, the area every shot covers)")
        return lines


def describe_matrix(m: np.ndarray) -> dict[str, float]:
    """Shift, rotation (degrees) and scale of the similarity part of a 3x3 transform."""
    a, b = m[0, 0], m[1, 0]
    return {
        "tx": float(m[0, 2]),
        "ty": float(m[1, 2]),
        "rotation_deg": math.degrees(math.atan2(b, a)),
        "scale": math.hypot(a, b),
    }


def similarity_matrix(shift: tuple[float, float] = (0.0, 0.0), rotation_deg: float = 0.0, scale: float = 1.0,
                      center: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """A 3x3 similarity: rotate by ``rotation_deg`` and scale by ``scale`` about ``center``
    ``(x, y)``, then shift by ``shift`` ``(dx, dy)`` pixels."""
    c, s = math.cos(math.radians(rotation_deg)) * scale, math.sin(math.radians(rotation_deg)) * scale
    cx, cy = center
    return np.array([
        [c, -s, cx - c * cx + s * cy + shift[0]],
        [s, c, cy - s * cx - c * cy + shift[1]],
        [0.0, 0.0, 1.0],
    ])


def implausible_motion(m: np.ndarray, shape: tuple[int, ...]) -> str | None:
    """Why a transform is not a motion that a hand-held focus pair shows (:data:`MAX_SCALE`,
    :data:`MAX_ROTATION_DEG`, :data:`MAX_SHIFT`), or None when it is one.

    Parameters
    ----------
    m : numpy.ndarray
        3x3 transform (a shot's pixels to the first's), as :func:`estimate_transform` gives it.
    shape : tuple of int
        The shots' shape (H, W, ...), in the pixels ``m`` works in.

    Returns
    -------
    str or None
        E.g. ``"scale 0.40 (a hand-held focus pair shows 0.80-1.25)"``; the reasons joined
        with ``"; "`` when several bounds are exceeded.
    """
    p = describe_matrix(m)
    h, w = shape[:2]
    c = np.array([(w - 1) / 2, (h - 1) / 2, 1.0])
    mc = m @ c
    shift = math.hypot(mc[0] / mc[2] - c[0], mc[1] / mc[2] - c[1]) / max(h, w)
    why = []
    if not (1 / MAX_SCALE <= p["scale"] <= MAX_SCALE):
        why.append(f"scale {p['scale']:.2f} (a hand-held focus pair shows {1 / MAX_SCALE:.2f}-{MAX_SCALE:.2f})")
    if abs(p["rotation_deg"]) > MAX_ROTATION_DEG:
        why.append(f"rotation {p['rotation_deg']:+.1f} deg (at most {MAX_ROTATION_DEG:g})")
    if shift > MAX_SHIFT:
        why.append(f"shift {100 * shift:.0f} % of the image (at most {100 * MAX_SHIFT:.0f} %)")
    if not np.all(np.isfinite(m)):
        why.append("not a finite transform")
    return "; ".join(why) or None


def corner_rms(m: np.ndarray, shape: tuple[int, ...], other: np.ndarray | None = None) -> float:
    """RMS distance, in pixels, between the four corners of an image of ``shape`` mapped by
    ``m`` and mapped by ``other`` (default: the identity)."""
    h, w = shape[:2]
    pts = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], dtype=np.float64).T
    ref = pts if other is None else other @ pts
    p = m @ pts
    d = p[:2] / p[2] - ref[:2] / ref[2]
    return float(np.sqrt(np.mean(np.sum(d**2, axis=0))))


# --------------------------------------------------------------------------------------
# Estimation


def _gray(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img)
    g = gray_float(a) if a.ndim == 2 or a.shape[2] in (1, 3, 4) else a[..., 0].astype(np.float64)
    if a.dtype == np.uint8:
        g /= 255.0  # in place: the same values, without another 192 MB at 24 MP
    return g


def clipped_regions(img: np.ndarray) -> np.ndarray | None:
    """The clipped regions of a shot: pixels whose gray value lies within :data:`CLIP_MARGIN`
    of either end of the range throughout a square of ``2 * CLIP_RADIUS + 1`` pixels (a
    blown-out sky, a black shadow). They carry no structure in that shot, while the other shot
    may show some there (another exposure, or a shot clipped by its processing): matched, they
    pull the registration towards nonsense (a blown-out half of a registered pair read as a
    scale of 0.4), so :func:`estimate_transform` leaves them out.

    Parameters
    ----------
    img : numpy.ndarray
        A shot, gray or RGB, uint8 or float on [0, 1].

    Returns
    -------
    numpy.ndarray or None
        Boolean (H, W); None when the shot has no clipped region.
    """
    return _clipped(_gray(img))


def _clipped(g: np.ndarray) -> np.ndarray | None:
    """:func:`clipped_regions` of a shot's gray copy (:func:`_gray`): a shot's gray copy is
    made once and its mask derived from it once (:func:`align_images`)."""
    clipped = (g >= 1.0 - CLIP_MARGIN) | (g <= CLIP_MARGIN)
    if not clipped.any():
        return None
    box = np.ones((2 * CLIP_RADIUS + 1,) * 2, dtype=bool)
    clipped = ndimage.binary_erosion(clipped, box, border_value=1)
    return clipped if clipped.any() else None


def _mask_pyramid(mask: np.ndarray | None, levels: int) -> list[np.ndarray | None]:
    """A boolean mask on every level of :func:`_pyramid`: a pixel of a level is in it when at
    least half of what it averages is."""
    if mask is None:
        return [None] * levels
    return [m >= 0.5 for m in _pyramid(mask.astype(np.float64))][:levels]


def _check_model(model: str) -> None:
    if model not in MODELS:
        raise UserError(f"alignment model must be one of none, {', '.join(MODELS)}, got {model!r}")


def _pyramid(g: np.ndarray, min_side: int = 48) -> list[np.ndarray]:
    """Level k halves level k-1 (Gaussian blur, then 2x2 means)."""
    levels = [g]
    while min(levels[-1].shape) // 2 >= min_side:
        s = ndimage.gaussian_filter(levels[-1], 1.0)
        h, w = s.shape
        levels.append(s[: h - h % 2, : w - w % 2].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)))
    return levels


def _basis(model: str) -> list[np.ndarray]:
    """dM/dp for each parameter of the model (M = I + sum p_k E_k, linear in p)."""
    def e(*entries: tuple[int, int, float]) -> np.ndarray:
        m = np.zeros((3, 3))
        for r, c, v in entries:
            m[r, c] = v
        return m

    if model == "translation":
        return [e((0, 2, 1)), e((1, 2, 1))]
    if model == "similarity":
        return [e((0, 0, 1), (1, 1, 1)), e((0, 1, -1), (1, 0, 1)), e((0, 2, 1)), e((1, 2, 1))]
    return [e((r, c, 1)) for r in range(3) for c in range(3) if (r, c) != (2, 2)]


def _norm_matrix(shape: tuple[int, int]) -> np.ndarray:
    """Pixel coordinates -> normalised ones (centre 0, half the longer side 1)."""
    h, w = shape
    s = max(h, w) / 2.0
    return np.array([[1 / s, 0, -(w - 1) / 2 / s], [0, 1 / s, -(h - 1) / 2 / s], [0, 0, 1]])


def _level_matrix(shape0: tuple[int, int], level: int) -> np.ndarray:
    """Pixel coordinates of pyramid level ``level`` -> normalised coordinates of level 0."""
    f = 2.0**level
    return _norm_matrix(shape0) @ np.array([[f, 0, (f - 1) / 2], [0, f, (f - 1) / 2], [0, 0, 1]])


def _sample_grid(shape: tuple[int, int], step: int, clip: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(xs, ys)``, flat: every ``step``-th pixel of a level of ``shape``, row by row, less
    those that ``clip`` (boolean, that level's grid) marks."""
    h, w = shape
    ys, xs = np.mgrid[0:h:step, 0:w:step]
    xs, ys = xs.ravel(), ys.ravel()
    if clip is not None:
        keep = ~clip[ys, xs]
        xs, ys = xs[keep], ys[keep]
    return xs, ys


def _gauss_newton(ref: np.ndarray, mov: np.ndarray, w_norm: np.ndarray, model: str, n_to_px: np.ndarray,
                  iters: int, step: int, tol: float = 1e-3, ref_clip: np.ndarray | None = None,
                  mov_clip: np.ndarray | None = None) -> np.ndarray:
    """Refine ``w_norm`` (normalised coordinates of the reference -> of the moving shot) so
    that ``mov(w(x)) ~ gain * ref(x) + offset``, by iteratively reweighted Gauss-Newton
    (Cauchy weights: pixels that the focus difference makes disagree count less). Pixels of
    ``ref_clip`` (boolean, the reference's grid), and those that land on ``mov_clip`` (the
    moving shot's grid), do not enter the fit (:func:`clipped_regions`)."""
    h, w = ref.shape
    xs, ys = _sample_grid(ref.shape, step, ref_clip)
    px = np.stack([xs, ys, np.ones_like(xs)]).astype(np.float64)
    pn = np.linalg.inv(n_to_px) @ px
    r0 = ref[ys, xs]
    gy, gx = np.gradient(mov)
    basis = _basis(model)
    for _ in range(iters):
        q = w_norm @ pn
        qz = q[2]
        qn = q[:2] / qz
        cx = n_to_px[0, 0] * qn[0] + n_to_px[0, 2]
        cy = n_to_px[1, 1] * qn[1] + n_to_px[1, 2]
        ok = (cx >= 0) & (cx <= w - 1) & (cy >= 0) & (cy <= h - 1)
        if mov_clip is not None:
            ok[ok] = ~mov_clip[np.round(cy[ok]).astype(np.intp), np.round(cx[ok]).astype(np.intp)]
        if ok.sum() < 10 * (len(basis) + 2):
            break
        coords = np.stack([cy[ok], cx[ok]])
        v = ndimage.map_coordinates(mov, coords, order=1)
        vgx = ndimage.map_coordinates(gx, coords, order=1) * n_to_px[0, 0]
        vgy = ndimage.map_coordinates(gy, coords, order=1) * n_to_px[1, 1]
        rr = r0[ok]
        (g, o), *_ = np.linalg.lstsq(np.stack([rr, np.ones_like(rr)], axis=1), v, rcond=None)
        res = v - (g * rr + o)
        c = 1.4826 * np.median(np.abs(res)) * 2.385 + 1e-9
        wt = np.sqrt(1.0 / (1.0 + (res / c) ** 2))
        pts, z, xn, yn = pn[:, ok], qz[ok], qn[0, ok], qn[1, ok]
        cols = []
        for e in basis:
            d = e @ pts
            cols.append(vgx * (d[0] - xn * d[2]) / z + vgy * (d[1] - yn * d[2]) / z)
        jac = np.stack(cols + [-rr, -np.ones_like(rr)], axis=1)
        dp, *_ = np.linalg.lstsq(jac * wt[:, None], -res * wt, rcond=None)
        upd = sum(dpk * e for dpk, e in zip(dp[: len(basis)], basis))
        w_norm = w_norm + upd
        w_norm = w_norm / w_norm[2, 2]
        if np.max(np.abs(upd[:2, :])) * n_to_px[0, 0] < tol and np.max(np.abs(upd[2, :2])) < 1e-6:
            break
    return w_norm


def _detail_samples(ref: np.ndarray, n_to_px: np.ndarray, step: int, ref_clip: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float] | None:
    """The :data:`DETAIL_SHARE` of the samples (every ``step``-th pixel of the level ``ref``,
    outside ``ref_clip``) where the reference has the largest gradient: ``(xs, ys, their
    normalised coordinates, their centroid weighted by the squared gradient, their RMS distance
    from it so weighted)``, normalised coordinates homogeneous (3, N) and (3,) (half the long
    side is 1); None where too few."""
    xs, ys = _sample_grid(ref.shape, step, ref_clip)
    if xs.size < 500:
        return None
    gy, gx = np.gradient(ref)
    mag = np.hypot(gx[ys, xs], gy[ys, xs])
    # the largest gradients, and only those that stand above the noise of a smooth backdrop
    top = mag >= max(float(np.quantile(mag, 1.0 - DETAIL_SHARE)), DETAIL_OVER_MEDIAN * float(np.median(mag)))
    if top.sum() < 50:
        return None
    xs, ys, wt = xs[top], ys[top], mag[top] ** 2
    pn = np.linalg.inv(n_to_px) @ np.stack([xs, ys, np.ones_like(xs)]).astype(np.float64)
    wt = wt / max(float(wt.sum()), 1e-300)
    pc = pn @ wt  # where the gradient energy lies ...
    spread = math.sqrt(float(np.sum(wt * ((pn[0] - pc[0]) ** 2 + (pn[1] - pc[1]) ** 2))))  # ... and how far it spreads
    return xs, ys, pn, pc, spread


def _detail_costs(ref: np.ndarray, mov: np.ndarray, n_to_px: np.ndarray, xs: np.ndarray, ys: np.ndarray,
                  pn: np.ndarray, cands: Sequence[np.ndarray], mov_clip: np.ndarray | None = None
                  ) -> list[float] | None:
    """How well each of ``cands`` (normalised coordinates of the reference -> of the moving
    shot, as :func:`_gauss_newton` refines them; the second is no motion) matches the samples
    ``xs``, ``ys`` (normalised ``pn``) of :func:`_detail_samples`: the mean Cauchy loss
    ``log(1 + (r / c)^2)`` of the residuals ``r`` after a gain and an offset fitted to each
    candidate, ``c`` set by the second candidate's residuals as :func:`_gauss_newton` sets its
    scale. A sample a candidate maps outside the moving shot takes its nearest edge pixel, as
    the warp does (detail an estimate moves out of the frame counts against it); samples that
    land on ``mov_clip`` under any candidate are left out; None where too few remain."""
    h, w = mov.shape
    coords, ok = [], np.ones(xs.size, dtype=bool)
    for wn in cands:
        q = wn @ pn
        with np.errstate(all="ignore"):
            cx = np.clip(n_to_px[0, 0] * q[0] / q[2] + n_to_px[0, 2], 0, w - 1)
            cy = np.clip(n_to_px[1, 1] * q[1] / q[2] + n_to_px[1, 2], 0, h - 1)
        ok &= np.isfinite(cx) & np.isfinite(cy)
        coords.append((np.nan_to_num(cy), np.nan_to_num(cx)))
    if mov_clip is not None:
        for cy, cx in coords:
            ok &= ~mov_clip[np.round(cy).astype(np.intp), np.round(cx).astype(np.intp)]
    if ok.sum() < 50:
        return None
    rr = ref[ys[ok], xs[ok]]
    design = np.stack([rr, np.ones_like(rr)], axis=1)
    res = []
    for cy, cx in coords:
        v = ndimage.map_coordinates(mov, np.stack([cy[ok], cx[ok]]), order=1)
        (g, o), *_ = np.linalg.lstsq(design, v, rcond=None)
        res.append(v - (g * rr + o))
    c = 1.4826 * np.median(np.abs(res[1])) * 2.385 + 1e-9
    return [float(np.mean(np.log1p((r / c) ** 2))) for r in res]


def _misfit_text(x: float) -> str:
    """A misfit of :func:`_detail_costs` to 3 significant digits, trailing zeros kept
    (0.00527, 0.00500, 0.279, also where rounding carries: 0.0049996 is 0.00500): three
    decimals read 0.005 for both of two misfits 5 % apart."""
    return f"{x:#.3g}"


def _misfit_words(costs: Sequence[float], shift_ok: bool) -> str:
    """Why a rejected estimate was rejected, in words (an open parenthesis the caller closes):
    by what share its misfit of the detail exceeds the best of no motion's and the shift's
    (``costs`` as :func:`_estimate` passes them: estimate, no motion, shift if any; it was
    rejected for exceeding it by more than :data:`SUPPORT_MARGIN`), both misfits to 3
    significant digits; where that best is the shift but it does not beat no motion by the
    margin (``shift_ok`` False, no motion replaces the estimate), also no motion's misfit."""
    best = 2 if len(costs) > 2 and costs[2] < costs[1] else 1
    rival = "a shift" if best == 2 else "no motion"
    more = f"{100.0 * (costs[0] / costs[best] - 1.0):.1f} % " if costs[best] > 0 else ""
    words = (f"matches the shots' detail {more}worse than {rival} (misfit {_misfit_text(costs[0])} against "
             f"{_misfit_text(costs[best])}")
    if best == 2 and not shift_ok:
        words += (f"; that shift fits it less than {100 * SUPPORT_MARGIN:g} % better than no motion's "
                  f"{_misfit_text(costs[1])}")
    return words


def estimate_transform(reference: np.ndarray, moving: np.ndarray, model: str = "similarity",
                       sigma: float = 1.5, iters: int = _ITERS, samples: int = _SAMPLES, tol: float = _TOL,
                       antialias: float = _ANTIALIAS, check: bool = True) -> np.ndarray:
    """Estimate the transform that maps ``moving``'s pixel coordinates onto ``reference``'s.

    Method: ECC-like: both shots are blurred (``sigma``), a phase correlation on the coarsest
    level of an image pyramid gives the starting shift, then the model is refined from coarse
    to fine by Gauss-Newton on the intensities, with a gain and an offset fitted each
    iteration (brightness may differ) and robust (Cauchy) weights, so that the regions the
    focus difference makes disagree count less. Sub-pixel by construction.

    Parameters
    ----------
    reference, moving : ndarray
        Two shots of the same size (gray or RGB, uint8 or float in [0, 1]), focused
        differently.
    model : {'translation', 'similarity', 'homography'}
        The motion model.
    sigma : float
        Gaussian blur (pixels) of both shots before matching, against the focus difference.
    iters : int
        Most Gauss-Newton iterations per pyramid level.
    samples : int
        About this many pixels (a regular grid) enter each level's fit, at most 4x as many.
    tol : float
        A level's iterations stop when an update moves the transform by less than this (pixels
        of that level).
    antialias : float
        A level fitted on every ``stride``-th pixel (more pixels than ``samples``) is blurred
        first by a Gaussian of ``antialias * stride`` pixels (:data:`_ANTIALIAS`); 0: not.
    check : bool
        An estimate of more than :data:`SUPPORT_PX` that the shots' detail does not bear out
        (it matches the samples with the most detail worse than no motion or than the
        translation fitted where that detail lies, :data:`SUPPORT_MARGIN`) is replaced by that
        translation where it matches the detail better than no motion, else by no motion (where
        that detail is spread, only if the replacement also matches the whole frame better,
        :data:`DETAIL_SPREAD`); False: the estimate as fitted.

    Returns
    -------
    ndarray
        3x3 matrix ``M``: a point ``(x, y)`` of ``moving`` lies at ``M @ (x, y, 1)`` (after the
        perspective division) in ``reference``.
    """
    _check_model(model)
    if reference.shape[:2] != moving.shape[:2]:
        raise UserError(f"shots differ in size: {moving.shape[:2]} vs {reference.shape[:2]}")
    g_ref, g_mov = _gray(reference), _gray(moving)
    return _estimate(g_ref, g_mov, _clipped(g_ref), _clipped(g_mov), model, sigma, iters, samples, tol,
                     antialias=antialias, check=check)


def _estimate(g_ref: np.ndarray, g_mov: np.ndarray, ref_clip: np.ndarray | None, mov_clip: np.ndarray | None,
              model: str, sigma: float, iters: int = _ITERS, samples: int = _SAMPLES, tol: float = _TOL,
              step: Callable[[str], None] | None = None, antialias: float = _ANTIALIAS, *,
              check: bool = True, notes: list[str] | None = None) -> np.ndarray:
    """:func:`estimate_transform` on the shots' gray copies (:func:`_gray`) and their clipped
    regions (:func:`_clipped`), computed once per shot by the caller. With ``check``, an
    estimate the shots' detail does not bear out is replaced (:data:`SUPPORT_PX`), and why is
    appended to ``notes``. For shots of at least
    :data:`STEP_MIN_PIXELS`, ``step`` is told when their pyramids are made and each pyramid level
    of at least as many pixels before its fit starts (``"level 6 of 7 (3000x2000 px)"``; the
    coarser levels take a fraction of a second)."""
    from skimage.registration import phase_cross_correlation

    big = step is not None and g_ref.size >= STEP_MIN_PIXELS
    if big:  # a step each: both in one were 35-47 s without a word at 24 MP (load ~12)
        step("blurring and reducing the first shot")
    ref_p = _pyramid(ndimage.gaussian_filter(g_ref, sigma) if sigma > 0 else g_ref)
    if big:
        step("blurring and reducing the second shot")
    mov_p = _pyramid(ndimage.gaussian_filter(g_mov, sigma) if sigma > 0 else g_mov)
    coarse = [lv for lv in ref_p if lv.size < STEP_MIN_PIXELS]
    if big and coarse:  # the top's phase correlation and the levels not named below: 3 s of CPU at
        # 24 MP, which the second shot's blurring had been heard to take (33 s under load)
        step(f"the coarse levels, up to {coarse[0].shape[1]}x{coarse[0].shape[0]} px")
    shape0 = ref_p[0].shape
    top = len(ref_p) - 1
    s = np.zeros(2)  # a flat shot (nothing to correlate) starts from the identity
    if np.ptp(ref_p[top]) > 1e-9 and np.ptp(mov_p[top]) > 1e-9:
        from bafusion.threads import quiet_warnings  # not catch_warnings: safe beside other threads' blocks

        # its error estimate (unused) warns on a nearly empty shot
        with quiet_warnings({"message": "Could not determine RMS error", "category": UserWarning}):
            try:
                s, _, _ = phase_cross_correlation(ref_p[top], mov_p[top], upsample_factor=10)
            except Exception:  # noqa: BLE001 - start from the identity
                s = np.zeros(2)
    n_top = _level_matrix(shape0, top)
    t = np.array([[1, 0, -s[1]], [0, 1, -s[0]], [0, 0, 1.0]])  # reference -> moving, top-level px
    w_norm = n_top @ t @ np.linalg.inv(n_top)
    if not np.all(np.isfinite(w_norm)):
        w_norm = np.eye(3)
    ref_c = _mask_pyramid(ref_clip, len(ref_p))
    mov_c = _mask_pyramid(mov_clip, len(mov_p))
    for k in reversed(range(len(ref_p))):
        if step is not None and ref_p[k].size >= STEP_MIN_PIXELS:
            step(f"level {len(ref_p) - k} of {len(ref_p)} ({ref_p[k].shape[1]}x{ref_p[k].shape[0]} px)")
        n_to_px = np.linalg.inv(_level_matrix(shape0, k))
        stride = max(1, int(math.sqrt(ref_p[k].size / samples)))
        ref_k, mov_k = ref_p[k], mov_p[k]
        if stride > 1 and antialias > 0:  # sampled every stride-th pixel: low-passed first (_ANTIALIAS)
            ref_k = ndimage.gaussian_filter(ref_k, antialias * stride)
            mov_k = ndimage.gaussian_filter(mov_k, antialias * stride)
        w_norm = _gauss_newton(ref_k, mov_k, w_norm, model, n_to_px, iters, stride, tol, ref_c[k], mov_c[k])
        if k > 0:
            del ref_k, mov_k
    n0 = _norm_matrix(shape0)

    def to_px(wn: np.ndarray) -> np.ndarray:
        out = np.linalg.inv(np.linalg.inv(n0) @ wn @ n0)
        return out / out[2, 2]

    est = to_px(w_norm)
    if not check or corner_rms(est, shape0) <= SUPPORT_PX or not np.all(np.isfinite(est)):
        return est
    if step is not None and g_ref.size >= STEP_MIN_PIXELS:
        step("checking it against the shots' detail")
    # the finest level's samples with the most detail must bear the estimate out (SUPPORT_PX)
    n_to_px = np.linalg.inv(_level_matrix(shape0, 0))
    eye = np.eye(3)
    samp = _detail_samples(ref_k, n_to_px, stride, ref_c[0])
    if samp is None:
        return est
    xs, ys, pn, pc, spread = samp
    shift = None
    if model != "translation":  # the shift where the detail lies
        qc = w_norm @ pc
        local = np.array([[1.0, 0.0, qc[0] / qc[2] - pc[0]], [0.0, 1.0, qc[1] / qc[2] - pc[1]], [0.0, 0.0, 1.0]])
        # fitted where the detail lies and around it (DETAIL_NEAR)
        near = np.zeros(ref_k.shape, dtype=bool)
        near[ys, xs] = True
        near = ndimage.maximum_filter(near, size=2 * DETAIL_NEAR * stride + 1)
        away = ~near if ref_c[0] is None else (~near | ref_c[0])
        shift = _gauss_newton(ref_k, mov_k, local, "translation", n_to_px, iters, stride, tol, away, mov_c[0])
        if not np.all(np.isfinite(shift)):
            shift = None
    costs = _detail_costs(ref_k, mov_k, n_to_px, xs, ys, pn, [w_norm, eye] + ([shift] if shift is not None else []),
                          mov_c[0])
    if costs is None or costs[0] <= min(costs[1:]) * (1 + SUPPORT_MARGIN):
        return est
    # not borne out: the shift where the detail lies, where it matches that detail better than no
    # motion (by the margin: a focus bias of a few tenths of a pixel does not), else no motion
    shift_ok = shift is not None and costs[2] < costs[1] * (1 - SUPPORT_MARGIN)
    if spread > DETAIL_SPREAD:  # spread detail: replaced only where the replacement matches the whole frame better
        alt = to_px(shift) if shift_ok else eye
        warped, warped_alt = warp_to_first(g_mov, est, order=1), warp_to_first(g_mov, alt, order=1)
        if (_match_quality(g_ref, warped, ref_clip, _clipped(warped), coverage(est, g_ref.shape))
                > _match_quality(g_ref, warped_alt, ref_clip, _clipped(warped_alt), coverage(alt, g_ref.shape))):
            return est
    why = (_misfit_words(costs, shift_ok)
           + (f"; {'that shift' if shift_ok else 'no motion'} also matches the whole frame better)"
              if spread > DETAIL_SPREAD else ": a small subject over a smooth backdrop?)"))
    m, outcome = eye, "taken for no motion"
    if shift_ok:
        m = to_px(shift)
        outcome = f"registered by translation instead ({corner_rms(m, shape0):.2f} px)"
    if notes is not None:
        notes.append(f"the {model} estimate ({corner_rms(est, shape0):.2f} px) {why}: {outcome}")
    return m


# --------------------------------------------------------------------------------------
# Warping, common area, crop


def warp_to_first(img: np.ndarray, m: np.ndarray, shape: tuple[int, int] | None = None, order: int = 1, *,
                  step: Callable[[str], None] | None = None) -> np.ndarray:
    """Resample a shot onto the first shot's pixel grid. ``m`` maps the shot's coordinates to
    the first's; pixels the shot does not cover are set to the nearest edge pixel; values are
    clipped to the dtype's range and the dtype is kept (uint8 rounded).

    ``order``: 0 (nearest), 1 (bilinear) or 3 (bicubic), scikit-image's ``warp``; 5: a
    prefiltered quintic spline (``scipy.ndimage``, one channel at a time), which keeps more of
    the finest detail than bicubic (BENCHMARKS.md: about 0.003-0.009 more QG after a round trip
    on Lytro, at 0.25 s for 520x520 RGB and 3 s for 2000x1500 on one thread, against 0.06 s and
    0.7 s). ``step``, when given, is told each channel of a quintic warp of an image of at
    least :data:`STEP_MIN_PIXELS` before it starts (``"channel 1 of 3"``: 8 s each at 24 MP)."""
    h, w = shape or img.shape[:2]
    src = np.asarray(img)
    if order == 5:  # converted a channel at a time: a 24 MP RGB shot is never float64 whole
        return _spline_warp(src, np.linalg.inv(m), (h, w), step if step is not None and h * w >= STEP_MIN_PIXELS
                            else None)
    if order in (0, 1, 3):
        from skimage.transform import ProjectiveTransform, warp

        inv = ProjectiveTransform(matrix=np.linalg.inv(m))
        out = warp(src.astype(np.float64), inv, output_shape=(h, w) + src.shape[2:], order=order, mode="edge",
                   preserve_range=True)
    else:
        raise UserError(f"warp order must be 0, 1, 3 or 5, got {order!r}")
    return _as_dtype(out, src.dtype)


def _as_dtype(out: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Resampled float values in ``dtype``: an integer type's rounded and clipped to its range."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.round(out), info.min, info.max).astype(dtype)
    return out.astype(dtype)


def _spline_warp(src: np.ndarray, inv: np.ndarray, shape: tuple[int, int],
                 step: Callable[[str], None] | None = None) -> np.ndarray:
    """Quintic-spline resampling of ``src`` (H, W) or (H, W, C) at the points ``inv @ (x, y, 1)``
    of an output grid of ``shape``, in ``src``'s dtype (each channel resampled in float64, then
    rounded and clipped to an integer dtype's range); edge pixels extend outside. Affine
    ``inv`` (similarity, translation) uses ``ndimage.affine_transform``, a homography
    ``map_coordinates`` on the computed points; each channel separately (a 3-D spline across
    the channels would cost ~6x as much for the same values); ``step`` is told each channel of
    a colour image as it starts."""
    h, w = shape
    n = 1 if src.ndim == 2 else src.shape[2]
    result = np.empty((h, w) + src.shape[2:], dtype=src.dtype)
    if np.allclose(inv[2], [0.0, 0.0, 1.0]):
        mat = np.array([[inv[1, 1], inv[1, 0]], [inv[0, 1], inv[0, 0]]])  # (row, col) order
        off = np.array([inv[1, 2], inv[0, 2]])

        def one(c: np.ndarray) -> np.ndarray:
            return ndimage.affine_transform(c, mat, off, output_shape=(h, w), order=5, mode="nearest")
    else:
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
        q = inv @ np.stack([xs.ravel(), ys.ravel(), np.ones(h * w)])
        coords = np.stack([q[1] / q[2], q[0] / q[2]])
        del ys, xs, q

        def one(c: np.ndarray) -> np.ndarray:
            return ndimage.map_coordinates(c, coords, order=5, mode="nearest").reshape(h, w)
    for i in range(n):
        if step is not None and n > 1:
            step(f"channel {i + 1} of {n}")
        chan = src if src.ndim == 2 else src[..., i]
        out = _as_dtype(one(chan.astype(np.float64)), src.dtype)
        if src.ndim == 2:
            result[:] = out
        else:
            result[..., i] = out
    return result


def coverage(m: np.ndarray, shape: tuple[int, int], src_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Boolean mask of the first shot's pixels that a shot (of ``src_shape``) covers under ``m``."""
    h, w = shape
    sh, sw = src_shape or shape
    ys, xs = np.mgrid[0:h, 0:w]
    p = np.linalg.inv(m) @ np.stack([xs.ravel(), ys.ravel(), np.ones(h * w)]).astype(np.float64)
    x, y = p[0] / p[2], p[1] / p[2]
    eps = 0.01  # an estimate a hair off an integer shift keeps its edge row (bilinear, edge mode)
    ok = (x >= -eps) & (x <= sw - 1 + eps) & (y >= -eps) & (y <= sh - 1 + eps)
    return ok.reshape(h, w)


def largest_rectangle(mask: np.ndarray) -> tuple[int, int, int, int]:
    """The largest axis-aligned rectangle of ``True`` pixels, ``(x0, y0, x1, y1)`` end exclusive.

    Exact for masks whose rows are each one run of ``True`` (the common area of projective
    warps of a rectangle is convex); for other masks, each row's run is taken from its first to
    its last ``True``, after which the rows' runs are intersected. Ties: the first found."""
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    any_row = mask.any(axis=1)
    if not any_row.any():
        raise UserError("the shots have no area in common after alignment")
    left = np.where(any_row, np.argmax(mask, axis=1), w).astype(np.int64)
    right = np.where(any_row, w - np.argmax(mask[:, ::-1], axis=1), 0).astype(np.int64)  # exclusive
    best, box = 0, (0, 0, 0, 0)
    for r0 in np.flatnonzero(any_row):
        lo = np.maximum.accumulate(left[r0:])
        hi = np.minimum.accumulate(right[r0:])
        width = np.maximum(hi - lo, 0)
        area = width * np.arange(1, h - r0 + 1)
        k = int(np.argmax(area))
        if area[k] > best:
            best = int(area[k])
            box = (int(lo[k]), int(r0), int(hi[k]), int(r0 + k + 1))
    return box


def match_quality(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, sigma: float = 6.0) -> float:
    """Normalised correlation of the gradient magnitudes of two registered shots, at the scale
    of a Gaussian of ``sigma`` pixels per :data:`QUALITY_SIDE` pixels of long side (coarse
    enough that the focus difference barely changes them), on ``mask``: near 1 for one scene
    focused differently, near 0 for two scenes. Flat shots (no gradient) and an empty ``mask``
    give 0.

    The scale follows the image, so that one scene scores about the same at any resolution:
    shots of at most :data:`QUALITY_SIDE` pixels a side are judged as they are (``sigma``
    pixels); larger ones are block-mean reduced by the integer factor that brings their long
    side to at most :data:`QUALITY_SIDE` (``mask`` likewise: a reduced pixel is in it when its
    whole block is) and judged with ``sigma`` scaled by their long side / :data:`QUALITY_SIDE`,
    in their own pixels. A fixed 6 px at full size scored a registered 24-megapixel pair 0.32
    (the focus difference removes 6-px detail there) against 0.99 at 520 px.

    The clipped regions of either shot (:func:`clipped_regions`), widened by ``2 * sigma``
    (the reach of the gradient filter), are left out unless that leaves less than
    :data:`CLIP_KEEP` of ``mask``: a blown-out sky in one shot only has no gradient there, and its
    outline one the other shot lacks (measured: a registered pair with a blown-out half scored
    0.58 with them, 0.99 without; lytro-05 with a blown-out half of A 0.91 and 0.97; the real
    pairs with clipped regions and mismatched Lytro pairs changed by at most 0.03 but g01-clock,
    0.87 to 0.95)."""
    g_a, g_b = _gray(a), _gray(b)
    return _match_quality(g_a, g_b, _clipped(g_a), _clipped(g_b), mask, sigma)


def _block_mean(x: np.ndarray, k: int) -> np.ndarray:
    """``x`` (H, W) reduced by the mean of ``k`` x ``k`` blocks (the last rows and columns that
    make no whole block are dropped); rows first, so that no full-size copy is made."""
    if k == 1:
        return np.asarray(x, dtype=np.float64)
    h, w = (x.shape[0] // k) * k, (x.shape[1] // k) * k
    rows = x[:h].reshape(h // k, k, x.shape[1]).mean(axis=1, dtype=np.float64)
    return rows[:, :w].reshape(h // k, w // k, k).mean(axis=2)


def _quality_scale(shape: tuple[int, ...], sigma: float) -> tuple[int, float]:
    """The block-mean factor and the sigma (pixels of the reduced shots) at which
    :func:`match_quality` judges shots of ``shape``: at most :data:`QUALITY_SIDE` pixels of long
    side, ``sigma`` per :data:`QUALITY_SIDE` pixels of the full long side."""
    side = max(shape[:2])
    if side <= QUALITY_SIDE:
        return 1, sigma
    k = math.ceil(side / QUALITY_SIDE)
    return k, sigma * side / QUALITY_SIDE / k


def _match_quality(g_a: np.ndarray, g_b: np.ndarray, clip_a: np.ndarray | None, clip_b: np.ndarray | None,
                   mask: np.ndarray | None = None, sigma: float = 6.0) -> float:
    """:func:`match_quality` on the shots' gray copies (:func:`_gray`) and their clipped
    regions (:func:`_clipped`), computed once per shot by the caller."""
    k, sigma = _quality_scale(g_a.shape, sigma)
    if k > 1:
        g_a, g_b = _block_mean(g_a, k), _block_mean(g_b, k)
        clip_a, clip_b = (None if c is None else _block_mean(c, k) > 0 for c in (clip_a, clip_b))
        if mask is not None:
            mask = _block_mean(mask, k) >= 1.0 - 1e-9
    ga = ndimage.gaussian_gradient_magnitude(g_a, sigma)
    gb = ndimage.gaussian_gradient_magnitude(g_b, sigma)
    clipped = [c for c in (clip_a, clip_b) if c is not None]
    if clipped:
        out = ndimage.binary_dilation(np.logical_or.reduce(clipped), iterations=max(1, round(2 * sigma)))
        keep = ~out if mask is None else mask & ~out
        if keep.sum() >= CLIP_KEEP * (keep.size if mask is None else mask.sum()):
            mask = keep
    if mask is not None:
        ga, gb = ga[mask], gb[mask]
    if ga.size == 0:  # an empty mask (shots that share no area): nothing matches; said without numpy's warnings
        return 0.0
    ga = ga.ravel() - ga.mean()
    gb = gb.ravel() - gb.mean()
    den = math.sqrt(float(ga @ ga) * float(gb @ gb))
    return float(ga @ gb / den) if den > 1e-12 else 0.0


def align_images(images: Sequence[np.ndarray], model: str = "similarity", *, sigma: float = 1.5,
                 tolerance: float = IDENTITY_TOLERANCE_PX, order: int = 5,
                 step: Callable[[str], None] | None = None) -> Alignment:
    """Register every shot to the first and crop all to the area every shot covers.

    The second shot is estimated against the first; each later one against the shot before it
    (the last one whose estimate was plausible and that matched its own reference as one scene;
    a flat shot is skipped), and its transform is
    that motion composed with the earlier shot's: neighbours in a focus stack are focused alike,
    the first and the last are not (see the module docstring). Each shot's match quality is
    judged against the first (:attr:`Alignment.quality`) and against the shot it was estimated
    against (:attr:`Alignment.quality_ref`); a shot that matches its reference below
    :data:`MIN_QUALITY` is not the next one's reference (a shot of another scene in the stack).

    Parameters
    ----------
    images : sequence of ndarray
        Shots (uint8 or float; gray or RGB), the first is the reference. A shot of another size
        whose aspect ratio is within :data:`MAX_ASPECT_DIFF` of the first's is scaled onto the
        first's frame (:func:`size_matrix`) and its residual motion estimated (not with
        ``'none'``); other sizes are a :class:`UserError` (:func:`size_problem`).
    model : {'translation', 'similarity', 'homography', 'none'}
        Motion model (``'none'``: nothing is estimated nor warped).
    sigma : float
        Blur (pixels) of the copies that are matched (robustness to the focus difference).
    tolerance : float
        Shots whose motion (RMS corner displacement, pixels) is below this are not resampled,
        and their coverage is the whole image: registered shots come back unchanged.
    order : int
        Interpolation of the resampled shots (:func:`warp_to_first`): 5 (quintic spline,
        default), 3 (bicubic) or 1 (bilinear). Measured on Lytro (BENCHMARKS.md), the QG that a
        round trip through a known motion costs: bilinear ~0.05, bicubic 0.004-0.015, quintic
        0.001-0.008.
    step : callable, optional
        Told each step as it starts, with a line such as ``"shot 2 of 2: estimating its motion
        (similarity)"``, ``"shot 2 of 2: estimating its motion (similarity), level 7 of 7
        (6000x4000 px)"``, ``"shot 2 of 2: resampling (quintic spline), channel 1 of 3"``,
        ``"shot 2 of 2: judging the match"``: a 24-megapixel pair takes a minute or more (the
        levels and channels of at least :data:`STEP_MIN_PIXELS` are named, and for such shots
        the blurring of each, the check of an estimate against their detail and the area a
        warped shot covers). Measured on a 24 MP pair moved by (9, 14) px (one run, a 2-core
        CPU under load ~12, so several times its idle time): the steps took 2-33 s each, the
        longest the second shot's blurring and reducing with the coarse levels' fit; the
        quintic warp's channels 22-29 s each; 3 min 20 s in all.

    Returns
    -------
    Alignment
        Transforms, motions, match qualities, crop box and the registered, cropped shots.
        The refusal of shots that are not one scene is the caller's
        (:meth:`Alignment.not_one_scene`), as is that of an estimate no
        hand-held pair shows (:attr:`Alignment.implausible`). A shot that, or whose first, has
        no structure (:func:`bafusion.fusion.scene.is_flat`) is not estimated nor warped
        (:attr:`Alignment.flat`); with both flat its quality is None (nothing to judge by).
    """
    import time

    t0 = time.perf_counter()
    images = [np.asarray(im) for im in images]
    if not images:
        raise UserError("alignment needs at least one image")
    h, w = images[0].shape[:2]
    sizes = [(im.shape[1], im.shape[0]) for im in images]
    for im, size in zip(images[1:], sizes[1:]):
        why = size_problem((w, h), size) if model != "none" else None
        if size != (w, h) and (model == "none" or why):
            raise UserError(f"shots differ in size: {im.shape[1]}x{im.shape[0]} vs {w}x{h} (WxH)"
                            + (f": {why}" if why else ""))
    eye = np.eye(3)
    if model == "none":
        return Alignment("none", [eye.copy() for _ in images], [0.0] * len(images), [False] * len(images),
                         [1.0] * len(images), (0, 0, w, h), list(images), time.perf_counter() - t0, (w, h))
    _check_model(model)
    if min(h, w) < MIN_SIDE:
        raise UserError(f"images of {w}x{h} px are too small to align (at least {MIN_SIDE} px a side); use --align none")
    transforms, rms, warped, out = [eye.copy()], [0.0], [False], [images[0]]
    implausible: list[str | None] = [None]
    replaced: list[str | None] = [None]
    is_flat = [_is_flat(im) for im in images]
    flat = [False] + [is_flat[0] or f for f in is_flat[1:]]
    common = np.ones((h, w), dtype=bool)
    # each shot's clipped regions are found once (:func:`_clipped`; at 24 MP the gray copy they
    # are found on costs about a second): the first's serve every shot, a shot's both its
    # estimate and, unless it is warped, its match quality; a warped shot is another image
    n = len(images)

    def say(i: int, text: str, told: bool = False) -> Callable[[str], None] | None:
        """Tell ``step`` (unless ``told``: said already, or its sub-steps say it) that shot ``i``
        (0-based) starts ``text``; the hook that names its sub-steps (``"..., level 7 of 7"``)."""
        if step is None:
            return None
        if not told:
            step(f"shot {i + 1} of {n}: {text}")
        return lambda sub: step(f"shot {i + 1} of {n}: {text}, {sub}")

    estimating = f"estimating its motion ({model})"
    resampling = "resampling" + (" (quintic spline)" if order == 5 else "")
    if n > 1 and not flat[1]:  # the first's gray copy is made for the first estimate (4 s at 24 MP): said before
        say(1, estimating)
    g0 = _gray(images[0])
    clip0 = _clipped(g0)
    clips: list[np.ndarray | None | bool] = [clip0]  # False: not found yet
    # a stack's shot is estimated against the shot before it (the last one estimated, with a
    # plausible motion), its motion composed onto the first's frame: against the first, a shot
    # focused far from it drifts (BENCHMARKS.md, "Handheld stacks": up to 1.12 px off at the 5th
    # shot, 1.67 at the 8th; chained 0.65, 0.59); a pair's second shot is against the first
    g_ref, clip_ref, m_ref, ref = g0, clip0, eye.copy(), 0
    dropped = False  # the first's gray copy, made again for the match quality
    reference = [0] * n  # the shot each was estimated against
    q_ref: list[float | None] = [None] * n  # its match quality with that shot (a stack's shots)
    for i, (im, f, size) in enumerate(zip(images[1:], flat[1:], sizes[1:]), 1):
        clip: np.ndarray | None | bool = False
        # a shot of another size is scaled onto the first's frame first (its residual motion is
        # what is estimated, judged and reported), then warped once by the whole transform
        pre = None if size == (w, h) else size_matrix(size, (w, h))
        notes: list[str] = []
        if f:  # a flat shot has nothing to register by: any estimate would be noise
            m = eye.copy()
        else:
            sub = say(i, estimating if ref == 0 else f"{estimating} against shot {ref + 1}", told=i == 1)
            g = _gray(im) if pre is None else _gray(_to_frame(im, pre, (h, w), 3))
            clip = _clipped(g)
            m_rel = _estimate(g_ref, g, clip_ref, clip, model, sigma, step=sub, notes=notes)
            m = m_ref @ m_rel
            m = m / m[2, 2]  # composed homographies: normalised as each estimate is
            if notes and ref:
                notes[0] += f" (its motion against shot {ref + 1}, composed with that shot's registration)"
            reference[i] = ref
            plausible = implausible_motion(m, (h, w)) is None
            if plausible and (ref or i < n - 1):  # judged against its reference: a stack's shots only
                if h * w >= STEP_MIN_PIXELS:
                    say(i, f"judging the match with shot {ref + 1}")
                q_ref[i] = _pair_quality(g_ref, clip_ref, g, m_rel)
            # the next shot's reference: a plausible estimate that matches its own reference (a
            # shot of another scene in the stack would misregister the next)
            if plausible and i < n - 1 and (q_ref[i] is None or q_ref[i] >= MIN_QUALITY):
                g_ref, clip_ref, m_ref, ref = g, clip, m, i
                if not dropped:  # a stack's: not held beside two others (192 MB at 24 MP)
                    del g0
                    dropped = True
            del g
        replaced.append(notes[0] if notes else None)
        d = corner_rms(m, (h, w))
        transforms.append(m if pre is None else m @ pre)
        rms.append(d)
        implausible.append(implausible_motion(m, (h, w)))
        if d < tolerance and pre is None:
            warped.append(False)
            out.append(im)
            clips.append(clip)
        else:
            warped.append(True)
            # a colour shot's quintic warp names each channel (warp_to_first), which says it
            sub = say(i, resampling, told=order == 5 and im.ndim == 3 and im.shape[2] > 1 and h * w >= STEP_MIN_PIXELS)
            out.append(warp_to_first(im, m, (h, w), order=order, step=sub) if pre is None else
                       _to_frame(im, m @ pre, (h, w), order, sub))
            clips.append(False)
            if h * w >= STEP_MIN_PIXELS:
                say(i, "finding the area it covers")
            common &= coverage(transforms[-1], (h, w), (size[1], size[0]))
    del g_ref
    if dropped:
        g0 = _gray(images[0])
    crop = (0, 0, w, h) if common.all() else largest_rectangle(common)
    x0, y0, x1, y1 = crop
    # two flat shots have nothing to judge by (as :func:`bafusion.fusion.scene.scene_correlation`);
    # one flat beside one with structure is not one scene (quality 0, below MIN_QUALITY)
    quality: list[float | None] = [1.0]
    for i, (o, f, clip) in enumerate(zip(out[1:], is_flat[1:], clips[1:]), 1):
        if is_flat[0] and f:
            quality.append(None)
            continue
        say(i, "judging the match")
        g = _gray(o)
        quality.append(_match_quality(g0, g, clip0, _clipped(g) if clip is False else clip, common))
    # against the first where that is the shot it was estimated against (a pair's second shot)
    quality_ref = [quality[i] if reference[i] == 0 or q_ref[i] is None else q_ref[i] for i in range(n)]
    cropped = [o[y0:y1, x0:x1] for o in out]
    return Alignment(model, transforms, rms, warped, quality, crop, cropped, time.perf_counter() - t0, (w, h),
                     implausible, flat, sizes, order, replaced, reference, quality_ref)


def _pair_quality(g_ref: np.ndarray, clip_ref: np.ndarray | None, g_mov: np.ndarray, m: np.ndarray) -> float:
    """The match quality (:func:`match_quality`) of a shot with the shot it was estimated
    against, in that shot's frame: ``g_mov`` (gray) warped by ``m`` (its pixels to ``g_ref``'s),
    on the area it covers. Both are block-mean reduced first, by the factor :func:`match_quality`
    judges them at, and the reduced copy is warped (bilinear): a fraction of a second at 24 MP."""
    k, s = _quality_scale(g_ref.shape, 6.0)
    r, mv = _block_mean(g_ref, k), _block_mean(g_mov, k)
    if k > 1:  # reduced pixel p's centre is full pixel k * p + (k - 1) / 2
        d = np.array([[k, 0.0, (k - 1) / 2], [0.0, k, (k - 1) / 2], [0.0, 0.0, 1.0]])
        m = np.linalg.inv(d) @ m @ d
        clip_ref = None if clip_ref is None else _block_mean(clip_ref, k) > 0
    w = warp_to_first(mv, m, r.shape, order=1)
    return _match_quality(r, w, clip_ref, _clipped(w), coverage(m, r.shape), s)


def check_alignment(al: Alignment, names: Sequence[str], *, force: str | None = "--force",
                    unaligned: str = "--align none") -> None:
    """Refuse an alignment whose shots are not one scene (:meth:`Alignment.not_one_scene`: match
    quality below :data:`MIN_QUALITY` with the first and with the shot each was estimated
    against) or whose estimate no hand-held focus pair shows
    (:attr:`Alignment.implausible`), as ``fuse --align`` and :func:`bafusion.fuse` do.

    Parameters
    ----------
    al : Alignment
        The result of :func:`align_images`.
    names : sequence of str
        The shots' names, for the message.
    force : str or None
        How the caller fuses anyway (``"--force"``), named in the message; None where it cannot.
    unaligned : str
        How the caller fuses the shots as registered (``"--align none"``, ``'align="none"'``).

    Raises
    ------
    bafusion.errors.UserError
        Naming every shot that is not one scene with the first (:meth:`Alignment.not_one_scene`),
        else the first whose estimate fails; the problem and what to do instead.
    """
    bad = al.not_one_scene()
    if bad:
        whys = [al.match_text(i, names) for i in bad]
        remedy = f"use {force} to fuse anyway" if force else f"use {unaligned} to fuse them as they are"
        if len(bad) == 1:
            raise UserError(f"{names[bad[0]]}: does not look like the same scene as {names[0]} ({whys[0]}, below "
                            f"{MIN_QUALITY}); {remedy}")
        raise UserError(f"{len(bad)} shots do not look like the same scene as {names[0]} (below {MIN_QUALITY}): "
                        + "; ".join(f"{names[i]} ({why})" for i, why in zip(bad, whys)) + f"; {remedy}")
    odd = [(n, why) for n, why in zip(names[1:], al.implausible[1:]) if why]
    if odd:
        n, why = odd[0]
        raise UserError(f"{n}: the {al.model} alignment to {names[0]} failed: its estimate ({why}) is not a motion "
                        f"a hand-held focus pair shows (a blown-out or one-dimensional scene?); use {unaligned} to "
                        "fuse the shots as registered" + (f", or {force} to use the estimate anyway" if force else ""))


#: Gauss-Newton iterations, samples a level and convergence tolerance (pixels of a level) of the
#: motion hint's fit (:func:`bafusion.fusion.scene.coarse_motion`, on the shots reduced to
#: ``scene.MOTION_SIDE``) and of the turn check of ``--align translation``
#: (:func:`_quick_similarity`): measured against the registration of the full shots on 73 real
#: pairs (BENCHMARKS.md, "Do the shots move?").
MOTION_ITERS = 50
MOTION_SAMPLES = 20000
MOTION_TOL = 0.01

#: ``--align translation`` leaving a shot a match quality below this is aligned again by
#: similarity, to see whether the shots turn or change scale (:func:`translation_shortfalls`).
#: It is not below every registered pair: of the 20 Lytro pairs (0.92-0.99 after translation),
#: lytro-19 scores 0.9198 and pays for the second alignment, which tells it nothing (0.9212
#: after similarity); a shot turned by 1 deg scored 0.91. That alignment is made on the shots
#: reduced to :data:`QUALITY_SIDE` with the motion hint's fit
#: (:data:`MOTION_ITERS`) ...
TRANSLATION_QUALITY = 0.92

#: ... and they turn or change scale when the similarity raises the match quality by at least
#: this. Measured on lytro-05 moved by the probe of 2026-12-06: turned 3 deg, 0.64 after
#: translation against 0.98 after similarity; turned 1 deg 0.91 / scaled 1.03 0.82 after
#: translation.
SIMILARITY_GAIN = 0.05


def _quick_similarity(ref: np.ndarray, mov: np.ndarray) -> tuple[np.ndarray, float, int, tuple[int, int]]:
    """A similarity alignment of ``mov`` to ``ref`` for :func:`translation_shortfalls`: both gray,
    block-mean reduced by the factor :func:`match_quality` judges ``ref`` at (a shot of another
    size scaled onto ``ref``'s frame first), fitted as the motion hint fits
    (:mod:`bafusion.fusion.scene`) and judged there: ``(its residual transform in the reduced
    pixels, its match quality, the factor, the reduced (H, W))``."""
    k, _ = _quality_scale(ref.shape, 6.0)
    g0 = _block_mean(_gray(ref), k)
    g = _block_mean(_gray(mov), k)
    if g.shape != g0.shape:
        g = _to_frame(g, size_matrix((g.shape[1], g.shape[0]), (g0.shape[1], g0.shape[0])), g0.shape, 1)
    clip0 = _clipped(g0)
    m = _estimate(g0, g, clip0, _clipped(g), "similarity", 1.5, MOTION_ITERS, MOTION_SAMPLES, MOTION_TOL)
    w = warp_to_first(g, m, g0.shape, order=1)
    return m, _match_quality(g0, w, clip0, _clipped(w), coverage(m, g0.shape)), k, g0.shape


def translation_shortfalls(al: Alignment, images: Sequence[np.ndarray], names: Sequence[str]) -> list[str]:
    """Lines for the shots that a translation alignment leaves misregistered because they turn
    or change scale: their match quality after it is below :data:`TRANSLATION_QUALITY` and a
    similarity alignment raises it by :data:`SIMILARITY_GAIN` or more (its estimate one a
    hand-held pair shows). The similarity alignment is made only when a shot's quality is that
    low, on the shots reduced to the size the match quality is judged at and with the motion
    hint's fit (a fraction of the first alignment's time; only its match quality is used).

    Parameters
    ----------
    al : Alignment
        The result of :func:`align_images`; nothing is said unless its model is ``translation``.
    images : sequence of numpy.ndarray
        The shots ``al`` aligned, as given to it.
    names : sequence of str
        The shots' names, for the lines.

    Returns
    -------
    list of str
        One line per such shot, naming it, both match qualities and the similarity's rotation
        and scale, and suggesting ``--align similarity``; empty when none.
    """
    if al.model != "translation":
        return []
    low = [i for i, q in enumerate(al.quality[1:], 1) if q is not None and MIN_QUALITY <= q < TRANSLATION_QUALITY]
    lines = []
    for i in low:
        q = al.quality[i]
        m, qs, k, shape = _quick_similarity(images[0], images[i])
        if qs < q + SIMILARITY_GAIN or implausible_motion(m, shape):
            continue
        p = describe_matrix(m)
        lines.append(f"{names[i]}: match quality {q:.2f} after translation alignment to {names[0]}, {qs:.2f} after a "
                     f"similarity one (rotation {p['rotation_deg']:+.2f} deg, scale {p['scale']:.4f}, corner motion "
                     f"{corner_rms(m, shape) * k:.1f} px): the shots turn or change scale, which a translation leaves "
                     "misregistered; --align similarity registers them")
    return lines


def _is_flat(img: np.ndarray) -> bool:
    """Whether a uint8 shot (or a float one on [0, 1]) has no structure to align on: its gray
    values, subsampled to a long side of about 520 px and blurred at the coarse scale of
    :func:`bafusion.fusion.scene.is_flat` (sigma 4 px at 520), vary by less than one gray level
    (standard deviation). The same criterion as ``scene.is_flat``, computed here because
    ``scene`` imports this module."""
    a = np.asarray(img)
    k = max(1, -(-max(a.shape[:2]) // 520))
    r = a[::k, ::k].astype(np.float64)
    if a.dtype != np.uint8:
        r *= 255.0
    if r.ndim == 3:
        r = r.mean(axis=-1)
    r = ndimage.gaussian_filter(r, 4.0 * max(r.shape) / 520.0)
    return float(r.std()) < 1.0
