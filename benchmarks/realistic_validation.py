"""Held-out realistic validation set with ground truth: decision-map accuracy, PSNR and SSIM
per degradation kind, for one or more models and fusion settings.

The scenes are NOT from the training sources (alphamatting foregrounds, COCO backgrounds): they
are scikit-image's bundled photos (``bafusion.data.sources`` builtin foregrounds, each with its
procedural soft object matte, and builtin backgrounds), composited in colour by the same code as
the training pairs (``bafusion.data.composite.composite_realistic``) with one degradation kind at a
time:

=============== ===============================================================================
kind            degradations (amounts are maxima, drawn per pair; sigma = Gaussian-equivalent)
=============== ===============================================================================
paper           Gaussian blur, sigma 1-3 px (the paper's composites)
strong blur     disc or Gaussian PSF, sigma 4-8 px (disc radius 8-16), defocus spread
exposure        sigma 1-3; exposure difference up to 0.7 stops, gamma 1 +- 0.15
misregistration sigma 1-3; B shifted up to 2 px per axis and magnified by up to +-2 %
noise + JPEG    sigma 1-3; noise std up to 4 levels, JPEG quality 60-85 per shot
all             sigma 1-6, mixed PSF, spread, 0.5 stops, white balance 5 %, gamma 0.1, noise 3,
                JPEG 65-95, shift 1.5 px, magnification 2 %
residual        (only with ``--kinds``) sigma 1-6, mixed PSF, spread, the in-focus layer itself
                blurred by up to 0.5 sigma
=============== ===============================================================================

The truth is ``FG * GT + BG * (1 - GT)`` aligned with A, the true map ``GT >= 0.5``. Decision
accuracy is over all pixels (``band`` px around the true boundary too); PSNR and SSIM of the
fused image against the truth (``bafusion.evaluation.evaluate.truth_metrics``). The truth is undegraded,
so under exposure differences or misregistration even a perfect decision map loses PSNR and
SSIM (B's pixels are brighter or moved): compare models within a row, not rows. In flat
regions (sky, a blank page) A and B are alike and either choice is right for the eye but
counts as wrong for the accuracy; the band accuracy is the sharper measure of the boundary,
and ``accuracy_differ`` counts only the pixels where the sources differ by more than
:data:`DIFFER_LEVELS` gray levels (where the choice changes the image).

    python benchmarks/realistic_validation.py --model models/lytro-2026-11 --model models/default \
        --fuse-json '{}' --fuse-json '{"scales": [1.0, 0.5, 0.25]}' --out benchmarks/out/realistic-validation
    python benchmarks/realistic_validation.py --shrink 0.5 --fuse-json '{"working_min": 0}' --fuse-json '{}'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

from bafusion.data.composite import (  # noqa: E402
    Realism,
    composite_realistic,
    draw_realism,
    fit_background,
)
from bafusion.data.sources import builtin_backgrounds, builtin_foregrounds  # noqa: E402
from bafusion.evaluation.evaluate import truth_metrics  # noqa: E402
from bafusion.fusion import (
    FusionParams,
    decision_accuracy,
    fuse_images,
    load_nets_from_dir,
)

FOREGROUNDS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle")
BACKGROUNDS = ("brick", "grass", "gravel", "camera", "page", "clock")

KINDS: dict[str, tuple[tuple[float, float], Realism]] = {
    "paper": ((1.0, 3.0), Realism()),
    "strong blur": ((4.0, 8.0), Realism(kernel="mixed", spread=True)),
    "exposure": ((1.0, 3.0), Realism(exposure=0.7, gamma=0.15)),
    "misregistration": ((1.0, 3.0), Realism(shift=2.0, scale=0.02)),
    "noise + JPEG": ((1.0, 3.0), Realism(noise=4.0, jpeg=(60, 85))),
    "all": ((1.0, 6.0), Realism(kernel="mixed", spread=True, exposure=0.5, white_balance=0.05, gamma=0.1, noise=3.0,
                                jpeg=(65, 95), shift=1.5, scale=0.02)),
}
#: Kinds measured only when asked for (``--kinds``), so that the default mean stays comparable
#: across sessions. ``residual``: the in-focus layer itself blurred by up to half of sigma
#: (``Realism.residual``), as when the focused layer has depth or a third layer lies behind.
OPTIONAL_KINDS: dict[str, tuple[tuple[float, float], Realism]] = {
    "residual": ((1.0, 6.0), Realism(kernel="mixed", spread=True, residual=0.5)),
}


def make_pairs(kind: str, n_pairs: int, seed: int = 1234):
    """(name, A, B, truth, true map) for ``n_pairs`` (foreground, background) combinations."""
    sig, real = {**KINDS, **OPTIONAL_KINDS}[kind]
    fgs = builtin_foregrounds(FOREGROUNDS, seed)
    bgs = builtin_backgrounds(BACKGROUNDS)
    combos = [(f, b) for f in fgs for b in bgs]
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(combos), size=min(n_pairs, len(combos)), replace=False))
    for k in pick:
        fe, be = combos[k]
        fg = fe.load_image().astype(np.float64)
        matte = fe.load_matte()
        h, w = matte.shape
        bg = fit_background(be.load_image(), (h, w), "cover").astype(np.float64)
        pair_id = 50_000_000 + int(k)
        s = float(np.random.default_rng([seed, pair_id, 1]).uniform(*sig))
        alpha = matte.astype(np.float64) / 255.0
        d = draw_realism(seed, pair_id, real)
        a, b = composite_realistic(fg, alpha, bg, s, real, d, gray=False, noise_seed=(seed, pair_id))
        truth = np.clip(np.round(fg * alpha[..., None] + bg * (1 - alpha[..., None])), 0, 255).astype(np.uint8)
        yield f"{fe.id}__{be.id}", a, b, truth, matte >= 128


#: Gray levels by which the sources must differ (1-px Gaussian of |A - B|) for a pixel to count
#: in ``accuracy_differ``: where they differ less, either choice gives nearly the same image.
DIFFER_LEVELS = 4.0


def differing_pixels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pixels where the choice of source matters: smoothed |gray A - gray B| > DIFFER_LEVELS."""
    from scipy import ndimage

    from bafusion.io import gray_float

    d = np.abs(gray_float(a) - gray_float(b))
    return ndimage.gaussian_filter(d, 1.0) > DIFFER_LEVELS


def shrink_pair(a, b, truth, tdm, factor: float):
    """A, B and the truth shrunk by ``factor`` (Lanczos), the true map by bilinear >= 0.5."""
    from PIL import Image

    h, w = tdm.shape
    size = (int(round(w * factor)), int(round(h * factor)))

    def sm(x, resample=Image.LANCZOS):
        return np.asarray(Image.fromarray(x).resize(size, resample))

    return sm(a), sm(b), sm(truth), sm(tdm.astype(np.uint8) * 255, Image.BILINEAR) >= 128


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", default=[], help="model folder (repeatable; default: the shipped one)")
    ap.add_argument("--fuse-json", action="append", default=[], help="fusion parameter overrides (repeatable)")
    ap.add_argument("--pairs", type=int, default=10, help="pairs per kind (default 10)")
    ap.add_argument("--kinds", default=",".join(KINDS),
                    help=f"comma-separated degradation kinds (the table at the top of this script says what each "
                         f"is; quote names with spaces, e.g. --kinds 'paper,strong blur'): {', '.join(KINDS)} (the "
                         f"default: all of these); also {', '.join(OPTIONAL_KINDS)} (only when named)")
    ap.add_argument("--band", type=int, default=8, help="also the accuracy within this many px of the true boundary")
    ap.add_argument("--shrink", type=float, default=1.0,
                    help="shrink every pair (and its truth) by this factor, Lanczos: small photographs "
                         "(BENCHMARKS.md, 'Small photographs'; default 1)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "realistic-validation"))
    args = ap.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS and k not in OPTIONAL_KINDS]
    if unknown:  # before the models load (a missing model folder hid it)
        ap.error(f"unknown kind(s) {unknown}; known: {list(KINDS) + list(OPTIONAL_KINDS)}")
    import torch

    torch.set_num_threads(args.threads)
    models = args.model or [None]
    settings = args.fuse_json or ["{}"]
    nets = {m: load_nets_from_dir(m, "cpu") for m in models}
    rows = []
    for kind in kinds:
        for name, a, b, truth, tdm in make_pairs(kind, args.pairs):
            if args.shrink != 1.0:
                a, b, truth, tdm = shrink_pair(a, b, truth, tdm, args.shrink)
            differ = differing_pixels(a, b)
            for m in models:
                for fj in settings:
                    p = FusionParams.from_mapping(json.loads(fj))
                    t0 = time.perf_counter()
                    r = fuse_images(a, b, nets[m], p)
                    dt = time.perf_counter() - t0
                    row = {"kind": kind, "pair": name, "model": str(m or "shipped"), "fuse": fj,
                           "accuracy": decision_accuracy(r.decision, tdm),
                           "accuracy_differ": float((r.decision == tdm)[differ].mean()),
                           "accuracy_band": decision_accuracy(r.decision, tdm, args.band), "seconds": dt,
                           **truth_metrics(truth, r.fused)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [f"Held-out realistic validation set ({args.pairs} pairs per kind; builtin scikit-image scenes, "
             "never used for training): decision accuracy (all pixels / within "
             f"{args.band} px of the true boundary / where the sources differ by more than {DIFFER_LEVELS:g} gray "
             "levels), PSNR (dB), SSIM against the truth; means over the pairs.", ""]
    cols = [(m, fj) for m in models for fj in settings]
    lines.append("| kind | " + " | ".join(f"{m or 'shipped'} {fj}" for m, fj in cols) + " |")
    lines.append("|---|" + "---|" * len(cols))
    for kind in kinds + ["mean"]:
        cells = []
        for m, fj in cols:
            sel = [r for r in rows if r["model"] == str(m or "shipped") and r["fuse"] == fj and (kind == "mean" or r["kind"] == kind)]
            acc = np.mean([r["accuracy"] for r in sel])
            acc_d = np.mean([r["accuracy_differ"] for r in sel])
            band = np.nanmean([r["accuracy_band"] for r in sel])
            psnr = np.mean([min(r["PSNR"], 99.0) for r in sel])
            ssim = np.mean([r["SSIM"] for r in sel])
            cells.append(f"{acc:.4f} / {band:.4f} / {acc_d:.4f} / {psnr:.2f} / {ssim:.4f}")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    (out / "table.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
