"""The parameters of the fusion rule (:class:`FusionParams`): every constant of the paper's
section 2 and of the speed-ups, with its default and its check.

Ground floor of :mod:`bafusion.fusion`: imports nothing else of the subpackage.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from bafusion.errors import UserError

BOUNDARY_MODES = ("adaptive", "grid", "dense", "exact")
SCALE_RULES = ("confident", "mean", "fill")
#: How three or more shots are fused (:attr:`FusionParams.stack_rule`, :mod:`bafusion.fusion.stack`).
STACK_RULES = ("chain", "joint")
#: How the band of a camera-size pair is refined (:attr:`FusionParams.working_refine`, :mod:`bafusion.fusion.working`).
WORKING_REFINES = ("guided", "boundary", "none")

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
    #: :func:`bafusion.fusion.stack.fuse_stack_joint`). Two shots: the pair rule either way.
    stack_rule: str = "chain"
    #: Camera-size pairs (:mod:`bafusion.fusion.working`): a pair whose long side exceeds
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



def validate_working_params(p: "FusionParams") -> None:
    """Check the working-resolution fields of ``p`` (:class:`bafusion.fusion.FusionParams`).

    Raises
    ------
    UserError
        One line naming the field and the value.
    """
    if isinstance(p.working_side, bool) or not isinstance(p.working_side, int) or (
        p.working_side != 0 and p.working_side < 64
    ):
        raise UserError(f"working_side must be 0 (off) or an integer >= 64 (pixels), got {p.working_side!r}")
    if isinstance(p.working_above, bool) or not isinstance(p.working_above, int) or p.working_above < 0:
        raise UserError(f"working_above must be an integer >= 0 (pixels), got {p.working_above!r}")
    if isinstance(p.working_band, bool) or not isinstance(p.working_band, int) or not 1 <= p.working_band <= 256:
        raise UserError(f"working_band must be an integer in [1, 256] (pixels), got {p.working_band!r}")
    if p.working_refine not in WORKING_REFINES:
        raise UserError(f"working_refine must be one of {', '.join(WORKING_REFINES)}, got {p.working_refine!r}")
