"""One concept, one set of spellings in every command: the model folder (``--model``/``--models``),
the parameter file (``--params``/``--params-file``), the output (``-o``/``--output``/``--out``)
and the progress bars (``--no-progress``/``--quiet``) are spelled alike in every command that
has them (a user who learned one command got "unrecognized arguments" in another); every old
spelling still works, and abbreviations of one option's spellings are not ambiguous. The
``--threads`` of every command is checked alike, before any work."""

from __future__ import annotations

import argparse

import pytest

from bafusion.cli import main as cli_main
from bafusion.cli.app import build_parser

#: A command line of each command, its required arguments given, without the option under test.
BASE: dict[str, list[str]] = {
    "fuse": ["fuse", "a.png", "b.png"],
    "fuse-set": ["fuse-set", "--pairs", "p"],
    "fuse-dir": ["fuse-dir", "in", "out"],
    "evaluate": ["evaluate"],
    "train": ["train", "--net", "initial", "--patches", "p.h5"],
    "ensemble": ["ensemble", "a.pt", "b.pt"],
    "count": ["count"],
    "baseline": ["baseline", "a.png", "b.png"],
    "metrics": ["metrics", "a.png", "b.png", "f.png"],
    "prepare": ["prepare"],
    "composite": ["composite", "--prepared", "p", "--shard", "0", "--shards", "1"],
    "composite-index": ["composite-index", "s.h5"],
    "testset": ["testset", "--prepared", "p"],
    "patches": ["patches", "s.h5"],
    "download-alphamatting": ["download-alphamatting"],
    "download-coco": ["download-coco", "--count", "2"],
    "download-eval": ["download-eval"],
    "download-record": ["download-record", "--source", "web"],
}

#: The output of each command: its option's dest and a value (added when another option is tested).
OUTPUT: dict[str, tuple[str, str]] = {
    "fuse": ("output", "F.png"), "baseline": ("output", "F.png"), "fuse-set": ("out", "o"),
    "evaluate": ("out", "o"), "train": ("out", "m.pt"), "ensemble": ("out", "e.pt"), "prepare": ("out", "o"),
    "composite": ("out", "s.h5"), "composite-index": ("out", "i.json"), "testset": ("out", "o"),
    "patches": ("out", "o"), "download-alphamatting": ("out", "o"), "download-coco": ("out", "o"),
    "download-eval": ("out", "o"), "download-record": ("out", "r.json"),
}


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_parser(argv[0]).parse_args(argv)


def _argv(cmd: str, *more: str) -> list[str]:
    out = ["--out" if OUTPUT[cmd][0] == "out" else "-o", OUTPUT[cmd][1]] if cmd in OUTPUT else []
    return [*BASE[cmd], *out, *more]


@pytest.mark.parametrize("cmd", sorted(OUTPUT))
@pytest.mark.parametrize("spelling", ["-o", "--output", "--out", "--output=", "--out="])
def test_the_output_is_o_output_and_out_in_every_command(cmd: str, spelling: str) -> None:
    """``-o``/``--output`` were "unrecognized" in the commands of ``--out``; ``--out`` worked in
    fuse and baseline only as an abbreviation of ``--output``."""
    dest, value = OUTPUT[cmd]
    given = [spelling + value] if spelling.endswith("=") else [spelling, value]
    assert getattr(_parse([*BASE[cmd], *given]), dest) == value


@pytest.mark.parametrize(("cmd", "abbrev", "dest", "value"), [
    ("fuse-set", "--ou", "out", "o"),  # --out and --output: one option, not ambiguous
    ("evaluate", "--outp", "out", "o"),
    ("fuse", "--ou", "output", "F.png"),
    ("download-eval", "--ou", "out", "o"),
    ("fuse", "--mod", "model", "nets"),  # --model and --models
    ("fuse-set", "--mod", "models", "nets"),
    ("train", "--params-f", "params", "p.yaml"),  # --params-file and --params
])
def test_an_abbreviation_of_one_options_spellings_is_not_ambiguous(cmd: str, abbrev: str, dest: str,
                                                                    value: str) -> None:
    is_output = dest == OUTPUT.get(cmd, ("",))[0]
    argv = [*BASE[cmd], abbrev, value] if is_output else _argv(cmd, abbrev, value)
    assert getattr(_parse(argv), dest) == value


MODEL = [("fuse", "model"), ("fuse-dir", "model"), ("fuse-set", "models"), ("evaluate", "models")]


@pytest.mark.parametrize(("cmd", "dest"), MODEL)
@pytest.mark.parametrize("spelling", ["--model", "--models"])
def test_the_model_folder_is_model_and_models_in_every_command(cmd: str, dest: str, spelling: str) -> None:
    """``--models`` was "unrecognized" in fuse and fuse-dir (``--model`` worked in fuse-set and
    evaluate only as an abbreviation, and their help did not show it)."""
    assert getattr(_parse(_argv(cmd, spelling, "nets")), dest) == "nets"
    subs = next(a for a in build_parser(cmd)._actions if isinstance(a, argparse._SubParsersAction))
    assert {"--model", "--models"} <= {s for a in subs.choices[cmd]._actions for s in a.option_strings}


def test_an_abbreviation_of_two_options_is_still_ambiguous(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        cli_main(["train", "--net", "initial", "--patches", "p.h5", "--out", "m.pt", "--params-", "x"])
    assert e.value.code == 2
    assert "ambiguous option: --params-" in capsys.readouterr().err


PARAMS = [("fuse", "params_file"), ("fuse-set", "params_file"), ("fuse-dir", "params_file"),
          ("evaluate", "params_file"), ("train", "params"), ("count", "params")]


@pytest.mark.parametrize(("cmd", "dest"), PARAMS)
@pytest.mark.parametrize("spelling", ["--params", "--params-file"])
def test_the_params_file_is_params_and_params_file_in_every_command(cmd: str, dest: str, spelling: str) -> None:
    """``--params`` was "ambiguous" in fuse, fuse-set, fuse-dir and evaluate, ``--params-file``
    "unrecognized" in train and count."""
    assert getattr(_parse(_argv(cmd, spelling, "my.yaml")), dest) == "my.yaml"


PROGRESS = [("fuse", "progress", False), ("fuse-set", "progress", False), ("fuse-dir", "progress", False),
            ("metrics", "progress", False), ("train", "no_progress", True), ("prepare", "no_progress", True),
            ("composite", "no_progress", True), ("testset", "no_progress", True), ("patches", "no_progress", True),
            ("download-alphamatting", "no_progress", True), ("download-coco", "no_progress", True),
            ("download-eval", "no_progress", True)]


@pytest.mark.parametrize(("cmd", "dest", "off"), PROGRESS)
@pytest.mark.parametrize("spelling", ["--no-progress", "--quiet"])
def test_no_progress_is_no_progress_and_quiet_in_every_command(cmd: str, dest: str, off: bool,
                                                               spelling: str) -> None:
    """``--quiet`` (fuse-dir's) was "unrecognized" in every other command."""
    assert getattr(_parse(_argv(cmd)), dest) is not off
    assert getattr(_parse(_argv(cmd, spelling)), dest) is off


THREADS = ["fuse", "fuse-set", "fuse-dir", "evaluate", "patches"]


@pytest.mark.parametrize("cmd", THREADS)
@pytest.mark.parametrize("value", ["0", "-2", "1025"])
def test_threads_out_of_range_is_refused_alike_before_any_file_is_read(cmd: str, value: str, capsys, tmp_path,
                                                                     monkeypatch) -> None:
    """``--threads 0`` was refused by each command in its own words, some (patches) by the parser,
    the others only after reading the parameter file: one message, at once, now."""
    monkeypatch.chdir(tmp_path)
    more = ["--params-file", "missing.yaml"] if cmd != "patches" else []
    with pytest.raises(SystemExit) as e:
        cli_main(_argv(cmd, "--threads", value, *more))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"bafusion {cmd}: error: --threads {value}: give a positive number of CPU threads, at most 1024" in err, err
    assert "missing.yaml" not in err


def test_train_threads_0_is_torchs_default_and_said_in_the_help(capsys) -> None:
    """``train --threads 0`` is taken (train.threads 0: torch's own number, all the cores); the help
    says so. -1 is refused as in the other commands."""
    assert _parse(_argv("train", "--threads", "0")).threads == 0
    with pytest.raises(SystemExit):
        build_parser("train").parse_args(["train", "--help"])
    assert "0 = torch's default" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit) as e:
        cli_main(_argv("train", "--threads", "-1"))
    assert e.value.code == 2
    assert "--threads -1: give 0 (torch's default: all cores, at most those it may use) or a positive number of CPU threads" in \
        capsys.readouterr().err


@pytest.mark.parametrize("cmd", [*THREADS, "train"])
def test_the_help_of_threads_gives_its_range(cmd: str, capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser(cmd).parse_args([cmd, "--help"])
    assert ("0 to 1024" if cmd == "train" else "1 to 1024") in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("cmd", ["fuse", "fuse-dir"])
def test_the_help_of_fuse_says_what_metadata_is_kept(cmd: str, capsys) -> None:
    """fuse's and fuse-dir's --help said nothing of the metadata an output keeps (EXIF, ICC
    profile, resolution) and what it drops (XMP, IPTC, comments)."""
    with pytest.raises(SystemExit):
        build_parser(cmd).parse_args([cmd, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ("the first source's EXIF (its orientation reset: the pixels are turned; its Software set to "
            "'bafusion <version>', which wrote the output), ICC profile and resolution") in text
    assert "a .bmp the resolution only" in text and "XMP, IPTC and comments are not kept" in text


def test_threads_max_is_the_schemas() -> None:
    from bafusion.cli.common import THREADS_MAX
    from bafusion.schema import maximum

    assert THREADS_MAX == maximum("fuse.threads") == maximum("evaluate.threads") == maximum("train.threads")


@pytest.mark.parametrize(("cmd", "dest"), [("train", "metrics"), ("fuse-set", "report"), ("evaluate", "report")])
def test_the_metrics_json_is_report_in_every_command(cmd: str, dest: str) -> None:
    """The DVC metrics file was --report in fuse-set and evaluate, --metrics in train (where --report
    was "unrecognized"; evaluate's --metrics is a list of metric names)."""
    assert getattr(_parse(_argv(cmd, "--report", "m.json")), dest) == "m.json"
    if cmd == "train":
        assert _parse(_argv(cmd, "--metrics", "m.json")).metrics == "m.json"


@pytest.mark.parametrize("cmd", ["prepare", "composite", "testset", "patches", "download-coco", "train"])
def test_the_seed_is_seed_in_every_command_that_draws(cmd: str) -> None:
    """README's table: --seed in every step that draws at random; train had none (only --set seed=N)."""
    assert _parse(_argv(cmd, "--seed", "5")).seed == 5
    with pytest.raises(SystemExit):
        _parse(_argv(cmd, "--seed", "-1"))


@pytest.fixture
def home(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """A home folder of the test's own (``~``), and a working directory outside it."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return home


def test_a_tilde_in_path_options_and_params_is_the_home_folder(home, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shell leaves ``~`` alone in ``--from-dir=~/x`` and in quotes, which Snakemake's rules
    put around the params they pass: ``download.cache: ~/x`` created a folder ``./~/x`` in the
    project (a later ``rm -rf ~`` there deletes the home), ``--from-dir='~/evalcopy'`` was "not
    found", and ``evaluate.datasets: [{sources: ~/ev}]`` was looked for in ``<project>/~/ev``.
    Each is now the home folder's: output and model paths where they are parsed; the data
    sources that records name (--from-dir, --alphamatting...) are kept as written, so that the
    records are the same in every home (tests/test_acquire.py), and read from the home."""
    from pathlib import Path

    from bafusion.data.acquire import default_cache
    from bafusion.evaluation.evaluate import parse_config

    args = build_parser("download-eval").parse_args(
        ["download-eval", "--out", "~/out", "--cache", "~/datasets/cache", "--from-dir=~/evalcopy",
         "--manifest=~/m.json", "--base-url=https://example.org/~x"])
    assert (args.out, args.cache, args.from_dir, args.manifest) == (
        f"{home}/out", "~/datasets/cache", "~/evalcopy", "~/m.json")
    assert args.base_url == "https://example.org/~x"
    args = build_parser("download-coco").parse_args(
        ["download-coco", "--out", "o", "--count", "1", "--images-dir=~/coco", "--annotations=~/a.zip"])
    assert (args.images_dir, args.annotations, args.out) == ("~/coco", "~/a.zip", "o")
    args = build_parser("prepare").parse_args(["prepare", "--out", "p", "--alphamatting=~/am",
                                               "--backgrounds-dir=~/bg"])
    assert (args.alphamatting, args.backgrounds_dir) == ("~/am", "~/bg")
    from bafusion.workspace import resolve

    assert resolve(args.alphamatting) == home / "am"
    args = build_parser("fuse-dir").parse_args(["fuse-dir", "~/in", "~/out", "--model=~/nets"])
    assert (args.input, args.output, args.model) == (f"{home}/in", f"{home}/out", f"{home}/nets")
    monkeypatch.setenv("BAFUSION_CACHE", "~/bcache")
    assert default_cache() == home / "bcache"
    (home / "peers.csv").write_text("pair,method,QG\np,Peer,0.5\n", encoding="utf-8")
    cfg = parse_config({"datasets": [{"name": "x", "sources": "~/ev", "reference": "~/ref",
                                      "reference_metrics": "~/peers.csv"}]}, Path("project"))
    ds = cfg.datasets[0]
    assert (ds.sources, ds.reference, ds.reference_metrics) == (home / "ev", home / "ref", home / "peers.csv")


@pytest.mark.parametrize(("argv", "dests"), [
    (["fuse", "~/a.png", "~b/b.png", "-o", "f.png"], {"images": ["{home}/a.png", "~b/b.png"]}),
    (["baseline", "~/a.png", "~/b.png", "-o", "g.png"], {"a": "{home}/a.png", "b": "{home}/b.png"}),
    (["metrics", "~/a.png", "~/b.png", "~/f.png"], {"a": "{home}/a.png", "b": "{home}/b.png", "f": "{home}/f.png"}),
    (["composite-index", "~/s0.h5", "s1.h5", "-o", "i.json"], {"shards": ["{home}/s0.h5", "s1.h5"]}),
    (["patches", "~/s0.h5", "-o", "p"], {"shards": ["{home}/s0.h5"]}),
    (["ensemble", "~/m1.pt", "~/m2.pt", "-o", "e.pt"], {"members": ["{home}/m1.pt", "{home}/m2.pt"]}),
])
def test_a_tilde_in_positional_paths_is_the_home_folder(home, argv: list[str], dests: dict) -> None:
    """The options' paths took ``~`` as the home folder, the positional ones did not:
    ``bafusion metrics '~/a.png' ...`` (quoted, or from Windows' cmd, which expands nothing) said
    "~/a.png: file not found". Each is now the home folder's, as in the options (``~b``, a user
    this machine lacks, is left as it is, as a shell leaves it)."""
    args = build_parser(argv[0]).parse_args(argv)
    expected = {k: [x.format(home=home) for x in v] if isinstance(v, list) else v.format(home=home)
                for k, v in dests.items()}
    assert {k: getattr(args, k) for k in dests} == expected


@pytest.mark.parametrize(("argv", "dests"), [
    (["fuse", "~draft.jpg", "~/b.jpg", "-o", "~\\f.png"], {"images": ["~draft.jpg", "{home}/b.jpg"],
                                                          "output": "{home}\\f.png"}),
    (["metrics", "~a.png", "~", "~x\\f.png"], {"a": "~a.png", "b": "{home}", "f": "~x\\f.png"}),
    (["download-record", "--out", "~r.json", "--source", "dir", "bg=~bg"], {"out": "~r.json", "folder_paths": ["~bg"]}),
])
def test_on_windows_a_tilde_word_is_not_a_home_folder(monkeypatch: pytest.MonkeyPatch, argv: list[str],
                                                      dests: dict) -> None:
    """On Windows ``ntpath.expanduser`` turns any leading ``~word`` into a sibling of the home
    folder, without asking whether such a user exists: ``bafusion fuse ~draft.jpg b.jpg`` read
    ``C:\\Users\\draft.jpg``, not the file of the current folder. Only ``~`` alone and ``~\\``,
    ``~/`` are the home there (checked with os.path being ntpath while the arguments are parsed)."""
    import ntpath
    import os

    home = "C:\\Users\\me"
    monkeypatch.setenv("USERPROFILE", home)
    monkeypatch.setenv("USERNAME", "me")  # as Windows sets it: ntpath guesses C:\Users\<word> from it
    monkeypatch.delenv("HOME", raising=False)
    parser = build_parser(argv[0])
    with monkeypatch.context() as m:
        m.setattr(os, "path", ntpath)
        args = parser.parse_args(argv)
    expected = {k: [x.format(home=home) for x in v] if isinstance(v, list) else v.format(home=home)
                for k, v in dests.items()}
    assert {k: getattr(args, k) for k in dests} == expected


def test_a_source_image_given_with_a_tilde_is_read_from_the_home(home, capsys) -> None:
    """``bafusion metrics '~/a.png' '~/b.png' '~/a.png'`` said "~/a.png: file not found"."""
    import numpy as np
    from PIL import Image

    img = np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1))
    Image.fromarray(img).save(home / "a.png")
    Image.fromarray(img[:, ::-1]).save(home / "b.png")
    assert cli_main(["metrics", "~/a.png", "~/b.png", "~/a.png", "--metrics", "QG"]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.splitlines()[0] == "QG"


def test_a_missing_folder_given_with_a_tilde_is_named_in_the_home(home, capsys) -> None:
    """``download-eval --from-dir='~/evalcopy'`` said "~/evalcopy: eval folder not found" for a
    folder that was there; a missing one is named by its path in the home folder, and nothing
    named ``~`` is created."""
    from pathlib import Path

    assert cli_main(["download-eval", "--out", "dl", "--from-dir=~/evalcopy", "--cache", "~/c", "--quiet"]) == 2
    assert f"{home}/evalcopy: eval folder not found" in capsys.readouterr().err
    assert not Path("~").exists()


def test_on_windows_a_tilde_word_in_params_and_data_sources_is_not_a_home_folder(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The options used :func:`bafusion.cli.common.home_path`, the paths read from params.yaml
    and the data sources plain ``expanduser``: on Windows a param ``sources: ~draft`` (a folder
    of the project), a warm start ``train.init: ~m.pt``, ``BAFUSION_CACHE=~cache`` or a
    ``download-record`` folder ``~bg`` were read as ``C:\\Users\\draft`` and so on. They keep
    ``~word`` as written there, and ``~\\`` is still the home (os.path being ntpath)."""
    import ntpath
    import os
    from pathlib import Path

    from bafusion.cli.params_check import check_init_files
    from bafusion.data.acquire import default_cache, folder_digest
    from bafusion.workspace import home_path, resolve

    home = "C:\\Users\\me"
    monkeypatch.setenv("USERPROFILE", home)
    monkeypatch.setenv("USERNAME", "me")
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "~bg").mkdir()
    (tmp_path / "~bg" / "a.txt").write_text("a")
    (tmp_path / "~m.pt").write_bytes(b"model")
    monkeypatch.setenv("BAFUSION_CACHE", "~cache")
    with monkeypatch.context() as m:
        m.setattr(os, "path", ntpath)
        assert resolve("~draft") == Path("~draft") and resolve("~\\photos") == Path(f"{home}\\photos")
        assert default_cache() == Path("~cache")
        count = folder_digest("~bg")[0]
        check_init_files({"train": {"init": "~m.pt"}})  # found here, not in C:\Users
        assert home_path(Path("~/x")) == f"{home}/x"
    assert count == 1


def test_the_output_suffixes_taken_are_named_in_the_help(capsys) -> None:
    """``fuse-dir --ext jpeg`` and ``tiff`` (and fuse's ``-o x.jpeg``) work, but the help named
    only png, tif, bmp, jpg and webp."""
    from bafusion.preflight import IMAGE_OUTPUT_SUFFIXES

    args = _parse(["fuse-dir", "in", "out", "--ext", "jpeg"])
    assert args.ext == "jpeg"
    ext_help = next(a.help for a in _subparser("fuse-dir")._actions if "--ext" in a.option_strings)
    out_help = next(a.help for a in _subparser("fuse")._actions if "--output" in a.option_strings)
    for suffix in IMAGE_OUTPUT_SUFFIXES:
        assert f" {suffix[1:]}" in ext_help.replace("(", " ").replace("/", " "), (suffix, ext_help)
        assert suffix in out_help, (suffix, out_help)


def _subparser(cmd: str) -> argparse.ArgumentParser:
    subs = next(a for a in build_parser(cmd)._actions if isinstance(a, argparse._SubParsersAction))
    return subs.choices[cmd]


@pytest.mark.parametrize("cmd", ["fuse", "fuse-set", "fuse-dir"])
def test_the_device_and_threads_help_name_params_json_which_sets_them(cmd: str, tmp_path) -> None:
    """--device's and --threads' help named only --params-file's fuse.device and fuse.threads as
    their default, though --params-json's 'fuse' object sets them too (and overrides the file's)."""
    from bafusion.cli.fusion import params_from_args

    (tmp_path / "p.yaml").write_text("fuse:\n  device: cuda\n  threads: 3\n")
    args = _parse([*BASE[cmd], *([] if cmd == "fuse-dir" else ["-o", "o"]), "--params-file", str(tmp_path / "p.yaml"),
                   "--params-json", '{"device": "cpu", "threads": 2}'])
    _, other = params_from_args(args)
    assert (other["device"], other["threads"]) == ("cpu", 2)
    helps = {a.dest: a.help for a in _subparser(cmd)._actions}
    assert "default: --params-json's, else --params-file's fuse.device" in helps["device"], helps["device"]
    assert "default: --params-json's, else --params-file's fuse.threads" in helps["threads"], helps["threads"]


def test_an_unsure_region_at_or_below_min_region_is_noted(capsys) -> None:
    """``--unsure-region`` takes the regions from ``--min-region`` up to it: at or below
    ``--min-region`` it changes nothing (bafusion.fusion.rule.clean_decision), and said nothing."""
    from bafusion.cli.fusion import params_from_args

    params_from_args(_parse(["fuse", "a.png", "b.png", "-o", "f.png", "--unsure-region", "0.01"]))
    err = " ".join(capsys.readouterr().err.split())
    assert "note: --unsure-region 0.01 changes nothing: it is at or below fuse.min_region (0.01)" in err, err
    params_from_args(_parse(["fuse-dir", "in", "out", "--unsure-region", "0.03", "--min-region", "0.05"]))
    assert "--unsure-region 0.03 changes nothing: it is at or below --min-region (0.05)" in capsys.readouterr().err
    for given in (["--unsure-region", "0.03"], ["--unsure-region", "0"], []):
        params_from_args(_parse(["fuse", "a.png", "b.png", "-o", "f.png", *given]))
        assert "unsure" not in capsys.readouterr().err


@pytest.mark.parametrize("cmd", ["fuse", "fuse-set", "fuse-dir"])
def test_every_fuse_key_is_a_flag_or_named_in_the_help_with_the_way_to_set_it(cmd: str) -> None:
    """fuse.scale_confidence, scale_min_side, max_tile and batch_size have no flag, and the help
    did not say how to set them: its fusion group names them, with --params-json, which sets them."""
    import dataclasses

    from bafusion.cli.fusion import params_from_args
    from bafusion.fusion.params import FusionParams

    parser = _subparser(cmd)
    group = next(g for g in parser._action_groups if g.title.startswith("fusion parameters"))
    dests = {a.dest for a in parser._actions}
    unflagged = [f.name for f in dataclasses.fields(FusionParams) if f.name not in dests]
    assert unflagged, "every key has a flag: drop the group's description"
    for key in unflagged:
        assert f"fuse.{key}" in (group.description or ""), (key, group.description)
    assert "--params-json" in group.description
    params, _ = params_from_args(_parse([*BASE[cmd], *([] if cmd == "fuse-dir" else ["-o", "o"]),
                                         "--params-json", '{"max_tile": 512, "scale_min_side": 128}']))
    assert (params.max_tile, params.scale_min_side) == (512, 128)
