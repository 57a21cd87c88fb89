"""Under Snakemake: training progress reaches the console, logs stay clean, and a rerun of a
training rule whose outputs Snakemake deleted (a job killed after its run finished, or -R /
--forcerun) writes the finished run's model again without training."""

from __future__ import annotations

from pathlib import Path

import pytest
from pipeline_project import make_project, run

pytestmark = pytest.mark.slow


def test_forcerun_retrains_and_progress_reaches_the_console(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", git=False)
    first = run(["snakemake", "--cores", "2", "train_initial"], project)
    console = first.stdout + first.stderr
    assert "bafusion train: initial epoch 1/1 " in console, console[-3000:]  # not only in the log
    log = (project / "logs" / "train_initial.log").read_text()
    assert "initial epoch 1/1 " in log and "\r" not in log
    assert "training from scratch" not in log

    # Snakemake deletes the rule's outputs before it runs it again, as after a job killed in the
    # seconds between the finished mark in last.pt and its exit: the finished run's model is
    # written again, the same bytes, without an epoch (it trained everything again, hours)
    model = project / "data" / "models" / "initial.pt"
    want = {p: p.read_bytes() for p in (model, model.with_suffix(".json"))}
    again = run(["snakemake", "train_initial", "--cores", "2", "-R", "train_initial"], project)
    console = again.stdout + again.stderr
    assert "the model of the finished run in data/checkpoints/initial/last.pt was restored" in console, console[-3000:]
    assert "training from scratch" not in console and "initial epoch 1/1 " not in console
    assert "resuming" not in console
    assert {p: p.read_bytes() for p in want} == want
    assert "rule patches" not in console  # only the forced rule ran

    # A DVC stage's call (`snakemake <target> --allowed-rules <target>`) after DVC rewrote an
    # upstream file with the same bytes (a new mtime): only the stage's own rule may run.
    # Snakemake followed the rule reference rules.patches.output past --allowed-rules, so the
    # fuse stage of `dvc repro` re-made the patches and retrained both nets.
    import os
    import shutil
    import time

    # (Snakemake also keeps checksums of small inputs, which would hide the new mtime of these
    # tiny shards: forget them, as for the large shards of a real run)
    shutil.rmtree(project / ".snakemake" / "metadata")
    later = time.time() + 5
    for shard in (project / "data" / "composite").glob("shard-*.h5"):
        os.utime(shard, (later, later))
    for allowed in (["--allowed-rules", "train_initial"], ["--allowed-rules=train_initial"],
                    ["--allowed-rule", "train_initial"]):  # argparse takes an abbreviation too
        staged = run(["snakemake", "train_initial", "-n", "--cores", "2", "--rerun-triggers", "mtime", *allowed],
                     project)
        assert "Nothing to be done" in staged.stdout + staged.stderr, (allowed, (staged.stdout + staged.stderr)[-3000:])
    plain = run(["snakemake", "train_initial", "-n", "--cores", "2"], project)  # Snakemake's own rules otherwise
    assert "rule patches" in plain.stdout + plain.stderr


def test_a_param_changed_to_a_value_another_param_has_reruns_the_rule(tmp_path: Path) -> None:
    """Snakemake compares a rule's params as a set of values, names dropped: the hold-outs
    1 -> 0 (seed is 0 too) or per_pair 6 -> 16 (patch 16) left the set as it was,
    and the rule was not rerun ("Nothing to be done"). Each rule also passes all its values as
    one JSON string, which changes with any of them."""
    import yaml

    project = make_project(tmp_path / "p", git=False)
    run(["snakemake", "--cores", "2", "patches", "testset"], project)
    good = (project / "params.yaml").read_text()
    assert "Nothing to be done" in run(["snakemake", "-n", "--cores", "2", "patches", "testset"], project).stdout
    # both hold-outs 1 -> 0 (one alone is refused before any job: both 0 or both > 0); 0 is seed's value
    for section, keys, value, rule in (("data", ("holdout_foregrounds", "holdout_backgrounds"), 0, "prepare"),
                                       ("patches", ("per_pair",), 16, "patches")):
        params = yaml.safe_load(good)
        for key in keys:
            params[section][key] = value
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        p = run(["snakemake", "-n", "--cores", "2", rule], project)
        out = p.stdout + p.stderr
        assert f"rule {rule}:" in out and "Params have changed" in out, (keys, out[-3000:])
    (project / "params.yaml").write_text(good)


def test_a_per_net_train_override_reruns_only_its_nets_training(tmp_path: Path) -> None:
    """Each training rule's params carry the train keys its net reads (train.* and its own
    train.<net> override), as the DVC stages list them: both passed the whole train section,
    and `snakemake -n` after a change of train.boundary.lr planned train_initial too (a second
    training, in a workspace without its finished checkpoint)."""
    import json
    import shlex

    import yaml

    from bafusion.nets.train import TrainConfig

    project = make_project(tmp_path / "p", git=False)
    targets = ["train_initial", "train_boundary"]
    run(["snakemake", "--cores", "2", *targets], project)
    good = (project / "params.yaml").read_text()
    assert "Nothing to be done" in run(["snakemake", "-n", "--cores", "2", *targets], project).stdout
    for net, other in (("boundary", "initial"), ("initial", "boundary")):
        params = yaml.safe_load(good)
        params["train"][net] = {**(params["train"].get(net) or {}), "lr": 0.05}
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        p = run(["snakemake", "-n", "-p", "--cores", "2", *targets], project)
        out = p.stdout + p.stderr
        assert p.returncode == 0 and f"rule train_{net}:" in out and "Params have changed" in out, (net, out[-3000:])
        assert f"rule train_{other}:" not in out, (net, out[-3000:])
        # the command still gets the override, and the trainer merges it over train.*
        line = next(ln for ln in out.splitlines() if f"bafusion train --net {net} " in ln)
        words = shlex.split(line)
        cfg = TrainConfig.from_params(json.loads(words[words.index("--params-json") + 1]), net)
        assert (cfg.lr, cfg.batch, cfg.epochs) == (0.05, 16, 1), (net, line)
    # a key of both nets reruns both
    params = yaml.safe_load(good)
    params["train"]["lr"] = 0.05
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["snakemake", "-n", "--cores", "2", *targets], project).stdout
    assert all(f"rule {t}:" in out for t in targets), out[-3000:]
    (project / "params.yaml").write_text(good)


def test_train_checkpoint_every_reaches_the_trainer_but_reruns_no_training(tmp_path: Path) -> None:
    """train.checkpoint_every (a mid-epoch save: the weights are the same; no DVC stage lists
    it) was in the training rules' compared params: a change of it alone made `snakemake` rerun
    both trainings and, after them, fuse and evaluate. It is passed through a derived params
    function now (train_params in common.smk): no rerun, and a run that does train still gets it."""
    import json
    import shlex

    import yaml

    project = make_project(tmp_path / "p", git=False)
    targets = ["train_initial", "train_boundary"]
    run(["snakemake", "--cores", "2", *targets], project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["checkpoint_every"] = 7
    params["train"]["initial"] = {**(params["train"].get("initial") or {}), "checkpoint_every": 3}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "Nothing to be done" in run(["snakemake", "-n", "--cores", "2", *targets], project).stdout
    out = run(["snakemake", *targets, "-n", "-p", "--cores", "2", "--forcerun", *targets], project).stdout
    for net, every in (("initial", 3), ("boundary", 7)):
        line = next(ln for ln in out.splitlines() if f"bafusion train --net {net} " in ln)
        words = shlex.split(line)
        cfg = json.loads(words[words.index("--params-json") + 1])
        assert (cfg["train"].get(net) or {}).get("checkpoint_every", cfg["train"]["checkpoint_every"]) == every, line


def test_keys_that_leave_the_outputs_as_they_are_rerun_neither_fuse_nor_evaluate(tmp_path: Path) -> None:
    """fuse.threads, fuse.save_maps (not read by the pipeline) and evaluate.threads were in the fuse
    and evaluate rules' compared params (each section passed whole as a plain param): a change of
    fuse.threads alone made `snakemake` rerun fuse and evaluate, for the same files. dvc.yaml's
    stages leave them out (test_dvc_deps.UNLISTED); the rules now compare what the stages list.
    The commands still get every key."""
    import json
    import shlex

    import yaml

    project = make_project(tmp_path / "p", git=False)
    run(["snakemake", "--cores", "2", "evaluate"], project)
    good = (project / "params.yaml").read_text()

    def changed(section: str, values: dict, *args: str) -> str:
        params = yaml.safe_load(good)
        params[section] = {**(params.get(section) or {}), **values}
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        p = run(["snakemake", "-n", "-p", "--cores", "2", *args], project)
        return p.stdout + p.stderr

    for section, values in (("fuse", {"threads": 1}), ("fuse", {"save_maps": True}), ("evaluate", {"threads": 1})):
        out = changed(section, values, "evaluate")
        assert "Nothing to be done" in out, (section, values, out[-3000:])
    # the fuse rule's difference maps: fuse reruns
    for values in ({"alpha": 5}, {"diff_cmap": "jet"}):
        out = changed("fuse", values, "fuse")
        assert "rule fuse:" in out and "Params have changed" in out, (values, out[-3000:])
    # a key that changes the outputs still reruns both
    out = changed("fuse", {"l": 4}, "evaluate")
    assert "rule fuse:" in out and "rule evaluate:" in out and "Params have changed" in out, out[-3000:]
    # a forced run's commands still get the uncompared keys
    out = changed("fuse", {"threads": 1, "alpha": 5}, "evaluate", "--forcerun", "fuse", "evaluate")
    fuse_line = shlex.split(next(ln for ln in out.splitlines() if "bafusion fuse-set " in ln))
    assert json.loads(fuse_line[fuse_line.index("--params-json") + 1])["alpha"] == 5, fuse_line
    assert fuse_line[fuse_line.index("--threads") + 1] == "1", fuse_line
    eval_line = shlex.split(next(ln for ln in out.splitlines() if "bafusion evaluate " in ln))
    assert json.loads(eval_line[eval_line.index("--fuse-json") + 1])["threads"] == 1, eval_line
    (project / "params.yaml").write_text(good)
