"""8-bit PNG output: Pillow's encoding time and size by zlib ``compress_level``.

:func:`bafusion.io.write_image` writes an 8-bit PNG at :data:`bafusion.io.PNG_COMPRESS_LEVEL`;
every level decodes to the same pixels. This times Pillow's encoding (in memory, no file I/O;
CPU seconds of this process, and wall seconds) of camera-size RGB images at each of
``--levels``, ``--repeat`` times in turn, checks that each decodes to the image, and writes
``benchmarks/out/bench_png.json``. The images (``--megapixels`` each, default 24):

* ``mosaic``: the development set's A shots tiled at their own resolution
  (``bench_webp.mosaic``: a photo's detail and JPEG noise);
* ``upscaled``: lytro-05-A upscaled (bicubic), smooth, as fuse-dir's 24 MP test pair;
* ``noisy``: ``upscaled`` plus Gaussian noise of sigma 2 levels, a camera's sensor noise.

    python benchmarks/bench_png.py                      # about 3 minutes on 2 shared cores
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time

import numpy as np
from bench_webp import DATA, OUT, mosaic


def upscaled(megapixels: float, noise: float = 0.0) -> np.ndarray:
    """lytro-05-A upscaled (bicubic) to ``megapixels`` at 3:2, plus Gaussian noise of ``noise`` levels."""
    from PIL import Image

    width = int(round((megapixels * 1e6 * 1.5) ** 0.5))
    height = int(round(megapixels * 1e6 / width))
    with Image.open(DATA / "lytro" / "lytro-05-A.jpg") as im:
        img = np.asarray(im.convert("RGB").resize((width, height), Image.BICUBIC))
    if noise:
        rng = np.random.default_rng(0)
        img = np.clip(img + rng.normal(0, noise, img.shape).round(), 0, 255).astype(np.uint8)
    return img


def main() -> None:
    from PIL import Image

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--megapixels", type=float, default=24.0)
    p.add_argument("--levels", type=int, nargs="+", default=[1, 3, 6])
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()
    images = {"mosaic": mosaic(args.megapixels), "upscaled": upscaled(args.megapixels),
              "noisy": upscaled(args.megapixels, 2.0)}
    rows = []
    print(f"load average {os.getloadavg()}", flush=True)
    for name, img in images.items():
        pil = Image.fromarray(img)
        for _ in range(args.repeat):
            for level in args.levels:
                buf = io.BytesIO()
                c0, w0 = time.process_time(), time.perf_counter()
                pil.save(buf, "PNG", compress_level=level)
                cpu, wall = time.process_time() - c0, time.perf_counter() - w0
                buf.seek(0)
                with Image.open(buf) as back:
                    assert np.array_equal(np.asarray(back), img), (name, level)
                rows.append({"image": name, "shape": list(img.shape), "level": level, "cpu_s": round(cpu, 3),
                             "wall_s": round(wall, 2), "bytes": buf.getbuffer().nbytes})
                print(f"{name} {img.shape[1]}x{img.shape[0]} level {level}: {cpu:.2f} CPU s, {wall:.1f} s, "
                      f"{rows[-1]['bytes'] / 1e6:.1f} MB", flush=True)
    print(f"load average {os.getloadavg()}", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench_png.json").write_text(json.dumps({"rows": rows, "load_after": os.getloadavg()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
