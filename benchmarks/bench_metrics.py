"""Time the fusion metrics and the native baselines on one 520x520 Lytro triple.

Usage: ``python benchmarks/bench_metrics.py [--pair lytro-01] [--method GFF] [--repeat 7]``

Reads ``$BAFUSION_SHARED_DATA`` (default ``../shared/data`` beside the checkout); without it,
falls back to a synthetic 520x520 colour triple and says so. Writes
``benchmarks/out/bench_metrics.json`` and ``benchmarks/out/bench_metrics.md`` and prints the
markdown. Times are the best and the median of ``--repeat`` runs (wall clock, one process).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from bafusion.evaluation import baselines as B  # noqa: E402
from bafusion.evaluation import metrics as M  # noqa: E402
from bafusion.io import gray_float, read_images  # noqa: E402


def _data_dir() -> Path:
    return Path(os.environ.get("BAFUSION_SHARED_DATA", REPO.parent / "shared" / "data"))


def _time(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    fn()  # warm-up (imports, FFT plans, caches)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"best_s": min(times), "median_s": statistics.median(times)}


def _load(pair: str, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    data = _data_dir()
    pa = data / "eval/lytro" / f"{pair}-A.jpg"
    pb = data / "eval/lytro" / f"{pair}-B.jpg"
    if pa.is_file() and pb.is_file():
        a, b = read_images([pa, pb])
        f = B.read_method_results(data / "reference/lytro", method, pair)
        return a, b, f, f"{pair} ({method} fused), {a.shape[1]}x{a.shape[0]} RGB"
    print(f"note: {pa} not found; using a synthetic 520x520 triple", file=sys.stderr)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (520, 520, 3)).astype(np.uint8)
    a = x.copy()
    b = x.copy()
    a[:, 260:] //= 2
    b[:, :260] //= 2
    return a, b, x, "synthetic 520x520 RGB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pair", default="lytro-01")
    ap.add_argument("--method", default="GFF", help="whose fused image to score (reference/lytro/<METHOD>)")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    args = ap.parse_args(argv)

    a, b, f, label = _load(args.pair, args.method)
    ga, gb, gf = (gray_float(x, rounded=True) for x in (a, b, f))

    rows: dict[str, dict[str, float]] = {}
    for name in M.REQUIRED_METRICS:
        fn = M.METRICS[name]
        rows[name] = _time(lambda fn=fn: fn(ga, gb, gf), args.repeat)
    rows["sum of the four (target <= 500 ms)"] = {
        k: sum(rows[n][k] for n in M.REQUIRED_METRICS) for k in ("best_s", "median_s")
    }
    rows["compute_all (QMI,QG,QY,QCB, from RGB uint8)"] = _time(
        lambda: M.compute_all(a, b, f, M.REQUIRED_METRICS), args.repeat
    )
    slow_repeat = max(3, args.repeat // 2)
    for name in M.METRICS:
        if name not in M.REQUIRED_METRICS:
            fn = M.METRICS[name]
            rows[f"{name} (optional)"] = _time(lambda fn=fn: fn(ga, gb, gf), slow_repeat)
    fuse_repeat = slow_repeat
    rows["GFF fusion (RGB)"] = _time(lambda: B.gff_fuse(a, b), fuse_repeat)
    rows["Laplacian-pyramid fusion (RGB)"] = _time(lambda: B.laplacian_fuse(a, b), fuse_repeat)

    values = M.compute_all(a, b, f)
    result = {
        "benchmark": "bench_metrics",
        "when_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": label,
        "repeat": args.repeat,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "timings": rows,
        "metric_values": values,
        "target": "four required metrics <= 0.5 s total on one 520x520 triple",
    }

    lines = [
        f"### Metrics and baselines timing ({label})",
        "",
        f"{result['when_utc']}, {os.cpu_count()} CPUs, Python {result['python']}, numpy {np.__version__}; "
        f"best / median of {args.repeat} runs (optional metrics and fusion: {fuse_repeat}).",
        "",
        "| step | best (ms) | median (ms) |",
        "|---|---:|---:|",
    ]
    for name, t in rows.items():
        lines.append(f"| {name} | {1000 * t['best_s']:.1f} | {1000 * t['median_s']:.1f} |")
    lines += ["", "Values: " + ", ".join(f"{k}={v:.6f}" for k, v in values.items())]
    md = "\n".join(lines) + "\n"

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "bench_metrics.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
