"""Ensembles of nets (``bafusion.nets.model.ensemble``, ``bafusion ensemble``): one net whose
logits are the mean of its members', for isolated patches and for fusion's dense pass."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from bafusion.cli import main as cli_main
from bafusion.nets.model import (
    ResNetSpec,
    build_model,
    ensemble,
    fold_batchnorm,
    load_model,
    save_model,
)


def _members(k: int = 2, depth: int = 8) -> list:
    nets = []
    for seed in range(k):
        torch.manual_seed(seed)
        net = build_model(depth)
        with torch.no_grad():  # BatchNorm statistics other than the initial ones
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.1, 0.1)
        nets.append(net.eval())
    return nets


@pytest.mark.parametrize("k", [2, 3])
def test_logits_are_the_members_mean_for_patches_and_in_context(k: int) -> None:
    nets = _members(k)
    ens = ensemble(nets)
    assert ens.spec == ResNetSpec(depth=8, members=k)
    x = torch.rand(6, 2, 28, 28)
    with torch.no_grad():
        for context in (0, 8):
            want = torch.stack([n(x, context=context) for n in nets]).mean(dim=0)
            got = ens(x, context=context)
            assert got.shape == want.shape
            assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())
        # a member that differs changes the ensemble: the members really are all used
        assert not torch.allclose(ens(x), nets[0](x), atol=1e-3)
        folded = fold_batchnorm(ens)
        assert torch.allclose(folded(x), ens(x), atol=1e-5)


def test_an_ensemble_costs_its_members_parameters_not_a_wide_nets() -> None:
    nets = _members(2)
    one = sum(p.numel() for p in nets[0].parameters())
    ens = sum(p.numel() for p in ensemble(nets).parameters())
    # grouped convolutions: the members' weights side by side (the first convolution and the
    # linear layer are whole), not the 4x of a net twice as wide
    assert ens == 2 * one - nets[0].fc.bias.numel()


def test_refuses_one_net_and_mixed_architectures() -> None:
    a, b = _members(2)
    with pytest.raises(ValueError, match="at least two"):
        ensemble([a])
    with pytest.raises(ValueError, match="one architecture"):
        ensemble([a, build_model(14)])
    with pytest.raises(ValueError, match="single nets"):
        ensemble([ensemble([a, b]), ensemble([a, b])])


def test_refuses_folded_inference_copies() -> None:
    nets = _members(2)
    with pytest.raises(ValueError, match="ensemble first, then fold"):
        ensemble([fold_batchnorm(n) for n in nets])


def test_saved_and_loaded_with_its_members(tmp_path: Path) -> None:
    nets = _members(2)
    save_model(ensemble(nets), tmp_path / "e.pt", {"patch": 12})
    meta = json.loads((tmp_path / "e.json").read_text())
    assert meta["arch"]["members"] == 2
    loaded, _ = load_model(tmp_path / "e.pt")
    x = torch.rand(3, 2, 12, 12)
    with torch.no_grad():
        assert torch.equal(loaded(x), ensemble(nets)(x))
    # a single net's description is unchanged (no 'members' key): older files and dvc.lock stay
    save_model(nets[0], tmp_path / "one.pt", {"patch": 12})
    assert "members" not in json.loads((tmp_path / "one.json").read_text())["arch"]


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 48), dtype=np.uint8)
    b = np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(2)))
    pa, pb = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(a).save(pa)
    Image.fromarray(b).save(pb)
    return pa, pb


def test_cli_ensemble_makes_a_model_fusion_uses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    members = _members(2)
    paths = []
    for i, net in enumerate(members):
        save_model(net, tmp_path / f"m{i}.pt", {"patch": 12, "input_scale": 1 / 255, "net": "initial"})
        paths.append(str(tmp_path / f"m{i}.pt"))
    model = tmp_path / "model"
    assert cli_main(["ensemble", *paths, "--out", str(model / "initial.pt")]) == 0
    assert capsys.readouterr().out.startswith(f"2 nets -> {model / 'initial.pt'} (")  # the result: stdout, as fuse's
    meta = json.loads((model / "initial.json").read_text())
    assert meta["patch"] == 12 and meta["net"] == "initial"
    assert [m["file"] for m in meta["ensemble_of"]] == paths
    assert all(len(m["sha256"]) == 64 for m in meta["ensemble_of"])
    torch.manual_seed(5)
    save_model(build_model(8), model / "boundary.pt", {"patch": 12})
    pa, pb = _pair(tmp_path)
    out = tmp_path / "f.png"
    assert cli_main(["fuse", str(pa), str(pb), "-o", str(out), "--model", str(model), "--device", "cpu",
                     "--align", "none", "--no-progress"]) == 0
    assert np.asarray(Image.open(out)).shape == (40, 48)


def test_an_ensemble_of_one_net_twice_fuses_as_the_net(tmp_path: Path) -> None:
    from bafusion.fusion import FusionParams, fuse_images
    from bafusion.fusion.models import load_nets

    net = _members(1)[0]
    save_model(net, tmp_path / "one" / "initial.pt", {"patch": 12})
    save_model(ensemble([net, net]), tmp_path / "two" / "initial.pt", {"patch": 12})
    save_model(_members(2)[1], tmp_path / "boundary.pt", {"patch": 12})
    pa, pb = _pair(tmp_path)
    a, b = np.asarray(Image.open(pa)), np.asarray(Image.open(pb))
    res = [fuse_images(a, b, load_nets(tmp_path / d / "initial.pt", tmp_path / "boundary.pt", "cpu"),
                       FusionParams(), ("a", "b")) for d in ("one", "two")]
    assert np.abs(res[0].score_initial - res[1].score_initial).max() < 1e-5


def test_cli_refuses_one_net_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    a, _ = _members(2)
    save_model(a, tmp_path / "a.pt", {"patch": 16})
    shutil.copy2(tmp_path / "a.pt", tmp_path / "copy.pt")
    shutil.copy2(tmp_path / "a.json", tmp_path / "copy.json")
    for second in ("a.pt", "copy.pt"):
        assert cli_main(["ensemble", str(tmp_path / "a.pt"), str(tmp_path / second), "--out", str(tmp_path / "e.pt")]) == 2
        assert "the same net as the member" in capsys.readouterr().err
        assert not (tmp_path / "e.pt").exists()


def test_cli_refuses_members_of_other_patch_sides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = _members(2)
    save_model(a, tmp_path / "a.pt", {"patch": 12})
    save_model(b, tmp_path / "b.pt", {"patch": 16})
    assert cli_main(["ensemble", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--out", str(tmp_path / "e.pt")]) == 2
    assert "differ in 'patch'" in capsys.readouterr().err
    assert not (tmp_path / "e.pt").exists()


@pytest.mark.parametrize("out", ["a.pt", "a.json", "a", "a.pth"])
def test_cli_never_overwrites_a_member_or_its_description(tmp_path: Path, out: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    a, b = _members(2)
    save_model(a, tmp_path / "a.pt", {"patch": 12})
    save_model(b, tmp_path / "b.pt", {"patch": 12})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert cli_main(["ensemble", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--out", str(tmp_path / out)]) == 2
    err = capsys.readouterr().err
    assert "would overwrite the member" in err or "ends in .pt" in err or "also an input" in err, err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_cli_refuses_an_initial_and_a_boundary_net_together(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = _members(2)
    save_model(a, tmp_path / "i.pt", {"patch": 12, "net": "initial"})
    save_model(b, tmp_path / "b.pt", {"patch": 12, "net": "boundary"})
    assert cli_main(["ensemble", str(tmp_path / "i.pt"), str(tmp_path / "b.pt"), "--out", str(tmp_path / "e.pt")]) == 2
    assert "differ in 'net'" in capsys.readouterr().err


def test_cli_reads_the_older_patch_size_key(tmp_path: Path) -> None:
    a, b = _members(2)
    save_model(a, tmp_path / "a.pt", {"patch_size": 12})
    save_model(b, tmp_path / "b.pt", {"patch": 12})
    assert cli_main(["ensemble", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--out", str(tmp_path / "e.pt")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["patch"] == 12


def test_an_ensemble_of_the_shipped_nets_keeps_their_label_position(tmp_path: Path) -> None:
    """The shipped nets were trained with bafusion 0.2.0's labels (``fuse.score_position: auto``
    moves their scores to the patch's centre): an ensemble of them is too, though its own
    description records no patch file, only its members' descriptions."""
    from bafusion.fusion.models import _label_position_of, load_nets

    repo = Path(__file__).resolve().parents[1]
    members = [repo / "models" / m / "initial.pt" for m in ("default", "lytro-2026-11")]
    assert {_label_position_of(m) for m in members} == {"centre"}
    out = tmp_path / "model" / "initial.pt"
    assert cli_main(["ensemble", *map(str, members), "--out", str(out)]) == 0
    assert _label_position_of(out) == "centre"
    nets = load_nets(out, repo / "models" / "default" / "boundary.pt", "cpu")
    assert nets.label_positions == ("centre", "centre")


def test_cli_refuses_members_whose_labels_sit_in_different_places(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    a, b = _members(2)
    old = {"patch": 12, "context": 4, "patches_attrs": {"code_version": "0.1.0", "patch": 12, "context": 4}}
    save_model(a, tmp_path / "a.pt", old)
    save_model(b, tmp_path / "b.pt", {**old, "patches_attrs": {**old["patches_attrs"], "code_version": "0.6.0"}})
    assert cli_main(["ensemble", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--out", str(tmp_path / "e.pt")]) == 2
    err = capsys.readouterr().err
    assert "labels sit in different places" in err and "a.pt: centre" in err and "b.pt: pixel" in err, err
    assert not (tmp_path / "e.pt").exists()
    # both of today's labels: an ensemble of them places its scores at the pixel, as they do
    save_model(a, tmp_path / "a.pt", {**old, "patches_attrs": {**old["patches_attrs"], "code_version": "0.6.0"}})
    assert cli_main(["ensemble", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--out", str(tmp_path / "e.pt")]) == 0
    from bafusion.fusion.models import _label_position_of, label_position

    assert _label_position_of(tmp_path / "e.pt") == "pixel"
    # an ensemble written before the check, of members that differ: as before the fix, "pixel"
    mixed = {"patch": 12, "ensemble_of": [{"file": "a.pt", "meta": old},
                                          {"file": "b.pt", "meta": json.loads((tmp_path / "b.json").read_text())}]}
    assert label_position(mixed) == "pixel"
    assert label_position({**mixed, "ensemble_of": [mixed["ensemble_of"][0]] * 2}) == "centre"


@pytest.mark.parametrize(("depth", "members"), [(8, 1), (20, 1), (56, 1), (8, 3), (20, 2)])
def test_a_loaded_net_holds_every_tensor_of_its_file_and_nothing_else(tmp_path: Path, depth: int,
                                                                      members: int) -> None:
    """load_model builds the net on the meta device and allocates its memory uninitialised
    (``to_empty``): the strict load must fill every parameter and buffer. So each depth and
    ensemble size has none outside its state_dict (a non-persistent buffer would stay
    uninitialised), and the loaded tensors, BatchNorm's running statistics and batch counts
    included, are the file's, on the CPU and float32."""
    torch.manual_seed(depth + members)
    nets = [build_model(depth) for _ in range(members)]
    for i, net in enumerate(nets):
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
                    m.num_batches_tracked.fill_(7 + i)
        net.eval()
    net = nets[0] if members == 1 else ensemble(nets)
    every = {k for k, _ in net.named_parameters()} | {k for k, _ in net.named_buffers()}
    assert set(net.state_dict()) == every
    save_model(net, tmp_path / "n.pt", {"patch": 12})
    loaded, _ = load_model(tmp_path / "n.pt")
    state = torch.load(tmp_path / "n.pt", map_location="cpu", weights_only=True)
    tensors = dict(loaded.named_parameters()) | dict(loaded.named_buffers())
    assert set(tensors) == set(state)
    for k, v in state.items():
        assert torch.equal(tensors[k], v), k
        assert tensors[k].device.type == "cpu" and tensors[k].dtype == v.dtype, k
    assert all(p.requires_grad for p in loaded.parameters())
    x = torch.rand(3, 2, 12, 12)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
