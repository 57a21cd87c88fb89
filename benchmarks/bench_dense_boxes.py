"""Dense boundary mode: merged masked boxes against the boxes as they were (one process).

Since 0.4.0 each box of the dense boundary mode (``boundary_mode: dense``) gives the trunk
its whole reach of context (``trunk_reach``: 40 px for ResNet-20, 124 for ResNet-56), so
neighbouring boxes recomputed each other's surroundings. ``score_dense`` now merges boxes
whose crops share context (``scoring._merge_boxes``). This script times, on each Lytro pair
(full size, or ``--size``), the boundary net's dense scoring of the near-boundary pixels that
the shipped nets' default fusion marks, with the merge and without it (``_merge_boxes``
patched to keep the boxes), interleaved in ``--rounds`` rounds, the fastest of each kept, for

* the shipped boundary net (``--model``, ResNet-20 at its patch), and
* a random-weight ResNet-``--depth`` at patch ``--patch`` (the time does not depend on the
  weights), BatchNorm folded and channels-last as fusion runs it,

(``--old-context``: also the boxes as before 0.4.0, unmerged with ``dense_margin`` as their
context, ``trunk_reach`` patched) and reports the boxes, the trunk's crop pixels, the seconds and the largest difference
between the two scorings on the masked pixels (float rounding only: the scores do not depend
on the boxes). ``--tile``: the boxes' tile side (default the rule's ``fuse.tile``). Writes
``benchmarks/out/bench_dense_boxes.json``.

    python benchmarks/bench_dense_boxes.py --pairs 1 2 5 --threads 1 --old-context
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bafusion.fusion import fuse_images, load_nets_from_dir
from bafusion.fusion import scoring
from bafusion.io import to_gray_u8
from bafusion.nets.model import build_model, fold_batchnorm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_fusion import lytro_pair, rule_params, fuse_rule  # noqa: E402


def _boxes(net, ga, near, patch, params, merged: bool, context: int):
    h, w = ga.shape
    side = max(4, params.tile // 4 * 4)
    boxes = scoring._boxes(h, w, near, side, 4)
    if merged:
        boxes = scoring._merge_boxes(boxes, (h, w), patch, 4, params.dense_margin, context,
                                     max(4, params.max_tile // 4 * 4))
    crop = sum(int(scoring._crop_cost(*b, (h, w), patch, 4, params.dense_margin, context)) for b in boxes)
    return len(boxes), crop


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(HERE.parent / "models" / "default"))
    ap.add_argument("--pairs", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--size", type=int, default=0, help="resize the pairs to this square side (0: full size)")
    ap.add_argument("--depth", type=int, default=56)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tile", type=int, default=0, help="the boxes' tile side (0: the rule's fuse.tile)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--old-context", action="store_true",
                    help="also time the boxes as before 0.4.0 (unmerged, the 16-px margin as context)")
    ap.add_argument("--out", default=str(HERE / "out" / "bench_dense_boxes.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    section = fuse_rule("defaults")
    params = rule_params(section)
    if args.tile:
        params = dataclasses.replace(params, tile=args.tile)
    shipped = load_nets_from_dir(args.model, "cpu")
    torch.manual_seed(0)
    deep = fold_batchnorm(build_model(args.depth).eval()).to(memory_format=torch.channels_last)
    nets = {"shipped": (shipped.boundary, shipped.patch_boundary),
            f"resnet{args.depth}-p{args.patch}": (deep, args.patch)}
    merge, reach = scoring._merge_boxes, scoring.trunk_reach
    keep = lambda boxes, *a, **k: boxes  # noqa: E731  (the boxes as they were)
    short = lambda net: params.dense_margin  # noqa: E731  (before 0.4.0: the margin as context)
    variants = {"unmerged": (keep, reach), "merged": (merge, reach)}
    if args.old_context:
        variants["unmerged-16px"] = (keep, short)
    rows = []
    for i in args.pairs:
        a, b = lytro_pair(i, args.size or None)
        near = fuse_images(a, b, shipped, params).near_boundary
        ga, gb = to_gray_u8(a), to_gray_u8(b)
        for name, (net, p) in nets.items():
            with torch.inference_mode():
                scoring.score_dense(net, ga[:64, :64], gb[:64, :64], p, margin=params.dense_margin)  # warm-up
            times: dict[str, list[float]] = {k: [] for k in variants}
            out: dict[str, np.ndarray] = {}
            for _ in range(args.rounds):
                for kind, (merge_fn, reach_fn) in variants.items():
                    scoring._merge_boxes, scoring.trunk_reach = merge_fn, reach_fn
                    try:
                        t0 = time.perf_counter()
                        with torch.inference_mode():
                            out[kind] = scoring.score_dense(net, ga, gb, p, step=4, mask=near, tile=params.tile,
                                                            max_tile=params.max_tile, margin=params.dense_margin)
                        times[kind].append(time.perf_counter() - t0)
                    finally:
                        scoring._merge_boxes, scoring.trunk_reach = merge, reach
            nu, cu = _boxes(net, ga, near, p, params, False, reach(net))
            nm, cm = _boxes(net, ga, near, p, params, True, reach(net))
            diff = float(np.abs(out["merged"][near] - out["unmerged"][near]).max()) if near.any() else 0.0
            row = {"pair": i, "shape": list(ga.shape), "net": name, "patch": p, "reach": scoring.trunk_reach(net),
                   "near_fraction": float(near.mean()), "boxes_unmerged": nu, "boxes_merged": nm,
                   "crop_px_unmerged": cu, "crop_px_merged": cm,
                   "seconds_unmerged": times["unmerged"], "seconds_merged": times["merged"],
                   "ratio_fastest": min(times["merged"]) / min(times["unmerged"]), "max_abs_diff": diff}
            if args.old_context:
                row["seconds_unmerged_16px"] = times["unmerged-16px"]
                row["merged_vs_16px_fastest"] = min(times["merged"]) / min(times["unmerged-16px"])
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"threads": args.threads, "rounds": args.rounds, "tile": params.tile, "rows": rows},
                                         indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
