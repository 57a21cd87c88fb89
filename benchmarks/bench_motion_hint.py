"""Do the shots move? Measure :func:`bafusion.fusion.scene.coarse_motion`, the cheap estimate
behind the hint that ``bafusion fuse`` prints without ``--align``, and the motion above which
aligning pays.

``--part estimate``: on every real pair of shared/data/eval (20 Lytro, 12 classic, 41 MFIFB real),
the coarse motion at several (side, iterations, samples) settings against the registration of the
full shots (:func:`bafusion.fusion.align.estimate_transform`, what ``--align similarity`` does),
with the time of each (one thread); which pairs get the hint (:func:`bafusion.fusion.scene.motion_hints`),
and its time against a fusion's; three registered Lytro pairs upscaled to 4000x3000.

``--part fuse``: held-out scenes (scikit-image's photos, as ``realistic_validation.py``, the paper
kind: Gaussian sigma 1-3) whose B is moved by a known similarity of a given corner RMS (half
shift in a random direction, half magnification about the centre); fused with the shipped nets
without alignment and with ``--align similarity``; decision accuracy against the true map on
the aligned crop (the same pixels for both): all pixels, within 8 px of the true boundary, where
the sources differ. The coarse estimate of each moved pair is recorded too. PSNR against the
truth is in the CSV only: the truth lies in A's frame, so unaligned B pixels cost PSNR at any
motion by construction, and it says nothing about when aligning pays.

    OMP_NUM_THREADS=1 python benchmarks/bench_motion_hint.py --part estimate [--data ../shared/data] [--fuse-time lytro-05] [--max-pairs 2]
    OMP_NUM_THREADS=1 python benchmarks/bench_motion_hint.py --part fuse [--pairs 6] [--motions 0 1 2 3 4 6]
    OMP_NUM_THREADS=1 python benchmarks/bench_motion_hint.py --part auto [--pairs 10] [--kinds misregistration all]
    python benchmarks/bench_motion_hint.py --part figure [--figure-pair savic-08]

``--part defocus``: registered synthetic product shots (a textured object on a smooth backdrop,
defocus spread as optics make it) whose raw estimate reads the defocus as a magnification, against
the estimate with either shot blurred (:data:`bafusion.fusion.scene.DEFOCUS_SIGMA`, then the blur
ladder :data:`bafusion.fusion.scene.DEFOCUS_LADDER`), also with B brighter, really moved or
magnified (focus breathing); then the
verdict of :func:`bafusion.fusion.scene.shot_motions` on every real pair, with its time.

    OMP_NUM_THREADS=1 python benchmarks/bench_motion_hint.py --part defocus

``--part auto``: ``--align auto`` against no alignment on the held-out kinds whose B moves
(misregistration: shift up to 2 px per axis and magnification up to 2 %; all), decision accuracy
on the crop that auto's alignment leaves.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for p in (REPO / "src", REPO / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from bafusion.fusion.align import align_images, corner_rms, estimate_transform  # noqa: E402
from bafusion.fusion.scene import HINT_MOTION_PX, coarse_motion, motion_hints  # noqa: E402
from bafusion.io import read_images  # noqa: E402

SETTINGS = ((520, 50, 80000, 1e-3), (520, 50, 20000, 1e-3), (520, 50, 20000, 0.01), (520, 50, 20000, 0.03),
            (360, 50, 20000, 0.01))


def fuse_time(rows: list[dict], data: Path, name: str) -> None:
    """The time of the hint against that of the fusion (shipped nets, library defaults, one
    thread) on one pair, measured side by side."""
    import torch

    from bafusion.fusion import FusionParams, fuse_images, load_nets_from_dir

    torch.set_num_threads(1)
    fa = next((data / "eval").rglob(f"{name}-A.*"))
    a, b = read_images([fa, next(fa.parent.glob(f"{name}-B.*"))])
    nets = load_nets_from_dir(None, "cpu")
    t = time.perf_counter()
    fuse_images(a, b, nets, FusionParams())
    tf = time.perf_counter() - t
    t = time.perf_counter()
    motion_hints([a, b], ["A", "B"])
    th = time.perf_counter() - t
    print(f"{name} ({a.shape[1]}x{a.shape[0]}): fusion {tf:.2f} s, hint {th:.3f} s ({100 * th / tf:.1f} % of the fusion)")


def camera_size(pairs: tuple[str, ...] = ("lytro-05", "lytro-01", "lytro-13")) -> None:
    """Registered pairs made camera-size (the 4:3 crop upscaled to 4000x3000, as
    ``bench_camera.py``): the coarse motion against the pair's own at 520 px scaled by the
    upscale, whether the hint fires, and its time."""
    from bench_camera import CROP, scene

    for name in pairs:
        a0, b0 = scene(name, (CROP[1] - CROP[0], 520))
        own = coarse_motion(a0, b0) * 4000 / 520
        a, b = scene(name, (3000, 4000))
        t = time.perf_counter()
        d = coarse_motion(a, b)
        hint = motion_hints([a, b], ["A", "B"])
        print(f"{name} 4000x3000: coarse motion {d:.2f} px (its own at 520 px x {4000 / 520:.2f}: {own:.2f} px), "
              f"hint: {'yes' if hint else 'no'} ({time.perf_counter() - t:.2f} s for both)")


def part_estimate(data: Path, out: Path, fuse_pair: str | None = None, max_pairs: int = 0) -> None:
    from bench_scene import pairs

    rows = []
    found = pairs(data / "eval")
    if max_pairs:  # a quick check: the first pairs of every set (lytro, classic, real), no camera-size pair
        kept: dict[str, int] = {}
        for name, *_ in found:
            kept[name.split("/")[0]] = kept.get(name.split("/")[0], 0) + 1
            kept[name] = kept[name.split("/")[0]]  # its place in its set
        found = [p for p in found if kept[p[0]] <= max_pairs]
    for name, fa, fb in found:
        a, b = read_images([fa, fb])
        t = time.perf_counter()
        full = corner_rms(estimate_transform(a, b, "similarity"), a.shape)
        row = {"pair": name, "size": f"{a.shape[1]}x{a.shape[0]}", "full": full, "full_s": time.perf_counter() - t}
        for side, it, n, tol in SETTINGS:
            t = time.perf_counter()
            row[f"{side}/{it}/{n}/{tol:g}"] = coarse_motion(a, b, side, it, n, tol)
            row[f"{side}/{it}/{n}/{tol:g}_s"] = time.perf_counter() - t
        t = time.perf_counter()
        row["hint"] = bool(motion_hints([a, b], ["A", "B"]))
        row["hint_s"] = time.perf_counter() - t
        rows.append(row)
        print(json.dumps(row), flush=True)
    write(rows, out / "motion-estimate.csv")
    hinted = [f"{r['pair']} ({r['full']:.2f})" for r in rows if r["hint"]]
    print(f"hints (threshold {HINT_MOTION_PX:g} px, defaults): {len(hinted)} of {len(rows)} pairs: {', '.join(hinted)}")
    quiet = [f"{r['pair']} ({r['full']:.2f})" for r in rows if not r["hint"] and r["full"] > HINT_MOTION_PX]
    print(f"above the threshold by the full registration but no hint: {', '.join(quiet) or 'none'}")
    print(f"hint time: median {np.median([r['hint_s'] for r in rows]):.3f} s, max {max(r['hint_s'] for r in rows):.3f} s")
    if fuse_pair:
        fuse_time(rows, data, fuse_pair)
    if max_pairs:
        print(f"--max-pairs {max_pairs}: the first {max_pairs} pair(s) of each set; the camera-size check not run")
    else:
        camera_size()
    print("Settings: long side / iterations / samples / tolerance; max abs diff against the registration of the full shots "
          "(Full), g09-newspaper left out (its full registration fails: 59 px, see hints).")
    print("| set | pairs | full (min / median / max px, median s) | " + " | ".join(f"{s}/{i}/{n}/{t:g}: max abs diff px, median s" for s, i, n, t in SETTINGS) + " |")
    for group in ("lytro", "classic", "real/savic", "real/tsai", "real/stand", ""):
        sel = [r for r in rows if r["pair"].startswith(group)]
        if not sel:  # (--max-pairs: a set may have none of the pairs kept)
            continue
        f = [r["full"] for r in sel]
        cells = [f"{np.min(f):.2f} / {np.median(f):.2f} / {np.max(f):.2f}, {np.median([r['full_s'] for r in sel]):.3f} s"]
        for s, i, n, tol in SETTINGS:
            key = f"{s}/{i}/{n}/{tol:g}"
            d = [abs(r[key] - r["full"]) for r in sel if "newspaper" not in r["pair"]] or [float("nan")]
            cells.append(f"{max(d):.2f}, {np.median([r[key + '_s'] for r in sel]):.3f} s")
        print(f"| {group or 'all'} | {len(sel)} | " + " | ".join(cells) + " |")


def accuracies(tag: str, dm: np.ndarray, truth: np.ndarray, differ: np.ndarray) -> dict[str, float]:
    """Decision accuracy of ``dm`` against the true map: all pixels, within 8 px of the true
    boundary, where the sources differ; keys suffixed by ``tag``."""
    from bafusion.fusion import decision_accuracy

    return {f"acc_{tag}": decision_accuracy(dm, truth), f"band_{tag}": decision_accuracy(dm, truth, 8),
            f"differ_{tag}": float((dm == truth)[differ].mean())}


def moved(b: np.ndarray, rms: float, rng: np.random.Generator) -> np.ndarray:
    """``b`` moved by a similarity whose corners move ``rms`` px (RMS): half of it (in squares)
    a shift in a random direction, half a magnification about the centre."""
    from bafusion.data.composite import warp_similarity

    h, w = b.shape[:2]
    if rms == 0:
        return b
    part = rms / math.sqrt(2)
    ang = rng.uniform(0, 2 * math.pi)
    shift = (part * math.sin(ang), part * math.cos(ang))
    corner = math.hypot((h - 1) / 2, (w - 1) / 2)
    mag = 1 + part / corner * rng.choice([-1, 1])
    return np.clip(np.round(warp_similarity(b.astype(np.float64), shift, mag)), 0, 255).astype(np.uint8)


def part_fuse(args, out: Path) -> None:
    import torch
    from realistic_validation import differing_pixels, make_pairs

    from bafusion.evaluation.evaluate import truth_metrics
    from bafusion.fusion import (
        FusionParams,
        fuse_images,
        load_nets_from_dir,
    )

    torch.set_num_threads(1)
    nets = load_nets_from_dir(None, "cpu")
    params = FusionParams()
    rng = np.random.default_rng(7)
    rows = []
    for name, a, b0, truth, tdm in make_pairs("paper", args.pairs):
        for d in args.motions:
            b = moved(b0, d, rng)
            est = coarse_motion(a, b)
            al = align_images([a, b], "similarity")
            x0, y0, x1, y1 = al.crop
            r0 = fuse_images(a, b, nets, params)
            r1 = fuse_images(al.images[0], al.images[1], nets, params)
            t = truth[y0:y1, x0:x1]
            m0 = truth_metrics(t, r0.fused[y0:y1, x0:x1])
            m1 = truth_metrics(t, r1.fused)
            tc = tdm[y0:y1, x0:x1]
            dif = differing_pixels(a, b0)[y0:y1, x0:x1]
            row = {"pair": name, "motion": d, "coarse": est, "aligned_rms": al.rms_px[1],
                   "psnr_none": m0["PSNR"], "psnr_align": m1["PSNR"]}
            for tag, dm in (("none", r0.decision[y0:y1, x0:x1]), ("align", r1.decision)):
                row.update(accuracies(tag, dm, tc, dif))
            rows.append(row)
            print(json.dumps(row), flush=True)
    write(rows, out / "motion-fuse.csv")
    print("| motion (px) | coarse estimate, mean (max error) | accuracy none / --align | within 8 px none / --align "
          "| where the sources differ none / --align | pairs --align better (within 8 px) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for d in args.motions:
        sel = [r for r in rows if r["motion"] == d]
        cells = [f"{np.mean([r[f'{m}_none'] for r in sel]):.4f} / {np.mean([r[f'{m}_align'] for r in sel]):.4f}"
                 for m in ("acc", "band", "differ")]
        err = max(abs(r["coarse"] - d) for r in sel)
        better = sum(r["band_align"] > r["band_none"] for r in sel)
        print(f"| {d:g} | {np.mean([r['coarse'] for r in sel]):.2f} ({err:.2f}) | " + " | ".join(cells) + f" | {better}/{len(sel)} |")


def part_auto(args, out: Path) -> None:
    """``--align auto`` against no alignment on the held-out kinds that move B
    (``realistic_validation.py``: misregistration, all): decision accuracy on the crop auto's
    alignment leaves (the whole image when it does not align)."""
    import torch
    from realistic_validation import differing_pixels, make_pairs

    from bafusion.fusion import (
        FusionParams,
        fuse_images,
        load_nets_from_dir,
    )
    from bafusion.fusion.scene import shot_motions

    torch.set_num_threads(1)
    nets = load_nets_from_dir(None, "cpu")
    params = FusionParams()
    rows = []
    for kind in args.kinds:
        for name, a, b, _, tdm in make_pairs(kind, args.pairs):
            sm = shot_motions([a, b])[0]
            r0 = fuse_images(a, b, nets, params)
            if sm.verdict == "moves":
                al = align_images([a, b], "similarity")
                x0, y0, x1, y1 = al.crop
                r1 = fuse_images(al.images[0], al.images[1], nets, params)
                dm1 = r1.decision
            else:
                x0, y0, x1, y1 = 0, 0, a.shape[1], a.shape[0]
                dm1 = r0.decision
            tc = tdm[y0:y1, x0:x1]
            dif = differing_pixels(a, b)[y0:y1, x0:x1]
            row = {"kind": kind, "pair": name, "coarse": sm.px, "verdict": sm.verdict}
            for tag, dm in (("none", r0.decision[y0:y1, x0:x1]), ("auto", dm1)):
                row.update(accuracies(tag, dm, tc, dif))
            rows.append(row)
            print(json.dumps(row), flush=True)
    write(rows, out / "motion-auto.csv")
    print("| kind | pairs auto aligned | coarse motion of those (px) | accuracy none / auto | within 8 px none / auto "
          "| where the sources differ none / auto | aligned pairs better / worse (within 8 px) |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for kind in args.kinds:
        sel = [r for r in rows if r["kind"] == kind]
        moved = [r["coarse"] for r in sel if r["verdict"] == "moves"]
        span = f"{min(moved):.1f}-{max(moved):.1f}" if moved else "-"
        cells = [f"{np.mean([r[f'{m}_none'] for r in sel]):.4f} / {np.mean([r[f'{m}_auto'] for r in sel]):.4f}"
                 for m in ("acc", "band", "differ")]
        better = sum(r["band_auto"] > r["band_none"] for r in sel if r["verdict"] == "moves")
        worse = sum(r["band_auto"] < r["band_none"] for r in sel if r["verdict"] == "moves")
        print(f"| {kind} | {len(moved)}/{len(sel)} | {span} | " + " | ".join(cells) + f" | {better} / {worse} |")


def part_figure(args, out: Path) -> None:
    """A figure of one real pair that moves: its fusion without alignment and with ``--align
    auto``, on the crop auto leaves, side by side and enlarged 3x (``motion-<pair>.png``)."""
    import torch
    from PIL import Image

    from bafusion.fusion import FusionParams, fuse_images, load_nets_from_dir
    from bafusion.fusion.scene import moving_shots

    torch.set_num_threads(1)
    fa = next((Path(args.data) / "eval").rglob(f"{args.figure_pair}-A.*"))
    a, b = read_images([fa, next(fa.parent.glob(f"{args.figure_pair}-B.*"))])
    if not moving_shots([a, b]):
        print(f"{args.figure_pair}: does not move more than the hint's threshold; no figure")
        return
    nets = load_nets_from_dir(None, "cpu")
    al = align_images([a, b], "similarity")
    x0, y0, x1, y1 = al.crop
    none = fuse_images(a, b, nets, FusionParams()).fused[y0:y1, x0:x1]
    auto = fuse_images(al.images[0], al.images[1], nets, FusionParams()).fused
    gap = np.full((none.shape[0], 6) + none.shape[2:], 255, np.uint8)
    fig = np.concatenate([none, gap, auto], axis=1)
    path = out / f"motion-{args.figure_pair}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(fig).resize((fig.shape[1] * 3, fig.shape[0] * 3), Image.NEAREST).save(path)
    print(f"{path}: left without alignment, right --align auto (corner motion {al.rms_px[1]:.1f} px)")


def product_shot(defocus: float, h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A registered pair as optics make it: a textured object on a smooth backdrop, A focused on
    the object, B on the backdrop (the blurred object spreads over it); as the test."""
    from scipy import ndimage

    yy, xx = np.mgrid[0:h, 0:w]
    backdrop = 60 + 120 * yy / h + 30 * xx / w
    m = (((yy - h / 2) / (h / 4)) ** 2 + ((xx - w / 2) / (w / 5)) ** 2 < 1).astype(float)
    fg = 100 + ndimage.gaussian_filter(np.random.default_rng(seed).random((h, w)), 1.5) * 80
    a = fg * m + ndimage.gaussian_filter(backdrop, defocus) * (1 - m)
    b = ndimage.gaussian_filter(fg * m, defocus) + backdrop * (1 - ndimage.gaussian_filter(m, defocus))
    return tuple(np.clip(np.round(x), 0, 255).astype(np.uint8) for x in (a, b))


def part_defocus(data: Path, out: Path) -> None:
    """Defocus read as motion: registered synthetic product shots (raw estimate, the estimate with
    either shot blurred by DEFOCUS_SIGMA, the verdict), then the verdicts on the real pairs and the
    time the blurred estimates add to a shot that seems to move."""
    from bench_scene import pairs

    from bafusion.fusion.scene import DEFOCUS_EXPLAINS, DEFOCUS_LADDER, DEFOCUS_SIGMA, shot_motions

    from bafusion.data.composite import warp_similarity

    def shifted(b: np.ndarray, shift: tuple[float, float], mag: float = 1.0) -> np.ndarray:
        return np.clip(np.round(warp_similarity(b.astype(np.float64), shift, mag)), 0, 255).astype(np.uint8)

    variants = {  # registered; B brighter; B really moved 6 px; focus breathing 1.5 %
        "": lambda b: b,
        ", B x1.15+8": lambda b: np.clip(np.round(b * 1.15 + 8), 0, 255).astype(np.uint8),
        ", B moved (6, -3) px": lambda b: shifted(b, (-3.0, 6.0)),
        ", B magnified 1.015": lambda b: shifted(b, (0.0, 0.0), 1.015),
    }
    rows = []
    for (h, w) in ((600, 800), (1500, 2000)):
        for defocus in (2, 4, 6, 9, 12):
            a, b0 = product_shot(defocus, h, w)
            for tag, change in variants.items():
                b = change(b0)
                t = time.perf_counter()
                (sm,) = shot_motions([a, b])
                rows.append({"pair": f"product {w}x{h} defocus {defocus}{tag}", "raw": sm.px, "explains": sm.explains,
                             "blurred": sm.blurred, "verdict": sm.verdict, "s": time.perf_counter() - t})
                print(json.dumps(rows[-1]), flush=True)
    if (data / "eval").is_dir():
        for name, fa, fb in pairs(data / "eval"):
            a, b = read_images([fa, fb])
            t = time.perf_counter()
            (sm,) = shot_motions([a, b])
            rows.append({"pair": name, "raw": sm.px, "explains": sm.explains, "blurred": sm.blurred,
                         "verdict": sm.verdict, "s": time.perf_counter() - t})
            print(json.dumps(rows[-1]), flush=True)
    write(rows, out / "motion-defocus.csv")
    print(f"DEFOCUS_SIGMA {DEFOCUS_SIGMA:g}, DEFOCUS_LADDER {DEFOCUS_LADDER}, DEFOCUS_EXPLAINS {DEFOCUS_EXPLAINS:g}")
    print("| pair | raw estimate (px) | no motion fits x better | either shot blurred (px) | verdict | s |")
    print("|---|---:|---:|---:|---|---:|")
    for r in rows:
        if r["pair"].startswith("product") or r["verdict"] in ("moves", "defocus"):
            blurred = "" if r["blurred"] is None else f"{r['blurred']:.2f}"
            explains = "" if r["explains"] is None else f"{r['explains']:.2f}"
            print(f"| {r['pair']} | {r['raw']:.2f} | {explains} | {blurred} | {r['verdict']} | {r['s']:.2f} |")
    real = [r for r in rows if not r["pair"].startswith("product")]
    for v in ("moves", "defocus", "still", "failed", "too small"):
        print(f"real pairs {v}: {sum(r['verdict'] == v for r in real)}")


def write(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("estimate", "fuse", "auto", "figure", "defocus"), required=True)
    ap.add_argument("--figure-pair", default="savic-08", help="real pair of --part figure")
    ap.add_argument("--kinds", nargs="+", default=["misregistration", "all"], help="held-out kinds of --part auto")
    ap.add_argument("--data", default=os.environ.get("BAFUSION_SHARED_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--max-pairs", type=int, default=0, metavar="N",
                    help="--part estimate: only the first N pairs of each set (lytro, classic, real) and no "
                    "camera-size check, a quick run; 0 = every pair (default)")
    ap.add_argument("--fuse-time", default="lytro-05", help="pair whose fusion is timed against the hint ('' none)")
    ap.add_argument("--motions", type=float, nargs="+", default=[0, 1, 2, 3, 4, 6])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out"))
    args = ap.parse_args()
    out = Path(args.out)
    if args.part == "estimate":
        if not (Path(args.data) / "eval").is_dir():
            print(f"{args.data}/eval: not found", file=sys.stderr)
            return 2
        part_estimate(Path(args.data), out, args.fuse_time, args.max_pairs)
    elif args.part == "fuse":
        part_fuse(args, out)
    elif args.part == "auto":
        part_auto(args, out)
    elif args.part == "defocus":
        part_defocus(Path(args.data), out)
    else:
        part_figure(args, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
