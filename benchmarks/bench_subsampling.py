"""JPEG chroma subsampling of a fused JPEG: size and PSNR of 4:2:0, 4:2:2 and 4:4:4.

``fuse -o F.jpg`` writes the first source's subsampling when it is a JPEG, else
:data:`bafusion.io.write.JPEG_SUBSAMPLING` (4:4:4); before, always Pillow's default 4:2:0, which
halves the colour resolution both ways. This encodes lossless colour photographs (the
alpha-matting inputs of ``../shared/data/train/alphamatting/input``, PNG) in memory with Pillow at
each ``--qualities`` and subsampling, decodes them, and prints the mean PSNR (RGB, against the
lossless image) and the total size per setting, with the size relative to 4:2:0 at the same
quality; and the same for a synthetic image of saturated 1-pixel colour lines (red and green on
blue, 200x200), the worst case for subsampled chroma (coloured text, thin coloured edges).

    python benchmarks/bench_subsampling.py                  # about 20 s
    python benchmarks/bench_subsampling.py --images 4 --qualities 95
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "train" / "alphamatting" / "input"
SAMPLINGS = ("4:2:0", "4:2:2", "4:4:4")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def encoded(img: np.ndarray, quality: int, subsampling: str) -> tuple[np.ndarray, int]:
    """``img`` through a JPEG of that quality and subsampling: (decoded pixels, bytes)."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality, subsampling=subsampling)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        return np.asarray(im.convert("RGB")), buf.tell()


def lines() -> np.ndarray:
    """200x200 blue with 1-pixel red and green lines, alternately, every 4 rows and columns."""
    img = np.zeros((200, 200, 3), np.uint8)
    img[...] = (0, 0, 255)
    img[::8, :] = (255, 0, 0)
    img[4::8, :] = (0, 255, 0)
    img[:, 2::8] = (255, 0, 0)
    return img


def table(images: list[np.ndarray], qualities: list[int]) -> None:
    for q in qualities:
        base = None
        for s in SAMPLINGS:
            res = [encoded(a, q, s) for a in images]
            size = np.array([n for _, n in res], np.float64)
            base = size if base is None else base
            p = np.mean([psnr(a, d) for a, (d, _) in zip(images, res)])
            print(f"  quality {q} {s}: mean PSNR {p:.2f} dB, {size.sum() / 1024:.0f} KB "
                  f"({np.mean(size / base):.2f}x 4:2:0)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8, help="how many photographs (default 8)")
    ap.add_argument("--qualities", type=int, nargs="+", default=[95, 90, 85, 75])
    args = ap.parse_args()
    files = sorted(DATA.glob("*.png"))[: args.images]
    if not files:
        raise SystemExit(f"no PNG photographs in {DATA}")
    images = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    mp = sum(a.shape[0] * a.shape[1] for a in images) / 1e6
    print(f"{len(images)} photographs ({DATA.relative_to(ROOT.parent)}, {mp:.1f} megapixels in all), Pillow "
          f"{Image.__version__}:")
    table(images, args.qualities)
    print("saturated 1-pixel colour lines (200x200):")
    table([lines()], args.qualities)


if __name__ == "__main__":
    main()
