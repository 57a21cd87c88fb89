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

and run it with the device tool (``carry: [".device"]``, ``timeout_s: 600``), one line::

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device/wheels/*.whl && PYTHONPATH=$PWD/src:/tmp/site BAFUSION_MLFLOW=0 PYTHONUNBUFFERED=1 python3 benchmarks/device_train.py --kit .device --out $OUT --minutes 6

``--deadline`` (default 540 s from the script's start) bounds the whole call: each step gets
what is left of it, and the training is stopped early enough to pack ``ck.tar`` before the
tool's 10-minute limit would kill the call with nothing returned.

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
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))
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


def bafusion(args: list[str], logfile: Path, timeout: float | None = None, abort_on: str | None = None,
             env: dict[str, str] | None = None) -> tuple[int, str]:
    """``python -m bafusion.cli ARGS``, its output appended to ``logfile`` and returned.

    The command runs in a process group of its own. On ``timeout`` the group is stopped
    (SIGTERM, then SIGKILL) and 124 returned; when a line contains ``abort_on`` likewise, with
    3. Both leave the command's checkpoints as they were last written."""
    cmd = [sys.executable, "-m", "bafusion.cli", *args]
    out: list[str] = []
    seen = threading.Event()
    with logfile.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                             start_new_session=True, env=env)
        lock = threading.Lock()

        def pump() -> None:
            assert p.stdout is not None
            for line in p.stdout:
                with lock:
                    if f.closed:
                        return
                    out.append(line)
                    f.write(line)
                    f.flush()
                sys.stdout.write(line)
                sys.stdout.flush()
                if abort_on and abort_on in line:
                    seen.set()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        start = time.monotonic()
        rc: int | None = None
        while rc is None:
            try:
                rc = p.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                late = timeout is not None and time.monotonic() - start > timeout
                if late or seen.is_set():
                    _stop_group(p)
                    rc = 124 if late else 3
                    with lock:
                        f.write(f"\n(stopped: {'the budget of %.0f s' % timeout if late else abort_on})\n")
        reader.join(10)  # a grandchild that keeps the pipe open must not hold us
        with lock:
            text = "".join(out)
        return rc, text


def _stop_group(p: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def left(a: argparse.Namespace, margin: float = 0.0) -> float:
    """Seconds left of the call's ``--deadline``, less ``margin``."""
    return a.deadline - (time.monotonic() - a.t0) - margin


def build_data(a: argparse.Namespace, work: Path, logfile: Path) -> Path:
    manifest = json.loads((a.kit / "prepared" / "manifest.json").read_text())
    n_fg = sum(1 for e in manifest["foregrounds"] if e.get("split", "train") == "train")
    shards = min(a.shards, n_fg) if a.shards else n_fg
    comp = work / "composite"
    t0 = time.monotonic()
    one_thread = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def one(k: int) -> int:
        rc, _ = bafusion(["composite", "--prepared", str(a.kit / "prepared"), "--shard", str(k), "--shards",
                          str(shards), "--sigma", *map(str, a.sigma), "--realistic", json.dumps(a.realistic),
                          "--seed", str(a.seed), "--out", str(comp / f"shard-{k}.h5"), "--no-progress"],
                         work / f"composite-{k}.log", timeout=left(a, MARGIN_S), env=one_thread)
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
                      "--no-compression", "--no-progress"], logfile, timeout=left(a, MARGIN_S))
    if rc:
        raise SystemExit(f"patches failed ({rc})")
    log(f"patches: {time.monotonic() - t0:.1f} s", logfile)
    return work / "patches" / f"{a.net}.h5"


def _yaml(v: object) -> str:
    """A value as ``--set`` parses it (YAML): 1e-05 must read as a float, "" as a string."""
    import yaml

    text = yaml.safe_dump(v, default_flow_style=True).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def train_sets(a: argparse.Namespace, epochs: int, samples_per_epoch: int) -> list[str]:
    milestones = sorted({max(1, round(f * epochs)) for f in MILESTONES if round(f * epochs) < epochs})
    sets = {"seed": a.seed, "patch": a.patch, "depth": a.depth, "train.epochs": epochs, "train.batch": a.batch,
            "train.lr": a.lr, "train.milestones": milestones, "train.samples_per_epoch": samples_per_epoch,
            "train.val_samples": a.val_samples, "train.device": a.device, "train.consistency":
            1.0 if a.context else 0.0, "train.checkpoint_every": max(1, samples_per_epoch // a.batch // 4),
            "train.init": a.init}
    out: list[str] = []
    for k, v in sets.items():
        out += ["--set", f"{k}={_yaml(v)}"]
    for kv in a.set:  # the user's, as typed (YAML values)
        out += ["--set", kv]
    return out


#: Arguments that change the patch set or the trained weights: a resumed call must repeat them.
RUN_KEYS = ("net", "patch", "depth", "per_pair", "context", "sigma", "realistic", "seed", "epochs", "batch", "lr",
            "val_samples", "init", "set", "shards")
#: Train keys the plan sets: --set may not override them.
PLANNED = ("train.epochs", "train.samples_per_epoch", "train.milestones")
#: Seconds kept back from the deadline for stopping the trainer (SIGTERM grace) and packing ck.tar.
MARGIN_S = 45.0
#: The device tool returns files of at most 16 MiB.
MAX_FILE = 16 * 1024 * 1024


def plan_args(a: argparse.Namespace) -> dict:
    skip = ("kit", "out", "work", "t0")
    return json.loads(json.dumps({k: v for k, v in vars(a).items() if k not in skip}, default=str))


def train_config(a: argparse.Namespace, epochs: int, samples_per_epoch: int):  # -> TrainConfig
    """The trainer's configuration for these arguments, checked as `bafusion train` checks it."""
    from bafusion.config import read_params
    from bafusion.nets.train import TrainConfig

    sets = train_sets(a, epochs, samples_per_epoch)
    params = read_params(REPO / "params.yaml", [], sets[1::2])
    return TrainConfig.from_params(params, a.net)


def plan_run(a: argparse.Namespace, patches: Path, work: Path, logfile: Path) -> dict:
    """Measure samples/s with a short run (two epochs of ``--probe-steps`` steps; the second
    one's rate, past the warm-up), then size the epochs to fit the budget."""
    steps = a.probe_steps
    probe = work / "probe"
    rc, out = bafusion(["train", "--net", a.net, "--patches", str(patches), "--out", str(probe / "m.pt"),
                        "--params", str(REPO / "params.yaml"), *train_sets(a, 2, steps * a.batch),
                        "--set", f"train.val_samples={a.batch}", "--checkpoints", str(probe / "ck"),
                        "--metrics", str(probe / "metrics.json"), "--plots", str(probe / "p.csv"),
                        "--no-progress"], logfile, timeout=left(a, MARGIN_S))
    rates = [float(x) for x in RATE.findall(out)]
    if rc or not rates:
        raise SystemExit(f"the probe run failed ({rc}); see the log")
    rate = rates[-1]
    budget = min(a.minutes * 60, left(a, MARGIN_S)) * a.fill
    per_epoch = max(1, math.floor(rate * budget / a.epochs / a.batch)) * a.batch
    available = AVAILABLE.search(out)  # an epoch cannot hold more than the augmented set
    if available:
        per_epoch = min(per_epoch, int(available.group(1)) // a.batch * a.batch or a.batch)
    plan = {"net": a.net, "probe_samples_per_s": rate, "budget_s": budget, "epochs": a.epochs,
            "samples_per_epoch": per_epoch, "args": plan_args(a)}
    log(f"plan: {rate:.0f} samples/s in the probe -> {a.epochs} epochs x {per_epoch} samples "
        f"({a.epochs * per_epoch} in all) for {budget:.0f} s", logfile)
    return plan


def check_resume(a: argparse.Namespace, plan: dict, patches: Path, ck: Path) -> None:
    """Refuse a resume that the trainer would silently turn into a fresh start: a checkpoint
    of another patch set, other parameters or other training code, or of a finished run."""
    from bafusion.nets.train import fingerprint, load_checkpoint

    last = ck / "last.pt"
    if not last.is_file():
        raise SystemExit(f"{a.kit / 'ck.tar'}: holds no last.pt")
    state = load_checkpoint(last)
    if state.get("finished"):
        raise SystemExit(f"{a.kit / 'ck.tar'}: the run finished in an earlier call (its model was written)")
    cfg = train_config(a, plan["epochs"], plan["samples_per_epoch"])
    if state.get("fingerprint") != fingerprint(cfg, a.net, patches, 1):
        raise SystemExit(f"{a.kit / 'ck.tar'}: written for another patch set, other parameters or other training "
                         "code than this call rebuilt: the trainer would start afresh")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kit", type=Path, default=Path(".device"),
                   help="carried folder: prepared/ (required), plan.json + ck.tar of an earlier call (resume)")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "device-out")))
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bafusion-device-work",
                   help="scratch folder for the data (created; emptied only if it is this script's)")
    p.add_argument("--net", choices=("initial", "boundary"), default="initial")
    p.add_argument("--minutes", type=float, default=6.0, help="training budget of this call (the data come first)")
    p.add_argument("--deadline", type=float, default=540.0,
                   help="seconds from the start by which the call has packed its results")
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
    a.t0 = time.monotonic()
    # refusals before any work
    if not (a.kit / "prepared" / "manifest.json").is_file():
        p.error(f"{a.kit / 'prepared'}: no prepared data (bafusion prepare ... --out {a.kit / 'prepared'})")
    planned = [kv for kv in a.set if kv.split("=", 1)[0].strip() in PLANNED]
    if planned:
        p.error(f"--set {planned[0]}: the plan sets {', '.join(PLANNED)} (use --epochs, --minutes, --fill)")
    try:
        train_config(a, a.epochs, a.batch)
    except Exception as e:  # noqa: BLE001 - UserError and schema errors: say them before the data are built
        p.error(f"the training parameters: {e}")
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
    work = a.work.resolve()
    marker = work / ".bafusion-device-work"
    if work.exists() and any(work.iterdir()) and not marker.exists():
        p.error(f"--work {work}: not empty and not this script's scratch folder; choose another")
    a.out.mkdir(parents=True, exist_ok=True)
    logfile = a.out / "log.txt"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    marker.touch()
    try:
        patches = build_data(a, work, logfile)
        ck = work / "ck"
        if plan is not None:
            if (a.kit / "ck.tar").is_file():
                with tarfile.open(a.kit / "ck.tar") as t:
                    t.extractall(ck, filter="data")
                check_resume(a, plan, patches, ck)
            log(f"resume: {plan_file} ({plan['epochs']} x {plan['samples_per_epoch']})", logfile)
        else:
            plan = plan_run(a, patches, work, logfile)
        (a.out / "plan.json").write_text(json.dumps(plan, indent=1) + "\n")
        budget = min(a.minutes * 60, left(a, MARGIN_S))
        rc, _ = bafusion(["train", "--net", a.net, "--patches", str(patches), "--out", str(a.out / f"{a.net}.pt"),
                          "--params", str(REPO / "params.yaml"),
                          *train_sets(a, plan["epochs"], plan["samples_per_epoch"]),
                          "--checkpoints", str(ck), "--metrics", str(a.out / f"train_{a.net}.json"),
                          "--plots", str(a.out / f"train_{a.net}.csv"), "--no-progress"], logfile,
                         timeout=budget, abort_on="starting afresh")
        if ck.is_dir() and any(ck.iterdir()):
            with tarfile.open(a.out / "ck.tar", "w") as t:
                for f in sorted(ck.iterdir()):
                    t.add(f, arcname=f.name)
            size = (a.out / "ck.tar").stat().st_size
            if size > MAX_FILE:
                log(f"ck.tar is {size / 2**20:.1f} MiB, over the {MAX_FILE / 2**20:.0f} MiB a returned file may "
                    "have: it will not come back", logfile)
                return 1
        done = (a.out / f"{a.net}.pt").is_file()
        if done:
            log(f"train: finished; {time.monotonic() - a.t0:.0f} s in all", logfile)
            return 0
        if rc == 124 and (a.out / "ck.tar").is_file():
            log(f"train: stopped at the budget ({budget:.0f} s); carry plan.json and ck.tar back to resume; "
                f"{time.monotonic() - a.t0:.0f} s in all", logfile)
            return 0
        log(f"train: failed ({rc}){'' if (a.out / 'ck.tar').is_file() else ', no checkpoint'}", logfile)
        return rc or 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
