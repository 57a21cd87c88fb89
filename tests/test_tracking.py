"""MLflow tracking of pipeline steps: a stopped step's run ends KILLED, a failed one FAILED,
never left RUNNING; SIGTERM to a ``bafusion`` command is turned into a clean exit."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bafusion import tracking


def _runs(uri: str) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(tracking.EXPERIMENT)
    return {r.info.run_name: r.info.status for r in client.search_runs([exp.experiment_id])}


def test_stage_run_status_on_success_failure_and_interrupt(uri: str) -> None:
    with tracking.stage_run("ok"):
        pass
    with pytest.raises(ValueError):
        with tracking.stage_run("broken"):
            raise ValueError("bad input")
    with pytest.raises(KeyboardInterrupt):
        with tracking.stage_run("interrupted"):
            raise KeyboardInterrupt
    with pytest.raises(SystemExit):
        with tracking.stage_run("terminated"):
            raise SystemExit(143)
    assert _runs(uri) == {"ok": "FINISHED", "broken": "FAILED", "interrupted": "KILLED", "terminated": "KILLED"}


SCRIPT = """
import sys, time
from bafusion import cli, tracking
cli.install_sigterm_handler()
try:
    with tracking.stage_run("long"):
        print("ready", flush=True)
        time.sleep(60)
finally:
    print("cleaned up", flush=True)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_ends_the_run_as_killed(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    line = proc.stdout.readline()
    assert line.strip() == "ready" and time.monotonic() < deadline
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert "cleaned up" in out
    assert _runs(uri) == {"long": "KILLED"}


def _clear_invocation_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (tracking.PARENT_ENV, "DVC_STAGE", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_ROOT"):
        # setenv first, so that monkeypatch records the value from before the test even when
        # begin_invocation set it since: the environment is restored, no run id leaks out.
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)


@pytest.fixture
def uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A store of its own for the test (``mlflow.db`` in ``tmp_path``) as ``$MLFLOW_TRACKING_URI``,
    and no parent run or DVC stage in the environment (:func:`_clear_invocation_env`): its URI."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    _clear_invocation_env(monkeypatch)
    return store


def test_invocation_is_a_parent_run_with_named_children_and_a_loadable_model(
    uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.tracking import MlflowClient

    from bafusion.nets.model import build_model

    parent = tracking.begin_invocation({"patch": 16, "train": {"epochs": 1}}, "train_initial")
    assert parent and os.environ[tracking.PARENT_ENV] == parent
    net = build_model(8)
    with tracking.stage_run("train_initial") as run:
        run.log_model(net, "initial_net", input_example=np.zeros((1, 2, 16, 16), dtype=np.float32))
    with tracking.stage_run("composite", run_name="composite shard 2/4"):
        pass
    tracking.end_invocation(True)
    monkeypatch.delenv(tracking.PARENT_ENV)
    with tracking.stage_run("prepare"):  # by hand, outside a pipeline: a top-level run
        pass

    client = MlflowClient(tracking_uri=uri)
    exp_id = client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id
    runs = {r.info.run_name: r for r in client.search_runs([exp_id])}
    assert set(runs) == {"snakemake train_initial", "train_initial", "composite shard 2/4", "prepare"}
    kind, value = tracking.EXPERIMENT_KIND
    assert client.get_experiment(exp_id).tags[kind] == value  # the UI opens on the runs table
    top = runs["snakemake train_initial"]
    assert top.info.run_id == parent and top.info.status == "FINISHED"
    assert "mlflow.parentRunId" not in top.data.tags and top.data.params["train.epochs"] == "1"
    for name in ("train_initial", "composite shard 2/4"):
        assert runs[name].data.tags["mlflow.parentRunId"] == parent
    assert "mlflow.parentRunId" not in runs["prepare"].data.tags
    commit = tracking.git_commit()
    if commit:  # the tests run inside the project's git checkout
        assert runs["train_initial"].data.tags["mlflow.source.git.commit"] == commit
    assert runs["train_initial"].data.tags["mlflow.source.name"] == "bafusion train_initial"

    # The net is an MLflow model of its run, with a signature, and loads back as the same net.
    outputs = runs["train_initial"].outputs.model_outputs
    assert len(outputs) == 1
    model = mlflow.get_logged_model(outputs[0].model_id)
    assert model.name == "initial_net" and model.source_run_id == runs["train_initial"].info.run_id
    mlflow.set_tracking_uri(uri)
    loaded = mlflow.pytorch.load_model(model.model_uri)
    x = torch.randn(3, 2, 16, 16)
    net.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x))
    from mlflow.models import get_model_info

    assert get_model_info(model.model_uri).signature is not None


def test_runs_say_whether_the_code_had_uncommitted_changes(
    uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run of modified (uncommitted) code carried HEAD's commit and nothing else: it read as
    the commit's code. Runs now carry bafusion.git_dirty, true when a tracked source file has
    uncommitted changes (staged or not), false when not; files the runs write (dvc.lock,
    metrics/), params.yaml (logged as params) and untracked files do not count; no tag and no
    failure outside a git checkout."""
    from mlflow.tracking import MlflowClient

    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "code.py").write_text("x = 1\n")
    for name in ("dvc.yaml", "dvc.lock", "params.yaml"):
        (repo / name).write_text("a: 1\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "c"]):
        subprocess.run(["git", *cmd], cwd=repo, check=True, env=env)
    monkeypatch.chdir(repo)
    from bafusion import checkout

    monkeypatch.setattr(checkout, "source_checkout", lambda: repo.resolve())  # bafusion runs from this checkout

    def tags(run_name: str) -> dict[str, str]:
        with tracking.stage_run("prepare", run_name=run_name):
            pass
        client = MlflowClient(tracking_uri=uri)
        exp_id = client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id
        return next(r for r in client.search_runs([exp_id]) if r.info.run_name == run_name).data.tags

    clean = tags("clean")
    assert clean["mlflow.source.git.commit"] and clean[tracking.DIRTY_TAG] == "false"
    (repo / "dvc.lock").write_text("a: 2\n")  # what a run writes, and params: not the code
    (repo / "params.yaml").write_text("a: 2\n")
    (repo / "new.py").write_text("")  # untracked
    assert tags("outputs changed")[tracking.DIRTY_TAG] == "false"
    (repo / "src" / "code.py").write_text("x = 2\n")
    assert tags("code changed")[tracking.DIRTY_TAG] == "true"
    subprocess.run(["git", "add", "src"], cwd=repo, check=True)
    assert tags("code staged")[tracking.DIRTY_TAG] == "true"
    outside = tmp_path / "photos"
    outside.mkdir()
    monkeypatch.setattr(checkout, "source_checkout", lambda: None)  # an installed bafusion, in photos
    outside_tags = tracking.source_tags("x", outside)
    assert tracking.git_dirty(outside) is None and tracking.DIRTY_TAG not in outside_tags
    assert tracking.PROJECT_DIRTY_TAG not in outside_tags


def _git_repo(folder: Path, files: dict[str, str]) -> str:
    """A git checkout in ``folder`` holding ``files``, committed; its commit."""
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "c"]):
        subprocess.run(["git", *cmd], cwd=folder, check=True, env=env)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, check=True, capture_output=True,
                          text=True).stdout.strip()


def test_runs_name_the_bafusion_code_not_the_commit_of_the_project_they_run_in(
    uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed bafusion (a wheel) run in a downstream project that is a git checkout
    tagged its runs with that project's commit as MLflow's source commit and
    bafusion.git_dirty=false, and named neither the bafusion version nor its code: the record
    claimed a clean commit of code it never ran. Now the commit is the code's only when
    bafusion runs from its own checkout (an editable install); the project's commit is
    project.git_commit; every run carries bafusion.version and bafusion.code_digest."""
    from mlflow.tracking import MlflowClient

    from bafusion import __version__, checkout

    downstream = tmp_path / "downstream"
    project_commit = _git_repo(downstream, {"dvc.yaml": "stages: {}\n"})
    monkeypatch.chdir(downstream)

    def tags(run_name: str) -> dict[str, str]:
        with tracking.stage_run("evaluate", run_name=run_name):
            pass
        client = MlflowClient(tracking_uri=uri)
        exp_id = client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id
        return next(r for r in client.search_runs([exp_id]) if r.info.run_name == run_name).data.tags

    # an installed bafusion: no commit is its code's
    monkeypatch.setattr(checkout, "source_checkout", lambda: None)
    installed = tags("installed")
    assert "mlflow.source.git.commit" not in installed and "git_commit" not in installed, installed
    assert tracking.DIRTY_TAG not in installed
    assert installed[tracking.PROJECT_COMMIT_TAG] == project_commit
    assert installed[tracking.PROJECT_DIRTY_TAG] == "false"
    assert installed[tracking.VERSION_TAG] == __version__
    assert installed[tracking.CODE_DIGEST_TAG] == checkout.code_digest()
    assert len(installed[tracking.CODE_DIGEST_TAG]) == 64

    # bafusion run from its own checkout (editable), in the downstream project: both, each named
    own = tmp_path / "bafusion-repo"
    own_commit = _git_repo(own, {"pyproject.toml": '[project]\nname = "bafusion"\n', "src/bafusion/x.py": ""})
    monkeypatch.setattr(checkout, "source_checkout", lambda: own.resolve())
    editable = tags("editable")
    assert editable["mlflow.source.git.commit"] == editable["git_commit"] == own_commit != project_commit
    assert editable[tracking.DIRTY_TAG] == "false"
    assert editable[tracking.PROJECT_COMMIT_TAG] == project_commit
    # run in the checkout itself (the pipeline in the project's own repo): one commit, said once
    monkeypatch.chdir(own)
    assert tracking.PROJECT_COMMIT_TAG not in tags("in the checkout")

    # a checkout without git (an unpacked sdist) inside the downstream repo is not its commit's code
    unpacked = downstream / "vendor" / "bafusion-0.2.0"
    (unpacked / "src" / "bafusion").mkdir(parents=True)
    (unpacked / "pyproject.toml").write_text('[project]\nname = "bafusion"\n')
    monkeypatch.setattr(checkout, "source_checkout", lambda: unpacked.resolve())
    monkeypatch.chdir(downstream)
    vendored = tags("vendored")
    assert "mlflow.source.git.commit" not in vendored and vendored[tracking.PROJECT_COMMIT_TAG] == project_commit


def test_a_dvc_experiments_copy_records_its_own_commit_not_the_workspaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dvc exp run --temp`/`--queue` runs the stages in a copy of the project, a git repository
    DVC checks out at the experiment's baseline (the experiment's changes applied), and sets
    $DVC_ROOT to the workspace (where the runs are stored). The source tags took the project
    from $DVC_ROOT: a run of the copy's code also carried the workspace's commit and its
    uncommitted changes (project.git_commit, project.git_dirty), which are not the experiment's
    (a queued one runs after the workspace moved on). Now the project is the one the run runs
    in: the copy."""
    from bafusion import checkout

    files = {"dvc.yaml": "stages: {}\n", "pyproject.toml": '[project]\nname = "bafusion"\n',
             "src/bafusion/x.py": ""}
    workspace_commit = _git_repo(tmp_path / "workspace", {**files, "later.txt": "moved on\n"})
    (tmp_path / "workspace" / "src" / "bafusion" / "x.py").write_text("x = 2\n")  # uncommitted
    copy = tmp_path / "workspace" / ".dvc" / "tmp" / "exps" / "tmp1"
    copy_commit = _git_repo(copy, files)
    assert copy_commit != workspace_commit
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "workspace"))
    assert tracking.repo_root() == (tmp_path / "workspace").resolve()  # the runs' store stays the workspace's

    monkeypatch.setattr(checkout, "source_checkout", lambda: copy.resolve())  # the Snakefile's src/ first
    tags = tracking.source_tags("x")
    assert tags["mlflow.source.git.commit"] == copy_commit and tags[tracking.DIRTY_TAG] == "false"
    assert tracking.PROJECT_COMMIT_TAG not in tags and tracking.PROJECT_DIRTY_TAG not in tags, tags

    monkeypatch.setattr(checkout, "source_checkout", lambda: None)  # an installed bafusion, in the copy
    tags = tracking.source_tags("x")
    assert tags[tracking.PROJECT_COMMIT_TAG] == copy_commit and tags[tracking.PROJECT_DIRTY_TAG] == "false", tags


def test_the_source_checkout_is_the_repository_of_the_running_code(tmp_path: Path) -> None:
    """Only a package at <repo>/src/bafusion under bafusion's own pyproject.toml is a checkout's
    code: not one installed into site-packages or a --target folder, nor another project's src."""
    from bafusion import checkout

    repo = Path(__file__).resolve().parents[1]
    if checkout.PACKAGE_DIR == repo / "src" / "bafusion":  # the tests run on the editable install
        assert checkout.source_checkout() == repo
    else:  # on an installed copy (pip install .)
        assert checkout.source_checkout() is None
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "bafusion"
    site.mkdir(parents=True)
    assert checkout.source_checkout(site) is None
    other = tmp_path / "other" / "src" / "bafusion"
    other.mkdir(parents=True)
    (tmp_path / "other" / "pyproject.toml").write_text('[project]\nname = "not-bafusion"\n')
    assert checkout.source_checkout(other) is None
    (tmp_path / "other" / "pyproject.toml").write_text("not toml [")
    assert checkout.source_checkout(other) is None
    (tmp_path / "other" / "pyproject.toml").write_text('[project]\nname = "bafusion"\n')
    assert checkout.source_checkout(other) == (tmp_path / "other").resolve()


def test_stages_of_one_dvc_invocation_share_one_parent(uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = {}
    for exp in ("exp-a", "exp-a", "exp-b"):
        for stage in ("patches", "train_initial"):
            _clear_invocation_env(monkeypatch)
            monkeypatch.setenv("DVC_STAGE", stage)
            monkeypatch.setenv("DVC_EXP_NAME", exp)
            ids.setdefault(exp, set()).add(tracking.begin_invocation({"patch": 16}))
            with tracking.stage_run(stage):
                pass
            tracking.end_invocation(True)
    # Without a dvc process above the test, the key is the experiment's name (and baseline):
    # each experiment is one parent, whichever stage opened it.
    assert len(ids["exp-a"]) == 1 and len(ids["exp-b"]) == 1 and ids["exp-a"] != ids["exp-b"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp_id = client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id
    runs = client.search_runs([exp_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(r.info.run_name for r in parents) == ["dvc exp exp-a", "dvc exp exp-b"]
    assert all(r.info.status == "FINISHED" for r in parents)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == next(iter(ids["exp-b"]))]
    assert sorted(r.info.run_name for r in children) == ["patches", "train_initial"]


def test_a_stale_parent_id_is_ignored_and_closing_never_fails_the_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A parent id inherited from another database (a leftover in the environment) does not
    break the pipeline: a new parent is opened, and closing a missing run only warns."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    _clear_invocation_env(monkeypatch)
    monkeypatch.setenv(tracking.PARENT_ENV, "0123456789abcdef0123456789abcdef")
    parent = tracking.begin_invocation({"patch": 16}, "patches")
    assert parent and parent != "0123456789abcdef0123456789abcdef"
    assert "not a run of" in capsys.readouterr().err
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.tracking_uri())
    tracking.end_invocation(True)
    assert client.get_run(parent).info.status == "FINISHED"
    monkeypatch.setenv(tracking.PARENT_ENV, "fedcba9876543210fedcba9876543210")
    tracking.end_invocation(False)  # no such run: a warning, no exception
    assert "could not close the MLflow parent run" in capsys.readouterr().err



def test_artifacts_go_beside_the_database_whatever_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a project's first run started in a sub-folder: MLflow's default would have put the
    # experiment's artifacts in <sub-folder>/mlruns for good
    root, sub = tmp_path / "project", tmp_path / "project" / "notebooks"
    sub.mkdir(parents=True)
    (root / "Snakefile").write_text("")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(sub)
    assert tracking.tracking_uri() == f"sqlite:///{root.resolve() / 'mlflow.db'}"
    (sub / "table.md").write_text("| a |\n")
    with tracking.stage_run("evaluate") as run:
        run.log_artifact(sub / "table.md", "evaluation")
    logged = list((root / "mlruns").rglob("table.md"))
    assert len(logged) == 1 and logged[0].parent.name == "evaluation"
    assert not (sub / "mlruns").exists()


def test_an_old_stores_relative_artifact_root_scatters_no_mlruns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # a store whose bafusion experiment an older MLflow created keeps the relative default
    # "./mlruns/<id>": every run's artifacts and model went to mlruns/ of the folder it ran in
    import sqlite3

    import torch
    from mlflow.tracking import MlflowClient

    root, other = tmp_path / "project", tmp_path / "elsewhere"
    root.mkdir()
    other.mkdir()
    db = root / "mlflow.db"
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(root)
    tracking.ensure_db(uri)  # a store made by the current code ...
    exp_id = MlflowClient(tracking_uri=uri).get_experiment_by_name(tracking.EXPERIMENT).experiment_id
    with sqlite3.connect(db) as con:  # ... as an older MLflow left it
        con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                    (f"./mlruns/{exp_id}", int(exp_id)))
    monkeypatch.chdir(other)
    (other / "table.md").write_text("| a |\n")
    with tracking.stage_run("evaluate") as run:
        run.log_artifact("table.md", "evaluation")
        run.log_model(torch.nn.Linear(2, 1), "net")
    assert not (other / "mlruns").exists()
    logged = list((root / "mlruns" / exp_id).rglob("table.md"))
    assert len(logged) == 1 and logged[0].parent.name == "evaluation"
    assert list((root / "mlruns" / exp_id).rglob("MLmodel"))
    client = MlflowClient(tracking_uri=uri)
    assert client.get_experiment(exp_id).artifact_location == (root / "mlruns" / exp_id).resolve().as_uri()
    assert client.get_run(run.run_id).info.status == "FINISHED"
    err = capsys.readouterr().err
    assert "./mlruns/" in err and str(root.resolve() / "mlruns") in err
    for location, rel in (("./mlruns/1", "./mlruns/1"), ("mlruns/1", "mlruns/1"), ("file:mlruns/1", "mlruns/1"),
                          ("file:///srv/mlruns/1", None), ("/srv/mlruns/1", None), ("s3://bucket/1", None),
                          ("mlflow-artifacts:/1", None), ("C:\\mlruns\\1", None)):
        assert tracking._relative_location(location) == rel, location


class _LosesItsException:
    """Calls a signal handler from ``__del__``, as a signal landing in h5py's weakref callback
    does: Python prints "Exception ignored" and drops what the handler raised."""

    def __init__(self, handler: object, signum: int) -> None:
        self.handler, self.signum = handler, signum

    def __del__(self) -> None:
        self.handler(self.signum, None)  # type: ignore[operator]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize(("signum", "status", "said"), [(signal.SIGTERM, 143, "terminated"),
                                                        (signal.SIGINT, 130, "interrupted")])
def test_a_stop_signal_whose_exception_is_lost_commits_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    signum: int, status: int, said: str,
) -> None:
    from bafusion import atomic
    from bafusion.cli import app

    handler = {signal.SIGTERM: app._exit_on_sigterm, signal.SIGINT: app._interrupt}[signum]
    out, folder = tmp_path / "out.h5", tmp_path / "folder"
    folder.mkdir()
    (folder / "old.txt").write_text("the earlier run's")

    def work(args: object) -> int:
        with atomic.atomic_dir(folder) as tmp:
            (tmp / "new.txt").write_text("half")
            with atomic.atomic_file(out) as part:
                part.write_text("half-written")
                _LosesItsException(handler, signum)  # dropped at once: the exception is lost
                part.write_text("the work goes on")
        return 0

    def parser(command: str | None = None) -> app.Parser:
        p = app.Parser(prog="bafusion")
        sub = p.add_subparsers(dest="command")
        sub.add_parser("composite").set_defaults(func=work)  # a known name, as main names it
        return p

    monkeypatch.setattr(app, "build_parser", parser)
    try:
        assert app.main(["composite"]) == status
    finally:
        atomic.clear_stop()
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"bafusion composite: {said}"
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["folder"]
    assert [p.name for p in folder.iterdir()] == ["old.txt"]


_LOST_STOP = """
import sys, signal
from bafusion.cli import app

class Loses:
    def __init__(self, handler, signum):
        self.handler, self.signum = handler, signum
    def __del__(self):
        self.handler(self.signum, None)

def work(args):
    Loses({handler}, {signum})  # dropped at once: the handler raises inside __del__
    return 0

def parser(command=None):
    p = app.Parser(prog="bafusion")
    sub = p.add_subparsers(dest="command")
    sub.add_parser("composite").set_defaults(func=work)
    return p

app.build_parser = parser
sys.exit(app.main(["composite"]))
"""


@pytest.mark.parametrize(("handler", "signum", "status", "said"),
                         [("app._exit_on_sigterm", signal.SIGTERM, 143, "terminated"),
                          ("app._interrupt", signal.SIGINT, 130, "interrupted")])
def test_a_stop_raised_in_a_callback_prints_no_exception_ignored(
    handler: str, signum: int, status: int, said: str,
) -> None:
    # Ctrl-C landing in a WeakValueDictionary callback printed "Exception ignored in: ...
    # raise KeyboardInterrupt" with a traceback before the one line "interrupted"
    code = _LOST_STOP.format(handler=handler, signum=int(signum))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == status
    assert done.stderr.strip().splitlines() == [f"bafusion composite: {said}"]


def test_the_unraisable_hook_drops_only_a_requested_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from bafusion import atomic
    from bafusion.cli import app

    seen: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    seen_in_main: list[object] = []

    def work(args: object) -> int:
        hook = sys.unraisablehook
        other = SimpleNamespace(exc_type=ValueError, exc_value=ValueError("x"), exc_traceback=None,
                                err_msg=None, object=None)
        stop = SimpleNamespace(exc_type=KeyboardInterrupt, exc_value=KeyboardInterrupt(),
                               exc_traceback=None, err_msg=None, object=None)
        hook(stop)  # no stop requested yet: not ours to drop
        hook(other)
        atomic.request_stop(signal.SIGINT)
        hook(stop)  # dropped
        hook(SimpleNamespace(**{**vars(stop), "exc_type": SystemExit, "exc_value": SystemExit(130)}))
        hook(other)  # still said
        seen_in_main.extend(seen)
        return 0

    def parser(command: str | None = None) -> app.Parser:
        p = app.Parser(prog="bafusion")
        sub = p.add_subparsers(dest="command")
        sub.add_parser("composite").set_defaults(func=work)
        return p

    monkeypatch.setattr(app, "build_parser", parser)
    try:
        assert app.main(["composite"]) == 130
    finally:
        atomic.clear_stop()
    assert [a.exc_type for a in seen_in_main] == [KeyboardInterrupt, ValueError, ValueError]
    assert sys.unraisablehook == seen.append  # given back


def test_main_gives_the_process_its_signal_handlers_back(tmp_path: Path) -> None:
    # main() left its SIGINT handler installed and a stop it recorded set: a Ctrl-C the caller
    # caught later (a notebook) made every later write of the process refuse
    from bafusion import atomic
    from bafusion.cli import app

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert app.main(["preset", "paper", "--format", "yaml"]) == 0
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
    except KeyboardInterrupt:
        pass
    try:
        atomic.write_text(tmp_path / "x.txt", "written")
    except KeyboardInterrupt:
        atomic.clear_stop()
        pytest.fail("the write was refused: main's stop request outlived it")
    assert (tmp_path / "x.txt").read_text() == "written"


# --------------------------------------------------------------------------------------
# A store that fails: the work is done, untracked, with one warning line


@pytest.fixture
def no_invocation(monkeypatch: pytest.MonkeyPatch) -> None:
    """No parent run or DVC stage in the environment (:func:`_clear_invocation_env`), for a test
    that points ``$MLFLOW_TRACKING_URI`` at a failing store itself. (Tracking turned off by the
    failing store, and ``$BAFUSION_MLFLOW=0`` set for its children, are restored after every test
    by tests/conftest.py's autouse ``_tracking_on_again``.)"""
    _clear_invocation_env(monkeypatch)


def _one_warning(err: str, store: str) -> str:
    # (MLflow's own INFO lines as it creates a fresh database aside)
    lines = [ln for ln in err.splitlines() if ln.strip() and " INFO mlflow." not in ln]
    assert len(lines) == 1, err
    assert lines[0].startswith("bafusion: warning: MLflow tracking store ") and store in lines[0]
    assert "BAFUSION_MLFLOW=0" in lines[0] and "MLFLOW_TRACKING_URI" in lines[0]
    return lines[0]


@pytest.mark.usefixtures("no_invocation")
def test_a_corrupt_database_only_warns_and_the_step_is_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # every step failed with a traceback ("internal error ... DatabaseError"), doing nothing
    from bafusion.cli import app

    db = tmp_path / "corrupt.db"
    db.write_bytes(os.urandom(100_000))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    assert app.main(["prepare", "--source", "builtin", "--foregrounds", "1", "--backgrounds", "1",
                     "--holdout-foregrounds", "0", "--holdout-backgrounds", "0",
                     "--out", str(tmp_path / "p"), "--no-progress"]) == 0
    assert (tmp_path / "p" / "manifest.json").is_file()
    line = _one_warning(capsys.readouterr().err, str(db))
    assert "file is not a database" in line
    # later calls of the process, Snakemake's onstart/onsuccess included, do nothing and say nothing
    assert tracking.ensure_db() is None and tracking.begin_invocation({}, "all") is None
    with tracking.stage_run("composite") as run:
        run.log_metrics({"n": 1.0})
        (tmp_path / "out.txt").write_text("done")
    tracking.end_invocation(True)
    assert (tmp_path / "out.txt").read_text() == "done"
    assert capsys.readouterr().err == ""
    assert os.environ["BAFUSION_MLFLOW"] == "0"  # Snakemake's jobs do not try the store again


def test_a_test_whose_store_fails_turns_tracking_off_for_itself(capsys: pytest.CaptureFixture[str]) -> None:
    """Half of a pair with the next test: a test whose store fails (here said directly, as
    stage_run says a corrupt database) turns tracking off, without any fixture of its own to
    turn it on again (tests/conftest.py's autouse _tracking_on_again does, after every test)."""
    tracking._turn_off(tracking.tracking_uri(), RuntimeError("file is not a database"))
    assert not tracking.enabled() and os.environ["BAFUSION_MLFLOW"] == "0"
    assert "file is not a database" in capsys.readouterr().err


def test_tracking_is_on_again_in_the_test_after_one_whose_store_failed() -> None:
    """Run after the test above (pytest keeps a file's order): tracking was still off here, and
    $BAFUSION_MLFLOW was 0, for every later test of the process, whose runs were then not
    logged (a test of them failed or passed by the order the tests ran in). Each test starts
    with tracking on (tests/conftest.py: _tracking_on_again)."""
    assert tracking._broken is None and os.environ.get("BAFUSION_MLFLOW") != "0"
    assert tracking.enabled()


@pytest.mark.usefixtures("no_invocation")
def test_onstart_with_a_corrupt_database_only_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Snakemake's onstart (workflow/rules/common.smk) failed: "DatabaseError in file common.smk"
    db = tmp_path / "corrupt.db"
    db.write_bytes(os.urandom(100_000))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    assert tracking.enabled()
    tracking.ensure_db()
    assert tracking.begin_invocation({"patch": 16}, "all") is None
    tracking.end_invocation(False)
    _one_warning(capsys.readouterr().err, str(db))
    assert not tracking.enabled() and tracking.PARENT_ENV not in os.environ


def test_a_store_failing_mid_run_only_warns_once(
    uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow.exceptions import MlflowException

    def locked(*args: object, **kwargs: object) -> None:
        raise MlflowException("(sqlite3.OperationalError) database is locked\n[SQL: INSERT ...]")

    monkeypatch.setattr(tracking, "RETRY_BACKOFF_S", 0.01, raising=False)
    with tracking.stage_run("train_initial") as run:
        monkeypatch.setattr(run.client, "log_batch", locked)
        monkeypatch.setattr(run.client, "log_metric", locked)
        for epoch in range(3):
            run.log_metrics({"val_acc": 0.5}, step=epoch)
        run.log_metric("x", 1.0)
        run.set_tag("t", "v")
        (tmp_path / "model.pt").write_text("trained")
    assert (tmp_path / "model.pt").read_text() == "trained"
    err = capsys.readouterr().err
    assert "database is locked" in _one_warning(err.split("bafusion: warning: the MLflow run")[0], uri)
    # the store answers again at the end: the run is ended and marked, not left RUNNING forever
    from mlflow.tracking import MlflowClient

    info = MlflowClient(tracking_uri=uri).get_run(run.run_id)
    assert info.info.status == "FAILED" and info.data.tags["bafusion.incomplete"] == "true"
    assert "database is locked" in info.data.tags["tracking_incomplete"]
    # the work's own exceptions still come through, untouched
    with pytest.raises(ValueError, match="bad input"):
        with tracking.stage_run("evaluate"):
            raise ValueError("bad input")


@pytest.mark.usefixtures("no_invocation")
def test_a_stop_is_not_taken_for_a_failing_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a stop signal whose exception was lost (bafusion.atomic) is raised, not warned about
    from bafusion import atomic

    db = tmp_path / "corrupt.db"
    db.write_bytes(os.urandom(100_000))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    atomic.request_stop(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as stopped:
            with tracking.stage_run("prepare"):
                pytest.fail("the step began after a stop")
    finally:
        atomic.clear_stop()
    assert stopped.value.code == 143


@pytest.mark.usefixtures("no_invocation")
def test_an_unreachable_server_costs_seconds_not_minutes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # MLflow retried a refused connection for ~4 minutes, then the step failed with a traceback
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    t0 = time.monotonic()
    assert tracking.begin_invocation({}, "all") is None
    with tracking.stage_run("prepare") as run:
        run.log_metric("n", 1.0)
        (tmp_path / "out.txt").write_text("done")
    assert time.monotonic() - t0 < 15
    assert (tmp_path / "out.txt").read_text() == "done"
    assert f"cannot connect to 127.0.0.1:{port}" in _one_warning(capsys.readouterr().err, uri)


def test_the_warning_hides_a_password_in_the_uri(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BAFUSION_MLFLOW", "1")
    tracking._turn_off("https://me:s3cret@mlflow.example.org", RuntimeError("401 Unauthorized"))
    line = capsys.readouterr().err
    assert "s3cret" not in line and "https://me:***@mlflow.example.org: 401 Unauthorized" in line


def test_the_warning_names_the_cause_behind_sqlalchemys_autoflush_note(monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """An sqlite store on a full disk failed during an autoflush: SQLAlchemy's message begins
    with its note "(raised as a result of Query-invoked autoflush; ...)" and names the cause on
    the next line; the warning gave only the note, nothing of the full disk."""
    import sqlite3

    from sqlalchemy import exc

    error = exc.OperationalError("INSERT INTO runs (run_uuid) VALUES (?)", ("abc",),
                                 sqlite3.OperationalError("database or disk is full"))
    error.add_detail("raised as a result of Query-invoked autoflush; consider using a session.no_autoflush block "
                     "if this flush is occurring prematurely")
    assert str(error).startswith("(raised as a result of Query-invoked autoflush")  # the shape met
    monkeypatch.setenv("BAFUSION_MLFLOW", "1")
    tracking._turn_off("sqlite:////full/ml/mlflow.db", RuntimeError(str(error)))  # as MLflow passes it on
    line = _one_warning(capsys.readouterr().err, "sqlite:////full/ml/mlflow.db")
    assert "mlflow.db: (sqlite3.OperationalError) database or disk is full;" in line, line
    assert "autoflush" not in line, line
    assert tracking._first_line(error) == "(sqlite3.OperationalError) database or disk is full"
    assert tracking._first_line(RuntimeError("(only a note)")) == "(only a note)"  # nothing else: kept
    assert tracking._first_line(RuntimeError("")) == "RuntimeError"


def test_the_docs_name_only_the_switch_that_exists() -> None:
    # the module said "tracking.enabled: false in params" turned logging off: no such option
    import yaml

    root = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert "tracking" not in params
    assert "tracking.enabled" not in (tracking.__doc__ or "")
    assert "BAFUSION_MLFLOW=0" in (tracking.__doc__ or "")
    readme = (root / "README.md").read_text()
    assert "never fails the work" in " ".join(readme.split())  # a store that fails


def test_logging_a_net_does_not_print_mlflows_pickle_warning(uri: str) -> None:
    # Every training printed "WARNING mlflow.pytorch: Saving pytorch model by Pickle ... can execute
    # arbitrary code" (twice per dvc repro); the README says what the pickle means instead.
    import logging

    from bafusion.nets.model import build_model

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("mlflow.pytorch")
    handler = Keep(level=logging.DEBUG)
    logger.addHandler(handler)
    try:
        with tracking.stage_run("train_initial") as run:
            run.log_model(build_model(8), "initial_net")
        assert run.run_id  # the model was logged, not skipped
        assert not [r for r in records if "Pickle" in r.getMessage()], [r.getMessage() for r in records]
        logger.warning("Saving pytorch model by Pickle, outside the call")  # the filter is gone afterwards
        assert records and records[-1].getMessage().startswith("Saving pytorch model by Pickle")
    finally:
        logger.removeHandler(handler)


def test_warnings_made_errors_are_no_failing_store(
    uri: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under ``PYTHONWARNINGS=error`` (as CI jobs set) MLflow's own UserWarning when a net is
    logged ("Any type hint is inferred as AnyType", in terminal colours) came out as an
    exception, taken for a failing store: tried 4 times (4 FAILED logged models in the store),
    the run FAILED, its last metric lost, tracking off, and a warning quoting the escape codes.
    MLflow's code now runs with such warnings shown as warnings: the run is FINISHED, whole."""
    import warnings

    from mlflow.tracking import MlflowClient

    from bafusion.nets.model import build_model

    monkeypatch.setattr(tracking, "RETRY_BACKOFF_S", 0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with tracking.stage_run("train_initial") as run:
            run.log_model(build_model(8), "initial_net")
            run.log_metric("val_acc", 0.5)
        with pytest.raises(UserWarning):  # the process's own warnings are still errors
            warnings.warn("the caller's", UserWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert "warning: MLflow tracking store" not in err and "incomplete" not in err, err
    client = MlflowClient(tracking_uri=uri)
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and tracking.INCOMPLETE_TAG not in got.data.tags
    assert got.data.metrics["val_acc"] == 0.5
    assert len(client.search_logged_models(experiment_ids=[got.info.experiment_id])) == 1


def test_only_a_failing_store_is_tried_again_and_its_colours_are_not_quoted(
    uri: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Any exception of an MLflow call was tried 4 times and called the store's failure: a
    warning made an error, a bug's TypeError, each deterministic. Only the store's own errors
    (a disk, a connection, the database, MLflow's of the store) are tried again; and the
    warning line quotes no terminal colour codes (ESC[1;33m) into the log."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

    monkeypatch.setattr(tracking, "RETRY_BACKOFF_S", 0.0)
    monkeypatch.setattr(tracking, "check_reachable", lambda uri, timeout=0: None)

    def calls_of(error: BaseException) -> int:
        calls = []

        def fail() -> None:
            calls.append(1)
            raise error

        with pytest.raises(type(error)):
            tracking._retried("sqlite:///x.db", fail)
        return len(calls)

    try:
        raise UserWarning("\x1b[1;33mAny type hint is inferred as AnyType\x1b[0m")
    except UserWarning as w:
        try:
            raise MlflowException(str(w)) from w  # as MLflow's store wraps what its code raised
        except MlflowException as e:
            wrapped = e
    for deterministic in (UserWarning("a warning made an error"), TypeError("a bug"), wrapped,
                          MlflowException("no such run", error_code=RESOURCE_DOES_NOT_EXIST)):
        assert calls_of(deterministic) == 1, deterministic
    for store in (MlflowException("(sqlite3.OperationalError) database is locked"), OSError(28, "No space left"),
                  ConnectionError("Connection refused"), sqlite3.OperationalError("database is locked")):
        assert calls_of(store) == tracking.RETRIES + 1, store
    with tracking.stage_run("train_initial") as run:
        monkeypatch.setattr(run.client, "log_batch", lambda *a, **k: (_ for _ in ()).throw(wrapped))
        run.log_metrics({"val_acc": 0.5})
    err = capsys.readouterr().err
    assert "Any type hint is inferred as AnyType; not a failure a retry mends" in err, err
    assert "\x1b" not in err and "still failing after" not in err, err


WITHOUT_FCNTL = r"""
import sys
sys.modules["fcntl"] = None  # as on Windows: `import fcntl` raises ImportError
from bafusion import tracking
uri = sys.argv[1]
assert tracking.ensure_db(uri) == uri, "the store was turned off"
run_id = tracking.begin_invocation({"patch": 16})
with tracking.stage_run("patches"):
    pass
tracking.end_invocation(True)
print("run", run_id)
"""


def test_tracking_imports_and_logs_without_fcntl(tmp_path: Path) -> None:
    """bafusion.tracking imported fcntl unguarded: ``import bafusion.tracking`` (every pipeline
    step) failed where it is missing (Windows). Without it the store's file locks are not
    taken, and a run is still created and closed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BAFUSION_", "MLFLOW_TRACKING", "DVC_"))}
    env["PYTHONPATH"] = str(Path(tracking.__file__).resolve().parents[1])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env["MLFLOW_TRACKING_URI"] = uri  # tmp_path is outside any project: tracking is asked for
    p = subprocess.run([sys.executable, "-c", WITHOUT_FCNTL, uri], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "run " in p.stdout and "run None" not in p.stdout, p.stdout + p.stderr[-2000:]
    assert "going on without tracking" not in p.stderr, p.stderr[-2000:]


def test_a_store_failing_for_a_moment_loses_nothing(
    uri: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # one "database is locked" (another process writing for a moment) turned tracking off for
    # the rest of a multi-hour training: every later epoch's metrics were lost
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    monkeypatch.setattr(tracking, "RETRY_BACKOFF_S", 0.01, raising=False)
    with tracking.stage_run("train_initial") as run:
        real = run.client.log_batch
        fails = {"left": 2, "calls": 0}

        def flaky(*args: object, **kwargs: object) -> None:
            fails["calls"] += 1
            if fails["left"]:
                fails["left"] -= 1
                raise MlflowException("(sqlite3.OperationalError) database is locked")
            real(*args, **kwargs)

        monkeypatch.setattr(run.client, "log_batch", flaky)
        for epoch in range(3):
            run.log_metrics({"val_acc": 0.5 + epoch / 10}, step=epoch)
    assert fails["calls"] == 5
    err = "\n".join(ln for ln in capsys.readouterr().err.splitlines() if " INFO mlflow." not in ln)
    assert "warning" not in err
    client = MlflowClient(tracking_uri=uri)
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and tracking.INCOMPLETE_TAG not in got.data.tags
    assert [m.step for m in client.get_metric_history(run.run_id, "val_acc")] == [0, 1, 2]


def test_a_store_failing_for_good_says_what_the_run_misses(
    uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    monkeypatch.setattr(tracking, "RETRY_BACKOFF_S", 0.01, raising=False)
    calls = []

    def full(*args: object, **kwargs: object) -> None:
        calls.append(1)
        raise MlflowException("(sqlite3.OperationalError) database or disk is full")

    with tracking.stage_run("train_initial") as run:
        run.log_metrics({"val_acc": 0.4}, step=0)
        monkeypatch.setattr(run.client, "log_batch", full)
        monkeypatch.setattr(run.client, "log_metric", full)
        monkeypatch.setattr(run.client, "log_artifact", full)
        for epoch in range(1, 4):
            run.log_metrics({"val_acc": 0.5}, step=epoch)
        run.log_artifact(tmp_path / "model.pt", "model")
    assert len(calls) == tracking.RETRIES + 1  # tried again, then given up: not once per epoch
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and " INFO mlflow." not in ln]
    assert len(lines) == 2, lines
    assert "database or disk is full" in lines[0] and "tracking is now off" in lines[0]
    assert "'train_initial'" in lines[0] and run.run_id in lines[0]
    # the end of the step says the run is incomplete and what it misses
    assert lines[1].startswith(f"bafusion: warning: the MLflow run 'train_initial' ({run.run_id}) is incomplete")
    assert "misses 4 metrics, 1 artifact since the store failed at " in lines[1] and "bafusion.incomplete=true" in lines[1]
    # the store answers again at the end: the run is marked, not FINISHED as if complete
    got = MlflowClient(tracking_uri=uri).get_run(run.run_id)
    assert got.info.status == "FAILED"
    assert got.data.tags[tracking.INCOMPLETE_TAG] == "true"
    assert got.data.tags["bafusion.step_status"] == "FINISHED"
    assert "disk is full" in got.data.tags["tracking_incomplete"]


def test_a_server_down_mid_run_is_not_called_into_minutes_of_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    # MLflow's own client retries a refused request for minutes: each try first checks that
    # the server accepts a connection, the first one too (the run's end after a failure)
    monkeypatch.setattr(tracking, "RETRY_BACKOFF_S", 0.0)
    checked, called = [], []

    def down(uri: str, timeout: float = 0) -> None:
        checked.append(uri)
        raise tracking.Unreachable("cannot connect to 127.0.0.1:9: Connection refused")

    monkeypatch.setattr(tracking, "check_reachable", down)
    with pytest.raises(tracking.Unreachable):
        tracking._retried("http://127.0.0.1:9", lambda: called.append(1))
    assert called == [] and len(checked) == tracking.RETRIES + 1


_KILLABLE = """
import time
from bafusion import tracking
with tracking.stage_run("evaluate") as run:
    print(run.run_id, flush=True)
    time.sleep(120)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process start times from /proc")
def test_a_sigkilled_steps_run_is_ended_killed_by_the_next_step(uri: str) -> None:
    # SIGKILL (the OOM killer, a node lost) left an evaluate's MLflow run RUNNING for good: the
    # next step's run ends it KILLED, naming itself; runs of live processes, of another host, or
    # without the process tags are left alone, and a PID reused by a later process is seen as such
    from mlflow.tracking import MlflowClient

    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    procs = [subprocess.Popen([sys.executable, "-c", _KILLABLE], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    try:
        killed_id, alive_id = (p.stdout.readline().strip() for p in procs)  # type: ignore[union-attr]
        procs[0].kill()
        procs[0].wait(timeout=60)
        client = MlflowClient(tracking_uri=uri)
        exp_id = client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id
        tags = client.get_run(alive_id).data.tags
        # the live process's PID, with another start time: a later process reusing a dead one's PID
        reused = client.create_run(exp_id, tags={**{k: v for k, v in tags.items() if k.startswith("bafusion.process")},
                                                 "bafusion.process.start": "1"}).info.run_id
        elsewhere = client.create_run(exp_id, tags={**client.get_run(killed_id).data.tags,
                                                    "bafusion.process.host": "another-host"}).info.run_id
        untagged = client.create_run(exp_id).info.run_id  # an earlier version's, or a parent run
        with tracking.stage_run("evaluate") as run:
            later = run.run_id
            run.end_interrupted(killed_id)  # a training resuming it: ended already, still named
        status = {r.info.run_id: r.info.status for r in client.search_runs([exp_id])}
        assert status == {killed_id: "KILLED", reused: "KILLED", alive_id: "RUNNING", elsewhere: "RUNNING",
                          untagged: "RUNNING", later: "FINISHED"}
        assert client.get_run(killed_id).data.tags["ended_by_run_id"] == later
        assert client.get_run(killed_id).data.tags["resumed_by_run_id"] == later
        assert client.get_run(reused).data.tags["ended_by_run_id"] == later
        assert "ended_by_run_id" not in client.get_run(alive_id).data.tags
        assert tags["bafusion.process.pid"] == str(procs[1].pid)
    finally:
        for p in procs:
            p.kill()
            p.communicate(timeout=60)


_PARENT = """
import sys, time
from bafusion import tracking
print(tracking.begin_invocation({}, "all"), flush=True)
if sys.argv[1] == "end":
    tracking.end_invocation(True)
else:
    time.sleep(120)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process start times from /proc")
def test_a_killed_snakemakes_parent_run_is_ended_and_a_reopened_one_is_not(
    uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a Snakemake killed (SIGKILL, or stopped without its onerror) left its parent run RUNNING;
    # a DVC stage's Snakemake reopens the parent of the last one, which has exited: it is its own
    from mlflow.tracking import MlflowClient

    env = {k: v for k, v in os.environ.items() if k not in (tracking.PARENT_ENV, "DVC_STAGE", "DVC_EXP_NAME")}
    killed = subprocess.Popen([sys.executable, "-c", _PARENT, "sleep"], stdout=subprocess.PIPE, text=True,
                              env={**env, "MLFLOW_TRACKING_URI": uri})
    try:
        killed_id = killed.stdout.readline().strip()  # type: ignore[union-attr]
    finally:
        killed.kill()
        killed.communicate(timeout=60)
    dvc = {**env, "MLFLOW_TRACKING_URI": uri, "DVC_STAGE": "patches", "DVC_EXP_NAME": "exp-a"}
    done = subprocess.run([sys.executable, "-c", _PARENT, "end"], capture_output=True, text=True, env=dvc,
                          check=True, timeout=120)
    monkeypatch.setenv("DVC_STAGE", "train_initial")
    monkeypatch.setenv("DVC_EXP_NAME", "exp-a")
    reopened = tracking.begin_invocation({}, "all")
    assert reopened == done.stdout.strip()
    with tracking.stage_run("train_initial") as run:
        step = run.run_id
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(killed_id).info.status == "KILLED"
    assert client.get_run(killed_id).data.tags["ended_by_run_id"] == step
    assert client.get_run(reopened).info.status == "RUNNING"  # until its end_invocation
    assert client.get_run(reopened).data.tags["bafusion.process.pid"] == str(os.getpid())
    tracking.end_invocation(True)


def test_an_old_run_that_cannot_be_ended_leaves_the_step_tracked(
    uri: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # ending the runs that dead processes left RUNNING went through the run's retries and, when
    # one of them could not be updated, turned tracking off for the whole step: housekeeping of
    # an old run cost the current one its metrics. Each dead run is ended on its own, once; one
    # that fails is named in one warning line, the others are ended, the step stays tracked
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from bafusion import atomic

    monkeypatch.setattr(tracking, "RETRY_BACKOFF_S", 0.01, raising=False)
    assert tracking.ensure_db() == uri
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id
    dead = {f"{tracking.PROCESS_TAG}.host": "dead-host", f"{tracking.PROCESS_TAG}.pid": "12"}
    stuck, ended = (client.create_run(exp_id, tags=dead, run_name=n).info.run_id for n in ("stuck", "ended"))
    monkeypatch.setattr(atomic, "process_gone", lambda named: named.get("host") == "dead-host")
    real = MlflowClient.set_terminated
    tries = []

    def set_terminated(self: MlflowClient, run_id: str, *args: object, **kwargs: object) -> None:
        if run_id == stuck:
            tries.append(run_id)
            raise MlflowException("(sqlite3.OperationalError) attempt to write a readonly row")
        real(self, run_id, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "set_terminated", set_terminated)
    with tracking.stage_run("evaluate") as run:
        run.log_metric("acc", 0.9)
    assert tracking.enabled() and tries == [stuck]  # once: no retries for housekeeping
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and " INFO mlflow." not in ln]
    assert len(lines) == 1, lines
    assert lines[0].startswith("bafusion: warning: ") and stuck in lines[0] and "readonly row" in lines[0]
    assert ended not in lines[0] and "tracking is now off" not in lines[0] and "tracked as usual" in lines[0]
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and tracking.INCOMPLETE_TAG not in got.data.tags
    assert got.data.metrics["acc"] == 0.9
    assert client.get_run(ended).info.status == "KILLED"
    assert client.get_run(ended).data.tags[tracking.ENDED_BY_TAG] == run.run_id
    assert client.get_run(stuck).info.status == "RUNNING"


@pytest.mark.usefixtures("no_invocation")
def test_a_server_that_stops_during_the_cleanup_of_dead_runs_costs_one_try(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # a tracking server that stopped while the runs of dead processes were ended: each remaining
    # run went to the server on its own (MLflow retries a refused connection for minutes, here 1 s)
    # and its failure was taken for a run of another store, in silence. The cleanup stops at the
    # first server that does not accept a connection and says once that the rest stay RUNNING
    import socket
    from types import SimpleNamespace

    from bafusion import atomic

    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    port = server.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    dead = {f"{tracking.PROCESS_TAG}.host": "dead-host", f"{tracking.PROCESS_TAG}.pid": "12"}
    ids = [f"dead{i}" for i in range(5)]
    calls: list[str] = []

    def run(run_id: str, tags: dict[str, str]) -> SimpleNamespace:
        return SimpleNamespace(info=SimpleNamespace(run_id=run_id, experiment_id="1", status="RUNNING"),
                               data=SimpleNamespace(tags=tags))

    class Client:
        def _call(self, what: str) -> None:
            calls.append(what)
            if server.fileno() == -1:  # stopped: MLflow's retries, then its error
                time.sleep(1)
                raise ConnectionError(f"{uri}: Max retries exceeded (Connection refused)")

        def get_run(self, run_id: str) -> SimpleNamespace:
            self._call(f"get_run {run_id}")
            return run(run_id, dead if run_id != "mine" else {})

        def search_runs(self, *args: object, **kwargs: object) -> list[SimpleNamespace]:
            self._call("search_runs")
            return [run("mine", {}), *(run(i, dead) for i in ids)]

        def set_tag(self, run_id: str, key: str, value: str) -> None:
            self._call(f"set_tag {run_id}")

        def set_terminated(self, run_id: str, status: str) -> None:
            self._call(f"set_terminated {run_id}")
            server.close()  # the server stops after the first run was ended

    monkeypatch.setattr(atomic, "process_gone", lambda named: named.get("host") == "dead-host")
    t0 = time.monotonic()
    try:
        tracking._Run(Client(), "mine", uri, "evaluate").end_dead_runs()
    finally:
        server.close()
    assert time.monotonic() - t0 < 3
    assert calls[-1] == "set_terminated dead0" and not any("dead1" in c for c in calls), calls
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"bafusion: warning: MLflow tracking store {uri}: could not end as KILLED ")
    assert (f"the store stopped answering (cannot connect to 127.0.0.1:{port}: "
            "Connection refused), so 4 were not tried (dead1, dead2, dead3, dead4)") in lines[0], lines[0]
    assert "they stay RUNNING" in lines[0] and "dead0" not in lines[0]
    assert tracking.enabled()


@pytest.mark.usefixtures("no_invocation")
def test_the_cleanup_of_dead_runs_has_an_overall_bound(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # a store that answers, slowly (a server under load): the cleanup stops after
    # DEAD_RUNS_BUDGET_S seconds in all instead of going through every dead run
    from types import SimpleNamespace

    from bafusion import atomic

    dead = {f"{tracking.PROCESS_TAG}.host": "dead-host", f"{tracking.PROCESS_TAG}.pid": "12"}
    ended: list[str] = []

    def run(run_id: str) -> SimpleNamespace:
        return SimpleNamespace(info=SimpleNamespace(run_id=run_id, experiment_id="1", status="RUNNING"),
                               data=SimpleNamespace(tags=dead if run_id != "mine" else {}))

    class Client:
        def get_run(self, run_id: str) -> SimpleNamespace:
            return run(run_id)

        def search_runs(self, *args: object, **kwargs: object) -> list[SimpleNamespace]:
            return [run("mine"), *(run(f"dead{i}") for i in range(9))]

        def set_tag(self, run_id: str, key: str, value: str) -> None:
            pass

        def set_terminated(self, run_id: str, status: str) -> None:
            time.sleep(0.2)
            ended.append(run_id)

    monkeypatch.setattr(atomic, "process_gone", lambda named: named.get("host") == "dead-host")
    monkeypatch.setattr(tracking, "DEAD_RUNS_BUDGET_S", 0.3)
    tracking._Run(Client(), "mine", "sqlite:///nowhere.db", "evaluate").end_dead_runs()
    assert ended == ["dead0", "dead1"]
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert ("the cleanup took more than 0.3 s, so 7 were not tried (dead2, dead3, dead4, dead5, dead6 and 2 more); "
            "they stay RUNNING (a later step tries again)") in lines[0], lines[0]


@pytest.mark.slow
def test_snakemake_touch_records_no_parent_run(uri: str, tmp_path: Path) -> None:
    """`snakemake --touch` (the README's step after `dvc pull`) runs no job: it recorded a
    FINISHED parent run "snakemake <target>" of no work beside the real ones."""
    from mlflow.tracking import MlflowClient

    from pipeline_project import make_project, run

    project = make_project(tmp_path / "p", git=False)

    def runs() -> list[tuple[str, str]]:
        client = MlflowClient(tracking_uri=uri)
        return sorted((r.info.run_name, r.info.status) for e in client.search_experiments()
                      for r in client.search_runs([e.experiment_id]))

    run(["snakemake", "--cores", "1", "prepare"], project)
    before = runs()
    assert before == [("prepare", "FINISHED"), ("snakemake prepare", "FINISHED")], before
    done = run(["snakemake", "--cores", "1", "prepare", "--touch", "--forcerun", "prepare"], project)
    assert "localrule prepare:" in done.stderr, done.stderr[-2000:]  # its job was touched
    assert runs() == before


# --------------------------------------------------------------------------------------
# Outside a project: nothing logged unless asked


@pytest.fixture
def photo_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory outside any project (no dvc.yaml or Snakefile up the tree, no
    $DVC_ROOT), with no tracking asked for in the environment."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for var in ("MLFLOW_TRACKING_URI", "BAFUSION_MLFLOW", "DVC_ROOT", tracking.PARENT_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(folder)
    assert not any((d / f).exists() for d in (folder, *folder.parents) for f in ("dvc.yaml", "Snakefile"))
    return folder


def _store_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(("mlflow", "mlruns")))


def test_a_step_outside_a_project_logs_nothing_unless_asked(photo_folder: Path, monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    """Outside a project the store defaulted to the working directory: `bafusion evaluate` in a
    folder of photos left mlflow.db, mlflow.db.lock and mlruns/ there. Now nothing is logged
    there unless $MLFLOW_TRACKING_URI or $BAFUSION_MLFLOW=1 asks for it."""
    assert not tracking.enabled()
    with tracking.stage_run("evaluate") as run:
        run.log_metric("x", 1.0)
    assert tracking.begin_invocation({}, "all") is None
    assert _store_files(photo_folder) == []

    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"  # asked for: a store of one's choice
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert tracking.enabled()
    with tracking.stage_run("asked"):
        pass
    assert _runs(uri) == {"asked": "FINISHED"} and _store_files(photo_folder) == []
    monkeypatch.delenv("MLFLOW_TRACKING_URI")

    monkeypatch.setenv("BAFUSION_MLFLOW", "1")  # asked for: the working directory's store
    assert tracking.enabled()
    with tracking.stage_run("here"):
        pass
    assert _runs(f"sqlite:///{photo_folder / 'mlflow.db'}") == {"here": "FINISHED"}
    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    assert not tracking.enabled()


def test_a_step_inside_a_project_is_logged_into_its_store(photo_folder: Path) -> None:
    """In a project (a Snakefile or dvc.yaml up the tree) a step is logged, as before."""
    (photo_folder / "dvc.yaml").write_text("stages: {}\n")
    sub = photo_folder / "sub"
    sub.mkdir()
    os.chdir(sub)  # monkeypatch.chdir (the fixture) restores the original directory
    assert tracking.enabled() and tracking.repo_root() == photo_folder.resolve()
    with tracking.stage_run("evaluate"):
        pass
    assert _runs(f"sqlite:///{photo_folder.resolve() / 'mlflow.db'}") == {"evaluate": "FINISHED"}
    assert _store_files(sub) == []


def test_evaluate_in_a_folder_of_photos_leaves_no_tracking_store(photo_folder: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """README's `bafusion evaluate --dataset mine=PAIRS,...` run beside one's pairs left
    mlflow.db, mlflow.db.lock and mlruns/ in that folder."""
    import numpy as np
    from PIL import Image

    from bafusion.cli import main as cli_main

    pairs = photo_folder / "pairs"
    pairs.mkdir()
    rng = np.random.default_rng(0)
    for k in "AB":
        Image.fromarray(rng.integers(0, 256, (40, 48), dtype=np.uint8)).save(pairs / f"p1-{k}.png")
    rc = cli_main(["evaluate", "--dataset", "mine=pairs", "--methods", "Laplacian", "--metrics", "QG",
                   "--out", "ev"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert (photo_folder / "ev" / "mine" / "metrics.csv").is_file()
    assert _store_files(photo_folder) == [] and not list(photo_folder.rglob("mlflow.db*"))


# A stop while the sqlite store is created: no half-built store that breaks tracking for good

#: Builds a store (``ensure_db`` of bafusion, or MLflow's own client in place as bafusion did
#: before) and SIGKILLs itself halfway through MLflow's schema migrations: at alembic's third
#: copy of a table being changed, as a Ctrl-C or a SLURM stop seconds into a first step did.
KILLED_MID_MIGRATION = """
import os, signal, sys
import sqlalchemy
from sqlalchemy import event

copies = 0

@event.listens_for(sqlalchemy.engine.Engine, "before_cursor_execute")
def _stop(conn, cursor, statement, *args):
    global copies
    if statement.lstrip().upper().startswith("INSERT INTO _ALEMBIC_TMP_"):
        copies += 1
        if copies == 3:
            os.kill(os.getpid(), signal.SIGKILL)

if sys.argv[2] == "in-place":
    from mlflow.tracking import MlflowClient
    MlflowClient(tracking_uri=sys.argv[1])
else:
    from bafusion import tracking
    tracking.ensure_db(sys.argv[1])
print("not stopped")
"""


def _killed_mid_migration(uri: str, how: str) -> None:
    proc = subprocess.run([sys.executable, "-c", KILLED_MID_MIGRATION, uri, how], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout, proc.stderr[-2000:])


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.usefixtures("no_invocation")
def test_a_stop_while_the_store_is_created_leaves_no_half_built_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # the store was migrated in place: the stopped step left it half-built, and every later
    # step warned "table review_queues already exists; going on without tracking", for good
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    _killed_mid_migration(uri, "ensure_db")
    assert not db.exists()  # what was stopped was a store under a temporary name
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with tracking.stage_run("prepare") as run:
        run.log_metrics({"n": 1.0})
    assert _runs(uri) == {"prepare": "FINISHED"}
    assert "warning" not in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "mlflow.db.lock"]  # nothing left over


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.usefixtures("no_invocation")
def test_a_half_built_store_of_an_older_version_without_runs_is_built_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    _killed_mid_migration(uri, "in-place")  # as bafusion built a store before
    state = tracking._store_state(db)
    assert state.unfinished and state.holds_nothing
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with tracking.stage_run("prepare"):
        pass
    assert _runs(uri) == {"prepare": "FINISHED"}
    err = capsys.readouterr().err
    assert "was half-built" in err and "held no runs and was built again" in err and "warning" not in err


@pytest.mark.usefixtures("no_invocation")
def test_a_half_built_store_with_runs_is_kept_and_the_warning_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a store with runs whose migration (an MLflow upgrade) was stopped: never replaced
    import sqlite3

    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with tracking.stage_run("train_initial"):
        pass
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config, _get_latest_schema_revision

    script = ScriptDirectory.from_config(_get_alembic_config(""))
    earlier = script.get_revision(_get_latest_schema_revision()).down_revision
    with sqlite3.connect(db) as con:  # as a stopped batch migration of the last revision leaves it
        con.execute("CREATE TABLE _alembic_tmp_latest_metrics (key VARCHAR(250))")
        con.execute("UPDATE alembic_version SET version_num = ?", (earlier,))
    before = db.read_bytes()
    # the next step, a new process (this one keeps MLflow's store open)
    step = ("from bafusion import tracking\nwith tracking.stage_run('prepare'):\n    print('done')")
    proc = subprocess.run([sys.executable, "-c", step], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 0 and proc.stdout == "done\n", proc.stderr
    line = _one_warning(proc.stderr, str(db))
    assert "a half-built store" in line and "_alembic_tmp_latest_metrics" in line, line
    assert "it holds 1 run, so it is kept" in line and f"mv {db} {db}.half-built" in line, line
    assert db.read_bytes() == before  # its run is there as it was
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT name FROM runs").fetchall() == [("train_initial",)]


def _parent_and_step_params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, params: dict, target: str,
                            stage: str, logged: dict) -> tuple[dict[str, str], dict[str, str]]:
    """The params MLflow holds (a store in ``tmp_path``) for the parent run of an invocation of
    ``target`` with ``params`` and for its step ``stage`` that logged ``logged``."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    _clear_invocation_env(monkeypatch)
    parent = tracking.begin_invocation(params, target)
    with tracking.stage_run(stage, logged) as run:
        pass
    tracking.end_invocation(True)
    client = MlflowClient(tracking_uri=uri)
    return client.get_run(parent).data.params, client.get_run(run.run_id).data.params


def test_a_setting_has_one_name_and_spelling_in_the_parent_and_its_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the parent logged params.yaml's fuse.scales as "[1.0]", the fuse and evaluate steps
    # asdict(FusionParams)'s tuple as "(1.0,)": a search for either missed half the runs
    from dataclasses import asdict

    from bafusion.fusion import FusionParams

    parent_params, step_params = _parent_and_step_params(tmp_path, monkeypatch, {"fuse": {"scales": [1.0], "l": 8}},
                                                         "all", "fuse", {"fuse": asdict(FusionParams())})
    assert parent_params["fuse.scales"] == step_params["fuse.scales"] == "[1]"
    assert parent_params["fuse.l"] == step_params["fuse.l"] == "8"


def test_a_whole_float_setting_has_one_spelling_in_the_parent_and_the_training_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``train.lr: 1`` in params.yaml logged as "1" in the parent run and "1.0" in the training
    run (the trainer casts it to float): a search for either missed half the runs. Both are
    "1" now; a fraction keeps its digits."""
    from bafusion.nets.train import TrainConfig

    params = {"seed": 0, "patch": 16, "depth": 8, "train": {"lr": 1, "momentum": 0.5, "epochs": 1}}
    cfg = TrainConfig.from_params(params, "initial")
    assert isinstance(cfg.lr, float) and cfg.lr == 1.0  # the trainer's value
    parent_params, step_params = _parent_and_step_params(tmp_path, monkeypatch, params, "train_initial",
                                                         "train_initial", {"train": {"lr": cfg.lr, "momentum": cfg.momentum}})
    assert parent_params["train.lr"] == step_params["train.lr"] == "1"
    assert parent_params["train.momentum"] == step_params["train.momentum"] == "0.5"


def test_an_empty_store_file_is_built_under_the_temporary_name_too(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A 0-byte mlflow.db (what sqlite leaves when a process is stopped right after opening a
    new store) was kept by the hard link of _build_store, and MlflowClient then migrated it in
    place: the non-atomic build that a stop leaves half-done."""
    db = tmp_path / "mlflow.db"
    db.touch()
    sizes: list[int] = []
    real = tracking._build_store

    def spy(path: Path, uri: str, replace: bool = False) -> None:
        real(path, uri, replace=replace)
        sizes.append(path.stat().st_size)

    monkeypatch.setattr(tracking, "_build_store", spy)
    tracking._ensure_db(f"sqlite:///{db}")
    assert sizes and sizes[0] > 0, sizes  # the built store is in place before any in-place migration
    assert not list(tmp_path.glob(".mlflow.db.building*"))


@pytest.mark.parametrize("name", ["proj?x", "proj?x#y %41", "proj%41"])
def test_a_project_path_holding_a_question_mark_is_tracked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str], name: str) -> None:
    """``sqlite:///<path>`` with a ``?`` in the project's path: SQLAlchemy took the rest for the
    URI's query, the store was created at ``.../proj`` and renamed into place failed, "No such
    file or directory", and tracking was turned off. Now the URI is SQLite's URI file name with
    the path percent-encoded: the store is ``mlflow.db`` in the project, its artifacts beside.
    With SQLAlchemy 2.1, which percent-decodes the URL's database part, the URI form encoded
    once failed the same way, and a ``%41`` in the plain form was read as ``A``."""
    root = tmp_path / name
    root.mkdir()
    (root / "Snakefile").write_text("")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(root)
    uri = tracking.tracking_uri()
    (root / "table.md").write_text("| a |\n")
    with tracking.stage_run("evaluate") as run:
        run.log_artifact(root / "table.md", "evaluation")
    assert "warning" not in capsys.readouterr().err
    assert (root / "mlflow.db").is_file()
    assert not (tmp_path / "proj").exists() and not (tmp_path / "proj.lock").exists()
    assert sorted(p.name for p in root.iterdir()) == ["Snakefile", "mlflow.db", "mlflow.db.lock", "mlruns", "table.md"]
    assert _runs(uri) == {"evaluate": "FINISHED"}
    logged = list((root / "mlruns").rglob("table.md"))
    assert len(logged) == 1 and logged[0].parent.name == "evaluation"


def test_sqlite_path_reads_the_plain_and_the_uri_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLAlchemy 2.0 takes a URL's database part literally; the URI form's path is encoded once."""
    monkeypatch.setattr(tracking, "_sqlalchemy_unquotes", lambda: False)
    assert tracking.sqlite_path("sqlite:////a/b/mlflow.db") == Path("/a/b/mlflow.db")
    assert tracking.sqlite_path("sqlite:////a/b/mlflow.db?timeout=20") == Path("/a/b/mlflow.db")
    assert tracking.sqlite_path("sqlite:///file:/a/b%3Fc%23d/m.db?uri=true") == Path("/a/b?c#d/m.db")
    assert tracking.sqlite_uri(Path("/a/b?c/m.db")) == "sqlite:///file:%2Fa%2Fb%3Fc%2Fm.db?uri=true"
    assert tracking.sqlite_path(tracking.sqlite_uri(Path("/a/b?c/m.db"))) == Path("/a/b?c/m.db")
    assert tracking.sqlite_uri(Path("/a/b #c/m.db")) == "sqlite:////a/b #c/m.db"
    assert tracking.sqlite_uri(Path("/a/b%41/m.db")) == "sqlite:////a/b%41/m.db"
    assert tracking.sqlite_path("sqlite:////a/b%41/m.db") == Path("/a/b%41/m.db")
    assert tracking.sqlite_path("http://host:5000") is None


def test_sqlite_uri_encodes_the_path_twice_where_sqlalchemy_decodes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLAlchemy 2.1 percent-decodes a URL's database part before SQLite decodes the URI form's
    path: ``sqlite:///file:%2Fa%2Fb%3Fc%2Fm.db?uri=true`` reached SQLite as ``file:/a/b?c/m.db``,
    the file ``/a/b``; a plain ``/a/b%41`` was opened as ``/a/bA``."""
    monkeypatch.setattr(tracking, "_sqlalchemy_unquotes", lambda: True)
    assert tracking.sqlite_uri(Path("/a/b?c/m.db")) == "sqlite:///file:%252Fa%252Fb%253Fc%252Fm.db?uri=true"
    assert tracking.sqlite_uri(Path("/a/b%41/m.db")) == "sqlite:///file:%252Fa%252Fb%252541%252Fm.db?uri=true"
    assert tracking.sqlite_uri(Path("/a/b #c/m.db")) == "sqlite:////a/b #c/m.db"
    for path in ("/a/b?c/m.db", "/a/b%41/m.db", "/a/b?c#d %41/m.db"):
        assert tracking.sqlite_path(tracking.sqlite_uri(Path(path))) == Path(path)
    assert tracking.sqlite_path("sqlite:////a/b%41/m.db") == Path("/a/bA/m.db")
    assert tracking.sqlite_path("sqlite:////a/b%3Fc/m.db?timeout=20") == Path("/a/b?c/m.db")
    # the URI form encoded once, as before: SQLite reads the path up to its own query
    assert tracking.sqlite_path("sqlite:///file:%2Fa%2Fb%3Fc%2Fm.db?uri=true") == Path("/a/b")


@pytest.mark.parametrize("name", ["proj?x", "proj?x#y %41", "proj%41", "100% crop"])
def test_the_installed_sqlalchemy_opens_the_store_that_sqlite_uri_names(tmp_path: Path, name: str) -> None:
    """The file that the installed SQLAlchemy and SQLite open for :func:`tracking.sqlite_uri` is
    the store named, and :func:`tracking.sqlite_path` reads the URI back to it (SQLAlchemy 2.0
    and 2.1 read a URL's database part differently, see the two tests above)."""
    import sqlalchemy

    folder = tmp_path / name
    folder.mkdir()
    db = folder / "mlflow.db"
    uri = tracking.sqlite_uri(db)
    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.begin() as con:
            con.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    finally:
        engine.dispose()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name], uri
    assert [p.name for p in folder.iterdir()] == ["mlflow.db"], uri
    assert tracking.sqlite_path(uri) == db


def test_the_store_lock_without_fcntl_is_taken_with_msvcrt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where there is no fcntl (Windows) the store's lock (_locked: the sqlite store's creation,
    a DVC invocation's parent run) took no lock at all, so parallel Snakemake jobs raced on the
    store's migrations. It now takes bafusion.atomic's lock, msvcrt.locking there (here a
    stand-in made of flock, whose locks also exclude a second open of the file), and waits for
    a holder to release it."""
    import errno
    import fcntl
    import threading

    import bafusion.atomic as atomic

    class FakeMsvcrt:
        LK_UNLCK, LK_NBLCK = 0, 2

        @staticmethod
        def locking(fd: int, mode: int, nbytes: int) -> None:
            assert nbytes == 1 and os.lseek(fd, 0, os.SEEK_CUR) == atomic._MSVCRT_LOCK_OFFSET
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB if mode == FakeMsvcrt.LK_NBLCK else fcntl.LOCK_UN)
            except BlockingIOError:
                raise OSError(errno.EACCES, "Permission denied") from None

    monkeypatch.setattr(atomic, "fcntl", None)
    monkeypatch.setattr(atomic, "msvcrt", FakeMsvcrt, raising=False)
    monkeypatch.setattr(tracking, "fcntl", None, raising=False)  # as the module had it on Windows
    lock = tmp_path / "mlflow.db.lock"
    events: list[str] = []
    with open(lock, "a", encoding="utf-8") as fh1, open(lock, "a", encoding="utf-8") as fh2:

        def second() -> None:
            with tracking._locked(fh2):
                events.append("second holds it")

        with tracking._locked(fh1):
            t = threading.Thread(target=second)
            t.start()
            t.join(0.5)
            events.append("first releases it")
        t.join(10)
    assert not t.is_alive()
    assert events == ["first releases it", "second holds it"]


SNAKEFILE_STOPPED = """
from bafusion import tracking

onstart:
    tracking.ensure_db()
    tracking.begin_invocation({}, "all")
    tracking.watch_stop_signals()

onsuccess:
    tracking.end_invocation(True)

onerror:
    tracking.end_invocation(False)

rule all:
    output: "done"
    shell: "touch started; sleep 60; touch {output}"
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])  # ~30 s each
def test_a_stopped_snakemake_ends_its_parent_run_killed(tmp_path: Path, signum: int) -> None:
    """A dvc exp run stopped by SIGTERM (kill to its process group) or Ctrl-C ended its stopped
    step's run KILLED but the parent run FAILED (onerror: end_invocation(False)). Snakemake's
    own handlers stay in charge (SIGTERM: finish the running jobs, then fail), and the parent
    run notes the signal."""
    from mlflow.tracking import MlflowClient

    (tmp_path / "Snakefile").write_text(SNAKEFILE_STOPPED)
    env = {k: v for k, v in os.environ.items() if k not in (tracking.PARENT_ENV, "DVC_STAGE", "DVC_EXP_NAME")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    snakemake = Path(sys.executable).with_name("snakemake")
    # Ctrl-C's default disposition in the child, as a terminal's foreground job has it: a test run
    # started in the background by a non-interactive shell (nohup ... &) inherits SIGINT ignored,
    # and then neither Snakemake nor its job's shell sees the signal (exit 0)
    proc = subprocess.Popen([str(snakemake), "--cores", "1", "--nolock"], cwd=tmp_path, env=env,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "started").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            time.sleep(0.2)
        os.killpg(proc.pid, signum)  # the whole group, as Ctrl-C in a terminal or kill -- -PGID
        out = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0, out
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id])
    assert [(r.info.status, r.data.tags.get(tracking.STOPPED_BY_TAG)) for r in runs] == [
        ("KILLED", signal.Signals(signum).name)], out


def test_a_failed_invocation_without_a_stop_signal_ends_its_parent_run_failed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    _clear_invocation_env(monkeypatch)
    monkeypatch.setattr(tracking, "_stopped_by", None)
    parent = tracking.begin_invocation({}, "all")
    tracking.end_invocation(False)
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking.tracking_uri()).get_run(parent)
    assert run.info.status == "FAILED" and tracking.STOPPED_BY_TAG not in run.data.tags


def test_the_data_steps_log_their_params_under_the_keys_and_values_of_params_yaml(
    uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runs of ``prepare``, ``patches`` and the ``download*`` steps logged their settings as
    ``patches.patch``, ``patches.seed``, ``download.retries``, ``download.allow_gray``,
    ``download.out`` ... (and prepare the other source's paths as ``""``): names and values that
    params.yaml (``dvc exp show``, the parent run) does not hold. Each step is run on the command
    line its rule builds (``snakemake -n -p``), its work stubbed; every param of its run is a key
    of params.yaml, with params.yaml's value as MLflow spells it."""
    import yaml
    from mlflow.tracking import MlflowClient
    from pipeline_project import make_project, run, shell_commands

    import bafusion.cli.download as download_cli
    import bafusion.data.patches as patches_mod
    import bafusion.data.prepare as prepare_mod

    folders = {name: tmp_path / name for name in ("am", "bg", "ev", "cache", "imgs")}
    for folder in folders.values():
        folder.mkdir()
    for sub in ("input", "gt"):
        (folders["am"] / sub).mkdir()
    overrides = {
        "seed": 3,
        "data": {"source": "dir", "dir": {"alphamatting": str(folders["am"]), "backgrounds": str(folders["bg"])}},
        "download": {
            "cache": str(folders["cache"]), "net": {"retries": 2, "backoff": 0.5, "timeout": 30, "workers": 3},
            "alphamatting": {"from_dir": str(folders["am"]),
                             "checksums": {"input_training_lowres.zip": "sha256:" + "0" * 64}},
            "coco": {"count": 5, "categories": ["dog", "car"], "colour_only": False, "images_dir": str(folders["imgs"])},
            "eval": {"from_dir": str(folders["ev"]), "sets": ["lytro"]},
        },
    }
    project = make_project(tmp_path / "p", overrides, git=False)
    rules = ("prepare", "patches", "download_alphamatting", "download_coco", "download_eval", "download")
    commands = shell_commands(run(["snakemake", "-n", "-p", "--cores", "1", "--forceall", *rules], project).stdout)
    assert set(rules) <= set(commands)

    monkeypatch.chdir(project)
    monkeypatch.setattr(prepare_mod, "run_prepare", lambda *a, **k: {"foregrounds": [], "backgrounds": []})
    counts = {"train": 0, "val": 0}
    summary = {"pairs": 0, "val_pairs": 0, "augmentation_factor": 12, "counts": {"initial": counts, "boundary": counts}}
    monkeypatch.setattr(patches_mod, "run_patches", lambda *a, **k: summary)
    monkeypatch.setattr(download_cli, "acquire_alphamatting", lambda *a, **k: {"foregrounds": 0})
    monkeypatch.setattr(download_cli, "acquire_coco", lambda *a, **k: {"kept": [], "dropped": []})
    monkeypatch.setattr(download_cli, "acquire_eval", lambda *a, **k: {"files": 0})
    monkeypatch.setattr(download_cli, "write_download_record", lambda *a, **k: {"folders": {}})
    for rule in rules:
        assert commands[rule].func(commands[rule]) == 0

    params = yaml.safe_load((project / "params.yaml").read_text())
    expected = {k: tracking.spelled(v) for k, v in tracking.flatten(params).items()}
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(tracking.EXPERIMENT)
    logged = {r.data.tags["stage"]: r.data.params for r in client.search_runs([exp.experiment_id])}
    assert set(logged) == set(rules)
    wrong = {rule: {k: v for k, v in logged[rule].items() if expected.get(k) != v} for rule in rules}
    assert wrong == dict.fromkeys(rules, {})
    assert logged["patches"]["patch"] == "16" and logged["patches"]["patches.per_pair"] == "6"
    assert logged["prepare"]["data.dir.alphamatting"] == str(folders["am"])
    assert logged["download_coco"]["download.coco.categories"] == "['dog', 'car']"
    assert logged["download_coco"]["download.coco.colour_only"] == "False"
    assert logged["download_alphamatting"]["download.net.backoff"] == "0.5"
    assert logged["download_eval"]["download.eval.sets"] == "['lytro']"
    assert logged["download"] == {"data.source": "dir"}


@pytest.mark.parametrize("fails", ["log_metric", "set_terminated"])
@pytest.mark.parametrize(("signum", "stop"), [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, SystemExit)])
def test_a_stopped_run_whose_store_fails_at_its_end_still_ends_killed(
    uri: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    fails: str, signum: int, stop: type[BaseException],
) -> None:
    """A store that failed for a moment (a sqlite lock) while a stopped step ended its run:
    `_retried` raised the stop again at the first failure (the stop was requested), out of
    the run's end, so neither the retry nor `set_terminated` ran and the run stayed RUNNING.
    The stop was raised already: the end is tried again and the run ends KILLED; the stop
    still comes out of the step, its own."""
    from mlflow.exceptions import MlflowException

    from bafusion import atomic

    monkeypatch.setattr(tracking, "RETRY_BACKOFF_S", 0.01)
    calls: list[str] = []
    the_stop = stop() if stop is KeyboardInterrupt else SystemExit(128 + signum)
    with pytest.raises(stop) as raised:
        try:
            with tracking.stage_run("stopped") as run:
                real = getattr(run.client, fails)

                def locked_once(*args: object, **kwargs: object) -> object:
                    calls.append(fails)
                    if len(calls) == 1:
                        raise MlflowException("(sqlite3.OperationalError) database is locked")
                    return real(*args, **kwargs)

                monkeypatch.setattr(run.client, fails, locked_once)
                atomic.request_stop(signum)  # as the command's handler does, then raises
                raise the_stop
        finally:
            atomic.clear_stop()
    assert raised.value is the_stop  # the step's own stop, not one raised again by the end
    assert len(calls) == 2  # tried again
    assert _runs(uri) == {"stopped": "KILLED"}


def test_a_stopped_run_whose_store_keeps_failing_is_said_and_tried_briefly(
    uri: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """The store still failing when a stopped step ends its run: the end is tried
    STOPPED_RETRIES + 1 times per call (not RETRIES + 1: the user waits for the stop), a line
    says that the run may show RUNNING, and the step's stop comes out (not the store's error,
    nor the stop raised again at the first failure, which skipped the line)."""
    from mlflow.exceptions import MlflowException

    from bafusion import atomic

    monkeypatch.setattr(tracking, "RETRY_BACKOFF_S", 0.01)
    calls: list[int] = []
    the_stop = KeyboardInterrupt()

    def locked(*args: object, **kwargs: object) -> None:
        calls.append(1)
        raise MlflowException("(sqlite3.OperationalError) database is locked")

    with pytest.raises(KeyboardInterrupt) as raised:
        try:
            with tracking.stage_run("stopped") as run:
                monkeypatch.setattr(run.client, "set_terminated", locked)
                atomic.request_stop(signal.SIGINT)
                raise the_stop
        finally:
            atomic.clear_stop()
    assert raised.value is the_stop
    assert len(calls) == 2 * (tracking.STOPPED_RETRIES + 1)  # the end, then the incomplete run's end
    err = capsys.readouterr().err
    assert f"still failing after {tracking.STOPPED_RETRIES + 1} tries" in err
    assert "the store still fails, so MLflow may show it RUNNING" in err
    assert _runs(uri) == {"stopped": "RUNNING"}
