"""Proof that unifying the image readers and gray conversions in ``bafusion.io`` (issue 17)
changed no output: hashes of every reader's and gray conversion's output, and of the GFF and
Laplacian baselines, under the old package and under the new one.

Run once per package (the old one, e.g. ``git archive <commit> src/bafusion | tar -x -C /tmp/old``)
and compare the two JSON files::

    python benchmarks/compare_io.py old /tmp/old/src benchmarks/out/io-old.json
    python benchmarks/compare_io.py new src benchmarks/out/io-new.json
    python benchmarks/compare_io.py --compare benchmarks/out/io-old.json benchmarks/out/io-new.json

Covers every image under ``$BAFUSION_SHARED_DATA`` (default ``shared/data`` beside the checkout,
wherever it is run from, as the other benchmarks): read as fusion reads
it, as the data stages read it (RGB), as the metrics read it; its float gray (also of a float
version), its rounded gray, its uint8 gray; the alphamatting mattes; random uint8 and float
arrays of ten shapes; and the baselines' uint8 fusions of every evaluation pair.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """``$BAFUSION_SHARED_DATA``, else ``shared/data`` beside the checkout (it was ``../shared/data``
    from the working folder, so a run from elsewhere hashed no image and said nothing)."""
    return Path(os.environ.get("BAFUSION_SHARED_DATA", REPO.parent / "shared" / "data"))


def _h(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return f"{a.dtype}{a.shape}" + hashlib.sha256(a.tobytes()).hexdigest()[:16]


def dump(which: str, src: str) -> dict[str, str]:
    sys.path.insert(0, str(Path(src).resolve()))
    import bafusion.io as io
    from bafusion.evaluation import baselines as B
    from bafusion.evaluation import metrics as M

    assert io.__file__.startswith(str(Path(src).resolve())), io.__file__
    new = which == "new"
    root = data_root()
    out: dict[str, str] = {}
    for p in sorted(q for q in root.rglob("*") if q.suffix.lower() in io.IMAGE_SUFFIXES):
        k = str(p.relative_to(root))
        img = io.read_image(p)
        if new:
            rgb, met = io.read_image(p, rgb=True), io.read_image(p)
            rounded = io.gray_float(img, rounded=True)
        else:
            rgb, met = io.read_rgb(p), M.read_image(p)
            rounded = M.to_gray_matlab(met)
        out |= {f"{k}:read_image": _h(img), f"{k}:rgb": _h(rgb), f"{k}:metrics_read": _h(met),
                f"{k}:gray_float_rgb": _h(io.gray_float(rgb)), f"{k}:gray_rounded": _h(rounded),
                f"{k}:gray_u8": _h(io.to_gray_u8(img)),
                f"{k}:gray_float_of_float": _h(io.gray_float(rgb.astype(np.float64) * 0.731 + 0.25))}
        if "gt/" in k:
            out[f"{k}:matte"] = _h(io.read_matte(p))
    rng = np.random.default_rng(0)
    shapes = [(1, 1, 3), (2, 3, 3), (7, 5, 3), (16, 16, 3), (33, 65, 3), (100, 101, 4), (257, 129, 3),
              (520, 520, 3), (1000, 3, 3), (3, 1000, 3)]
    for i, shape in enumerate(shapes):
        u = rng.integers(0, 256, shape, dtype=np.uint8)
        f = rng.uniform(-3, 260, shape)
        halves = np.round(f * 2) / 2
        out |= {f"rand{i}:gray_float": _h(io.gray_float(u)), f"rand{i}:gray_float_f": _h(io.gray_float(f)),
                f"rand{i}:gray_float_f32": _h(io.gray_float(f.astype(np.float32))),
                f"rand{i}:gray_u8": _h(io.to_gray_u8(u)),
                f"rand{i}:gray_rounded": _h(io.gray_float(u, rounded=True) if new else M.to_gray_matlab(u)),
                f"rand{i}:gray_rounded_f": _h(io.gray_float(f, rounded=True) if new else M.to_gray_matlab(f)),
                f"rand{i}:to_uint8": _h(io.to_uint8(halves) if new else B.to_uint8(halves)),
                f"rand{i}:to_uint8_f32": _h(io.to_uint8(halves.astype(np.float32)))}
    to8 = io.to_uint8 if new else B.to_uint8
    for a_path in sorted((root / "eval").rglob("*-A.*")):
        b_path = next(a_path.parent.glob(a_path.name.replace("-A.", "-B.").rsplit(".", 1)[0] + ".*"))
        a, b = io.read_images([a_path, b_path]) if new else (M.read_image(a_path), M.read_image(b_path))
        if a.shape == b.shape:
            out[f"{a_path.name}:gff"] = _h(to8(B.gff_fuse(a, b)))
            out[f"{a_path.name}:laplacian"] = _h(to8(B.laplacian_fuse(a, b)))
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", nargs="?", choices=["old", "new"],
                    help="which package SRC holds: old (before issue 17's readers) or new")
    ap.add_argument("src", nargs="?", metavar="SRC", help="the folder holding that package's bafusion/")
    ap.add_argument("dest", nargs="?", metavar="DEST", help="the JSON file of hashes to write")
    ap.add_argument("--compare", nargs=2, metavar=("OLD_JSON", "NEW_JSON"),
                    help="compare two hash files instead (exit 1 when an output differs)")
    args = ap.parse_args(argv)
    if args.compare:
        if args.which or args.src or args.dest:
            ap.error("--compare takes the two JSON files alone")
        old, new = (json.loads(Path(p).read_text()) for p in args.compare)
        if old.keys() != new.keys():
            print("different entries:", sorted(set(old) ^ set(new))[:10])
            return 1
        differ = [k for k in old if old[k] != new[k]]
        print(f"{len(old)} outputs compared, {len(differ)} differ", *differ[:20], sep="\n")
        return 1 if differ else 0
    if not (args.which and args.src and args.dest):
        ap.error("give WHICH SRC DEST (hash one package) or --compare OLD_JSON NEW_JSON")
    out = dump(args.which, args.src)
    Path(args.dest).parent.mkdir(parents=True, exist_ok=True)
    Path(args.dest).write_text(json.dumps(out, indent=0, sort_keys=True))
    print(f"{args.which}: {len(out)} outputs hashed into {args.dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
