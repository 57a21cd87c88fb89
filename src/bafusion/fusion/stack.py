"""Focal stacks of N shots: a synthetic stack with ground truth, and the joint stack rule.

**Synthetic stack** (:func:`synthetic_stack`). ``layers`` depth layers: layer 0 is a COCO
background (the furthest), layers 1..n-1 are alphamatting foregrounds cut out by their
ground-truth mattes, placed at random in front of it, each nearer than the last. Shot ``k``
is focused on layer ``k``; layer ``j`` is blurred in it by ``sigma_step * |k - j|`` (the
defocus grows with the depth distance; Gaussian, or a disc of radius ``2 * sigma``). Each
shot composites the layers back to front with premultiplied blurred mattes: a layer blurred
in that shot is ``defocus(alpha_j * layer_j)`` over ``(1 - defocus(alpha_j))`` of what lies
behind, so an out-of-focus layer bleeds over the layers behind it (and, far out of focus,
lets them show through its own area), as a real lens's defocused foreground does. The
all-in-focus scene, which the truth refers to, is the mix ``sum_j w_j * layer_j`` with the
sharp mattes' visibility weights ``w_j = alpha_j * prod_{m > j} (1 - alpha_m)``
(``alpha_0 = 1``).

**Truth** (:attr:`SyntheticStack.truth`): per pixel, the index of the shot focused on the
layer that owns the pixel, ``argmax_j w_j``, or :data:`AMBIGUOUS` (-1) where the truth is
not decidable:

- *mixed pixels*: the owning layer's visibility weight in its own shot (with the blurred
  mattes of the nearer layers in front of it) is below ``mixed`` (0.9): a soft matte edge
  (hair, fur) where two layers are blended, or the rim where a nearer layer's blur covers
  it, so no shot holds the all-in-focus value;
- *flat pixels*: every shot equals the truth's shot there to within ``flat`` gray levels
  (mean absolute difference over a ``flat_window`` square): any choice gives the same fused
  pixel, so it is neither right nor wrong.

Accuracy (:func:`stack_accuracy`) counts the decidable pixels only.

**Joint stack rule** (:func:`fuse_stack_joint`, ``stack_rule: joint``). One decision over all
shots instead of a chain of pairwise fusions:

1. the initial net scores every pair ``i < j`` once (:func:`bafusion.fusion.score_multiscale`);
   ``z_ij`` is its logit (``z_ji = -z_ij``, the net judges which of the two is focused);
2. each shot's score is the sum of its logits against all the others (a Borda count on
   logits); of the two leading shots ``a, b`` of each pixel, the one that wins their own
   comparison ``z_ab`` is the raw decision (measured better than the plain argmax of the sums:
   the far, saturated comparisons outvoted the close one between neighbouring layers);
3. near-boundary band, the paper's Eq. 2 generalised: ``P_k`` is the probability that shot k
   is taken, from the leading pair's comparison (``sigmoid(z_ab)`` for a, ``1 - sigmoid`` for b,
   0 for the other shots); the band is where ``max_k window_mean(P_k) < high`` (with two shots
   exactly ``low < window_mean(s0) < high`` for ``low = 1 - high``);
4. in the band the boundary net decides between the two leading shots of each pixel (one
   masked scoring per leading pair present in the band);
5. regions of one index smaller than ``min_region`` of the image are given to the nearest
   surviving region; the fused image takes each pixel from the shot of its index.

Around the scoring it honours the pair rule's options (details: :func:`fuse_stack_joint`):
``exposure_match`` (every shot's gray mapped onto the first shot's exposure before scoring; a
flat first shot, a dropped frame, passed over for the next),
``flat_level`` (flat-region filling of each pairwise score, and of each leading pair's score
in the band), and ``working_min`` / ``working_side`` (small stacks decided upscaled,
camera-size stacks at the working resolution, the index brought back by nearest neighbour;
without the full-resolution band refinement that camera-size pairs get).

``bafusion fuse`` (and ``fuse.stack_rule``) applies the joint rule to three or more shots only: two
shots are fused by :func:`bafusion.fusion.fuse_images` under either rule, bit for bit as before.
:func:`fuse_stack_joint` itself also takes two (the same band; the clean-up differs).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from bafusion.data.composite import defocus, fit_background
from bafusion.errors import InputFileError, InputTypeError, UserError
from bafusion.fusion.decide import blend_scores, fill_flat, window_mean
from bafusion.fusion.exposure import apply_gains, colour_gains, exposure_note, stack_exposure
from bafusion.fusion.models import FusionNets
from bafusion.fusion.params import STACK_RULES, FusionParams
from bafusion.fusion.rule import OUTPUT_EXPOSURE_OPTION, FusionResult, check_same_size, dtype_hint
from bafusion.fusion.scoring import _logit, at_centre, boundary_steps, score, score_multiscale
from bafusion.fusion.working import decision_size, patch_note, resize_gray, scales_note
from bafusion.io import gray_float, read_image, read_matte, resize, to_gray_u8, to_uint8

#: Truth value of pixels where no shot is right or wrong (mixed or flat).
AMBIGUOUS = -1
KERNELS = ("gaussian", "disc")


# --------------------------------------------------------------------------------------
# Synthetic stack with ground truth
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StackOptions:
    """How a synthetic stack is drawn (see the module docstring)."""

    #: Depth layers = shots (background + ``layers - 1`` foregrounds), 2..8.
    layers: int = 3
    #: Side of the square stack, px.
    size: int = 400
    #: Gaussian sigma per layer of depth distance (disc radius = 2 sigma).
    sigma_step: float = 2.0
    #: Defocus kernel: "gaussian" or "disc".
    kernel: str = "gaussian"
    #: A foreground's long side, as a fraction of ``size``, drawn uniformly in this range.
    fg_scale: tuple[float, float] = (0.45, 0.8)
    #: Pixels whose largest visibility weight is below this are mixed (ambiguous).
    mixed: float = 0.9
    #: Pixels where every shot is within this many gray levels of the truth's shot are flat.
    flat: float = 1.0
    #: Window side (px) of the flat test.
    flat_window: int = 9

    def __post_init__(self) -> None:
        if not isinstance(self.layers, int) or not 2 <= self.layers <= 8:
            raise UserError(f"stack layers must be an integer in 2..8, got {self.layers!r}")
        if not isinstance(self.size, int) or self.size < 64:
            raise UserError(f"stack size must be an integer >= 64 px, got {self.size!r}")
        if not self.sigma_step > 0:
            raise UserError(f"sigma_step must be > 0, got {self.sigma_step!r}")
        if self.kernel not in KERNELS:
            raise UserError(f"kernel must be one of {', '.join(KERNELS)}, got {self.kernel!r}")
        lo, hi = self.fg_scale
        if not 0 < lo <= hi <= 1:
            raise UserError(f"fg_scale must be [lo, hi] with 0 < lo <= hi <= 1, got {list(self.fg_scale)}")
        if not 0.5 < self.mixed <= 1:
            raise UserError(f"mixed must lie in (0.5, 1], got {self.mixed!r}")


@dataclass
class SyntheticStack:
    """A synthetic focal stack: ``shots[k]`` (uint8 RGB) is focused on layer ``k``."""

    shots: list[np.ndarray]
    #: int16 (H, W): index of the right shot, or :data:`AMBIGUOUS`.
    truth: np.ndarray
    #: float32 (layers, H, W): visibility weights ``w_j`` (sum 1 per pixel).
    weights: np.ndarray
    #: bool (H, W): mixed pixels; ``flat``: flat pixels (both are AMBIGUOUS in ``truth``).
    mixed: np.ndarray
    flat: np.ndarray
    sources: list[str] = field(default_factory=list)


def _place(fg: np.ndarray, matte: np.ndarray, size: int, scale: float, rng: np.random.Generator
           ) -> tuple[np.ndarray, np.ndarray]:
    """Scale a foreground (float RGB) and its matte (float [0, 1]) so the long side is
    ``scale * size`` and put them at a random place on a ``size`` square canvas."""
    h, w = matte.shape
    s = scale * size / max(h, w)
    nh, nw = max(8, round(h * s)), max(8, round(w * s))
    fg_s = np.stack([resize(fg[..., c].astype(np.float32), (nh, nw)) for c in range(3)], axis=2)
    m_s = np.clip(resize(matte.astype(np.float32), (nh, nw)), 0.0, 1.0)
    y0 = int(rng.integers(0, size - nh + 1))
    x0 = int(rng.integers(0, size - nw + 1))
    canvas = np.zeros((size, size, 3), np.float64)
    alpha = np.zeros((size, size), np.float64)
    canvas[y0 : y0 + nh, x0 : x0 + nw] = fg_s
    alpha[y0 : y0 + nh, x0 : x0 + nw] = m_s
    return canvas, alpha


def visibility_weights(alphas: Sequence[np.ndarray]) -> np.ndarray:
    """``w_j = alpha_j * prod_{m > j} (1 - alpha_m)`` for layers back (0) to front; ``alphas[0]``
    is the background's (all ones). Returns (layers, H, W); each pixel's weights sum to 1."""
    n = len(alphas)
    w = np.empty((n,) + alphas[0].shape, np.float64)
    through = np.ones(alphas[0].shape, np.float64)  # transmittance of the layers in front
    for j in range(n - 1, -1, -1):
        w[j] = alphas[j] * through
        through = through * (1.0 - alphas[j])
    return w


def stack_truth(own: np.ndarray, owner: np.ndarray, shots_gray: Sequence[np.ndarray], opts: StackOptions
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truth map (see the module docstring) from ``owner`` (the layer each pixel belongs to in
    the all-in-focus image), ``own`` (that layer's weight in the shot focused on it) and the
    shots: returns (truth int16 with :data:`AMBIGUOUS`, mixed bool, flat bool)."""
    mixed = own < opts.mixed
    g = np.stack([np.asarray(s, np.float64) for s in shots_gray])
    ref = np.take_along_axis(g, owner[None], 0)[0]
    diff = np.stack([ndimage.uniform_filter(np.abs(gk - ref), opts.flat_window, mode="reflect") for gk in g])
    flat = diff.max(0) < opts.flat
    truth = owner.astype(np.int16)
    truth[mixed | flat] = AMBIGUOUS
    return truth, mixed, flat


def synthetic_stack(
    foregrounds: Sequence[tuple[np.ndarray, np.ndarray]],
    background: np.ndarray,
    opts: StackOptions = StackOptions(),
    seed: int = 0,
) -> SyntheticStack:
    """Composite a focal stack from ``layers - 1`` (foreground RGB uint8, matte uint8) pairs and
    a background RGB uint8 image (see the module docstring). Deterministic for a seed."""
    n = opts.layers
    if len(foregrounds) < n - 1:
        raise UserError(f"a {n}-layer stack needs {n - 1} foregrounds, got {len(foregrounds)}")
    rng = np.random.default_rng([int(seed), n, 14])
    size = opts.size
    layers = [fit_background(background, (size, size), "cover").astype(np.float64)]
    alphas = [np.ones((size, size), np.float64)]
    for fg, matte in foregrounds[: n - 1]:
        if fg.shape[:2] != matte.shape[:2]:
            raise UserError(f"foreground {fg.shape[1]}x{fg.shape[0]} and matte {matte.shape[1]}x{matte.shape[0]} differ")
        c, a = _place(fg.astype(np.float64), matte.astype(np.float64) / 255.0, size, float(rng.uniform(*opts.fg_scale)), rng)
        layers.append(c)
        alphas.append(a)
    weights = visibility_weights(alphas)
    shots = []
    own = np.zeros((size, size), np.float64)  # weight of the owning layer in its own shot
    owner = weights.argmax(0)
    for k in range(n):
        acc = np.zeros((size, size, 3), np.float64)
        cover = []
        for j in range(n):  # back to front, premultiplied: a blurred layer bleeds over
            sig = opts.sigma_step * abs(k - j)
            a = alphas[j] if sig == 0 else np.clip(defocus(alphas[j], sig, opts.kernel), 0.0, 1.0)
            c = layers[j] * alphas[j][..., None]
            c = c if sig == 0 else defocus(c, sig, opts.kernel)
            acc = c + (1.0 - a[..., None]) * acc
            cover.append(a)
        shots.append(to_uint8(acc))
        wk = visibility_weights(cover)[k]
        own[owner == k] = wk[owner == k]
    truth, mixed, flat = stack_truth(own, owner, [gray_float(s) for s in shots], opts)
    return SyntheticStack(shots, truth, weights.astype(np.float32), mixed, flat)


def load_foreground(alphamatting: str | Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``<alphamatting>/input/<name>.png`` and its matte ``gt/<name>.png`` (uint8 RGB, uint8)."""
    root = Path(alphamatting)
    pi, pm = root / "input" / f"{name}.png", root / "gt" / f"{name}.png"
    for p in (pi, pm):
        if not p.is_file():
            raise InputFileError(p, "alphamatting file not found")
    fg, m = read_image(pi, rgb=True), read_matte(pm)
    if fg.shape[:2] != m.shape:
        raise InputFileError(pm, f"matte size {m.shape[1]}x{m.shape[0]} differs from its image {fg.shape[1]}x{fg.shape[0]}")
    return fg, m


def stack_from_data(data: str | Path, opts: StackOptions = StackOptions(), seed: int = 0) -> SyntheticStack:
    """A synthetic stack from the shared training data (``<data>/train/alphamatting`` and
    ``<data>/train/coco/train2017``): foregrounds and background drawn by ``seed``."""
    root = Path(data)
    am = root / "train" / "alphamatting"
    coco = root / "train" / "coco" / "train2017"
    names = sorted(p.stem for p in (am / "gt").glob("*.png")) if (am / "gt").is_dir() else []
    bgs = sorted(coco.glob("*.jpg")) if coco.is_dir() else []
    if len(names) < opts.layers - 1 or not bgs:
        raise InputFileError(root, f"needs {opts.layers - 1} alphamatting mattes in {am}/gt and COCO images in {coco}")
    rng = np.random.default_rng([int(seed), 7])
    pick = rng.choice(len(names), opts.layers - 1, replace=False)
    bg = bgs[int(rng.integers(len(bgs)))]
    fgs = [load_foreground(am, names[i]) for i in pick]
    st = synthetic_stack(fgs, read_image(bg, rgb=True), opts, seed)
    st.sources = [str(bg)] + [names[i] for i in pick]
    return st


def stack_accuracy(index: np.ndarray, truth: np.ndarray) -> float:
    """Share of the decidable pixels (truth != :data:`AMBIGUOUS`) where ``index`` equals the truth."""
    ok = truth != AMBIGUOUS
    if not ok.any():
        return float("nan")
    return float((index[ok] == truth[ok]).mean())


# --------------------------------------------------------------------------------------
# Stack rules
# --------------------------------------------------------------------------------------


@dataclass
class StackResult:
    """The joint rule's maps; ``index`` says which shot each fused pixel comes from."""

    fused: np.ndarray  #: uint8
    #: float32 (N, H, W): each shot's sum of pairwise logits; None where not kept
    #: (:func:`fuse_stack_joint`'s ``keep_scores`` False: ``bafusion fuse``'s, ``fuse-dir``'s and
    #: :func:`bafusion.fuse`'s, which read none)
    scores: np.ndarray | None
    index_initial: np.ndarray  #: int16, argmax of ``scores``
    near_boundary: np.ndarray  #: bool, the band the boundary net rescored
    index_raw: np.ndarray  #: int16, after the boundary net
    index: np.ndarray  #: int16, after small-region removal
    seconds: dict[str, float] = field(default_factory=dict)
    #: Lines for the user: a shot's exposure or colour differs visibly from the first's; the
    #: stack is narrower than the nets' patch (:func:`bafusion.fusion.working.patch_note`).
    notes: list[str] = field(default_factory=list)
    #: Per shot, the gains applied before compositing (``match_output_exposure``; the first
    #: shot's: None), else None.
    gains: list | None = None
    #: The number of shots (0: not given; then ``scores``' first axis).
    shots: int = 0


def chain_index(results: Sequence[FusionResult]) -> np.ndarray:
    """The shot each pixel of a chain fusion comes from: step ``i`` took its A (the fusion so
    far) where its decision is True, else shot ``i + 1``."""
    idx = np.zeros(results[0].decision.shape, np.int16)
    for i, r in enumerate(results):
        idx = np.where(r.decision, idx, np.int16(i + 1)).astype(np.int16)
    return idx


def remove_small_labels(index: np.ndarray, min_region: float) -> np.ndarray:
    """Regions (4-connected) of one label smaller than ``min_region * H * W`` pixels take the
    label of the nearest pixel of a kept region (the multi-label form of
    :func:`bafusion.fusion.remove_small_regions`)."""
    area = math.ceil(min_region * index.size)
    if area <= 1:
        return index.copy()
    drop = np.zeros(index.shape, bool)
    for k in np.unique(index):
        lab, n = ndimage.label(index == k)
        if n == 0:
            continue
        sizes = np.bincount(lab.ravel())
        small = sizes < area
        small[0] = False
        drop |= small[lab]
    if not drop.any() or drop.all():
        return index.copy()
    _, (ri, ci) = ndimage.distance_transform_edt(drop, return_indices=True)
    return index[ri, ci].astype(index.dtype)


def _rgb(img: np.ndarray, colour: bool) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    if colour and img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return img


def compose(images: Sequence[np.ndarray], index: np.ndarray) -> np.ndarray:
    """Each pixel from the image ``index`` says (uint8; alpha dropped, gray shots replicated
    when any shot is colour, as for a pair)."""
    colour = any(np.asarray(i).ndim == 3 for i in images)
    index = np.asarray(index)
    if index.size and (int(index.min()) < 0 or int(index.max()) >= len(images)):
        raise ValueError(f"shot index out of range 0..{len(images) - 1}: {int(index.min())}..{int(index.max())}")
    # shot by shot into one output: no (N, H, W, 3) copy of the stack (15 shots of 24 MP: 1 GiB)
    out = np.empty(_rgb(images[0], colour).shape, np.uint8)
    for k, im in enumerate(images):
        sel = index == k
        if sel.any():
            out[sel] = _rgb(im, colour)[sel]
    return out


def _nearest(m: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize (pixel centres) of a label or mask map to ``size_hw``."""
    h, w = size_hw
    hs, ws = m.shape
    r = np.minimum(((np.arange(h) + 0.5) * (hs / h)).astype(np.intp), hs - 1)
    c = np.minimum(((np.arange(w) + 0.5) * (ws / w)).astype(np.intp), ws - 1)
    return m[r[:, None], c[None, :]]


def _joint_decide(
    grays: Sequence[np.ndarray], nets: FusionNets, params: FusionParams, step: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """Steps 1-4 of the joint rule (module docstring) on gray shots at the size they are
    decided at: ``(scores, index_initial, near_boundary, index_raw, seconds)``; ``step(i)``
    before shot ``i`` is scored against the shots after it."""
    n = len(grays)
    h, w = grays[0].shape
    dev = nets.device
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=params.precision == "bf16")
    fill = params.flat_level > 0
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    z: dict[tuple[int, int], np.ndarray] = {}
    scores = np.zeros((n, h, w), np.float32)
    for i in range(n):
        if step is not None and i < n - 1:
            step(i)
        for j in range(i + 1, n):
            with amp:
                sij = score_multiscale(nets.initial, grays[i], grays[j], nets.patch_initial, params, device=dev,
                                       centre=at_centre(params.score_position, nets.label_positions[0]))
            if fill:  # as fuse_images fills s0 (bafusion.fusion.decide.decide)
                sij = fill_flat(sij, grays[i], grays[j], params.flat_level, params.flat_sigma)
            zij = _logit(sij)
            z[i, j] = zij
            scores[i] += zij
            scores[j] -= zij
    # The two leading shots by the sum; of them, the one that wins their own comparison.
    order = np.argsort(-scores, axis=0, kind="stable")
    lead_a = np.minimum(order[0], order[1])
    lead_b = np.maximum(order[0], order[1])
    pair_code = lead_a * n + lead_b
    z_lead = np.zeros((h, w), np.float32)
    for code in np.unique(pair_code):
        a, b = divmod(int(code), n)
        sel = pair_code == code
        z_lead[sel] = z[a, b][sel]
    index0 = np.where(z_lead > 0, lead_a, lead_b).astype(np.int16)
    t["initial"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    # P_k: the probability that shot k is taken, from the leading pair's own comparison (0 for
    # the other shots); the band is where no shot holds high of its window (Eq. 2).
    s_lead = _sigmoid(z_lead)
    best_mean = np.zeros((h, w), np.float32)
    for k in range(n):
        pk = np.where(lead_a == k, s_lead, np.where(lead_b == k, 1.0 - s_lead, 0.0)).astype(np.float32)
        best_mean = np.maximum(best_mean, window_mean(pk, params.l))
    near = best_mean < params.high
    index1 = index0.copy()
    if params.refine and near.any():
        bstep = boundary_steps(params, nets.patch_boundary)[0]
        for code in np.unique(pair_code[near]):
            a, b = divmod(int(code), n)
            mask = near & (pair_code == code)
            with amp:
                s1 = score(nets.boundary, grays[a], grays[b], nets.patch_boundary, params, bstep, mask=mask, device=dev,
                           centre=at_centre(params.score_position, nets.label_positions[1]))
            if params.boundary_weight < 1:  # both nets' votes, as the pair rule (decide.blend_scores)
                s1 = np.where(mask, blend_scores(s1, _sigmoid(z[a, b]), params.boundary_weight), s1)
            if fill:  # the pair's filled initial score, rescored on the mask, filled again (as decide)
                s1 = np.where(mask, s1, _sigmoid(z[a, b]))
                s1 = fill_flat(s1, grays[a], grays[b], params.flat_level, params.flat_sigma)
            index1[mask] = np.where(s1[mask] > params.threshold, a, b)
    t["boundary"] = time.perf_counter() - t0
    return scores, index0, near, index1, t


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-z.astype(np.float64)))).astype(np.float32)


def fuse_stack_joint(
    images: Sequence[np.ndarray], nets: FusionNets, params: FusionParams = FusionParams(), names: Sequence[str] = (),
    step: Callable[[str], None] | None = None, keep_scores: bool = True,
) -> StackResult:
    """The joint stack rule (module docstring) on two or more registered uint8 shots.

    Parameters
    ----------
    images : sequence of ndarray
        Registered uint8 shots of one size, (H, W) gray or (H, W, 3/4) colour.
    nets : FusionNets
        The initial and boundary nets.
    params : FusionParams
        As for :func:`bafusion.fusion.fuse_images`. Of the fields that act around the
        scoring, the joint rule honours:

        * ``exposure_match`` ("linear", "linear_clip"): every shot's gray is mapped onto the first shot's
          exposure (:func:`bafusion.fusion.exposure.match_exposure`; the chain maps every shot
          onto the middle shot's, :func:`bafusion.fusion.exposure.stack_exposure`) before any
          scoring; the fused pixels are the shots' own. "brighter": every shot onto the
          exposure of the brightest one (the highest mean gray), fitted where neither clips;
          "auto": "brighter" where one shot clips clearly more than another, else "linear".
          A flat shot there (black, gray or white: a dropped frame), onto which no other
          shot's fit is reliable, is passed over for the next shot (``brighter``: the next
          brightest; :func:`bafusion.fusion.exposure.stack_exposure` with ``around=0``), as
          the chain passes over a flat middle shot.
        * ``flat_level`` > 0 (:func:`bafusion.fusion.decide.fill_flat`, sigma
          ``flat_sigma``): each pairwise initial score is filled with the pair's grays
          before its logit enters the sums; in the band, each leading pair's score (its
          filled initial score, rescored by the boundary net on its band pixels) is filled
          again before it decides those pixels, as :func:`bafusion.fusion.decide.decide`
          fills ``s0`` and ``s1``.
        * ``working_min`` / ``working_side`` / ``working_above``: stacks the pair rule
          would decide at another size (:func:`bafusion.fusion.working.decision_size`:
          small ones upscaled, by at most :data:`bafusion.fusion.working.MAX_UPSCALE`;
          camera-size ones at the working resolution) are decided there: every gray is
          resized (:func:`bafusion.fusion.working.resize_gray`), steps 1-4 run at that
          size, the index maps and the band are brought back to full size by nearest
          neighbour and the logit sums by Lanczos; small-region removal and the
          composition run at full size. The full-resolution band refinement of camera-size
          pairs (``working_band``, ``working_refine``) is *not* applied: it filters one
          score of two sources, and the joint rule's index has no such score, so a
          camera-size stack's boundaries are placed to about one working pixel
          (``long side / working_side`` full-resolution pixels up to 16:9,
          :func:`bafusion.fusion.working.working_resolution`).
    names : sequence of str
        The shots' names, for error messages; a shot without one (fewer names than shots) is
        ``image <n>``.
    step : callable, optional
        Called with a line naming each step of the pairwise scoring as it starts ("step 1/9:
        scoring a.png against the 9 shots after it (pair scorings 1-9 of 45)"; by file name,
        with the scorings it runs: the steps shrink, step k of N shots runs N - k of the
        N(N-1)/2), for three or more shots: a long stack said nothing from its start to its end.
    keep_scores : bool
        Return the logit sums (``StackResult.scores``, N float32 maps at the shots' size: 4N
        bytes a pixel) (the default). False: ``scores`` is None, and a stack decided at
        another size never brings them to full size (``bafusion fuse``, ``fuse-dir`` and
        :func:`bafusion.fuse` fuse so: they read none).

    Returns
    -------
    StackResult
        Every map at the shots' size.
    """
    n = len(images)
    if n < 2:
        raise UserError("fusion needs at least two source images")
    # the shots without a name (fewer names than shots) are named by their place, as fuse_stack names them
    names = [*names[:n], *(f"image {i + 1}" for i in range(len(names), n))]
    for i in range(1, n):
        check_same_size(images[0], images[i], names[0], names[i])
    for nm, im in zip(names, images):
        if np.asarray(im).dtype != np.uint8:
            raise InputTypeError(f"{nm}: sources must be uint8 images, got {np.asarray(im).dtype}"
                                 f"{dtype_hint(np.asarray(im), wide=False)}")
    t_pre: dict[str, float] = {}  # counted in the fusing time: a camera-size stack's seconds
    t0 = time.perf_counter()
    grays = [to_gray_u8(_rgb(im, False)) for im in images]
    t_pre["gray"] = time.perf_counter() - t0
    if params.exposure_match != "none":  # the nets score every shot at the first one's exposure
        t0 = time.perf_counter()
        # brighter: every shot mapped onto the brightest one's exposure (the highest mean gray),
        # as a pair's darker shot is (match_pair); the others: onto the first shot's; a flat one
        # there (a dropped frame), onto which no fit is reliable, passed over for the next
        # (stack_exposure); linear_clip: every shot clipped where the brightest one's white lands
        fixed = stack_exposure(grays, params.exposure_match, step=params.exposure_fit_step, around=0)
        grays = [fixed.gray(k, g) for k, g in enumerate(grays)]
        t_pre["exposure"] = time.perf_counter() - t0
    h, w = grays[0].shape
    size = decision_size((h, w), params)
    said = None
    if step is not None and n > 2:
        short = [Path(nm).name for nm in names]

        total = n * (n - 1) // 2

        def said(i: int) -> None:
            # step i holds n - 1 - i of the n(n-1)/2 pair scorings: "step 4/7" of 8 shots starts
            # after 18 of 28 (64 %), so the line says which scorings it runs
            later = n - 1 - i
            first = i * (n - 1) - i * (i - 1) // 2 + 1
            step(f"step {i + 1}/{n - 1}: scoring {short[i]} against "
                 + (f"the {later} shots after it (pair scorings {first}-{first + later - 1} of {total})"
                    if later > 1 else f"the shot after it (pair scoring {total} of {total})"))
    if size is None:
        scores, index0, near, index1, t = _joint_decide(grays, nets, params, said)
    else:
        scores, index0, near, index1, t = _joint_decide([resize_gray(g, size) for g in grays], nets, params, said)
        t0 = time.perf_counter()
        if keep_scores:  # filled map by map: one full-size copy, not a list of them stacked into a second
            small, scores = scores, np.empty((n, h, w), np.float32)
            for k in range(n):
                scores[k] = resize(small[k], (h, w))
            del small
        index0, near, index1 = (_nearest(m, (h, w)) for m in (index0, near, index1))
        t["resize"] = time.perf_counter() - t0
    if not keep_scores:
        scores = None
    t0 = time.perf_counter()
    colour = any(np.asarray(i).ndim == 3 for i in images)
    gains = [None] + [colour_gains(_rgb(images[0], colour), _rgb(im, colour)) for im in images[1:]]
    notes = []
    if params.match_output_exposure:  # every shot's pixels at the first one's exposure and colour
        images = [images[0]] + [apply_gains(_rgb(im, colour), g) for im, g in zip(images[1:], gains[1:])]
    else:
        for i in range(1, n):
            note = exposure_note(gains[i], (names[0], names[i]), OUTPUT_EXPOSURE_OPTION,
                                 colour=np.asarray(images[0]).ndim == 3 and np.asarray(images[i]).ndim == 3)
            notes += [note] if note else []
    t_pre["colour"] = time.perf_counter() - t0
    note = patch_note((h, w), params, nets.patch_initial, names)
    notes += [note] if note else []
    note = scales_note((h, w), params, nets.patch_initial)
    notes += [note] if note else []
    if params.noise_match:  # asked for, and not done: said, not silently dropped
        notes.append("fuse.noise_match (--noise-match) is not used by the joint stack rule: the shots were "
                     "scored at their own noise levels (the chain rule, --stack-rule chain, matches each pair's)")
    # the band reads high alone; a low at its default (--high alone, a params file's 0.2) was not asked for
    if (not math.isclose(params.low, 1.0 - params.high, abs_tol=1e-9)
            and not math.isclose(params.low, FusionParams.low, abs_tol=1e-9)):
        notes.append(f"fuse.low (--low {params.low:g}) is not used by the joint stack rule: its near-boundary band "
                     f"is where no shot holds fuse.high ({params.high:g}) of its window, which for two shots is "
                     f"low = 1 - high = {1.0 - params.high:g} (the chain rule, --stack-rule chain, uses both bounds)")
    if params.unsure_region > params.min_region:  # as noise_match: asked for, and not done
        notes.append(f"fuse.unsure_region (--unsure-region {params.unsure_region:g}) is not used by the joint stack "
                     f"rule: only the regions under fuse.min_region ({params.min_region:g}) were removed (the chain "
                     "rule, --stack-rule chain, removes the unsure ones in each pair's decision)")
    # the working resolution's band refinement is the pair rule's (the docstring): asked for, and not done
    asked = [f"fuse.{k} (--{k.replace('_', '-')} {getattr(params, k)})" for k in ("working_refine", "working_band")
             if getattr(params, k) != getattr(FusionParams, k)]
    if size is not None and size[0] < h and asked:
        notes.append(f"{' and '.join(asked)} {'is' if len(asked) == 1 else 'are'} not used by the joint stack rule: "
                     f"its shot-index map, decided at {size[1]} x {size[0]} px, is brought to full size as it is (the "
                     "chain rule, --stack-rule chain, refines each pair's boundary band at full size)")
    t0 = time.perf_counter()
    index = remove_small_labels(index1, params.min_region)
    fused = compose(images, index)
    t["post"] = time.perf_counter() - t0
    return StackResult(fused, scores, index0, near, index1, index, {**t_pre, **t}, notes,
                       gains if params.match_output_exposure else None, n)


#: The files :func:`save_stack_maps` writes, ``<stem>-<key>.png``.
STACK_MAP_KEYS = ("index-initial", "near-boundary", "index-raw", "index", "index-colour")


def index_to_u8(index: np.ndarray, n: int) -> np.ndarray:
    """A shot-index map as uint8 gray: shot 0 black, shot ``n - 1`` white, evenly between."""
    return np.round(index.astype(np.float64) * 255.0 / max(n - 1, 1)).astype(np.uint8)


def save_stack_maps(folder: str | Path, stem: str, result: StackResult) -> list[Path]:
    """Write ``<stem>-<key>.png`` for :data:`STACK_MAP_KEYS` into ``folder`` (atomically):
    the index maps as gray (``index-initial``, ``index-raw``, ``index``: shot 0 black, the last
    white), the band the boundary net rescored, and the final index in pseudo-colour.

    The gray levels need the number of shots: ``result.shots``, or where that is 0 (not given)
    the first axis of ``result.scores``. A result with neither (built by hand, or with
    ``keep_scores`` False and ``shots`` left at 0) is refused with a :class:`UserError`
    before anything is written; so is an index map naming a shot beyond that number.
    """
    from bafusion.fusion.maps import pseudo_colour
    from bafusion.io import write_image

    if result.shots:
        n = int(result.shots)
    elif result.scores is not None:
        n = int(result.scores.shape[0])
    else:
        raise UserError("save_stack_maps: the StackResult does not say how many shots it has (shots is 0 and scores "
                        "None), which the index maps' gray levels need: give StackResult(..., shots=N)")
    for key, m in (("index_initial", result.index_initial), ("index_raw", result.index_raw), ("index", result.index)):
        m = np.asarray(m)
        if m.size and (int(m.min()) < 0 or int(m.max()) >= n):
            raise UserError(f"save_stack_maps: StackResult.{key} names shots {int(m.min())}..{int(m.max())}, "
                            f"outside 0..{n - 1} of a stack of {n} shots")
    d = Path(folder)
    maps = {
        "index-initial": index_to_u8(result.index_initial, n),
        "near-boundary": result.near_boundary.astype(np.uint8) * 255,
        "index-raw": index_to_u8(result.index_raw, n),
        "index": index_to_u8(result.index, n),
    }
    maps["index-colour"] = pseudo_colour(maps["index"], "viridis")
    written = []
    for key in STACK_MAP_KEYS:
        p = d / f"{stem}-{key}.png"
        write_image(p, maps[key])
        written.append(p)
    return written


__all__ = [
    "STACK_MAP_KEYS",
    "save_stack_maps",
    "AMBIGUOUS",
    "STACK_RULES",
    "StackOptions",
    "StackResult",
    "SyntheticStack",
    "chain_index",
    "compose",
    "fuse_stack_joint",
    "load_foreground",
    "remove_small_labels",
    "stack_accuracy",
    "stack_from_data",
    "stack_truth",
    "synthetic_stack",
    "visibility_weights",
]
