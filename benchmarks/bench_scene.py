"""Measure the one-scene check (:mod:`bafusion.fusion.scene`) on the real pairs of shared/data/eval (none
may be refused) and on mismatched pairs of the same size (all should be); writes a CSV.

    OMP_NUM_THREADS=1 python benchmarks/bench_scene.py [--data ../shared/data] [--out benchmarks/out/scene.csv]
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
from collections import defaultdict
from pathlib import Path

from bafusion.fusion.scene import MIN_CORRELATION, scene_correlation
from bafusion.io import read_images

#: Pairs that are one scene under two names (eval/real/SOURCES.md): not mismatches.
SAME_SCENE = {frozenset(p) for p in (("real/stand-05", "classic/g06-bottlegear"), ("real/savic-18", "real/tsai-12"),
                                      ("real/savic-11", "classic/g05-calendar"))}


def pairs(root: Path) -> list[tuple[str, Path, Path]]:
    out = []
    for a in sorted(root.rglob("*-A.*")):
        b = next(iter(sorted(a.parent.glob(re.sub(r"-A$", "-B", a.stem) + ".*"))), None)
        if b is not None:
            out.append((f"{a.parent.name}/{a.stem[:-2]}", a, b))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.environ.get("BAFUSION_SHARED_DATA", "../shared/data"))
    ap.add_argument("--out", default="benchmarks/out/scene.csv")
    args = ap.parse_args()
    root = Path(args.data) / "eval"
    if not root.is_dir():
        print(f"{root}: not found", file=sys.stderr)
        return 2
    ps = pairs(root)
    imgs = {name: read_images([a, b]) for name, a, b in ps}
    rows = []
    for name, (a, b) in imgs.items():
        rows.append(("pair", name, name, scene_correlation(a, b)))
    # mismatched: A of one pair with B of the next pair of the same size (and A of the pair after)
    by_size = defaultdict(list)
    for name, (a, _) in imgs.items():
        by_size[a.shape[:2]].append(name)
    for names in by_size.values():
        for i, n in enumerate(names):
            for j in (1, 3):
                if len(names) > j:
                    m = names[(i + j) % len(names)]
                    if frozenset((n, m)) in SAME_SCENE:
                        continue
                    a, b = imgs[n][0], imgs[m][1]
                    if a.ndim != b.ndim:
                        continue
                    rows.append(("mismatch", n, m, scene_correlation(a, b)))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind", "a_of", "b_of", "correlation"])
        w.writerows(rows)
    for kind in ("pair", "mismatch"):
        v = sorted(r[3] for r in rows if r[0] == kind and r[3] is not None)
        print(f"{kind}: n={len(v)} min={v[0]:.3f} median={v[len(v) // 2]:.3f} max={v[-1]:.3f}")
    worst = min((r for r in rows if r[0] == "pair"), key=lambda r: r[3])
    best_mis = max((r for r in rows if r[0] == "mismatch"), key=lambda r: r[3])
    print(f"lowest pair {worst[1]} {worst[3]:.3f}; highest mismatch {best_mis[1]} x {best_mis[2]} {best_mis[3]:.3f}; "
          f"threshold {MIN_CORRELATION}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
