"""What an ensemble of initial nets (``bafusion ensemble``) costs a fusion: time of
``fuse_images`` on one pair with each model, side by side in one process (median of
``--repeats``), and the time of the initial net's trunk alone over one 400x400 crop.

    .venv/bin/python benchmarks/bench_ensemble.py --model models/default --model ENSEMBLE_DIR ...

Writes ``benchmarks/out/bench_ensemble.json`` and ``.md`` (the folder is git-ignored).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "out"
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))


def main() -> int:
    import torch

    from bafusion.fusion import FusionParams, fuse_images, load_nets_from_dir
    from bafusion.io import read_images

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", required=True, help="model folder (repeatable)")
    ap.add_argument("--pair", default="lytro-05")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "eval" / "lytro"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    a, b = read_images([next(data.glob(f"{args.pair}-A.*")), next(data.glob(f"{args.pair}-B.*"))])
    nets = {m: load_nets_from_dir(m, "cpu") for m in args.model}
    params = FusionParams()
    x = torch.rand(1, 2, 400, 400)
    times: dict[str, list[float]] = {m: [] for m in args.model}
    trunk: dict[str, list[float]] = {m: [] for m in args.model}
    for _ in range(args.repeats):  # interleaved, so that a busy machine slows all alike
        for m, n in nets.items():
            t0 = time.perf_counter()
            fuse_images(a, b, n, params, ("A", "B"), threads=args.threads)
            times[m].append(time.perf_counter() - t0)
            with torch.no_grad():
                t0 = time.perf_counter()
                n.initial.trunk(x)
                trunk[m].append(time.perf_counter() - t0)
    ref = args.model[0]
    rows = []
    for m, n in nets.items():
        members = n.initial.spec.members
        rows.append({"model": m, "members": members, "fuse_s": statistics.median(times[m]),
                     "trunk_s": statistics.median(trunk[m]),
                     "fuse_ratio": statistics.median(times[m]) / statistics.median(times[ref]),
                     "trunk_ratio": statistics.median(trunk[m]) / statistics.median(trunk[ref])})
    OUT.mkdir(exist_ok=True)
    (OUT / "bench_ensemble.json").write_text(json.dumps({"pair": args.pair, "threads": args.threads, "repeats":
                                                         args.repeats, "rows": rows}, indent=1) + "\n")
    md = "| model | initial-net members | fusion | x first | trunk 400x400 | x first |\n|---|---:|---:|---:|---:|---:|\n"
    for r in rows:
        md += (f"| `{r['model']}` | {r['members']} | {r['fuse_s']:.2f} s | {r['fuse_ratio']:.2f} | "
               f"{r['trunk_s'] * 1e3:.0f} ms | {r['trunk_ratio']:.2f} |\n")
    (OUT / "bench_ensemble.md").write_text(md)
    print(md, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
