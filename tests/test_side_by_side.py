"""The numpy/scipy steps of a fusion side by side on the command's threads
(:func:`bafusion.threads.side_by_side`): the two gray conversions, exposure matching's two
low-pass filters and the band's guided-filter tiles (the shots are read one after the other:
BENCHMARKS.md, "Side by side on --threads"). Each test checks that the
work is dispatched to the pool with two threads (and stays in the calling thread with one) and
that the results are the same bits either way; timings: BENCHMARKS.md (``bench_phases.py``)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from scipy import ndimage

from bafusion.threads import side_by_side, torch_threads, work_threads

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _where() -> str:
    return threading.current_thread().name


def test_side_by_side_keeps_the_order_and_raises_the_first_error_in_order() -> None:
    main = _where()
    for threads in (1, 2, 3):
        seen: list[str] = []
        done: list[int] = []
        out = side_by_side([lambda i=i: (seen.append(_where()), i * i)[1] for i in range(5)], threads=threads,
                           done=done.append)
        assert out == [0, 1, 4, 9, 16] and done == [0, 1, 2, 3, 4]
        if threads == 1:
            assert set(seen) == {main}  # one thread: a plain loop in the caller's thread
        else:
            assert main not in seen and all(n.startswith("bafusion") for n in seen)
    ev = threading.Event()

    def late() -> None:  # the second call fails first in time: the first (in order) is raised
        ev.wait(5)
        raise ValueError("first")

    def early() -> None:
        ev.set()
        raise KeyError("second")

    with pytest.raises(ValueError, match="first"):
        side_by_side([late, early], threads=2)
    assert side_by_side([], threads=2) == []


def test_the_thread_setting_is_torchs() -> None:
    assert work_threads() == 1  # one_torch_thread
    with torch_threads(3):
        assert work_threads() == 3
        assert threading.current_thread().name not in side_by_side([_where, _where])  # threads=None: torch's


def test_exposure_matchings_low_passes_run_side_by_side_with_the_same_bits(monkeypatch) -> None:
    import bafusion.fusion.exposure as ex

    rng = np.random.default_rng(3)
    g = ndimage.gaussian_filter(rng.normal(128, 40, (300, 400)), 3)
    ga = np.clip(g, 0, 255).astype(np.uint8)
    gb = np.clip(0.8 * g + 10 + rng.normal(0, 3, g.shape), 0, 255).astype(np.uint8)
    calls: list[str] = []

    class Recording:
        @staticmethod
        def gaussian_filter(*a, **k):
            calls.append(_where())
            return ndimage.gaussian_filter(*a, **k)

    monkeypatch.setattr(ex, "ndimage", Recording)
    fits, matched = {}, {}
    for threads in (1, 2):
        calls.clear()
        with torch_threads(threads):
            fits[threads] = ex.fit_exposure(ga, gb)
            matched[threads] = ex.match_exposure(ga, gb)
        where = set(calls)
        assert len(calls) == 4
        if threads == 1:
            assert where == {threading.current_thread().name}
        else:
            assert threading.current_thread().name not in where, "the two filters ran in the caller's thread"
    assert fits[1] == fits[2] and abs(fits[1][0] - 1.25) < 0.05  # the same floats, bit for bit
    assert matched[1].tobytes() == matched[2].tobytes()


def test_the_gray_conversions_and_the_bands_tiles_run_side_by_side_with_the_same_bits(monkeypatch) -> None:
    """A 1200x1600 pair decided at 256 px: its band spans several 512-px tiles."""
    import bafusion.fusion.rule as rule
    import bafusion.fusion.working as working
    from bafusion.fusion import FusionParams, fuse_images, load_nets_from_dir
    from bafusion.io import resize

    h, w = 1200, 1600
    rng = np.random.default_rng(5)
    g = resize(np.clip(ndimage.gaussian_filter(rng.normal(128, 60, (150, 200)), 1), 0, 255).astype(np.uint8), (h, w))
    g = np.stack([g, np.roll(g, 7, 0), np.roll(g, 5, 1)], -1)
    yy, xx = np.mgrid[:h, :w]
    focus = (((yy - h / 2) / (0.35 * h)) ** 2 + ((xx - w / 2) / (0.35 * w)) ** 2 < 1)[..., None]
    blur = ndimage.gaussian_filter(g.astype(np.float64), (3, 3, 0))
    a = np.where(focus, g, blur).round().astype(np.uint8)
    b = np.where(focus, blur, g).round().astype(np.uint8)
    nets = load_nets_from_dir(None, "cpu")
    params = FusionParams(working_side=256, working_above=512)
    # torch's own threads stay at the fixture's one, the side-by-side steps get the threads asked
    # for: on an AMD EPYC with AVX-512 the nets' scores on one and on two torch threads differ in
    # their last bits (score_initial, with c9e5fb2's code too), which is torch's splitting of the
    # convolutions, not the side-by-side steps this test is about
    import torch

    import bafusion.threads as bt

    asked = [1]
    monkeypatch.setattr(torch, "set_num_threads", lambda n: asked.__setitem__(0, int(n)))
    monkeypatch.setattr(bt, "work_threads", lambda: asked[0])
    tiles: list[str] = []
    grays: list[str] = []
    gf, gray = working.guided_filter, rule.to_gray_u8
    monkeypatch.setattr(working, "guided_filter", lambda *x, **k: (tiles.append(_where()), gf(*x, **k))[1])
    monkeypatch.setattr(rule, "to_gray_u8", lambda x: (grays.append(_where()), gray(x))[1])
    res = {}
    for threads in (1, 2):
        tiles.clear()
        grays.clear()
        asked[0] = 1  # torch's own setting (the fixture's): what torch_threads compares with
        res[threads] = fuse_images(a, b, nets, params, threads=threads)
        assert torch.get_num_threads() == 1 and asked[0] == threads
        assert len(tiles) >= 3 and len(grays) == 2
        main = threading.current_thread().name
        if threads == 1:
            assert set(tiles) == set(grays) == {main}
        else:
            assert main not in tiles and main not in grays, "the tiles or the gray conversions ran in the caller's thread"
    one, two = res[1], res[2]
    for name in ("fused", "score_initial", "score_mean", "near_boundary", "score_refined", "decision_raw", "decision"):
        x, y = getattr(one, name), getattr(two, name)
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), name
    assert 0.2 < one.decision.mean() < 0.8  # a decision with a boundary, not one source


def test_two_shots_converted_to_gray_side_by_side_build_the_table_once(monkeypatch) -> None:
    import bafusion.io.convert as cv

    monkeypatch.setattr(cv, "_GRAY_TABLE", None)
    built: list[int] = []
    to_u8 = cv.to_uint8
    monkeypatch.setattr(cv, "to_uint8", lambda x: (built.append(1), to_u8(x))[1])  # 16 calls a table
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8) for _ in range(2))
    ga, gb = side_by_side([lambda: cv.to_gray_u8(a), lambda: cv.to_gray_u8(b)], threads=2)
    assert len(built) == 16
    for x, g in ((a, ga), (b, gb)):  # the table's bits are the weighted sum's
        assert g.tobytes() == to_u8(cv._matlab_sum(x)).tobytes()
