"""The model that ships with the project (issue 7): ``models/default/``.

* Both nets load with ``torch.load(..., weights_only=True)`` and match their JSON metadata.
* ``bafusion fuse`` without ``--model`` uses them on a real Lytro pair: the output is a
  decision-map fusion of the sources (every pixel equals A or B), with a plausible split, and
  it preserves the sources' gradients better than either source alone (Q_G).
* The model card's per-pair numbers (``models/default/metrics-lytro.csv``) are reproduced by
  ``bafusion evaluate`` on the shipped model (two pairs here; the README gives the command for
  all of them).

The fusion tests skip without ``../shared/data``.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, shared_data_dir

from bafusion import fusion
from bafusion.cli import main as cli_main
from bafusion.errors import UserError
from bafusion.evaluation.metrics import qg
from bafusion.io import gray_float, read_image
from bafusion.nets.model import build_model

MODEL = REPO / "models" / "default"
LYTRO = shared_data_dir() / "eval" / "lytro"

needs_lytro = pytest.mark.skipif(not LYTRO.is_dir(), reason=f"real data not found at {LYTRO} (set BAFUSION_SHARED_DATA)")


@pytest.mark.parametrize("net", ["initial", "boundary"])
def test_shipped_nets_load_with_weights_only(net: str) -> None:
    path = MODEL / f"{net}.pt"
    assert path.is_file(), f"{path} is missing: the project ships a trained model there"
    assert path.stat().st_size < 8 * 2**20, "a shipped net should be a few MB"
    meta = json.loads((MODEL / f"{net}.json").read_text())
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(int(meta["depth"]))
    model.load_state_dict(state)  # strict: the architecture in the JSON is the one saved
    assert int(meta["patch"]) % 4 == 0
    assert meta["net"] == net


def test_loading_the_shipped_nets_does_not_import_torch_dynamo() -> None:
    """The weights check built its shape probe on the meta device with the random
    initialisation, whose kaiming_normal_ goes through torch's Python reference there and
    imports torch._dynamo on its first call: about 1.0 of the 1.45 s of CPU that loading the two
    shipped nets took in every bafusion fuse (BENCHMARKS.md, "Where a camera-size fusion's
    time goes"). A fresh process, so that no other test has imported it."""
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "from bafusion.fusion import load_nets_from_dir\n"
            f"load_nets_from_dir({str(MODEL)!r}, 'cpu')\n"
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr[-2000:]


@pytest.mark.parametrize("net", ["initial", "boundary"])
def test_a_net_built_without_initialisation_loads_the_same_weights(net: str) -> None:
    """init=False (the weights check's meta probe) leaves the shapes as they are, so the check
    compares the same shapes; a net loaded by load_model holds exactly the file's tensors."""
    from bafusion.nets.model import CifarResNet, load_model

    loaded, _meta = load_model(MODEL / f"{net}.pt")
    with torch.device("meta"):
        bare, full = CifarResNet(loaded.spec, init=False), CifarResNet(loaded.spec)
    assert {k: v.shape for k, v in bare.state_dict().items()} == {k: v.shape for k, v in full.state_dict().items()}
    state = torch.load(MODEL / f"{net}.pt", map_location="cpu", weights_only=True)
    got = loaded.state_dict()
    assert set(got) == set(state)
    assert all(torch.equal(got[k], state[k]) for k in state)


def test_default_model_dir_is_the_shipped_one() -> None:
    assert fusion.find_model_dir(None).resolve() == MODEL.resolve()


def test_previous_nets_stay_available_by_name() -> None:
    assert "lytro-2026-11" in fusion.shipped_models() and "default" in fusion.shipped_models()
    prev = fusion.find_model_dir("lytro-2026-11")
    assert (prev / "initial.pt").read_bytes() != (MODEL / "initial.pt").read_bytes()
    with pytest.raises(UserError, match="shipped models: default, lytro-2026-11"):
        fusion.find_model_dir("no-such-model")


def test_model_card_states_its_numbers() -> None:
    card = (MODEL / "README.md").read_text()
    for needle in ("Validation accuracy", "Lytro", "QMI", "QG", "QY", "QCB", "bafusion evaluate"):
        assert needle in card, needle


@needs_lytro
def test_fuse_a_lytro_pair_with_the_shipped_model(tmp_path: Path) -> None:
    pa, pb = LYTRO / "lytro-05-A.jpg", LYTRO / "lytro-05-B.jpg"
    out = tmp_path / "fused.png"
    assert cli_main(["fuse", str(pa), str(pb), "-o", str(out), "--device", "cpu", "--save-maps", str(tmp_path / "maps")]) == 0
    a, b, f = read_image(pa), read_image(pb), read_image(out)
    assert f.shape == a.shape
    from_a = np.all(f == a, axis=2)
    from_b = np.all(f == b, axis=2)
    assert np.all(from_a | from_b), "every fused pixel is the pixel of A or of B"
    share_a = float(np.mean(from_a & ~from_b))
    share_b = float(np.mean(from_b & ~from_a))
    assert 0.1 < share_a < 0.9 and 0.1 < share_b < 0.9, (share_a, share_b)
    ga, gb, gf = (gray_float(x, rounded=True) for x in (a, b, f))
    q = qg(ga, gb, gf)
    assert q > max(qg(ga, gb, ga), qg(ga, gb, gb)) + 0.01, "the fusion must beat copying either source"
    ref_csv = LYTRO.parent.parent / "reference" / "metrics-lytro.csv"
    if ref_csv.is_file():  # and come close to the published CNN fusion (Liu et al. 2017)
        with open(ref_csv, newline="") as fh:
            cnn = next(float(r["QG"]) for r in csv.DictReader(fh) if (r["pair"], r["method"]) == ("lytro-05", "CNN"))
        assert q > cnn - 0.01, (q, cnn)
    assert (tmp_path / "maps").is_dir() and any((tmp_path / "maps").glob("*fig3*.png"))


@needs_lytro
@pytest.mark.slow
def test_evaluate_reproduces_the_model_card(tmp_path: Path) -> None:
    card_rows = {}
    with open(MODEL / "metrics-lytro.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            card_rows[(r["pair"], r["method"])] = r
    pairs = ["lytro-01", "lytro-05"]
    cfg = {
        "metrics": ["QMI", "QG", "QY", "QCB"],
        "methods": ["Ours-initial", "Ours"],
        "figures": False,
        "save_fused": False,
        "datasets": [{"name": "lytro", "sources": str(LYTRO), "pairs": pairs}],
    }
    out = tmp_path / "evaluation"
    rc = cli_main(["evaluate", "--models", str(MODEL), "--params-file", str(MODEL / "evaluate.yaml"),
                   "--params-json", json.dumps(cfg), "--out", str(out), "--device", "cpu"])
    assert rc == 0
    with open(out / "lytro" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["pair"], r["method"]) for r in rows} == {(p, m) for p in pairs for m in ("Ours-initial", "Ours")}
    for r in rows:
        card = card_rows[(r["pair"], r["method"])]
        for m in ("QMI", "QG", "QY", "QCB"):
            assert float(r[m]) == pytest.approx(float(card[m]), abs=1e-6), (r["pair"], r["method"], m)


def _build_wheel(tmp_path: Path, symlinks: bool = True, models: bool = True):
    """Build a wheel (pip wheel, no isolation) from a copy of the source tree; the tree's copy,
    and pip's result. ``symlinks=False``: a checkout made without symlinks, where
    src/bafusion/models is a text file holding the link's target; ``models=False``: without
    models/."""
    import shutil
    import subprocess
    import sys

    pytest.importorskip("setuptools")
    src = tmp_path / "src-tree"  # build from a copy: setuptools writes build/ into the tree
    src.mkdir()
    for f in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE"):
        shutil.copy(REPO / f, src / f)
    junk = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(REPO / "src", src / "src", symlinks=True, ignore=junk)
    if not symlinks:
        link = src / "src" / "bafusion" / "models"
        target = os.readlink(link)
        link.unlink()
        link.write_text(target)  # what git writes for a symlink with core.symlinks=false
    if models:
        shutil.copytree(REPO / "models", src / "models")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    return src, r


@pytest.mark.slow
@pytest.mark.parametrize("symlinks", [True, False], ids=["checkout", "checkout-without-symlinks"])
def test_wheel_ships_the_model(tmp_path: Path, symlinks: bool) -> None:
    """A non-editable install gets the nets too (src/bafusion/models links to models/). A
    checkout without symlinks (Git for Windows, a ZIP download) built a wheel without them,
    silently: setup.py now copies them from models/."""
    import zipfile

    src, r = _build_wheel(tmp_path, symlinks)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("bafusion-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("initial.pt", "initial.json", "boundary.pt", "boundary.json", "README.md"):
        assert f"bafusion/models/default/{f}" in names, f
        assert f"bafusion/models/lytro-2026-11/{f}" in names, f
    # every module of the source tree, those of subpackages too (bafusion.io is one: bafusion/io/*.py)
    modules = [p.relative_to(src / "src").as_posix() for p in (src / "src" / "bafusion").rglob("*.py")]
    assert "bafusion/io/__init__.py" in modules
    assert sorted(m for m in modules if m not in names) == []
    # the MIT licence text travels with the installed package (PEP 639 metadata)
    info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    assert f"{info}/licenses/LICENSE" in names
    metadata = zipfile.ZipFile(wheel).read(f"{info}/METADATA").decode()
    assert "License-Expression: MIT" in metadata.splitlines()
    assert "License-File: LICENSE" in metadata.splitlines()
    # who made it and what it is (pip show said nothing: no Author, no classifiers)
    assert "Author: the bafusion authors" in metadata.splitlines()
    assert "Classifier: Topic :: Scientific/Engineering :: Image Processing" in metadata.splitlines()
    assert "Classifier: Programming Language :: Python :: 3.11" in metadata.splitlines()


@pytest.mark.slow
def test_a_wheel_without_the_shipped_nets_is_not_built(tmp_path: Path) -> None:
    """A checkout with neither the symlink's target nor models/ fails to build, naming the
    missing model, instead of making a wheel whose `bafusion fuse` finds no nets."""
    _, r = _build_wheel(tmp_path, symlinks=False, models=False)
    assert r.returncode != 0
    assert "the shipped model 'default' is missing" in r.stdout + r.stderr, (r.stdout + r.stderr)[-2000:]
    assert not list(tmp_path.glob("bafusion-*.whl"))


def test_an_installed_package_looks_for_nets_only_in_itself_and_the_working_folder(tmp_path: Path) -> None:
    """bafusion installed with `pip install --target DIR` (or into a venv) looked for nets in
    the folder three above its modules (DIR's parent, <venv>/lib, $HOME): models/default and
    data/models there were taken for its nets. Only a package run from its source checkout
    searches the repository's folders now."""
    import shutil
    import subprocess
    import sys

    target = tmp_path / "target"  # as `pip install --target target` lays it out, without the nets
    shutil.copytree(REPO / "src" / "bafusion", target / "bafusion",
                    ignore=shutil.ignore_patterns("__pycache__", "models"))
    stray = tmp_path / "models" / "default"  # an unrelated folder above the install
    stray.mkdir(parents=True)
    for f in ("initial.pt", "boundary.pt"):
        shutil.copy(MODEL / f, stray / f)
    work = tmp_path / "work"
    work.mkdir()
    code = ("from bafusion.fusion import models; print(models.REPO_ROOT); "
            "print(models.shipped_models()); print(*models.default_model_dirs(), sep='\\n')")
    r = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(target)})
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert lines[:2] == ["None", "[]"], lines
    assert [Path(d) for d in lines[2:]] == [target.resolve() / "bafusion" / "models" / "default",
                                            work.resolve() / "data" / "models"]
