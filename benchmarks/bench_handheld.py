"""Handheld focal stacks with ground truth: the synthetic stacks of ``bench_stack.py``
(:func:`bafusion.fusion.stack.stack_from_data`), each shot moved by a known similarity (a shift
of a few pixels, a turn under a degree, focus breathing: a scale growing steadily through the
stack) and given a slightly different exposure, fused with the shipped nets unaligned, aligned
by :func:`bafusion.fusion.align.align_images` (``--align similarity``), and aligned by the
known motion (the oracle).

The stack is drawn on a canvas ``2 * margin`` larger than the shots, so every moved shot is
filled with scene; the truth (the right shot per pixel, and the ideal image: the right shot's
own pixel, before any motion) lies in the first shot's frame, which is not moved.

Per stack, rule (chain, joint) and registration: the share of the decidable pixels taken from
the right shot, and the PSNR against the ideal image on those pixels, both on the aligner's
crop (the area every shot covers, as ``fuse --align`` outputs it) so that the three
registrations are judged on the same pixels; and, per shot, the aligner's error against the
known motion (RMS over the crop's corners of where a first-frame point is looked up, px).

Run: OMP_NUM_THREADS=1 python benchmarks/bench_handheld.py [--size 320] [--shots 3 5 8]
[--seeds 0 1] (shipped nets, CPU, one torch thread). Writes ``benchmarks/out/bench_handheld.csv``
and prints a Markdown table. Reads ``$BAFUSION_SHARED_DATA`` (default ``../shared/data``)."""

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
from bafusion.fusion.align import align_images, coverage, largest_rectangle, similarity_matrix, warp_to_first
from bafusion.fusion.stack import AMBIGUOUS, StackOptions, chain_index, fuse_stack_joint, stack_from_data

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("BAFUSION_SHARED_DATA", REPO.parent / "shared" / "data"))
OUT = REPO / "benchmarks" / "out"


def motions(n: int, size: int, seed: int, breathing: float, shift: float, turn: float
            ) -> tuple[list[np.ndarray], list[float]]:
    """Per shot, the 3x3 matrix mapping its pixels to the first shot's (the first's the
    identity) and its exposure gain (the first's 1): shifts uniform in +-``shift`` px, turns in
    +-``turn`` deg about the centre, scale ``1 + breathing * k / (n - 1)`` (focus breathing,
    steady through the stack), gains uniform in 0.97..1.03."""
    rng = np.random.default_rng([seed, n, 39])
    c = (size - 1) / 2
    ms, gains = [np.eye(3)], [1.0]
    for k in range(1, n):
        s = 1.0 + breathing * k / (n - 1)
        rot = float(rng.uniform(-turn, turn))
        dx, dy = rng.uniform(-shift, shift, 2)
        about = np.array([[1, 0, c], [0, 1, c], [0, 0, 1.0]])
        m = about @ similarity_matrix((0.0, 0.0), rot, s) @ np.linalg.inv(about)
        m[:2, 2] += (dx, dy)
        ms.append(m)
        gains.append(float(rng.uniform(0.97, 1.03)))
    return ms, gains


def shoot(big: np.ndarray, m: np.ndarray, margin: int, size: int) -> np.ndarray:
    """The shot whose pixel ``p`` sees the canvas at ``m @ p + margin`` (quintic spline)."""
    off = np.array([[1, 0, margin], [0, 1, margin], [0, 0, 1.0]])
    # warp_to_first(img, t)(q) = img(t^-1 q): t^-1 = off @ m
    return warp_to_first(big, np.linalg.inv(off @ m), (size, size), order=5)


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    d = (a.astype(np.float64) - b.astype(np.float64))[mask]
    mse = float((d ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def lookup_error(est: np.ndarray, true: np.ndarray, crop: tuple[int, int, int, int]) -> float:
    """RMS over the crop's corners of the distance between where the estimate and the truth
    look a first-frame point up in the shot, px."""
    x0, y0, x1, y1 = crop
    q = np.array([[x0, x1 - 1, x0, x1 - 1], [y0, y0, y1 - 1, y1 - 1], [1.0] * 4])
    a, b = np.linalg.inv(est) @ q, np.linalg.inv(true) @ q
    d = a[:2] / a[2] - b[:2] / b[2]
    return float(np.sqrt((d ** 2).sum(0).mean()))


def fuse_both(shots: list[np.ndarray], nets, rules: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """Per rule: (fused, shot index, seconds)."""
    out = {}
    for rule in rules:
        t0 = time.perf_counter()
        if rule == "chain":
            res = fuse_stack(shots, nets, FusionParams(), progress=False, keep_maps=False)
            out[rule] = (res[-1].fused, chain_index(res), time.perf_counter() - t0)
        else:
            j = fuse_stack_joint(shots, nets, FusionParams(stack_rule="joint"), keep_scores=False)
            out[rule] = (j.fused, j.index, time.perf_counter() - t0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--margin", type=int, default=24)
    ap.add_argument("--shots", type=int, nargs="+", default=[3, 5, 8])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--breathing", type=float, default=0.02, help="scale of the last shot minus 1")
    ap.add_argument("--shift", type=float, default=4.0)
    ap.add_argument("--turn", type=float, default=0.8)
    ap.add_argument("--rules", nargs="+", default=["chain", "joint"])
    ap.add_argument("--regs", nargs="+", default=["none", "aligned", "oracle"], choices=["none", "aligned", "oracle"],
                    help="registrations fused (the table needs all three)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(OUT / "bench_handheld.csv"))
    args = ap.parse_args()
    if not (DATA / "train" / "alphamatting").is_dir():
        print(f"training data not found in {DATA}/train (set BAFUSION_SHARED_DATA)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    nets = load_nets_from_dir(None, "cpu")
    size, mg = args.size, args.margin
    rows = []
    for n in args.shots:
        for seed in args.seeds:
            st = stack_from_data(DATA, StackOptions(layers=n, size=size + 2 * mg), seed)
            truth = st.truth[mg:mg + size, mg:mg + size]
            ideal_idx = np.where(truth == AMBIGUOUS, 0, truth)
            still = [s[mg:mg + size, mg:mg + size] for s in st.shots]
            ms, gains = motions(n, size, seed, args.breathing, args.shift, args.turn)
            lit = [np.clip(s.astype(np.float64) * g, 0, 255).round().astype(np.uint8) for s, g in zip(st.shots, gains)]
            ideal = np.take_along_axis(np.stack([s[mg:mg + size, mg:mg + size] for s in lit]),
                                       ideal_idx[None, ..., None], 0)[0]
            shots = [lit[0][mg:mg + size, mg:mg + size]] + [shoot(lit[k], ms[k], mg, size) for k in range(1, n)]
            t0 = time.perf_counter()
            al = align_images(shots, "similarity")
            t_align = time.perf_counter() - t0
            crop = al.crop
            errs = [lookup_error(al.transforms[k], ms[k], crop) for k in range(1, n)]
            common = np.ones((size, size), bool)
            for m in ms[1:]:
                common &= coverage(m, (size, size))
            ocrop = largest_rectangle(common)
            oracle = [shots[0]] + [warp_to_first(s, m, order=5) for s, m in zip(shots[1:], ms[1:])]
            x0, y0, x1, y1 = crop
            regs = {"none": (shots, (0, 0, size, size)), "aligned": (al.images, crop), "oracle": (oracle, (0, 0, size, size))}
            for reg, (imgs, (a0, b0, _, _)) in regs.items():
                if reg not in args.regs:
                    continue
                for rule, (fused, idx, secs) in fuse_both(imgs, nets, args.rules).items():
                    # judged on the aligner's crop, in the first frame
                    f = fused[y0 - b0:y1 - b0, x0 - a0:x1 - a0]
                    ix = idx[y0 - b0:y1 - b0, x0 - a0:x1 - a0]
                    t = truth[y0:y1, x0:x1]
                    ok = t != AMBIGUOUS
                    row = {"shots": n, "seed": seed, "reg": reg, "rule": rule, "crop": f"{x1 - x0}x{y1 - y0}",
                           "oracle_crop": f"{ocrop[2] - ocrop[0]}x{ocrop[3] - ocrop[1]}",
                           "decidable": float(ok.mean()),
                           "acc": float((ix[ok] == t[ok]).mean()),
                           "psnr": psnr(f, ideal[y0:y1, x0:x1], ok),
                           "align_err_px": " ".join(f"{e:.2f}" for e in errs),
                           "align_err_max": max(errs), "quality_min": min(q for q in al.quality if q is not None),
                           "s_align": t_align, "s_fuse": secs}
                    rows.append(row)
                    print(", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                          file=sys.stderr, flush=True)
            del still
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    with atomic_file(args.out) as tmp:
        Path(tmp).write_text(buf.getvalue())
    print("| shots | seed | rule | none: right shot | none: PSNR | aligned: right shot | aligned: PSNR | "
          "oracle: right shot | oracle: PSNR | align error per shot (px) | crop |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    key = {(r["shots"], r["seed"], r["rule"], r["reg"]): r for r in rows}
    if len(args.regs) < 3:
        return 0
    for n in args.shots:
        for seed in args.seeds:
            for rule in args.rules:
                c = [key[(n, seed, rule, g)] for g in ("none", "aligned", "oracle")]
                print(f"| {n} | {seed} | {rule} | " + " | ".join(f"{r['acc']:.2%} | {r['psnr']:.2f}" for r in c)
                      + f" | {c[0]['align_err_px']} | {c[0]['crop']} |")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
