"""``bafusion train``: argument parsing and the multi-process launch; the training is :mod:`bafusion.nets.train`."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bafusion.config import read_params
from bafusion.errors import UserError
from bafusion.nets.train import (
    NETS,
    Paths,
    TrainConfig,
    default_paths,
    dist_from_env,
    resolve_nproc,
    train,
)

# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train", help="train the initial or the boundary net on a patch set",
        description="Train the initial net (on data/patches/initial.h5) or the boundary net (on "
                    "data/patches/boundary.h5). An interrupted run resumes from --checkpoints/last.pt (for the "
                    "same parameters and patch set); the checkpoint of a finished run (one that wrote its model) "
                    "is not resumed: the training starts from scratch.")
    p.add_argument("--net", required=True, choices=NETS)
    p.add_argument("--patches", required=True, help="HDF5 patch set (from the 'patches' step)")
    p.add_argument("--out", required=True, help="model file to write (.pt, with a .json beside it)")
    p.add_argument("--params", default=None, help="parameter file (params.yaml)")
    p.add_argument("--params-json", default=None, help="parameters as a JSON object (wins over --params)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one parameter, e.g. --set train.epochs=2 (repeatable)")
    p.add_argument("--checkpoints", default=None, help="checkpoint folder (default data/checkpoints/<net>)")
    p.add_argument("--metrics", default=None, help="metrics JSON (default metrics/train_<net>.json)")
    p.add_argument("--plots", default=None, help="per-epoch CSV (default metrics/plots/train_<net>.csv)")
    p.add_argument("--device", default=None, help="override train.device (auto, cpu, cuda, cuda:1, mps)")
    p.add_argument("--threads", type=int, default=None, help="override train.threads (torch CPU threads per process)")
    p.add_argument("--nproc", default=None, help="override train.nproc (processes; 'auto' = number of GPUs)")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint and start afresh")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_cli)

    q = subparsers.add_parser(
        "ensemble", help="join trained nets into one net that averages their logits",
        description="Join two or more trained nets of one architecture and patch side (e.g. initial nets "
                    "trained from other seeds or data) into one model file whose logits are the mean of "
                    "theirs (bafusion.nets.model.ensemble: grouped convolutions; 2.6x the trunk time of one net "
                    "for two members on a CPU, BENCHMARKS.md). Use it as --initial or as initial.pt of a model folder.")
    q.add_argument("members", nargs="+", help="model files (.pt with their .json)")
    q.add_argument("--out", required=True, help="model file to write (.pt, with a .json beside it)")
    q.set_defaults(func=run_ensemble)


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    if args.params is None and args.params_json is None and Path("params.yaml").is_file():
        print("bafusion train: note: no --params given, so the built-in defaults (and any --set) apply; "
              "./params.yaml is not read (pass --params params.yaml to use it)", file=sys.stderr)
    params = read_params(args.params, [("--params-json", args.params_json, None)], args.overrides)
    cfg = TrainConfig.from_params(params, args.net)
    if args.device is not None:
        cfg.device = args.device
    if args.threads is not None:
        if args.threads < 0:
            raise UserError(f"--threads {args.threads}: give 0 (all cores) or a positive number of CPU threads")
        cfg.threads = int(args.threads)
    if args.nproc is not None:
        cfg.nproc = args.nproc
    return cfg


def _relaunch_argv(args: argparse.Namespace, nproc: int, threads: int) -> list[str]:
    # (No --nproc: the children see WORLD_SIZE and never re-launch; and torchrun's argument
    # parser would take "--nproc" for an abbreviation of its own --nproc-per-node.)
    argv = ["train", "--net", args.net, "--patches", args.patches, "--out", args.out]
    for opt in ("params", "params_json", "checkpoints", "metrics", "plots", "device"):
        v = getattr(args, opt)
        if v is not None:
            argv += [f"--{opt.replace('_', '-')}", str(v)]
    if threads > 0:  # the threads are shared by the processes
        argv += ["--threads", str(max(1, threads // nproc))]
    for o in args.overrides:
        argv += ["--set", o]
    if args.no_resume:
        argv.append("--no-resume")
    if args.no_progress:
        argv.append("--no-progress")
    return argv


def run_cli(args: argparse.Namespace) -> int:
    cfg = _config_from_args(args)
    if Path(args.out).suffix != ".pt":
        # the description goes to <out>.json: with --out X.json it overwrote the weights
        raise UserError(f"--out {args.out}: give the model file a .pt suffix (its description is written "
                        "beside it as .json)")
    nproc = resolve_nproc(cfg.nproc, cfg.device)
    if nproc > 1 and cfg.batch % nproc:  # checked by each child too, after torchrun started them
        raise UserError(f"train.batch={cfg.batch} must be divisible by the number of processes ({nproc})")
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        # Re-launch under torchrun; the children see WORLD_SIZE and train.
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "bafusion.cli", *_relaunch_argv(args, nproc, cfg.threads)]
        env = dict(os.environ)
        if cfg.threads <= 0:
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
        return subprocess.run(cmd, env=env).returncode
    if "WORLD_SIZE" in os.environ:
        cfg.nproc = int(os.environ["WORLD_SIZE"])
    base = default_paths(args.net, args.out)
    paths = Paths(
        out=base.out,
        checkpoints=Path(args.checkpoints) if args.checkpoints else base.checkpoints,
        metrics=Path(args.metrics) if args.metrics else base.metrics,
        plots=Path(args.plots) if args.plots else base.plots,
    )
    summary = train(args.net, args.patches, cfg, paths, resume=not args.no_resume, progress=not args.no_progress)
    if dist_from_env().main:
        print(f"bafusion train: {args.net}: best val acc {summary['val_acc']} at epoch {summary['best_epoch']}, "
              f"model {paths.out}", file=sys.stderr)
    return 0


def run_ensemble(args: argparse.Namespace) -> int:
    import hashlib

    from bafusion.nets.model import ModelFileError, ensemble, load_model, save_model

    if len(args.members) < 2:
        raise UserError(f"an ensemble needs at least two model files, got {len(args.members)}")
    out = Path(args.out)
    if out.suffix != ".pt":
        raise UserError(f"--out {out}: a model file ends in .pt (its description is written beside it as .json)")
    written = {out.resolve(), out.with_suffix(".json").resolve()}
    for m in args.members:
        if {Path(m).resolve(), Path(m).with_suffix(".json").resolve()} & written:
            raise UserError(f"--out {out}: would overwrite the member {m} or its .json; choose another name")
    digests: dict[str, str] = {}
    for m in args.members:
        try:
            d = hashlib.sha256(Path(m).read_bytes()).hexdigest()
        except OSError:
            continue  # load_model names a missing or unreadable file below
        if d in digests:
            raise UserError(f"{m}: the same net as the member {digests[d]} (identical file); an ensemble averages "
                            "distinct nets")
        digests[d] = m
    nets, metas = [], []
    for m in args.members:
        try:
            net, meta = load_model(m)
        except ModelFileError as e:
            raise UserError(str(e)) from e
        nets.append(net)
        metas.append(meta)
    for meta in metas:  # older files name the patch side patch_size
        if "patch" not in meta and "patch_size" in meta:
            meta["patch"] = meta["patch_size"]
    for key in ("patch", "input_scale", "net"):
        values = {str(meta.get(key)) for meta in metas}
        if len(values) > 1:
            raise UserError(f"{', '.join(args.members)}: the members differ in '{key}' ({sorted(values)})")
    try:
        net = ensemble(nets)
    except ValueError as e:
        raise UserError(f"{', '.join(args.members)}: {e}") from e
    keep = ("patch", "input_scale", "context", "net", "depth")
    meta = {k: metas[0][k] for k in keep if k in metas[0]}
    meta["ensemble_of"] = [
        {"file": str(m), "sha256": hashlib.sha256(Path(m).read_bytes()).hexdigest(),
         "meta": {k: v for k, v in mt.items() if k != "arch"}}
        for m, mt in zip(args.members, metas)
    ]
    save_model(net, args.out, meta)
    print(f"bafusion ensemble: {len(nets)} nets -> {args.out} ({net.spec.to_dict()})", file=sys.stderr)
    return 0
