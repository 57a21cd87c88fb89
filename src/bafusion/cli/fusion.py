"""``bafusion fuse``, ``fuse-set`` and ``fuse-dir``: argument parsing only; the work is done
by :mod:`bafusion.fusion`. The module imports no torch (seconds to import): a command's checks
of its command line and of its input files' headers (``fuse``: :func:`_cmd_fuse`) run before
torch is imported, so a refusal comes at once."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from bafusion.cli.common import ModelOption, add_threads_argument, check_distinct_sources, check_net_options, finite_float, home_path, nets_from_args, nonempty_csv, nonempty_json, nonempty_path, nonempty_text, note_params_yaml_unread, set_torch_threads
from bafusion.errors import InputFileError, UserError, json_loads
from bafusion.fusion.batch import (EXIT_NONE_FUSED, EXIT_SKIPPED, STEP_LINES_MIN_PIXELS, check_output_folder,
                                   check_replaced, escape_controls, find_groups, fuse_dir, skip_lines)
from bafusion.fusion.params import (
    ALIGN_MODELS,
    BOUNDARY_MODES,
    HINT_MOTION_PX,
    PROGRESS_MIN_PIXELS,
    SCALE_RULES,
    STACK_RULES,
    WORKING_REFINES,
    FusionParams,
)
from bafusion.preflight import check_device
from bafusion.progress import stamped
from bafusion.schema import allowed, default, maximum

# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


#: Where the options outside the fuse flags (--device, --threads, --alpha, --diff-cmap) take their
#: default from: :func:`params_from_args` reads them from the 'fuse' section as --params-json
#: overrides --params-file's, as the flags' defaults.
_FROM_PARAMS = "--params-json's, else --params-file's"


def _add_param_args(p: argparse.ArgumentParser, maps: bool = True, progress_help: str | None = None) -> None:
    d = FusionParams()
    g = p.add_argument_group("fusion parameters (defaults: --params-json, else --params-file section 'fuse', else "
                             "built in)")
    g.add_argument("--l", type=int, default=None, help="Eq. 1 window half-size, px at the resolution the pair is decided at (the working or "
                   f"upscaled one where --working-side or --working-min apply) (default {d.l})")
    g.add_argument("--low", type=float, default=None, help=f"Eq. 2 lower bound; --stack-rule joint uses 1 - --high (default {d.low})")
    g.add_argument("--high", type=float, default=None, help=f"Eq. 2 upper bound (default {d.high})")
    g.add_argument("--threshold", type=float, default=None, help=f"binarisation threshold (default {d.threshold})")
    g.add_argument(
        "--min-region", type=float, default=None, help=f"small-region area, fraction of the image (default {d.min_region})"
    )
    g.add_argument("--unsure-region", type=float, default=None,
                   help="confidence-aware small-region removal: regions from --min-region up to this fraction of "
                        "the image are removed where the initial net was unsure of them (try 0.03); pairs and the chain stack "
                        "rule, not the joint rule; 0 = off "
                        f"(default {d.unsure_region:g})")
    g.add_argument("--unsure-confidence", type=float, default=None,
                   help="confidence-aware small-region removal: the mean |2 s0 - 1| below which such a region is "
                        f"removed (default {d.unsure_confidence:g})")
    g.add_argument("--symmetric-regions", action=argparse.BooleanOptionalAction, default=None,
                   help="small-region removal judges the islands and the holes on the same map, so that fusing B, A "
                        "gives the complementary decision of A, B; off: the islands first, then the holes (a pair "
                        "and the chain rule's steps: --stack-rule joint judges its regions alike already) "
                        f"(default {'on' if d.symmetric_regions else 'off'})")
    g.add_argument("--no-refine", dest="refine", action="store_const", const=False, default=None,
                   help="skip the boundary net (ablation): the initial net's map alone; --boundary-mode, "
                        "--boundary-step, --boundary-fine-step, --tile, --boundary-weight and --working-refine "
                        "boundary do not apply")
    g.add_argument("--exact", action="store_const", const=True, default=None,
                   help="reference mode: one forward pass per pixel patch (slow), at the pair's own size: the "
                        "scoring options (--initial-mode, --initial-step, --initial-grid-step, --boundary-mode, "
                        "--boundary-step, --boundary-fine-step, --tile, --dense-margin, --scales, --scale-rule) and "
                        "the working resolution (--working-*) do not apply")
    g.add_argument("--initial-mode", choices=allowed("fuse.initial_mode"), default=None,
                   help=f"initial net: one dense trunk pass, or exact patches on a grid (default {d.initial_mode})")
    g.add_argument("--initial-step", type=int, default=None, help=f"dense grid step of the initial net (default {d.initial_step})")
    g.add_argument("--initial-grid-step", type=int, default=None,
                   help=f"grid step of the 'grid' initial mode (default {d.initial_grid_step})")
    g.add_argument("--boundary-step", type=int, default=None,
                   help="grid step of the boundary net (grid mode; the coarse step in adaptive mode): 1 to 32, a power "
                        "of two; 0 = auto: p/4 in grid mode, p/2 in adaptive mode, p the boundary net's patch side "
                        f"(default {d.boundary_step})")
    g.add_argument("--boundary-fine-step", type=int, default=None,
                   help="finest grid step of the adaptive boundary mode, at most --boundary-step; 0 = auto: half the "
                        f"coarse step (default {d.boundary_fine_step})")
    g.add_argument("--boundary-mode", choices=BOUNDARY_MODES, default=None,
                   help=f"how the boundary net scores near-boundary pixels (default {d.boundary_mode})")
    g.add_argument("--precision", choices=allowed("fuse.precision"), default=None,
                   help=f"fp32, or bf16 autocast (faster on AMX CPUs and GPUs) (default {d.precision})")
    g.add_argument("--tile", type=int, default=None, help=f"tile side (px) of --boundary-mode dense, the boundary net's tiles (default {d.tile})")
    g.add_argument("--dense-margin", type=int, default=None,
                   help=f"pixels of reflect padding around the image for the dense pass (default {d.dense_margin})")
    g.add_argument("--scales", type=nonempty_csv, default=None, metavar="S,S,...",
                   help="multi-scale initial scoring: comma-separated factors in (0, 1] including 1; a scale at "
                        "which the pair, as decided, would have a short side under fuse.scale_min_side "
                        f"({d.scale_min_side} px), or under the initial net's patch side where that is larger, is "
                        f"skipped (default {','.join(str(v) for v in d.scales)})")
    g.add_argument("--scale-rule", choices=SCALE_RULES, default=None,
                   help=f"how the scales' scores combine (default {d.scale_rule})")
    g.add_argument("--stack-rule", choices=STACK_RULES, default=None,
                   help=f"three or more shots: chain (one into the next) or joint (one decision over all "
                        f"shots) (default {d.stack_rule})")
    g.add_argument("--working-side", type=int, default=None,
                   help="camera-size pairs: long side (px) of the working resolution the decision is made at "
                        "(a pair wider than 16:9 keeps a 16:9 frame's short side, 9/16 of it); "
                        f"0 = off (default {d.working_side})")
    g.add_argument("--working-above", type=int, default=None,
                   help="use the working resolution only for pairs whose long side exceeds this "
                        f"(default {d.working_above})")
    g.add_argument("--working-band", type=int, default=None,
                   help="half-width (full-resolution px) of the boundary band refined at full size; pairs and the chain "
                        f"stack rule, not the joint rule (default {d.working_band})")
    g.add_argument("--working-refine", choices=WORKING_REFINES, default=None,
                   help=f"how that band is refined; pairs and the chain stack rule, not the joint rule "
                        f"(default {d.working_refine})")
    g.add_argument("--working-min", type=int, default=None,
                   help="small pairs: those whose long side (px) is below this are decided upscaled to it "
                        f"(web-size copies of photos); 0 = off, the paper (default {d.working_min})")
    g.add_argument("--exposure-match", choices=allowed("fuse.exposure_match"), default=None,
                   help="map B onto A's exposure before the nets score the pair (shots of different brightness): "
                        f"linear, linear_clip (also clip a darker A where a brighter B's clipped white lands), "
                        f"brighter (the darker shot mapped up onto the brighter one, fitted where neither clips), "
                        f"auto (brighter where one shot clips clearly more, else linear) or none (default {d.exposure_match})")
    g.add_argument("--exposure-fit-step", type=int, default=None, metavar="N",
                   help="exposure matching: fit the gain on N x N block means (4: 16x fewer pixels, about 10x faster on a "
                        f"camera-size pair as measured in BENCHMARKS.md; the gain moves in its 4th digit); 1 = full resolution (default {d.exposure_fit_step})")
    g.add_argument("--noise-match", action=argparse.BooleanOptionalAction, default=None,
                   help="where one shot is clearly noisier than the other (another ISO, in-camera denoising), add "
                        "seeded matching noise to the cleaner shot before the nets score, so that noise does not read "
                        "as focus; the fused pixels stay the sources' own; pairs and the chain stack rule, not the joint "
                        f"rule (default {'on' if d.noise_match else 'off'})")
    g.add_argument("--match-output-exposure", action=argparse.BooleanOptionalAction, default=None,
                   help="bring B's pixels to A's exposure and colour (per-channel gains) before compositing, so "
                        "that shots of different exposure or white balance leave no seam; off: the sources' own "
                        f"pixels, the paper (default {'on' if d.match_output_exposure else 'off'})")
    g.add_argument("--flat-level", type=float, default=None,
                   help="flat-region filling: where A and B differ by under about this many gray levels, the "
                        "score follows the textured neighbourhood (blank page, sky); 0 = off, the paper "
                        f"(default {d.flat_level:g})")
    g.add_argument("--flat-sigma", type=float, default=None,
                   help="flat-region filling: Gaussian sigma of that neighbourhood, px at the resolution the pair is "
                        f"decided at, as --l (default {d.flat_sigma:g})")
    g.add_argument("--boundary-weight", type=float, default=None,
                   help="near-boundary pixels: weight of the boundary net's vote (log-odds) against the initial "
                        f"net's; 1 = the paper, the boundary net alone (default {d.boundary_weight:g})")
    g.add_argument("--tta", choices=allowed("fuse.tta"), default=None,
                   help="test-time augmentation: the nets also score the pair with A and B exchanged (swap), "
                        "turned and mirrored (dihedral: 8 views) or both (all: 16), and the scores are averaged; "
                        f"each view costs one scoring; none = the paper (default {d.tta})")
    g.add_argument("--score-position", choices=allowed("fuse.score_position"), default=None,
                   help="where a patch's score is placed: pixel = its pixel (p//2, p//2), the paper; centre = its "
                        "geometric centre, half a pixel up and left; auto = centre for nets trained with bafusion "
                        f"0.2.0's labels (their .json records a patch set of bafusion < 0.3.0) (default {d.score_position})")
    g.add_argument("--params", "--params-file", dest="params_file", type=nonempty_path, default=None, metavar="FILE",
                   help="YAML file whose 'fuse' section sets the defaults (params.yaml)")
    g.add_argument("--params-json", type=nonempty_json, default=None,
                   help="JSON object of fusion parameters (the 'fuse' section; overrides --params-file)")
    # the fuse keys with no flag (tuning: the dense pass's tiles, the exact batches, the scales' finer
    # settings): named, with the way to set them, so that the help says every key can be set
    dests = {a.dest for a in p._actions}
    unflagged = [f.name for f in fields(FusionParams) if f.name not in dests]
    if unflagged:
        example = unflagged[0]
        g.description = (f"{', '.join(f'fuse.{k}' for k in unflagged)}: no flag; set them with --params-json "
                         f"(e.g. --params-json '{{\"{example}\": {getattr(d, example)!r}}}') or --params-file")
    p.add_argument("--device", type=nonempty_text, default=None,
                   help=f"auto, cpu, cuda, cuda:N or mps (default: {_FROM_PARAMS} fuse.device, else {default('fuse.device')})")
    add_threads_argument(p, "CPU threads for torch and for the gray conversions, filters and band tiles run side by side", f"{_FROM_PARAMS} fuse.threads, else torch's, lowered to the "
                         "cores the load average leaves free and the whole CPUs of a cgroup CPU quota, at least 1")
    if maps:  # the difference maps' gain: only for commands that write maps (not fuse-dir)
        p.add_argument("--alpha", type=finite_float(), default=None,  # inf: NaN maps; 0 and below: refused later
                       help=f"difference-map gain alpha*|B-F|, more than 0 and at most {maximum('fuse.alpha'):g}, of the "
                            "maps written (bafusion fuse: with --save-maps, and not for --stack-rule joint's maps, "
                            f"which hold no difference map) (default: {_FROM_PARAMS} fuse.alpha, else "
                            f"{default('fuse.alpha'):g})")
        p.add_argument("--diff-cmap", type=nonempty_text, default=None, metavar="NAME",
                       help="matplotlib colour map of the pseudo-colour difference map (<stem>-diff-colour.png; "
                            "bafusion fuse: with --save-maps, as --alpha): "
                            "magma, viridis, cividis, gray, ...; jet = the paper's "
                            f"(default: {_FROM_PARAMS} fuse.diff_cmap, else {default('fuse.diff_cmap')})")
    p.add_argument("--no-progress", "--quiet", dest="progress", action="store_const", const=False, default=None,
                   help=progress_help or "no progress bar (default: a bar on stderr for camera-size pairs when it "
                        "is a terminal; bafusion fuse also names each step there, and in a log for 4 megapixels "
                        "or more after the time: reading, checking, aligning, fusing, writing)")


def _origins(args: argparse.Namespace, flags: dict[str, Any], keys: tuple[str, ...]) -> dict[str, str]:
    """Where each of the fuse ``keys`` came from, by precedence: its flag (``--high``),
    ``--params-json``, the ``--params-file`` (its name), else ``default``."""
    from bafusion.config import load_params

    given_json: dict[str, Any] = {}
    if getattr(args, "params_json", None):
        try:
            given_json = json_loads(args.params_json)
        except ValueError:
            pass  # (read_params has refused it)
    path = getattr(args, "params_file", None)
    in_file: dict[str, Any] = {}
    if path and any(flags.get(k) is None and k not in given_json for k in keys):
        try:
            in_file = load_params(path, validate=False).get("fuse") or {}
        except UserError:
            pass
    out = {}
    for k in keys:
        out[k] = ("--" + k.replace("_", "-") if flags.get(k) is not None else "--params-json" if k in given_json
                  else str(path) if k in in_file else "default")
    return out


#: The fuse keys that exact mode (``fuse.exact``, ``--exact``) does not read: the scoring's modes,
#: steps and tiles, the scales and the working resolution (:func:`bafusion.fusion.scoring.score`,
#: :func:`bafusion.fusion.working.uses_working`, :func:`~bafusion.fusion.working.uses_upscale`).
_EXACT_IGNORES = ("initial_mode", "initial_step", "initial_grid_step", "boundary_mode", "boundary_step",
                 "boundary_fine_step", "tile", "dense_margin", "scales", "scale_rule", "working_side",
                 "working_above", "working_band", "working_refine", "working_min")


#: The fuse keys of the boundary net, not read without it (``fuse.refine: false``, ``--no-refine``;
#: ``working_refine`` only as ``boundary``, which then refines as ``guided``).
_NO_REFINE_IGNORES = ("boundary_mode", "boundary_step", "boundary_fine_step", "tile", "boundary_weight",
                      "working_refine")


def params_from_args(args: argparse.Namespace) -> tuple[FusionParams, dict]:
    """FusionParams from --params-file's 'fuse' section, overridden by --params-json, then by
    explicit flags (absent keys: the schema's defaults); also returns the other settings
    (device, device_from: the option or key that gave it, alpha, diff_cmap, threads: --threads, else
    fuse.threads, 0 for the free cores). Imports no torch: :func:`check_device_of` checks the device
    and :func:`set_threads` sets torch's threads, once the command's checks of its inputs are done."""
    from bafusion.config import read_params, section

    note_params_yaml_unread(getattr(args, "command", None) or "fuse", "--params-file",
                            getattr(args, "params_file", None), getattr(args, "params_json", None))
    params_file = getattr(args, "params_file", None)
    if params_file:  # rule fields at its top level: read by nothing (refused as FusionParams.from_params refuses them)
        from bafusion.config import _read_mapping
        from bafusion.fusion.params import refuse_top_level_fields

        refuse_top_level_fields(_read_mapping(params_file, empty_ok=True), str(params_file),
                                "--params-file reads the file's 'fuse' section only: put them under 'fuse:'")
    params = read_params(params_file, [("--params-json", getattr(args, "params_json", None), "fuse")],
                         sections=("fuse",))
    from bafusion.cli.common import note_params_file_without

    note_params_file_without(getattr(args, "command", None) or "fuse", params_file, ("fuse",))
    base = section(params, "fuse")
    command = getattr(args, "command", None) or "fuse"
    # fuse.save_maps: a key of the schema that no command reads (set true, it was dropped in silence: no maps)
    if base.get("save_maps") is True and not (command == "fuse" and getattr(args, "save_maps", None)):
        in_json = getattr(args, "params_json", None) and "save_maps" in json_loads(args.params_json)
        given = "--params-json" if in_json else str(params_file)
        how = {"fuse": "give --save-maps DIR to write the maps",
               "fuse-set": "fuse-set writes every pair's maps into <out>/maps/ always",
               "fuse-dir": "fuse-dir writes no maps (bafusion fuse --save-maps DIR writes a pair's)"}.get(command, "")
        print(f"bafusion {command}: note: fuse.save_maps: true ({given}) changes nothing: no command reads it"
              f"{'; ' + how if how else ''}", file=sys.stderr)
    flags = {
        "l": args.l, "low": args.low, "high": args.high, "threshold": args.threshold,
        "min_region": args.min_region, "refine": args.refine,
        "unsure_region": getattr(args, "unsure_region", None),
        "unsure_confidence": getattr(args, "unsure_confidence", None), "exact": args.exact,
        "symmetric_regions": getattr(args, "symmetric_regions", None),
        "initial_mode": args.initial_mode, "initial_step": args.initial_step,
        "initial_grid_step": args.initial_grid_step, "boundary_step": args.boundary_step, "tile": args.tile,
        "boundary_mode": args.boundary_mode, "boundary_fine_step": args.boundary_fine_step,
        "precision": args.precision, "dense_margin": args.dense_margin,
        "scale_rule": getattr(args, "scale_rule", None),
        "stack_rule": getattr(args, "stack_rule", None),
        "working_side": getattr(args, "working_side", None), "working_above": getattr(args, "working_above", None),
        "working_band": getattr(args, "working_band", None), "working_refine": getattr(args, "working_refine", None),
        "working_min": getattr(args, "working_min", None),
        "exposure_match": getattr(args, "exposure_match", None),
        "match_output_exposure": getattr(args, "match_output_exposure", None),
        "noise_match": getattr(args, "noise_match", None),
        "exposure_fit_step": getattr(args, "exposure_fit_step", None),
        "flat_level": getattr(args, "flat_level", None), "flat_sigma": getattr(args, "flat_sigma", None),
        "tta": getattr(args, "tta", None),
        "score_position": getattr(args, "score_position", None),
        "boundary_weight": getattr(args, "boundary_weight", None),
    }
    if getattr(args, "scales", None):
        try:
            flags["scales"] = tuple(float(v) for v in str(args.scales).split(",") if v.strip())
        except ValueError as e:
            raise UserError(f"--scales: expected comma-separated numbers such as 1,0.5, got {args.scales!r}") from e
    merged = {**base, **{k: v for k, v in flags.items() if v is not None}}
    other = {
        "device": args.device or base["device"],
        "alpha": getattr(args, "alpha", None) if getattr(args, "alpha", None) is not None else float(base["alpha"]),
        "diff_cmap": getattr(args, "diff_cmap", None) or base["diff_cmap"],
    }
    # named by where it came from (the pipeline passes fuse.device in --params-json: "--device
    # cuda" named an option nobody gave); checked by check_device_of once the command's inputs
    # are (a device other than auto or cpu imports torch: seconds before a bad file's refusal)
    other["device_from"] = "--device" if args.device else "fuse.device"
    if args.threads is not None and not 1 <= args.threads <= maximum("fuse.threads"):
        raise UserError(f"--threads {args.threads}: give a positive number of CPU threads, at most "
                        f"{maximum('fuse.threads')} (omit it for the default)")
    from bafusion.fusion.maps import check_alpha

    check_alpha(other["alpha"], "--alpha")  # as fuse_set checks its alpha
    if getattr(args, "diff_cmap", None):  # the file's and JSON's fuse.diff_cmap: checked by the schema
        from bafusion.fusion.maps import check_colour_map

        check_colour_map(args.diff_cmap, "--diff-cmap")
    fusion = FusionParams.from_mapping(merged, source="command line",  # file and JSON are checked: the flags
                                       origins=_origins(args, flags, ("low", "high")))
    if fusion.exact:  # exact mode scores every pixel at the pair's size: these flags were ignored in silence
        unused = [f"--{k.replace('_', '-')}" for k in _EXACT_IGNORES
                  if flags.get(k) is not None and not (k == "boundary_mode" and flags[k] == "exact")]
        if unused:
            exact_from = "--exact" if flags["exact"] else "fuse.exact: true"
            print(f"bafusion {getattr(args, 'command', None) or 'fuse'}: note: {', '.join(unused)} "
                  f"change{'s' if len(unused) == 1 else ''} nothing with {exact_from}: exact mode scores one patch "
                  "per pixel with both nets at the pair's own size (no dense pass, grid, other scales nor working "
                  "resolution)", file=sys.stderr)
    other["threads"] = int(args.threads or base["threads"] or 0)
    if not fusion.refine and not fusion.exact:  # the boundary net's options, with no boundary net
        unused = [f"--{k.replace('_', '-')}" for k in _NO_REFINE_IGNORES
                  if flags.get(k) is not None and (k != "working_refine" or flags[k] == "boundary")]
        if unused:
            refine_from = "--no-refine" if flags["refine"] is not None else "fuse.refine: false"
            print(f"bafusion {getattr(args, 'command', None) or 'fuse'}: note: {', '.join(unused)} "
                  f"change{'s' if len(unused) == 1 else ''} nothing with {refine_from}: the boundary net is not "
                  "run (the initial net's map alone)", file=sys.stderr)
    if 0 < fusion.unsure_region <= fusion.min_region:  # remove_unsure_regions' range is empty (rule.clean_decision)
        src = _origins(args, flags, ("unsure_region", "min_region"))
        named = {k: (f"--{k.replace('_', '-')}" if v.startswith("--") and v != "--params-json" else f"fuse.{k}")
                 for k, v in src.items()}
        print(f"bafusion {getattr(args, 'command', None) or 'fuse'}: note: {named['unsure_region']} "
              f"{fusion.unsure_region:g} changes nothing: it is at or below {named['min_region']} "
              f"({fusion.min_region:g}), and the confidence-aware removal takes the regions from that size up to "
              "it (give it more than the small-region area, or 0 for off)", file=sys.stderr)
    return fusion, other


def check_device_of(other: dict) -> None:
    """Refuse :func:`params_from_args`' device where this machine lacks it, naming the option or
    key that gave it (:func:`bafusion.preflight.check_device`). A device other than auto or cpu
    imports torch: called once the command's inputs are checked, before the nets load."""
    check_device(other["device"], other["device_from"])


def set_threads(other: dict) -> None:
    """Set torch's threads from :func:`params_from_args`' ``other["threads"]`` (0: torch's
    default lowered to the free cores). Imports torch: called once the command's quick checks pass."""
    import torch

    threads = other["threads"]
    if not threads:
        from bafusion.threads import auto_threads

        # No more threads than the free cores: two threads collapse when a core is busy.
        threads = min(torch.get_num_threads(), auto_threads())
    set_torch_threads(int(threads))


def _cmd_fuse(args: argparse.Namespace) -> int:
    import time

    t_start = time.perf_counter()
    params, other = params_from_args(args)
    if args.stack_rule is not None and len(args.images) == 2:  # as fuse-set says it
        print(f"bafusion fuse: note: --stack-rule {args.stack_rule} changes nothing: two sources are fused by the "
              "pair rule, and the stack rule is for three or more shots", file=sys.stderr)
    check_net_options(args, args.model)  # before torch's import, as the other mistakes of the command line
    args.fusion_params = params  # for the out-of-memory line's estimate (cli.app)
    out = Path(args.output)  # its suffix and a folder in its place: refused by preflight.check_command
    _check_quality(out, args.quality)
    for i, p in enumerate(args.images):  # an unset shell variable; pathlib reads '' as '.': 'not a regular file'
        if p == "":
            raise InputFileError(f"source {i + 1}", "the path is empty (''): no file named")
    paths = [Path(p) for p in args.images]
    if len(paths) < 2:
        raise UserError("give at least two source images")
    check_distinct_sources(args.images)
    from bafusion.fusion.batch import check_source_headers

    # the files from their headers (there, readable, of a format read here, one size) before torch
    # is imported (--save-maps' names, the nets): a refusal at once, not after that import's seconds
    check_source_headers(paths, align=args.align or "none")
    check_device_of(other)
    joint = params.stack_rule == "joint" and len(paths) > 2
    maps_line = ""
    maps: list[str] = []  # the map files --save-maps writes
    if args.save_maps:
        # The maps' names are known before the work: none may be a source.
        from bafusion.fusion.maps import MAP_KEYS
        from bafusion.fusion.stack import STACK_MAP_KEYS
        from bafusion.preflight import check_name_length, check_not_input

        if joint:
            maps = [f"{out.stem}-{key}.png" for key in STACK_MAP_KEYS]
        else:
            stems = [out.stem] if len(paths) == 2 else [f"{out.stem}-step{i + 1:02d}" for i in range(len(paths) - 1)]
            maps = [f"{stem}-{key}.png" for stem in stems for key in MAP_KEYS]
        for name in maps:
            check_not_input(Path(args.save_maps) / name, paths, "map file")
        # the longest map name: refused now, not after the fusion ("File name too long")
        check_name_length(Path(args.save_maps) / max(maps, key=lambda n: len(os.fsencode(n))), "map file",
                          f"the maps are named after the output, {out.name}: give it a shorter name")
    registered = _registered_names(args, out, paths)
    if args.save_maps:
        # the registered sources beside the maps: named apart, not counted by the maps' <stem>-*.png
        beside = [p.name for p in registered if _same_folder(p.parent, Path(args.save_maps))]
        maps_line = _maps_line(Path(args.save_maps), out.stem, joint, len(paths), beside)
    unused_maps = [f"{flag} {value}" for flag, value in (("--alpha", f"{args.alpha:g}" if args.alpha is not None else None),
                                                          ("--diff-cmap", args.diff_cmap)) if value is not None]
    if unused_maps and (not args.save_maps or joint):  # they set the difference maps, which are not written
        one = len(unused_maps) == 1
        why = ("the joint stack rule's maps (--save-maps) hold no difference map" if args.save_maps
               else f"{'it sets' if one else 'they set'} the difference maps that --save-maps writes, and it is not given")
        print(f"bafusion fuse: note: {' and '.join(unused_maps)} change{'s' if one else ''} nothing: {why}",
              file=sys.stderr)
    if joint and getattr(args, "symmetric_regions", None):
        print("bafusion fuse: note: --symmetric-regions changes nothing with --stack-rule joint: the joint rule "
              "judges every region of its shot-index map alike already (it is for a pair and the chain rule's "
              "steps)", file=sys.stderr)
    from bafusion.fusion.memory import check_memory, memory_warning

    # a cgroup's memory limit (a container, a SLURM job): refused before reading, since over it the
    # kernel ends the fusion without a word; --align auto counted as the fusion (it may not align)
    aligned = (args.align or "none") not in ("none", "auto")
    check_memory(paths, aligned, bool(args.save_maps), params=params)
    low = memory_warning(paths, aligned, bool(args.save_maps), params=params)
    if low:
        print(f"bafusion fuse: warning: {low}", file=sys.stderr)
    from bafusion.fusion.batch import fused_output, prepare_sources

    say = _stage_lines(args.progress, paths)
    # sizes (from the headers first: the error says where an EXIF orientation swapped them),
    # then --align or the one-scene check (and, --align not given, the motion hint)
    src = prepare_sources(paths, align=args.align or "none", force=args.force, motion_hint=args.align is None,
                          stage=say, prefix="bafusion fuse", details=args.progress is not False)
    images, names = src.images, [str(p) for p in paths]
    _check_fits(out, images[0].shape)  # a WebP's largest side: before the minutes of fusing
    # torch (seconds to import) only now: a shot whose header reads but whose pixels do not
    # decode (a truncated PNG or JPEG, a damaged zlib stream), shots of two scenes or a failed
    # alignment are refused without it. The reading and the checks above run no torch: its
    # threads (set_threads) are not theirs (bafusion.threads.work_threads: the fusion's steps)
    set_threads(other)
    from bafusion.fusion.models import resolve_device

    resolve_device(other["device"], "--device")
    say("loading the nets")
    nets = nets_from_args(args, other["device"], args.model)
    say(f"fusing {len(paths)} images")
    if joint:
        from bafusion.fusion.stack import fuse_stack_joint, save_stack_maps

        # each step of a stack named, as the others; the N logit-sum maps (read by nothing here) not
        # brought to full size
        stack = fuse_stack_joint(images, nets, params, names, step=say, keep_scores=False)
        fused = fused_output(src, stack, out)

        def write_maps() -> None:
            save_stack_maps(Path(args.save_maps), out.stem, stack)
    else:
        from bafusion.fusion.maps import render_maps, write_rendered
        from bafusion.fusion.rule import fuse_stack

        # --save-maps of a stack: each step's maps encoded as PNG as the step is done (a tenth of
        # its maps' arrays, about 18 bytes a pixel, which were held to the end: 8 shots of 5.3 MP
        # peaked at 1664 MiB, BENCHMARKS.md "Memory of a stack"), written after the fused image;
        # a pair's encoded after the fused image is written, as before
        rendered: list[tuple[Path, bytes]] = []
        stack = len(paths) > 2

        def encode_maps(i: int, res: Any) -> None:
            if stack:
                say(f"encoding the maps of step {i + 1}/{len(paths) - 1} and its Fig. 3")
            rendered.extend(render_maps(Path(args.save_maps), f"{out.stem}-step{i + 1:02d}" if stack else out.stem,
                                        res, images[i + 1], alpha=other["alpha"], diff_cmap=other["diff_cmap"]))

        results = fuse_stack(images, nets, params, names, progress=args.progress, step=say, keep_maps=False,
                             on_step=encode_maps if args.save_maps and stack else None)
        fused = fused_output(src, results, out)

        def write_maps() -> None:
            if not stack:
                encode_maps(0, results[0])
            write_rendered(rendered)
    for note in fused.notes:  # the joint rule's on a setting it does not use (fuse.low, ...): a note
        print(f"bafusion fuse: {'note: ' if note.startswith('fuse.') else ''}{note}", file=sys.stderr)
    import bafusion.io

    # the fused image first, then the maps: a failing write says what was written and what not
    say(f"writing {out}")
    try:
        bafusion.io.write_image(out, fused.image, exif=fused.exif, icc=fused.icc, bits=fused.bits, dpi=fused.dpi,
                                png_colour=fused.png_colour, quality=args.quality, subsampling=fused.subsampling)
    except OSError as e:
        if not args.save_maps or e.errno is None:  # no errno (Pillow's "cannot write mode X"): a bug, said as one
            raise
        raise UserError(f"{out}: {_os_reason(e)}: not written; nothing was written (the maps are written after "
                        "the fused image)") from e
    if registered:  # the sources as fused (registered and cropped with --align): what bafusion metrics measures F against
        say(f"writing the registered sources to {args.save_registered}")
        _write_registered(src, registered, out, full=fused.image.dtype.itemsize > 1, maps=bool(args.save_maps))
    if args.save_maps:
        say(f"writing maps to {args.save_maps}")  # a pair's nine PNGs and Fig. 3: 20-60 s at camera size
        folder = Path(args.save_maps)
        before = {name: _file_id(folder / name) for name in maps}
        try:
            write_maps()
        except OSError as e:
            if e.errno is None:
                raise
            done = [name for name in maps if _file_id(folder / name) not in (None, before[name])]
            listed = ", ".join(done[:12]) + (", ..." if len(done) > 12 else "")
            raise UserError(f"{folder}: {_os_reason(e)} writing the maps: "
                            + (f"{len(done)} of {len(maps)} map files written ({listed}), the others not"
                               if done else f"none of the {len(maps)} map files written")
                            + f"; the fused image {out} was written") from e
    print(f"fused {len(paths)} images into {out} ({fused.seconds:.2f} s fusing on {nets.device}, "
          f"{time.perf_counter() - t_start:.2f} s in all with reading, loading the nets and writing)")
    if maps_line:
        print(f"bafusion fuse: {maps_line}", file=sys.stderr)
    if registered:
        print(f"bafusion fuse: registered sources: {', '.join(map(str, registered))} (bafusion metrics scores "
              f"{out} against them)", file=sys.stderr)
    return 0


def _registered_names(args: argparse.Namespace, out: Path, paths: list[Path]) -> list[Path]:
    """The files ``--save-registered DIR`` writes, ``DIR/<output stem>-registered<i>.png`` for
    each source (none without the option); none may be a source, checked before the work."""
    if not args.save_registered:
        return []
    from bafusion.fusion.batch import registered_paths
    from bafusion.preflight import check_name_length, check_not_input

    names = registered_paths(Path(args.save_registered), out.stem, len(paths))
    # the longest name (the last): refused now, not after the fusion ("File name too long")
    check_name_length(names[-1], "registered source",
                      f"the registered sources are named after the output, {out.name}: give it a shorter name")
    for name in names:
        check_not_input(name, paths, "registered source")
        if name.exists() and name.is_dir():
            raise UserError(f"{name}: a folder is in the way of --save-registered's file")
    return names


def _write_registered(src: Any, names: list[Path], out: Path, *, full: bool, maps: bool = False) -> None:
    """Write the sources as ``fuse`` fused them to the PNGs ``names`` (:func:`_registered_names`):
    with ``--align`` (or ``--align auto`` that aligned) registered onto the first's frame and
    cropped to the fused image's area, lossless and at the depth the fusion was composed at
    (``full``: the output holds the full-depth composition, and the full-depth shots are written
    on the 16-bit scale, marked with their bits; else the 8-bit shots, which an 8-bit output of
    deeper sources, a .jpg, is composed from: registered apart, the full-depth ones round
    otherwise), so that ``bafusion metrics REGISTERED1 REGISTERED2 OUT`` scores the fused image
    against the pair it was made of. Unaligned, they are the sources' pixels (turned by their
    EXIF orientation). A failing write says what was written: the fused image, and (``maps``:
    ``--save-maps`` given) not the maps, which are written after these."""
    from bafusion.fusion.batch import write_registered

    try:
        write_registered(src, names, full=full)
    except OSError as e:
        if e.errno is None:
            raise
        raise UserError(f"{e.filename}: {_os_reason(e)}: the registered source not written; the fused image {out} "
                        "was written" + ("; the maps were not (they are written after the registered sources)"
                                         if maps else "")) from e


def _check_quality(out: Path, quality: int | None, flag: str = "--quality", *, named: bool = True) -> None:
    """Refuse ``--quality`` for an output that takes none (PNG, TIFF, BMP; naming ``out`` when
    ``named``: fuse-dir's ``x.<ext>`` names no file) or out of 1..100, before any work
    (:func:`bafusion.io.output_format_problem`)."""
    from bafusion.io import output_format_problem

    why = output_format_problem(out, quality=quality) if quality is not None else None
    if why and why.startswith(f"quality {quality!r}: "):
        file = f"{out}: " if named and "takes no quality" in why else ""  # a number out of range: the option
        raise UserError(f"{file}{flag} {quality}: {why.removeprefix(f'quality {quality!r}: ')}")
    if why:
        raise UserError(f"{out}: {why}")


def _check_fits(out: Path, shape: tuple[int, ...]) -> None:
    """Refuse an image larger than ``out``'s format holds (WebP: 16383 x 16383) before fusing it."""
    from bafusion.io import output_format_problem

    why = output_format_problem(out, shape=shape)
    if why:
        raise UserError(f"{out}: {why}")


def _os_reason(e: OSError) -> str:
    """An OSError's reason without its file name ("No space left on device")."""
    return os.strerror(e.errno) if e.errno else (e.strerror or str(e) or type(e).__name__)


def _file_id(p: Path) -> tuple[int, int] | None:
    """The inode and modification time of ``p`` (None: none there): a file written anew (atomic:
    a new inode) has another."""
    try:
        st = p.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _maps_line(folder: Path, stem: str, joint: bool, n: int, beside: list[str] | None = None) -> str:
    """The line ``fuse --save-maps`` ends with on stderr: how many files it wrote where, their
    names and what white means (the README's table gives every file's scale). ``beside``: the
    names of the registered sources (``--save-registered``) written to the same folder, which a
    pair's or the joint rule's ``<stem>-*.png`` matches too: said not to be maps."""
    from bafusion.fusion.maps import MAP_KEYS
    from bafusion.fusion.stack import STACK_MAP_KEYS

    stems = [stem] if joint or n == 2 else [f"{stem}-step{i + 1:02d}" for i in range(n - 1)]
    others = [name for name in beside or () if any(name.startswith(f"{s}-") for s in stems)]
    also = f"; {', '.join(others)}: the registered sources, not maps" if others else ""
    if joint:
        return (f"maps: {len(STACK_MAP_KEYS)} files in {folder} ({stem}-*.png: {', '.join(STACK_MAP_KEYS)}; "
                f"index: shot 1 black ... shot {n} white{also})")
    return (f"maps: {len(MAP_KEYS) * len(stems)} files in {folder} ({', '.join(f'{s}-*.png' for s in stems)}: "
            f"{', '.join(MAP_KEYS)}; score and dm: white = take A, black = take B{also})")


def _same_folder(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one folder (the same file once both exist; else their
    absolute, resolved paths)."""
    try:
        return a.samefile(b)
    except OSError:
        return a.resolve() == b.resolve()


def _stage_lines(progress: bool | None, paths: list[Path]) -> Callable[[str], None]:
    """``bafusion fuse``'s steps named on stderr ("bafusion fuse: reading a.jpg, b.jpg ..."), each
    as it starts, unless --no-progress: on a terminal between the lines of its progress bar
    (:func:`bafusion.progress.bars_enabled`); off one (a log) as plain lines after the local
    time (:func:`bafusion.progress.in_log`) where the shots hold
    :data:`~bafusion.fusion.batch.STEP_LINES_MIN_PIXELS` or more in all, as fuse-dir's (a smaller
    pair's steps are short). Camera-size pairs take minutes, most of it outside the fusion's bar:
    a log of such a fusion printed nothing for the minutes of reading and aligning."""
    from bafusion.fusion.batch import _stack_pixels
    from bafusion.progress import bars_enabled

    if progress is not False and not bars_enabled(True) and _stack_pixels(paths) < STEP_LINES_MIN_PIXELS:
        return lambda text: None
    return _step_lines("bafusion fuse", progress)


def _step_lines(command: str, progress: bool | None) -> Callable[[str], None]:
    """A long step named on stderr as it starts (``bafusion fuse-set: p1: reading ...``), unless
    ``progress`` is False: on a terminal between the lines of a progress bar, off one (a log)
    as a plain line after the local time (:func:`bafusion.progress.in_log`)."""
    from tqdm import tqdm

    from bafusion.progress import bars_enabled, in_log

    if progress is False:
        return lambda text: None
    if bars_enabled(True):
        return lambda text: tqdm.write(f"{command}: {text} ...", file=sys.stderr)
    return lambda text: print(in_log(f"{command}: {text} ..."), file=sys.stderr, flush=True)


def _cmd_fuse_set(args: argparse.Namespace) -> int:
    """``bafusion fuse-set``, logged as the MLflow run ``fuse``."""
    from bafusion import tracking
    from bafusion.dvc_metrics import fuse_metrics
    from bafusion.fusion.batch import model_identity

    from bafusion.fusion.testset import check_map_names, check_pair_files, check_report_path, fuse_set, read_pair_index

    params, other = params_from_args(args)
    check_net_options(args, args.models)  # before torch's import
    if args.stack_rule is not None:  # (a params file's fuse.stack_rule: the pipeline's, for fuse-dir and fuse)
        print(f"bafusion fuse-set: note: --stack-rule {args.stack_rule} changes nothing: fuse-set fuses pairs, and "
              "the stack rule is for three or more shots", file=sys.stderr)
    # the index and the pairs' files (listed, there, images that decode, one size) before torch
    # is imported (the device, the nets): a truncated PNG was refused only after that import;
    # fuse_set then checks them from their headers only (files_checked), not decoding them twice
    names = read_pair_index(Path(args.pairs), allow_empty=True)
    if args.report:  # before loading the nets: a --report that is one of the files written into --out
        check_report_path(args.out, args.report, names, what="--report file", folder="--out")
    check_pair_files(Path(args.pairs), names, decode=False)  # the headers: a missing shot before the decoding's seconds
    check_map_names(Path(args.pairs), Path(args.out), names)  # maps/<pair>-score-initial.png too long
    check_pair_files(Path(args.pairs), names)  # decoded
    check_device_of(other)
    set_threads(other)
    # its folders as tags, as fuse-dir's run has them: which run wrote this output folder
    tags = {"input": Path(args.pairs), "output": Path(args.out)}
    with tracking.stage_run("fuse", {"fuse": asdict(params)}, tags=tags) as run:
        nets = nets_from_args(args, other["device"], args.models)
        tracking.log_nets(run, model_identity(nets))  # which weights made these numbers
        report = fuse_set(args.pairs, args.out, nets, params, alpha=other["alpha"], diff_cmap=other["diff_cmap"],
                          report_path=args.report,
                          progress=args.progress,
                          say=lambda text: print(f"bafusion fuse-set: {text}", file=sys.stderr),
                          timed=lambda text: print(stamped(f"bafusion fuse-set: {text}", sys.stderr), file=sys.stderr),
                          step=_step_lines("bafusion fuse-set", args.progress),
                          show=print, files_checked=True)
        run.log_metrics({k: float(v) for k, v in fuse_metrics(report).items()})
    return 0


#: The ``--model`` option's help of fuse, fuse-set and fuse-dir (the shipped models' names; where
#: the nets come from without it: :func:`bafusion.fusion.models.default_model_dirs`).
MODEL_HELP = ("folder with initial.pt and boundary.pt (+ .json), or a shipped model by name: default or "
              "lytro-2026-11 (not given: the shipped models/default, else the pipeline's data/models)")


#: What ``fuse``'s and ``fuse-dir``'s outputs keep of the sources' metadata (their --help epilog;
#: :func:`bafusion.io.written_metadata`, the README's Metadata paragraph).
METADATA_EPILOG = (
    "Metadata: the output carries the first source's EXIF (its orientation reset: the pixels are turned; its "
    "Software set to 'bafusion <version>', which wrote the output), ICC "
    "profile and resolution (dpi) where its format holds them: .png, .jpg and .tif all three, a .webp no "
    "resolution, a .bmp the resolution only (stderr says what is not written); a PNG source's gAMA/cHRM/sRGB chunks "
    "go to a .png only; a .jpg has the first source's chroma subsampling when it is a JPEG, else 4:4:4. The "
    "sources' XMP, IPTC and comments are not kept, and colours are not converted (stderr "
    "says when a shot's colour profile differs from the first's).")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fuse`` and ``fuse-set`` to the ``bafusion`` command."""
    p = subparsers.add_parser(
        "fuse",
        help="fuse two (or more) multi-focus images with the trained nets",
        description="Fuse registered multi-focus sources (handheld shots: --align similarity, or auto). More than two (a focal stack) are fused by "
        "--stack-rule: chain (one into the next: F1 = fuse(I1, I2), F2 = fuse(F1, I3), ...) or joint (every shot "
        "scored against the others, one decision). Without --model the nets come from "
        "models/default/ if shipped, else data/models/ (pipeline-trained).",
        epilog=METADATA_EPILOG,
    )
    # ~/a.png (quoted, Windows cmd) is the home's, as in the path options (nonempty_path); an empty
    # source is named by its position where the sources are read ("source 2: the path is empty")
    p.add_argument("images", nargs="+", type=home_path, help="source images (same size; with --align a shot of another size is "
                   "registered onto the first), A B [C ...]")
    p.add_argument("-o", "--output", "--out", dest="output", type=nonempty_path, required=True,
                   help="fused image (.png, .tif/.tiff, .bmp, .jpg/.jpeg, .webp: lossless unless --quality); an existing file "
                   "that is not a source is replaced (atomically), a source is refused")
    p.add_argument("--quality", type=int, default=None, metavar="Q",
                   help="lossy quality 1-100 of a .jpg/.jpeg (default 95) or .webp output (default: lossless, the fused "
                   "pixels exactly); refused for .png, .tif/.tiff and .bmp, which are lossless")
    p.add_argument("--model", "--models", dest="model", action=ModelOption, type=nonempty_path, default=None, metavar="DIR",
                   help=MODEL_HELP)
    p.add_argument("--initial", type=nonempty_path, default=None, help="initial-net file (instead of --model)")
    p.add_argument("--boundary", type=nonempty_path, default=None, help="boundary-net file (instead of --model)")
    p.add_argument("--save-maps", type=nonempty_path, default=None, metavar="DIR", help="write score/decision/difference maps and figures here")
    p.add_argument("--save-registered", type=nonempty_path, default=None, metavar="DIR",
                   help="write the sources as fused to DIR/<output stem>-registered1.png, -registered2.png, ... "
                   "(lossless, at the fusion's depth): with --align (or auto that aligned) registered and cropped "
                   "like the output, so that `bafusion metrics DIR/X-registered1.png DIR/X-registered2.png X.png` "
                   "scores the fused image against the pair it was made of")
    p.add_argument("--align", choices=ALIGN_MODELS, default=None,
                   help="translation, similarity (handheld brackets), homography: register every shot to the "
                   "first before fusing; the result is cropped to the largest rectangle every shot covers, and "
                   "the transforms and the crop are printed to stderr (not with --quiet). auto: similarity only when a shot moves "
                   f"more than {HINT_MOTION_PX:g} px against the first (a coarse estimate), else none. none: take "
                   "the shots as registered, no motion check. Not given: as none, plus a hint on stderr when a "
                   f"shot moves more than {HINT_MOTION_PX:g} px")
    p.add_argument("--force", action="store_true",
                   help="fuse even shots that do not look like one scene (refused by default: bafusion.fusion.scene "
                   "without alignment, or the alignment's match quality with --align or when auto aligns)")
    _add_param_args(p)
    p.set_defaults(func=_cmd_fuse)

    q = subparsers.add_parser(
        "fuse-set",
        help="fuse every pair of a test set and score the decision maps against the truth",
        description="Fuse <pairs>/<name>-A.png and -B.png for each name in <pairs>/index.json into "
        "<out>/<name>.png, figures into <out>/maps/, and decision-map accuracy vs <name>-dm.png "
        "(255 = A focused) into <out>/accuracy.json. Each <name>.png carries A's EXIF, ICC profile, resolution "
        "and PNG colour chunks, as bafusion fuse writes them (see its --help).",
    )
    q.add_argument("--pairs", type=nonempty_path, required=True, help="folder with index.json and the pairs")
    q.add_argument("--model", "--models", dest="models", action=ModelOption, type=nonempty_path, default=None, metavar="DIR",
                   help=MODEL_HELP)
    q.add_argument("--initial", type=nonempty_path, default=None, help="initial-net file (instead of --model)")
    q.add_argument("--boundary", type=nonempty_path, default=None, help="boundary-net file (instead of --model)")
    q.add_argument("-o", "--output", "--out", dest="out", type=nonempty_path, required=True, help="output folder")
    q.add_argument("--report", type=nonempty_path, default=None, help="also write the accuracy JSON here (e.g. a DVC metrics file)")
    _add_param_args(q, progress_help=(
        "no progress bar and no step lines (default: a bar on stderr for camera-size pairs when it is a terminal; "
        f"each step of a pair of {STEP_LINES_MIN_PIXELS / 1e6:g} megapixels or more in all named as it starts, there "
        "and in a log after the time: reading, the fusion's steps, writing its maps and the PNG)"))
    q.set_defaults(func=_cmd_fuse_set)

    _register_fuse_dir(subparsers)


def _cmd_fuse_dir(args: argparse.Namespace) -> int:
    params, other = params_from_args(args)
    check_net_options(args, args.model)  # before torch's import
    src, out = Path(args.input), Path(args.output)
    if not src.is_dir():
        raise UserError(f"{src}: not a folder")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: is a file, not a folder")
    ext = args.ext.lower().lstrip(".")
    from bafusion.io import output_format_problem
    from bafusion.preflight import IMAGE_OUTPUT_SUFFIXES

    if f".{ext}" not in IMAGE_OUTPUT_SUFFIXES:
        from bafusion.preflight import read_not_written

        why = read_not_written(f".{ext}", "bafusion fuse-dir") if ext else None
        raise UserError(f"--ext {args.ext}: {why + ': ' if why else ''}use png, tif (tiff), bmp, jpg (jpeg) or webp")
    why = output_format_problem(f"x.{ext}")  # a Pillow without WebP: before any work
    if why:
        raise UserError(f"--ext {args.ext}: {why}")
    _check_quality(Path(f"x.{ext}"), args.quality, named=False)  # the refusal names --ext's suffix
    if out.resolve() == src.resolve():
        raise UserError(f"{out}: the output folder must not be the input folder")
    notes: list[tuple[str, list[Path], str | None]] = []
    groups, skipped = find_groups(src, exclude=out, notes=notes)
    stacks = sum(len(shots) > 2 for shots in groups.values())
    if args.stack_rule is not None and groups and not stacks:  # as fuse-set says it
        print(f"bafusion fuse-dir: note: --stack-rule {args.stack_rule} changes nothing: {src} holds pairs only, "
              "which the pair rule fuses, and the stack rule is for stacks of three or more shots", file=sys.stderr)
    if stacks and params.stack_rule == "joint" and getattr(args, "symmetric_regions", None):  # as fuse says it
        print(f"bafusion fuse-dir: note: --symmetric-regions changes nothing with --stack-rule joint for the {stacks} "
              "stack(s) of 3 or more shots: the joint rule judges every region of its shot-index map alike already "
              "(it is for the pairs and the chain rule's steps)", file=sys.stderr)
    check_output_folder(src, out, groups)  # before the nets load; fuse_dir checks again
    from bafusion.fusion.batch import check_some_stack

    check_some_stack(src, groups, skipped, notes)  # an empty folder: before torch's import; fuse_dir checks again
    if not args.skip_existing:  # with it, fuse_dir says first whether the folder's setup is this one
        check_replaced(src, out, [out / f"{name}.{ext}" for name in groups])
    if args.save_registered is not None:  # before the nets load; fuse_dir checks again
        from bafusion.fusion.batch import check_registered_folder

        check_registered_folder(src, out, groups, Path(args.save_registered))
    from bafusion.fusion.batch import BatchReport, header_skips

    # every image skipped (one shot, names outside the rule; no stack: []) or every stack's shots
    # unreadable from their headers (missing, damaged, sizes that differ): listed as fuse_dir lists
    # them, exit 4, without loading the nets (7.8-28 s at load 9-10), nor torch unless --device needs it
    # With --skip-existing, a record in OUT (of another setup, or unreadable) is refused by fuse_dir
    # before any work, as documented; telling its setup takes the nets (their sha256): that way, then
    from bafusion.fusion.batch import OUTPUT_MARKER

    recorded = args.skip_existing and bool(groups) and os.path.lexists(out / OUTPUT_MARKER)
    failing = None if recorded else header_skips(
        groups, align=args.align or "none", kept=lambda name: args.skip_existing and (out / f"{name}.{ext}").exists())
    check_device_of(other)  # the inputs first: a device other than cpu and auto imports torch
    if failing is not None:
        return _say_batch(BatchReport(skipped=[*skipped, *failing]), src, out, args, notes)
    set_threads(other)
    from bafusion.fusion.models import resolve_device

    resolve_device(other["device"], "--device")
    from bafusion import tracking
    from bafusion.cli.app import on_stop_say
    from bafusion.fusion.batch import BatchReport, _same_quality, model_identity

    # Logged as fuse-set is, under the same switch (tracking.enabled): the params, the nets used
    # (their sha256) and the counts; the folders and the options params.yaml has no key for as tags.
    # The quality as OUT's record holds it (a jpg's --quality 95 is its default: the same bytes)
    quality = _same_quality(ext, args.quality)
    tags = {"input": src, "output": out, "ext": ext, "quality": "default" if quality is None else quality,
            "align": args.align or "none", "force": args.force, "skip_existing": args.skip_existing}
    with tracking.stage_run("fuse-dir", {"fuse": asdict(params)}, tags=tags) as run:
        nets = nets_from_args(args, other["device"], args.model)
        tracking.log_nets(run, model_identity(nets))
        on_stop_say(lambda: f"rerun {'the same command' if args.skip_existing else 'it with --skip-existing'}: the "
                    f"stacks fused into {out} are kept, the others are fused then")
        # filled as the batch goes: a batch stopped by a signal logs what it did too (its run, KILLED,
        # had only its duration, though stacks were fused and listed in OUT's record)
        rep = BatchReport()
        try:
            fuse_dir(src, out, nets, params, ext=ext, quality=args.quality, align=args.align or "none",
                     force=args.force, skip_existing=args.skip_existing, progress=args.progress is not False,
                     motion_hint=args.align is None, report=rep,
                     save_registered=None if args.save_registered is None else Path(args.save_registered))
        finally:
            run.log_metrics({"stacks_fused": len(rep.fused), "stacks_existing": len(rep.existing),
                             "stacks_skipped": len(rep.skipped)})
        if rep.stopped:
            run.set_tag("stopped", rep.stopped)
    return _say_batch(rep, src, out, args)


def _say_batch(rep: Any, src: Path, out: Path, args: argparse.Namespace,
               notes: list[tuple[str, list[Path], str | None]] | None = None) -> int:
    """``fuse-dir``'s end: the files not read, the stacks skipped with their reasons and the
    counts, then its exit status (:attr:`bafusion.fusion.batch.BatchReport.exit_code`). ``notes``:
    :func:`~bafusion.fusion.batch.find_groups`' files not read, for a batch that fused nothing
    (said before the nets load, where its report holds no notes yet)."""
    if notes is not None:
        from bafusion.fusion.batch import unread_notes

        rep.notes = unread_notes(notes, rep)
    for where, line in rep.notes:  # RAW and HEIC files not read, where no stack was skipped for them
        print(f"bafusion fuse-dir: {where}: {line}", file=sys.stderr)
    for what, why in skip_lines(rep.skipped):  # the images outside the naming rule in one line
        print(f"bafusion fuse-dir: skipped {escape_controls(what)}: {escape_controls(why)}", file=sys.stderr)
    print(f"fused {len(rep.fused)} stack(s) into {out}" + (f", {len(rep.existing)} already there" if rep.existing else "")
          + (f", skipped {len(rep.skipped)} (listed on stderr)" if rep.skipped else ""))
    if notes is not None:
        print(f"bafusion fuse-dir: {src}: nothing to fuse: each of its stacks and images was skipped (listed above), so "
              "the nets were not loaded", file=sys.stderr)
    if args.save_registered is not None and rep.fused:
        ext = args.ext.lower().lstrip(".")
        print(f"bafusion fuse-dir: registered sources: {Path(args.save_registered) / '<name>-registered1.png'}, "
              f"-registered2.png, ... for each stack fused (bafusion metrics scores {out / f'<name>.{ext}'} "
              "against them)", file=sys.stderr)
    if rep.stopped:
        print(f"bafusion fuse-dir: error: {rep.stopped}", file=sys.stderr)
    return rep.exit_code


def _register_fuse_dir(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fuse-dir`` to the ``bafusion`` command."""
    p = subparsers.add_parser(
        "fuse-dir",
        help="fuse every pair / focal stack of a folder",
        description="Fuse every stack of IN into OUT/<name>.<ext>. Naming rule: files <name>-A.<ext>, <name>-B.<ext>, "
        "(-C, ...) are one stack, in letter order; each sub-folder of IN is one stack (its images in name order). "
        "What cannot be fused (one shot, a name outside the rule, an unreadable file, sizes that differ, shots "
        "of two scenes) is skipped and listed at the end, and camera RAW and HEIC files, which are not read, are "
        f"named there (one line per folder). Exit status: 0 all fused, {EXIT_SKIPPED} some skipped "
        f"(the others fused), {EXIT_NONE_FUSED} all skipped (nothing fused), 2 bad usage, a full disk (the batch "
        "stops; rerun with --skip-existing) or a standard output that cannot be written (said on stderr; the batch "
        "goes on). Only fuse-dir's own outputs of the same IN are replaced: a file in OUT "
        "named like an output that OUT/.bafusion-fuse-dir does not record as fused from this IN (a file of yours, "
        "another folder's outputs) is refused before any work; an output that is a link to a shot is not written "
        "through (its stack is skipped).",
        epilog=METADATA_EPILOG,
    )
    p.add_argument("input", metavar="IN", type=nonempty_path, help="folder of shots")  # '' is not '.'
    p.add_argument("output", metavar="OUT", type=nonempty_path, help="output folder")
    p.add_argument("--ext", default="png", help="output format: png (default), tif (or tiff), bmp, jpg (or jpeg) or webp "
                   "(lossless unless --quality)")
    p.add_argument("--quality", type=int, default=None, metavar="Q",
                   help="lossy quality 1-100 of jpg/jpeg (default 95) or webp outputs (default: lossless); refused for "
                   "png, tif/tiff and bmp")
    p.add_argument("--model", "--models", dest="model", action=ModelOption, type=nonempty_path, default=None, metavar="DIR",
                   help=MODEL_HELP)
    p.add_argument("--initial", type=nonempty_path, default=None, help="initial-net file (instead of --model)")
    p.add_argument("--boundary", type=nonempty_path, default=None, help="boundary-net file (instead of --model)")
    p.add_argument("--align", choices=ALIGN_MODELS, default=None,
                   help="as for bafusion fuse: a model registers every stack's shots to its first; auto: align "
                   f"(similarity) only the stacks whose shots move more than {HINT_MOTION_PX:g} px; none: take "
                   "them as registered; not given: as none, plus a hint on stderr for the stacks that move")
    p.add_argument("--force", action="store_true", help="fuse even shots that do not look like one scene")
    p.add_argument("--save-registered", type=nonempty_path, default=None, metavar="DIR",
                   help="as for bafusion fuse, for each stack fused: its shots as fused to DIR/<name>-registered1.png, "
                   "-registered2.png, ... (lossless, at the fusion's depth; with --align registered and cropped like "
                   "OUT/<name>.<ext>), which bafusion metrics scores it against; DIR may be OUT, not IN nor a "
                   "sub-folder of IN; with --skip-existing a stack whose files there are missing is fused again")
    p.add_argument("--skip-existing", action="store_true",
                   help="leave stacks whose output exists (resume a batch); OUT/.bafusion-fuse-dir records the "
                   "model, parameters, --align, --ext, version and fusion code (a digest of its sources) that made "
                   "the outputs, and a folder of another setup (an upgrade too; or of none recorded) is refused; "
                   "a stack whose shots changed since (it records each output's shots) is fused again")

    _add_param_args(p, maps=False, progress_help=(
        "no progress bar and no lines per stack (default: on a terminal a bar over the stacks, each stack's own "
        f"fusion bar from {PROGRESS_MIN_PIXELS / 1e6:g} megapixels a shot, the steps of a stack of three or more "
        "shots, and the steps around a stack's fusion (reading, checking, aligning, writing) where its shots hold "
        f"{STEP_LINES_MIN_PIXELS / 1e6:g} megapixels or more in all (in a smaller one, its aligning only); without a terminal one line per stack, the "
        "steps of a stack of three or more shots, and those steps around the fusion of a stack of "
        f"{STEP_LINES_MIN_PIXELS / 1e6:g} megapixels or more in all, after the local time)"))
    p.set_defaults(func=_cmd_fuse_dir)
