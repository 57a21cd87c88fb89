"""DVC experiments that compare, and MLflow runs that tell the story, on the tiny project:
metrics live in git-tracked ``metrics/``, so two ``dvc exp run -S patch=...`` give two rows
with numbers in ``dvc exp show`` and ``dvc metrics diff`` works on HEAD; each DVC invocation
is one MLflow parent run with its stages nested under it and the net logged as a model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pipeline_project import make_project, run

pytestmark = pytest.mark.slow

TARGET = "train_initial"  # the stages up to the first net: enough for metrics, plots and a model


def _rows(shown: list[dict]) -> list[dict]:
    """Every experiment revision of ``dvc exp show --json``."""
    return [r for entry in shown for exp in entry.get("experiments") or [] for r in exp["revs"]]


def test_two_experiments_two_rows_metrics_diff_and_one_parent_run_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # this test's runs only (the commands inherit it)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    project = make_project(tmp_path / "p")
    run(["dvc", "repro", TARGET], project)
    # The metric and plot files are git-tracked (not under the ignored data/): commit them.
    tracked = run(["git", "status", "--porcelain", "--untracked-files=all", "metrics"], project).stdout
    assert "metrics/train_initial.json" in tracked and "metrics/plots/train_initial.csv" in tracked
    first = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "baseline"], project)
    baseline_commit = run(["git", "rev-parse", "HEAD"], project).stdout.strip()

    # the first in a temporary copy (.dvc/tmp/exps/...: a git repository DVC makes, HEAD at the
    # baseline), the second in the workspace
    for patch, where in ((12, ["--temp"]), (20, [])):
        run(["dvc", "exp", "run", *where, "-S", f"patch={patch}", TARGET], project)

    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    rows = _rows(shown)
    assert sorted(r["data"]["params"]["params.yaml"]["data"]["patch"] for r in rows) == [12, 20]
    for r in rows:
        m = r["data"]["metrics"]["metrics/train_initial.json"]["data"]
        assert isinstance(m["val_acc"], float) and 0.0 <= m["val_acc"] <= 1.0
        assert isinstance(m["train_loss"], float) and m["train_loss"] > 0.0
        # Settings are params, not metrics.
        assert not any("params" in k for k in m)
    baseline = next(e for e in shown if e["rev"] != "workspace")
    assert baseline["data"]["metrics"]["metrics/train_initial.json"]["data"]["epochs"] == 1

    # The workspace holds the last experiment (patch 20): metrics diff against HEAD works.
    diff = json.loads(run(["dvc", "metrics", "diff", "--json", "HEAD"], project).stdout)
    assert "metrics/train_initial.json" in diff
    exp_names = sorted(r["name"] for r in rows)
    between = json.loads(run(["dvc", "metrics", "diff", "--json", exp_names[0], exp_names[1]], project).stdout)
    assert set(between) >= {"metrics/train_initial.json"}
    plots = json.loads(run(["dvc", "plots", "diff", "--json", "HEAD"], project).stdout)
    assert {"training accuracy", "training loss"} <= set(plots["data"])

    # Back on HEAD the experiment's metric files are gone: git restores the committed ones.
    assert run(["git", "status", "--porcelain", "metrics"], project).stdout.strip() != ""
    run(["git", "checkout", "--", "."], project)
    assert run(["git", "status", "--porcelain", "metrics"], project).stdout.strip() == ""
    assert run(["dvc", "metrics", "diff", "--json"], project).stdout.strip() in ("", "{}")

    # MLflow: one parent per invocation (dvc repro, then each experiment by name), every stage
    # a nested child of it, the net a logged model.
    from mlflow.tracking import MlflowClient

    from bafusion.tracking import EXPERIMENT

    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = client.search_runs([exp_id])
    parents = {r.info.run_id: r for r in runs if "mlflow.parentRunId" not in r.data.tags}
    assert sorted(r.info.run_name for r in parents.values()) == sorted(
        ["dvc repro", *(f"dvc exp {n}" for n in exp_names)]
    )
    assert all(r.info.status == "FINISHED" for r in runs)
    children: dict[str, list[str]] = {}
    for r in runs:
        if "mlflow.parentRunId" in r.data.tags:
            children.setdefault(parents[r.data.tags["mlflow.parentRunId"]].info.run_name, []).append(r.info.run_name)
    assert sorted(children["dvc repro"]) == sorted(
        ["download", "prepare", "composite shard 1/2", "composite shard 2/2", "patches", "train_initial"]
    )
    for n in exp_names:  # an experiment re-runs what its params change
        assert sorted(children[f"dvc exp {n}"]) == ["patches", "train_initial"]
    trained = [r for r in runs if r.info.run_name == "train_initial"]
    assert all(len(r.outputs.model_outputs) == 1 for r in trained)
    # Every run ran the project's own code (the Snakefile puts its src/ first, whatever
    # environment installed bafusion: here this repository's editable install) and records the
    # project's commit: dvc repro's the first, each experiment's its baseline (also in the copy,
    # whose runs no longer name the workspace, $DVC_ROOT, as a project of its own).
    for r in runs:
        parent = parents[r.data.tags.get("mlflow.parentRunId", r.info.run_id)].info.run_name
        assert r.data.tags.get("mlflow.source.git.commit") == (first if parent == "dvc repro" else baseline_commit), (
            parent, r.info.run_name, r.data.tags)
        assert "project.git_commit" not in r.data.tags, (parent, r.info.run_name, r.data.tags)
    assert {r.data.params["patch"] for r in parents.values()} == {"16", "12", "20"}


def test_readmes_newest_experiment_recipe_gives_the_newest(tmp_path: Path) -> None:
    """README's "exp=$(dvc exp ls --name-only | tail -n 1)" gave the last by name (dvc exp ls
    sorts by name): after zeta, alpha and mid, zeta, the oldest. The recipe now in README gives
    mid. A small DVC project of its own (the line does not depend on bafusion's stages)."""
    import os
    import re
    import subprocess
    import sys
    import time

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    line = next(ln for ln in readme.splitlines() if ln.startswith("exp=$("))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # this dvc
    dvc = str(Path(sys.executable).with_name("dvc"))

    def sh(*args: str) -> str:
        out = subprocess.run(list(args), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, (args, out.stdout, out.stderr)
        return out.stdout

    (tmp_path / "params.yaml").write_text("x: 1\n")
    (tmp_path / "s.py").write_text("import json\nx = open('params.yaml').read().split(':')[1]\n"
                                   "json.dump({'y': int(x)}, open('m.json', 'w'))\n")
    (tmp_path / "dvc.yaml").write_text("stages:\n  s:\n    cmd: python3 s.py\n    deps: [s.py]\n    params: [x]\n"
                                       "    metrics:\n      - m.json:\n          cache: false\n")
    sh("git", "init", "-q")
    sh(dvc, "init", "-q")
    sh(dvc, "repro", "-q")
    sh("git", "add", "-A")
    sh("git", "commit", "-q", "-m", "base")
    for i, name in enumerate(("zeta", "alpha", "mid")):
        sh(dvc, "exp", "run", "-q", "-n", name, "-S", f"x={i + 2}")
        time.sleep(1.1)  # commit times one second apart at least
    assert sh(dvc, "exp", "ls", "--name-only").split() == ["alpha", "mid", "zeta"]  # by name
    got = sh("bash", "-c", line + '\nprintf %s "$exp"')
    assert got == "mid", (line, got)
    assert re.search(r"\bmid\b", sh(dvc, "metrics", "diff", "HEAD", got))
