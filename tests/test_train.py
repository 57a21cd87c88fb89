"""Training of the initial and boundary nets (bafusion.nets.train) on tiny synthetic patch sets."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import mlflow_test_uri
from toy_patches import write_toy_patches

from bafusion import cli
from bafusion.errors import InputFileError, UserError
from bafusion.nets.model import ModelFileError, ResNetSpec, build_model, load_model, save_model
from bafusion.nets.train import (
    LOCK_FILE,
    checkpoints_lock,
    ABORT_ENV,
    Paths,
    TrainConfig,
    load_checkpoint,
    resolve_config,
    train,
)

torch.set_num_threads(1)  # 2 threads on a shared 2-core machine can be 10x slower

TOY = {"seed": 7, "patch": 16, "depth": 8,
       "train": {"epochs": 2, "batch": 16, "lr": 0.01, "milestones": [1], "gamma": 0.5,
                 "samples_per_epoch": 384, "device": "cpu", "threads": 1}}


#: The time a line of a log starts with (bafusion.progress.stamped), off a terminal.
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d"


def _unstamped(text: str) -> list[str]:
    """The lines of ``text`` without the time that starts each in a log (bafusion.progress.stamped)."""
    return [re.sub(rf"^{STAMP} ", "", line) for line in text.splitlines()]


def _fake_train_clock(monkeypatch: pytest.MonkeyPatch, validation_s: float | None = 2.0) -> list[float]:
    """A clock for train's ``time.perf_counter`` that moves 1 s a training step and
    ``validation_s`` a validation (None: validation takes no time); returns it (``clock[0]``)."""
    import types

    import bafusion.nets.train as train_module

    clock = [0.0]
    step, evaluate = train_module.train_step, train_module.evaluate

    def one_second_step(*args: object, **kwargs: object) -> object:
        clock[0] += 1.0
        return step(*args, **kwargs)

    def timed_validation(*args: object, **kwargs: object) -> object:
        clock[0] += validation_s or 0.0
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", one_second_step)
    if validation_s is not None:
        monkeypatch.setattr(train_module, "evaluate", timed_validation)
    monkeypatch.setattr(train_module, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    return clock


def _paths(root: Path, net: str) -> Paths:
    return Paths(out=root / "models" / f"{net}.pt", checkpoints=root / "checkpoints" / net,
                 metrics=root / "metrics" / f"train_{net}.json", plots=root / "plots" / f"train_{net}.csv")


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One uninterrupted training of the initial net, shared by several tests. (Module-scoped
    fixtures run before conftest's function-scoped MLflow isolation: point MLflow at the same
    test database here, never at the repository's.)"""
    root = tmp_path_factory.mktemp("run")
    h5 = write_toy_patches(root / "patches" / "initial.h5", n_train=192, n_val=96, patch=16, seed=1)
    cfg = resolve_config(TOY, "initial")
    paths = _paths(root, "initial")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_test_uri(tmp_path_factory.getbasetemp()))
        mp.delenv("BAFUSION_MLFLOW", raising=False)  # tracked whatever the developer's shell sets
        uri = os.environ["MLFLOW_TRACKING_URI"]
        summary = train("initial", h5, cfg, paths, progress=False)
    return {"root": root, "h5": h5, "cfg": cfg, "paths": paths, "summary": summary, "mlflow_uri": uri}


def test_tiny_net_learns_separable_toy_set(toy_run: dict) -> None:
    s, paths = toy_run["summary"], toy_run["paths"]
    assert s["val_acc"] > 0.9
    assert s["samples_seen"] == 2 * 384 and s["effective_train_samples"] == 192 * 12
    net, meta = load_model(paths.out, expect=ResNetSpec(depth=8))
    assert meta["net"] == "initial" and meta["patch"] == 16 and meta["depth"] == 8
    assert meta["val_acc"] == pytest.approx(s["val_acc"]) and meta["samples_seen"] == 768
    assert meta["device"] == "cpu" and meta["params"]["lr"] == 0.01
    metrics = json.loads(paths.metrics.read_text())
    assert metrics["best_epoch"] in (1, 2) and metrics["val_acc"] == pytest.approx(s["val_acc"])
    # numbers only (each key is a column of dvc exp show; "device" and "net" were strings)
    assert all(isinstance(v, (int, float)) for v in metrics.values()), metrics
    rows = paths.plots.read_text().splitlines()
    assert rows[0].startswith("epoch,lr,train_loss,train_acc,val_loss,val_acc") and len(rows) == 3
    assert [float(r.split(",")[1]) for r in rows[1:]] == [0.01, 0.005]  # MultiStepLR at epoch 1
    assert (paths.checkpoints / "last.pt").exists() and (paths.checkpoints / "best.pt").exists()
    # the final model is the best epoch's
    best = torch.load(paths.checkpoints / "best.pt", weights_only=True)
    assert all(torch.equal(best["model"][k], v) for k, v in net.state_dict().items())


def test_mlflow_run_holds_per_epoch_metrics(toy_run: dict) -> None:
    from mlflow.tracking import MlflowClient

    from bafusion.tracking import EXPERIMENT

    client = MlflowClient(tracking_uri=toy_run["mlflow_uri"])
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = [r for r in client.search_runs([exp.experiment_id])
            if r.data.params.get("patches") == str(toy_run["h5"])]
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["net"] == "initial"
    # params.yaml's names, as the parent run logs them (the train section was logged without its
    # prefix: "lr", so a search for params.`train.lr` missed every training run)
    assert run.data.params["train.lr"] == "0.01" and run.data.params["depth"] == "8"
    assert run.data.params["train.milestones"] == "[1]" and run.data.params["seed"] == "7"
    assert not {"lr", "epochs", "threads", "train.seed"} & set(run.data.params)
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "samples_per_s"):
        hist = client.get_metric_history(run.info.run_id, f"epoch/{key}")
        assert sorted(m.step for m in hist) == [1, 2], key
    rows = list(csv.DictReader(io.StringIO(toy_run["paths"].plots.read_text())))
    for key in ("lr", "train_loss", "train_acc", "val_loss", "val_acc"):  # the plots CSV's per-epoch figures
        hist = sorted(client.get_metric_history(run.info.run_id, f"epoch/{key}"), key=lambda m: m.step)
        assert [m.value for m in hist] == [pytest.approx(float(r[key])) for r in rows], key
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert "model/initial.pt" in arts


def test_mlflow_run_metrics_are_dvcs_under_the_same_names(toy_run: dict) -> None:
    # MLflow's val_acc was the last epoch's (its per-epoch series' latest value: 0.5321) while
    # metrics/train_initial.json's val_acc, which dvc metrics show gives, is the best epoch's
    # (0.7429): one name, two numbers; train_acc/losses likewise, and best_epoch was a tag only
    from mlflow.tracking import MlflowClient

    from bafusion.tracking import EXPERIMENT

    client = MlflowClient(tracking_uri=toy_run["mlflow_uri"])
    exp = client.get_experiment_by_name(EXPERIMENT)
    run = next(r for r in client.search_runs([exp.experiment_id])
               if r.data.params.get("patches") == str(toy_run["h5"]))
    dvc = json.loads(toy_run["paths"].metrics.read_text())
    assert {k: run.data.metrics.get(k) for k in dvc} == {k: pytest.approx(float(v)) for k, v in dvc.items()}
    assert run.data.metrics["best_val_acc"] == pytest.approx(dvc["val_acc"])  # kept, as before
    # a name means one number: no plain name holds a series
    for key in dvc:
        assert len(client.get_metric_history(run.info.run_id, key)) == 1, key



def test_the_training_run_tags_the_sha256_of_the_model_it_wrote(toy_run: dict) -> None:
    # fuse's and evaluate's runs name their nets by sha256 and find the training run by this tag
    import hashlib

    from mlflow.tracking import MlflowClient

    from bafusion.tracking import EXPERIMENT, MODEL_SHA256_TAG

    client = MlflowClient(tracking_uri=toy_run["mlflow_uri"])
    run = next(r for r in client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
               if r.data.params.get("patches") == str(toy_run["h5"]))
    assert run.data.tags[MODEL_SHA256_TAG] == hashlib.sha256(toy_run["paths"].out.read_bytes()).hexdigest()


def test_the_training_run_is_tagged_with_its_metric_schema(toy_run: dict) -> None:
    """Runs before the best-epoch naming hold the per-epoch series as ``val_acc``, newer ones the
    best epoch's number: a search on ``metrics.val_acc`` mixed the two. A training run is tagged
    ``bafusion.metric_schema`` = 2, and README's filter keeps it (and no untagged, older run)."""
    from mlflow.tracking import MlflowClient

    from bafusion import tracking

    client = MlflowClient(tracking_uri=toy_run["mlflow_uri"])
    exp_id = client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id
    old = client.create_run(exp_id, run_name="an older training").info.run_id
    client.log_metric(old, "val_acc", 0.5, step=1)  # as an older bafusion logged its epochs
    client.set_terminated(old)
    found = client.search_runs([exp_id], "tags.`bafusion.metric_schema` = '2' and metrics.val_acc > 0")
    ids = {r.info.run_id for r in found}
    ours = next(r for r in client.search_runs([exp_id]) if r.data.params.get("patches") == str(toy_run["h5"]))
    assert ours.data.tags[tracking.METRIC_SCHEMA_TAG] == str(tracking.METRIC_SCHEMA) == "2"
    assert ours.info.run_id in ids and old not in ids


def test_the_logged_model_is_tagged_with_its_net_digest_and_best_epoch(toy_run: dict) -> None:
    # every logged model of a store was a bare initial_net/boundary_net (tags: the source only):
    # the Models view could not tell one experiment's nets from another's
    import hashlib

    import mlflow
    from mlflow.tracking import MlflowClient

    from bafusion.tracking import EXPERIMENT, MODEL_SHA256_TAG

    client = MlflowClient(tracking_uri=toy_run["mlflow_uri"])
    exp = client.get_experiment_by_name(EXPERIMENT)
    run = next(r for r in client.search_runs([exp.experiment_id])
               if r.data.params.get("patches") == str(toy_run["h5"]))
    mlflow.set_tracking_uri(toy_run["mlflow_uri"])
    models = [m for m in mlflow.search_logged_models(experiment_ids=[exp.experiment_id], output_format="list")
              if m.source_run_id == run.info.run_id]
    assert [m.name for m in models] == ["initial_net"]
    tags = models[0].tags
    assert tags["net"] == "initial" and tags["best_epoch"] == str(toy_run["summary"]["best_epoch"])
    assert tags[MODEL_SHA256_TAG] == hashlib.sha256(toy_run["paths"].out.read_bytes()).hexdigest()
    assert float(tags["val_acc"]) == pytest.approx(toy_run["summary"]["val_acc"])

@pytest.mark.parametrize("flush", [False, True])
def test_train_leaves_torchs_threads_and_denormal_flushing_as_they_were(
        toy_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flush: bool) -> None:
    """A training set torch's threads (train.threads) and turned on its flushing of denormals,
    and left both so for the rest of the process: a notebook's, and the tests' after an
    in-process ``main(["train", ...])``. Both are as they were once it returns."""
    from bafusion.nets.train import _flush_denormal_on

    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    before = torch.get_num_threads()
    asked = 2 if before == 1 else 1
    if not torch.set_flush_denormal(flush) and flush:
        pytest.skip("this CPU does not flush denormals")
    try:
        assert _flush_denormal_on() is flush
        seen = []
        real = torch.set_flush_denormal
        monkeypatch.setattr(torch, "set_flush_denormal", lambda on: (seen.append(on), real(on))[1])
        rc = cli.main(["train", "--net", "initial", "--patches", str(toy_run["h5"]), "-o", str(tmp_path / "m.pt"),
                       "--checkpoints", str(tmp_path / "ck"), "--params-json",
                       json.dumps({**TOY, "train": {**TOY["train"], "epochs": 1, "samples_per_epoch": 32,
                                                     "threads": asked}})])
        assert rc == 0 and (tmp_path / "m.pt").is_file()
        assert seen[:1] == [True]  # the training flushed denormals ...
        assert torch.get_num_threads() == before and _flush_denormal_on() is flush  # ... and put both back
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(before)


@pytest.mark.parametrize("flush", [False, True])
def test_the_denormal_probe_reads_the_cpu_whatever_the_default_device(flush: bool) -> None:
    """train's probe of torch's denormal flushing (which it sets back after the training) made
    its tensor on torch's default device: a GPU's under a notebook's
    ``torch.set_default_device("cuda")`` (not the CPU flushing it sets back), and under "meta"
    it failed ("Tensor.item() cannot be called on meta tensors")."""
    from bafusion.nets.train import _flush_denormal_on

    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU does not flush denormals")
    try:
        torch.set_flush_denormal(flush)
        with torch.device("meta"):
            assert _flush_denormal_on() is flush
    finally:
        torch.set_flush_denormal(False)


def test_mlflow_run_logs_what_trained_the_weights(tmp_path: Path) -> None:
    # device, amp and channels_last were logged as "auto" and threads as 0 (the settings, merged
    # last over the resolved values), and no torch version: two runs on other devices, thread
    # counts or torch versions showed the same params
    from mlflow.tracking import MlflowClient

    h5 = write_toy_patches(tmp_path / "initial.h5", n_train=48, n_val=16, patch=16, seed=3)
    params = {"seed": 11, "patch": 16, "depth": 8,
              "train": {"epochs": 1, "batch": 16, "milestones": [], "samples_per_epoch": 32, "val_samples": 16,
                        "device": "auto", "amp": "auto", "channels_last": "auto", "threads": 0}}
    paths = _paths(tmp_path, "initial")
    train("initial", h5, resolve_config(params, "initial"), paths, progress=False)
    ck = load_checkpoint(paths.checkpoints / "last.pt")
    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    logged = client.get_run(ck["mlflow_run_id"]).data.params
    assert logged["resolved.device"] == ck["device"] == "cpu"  # (no GPU in the tests)
    assert logged["resolved.amp"] == "False" and logged["resolved.channels_last"] == "False"
    assert logged["resolved.threads"] == str(ck["threads"]) == str(torch.get_num_threads())
    assert logged["resolved.torch"] == ck["torch_version"] == torch.__version__


def test_the_param_names_of_a_training_run_are_params_yamls() -> None:
    from bafusion.nets.train import _param_name

    params = {"seed": 1, "train": {"lr": 0.1, "initial": {"lr": 0.2}, "boundary": {"epochs": 3}}}
    cfg = resolve_config(params, "initial")
    cfg.set_by_option("device", "cpu", "--device")
    assert [_param_name(cfg, k) for k in ("seed", "lr", "epochs", "device")] == [
        "seed", "train.initial.lr", "train.epochs", "train.device"]


@pytest.mark.parametrize("every", [10, 0])
def test_killed_mid_epoch_and_resumed_equals_uninterrupted(toy_run: dict, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch, every: int) -> None:
    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    """Abort in the middle of epoch 2 (24 steps per epoch) at step 34, resume: the final weights
    equal the uninterrupted run's bit for bit, whether the resume starts from a step checkpoint
    (every=10: step 30) or from the end of epoch 1 (every=0: step 24)."""
    cfg = resolve_config(TOY, "initial")
    cfg.checkpoint_every = every
    paths = _paths(tmp_path, "initial")
    monkeypatch.setenv(ABORT_ENV, "34")
    with pytest.raises(KeyboardInterrupt):
        train("initial", toy_run["h5"], cfg, paths, progress=False)
    ck = load_checkpoint(paths.checkpoints / "last.pt")
    assert (ck["epoch"], ck["global_step"], ck["loader"]["position"]) == ((1, 30, 6) if every else (1, 24, 0))
    assert not paths.out.exists()
    assert not ck.get("finished")  # an interrupted run's checkpoint: the next run resumes it
    monkeypatch.delenv(ABORT_ENV)
    summary = train("initial", toy_run["h5"], cfg, paths, progress=False)
    ref = load_checkpoint(toy_run["paths"].checkpoints / "last.pt")
    got = load_checkpoint(paths.checkpoints / "last.pt")
    assert got["finished"] and ref["finished"]
    assert ref["model"].keys() == got["model"].keys()
    for k in ref["model"]:
        assert torch.equal(ref["model"][k], got["model"][k]), k
    assert summary["samples_seen"] == toy_run["summary"]["samples_seen"]
    assert summary["val_acc"] == toy_run["summary"]["val_acc"]
    assert [r["train_loss"] for r in got["history"]] == pytest.approx([r["train_loss"] for r in ref["history"]])


def test_a_resume_before_a_milestone_keeps_the_learning_rate_schedule(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed in epoch 2 of 3 with the milestone at 2, resumed from the end of epoch 1: the
    learning rate still halves after epoch 2 and the weights equal the uninterrupted run's.
    The test above resumes after its only milestone has passed, so a resume that left the
    scheduler new (counting its epochs from the resume) passed it (a mutation test)."""
    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    h5 = write_toy_patches(tmp_path / "initial.h5", n_train=48, n_val=16, patch=16, seed=3)
    params = {**TOY, "train": {**TOY["train"], "epochs": 3, "milestones": [2], "samples_per_epoch": 64}}
    cfg = resolve_config(params, "initial")
    cfg.checkpoint_every = 0
    ref_paths, paths = _paths(tmp_path / "ref", "initial"), _paths(tmp_path / "cut", "initial")
    train("initial", h5, cfg, ref_paths, progress=False)
    monkeypatch.setenv(ABORT_ENV, "6")  # 4 steps of 16 an epoch: in epoch 2
    with pytest.raises(KeyboardInterrupt):
        train("initial", h5, cfg, paths, progress=False)
    assert load_checkpoint(paths.checkpoints / "last.pt")["epoch"] == 1
    monkeypatch.delenv(ABORT_ENV)
    train("initial", h5, cfg, paths, progress=False)
    ref = load_checkpoint(ref_paths.checkpoints / "last.pt")
    got = load_checkpoint(paths.checkpoints / "last.pt")
    assert [r["lr"] for r in got["history"]] == [r["lr"] for r in ref["history"]] == [0.01, 0.01, 0.005]
    for k in ref["model"]:
        assert torch.equal(ref["model"][k], got["model"][k]), k


def test_the_epoch_line_says_the_whole_trainings_elapsed_time_and_time_left(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Each epoch's line ends with the whole training's progress: epochs done, wall time
    elapsed, and the remaining epochs at the mean wall time of the epochs this process ran,
    validation included (the bar showed the current epoch's time left only). A clock that moves
    one second a training step and two a validation: 26 s an epoch of 24 steps. Killed at step 34
    (checkpoint at step 30, 6 s into epoch 2), the resumed process counts its own time elapsed
    (18 steps + validation) and says so, and its estimate takes epoch 2 whole (6 + 18 + 2 s).
    last.pt and the MLflow run hold the epochs' whole wall time (``wall_time``, ``wall_time_s``),
    resumed or not; the model's ``.json`` holds no time (its bytes must not depend on the clock)."""

    import bafusion.nets.train as train_module

    clock = _fake_train_clock(monkeypatch)
    h5 = write_toy_patches(tmp_path / "patches.h5", n_train=192, n_val=96, patch=16, seed=1)
    cfg = resolve_config({**TOY, "train": {**TOY["train"], "epochs": 3}}, "initial")
    cfg.checkpoint_every = 10
    paths = _paths(tmp_path / "fresh", "initial")
    train("initial", h5, cfg, paths, progress=False)
    tails = [line.rsplit(" | ", 1)[1] for line in _unstamped(capsys.readouterr().err) if " epoch " in line and " lr " in line]
    assert tails == ["1/3 epochs, 0:00:26 elapsed, about 0:00:52 left",
                     "2/3 epochs, 0:00:52 elapsed, about 0:00:26 left",
                     "3/3 epochs, 0:01:18 elapsed"], tails
    # the training's wall time, 3 x 26 s: in last.pt and the MLflow run, not in the model's .json
    from mlflow.tracking import MlflowClient

    ck = load_checkpoint(paths.checkpoints / "last.pt")
    assert ck["wall_time"] == 78.0 and ck["train_time"] == 72.0
    logged = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"]).get_run(ck["mlflow_run_id"]).data.metrics
    assert logged["wall_time_s"] == 78.0 and logged["train_time_s"] == 72.0
    assert not [k for k in json.loads(paths.out.with_suffix(".json").read_text()) if "time" in k]
    paths = _paths(tmp_path / "resumed", "initial")
    monkeypatch.setenv(ABORT_ENV, "34")
    with pytest.raises(KeyboardInterrupt):
        train("initial", h5, cfg, paths, progress=False)
    monkeypatch.delenv(ABORT_ENV)
    capsys.readouterr()
    train("initial", h5, cfg, paths, progress=False)
    tails = [line.rsplit(" | ", 1)[1] for line in _unstamped(capsys.readouterr().err) if " epoch " in line and " lr " in line]
    assert tails == ["2/3 epochs, 0:00:20 elapsed since the resume, about 0:00:26 left",
                     "3/3 epochs, 0:00:46 elapsed since the resume"], tails
    # the epochs' whole wall time across the kill: 26 + (6 + 18 + 2) + 26 s (the lost steps 31-34 not counted)
    assert load_checkpoint(paths.checkpoints / "last.pt")["wall_time"] == 78.0
    assert train_module._clock(90061.4) == "25:01:01"


def test_the_wall_time_counts_each_epochs_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``wall_time_s`` (MLflow) and a finished run's ``last.pt`` ``wall_time``, the epochs'
    whole time, "bookkeeping" included, left out each epoch's own checkpoint saves and MLflow
    logging (timed before them). A clock that moves one second a training step, two a
    validation and five a checkpoint save: the wall time is the steps' + 2 x 2 s + 5 s a save
    made in the epochs (the last one, marking the run finished, comes after)."""

    import bafusion.nets.train as train_module

    clock = _fake_train_clock(monkeypatch)
    save = train_module.save_checkpoint
    saves: list[float] = []

    def five_second_save(*args: object, **kwargs: object) -> object:
        clock[0] += 5.0
        saves.append(clock[0])
        return save(*args, **kwargs)

    monkeypatch.setattr(train_module, "save_checkpoint", five_second_save)
    h5 = write_toy_patches(tmp_path / "patches.h5", n_train=192, n_val=96, patch=16, seed=1)
    cfg = resolve_config(TOY, "initial")
    cfg.checkpoint_every = 0
    paths = _paths(tmp_path / "run", "initial")
    train("initial", h5, cfg, paths, progress=False)
    from mlflow.tracking import MlflowClient

    ck = load_checkpoint(paths.checkpoints / "last.pt")
    logged = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"]).get_run(ck["mlflow_run_id"]).data.metrics
    assert ck["finished"] and len(saves) >= 3  # last.pt at each epoch's end, and finished
    want = logged["train_time_s"] + 2 * 2.0 + 5.0 * (len(saves) - 1)
    assert logged["wall_time_s"] == want and ck["wall_time"] == want, (logged, ck["wall_time"], saves)


def test_an_omp_num_threads_above_the_cores_is_kept_with_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``train.threads: 0`` a thread count that ``OMP_NUM_THREADS`` gives torch is kept; it
    was kept silently where it exceeds the cores the process may use (its affinity mask, its
    cgroup's CPU quota, which torch does not see: on a 2-core machine ``taskset -c 0 env
    OMP_NUM_THREADS=4`` gives torch 2 threads on 1 CPU). It is still kept, with one warning line
    naming the variable, its value, the threads, the cores and the quota; none where they fit."""
    import bafusion.threads

    h5 = write_toy_patches(tmp_path / "patches.h5", n_train=48, n_val=16, patch=16, seed=3)
    cfg = resolve_config({**TOY, "train": {**TOY["train"], "epochs": 1, "milestones": [], "samples_per_epoch": 32,
                                           "threads": 0}}, "initial")
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setattr(bafusion.threads, "cpu_quota", lambda: 1.5)
    try:
        torch.set_num_threads(3)  # as torch read OMP_NUM_THREADS=3 at its start
        monkeypatch.setattr(bafusion.threads, "available_cores", lambda: 1)
        train("initial", h5, cfg, _paths(tmp_path / "over", "initial"), progress=False)
        assert torch.get_num_threads() == 3  # kept
        warned = [line for line in capsys.readouterr().err.splitlines() if "OMP_NUM_THREADS" in line]
        assert warned == ["bafusion train: warning: OMP_NUM_THREADS=3 gives torch 3 CPU thread(s), more than the 1 "
                          "core(s) this process may use (the affinity mask and the CPU quota 1.5): kept as set, but "
                          "the threads past them are throttled; unset OMP_NUM_THREADS (train.threads 0 then takes "
                          "the cores) or set train.threads"], warned
        monkeypatch.setattr(bafusion.threads, "available_cores", lambda: 3)
        train("initial", h5, cfg, _paths(tmp_path / "fits", "initial"), progress=False)
        assert "OMP_NUM_THREADS" not in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


def test_runs_of_other_seeds_are_validated_on_the_same_val_samples(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``train.val_samples``' subset was drawn from ``seed + 1``, so the members of an ensemble
    (``train --seed N``) were each validated on other patches: their val_acc, which picks the
    epoch kept, could not be compared. It is drawn from ``train.val_seed`` (1): the same
    patches for every seed, seed 0's subset as before (0 + 1); another val_seed, another subset."""
    import bafusion.nets.train as train_module
    from bafusion.nets.augment import load_split

    seen: list[torch.Tensor] = []
    evaluate = train_module.evaluate

    def watched(model: object, loader: object, *args: object, **kwargs: object) -> object:
        seen.append(loader.data.x.clone())  # type: ignore[attr-defined]
        return evaluate(model, loader, *args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", watched)
    h5 = write_toy_patches(tmp_path / "patches.h5", n_train=48, n_val=64, patch=16, seed=3)

    def validated(seed: int, **keys: object) -> torch.Tensor:
        seen.clear()
        params = {**TOY, "seed": seed, "train": {**TOY["train"], "epochs": 1, "milestones": [], "samples_per_epoch": 32,
                                                 "val_samples": 16, **keys}}
        train("initial", h5, resolve_config(params, "initial"), _paths(tmp_path / f"run{seed}-{len(keys)}", "initial"),
              progress=False)
        return seen[0]

    zero, five, other = validated(0), validated(5), validated(0, val_seed=7)
    assert zero.shape[0] == 16 and torch.equal(zero, five)
    assert not torch.equal(zero, other)
    whole = load_split(h5, "val", torch.device("cpu"))
    before = torch.randperm(64, generator=torch.Generator().manual_seed(0 + 1))[:16].sort().values
    assert torch.equal(zero, whole.x[before])  # seed 0: the subset seed + 1 drew


def test_a_terminals_epoch_bar_says_the_whole_trainings_time_left(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal the epoch's tqdm bar said only the epoch's time left (the epoch line says
    the whole training's). It now ends with ``training: about H:MM:SS left``: the epoch's
    remaining steps at the bar's rate, then the later epochs at the mean wall time of those
    ended (26 s: 24 one-second steps and a two-second validation), or, in the first epoch, at
    its steps' time (24 s). A clock that moves one second a step, for the training and tqdm
    alike, makes each redraw's figure exact. A log's plain lines are not changed (the test
    above and tests/test_progress_log.py)."""
    import re

    import tqdm.std

    from bafusion import progress

    clock = _fake_train_clock(monkeypatch)
    monkeypatch.setattr(tqdm.std, "time", lambda: clock[0])
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: True)
    h5 = write_toy_patches(tmp_path / "patches.h5", n_train=192, n_val=96, patch=16, seed=1)
    cfg = resolve_config({**TOY, "train": {**TOY["train"], "epochs": 3}}, "initial")
    train("initial", h5, cfg, _paths(tmp_path / "run", "initial"), progress=True)
    err = capsys.readouterr().err
    draws = re.findall(r"initial epoch (\d)/3:.*?\| (\d+)/24 \[[^]]*training: about (\d+):(\d\d):(\d\d) left\]", err)
    seen: dict[int, int] = {}
    for epoch, n, h, m, sec in draws:
        e, done, left = int(epoch), int(n), int(h) * 3600 + int(m) * 60 + int(sec)
        after = 3 - e  # epochs after this one
        assert left == 24 - done + after * (24 if e == 1 else 26), (epoch, n, left)
        seen[e] = seen.get(e, 0) + 1
    assert sorted(seen) == [1, 2, 3], err  # each epoch's bar said it at least once
    # the epoch line is unchanged
    assert "1/3 epochs, 0:00:26 elapsed, about 0:00:52 left" in err


def test_a_resumed_epoch_reports_the_time_and_rate_of_its_samples(toy_run: dict, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed at step 34 in epoch 2 (24 steps an epoch), resumed from the checkpoint at step 30:
    the resumed epoch counts all its 384 samples (6 steps before the checkpoint, 18 after the
    resume), so its time is the 6 steps' (last.pt's partial_time) plus the 18 resumed ones, not
    the 18 alone (which would make its samples/s 24/18 times too high); and the run's
    train_time_s includes epoch 1 (last.pt's train_time). The steps after the checkpoint that
    the kill lost (31 to 34) trained nothing kept and count in neither. A clock that moves one
    second a training step (and never otherwise) makes the figures exact. Mutation testing
    reported the elapsed-time restores as untested; dropping either one fails this test."""

    from mlflow.tracking import MlflowClient

    from bafusion.tracking import EXPERIMENT

    clock = _fake_train_clock(monkeypatch, validation_s=None)
    monkeypatch.delenv("BAFUSION_MLFLOW", raising=False)
    # a seed of its own tells its runs from other tests' in the session's MLflow db
    cfg = resolve_config({**TOY, "seed": 4343}, "initial")
    cfg.checkpoint_every = 10
    paths = _paths(tmp_path, "initial")
    monkeypatch.setenv(ABORT_ENV, "34")
    with pytest.raises(KeyboardInterrupt):
        train("initial", toy_run["h5"], cfg, paths, progress=False)
    ck = load_checkpoint(paths.checkpoints / "last.pt")
    assert (ck["epoch"], ck["global_step"], ck["partial_time"], ck["train_time"]) == (1, 30, 6.0, 24.0)
    monkeypatch.delenv(ABORT_ENV)
    capsys.readouterr()
    train("initial", toy_run["h5"], cfg, paths, progress=False)
    assert clock[0] == 34 + 18
    err = capsys.readouterr().err
    assert "epoch 2/2 lr" in err and "| 16.0 samples/s, 24.0 s" in err, err
    assert "768 samples in 48.0 s" in err, err
    got = load_checkpoint(paths.checkpoints / "last.pt")
    assert [(r["epoch_time_s"], r["samples_per_s"]) for r in got["history"]] == [(24.0, 16.0), (24.0, 16.0)]
    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(EXPERIMENT)
    (resumed,) = [r for r in client.search_runs([exp.experiment_id])
                  if r.data.params.get("seed") == "4343" and r.data.tags.get("resumed_from") != "none"]
    for key in ("epoch_time_s", "samples_per_s"):
        hist = {m.step: m.value for m in client.get_metric_history(resumed.info.run_id, f"epoch/{key}")}
        assert hist == ({1: 24.0, 2: 24.0} if key == "epoch_time_s" else {1: 16.0, 2: 16.0}), key
    assert resumed.data.metrics["train_time_s"] == 48.0
    assert resumed.data.metrics["samples_per_s_overall"] == 16.0


def test_changed_parameters_start_afresh(toy_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    cfg = resolve_config({**TOY, "train": {**TOY["train"], "epochs": 1, "samples_per_epoch": 64}}, "initial")
    paths = _paths(tmp_path, "initial")
    train("initial", toy_run["h5"], cfg, paths, progress=False)
    assert "starting afresh" not in capsys.readouterr().err
    cfg.lr = 0.02
    train("initial", toy_run["h5"], cfg, paths, progress=False, replace_stale=True)
    err = capsys.readouterr().err
    # says what changed, not only that something did
    assert "other parameters or another patch set (train.lr 0.01 -> 0.02); starting afresh" in err, err
    # another patch set, same parameters: named as such
    other = tmp_path / "other.h5"
    shutil.copy(toy_run["h5"], other)
    with h5py.File(other, "r+") as f:
        f["train"]["y"][0] = 1 - f["train"]["y"][0]
        f["train"]["y_block"][0] = 1 - f["train"]["y_block"][0]  # the same pixel's label, kept consistent
    train("initial", other, cfg, paths, progress=False, replace_stale=True)
    err = capsys.readouterr().err
    assert "other parameters or another patch set (the patch set); starting afresh" in err, err
    assert load_checkpoint(paths.checkpoints / "last.pt")["config"]["lr"] == 0.02


def test_a_batch_larger_than_an_epoch_is_warned_once(toy_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """train.batch 100000 on 64 samples per epoch trained one step of 64 per epoch, silently."""
    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    cfg = resolve_config({**TOY, "train": {**TOY["train"], "epochs": 2, "samples_per_epoch": 64, "batch": 100000}},
                         "initial")
    train("initial", toy_run["h5"], cfg, _paths(tmp_path, "initial"), progress=False)
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert err == ["bafusion train: warning: initial: train.batch 100000 is more than the 64 samples of an epoch "
                   "(train.samples_per_epoch 64): each epoch is one step of 64 (the batch is capped at the samples "
                   "per epoch)"], err
    cfg = resolve_config({**TOY, "train": {**TOY["train"], "epochs": 1, "samples_per_epoch": 64}}, "initial")
    train("initial", toy_run["h5"], cfg, _paths(tmp_path / "b", "initial"), progress=False)
    assert "warning" not in capsys.readouterr().err


def test_the_batch_warning_blames_samples_per_epoch_only_where_it_sets_the_epoch() -> None:
    """With train.samples_per_epoch 0 on 5 processes, 7 patches x 12 = 84 samples are trimmed to
    80 an epoch: the warning blamed train.samples_per_epoch, which was not set."""
    from bafusion.nets.train import _batch_over_epoch

    def why(*args: int) -> str | None:
        line = _batch_over_epoch("initial", *args)
        return line and line.split("(", 1)[1].split(")", 1)[0]

    assert why(100, 80, 7, 0, 5) == "7 train patches x 12, trimmed to a multiple of the 5 processes"
    assert why(100, 84, 7, 0, 1) == "7 train patches x 12"
    assert why(100, 84, 7, 500, 1) == "7 train patches x 12"  # more than the split: the split is the epoch
    assert why(100, 64, 7, 64, 1) == "train.samples_per_epoch 64"
    assert why(100, 63, 7, 65, 3) == "train.samples_per_epoch 65, trimmed to a multiple of the 3 processes"
    assert why(64, 64, 7, 64, 1) is None


def test_a_checkpoint_of_other_parameters_is_refused_not_replaced(toy_run: dict, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A training run by hand with other parameters on a checkpoint folder in use (the
    pipeline's data/checkpoints/<net>) replaced its resume state, saying only "starting
    afresh". It is refused, naming the folder and the ways out; --restart-if-changed (what the
    pipeline's rules pass, so that a parameter edit retrains) and --no-resume replace it."""
    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    monkeypatch.chdir(tmp_path)
    ck = tmp_path / "ck"
    cfg = resolve_config({**TOY, "train": {**TOY["train"], "checkpoint_every": 5}}, "initial")
    monkeypatch.setenv(ABORT_ENV, "6")  # an interrupted run: its last.pt is resume state
    with pytest.raises(KeyboardInterrupt):
        train("initial", toy_run["h5"], cfg, Paths(out=tmp_path / "initial.pt", checkpoints=ck,
                                                  metrics=tmp_path / "m.json", plots=tmp_path / "p.csv"),
              progress=False)
    monkeypatch.delenv(ABORT_ENV)
    before = (ck / "last.pt").read_bytes()
    capsys.readouterr()
    params = {**TOY, "train": {**TOY["train"], "epochs": 1, "samples_per_epoch": 64, "lr": 0.02}}
    argv = ["train", "--net", "initial", "--patches", str(toy_run["h5"]), "--out", str(tmp_path / "m.pt"),
            "--params-json", json.dumps(params), "--checkpoints", str(ck), "--no-progress"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert (f"{ck}: its last.pt was written for other parameters or another patch set (train.epochs 2 -> 1, "
            "train.lr 0.01 -> 0.02, train.samples_per_epoch 384 -> 64): pass --checkpoints DIR "
            "for a separate training, or --no-resume (or --restart-if-changed) to replace it") in err, err
    assert "Traceback" not in err and (ck / "last.pt").read_bytes() == before and not (tmp_path / "m.pt").exists()
    assert cli.main([*argv, "--restart-if-changed"]) == 0
    assert "starting afresh" in capsys.readouterr().err
    assert load_checkpoint(ck / "last.pt")["config"]["lr"] == 0.02
    # the checkpoint of a finished run holds nothing to resume: trained over, as before
    params["train"]["lr"] = 0.03
    assert cli.main(argv[:-5] + ["--params-json", json.dumps(params), "--checkpoints", str(ck), "--no-progress"]) == 0
    assert "other parameters or another patch set (train.lr 0.02 -> 0.03); starting afresh" in capsys.readouterr().err


def test_a_checkpoint_of_other_training_code_is_refused_as_such(toy_run: dict, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """After an upgrade an interrupted training was refused (in the pipeline: thrown away) "for
    other parameters" naming ``train.bn_recalibrate (unset) -> 0``, a key the old version did
    not have, at the value that trains as before: no parameter the user changed. The training
    code is what changed (it is in the fingerprint on purpose: still refused / started afresh):
    the message now says so, for a checkpoint that records the code's digest and for an older
    one that lacks a key at its default."""
    from bafusion.nets.train import save_checkpoint, training_code_digest

    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    monkeypatch.chdir(tmp_path)
    ck = tmp_path / "ck"
    cfg = resolve_config({**TOY, "train": {**TOY["train"], "checkpoint_every": 5}}, "initial")
    monkeypatch.setenv(ABORT_ENV, "6")  # an interrupted run: its last.pt is resume state
    with pytest.raises(KeyboardInterrupt):
        train("initial", toy_run["h5"], cfg, Paths(out=tmp_path / "initial.pt", checkpoints=ck,
                                                  metrics=tmp_path / "m.json", plots=tmp_path / "p.csv"),
              progress=False)
    monkeypatch.delenv(ABORT_ENV)
    state = load_checkpoint(ck / "last.pt")
    assert state["code_digest"] == training_code_digest()
    params = {**TOY, "train": {**TOY["train"], "checkpoint_every": 5}}
    argv = ["train", "--net", "initial", "--patches", str(toy_run["h5"]), "--out", str(tmp_path / "m.pt"),
            "--params-json", json.dumps(params), "--checkpoints", str(ck), "--no-progress"]
    said = (f"{ck}: its last.pt was written by other training code (the training code changed since this "
            "checkpoint was written: bafusion was upgraded or edited, and a checkpoint is resumed only by the code "
            "that wrote it): pass --checkpoints DIR for a separate training, or --no-resume (or "
            "--restart-if-changed) to replace it")
    older = {k: v for k, v in state["config"].items() if k != "bn_recalibrate"}  # a version before the key
    for edit in ({"code_digest": "0" * 64},  # this version's checkpoint, written by other code
                 {"config": older, "code_digest": None}):  # an earlier version's: no digest, no key
        old = {**state, "fingerprint": "1" * 64, **edit}
        save_checkpoint(ck / "last.pt", {k: v for k, v in old.items() if v is not None})
        before = (ck / "last.pt").read_bytes()
        capsys.readouterr()
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert said in err and "(unset)" not in err and "other parameters" not in err, err
        assert (ck / "last.pt").read_bytes() == before and not (tmp_path / "m.pt").exists()
    # as the pipeline runs it: replaced, saying why
    assert cli.main([*argv, "--restart-if-changed"]) == 0
    err = capsys.readouterr().err
    assert (f"bafusion train: {ck / 'last.pt'} was written by other training code (the training code changed since "
            "this checkpoint was written: bafusion was upgraded or edited, and a checkpoint is resumed only by the "
            "code that wrote it); starting afresh") in err, err
    assert "(unset)" not in err


def test_what_changed_names_a_new_key_only_away_from_its_default() -> None:
    """A key the checkpoint does not record (a version before it) at its default in this run is
    other code, not a parameter change; set to something else it is a parameter change."""
    from bafusion.nets.train import CODE_CHANGED, _what_changed

    cfg = resolve_config(TOY, "initial")
    old = {k: v for k, v in cfg.to_dict().items() if k != "bn_recalibrate"}
    ck = {"config": old, "net": "initial", "patches_digest": "d"}
    assert cfg.bn_recalibrate == 0
    assert _what_changed(ck, cfg, "initial", "d") == CODE_CHANGED
    assert _what_changed(ck, cfg, "initial", "e") == f"the patch set, {CODE_CHANGED}"
    on = resolve_config({**TOY, "train": {**TOY["train"], "bn_recalibrate": 512}}, "initial")
    assert _what_changed(ck, on, "initial", "d") == "train.bn_recalibrate (unset) -> 512"
    # a recorded digest decides: the same code, other parameters; other code, said as well
    this = {"config": cfg.to_dict(), "net": "initial", "patches_digest": "d", "code_digest": "c"}
    assert _what_changed(this, cfg, "initial", "d", code="c") == "the run's fingerprint"
    assert _what_changed(this, cfg, "initial", "d", code="x") == CODE_CHANGED
    lr = resolve_config({**TOY, "train": {**TOY["train"], "lr": 0.02}}, "initial")
    assert _what_changed(this, lr, "initial", "d", code="c") == "train.lr 0.01 -> 0.02"
    assert _what_changed(this, lr, "initial", "d", code="x") == f"train.lr 0.01 -> 0.02, {CODE_CHANGED}"


def test_a_hand_run_beside_a_pipeline_keeps_to_its_own_out(toy_run: dict, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Run by hand in a pipeline project with --out elsewhere, the training wrote its checkpoints
    into the pipeline's data/checkpoints/<net> and its metrics over the git-tracked
    metrics/train_<net>.json and metrics/plots/train_<net>.csv. Now they go beside --out; with
    --out data/models/<net>.pt (the pipeline's model) the defaults stay the pipeline's."""
    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    monkeypatch.chdir(tmp_path)
    shutil.copytree(toy_run["paths"].checkpoints, tmp_path / "data" / "checkpoints" / "initial")
    (tmp_path / "metrics" / "plots").mkdir(parents=True)
    (tmp_path / "metrics" / "train_initial.json").write_text("{}\n")
    (tmp_path / "metrics" / "plots" / "train_initial.csv").write_text("epoch\n")
    pipeline = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    params = {**TOY, "train": {**TOY["train"], "epochs": 1, "samples_per_epoch": 64, "lr": 0.02}}
    assert cli.main(["train", "--net", "initial", "--patches", str(toy_run["h5"]), "--out", "mine/try.pt",
                     "--params-json", json.dumps(params), "--no-progress"]) == 0
    assert {p: p.read_bytes() for p in pipeline} == pipeline
    assert (tmp_path / "mine" / "try.checkpoints" / "last.pt").is_file()
    assert json.loads((tmp_path / "mine" / "try.metrics.json").read_text())["epochs"] == 1
    assert (tmp_path / "mine" / "try.epochs.csv").read_text().startswith("epoch")
    from bafusion.nets.train import default_paths

    assert default_paths("boundary", "data/models/boundary.pt") == Paths(
        out=Path("data/models/boundary.pt"), checkpoints=Path("data/checkpoints/boundary"),
        metrics=Path("metrics/train_boundary.json"), plots=Path("metrics/plots/train_boundary.csv"))
    assert default_paths("initial", tmp_path / "data" / "models" / "initial.pt").checkpoints == Path("data/checkpoints/initial")


def test_boundary_net_trains_on_the_boundary_set_via_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    h5 = write_toy_patches(tmp_path / "boundary.h5", n_train=16, n_val=8, patch=16, seed=3, kind="boundary")
    out = tmp_path / "models" / "boundary.pt"
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(TOY))  # JSON is YAML
    rc = cli.main(["train", "--net", "boundary", "--patches", str(h5), "--out", str(out), "--params", str(params),
                   "--set", "train.epochs=1", "--set", "train.samples_per_epoch=0",
                   "--checkpoints", str(tmp_path / "ck"), "--metrics", str(tmp_path / "m.json"),
                   "--plots", str(tmp_path / "p.csv"), "--no-progress"])
    assert rc == 0
    _, meta = load_model(out)
    assert meta["net"] == "boundary" and meta["samples_seen"] == 16 * 12  # the whole boundary set, x12
    assert json.loads((tmp_path / "m.json").read_text())["train_patches"] == 16
    out, err = capsys.readouterr()
    # was "best val acc 0.8333333333333334"; on stderr, where no `out=$(bafusion train ...)` saw it
    # a result, for the program that reads it: as it is off a terminal (here) too, unstamped
    assert re.fullmatch(r"boundary: best val acc \d\.\d{4} at epoch \d+, model \S+boundary\.pt\n", out), out
    assert ", model " not in err


@pytest.mark.parametrize("keep", ["best", "last"])
def test_train_result_line_words_the_saved_epoch_as_the_end_of_run_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], keep: str) -> None:
    """With keep last, the end-of-run line said "val acc 0.7000 at the last epoch (3, train.keep:
    last); best val acc 0.9000 at epoch 1" and the result line "val acc 0.7000 at the last epoch 3
    (train.keep: last; best 0.9000 at epoch 1)"; with keep best "(epoch 1)" and "at epoch 1": the
    same fact in two wordings. Both now say it in the same words."""
    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    h5 = write_toy_patches(tmp_path / "initial.h5", n_train=12, n_val=6, patch=16, seed=1)
    out = tmp_path / "m.pt"
    params = {**TOY, "train": {**TOY["train"], "samples_per_epoch": 32, "keep": keep}}
    rc = cli.main(["train", "--net", "initial", "--patches", str(h5), "--out", str(out),
                   "--params-json", json.dumps(params), "--no-progress"])
    assert rc == 0
    stdout, err = capsys.readouterr()
    summary = json.loads((tmp_path / "m.metrics.json").read_text())
    words = (f"best val acc {summary['val_acc']:.4f} at epoch {summary['saved_epoch']}" if keep == "best" else
             f"val acc {summary['val_acc']:.4f} at epoch 2, the last (train.keep: last; best val acc "
             f"{summary['best_val_acc']:.4f} at epoch {summary['best_epoch']})")
    assert stdout == f"initial: {words}, model {out}\n", stdout
    assert _unstamped(err)[-1].endswith(f" s, {words}"), err


def _empty_boundary(path: Path) -> Path:
    write_toy_patches(path, n_train=4, n_val=2, patch=16, kind="boundary")
    with h5py.File(path, "a") as f:
        del f["train"]
        g = f.create_group("train")
        g.create_dataset("x", shape=(0, 2, 16, 16), dtype=np.uint8)
        g.create_dataset("y", shape=(0,), dtype=np.uint8)
        g.create_dataset("pair", shape=(0,), dtype=np.int64)
        g.create_dataset("centre", shape=(0, 2), dtype=np.int32)
    return path


def test_bad_inputs_give_clear_errors(tmp_path: Path, toy_run: dict, capsys: pytest.CaptureFixture) -> None:
    cfg = resolve_config(TOY, "boundary")
    paths = _paths(tmp_path, "boundary")
    empty = _empty_boundary(tmp_path / "empty_boundary.h5")
    with pytest.raises(InputFileError, match=r"empty_boundary\.h5.*train split is empty"):
        train("boundary", empty, cfg, paths, progress=False)
    with pytest.raises(InputFileError, match=r"initial\.h5.*is a 'initial' patch set, expected 'boundary'"):
        train("boundary", toy_run["h5"], cfg, paths, progress=False)
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"\x89HDF\r\n" + b"garbage" * 50)
    rc = cli.main(["train", "--net", "initial", "--patches", str(corrupt), "--out", str(tmp_path / "x.pt"),
                   "--params-json", json.dumps(TOY), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "corrupt.h5" in err and "HDF5" in err
    rc = cli.main(["train", "--net", "initial", "--patches", str(tmp_path / "missing.h5"),
                   "--out", str(tmp_path / "x.pt"), "--params-json", json.dumps(TOY)])
    assert rc == 2 and "missing.h5: patch set not found" in capsys.readouterr().err
    with pytest.raises(ModelFileError, match=r"initial\.pt.*does not match"):
        load_model(toy_run["paths"].out, expect=ResNetSpec(depth=20))
    with pytest.raises(UserError, match=r"unknown key train\.epoch "):
        resolve_config({"train": {"epoch": 3}}, "initial")
    with pytest.raises(UserError, match="6n\\+2"):
        resolve_config({"depth": 10}, "initial")
    assert not paths.out.exists()


def test_model_file_problems_found_by_the_probe_are_one_line(tmp_path: Path, toy_run: dict,
                                                             capsys: pytest.CaptureFixture) -> None:
    # --out X.json: the description overwrote the weights (exit 0); an 'arch' that is no mapping
    # and a non-numeric input_scale were internal errors; --nproc 3 with batch 32 failed only in
    # torchrun's children (three messages and a ChildFailedError traceback, exit 1)
    base = ["train", "--net", "initial", "--patches", str(toy_run["h5"]), "--params-json", json.dumps(TOY),
            "--no-progress", "--metrics", str(tmp_path / "m" / "t.json"), "--plots", str(tmp_path / "m" / "t.csv"),
            "--checkpoints", str(tmp_path / "ck")]
    assert cli.main([*base, "--out", str(tmp_path / "m.json")]) == 2
    assert "give the model file a .pt suffix" in capsys.readouterr().err and not (tmp_path / "m.json").exists()
    with pytest.raises(UserError, match="suffix other than .json"):
        save_model(build_model(8), tmp_path / "n.json")
    assert cli.main([*base, "--out", str(tmp_path / "p.pt"), "--nproc", "3", "--set", "train.batch=32"]) == 2
    err = capsys.readouterr().err
    assert err.count("train.batch: 32 is not divisible by --nproc: 3 (the global batch is split evenly over the "
                     "training processes)") == 1 and "Traceback" not in err
    src = toy_run["paths"].out
    for i, arch in enumerate(["cifar_resnet", None, [1, 2]]):
        bad = tmp_path / f"bad{i}.pt"
        shutil.copy(src, bad)
        meta = json.loads(src.with_suffix(".json").read_text())
        meta["arch"] = arch
        bad.with_suffix(".json").write_text(json.dumps(meta))
        with pytest.raises(ModelFileError, match=f"bad{i}.json: 'arch' is"):
            load_model(bad)
    whole = tmp_path / "whole.pt"
    shutil.copy(src, whole)
    whole.with_suffix(".json").write_text(json.dumps("the arch"))
    with pytest.raises(ModelFileError, match="not a bafusion model description"):
        load_model(whole)
    from bafusion.fusion.models import _load_one

    scaled = tmp_path / "scaled.pt"
    shutil.copy(src, scaled)
    meta = json.loads(src.with_suffix(".json").read_text())
    meta["input_scale"] = "abc"
    scaled.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="input_scale 'abc' differs"):
        _load_one(scaled, torch.device("cpu"))


def test_per_net_overrides() -> None:
    params = {"depth": 8, "train": {"epochs": 5, "boundary": {"epochs": 2, "lr": 0.1}}}
    assert resolve_config(params, "initial").epochs == 5
    b = resolve_config(params, "boundary")
    assert (b.epochs, b.lr, b.depth) == (2, 0.1, 8)
    assert isinstance(b, TrainConfig)


def _two_process_train(toy_run: dict, tmp_path: Path, params: dict) -> tuple[list[str], dict[str, str], Path]:
    """The command that trains the initial net on ``toy_run``'s patches with ``params`` in two
    DDP processes on the CPU (``--nproc 2``, one thread each; checkpoints, metrics and plots in
    ``tmp_path``), its environment (MLflow off) and the model file it writes."""
    out = tmp_path / "initial.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BAFUSION_MLFLOW": "0"}
    cmd = [sys.executable, "-m", "bafusion.cli", "train", "--net", "initial", "--patches", str(toy_run["h5"]),
           "--out", str(out), "--params-json", json.dumps(params), "--nproc", "2", "--threads", "1",
           "--checkpoints", str(tmp_path / "ck"), "--metrics", str(tmp_path / "m.json"),
           "--plots", str(tmp_path / "p.csv"), "--no-progress"]
    return cmd, env, out


def test_two_process_ddp_on_cpu(toy_run: dict, tmp_path: Path) -> None:
    """``--nproc 2`` re-launches itself under torchrun: 2 processes, gloo, global batch split."""
    cmd, env, out = _two_process_train(toy_run, tmp_path, TOY)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["world_size"] == 2 and m["samples_seen"] == 2 * 384
    assert m["val_acc"] > 0.8 and m["val_patches"] == 96
    _, meta = load_model(out)
    assert meta["world_size"] == 2
    # killed after it finished, its model deleted: both processes agree to restore it, no epoch
    want = out.read_bytes(), out.with_suffix(".json").read_bytes()
    out.unlink()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "was restored" in res.stderr and "epoch 1/2" not in res.stderr, res.stderr[-3000:]
    assert (out.read_bytes(), out.with_suffix(".json").read_bytes()) == want


def test_warm_start_from_a_model_file(toy_run: dict, tmp_path: Path) -> None:
    """train.init loads a model's weights before training; with a vanishing learning rate the
    trained conv weights stay those of the init model. A model of another depth is refused
    with the file named."""
    init = toy_run["paths"].out
    params = {**TOY, "train": {**TOY["train"], "epochs": 1, "milestones": [], "samples_per_epoch": 64,
                               "lr": 1e-12, "init": str(init)}}
    cfg = resolve_config(params, "initial")
    paths = _paths(tmp_path, "initial")
    warm = train("initial", toy_run["h5"], cfg, paths, progress=False)
    assert warm["val_acc"] > 0.9
    start, _ = load_model(init)
    got, meta = load_model(paths.out)
    assert meta["params"]["init"] == str(init)
    for (k, a), (_, b) in zip(start.state_dict().items(), got.state_dict().items()):
        if k.endswith("weight") and a.dim() == 4:
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    fresh = train("initial", toy_run["h5"], resolve_config({**params, "train": {**params["train"], "init": ""}},
                                                           "initial"), _paths(tmp_path / "fresh", "initial"),
                  progress=False)
    assert fresh["val_acc"] < 0.9  # one tiny-lr epoch from scratch learns nothing: the init mattered
    other = resolve_config({**params, "depth": 14}, "initial")
    with pytest.raises(UserError, match=str(init)):
        train("initial", toy_run["h5"], other, _paths(tmp_path / "other", "initial"), progress=False)


def test_a_warm_start_of_another_depth_fails_the_params_check(tmp_path: Path) -> None:
    """``depth: 8`` with ``train.init`` a ResNet-20 passed ``snakemake -n``; the train job
    refused it ("architecture ... does not match the expected") only once running, after
    prepare, composite and patches. The params check reads the model's .json (no torch)."""
    from bafusion.cli.params_check import check_init_files

    model = tmp_path / "m.pt"
    model.write_bytes(b"weights")
    model.with_suffix(".json").write_text(json.dumps({"arch": {"arch": "cifar_resnet", "depth": 20}}))
    check_init_files({"depth": 20, "train": {"init": str(model)}})
    check_init_files({"train": {"init": str(model)}})  # no depth given: left to the job
    with pytest.raises(UserError) as e:
        check_init_files({"depth": 8, "train": {"boundary": {"init": str(model)}}}, "p.yaml")
    assert str(e.value) == (f"p.yaml: train.boundary.init {model}: a net of depth 20 (its .json), not of depth: 8 "
                            "(a warm start is a model of the same depth)")
    model.with_suffix(".json").write_text("{not json")
    check_init_files({"depth": 8, "train": {"init": str(model)}})  # unreadable: the job says what is wrong


def test_a_warm_start_model_given_with_a_tilde_is_the_home_folders(toy_run: dict, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """train.init: ~/m.pt was refused by the params check ("model file not found") and opened as
    ./~/m.pt by the trainer; it is the home folder's file (the path is recorded as written)."""
    from bafusion.cli.params_check import check_init_files

    home = tmp_path / "home"
    home.mkdir()
    for suffix in (".pt", ".json"):
        shutil.copyfile(toy_run["paths"].out.with_suffix(suffix), home / f"m{suffix}")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    params = {**TOY, "train": {**TOY["train"], "epochs": 1, "milestones": [], "samples_per_epoch": 64,
                               "lr": 1e-12, "init": "~/m.pt"}}
    check_init_files({"train": {"init": "~/m.pt"}})  # no error
    with pytest.raises(UserError, match=r"train.init ~/gone.pt: model file not found"):
        check_init_files({"train": {"init": "~/gone.pt"}})
    paths = _paths(tmp_path / "warm", "initial")
    train("initial", toy_run["h5"], resolve_config(params, "initial"), paths, progress=False)
    start, _ = load_model(home / "m.pt")
    got, meta = load_model(paths.out)
    assert meta["params"]["init"] == "~/m.pt"
    for (k, a), (_, b) in zip(start.state_dict().items(), got.state_dict().items()):
        if k.endswith("weight") and a.dim() == 4:
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert not (tmp_path / "~").exists()


def test_warm_start_model_is_never_overwritten(toy_run: dict, tmp_path: Path) -> None:
    """train.init is an input: an --out, --metrics or --plots that would replace the warm-start
    model or its .json is refused before any work, with both files left as they were."""
    init = tmp_path / "init" / "initial.pt"
    init.parent.mkdir()
    shutil.copy2(toy_run["paths"].out, init)
    shutil.copy2(toy_run["paths"].out.with_suffix(".json"), init.with_suffix(".json"))
    before = {p: p.read_bytes() for p in (init, init.with_suffix(".json"))}
    params = {**TOY, "train": {**TOY["train"], "init": str(init)}}
    cfg = resolve_config(params, "initial")
    base = _paths(tmp_path / "run", "initial")
    for flag, paths in (("--out", dataclasses.replace(base, out=init)),
                        ("--out", dataclasses.replace(base, out=init.with_suffix(".json"))),
                        ("--report/--metrics", dataclasses.replace(base, metrics=init.with_suffix(".json"))),
                        ("--plots", dataclasses.replace(base, plots=init))):
        with pytest.raises(UserError, match=f"{flag} .*would overwrite the warm-start model"):
            train("initial", toy_run["h5"], cfg, paths, progress=False)
    assert {p: p.read_bytes() for p in before} == before
    assert not base.checkpoints.exists() and not base.metrics.exists()


def test_context_consistency_training(toy_run: dict, tmp_path: Path) -> None:
    """On patches stored with surroundings (patches.context), train.consistency trains the
    isolated patch and the patch in context to agree: both views are validated and the model
    description records the context."""
    h5 = write_toy_patches(tmp_path / "ctx" / "initial.h5", n_train=192, n_val=96, patch=16, seed=1, context=8)
    params = {**TOY, "train": {**TOY["train"], "consistency": 1.0}}
    paths = _paths(tmp_path, "initial")
    s = train("initial", h5, resolve_config(params, "initial"), paths, progress=False)
    assert s["val_acc"] > 0.9 and s["val_acc_context"] > 0.9 and s["val_view_agreement"] > 0.9
    _, meta = load_model(paths.out)
    assert meta["context"] == 8 and meta["patch"] == 16 and meta["params"]["consistency"] == 1.0
    header = paths.plots.read_text().splitlines()[0]
    assert header.endswith("samples_seen,val_acc_context,val_view_agreement")
    # the in-context view is what fusion's dense pass computes: it matches the validated
    # in-context accuracy on the validation crops' central pixels
    net, _ = load_model(paths.out)
    with h5py.File(h5, "r") as f:
        x = torch.from_numpy(f["val"]["x"][...]).float() / 255
        y = torch.from_numpy(f["val"]["y"][...]).long()
    with torch.no_grad():
        both = net(x, 8)
    acc_ctx = float((both[len(y):].argmax(1) == y).float().mean())
    assert acc_ctx == pytest.approx(s["val_acc_context"], abs=1e-6)
    # consistency without surroundings in the patch set is refused, naming the file
    with pytest.raises(UserError, match=r"initial\.h5.*patches\.context"):
        train("initial", toy_run["h5"], resolve_config(params, "initial"), _paths(tmp_path / "no", "initial"),
              progress=False)
    with pytest.raises(UserError, match="consistency"):
        resolve_config({"train": {"consistency": -1}}, "initial")


def test_killed_while_logging_the_finished_run_resumes_without_training(
        toy_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpoint was marked finished before MLflow logged the outputs: a kill in those
    seconds (Snakemake then deletes the model) made the retry train from scratch."""
    from bafusion import tracking

    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    cfg = resolve_config({**TOY, "train": {**TOY["train"], "epochs": 1, "samples_per_epoch": 64}}, "initial")
    paths = _paths(tmp_path, "initial")

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(tracking._NullRun, "log_artifact", killed)
    with pytest.raises(KeyboardInterrupt):
        train("initial", toy_run["h5"], cfg, paths, progress=False)
    assert not load_checkpoint(paths.checkpoints / "last.pt").get("finished")
    monkeypatch.undo()
    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    paths.out.unlink()  # Snakemake deletes the outputs of a failed job
    capsys.readouterr()
    train("initial", toy_run["h5"], cfg, paths, progress=False)
    err = capsys.readouterr().err
    assert "training from scratch" not in err and "initial epoch 1/1" not in err, err
    assert paths.out.is_file() and load_checkpoint(paths.checkpoints / "last.pt")["finished"]


def test_rerun_of_a_finished_run_with_its_outputs_trains_from_scratch(toy_run: dict, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished checkpoint belongs to the run that wrote its model: running the same training
    again by hand, its outputs all there, trains every epoch again and gets the same weights
    (seeded, CPU), instead of "resuming" a run that has nothing left to do."""
    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    cfg = resolve_config({**TOY, "train": {**TOY["train"], "epochs": 1, "samples_per_epoch": 64}}, "initial")
    paths = _paths(tmp_path, "initial")
    train("initial", toy_run["h5"], cfg, paths, progress=False)
    first = load_checkpoint(paths.checkpoints / "last.pt")
    assert first["finished"] and first["epoch"] == 1
    capsys.readouterr()
    summary = train("initial", toy_run["h5"], cfg, paths, progress=False)
    err = capsys.readouterr().err
    assert "belongs to a finished run" in err and "training from scratch" in err and "resuming" not in err
    assert "initial epoch 1/1" in err and "restored" not in err  # the epoch really ran
    again = load_checkpoint(paths.checkpoints / "last.pt")
    assert again["samples_seen"] == first["samples_seen"] == summary["samples_seen"] == 64
    for k in first["model"]:
        assert torch.equal(first["model"][k], again["model"][k]), k


def _outputs(paths: Paths) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (paths.out, paths.out.with_suffix(".json"), paths.metrics, paths.plots)}


@pytest.mark.parametrize("damage", ["deleted", "model truncated"])
def test_a_finished_run_killed_before_its_exit_is_restored_without_training(
        toy_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
        damage: str) -> None:
    """Killed in the seconds after it marked last.pt finished (MLflow's end, the interpreter's
    exit), the job failed, Snakemake deleted its outputs, and the retry said "belongs to a
    finished run; training from scratch" and trained everything again (hours). The retry of
    the same training writes that run's outputs again from last.pt, byte for byte, without
    running an epoch, and says so; its MLflow run is FINISHED with the model logged."""
    from mlflow.tracking import MlflowClient

    from bafusion.tracking import EXPERIMENT

    monkeypatch.delenv("BAFUSION_MLFLOW", raising=False)
    # 2 epochs, the best one the 1st or the 2nd; a seed of its own tells its MLflow runs apart
    cfg = resolve_config({**TOY, "seed": 4343, "train": {**TOY["train"], "samples_per_epoch": 64}}, "initial")
    paths = _paths(tmp_path, "initial")
    train("initial", toy_run["h5"], cfg, paths, progress=False)
    first = load_checkpoint(paths.checkpoints / "last.pt")
    assert first["finished"]
    want = _outputs(paths)
    if damage == "deleted":  # as Snakemake and SLURM do with the outputs of a failed job
        for p in (paths.out, paths.out.with_suffix(".json"), paths.metrics, paths.plots):
            p.unlink()
    else:
        paths.out.write_bytes(want[paths.out.name][:100])
    capsys.readouterr()
    summary = train("initial", toy_run["h5"], cfg, paths, progress=False)
    err = capsys.readouterr().err
    assert "training from scratch" not in err and "epoch 1/2" not in err and "epoch 2/2" not in err, err
    line = (f"bafusion train: the model of the finished run in {paths.checkpoints / 'last.pt'} was restored to "
            f"{paths.out} (best val acc ")
    assert sum(x.startswith(line) for x in _unstamped(err)) == 1, err
    assert "no training needed" in err
    # snakemake -R and dvc repro -f restore too (they delete the outputs as after a kill): the
    # hint leads with what a pipeline user can do (it offered --no-resume first, an option the
    # training rules never pass)
    assert (f"(to train again, also under snakemake -R or dvc repro -f: delete {paths.checkpoints} first, or "
            "run by hand with --no-resume)") in err, err
    assert _outputs(paths) == want  # the same bytes as the uninterrupted run's
    assert summary["best_epoch"] == first["best_epoch"] and summary["samples_seen"] == first["samples_seen"]
    again = load_checkpoint(paths.checkpoints / "last.pt")
    assert again["finished"] and again["epoch"] == 2
    for k in first["best_model"]:
        assert torch.equal(first["best_model"][k], again["best_model"][k]), k
    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = [r for r in client.search_runs([exp.experiment_id])
            if r.data.params.get("patches") == str(toy_run["h5"]) and r.data.params.get("seed") == "4343"
            and r.info.run_id == again["mlflow_run_id"]]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["resumed_from"] == "finished run (model restored)"
    assert runs[0].data.tags["resumed_run_id"] == first["mlflow_run_id"]
    assert "best_val_acc" in runs[0].data.metrics
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id, "model")} >= {"model/initial.pt"}


def test_a_finished_run_of_other_parameters_without_outputs_trains_afresh(
        toy_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a finished run of the same fingerprint is restored: after a parameter edit (the
    outputs deleted, as Snakemake does) the new parameters are trained."""
    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    cfg = resolve_config({**TOY, "train": {**TOY["train"], "epochs": 1, "samples_per_epoch": 64}}, "initial")
    paths = _paths(tmp_path, "initial")
    train("initial", toy_run["h5"], cfg, paths, progress=False)
    paths.out.unlink()
    capsys.readouterr()
    train("initial", toy_run["h5"], dataclasses.replace(cfg, lr=0.005), paths, progress=False, replace_stale=True)
    err = capsys.readouterr().err
    assert "starting afresh" in err and "initial epoch 1/1" in err and "restored" not in err, err
    assert paths.out.is_file()


def test_a_finished_run_of_other_cpu_threads_without_outputs_trains_afresh(
        toy_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The thread count is outside the fingerprint but changes the weights on the CPU: after a
    finished run, train.threads edited (DVC and Snakemake then delete the outputs), the old
    model was restored and its .json said the new count, a record of a run that never was. It
    trains afresh, says why in one line, and records the count that trained it."""
    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    cfg = resolve_config({**TOY, "train": {**TOY["train"], "epochs": 1, "samples_per_epoch": 64}}, "initial")
    paths = _paths(tmp_path, "initial")
    train("initial", toy_run["h5"], cfg, paths, progress=False)
    assert load_checkpoint(paths.checkpoints / "last.pt")["threads"] == 1
    for p in (paths.out, paths.out.with_suffix(".json"), paths.metrics, paths.plots):
        p.unlink()
    capsys.readouterr()
    try:
        train("initial", toy_run["h5"], dataclasses.replace(cfg, threads=2), paths, progress=False)
    finally:
        torch.set_num_threads(1)
    err = capsys.readouterr().err
    assert (f"bafusion train: {paths.checkpoints / 'last.pt'} belongs to a finished run whose outputs are missing, "
            "but its model is not what this run trains (1 CPU thread(s) per process, now 2: that changes the "
            "weights); training from scratch instead of restoring it") in _unstamped(err), err
    assert "initial epoch 1/1" in err and "restored" not in err, err
    _, meta = load_model(paths.out)
    assert meta["params"]["threads"] == 2 and load_checkpoint(paths.checkpoints / "last.pt")["threads"] == 2


def _finished_toy_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      toy_run: dict) -> tuple[TrainConfig, Paths, Path]:
    """The toy initial net trained for one epoch of 64 samples (no MLflow): its config, paths and last.pt."""
    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    cfg = resolve_config({**TOY, "train": {**TOY["train"], "epochs": 1, "samples_per_epoch": 64}}, "initial")
    paths = _paths(tmp_path, "initial")
    train("initial", toy_run["h5"], cfg, paths, progress=False)
    return cfg, paths, paths.checkpoints / "last.pt"


@pytest.mark.parametrize("setting", ["device", "compile"])
def test_a_finished_run_of_another_device_or_compile_is_not_restored(
        toy_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
        setting: str) -> None:
    """As for the thread count: a finished run trained on another device (a GPU's, this run's on
    the CPU) or with another train.compile is trained again, not restored under this run's
    settings. (The checkpoint is edited to say so: no GPU, and no compiler, in the tests.)"""
    from bafusion.nets.train import save_checkpoint

    cfg, paths, last = _finished_toy_run(tmp_path, monkeypatch, toy_run)
    ck = load_checkpoint(last)
    assert ck.get("device", "cpu") == "cpu"  # recorded by the fix (the restore did not look at it)
    if setting == "device":
        ck["device"], ck["config"]["device"] = "cuda:0", "cuda"
    else:
        ck["config"]["compile"] = True
    save_checkpoint(last, ck)
    paths.out.unlink()
    capsys.readouterr()
    train("initial", toy_run["h5"], cfg, paths, progress=False)
    err = capsys.readouterr().err
    why = "device cuda:0, now cpu" if setting == "device" else "train.compile true, now false"
    assert f"its model is not what this run trains ({why}: that changes the weights)" in err, err
    assert "initial epoch 1/1" in err and "restored" not in err, err
    _, meta = load_model(paths.out)
    assert meta["device"] == "cpu" and meta["params"]["compile"] is False


def test_a_restored_model_records_the_settings_that_trained_it(
        toy_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """train.val_batch and train.checkpoint_every do not change the weights: a finished run whose
    outputs are gone is restored under other values of them, and its .json (and last.pt) keep
    the values that trained it (they said this run's: the same bytes as the first run's now)."""
    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    cfg = resolve_config({**TOY, "train": {**TOY["train"], "epochs": 1, "samples_per_epoch": 64}}, "initial")
    paths = _paths(tmp_path, "initial")
    train("initial", toy_run["h5"], cfg, paths, progress=False)
    want = _outputs(paths)
    for p in (paths.out, paths.out.with_suffix(".json"), paths.metrics, paths.plots):
        p.unlink()
    capsys.readouterr()
    other = dataclasses.replace(cfg, val_batch=cfg.val_batch // 2, checkpoint_every=3)
    train("initial", toy_run["h5"], other, paths, progress=False)
    err = capsys.readouterr().err
    assert "was restored" in err and "initial epoch 1/1" not in err, err
    assert _outputs(paths) == want
    ck = load_checkpoint(paths.checkpoints / "last.pt")
    assert ck["config"]["val_batch"] == cfg.val_batch and ck["config"]["checkpoint_every"] == 0


def test_progress_is_one_line_per_epoch_without_bars_when_stderr_is_not_a_terminal(toy_run: dict, tmp_path: Path) -> None:
    """As under Snakemake or DVC (stderr a pipe or a log file): no carriage-return bars, one
    summary line per epoch with loss, accuracy, validation and time."""
    cmd = [sys.executable, "-m", "bafusion.cli", "train", "--net", "initial", "--patches", str(toy_run["h5"]),
           "--out", str(tmp_path / "m.pt"), "--checkpoints", str(tmp_path / "ck"),
           "--metrics", str(tmp_path / "metrics.json"), "--plots", str(tmp_path / "p.csv"),
           "--params-json", json.dumps({**TOY, "train": {**TOY["train"], "samples_per_epoch": 64}})]
    env = {**os.environ, "BAFUSION_MLFLOW": "0", "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "\r" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if re.search(r" epoch \d+/\d+ ", ln)]
    assert len(lines) == 2, p.stderr
    for i, ln in enumerate(lines, 1):
        assert f"initial epoch {i}/2" in ln and "train loss" in ln and "val loss" in ln, ln
        # then the whole training's epochs, elapsed time and, but for the last, the time left
        assert re.search(rf" s \| {i}/2 epochs, \d+:\d\d:\d\d elapsed" + (r", about \d+:\d\d:\d\d left$" if i < 2 else "$"),
                         ln), ln


def test_val_batch_does_not_change_the_metrics_or_plots(toy_run: dict, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """train.val_batch is documented as having no effect on results: the validation loss is the
    exact sum of per-sample losses (a sum per batch changed its last digits with the batch), and
    a tail batch of one sample (96 = 95 + 1) is no exception."""
    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    files = []
    for val_batch in (256, 64, 95):
        cfg = resolve_config({**TOY, "train": {**TOY["train"], "epochs": 2, "samples_per_epoch": 64,
                                               "val_batch": val_batch}}, "initial")
        paths = _paths(tmp_path / str(val_batch), "initial")
        train("initial", toy_run["h5"], cfg, paths, progress=False)
        files.append((paths.metrics.read_text(), paths.plots.read_text()))
    assert files[1] == files[0] and files[2] == files[0]



def test_killed_run_leaves_the_previous_plots_file_alone(toy_run: dict, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-epoch curve of a run in progress goes to --checkpoints/history.csv; --plots is
    written at the end with the model and the metrics (a killed run left a partial --plots,
    out of step with the previous run's model and metrics). Resuming still gives the whole curve."""
    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    cfg = resolve_config(TOY, "initial")
    paths = _paths(tmp_path, "initial")
    paths.plots.parent.mkdir(parents=True)
    paths.plots.write_text("the previous run's curve\n")
    monkeypatch.setenv(ABORT_ENV, "34")  # in epoch 2 (24 steps per epoch)
    with pytest.raises(KeyboardInterrupt):
        train("initial", toy_run["h5"], cfg, paths, progress=False)
    assert paths.plots.read_text() == "the previous run's curve\n"
    live = (paths.checkpoints / "history.csv").read_text().splitlines()
    assert live[0].startswith("epoch,lr,") and len(live) == 2  # epoch 1
    monkeypatch.delenv(ABORT_ENV)
    train("initial", toy_run["h5"], cfg, paths, progress=False)
    assert paths.plots.read_text() == toy_run["paths"].plots.read_text()  # both epochs, as uninterrupted


def _interrupted_toy_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         toy_run: dict) -> tuple[TrainConfig, Paths, Path]:
    """The toy initial net's run stopped after 34 steps (no MLflow): its config, paths and last.pt."""
    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    cfg = resolve_config(TOY, "initial")
    paths = _paths(tmp_path, "initial")
    monkeypatch.setenv(ABORT_ENV, "34")
    with pytest.raises(KeyboardInterrupt):
        train("initial", toy_run["h5"], cfg, paths, progress=False)
    monkeypatch.delenv(ABORT_ENV)
    return cfg, paths, paths.checkpoints / "last.pt"


def test_resume_with_another_thread_count_warns(toy_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU thread count changes the weights (the order of torch's sums) but is not in the
    fingerprint (a job resumed under other --cores keeps its epochs): the checkpoint records it,
    and a resume with another count says that the weights will differ from an uninterrupted run's
    (it resumed silently, while the README promised equal weights)."""
    cfg, paths, last = _interrupted_toy_run(tmp_path, monkeypatch, toy_run)
    assert load_checkpoint(last)["threads"] == 1
    capsys.readouterr()
    try:
        train("initial", toy_run["h5"], dataclasses.replace(cfg, threads=2), paths, progress=False)
    finally:
        torch.set_num_threads(1)
    err = capsys.readouterr().err
    assert "resuming initial" in err
    warning = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(warning) == 1 and "1 CPU thread(s)" in warning[0] and "uses 2" in warning[0], err
    assert "differ from an uninterrupted run" in warning[0]
    # both counts (it said 2 alone: a later restore under 2 threads trusted it)
    assert load_checkpoint(paths.checkpoints / "last.pt")["threads"] == "1 then 2"


@pytest.mark.parametrize("setting", ["device", "compile", "torch"])
def test_resume_with_another_device_compile_or_torch_warns(
        toy_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
        setting: str) -> None:
    """A resume across a change of the device type, train.compile or torch's version (which
    change the roundings, as the thread count does) continued without a word, while a restore of
    a finished run refuses them: it resumes (the weights go on) and says so in one line. (The
    checkpoint is edited to say so: no GPU, no compiler and one torch in the tests.)"""
    from bafusion.nets.train import save_checkpoint

    cfg, paths, last = _interrupted_toy_run(tmp_path, monkeypatch, toy_run)
    ck = load_checkpoint(last)
    assert ck["torch_version"] == torch.__version__  # recorded from now on
    if setting == "device":
        ck["device"], ck["config"]["device"] = "cuda:0", "cuda"
        why = "device cuda:0, now cpu"
    elif setting == "compile":
        ck["config"]["compile"] = True
        why = "train.compile true, now false"
    else:
        ck["torch_version"] = "1.13.0"
        why = f"torch 1.13.0, now {torch.__version__}"
    save_checkpoint(last, ck)
    capsys.readouterr()
    train("initial", toy_run["h5"], cfg, paths, progress=False)
    err = capsys.readouterr().err
    assert "resuming initial" in err and "initial epoch 2/2" in err and "initial epoch 1/2" not in err, err
    warning = [ln for ln in err.splitlines() if "warning" in ln]
    assert warning == [f"bafusion train: warning: {last} was trained with {why}: the remaining epochs run so, "
                       "and the final weights may differ in the last bits from an uninterrupted run's"], err


def test_a_finished_run_of_another_torch_is_not_restored(
        toy_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished run whose outputs are gone was restored whatever torch wrote last.pt, though
    another torch rounds otherwise (as another device or compile): trained again, saying why,
    where the checkpoint records torch's version; one that does not record it is restored."""
    from bafusion.nets.train import save_checkpoint

    cfg, paths, last = _finished_toy_run(tmp_path, monkeypatch, toy_run)
    ck = load_checkpoint(last)
    assert ck["torch_version"] == torch.__version__
    save_checkpoint(last, {k: v for k, v in ck.items() if k != "torch_version"})  # an older version's
    paths.out.unlink()
    capsys.readouterr()
    train("initial", toy_run["h5"], cfg, paths, progress=False)
    err = capsys.readouterr().err
    assert "restored" in err and "epoch 1/1" not in err, err
    assert "torch_version" not in load_checkpoint(last)  # a restore does not claim this torch trained it
    save_checkpoint(last, {**ck, "torch_version": "1.13.0"})
    paths.out.unlink()
    train("initial", toy_run["h5"], cfg, paths, progress=False)
    err = capsys.readouterr().err
    assert (f"its model is not what this run trains (torch 1.13.0, now {torch.__version__}: that changes the "
            "weights)") in err, err
    assert "initial epoch 1/1" in err and "restored" not in err, err
    assert load_checkpoint(last)["torch_version"] == torch.__version__


@pytest.mark.parametrize("was", ["unrecorded", "1.13.0"])
def test_a_resume_keeps_the_torch_of_earlier_epochs_in_last_pt(
        toy_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
        was: str) -> None:
    """Resuming an interrupted run from a last.pt that does not record torch's version (or
    records another) wrote this torch's version into the new last.pt, so a later restore of the
    finished run trusted it though earlier epochs ran under another torch: the earlier version,
    or "unknown", is kept beside this one, and then never matches this torch (trained again,
    saying why)."""
    from bafusion.nets.train import save_checkpoint

    cfg, paths, last = _interrupted_toy_run(tmp_path, monkeypatch, toy_run)
    ck = load_checkpoint(last)
    if was == "unrecorded":
        del ck["torch_version"]
    else:
        ck["torch_version"] = was
    save_checkpoint(last, ck)
    train("initial", toy_run["h5"], cfg, paths, progress=False)
    done = load_checkpoint(last)
    assert done["finished"]
    # never claims this torch trained the earlier epochs; an unknown one is said so (left
    # unrecorded, a later restore was trusted under any torch)
    earlier = "unknown" if was == "unrecorded" else was
    assert done["torch_version"] == f"{earlier} then {torch.__version__}"
    paths.out.unlink()
    capsys.readouterr()
    train("initial", toy_run["h5"], cfg, paths, progress=False)
    err = capsys.readouterr().err
    assert (f"its model is not what this run trains (torch {earlier} then {torch.__version__}, now "
            f"{torch.__version__}: that changes the weights)") in err, err
    assert load_checkpoint(last)["torch_version"] == torch.__version__


@pytest.mark.parametrize("setting", ["threads", "device"])
def test_a_resume_keeps_the_threads_or_device_of_earlier_epochs_in_last_pt(
        toy_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
        setting: str) -> None:
    """As for torch's version: a resume under another CPU thread count or device type recorded only
    the new one in last.pt, so a later restore of the finished run under it was trusted though the
    earlier epochs ran otherwise. Both are kept ("1 then 2", "cuda:0 then cpu"), which never equal a
    single setting: the restore trains again, saying why. A GPU-trained checkpoint resumed on the CPU
    warns of the device only (the GPU run's thread count did not matter). (The checkpoint is edited
    for the device: no GPU in the tests.)"""
    from bafusion.nets.train import save_checkpoint

    cfg, paths, last = _interrupted_toy_run(tmp_path, monkeypatch, toy_run)
    if setting == "device":
        ck = load_checkpoint(last)
        ck["device"], ck["config"]["device"], ck["threads"] = "cuda:0", "cuda", 4
        save_checkpoint(last, ck)
        run_cfg, mixed, why = cfg, "cuda:0 then cpu", "device cuda:0 then cpu, now cpu"
    else:
        run_cfg, mixed, why = dataclasses.replace(cfg, threads=2), "1 then 2", "1 then 2 CPU thread(s) per process, now 2"
    capsys.readouterr()
    try:
        train("initial", toy_run["h5"], run_cfg, paths, progress=False)
        err = capsys.readouterr().err
        warning = [ln for ln in err.splitlines() if "warning" in ln]
        assert len(warning) == 1, err
        if setting == "device":  # one line, the device's: the GPU's 4 threads changed nothing
            assert "device cuda:0, now cpu" in warning[0], err
        done = load_checkpoint(last)
        assert done["finished"] and done[setting] == mixed
        _, meta = load_model(paths.out)
        assert meta["device"] == (mixed if setting == "device" else "cpu")
        paths.out.unlink()
        train("initial", toy_run["h5"], run_cfg, paths, progress=False)
    finally:
        torch.set_num_threads(1)
    err = capsys.readouterr().err
    assert f"its model is not what this run trains ({why}: that changes the weights)" in err, err
    assert "initial epoch 1/2" in err and "restored" not in err, err
    done = load_checkpoint(last)
    assert done["threads"] == (2 if setting == "threads" else 1) and done["device"] == "cpu"


def test_help_says_only_an_interrupted_run_is_resumed(capsys: pytest.CaptureFixture) -> None:
    """A finished run's last.pt is not resumed (the help said any existing last.pt was)."""
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "An interrupted run resumes from --checkpoints/last.pt" in text
    assert "finished run" in text and "from scratch" in text
    assert "when it exists" not in text


def test_resumed_mlflow_run_names_the_interrupted_run(toy_run: dict, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A resumed training is a new MLflow run: it is tagged with the interrupted run's id (the
    checkpoint records it), not only with the epoch and step it resumed from."""
    from mlflow.tracking import MlflowClient

    from bafusion.tracking import EXPERIMENT

    monkeypatch.delenv("BAFUSION_MLFLOW", raising=False)
    # 4 steps per epoch; a seed of its own tells its runs from other tests' in the session's MLflow db
    cfg = resolve_config({**TOY, "seed": 4242, "train": {**TOY["train"], "samples_per_epoch": 64}}, "initial")
    paths = _paths(tmp_path, "initial")
    monkeypatch.setenv(ABORT_ENV, "6")
    with pytest.raises(KeyboardInterrupt):
        train("initial", toy_run["h5"], cfg, paths, progress=False)
    first_id = load_checkpoint(paths.checkpoints / "last.pt")["mlflow_run_id"]
    monkeypatch.delenv(ABORT_ENV)
    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    # as SIGKILL leaves it (nothing ended the run): the resuming run ends it KILLED (it stayed
    # RUNNING in the MLflow UI for good)
    client.update_run(first_id, status="RUNNING")
    train("initial", toy_run["h5"], cfg, paths, progress=False)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = {r.info.run_id: r for r in client.search_runs([exp.experiment_id])
            if r.data.params.get("patches") == str(toy_run["h5"]) and r.data.params.get("seed") == "4242"}
    assert len(runs) == 2 and first_id in runs and runs[first_id].info.status == "KILLED"
    (second,) = (r for i, r in runs.items() if i != first_id)
    assert second.data.tags["resumed_from"] == "epoch 1 step 0"
    assert second.data.tags["resumed_run_id"] == first_id
    assert runs[first_id].data.tags["resumed_by_run_id"] == second.info.run_id
    assert load_checkpoint(paths.checkpoints / "last.pt")["mlflow_run_id"] == second.info.run_id


def test_a_second_training_on_the_same_checkpoints_fails_at_once(toy_run: dict, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """Two trainings given one --checkpoints folder: the second resumed the first's live
    last.pt and both wrote into it. It now fails at once; the lock ends with its process."""
    ck = tmp_path / "ck"
    # another process holds the folder (a training in progress)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from bafusion.nets.train import checkpoints_lock\n"
         "with checkpoints_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)", str(ck)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc = cli.main(["train", "--net", "initial", "--patches", str(toy_run["h5"]), "--out", str(tmp_path / "m.pt"),
                       "--params-json", json.dumps(TOY), "--checkpoints", str(ck), "--metrics",
                       str(tmp_path / "metrics.json"), "--plots", str(tmp_path / "p.csv"), "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2
        assert err.strip().splitlines() == [
            f"bafusion train: error: {ck}: another training (process {holder.pid}) is using this checkpoint folder "
            "(wait for it to end, or give --checkpoints another folder)"], err
        assert sorted(p.name for p in ck.iterdir()) == [LOCK_FILE]  # nothing trained, nothing written
        assert not (tmp_path / "m.pt").exists()
    finally:
        holder.kill()  # killed, not ended: the OS releases its lock
        holder.wait()
    with checkpoints_lock(ck):  # free again
        # and two holders in one process exclude each other too
        with pytest.raises(UserError, match=rf"another training \(process {os.getpid()}\) is using this checkpoint folder"):
            with checkpoints_lock(ck):
                pass
    with checkpoints_lock(ck):  # released at the end of the block
        pass


def _train_rule_command(net: str) -> str:
    """The shell command of the rule train_<net> (workflow/rules/train.smk), as written there."""
    import ast

    text = (Path(__file__).resolve().parents[1] / "workflow" / "rules" / "train.smk").read_text(encoding="utf-8")
    rule = text.split(f"rule train_{net}:", 1)[1].split("\nrule ", 1)[0]
    shell = rule.split("shell:", 1)[1].strip()
    return ast.literal_eval("(" + shell + ")")


#: A ``bafusion`` for the rule's command whose training, with $PAUSE_TRAIN set, takes the
#: checkpoint lock as train() does (unless the command holds it), says epoch 1, waits for the
#: file $PAUSE_TRAIN, says epoch 2 and ends: a live training held in place.
_PAUSED_BAFUSION = """\
import os, sys, time
from pathlib import Path
import bafusion.nets.train as T

def paused(net, patches, cfg, paths, **kwargs):
    held = os.environ.get(T.LOCK_HELD_ENV) == str(Path(paths.checkpoints).resolve())
    import contextlib
    with T.checkpoints_lock(paths.checkpoints) if not held else contextlib.nullcontext():
        print("epoch 1/2 of the live run", file=sys.stderr, flush=True)
        while not os.path.exists(os.environ["PAUSE_TRAIN"]):
            time.sleep(0.05)
        print("epoch 2/2 of the live run", file=sys.stderr, flush=True)
    return {"val_acc": 0.5, "best_epoch": 2}

if os.environ.get("PAUSE_TRAIN"):
    T.train = paused
from bafusion.cli import main
sys.exit(main())
"""


@pytest.mark.parametrize("removed", [False, True], ids=["kept", "removed-by-snakemake"])
def test_a_duplicate_training_job_refused_by_the_lock_leaves_the_live_jobs_log_whole(tmp_path: Path,
                                                                                   removed: bool) -> None:
    """Snakemake >= 9.17 deletes .snakemake/locks whenever a run ends, so a second
    ``snakemake train_initial`` is no longer refused by Snakemake; bafusion's checkpoint lock
    refused its job, but the rule's ``2>&1 | tee {log}`` had emptied the live training's log
    first: the log of the job that went on to finish held only the refusal. Both jobs run the
    rule's own command here; with ``removed``, the log is first deleted as Snakemake deletes a
    job's log before running it: the live run writes it again whole."""
    import shlex
    import time

    h5 = write_toy_patches(tmp_path / "patches" / "initial.h5", n_train=12, n_val=6, patch=16, seed=1)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "bafusion").write_text(f"#!{sys.executable}\n{_PAUSED_BAFUSION}", encoding="utf-8")
    (bindir / "bafusion").chmod(0o755)
    log = tmp_path / "logs" / "train_initial.log"
    log.parent.mkdir()  # (Snakemake makes it)
    values = {"input.patches": str(h5), "output.model": str(tmp_path / "models" / "initial.pt"),
              "params.cfg:q": shlex.quote(json.dumps(TOY)), "threads": "1", "params.checkpoints": str(tmp_path / "ck"),
              "output.metrics": str(tmp_path / "metrics.json"), "output.plots": str(tmp_path / "epochs.csv"),
              "log": str(log)}
    # as Snakemake runs it: bash in its strict mode
    command = "set -euo pipefail; " + re.sub(r"\{([^{}]+)\}", lambda m: values[m.group(1)],
                                             _train_rule_command("initial"))
    go = tmp_path / "go"
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "BAFUSION_MLFLOW": "0"}
    live = subprocess.Popen(["bash", "-c", command], env={**env, "PAUSE_TRAIN": str(go)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while "epoch 1/2" not in (log.read_text() if log.exists() else ""):
            assert live.poll() is None and time.monotonic() < deadline, live.communicate()
            time.sleep(0.1)
        if removed:
            log.unlink()  # Snakemake's remove_existing_output for the duplicate job
        dup = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=300)
        assert dup.returncode != 0
        assert "another training" in dup.stderr and "is using this checkpoint folder" in dup.stderr, dup.stderr
        if not removed:
            assert "epoch 1/2 of the live run" in log.read_text()  # untouched by the refused job
        go.write_text("")
        out, err = live.communicate(timeout=300)
    finally:
        if live.poll() is None:
            live.kill()
            live.wait()
    assert live.returncode == 0, err
    text = log.read_text()
    assert "another training" not in text, text
    assert "epoch 1/2 of the live run" in text and "epoch 2/2 of the live run" in text, text
    assert "initial: best val acc 0.5000 at epoch 2" in text, text
    # and the console (the job's stderr) got it all as well, as under tee
    assert "epoch 1/2 of the live run" in err and "epoch 2/2 of the live run" in err and "best val acc" in err, err


def test_train_log_holds_the_commands_error_line_as_tee_did(tmp_path: Path) -> None:
    """``--log`` (the training rules' log, written once the checkpoint lock is held) holds what
    ``2>&1 | tee`` held: the error line too, which the command prints once its work has ended;
    the console gets it as well."""
    h5 = write_toy_patches(tmp_path / "initial.h5", n_train=12, n_val=6, patch=16, seed=1)
    log = tmp_path / "logs" / "train.log"
    proc = subprocess.run([sys.executable, "-m", "bafusion.cli", "train", "--net", "initial", "--patches", str(h5),
                           "--out", str(tmp_path / "m.json"), "--params-json", json.dumps(TOY), "--checkpoints",
                           str(tmp_path / "ck"), "--log", str(log)],
                          capture_output=True, text=True, env={**os.environ, "BAFUSION_MLFLOW": "0"}, timeout=300)
    line = "bafusion train: error: --out "
    assert proc.returncode == 2 and line in proc.stderr, proc.stderr
    assert line in log.read_text() and "give the model file a .pt suffix" in log.read_text(), log.read_text()
    assert not (tmp_path / "ck").exists()  # the lock's folder, made for it, is gone with it


@pytest.mark.skipif(sys.platform == "win32", reason="a pseudo-terminal: POSIX")
def test_train_log_on_a_terminal_shows_its_lines_unstamped_and_stamps_them_in_the_log(tmp_path: Path) -> None:
    """``train --log FILE`` run on a terminal showed its stderr lines there after the time, as in
    a log (``--log`` makes stderr a pipe to copy it into FILE), where without ``--log`` they read
    ``bafusion train: ...``. The terminal now shows them as without ``--log``; the log file still
    gets them stamped, as every log."""
    import fcntl
    import pty
    import struct
    import termios

    h5 = write_toy_patches(tmp_path / "initial.h5", n_train=12, n_val=6, patch=16, seed=1)
    logfile = tmp_path / "logs" / "train.log"
    params = {**TOY, "train": {**TOY["train"], "samples_per_epoch": 32}}
    command = [sys.executable, "-m", "bafusion.cli", "train", "--net", "initial", "--patches", str(h5),
               "--out", str(tmp_path / "m.pt"), "--params-json", json.dumps(params), "--checkpoints",
               str(tmp_path / "ck"), "--log", str(logfile)]
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal of a width
    env = {k: v for k, v in os.environ.items() if k != "TERM"}
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=slave, env={**env, "BAFUSION_MLFLOW": "0"})
        os.close(slave)
        shown = b""
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's last writer is gone
                break
            if not data:
                break
            shown += data
        out, _ = proc.communicate(timeout=300)
    finally:
        os.close(master)
    assert proc.returncode == 0, shown
    console = shown.decode().replace("\r\n", "\n").splitlines()
    for start in ("bafusion train: initial: 12 train patches", "bafusion train: initial epoch 2/2 lr ",
                  "bafusion train: initial done: "):
        assert sum(line.startswith(start) for line in console) == 1, shown
        assert re.search(rf"^{STAMP} {re.escape(start)}", logfile.read_text(), re.M), logfile.read_text()
    assert not any(re.match(STAMP, line) for line in console), shown
    assert out.decode().startswith("initial: best val acc "), out


@pytest.mark.parametrize("closed", [">&-", ">&- <&-"], ids=["stdout", "stdin-and-stdout"])
def test_train_log_with_stdout_closed_ends_with_the_training(tmp_path: Path, closed: str) -> None:
    """``train --log`` with stdout closed (``>&-``: a daemon, some cron wrappers) trained to the
    end, then died with "internal error: OSError: [Errno 29] Illegal seek": the checkpoint lock
    file was opened on the free descriptor 1, which the log's copy then replaced by its pipe
    (with stdin closed too, the log itself was on descriptor 1: it kept only its first line).
    The command now makes its closed descriptors 0-2 /dev/null first: exit 0, the log whole,
    the lock file gone. The log lacked the lines printed on stdout (``sys.stdout`` is None, so
    print() dropped them): it holds them too, the result line as well."""
    h5 = write_toy_patches(tmp_path / "initial.h5", n_train=12, n_val=6, patch=16, seed=1)
    log, ck = tmp_path / "logs" / "train.log", tmp_path / "ck"
    params = {**TOY, "train": {**TOY["train"], "samples_per_epoch": 32}}
    command = [sys.executable, "-m", "bafusion.cli", "train", "--net", "initial", "--patches", str(h5),
               "--out", str(tmp_path / "m.pt"), "--params-json", json.dumps(params), "--checkpoints", str(ck),
               "--log", str(log)]
    proc = subprocess.run(["bash", "-c", f'exec "$@" {closed}', "bash", *command], capture_output=True, text=True,
                          env={**os.environ, "BAFUSION_MLFLOW": "0"}, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "epoch 2/2" in proc.stderr and "epoch 2/2" in log.read_text(), (proc.stderr, log.read_text())
    assert re.search(rf"^initial: best val acc [0-9.]+ at epoch [12], model {re.escape(str(tmp_path / 'm.pt'))}$",
                     log.read_text(), re.M), log.read_text()
    assert (tmp_path / "m.pt").is_file() and not (ck / LOCK_FILE).exists()


@pytest.mark.skipif(sys.platform == "win32", reason="a pipe's reader gone: POSIX")
@pytest.mark.parametrize("log", [True, False], ids=["log", "no-log"])
def test_train_stops_when_its_reader_goes_away_with_or_without_log(tmp_path: Path, log: bool) -> None:
    """``bafusion train ... 2>&1 | head -1`` stopped with 141 (SIGPIPE's status, as any Unix
    tool) at its next line, but with ``--log FILE`` it trained on to the end and exited 0 (the
    log's copy dropped the console's failed writes). With ``--log`` it stops as without it: 141,
    no model written, the checkpoint kept to resume, the lock released, the log holding the
    lines up to there. The log also lost the line whose write failed (the last epoch that
    last.pt holds) and did not say why the run ended: it now ends with that line and one that
    says the reader went away, the training stopped, and how a rerun resumes from which
    checkpoint."""
    h5 = write_toy_patches(tmp_path / "initial.h5", n_train=12, n_val=6, patch=16, seed=1)
    logfile, ck, model = tmp_path / "logs" / "train.log", tmp_path / "ck", tmp_path / "m.pt"
    params = {**TOY, "train": {**TOY["train"], "epochs": 3}}
    command = [sys.executable, "-m", "bafusion.cli", "train", "--net", "initial", "--patches", str(h5),
               "--out", str(model), "--params-json", json.dumps(params), "--checkpoints", str(ck),
               *(["--log", str(logfile)] if log else [])]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "BAFUSION_MLFLOW": "0"})
    try:
        first = proc.stdout.readline()  # `| head -1`
        proc.stdout.close()
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert b"train patches" in first, first
    assert rc == 141, rc
    assert not model.exists() and (ck / "last.pt").is_file() and not (ck / LOCK_FILE).exists()
    if log:
        text = logfile.read_text()
        assert "train patches" in text and "epoch 1/3" in text and "epoch 3/3" not in text, text
        last = load_checkpoint(ck / "last.pt")
        lines = _unstamped(text)
        assert re.match(rf"bafusion train: initial epoch {last['epoch']}/3 lr ", lines[-2]), text  # its write failed
        assert lines[-1] == ("bafusion train: stopped: the reader of its standard error went away (a closed pipe, "
                             f"as `| head`), status 141; rerun the same command: it resumes from {ck / 'last.pt'} "
                             f"({last['epoch']} epoch(s) done, step {last['global_step']})"), text


@pytest.mark.skipif(sys.platform == "win32", reason="a pipe's reader gone: POSIX")
@pytest.mark.parametrize("older", ["finished", "other-keep", "other-params"])
def test_train_log_stop_line_never_counts_the_epochs_of_an_older_runs_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, older: str) -> None:
    """``train --log`` stopped by its reader gone before its first save, beside an older run's
    last.pt (a finished run's: a rerun trains from scratch, or restores it without training
    under another train.keep; or an interrupted run's of other parameters, which
    --restart-if-changed replaces), said "rerun the same command: no checkpoint was saved yet
    by this run, so it starts afresh (2 epoch(s) done, step 8)": the older checkpoint's epochs,
    which a rerun does not go on from. The stop line now gives the epochs only of a checkpoint
    this run wrote or a rerun resumes, and says what a rerun beside a finished run does (it said
    "starts afresh" where a rerun under another keep restores the model without training)."""
    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    h5 = write_toy_patches(tmp_path / "initial.h5", n_train=12, n_val=6, patch=16, seed=1)
    logfile = tmp_path / "train.log"
    paths = _paths(tmp_path, "initial")
    params = {**TOY, "train": {**TOY["train"], "samples_per_epoch": 32}}  # 2 steps per epoch
    options: list[str] = []
    if older == "finished":  # the same parameters, its outputs in place: a rerun trains from scratch
        train("initial", h5, resolve_config(params, "initial"), paths, progress=False)
    elif older == "other-keep":  # finished under keep last: a rerun under keep best restores it
        train("initial", h5, resolve_config({**params, "train": {**params["train"], "keep": "last"}}, "initial"),
              paths, progress=False)
        params = {**params, "train": {**params["train"], "keep": "best"}}
    else:  # an interrupted run of another learning rate, replaced by --restart-if-changed
        monkeypatch.setenv(ABORT_ENV, "3")  # in epoch 2, after epoch 1's save
        with pytest.raises(KeyboardInterrupt):
            train("initial", h5, resolve_config({**params, "train": {**params["train"], "lr": 0.02}}, "initial"),
                  paths, progress=False)
        monkeypatch.delenv(ABORT_ENV)
        options = ["--restart-if-changed"]
    last = paths.checkpoints / "last.pt"
    then = time.time() - 600  # written well before the run below started
    os.utime(last, (then, then))
    before = last.read_bytes()
    assert load_checkpoint(last)["epoch"] >= 1
    r, w = os.pipe()
    os.close(r)  # the console's reader is gone from the start: the first line the copy passes on fails
    try:
        proc = subprocess.run([sys.executable, "-m", "bafusion.cli", "train", "--net", "initial", "--patches", str(h5),
                               "--out", str(paths.out), "--checkpoints", str(paths.checkpoints), "--report",
                               str(paths.metrics), "--plots", str(paths.plots), "--params-json", json.dumps(params),
                               "--log", str(logfile), *options],
                              stdout=w, stderr=w, cwd=tmp_path, timeout=300)
    finally:
        os.close(w)
    assert proc.returncode == 141, proc.returncode
    assert last.read_bytes() == before  # stopped before this run's first save (at its first or second line)
    lines = _unstamped(logfile.read_text())
    stop = lines[-1]
    assert stop.startswith("bafusion train: stopped: the reader of its standard error went away"), lines
    if older == "finished":
        assert stop.endswith(f"rerun the same command: no checkpoint was saved yet by this run, so it trains from "
                             f"scratch ({last} is a finished run's, its outputs in place)"), stop
    elif older == "other-keep":
        # the run restored the model under keep "best" before its reader went away (its second line): since
        # 0.5.0 the keep is the one --out's model was written under, now "best", so a rerun finds the
        # finished run's outputs in place under its keep (it said "writes the model ... again", from
        # last.pt's "last", which the restore does not rewrite)
        # (the reader's loss is noticed by the line copier, so the run may stop before the restore: then a
        # rerun restores it)
        if any("was restored to" in line and 'train.keep "last" -> "best"' in line for line in lines):
            assert stop.endswith(f"rerun the same command: no checkpoint was saved yet by this run, so it trains "
                                 f"from scratch ({last} is a finished run's, its outputs in place)"), stop
        else:
            assert stop.endswith(f"rerun the same command: it writes the model of the finished run in {last} again "
                                 'without training (train.keep "last" -> "best"), unless the device type, CPU threads, '
                                 "compile or torch version differ from that run's (then it trains from scratch)"), stop
    else:
        assert "rerun the same command: no checkpoint was saved yet by this run, so it starts afresh" in stop, stop
    assert "epoch(s) done" not in stop, stop


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
@pytest.mark.parametrize("log", [True, False], ids=["log", "no-log"])
def test_train_with_a_full_standard_output_keeps_its_outputs_and_ends_with_status_2(tmp_path: Path,
                                                                                    log: bool) -> None:
    """`train --log FILE > /dev/full` ended with status 0 and said nothing, its result line lost
    from stdout (the log's copy dropped the failed writes silently), while the README says of
    every command that writes files, as `train > /dev/full` does: the failure said once on
    stderr, the lines dropped, the outputs kept, status 2. With --log it is so too, the lines
    kept in the log, the error line there as well."""
    h5 = write_toy_patches(tmp_path / "initial.h5", n_train=12, n_val=6, patch=16, seed=1)
    logfile, model = tmp_path / "logs" / "train.log", tmp_path / "m.pt"
    params = {**TOY, "train": {**TOY["train"], "samples_per_epoch": 32}}
    command = [sys.executable, "-m", "bafusion.cli", "train", "--net", "initial", "--patches", str(h5),
               "--out", str(model), "--params-json", json.dumps(params), "--checkpoints", str(tmp_path / "ck"),
               *(["--log", str(logfile)] if log else [])]
    with open("/dev/full", "w") as full:
        proc = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "BAFUSION_MLFLOW": "0"}, timeout=300)
    said = [x for x in proc.stderr.splitlines() if "(writing the standard output)" in x]
    assert proc.returncode == 2 and len(said) == 1, proc.stderr
    assert said[0].startswith("bafusion train: error: No space left on device (writing the standard output): what "
                              "it prints there is dropped from now on"), said
    assert said[0].endswith("and ends with a non-zero status"), said
    assert "Traceback" not in proc.stderr and "epoch 2/2" in proc.stderr, proc.stderr
    assert model.is_file() and model.with_suffix(".json").is_file()
    if log:
        text = logfile.read_text()
        assert f"kept in the log {logfile}" in said[0], said
        assert re.search(r"^initial: best val acc [0-9.]+ at epoch [12], model ", text, re.M), text
        assert said[0] in text.splitlines() and "epoch 2/2" in text, text


@pytest.mark.parametrize("existing", [False, True])
def test_a_training_refused_after_taking_the_lock_leaves_no_lock_file(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                      existing: bool) -> None:
    """``train --patches <a folder>`` is refused after the lock is taken: it left an empty
    ``<checkpoints>/train.lock`` (and the folder it created) behind."""
    ck = tmp_path / "ck"
    if existing:
        ck.mkdir()
    (tmp_path / "nets").mkdir()
    rc = cli.main(["train", "--net", "initial", "--patches", str(tmp_path / "nets"), "--out", str(tmp_path / "m.pt"),
                   "--device", "cpu", "--checkpoints", str(ck), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "is a folder, not a patch set file" in err, err
    if existing:
        assert list(ck.iterdir()) == []  # the user's folder is kept, without the lock file
    else:
        assert not ck.exists()
    with checkpoints_lock(ck):
        assert (ck / LOCK_FILE).is_file()
        (ck / "last.pt").write_bytes(b"x")
    assert sorted(p.name for p in ck.iterdir()) == ["last.pt"]  # the lock file goes with the lock


def test_a_training_diverged_by_the_consistency_weight_names_it(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``train.consistency: 1e30`` diverged at step 2 and the message said only "train again with
    a lower train.lr"; it names the consistency weight too."""
    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    h5 = write_toy_patches(tmp_path / "ctx.h5", n_train=64, n_val=32, context=4)
    params = {**TOY, "train": {**TOY["train"], "epochs": 1, "samples_per_epoch": 32, "consistency": 1e38}}
    paths = _paths(tmp_path, "initial")
    capsys.readouterr()
    assert cli.main(["train", "--net", "initial", "--patches", str(h5), "--out", str(paths.out),
                     "--params-json", json.dumps(params), "--checkpoints", str(paths.checkpoints),
                     "--metrics", str(paths.metrics), "--plots", str(paths.plots), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "training diverged" in err and "train again with a lower train.lr or train.consistency (1e+38); " in err, err


@pytest.mark.parametrize("every", [0, 1])
def test_diverging_training_stops_before_saving_the_diverged_state(toy_run: dict, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture,
                                                                    monkeypatch: pytest.MonkeyPatch, every: int) -> None:
    """train.lr=1000 made the loss NaN: every epoch ran on (val acc: the share of the class the
    argmax of NaN falls on), exit 0, a model of NaN weights with which fuse took source B. Now
    the run stops with one line naming the epoch and the step; last.pt and best.pt keep the
    last finite state, no model is written."""
    from bafusion.nets import train as train_mod

    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    real, calls = train_mod.train_step, [0]

    def poisoned(model, *args, **kwargs):  # the update of step 5 (the first of epoch 2) diverges
        out = real(model, *args, **kwargs)
        calls[0] += 1
        if calls[0] == 5:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return out

    monkeypatch.setattr(train_mod, "train_step", poisoned)
    params = {**TOY, "train": {**TOY["train"], "epochs": 3, "samples_per_epoch": 64,  # 4 steps per epoch
                               "checkpoint_every": every}}
    paths = _paths(tmp_path, "initial")
    capsys.readouterr()
    assert cli.main(["train", "--net", "initial", "--patches", str(toy_run["h5"]), "--out", str(paths.out),
                     "--params-json", json.dumps(params),
                     "--checkpoints", str(paths.checkpoints), "--metrics", str(paths.metrics),
                     "--plots", str(paths.plots), "--no-progress"]) == 2
    err = capsys.readouterr().err
    step = 5 if every else 6  # a step checkpoint checks the weights; else the next loss is NaN
    assert (f"bafusion train: error: initial: training diverged: the loss or the weights became NaN or infinite in "
            f"epoch 2 at step {step} (learning rate 0.005); train again with a lower train.lr; "
            f"{paths.checkpoints / 'last.pt'} keeps the end of epoch 1 (step 4), the last finite state, "
            "and no model was written") in err, err
    assert "epoch 2/3" not in err and "Traceback" not in err
    assert not paths.out.exists() and not paths.metrics.exists() and not paths.plots.exists()
    for name in ("last.pt", "best.pt"):
        ck = load_checkpoint(paths.checkpoints / name)
        assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values()), name


def test_nan_logits_are_never_counted_correct(toy_run: dict) -> None:
    """The argmax of NaN logits is class 0: a NaN net scored the share of class 0 as accuracy
    and was kept as the best epoch."""
    from bafusion.nets.augment import AugmentedLoader, load_split
    from bafusion.nets.train import Dist, _better, evaluate

    net = build_model(8)
    with torch.no_grad():
        net.fc.weight.fill_(float("nan"))
    val = load_split(toy_run["h5"], "val", "cpu")
    loss, acc, n, _ = evaluate(net, AugmentedLoader(val, 32, "cpu", augment=False), False, torch.device("cpu"), Dist())
    assert n == 96 and acc == 0.0 and np.isnan(loss)
    assert not _better(float("nan"), float("nan"), 96)  # NaN over samples: never the best
    assert _better(float("nan"), float("nan"), 0)  # no validation data: the latest epoch


def test_a_model_save_killed_between_its_two_files_is_refused_not_misread(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """save_model renamed the .pt into place, then wrote the .json: killed between the two, the new
    weights loaded with the earlier description (its patch side, input scale: the architecture
    alike, nothing said). The .json now goes first and records the .pt's hash; whichever rename
    the kill stops, what loads is the earlier pair, or nothing (the pair refused, named)."""
    import bafusion.atomic as atomic

    out = tmp_path / "m.pt"
    torch.manual_seed(0)
    save_model(build_model(8), out, {"patch": 32, "net": "initial"})
    earlier = load_model(out)[0].state_dict()

    class Killed(BaseException):
        pass

    real = os.replace
    for kill_at in (1, 2):  # the first rename of the pair, the second
        calls = []

        def replace(src, dst, kill_at=kill_at, calls=calls):
            calls.append(dst)
            if len(calls) == kill_at:
                raise Killed
            return real(src, dst)

        monkeypatch.setattr(atomic.os, "replace", replace)
        torch.manual_seed(kill_at)
        with pytest.raises(Killed):
            save_model(build_model(8), out, {"patch": 16, "net": "initial"})
        monkeypatch.undo()
        if kill_at == 1:  # nothing renamed: the earlier pair, whole
            net, meta = load_model(out)
            assert meta["patch"] == 32
            assert all(torch.equal(v, earlier[k]) for k, v in net.state_dict().items())
        else:  # one of the two renamed: the pair refused, not the weights with another's description
            with pytest.raises(ModelFileError, match=r"m\.json: describes other weights than those in m\.pt"):
                load_model(out)
    save_model(build_model(8), out, {"patch": 16, "net": "initial"})  # written whole: loads
    assert load_model(out)[1]["patch"] == 16
    meta = json.loads(out.with_suffix(".json").read_text())
    meta["weights_sha256"] = "abc"
    out.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="'weights_sha256' is 'abc', not a SHA-256"):
        load_model(out)


def test_a_model_with_non_finite_weights_is_refused(toy_run: dict, tmp_path: Path) -> None:
    """A model of a diverged training (NaN weights) loaded, and fuse output source B."""
    src = toy_run["paths"].out
    bad = tmp_path / "nan.pt"
    state = torch.load(src, weights_only=True)
    state["fc.bias"] = torch.tensor([float("nan"), 0.0])
    torch.save(state, bad)
    shutil.copy(src.with_suffix(".json"), bad.with_suffix(".json"))
    with pytest.raises(ModelFileError, match=r"nan.pt: 1 of \d+ weight tensors hold NaN or infinite values "
                                             r"\(first: fc.bias\): a diverged training"):
        load_model(bad)
    from bafusion.fusion.models import _load_one

    with pytest.raises((ModelFileError, UserError), match="NaN or infinite"):
        _load_one(bad, torch.device("cpu"))
    load_model(src)  # a trained model loads


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_resume_needs_no_best_pt_and_keeps_the_best_epochs_weights(toy_run: dict, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture,
                                                                    monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    """A truncated best.pt failed the resumed run after its last epoch ("delete it to start
    afresh"); deleted, the last epoch's weights were written under the best epoch's numbers.
    last.pt holds the best weights: the resume needs nothing else and writes best.pt again."""
    from bafusion.nets import train as train_mod

    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    real, accs = train_mod.evaluate, iter([0.9, 0.8, 0.7, 0.6])  # epoch 1 stays the best

    def falling(*args, **kwargs):
        loss, _, n, extra = real(*args, **kwargs)
        return loss, next(accs), n, extra

    monkeypatch.setattr(train_mod, "evaluate", falling)
    cfg = resolve_config({**TOY, "train": {**TOY["train"], "epochs": 4, "samples_per_epoch": 64}}, "initial")
    paths = _paths(tmp_path, "initial")
    monkeypatch.setenv(ABORT_ENV, "10")  # in epoch 3
    with pytest.raises(KeyboardInterrupt):
        train("initial", toy_run["h5"], cfg, paths, progress=False)
    monkeypatch.delenv(ABORT_ENV)
    best_pt = paths.checkpoints / "best.pt"
    epoch1 = load_checkpoint(best_pt)
    assert epoch1["epoch"] == 1
    if damage == "truncated":
        best_pt.write_bytes(best_pt.read_bytes()[: best_pt.stat().st_size // 2])
    else:
        best_pt.unlink()
    summary = train("initial", toy_run["h5"], cfg, paths, progress=False)
    assert "epoch 4/4" in capsys.readouterr().err
    assert summary["best_epoch"] == 1 and summary["val_acc"] == 0.9 and summary["last_val_acc"] == 0.6
    net, meta = load_model(paths.out)
    assert meta["best_epoch"] == 1
    for k, v in net.state_dict().items():
        assert torch.equal(v, epoch1["model"][k]), k
    again = load_checkpoint(best_pt)  # written again from last.pt
    assert again["epoch"] == 1 and all(torch.equal(v, epoch1["model"][k]) for k, v in again["model"].items())


from bafusion.nets.train import evaluate as _REAL_EVALUATE  # noqa: E402 - before any test patches it


def _falling_val_acc(monkeypatch: pytest.MonkeyPatch, accs: list[float]) -> None:
    """Validation accuracies ``accs``, one per epoch, whatever the net does (the losses are real)."""
    from bafusion.nets import train as train_mod

    real, it = _REAL_EVALUATE, iter(accs)

    def falling(*args, **kwargs):
        loss, _, n, extra = real(*args, **kwargs)
        return loss, next(it), n, extra

    monkeypatch.setattr(train_mod, "evaluate", falling)


def test_keep_last_writes_the_net_after_the_last_epoch_and_says_so(toy_run: dict, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The paper preset wrote the best validation epoch's weights (epoch 1 here), though the
    paper describes no choice of an epoch: train.keep last writes the net after the last epoch,
    and the report, the model's .json and the MLflow run name that epoch (saved_epoch) and give
    its numbers, the best epoch's beside them."""
    from mlflow.tracking import MlflowClient

    _falling_val_acc(monkeypatch, [0.9, 0.8, 0.7])  # epoch 1 stays the best
    cfg = resolve_config({**TOY, "train": {**TOY["train"], "epochs": 3, "samples_per_epoch": 64, "keep": "last"}},
                         "initial")
    assert cfg.keep == "last" and resolve_config(TOY, "initial").keep == "best"  # the default: as before
    paths = _paths(tmp_path, "initial")
    summary = train("initial", toy_run["h5"], cfg, paths, progress=False)
    assert (summary["best_epoch"], summary["saved_epoch"]) == (1, 3)
    assert summary["val_acc"] == summary["last_val_acc"] == 0.7 and summary["best_val_acc"] == 0.9
    assert json.loads(paths.metrics.read_text()) == pytest.approx(summary)
    last = load_checkpoint(paths.checkpoints / "last.pt")
    best = load_checkpoint(paths.checkpoints / "best.pt")
    assert best["epoch"] == 1  # kept to look at
    net, meta = load_model(paths.out)
    assert (meta["saved_epoch"], meta["best_epoch"], meta["val_acc"], meta["params"]["keep"]) == (3, 1, 0.7, "last")
    weights = net.state_dict()
    assert all(torch.equal(v, last["model"][k]) for k, v in weights.items())
    assert not all(torch.equal(v, best["model"][k]) for k, v in weights.items())
    assert "val acc 0.7000 at epoch 3, the last (train.keep: last; best val acc 0.9000 at epoch 1)" in \
        capsys.readouterr().err
    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    run = client.get_run(last["mlflow_run_id"])
    assert run.data.tags["saved_epoch"] == "3" and run.data.tags["best_epoch"] == "1"
    assert run.data.metrics["val_acc"] == pytest.approx(0.7) and run.data.metrics["saved_epoch"] == 3
    assert run.data.metrics["best_val_acc"] == pytest.approx(0.9)


def test_keep_last_survives_a_resume_and_a_restore(toy_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A killed keep-last run resumed writes the weights an uninterrupted one writes (the last
    epoch's, not the best one's), and a finished run whose model was deleted restores the same
    bytes; an interrupted keep-last run resumed under keep best goes on training and writes the
    best epoch's weights (keep chooses only what is written, see the test below)."""
    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    params = {**TOY, "train": {**TOY["train"], "epochs": 3, "samples_per_epoch": 64, "keep": "last"}}
    cfg = resolve_config(params, "initial")
    _falling_val_acc(monkeypatch, [0.9, 0.8, 0.7])
    whole = _paths(tmp_path / "whole", "initial")
    train("initial", toy_run["h5"], cfg, whole, progress=False)
    _falling_val_acc(monkeypatch, [0.9, 0.8, 0.7])
    paths = _paths(tmp_path / "killed", "initial")
    monkeypatch.setenv(ABORT_ENV, "6")  # in epoch 2 (4 steps per epoch)
    with pytest.raises(KeyboardInterrupt):
        train("initial", toy_run["h5"], cfg, paths, progress=False)
    monkeypatch.delenv(ABORT_ENV)
    summary = train("initial", toy_run["h5"], cfg, paths, progress=False)
    assert "resuming initial" in capsys.readouterr().err
    assert (summary["saved_epoch"], summary["best_epoch"], summary["val_acc"]) == (3, 1, 0.7)
    assert paths.out.read_bytes() == whole.out.read_bytes()
    last = load_checkpoint(paths.checkpoints / "last.pt")["model"]
    assert all(torch.equal(v, last[k]) for k, v in load_model(paths.out)[0].state_dict().items())
    want = paths.out.read_bytes()
    paths.out.unlink()
    train("initial", toy_run["h5"], cfg, paths, progress=False)
    assert "was restored" in capsys.readouterr().err
    assert paths.out.read_bytes() == want
    # an interrupted keep-last run resumed under keep best goes on, and writes the best epoch's weights
    best = resolve_config({**params, "train": {**params["train"], "keep": "best"}}, "initial")
    _falling_val_acc(monkeypatch, [0.9, 0.8, 0.7])
    monkeypatch.setenv(ABORT_ENV, "6")
    k2 = _paths(tmp_path / "k2", "initial")
    with pytest.raises(KeyboardInterrupt):
        train("initial", toy_run["h5"], cfg, k2, progress=False)
    monkeypatch.delenv(ABORT_ENV)
    capsys.readouterr()
    summary = train("initial", toy_run["h5"], best, k2, progress=False)
    err = capsys.readouterr().err
    assert "resuming initial" in err and "starting afresh" not in err
    assert (summary["saved_epoch"], summary["best_epoch"], summary["val_acc"]) == (1, 1, 0.9)
    net, meta = load_model(k2.out)
    assert (meta["saved_epoch"], meta["params"]["keep"]) == (1, "best")
    whole_best = load_checkpoint(whole.checkpoints / "best.pt")["model"]  # the same steps: the same best epoch
    assert all(torch.equal(v, whole_best[k]) for k, v in net.state_dict().items())


@pytest.mark.parametrize("removed", [True, False], ids=["outputs-removed", "outputs-in-place"])
def test_a_finished_run_restored_under_another_keep_writes_its_weights_without_training(
        toy_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
        removed: bool) -> None:
    """train.keep was in the run's fingerprint: a finished keep-last run whose outputs were
    deleted (as dvc repro does when keep changes) trained all its epochs again under keep best,
    though last.pt holds the best epoch's weights. Now it is restored: no epoch runs, the model
    is best.pt's weights, saved_epoch the best epoch; and back under keep last, last.pt's own.
    A rerun by hand with only keep changed and the model still in place trained from scratch
    (the restore needed the outputs gone): it is restored so too; the same keep again, the
    outputs in place, still trains from scratch."""
    from bafusion.nets import train as train_mod

    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    params = {**TOY, "train": {**TOY["train"], "epochs": 3, "samples_per_epoch": 64, "keep": "last"}}
    last_cfg = resolve_config(params, "initial")
    best_cfg = resolve_config({**params, "train": {**params["train"], "keep": "best"}}, "initial")
    _falling_val_acc(monkeypatch, [0.9, 0.8, 0.7])  # epoch 1 stays the best
    paths = _paths(tmp_path, "initial")
    train("initial", toy_run["h5"], last_cfg, paths, progress=False)

    def no_epoch(*args, **kwargs):
        raise AssertionError("an epoch was trained again")

    monkeypatch.setattr(train_mod, "evaluate", no_epoch)
    for cfg, keep, epoch, acc, ckpt in ((best_cfg, "best", 1, 0.9, "best.pt"), (last_cfg, "last", 3, 0.7, "last.pt")):
        if removed:
            for p in (paths.out, paths.out.with_suffix(".json"), paths.metrics, paths.plots):
                p.unlink()
        capsys.readouterr()
        summary = train("initial", toy_run["h5"], cfg, paths, progress=False)
        err = capsys.readouterr().err
        assert "was restored" in err and "starting afresh" not in err and "from scratch" not in err, err
        was = "best" if keep == "last" else "last"
        assert f'train.keep "{was}" -> "{keep}"' in err, err
        assert (summary["saved_epoch"], summary["best_epoch"], summary["val_acc"]) == (epoch, 1, acc)
        net, meta = load_model(paths.out)
        assert (meta["saved_epoch"], meta["params"]["keep"]) == (epoch, keep)
        want = load_checkpoint(paths.checkpoints / ckpt)["model"]
        assert all(torch.equal(v, want[k]) for k, v in net.state_dict().items())
        assert json.loads(paths.metrics.read_text())["saved_epoch"] == epoch
        assert load_checkpoint(paths.checkpoints / "last.pt")["config"]["keep"] == keep  # what the outputs hold
    if not removed:  # the same keep, the outputs in place: a rerun by hand trains again, as before
        with pytest.raises(AssertionError, match="an epoch was trained again"):
            train("initial", toy_run["h5"], last_cfg, paths, progress=False)
        assert "belongs to a finished run (its model was written); training from scratch" in capsys.readouterr().err


def test_the_keep_an_output_was_written_under_is_its_own_not_the_shared_checkpoints(
        toy_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """last.pt records the keep of the last run that wrote outputs from it: two trainings of one
    fingerprint sharing --checkpoints with different --out took the other's keep for their own.
    A (keep best), then B (keep last) restored from the same last.pt, then A under keep last:
    "its model was written; training from scratch" (every epoch again, though a.pt held the best
    epoch's weights, not the last ones asked for); B under keep best, then A under keep last
    again (a.pt written so): restored 'train.keep "best" -> "last"', a change A never had. Now
    each --out's own description decides."""
    from bafusion.nets import train as train_mod

    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    params = {**TOY, "train": {**TOY["train"], "epochs": 3, "samples_per_epoch": 64, "keep": "last"}}
    last_cfg = resolve_config(params, "initial")
    best_cfg = resolve_config({**params, "train": {**params["train"], "keep": "best"}}, "initial")
    _falling_val_acc(monkeypatch, [0.9, 0.8, 0.7])  # epoch 1 stays the best
    shared = tmp_path / "ck"
    a, b = (dataclasses.replace(_paths(tmp_path / x, "initial"), checkpoints=shared) for x in ("a", "b"))
    train("initial", toy_run["h5"], best_cfg, a, progress=False)

    def no_epoch(*args, **kwargs):
        raise AssertionError("an epoch was trained again")

    monkeypatch.setattr(train_mod, "evaluate", no_epoch)
    last_weights = load_checkpoint(shared / "last.pt")["model"]

    def restored(cfg: TrainConfig, paths: Paths, change: str) -> None:
        capsys.readouterr()
        train("initial", toy_run["h5"], cfg, paths, progress=False)
        err = capsys.readouterr().err
        assert "was restored" in err and change in err and "from scratch" not in err, err
        net, meta = load_model(paths.out)
        assert meta["params"]["keep"] == cfg.keep
        if cfg.keep == "last":
            assert all(torch.equal(v, last_weights[k]) for k, v in net.state_dict().items())

    restored(last_cfg, b, "")  # b's outputs are missing: written from last.pt (it says keep last now)
    restored(last_cfg, a, 'train.keep "best" -> "last"')  # a.pt holds the best epoch's weights
    restored(best_cfg, b, 'train.keep "last" -> "best"')  # last.pt says keep best now
    # a.pt was written under keep last: the same keep, the outputs in place, trains again
    with pytest.raises(AssertionError, match="an epoch was trained again"):
        train("initial", toy_run["h5"], last_cfg, a, progress=False)
    assert "belongs to a finished run (its model was written); training from scratch" in capsys.readouterr().err


def test_a_finished_run_whose_out_another_training_replaced_is_restored(
        toy_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The model's description recorded no fingerprint: another training (other parameters, its
    own --checkpoints) that wrote the same --out under the same keep made a rerun of the first
    one, beside its finished last.pt, take that model for its own ("its model was written;
    training from scratch": every epoch again). The description now records the fingerprint:
    the rerun restores last.pt's model without training, saying why. A description without one
    (an earlier version's) is still read: trusted as before, its keep still counted."""
    from bafusion.nets import train as train_mod

    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    params = {**TOY, "train": {**TOY["train"], "epochs": 2, "samples_per_epoch": 64}}
    mine = resolve_config(params, "initial")
    other = resolve_config({**params, "train": {**params["train"], "lr": 0.02}}, "initial")
    a = _paths(tmp_path / "a", "initial")
    b = dataclasses.replace(a, checkpoints=tmp_path / "b" / "checkpoints")
    train("initial", toy_run["h5"], mine, a, progress=False)
    fp = load_checkpoint(a.checkpoints / "last.pt")["fingerprint"]
    assert json.loads(a.out.with_suffix(".json").read_text())["fingerprint"] == fp
    want = a.out.read_bytes()
    train("initial", toy_run["h5"], other, b, progress=False)  # over a's --out, the same keep
    assert a.out.read_bytes() != want
    assert json.loads(a.out.with_suffix(".json").read_text())["fingerprint"] not in (fp, None)

    def no_epoch(*args, **kwargs):
        raise AssertionError("an epoch was trained again")

    monkeypatch.setattr(train_mod, "evaluate", no_epoch)
    capsys.readouterr()
    train("initial", toy_run["h5"], mine, a, progress=False)
    err = capsys.readouterr().err
    assert "was restored" in err and f"{a.out} holds another training's model (fingerprint" in err, err
    assert "from scratch" not in err, err
    assert a.out.read_bytes() == want
    assert json.loads(a.out.with_suffix(".json").read_text())["fingerprint"] == fp
    # an earlier version's description, without a fingerprint: read as before (its keep counts)
    meta = json.loads(a.out.with_suffix(".json").read_text())
    del meta["fingerprint"]
    a.out.with_suffix(".json").write_text(json.dumps({**meta, "params": {**meta["params"], "keep": "last"}}))
    capsys.readouterr()
    train("initial", toy_run["h5"], mine, a, progress=False)
    err = capsys.readouterr().err
    assert "was restored" in err and 'train.keep "last" -> "best"' in err and "another training" not in err, err
    with pytest.raises(AssertionError, match="an epoch was trained again"):  # this run's own outputs: as before
        train("initial", toy_run["h5"], mine, a, progress=False)


def _processes_of(marker: str) -> list[int]:
    """Pids of the processes whose command line holds ``marker`` (Linux /proc)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker in (d / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def _nproc2_cmd(h5: Path, tmp_path: Path, *extra: str, epochs: int = 2) -> list[str]:
    params = {**TOY, "train": {**TOY["train"], "epochs": epochs, "checkpoint_every": 5}}
    return [sys.executable, "-m", "bafusion.cli", "train", "--net", "initial", "--patches", str(h5),
            "--out", str(tmp_path / "initial.pt"), "--params-json", json.dumps(params), "--nproc", "2",
            "--threads", "1", "--checkpoints", str(tmp_path / "ck"), "--metrics", str(tmp_path / "m.json"),
            "--plots", str(tmp_path / "p.csv"), "--no-progress", *extra]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG")
@pytest.mark.parametrize("how", ["sigterm", "sigkill", "worker"])
def test_a_stopped_multi_process_run_leaves_no_process_behind(toy_run: dict, tmp_path: Path, how: str) -> None:
    """SIGTERM or SIGINT to ``train --nproc 2`` killed torchrun (subprocess.run's answer) and
    left its workers running: they wrote the model after the command had said 'terminated';
    a SIGKILLed command left torchrun and the workers. Now the workers stop with the command
    (a checkpoint to resume, no outputs); a killed worker is one line, not tracebacks."""
    import signal
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1", "BAFUSION_MLFLOW": "0"}
    proc = subprocess.Popen(_nproc2_cmd(toy_run["h5"], tmp_path, epochs=200), env=env, cwd=tmp_path,
                            stderr=subprocess.PIPE, text=True)
    marker = str(tmp_path / "initial.pt")
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "ck" / "last.pt").exists():  # training, a checkpoint written
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        workers = [p for p in _processes_of(marker) if p != proc.pid]
        assert len(workers) >= 3  # the launcher and two workers
        if how == "worker":
            os.kill(max(workers), signal.SIGKILL)
        else:
            proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        deadline = time.monotonic() + 20
        while _processes_of(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _processes_of(marker) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    lines = [ln for ln in err.splitlines() if "epoch" not in ln and "train patches" not in ln]
    if how == "sigterm":
        # the workers wrote last.pt during this run: a rerun resumes from it
        assert proc.returncode == 143 and lines == [
            f"bafusion train: terminated; rerun the same command: it resumes from {tmp_path / 'ck' / 'last.pt'}"], err
    elif how == "sigkill":
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 128 + signal.SIGKILL, err
        assert len(lines) == 1 and re.fullmatch(
            r"bafusion train: error: a training process \(rank \d, pid \d+\) ended by SIGKILL; the others were "
            r"stopped \(run the command again to resume from the last checkpoint\)", lines[0]), err
    time.sleep(1)
    assert not (tmp_path / "initial.pt").exists() and not (tmp_path / "m.json").exists()
    assert (tmp_path / "ck" / "last.pt").exists()


def test_multi_process_errors_are_one_line(toy_run: dict, tmp_path: Path) -> None:
    """A user error of a ``--nproc 2`` run was said by every process, followed by torchrun's
    log lines and ChildFailedError traceback, status 1; a busy checkpoint folder hung the other
    process 30 s. Now: one line, status 2, as with one process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BAFUSION_MLFLOW": "0"}
    res = subprocess.run(_nproc2_cmd(toy_run["h5"], tmp_path, "--set", "patch=20"), env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stderr.splitlines() == [
        f"bafusion train: error: {toy_run['h5']}: holds 16x16 patches but the parameters ask for patch=20"]
    ck = tmp_path / "ck"
    with checkpoints_lock(ck):
        res = subprocess.run(_nproc2_cmd(toy_run["h5"], tmp_path), env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stderr.splitlines() == [
        f"bafusion train: error: {ck}: another training (process {os.getpid()}) is using this checkpoint folder "
        "(wait for it to end, or give --checkpoints another folder)"]
    assert not (tmp_path / "initial.pt").exists()


def test_a_resume_with_another_number_of_processes_says_so(toy_run: dict, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint of a 1-process run resumed with --nproc 2 starts afresh (the world size is
    in the fingerprint by design); the message blamed 'other parameters or another patch set'."""
    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    cfg = resolve_config({**TOY, "train": {**TOY["train"], "checkpoint_every": 5}}, "initial")
    monkeypatch.setenv(ABORT_ENV, "6")
    with pytest.raises(KeyboardInterrupt):
        train("initial", toy_run["h5"], cfg, Paths(out=tmp_path / "initial.pt", checkpoints=tmp_path / "ck",
                                                  metrics=tmp_path / "m.json", plots=tmp_path / "p.csv"),
              progress=False)
    monkeypatch.delenv(ABORT_ENV)
    assert load_checkpoint(tmp_path / "ck" / "last.pt")["world_size"] == 1
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BAFUSION_MLFLOW": "0"}
    res = subprocess.run(_nproc2_cmd(toy_run["h5"], tmp_path, "--restart-if-changed", epochs=2), env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (f"bafusion train: {tmp_path / 'ck' / 'last.pt'} was written by a run with 1 process(es); this run has 2 "
            "(the number of processes changes the weights); starting afresh") in _unstamped(res.stderr), res.stderr


def test_model_and_checkpoint_files_keep_their_zip_root_and_their_bytes(tmp_path: Path) -> None:
    # torch.save names the zip's root folder after the file name less its last suffix: written as
    # `<name>.part`, the files have had root `<name>/` (models/default/initial.pt: `initial.pt/`);
    # a temporary name of random letters would make their bytes differ from run to run (dvc.lock)
    import zipfile

    from bafusion.nets.train import save_checkpoint

    torch.manual_seed(0)
    net = build_model(8)
    for d in ("a", "b"):
        save_model(net, tmp_path / d / "initial.pt")
        save_checkpoint(tmp_path / d / "last.pt", {"x": torch.arange(3)})
    for name in ("initial.pt", "last.pt"):
        assert zipfile.ZipFile(tmp_path / "a" / name).namelist()[0] == f"{name}/data.pkl"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["initial.json", "initial.pt", "last.pt"]
    shipped = Path(__file__).resolve().parents[1] / "models" / "default" / "initial.pt"
    assert zipfile.ZipFile(shipped).namelist()[0] == "initial.pt/data.pkl"


def test_model_json_records_its_format_and_a_newer_format_is_refused(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    """The model description carried no format version (``bafusion.__version__`` never
    changes), so a file of a later, incompatible format would be misread. New descriptions
    record "format"; one without it (every shipped model) is format 1; a newer format is
    refused naming the file; the .pt's bytes do not change."""
    from bafusion.nets.model import MODEL_FORMAT

    torch.manual_seed(0)
    net = build_model(8)
    save_model(net, tmp_path / "a" / "initial.pt", {"patch": 12, "net": "initial"})
    desc = json.loads((tmp_path / "a" / "initial.json").read_text())
    assert desc["format"] == MODEL_FORMAT == 1 and isinstance(desc["format"], int)
    loaded, meta = load_model(tmp_path / "a" / "initial.pt")
    assert meta["format"] == 1 and meta["patch"] == 12
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in net.state_dict().items())
    # shipped models have no "format": read as format 1
    for shipped in ("initial", "boundary"):
        path = Path(__file__).resolve().parents[1] / "models" / "default" / f"{shipped}.pt"
        assert "format" not in json.loads(path.with_suffix(".json").read_text())
        load_model(path)
    # a newer format: refused, naming the file, from the API and from fuse
    shutil.copytree(tmp_path / "a", tmp_path / "new")
    desc["format"] = MODEL_FORMAT + 1
    (tmp_path / "new" / "initial.json").write_text(json.dumps(desc))
    with pytest.raises(ModelFileError, match=r"new/initial\.json: model file format 2, written by a newer "
                                             r"bafusion .*upgrade"):
        load_model(tmp_path / "new" / "initial.pt")
    for bad in ("2", 1.5, True, 0):
        desc["format"] = bad
        (tmp_path / "new" / "initial.json").write_text(json.dumps(desc))
        with pytest.raises(ModelFileError, match=r"initial\.json: 'format' is .*not a model file format"):
            load_model(tmp_path / "new" / "initial.pt")
    desc["format"] = MODEL_FORMAT + 1
    (tmp_path / "new" / "initial.json").write_text(json.dumps(desc))
    save_model(net, tmp_path / "new" / "boundary.pt", {"patch": 12, "net": "boundary"})
    from PIL import Image

    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "x.png")
    Image.fromarray(np.full((20, 20), 9, np.uint8)).save(tmp_path / "y.png")
    rc = cli.main(["fuse", str(tmp_path / "x.png"), str(tmp_path / "y.png"), "-o", str(tmp_path / "f.png"),
                   "--model", str(tmp_path / "new"), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "initial.json: model file format 2, written by a newer bafusion" in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("saved", [False, True])
def test_an_interrupted_train_says_how_to_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture, saved: bool) -> None:
    """"bafusion train: interrupted" said nothing of what next: it says to rerun the same
    command and the checkpoint it resumes from (or that none was saved yet)."""
    import bafusion.cli.train as cli_train
    from bafusion.cli import main as cli_main

    ck = tmp_path / "ck"
    if saved:
        ck.mkdir()
        (ck / "last.pt").write_bytes(b"a checkpoint")

    def stopped(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_train, "_config_from_args", stopped)
    (tmp_path / "p.h5").write_bytes(b"")
    rc = cli_main(["train", "--net", "initial", "--patches", str(tmp_path / "p.h5"), "-o", str(tmp_path / "m.pt"),
                   "--checkpoints", str(ck)])
    assert rc == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    if saved:
        assert last == f"bafusion train: interrupted; rerun the same command: it resumes from {ck / 'last.pt'}"
    else:
        assert last == ("bafusion train: interrupted; rerun the same command: no checkpoint was saved yet by this run, "
                        "so it starts afresh")


def test_a_train_stopped_after_its_run_finished_says_a_rerun_restores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture) -> None:
    """Stopped after it had marked last.pt finished (while MLflow ended the run), it said "no
    checkpoint was saved yet by this run, so it starts afresh": the rerun writes the model
    again from last.pt, should the outputs be gone."""
    import bafusion.cli.train as cli_train
    from bafusion.cli import main as cli_main
    from bafusion.nets.train import CHECKPOINT_FORMAT, save_checkpoint

    ck = tmp_path / "ck"

    def stopped(*args: object, **kwargs: object) -> None:
        save_checkpoint(ck / "last.pt", {"format": CHECKPOINT_FORMAT, "finished": True})
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_train, "_config_from_args", stopped)
    (tmp_path / "p.h5").write_bytes(b"")
    rc = cli_main(["train", "--net", "initial", "--patches", str(tmp_path / "p.h5"), "-o", str(tmp_path / "m.pt"),
                   "--checkpoints", str(ck)])
    assert rc == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (f"bafusion train: interrupted; the run had finished ({ck / 'last.pt'} says so): should its "
                    "outputs be gone, rerun the same command: it writes the model again from it, without training")


def test_the_pipelines_own_training_trains_over_its_checkpoint_of_other_parameters(
        toy_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline's training (--out data/models/<net>.pt, --checkpoints data/checkpoints/<net>,
    as the rules run it) retrains after a parameter edit over its own interrupted checkpoint
    without --restart-if-changed: the rules' commands stay as they were, so Snakemake's "code
    changed" trigger does not retrain a project after an upgrade; a run by hand elsewhere is
    refused (test above)."""
    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    monkeypatch.chdir(tmp_path)
    ck = Path("data/checkpoints/initial")
    cfg = resolve_config({**TOY, "train": {**TOY["train"], "checkpoint_every": 5}}, "initial")
    monkeypatch.setenv(ABORT_ENV, "6")  # an interrupted run of the pipeline
    with pytest.raises(KeyboardInterrupt):
        train("initial", toy_run["h5"], cfg, Paths(out=Path("data/models/initial.pt"), checkpoints=ck,
                                                  metrics=tmp_path / "m.json", plots=tmp_path / "p.csv"),
              progress=False)
    monkeypatch.delenv(ABORT_ENV)
    capsys.readouterr()
    params = {**TOY, "train": {**TOY["train"], "epochs": 1, "samples_per_epoch": 64, "lr": 0.02}}
    argv = ["train", "--net", "initial", "--patches", str(toy_run["h5"]), "--out", "data/models/initial.pt",
            "--params-json", json.dumps(params), "--checkpoints", str(ck), "--metrics", str(tmp_path / "m.json"),
            "--plots", str(tmp_path / "p.csv"), "--no-progress"]
    assert cli.main(argv) == 0
    assert "starting afresh" in capsys.readouterr().err
    assert load_checkpoint(ck / "last.pt")["config"]["lr"] == 0.02
    rules = (Path(__file__).parents[1] / "workflow" / "rules" / "train.smk").read_text()
    assert "--restart-if-changed" not in rules  # the rules' shell is unchanged: no "code changed" retrain


@pytest.mark.parametrize("case", ["no-resume over an older run's", "a finished run's", "no-resume, saved by this run"])
def test_an_interrupted_train_resumes_only_from_what_a_rerun_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture, case: str) -> None:
    """The stop advice only looked whether last.pt existed: with --no-resume over an older run's
    last.pt, stopped before its first save, it said "rerun it without --no-resume: it resumes
    from last.pt" (the run the user chose to throw away), and a finished run's last.pt (never
    resumed) also got "resumes from". Only a last.pt that a rerun resumes is named."""
    import os
    import time

    import bafusion.cli.train as cli_train
    from bafusion.cli import main as cli_main
    from bafusion.nets.train import CHECKPOINT_FORMAT, save_checkpoint

    ck = tmp_path / "ck"
    ck.mkdir()
    last_pt = ck / "last.pt"
    if case != "no-resume, saved by this run":
        save_checkpoint(last_pt, {"format": CHECKPOINT_FORMAT, "finished": case == "a finished run's"})
        old = time.time() - 3600
        os.utime(last_pt, (old, old))

    def stopped(*args: object, **kwargs: object) -> None:
        if case == "no-resume, saved by this run":
            save_checkpoint(last_pt, {"format": CHECKPOINT_FORMAT})
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_train, "_config_from_args", stopped)
    (tmp_path / "p.h5").write_bytes(b"")
    rc = cli_main(["train", "--net", "initial", "--patches", str(tmp_path / "p.h5"), "-o", str(tmp_path / "m.pt"),
                   "--checkpoints", str(ck), *([] if case == "a finished run's" else ["--no-resume"])])
    assert rc == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    if case == "no-resume, saved by this run":
        assert last == f"bafusion train: interrupted; rerun it without --no-resume: it resumes from {last_pt}"
    elif case == "a finished run's":  # stopped before its parameters were read: what a rerun does is not known yet
        assert last == ("bafusion train: interrupted; rerun the same command: no checkpoint was saved yet by this run, "
                        f"so it trains from scratch, or, if {last_pt} is a finished run of the same parameters and "
                        "settings whose outputs are missing or were written under another train.keep, writes that "
                        "run's model again without training")
    else:
        assert last == ("bafusion train: interrupted; rerun the same command: no checkpoint was saved yet by this run, "
                        "so it starts afresh")


def test_a_worker_stopped_by_sighup_is_no_worker_error() -> None:
    """A worker stopped by SIGHUP (``kill -HUP -<pgid>``, a closed terminal) ends with 129, which
    counted as the worker's own error (returned unsaid); like 130 and 143 it is said as a stop."""
    import io
    import signal
    from types import SimpleNamespace

    from bafusion.cli.train import _failure_status

    err = io.StringIO()
    failures = {0: SimpleNamespace(exitcode=128 + signal.SIGHUP, timestamp=1, pid=11),
                1: SimpleNamespace(exitcode=128 + signal.SIGTERM, timestamp=2, pid=12)}
    assert _failure_status(failures, err) == 128 + signal.SIGHUP
    assert "a training process (rank 0, pid 11) ended by SIGHUP; the others were stopped" in err.getvalue()


def test_checkpoints_lock_goes_on_without_locks_where_the_filesystem_has_none(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """On NFS without lockd ``flock`` raises ENOLCK: train ended with "internal error". It now
    goes on without the lock and says so once."""
    import errno
    import fcntl

    def no_locks(fh, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    ck = tmp_path / "nfs-ck"
    with checkpoints_lock(ck):
        assert ck.is_dir() and not (ck / "train.lock").exists()
        (ck / "last.pt").write_bytes(b"x")
    with checkpoints_lock(ck):
        pass
    err = capsys.readouterr().err
    assert err.count("does not support locks") == 1, err
    assert f"{ck}: this filesystem does not support locks (ENOLCK): two runs into it are not kept apart" in err, err
    assert sorted(p.name for p in ck.iterdir()) == ["last.pt"]
    with checkpoints_lock(tmp_path / "empty"):
        pass
    assert not (tmp_path / "empty").exists()  # a folder it created is removed when left empty


@pytest.mark.parametrize("case", ["restart-if-changed, other parameters", "restart-if-changed, same parameters",
                                  "other parameters", "restart-if-changed, other code", "other code",
                                  "restart-if-changed, other processes", "other processes"])
def test_an_interrupted_train_over_a_checkpoint_of_other_parameters_does_not_say_it_resumes(
        toy_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        case: str) -> None:
    """With --restart-if-changed over an older run's last.pt of other parameters, stopped before
    its first save, the advice said "rerun the same command: it resumes from last.pt", but the
    rerun starts afresh over it (and without the option refuses it). Only a last.pt of this
    run's parameters is said to be resumed; one of another is said to be of what differs, as
    train's refusal says it (only the number of processes was said as "other parameters")."""
    import time

    import bafusion.cli.train as cli_train

    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    ck = tmp_path / "ck"
    params = {**TOY, "train": {**TOY["train"], "checkpoint_every": 5}}
    monkeypatch.setenv(ABORT_ENV, "6")  # an older interrupted run
    with pytest.raises(KeyboardInterrupt):
        train("initial", toy_run["h5"], resolve_config(params, "initial"),
              Paths(out=tmp_path / "m.pt", checkpoints=ck, metrics=tmp_path / "metrics.json", plots=tmp_path / "p.csv"),
              progress=False)
    monkeypatch.delenv(ABORT_ENV)
    if "code" in case:  # written by other training code (an upgrade), of the same parameters
        from bafusion.nets.train import save_checkpoint

        state = load_checkpoint(ck / "last.pt")
        save_checkpoint(ck / "last.pt", {**state, "fingerprint": "1" * 64, "code_digest": "0" * 64})
    old = time.time() - 3600
    os.utime(ck / "last.pt", (old, old))
    capsys.readouterr()

    def stopped(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # stopped before this run saved a checkpoint

    monkeypatch.setattr(cli_train, "train", stopped)
    if "other parameters" in case:
        params = {**TOY, "train": {**TOY["train"], "lr": 0.02}}
    if "processes" in case:  # the same parameters, in a process of a 2-process run (as torchrun starts it)
        monkeypatch.setenv("WORLD_SIZE", "2")
    rc = cli.main(["train", "--net", "initial", "--patches", str(toy_run["h5"]), "--out", str(tmp_path / "m.pt"),
                   "--params-json", json.dumps(params), "--checkpoints", str(ck), "--metrics",
                   str(tmp_path / "metrics.json"), "--plots", str(tmp_path / "p.csv"), "--no-progress",
                   *(["--restart-if-changed"] if "restart" in case else [])])
    assert rc == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    # what differs, as train's refusal says it (only the number of processes: "other parameters" was said)
    what = ("of a run with 1 process(es); this run has 2 (the number of processes changes the weights)"
            if "processes" in case else "of other parameters or another patch set (train.lr 0.01 -> 0.02)")
    if case == "restart-if-changed, same parameters":
        assert last == f"bafusion train: interrupted; rerun the same command: it resumes from {ck / 'last.pt'}"
    elif case in ("restart-if-changed, other parameters", "restart-if-changed, other processes"):
        assert last == ("bafusion train: interrupted; rerun the same command: no checkpoint was saved yet by this run, "
                        f"so it starts afresh (over {ck / 'last.pt'}, {what})")
    elif case in ("other parameters", "other processes"):
        assert last == (f"bafusion train: interrupted; {ck / 'last.pt'} is {what}, "
                        "and the same command refuses it: pass --checkpoints DIR for a separate training, or "
                        "--restart-if-changed to replace it")
    else:  # the training code changed, not the parameters: said as train's refusal says it
        code = ("of other training code (the training code changed since this checkpoint was written: bafusion was "
                "upgraded or edited)")
        assert last == ("bafusion train: interrupted; rerun the same command: no checkpoint was saved yet by this run, "
                        f"so it starts afresh (over {ck / 'last.pt'}, {code})" if "restart" in case else
                        f"bafusion train: interrupted; {ck / 'last.pt'} is {code}, and the same command refuses it: "
                        "pass --checkpoints DIR for a separate training, or --restart-if-changed to replace it")


@pytest.mark.parametrize("init", [False, True])
def test_what_changed_names_only_what_can_have_changed(tmp_path: Path, init: bool) -> None:
    """The refusal of a checkpoint whose recorded parameters and patch set match (or of an older
    version's, without a recorded patch set) named "the --init weights" for a run without
    train.init (and there is no --init option), and left them out of the older checkpoint's
    fallback: it names the training code, the patch set where unrecorded, and the weights of
    train.init only where a run has one."""
    from bafusion.nets.train import _what_changed

    params = {**TOY, "train": {**TOY["train"], **({"init": str(tmp_path / "w.pt")} if init else {})}}
    cfg = resolve_config(params, "initial")
    ck = {"config": cfg.to_dict(), "net": "initial"}
    w = f"the weights of train.init={tmp_path / 'w.pt'}"
    assert _what_changed({**ck, "patches_digest": "d"}, cfg, "initial", "d") == \
        (f"the training code or {w}" if init else "the training code")
    assert _what_changed(ck, cfg, "initial", "d") == \
        (f"the patch set, the training code or {w}" if init else "the patch set or the training code")
    assert _what_changed({**ck, "patches_digest": "e"}, cfg, "initial", "d") == "the patch set"


def test_what_changed_names_top_level_keys_as_params_yaml_does() -> None:
    """seed, patch and depth are top-level parameters (params.yaml's ``seed:``, ``--set seed=8``),
    but the refusal named them ``train.seed`` / ``train.depth``, keys that do not exist."""
    from bafusion.nets.train import _what_changed

    cfg = resolve_config(TOY, "initial")
    ck = {"config": cfg.to_dict(), "net": "initial", "patches_digest": "d"}
    new = resolve_config({**TOY, "seed": 8, "depth": 14, "train": {**TOY["train"], "lr": 0.02}}, "initial")
    assert _what_changed(ck, new, "initial", "d") == "depth 8 -> 14, seed 7 -> 8, train.lr 0.01 -> 0.02"


def test_what_changed_names_a_per_net_value_by_its_per_net_key(tmp_path: Path) -> None:
    """A value set in the net's own section (``train: {initial: {lr: ...}}``, ``--set
    train.initial.lr=``) was named ``train.lr``, a key the user had not touched (TrainConfig did
    not record where a value came from); it is named by the key that set it, the section's
    keys by theirs."""
    from bafusion.nets.train import _what_changed

    cfg = resolve_config(TOY, "initial")
    ck = {"config": cfg.to_dict(), "net": "initial", "patches_digest": "d"}
    new = resolve_config({**TOY, "train": {**TOY["train"], "gamma": 0.25, "initial": {"lr": 0.02}}}, "initial")
    assert _what_changed(ck, new, "initial", "d") == "train.gamma 0.5 -> 0.25, train.initial.lr 0.01 -> 0.02"
    # the other net's section does not apply to this one, nor name its keys
    other = resolve_config({**TOY, "train": {**TOY["train"], "lr": 0.02, "boundary": {"lr": 0.5}}}, "initial")
    assert _what_changed(ck, other, "initial", "d") == "train.lr 0.01 -> 0.02"
    w = tmp_path / "w.pt"
    warm = resolve_config({**TOY, "train": {**TOY["train"], "initial": {"init": str(w)}}}, "initial")
    assert _what_changed({**ck, "config": warm.to_dict()}, warm, "initial", "d") == \
        f"the training code or the weights of train.initial.init={w}"
    assert warm.key("init") == "train.initial.init" and warm.key("seed") == "seed" and warm.key("lr") == "train.lr"


def test_refusals_name_a_per_net_value_by_its_per_net_key(toy_run: dict, tmp_path: Path) -> None:
    """The refusals and restore reasons that name a parameter said ``train.init``, ``train.consistency``,
    ``train.compile`` for a value set as ``train.initial.init`` (...): the key that set it now."""
    from bafusion.nets.train import _weight_settings_changed

    init = tmp_path / "init" / "initial.pt"
    init.parent.mkdir()
    shutil.copy2(toy_run["paths"].out, init)
    shutil.copy2(toy_run["paths"].out.with_suffix(".json"), init.with_suffix(".json"))
    cfg = resolve_config({**TOY, "train": {**TOY["train"], "initial": {"init": str(init)}}}, "initial")
    with pytest.raises(UserError, match=r"would overwrite the warm-start model train\.initial\.init="):
        train("initial", toy_run["h5"], cfg, dataclasses.replace(_paths(tmp_path / "run", "initial"), out=init),
              progress=False)
    cfg = resolve_config({**TOY, "train": {**TOY["train"], "initial": {"consistency": 1.0}}}, "initial")
    with pytest.raises(UserError, match=r"^train\.initial\.consistency=1\.0 needs patches with surroundings"):
        train("initial", toy_run["h5"], cfg, _paths(tmp_path / "no", "initial"), progress=False)
    cfg = resolve_config({**TOY, "train": {**TOY["train"], "boundary": {"compile": False}}}, "boundary")
    ck = {"config": {**cfg.to_dict(), "compile": True}}
    assert _weight_settings_changed(ck, cfg, torch.device("cpu"), threads=False) == [
        "train.boundary.compile true, now false"]


def test_the_train_job_refuses_an_uneven_batch_in_the_parameter_checks_words(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                            capsys: pytest.CaptureFixture) -> None:
    """The parameter check said "train.batch: 32 is not divisible by train.nproc: 3 (...)", the
    train job (its command before torchrun, and each process after it) "train.batch=32 must be
    divisible by the number of processes (3)": one message now, from one function."""
    from bafusion.cli.params_check import check_params
    from bafusion.config import deep_merge, load_params
    from bafusion.nets.train import Dist, _train

    repo = Path(__file__).resolve().parents[1]
    with pytest.raises(UserError) as e:
        check_params(deep_merge(load_params(repo / "params.yaml"), {"train": {"batch": 32, "nproc": 3}}), "p.yaml")
    words = str(e.value).removeprefix("p.yaml: ")
    assert words == ("train.batch: 32 is not divisible by train.nproc: 3 (the global batch is split evenly over the "
                     "training processes)"), words
    monkeypatch.chdir(tmp_path)
    base = ["train", "--net", "initial", "--patches", "p.h5", "--out", "m.pt", "--params-json", json.dumps(TOY)]
    assert cli.main([*base, "--set", "train.batch=32", "--set", "train.nproc=3"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"bafusion train: error: {words}"]
    # in each torchrun process (the world size: train.nproc auto there)
    cfg = resolve_config({**TOY, "train": {**TOY["train"], "batch": 32, "nproc": 3}}, "initial")
    with pytest.raises(UserError) as e:
        _train("initial", tmp_path / "p.h5", cfg, _paths(tmp_path / "run", "initial"), False, False,
               Dist(rank=0, world_size=3), torch.device("cpu"), None)
    assert str(e.value) == words
    cfg = resolve_config({**TOY, "train": {**TOY["train"], "batch": 32, "nproc": "auto"}}, "initial")
    with pytest.raises(UserError) as e:
        _train("initial", tmp_path / "p.h5", cfg, _paths(tmp_path / "run", "initial"), False, False,
               Dist(rank=0, world_size=3), torch.device("cpu"), None)
    assert str(e.value) == words.replace("train.nproc: 3", "train.nproc: auto, 3 processes here")


@pytest.mark.skipif(getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
                    reason="the refusal needs a machine without MPS")
def test_the_command_names_a_per_net_batch_or_device_by_its_per_net_key(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``bafusion train`` checked the batch against --nproc itself and said "train.batch=30 must be
    divisible" for ``--set train.initial.batch=30``; a device set as ``train.boundary.device`` was
    refused as "train.device='mps'"; and after ``--device`` the restore reasons named the per-net key."""
    monkeypatch.chdir(tmp_path)
    base = ["train", "--patches", "p.h5", "--out", "m.pt", "--params-json", json.dumps(TOY)]
    assert cli.main([*base, "--net", "initial", "--set", "train.initial.batch=30", "--nproc", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["bafusion train: error: train.initial.batch: 30 is not divisible by --nproc: 4 (the global batch is "
                   "split evenly over the training processes)"], err
    assert cli.main([*base, "--net", "boundary", "--set", "train.boundary.device=mps"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bafusion train: error: train.boundary.device='mps' but MPS"), err
    assert cli.main([*base, "--net", "initial", "--nproc", "abc"]) == 2
    assert "error: --nproc must be a positive integer or 'auto', got 'abc'" in capsys.readouterr().err
    from bafusion.cli.train import _config_from_args
    from bafusion.nets.train import _weight_settings_changed

    args = cli.build_parser().parse_args([*base, "--net", "boundary", "--set", "train.boundary.device=cuda",
                                          "--device", "cpu"])
    cfg = _config_from_args(args)
    assert cfg.key("device") == "--device" and cfg.key("batch") == "train.batch"
    assert _weight_settings_changed({"config": {**cfg.to_dict(), "device": "cuda"}}, cfg, torch.device("cpu"),
                                    threads=False) == ["the checkpoint's device cuda, now cpu (--device)"]


def test_train_takes_seed_as_the_data_steps_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every data step takes --seed; train refused it ("unrecognized arguments: --seed 1"), the seed
    reachable only as --set seed=N. --seed overrides the parameters' seed, is named by its option,
    and reaches the processes of --nproc N."""
    from bafusion.cli.train import _config_from_args, _relaunch_argv

    monkeypatch.chdir(tmp_path)
    base = ["train", "--net", "initial", "--patches", "p.h5", "--out", "m.pt", "--params-json", json.dumps(TOY)]
    args = cli.build_parser().parse_args([*base, "--set", "seed=3", "--seed", "11"])
    cfg = _config_from_args(args)
    assert (cfg.seed, cfg.key("seed")) == (11, "--seed")
    assert _relaunch_argv(args, 2, 0)[-4:] == ["--seed", "11", "--set", "seed=3"]
    assert _config_from_args(cli.build_parser().parse_args(base)).seed == TOY["seed"] == 7
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([*base, "--seed", "-1"])


def test_the_batch_warning_names_a_per_net_batch_by_its_per_net_key(toy_run: dict, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The warning that the batch exceeds an epoch said train.batch / train.samples_per_epoch for values
    set in train.initial."""
    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    cfg = resolve_config({**TOY, "train": {**TOY["train"], "epochs": 1,
                                           "initial": {"samples_per_epoch": 64, "batch": 100000}}}, "initial")
    train("initial", toy_run["h5"], cfg, _paths(tmp_path, "initial"), progress=False)
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert err == ["bafusion train: warning: initial: train.initial.batch 100000 is more than the 64 samples of an "
                   "epoch (train.initial.samples_per_epoch 64): each epoch is one step of 64 (the batch is capped at "
                   "the samples per epoch)"], err


# --- train.bn_recalibrate ("precise BN") ------------------------------------------------------


def test_recalibrate_bn_is_the_plain_average_of_the_batches_with_frozen_weights() -> None:
    """The running statistics become the unweighted mean of the batch statistics (momentum
    None), the weights and every layer's momentum and batch count stay, and the global RNG is
    not advanced (a resume must draw what an uninterrupted run draws)."""
    from bafusion.nets.augment import AugmentedLoader, PatchSplit
    from bafusion.nets.train import Dist, recalibrate_bn

    torch.manual_seed(0)
    model = build_model(8)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:  # stale statistics, as after training steps
        m.running_mean.fill_(5.0)
        m.running_var.fill_(9.0)
        m.num_batches_tracked.fill_(123)
    bns[1].momentum = 0.3
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    g = torch.Generator().manual_seed(1)
    data = PatchSplit(path=Path("toy.h5"), split="train", kind="initial", patch=16, attrs={},
                      x=torch.randint(0, 256, (20, 2, 16, 16), dtype=torch.uint8, generator=g),
                      y=torch.randint(0, 2, (20,), generator=g))
    loader = AugmentedLoader(data, 8, "cpu", seed=3, augment=True, samples_per_epoch=24, drop_last=True)
    # the first layer's expected statistics: the mean over the batches of the batch mean and
    # unbiased variance of its input (the stem convolution's output)
    means, vars_ = [], []
    for x, _ in AugmentedLoader(data, 8, "cpu", seed=3, augment=True, samples_per_epoch=24, drop_last=True):
        h = model.trunk[0](x)  # the stem convolution, the first BatchNorm's input
        means.append(h.mean((0, 2, 3)))
        vars_.append(h.var((0, 2, 3), unbiased=True))
    model.eval()
    rng = torch.get_rng_state()
    n = recalibrate_bn(model, loader, False, torch.device("cpu"), Dist())
    assert n == 24 and not model.training
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.allclose(bns[0].running_mean, torch.stack(means).mean(0), atol=1e-5)
    assert torch.allclose(bns[0].running_var, torch.stack(vars_).mean(0), rtol=1e-4, atol=1e-6)
    assert all(not torch.equal(m.running_mean, torch.full_like(m.running_mean, 5.0)) for m in bns)
    assert [m.momentum for m in bns] == [0.1, 0.3] + [0.1] * (len(bns) - 2)
    assert all(int(m.num_batches_tracked) == 123 for m in bns)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items())


def test_bn_recalibrate_changes_only_the_statistics_and_resumes_exactly(toy_run: dict, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """With train.bn_recalibrate the trained weights are those of the run without it (the
    re-estimation is forward only, off the training's draws), its statistics are not; a run
    killed mid-epoch and resumed equals the uninterrupted one bit for bit."""
    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    params = json.loads(json.dumps(TOY))
    params["train"]["bn_recalibrate"] = 96
    cfg = resolve_config(params, "initial")
    assert cfg.bn_recalibrate == 96 and cfg.key("bn_recalibrate") == "train.bn_recalibrate"
    whole = _paths(tmp_path / "whole", "initial")
    summary = train("initial", toy_run["h5"], cfg, whole, progress=False)
    ref = load_checkpoint(toy_run["paths"].checkpoints / "last.pt")
    got = load_checkpoint(whole.checkpoints / "last.pt")
    stats = [k for k in ref["model"] if "running_" in k]
    assert stats and all(torch.equal(ref["model"][k], got["model"][k]) for k in ref["model"] if k not in stats)
    assert all(not torch.equal(ref["model"][k], got["model"][k]) for k in stats)
    assert [r["train_loss"] for r in got["history"]] == [r["train_loss"] for r in ref["history"]]
    assert all(r["bn_recalibrate_s"] > 0 for r in got["history"])
    _, meta = load_model(whole.out)
    assert meta["params"]["bn_recalibrate"] == 96
    # killed in epoch 2, resumed: the same nets, statistics and choice of the best epoch
    part = _paths(tmp_path / "part", "initial")
    monkeypatch.setenv(ABORT_ENV, "34")
    with pytest.raises(KeyboardInterrupt):
        train("initial", toy_run["h5"], cfg, part, progress=False)
    monkeypatch.delenv(ABORT_ENV)
    resumed = train("initial", toy_run["h5"], cfg, part, progress=False)
    again = load_checkpoint(part.checkpoints / "last.pt")
    for key in ("model", "best_model"):
        assert got[key].keys() == again[key].keys()
        assert all(torch.equal(got[key][k], again[key][k]) for k in got[key]), key
    assert resumed["val_acc"] == summary["val_acc"] and resumed["best_epoch"] == summary["best_epoch"]
    assert part.out.read_bytes() == whole.out.read_bytes()


def test_bn_recalibrate_per_net_and_refused_when_negative() -> None:
    from bafusion.schema import ParamsError

    params = {"train": {"bn_recalibrate": 512, "boundary": {"bn_recalibrate": 0}}}
    assert resolve_config(params, "initial").bn_recalibrate == 512
    b = resolve_config(params, "boundary")
    assert b.bn_recalibrate == 0 and b.key("bn_recalibrate") == "train.boundary.bn_recalibrate"
    assert resolve_config({}, "initial").bn_recalibrate == 0  # off unless asked for
    with pytest.raises(ParamsError, match="train.bn_recalibrate"):
        resolve_config({"train": {"bn_recalibrate": -1}}, "initial")


def test_bn_recalibrate_with_two_ddp_processes_on_cpu(toy_run: dict, tmp_path: Path) -> None:
    """Under DDP each process re-estimates on its shard and the estimates are averaged: the
    saved model's statistics differ from the run without it, and the run completes."""
    params = json.loads(json.dumps(TOY))
    params["train"].update(bn_recalibrate=64, epochs=1, milestones=[])
    cmd, env, out = _two_process_train(toy_run, tmp_path, params)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "re-estimating BatchNorm on 64 samples" in res.stderr, res.stderr[-3000:]
    assert "BatchNorm statistics re-estimated on 64 samples before each validation (train.bn_recalibrate)" \
        in res.stderr, res.stderr[-3000:]
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["world_size"] == 2 and m["val_acc"] > 0.5
    net, meta = load_model(out)
    assert meta["params"]["bn_recalibrate"] == 64
    bn = next(mod for mod in net.modules() if isinstance(mod, torch.nn.BatchNorm2d))
    assert bn.running_var.min() > 0 and not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))


def test_the_training_code_digest_ignores_docstrings_comments_and_line_endings(tmp_path: Path) -> None:
    """A checkpoint is resumed only by the code that wrote it; the code's digest hashed the
    sources' bytes, so an upgrade that only reworded a docstring or a comment (or a Windows
    checkout's CRLF) refused to resume an interrupted training, hours of it. The digest is now
    the code's (the syntax tree without docstrings), as fuse-dir's is: such edits keep it, any
    code change, a message's wording too, changes it."""
    import hashlib

    from bafusion._version import hash_sources

    def digest(text: str) -> str:
        f = tmp_path / "m.py"
        f.write_bytes(text.encode())
        h = hashlib.sha256()
        hash_sources(h, [f, tmp_path / "missing.py"])
        return h.hexdigest()

    base = digest('"""Module."""\n\ndef f(x):\n    """Doc."""\n    return x + 1  # one\n')
    assert digest('"""Reworded module doc."""\n\n\ndef f( x ):\n    """Other doc."""\n'
                  '    # a new comment\n    return x + 1\n') == base
    assert digest('"""Module."""\r\n\r\ndef f(x):\r\n    """Doc."""\r\n    return x + 1\r\n') == base
    assert digest('"""Module."""\n\ndef f(x):\n    """Doc."""\n    return x + 2\n') != base
    assert digest('"""Module."""\n\ndef f(x):\n    """Doc."""\n    raise ValueError("other words")\n') != \
        digest('"""Module."""\n\ndef f(x):\n    """Doc."""\n    raise ValueError("words")\n')


class _RunsCode:
    """Pickles as a call of os.system: what a malicious checkpoint holds."""

    def __reduce__(self) -> tuple:
        return (os.system, ("echo this must not run",))


def test_a_malicious_checkpoint_is_refused_without_torchs_unsafe_advice(tmp_path: Path) -> None:
    """The refusal repeated torch's whole message, its advice to rerun with
    ``weights_only=False`` ("will likely succeed") included; now what torch refused alone."""
    p = tmp_path / "last.pt"
    torch.save({"format": 1, "x": _RunsCode()}, p)
    with pytest.raises(InputFileError) as e:
        load_checkpoint(p)
    text = str(e.value)
    assert "last.pt: unreadable checkpoint (not a plain tensor file:" in text, text
    assert "unsupported GLOBAL" in text and ".system" in text and "delete it to start afresh" in text, text
    assert "weights_only" not in text and "False" not in text and "trusted" not in text, text
    p.write_bytes(b"")  # the other refusals keep their gist
    with pytest.raises(InputFileError, match=r"last.pt: unreadable checkpoint \(the file is empty\)"):
        load_checkpoint(p)


def test_a_hand_run_says_the_milestones_it_never_reaches(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A short run of the paper preset's schedule (80/120/160/180 of 200) by hand, with
    train.epochs cut to 3, trained at its first learning rate throughout without a word; the
    pipeline's params check says so, and now the command does too (before any work), naming
    the key as params.yaml spells it. Milestones before the last epoch draw no warning."""
    missing = str(tmp_path / "missing.h5")  # refused after the warning: no training needed here
    for train_section, said in (({"epochs": 3, "milestones": [80, 120, 160, 180]},
                                 "train.milestones: 80, 120, 160, 180 not before the last epoch (train.epochs: 3)"),
                                ({"epochs": 3, "milestones": [2], "initial": {"milestones": [1, 3]}},
                                 "train.initial.milestones: 3 not before the last epoch (train.epochs: 3)"),
                                ({"epochs": 3, "milestones": [1, 2]}, None)):
        params = {**TOY, "train": {**TOY["train"], **train_section}}
        rc = cli.main(["train", "--net", "initial", "--patches", missing, "--out", str(tmp_path / "x.pt"),
                       "--params-json", json.dumps(params), "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2 and "missing.h5: patch set not found" in err, err
        if said:
            assert f"bafusion train: warning: {said}: the learning rate never drops there" in err, err
        else:
            assert "never drops" not in err, err


def test_the_model_description_says_what_trained_it(toy_run: dict, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The model's .json named the patch file by its path and its patch code's version only:
    nothing of the bafusion, torch, CPU threads or training code that trained the weights (all of
    which change them), nor which patch set the path held. It now records them under
    ``trained_with`` and ``patches_digest``; a resumed run records the versions its epochs ran
    under ("0.1.0 then <now>", as last.pt does), and a restore writes the same bytes again."""
    from bafusion._version import __version__
    from bafusion.nets.train import patches_digest, training_code_digest

    meta = json.loads(toy_run["paths"].out.with_suffix(".json").read_text())
    assert meta["trained_with"] == {"bafusion": __version__, "torch": str(torch.__version__), "threads": 1,
                                    "code_digest": training_code_digest()}
    assert meta["patches_digest"] == patches_digest(toy_run["h5"])
    assert load_checkpoint(toy_run["paths"].checkpoints / "last.pt")["bafusion_version"] == __version__
    # a run interrupted under another bafusion, resumed under this one
    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    cfg = resolve_config(TOY, "initial")
    paths = _paths(tmp_path, "initial")
    monkeypatch.setenv(ABORT_ENV, "30")  # in epoch 2: resumed from the end of epoch 1
    with pytest.raises(KeyboardInterrupt):
        train("initial", toy_run["h5"], cfg, paths, progress=False)
    last = paths.checkpoints / "last.pt"
    ck = load_checkpoint(last)
    torch.save({**ck, "bafusion_version": "0.1.0"}, last)
    monkeypatch.delenv(ABORT_ENV)
    train("initial", toy_run["h5"], cfg, paths, progress=False)
    meta = json.loads(paths.out.with_suffix(".json").read_text())
    assert meta["trained_with"]["bafusion"] == f"0.1.0 then {__version__}"
    assert load_checkpoint(last)["bafusion_version"] == f"0.1.0 then {__version__}"
    # restored (outputs deleted after a kill): the same description, byte for byte
    want = paths.out.with_suffix(".json").read_bytes()
    paths.out.unlink()
    train("initial", toy_run["h5"], cfg, paths, progress=False)
    assert paths.out.with_suffix(".json").read_bytes() == want


def test_an_unreadable_checkpoint_is_refused_before_the_patch_set_is_loaded(
        toy_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A truncated last.pt (a copy cut short, a full disk) was refused only after the whole patch
    set had been read into memory (at the paper's scale, 189,000 patches of 64 x 64 x 2): now at
    once, naming the file, before any patch is read."""
    import bafusion.nets.train as train_module

    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    paths = _paths(tmp_path, "initial")
    paths.checkpoints.mkdir(parents=True)
    whole = (toy_run["paths"].checkpoints / "last.pt").read_bytes()
    (paths.checkpoints / "last.pt").write_bytes(whole[: len(whole) // 3])
    read: list[str] = []
    real = train_module.load_split
    monkeypatch.setattr(train_module, "load_split", lambda *a, **k: read.append(a[1]) or real(*a, **k))
    with pytest.raises(InputFileError, match=r"last\.pt.*unreadable checkpoint"):
        train("initial", toy_run["h5"], resolve_config(TOY, "initial"), paths, progress=False)
    assert read == []
    # --no-resume ignores it (and reads the patch set as before)
    cfg = resolve_config({**TOY, "train": {**TOY["train"], "epochs": 1, "samples_per_epoch": 32}}, "initial")
    train("initial", toy_run["h5"], cfg, paths, resume=False, progress=False)
    assert read == ["train", "val"]


def test_nproc_processes_share_the_cores_the_cpu_quota_allows_not_the_machines(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train --nproc 2 with train.threads 0 (all cores) gave each process OMP_NUM_THREADS of
    os.cpu_count() // 2: the machine's cores, 32 a process in a container limited to 4 CPUs of a
    64-core machine. It takes the cores fuse's threads take now (threads.available_cores: the
    affinity mask, at most the cgroup's CPU quota)."""
    import bafusion.cli.train as cli_train
    import bafusion.threads as threads

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(threads, "_affinity", lambda: 64)
    monkeypatch.setattr(threads, "cpu_quota", lambda *a, **k: 4.0)
    launched: list[dict[str, str]] = []
    monkeypatch.setattr(cli_train, "_launch", lambda cmd, env: launched.append(env) or 0)
    params = {**TOY, "train": {**TOY["train"], "threads": 0}}
    args = cli.build_parser().parse_args(["train", "--net", "initial", "--patches", "p.h5", "--out", "m.pt",
                                          "--params-json", json.dumps(params), "--nproc", "2"])
    assert cli_train.run_cli(args) == 0
    assert [e["OMP_NUM_THREADS"] for e in launched] == ["2"]
    monkeypatch.setattr(threads, "cpu_quota", lambda *a, **k: None)  # no quota: the affinity mask
    monkeypatch.setattr(threads, "_affinity", lambda: 6)
    assert cli_train.run_cli(args) == 0
    assert [e["OMP_NUM_THREADS"] for e in launched] == ["2", "3"]


def test_threads_0_takes_the_cores_the_cpu_quota_allows_not_torchs_default(
        toy_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A single-process training with train.threads 0 ran on torch's default count (the machine's
    cores: 64 threads in a container limited to 4 CPUs of a 64-core machine, each throttled); it
    takes at most threads.available_cores() now, as --nproc's processes do, and records the
    count. Unconstrained it keeps torch's count (physical cores, at most the affinity mask's)."""
    import bafusion.threads as threads

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(threads, "_affinity", lambda: 64)
    cfg = resolve_config({**TOY, "train": {**TOY["train"], "threads": 0, "epochs": 1, "samples_per_epoch": 32,
                                           "milestones": []}}, "initial")
    try:
        for quota, want in ((1.0, 1), (None, 2)):  # torch's "default" 2: cut to the quota's 1; kept without one
            monkeypatch.setattr(threads, "cpu_quota", lambda *a, q=quota, **k: q)
            torch.set_num_threads(2)
            paths = _paths(tmp_path / str(quota), "initial")
            train("initial", toy_run["h5"], cfg, paths, resume=False, progress=False)
            _, meta = load_model(paths.out)
            assert meta["trained_with"]["threads"] == want, (quota, meta["trained_with"])
            assert load_checkpoint(paths.checkpoints / "last.pt")["threads"] == want
    finally:
        torch.set_num_threads(1)
