"""Alignment benchmark (issue 14): Lytro pairs with B moved as a handheld shot would be
(shift (3.3, -2.4) px, rotation 0.5 deg, scale 1.01 about the centre), fused with
``--align similarity``, against the fusion of the original pair; QG on the common area.

The moved shot is simulated by resampling B (``--sim-order``: 3, the bicubic spline the first
version used, or 5, a quintic spline that blurs less and so is closer to a camera sampling the
moved scene); the aligner resamples it back with ``--order``.

Columns: ``own`` is the motion the estimator finds between the *original* A and B (corner RMS):
on Lytro it is mostly real (refocusing magnifies; see BENCHMARKS.md), so an aligner that is
right undoes it as well as the added motion. Hence three references besides the original
pair: the true inverse of the added motion (what resampling alone costs), and own @ true
inverse (what an error-free aligner of the actual geometry gives: resampling plus undoing the
pair's own misregistration, which QG against the original, misregistered, B penalises).

``--register-first`` removes that misregistration first (B resampled by the pair's own estimate,
order 5, and that pair taken as the original): the target measured on registered pairs.

Run: OMP_NUM_THREADS=1 python benchmarks/bench_align.py [--pairs 1 5 10] [--sim-order 5] [--order 5]
[--register-first]
     OMP_NUM_THREADS=1 python benchmarks/bench_align.py --bias   (the estimator's own bias: composites of
     real mattes, registered by construction, against the estimate on the original Lytro pairs)
     OMP_NUM_THREADS=1 python benchmarks/bench_align.py --speed [--baseline OLD/align.py] [--names lytro/lytro-11 ...]
               (the time of ``align_images([A, B], "similarity")`` on real pairs upscaled to about
               24 MP; with ``--baseline``, another version of ``bafusion/fusion/align.py`` (e.g. a
               checkout of an earlier commit) is timed alternately in the same process and its
               transforms, match qualities and aligned shots must be byte-identical; the match
               quality of shots over 520 px changed on purpose with the 520-px quality scale
               (``QUALITY_SIDE``), so against an align.py from before it this check can only
               report a mismatch, "NO", for these shots: compare the timing alone then)
     OMP_NUM_THREADS=1 python benchmarks/bench_align.py --turn-check [--names lytro/lytro-19 real/savic-05 ...]
               (the turn check of ``--align translation`` (``translation_shortfalls``): per pair, the
               translation alignment, then the second alignment it makes on a shot left below
               ``TRANSLATION_QUALITY``, a similarity fitted on the shots reduced to 520 px with the
               motion hint's fit (``_quick_similarity``, timed whether or not the pair's quality
               calls for it), against the full-size ``align_images([A, B], "similarity")`` it
               replaced; the fastest of ``--rounds`` runs of each)
(shipped model, CPU, one thread; prints a Markdown table)."""

from __future__ import annotations

import argparse
import itertools
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


def bias(pairs: list[int]) -> int:
    """The estimate on shots registered by construction (alphamatting foregrounds over COCO
    backgrounds, the paper's composites: A blurs the background, B the foreground; "spread":
    B's defocused foreground spreads over the background, as real defocus does) against
    the estimate on the original Lytro pairs."""
    from PIL import Image

    from bafusion.align import describe_matrix
    from bafusion.composite import defocus, fit_background

    train = LYTRO.parents[1] / "train"
    bgs = sorted((train / "coco" / "train2017").glob("*.jpg"))
    print("| composite | size | alpha mean | Gaussian 2 px | spread | Gaussian 4 px | spread | disc, radius 4 px | spread |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k, gt in enumerate([1, 3, 5, 8, 12, 17]):
        fg = np.asarray(Image.open(train / "alphamatting" / "input" / f"GT{gt:02d}.png").convert("RGB")) / 255.0
        alpha = np.asarray(Image.open(train / "alphamatting" / "gt" / f"GT{gt:02d}.png").convert("L")) / 255.0
        bg = fit_background(np.asarray(Image.open(bgs[k]).convert("RGB")), fg.shape[:2]) / 255.0
        cells = []
        for (kern, s), spread in itertools.product((("gaussian", 2.0), ("gaussian", 4.0), ("disc", 2.0)), (False, True)):
            al3 = alpha[..., None]
            pa = fg * al3 + defocus(bg, s, kern) * (1 - al3)
            if spread:  # the defocused foreground spreads over the background (composite realism.spread)
                pb = defocus(fg * al3, s, kern) + bg * (1 - defocus(alpha, s, kern)[..., None])
            else:  # the paper's composite
                pb = defocus(fg, s, kern) * al3 + bg * (1 - al3)
            pa, pb = ((np.clip(x, 0, 1) * 255).round().astype(np.uint8) for x in (pa, pb))
            m = estimate_transform(pa, pb, "similarity")
            cells.append(f"{corner_rms(m, pa.shape):.3f} px (scale {describe_matrix(m)['scale']:.4f})")
        print(f"| GT{gt:02d} + {bgs[k].name} | {fg.shape[1]}x{fg.shape[0]} | {alpha.mean():.2f} | " + " | ".join(cells) + " |",
              flush=True)
    print()
    print("| Lytro pair | own estimate (px RMS corners) | scale | rotation (deg) | shift of the centre (px) |")
    print("|---|---|---|---|---|")
    for i in pairs:
        a = read_image(LYTRO / f"lytro-{i:02d}-A.jpg")
        b = read_image(LYTRO / f"lytro-{i:02d}-B.jpg")
        m = estimate_transform(a, b, "similarity")
        p = describe_matrix(m)
        h, w = a.shape[:2]
        c = np.array([(w - 1) / 2, (h - 1) / 2, 1.0])
        mc = m @ c
        print(f"| lytro-{i:02d} | {corner_rms(m, a.shape):.3f} | {p['scale']:.4f} | {p['rotation_deg']:+.3f} | "
              f"({mc[0] - c[0]:+.2f}, {mc[1] - c[1]:+.2f}) |", flush=True)
    return 0


def turn_check(names: list[str], rounds: int) -> int:
    """Time the turn check's second alignment (:func:`bafusion.fusion.align._quick_similarity`)
    against the full-size similarity alignment it replaced, after a translation alignment."""
    from bafusion.fusion.align import TRANSLATION_QUALITY, _quick_similarity

    eval_dir = LYTRO.parent
    print("| pair | size | translation alignment (s) | its match quality | reduced similarity (s) | its quality | "
          "full-size similarity (s) | aligned again? |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        a, b = (read_image(next(eval_dir.glob(f"{name}-{s}.*"))) for s in "AB")
        best: dict[str, float] = {}
        for _ in range(rounds):
            for key, fn in (("translation", lambda: align_images([a, b], "translation")),
                            ("reduced", lambda: _quick_similarity(a, b)),
                            ("full", lambda: align_images([a, b], "similarity"))):
                t0 = time.perf_counter()
                out = fn()
                best[key] = min(best.get(key, float("inf")), time.perf_counter() - t0)
                if key == "translation":
                    q = out.quality[1]
                elif key == "reduced":
                    qs = out[1]
        print(f"| {name} | {a.shape[1]}x{a.shape[0]} | {best['translation']:.2f} | {q:.4f} | {best['reduced']:.2f} | "
              f"{qs:.4f} | {best['full']:.2f} | {'yes' if q < TRANSLATION_QUALITY else 'no'} |", flush=True)
    return 0


def speed(names: list[str], megapixels: float, baseline: str | None, rounds: int) -> int:
    """Time :func:`align_images` (similarity) on real pairs upscaled (Lanczos) to about
    ``megapixels``; with ``baseline``, alternately with that version of the module, checking
    that both give the same bytes."""
    import importlib.util

    from PIL import Image

    versions = {"this": align_images}
    if baseline:
        spec = importlib.util.spec_from_file_location("align_baseline", baseline)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["align_baseline"] = mod  # its dataclass looks itself up there
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
        versions["baseline"] = mod.align_images
    eval_dir = LYTRO.parent
    print(f"| pair | size | {' | '.join(f'{k} (s)' for k in versions)} |" + (" this / baseline | identical |" if baseline else ""))
    print("|---|---|" + "---|" * len(versions) + ("---|---|" if baseline else ""))
    for name in names:
        shots = []
        for s in "AB":
            path = next(eval_dir.glob(f"{name}-{s}.*"))
            im = Image.open(path).convert("RGB")
            f = (megapixels * 1e6 / (im.width * im.height)) ** 0.5
            shots.append(np.asarray(im.resize((round(im.width * f), round(im.height * f)), Image.LANCZOS)))
        times: dict[str, list[float]] = {k: [] for k in versions}
        results = {}
        for _ in range(rounds):
            for k, fn in versions.items():  # alternately, so that a busy machine slows both alike
                t0 = time.perf_counter()
                results[k] = fn(shots, "similarity")
                times[k].append(time.perf_counter() - t0)
        cells = [f"{min(times[k]):.2f}" for k in versions]
        if baseline:
            a, b = results["this"], results["baseline"]
            same = (all(np.array_equal(x, y) for x, y in zip(a.transforms, b.transforms)) and a.quality == b.quality
                    and a.crop == b.crop and all(np.array_equal(x, y) for x, y in zip(a.images, b.images)))
            cells += [f"{min(times['this']) / min(times['baseline']):.2f}", "yes" if same else "NO"]
        h, w = shots[0].shape[:2]
        print(f"| {name} | {w}x{h} | " + " | ".join(cells) + " |", flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, nargs="+", default=[1, 3, 5, 7, 10, 14])
    ap.add_argument("--sim-order", type=int, default=5, help="spline order of the simulated motion (3: first version)")
    ap.add_argument("--order", type=int, default=5, help="spline order of the aligner's warp")
    ap.add_argument("--register-first", action="store_true",
                    help="first undo the pair's own motion (B resampled by the estimate on A, B, order 5), "
                         "so that the original pair is registered, then proceed")
    ap.add_argument("--bias", action="store_true", help="measure the estimator's bias instead (no fusion)")
    ap.add_argument("--speed", action="store_true", help="time the alignment of pairs upscaled to --megapixels")
    ap.add_argument("--turn-check", action="store_true",
                    help="time the second alignment of --align translation's turn check against a full-size one")
    ap.add_argument("--names", nargs="+", default=["lytro/lytro-11", "lytro/lytro-18", "real/tsai-06", "real/tsai-07"],
                    help="--speed, --turn-check: pairs under eval/ (without -A/-B); --turn-check's default: "
                         "lytro/lytro-19 real/savic-05 real/tsai-03 real/tsai-09")
    ap.add_argument("--megapixels", type=float, default=24.0)
    ap.add_argument("--baseline", help="--speed: another align.py to time alternately and compare with")
    ap.add_argument("--rounds", type=int, default=2, help="--speed: runs of each version (the fastest counts)")
    args = ap.parse_args()
    if args.turn_check:
        names = args.names if "--names" in sys.argv else ["lytro/lytro-19", "real/savic-05", "real/tsai-03", "real/tsai-09"]
        return turn_check(names, args.rounds)
    if args.speed:
        return speed(args.names, args.megapixels, args.baseline, args.rounds)
    if args.bias:
        return bias(args.pairs)
    if not LYTRO.is_dir():
        print(f"no Lytro pairs at {LYTRO} (set BAFUSION_SHARED_DATA)", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    nets = load_nets_from_dir(None, "cpu")
    params = FusionParams()
    print(f"simulated motion: spline order {args.sim_order}; aligner warp: order {args.order}"
          + ("; pairs registered first (B resampled by its own estimate)" if args.register_first else ""))
    print("| pair | own (px) | error vs truth (px) | net of own (px) | align time (s) | crop | QG original | "
          "QG aligned (diff) | QG true inverse (diff) | QG own @ true inverse (diff) | aligned - own @ true |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for i in args.pairs:
        a = read_image(LYTRO / f"lytro-{i:02d}-A.jpg")
        b = read_image(LYTRO / f"lytro-{i:02d}-B.jpg")
        if args.register_first:
            b = warp_to_first(b, estimate_transform(a, b, "similarity"), order=5)
        h, w = a.shape[:2]
        t = similarity_matrix((3.3, -2.4), 0.5, 1.01, center=((w - 1) / 2, (h - 1) / 2))
        truth = np.linalg.inv(t)
        bw = warp_to_first(b, t, order=args.sim_order)  # the handheld shot
        t0 = time.perf_counter()
        al = align_images([a, bw], "similarity", order=args.order)
        secs = time.perf_counter() - t0
        own = estimate_transform(a, b, "similarity")
        err = corner_rms(al.transforms[1], a.shape, truth)
        net = corner_rms(al.transforms[1], a.shape, own @ truth)
        x0, y0, x1, y1 = al.crop
        ac, bc = a[y0:y1, x0:x1], b[y0:y1, x0:x1]

        q0 = qg(ac, bc, fuse_images(a, b, nets, params).fused[y0:y1, x0:x1])
        q1 = qg(ac, bc, fuse_images(al.images[0], al.images[1], nets, params).fused)
        q2, q3 = (qg(ac, bc, fuse_images(ac, warp_to_first(bw, m, order=args.order)[y0:y1, x0:x1], nets, params).fused)
                  for m in (truth, own @ truth))
        print(f"| lytro-{i:02d} | {corner_rms(own, a.shape):.3f} | {err:.3f} | {net:.3f} | {secs:.2f} | "
              f"{x1 - x0}x{y1 - y0} | {q0:.4f} | {q1:.4f} ({q1 - q0:+.4f}) | {q2:.4f} ({q2 - q0:+.4f}) | "
              f"{q3:.4f} ({q3 - q0:+.4f}) | {q1 - q3:+.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
