"""The parameters of the fusion rule (:class:`FusionParams`): every constant of the paper's
section 2 and of the speed-ups. Their defaults, types and ranges are the ``fuse`` section of
the parameter schema (``bafusion/schemas/params.schema.yaml``, :mod:`bafusion.schema`); the
one check across fields (``low < high``) is :meth:`FusionParams.__post_init__`'s.

Ground floor of :mod:`bafusion.fusion`: imports nothing else of the subpackage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from bafusion.errors import UserError
from bafusion.schema import allowed, default, validate_section


def _default(name: str) -> Any:
    """The schema's default of ``fuse.<name>`` (the one place defaults are written)."""
    return default(f"fuse.{name}")


BOUNDARY_MODES: tuple[str, ...] = allowed("fuse.boundary_mode")
SCALE_RULES: tuple[str, ...] = allowed("fuse.scale_rule")
#: How three or more shots are fused (:attr:`FusionParams.stack_rule`, :mod:`bafusion.fusion.stack`).
STACK_RULES: tuple[str, ...] = allowed("fuse.stack_rule")
#: How the band of a camera-size pair is refined (:attr:`FusionParams.working_refine`, :mod:`bafusion.fusion.working`).
WORKING_REFINES: tuple[str, ...] = allowed("fuse.working_refine")
#: Where a patch's score is placed (:attr:`FusionParams.score_position`).
SCORE_POSITIONS: tuple[str, ...] = allowed("fuse.score_position")

# Constants of other modules that the command line's parser shows (kept here, the ground floor,
# so that building it imports neither scipy nor torch; re-exported where they are documented):
#: What ``--align`` / ``align=`` take: no alignment, ``auto``, or a model of
#: :data:`bafusion.fusion.align.MODELS` (:mod:`bafusion.fusion.align`).
ALIGN_MODELS: tuple[str, ...] = ("none", "auto", "translation", "similarity", "homography")
#: A shot that moves more than this against the first (RMS corner displacement, pixels of the
#: shots, :func:`bafusion.fusion.scene.coarse_motion`) gets a hint to fuse with ``--align``
#: (BENCHMARKS.md, "Do the shots move?"); :data:`bafusion.fusion.scene.HINT_MOTION_PX`.
HINT_MOTION_PX = 2.0
#: Pixels from which a fusion shows a progress bar (when stderr is a terminal): a camera's
#: "4 megapixels" and up, a few seconds on a 2-core CPU. The sizes sold as 4 MP fall on both
#: sides of 4,000,000 (2272x1704 = 3.87 MP, 2304x1728 = 3.98, 2448x1632 = 3.995; 2560x1440,
#: 3.69, for 16:9): at 4,000,000 most of them got no bar, so 3.5 MP (1920x1080, 2.1, none);
#: :data:`bafusion.fusion.working.PROGRESS_MIN_PIXELS`.
PROGRESS_MIN_PIXELS = 3_500_000


@dataclass(frozen=True)
class FusionParams:
    """Every constant of the fusion rule; defaults chosen in ``benchmarks/bench_fusion.py``.

    Give the fields by keyword (``FusionParams(l=4, tta="swap")``) or build one from a ``fuse``
    section (:meth:`from_mapping`); types and ranges are checked on creation (:class:`UserError`).
    The instance is frozen: ``dataclasses.replace(p, l=4)`` gives a changed copy.
    """

    #: Eq. 1 window half-size: the mean score is taken over (2l+1) x (2l+1) pixels (8: see the
    #: module docstring's measurements).
    l: int = _default("l")  # noqa: E741 - the paper's name
    #: Eq. 2: pixels with low < mean < high are near the boundary (lower bound).
    low: float = _default("low")
    #: Eq. 2: the upper bound of ``low < mean < high`` (above ``low``).
    high: float = _default("high")
    #: Binarisation threshold on the refined score.
    threshold: float = _default("threshold")
    #: Regions (4-connected) smaller than this fraction of the image are removed.
    min_region: float = _default("min_region")
    #: Confidence-aware small-region removal (:func:`bafusion.fusion.rule.remove_unsure_regions`):
    #: regions (4-connected islands and holes) from ``min_region`` up to this fraction of the
    #: image are removed too, but only where the initial net was unsure of them, its mean
    #: ``|2 * s0 - 1|`` below ``unsure_confidence``: wrong islands on flat surfaces go, cells
    #: cut small by a sharp thin structure (a fence) stay. 0 (or not above ``min_region``):
    #: off (the paper, and the default). Pairs and the chain stack rule; the joint stack rule
    #: does not use it. The value 0.03: BENCHMARKS.md, "Confidence-aware small-region removal".
    unsure_region: float = _default("unsure_region")
    #: Confidence-aware small-region removal: a region below ``unsure_region`` whose mean
    #: initial-net confidence ``|2 * s0 - 1|`` is below this is removed.
    unsure_confidence: float = _default("unsure_confidence")
    #: Small-region removal judged alike for both shots (:func:`bafusion.fusion.remove_small_regions`,
    #: ``symmetric=True``): islands and holes are found on the same map and each group of
    #: touching small regions takes the class of the regions around it (a group between regions
    #: of both classes stays as it was), so fusing (B, A) gives the complementary decision of
    #: (A, B). False: the islands first, then the holes of what is left (the paper's
    #: post-processing as the project has always done it, and the default). Pairs and the
    #: chain stack rule; the joint stack rule judges every shot's regions on one map whatever
    #: this says (:func:`bafusion.fusion.stack.remove_small_labels`; BENCHMARKS.md, "Symmetric
    #: small-region removal").
    symmetric_regions: bool = _default("symmetric_regions")
    #: Use the boundary net at all (False: the initial net's map alone, for ablations).
    refine: bool = _default("refine")
    #: Reference mode: one forward pass per pixel patch.
    exact: bool = _default("exact")
    #: How the initial net scores the image: "dense" (one trunk pass, global pooling replaced
    #: by a sliding average) or "grid" (exact patches on a grid of step ``initial_grid_step``,
    #: logits interpolated bilinearly: exact mode's scores at the grid points; slower).
    initial_mode: str = _default("initial_mode")
    #: Dense mode: grid step at which the initial / boundary net is evaluated (4, 2 or 1).
    initial_step: int = _default("initial_step")
    #: "grid" initial mode: grid step (1, 2, 4, 8 or 16).
    initial_grid_step: int = _default("initial_grid_step")
    #: How the boundary net scores the near-boundary pixels: "adaptive" (exact patches on a
    #: grid of step ``boundary_step``, refined down to ``boundary_fine_step`` in the cells the
    #: decision boundary crosses), "grid" (exact patches on a grid of step ``boundary_step``,
    #: interpolated), "dense" (trunk on tiles, like the initial net; fast, not faithful, see
    #: the module docstring) or "exact" (exact patch per pixel). ``exact=True`` implies "exact".
    boundary_mode: str = _default("boundary_mode")
    #: Grid step of the boundary net (32, 16, 8, 4, 2, 1; "dense" mode uses at most 4); 0: auto,
    #: :func:`boundary_steps` (grid: p/4; adaptive: p/2 as the coarse step).
    boundary_step: int = _default("boundary_step")
    #: Finest grid step of "adaptive" mode (1: exact scores in the cells the boundary crosses;
    #: at most ``boundary_step``); 0: half the coarse step (p/4 by default).
    boundary_fine_step: int = _default("boundary_fine_step")
    #: Dense mode: pixels of reflect padding (multiple of 4) around the image's patches. A box
    #: edge inside the image is no longer padded by it: there the trunk sees the image as far as
    #: it reads (:func:`bafusion.fusion.scoring.trunk_reach`), so the boxes do not change a score.
    dense_margin: int = _default("dense_margin")
    #: Tile side (pixels, multiple of 4) of the boundary net's "dense" mode (the tiles holding
    #: near-boundary pixels); the initial net's boxes are ``max_tile``'s.
    tile: int = _default("tile")
    #: Dense mode: the initial net runs on tiles of at most this side (bounds memory); the
    #: boundary net's boxes that share context are merged up to this side.
    max_tile: int = _default("max_tile")
    #: Exact patches per forward pass; 0: auto (:func:`auto_batch`: 65536 / p^2 on CPU, where
    #: small batches stay in cache and run 1.7-3.5x faster per patch than 512 on the project's
    #: 2-core CPU; 512 on GPUs).
    batch_size: int = _default("batch_size")
    #: "fp32", or "bf16": the nets run under bfloat16 autocast, for CPUs with AMX/AVX512-BF16
    #: and recent GPUs (on the project's 2-core CPU a fusion ran 1.8-2.4x faster with its
    #: ResNet-20 nets and 2.1-2.8x with ResNet-56 at patch 64; GPUs not measured; scores
    #: differ slightly, see the benchmark).
    precision: str = _default("precision")
    #: Multi-scale scoring of the initial net: the scales (factors <= 1 of the source size) at
    #: which it judges the pair; (1.0,) = the paper (one scale). At a scale s < 1 the gray
    #: pair is downscaled (antialiased), scored, and the logits brought back to full size
    #: (bilinear), so a patch sees 1/s times the area: strong blur, which a patch at the source
    #: scale cannot tell from a flat surface, is judged where the cue is visible. Scales at
    #: which the image would be smaller than ``scale_min_side`` are skipped. The boundary net
    #: always works at full resolution, and ``exact`` mode (the reference) uses one scale.
    #: Default (1.0,): with the shipped initial net, (1, 0.5, 0.25) under the "confident"
    #: rule raised the held-out validation accuracy (0.924 against 0.922) and QY and QCB on
    #: Lytro and the classic pairs, not every mean (Lytro QG and classic QMI fell), and cut
    #: thin sharp structures (the fence of lytro-05) where the coarse scale is confidently
    #: wrong (BENCHMARKS.md);
    #: worth trying on large, strongly blurred photos.
    scales: tuple[float, ...] = tuple(_default("scales"))
    #: How the scales' logits (z = log(p / (1 - p))) combine per pixel: "confident" (the
    #: scale whose |z| is largest decides), "mean" (mean of z), or "fill" (the full-scale z
    #: where it is confident, |z| >= ``scale_confidence``; elsewhere the mean over scales).
    scale_rule: str = _default("scale_rule")
    #: |z| at and above which the full-scale score stands alone in the "fill" rule.
    scale_confidence: float = _default("scale_confidence")
    #: A coarser scale is used only while the downscaled pair's shorter side keeps at least
    #: this many pixels (256 = 8 patches of 32): on small images a patch at a coarse scale
    #: would see most of the scene, and the real pairs measured worse for it (BENCHMARKS.md).
    scale_min_side: int = _default("scale_min_side")
    #: Three or more shots: "chain" (one into the next, :func:`fuse_stack`: the paper's way)
    #: or "joint" (every shot scored against the others, one decision:
    #: :func:`bafusion.fusion.stack.fuse_stack_joint`). Two shots: the pair rule either way.
    stack_rule: str = _default("stack_rule")
    #: Camera-size pairs (:mod:`bafusion.fusion.working`): a pair whose long side exceeds
    #: ``working_above`` pixels is decided at a working resolution whose long side is
    #: ``working_side`` (downscaled, antialiased, where a patch sees the focus cue; a pair
    #: wider than 16:9 keeps the short side of a 16:9 frame, ``working_side * 9 / 16``, or
    #: its own if smaller: :func:`bafusion.fusion.working.working_resolution`), the
    #: decision brought to full size and only a band of ``working_band`` full-resolution
    #: pixels around its boundary refined, guided by the full-resolution images
    #: (``working_refine``). 0: off (the paper: every pair at its own size). 640: measured
    #: in ``benchmarks/bench_camera.py`` (BENCHMARKS.md, "Camera resolution").
    working_side: int = _default("working_side")
    #: Long side (pixels) above which the working resolution is used (and above
    #: ``working_side``); 1024: pairs up to 1024 px (Lytro, the real development pairs,
    #: the pipeline's test set) are fused at their own size, as before.
    working_above: int = _default("working_above")
    #: Half-width (full-resolution pixels) of the band around the upsampled decision boundary
    #: that is refined at full resolution; fixed in full-resolution pixels, whatever the scale.
    working_band: int = _default("working_band")
    #: How the band is refined: "guided" (guided filter of the upsampled score with the
    #: full-resolution gray sources as guide: the boundary snaps to the image edges),
    #: "boundary" (the boundary net rescored in the band at full resolution, then guided), or
    #: "none" (the upsampled score alone).
    working_refine: str = _default("working_refine")
    #: Small pairs (:func:`bafusion.fusion.working.decide_upscaled`): a pair whose long side
    #: is below ``working_min`` pixels is decided upscaled so that its long side is
    #: ``working_min`` (a web-size copy of a photo has its blur and details shrunk below what
    #: a patch can judge), the scores brought back to its size. 0: off (the paper). The
    #: value: BENCHMARKS.md, "Small photographs".
    working_min: int = _default("working_min")
    #: Exposure matching before scoring (:mod:`bafusion.fusion.exposure`): "linear" maps the
    #: gray B onto A's exposure by a gain and an offset fitted on low-passed copies, so that a
    #: brighter shot does not read as the sharper one; the fused pixels stay the sources'
    #: own. "linear_clip": the same, and a darker A clipped where a brighter B's white
    #: lands, so that B's clipped highlights do not read as out of focus
    #: (:func:`bafusion.fusion.exposure.match_pair`). "brighter": both at the brighter shot's
    #: exposure (the darker one mapped up, so it clips where the brighter one does), the gain
    #: fitted where neither shot clips. "auto": "brighter" where one shot clips clearly more
    #: than the other, "linear" elsewhere. "none": the paper (the nets see the
    #: pair as it is).
    exposure_match: str = _default("exposure_match")
    #: The fused pixels: B's brought to A's exposure and colour by per-channel gains
    #: (:func:`bafusion.fusion.exposure.colour_gains`) before ``F = DM*A + (1-DM)*B``, so that
    #: shots of different exposure or white balance leave no seam where the output switches.
    #: False: the sources' own pixels (the paper, and the default; ``bafusion fuse`` notes a
    #: visible difference).
    match_output_exposure: bool = _default("match_output_exposure")
    #: Exposure matching's fit on N x N block means (1: full resolution, the default): N**2
    #: times less low-pass filtering (a 24 MP pair's 10-30 s on a CPU); the gain moves in
    #: the 4th digit, so the matched B of a pair that differs in exposure may move by a gray
    #: level at some levels (:func:`bafusion.fusion.exposure.fit_exposure`).
    exposure_fit_step: int = _default("exposure_fit_step")
    #: Noise matching before scoring (:func:`bafusion.fusion.exposure.match_noise`): where one
    #: shot carries clearly more sensor noise than the other (estimated on the gray pair), seeded
    #: noise brings the cleaner shot's gray to the same level, so that noise does not read as
    #: focus. The fused pixels stay the sources' own; shots of equal noise are left as they are.
    #: Pairs and the chain stack rule; the joint stack rule does not use it. False: off (the
    #: paper, and the default; BENCHMARKS.md, "Noise matching").
    noise_match: bool = _default("noise_match")
    #: Flat-region filling (:func:`bafusion.fusion.decide.fill_flat`): gray levels of
    #: difference between A and B (smoothed |A - B|, after exposure matching) at which a pixel
    #: keeps half its own score; flatter pixels take the score of their neighbourhood, so
    #: that the nets' uninformed votes on blank surfaces do not move the decision. 0: off
    #: (the paper, and the default: on the held-out realistic validation set 6 raised PSNR
    #: but lowered the accuracy on the pixels where the sources differ; BENCHMARKS.md,
    #: "Flat-region filling"). 6 helps pages of text (savic-12).
    flat_level: float = _default("flat_level")
    #: Flat-region filling: Gaussian sigma (px, at the resolution the pair is decided at) of
    #: the neighbourhood a flat pixel takes its score from.
    flat_sigma: float = _default("flat_sigma")
    #: Near-boundary pixels (Eq. 2): the refined score is ``sigmoid(w * logit(s_boundary) +
    #: (1 - w) * logit(s0))`` (:func:`bafusion.fusion.decide.blend_scores`): the boundary net's
    #: vote weighed with the initial net's. 1: the boundary net's score replaces s0 (the
    #: paper). The value: BENCHMARKS.md, "Weighing the boundary net's vote".
    boundary_weight: float = _default("boundary_weight")
    #: Test-time augmentation (:func:`bafusion.fusion.scoring.score`): the nets score several
    #: views of the pair and the class-1 probabilities, mapped back to the pair, are averaged.
    #: "swap": A and B exchanged (the score of the swapped pair is ``1 - s``: the nets were
    #: trained with this swap and the flipped label); "dihedral": the 4 rotations, each also
    #: mirrored (8 views, the paper's training augmentations); "all": both (16 views).
    #: "none": the pair as it is (the paper). Costs one scoring per view.
    tta: str = _default("tta")
    #: Where each net's patch score is placed (:func:`bafusion.fusion.scoring.score`): "pixel",
    #: the pixel ``(p//2, p//2)`` the patch stands for (the paper; nets trained with today's
    #: labels, which label that pixel in every turned and flipped sample); "centre", the
    #: patch's geometric centre, half a pixel up and left of it (each score map averaged over
    #: 2 x 2 pixels, the pixel and its right, lower and lower-right neighbours, in each net's
    #: own view), for nets trained with bafusion 0.2.0's labels, which gave 5 of the 6 turns
    #: and flips the label of a pixel next to the one brought to ``(p//2, p//2)`` (on average
    #: the geometric centre's); "auto": "centre" for each net whose model description records
    #: a patch set written before 0.3.0 (:func:`bafusion.fusion.models.label_position`), else
    #: "pixel". BENCHMARKS.md, "Where a patch's score is placed".
    score_position: str = _default("score_position")

    def __post_init__(self) -> None:
        # Types and ranges: the schema's (bafusion/schemas/params.schema.yaml, section fuse);
        # a whole number given as a float (dense_margin=16.0) is kept as the int the schema wants.
        values = validate_section("fuse", {f.name: getattr(self, f.name) for f in fields(self)}, "FusionParams")
        for name, value in values.items():
            if value is not getattr(self, name):
                object.__setattr__(self, name, value)
        # The checks across keys, which the schema cannot say.
        if not self.low < self.high:
            raise UserError(low_high_problem(self.low, self.high))
        fine, coarse = self.boundary_fine_step, self.boundary_step
        if self.boundary_mode == "adaptive" and not self.exact and coarse and fine > coarse:
            # (scoring.boundary_steps ran it as the coarse step: a step-`coarse` grid everywhere)
            raise UserError(f"fuse.boundary_fine_step: {fine} is above fuse.boundary_step: {coarse}: the adaptive "
                            f"boundary mode refines its step-{coarse} grid down to the fine step, which cannot be "
                            f"coarser (it ran as {coarse}, no refinement); swapped? set boundary_fine_step at most "
                            f"{coarse}, or 0 (half the coarse step)")
        object.__setattr__(self, "scales", tuple(sorted({float(v) for v in self.scales}, reverse=True)))

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any], source: str = "parameters",
                     origins: Mapping[str, str] | None = None) -> FusionParams:
        """Build from a ``fuse`` section (a mapping; absent keys take their defaults).

        Parameters
        ----------
        d
            The section, e.g. ``params.yaml``'s ``fuse``; its keys that are not fields of the
            rule (``device``, ``alpha``, ``diff_cmap``, ``threads``, ``save_maps``) are checked,
            then ignored.
        source
            Where ``d`` came from; starts an error message.
        origins
            Where each key's value came from, where known (``{"low": "p.yaml", "high":
            "--high"}``): named by the message of ``low < high``.

        Raises
        ------
        bafusion.schema.ParamsError
            An unknown key or a value outside its rule (one line naming the key).
        """
        validate_section("fuse", dict(d), source)
        low, high = d.get("low", _default("low")), d.get("high", _default("high"))
        if origins is not None and not low < high:
            raise UserError(low_high_problem(low, high, origins))
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_params(cls, params: Mapping[str, Any], source: str = "parameters") -> FusionParams:
        """Build from a whole parameter mapping (its ``fuse`` section; see :meth:`from_mapping`).

        Parameters
        ----------
        params
            The whole parameters, as ``params.yaml`` holds them: ``{"fuse": {"l": 4, ...},
            "train": ..., ...}``. Only the ``fuse`` section is read (absent: the defaults). A
            ``fuse`` section's fields alone (``{"l": 4}``) go to :meth:`from_mapping`.
        source
            Where ``params`` came from; starts an error message.

        Raises
        ------
        bafusion.errors.UserError
            Fields of the rule at the top level (``{"l": 4}``, ``{"fuse": None, "l": 4}``: an
            empty ``fuse:`` in YAML; they gave the defaults in silence), or the ``fuse``
            section's settings there (``device``, ``threads``, ``alpha``: read by the commands
            and the pipeline from that section, ignored at the top level), or what
            :meth:`from_mapping` refuses.
        """
        refuse_top_level_fields(params, source, "from_params reads a whole parameter mapping ({'fuse': {...}, "
                                "...}): put the rule's fields in its 'fuse' section, or give them alone to "
                                "FusionParams.from_mapping")
        return cls.from_mapping(params.get("fuse") or {}, source)


#: The ``fuse`` section's keys that are no field of the rule and that the commands and the
#: pipeline read from it: ``fuse.device``, ``fuse.threads``, ``fuse.alpha``, ``fuse.diff_cmap``
#: (``save_maps`` is read by nothing: the pipeline's fuse always writes its maps, ``fuse`` takes
#: --save-maps).
FUSE_SETTINGS = ("device", "threads", "alpha", "diff_cmap")


def refuse_top_level_fields(params: Mapping[str, Any], source: str, remedy: str, *, settings: bool = True) -> None:
    """Refuse fields of the rule (:class:`FusionParams`) at the top level of a whole parameter
    mapping, where nothing reads them: with no ``fuse`` section, an empty one (``fuse:`` in YAML)
    or beside one (they gave the defaults in silence). :meth:`FusionParams.from_params` and the
    command line's ``--params-file`` (:func:`bafusion.cli.fusion.params_from_args`, and
    ``bafusion evaluate``'s) refuse the same files so.

    Parameters
    ----------
    params : mapping
        The whole parameters, as a params file holds them.
    source : str
        Where ``params`` came from (the file); starts the message.
    remedy : str
        What to do, ending the message.
    settings : bool
        Also refuse the ``fuse`` section's settings there (:data:`FUSE_SETTINGS`: read by the
        commands and the pipeline from that section only); the message says that they belong
        in it. False where the caller refuses them itself
        (``bafusion evaluate``, whose own section has ``device``, ``threads`` and ``alpha``).

    Raises
    ------
    bafusion.errors.UserError
        Naming ``source``, the fields and where the ``fuse`` section is.
    """
    names = {f.name for f in fields(FusionParams)}
    others = set(FUSE_SETTINGS) if settings else set()
    stray = [k for k in params if k in names or k in others]
    if stray:  # read from nowhere: with no fuse section, an empty one (`fuse:` in YAML) or beside one
        section = params.get("fuse")
        where = ("and no 'fuse' section" if "fuse" not in params
                 else "and an empty 'fuse' section" if not section else "beside the 'fuse' section")
        kept = [str(k) for k in stray if k in others]
        one = len(kept) == 1
        said = (f"{', '.join(f'fuse.{k}' for k in kept)} {'is a setting' if one else 'are settings'} of the "
                f"commands and the pipeline, read from the 'fuse' section only: put {'it' if one else 'them'} there")
        why = remedy if not kept else said if len(kept) == len(stray) else f"{remedy} ({said})"
        raise UserError(f"{source}: {', '.join(map(str, stray))} at the top level, {where}: {why}")


def low_high_problem(low: float, high: float, origins: Mapping[str, str] | None = None) -> str:
    """The message of ``fuse.low`` not below ``fuse.high``, naming where each value came from
    when ``origins`` says it: ``"fuse.low, fuse.high: need low < high, got low=0.9 (p.yaml),
    high=0.5 (--high)"``."""
    def one(key: str, value: float) -> str:
        where = (origins or {}).get(key)
        return f"{key}={value}" + (f" ({where})" if where else "")

    return f"fuse.low, fuse.high: need low < high, got {one('low', low)}, {one('high', high)}"


def _field_comments(cls: type) -> dict[str, str]:
    """The ``#:`` comment lines right above each field of the dataclass ``cls`` in its source
    (the one place a field is described), by field name; empty when the source is not there."""
    import ast
    import inspect
    import textwrap

    try:
        lines = textwrap.dedent(inspect.getsource(cls)).splitlines()
    except (OSError, TypeError):  # no source (a frozen or source-less install)
        return {}
    node = ast.parse("\n".join(lines)).body[0]
    out: dict[str, str] = {}
    for item in getattr(node, "body", []):
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            i, text = item.lineno - 2, []
            while i >= 0 and lines[i].strip().startswith("#:"):
                text.insert(0, lines[i].strip()[2:].strip())
                i -= 1
            out[item.target.id] = "\n".join(text)
    return out


def _attributes_section(cls: type) -> str:
    """A numpydoc "Attributes" section of ``cls``'s fields: name, type, default and the text of
    its ``#:`` comment (:func:`_field_comments`), so that ``help(FusionParams)`` describes them."""
    import textwrap

    comments = _field_comments(cls)
    if not comments:
        return ""
    out = ["", "Attributes", "----------"]
    for f in fields(cls):
        out.append(f"{f.name} : {f.type}, default {f.default!r}")
        out.append(textwrap.indent(comments.get(f.name) or "(undocumented)", "    "))
    return textwrap.indent("\n".join(out), "    ") + "\n"


class _DocWithAttributes:
    """A class's docstring with :func:`_attributes_section` appended, built when first read
    (``help()``, pydoc, Sphinx), not at import: reading the source and parsing it costs ~8 ms of
    every command's start. ``type.__doc__`` calls the ``__get__`` of a descriptor stored as the
    class's ``__doc__``."""

    def __init__(self, cls: type, doc: str) -> None:
        self._cls, self._doc, self._built = cls, doc, False

    def __get__(self, obj: object, owner: type | None = None) -> str:
        if not self._built:
            self._doc, self._built = self._doc + _attributes_section(self._cls), True
        return self._doc


if FusionParams.__doc__:  # None under python -OO
    FusionParams.__doc__ = _DocWithAttributes(FusionParams, FusionParams.__doc__)  # type: ignore[assignment]
