"""Train one net on the device machine (a GPU) within one call of the device tool (issue #13).

The issue's remaining lever is net capacity: ResNet-56 at patch 64, which trains at ~17
samples/s on this CPU, "on a GPU, in chunks under 10 minutes, resume". A call of the device tool
carries at most 64 MiB and runs at most 10 minutes, and a session gets 15 minutes of device time
in all, so this script does the whole chunk in one command:

1. realistic composites from the carried ``prepared/`` folder (``bafusion prepare`` output of
   ``../shared/data/train``: 13 MB), one process per foreground shard, ``--jobs`` at a time;
2. the patch set (``bafusion patches --no-compression``: a scratch set, written 6.5x faster;
   ``--context`` px of surroundings for the consistency term that keeps the dense fusion pass
   faithful to the patch classifier);
3. the plan: a short probe run of ``bafusion train`` measures samples/s, and the epoch size is
   set so that ``--epochs`` epochs fit ``--minutes`` (milestones at the paper's 0.4/0.6/0.8/0.9
   of the run, as 80/120/160/180 of 200). The plan is written to ``--out``/plan.json;
4. ``bafusion train`` with its checkpoints; the script stops it at the budget if needed and
   packs the checkpoint folder as ``--out``/ck.tar.

A later call that carries ``plan.json`` and ``ck.tar`` back in ``--kit`` skips the probe,
rebuilds the same patch set (same code, seed and machine image: same bytes, so the trainer's
fingerprint matches) and resumes. A finished run leaves ``<net>.pt`` + ``.json`` (a model file
for ``bafusion fuse --initial``), ``train_<net>.json`` and ``train_<net>.csv`` in ``--out``.

Prepare the kit here (``.device/`` is git-ignored; ``benchmarks/device_wheels.sh`` fetches the
wheels the device image lacks)::

    bafusion prepare --source dir --alphamatting ../shared/data/train/alphamatting \\
        --backgrounds-dir ../shared/data/train/coco/train2017 --out .device/prepared --no-progress
    bash benchmarks/device_wheels.sh .device/wheels

and run it with the device tool (``carry: [".device"]``)::

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device/wheels/*.whl
    && PYTHONPATH=$PWD/src:/tmp/site BAFUSION_MLFLOW=0 PYTHONUNBUFFERED=1
       python3 benchmarks/device_train.py --kit .device --out $OUT --minutes 6

``tests/test_device_train.py`` runs it on the CPU with a tiny net, twice (the second call
resumes from the first one's ``plan.json`` and ``ck.tar``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The realistic degradations of the shipped model's training data (models/default/README.md).
REALISTIC = {"kernel": "mixed", "spread": True, "exposure": 0.3, "white_balance": 0.0, "gamma": 0.1,
             "noise": 2.0, "jpeg": [75, 98], "shift": 1.5, "scale": 0.02}
#: The paper's milestones (80/120/160/180 of 200 epochs) as fractions of the run.
MILESTONES = (0.4, 0.6, 0.8, 0.9)
RATE = re.compile(r"\|\s*([0-9.]+) samples/s")
AVAILABLE = re.compile(r"train patches x \d+ = (\d+) samples")


def log(msg: str, logfile: Path) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    with logfile.open("a") as f:
        f.write(line + "\n")


def bafusion(args: list[str], logfile: Path, timeout: float | None = None) -> tuple[int, str]:
    """``python -m bafusion.cli ARGS``, its output appended to ``logfile`` and returned.
    On ``timeout`` the process is stopped (SIGTERM, then SIGKILL) and 124 returned."""
    cmd = [sys.executable, "-m", "bafusion.cli", *args]
    out: list[str] = []
    with logfile.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)

        def pump() -> None:
            assert p.stdout is not None
            for line in p.stdout:
                out.append(line)
                f.write(line)
                f.flush()
                sys.stdout.write(line)
                sys.stdout.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            reader.join(10)
            f.write(f"\n(stopped at the budget of {timeout:.0f} s)\n")
            return 124, "".join(out)
        reader.join()
        return p.returncode, "".join(out)


def build_data(a: argparse.Namespace, work: Path, logfile: Path) -> Path:
    manifest = json.loads((a.kit / "prepared" / "manifest.json").read_text())
    n_fg = sum(1 for e in manifest["foregrounds"] if e.get("split", "train") == "train")
    shards = min(a.shards, n_fg) if a.shards else n_fg
    comp = work / "composite"
    t0 = time.monotonic()

    def one(k: int) -> int:
        rc, _ = bafusion(["composite", "--prepared", str(a.kit / "prepared"), "--shard", str(k), "--shards",
                          str(shards), "--sigma", *map(str, a.sigma), "--realistic", json.dumps(a.realistic),
                          "--seed", str(a.seed), "--out", str(comp / f"shard-{k}.h5"), "--no-progress"],
                         work / f"composite-{k}.log")
        return rc

    with ThreadPoolExecutor(a.jobs) as ex:
        codes = list(ex.map(one, range(shards)))
    for k, rc in enumerate(codes):
        if rc:
            sys.stdout.write((work / f"composite-{k}.log").read_text()[-3000:])
            raise SystemExit(f"composite shard {k} failed ({rc})")
    log(f"composite: {shards} shards in {time.monotonic() - t0:.1f} s", logfile)
    t0 = time.monotonic()
    rc, _ = bafusion(["patches", *(str(comp / f"shard-{k}.h5") for k in range(shards)), "--patch", str(a.patch),
                      "--per-pair", str(a.per_pair), "--boundary-per-pair", str(a.per_pair), "--val-fraction",
                      "0.15", "--context", str(a.context), "--seed", str(a.seed), "--out", str(work / "patches"),
                      "--no-compression", "--no-progress"], logfile)
    if rc:
        raise SystemExit(f"patches failed ({rc})")
    log(f"patches: {time.monotonic() - t0:.1f} s", logfile)
    return work / "patches" / f"{a.net}.h5"


def train_sets(a: argparse.Namespace, epochs: int, samples_per_epoch: int) -> list[str]:
    milestones = sorted({max(1, round(f * epochs)) for f in MILESTONES if round(f * epochs) < epochs})
    sets = {"seed": a.seed, "patch": a.patch, "depth": a.depth, "train.epochs": epochs, "train.batch": a.batch,
            "train.lr": a.lr, "train.milestones": milestones, "train.samples_per_epoch": samples_per_epoch,
            "train.val_samples": a.val_samples, "train.device": a.device, "train.consistency":
            1.0 if a.context else 0.0, "train.checkpoint_every": max(1, samples_per_epoch // a.batch // 4),
            "train.init": a.init}
    out: list[str] = []
    for k, v in sets.items():
        out += ["--set", f"{k}={json.dumps(v)}"]
    for kv in a.set:  # the user's, as typed (YAML values)
        out += ["--set", kv]
    return out


#: Arguments that change the patch set or the trained weights: a resumed call must repeat them.
RUN_KEYS = ("net", "patch", "depth", "per_pair", "context", "sigma", "realistic", "seed", "epochs", "batch", "lr",
            "val_samples", "init", "set")


def plan_args(a: argparse.Namespace) -> dict:
    return json.loads(json.dumps({k: v for k, v in vars(a).items() if k not in ("kit", "out", "work")}, default=str))


def plan_run(a: argparse.Namespace, patches: Path, work: Path, logfile: Path) -> dict:
    """Measure samples/s with a short run (two epochs of ``--probe-steps`` steps; the second
    one's rate, past the warm-up), then size the epochs to fit the budget."""
    steps = a.probe_steps
    probe = work / "probe"
    rc, out = bafusion(["train", "--net", a.net, "--patches", str(patches), "--out", str(probe / "m.pt"),
                        "--params", str(REPO / "params.yaml"), *train_sets(a, 2, steps * a.batch),
                        "--set", f"train.val_samples={a.batch}", "--checkpoints", str(probe / "ck"),
                        "--metrics", str(probe / "metrics.json"), "--plots", str(probe / "p.csv"),
                        "--no-progress"], logfile)
    rates = [float(x) for x in RATE.findall(out)]
    if rc or not rates:
        raise SystemExit(f"the probe run failed ({rc}); see the log")
    rate = rates[-1]
    budget = a.minutes * 60 * a.fill
    per_epoch = max(1, math.floor(rate * budget / a.epochs / a.batch)) * a.batch
    available = AVAILABLE.search(out)  # an epoch cannot hold more than the augmented set
    if available:
        per_epoch = min(per_epoch, int(available.group(1)) // a.batch * a.batch or a.batch)
    plan = {"net": a.net, "probe_samples_per_s": rate, "budget_s": budget, "epochs": a.epochs,
            "samples_per_epoch": per_epoch, "args": plan_args(a)}
    log(f"plan: {rate:.0f} samples/s in the probe -> {a.epochs} epochs x {per_epoch} samples "
        f"({a.epochs * per_epoch} in all) for {budget:.0f} s", logfile)
    return plan


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kit", type=Path, default=Path(".device"),
                   help="carried folder: prepared/ (required), plan.json + ck.tar of an earlier call (resume)")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "device-out")))
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bafusion-device-work",
                   help="scratch folder for the data (emptied first; the same in every call of a run)")
    p.add_argument("--net", choices=("initial", "boundary"), default="initial")
    p.add_argument("--minutes", type=float, default=6.0, help="training budget of this call (the data come first)")
    p.add_argument("--fill", type=float, default=0.85, help="share of the budget the planned epochs fill")
    p.add_argument("--device", default="cuda")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="composite shards at a time")
    p.add_argument("--shards", type=int, default=0, help="composite shards (0: one per foreground)")
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--depth", type=int, default=56)
    p.add_argument("--per-pair", type=int, default=40, help="random (and boundary) patches per pair")
    p.add_argument("--context", type=int, default=16, help="px of surroundings stored; > 0 turns consistency on")
    p.add_argument("--sigma", type=float, nargs=2, default=(1.0, 6.0))
    p.add_argument("--realistic", type=json.loads, default=REALISTIC)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--val-samples", type=int, default=4096)
    p.add_argument("--init", default="", help="warm start: a model file of the same depth")
    p.add_argument("--probe-steps", type=int, default=60)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more train overrides")
    a = p.parse_args(argv)
    if not (a.kit / "prepared" / "manifest.json").is_file():
        p.error(f"{a.kit / 'prepared'}: no prepared data (bafusion prepare ... --out {a.kit / 'prepared'})")
    plan: dict | None = None
    plan_file = a.kit / "plan.json"
    if plan_file.is_file():  # resume: the same plan (the trainer's fingerprint covers it)
        plan = json.loads(plan_file.read_text())
        now = plan_args(a)
        differ = sorted(k for k in RUN_KEYS if plan["args"].get(k) != now.get(k))
        if differ:
            was = ", ".join(f"{k}={plan['args'].get(k)!r}" for k in differ)
            p.error(f"{plan_file}: planned with other {', '.join(differ)} ({was}); "
                    "pass the same values to resume, or leave plan.json out to start afresh")
    a.out.mkdir(parents=True, exist_ok=True)
    logfile = a.out / "log.txt"
    # A fixed folder: the patch set records its sources' paths, and the trainer's fingerprint
    # reads them, so a resumed call must build the data at the same place.
    work = a.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t_start = time.monotonic()
    try:
        patches = build_data(a, work, logfile)
        ck = work / "ck"
        if plan is not None:
            if (a.kit / "ck.tar").is_file():
                with tarfile.open(a.kit / "ck.tar") as t:
                    t.extractall(ck, filter="data")
            log(f"resume: {plan_file} ({plan['epochs']} x {plan['samples_per_epoch']})", logfile)
        else:
            plan = plan_run(a, patches, work, logfile)
        (a.out / "plan.json").write_text(json.dumps(plan, indent=1) + "\n")
        rc, _ = bafusion(["train", "--net", a.net, "--patches", str(patches), "--out", str(a.out / f"{a.net}.pt"),
                          "--params", str(REPO / "params.yaml"),
                          *train_sets(a, plan["epochs"], plan["samples_per_epoch"]),
                          "--checkpoints", str(ck), "--metrics", str(a.out / f"train_{a.net}.json"),
                          "--plots", str(a.out / f"train_{a.net}.csv"), "--no-progress"], logfile,
                         timeout=a.minutes * 60)
        if ck.is_dir():
            with tarfile.open(a.out / "ck.tar", "w") as t:
                for f in sorted(ck.iterdir()):
                    t.add(f, arcname=f.name)
        done = (a.out / f"{a.net}.pt").is_file()
        log(f"train: {'finished' if done else f'stopped ({rc}); carry plan.json and ck.tar back to resume'}; "
            f"{time.monotonic() - t_start:.0f} s in all", logfile)
        return 0 if done or rc == 124 else rc
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
