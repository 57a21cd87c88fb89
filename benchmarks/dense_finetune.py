"""Fine-tune a net with the dense-pass loss (issue #13, "use the CPU well"): an experiment.

Crops of the composited pairs (``bafusion.nets.dense_train.CropSampler``: one label per patch
position on the 4-px grid) give the dense loss; the isolated view of ``--isolated`` random
patch positions of the same crops (each patch alone, zero-padded: the paper's classifier) is
added to the loss with weight ``--isolated-weight``, so that the classifier the paper describes
stays trained too. The patch set's validation pairs are left out of the crops. Resumable: the
state is saved every ``--save-every`` steps in ``--out``/state.pt and a rerun continues.

    OMP_NUM_THREADS=1 python benchmarks/dense_finetune.py --init models/default/initial.pt \
        --composite /work/runs/real2/composite --patches /work/runs/real2/patches-ctx16/initial.h5 \
        --minutes 20 --out /work/runs/dense-ft

The result is a model folder (``initial.pt`` + ``.json``; ``--boundary-from`` copies a boundary
net beside it) for ``benchmarks/realistic_validation.py --model`` and ``benchmarks/eval_real.py``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

from bafusion.nets.dense_train import CropSampler, dense_logits, read_shard_pairs  # noqa: E402
from bafusion.nets.model import load_model, save_model  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--init", required=True, help="model file to start from")
    ap.add_argument("--composite", required=True, help="folder of composite shard-*.h5")
    ap.add_argument("--patches", required=True, help="patch set whose validation pairs are left out")
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--crops", type=int, default=4, help="crops per step")
    ap.add_argument("--isolated", type=int, default=32, help="isolated patches per step (from the crops)")
    ap.add_argument("--isolated-weight", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=0.002)
    ap.add_argument("--minutes", type=float, default=20.0, help="training time (this run, resumes add to it)")
    ap.add_argument("--max-pairs", type=int, default=0, help="read at most this many training pairs (0 = all)")
    ap.add_argument("--save-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--boundary-from", default=None, help="model folder whose boundary net is copied beside")
    ap.add_argument("--out", required=True,
                    help="output folder (a model folder: initial.pt + .json, log.json, and state.pt to resume from)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    net, meta = load_model(args.init)
    patch = int(meta.get("patch", 32))
    with h5py.File(args.patches, "r") as h5:
        val_ids = set(np.unique(h5["val"]["pair"][()]).tolist())
        pparams = json.loads(h5.attrs.get("params", "{}"))
    threshold = int(np.ceil(float(pparams.get("label_threshold", 0.5)) * 255.0 - 1e-9))
    shards = sorted(Path(args.composite).glob("shard-*.h5"))
    keep = None
    if args.max_pairs:
        from bafusion.data.patches import _all_pair_ids

        ids = [int(i) for i in _all_pair_ids(shards) if int(i) not in val_ids]
        keep = set(np.random.default_rng(args.seed).permutation(ids)[: args.max_pairs].tolist())
    t0 = time.perf_counter()
    pairs = read_shard_pairs(shards, keep=keep, drop=val_ids)
    print(f"{len(pairs)} training pairs read in {time.perf_counter() - t0:.0f} s ({len(val_ids)} validation pairs left out)",
          file=sys.stderr)
    sampler = CropSampler(pairs, args.crop, patch, args.crops, seed=args.seed, threshold=threshold)
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    state_path = out / "state.pt"
    step, spent, log = 0, 0.0, []
    if state_path.exists():
        st = torch.load(state_path, weights_only=True)
        net.load_state_dict(st["net"])
        opt.load_state_dict(st["opt"])
        step, spent = int(st["step"]), float(st["spent"])
        sampler.rng = np.random.default_rng([args.seed, step])
        log = json.loads((out / "log.json").read_text()) if (out / "log.json").exists() else []
        print(f"resumed at step {step} ({spent / 60:.1f} min trained)", file=sys.stderr)
    g = sampler.grid
    rng = np.random.default_rng([args.seed, 99, step])
    budget = spent + args.minutes * 60
    net.train()
    acc_d = acc_i = n = 0.0
    while spent < budget:
        x, y = sampler.sample()
        t = time.perf_counter()
        zd = dense_logits(net, x, patch)
        loss = F.cross_entropy(zd.float(), y)
        if args.isolated and args.isolated_weight:
            k = rng.integers(0, args.crops, args.isolated)
            i, j = rng.integers(0, g, args.isolated), rng.integers(0, g, args.isolated)
            xi = torch.stack([x[kk, :, 4 * ii : 4 * ii + patch, 4 * jj : 4 * jj + patch] for kk, ii, jj in zip(k, i, j)])
            yi = y[torch.as_tensor(k), torch.as_tensor(i), torch.as_tensor(j)]
            zi = net(xi)
            loss = loss + args.isolated_weight * F.cross_entropy(zi, yi)
            acc_i += float((zi.argmax(1) == yi).float().mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        spent += time.perf_counter() - t
        acc_d += float((zd.argmax(1) == y).float().mean())
        n += 1
        step += 1
        if step % args.save_every == 0 or spent >= budget:
            log.append({"step": step, "minutes": round(spent / 60, 2), "train_acc_dense": round(acc_d / n, 4),
                        "train_acc_isolated": round(acc_i / n, 4) if args.isolated else None})
            print(log[-1], file=sys.stderr)
            acc_d = acc_i = n = 0.0
            tmp = out / "state.pt.part"
            torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "step": step, "spent": spent}, tmp)
            tmp.replace(state_path)
            (out / "log.json").write_text(json.dumps(log, indent=1) + "\n")
    net.eval()
    info = {k: v for k, v in meta.items() if k != "arch"}
    info.update(dense_finetune={"init": str(args.init), "composite": str(args.composite), "steps": step,
                                "minutes": round(spent / 60, 2), "crop": args.crop, "crops": args.crops,
                                "isolated": args.isolated, "isolated_weight": args.isolated_weight, "lr": args.lr})
    save_model(net, out / "initial.pt", info)
    if args.boundary_from:
        for suf in (".pt", ".json"):
            shutil.copyfile(Path(args.boundary_from) / f"boundary{suf}", out / f"boundary{suf}")
    print(f"wrote {out / 'initial.pt'} after {step} steps, {spent / 60:.1f} min", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
