"""Evaluate a model on the real development pairs (MFIFB savic, tsai, stand; 41 pairs) against the
30 published methods, and print our per-set means and ranks: one command to compare candidates.

Usage::

    python benchmarks/eval_real.py                                   # the shipped models/default
    python benchmarks/eval_real.py --model models/candidate --fuse-json '{"l": 6, "min_region": 0.02}'
    python benchmarks/eval_real.py --pattern 'savic-*' --methods Ours   # a quick look at one set

Reads ``$BAFUSION_SHARED_DATA`` (default ``../shared/data`` beside the checkout) and the dataset
definition ``benchmarks/eval_real.yaml`` (the same as ``bafusion evaluate --params-file
benchmarks/eval_real.yaml``): our output is measured after re-encoding it as JPEG at the peers'
quality (75 on savic and tsai, 92 on stand; Pillow, 4:2:0), its lossless values are printed too.
Fusion parameters: the built-in defaults (:class:`bafusion.fusion.FusionParams`) overridden by
``--fuse-json``. Writes the usual evaluation folder (metrics.csv, means-sets.csv, table1.md,
fused/) to ``--out`` (default ``benchmarks/out/eval-real/<model folder name>``) plus
``summary.json``; no MLflow run. These pairs choose configurations; never train on them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

from bafusion.errors import UserError  # noqa: E402
from bafusion.evaluation import evaluate as ev  # noqa: E402

CONFIG = REPO / "benchmarks" / "eval_real.yaml"


def shared_data() -> Path:
    return Path(os.environ.get("BAFUSION_SHARED_DATA", REPO.parent / "shared" / "data"))


def load_config(shared: Path, methods: list[str] | None = None, pattern: str | None = None,
                jpeg_quality: Any = ...) -> ev.EvalConfig:
    """``benchmarks/eval_real.yaml``'s evaluate section, with ``../shared/data`` replaced by
    ``shared`` (and the dataset's ``jpeg_quality`` replaced when given; None: lossless)."""
    import yaml

    section = yaml.safe_load(CONFIG.read_text().replace("../shared/data", str(shared)))["evaluate"]
    if methods:
        section["methods"] = methods
    if pattern:
        section["datasets"][0]["pattern"] = pattern
    if jpeg_quality is not ...:
        section["datasets"][0]["jpeg_quality"] = jpeg_quality
    cfg = ev.parse_config(section, REPO)
    if pattern:  # the sets with pairs left (evaluate refuses a set that matches no pair)
        names = [p.name for p in ev.find_pairs(cfg.datasets[0])]
        section["datasets"][0]["sets"] = [s for s in cfg.datasets[0].sets if any(n.startswith(s) for n in names)]
        if not section["datasets"][0]["sets"]:
            del section["datasets"][0]["sets"]
        cfg = ev.parse_config(section, REPO)
    return cfg


def summary(rows: list[dict[str, Any]], methods: list[str], ds: ev.Dataset, metrics: tuple[str, ...]) -> dict[str, Any]:
    """{set: {"pairs": n, method: {metric: mean, "rank": {...}, "of": {...}, "lossless": {...}},
    "best_peer": {metric: [method, mean]}}} for our variants, per set and over all pairs."""
    ours = [m for m in (ev.OURS, ev.OURS_INITIAL) if m in methods]
    peers = [m for m in methods if m not in (ev.OURS, ev.OURS_INITIAL)]
    out: dict[str, Any] = {}
    for sname in [*ds.sets, "all"]:
        sr = ev.set_rows(rows, sname)
        if not sr:
            continue
        entry: dict[str, Any] = {"pairs": len({r["pair"] for r in sr})}
        for m in ours:
            rivals = ev._rank_rivals(methods, m)
            e: dict[str, Any] = {q: ev.mean_values(sr, [m], q)[m] for q in metrics}
            ranks = {q: ev.rank_of(sr, rivals, q, m) for q in metrics}
            e["rank"] = {q: k for q, (k, _) in ranks.items()}
            e["of"] = {q: n for q, (_, n) in ranks.items()}
            ll = ev._lossless_rows([r for r in sr if r["method"] == m], metrics)
            if ll:
                e["lossless"] = {q: ev.mean_values(ll, [m], q)[m] for q in metrics}
            entry[m] = e
        if peers:
            best = {}
            for q in metrics:
                means = {m: v for m, v in ev.mean_values(sr, peers, q).items() if math.isfinite(v)}
                if means:
                    b = max(means, key=means.get) if q not in ev.LOWER_IS_BETTER else min(means, key=means.get)
                    best[q] = [b, means[b]]
            entry["best_peer"] = best
        out[sname] = entry
    return out


def print_summary(s: dict[str, Any], metrics: tuple[str, ...]) -> None:
    w = 17
    print(f"{'set':6s} {'method':13s} " + " ".join(f"{q:>{w}s}" for q in metrics))
    for sname, e in s.items():
        for m in (ev.OURS, ev.OURS_INITIAL):
            if m not in e:
                continue
            cells = []
            for q in metrics:
                k, n = e[m]["rank"][q], e[m]["of"][q]
                cells.append(f"{e[m][q]:.4f} {'-' if k is None else k:>3}/{n:<3}")
            print(f"{sname:6s} {m:13s} " + " ".join(f"{c:>{w}s}" for c in cells))
        if "best_peer" in e:
            cells = [f"{e['best_peer'][q][1]:.4f} {e['best_peer'][q][0][:8]:>8s}" if q in e["best_peer"] else "n/a"
                     for q in metrics]
            print(f"{sname:6s} {'best peer':13s} " + " ".join(f"{c:>{w}s}" for c in cells))
    if any("lossless" in e.get(m, {}) for e in s.values() for m in (ev.OURS, ev.OURS_INITIAL)):
        print("\nas computed (lossless, before the JPEG re-encoding; not comparable with the peers):")
        for sname, e in s.items():
            for m in (ev.OURS, ev.OURS_INITIAL):
                if "lossless" in e.get(m, {}):
                    print(f"{sname:6s} {m:13s} " + " ".join(f"{e[m]['lossless'][q]:>{w}.4f}" for q in metrics))


def print_storage(s: dict[str, Any], ds: ev.Dataset, cfg: ev.EvalConfig, pairs: list[ev.Pair]) -> None:
    """How ours and the best peers were stored when measured, over all pairs (table1.md's
    'Scored as' column): a best peer stored at a higher quality than ours is ahead partly by storage."""
    if not (ds.jpeg_quality or ds.reference_jpeg_quality) or "all" not in s:
        return
    labels = ev.storage_labels(ds, cfg, pairs)
    shown = [m for m in (ev.OURS, ev.OURS_INITIAL) if m in s["all"]]
    shown += [m for m, _ in s["all"].get("best_peer", {}).values() if m not in shown]
    print("\nscored as (all pairs): " + "; ".join(f"{m}: {labels[m]}" for m in dict.fromkeys(shown) if m in labels))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="folder with initial.pt and boundary.pt (default: the shipped model)")
    ap.add_argument("--fuse-json", default=None, help="JSON object of fusion parameters overriding the defaults")
    ap.add_argument("--methods", default=None, help="comma-separated (default: Ours-initial,Ours; add GFF-native,Laplacian)")
    ap.add_argument("--jpeg-json", default=None,
                    help="JSON replacing the dataset's jpeg_quality: a quality, {prefix: quality}, or null "
                    "(measure our output lossless; not like for like). Default: the peers' 75/75/92")
    ap.add_argument("--pattern", default=None, help="only pairs whose name matches this glob (e.g. 'tsai-*')")
    ap.add_argument("--out", default=None, help="output folder (replaced whole; default benchmarks/out/eval-real/<model>)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    args = ap.parse_args(argv)

    import torch

    from bafusion.atomic import atomic_dir, write_text
    from bafusion.fusion import FusionParams, find_model_dir, load_nets

    shared = shared_data()
    if not (shared / "eval" / "real").is_dir():
        print(f"real pairs not found in {shared}/eval/real (set BAFUSION_SHARED_DATA)", file=sys.stderr)
        return 2
    try:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
        cfg = load_config(shared, methods, args.pattern, json.loads(args.jpeg_json) if args.jpeg_json else ...)
        overrides = json.loads(args.fuse_json) if args.fuse_json else {}
        if not isinstance(overrides, dict):
            raise UserError("--fuse-json: expected a JSON object")
        params = FusionParams.from_mapping(overrides, source="--fuse-json")
        torch.set_num_threads(args.threads)
        model = find_model_dir(args.model)
        nets = None
        if ev.OURS in cfg.methods or ev.OURS_INITIAL in cfg.methods:
            nets = load_nets(model / "initial.pt", model / "boundary.pt", args.device)
    except (UserError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ds = cfg.datasets[0]
    out = Path(args.out) if args.out else REPO / "benchmarks" / "out" / "eval-real" / model.resolve().name
    t0 = time.perf_counter()
    with atomic_dir(out) as tmp:
        rows, methods_order = ev.evaluate_dataset(ds, cfg, tmp / ds.name, nets, params, log=lambda s: print(s[:140], flush=True))
        seconds = time.perf_counter() - t0
        s = summary(rows, methods_order, ds, cfg.metrics)
        doc = {"model": str(model), "fuse": asdict(params), "fuse_overrides": overrides, "threads": args.threads,
               "device": args.device, "seconds": round(seconds, 1), "sets": s}
        write_text(tmp / "summary.json", json.dumps(doc, indent=2, default=lambda v: None) + "\n")
    npairs = s["all"]["pairs"]
    print(f"\nreal: {npairs} pairs, model {model}, fuse overrides {overrides or 'none'}, "
          f"{seconds:.0f} s on {args.threads} thread(s); mean, rank/number of methods (Table 1: the peers and one of ours)")
    print_summary(s, cfg.metrics)
    print_storage(s, ds, cfg, ev.find_pairs(ds))
    print(f"\nwritten to {out} (table1.md, metrics.csv, means-sets.csv, summary.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
