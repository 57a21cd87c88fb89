"""benchmarks/device_train.py, the one-call GPU training chunk, run here on the CPU with a tiny
net: data from a carried prepared/ folder, a probe that sizes the epochs, training stopped
mid-run, and a second call that resumes from the first one's plan.json and ck.tar."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "device_train.py"
TINY = ["--device", "cpu", "--patch", "16", "--depth", "8", "--per-pair", "4", "--context", "0",
        "--epochs", "2", "--batch", "16", "--lr", "0.01", "--val-samples", "32", "--probe-steps", "2",
        "--jobs", "2", "--minutes", "0.5", "--fill", "1.0", "--set", "train.threads=1",
        "--set", "train.checkpoint_every=2"]


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "BAFUSION_MLFLOW": "0", "OMP_NUM_THREADS": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return env


def _call(kit: Path, out: Path, work: Path, *more: str, **env: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(SCRIPT), "--kit", str(kit), "--out", str(out), "--work", str(work), *TINY, *more]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(**env), timeout=600, check=False)


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    kit = tmp_path_factory.mktemp("kit")
    r = subprocess.run([sys.executable, "-m", "bafusion.cli", "prepare", "--source", "builtin", "--out",
                        str(kit / "prepared"), "--no-progress"], capture_output=True, text=True, env=_env(),
                       timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return kit


def test_a_stopped_chunk_resumes_in_the_next_call(kit: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    first = _call(kit, tmp_path / "out1", work, BAFUSION_TRAIN_ABORT_AT_STEP="7")
    log1 = first.stdout + first.stderr
    assert first.returncode != 0, log1[-3000:]  # the simulated kill: no model, a checkpoint
    plan = json.loads((tmp_path / "out1" / "plan.json").read_text())
    assert plan["probe_samples_per_s"] > 0 and plan["epochs"] == 2
    assert plan["samples_per_epoch"] % 16 == 0 and plan["samples_per_epoch"] >= 16
    assert (tmp_path / "out1" / "ck.tar").is_file() and not (tmp_path / "out1" / "initial.pt").exists()
    assert "composite:" in log1 and "plan:" in log1

    # the next call carries plan.json and ck.tar back in the kit
    shutil.copy2(tmp_path / "out1" / "plan.json", kit / "plan.json")
    shutil.copy2(tmp_path / "out1" / "ck.tar", kit / "ck.tar")
    try:
        # another scratch folder and budget: neither is part of the plan
        second = _call(kit, tmp_path / "out2", tmp_path / "work2", "--minutes", "5")
        log2 = second.stdout + second.stderr
        assert second.returncode == 0, log2[-3000:]
        assert "resume: " in log2 and "bafusion train: resuming initial from" in log2, log2[-3000:]
        assert "plan:" not in log2  # no second probe
        m = json.loads((tmp_path / "out2" / "train_initial.json").read_text())
        assert m["samples_seen"] == 2 * plan["samples_per_epoch"]
        meta = json.loads((tmp_path / "out2" / "initial.json").read_text())
        assert meta["patch"] == 16 and meta["depth"] == 8
        assert json.loads((tmp_path / "out2" / "plan.json").read_text()) == plan

        # a resumed call with other training values is refused before any work, with the keys named
        third = _call(kit, tmp_path / "out3", work, "--lr", "0.02")
        assert third.returncode != 0 and "planned with other lr" in third.stderr, third.stderr[-2000:]
        assert not (tmp_path / "out3" / "initial.pt").exists()
    finally:
        (kit / "plan.json").unlink()
        (kit / "ck.tar").unlink()


def test_the_budget_stops_training_and_packs_the_checkpoint(kit: Path, tmp_path: Path) -> None:
    """The device path: the plan is 4x the budget, so the trainer is stopped at the budget
    (SIGTERM), the call still succeeds, and ck.tar holds a resumable checkpoint. Many short
    epochs: with 4, a fast probe hit the cap of one epoch (the augmented set) and the plan
    ended inside the budget (seen in CI)."""
    r = _call(kit, tmp_path / "out", tmp_path / "work", "--epochs", "40", "--minutes", "0.2", "--fill", "4")
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-3000:]
    assert "stopped at the budget" in log and not (tmp_path / "out" / "initial.pt").exists()
    with tarfile.open(tmp_path / "out" / "ck.tar") as t:
        assert "last.pt" in t.getnames()
    assert not (tmp_path / "work").exists()  # the scratch folder is removed


def test_refusals_before_any_work(kit: Path, tmp_path: Path) -> None:
    r = _call(tmp_path / "empty", tmp_path / "out", tmp_path / "work")
    assert r.returncode == 2 and "no prepared data" in r.stderr
    r = _call(kit, tmp_path / "out", tmp_path / "work", "--set", "train.epochs=3")
    assert r.returncode == 2 and "the plan sets train.epochs" in r.stderr
    r = _call(kit, tmp_path / "out", tmp_path / "work", "--set", "train.momentum=fast")
    assert r.returncode == 2 and "train.momentum" in r.stderr, r.stderr
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("not the script's")
    r = _call(kit, tmp_path / "out", tmp_path / "mine")
    assert r.returncode == 2 and "not this script's scratch folder" in r.stderr
    assert (tmp_path / "mine" / "keep.txt").exists() and not (tmp_path / "out").exists()


def test_small_learning_rates_reach_the_trainer_as_numbers(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import device_train
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    a = argparse.Namespace(
        seed=0, patch=16, depth=8, batch=16, lr=1e-5, val_samples=32, device="cpu", context=0, init="", set=[],
        net="initial")
    cfg = device_train.train_config(a, 10, 64)
    assert cfg.lr == 1e-5 and cfg.milestones == [4, 6, 8, 9] and cfg.init == "" and cfg.samples_per_epoch == 64


def test_device_wheels_help_prints_usage_and_downloads_nothing(tmp_path: Path) -> None:
    """``bash benchmarks/device_wheels.sh --help`` says how to call it and exits 0; before, it took
    ``--help`` for the download folder (``mkdir -p --help`` printed mkdir's help, then pip was run
    with ``-d --help``). ``python3`` here is a stand-in that fails, so nothing is downloaded."""
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text("#!/bin/sh\necho python3 was run >&2\nexit 7\n")
    (fake / "python3").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ.get('PATH', '')}"}
    for flag in ("--help", "-h"):
        r = subprocess.run(["bash", str(REPO / "benchmarks" / "device_wheels.sh"), flag], cwd=tmp_path,
                           capture_output=True, text=True, env=env, timeout=60, check=False)
        assert r.returncode == 0, r.stderr
        assert "Usage: bash benchmarks/device_wheels.sh [DIR]" in r.stdout
        assert "python3 was run" not in r.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bin"]
