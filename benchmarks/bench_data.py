"""Benchmark: composite + patches throughput on the real shared data, with 1 and 2 cores,
the disk it takes, and the paper's scale (18,900 pairs) extrapolated.

    python benchmarks/bench_data.py [--data ../shared/data] [--foregrounds 6] [--out benchmarks/out]
                                    [--patch-threads 1 2] [--repeats 2]

Runs the package's CLI as separate processes, as Snakemake does: ``--cores 1`` runs the
composite shards one after the other, ``--cores 2`` two at a time. The patches step runs
with each ``--patch-threads`` (``bafusion patches --threads``), the settings interleaved
``--repeats`` times in one run (the median is reported), and the files of every setting are
checked to be byte-identical. Writes ``benchmarks/out/data.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BAFUSION = [sys.executable, "-m", "bafusion.cli"]


def _run(args: list[str]) -> None:
    env = dict(os.environ, BAFUSION_MLFLOW="0", OMP_NUM_THREADS="1")
    subprocess.run(BAFUSION + args + ["--no-progress"], check=True, env=env, stdout=subprocess.DEVNULL)


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--foregrounds", type=int, default=6, help="training foregrounds to use (27 = all)")
    ap.add_argument("--backgrounds", type=int, default=128)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--patch-threads", type=int, nargs="+", default=[1, 2], help="bafusion patches --threads to compare")
    ap.add_argument("--repeats", type=int, default=2, help="runs of the patches step per thread setting, interleaved")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out"))
    a = ap.parse_args()
    train = Path(a.data) / "train"
    if not train.is_dir():
        print(f"no real data at {train}: nothing to benchmark", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="bafusion-bench-"))
    try:
        prepared = work / "prepared"
        t0 = time.perf_counter()
        _run(["prepare", "--source", "dir", "--alphamatting", str(train / "alphamatting"),
              "--backgrounds-dir", str(train / "coco" / "train2017"), "--foregrounds", str(a.foregrounds),
              "--backgrounds", str(a.backgrounds), "--out", str(prepared)])
        t_prepare = time.perf_counter() - t0
        pairs = a.foregrounds * a.backgrounds
        results: dict[str, object] = {"foregrounds": a.foregrounds, "backgrounds": a.backgrounds, "pairs": pairs,
                                      "prepare_s": t_prepare, "patch": a.patch}
        for cores in (1, 2):
            comp = work / f"composite-{cores}"
            t0 = time.perf_counter()
            pending = list(range(a.shards))
            running: list[subprocess.Popen[bytes]] = []
            env = dict(os.environ, BAFUSION_MLFLOW="0", OMP_NUM_THREADS="1")
            while pending or running:
                while pending and len(running) < cores:
                    s = pending.pop(0)
                    running.append(subprocess.Popen(
                        BAFUSION + ["composite", "--prepared", str(prepared), "--shard", str(s), "--shards", str(a.shards),
                                    "--out", str(comp / f"shard-{s}.h5"), "--no-progress"],
                        env=env, stdout=subprocess.DEVNULL))
                running[0].wait()
                if running[0].returncode:
                    raise SystemExit(f"composite shard failed ({running[0].returncode})")
                running.pop(0)
            t_comp = time.perf_counter() - t0
            results[f"composite_{cores}core_s"] = t_comp
            results[f"composite_{cores}core_pairs_per_s"] = pairs / t_comp
        comp = work / "composite-2"
        times: dict[int, list[float]] = {t: [] for t in a.patch_threads}
        digests: dict[int, dict[str, str]] = {}
        for _ in range(a.repeats):
            for threads in a.patch_threads:
                out_t = work / f"patches-t{threads}"
                t0 = time.perf_counter()
                _run(["patches", *map(str, sorted(comp.glob("shard-*.h5"))), "--patch", str(a.patch), "--per-pair", "10",
                      "--boundary-per-pair", "10", "--out", str(out_t), "--threads", str(threads)])
                times[threads].append(time.perf_counter() - t0)
                digests[threads] = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(out_t.glob("*.h5"))}
        if len({json.dumps(d, sort_keys=True) for d in digests.values()}) != 1:
            raise SystemExit(f"patch files differ between thread settings: {digests}")
        t1 = a.patch_threads[0]
        t_patch = statistics.median(times[t1])
        for threads, ts in times.items():
            results[f"patches_threads{threads}_s"] = statistics.median(ts)
            results[f"patches_threads{threads}_runs_s"] = ts
            results[f"patches_threads{threads}_speedup"] = t_patch / statistics.median(ts)
        results["patches_identical_across_threads"] = True
        results["patches_s"] = t_patch
        results["patches_pairs_per_s"] = pairs / t_patch
        shutil.copytree(work / f"patches-t{t1}", work / "patches")
        results["disk_prepared_bytes"] = _du(prepared)
        results["disk_composite_bytes"] = _du(comp)
        results["disk_patches_bytes"] = _du(work / "patches")
        scale = 18_900 / pairs
        results["paper_composite_2core_h"] = results["composite_2core_s"] * scale / 3600  # type: ignore[operator]
        results["paper_patches_h"] = t_patch * scale / 3600
        results["paper_disk_composite_gb"] = results["disk_composite_bytes"] * scale / 1e9  # type: ignore[operator]
        results["paper_disk_patches_gb"] = results["disk_patches_bytes"] * scale / 1e9  # type: ignore[operator]
        results["cpu_count"] = os.cpu_count()
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "data.json").write_text(json.dumps(results, indent=1) + "\n")
        r = results
        print(f"| pairs | composite 1 core | composite 2 cores | speed-up | patches (p={a.patch}) | disk composite | disk patches |")
        print("|---|---|---|---|---|---|---|")
        print(f"| {pairs} | {r['composite_1core_pairs_per_s']:.1f} pairs/s | {r['composite_2core_pairs_per_s']:.1f} pairs/s | "
              f"{r['composite_2core_pairs_per_s'] / r['composite_1core_pairs_per_s']:.2f}x | {r['patches_pairs_per_s']:.1f} pairs/s | "
              f"{r['disk_composite_bytes'] / 1e6:.0f} MB | {r['disk_patches_bytes'] / 1e6:.1f} MB |")
        print(f"paper scale (18,900 pairs): composite {r['paper_composite_2core_h']:.2f} h on 2 cores, patches "
              f"{r['paper_patches_h']:.2f} h, disk {r['paper_disk_composite_gb']:.1f} GB composite + "
              f"{r['paper_disk_patches_gb']:.2f} GB patches")
        for threads in a.patch_threads:
            print(f"patches --threads {threads}: {r[f'patches_threads{threads}_s']:.1f} s (median of {a.repeats}), "
                  f"{r[f'patches_threads{threads}_speedup']:.2f}x --threads {t1}; files byte-identical")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
