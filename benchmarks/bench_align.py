"""Alignment benchmark (issue 14): Lytro pairs with B moved as a handheld shot would be
(shift (3.3, -2.4) px, rotation 0.5 deg, scale 1.01 about the centre), fused with
``--align similarity``, against the fusion of the original pair; QG on the common area.

Run: OMP_NUM_THREADS=1 python benchmarks/bench_align.py [--pairs 1 5 10]
(shipped model, CPU, one thread; prints a Markdown table)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bafusion.evaluation.metrics import qg
from bafusion.fusion import FusionParams, fuse_images, load_nets_from_dir
from bafusion.fusion.align import (
    align_images,
    corner_rms,
    estimate_transform,
    similarity_matrix,
    warp_to_first,
)
from bafusion.io import read_image

LYTRO = Path(os.environ.get("BAFUSION_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "eval" / "lytro"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, nargs="+", default=[1, 5, 10])
    args = ap.parse_args()
    torch.set_num_threads(1)
    nets = load_nets_from_dir(None, "cpu")
    params = FusionParams()
    print("| pair | recovery error vs truth (px RMS corners) | net of the pair's own estimate (px) | "
          "align time (s) | crop (WxH) | QG original | QG aligned | difference | QG exact inverse (resampling only) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for i in args.pairs:
        a = read_image(LYTRO / f"lytro-{i:02d}-A.jpg")
        b = read_image(LYTRO / f"lytro-{i:02d}-B.jpg")
        h, w = a.shape[:2]
        t = similarity_matrix((3.3, -2.4), 0.5, 1.01, center=((w - 1) / 2, (h - 1) / 2))
        truth = np.linalg.inv(t)
        bw = warp_to_first(b, t, order=3)  # the handheld shot (bicubic, as the aligner)
        t0 = time.perf_counter()
        al = align_images([a, bw], "similarity")
        secs = time.perf_counter() - t0
        own = estimate_transform(a, b, "similarity")
        err = corner_rms(al.transforms[1], a.shape, truth)
        net = corner_rms(al.transforms[1], a.shape, own @ truth)
        x0, y0, x1, y1 = al.crop
        f_orig = fuse_images(a, b, nets, params).fused[y0:y1, x0:x1]
        f_al = fuse_images(al.images[0], al.images[1], nets, params).fused
        ac, bc = a[y0:y1, x0:x1], b[y0:y1, x0:x1]
        q0, q1 = qg(ac, bc, f_orig), qg(ac, bc, f_al)
        b_exact = warp_to_first(bw, truth, order=3)[y0:y1, x0:x1]  # undone by the true transform
        q2 = qg(ac, bc, fuse_images(ac, b_exact, nets, params).fused)
        print(f"| lytro-{i:02d} | {err:.3f} | {net:.3f} | {secs:.2f} | {x1 - x0}x{y1 - y0} | {q0:.4f} | {q1:.4f} | "
              f"{q1 - q0:+.4f} | {q2:.4f} ({q2 - q0:+.4f}) |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
