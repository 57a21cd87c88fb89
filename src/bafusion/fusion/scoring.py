"""Scoring: the nets' focus scores for every pixel of a gray pair.

Patches: the patch of side ``p`` at pixel ``(r, c)`` covers rows ``r - p//2 .. r - p//2 + p - 1``
(columns likewise) of the gray images, reflect-padded (``numpy.pad(mode="reflect")``, which also
works for images smaller than a patch); input channels are gray A and gray B as uint8/255.

Two ways to score:

* ``exact=True``: the reference. Every pixel's patch is cut out (``Tensor.unfold`` views,
  batched) and run through the whole net. About ``p*p`` times the work of the dense mode.

All modes run inference copies of the nets with BatchNorm folded into the convolutions and
exact patches in cache-sized batches (:func:`auto_batch`).
* dense (the initial net's default): the convolutional trunk runs once over the padded image
  (total stride 4); the global average pooling of the head becomes an average over
  ``p/4 x p/4`` cells at stride 1 and the linear layer a 1x1 convolution (both linear, so the
  layer is applied first, on the 64-channel map, and the 2-channel result is averaged). That
  scores the pixels whose patch starts on a grid of step 4. ``initial_step`` in {4, 2, 1} adds
  shift-and-stitch passes (``(4/step)**2`` trunk passes) to score a grid of that step; the logit
  difference is then interpolated bilinearly to every pixel (step 4: one trunk pass; the
  shift-and-stitch passes buy < 0.5 % agreement for 4x the time, see the benchmark). The
  image is reflect-padded by ``dense_margin`` (16) pixels beyond its patches; a box that
  ``max_tile`` (or, for the boundary net, ``tile``) cuts out of it gives the trunk, at its
  edges inside the image, as much of the surroundings as the trunk reads
  (:func:`trunk_reach`: 40 px for ResNet-20, 124 for ResNet-56), so a pixel's score does not
  depend on how the image was cut into boxes: it is its score in one box over the whole
  image, up to float rounding (differences of about 1e-7 on the CPU, tested), and an image
  within ``max_tile`` is one box. Where the trunk reads no further than ``dense_margin``
  (ResNet-8), the score is :func:`bafusion.nets.model.context_logits` of its patch with that
  context (tested).

  A net trained on isolated, zero-padded patches (the paper) learns to use the patch's
  zero-padded edges; the dense pass shows it the image around the patch instead, so its dense
  scores differ from its patch scores. Nets trained with context consistency
  (``train.consistency`` on ``patches.context`` crops: both views in the loss, and a term
  that makes them agree; the shipped nets) are patch classifiers whose dense scores follow
  their patch scores: with them the default (``boundary_weight`` 0.75) decides like exact
  mode on 99.22-99.75 % of the pixels of three Lytro pairs at 256x256 (99.31-99.72 % at
  w = 1; at full size measured only with the previous nets, ``lytro-2026-11``, and w = 1:
  98.8-99.8 %; BENCHMARKS.md).

* ``initial_mode="grid"``: the whole net on exact patches whose pixels lie on a grid of step
  ``initial_grid_step``, logit differences interpolated bilinearly: exact mode's scores at the
  grid points, at about ``(p / step)**2`` times the dense pass's work.

The boundary net scores only the near-boundary pixels (``boundary_mode``):

* ``"adaptive"`` (default): exact patches (the whole net, as in exact mode) at the corners of
  the ``boundary_step`` cells (default p/2: 16 for p = 32) that hold near-boundary pixels; a
  cell whose corners fall on both sides of the threshold holds the decision boundary and is
  split, down to ``boundary_fine_step`` (default half the coarse step, p/4); other pixels get
  the bilinear interpolation of the corner logits. Same agreement as "grid" at p/4, faster.
* ``"grid"``: exact patches on a grid of step ``boundary_step`` (default p/4) over the
  near-boundary pixels; the logit differences are interpolated bilinearly.
* ``"dense"``: like the initial net, on tiles (``tile`` pixels, merged into row runs and
  cropped to the near-boundary pixels' extent, with the trunk's reach as context; boxes whose
  crops share enough context merged into one, up to ``max_tile`` a side). Faster, but
  not faithful: the boundary net must place the centre pixel on the right side of the focus
  edge, which it learnt from the patch's edges; even after the context-consistency
  fine-tuning the shipped boundary net's two views agree on 94.3 % of the validation
  boundary patches, and dense boundary scoring decides like exact mode on 95.7-98.8 % of the
  pixels only (BENCHMARKS.md).
* ``"exact"``: one patch per near-boundary pixel.

``benchmarks/bench_fusion.py`` measures the agreement and speed behind the defaults; the
numbers are in BENCHMARKS.md ("Fusion"). ``l``: decision accuracy on synthetic pairs
0.971 / 0.974 / 0.979 / 0.980 for l = 2 / 4 / 8 / 12 (ResNet-8 nets; in a 4-pixel band around
the true boundary, l = 8: 0.724 with the initial net alone, 0.845 refined); 8 is the default,
since 12 gains 0.1 % for about 1.5x the near-boundary area.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import special

from bafusion.errors import UserError
from bafusion.fusion.params import FusionParams
from bafusion.nets.model import CifarResNet

#: Rows/columns of padding beyond the last patch start: room for grid steps up to this.
MAX_GRID_STEP = 32
#: The texts :func:`_warn_once` has said in this process.
_SAID: set[str] = set()


def auto_step(patch: int) -> int:
    """The boundary grid step for ``boundary_step = 0`` in grid mode, and the fine step of the
    adaptive mode: the largest power of two <= p/4 (8 for p = 32, 16 for the paper's p = 64,
    2 for p = 12).

    Parameters
    ----------
    patch : int
        The boundary net's patch side (pixels).

    Returns
    -------
    int
        A power of two, at least 1 and at most 16 (half of :data:`MAX_GRID_STEP`).
    """
    step = 1
    while step * 2 <= min(patch // 4, MAX_GRID_STEP // 2):
        step *= 2
    return step


def boundary_steps(params: "FusionParams", patch: int) -> tuple[int, int]:
    """(step, fine step) of the boundary net for ``params`` and patch side ``patch``: the set
    values, or for 0 (auto) p/4 in grid mode and p/2 refined to p/4 in adaptive mode (16 -> 8
    for p = 32, 32 -> 16 for p = 64; measured in BENCHMARKS.md).

    Parameters
    ----------
    params : FusionParams
        Its ``boundary_mode``, ``boundary_step`` and ``boundary_fine_step`` are read.
    patch : int
        The boundary net's patch side (pixels).

    Returns
    -------
    tuple of (int, int)
        The grid step, and the fine step (adaptive mode: at most the grid step; other modes:
        ``params.boundary_fine_step`` as it is).
    """
    base = auto_step(patch)
    if params.boundary_mode == "adaptive":
        coarse = params.boundary_step or 2 * base
        fine = params.boundary_fine_step or max(1, coarse // 2)
        if fine > coarse and not params.exact:  # (a boundary_step given: refused by FusionParams)
            _warn_once(f"fuse.boundary_fine_step: {fine} is above the boundary net's grid step {coarse} "
                       f"(fuse.boundary_step: 0, auto: half its patch {patch}): the adaptive mode runs it as "
                       f"{coarse}, no refinement; set boundary_fine_step below {coarse}, or 0 (half the coarse "
                       "step)")
        return coarse, min(fine, coarse)
    return params.boundary_step or base, params.boundary_fine_step


def auto_batch(patch: int, device: torch.device | str = "cpu") -> int:
    """Exact patches per forward pass for ``batch_size = 0``: 512 on GPUs; on CPUs
    65536 / p^2 (64 for p = 32, 16 for p = 64), whose activations stay in cache: ResNet-56 at
    p = 64 on 2 cores took 4.0 ms per patch in batches of 16 and 8.3 ms in batches of 512
    (bf16: 1.3 and 4.6 ms), ResNet-20 at p = 32 0.42 and 0.71 ms (BENCHMARKS.md).

    Parameters
    ----------
    patch : int
        The net's patch side (pixels).
    device : torch.device or str
        Where the net runs; every type but ``"cpu"`` counts as a GPU.

    Returns
    -------
    int
        Patches per batch, at least 1.
    """
    if torch.device(device).type != "cpu":
        return 512
    return max(1, 65536 // (patch * patch))


def _pad(gray: np.ndarray, patch: int, extra: int = MAX_GRID_STEP, margin: int = 0) -> np.ndarray:
    """Reflect-pad so the patch of pixel (r, c) starts at padded (r + margin, c + margin);
    ``extra`` rows/columns more at the bottom/right leave room for the dense grid."""
    top = patch // 2 + margin
    bottom = patch - patch // 2 - 1 + extra + margin
    return np.pad(gray, ((top, bottom), (top, bottom)), mode="reflect")


def _pair_tensor(gray_a: np.ndarray, gray_b: np.ndarray, patch: int, device: torch.device,
                 margin: int = 0) -> torch.Tensor:
    """(1, 2, Hp, Wp) float32 in [0, 1]: reflect-padded gray A and gray B."""
    x = np.stack([_pad(gray_a, patch, margin=margin), _pad(gray_b, patch, margin=margin)]).astype(np.float32)
    x /= np.float32(255.0)
    return torch.from_numpy(x)[None].to(device)


# --------------------------------------------------------------------------------------
# Scoring: exact (reference) and dense
# --------------------------------------------------------------------------------------


def _logit_diff(logits: torch.Tensor) -> torch.Tensor:
    """z1 - z0 in float32: sigmoid of it is the softmax probability of class 1."""
    return logits[:, 1].float() - logits[:, 0].float()


@torch.inference_mode()
def score_exact(
    net: CifarResNet,
    gray_a: np.ndarray,
    gray_b: np.ndarray,
    patch: int,
    mask: np.ndarray | None = None,
    batch_size: int = 0,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Reference scores: the whole net on every pixel's patch (or only where ``mask``).

    Parameters
    ----------
    net : CifarResNet
        The initial or boundary net (:class:`FusionNets`' copies), on ``device``.
    gray_a, gray_b : ndarray, (H, W)
        The gray sources, gray levels 0-255 (uint8 or float); reflect-padded and divided by
        255 before the net sees them.
    patch : int
        The net's patch side; pixel (r, c)'s patch is centred on it.
    mask : ndarray of bool, (H, W), optional
        The pixels to score; None: every pixel.
    batch_size : int
        Patches per forward pass; 0: :func:`auto_batch`.
    device : torch.device or str
        Where the patches go (the net's device).

    Returns
    -------
    ndarray of float32, (H, W)
        Probabilities of class 1 (focused in A) in [0, 1]; NaN outside ``mask``.
    """
    dev = torch.device(device)
    batch_size = batch_size or auto_batch(patch, dev)
    h, w = gray_a.shape
    x = _pair_tensor(gray_a, gray_b, patch, dev)[0]  # (2, Hp, Wp)
    view = x.unfold(1, patch, 1).unfold(2, patch, 1)  # (2, Hp-p+1, Wp-p+1, p, p), no copy
    if mask is None:
        rows, cols = np.divmod(np.arange(h * w), w)
    else:
        rows, cols = np.nonzero(mask)
    out = np.full((h, w), np.nan, dtype=np.float32)
    vals = np.empty(len(rows), dtype=np.float32)
    for s in range(0, len(rows), batch_size):
        r = torch.from_numpy(rows[s : s + batch_size]).to(dev)
        c = torch.from_numpy(cols[s : s + batch_size]).to(dev)
        patches = view[:, r, c].permute(1, 0, 2, 3).contiguous(memory_format=torch.channels_last)  # (n, 2, p, p)
        vals[s : s + batch_size] = torch.sigmoid(_logit_diff(net(patches))).float().cpu().numpy()
    out[rows, cols] = vals
    return out


@torch.inference_mode()
def score_grid(
    net: CifarResNet,
    gray_a: np.ndarray,
    gray_b: np.ndarray,
    patch: int,
    mask: np.ndarray,
    step: int = 4,
    batch_size: int = 0,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Exact patches on a grid of the given step around the masked pixels, interpolated.

    The whole net runs on the patches of the grid points (rows and columns multiples of
    ``step``) that surround a masked pixel; their logit differences are interpolated
    bilinearly to the masked pixels. ``step = 1`` is :func:`score_exact` on the mask; each
    doubling of the step divides the work by four. Pixels outside ``mask`` are NaN.

    Parameters
    ----------
    net : CifarResNet
        The net, on ``device``.
    gray_a, gray_b : ndarray, (H, W)
        The gray sources, gray levels 0-255 (uint8 or float); reflect-padded and divided by
        255 before the net sees them.
    patch : int
        The net's patch side.
    mask : ndarray of bool, (H, W)
        The pixels to score.
    step : int
        Grid step (pixels), at most :data:`MAX_GRID_STEP`.
    batch_size : int
        Patches per forward pass; 0: :func:`auto_batch`.
    device : torch.device or str
        The net's device.

    Returns
    -------
    ndarray of float32, (H, W)
        Probabilities of class 1 in [0, 1] (sigmoid of the interpolated logit differences);
        NaN outside ``mask``.

    Raises
    ------
    bafusion.errors.UserError
        ``step`` above :data:`MAX_GRID_STEP`.
    """
    dev = torch.device(device)
    batch_size = batch_size or auto_batch(patch, dev)
    h, w = gray_a.shape
    if step > MAX_GRID_STEP:
        raise UserError(f"grid step must be at most {MAX_GRID_STEP}, got {step}")
    gh, gw = -(-(h - 1) // step) + 1, -(-(w - 1) // step) + 1
    rows, cols = np.nonzero(mask)
    out = np.full((h, w), np.nan, dtype=np.float32)
    if len(rows) == 0:
        return out
    i0, j0 = rows // step, cols // step
    i1, j1 = np.minimum(i0 + 1, gh - 1), np.minimum(j0 + 1, gw - 1)
    need = np.zeros((gh, gw), dtype=bool)
    for ii in (i0, i1):
        for jj in (j0, j1):
            need[ii, jj] = True
    gi, gj = np.nonzero(need)
    x = _pair_tensor(gray_a, gray_b, patch, dev)[0]
    view = x.unfold(1, patch, 1).unfold(2, patch, 1)
    grid = np.zeros((gh, gw), dtype=np.float32)
    for s in range(0, len(gi), batch_size):
        r = torch.from_numpy(gi[s : s + batch_size] * step).to(dev)
        c = torch.from_numpy(gj[s : s + batch_size] * step).to(dev)
        patches = view[:, r, c].permute(1, 0, 2, 3).contiguous(memory_format=torch.channels_last)
        grid[gi[s : s + batch_size], gj[s : s + batch_size]] = _logit_diff(net(patches)).float().cpu().numpy()
    fr = ((rows - i0 * step) / step).astype(np.float32)
    fc = ((cols - j0 * step) / step).astype(np.float32)
    top = grid[i0, j0] * (1 - fc) + grid[i0, j1] * fc
    bot = grid[i1, j0] * (1 - fc) + grid[i1, j1] * fc
    d = top * (1 - fr) + bot * fr
    out[rows, cols] = special.expit(d)
    return out


class _PatchScorer:
    """Logit differences of exact patches, computed once per patch start and cached."""

    def __init__(self, net: CifarResNet, gray_a: np.ndarray, gray_b: np.ndarray, patch: int, batch_size: int,
                 device: torch.device) -> None:
        h, w = gray_a.shape
        self.net, self.batch_size, self.device = net, batch_size or auto_batch(patch, device), device
        x = _pair_tensor(gray_a, gray_b, patch, device)[0]
        self.view = x.unfold(1, patch, 1).unfold(2, patch, 1)  # (2, H+16, W+16, p, p) patch starts
        self.logit = np.full(self.view.shape[1:3], np.nan, dtype=np.float32)
        self.evaluated = 0

    def get(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Logit differences at patch starts (rows, cols), evaluating the missing ones."""
        todo = np.isnan(self.logit[rows, cols])
        if todo.any():
            key = np.unique(rows[todo].astype(np.int64) * self.logit.shape[1] + cols[todo])
            rr, cc = np.divmod(key, self.logit.shape[1])
            for s in range(0, len(rr), self.batch_size):
                r = torch.from_numpy(rr[s : s + self.batch_size]).to(self.device)
                c = torch.from_numpy(cc[s : s + self.batch_size]).to(self.device)
                patches = self.view[:, r, c].permute(1, 0, 2, 3).contiguous(memory_format=torch.channels_last)
                with torch.inference_mode():
                    d = _logit_diff(self.net(patches)).float().cpu().numpy()
                self.logit[rr[s : s + self.batch_size], cc[s : s + self.batch_size]] = d
            self.evaluated += len(rr)
        return self.logit[rows, cols]


def score_adaptive(
    net: CifarResNet,
    gray_a: np.ndarray,
    gray_b: np.ndarray,
    patch: int,
    mask: np.ndarray,
    coarse: int = 8,
    fine: int = 1,
    threshold: float = 0.5,
    batch_size: int = 0,
    device: torch.device | str = "cpu",
    stats: dict | None = None,
) -> np.ndarray:
    """Exact patches on a coarse-to-fine grid around the masked pixels, interpolated.

    The net runs on the patches at the corners of the ``coarse`` x ``coarse`` cells that hold
    masked pixels. A cell whose four corner scores lie on the same side of ``threshold`` is
    final: its pixels get the bilinear interpolation of the corner logits, which lies on that
    side too. A cell whose corners disagree holds the decision boundary and is split in four,
    down to cells of side ``fine`` (``fine = 1``: exact scores there). So the work goes where
    the decision is made: about the ``coarse`` grid's cost plus a few patches per pixel of
    boundary length. Pixels outside ``mask`` are NaN. ``stats`` (a dict), if given, receives
    the patch starts (rows, cols) that were evaluated, under "positions" (benchmarks).

    Parameters
    ----------
    net : CifarResNet
        The net, on ``device``.
    gray_a, gray_b : ndarray, (H, W)
        The gray sources, gray levels 0-255 (uint8 or float); reflect-padded and divided by
        255 before the net sees them.
    patch : int
        The net's patch side.
    mask : ndarray of bool, (H, W)
        The pixels to score.
    coarse, fine : int
        The first and the finest cell side: 1, 2, 4, 8, 16 or 32, ``fine <= coarse``.
    threshold : float
        The probability in (0, 1) whose sides the corners are compared to (the rule's
        binarisation threshold).
    batch_size : int
        Patches per forward pass; 0: :func:`auto_batch`.
    device : torch.device or str
        The net's device.
    stats : dict, optional
        Receives ``"positions"``: the (rows, cols) arrays of the evaluated patch starts.

    Returns
    -------
    ndarray of float32, (H, W)
        Probabilities of class 1 in [0, 1]; NaN outside ``mask``.

    Raises
    ------
    bafusion.errors.UserError
        A step not in 1-32 (powers of two), or ``fine > coarse``.
    """
    for v, name in ((coarse, "coarse"), (fine, "fine")):
        if v not in (1, 2, 4, 8, 16, 32):
            raise UserError(f"{name} grid step must be 1, 2, 4, 8, 16 or 32, got {v}")
    if fine > coarse:
        raise UserError(f"fine grid step {fine} is larger than the coarse step {coarse}")
    dev = torch.device(device)
    h, w = gray_a.shape
    out = np.full((h, w), np.nan, dtype=np.float32)
    if not mask.any():
        return out
    t_logit = math.log(threshold / (1 - threshold))
    scorer = _PatchScorer(net, gray_a, gray_b, patch, batch_size, dev)
    step = coarse
    # cells (top-left corners) at the current level that hold masked pixels
    rows, cols = np.nonzero(mask)
    cells = np.unique(np.stack([rows // step * step, cols // step * step], 1), axis=0)
    final_step = np.zeros((h, w), dtype=np.int16)
    while True:
        r0, c0 = cells[:, 0], cells[:, 1]
        corners = [scorer.get(r0 + dr, c0 + dc) for dr in (0, step) for dc in (0, step)]
        side = np.stack([v > t_logit for v in corners], 1)
        split = ~(side.all(axis=1) | (~side).all(axis=1)) if step > fine else np.zeros(len(cells), bool)
        for r, c in cells[~split]:
            final_step[r : r + step, c : c + step] = step
        if not split.any():
            break
        half = step // 2
        sub = [cells[split] + np.array([dr, dc]) for dr in (0, half) for dc in (0, half)]
        cells = np.concatenate(sub)
        keep = (cells[:, 0] < h) & (cells[:, 1] < w)
        cells = cells[keep]
        keep = np.array([mask[r : r + half, c : c + half].any() for r, c in cells], dtype=bool)
        cells = cells[keep]
        step = half
        if len(cells) == 0:
            break
    fs = final_step[rows, cols].astype(np.int64)
    i0, j0 = rows // fs * fs, cols // fs * fs
    fr = ((rows - i0) / fs).astype(np.float32)
    fc = ((cols - j0) / fs).astype(np.float32)
    lg = scorer.logit
    d = (lg[i0, j0] * (1 - fc) + lg[i0, j0 + fs] * fc) * (1 - fr) + (lg[i0 + fs, j0] * (1 - fc) + lg[i0 + fs, j0 + fs] * fc) * fr
    out[rows, cols] = special.expit(d)
    if stats is not None:
        stats["positions"] = np.nonzero(~np.isnan(scorer.logit))
    return out


def _interp_axis(g: torch.Tensor, n: int, step: int, dim: int) -> torch.Tensor:
    """Linear interpolation along ``dim`` from grid points 0, step, 2 step, ... to 0 .. n-1."""
    if step == 1:
        return g.narrow(dim, 0, n)
    pos = torch.arange(n, device=g.device)
    i0 = torch.div(pos, step, rounding_mode="floor")
    frac = (pos - i0 * step).to(g.dtype) / step
    i1 = torch.clamp(i0 + 1, max=g.shape[dim] - 1)
    shape = [1] * g.dim()
    shape[dim] = n
    frac = frac.view(shape)
    return g.index_select(dim, i0) * (1 - frac) + g.index_select(dim, i1) * frac


def trunk_reach(net: torch.nn.Module) -> int:
    """Pixels of surroundings that the trunk of ``net`` reads beyond a patch, rounded up to a
    multiple of 4: its receptive-field radius (40 for ResNet-20, 124 for ResNet-56, 12 for
    ResNet-8), computed from its layers (kernel sizes, strides, paddings and dilations).

    Parameters
    ----------
    net : torch.nn.Module
        A net with a ``trunk`` (:class:`CifarResNet`, or a sequence of convolutions, pooling
        and pointwise layers).

    Returns
    -------
    int
        The smallest multiple of 4 such that the trunk's features over a patch's ``p/4 x p/4``
        cells depend only on the input within that many pixels around the patch.

    Raises
    ------
    TypeError
        A trunk layer whose reach is unknown (a container other than a sequence or a
        :class:`~bafusion.nets.model.BasicBlock`).
    """
    from bafusion.nets.model import BasicBlock

    lo = hi = 0  # output cell i reads input [jump * i + lo, jump * i + hi]
    jump = 1

    def walk(m: torch.nn.Module) -> None:
        nonlocal lo, hi, jump
        if isinstance(m, BasicBlock):
            walk(m.conv1)  # the shortcut (1x1, conv1's stride) reads within conv1's window
            walk(m.conv2)
        elif isinstance(m, (torch.nn.Conv2d, torch.nn.AvgPool2d, torch.nn.MaxPool2d)):
            def first(v: object) -> int:
                return int(v[0] if isinstance(v, tuple) else v)  # type: ignore[index]

            k, st, pad = first(m.kernel_size), first(m.stride), first(m.padding)
            dil = first(getattr(m, "dilation", 1))
            lo, hi = lo - jump * pad, hi + jump * ((k - 1) * dil - pad)
            jump *= st
        elif isinstance(m, torch.nn.Sequential):
            for c in m:
                walk(c)
        elif next(m.children(), None) is not None:
            raise TypeError(f"cannot tell how far {type(m).__name__} reads (dense scoring)")

    walk(net.trunk)
    reach = max(-lo, hi - (jump - 1), 0)
    return -(-reach // 4) * 4


def _axis_crop(origin: int, shift: int, points: int, patch: int, margin: int, context: int,
               full: int) -> tuple[int, int, int]:
    """Along one axis: the crop [lo, hi) of the padded pair for the patches of ``points``
    grid points ``origin + shift + 4 i``, and the index of the first of them in the pooled
    map. The crop reaches ``context`` pixels beyond the patches (and 8 more after them), but
    no further than the crop of the whole image (padded rows ``s .. full``, cut to whole
    trunk cells, s the shift's residue mod 4), so a box edge inside the image changes nothing
    within ``context`` and a box at the image border ends where the whole image's crop ends."""
    first = origin + shift + margin  # padded row where the first patch starts
    s = (origin + shift) % 4
    lo = max(s, first - context)
    hi = min(s + (full - s) // 4 * 4, first + 4 * (points - 1) + patch + context + 8)
    return lo, hi, (first - lo) // 4


def _dense_box(
    net: CifarResNet, x: torch.Tensor, r0: int, r1: int, c0: int, c1: int, patch: int, step: int, margin: int = 0,
    context: int | None = None, size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Dense logit differences for image pixels [r0, r1) x [c0, c1) from padded pair ``x``
    (padded by ``margin`` more than :func:`_pad` on every side) of an image of ``size`` (H, W).

    The trunk runs once per shift (``(4/step)**2`` shifts) on the crop of ``x`` holding the
    patches of the shift's grid points and ``context`` (at least ``margin``) pixels around
    them, clipped to the crop of the whole image (:func:`_axis_crop`); each run gives the
    patches starting on a step-4 grid; together they fill a grid of the given step, which is
    interpolated to every pixel. With ``context`` at least :func:`trunk_reach` the result
    does not depend on the box; the box of the whole image reads exactly the whole image's
    crop (``margin`` pixels of reflect padding around the image's patches)."""
    k = patch // 4
    context = margin if context is None else max(context, margin)
    h, w = size if size is not None else (r1, c1)
    gh = -(-(r1 - 1 - r0) // step) + 1  # grid points 0, step, ..., covering r1 - 1
    gw = -(-(c1 - 1 - c0) // step) + 1
    full_h = step * (-(-(h - 1) // step)) + patch + 4 + 2 * margin  # the whole image's crop
    full_w = step * (-(-(w - 1) // step)) + patch + 4 + 2 * margin
    weight = net.fc.weight[:, :, None, None]
    grid = torch.empty((gh, gw), dtype=torch.float32, device=x.device)
    m = 4 // step
    for a in range(0, 4, step):
        nr = len(range(a // step, gh, m))
        if not nr:
            continue
        rlo, rhi, roff = _axis_crop(r0, a, nr, patch, margin, context, full_h)
        for b in range(0, 4, step):
            nc = len(range(b // step, gw, m))
            if not nc:
                continue
            clo, chi, coff = _axis_crop(c0, b, nc, patch, margin, context, full_w)
            feat = net.trunk(x[:, :, rlo:rhi, clo:chi])
            z = F.conv2d(feat, weight, net.fc.bias).float()  # fc as a 1x1 convolution (before the mean: both linear)
            z = F.avg_pool2d(z, k, stride=1)  # the global pooling over each patch's p/4 x p/4 cells
            d = _logit_diff(z)[0].float()
            grid[a // step :: m, b // step :: m] = d[roff : roff + nr, coff : coff + nc]
    full = _interp_axis(_interp_axis(grid, r1 - r0, step, 0), c1 - c0, step, 1)
    return full


@torch.inference_mode()
def score_dense(
    net: CifarResNet,
    gray_a: np.ndarray,
    gray_b: np.ndarray,
    patch: int,
    step: int = 4,
    mask: np.ndarray | None = None,
    tile: int = 128,
    max_tile: int = 1024,
    device: torch.device | str = "cpu",
    margin: int = 0,
) -> np.ndarray:
    """Dense scores (float32 (H, W) probabilities of class 1).

    ``margin`` (a multiple of 4): pixels of reflect padding around the image's patches. At a
    box edge inside the image the trunk sees the padded image up to :func:`trunk_reach`
    pixels (at least ``margin``) beyond the box's patches, cut where the crop of the whole
    image ends, so a pixel's score does not depend on the boxes: it is the score the whole
    image in one box gives (up to float rounding: about 1e-7 on the CPU). With a net that
    reads no further than ``margin``, it equals :func:`bafusion.nets.model.context_logits` of
    its patch with that context.

    Without ``mask`` the whole image is scored, in tiles of at most ``max_tile``. With a mask,
    only tiles of side ``tile`` holding masked pixels are scored, consecutive ones in a tile row
    merged into one box and each box cropped to the masked pixels' extent; other pixels are NaN.
    Both sides are rounded down to a multiple of 4 (at least 4). A box's crop is its side plus
    the patch side plus up to twice :func:`trunk_reach` and 8 pixels, so neighbouring boxes
    would recompute each other's surroundings: boxes whose bounding box's crop is smaller than
    their crops together are merged (sides up to ``max_tile``; :func:`_merge_boxes`), which
    changes the time only.

    Parameters
    ----------
    net : CifarResNet
        The net, on ``device``.
    gray_a, gray_b : ndarray, (H, W)
        The gray sources, gray levels 0-255 (uint8 or float); reflect-padded and divided by
        255 before the net sees them.
    patch : int
        The net's patch side, a positive multiple of 4.
    step : int
        Grid step (4, 2 or 1) at which the trunk's output is evaluated.
    mask : ndarray of bool, (H, W), optional
        The pixels to score; None: every pixel.
    tile : int
        Tile side (pixels) with a mask.
    max_tile : int
        Largest tile side without a mask, and largest merged box side with one (bounds memory).
    device : torch.device or str
        The net's device.
    margin : int
        Reflect padding (pixels, a multiple of 4, >= 0) around the image's patches.

    Returns
    -------
    ndarray of float32, (H, W)
        Probabilities of class 1 in [0, 1]; NaN outside ``mask``.

    Raises
    ------
    bafusion.errors.UserError
        ``patch`` or ``margin`` not a multiple of 4 (``patch`` below 4, ``margin`` negative).
    """
    if patch % 4 or patch < 4:
        raise UserError(f"patch side must be a positive multiple of 4 for dense fusion, got {patch}")
    if margin < 0 or margin % 4:
        raise UserError(f"dense margin must be a multiple of 4 >= 0, got {margin}")
    dev = torch.device(device)
    h, w = gray_a.shape
    x = _pair_tensor(gray_a, gray_b, patch, dev, margin)
    out = np.full((h, w), np.nan, dtype=np.float32)
    context = trunk_reach(net)
    side = max(4, (tile if mask is not None else max_tile) // 4 * 4)  # box origins on the step-4 grid
    boxes = _boxes(h, w, mask, side, step)
    if mask is not None:  # share the context of neighbouring boxes (the scores do not change)
        merge_side = max(4, max_tile // 4 * 4)
        boxes = _merge_boxes(boxes, (h, w), patch, step, margin, context, merge_side)
    for r0, r1, c0, c1 in boxes:
        d = _dense_box(net, x, r0, r1, c0, c1, patch, step, margin, context, (h, w))
        p = torch.sigmoid(d).cpu().numpy()
        if mask is None:
            out[r0:r1, c0:c1] = p
        else:
            sel = mask[r0:r1, c0:c1]
            out[r0:r1, c0:c1][sel] = p[sel]
    return out


def _crop_cost(r0, r1, c0, c1, size: tuple[int, int], patch: int, step: int, margin: int,
               context: int):
    """Pixels of the padded pair that :func:`_dense_box` gives the trunk for box(es)
    [r0, r1) x [c0, c1) (ints or arrays), for its first shift (the others' are alike):
    :func:`_axis_crop`'s extents along both axes, clipped to the whole image's crop."""

    def extent(o0, o1, n):
        full = step * (-(-(n - 1) // step)) + patch + 4 + 2 * margin
        points = -(-(o1 - 1 - o0) // 4) + 1  # the shift's step-4 grid points
        first = o0 + margin
        s = o0 % 4
        lo = np.maximum(s, first - context)
        hi = np.minimum(s + (full - s) // 4 * 4, first + 4 * (points - 1) + patch + context + 8)
        return hi - lo

    return extent(r0, r1, size[0]) * extent(c0, c1, size[1])


def _merge_boxes(boxes: list[tuple[int, int, int, int]], size: tuple[int, int], patch: int, step: int,
                 margin: int, context: int, max_side: int) -> list[tuple[int, int, int, int]]:
    """Merge boxes (r0, r1, c0, c1) whose crops share context into their bounding boxes.

    Each box's crop reaches ``context`` (the trunk's reach) beyond it, so neighbouring boxes
    recompute each other's surroundings. Boxes are taken in order; each is merged with the
    kept box whose union's crop (:func:`_crop_cost`) saves the most pixels over the two
    crops, while one does and the union's sides stay within ``max_side``, and then kept. In
    the result no two boxes would cost less merged. A union covers its boxes' pixels and starts
    on the step grid (the boxes do), and a box's scores do not depend on the box (context at
    least :func:`trunk_reach`), so merging changes the time only, not the scores (up to float
    rounding).

    A kept box whose union with a box fits in ``max_side`` starts at most ``max_side`` from it
    along both axes, so the kept boxes are indexed in a grid of ``max_side`` cells and a box is
    compared only with those of the 3 x 3 cells around its start (in the order they were kept,
    as with all of them: the same result). That keeps the time near-linear in the boxes:
    comparing with every kept box took 31 s for the 20,505 boxes of a scattered 4000x6000 mask
    with ``tile`` and ``max_side`` 16, the grid 0.8 s (one run each, loaded machine)."""

    def cost(r0, r1, c0, c1):
        return _crop_cost(r0, r1, c0, c1, size, patch, step, margin, context)

    cell = max(1, max_side)
    kept: dict[int, tuple[int, int, int, int]] = {}  # in the order kept (the result's)
    grid: dict[tuple[int, int], set[int]] = {}  # cell of a box's start -> its keys in ``kept``
    for key, box in enumerate(boxes):
        cur = tuple(int(v) for v in box)
        # a box larger than max_side merges with none (a union would be larger still)
        while cur[1] - cur[0] <= max_side and cur[3] - cur[2] <= max_side:
            i, j = cur[0] // cell, cur[2] // cell
            near = sorted(k for di in (-1, 0, 1) for dj in (-1, 0, 1) for k in grid.get((i + di, j + dj), ()))
            if not near:
                break
            kb = np.array([kept[k] for k in near], dtype=np.int64)
            r0, c0 = np.minimum(kb[:, 0], cur[0]), np.minimum(kb[:, 2], cur[2])
            r1, c1 = np.maximum(kb[:, 1], cur[1]), np.maximum(kb[:, 3], cur[3])
            saving = cost(*kb.T) + cost(*cur) - cost(r0, r1, c0, c1)
            saving[(r1 - r0 > max_side) | (c1 - c0 > max_side)] = 0
            best = int(np.argmax(saving))
            if saving[best] <= 0:
                break
            cur = (int(r0[best]), int(r1[best]), int(c0[best]), int(c1[best]))
            gone = kept.pop(near[best])
            grid[(gone[0] // cell, gone[2] // cell)].discard(near[best])
        kept[key] = cur
        if cur[1] - cur[0] <= max_side and cur[3] - cur[2] <= max_side:
            grid.setdefault((cur[0] // cell, cur[2] // cell), set()).add(key)
    return list(kept.values())


def _boxes(h: int, w: int, mask: np.ndarray | None, tile: int, step: int) -> list[tuple[int, int, int, int]]:
    """Boxes (r0, r1, c0, c1) covering the image (mask None) or the masked pixels."""
    boxes = []
    for r0 in range(0, h, tile):
        r1 = min(h, r0 + tile)
        if mask is None:
            boxes += [(r0, r1, c0, min(w, c0 + tile)) for c0 in range(0, w, tile)]
            continue
        band = mask[r0:r1]
        ncol = -(-w // tile)
        used = [bool(band[:, j * tile : (j + 1) * tile].any()) for j in range(ncol)]
        j = 0
        while j < ncol:
            if not used[j]:
                j += 1
                continue
            j1 = j
            while j1 + 1 < ncol and used[j1 + 1]:
                j1 += 1
            c0, c1 = j * tile, min(w, (j1 + 1) * tile)
            sub = band[:, c0:c1]
            rr = np.nonzero(sub.any(axis=1))[0]
            cc = np.nonzero(sub.any(axis=0))[0]
            br0 = r0 + rr[0] // step * step  # keep the grid aligned to the step
            bc0 = c0 + cc[0] // step * step
            boxes.append((br0, r0 + rr[-1] + 1, bc0, c0 + cc[-1] + 1))
            j = j1 + 1
    return boxes


#: Test-time augmentation views (``params.tta``): (quarter turns, mirrored, A/B swapped).
TTA_VIEWS: dict[str, tuple[tuple[int, bool, bool], ...]] = {
    "none": ((0, False, False),),
    "swap": ((0, False, False), (0, False, True)),
    "dihedral": tuple((k, m, False) for k in range(4) for m in (False, True)),
    "all": tuple((k, m, s) for s in (False, True) for k in range(4) for m in (False, True)),
}


def _view(x: np.ndarray, k: int, mirror: bool) -> np.ndarray:
    x = np.fliplr(x) if mirror else x
    return np.ascontiguousarray(np.rot90(x, k))


def _unview(x: np.ndarray, k: int, mirror: bool) -> np.ndarray:
    x = np.rot90(x, -k)
    return np.ascontiguousarray(np.fliplr(x) if mirror else x)


def centre_scores(s: np.ndarray) -> np.ndarray:
    """A score map moved from each patch's pixel ``(p//2, p//2)`` to its geometric centre: each
    pixel's score is the mean of its own and its right, lower and lower-right neighbours' (the
    last row and column repeated), i.e. the bilinear value half a pixel down and right of it,
    where the patch of a net that labels the geometric centre stands (:attr:`FusionParams.score_position`).

    Parameters
    ----------
    s : ndarray of float, (H, W)
        Scores; NaN where not scored (the mean is NaN where any of the four is).

    Returns
    -------
    ndarray of float32, (H, W)
    """
    x = np.pad(np.asarray(s, dtype=np.float64), ((0, 1), (0, 1)), mode="edge")
    return ((x[:-1, :-1] + x[1:, :-1] + x[:-1, 1:] + x[1:, 1:]) / 4.0).astype(np.float32)


def at_centre(position: str, labels: str) -> bool:
    """Whether a net's scores go to the patch's geometric centre (:func:`centre_scores`):
    ``position`` is :attr:`FusionParams.score_position` (``"pixel"``, ``"centre"``, ``"auto"``),
    ``labels`` where the net's training labels sit (:attr:`FusionNets.label_positions
    <bafusion.fusion.models.FusionNets.label_positions>`, ``"pixel"`` or ``"centre"``).

    Parameters
    ----------
    position : str
        The parameter's value.
    labels : str
        The net's label position.

    Returns
    -------
    bool
        True for ``"centre"``, and for ``"auto"`` with labels at the centre.
    """
    if position not in ("auto", "pixel", "centre"):
        raise UserError(f"score_position must be auto, pixel or centre, got {position!r}")
    return position == "centre" or (position == "auto" and labels == "centre")


def _score_placed(net, gray_a, gray_b, patch, params, step, mask, device, centre: bool) -> np.ndarray:
    """:func:`_score_view`, moved to the patches' geometric centres when ``centre``: the pixels
    right of and below ``mask``'s are scored too, then :func:`centre_scores`."""
    if not centre:
        return _score_view(net, gray_a, gray_b, patch, params, step, mask, device)
    grown = None
    if mask is not None:
        grown = np.array(mask, dtype=bool)
        grown[1:, :] |= grown[:-1, :].copy()
        grown[:, 1:] |= grown[:, :-1].copy()
    out = centre_scores(_score_view(net, gray_a, gray_b, patch, params, step, grown, device))
    if mask is not None:
        out[~np.asarray(mask, dtype=bool)] = np.nan
    return out


def score(
    net: CifarResNet,
    gray_a: np.ndarray,
    gray_b: np.ndarray,
    patch: int,
    params: FusionParams,
    step: int,
    mask: np.ndarray | None = None,
    device: torch.device | str = "cpu",
    centre: bool = False,
) -> np.ndarray:
    """Exact or dense scores, as ``params.exact`` says, averaged over the test-time
    augmentation views of ``params.tta``.

    Each view is the pair rotated by quarter turns, mirrored and/or with A and B exchanged
    (:data:`TTA_VIEWS`); its scores are mapped back (rotated back, and ``1 - s`` for a swapped
    pair, whose class 1 means "focused in B") and the probabilities averaged. ``mask`` is
    transformed with the pair; pixels outside it are NaN in every view. With ``tta="none"``
    (the paper) this is one scoring of the pair as it is.

    Parameters
    ----------
    net : CifarResNet
        The net, on ``device``.
    gray_a, gray_b : ndarray, (H, W)
        The gray sources, gray levels 0-255 (uint8 or float); reflect-padded and divided by
        255 before the net sees them.
    patch : int
        The net's patch side.
    params : FusionParams
        Chooses the scoring (``exact``, ``initial_mode``, ``boundary_mode``; with ``mask`` the
        boundary net's modes, without it the initial net's), ``tta`` and the batch and tile
        sizes.
    step : int
        Grid step: dense mode's (at most 4 used), or the boundary net's grid step with a mask
        (:func:`boundary_steps`).
    mask : ndarray of bool, (H, W), optional
        The pixels to score; None: every pixel.
    device : torch.device or str
        The net's device.
    centre : bool
        Place each patch's score at its geometric centre (:func:`centre_scores`, in each view's
        own frame), for a net trained with bafusion 0.2.0's labels (:func:`at_centre`); False:
        at its pixel ``(p//2, p//2)``, the paper.

    Returns
    -------
    ndarray of float32, (H, W)
        Probabilities of class 1 (focused in A) in [0, 1]; NaN outside ``mask``.
    """
    views = TTA_VIEWS[params.tta]
    if len(views) == 1:
        return _score_placed(net, gray_a, gray_b, patch, params, step, mask, device, centre)
    total = None
    for k, mirror, swap in views:
        va, vb = _view(gray_a, k, mirror), _view(gray_b, k, mirror)
        vm = None if mask is None else _view(mask, k, mirror)
        s = _score_placed(net, vb if swap else va, va if swap else vb, patch, params, step, vm, device, centre)
        s = _unview(s, k, mirror).astype(np.float64)
        if swap:
            s = 1.0 - s
        total = s if total is None else total + s
    return (total / len(views)).astype(np.float32)


def _score_view(
    net: CifarResNet,
    gray_a: np.ndarray,
    gray_b: np.ndarray,
    patch: int,
    params: FusionParams,
    step: int,
    mask: np.ndarray | None,
    device: torch.device | str,
) -> np.ndarray:
    """Exact or dense scores of one view, as ``params.exact`` says."""
    if params.exact or (mask is not None and params.boundary_mode == "exact"):
        return score_exact(net, gray_a, gray_b, patch, mask=mask, batch_size=params.batch_size, device=device)
    if mask is not None and params.boundary_mode == "adaptive":
        coarse, fine = step, min(boundary_steps(params, patch)[1], step)
        return score_adaptive(
            net, gray_a, gray_b, patch, mask, coarse=coarse, fine=fine,
            threshold=params.threshold, batch_size=params.batch_size, device=device,
        )
    if mask is not None and params.boundary_mode == "grid":
        return score_grid(net, gray_a, gray_b, patch, mask, step=step, batch_size=params.batch_size, device=device)

    if mask is None and params.initial_mode == "grid":
        everywhere = np.ones(gray_a.shape, dtype=bool)
        return score_grid(net, gray_a, gray_b, patch, everywhere, step=params.initial_grid_step,
                          batch_size=params.batch_size, device=device)
    _warn_small_max_tile(net, gray_a.shape, patch, params.max_tile)
    return score_dense(
        net, gray_a, gray_b, patch, step=min(step, 4), mask=mask, tile=params.tile, max_tile=params.max_tile,
        device=device, margin=params.dense_margin,
    )


def _warn_small_max_tile(net: CifarResNet, shape: tuple[int, ...], patch: int, max_tile: int) -> None:
    """Warn (once per message) of a ``fuse.max_tile`` below what the trunk reads around a box:
    each box's crop is its side plus the patch, twice :func:`trunk_reach` and 8 pixels, so boxes
    of 32 px with ResNet-20 at patch 32 gave the trunk 23x their pixels: lytro-01 fused in 26.7 s
    against 5.0 s with the default 1024 and 7.8 s with 120 (one run each, loaded 2-core machine;
    max_tile 4: over 300 s), the same bytes, for a crop barely smaller. An image within
    ``max_tile`` is one box: nothing to say."""
    if max(shape[:2]) <= max_tile:
        return
    reach = trunk_reach(net)
    over = patch + 2 * reach + 8
    if max_tile >= over:
        return
    times = (max_tile + over) ** 2 / max_tile**2
    _warn_once(f"fuse.max_tile: {max_tile} is below the {over} px the net reads around each box (its patch "
               f"{patch}, twice its reach {reach}, 8): the net computes about {times:.0f}x the pixels of each box, a "
               f"far slower fusion for a crop not much smaller; raise fuse.max_tile to {over} or more")


def _warn_once(text: str) -> None:
    """A :class:`UserWarning` of ``text``, once per process whichever net, view or stack asks.
    Python's own once-per-line registry is reset whenever a warnings filter changes, and every
    image read changes one (:mod:`bafusion.io.formats`): fuse-dir said each of these once per
    stack."""
    if text in _SAID:
        return
    _SAID.add(text)
    import warnings

    warnings.warn(text, UserWarning, stacklevel=2)  # (the line that asks, in this module)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p)).astype(np.float32)


def _downscale(gray: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    from bafusion.io import resize

    return np.clip(resize(gray.astype(np.float32), size_hw), 0.0, 255.0)


def combine_scales(logits: Sequence[np.ndarray], rule: str = "confident", confidence: float = 2.0) -> np.ndarray:
    """Combine per-scale logit maps (the first is the full scale) into one, by ``rule``
    (see :attr:`FusionParams.scale_rule`).

    Parameters
    ----------
    logits : sequence of ndarray, (H, W)
        Logit maps (log odds of class 1) of one size, the full scale's first.
    rule : str
        ``"mean"`` (their mean), ``"confident"`` (per pixel the logit of largest magnitude) or
        ``"fill"`` (the full scale's logit where its magnitude is at least ``confidence``,
        else the mean).
    confidence : float
        The ``"fill"`` rule's logit magnitude.

    Returns
    -------
    ndarray, (H, W)
        The combined logits (float32 for float32 maps).

    Raises
    ------
    bafusion.errors.UserError
        An unknown ``rule``.
    """
    z = np.stack(logits)
    if rule == "mean":
        return z.mean(0)
    if rule == "confident":
        idx = np.abs(z).argmax(0)
        return np.take_along_axis(z, idx[None], 0)[0]
    if rule == "fill":
        return np.where(np.abs(z[0]) >= confidence, z[0], z.mean(0))
    raise UserError(f"unknown scale rule {rule!r}")


def score_multiscale(
    net: CifarResNet,
    gray_a: np.ndarray,
    gray_b: np.ndarray,
    patch: int,
    params: FusionParams,
    device: torch.device | str = "cpu",
    centre: bool = False,
) -> np.ndarray:
    """The initial net's scores at every scale of ``params.scales``, combined by
    ``params.scale_rule``; with one scale exactly :func:`score`.

    Parameters
    ----------
    net : CifarResNet
        The initial net, on ``device``.
    gray_a, gray_b : ndarray, (H, W)
        The gray sources, gray levels 0-255 (uint8 or float); reflect-padded and divided by
        255 before the net sees them.
    patch : int
        The net's patch side.
    params : FusionParams
        ``scales``, ``scale_rule``, ``scale_confidence``, ``scale_min_side`` and
        ``initial_step``, and what :func:`score` reads; with ``exact`` only the full scale.
    device : torch.device or str
        The net's device.
    centre : bool
        :func:`score`'s, at every scale (in that scale's pixels).

    Returns
    -------
    ndarray of float32, (H, W)
        Probabilities of class 1 in [0, 1]. Scales at which the pair's short side falls below
        the patch side or ``params.scale_min_side`` are skipped.
    """
    s_full = score(net, gray_a, gray_b, patch, params, params.initial_step, device=device, centre=centre)
    scales = [s for s in params.scales if s < 1.0] if not params.exact else []
    if not scales:
        return s_full
    h, w = gray_a.shape
    logits = [_logit(s_full)]
    for s in scales:
        hs, ws = max(1, round(h * s)), max(1, round(w * s))
        if min(hs, ws) < max(patch, params.scale_min_side):
            continue  # too small: a patch would see most of the scene at this scale
        sa, sb = _downscale(gray_a, (hs, ws)), _downscale(gray_b, (hs, ws))
        z = _logit(score(net, sa, sb, patch, params, params.initial_step, device=device, centre=centre))
        up = F.interpolate(torch.from_numpy(z)[None, None], size=(h, w), mode="bilinear", align_corners=False)
        logits.append(up[0, 0].numpy())
    if len(logits) == 1:
        return s_full
    z = combine_scales(logits, params.scale_rule, params.scale_confidence)
    return (1.0 / (1.0 + np.exp(-z.astype(np.float64)))).astype(np.float32)

