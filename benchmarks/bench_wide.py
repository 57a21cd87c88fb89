"""Wide pairs (panoramas): the working resolution's short side, before and after.

A camera-size pair (long side above ``fuse.working_above``) is decided at a working
resolution. Scaled by its long side alone (``working_side``, 640), an 8:1 panorama was decided
at 640x80, its subject a few patches high; now a pair wider than 16:9 keeps a 16:9 frame's
short side, ``working_side * 9 / 16`` (:func:`bafusion.fusion.working.working_resolution`).

Scenes: rows 130..389 of a Lytro pair (``--pair``), tiled 2x and 4x side by side and upscaled
x2 (Lanczos, Pillow): 520x2080 (4:1) and 520x4160 (8:1). Reference: the decision map of the
520x520 pair fused as it is, cut, tiled and upscaled the same way. For each panorama, with the
rule as it was (long side only: ``working_resolution`` replaced by
:func:`bafusion.fusion.working.working_size` in this process) and as it is: the fraction of
pixels taken from A, the agreement with the reference and the time of
:func:`bafusion.fusion.fuse_images` (shipped nets, built-in parameters, one thread). Then
ordinary frames (the 520x520 pair's centre cropped to 4:3, 3:2 and 16:9, upscaled to
1600x1200, 1536x1024, 1920x1080) fused both ways: the fused images must be the same bits.
About 2 minutes on 2 cores::

    python benchmarks/bench_wide.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("BAFUSION_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
ROWS = (130, 390)  # the band of the 520x520 pair that is tiled into panoramas
FRAMES = {"4:3": ((390, 520), (1200, 1600)), "3:2": ((346, 520), (1024, 1536)), "16:9": ((292, 520), (1080, 1920))}


def _upscaled(x: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(x).resize(size_hw[::-1], Image.LANCZOS))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pair", default="lytro-05")
    args = ap.parse_args()
    d = SHARED / "eval" / "lytro"
    if not d.is_dir():
        sys.exit(f"bench_wide: real data not found at {SHARED} (set BAFUSION_SHARED_DATA)")
    import torch

    import bafusion.fusion.working as working
    from bafusion.fusion import FusionParams, fuse_images, load_nets_from_dir
    from bafusion.io import read_images

    torch.set_num_threads(1)
    nets = load_nets_from_dir(None, "cpu")
    p = FusionParams()
    a, b = read_images([d / f"{args.pair}-A.jpg", d / f"{args.pair}-B.jpg"])
    ref = fuse_images(a, b, nets, p).decision
    now = working.working_resolution
    rules = {"long side only (before)": working.working_size, "16:9 short side (now)": now}

    def fused(x: np.ndarray, y: np.ndarray, rule: str):
        working.working_resolution = rules[rule]
        try:
            t0 = time.perf_counter()
            res = fuse_images(x, y, nets, p)
            return res, time.perf_counter() - t0
        finally:
            working.working_resolution = now

    print(f"reference: {args.pair} 520x520, fraction from A {ref.mean():.3f}")
    for k in (2, 4):
        r0, r1 = ROWS
        h, w = 2 * (r1 - r0), 2 * k * a.shape[1]
        xa, xb = (_upscaled(np.tile(x[r0:r1], (1, k, 1)), (h, w)) for x in (a, b))
        truth = np.tile(ref[r0:r1], (1, k)).repeat(2, 0).repeat(2, 1)
        for rule, f in rules.items():
            res, dt = fused(xa, xb, rule)
            hs, ws = f((h, w), p.working_side)
            print(f"{w}x{h} ({w // h}:1), {rule}: working {ws}x{hs}, "
                  f"from A {res.decision.mean():.3f} (reference {truth.mean():.3f}), "
                  f"agreement {(res.decision == truth).mean():.4f}, {dt:.2f} s")
    for name, (crop, size) in FRAMES.items():
        r0, c0 = (520 - crop[0]) // 2, (520 - crop[1]) // 2
        xa, xb = (_upscaled(x[r0 : r0 + crop[0], c0 : c0 + crop[1]], size) for x in (a, b))
        before, after = (fused(xa, xb, rule)[0].fused for rule in rules)
        print(f"{size[1]}x{size[0]} ({name}): the same bits both ways: {np.array_equal(before, after)}")


if __name__ == "__main__":
    main()
