"""The real training sources (../shared/data/train: 27 alphamatting foregrounds, 128 COCO
backgrounds) through the whole real workflow: 27 x 128 = 3,456 pairs, 34,560 base patches,
(briefly) trained nets, and the evaluation on real Lytro pairs against the published baselines."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest
from pipeline_project import make_project, run

pytestmark = pytest.mark.slow


def test_dir_source_on_the_shared_training_data(shared_data: Path, tmp_path: Path) -> None:
    train = shared_data / "train"
    overrides = {
        "patch": 32,
        "data": {
            "source": "dir",
            "holdout_foregrounds": 0,
            "holdout_backgrounds": 0,
            "dir": {"alphamatting": str(train / "alphamatting"), "backgrounds": str(train / "coco" / "train2017")},
        },
        "prepare": {"scale": 0.5},
        "composite": {"shards": 2},
        "patches": {"per_pair": 10, "boundary_per_pair": 2},
        "train": {"epochs": 1, "samples_per_epoch": 256, "val_samples": 128},
        "evaluate": {
            "datasets": [
                {
                    "name": "lytro",
                    "sources": str(shared_data / "eval" / "lytro"),
                    "reference": str(shared_data / "reference" / "lytro"),
                    "pairs": ["lytro-01", "lytro-02"],
                    "figure_pair": "lytro-01",
                }
            ]
        },
    }
    project = make_project(tmp_path / "p", overrides, git=False)
    run(["snakemake", "--cores", "2", "evaluate"], project, timeout=1800)
    index = json.loads((project / "data/composite/index.json").read_text())
    assert index["pairs"] == 27 * 128 == 3456
    manifest = json.loads((project / "data/prepared/manifest.json").read_text())
    assert len(manifest["foregrounds"]) == 27 and len(manifest["backgrounds"]) == 128
    # Foregrounds were halved: the long side of the low-resolution set is 800 px.
    assert max(max(f["height"], f["width"]) for f in manifest["foregrounds"]) == 400
    with h5py.File(project / "data/patches/initial.h5") as h5:
        n_train, n_val = h5["train"]["y"].shape[0], h5["val"]["y"].shape[0]
        pairs_val = set(h5["val"]["pair"][()].tolist())
    assert n_train + n_val == 34_560
    assert len(pairs_val) == round(0.15 * 3456)
    summary = json.loads((project / "data/patches/summary.json").read_text())
    assert summary["effective_samples"]["initial"]["train"] + summary["effective_samples"]["initial"]["val"] == 34_560 * 12
    table = (project / "data/evaluation/lytro/table1.md").read_text()
    for method in ("Ours", "CNN", "DSIFT", "GFF"):
        assert f"| {method} |" in table
    rows = (project / "data/evaluation/lytro/metrics.csv").read_text().splitlines()
    assert sum(1 for r in rows if "lytro-01" in r) >= 8  # ours (2 variants), 2 native, 6 published
