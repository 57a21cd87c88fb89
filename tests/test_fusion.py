"""Fusion (issue 5): dense vs exact scoring, the paper's rule on composited pairs with a known
decision map, exactness of the fused pixels, the CLI and its errors, odd and tiny sizes.

Two tiny nets (ResNet-8, patch 12) are trained once per module on patches of synthetic pairs
(a sharp noise texture, its blurred copy, a blob mask M; A = sharp*M + blur*(1-M),
B = blur*M + sharp*(1-M)): about half a minute on 2 cores."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from figure_panels import lit_lines, record_renders
from PIL import Image
from scipy import ndimage
from torch import nn

from bafusion import fusion
from bafusion.cli import main as cli_main
from bafusion.errors import InputFileError, UserError
from bafusion.fusion import (
    FusionNets,
    FusionParams,
    decision_accuracy,
    fuse_images,
    fuse_stack,
    remove_small_regions,
    score_adaptive,
    score_dense,
    score_exact,
    score_grid,
)
from bafusion.io import to_gray_u8
from bafusion.nets.model import build_model, save_model

PATCH = 12


def texture(rng: np.random.Generator, h: int, w: int, rgb: bool = False) -> np.ndarray:
    c = 3 if rgb else 1
    out = np.zeros((h, w, c))
    for s, wt in ((0.7, 1.0), (2.0, 0.7), (6.0, 0.5)):
        n = ndimage.gaussian_filter(rng.standard_normal((h, w, c)), (s, s, 0))
        out += wt * n / n.std()
    out = np.round((out - out.min()) / (out.max() - out.min()) * 255).astype(np.uint8)
    return out if rgb else out[..., 0]


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    s = (sigma, sigma, 0) if img.ndim == 3 else sigma
    return np.round(ndimage.gaussian_filter(img.astype(np.float64), s, mode="reflect")).astype(np.uint8)


def composite(rng: np.random.Generator, h: int, w: int, rgb: bool = False, sigma: float = 2.0, scale: float = 3.0):
    """A, B and the true decision map M (True: A focused)."""
    sharp = texture(rng, h, w, rgb)
    soft = blur(sharp, sigma)
    n = ndimage.gaussian_filter(rng.standard_normal((h, w)), max(h, w) / scale, mode="wrap")
    m = n > np.median(n)
    mm = m[..., None] if rgb else m
    return np.where(mm, sharp, soft), np.where(mm, soft, sharp), m


def _write_test_set(pairs: Path, names: list[str], rng: np.random.Generator, h: int = 48, w: int = 56, *,
                    rgb: bool = True, dm: bool = False, truth: bool = False, wrap: bool = False) -> list[tuple]:
    """A fuse-set test set in the new folder ``pairs``: per name, in order, a :func:`composite`
    pair saved as ``<name>-A.png`` and ``<name>-B.png``, with ``dm`` its true decision map (0/255)
    as ``<name>-dm.png``, with ``truth`` A as ``<name>-truth.png``; and ``index.json`` listing the
    names (as ``{"pairs": [...]}`` with ``wrap``). Returns the composites' (A, B, M)."""
    pairs.mkdir()
    made = []
    for name in names:
        a, b, m = composite(rng, h, w, rgb=rgb)
        Image.fromarray(a).save(pairs / f"{name}-A.png")
        Image.fromarray(b).save(pairs / f"{name}-B.png")
        if dm:
            Image.fromarray(m.astype(np.uint8) * 255).save(pairs / f"{name}-dm.png")
        if truth:
            Image.fromarray(a).save(pairs / f"{name}-truth.png")
        made.append((a, b, m))
    (pairs / "index.json").write_text(json.dumps({"pairs": list(names)} if wrap else list(names)))
    return made


def _write_noise_pair(pairs: Path) -> Path:
    """The new folder ``pairs`` holding one pair ``p1`` of 20x24 gray noise (seed 0) and its index."""
    pairs.mkdir()
    rng = np.random.default_rng(0)
    for s in ("A", "B"):
        Image.fromarray(rng.integers(0, 256, (24, 20), dtype=np.uint8)).save(pairs / f"p1-{s}.png")
    (pairs / "index.json").write_text(json.dumps({"pairs": ["p1"]}))
    return pairs


def _train(kind: str, seed: int, steps: int = 240, batch: int = 32) -> nn.Module:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    net = build_model(8)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    p2 = PATCH // 2
    net.train()
    for it in range(steps):
        if it % 20 == 0:
            a, b, m = composite(rng, 96, 96, sigma=rng.uniform(1.5, 3.0))
            pa = np.pad(a, (p2, PATCH - p2 - 1), mode="reflect")
            pb = np.pad(b, (p2, PATCH - p2 - 1), mode="reflect")
            edge = m ^ ndimage.binary_erosion(m, border_value=1)
            zone = (
                ndimage.binary_dilation(edge, iterations=PATCH // 4)
                if kind == "boundary"
                else ~ndimage.binary_dilation(edge, iterations=p2 + 1)
            )
            rr, cc = np.nonzero(zone)
        sel = rng.integers(0, len(rr), batch)
        r, c = rr[sel], cc[sel]
        x = np.stack(
            [np.stack([pa[i : i + PATCH, j : j + PATCH] for i, j in zip(r, c)]),
             np.stack([pb[i : i + PATCH, j : j + PATCH] for i, j in zip(r, c)])], 1
        )
        loss = nn.functional.cross_entropy(
            net(torch.from_numpy(x.astype(np.float32) / 255)), torch.from_numpy(m[r, c].astype(np.int64))
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(one_torch_thread) -> tuple[nn.Module, nn.Module]:
    return _train("initial", 1), _train("boundary", 2)


@pytest.fixture(scope="module")
def nets(trained) -> FusionNets:
    return FusionNets(*trained, PATCH, PATCH, torch.device("cpu"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, trained) -> Path:
    d = tmp_path_factory.mktemp("models")
    save_model(trained[0], d / "initial.pt", {"patch": PATCH})
    save_model(trained[1], d / "boundary.pt", {"patch": PATCH})
    return d


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return composite(np.random.default_rng(7), 120, 136, rgb=True)


# ---------------------------------------------------------------- scoring


class CellNet(nn.Module):
    """A net whose trunk sees only its own 4x4 cell: dense and exact scores must then be equal,
    which checks the patch alignment, shift-and-stitch, interpolation grid and tiling."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.AvgPool2d(4), nn.Conv2d(2, 64, 1), nn.Tanh())
        self.fc = nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.trunk(x).mean(dim=(2, 3)))


@pytest.mark.parametrize("shape", [(37, 29), (5, 3), (1, 1), (40, 40)])
def test_dense_step1_equals_exact_for_cell_local_trunk(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (2, *shape), dtype=np.uint8)
    net = CellNet().eval()
    ref = score_exact(net, a, b, 16, batch_size=97)
    assert ref.shape == shape and np.isfinite(ref).all()
    np.testing.assert_allclose(score_dense(net, a, b, 16, step=1, max_tile=16), ref, atol=1e-5)
    mask = rng.random(shape) < 0.4
    got = score_dense(net, a, b, 16, step=1, mask=mask, tile=8)
    np.testing.assert_allclose(got[mask], ref[mask], atol=1e-5)
    assert np.isnan(got[~mask]).all()
    np.testing.assert_allclose(score_grid(net, a, b, 16, mask, step=1)[mask], ref[mask], atol=1e-5)
    np.testing.assert_allclose(score_adaptive(net, a, b, 16, mask, coarse=1, fine=1)[mask], ref[mask], atol=1e-5)
    coarse_fine = score_adaptive(net, a, b, 16, mask, coarse=8, fine=1)
    assert np.isfinite(coarse_fine[mask]).all() and np.isnan(coarse_fine[~mask]).all()
    # coarser grids are interpolations: equal on the grid points, close elsewhere
    coarse = score_dense(net, a, b, 16, step=4)
    np.testing.assert_allclose(coarse[::4, ::4], ref[::4, ::4], atol=1e-5)


def test_exact_patch_is_centred_as_in_training() -> None:
    """The score of pixel (r, c) comes from rows r - p//2 .. r - p//2 + p - 1 of the padded pair."""
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 256, (2, 30, 30), dtype=np.uint8)
    net = build_model(8).eval()
    r, c, p = 17, 9, 16
    patch = np.stack([a[r - p // 2 : r - p // 2 + p, c - p // 2 : c - p // 2 + p],
                      b[r - p // 2 : r - p // 2 + p, c - p // 2 : c - p // 2 + p]])
    with torch.inference_mode():
        z = net(torch.from_numpy(patch[None].astype(np.float32) / 255))
    want = torch.softmax(z, 1)[0, 1].item()
    assert score_exact(net, a, b, p)[r, c] == pytest.approx(want, abs=1e-5)


# ---------------------------------------------------------------- the fusion rule


def P(**kw) -> FusionParams:
    """The paper's rule at the pair's own size (these tests check its mechanics with tiny nets
    on tiny pairs): no flat-region filling, no upscaling of small pairs, the boundary net's
    score replacing the initial one near the boundary."""
    return FusionParams(**{"flat_level": 0, "working_min": 0, "boundary_weight": 1.0, **kw})


def test_decision_accuracy_refuses_a_map_read_from_an_image() -> None:
    """decision_accuracy(dm, truth) compared the values: a decision map read from fuse-set's
    maps/<pair>-dm.png (0 and 255) against a bool truth gave 0.95 for a perfect map, silently,
    and maps of two sizes failed with numpy's broadcast ValueError. 0/1 numbers are maps."""
    truth = np.eye(20, dtype=bool)
    assert decision_accuracy(truth.astype(np.uint8), truth) == 1.0
    assert decision_accuracy(truth, truth.astype(np.float32), band=2) == 1.0
    with pytest.raises(UserError, match=r"dm must be a map of True/False \(or 0/1\), got uint8 0\.\.255; .*dm > 127"):
        decision_accuracy(truth.astype(np.uint8) * 255, truth)
    with pytest.raises(UserError, match=r"truth must be a map"):
        decision_accuracy(truth, truth * 0.5, band=2)
    with pytest.raises(UserError, match=r"dm is \(20, 20\) but truth is \(21, 21\)"):
        decision_accuracy(truth, np.eye(21, dtype=bool))


def test_decision_accuracy_and_boundary_refinement(nets: FusionNets, scene) -> None:
    a, b, m = scene
    res = fuse_images(a, b, nets, P())
    acc = decision_accuracy(res.decision, m)
    assert acc >= 0.98, acc
    # refinement by the boundary net lowers the error in a band around the true boundary
    err_initial = 1 - decision_accuracy(res.score_initial > 0.5, m, band=3)
    err_refined = 1 - decision_accuracy(res.decision_raw, m, band=3)
    assert err_refined < err_initial, (err_refined, err_initial)
    assert res.near_boundary.any() and not res.near_boundary.all()
    exact = fuse_images(a, b, nets, P(exact=True))
    assert 1 - decision_accuracy(exact.decision_raw, m, band=3) < err_initial


def test_fused_pixels_are_exactly_a_or_b(nets: FusionNets, scene) -> None:
    a, b, _ = scene
    res = fuse_images(a, b, nets)
    dm = res.decision
    assert res.fused.dtype == np.uint8 and res.fused.shape == a.shape
    assert np.array_equal(res.fused[dm], a[dm]) and np.array_equal(res.fused[~dm], b[~dm])
    g = fuse_images(a[..., 0], b[..., 0], nets)  # gray in, gray out
    assert g.fused.ndim == 2
    assert np.array_equal(g.fused[g.decision], a[..., 0][g.decision])
    rgba = np.concatenate([a, np.full(a.shape[:2] + (1,), 200, np.uint8)], 2)
    assert np.array_equal(fuse_images(rgba, b, nets).fused, res.fused)


def test_one_channel_sources_give_a_gray_fusion(nets: FusionNets, scene) -> None:
    """(H, W, 1) is gray and (H, W, 2) gray + alpha, as for bafusion.fuse(): the fusion is (H, W)
    (it kept the shape (H, W, 1); (H, W, 2) was a raw ValueError)."""
    a, b, _ = scene
    gray = fuse_images(a[..., 0], b[..., 0], nets, P()).fused
    assert gray.shape == a.shape[:2]
    for x, y in ((a[..., :1], b[..., :1]), (a[..., :2], b[..., :2]), (a[..., :1], b[..., 0])):
        got = fuse_images(x, y, nets, P()).fused
        assert got.shape == a.shape[:2] and np.array_equal(got, gray)
    assert fuse_stack([a[..., :1], b[..., :1], b[..., :1]], nets, P())[-1].fused.shape == a.shape[:2]


def test_fuse_images_checks_its_arguments_like_fuse(nets: FusionNets, scene) -> None:
    """A mapping of parameters is taken, as by bafusion.fuse(); nets that are not loaded, lists
    and odd shapes are one-line UserErrors (they were AttributeErrors and ValueErrors)."""
    a, b, _ = scene
    want = fuse_images(a, b, nets, P(l=4)).fused
    got = fuse_images(a, b, nets, {"flat_level": 0, "working_min": 0, "boundary_weight": 1.0, "l": 4}).fused
    assert np.array_equal(got, want)
    assert np.array_equal(fuse_stack([a, b], nets, {"flat_level": 0, "working_min": 0, "boundary_weight": 1.0,
                                                     "l": 4})[-1].fused, want)
    with pytest.raises(UserError, match=r"fuse\.bogus"):
        fuse_images(a, b, nets, {"bogus": 1})
    with pytest.raises(UserError, match="params must be a FusionParams"):
        fuse_images(a, b, nets, 4)
    for bad in ("default", None):
        with pytest.raises(UserError, match=r"nets must be the loaded nets \(bafusion\.load_model"):
            fuse_images(a, b, bad)
        with pytest.raises(UserError, match="nets must be"):
            fuse_stack([a, b], bad)
    with pytest.raises(UserError, match="^left.png: expected a numpy array, got list$"):
        fuse_images(a.tolist(), b, nets, names=("left.png", "right.png"))
    with pytest.raises(UserError, match="^image 2: expected a numpy array, got list$"):
        fuse_stack([a, b.tolist()], nets)
    with pytest.raises(UserError, match=r"^B: expected an \(H, W\) gray .* shape \(120, 136, 5\)$"):
        fuse_images(a, np.zeros((120, 136, 5), np.uint8), nets)
    with pytest.raises(UserError, match=r"^B: sources must be uint8 images, got float64 \(a float image: "):
        fuse_images(a, b.astype(np.float64), nets)


def test_fuse_images_and_the_stack_rule_say_how_to_convert_other_dtypes(nets: FusionNets, scene) -> None:
    """fuse_images and fuse_stack_joint said only 'sources must be uint8 images, got float64' (a
    UserError; the stack's named the image as a file): they give bafusion.fuse's hint (uint8 only
    here) and raise InputTypeError, also a TypeError."""
    from bafusion.errors import InputTypeError
    from bafusion.fusion.stack import fuse_stack_joint

    a, b, _ = scene
    float_hint = (r" \(a float image: bafusion\.io\.to_uint8\(x \* 255\) converts one in \[0, 1\], to_uint8\(x\) one "
                  r"on the \[0, 255\] scale\)$")
    with pytest.raises(InputTypeError, match=r"^B: sources must be uint8 images, got float64" + float_hint):
        fuse_images(a, b / 255.0, nets)
    with pytest.raises(TypeError, match=r"^image 2: sources must be uint8 images, got float64" + float_hint):
        fuse_stack_joint([a, b / 255.0], nets)
    with pytest.raises(TypeError, match=r"^A: sources must be uint8 images, got int64 \(an integer image of 8-bit "
                                        r"values: x\.astype\(numpy\.uint8\)\)$"):
        fuse_images(a.astype(np.int64), b, nets)
    # uint8 only: values above 255 are not sent to uint16, which these refuse too
    with pytest.raises(TypeError, match=r"^image 1: sources must be uint8 images, got uint16 \(an integer image of "
                                        r"values from 1000 to 1000, outside 0\.\.255: astype alone would wrap them; clip "
                                        r"or rescale first, e\.g\. numpy\.clip\(x, 0, 255\)\.astype\(numpy\.uint8\)\)$"):
        fuse_stack_joint([np.full(a.shape, 1000, np.uint16), b], nets)


def test_docstrings_list_the_parameters_in_signature_order() -> None:
    """fuse_stack documented progress before names (the signature has names first)."""
    import inspect
    import re

    from bafusion import fuse

    for fn in (fuse_images, fuse_stack, fuse):
        doc = inspect.getdoc(fn)
        section = doc.split("Parameters\n----------\n")[1].split("\n\n")[0]
        documented = [n.strip().lstrip("*") for line in re.findall(r"^(\S[^:\n]*?)(?: :.*)?$", section, re.M)
                      for n in line.split(",")]
        assert documented == list(inspect.signature(fn).parameters), fn.__name__


def test_help_of_fusion_params_describes_every_field() -> None:
    """help(FusionParams) showed one line ("defaults chosen in benchmarks/bench_fusion.py"):
    its fields were described only in #: comments. The docstring's Attributes section is built
    from those comments: every field with its type, default and text, in field order."""
    import dataclasses
    import inspect
    import pydoc
    import re

    doc = inspect.getdoc(FusionParams)
    section = doc.split("Attributes\n----------\n")[1]
    heads = re.findall(r"^(\w+) : (.+), default (.+)$", section, re.M)
    names = [f.name for f in dataclasses.fields(FusionParams)]
    assert [h[0] for h in heads] == names
    for f, (_, typ, dflt) in zip(dataclasses.fields(FusionParams), heads):
        assert typ == f.type and dflt == repr(f.default)
        body = re.search(rf"^{f.name} : .*\n((?:    .*\n?)+)", section, re.M)
        assert body and len(body[1].strip()) > 20 and "(undocumented)" not in body[1], f.name
    assert "high : float, default 0.8\n    Eq. 2: the upper bound" in section
    rendered = pydoc.render_doc(FusionParams, renderer=pydoc.plaintext)
    assert all(f"{n} : " in rendered for n in names)


def test_fusion_params_docstring_is_built_on_first_use_not_at_import() -> None:
    """The Attributes section was built at import (inspect.getsource + ast: about 8 ms of every
    command's and job's start); it is built when the docstring is first read, once."""
    import subprocess
    import sys

    code = (
        "import inspect\n"
        "calls = []\n"
        "real = inspect.getsource\n"
        "inspect.getsource = lambda *a, **k: calls.append(1) or real(*a, **k)\n"
        "from bafusion.fusion.params import FusionParams\n"
        "print(len(calls))\n"
        "doc = FusionParams.__doc__\n"
        "print(len(calls), 'Attributes' in doc, FusionParams.__doc__ is doc, FusionParams().__doc__ is doc)\n"
        "print(len(calls))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:3] == ["0", "1 True True True", "1"], out


def test_adaptive_boundary_scoring_matches_exact_decisions(nets: FusionNets, scene) -> None:
    """Adaptive refinement down to step 1 reproduces the exact boundary net's decision wherever
    a cell holds the boundary; elsewhere the interpolation keeps the corners' common side."""
    a, b, _ = scene
    ga, gb = to_gray_u8(a), to_gray_u8(b)
    s0 = score_dense(nets.initial, ga, gb, PATCH)
    mean = fusion.window_mean(s0, 8)
    near = (mean > 0.2) & (mean < 0.8)
    ref = score_exact(nets.boundary, ga, gb, PATCH, mask=near)
    got = score_adaptive(nets.boundary, ga, gb, PATCH, near, coarse=8, fine=1)
    agree = ((got > 0.5) == (ref > 0.5))[near].mean()
    assert agree >= 0.995, agree


def test_dense_and_exact_agree_on_small_images(nets: FusionNets) -> None:
    rng = np.random.default_rng(11)
    for h, w in ((64, 72), (80, 88)):
        a, b, _ = composite(rng, h, w)
        ref = fuse_images(a, b, nets, P(exact=True))
        got = fuse_images(a, b, nets, P())
        agree = (ref.decision == got.decision).mean()
        assert agree >= 0.99, (h, w, agree)


def test_grid_initial_mode_matches_exact_initial_scores_on_the_grid(nets: FusionNets) -> None:
    """initial_mode "grid": the initial net's scores at grid points are exact mode's scores,
    and grid step 1 is exact mode itself."""
    rng = np.random.default_rng(12)
    a, b, _ = composite(rng, 40, 44)
    ref = fuse_images(a, b, nets, P(exact=True, refine=False))
    one = fuse_images(a, b, nets, P(initial_mode="grid", initial_grid_step=1, refine=False))
    np.testing.assert_allclose(one.score_initial, ref.score_initial, atol=1e-5)
    four = fuse_images(a, b, nets, P(initial_mode="grid", initial_grid_step=4, refine=False))
    np.testing.assert_allclose(four.score_initial[::4, ::4], ref.score_initial[::4, ::4], atol=1e-5)
    two = fuse_images(a, b, nets, P(initial_mode="grid", initial_grid_step=2, refine=False))
    assert (two.decision == ref.decision).mean() >= 0.99
    with pytest.raises(UserError, match="initial_mode"):
        FusionParams(initial_mode="sparse")
    with pytest.raises(UserError, match="initial_grid_step"):
        FusionParams(initial_grid_step=3)


def test_bf16_autocast_agrees_with_fp32(nets: FusionNets, scene) -> None:
    a, b, m = scene
    ref = fuse_images(a, b, nets, P())
    got = fuse_images(a, b, nets, P(precision="bf16"))
    assert (got.decision == ref.decision).mean() >= 0.98
    assert decision_accuracy(got.decision, m) >= 0.97


def test_swapping_sources_inverts_the_map(nets: FusionNets, scene) -> None:
    a, b, m = scene
    r = fuse_images(b, a, nets, P())
    assert decision_accuracy(~r.decision, m) >= 0.98


def test_small_region_removal() -> None:
    dm = np.zeros((50, 50), bool)
    dm[5:35, 5:35] = True  # 900 px focused region
    dm[15:17, 15:17] = False  # 4 px hole inside it
    dm[44:46, 44:46] = True  # 4 px island
    out = remove_small_regions(dm, 0.01)  # 25 px threshold
    want = np.zeros_like(dm)
    want[5:35, 5:35] = True
    assert np.array_equal(out, want)
    assert np.array_equal(remove_small_regions(dm, 0.0), dm)


def _scored_as(monkeypatch: pytest.MonkeyPatch, s1: np.ndarray,
               s0: np.ndarray | None = None) -> tuple[FusionNets, np.ndarray, np.ndarray]:
    """Untrained nets whose scores are replaced (``rule.decide``): the initial score ``s0``
    (default ``s1``) and the refined ``s1``; and flat sources of ``s1``'s size, A at 200, B at
    50, so that the fused image shows plainly where A is taken."""
    import bafusion.fusion.rule as rule

    first = s1 if s0 is None else s0.astype(np.float32)
    monkeypatch.setattr(rule, "decide", lambda ga, gb, nets, params, bar=None:
                        (first, s1, np.zeros(s1.shape, bool), s1, {}))
    nets = FusionNets(build_model(8), build_model(8), 8, 8, torch.device("cpu"))
    return nets, np.full(s1.shape, 200, np.uint8), np.full(s1.shape, 50, np.uint8)


def test_a_score_at_the_threshold_goes_to_b(monkeypatch: pytest.MonkeyPatch) -> None:
    """Step 4, ``dm = s1 > threshold``: a pixel scored exactly at the threshold takes B."""
    s1 = np.full((16, 16), 0.5, np.float32)  # the tie
    s1[:, :4] = 0.9
    s1[:, -4:] = 0.1
    nets, a, b = _scored_as(monkeypatch, s1)
    res = fuse_images(a, b, nets, P(min_region=0.0, exposure_match="none"))
    want = np.zeros((16, 16), bool)
    want[:, :4] = True
    np.testing.assert_array_equal(res.decision_raw, want)
    np.testing.assert_array_equal(res.decision, want)
    np.testing.assert_array_equal(res.fused, np.where(want, a, b))


def test_band_uses_both_low_and_high(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eq. 2 with an asymmetric band (``fuse.low`` 0.2, ``fuse.high`` 0.6): a pixel whose
    window mean is 0.3 or 0.5 is near the boundary, one at 0.1 or 0.7 is not."""
    import importlib

    decide_mod = importlib.import_module("bafusion.fusion.decide")  # the module, not the function
    s0 = np.zeros((20, 40), np.float32)
    for k, v in enumerate((0.1, 0.3, 0.5, 0.7)):
        s0[:, 10 * k : 10 * k + 10] = v
    monkeypatch.setattr(decide_mod, "score_multiscale", lambda *a, **k: s0.copy())
    nets = FusionNets(build_model(8), build_model(8), 8, 8, torch.device("cpu"))
    g = np.zeros((20, 40), np.uint8)
    _, mean, near, s1, _ = fusion.decide(g, g, nets, P(l=1, low=0.2, high=0.6, refine=False))
    inner = np.zeros((20, 40), bool)  # columns whose 3x3 window lies inside one block
    for k in range(4):
        inner[:, 10 * k + 1 : 10 * k + 9] = True
    np.testing.assert_allclose(mean[inner], s0[inner], atol=1e-6)
    want = (s0 > 0.2) & (s0 < 0.6)
    np.testing.assert_array_equal(near[inner], want[inner])
    np.testing.assert_array_equal(s1, s0)  # refine=False: s0 stands


def test_band_excludes_its_limits_at_the_source_size_and_upscaled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eq. 2 is strict, low < mean < high: a window mean exactly at low or at high (0.25 and
    0.75, exact in binary) is not near the boundary, one between is; in decide() and in
    decide_upscaled() (a small pair decided at working_min), which recomputes the band."""
    import importlib

    from bafusion.fusion.working import decide_upscaled

    decide_mod = importlib.import_module("bafusion.fusion.decide")  # the module, not the function
    nets = FusionNets(build_model(8), build_model(8), 8, 8, torch.device("cpu"))
    g = np.zeros((20, 30), np.uint8)
    for v, want in ((0.25, False), (0.75, False), (0.5, True)):
        monkeypatch.setattr(decide_mod, "score_multiscale", lambda net, a, *x, v=v, **k: np.full(a.shape, v, np.float32))
        _, mean, near, _, _ = fusion.decide(g, g, nets, P(l=1, low=0.25, high=0.75, refine=False))
        assert np.all(mean == v) and np.all(near == want), (v, np.unique(mean))
        _, mean, near, _, _ = decide_upscaled(g, g, nets, P(l=1, low=0.25, high=0.75, refine=False, working_min=64))
        assert mean.shape == g.shape and np.all(mean == v) and np.all(near == want), ("upscaled", v, np.unique(mean))


def test_threshold_param_sets_the_binarisation(monkeypatch: pytest.MonkeyPatch) -> None:
    """``fuse.threshold`` is the binarisation threshold of step 4 (``dm = s1 > threshold``):
    at 0.3 a pixel scored 0.4 takes A, one scored 0.2 takes B (at 0.5, 0.4 would take B)."""
    s1 = np.full((16, 16), 0.2, np.float32)
    s1[:, :6] = 0.4
    s1[:, 6:10] = 0.6
    nets, a, b = _scored_as(monkeypatch, s1)
    want = np.zeros((16, 16), bool)
    want[:, :10] = True
    res = fuse_images(a, b, nets, P(min_region=0.0, exposure_match="none", threshold=0.3))
    np.testing.assert_array_equal(res.decision_raw, want)
    np.testing.assert_array_equal(res.fused, np.where(want, a, b))
    want[:, :6] = False  # 0.4 <= 0.5
    res = fuse_images(a, b, nets, P(min_region=0.0, exposure_match="none", threshold=0.5))
    np.testing.assert_array_equal(res.decision_raw, want)


def test_fused_image_is_built_from_the_cleaned_map(monkeypatch: pytest.MonkeyPatch) -> None:
    """Step 5 (Eq. 3) composites F from the map after small-region removal: a 4 px island of A
    in B's side and a 4 px hole of B in A's side (below min_region, 16 px of 40x40) take the
    surrounding source in the fused image too, not only in ``decision``."""
    s1 = np.full((40, 40), 0.1, np.float32)
    s1[:, :20] = 0.9
    s1[30:32, 30:32] = 0.9  # island of A
    s1[5:7, 5:7] = 0.1  # hole of B
    nets, a, b = _scored_as(monkeypatch, s1)
    res = fuse_images(a, b, nets, P(min_region=0.01, exposure_match="none"))
    want = np.zeros((40, 40), bool)
    want[:, :20] = True
    np.testing.assert_array_equal(res.decision_raw, s1 > 0.5)
    np.testing.assert_array_equal(res.decision, want)
    np.testing.assert_array_equal(res.fused, np.where(want, a, b))


def test_fuse_with_map_drops_the_alpha_of_a_and_replicates_a_gray_b() -> None:
    """Eq. 3 with a colour A beside a gray B: A's alpha is dropped (not its red) and B is
    replicated to three channels along the channel axis. Only the opposite case (gray A,
    colour B with alpha) was tested: A's alpha taken as the channels 1: or B repeated along the
    width passed the tests (a mutation test)."""
    from bafusion.fusion import fuse_with_map

    rng = np.random.default_rng(5)
    dm = rng.random((7, 9)) > 0.5
    a = rng.integers(0, 256, (7, 9, 4), dtype=np.uint8)  # RGBA
    b = rng.integers(0, 256, (7, 9), dtype=np.uint8)  # gray
    f = fuse_with_map(a, b, dm)
    assert f.dtype == np.uint8 and f.shape == (7, 9, 3)
    np.testing.assert_array_equal(f, np.where(dm[..., None], a[..., :3], b[..., None]))
    # a map or a source of another size: numpy's broadcast ValueError named no size
    with pytest.raises(UserError, match=r"^fuse_with_map: the map is \(5, 5\) \(H, W\) but the sources are \(7, 9, 4\) "
                                        r"and \(7, 9\)"):
        fuse_with_map(a, b, np.ones((5, 5), bool))
    with pytest.raises(UserError, match=r"the map is \(7, 9\) \(H, W\) but the sources are \(7, 9, 4\) and \(9, 7\)"):
        fuse_with_map(a, b.T, dm)


def _islands_of_4_and_5_and_a_hole_of_4() -> tuple[np.ndarray, np.ndarray]:
    """A 20x20 map with an island of 4 px, one of 5 px and a hole of 4 px, and the map with the
    4-px island and hole flipped (what a threshold of 5 px leaves)."""
    dm = np.zeros((20, 20), bool)
    dm[2:4, 2:4] = True  # island of 4 px
    dm[10:15, 2] = True  # island of 5 px
    dm[:, 12:] = True
    dm[5:7, 15:17] = False  # hole of 4 px
    want = np.zeros((20, 20), bool)
    want[10:15, 2] = True
    want[:, 12:] = True
    return dm, want


def test_small_region_area_is_rounded_up() -> None:
    """remove_small_regions' docstring: regions with fewer than ceil(min_region * H * W) pixels
    are flipped. At 0.0113 of 20x20 (4.52 px, so 5) an island and a hole of 4 px are flipped,
    an island of 5 px is kept."""
    dm, want = _islands_of_4_and_5_and_a_hole_of_4()
    np.testing.assert_array_equal(remove_small_regions(dm, 0.0113), want)


def test_small_regions_are_4_connected() -> None:
    """Pixels touching only at a corner are separate regions: a diagonal of 30 single pixels
    is 30 islands (or holes) of 1 px, all removed, not one region of 30 px kept."""
    i = np.arange(10, 40)
    island = np.zeros((50, 50), bool)
    island[i, i] = True
    out = remove_small_regions(island, 0.01)  # 25 px threshold
    np.testing.assert_array_equal(out, np.zeros_like(island))
    holes = ~island  # a diagonal of 1-px defocused holes inside a focused region
    out = remove_small_regions(holes, 0.01)
    np.testing.assert_array_equal(out, np.ones_like(holes))


def test_small_region_area_is_rounded_up_even_below_a_half_and_lone_pixels_go_at_two() -> None:
    """``ceil(min_region * H * W)``, not the nearest integer: at 0.0101 of 20x20 (4.04 px, so
    5) an island and a hole of 4 px are flipped (rounded to 4 they were kept; the test above,
    at 4.52 px, rounds up either way). And the smallest area that removes anything is 2: at
    2 px (0.005 of 20x20) lone pixels are flipped, at 1 px (0.0025) nothing is."""
    dm, want = _islands_of_4_and_5_and_a_hole_of_4()
    np.testing.assert_array_equal(remove_small_regions(dm, 0.0101), want)
    lone = np.zeros((20, 20), bool)
    lone[:, 10:] = True
    lone[3, 3] = True  # a lone focused pixel
    lone[15, 15] = False  # a lone defocused pixel
    half = np.zeros((20, 20), bool)
    half[:, 10:] = True
    np.testing.assert_array_equal(remove_small_regions(lone, 0.005), half)
    np.testing.assert_array_equal(remove_small_regions(lone, 0.0025), lone)


def _skimage_small_regions(dm: np.ndarray, min_region: float) -> np.ndarray:
    """remove_small_regions as it was up to 0.5.0: skimage's remove_small_objects, then
    remove_small_holes, 4-connected, regions under ceil(min_region * H * W) pixels."""
    import inspect
    import math
    import warnings

    from skimage.morphology import remove_small_holes, remove_small_objects

    area = math.ceil(min_region * dm.size)
    if area <= 1:
        return dm.copy()
    out = dm.astype(bool)
    for fn, old in ((remove_small_objects, "min_size"), (remove_small_holes, "area_threshold")):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Only one label was provided")
            kw = {"max_size": area - 1} if "max_size" in inspect.signature(fn).parameters else {old: area}
            out = fn(out, **kw, connectivity=1)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_small_region_removal_gives_skimages_maps(seed: int) -> None:
    """remove_small_regions labels each class once (1.1-1.7x less CPU on a 24 MP map): the
    same maps as skimage's two calls, on random maps of every density (islands,
    holes at the border, regions of exactly the threshold, a map of one class) and sizes."""
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 90, size=2)
    for density in (0.0, 0.02, 0.3, 0.5, 0.7, 0.98, 1.0):
        noise = rng.random((h, w)) < density
        blobs = ndimage.gaussian_filter(rng.random((h, w)), 2.0) > 0.5  # larger regions too
        for dm in (noise, blobs, noise ^ blobs, noise.T.copy()):
            for min_region in (0.0, 0.002, 0.01, 0.03, 0.2, 0.6):
                np.testing.assert_array_equal(remove_small_regions(dm, min_region),
                                              _skimage_small_regions(dm, min_region))


def _unsure_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 100x100 map (min_region 0.01 = 100 px, unsure_region 0.03 = 300 px): A on the left
    half, B on the right; in B's half an island of A of 2 % (200 px) where the initial net was
    unsure (s0 0.55), one of 2 % where it was confident (s0 0.98), one under 1 % (64 px, s0
    0.99); in A's half a hole of B of 2 % where it was unsure (s0 0.4). Returns the map, s0 and
    the map expected with unsure_region 0.03, unsure_confidence 0.75."""
    dm = np.zeros((100, 100), bool)
    s0 = np.full((100, 100), 0.02)
    dm[:, :50] = True
    s0[:, :50] = 0.98
    dm[5:15, 60:80] = True  # unsure island of A, 200 px
    s0[5:15, 60:80] = 0.55
    dm[40:50, 60:80] = True  # confident island of A, 200 px
    s0[40:50, 60:80] = 0.98
    dm[80:88, 60:68] = True  # island under min_region, 64 px, confident
    s0[80:88, 60:68] = 0.99
    dm[60:70, 10:30] = False  # unsure hole of B, 200 px
    s0[60:70, 10:30] = 0.4
    want = np.zeros((100, 100), bool)
    want[:, :50] = True
    want[40:50, 60:80] = True  # the confident island stays
    return dm, s0, want


def test_unsure_regions_are_removed_and_confident_ones_kept() -> None:
    """``fuse.unsure_region`` 0.03: regions of 2 % whose mean |2 s0 - 1| is under 0.75 (an
    island of A, conf 0.1, and a hole of B, conf 0.2) are flipped, a confident island of 2 %
    (conf 0.96) is kept, and an island under min_region (1 %) goes as today, however confident.
    Without the option (today's rule) both unsure regions stay."""
    from bafusion.fusion.rule import clean_decision, remove_unsure_regions

    dm, s0, want = _unsure_scene()
    on = FusionParams(min_region=0.01, unsure_region=0.03, unsure_confidence=0.75)
    np.testing.assert_array_equal(clean_decision(dm, s0, on), want)
    today = remove_small_regions(dm, 0.01)
    assert today[5:15, 60:80].all() and not today[60:70, 10:30].any()  # kept today: 200 px > 100
    assert not today[80:88, 60:68].any()  # under 1 %: gone today too
    np.testing.assert_array_equal(remove_unsure_regions(today, s0, 0.03, 0.75), want)
    # a stricter level keeps the unsure hole (conf 0.2) and removes the island (conf 0.1)
    strict = remove_unsure_regions(today, s0, 0.03, 0.15)
    assert not strict[5:15, 60:80].any()  # the island (conf 0.1 < 0.15) is removed
    assert not strict[60:70, 10:30].any()  # the hole (conf 0.2 >= 0.15) stays B
    # regions at or above unsure_region (300 px) stay whatever their confidence
    np.testing.assert_array_equal(remove_unsure_regions(today, s0, 0.02, 0.75), today)


def test_unsure_region_off_is_todays_rule_byte_for_byte() -> None:
    """Off (the default, unsure_region 0) and an unsure_region not above min_region give
    exactly ``remove_small_regions``' map, on random maps and scores."""
    from bafusion.fusion.rule import clean_decision

    assert FusionParams().unsure_region == 0
    rng = np.random.default_rng(3)
    dm, s0, _ = _unsure_scene()
    maps = [(dm, s0)] + [(ndimage.gaussian_filter(rng.random((70, 90)), 2.0) > 0.5, rng.random((70, 90)))
                         for _ in range(4)]
    for m, s in maps:
        today = remove_small_regions(m, 0.01)
        for p in (FusionParams(), FusionParams(unsure_region=0.01), FusionParams(unsure_region=0.005)):
            got = clean_decision(m, s, p)
            assert got.dtype == today.dtype and got.tobytes() == today.tobytes()


def test_fuse_images_applies_the_unsure_region_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """``fuse_images`` with ``unsure_region`` builds its decision and fused image by the rule
    (the unsure island and hole of :func:`_unsure_scene` flipped, the confident island kept);
    off, the fused image is today's; ``{"unsure_region": ...}`` as a mapping is accepted."""
    dm, s0, want = _unsure_scene()
    s1 = np.where(dm, 0.9, 0.1).astype(np.float32)
    nets, a, b = _scored_as(monkeypatch, s1, s0)
    on = fuse_images(a, b, nets, P(exposure_match="none", unsure_region=0.03))
    np.testing.assert_array_equal(on.decision, want)
    np.testing.assert_array_equal(on.fused, np.where(want, a, b))
    off = fuse_images(a, b, nets, P(exposure_match="none"))
    np.testing.assert_array_equal(off.decision, remove_small_regions(dm, 0.01))
    assert not np.array_equal(off.decision, on.decision)


def _ring_and_notch_map() -> np.ndarray:
    """A 20x20 map (min_region 0.05: 20 px), A on the left half, B on the right. In A's half a
    hole of B, a 16-px ring (rows 3-7, columns 2-6) around a 9-px island of A: removing the
    island first makes the hole 25 px, kept; removing the hole first leaves A's half whole.
    Across the boundary, a 4-px notch of B in A's half (rows 13-14, columns 8-9) touching a
    4-px island of A in B's half (columns 10-11): they border large regions of both classes."""
    dm = np.zeros((20, 20), bool)
    dm[:, :10] = True
    dm[3:8, 2:7] = False
    dm[4:7, 3:6] = True
    dm[13:15, 8:10] = False
    dm[13:15, 10:12] = True
    return dm


def test_symmetric_small_regions_give_the_swapped_pair_the_complementary_map() -> None:
    """``fuse.symmetric_regions``: islands and holes judged on the same map, so the swapped
    pair's map (``~dm``) gives exactly the complement. The islands-then-holes rule does not:
    on the ring around an island it keeps a 25-px hole of B for (A, B) and none for (B, A).
    The symmetric rule gives the ring and its island to the region around them, and leaves
    the notch and island that border both classes as they were. On random maps of every
    density the symmetric result is the complement for the swapped map, and equal to the
    islands-then-holes one wherever no small island touches a small hole."""
    dm = _ring_and_notch_map()
    seq = remove_small_regions(dm, 0.05)
    assert not np.array_equal(remove_small_regions(~dm, 0.05), ~seq)  # what the option is for
    assert not seq[3:8, 2:7].any()  # islands first: the ring and its island make a 25-px hole, kept
    sym = remove_small_regions(dm, 0.05, symmetric=True)
    np.testing.assert_array_equal(remove_small_regions(~dm, 0.05, symmetric=True), ~sym)
    want = np.zeros((20, 20), bool)
    want[:, :10] = True
    want[13:15, 8:10] = False  # the notch and the island across the boundary: as they were
    want[13:15, 10:12] = True
    np.testing.assert_array_equal(sym, want)
    rng = np.random.default_rng(7)
    differ = 0
    for density in (0.02, 0.3, 0.5, 0.7, 0.98):
        for _ in range(4):
            noise = rng.random((37, 53)) < density
            blobs = ndimage.gaussian_filter(rng.random((37, 53)), 2.0) > 0.5
            for m in (noise, blobs, noise ^ blobs):
                for min_region in (0.0, 0.002, 0.01, 0.05):
                    got = remove_small_regions(m, min_region, symmetric=True)
                    np.testing.assert_array_equal(remove_small_regions(~m, min_region, symmetric=True), ~got)
                    differ += not np.array_equal(got, remove_small_regions(m, min_region))
    assert differ > 0  # the random maps include island-beside-hole cases


def test_symmetric_small_regions_on_a_map_without_touching_small_regions_is_the_usual_map() -> None:
    """Where no small island touches a small hole the two orders agree, and so does the
    symmetric rule: the islands, holes at the border and lone pixels of the other tests."""
    dm = np.zeros((50, 50), bool)
    dm[5:35, 5:35] = True
    dm[15:17, 15:17] = False
    dm[44:46, 44:46] = True
    dm[0, 20:23] = True  # an island at the border
    dm[30:34, 0:2] = False  # a hole at the border
    for min_region in (0.0, 0.0005, 0.01, 0.1):
        np.testing.assert_array_equal(remove_small_regions(dm, min_region, symmetric=True),
                                      remove_small_regions(dm, min_region))
    dm2, want = _islands_of_4_and_5_and_a_hole_of_4()
    np.testing.assert_array_equal(remove_small_regions(dm2, 0.0113, symmetric=True), want)


def test_symmetric_regions_reach_the_rule_and_the_unsure_removal_and_are_off_in_the_paper_preset(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``symmetric_regions`` is off by default and in the paper preset; on, ``fuse_images``
    decides by the symmetric rule (its decision for the ring map of
    :func:`_ring_and_notch_map` is the complement of the swapped map's), the unsure-region
    removal is symmetric too, and ``--symmetric-regions`` / a params file set it."""
    import argparse

    import bafusion.fusion.rule as rule
    from bafusion.cli.fusion import _add_param_args, params_from_args
    from bafusion.config import load_preset
    from bafusion.fusion.rule import remove_unsure_regions

    assert FusionParams().symmetric_regions is False
    assert load_preset("paper")["fuse"]["symmetric_regions"] is False
    dm = _ring_and_notch_map()
    maps = {}
    for swap in (False, True):
        m = ~dm if swap else dm
        s1 = np.where(m, 0.9, 0.1).astype(np.float32)
        monkeypatch.setattr(rule, "decide",
                            lambda ga, gb, nets, params, bar=None, s1=s1: (s1, s1, np.zeros(s1.shape, bool), s1, {}))
        nets = FusionNets(build_model(8), build_model(8), 8, 8, torch.device("cpu"))
        a = np.full((20, 20), 200, np.uint8)
        b = np.full((20, 20), 50, np.uint8)
        for on in (False, True):
            maps[swap, on] = fuse_images(a, b, nets, P(exposure_match="none", min_region=0.05,
                                                       symmetric_regions=on)).decision
    np.testing.assert_array_equal(maps[True, True], ~maps[False, True])
    np.testing.assert_array_equal(maps[False, True], remove_small_regions(dm, 0.05, symmetric=True))
    assert not np.array_equal(maps[True, False], ~maps[False, False])
    # the unsure removal (min_region 0 here: the ring and the island are its candidates)
    s0 = np.full(dm.shape, 0.5)
    got = remove_unsure_regions(dm, s0, 0.05, 0.75, symmetric=True)
    np.testing.assert_array_equal(remove_unsure_regions(~dm, 1 - s0, 0.05, 0.75, symmetric=True), ~got)
    np.testing.assert_array_equal(got, remove_small_regions(dm, 0.05, symmetric=True))
    assert not np.array_equal(remove_unsure_regions(dm, s0, 0.05, 0.75), got)
    ap = argparse.ArgumentParser()
    _add_param_args(ap)
    assert params_from_args(ap.parse_args(["--symmetric-regions"]))[0].symmetric_regions is True
    f = tmp_path / "p.yaml"
    f.write_text("fuse: {symmetric_regions: true}\n")
    assert params_from_args(ap.parse_args(["--params-file", str(f)]))[0].symmetric_regions is True
    assert params_from_args(ap.parse_args(["--params-file", str(f), "--no-symmetric-regions"]))[0].symmetric_regions is False


def test_unsure_region_from_the_command_line_and_set(tmp_path: Path) -> None:
    """``--unsure-region`` / ``--unsure-confidence`` reach the rule (over a params file's
    ``fuse`` section), and ``--set fuse.unsure_region=...`` is read and checked by the schema."""
    import argparse

    from bafusion.cli.fusion import _add_param_args, params_from_args
    from bafusion.config import read_params
    from bafusion.schema import ParamsError

    ap = argparse.ArgumentParser()
    _add_param_args(ap)
    f = tmp_path / "p.yaml"
    f.write_text("fuse: {unsure_region: 0.02, unsure_confidence: 0.5}\n")
    p, _ = params_from_args(ap.parse_args(["--params-file", str(f)]))
    assert (p.unsure_region, p.unsure_confidence) == (0.02, 0.5)
    p, _ = params_from_args(ap.parse_args(["--params-file", str(f), "--unsure-region", "0.03",
                                           "--unsure-confidence", "0.6"]))
    assert (p.unsure_region, p.unsure_confidence) == (0.03, 0.6)
    got = FusionParams.from_params(read_params(f, overrides=["fuse.unsure_region=0.04"]))
    assert (got.unsure_region, got.unsure_confidence) == (0.04, 0.5)
    with pytest.raises(ParamsError, match="fuse.unsure_region"):
        read_params(f, overrides=["fuse.unsure_region=1.5"])


@pytest.mark.parametrize("bad", [{"unsure_region": 1.0}, {"unsure_region": -0.1}, {"unsure_confidence": 0.0},
                                 {"unsure_confidence": 1.5}])
def test_unsure_region_params_are_checked(bad: dict) -> None:
    """The schema's ranges: unsure_region in [0, 1), unsure_confidence in (0, 1]; an error names the key."""
    key = next(iter(bad))
    with pytest.raises(UserError, match=f"fuse.{key}"):
        FusionParams(**bad)


def test_window_mean_reflects_at_the_borders() -> None:
    """Eq. 1 with ``mode="reflect"``: the window is mirrored at the border (a b | b a), so a
    constant map keeps its value at the borders and the corner counts its own pixel 4 times."""
    ones = np.ones((6, 7), np.float32)
    np.testing.assert_array_equal(fusion.window_mean(ones, 2), ones)
    s = np.zeros((5, 5), np.float32)
    s[0, 0] = 1.0
    m = fusion.window_mean(s, 1)
    # the corner's 3x3 window reads rows (0, 0, 1) and columns (0, 0, 1): s[0, 0] four times
    assert m[0, 0] == pytest.approx(4 / 9)
    assert m[0, 1] == pytest.approx(2 / 9) and m[1, 0] == pytest.approx(2 / 9)
    assert m[1, 1] == pytest.approx(1 / 9)


def test_window_mean_reflects_beyond_the_first_pixel() -> None:
    """With l = 1 the window reaches one pixel past the border, where "reflect" (a b | b a),
    "nearest" (a a | a b) and the zero-free "mirror" (b | a b) agree on a corner: the test above
    could not tell them apart. With l = 2 they differ: reflect reads rows and columns
    (1, 0, 0, 1, 2) at the corner, so s[0, 0] counts 2 x 2 = 4 times of 25 (nearest: 9,
    mirror: 1)."""
    s = np.zeros((6, 6), np.float32)
    s[0, 0] = 1.0
    m = fusion.window_mean(s, 2)
    assert m[0, 0] == pytest.approx(4 / 25)
    assert m[0, 1] == pytest.approx(4 / 25) and m[1, 1] == pytest.approx(4 / 25)
    assert m[2, 2] == pytest.approx(1 / 25) and m[0, 2] == pytest.approx(2 / 25)


@pytest.mark.parametrize("shape", [(31, 45), (7, 5), (1, 1)])
def test_odd_and_tiny_sizes(nets: FusionNets, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 256, (2, *shape, 3), dtype=np.uint8)
    for params in (FusionParams(), FusionParams(exact=True), FusionParams(initial_step=1, boundary_mode="dense")):
        res = fuse_images(a, b, nets, params)
        assert res.fused.shape == a.shape and res.decision.shape == shape
        assert np.isfinite(res.score_refined).all()


def test_focal_stack_is_fused_one_into_the_next(nets: FusionNets, scene) -> None:
    a, b, _ = scene
    res = fuse_stack([a, b, b], nets)
    assert len(res) == 2
    two = fuse_images(a, b, nets).fused
    assert np.array_equal(res[0].fused, two)
    assert np.array_equal(res[1].fused, fuse_images(two, b, nets).fused)


def test_fuse_images_refuses_names_that_are_not_two_names(nets: FusionNets, scene) -> None:
    """fuse_images(a, b, nets, names=None) or names=("x",) failed with a raw TypeError /
    IndexError at the size check (rule.py), naming no parameter; a str gave its first two
    letters as the names. Now an InputTypeError naming ``names``; paths are names."""
    from bafusion.errors import InputTypeError

    a, b, _ = scene
    for names in (None, ("x",), ("a", "b", "c"), "ab", ("a", 2)):
        with pytest.raises(InputTypeError, match=r"^names: expected the two sources' names"):
            fuse_images(a, b, nets, names=names)  # type: ignore[arg-type]
    with pytest.raises(UserError, match=r"^right\.png: size 10x10 \(WxH\) differs from 136x120 of left\.png"):
        fuse_images(a, b[:10, :10], nets, names=(Path("left.png"), Path("right.png")))  # type: ignore[arg-type]


def test_a_stack_with_fewer_names_than_shots_names_the_others_by_their_place(nets: FusionNets, scene) -> None:
    """fuse_stack and fuse_stack_joint with fewer names than shots (the chain rule named such a
    shot "image <n>" in the dtype check) failed with IndexError: list index out of range at the
    size check, before any fusion."""
    from bafusion.fusion.stack import fuse_stack_joint

    a, b, _ = scene
    want = fuse_stack([a, b, b], nets)[-1].fused
    assert np.array_equal(fuse_stack([a, b, b], nets, names=["a.png"])[-1].fused, want)
    joint = fuse_stack_joint([a, b, b], nets, names=["a.png"])
    assert np.array_equal(joint.fused, fuse_stack_joint([a, b, b], nets).fused)
    for call in (fuse_stack, fuse_stack_joint):
        with pytest.raises(UserError, match=r"^image 3: size 10x10 \(WxH\) differs from 136x120 of a\.png"):
            call([a, b, b[:10, :10]], nets, names=["a.png", "b.png"])


def test_low_not_below_high_names_where_each_value_came_from(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`fuse --params p.yaml --high 0.5` said "FusionParams: fuse.low, fuse.high: need low < high,
    got low=0.9, high=0.5": an internal class name, and not where the values came from."""
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / name)
    (tmp_path / "p.yaml").write_text("fuse:\n  low: 0.9\n")
    pair = [str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "f.png")]
    for extra, said in ((["--params", str(tmp_path / "p.yaml"), "--high", "0.5"],
                         f"got low=0.9 ({tmp_path / 'p.yaml'}), high=0.5 (--high)"),
                        (["--params-json", '{"low": 0.9}'], "got low=0.9 (--params-json), high=0.8 (default)"),
                        (["--low", "0.9"], "got low=0.9 (--low), high=0.8 (default)")):
        assert cli_main(["fuse", *pair, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"bafusion fuse: error: fuse.low, fuse.high: need low < high, {said}"], err
    with pytest.raises(UserError) as e:
        FusionParams(low=0.9, high=0.1)
    assert str(e.value) == "fuse.low, fuse.high: need low < high, got low=0.9, high=0.1"


def test_auto_boundary_step() -> None:
    assert [fusion.auto_step(p) for p in (4, 12, 32, 48, 64, 128)] == [1, 2, 8, 8, 16, 16]


def test_params_validation() -> None:
    with pytest.raises(UserError, match="low < high"):
        FusionParams(low=0.9, high=0.1)
    with pytest.raises(UserError, match="boundary_step"):
        FusionParams(boundary_step=3)
    with pytest.raises(UserError, match="boundary_mode"):
        FusionParams(boundary_mode="fast")
    with pytest.raises(UserError, match=r"unknown key fuse\.bogus "):
        FusionParams.from_mapping({"l": 3, "bogus": 1})


@pytest.mark.parametrize(("fields", "key"), [({"low": 0.5, "high": 0.5}, "low < high"),
                                            ({"threshold": 0.0}, "fuse.threshold"),
                                            ({"threshold": 1.0}, "fuse.threshold"),
                                            ({"min_region": 1.0}, "fuse.min_region"),
                                            ({"l": -1}, "fuse.l"),
                                            ({"l": 2.5}, "fuse.l")])
def test_params_refuse_the_limits_of_each_range(fields: dict, key: str) -> None:
    """The rule's ranges are open where the schema says so: low == high (an empty Eq. 2 band:
    the boundary net silently never runs), a threshold of 0 or 1 (every pixel to A, or to B),
    min_region 1 (every region flipped) and a negative or fractional l are refused, by the
    class and by a mapping (params.yaml's path). Only low > high was tested, so each of these
    limits could have been moved without a test failing."""
    with pytest.raises(UserError, match=re.escape(key)):
        FusionParams(**fields)
    with pytest.raises(UserError, match=re.escape(key)):
        FusionParams.from_mapping(fields)


def test_mismatched_sizes_name_both(nets: FusionNets) -> None:
    a = np.zeros((20, 30), np.uint8)
    with pytest.raises(InputFileError) as e:
        fuse_images(a, np.zeros((21, 30), np.uint8), nets, names=("left.png", "right.png"))
    msg = str(e.value)
    assert "left.png" in msg and "right.png" in msg and "30x20" in msg and "30x21" in msg


# ---------------------------------------------------------------- command line


def _write_pair(d: Path, scene) -> tuple[Path, Path]:
    a, b, _ = scene
    pa, pb = d / "a.png", d / "b.png"
    Image.fromarray(a).save(pa)
    Image.fromarray(b).save(pb)
    return pa, pb


@pytest.mark.parametrize("no_progress", [False, True])
def test_cli_fuse_says_it_writes_the_maps(tmp_path: Path, model_dir: Path, scene, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str], no_progress: bool) -> None:
    # on a camera-size pair the maps take 20-60 s after the fusing bar, with only the stale
    # "fusing 2 images ..." line on the terminal
    import bafusion.progress

    monkeypatch.setattr(bafusion.progress, "stderr_is_terminal", lambda: True)
    pa, pb = _write_pair(tmp_path, scene)
    out, maps = tmp_path / "f.png", tmp_path / "maps"
    rc = cli_main(["fuse", str(pa), str(pb), "-o", str(out), "--model", str(model_dir), "--save-maps", str(maps),
                   "--device", "cpu", "--l", "6", *(["--no-progress"] if no_progress else [])])
    assert rc == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("bafusion fuse: ")]
    assert lines.pop().startswith(f"bafusion fuse: maps: 9 files in {maps} ")  # last, --no-progress or not
    if no_progress:
        assert lines == []
    else:
        i = lines.index(f"bafusion fuse: writing {out} ...")  # the fused image first, then the maps
        assert lines[i - 1] == "bafusion fuse: fusing 2 images ..." and lines[i + 1] == f"bafusion fuse: writing maps to {maps} ..."


@pytest.mark.parametrize("failing", ["output", "maps"])
def test_cli_fuse_says_what_was_written_when_a_write_fails(tmp_path: Path, model_dir: Path, scene, capsys,
                                                          monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    """``fuse --save-maps`` wrote the maps, then the fused image; a disk that filled up said only
    "No space left on device (writing f.png, maps)": which of them was written, the user could not
    tell (the maps were, the image was not). The image is now written first, and the error says
    what was written and what was not."""
    import errno

    import bafusion.io

    pa, pb = _write_pair(tmp_path, scene)
    out, maps = tmp_path / "f.png", tmp_path / "maps"
    calls = []

    def full_disk(real):
        def write(path, *args, **kw):
            calls.append(Path(path).name)
            if (failing == "output" and Path(path) == out) or (failing == "maps" and len(calls) == 3):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(path, *args, **kw)
        return write

    if failing == "output":
        monkeypatch.setattr(bafusion.io, "write_image", full_disk(bafusion.io.write_image))
    else:
        # the maps are encoded first, then written (bafusion.fusion.maps.write_rendered)
        monkeypatch.setattr(bafusion.io, "write_bytes", full_disk(bafusion.io.write_bytes))
    rc = cli_main(["fuse", str(pa), str(pb), "-o", str(out), "--model", str(model_dir), "--save-maps", str(maps),
                   "--device", "cpu", "--l", "6", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    written = sorted(p.name for p in maps.iterdir()) if maps.is_dir() else []
    if failing == "output":
        assert not out.exists() and written == []
        assert f"bafusion fuse: error: {out}: No space left on device: not written; nothing was written (the maps " \
               "are written after the fused image)" in err, err
    else:
        assert out.is_file() and written == ["f-score-initial.png", "f-score-mean.png"]
        assert (f"bafusion fuse: error: {maps}: No space left on device writing the maps: 2 of 9 map files written "
                f"(f-score-initial.png, f-score-mean.png), the others not; the fused image {out} was written") in err, err


def test_cli_fuse_maps_line_names_the_registered_sources_in_the_same_folder_apart(
        tmp_path: Path, model_dir: Path, scene, capsys) -> None:
    """``--save-maps D --save-registered D``: the maps line's ``f-*.png`` matched the registered
    sources too (11 files for the 9 it counted); it now names them as not maps."""
    pa, pb = _write_pair(tmp_path, scene)
    out, d = tmp_path / "f.png", tmp_path / "d"
    assert cli_main(["fuse", str(pa), str(pb), "-o", str(out), "--model", str(model_dir), "--save-maps", str(d),
                     "--save-registered", str(d), "--device", "cpu", "--l", "6", "--no-progress"]) == 0
    line = next(x for x in capsys.readouterr().err.splitlines() if x.startswith("bafusion fuse: maps: "))
    assert len(list(d.glob("f-*.png"))) == 11
    assert line.startswith(f"bafusion fuse: maps: 9 files in {d} (f-*.png: ") and line.endswith(
        "; f-registered1.png, f-registered2.png: the registered sources, not maps)"), line
    # in another folder they are not named there
    assert cli_main(["fuse", str(pa), str(pb), "-o", str(out), "--model", str(model_dir), "--save-maps", str(d),
                     "--save-registered", str(tmp_path / "r"), "--device", "cpu", "--l", "6", "--no-progress"]) == 0
    assert "registered sources, not maps" not in capsys.readouterr().err


@pytest.mark.parametrize("maps", [False, True])
def test_cli_fuse_registered_write_error_says_the_maps_were_not_written(
        tmp_path: Path, model_dir: Path, scene, capsys, monkeypatch: pytest.MonkeyPatch, maps: bool) -> None:
    """The registered sources are written before the maps: a failing write said only that the
    fused image was written, and left the user to guess about the maps (not written)."""
    import errno

    import bafusion.fusion.batch

    def full_disk(src, names, *, full=True):
        raise OSError(errno.ENOSPC, "No space left on device", str(names[0]))

    monkeypatch.setattr(bafusion.fusion.batch, "write_registered", full_disk)
    pa, pb = _write_pair(tmp_path, scene)
    out, reg = tmp_path / "f.png", tmp_path / "reg"
    rc = cli_main(["fuse", str(pa), str(pb), "-o", str(out), "--model", str(model_dir), "--save-registered", str(reg),
                   *(["--save-maps", str(tmp_path / "maps")] if maps else []), "--device", "cpu", "--l", "6",
                   "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and out.is_file() and not (tmp_path / "maps").exists()
    said = (f"bafusion fuse: error: {reg / 'f-registered1.png'}: No space left on device: the registered source not "
            f"written; the fused image {out} was written")
    assert (said + "; the maps were not (they are written after the registered sources)" if maps
            else said + "\n") in err, err


@pytest.mark.parametrize("shots", [2, 3])
def test_cli_fuse_refuses_map_names_too_long_before_the_fusion(tmp_path: Path, model_dir: Path, scene, capsys,
                                                              monkeypatch: pytest.MonkeyPatch, shots: int) -> None:
    """The maps are named after the output (``<stem>-score-refined.png``, a stack's
    ``<stem>-step01-score-refined.png``): an output name that fits but whose maps' names are
    longer than the 255 bytes a name may have failed with "File name too long" only after the
    fusion, the fused image written. Now refused before the work, naming the longest map."""
    import bafusion.fusion.rule

    pa, pb = _write_pair(tmp_path, scene)
    pc = tmp_path / "c.png"
    pc.write_bytes(pb.read_bytes())
    stem = "f" * (256 - (len("-step01") if shots > 2 else 0) - len("-score-initial.png"))  # its maps' names: 256 bytes
    out, maps = tmp_path / f"{stem}.png", tmp_path / "maps"
    fused = []
    monkeypatch.setattr(bafusion.fusion.rule, "fuse_stack", lambda *a, **k: fused.append(1))  # imported by fuse when it fuses
    rc = cli_main(["fuse", str(pa), str(pb), *([str(pc)] if shots > 2 else []), "-o", str(out), "--model", str(model_dir),
                   "--save-maps", str(maps), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    longest = f"{stem}{'-step01' if shots > 2 else ''}-score-initial.png"
    assert rc == 2 and not fused and not out.exists()
    assert (f"bafusion fuse: error: {maps / longest}: the map file's name is 256 bytes, longer than the 255 a file "
            f"name may have there; the maps are named after the output, {out.name}: give it a shorter name") in err, err



def test_cli_fuse_refuses_registered_names_too_long_before_the_fusion(tmp_path: Path, model_dir: Path, scene, capsys,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """--save-registered names its files after the output (``<stem>-registered2.png``): an output
    name that fits but whose registered names do not failed with "File name too long" only after
    the fusion, the fused image written. Now refused before the work, naming the longest."""
    import bafusion.fusion.rule

    pa, pb = _write_pair(tmp_path, scene)
    stem = "r" * (256 - len("-registered2.png"))  # -registered2.png: 256 bytes
    out, reg = tmp_path / f"{stem}.png", tmp_path / "reg"
    fused = []
    monkeypatch.setattr(bafusion.fusion.rule, "fuse_stack", lambda *a, **k: fused.append(1))
    rc = cli_main(["fuse", str(pa), str(pb), "-o", str(out), "--model", str(model_dir),
                   "--save-registered", str(reg), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and not fused and not out.exists(), err
    assert (f"bafusion fuse: error: {reg / (stem + '-registered2.png')}: the registered source's name is 256 bytes, "
            f"longer than the 255 a file name may have there; the registered sources are named after the output, "
            f"{out.name}: give it a shorter name") in err, err

def test_cli_fuse_writes_output_and_maps(tmp_path: Path, model_dir: Path, scene, capsys) -> None:
    pa, pb = _write_pair(tmp_path, scene)
    out = tmp_path / "f.png"
    rc = cli_main(["fuse", str(pa), str(pb), "-o", str(out), "--model", str(model_dir),
                   "--save-maps", str(tmp_path / "maps"), "--device", "cpu", "--l", "6"])
    assert rc == 0
    f = np.asarray(Image.open(out))
    maps = tmp_path / "maps"
    dm = np.asarray(Image.open(maps / "f-dm.png")) > 127
    a, b, _ = scene
    assert np.array_equal(f[dm], a[dm]) and np.array_equal(f[~dm], b[~dm])
    for key in ("score-initial", "score-refined", "near-boundary", "dm-raw", "diff-gray", "diff-colour", "fig3"):
        assert (maps / f"f-{key}.png").is_file(), key
    diff = np.asarray(Image.open(maps / "f-diff-gray.png"))
    assert diff[~dm].max() == 0 and diff[dm].max() > 0  # F = B where dm = 0
    assert np.asarray(Image.open(maps / "f-diff-colour.png")).shape == f.shape[:2] + (3,)
    assert not list(tmp_path.rglob("*.part")) and not list(tmp_path.rglob(".*.part-*"))
    # ... and says so: fuse printed nothing about the maps it wrote
    err = capsys.readouterr().err
    assert f"bafusion fuse: maps: 9 files in {maps} (f-*.png:" in err and "white = take A" in err, err


def _through(cmap: str, gray: np.ndarray) -> np.ndarray:
    """``gray`` (uint8) through a matplotlib colour map as the maps were always coloured: RGB
    rounded to uint8."""
    import matplotlib

    return np.round(matplotlib.colormaps[cmap](gray / 255.0)[..., :3] * 255.0).astype(np.uint8)


def test_the_colour_difference_map_is_magma_and_jet_in_the_paper_preset(tmp_path: Path) -> None:
    """diff-colour was always matplotlib's jet: no difference (dark blue) and saturation (dark
    red) print as about the same gray, and its red-green middle fails colour-blind readers. The
    colour map is fuse.diff_cmap: magma by default, darkest at 0 and lightest at 255; the paper
    preset sets jet, whose pixels are the ones the maps always had."""
    import dataclasses

    from bafusion.config import load_preset
    from bafusion.fusion.maps import save_maps

    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)  # every gray level once: alpha 1 x |B - 0|
    res = dataclasses.replace(_uniform_result(16, 16, 0.0), fused=np.zeros((16, 16), np.uint8))
    save_maps(tmp_path / "default", "r", res, ramp, ramp, alpha=1.0)
    got = np.asarray(Image.open(tmp_path / "default" / "r-diff-colour.png"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "default" / "r-diff-gray.png")), ramp)
    assert np.array_equal(got, _through("magma", ramp))
    assert tuple(got[0, 0]) == (0, 0, 4) and tuple(got[15, 15]) == (252, 253, 191)  # black ... pale yellow
    light = (got.astype(float) @ [0.299, 0.587, 0.114]).ravel()  # in gray print: lighter every 8 levels
    assert np.all(np.diff(light[::8]) > 0) and light[255] - light[0] > 200, light
    paper = load_preset("paper")["fuse"]["diff_cmap"]
    assert paper == "jet"
    save_maps(tmp_path / "paper", "r", res, ramp, ramp, alpha=1.0, diff_cmap=paper)
    got = np.asarray(Image.open(tmp_path / "paper" / "r-diff-colour.png"))
    assert np.array_equal(got, _through("jet", ramp))
    assert tuple(got[0, 0]) == (0, 0, 128) and tuple(got[8, 0]) == (125, 255, 122) and tuple(got[15, 15]) == (128, 0, 0)


def test_the_map_conversions_of_save_maps_allocate_about_the_map_they_return() -> None:
    """--save-maps converted each map in float64 over the whole image: the colour difference map
    as float64 RGBA (80 bytes a pixel in all), the difference map through six float64 copies,
    each score map through four; on a 12-megapixel pair the maps peaked at 918, 371 and 275 MiB
    more, above the memory --align needs. They now go through tables of the 256 levels (the
    colour and difference maps) or in chunks (the scores); the pixels are the same."""
    import tracemalloc

    from bafusion.fusion.maps import difference_map, map_to_u8, pseudo_colour

    rng = np.random.default_rng(0)
    n = 2000  # above to_gray_u8's table size, as a camera photo is
    score = rng.random((n, n), dtype=np.float32)
    score[::97, ::89] = np.nan
    b, f = (rng.integers(0, 256, (n, n, 3), dtype=np.uint8) for _ in range(2))
    gray = rng.integers(0, 256, (n, n), dtype=np.uint8)
    s64 = np.nan_to_num(score.astype(np.float64), nan=0.0)
    gb, gf = (to_gray_u8(x).astype(np.float64) for x in (b, f))
    cases = [  # (conversion, the pixels as the whole-image float64 formula gives them)
        (lambda: map_to_u8(score), np.clip(np.round(s64 * 255.0), 0, 255).astype(np.uint8)),
        (lambda: difference_map(b, f, 3.3), np.clip(np.round(3.3 * np.abs(gb - gf)), 0, 255).astype(np.uint8)),
        (lambda: pseudo_colour(gray, "jet"), _through("jet", gray)),
    ]
    for convert, want in cases:
        convert()  # to_gray_u8's table and matplotlib's colour map built once, outside the count
        tracemalloc.start()
        try:
            got = convert()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert np.array_equal(got, want)
        assert peak < 6 * n * n, (want.shape, peak / (n * n))  # bytes a pixel: 2.9-4.7 now, 24-80 before


def test_cli_fuse_colours_the_difference_map_with_diff_cmap(tmp_path: Path, model_dir: Path, scene) -> None:
    """fuse.diff_cmap (the paper preset's jet, from --params-file) and --diff-cmap reach the
    map fuse --save-maps writes; an unknown name is refused before any work, naming where it
    was given and colour maps that exist."""
    from bafusion.config import load_preset

    pa, pb = _write_pair(tmp_path, scene)
    paper = tmp_path / "paper.yaml"
    paper.write_text(json.dumps({"fuse": load_preset("paper")["fuse"]}))
    for name, extra, cmap in (("m", [], "magma"), ("j", ["--params-file", str(paper)], "jet"),
                              ("v", ["--params-file", str(paper), "--diff-cmap", "viridis"], "viridis")):
        rc = cli_main(["fuse", str(pa), str(pb), "-o", str(tmp_path / f"{name}.png"), "--model", str(model_dir),
                       "--save-maps", str(tmp_path / "maps"), "--device", "cpu", "--l", "6", "--no-progress", *extra])
        assert rc == 0
        diff = np.asarray(Image.open(tmp_path / "maps" / f"{name}-diff-gray.png"))
        assert diff.max() > 0
        colour = np.asarray(Image.open(tmp_path / "maps" / f"{name}-diff-colour.png"))
        assert np.array_equal(colour, _through(cmap, diff)), cmap


@pytest.mark.parametrize("where", ["flag", "file"])
def test_an_unknown_diff_cmap_is_refused_before_any_work(tmp_path: Path, where: str, nets: FusionNets,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from bafusion.fusion.maps import save_maps

    f = tmp_path / "p.yaml"
    f.write_text("fuse:\n  diff_cmap: jte\n")
    extra = ["--diff-cmap", "jte"] if where == "flag" else ["--params-file", str(f)]
    # no sources, no nets: the colour map is refused first
    rc = cli_main(["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "o.png"),
                   "--model", str(tmp_path / "none"), "--save-maps", str(tmp_path / "maps"), *extra])
    err = capsys.readouterr().err
    assert rc == 2
    option = "--diff-cmap" if where == "flag" else f"{f}: fuse.diff_cmap"
    assert f"{option}: 'jte' is not a matplotlib colour map (did you mean jet? e.g. magma," in err, err
    assert not (tmp_path / "maps").exists() and not (tmp_path / "o.png").exists()
    # from Python too: fuse_set refuses it before it looks at the pairs, save_maps before it writes
    with pytest.raises(UserError, match=r"diff_cmap: 'jte' is not a matplotlib colour map .*magma"):
        fusion.fuse_set(tmp_path / "pairs", tmp_path / "out", nets, diff_cmap="jte")
    with pytest.raises(UserError, match=r"diff_cmap: 'Magma' is not .*did you mean magma"):
        save_maps(tmp_path / "maps", "x", _uniform_result(), np.zeros((60, 80), np.uint8),
                  np.zeros((60, 80), np.uint8), diff_cmap="Magma")
    assert not (tmp_path / "out").exists() and not (tmp_path / "maps").exists()


def _uniform_result(h: int = 60, w: int = 80, value: float = 1.0):
    """A FusionResult whose maps are all ``value`` (1: take A everywhere) and a white fused image."""
    from bafusion.fusion.rule import FusionResult

    s = np.full((h, w), value, np.float32)
    dm = np.full((h, w), value > 0.5)
    return FusionResult(fused=np.full((h, w, 3), 255, np.uint8), score_initial=s, score_mean=s,
                        near_boundary=np.zeros((h, w), bool), score_refined=s, decision_raw=dm, decision=dm)


def test_fig3_frames_every_panel_so_an_all_white_map_shows(tmp_path: Path) -> None:
    # Fig. 3 drew its panels with axis("off") on a white page: a decision map that takes A
    # everywhere (all white) was a blank gap, white edge regions blended into the page
    from bafusion.fusion.maps import figure_maps

    figure_maps(_uniform_result(), tmp_path / "f.png", title="all A")
    g = np.asarray(Image.open(tmp_path / "f.png").convert("L"))
    row = g[g.shape[0] // 2] < 128  # through the middle of the panels
    runs = int(np.count_nonzero(row[1:] & ~row[:-1]) + row[0])
    assert runs >= 8, runs  # a left and a right edge for each of the four panels


def test_fig3_says_what_its_grays_mean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the score panels had no scale and the decision map did not say which source white takes
    import bafusion.fusion.maps as maps

    figs = []
    monkeypatch.setattr(maps, "figure_bytes", lambda fig: figs.append(fig) or b"")
    maps.figure_maps(_uniform_result(), tmp_path / "f.png")
    fig = figs[0]
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == list(maps.FIG3_PANELS), titles
    assert "white = A" in titles[2]
    every = [*fig.axes, *(child for ax in fig.axes for child in ax.child_axes)]
    labels = [ax.get_xlabel() or ax.get_ylabel() for ax in every]
    assert labels.count(maps.SCORE_LABEL) == 2, labels  # a colour bar for each score panel
    bars = [ax for ax in every if (ax.get_xlabel() or ax.get_ylabel()) == maps.SCORE_LABEL]
    assert all(ax.get_xlim() == (0.0, 1.0) or ax.get_ylim() == (0.0, 1.0) for ax in bars)


def test_fig3_of_a_camera_size_pair_has_readable_panels(tmp_path: Path) -> None:
    from bafusion.fusion.maps import figure_maps

    figure_maps(_uniform_result(1950 // 10, 2600 // 10), tmp_path / "small.png")
    w, h = Image.open(tmp_path / "small.png").size
    assert w <= 1400 and h <= 500, (w, h)  # a small pair: one row of four
    figure_maps(_uniform_result(1950, 2600), tmp_path / "big.png")
    w, h = Image.open(tmp_path / "big.png").size
    assert w <= 1600 and h >= 900, (w, h)  # 2 x 2: panels of about 600 px, not 300


def test_fig3_shows_a_one_pixel_column_and_row_of_a_map_it_shrinks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Fig. 3 drew a 520 px map into a ~310 px panel nearest-neighbour: every k-th column was
    # kept, and a 1-px column of A in the decision map (and the score maps, the fused image) was
    # missing from all four panels; the row beside it happened to survive. Shrunk maps are
    # anti-aliased: the thin column and row both show, dimmed, and a line says they are shrunk.
    import bafusion.fusion.maps as maps
    from bafusion.fusion.rule import FusionResult

    dm = np.zeros((520, 520), bool)
    dm[:, 261] = True
    dm[301, :] = True
    s = dm.astype(np.float32)
    res = FusionResult(fused=dm.astype(np.uint8) * 255, score_initial=s, score_mean=s, near_boundary=dm,
                       score_refined=s, decision_raw=dm, decision=dm)
    renders = record_renders(monkeypatch)
    maps.figure_maps(res, tmp_path / "f.png", title="thin")
    gray, boxes = renders[0]
    assert len(boxes) == 4 and all(right - left < 400 for left, _, right, _ in boxes), boxes  # shrunk
    shown = [lit_lines(gray, box) for box in boxes]
    assert shown == [(1, 1)] * 4, shown  # the column and the row in each panel
    maps.figure_maps(res, tmp_path / "g.png", title="thin")
    assert (tmp_path / "f.png").read_bytes() == (tmp_path / "g.png").read_bytes()  # deterministic
    # a map drawn at its size or larger stays sharp: the column is one white block, nothing dimmed
    small = FusionResult(fused=dm[:60, :80].astype(np.uint8) * 255, score_initial=s[:60, :80], score_mean=s[:60, :80],
                         near_boundary=dm[:60, :80], score_refined=s[:60, :80], decision_raw=dm[:60, :80],
                         decision=dm[:60, :80])
    figs = []
    monkeypatch.setattr(maps, "figure_bytes", lambda fig: figs.append(fig) or b"")
    maps.figure_maps(small, tmp_path / "h.png")
    assert {im.get_interpolation() for ax in figs[0].axes for im in ax.get_images()} == {"nearest"}
    assert not figs[0]._supxlabel  # no line about shrinking


def test_a_shrunk_figure_resamples_each_image_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fig. 3 and the difference figures were laid out up to four times to place the line under a
    shrunk figure, and each layout resampled every image onto its panel: Fig. 3 of a 12-megapixel
    pair took 19-21 s instead of 13-15 s. The layout runs with the images hidden; each image is
    resampled once, when the figure is saved (the bytes are the same)."""
    import matplotlib.image

    import bafusion.fusion.maps as maps
    from bafusion.evaluation.figures import figure_differences
    from bafusion.fusion.rule import FusionResult

    real = matplotlib.image.AxesImage.make_image
    made: dict[int, int] = {}

    def counting(self, *args, **kwargs):
        made[id(self)] = made.get(id(self), 0) + 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.image.AxesImage, "make_image", counting)
    dm = np.zeros((520, 520), bool)
    dm[:, 261] = True
    s = dm.astype(np.float32)
    res = FusionResult(fused=dm.astype(np.uint8) * 255, score_initial=s, score_mean=s, near_boundary=dm,
                       score_refined=s, decision_raw=dm, decision=dm)
    maps.figure_maps(res, tmp_path / "f.png", title="once")
    assert sorted(made.values()) == [1] * 4, made  # four panels, each resampled once
    made.clear()
    figure_differences(dm.astype(np.uint8), {"x": dm.astype(np.uint8) * 30, "y": dm.astype(np.uint8)}, tmp_path / "d.png",
                       a=np.zeros((520, 520), np.uint8))
    assert sorted(made.values()) == [1] * 4, made  # two methods, |B - F| and |A - F|


def test_fig3_of_a_camera_size_pair_draws_its_panels_reduced_in_little_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fig. 3 handed each full-size map to matplotlib, which made full-size RGBA copies to
    resample it onto a ~640 px panel: ``fuse --save-maps`` of a 12-megapixel pair peaked at
    +907 MiB over ``fuse`` (1773 against 866 MiB), this 7.7-megapixel figure's numpy arrays at
    471-502 MiB (tracemalloc, two runs). A map at least 4x its panel is now area-averaged by a whole factor to
    2x the panel first: 114 MiB here. The figure still shows a 1-px column of A in every panel
    (the decision map averaged as gray, not through its two-step key, which drew it black), and
    says the scale of the full-size map, not of the array drawn."""
    import tracemalloc

    import bafusion.fusion.maps as maps
    from bafusion.fusion.rule import FusionResult

    h, w = 2400, 3200
    dm = np.zeros((h, w), bool)
    dm[:, 1601] = True
    s = dm.astype(np.float32)
    res = FusionResult(fused=dm.astype(np.uint8) * 255, score_initial=s, score_mean=s, near_boundary=dm,
                       score_refined=s, decision_raw=dm, decision=dm)
    renders = record_renders(monkeypatch)
    shapes, lines = [], []
    real = maps.draw_images_to_scale

    def drawing(fig, **kw):
        low = real(fig, **kw)
        shapes.extend(im.get_array().shape[:2] for ax in fig.axes for im in ax.get_images())
        lines.append(" ".join(fig._supxlabel.get_text().split()))
        return low

    monkeypatch.setattr(maps, "draw_images_to_scale", drawing)
    tracemalloc.start()
    try:
        maps.figure_maps(res, tmp_path / "f.png")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200 * 2**20, f"{peak / 2**20:.0f} MiB"
    assert shapes == [(h // 2, w // 2)] * 4, shapes  # drawn reduced by 2 (~5x its panel)
    gray, boxes = renders[0]
    assert [lit_lines(gray, box, level=20) for box in boxes] == [(1, 0)] * 4  # the column in each panel
    scale = min(min((r - left) / w, (b - top) / h) for left, top, r, b in boxes)
    said = re.search(r"shrunk to ([0-9.]+) %", lines[0])
    assert said and abs(float(said[1]) - 100.0 * scale) < 0.3, (said, scale)


def test_area_reduce_averages_every_pixel_once() -> None:
    """:func:`bafusion.fusion.maps.area_reduce`: block means, the last row and column of blocks
    over the pixels there are, NaN as 0, integers rounded; factor 1 keeps the values."""
    from bafusion.fusion.maps import area_reduce, reduce_factor

    img = np.arange(35, dtype=np.float64).reshape(5, 7)
    img[0, 0] = np.nan
    out = area_reduce(img, 3, np.float64)
    want = np.array([[np.nansum(img[r:r + 3, c:c + 3]) / img[r:r + 3, c:c + 3].size for c in range(0, 7, 3)]
                     for r in range(0, 5, 3)])
    assert out.shape == (2, 3) and np.allclose(out, want)
    rgb = np.stack([np.full((4, 4), 1, np.uint8), np.full((4, 4), 254, np.uint8), np.eye(4, dtype=np.uint8) * 255], -1)
    assert area_reduce(rgb, 2, np.uint8).tolist() == [[[1, 254, 128], [1, 254, 0]], [[1, 254, 0], [1, 254, 128]]]
    assert np.array_equal(area_reduce(img, 1, np.float64), np.nan_to_num(img))
    assert reduce_factor((3072, 4096), (480, 640)) == 3 and reduce_factor((1200, 1600), (480, 640)) == 1


@pytest.mark.parametrize("scale", [0.99996, 0.9995, 0.99, 0.975, 0.9524, 0.952, 0.9, 0.5, 0.158, 0.1, 0.03, 0.004])
def test_the_line_under_a_shrunk_figure_says_its_scale_and_the_detail_it_dims_in_words_that_hold(scale: float) -> None:
    """Drawn at 95.2 % to 100 % the line read 'a detail thinner than 1 image pixels shows
    dimmed' (1 / scale to 2 digits), a detail that does not exist; from 99.95 % it read
    'shrunk to 100 %', and at 0.4 % an exponent ('2.5e+02 image pixels'). The percentage is
    under 100, the thickness is 1 / scale to 5 % in plain digits, or '1-pixel details'."""
    import re

    import bafusion.fusion.maps as maps

    fig = maps._figure(figsize=(1.0, 1.0), dpi=100)  # 100 x 100 px; the image's panel scale x that
    ax = fig.add_axes((0.0, 0.0, scale, scale))
    ax.imshow(np.zeros((100, 100)), cmap="gray", vmin=0, vmax=1)
    low = maps.draw_images_to_scale(fig)
    text = " ".join(fig._supxlabel.get_text().split())
    assert abs(low - scale) < 1e-9, low
    percent = re.fullmatch(r"shrunk to ([0-9.]+) % of the image size, anti-aliased: (.*)", text)
    assert percent, text
    assert float(percent[1]) < 100.0 and abs(float(percent[1]) - 100.0 * scale) <= 0.005 * 100.0 * scale, text
    thicker = re.fullmatch(r"a detail thinner than ([0-9.]+) image pixels (shows dimmed, not dropped|is averaged "
                           r"away: .* may not be visible at this size)", percent[2])
    if 1.0 / scale < 1.05:  # rounds to 1 pixel: no thinner detail to speak of
        assert percent[2] == "1-pixel details show dimmed, not dropped", text
    else:
        assert thicker and float(thicker[1]) > 1.0 and abs(float(thicker[1]) * scale - 1.0) < 0.05, text
        assert thicker[2].startswith("shows") == (scale * scale >= maps.VISIBLE_CONTRAST), text


def _shrink_line(scale: float, **kw) -> str:
    """The line under a 100 x 100 px figure whose one image is drawn at ``scale``."""
    import bafusion.fusion.maps as maps

    fig = maps._figure(figsize=(1.0, 1.0), dpi=100)
    ax = fig.add_axes((0.0, 0.0, scale, scale))
    ax.imshow(np.zeros((100, 100)), cmap="gray", vmin=0, vmax=1)
    maps.draw_images_to_scale(fig, **kw)
    text = " ".join(fig._supxlabel.get_text().split())
    return text


def test_the_line_under_a_shrunk_figure_says_when_thin_details_may_not_be_visible(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrunk to 16 % (a camera photo's Fig. 3) a lone white pixel keeps 1-2 % of its contrast
    and a 1-px line 9-15 % (benchmarks/bench_figures.py): invisible, yet the line under the
    figure said '... shows dimmed, not dropped' at every scale. At 60 % (a 520 px pair's Fig. 3:
    39-59 % and 16-58 %) it still says so; at 16 % it says how much a thin detail keeps, that
    it may not be visible, and where the maps are at full size."""
    import bafusion.fusion.maps as maps
    from bafusion.fusion.rule import FusionResult

    where = "the maps at full size are x-dm.png beside this figure"
    assert _shrink_line(0.6, full_size=where) == ("shrunk to 60 % of the image size, anti-aliased: a detail thinner "
                                                  "than 1.7 image pixels shows dimmed, not dropped")
    assert _shrink_line(0.157, full_size=where) == (
        "shrunk to 15.7 % of the image size, anti-aliased: a detail thinner than 6.4 image pixels is averaged away: "
        "a 1-pixel line keeps about 16 % of its contrast, a lone pixel about 2 %, so thin details may not be "
        f"visible at this size; {where}")
    assert _shrink_line(0.06).endswith("a 1-pixel line keeps about 6 % of its contrast, a lone pixel under 1 %, so "
                                       "thin details may not be visible at this size")  # no full_size: no pointer
    # Fig. 3 of a map shrunk that much names the full-size maps save_maps writes beside it
    figs = []
    monkeypatch.setattr(maps, "figure_bytes", lambda fig: figs.append(fig) or b"")
    dm = np.zeros((1000, 1000), bool)
    s = dm.astype(np.float32)
    res = FusionResult(fused=np.zeros((1000, 1000), np.uint8), score_initial=s, score_mean=s, near_boundary=dm,
                       score_refined=s, decision_raw=dm, decision=dm)
    maps.save_maps(tmp_path, "cam", res, res.fused, res.fused)
    line = " ".join(figs[0]._supxlabel.get_text().split())
    assert "so thin details may not be visible at this size; the maps at full size are cam-score-initial.png, " \
           "cam-score-refined.png and cam-dm.png beside this figure; gray in a decision map" in line, line
    assert all((tmp_path / f"cam-{k}.png").is_file() for k in ("score-initial", "score-refined", "dm"))


def test_fig3_of_a_tall_or_long_pair_stays_a_bounded_size(tmp_path: Path) -> None:
    # Fig. 3's panels had a fixed width and the pair's height: a 64 x 1200 (W x H) pair gave a
    # 1280 x 24180 px figure (17 s, 0.7 GB more), a 24 x 3000 strip one of 205 megapixels that
    # Pillow refuses to open. Each panel fits a box limited in both directions.
    from bafusion.fusion.maps import figure_maps

    figure_maps(_uniform_result(1200, 64), tmp_path / "tall.png")
    w, h = Image.open(tmp_path / "tall.png").size
    assert w <= 1400 and h <= 2300, (w, h)
    figure_maps(_uniform_result(3000, 24), tmp_path / "tower.png")
    w, h = Image.open(tmp_path / "tower.png").size
    assert w <= 1400 and h <= 2300, (w, h)
    figure_maps(_uniform_result(600, 400), tmp_path / "portrait.png")  # 2:3: one row of four, as high as allowed
    w, h = Image.open(tmp_path / "portrait.png").size
    assert w <= 1400 and 480 <= h <= 700, (w, h)


def test_fused_report_caption_names_the_panels_of_fig3() -> None:
    # the Snakemake report's caption listed six panels (sources, window mean, ...) of a
    # figure that has four
    from bafusion.fusion.maps import FIG3_PANELS

    caption = " ".join((Path(__file__).parents[1] / "workflow" / "report" / "fused.rst").read_text().split())
    for title in FIG3_PANELS:
        assert title in caption, title
    assert f"{len(FIG3_PANELS)} framed panels" in caption.replace("four", "4") and "the sources" not in caption


def test_readme_lists_the_map_files(tmp_path: Path) -> None:
    from bafusion.fusion.maps import MAP_KEYS
    from bafusion.fusion.stack import STACK_MAP_KEYS

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for key in (*MAP_KEYS, *STACK_MAP_KEYS):
        assert f"`<stem>-{key}.png`" in readme, key


def test_cli_errors_leave_no_output(tmp_path: Path, model_dir: Path, scene, capsys) -> None:
    pa, pb = _write_pair(tmp_path, scene)
    out = tmp_path / "f.png"
    small = tmp_path / "small.png"
    Image.fromarray(scene[0][:50, :60]).save(small)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    wrong = tmp_path / "wrong"
    save_model(build_model(14), wrong / "initial.pt", {"patch": PATCH})
    (wrong / "boundary.pt").write_bytes((model_dir / "initial.pt").read_bytes())
    (wrong / "boundary.json").write_text(json.dumps({"arch": build_model(14).spec.to_dict(), "patch": PATCH}))
    cases = [
        ([str(pa), str(small)], ["--model", str(model_dir)], ["small.png", "a.png", "60x50"]),
        ([str(pa), str(bad)], ["--model", str(model_dir)], ["bad.png", "unreadable"]),
        ([str(pa), str(tmp_path / "nope.png")], ["--model", str(model_dir)], ["nope.png", "not found"]),
        ([str(pa), str(pb)], ["--model", str(tmp_path / "missing")], ["missing", "snakemake"]),
        ([str(pa), str(pb)], ["--model", str(wrong)], ["boundary.pt"]),
    ]
    for images, extra, words in cases:
        rc = cli_main(["fuse", *images, "-o", str(out), "--device", "cpu", *extra])
        err = capsys.readouterr().err
        assert rc == 2, err
        for w in words:
            assert w in err, (w, err)
        assert not out.exists() and not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*.part-*"))


def test_cli_without_models_says_how_to_get_them(tmp_path: Path, scene, monkeypatch, capsys) -> None:
    pa, pb = _write_pair(tmp_path, scene)
    monkeypatch.setattr(fusion.models, "default_model_dirs", lambda: [tmp_path / "models" / "default", tmp_path / "data" / "models"])
    rc = cli_main(["fuse", str(pa), str(pb), "-o", str(tmp_path / "f.png")])
    err = capsys.readouterr().err
    assert rc == 2 and "snakemake --cores 2 train_boundary" in err and "dvc repro" in err
    assert not (tmp_path / "f.png").exists()


def test_cli_fuse_set_reports_accuracy(tmp_path: Path, model_dir: Path) -> None:
    pairs = tmp_path / "testset"
    _write_test_set(pairs, ["p1", "p2"], np.random.default_rng(5), 80, 88, dm=True, wrap=True)
    params = tmp_path / "params.yaml"
    params.write_text("fuse:\n  l: 6\n  min_region: 0.01\n  device: cpu\n  alpha: 10\n  flat_level: 0\n  working_min: 0\n")
    out = tmp_path / "fused"
    rc = cli_main(["fuse-set", "--pairs", str(pairs), "--models", str(model_dir), "--out", str(out),
                   "--params-file", str(params), "--report", str(tmp_path / "fuse.json")])
    assert rc == 0
    rep = json.loads((out / "accuracy.json").read_text())
    assert rep["params"]["l"] == 6
    assert set(rep["pairs"]) == {"p1", "p2"}
    assert all(0.9 <= e["dm_accuracy"] <= 1 for e in rep["pairs"].values())
    # The DVC metrics file: the means over the pairs, numbers only (no settings, no paths).
    metrics = json.loads((tmp_path / "fuse.json").read_text())
    assert metrics["pairs"] == 2 and "params" not in metrics and "models" not in metrics
    assert all(isinstance(v, (int, float)) for v in metrics.values())
    assert metrics["mean_dm_accuracy"] == pytest.approx(np.mean([e["dm_accuracy"] for e in rep["pairs"].values()]))
    assert metrics["mean_band8_accuracy"] == pytest.approx(np.mean([e["band8_accuracy"] for e in rep["pairs"].values()]))
    assert (out / "p1.png").is_file() and (out / "maps" / "p2-fig3.png").is_file()


def test_cli_fuse_set_refuses_bad_indexes_before_work_and_writes_strict_json(
    tmp_path: Path, model_dir: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listed pair without its shots stopped the run after the pairs before it were fused
    (and no report); an entry without a name was a KeyError; '../x' wrote outside --out; a
    true map without a boundary wrote NaN (invalid JSON) into accuracy.json."""
    pairs = tmp_path / "testset"
    pairs.mkdir()
    rng = np.random.default_rng(5)
    a, b, m = composite(rng, 80, 88, rgb=True)
    Image.fromarray(a).save(pairs / "p1-A.png")
    Image.fromarray(b).save(pairs / "p1-B.png")
    Image.fromarray(np.full(m.shape, 255, np.uint8)).save(pairs / "p1-dm.png")  # all focused: no band
    out = tmp_path / "fused"
    base = ["fuse-set", "--pairs", str(pairs), "--models", str(model_dir), "--out", str(out), "--device", "cpu"]
    for index, words in [(["p1", "p3"], "listed pairs lack their shots: "),
                         ({"pairs": [{"nm": "p1"}]}, "pair 1: expected a name"),
                         (["../../esc"], "'../../esc' is not a plain name"),
                         (["p1", "p1"], "pair 'p1' is listed twice")]:
        (pairs / "index.json").write_text(json.dumps(index))
        assert cli_main(base) == 2
        err = capsys.readouterr().err
        assert "index.json" in err and words in err and "Traceback" not in err, err
        assert not out.exists() and not (tmp_path.parent / "esc.png").exists()
    (pairs / "index.json").write_text(json.dumps(["p1"]))
    assert cli_main(base) == 0
    text = (out / "accuracy.json").read_text()
    assert "NaN" not in text
    entry = json.loads(text)["pairs"]["p1"]
    assert entry["band8_accuracy"] is None and entry["dm_accuracy"] >= 0

    # a truth map of another size was found after its pair was fused (the pairs before it lost),
    # and called a "source"; a B of another size likewise
    Image.fromarray(a).save(pairs / "p0-A.png")
    Image.fromarray(b).save(pairs / "p0-B.png")
    Image.fromarray(np.zeros((40, 44), np.uint8)).save(pairs / "p2-dm.png")
    Image.fromarray(a).save(pairs / "p2-A.png")
    Image.fromarray(b).save(pairs / "p2-B.png")
    (pairs / "index.json").write_text(json.dumps(["p0", "p2"]))
    calls = []
    from bafusion.fusion import testset as ts

    real = ts._fuse_pair
    monkeypatch.setattr(ts, "_fuse_pair", lambda *x, **k: calls.append(1) or real(*x, **k))
    assert cli_main(base) == 2
    err = capsys.readouterr().err
    assert "p2-dm.png: truth map size 44x40 (WxH) differs from 88x80" in err and calls == [], err
    Image.fromarray(b[:-1]).save(pairs / "p2-B.png")
    (pairs / "p2-dm.png").unlink()
    assert cli_main(base) == 2
    assert "p2-B.png: size 88x79 (WxH) differs from 88x80" in capsys.readouterr().err and calls == []


def test_cli_fuse_set_refuses_a_damaged_shot_or_truth_before_any_pair_is_fused(
    tmp_path: Path, model_dir: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A truncated or damaged PNG (a shot, a true decision map, an all-in-focus truth) was found
    only on reaching its pair: the pairs fused before it were lost with the run (its fresh
    folder is dropped, --out not written). Every listed file is decoded before any fusion now,
    and an all-in-focus truth of another size is refused then too (it was, after its pair)."""
    from bafusion.fusion import testset as ts

    pairs = tmp_path / "testset"
    _write_test_set(pairs, ["p1", "p2"], np.random.default_rng(11), dm=True, truth=True)
    out = tmp_path / "fused"
    base = ["fuse-set", "--pairs", str(pairs), "--models", str(model_dir), "--out", str(out), "--device", "cpu"]
    calls = []
    real = ts._fuse_pair
    monkeypatch.setattr(ts, "_fuse_pair", lambda *x, **k: calls.append(1) or real(*x, **k))
    for damaged in ("p2-B.png", "p2-dm.png", "p2-truth.png"):
        good = (pairs / damaged).read_bytes()
        (pairs / damaged).write_bytes(good[: len(good) * 2 // 3])  # cut short, as a card or copy can leave it
        assert cli_main(base) == 2
        err = capsys.readouterr().err
        assert f"{damaged}: unreadable image" in err and "truncated" in err and "Traceback" not in err, err
        assert calls == [] and not out.exists()
        (pairs / damaged).write_bytes(good)
    Image.fromarray(np.zeros((40, 44, 3), np.uint8)).save(pairs / "p2-truth.png")
    assert cli_main(base) == 2
    assert "p2-truth.png: all-in-focus truth size 44x40 (WxH) differs from 56x48" in capsys.readouterr().err
    assert calls == []


def test_cli_fuse_set_refuses_map_names_too_long_before_any_pair_is_fused(
    tmp_path: Path, model_dir: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fuse-set names each pair's maps after it (``maps/<pair>-score-initial.png``): a pair whose
    shots' names fit but whose maps' names are longer than the 255 bytes a name may have failed
    with "File name too long" after its fusion (the pairs fused before it lost with the run's
    folder). Refused before any work now, as ``fuse --save-maps`` refuses its maps' names."""
    from bafusion.fusion import testset as ts

    pairs = tmp_path / "testset"
    long_name = "p" * (256 - len("-score-initial.png"))  # its shots' names 244 bytes, its maps' 256
    _write_test_set(pairs, ["p1", long_name], np.random.default_rng(11))
    out = tmp_path / "fused"
    calls = []
    monkeypatch.setattr(ts, "_fuse_pair", lambda *x, **k: calls.append(1))
    rc = cli_main(["fuse-set", "--pairs", str(pairs), "--models", str(model_dir), "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and calls == [] and not out.exists(), err
    assert (f"{out / 'maps' / (long_name + '-score-initial.png')}: the map file's name is 256 bytes, longer than the "
            f"255 a file name may have there; the maps are named after the pair, {long_name!r} of "
            f"{pairs / 'index.json'}: give it a shorter name") in err, err
    assert "Traceback" not in err


def test_cli_fuse_set_killed_leaves_the_earlier_results_whole(
    tmp_path: Path, model_dir: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fuse-set wrote pair by pair into --out: a run killed half-way left its first pairs
    beside the earlier run's results and accuracy.json. It writes a fresh folder now, which
    replaces --out at the end; a test set inside --out is refused (it would be deleted)."""
    import bafusion.fusion.testset as testset

    rng = np.random.default_rng(5)
    for sub, names in (("first", ["p1"]), ("second", ["q1", "q2"])):
        _write_test_set(tmp_path / sub, names, rng, 48, 48, rgb=False)
    out = tmp_path / "fused"
    base = ["fuse-set", "--models", str(model_dir), "--out", str(out), "--device", "cpu"]
    assert cli_main([*base, "--pairs", str(tmp_path / "first")]) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert Path("p1.png") in before and Path("accuracy.json") in before
    fused = testset._fuse_pair
    calls = []

    def killed_at_the_second(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return fused(*args, **kwargs)

    monkeypatch.setattr(testset, "_fuse_pair", killed_at_the_second)
    assert cli_main([*base, "--pairs", str(tmp_path / "second")]) == 130
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first", "fused", "second"]
    capsys.readouterr()
    # the test set inside the folder that is replaced: refused before any work
    (tmp_path / "first").rename(out / "pairs")
    assert cli_main([*base, "--pairs", str(out / "pairs")]) == 2
    assert "is replaced whole and holds the input" in capsys.readouterr().err
    assert (out / "pairs" / "index.json").is_file()


def test_cli_fuse_set_on_an_empty_test_set_fuses_nothing(tmp_path: Path, model_dir: Path) -> None:
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    (pairs / "index.json").write_text(json.dumps({"pairs": []}))
    out = tmp_path / "fused"
    rc = cli_main(["fuse-set", "--pairs", str(pairs), "--models", str(model_dir), "--out", str(out),
                   "--report", str(tmp_path / "fuse.json")])
    assert rc == 0
    rep = json.loads((tmp_path / "fuse.json").read_text())
    assert rep == {"pairs": 0}


def test_cli_fuse_set_says_out_was_written_when_its_report_cannot_be(tmp_path: Path, model_dir: Path, capsys,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """--report is written after --out is replaced: a full disk there said only "fuse.json: No
    space left on device", as if nothing had been written. It now says --out was written whole."""
    import errno
    import os

    pairs, out, report = tmp_path / "pairs", tmp_path / "fused", tmp_path / "fuse.json"
    pairs.mkdir()
    (pairs / "index.json").write_text(json.dumps({"pairs": []}))
    real = Path.write_text

    def full_disk(self, *args, **kwargs):
        if self.name == report.name:  # the temporary file of atomic_file, named as the output
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    rc = cli_main(["fuse-set", "--pairs", str(pairs), "--models", str(model_dir), "--out", str(out),
                   "--report", str(report)])
    err = capsys.readouterr().err
    assert rc == 2 and (out / "accuracy.json").is_file() and not report.exists()
    assert (f"bafusion fuse-set: error: {report}: {os.strerror(errno.ENOSPC)}: the report not written; {out} was "
            "written whole (the fused images, maps/ and accuracy.json)") in err, err


def test_cli_fuse_set_reruns_with_its_report_inside_out(tmp_path: Path, model_dir: Path, capsys) -> None:
    """A --report inside --out made the rerun refuse the folder ('holds files this command did
    not write: fuse.json'): the report is fuse-set's own, written after --out is replaced."""
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    (pairs / "index.json").write_text(json.dumps({"pairs": []}))
    out = tmp_path / "fused"
    argv = ["fuse-set", "--pairs", str(pairs), "--models", str(model_dir), "--out", str(out),
            "--report", str(out / "fuse.json")]
    for _ in range(2):
        assert cli_main(argv) == 0, capsys.readouterr().err
        assert json.loads((out / "fuse.json").read_text()) == {"pairs": 0}
        assert (out / "accuracy.json").is_file()
    (out / "notes.txt").write_text("mine")
    assert cli_main(argv) == 2
    assert "holds files this command did not write: notes.txt;" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"


def test_dense_pass_equals_the_context_view_of_training() -> None:
    """With a margin, the dense score of a pixel on the 4-px grid is the in-context logit that
    context-consistency training optimises (model.context_logits on the patch with that many
    pixels of reflect-padded surroundings), whatever the box layout (whole image or tiles)."""
    from bafusion.fusion.scoring import _pad
    from bafusion.nets.model import context_logits

    torch.manual_seed(0)
    net = build_model(8).eval()
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (2, 44, 36), dtype=np.uint8)
    p, m = 16, 16
    whole = score_dense(net, a, b, p, step=4, margin=m)
    tiled = score_dense(net, a, b, p, step=4, margin=m, mask=np.ones(a.shape, bool), tile=8)
    padded = np.stack([_pad(a, p, margin=m), _pad(b, p, margin=m)]).astype(np.float32) / 255
    rows, cols = np.arange(0, 44, 4), np.arange(0, 36, 4)
    crops = np.stack([padded[:, r : r + p + 2 * m, c : c + p + 2 * m] for r in rows for c in cols])
    with torch.no_grad():
        z = context_logits(net, torch.from_numpy(crops), m)
    want = torch.sigmoid(z[:, 1] - z[:, 0]).numpy().reshape(len(rows), len(cols))
    np.testing.assert_allclose(whole[::4, ::4], want, atol=1e-5)
    np.testing.assert_allclose(tiled[::4, ::4], want, atol=1e-5)
    iso = net(torch.from_numpy(crops[:, :, m:-m, m:-m]))  # the forward with context returns both views
    both = net(torch.from_numpy(crops), m)
    torch.testing.assert_close(both[: len(crops)], iso, atol=1e-5, rtol=0)
    torch.testing.assert_close(both[len(crops):], z, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="multiple"):
        context_logits(net, torch.from_numpy(crops), 6)


def _calibrated_net(depth: int) -> nn.Module:
    """A random ResNet whose BatchNorm statistics come from one random batch (so that its
    logits stay moderate and its probabilities unsaturated, even at depth 56), folded as
    fusion folds it."""
    from bafusion.nets.model import fold_batchnorm

    torch.manual_seed(depth)
    net = build_model(depth)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 1.0  # the running statistics become the batch's
    with torch.no_grad():
        net.train()(torch.rand(16, 2, 32, 32))
    return fold_batchnorm(net.eval())


def _previous_dense_whole_image(net, a, b, p, step, margin):
    """The dense pass of the whole image in one box as it was before box edges got the
    trunk's reach of context (a frozen copy of the earlier _dense_box on the box of the whole
    image): the reference that single-box scores must keep, byte for byte."""
    import torch.nn.functional as F

    from bafusion.fusion.scoring import _interp_axis, _pair_tensor

    x = _pair_tensor(a, b, p, torch.device("cpu"), margin)
    h, w = a.shape
    k, mc, m = p // 4, margin // 4, 4 // step
    gh, gw = -(-(h - 1) // step) + 1, -(-(w - 1) // step) + 1
    crop = x[:, :, : step * (gh - 1) + p + 4 + 2 * margin, : step * (gw - 1) + p + 4 + 2 * margin]
    grid = torch.empty((gh, gw))
    with torch.inference_mode():
        for r in range(0, 4, step):
            for c in range(0, 4, step):
                sub = crop[:, :, r:, c:]
                feat = net.trunk(sub[:, :, : sub.shape[2] // 4 * 4, : sub.shape[3] // 4 * 4])
                z = F.avg_pool2d(F.conv2d(feat, net.fc.weight[:, :, None, None], net.fc.bias).float(), k, stride=1)
                d = (z[0, 1] - z[0, 0])[mc:, mc:]
                nr, nc = len(range(r // step, gh, m)), len(range(c // step, gw, m))
                grid[r // step :: m, c // step :: m] = d[:nr, :nc]
        return torch.sigmoid(_interp_axis(_interp_axis(grid, h, step, 0), w, step, 1)).numpy()


@pytest.mark.parametrize(("depth", "p", "shape", "runs"), [(20, 32, (100, 84), ((4, 16), (4, 0), (2, 16))),
                                                          (56, 16, (60, 52), ((4, 16),))])
def test_dense_scores_do_not_depend_on_the_tiling(depth, p, shape, runs, monkeypatch) -> None:
    """fuse.max_tile and the dense boundary mode's tile changed the scores (up to 0.15 in
    probability, flipped decisions on Lytro pairs with the shipped ResNet-20): every box gave
    the trunk dense_margin (16) px of context, less than its reach (40 px for ResNet-20, 124
    for ResNet-56). Now a box edge inside the image gives the trunk its whole reach, clipped
    to the crop of the whole image: the scores of any tiling, masked or not, are the whole
    image's (up to float rounding), and an image in one box keeps its scores byte for byte."""
    from bafusion.fusion import scoring

    net = _calibrated_net(depth)
    assert scoring.trunk_reach(net) == {20: 40, 56: 124}[depth]
    rng = np.random.default_rng(depth)
    a, b = rng.integers(0, 256, (2, *shape), dtype=np.uint8)
    mask = rng.random(shape) < 0.3
    for step, margin in runs:
        whole = score_dense(net, a, b, p, step=step, margin=margin)
        assert 0.05 < np.mean((whole > 0.1) & (whole < 0.9))  # unsaturated: a change would show
        np.testing.assert_array_equal(whole, _previous_dense_whole_image(net, a, b, p, step, margin))
        for side in (16, 44):
            tiled = score_dense(net, a, b, p, step=step, margin=margin, max_tile=side)
            np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-6)
        for most in (1024, 24):  # masked boxes merged into one, and several (max_tile 24)
            boxes = score_dense(net, a, b, p, step=step, margin=margin, mask=mask, tile=12, max_tile=most)
            np.testing.assert_allclose(boxes[mask], whole[mask], rtol=0, atol=1e-6)
            assert np.isnan(boxes[~mask]).all()
    # The test sees the defect: with only the margin of context at box edges, the tiles differ.
    monkeypatch.setattr(scoring, "trunk_reach", lambda net: 0)
    short = score_dense(net, a, b, p, step=4, margin=16, max_tile=16)
    assert np.abs(short - score_dense(net, a, b, p, step=4, margin=16)).max() > 1e-3


def test_merge_boxes_lets_neighbouring_boxes_share_their_context() -> None:
    """Since every box gives the trunk its whole reach of context (124 px for ResNet-56),
    the dense boundary mode's boxes in neighbouring tile rows recomputed each other's
    surroundings (1.8-2.3x the time with ResNet-56). _merge_boxes merges boxes whose bounding
    box's crop is smaller than their crops together, up to max_side, and keeps the others."""
    from bafusion.fusion.scoring import _crop_cost, _merge_boxes

    def merge(boxes, size=(520, 520), patch=64, context=124, max_side=1024):
        return _merge_boxes(boxes, size, patch, 4, 16, context, max_side)

    # two tile rows one above the other (a 128-px box's crop: 448 px a side): one box
    assert merge([(0, 128, 0, 128), (128, 256, 0, 128)]) == [(0, 256, 0, 128)]
    assert _crop_cost(0, 256, 0, 128, (520, 520), 64, 4, 16, 124) < 2 * _crop_cost(0, 128, 0, 128, (520, 520), 64, 4, 16, 124)
    # a chain: the third box joins the union of the first two
    assert merge([(0, 128, 200, 260), (128, 256, 200, 260), (256, 384, 200, 260)]) == [(0, 384, 200, 260)]
    # not beyond max_side (memory), nor where the crops are far apart
    assert merge([(0, 128, 0, 128), (128, 256, 0, 128)], max_side=128) == [(0, 128, 0, 128), (128, 256, 0, 128)]
    far = [(0, 128, 0, 128), (1000, 1128, 1000, 1128)]
    assert merge(far, size=(2000, 2000), patch=32, context=40) == far
    # random masks: every box inside a merged one, on the step grid, no pair left to merge
    rng = np.random.default_rng(3)
    for step, context in ((4, 40), (2, 124), (1, 12)):
        size = (300, 260)
        mask = ndimage.binary_dilation(rng.random(size) < 0.002, iterations=3)
        boxes = fusion.scoring._boxes(*size, mask, 16, step)
        got = _merge_boxes(boxes, size, 32, step, 16, context, 128)
        assert len(got) < len(boxes)
        for r0, r1, c0, c1 in boxes:
            assert any(a <= r0 and r1 <= b and c <= c0 and c1 <= d for a, b, c, d in got)
        assert all(r0 % step == 0 and c0 % step == 0 for r0, _, c0, _ in got)
        cost = [_crop_cost(*g, size, 32, step, 16, context) for g in got]
        for i in range(len(got)):
            for j in range(i):
                u = (min(got[i][0], got[j][0]), max(got[i][1], got[j][1]), min(got[i][2], got[j][2]), max(got[i][3], got[j][3]))
                if u[1] - u[0] <= 128 and u[3] - u[2] <= 128:
                    assert _crop_cost(*u, size, 32, step, 16, context) >= cost[i] + cost[j]
        assert sum(cost) < sum(_crop_cost(*b, size, 32, step, 16, context) for b in boxes)


def _merge_boxes_against_all(boxes, size, patch, step, margin, context, max_side):
    """_merge_boxes as first written (a frozen copy): each box compared with every kept box."""
    from bafusion.fusion.scoring import _crop_cost

    def cost(r0, r1, c0, c1):
        return _crop_cost(r0, r1, c0, c1, size, patch, step, margin, context)

    kept = np.empty((0, 4), dtype=np.int64)
    for box in boxes:
        cur = np.array(box, dtype=np.int64)
        while len(kept):
            r0, c0 = np.minimum(kept[:, 0], cur[0]), np.minimum(kept[:, 2], cur[2])
            r1, c1 = np.maximum(kept[:, 1], cur[1]), np.maximum(kept[:, 3], cur[3])
            saving = cost(*kept.T) + cost(*cur) - cost(r0, r1, c0, c1)
            saving[(r1 - r0 > max_side) | (c1 - c0 > max_side)] = 0
            best = int(np.argmax(saving))
            if saving[best] <= 0:
                break
            cur = np.array([r0[best], r1[best], c0[best], c1[best]], dtype=np.int64)
            kept = np.delete(kept, best, axis=0)
        kept = np.vstack([kept, cur[None]])
    return [(int(a), int(b), int(c), int(d)) for a, b, c, d in kept]


def test_merge_boxes_compares_a_box_with_its_neighbours_only(monkeypatch) -> None:
    """_merge_boxes compared each box with every kept box: quadratic in the boxes (31 s for
    the 20,505 boxes of a scattered 4000x6000 mask with tile and max_tile 16). Only kept boxes
    starting within max_tile of a box can merge with it, so it now looks in a grid of max_tile
    cells, with the same result (boxes and order) as comparing with all of them."""
    from bafusion.fusion import scoring

    rng = np.random.default_rng(11)
    cases = 0
    for size, tile, step, patch, context, most in (((301, 263), 16, 4, 32, 40, 128), ((257, 199), 12, 2, 16, 12, 24),
                                                  ((150, 97), 8, 1, 64, 124, 1024), ((300, 260), 16, 4, 32, 40, 16),
                                                  ((211, 333), 20, 4, 16, 12, 12), ((97, 131), 4, 2, 32, 40, 64)):
        for density in (0.0005, 0.003, 0.02):
            mask = ndimage.binary_dilation(rng.random(size) < density, iterations=2)
            mask[0, :: max(1, size[1] // 5)] = mask[-1, -1] = mask[size[0] // 2, 0] = True  # boxes at the borders
            boxes = scoring._boxes(*size, mask, tile, step)
            args = (size, patch, step, 16, context, most)
            assert scoring._merge_boxes(boxes, *args) == _merge_boxes_against_all(boxes, *args)
            cases += len(boxes) > 1
    assert cases >= 12
    # many boxes that cannot merge (max_tile 16): each is compared with a few neighbours only
    lengths = []
    cost = scoring._crop_cost
    monkeypatch.setattr(scoring, "_crop_cost", lambda r0, *a: lengths.append(np.size(r0)) or cost(r0, *a))
    size = (640, 640)
    mask = np.zeros(size, bool)
    mask[::16, ::32] = True  # 800 one-pixel boxes in every 16-px tile row, every other tile
    boxes = scoring._boxes(*size, mask, 16, 4)
    assert len(boxes) == 800
    assert scoring._merge_boxes(boxes, size, 32, 4, 16, 40, 16) == boxes
    assert 0 < max(lengths) <= 9


def test_dense_boundary_boxes_share_context_without_changing_the_scores(monkeypatch) -> None:
    """The masked pixels of two neighbouring tile rows are scored in one trunk pass (two
    before the merge), with the scores of the boxes as they were and of the whole image, up to
    float rounding."""
    from bafusion.fusion import scoring

    net = _calibrated_net(20)
    rng = np.random.default_rng(5)
    a, b = rng.integers(0, 256, (2, 100, 84), dtype=np.uint8)
    mask = np.zeros(a.shape, bool)
    mask[20:30, 10:40] = mask[36:44, 30:60] = True  # tile rows 0-31 and 32-63
    calls = []
    net.trunk.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape[2:])))

    def run(**kw):
        calls.clear()
        return score_dense(net, a, b, 32, step=4, margin=16, mask=mask, tile=32, **kw)

    merged = run()
    assert len(calls) == 1
    run(max_tile=16)
    assert len(calls) == 2  # not merged beyond max_tile
    with monkeypatch.context() as m:
        m.setattr(scoring, "_merge_boxes", lambda boxes, *args: boxes)
        separate = run()
        assert len(calls) == 2
    whole = score_dense(net, a, b, 32, step=4, margin=16)
    assert 0.05 < np.mean((whole[mask] > 0.1) & (whole[mask] < 0.9))  # unsaturated: a change would show
    np.testing.assert_allclose(merged[mask], separate[mask], rtol=0, atol=1e-6)
    np.testing.assert_allclose(merged[mask], whole[mask], rtol=0, atol=1e-6)
    assert np.isnan(merged[~mask]).all()


def test_trunk_reach_is_how_far_the_dense_trunk_reads() -> None:
    """trunk_reach: the receptive-field radius rounded up to a multiple of 4 (14 n - 2 px for
    ResNet-(6n+2)). For ResNet-20 it is exact: the features of a patch's cells change with the
    input pixel 40 px before the patch and 37 px after it (the last cell's 4 px included), not
    with the pixels one further out."""
    from bafusion.fusion.scoring import trunk_reach

    assert [trunk_reach(build_model(d)) for d in (8, 20, 56)] == [12, 40, 124]
    assert trunk_reach(CellNet()) == 0
    net = _calibrated_net(20)
    r, p = trunk_reach(net), 16
    x = torch.rand(1, 2, p + 2 * r + 16, p + 2 * r + 16)
    start = r + 8  # the patch's first row and column

    def patch_features(y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            f = net.trunk(y)
        c = start // 4
        return f[..., c : c + p // 4, c : c + p // 4]

    ref = patch_features(x)
    for row, changes in ((start - r - 1, False), (start + p + r - 3, False), (start - r, True), (start + p + r - 4, True)):
        y = x.clone()
        y[..., row, start + 4] += 1.0
        assert bool((patch_features(y) != ref).any()) == changes, row


def test_folded_batchnorm_is_the_same_function() -> None:
    """Fusion runs inference copies with BatchNorm folded into the convolutions: the same
    logits up to float rounding, the caller's net untouched."""
    from bafusion.nets.model import fold_batchnorm

    torch.manual_seed(0)
    net = build_model(20)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):  # statistics like a trained net's
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.3, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    net.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    folded = fold_batchnorm(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(8, 2, 32, 32)
    with torch.no_grad():
        want, got = net(x), folded(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    nets = FusionNets(net, net, 32, 32, torch.device("cpu"))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in nets.initial.modules())


def test_fusion_nets_rebuilt_from_loaded_nets_score_the_same() -> None:
    """FusionNets folds the nets it is given: given the nets of another FusionNets (moved to
    another device with dataclasses.replace(nets, device=...), or built from nets.initial),
    fold_batchnorm failed with "AttributeError: 'Identity' object has no attribute 'weight'"
    (mypy: fold's BatchNorm2d argument may be any module). A folded net is kept as it is."""
    import dataclasses

    from bafusion.nets.model import fold_batchnorm

    torch.manual_seed(0)
    net = build_model(8).eval()
    nets = FusionNets(net, net, 32, 32, torch.device("cpu"))
    x = torch.rand(4, 2, 32, 32)
    with torch.no_grad():
        want = nets.initial(x)
        for again in (dataclasses.replace(nets, device=torch.device("cpu")),
                      FusionNets(nets.initial, nets.boundary, 32, 32, torch.device("cpu"))):
            assert torch.equal(again.initial(x), want)
        assert torch.equal(fold_batchnorm(nets.initial)(x), want)


def test_batch_size_changes_speed_not_scores() -> None:
    from bafusion.fusion import auto_batch

    assert auto_batch(32) == 64 and auto_batch(64) == 16 and auto_batch(512) == 1
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 256, (2, 13, 11), dtype=np.uint8)
    net = build_model(8).eval()
    np.testing.assert_allclose(score_exact(net, a, b, 16, batch_size=0), score_exact(net, a, b, 16, batch_size=5),
                               atol=1e-6)
    with pytest.raises(UserError, match="batch_size"):
        FusionParams(batch_size=-1)


@pytest.mark.parametrize("target,owned,kind", [
    ("accuracy.json", "accuracy.json", "accuracy report"), ("p1.png", "p1.png", "fused image"),
    ("maps", "maps", "folder of maps"), ("maps/p1-dm.png", "maps/p1-dm.png", "map"),
    ("p1.png/fuse.json", "p1.png", "fused image")])
def test_fuse_set_refuses_a_report_that_is_one_of_its_own_files_in_out(
    tmp_path: Path, tiny_nets: Path, capsys, monkeypatch: pytest.MonkeyPatch, target: str, owned: str, kind: str
) -> None:
    """``--report out/accuracy.json`` silently replaced the accuracy report fuse-set writes into
    --out (its marker) with the numbers-only report; --report out/maps failed after the work.
    A --report that is (or lies in) a file fuse-set writes into --out is refused before any
    work, in one line naming both; nothing in --out changes."""
    pairs = _write_noise_pair(tmp_path / "pairs")
    out = tmp_path / "fused"
    out.mkdir()
    (out / "accuracy.json").write_text(json.dumps({"pairs": {}}))  # an earlier run's, on an empty test set
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def reached(*args: object, **kwargs: object) -> None:
        raise AssertionError("the work started although the report path was refused")

    monkeypatch.setattr(fusion.testset, "_fuse_pair", reached)
    monkeypatch.setattr(fusion.testset, "atomic_dir", reached)
    report = out / target
    rc = cli_main(["fuse-set", "--pairs", str(pairs), "--models", str(tiny_nets), "--out", str(out), "--device",
                   "cpu", "--report", str(report)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert f"{report}: the --report file would " in err, err
    assert f"{out / owned}, the {kind} fuse-set writes into --out" in err, err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    with pytest.raises(UserError, match=f"the {kind} fuse-set writes"):  # the function refuses it too
        fusion.fuse_set(pairs, out, fusion.load_nets_from_dir(tiny_nets, "cpu"), report_path=report)


def test_fuse_set_from_python_takes_a_mapping_of_params_and_str_paths(tmp_path: Path, tiny_nets: Path) -> None:
    """fuse_set(pairs, out, nets, {"l": 4}) failed with a raw "TypeError: asdict() should be
    called on dataclass instances" (fuse, fuse_images and fuse_stack take a mapping), and
    read_pair_index("pairs") with "unsupported operand type(s) for /" (fuse_set takes str)."""
    pairs = _write_noise_pair(tmp_path / "pairs")
    assert fusion.read_pair_index(str(pairs)) == ["p1"]
    nets = fusion.load_nets_from_dir(tiny_nets, "cpu")
    report = fusion.fuse_set(str(pairs), str(tmp_path / "out"), nets, {"l": 4, "flat_level": 0})
    assert report["params"]["l"] == 4 and report["params"]["flat_level"] == 0
    assert list(report["pairs"]) == ["p1"] and (tmp_path / "out" / "p1.png").is_file()
    with pytest.raises(UserError, match=r"params: .*\bl\b"):  # checked like params.yaml's fuse section
        fusion.fuse_set(pairs, tmp_path / "out2", nets, {"l": -1})


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan"), 1e308, "10"])
def test_fuse_set_from_python_checks_alpha_before_any_work(tmp_path: Path, tiny_nets: Path, alpha: object) -> None:
    """fuse_set(..., alpha=0) from Python wrote all-black difference maps (1e308: overflowed
    ones), where --alpha is refused: it is refused up front with the command line's words,
    naming the Python parameter, before any pair is fused or out is created."""
    pairs = _write_noise_pair(tmp_path / "pairs")
    nets = fusion.load_nets_from_dir(tiny_nets, "cpu")
    shown = f"{alpha!r}" if isinstance(alpha, str) else f"{alpha:g}"
    why = {"0": "must be more than 0 .0 would write all black", "-1": "must be more than 0",
           "nan": "must be more than 0", "1e+308": "is at most 255: the maps are 8-bit",
           "'10'": "must be a number more than 0 and at most 255"}[shown]
    with pytest.raises(UserError, match=rf"^alpha {re.escape(shown)}: the difference-map gain alpha\*\|B-F\| {why}"):
        fusion.fuse_set(pairs, tmp_path / "out", nets, alpha=alpha)  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()


def test_fuse_set_from_python_prints_nothing_and_warns_its_notes(tmp_path: Path, tiny_nets: Path, capsys) -> None:
    """fuse_set called from Python printed the command line's lines ("bafusion fuse-set: p1:
    0.021 s", its notes, "p1: near_boundary_fraction=..." on stdout). From Python it prints
    nothing: the notes are FusionNoteWarnings naming the Python parameter, as bafusion.fuse
    issues them; the command line passes say= and show= and prints as before."""
    from bafusion.fusion.rule import OUTPUT_EXPOSURE_PARAM, FusionNoteWarning

    pairs = tmp_path / "pairs"
    pairs.mkdir()
    a = np.random.default_rng(0).integers(60, 200, (48, 40), dtype=np.uint8)
    Image.fromarray(a).save(pairs / "p1-A.png")
    Image.fromarray(a // 2).save(pairs / "p1-B.png")  # B darker: a note
    (pairs / "index.json").write_text(json.dumps({"pairs": ["p1"]}))
    nets = fusion.load_nets_from_dir(tiny_nets, "cpu")
    with pytest.warns(FusionNoteWarning, match=r"p1-B\.png differs from .*p1-A\.png by about -2\.2 EV") as caught:
        fusion.fuse_set(pairs, tmp_path / "out", nets)
    assert capsys.readouterr() == ("", "")
    assert OUTPUT_EXPOSURE_PARAM in str(caught[0].message) and "--match" not in str(caught[0].message)
    said: list[str] = []
    shown: list[str] = []
    fusion.fuse_set(pairs, tmp_path / "out", nets, say=said.append, show=shown.append)
    assert capsys.readouterr() == ("", "")
    assert any("-2.2 EV" in line and "--match-output-exposure" in line for line in said), said
    assert any(line.startswith("p1: ") and line.endswith(" s") for line in said), said
    assert len(shown) == 1 and shown[0].startswith("p1: near_boundary_fraction="), shown
    rc = cli_main(["fuse-set", "--pairs", str(pairs), "--models", str(tiny_nets), "--out", str(tmp_path / "out"),
                   "--device", "cpu"])
    out, err = capsys.readouterr()
    assert rc == 0 and out.startswith("p1: near_boundary_fraction="), out  # a result: unstamped off a terminal too
    assert "bafusion fuse-set: " in err and "-2.2 EV" in err and "--match-output-exposure" in err, err


def test_fig3_of_a_pair_with_truth_shows_it_beside_the_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the test set's Fig. 3 showed our decision map and fused image but not the truth they are
    # scored against, so the error could not be seen: the true decision map and the all-in-focus
    # truth stand beside them (a pair without truth keeps the four panels)
    import bafusion.fusion.maps as maps

    figs = []
    monkeypatch.setattr(maps, "figure_bytes", lambda fig: figs.append(fig) or b"")
    res = _uniform_result()
    truth_dm = np.zeros(res.decision.shape, bool)
    truth_dm[:, :40] = True
    maps.figure_maps(res, tmp_path / "f.png", truth=np.zeros((60, 80, 3), np.uint8), truth_dm=truth_dm)
    titles = [ax.get_title() for ax in figs[0].axes if ax.get_title()]
    assert titles == [*maps.FIG3_PANELS[:3], maps.FIG3_TRUTH_PANELS[0], maps.FIG3_PANELS[3], maps.FIG3_TRUTH_PANELS[1]]
    maps.figure_maps(res, tmp_path / "g.png")
    assert [ax.get_title() for ax in figs[1].axes if ax.get_title()] == list(maps.FIG3_PANELS)


def test_fuse_set_draws_the_truth_into_fig3(tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bafusion.fusion.maps as maps

    pairs = tmp_path / "testset"
    [(a, _, m)] = _write_test_set(pairs, ["p1"], np.random.default_rng(5), dm=True, truth=True, wrap=True)
    seen = []
    monkeypatch.setattr(maps, "figure_maps_bytes", lambda res, title="", **kw: seen.append(kw) or b"")
    params = tmp_path / "params.yaml"
    params.write_text("fuse:\n  device: cpu\n  flat_level: 0\n  working_min: 0\n")
    assert cli_main(["fuse-set", "--pairs", str(pairs), "--models", str(model_dir), "--out", str(tmp_path / "f"),
                     "--params-file", str(params)]) == 0
    (kw,) = seen
    np.testing.assert_array_equal(kw["truth"], a)
    np.testing.assert_array_equal(kw["truth_dm"], m.astype(bool))


def test_cli_fuse_save_maps_keeps_a_write_bug_a_bug(tmp_path: Path, model_dir: Path, scene, capsys,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """An OSError without errno while writing (Pillow's "cannot write mode X") is a bug, said as
    one (internal error) as without ``--save-maps``; with it, it became the user error "not
    written; nothing was written" (review)."""
    import bafusion.io

    pa, pb = _write_pair(tmp_path, scene)
    out = tmp_path / "f.png"

    def bug(path, *args, **kw):
        raise OSError("cannot write mode X as PNG")

    monkeypatch.setattr(bafusion.io, "write_image", bug)
    rc = cli_main(["fuse", str(pa), str(pb), "-o", str(out), "--model", str(model_dir), "--save-maps",
                   str(tmp_path / "maps"), "--device", "cpu", "--l", "6", "--no-progress"])
    err = capsys.readouterr().err
    assert rc != 2 and "nothing was written" not in err, (rc, err)


def test_the_figure_functions_leave_the_callers_matplotlib_backend_and_pyplot_alone(tmp_path: Path,
                                                                                   tiny_nets: Path) -> None:
    """figure_maps, save_maps, figure_comparison, figure_differences and save_dataset_figures
    called matplotlib.use("Agg", force=True): a notebook's backend was Agg for the rest of its
    session (its plt.show() showed nothing). They draw on an Agg canvas of their own now: the
    backend set before is the backend after, and pyplot holds no figure of theirs."""
    import matplotlib
    import matplotlib.pyplot as plt

    from bafusion.evaluation.figures import figure_comparison, figure_differences, save_dataset_figures
    from bafusion.fusion.maps import figure_maps, save_maps

    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    r = fusion.fuse_images(a, b, fusion.load_nets_from_dir(tiny_nets, "cpu"), FusionParams(min_region=0.0))
    before = matplotlib.get_backend()
    figs = plt.get_fignums()
    matplotlib.use("svg")
    try:
        for draw in (lambda: figure_maps(r, tmp_path / "fig3.png", truth=a, truth_dm=r.decision),
                     lambda: save_maps(tmp_path / "maps", "x", r, a, b),
                     lambda: figure_comparison(a, b, {"m": r.fused}, tmp_path / "fig4.png"),
                     lambda: figure_differences(b, {"m": r.fused}, tmp_path / "diff.png", a=a),
                     lambda: save_dataset_figures(tmp_path / "ds", "p", a, b, {"m": r.fused})):
            draw()
            assert matplotlib.get_backend() == "svg"
            assert plt.get_fignums() == figs
        assert Image.open(tmp_path / "fig4.png").format == "PNG"
        assert (tmp_path / "maps" / "x-fig3.png").stat().st_size and (tmp_path / "ds" / "fig4-p.png").stat().st_size
    finally:
        matplotlib.use(before)


def test_a_fine_step_above_the_boundary_step_is_refused_or_said(monkeypatch: pytest.MonkeyPatch) -> None:
    """``fuse: {boundary_step: 2, boundary_fine_step: 32}`` ran silently as a step-2 grid
    everywhere (the fine step clamped to the coarse one: lytro-01 fused in 18.4 s against 3.9 s,
    probeConfig's measure): refused, the values named. With ``boundary_step: 0`` (auto, half the
    boundary net's patch) the clamp depends on the net: said once, with the step it runs."""
    import warnings

    from bafusion.fusion import scoring
    from bafusion.fusion.scoring import boundary_steps

    monkeypatch.setattr(scoring, "_SAID", set())  # (said once a process: not by an earlier test)
    with pytest.raises(UserError, match=r"^fuse\.boundary_fine_step: 32 is above fuse\.boundary_step: 2: the adaptive "
                                        r"boundary mode .* \(it ran as 2, no refinement\); swapped\?"):
        FusionParams(boundary_step=2, boundary_fine_step=32)
    with pytest.raises(UserError, match="boundary_fine_step: 32 is above"):
        FusionParams.from_params({"fuse": {"boundary_step": 2, "boundary_fine_step": 32}})
    FusionParams(boundary_step=2, boundary_fine_step=32, boundary_mode="grid")  # not read there
    assert boundary_steps(FusionParams(boundary_step=32, boundary_fine_step=2), 32) == (32, 2)
    auto = FusionParams(boundary_fine_step=32)
    with pytest.warns(UserWarning, match=r"^fuse\.boundary_fine_step: 32 is above the boundary net's grid step 16 "
                                         r"\(fuse\.boundary_step: 0, auto: half its patch 32\): the adaptive mode runs "
                                         r"it as 16"):
        assert boundary_steps(auto, 32) == (16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert boundary_steps(auto, 64) == (32, 32)  # fine = coarse: no refinement, as asked
        assert boundary_steps(FusionParams(), 32) == (16, 8)


def test_the_max_tile_and_fine_step_warnings_are_said_once_a_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """fuse-dir said both warnings once per stack (3 stacks: each 3 times, checked with
    ``--boundary-fine-step 16 --params-json '{"max_tile": 32}'`` and ResNet-8 nets at patch 16):
    Python's once-per-line registry is reset whenever a warnings filter changes, as every image
    read does (bafusion.io.formats). Said once a process, whatever happens between."""
    import warnings

    from bafusion.fusion import scoring
    from bafusion.fusion.scoring import boundary_steps, score

    monkeypatch.setattr(scoring, "_SAID", set())
    net = build_model(8).eval()
    a, b = np.random.default_rng(0).integers(0, 256, (2, 64, 64), dtype=np.uint8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's own: once per line and text
        for _ in range(3):  # three stacks
            boundary_steps(FusionParams(boundary_fine_step=32), 32)
            score(net, a, b, 16, FusionParams(max_tile=8), 4)
            with warnings.catch_warnings():  # as reading the next stack's images does
                warnings.simplefilter("ignore", DeprecationWarning)
    said = [str(w.message).split(":")[0] for w in caught]
    assert sorted(said) == ["fuse.boundary_fine_step", "fuse.max_tile"], said
    assert {Path(w.filename).name for w in caught} == {"scoring.py"}  # the line that asks, as before


def test_a_max_tile_below_what_the_net_reads_around_a_box_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    """``fuse.max_tile: 32`` (schema minimum 4) fused lytro-01 in 26.7 s against 5.0 s (one run
    each, loaded machine; 4: over 300 s), the same bytes, in silence: each box's crop holds the
    patch and twice the trunk's reach around it. Said, naming the key, the net's need and the cost."""
    import warnings

    from bafusion.fusion import scoring
    from bafusion.fusion.scoring import score, trunk_reach

    monkeypatch.setattr(scoring, "_SAID", set())  # (said once a process: not by an earlier test)
    net = build_model(8).eval()
    assert trunk_reach(net) == 12  # ResNet-8: boxes need 16 + 2 * 12 + 8 = 48 px around them
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (2, 64, 64), dtype=np.uint8)
    with pytest.warns(UserWarning, match=r"^fuse\.max_tile: 8 is below the 48 px the net reads around each box \(its "
                                         r"patch 16, twice its reach 12, 8\): the net computes about 49x the pixels "
                                         r"of each box.*raise fuse\.max_tile to 48 or more"):
        slow = score(net, a, b, 16, FusionParams(max_tile=8), 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast = score(net, a, b, 16, FusionParams(max_tile=48), 4)
        score(net, a[:8, :8], b[:8, :8], 16, FusionParams(max_tile=8), 4)  # one box: max_tile changes nothing
    np.testing.assert_allclose(slow, fast, atol=1e-5)


@pytest.mark.parametrize("command", ["fuse", "evaluate"])
def test_an_in_process_command_leaves_torchs_threads_as_they_were(
        tmp_path: Path, tiny_nets: Path, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    """``main(["fuse", ..., "--threads", "1"])`` in a process that goes on (a notebook, the
    tests) left torch on one thread for the rest of it (evaluate likewise): main now sets back
    what the command set."""
    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    rng = np.random.default_rng(0)
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    for side in "AB":
        Image.fromarray(rng.integers(0, 256, (20, 24), dtype=np.uint8)).save(pairs / f"p-{side}.png")
    before = torch.get_num_threads()
    asked = 2 if before == 1 else 1
    if command == "fuse":
        argv = ["fuse", str(pairs / "p-A.png"), str(pairs / "p-B.png"), "-o", str(tmp_path / "F.png")]
    else:
        argv = ["evaluate", "--dataset", f"mine={pairs}", "--methods", "Ours", "--metrics", "QG",
                "--out", str(tmp_path / "ev")]
    seen = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (seen.append(n), real(n))[1])
    assert cli_main([*argv, "--models", str(tiny_nets), "--threads", str(asked)]) == 0
    assert seen[0] == asked  # the command ran on the threads asked for ...
    assert torch.get_num_threads() == before  # ... and torch is as it was
