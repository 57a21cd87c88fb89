"""Tests of ``bafusion evaluate``: Table 1 (means, win counts, ties, QCV lower-is-better), bad
input naming the pair and the method, our two variants, and an end-to-end run on two tiny
synthetic pairs whose "published" results are the native baselines' images."""

from __future__ import annotations

import csv
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from figure_panels import lit_lines, record_renders
from PIL import Image
from scipy import ndimage

from bafusion.cli import main as cli_main
from bafusion.errors import InputFileError, UserError
from bafusion.evaluation import evaluate as ev
from bafusion.evaluation.baselines import gff_fuse, laplacian_fuse
from bafusion.io import gray_float, to_uint8
from bafusion.evaluation.metrics import compute_all

# --------------------------------------------------------------------------------------
# Tables from hand-made values
# --------------------------------------------------------------------------------------


def _rows(values: dict[str, dict[str, dict[str, float]]]) -> list[dict]:
    """{pair: {method: {metric: value}}} -> long rows."""
    return [{"pair": p, "method": m, **v} for p, by_m in values.items() for m, v in by_m.items()]


NAN = float("nan")
# QMI (higher is better): p1 X wins; p2 X and Y tie for best (nobody wins); p3 Z wins;
# p4 Y wins although Z has no value there (NaN neither wins nor competes).
# QCV (lower is better): p1 Z (lowest) wins; p2 Y; p3 Y; p4 X.
HAND = _rows(
    {
        "p1": {"X": {"QMI": 1.5, "QCV": 30.0}, "Y": {"QMI": 1.25, "QCV": 20.0}, "Z": {"QMI": 1.0, "QCV": 10.0}},
        "p2": {"X": {"QMI": 1.375, "QCV": 30.0}, "Y": {"QMI": 1.375, "QCV": 5.0}, "Z": {"QMI": 1.125, "QCV": 6.0}},
        "p3": {"X": {"QMI": 1.0, "QCV": 40.0}, "Y": {"QMI": 1.125, "QCV": 7.0}, "Z": {"QMI": 1.25, "QCV": 8.0}},
        "p4": {"X": {"QMI": 1.0, "QCV": 1.0}, "Y": {"QMI": 1.125, "QCV": 2.0}, "Z": {"QMI": NAN, "QCV": 3.0}},
    }
)
# Values are dyadic fractions, so the means below are exact (X and Y tie at 1.21875).


def test_wins_count_strict_best_ties_for_nobody_and_qcv_lower() -> None:
    assert ev.count_wins(HAND, ["X", "Y", "Z"], "QMI") == {"X": 1, "Y": 1, "Z": 1}
    assert ev.count_wins(HAND, ["X", "Y", "Z"], "QCV") == {"X": 1, "Y": 2, "Z": 1}
    # restricted to X and Y: p3 and p4 go to Y, p1 to X, p2 is still a tie
    assert ev.count_wins(HAND, ["X", "Y"], "QMI") == {"X": 1, "Y": 2}


def test_means_skip_nan_and_best_mean_direction() -> None:
    means = ev.mean_values(HAND, ["X", "Y", "Z"], "QMI")
    assert means == {"X": 1.21875, "Y": 1.21875, "Z": 1.125}  # Z: p4's NaN left out
    assert ev.best_methods(means, "QMI") == {"X", "Y"}  # tied best means: both bold
    qcv = ev.mean_values(HAND, ["X", "Y", "Z"], "QCV")
    assert qcv == {"X": 25.25, "Y": 8.5, "Z": 6.75}
    assert ev.best_methods(qcv, "QCV") == {"Z"}  # lowest is best
    assert ev.best_methods({"X": NAN}, "QMI") == set()


def test_table_markdown_cells() -> None:
    text = ev.table_markdown(HAND, ["X", "Y", "Z"], ["QMI", "QCV"])
    lines = text.strip().splitlines()
    assert lines[0] == "| Method | QMI ↑ | QCV ↓ |"
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]]
            for ln in lines[2:] if ln.startswith("| ")}
    assert rows["X"] == ["**1.2188** (1)", "25.2500 (1)"]
    assert rows["Y"] == ["**1.2188** (1)", "8.5000 (2)"]
    assert rows["Z"] == ["1.1250 (n=3/4) (1)", "**6.7500** (1)"]  # Z's QMI: NaN on p4
    assert lines[-1] == ev.PARTIAL_NOTE
    # without NaN: no mark, no note
    assert "(n=" not in ev.table_markdown(HAND, ["X", "Y", "Z"], ["QCV"])
    assert ev.PARTIAL_NOTE not in ev.table_markdown(HAND, ["X", "Y"], ["QMI"])


# Z has the better QCB on p1 and p2 but a flat output on p3 (QCB NaN): over its two defined
# pairs its mean beats X's, which is over all three.
PARTIAL = _rows({
    "p1": {"X": {"QCB": 0.5}, "Z": {"QCB": 0.75}},
    "p2": {"X": {"QCB": 0.5}, "Z": {"QCB": 0.75}},
    "p3": {"X": {"QCB": 0.5}, "Z": {"QCB": NAN}},
})


def test_a_mean_over_fewer_pairs_is_marked_never_best_and_ranked_behind() -> None:
    means = ev.mean_values(PARTIAL, ["X", "Z"], "QCB")
    counts = ev.defined_counts(PARTIAL, ["X", "Z"], "QCB")
    assert means == {"X": 0.5, "Z": 0.75} and counts == {"X": 3, "Z": 2}
    assert ev.best_methods(means, "QCB", counts) == {"X"}  # Z took the bold mean
    assert ev.rank_of(PARTIAL, ["X", "Z"], "QCB", "X") == (1, 2)  # it was 2nd
    assert ev.rank_of(PARTIAL, ["X", "Z"], "QCB", "Z") == (2, 2)  # it was 1st
    text = ev.table_markdown(PARTIAL, ["X", "Z"], ["QCB"])
    assert "| X | **0.5000** (1) |" in text and "| Z | 0.7500 (n=2/3) (2) |" in text and ev.PARTIAL_NOTE in text
    # a pair where nobody has a value leaves every mean over the same pairs: ranked as usual
    flat = [{**r, "QCB": NAN} if r["pair"] == "p3" else r for r in PARTIAL]
    assert ev.rank_of(flat, ["X", "Z"], "QCB", "Z") == (1, 2)
    assert "| Z | **0.7500** (n=2/3) (2) |" in ev.table_markdown(flat, ["X", "Z"], ["QCB"])


def test_a_method_alone_in_a_table_gets_no_bold_and_no_wins() -> None:
    """One method gave '**0.9927** (3)': bold and a win on every pair, with no one to beat."""
    table = ev.table_markdown(HAND, ["X"], ["QMI", "QCV"])
    assert "| X | 1.2188 (0) | 25.2500 (0) |" in table and "**" not in table
    assert ev.count_wins(HAND, ["X"], "QMI") == {"X": 0}
    assert ev.best_methods({"X": 1.0}, "QMI") == set()
    assert ev.count_wins(HAND, ["X", "Z"], "QMI")["X"] == 3  # p1, p2 and p4: X alone with a value wins it, as before


def test_all_nan_column_is_na_without_bold() -> None:
    rows = _rows({"p": {"X": {"QP": NAN}, "Y": {"QP": NAN}}})
    text = ev.table_markdown(rows, ["X", "Y"], ["QP"])
    assert "| X | n/a (0) |" in text and "**" not in text


# --------------------------------------------------------------------------------------
# Synthetic pairs
# --------------------------------------------------------------------------------------


def _pair(rng: np.random.Generator, h: int = 48, w: int = 56) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A, B, truth, true map (True = A focused): textured scene, a disc focused in A."""
    sharp = ndimage.zoom(rng.uniform(0, 255, (h // 3 + 1, w // 3 + 1, 3)), (3, 3, 1), order=1)[:h, :w]
    sharp = np.clip(sharp + rng.normal(0, 20, sharp.shape), 0, 255)
    blurred = ndimage.gaussian_filter(sharp, (2.0, 2.0, 0))
    yy, xx = np.mgrid[:h, :w]
    m = (yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (min(h, w) / 3) ** 2
    a = np.where(m[..., None], sharp, blurred)
    b = np.where(m[..., None], blurred, sharp)
    return to_uint8(a), to_uint8(b), to_uint8(sharp), m


def _write_set(root: Path, names: list[str], seed: int = 3) -> tuple[Path, dict]:
    """An embedded-test-set-like folder (index.json, -A, -B, -truth, -dm) and the images."""
    src = root / "pairs"
    src.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    imgs = {}
    for n in names:
        a, b, t, m = _pair(rng)
        for suffix, img in (("A", a), ("B", b), ("truth", t), ("dm", m.astype(np.uint8) * 255)):
            Image.fromarray(img).save(src / f"{n}-{suffix}.png")
        imgs[n] = (a, b, t, m)
    (src / "index.json").write_text(json.dumps({"pairs": [{"name": n} for n in names]}))
    return src, imgs


def _write_reference(root: Path, imgs: dict, methods: dict) -> Path:
    ref = root / "reference"
    for method, fn in methods.items():
        (ref / method).mkdir(parents=True)
        for n, (a, b, _, _) in imgs.items():
            Image.fromarray(to_uint8(fn(a, b))).save(ref / method / f"{n}.png")
    return ref


def _dataset(src: Path, ref: Path | None, methods: tuple[str, ...]) -> ev.Dataset:
    return ev.Dataset(name="tiny", sources=src, reference=ref, reference_methods=methods)


@pytest.mark.parametrize("raised", [ValueError("operands could not be broadcast"), UserError("a bad value"),
                                    MemoryError()])
def test_a_metric_failing_on_a_pair_names_the_pair_method_and_metric(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raised: BaseException) -> None:
    """A metric raising inside evaluate_pair gave its own message alone (a traceback deep in
    metrics.py, no word of which pair, method or metric). It now names the dataset, pair,
    method and metric, the original exception as its cause: a UserError stays one, any other
    becomes a MetricError; running out of memory is raised as it is (the command's advice is
    about memory)."""
    from bafusion.evaluation import metrics

    src, imgs = _write_set(tmp_path, ["p1", "p2"])
    cfg = ev.parse_config({"methods": ["Laplacian"], "metrics": ["QMI", "QG"], "figures": False, "save_fused": False})
    ds = _dataset(src, None, ())
    pairs = ev.find_pairs(ds)

    def failing(*args, **kwargs):
        raise raised

    monkeypatch.setitem(metrics._IMPLS, "QG", failing)
    with pytest.raises(BaseException) as e:
        ev.evaluate_pair(ds, pairs[1], cfg)
    if isinstance(raised, MemoryError):
        assert e.value is raised
        return
    assert type(e.value) is (UserError if isinstance(raised, UserError) else ev.MetricError), repr(e.value)
    assert e.value.__cause__ is raised
    assert str(e.value).startswith("dataset 'tiny', pair 'p2', method 'Laplacian', metric QG: "), str(e.value)
    assert str(raised) in str(e.value)


def test_missing_fused_image_names_pair_and_method(tmp_path: Path) -> None:
    src, imgs = _write_set(tmp_path, ["p1", "p2"])
    ref = _write_reference(tmp_path, imgs, {"CNN": laplacian_fuse})
    (ref / "CNN" / "p2.png").unlink()
    cfg = ev.parse_config({"methods": ["Laplacian"], "figures": False, "save_fused": False})
    ds = _dataset(src, ref, ("CNN",))
    pairs = ev.find_pairs(ds)
    ev.evaluate_pair(ds, pairs[0], cfg)  # p1 is fine
    with pytest.raises(InputFileError) as e:
        ev.evaluate_pair(ds, pairs[1], cfg)
    msg = str(e.value)
    assert "'p2'" in msg and "'CNN'" in msg and "tiny" in msg


def test_a_peer_result_of_unmarked_16_bits_beside_8_bit_sources_is_refused(tmp_path: Path) -> None:
    """A peer's dark fusion stored as an unmarked 16-bit PNG (largest value below 16384) beside the
    8-bit sources was read alone as 14-bit data, 4 times too bright, and scored so (exit 0),
    where ``bafusion metrics`` refuses that F. evaluate refuses it too, naming the dataset, pair,
    method and file; stored marked (sBIT 16) it is scored as the 8-bit result."""
    from bafusion.io import write_image

    src, imgs = _write_set(tmp_path, ["p1"])
    a, b, _, _ = imgs["p1"]
    f8 = np.round(gray_float(to_uint8(laplacian_fuse(a, b)), rounded=True) * 0.24).astype(np.uint8)  # dark, gray
    (tmp_path / "reference" / "CNN").mkdir(parents=True)
    peer = tmp_path / "reference" / "CNN" / "p1.png"
    Image.fromarray(f8.astype(np.uint16) * np.uint16(257)).save(peer)  # unmarked 16-bit gray
    assert int(f8.max()) * 257 < 16384
    cfg = ev.parse_config({"methods": ["Laplacian"], "metrics": ["QG"], "figures": False, "save_fused": False})
    ds = _dataset(src, tmp_path / "reference", ("CNN",))
    with pytest.raises(UserError, match=rf"dataset 'tiny', pair 'p1', method 'CNN': F \({re.escape(str(peer))}\) is "
                                        r"16-bit without marked significant bits"):
        ev.evaluate_pair(ds, ev.find_pairs(ds)[0], cfg)
    write_image(peer, f8.astype(np.uint16) * np.uint16(257), bits=16)
    rows = ev.evaluate_pair(ds, ev.find_pairs(ds)[0], cfg)[0]
    assert [r["QG"] for r in rows if r["method"] == "CNN"] == [compute_all(a, b, f8, ["QG"])["QG"]]


def test_size_mismatch_names_pair_and_method(tmp_path: Path) -> None:
    src, imgs = _write_set(tmp_path, ["p1"])
    ref = _write_reference(tmp_path, imgs, {"DSIFT": laplacian_fuse})
    Image.fromarray(imgs["p1"][0][:40, :50]).save(ref / "DSIFT" / "p1.png")
    cfg = ev.parse_config({"methods": ["GFF-native"], "figures": False})
    ds = _dataset(src, ref, ("DSIFT",))
    with pytest.raises(InputFileError, match=r"pair 'p1', method 'DSIFT': fused image is 50x40 \(WxH\) but the sources are 56x48") as e:
        ev.evaluate_pair(ds, ev.find_pairs(ds)[0], cfg)
    assert str(e.value.path) == str(ref / "DSIFT" / "p1.png")  # the file, not the method's folder


def test_a_reference_image_of_another_size_fails_before_any_fusion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer's p2.png of another size was found only on reaching p2, after fusing p1, and the
    error named the method's folder: the check before any fusion names the file."""
    src, imgs = _write_set(tmp_path, ["p1", "p2"])
    ref = _write_reference(tmp_path, imgs, {"CNN": laplacian_fuse, "GFF": laplacian_fuse})
    Image.fromarray(imgs["p2"][0][:40, :56]).save(ref / "GFF" / "p2.png")
    fused = []
    monkeypatch.setattr("bafusion.evaluation.baselines.laplacian_fuse",
                        lambda a, b: fused.append(1) or laplacian_fuse(a, b))
    ds = _dataset(src, ref, ("CNN", "GFF"))
    cfg = ev.EvalConfig(datasets=(ds,), methods=("Laplacian",), metrics=("QG",), figures=False)
    with pytest.raises(InputFileError, match=r"dataset 'tiny', pair 'p2', method 'GFF': fused image is 56x40 \(WxH\) "
                                             r"but the sources are 56x48") as e:
        ev.run_evaluation(cfg, tmp_path / "out", log=lambda s: None)
    assert str(e.value.path) == str(ref / "GFF" / "p2.png") and not fused


def test_cli_error_is_one_line_and_leaves_no_output(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src, imgs = _write_set(tmp_path, ["p1", "p2"])
    ref = _write_reference(tmp_path, imgs, {"SR": laplacian_fuse})
    (ref / "SR" / "p2.png").unlink()
    out = tmp_path / "evaluation"
    cfg = {"methods": ["Laplacian"], "datasets": [{"name": "tiny", "sources": str(src), "reference": str(ref),
                                                   "reference_methods": ["SR"]}]}
    rc = cli_main(["evaluate", "--params-json", json.dumps(cfg), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "p2" in err and "'SR'" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob("*evaluation*"))


def test_missing_reference_images_fail_before_any_fusion(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing published image was found only on reaching its pair, after fusing the pairs
    before it (minutes of work lost on a real set): now every reference image of every
    dataset is looked for first; one line names the first missing files and their count."""
    src, imgs = _write_set(tmp_path, ["p1", "p2", "p3"])
    ref = _write_reference(tmp_path, imgs, {"SR": laplacian_fuse, "CNN": laplacian_fuse})
    for name in ("SR/p3.png", "CNN/p2.png", "CNN/p3.png"):
        (ref / name).unlink()
    fused = []
    monkeypatch.setattr("bafusion.evaluation.baselines.laplacian_fuse",
                        lambda a, b: fused.append(1) or laplacian_fuse(a, b))
    good = {"name": "good", "sources": str(src)}  # evaluated first: nothing of it may be fused either
    bad = {"name": "tiny", "sources": str(src), "reference": str(ref), "reference_methods": ["SR", "CNN"]}
    out = tmp_path / "evaluation"
    cfg = {"methods": ["Laplacian"], "metrics": ["QG"], "figures": False, "datasets": [good, bad]}
    rc = cli_main(["evaluate", "--params-json", json.dumps(cfg), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and not fused and not out.exists()
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert str(ref) in err and "'tiny'" in err and "3 fused image(s) of method(s) 'SR', 'CNN' missing" in err
    assert "SR/p3.*, CNN/p2.*, CNN/p3.*" in err and "png, jpg" in err
    # the same from the Python API; past five, a count (a missing method folder counts its pairs)
    import shutil

    shutil.rmtree(ref / "CNN")
    (ref / "GFF").mkdir()
    for n in ("p1", "p2"):
        (ref / "SR" / f"{n}.png").unlink()
    ds = ev.Dataset(name="tiny", sources=src, reference=ref, reference_methods=("SR", "CNN", "GFF"))
    cfg_api = ev.EvalConfig(datasets=(ds,), methods=("Laplacian",), metrics=("QG",))
    want = (r"9 fused image\(s\) of method\(s\) 'SR', 'CNN', 'GFF' missing: SR/p1\.\*, SR/p2\.\*, SR/p3\.\*, "
            r"CNN/ \(folder missing\), GFF/p1\.\* and 2 more \(")
    with pytest.raises(InputFileError, match=want):
        ev.run_evaluation(cfg_api, out, log=lambda s: None)
    assert not fused


def test_a_reference_result_stored_twice_is_refused_before_any_fusion(tmp_path: Path) -> None:
    """A peer's p2.png beside p2.jpg was read silently as the PNG: refused before any work,
    naming the dataset and both files."""
    src, imgs = _write_set(tmp_path, ["p1", "p2"])
    ref = _write_reference(tmp_path, imgs, {"CNN": laplacian_fuse})
    Image.open(ref / "CNN" / "p2.png").save(ref / "CNN" / "p2.jpg")
    cfg = ev.parse_config({"methods": ["Laplacian"], "metrics": ["QG"], "figures": False})
    ds = _dataset(src, ref, ("CNN",))
    with pytest.raises(InputFileError, match=r"dataset 'tiny': the result of pair 'p2' by method 'CNN' is stored 2 "
                                             r"times, p2\.png, p2\.jpg") as e:
        ev.check_dataset(ds, cfg)
    assert str(e.value.path) == str(ref / "CNN")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this system")
def test_a_named_pipe_or_a_broken_link_as_a_reference_result_is_named_so_not_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A named pipe CNN/p2.png in the reference folder was left out (``is_file()``), and evaluate
    said "1 fused image(s) of method(s) 'CNN' missing: CNN/p2.*" of a file that is there; a
    broken link so too. Each is now named, with its problem, before any fusion, as a pair's
    source is (and ``read_method_results`` names it rather than open a pipe, which hangs)."""
    from bafusion.evaluation.baselines import read_method_results

    src, imgs = _write_set(tmp_path, ["p1", "p2"])
    ref = _write_reference(tmp_path, imgs, {"CNN": laplacian_fuse})
    (ref / "CNN" / "p2.png").unlink()
    os.mkfifo(ref / "CNN" / "p2.png")
    fused = []
    monkeypatch.setattr("bafusion.evaluation.baselines.laplacian_fuse",
                        lambda a, b: fused.append(1) or laplacian_fuse(a, b))
    not_regular = "not a regular file (a named pipe, a device or a socket)"
    want = f"{ref / 'CNN' / 'p2.png'}: dataset 'tiny': the fused image of pair 'p2' by method 'CNN' is {not_regular}"
    cfg = {"methods": ["Laplacian"], "metrics": ["QG"], "figures": False,
           "datasets": [{"name": "tiny", "sources": str(src), "reference": str(ref), "reference_methods": ["CNN"]}]}
    out = tmp_path / "evaluation"
    assert cli_main(["evaluate", "--params-json", json.dumps(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert want in err and "missing" not in err and "Traceback" not in err, err
    assert not fused and not out.exists()
    with pytest.raises(InputFileError, match=re.escape(f"the fused image of pair 'p2' by method 'CNN' is {not_regular}")):
        read_method_results(ref, "CNN", "p2")
    (ref / "CNN" / "p2.png").unlink()
    (ref / "CNN" / "p2.png").symlink_to(tmp_path / "card" / "p2.png")
    ds = _dataset(src, ref, ("CNN",))
    with pytest.raises(InputFileError, match=re.escape(f"dataset 'tiny': the fused image of pair 'p2' by method 'CNN' "
                                                       f"is a broken link (to {tmp_path / 'card' / 'p2.png'})")) as e:
        ev.check_dataset(ds, ev.parse_config({"methods": ["Laplacian"], "metrics": ["QG"], "figures": False}))
    assert str(e.value.path) == str(ref / "CNN" / "p2.png")


def test_reference_results_stored_twice_are_listed_with_their_count(tmp_path: Path) -> None:
    """Every pair's result stored twice (an earlier evaluate's fused/Ours, PNG and JPEG, copied as
    a reference) was named one pair a run: the refusal names the first, a few more and their
    count."""
    names = [f"p{k}" for k in range(1, 9)]
    src, imgs = _write_set(tmp_path, names)
    ref = _write_reference(tmp_path, imgs, {"CNN": laplacian_fuse, "GFF": laplacian_fuse})
    for n in names:
        Image.open(ref / "CNN" / f"{n}.png").save(ref / "CNN" / f"{n}.jpg")
    cfg = ev.parse_config({"methods": ["Laplacian"], "metrics": ["QG"], "figures": False})
    with pytest.raises(InputFileError) as e:
        ev.check_dataset(_dataset(src, ref, ("CNN", "GFF")), cfg)
    assert e.value.problem == (
        "dataset 'tiny': the result of pair 'p1' by method 'CNN' is stored 2 times, p1.png, p1.jpg: keep one (rename "
        "or remove the others), as which one to measure cannot be told; 7 more result(s) stored more than once: "
        "CNN: p2.png, p2.jpg; CNN: p3.png, p3.jpg; CNN: p4.png, p4.jpg; CNN: p5.png, p5.jpg; CNN: p6.png, p6.jpg "
        "and 2 more")
    assert str(e.value.path) == str(ref / "CNN")
    Image.open(ref / "GFF" / "p8.png").save(ref / "GFF" / "p8.tif")  # two folders: the reference root
    with pytest.raises(InputFileError, match=r"; 8 more result\(s\) .* and 3 more$") as e:
        ev.check_dataset(_dataset(src, ref, ("CNN", "GFF")), cfg)
    assert str(e.value.path) == str(ref)


def test_a_pair_too_small_for_a_metric_fails_before_any_fusion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An 8x8 pair crashed evaluate with "QY needs images of at least 11x11 pixels, got 8x8" only
    after every pair before it was fused, naming no dataset, pair or file: now the check before
    any fusion names them, for QY (11x11) and QE (8x8); the metrics that take the size pass."""
    src, imgs = _write_set(tmp_path, ["p1", "z-tiny"])
    for k in "AB":
        Image.fromarray(imgs["z-tiny"][0 if k == "A" else 1][:9, :10]).save(src / f"z-tiny-{k}.png")
    for k in ("truth", "dm"):
        (src / f"z-tiny-{k}.png").unlink()
    fused = []
    monkeypatch.setattr("bafusion.evaluation.baselines.laplacian_fuse",
                        lambda a, b: fused.append(1) or laplacian_fuse(a, b))
    ds = ev.Dataset(name="tiny", sources=src)
    cfg = ev.EvalConfig(datasets=(ds,), methods=("Laplacian",), metrics=("QG", "QY"), figures=False)
    want = (rf"{re.escape(str(src / 'z-tiny-A.png'))}: dataset 'tiny', pair 'z-tiny': the sources are 10x9 \(WxH\), "
            r"too small for the metrics asked for \(QY at least 11x11 pixels\)")
    with pytest.raises(InputFileError, match=want):
        ev.run_evaluation(cfg, tmp_path / "out", log=lambda s: None)
    assert not fused and not (tmp_path / "out").exists()
    with pytest.raises(InputFileError, match=r"\(QY at least 11x11, QE at least 8x8 pixels\)"):
        Image.fromarray(imgs["z-tiny"][0][:7, :10]).save(src / "z-tiny-A.png")
        Image.fromarray(imgs["z-tiny"][1][:7, :10]).save(src / "z-tiny-B.png")
        ev.check_dataset(ds, replace_cfg(cfg, metrics=("QY", "QE")))
    assert len(ev.check_dataset(ds, replace_cfg(cfg, metrics=("QG", "QMI")))) == 2


def test_a_pair_with_a_truth_too_small_for_ssim_fails_before_any_fusion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 6x6 pair with a truth crashed evaluate as an internal error (SSIM's 7x7 window, computed
    against every truth) after the pairs before it were fused: refused before any fusion, naming
    the dataset, the pair and the truth; 7x7 passes, and 6x6 without a truth too."""
    src, imgs = _write_set(tmp_path, ["p1", "z-tiny"])
    for k, img in (("A", imgs["z-tiny"][0]), ("B", imgs["z-tiny"][1]), ("truth", imgs["z-tiny"][2])):
        Image.fromarray(img[:6, :6]).save(src / f"z-tiny-{k}.png")
    (src / "z-tiny-dm.png").unlink()
    fused = []
    monkeypatch.setattr("bafusion.evaluation.baselines.laplacian_fuse",
                        lambda a, b: fused.append(1) or laplacian_fuse(a, b))
    ds = ev.Dataset(name="tiny", sources=src)
    cfg = ev.EvalConfig(datasets=(ds,), methods=("Laplacian",), metrics=("QG",), figures=False)
    want = (rf"{re.escape(str(src / 'z-tiny-truth.png'))}: dataset 'tiny', pair 'z-tiny': the pair is 6x6 \(WxH\), "
            r"too small for SSIM against its truth \(at least 7x7 pixels, its window\): leave the pair out")
    with pytest.raises(InputFileError, match=want):
        ev.run_evaluation(cfg, tmp_path / "out", log=lambda s: None)
    assert not fused and not (tmp_path / "out").exists()
    for k, img in (("A", imgs["z-tiny"][0]), ("B", imgs["z-tiny"][1]), ("truth", imgs["z-tiny"][2])):
        Image.fromarray(img[:7, :7]).save(src / f"z-tiny-{k}.png")
    ev.run_evaluation(cfg, tmp_path / "out", log=lambda s: None)  # 7x7: SSIM is defined
    assert len(fused) == 2
    for k, img in (("A", imgs["z-tiny"][0]), ("B", imgs["z-tiny"][1])):
        Image.fromarray(img[:6, :6]).save(src / f"z-tiny-{k}.png")
    (src / "z-tiny-truth.png").unlink()
    assert len(ev.check_dataset(ds, cfg)) == 2  # no truth: no SSIM, any size


def replace_cfg(cfg: ev.EvalConfig, **kw) -> ev.EvalConfig:
    from dataclasses import replace

    return replace(cfg, **kw)


def test_unreadable_or_mismatched_sources_fail_before_any_fusion(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A truncated source was found only on reaching its pair, after fusing the pairs before
    it: every source is now decoded and a pair's sizes compared first; the line names the file,
    the dataset and the pair."""
    src, imgs = _write_set(tmp_path, ["p1", "p2", "p3"])
    fused = []
    monkeypatch.setattr("bafusion.evaluation.baselines.laplacian_fuse",
                        lambda a, b: fused.append(1) or laplacian_fuse(a, b))
    data = (src / "p2-A.png").read_bytes()
    (src / "p2-A.png").write_bytes(data[: len(data) // 2])  # a header, half the pixels
    out = tmp_path / "evaluation"
    cfg = {"methods": ["Laplacian"], "metrics": ["QG"], "figures": False,
           "datasets": [{"name": "tiny", "sources": str(src)}]}
    rc = cli_main(["evaluate", "--params-json", json.dumps(cfg), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and not fused and not out.exists(), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"{src / 'p2-A.png'}: dataset 'tiny', pair 'p2': unreadable image" in err and "truncated" in err
    # A and B of another size: the same, from the Python API
    Image.fromarray(imgs["p2"][0]).save(src / "p2-A.png")
    Image.fromarray(imgs["p3"][1][:40]).save(src / "p3-B.png")
    ds = ev.Dataset(name="tiny", sources=src)
    with pytest.raises(InputFileError, match=r"p3-B\.png: dataset 'tiny', pair 'p3': size 56x40 \(WxH\) differs"):
        ev.run_evaluation(ev.EvalConfig(datasets=(ds,), methods=("Laplacian",), metrics=("QG",)), out,
                          log=lambda s: None)
    assert not fused



def test_the_python_api_never_replaces_a_folder_of_the_users_files(tmp_path: Path) -> None:
    """run_evaluation(cfg, out) checked --out without its marker: a folder of the user's
    (results/MY-THESIS.md) was replaced whole, the file deleted, no error; the command refused it.
    It refuses the same now (a folder of other files; an earlier output holding a file of the
    user's), and still replaces its own earlier output with the report and plots inside it."""
    src, _ = _write_set(tmp_path, ["p1"])
    cfg = ev.EvalConfig(datasets=(ev.Dataset(name="t", sources=src),), methods=("Laplacian",), metrics=("QG",),
                        figures=False, save_fused=False)
    out = tmp_path / "results"
    out.mkdir()
    (out / "MY-THESIS.md").write_text("mine")
    with pytest.raises(UserError, match=r"results: the evaluation output folder is replaced whole and holds files "
                                        r"that are no earlier output of this command \(no metrics\.json\)"):
        ev.run_evaluation(cfg, out, log=lambda s: None)
    assert (out / "MY-THESIS.md").read_text() == "mine"
    (out / "MY-THESIS.md").unlink()
    for _ in range(2):  # its own earlier output, with the report and plots inside it: replaced
        ev.run_evaluation(cfg, out, report=out / "r.json", plots=out / "p.csv", log=lambda s: None)
    assert (out / "r.json").is_file() and (out / "t" / "metrics.csv").is_file()
    (out / "t" / "MY-THESIS.md").write_text("mine")
    with pytest.raises(UserError, match=r"holds files this command did not write: t/MY-THESIS\.md;"):
        ev.run_evaluation(cfg, out, report=out / "r.json", plots=out / "p.csv", log=lambda s: None)
    assert (out / "t" / "MY-THESIS.md").read_text() == "mine"


def test_each_source_is_decoded_once_by_the_check_and_once_by_the_read(
    tmp_path: Path, pillow_decodes: dict[str, int]
) -> None:
    """The up-front check ran three times (in the command, in run_evaluation, per dataset),
    each decoding every source, and the notes' header reads decoded a PNG once more (Pillow's
    getexif() loads it): 6 decodes of a source; now the check once and the read once, from the
    command and from the Python API (which still checks: a truncated source is refused)."""
    src, _ = _write_set(tmp_path, ["p1", "p2"])
    counts = pillow_decodes
    cfg = {"methods": ["Laplacian"], "metrics": ["QG"], "figures": False, "save_fused": False,
           "datasets": [{"name": "tiny", "sources": str(src)}]}
    assert cli_main(["evaluate", "--params-json", json.dumps(cfg), "--out", str(tmp_path / "ev")]) == 0
    sources = [f"{n}-{s}.png" for n in ("p1", "p2") for s in "AB"]
    assert {n: counts.get(n) for n in sources} == dict.fromkeys(sources, 2), counts
    counts.clear()
    ds = ev.Dataset(name="tiny", sources=src)
    ev.run_evaluation(ev.EvalConfig(datasets=(ds,), methods=("Laplacian",), metrics=("QG",), figures=False,
                                    save_fused=False), tmp_path / "ev2", log=lambda s: None)
    assert {n: counts.get(n) for n in sources} == dict.fromkeys(sources, 2), counts
    data = (src / "p2-B.png").read_bytes()
    (src / "p2-B.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError, match=r"p2-B\.png: dataset 'tiny', pair 'p2': unreadable image"):
        ev.run_evaluation(ev.EvalConfig(datasets=(ds,), methods=("Laplacian",), metrics=("QG",)), tmp_path / "ev3",
                          log=lambda s: None)

def test_a_multi_page_or_gray_beside_colour_source_is_noted_before_the_work(tmp_path: Path, capsys) -> None:
    src, imgs = _write_set(tmp_path, ["p1", "p2"])
    a, b = imgs["p1"][:2]
    Image.fromarray(a).save(src / "p1-A.tif", save_all=True, append_images=[Image.fromarray(b)])
    (src / "p1-A.png").unlink()
    Image.fromarray(imgs["p2"][1][..., 0]).save(src / "p2-B.png")  # a gray B beside a colour A
    ds = ev.Dataset(name="tiny", sources=src)
    notes = ev.source_notes(ds, ev.find_pairs(ds))
    assert len(notes) == 2, notes
    assert notes[0] == f"dataset 'tiny', pair 'p1': {src / 'p1-A.tif'} holds 2 pages; only the first is used " \
                       "(a focus stack: give its shots as separate files)"
    assert notes[1].startswith("dataset 'tiny', pair 'p2': ") and " colour: the result is gray where" in notes[1]
    cfg = ev.EvalConfig(datasets=(ds,), methods=("Laplacian",), metrics=("QG",), figures=False)
    ev.run_evaluation(cfg, tmp_path / "ev", log=lambda s: None)
    err = capsys.readouterr().err
    assert all(f"bafusion evaluate: {n}" in err for n in notes), err


def test_a_cmyk_source_or_one_whose_alpha_is_dropped_is_noted_before_the_work(tmp_path: Path, capsys) -> None:
    """evaluate converted a CMYK source and dropped a source's transparency without a line (fuse
    says both, naming the file); an opaque alpha (no loss) gets none."""
    src, imgs = _write_set(tmp_path, ["p1", "p2"])
    a = imgs["p1"][0]
    alpha = np.full(a.shape[:2], 255, np.uint8)
    Image.fromarray(np.dstack([a, alpha]), "RGBA").save(src / "p1-A.png")  # opaque: nothing lost
    alpha[:3] = 40
    Image.fromarray(np.dstack([imgs["p2"][0], alpha]), "RGBA").save(src / "p2-A.png")
    (src / "p1-B.png").unlink()
    Image.fromarray(imgs["p1"][1]).convert("CMYK").save(src / "p1-B.jpg", quality=95)
    ds = ev.Dataset(name="tiny", sources=src)
    notes = ev.source_notes(ds, ev.find_pairs(ds))
    assert notes == [
        f"dataset 'tiny', pair 'p1': {src / 'p1-B.jpg'} is CMYK: converted to RGB without colour management "
        "(its colours are approximate)",
        f"dataset 'tiny', pair 'p2': {src / 'p2-A.png'}: its alpha channel (transparency) is dropped: its colours "
        "are used as on full opacity"], notes
    ev.run_evaluation(ev.EvalConfig(datasets=(ds,), methods=("Laplacian",), metrics=("QG",), figures=False),
                      tmp_path / "ev", log=lambda s: None)
    err = capsys.readouterr().err
    assert all(f"bafusion evaluate: {n}" in err for n in notes), err


def test_a_pairs_third_shot_is_said_to_be_unused(tmp_path: Path, capsys) -> None:
    """A dataset of focal stacks (p1-A, p1-B, p1-C, as fuse-dir reads them) was evaluated on A and
    B alone without a word: p1-C was dropped in silence. A note names it; -truth, -dm and another
    pair's files are no such shot."""
    src, imgs = _write_set(tmp_path, ["p1", "p2"])
    Image.fromarray(imgs["p1"][0]).save(src / "p1-C.png")
    Image.fromarray(imgs["p1"][0]).save(src / "p1-d.jpg")
    Image.fromarray(imgs["p1"][0]).save(src / "p3-C.png")  # no pair p3 (index.json)
    ds = ev.Dataset(name="tiny", sources=src)
    notes = ev.source_notes(ds, ev.find_pairs(ds))
    assert notes == ["dataset 'tiny', pair 'p1': p1-C.png, p1-d.jpg not used: evaluate compares the fusions of two "
                     "sources, p1-A.png and p1-B.png (fuse-dir would fuse every shot of the stack)"], notes
    ev.run_evaluation(ev.EvalConfig(datasets=(ds,), methods=("Laplacian",), metrics=("QG",), figures=False),
                      tmp_path / "ev", log=lambda s: None)
    assert f"bafusion evaluate: {notes[0]}" in capsys.readouterr().err


def test_out_folder_holding_the_sources_or_references_is_refused_and_they_stay(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # the output folder is replaced whole: as the sources, as their parent, or holding the
    # reference folder, it would delete the inputs (it did: `--out ev/self --dataset t=ev/self`)
    src, imgs = _write_set(tmp_path, ["p1"])
    ref = _write_reference(tmp_path, imgs, {"SR": laplacian_fuse})
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for out, ds in [(src, f"t={src}"), (tmp_path, f"t={src}"), (ref, f"t={src},{ref}")]:
        rc = cli_main(["evaluate", "--dataset", ds, "--methods", "Laplacian", "--metrics", "QG",
                       "--root", str(tmp_path), "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2, err
        # (the CLI's first check: a folder of files that are no earlier evaluate output)
        assert any(w in err for w in ("is also an input", "is replaced whole and holds the input",
                                      "no earlier output of this command")), err
        assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    # a folder beside them is written
    assert cli_main(["evaluate", "--dataset", f"t={src}", "--methods", "Laplacian", "--metrics", "QG",
                     "--root", str(tmp_path), "--out", str(tmp_path / "ev")]) == 0
    assert (tmp_path / "ev" / "t" / "metrics.csv").is_file()


def test_report_and_plots_inside_out_are_its_own_outputs_on_a_rerun(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """--report and --plots inside --out made the second run refuse the folder ('holds files this
    command did not write: plots.csv, report.json'): they are the command's own outputs, written
    after --out is replaced (so they are kept); an earlier run's report elsewhere in it is known by
    its record (evaluate-record.json); a file of the user's beside them still is refused."""
    src, _ = _write_set(tmp_path, ["p1"])
    out = tmp_path / "ev"
    for report in ("report.json", "report.json", "m/report.json"):
        argv = ["evaluate", "--dataset", f"t={src}", "--methods", "Laplacian", "--metrics", "QG",
                "--root", str(tmp_path), "--out", str(out), "--report", str(out / report),
                "--plots", str(out / "plots.csv")]
        assert cli_main(argv) == 0, capsys.readouterr().err
        if report == "m/report.json":  # the earlier run's report.json: its own, replaced with the folder
            assert not (out / "report.json").exists()
            assert f"{out / 'report.json'}: written by an earlier evaluate" in capsys.readouterr().out
        numbers = {k: v for k, v in json.loads((out / "metrics.json").read_text()).items() if k != "provenance"}
        assert json.loads((out / report).read_text()) == numbers  # the report: numbers only
        assert (out / "plots.csv").read_text().startswith("method,QG")
    for mine in (out / "notes.txt", out / "m" / "notes.txt"):
        mine.write_text("mine")
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert f"holds files this command did not write: {mine.relative_to(out).parts[0]};" in err, err
        assert mine.read_text() == "mine"
        mine.unlink()
    assert cli_main(argv) == 0


def test_a_rerun_without_report_takes_the_report_an_earlier_run_wrote_into_out_for_its_own(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``evaluate --out ev --report ev/report.json``, then ``evaluate --out ev``: the rerun refused
    the folder, saying evaluate "did not write" ev/report.json (its marker, the DVC metrics file,
    cannot list the report). The first run records the report and plots it wrote into --out with
    the SHA-256 of their content (ev/evaluate-record.json), and the rerun takes them for its own:
    replaced with the folder, said on stdout. A recorded file changed since, a file of the user's
    of another name, or a broken record, are not its own: refused, nothing deleted; the record's
    name is refused as --report."""
    src, _ = _write_set(tmp_path, ["p1"])
    out = tmp_path / "ev"
    base = ["evaluate", "--dataset", f"t={src}", "--methods", "Laplacian", "--metrics", "QG",
            "--root", str(tmp_path), "--out", str(out)]
    with_report = [*base, "--report", str(out / "report.json"), "--plots", str(out / "plots.csv")]
    assert cli_main(with_report) == 0, capsys.readouterr().err
    record = json.loads((out / "evaluate-record.json").read_text())
    assert sorted(record["sha256"]) == ["plots.csv", "report.json"]
    assert cli_main(base) == 0, capsys.readouterr().err
    said = capsys.readouterr().out.splitlines()
    # notes: each line starts with the file, also off a terminal (here; they were stamped there)
    for name in ("report.json", "plots.csv"):
        assert f"{out / name}: written by an earlier evaluate into {out} (--report or --plots), not asked for now: " \
            "removed with the folder it replaced" in said, said
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "t"]
    # the user's: a recorded report edited since, a copy of it under another name, a damaged record
    for case in ("edited", "copy", "damaged"):
        assert cli_main(with_report) == 0, capsys.readouterr().err
        mine = out / ("report.json" if case != "copy" else "report-v1.json")
        if case == "edited":
            mine.write_text(mine.read_text() + "my note\n")
        elif case == "copy":
            mine.write_text((out / "report.json").read_text())
        else:
            (out / "evaluate-record.json").write_text("{")
        kept = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        assert cli_main(base) == 2
        err = capsys.readouterr().err
        assert "holds files this command did not write: " in err and mine.name in err, (case, err)
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == kept
        mine.unlink() if case == "copy" else (out / "report.json").unlink()
        if case == "damaged":
            (out / "evaluate-record.json").unlink()
            (out / "plots.csv").unlink()
    assert cli_main([*base, "--report", str(out / "evaluate-record.json")]) == 2
    assert "a file evaluate writes" in capsys.readouterr().err


def test_a_pair_with_one_shot_is_refused_and_a_gray_shot_beside_a_colour_one_is_taken(tmp_path: Path) -> None:
    """A lone -A stopped the run while a lone -B was silently left out of the table; a gray A
    beside a colour B failed in the baselines with a message naming no pair."""
    src = tmp_path / "pairs"
    src.mkdir()
    a, b, _, _ = _pair(np.random.default_rng(5))
    Image.fromarray(a[..., 1]).save(src / "p1-A.png")  # gray beside colour
    Image.fromarray(b).save(src / "p1-B.png")
    cfg = ev.parse_config({"methods": ["GFF-native", "Laplacian"], "metrics": ["QG"], "figures": False})
    ds = ev.Dataset(name="t", sources=src)
    (pair,) = ev.find_pairs(ds)
    rows = ev.evaluate_pair(ds, pair, cfg)[0]
    assert {r["method"] for r in rows} == {"GFF-native", "Laplacian"} and all(0 < r["QG"] <= 1 for r in rows)
    for lone in ("p2-B.png", "p2-A.png"):
        Image.fromarray(b).save(src / lone)
        missing = "A" if lone.endswith("-B.png") else "B"
        with pytest.raises(InputFileError, match=rf"dataset 't', pair 'p2': source {missing} missing"):
            ev.find_pairs(ds)
        (src / lone).unlink()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this system")
def test_a_named_pipe_or_a_broken_link_as_a_pairs_file_is_named_so_not_missing(tmp_path: Path, capsys) -> None:
    """A named pipe p1-A.png was left out of the files, and evaluate said "source A missing",
    naming the folder, of a file that is there; a broken link so too, and a truth or decision
    map of either kind was passed over without a word. Each is now named, with its problem, by
    ``bafusion evaluate`` before any work (fuse names a pipe "not a regular file" too)."""
    src = tmp_path / "pairs"
    src.mkdir()
    a, b, _, _ = _pair(np.random.default_rng(5))
    Image.fromarray(b).save(src / "p1-B.png")
    os.mkfifo(src / "p1-A.png")
    ds = ev.Dataset(name="t", sources=src)
    not_regular = "not a regular file (a named pipe, a device or a socket)"
    with pytest.raises(InputFileError, match=re.escape(f"{src / 'p1-A.png'}: dataset 't', pair 'p1': source A: "
                                                       f"{not_regular}")):
        ev.find_pairs(ds)
    argv = ["evaluate", "--dataset", f"t={src}", "--methods", "Laplacian", "--metrics", "QG", "--root",
            str(tmp_path), "--out", str(tmp_path / "ev")]
    assert cli_main(argv) == 2
    assert f"{src / 'p1-A.png'}: dataset 't', pair 'p1': source A: {not_regular}" in capsys.readouterr().err
    (src / "p1-A.png").unlink()
    (src / "p1-A.png").symlink_to(tmp_path / "card" / "p1-A.png")
    with pytest.raises(InputFileError, match=re.escape(f"source A: broken link (to {tmp_path / 'card' / 'p1-A.png'})")):
        ev.find_pairs(ds)
    (src / "p1-A.png").unlink()
    Image.fromarray(a).save(src / "p1-A.png")
    os.mkfifo(src / "p1-dm.png")
    with pytest.raises(InputFileError, match=re.escape(f"pair 'p1': decision map: {not_regular}")):
        ev.find_pairs(ds)
    (src / "p1-dm.png").unlink()
    assert [p.name for p in ev.find_pairs(ds)] == ["p1"]


def test_pairs_are_found_by_fuse_dirs_rules_and_two_files_for_one_source_are_refused(tmp_path: Path) -> None:
    """A macOS AppleDouble ._p1-A.jpg made a pair '._p1' ('source B missing'), p1-A.Jpg was
    'source A missing' though it was there, and p2-A.JPG beside p2-b.jpg 'source B missing',
    all of which fuse-dir takes; of p1-A.png and p1-A.jpg one was taken silently."""
    src = tmp_path / "pairs"
    src.mkdir()
    a, b, _, _ = _pair(np.random.default_rng(6))
    Image.fromarray(a).save(src / "p1-A.Jpg", format="JPEG", quality=95)
    Image.fromarray(b).save(src / "p1-B.Jpg", format="JPEG", quality=95)
    Image.fromarray(a).save(src / "p2-A.JPG", format="JPEG", quality=95)
    Image.fromarray(b).save(src / "p2-b.jpg", format="JPEG", quality=95)
    Image.fromarray(a).save(src / "p3-a.png")
    Image.fromarray(b).save(src / "p3-B.PNG")
    (src / "._p1-A.jpg").write_bytes(b"\0\5\26\7")  # AppleDouble resource fork
    (src / ".p4-B.png").write_bytes(b"")
    ds = ev.Dataset(name="t", sources=src)
    pairs = ev.find_pairs(ds)
    assert [(p.name, p.a.name, p.b.name) for p in pairs] == [
        ("p1", "p1-A.Jpg", "p1-B.Jpg"), ("p2", "p2-A.JPG", "p2-b.jpg"), ("p3", "p3-a.png", "p3-B.PNG")]
    assert [p.name for p in ev.find_pairs(ev.Dataset(name="t", sources=src, pattern="p[12]"))] == ["p1", "p2"]
    Image.fromarray(a).save(src / "p1-a.png")
    with pytest.raises(InputFileError, match=r"dataset 't', pair 'p1': source A: 2 files, p1-A\.Jpg, p1-a\.png: keep one"):
        ev.find_pairs(ds)
    (src / "p1-a.png").unlink()
    Image.fromarray(b).save(src / "p2-B.png")
    with pytest.raises(InputFileError, match=r"pair 'p2': source B: 2 files, p2-B\.png, p2-b\.jpg"):
        ev.find_pairs(ds)
    (src / "p2-B.png").unlink()
    assert cli_main(["evaluate", "--dataset", f"t={src}", "--methods", "Laplacian", "--metrics", "QG",
                     "--root", str(tmp_path), "--out", str(tmp_path / "ev")]) == 0
    with (tmp_path / "ev" / "t" / "metrics.csv").open() as f:
        assert sorted({r["pair"] for r in csv.DictReader(f)}) == ["p1", "p2", "p3"]


def test_pairs_of_every_format_fuse_dir_takes_are_found_and_an_unread_source_is_named(tmp_path: Path) -> None:
    """A dataset's pairs were found by fuse-dir's rules but only among PNG, JPEG, TIFF and BMP:
    a pair of WebP shots (or .jfif, GIF) was no pair, one with a WebP B was refused as "source B
    missing" beside p1-B.webp, and a camera RAW B was "missing" too, without the advice fuse gives."""
    src = tmp_path / "pairs"
    src.mkdir()
    a, b, _, _ = _pair(np.random.default_rng(6))
    Image.fromarray(a).save(src / "p1-A.webp", lossless=True)
    Image.fromarray(b).save(src / "p1-B.WEBP", lossless=True)
    Image.fromarray(a).save(src / "p2-A.jpg", quality=95)
    Image.fromarray(b).save(src / "p2-B.jfif", format="JPEG", quality=95)
    Image.fromarray(a).save(src / "p3-A.png")
    Image.fromarray(b).save(src / "p3-B.gif")
    ds = ev.Dataset(name="t", sources=src)
    assert [(p.name, p.a.name, p.b.name) for p in ev.find_pairs(ds)] == [
        ("p1", "p1-A.webp", "p1-B.WEBP"), ("p2", "p2-A.jpg", "p2-B.jfif"), ("p3", "p3-A.png", "p3-B.gif")]
    (src / "p3-B.gif").rename(src / "p3-B.dng")
    with pytest.raises(InputFileError, match=r"pair 'p3': source B missing \(p3-B\.dng: camera RAW, which bafusion "
                                             r"does not read: convert it to TIFF"):
        ev.find_pairs(ds)
    (src / "p3-B.dng").rename(src / "p3-B.xcf")
    with pytest.raises(InputFileError, match=r"pair 'p3': source B missing \(p3-B\.xcf is there, of a format not read"):
        ev.find_pairs(ds)
    (src / "p3-B.xcf").unlink()
    with pytest.raises(InputFileError, match=r"pair 'p3': source B missing$"):
        ev.find_pairs(ds)


def test_config_errors_name_the_setting(tmp_path: Path) -> None:
    from bafusion.errors import UserError

    with pytest.raises(UserError, match=r"evaluate\.metrics\[1\]: 'QZ' is not one of QMI"):
        ev.parse_config({"metrics": ["QMI", "QZ"]})
    with pytest.raises(UserError, match=r"evaluate\.methods\[1\]: 'Magic' is not one of Ours-initial"):
        ev.parse_config({"methods": ["Ours", "Magic"]})
    with pytest.raises(UserError, match=r"unknown key evaluate\.dataset "):
        ev.parse_config({"dataset": []})
    with pytest.raises(UserError, match="crop"):
        ev.parse_config({"datasets": [{"name": "x", "sources": "y", "crop": [1, 2]}]})


def test_our_variants_match_fusion_with_and_without_refinement(tmp_path: Path) -> None:
    from bafusion.fusion import FusionNets, FusionParams, fuse_images
    from bafusion.nets.model import build_model

    torch.manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        nets = FusionNets(build_model(8), build_model(8), 12, 12, torch.device("cpu"))
        src, imgs = _write_set(tmp_path, ["p1"])
        # mid-range Eq. 2 bounds so the boundary net is used on some pixels
        params = FusionParams(l=2, low=0.0, high=1.0, min_region=0.0)
        cfg = ev.parse_config({"methods": ["Ours-initial", "Ours"], "figures": False})
        ds = _dataset(src, None, ())
        rows, fused, (a, b) = ev.evaluate_pair(ds, ev.find_pairs(ds)[0], cfg, nets, params)
        ref_on = fuse_images(a, b, nets, params)
        ref_off = fuse_images(a, b, nets, FusionParams(l=2, low=0.0, high=1.0, min_region=0.0, refine=False))
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(fused["Ours"], ref_on.fused)
    np.testing.assert_array_equal(fused["Ours-initial"], ref_off.fused)
    truth_dm = imgs["p1"][3]
    by = {r["method"]: r for r in rows}
    assert by["Ours"]["DM_acc"] == pytest.approx((ref_on.decision == truth_dm).mean())
    assert by["Ours-initial"]["DM_acc"] == pytest.approx((ref_off.decision == truth_dm).mean())


# --------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------


def test_an_empty_embedded_test_set_is_noted_and_the_other_datasets_evaluated(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # data.holdout_* 0 (README's "Real data"): the testset rule writes an index with no pairs;
    # the evaluate stage failed on it at the end of the whole pipeline ("lists no pairs")
    src, _ = _write_set(tmp_path, ["p1"])
    empty = tmp_path / "testset"
    empty.mkdir()
    (empty / "index.json").write_text(json.dumps({"pairs": []}))
    out, report = tmp_path / "evaluation", tmp_path / "m.json"
    cfg = {"methods": ["Laplacian"], "metrics": ["QG"],
           "datasets": [{"name": "testset", "sources": str(empty)}, {"name": "tiny", "sources": str(src)}]}
    assert cli_main(["evaluate", "--params-json", json.dumps(cfg), "--out", str(out), "--report", str(report)]) == 0
    # a note, as evaluate's others: the line starts with the dataset and the file, also off a
    # terminal (here; it was stamped with the time and the command there)
    assert (f"dataset 'testset': {empty / 'index.json'} lists no pairs (nothing was held out: "
            "data.holdout_foregrounds / holdout_backgrounds); not evaluated") in capsys.readouterr().out.splitlines()
    doc = json.loads(report.read_text())
    assert doc["testset"] == {"pairs": 0} and doc["tiny"]["pairs"] == 1
    assert not (out / "testset").exists() and (out / "tiny" / "metrics.csv").is_file()
    # an index that lists pairs it cannot find still fails; so does a folder of images with none
    (tmp_path / "noimg").mkdir()
    cfg["datasets"] = [{"name": "x", "sources": str(tmp_path / "noimg")}]
    assert cli_main(["evaluate", "--params-json", json.dumps(cfg), "--out", str(out)]) == 2


@pytest.mark.parametrize("failing", ["report", "plots"])
def test_a_report_that_cannot_be_written_after_out_says_out_was_written(tmp_path: Path, capsys,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      failing: str) -> None:
    """--report and --plots are written after --out is replaced: a full disk there said only
    "report.json: No space left on device", as if nothing had been written. The error now says
    which were not written and that --out was (written whole)."""
    import errno

    src, _ = _write_set(tmp_path, ["p1"])
    out, report, plots = tmp_path / "ev", tmp_path / "report.json", tmp_path / "plots.csv"
    real = Path.write_text
    victim = report if failing == "report" else plots

    def full_disk(self, *args, **kwargs):
        if self.name == victim.name:  # the temporary file of atomic_file, named as the output
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    rc = cli_main(["evaluate", "--dataset", f"t={src}", "--methods", "Laplacian", "--metrics", "QG", "--root",
                   str(tmp_path), "--out", str(out), "--report", str(report), "--plots", str(plots)])
    err = capsys.readouterr().err
    assert rc == 2 and (out / "metrics.json").is_file()
    if failing == "report":
        assert not report.exists() and not plots.exists()
        assert (f"bafusion evaluate: error: {report}: {os.strerror(errno.ENOSPC)}: {report} and {plots} not written; "
                f"{out} was written whole (its metrics.json holds the report's numbers)") in err, err
    else:
        assert report.is_file() and not plots.exists()
        assert (f"bafusion evaluate: error: {plots}: {os.strerror(errno.ENOSPC)}: {plots} not written; {out} was "
                f"written whole, as was {report}") in err, err


def test_end_to_end_on_two_tiny_pairs(tmp_path: Path) -> None:
    src, imgs = _write_set(tmp_path, ["p1", "p2"])
    # "published" results: GFF is the native GFF's image (ties with GFF-native everywhere),
    # AVG the plain average (a poor fusion)
    ref = _write_reference(tmp_path, imgs, {"GFF": gff_fuse, "AVG": lambda a, b: (a.astype(float) + b) / 2})
    out = tmp_path / "evaluation"
    cfg = {
        "methods": ["GFF-native", "Laplacian"],
        "metrics": ["QMI", "QG", "QY", "QCB", "QCV"],
        "datasets": [{"name": "tiny", "sources": str(src), "reference": str(ref),
                      "reference_methods": ["GFF", "AVG"], "figure_pair": "p2"}],
    }
    report, plots = tmp_path / "m" / "evaluate.json", tmp_path / "p" / "evaluate.csv"
    rc = cli_main(["evaluate", "--params-json", json.dumps(cfg), "--out", str(out),
                   "--report", str(report), "--plots", str(plots)])
    assert rc == 0
    d = out / "tiny"
    with open(d / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["pair"], r["method"]) for r in rows] == [
        (p, m) for p in ("p1", "p2") for m in ("GFF", "AVG", "GFF-native", "Laplacian")
    ]
    assert set(rows[0]) == {"pair", "method", "QMI", "QG", "QY", "QCB", "QCV", "PSNR", "SSIM"}
    # the CSV holds what the metrics module computes on those images, and the stored fused image
    a, b, t, _ = imgs["p2"]
    lap = to_uint8(laplacian_fuse(a, b))
    want = compute_all(a, b, lap, ["QMI", "QG", "QY", "QCB", "QCV"])
    got = next(r for r in rows if r["pair"] == "p2" and r["method"] == "Laplacian")
    for q, v in want.items():
        assert float(got[q]) == pytest.approx(v, rel=1e-12)
    assert float(got["PSNR"]) == pytest.approx(10 * math.log10(255**2 / np.mean((lap.astype(float) - t) ** 2)))
    np.testing.assert_array_equal(np.asarray(Image.open(d / "fused" / "Laplacian" / "p2.png")), lap)
    # GFF (folder) and GFF-native are the same images: their values tie on every pair, so
    # neither ever wins; the table says so
    for p in ("p1", "p2"):
        g = next(r for r in rows if r["pair"] == p and r["method"] == "GFF")
        n = next(r for r in rows if r["pair"] == p and r["method"] == "GFF-native")
        assert all(g[q] == n[q] for q in ("QMI", "QG", "QY", "QCB", "QCV"))
    table = (d / "table1.md").read_text()
    assert "# Table 1: tiny (2 pairs)" in table
    gff_line = next(ln for ln in table.splitlines() if ln.startswith("| GFF |"))
    gffn_line = next(ln for ln in table.splitlines() if ln.startswith("| GFF-native |"))
    assert gff_line.split("|")[2:] == gffn_line.split("|")[2:]
    assert "(1)" not in gff_line and "(2)" not in gff_line
    assert "## Against the all-in-focus truth" in table and "DM_acc" not in table
    # wins in the table agree with the per-pair values
    lines = {ln.split("|")[1].strip(): ln for ln in table.split("## Against")[0].splitlines() if ln.startswith("| ")}
    for q_idx, q in enumerate(("QMI", "QG", "QY", "QCB", "QCV")):
        wins = ev.count_wins([{**r, q: float(r[q])} for r in rows], ["GFF", "AVG", "GFF-native", "Laplacian"], q)
        for m, k in wins.items():
            assert lines[m].split("|")[2 + q_idx].strip().endswith(f"({k})")
    # figures and DVC/MLflow outputs
    for name in ("fig4-p2.png", "diff-p2.png", "diff-p2-Laplacian.png", "diff-p2-AVG.png"):
        with Image.open(d / "figures" / name) as im:
            assert im.size[0] > 0
    assert not (d / "figures" / "fig4-p1.png").exists()
    diff = np.asarray(Image.open(d / "figures" / "diff-p2-GFF-native.png"))
    np.testing.assert_array_equal(
        diff, np.clip(np.round(10 * np.abs(_gray(b) - _gray(to_uint8(gff_fuse(a, b))))), 0, 255).astype(np.uint8)
    )
    doc = json.loads((out / "metrics.json").read_text())
    assert doc.pop("provenance")["nets"] is None  # no variant of ours: no nets; the report: numbers only
    assert doc == json.loads(report.read_text()) and doc["tiny"]["pairs"] == 2
    with open(plots, newline="") as fh:
        assert [r["method"] for r in csv.DictReader(fh)] == ["tiny/GFF", "tiny/AVG", "tiny/GFF-native", "tiny/Laplacian"]
    from mlflow.tracking import MlflowClient

    from bafusion.tracking import EXPERIMENT, tracking_uri

    client = MlflowClient(tracking_uri=tracking_uri())
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], "tags.stage = 'evaluate'")
    assert runs and runs[0].info.status == "FINISHED"
    assert runs[0].data.metrics["tiny.Laplacian.QMI"] == pytest.approx(
        np.mean([float(r["QMI"]) for r in rows if r["method"] == "Laplacian"])
    )
    arts = {f.path for f in client.list_artifacts(runs[0].info.run_id, "evaluation/tiny")}
    assert "evaluation/tiny/table1.md" in arts


def _gray(img: np.ndarray) -> np.ndarray:
    return gray_float(img, rounded=True)


def test_run_with_our_variants_reports_table1_wins(tmp_path: Path) -> None:
    """metrics.json: our means and wins (Ours: among Table 1's methods, i.e. without the
    ablation variant; Ours-initial: among all); only computed methods are stored in fused/."""
    from bafusion.fusion import FusionNets, FusionParams
    from bafusion.nets.model import build_model

    torch.manual_seed(1)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        nets = FusionNets(build_model(8), build_model(8), 12, 12, torch.device("cpu"))
        src, imgs = _write_set(tmp_path, ["p1", "p2"])
        ref = _write_reference(tmp_path, imgs, {"AVG": lambda a, b: (a.astype(float) + b) / 2})
        cfg = ev.parse_config({
            "methods": ["Ours-initial", "Ours", "Laplacian"], "metrics": ["QMI", "QCV"],
            "datasets": [{"name": "tiny", "sources": str(src), "reference": str(ref), "reference_methods": ["AVG"]}],
        })
        doc = ev.run_evaluation(cfg, tmp_path / "out", nets, FusionParams(l=2, min_region=0.0), log=lambda s: None)
    finally:
        torch.set_num_threads(before)
    with open(tmp_path / "out" / "tiny" / "metrics.csv", newline="") as fh:
        rows = [{**r, "QMI": float(r["QMI"]), "QCV": float(r["QCV"])} for r in csv.DictReader(fh)]
    assert [r["method"] for r in rows[:4]] == ["AVG", "Laplacian", "Ours-initial", "Ours"]
    table1 = ["AVG", "Laplacian", "Ours"]
    everyone = [*table1, "Ours-initial"]
    for q in ("QMI", "QCV"):
        assert doc["tiny"]["Ours"]["wins"][q] == ev.count_wins(rows, table1, q)["Ours"]
        assert doc["tiny"]["Ours-initial"]["wins"][q] == ev.count_wins(rows, everyone, q)["Ours-initial"]
        assert doc["tiny"]["Ours"][q] == pytest.approx(np.mean([r[q] for r in rows if r["method"] == "Ours"]))
    assert 0.0 <= doc["tiny"]["Ours"]["DM_acc"] <= 1.0
    assert sorted(p.name for p in (tmp_path / "out" / "tiny" / "fused").iterdir()) == ["Laplacian", "Ours", "Ours-initial"]
    table = (tmp_path / "out" / "tiny" / "table1.md").read_text()
    main = table.split("\n## ")[0]  # Table 1 proper, before the rank and ablation sections
    assert "| Ours-initial |" not in main and "| Ours |" in main
    assert "| Ours-initial |" in table.split("## Ablation")[1]
    # our ranks among Table 1's methods (AVG, Laplacian and one of ours: 3), per metric
    ranks = table.split("## Rank of ours")[1].split("\n## ")[0]
    for m in ("Ours", "Ours-initial"):
        rivals = ["AVG", "Laplacian", m]
        cells = [f"{ev.ordinal(ev.rank_of(rows, rivals, q, m)[0])} of 3" for q in ("QMI", "QCV")]
        assert f"| {m} | all | {cells[0]} | {cells[1]} |" in ranks
        assert doc["tiny"][m]["rank"] == {q: ev.rank_of(rows, rivals, q, m)[0] for q in ("QMI", "QCV")}


def test_a_mean_counting_exact_pairs_as_100_db_is_marked_in_the_plots_csv_and_mlflow(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ours equal to the truth on p1 (PSNR inf, counted as 100 dB in its mean): the tables mark
    that mean with a dagger, but the plots CSV and the MLflow metrics carried it bare. The
    plots CSV gives per method the number of such pairs (n_inf_PSNR, 0 for none, the mean's
    cell unchanged), and the MLflow run names the capped means in a tag."""
    src, imgs = _write_set(tmp_path, ["p1", "p2"])

    def fake_ours(a, b, nets, params, names, progress=None):
        lap = to_uint8(laplacian_fuse(a, b))
        dm = np.ones(a.shape[:2], bool)
        return {"Ours": (imgs["p1"][2] if "p1-A" in names[0] else lap, dm), "Ours-initial": (lap, dm)}

    monkeypatch.setattr(ev, "_ours", fake_ours)
    cfg = ev.parse_config({"methods": ["Ours-initial", "Ours", "GFF-native"], "metrics": ["QG"], "figures": False,
                           "datasets": [{"name": "tiny", "sources": str(src)}]})
    ev.run_evaluation(cfg, tmp_path / "out", object(), None, log=lambda s: None, plots=tmp_path / "plots.csv")
    d = tmp_path / "out" / "tiny"
    assert ev.CAPPED_MARK in (d / "table1.md").read_text()
    with open(d / "means.csv", newline="") as fh:
        means = {r["method"]: r for r in csv.DictReader(fh)}
    with open(tmp_path / "plots.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        plots = {r["method"]: r for r in reader}
    assert reader.fieldnames == ["method", "QG", "PSNR", "SSIM", "DM_acc", "n_inf_PSNR"], reader.fieldnames
    assert plots["tiny/Ours"]["PSNR"] == means["Ours"]["PSNR"] and plots["tiny/Ours"]["n_inf_PSNR"] == "1"
    assert plots["tiny/Ours-initial"]["n_inf_PSNR"] == "0" and plots["tiny/GFF-native"]["n_inf_PSNR"] == "0"
    from mlflow.tracking import MlflowClient

    from bafusion.tracking import EXPERIMENT, tracking_uri

    client = MlflowClient(tracking_uri=tracking_uri())
    run = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id], "tags.stage = 'evaluate'",
                             order_by=["attributes.start_time DESC"])[0]
    assert run.data.metrics["tiny.Ours.PSNR"] == pytest.approx(float(means["Ours"]["PSNR"]))
    assert json.loads(run.data.tags[ev.CAPPED_TAG]) == {"tiny.Ours.PSNR": 1}


def test_a_method_named_with_characters_mlflow_refuses_keeps_the_run_tracked(tmp_path: Path) -> None:
    """A reference method named NSCT+SR or Mine(v2) made MLflow refuse the run's whole batch of
    metrics ("Invalid value 'tiny.Mine+GF(v2).QG' ..."): tracking went off, the run 'evaluate'
    kept no metric and was marked FAILED. Such names are logged with '_' for each refused
    character (a clash gets the name's hash), and a tag maps them."""
    src, imgs = _write_set(tmp_path, ["p1"])
    ref = _write_reference(tmp_path, imgs, {"Mine+GF(v2)": gff_fuse,
                                             "Mine_GF_v2_": lambda a, b: (a.astype(float) + b) / 2})
    cfg = ev.parse_config({"methods": ["Laplacian"], "metrics": ["QG"], "figures": False,
                           "datasets": [{"name": "tiny", "sources": str(src), "reference": str(ref),
                                         "reference_methods": ["Mine+GF(v2)", "Mine_GF_v2_"]}]})
    ev.run_evaluation(cfg, tmp_path / "out", log=lambda s: None)
    from mlflow.tracking import MlflowClient

    from bafusion.tracking import EXPERIMENT, tracking_uri

    client = MlflowClient(tracking_uri=tracking_uri())
    run = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id], "tags.stage = 'evaluate'",
                             order_by=["attributes.start_time DESC"])[0]
    assert run.info.status == "FINISHED" and "bafusion.incomplete" not in run.data.tags, run.data.tags
    import hashlib

    clash = "tiny.Mine_GF_v2_.QG-" + hashlib.sha256(b"tiny.Mine+GF(v2).QG").hexdigest()[:8]
    assert json.loads(run.data.tags["renamed_metrics"])["tiny.Mine+GF(v2).QG"] == clash
    with open(tmp_path / "out" / "tiny" / "means.csv", newline="") as fh:
        means = {r["method"]: float(r["QG"]) for r in csv.DictReader(fh)}
    assert len(set(means.values())) == 3, means
    assert run.data.metrics[clash] == pytest.approx(means["Mine+GF(v2)"])
    assert run.data.metrics["tiny.Mine_GF_v2_.QG"] == pytest.approx(means["Mine_GF_v2_"])
    assert run.data.metrics["tiny.Laplacian.QG"] == pytest.approx(means["Laplacian"])


def test_a_dataset_named_with_characters_mlflow_refuses_keeps_the_run_tracked(tmp_path: Path) -> None:
    """A dataset named Lytro(2) failed the MLflow run's params at its start (its key
    "evaluate.datasets.Lytro(2).sources"): tracking went off, the run 'evaluate' kept no param nor
    metric and stayed RUNNING, though its metrics were renamed for MLflow. Its params are keyed
    as its metrics are, its name as given among them."""
    from mlflow.tracking import MlflowClient

    from bafusion.tracking import EXPERIMENT, tracking_uri

    src, _ = _write_set(tmp_path, ["p1"])
    cfg = ev.parse_config({"methods": ["Laplacian"], "metrics": ["QG"], "figures": False,
                           "datasets": [{"name": "Lytro(2)", "sources": str(src)}, {"name": "plain", "sources": str(src)}]})
    ev.run_evaluation(cfg, tmp_path / "out", log=lambda s: None)
    client = MlflowClient(tracking_uri=tracking_uri())
    run = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id], "tags.stage = 'evaluate'",
                             order_by=["attributes.start_time DESC"])[0]
    assert run.info.status == "FINISHED" and "bafusion.incomplete" not in run.data.tags, run.data.tags
    params = run.data.params
    assert params["evaluate.datasets.Lytro_2_.name"] == "Lytro(2)" and params["evaluate.datasets.Lytro_2_.sources"] == str(src)
    assert params["evaluate.datasets.plain.sources"] == str(src) and "evaluate.datasets.plain.name" not in params
    assert json.loads(run.data.tags["renamed_metrics"])["Lytro(2).Laplacian.QG"] == "Lytro_2_.Laplacian.QG"
    assert "Lytro_2_.Laplacian.QG" in run.data.metrics and "plain.Laplacian.QG" in run.data.metrics


def test_our_mean_over_fewer_pairs_is_marked_in_every_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ours with a flat output on p2 (QCB NaN there): its QCB mean over p1 alone is marked in
    table1.md, counted in means.csv, means-sets.csv and metrics.json, and ranked behind the
    methods with a value on both pairs; the other metrics and methods are as before."""
    src, _ = _write_set(tmp_path, ["p1", "p2"])

    def fake_ours(a, b, nets, params, names, progress=None):
        lap = to_uint8(laplacian_fuse(a, b))
        dm = np.ones(a.shape[:2], bool)
        return {"Ours": (np.full_like(lap, 128) if "p2-A" in names[0] else lap, dm), "Ours-initial": (lap, dm)}

    monkeypatch.setattr(ev, "_ours", fake_ours)
    cfg = ev.parse_config({
        "methods": ["Ours-initial", "Ours", "GFF-native"], "metrics": ["QG", "QCB"], "figures": False,
        "datasets": [{"name": "tiny", "sources": str(src), "sets": ["p1", "p"]}],
    })
    doc = ev.run_evaluation(cfg, tmp_path / "out", object(), None, log=lambda s: None, plots=tmp_path / "plots.csv")
    d = tmp_path / "out" / "tiny"
    with open(d / "means.csv", newline="") as fh:
        means = {r["method"]: r for r in csv.DictReader(fh)}
    assert means["Ours"]["n_QCB"] == "1" and means["GFF-native"]["n_QCB"] == "2" and "n_QG" not in means["Ours"]
    # the plots CSV and MLflow carried the partial mean bare (a dot at the top of the QCB plot):
    # left out there, the other means as in means.csv
    with open(tmp_path / "plots.csv", newline="") as fh:
        plots = {r["method"]: r for r in csv.DictReader(fh)}
    assert plots["tiny/Ours"]["QCB"] == "" and plots["tiny/Ours"]["QG"] == means["Ours"]["QG"]
    assert plots["tiny/GFF-native"]["QCB"] == means["GFF-native"]["QCB"] != ""
    from mlflow.tracking import MlflowClient

    from bafusion.tracking import EXPERIMENT, tracking_uri

    client = MlflowClient(tracking_uri=tracking_uri())
    run = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id], "tags.stage = 'evaluate'",
                             order_by=["attributes.start_time DESC"])[0]
    logged = run.data.metrics
    assert "tiny.Ours.QCB" not in logged and "tiny.p.Ours.QCB" not in logged  # over 1 of 2 pairs
    assert logged["tiny.p1.Ours.QCB"] == float(means["Ours"]["QCB"])  # set p1: over its one pair, like the others
    assert "tiny.Ours.QG" in logged and "tiny.GFF-native.QCB" in logged and "tiny.Ours-initial.QCB" in logged
    with open(d / "metrics.csv", newline="") as fh:
        rows = [{**r, "QCB": float(r["QCB"] or "nan")} for r in csv.DictReader(fh)]
    ours_qcb = next(r["QCB"] for r in rows if r["pair"] == "p1" and r["method"] == "Ours")
    assert float(means["Ours"]["QCB"]) == ours_qcb  # the mean over p1 alone
    with open(d / "means-sets.csv", newline="") as fh:
        sets = {(r["set"], r["method"]): r for r in csv.DictReader(fh)}
    assert sets[("p1", "Ours")]["n_QCB"] == "1" and sets[("p", "Ours")]["n_QCB"] == "1"
    assert doc["tiny"]["Ours"]["n_defined"] == {"QCB": 1} and "n_defined" not in doc["tiny"]["Ours-initial"]
    assert doc["tiny"]["Ours"]["sets"]["p"]["n_defined"] == {"QCB": 1}
    assert "n_defined" not in doc["tiny"]["Ours"]["sets"]["p1"]
    assert doc["tiny"]["Ours"]["rank"]["QCB"] == 2 and doc["tiny"]["Ours"]["rank_of"]["QCB"] == 2
    table = (d / "table1.md").read_text()
    main = table.split("\n## ")[0]
    ours_line = next(ln for ln in main.splitlines() if ln.startswith("| Ours |"))
    assert f"{ours_qcb:.4f} (n=1/2) (" in ours_line and "**" not in ours_line.split("|")[3]
    assert ev.PARTIAL_NOTE in main
    assert "| Ours | all | " in table and "of 2 (n=1/2) |" in table.split("## Rank of ours")[1].split("\n## ")[0]


# --------------------------------------------------------------------------------------
# Peers known only by metric values; like-for-like JPEG storage; per-set tables
# --------------------------------------------------------------------------------------


def _jpeg_by_hand(img: np.ndarray, quality: int) -> np.ndarray:
    import io

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality, subsampling=2)  # 2 = 4:2:0
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())))


def test_peer_metrics_jpeg_storage_and_sets(tmp_path: Path) -> None:
    """Two tiny pairs in two sets ('aa-', 'bb-'); peers P1 (better than Ours everywhere) and
    P2 (much worse on 'bb', as good as P1 on 'aa') known only by a hand-made CSV with QMI and QG
    (no QY). Ours is measured after JPEG re-encoding at 75 on 'aa' and 92 on 'bb', exactly as
    re-encoding by hand gives; its lossless values are kept beside."""
    from bafusion.fusion import FusionNets, FusionParams, fuse_images
    from bafusion.nets.model import build_model

    src = tmp_path / "pairs"
    src.mkdir()
    rng = np.random.default_rng(5)
    imgs = {}
    for n in ("aa-01", "bb-01"):
        a, b, _, _ = _pair(rng)
        Image.fromarray(a).save(src / f"{n}-A.png")
        Image.fromarray(b).save(src / f"{n}-B.png")
        imgs[n] = (a, b)
    torch.manual_seed(2)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        nets = FusionNets(build_model(8), build_model(8), 12, 12, torch.device("cpu"))
        params = FusionParams(l=2, min_region=0.0)
        quality = {"aa-01": 75, "bb-01": 92}
        lossless = {n: fuse_images(a, b, nets, params).fused for n, (a, b) in imgs.items()}
        by_hand = {n: compute_all(*imgs[n], _jpeg_by_hand(f, quality[n]), ["QMI", "QG", "QY"]) for n, f in lossless.items()}
        plain = {n: compute_all(*imgs[n], f, ["QMI", "QG", "QY"]) for n, f in lossless.items()}
        # P1 = Ours + 0.25; P2 = Ours + 0.25 on aa-01, Ours - 0.5 on bb-01: known ranks
        peers = tmp_path / "peers.csv"
        lines = ["pair,method,QMI,QG,extra"]
        for n, v in by_hand.items():
            d2 = 0.25 if n == "aa-01" else -0.5
            lines += [f"{n},P1,{v['QMI'] + 0.25!r},{v['QG'] + 0.25!r},x", f"{n},P2,{v['QMI'] + d2!r},{v['QG'] + d2!r},y"]
        peers.write_text("\n".join(lines) + "\n")
        cfg = ev.parse_config({
            "methods": ["Ours"], "metrics": ["QMI", "QG", "QY"], "figures": False,
            "datasets": [{"name": "mini", "sources": str(src), "reference_metrics": str(peers),
                          "jpeg_quality": {"aa": 75, "bb": 92}, "sets": ["aa", "bb"]}],
        })
        ds = cfg.datasets[0]
        assert ds.reference_methods == ("P1", "P2")  # default: every method of the CSV, in order
        doc = ev.run_evaluation(cfg, tmp_path / "out", nets, params, log=lambda s: None)
    finally:
        torch.set_num_threads(before)
    d = tmp_path / "out" / "mini"
    with open(d / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["pair"], r["method"]) for r in rows] == [(p, m) for p in ("aa-01", "bb-01") for m in ("P1", "P2", "Ours")]
    for r in rows:
        n = r["pair"]
        if r["method"] == "Ours":
            assert r["jpeg_quality"] == str(quality[n])
            for q in ("QMI", "QG", "QY"):
                assert float(r[q]) == by_hand[n][q]  # measured on the re-encoded image, exactly
                assert float(r[f"lossless_{q}"]) == plain[n][q]
            assert float(r["QMI"]) != plain[n]["QMI"]
            # the stored .jpg is the image that was measured
            np.testing.assert_array_equal(np.asarray(Image.open(d / "fused" / "Ours" / f"{n}.jpg")),
                                          _jpeg_by_hand(lossless[n], quality[n]))
            np.testing.assert_array_equal(np.asarray(Image.open(d / "fused" / "Ours" / f"{n}.png")), lossless[n])
        else:
            assert r["QY"] == "" and r["jpeg_quality"] == "" and r["lossless_QMI"] == ""
    # Table 1: peer means and wins; P1 wins both pairs on QMI and QG, QY is n/a for peers
    table = (d / "table1.md").read_text()
    main = table.split("\n## ")[0]
    mean_qmi = {m: float(np.mean([by_hand[n]["QMI"] + off[n] for n in by_hand]))
                for m, off in (("P1", {"aa-01": 0.25, "bb-01": 0.25}), ("P2", {"aa-01": 0.25, "bb-01": -0.5}),
                               ("Ours", {"aa-01": 0.0, "bb-01": 0.0}))}
    # with jpeg_quality each row says how it was stored when measured (column 'Scored as')
    scored = {ln.split("|")[1].strip(): ln.split("|")[2].strip() for ln in main.splitlines() if ln.startswith("| ")}
    assert scored["P1"] == scored["P2"] == "published files (quality not stated)"
    assert scored["Ours"] == "JPEG q75 (aa), q92 (bb), re-encoded here"
    assert scored["*Ours, lossless*"] == "as computed (PNG, lossless), before re-encoding"
    line = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[3:-1]] for ln in main.splitlines() if ln.startswith("| ")}
    assert line["*Ours, lossless*"][0] == f"*{np.mean([plain[n]['QMI'] for n in plain]):.4f}*"
    assert line["P1"][0] == f"**{mean_qmi['P1']:.4f}** (1)"  # aa-01: P1 and P2 tie (nobody wins)
    assert line["P2"][0] == f"{mean_qmi['P2']:.4f} (0)" and line["P2"][2] == "n/a (0)"
    assert line["Ours"][0] == f"{mean_qmi['Ours']:.4f} (0)" and line["Ours"][2].endswith("(2)")
    assert "re-encoding it as JPEG" in main and "quality 75 on 1 pair(s) (`aa*`); quality 92 on 1 pair(s) (`bb*`)" in main
    assert "2 methods from `peers.csv`" in main and "no QY" in main
    # ranks among P1, P2, Ours: QY only Ours has (1st of 1)
    ranks = {(ln.split("|")[1].strip(), ln.split("|")[2].strip()): [c.strip() for c in ln.split("|")[3:-1]]
             for ln in table.split("## Rank of ours")[1].split("\n## ")[0].splitlines() if ln.startswith("| Ours")}
    assert ranks[("Ours", "all")] == ["2nd of 3", "2nd of 3", "1st of 1"]
    assert ranks[("Ours", "aa")] == ["3rd of 3", "3rd of 3", "1st of 1"]
    assert ranks[("Ours", "bb")] == ["2nd of 3", "2nd of 3", "1st of 1"]
    assert "## Set aa (1 pairs)" in table and "## Set bb (1 pairs)" in table
    assert "## Lossless output" in table and f"| Ours | all | {np.mean([plain[n]['QMI'] for n in plain]):.4f} |" in table
    assert doc["mini"]["Ours"]["rank"] == {"QMI": 2, "QG": 2, "QY": 1}
    assert doc["mini"]["Ours"]["rank_of"] == {"QMI": 3, "QG": 3, "QY": 1}
    assert doc["mini"]["Ours"]["sets"]["aa"]["rank"]["QMI"] == 3
    assert doc["mini"]["Ours"]["sets"]["bb"]["QMI"] == by_hand["bb-01"]["QMI"]
    assert doc["mini"]["Ours"]["lossless"]["QMI"] == pytest.approx(np.mean([plain[n]["QMI"] for n in plain]))
    with open(d / "means-sets.csv", newline="") as fh:
        sm = {(r["set"], r["method"]): r for r in csv.DictReader(fh)}
    assert float(sm[("aa", "P2")]["QMI"]) == by_hand["aa-01"]["QMI"] + 0.25 and sm[("all", "P1")]["n"] == "2"


def test_jpeg_quality_beside_lossless_reference_files_says_it_is_not_like_for_like(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """With jpeg_quality only the methods computed here are re-encoded; reference files are
    measured as stored. table1.md said "like for like" beside PNG references: now its header says
    which methods were re-encoded at which quality, that the references are measured as stored,
    and (with a warning) that lossless references are not like for like."""
    src, imgs = _write_set(tmp_path, ["p1", "p2"])
    ref = _write_reference(tmp_path, imgs, {"CNN": laplacian_fuse, "JP": gff_fuse})
    for n in ("p1", "p2"):  # JP stored as JPEG: like for like
        Image.open(ref / "JP" / f"{n}.png").save(ref / "JP" / f"{n}.jpg", quality=80)
        (ref / "JP" / f"{n}.png").unlink()
    out = tmp_path / "out"
    cfg = {"methods": ["Laplacian"], "metrics": ["QG"], "figures": False,
           "datasets": [{"name": "tiny", "sources": str(src), "reference": str(ref), "reference_methods": ["CNN", "JP"],
                         "jpeg_quality": 80}]}
    assert cli_main(["evaluate", "--params-json", json.dumps(cfg), "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "warning: dataset 'tiny': not like for like: the stored results of CNN (2 pair(s)) are lossless" in err
    head = (out / "tiny" / "table1.md").read_text().split("| Method")[0]
    assert "like for like." not in head.replace("Not like for like", "")
    assert "The output of the methods computed here (Laplacian) is measured after re-encoding it as JPEG" in head
    assert "quality 80 on 2 pair(s)" in head
    assert "reference folder (CNN, JP) are measured as stored, not re-encoded" in head
    assert "**Not like for like:** the stored results of CNN (2 pair(s)) are lossless files" in head
    rows = (out / "tiny" / "table1.md").read_text().split("| Method")[1]  # each row says how it was stored
    assert "| CNN | stored PNG, lossless |" in rows and "| JP | stored JPEG |" in rows
    assert "| Laplacian | JPEG q80, re-encoded here |" in rows
    # JPEG references only: no warning, and the header says like for like
    import shutil

    shutil.rmtree(ref / "CNN")
    cfg["datasets"][0]["reference_methods"] = ["JP"]
    assert cli_main(["evaluate", "--params-json", json.dumps(cfg), "--out", str(out), "--no-progress"]) == 0
    assert "not like for like" not in capsys.readouterr().err
    head = (out / "tiny" / "table1.md").read_text().split("| Method")[0]
    assert "Not like for like" not in head and "Like for like where the peers' files are JPEG" in head


def test_a_set_that_matches_no_pair_is_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A ``sets`` prefix matching no pair ("zzz", "P" for "p") was accepted: no table, no word,
    and means-sets.csv rows over 0 pairs. Refused before any work, naming the set and listing
    the pairs' prefixes."""
    src, _ = _write_set(tmp_path, ["aa-1", "aa-2", "bb-1"])
    out = tmp_path / "out"
    cfg = {"methods": ["Laplacian"], "metrics": ["QG"], "figures": False,
           "datasets": [{"name": "t", "sources": str(src), "sets": ["aa", "zzz"]}]}
    assert cli_main(["evaluate", "--params-json", json.dumps(cfg), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert ("evaluate.datasets[0].sets: 'zzz' matches none of the 3 pairs of dataset 't' (a set is a pair-name "
            "prefix, case-sensitive); their prefixes: aa, bb") in err
    assert not out.exists() and "Traceback" not in err
    ds = ev.Dataset(name="t", sources=src, sets=("aa", "b"))  # every set has a pair: accepted
    assert len(ev.check_dataset(ds, ev.EvalConfig(datasets=(ds,), methods=("Laplacian",)))) == 3


def test_a_set_emptied_by_pattern_or_pairs_names_the_filter(tmp_path: Path) -> None:
    """A set that ``pattern`` or ``pairs`` left without pairs was refused as "'bb' matches none of
    the 2 pairs", read as a typo: the message names the filter that chose the pairs."""
    src, _ = _write_set(tmp_path, ["aa-1", "aa-2", "bb-1"])
    (src / "index.json").unlink()  # a plain folder: pattern applies
    for kw, chosen, widen in (({"pattern": "aa-*"}, "chosen by its pattern 'aa-*'", "widen pattern"),
                              ({"pairs": ("aa-1", "aa-2")}, "chosen by its pairs [aa-1, aa-2]", "widen pairs"),
                              ({"pattern": "aa*", "pairs": ("aa-1",)},
                               "chosen by its pattern 'aa*' and pairs [aa-1]", "widen pattern and pairs")):
        ds = ev.Dataset(name="t", sources=src, sets=("aa", "bb"), **kw)
        with pytest.raises(UserError) as e:
            ev.check_dataset(ds, ev.EvalConfig(datasets=(ds,), methods=("Laplacian",)))
        n = len(kw.get("pairs", ())) or 2
        assert str(e.value) == (f"evaluate.datasets[0].sets: 'bb' matches none of the {n} pairs of dataset 't' {chosen} "
                                f"(a set is a pair-name prefix, case-sensitive); their prefixes: aa; leave the set out "
                                f"(sets) or {widen} to take its pairs")


def test_the_progress_line_never_prints_nan(tmp_path: Path) -> None:
    """A flat reference result has QCB NaN: the per-pair line printed 'QCB=nan' (README: NaN is
    never printed); it prints n/a, as the tables do."""
    src, imgs = _write_set(tmp_path, ["p1"])
    ref = _write_reference(tmp_path, imgs, {"FLAT": lambda a, b: np.full_like(a, 128)})
    ds = _dataset(src, ref, ("FLAT",))
    cfg = ev.EvalConfig(datasets=(ds,), methods=("Laplacian",), metrics=("QG", "QCB"), figures=False)
    lines: list[str] = []
    ev.run_evaluation(cfg, tmp_path / "out", log=lines.append)
    line = next(ln for ln in lines if ln.startswith("tiny/p1: "))
    assert ", FLAT QG=" in line and line.endswith(" QCB=n/a") and "nan" not in line.lower(), line


def test_peer_values_outside_their_range_or_infinite_are_refused(tmp_path: Path) -> None:
    """QMI 2.5 and QG -3 were taken (and won), and an 'inf' cell was called "no value": refused
    naming line and column, inf as not finite; values within the documented ranges pass."""
    peers = tmp_path / "peers.csv"
    for cell, want in (("2.5,0.7", r"line 3, column QMI: 2\.5 is outside the range of QMI \(0 to 2\)"),
                       ("1.0,-3", r"line 3, column QG: -3 is outside the range of QG \(0 to 1\)"),
                       ("1.0,70", r"line 3, column QG: 70 is outside the range of QG \(0 to 1\): a value in percent"),
                       ("inf,0.7", r"line 3, column QMI: 'inf' is not finite"),
                       ("1.0,-Infinity", r"line 3, column QG: '-Infinity' is not finite")):
        peers.write_text(f"pair,method,QMI,QG,QCV\np1,P1,1.0,0.7,3\np2,P1,{cell},4\n")
        with pytest.raises(InputFileError, match=want):
            ev.read_peer_metrics(peers)
    peers.write_text("pair,method,QMI,QG,QCV\np1,P1,0,1,0\np2,P1,2,0,1e6\n")  # the bounds and a large QCV
    assert ev.read_peer_metrics(peers).values[("p2", "P1")] == {"QMI": 2.0, "QG": 0.0, "QCV": 1e6}
    peers.write_text("pair,method,QCV\np1,P1,-0.5\n")
    with pytest.raises(InputFileError, match=r"column QCV: -0\.5 is outside the range of QCV \(at least 0\)"):
        ev.read_peer_metrics(peers)


def test_negative_qe_qp_qy_as_our_metrics_compute_them_are_accepted_from_peers(tmp_path: Path) -> None:
    """QE was refused below 0 (its docstring said 0..1) although ``bafusion metrics`` computes
    -0.78 for a textured A = B and F = 255 - A: QE, QP and QY are correlations, -1..1; a value
    below -1 is refused."""
    from bafusion.evaluation.metrics import VALUE_RANGES, qe

    rng = np.random.default_rng(0)
    a = ndimage.gaussian_filter(rng.random((64, 64)) * 255, 2)
    a = np.clip((a - a.mean()) * 4 + 128, 0, 255).astype(np.uint8)
    v = qe(a, a, 255 - a)
    assert -1 <= v < -0.5
    peers = tmp_path / "peers.csv"
    peers.write_text(f"pair,method,QE,QP,QY\np1,P1,{v!r},-0.12,-0.98\n")
    assert ev.read_peer_metrics(peers).values[("p1", "P1")] == {"QE": v, "QP": -0.12, "QY": -0.98}
    for q in ("QE", "QP", "QY"):
        assert VALUE_RANGES[q] == (-1.0, 1.0)
        peers.write_text(f"pair,method,{q}\np1,P1,-1.5\n")
        with pytest.raises(InputFileError, match=rf"line 2, column {q}: -1\.5 is outside the range of {q} \(-1 to 1\)"):
            ev.read_peer_metrics(peers)


def test_peer_config_errors(tmp_path: Path) -> None:
    from bafusion.errors import UserError

    peers = tmp_path / "peers.csv"
    peers.write_text("pair,method,QMI\np1,P1,1.0\n")
    base = {"name": "x", "sources": str(tmp_path), "reference_metrics": str(peers)}
    with pytest.raises(UserError, match=r"\['CNN'\] not in"):
        ev.parse_config({"datasets": [{**base, "reference_methods": ["P1", "CNN"]}]})
    with pytest.raises(UserError, match="jpeg_quality"):
        ev.parse_config({"datasets": [{**base, "jpeg_quality": {"p": 101}}]})
    with pytest.raises(UserError, match="sets"):
        ev.parse_config({"datasets": [{**base, "sets": "p"}]})
    assert ev.parse_config({"datasets": [{**base, "jpeg_quality": 90}]}).datasets[0].quality_for("zz") == 90
    peers.write_text("pair,method,QMI\np1,P1,1.0\np1,P1,2.0\n")
    with pytest.raises(InputFileError, match="given twice"):
        ev.read_peer_metrics(peers)
    with pytest.raises(InputFileError, match="not found"):
        ev.read_peer_metrics(tmp_path / "none.csv")
    assert ev.ordinal(1) == "1st" and ev.ordinal(2) == "2nd" and ev.ordinal(3) == "3rd" and ev.ordinal(11) == "11th"
    assert ev.ordinal(12) == "12th" and ev.ordinal(22) == "22nd" and ev.ordinal(31) == "31st"


def test_a_blank_peer_cell_is_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A blank cell ranked that peer on fewer pairs (a missing row was refused, an empty cell
    not): now one line naming the CSV, its line and column, before any pair is fused. A method
    blank on every pair of a metric is n/a for it, as before."""
    src, _ = _write_set(tmp_path, ["p1", "p2", "p3"])
    peers = tmp_path / "peers.csv"
    peers.write_text("pair,method,QG,QMI\np1,P1,0.5,\np2,P1,,\np3,P1,0.75,\np1,P2,0.25,1\np2,P2,0.25,1\np3,P2,0.25,1\n")
    out = tmp_path / "evaluation"
    cfg = {"methods": ["Laplacian"], "metrics": ["QG", "QMI"], "figures": False,
           "datasets": [{"name": "tiny", "sources": str(src), "reference_metrics": str(peers)}]}
    fused = []
    import bafusion.evaluation.baselines as bl

    real = bl.laplacian_fuse
    try:
        bl.laplacian_fuse = lambda a, b: fused.append(1) or real(a, b)  # type: ignore[assignment]
        rc = cli_main(["evaluate", "--params-json", json.dumps(cfg), "--out", str(out)])
    finally:
        bl.laplacian_fuse = real  # type: ignore[assignment]
    err = capsys.readouterr().err
    assert rc == 2 and not fused and not out.exists()
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert str(peers) in err and "line 3, column QG" in err and "'P1'" in err and "2 of 3" in err
    # P1's QMI is blank on every pair: n/a, not refused; P1's QG complete: evaluated
    peers.write_text(peers.read_text().replace("p2,P1,,", "p2,P1,0.625,"))
    assert cli_main(["evaluate", "--params-json", json.dumps(cfg), "--out", str(out)]) == 0
    table = (out / "tiny" / "table1.md").read_text()
    assert "| P1 | 0.6250 (0) | n/a (0) |" in table and "(n=" not in table


def _real_section(shared: Path, text: str) -> dict:
    import yaml

    return yaml.safe_load(text.replace("../shared/data", str(shared)))


def test_real_dataset_config_finds_41_pairs_and_30_peers(shared_data: Path) -> None:
    """benchmarks/eval_real.yaml and the commented example in params.yaml load the real set."""
    if not (shared_data / "eval" / "real").is_dir():
        pytest.skip(f"no eval/real in {shared_data}")
    repo = Path(__file__).resolve().parents[1]
    sec = _real_section(shared_data, (repo / "benchmarks" / "eval_real.yaml").read_text())["evaluate"]
    example = next(ln for ln in (repo / "params.yaml").read_text().splitlines() if "name: real" in ln)
    example_ds = _real_section(shared_data, example.strip().lstrip("#").strip().lstrip("-").strip())
    for raw in (sec["datasets"][0], example_ds):
        ds = ev.parse_config({**sec, "datasets": [raw]}, repo).datasets[0]
        assert ds.name == "real"
        pairs = ev.find_pairs(ds)
        assert len(pairs) == 41
        assert sum(p.name.startswith("savic") for p in pairs) == 21 and sum(p.name.startswith("stand") for p in pairs) == 8
        assert len(ds.reference_methods) == 30 and "DPRL" in ds.reference_methods
        peers = ev.read_peer_metrics(ds.reference_metrics)
        assert len(peers.values) == 41 * 30 and peers.metrics == ("QMI", "QG", "QY", "QCB")
        ev._check_peer_rows(ds, pairs)
        assert ds.sets == ("savic", "tsai", "stand")
        assert [ds.quality_for(n) for n in ("savic-01", "tsai-11", "stand-08")] == [75, 75, 92]
        # the peers' published qualities of SOURCES.md, said per row of the tables
        assert [ds.reference_quality_for(m, n) for m, n in (("DPRL", "savic-01"), ("DPRL", "stand-08"), ("ASR", "tsai-11"),
                                                             ("ASR", "stand-08"), ("ECNN", "stand-08"), ("SFMD", "stand-01"),
                                                             ("IFCNN", "stand-02"))] == [95, 95, 75, 92, 75, 75, 75]


def test_a_dataset_given_on_the_command_line_compares_the_methods_of_its_reference_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`--dataset mine=PAIRS,REF` with one's own method in REF/MyGFF/ failed with '... fused
    image(s) of method(s) 'NSCT', 'SR', ... missing', never saying which key selects them; the
    sub-folders of REF are now its reference methods (said on stderr)."""
    src, imgs = _write_set(tmp_path, ["p1", "p2"])
    ref = _write_reference(tmp_path, imgs, {"MyGFF": gff_fuse, "CNN": laplacian_fuse})
    (ref / ".cache").mkdir()  # not a method
    out = tmp_path / "ev"
    rc = cli_main(["evaluate", "--dataset", f"mine={src},{ref}", "--methods", "Laplacian", "--metrics", "QG",
                   "--root", str(tmp_path), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert (f"dataset 'mine': reference methods CNN, MyGFF: the sub-folders of {ref} (<REF>/<METHOD>/<pair>.<ext>; "
            "pass --reference-methods M1,M2 to choose)") in err, err
    rows = list(csv.DictReader((out / "mine" / "metrics.csv").open()))
    assert sorted({r["method"] for r in rows}) == ["CNN", "Laplacian", "MyGFF"]


def test_a_dataset_folder_named_with_a_comma_can_be_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`--dataset mine=p,q` of the folder p,q was read as SOURCES p and REFERENCE q, refused as
    "reference folder .../q not found", and no spelling gave the folder. --dataset is now split
    at the last comma: a value ending in a comma has no reference (`mine=p,q,`), `mine=p,q,REF`
    has one, and `mine=p,q` is refused saying how to write it; a REFERENCE named with a comma is
    refused saying that it cannot be given so."""
    from bafusion.cli.evaluate import split_dataset

    assert split_dataset("mine=p,q,") == ("mine", "p,q", "")
    assert split_dataset("mine=p,q,r") == ("mine", "p,q", "r")
    assert split_dataset("mine=p") == ("mine", "p", "")
    assert split_dataset("mine=a=b,c") == ("mine", "a=b", "c")
    _, imgs = _write_set(tmp_path, ["p1"])
    (tmp_path / "pairs").rename(tmp_path / "p,q")
    _write_reference(tmp_path, imgs, {"MyGFF": gff_fuse})
    monkeypatch.chdir(tmp_path)
    base = ["evaluate", "--methods", "Laplacian", "--metrics", "QG"]
    for value, out, methods in (("mine=p,q,", "e1", ["Laplacian"]), ("mine=p,q,reference", "e2", ["Laplacian", "MyGFF"])):
        rc = cli_main([*base, "--dataset", value, "--out", out])
        err = capsys.readouterr().err
        assert rc == 0, err
        rows = list(csv.DictReader((tmp_path / out / "mine" / "metrics.csv").open()))
        assert sorted({r["method"] for r in rows}) == methods, rows
    assert cli_main([*base, "--dataset", "mine=p,q", "--out", "e3"]) == 2
    err = capsys.readouterr().err
    assert ("--dataset mine=p,q: p,q is one folder, but --dataset splits SOURCES from REFERENCE at the last comma "
            "('p', 'q'): to evaluate p,q without a reference folder, end the value with a comma, --dataset mine=p,q, "
            "(with one: --dataset mine=p,q,REF)") in err, err
    (tmp_path / "reference").rename(tmp_path / "ref,x")
    (tmp_path / "p,q").rename(tmp_path / "pairs")
    assert cli_main([*base, "--dataset", "mine=pairs,ref,x", "--out", "e4"]) == 2
    err = capsys.readouterr().err
    assert ("--dataset mine=pairs,ref,x: --dataset splits SOURCES from REFERENCE at the last comma ('pairs,ref', 'x'), "
            "so a REFERENCE named with a comma (ref,x) cannot be given: give it through a link") in err, err
    assert not any((tmp_path / e).exists() for e in ("e3", "e4"))


def test_dataset_option_paths_are_relative_to_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`cd sub && bafusion evaluate --dataset mine=pairs,reference` in a project took PAIRS and REF
    from the project root (--root's default) while --out was the working folder's: "reference
    folder <project>/reference not found". Paths typed in --dataset are now the working folder's,
    as every other path option (also with --root elsewhere and for --reference-methods); the
    parameters' dataset paths (--params-json, as the pipeline passes them) stay the project
    root's."""
    project = tmp_path / "project"
    sub = project / "sub"
    sub.mkdir(parents=True)
    (project / "dvc.yaml").write_text("stages: {}\n")
    _, imgs = _write_set(sub, ["p1", "p2"])
    _write_reference(sub, imgs, {"MyGFF": gff_fuse})
    monkeypatch.chdir(sub)
    base = ["evaluate", "--methods", "Laplacian", "--metrics", "QG"]
    for extra, out in (([], "e1"), (["--reference-methods", "MyGFF"], "e2"), (["--root", str(tmp_path)], "e3")):
        rc = cli_main([*base, "--dataset", "mine=pairs,reference", *extra, "--out", out])
        err = capsys.readouterr().err
        assert rc == 0, err
        rows = list(csv.DictReader((sub / out / "mine" / "metrics.csv").open()))
        assert sorted({(r["pair"], r["method"]) for r in rows}) == [
            (p, m) for p in ("p1", "p2") for m in ("Laplacian", "MyGFF")], rows
    # the parameters' datasets: from the project root, not the working folder
    cfg = {"datasets": [{"name": "mine", "sources": "sub/pairs", "reference": "sub/reference",
                         "reference_methods": ["MyGFF"]}]}
    rc = cli_main([*base, "--params-json", json.dumps(cfg), "--out", "e4"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert len(list(csv.DictReader((sub / "e4" / "mine" / "metrics.csv").open()))) == 4


def test_a_reference_folder_of_computed_method_names_says_to_rename_them(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`--dataset mine=PAIRS,<earlier out>/mine/fused` said the folder "holds no method folders"
    though it holds Laplacian/ and Ours/: their names are those of methods computed here. Said
    so, with a suggestion to rename them."""
    src, imgs = _write_set(tmp_path, ["p1"])
    ref = _write_reference(tmp_path, imgs, {"Laplacian": laplacian_fuse, "Ours": gff_fuse})
    rc = cli_main(["evaluate", "--dataset", f"mine={src},{ref}", "--methods", "Laplacian", "--metrics", "QG",
                   "--root", str(tmp_path), "--out", str(tmp_path / "ev")])
    err = capsys.readouterr().err
    assert rc == 2 and "holds no method folders" not in err
    assert (f"the folders of {ref} (Laplacian, Ours) have the names of methods computed here, so none is read as a "
            "reference method: rename them (e.g. Laplacian-old) to compare them") in err, err


def test_a_reference_method_in_methods_says_where_it_goes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src, imgs = _write_set(tmp_path, ["p1"])
    ref = _write_reference(tmp_path, imgs, {"MyGFF": gff_fuse})
    rc = cli_main(["evaluate", "--dataset", f"mine={src},{ref}", "--methods", "Laplacian,MyGFF", "--metrics", "QG",
                   "--root", str(tmp_path), "--out", str(tmp_path / "ev")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert ("--methods: 'MyGFF' is not a method computed here (Ours-initial, Ours, GFF-native, Laplacian): a method "
            "with fused images of its own is a reference method, read from <REF>/MyGFF/<pair>.<ext>") in err, err
    assert "reference_methods" in err and f"; {ref / 'MyGFF'} exists, so it is compared already" in err


def test_dataset_option_with_datasets_in_params_json_merges_or_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """--dataset dropped the datasets of --params-json silently. A JSON dataset of the same name
    gives its settings (reference_methods here); another name is refused."""
    src, imgs = _write_set(tmp_path, ["p1"])
    ref = _write_reference(tmp_path, imgs, {"MyGFF": gff_fuse, "CNN": laplacian_fuse})
    base = ["evaluate", "--dataset", f"mine={src},{ref}", "--methods", "Laplacian", "--metrics", "QG",
            "--root", str(tmp_path), "--out", str(tmp_path / "ev")]
    other = {"datasets": [{"name": "other", "sources": str(src)}]}
    assert cli_main([*base, "--params-json", json.dumps(other)]) == 2
    err = capsys.readouterr().err
    assert ("--dataset mine: --params-json gives evaluate.datasets too ('other'), which --dataset would drop: "
            "name the dataset as one of them to take its settings (e.g. reference_methods), or leave "
            "'datasets' out of --params-json") in err, err
    same = {"datasets": [{"name": "mine", "sources": "elsewhere", "reference_methods": ["MyGFF"]}]}
    assert cli_main([*base, "--params-json", json.dumps(same)]) == 0, capsys.readouterr().err
    rows = list(csv.DictReader((tmp_path / "ev" / "mine" / "metrics.csv").open()))
    assert sorted({r["method"] for r in rows}) == ["Laplacian", "MyGFF"]


def test_missing_reference_methods_error_says_which_key_selects_them(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    src, imgs = _write_set(tmp_path, ["p1"])
    ref = _write_reference(tmp_path, imgs, {"MyGFF": gff_fuse})
    cfg = {"methods": ["Laplacian"], "datasets": [{"name": "mine", "sources": str(src), "reference": str(ref)}]}
    assert cli_main(["evaluate", "--params-json", json.dumps(cfg), "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err
    assert ("6 fused image(s) of method(s) 'NSCT', 'SR', 'NSCT-SR', 'GFF', 'DSIFT', 'CNN' missing" in err
            and "the methods read from the reference folder are the dataset's reference_methods, here NSCT, "
                "SR, NSCT-SR, GFF, DSIFT, CNN (the default: the paper's six), each in <reference>/<METHOD>/<pair>.<ext>; its sub-folders: MyGFF"
            in err), err


def test_a_method_folder_beside_the_default_six_is_said_to_be_left_out(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """A dataset of the parameters whose reference folder holds the paper's six and one's own
    method (REF/Mine/) compared the six only, without a word: Mine was in no table. A note on
    stderr names the folder and the key that selects it; none when reference_methods is chosen."""
    src, imgs = _write_set(tmp_path, ["p1"])
    ref = _write_reference(tmp_path, imgs, {m: laplacian_fuse for m in (*ev.REFERENCE_METHODS, "Mine", "Ours")})
    out = tmp_path / "ev"
    cfg = {"methods": ["Laplacian"], "metrics": ["QG"], "figures": False,
           "datasets": [{"name": "mine", "sources": str(src), "reference": str(ref)}]}
    assert cli_main(["evaluate", "--params-json", json.dumps(cfg), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert (f"note: dataset 'mine': Mine in {ref} not compared: the methods read from the reference folder are the "
            "dataset's reference_methods (the default: the paper's six); list them in its reference_methods to "
            "compare them") in err, err
    assert "Mine" not in {r["method"] for r in csv.DictReader((out / "mine" / "metrics.csv").open())}
    cfg["datasets"][0]["reference_methods"] = ["GFF", "Mine"]
    assert cli_main(["evaluate", "--params-json", json.dumps(cfg), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "not compared" not in err, err
    assert {r["method"] for r in csv.DictReader((out / "mine" / "metrics.csv").open())} == {"Laplacian", "GFF", "Mine"}


@pytest.mark.parametrize("which", ["truth", "dm"])
def test_a_truth_or_map_of_another_size_fails_before_any_fusion(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    """A truth image of the wrong size was found only on reaching its pair, after the pairs
    before it were fused; it is checked with the sources now."""
    src, imgs = _write_set(tmp_path, ["p1", "p2"])
    Image.fromarray(imgs["p2"][2][:40, :50]).save(src / f"p2-{which}.png")
    fused = []
    monkeypatch.setattr("bafusion.evaluation.baselines.laplacian_fuse",
                        lambda a, b: fused.append(1) or laplacian_fuse(a, b))
    rc = cli_main(["evaluate", "--dataset", f"t={src}", "--methods", "Laplacian", "--metrics", "QG",
                   "--root", str(tmp_path), "--out", str(tmp_path / "ev")])
    err = capsys.readouterr().err
    what = "truth" if which == "truth" else "decision map"
    assert rc == 2 and not fused, err
    assert (f"p2-{which}.png: dataset 't', pair 'p2': {what} is 50x40 (WxH) but the sources are 56x48") in err, err


def test_a_fused_image_equal_to_the_truth_has_infinite_psnr_and_wins() -> None:
    """PSNR of a perfect output is infinite: it was shown as 'n/a (0)' and an empty CSV cell,
    treated as undefined, so the perfect method could not win. NaN (undefined) stays n/a."""
    t = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert ev.truth_metrics(t, t)["PSNR"] == math.inf
    rows = _rows({"p1": {"Perfect": {"PSNR": math.inf}, "Other": {"PSNR": 30.0}, "Flat": {"PSNR": NAN}},
                  "p2": {"Perfect": {"PSNR": 40.0}, "Other": {"PSNR": 35.0}, "Flat": {"PSNR": NAN}}})
    methods = ["Perfect", "Other", "Flat"]
    table = ev.table_markdown(rows, methods, ["PSNR"])
    # in the mean, inf counts as 100 dB: one perfect pair made the mean inf whatever the others were
    assert ev.mean_values(rows, methods, "PSNR")["Perfect"] == (ev.INF_PSNR_IN_MEANS + 40.0) / 2 == 70.0
    # the 100 dB was never measured: the mean is marked, and a note says how many pairs were exact
    assert "| Perfect | **70.00†** (2) |" in table and "| Other | 32.50 (0) |" in table and "| Flat | n/a (0) |" in table
    assert table.endswith("\n\n†: mean over pairs some of which are exact (the fused image equals the truth, PSNR inf in "
                          "metrics.csv), each counted as 100 dB (PSNR: Perfect 1 pair(s)).\n")
    assert "†" not in ev.table_markdown([r for r in rows if r["pair"] == "p2"], methods, ["PSNR"])
    assert ev.rank_of(rows, methods, "PSNR", "Perfect") == (1, 2)
    cells = ev.rows_to_csv(rows, ["pair", "method", "PSNR"]).splitlines()
    assert "p1,Perfect,inf" in cells and "p1,Flat," in cells


def test_a_command_line_reference_folder_that_is_missing_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src, _ = _write_set(tmp_path, ["p1"])
    rc = cli_main(["evaluate", "--dataset", f"t={src},{tmp_path / 'nope'}", "--methods", "Laplacian", "--metrics", "QG",
                   "--root", str(tmp_path), "--out", str(tmp_path / "ev")])
    err = capsys.readouterr().err
    assert rc == 2 and f"reference folder {tmp_path / 'nope'} not found" in err, err


def test_dataset_flag_keeps_the_params_files_figure_pair_and_figure_pair_flag(tmp_path: Path, capsys) -> None:
    """`evaluate --params-file F --dataset lytro=...` made Fig. 4 of the first pair: the flag's
    dataset dropped F's figure_pair (and crop) for a dataset of that name. They are kept; a
    --pattern that leaves the pair out falls back to the first pair with a note; --figure-pair
    sets it."""
    import yaml

    src, _ = _write_set(tmp_path, ["p1", "p2", "p3"])
    (src / "index.json").unlink()  # pairs by file name, so that --pattern applies
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"evaluate": {"datasets": [
        {"name": "t", "sources": "elsewhere", "figure_pair": "p2"}]}}))
    base = ["evaluate", "--params-file", str(params), "--dataset", f"t={src}", "--methods", "Laplacian",
            "--metrics", "QG", "--root", str(tmp_path)]

    def figure_of(out: str, *extra: str) -> list[str]:
        assert cli_main([*base, "--out", str(tmp_path / out), *extra]) == 0
        return sorted(p.name for p in (tmp_path / out / "t" / "figures").glob("fig4-*.png"))

    assert figure_of("ev1") == ["fig4-p2.png"]
    assert figure_of("ev2", "--figure-pair", "p3") == ["fig4-p3.png"]
    capsys.readouterr()
    assert figure_of("ev3", "--pattern", "p[13]") == ["fig4-p1.png"]
    err = capsys.readouterr().err
    assert "figure_pair 'p2' of " in err and "params.yaml's dataset 't' is not among" in err, err
    assert cli_main([*base, "--out", str(tmp_path / "ev4"), "--figure-pair", "p9"]) == 2
    assert "--figure-pair 'p9' is not among the pairs of " in capsys.readouterr().err


def test_dataset_figures_show_the_difference_to_each_source(tmp_path: Path) -> None:
    """The difference maps were alpha |B - F| only: |A - F| (where F took A's pixels it is black)
    is written too, per method (diffA-<pair>-<method>.png) and as a second row of diff-<pair>.png."""
    from bafusion.evaluation.figures import save_dataset_figures

    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (24, 32), dtype=np.uint8)
    b = rng.integers(0, 256, (24, 32), dtype=np.uint8)
    f = a.copy()
    f[:, 16:] = b[:, 16:]
    written = save_dataset_figures(tmp_path, "p1", a, b, {"M": f}, alpha=10.0)
    names = {p.name for p in written}
    assert {"diff-p1.png", "diff-p1-M.png", "diffA-p1-M.png"} <= names, names
    da = np.asarray(Image.open(tmp_path / "diffA-p1-M.png"))
    np.testing.assert_array_equal(da, np.clip(np.round(10 * np.abs(a.astype(float) - f)), 0, 255).astype(np.uint8))
    assert not da[:, :16].any() and (np.asarray(Image.open(tmp_path / "diff-p1-M.png"))[:, 16:] == 0).all()


def test_a_much_shrunk_difference_figure_names_the_full_size_maps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrunk to ~26 %, a lone pixel of a difference map keeps a few % of its contrast, yet the
    line under diff-<pair>.png said 'shows dimmed, not dropped': it says thin details may not
    be visible at this size and names the maps at full size written beside it."""
    import bafusion.fusion.maps as maps
    from bafusion.evaluation.figures import save_dataset_figures

    lines: dict[str, str] = {}
    monkeypatch.setattr(maps, "save_figure", lambda fig, path: lines.setdefault(
        Path(path).name, " ".join(fig._supxlabel.get_text().split()) if fig._supxlabel else ""))
    a = np.zeros((1000, 1000), np.uint8)
    f = a.copy()
    f[500, 500] = 255
    written = {p.name for p in save_dataset_figures(tmp_path, "p1", a, a, {"M": f}, alpha=10.0)}
    assert {"diff-p1-M.png", "diffA-p1-M.png"} <= written, written
    line = lines["diff-p1.png"]
    assert "so thin details may not be visible at this size; the maps at full size are diff-p1-<method>.png and " \
           "diffA-p1-<method>.png beside this figure" in line, line
    assert "not dropped" not in line, line


def test_a_much_shrunk_fig4_names_the_images_at_full_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a Fig. 4 shrunk below ~32 % the line said thin details may not be visible but, unlike
    the difference figure's and Fig. 3's, named no file at full size: it names the sources, the
    fused images evaluate writes (evaluate.save_fused) and the reference folder's results."""
    import bafusion.fusion.maps as maps

    lines: dict[str, str] = {}
    monkeypatch.setattr(maps, "save_figure", lambda fig, path: lines.setdefault(
        Path(path).name, " ".join(fig._supxlabel.get_text().split()) if fig._supxlabel else ""))
    src = tmp_path / "pairs"
    src.mkdir()
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (1000, 1000), dtype=np.uint8)
    b = ndimage.uniform_filter(a, 5)
    Image.fromarray(a).save(src / "p1-A.png")
    Image.fromarray(b).save(src / "p1-B.png")
    ref = tmp_path / "reference"
    (ref / "CNN").mkdir(parents=True)
    Image.fromarray(a).save(ref / "CNN" / "p1.png")
    cfg = ev.parse_config({"methods": ["Laplacian"], "metrics": ["QG"]})
    ev.evaluate_dataset(_dataset(src, ref, ("CNN",)), cfg, tmp_path / "out" / "tiny", log=lambda line: None)
    assert (tmp_path / "out" / "tiny" / "fused" / "Laplacian" / "p1.png").is_file()
    line = lines["fig4-p1.png"]
    assert ("so thin details may not be visible at this size; the images at full size are the sources p1-A.png and "
            "p1-B.png, tiny/fused/<method>/p1.png for the methods computed here and the reference results in "
            "reference/") in line, line


def test_dataset_figures_of_methods_whose_names_differ_only_in_odd_characters_are_all_kept(tmp_path: Path) -> None:
    """Methods 'My GFF' and 'My_GFF' (reference folder names) both wrote diff-p1-My_GFF.png and
    diffA-p1-My_GFF.png: the second overwrote the first's maps, silently. Names that would share
    a file (also only by case: one file on a case-insensitive disk) each get a hash suffix."""
    from bafusion.evaluation.figures import save_dataset_figures

    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (24, 32), dtype=np.uint8)
    b = rng.integers(0, 256, (24, 32), dtype=np.uint8)
    fused = {"My GFF": a, "My_GFF": b, "Ours": a, "ours": b, "Laplacian": b}
    written = save_dataset_figures(tmp_path, "p1", a, b, fused, alpha=10.0)
    per_method = [p for p in written if p.name.startswith(("diff-p1-", "diffA-p1-"))]
    assert len({p.name.casefold() for p in per_method}) == 2 * len(fused), sorted(p.name for p in per_method)
    assert {p.name for p in tmp_path.iterdir()} == {p.name for p in written}
    assert (tmp_path / "diff-p1-Laplacian.png").is_file()  # a name without a clash keeps its plain file name
    for m, f in fused.items():  # each method's own |B - F|: zero where it took B (all of it for B)
        mine = [p for p in per_method if p.name.startswith("diff-p1-") and p.name[8:].startswith(m.replace(" ", "_"))]
        expected = np.clip(np.round(10 * np.abs(b.astype(float) - f)), 0, 255).astype(np.uint8)
        assert any(np.array_equal(np.asarray(Image.open(p)), expected) for p in mine), m
    again = save_dataset_figures(tmp_path / "again", "p1", a, b, fused, alpha=10.0)
    assert [p.name for p in again] == [p.name for p in written]  # deterministic


def test_readme_examples_of_hashed_figure_names_are_the_names_written() -> None:
    """README gave `diff-<pair>-My_GFF-1a2b3c4d.png` for a clashing method name, a suffix the
    program never writes (it is the SHA-256 of the name). Each example is the file written."""
    from bafusion.evaluation.figures import _file_parts

    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    examples = dict(re.findall(r"`([^`]+)`\s+writes\s+`diff-<pair>-([^`]+)\.png`", readme))
    assert set(examples) == {"My GFF", "My_GFF"}, examples
    assert examples == _file_parts(["My GFF", "My_GFF"])


def test_difference_and_comparison_figures_show_one_pixel_lines_they_shrink(tmp_path: Path, monkeypatch) -> None:
    """diff-<pair>.png and fig4-<pair>.png drew 520 px images into ~240 px panels nearest-
    neighbour: of 52 one-pixel lines 10 px apart about half were drawn (24 here), the others
    dropped. Shrunk images are anti-aliased: each of a panel's 52 lines shows."""
    from bafusion.evaluation.figures import figure_comparison, figure_differences

    renders = record_renders(monkeypatch)
    f = np.zeros((520, 520), np.uint8)
    f[:, 5::10] = 255  # 52 one-pixel columns
    zeros = np.zeros_like(f)
    figure_differences(zeros, {"M": f}, tmp_path / "d.png")
    figure_comparison(f, f, {"M": f}, tmp_path / "c.png", crop=(0, 0, 130))
    for name, (gray, boxes) in zip(("diff", "fig. 4"), renders):
        for box in boxes if name == "diff" else boxes[:3]:  # fig. 4: the full views (the crops are enlarged)
            assert box[2] - box[0] < 400, (name, boxes)  # shrunk
            assert lit_lines(gray, box)[0] == 52, (name, box, lit_lines(gray, box))


def test_choose_crop_takes_the_images_one_at_a_time() -> None:
    """choose_crop stacked every method's image as float64 and took its std over the stack: for
    a 3000 x 4000 pair of six methods (lytro-05 and its references upscaled) it peaked at
    +1206 MiB (ru_maxrss), here (eight 800 x 1000 images) at 112 MiB of numpy arrays
    (tracemalloc). It now sums image after image, in the order numpy sums the stack, so the
    spread is the same to the bit (+570 MiB there, 45 MiB here) and so is the crop."""
    import tracemalloc

    from bafusion.evaluation.figures import choose_crop

    rng = np.random.default_rng(0)
    images = {f"m{i}": rng.integers(0, 256, (800, 1000, 3), dtype=np.uint8) for i in range(8)}
    tracemalloc.start()
    try:
        crop = choose_crop(images)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 70 * 2**20, f"{peak / 2**20:.0f} MiB"
    for imgs in (images, {k: v[:90, :120] for k, v in list(images.items())[:3]}):
        stack = np.stack([gray_float(im, rounded=True) for im in imgs.values()])
        spread = stack.std(axis=0)  # as it was computed
        s = max(8, min(stack.shape[1:]) // 4)
        ii = np.zeros((stack.shape[1] + 1, stack.shape[2] + 1))
        ii[1:, 1:] = spread.cumsum(0).cumsum(1)
        valid = ii[s:, s:] - ii[:-s, s:] - ii[s:, :-s] + ii[:-s, :-s]
        r, c = np.unravel_index(int(np.argmax(valid)), valid.shape)
        assert (crop if imgs is images else choose_crop(imgs)) == (r, c, s)


def test_camera_size_difference_and_comparison_figures_draw_their_panels_reduced_in_little_memory(
        tmp_path: Path, monkeypatch) -> None:
    """The difference figure and Fig. 4 handed each full-size image to matplotlib, which
    resampled it onto its ~260 px panel from full-size RGBA copies: for a 12-megapixel pair of
    six methods the difference figure peaked at +827 MiB, Fig. 4 at +914 MiB (peak RSS); here
    (two maps of 7.7 megapixels; Fig. 4 of three RGB images) their numpy arrays peaked at 395
    and 452 MiB (tracemalloc), 48 and 19 MiB now. An image at least 4x its panel is now
    area-averaged by a whole factor to at least 2x the panel first, as Fig. 3's maps: a 1-px
    difference still shows in each panel (the gray map averaged in float), and the line under
    the figure says the scale of the full-size map, not of the array drawn."""
    import tracemalloc

    import bafusion.fusion.maps as maps
    from bafusion.evaluation.figures import figure_comparison, figure_differences

    h, w = 2400, 3200
    f = np.zeros((h, w), np.uint8)
    f[:, 1601] = 26  # 10 x 26 = 255: a white 1-px column in each difference map
    zeros = np.zeros_like(f)
    renders = record_renders(monkeypatch)
    shapes, lines = [], []
    real = maps.draw_images_to_scale

    def drawing(fig, **kw):
        low = real(fig, **kw)
        shapes.append([im.get_array().shape[:2] for ax in fig.axes for im in ax.get_images()])
        lines.append(" ".join(fig._supxlabel.get_text().split()))
        return low

    monkeypatch.setattr(maps, "draw_images_to_scale", drawing)
    rgb = np.repeat(f[..., None] * 9, 3, axis=2)
    peaks = []
    for draw in (lambda: figure_differences(zeros, {"M": f}, tmp_path / "d.png", a=zeros),
                 lambda: figure_comparison(rgb, rgb, {"M": rgb}, tmp_path / "c.png", crop=(0, 0, 300))):
        tracemalloc.start()
        try:
            draw()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        peaks.append(peak)
    assert max(peaks) < 120 * 2**20, [f"{p / 2**20:.0f} MiB" for p in peaks]
    factor = 6  # 3200 / 260 px = 12.3: by 6 to 2.05x the panel
    assert shapes[0] == [(h // factor, -(-w // factor))] * 2, shapes  # |B - F| and |A - F|
    assert shapes[1] == [(h // factor, -(-w // factor))] * 3 + [(300, 300)] * 3, shapes  # the crops as they are
    for (gray, boxes), n, line in zip(renders, (2, 3), lines):
        # the upper half of each panel: a one-column figure's lower titles reach into the panel above
        halves = [(left, top, right, (top + bottom) // 2) for left, top, right, bottom in boxes[:n]]
        assert [lit_lines(gray, box, level=8)[0] for box in halves] == [1] * n, boxes
        scale = min(min((r - left) / w, (b - top) / h) for left, top, r, b in boxes[:n])
        said = re.search(r"shrunk to ([0-9.]+) %", line)
        assert said and abs(float(said[1]) - 100.0 * scale) < 0.3, (said, scale)


def test_long_method_names_fit_over_their_panels(tmp_path: Path, monkeypatch) -> None:
    """The difference figure's titles '<method>: |B - F|' at 9 pt over 2.6 in panels: a long
    method name (a reference folder's) ran into the next title, and the lone panel of a third
    row lost its title's start past the figure's left edge. Titles wrap to their panel's width."""
    import bafusion.fusion.maps as maps
    from bafusion.evaluation.figures import figure_comparison, figure_differences

    drawn = []
    real = maps.save_figure

    def recording(fig, path):
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        drawn.append((fig.bbox.width, [(ax.title.get_text(), ax.title.get_window_extent(r)) for ax in fig.axes
                                       if ax.title.get_text()]))
        real(fig, path)

    monkeypatch.setattr(maps, "save_figure", recording)
    rng = np.random.default_rng(7)
    a = rng.integers(0, 256, (90, 120), dtype=np.uint8)
    b = rng.integers(0, 256, (90, 120), dtype=np.uint8)
    names = ["NSCT-SR-published-2016", "GuidedFilterFusion-r7-eps0.3", "DenseSIFT-multiscale", "CNN-Liu2017-authors-code",
             "Ours", "Ours-initial", "BoundaryAware-ResNet56-paper-preset", "ALongFolderNameWithoutAnyBreakAtAll_0123456789"]
    fused = {n: (a if i % 2 else b) for i, n in enumerate(names)}
    figure_differences(b, fused, tmp_path / "d.png", a=a, title="diff")
    figure_comparison(a, b, fused, tmp_path / "c.png", title="fig4")
    expected = [[f"{n}: |{src} - F|" for src in "BA" for n in names[:6]] + [f"{n}: |{src} - F|" for src in "BA" for n in names[6:]],
                ["source A", "source B", *names]]
    for (width, titles), want in zip(drawn, expected):
        assert sorted("".join(t.split()) for t, _ in titles) == sorted("".join(t.split()) for t in want)
        for i, (text, box) in enumerate(titles):
            assert box.x0 >= 0 and box.x1 <= width, (text, box)  # inside the figure
            for other, obox in titles[i + 1 :]:  # no two titles overlap
                assert not box.overlaps(obox), (text, other)
        assert any("\n" in t for t, _ in titles)  # the long names were wrapped, not shrunk away


def test_evaluate_run_says_which_way_each_metric_is_better(tmp_path: Path) -> None:
    """MLflow showed the means as bare numbers: nothing said QCV is better lower and the others
    higher. The run carries tags higher_is_better and lower_is_better naming its metrics."""
    from mlflow.tracking import MlflowClient

    from bafusion.tracking import EXPERIMENT, tracking_uri

    src, _ = _write_set(tmp_path, ["p1"])
    cfg = ev.parse_config({"methods": ["Laplacian"], "metrics": ["QMI", "QCV"], "figures": False,
                           "datasets": [{"name": "t", "sources": str(src)}]})
    ev.run_evaluation(cfg, tmp_path / "ev", log=lambda *a: None)
    client = MlflowClient(tracking_uri=tracking_uri())
    run = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id], "tags.stage = 'evaluate'",
                             order_by=["attributes.start_time DESC"])[0]  # this test's: the store may hold others
    assert run.data.tags["higher_is_better"] == "QMI, PSNR, SSIM", run.data.tags  # DM_acc: not logged
    assert run.data.tags["lower_is_better"] == "QCV"
    means = {k.rsplit(".", 1)[1] for k in run.data.metrics if k.startswith("t.Laplacian.")}
    assert means == {"QMI", "QCV", "PSNR", "SSIM"}, run.data.metrics  # DM_acc: our methods' only


def test_direction_tags_name_exactly_the_metrics_the_run_logs_ranks_lower(tmp_path: Path) -> None:
    """The tags named PSNR, SSIM and DM_acc better higher on a run without a truth (which logs
    none of them), and not our ranks (``<dataset>.Ours.rank.<metric>``, 1 = best) at all, though
    README said every evaluate metric is better higher. They name exactly the logged metrics:
    the ranks as ``rank.<metric>``, lower is better."""
    from mlflow.tracking import MlflowClient

    from bafusion.fusion import FusionNets, FusionParams
    from bafusion.nets.model import build_model
    from bafusion.tracking import EXPERIMENT, tracking_uri

    torch.manual_seed(1)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        nets = FusionNets(build_model(8), build_model(8), 12, 12, torch.device("cpu"))
        src, _ = _write_set(tmp_path, ["p1"])
        for f in [*src.glob("*-truth.png"), *src.glob("*-dm.png")]:
            f.unlink()  # no truth: no PSNR, SSIM or DM_acc
        cfg = ev.parse_config({"methods": ["Ours", "Laplacian"], "metrics": ["QMI", "QCV"], "figures": False,
                               "datasets": [{"name": "t", "sources": str(src)}]})
        ev.run_evaluation(cfg, tmp_path / "ev", nets, FusionParams(l=2, min_region=0.0), log=lambda *a: None)
    finally:
        torch.set_num_threads(before)
    client = MlflowClient(tracking_uri=tracking_uri())
    run = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id], "tags.stage = 'evaluate'",
                             order_by=["attributes.start_time DESC"])[0]
    assert run.data.tags["higher_is_better"] == "QMI, wins.QMI, wins.QCV", run.data.tags
    assert run.data.tags["lower_is_better"] == "QCV, rank.QMI, rank.QCV", run.data.tags
    assert run.data.tags[ev.COUNTS_TAG] == "pairs, rank_of.QMI, rank_of.QCV", run.data.tags  # no direction
    # t.<method>.<name>, and t.pairs
    logged = {k.split(".", 2)[2] if k.count(".") >= 2 else k.split(".", 1)[1] for k in run.data.metrics
              if k.startswith("t.")}
    assert "rank.QMI" in logged and "PSNR" not in logged, run.data.metrics
    tagged = {q for k in ("higher_is_better", "lower_is_better", ev.COUNTS_TAG) for q in run.data.tags[k].split(", ")}
    assert tagged == logged


def test_reference_methods_option_chooses_the_published_methods(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Choosing which of REF's methods appear in Table 1 took a --params-json dataset of the same
    name: --reference-methods does it; without a reference folder it is refused, naming why."""
    src, imgs = _write_set(tmp_path, ["p1"])
    ref = _write_reference(tmp_path, imgs, {"MyGFF": gff_fuse, "CNN": laplacian_fuse})
    base = ["evaluate", "--methods", "Laplacian", "--metrics", "QG", "--root", str(tmp_path), "--out", str(tmp_path / "ev")]
    assert cli_main([*base, "--dataset", f"mine={src},{ref}", "--reference-methods", "MyGFF"]) == 0, capsys.readouterr().err
    rows = list(csv.DictReader((tmp_path / "ev" / "mine" / "metrics.csv").open()))
    assert sorted({r["method"] for r in rows}) == ["Laplacian", "MyGFF"]
    assert cli_main([*base, "--dataset", f"mine={src}", "--reference-methods", "MyGFF"]) == 2
    err = capsys.readouterr().err
    assert "--reference-methods works with --dataset NAME=SOURCES,REFERENCE" in err, err
    assert cli_main([*base, "--dataset", f"mine={src},{ref}", "--reference-methods", "MyGFF,Laplacian"]) == 2
    err = capsys.readouterr().err
    assert f"--reference-methods: 'Laplacian' computed here, not read from {ref}: name it in --methods" in err, err


@pytest.mark.parametrize(("option", "value", "words"), [
    ("--reference-methods", "MyGFF,MyGFF", "'MyGFF' given twice"),
    ("--reference-methods", "MyGFF,,CNN", "empty item"),
    ("--reference-methods", "MyGFF,", "empty item"),
    ("--reference-methods", "NOPE", "'NOPE' is not a method folder of"),
    ("--methods", "Laplacian,Laplacian", "'Laplacian' given twice"),
    ("--methods", "Laplacian,,GFF-native", "empty item"),
    ("--metrics", "QG,QG", "'QG' given twice"),
    ("--metrics", "QG,,QY", "empty item"),
    ("--metrics", "QG,NOPE", "'NOPE' is no metric: choose among QMI, QG"),
])
def test_a_malformed_method_or_metric_list_is_refused_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture, option: str, value: str, words: str,
) -> None:
    """--reference-methods GFF,GFF said "evaluate.datasets[0].reference_methods: repeated method",
    a setting the user never wrote; GFF,,X dropped the empty item silently, and an unknown method
    was named only as the dataset's reference_methods. Each error names the option typed."""
    src, imgs = _write_set(tmp_path, ["p1"])
    ref = _write_reference(tmp_path, imgs, {"MyGFF": gff_fuse, "CNN": laplacian_fuse})
    args = {"--methods": "Laplacian", "--metrics": "QG", "--reference-methods": "MyGFF", option: value}
    argv = ["evaluate", "--root", str(tmp_path), "--out", str(tmp_path / "ev"), "--dataset", f"mine={src},{ref}",
            *(x for k, v in args.items() for x in (k, v))]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert f"error: {option} {value}: " in line and words in line, err
    assert "evaluate." not in line, err  # no config path the user did not write
    assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize(("option", "value", "example"), [
    ("--metrics", "QMI,,QG", "e.g. QMI,QG"),
    ("--methods", "Laplacian,", "e.g. Ours,GFF-native"),
    ("--reference-methods", "MyGFF,,CNN", "e.g. GFF,CNN"),
])
def test_an_empty_item_of_a_list_option_gives_an_example_of_that_option(
    tmp_path: Path, capsys: pytest.CaptureFixture, option: str, value: str, example: str,
) -> None:
    """An empty item of every list option gave the example "e.g. GFF,CNN", reference methods,
    also for --metrics (QMI,,QG) and --methods (methods computed here): each option's own now."""
    src, imgs = _write_set(tmp_path, ["p1"])
    ref = _write_reference(tmp_path, imgs, {"MyGFF": gff_fuse, "CNN": laplacian_fuse})
    args = {"--methods": "Laplacian", "--metrics": "QG", "--reference-methods": "MyGFF", option: value}
    argv = ["evaluate", "--root", str(tmp_path), "--out", str(tmp_path / "ev"), "--dataset", f"mine={src},{ref}",
            *(x for k, v in args.items() for x in (k, v))]
    assert cli_main(argv) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"error: {option} {value}: empty item" in line and line.endswith(example), line


def test_a_crop_that_does_not_fit_is_refused_before_any_fusion(tmp_path: Path, capsys) -> None:
    """evaluate.datasets[i].crop [0, 0, 5000] (or [500, 500, 100] on 520x520 images) passed, every
    pair was fused, and the figures ended in an internal error (ValueError traceback, exit 1;
    the pipeline's earlier data/evaluation deleted): refused with the pairs' check, naming the
    key and the figure pair's size; a crop that fits, or figures off, passes."""
    src, _ = _write_set(tmp_path, ["p1", "p2"])  # 56x48 (WxH)
    for crop in ([0, 0, 5000], [40, 0, 16], [0, 50, 8]):
        cfg = {"methods": ["Laplacian"], "metrics": ["QG"],
               "datasets": [{"name": "a", "sources": str(src)}, {"name": "b", "sources": str(src), "crop": crop}]}
        with pytest.raises(UserError, match=re.escape(f"evaluate.datasets[1].crop {crop}: ")) as e:
            ev.check_datasets(ev.parse_config(cfg))
        assert "56x48 (WxH)" in str(e.value) and "'p1'" in str(e.value), e.value
        out = tmp_path / "ev"
        rc = cli_main(["evaluate", "--params-json", json.dumps(cfg), "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and f"evaluate.datasets[1].crop {crop}: " in err and "internal error" not in err, err
        assert not out.exists()
    ok = {"methods": ["Laplacian"], "metrics": ["QG"], "datasets": [{"name": "b", "sources": str(src), "crop": [32, 40, 16]}]}
    ev.check_datasets(ev.parse_config(ok))
    ev.check_datasets(ev.parse_config({**ok, "datasets": [{**ok["datasets"][0], "crop": [0, 0, 5000]}], "figures": False}))


def test_a_device_from_the_parameters_is_named_by_its_key(tmp_path: Path, capsys) -> None:
    """evaluate with fuse.device (or evaluate.device) a device this machine lacks said
    "--device mps: ..." though no --device was given: the key is named."""
    from bafusion.nets.model import build_model, save_model

    src, _ = _write_set(tmp_path, ["p1"])
    for kind in ("initial", "boundary"):
        save_model(build_model(8), tmp_path / "nets" / f"{kind}.pt", {"patch": 12})
    nets = ["--initial", str(tmp_path / "nets" / "initial.pt"), "--boundary", str(tmp_path / "nets" / "boundary.pt")]
    cfg = {"methods": ["Ours"], "metrics": ["QG"], "datasets": [{"name": "t", "sources": str(src)}]}
    for extra, said in ((["--params-json", json.dumps({**cfg, "device": "mps"})], "evaluate.device mps: MPS"),
                        (["--params-json", json.dumps(cfg), "--fuse-json", '{"device": "mps"}'], "fuse.device mps: MPS"),
                        (["--params-json", json.dumps(cfg), "--device", "mps"], "--device mps: MPS")):
        rc = cli_main(["evaluate", *nets, *extra, "--out", str(tmp_path / "ev")])
        err = capsys.readouterr().err
        assert rc == 2 and said in err, err


def test_pairs_whose_names_differ_only_in_case_are_refused(tmp_path: Path) -> None:
    """Pairs P and p (from a case-sensitive source) were both evaluated into fused/<method>/P.png
    and p.png: one file on macOS and Windows, showing the wrong pair's fusion. They are refused,
    as fuse-dir skips such stacks; a pattern that leaves one out is taken."""
    src = tmp_path / "pairs"
    src.mkdir()
    a, b, _, _ = _pair(np.random.default_rng(6))
    for n in ("p", "P", "q"):
        Image.fromarray(a).save(src / f"{n}-A.png")
        Image.fromarray(b).save(src / f"{n}-B.png")
    with pytest.raises(InputFileError, match=r"dataset 't': pairs 'P' and 'p' differ only in case"):
        ev.find_pairs(ev.Dataset(name="t", sources=src))
    assert [p.name for p in ev.find_pairs(ev.Dataset(name="t", sources=src, pattern="[pq]"))] == ["p", "q"]


def test_clashing_method_names_holding_undecodable_bytes_get_distinct_figure_names() -> None:
    """Two method names from file names that are no text in the locale (``os.fsdecode`` of
    ``x\\xff`` and ``x\\xfe``: lone surrogates) both give the part ``x_``; hashing them to tell
    them apart failed ("UnicodeEncodeError: surrogates not allowed"). Each now gets its own
    safe part."""
    import os

    from bafusion.evaluation.figures import _file_parts

    names = [os.fsdecode(b"x\xff"), os.fsdecode(b"x\xfe"), "x?"]
    assert all(any(0xD800 <= ord(c) <= 0xDFFF for c in n) for n in names[:2]), [ascii(n) for n in names]
    parts = _file_parts(names)
    assert set(parts) == set(names)
    assert len({v.casefold() for v in parts.values()}) == 3, parts
    assert all(re.fullmatch(r"x_-[0-9a-f]{8}", v) for v in parts.values()), parts
    assert parts == _file_parts(list(reversed(names)))  # the same name, the same part


def test_the_evaluate_run_names_the_nets_that_made_ours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         tiny_nets: Path) -> None:
    """The evaluate run logged the nets' paths only (params.models, the same data/models/initial.pt
    in every experiment, whatever weights it held): a Table 1 row could not be told which nets
    made it. It tags each net's sha256, file and patch, the model folder, and the training run
    of this store that wrote a file of that sha256 (its tag model.sha256)."""
    import hashlib

    from mlflow.tracking import MlflowClient

    from bafusion import tracking
    from bafusion.fusion.api import load_model

    src, _ = _write_set(tmp_path, ["p1"])
    sha = {k: hashlib.sha256((tiny_nets / f"{k}.pt").read_bytes()).hexdigest() for k in ("initial", "boundary")}
    with tracking.stage_run("train_initial") as trained:  # a training run that wrote the initial net
        trained.set_tag(tracking.MODEL_SHA256_TAG, sha["initial"])
    with tracking.stage_run("train_initial") as other:  # another weights' run
        other.set_tag(tracking.MODEL_SHA256_TAG, "0" * 64)

    def fake_ours(a, b, nets, params, names, progress=None):
        lap = to_uint8(laplacian_fuse(a, b))
        return {"Ours": (lap, np.ones(a.shape[:2], bool)), "Ours-initial": (lap, np.ones(a.shape[:2], bool))}

    monkeypatch.setattr(ev, "_ours", fake_ours)
    cfg = ev.parse_config({"methods": ["Ours-initial", "Ours", "GFF-native"], "metrics": ["QG"], "figures": False,
                           "datasets": [{"name": "tiny", "sources": str(src)}]})
    ev.run_evaluation(cfg, tmp_path / "out", load_model(tiny_nets, device="cpu"), None, log=lambda s: None)
    client = MlflowClient(tracking_uri=tracking.tracking_uri())
    run = client.search_runs([client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id],
                             "tags.stage = 'evaluate'")[0]
    tags = run.data.tags
    assert tags["net.initial.sha256"] == sha["initial"] and tags["net.boundary.sha256"] == sha["boundary"]
    assert tags["net.initial.file"] == str(tiny_nets.resolve() / "initial.pt")
    assert tags["model_dir"] == str(tiny_nets.resolve()) and tags["net.initial.patch"] == "12"
    assert tags["net.initial.train_run_id"] == trained.run_id
    assert "net.boundary.train_run_id" not in tags  # no training run of this store wrote it


def test_the_evaluate_run_logs_table1s_wins_and_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Table 1's headline numbers, our wins (testset.Ours.wins.QMI), and the counts rank_of and
    pairs were in metrics.json (dvc exp show) but in no MLflow metric: the MLflow UI could not
    show or compare them. They are logged under metrics.json's flattened names."""
    from mlflow.tracking import MlflowClient

    from bafusion.tracking import EXPERIMENT, flatten, tracking_uri

    src, _ = _write_set(tmp_path, ["p1", "p2"])

    def fake_ours(a, b, nets, params, names, progress=None):
        lap = to_uint8(laplacian_fuse(a, b))
        return {"Ours": (lap, np.ones(a.shape[:2], bool)), "Ours-initial": (a, np.ones(a.shape[:2], bool))}

    monkeypatch.setattr(ev, "_ours", fake_ours)
    cfg = ev.parse_config({"methods": ["Ours-initial", "Ours", "GFF-native"], "metrics": ["QG", "QMI"],
                           "figures": False, "datasets": [{"name": "tiny", "sources": str(src)}]})
    doc = ev.run_evaluation(cfg, tmp_path / "out", object(), None, log=lambda s: None)
    client = MlflowClient(tracking_uri=tracking_uri())
    run = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id], "tags.stage = 'evaluate'",
                             order_by=["attributes.start_time DESC"])[0]
    flat = flatten(doc)
    wanted = {k: v for k, v in flat.items() if ".wins." in k or ".rank_of." in k or k == "tiny.pairs"}
    assert len(wanted) == 2 * 2 * 2 + 1, flat  # Ours and Ours-initial: wins and rank_of of QG and QMI; pairs
    assert {k: run.data.metrics.get(k) for k in wanted} == {k: float(v) for k, v in wanted.items()}
    assert wanted["tiny.pairs"] == 2 and wanted["tiny.Ours.rank_of.QG"] == 2  # Ours and GFF-native


def test_an_empty_methods_or_metrics_list_is_the_documented_default() -> None:
    """evaluate.methods: [] and evaluate.metrics: [] mean the defaults, as an empty
    evaluate.datasets means the embedded test set; the schema, params.yaml and the README say
    so (they said it of datasets only, and a researcher who emptied methods got all four)."""
    from bafusion.schema import default, load_schema

    cfg = ev.parse_config({"methods": [], "metrics": [], "datasets": []})
    assert cfg.methods == tuple(default("evaluate.methods")) == ("Ours-initial", "Ours", "GFF-native", "Laplacian")
    assert cfg.metrics == tuple(default("evaluate.metrics")) == ("QMI", "QG", "QY", "QCB")
    assert [d.name for d in cfg.datasets] == ["testset"]
    props = load_schema()["properties"]["evaluate"]["properties"]
    for key in ("methods", "metrics", "datasets"):
        assert props[key]["description"].startswith("absent or empty: "), key


def test_the_jpeg_round_trips_decode_with_the_jpeg_reader_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """evaluate's re-encoding (jpeg_reencode) and composite's (_jpeg_roundtrip) opened their own
    JPEG bytes with Image.open unrestricted, trying every reader Pillow had registered in its
    order: a plugin a caller registered first (here one that takes any bytes) decoded them.
    Only the JPEG reader is tried now, as bafusion.io.pillow_open tries only READ_FORMATS."""
    from PIL import ImageFile

    from bafusion.data.composite import _jpeg_roundtrip

    class Greedy(ImageFile.ImageFile):
        format = "GREEDY"

        def _open(self) -> None:
            raise AssertionError("the greedy reader was tried")

    Image.init()
    monkeypatch.setattr(Image, "ID", ["GREEDY", *Image.ID])
    monkeypatch.setitem(Image.OPEN, "GREEDY", (Greedy, lambda prefix: True))
    y, x = np.mgrid[0:24, 0:32]
    rgb = np.stack([x * 8, y * 10, 255 - x * 8], axis=-1).astype(np.uint8)  # smooth: JPEG keeps it closely
    out, data = ev.jpeg_reencode(rgb, 90)
    assert out.shape == rgb.shape and data[:3] == b"\xff\xd8\xff"
    assert np.abs(out.astype(int) - rgb).mean() < 4
    for img in (rgb, rgb[..., 0].copy()):
        back = _jpeg_roundtrip(img, 90)
        assert back.shape == img.shape and back.dtype == np.uint8


@pytest.mark.parametrize("hw, n", [((2400, 3200), 1), ((520, 4160), 2), ((100, 1000), 1)])
def test_difference_figure_titles_are_clear_of_the_images_above(tmp_path: Path, monkeypatch, hw, n) -> None:
    """In evaluate's difference figure of one column of a 3200x2400 pair (and of two columns of
    a 4160x520 strip) one pass of tight_layout left the second row's titles ("M0: |A - F|")
    wholly behind the first row's images (13 px of 13 here). Measured on the figure as saved,
    with matplotlib's renderer: no title overlaps another panel (a 1000x100 strip in one column:
    a later pass cannot fit it and keeps the layout, without matplotlib's warning). A figure clear after one pass
    (three columns of the pair) is saved byte for byte as with one pass."""
    import io
    import warnings

    import bafusion.evaluation.figures as figs
    import bafusion.fusion.maps as maps

    found: list[float] = []
    saved: list[bytes] = []

    def measure(fig, path) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
        saved.append(buf.getvalue())
        r = fig.canvas.get_renderer()
        shown = [ax for ax in fig.axes if ax.axison]
        assert len(shown) >= 2
        worst = 0.0
        for ax in shown:
            t = ax.title.get_window_extent(r)
            assert t.height > 5, ax.title.get_text()
            for other in shown:
                o = other.get_window_extent(r)
                if other is not ax and min(t.x1, o.x1) > max(t.x0, o.x0):
                    worst = max(worst, min(t.y1, o.y1) - max(t.y0, o.y0))
        found.append(worst)

    monkeypatch.setattr(maps, "save_figure", measure)
    f = np.zeros(hw, np.uint8)
    as_evaluate = {"title": "p1: 10 x |B - F| and 10 x |A - F|", "full_size": "the maps at full size are "
                   "diff-p1-<method>.png and diffA-p1-<method>.png beside this figure"}  # save_dataset_figures'
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        figs.figure_differences(f, {f"M{i}": f for i in range(n)}, tmp_path / "d.png", a=f, **as_evaluate)
    assert not [w for w in said if "Tight layout" in str(w.message)]  # a later pass that cannot fit: no warning
    assert found[-1] <= 0.0, f"a title lies {found[-1]:.1f} px behind the panel above"
    wide = {f"M{i}": np.zeros((2400, 3200), np.uint8) for i in range(3)}  # three columns: clear after one pass
    figs.figure_differences(wide["M0"], wide, tmp_path / "d3.png", a=wide["M0"])
    monkeypatch.setattr(figs, "LAYOUT_PASSES", 1)
    figs.figure_differences(wide["M0"], wide, tmp_path / "d3.png", a=wide["M0"])
    assert found[-2] <= 0.0 and saved[-2] == saved[-1]


# --------------------------------------------------------------------------------------
# Which storage each row was scored at: the 'Scored as' column, our lossless row aside
# --------------------------------------------------------------------------------------


def test_an_aside_row_is_shown_but_takes_no_win_no_bold_and_no_rank() -> None:
    """``table_markdown(..., aside=rows)``: our output before re-encoding, better than every
    method here, is shown in italics with its mean only; the ranked rows read as without it."""
    rows = [{"pair": p, "method": m, "QMI": v} for p, vals in (("p1", (1.0, 0.5)), ("p2", (0.9, 0.6)))
            for m, v in zip(("X", "Y"), vals)]
    aside = [{"pair": "p1", "method": "Y, lossless", "QMI": 2.0}, {"pair": "p2", "method": "Y, lossless", "QMI": 3.0}]
    plain = ev.table_markdown(rows, ["X", "Y"], ["QMI"])
    text = ev.table_markdown(rows, ["X", "Y"], ["QMI"], aside=aside)
    assert text.startswith(plain.rstrip("\n"))  # the ranked rows are unchanged: X keeps its bold and wins
    assert "| X | **0.9500** (2) |" in text and "| *Y, lossless* | *2.5000* |" in text
    assert ev.ASIDE_NOTE in text and ev.ASIDE_NOTE not in plain
    labelled = ev.table_markdown(rows, ["X", "Y"], ["QMI"], {"X": "JPEG ~q95, published files", "Y": "JPEG q75"}, aside)
    assert labelled.splitlines()[:2] == ["| Method | Scored as | QMI ↑ |", "|---|---|---:|"]
    assert "| X | JPEG ~q95, published files | **0.9500** (2) |" in labelled and "| *Y, lossless* | | *2.5000* |" in labelled


def test_table1_says_which_storage_each_row_was_scored_at(tmp_path: Path) -> None:
    """The real pairs' Table 1 compared ours, re-encoded at q75, with DPRL's published files at
    ~q95 without saying so in the table: the gap read as fusion. With ``reference_jpeg_quality``
    each row says its storage (per set too), the header names the peers stored above or below
    our quality, and our lossless output stands in italics beside the ranked rows."""
    src, imgs = _write_set(tmp_path, ["aa-01", "bb-01"])
    peers = tmp_path / "peers.csv"
    peers.write_text("pair,method,QG\n" + "".join(f"{n},{m},{v}\n" for n in imgs for m, v in
                                                   (("HI", 0.9), ("MID", 0.5), ("LO", 0.1), ("UNK", 0.2))))
    out = tmp_path / "out"
    cfg = {"methods": ["Laplacian"], "metrics": ["QG"], "figures": False,
           "datasets": [{"name": "tiny", "sources": str(src), "reference_metrics": str(peers),
                         "reference_methods": ["HI", "MID", "LO", "UNK"], "sets": ["aa", "bb"],
                         "jpeg_quality": {"aa": 75, "bb": 92},
                         "reference_jpeg_quality": {"HI": 95, "LO": 75, "MID": {"aa": 75, "bb": 92}}}]}
    assert cli_main(["evaluate", "--params-json", json.dumps(cfg), "--out", str(out), "--no-progress"]) == 0
    table = (out / "tiny" / "table1.md").read_text()
    head, main = table.split("| Method")[0], "| Method" + table.split("| Method")[1]

    def cells(part: str) -> dict[str, list[str]]:
        return {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]] for ln in part.splitlines()
                if ln.startswith("| ") and not ln.startswith("| Method")}

    lossless = [float(r["lossless_QG"]) for r in csv.DictReader((out / "tiny" / "metrics.csv").open())
                if r["method"] == "Laplacian"]
    t1 = cells(main.split("\n## ")[0])
    assert t1["HI"][:2] == ["JPEG ~q95, published files", "**0.9000** (2)"]
    assert t1["MID"][0] == "JPEG ~q75 (aa), ~q92 (bb), published files"
    assert t1["LO"][0] == "JPEG ~q75, published files" and t1["UNK"][0] == "published files (quality not stated)"
    assert t1["Laplacian"][0] == "JPEG q75 (aa), q92 (bb), re-encoded here"
    assert t1["*Laplacian, lossless*"] == ["as computed (PNG, lossless), before re-encoding", f"*{np.mean(lossless):.4f}*"]
    assert ev.ASIDE_NOTE in main
    bb = cells(table.split("## Set bb (1 pairs)")[1].split("\n## ")[0])
    assert bb["MID"][0] == "JPEG ~q92, published files" and bb["Laplacian"][0] == "JPEG q92, re-encoded here"
    assert bb["LO"][0] == "JPEG ~q75, published files" and bb["*Laplacian, lossless*"][1] == f"*{lossless[1]:.4f}*"
    assert "Stored at a higher quality than our output is measured at: HI (2 of 2 pairs)." in head
    assert "Stored at a lower quality: LO (1 of 2 pairs)." in head and "MID" not in head
    # without either storage key the table is as before: no column, no aside row
    del cfg["datasets"][0]["jpeg_quality"], cfg["datasets"][0]["reference_jpeg_quality"]
    assert cli_main(["evaluate", "--params-json", json.dumps(cfg), "--out", str(out), "--no-progress"]) == 0
    table = (out / "tiny" / "table1.md").read_text()
    assert "Scored as" not in table and "lossless*" not in table and "Storage differs" not in table


def test_reference_jpeg_quality_is_checked(tmp_path: Path) -> None:
    peers = tmp_path / "peers.csv"
    peers.write_text("pair,method,QMI\np1,P1,1.0\n")
    base = {"name": "x", "sources": str(tmp_path), "reference_metrics": str(peers)}
    with pytest.raises(UserError, match=r"reference_jpeg_quality: \['P2'\] not among the dataset's reference methods"):
        ev.parse_config({"datasets": [{**base, "reference_jpeg_quality": {"P2": 90}}]})
    # a method of the CSV left out of a narrowed reference_methods: accepted (the config states them all)
    peers.write_text("pair,method,QMI\np1,P1,1.0\np1,P3,0.5\n")
    narrowed = ev.parse_config({"datasets": [{**base, "reference_methods": ["P1"], "reference_jpeg_quality": {"P3": 90}}]})
    assert narrowed.datasets[0].reference_quality_for("P1", "p1") is None
    with pytest.raises(UserError, match="reference_jpeg_quality"):
        ev.parse_config({"datasets": [{**base, "reference_jpeg_quality": {"P1": 101}}]})
    with pytest.raises(UserError, match="reference_jpeg_quality"):
        ev.parse_config({"datasets": [{**base, "reference_jpeg_quality": 90}]})
    ds = ev.parse_config({"datasets": [{**base, "reference_jpeg_quality": {"*": {"p": 80, "p1": 70}}}]}).datasets[0]
    assert ds.reference_quality_for("P1", "p1") == 70 and ds.reference_quality_for("P1", "p2") == 80
    assert ds.reference_quality_for("P1", "q1") is None
    assert ev.parse_config({"datasets": [base]}).datasets[0].reference_quality_for("P1", "p1") is None


def test_eval_real_says_how_ours_and_the_best_peers_were_stored(shared_data: Path, capsys: pytest.CaptureFixture) -> None:
    """benchmarks/eval_real.py printed 'best peer ... DPRL' beside our means without saying that
    DPRL's files are stored at ~q95 and ours re-encoded at q75 / q92: it now prints each one's storage."""
    if not (shared_data / "eval" / "real").is_dir():
        pytest.skip(f"no eval/real in {shared_data}")
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "eval_real.py"
    spec = importlib.util.spec_from_file_location("eval_real_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    cfg = mod.load_config(shared_data)
    ds = cfg.datasets[0]
    s = {"all": {"pairs": 41, "Ours": {}, "best_peer": {"QMI": ["DPRL", 0.99], "QG": ["DPRL", 0.7], "QCB": ["QB", 0.74]}}}
    mod.print_storage(s, ds, cfg, ev.find_pairs(ds))
    assert capsys.readouterr().out.strip() == (
        "scored as (all pairs): Ours: JPEG q75 (savic, tsai), q92 (stand), re-encoded here; "
        "DPRL: JPEG ~q95, published files; QB: JPEG ~q75 (savic, tsai), ~q92 (stand), published files")


def _evaluate_in(folder: Path, monkeypatch: pytest.MonkeyPatch, *extra: str) -> None:
    """``bafusion evaluate --model nets ...`` run in ``folder`` (relative paths), our fusion a
    Laplacian stand-in (the nets are loaded and identified as for a real run)."""
    def fake_ours(a, b, nets, params, names, progress=None):
        lap = to_uint8(laplacian_fuse(a, b))
        return {"Ours": (lap, np.ones(a.shape[:2], bool)), "Ours-initial": (lap, np.ones(a.shape[:2], bool))}

    monkeypatch.setattr(ev, "_ours", fake_ours)
    monkeypatch.chdir(folder)
    assert cli_main(["evaluate", "--model", "nets", "--dataset", "tiny=pairs", "--methods", "Ours,Laplacian",
                     "--metrics", "QG", "--device", "cpu", "--out", "ev", "--report", "report.json",
                     *extra]) == 0


def test_the_output_folder_says_which_nets_and_parameters_made_ours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """table1.md, metrics.csv and metrics.json of `evaluate --model mymodel` and of another
    model differed only in their numbers: which nets made "Ours" was on no file (only in an
    MLflow run's params, and outside a project there is none). metrics.json records it under
    ``provenance`` (bafusion's version, the model as given, each net's file as given and sha256,
    the fusion parameters and those changed), table1.md in a line; the DVC metrics file
    (--report) stays numbers only; two clones in other folders write the same bytes."""
    import shutil

    from bafusion._version import __version__
    from conftest import make_tiny_nets

    work = tmp_path / "a"
    make_tiny_nets(work / "nets")
    _write_set(work, ["p1", "p2"])
    shutil.copytree(work, tmp_path / "b")  # a clone elsewhere
    _evaluate_in(work, monkeypatch, "--fuse-json", '{"l": 4}')
    doc = json.loads((work / "ev" / "metrics.json").read_text())
    sha = {k: json.loads((work / "nets" / f"{k}.json").read_text())["weights_sha256"] for k in ("initial", "boundary")}
    assert doc["provenance"] == {
        "bafusion": __version__, "model": "nets",
        "nets": {k: {"file": f"nets/{k}.pt", "sha256": sha[k], "patch": 12} for k in ("initial", "boundary")},
        "fuse": doc["provenance"]["fuse"], "fuse_changed": {"l": 4},
    }
    assert doc["provenance"]["fuse"]["l"] == 4 and len(doc["provenance"]["fuse"]) > 10
    report = json.loads((work / "report.json").read_text())
    assert "provenance" not in report and report == {k: v for k, v in doc.items() if k != "provenance"}
    table = (work / "ev" / "tiny" / "table1.md").read_text()
    line = next(ln for ln in table.splitlines() if ln.startswith("**Made by**"))
    assert line == (f"**Made by** bafusion {__version__}; Ours: model `nets`, nets initial `nets/initial.pt` (sha256 "
                    f"`{sha['initial']}`), boundary `nets/boundary.pt` (sha256 `{sha['boundary']}`); fusion parameters: "
                    "the defaults but l=4 (metrics.json, `provenance`).")
    # the same run in another folder: the same files (no clock, no absolute path)
    _evaluate_in(tmp_path / "b", monkeypatch, "--fuse-json", '{"l": 4}')
    for rel in ("ev/metrics.json", "ev/tiny/table1.md", "report.json"):
        assert (tmp_path / "b" / rel).read_bytes() == (work / rel).read_bytes(), rel
    # other nets: other records
    make_tiny_nets(tmp_path / "b" / "nets", patch=16)
    _evaluate_in(tmp_path / "b", monkeypatch)
    other = json.loads((tmp_path / "b" / "ev" / "metrics.json").read_text())["provenance"]
    assert other["nets"]["initial"]["patch"] == 16 and other["fuse_changed"] == {}
    assert "fusion parameters: the defaults (metrics.json" in (tmp_path / "b" / "ev" / "tiny" / "table1.md").read_text()


def test_a_dataset_named_as_the_provenance_key_is_refused(tmp_path: Path) -> None:
    """metrics.json's ``provenance`` sits beside the datasets' entries: a dataset of that name
    would be overwritten by it (and its folder taken for no dataset's)."""
    src, _ = _write_set(tmp_path, ["p1"])
    with pytest.raises(UserError, match="dataset name 'provenance' is taken"):
        ev.parse_config({"datasets": [{"name": "provenance", "sources": str(src)}]})


def test_a_command_line_dataset_named_as_the_provenance_key_names_the_option(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``--dataset provenance=PAIRS`` was refused as ``evaluate.datasets[0]: dataset name
    'provenance' is taken``: a setting the user never wrote. The refusal names the option as given."""
    src, _ = _write_set(tmp_path, ["p1"])
    rc = cli_main(["evaluate", "--methods", "Laplacian", "--dataset", f"provenance={src}", "--out", str(tmp_path / "ev")])
    err = capsys.readouterr().err
    assert rc == 2 and f"--dataset provenance={src}: dataset name 'provenance' is taken" in err, err
    assert "evaluate.datasets[0]" not in err and not (tmp_path / "ev").exists()


@pytest.mark.parametrize("name", [".hidden", "a/b"])
def test_a_command_line_dataset_name_the_schema_refuses_names_the_option(
        tmp_path: Path, capsys: pytest.CaptureFixture, name: str) -> None:
    """``--dataset .hidden=PAIRS`` (or ``a/b=PAIRS``) was refused as ``command line:
    evaluate.datasets[0].name: ...``, a setting the user never wrote (only the provenance name
    named the option). The refusal names ``--dataset`` as given, before any work."""
    src, _ = _write_set(tmp_path, ["p1"])
    rc = cli_main(["evaluate", "--methods", "Laplacian", "--dataset", f"{name}={src}", "--out", str(tmp_path / "ev")])
    err = capsys.readouterr().err
    assert rc == 2 and f"--dataset {name}={src}: {name!r} is not a dataset name" in err, err
    assert "evaluate.datasets[0]" not in err and not (tmp_path / "ev").exists()


def test_lossless_webp_gif_and_tiff_references_are_counted_by_their_coding_not_their_suffix(tmp_path: Path) -> None:
    """lossless_references took PNG, TIFF and BMP only, by suffix: a peer's lossless WebP or GIF
    results, measured as stored beside our JPEG-re-encoded output, raised no "not like for like".
    A WebP counts when VP8L-coded, a GIF always (LZW: the palette's pixels exactly), a TIFF unless
    JPEG-compressed; a lossy WebP and a JPEG do not."""
    src, imgs = _write_set(tmp_path, ["p1", "p2"])
    ref = _write_reference(tmp_path, imgs, {m: laplacian_fuse for m in ("WL", "WY", "GI", "TJ", "TR", "JP")})
    for n in imgs:
        for m, save in (("WL", dict(format="WEBP", lossless=True)), ("WY", dict(format="WEBP", quality=80)),
                        ("GI", dict(format="GIF")), ("TJ", dict(format="TIFF", compression="jpeg")),
                        ("TR", dict(format="TIFF", compression="tiff_lzw")), ("JP", dict(format="JPEG"))):
            png = ref / m / f"{n}.png"
            ext = {"WEBP": ".webp", "GIF": ".gif", "TIFF": ".tif", "JPEG": ".jpg"}[save["format"]]
            Image.open(png).convert("L" if m == "GI" else "RGB").save(png.with_suffix(ext), **save)
            png.unlink()
    ds = ev.Dataset(name="tiny", sources=src, reference=ref, reference_methods=("WL", "WY", "GI", "TJ", "TR", "JP"),
                    jpeg_quality=(("", 80),))
    pairs = ev.find_pairs(ds)
    assert ev.lossless_references(ds, pairs) == {"WL": 2, "GI": 2, "TR": 2}
    assert ev.stored_lossless(ref / "WL" / "p1.webp") and not ev.stored_lossless(ref / "WY" / "p1.webp")
    labels = ev.storage_labels(ds, ev.parse_config({"methods": ["Laplacian"]}), pairs)
    assert labels["WL"] == "stored WEBP, lossless" and labels["GI"] == "stored GIF, lossless", labels
    assert "lossless" not in labels["WY"] + labels["TJ"] + labels["JP"], labels


def _tiff_with_tags(path: Path, tags: dict[int, int], bigtiff: bool = False) -> Path:
    """An uncompressed 4x4 gray TIFF (tifffile) with the given SHORT/LONG tags of its first IFD
    rewritten in place (compression 259, width 256, height 257)."""
    import struct

    import tifffile

    tifffile.imwrite(path, np.zeros((4, 4), np.uint8), bigtiff=bigtiff)
    b = bytearray(path.read_bytes())
    order = "<" if b[:2] == b"II" else ">"
    offset = struct.unpack(order + ("Q" if bigtiff else "I"), b[8:16] if bigtiff else b[4:8])[0]
    count_fmt, size, at = ("Q", 20, 12) if bigtiff else ("H", 12, 8)
    n = struct.unpack(order + count_fmt, b[offset:offset + struct.calcsize(count_fmt)])[0]
    first = offset + struct.calcsize(count_fmt)
    seen = set()
    for i in range(n):
        e = first + i * size
        tag, kind = struct.unpack(order + "HH", b[e:e + 4])
        if tag in tags:
            b[e + at:e + at + (2 if kind == 3 else 4)] = struct.pack(order + ("H" if kind == 3 else "I"), tags[tag])
            seen.add(tag)
    assert seen == set(tags), (seen, tags)
    path.write_bytes(bytes(b))
    return path


def test_a_tiff_is_lossless_by_its_compression_tag_whatever_pillow_can_open(tmp_path: Path) -> None:
    """stored_lossless asked Pillow for a TIFF's compression and took a file Pillow could not open
    as lossless: a JPEG 2000- or JPEG XL-compressed TIFF (codes Pillow does not know) counted as
    lossless, though the docstring calls JPEG 2000 lossy; a header claiming a huge image raised
    Pillow's DecompressionBombError out of it. The compression tag of the first IFD is read
    directly now (classic and BigTIFF); unknown or lossy codes count as lossy."""
    for code, lossless in ((1, True), (5, True), (8, True), (32773, True), (7, False), (6, False),
                           (34712, False), (50002, False), (50001, False), (34676, False)):
        for big in (False, True):
            f = _tiff_with_tags(tmp_path / f"c{code}{'-big' if big else ''}.tif", {259: code}, bigtiff=big)
            assert ev.stored_lossless(f) is lossless, (code, big)
    huge = _tiff_with_tags(tmp_path / "huge.tif", {256: 60000, 257: 60000})  # a damaged header's size
    assert ev.stored_lossless(huge) is True
    cut = tmp_path / "cut.tif"
    cut.write_bytes((tmp_path / "c7.tif").read_bytes()[:12])  # no IFD: unreadable, said by the reader
    assert ev.stored_lossless(cut) is True


def test_the_truth_table_is_over_the_pairs_with_a_truth_and_says_why_a_mean_is_over_fewer() -> None:
    """With a truth for one pair of three, every PSNR/SSIM/DM_acc cell said ``(n=1/3)`` and the
    note blamed NaN ("e.g. on a flat output"); the two others had no ``-truth``/``-dm`` file. The
    truth table is over the pairs that have one and says how many; a pair with a truth but no
    true map leaves DM_acc ``(n=1/2)`` under a note that names the files."""
    def row(p, m, truth=False, dm=False):
        r = {"pair": p, "method": m, "QMI": 1.0 + (m == "Ours") / 4}
        if truth:
            r.update(PSNR=30.0 + (m == "Ours"), SSIM=0.5 + (m == "Ours") / 4)
        if dm and m.startswith("Ours"):
            r["DM_acc"] = 0.75
        return r

    methods = ["Laplacian", "Ours"]
    rows = [row(p, m, truth=p == "p1", dm=p == "p1") for p in ("p1", "p2", "p3") for m in methods]
    truth = ev.table1_document("d", rows, methods, ["QMI"]).split("## Against the all-in-focus truth")[1]
    assert "(n=" not in truth and ev.PARTIAL_NOTE not in truth and ev.TRUTH_PARTIAL_NOTE not in truth
    assert ("Over the 1 of the 3 pairs that have a truth or a true map (PSNR, SSIM: the 1 pair(s) with a "
            "`<pair>-truth` file; DM_acc: the 1 pair(s) with a `<pair>-dm` file); the others have neither.") in truth
    assert "| Ours | **31.00** (1) | **0.7500** (1) | **0.7500** (1) |" in truth  # bold: over the same pair as Laplacian's
    # a truth for p1 and p2, a true map for p1 only
    rows = [row(p, m, truth=p != "p3", dm=p == "p1") for p in ("p1", "p2", "p3") for m in methods]
    truth = ev.table1_document("d", rows, methods, ["QMI"]).split("## Against the all-in-focus truth")[1]
    assert "(n=1/2)" in truth and "(n=2/" not in truth and "(n=1/3)" not in truth
    assert ev.TRUTH_PARTIAL_NOTE in truth and ev.PARTIAL_NOTE not in truth and "`<pair>-dm`" in ev.TRUTH_PARTIAL_NOTE
    assert "Over the 2 of the 3 pairs" in truth and "DM_acc: the 1 pair(s) with a `<pair>-dm` file" in truth


def test_a_renamed_metrics_map_too_long_for_a_tag_is_an_artifact(tmp_path: Path) -> None:
    """A dataset named with a character MLflow refuses renames every metric of it; the tag
    renamed_metrics, longer than MLflow's 8000 characters of a tag value, was cut to invalid JSON
    (MLflow warns only). Such a map is logged as the artifact renamed_metrics.json, whole, and
    the tag names it."""
    from mlflow.tracking import MlflowClient

    from bafusion.tracking import EXPERIMENT, tracking_uri

    src, imgs = _write_set(tmp_path, ["p1"])
    refs = {f"R{k}": laplacian_fuse for k in range(4)}
    ref = _write_reference(tmp_path, imgs, refs)
    name = "t(" + "x" * 200 + ")"  # its metric names stay within MLflow's 250 characters
    cfg = ev.parse_config({"methods": ["Laplacian", "GFF-native"], "metrics": ["QMI", "QG", "QY", "QCB"],
                           "figures": False, "datasets": [{"name": name, "sources": str(src), "reference": str(ref),
                                                           "reference_methods": list(refs)}]})
    ev.run_evaluation(cfg, tmp_path / "out", log=lambda s: None)
    client = MlflowClient(tracking_uri=tracking_uri())
    run = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id], "tags.stage = 'evaluate'",
                             order_by=["attributes.start_time DESC"])[0]
    assert run.info.status == "FINISHED" and "bafusion.incomplete" not in run.data.tags, run.data.tags
    safe = "t_" + "x" * 200 + "_"
    want = {f"{name}.{m}.{q}": f"{safe}.{m}.{q}" for m in ("Laplacian", "GFF-native", *refs)
            for q in ("QMI", "QG", "QY", "QCB")}
    assert len(json.dumps(want)) > 8000  # too long for a tag
    got = json.loads(Path(client.download_artifacts(run.info.run_id, "renamed_metrics.json", str(tmp_path))).read_text())
    assert run.data.tags["renamed_metrics"] == (f"{len(got)} names, too many for a tag: see the artifact "
                                                "renamed_metrics.json"), run.data.tags["renamed_metrics"]
    assert want.items() <= got.items() and got[f"{name}.pairs"] == f"{safe}.pairs", sorted(set(got) - set(want))
    assert all(k.startswith(f"{name}.") and v == safe + k[len(name):] for k, v in got.items())
    assert all(v in run.data.metrics for v in got.values())
