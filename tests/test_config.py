"""params.yaml, the paper preset and the count-only mode."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from bafusion.cli import main
from bafusion.config import (
    apply_overrides_to_file,
    deep_merge,
    dvc_set_args,
    flatten,
    load_params,
    load_preset,
)
from bafusion.data.counts import count_samples

REPO = Path(__file__).resolve().parents[1]


def paper_params(tmp_path: Path) -> dict:
    params = deep_merge(load_params(REPO / "params.yaml"), load_preset("paper"))
    # Count from the configuration, not from whatever folder this machine has.
    params["data"]["dir"] = {"alphamatting": str(tmp_path / "absent"), "backgrounds": str(tmp_path / "absent")}
    return params


def test_paper_preset_holds_the_papers_numbers(tmp_path: Path) -> None:
    p = flatten(paper_params(tmp_path))
    assert p["patch"] == 64
    assert p["depth"] == 56
    assert p["data.foregrounds"] == 27 and p["data.backgrounds"] == 700
    assert p["prepare.scale"] == 0.5
    assert p["patches.per_pair"] == 10
    assert p["patches.min_focused"] == 0.1 and p["patches.min_defocused"] == 0.1
    assert p["patches.val_fraction"] == 0.15
    assert p["train.epochs"] == 200 and p["train.batch"] == 128
    assert p["train.lr"] == 0.001 and p["train.milestones"] == [80, 120, 160, 180] and p["train.gamma"] == 0.1
    assert p["train.samples_per_epoch"] == 0 and p["train.val_samples"] == 0  # every sample, every epoch
    for key, value in flatten(load_preset("paper")).items():
        assert key in flatten(load_params(REPO / "params.yaml")), f"preset key {key} is not in params.yaml"
        assert p[key] == value


def test_count_only_mode_reports_the_papers_scale(tmp_path: Path) -> None:
    c = count_samples(paper_params(tmp_path))
    assert c["pairs"] == 18_900
    assert c["base_patches"] == 189_000
    assert c["effective_samples"] == 2_268_000


def test_count_cli_with_preset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = load_params(REPO / "params.yaml")
    params["data"]["dir"] = {"alphamatting": str(tmp_path / "absent"), "backgrounds": str(tmp_path / "absent")}
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(params))
    assert main(["count", "--params", str(f), "--preset", "paper"]) == 0
    out = capsys.readouterr().out
    assert "18,900" in out and "2,268,000" in out


def test_count_of_the_builtin_default_matches_its_sources() -> None:
    c = count_samples(load_params(REPO / "params.yaml"))
    # 8 builtin foregrounds and 10 backgrounds, 2 of each held out.
    assert (c["foregrounds"], c["backgrounds"], c["pairs"]) == (6, 8, 48)
    assert c["effective_samples"] == 48 * load_params(REPO / "params.yaml")["patches"]["per_pair"] * 12


def test_dvc_set_args_round_trip_through_the_override_grammar() -> None:
    args = dvc_set_args({"patch": 64, "composite": {"sigma": [1.0, 3.0], "fit": "cover"}, "x": {"flag": True}})
    assert args == ["-S", "patch=64", "-S", "composite.sigma=[1.0,3.0]", "-S", "composite.fit=cover", "-S", "x.flag=true"]
    from omegaconf import OmegaConf  # what DVC's -S parser builds on

    parsed = OmegaConf.from_dotlist([a for a in args if a != "-S"])
    assert OmegaConf.to_container(parsed) == {"patch": 64, "composite": {"sigma": [1.0, 3.0], "fit": "cover"}, "x": {"flag": True}}


def test_preset_apply_keeps_comments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "params.yaml"
    f.write_text((REPO / "params.yaml").read_text())
    assert main(["preset", "paper", "--apply", str(f)]) == 0
    text = f.read_text()
    assert "# patch side in pixels, a positive multiple of 4" in text and "paper: 64" in text
    p = flatten(yaml.safe_load(text))
    assert p["patch"] == 64 and p["data.backgrounds"] == 700 and p["patches.per_pair"] == 10
    assert main(["preset", "paper"]) == 0
    words = shlex.split(capsys.readouterr().out)
    assert "patch=64" in words and "data.backgrounds=700" in words and words[0] == "-S"


def test_apply_overrides_creates_missing_sections(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("a: 1  # keep me\n")
    apply_overrides_to_file(f, {"b": {"c": 2}})
    assert yaml.safe_load(f.read_text()) == {"a": 1, "b": {"c": 2}} and "# keep me" in f.read_text()


@pytest.mark.parametrize("name", ["paper", "real"])
def test_every_preset_applies_through_dvcs_own_override_parser(name: str, tmp_path: Path) -> None:
    """`dvc exp run $(bafusion preset NAME)`: every -S argument parses and lands as the preset says."""
    import shutil

    import yaml
    from dvc.utils.hydra import apply_overrides

    from bafusion.config import dvc_set_args, flatten, load_preset

    root = Path(__file__).resolve().parents[1]
    params = tmp_path / "params.yaml"
    shutil.copy(root / "params.yaml", params)
    preset = load_preset(name)
    args = dvc_set_args(preset)
    apply_overrides(params, [a for a in args if a != "-S"])
    got = flatten(yaml.safe_load(params.read_text()))
    for k, v in flatten(preset).items():
        assert got[k] == v, k


def test_paper_after_real_is_the_paper(tmp_path: Path) -> None:
    import yaml

    from bafusion.config import deep_merge, load_preset
    from bafusion.data.composite import Realism
    from bafusion.nets.train import resolve_config

    root = Path(__file__).resolve().parents[1]
    base = yaml.safe_load((root / "params.yaml").read_text())
    p = deep_merge(deep_merge(base, load_preset("real")), load_preset("paper"))
    assert not Realism.from_mapping(p["composite"]["realistic"]).active
    assert p["composite"]["sigma"] == [1.0, 3.0] and p["patches"]["context"] == 0 and p["fuse"]["scales"] == [1.0]
    for net in ("initial", "boundary"):
        cfg = resolve_config(p, net)
        assert cfg.init == "" and cfg.consistency == 0 and cfg.depth == 56 and cfg.patch == 64
    # An empty per-net warm start inherits train.init; a set one wins.
    q = deep_merge(base, {"train": {"init": "a.pt", "boundary": {"init": "b.pt"}}})
    assert resolve_config(q, "initial").init == "a.pt" and resolve_config(q, "boundary").init == "b.pt"
