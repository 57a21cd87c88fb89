"""fuse-dir's record keeping (``OUT/.bafusion-fuse-dir``) for a batch of N stacks: 0.7.0's way
against the journal's (:data:`bafusion.fusion.batch.JOURNAL_FILE`), in one run.

* 0.7.0 rewrote the whole record (indented JSON, every output and its shots) before and after
  each output: :func:`bafusion.fusion.batch.write_marker` with N outputs is timed (the mean of
  ``--repeat`` writes) and the batch's total taken as 2 writes per stack at half the size on
  average (``N * t(N)``), since a write's time grows with the outputs it lists;
* the journal: a whole batch timed end to end (the record written at the start, a "fusing" and
  a "fused" line per stack, the record written whole at the end), and read back
  (:func:`bafusion.fusion.batch.read_marker`) to check it lists the N outputs.

Each output's record is a pair's as fuse-dir writes it (two shots, resolved paths of ~45
characters, sizes, times): ~310 bytes of the indented record an output. No fusion runs: this is
the record's time alone.

    python benchmarks/bench_fuse_dir_record.py 200 1000 5000    # about 10 s on 2 shared cores
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    from bafusion.fusion import batch
    from bafusion.fusion.params import FusionParams

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sizes", nargs="*", type=int, default=[200, 1000, 5000], help="stacks per batch")
    ap.add_argument("--repeat", type=int, default=10, help="0.7.0 record writes timed per size")
    args = ap.parse_args()
    from dataclasses import asdict

    setup = {"bafusion": "0.7.0", "code": "a" * 64,
             "model": {r: {"file": f"/work/bafusion/src/bafusion/models/default/{r}.pt", "sha256": "b" * 64,
                           "patch": 32} for r in ("initial", "boundary")},
             "params": asdict(FusionParams()), "align": "none", "ext": "png", "quality": None}
    folder = "/home/user/pictures/card-0001/in"
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            names = [f"p{i:05d}.png" for i in range(n)]
            shots = {name: {"in": folder, "shots": [[f"{folder}/{name[:-4]}-{x}.png", 7468 + i, 1796642461157380054]
                                                    for i, x in enumerate("AB")]} for name in names}
            old = Path(tmp) / f"old{n}"
            old.mkdir()
            t = time.perf_counter()
            for _ in range(args.repeat):
                batch.write_marker(old, setup, names, "cpu", shots)
            per_write = (time.perf_counter() - t) / args.repeat
            size = (old / batch.OUTPUT_MARKER).stat().st_size
            new = Path(tmp) / f"new{n}"
            new.mkdir()
            t = time.perf_counter()
            journal = batch._Journal(new, setup, set(), "cpu", {})
            for name in names:
                journal.fusing(name, shots[name])
                journal.fused(name)
            journal.close()
            total = time.perf_counter() - t
            doc = batch.read_marker(new)
            assert doc["outputs"] == names and not (new / batch.JOURNAL_FILE).exists()
            print(f"{n} stacks: record {size / 1e6:.2f} MB; 0.7.0: {per_write * 1e3:.1f} ms a write, "
                  f"~{n * per_write:.1f} s a batch; journal: {total:.2f} s a batch "
                  f"({total / n * 1e3:.2f} ms a stack)", flush=True)


if __name__ == "__main__":
    main()
