"""Flushing a folder output before :func:`bafusion.atomic.atomic_dir` swaps it in: N files of
K kB just written, flushed by

* ``seq``: an ``fsync`` of each file, one after another;
* ``tree``: :func:`bafusion.atomic.sync_tree` (an ``fsync`` of each file from a few threads,
  then of each folder);
* ``syncfs``: one ``syncfs`` of the file system (Linux; the way of 2026-12-07's first version),

optionally with another writer's data on the same file system (``--other-mb`` written to a
file beside, not flushed, just before each flush): ``syncfs`` waits for that too.

    python benchmarks/bench_sync_tree.py DIR --files 200 --kb 20 --other-mb 1000 --modes syncfs,tree
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import time


def main() -> None:
    from bafusion.atomic import sync_tree

    ap = argparse.ArgumentParser()
    ap.add_argument("dir", help="a folder on the file system to measure (files are written and removed there)")
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--kb", type=int, default=20)
    ap.add_argument("--other-mb", type=int, default=0)
    ap.add_argument("--modes", default="seq,tree,syncfs")
    args = ap.parse_args()
    libc = ctypes.CDLL(None, use_errno=True)
    payload = os.urandom(args.kb * 1024)
    other = os.path.join(args.dir, "other.bin")
    for mode in args.modes.split(","):
        d = os.path.join(args.dir, f"out-{mode}")
        shutil.rmtree(d, ignore_errors=True)
        os.sync()
        os.makedirs(d)
        for i in range(args.files):
            with open(os.path.join(d, f"f{i:05d}.png"), "wb") as f:
                f.write(payload)
        if args.other_mb:
            blob = os.urandom(1 << 20)
            with open(other, "wb") as f:
                for _ in range(args.other_mb):
                    f.write(blob)
        t = time.perf_counter()
        if mode == "seq":
            for name in sorted(os.listdir(d)):
                fd = os.open(os.path.join(d, name), os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
        elif mode == "tree":
            sync_tree(d)
        elif mode == "syncfs":
            fd = os.open(d, os.O_RDONLY)
            if libc.syncfs(fd) != 0:
                raise OSError(ctypes.get_errno(), "syncfs")
            os.close(fd)
        else:
            raise SystemExit(f"unknown mode {mode!r}")
        dt = time.perf_counter() - t
        print(f"{args.files} files of {args.kb} kB, other writer {args.other_mb} MB: {mode} {dt:.3f} s", flush=True)
        shutil.rmtree(d)
        if args.other_mb:
            os.remove(other)
    os.sync()


if __name__ == "__main__":
    main()
