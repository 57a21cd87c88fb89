"""Realistic composites (``composite.realistic``): each degradation does what its docstring
says, labels stay the matte's, and with everything off the composites are the paper's."""

from __future__ import annotations

import io
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from bafusion.data.composite import (
    CompositeOptions,
    PairDraw,
    Realism,
    ShotDraw,
    blur,
    composite_float,
    composite_realistic,
    defocus,
    disc_kernel,
    draw_realism,
    run_shard,
    warp_similarity,
)
from bafusion.data.prepare import PrepareOptions, run_prepare
from bafusion.errors import UserError
from bafusion.io import to_uint8

NEUTRAL = ShotDraw(gain=1.0, wb=(1.0, 1.0, 1.0), gamma=1.0, noise=0.0, jpeg=0)


def _draw(kernel: str = "gaussian", shift=(0.0, 0.0), mag: float = 1.0, a: ShotDraw = NEUTRAL, b: ShotDraw = NEUTRAL) -> PairDraw:
    return PairDraw(kernel, shift, mag, a, b)


def _scene(h: int = 48, w: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    fg = rng.uniform(0, 255, (h, w))
    bg = rng.uniform(0, 255, (h, w))
    alpha = np.zeros((h, w))
    alpha[:, : w // 2] = 1.0
    return fg, bg, alpha


def test_all_off_is_the_paper_composite() -> None:
    fg, bg, alpha = _scene()
    r = Realism()
    assert not r.active
    A, B = composite_realistic(fg, alpha, bg, 2.0, r, draw_realism(0, 7, r))
    pA, pB = composite_float(fg, bg, alpha, 2.0)
    assert np.array_equal(A, to_uint8(pA)) and np.array_equal(B, to_uint8(pB))


def test_disc_kernel_is_a_normalised_soft_disc() -> None:
    k = disc_kernel(4.0)
    assert k.shape == (11, 11) and abs(k.sum() - 1) < 1e-12
    c = k[5, 5]
    assert np.allclose(k[5, 5 - 3 : 5 + 4], c)  # flat inside the radius on the axis
    assert np.isclose(k[5, 1], c / 2) and np.isclose(k[5, 9], c / 2)  # half at the radius: the soft edge
    assert k[5, 0] == 0 and k[0, 0] == 0  # nothing beyond it
    # Second moment of a disc of radius 2*sigma equals that of the Gaussian of sigma (approx.).
    y, x = np.mgrid[-5:6, -5:6]
    assert abs((k * x**2).sum() - 2.0**2) < 0.35


def test_disc_defocus_of_a_point_is_the_kernel() -> None:
    img = np.zeros((41, 41))
    img[20, 20] = 1.0
    out = defocus(img, 3.0, "disc")
    k = disc_kernel(6.0)
    n = k.shape[0] // 2
    assert np.allclose(out[20 - n : 21 + n, 20 - n : 21 + n], k, atol=1e-12)
    assert np.allclose(defocus(img, 1.5, "gaussian"), blur(img, 1.5))


def test_spread_lets_the_blurred_foreground_cover_the_background_in_b_only() -> None:
    h, w = 40, 60
    fg = np.full((h, w), 250.0)
    bg = np.full((h, w), 10.0)
    alpha = np.zeros((h, w))
    alpha[:, :30] = 1.0
    plain = Realism(kernel="disc")
    spread = Realism(kernel="disc", spread=True)
    A0, B0 = composite_realistic(fg, alpha, bg, 2.0, plain, _draw("disc"))
    A1, B1 = composite_realistic(fg, alpha, bg, 2.0, spread, _draw("disc"))
    assert np.array_equal(A0, A1)  # A: no bleeding over the sharp foreground either way
    assert np.all(B0[:, 30:] == 10)  # the paper's B: background pixels untouched
    # With spread, the background pixels next to the edge get the foreground's light ...
    assert B1[:, 31].min() > 60 and B1[:, 30 + 4 + 2].max() == 10
    # ... as blur(FG*GT) + BG*(1 - blur(GT)) says.
    ba = defocus(alpha, 2.0, "disc")
    expected = to_uint8(defocus(fg * alpha, 2.0, "disc") + bg * (1 - ba))
    assert np.array_equal(B1, expected)


def test_shift_and_magnification_move_b_only() -> None:
    fg, bg, alpha = _scene(64, 64, 1)
    r = Realism(shift=3.0, scale=0.02)
    A0, B0 = composite_realistic(fg, alpha, bg, 1.5, Realism(), _draw())
    A1, B1 = composite_realistic(fg, alpha, bg, 1.5, r, _draw(shift=(0.0, 3.0)))
    assert np.array_equal(A0, A1)
    # An integer shift along x: B1(y, x) = B0(y, x - 3) away from the border.
    assert np.array_equal(B1[:, 3:], B0[:, :-3])
    # Magnification about the centre: the centre stays, a point off-centre moves outwards.
    img = np.zeros((65, 65))
    img[32, 52] = 1.0
    out = warp_similarity(img, (0.0, 0.0), 1.05)
    assert np.unravel_index(out.argmax(), out.shape) == (32, 53)  # 32 + 20 * 1.05 = 53


def test_residual_blurs_the_in_focus_layer_less_than_the_other_shot() -> None:
    fg, bg, alpha = _scene(48, 64, 2)
    sigma = 3.0
    for kernel, spread in (("gaussian", False), ("disc", True)):
        r = Realism(kernel=kernel, spread=spread, residual=0.5)
        d = PairDraw(kernel, (0.0, 0.0), 1.0, NEUTRAL, NEUTRAL, (0.4, 0.25))
        A, B = composite_realistic(fg, alpha, bg, sigma, r, d)
        # A = blur(FG, 0.4 sigma) GT + blur(BG, sigma) (1 - GT); B's background blurred by 0.25 sigma.
        eA = defocus(fg, 0.4 * sigma, kernel) * alpha + defocus(bg, sigma, kernel) * (1 - alpha)
        bg_b = defocus(bg, 0.25 * sigma, kernel)
        if spread:
            eB = defocus(fg * alpha, sigma, kernel) + bg_b * (1 - defocus(alpha, sigma, kernel))
        else:
            eB = defocus(fg, sigma, kernel) * alpha + bg_b * (1 - alpha)
        assert np.array_equal(A, to_uint8(eA)) and np.array_equal(B, to_uint8(eB))
        # The in-focus layer is still the sharper one: more gradient energy than the other shot's.
        gy = lambda x: np.abs(np.diff(x.astype(float), axis=1))  # noqa: E731
        assert gy(A)[:, 4:24].mean() > 1.5 * gy(B)[:, 4:24].mean()
        assert gy(B)[:, 40:60].mean() > 1.5 * gy(A)[:, 40:60].mean()
    # Off (the default, and a zero draw): the composite is the one without it, byte for byte.
    r0, r1 = Realism(spread=True), Realism(spread=True, residual=0.5)
    A0, B0 = composite_realistic(fg, alpha, bg, sigma, r0, _draw())
    A1, B1 = composite_realistic(fg, alpha, bg, sigma, r1, _draw())  # residual (0, 0)
    assert np.array_equal(A0, A1) and np.array_equal(B0, B1)


def test_residual_draws_do_not_move_the_other_draws() -> None:
    base = Realism(kernel="mixed", exposure=0.3, gamma=0.1, noise=2.0, jpeg=(75, 98), shift=1.5, scale=0.02)
    with_res = Realism(**{**base.as_dict(), "jpeg": (75, 98), "residual": 0.3})
    for i in range(50):
        d0, d1 = draw_realism(0, i, base), draw_realism(0, i, with_res)
        assert d0.residual == (0.0, 0.0) and all(0 <= v <= 0.3 for v in d1.residual)
        assert (d0.kernel, d0.shift, d0.magnification, d0.a, d0.b) == (d1.kernel, d1.shift, d1.magnification, d1.a, d1.b)
    assert len({draw_realism(0, i, with_res).residual for i in range(50)}) == 50
    with pytest.raises(UserError, match="residual"):
        Realism(residual=1.0)


def test_exposure_gamma_and_white_balance_follow_their_formulas() -> None:
    h, w = 16, 16
    fg = np.full((h, w, 3), 100.0)
    bg = np.full((h, w, 3), 100.0)
    alpha = np.ones((h, w))
    shot = ShotDraw(gain=1.5, wb=(1.0, 0.9, 1.1), gamma=0.8, noise=0.0, jpeg=0)
    r = Realism(exposure=1.0, white_balance=0.1, gamma=0.2)
    A, B = composite_realistic(fg, alpha, bg, 1.0, r, _draw(a=shot), gray=False)
    lin = np.clip(100.0 * 1.5 * np.array([1.0, 0.9, 1.1]), 0, 255)
    expected = to_uint8(255.0 * (lin / 255.0) ** 0.8)
    assert np.array_equal(A[0, 0], expected)
    assert np.all(B == 100)  # B drew the neutral shot
    # Gray output: the same pipeline, then MATLAB's rgb2gray weights.
    Ag, _ = composite_realistic(fg, alpha, bg, 1.0, r, _draw(a=shot), gray=True)
    assert Ag.ndim == 2 and abs(int(Ag[0, 0]) - float(255.0 * (lin / 255.0) ** 0.8 @ [0.298936021293775, 0.587043074451121, 0.114020904255103])) <= 1


def test_noise_and_jpeg() -> None:
    fg = np.full((64, 64), 128.0)
    alpha = np.ones((64, 64))
    noisy = ShotDraw(1.0, (1.0, 1.0, 1.0), 1.0, 5.0, 0)
    A, _ = composite_realistic(fg, alpha, fg, 1.0, Realism(noise=5.0), _draw(a=noisy), noise_seed=(0, 1))
    assert 4.5 < A.astype(float).std() < 5.5
    A2, _ = composite_realistic(fg, alpha, fg, 1.0, Realism(noise=5.0), _draw(a=noisy), noise_seed=(0, 1))
    assert np.array_equal(A, A2)  # seeded
    rng = np.random.default_rng(0)
    tex = rng.uniform(0, 255, (64, 64))
    jp = ShotDraw(1.0, (1.0, 1.0, 1.0), 1.0, 0.0, 60)
    A3, _ = composite_realistic(tex, alpha, tex, 1.0, Realism(jpeg=(60, 60)), _draw(a=jp))
    buf = io.BytesIO()
    Image.fromarray(to_uint8(tex)).save(buf, format="JPEG", quality=60, subsampling=2)
    assert np.array_equal(A3, np.asarray(Image.open(io.BytesIO(buf.getvalue()))))


def test_draws_are_seeded_and_within_the_ranges() -> None:
    r = Realism(kernel="mixed", exposure=1.0, white_balance=0.1, gamma=0.2, noise=3.0, jpeg=(70, 95), shift=2.0, scale=0.02)
    draws = [draw_realism(0, i, r) for i in range(200)]
    assert draw_realism(0, 5, r) == draws[5]
    assert {d.kernel for d in draws} == {"gaussian", "disc"}
    for d in draws:
        assert max(abs(d.shift[0]), abs(d.shift[1])) <= 2.0 and abs(d.magnification - 1) <= 0.02
        for s in (d.a, d.b):
            assert 2**-0.5 <= s.gain <= 2**0.5 and 70 <= s.jpeg <= 95 and 0 <= s.noise <= 3.0
            assert abs(s.gamma - 1) <= 0.2 and all(abs(g - 1) <= 0.1 for g in s.wb)


@pytest.mark.parametrize(
    "bad",
    [{"kernel": "box"}, {"exposure": -1}, {"jpeg": [0, 200]}, {"jpeg": 80}, {"gamma": 1.5}, {"bogus": 1}]
    + [{k: float("inf")} for k in ("exposure", "noise", "shift")]  # inf was an OverflowError traceback
    # finite but huge: exposure 1e300 was an OverflowError ("internal error"), shift 1e20 a segfault
    + [{"exposure": 1e300}, {"exposure": 16.5}, {"shift": 1e20}, {"shift": 4097}],
)
def test_bad_realism_is_refused_naming_the_key(bad: dict) -> None:
    with pytest.raises(UserError, match="composite.realistic"):
        Realism.from_mapping(bad)


def _prepared(tmp_path: Path) -> Path:
    am, bgd = tmp_path / "am", tmp_path / "bg"
    rng = np.random.default_rng(0)
    for i in range(2):
        (am / "input").mkdir(parents=True, exist_ok=True)
        (am / "gt").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)).save(am / "input" / f"GT{i:02d}.png")
        m = np.zeros((80, 100), np.uint8)
        m[:, : 40 + 10 * i] = 255
        Image.fromarray(np.repeat(m[..., None], 3, axis=2)).save(am / "gt" / f"GT{i:02d}.png")
    bgd.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(bgd / f"{i:012d}.jpg")
    cfg = {"source": "dir", "dir": {"alphamatting": str(am), "backgrounds": str(bgd)}}
    run_prepare(cfg, PrepareOptions(scale=0.5), 0, tmp_path / "prepared", progress=False)
    return tmp_path / "prepared"


def test_realistic_shard_keeps_labels_and_logs_draws(tmp_path: Path) -> None:
    prepared = _prepared(tmp_path)
    paper, real = tmp_path / "paper.h5", tmp_path / "real.h5"
    run_shard(prepared, 0, 1, CompositeOptions(), paper, progress=False)
    r = Realism(kernel="mixed", spread=True, exposure=0.5, white_balance=0.05, gamma=0.1, noise=2.0,
                jpeg=(70, 95), shift=1.5, scale=0.01)
    run_shard(prepared, 0, 1, CompositeOptions(realistic=r), real, progress=False)
    with h5py.File(paper) as p, h5py.File(real) as q:
        assert "realistic" not in json.loads(p.attrs["params"])  # the paper's attributes unchanged
        assert json.loads(q.attrs["params"])["realistic"]["kernel"] == "mixed"
        for k in p.keys():
            assert np.array_equal(p[k]["matte"][()], q[k]["matte"][()])  # labels: the matte's
            assert np.array_equal(p[k]["sigma"][()], q[k]["sigma"][()])  # the same sigma draws
            assert not np.array_equal(p[k]["B"][()], q[k]["B"][()])
            draws = json.loads(q[k].attrs["realistic_draws"])
            assert len(draws) == p[k]["A"].shape[0] and "magnification" in draws[0]
    # Deterministic: the same options give the same bytes of A and B.
    again = tmp_path / "again.h5"
    run_shard(prepared, 0, 1, CompositeOptions(realistic=r), again, progress=False)
    with h5py.File(real) as q, h5py.File(again) as g:
        for k in q.keys():
            assert np.array_equal(q[k]["A"][()], g[k]["A"][()]) and np.array_equal(q[k]["B"][()], g[k]["B"][()])


def test_a_recorded_stop_ends_the_shard_at_the_next_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # SIGTERM's SystemExit is often lost in h5py's weakref callbacks during the writes: the
    # shard then ran to its end (the output was refused only at the rename)
    import signal

    from bafusion import atomic
    from bafusion.data import composite as comp

    prepared = _prepared(tmp_path)
    made = []
    real_composite = comp.composite_float

    def composite_and_stop(*a, **k):
        made.append(1)
        atomic.request_stop(signal.SIGTERM)  # as the handler does before its exception is lost
        return real_composite(*a, **k)

    monkeypatch.setattr(comp, "composite_float", composite_and_stop)
    try:
        with pytest.raises(SystemExit) as e:
            run_shard(prepared, 0, 1, CompositeOptions(), tmp_path / "s.h5", progress=False)
    finally:
        atomic.clear_stop()
    assert e.value.code == 143 and len(made) == 1
    assert not (tmp_path / "s.h5").exists() and not list(tmp_path.glob("s.h5.part*")) and not list(tmp_path.glob(".s.h5.part-*"))


def test_the_largest_exposure_and_shift_are_the_schemas_and_composite() -> None:
    """``composite.realistic.exposure: 1e300`` passed the schema and ``snakemake -n``, then the
    composite job died in ``2.0 ** u`` (OverflowError, from about 2048 stops); ``shift: 1e20``
    killed the job with a segmentation fault in the warp. Both are bounded, in the schema and in
    :class:`Realism`, by the same numbers, and the largest value composites."""
    from bafusion.data.composite import MAX_EXPOSURE_STOPS, MAX_SHIFT_PX
    from bafusion.schema import maximum, problems

    assert maximum("composite.realistic.exposure") == MAX_EXPOSURE_STOPS
    assert maximum("composite.realistic.shift") == MAX_SHIFT_PX
    assert problems({"composite": {"realistic": {"exposure": 1e300, "shift": 1e20}}}) == [
        "composite.realistic.exposure: 1e+300 is not a number <= 16",
        "composite.realistic.shift: 1e+20 is not a number <= 4096"]
    r = Realism(exposure=MAX_EXPOSURE_STOPS, shift=MAX_SHIFT_PX)
    fg = np.full((40, 40, 3), 200, np.uint8)
    alpha = np.zeros((40, 40), np.float32)
    alpha[:, :20] = 1
    a, b = composite_realistic(fg, alpha, fg // 2, 1.5, r, draw_realism(0, 7, r), gray=True)
    assert a.shape == b.shape == (40, 40) and a.dtype == b.dtype == np.uint8
