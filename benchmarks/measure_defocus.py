"""Measure how strong the defocus of real multi-focus pairs is, to choose ``composite.sigma``.

For each pair (gray, MATLAB weights): the regions where one source is clearly sharper (local
gradient energy at least 4x the other's, eroded away from the focus boundary) are found; there
the blurred view is modelled as ``gain * G_sigma(sharp) + offset`` and the Gaussian sigma with
the least squared error is kept (grid 0.25..16 px, least squares for gain and offset, so
exposure differences do not bias it). Prints per-pair sigmas in the images' own pixels and a
summary per set; ``--json`` writes them.

    python benchmarks/measure_defocus.py ../shared/data/eval/lytro ../shared/data/eval/real \
        ../shared/data/eval/classic --json benchmarks/out/defocus.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from bafusion.io import gray_float, read_image

SIGMAS = np.concatenate([np.arange(0.25, 4, 0.25), np.arange(4, 16.5, 0.5)])


def _energy(g: np.ndarray) -> np.ndarray:
    gy, gx = ndimage.sobel(g, 0), ndimage.sobel(g, 1)
    return ndimage.uniform_filter(gx * gx + gy * gy, 15)


def fit_sigma(sharp: np.ndarray, blurred: np.ndarray, mask: np.ndarray) -> float | None:
    """Gaussian sigma that best maps ``sharp`` to ``blurred`` inside ``mask`` (None: too few px)."""
    if mask.sum() < 400:
        return None
    y = blurred[mask]
    errs = []
    for s in SIGMAS:
        x = ndimage.gaussian_filter(sharp, s, mode="reflect")[mask]
        X = np.stack([x, np.ones_like(x)], 1)
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        errs.append(float(np.mean((X @ coef - y) ** 2)))
    return float(SIGMAS[int(np.argmin(errs))])


def measure_pair(a_path: Path, b_path: Path) -> dict:
    a, b = gray_float(read_image(a_path, rgb=True)), gray_float(read_image(b_path, rgb=True))
    ea, eb = _energy(a), _energy(b)
    strong = np.maximum(ea, eb) > np.percentile(np.maximum(ea, eb), 40)  # textured enough to judge
    r = 12
    a_sharp = ndimage.binary_erosion((ea > 4 * eb) & strong, iterations=r)
    b_sharp = ndimage.binary_erosion((eb > 4 * ea) & strong, iterations=r)
    return {
        "pair": re.sub(r"-A$", "", a_path.stem),
        "size": list(a.shape),
        "sigma_B_where_A_sharp": fit_sigma(a, b, a_sharp),
        "sigma_A_where_B_sharp": fit_sigma(b, a, b_sharp),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    rows = []
    for folder in args.folders:
        for a in sorted(Path(folder).glob("*-A.*")):
            bs = sorted(a.parent.glob(a.name[: -len(a.suffix) - 2] + "-B.*"))
            if bs:
                rows.append(measure_pair(a, bs[0]))
                print(json.dumps(rows[-1]), flush=True)
    sets: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        key = row["pair"].split("-")[0] if not row["pair"].startswith("g") else "classic"
        for k in ("sigma_B_where_A_sharp", "sigma_A_where_B_sharp"):
            if row[k] is not None:
                sets.setdefault(key, []).append((row[k], row[k] / max(row["size"]) * 400))
    print("set: fits; sigma in the pair's own pixels: median / p90 / max; rescaled to a 400-px long side "
          "(the halved alphamatting foregrounds): median / p90 / max")
    for k, v in sets.items():
        own, r400 = np.array([x for x, _ in v]), np.array([y for _, y in v])
        print(f"{k}: n={len(v)} own {np.median(own):.2f} / {np.percentile(own, 90):.2f} / {own.max():.2f}; "
              f"400-px {np.median(r400):.2f} / {np.percentile(r400, 90):.2f} / {r400.max():.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"pairs": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
