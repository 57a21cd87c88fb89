"""Do the shots move? The coarse motion estimate behind the hint that ``fuse`` and ``fuse-dir``
print without ``--align`` (issue 13: handheld real shots; BENCHMARKS.md "Do the shots move?")."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_align import _centre, _focus_pair, _texture

from bafusion.cli import main as cli_main
from bafusion.fusion import align, batch, scene
from bafusion.fusion.align import similarity_matrix, warp_to_first
from bafusion.fusion.scene import (
    DEFOCUS_EXPLAINS,
    HINT_MOTION_PX,
    coarse_motion,
    motion_hints,
    shot_motions,
)

#: The time a line on stderr starts with in a log (bafusion.progress.stamped), off a terminal.
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d"

MOVED = math.hypot(4.0, 3.0)  # the corner motion of a (4, 3) px shift: 5 px


def _printed_px(line: str) -> float:
    """The motion a hint or an --align auto line prints."""
    return float(re.search(r"moves about ([0-9.]+) px", line).group(1))


def _moved(b: np.ndarray, shift: tuple[float, float], scale: float = 1.0) -> np.ndarray:
    return warp_to_first(b, similarity_matrix(shift, 0.0, scale, center=_centre(b)), order=3)


def _corner_rms(shape: tuple[int, ...], shift: tuple[float, float], scale: float) -> float:
    h, w = shape[:2]
    t = similarity_matrix(shift, 0.0, scale, center=((w - 1) / 2, (h - 1) / 2))
    return align.corner_rms(t, shape)


@pytest.mark.parametrize("shift,scale", [((0.0, 0.0), 1.0), ((3.0, -2.0), 1.0), ((1.0, 1.5), 1.01)])
def test_a_known_motion_is_measured_in_the_shots_pixels(shift, scale) -> None:
    a, b = _focus_pair(_texture(11, 200, 240))
    d = coarse_motion(a, _moved(b, shift, scale))
    assert d is not None and abs(d - _corner_rms(a.shape, shift, scale)) < 0.3, d


def test_large_shots_are_reduced_and_the_motion_comes_back_in_their_own_pixels() -> None:
    a, b = _focus_pair(_texture(12, 600, 1200))  # reduced by 3 to a long side of 400 at most 520
    shift = (7.5, 4.5)
    d = coarse_motion(a, _moved(b, shift))
    assert d is not None and abs(d - math.hypot(*shift)) < 0.6, d
    # estimated on the unreduced shots (side 2000), the same motion in the same pixels
    assert abs(coarse_motion(a, _moved(b, shift), side=2000) - d) < 0.6


def test_in_large_shots_the_motion_must_also_show_at_the_reduced_scale(capsys) -> None:
    a, b = _focus_pair(_texture(19, 1200, 2400))  # reduced by 5 to 240x480
    assert scene.HINT_REDUCED_PX * 5 > 2.2 > HINT_MOTION_PX
    assert motion_hints([a, _moved(b, (2.2, 0.0))], ["a", "b"]) == []  # 0.44 px reduced: within the estimate's error
    assert batch._auto_align([a, _moved(b, (2.2, 0.0))], ["a", "b"], True) == "none"
    assert "under 0.5 px at the reduced scale" in capsys.readouterr().err
    assert len(motion_hints([a, _moved(b, (4.0, 0.0))], ["a", "b"])) == 1  # 0.8 px reduced
    small_a, small_b = _focus_pair(_texture(19, 200, 240))  # not reduced: 2.2 px is a hint
    assert len(motion_hints([small_a, _moved(small_b, (2.2, 0.0))], ["a", "b"])) == 1


def test_too_small_shots_are_not_judged() -> None:
    a, b = _focus_pair(_texture(13, 40, 60))
    assert coarse_motion(a, b) is None


def test_a_motion_whose_registration_matches_the_shots_worse_gets_no_hint(monkeypatch) -> None:
    a, b = _focus_pair(_texture(14, 200, 240))
    b = _moved(b, (3.0, 3.0))
    assert len(motion_hints([a, b], ["a", "b"])) == 1
    wrong = similarity_matrix((-9.0, 7.0), 4.0, 1.08, center=_centre(a))  # a failed registration
    monkeypatch.setattr(align, "estimate_transform", lambda *args, **kw: wrong)
    assert coarse_motion(a, b) > HINT_MOTION_PX  # reported as motion ...
    assert motion_hints([a, b], ["a", "b"]) == []  # ... but no hint: it does not explain the shots


def test_only_the_shots_that_move_get_a_hint() -> None:
    a, b = _focus_pair(_texture(15, 200, 240))
    still = b.copy()
    lines = motion_hints([a, still, _moved(b, (4.0, 3.0))], ["a.png", "still.png", "moved.png"])
    assert len(lines) == 1 and lines[0].startswith("moved.png: moves about") and "against a.png" in lines[0], lines
    assert abs(_printed_px(lines[0]) - MOVED) <= 0.3 and "--align similarity" in lines[0]
    assert motion_hints([a, _moved(b, (1.0, 0.5))], ["a.png", "b.png"]) == []  # below HINT_MOTION_PX
    assert HINT_MOTION_PX > math.hypot(1.0, 0.5)


@pytest.fixture
def nets(tiny_nets: Path) -> Path:
    return tiny_nets


def _write_pair(folder: Path, shift: tuple[float, float], prefix: str = "") -> tuple[Path, Path]:
    a, b = _focus_pair(_texture(16, 120, 136))
    pa, pb = folder / f"{prefix}a.png", folder / f"{prefix}b.png"
    Image.fromarray(a).save(pa)
    Image.fromarray(_moved(b, shift)).save(pb)
    return pa, pb


def test_fuse_hints_at_align_when_the_shots_move_unless_told_none(tmp_path: Path, nets: Path, capsys) -> None:
    pa, pb = _write_pair(tmp_path, (4.0, -3.0))
    argv = ["fuse", str(pa), str(pb), "-o", str(tmp_path / "f.png"), "--model", str(nets), "--device", "cpu"]
    assert cli_main(argv) == 0
    err = capsys.readouterr().err
    hint = [ln for ln in err.splitlines() if "moves about" in ln]
    assert len(hint) == 1 and hint[0].startswith(f"bafusion fuse: {pb}: moves about") and "--align similarity" in hint[0]
    assert abs(_printed_px(hint[0]) - MOVED) <= 0.3
    assert cli_main([*argv, "--align", "none"]) == 0  # the user said the shots are registered
    assert "moves about" not in capsys.readouterr().err
    assert cli_main([*argv, "--align", "similarity"]) == 0  # aligned: nothing to hint
    assert "moves about" not in capsys.readouterr().err


def test_fuse_says_nothing_about_registered_shots(tmp_path: Path, nets: Path, capsys) -> None:
    pa, pb = _write_pair(tmp_path, (0.0, 0.0))
    assert cli_main(["fuse", str(pa), str(pb), "-o", str(tmp_path / "f.png"), "--model", str(nets),
                     "--device", "cpu"]) == 0
    assert "moves about" not in capsys.readouterr().err


def test_fuse_dir_hints_per_stack(tmp_path: Path, nets: Path, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    _write_pair(src, (4.0, -3.0), "moved-")
    _write_pair(src, (0.0, 0.0), "still-")
    for p in src.iterdir():  # the naming rule of fuse-dir: <name>-A / <name>-B
        p.rename(src / p.name.replace("-a.png", "-A.png").replace("-b.png", "-B.png"))
    assert cli_main(["fuse-dir", str(src), str(tmp_path / "out"), "--model", str(nets), "--device", "cpu",
                     "--quiet"]) == 0
    hint = [ln for ln in capsys.readouterr().err.splitlines() if "moves about" in ln]
    assert len(hint) == 1 and "moved-B.png" in hint[0], hint
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["moved.png", "still.png"]


def test_the_hint_threshold_can_be_lowered() -> None:
    a, b = _focus_pair(_texture(17, 200, 240))
    moved = _moved(b, (1.2, 0.0))
    assert motion_hints([a, moved], ["a", "b"]) == []  # 1.2 px: below the default 2 px
    assert len(motion_hints([a, moved], ["a", "b"], threshold=1.0)) == 1


def test_every_shot_gets_a_verdict() -> None:
    a, b = _focus_pair(_texture(20, 200, 240))
    got = shot_motions([a, b, _moved(b, (4.0, 3.0))])
    assert [(sm.index, sm.verdict) for sm in got] == [(1, "still"), (2, "moves")]
    assert got[0].px < 0.3 and abs(got[1].px - MOVED) < 0.3
    assert [sm.verdict for sm in shot_motions([a[:50], b[:50]])] == ["too small"]


def _product_shot(defocus: float) -> tuple[np.ndarray, np.ndarray]:
    """benchmarks/bench_motion_hint.py's registered product shot (object on a smooth backdrop,
    defocus spread as optics make it), 400x300."""
    import sys

    bench = str(Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, bench)
    try:
        from bench_motion_hint import product_shot
    finally:
        sys.path.remove(bench)
    return product_shot(defocus, 300, 400)


def test_the_defocus_spread_of_a_registered_product_shot_is_no_motion(capsys) -> None:
    """The blurred object spreading over the backdrop reads as a magnification (3.3 px): that
    estimate, which the shots' detail does not bear out, is now replaced by the translation
    (bafusion.fusion.align.SUPPORT_PX; before that the blur ladder of shot_motions said
    "defocus"): no hint, --align auto leaves it; the same pair really moved still gets the hint."""
    a, b = _product_shot(3.0)
    assert coarse_motion(a, b) <= HINT_MOTION_PX
    (sm,) = shot_motions([a, b])
    assert sm.verdict in ("still", "defocus") and min(sm.px, sm.blurred or sm.px) <= HINT_MOTION_PX, sm
    assert motion_hints([a, b], ["a", "b"]) == []
    assert batch._auto_align([a, b], ["a", "b"], True) == "none"
    assert "fused as registered" in capsys.readouterr().err
    (sm,) = shot_motions([a, _moved(b, (4.0, 3.0))])
    assert sm.verdict == "moves" and sm.explains < DEFOCUS_EXPLAINS


def test_a_wide_defocus_spread_is_no_motion_and_focus_breathing_is_one() -> None:
    """A spread wider than DEFOCUS_SIGMA removes (defocus 5 px at 400x300: 9.4 px raw, still
    2.9-4.8 px with a shot blurred by 3 px, which was hinted) is found on the blur ladder: no
    motion fits the blurred pair ~7x better than the estimated one, and the motion estimated
    again at that blur vanishes. A real magnification (focus breathing, 1.02) of a pair that
    differs little in focus is fitted better by the motion at every blur (ratio ~1.03), and
    keeps its hint."""
    from bafusion.data.composite import warp_similarity

    a, b = _product_shot(5.0)
    (sm,) = shot_motions([a, b])
    if sm.verdict == "defocus":  # since align.SUPPORT_PX the raw estimate itself may read it still
        assert sm.explains > 3 * DEFOCUS_EXPLAINS and sm.blurred <= HINT_MOTION_PX < sm.px, sm
    else:
        assert sm.verdict == "still" and sm.px <= HINT_MOTION_PX, sm
    a, b = _product_shot(1.0)
    breathing = np.clip(np.round(warp_similarity(b.astype(np.float64), (0.0, 0.0), 1.02)), 0, 255).astype(np.uint8)
    (sm,) = shot_motions([a, breathing])
    assert sm.verdict == "moves" and sm.explains < 1.1 and sm.px > 2 * HINT_MOTION_PX


def test_a_thin_strip_is_too_small_to_judge() -> None:
    rng = np.random.default_rng(3)
    strip = (rng.random((70, 20000)) * 255).astype(np.uint8)  # reduced by 39: 1 row
    assert coarse_motion(strip, strip) is None
    assert [sm.verdict for sm in shot_motions([strip, strip])] == ["too small"]


def test_align_auto_aligns_moving_shots_and_leaves_registered_ones(tmp_path: Path, nets: Path, capsys) -> None:
    moved_dir, still_dir = tmp_path / "moved", tmp_path / "still"
    moved_dir.mkdir()
    still_dir.mkdir()
    pa, pb = _write_pair(moved_dir, (4.0, -3.0))
    out = tmp_path / "f.png"
    assert cli_main(["fuse", str(pa), str(pb), "-o", str(out), "--model", str(nets), "--device", "cpu",
                     "--align", "auto"]) == 0
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if "--align auto:" in ln)
    # what --align did, on stderr: after the time in a log (here: stderr is not a terminal), as the
    # other lines that say what a step does; they were unstamped
    assert re.match(rf"{STAMP} bafusion fuse: --align auto: {re.escape(str(pb))} moves about", line) and line.endswith(
        f"px against {pa}: aligning (similarity)"), err
    assert abs(_printed_px(line) - MOVED) <= 0.3
    assert any(re.match(rf"{STAMP} bafusion fuse: align crop:", ln) for ln in err.splitlines()), err
    assert any(re.match(rf"{STAMP} bafusion fuse: align {re.escape(str(pb))} -> ", ln) for ln in err.splitlines()), err
    h, w = np.asarray(Image.open(pa)).shape[:2]
    fh, fw = np.asarray(Image.open(out)).shape[:2]
    assert fh < h and fw < w  # cropped to the area both shots cover
    pa, pb = _write_pair(still_dir, (0.0, 0.0))
    assert cli_main(["fuse", str(pa), str(pb), "-o", str(out), "--model", str(nets), "--device", "cpu",
                     "--align", "auto"]) == 0
    err = capsys.readouterr().err
    assert "not more than 2 px: fused as registered" in err and "align crop" not in err, err
    assert cli_main(["fuse", str(pa), str(pb), "-o", str(tmp_path / "g.png"), "--model", str(nets), "--device",
                     "cpu", "--align", "none"]) == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "g.png")))


def test_the_python_api_takes_align_auto(tiny_nets: Path) -> None:
    from bafusion import fuse

    a, b = _focus_pair(_texture(18, 120, 136))
    assert np.array_equal(fuse(a, b, model=str(tiny_nets), device="cpu", align="auto"),
                          fuse(a, b, model=str(tiny_nets), device="cpu"))
    moved = fuse(a, _moved(b, (4.0, -3.0)), model=str(tiny_nets), device="cpu", align="auto")
    assert moved.shape[0] < a.shape[0] and moved.shape[1] < a.shape[1]


def test_the_python_api_warns_when_the_shots_move_unless_told_none(tiny_nets: Path) -> None:
    import warnings

    from bafusion import fuse
    from bafusion.fusion.scene import MotionWarning

    a, b = _focus_pair(_texture(18, 120, 136))
    moved = _moved(b, (4.0, -3.0))
    with pytest.warns(MotionWarning) as caught:
        warned = fuse(a, moved, model=str(tiny_nets), device="cpu")
    assert len(caught) == 1
    text = str(caught[0].message)
    assert text.startswith("source 2: moves about") and 'align="similarity"' in text and "--align" not in text
    assert abs(_printed_px(text) - MOVED) < 0.5
    assert caught[0].filename == __file__  # points at the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for registered shots, nor with align="none"
        assert np.array_equal(fuse(a, moved, model=str(tiny_nets), device="cpu", align="none"), warned)
        fuse(a, b, model=str(tiny_nets), device="cpu")


def test_the_python_api_gives_no_motion_advice_for_two_scenes(tiny_nets: Path) -> None:
    """As the command line: two scenes (which alignment would refuse) get no hint, although
    the motion estimate between them reads as a motion."""
    import warnings

    from bafusion import fuse

    a, _ = _focus_pair(_texture(21, 120, 136))
    _, c = _focus_pair(_texture(22, 120, 136))
    assert [sm.verdict for sm in shot_motions([a, c])] == ["moves"]  # what a hint would have said
    from bafusion.fusion.rule import FusionNoteWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", FusionNoteWarning)  # the two scenes' exposures differ: noted, not advice
        fuse(a, c, model=str(tiny_nets), device="cpu")


def test_align_auto_does_not_align_two_scenes_fused_with_force(tmp_path: Path, nets: Path, capsys) -> None:
    a, _ = _focus_pair(_texture(21, 120, 136))
    _, c = _focus_pair(_texture(22, 120, 136))
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(c).save(tmp_path / "c.png")
    out = tmp_path / "f.png"
    argv = ["fuse", str(tmp_path / "a.png"), str(tmp_path / "c.png"), "-o", str(out), "--model", str(nets),
            "--device", "cpu", "--align", "auto"]
    assert cli_main(argv) == 2  # refused, as without auto
    err = capsys.readouterr().err
    # a shot moved a lot fails the check too: auto tried the alignment before refusing (both numbers)
    assert "does not look like the same scene" in err and "after similarity alignment, below 0.5" in err, err
    assert "or --align similarity if the camera moved a lot" not in err
    assert cli_main([*argv, "--force"]) == 0
    err = capsys.readouterr().err
    assert "do not look like one scene (fused with --force): not aligned" in err and "align crop" not in err, err
    assert np.asarray(Image.open(out)).shape[:2] == a.shape[:2]  # not cropped
    capsys.readouterr()
    assert cli_main([*argv[:-2], "--force"]) == 0  # without --align: no hint for two scenes either
    assert "moves about" not in capsys.readouterr().err


def test_align_auto_says_when_the_shots_are_too_small_to_judge(tmp_path: Path, nets: Path, capsys) -> None:
    a, b = _focus_pair(_texture(23, 48, 60))
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    assert cli_main(["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "f.png"),
                     "--model", str(nets), "--device", "cpu", "--align", "auto"]) == 0
    assert "b.png: too small to judge its motion: fused as registered" in capsys.readouterr().err


def test_featureless_shots_are_too_flat_to_judge_and_get_no_hint(tmp_path: Path, nets: Path, capsys) -> None:
    """Two identical frames of a blank wall, or of sensor noise in the dark: nothing to register
    by; the estimate read 200 px and 95 px ('moves'), and --align auto then refused the pair."""
    rng = np.random.default_rng(0)
    wall = np.full((300, 400), 128, np.uint8)
    dark = rng.poisson(2, (300, 400)).astype(np.uint8)
    dark2 = rng.poisson(2, (300, 400)).astype(np.uint8)
    textured = _focus_pair(_texture(23, 300, 400))[0]
    for shots in ([wall, wall], [dark, dark2], [textured, wall], [wall, textured]):
        assert [(m.px, m.verdict) for m in shot_motions(shots)] == [(None, "too flat")]
        assert motion_hints(shots, ["a.png", "b.png"]) == []
    assert shot_motions([textured, textured])[0].verdict == "still"
    Image.fromarray(wall).save(tmp_path / "a.png")
    Image.fromarray(wall).save(tmp_path / "b.png")
    assert cli_main(["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "f.png"),
                     "--model", str(nets), "--device", "cpu", "--align", "auto"]) == 0
    assert "b.png: too flat to judge its motion" in capsys.readouterr().err


def test_fuse_dir_align_auto_aligns_only_the_stacks_that_move(tmp_path: Path, nets: Path, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    _write_pair(src, (4.0, -3.0), "moved-")
    _write_pair(src, (0.0, 0.0), "still-")
    for p in src.iterdir():
        p.rename(src / p.name.replace("-a.png", "-A.png").replace("-b.png", "-B.png"))
    out = tmp_path / "out"
    assert cli_main(["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu", "--quiet",
                     "--align", "auto"]) == 0
    err = capsys.readouterr().err
    assert "moved-B.png moves about" in err and "aligning (similarity)" in err, err
    assert "still-B.png moves" in err and "fused as registered" in err, err
    h, w = np.asarray(Image.open(src / "still-A.png")).shape[:2]
    assert np.asarray(Image.open(out / "still.png")).shape[:2] == (h, w)
    mh, mw = np.asarray(Image.open(out / "moved.png")).shape[:2]
    assert mh < h and mw < w


def test_fuse_dir_lines_about_a_stacks_motion_name_the_stack(tmp_path: Path, nets: Path, capsys) -> None:
    """fuse-dir's "--align auto: ... moves about ..." lines (and the hints without --align) named
    the files but not the stack, where every other line of a stack starts with its name
    ("bafusion fuse-dir: moved: reading ..."): in a batch of sub-folders of IMG_0001.jpg ... the
    user could not tell which stack moved. They start with the stack's name too."""
    src = tmp_path / "in"
    for stack, shift in (("moved", (4.0, -3.0)), ("still", (0.0, 0.0))):
        (src / stack).mkdir(parents=True)
        _write_pair(src / stack, shift, "IMG_")
    for align in (["--align", "auto"], []):
        out = tmp_path / f"out{len(align)}"
        assert cli_main(["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu", "--quiet",
                         *align]) == 0
        err = capsys.readouterr().err
        moved = [ln for ln in err.splitlines() if "moves about" in ln]
        # --align auto's line says what it did (after the time in a log); the hint without it is a note
        lead = rf"{STAMP} bafusion fuse-dir: moved: --align auto: " if align else "bafusion fuse-dir: moved: "
        assert len(moved) == 1 and re.match(lead + re.escape(str(src / "moved" / "IMG_b.png")), moved[0]), err
        if align:
            assert f"bafusion fuse-dir: still: --align auto: {src / 'still' / 'IMG_b.png'} moves " in err, err


def test_a_blown_out_half_and_a_single_line_get_no_hint_and_are_fused_as_registered(capsys) -> None:
    """Registered pairs whose estimate went astray: a blown-out half of A (scale 0.40, 71 px, and
    --align auto cropped the fusion to 54x33 px) and one-dimensional structure (scale 0.61)."""
    from test_align import _blown_out_pair, _line_pair

    a, b = _blown_out_pair()
    sm = shot_motions([a, b])[0]
    assert sm.verdict == "still" and sm.px < 1.0, sm
    assert motion_hints([a, b], ["a.png", "b.png"]) == []
    a, b = _line_pair()
    sm = shot_motions([a, b])[0]
    assert sm.verdict == "implausible" and "scale 0.6" in sm.reason, sm
    assert motion_hints([a, b], ["a.png", "b.png"]) == []
    assert batch._auto_align([a, b], ["a.png", "b.png"], True) == "none"
    err = capsys.readouterr().err
    assert "b.png: the motion estimate" in err and "is not one a hand-held focus pair shows" in err, err
    assert "fused as registered" in err


def test_a_blown_out_half_of_a_real_pair_gives_no_false_hint(shared_data: Path) -> None:
    """lytro-05 with the left half of A blown out: a false 2.7 px hint before, and --align auto
    then refused the pair as two scenes (match quality 0.37)."""
    from bafusion.io import read_image

    lytro = shared_data / "eval" / "lytro"
    a, b = read_image(lytro / "lytro-05-A.jpg"), read_image(lytro / "lytro-05-B.jpg")
    a[:, : a.shape[1] // 2] = 255
    assert shot_motions([a, b])[0].verdict == "still"
    al = align.align_images([a, b], "similarity")
    assert al.rms_px[1] < 0.5 and al.quality[1] > align.MIN_QUALITY


# ---------------------------------------------------------------- a sideways shot


def test_turned_by_names_the_turn_of_a_shot() -> None:
    from bafusion.fusion.scene import turned_by

    a, b = _focus_pair(_texture(60, 128, 128))
    assert turned_by(a, b) is None  # not turned
    for k, deg in ((-1, 90), (2, 180), (1, 270)):  # np.rot90 turns counter-clockwise
        turn = turned_by(a, np.rot90(b, k))
        assert turn is not None and turn[0] == deg and turn[1] > 0.8, (k, turn)
    assert turned_by(a, _texture(61, 128, 128)) is None


@pytest.mark.parametrize("extra", [[], ["--align", "similarity"], ["--align", "auto"]])
def test_a_sideways_shot_without_orientation_tag_is_named_turned_not_sent_to_align(tmp_path: Path, nets: Path,
                                                                                  capsys, extra: list[str]) -> None:
    """A square pair whose B is turned by 90 degrees (its orientation tag missing): the refusal
    suggested --align similarity, which then failed with match quality 0.26; it now says that B
    looks turned and by how much, without --align or with it."""
    a, b = _focus_pair(_texture(62, 128, 128))
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(np.rot90(b).copy()).save(tmp_path / "b.png")  # turned counter-clockwise
    out = tmp_path / "f.png"
    argv = ["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(out), "--model", str(nets),
            "--device", "cpu", *extra]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "b.png: looks turned by 90 degrees counter-clockwise against" in err[0], err
    assert "its orientation tag may be missing" in err[0], err
    # turning it upright is the advice; --force / --align only for a shot that is not turned (a
    # repeating pattern, e.g. a chessboard moved by one square, can look turned)
    advice, escape = err[0].split("(if it is not turned", 1)
    assert "--align similarity" not in advice and "--force" in escape, err
    if extra == ["--align", "similarity"]:  # it advised the --align similarity just given, which fails alike
        assert "--align" not in escape and "align=" not in escape, err
    assert not out.exists()


def test_bafusion_fuse_names_a_remedy_it_takes_for_a_turned_shot_when_aligning(nets: Path) -> None:
    """bafusion.fuse(..., align="similarity") refusing a turned shot advised force=True (fuse has
    no force) or align='similarity' (given already); it names align="none"."""
    import bafusion
    from bafusion.errors import UserError

    a, b = _focus_pair(_texture(62, 128, 128))
    with pytest.raises(UserError, match="looks turned by 90 degrees") as e:
        bafusion.fuse(a, np.rot90(b).copy(), model=nets, device="cpu", align="similarity")
    escape = str(e.value).split("(if it is not turned", 1)[1]
    assert 'align="none"' in escape and "force" not in escape and "similarity" not in escape, str(e.value)


def test_align_auto_says_a_still_shot_is_aligned_when_another_moves(capsys) -> None:
    """A stack whose second shot moves 1.4 px (not more than 2) and whose third moves 5 px: every
    shot is aligned, the still one too, but its line said "moves 1.4 px ..., not more than 2 px"
    and nothing more, which read as if it were left as it was; a shot of another size (registered
    in any case) had the same line. Each line now says what is done with the shot."""
    a, b = _focus_pair(_texture(16, 120, 136))
    still, moved = _moved(b, (1.2, -0.8)), _moved(b, (4.0, -3.0))
    names = ["a.png", "b.png", "c.png"]
    assert batch._auto_align([a, still, moved], names, True) == "similarity"
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "--align auto:" in ln]
    assert re.match(rf"{STAMP} bafusion: --align auto: b.png moves 1\.", lines[0]) and lines[0].endswith(
        "not more than 2 px: registered with the others (similarity) and cropped to the area they all cover, as "
        "c.png moves"), lines
    assert lines[1].endswith("c.png moves about 5.0 px against a.png: aligning (similarity)"), lines
    # a still shot of another size: "none" here, the caller registers it all the same
    assert batch._auto_align([a, still], names[:2], True, [1]) == "none"
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith("not more than 2 px: registered with the others (similarity) and cropped to the area they "
                         "all cover, as b.png is of another size"), line
    # nothing moves and all of one size: left as they are, as before
    assert batch._auto_align([a, still], names[:2], True) == "none"
    assert capsys.readouterr().err.rstrip().endswith("not more than 2 px: fused as registered")


def test_align_auto_says_the_same_of_a_still_shot_that_is_not_resampled(tmp_path: Path, nets: Path, capsys) -> None:
    """A stack whose second shot does not move (its registration under the 0.1 px tolerance)
    and whose third moves 5 px: the --align auto line said the still shot was "aligned all the
    same (similarity)", then its align line said "not warped (below tolerance)". It is registered
    with the others (its motion estimated: below the tolerance, it is not resampled) and cropped
    to the area they all cover: the lines now say so, and agree (its align line said "kept as it
    is" beside the auto line's "cropped": it is not resampled, and cropped as every shot is)."""
    a, b = _focus_pair(_texture(16, 120, 136))
    still = (a.astype(float) * 0.9 + 12).clip(0, 255).astype(np.uint8)  # another exposure, no motion
    for n, im in (("a", a), ("b", still), ("c", _moved(b, (4.0, -3.0)))):
        Image.fromarray(im).save(tmp_path / f"{n}.png")
    argv = ["fuse", *(str(tmp_path / f"{n}.png") for n in "abc"), "-o", str(tmp_path / "f.png"),
            "--model", str(nets), "--device", "cpu", "--align", "auto"]
    assert cli_main(argv) == 0
    err = capsys.readouterr().err
    (auto,) = [ln for ln in err.splitlines() if "--align auto:" in ln and "b.png moves" in ln]
    assert auto.endswith("not more than 2 px: registered with the others (similarity) and cropped to the area "
                         "they all cover, as " + str(tmp_path / "c.png") + " moves"), auto
    (line,) = [ln for ln in err.splitlines() if "align " + str(tmp_path / "b.png") + " ->" in ln]
    assert line.endswith("not resampled (its motion is below the tolerance)"), line
    assert "kept as it is" not in err, err
    assert "aligned all the same" not in err, err


def test_bench_scene_defaults_are_the_repositorys_from_any_working_folder(tmp_path, monkeypatch) -> None:
    """benchmarks/bench_scene.py's --data and --out defaults were ../shared/data and
    benchmarks/out/scene.csv of the working folder (run from elsewhere: "eval: not found", or a
    CSV written anywhere); they are found from the repository now (bench_motion_hint's
    --part estimate reads its pairs through it)."""
    import sys

    repo = Path(__file__).resolve().parents[1]
    bench = str(repo / "benchmarks")
    sys.path.insert(0, bench)
    try:
        import bench_scene
    finally:
        sys.path.remove(bench)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BAFUSION_SHARED_DATA", raising=False)
    args = bench_scene.build_parser().parse_args([])
    assert Path(args.data) == repo.parent / "shared" / "data", args.data
    assert Path(args.out) == repo / "benchmarks" / "out" / "scene.csv", args.out
