"""data.source: web through the real Snakemake rules, against a server on 127.0.0.1: the
alphamatting zips and COCO photos are downloaded, verified, selected and fed to prepare."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pipeline_project import make_project, run
from test_acquire import png_bytes, serve_coco, zip_of
from test_download import LocalServer, sha256

pytestmark = pytest.mark.slow


def _alphamatting(n: int = 3, h: int = 96, w: int = 128) -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:h, 0:w]
    inputs, gts = {}, {}
    for i in range(1, n + 1):
        inputs[f"GT{i:02d}.png"] = png_bytes(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        matte = np.clip(255 * (30 - np.hypot(yy - h / 2, xx - w / 2 - 5 * i) + 0.5), 0, 255).astype(np.uint8)
        gts[f"gt_training_lowres/GT{i:02d}.png"] = png_bytes(np.repeat(matte[..., None], 3, axis=2))
    return {"input_training_lowres.zip": zip_of(inputs), "gt_training_lowres.zip": zip_of(gts)}


def test_web_source_through_the_snakemake_rules(tmp_path: Path) -> None:
    with LocalServer() as server:
        zips = _alphamatting()
        for name, data in zips.items():
            server.files[f"datasets/zip/{name}"] = data
        _, md5 = serve_coco(server)
        overrides = {
            "data": {"source": "web", "holdout_foregrounds": 0, "holdout_backgrounds": 0, "backgrounds": 3},
            "prepare": {"scale": 1.0},
            "download": {
                "cache": str(tmp_path / "cache"),
                "net": {"retries": 1, "backoff": 0.01, "timeout": 10, "workers": 2},
                "alphamatting": {
                    "base_url": server.url("datasets/zip/"),
                    "checksums": {name: sha256(data) for name, data in zips.items()},
                },
                "coco": {
                    "count": 3,
                    "oversample": 3.0,
                    "min_side": 100,
                    "annotations_url": server.url("annotations/annotations_trainval2017.zip"),
                    "annotations_checksum": md5,
                },
            },
        }
        project = make_project(tmp_path / "p", overrides, git=False)
        run(["snakemake", "--cores", "2", "patches", "download"], project)
    fg = sorted(p.name for p in (project / "data/download/alphamatting/input").iterdir())
    assert fg == ["GT01.png", "GT02.png", "GT03.png"]
    assert len(list((project / "data/download/coco").glob("*.jpg"))) == 3
    manifest = json.loads((project / "data/prepared/manifest.json").read_text())
    assert [f["id"] for f in manifest["foregrounds"]] == ["GT01", "GT02", "GT03"]
    assert len(manifest["backgrounds"]) == 3
    assert json.loads((project / "data/composite/index.json").read_text())["pairs"] == 9
    record = json.loads((project / "data/download/record.json").read_text())
    assert record["source"] == "web" and set(record["folders"]) == {"alphamatting", "backgrounds"}
