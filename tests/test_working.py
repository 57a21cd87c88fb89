"""Camera-size pairs (issue 14): the decision at a working resolution (``fuse.working_side``),
refined in a full-resolution band, and the progress bar. Small images and the shipped nets;
the 12-megapixel timing and memory are measured by ``benchmarks/bench_camera.py``."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from bafusion.errors import UserError
from bafusion.fusion import FusionParams, fuse_images, load_nets_from_dir
from bafusion.fusion.working import (
    boundary_band,
    decision_size,
    guided_filter,
    patch_note,
    progress_bar,
    uses_working,
    working_resolution,
    working_size,
)
from bafusion.io import resize

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def nets():
    return load_nets_from_dir(None, "cpu")


def _scene(h: int = 192, w: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A photo with an elliptic region in focus in A, out of focus in B (Gaussian, sigma 2.5)."""
    from skimage import data

    g = data.camera().astype(np.float64)
    g = resize(g.astype(np.float32), (h, w)).astype(np.float64)
    yy, xx = np.mgrid[:h, :w]
    focus_a = ((yy - h * 0.45) / (0.32 * h)) ** 2 + ((xx - w * 0.55) / (0.3 * w)) ** 2 < 1
    bl = ndimage.gaussian_filter(g, 2.5)
    a = np.clip(np.where(focus_a, g, bl), 0, 255).round().astype(np.uint8)
    b = np.clip(np.where(focus_a, bl, g), 0, 255).round().astype(np.uint8)
    return a, b, focus_a


def test_engages_above_the_threshold_only() -> None:
    p = FusionParams(working_side=640, working_above=1024)
    assert not uses_working((520, 520), p) and not uses_working((768, 1024), p)
    assert uses_working((768, 1025), p) and uses_working((3000, 4000, 3), p)
    assert not uses_working((3000, 4000), FusionParams(working_side=0))
    assert not uses_working((3000, 4000), FusionParams(exact=True))
    # working_side above working_above: only pairs larger than the working size engage.
    assert not uses_working((1500, 2000), FusionParams(working_side=2000, working_above=1024))
    assert working_size((3000, 4000), 640) == (480, 640) and working_size((4000, 3000), 640) == (640, 480)


def test_a_wide_pair_keeps_the_short_side_of_a_16_9_frame() -> None:
    """Scaled by its long side alone, an 8:1 panorama was decided at 640x80 (its subject a
    few patches high: every pixel from B) and an 8x5000 strip on one row. Up to 16:9 the
    working size is unchanged (the same outputs); wider pairs keep a 16:9 frame's short side
    (360 px at 640), never upscaled; a strip narrower than that is decided at its size."""
    p = FusionParams()  # working_side 640, working_above 1024
    for hw in [(3000, 4000), (4000, 3000), (1024, 1536), (2000, 3000), (1080, 1920), (2160, 3840),
               (2250, 4000), (3840, 2160), (1081, 1920), (1600, 1600), (1025, 1025)]:
        assert working_resolution(hw, 640) == working_size(hw, 640), hw
        assert uses_working(hw, p) and decision_size(hw, p) == working_size(hw, 640), hw
    assert working_resolution((1079, 1920), 640) == (360, 641)  # just wider than 16:9: continuous
    assert decision_size((520, 4160), p) == (360, 2880)  # 8:1, was (80, 640)
    assert decision_size((4160, 520), p) == (2880, 360)
    assert decision_size((520, 2080, 3), p) == (360, 1440)  # 4:1, was (160, 640)
    assert decision_size((360, 3000), p) is None and not uses_working((360, 3000), p)  # decided at its size
    assert decision_size((8, 5000), p) is None and decision_size((5000, 8), p) is None  # was (1, 640), (640, 1)
    assert working_resolution((100, 2000), 640) == (100, 2000)  # never upscaled
    assert working_resolution((1000, 8000), 1280) == (720, 5760)  # the 16:9 short side follows working_side


def test_a_wide_pair_is_decided_where_its_subject_shows(nets) -> None:
    """An 8:1 pair (eight copies of a scene side by side, an ellipse in focus in A) decided
    with ``working_side`` 128: by its long side alone at 128x16, it took half its pixels from
    the wrong shot (accuracy 0.59 against the truth); at the 16:9 frame's short side (72 px,
    576x72) 0.98."""
    from skimage import data

    h, k = 144, 8
    g = np.tile(resize(data.camera().astype(np.float32), (h, h)).astype(np.float64), (1, k))
    yy, xx = np.mgrid[:h, : h * k]
    focus_a = ((yy - h * 0.5) / (0.3 * h)) ** 2 + (((xx % h) - h * 0.5) / (0.3 * h)) ** 2 < 1
    bl = ndimage.gaussian_filter(g, 2.5)
    a = np.clip(np.where(focus_a, g, bl), 0, 255).round().astype(np.uint8)
    b = np.clip(np.where(focus_a, bl, g), 0, 255).round().astype(np.uint8)
    p = FusionParams(working_side=128, working_above=0, working_min=0)
    assert decision_size(a.shape, p) == (72, 576)
    res = fuse_images(a, b, nets, p)
    assert (res.decision == focus_a).mean() > 0.9
    assert abs(res.decision.mean() - focus_a.mean()) < 0.05


@pytest.mark.parametrize("hw,noted", [((7, 7), True), ((1, 1), True), ((8, 300), True), ((300, 8), True),
                                      ((40, 40), False), ((20, 20), False)])
def test_a_pair_narrower_than_a_patch_is_noted(nets, hw, noted) -> None:
    """A 7x7 pair took every pixel from B, silently: the nets' 32-px patches of a pair less
    than a patch high or wide (as decided: a 20x20 pair is decided upscaled to 40x40) see
    mostly the mirrored border. The fusion is made and says so in its notes."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, hw, dtype=np.uint8)
    b = ndimage.uniform_filter(a, 3)
    res = fuse_images(a, b, nets, FusionParams(), names=("a.png", "b.png"))
    assert res.fused.shape == a.shape
    hit = [n for n in res.notes if "patch" in n]
    if noted:
        assert len(hit) == 1 and f"{hw[1]}x{hw[0]} (WxH)" in hit[0] and "a.png and b.png" in hit[0], res.notes
        assert "32-pixel patch" in hit[0] and "guess" in hit[0]
    else:
        assert not hit, res.notes
    assert patch_note((7, 7), FusionParams(), 32) is not None
    assert "decided at 14x14" in patch_note((7, 7), FusionParams(), 32)  # upscaled x2, still under a patch
    assert patch_note((7, 7), FusionParams(working_min=0), 32).count("decided at") == 0
    assert patch_note((8, 5000), FusionParams(), 32) is not None  # decided at its size, 8 rows
    assert patch_note((520, 4160), FusionParams(), 32) is None


def test_fuse_and_a_joint_stack_say_so_for_a_pair_under_a_patch(nets, tmp_path, capsys) -> None:
    """``bafusion fuse`` of a 7x7 pair prints the note on stderr (and still writes the fusion);
    the joint stack rule notes a stack under a patch as well."""
    from PIL import Image

    from bafusion.cli import main as cli_main
    from bafusion.fusion.stack import fuse_stack_joint

    rng = np.random.default_rng(1)
    shots = [rng.integers(0, 256, (7, 7, 3), dtype=np.uint8) for _ in range(3)]
    for n, x in zip("ab", shots):
        Image.fromarray(x).save(tmp_path / f"{n}.png")
    capsys.readouterr()
    assert cli_main(["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "f.png"),
                     "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "are 7x7 (WxH), decided at 14x14: less than the nets' 32-pixel patch high" in err, err
    assert (tmp_path / "f.png").is_file()
    res = fuse_stack_joint(shots, nets, FusionParams(stack_rule="joint"), ["a.png", "b.png", "c.png"])
    assert [n for n in res.notes if "the 3 shots a.png to c.png are 7x7 (WxH)" in n], res.notes


def test_a_chain_stack_under_a_patch_is_noted_once(nets, tmp_path, capsys) -> None:
    """With the chain stack rule each step of a 7x7 stack noted that its pair was under a patch
    ("the fusion of a.png and b.png and c.png are 7x7 ..."): a 5-shot stack printed 4 such
    notes. The stack is noted once, naming its shots, as the joint rule does; by
    ``bafusion fuse`` too."""
    from PIL import Image

    from bafusion.cli import main as cli_main
    from bafusion.fusion import fuse_stack

    rng = np.random.default_rng(2)
    shots = [rng.integers(0, 256, (7, 7, 3), dtype=np.uint8) for _ in range(5)]
    names = [f"{c}.png" for c in "abcde"]
    results = fuse_stack(shots, nets, FusionParams(), names)
    hit = [n for r in results for n in r.notes if "patch" in n]
    assert len(hit) == 1 and "the 5 shots a.png to e.png are 7x7 (WxH)" in hit[0], hit
    pair = [n for r in fuse_stack(shots[:2], nets, FusionParams(), names[:2]) for n in r.notes if "patch" in n]
    assert pair == [patch_note((7, 7), FusionParams(), 32, names[:2])], pair  # two shots: as fuse_images says
    for n, x in zip(names[:3], shots):
        Image.fromarray(x).save(tmp_path / n)
    capsys.readouterr()
    assert cli_main(["fuse", *(str(tmp_path / n) for n in names[:3]), "-o", str(tmp_path / "f.png"),
                     "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert err.count("32-pixel patch") == 1 and "3 shots" in err, err
    assert (tmp_path / "f.png").is_file()


def test_below_the_threshold_the_result_is_the_plain_path(nets) -> None:
    a, b, _ = _scene(96, 128)
    plain = fuse_images(a, b, nets, FusionParams(working_side=0))
    default = fuse_images(a, b, nets, FusionParams())
    assert set(default.seconds) == {"gray", "exposure", "colour", "initial", "boundary", "post"}
    assert np.array_equal(plain.fused, default.fused) and np.array_equal(plain.score_refined, default.score_refined)


def test_working_path_agrees_with_the_plain_decision_upscaled(nets) -> None:
    a, b, truth = _scene(192, 256)
    plain = fuse_images(a, b, nets, FusionParams(working_side=0, working_min=0))
    assert (plain.decision == truth).mean() > 0.95  # the scene is one the nets decide
    big_a, big_b = resize(a, (576, 768)), resize(b, (576, 768))  # 3x, as a larger file of the scene
    ref = resize(plain.decision.astype(np.uint8) * 255, (576, 768)) > 127
    p = FusionParams(working_side=256, working_above=512)
    res = fuse_images(big_a, big_b, nets, p)
    assert "working" in res.seconds and "band" in res.seconds
    assert res.fused.shape == big_a.shape and res.fused.dtype == np.uint8
    for m in (res.score_initial, res.score_mean, res.score_refined):
        assert m.shape == big_a.shape and m.dtype == np.float32 and 0 <= m.min() and m.max() <= 1
    assert res.near_boundary.dtype == bool and 0 < res.near_boundary.mean() < 0.2
    assert (res.decision == ref).mean() > 0.98
    dm = res.decision
    assert np.array_equal(res.fused[dm], big_a[dm]) and np.array_equal(res.fused[~dm], big_b[~dm])
    # Refined only in the band: elsewhere the score is the upsampled working score, for every mode.
    none = fuse_images(big_a, big_b, nets, FusionParams(working_side=256, working_above=512, working_refine="none"))
    out = ~res.near_boundary
    assert np.allclose(none.score_refined[out], res.score_refined[out])
    assert not np.allclose(none.score_refined[res.near_boundary], res.score_refined[res.near_boundary])


def test_boundary_refine_weighs_the_boundary_net_as_at_any_size(nets, monkeypatch) -> None:
    """``working_refine: boundary`` rescoring the full-size band weighs the boundary net's vote
    with the upsampled initial score by ``boundary_weight``, as :func:`decide` does."""
    import importlib

    decide_mod = importlib.import_module("bafusion.fusion.decide")
    a, b, _ = _scene(96, 128)
    big_a, big_b = resize(a, (288, 384)), resize(b, (288, 384))
    base = dict(working_side=128, working_above=256, working_refine="boundary")
    calls: list[tuple[int, float]] = []
    real = decide_mod.blend_scores

    def spy(sb, s0, weight):
        calls.append((sb.size, weight))
        return real(sb, s0, weight)

    monkeypatch.setattr(decide_mod, "blend_scores", spy)
    half = fuse_images(big_a, big_b, nets, FusionParams(boundary_weight=0.5, **base))
    assert len(calls) >= 2 and all(w == 0.5 for _, w in calls)  # the working decision and >= 1 band tile
    paper = fuse_images(big_a, big_b, nets, FusionParams(boundary_weight=1.0, **base))
    band = half.near_boundary & paper.near_boundary  # the band follows the working decision
    assert band.sum() > 500
    assert not np.allclose(half.score_refined[band], paper.score_refined[band])


def test_boundary_band_has_the_requested_width() -> None:
    dm = np.zeros((40, 60), dtype=bool)
    dm[:, 30:] = True
    band = boundary_band(dm, 5)
    cols = np.nonzero(band.any(axis=0))[0]
    assert cols.min() == 30 - 5 and cols.max() == 29 + 5 and band.all(axis=0)[cols].all()
    assert not boundary_band(np.ones((8, 8), bool), 4).any()


def test_guided_filter_moves_a_blurred_boundary_to_the_guide_edge() -> None:
    guide = np.zeros((64, 64), np.float32)
    guide[:, 36:] = 1.0  # the edge in the full-resolution image
    # The upsampled score: a ramp of 24 px crossing 0.5 at column 32, 4 px off the edge.
    src = np.clip((np.arange(64, dtype=np.float32) - 32) / 12 + 0.5, 0, 1)[None].repeat(64, 0)
    q = guided_filter(guide, src, radius=8, eps=1e-3)
    row = q[32]
    assert (row[28:36] < 0.5).all() and (row[36:44] > 0.5).all()  # now at the edge, 36
    assert row[36] - row[35] > 0.4  # and sharp there
    assert abs(float(guided_filter(guide, np.full_like(guide, 0.3), 4, 1e-3).mean()) - 0.3) < 1e-5


def test_progress_bar_only_when_asked_or_on_a_terminal(nets, capsys) -> None:
    from bafusion.progress import PLAIN_INTERVAL_S

    # pytest's stderr is not a terminal: as in a log, a plain line at most every 30 s (none for
    # a fusion done sooner, below), no bar
    bar = progress_bar(3, 10**8, None)
    assert not bar.disable and bar.delay == PLAIN_INTERVAL_S > 0 and "\r" not in str(bar.bar_format)
    assert progress_bar(3, 10**8, False).disable
    assert not progress_bar(3, 10, True).disable
    a, b, _ = _scene(96, 128)
    p = FusionParams(working_side=64, working_above=64)
    capsys.readouterr()
    fuse_images(a, b, nets, p)
    assert "fusing" not in capsys.readouterr().err
    fuse_images(a, b, nets, p, progress=True)
    assert "fusing" in capsys.readouterr().err


def test_the_working_bar_never_goes_back(nets, capsys, monkeypatch) -> None:
    """The bar of a camera-size fusion went from 75 % (3/4, the nets done) back to 8 % (3/38)
    when the band's tiles were counted, and the nets' 3.3 s a step promised two minutes for
    tiles that took two seconds. Now its total stays fixed (five steps since the small regions
    have theirs, each advancing it by its share of the time), the tiles advance theirs in
    fractions: every redraw shows as much or more done, ending at 5.0/5."""
    import tqdm

    class EveryRedraw(tqdm.tqdm):  # a redraw for every update (tqdm skips those within 0.1 s, and with
        # miniters 1 those that advance it by less than a step since the last redraw: a fraction)
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "mininterval": 0, "miniters": 0})

    from bafusion.fusion import working

    monkeypatch.setattr(tqdm, "tqdm", EveryRedraw)
    monkeypatch.setattr(working, "BAND_TILE", 32)  # the band of a small pair in many tiles, as at camera size
    a, b, _ = _scene(192, 256)
    p = FusionParams(working_side=64, working_above=64)
    capsys.readouterr()
    import re
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", tqdm.TqdmWarning)  # "clamping frac": past the end
        fuse_images(a, b, nets, p, progress=True)
    err = capsys.readouterr().err

    shown = [(int(m.group(1)), float(m.group(2)), int(m.group(3)))
             for m in re.finditer(r"fusing:\s+(\d+)%\|[^|]*\| ([\d.]+)/(\d+) ", err)]
    assert len(shown) > 5 and "band, " in err, err
    tiles = int(re.search(r"band, (\d+) tiles", err).group(1))
    assert tiles > 1, err  # the band has tiles to count
    assert {t for _, _, t in shown} == {5}, shown
    assert [x[:2] for x in shown] == sorted(x[:2] for x in shown), shown
    assert shown[-1][:2] == (100, 5.0), shown


@pytest.mark.parametrize("field,bad", [("working_side", 32), ("working_side", -1), ("working_side", 1.5),
                                       ("working_above", -5), ("working_band", 0), ("working_band", True),
                                       ("working_refine", "bilateral")])
def test_param_validation(field: str, bad: object) -> None:
    with pytest.raises(UserError, match=field):
        FusionParams(**{field: bad})


def test_cli_flags_reach_the_params(tmp_path, capsys) -> None:
    from bafusion.cli import main as cli_main

    rc = cli_main(["fuse", "a.png", "b.png", "-o", str(tmp_path / "f.png"), "--working-side", "10"])
    assert rc == 2 and "working_side" in capsys.readouterr().err


def test_auto_threads_leaves_busy_cores_alone() -> None:
    from bafusion.threads import auto_threads

    assert auto_threads(cores=2, load=0.0) == 2
    assert auto_threads(cores=2, load=1.0) == 1  # one other process: one thread
    assert auto_threads(cores=2, load=7.5) == 1  # never fewer than one
    assert auto_threads(cores=16, load=3.2) == 13
    assert 1 <= auto_threads() <= 4096


def test_auto_threads_does_not_count_the_processs_own_earlier_fusions(monkeypatch) -> None:
    """threads="auto" read at each call counted the process's own last fusions in the 1-minute
    load average as other processes': on an idle 2-core machine a loop of fusions on 2 threads
    brought the load near 2 and the next call took 1 thread. own_load() now estimates that part
    from the earlier "auto" blocks (CPU seconds a second, decayed as the kernel decays the load)
    and auto_threads() takes it off; another process's load is still counted."""
    import math
    import os
    import time

    import torch

    import bafusion.threads as th

    monkeypatch.setattr(th, "_own", [0.0, 0.0])
    monkeypatch.setattr(th, "_affinity", lambda: 2)
    monkeypatch.setattr(th, "cpu_quota", lambda: None)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.99, 1.9, 1.5))
    assert th.own_load() == 0.0 and th.auto_threads() == 1  # another's load of 2: one thread
    now = time.monotonic()
    th._record(now - 300.0, now, 600.0)  # this process fused on 2 CPUs for the last 5 minutes
    assert math.isclose(th.own_load(now), 2 * (1 - math.exp(-5)), rel_tol=1e-9)
    assert th.auto_threads() == 2  # the load is its own
    assert math.isclose(th.own_load(now + 180), th.own_load(now) * math.exp(-3), rel_tol=1e-9)
    monkeypatch.setattr(th, "_own", [0.0, 0.0])
    th._record(now - 480.0, now - 180.0, 600.0)  # 3 minutes ago: 5 % of it left
    assert th.auto_threads() == 1
    # a block of torch_threads("auto") records itself; None and a number do not
    blocks: list = []
    monkeypatch.setattr(th, "_record", lambda *block: blocks.append(block))
    with th.torch_threads(None):
        pass
    with th.torch_threads(1):
        pass
    assert blocks == []
    with th.torch_threads("auto") as n:
        torch.ones(64, 64) @ torch.ones(64, 64)
    assert n >= 1 and len(blocks) == 1 and blocks[0][1] >= blocks[0][0] and blocks[0][2] >= 0


def test_auto_threads_keeps_to_the_cgroups_cpu_quota(tmp_path, monkeypatch) -> None:
    """A container limited to 2 CPUs (docker --cpus 2: a CFS quota, which neither the affinity
    mask nor torch's default thread count shows) of an idle 8-core machine got 8 threads from
    auto_threads, throttled each period; now the quota's whole CPUs, cgroup v2 and v1, the
    smallest of the cgroup's and its parents', at least one, and the load counted against the
    CPUs the machine's processes share (a busy 64-core host leaves a 4-CPU container its 4)."""
    import os

    import bafusion.threads as th

    v2 = tmp_path / "v2"
    (v2 / "job" / "step").mkdir(parents=True)
    (v2 / "cpu.max").write_text("max 100000\n")
    (v2 / "job" / "cpu.max").write_text("250000 100000\n")  # 2.5 CPUs: 2 threads, not 3
    (v2 / "job" / "step" / "cpu.max").write_text("max 100000\n")
    (tmp_path / "cg2").write_text("0::/job/step\n")
    v1 = tmp_path / "v1"
    (v1 / "cpu,cpuacct" / "docker" / "abc").mkdir(parents=True)
    (v1 / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us").write_text("150000\n")
    (v1 / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_period_us").write_text("100000\n")
    (v1 / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "cg1").write_text("5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    (tmp_path / "none").write_text("0::/\n")
    assert th.cpu_quota(str(tmp_path / "cg2"), str(v2)) == 2.5
    assert th.cpu_quota(str(tmp_path / "cg1"), str(v1)) == 1.5
    assert th.cpu_quota(str(tmp_path / "none"), str(v2)) is None  # "max": no limit
    assert th.cpu_quota(str(tmp_path / "missing"), str(v2)) is None

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(th, "PROC_CGROUP", str(tmp_path / "cg2"))
    monkeypatch.setattr(th, "CGROUP_ROOT", str(v2))
    assert th.available_cores() == 2
    assert th.auto_threads(load=0.0) == 2  # was 8 on the 2.5 CPUs
    assert th.auto_threads(load=7.0) == 1
    monkeypatch.setattr(th, "PROC_CGROUP", str(tmp_path / "cg1"))
    monkeypatch.setattr(th, "CGROUP_ROOT", str(v1))
    assert th.available_cores() == 1 and th.auto_threads(load=0.0) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setattr(th, "PROC_CGROUP", str(tmp_path / "cg2"))
    monkeypatch.setattr(th, "CGROUP_ROOT", str(v2))
    assert th.auto_threads(load=30.0) == 2  # the host's load leaves 34 of its 64 CPUs: the quota's 2
    monkeypatch.setattr(th, "PROC_CGROUP", str(tmp_path / "none"))
    assert th.available_cores() == 64 and th.auto_threads(load=30.0) == 34  # no quota: as before


def test_one_walk_of_the_cgroup_hierarchy_serves_the_cpu_quota_and_the_memory_limit(tmp_path) -> None:
    """threads.cpu_quota and fusion.memory's limits each walked /proc/self/cgroup with a copy of
    one loop; both now read bafusion.cgroup.controller_levels: v2's folders, or v1's of the named
    controller (root/cpu, else root/<the line's controllers>), the cgroup's own first."""
    from bafusion.cgroup import controller_levels
    from bafusion.fusion import memory

    root = tmp_path / "fs"
    (root / "cpu,cpuacct").mkdir(parents=True)
    (root / "memory").mkdir()
    cg = tmp_path / "cgroup"
    cg.write_text("5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/user.slice\n")
    v2 = [(root / "user.slice", False), (root, False)]
    assert controller_levels("cpu", str(cg), str(root)) == [
        (root / "cpu,cpuacct" / "docker" / "abc", True), (root / "cpu,cpuacct" / "docker", True),
        (root / "cpu,cpuacct", True), *v2]
    memory_levels = [(root / "memory" / "docker" / "abc", True), (root / "memory" / "docker", True),
                     (root / "memory", True), *v2]
    assert controller_levels("memory", str(cg), str(root)) == memory._levels(str(cg), str(root)) == memory_levels
    assert controller_levels("cpu", str(tmp_path / "missing"), str(root)) == []


@pytest.mark.parametrize("w,h,shown", [(2448, 1632, True), (2304, 1728, True), (2272, 1704, True),
                                         (2560, 1440, True), (1920, 1080, False), (2048, 1536, False)])
def test_a_cameras_4_megapixel_pair_gets_the_bar(w: int, h: int, shown: bool, monkeypatch) -> None:
    """Pairs a camera sells as 4 MP got no progress bar on a terminal: 2448x1632 is 3,995,136 px,
    2272x1704 3.87 MP, under the 4,000,000 the bar started at; Full HD and 3 MP still get none."""
    import bafusion.progress
    from bafusion.fusion.working import progress_bar

    monkeypatch.setattr(bafusion.progress, "stderr_is_terminal", lambda: True)
    bar = progress_bar(5, w * h, None)
    try:
        assert bar.disable is (not shown)
    finally:
        bar.close()


def test_progress_bar_of_a_large_pair_fused_at_full_size(nets, capsys) -> None:
    a, b, _ = _scene(96, 128)
    capsys.readouterr()
    fuse_images(a, b, nets, FusionParams(working_side=0), progress=True)
    err = capsys.readouterr().err
    assert "fusing" in err and "2/2" in err


def test_the_exposure_matching_bar_has_steps(nets, capsys) -> None:
    """The "matching exposure" bar (10-30 s on a camera-size pair) was one step, 0/1 until
    the end: no progress and no ETA. It counts its three steps (the two low-pass filters and
    the mapping) advanced after each."""
    a, b, _ = _scene(96, 128)
    capsys.readouterr()
    fuse_images(a, b, nets, FusionParams(working_side=0, exposure_match="linear"), progress=True)
    err = capsys.readouterr().err
    lines = [x for x in err.replace("\r", "\n").splitlines() if "matching exposure" in x]
    assert lines and all("/3 " in x for x in lines), lines

    from bafusion.fusion.exposure import match_exposure

    class Bar:
        n = 0

        def update(self, k: int = 1) -> None:
            self.n += k

    bar = Bar()
    match_exposure(a if a.ndim == 2 else a[..., 0], b if b.ndim == 2 else b[..., 0], bar=bar)
    assert bar.n == 3


def test_own_load_keeps_a_loop_of_many_short_fusions(monkeypatch) -> None:
    """own_load() kept only the last 64 "auto" blocks: a loop of short fusions (0.3 s each on 4
    CPUs, 200 of them in the last minute) was credited with its last 19 s, 1.1 of the 2.5 runnable
    tasks that the kernel's formula gives its minute, and the next call took threads from itself.
    The blocks are now summed as they end into one decayed total: every block counts."""
    import math
    import types

    import bafusion.threads as th

    clock = {"wall": 1000.0, "cpu": 0.0}
    monkeypatch.setattr(th, "time", types.SimpleNamespace(monotonic=lambda: clock["wall"],
                                                          process_time=lambda: clock["cpu"]))
    monkeypatch.setattr(th, "_own", [0.0, 0.0])
    monkeypatch.setattr(th, "auto_threads", lambda *a, **k: 4)
    for _ in range(200):
        with th.torch_threads("auto"):
            clock["wall"] += 0.3
            clock["cpu"] += 1.2
    expected = 4 * (1 - math.exp(-60 / th.LOAD_TIME_CONSTANT))  # 2.53
    assert math.isclose(th.own_load(), expected, rel_tol=1e-6), th.own_load()
    assert math.isclose(th.own_load(clock["wall"] + 60), expected * math.exp(-1), rel_tol=1e-6)


def test_a_scale_skipped_for_the_pairs_size_is_noted_once(nets, tmp_path, capsys) -> None:
    """A ``--scales`` factor at which the pair would fall under ``fuse.scale_min_side`` is skipped
    (:func:`bafusion.fusion.score_multiscale`); that was silent at run time. It is a note now:
    in the fusion's notes (a chain stack's once), and ``bafusion fuse`` prints it once."""
    from PIL import Image

    from bafusion.cli import main as cli_main
    from bafusion.fusion import fuse_stack

    params = FusionParams(scales=(1.0, 0.5), working_min=0)
    rng = np.random.default_rng(3)
    shots = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(3)]
    for c, x in zip("ab", shots):
        Image.fromarray(x).save(tmp_path / f"{c}.png")
    capsys.readouterr()
    assert cli_main(["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "f.png"),
                     "--device", "cpu", "--scales", "1,0.5", "--working-min", "0"]) == 0
    err = capsys.readouterr().err
    assert err.count("note: fuse.scales (--scales): scale 0.5 skipped for a 48x40 (WxH) pair") == 1, err
    res = fuse_images(shots[0], shots[1], nets, params)
    hits = [n for r in fuse_stack(shots, nets, params, ["a", "b", "c"]) for n in r.notes if "skipped" in n]
    assert len(hits) == 1, hits

    from bafusion.fusion.working import scales_note

    assert [n for n in res.notes if "skipped" in n] == [scales_note((40, 48), params, 32)], res.notes
    note = scales_note((300, 400), params, 32)  # 150 px short side at 0.5: under 256
    assert note is not None and "0.5 skipped" in note and "400x300" in note and "256 px" in note, note
    assert scales_note((600, 800), params, 32) is None  # 300 px at 0.5: used
    # a net's patch side larger than fuse.scale_min_side is the limit: named, not scale_min_side
    # (the note said "under fuse.scale_min_side (64 px)" of a 32 px setting)
    note = scales_note((100, 120), FusionParams(scales=(1.0, 0.5), working_min=0, scale_min_side=32), 64)
    assert note is not None and ("short side would be under the initial net's patch side (64 px; "
                                 "fuse.scale_min_side, 32 px, is less)") in note, note
    assert "under fuse.scale_min_side (256 px)" in scales_note((300, 400), params, 32)
    assert scales_note((300, 400), FusionParams(working_min=0), 32) is None  # the default: one scale
    assert scales_note((300, 400), FusionParams(scales=(1.0, 0.5), exact=True), 32) is None  # exact: one scale
