"""Fusion with the trained nets: the paper's section 2 (Ma, Zhang, Liu, Liao, ICME 2019).

Steps, every constant a field of :class:`FusionParams`:

1. The *initial* net gives every pixel a focus score ``s0`` = softmax probability of class 1
   (the centre pixel of the patch around it is focused in A).
2. Eq. 1: the mean of ``s0`` over a ``(2l+1) x (2l+1)`` window (``l``; reflect at the borders).
3. Eq. 2: pixels with ``low < mean < high`` (0.2 / 0.8) lie near the focus boundary; there the
   score is replaced by the *boundary* net's score, giving ``s1``.
4. ``dm = s1 > threshold`` (0.5; a tie goes to B).
5. Small regions are removed: focused islands and defocused holes with fewer than
   ``ceil(min_region * H * W)`` pixels (4-connected) are flipped.
6. Eq. 3: ``F = dm * A + (1 - dm) * B``, in colour when a source is RGB (a gray source is then
   replicated to three channels), in gray when both are gray; alpha is dropped. The output is
   uint8 and equals A exactly where ``dm = 1`` and B where ``dm = 0``.

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
  trunk sees ``dense_margin`` (16) pixels of surroundings around every box it runs on, so a
  pixel's score does not depend on how the image was cut into boxes: it is
  :func:`bafusion.model.context_logits` of its patch (tested).

  A net trained on isolated, zero-padded patches (the paper) learns to use the patch's
  zero-padded edges; the dense pass shows it the image around the patch instead, so its dense
  scores differ from its patch scores. Nets trained with context consistency
  (``train.consistency`` on ``patches.context`` crops: both views in the loss, and a term
  that makes them agree; the shipped nets) are patch classifiers whose dense scores follow
  their patch scores: with them the default decides like exact mode on 99.3-99.7 % of the
  pixels of three Lytro pairs at 256x256 (98.8-99.8 % at full size, BENCHMARKS.md).

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
  cropped to the near-boundary pixels' extent, with the margin). Several times faster, but
  not faithful: the boundary net must place the centre pixel on the right side of the focus
  edge, which it learnt from the patch's edges; even after the context-consistency
  fine-tuning the shipped boundary net's two views agree on 94.3 % of the validation
  boundary patches, and dense boundary scoring decides like exact mode on 95.8-98.8 % of the
  pixels only.
* ``"exact"``: one patch per near-boundary pixel.

``benchmarks/bench_fusion.py`` measures the agreement and speed behind the defaults; the
numbers are in BENCHMARKS.md ("Fusion"). ``l``: decision accuracy on synthetic pairs
0.971 / 0.974 / 0.979 / 0.980 for l = 2 / 4 / 8 / 12 (ResNet-8 nets; in a 4-pixel band around
the true boundary, l = 8: 0.724 with the initial net alone, 0.845 refined); 8 is the default,
since 12 gains 0.1 % for about 1.5x the near-boundary area.

Focal stacks: ``A B C ...`` are fused one into the next, ``F1 = fuse(A, B)``,
``F2 = fuse(F1, C)``, ...: the running result plays A, the next source B.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage, special

from bafusion.atomic import write_text
from bafusion.errors import InputFileError, UserError
from bafusion.model import CifarResNet, ModelFileError, fold_batchnorm, load_model

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = Path(__file__).resolve().parent

#: How to get trained nets, shown when none are found.
HOW_TO_GET_MODELS = (
    "train them with `snakemake --cores 2 train_boundary` (or `dvc repro`), which writes "
    "data/models/initial.pt and data/models/boundary.pt, or pass --model DIR"
)

# --------------------------------------------------------------------------------------
# Parameters and results
# --------------------------------------------------------------------------------------


BOUNDARY_MODES = ("adaptive", "grid", "dense", "exact")
SCALE_RULES = ("confident", "mean", "fill")
#: How three or more shots are fused (:attr:`FusionParams.stack_rule`, :mod:`bafusion.stack`).
STACK_RULES = ("chain", "joint")


@dataclass(frozen=True)
class FusionParams:
    """Every constant of the fusion rule; defaults chosen in ``benchmarks/bench_fusion.py``."""

    #: Eq. 1 window half-size: the mean score is taken over (2l+1) x (2l+1) pixels (8: see the
    #: module docstring's measurements).
    l: int = 8  # noqa: E741 - the paper's name
    #: Eq. 2: pixels with low < mean < high are near the boundary.
    low: float = 0.2
    high: float = 0.8
    #: Binarisation threshold on the refined score.
    threshold: float = 0.5
    #: Regions (4-connected) smaller than this fraction of the image are removed.
    min_region: float = 0.01
    #: Use the boundary net at all (False: the initial net's map alone, for ablations).
    refine: bool = True
    #: Reference mode: one forward pass per pixel patch.
    exact: bool = False
    #: How the initial net scores the image: "dense" (one trunk pass, global pooling replaced
    #: by a sliding average) or "grid" (exact patches on a grid of step ``initial_grid_step``,
    #: logits interpolated bilinearly: exact mode's scores at the grid points; slower).
    initial_mode: str = "dense"
    #: Dense mode: grid step at which the initial / boundary net is evaluated (4, 2 or 1).
    initial_step: int = 4
    #: "grid" initial mode: grid step (1, 2, 4, 8 or 16).
    initial_grid_step: int = 8
    #: How the boundary net scores the near-boundary pixels: "adaptive" (exact patches on a
    #: grid of step ``boundary_step``, refined down to ``boundary_fine_step`` in the cells the
    #: decision boundary crosses), "grid" (exact patches on a grid of step ``boundary_step``,
    #: interpolated), "dense" (trunk on tiles, like the initial net; fast, not faithful, see
    #: the module docstring) or "exact" (exact patch per pixel). ``exact=True`` implies "exact".
    boundary_mode: str = "adaptive"
    #: Grid step of the boundary net (32, 16, 8, 4, 2, 1; "dense" mode uses at most 4); 0: auto,
    #: :func:`boundary_steps` (grid: p/4; adaptive: p/2 as the coarse step).
    boundary_step: int = 0
    #: Finest grid step of "adaptive" mode (1: exact scores in the cells the boundary crosses;
    #: at most ``boundary_step``); 0: half the coarse step (p/4 by default).
    boundary_fine_step: int = 0
    #: Dense mode: pixels of surroundings (multiple of 4) the trunk sees around each box, so
    #: that a box edge never puts zeros beside a patch; 0: the patches' extent alone.
    dense_margin: int = 16
    #: Dense mode: tile side (pixels, multiple of 4) for the boundary net and for large images.
    tile: int = 128
    #: Dense mode: the initial net runs on tiles of at most this side (bounds memory).
    max_tile: int = 1024
    #: Exact patches per forward pass; 0: auto (:func:`auto_batch`: 65536 / p^2 on CPU, where
    #: small batches stay in cache and run 2-3x faster than 512; 512 on GPUs).
    batch_size: int = 0
    #: "fp32", or "bf16": the nets run under bfloat16 autocast (2.5-4x faster on CPUs with
    #: AMX/AVX512-BF16 and on recent GPUs; scores differ slightly, see the benchmark).
    precision: str = "fp32"
    #: Multi-scale scoring of the initial net: the scales (factors <= 1 of the source size) at
    #: which it judges the pair; (1.0,) = the paper (one scale). At a scale s < 1 the gray
    #: pair is downscaled (antialiased), scored, and the logits brought back to full size
    #: (bilinear), so a patch sees 1/s times the area: strong blur, which a patch at the source
    #: scale cannot tell from a flat surface, is judged where the cue is visible. Scales at
    #: which the image would be smaller than ``scale_min_side`` are skipped. The boundary net
    #: always works at full resolution, and ``exact`` mode (the reference) uses one scale.
    #: Default (1.0,): with the shipped initial net, (1, 0.5, 0.25) under the "confident"
    #: rule raised the Lytro and held-out validation means but cut thin sharp structures
    #: (the fence of lytro-05) where the coarse scale is confidently wrong (BENCHMARKS.md);
    #: worth trying on large, strongly blurred photos.
    scales: tuple[float, ...] = (1.0,)
    #: How the scales' logits (z = log(p / (1 - p))) combine per pixel: "confident" (the
    #: scale whose |z| is largest decides), "mean" (mean of z), or "fill" (the full-scale z
    #: where it is confident, |z| >= ``scale_confidence``; elsewhere the mean over scales).
    scale_rule: str = "confident"
    #: |z| at and above which the full-scale score stands alone in the "fill" rule.
    scale_confidence: float = 2.0
    #: A coarser scale is used only while the downscaled pair's shorter side keeps at least
    #: this many pixels (256 = 8 patches of 32): on small images a patch at a coarse scale
    #: would see most of the scene, and the real pairs measured worse for it (BENCHMARKS.md).
    scale_min_side: int = 256
    #: Three or more shots: "chain" (one into the next, :func:`fuse_stack`: the paper's way)
    #: or "joint" (every shot scored against the others, one decision:
    #: :func:`bafusion.stack.fuse_stack_joint`). Two shots: the pair rule either way.
    stack_rule: str = "chain"
    #: Camera-size pairs (:mod:`bafusion.working`): a pair whose long side exceeds
    #: ``working_above`` pixels is decided at a working resolution whose long side is
    #: ``working_side`` (downscaled, antialiased, where a patch sees the focus cue), the
    #: decision brought to full size and only a band of ``working_band`` full-resolution
    #: pixels around its boundary refined, guided by the full-resolution images
    #: (``working_refine``). 0: off (the paper: every pair at its own size). 640: measured
    #: in ``benchmarks/bench_camera.py`` (BENCHMARKS.md, "Camera resolution").
    working_side: int = 640
    #: Long side (pixels) above which the working resolution is used (and above
    #: ``working_side``); 1024: pairs up to 1024 px (Lytro, the real development pairs,
    #: the pipeline's test set) are fused at their own size, as before.
    working_above: int = 1024
    #: Half-width (full-resolution pixels) of the band around the upsampled decision boundary
    #: that is refined at full resolution; fixed in full-resolution pixels, whatever the scale.
    working_band: int = 8
    #: How the band is refined: "guided" (guided filter of the upsampled score with the
    #: full-resolution gray sources as guide: the boundary snaps to the image edges),
    #: "boundary" (the boundary net rescored in the band at full resolution, then guided), or
    #: "none" (the upsampled score alone).
    working_refine: str = "guided"

    def __post_init__(self) -> None:
        from bafusion.working import validate_working_params

        validate_working_params(self)
        if isinstance(self.scales, (int, float)) or not self.scales or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1 for v in self.scales
        ) or 1.0 not in [float(v) for v in self.scales]:
            raise UserError(f"fusion scales must be a list of factors in (0, 1] that includes 1, got {self.scales!r}")
        object.__setattr__(self, "scales", tuple(sorted({float(v) for v in self.scales}, reverse=True)))
        if self.scale_rule not in SCALE_RULES:
            raise UserError(f"scale_rule must be one of {', '.join(SCALE_RULES)}, got {self.scale_rule!r}")
        if isinstance(self.scale_confidence, bool) or not isinstance(self.scale_confidence, (int, float)) \
                or not self.scale_confidence >= 0:
            raise UserError(f"scale_confidence must be >= 0, got {self.scale_confidence!r}")
        if not isinstance(self.scale_min_side, int) or self.scale_min_side < 1:
            raise UserError(f"scale_min_side must be a positive integer (pixels), got {self.scale_min_side!r}")
        if self.stack_rule not in STACK_RULES:
            raise UserError(f"stack_rule must be one of {', '.join(STACK_RULES)}, got {self.stack_rule!r}")
        if not isinstance(self.l, int) or self.l < 0:
            raise UserError(f"fusion parameter l must be an integer >= 0, got {self.l!r}")
        if not (0.0 <= self.low < self.high <= 1.0):
            raise UserError(f"fusion parameters need 0 <= low < high <= 1, got low={self.low}, high={self.high}")
        if not (0.0 < self.threshold < 1.0):
            raise UserError(f"fusion threshold must lie in (0, 1), got {self.threshold}")
        if not (0.0 <= self.min_region < 1.0):
            raise UserError(f"min_region is a fraction of the image in [0, 1), got {self.min_region}")
        if self.initial_step not in (1, 2, 4):
            raise UserError(f"initial_step must be 1, 2 or 4, got {self.initial_step!r}")
        if self.initial_mode not in ("dense", "grid"):
            raise UserError(f"initial_mode must be dense or grid, got {self.initial_mode!r}")
        if self.initial_grid_step not in (1, 2, 4, 8, 16):
            raise UserError(f"initial_grid_step must be 1, 2, 4, 8 or 16, got {self.initial_grid_step!r}")
        if self.boundary_mode not in BOUNDARY_MODES:
            raise UserError(f"boundary_mode must be one of {', '.join(BOUNDARY_MODES)}, got {self.boundary_mode!r}")
        for name in ("boundary_step", "boundary_fine_step"):
            if getattr(self, name) not in (0, 1, 2, 4, 8, 16, 32):
                raise UserError(f"{name} must be 0 (auto), 1, 2, 4, 8, 16 or 32, got {getattr(self, name)!r}")
        if not isinstance(self.dense_margin, int) or self.dense_margin < 0 or self.dense_margin % 4:
            raise UserError(f"dense_margin must be a multiple of 4 >= 0, got {self.dense_margin!r}")
        for name in ("tile", "max_tile"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 4 or v % 4:
                raise UserError(f"{name} must be a positive multiple of 4, got {v!r}")
        if self.precision not in ("fp32", "bf16"):
            raise UserError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 0:
            raise UserError(f"batch_size must be 0 (auto) or a positive integer, got {self.batch_size!r}")

    @classmethod
    def from_mapping(cls, d: dict, source: str = "parameters") -> "FusionParams":
        """Build from a dict (e.g. ``params.yaml``'s ``fuse`` section); unknown keys are ignored
        only if they are not fusion settings consumed elsewhere (device, alpha, threads)."""
        names = {f.name for f in fields(cls)}
        extra = set(d) - names - {"device", "alpha", "threads", "save_maps"}
        if extra:
            raise UserError(f"{source}: unknown fusion parameter(s) {sorted(extra)}; known: {sorted(names)}")
        return cls(**{k: v for k, v in d.items() if k in names})


def _inference_net(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if isinstance(net, CifarResNet):
        net = fold_batchnorm(net)
    return net.to(device).to(memory_format=torch.channels_last).eval()


@dataclass
class FusionNets:
    """The two trained nets with their patch sides and the files they came from."""

    initial: CifarResNet
    boundary: CifarResNet
    patch_initial: int
    patch_boundary: int
    device: torch.device
    sources: tuple[str, str] = ("", "")

    def __post_init__(self) -> None:
        # Inference copies: BatchNorm folded into the convolutions (1.3-1.4x faster on CPU,
        # same function up to float rounding) and channels-last convolutions (1.3-1.6x faster
        # on batches of small patches, measured). The caller's nets are left untouched.
        self.initial = _inference_net(self.initial, self.device)
        self.boundary = _inference_net(self.boundary, self.device)


@dataclass
class FusionResult:
    """Everything one fusion of two images produced (maps are (H, W))."""

    fused: np.ndarray  #: uint8, (H, W) or (H, W, 3)
    score_initial: np.ndarray  #: float32 in [0, 1], the initial net's score s0
    score_mean: np.ndarray  #: float32, Eq. 1 window mean of s0
    near_boundary: np.ndarray  #: bool, Eq. 2
    score_refined: np.ndarray  #: float32, s1 (s0 with near-boundary pixels rescored)
    decision_raw: np.ndarray  #: bool, s1 > threshold
    decision: np.ndarray  #: bool, after small-region removal (True: take A)
    seconds: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a source image as uint8: (H, W) for gray (L, LA, 1-bit, 16-bit gray), (H, W, 3)
    otherwise (alpha dropped, palette expanded). Errors name the file. Files of more than 8
    bits per sample are scaled by their significant bits (:func:`read_images`)."""
    return read_images([path])[0]


def read_images(paths: Sequence[str | os.PathLike[str]]) -> list[np.ndarray]:
    """Read the sources of one fusion like :func:`read_image`; sources of more than 8 bits
    per sample are scaled alike (:func:`bafusion.images.read_sources`: the significant bits
    a file marks, else one bit depth common to the pair's unmarked sources)."""
    from bafusion.images import read_sources

    return read_sources(paths, _read_8bit)


def _read_8bit(path: str | os.PathLike[str]) -> np.ndarray:
    from bafusion.images import open_image

    im = open_image(path)
    if im.mode in ("L", "LA", "1"):
        return np.asarray(im.convert("L"), dtype=np.uint8).copy()
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if a.max() > 255 else 255.0
        return np.clip(np.round(a / hi * 255.0), 0, 255).astype(np.uint8)
    if im.mode == "P" and "transparency" not in im.info:
        im = im.convert("RGB")
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def to_gray_u8(img: np.ndarray) -> np.ndarray:
    """MATLAB rgb2gray on uint8 (rounded half away from zero); gray passes through."""
    from bafusion.images import to_gray

    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    return to_gray(img)


def write_image(path: str | os.PathLike[str], img: np.ndarray) -> None:
    """Write a uint8 image atomically (see :func:`bafusion.images.write_image`)."""
    from bafusion.images import write_image as _write

    _write(path, img)


#: Rows/columns of padding beyond the last patch start: room for grid steps up to this.
MAX_GRID_STEP = 32


def auto_step(patch: int) -> int:
    """The boundary grid step for ``boundary_step = 0`` in grid mode, and the fine step of the
    adaptive mode: the largest power of two <= p/4 (8 for p = 32, 16 for the paper's p = 64,
    2 for p = 12)."""
    step = 1
    while step * 2 <= min(patch // 4, MAX_GRID_STEP // 2):
        step *= 2
    return step


def boundary_steps(params: "FusionParams", patch: int) -> tuple[int, int]:
    """(step, fine step) of the boundary net for ``params`` and patch side ``patch``: the set
    values, or for 0 (auto) p/4 in grid mode and p/2 refined to p/4 in adaptive mode (16 -> 8
    for p = 32, 32 -> 16 for p = 64; measured in BENCHMARKS.md)."""
    base = auto_step(patch)
    if params.boundary_mode == "adaptive":
        coarse = params.boundary_step or 2 * base
        fine = params.boundary_fine_step or max(1, coarse // 2)
        return coarse, min(fine, coarse)
    return params.boundary_step or base, params.boundary_fine_step


def auto_batch(patch: int, device: torch.device | str = "cpu") -> int:
    """Exact patches per forward pass for ``batch_size = 0``: 512 on GPUs; on CPUs
    65536 / p^2 (64 for p = 32, 16 for p = 64), whose activations stay in cache: ResNet-56 at
    p = 64 on 2 cores took 4.0 ms per patch in batches of 16 and 8.3 ms in batches of 512
    (bf16: 1.3 and 4.6 ms), ResNet-20 at p = 32 0.42 and 0.71 ms (BENCHMARKS.md)."""
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

    Returns float32 (H, W) probabilities of class 1 (NaN outside ``mask``)."""
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
    doubling of the step divides the work by four. Pixels outside ``mask`` are NaN."""
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
    the patch starts (rows, cols) that were evaluated, under "positions" (benchmarks)."""
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


def _dense_box(
    net: CifarResNet, x: torch.Tensor, r0: int, r1: int, c0: int, c1: int, patch: int, step: int, margin: int = 0
) -> torch.Tensor:
    """Dense logit differences for image pixels [r0, r1) x [c0, c1) from padded pair ``x``
    (padded by ``margin`` more than :func:`_pad` on every side).

    The trunk runs on the crop of ``x`` holding those pixels' patches and ``margin`` pixels
    around them (so that a box edge does not put zeros next to a patch), once per shift
    (``(4/step)**2`` shifts); each run gives the patches starting on a step-4 grid; together
    they fill a grid of the given step, which is interpolated to every pixel."""
    k = patch // 4
    mc = margin // 4  # cells of surroundings, dropped after pooling
    gh = -(-(r1 - 1 - r0) // step) + 1  # grid points 0, step, ..., covering r1 - 1
    gw = -(-(c1 - 1 - c0) // step) + 1
    need_h = step * (gh - 1) + patch + 4 + 2 * margin
    need_w = step * (gw - 1) + patch + 4 + 2 * margin
    crop = x[:, :, r0 : r0 + need_h, c0 : c0 + need_w]
    weight = net.fc.weight[:, :, None, None]
    grid = torch.empty((gh, gw), dtype=torch.float32, device=x.device)
    m = 4 // step
    for a in range(0, 4, step):
        for b in range(0, 4, step):
            sub = crop[:, :, a:, b:]
            hs = sub.shape[2] // 4 * 4
            ws = sub.shape[3] // 4 * 4
            feat = net.trunk(sub[:, :, :hs, :ws])
            z = F.conv2d(feat, weight, net.fc.bias).float()  # fc as a 1x1 convolution (before the mean: both linear)
            z = F.avg_pool2d(z, k, stride=1)  # the global pooling over each patch's p/4 x p/4 cells
            d = _logit_diff(z)[0].float()[mc:, mc:]
            nr = len(range(a // step, gh, m))
            nc = len(range(b // step, gw, m))
            grid[a // step :: m, b // step :: m] = d[:nr, :nc]
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

    ``margin`` (a multiple of 4): pixels of surroundings the trunk sees around every box
    (reflect-padded at the image border), so that no patch sees the zeros of a box edge; with
    a margin at least the trunk's receptive field, a pixel's score does not depend on the
    boxes and equals :func:`bafusion.model.context_logits` of its patch with that context.

    Without ``mask`` the whole image is scored, in tiles of at most ``max_tile``. With a mask,
    only tiles of side ``tile`` holding masked pixels are scored, consecutive ones in a tile row
    merged into one box and each box cropped to the masked pixels' extent; other pixels are NaN."""
    if patch % 4 or patch < 4:
        raise UserError(f"patch side must be a positive multiple of 4 for dense fusion, got {patch}")
    if margin < 0 or margin % 4:
        raise UserError(f"dense margin must be a multiple of 4 >= 0, got {margin}")
    dev = torch.device(device)
    h, w = gray_a.shape
    x = _pair_tensor(gray_a, gray_b, patch, dev, margin)
    out = np.full((h, w), np.nan, dtype=np.float32)
    for r0, r1, c0, c1 in _boxes(h, w, mask, tile if mask is not None else max_tile, step):
        d = _dense_box(net, x, r0, r1, c0, c1, patch, step, margin)
        p = torch.sigmoid(d).cpu().numpy()
        if mask is None:
            out[r0:r1, c0:c1] = p
        else:
            sel = mask[r0:r1, c0:c1]
            out[r0:r1, c0:c1][sel] = p[sel]
    return out


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


def score(
    net: CifarResNet,
    gray_a: np.ndarray,
    gray_b: np.ndarray,
    patch: int,
    params: FusionParams,
    step: int,
    mask: np.ndarray | None = None,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Exact or dense scores, as ``params.exact`` says."""
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
    return score_dense(
        net, gray_a, gray_b, patch, step=min(step, 4), mask=mask, tile=params.tile, max_tile=params.max_tile,
        device=device, margin=params.dense_margin,
    )


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p)).astype(np.float32)


def _downscale(gray: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    from bafusion.images import resize

    return np.clip(resize(gray.astype(np.float32), size_hw), 0.0, 255.0)


def combine_scales(logits: Sequence[np.ndarray], rule: str = "confident", confidence: float = 2.0) -> np.ndarray:
    """Combine per-scale logit maps (the first is the full scale) into one, by ``rule``
    (see :attr:`FusionParams.scale_rule`)."""
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
) -> np.ndarray:
    """The initial net's scores at every scale of ``params.scales``, combined by
    ``params.scale_rule``; with one scale exactly :func:`score`."""
    s_full = score(net, gray_a, gray_b, patch, params, params.initial_step, device=device)
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
        z = _logit(score(net, sa, sb, patch, params, params.initial_step, device=device))
        up = F.interpolate(torch.from_numpy(z)[None, None], size=(h, w), mode="bilinear", align_corners=False)
        logits.append(up[0, 0].numpy())
    if len(logits) == 1:
        return s_full
    z = combine_scales(logits, params.scale_rule, params.scale_confidence)
    return (1.0 / (1.0 + np.exp(-z.astype(np.float64)))).astype(np.float32)


# --------------------------------------------------------------------------------------
# The fusion rule
# --------------------------------------------------------------------------------------


def window_mean(s: np.ndarray, l: int) -> np.ndarray:  # noqa: E741
    """Eq. 1: mean over the (2l+1) x (2l+1) window around each pixel (reflect at borders)."""
    if l == 0:
        return s.astype(np.float32)
    return ndimage.uniform_filter(s.astype(np.float64), size=2 * l + 1, mode="reflect").astype(np.float32)


def _area_filter(dm: np.ndarray, area: int, holes: bool) -> np.ndarray:
    """skimage remove_small_objects / remove_small_holes removing regions with < ``area`` pixels,
    whichever keyword (``max_size`` since 0.26, ``min_size``/``area_threshold`` before) it takes."""
    from skimage.morphology import remove_small_holes, remove_small_objects

    fn = remove_small_holes if holes else remove_small_objects
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Only one label was provided")  # a map of one class
        if "max_size" in inspect.signature(fn).parameters:
            return fn(dm, max_size=area - 1, connectivity=1)
        kw = "area_threshold" if holes else "min_size"
        return fn(dm, **{kw: area}, connectivity=1)


def remove_small_regions(dm: np.ndarray, min_region: float) -> np.ndarray:
    """Flip focused islands and defocused holes smaller than ``min_region * H * W`` pixels."""
    area = math.ceil(min_region * dm.size)
    if area <= 1:
        return dm.copy()
    out = _area_filter(dm.astype(bool), area, holes=False)
    return _area_filter(out, area, holes=True)


def fuse_with_map(a: np.ndarray, b: np.ndarray, dm: np.ndarray) -> np.ndarray:
    """Eq. 3 with a binary map: A's pixel where ``dm``, B's elsewhere (exact, uint8)."""
    sel = dm if a.ndim == 2 else dm[..., None]
    return np.where(sel, a, b).astype(np.uint8)


def _match_channels(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop alpha; if one source is RGB and the other gray, replicate the gray one."""
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    if b.ndim == 3 and b.shape[2] == 4:
        b = b[..., :3]
    if a.ndim != b.ndim:
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        else:
            b = np.repeat(b[..., None], 3, axis=2)
    return a, b


def check_same_size(a: np.ndarray, b: np.ndarray, name_a: str = "A", name_b: str = "B") -> None:
    """Sources of different sizes are an error naming both sizes and both files."""
    if a.shape[:2] != b.shape[:2]:
        ha, wa = a.shape[:2]
        hb, wb = b.shape[:2]
        raise InputFileError(
            name_b, f"size {wb}x{hb} (WxH) differs from {wa}x{ha} of {name_a}: the sources must have the same size"
        )


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


def fuse_images(
    a: np.ndarray,
    b: np.ndarray,
    nets: FusionNets,
    params: FusionParams = FusionParams(),
    names: tuple[str, str] = ("A", "B"),
    progress: bool | None = None,
) -> FusionResult:
    """Fuse two registered sources (uint8 gray or RGB(A), same size) by the paper's rule.

    Pairs whose long side exceeds ``params.working_above`` are decided at a working
    resolution (:mod:`bafusion.working`). ``progress``: a progress bar on stderr (None: when
    it is a terminal and the pair has 4 megapixels or more; True: always; False: never)."""
    check_same_size(a, b, *names)
    a, b = _match_channels(np.asarray(a), np.asarray(b))
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise UserError(f"sources must be uint8 images, got {a.dtype} and {b.dtype}")
    ga, gb = to_gray_u8(a), to_gray_u8(b)
    from bafusion.working import decide_working, progress_bar, uses_working

    if uses_working(ga.shape, params):
        s0, mean, near, s1, t = decide_working(ga, gb, nets, params, progress=progress)
    else:
        with progress_bar(2, ga.size, progress) as bar:  # shown for large pairs fused at full size
            bar.set_postfix_str("initial net")
            s0, mean, near, s1, t = decide(ga, gb, nets, params, bar=bar)
    t0 = time.perf_counter()
    dm_raw = s1 > params.threshold
    dm = remove_small_regions(dm_raw, params.min_region)
    fused = fuse_with_map(a, b, dm)
    t["post"] = time.perf_counter() - t0
    return FusionResult(fused, s0, mean, near, s1, dm_raw, dm, t)


def fuse_stack(
    images: Sequence[np.ndarray], nets: FusionNets, params: FusionParams = FusionParams(), names: Sequence[str] = (),
    progress: bool | None = None,
) -> list[FusionResult]:
    """Fuse a focal stack one into the next: ``F1 = fuse(I1, I2)``, ``Fk = fuse(F(k-1), I(k+1))``.
    All sizes are checked before any work. Returns one result per step; the last one's
    ``fused`` is the stack's fusion."""
    if len(images) < 2:
        raise UserError("fusion needs at least two source images")
    names = list(names) or [f"image {i + 1}" for i in range(len(images))]
    for i in range(1, len(images)):
        check_same_size(images[0], images[i], names[0], names[i])
    results = []
    cur = images[0]
    for i in range(1, len(images)):
        res = fuse_images(cur, images[i], nets, params, (names[0] if i == 1 else f"fusion of {i} images", names[i]),
                          progress=progress)
        results.append(res)
        cur = res.fused
    return results


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' (CUDA when available), 'cpu' or 'cuda[:N]'."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from bafusion.preflight import check_device

    check_device(device)
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise UserError(f"--device {device}: {e}") from e


def _load_one(path: Path, device: torch.device) -> tuple[CifarResNet, int]:
    if not path.exists():
        raise UserError(f"{path}: model file not found ({HOW_TO_GET_MODELS})")
    try:
        net, meta = load_model(path, map_location="cpu")
    except ModelFileError as e:  # a file that is there but wrong: how to train one does not help
        raise UserError(str(e)) from e
    patch = meta.get("patch", meta.get("patch_size"))
    if patch is None:
        raise UserError(f"{path.with_suffix('.json')}: no 'patch' entry (the patch side the net was trained on)")
    try:
        patch = int(patch)
    except (TypeError, ValueError):
        raise UserError(f"{path.with_suffix('.json')}: 'patch' must be an integer, got {patch!r}") from None
    if patch < 4 or patch % 4:
        raise UserError(f"{path.with_suffix('.json')}: patch side {patch} is not a positive multiple of 4")
    scale = meta.get("input_scale")
    if scale is not None and abs(float(scale) - 1.0 / 255.0) > 1e-9:
        raise UserError(f"{path.with_suffix('.json')}: input_scale {scale} differs from fusion's 1/255")
    return net.to(device).eval(), patch


def load_nets(
    initial: str | os.PathLike[str], boundary: str | os.PathLike[str], device: str | torch.device = "auto"
) -> FusionNets:
    """Load the initial and boundary nets (``weights_only`` loads; errors name the file)."""
    dev = resolve_device(device) if isinstance(device, str) else device
    ni, pi = _load_one(Path(initial), dev)
    nb, pb = _load_one(Path(boundary), dev)
    return FusionNets(ni, nb, pi, pb, dev, (str(initial), str(boundary)))


def default_model_dirs() -> list[Path]:
    """Where fusion looks for nets without --model, in order: the shipped ``models/default``
    (package, then repository), then the pipeline's ``data/models`` (working directory, then
    repository)."""
    dirs = [PACKAGE_DIR / "models" / "default", REPO_ROOT / "models" / "default", Path.cwd() / "data" / "models"]
    dirs.append(REPO_ROOT / "data" / "models")
    seen: list[Path] = []
    for d in dirs:
        if d not in seen:
            seen.append(d)
    return seen


def shipped_models() -> list[str]:
    """Names of the models shipped with the package (``models/<name>``), usable as ``--model``."""
    names: set[str] = set()
    for root in (PACKAGE_DIR / "models", REPO_ROOT / "models"):
        if root.is_dir():
            names |= {d.name for d in root.iterdir() if (d / "initial.pt").is_file() and (d / "boundary.pt").is_file()}
    return sorted(names)


def find_model_dir(model: str | os.PathLike[str] | None) -> Path:
    """The folder holding initial.pt and boundary.pt: ``model`` if given, else the first of
    :func:`default_model_dirs` that holds both."""
    if model is not None:
        d = Path(model)
        if d.is_dir():
            return d
        # A shipped model by name (models/<name>: "default", "lytro-2026-11").
        if d.name == str(model):
            for root in (PACKAGE_DIR / "models", REPO_ROOT / "models"):
                if (root / d.name / "initial.pt").is_file() and (root / d.name / "boundary.pt").is_file():
                    return root / d.name
        raise UserError(f"{d}: model folder not found ({HOW_TO_GET_MODELS}; shipped models: {', '.join(shipped_models())})")
    for d in default_model_dirs():
        if (d / "initial.pt").is_file() and (d / "boundary.pt").is_file():
            return d
    looked = ", ".join(str(d) for d in default_model_dirs())
    raise UserError(f"no trained nets found (looked for initial.pt and boundary.pt in {looked}); {HOW_TO_GET_MODELS}")


def load_nets_from_dir(model: str | os.PathLike[str] | None, device: str = "auto") -> FusionNets:
    d = find_model_dir(model)
    return load_nets(d / "initial.pt", d / "boundary.pt", device)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def _add_param_args(p: argparse.ArgumentParser) -> None:
    d = FusionParams()
    g = p.add_argument_group("fusion parameters (defaults: --params-file section 'fuse', else built in)")
    g.add_argument("--l", type=int, default=None, help=f"Eq. 1 window half-size (default {d.l})")
    g.add_argument("--low", type=float, default=None, help=f"Eq. 2 lower bound (default {d.low})")
    g.add_argument("--high", type=float, default=None, help=f"Eq. 2 upper bound (default {d.high})")
    g.add_argument("--threshold", type=float, default=None, help=f"binarisation threshold (default {d.threshold})")
    g.add_argument(
        "--min-region", type=float, default=None, help=f"small-region area, fraction of the image (default {d.min_region})"
    )
    g.add_argument("--no-refine", dest="refine", action="store_const", const=False, default=None,
                   help="skip the boundary net (ablation)")
    g.add_argument("--exact", action="store_const", const=True, default=None,
                   help="reference mode: one forward pass per pixel patch (slow)")
    g.add_argument("--initial-mode", choices=("dense", "grid"), default=None,
                   help=f"initial net: one dense trunk pass, or exact patches on a grid (default {d.initial_mode})")
    g.add_argument("--initial-step", type=int, default=None, help=f"dense grid step of the initial net (default {d.initial_step})")
    g.add_argument("--initial-grid-step", type=int, default=None,
                   help=f"grid step of the 'grid' initial mode (default {d.initial_grid_step})")
    g.add_argument("--boundary-step", type=int, default=None,
                   help=f"grid step of the boundary net; the coarse step in adaptive mode (default {d.boundary_step})")
    g.add_argument("--boundary-fine-step", type=int, default=None,
                   help=f"finest grid step of the adaptive boundary mode (default {d.boundary_fine_step})")
    g.add_argument("--boundary-mode", choices=BOUNDARY_MODES, default=None,
                   help=f"how the boundary net scores near-boundary pixels (default {d.boundary_mode})")
    g.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                   help=f"fp32, or bf16 autocast (faster on AMX CPUs and GPUs) (default {d.precision})")
    g.add_argument("--tile", type=int, default=None, help=f"boundary-net tile side (default {d.tile})")
    g.add_argument("--dense-margin", type=int, default=None,
                   help=f"pixels of surroundings the dense trunk sees around each box (default {d.dense_margin})")
    g.add_argument("--scales", default=None, metavar="S,S,...",
                   help="multi-scale initial scoring: comma-separated factors in (0, 1] including 1 "
                        f"(default {','.join(str(v) for v in d.scales)})")
    g.add_argument("--scale-rule", choices=SCALE_RULES, default=None,
                   help=f"how the scales' scores combine (default {d.scale_rule})")
    g.add_argument("--stack-rule", choices=STACK_RULES, default=None,
                   help=f"three or more shots: chain (one into the next) or joint (one decision over all "
                        f"shots) (default {d.stack_rule})")
    g.add_argument("--working-side", type=int, default=None,
                   help="camera-size pairs: long side (px) of the working resolution the decision is made at; "
                        f"0 = off (default {d.working_side})")
    g.add_argument("--working-above", type=int, default=None,
                   help="use the working resolution only for pairs whose long side exceeds this "
                        f"(default {d.working_above})")
    g.add_argument("--working-band", type=int, default=None,
                   help="half-width (full-resolution px) of the boundary band refined at full size "
                        f"(default {d.working_band})")
    g.add_argument("--working-refine", choices=("guided", "boundary", "none"), default=None,
                   help=f"how that band is refined (default {d.working_refine})")
    g.add_argument("--params-file", default=None, help="YAML file whose 'fuse' section sets the defaults (params.yaml)")
    g.add_argument("--params-json", default=None,
                   help="JSON object of fusion parameters (the 'fuse' section; overrides --params-file)")
    p.add_argument("--device", default=None, help="auto (default), cpu or cuda")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's, lowered to the cores the load average leaves "
                        "free, at least 1)")
    p.add_argument("--alpha", type=float, default=None, help="difference-map gain alpha*|B-F| (default 10)")
    p.add_argument("--no-progress", dest="progress", action="store_const", const=False, default=None,
                   help="no progress bar (default: a bar on stderr for camera-size pairs when it is a terminal)")


def params_from_args(args: argparse.Namespace) -> tuple[FusionParams, dict]:
    """FusionParams from --params-file's 'fuse' section overridden by explicit flags; also
    returns the other settings (device, alpha)."""
    base: dict = {}
    if getattr(args, "params_file", None):
        import yaml

        pf = Path(args.params_file)
        if not pf.is_file():
            raise InputFileError(pf, "parameter file not found")
        try:
            doc = yaml.safe_load(pf.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise InputFileError(pf, f"unreadable YAML: {e}") from e
        base = dict(doc.get("fuse", {}) or {})
    if getattr(args, "params_json", None):
        try:
            extra = json.loads(args.params_json)
        except ValueError as e:
            raise UserError(f"--params-json: not valid JSON: {e}") from e
        if not isinstance(extra, dict):
            raise UserError("--params-json: expected a JSON object")
        base.update(extra)
    from bafusion.schema import validate_section

    validate_section("fuse", base, " + ".join(
        x for x in (args.params_file and str(args.params_file), args.params_json and "--params-json") if x) or "parameters")
    flags = {
        "l": args.l, "low": args.low, "high": args.high, "threshold": args.threshold,
        "min_region": args.min_region, "refine": args.refine, "exact": args.exact,
        "initial_mode": args.initial_mode, "initial_step": args.initial_step,
        "initial_grid_step": args.initial_grid_step, "boundary_step": args.boundary_step, "tile": args.tile,
        "boundary_mode": args.boundary_mode, "boundary_fine_step": args.boundary_fine_step,
        "precision": args.precision, "dense_margin": args.dense_margin,
        "scale_rule": getattr(args, "scale_rule", None),
        "stack_rule": getattr(args, "stack_rule", None),
        "working_side": getattr(args, "working_side", None), "working_above": getattr(args, "working_above", None),
        "working_band": getattr(args, "working_band", None), "working_refine": getattr(args, "working_refine", None),
    }
    if getattr(args, "scales", None):
        try:
            flags["scales"] = tuple(float(v) for v in str(args.scales).split(",") if v.strip())
        except ValueError as e:
            raise UserError(f"--scales: expected comma-separated numbers such as 1,0.5, got {args.scales!r}") from e
    if isinstance(base.get("scales"), list):
        base["scales"] = tuple(base["scales"])
    merged = {**base, **{k: v for k, v in flags.items() if v is not None}}
    other = {
        "device": args.device or base.get("device", "auto"),
        "alpha": args.alpha if args.alpha is not None else float(base.get("alpha", 10.0)),
    }
    params = FusionParams.from_mapping(merged, source=str(args.params_file or "command line"))
    threads = args.threads or base.get("threads")
    if not threads:
        from bafusion.threads import auto_threads

        # No more threads than the free cores: two threads collapse when a core is busy.
        threads = min(torch.get_num_threads(), auto_threads())
    torch.set_num_threads(int(threads))
    return params, other


def _cmd_fuse(args: argparse.Namespace) -> int:
    from bafusion.figures import save_maps

    params, other = params_from_args(args)
    out = Path(args.output)
    if out.suffix.lower() not in (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg"):
        raise UserError(f"{out}: output must be .png, .tif, .bmp or .jpg")
    if out.exists() and out.is_dir():
        raise UserError(f"{out}: is a folder, not an output file")
    paths = [Path(p) for p in args.images]
    if len(paths) < 2:
        raise UserError("give at least two source images")
    joint = params.stack_rule == "joint" and len(paths) > 2
    if args.save_maps:
        # The maps' names are known before the work: none may be a source.
        from bafusion.figures import MAP_KEYS
        from bafusion.preflight import check_not_input

        from bafusion.stack import STACK_MAP_KEYS

        if joint:
            maps = [f"{out.stem}-{key}.png" for key in STACK_MAP_KEYS]
        else:
            stems = [out.stem] if len(paths) == 2 else [f"{out.stem}-step{i + 1:02d}" for i in range(len(paths) - 1)]
            maps = [f"{stem}-{key}.png" for stem in stems for key in MAP_KEYS]
        for name in maps:
            check_not_input(Path(args.save_maps) / name, paths, "map file")
    resolve_device(other["device"])
    from bafusion.batch import fused_output, prepare_sources

    src = prepare_sources(paths, align=args.align, force=args.force)  # sizes, --align or the one-scene check
    images, names = src.images, [str(p) for p in paths]
    if args.initial or args.boundary:
        if not (args.initial and args.boundary):
            raise UserError("--initial and --boundary go together")
        nets = load_nets(args.initial, args.boundary, other["device"])
    else:
        nets = load_nets_from_dir(args.model, other["device"])
    if joint:
        from bafusion.stack import fuse_stack_joint, save_stack_maps

        stack = fuse_stack_joint(images, nets, params, names)
        if args.save_maps:
            save_stack_maps(Path(args.save_maps), out.stem, stack)
        fused = fused_output(src, stack, out)
    else:
        results = fuse_stack(images, nets, params, names, progress=args.progress)
        if args.save_maps:
            cur = images[0]
            for i, res in enumerate(results):
                stem = out.stem if len(results) == 1 else f"{out.stem}-step{i + 1:02d}"
                save_maps(Path(args.save_maps), stem, res, cur, images[i + 1], alpha=other["alpha"])
                cur = res.fused
        fused = fused_output(src, results, out)
    for note in fused.notes:
        print(f"bafusion fuse: {note}", file=sys.stderr)
    from bafusion.images import write_image as _write

    _write(out, fused.image, exif=fused.exif, icc=fused.icc, bits=fused.bits)
    print(f"fused {len(paths)} images into {out} ({fused.seconds:.2f} s on {nets.device})")
    return 0


def _align_for_fuse(images: list[np.ndarray], names: list[str], model: str, force: bool) -> list[np.ndarray]:
    """Register the shots to the first (:mod:`bafusion.align`), print one line per shot to
    stderr, refuse shots that are not one scene unless ``force``; returns the cropped shots."""
    from bafusion.align import MIN_QUALITY, align_images

    al = align_images(images, model)
    bad = [(n, q) for n, q in zip(names[1:], al.quality[1:]) if q < MIN_QUALITY]
    if bad and not force:
        n, q = bad[0]
        raise UserError(f"{n}: does not look like the same scene as {names[0]} (match quality {q:.2f} after "
                        f"{model} alignment, below {MIN_QUALITY}); use --force to fuse anyway")
    for line in al.describe(names):
        print(line, file=sys.stderr)
    return al.images


def read_pair_index(folder: Path, allow_empty: bool = False) -> list[str]:
    """Pair names from ``<folder>/index.json``: a list of names, or {"pairs": [names or
    {"name": ...}]}."""
    idx = folder / "index.json"
    if not idx.is_file():
        raise InputFileError(idx, "pair index not found (run the testset rule first)")
    try:
        doc = json.loads(idx.read_text())
    except (OSError, ValueError) as e:
        raise InputFileError(idx, f"unreadable JSON: {e}") from e
    items = doc.get("pairs", doc.get("names")) if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise InputFileError(idx, "expected a list of pair names or {'pairs': [...]}")
    names = [it["name"] if isinstance(it, dict) else str(it) for it in items]
    if not names and not allow_empty:
        raise InputFileError(idx, "lists no pairs")
    return names


def decision_accuracy(dm: np.ndarray, truth: np.ndarray, band: int = 0) -> float:
    """Share of pixels where ``dm`` equals ``truth`` (bool); with ``band`` > 0 only pixels
    within ``band`` pixels (city-block distance) of the true boundary count."""
    if band > 0:
        grow = ndimage.binary_dilation(truth, iterations=band) & ~ndimage.binary_erosion(
            truth, iterations=band, border_value=1
        )
        if not grow.any():
            return float("nan")
        return float((dm[grow] == truth[grow]).mean())
    return float((dm == truth).mean())


def _cmd_fuse_set(args: argparse.Namespace) -> int:
    """``bafusion fuse-set``, logged as the MLflow run ``fuse``."""
    from bafusion import tracking
    from bafusion.dvc_metrics import fuse_metrics

    params, other = params_from_args(args)
    with tracking.stage_run("fuse", {"fuse": asdict(params)}) as run:
        report = _fuse_set(args, params, other)
        run.log_metrics({k: float(v) for k, v in fuse_metrics(report).items()})
    return 0


def _fuse_set(args: argparse.Namespace, params: FusionParams, other: dict) -> dict:
    from bafusion.figures import save_maps

    pairs = Path(args.pairs)
    out = Path(args.out)
    # An empty test set (no held-out images, as in the paper preset) fuses nothing.
    names = read_pair_index(pairs, allow_empty=True)
    if not names:
        print(f"bafusion fuse-set: {pairs / 'index.json'} lists no pairs: nothing to fuse", file=sys.stderr)
    if args.initial or args.boundary:
        if not (args.initial and args.boundary):
            raise UserError("--initial and --boundary go together")
        nets = load_nets(args.initial, args.boundary, other["device"])
    else:
        nets = load_nets_from_dir(args.models, other["device"])
    # fuse-set fuses pairs, where the stack rule plays no part: kept out of the report.
    report: dict = {"params": {k: v for k, v in asdict(params).items() if k != "stack_rule"}, "device": str(nets.device), "models": list(nets.sources), "pairs": {}}
    for name in names:
        pa, pb, pt = pairs / f"{name}-A.png", pairs / f"{name}-B.png", pairs / f"{name}-dm.png"
        a, b = read_images([pa, pb])
        res = fuse_images(a, b, nets, params, (str(pa), str(pb)), progress=args.progress)
        # Timings go to the log, not the report: DVC tracks the report, and it must be the
        # same for the same inputs.
        print(f"bafusion fuse-set: {name}: {sum(res.seconds.values()):.3f} s", file=sys.stderr)
        entry: dict = {"near_boundary_fraction": float(res.near_boundary.mean())}
        if pt.is_file():
            truth_img = read_image(pt)
            truth_img = to_gray_u8(truth_img)
            check_same_size(a, truth_img, str(pa), str(pt))
            truth = truth_img > 127
            entry.update(
                dm_accuracy=decision_accuracy(res.decision, truth),
                dm_accuracy_raw=decision_accuracy(res.decision_raw, truth),
                dm_accuracy_initial=decision_accuracy(res.score_initial > params.threshold, truth),
                band8_accuracy=decision_accuracy(res.decision_raw, truth, band=8),
                band8_accuracy_initial=decision_accuracy(res.score_initial > params.threshold, truth, band=8),
            )
        save_maps(out / "maps", name, res, a, b, alpha=other["alpha"])
        write_image(out / f"{name}.png", res.fused)
        report["pairs"][name] = entry
        print(f"{name}: " + ", ".join(f"{k}={v:.4f}" for k, v in entry.items()))
    accs = [e["dm_accuracy"] for e in report["pairs"].values() if "dm_accuracy" in e]
    if accs:
        report["mean_dm_accuracy"] = float(np.mean(accs))
    text = json.dumps(report, indent=2, sort_keys=True) + "\n"
    write_text(out / "accuracy.json", text)
    if args.report:  # the DVC metrics file: numbers only (settings are DVC params)
        from bafusion.dvc_metrics import fuse_metrics

        write_text(args.report, json.dumps(fuse_metrics(report), indent=2, sort_keys=True) + "\n")
    return report


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fuse`` and ``fuse-set`` to the ``bafusion`` command."""
    p = subparsers.add_parser(
        "fuse",
        help="fuse two (or more) multi-focus images with the trained nets",
        description="Fuse registered multi-focus sources (handheld shots: --align similarity). More than two (a focal stack) are fused by "
        "--stack-rule: chain (one into the next: F1 = fuse(I1, I2), F2 = fuse(F1, I3), ...) or joint (every shot "
        "scored against the others, one decision). Without --model the nets come from "
        "models/default/ if shipped, else data/models/ (pipeline-trained).",
    )
    p.add_argument("images", nargs="+", help="source images (same size), A B [C ...]")
    p.add_argument("-o", "--output", required=True, help="fused image (.png, .tif, .bmp, .jpg)")
    p.add_argument("--model", default=None,
                   help="folder with initial.pt and boundary.pt (+ .json), or a shipped model by name (default, lytro-2026-11)")
    p.add_argument("--initial", default=None, help="initial-net file (instead of --model)")
    p.add_argument("--boundary", default=None, help="boundary-net file (instead of --model)")
    p.add_argument("--save-maps", default=None, metavar="DIR", help="write score/decision/difference maps and figures here")
    p.add_argument("--align", choices=("none", "translation", "similarity", "homography"), default="none",
                   help="register every shot to the first before fusing (handheld brackets: similarity); the "
                   "result is cropped to the largest rectangle every shot covers, the transforms and the crop "
                   "are printed to stderr (default none: the sources are taken as registered)")
    p.add_argument("--force", action="store_true",
                   help="fuse even shots that do not look like one scene (refused by default: bafusion.scene, "
                   "or with --align the alignment's match quality)")
    _add_param_args(p)
    p.set_defaults(func=_cmd_fuse)

    q = subparsers.add_parser(
        "fuse-set",
        help="fuse every pair of a test set and score the decision maps against the truth",
        description="Fuse <pairs>/<name>-A.png and -B.png for each name in <pairs>/index.json into "
        "<out>/<name>.png, figures into <out>/maps/, and decision-map accuracy vs <name>-dm.png "
        "(255 = A focused) into <out>/accuracy.json.",
    )
    q.add_argument("--pairs", required=True, help="folder with index.json and the pairs")
    q.add_argument("--models", default=None, help="folder with initial.pt and boundary.pt")
    q.add_argument("--initial", default=None, help="initial-net file (instead of --models)")
    q.add_argument("--boundary", default=None, help="boundary-net file (instead of --models)")
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument("--report", default=None, help="also write the accuracy JSON here (e.g. a DVC metrics file)")
    _add_param_args(q)
    q.set_defaults(func=_cmd_fuse_set)


__all__ = [
    "FusionNets",
    "FusionParams",
    "FusionResult",
    "check_same_size",
    "decision_accuracy",
    "fuse_images",
    "fuse_stack",
    "fuse_with_map",
    "load_nets",
    "load_nets_from_dir",
    "read_image",
    "read_images",
    "remove_small_regions",
    "score_dense",
    "score_exact",
    "window_mean",
]
