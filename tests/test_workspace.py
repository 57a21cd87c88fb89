"""Relative paths of the parameters inside a DVC experiment's temporary copy of the project."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bafusion.cli import main
from bafusion.workspace import project_root, resolve


@pytest.fixture
def temp_experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A workspace beside ``shared/``, and the copy `dvc exp run --temp` runs the stages in."""
    ws = tmp_path / "ws"
    copy = ws / ".dvc" / "tmp" / "exps" / "standalone" / "tmpabc"
    for d in (ws, copy):
        d.mkdir(parents=True, exist_ok=True)
        (d / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.setenv("DVC_ROOT", str(ws))
    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    monkeypatch.chdir(copy)
    return ws, copy


def test_paths_leaving_the_copy_are_the_workspaces(temp_experiment: tuple[Path, Path]) -> None:
    ws, copy = temp_experiment
    assert project_root() == copy.resolve()
    assert resolve("data/testset") == Path("data/testset")  # the experiment's own output
    assert resolve("../shared/data/train") == ws.resolve().parent / "shared/data/train"
    assert resolve("../shared/x", copy) == ws.resolve().parent / "shared/x"
    assert resolve("data/testset", copy) == copy / "data/testset"
    (copy / "sub").mkdir()
    assert resolve("../data/x", copy / "sub") == copy / "sub" / "../data/x"  # still inside the copy
    assert resolve("/abs/p") == Path("/abs/p")


def test_outside_an_experiment_nothing_moves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dvc.yaml").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert resolve("../shared/x") == Path("../shared/x")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # dvc repro in the workspace
    assert resolve("../shared/x") == Path("../shared/x")


def test_evaluate_in_a_temp_experiment_reads_the_copys_testset(
        temp_experiment: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    # `evaluate` took relative dataset paths from $DVC_ROOT: under `dvc exp run --temp` it
    # scored the workspace's data/testset, not the experiment's own
    ws, copy = temp_experiment
    for root, pairs in ((ws, ["p1"]), (copy, [])):
        (root / "data" / "testset").mkdir(parents=True)
        (root / "data" / "testset" / "index.json").write_text(json.dumps({"pairs": pairs}))
    cfg = {"methods": ["Laplacian"], "metrics": ["QG"], "datasets": [{"name": "testset", "sources": "data/testset"}]}
    assert main(["evaluate", "--params-json", json.dumps(cfg), "--out", "data/evaluation"]) == 0
    written = json.loads((copy / "data" / "evaluation" / "metrics.json").read_text(encoding="utf-8"))
    assert written.pop("provenance")["bafusion"]  # which code made it (bb1121e); the numbers are the copy's
    assert written == {"testset": {"pairs": 0}}
    assert not (ws / "data" / "evaluation").exists()


def test_prepare_in_a_temp_experiment_finds_the_shared_folders(
        temp_experiment: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    # data.dir ../shared/... pointed into .dvc/tmp/exps/ ("folder not found")
    ws, copy = temp_experiment
    rc = main(["prepare", "--source", "dir", "--alphamatting", "../shared/am", "--backgrounds-dir", "../shared/bg",
               "--out", "data/prepared"])
    err = capsys.readouterr().err
    assert rc == 2 and str(ws.resolve().parent / "shared" / "am") in err, err


def test_prepare_in_a_temp_experiment_writes_what_a_workspace_run_writes(
        temp_experiment: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    # the manifest's origins were the resolved workspace paths ("/home/a/shared/am/input/GT01.png"
    # for "../shared/am/input/GT01.png"): `dvc exp run --temp`/`--queue` gave data/prepared
    # another hash than a workspace run of the same params, and composite and testset ran again
    import numpy as np
    from PIL import Image

    ws, copy = temp_experiment
    shared = ws.resolve().parent / "shared"
    rng = np.random.default_rng(0)
    for sub in ("am/input", "am/gt", "bg"):
        (shared / sub).mkdir(parents=True)
    for i in (1, 2):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(shared / "am/input" / f"GT0{i}.png")
        Image.fromarray(rng.integers(0, 256, (40, 48), dtype=np.uint8)).save(shared / "am/gt" / f"GT0{i}.png")
    for i in (1, 2, 3):
        Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(shared / "bg" / f"b{i}.png")
    argv = ["prepare", "--source", "dir", "--alphamatting", "../shared/am", "--backgrounds-dir", "../shared/bg",
            "--holdout-foregrounds", "0", "--holdout-backgrounds", "0", "--min-background-side", "16",
            "--no-progress", "--out", "data/prepared"]
    assert main(argv) == 0  # in the experiment's copy
    monkeypatch.chdir(ws)
    assert main(argv) == 0  # in the workspace

    def files(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    assert files(copy / "data" / "prepared") == files(ws / "data" / "prepared")
    manifest = json.loads((copy / "data" / "prepared" / "manifest.json").read_text())
    assert [e["origin"] for e in manifest["foregrounds"]] == ["../shared/am/input/GT01.png", "../shared/am/input/GT02.png"]
    assert {e["origin"] for e in manifest["backgrounds"]} == {f"../shared/bg/b{i}.png" for i in (1, 2, 3)}


def test_a_folder_outside_the_project_is_not_moved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # DVC sets DVC_ROOT in workspace runs too: `evaluate --root /elsewhere` with `sources:
    # ../x` went to the workspace's parent (a base outside any project was taken for a copy)
    ws, elsewhere = tmp_path / "ws", tmp_path / "ext" / "sets"
    ws.mkdir()
    (ws / "dvc.yaml").write_text("")
    elsewhere.mkdir(parents=True)
    monkeypatch.setenv("DVC_ROOT", str(ws))
    monkeypatch.chdir(ws)
    assert resolve("../other", elsewhere) == elsewhere / "../other"
    nested = ws / "sub"  # a folder of the workspace with its own Snakefile
    nested.mkdir()
    (nested / "Snakefile").write_text("")
    assert resolve("../x", nested) == nested / "../x"


def test_a_refusal_in_a_dvc_stage_says_dvc_removed_its_outputs(tmp_path: Path) -> None:
    """`dvc exp run -S fuse.l=-1` was refused at once, but DVC had already deleted data/fused and
    metrics/fuse.json, without a word: the refusal now says so and how to bring them back."""
    import subprocess

    from bafusion.workspace import dvc_removed_outputs_note

    ws = tmp_path / "ws"
    (ws / "metrics").mkdir(parents=True)
    (ws / "dvc.yaml").write_text("stages:\n  fuse:\n    cmd: snakemake fuse\n    outs:\n      - data/fused\n"
                                 "      - metrics/fuse.json:\n          cache: false\n"
                                 "      - data/kept:\n          persist: true\n")
    (ws / "dvc.lock").write_text("schema: '2.0'\nstages:\n  fuse:\n    cmd: snakemake fuse\n")
    (ws / "metrics" / "fuse.json").write_text("{}\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    for cmd in (["init", "-q"], ["add", "metrics/fuse.json"], ["commit", "-qm", "m"]):
        subprocess.run(git + cmd, cwd=ws, check=True, capture_output=True)
    (ws / "metrics" / "fuse.json").unlink()
    env = {"DVC_STAGE": "fuse", "DVC_ROOT": str(ws)}
    assert dvc_removed_outputs_note(env, ws) == (
        "note: dvc removed the outputs of stage 'fuse' (data/fused, metrics/fuse.json) before running it: fix the "
        "value in params.yaml; `dvc checkout fuse && git checkout -- metrics/fuse.json` brings them back")
    # never `git checkout -- params.yaml`: it threw away the user's uncommitted edits of it
    # (a git-untracked uncached output: dvc checkout alone)
    subprocess.run(git + ["rm", "-q", "--cached", "metrics/fuse.json"], cwd=ws, check=True, capture_output=True)
    assert dvc_removed_outputs_note(env, ws) == (
        "note: dvc removed the outputs of stage 'fuse' (data/fused, metrics/fuse.json) before running it: fix the "
        "value in params.yaml; `dvc checkout fuse` brings them back")
    # not in a DVC stage; in `dvc exp run --temp`'s copy (the workspace's outputs are untouched)
    assert dvc_removed_outputs_note({}, ws) is None
    copy = ws / ".dvc" / "tmp" / "exps" / "tmpabc"
    copy.mkdir(parents=True)
    (copy / "dvc.yaml").write_text((ws / "dvc.yaml").read_text())
    assert dvc_removed_outputs_note(env, copy) is None
    # a stage DVC never ran: nothing to check out; outputs all there: nothing removed
    (ws / "dvc.lock").unlink()
    assert dvc_removed_outputs_note(env, ws) == (
        "note: dvc removes a stage's outputs before running it: those of stage 'fuse' (data/fused, "
        "metrics/fuse.json), if there were any, are gone (dvc.lock has no record of them): fix the value and run "
        "the stage again")
    (ws / "data" / "fused").mkdir(parents=True)
    (ws / "metrics" / "fuse.json").write_text("{}\n")
    assert dvc_removed_outputs_note(env, ws) is None
    assert dvc_removed_outputs_note({**env, "DVC_STAGE": "nosuch"}, ws) is None


def test_the_removed_outputs_note_reads_dvc_yaml_with_the_projects_reader(tmp_path: Path) -> None:
    """dvc_removed_outputs_note read dvc.yaml and dvc.lock with yaml.safe_load, past the
    project's reader (bafusion.config.load_yaml: aliases capped at MAX_ALIAS_VALUES, a key given
    twice refused, as DVC refuses it): a dvc.yaml beyond the cap is now not read, as one that is
    not YAML: no note, at once."""
    from bafusion.config import MAX_ALIAS_VALUES
    from bafusion.workspace import dvc_removed_outputs_note

    env = {"DVC_STAGE": "fuse", "DVC_ROOT": str(tmp_path)}
    stage = "stages:\n  fuse:\n    cmd: snakemake fuse\n    outs:\n      - data/fused\n"
    (tmp_path / "dvc.yaml").write_text(stage)
    assert dvc_removed_outputs_note(env, tmp_path) is not None  # data/fused is gone: said
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 6)]
    assert 10 ** 6 > MAX_ALIAS_VALUES
    (tmp_path / "dvc.yaml").write_text("\n".join(levels) + "\n" + stage)
    assert dvc_removed_outputs_note(env, tmp_path) is None
    (tmp_path / "dvc.yaml").write_text(stage + "    outs:\n      - data/other\n")  # `outs` twice: DVC refuses it
    assert dvc_removed_outputs_note(env, tmp_path) is None
