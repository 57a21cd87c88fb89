"""Lossless WebP output: encoding time and size by Pillow's ``method`` and ``quality``.

``fuse -o F.webp`` and ``fuse-dir --ext webp`` write a lossless WebP
(:func:`bafusion.io.write_image`). For a lossless WebP libwebp's ``method`` (0-6) and
``quality`` (0-100, here the effort, not a loss) trade encoding time against size; the result
decodes to the same pixels whatever they are. This times Pillow's encoding (in memory, no file
I/O; CPU seconds of this process and wall seconds) of camera-size RGB images for each pair of
``--methods`` and ``--qualities``, and PNG at ``compress_level`` 6 for comparison (bafusion's
until 2026-12-07, now :data:`bafusion.io.PNG_COMPRESS_LEVEL`: ``bench_png.py``),
checks that each WebP decodes to the image exactly, and writes ``benchmarks/out/bench_webp.csv``,
``.json`` and ``bench_webp.png`` (seconds against size, one point per setting).

The images (``--megapixels`` each, default 6.9):

* ``mosaic``: the development set's shots (``../shared/data/eval``, the A shot of each pair)
  tiled at their own resolution, a camera photo's detail and JPEG noise;
* ``upscaled``: one real shot (tsai-03-A, 1024x768) upscaled (Lanczos), the smooth content of a
  photo whose detail is coarser than its pixels.

    python benchmarks/bench_webp.py                     # about 10 minutes on 2 shared cores
    python benchmarks/bench_webp.py --methods 0 4 6 --qualities 0 80 --repeat 1
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
DATA = ROOT.parent / "shared" / "data" / "eval"


def mosaic(megapixels: float) -> np.ndarray:
    """The A shots of ``DATA`` tiled row by row at their own size (3:2), cropped to ``megapixels``."""
    from PIL import Image

    width = int(round((megapixels * 1e6 * 1.5) ** 0.5))
    height = int(round(megapixels * 1e6 / width))
    shots = sorted(p for p in DATA.glob("*/*-A.*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif"))
    if not shots:
        raise SystemExit(f"no shots under {DATA}")
    canvas = np.zeros((height, width, 3), np.uint8)
    y = x = row_h = 0
    i = 0
    while y < height:
        with Image.open(shots[i % len(shots)]) as im:
            tile = np.asarray(im.convert("RGB"))
        i += 1
        h, w = tile.shape[:2]
        if x >= width:
            y, x, row_h = y + row_h, 0, 0
            continue
        hh, ww = min(h, height - y), min(w, width - x)
        if hh > 0:
            canvas[y:y + hh, x:x + ww] = tile[:hh, :ww]
        x, row_h = x + w, max(row_h, h)
    return canvas


def upscaled(megapixels: float) -> np.ndarray:
    from PIL import Image

    with Image.open(DATA / "real" / "tsai-03-A.jpg") as im:
        width = int(round((megapixels * 1e6 * im.width / im.height) ** 0.5))
        height = int(round(megapixels * 1e6 / width))
        return np.asarray(im.convert("RGB").resize((width, height), Image.Resampling.LANCZOS))


def encode(img: np.ndarray, fmt: str, **kwargs) -> tuple[bytes, float, float]:
    from PIL import Image

    pil = Image.fromarray(img)
    buf = io.BytesIO()
    wall, cpu = time.perf_counter(), time.process_time()
    pil.save(buf, format=fmt, **kwargs)
    return buf.getvalue(), time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    from PIL import Image, features

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--megapixels", type=float, default=6.9)
    p.add_argument("--images", nargs="+", default=["mosaic", "upscaled"], choices=["mosaic", "upscaled"])
    p.add_argument("--methods", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5, 6])
    p.add_argument("--qualities", type=int, nargs="+", default=[0, 25, 50, 80, 100])
    p.add_argument("--repeat", type=int, default=1, help="runs of each setting (the fastest is kept)")
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    import PIL

    print(f"Pillow {PIL.__version__}, libwebp {features.version('webp')}")
    rows = []
    for name in args.images:
        img = mosaic(args.megapixels) if name == "mosaic" else upscaled(args.megapixels)
        mp = img.shape[0] * img.shape[1] / 1e6
        print(f"\n{name}: {img.shape[1]} x {img.shape[0]} ({mp:.2f} MP), raw {img.nbytes / 2**20:.1f} MiB")
        print("| format | method | quality | CPU s | wall s | MiB | exact |")
        print("|---|---|---|---|---|---|---|")
        settings = [("PNG", None, None)] + [("WEBP", m, q) for m in args.methods for q in args.qualities]
        for fmt, method, quality in settings:
            kwargs = ({"compress_level": 6} if fmt == "PNG" else
                      {"lossless": True, "exact": True, "method": method, "quality": quality})
            runs = [encode(img, fmt, **kwargs) for _ in range(args.repeat)]
            data = runs[0][0]
            cpu, wall = min(r[1] for r in runs), min(r[2] for r in runs)
            exact = bool(np.array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), img))
            row = {"image": name, "megapixels": round(mp, 3), "format": fmt, "method": method, "quality": quality,
                   "cpu_s": round(cpu, 3), "wall_s": round(wall, 3), "bytes": len(data), "exact": exact}
            rows.append(row)
            print(f"| {fmt} | {'' if method is None else method} | {'' if quality is None else quality} | {cpu:.2f} | "
                  f"{wall:.2f} | {len(data) / 2**20:.2f} | {'yes' if exact else 'NO'} |", flush=True)
    with open(OUT / "bench_webp.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (OUT / "bench_webp.json").write_text(json.dumps(rows, indent=1) + "\n")
    plot(rows)
    print(f"\nwrote {OUT / 'bench_webp.csv'}, .json and bench_webp.png")


def plot(rows: list[dict]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    images = sorted({r["image"] for r in rows})
    fig = Figure(figsize=(6.0 * len(images), 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    for k, name in enumerate(images):
        ax = fig.add_subplot(1, len(images), k + 1)
        mine = [r for r in rows if r["image"] == name]
        for q in sorted({r["quality"] for r in mine if r["format"] == "WEBP"}):
            pts = [r for r in mine if r["format"] == "WEBP" and r["quality"] == q]
            ax.plot([r["cpu_s"] for r in pts], [r["bytes"] / 2**20 for r in pts], "o-", label=f"WebP quality {q}")
            for r in pts:
                ax.annotate(str(r["method"]), (r["cpu_s"], r["bytes"] / 2**20), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
        png = [r for r in mine if r["format"] == "PNG"]
        ax.plot([r["cpu_s"] for r in png], [r["bytes"] / 2**20 for r in png], "ks", label="PNG (level 6)")
        ax.set_xlabel("CPU seconds to encode")
        ax.set_ylabel("MiB")
        ax.set_title(f"{name}, {mine[0]['megapixels']:.1f} MP (numbers: method)")
        ax.legend(fontsize=7)
    fig.savefig(OUT / "bench_webp.png")


if __name__ == "__main__":
    main()
