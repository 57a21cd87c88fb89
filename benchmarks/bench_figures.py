"""Figures of maps larger than their panels (:func:`bafusion.fusion.maps.draw_images_to_scale`).

``--part contrast``: how bright a white 1-pixel line and a white 1 x 1 dot on a black map are
drawn once the map is shrunk anti-aliased, in Fig. 3's decision-map panel
(:func:`bafusion.fusion.maps.figure_maps`) and in a difference figure's panel
(:func:`bafusion.evaluation.figures.figure_differences`), for map sizes from a 320 x 240 pair to a
12-megapixel photo. Eleven lines and six dots at different sub-pixel phases each; the gray
(0..255) of a line is its dimmest point along its length (the brightest of the 7 screen
columns around it at each row), of a dot the brightest of the 7 x 7 screen pixels around it.

``--part time``: CPU and wall seconds of Fig. 3 of a 3000 x 4000 result, ``--repeat`` times; with
``--src DIR`` the ``bafusion`` of DIR/src is timed (run it alternately with two trees to compare).

    python benchmarks/bench_figures.py --part contrast
    OMP_NUM_THREADS=1 python benchmarks/bench_figures.py --part time [--repeat 3] [--src ../other-checkout]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path


def contrast() -> None:
    import numpy as np
    from PIL import Image

    import bafusion.fusion.maps as maps
    from bafusion.evaluation.figures import figure_differences
    from bafusion.fusion.rule import FusionResult

    drawn: list = []
    real = maps.save_figure

    def recording(fig, path):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
        gray = np.asarray(Image.open(buf).convert("L")).astype(int)
        renderer, height = fig.canvas.get_renderer(), fig.bbox.height
        for ax in fig.axes:
            for im in ax.get_images():
                if ax.get_title().startswith(("decision", "x")):
                    b = im.get_window_extent(renderer)
                    x0, x1, y0, y1 = im.get_extent()  # the map's size (its array may be drawn reduced)
                    drawn.append((gray, (b.x0, height - b.y1, b.x1, height - b.y0), (round(abs(y1 - y0)), round(abs(x1 - x0)))))
        real(fig, path)

    maps.save_figure = recording
    print("| figure | map (H x W) | scale | 1-px line: gray (% of white) | 1 x 1 dot: gray (% of white) |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for kind, h, w in [("Fig. 3", 240, 320), ("Fig. 3", 520, 520), ("difference", 520, 520),
                           ("Fig. 3", 3000, 4000), ("difference", 2400, 2400), ("difference", 3000, 4000)]:
            cols = [w // 2 + min(41, w // 13) * k + k % 7 for k in range(-5, 6)]
            dots = [(h // 2 + min(29, h // 14) * k + 3, w // 8 + min(31, w // 14) * k + k % 5) for k in range(6)]
            dm = np.zeros((h, w), bool)
            for x in cols:
                dm[: h // 2, x] = True  # the lines in the upper half, the dots in the lower
            for y, x in dots:
                dm[y, x] = True
            drawn.clear()
            if kind == "Fig. 3":
                s = dm.astype(np.float32)
                maps.figure_maps(FusionResult(fused=dm.astype(np.uint8) * 255, score_initial=s, score_mean=s,
                                              near_boundary=dm, score_refined=s, decision_raw=dm, decision=dm),
                                 Path(tmp) / "f.png")
            else:  # 26 x alpha 10 = 255: white in the difference map
                figure_differences(np.zeros((h, w), np.uint8), {"x": dm.astype(np.uint8) * 26}, Path(tmp) / "f.png")
            gray, (x0, y0, x1, y1), (ih, iw) = drawn[0]
            sx, sy = (x1 - x0) / iw, (y1 - y0) / ih

            def at(yy: float, xx: float) -> tuple[int, int]:
                return int(y0 + (yy + 0.5) * sy), int(x0 + (xx + 0.5) * sx)

            line = []
            for x in cols:
                top, px = at(h // 8, x)
                bottom, _ = at(3 * h // 8, x)
                line.append(int(gray[top:bottom, px - 3 : px + 4].max(axis=1).min()))
            dot = []
            for y, x in dots:
                py, px = at(y, x)
                dot.append(int(gray[py - 3 : py + 4, px - 3 : px + 4].max()))
            print(f"| {kind} | {h} x {w} | {min(sx, sy):.3f} | {min(line)}-{max(line)} "
                  f"({100 * min(line) / 255:.0f}-{100 * max(line) / 255:.0f} %) | {min(dot)}-{max(dot)} "
                  f"({100 * min(dot) / 255:.0f}-{100 * max(dot) / 255:.0f} %) |", flush=True)


def timing(repeat: int) -> None:
    import resource

    import numpy as np

    import bafusion.fusion.maps as maps
    from bafusion.fusion.rule import FusionResult

    print(f"bafusion from {Path(maps.__file__).parents[2]}")
    h, w = 3000, 4000
    yy, xx = np.mgrid[:h, :w]
    dm = (xx // 40 + yy // 30) % 2 == 0
    s = dm.astype(np.float32)
    fused = np.repeat((dm * 255).astype(np.uint8)[..., None], 3, axis=2)
    res = FusionResult(fused=fused, score_initial=s, score_mean=s, near_boundary=dm, score_refined=s,
                       decision_raw=dm, decision=dm)
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeat):
            wall, cpu = time.perf_counter(), time.process_time()
            maps.figure_maps(res, Path(tmp) / "cam.png", title="cam")
            print(f"Fig. 3 of 3000 x 4000: {time.process_time() - cpu:.1f} CPU s, {time.perf_counter() - wall:.1f} s "
                  f"wall, peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=["contrast", "time"], required=True)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--src", default=None, help="time the bafusion of this checkout (DIR/src)")
    args = p.parse_args()
    if args.src:
        sys.path.insert(0, str(Path(args.src) / "src"))
    if args.part == "contrast":
        contrast()
    else:
        timing(args.repeat)


if __name__ == "__main__":
    main()
