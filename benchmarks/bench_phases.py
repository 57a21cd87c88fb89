"""Where a camera-size ``bafusion fuse`` spends its time, phase by phase, with the defaults.

The pairs are lytro-05 (``--pair``) cropped to 4:3 / 3:2 and upscaled (Lanczos) to 4000x3000
(12 MP) and 6000x4000 (24 MP), with mild noise (sigma 2 gray levels, seeded) and saved as JPEG
quality 92, as a camera writes them (``benchmarks/out/phases/``). Each size is fused by
``bafusion fuse A B -o F.jpg`` with the built-in defaults, in a fresh child process whose
functions of each phase are wrapped to record, per phase: wall seconds, the process's CPU
seconds and the calling threads' CPU seconds (process CPU above them means other threads
worked: torch's pool, a codec). Calls of a phase that overlap in time (the steps run side by
side on ``--threads``, :func:`bafusion.threads.side_by_side`) count once, from the first start
to the last end. On a shared machine the wall seconds follow the load;
the CPU seconds (and their shares) do not, or much less.

It also times loading the shipped nets (:func:`bafusion.fusion.load_nets_from_dir`) in fresh
processes, ``--repeats`` times each, alternating: as now (the weights check's meta-device
probe built without initialisation) and as before (the probe initialised, which on the meta
device imports ``torch._dynamo``). And small-region removal
(:func:`bafusion.fusion.remove_small_regions`) on a 6000x4000 map (a wavy boundary, and the same
with 2000 flipped pixels, seeded), now (one labelling and count per class) against before
(skimage's ``remove_small_objects`` then ``remove_small_holes``), in this process after a
call of each, ``--repeats`` times alternating; the maps are compared too.

    python benchmarks/bench_phases.py                 # both sizes, 7 repeats of the nets' load
    python benchmarks/bench_phases.py --sizes 12      # the 12 MP pair only
    python benchmarks/bench_phases.py --sizes 12 --threads 1 2 --rounds 2 --phases-only
        # one thread against two (alternating, twice): the wall seconds of each phase and their ratio
    python benchmarks/bench_phases.py --sizes 12 24 --rounds 0 --side-by-side 5 --phases-only
        # the steps run side by side, in one process, one thread against two (5 times each, alternating)

Writes ``benchmarks/out/bench_phases.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "out"
SHARED = Path(os.environ.get("BAFUSION_SHARED_DATA", REPO.parent / "shared" / "data"))
SIZES = {"12": ((4000, 3000), (0, 65, 520, 455)), "24": ((6000, 4000), (0, 87, 520, 434))}

# The child: `bafusion fuse` in-process with each phase's function wrapped (module attributes,
# looked up at call time by the code that calls them: `fuse` imports rule.fuse_stack when it fuses).
CHILD = r'''
import json, os, sys, time
T = lambda: (time.perf_counter(), time.process_time(), time.thread_time())
t0 = T()
import torch
rows = [("import torch", t0, T())]
out_json, argv = sys.argv[1], sys.argv[2:]
import bafusion.cli.fusion as cf, bafusion.fusion.batch as fb, bafusion.fusion.rule as fr
import bafusion.fusion.working as fw, bafusion.fusion.scene as fs, bafusion.io as bio
import bafusion.fusion.decide, bafusion.fusion.scoring
fd = sys.modules["bafusion.fusion.decide"]
def wrap(mod, name, label):
    f = getattr(mod, name)
    def w(*a, **k):
        s = T()
        try:
            return f(*a, **k)
        finally:
            rows.append((label, s, T()))
    setattr(mod, name, w)
for mod, name, label in [
        (fb, "read_source_set", "read and decode"), (fs, "check_one_scene", "one-scene check"),
        (fb, "_safe_motion_hints", "motion hint"), (fb, "_auto_align", "--align auto's decision"),
        (fb, "align_for_fuse", "alignment"), (cf, "nets_from_args", "loading the nets"),
        (fr, "to_gray_u8", "gray conversion"), (fr, "match_pair", "exposure matching"),
        (fr, "colour_gains", "colour gains"), (fw, "resize_gray", "resize to the working size"),
        (fd, "decide", "nets at the working size"), (fw, "_upsample", "upsampling the maps"),
        (fw, "boundary_band", "boundary band"), (fw, "guided_filter", "band refinement (guided filter)"),
        (fr, "remove_small_regions", "small-region removal"), (fr, "fuse_with_map", "composite"),
        (bio, "write_image", "writing (JPEG encoding)"), (fr, "fuse_stack", "fusing in all")]:
    wrap(mod, name, label)
from bafusion.cli import main
s = T()
rc = main(argv)
rows.append(("main() in all", s, T()))
agg = {}
# calls of one label that overlap in time (side by side on the pool's threads) count once: the
# wall and process CPU seconds of each group of overlapping calls, from its first start to its
# last end; thread CPU is each calling thread's own, summed
for label in dict.fromkeys(r[0] for r in rows):
    calls = sorted((a, b) for lab, a, b in rows if lab == label)
    d = agg[label] = {"calls": len(calls), "wall": 0.0, "cpu": 0.0, "thread_cpu": 0.0, "start": calls[0][0][0] - t0[0]}
    group = None
    for call in calls + [None]:
        if group is not None and (call is None or call[0][0] >= group[1][0]):
            d["wall"] += group[1][0] - group[0][0]; d["cpu"] += group[1][1] - group[0][1]
            group = None
        if call is None:
            break
        a, b = call
        d["thread_cpu"] += b[2] - a[2]
        group = (a, b) if group is None else (group[0], max(group[1], b))
json.dump({"rc": rc, "torch_threads": torch.get_num_threads(), "phases": agg}, open(out_json, "w"))
'''

LOAD = r'''
import json, sys, time
old = sys.argv[1] == "before"
import torch
from bafusion.nets import model as m
if old:  # the probe as before: initialised (kaiming_normal_ on the meta device)
    init = m.CifarResNet.__init__
    m.CifarResNet.__init__ = lambda self, spec, *, init_=True, **k: init(self, spec)
from bafusion.fusion import load_nets_from_dir
c, w = time.process_time(), time.perf_counter()
load_nets_from_dir(sys.argv[2], "cpu")
print(json.dumps({"cpu": time.process_time() - c, "wall": time.perf_counter() - w,
                  "dynamo": "torch._dynamo" in sys.modules}))
'''


def make_pair(size: str, pair: str, folder: Path) -> tuple[Path, Path]:
    import numpy as np
    from PIL import Image

    (w, h), box = SIZES[size]
    rng = np.random.default_rng(0)
    paths = []
    for s in "AB":
        p = folder / f"{pair}-{size}mp-{s}.jpg"
        if not p.is_file():
            im = Image.open(SHARED / "eval" / "lytro" / f"{pair}-{s}.jpg").convert("RGB")
            a = np.asarray(im.crop(box).resize((w, h), Image.LANCZOS), dtype=np.float32)
            a = np.clip(a + rng.normal(0, 2.0, a.shape).astype(np.float32), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(p, quality=92)
        paths.append(p)
    return paths[0], paths[1]


def small_regions(repeats: int) -> dict:
    """CPU seconds (median) of the small-region removal now and before, on two 24 MP maps."""
    import inspect
    import math
    import time
    import warnings

    import numpy as np
    from skimage.morphology import remove_small_holes, remove_small_objects

    sys.path.insert(0, str(REPO / "src"))
    from bafusion.fusion import remove_small_regions

    def before(dm: np.ndarray, min_region: float) -> np.ndarray:
        area = math.ceil(min_region * dm.size)
        out = dm.astype(bool)
        for fn, old in ((remove_small_objects, "min_size"), (remove_small_holes, "area_threshold")):
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Only one label was provided")
                kw = {"max_size": area - 1} if "max_size" in inspect.signature(fn).parameters else {old: area}
                out = fn(out, **kw, connectivity=1)
        return out

    h, w = 4000, 6000
    yy, xx = np.mgrid[0:h, 0:w]
    clean = xx < w / 2 + 400 * np.sin(yy / 500.0)
    specks = clean.copy()
    specks.flat[np.random.default_rng(1).integers(0, clean.size, 2000)] ^= True
    out: dict = {}
    for name, dm in (("clean", clean), ("2000 specks", specks)):
        same = np.array_equal(remove_small_regions(dm, 0.01), before(dm, 0.01))
        times: dict = {"before": [], "now": []}
        for _ in range(repeats):
            for way, f in (("before", before), ("now", remove_small_regions)):
                c = time.process_time()
                f(dm, 0.01)
                times[way].append(time.process_time() - c)
        out[name] = {"same": same, **{k: statistics.median(v) for k, v in times.items()}}
    return out


def side_by_side_steps(a: Path, b: Path, repeats: int) -> dict:
    """Wall and CPU seconds (medians) of the steps run side by side, with one thread and with two
    (torch's setting, as ``--threads``), alternating, in this process: the pair's two gray
    conversions, exposure matching's fit (its two low-pass filters); the results compared. (The
    read is not among them: its two decodes side by side were dropped, BENCHMARKS.md.)"""
    import time

    sys.path.insert(0, str(REPO / "src"))
    from bafusion.fusion.exposure import fit_exposure
    from bafusion.io import read_source_set, to_gray_u8
    from bafusion.threads import side_by_side, torch_threads

    src = read_source_set([a, b])
    gray = side_by_side([lambda: to_gray_u8(src.images[0]), lambda: to_gray_u8(src.images[1])], threads=1)
    steps = {"gray conversion": lambda: [g.tobytes() for g in side_by_side([lambda: to_gray_u8(src.images[0]),
                                                                           lambda: to_gray_u8(src.images[1])])],
             "exposure fit": lambda: fit_exposure(*gray)}
    out: dict = {}
    for name, step in steps.items():
        times: dict = {1: [], 2: []}
        results = {}
        for _ in range(repeats):
            for n in (1, 2):
                with torch_threads(n):
                    w, c = time.perf_counter(), time.process_time()
                    results[n] = step()
                    times[n].append((time.perf_counter() - w, time.process_time() - c))
        out[name] = {"same": results[1] == results[2],
                     **{f"wall{n}": statistics.median(t[0] for t in ts) for n, ts in times.items()},
                     **{f"cpu{n}": statistics.median(t[1] for t in ts) for n, ts in times.items()}}
    return out


def env(src: Path | None = None) -> dict:
    e = dict(os.environ, PYTHONPATH=str(src or REPO / "src"), DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true")
    return e


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="*", default=["12", "24"], choices=sorted(SIZES))
    ap.add_argument("--pair", default="lytro-05")
    ap.add_argument("--repeats", type=int, default=7,
                    help="fresh processes per way of loading the nets; timings per way of small-region removal")
    ap.add_argument("--threads", type=int, nargs="*", default=[],
                    help="fuse each size with --threads N for each N given, in turn (default: fuse's own choice)")
    ap.add_argument("--rounds", type=int, default=1, help="fusions per size (and per --threads), alternating; "
                    "0: none (with --side-by-side)")
    ap.add_argument("--phases-only", action="store_true", help="only the fusions' phases (not the nets' load "
                    "nor the small-region removal)")
    ap.add_argument("--side-by-side", type=int, default=0, metavar="N",
                    help="also time the steps run side by side (the gray conversions, exposure's fit) "
                         "in this process, N times with one thread and with two, alternating")
    ap.add_argument("--src", type=Path, default=None, help="the package source folder to time (default: this "
                    "checkout's src; another checkout's for a before/after)")
    args = ap.parse_args()
    if not (SHARED / "eval" / "lytro").is_dir():
        print(f"bench_phases: the Lytro pairs are not at {SHARED / 'eval' / 'lytro'} (set BAFUSION_SHARED_DATA)",
              file=sys.stderr)
        return 2
    folder = OUT / "phases"
    folder.mkdir(parents=True, exist_ok=True)
    result: dict = {"load_before": os.getloadavg(), "cores": os.cpu_count(), "fuse": {}, "load_nets": {}}
    for size in args.sizes:
        a, b = make_pair(size, args.pair, folder)
        for _ in range(args.rounds):
            for threads in args.threads or [None]:
                key = size if threads is None else f"{size} MP, --threads {threads}"
                js = folder / f"phases-{size}mp.json"
                fused = folder / f"fused-{size}mp{'' if threads is None else f'-t{threads}'}.jpg"
                subprocess.run([sys.executable, "-c", CHILD, str(js), "fuse", str(a), str(b), "-o", str(fused),
                                "--no-progress", *([] if threads is None else ["--threads", str(threads)])],
                               check=True, env=env(args.src))
                r = {**json.loads(js.read_text()), "load_after": os.getloadavg(), "bytes": fused.read_bytes()}
                result["fuse"].setdefault(key, []).append(r)
        if args.threads:  # the same bytes with any number of threads
            outs = {r.pop("bytes") for rs in result["fuse"].values() for r in rs if "bytes" in r}
            result["same_bytes"] = result.get("same_bytes", True) and len(outs) == 1
        for rs in result["fuse"].values():
            for r in rs:
                r.pop("bytes", None)
    if args.side_by_side:
        for size in args.sizes:
            result.setdefault("side_by_side", {})[size] = side_by_side_steps(*make_pair(size, args.pair, folder),
                                                                             args.side_by_side)
    if args.phases_only:
        return _report(result, phases_only=True)
    model = REPO / "src" / "bafusion" / "models" / "default"
    for _ in range(args.repeats):
        for way in ("before", "after"):
            p = subprocess.run([sys.executable, "-c", LOAD, way, str(model)], capture_output=True, text=True,
                               check=True, env=env())
            result["load_nets"].setdefault(way, []).append(json.loads(p.stdout.strip().splitlines()[-1]))
    result["small_regions"] = small_regions(args.repeats)
    return _report(result)


def _report(result: dict, phases_only: bool = False) -> int:
    result["load_after"] = os.getloadavg()
    (OUT / "bench_phases.json").write_text(json.dumps(result, indent=1))
    lines = [f"load average before {result['load_before'][0]:.1f}, after {result['load_after'][0]:.1f}; "
             f"{result['cores']} cores", ""]
    for key, rs in result["fuse"].items():
        for k, r in enumerate(rs, 1):
            ph = r["phases"]
            total = ph["main() in all"]["cpu"] + ph["import torch"]["cpu"]
            name = f"{key} MP" if key in SIZES else key
            lines += [f"### {name}{f', round {k}' if len(rs) > 1 else ''} (torch threads {r['torch_threads']})", "",
                      "| phase | calls | wall s | CPU s | calling threads' CPU s | share of CPU |",
                      "|---|---:|---:|---:|---:|---:|"]
            for label, d in sorted(ph.items(), key=lambda kv: kv[1]["start"]):
                lines.append(f"| {label} | {d['calls']} | {d['wall']:.2f} | {d['cpu']:.2f} | {d['thread_cpu']:.2f} | "
                             f"{100 * d['cpu'] / total:.0f} % |")
            lines.append("")
    keys = list(result["fuse"])
    if len(keys) > 1:  # wall seconds per phase, each way's median over the rounds, and their ratio to the first
        med = {k: {lab: statistics.median(r["phases"][lab]["wall"] for r in result["fuse"][k] if lab in r["phases"])
                   for lab in result["fuse"][k][0]["phases"]} for k in keys}
        lines += ["### Wall seconds per phase (median over the rounds) and ratio to the first column", "",
                  "| phase | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
        for lab in med[keys[0]]:
            cells = [f"{med[k][lab]:.2f}" + ("" if k == keys[0] or not med[keys[0]][lab] else
                                             f" ({med[k][lab] / med[keys[0]][lab]:.2f}x)") for k in keys if lab in med[k]]
            lines.append(f"| {lab} | " + " | ".join(cells) + " |")
        lines += ["", f"fused files the same bytes: {result.get('same_bytes')}", ""]
    for size, steps in result.get("side_by_side", {}).items():
        lines += [f"### Steps side by side, {size} MP, in one process (median wall and CPU s, one thread and two alternating)",
                  "", "| step | wall, 1 thread | wall, 2 threads | ratio | CPU, 1 | CPU, 2 | same results |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for name, r in steps.items():
            lines.append(f"| {name} | {r['wall1']:.2f} | {r['wall2']:.2f} | {r['wall2'] / r['wall1']:.2f} | "
                         f"{r['cpu1']:.2f} | {r['cpu2']:.2f} | {r['same']} |")
        lines.append("")
    if phases_only:
        (OUT / "bench_phases.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return 0
    lines += ["### Loading the shipped nets (fresh processes, median)", "", "| probe | CPU s | wall s | imports torch._dynamo |",
              "|---|---:|---:|---|"]
    for way, rs in result["load_nets"].items():
        lines.append(f"| {way} | {statistics.median(r['cpu'] for r in rs):.2f} | "
                     f"{statistics.median(r['wall'] for r in rs):.2f} | {rs[0]['dynamo']} |")
    lines += ["", "### Small-region removal, 6000x4000 map (CPU s, median)", "",
              "| map | before (skimage) | now | same map |", "|---|---:|---:|---|"]
    for name, r in result["small_regions"].items():
        lines.append(f"| {name} | {r['before']:.2f} | {r['now']:.2f} | {r['same']} |")
    (OUT / "bench_phases.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
