"""Focal stacks (issue 14): the chain rule (one shot into the next) against the joint rule
(every shot scored against the others, one decision) on synthetic stacks with ground truth
(:mod:`bafusion.fusion.stack`: 3, 4 and 5 depth layers from the alphamatting foregrounds in front of a
COCO background, several seeds, Gaussian and disc defocus).

Per stack: the share of decidable pixels each rule takes from the right shot (the fused
image's per-pixel shot index against the truth), the joint rule's before the boundary net and
the small-region clean-up too, and the seconds of each rule (the fusion itself, one process,
one after the other on the same stack, so the ratio holds on a busy machine).

Run: OMP_NUM_THREADS=1 python benchmarks/bench_stack.py [--size 400] [--layers 3 4 5] [--seeds 0 1 2]
(shipped nets, CPU, one torch thread). Writes ``benchmarks/out/bench_stack.csv`` and prints a
Markdown table. Reads ``$BAFUSION_SHARED_DATA`` (default ``../shared/data``)."""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bafusion.atomic import atomic_file
from bafusion.fusion import FusionParams, fuse_stack, load_nets_from_dir
from bafusion.fusion.stack import (
    StackOptions,
    chain_index,
    fuse_stack_joint,
    stack_accuracy,
    stack_from_data,
)

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("BAFUSION_SHARED_DATA", REPO.parent / "shared" / "data"))
OUT = REPO / "benchmarks" / "out"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=400)
    ap.add_argument("--layers", type=int, nargs="+", default=[3, 4, 5])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(OUT / "bench_stack.csv"))
    args = ap.parse_args()
    if not (DATA / "train" / "alphamatting").is_dir():
        print(f"training data not found in {DATA}/train (set BAFUSION_SHARED_DATA)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    nets = load_nets_from_dir(None, "cpu")
    rows = []
    for layers in args.layers:
        for seed in args.seeds:
            kernel = "disc" if seed % 3 == 2 else "gaussian"
            st = stack_from_data(DATA, StackOptions(layers=layers, size=args.size, kernel=kernel), seed)
            t0 = time.perf_counter()
            chain = fuse_stack(st.shots, nets, FusionParams())
            t_chain = time.perf_counter() - t0
            t0 = time.perf_counter()
            joint = fuse_stack_joint(st.shots, nets, FusionParams(stack_rule="joint"))
            t_joint = time.perf_counter() - t0
            row = {
                "layers": layers, "seed": seed, "kernel": kernel, "size": args.size,
                "sources": " ".join(Path(s).stem for s in st.sources),
                "ambiguous": float((st.truth < 0).mean()),
                "acc_chain": stack_accuracy(chain_index(chain), st.truth),
                "acc_joint": stack_accuracy(joint.index, st.truth),
                "acc_joint_initial": stack_accuracy(joint.index_initial, st.truth),
                "acc_joint_raw": stack_accuracy(joint.index_raw, st.truth),
                "s_chain": t_chain, "s_joint": t_joint,
            }
            rows.append(row)
            print(", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  file=sys.stderr, flush=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    with atomic_file(args.out) as tmp:
        Path(tmp).write_text(buf.getvalue())
    print("| layers | seed | kernel | ambiguous | chain | joint | joint before boundary net | chain s | joint s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layers']} | {r['seed']} | {r['kernel']} | {r['ambiguous']:.1%} | {r['acc_chain']:.2%} | "
              f"{r['acc_joint']:.2%} | {r['acc_joint_initial']:.2%} | {r['s_chain']:.1f} | {r['s_joint']:.1f} |")
    for layers in args.layers:
        sel = [r for r in rows if r["layers"] == layers]
        print(f"| {layers} | mean | | | {np.mean([r['acc_chain'] for r in sel]):.2%} | "
              f"{np.mean([r['acc_joint'] for r in sel]):.2%} | {np.mean([r['acc_joint_initial'] for r in sel]):.2%} | "
              f"{np.mean([r['s_chain'] for r in sel]):.1f} | {np.mean([r['s_joint'] for r in sel]):.1f} |")
    print(f"| all | mean | | | {np.mean([r['acc_chain'] for r in rows]):.2%} | {np.mean([r['acc_joint'] for r in rows]):.2%} | "
          f"{np.mean([r['acc_joint_initial'] for r in rows]):.2%} | {sum(r['s_chain'] for r in rows):.1f} (sum) | "
          f"{sum(r['s_joint'] for r in rows):.1f} (sum) |")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
