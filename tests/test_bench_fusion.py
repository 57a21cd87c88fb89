"""benchmarks/bench_fusion.py's fuse rule and exact-mode cache (the benchmark itself is measured
by hand: BENCHMARKS.md, "Fusion")."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bafusion.config import load_preset
from bafusion.fusion import FusionNets, FusionParams
from bafusion.nets.model import build_model

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_fusion.py"


@pytest.fixture(scope="module")
def bf():
    spec = importlib.util.spec_from_file_location("bench_fusion", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _nets(seed: int = 0) -> FusionNets:
    torch.manual_seed(seed)
    return FusionNets(build_model(8).eval(), build_model(8).eval(), 16, 16, torch.device("cpu"))


def _pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (12, 12), np.uint8), rng.integers(0, 256, (12, 12), np.uint8)


def test_paper_rule_is_the_paper_presets_fuse_section(bf) -> None:
    """The agreement tables were measured with w = 1, no working size, no exposure match; the
    benchmark fused under today's defaults (w = 0.75, working_min 512, exposure_match linear),
    so its documented command gave 98.79 % where the table says 99.31 %. --fuse-rule paper
    fuses under the paper preset's fuse section, whatever the defaults become."""
    paper = bf.rule_params(bf.fuse_rule("paper"))
    assert paper == FusionParams.from_mapping(load_preset("paper")["fuse"])
    assert (paper.boundary_weight, paper.working_min, paper.working_side, paper.exposure_match) == (1.0, 0, 0, "none")
    assert bf.rule_params(bf.fuse_rule("defaults")) == FusionParams()
    over = bf.rule_params(bf.fuse_rule("paper", ["boundary_weight=0.75"]), l=4, initial_step=2)
    assert dataclasses.replace(paper, boundary_weight=0.75, l=4, initial_step=2) == over
    with pytest.raises(Exception, match="no_such_key"):
        bf.fuse_rule("paper", ["no_such_key=1"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        bf.fuse_rule("paper", ["boundary_weight"])


def test_documented_agreement_command_names_the_paper_rule(bf) -> None:
    """The command BENCHMARKS.md and the script give for the agreement table names its rule."""
    for text in (SCRIPT.read_text(encoding="utf-8"), (REPO / "BENCHMARKS.md").read_text(encoding="utf-8")):
        cmds = [" ".join(m.split()) for m in re.findall(r"bench_fusion\.py --model models/\S+[^`]*?--retime-exact", text)]
        assert cmds, "no documented agreement command"
        for cmd in cmds:
            assert "--fuse-rule paper" in cmd, cmd
            assert "models/lytro-2026-11" in cmd, cmd


def _documented_commands() -> list[tuple[str, str]]:
    """Every ``bench_fusion.py`` command the documents give, one line each, with its source:
    the Markdown files' code spans and the script docstring's indented lines (with their
    backslash continuations)."""
    out = []
    for md in [REPO / "BENCHMARKS.md", REPO / "README.md", *sorted((REPO / "models").glob("*/README.md"))]:
        for m in re.findall(r"`((?:\S*/)?bench_fusion\.py [^`]*)`", md.read_text(encoding="utf-8")):
            out.append((str(md.relative_to(REPO)), " ".join(m.split())))
    doc = SCRIPT.read_text(encoding="utf-8").replace("\\\n", " ")
    out += [(SCRIPT.name, " ".join(m.split("#")[0].split())) for m in re.findall(r"(?m)^ +(bench_fusion\.py .*)$", doc)]
    return out


def test_every_documented_command_names_its_fuse_rule() -> None:
    """The option's default rule is today's defaults, which change between releases: the
    ResNet-56 time table's command and the w = 0.75 agreement line named no rule (the former
    also today's ``models/default``, whose near-boundary pixels are not the table's)."""
    cmds = _documented_commands()
    assert len(cmds) >= 5, cmds
    for source, cmd in cmds:
        assert re.search(r"--fuse-rule (paper|defaults)\b", cmd), (source, cmd)
    speed = [c for _, c in cmds if "--time-depth 56" in c]
    assert speed and all("--model models/lytro-2026-11 --fuse-rule paper" in c for c in speed), speed
    weighed = [c for _, c in cmds if "default-own-size" in c]
    assert weighed and all("--model models/default --fuse-rule defaults" in c for c in weighed), weighed


def test_exact_cache_key_holds_every_setting(bf) -> None:
    """The exact-mode cache was keyed by the nets' weights, pair, size and l only: an exact
    result under w = 1 was reused for a run under w = 0.75 (or another exposure match, working
    size, ...). Every field of the rule, the nets, pair, size and inputs change the key now."""
    a, b = _pair()
    nets = _nets()
    base = bf.rule_params(bf.fuse_rule("paper"), exact=True)

    def key(a=a, b=b, nets=nets, params=base, pair=1, size=256, threads=1):
        return bf.exact_cache_key(a, b, nets, params, pair=pair, size=size, threads=threads)[0]

    k0 = key()
    assert k0 == key() and k0.startswith("p1-s256-l8-")
    changed = {
        "boundary_weight": key(params=dataclasses.replace(base, boundary_weight=0.75)),
        "exposure_match": key(params=dataclasses.replace(base, exposure_match="linear")),
        "working_min": key(params=dataclasses.replace(base, working_min=512)),
        "tta": key(params=dataclasses.replace(base, tta="swap")),
        "l": key(params=dataclasses.replace(base, l=4)),
        "nets": key(nets=_nets(1)),
        "pair": key(pair=2),
        "size": key(size=128),
        "inputs": key(a=b, b=a),
        "threads": key(threads=2),
    }
    for what, k in changed.items():
        assert k != k0, what
    assert len(set(changed.values())) == len(changed)


def test_exact_result_from_other_settings_is_not_reused(bf, tmp_path: Path, monkeypatch) -> None:
    """exact_reference ran exact mode once and then answered every rule from the cache."""
    a, b = _pair()
    nets = _nets()
    calls = []

    def fake_fuse(a_, b_, nets_, params):
        calls.append(params)
        v = np.full(a_.shape, params.boundary_weight)
        return SimpleNamespace(decision=v > 0.8, decision_raw=v > 0.8, score_initial=v, fused=a_,
                               near_boundary=v > 0)

    monkeypatch.setattr(bf, "fuse_images", fake_fuse)
    paper = bf.rule_params(bf.fuse_rule("paper"))
    w75 = dataclasses.replace(paper, boundary_weight=0.75)
    r1, _ = bf.exact_reference(a, b, nets, paper, pair=1, size=12, cache_dir=tmp_path)
    r2, _ = bf.exact_reference(a, b, nets, w75, pair=1, size=12, cache_dir=tmp_path)
    assert len(calls) == 2 and all(p.exact for p in calls)
    assert r1.decision.all() and not r2.decision.any()
    r3, _ = bf.exact_reference(a, b, nets, paper, pair=1, size=12, cache_dir=tmp_path)  # cached
    assert len(calls) == 2 and r3.decision.all()
    entries = sorted(tmp_path.iterdir())
    assert len(entries) == 2 and all(e.suffix == ".npz" for e in entries), entries
    key = json.loads(str(np.load(entries[0])["key"]))
    assert {"params", "nets", "net_files", "pair", "size", "inputs", "threads"} <= set(key)


def test_run_states_its_settings(bf, shared_data: Path, tmp_path: Path) -> None:
    """The agreement run on a tiny pair (exact mode in seconds): the output's "fuse" states the
    rule and every setting, and a run under the other rule makes its own exact entry."""
    if not (REPO / "models" / "lytro-2026-11" / "initial.pt").is_file():
        pytest.skip("models/lytro-2026-11 not here")
    cache = tmp_path / "cache"
    common = ["--model", str(REPO / "models" / "lytro-2026-11"), "--threads", "1", "--size", "24", "--pairs", "1",
              "--skip", "synthetic", "speed", "--configs", "default", "--exact-cache", str(cache)]
    assert bf.main([*common, "--fuse-rule", "paper", "--out", str(tmp_path / "paper.json")]) == 0
    report = json.loads((tmp_path / "paper.json").read_text())
    assert report["fuse"]["rule"] == "paper"
    assert report["fuse"]["params"]["boundary_weight"] == 1.0
    assert report["fuse"]["params"]["exposure_match"] == "none"
    assert report["fuse"]["params"]["working_min"] == 0
    assert report["fuse"]["configs"] == {"default": {}}
    assert len(list(cache.glob("*.npz"))) == 1
    assert bf.main([*common, "--fuse-rule", "defaults", "--out", str(tmp_path / "defaults.json")]) == 0
    report = json.loads((tmp_path / "defaults.json").read_text())
    assert report["fuse"]["params"] == json.loads(json.dumps(dataclasses.asdict(FusionParams())))
    assert len(list(cache.glob("*.npz"))) == 2


def test_bench_dense_boxes_times_merged_and_unmerged_boxes_alike(shared_data, tmp_path) -> None:
    """benchmarks/bench_dense_boxes.py (BENCHMARKS.md, "Merged masked boxes") runs on a small
    Lytro crop: the merged boxes score the masked pixels as the unmerged ones do, with no
    more crop pixels, and the script leaves scoring's functions as it found them."""
    from bafusion.fusion import scoring

    merge, reach = scoring._merge_boxes, scoring.trunk_reach
    spec = importlib.util.spec_from_file_location("bench_dense_boxes", REPO / "benchmarks" / "bench_dense_boxes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "boxes.json"
    # tile 32: the 96-px crop's near-boundary pixels lie in several boxes (one with the
    # default tile 128, where merged and unmerged would be the same box)
    assert module.main(["--pairs", "1", "--size", "96", "--depth", "8", "--patch", "16", "--rounds", "1",
                        "--tile", "32", "--old-context", "--out", str(out)]) == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    rows = report["rows"]
    assert report["tile"] == 32 and [r["net"] for r in rows] == ["shipped", "resnet8-p16"]
    for r in rows:
        assert r["near_fraction"] > 0 and r["max_abs_diff"] <= 1e-6
        assert r["boxes_merged"] < r["boxes_unmerged"] and r["crop_px_merged"] < r["crop_px_unmerged"]
        assert len(r["seconds_merged"]) == len(r["seconds_unmerged"]) == len(r["seconds_unmerged_16px"]) == 1
    assert (scoring._merge_boxes, scoring.trunk_reach) == (merge, reach)
