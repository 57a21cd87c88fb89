"""The prepare step and the data sources: outputs, determinism and clear errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bafusion.data.mattes import object_matte
from bafusion.data.prepare import PrepareOptions, run_prepare
from bafusion.data.sources import select
from bafusion.errors import InputFileError, UserError
from bafusion.io import list_images


def _img(path: Path, h: int, w: int, seed: int = 0, gray: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(seed).integers(0, 256, (h, w) if gray else (h, w, 3), dtype=np.uint8)
    Image.fromarray(a).save(path)
    return path


def _alphamatting(root: Path, n: int = 2, h: int = 80, w: int = 100) -> Path:
    for i in range(n):
        _img(root / "input" / f"GT{i:02d}.png", h, w, i)
        m = np.zeros((h, w), np.uint8)
        m[:, : w // 2] = 255
        Image.fromarray(np.repeat(m[..., None], 3, axis=2)).save(root / "gt" / f"GT{i:02d}.png") if (root / "gt").mkdir(
            exist_ok=True
        ) is None else None
    return root


def _bgs(folder: Path, n: int = 3) -> Path:
    for i in range(n):
        _img(folder / f"{i:012d}.jpg", 90, 120, 10 + i)
    return folder


def _dir_cfg(am: Path, bg: Path, **kw: int) -> dict:
    return {"source": "dir", "dir": {"alphamatting": str(am), "backgrounds": str(bg)}, **kw}


def test_dir_source_halves_foregrounds_and_writes_manifest(tmp_path: Path) -> None:
    cfg = _dir_cfg(_alphamatting(tmp_path / "am"), _bgs(tmp_path / "bg"))
    m = run_prepare(cfg, PrepareOptions(scale=0.5), 0, tmp_path / "prepared", progress=False)
    assert [f["id"] for f in m["foregrounds"]] == ["GT00", "GT01"]
    fg = np.asarray(Image.open(tmp_path / "prepared" / "fg" / "GT00.png"))
    matte = np.asarray(Image.open(tmp_path / "prepared" / "matte" / "GT00.png"))
    assert fg.shape == (40, 50, 3) and matte.shape == (40, 50)
    assert matte[:, :20].min() == 255 and matte[:, 30:].max() == 0
    assert len(m["backgrounds"]) == 3
    # A plain RGB JPEG background is copied byte for byte.
    src = (tmp_path / "bg" / "000000000000.jpg").read_bytes()
    assert (tmp_path / "prepared" / "bg" / "000000000000.jpg").read_bytes() == src
    assert json.loads((tmp_path / "prepared" / "manifest.json").read_text()) == m


def test_builtin_source_is_deterministic_with_soft_mattes(tmp_path: Path) -> None:
    cfg = {
        "source": "builtin",
        "builtin": {"foregrounds": ["chelsea", "coffee"], "backgrounds": ["brick", "grass", "camera"]},
        "holdout_foregrounds": 1,
        "holdout_backgrounds": 1,
    }
    m1 = run_prepare(cfg, PrepareOptions(scale=0.25), 3, tmp_path / "a", progress=False)
    run_prepare(cfg, PrepareOptions(scale=0.25), 3, tmp_path / "b", progress=False)
    for f in sorted((tmp_path / "a").rglob("*.png")):
        assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes(), f
    splits = {(e["id"], e["split"]) for e in m1["foregrounds"]}
    assert {s for _, s in splits} == {"train", "test"}
    matte = object_matte((256, 256), seed=1)
    soft = ((matte > 10) & (matte < 245)).mean()
    assert 0.2 < (matte >= 128).mean() < 0.7  # an object, not everything or nothing
    assert 0.005 < soft < 0.2  # a soft rim, not a hard edge and not a fog
    assert np.array_equal(matte, object_matte((256, 256), seed=1))
    assert not np.array_equal(matte, object_matte((256, 256), seed=2))


def _assert_no_output(out: Path) -> None:
    assert not out.exists(), "a failed step left its output behind"
    assert not list(out.parent.glob(out.name + "*")) and not list(out.parent.glob(f".{out.name}.part-*")), \
        "a failed step left a temporary output behind"


def test_foreground_without_matte_names_the_file(tmp_path: Path) -> None:
    am = _alphamatting(tmp_path / "am")
    (am / "gt" / "GT01.png").unlink()
    with pytest.raises(InputFileError, match=r"GT01\.png.*no matte"):
        run_prepare(_dir_cfg(am, _bgs(tmp_path / "bg")), PrepareOptions(), 0, tmp_path / "out" / "prepared", progress=False)
    _assert_no_output(tmp_path / "out" / "prepared")


@pytest.mark.parametrize("sub", ["input", "gt"])
def test_two_foreground_files_with_one_id_name_both(tmp_path: Path, sub: str) -> None:
    am = _alphamatting(tmp_path / "am")
    _img(am / sub / "GT01.jpg", 80, 100, 5)  # beside GT01.png: one of the two was dropped silently
    with pytest.raises(InputFileError, match=r"GT01\.png: .*id 'GT01' is not unique: .*GT01\.jpg has the same name"):
        run_prepare(_dir_cfg(am, _bgs(tmp_path / "bg")), PrepareOptions(), 0, tmp_path / "out" / "prepared", progress=False)
    _assert_no_output(tmp_path / "out" / "prepared")


def test_hidden_files_are_not_data(tmp_path: Path) -> None:
    am, bg = _alphamatting(tmp_path / "am"), _bgs(tmp_path / "bg")
    for d in (am / "input", am / "gt", bg):  # macOS AppleDouble files: not images
        (d / "._GT01.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (bg / ".000000000001.jpg").write_bytes(b"")
    assert [p.name for p in list_images(bg)] == ["000000000000.jpg", "000000000001.jpg", "000000000002.jpg"]
    m = run_prepare(_dir_cfg(am, bg), PrepareOptions(scale=0.5), 0, tmp_path / "prepared", progress=False)
    assert [f["id"] for f in m["foregrounds"]] == ["GT00", "GT01"] and len(m["backgrounds"]) == 3


def test_matte_of_another_size_names_the_file(tmp_path: Path) -> None:
    am = _alphamatting(tmp_path / "am")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(am / "gt" / "GT01.png")
    with pytest.raises(InputFileError, match=r"GT01\.png.*matte size 10x10 differs from the image size 100x80"):
        run_prepare(_dir_cfg(am, _bgs(tmp_path / "bg")), PrepareOptions(), 0, tmp_path / "out" / "prepared", progress=False)
    _assert_no_output(tmp_path / "out" / "prepared")


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    bg = _bgs(tmp_path / "bg")
    (bg / "000000000001.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(InputFileError, match=r"000000000001\.jpg: unreadable image"):
        run_prepare(_dir_cfg(_alphamatting(tmp_path / "am"), bg), PrepareOptions(), 0, tmp_path / "out" / "p", progress=False)
    _assert_no_output(tmp_path / "out" / "p")


def test_empty_background_folder_names_the_folder(tmp_path: Path) -> None:
    (tmp_path / "bg").mkdir()
    with pytest.raises(InputFileError, match=r"bg: background folder holds no images"):
        run_prepare(_dir_cfg(_alphamatting(tmp_path / "am"), tmp_path / "bg"), PrepareOptions(), 0, tmp_path / "p", progress=False)
    _assert_no_output(tmp_path / "p")


def test_a_failed_rerun_keeps_the_previous_output(tmp_path: Path) -> None:
    am, bg = _alphamatting(tmp_path / "am"), _bgs(tmp_path / "bg")
    out = tmp_path / "prepared"
    run_prepare(_dir_cfg(am, bg), PrepareOptions(), 0, out, progress=False)
    before = (out / "manifest.json").read_bytes()
    (bg / "000000000002.jpg").write_bytes(b"broken")
    with pytest.raises(InputFileError):
        run_prepare(_dir_cfg(am, bg), PrepareOptions(), 0, out, progress=False)
    assert (out / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".prepared", "prepared"))) == ["prepared"]


def test_cli_prints_one_line_error_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bafusion.cli import main

    rc = main(["prepare", "--source", "dir", "--alphamatting", str(tmp_path / "nope"), "--backgrounds-dir", str(tmp_path),
               "--out", str(tmp_path / "p"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "nope" in err and "folder not found" in err and "Traceback" not in err


@pytest.mark.parametrize("name", ["lbp_frontal_face_cascade_filename", "download_all", "eagle", "brain",
                                  "binary_blobs", "lfw_subset", "data_dir", "file_hash", "_fetch"])
def test_a_builtin_name_that_is_no_shipped_image_is_refused(tmp_path: Path, name: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Any callable of skimage.data was taken: lbp_frontal_face_cascade_filename ended in
    "internal error", and download_all / eagle / brain would download with pooch although the
    builtin source is documented offline."""
    from bafusion.cli import main
    from bafusion.data.sources import BUILTIN_IMAGES, _builtin_image, check_selection

    listed = "the builtin source takes the images that ship with scikit-image: " + ", ".join(BUILTIN_IMAGES)
    with pytest.raises(UserError) as e:
        check_selection({"source": "builtin", "builtin": {"foregrounds": ["astronaut", name]}})
    assert str(e.value) == f"data.builtin.foregrounds: unknown builtin image {name!r} ({listed})"
    with pytest.raises(UserError, match=f"unknown builtin image {name!r}"):
        _builtin_image(name)
    rc = main(["prepare", "--source", "builtin", "--builtin-foregrounds", f"{name},astronaut,chelsea",
               "--builtin-backgrounds", "brick,grass", "--holdout-foregrounds", "0", "--holdout-backgrounds", "0",
               "--out", str(tmp_path / "p"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and f"unknown builtin image {name!r}" in err and "internal error" not in err, err
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("what", ["foregrounds", "backgrounds"])
def test_a_builtin_image_given_twice_is_refused(tmp_path: Path, what: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``data.builtin.foregrounds: [astronaut, astronaut, coffee, chelsea]`` with one held out
    was prepared: "3 foregrounds for training, 1 held out", astronaut in both splits at seeds 0,
    1 and 3 (the held-out test image trained on). Refused by the schema and by prepare."""
    from bafusion.cli import main
    from bafusion.data.sources import check_selection
    from bafusion.schema import problems

    names = ["astronaut", "astronaut", "coffee", "chelsea"] if what == "foregrounds" else ["brick", "grass", "brick"]
    assert problems({"data": {"builtin": {what: names}}}) == [
        f"data.builtin.{what}: {json.dumps(names)} is not a list without repeated items"]
    with pytest.raises(UserError) as e:
        check_selection({"source": "builtin", "holdout_foregrounds": 1, "holdout_backgrounds": 1, "builtin": {what: names}})
    assert str(e.value).startswith(f"data.builtin.{what}: {names[0]} given more than once ("), str(e.value)
    rc = main(["prepare", "--source", "builtin", f"--builtin-{what}", ",".join(names), "--holdout-foregrounds", "1",
               "--holdout-backgrounds", "1", "--out", str(tmp_path / "p"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{names[0]} given more than once" in err, err
    assert not (tmp_path / "p").exists()


def test_every_builtin_image_loads_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from bafusion.data.sources import BUILTIN_BACKGROUNDS, BUILTIN_FOREGROUNDS, BUILTIN_IMAGES, _builtin_image

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the builtin source touched the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    assert set(BUILTIN_FOREGROUNDS) | set(BUILTIN_BACKGROUNDS) <= set(BUILTIN_IMAGES)
    for name in BUILTIN_IMAGES:
        img = _builtin_image(name)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 100, name


def test_holdout_and_limits(tmp_path: Path) -> None:
    cfg = _dir_cfg(_alphamatting(tmp_path / "am", n=4), _bgs(tmp_path / "bg", n=5), holdout_foregrounds=1,
                   holdout_backgrounds=2, backgrounds=2)
    sel = select(cfg, 0)
    assert len(sel.train_foregrounds) == 3 and len(sel.test_foregrounds) == 1
    assert len(sel.train_backgrounds) == 2 and len(sel.test_backgrounds) == 2
    assert not {b.id for b in sel.train_backgrounds} & {b.id for b in sel.test_backgrounds}
    with pytest.raises(UserError, match="unknown data.source"):
        select({"source": "ftp"}, 0)


def test_the_selection_errors_name_the_key(tmp_path: Path) -> None:
    """The prepare job said "foregrounds: cannot hold out 5 of 3", "foregrounds: cannot hold out
    1 of 1" for an unknown builtin name (the names were read after the hold-out) and
    "/nonexist: folder not found" without the key."""
    builtin = {"source": "builtin", "holdout_foregrounds": 1, "holdout_backgrounds": 1,
               "builtin": {"foregrounds": ["nosuchimage"], "backgrounds": ["brick", "grass"]}}
    with pytest.raises(UserError) as e:
        select(builtin, 0)
    assert str(e.value).startswith("data.builtin.foregrounds: unknown builtin image 'nosuchimage'"), str(e.value)
    builtin["builtin"]["foregrounds"] = ["chelsea", "coffee", "astronaut"]
    with pytest.raises(UserError) as e:
        select({**builtin, "holdout_foregrounds": 5}, 0)
    assert str(e.value).startswith("data.holdout_foregrounds: cannot hold out 5 of 3 foregrounds"), str(e.value)
    with pytest.raises(UserError) as e:
        select({**builtin, "holdout_backgrounds": 0}, 0)
    assert "data.holdout_foregrounds and data.holdout_backgrounds must both be 0 or both be > 0" in str(e.value)
    am, bg = _alphamatting(tmp_path / "am", n=2), _bgs(tmp_path / "bg", n=3)
    with pytest.raises(UserError) as e:
        select(_dir_cfg(tmp_path / "nonexist", bg), 0)
    assert str(e.value).startswith(f"data.dir.alphamatting {tmp_path / 'nonexist'}: folder not found"), str(e.value)
    with pytest.raises(UserError) as e:
        select(_dir_cfg(am, tmp_path / "nobg"), 0)
    assert str(e.value).startswith(f"data.dir.backgrounds {tmp_path / 'nobg'}: background folder not found")
    with pytest.raises(UserError) as e:
        select(_dir_cfg(am, bg, holdout_foregrounds=2, holdout_backgrounds=1), 0)
    assert str(e.value).startswith(f"data.holdout_foregrounds: cannot hold out 2 of the 2 foregrounds in {am} "), \
        str(e.value)


def test_fewer_items_than_configured_are_noted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the paper preset's 700 backgrounds on ../shared's 128 made 27 x 128 pairs without a word
    cfg = _dir_cfg(_alphamatting(tmp_path / "am"), _bgs(tmp_path / "bg", 3), backgrounds=700,
                   holdout_foregrounds=1, holdout_backgrounds=1)
    m = run_prepare(cfg, PrepareOptions(scale=0.5), 0, tmp_path / "prepared", progress=False)
    err = capsys.readouterr().err
    assert "note: data.backgrounds is 700, but the source has 2 for training (after 1 held out): using 2" in err
    assert "data.foregrounds" not in err  # 0 = all: nothing to say
    assert sum(b["split"] == "train" for b in m["backgrounds"]) == 2


def test_a_0_1_matte_is_refused_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A numpy 0/1 mask saved as an 8-bit PNG labelled every pixel "not focused in A", silently.
    from bafusion.cli import main

    am = _alphamatting(tmp_path / "am")
    m = np.zeros((80, 100), np.uint8)
    m[:, :50] = 1
    Image.fromarray(m).save(am / "gt" / "GT01.png")
    with pytest.raises(InputFileError, match=r"GT01\.png: matte values are 0\.\.1; mattes are 0\.\.255 \(multiply by 255\)"):
        run_prepare(_dir_cfg(am, _bgs(tmp_path / "bg")), PrepareOptions(), 0, tmp_path / "out" / "p", progress=False)
    _assert_no_output(tmp_path / "out" / "p")
    rc = main(["prepare", "--source", "dir", "--alphamatting", str(am), "--backgrounds-dir", str(tmp_path / "bg"),
               "--out", str(tmp_path / "p"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "GT01.png: matte values are 0..1" in err and "Traceback" not in err


@pytest.mark.parametrize("value", [0, 255])
def test_a_matte_almost_all_one_value_is_warned(tmp_path: Path, value: int, capsys: pytest.CaptureFixture[str]) -> None:
    am = _alphamatting(tmp_path / "am")
    m = np.full((80, 100), value, np.uint8)
    m[:2, :2] = 255 - value  # 4 of 8000 pixels on the other side
    Image.fromarray(m).save(am / "gt" / "GT00.png")
    run_prepare(_dir_cfg(am, _bgs(tmp_path / "bg")), PrepareOptions(), 0, tmp_path / "p", progress=False)
    err = capsys.readouterr().err
    side = "background (0)" if value == 0 else "foreground (255)"
    assert f"GT00.png: warning: the matte is 99.95% {side}" in err
    assert "GT01" not in err  # a half-and-half matte is not warned


def test_the_shipped_alphamatting_mattes_pass_without_warning(shared_data: Path) -> None:
    from bafusion.data.mattes import matte_warning
    from bafusion.data.sources import check_foreground, dir_foregrounds

    am = shared_data / "train" / "alphamatting"
    for fg in dir_foregrounds(am):
        _, matte = check_foreground(fg)
        assert matte_warning(matte) is None, fg.id


def test_the_data_stages_list_the_formats_they_listed_before_fuse_dir_took_more(tmp_path: Path) -> None:
    """fuse-dir's IMAGE_SUFFIXES grew to every photo format fuse reads (.gif, .avif, .tga, ...);
    the data stages' folders keep their list, so that a prepared data set does not change."""
    from bafusion.io import IMAGE_SUFFIXES

    img = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    for name in ("a.png", "b.jpg", "c.gif", "d.tga", "e.ppm"):
        img.save(tmp_path / name)
    assert {".gif", ".tga", ".ppm"} <= set(IMAGE_SUFFIXES)
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.jpg"]


def test_a_rerun_with_jpeg_backgrounds_is_not_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A plain RGB JPEG background is copied as bg/<id>.jpg, but the rerun's check of the folder
    prepare replaces knew only bg/*.png: an identical rerun was refused, "holds files this command
    did not write: bg/000000000000.jpg". What prepare writes is its own; a user's file is not."""
    from bafusion.cli import main

    am, bg = _alphamatting(tmp_path / "am", n=1), _bgs(tmp_path / "bg", n=2)
    _img(bg / "photo.v2.jpeg", 90, 120, 20)  # copied as bg/photo.v2.jpg
    _img(bg / "lossless.png", 90, 120, 21)
    argv = ["prepare", "--source", "dir", "--alphamatting", str(am), "--backgrounds-dir", str(bg), "--scale", "0.25",
            "--out", str(tmp_path / "prep"), "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    written = sorted(p.relative_to(tmp_path / "prep").as_posix() for p in (tmp_path / "prep").rglob("*.*"))
    assert "bg/000000000000.jpg" in written and "bg/photo.v2.jpg" in written and "bg/lossless.png" in written
    capsys.readouterr()
    assert main(argv) == 0, capsys.readouterr().err
    (tmp_path / "prep" / "bg" / "MY-NOTES.txt").write_text("mine")
    assert main(argv) == 2
    assert "did not write: bg/MY-NOTES.txt;" in capsys.readouterr().err
    assert (tmp_path / "prep" / "bg" / "MY-NOTES.txt").read_text() == "mine"


def test_mattes_all_of_one_value_are_refused_before_any_composite(tmp_path: Path) -> None:
    # mattes all 0 (or all 255) went through prepare, composite and patches with a warning each: the
    # boundary set came out empty and train_boundary refused it, after the initial net had trained
    # on patches of one class
    am = _alphamatting(tmp_path / "am")
    for i, v in enumerate((0, 255)):
        Image.fromarray(np.full((80, 100), v, np.uint8)).save(am / "gt" / f"GT{i:02d}.png")
    with pytest.raises(UserError, match=r"every training matte is one value everywhere \(.*GT00\.png: 0, .*GT01\.png: "
                                        r"255\): no composite holds a boundary"):
        run_prepare(_dir_cfg(am, _bgs(tmp_path / "bg")), PrepareOptions(), 0, tmp_path / "out" / "p", progress=False)
    _assert_no_output(tmp_path / "out" / "p")
    m = np.zeros((80, 100), np.uint8)
    m[:, :50] = 255
    Image.fromarray(m).save(am / "gt" / "GT01.png")  # one matte with a boundary: trained on, the other warned about
    run_prepare(_dir_cfg(am, _bgs(tmp_path / "bg")), PrepareOptions(), 0, tmp_path / "p", progress=False)
    assert (tmp_path / "p" / "manifest.json").is_file()


def test_a_matte_named_in_another_case_is_named_in_the_refusal(tmp_path: Path) -> None:
    # "foreground has no matte (expected gt/GT01.png)" left the user staring at gt/gt01.png
    am = _alphamatting(tmp_path / "am")
    (am / "gt" / "GT01.png").rename(am / "gt" / "gt01.png")
    with pytest.raises(InputFileError, match=r"input/GT01\.png: foreground has no matte \(expected .*gt/GT01\.png; "
                                             r".*gt/gt01\.png differs in case only: names must match exactly\)"):
        select(_dir_cfg(am, _bgs(tmp_path / "bg")), 0)
    (am / "input" / "GT01.png").rename(am / "input" / "Gt01.png")
    (am / "gt" / "GT00.png").rename(am / "gt" / "gt00.png")
    with pytest.raises(InputFileError, match=r"input/GT00\.png: .*gt/gt00\.png differs in case only"):
        select(_dir_cfg(am, _bgs(tmp_path / "bg")), 0)


def test_a_foreground_turned_by_its_exif_orientation_says_so(tmp_path: Path) -> None:
    # a phone JPEG (EXIF orientation 6) beside a matte of its stored pixels: "matte size 100x80
    # differs from the image size 80x100", with nothing saying the image was turned
    am = _alphamatting(tmp_path / "am")
    (am / "input" / "GT01.png").unlink()
    ex = Image.Exif()
    ex[0x0112] = 6
    Image.fromarray(np.zeros((80, 100, 3), np.uint8)).save(am / "input" / "GT01.jpg", exif=ex.tobytes())
    with pytest.raises(InputFileError, match=r"GT01\.jpg: matte size 100x80 differs from the image size 80x100 .*"
                                             r"GT01\.jpg's EXIF orientation 6 was applied \(the file stores 100x80\)"):
        run_prepare(_dir_cfg(am, _bgs(tmp_path / "bg")), PrepareOptions(), 0, tmp_path / "out" / "p", progress=False)
    _assert_no_output(tmp_path / "out" / "p")


def test_backgrounds_in_subfolders_are_named_not_searched(tmp_path: Path) -> None:
    # backgrounds sorted into category folders: "holds no images" with the images in plain
    # sight, or, beside a few at the top, hundreds left out without a word
    bg = tmp_path / "bg"
    _bgs(bg / "indoor", 2)
    _bgs(bg / "outdoor", 3)
    am = _alphamatting(tmp_path / "am")
    with pytest.raises(InputFileError, match=r"bg: background folder holds no images \(\.png, \.jpg, \.\.\.\); its "
                                             r"subfolders \(indoor, outdoor\) are not searched: 5 images there"):
        run_prepare(_dir_cfg(am, bg), PrepareOptions(), 0, tmp_path / "p", progress=False)
    _img(bg / "top.jpg", 90, 120)
    with pytest.warns(UserWarning, match=r"bg: 5 images in its subfolders \(indoor, outdoor\) are not used: "
                                         r"the folder is not searched"):
        m = run_prepare(_dir_cfg(am, bg), PrepareOptions(), 0, tmp_path / "p", progress=False)
    assert [b["id"] for b in m["backgrounds"]] == ["top"]
    import warnings

    from bafusion.data.composite import shard_jobs

    with warnings.catch_warnings():  # the workflow's parse, in every job, leaves it to the prepare job
        warnings.simplefilter("error")
        assert shard_jobs({"data": _dir_cfg(am, bg), "composite": {"shards": 4}})[0] == 2  # the 2 foregrounds


def test_the_parameter_check_at_every_parse_does_not_warn_of_subfolder_backgrounds(tmp_path: Path) -> None:
    # check_params (run at every parse of the workflow: snakemake -n, every job's process) counts
    # the samples through select: the subfolder warning came out there too, as a bare Python
    # warning naming sources.py, not only from the prepare job
    import warnings

    from bafusion.cli.params_check import check_params
    from bafusion.config import deep_merge, load_params

    bg = tmp_path / "bg"
    _bgs(bg, 2)
    _bgs(bg / "indoor", 2)
    am = _alphamatting(tmp_path / "am")
    params = deep_merge(load_params(Path(__file__).resolve().parents[1] / "params.yaml"),
                        {"data": _dir_cfg(am, bg, holdout_foregrounds=0, holdout_backgrounds=0)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_params(params, "p.yaml")
    with pytest.warns(UserWarning, match=r"2 images in its subfolders \(indoor\) are not used"):
        run_prepare(params["data"], PrepareOptions(), 0, tmp_path / "p", progress=False)


def test_small_backgrounds_are_all_named_before_any_foreground_is_prepared(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # the first small background was refused once every foreground had been prepared (minutes for a
    # large set), and the next run stopped at the next one
    import bafusion.data.prepare as prep

    bg = _bgs(tmp_path / "bg", 4)
    _img(bg / "000000000001.jpg", 50, 120)
    _img(bg / "000000000003.jpg", 90, 40)
    monkeypatch.setattr(prep, "prepare_foreground", lambda *a: pytest.fail("a foreground was prepared"))
    with pytest.raises(UserError, match=r"2 backgrounds are smaller than prepare\.min_background_side=64: "
                                        r".*000000000001\.jpg \(120x50\), .*000000000003\.jpg \(40x90\)"):
        run_prepare(_dir_cfg(_alphamatting(tmp_path / "am"), bg), PrepareOptions(), 0, tmp_path / "p", progress=False)
    _assert_no_output(tmp_path / "p")
    (bg / "000000000001.jpg").unlink()  # one: named as the file's error, as before
    with pytest.raises(InputFileError, match=r"000000000003\.jpg: background is 40x90, smaller than "
                                             r"prepare\.min_background_side=64$"):
        run_prepare(_dir_cfg(tmp_path / "am", bg), PrepareOptions(), 0, tmp_path / "p", progress=False)


def test_the_one_value_refusal_counts_the_training_mattes_only(tmp_path: Path) -> None:
    # held-out (testset) foregrounds neither count towards the refusal nor save it
    from bafusion.data.sources import select

    am = _alphamatting(tmp_path / "am", n=3)
    bg = _bgs(tmp_path / "bg")
    cfg = _dir_cfg(am, bg, holdout_foregrounds=1, holdout_backgrounds=1)
    sel = select(cfg, 0)
    (held,) = [f.id for f in sel.test_foregrounds]
    train = [f.id for f in sel.train_foregrounds]
    boundary = np.asarray(Image.open(am / "gt" / f"{held}.png"))
    for i in train + [held]:  # all of one value: refused, the held-out one named nowhere
        Image.fromarray(np.full((80, 100), 0, np.uint8)).save(am / "gt" / f"{i}.png")
    with pytest.raises(UserError, match=r"every training matte is one value everywhere") as e:
        run_prepare(cfg, PrepareOptions(), 0, tmp_path / "p1", progress=False)
    assert f"{held}.png" not in str(e.value) and all(f"{i}.png: 0" in str(e.value) for i in train)
    Image.fromarray(boundary).save(am / "gt" / f"{held}.png")  # a boundary in the held-out matte only: refused
    with pytest.raises(UserError, match=r"every training matte is one value everywhere"):
        run_prepare(cfg, PrepareOptions(), 0, tmp_path / "p2", progress=False)
    Image.fromarray(np.full((80, 100), 255, np.uint8)).save(am / "gt" / f"{held}.png")
    Image.fromarray(boundary).save(am / "gt" / f"{train[0]}.png")  # one training matte with a boundary: prepared
    m = run_prepare(cfg, PrepareOptions(), 0, tmp_path / "p3", progress=False)
    assert [f["split"] for f in m["foregrounds"]].count("test") == 1
