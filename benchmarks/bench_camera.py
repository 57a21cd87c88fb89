"""Camera resolution (issue 14): time, peak memory and decision agreement of 12-megapixel fusion.

The scene is a real Lytro pair (``--pair``), cropped to 4:3 (520x390, rows 65..454) and
upscaled (Lanczos) to 2000x1500 and 4000x3000: the same scene as a camera's larger file
would show it. Measured, side by side in one process with the shipped nets
(``models/default``) and the built-in fusion parameters (``FusionParams()``: the working
resolution engages above 1024 px):

* time of the fusion itself (:func:`bafusion.fusion.fuse_images`, no process start-up, no
  file I/O) of the full 520x520 Lytro pair and of each large size, for torch threads 1 and 2,
  each without and with a low-priority busy process (``nice -n 19``, one core) sharing the
  cores; the 520x520 time is the median of runs before and after the large ones;
* the ratio large / 520x520 (target <= 10 at 4000x3000);
* agreement of the large decision map with the 520x390 crop's decision at its own size
  (``working_side=0``), upscaled (target >= 98 %);
* peak memory (``VmHWM`` of ``/proc/self/status``, the peak resident memory) of one child
  process per size that loads the nets and fuses once, and its peak before fusing (target
  <= 2 GiB).

``--baseline`` also times the full-size path (``working_side: 0``, as before this option
existed) at the smallest large size. ``--working-sides 512 640 768 1024`` also reports the agreement and time per working side at
4000x3000 (the measurement behind the default). Writes ``benchmarks/out/bench_camera.csv``,
``.json`` and ``bench_camera.png``. About 5 minutes on 2 cores::

    python benchmarks/bench_camera.py --working-sides 512 640 768 1024

``--preprocessing`` (alone) times, before and after in one run, the two steps a camera-size
pair goes through before the nets (``--sizes``, default 6000x4500 here): the gray conversion
(:func:`bafusion.io.to_gray_u8`, before: the float64 sum and rounding) and exposure matching
(:func:`bafusion.fusion.exposure.match_exposure`, before: a float64 copy filtered and the
float64 mapping), on the same-exposure pair and on B at 0.7x, checks that both give the same
bits, times the option ``fuse.exposure_fit_step: 4`` against the full fit (with how many
matched pixels move), and writes ``bench_camera-preprocessing.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
SHARED = Path(os.environ.get("BAFUSION_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
CROP = (65, 455)  # rows of the 4:3 crop of a 520x520 pair


def scene(pair: str, size_hw: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """The Lytro pair (``size_hw`` None: as shipped, 520x520) or its 4:3 crop upscaled."""
    from bafusion.io import read_images, resize

    d = SHARED / "eval" / "lytro"
    a, b = read_images([d / f"{pair}-A.jpg", d / f"{pair}-B.jpg"])
    if size_hw is None:
        return a, b
    a, b = a[CROP[0] : CROP[1]], b[CROP[0] : CROP[1]]
    if size_hw == a.shape[:2]:
        return a, b
    return resize(a, size_hw), resize(b, size_hw)


def _vm(key: str) -> float:
    """A ``/proc/self/status`` figure in MiB (VmHWM: peak resident memory of this process
    image; unlike ``ru_maxrss`` it does not inherit the parent's peak across fork+exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(args: argparse.Namespace) -> None:
    """One fusion in this process: print JSON with the time and max RSS (MiB)."""
    import torch

    from bafusion.fusion import FusionParams, fuse_images, load_nets_from_dir

    torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.child.split("x"))
    a, b = scene(args.pair, (h, w))
    nets = load_nets_from_dir(None, "cpu")
    rss0 = _vm("VmHWM")
    params = FusionParams(**json.loads(args.params_json))
    t0 = time.perf_counter()
    fuse_images(a, b, nets, params, progress=False, threads=args.threads)
    dt = time.perf_counter() - t0
    print(json.dumps({"seconds": dt, "peak_before_fusion_mib": rss0, "peak_mib": _vm("VmHWM")}))


def preprocessing(args: argparse.Namespace) -> None:
    """Before/after of the gray conversion and exposure matching (module docstring)."""
    from scipy import ndimage

    from bafusion.fusion import exposure
    from bafusion.io import _matlab_sum, to_gray_u8, to_uint8

    def gray_before(img: np.ndarray) -> np.ndarray:
        return to_uint8(_matlab_sum(img))

    def match_before(ga: np.ndarray, gb: np.ndarray, sigma: float = exposure.SIGMA) -> np.ndarray:
        la = ndimage.gaussian_filter(ga.astype(np.float64), sigma)
        lb = ndimage.gaussian_filter(gb.astype(np.float64), sigma)
        m = int(2 * sigma)
        la, lb = la[m:-m, m:-m].ravel(), lb[m:-m, m:-m].ravel()
        sa, sb = float(la.std()), float(lb.std())
        corr = float(((la - la.mean()) * (lb - lb.mean())).mean() / (sa * sb))
        gain = sa / sb
        offset = float(la.mean() - gain * lb.mean())
        level = (gain - 1.0) * float(gb.mean()) + offset
        if corr < exposure.MIN_CORRELATION or (abs(gain - 1.0) < exposure.SAME_GAIN and abs(level) < exposure.SAME_LEVEL):
            return gb
        return np.clip(np.round(gain * gb.astype(np.float64) + offset), 0, 255).astype(np.uint8)

    cpu: list[float] = []

    def clock(f, *x):  # wall seconds; the process's CPU seconds in ``cpu`` (steadier on a shared machine)
        t0, c0 = time.perf_counter(), time.process_time()
        y = f(*x)
        cpu.append(time.process_time() - c0)
        return time.perf_counter() - t0, y

    from bafusion.io import to_gray_u8 as _warm

    _warm(np.zeros((2, 2, 3), np.uint8))  # the gray table is built once a process (counted apart)
    rows = []
    load = {"before": os.getloadavg()}
    for size in args.sizes:
        w, h = (int(v) for v in size.split("x"))
        a, b = scene(args.pair, (h, w))
        dark = np.clip(np.round(b * 0.7), 0, 255).astype(np.uint8)
        t_old, g_old = clock(gray_before, a)
        t_new, g_new = clock(to_gray_u8, a)
        rows.append({"step": "gray", "size": size, "before_s": t_old, "after_s": t_new,
                     "ratio": t_old / t_new, "before_cpu_s": cpu[-2], "after_cpu_s": cpu[-1],
                     "cpu_ratio": cpu[-2] / cpu[-1], "identical": bool(np.array_equal(g_old, g_new))})
        print(rows[-1], flush=True)
        ga = g_new
        for label, bb in (("same exposure", b), ("B at 0.7x", dark)):
            gb = to_gray_u8(bb)
            t_old, m_old = clock(match_before, ga, gb)
            t_new, m_new = clock(exposure.match_exposure, ga, gb)
            rows.append({"step": f"exposure ({label})", "size": size, "before_s": t_old, "after_s": t_new,
                         "ratio": t_old / t_new, "before_cpu_s": cpu[-2], "after_cpu_s": cpu[-1],
                         "cpu_ratio": cpu[-2] / cpu[-1], "identical": bool(np.array_equal(m_old, m_new))})
            print(rows[-1], flush=True)
        # the option fuse.exposure_fit_step 4 (not the default: the gain moves in its 4th digit)
        gb = to_gray_u8(dark)
        t_full, m_full = clock(exposure.match_exposure, ga, gb)
        t_4, m_4 = clock(lambda x, y: exposure.match_exposure(x, y, step=4), ga, gb)
        rows.append({"step": "exposure, fit step 4 (B at 0.7x)", "size": size, "before_s": t_full, "after_s": t_4,
                     "ratio": t_full / t_4, "before_cpu_s": cpu[-2], "after_cpu_s": cpu[-1],
                     "cpu_ratio": cpu[-2] / cpu[-1], "identical": bool(np.array_equal(m_full, m_4)),
                     "max_diff": int(np.abs(m_full.astype(int) - m_4).max()),
                     "pixels_differing": float((m_full != m_4).mean())})
        print(rows[-1], flush=True)
    load["after"] = os.getloadavg()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench_camera-preprocessing.json").write_text(json.dumps({"pair": args.pair, "rows": rows,
                                                                     "loadavg": load}, indent=2) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.5))
        x = np.arange(len(rows))
        ax.bar(x - 0.2, [r["before_s"] for r in rows], 0.4, label="before")
        ax.bar(x + 0.2, [r["after_s"] for r in rows], 0.4, label="after")
        ax.set_xticks(x, [f"{r['step']}\n{r['size']}, {r['ratio']:.1f}x" for r in rows], fontsize=7)
        ax.set_ylabel("seconds")
        ax.legend()
        fig.tight_layout()
        fig.savefig(OUT / "bench_camera-preprocessing.png", dpi=100)
    except ImportError:
        pass


def busy() -> subprocess.Popen:
    """A low-priority process spinning on one core (started here, stopped by its pid)."""
    return subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", "while True: pass"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", default="lytro-05")
    ap.add_argument("--sizes", nargs="+", default=["2000x1500", "4000x3000"], help="WxH")
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--contention", nargs="+", choices=("none", "nice19"), default=["none", "nice19"])
    ap.add_argument("--working-sides", nargs="*", type=int, default=[])
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--baseline", action="store_true",
                    help="also time the full-size path (working_side 0) at the smallest large size, one thread")
    ap.add_argument("--skip-timing", action="store_true", help="memory only (writes bench_camera-memory.json)")
    ap.add_argument("--preprocessing", action="store_true",
                    help="only the before/after of the gray conversion and exposure matching (default size 6000x4500)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--params-json", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.threads = args.threads[0]
        child(args)
        return
    if not (SHARED / "eval" / "lytro").is_dir():
        sys.exit(f"bench_camera: real data not found at {SHARED} (set BAFUSION_SHARED_DATA)")
    if args.preprocessing:
        if args.sizes == ap.get_default("sizes"):
            args.sizes = ["6000x4500"]
        preprocessing(args)
        return
    import torch

    from bafusion.fusion import FusionParams, fuse_images, load_nets_from_dir
    from bafusion.io import resize

    OUT.mkdir(parents=True, exist_ok=True)
    nets = load_nets_from_dir(None, "cpu")
    params = FusionParams()
    rows: list[dict] = []
    load = {"before": os.getloadavg()}
    small = scene(args.pair, None)
    crop = scene(args.pair, (CROP[1] - CROP[0], 520))
    torch.set_num_threads(1)
    ref_small = None if args.skip_timing else fuse_images(*crop, nets, replace(params, working_side=0), progress=False).decision
    sizes = [tuple(int(v) for v in s.split("x"))[::-1] for s in args.sizes]
    pairs = {hw: scene(args.pair, hw) for hw in sizes}
    refs = {} if ref_small is None else {hw: resize(ref_small.astype(np.uint8) * 255, hw) > 127 for hw in sizes}

    def timed(a: np.ndarray, b: np.ndarray, p) -> tuple[float, np.ndarray]:
        t0 = time.perf_counter()
        r = fuse_images(a, b, nets, p, progress=False, threads=torch.get_num_threads())  # as set for the row
        return time.perf_counter() - t0, r.decision

    for cont in ([] if args.skip_timing else args.contention):
        proc = busy() if cont == "nice19" else None
        try:
            time.sleep(0.5 if proc else 0)
            for th in args.threads:
                torch.set_num_threads(th)
                t_small = [timed(*small, params)[0]]
                big = {}
                for hw in sizes:
                    big[hw] = timed(*pairs[hw], params)
                t_small.append(timed(*small, params)[0])
                ts = float(np.median(t_small))
                rows.append({"what": "520x520", "threads": th, "contention": cont, "seconds": ts, "ratio": 1.0,
                             "agreement": "", "working_side": params.working_side})
                for hw, (dt, dm) in big.items():
                    rows.append({"what": f"{hw[1]}x{hw[0]}", "threads": th, "contention": cont, "seconds": dt,
                                 "ratio": dt / ts, "agreement": float((dm == refs[hw]).mean()),
                                 "working_side": params.working_side})
                    print(rows[-1], flush=True)
        finally:
            if proc:
                proc.terminate()
                proc.wait()
    torch.set_num_threads(1)
    if args.working_sides and not args.skip_timing:
        hw = max(sizes)
        t_small = timed(*small, params)[0]
        for ws in args.working_sides:
            dt, dm = timed(*pairs[hw], replace(params, working_side=ws))
            rows.append({"what": f"{hw[1]}x{hw[0]}", "threads": 1, "contention": "none", "seconds": dt,
                         "ratio": dt / t_small, "baseline_s": t_small,  # this loop's own 520x520 run
                         "agreement": float((dm == refs[hw]).mean()), "working_side": ws})
            print(rows[-1], flush=True)
    if args.baseline and not args.skip_timing:
        hw = min(sizes)
        t_small = timed(*small, params)[0]
        dt, dm = timed(*pairs[hw], replace(params, working_side=0))
        rows.append({"what": f"{hw[1]}x{hw[0]}", "threads": 1, "contention": "none", "seconds": dt,
                     "ratio": dt / t_small, "baseline_s": t_small,  # this run's own 520x520 run
                     "agreement": float((dm == refs[hw]).mean()), "working_side": 0})
        print(rows[-1], flush=True)
    mem = []
    if not args.skip_memory:
        for hw in [(520, 520)] + sizes:
            cmd = [sys.executable, __file__, "--child", f"{hw[1]}x{hw[0]}", "--pair", args.pair, "--threads", "1"]
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
            res["what"] = f"{hw[1]}x{hw[0]}"
            mem.append(res)
            print(res, flush=True)
    load["after"] = os.getloadavg()
    if args.skip_timing:
        (OUT / "bench_camera-memory.json").write_text(json.dumps({"pair": args.pair, "memory": mem, "loadavg": load},
                                                                 indent=2) + "\n")
        return
    with open(OUT / "bench_camera.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    (OUT / "bench_camera.json").write_text(json.dumps({"pair": args.pair, "rows": rows, "memory": mem,
                                                       "loadavg": load, "cpus": os.cpu_count()}, indent=2) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.5))
        main_rows = [r for r in rows if r["working_side"] == params.working_side and r["what"] != "520x520"]
        labels = [f"{r['what']}\n{r['threads']} thr, {r['contention']}" for r in main_rows]
        ax.bar(range(len(main_rows)), [r["ratio"] for r in main_rows])
        ax.axhline(10, color="r", ls="--", label="target 10x")
        ax.set_xticks(range(len(main_rows)), labels, fontsize=7)
        ax.set_ylabel("time / 520x520 time")
        ax.legend()
        fig.tight_layout()
        fig.savefig(OUT / "bench_camera.png", dpi=100)
    except ImportError:
        pass
    print(json.dumps({"loadavg": load}))


if __name__ == "__main__":
    main()
