"""End-to-end training throughput: the patch loader + x12 augmentation + training step, against
the same training step fed with random tensors already in memory (the upper bound).

    .venv/bin/python benchmarks/bench_train.py                      # depth 20/56 x patch 32/64, CPU
    .venv/bin/python benchmarks/bench_train.py --configs 20:32 --steps 40 --device cuda

The two feeds are measured in alternating blocks of steps so that a machine shared with other
work slows both alike; the ratio loader/random is the figure of merit (target >= 0.9).
Also reports the loader alone (batches produced per second, no training). Writes
``benchmarks/out/bench_train.json`` and ``.md`` (the folder is git-ignored).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bafusion.nets.augment import AugmentedLoader, load_split
from bafusion.nets.model import build_model
from bafusion.nets.train import pick_device, train_step

OUT = Path(__file__).resolve().parent / "out"


def write_patches(path: Path, n: int, patch: int, seed: int = 0) -> Path:
    """A random patch set of ``n`` training patches, written by the patches step's own writer
    (``x``, ``y``, ``pair``, ``centre`` and the central 2x2 labels ``y_block``, so the loader
    runs the path real patch sets take: each variant's label gathered from ``y_block``)."""
    import h5py

    # Internal API (see BENCHMARKS.md): the patches step's own writer, so that the file has the
    # layout and chunking real patch sets have; tests/test_augment.py runs this function.
    from bafusion.data.patches import _Appender, _ChunkWriter

    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f.attrs.update({"patch": patch, "seed": seed, "kind": "initial", "params": "{}", "code_version": "bench"})
        for split, m in (("train", n), ("val", 0)):
            app = _Appender(f.create_group(split), patch, _ChunkWriter(compress=False, pool=None))
            y_block = rng.integers(0, 2, size=(m, 2, 2)).astype(np.uint8)
            app.append(rng.integers(0, 256, size=(m, 2, patch, patch), dtype=np.uint8), y_block[:, 1, 1].copy(),
                       np.zeros(m, np.int64), np.zeros((m, 2), np.int32), y_block)
            app.close()
    return path


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_one(depth: int, patch: int, batch: int, steps: int, warmup: int, block: int, n_patches: int,
              device: torch.device, tmp: Path) -> dict:
    amp = device.type == "cuda"
    channels_last = device.type == "cuda"
    h5 = write_patches(tmp / f"p{patch}.h5", n_patches, patch)
    data = load_split(h5, "train", device)
    loader = AugmentedLoader(data, batch, device, seed=0, channels_last=channels_last)
    torch.manual_seed(0)
    model = build_model(depth).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    # a pool of random batches, cycled (fresh memory each step, like the loader's output)
    pool = []
    for _ in range(8):
        rx = torch.rand(batch, 2, patch, patch, device=device)
        if channels_last:
            rx = rx.contiguous(memory_format=torch.channels_last)
        pool.append((rx, torch.randint(0, 2, (batch,), device=device)))

    def batches():
        while True:
            yield from loader

    it = batches()
    for i in range(warmup):
        train_step(model, opt, *next(it), amp, device)
        train_step(model, opt, *pool[i % len(pool)], amp, device)
    t_loader = t_random = t_fetch = 0.0
    done = 0
    while done < steps:
        k = min(block, steps - done)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(k):
            tf = time.perf_counter()
            x, y = next(it)
            t_fetch += time.perf_counter() - tf
            train_step(model, opt, x, y, amp, device)
        _sync(device)
        t1 = time.perf_counter()
        for j in range(k):
            train_step(model, opt, *pool[(done + j) % len(pool)], amp, device)
        _sync(device)
        t2 = time.perf_counter()
        t_loader += t1 - t0
        t_random += t2 - t1
        done += k
    # the loader alone
    _sync(device)
    t0 = time.perf_counter()
    m = 0
    for _ in range(max(steps, 20)):
        x, _y = next(it)
        m += x.shape[0]
    _sync(device)
    t_feed = time.perf_counter() - t0
    sps_loader = steps * batch / t_loader
    sps_random = steps * batch / t_random
    return {
        "depth": depth, "patch": patch, "batch": batch, "steps": steps,
        "loader_samples_per_s": round(sps_loader, 2), "random_samples_per_s": round(sps_random, 2),
        "ratio": round(sps_loader / sps_random, 4),
        # share of the loader run's wall time spent producing batches (robust to load changes
        # between blocks; 1 - this is the ratio an idle machine would show)
        "loader_time_fraction": round(t_fetch / t_loader, 4),
        "loader_only_samples_per_s": round(m / t_feed, 1),
        "effective_samples": loader.num_samples,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="20:32,20:64,56:32,56:64", help="depth:patch,...")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--block", type=int, default=2, help="steps per alternating block")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--patches", type=int, default=512, help="patches in the synthetic set")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=str(OUT / "bench_train.json"))
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    rows = []
    with tempfile.TemporaryDirectory() as td:
        for item in args.configs.split(","):
            depth, patch = (int(v) for v in item.split(":"))
            r = bench_one(depth, patch, args.batch, args.steps, args.warmup, args.block, args.patches, device,
                          Path(td))
            rows.append(r)
            print(json.dumps(r), flush=True)
    info = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(), "python": sys.version.split()[0],
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "results": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    tmp.replace(out)
    lines = [f"# bench_train ({info['device']}, {info['threads']} threads, torch {info['torch']}, {info['time']})", "",
             "| depth | patch | batch | loader+train samples/s | random+train samples/s | ratio | loader time share |"
             " loader only samples/s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['depth']} | {r['patch']} | {r['batch']} | {r['loader_samples_per_s']} | "
                     f"{r['random_samples_per_s']} | {r['ratio']} | {r['loader_time_fraction']} | "
                     f"{r['loader_only_samples_per_s']} |")
    md = out.with_suffix(".md")
    tmpm = md.with_name(md.name + ".part")
    tmpm.write_text("\n".join(lines) + "\n")
    tmpm.replace(md)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
