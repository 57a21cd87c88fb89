"""Subcommands of the data pipeline: prepare, composite, composite-index, testset, patches,
count and preset. Each is a thin call of the step's module, logged as an MLflow run."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from bafusion import tracking
from bafusion.atomic import write_text
from bafusion.cli.common import (add_threads_argument, non_negative_int, nonempty_path, positive_int, seed_int,
                                 user_path)
from bafusion.errors import InputFileError, UserError, json_loads


def _progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "no_progress", False)


def _boundary_per_pair(s: str) -> int | str:
    """``--boundary-per-pair``: a count >= 0, or ``subset``."""
    if s == "subset":
        return s
    try:
        n = int(s)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be a count >= 0 or subset, got {s!r}")
    return n


def _csv_list(s: str) -> list[str]:
    return [x for x in (t.strip() for t in s.split(",")) if x]


def cmd_prepare(args: argparse.Namespace) -> int:
    from bafusion.data.prepare import MANIFEST, PrepareOptions, run_prepare

    if args.source == "dir" and not (args.alphamatting and args.backgrounds_dir):
        missing = " and ".join(f for f, v in (("--alphamatting", args.alphamatting),
                                              ("--backgrounds-dir", args.backgrounds_dir)) if not v)
        raise UserError(f"--source dir needs {missing} (params.yaml: data.dir.alphamatting, data.dir.backgrounds)")
    # the other source's options were ignored in silence: --alphamatting without --source dir
    # composited scikit-image's photos, not the user's
    others = {"builtin": (("--alphamatting", args.alphamatting), ("--backgrounds-dir", args.backgrounds_dir)),
              "dir": (("--builtin-foregrounds", args.builtin_foregrounds),
                      ("--builtin-backgrounds", args.builtin_backgrounds))}[args.source]
    unused = [flag for flag, value in others if value]
    if unused:
        other = "dir" if args.source == "builtin" else "builtin"
        fix = "add --source dir" if other == "dir" else f"leave {'it' if len(unused) == 1 else 'them'} out"
        raise UserError(f"{' and '.join(unused)} {'is' if len(unused) == 1 else 'are'} used only with --source {other}, "
                        f"not with --source {args.source}{' (the default)' if args.source == 'builtin' else ''}: "
                        f"{fix}")
    data_cfg: dict[str, Any] = {
        "source": args.source,
        "foregrounds": args.foregrounds,
        "backgrounds": args.backgrounds,
        "holdout_foregrounds": args.holdout_foregrounds,
        "holdout_backgrounds": args.holdout_backgrounds,
        "builtin": {"foregrounds": _csv_list(args.builtin_foregrounds), "backgrounds": _csv_list(args.builtin_backgrounds)},
        # as written: the manifest names the files so (the same in a DVC experiment's copy of the
        # project, whose ../shared/... sources.select reads from the workspace)
        "dir": {"alphamatting": args.alphamatting, "backgrounds": args.backgrounds_dir},
    }
    opts = PrepareOptions(scale=args.scale, min_background_side=args.min_background_side)
    with tracking.stage_run("prepare", _prepare_run_params(args.seed, data_cfg, opts)) as run:
        m = run_prepare(data_cfg, opts, args.seed, Path(args.out), progress=_progress(args))
        counts = {
            f"{k}_{s}": sum(1 for e in m[k] if e["split"] == s) for k in ("foregrounds", "backgrounds") for s in ("train", "test")
        }
        run.log_metrics(counts)
    # what was done, in words (the counts are the manifest's, MANIFEST in --out: what a program should read)
    print(f"{counts['foregrounds_train']} foregrounds and {counts['backgrounds_train']} backgrounds for "
          f"training, {counts['foregrounds_test']} and {counts['backgrounds_test']} held out for the test "
          f"set -> {args.out} (listed in {Path(args.out) / MANIFEST})")
    return 0


def _prepare_run_params(seed: int, data_cfg: dict[str, Any], opts: Any) -> dict[str, Any]:
    """The MLflow params of ``prepare``, under params.yaml's keys (``seed``, ``data.source``,
    ``prepare.scale``, ...): of ``data.builtin`` and ``data.dir`` only the source's own, which
    prepare was given (the other source's, empty here, were logged as ``""`` where params.yaml
    holds its paths)."""
    other = "dir" if data_cfg["source"] == "builtin" else "builtin"
    return {"seed": seed, "data": {k: v for k, v in data_cfg.items() if k != other}, "prepare": vars(opts)}


def _patches_run_params(opts: Any) -> dict[str, Any]:
    """The MLflow params of ``patches``, under params.yaml's keys: ``patch`` and ``seed`` are
    top-level keys there (they were also logged as ``patches.patch`` and ``patches.seed``)."""
    return {"patch": opts.patch, "seed": opts.seed,
            "patches": {k: v for k, v in vars(opts).items() if k not in ("patch", "seed")}}


def _composite_opts(args: argparse.Namespace):
    from bafusion.data.composite import CompositeOptions, Realism

    try:
        realistic = json_loads(args.realistic or "{}")
    except ValueError as e:
        raise UserError(f"--realistic must be a JSON object (composite.realistic), got {args.realistic!r}: {e}") from e
    if not isinstance(realistic, dict):
        raise UserError(f"--realistic must be a JSON object (composite.realistic), got {args.realistic!r}")
    return CompositeOptions(
        sigma=(args.sigma[0], args.sigma[1]), fit=args.fit, seed=args.seed, realistic=Realism.from_mapping(realistic)
    )


def _composite_params(opts) -> dict:
    d = {"sigma": list(opts.sigma), "fit": opts.fit}
    if opts.realistic.active:
        d["realistic"] = opts.realistic.as_dict()
    return d


def cmd_composite(args: argparse.Namespace) -> int:
    from bafusion.data.composite import run_shard

    if args.shards < 1:  # "shard 0 is not in 0..-1" puzzled
        raise UserError(f"--shards {args.shards}: give the number of shards, at least 1")
    if not 0 <= args.shard < args.shards:
        raise UserError(f"--shard {args.shard}: give a shard from 0 to {args.shards - 1} (--shards {args.shards}; "
                        "shards count from 0)")
    opts = _composite_opts(args)
    params = {"composite": {**_composite_params(opts), "shards": args.shards}, "seed": args.seed}
    with tracking.stage_run("composite", params, tags={"shard": args.shard},
                            run_name=f"composite shard {args.shard + 1}/{args.shards}") as run:
        t0 = time.perf_counter()
        n = run_shard(Path(args.prepared), args.shard, args.shards, opts, Path(args.out), progress=_progress(args))
        dt = time.perf_counter() - t0
        run.log_metrics({"pairs": n, "pairs_per_s": n / dt if dt > 0 else 0.0})
    print(f"shard {args.shard}/{args.shards}: {n} pairs -> {args.out}")
    return 0


def cmd_composite_index(args: argparse.Namespace) -> int:
    from bafusion.data.composite import write_index

    index = write_index([Path(f) for f in args.shards], Path(args.out))
    print(f"{index['pairs']} composited pairs in {len(index['shards'])} shards")
    return 0


def cmd_testset(args: argparse.Namespace) -> int:
    from bafusion.data.composite import make_testset

    opts = _composite_opts(args)
    with tracking.stage_run("testset", {"composite": _composite_params(opts), "seed": args.seed}) as run:
        index = make_testset(Path(args.prepared), opts, Path(args.out), progress=_progress(args))
        run.log_metric("pairs", len(index["pairs"]))
    print(f"{len(index['pairs'])} test pairs -> {args.out}")
    return 0


def cmd_patches(args: argparse.Namespace) -> int:
    from bafusion.data.patches import PatchOptions, run_patches

    opts = PatchOptions(
        patch=args.patch,
        per_pair=args.per_pair,
        boundary_per_pair=args.boundary_per_pair,
        min_focused=args.min_focused,
        min_defocused=args.min_defocused,
        label_threshold=args.label_threshold,
        val_fraction=args.val_fraction,
        seed=args.seed,
        context=args.context,
    )
    with tracking.stage_run("patches", _patches_run_params(opts)) as run:
        t0 = time.perf_counter()
        summary = run_patches([Path(f) for f in args.shards], opts, Path(args.out), progress=_progress(args),
                              compress=not args.no_compression, threads=args.threads)
        dt = time.perf_counter() - t0
        flat = {k.replace(".", "_"): v for k, v in tracking.flatten(summary).items() if isinstance(v, (int, float))}
        flat["pairs_per_s"] = summary["pairs"] / dt if dt > 0 else 0.0
        run.log_metrics(flat)
    if args.summary:
        write_text(args.summary, json.dumps(summary, indent=1, sort_keys=True) + "\n")
    c = summary["counts"]
    print(
        f"{summary['pairs']} pairs ({summary['val_pairs']} for validation): "
        f"initial {c['initial']['train']}+{c['initial']['val']}, boundary {c['boundary']['train']}+{c['boundary']['val']} "
        f"patches (x{summary['augmentation_factor']} augmented on the fly)")
    return 0


def cmd_count(args: argparse.Namespace) -> int:
    from bafusion.config import apply_preset, load_params, load_preset
    from bafusion.data.counts import count_samples

    preset = load_preset(args.preset) if args.preset else None  # an unknown name before a missing params file
    if args.params is None:
        if not Path("params.yaml").exists():
            raise InputFileError("params.yaml", "params file not found (default --params params.yaml; run in the "
                                 "project folder or pass --params)")
        args.params = "params.yaml"
    params = load_params(args.params)
    if preset is not None:
        params = apply_preset(params, preset)
    c = count_samples(params)
    if args.format == "json":
        print(json.dumps(c, indent=1))
        return 0
    print(f"foregrounds:        {c['foregrounds']:,}")
    print(f"backgrounds:        {c['backgrounds']:,}")
    print(f"pairs:              {c['pairs']:,}")
    print(f"base patches:       {c['base_patches']:,} ({c['patches_per_pair']} per pair)")
    print(f"effective samples:  {c['effective_samples']:,} (x{c['augmentation_factor']} augmentation; training and "
          "validation pairs together)")
    train = (f"training:           {c['train_effective_samples']:,} ({c['train_pairs']:,} pairs x "
             f"{c['patches_per_pair']} x {c['augmentation_factor']}): an epoch of the initial net")
    per_epoch = int((params.get("train", {}) or {}).get("samples_per_epoch", 0) or 0)
    if 0 < per_epoch < c["train_effective_samples"]:
        train += f" draws {per_epoch:,} of them (train.samples_per_epoch)"
    print(train)
    section = params.get("train", {}) or {}
    bn = {n: int(((section.get(n) or {}).get("bn_recalibrate", section.get("bn_recalibrate", 0))) or 0)
          for n in ("initial", "boundary")}
    if any(bn.values()):
        how = (f"{bn['initial']:,}" if bn["initial"] == bn["boundary"] else
               f"{bn['initial']:,} (initial net) / {bn['boundary']:,} (boundary net)")
        print(f"BatchNorm:          statistics re-estimated on {how} augmented training samples before each "
              "validation, weights frozen (train.bn_recalibrate)")
    val_fraction = float((params.get("patches", {}) or {}).get("val_fraction", 0.15))
    print(f"validation:         {c['val_pairs']:,} pairs held out (patches.val_fraction {val_fraction:g}): "
          f"{c['val_patches']:,} patches, scored without augmentation")
    if c.get("boundary_subset"):
        print(f"boundary patches:   at most {c['boundary_patches_at_most']:,} (the random patches with at least "
              f"{c['boundary_min_focused']:g} focused and {c['boundary_min_defocused']:g} defocused pixels; "
              "how many pass depends on the mattes: about 37% on the paper's 27 halved mattes at patch 64)")
    else:
        print(f"boundary patches:   at most {c['boundary_patches_at_most']:,}")
    if c.get("note"):
        print(f"note: {c['note']}")
    return 0


def cmd_preset(args: argparse.Namespace) -> int:
    from bafusion.config import apply_overrides_to_file, dvc_set_args, load_preset

    preset = load_preset(args.name)
    if args.apply and args.format is not None:
        raise UserError("--format chooses how the preset is printed; with --apply it is written into the file")
    if args.apply:
        if not Path(args.apply).exists():
            raise InputFileError(args.apply, "params file not found (--apply writes into the pipeline's params file: "
                                 "run in the project folder or pass its path)")
        from bafusion.cli.params_check import check_params, warn_missing_keys
        from bafusion.schema import validate_params

        # the pipeline's params file (the name the Snakefile reads), not an override file:
        # the keys it lacks take the library defaults
        whole = "params.yaml" in (Path(args.apply).name, Path(args.apply).resolve().name)

        def check(params: dict, source: str) -> None:
            check_params(validate_params(params, source), source)
            if whole:
                warn_missing_keys(params, source)

        apply_overrides_to_file(args.apply, preset, check=check)
        print(f"applied preset {args.name!r} to {args.apply}", file=sys.stderr)
        return 0
    if args.format == "yaml":
        import yaml

        print(yaml.safe_dump(preset, sort_keys=False), end="")
    else:
        print(" ".join(dvc_set_args(preset)))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--seed", type=seed_int, default=0, help="random seed (params: seed; default %(default)s)")
    common.add_argument("--no-progress", "--quiet", dest="no_progress", action="store_true", help="no progress bars")

    p = sub.add_parser("prepare", parents=[common], help="resize foregrounds + mattes, check backgrounds, write a manifest")
    p.add_argument("--source", choices=["builtin", "dir"], default="builtin",
                   help="where the photos come from: builtin (scikit-image's, offline; --builtin-*) or dir "
                        "(--alphamatting and --backgrounds-dir folders; what data.source web downloads into) "
                        "(default %(default)s)")
    p.add_argument("--foregrounds", type=non_negative_int, default=0, help="at most this many training foregrounds (0 = all)")
    p.add_argument("--backgrounds", type=non_negative_int, default=0, help="at most this many training backgrounds (0 = all)")
    p.add_argument("--holdout-foregrounds", type=non_negative_int, default=0,
                   help="foregrounds held back for the test set (bafusion testset), not trained on "
                        "(default 0, the paper's; params.yaml sets 2)")
    p.add_argument("--holdout-backgrounds", type=non_negative_int, default=0,
                   help="backgrounds held back for the test set, with --holdout-foregrounds "
                        "(default 0, the paper's; params.yaml sets 2)")
    p.add_argument("--builtin-foregrounds", default="", help="comma-separated skimage.data names (source builtin)")
    p.add_argument("--builtin-backgrounds", default="", help="comma-separated skimage.data names (source builtin)")
    p.add_argument("--alphamatting", type=user_path, default="", help="folder with input/ and gt/ (source dir)")
    p.add_argument("--backgrounds-dir", type=user_path, default="", help="folder of background photos (source dir)")
    p.add_argument("--scale", type=float, default=0.5,
                   help="factor the foregrounds and mattes are resized by (default %(default)s: halved, the paper's)")
    p.add_argument("--min-background-side", type=positive_int, default=64,
                   help="a background whose shorter side is below this many pixels is an error (default %(default)s)")
    p.add_argument("-o", "--output", "--out", dest="out", type=nonempty_path, required=True, help="output folder (e.g. data/prepared)")
    p.set_defaults(func=cmd_prepare)

    def comp_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--prepared", required=True, help="the prepare step's folder")
        q.add_argument("--sigma", type=float, nargs=2, default=[1.0, 3.0], metavar=("LO", "HI"),
                       help="Gaussian blur sigma range in pixels, drawn uniformly per pair (default 1.0 3.0)")
        q.add_argument("--fit", choices=["cover", "stretch"], default="cover",
                       help="background to foreground size: cover (scale, then centre crop) or stretch "
                            "(default %(default)s)")
        q.add_argument("--realistic", default="", metavar="JSON",
                       help="composite.realistic as a JSON object (real-camera degradations; {} = the paper's pairs)")

    p = sub.add_parser("composite", parents=[common], help="composite the pairs of one shard into HDF5")
    comp_args(p)
    p.add_argument("--shard", type=int, required=True,
                   help="which shard to make, 0 to --shards - 1 (foregrounds are split round-robin)")
    p.add_argument("--shards", type=int, required=True,
                   help="number of shards (parallel jobs) the foregrounds are split into (params: composite.shards)")
    p.add_argument("-o", "--output", "--out", dest="out", type=nonempty_path, required=True,
                   help="HDF5 file of the shard's pairs to write (e.g. data/composite/shard-0.h5)")
    p.set_defaults(func=cmd_composite)

    p = sub.add_parser("composite-index", help="summarise composite shards into a JSON index")
    p.add_argument("shards", nargs="+", type=nonempty_path, help="composite shard files (.h5) to summarise")
    p.add_argument("-o", "--output", "--out", dest="out", type=nonempty_path, required=True,
                   help="JSON index file to write (e.g. data/composite/index.json)")
    p.set_defaults(func=cmd_composite_index)

    p = sub.add_parser("testset", parents=[common], help="composite the held-out pairs in colour, with their truth")
    comp_args(p)
    p.add_argument("-o", "--output", "--out", dest="out", type=nonempty_path, required=True,
                   help="output folder of the test pairs, their truth and index.json (e.g. data/testset)")
    p.set_defaults(func=cmd_testset)

    p = sub.add_parser("patches", parents=[common], help="sample labelled two-channel patches into HDF5")
    p.add_argument("shards", nargs="+", type=nonempty_path, help="composite shard files")
    p.add_argument("--patch", type=int, default=32,
                   help="patch side in pixels, a multiple of 4, at least 8 (default %(default)s, as params.yaml; "
                        "the paper's 64)")
    p.add_argument("--per-pair", type=positive_int, default=10,
                   help="random patches per pair, labelled by the matte at their centre, at least 1 "
                        "(default 10, the paper's; params.yaml sets 40)")
    p.add_argument("--boundary-per-pair", type=_boundary_per_pair, default=10, metavar="N|subset",
                   help="boundary patches drawn per pair where a patch holds both focused and defocused pixels, "
                        "or subset: the random patches that pass that test (the paper's) (default 10; params.yaml "
                        "sets 40)")
    p.add_argument("--min-focused", type=float, default=0.1,
                   help="a boundary patch holds at least this fraction of focused pixels (default %(default)s, "
                        "the paper's)")
    p.add_argument("--min-defocused", type=float, default=0.1,
                   help="... and at least this fraction of defocused pixels (default %(default)s, the paper's)")
    p.add_argument("--label-threshold", type=float, default=0.5,
                   help="matte value at or above which a pixel is focused in A (default %(default)s)")
    p.add_argument("--val-fraction", type=float, default=0.15,
                   help="share of the pairs (not patches) held out for validation (default %(default)s, the paper's)")
    p.add_argument("--context", type=int, default=0,
                   help="pixels of surroundings stored on every side of each patch (multiple of 4; 0: the patch alone)")
    p.add_argument("-o", "--output", "--out", dest="out", type=nonempty_path, required=True, help="output folder for initial.h5 and boundary.h5")
    p.add_argument("--no-compression", action="store_true",
                   help="store without gzip: about 1.8x the disk, written about 6x faster (scratch patch sets)")
    add_threads_argument(p, "threads that deflate the patch chunks while pairs are read (the files are identical "
                         "for any number)", "1", value=1)
    p.add_argument("--summary", type=nonempty_path, help="also write the counts as JSON here")
    p.set_defaults(func=cmd_patches)

    p = sub.add_parser("count", help="count pairs and samples a configuration makes, without making them")
    p.add_argument("--params-file", "--params", dest="params", type=nonempty_path, default=None, metavar="FILE",
                   help="params file to count (default: params.yaml of the current folder, the project's)")
    p.add_argument("--preset", help="apply a preset first (e.g. paper)")
    p.add_argument("--format", choices=["text", "json"], default="text",
                   help="text (lines for a reader) or json (the counts as one JSON object) (default %(default)s)")
    p.set_defaults(func=cmd_count)

    p = sub.add_parser("preset", help="print a preset as `dvc exp run -S` arguments, or apply it to params.yaml")
    p.add_argument("name", help="preset name (paper, real)")
    p.add_argument("--apply", type=nonempty_path, metavar="PARAMS", help="write the preset into this params file (comments kept)")
    p.add_argument("--format", choices=["dvc", "yaml"], default=None,
                   help="how to print it: dvc (`-S key=value` arguments, the default) or yaml; not with --apply")
    p.set_defaults(func=cmd_preset)
