"""Bad input (issue 16): every user error of every command is refused before the work starts,
with exit status 2 and one line ``bafusion <cmd>: error: <what>: <why>``; no input is ever
overwritten; an internal error keeps its traceback and says it is a bug."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import bafusion.cli.baselines as cli_baselines
import bafusion.fusion.models as fusion_models
import bafusion.fusion.rule as fusion_rule
from bafusion.cli import main as cli_main
from bafusion.nets.model import build_model, save_model

SRC = Path(__file__).resolve().parents[1] / "src"
#: The fusion that the ``work`` fixture replaces with a guard (a test that fuses puts it back).
_FUSE_STACK = fusion_rule.fuse_stack


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder (the working directory) with two sources a.png, b.png, a file ``afile`` and
    a tiny model folder ``nets``; the fusion and baseline work itself fails the test if reached."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (24, 20), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 256, (24, 20), dtype=np.uint8)).save(tmp_path / "b.png")
    (tmp_path / "afile").write_text("not a folder")
    for kind in ("initial", "boundary"):
        save_model(build_model(8), tmp_path / "nets" / f"{kind}.pt", {"patch": 12})
    monkeypatch.chdir(tmp_path)

    def reached(*args: object, **kwargs: object) -> None:
        raise AssertionError("the work started although the command line was refused")

    monkeypatch.setattr(fusion_rule, "fuse_stack", reached)
    monkeypatch.setattr(cli_baselines, "fuse", reached)
    return tmp_path


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str], work: Path, *words: str) -> str:
    before = {p: _digest(p) for p in work.rglob("*") if p.is_file()}
    try:
        rc = cli_main(argv)
    except SystemExit as e:  # argparse's errors
        rc = e.code
    out, err = capsys.readouterr()
    assert rc == 2, (argv, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"bafusion {argv[0]}: error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, err)
    after = {p: _digest(p) for p in work.rglob("*") if p.is_file()}
    assert after == before, "a file was written, changed or removed"
    return lines[0]


FUSE = ["fuse", "a.png", "b.png", "--model", "nets", "--device", "cpu"]


@pytest.mark.parametrize("spelling", ["a.png", "./a.png", "ABS", "LINK", "HARDLINK", "b.png"])
def test_fuse_never_overwrites_a_source(work: Path, capsys, spelling: str) -> None:
    out = {"ABS": str(work / "a.png"), "LINK": "link.png", "HARDLINK": "hard.png"}.get(spelling, spelling)
    if spelling == "LINK":
        os.symlink(work / "a.png", work / "link.png")
    if spelling == "HARDLINK":
        os.link(work / "a.png", work / "hard.png")
    line = _refused([*FUSE, "-o", out], capsys, work, "is also an input", "never overwritten")
    assert line.startswith(f"bafusion fuse: error: {out}: ")


def test_an_output_link_into_a_folder_that_cannot_be_written_is_refused_before_any_work(work: Path, capsys) -> None:
    """fuse -o link.png, a symbolic link to a file in a folder that cannot be written: the check
    looked at the link's folder (writable), the fusion ran, and the write failed at its end. The
    file it points to is what is replaced: its folder is checked, before any work."""
    (work / "link.png").symlink_to("/proc/bafusion-fused.png")  # /proc takes no new file, even for root
    _refused(["fuse", "a.png", "b.png", "-o", "link.png", "--model", "nets"], capsys, work,
             "link.png: cannot write in /proc")


def _simulate_mount_point(monkeypatch: pytest.MonkeyPatch, path: Path, table: bool) -> None:
    """Make ``path`` a mount point: listed in the mount table (``table``; os.path.ismount says
    False, as for a bind mount from the same file system), or, without a readable
    /proc/self/mountinfo, by os.path.ismount."""
    import bafusion.preflight as preflight

    if table:
        monkeypatch.setattr(preflight, "_mount_points", lambda: frozenset({os.path.realpath(path)}))
    else:
        monkeypatch.setattr(preflight, "_mount_points", lambda: None)
        monkeypatch.setattr(os.path, "ismount", lambda p: os.path.realpath(p) == os.path.realpath(path))


@pytest.mark.parametrize("argv", [["prepare", "-o"], ["evaluate", "--dataset", "d=src", "--out"],
                                  ["download-eval", "--from-dir", "src", "-o"]])
@pytest.mark.parametrize("linked", [False, True])
@pytest.mark.parametrize("table", [True, False])
def test_an_output_folder_replaced_whole_that_is_a_mount_point_is_refused_before_any_work(
        work: Path, capsys, monkeypatch, argv: list[str], linked: bool, table: bool) -> None:
    """``--out /out``, a mount point (a container's volume, ``docker run -v ./out:/out``, a
    drive, a bind mount from the same file system, which os.path.ismount misses): the folder
    written beside it, on the file system above, cannot be renamed onto it; evaluate did all its
    work and then failed with "/out: Device or resource busy". Refused before any work, naming a
    folder inside it (mount points simulated: the mount table, or os.path.ismount without one)."""
    mount = work / "mnt"
    mount.mkdir()
    (work / "src").mkdir()
    _simulate_mount_point(monkeypatch, mount, table)
    out = "link" if linked else "mnt"
    if linked:
        (work / "link").symlink_to(mount)
    line = _refused([*argv, out], capsys, work, f"{out}: the --out folder is replaced whole",
                    "it is a mount point", f"a new folder inside it, such as {os.path.join(out, 'out')}")
    assert (str(mount) in line) == linked, line


@pytest.mark.parametrize("linked", [False, True])
@pytest.mark.parametrize("table", [True, False])
def test_an_output_file_that_is_a_mount_point_is_refused_before_any_work(work: Path, capsys, monkeypatch,
                                                                          linked: bool, table: bool) -> None:
    """``fuse -o /out.png``, a file bound there (``docker run -v ./f.png:/out.png``): the file
    written beside it cannot be renamed onto it; the fusion ran and then failed with
    "Device or resource busy". Refused before any work (mount points simulated: the mount
    table, or os.path.ismount without one)."""
    bound = work / "bound.png"
    bound.write_bytes(b"")
    _simulate_mount_point(monkeypatch, bound, table)
    out = "link.png" if linked else "bound.png"
    if linked:
        (work / "link.png").symlink_to(bound)
    line = _refused([*FUSE, "-o", out], capsys, work, f"{out}: the output image is written beside it",
                    "it is a mount point", "write to a new path")
    assert (str(bound) in line) == linked, line


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_an_output_on_an_overlay_of_other_file_systems_is_no_mount_point(tmp_path: Path, monkeypatch,
                                                                          kind: str) -> None:
    """An overlay whose layers lie on other file systems (xino=off: a live system's squashfs
    under a tmpfs, Apptainer's writable tmpfs): its files report their layer's st_dev, their
    folder the overlay's, so os.path.ismount takes every file there for a mount point, and
    ``fuse -o out.png`` there was refused ("it is a mount point"; reproduced with mount -t
    overlay); a folder with a device of its own that is not mounted (a btrfs subvolume) alike.
    Only the mount table says what is mounted (os.path.ismount simulated: True for all)."""
    import bafusion.preflight as preflight

    monkeypatch.setattr(preflight, "_mount_points", lambda: frozenset({"/", os.path.realpath(tmp_path / "elsewhere")}))
    monkeypatch.setattr(os.path, "ismount", lambda p: True)
    if kind == "file":
        (tmp_path / "out.png").write_bytes(b"")
        assert preflight.check_output_file(tmp_path / "out.png") == tmp_path / "out.png"
    else:
        (tmp_path / "out").mkdir()
        assert preflight.check_output_dir(tmp_path / "out", replaced=True) == tmp_path / "out"


def test_the_mount_table_is_read_with_its_escapes(tmp_path: Path, monkeypatch) -> None:
    """/proc/self/mountinfo's mount points (its fifth field), with a space, tab, newline or
    backslash in a name written as an octal escape; None where it cannot be read."""
    import bafusion.preflight as preflight

    table = tmp_path / "mountinfo"
    table.write_bytes(b"27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
                      b"40 27 0:38 / /mnt/my\\040drive\\134x rw,relatime shared:1 - tmpfs tmpfs rw\n")
    monkeypatch.setattr(preflight, "_MOUNTINFO", str(table))
    assert preflight._mount_points() == frozenset({"/", "/mnt/my drive\\x"})
    monkeypatch.setattr(preflight, "_MOUNTINFO", str(tmp_path / "none"))
    assert preflight._mount_points() is None


@pytest.mark.parametrize("second, words", [
    ("a.png", ["a.png is given twice (sources 1 and 2)"]),
    ("./a.png", ["a.png and ./a.png are the same file (sources 1 and 2)"]),
    ("LINK", ["a.png and link.png are the same file (sources 1 and 3)"]),
    ("HARDLINK", ["a.png and hard.png are the same file (sources 1 and 3)"]),
])
def test_fuse_refuses_one_file_given_as_two_sources(work: Path, capsys, second: str, words: list[str]) -> None:
    """fuse a.png a.png wrote a copy of a.png, 'fused 2 images'; a symlink to a.png as a third source too."""
    if second == "LINK":
        os.symlink(work / "a.png", work / "link.png")
    if second == "HARDLINK":
        os.link(work / "a.png", work / "hard.png")
    link = {"LINK": "link.png", "HARDLINK": "hard.png"}.get(second)
    images = ["a.png", "b.png", link] if link else ["a.png", second]
    line = _refused(["fuse", *images, "--model", "nets", "--device", "cpu", "-o", "F.png"], capsys, work,
                    *words, "give each shot once")
    assert line.startswith("bafusion fuse: error: a.png ")


def test_fuse_names_an_empty_source_path(work: Path, capsys) -> None:
    """bafusion fuse a.png "$UNSET" said '.: not a regular file' (pathlib reads '' as '.')."""
    line = _refused(["fuse", "a.png", "", "--model", "nets", "--device", "cpu", "-o", "F.png"], capsys, work)
    assert line == "bafusion fuse: error: source 2: the path is empty (''): no file named", line


def test_baseline_never_overwrites_a_source(work: Path, capsys) -> None:
    _refused(["baseline", "a.png", "b.png", "-o", "./b.png"], capsys, work, "is also an input")


@pytest.mark.parametrize(
    "argv, words",
    [
        ([*FUSE, "-o", "/proc/F.png"], ["/proc/F.png", "cannot write in /proc"]),
        ([*FUSE, "-o", "afile/F.png"], ["afile/F.png", "afile is a file, not a folder"]),
        ([*FUSE, "-o", "afile/sub/F.png"], ["afile is a file, not a folder"]),
        ([*FUSE, "-o", "F.xyz"], ["F.xyz", "unknown image format '.xyz'"]),
        ([*FUSE, "-o", "F"], ["unknown image format"]),
        # AVIF (and other formats bafusion reads) were "unknown image format" as outputs
        ([*FUSE, "-o", "F.avif"], ["F.avif: AVIF is not an output format of bafusion fuse (it reads AVIF sources): "
                                   "the output image must end in .png, .tif, .tiff, .bmp, .jpg, .jpeg, .webp"]),
        ([*FUSE, "-o", "F.GIF"], ["F.GIF: GIF is not an output format of bafusion fuse"]),
        ([*FUSE, "-o", "F.jfif"], ["F.jfif: bafusion fuse writes this format with the suffix .jpg, not .jfif"]),
        (["baseline", "a.png", "b.png", "-o", "F.avif"], ["AVIF is not an output format of bafusion baseline"]),
        ([*FUSE, "-o", "nets"], ["nets: ", "is a folder"]),
        ([*FUSE, "-o", "F.png", "--save-maps", "afile"], ["afile: is a file, not a folder"]),
        ([*FUSE, "-o", "F.png", "--save-maps", "afile/maps"], ["afile is a file, not a folder"]),
        (["fuse", "a.png", "b.png", "--model", "nets", "-o", "F.png", "--device", "mps"], ["--device mps", "MPS"]),
        (["fuse", "a.png", "b.png", "--model", "nets", "-o", "F.png", "--device", "tpu9"], ["--device tpu9"]),
        # a device from the parameters (the pipeline's fuse.device) was blamed on "--device", not given
        (["fuse", "a.png", "b.png", "--model", "nets", "-o", "F.png", "--params-json", '{"device": "mps"}'],
         ["fuse.device mps: MPS"]),
        # (fuse-set checks the index and the pairs' files first: its device is checked after them)
        (["fuse-set", "--pairs", "nopairs", "--models", "nets", "--out", "fs", "--params-json", '{"device": "mps"}'],
         ["fuse.device mps: MPS"]),
        (["fuse-dir", ".", "out", "--model", "nets", "--params-json", '{"device": "mps"}'], ["fuse.device mps: MPS"]),
        (["fuse", "a.png", "b.png", "-o", "F.png"], ["no trained nets found"]),
        (["fuse", "a.png", "-o", "F.png", "--model", "nets"], ["at least two"]),
        (["fuse", "a.png", "b.png"], ["-o/--output", "required"]),
        ([*FUSE, "-o", "F.png", "--l", "x"], ["--l", "invalid int"]),
        ([*FUSE, "-o", "F.png", "--save-maps", "./F.png"], ["./F.png", "-o/--output", "--save-maps", "its own path"]),
        ([*FUSE, "-o", "F.png", "--save-registered", "F.png"], ["-o/--output", "--save-registered", "its own path"]),
        ([*FUSE, "-o", "F.png", "--save-registered", "afile"], ["afile: is a file, not a folder"]),
        (["train", "--net", "initial", "--patches", "p.h5", "--out", "m.pt", "--metrics", "m.pt"],
         ["m.pt: given both as --out and as --report/--metrics"]),
        # "the --metrics file": README's table leads with --report, the spelling the user typed
        (["train", "--net", "initial", "--patches", "afile", "--out", "m.pt", "--report", "afile"],
         ["afile: the --report/--metrics file is also an input"]),
        ([*FUSE, "-o", "F.png", "--threads", "-3"], ["--threads -3", "positive number"]),
        ([*FUSE, "-o", "F.png", "--alpha", "-1"], ["--alpha -1", "more than 0"]),
        ([*FUSE, "-o", "F.png", "--alpha", "0"], ["--alpha 0", "more than 0", "all black"]),  # were all-black maps
        ([*FUSE, "-o", "F.png", "--alpha", "nan"], ["--alpha: must be a finite number, got nan"]),
        # wrote two empty patch sets, exit 0; only train refused them ("the train split is empty")
        (["patches", "afile", "-o", "p0", "--per-pair", "0", "--boundary-per-pair", "0"],
         ["--per-pair: must be at least 1, got 0"]),
        # inf was taken: inf * 0 = NaN in the difference maps, cast to uint8 (numpy's warnings)
        ([*FUSE, "-o", "F.png", "--alpha", "inf"], ["--alpha: must be a finite number, got inf"]),
        # 1e308 * |B - F| overflowed (numpy RuntimeWarning); above 255 every map is the one of 255
        ([*FUSE, "-o", "F.png", "--alpha", "1e308"], ["--alpha 1e+308", "at most 255", "white already"]),
        (["fuse-set", "--pairs", ".", "--models", "nets", "--out", "fs", "--alpha", "256"], ["--alpha 256", "at most 255"]),
        ([*FUSE, "-o", "F.png", "--diff-cmap", "jte"], ["--diff-cmap: 'jte' is not a matplotlib colour map",
                                                        "did you mean jet?", "magma"]),
        (["fuse-set", "--pairs", ".", "--models", "nets", "--out", "fs", "--diff-cmap", "rainbowz"],
         ["--diff-cmap: 'rainbowz' is not a matplotlib colour map", "magma, inferno, viridis"]),
        # the nets' options without a net method: ignored in silence
        (["evaluate", "--out", "ev", "--methods", "GFF-native", "--models", "nets"],
         ["--models: the nets of Ours and Ours-initial", "--methods GFF-native evaluates neither"]),
        (["evaluate", "--out", "ev", "--methods", "Laplacian,GFF-native", "--initial", "nets/initial.pt",
          "--boundary", "nets/boundary.pt", "--device", "cpu"],
         ["--initial, --boundary: the nets", "leave --initial, --boundary out"]),
        (["fuse-set", "--pairs", ".", "--models", "nets", "--out", "fs", "--alpha=-inf"],
         ["--alpha: must be a finite number, got -inf"]),
        (["fuse-dir", ".", "out", "--model", "nets", "--threads", "-1"], ["--threads -1"]),
        (["fuse-dir", ".", "out", "--model", "nets", "--alpha", "3"], ["unrecognized arguments: --alpha"]),  # no maps
        (["fuse-dir", ".", "out", "--model", "nets", "--diff-cmap", "jet"], ["unrecognized arguments: --diff-cmap"]),
        (["baseline", "a.png", "b.png", "-o", "afile/F.png"], ["afile is a file, not a folder"]),
        (["baseline", "a.png", "b.png", "-o", "/proc/F.png"], ["cannot write in /proc"]),
        (["baseline", "a.png", "missing.png", "-o", "F.png"], ["missing.png"]),
        (["fuse-set", "--pairs", ".", "--models", "nets", "--out", "afile"], ["afile: is a file, not a folder"]),
        (["fuse-set", "--pairs", ".", "--models", "nets", "--out", "."], ["is also an input"]),
        (["evaluate", "--out", "."], ["holds the working directory"]),
        (["evaluate", "--out", "afile/x"], ["afile is a file, not a folder"]),
        (["evaluate", "--out", "ev", "--threads", "-3"], ["--threads -3", "positive number"]),
        ([*FUSE, "-o", "F.png", "--threshold", "nan"], ["fuse.threshold: NaN is not a number"]),  # passed every bound
        ([*FUSE, "-o", "F.png", "--min-region", "nan"], ["fuse.min_region: NaN is not a number"]),
        ([*FUSE, "-o", "F.png", "--params-json", '{"scales": [1, NaN]}'], ["fuse.scales[1]: NaN is not a number"]),
        ([*FUSE, "-o", "F.png", "--dense-margin", "100000"], ["fuse.dense_margin: 100000", "from 0 to 256"]),
        (["evaluate", "--out", "ev", "--pattern", "g*"], ["--pattern works with --dataset"]),
        # a second --dataset replaced the first: only the last dataset was evaluated (exit 0)
        (["evaluate", "--out", "ev", "--dataset", "x=a", "--dataset", "y=b"],
         ["--dataset given twice (x=a and y=b)", "one --dataset a run"]),
        # thread counts above the schema's maximum crashed torch.set_num_threads ("Overflow when unpacking long")
        ([*FUSE, "-o", "F.png", "--threads", "1000000000000"], ["--threads 1000000000000", "at most 1024"]),
        (["fuse-dir", ".", "out", "--model", "nets", "--threads", "2000"], ["--threads 2000", "at most 1024"]),
        (["evaluate", "--out", "ev", "--threads", "1000000000000"], ["--threads 1000000000000", "at most 1024"]),
        (["train", "--net", "initial", "--patches", "p.h5", "--out", "m.pt", "--threads", "1000000000000"],
         ["--threads 1000000000000", "at most 1024"]),
        (["train", "--net", "initial", "--patches", "p.h5", "--out", "afile/m.pt"], ["afile is a file"]),
        (["train", "--net", "initial", "--patches", "p.h5", "--out", "m.pt", "--device", "mps"], ["MPS"]),
        (["train", "--net", "initial", "--patches", "p.h5", "--out", "m.pt", "--threads", "-3"], ["--threads -3"]),
        (["metrics", "a.png", "b.png", "missing.png"], ["missing.png"]),
        (["metrics", "a.png", "b.png", "a.png", "--metrics", "QX"], ["unknown metric 'QX'"]),
        (["metrics", "a.png", "b.png", "a.png", "--metrics", ""], ["--metrics: no metric named"]),  # was: all eight
        (["prepare", "--out", "afile"], ["afile: is a file, not a folder"]),
        # counts of prepare: a negative one was "foregrounds: holdout and limit must be >= 0" (no
        # option named), after the run had started; --min-background-side -5 was taken (0 = all
        # stays the limits' meaning)
        (["prepare", "--out", "pp", "--foregrounds", "-1"], ["--foregrounds", "must be 0 or more, got -1"]),
        (["prepare", "--out", "pp", "--backgrounds", "-2"], ["--backgrounds", "must be 0 or more, got -2"]),
        (["prepare", "--out", "pp", "--holdout-foregrounds", "-1"], ["--holdout-foregrounds", "must be 0 or more"]),
        (["prepare", "--out", "pp", "--holdout-backgrounds", "-1"], ["--holdout-backgrounds", "must be 0 or more"]),
        (["prepare", "--out", "pp", "--min-background-side", "0"], ["--min-background-side", "must be at least 1"]),
        (["prepare", "--out", "pp", "--foregrounds", "x"], ["--foregrounds", "not an integer: 'x'"]),
        (["patches", "a.png", "--out", "afile"], ["is a file, not a folder"]),
        (["patches", "a.png", "--out", "p", "--threads", "0"], ["--threads 0: give a positive number of CPU threads"]),
        (["patches", "a.png", "--out", "p", "--patch", "30"], ["patch must be a multiple of 4 >= 8", "30"]),
        (["patches", "a.png", "--out", "p", "--patch", "4"], ["patch must be a multiple of 4 >= 8", "got 4"]),
        (["patches", "a.png", "--out", "p", "--label-threshold", "2"], ["label_threshold", "[0, 1]", "2"]),
        (["download-eval", "--out", "/proc/eval"], ["cannot write in /proc"]),
        (["download-record", "--source", "web", "--out", "afile/r.json"], ["afile is a file"]),
        # the record written over a file of a folder it describes (exit 0); a file said to be no folder
        (["download-record", "--source", "web", "--out", "nets/initial.pt", "m=nets"],
         ["nets/initial.pt: the --out file lies inside a FOLDER argument nets"]),
        (["download-record", "--source", "web", "--out", "./nets/new/r.json", "nets"], ["inside a FOLDER argument"]),
        (["download-record", "--source", "web", "--out", "r.json", "a=afile"], ["afile: is a file, not a folder"]),
        # numeric options of download-*: refused before any work (were tracebacks or taken as 1)
        (["download-eval", "--out", "ev", "--sets", "classic", "--timeout", "inf"], ["--timeout", "inf"]),
        (["download-eval", "--out", "ev", "--sets", "classic", "--timeout", "nan"], ["--timeout", "nan"]),
        (["download-eval", "--out", "ev", "--sets", "classic", "--timeout", "-5"], ["--timeout", "-5"]),
        (["download-eval", "--out", "ev", "--timeout", "0"], ["--timeout", "0"]),
        (["download-eval", "--out", "ev", "--backoff", "nan"], ["--backoff", "nan"]),
        (["download-eval", "--out", "ev", "--backoff", "-1"], ["--backoff", "-1"]),
        (["download-eval", "--out", "ev", "--workers", "0"], ["--workers", "must be at least 1"]),
        (["download-eval", "--out", "ev", "--workers", "-3"], ["--workers", "must be at least 1"]),
        (["download-eval", "--out", "ev", "--retries", "-1"], ["--retries", "-1"]),
        (["download-coco", "--out", "co", "--count", "2", "--oversample", "nan"], ["--oversample", "nan"]),
        (["download-coco", "--out", "co", "--count", "2", "--oversample", "0.5"], ["--oversample", "0.5"]),
        (["download-coco", "--out", "co", "--count", "0"], ["--count", "must be at least 1"]),
        (["download-coco", "--out", "co", "--count", "2", "--min-side", "-1"], ["--min-side", "-1"]),
        (["download-coco", "--out", "co", "--count", "2", "--min-sharpness", "inf"], ["--min-sharpness", "inf"]),
        (["download-coco", "--out", "co", "--count", "2", "--max-failures", "-1"], ["--max-failures", "-1"]),
        (["download-coco", "--out", "co", "--count", "2", "--seed", "-1"], ["--seed", "-1"]),
        # an empty path or list is refused, not taken as "not given" or as "."
        (["prepare", "--out", "", "--foregrounds", "1", "--backgrounds", "1"], ["--out: empty path"]),
        (["preset", "paper", "--apply", ""], ["--apply: empty path"]),
        (["download-eval", "--out", ""], ["--out: empty path"]),
        (["download-eval", "--out", "ev", "--sets", ""], ["--sets: empty list"]),
        (["evaluate", "--out", "ev", "--metrics", ""], ["--metrics: empty list"]),
        (["evaluate", "--out", "ev", "--methods", " , "], ["--methods: empty list"]),
        (["evaluate", "--out", "ev", "--params-json", ""], ["--params-json: empty JSON"]),
        (["evaluate", "--out", "ev", "--fuse-json", " "], ["--fuse-json: empty JSON"]),
        (["evaluate", "--out", "ev", "--params-file", ""], ["--params-file: empty path"]),
        (["download-eval", "--out", "ev", "--sets", " , "], ["--sets: empty list"]),
        (["download-coco", "--out", "", "--count", "2"], ["--out: empty path"]),
        (["download-alphamatting", "--out", ""], ["--out: empty path"]),
        (["download-record", "--source", "web", "--out", ""], ["--out: empty path"]),
        ([*FUSE, "-o", ""], ["-o/--output/--out: empty path"]),  # was: named the path "."
        (["fuse-dir", "", "out"], ["IN: empty path"]),  # was: ".: no pair or stack to fuse"
        (["fuse-dir", ".", ""], ["OUT: empty path"]),  # was: ".: the output folder must not be the input folder"
        (["baseline", "a.png", "b.png", "-o", ""], ["-o/--output/--out: empty path"]),  # was: ".: unknown image format"
        ([*FUSE, "-o", "F.png", "--save-maps", ""], ["--save-maps: empty path"]),  # was: no maps written
        # the model folder and net files: were read as the working directory ("initial.pt: model file not found")
        ([*FUSE, "-o", "F.png", "--model", ""], ["--model/--models: empty path"]),
        ([*FUSE, "-o", "F.png", "--initial", " ", "--boundary", "b.pt"], ["--initial: empty path"]),
        ([*FUSE, "-o", "F.png", "--initial", "i.pt", "--boundary", ""], ["--boundary: empty path"]),
        (["fuse-dir", ".", "out", "--models", ""], ["--model/--models: empty path"]),
        (["fuse-set", "--pairs", ".", "--models", "", "--out", "fs"], ["--model/--models: empty path"]),
        (["evaluate", "--out", "ev", "--models", ""], ["--model/--models: empty path"]),
        (["evaluate", "--out", "ev", "--initial", "", "--boundary", "b.pt"], ["--initial: empty path"]),
        # read as the working directory (fuse-set "index.json: pair index not found", evaluate's --root) or as
        # not given (--dataset: every configured dataset evaluated; --pattern: every pair; --figure-pair: the first)
        (["fuse-set", "--pairs", "", "--out", "fs"], ["--pairs: empty path"]),
        (["evaluate", "--out", "ev", "--root", " "], ["--root: empty path"]),
        (["evaluate", "--out", "ev", "--dataset", ""], ["--dataset: empty value"]),
        (["evaluate", "--out", "ev", "--dataset", "x=s", "--pattern", ""], ["--pattern: empty value"]),
        (["evaluate", "--out", "ev", "--dataset", "x=s", "--figure-pair", " "], ["--figure-pair: empty value"]),
        ([*FUSE, "-o", "F.png", "--params-file", ""], ["--params-file: empty path"]),
        ([*FUSE, "-o", "F.png", "--params-json", ""], ["--params-json: empty JSON"]),  # was: not given
        (["fuse-set", "--pairs", ".", "--models", "nets", "--out", "fs", "--params-json", " "], ["--params-json: empty JSON"]),
        (["train", "--net", "initial", "--params-json", ""], ["--params-json: empty JSON"]),
        (["train", "--net", "initial", "--params", ""], ["--params: empty path"]),
        (["count", "--params", ""], ["--params: empty path"]),  # was: ".: params file is not a file"
        ([*FUSE, "-o", "F.png", "--scales", ""], ["--scales: empty list"]),
        (["fuse-set", "--pairs", ".", "--models", "nets", "--out", ""], ["--out: empty path"]),
        (["fuse-set", "--pairs", ".", "--models", "nets", "--out", "fs", "--report", ""], ["--report: empty path"]),
        # were a traceback ("PosixPath('.') has an empty name"), ./initial.h5 written into the working
        # directory, or the option taken as not given (no summary, report or plots; the default folder)
        (["composite", "--prepared", "prep", "--shard", "0", "--shards", "1", "--out", ""], ["--out: empty path"]),
        (["composite-index", "a.png", "--out", ""], ["--out: empty path"]),
        (["testset", "--prepared", "prep", "--out", ""], ["--out: empty path"]),
        (["patches", "a.png", "--out", ""], ["--out: empty path"]),
        (["patches", "a.png", "--out", "p", "--summary", ""], ["--summary: empty path"]),
        (["evaluate", "--out", ""], ["--out: empty path"]),
        (["evaluate", "--out", "ev", "--report", ""], ["--report: empty path"]),
        (["evaluate", "--out", "ev", "--plots", ""], ["--plots: empty path"]),
        (["train", "--net", "initial", "--patches", "p.h5", "--out", ""], ["--out: empty path"]),
        (["train", "--net", "initial", "--patches", "p.h5", "--out", "m.pt", "--metrics", ""], ["--metrics: empty path"]),
        (["train", "--net", "initial", "--patches", "p.h5", "--out", "m.pt", "--plots", ""], ["--plots: empty path"]),
        (["train", "--net", "initial", "--patches", "p.h5", "--out", "m.pt", "--checkpoints", ""],
         ["--checkpoints: empty path"]),
        (["ensemble", "nets/initial.pt", "nets/initial.pt", "--out", ""], ["--out: empty path"]),
        # taken as not given (fuse.device / evaluate.device used), or "--device : not a device" (train)
        ([*FUSE[:-1], "", "-o", "F.png"], ["--device: empty value"]),
        (["fuse-set", "--pairs", ".", "--models", "nets", "--out", "fs", "--device", " "], ["--device: empty value"]),
        (["fuse-dir", ".", "out", "--model", "nets", "--device", ""], ["--device: empty value"]),
        (["evaluate", "--out", "ev", "--device", ""], ["--device: empty value"]),
        (["train", "--net", "initial", "--patches", "p.h5", "--out", "m.pt", "--device", ""], ["--device: empty value"]),
    ],
)
def test_every_command_refuses_bad_input_in_one_line(work: Path, capsys, monkeypatch, argv, words) -> None:
    monkeypatch.setattr(fusion_models, "default_model_dirs", lambda: [work / "none"])
    if "nopairs" in argv:
        _no_pairs(work)
    _refused(argv, capsys, work, *words)


def test_evaluate_says_the_nets_options_are_not_used_when_the_parameters_choose_no_net_method(
        work: Path, capsys) -> None:
    """With evaluate.methods from the parameters (the pipeline's evaluate stage always passes
    --initial and --boundary), the nets' options and no Ours method are not refused: a note says
    they are not used (they were ignored in silence). Here the run goes on to the dataset."""
    try:
        rc = cli_main(["evaluate", "--out", "ev", "--dataset", "tiny=.", "--params-json", '{"methods": ["Laplacian"]}',
                       "--initial", "nets/initial.pt", "--boundary", "nets/boundary.pt", "--metrics", "QG"])
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and "dataset 'tiny': no pairs" in err, err  # past the nets' options, to the dataset
    assert ("bafusion evaluate: note: --initial, --boundary not used: the methods evaluated (Laplacian) include "
            "neither Ours nor Ours-initial") in err, err


@pytest.mark.parametrize("methods", [["--methods", "Laplacian"], ["--params-json", '{"methods": ["Laplacian"]}']])
def test_evaluate_says_the_device_is_not_used_when_no_net_method_is_evaluated(work: Path, capsys,
                                                                               methods: list[str]) -> None:
    """`evaluate --device cuda` evaluating no Ours method was refused on a machine without CUDA
    ("CUDA is not available") and ignored in silence on one with it, while --initial/--boundary
    were refused or noted. A note now says it is not used (not refused: scripts pass --device
    whatever the methods); the run goes on to the dataset. (This machine may have CUDA or not.)"""
    try:
        rc = cli_main(["evaluate", "--out", "ev", "--dataset", "tiny=.", *methods, "--device", "cuda",
                       "--metrics", "QG"])
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and "dataset 'tiny': no pairs" in err, err  # past the nets' options, to the dataset
    assert ("bafusion evaluate: note: --device cuda not used: the methods evaluated (Laplacian) include "
            "neither Ours nor Ours-initial") in err, err


def test_evaluate_still_refuses_a_bad_device_for_the_nets(work: Path, capsys) -> None:
    """The device evaluate's nets run on is checked by evaluate (no longer by the preflight, which
    refused it also when no net method ran): a bad --device with Ours is refused, naming it."""
    _evd(work)
    rc = cli_main(["evaluate", "--dataset", "x=evd", "--out", "ev4", "--methods", "Ours", "--metrics", "QG",
                   "--device", "gpu0"])
    err = capsys.readouterr().err
    assert rc == 2 and err == "bafusion evaluate: error: --device gpu0: not a device (use auto, cpu, cuda, cuda:N or mps)\n", err
    assert not (work / "ev4").exists()


@pytest.mark.parametrize("text, where", [
    ("l: 4\nthreshold: 0.9\n", "l, threshold at the top level, and no 'fuse' section"),
    ("fuse:\nl: 4\n", "l at the top level, and an empty 'fuse' section"),
    ("fuse:\n  tile: 64\nlow: 0.2\nseed: 1\n", "low at the top level, beside the 'fuse' section"),
])
def test_params_file_with_rule_fields_at_its_top_level_is_refused_as_from_params_refuses_it(
        work: Path, capsys, monkeypatch, text: str, where: str) -> None:
    """``bafusion fuse --params-file p.yaml`` read only the file's ``fuse`` section: ``l: 4`` at its
    top level (or under an empty ``fuse:``) fused with l=8 in silence, exit 0, while
    FusionParams.from_params refuses that file. fuse, fuse-dir and fuse-set refuse it too, before
    any work, naming the file and the fields; the file's other sections and scalars are fine.
    ``bafusion evaluate --params-file``, which fuses with the file's ``fuse`` section, dropped
    them in silence too (exit 0) and refuses them likewise."""
    from bafusion.config import load_yaml
    from bafusion.errors import UserError
    from bafusion.fusion.params import FusionParams

    monkeypatch.setattr(fusion_models, "default_model_dirs", lambda: [work / "none"])
    (work / "p.yaml").write_text(text)
    with pytest.raises(UserError, match=rf"^p.yaml: {where}"):
        FusionParams.from_params(load_yaml(text), "p.yaml")
    for argv in ([*FUSE, "-o", "F.png"], ["fuse-dir", ".", "out", "--model", "nets", "--device", "cpu"],
                 ["fuse-set", "--pairs", ".", "--models", "nets", "--out", "fs"],
                 ["evaluate", "--dataset", "tiny=.", "--methods", "Ours", "--metrics", "QG", "--model", "nets",
                  "--device", "cpu", "--out", "ev"]):
        line = _refused([*argv, "--params-file", "p.yaml"], capsys, work, f"p.yaml: {where}")
        assert "put them under 'fuse:'" in line, line
    (work / "p.yaml").write_text("seed: 1\nfuse:\n  l: 4\ntrain:\n  epochs: 3\n")  # read as before
    from bafusion.cli.fusion import params_from_args
    from bafusion.cli.app import build_parser

    args = build_parser().parse_args([*FUSE, "-o", "F.png", "--params-file", "p.yaml"])
    assert params_from_args(args)[0].l == 4
    # evaluate reads that file too: past the check, to the dataset (here without pairs)
    _refused(["evaluate", "--dataset", "tiny=.", "--methods", "Ours", "--metrics", "QG", "--model", "nets",
              "--device", "cpu", "--out", "ev", "--params-file", "p.yaml"], capsys, work, "dataset 'tiny': no pairs")


@pytest.mark.parametrize("text, where", [
    ("device: cpu\n", "device at the top level, and no 'fuse' section"),
    ("fuse:\n  tile: 64\nthreads: 1\nalpha: 5\n", "threads, alpha at the top level, beside the 'fuse' section"),
])
def test_params_file_with_fuse_settings_at_its_top_level_is_refused(work: Path, capsys, monkeypatch, text: str,
                                                                     where: str) -> None:
    """``device: cpu`` or ``threads: 1`` at a --params-file's top level was dropped in silence (the
    nets ran on fuse.device's default, exit 0), where the rule's fields there are refused:
    fuse, fuse-dir and fuse-set refuse them too, saying that they belong in the 'fuse' section.
    evaluate refuses them as its own section's (its message names 'evaluate:')."""
    monkeypatch.setattr(fusion_models, "default_model_dirs", lambda: [work / "none"])
    (work / "p.yaml").write_text(text)
    for argv in ([*FUSE, "-o", "F.png"], ["fuse-dir", ".", "out", "--model", "nets", "--device", "cpu"],
                 ["fuse-set", "--pairs", ".", "--models", "nets", "--out", "fs"]):
        line = _refused([*argv, "--params-file", "p.yaml"], capsys, work, f"p.yaml: {where}")
        assert line.endswith("read from the 'fuse' section only: put them there") or \
            line.endswith("read from the 'fuse' section only: put it there"), line
    line = _refused(["evaluate", "--dataset", "tiny=.", "--methods", "Ours", "--metrics", "QG", "--model", "nets",
                     "--device", "cpu", "--out", "ev", "--params-file", "p.yaml"], capsys, work, "p.yaml: ")
    assert "put them under 'evaluate:'" in line, line


@pytest.mark.parametrize("text, where", [("methods: [Ours]\nmetrics: [QG]\n", "methods, metrics at the top level, and no 'evaluate' section"),
                                         ("evaluate:\nmethods: [Ours]\n", "methods at the top level, and an empty 'evaluate' section"),
                                         ("evaluate: {alpha: 5}\nthreads: 1\n", "threads at the top level, beside the 'evaluate' section")])
def test_evaluate_params_file_with_evaluate_fields_at_its_top_level_is_refused(work: Path, capsys, text: str,
                                                                                 where: str) -> None:
    """``bafusion evaluate --params-file p.yaml`` reads the file's ``evaluate`` and ``fuse``
    sections: ``methods: [Ours]`` at its top level (or under an empty ``evaluate:``) ran every
    default method in silence, exit 0. It is refused before any work, naming the file and the
    fields; the same fields under ``evaluate:`` are read as before."""
    (work / "p.yaml").write_text(text)
    argv = ["evaluate", "--dataset", "tiny=.", "--model", "nets", "--device", "cpu", "--out", "ev"]
    line = _refused([*argv, "--params-file", "p.yaml"], capsys, work, f"p.yaml: {where}")
    assert "put them under 'evaluate:'" in line, line
    (work / "p.yaml").write_text("seed: 1\nevaluate:\n  methods: [Ours]\n  metrics: [QG]\n")  # read as before
    _refused([*argv, "--params-file", "p.yaml"], capsys, work, "dataset 'tiny': no pairs")


@pytest.mark.parametrize("flag, progress", [([], None), (["--no-progress"], False), (["--quiet"], False)])
def test_evaluate_takes_no_progress_as_the_other_commands_do(work: Path, monkeypatch, flag: list[str],
                                                             progress: bool | None) -> None:
    """``bafusion evaluate`` fuses camera-size pairs with the fusion's progress bar on a terminal,
    but refused ``--no-progress`` ("unrecognized arguments") although the README says every
    command that shows bars takes it: it now reaches our fusion as ``progress=False`` (``--quiet``
    alike); without it, the fusion's default (None: a bar on a terminal, for large pairs)."""
    import bafusion.fusion.rule as rule

    class Reached(Exception):  # stops the command where our fusion starts
        pass

    seen: list[object] = []

    def fuse_images(*args: object, progress: object = "absent", **kwargs: object) -> None:
        seen.append(progress)
        raise Reached

    monkeypatch.setattr(rule, "_fuse_pair", fuse_images)
    (work / "ds").mkdir()
    for s in "ab":
        (work / "ds" / f"p-{s.upper()}.png").write_bytes((work / f"{s}.png").read_bytes())
    rc = cli_main(["evaluate", "--dataset", "tiny=ds", "--methods", "Ours", "--metrics", "QG", "--model", "nets",
                   "--device", "cpu", "--out", "ev", *flag])  # stopped in our fusion: the internal-error exit
    assert rc != 0 and seen == [progress], (rc, seen)


def test_evaluate_without_threads_takes_the_free_cores_as_fuse_does(work: Path, monkeypatch) -> None:
    """``bafusion evaluate`` without --threads (evaluate.threads 0, as the pipeline's evaluate now
    runs it for 0: Snakemake sets torch's threads to the job's, all of --cores) took torch's
    threads whatever the load, where fuse lowers them to the free cores: on 2 cores at a load of
    12, a 520x520 fusion took 20-30 s on 2 threads against 2.4-2.7 s on 1. It now lowers them as
    fuse does; --threads N is N."""
    import torch

    import bafusion.fusion.rule as rule
    import bafusion.threads

    class Reached(Exception):  # stops the command where our fusion starts
        pass

    seen: list[int] = []

    def fuse_pair(*args: object, **kwargs: object) -> None:
        seen.append(torch.get_num_threads())
        raise Reached

    monkeypatch.setattr(rule, "_fuse_pair", fuse_pair)
    monkeypatch.setattr(bafusion.threads, "auto_threads", lambda: 1)  # a loaded machine
    (work / "ds").mkdir()
    for s in "ab":
        (work / "ds" / f"p-{s.upper()}.png").write_bytes((work / f"{s}.png").read_bytes())
    argv = ["evaluate", "--dataset", "tiny=ds", "--methods", "Ours", "--metrics", "QG", "--model", "nets",
            "--device", "cpu", "--out", "ev", "--no-progress"]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert cli_main(argv) != 0  # stopped in our fusion
        torch.set_num_threads(2)
        assert cli_main([*argv, "--threads", "2"]) != 0
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 2], seen


def test_metrics_on_images_too_small_names_the_files(work: Path, capsys) -> None:
    # QY's 11x11 window: the one line said "QY needs images of at least 11x11 pixels" and no file.
    rng = np.random.default_rng(1)
    for name in ("sa.png", "sb.png", "sf.png"):
        Image.fromarray(rng.integers(0, 256, (10, 10), dtype=np.uint8)).save(work / name)
    _refused(["metrics", "sa.png", "sb.png", "sf.png", "--metrics", "QY"], capsys, work,
             "sa.png, sb.png, sf.png", "QY needs images of at least 11x11 pixels")


def test_metrics_default_set_on_small_images_names_the_metrics_that_fit(work: Path, capsys) -> None:
    # With the default eight, a 9x9 triple was refused for QY with no word that the other
    # metrics compute on it: the user had to find --metrics and the sizes by trial.
    rng = np.random.default_rng(1)
    for name in ("sa.png", "sb.png", "sf.png"):
        Image.fromarray(rng.integers(0, 256, (9, 9), dtype=np.uint8)).save(work / name)
    _refused(["metrics", "sa.png", "sb.png", "sf.png"], capsys, work,
             "QY needs images of at least 11x11", "--metrics QMI,QG,QCB,QNCIE,QP,QE,QCV compute on this size")
    assert cli_main(["metrics", "sa.png", "sb.png", "sf.png", "--metrics", "QMI,QG,QCB,QNCIE,QP,QE,QCV"]) == 0


def test_metrics_on_images_too_small_for_several_names_each_minimum(work: Path, capsys) -> None:
    # A 7x7 triple was refused for QY alone ("QY needs images of at least 11x11 pixels"): QE's 8x8
    # minimum was not said, so a user who then asked for QE was refused a second time.
    rng = np.random.default_rng(1)
    for name in ("sa.png", "sb.png", "sf.png"):
        Image.fromarray(rng.integers(0, 256, (7, 7), dtype=np.uint8)).save(work / name)
    _refused(["metrics", "sa.png", "sb.png", "sf.png"], capsys, work,
             "sa.png, sb.png, sf.png: QY needs images of at least 11x11 pixels and QE of at least 8x8, got 7x7 "
             "(of the default eight, --metrics QMI,QG,QCB,QNCIE,QP,QCV compute on this size)")
    _refused(["metrics", "sa.png", "sb.png", "sf.png", "--metrics", "QE,QG"], capsys, work,
             "sa.png, sb.png, sf.png: QE needs images of at least 8x8 pixels, got 7x7")
    assert cli_main(["metrics", "sa.png", "sb.png", "sf.png", "--metrics", "QMI,QG,QCB,QNCIE,QP,QCV"]) == 0


def test_an_existing_output_is_replaced_and_sources_kept(work: Path, capsys, monkeypatch) -> None:
    monkeypatch.undo()  # the real work this time
    monkeypatch.chdir(work)  # after undo(): a plain os.chdir left every later test of the session in this tmp folder
    (work / "F.png").write_bytes(b"old")
    src = {p: _digest(work / p) for p in ("a.png", "b.png")}
    rc = cli_main(["baseline", "a.png", "b.png", "-o", "F.png"])
    assert rc == 0, capsys.readouterr().err
    assert np.asarray(Image.open(work / "F.png")).shape == (24, 20)
    assert {p: _digest(work / p) for p in src} == src
    assert not list(work.glob("*.part")) and not list(work.glob(".*.part-*")) and not list(work.glob(".bafusion-probe-*"))


def test_maps_that_would_overwrite_a_source_are_refused(work: Path, capsys) -> None:
    Image.open(work / "a.png").save(work / "F-dm.png")
    _refused(["fuse", "F-dm.png", "b.png", "--model", "nets", "-o", "F.png", "--save-maps", "."], capsys, work,
             "F-dm.png", "map file is also an input")


def test_an_internal_error_keeps_its_traceback_and_says_so(work: Path, capsys, monkeypatch) -> None:
    def bug(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(fusion_rule, "fuse_stack", bug)
    rc = cli_main([*FUSE, "-o", "F.png"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "Traceback" in err and "ZeroDivisionError: boom" in err
    assert err.strip().splitlines()[-1].startswith("bafusion fuse: internal error (a bug in bafusion")
    assert not (work / "F.png").exists()


@pytest.mark.parametrize("oom", [MemoryError("Unable to allocate 37.5 GiB"), "torch"])
def test_out_of_memory_is_one_line_not_a_bug_report(work: Path, capsys, monkeypatch, oom) -> None:
    import torch

    error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20 GiB") if oom == "torch" else oom

    def short(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(fusion_rule, "fuse_stack", short)
    rc = cli_main([*FUSE, "-o", "F.png"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err and "a bug" not in err, err
    assert err.strip().startswith("bafusion fuse: error: out of memory (") and str(error) in err
    assert not (work / "F.png").exists()


def test_an_os_error_naming_a_file_is_one_line(work: Path, capsys, monkeypatch) -> None:
    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", "F.png.part")

    monkeypatch.setattr(fusion_rule, "fuse_stack", denied)
    _refused([*FUSE, "-o", "F.png"], capsys, work, "F.png.part: Permission denied")


def test_the_installed_command_prints_no_traceback(work: Path) -> None:
    """The same through a real process: ``python -m bafusion.cli``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    before = _digest(work / "a.png")
    r = subprocess.run([sys.executable, "-m", "bafusion.cli", *FUSE, "-o", str(work / "a.png")],
                       capture_output=True, text=True, env=env, cwd=work, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"bafusion fuse: error: {work / 'a.png'}: the output image is also an input (as a.png); "
        "inputs are never overwritten: choose another name"
    ]
    assert _digest(work / "a.png") == before


def test_a_fusion_warning_is_one_line_of_the_command(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``fuse --boundary-fine-step 8`` with nets of patch 12 (auto grid step 4): the fusion's
    warning (bafusion.fusion.scoring, as fuse.max_tile's) reached the command's stderr in
    Python's format, the module's path, line number and source line (``.../scoring.py:136:
    UserWarning: ...`` and ``_warn_once(f"...``); every other warning of a command is one line
    ``bafusion <cmd>: warning: ...``. A real process (pytest records warnings); in a caller's
    ``catch_warnings(record=True)`` the command's warning is still recorded, not printed."""
    import warnings

    from bafusion.fusion import rule, scoring

    options = ["--boundary-fine-step", "8", "--threads", "1"]
    argv = [*FUSE, "-o", "F.png", *options]
    env = {**os.environ, "PYTHONPATH": str(SRC), "BAFUSION_MLFLOW": "0"}
    r = subprocess.run([sys.executable, "-m", "bafusion", *argv], capture_output=True, text=True, env=env,
                       cwd=work, timeout=300)
    assert r.returncode == 0, r.stderr
    said = [line for line in r.stderr.splitlines() if "boundary_fine_step" in line]
    assert said == ["bafusion fuse: warning: fuse.boundary_fine_step: 8 is above the boundary net's grid step 4 "
                    "(fuse.boundary_step: 0, auto: half its patch 12): the adaptive mode runs it as 4, no "
                    "refinement; set boundary_fine_step below 4, or 0 (half the coarse step)"], r.stderr
    assert "UserWarning" not in r.stderr and "scoring.py" not in r.stderr and "_warn_once" not in r.stderr
    monkeypatch.setattr(rule, "fuse_stack", _FUSE_STACK)  # (the fixture's guard off: it fuses)
    monkeypatch.setattr(scoring, "_SAID", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli_main([*FUSE, "-o", "G.png", *options]) == 0
    assert [str(w.message) for w in caught if "boundary_fine_step" in str(w.message)] == [said[0].split("warning: ", 1)[1]]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "pickle"])
def test_a_damaged_model_file_is_named_without_torchs_unsafe_advice(work: Path, capsys, damage: str) -> None:
    import pickle

    p = work / "nets" / "boundary.pt"
    good = p.read_bytes()
    p.write_bytes({"garbage": b"not a model", "truncated": good[: len(good) // 2], "empty": b"",
                   "pickle": pickle.dumps(os.getcwd)}[damage])
    line = _refused([*FUSE, "-o", "F.png"], capsys, work, "nets/boundary.pt: unreadable model file",
                    "damaged, truncated or not written by bafusion")
    assert "weights_only" not in line and "train them with" not in line and "snakemake" not in line


@pytest.mark.parametrize("edit,words", [
    ({"arch": {"widths": [16, 32]}}, ["initial.json: arch.widths is [16, 32]", "3 positive integers"]),
    ({"arch": {"widths": [-16, 32, 64]}}, ["initial.json: arch.widths is [-16, 32, 64]", "3 positive integers"]),
    ({"arch": {"widths": [16, 32, 200000]}}, ["initial.json: arch.widths is [16, 32, 200000]", "at most"]),
    ({"arch": {"widths": [16, 32, 128]}}, ["initial.json: arch.widths [16, 32, 128] does not match the weights in",
                                           "initial.pt", "[16, 32, 64]"]),
    ({"arch": {"depth": 1200002}}, ["initial.json: arch.depth is 1200002", "at most"]),
    ({"arch": {"depth": 20.7}}, ["initial.json: arch.depth is 20.7", "integer"]),
    ({"arch": {"depth": True}}, ["initial.json: arch.depth is True", "integer"]),
    ({"arch": {"depth": 15}}, ["initial.json: arch.depth is 15", "6n+2"]),
    ({"arch": {"depth": 14}}, ["initial.json: arch.depth 14 does not match the weights in", "initial.pt", "depth 8"]),
    ({"patch": 1000000000}, ["initial.json: 'patch' is 1000000000", "at most"]),
    ({"patch": 32.9}, ["initial.json: 'patch' must be an integer, got 32.9"]),
], ids=["widths-two", "widths-negative", "widths-huge", "widths-other", "depth-huge", "depth-float", "depth-bool",
        "depth-not-6n2", "depth-other", "patch-huge", "patch-float"])
def test_a_hand_edited_model_description_is_refused_naming_the_field(work: Path, capsys, edit, words) -> None:
    """The arch of a model's .json built the net before the weights were compared: [16, 32]
    was a ValueError traceback, negative widths a RuntimeError, [16, 32, 200000] allocated
    1.4 TB, depth 1200002 hung building, patch 1e9 ran out of memory, 32.9 and 20.7 were
    silently truncated. Each is refused naming the .json and the field."""
    import json

    jp = work / "nets" / "initial.json"
    meta = json.loads(jp.read_text())
    for k, v in edit.items():
        if isinstance(v, dict):
            meta[k].update(v)
        else:
            meta[k] = v
    jp.write_text(json.dumps(meta))
    _refused([*FUSE, "-o", "F.png"], capsys, work, *words)


def test_swapped_nets_are_refused_by_their_role(work: Path, capsys) -> None:
    """The .json beside each net names its role: a boundary net given as --initial was fused
    with silently (exit 0, a different result)."""
    default = Path(bafusion_models_dir()) / "default"
    _refused(["fuse", "a.png", "b.png", "-o", "F.png", "--device", "cpu", "--initial", str(default / "boundary.pt"),
              "--boundary", str(default / "initial.pt")], capsys, work,
             "boundary.pt: is a boundary net (its boundary.json says so), given as the initial net",
             "swap the --initial and --boundary files")


def bafusion_models_dir() -> Path:
    from bafusion.fusion.models import PACKAGE_DIR

    return PACKAGE_DIR / "models"


def test_a_missing_model_file_says_how_to_get_one(work: Path, capsys) -> None:
    (work / "nets" / "boundary.pt").unlink()
    _refused([*FUSE, "-o", "F.png"], capsys, work, "nets/boundary.pt: model file not found", "snakemake")


def test_a_model_file_given_as_the_folder_is_named_a_file(work: Path, capsys) -> None:
    """``--model nets/initial.pt`` said "model folder not found": it is a file."""
    _refused(["fuse", "a.png", "b.png", "--model", "nets/initial.pt", "--device", "cpu", "-o", "F.png"], capsys,
             work, "nets/initial.pt: is a file, not a model folder", "--initial and --boundary")


@pytest.mark.parametrize("argv", [
    ["fuse", "a.png", "b.png", "-o", "F.png", "--device", "cpu"],
    ["fuse-dir", ".", "out", "--device", "cpu"],
    ["fuse-set", "--pairs", "nopairs", "--out", "fs", "--device", "cpu"],
    ["evaluate", "--dataset", "x=evd", "--out", "ev4", "--methods", "Ours", "--metrics", "QG", "--device", "cpu"],
])
@pytest.mark.parametrize(("model", "said"), [("--models", "no/such/folder"), ("--model", "nets")])
def test_net_files_and_a_model_folder_together_are_refused(work: Path, capsys, argv: list[str], model: str,
                                                           said: str) -> None:
    """--initial/--boundary silently won over --model/--models, even over a folder that does not
    exist: the user's model was not used, without a word (fuse-dir recorded nets not asked for)."""
    _evd(work)
    _no_pairs(work)
    default = Path(bafusion_models_dir()) / "default"
    # the option is named as typed: evaluate and fuse-set said --models to a user who typed --model
    _refused([*argv, "--initial", str(default / "initial.pt"), "--boundary", str(default / "boundary.pt"), model,
              said], capsys, work, f"--initial/--boundary and {model} {said} both name the nets")


def test_a_params_file_with_unknown_top_level_keys_is_refused_by_every_command(work: Path, capsys) -> None:
    """A file that is no params file (a test set's index.json: keys pairs, params) was refused
    by count and train, but fuse, fuse-dir, fuse-set and evaluate fused with the built-in
    defaults without a word: they read only their sections."""
    _evd(work)
    (work / "index.json").write_text('{"pairs": [], "params": {}}')
    for argv in ([*FUSE, "-o", "F.png"], ["fuse-dir", ".", "out", "--model", "nets", "--device", "cpu"],
                 ["fuse-set", "--pairs", ".", "--models", "nets", "--out", "fs"],
                 ["evaluate", "--dataset", "x=evd", "--methods", "Ours", "--metrics", "QG", "--model", "nets",
                  "--device", "cpu", "--out", "ev"], ["count"]):
        _refused([*argv, "--params-file", "index.json"], capsys, work,
                 "index.json: unknown keys pairs, params (known: seed, ")


def test_a_params_file_without_the_commands_section_is_noted(work: Path, capsys) -> None:
    """A params file without a fuse section (another step's) gave the built-in defaults in
    silence: one line says so. The project's params.yaml, all its sections, is read as before."""
    from bafusion.cli.app import build_parser
    from bafusion.cli.fusion import params_from_args

    (work / "onlytrain.yaml").write_text("train:\n  epochs: 3\n")
    args = build_parser("fuse").parse_args([*FUSE, "-o", "F.png", "--params-file", "onlytrain.yaml"])
    params_from_args(args)
    assert capsys.readouterr().err == ("bafusion fuse: note: onlytrain.yaml has no 'fuse' section: the built-in "
                                       "defaults apply\n")
    project = Path(__file__).resolve().parents[1] / "params.yaml"
    args = build_parser("fuse").parse_args([*FUSE, "-o", "F.png", "--params-file", str(project)])
    params_from_args(args)
    assert capsys.readouterr().err == ""


def test_evaluate_takes_metric_names_in_any_case_as_metrics_does(work: Path, capsys) -> None:
    """`bafusion metrics --metrics qmi,qg` worked while `bafusion evaluate --metrics qmi,qg` was
    refused ("'qmi', 'qg' are no metrics"); README says evaluate's are "as in bafusion metrics"."""
    _evd(work)
    _refused([*EVD, "--metrics", "qg,QG"], capsys, work, "--metrics qg,QG: 'QG' given twice")
    _refused([*EVD, "--metrics", "qg,qx"], capsys, work, "'qx' is no metric")
    rc = cli_main([*EVD, "--metrics", "qg,Qmi"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "x/g01-clock: Laplacian QG=" in out and " QMI=" in out, out


@pytest.mark.parametrize("b", ["a.png", "./a.png"])
def test_baseline_refuses_a_source_given_twice_as_fuse_does(work: Path, capsys, b: str) -> None:
    """`baseline a.png a.png` fused the shot with itself (exit 0, a copy), which fuse refuses."""
    _refused(["baseline", "a.png", b, "-o", "F.png"], capsys, work, "(sources 1 and 2): a shot fused with itself")


def test_a_size_error_says_an_exif_orientation_was_applied(work: Path, capsys) -> None:
    """A JPEG stored 24x20 with EXIF orientation 6 is read 20x24: "size 20x24 (WxH) differs
    from 24x20" puzzled a user checking the files; the error says what was applied."""
    exif = Image.Exif()
    exif[0x0112] = 6
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save("r.jpg", exif=exif.tobytes())
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save("s.png")
    _refused(["fuse", "r.jpg", "s.png", "--model", "nets", "--device", "cpu", "-o", "F.png"], capsys, work,
             "s.png: size 24x20 (WxH) differs from 20x24 of r.jpg",
             "r.jpg's EXIF orientation 6 was applied (the file stores 24x20)")


def test_train_without_params_says_params_yaml_is_not_read(work: Path, capsys, params_yaml_note: None) -> None:
    """A ./params.yaml beside a `bafusion train` without --params: a note says it is not read."""
    argv = ["train", "--net", "initial", "--patches", "missing.h5", "--out", "m.pt"]
    cli_main(argv)
    assert "params.yaml is not read" not in capsys.readouterr().err
    (work / "params.yaml").write_text("depth: 8\n")
    cli_main(argv)
    err = capsys.readouterr().err
    assert "no --params given" in err and "pass --params params.yaml" in err
    cli_main([*argv, "--params", "params.yaml"])
    assert "no --params given" not in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "given"), [
    (["fuse", "a.png", "a.png", "--model", "nets", "--device", "cpu", "-o", "F.png"], "--params-json"),
    (["fuse-set", "--pairs", "nope", "--models", "nets", "--out", "o"], "--params-file"),
    (["fuse-dir", "empty", "out", "--model", "nets", "--device", "cpu"], "--params-json"),
    (["evaluate", "--models", "nets", "--out", "e.json", "--dataset", "x=nope"], "--fuse-json"),
])
def test_fusion_without_params_file_says_params_yaml_is_not_read(work: Path, capsys, argv: list[str], given: str,
                                                                   params_yaml_note: None) -> None:
    """fuse, fuse-set, fuse-dir and evaluate read no ./params.yaml unless --params-file names it
    (its fuse.boundary_weight 1.0 gave other results than the built-in 0.75, silently): a note
    says so, as train's does; none with a params file or JSON (the pipeline's rules pass JSON)."""
    (work / "empty").mkdir()
    cli_main(argv)
    assert "params.yaml is not read" not in capsys.readouterr().err
    (work / "params.yaml").write_text("fuse:\n  boundary_weight: 1.0\n")
    cli_main(argv)
    err = capsys.readouterr().err
    assert f"bafusion {argv[0]}: note: no --params-file given" in err
    assert "pass --params-file params.yaml" in err
    cli_main([*argv, given, "params.yaml" if given == "--params-file" else "{}"])
    assert "params.yaml is not read" not in capsys.readouterr().err


@pytest.mark.parametrize("code", [28, 13, 30, 5])  # ENOSPC, EACCES, EROFS, EIO
def test_an_os_error_of_the_disk_without_a_file_name_is_one_line(work: Path, capsys, monkeypatch, code: int) -> None:
    """h5py's and Pillow's OSErrors name no file: the command's output is named."""
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(code, "Unable to synchronously write data (file write failed: errno = ...)")

    monkeypatch.setattr(fusion_rule, "fuse_stack", full)
    if code in (errno.EACCES, errno.EIO):  # an input's read fails so too: the output is not blamed
        said = f"bafusion fuse: error: {os.strerror(code)} (reading the inputs or writing F.png)"
    else:
        said = f"bafusion fuse: error: F.png: {os.strerror(code)}"
    _refused([*FUSE, "-o", "F.png"], capsys, work, said)


@pytest.mark.parametrize(("torch_says", "said"), [
    ("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598", "No space left on device"),
    ("[enforce fail at inline_container.cc:424] . open file failed with strerror: Permission denied",
     "Permission denied"),
])
def test_torch_failing_to_write_a_net_or_checkpoint_names_the_file(tmp_path: Path, monkeypatch, torch_says: str,
                                                                   said: str) -> None:
    import shutil
    from collections import namedtuple

    import torch

    from bafusion.nets.train import save_checkpoint

    def fails(obj: object, f: object) -> None:
        Path(f).write_bytes(b"half")  # type: ignore[arg-type]
        raise RuntimeError(torch_says)

    monkeypatch.setattr(torch, "save", fails)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: namedtuple("usage", "total used free")(1 << 30, 1 << 30, 0))
    for target, save in [(tmp_path / "m.pt", lambda p: save_model(build_model(8), p)),
                         (tmp_path / "ck" / "last.pt", lambda p: save_checkpoint(p, {"format": 1}))]:
        with pytest.raises(OSError) as e:
            save(target)
        assert e.value.filename == str(target) and e.value.strerror == said
        assert not list(target.parent.iterdir())


@pytest.mark.parametrize(("argv", "marker", "doc", "own"), [
    (["prepare", "--out", "mine"], "manifest.json", '{"foregrounds": []}', ["fg/", "matte/", "bg/"]),
    (["testset", "--prepared", "prep", "--out", "mine"], "index.json", '{"pairs": [{"name": "p"}]}',
     ["p-A.png", "p-B.png", "p-truth.png", "p-dm.png"]),
    (["evaluate", "--out", "mine"], "metrics.json", '{"lytro": {"pairs": 2}}', ["lytro/"]),
    (["fuse-set", "--pairs", "pairs", "--models", "nets", "--out", "mine"], "accuracy.json",
     '{"pairs": {"p": {}}}', ["p.png", "maps/"]),
    # the download commands deleted a folder of the user's files too (exit 0)
    (["download-alphamatting", "--out", "mine"], "download.json", '{"foregrounds": 3}', ["input/", "gt/"]),
    (["download-eval", "--out", "mine"], "download.json", '{"sets": ["lytro"], "folders": ["lytro"]}', ["lytro/"]),
    (["download-eval", "--out", "mine"], "download.json", '{"sets": ["x"], "folders": ["lytro", "classic"]}',
     ["lytro/", "classic/"]),
    (["download-coco", "--out", "mine", "--count", "2"], "selection.json", '{"kept": [{"file": "a.jpg"}]}',
     ["a.jpg"]),
])
def test_a_replaced_output_folder_holding_other_files_is_refused(work: Path, capsys, argv: list[str],
                                                                 marker: str, doc: str, own: list[str]) -> None:
    """These commands replace --out whole: a folder of the user's files was deleted silently.
    Only an empty folder or the command's own earlier output (its marker file, and only what
    the marker says the command wrote: a file the user left in an earlier output was deleted
    too) is replaced."""
    from bafusion.cli.app import build_parser
    from bafusion.preflight import check_command

    mine = work / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    _refused(argv, capsys, work, "mine: ", "no earlier output of this command", f"no {marker}",
             "remove the folder or choose another")
    args = build_parser(argv[0]).parse_args(argv)
    (mine / marker).write_text(doc)
    for name in own:
        (mine / name).mkdir() if name.endswith("/") else (mine / name).write_text("x")
    (mine / ".DS_Store").write_text("x")
    _refused(argv, capsys, work, "mine: ", "holds files this command did not write: notes.txt;",
             "move them away or choose another folder")
    for k in range(7):
        (mine / f"z{k}.txt").write_text("x")
    _refused(argv, capsys, work, "did not write: notes.txt, z0.txt, z1.txt, z2.txt, z3.txt and 3 more;")
    for p in mine.glob("*.txt"):
        p.unlink()
    check_command(args)  # an earlier output: replaced
    for p in mine.iterdir():
        p.rmdir() if p.is_dir() else p.unlink()
    check_command(args)  # empty
    (mine / marker).write_text("{}")
    (mine / "notes.txt").write_text("mine")
    if marker in ("accuracy.json", "index.json", "download.json", "selection.json"):  # a marker of a layout
        # not known: it vouches alone
        check_command(args)
    else:
        _refused(argv, capsys, work, "did not write: notes.txt;")


@pytest.mark.parametrize("argv, marker, doc, own, foreign", [
    (["prepare", "--out", "mine"], "manifest.json", '{"foregrounds": []}',
     ["fg/a.png", "matte/a.png", "bg/b.PNG"], ["fg/MY-NOTES.txt", "bg/sub/b.png"]),
    (["evaluate", "--out", "mine"], "metrics.json", '{"lytro": {"pairs": 2}}',
     ["lytro/metrics.csv", "lytro/means.csv", "lytro/means-sets.csv", "lytro/table1.md", "lytro/figures/fig4-p.png",
      "lytro/fused/Ours/p.png", "lytro/fused/Ours/p.jpg"], ["lytro/MY-ANALYSIS.md", "lytro/figures/x.jpg"]),
    (["fuse-set", "--pairs", "pairs", "--models", "nets", "--out", "mine"], "accuracy.json",
     '{"pairs": {"p": {}}}', ["p.png", "maps/p-dm.png", "maps/p-fig3.png"], ["maps/MY-NOTES.txt"]),
    (["download-alphamatting", "--out", "mine"], "download.json", '{"kind": "alphamatting", "foregrounds": 1}',
     ["input/GT01.png", "gt/GT01.png"], ["gt/notes.txt", "input/sub/GT02.png"]),
])
def test_a_replaced_output_folder_holding_other_files_in_its_sub_folders_is_refused(
        work: Path, capsys, argv: list[str], marker: str, doc: str, own: list[str], foreign: list[str]) -> None:
    """fuse-set/evaluate/prepare/download-alphamatting --out deleted the user's files inside the
    sub-folders of an earlier output (fs/maps/MY-NOTES.txt, out/lytro/MY-ANALYSIS.md, exit 0): only
    the top level was looked at. What each writes inside them is known: anything else is refused."""
    from bafusion.cli.app import build_parser
    from bafusion.preflight import check_command

    mine = work / "mine"
    mine.mkdir()
    (mine / marker).write_text(doc)
    for name in own:
        (mine / name).parent.mkdir(parents=True, exist_ok=True)
        (mine / name).write_text("x")
    (mine / own[-1]).with_name(".DS_Store").write_text("x")
    args = build_parser(argv[0]).parse_args(argv)
    check_command(args)  # an earlier output: replaced
    for name in foreign:
        (mine / name).parent.mkdir(parents=True, exist_ok=True)
        (mine / name).write_text("mine")
    _refused(argv, capsys, work, "mine: ", f"holds files this command did not write: {', '.join(sorted(foreign))};",
             "move them away or choose another folder")
    for name in foreign:
        (mine / name).unlink()
    check_command(args)


def test_a_reader_that_has_gone_is_not_a_bug(tmp_path: Path) -> None:
    """`bafusion count | head -3`: the closed pipe ended in a traceback and 'internal error (a bug
    in bafusion)'; now the command stops quietly with 141 (128 + SIGPIPE), as Unix tools do."""
    env = {**os.environ, "BAFUSION_MLFLOW": "0"}
    p = subprocess.Popen([sys.executable, "-m", "bafusion.cli", "count", "--preset", "paper"],
                         cwd=Path(__file__).resolve().parents[1], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()  # the reader is gone before the first line
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "internal error" not in err and "BrokenPipe" not in err, err


@pytest.mark.parametrize("seed", [str(2**63), str(2**64), "-1"])
@pytest.mark.parametrize("command", ["patches", "prepare", "download-coco"])
def test_a_seed_outside_params_yaml_range_is_refused_on_the_command_line(work: Path, capsys, seed: str,
                                                                          command: str) -> None:
    """params.yaml refuses a seed above 2^63 - 1 (an HDF5 attribute, torch generators), but
    ``bafusion patches --seed 9223372036854775808`` was taken: one line, exit 2, as params.yaml says it.
    ``download-coco --seed`` had no upper bound either."""
    from bafusion.cli.app import build_parser

    argv = {"patches": [command, "a.png", "--out", "p"], "download-coco": [command, "--out", "p", "--count", "1"]}.get(
        command, [command, "--out", "p"])
    _refused([*argv, "--seed", seed], capsys, work, "argument --seed", "from 0 to 2^63 - 1 = 9223372036854775807")
    assert build_parser(command).parse_args([*argv, "--seed", str(2**63 - 1)]).seed == 2**63 - 1


def _no_pairs(work: Path) -> None:
    """``nopairs/``: a test set whose index lists no pairs, for fuse-set's checks after its pairs'
    (the device, the nets), which it checks before them."""
    (work / "nopairs").mkdir()
    (work / "nopairs" / "index.json").write_text("[]")


def _evd(work: Path) -> None:
    """``evd/``: one pair ``g01-clock-A.png``, ``-B.png`` (a dataset for ``--dataset x=evd``)."""
    (work / "evd").mkdir()
    for k, src in (("A", "a.png"), ("B", "b.png")):
        (work / "evd" / f"g01-clock-{k}.png").write_bytes((work / src).read_bytes())


EVD = ["evaluate", "--dataset", "x=evd", "--out", "ev4", "--methods", "Laplacian"]


@pytest.mark.parametrize(
    "extra, words",
    [
        # the probe's: exit 0 and the source image overwritten with the JSON report
        (["--report", "evd/g01-clock-A.png"], ["evd/g01-clock-A.png", "the --report file is also an input"]),
        (["--plots", "./evd/g01-clock-B.png"], ["the --plots file is also an input"]),
        (["--report", "evd/report.json"], ["evd/report.json", "--report file", "inside", "dataset 'x'"]),
        # a file evaluate writes into --out: the CSV would replace its marker, or a dataset's table
        (["--plots", "ev4/metrics.json"], ["ev4/metrics.json", "--plots file", "a file evaluate writes"]),
        (["--report", "ev4/x/metrics.csv"], ["ev4/x/metrics.csv", "--report file", "the folder evaluate writes for dataset 'x'"]),
    ],
)
def test_evaluate_report_and_plots_never_overwrite_an_input_or_its_own_output(work: Path, capsys, extra, words) -> None:
    _evd(work)
    _refused([*EVD, *extra], capsys, work, *words)


@pytest.mark.parametrize("out", ["prep/manifest.json", "./prep/new.h5", "prep/fg/x.h5"])
def test_composite_never_writes_into_the_prepared_folder(work: Path, capsys, out: str) -> None:
    # the probe's: exit 0 and prep/manifest.json replaced with the HDF5 shard
    (work / "prep" / "fg").mkdir(parents=True)
    (work / "prep" / "manifest.json").write_text("{}\n")
    _refused(["composite", "--prepared", "prep", "--shard", "0", "--shards", "1", "--out", out], capsys, work,
             out, "--out file", "inside the --prepared folder prep")


@pytest.mark.parametrize("out", ["prep/ts", "./prep/fg/ts", "prep/fg"])
def test_testset_never_writes_into_the_prepared_folder(work: Path, capsys, out: str) -> None:
    """``testset --out prep/ts`` was taken: its folder inside --prepared, as composite's --out was."""
    (work / "prep" / "fg").mkdir(parents=True)
    (work / "prep" / "manifest.json").write_text('{"foregrounds": [], "backgrounds": []}\n')
    _refused(["testset", "--prepared", "prep", "--out", out], capsys, work,
             out, "--out folder", "inside the --prepared folder prep")


@pytest.mark.parametrize(("doc", "words"), [
    ("{}", ["missing key 'foregrounds'"]),
    ('{"foregrounds": []}', ["missing key 'backgrounds'"]),
    ('{"foregrounds": [{"id": "f"}], "backgrounds": []}', ["foregrounds[0] lacks key 'image'"]),
    ('{"foregrounds": {}, "backgrounds": []}', ["'foregrounds' must be a list of objects"]),
    ("[]", ["a JSON object"]),
    # hand-edited values: TypeError / h5py errors deep in composite before
    ('{"foregrounds": [{"id": "f", "image": null, "matte": "m.png"}], "backgrounds": []}',
     ["foregrounds[0]: 'image' must be a file name (a string), got None"]),
    ('{"foregrounds": [{"id": "f", "image": 5, "matte": "m.png"}], "backgrounds": []}',
     ["foregrounds[0]: 'image' must be a file name (a string), got 5"]),
    ('{"foregrounds": [{"id": [1], "image": "f.png", "matte": "m.png"}], "backgrounds": []}',
     ["foregrounds[0]: 'id' must be a non-empty string, got [1]"]),
    ('{"foregrounds": [], "backgrounds": [{"id": "b", "image": "b.png"}, {"id": "b", "image": "c.png"}]}',
     ["backgrounds[1]: id 'b' is also backgrounds[0]'s"]),
    ('{"foregrounds": [{"id": "f", "image": "f.png", "matte": "m.png", "split": 1}], "backgrounds": []}',
     ["foregrounds[0]: 'split' must be a string, got 1"]),
])
@pytest.mark.parametrize("command", ["composite", "testset"])
def test_a_manifest_without_its_keys_is_named_in_one_line(work: Path, capsys, doc: str, words: list[str],
                                                          command: str) -> None:
    """A prepared folder whose manifest.json is ``{}`` (valid JSON) gave a KeyError traceback."""
    (work / "prep").mkdir()
    (work / "prep" / "manifest.json").write_text(doc + "\n")
    argv = ["--shard", "0", "--shards", "1", "--out", "x.h5"] if command == "composite" else ["--out", "ts"]
    _refused([command, "--prepared", "prep", *argv], capsys, work, "prep/manifest.json: not a prepare manifest",
             "run the prepare step again", *words)


def test_composite_without_training_backgrounds_says_so(work: Path, capsys) -> None:
    """``"backgrounds": []`` with foregrounds to composite: an h5py chunk-shape error before."""
    (work / "prep" / "fg").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(work / "prep" / "fg" / "f.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(work / "prep" / "fg" / "m.png")
    (work / "prep" / "manifest.json").write_text(
        '{"foregrounds": [{"id": "f", "image": "fg/f.png", "matte": "fg/m.png", "split": "train"}], '
        '"backgrounds": [{"id": "b", "image": "fg/f.png", "split": "test"}]}\n')
    _refused(["composite", "--prepared", "prep", "--shard", "0", "--shards", "1", "--out", "x.h5"], capsys, work,
             "prep/manifest.json: no backgrounds of the train split", "composite needs at least one")


@pytest.mark.parametrize("report", ["T/index.json", "./T/p-A.png", "T/sub/p-B.png"])
def test_fuse_set_report_never_writes_into_the_pairs_folder(work: Path, capsys, report: str) -> None:
    # the probe's: exit 0 and the test set's index.json (or a source image) replaced with the report
    (work / "T" / "sub").mkdir(parents=True)
    (work / "T" / "index.json").write_text('{"pairs": ["p"]}\n')
    for k in "AB":
        (work / "T" / f"p-{k}.png").write_bytes((work / "a.png").read_bytes())
        (work / "T" / "sub" / f"p-{k}.png").write_bytes((work / "a.png").read_bytes())
    _refused(["fuse-set", "--pairs", "T", "--models", "nets", "--out", "FS", "--report", report], capsys, work,
             report, "--report file is a file of the --pairs folder T", "inputs are never overwritten")


@pytest.mark.parametrize(("out", "report"), [("FS", "T/new.json"), ("T/fused", "T/fused/acc.json"),
                                             ("FS", "T/sub/r.json")])
def test_fuse_set_report_may_be_a_new_file_in_the_pairs_folder(work: Path, out: str, report: str) -> None:
    # review: every report inside --pairs was refused, also a new file (nothing overwritten) and
    # one inside an --out that lies in --pairs (allowed)
    from bafusion.cli.app import build_parser
    from bafusion.preflight import check_command

    (work / "T" / "sub").mkdir(parents=True)
    (work / "T" / "index.json").write_text('{"pairs": ["p"]}\n')
    check_command(build_parser("fuse-set").parse_args(
        ["fuse-set", "--pairs", "T", "--models", "nets", "--out", out, "--report", report]))


@pytest.mark.parametrize("shard", ["sh/initial.h5", "sh/boundary.h5"])
def test_patches_never_overwrites_an_input_shard(work: Path, capsys, shard: str) -> None:
    # the probe's: exit 0 and the input shard sh/initial.h5 replaced with the patch set
    (work / "sh").mkdir()
    (work / shard).write_bytes(b"a shard")
    _refused(["patches", "--out", "sh", shard], capsys, work, shard, "is also an input")


def test_patches_summary_never_overwrites_the_patch_set(work: Path, capsys) -> None:
    (work / "sh").mkdir()
    (work / "sh" / "s.h5").write_bytes(b"a shard")
    _refused(["patches", "--out", "sh", "sh/s.h5", "--summary", "sh/initial.h5"], capsys, work,
             "sh/initial.h5", "--out folder's initial.h5", "--summary", "its own path")


def test_a_folder_given_as_the_patch_set_is_named_in_one_line(work: Path, capsys) -> None:
    """``train --patches FOLDER`` showed h5py's text (time, buffer address): one line now."""
    rc = cli_main(["train", "--net", "initial", "--patches", "nets", "--out", "m.pt", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.strip() == ("bafusion train: error: nets: is a folder, not a patch set file "
                           "(pass the .h5 file, e.g. data/patches/initial.h5)"), err


def test_every_option_of_every_command_has_help() -> None:
    """28 options (prepare --source, composite --shard, patches --per-pair, ...) had no help:
    `bafusion <cmd> --help` listed them bare. Every action but -h says what it is."""
    import argparse

    from bafusion.cli.app import build_parser

    subs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    bare = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, p in subs.choices.items()
            for a in p._actions if a.help is None and not isinstance(a, argparse._HelpAction)]
    assert len(subs.choices) > 15 and not bare, bare


@pytest.mark.parametrize(("argv", "said"), [
    (["fuse-set", "--pairs", "nopairs", "--models", "nomodels", "--out", "o", "--device", "cpu"], "--models DIR"),
    (["evaluate", "--dataset", "x=evd", "--out", "ev4", "--models", "nomodels", "--device", "cpu"], "--models DIR"),
    ([*FUSE[:3], "--model", "nomodels", "--device", "cpu", "-o", "F.png"], "--model DIR"),
])
def test_a_missing_model_folder_names_the_commands_own_option(work: Path, capsys, argv: list[str], said: str) -> None:
    """fuse-set and evaluate said "pass --model DIR", an option they do not have (theirs is --models)."""
    _evd(work)
    _no_pairs(work)
    err = _refused(argv, capsys, work, "nomodels: model folder not found", said)
    assert ("--model DIR" in err) == (said == "--model DIR")


@pytest.mark.parametrize(("argv", "option"), [
    (["evaluate", "--dataset", "x=evd", "--out", "ev4", "--models", "models/default", "--device", "cpu"], "--models"),
    (["fuse-set", "--pairs", "nopairs", "--models", "../models/default", "--out", "o", "--device", "cpu"], "--models"),
    ([*FUSE[:3], "--model", "models/lytro-2026-11", "--device", "cpu", "-o", "F.png"], "--model"),
])
def test_a_shipped_models_repository_path_outside_the_repository_points_at_its_name(
    work: Path, capsys, argv: list[str], option: str
) -> None:
    """README's `--models models/default`, run outside the repository root, said first "train
    them with `snakemake ...`"; it now says that the name alone uses the shipped model."""
    _evd(work)
    _no_pairs(work)
    name = Path(argv[argv.index(option) + 1]).name
    err = _refused(argv, capsys, work, "model folder not found (relative to the current folder, ",
                   f"{name!r} is a shipped model: pass {option} {name} to use it (from any folder)")
    assert err.index(f"{option} {name}") < err.index("train them")
    assert (option == "--model") == ("--models" not in err)


@pytest.mark.parametrize(("shard", "shards", "said"), [
    ("0", "0", "--shards 0: give the number of shards, at least 1"),
    ("0", "-2", "--shards -2: give the number of shards, at least 1"),
    ("3", "2", "--shard 3: give a shard from 0 to 1 (--shards 2"),
])
def test_composite_refuses_a_shard_count_below_one_clearly(work: Path, capsys, shard: str, shards: str,
                                                            said: str) -> None:
    """--shards 0 said "shard 0 is not in 0..-1"."""
    (work / "prep").mkdir()
    (work / "prep" / "manifest.json").write_text("{}\n")
    err = _refused(["composite", "--prepared", "prep", "--shard", shard, "--shards", shards, "--out", "s.h5"],
                   capsys, work, said)
    assert "0..-1" not in err


def test_prepare_source_dir_names_its_options(work: Path, capsys) -> None:
    """`prepare --source dir` without its folders named the params keys (data.dir.alphamatting),
    not the options the command line has."""
    _refused(["prepare", "--source", "dir", "--alphamatting", "afile", "--out", "pp"], capsys, work,
             "--source dir needs --backgrounds-dir")
    err = _refused(["prepare", "--source", "dir", "--out", "pp"], capsys, work,
                   "--source dir needs --alphamatting and --backgrounds-dir")
    assert "data.dir.alphamatting" in err  # ... and the params keys, for the pipeline's log


@pytest.mark.parametrize(("extra", "said"), [
    (["--alphamatting", "am"], "--alphamatting is used only with --source dir, not with --source builtin (the "
                               "default): add --source dir"),
    (["--source", "builtin", "--alphamatting", "am", "--backgrounds-dir", "bg"],
     "--alphamatting and --backgrounds-dir are used only with --source dir"),
    (["--source", "dir", "--alphamatting", "am", "--backgrounds-dir", "bg", "--builtin-foregrounds", "nope"],
     "--builtin-foregrounds is used only with --source builtin, not with --source dir: leave it out"),
])
def test_prepare_refuses_the_other_sources_options(work: Path, capsys, extra: list[str], said: str) -> None:
    """`prepare --alphamatting DIR` without --source dir composited scikit-image's photos, the
    folder ignored without a word (exit 0); --builtin-* with --source dir were ignored too."""
    (work / "am" / "input").mkdir(parents=True)
    (work / "am" / "gt").mkdir()
    (work / "bg").mkdir()
    _refused(["prepare", "--out", "pp", *extra], capsys, work, said)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
@pytest.mark.parametrize("command", ["count", "metrics", ""])
def test_a_full_standard_output_is_named(work: Path, command: str) -> None:
    """`bafusion count > /dev/full` said "error: No space left on device", not what it wrote;
    `bafusion --version > /dev/full` printed a traceback, status 1."""
    argv = ["count", "--params", str(Path(__file__).resolve().parents[1] / "params.yaml")] if command == "count" \
        else ["metrics", "a.png", "b.png", "a.png"] if command else ["--version"]
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "bafusion", *argv], stdout=full, stderr=subprocess.PIPE,
                           text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == (f"bafusion{' ' if command else ''}{command}: error: No space left on device (writing "
                                "the standard output)")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
@pytest.mark.parametrize("argv", [["--help"], ["count", "--help"], ["metrics", "-h"]])
def test_help_to_a_full_standard_output_is_an_error(work: Path, argv: list[str]) -> None:
    """`bafusion --help > /dev/full` (and a command's --help) exited 0 having written nothing:
    argparse ignores a failed write of the help. It is now said as for --version, status 2."""
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "bafusion", *argv], stdout=full, stderr=subprocess.PIPE,
                           text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
    assert r.returncode == 2, r.stderr
    cmd = " ".join(["bafusion", *argv[:-1]])
    assert r.stderr.strip() == f"{cmd}: error: No space left on device (writing the standard output)"


@pytest.mark.skipif(sys.platform == "win32", reason="closes fd 1 in the child (preexec_fn)")
@pytest.mark.parametrize("argv", [["--help"], ["count", "--help"], ["--version"]])
def test_help_with_the_standard_output_closed_goes_to_stderr(work: Path, argv: list[str]) -> None:
    """`bafusion --help >&-` ended in a traceback (AttributeError: 'NoneType' object has no
    attribute 'write', status 1): with stdout closed sys.stdout is None and so is the file argparse
    passes. The help goes to stderr, as argparse sent it before; --version's line too (it wrote
    nothing)."""
    r = subprocess.run([sys.executable, "-m", "bafusion", *argv], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True, preexec_fn=lambda: os.close(1),  # noqa: PLW1509 - a test's child only
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    if argv == ["--version"]:
        from bafusion._version import __version__

        assert r.stderr == f"bafusion {__version__}\n", r.stderr
    else:
        assert r.stderr.startswith(f"usage: {' '.join(['bafusion', *argv[:-1]])} "), r.stderr


_STOPPABLE = """
import signal, sys, time
from pathlib import Path
from bafusion import atomic
from bafusion.cli import app

def work(args):
    with atomic.atomic_dir(Path(sys.argv[1])) as tmp:
        (tmp / "half.txt").write_text("half")
        print("ready", flush=True)
        time.sleep(60)
    return 0

def parser(command=None):
    p = app.Parser(prog="bafusion")
    sub = p.add_subparsers(dest="command")
    sub.add_parser("evaluate").set_defaults(func=work)
    return p

app.build_parser = parser
signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as from a terminal, even when the tests run under nohup
sys.exit(app.main(["evaluate"]))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize(("signum", "status", "said"), [(1, 129, "hangup: stopped"), (15, 143, "terminated")])
def test_a_hangup_stops_the_command_as_sigterm_does(tmp_path: Path, signum: int, status: int, said: str) -> None:
    """SIGHUP (the terminal closed, ssh dropped) ended the command silently with 129, leaving
    the temporary folder of its output (and its MLflow run RUNNING): it now stops as SIGTERM
    does, finally blocks run, one line says so."""
    import signal

    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen([sys.executable, "-c", _STOPPABLE, str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.Signals(signum))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert err.strip().splitlines() == [f"bafusion evaluate: {said}"]
    assert list(tmp_path.iterdir()) == []  # neither the output nor its temporary folder


_SLOW_CLEANUP = """
import signal, sys, time
from pathlib import Path
from bafusion import atomic
from bafusion.cli import app

def work(args):
    out = Path(sys.argv[1])
    try:
        with atomic.atomic_dir(out / "result") as tmp:
            (tmp / "half.txt").write_text("half")
            print("ready", flush=True)
            time.sleep(60)
    except BaseException:
        print("cleaning", flush=True)  # as a stopped step's MLflow run is ended: a second or two under load
        time.sleep(3)
        (out / "run-ended").write_text("KILLED")
        raise
    return 0

def parser(command=None):
    p = app.Parser(prog="bafusion")
    sub = p.add_subparsers(dest="command")
    sub.add_parser("evaluate").set_defaults(func=work)
    return p

app.build_parser = parser
signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal, even from a background job
sys.exit(app.main(["evaluate"]))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("repeats", [1, 2])
def test_a_second_ctrl_c_while_the_command_cleans_up_is_held(tmp_path: Path, repeats: int) -> None:
    """A second Ctrl-C pressed while the command cleaned up after the first (an impatient
    double press) raised inside that cleanup: fuse-dir's MLflow run stayed RUNNING (found with
    two SIGINTs 0.02 s apart to `fuse-dir` with BAFUSION_MLFLOW=1). The first repeat is held,
    and a line says that the command is still stopping; a further one stops it at once."""
    import signal
    import time

    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_CLEANUP, str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    assert proc.stdout.readline().strip() == "cleaning"
    for _ in range(repeats):
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    held = ("bafusion evaluate: still stopping (cleaning up); press Ctrl-C again to stop at once, leaving what is "
            "not cleaned up to its next run")
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == [held, "bafusion evaluate: interrupted"], err
    # held: the cleanup ran to its end; stopped at once by a third Ctrl-C: it did not
    assert (tmp_path / "run-ended").exists() == (repeats == 1)
    assert not (tmp_path / "result").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_repeated_stop_of_a_train_worker_is_held_without_a_word(tmp_path: Path) -> None:
    """A worker of ``train --nproc N`` gets SIGTERM twice when SLURM (or systemd) stops the job:
    SLURM signals every process of the job, and the launcher sends the workers its own. The
    second is held, as the command's, but the worker does not say so (each of them printed
    'still stopping ...; send the signal again', and a worker ends without a word: the command
    speaks for it)."""
    import signal
    import time

    from bafusion.cli.app import TRAIN_LAUNCHER_ENV

    env = {**os.environ, "PYTHONPATH": str(SRC), TRAIN_LAUNCHER_ENV: str(os.getpid())}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_CLEANUP, str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout.readline().strip() == "cleaning"
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "still stopping" not in err, err
    assert (tmp_path / "run-ended").exists()  # held: the cleanup ran to its end
    assert not (tmp_path / "result").exists()


_LOST_STOP = """
import os, signal, sys, time
from bafusion.cli import app

class Lost:
    def __del__(self):  # as h5py's: the KeyboardInterrupt of a signal handled here is only printed, and lost
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)

def work(args):
    Lost()
    print("lost", flush=True)
    time.sleep(60)
    return 0

def parser(command=None):
    p = app.Parser(prog="bafusion")
    sub = p.add_subparsers(dest="command")
    sub.add_parser("evaluate").set_defaults(func=work)
    return p

app.build_parser = parser
signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal, even from a background job
sys.exit(app.main(["evaluate"]))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_ctrl_c_after_one_whose_stop_was_lost_is_not_held(tmp_path: Path) -> None:
    """A repeated Ctrl-C is held while the command cleans up after the first, but not when the
    first one's KeyboardInterrupt was lost (raised inside a ``__del__``): the command went on
    working, and the next Ctrl-C stops it."""
    import signal

    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen([sys.executable, "-c", _LOST_STOP], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "lost"
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert (proc.returncode, err.strip().splitlines()) == (130, ["bafusion evaluate: interrupted"]), err


def test_out_of_memory_advice_is_the_commands_own(work: Path, capsys, monkeypatch) -> None:
    """The advice "a smaller fuse.max_tile / train.batch" was given to every command: fuse has
    no such flag, train.batch is train's, and what fills the memory of a fusion is the
    full-size images. Each command now says what lowers its memory, and fuse what it needs."""
    import argparse

    from bafusion.cli import app

    def short(*args: object, **kwargs: object) -> None:
        raise MemoryError("Unable to allocate 275. MiB for an array with shape (3000, 4000, 3) and data type float64")

    monkeypatch.setattr(fusion_rule, "fuse_stack", short)
    assert cli_main([*FUSE, "-o", "F.png"]) == 1
    err = capsys.readouterr().err
    assert "train.batch" not in err and "max_tile /" not in err
    assert "-megapixel pair needs about" in err and "MiB per megapixel" in err and "--working-side 0" in err
    assert "train.batch" in app._memory_advice(argparse.Namespace(command="train"))
    assert "--pattern" in app._memory_advice(argparse.Namespace(command="evaluate"))


def test_evaluate_missing_reference_image_names_the_command_lines_methods(work: Path, capsys) -> None:
    """With --dataset NAME=PAIRS,REF the reference methods are REF's sub-folders, not the paper's six:
    the message listed '(default NSCT, SR, ...)' though those were never asked for: it names the
    methods the dataset reads."""
    _evd(work)
    (work / "ref" / "Mine").mkdir(parents=True)  # a method folder without the pair's image
    rc = cli_main(["evaluate", "--dataset", "x=evd,ref", "--out", "ev4", "--methods", "Laplacian", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2, err
    line = err.strip().splitlines()[-1]  # after the note naming the reference methods it found
    assert line.startswith("bafusion evaluate: error: ") and "Mine/g01-clock.*" in line, err
    assert "default NSCT" not in line and "reference_methods, here Mine," in line, line
    assert not (work / "ev4").exists()


def test_evaluate_figure_pair_outside_pattern_says_so(work: Path, capsys) -> None:
    """--figure-pair naming a pair that --pattern leaves out said only 'is not one of its pairs'."""
    _evd(work)
    for k, src in (("A", "a.png"), ("B", "b.png")):
        (work / "evd" / f"t01-leaf-{k}.png").write_bytes((work / src).read_bytes())
    _refused([*EVD, "--pattern", "g*", "--figure-pair", "t01-leaf"], capsys, work,
             "--figure-pair 't01-leaf'", "--pattern 'g*'", "g01-clock")


_SLOW_EXIT = """
import atexit, gc, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal, even from a background job
def slow_exit():  # as the exit handlers of MLflow and torch under load: seconds
    print("frozen" if gc.get_freeze_count() else "not frozen", flush=True)
    print("exiting", flush=True)
    time.sleep(60)
atexit.register(slow_exit)  # before the command's own: runs after them
from bafusion.cli import main
sys.exit(main())
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize(("signum", "status", "said"), [(15, 143, "terminated"), (2, 130, "interrupted")])
def test_a_signal_while_the_finished_command_exits_says_its_outputs_were_complete(
    tmp_path: Path, signum: int, status: int, said: str,
) -> None:
    """A signal after the command's last line, while Python exits (MLflow's, torch's teardown:
    seconds under load), ended it with -15 (-2) and no word: the handlers were given back in
    main's finally. One line says that it had finished and its outputs were complete; the status
    is 128 + N. The exit collects and freezes the garbage first (gc.freeze), so that the
    teardown of torch's and MLflow's modules is not walked again and again."""
    import signal

    rng = np.random.default_rng(0)
    for name in ("A.png", "B.png"):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / name)
    env = {**os.environ, "PYTHONPATH": str(SRC), "BAFUSION_MLFLOW": "0"}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_EXIT, "baseline", "--method", "laplacian", "-o", "F.png",
                             "A.png", "B.png"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout is not None
    lines = []
    while not lines or lines[-1] not in ("exiting", ""):
        lines.append(proc.stdout.readline().strip())
    proc.send_signal(signal.Signals(signum))
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err.strip().splitlines()) == (
        status, [f"bafusion baseline: {said} while exiting, after it had finished: its outputs (F.png) were complete "
                 "when the stop came (a workflow manager such as Snakemake removes the outputs of a job that fails: "
                 "rerun it there)"])
    assert lines[-2:] == ["frozen", "exiting"]
    assert (tmp_path / "F.png").is_file()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_training_worker_stopped_while_it_exits_says_nothing(tmp_path: Path) -> None:
    """A worker process of ``train --nproc N`` (its environment names the launcher) that was
    stopped while it exited said 'terminated while exiting, after it had ended with status 3
    (said above)', though nothing was said above: the launcher stops the workers when one of
    them ends, and the command says in one line what happened. A worker ends with 128 + N and
    no word, as while it trains."""
    import signal

    rng = np.random.default_rng(0)
    for name in ("A.png", "B.png"):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / name)
    env = {**os.environ, "PYTHONPATH": str(SRC), "BAFUSION_MLFLOW": "0",
           "BAFUSION_TRAIN_LAUNCHER_PID": str(os.getpid())}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_EXIT, "baseline", "--method", "laplacian", "-o", "F.png",
                             "A.png", "B.png"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout is not None
    lines = []
    while not lines or lines[-1] not in ("exiting", ""):
        lines.append(proc.stdout.readline().strip())
    assert lines[-1] == "exiting"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (143, "")


def _camera_file(path: Path, kind: str) -> None:
    """A stand-in of a camera's file: ``tiff-raw`` a TIFF whose first page is a small RGB preview
    and whose sub-IFD holds 12-bit sensor data (as NEF, ARW, PEF, DNG are built), ``cr2`` a TIFF
    header with no readable page, ``heic`` an ISO media file of brand heic."""
    import struct

    import tifffile

    rng = np.random.default_rng(3)
    if kind == "tiff-raw":
        with tifffile.TiffWriter(path) as tw:
            tw.write(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), subfiletype=1, subifds=1, photometric="rgb")
            tw.write(rng.integers(0, 4096, (48, 64), dtype=np.uint16), photometric="minisblack")
    elif kind == "cr2":
        path.write_bytes(b"II*\x00\x10\x00\x00\x00CR\x02\x00" + rng.bytes(4000))
    else:
        path.write_bytes(struct.pack(">I4s4sI", 24, b"ftyp", b"heic", 0) + b"mif1heic" + rng.bytes(3000))


@pytest.mark.parametrize(("names", "kind", "said", "tool"), [
    (("DSC_0001.NEF", "DSC_0002.NEF"), "tiff-raw", "camera RAW file", "dcraw -T -6"),  # fused its 16x12 preview
    (("IMG_0001.CR2", "IMG_0002.CR2"), "cr2", "camera RAW file", "RawTherapee"),
    (("x.dng", "y.dng"), "tiff-raw", "camera RAW file", "darktable"),
    (("IMG_0001.HEIC", "IMG_0002.HEIC"), "heic", "HEIC/HEIF file", "heif-convert"),
    (("phone.jpg", "phone2.jpg"), "heic", "HEIC/HEIF file", "heif-convert"),  # a HEIC named .jpg
])
def test_a_camera_raw_or_heic_source_is_refused_with_what_to_convert_it_to(work: Path, capsys, names, kind, said,
                                                                           tool) -> None:
    """fuse of two NEF files (TIFF inside) fused their small preview pages without a word; a CR2
    or HEIC was 'unreadable image: not an image file Pillow can read (an unknown format, or not
    an image)', no advice and a library's name. Each is refused naming the file and its kind,
    with the advice to convert it to TIFF or JPEG first and with what."""
    for n in names:
        _camera_file(work / n, kind)
    line = _refused(["fuse", *names, "--model", "nets", "--device", "cpu", "-o", "F.png"], capsys, work,
                    f"{names[0]}: {said}, which bafusion does not read", "convert it to TIFF (16-bit keeps the most) "
                    "or JPEG first", tool)
    assert "Pillow" not in line
    _refused(["metrics", *names, names[0]], capsys, work, f"{names[0]}: {said}")


def test_a_reader_that_has_gone_is_not_a_bug_without_sigpipe(monkeypatch, capsys) -> None:
    """Windows' ``signal`` module has no SIGPIPE: ``bafusion count | more`` whose reader had gone
    ended in a traceback (AttributeError: module 'signal' has no attribute 'SIGPIPE', in the
    handler of BrokenPipeError); now it stops with 141, as on Unix."""
    import argparse
    import signal

    import bafusion.cli.app as app

    monkeypatch.delattr(signal, "SIGPIPE", raising=False)
    monkeypatch.setattr(app, "_drop_stdout", lambda: None)
    monkeypatch.setattr("bafusion.preflight.check_command", lambda args: None)

    def gone(args: argparse.Namespace) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    assert app._run("bafusion count", argparse.Namespace(command="count", func=gone)) == 141
    assert "Traceback" not in capsys.readouterr().err


def test_a_path_the_standard_output_cannot_encode_does_not_fail_the_command(monkeypatch) -> None:
    """``bafusion fuse ... -o 日本.png > log.txt`` on Windows (stdout cp1252) and ``-o Ádám.png``
    in a legacy POSIX locale (a surrogate) wrote the output, then failed on its final line:
    status 1, "internal error: UnicodeEncodeError". Such characters are now printed escaped;
    the stream is as it was once the command returns. A name's bytes undecodable in the locale
    are written as those bytes (``\\xc3\\x81``), not as the surrogates that stand for them."""
    import io

    import bafusion.cli.pipeline as pipeline

    def prints_paths(args: object) -> int:
        print("fused 2 images into \u65e5\u672c.png and Ad\udcc3\udc81m.png")
        return 0

    monkeypatch.setattr(pipeline, "cmd_count", prints_paths)
    out = io.TextIOWrapper(io.BytesIO(), encoding="cp1252", errors="strict")
    monkeypatch.setattr(sys, "stdout", out)
    assert cli_main(["count"]) == 0
    out.flush()
    assert out.buffer.getvalue() == b"fused 2 images into \\u65e5\\u672c.png and Ad\\xc3\\x81m.png\n"
    assert out.errors == "strict"


@pytest.mark.parametrize("encoding", ["ascii", "utf-8"])
def test_a_surrogateescape_stdout_writes_a_names_own_bytes(monkeypatch, encoding: str) -> None:
    """A stdout whose handler is ``surrogateescape`` (Python's in the C or POSIX locale, in UTF-8
    mode, or by ``PYTHONIOENCODING``) wrote a name's undecodable bytes as they are, the file's
    own name for a script reading the output back; it was given the readable handler, which
    wrote the text ``\\xc3\\x81`` (no file's name). Its bytes are kept, a character the
    encoding lacks is still escaped (``surrogateescape`` failed on it), and the stream's handler
    is as it was once the command returns, also when it fails."""
    import io

    import bafusion.cli.pipeline as pipeline
    from bafusion.errors import UserError

    def prints_paths(args: object) -> int:
        print("fused 2 images into \u65e5\u672c.png and Ad\udcc3\udc81m.png")
        return 0

    def fails(args: object) -> int:
        print("Ad\udcc3\udc81m.png")
        raise UserError("no")

    out = io.TextIOWrapper(io.BytesIO(), encoding=encoding, errors="surrogateescape")
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(pipeline, "cmd_count", prints_paths)
    assert cli_main(["count"]) == 0
    out.flush()
    japan = "\u65e5\u672c".encode() if encoding == "utf-8" else b"\\u65e5\\u672c"
    assert out.buffer.getvalue() == b"fused 2 images into " + japan + b".png and Ad\xc3\x81m.png\n"
    assert out.errors == "surrogateescape"
    monkeypatch.setattr(pipeline, "cmd_count", fails)
    assert cli_main(["count"]) == 2
    out.flush()
    assert out.buffer.getvalue().endswith(b"\nAd\xc3\x81m.png\n")
    assert out.errors == "surrogateescape"


def _stdout_case(tmp_path: Path, command: str) -> list[str]:
    """Two sources a.png, b.png in ``tmp_path`` and the command line of ``command``."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (24, 20), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    return {"count": ["count", "--params", str(Path(__file__).resolve().parents[1] / "params.yaml")],
            "count-json": ["count", "--format", "json", "--params", str(Path(__file__).resolve().parents[1] / "params.yaml")],
            "metrics": ["metrics", "--metrics", "QG", "a.png", "b.png", "a.png"],
            "preset": ["preset", "paper"],
            "baseline": ["baseline", "a.png", "b.png", "-o", "F.png"]}[command]


def _user_env() -> dict[str, str]:
    """The environment of a user's shell: without PYTHONUNBUFFERED (which some CI sets), the
    standard output is buffered and a failed write stays in its buffer until Python exits."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return {**env, "PYTHONPATH": str(SRC), "BAFUSION_MLFLOW": "0"}


@pytest.mark.skipif(sys.platform == "win32", reason="closes fd 1 in the child (preexec_fn)")
@pytest.mark.parametrize("command", ["count", "metrics", "preset", "baseline"])
def test_a_command_whose_result_is_its_output_refuses_a_closed_standard_output(tmp_path: Path, command: str) -> None:
    """`bafusion count >&-`, `metrics ... >&-`, `preset paper >&-` exited 0 having written nothing
    (with fd 1 closed sys.stdout is None, and print() drops what it is given): what they print
    is their only output, so they refuse, one line and status 2. A command that writes files
    (baseline) goes on: its image is written, its progress line lost."""
    argv = _stdout_case(tmp_path, command)
    r = subprocess.run([sys.executable, "-m", "bafusion", *argv], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True, cwd=tmp_path, env=_user_env(), timeout=300,
                       preexec_fn=lambda: os.close(1))  # noqa: PLW1509 - a test's child only
    if command == "baseline":
        assert r.returncode == 0 and r.stderr == "", r.stderr
        assert (tmp_path / "F.png").is_file()
        return
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == (f"bafusion {command}: error: the standard output is closed (>&-): the "
                                f"{'preset' if command == 'preset' else 'counts' if command == 'count' else 'metrics'} "
                                "would be written nowhere; redirect it to a file or a pipe instead"), r.stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
@pytest.mark.parametrize("command", ["count", "count-json", "metrics", "preset", "baseline"])
def test_a_full_standard_output_is_one_line_with_a_buffered_stdout(tmp_path: Path, command: str) -> None:
    """Without PYTHONUNBUFFERED (a user's shell) `bafusion count > /dev/full` said its error and
    then "Exception ignored in: <_io.TextIOWrapper name='<stdout>'...> OSError: [Errno 28]", status
    120, as Python's flush at exit failed again on the lines left in the buffer; `baseline ... >
    /dev/full` blamed its image ("F.png: No space left on device"), which it had written whole."""
    argv = _stdout_case(tmp_path, command)
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "bafusion", *argv], stdin=subprocess.DEVNULL, stdout=full,
                           stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=_user_env(), timeout=300)
    assert r.returncode == 2, r.stderr
    line = f"bafusion {argv[0]}: error: No space left on device (writing the standard output)"
    if command == "baseline":  # writes a file: it goes on (tests/test_cli_std_streams.py), and says so
        line += (": what it prints there is dropped from now on; the command goes on and keeps its outputs, and "
                 "ends with a non-zero status")
    assert r.stderr.strip() == line, r.stderr


@pytest.mark.parametrize("command", ["count-json", "metrics", "baseline"])
def test_a_reader_that_has_gone_stays_quiet_with_a_buffered_stdout(tmp_path: Path, command: str) -> None:
    """`bafusion count --format json | true` and the like: the reader gone, the command stops
    quietly with 141 (128 + SIGPIPE), as Python's docs advise, also with the standard output
    buffered (nothing said at exit)."""
    argv = _stdout_case(tmp_path, command)
    p = subprocess.Popen([sys.executable, "-m", "bafusion", *argv], cwd=tmp_path, env=_user_env(),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()  # the reader is gone before the first line
    err = p.stderr.read().decode()
    assert p.wait(timeout=300) == 141, err
    assert err == "", err


def test_outside_the_project_the_errors_say_what_is_missing(tmp_path: Path, monkeypatch, capsys) -> None:
    """Run outside the project (a wheel's user, in a folder of photos): `preset --apply
    params.yaml` said only 'params file not found', bare `evaluate` named data/testset without
    saying how to evaluate a folder of one's own (--dataset), and the missing-nets hint told to
    run snakemake where there is no Snakefile (the wheel ships none)."""
    from bafusion import checkout

    work = tmp_path / "photos"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setenv("BAFUSION_MLFLOW", "0")

    assert cli_main(["preset", "paper", "--apply", "params.yaml"]) == 2
    err = capsys.readouterr().err
    assert err == ("bafusion preset: error: params.yaml: params file not found (--apply writes into the pipeline's "
                   "params file: run in the project folder or pass its path)\n"), err

    assert cli_main(["evaluate", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bafusion evaluate: error: {work / 'data' / 'testset'}: sources folder of dataset "
                          "'testset' not found (the pipeline's `testset` step writes it in the project folder"), err
    assert "pass --dataset NAME=PAIRS[,REFERENCE]" in err, err

    pa, pb = work / "a.png", work / "b.png"
    for p in (pa, pb):
        Image.fromarray(np.zeros((40, 36), np.uint8)).save(p)
    # an installed bafusion (no source checkout), no Snakefile around: no snakemake to run
    monkeypatch.setattr(checkout, "source_checkout", lambda *a: None)
    assert cli_main(["fuse", str(pa), str(pb), "-o", "F.png", "--model", "data/models"]) == 2
    err = capsys.readouterr().err
    assert "snakemake" not in err and "dvc repro" not in err, err
    assert "pass --model DIR: a folder holding initial.pt and boundary.pt" in err, err
    assert "a shipped model's name (default, lytro-2026-11)" in err, err
    assert err.count("lytro-2026-11") == 1, err  # the shipped models named once, not twice
    # bafusion run from its checkout (editable), elsewhere: the pipeline is there, named
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.setattr(checkout, "source_checkout", lambda *a: repo)
    assert cli_main(["fuse", str(pa), str(pb), "-o", "F.png", "--model", "data/models"]) == 2
    err = capsys.readouterr().err
    assert f"`snakemake --cores 2 train_boundary` (or `dvc repro`) in {repo}, which writes" in err, err
    assert not (work / "F.png").exists()


class _RunsCode:
    """Pickles as a call of os.system: what a malicious .pt holds."""

    def __reduce__(self) -> tuple:
        return (os.system, ("echo this must not run",))


def test_a_malicious_model_file_names_what_it_holds_without_torchs_unsafe_advice(work: Path, capsys) -> None:
    """torch 2.13 refuses it ("Weights only load failed. ... Re-running `torch.load` with
    `weights_only` set to `False` will likely succeed, ... Trying to load unsupported GLOBAL
    posix.system ..."); the message said only "(UnpicklingError: Weights only load failed)":
    the filter matched torch 2.6's wording ("WeightsUnpickler error:") alone."""
    import torch

    torch.save({"x": _RunsCode()}, work / "nets" / "initial.pt")
    line = _refused([*FUSE, "-o", "F.png"], capsys, work, "nets/initial.pt: unreadable model file",
                    "not a plain tensor file", "unsupported GLOBAL", ".system")
    assert "weights_only" not in line and "False" not in line and "trusted" not in line, line


def _alias_bomb(levels: int) -> str:
    """A params file whose fuse.scales is ``levels`` lists of nine aliases of the previous one
    (9**levels values from a few hundred bytes: a "billion laughs")."""
    lines = ["fuse:", "  scales:", '    - &a ["1", "1", "1", "1", "1", "1", "1", "1", "1"]']
    names = "abcdefghijklmnop"
    for prev, name in zip(names[:levels - 1], names[1:levels]):
        lines.append(f"    - &{name} [{', '.join(['*' + prev] * 9)}]")
    return "\n".join(lines) + "\n"


def test_a_params_file_of_nested_aliases_is_refused_at_once(work: Path, capsys) -> None:
    """A 329-byte file of aliases standing for 9**8 values took 147 s and 1.5 GB, then printed
    a 254 MB error line (the schema check walked the expanded value, the message showed it)."""
    import time

    (work / "laughs.yaml").write_text(_alias_bomb(8))
    t0 = time.perf_counter()
    line = _refused([*FUSE, "-o", "F.png", "--params", "laughs.yaml"], capsys, work,
                    "laughs.yaml: invalid YAML: its aliases stand for more than 100000 values", "alias *")
    assert time.perf_counter() - t0 < 30 and len(line) < 400, line[:1000]
    # a recursive alias (a list holding itself) is refused too, rather than walked for ever
    (work / "loop.yaml").write_text("fuse:\n  scales: &s [1, *s]\n")
    _refused([*FUSE, "-o", "F.png", "--params", "loop.yaml"], capsys, work,
             "loop.yaml: invalid YAML: alias *s on line 2 is inside the node it names")


def test_a_long_wrong_value_is_shown_shortened(work: Path, capsys) -> None:
    """Fewer aliases (9**4 values, under the cap), or a long list written out: the value the
    error shows is cut to a few hundred characters, the problem still named."""
    (work / "few.yaml").write_text(_alias_bomb(4))
    line = _refused([*FUSE, "-o", "F.png", "--params", "few.yaml"], capsys, work, "few.yaml: fuse.scales: [[",
                    "...")
    assert len(line) < 1000, len(line)
    (work / "long.yaml").write_text("fuse:\n  scales: '" + "x" * 5000 + "'\n")
    line = _refused([*FUSE, "-o", "F.png", "--params", "long.yaml"], capsys, work, "long.yaml: fuse.scales: 'xxx")
    assert len(line) < 1000, len(line)


@pytest.mark.parametrize("where", ["params-json", "params-json 600 levels", "params", "model"])
def test_a_document_nested_too_deeply_is_named_not_called_a_bug(work: Path, capsys, where: str) -> None:
    """``[[[...]]]`` 100000 deep: RecursionError, which the readers' ``except ValueError``
    missed: "internal error (a bug in bafusion, not in your input)", exit status 1. 600 levels
    parsed, then overflowed in the params' deep merge (``copy.deepcopy``): the same error."""
    deep = "[" * 100_000 + "]" * 100_000
    if where == "params-json":
        argv, words = ["--params-json", '{"l": ' + deep + "}"], ["--params-json: not valid JSON"]
    elif where == "params-json 600 levels":
        argv, words = ["--params-json", '{"a": ' * 600 + "1" + "}" * 600], ["--params-json: not valid JSON"]
    elif where == "params":
        (work / "deep.yaml").write_text("fuse: {l: " + "[" * 20_000 + "]" * 20_000 + "}\n")
        argv, words = ["--params", "deep.yaml"], ["deep.yaml: invalid YAML"]
    else:
        (work / "nets" / "initial.json").write_text(deep)
        argv, words = [], ["nets/initial.json: unreadable model description"]
    _refused([*FUSE, "-o", "F.png", *argv], capsys, work, *words, "nested too deeply")


@pytest.mark.parametrize("given, said", [
    (["--exact", "--scales", "1,0.5", "--initial-mode", "grid", "--boundary-mode", "dense", "--working-min", "256"],
     "--initial-mode, --boundary-mode, --scales, --working-min change nothing with --exact"),
    (["--params-json", '{"exact": true}', "--tile", "64"], "--tile changes nothing with fuse.exact: true"),
    (["--exact", "--boundary-mode", "exact"], None),  # the exact boundary mode is what --exact does
    (["--scales", "1,0.5", "--initial-mode", "grid"], None),  # not exact: they apply
])
def test_options_that_exact_mode_does_not_read_get_a_note(work: Path, capsys, given: list, said: str | None) -> None:
    """``fuse --exact --scales 1,0.5 --initial-mode grid --boundary-mode dense`` fused (minutes)
    in exact mode, one patch per pixel at the pair's own size, the three options ignored in
    silence (bafusion.fusion.scoring: exact scores every pixel, one scale; working.uses_working and
    uses_upscale: not with exact). Now one line names the options given that exact mode does not read."""
    from bafusion.cli.app import build_parser
    from bafusion.cli.fusion import params_from_args

    args = build_parser("fuse").parse_args([*FUSE, "-o", "F.png", *given])
    params, _ = params_from_args(args)
    err = capsys.readouterr().err
    if said is None:
        assert "change" not in err, err
    else:
        assert params.exact
        assert f"bafusion fuse: note: {said}: exact mode scores one patch per pixel" in err, err


@pytest.mark.parametrize("rule", ["joint", "chain", None])
def test_fuse_set_says_that_stack_rule_changes_nothing(work: Path, capsys, rule: str | None) -> None:
    """``fuse-set --stack-rule joint`` was taken and ignored in silence: fuse-set fuses pairs,
    which the pair rule fuses whatever the stack rule (FusionParams.stack_rule: "Two shots: the
    pair rule either way"). Now a note says so, before the pairs are read (here: none there)."""
    argv = ["fuse-set", "--pairs", "nopairs", "--models", "nets", "--out", "fs", "--device", "cpu"]
    rc = cli_main([*argv, *(["--stack-rule", rule] if rule else [])])
    err = capsys.readouterr().err
    assert rc == 2 and "nopairs" in err, err
    note = f"bafusion fuse-set: note: --stack-rule {rule} changes nothing: fuse-set fuses pairs"
    assert (note in err) == (rule is not None), err


@pytest.mark.parametrize("command, given, said", [
    ("fuse", ["--params-json", '{"save_maps": true}'], "(--params-json) changes nothing: no command reads it; give --save-maps DIR"),
    ("fuse", ["--params-file", "sm.yaml"], "(sm.yaml) changes nothing: no command reads it; give --save-maps DIR"),
    ("fuse", ["--params-json", '{"save_maps": true}', "--save-maps", "maps"], None),  # the flag writes them
    ("fuse", ["--params-json", '{"save_maps": false}'], None),
    ("fuse-set", ["--params-json", '{"save_maps": true}'], "changes nothing: no command reads it; fuse-set writes every pair's maps"),
    ("fuse-dir", ["--params-file", "sm.yaml"], "changes nothing: no command reads it; fuse-dir writes no maps"),
])
def test_fuse_save_maps_key_gets_a_note(work: Path, capsys, command: str, given: list, said: str | None) -> None:
    """fuse.save_maps is a key of the schema that no command reads: `bafusion fuse --params-file P`
    with `save_maps: true` wrote no maps and said nothing (reproduced: F.png alone). A note now."""
    from bafusion.cli.app import build_parser
    from bafusion.cli.fusion import params_from_args

    (work / "sm.yaml").write_text("fuse:\n  save_maps: true\n")
    argv = {"fuse": [*FUSE, "-o", "F.png"], "fuse-set": ["fuse-set", "--pairs", "p", "--models", "nets", "-o", "o"],
            "fuse-dir": ["fuse-dir", "in", "out", "--model", "nets"]}[command]
    args = build_parser(command).parse_args([*argv, *given])
    params_from_args(args)
    err = capsys.readouterr().err
    if said is None:
        assert "save_maps" not in err, err
    else:
        assert f"bafusion {command}: note: fuse.save_maps: true " in err and said in err, err


@pytest.mark.parametrize("sources, rule", [(["a.png", "b.png"], "joint"), (["a.png", "b.png"], "chain"),
                                           (["a.png", "b.png"], None), (["a.png", "b.png", "a2.png"], "joint")])
def test_fuse_says_that_stack_rule_changes_nothing_for_a_pair(work: Path, capsys, sources: list,
                                                              rule: str | None) -> None:
    """``fuse a.png b.png --stack-rule joint`` was taken and ignored in silence, as fuse-set's was:
    two sources are fused by the pair rule. A note says so (not for three shots, where it applies)."""
    import shutil

    shutil.copy(work / "a.png", work / "a2.png")
    # --quality on a .png output: refused after the note, before any work
    rc = cli_main(["fuse", *sources, "--model", "nets", "--device", "cpu", "-o", "F.png", "--quality", "90",
                   *(["--stack-rule", rule] if rule else [])])
    err = capsys.readouterr().err
    assert rc == 2 and "--quality" in err, err
    note = f"bafusion fuse: note: --stack-rule {rule} changes nothing: two sources are fused by the pair rule"
    assert (note in err) == (rule is not None and len(sources) == 2), err


@pytest.mark.parametrize("stack, rule", [(False, "joint"), (False, None), (True, "joint")])
def test_fuse_dir_says_that_stack_rule_changes_nothing_for_pairs(work: Path, capsys, stack: bool,
                                                                 rule: str | None) -> None:
    """``fuse-dir IN OUT --stack-rule joint`` on a folder of pairs ignored the rule in silence: a note
    (not where a stack of three or more shots is there to use it)."""
    import shutil

    (work / "in").mkdir()
    for letter in "ABC" if stack else "AB":
        shutil.copy(work / "a.png", work / "in" / f"p-{letter}.png")
    (work / "out").mkdir()
    shutil.copy(work / "b.png", work / "out" / "p.png")  # a file of the user's: refused after the note, before any work
    rc = cli_main(["fuse-dir", "in", "out", "--model", "nets", "--device", "cpu",
                   *(["--stack-rule", rule] if rule else [])])
    err = capsys.readouterr().err
    assert rc == 2 and "p.png" in err, err
    note = f"bafusion fuse-dir: note: --stack-rule {rule} changes nothing: in holds pairs only"
    assert (note in err) == (rule is not None and not stack), err


@pytest.mark.parametrize("given, said", [
    (["--no-refine", "--boundary-mode", "dense", "--tile", "64", "--boundary-weight", "1"],
     "--boundary-mode, --tile, --boundary-weight change nothing with --no-refine"),
    (["--params-json", '{"refine": false}', "--working-refine", "boundary"],
     "--working-refine changes nothing with fuse.refine: false"),
    (["--no-refine", "--working-refine", "none"], None),  # none: no boundary net either way
    (["--boundary-mode", "dense", "--tile", "64"], None),  # refined: they apply
])
def test_boundary_options_without_the_boundary_net_get_a_note(work: Path, capsys, given: list,
                                                              said: str | None) -> None:
    """``fuse --no-refine --boundary-mode dense --boundary-weight 1`` ran without the boundary
    net (bafusion.fusion.decide: ``if params.refine``), its options ignored in silence: a note."""
    from bafusion.cli.app import build_parser
    from bafusion.cli.fusion import params_from_args

    args = build_parser("fuse").parse_args([*FUSE, "-o", "F.png", *given])
    params_from_args(args)
    err = capsys.readouterr().err
    if said is None:
        assert "change" not in err, err
    else:
        assert f"bafusion fuse: note: {said}: the boundary net is not run" in err, err
