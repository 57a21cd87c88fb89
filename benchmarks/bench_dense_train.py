"""Dense-pass training against the isolated-patch loader (issue #13, "use the CPU well").

Two measurements, in one process, the two modes interleaved step by step so that a busy
machine slows both alike:

1. Throughput: labelled decisions per second of a training step (forward + backward + SGD) of
   the isolated-patch loader (``bafusion.nets.augment.AugmentedLoader``, the pipeline's trainer)
   and of the dense pass (``bafusion.nets.dense_train``: random crops of the composited pairs, one
   label per patch position on the 4-px grid).
2. What the labels are worth: two copies of the same freshly initialised net trained for the
   same wall-clock budget, one per mode, on the same training pairs (the patch set's
   validation pairs are left out of the dense crops too), each evaluated on the patch set's
   validation split as isolated patches (the paper's classifier, all 12 variants) and as
   dense crops of the validation pairs.

Inputs: the embedded pipeline's ``data/composite/shard-*.h5`` and ``data/patches/initial.h5``
(``dvc repro patches``), or ``--composite``/``--patches`` of another run.

    OMP_NUM_THREADS=1 python benchmarks/bench_dense_train.py --seconds 150
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

from bafusion.data.patches import _all_pair_ids, split_pairs  # noqa: E402
from bafusion.nets.augment import AugmentedLoader, load_split  # noqa: E402
from bafusion.nets.dense_train import (  # noqa: E402
    CropSampler,
    dense_logits,
    dense_train_step,
    read_shard_pairs,
)
from bafusion.nets.model import build_model  # noqa: E402


def fresh_nets(args):
    """Two copies of one seeded initialisation (isolated, dense) and an SGD optimiser for each."""
    torch.manual_seed(args.seed)
    net_i = build_model(args.depth)
    net_d = build_model(args.depth)
    net_d.load_state_dict(net_i.state_dict())
    opt = {m: torch.optim.SGD(n.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
           for m, n in (("isolated", net_i), ("dense", net_d))}
    return net_i, net_d, opt


def isolated_step(net, opt, x, y) -> tuple[float, int]:
    logits = net(x)
    loss = F.cross_entropy(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach()), int(y.numel())


@torch.no_grad()
def eval_isolated(net, loader) -> float:
    net.eval()
    ok = n = 0
    for x, y in loader:
        ok += int((net(x).argmax(1) == y).sum())
        n += len(y)
    net.train()
    return ok / n


@torch.no_grad()
def eval_dense(net, batches, patch) -> float:
    net.eval()
    ok = n = 0
    for x, y in batches:
        ok += int((dense_logits(net, x, patch).argmax(1) == y).sum())
        n += y.numel()
    net.train()
    return ok / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--composite", default=str(REPO / "data" / "composite"))
    ap.add_argument("--patches", default=str(REPO / "data" / "patches" / "initial.h5"))
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128, help="isolated patches per step")
    ap.add_argument("--crop", type=int, default=128, help="dense crop side")
    ap.add_argument("--crops", type=int, default=4, help="dense crops per step")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--seconds", type=float, default=150.0, help="training budget per mode")
    ap.add_argument("--evals", type=int, default=5, help="evaluations per mode over the budget")
    ap.add_argument("--throughput-steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "dense-train"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    train_split = load_split(args.patches, "train")
    val_split = load_split(args.patches, "val")
    attrs = train_split.attrs
    patch = int(train_split.patch)
    pparams = json.loads(attrs.get("params", "{}")) if isinstance(attrs.get("params"), str) else attrs.get("params", {})
    val_fraction = float(pparams.get("val_fraction", 0.15))
    seed = int(pparams.get("seed", attrs.get("seed", 0)))
    threshold = int(np.ceil(float(pparams.get("label_threshold", 0.5)) * 255.0 - 1e-9))
    shards = sorted(Path(args.composite).glob("shard-*.h5"))
    val_ids = split_pairs(_all_pair_ids(shards), val_fraction, seed)
    # The patch set's validation pairs must be the ones split_pairs names (same seed and fraction).
    import h5py

    with h5py.File(args.patches, "r") as h5:
        stored_val = set(np.unique(h5["val"]["pair"][()]).tolist())
    if stored_val and stored_val != val_ids:
        raise SystemExit(f"validation pairs differ from the patch set's: {sorted(stored_val)} vs {sorted(val_ids)}")
    train_pairs = read_shard_pairs(shards, drop=val_ids)
    val_pairs = read_shard_pairs(shards, keep=val_ids)
    print(f"patch {patch}, {len(train_pairs)} train / {len(val_pairs)} val pairs, "
          f"{len(train_split)} / {len(val_split)} isolated patches", file=sys.stderr)

    net_i, net_d, opt = fresh_nets(args)
    iso_loader = AugmentedLoader(train_split, args.batch, seed=args.seed)
    dense_sampler = CropSampler(train_pairs, args.crop, patch, args.crops, seed=args.seed, threshold=threshold)
    val_loader = AugmentedLoader(val_split, 256, seed=1, augment=True)
    val_dense = [CropSampler(val_pairs, args.crop, patch, 8, seed=1000 + k, threshold=threshold).sample() for k in range(8)]

    def iso_batches():
        while True:
            yield from iso_loader

    iso_it = iso_batches()

    # 1. throughput, interleaved
    rows = []
    tp = {"isolated": [0.0, 0, 0], "dense": [0.0, 0, 0]}  # seconds, decisions, trunk pixels
    for _ in range(args.throughput_steps):
        x, y = next(iso_it)
        t0 = time.perf_counter()
        isolated_step(net_i, opt["isolated"], x, y)
        tp["isolated"][0] += time.perf_counter() - t0
        tp["isolated"][1] += y.numel()
        tp["isolated"][2] += x.shape[0] * x.shape[2] * x.shape[3]
        x, y = dense_sampler.sample()
        t0 = time.perf_counter()
        dense_train_step(net_d, opt["dense"], x, y, patch)
        tp["dense"][0] += time.perf_counter() - t0
        tp["dense"][1] += y.numel()
        tp["dense"][2] += x.shape[0] * x.shape[2] * x.shape[3]
    thr = {m: {"decisions_per_s": d / s, "trunk_pixels_per_s": px / s, "decisions_per_kpixel": 1000 * d / px}
           for m, (s, d, px) in tp.items()}
    thr["ratio_decisions_per_s"] = thr["dense"]["decisions_per_s"] / thr["isolated"]["decisions_per_s"]
    print(json.dumps(thr, indent=1), file=sys.stderr)

    # 2. equal wall-clock training (fresh copies again, so that part 1 does not count)
    net_i, net_d, opt = fresh_nets(args)
    spent = {"isolated": 0.0, "dense": 0.0}
    seen = {"isolated": 0, "dense": 0}
    marks = [args.seconds * (k + 1) / args.evals for k in range(args.evals)]
    next_mark = {"isolated": 0, "dense": 0}
    while min(next_mark.values()) < args.evals:
        for mode in ("isolated", "dense"):
            if next_mark[mode] >= args.evals:
                continue
            if mode == "isolated":
                x, y = next(iso_it)
                t0 = time.perf_counter()
                _, n = isolated_step(net_i, opt[mode], x, y)
            else:
                x, y = dense_sampler.sample()
                t0 = time.perf_counter()
                _, _, n = dense_train_step(net_d, opt[mode], x, y, patch)
            spent[mode] += time.perf_counter() - t0
            seen[mode] += n
            if spent[mode] >= marks[next_mark[mode]]:
                net = net_i if mode == "isolated" else net_d
                row = {"mode": mode, "train_seconds": round(spent[mode], 1), "decisions": seen[mode],
                       "val_isolated_acc": round(eval_isolated(net, val_loader), 4),
                       "val_dense_acc": round(eval_dense(net, val_dense, patch), 4)}
                rows.append(row)
                print(row, file=sys.stderr)
                next_mark[mode] += 1

    with open(out / "curves.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "throughput.json").write_text(json.dumps(thr, indent=1) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
        for mode, colour in (("isolated", "tab:blue"), ("dense", "tab:orange")):
            r = [x for x in rows if x["mode"] == mode]
            t = [x["train_seconds"] for x in r]
            ax[0].plot(t, [x["val_isolated_acc"] for x in r], "o-", color=colour, label=mode)
            ax[1].plot(t, [x["val_dense_acc"] for x in r], "o-", color=colour, label=mode)
        ax[0].set_title("validation: isolated patches")
        ax[1].set_title("validation: dense crops")
        for a in ax:
            a.set_xlabel("training seconds")
            a.set_ylabel("accuracy")
            a.legend()
        fig.tight_layout()
        fig.savefig(out / "curves.png", dpi=100)
    except ImportError:
        pass
    print(f"wrote {out}/curves.csv, throughput.json, curves.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
