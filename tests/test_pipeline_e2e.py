"""The real workflow end to end on a tiny configuration: Snakemake alone, and DVC driving it."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest
import yaml
from pipeline_project import downstream, make_project, ran_stages, run

pytestmark = pytest.mark.slow


def _all_stages(project: Path) -> set[str]:
    return set(yaml.safe_load((project / "dvc.yaml").read_text())["stages"])


def test_snakemake_patches_on_its_own(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", git=False)
    run(["snakemake", "--cores", "2", "patches"], project)
    with h5py.File(project / "data/patches/initial.h5") as h5:
        n = h5["train"]["x"].shape[0] + h5["val"]["x"].shape[0]
        assert h5["train"]["x"].shape[1:] == (2, 16, 16)
    assert n == 2 * 3 * 6  # 2 training foregrounds x 3 training backgrounds x 6 per pair
    assert (project / "logs" / "patches.log").exists()
    assert sorted(p.name for p in (project / "data/composite").glob("shard-*.h5")) == ["shard-0.h5", "shard-1.h5"]

    # The users' command: builds what it needs (nothing here) and trains the boundary net only.
    run(["snakemake", "--cores", "8", "train_boundary"], project)
    meta = json.loads((project / "data/models/boundary.json").read_text())
    assert meta["net"] == "boundary" and meta["arch"]["depth"] == 8 and meta["patch"] == 16
    assert not (project / "data/models/initial.pt").exists()


def test_dvc_repro_then_nothing_then_only_patches_and_after(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    first = run(["dvc", "repro"], project)
    assert set(ran_stages(first.stdout)) == _all_stages(project), first.stdout[-3000:]
    lock1 = (project / "dvc.lock").read_text()

    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    metrics = shown[0]["data"]["metrics"]
    for net in ("initial", "boundary"):
        m = metrics[f"metrics/train_{net}.json"]["data"]
        assert 0.0 <= m["val_acc"] <= 1.0 and m["epochs"] == 1
    assert json.loads((project / "data/patches/summary.json").read_text())["pairs"] == 2 * 3

    second = run(["dvc", "repro"], project)
    assert ran_stages(second.stdout) == [], second.stdout[-3000:]

    # `snakemake --report` shows the results: Table 1, the figures, the training curves; the
    # heavy rules wrote their benchmark files.
    import zipfile

    run(["snakemake", "--report", "report.zip"], project)
    names = zipfile.ZipFile(project / "report.zip").namelist()
    for want in ("means.csv", "metrics.csv", "-fig3.png", "train_initial.csv", "train_boundary.csv"):
        assert any(n.endswith(want) for n in names), (want, names)
    assert any("/figures/" in n and n.endswith(".png") for n in names), names
    for rule in ("patches", "train_initial", "train_boundary", "fuse", "evaluate"):
        bench = (project / "logs" / "benchmarks" / f"{rule}.tsv").read_text().splitlines()
        assert bench[0].startswith("s\t") and float(bench[1].split("\t")[0]) > 0

    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "first run"], project)
    exp = run(["dvc", "exp", "run", "-S", "patch=24"], project)
    # and check, which lists the whole params.yaml (dvc.yaml)
    assert set(ran_stages(exp.stdout)) == downstream(project / "dvc.yaml", "patches") | {"check"}, exp.stdout[-3000:]
    with h5py.File(project / "data/patches/boundary.h5") as h5:
        assert h5.attrs["patch"] == 24 and h5["train"]["x"].shape[2:] == (24, 24)

    # Determinism: a forced re-run with the original params gives the same dvc.lock.
    run(["git", "checkout", "--", "params.yaml"], project)
    run(["dvc", "repro", "--force"], project)
    assert (project / "dvc.lock").read_text() == lock1

    # Every stage logged an MLflow run.
    from mlflow.tracking import MlflowClient

    from bafusion.tracking import EXPERIMENT, tracking_uri

    client = MlflowClient(tracking_uri())
    exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    names = {r.data.tags.get("stage") for r in client.search_runs([exp_id])}
    assert {"prepare", "composite", "testset", "patches"} <= names
