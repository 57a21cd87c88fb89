"""Is an alignment estimate borne out by the shots' detail? (``bafusion.fusion.align.SUPPORT_PX``)

1. Registered pairs whose only structure is a small subject over a smooth backdrop: a 400x400
   sky (linear or curved vertical gradient, or flat; noise sigma 1.5) with the dark fence wires
   of lytro-05-A (gray < 60) in one region, sharp in A, blurred (Gaussian 3 px, spreading over
   the sky) in B. No motion between A and B: every estimate should be about 0.
   ``align_images([A, B], "similarity")`` and the motion hint's verdict (``scene.shot_motions``).
   With ``--shift``, B's content is also moved by (3, -1.5) px (cubic spline, after the noise):
   the estimate should then shift the centre by (-3, +1.5) px, and the error from that is given.
2. The 73 real pairs of ``shared/data/eval`` reduced as the motion hint reduces them (520 px):
   the estimate with the check, and whether the check replaced it (it should not: their motion
   is real or a focus bias under 1.7 px).

Run: OMP_NUM_THREADS=1 python benchmarks/bench_align_support.py [--data ../shared/data] [--part sky|real] [--shift]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
S = 400


def sky_pairs(data: Path, seed: int = 1):
    """(sky name, region name, subject share, A, B) for every sky and region (one noise stream)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.linspace(0, 1, S)[:, None, None], np.linspace(0, 1, S)[None, :, None]
    full = np.asarray(Image.open(data / "eval" / "lytro" / "lytro-05-A.jpg").convert("RGB"))
    h, w = full.shape[:2]
    branch = full[(h - S) // 2:(h - S) // 2 + S, (w - S) // 2:(w - S) // 2 + S].astype(float)
    g = branch.mean(axis=2)
    blue = np.array([120, 160, 215.0])
    skies = {"linear": blue * (1 - 0.25 * yy) + np.zeros((S, S, 3)), "flat": blue + np.zeros((S, S, 3)),
             "curved": blue * (1 - 0.35 * yy ** 2 - 0.05 * xx) + np.zeros((S, S, 3))}
    regions = {"corner": np.s_[300:, 250:], "strip": np.s_[330:, :], "half": np.s_[200:, :],
               "centre": np.s_[140:260, 140:260], "topleft": np.s_[:100, :150], "corner2x": np.s_[200:, 200:]}
    for sn, sky in skies.items():
        for rn, reg in regions.items():
            mask = np.zeros((S, S), bool)
            mask[reg] = True
            m = ((g < 60) & mask)[..., None].astype(float)
            a = sky * (1 - m) + branch * m
            bm, bb = ndimage.gaussian_filter(m, (3, 3, 0)), ndimage.gaussian_filter(branch, (3, 3, 0))
            b = sky * (1 - bm) + bb * bm

            def noisy(x):
                return np.clip(np.round(x + rng.normal(0, 1.5, x.shape)), 0, 255).astype(np.uint8)

            yield sn, rn, float(m.mean()), noisy(a), noisy(b)


SHIFT = (3.0, -1.5)  #: --shift: how B's content moves (x, y), px


def part_sky(data: Path, shift: bool = False) -> None:
    from bafusion.fusion.align import align_images
    from bafusion.fusion.scene import shot_motions

    if shift:
        print("| sky | subject region (share) | shift of the centre (truth (-3, +1.5)) | scale | error (px) | replaced "
              "| hint |")
        print("|---|---|---|---|---|---|---|")
    else:
        print("| sky | subject region (share) | estimate | replaced | hint verdict |")
        print("|---|---|---|---|---|")
    for sn, rn, share, a, b in sky_pairs(data):
        if shift:
            moved = ndimage.shift(b.astype(float), (SHIFT[1], SHIFT[0], 0), order=3, mode="nearest")
            b = np.clip(np.round(moved), 0, 255).astype(np.uint8)
            al = align_images([a, b], "similarity")
            sm = shot_motions([a, b])[0]
            m, c = al.transforms[1], np.array([(S - 1) / 2, (S - 1) / 2, 1.0])
            dx, dy = (m @ c)[:2] - c[:2]
            why = al.replaced[1] or ""
            print(f"| {sn} | {rn} ({100 * share:.1f} %) | ({dx:+.2f}, {dy:+.2f}) | {np.hypot(m[0, 0], m[1, 0]):.4f} | "
                  f"{np.hypot(dx + SHIFT[0], dy + SHIFT[1]):.2f} | {why.split(': ')[-1] if why else 'no'} | "
                  f"{sm.verdict} {'' if sm.px is None else f'{sm.px:.1f}'} |", flush=True)
            continue
        al = align_images([a, b], "similarity")
        sm = shot_motions([a, b])[0]
        line = al.describe(["A", "B"])[1].split(": ", 1)[1].split(";")
        why = al.replaced[1] or ""
        print(f"| {sn} | {rn} ({100 * share:.1f} %) | {line[0]}; {line[1].strip().split(', match')[0]} | "
              f"{why.split(': ')[-1] if why else 'no'} | {sm.verdict} {'' if sm.px is None else f'{sm.px:.1f}'} |",
              flush=True)


def part_real(data: Path) -> None:
    import bafusion.fusion.align as al
    from bafusion.fusion import scene

    n = replaced = 0
    for fa in sorted((data / "eval").glob("*/*-A.*")):
        fb = sorted(fa.parent.glob(fa.name.rsplit("-A.", 1)[0] + "-B.*"))
        if not fb:
            continue
        a, b = (np.asarray(Image.open(f).convert("RGB")) for f in (fa, fb[0]))
        if a.shape != b.shape:
            continue
        (ra, k), (rb, _) = scene._reduce_k(a, scene.MOTION_SIDE), scene._reduce_k(b, scene.MOTION_SIDE)
        ga, gb = al._gray(ra), al._gray(rb)
        notes: list[str] = []
        m = al._estimate(ga, gb, al._clipped(ga), al._clipped(gb), "similarity", 1.5, scene.MOTION_ITERS,
                         scene.MOTION_SAMPLES, scene.MOTION_TOL, antialias=0.0, notes=notes)
        n += 1
        replaced += bool(notes)
        print(f"{fa.name}: {al.corner_rms(m, ga.shape) * k:.2f} px" + (f"; {notes[0]}" if notes else ""), flush=True)
    print(f"real pairs: {n}, estimate replaced on {replaced}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.environ.get("BAFUSION_SHARED_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--part", choices=("sky", "real"), default="sky")
    ap.add_argument("--shift", action="store_true", help="--part sky: B really moved by (3, -1.5) px")
    args = ap.parse_args()
    if args.part == "sky":
        part_sky(Path(args.data), args.shift)
    else:
        part_real(Path(args.data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
