"""Measure the one-scene check (:mod:`bafusion.fusion.scene`) on the real pairs of shared/data/eval (none
may be refused) and on mismatched pairs of the same size (all should be); writes a CSV.

    OMP_NUM_THREADS=1 python benchmarks/bench_scene.py [--data DATA] [--out CSV]

The defaults are the repository's: ../shared/data beside it ($BAFUSION_SHARED_DATA if set) and
benchmarks/out/scene.csv in it, from any working folder.
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


#: The repository: the defaults are found from it, not from the working folder.
REPO = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    """The command line; its defaults relative to the repository (the shared data beside it)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.environ.get("BAFUSION_SHARED_DATA", str(REPO.parent / "shared" / "data")),
                    help="shared data folder holding eval/ (default: $BAFUSION_SHARED_DATA, else ../shared/data "
                    "beside the repository)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "scene.csv"), help="CSV written")
    return ap


def main() -> int:
    args = build_parser().parse_args()
    root = Path(args.data) / "eval"
    if not root.is_dir():
        print(f"{root}: not found (give --data, or set BAFUSION_SHARED_DATA)", file=sys.stderr)
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
