"""Start-up of the command line: a command line that names a command builds the parser of the
module that registers it alone (``bafusion.cli.app.COMMANDS``), so light commands do not
import torch and a mistyped option is refused before heavy imports."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from bafusion.cli.app import COMMAND_MODULES, COMMANDS, Parser, build_parser, command_of

SRC = Path(__file__).resolve().parents[1] / "src"


def _registered(module: str) -> list[str]:
    parser = Parser(prog="bafusion")
    sub = parser.add_subparsers(dest="command")
    importlib.import_module(module).register(sub)
    return list(sub.choices)


def test_commands_table_matches_what_the_modules_register() -> None:
    registered = {cmd: module for module in COMMAND_MODULES for cmd in _registered(module)}
    assert registered == COMMANDS
    assert set(COMMANDS.values()) == set(COMMAND_MODULES)


def test_command_of() -> None:
    assert command_of(["fuse", "a.png", "b.png", "-o", "f.png"]) == "fuse"
    assert command_of(["metrics", "--help"]) == "metrics"
    assert command_of(["--help"]) is None
    assert command_of(["--version"]) is None
    assert command_of([]) is None
    assert command_of(["fuseX"]) is None  # unknown: the commands' names say which exist


def _subparser(parser, command: str):
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices[command]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_one_module_parser_is_the_full_parsers_subcommand(command: str) -> None:
    """The subcommand's options, defaults and help are the same whichever way it was built."""
    full = _subparser(build_parser(), command)
    lazy_parser = build_parser(command)
    lazy = _subparser(lazy_parser, command)
    assert lazy.format_help() == full.format_help()
    assert [(a.dest, a.option_strings, a.default, a.choices) for a in lazy._actions] == [
        (a.dest, a.option_strings, a.default, a.choices) for a in full._actions
    ]
    action = next(a for a in lazy_parser._actions if a.dest == "command")
    assert set(action.choices) == {c for c, m in COMMANDS.items() if m == COMMANDS[command]}


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}).stdout.strip()


@pytest.mark.parametrize("argv", [["metrics", "--help"], ["preset", "--help"], ["count", "--bogus"],
                                  ["download-record", "--help"], ["fus", "a.png"], []])
def test_light_commands_do_not_import_torch(argv: list[str]) -> None:
    """... nor a mistyped command (`bafusion fus`: 2.7 s importing every command's module,
    torch with them, to print one line) or none."""
    code = (
        "import sys\n"
        "from bafusion.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('torch' in sys.modules)\n"
    )
    out = _run(code)
    assert out.splitlines()[-1] == "False", out


def _main_in_a_fresh_process(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """``bafusion.cli.main(argv)`` run in a new interpreter (only ``src`` on its path, ``env`` added),
    which prints its exit status and whether torch was imported: stdout ``"2 False"`` for a refusal
    made before torch."""
    code = (
        "import sys\n"
        "from bafusion.cli import main\n"
        f"status = main({argv!r})\n"
        "print(status, 'torch' in sys.modules)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", **env})


def test_a_refused_input_file_of_fuse_does_not_import_torch(tmp_path: Path) -> None:
    """``bafusion fuse`` checks its shots from their headers (there, an image read here, one size)
    before importing torch: its refusals came after those seconds (~6 s on a loaded 2-core machine;
    about 1 s now). ``fuse --help`` and a mistyped option of fuse-dir/fuse-set do not import it either."""
    from PIL import Image

    Image.new("RGB", (32, 24)).save(tmp_path / "a.png")
    Image.new("RGB", (24, 32)).save(tmp_path / "turned.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    cases = {
        "missing.png": "missing.png: file not found",
        "bad.png": "bad.png: unreadable image",
        "turned.png": "size 24x32 (WxH) differs from 32x24",
    }
    for name, said in cases.items():
        argv = ["fuse", str(tmp_path / "a.png"), str(tmp_path / name), "-o", str(tmp_path / "f.png"),
                "--save-maps", str(tmp_path / "maps"), "--device", "cpu"]
        p = _main_in_a_fresh_process(argv)
        assert said in p.stderr, p.stderr
        assert p.stdout.split() == ["2", "False"], (name, p.stdout, p.stderr)
    for argv in (["fuse", "--help"], ["fuse-dir", "--bogus"], ["fuse-set", "--help"]):
        out = _run("import sys\nfrom bafusion.cli import main\ntry:\n"
                   f"    main({argv!r})\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)\n")
        assert out.splitlines()[-1] == "False", (argv, out)


def test_a_shot_whose_pixels_do_not_decode_is_refused_by_fuse_without_torch(tmp_path: Path) -> None:
    """A shot whose header reads but whose pixel data is damaged (a truncated PNG or JPEG, a
    PNG whose zlib stream is broken) passes the header check; ``fuse`` imported torch (and set
    its threads) before reading the shots, so it was refused only after that import (3.9-8.7 s on
    a loaded 2-core machine; 2.6-2.8 s now). So were shots of two scenes. The shots are read
    and checked before torch is imported now."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    a = (rng.random((64, 80, 3)) * 255).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(a).save(tmp_path / "a.jpg", quality=90)
    Image.fromarray(rng.permutation(a.reshape(-1, 3)).reshape(a.shape)).save(tmp_path / "other.png")
    png, jpg = (tmp_path / "a.png").read_bytes(), (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "trunc.png").write_bytes(png[:len(png) // 2])
    (tmp_path / "trunc.jpg").write_bytes(jpg[:len(jpg) // 2])
    body = png.index(b"IDAT") + 24  # inside the zlib stream: flipped bits
    (tmp_path / "zlib.png").write_bytes(png[:body] + bytes(x ^ 0xFF for x in png[body:body + 30]) + png[body + 30:])
    cases = {
        "trunc.png": "trunc.png: unreadable image (OSError: image file is truncated)",
        "trunc.jpg": "trunc.jpg: unreadable image (OSError: image file is truncated",
        "zlib.png": "zlib.png: unreadable image (OSError: broken data stream",
        "other.png": "other.png: does not look like the same scene as",
    }
    for name, said in cases.items():
        argv = ["fuse", str(tmp_path / "a.png"), str(tmp_path / name), "-o", str(tmp_path / "f.png"), "--device", "cpu"]
        p = _main_in_a_fresh_process(argv)
        assert said in p.stderr, (name, p.stderr)
        assert p.stdout.split() == ["2", "False"], (name, p.stdout, p.stderr)


def test_a_pair_file_whose_pixels_do_not_decode_is_refused_by_fuse_set_without_torch(tmp_path: Path) -> None:
    """fuse-set checked its pairs' files from their headers before importing torch and decoded
    them (fuse_set's check) only after it and the nets' load: a truncated shot or truth map was
    refused seconds later. They are decoded before torch now, and fuse_set is told so."""
    import json

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    for k in ("A", "B", "dm"):
        size = (24, 32) if k == "dm" else (24, 32, 3)
        Image.fromarray((rng.random(size) * 255).astype(np.uint8)).save(tmp_path / f"p1-{k}.png")
    (tmp_path / "index.json").write_text(json.dumps(["p1"]))
    for name in ("p1-B.png", "p1-dm.png"):
        whole = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(whole[:len(whole) // 2])
        argv = ["fuse-set", "--pairs", str(tmp_path), "--out", str(tmp_path / "o"), "--device", "cpu"]
        p = _main_in_a_fresh_process(argv, BAFUSION_MLFLOW="0")
        assert f"{name}: unreadable image (OSError: image file is truncated)" in p.stderr, (name, p.stderr)
        assert p.stdout.split() == ["2", "False"], (name, p.stdout, p.stderr)
        (tmp_path / name).write_bytes(whole)


def test_fuse_dir_of_which_nothing_can_be_fused_lists_it_without_torch(tmp_path: Path) -> None:
    """A folder whose every image is skipped (one shot, a name outside the rule) or whose every
    stack fails from its shots' headers (unreadable, sizes that differ) was listed, exit 4, only
    after torch's import and the nets' load (7.8-28 s on a 2-core machine at load 9-10; 0.7-4.5 s now).
    Same lines, same status, no output folder made; the line naming the input folder says why
    nothing was fused."""
    from PIL import Image

    t = tmp_path
    for folder in ("alone", "headers"):
        (t / folder).mkdir()
    Image.new("RGB", (32, 24)).save(t / "alone" / "x-A.png")
    Image.new("RGB", (32, 24)).save(t / "alone" / "IMG_1.png")
    (t / "headers" / "p-A.png").write_bytes(b"not an image")
    Image.new("RGB", (32, 24)).save(t / "headers" / "p-B.png")
    Image.new("RGB", (32, 24)).save(t / "headers" / "lone-A.png")
    (t / "headers" / "s").mkdir()
    Image.new("RGB", (32, 24)).save(t / "headers" / "s" / "1.png")
    Image.new("RGB", (24, 24)).save(t / "headers" / "s" / "2.png")
    cases = [
        ("alone", ["x-A.png: stack 'x' has only 1 shot(s)", "IMG_1.png: name does not follow the rule"], "skipped 2"),
        ("headers", ["skipped p: ", "p-A.png: unreadable image", "lone-A.png: stack 'lone' has only 1 shot(s)",
                     "skipped s: ", "2.png: size 24x24 (WxH) differs from 32x24"], "skipped 3"),
    ]
    for folder, lines, count in cases:
        argv = ["fuse-dir", f"{t}/{folder}", f"{t}/out-{folder}", "--device", "cpu"]
        p = _main_in_a_fresh_process(argv, BAFUSION_MLFLOW="0")
        for said in lines:
            assert said in p.stderr, (folder, said, p.stderr)
        assert f"{t}/{folder}: nothing to fuse: each of its stacks and images was skipped" in p.stderr, p.stderr
        assert f"fused 0 stack(s) into {t}/out-{folder}, {count} (listed on stderr)" in p.stdout, p.stdout
        assert p.stdout.split()[-2:] == ["4", "False"], (folder, p.stdout, p.stderr)
        assert not (t / f"out-{folder}").exists()


def test_a_refused_input_of_fuse_dir_fuse_set_or_a_device_does_not_import_torch(tmp_path: Path) -> None:
    """fuse-dir and fuse-set set torch's threads before checking their inputs, and a --device other
    than cpu or auto was checked (importing torch) by the command line's preflight before fuse's
    shots: their refusals of a missing or empty folder, a missing index or shot, pairs of two sizes
    came after torch's import (5-8 s on a loaded 2-core machine; about 1 s now). metrics and
    evaluate refused bad inputs without torch already: kept so."""
    import json

    from PIL import Image

    Image.new("RGB", (32, 24)).save(tmp_path / "a.png")
    (tmp_path / "empty").mkdir()
    for folder, size_b in (("pairs", (24, 32)), ("lacking", None)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "index.json").write_text(json.dumps(["p1"]))
        Image.new("RGB", (32, 24)).save(tmp_path / folder / "p1-A.png")
        if size_b:
            Image.new("RGB", size_b).save(tmp_path / folder / "p1-B.png")
    for name in ("sa.png", "sb.png", "sf.png"):
        Image.new("L", (7, 7)).save(tmp_path / name)
    long_name = "p" * (256 - len("-score-initial.png"))  # its shots' names fit (244 bytes), its maps' not (256)
    (tmp_path / "long").mkdir()
    (tmp_path / "long" / "index.json").write_text(json.dumps([long_name]))
    for k in ("A", "B"):
        Image.new("RGB", (32, 24)).save(tmp_path / "long" / f"{long_name}-{k}.png")
    t = str(tmp_path)
    cases = [
        (["fuse", f"{t}/a.png", f"{t}/missing.png", "-o", f"{t}/f.png", "--device", "cuda"], "missing.png: file not found"),
        (["fuse-dir", f"{t}/nodir", f"{t}/o1"], "nodir: not a folder"),
        (["fuse-dir", f"{t}/nodir", f"{t}/o1", "--device", "cuda:7"], "nodir: not a folder"),
        (["fuse-dir", f"{t}/empty", f"{t}/o2", "--device", "cpu"], "empty: no pair or stack to fuse"),
        (["fuse-set", "--pairs", f"{t}/empty", "--out", f"{t}/o3"], "empty/index.json: pair index not found"),
        (["fuse-set", "--pairs", f"{t}/lacking", "--out", f"{t}/o4", "--device", "cuda"],
         "lacking/index.json: listed pairs lack their shots"),
        (["fuse-set", "--pairs", f"{t}/pairs", "--out", f"{t}/o5"], "p1-B.png: size 24x32 (WxH) differs from 32x24"),
        (["fuse-set", "--pairs", f"{t}/long", "--out", f"{t}/o6", "--device", "cuda"],
         "-score-initial.png: the map file's name is 256 bytes"),
        (["metrics", f"{t}/sa.png", f"{t}/sb.png", f"{t}/sf.png"], "QY needs images of at least 11x11"),
        (["evaluate", "--dataset", f"x={t}/nodir", "--out", f"{t}/ev"], "sources folder of dataset 'x' not found"),
    ]
    for argv, said in cases:
        p = _main_in_a_fresh_process(argv, BAFUSION_MLFLOW="0")
        assert said in p.stderr, (argv, p.stderr)
        assert p.stdout.split() == ["2", "False"], (argv, p.stdout, p.stderr)


def test_full_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    from bafusion.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out


def test_unknown_command_is_refused_with_the_list(capsys: pytest.CaptureFixture[str]) -> None:
    from bafusion.cli import main

    with pytest.raises(SystemExit) as e:
        main(["fuze", "a.png"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and "'fuse'" in err and "'metrics'" in err


def test_the_module_entry_point_reads_sys_argv() -> None:
    """``python -m bafusion.cli`` (the training's torchrun relaunch) takes its command line from
    ``sys.argv`` and builds the named command's parser alone."""
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, "-m", "bafusion.cli", "preset", "--help"], capture_output=True, text=True,
                       env=env)
    assert p.returncode == 0 and "usage: bafusion preset" in p.stdout, p.stderr
    p = subprocess.run([sys.executable, "-m", "bafusion.cli", "count", "--no-such-option"], capture_output=True,
                       text=True, env=env)
    assert p.returncode == 2 and "error: unrecognized arguments: --no-such-option" in p.stderr, p.stderr


def test_python_dash_m_bafusion_is_the_command() -> None:
    """``python -m bafusion`` runs the ``bafusion`` command (where its script is not on PATH)."""
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, "-m", "bafusion", "preset", "--help"], capture_output=True, text=True,
                       env=env)
    assert p.returncode == 0 and "usage: bafusion preset" in p.stdout, p.stderr
    p = subprocess.run([sys.executable, "-m", "bafusion", "fuze"], capture_output=True, text=True, env=env)
    assert p.returncode == 2 and "invalid choice" in p.stderr, p.stderr


def test_ctrl_c_while_the_parser_is_built_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from bafusion.cli import app

    def interrupted(command: str | None = None) -> Parser:
        raise KeyboardInterrupt  # Ctrl-C while a command module imports torch

    monkeypatch.setattr(app, "build_parser", interrupted)
    assert app.main(["train", "--help"]) == 130
    assert capsys.readouterr().err == "bafusion train: interrupted\n"


@pytest.mark.parametrize(("signum", "status", "said"), [(2, 130, "interrupted"), (15, 143, "terminated")])
@pytest.mark.parametrize("raised", [
    ImportError("cannot load module more than once per process"),  # numpy's, Ctrl-C inside its C import
    RecursionError("maximum recursion depth exceeded"),  # numpy's __getattr__ of the half-imported module
    AttributeError("module 'numpy._core' has no attribute '_multiarray_umath'"),
])
def test_a_stop_while_the_parser_is_built_is_the_stop_whatever_it_raises(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], signum: int, status: int, said: str,
    raised: Exception,
) -> None:
    """A signal that lands inside numpy's or torch's import (the parser of fuse, train, evaluate
    imports them) came out as an ImportError, a RecursionError or an AttributeError: a traceback
    of 40 lines and status 1 instead of one line and 130/143."""
    from bafusion.atomic import request_stop
    from bafusion.cli import app

    def stopped_import(command: str | None = None) -> Parser:
        request_stop(signum)  # what the handlers do before raising
        raise raised

    monkeypatch.setattr(app, "build_parser", stopped_import)
    assert app.main(["fuse", "a.png", "b.png", "-o", "f.png"]) == status
    assert capsys.readouterr().err == f"bafusion fuse: {said}\n"


def test_a_stop_while_the_command_runs_is_not_a_bug(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """An exception after a stop was requested (a module the command imports late, half
    initialised by the signal) printed a traceback and 'internal error (a bug in bafusion ...)'
    before the line 'interrupted'."""
    from bafusion.atomic import request_stop
    from bafusion.cli import app

    def func(args: object) -> int:
        request_stop(2)
        raise RecursionError("maximum recursion depth exceeded")

    parser = Parser(prog="bafusion")
    parser.add_subparsers(dest="command").add_parser("count").set_defaults(func=func)
    monkeypatch.setattr(app, "build_parser", lambda command=None: parser)
    monkeypatch.setattr("bafusion.preflight.check_command", lambda args: None)
    assert app.main(["count"]) == 130
    assert capsys.readouterr().err == "bafusion count: interrupted\n"


def test_an_exception_without_a_stop_is_still_a_bug(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from bafusion.cli import app

    def broken(command: str | None = None) -> Parser:
        raise ImportError("cannot load module more than once per process")

    monkeypatch.setattr(app, "build_parser", broken)
    with pytest.raises(ImportError):
        app.main(["fuse", "a.png"])


@pytest.mark.parametrize(("argv", "hint"), [
    (["fus", "a.png"], "; did you mean 'fuse'? (see bafusion --help)"),
    (["count", "--fromat", "json"], "unrecognized arguments: --fromat json; --fromat: did you mean --format?"),
    (["count", "--fromat=json"], "; --fromat: did you mean --format?"),
    (["prep"], "; did you mean 'prepare'?"),
    (["evalute"], "; did you mean 'evaluate'?"),
    (["fuse", "a.png", "b.png", "-o", "x.png", "--precison", "fp16"], "--precison: did you mean --precision?"),
    (["baseline", "--method", "gfff", "a", "b", "-o", "f.png"], "invalid choice: 'gfff' (choose from 'gff', "
                                                                "'laplacian'); did you mean 'gff'?"),
    # a mistyped first letter (the rule that keeps --batch from meaning --patch had dropped these)
    (["guse", "a.png"], "; did you mean 'fuse'?"),
    (["fuse", "a.png", "b.png", "-o", "x.png", "--nodel", "x"], "--nodel: did you mean --model?"),
    (["fuse", "a.png", "b.png", "-o", "x.png", "--rile", "512"], "--rile: did you mean --tile?"),
])
def test_a_mistyped_command_or_option_gets_the_closest_name(capsys: pytest.CaptureFixture[str], argv: list[str],
                                                            hint: str) -> None:
    """`bafusion fus` listed 19 commands without a word of 'fuse'; `count --fromat json` said only
    'unrecognized arguments' (Python 3.11's argparse suggests nothing). A first letter mistyped
    (`guse`, `--nodel`) is a typo too: only a word that is itself bafusion's (`--batch`, a
    parameter: test_no_suggestion_of_an_unrelated_option) is not one of the name one letter
    away."""
    from bafusion.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.splitlines()) == 1 and hint in err, err


_FUSE = ["fuse", "a.png", "b.png", "-o", "x.png"]


@pytest.mark.parametrize(("argv", "hint"), [
    ([*_FUSE, "--outdir", "y"], "--outdir: did you mean --out?"),
    ([*_FUSE, "--out-dir", "y"], "--out-dir: did you mean --out?"),
    (["baseline", "--method", "gff", "a", "b", "-o", "f.png", "--out-dir", "y"], "--out-dir: did you mean --out?"),
    ([*_FUSE, "--alignment", "similarity"], "--alignment: did you mean --align?"),
    (["fuse-dir", "in", "out", "--alignment", "similarity"], "--alignment: did you mean --align?"),
    ([*_FUSE, "--tile-size", "512"], "--tile-size: did you mean --tile?"),
    ([*_FUSE, "--cmap", "magma"], "--cmap: did you mean --diff-cmap?"),
    (["metrics", "a.png", "b.png", "f.png", "--fmt", "json"], "--fmt: did you mean --format?"),
    (["evaluate", "--initial-model", "m.pt"], "--initial-model: did you mean --initial?"),
    (["evaluate", "--boundary-model", "m.pt"], "--boundary-model: did you mean --boundary?"),
    # --params and --params-file are one option: either spelling is the right hint
    ([*_FUSE, "--params-yaml", "p.yaml"], "--params-yaml: did you mean --params"),
    (["count", "--params-yaml", "p.yaml"], "--params-yaml: did you mean --params"),
    ([*_FUSE, "--precision", "bfloat16"], "did you mean 'bf16'?"),
    (["fuse-directory", "in", "out"], "did you mean 'fuse-dir'?"),
])
def test_a_longer_name_or_an_abbreviation_gets_a_hint(capsys: pytest.CaptureFixture[str], argv: list[str],
                                                      hint: str) -> None:
    """The rule that stopped --cores from meaning --force dropped these hints (given by difflib
    before): a typed name that the real one begins (--outdir, --tile-size), whose words end
    with the name's (--cmap), or an abbreviation (--fmt, bfloat16)."""
    from bafusion.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.splitlines()) == 1 and hint in err, err


def test_no_suggestion_when_nothing_is_close(capsys: pytest.CaptureFixture[str]) -> None:
    from bafusion.cli import main

    with pytest.raises(SystemExit):
        main(["count", "--zzz"])
    assert capsys.readouterr().err == "bafusion count: error: unrecognized arguments: --zzz (see bafusion count --help)\n"


@pytest.mark.parametrize(("argv", "word"), [
    (["fuse", "a.png", "b.png", "-o", "x.png", "--gpu"], "--gpu"),
    (["fuse", "a.png", "b.png", "-o", "x.png", "--resize"], "--resize"),
    (["fuse-dir", "in", "out", "--methd", "gff"], "--methd"),
    (["fuse-dir", "in", "out", "--cores", "2"], "--cores"),
    ([*_FUSE, "--cores", "2"], "--cores"),
])
def test_no_suggestion_from_the_leading_dashes_alone(capsys: pytest.CaptureFixture[str], argv: list[str],
                                                     word: str) -> None:
    """The options were compared with their "--", which made --gpu "close" to --output, --resize
    to --precision and --methd to --ext: a user looking for a GPU option was
    pointed at --output. --cores was still pointed at --force (three letters of five in
    common: difflib's cutoff of 0.6 exactly); a hint now needs a typo's distance (one edit per
    four letters), one name beginning the other, the typed words ending the name's, an
    abbreviation or a clearly close name (app._close_name)."""
    from bafusion.cli import main

    with pytest.raises(SystemExit):
        main(argv)
    err = capsys.readouterr().err
    assert f"unrecognized arguments: {word}" in err and "did you mean" not in err, err


@pytest.mark.parametrize(("argv", "word"), [
    ([*_FUSE, "--outline"], "--outline"),
    (["patches", "-o", "p.h5", "--batch", "64"], "--batch"),
    ([*_FUSE, "--alphamatting"], "--alphamatting"),
])
def test_no_suggestion_of_an_unrelated_option(capsys: pytest.CaptureFixture[str], argv: list[str],
                                              word: str) -> None:
    """--outline was pointed at --out (a name that begins the typed word counted at any length:
    "out" is a third of "outline"), --alphamatting at --alpha, and --batch at --patch (one
    letter apart, but another first letter: another word). A name that begins the typed word
    now counts as one of its dash-separated words or as at least half of it (--outdir, --tile-size
    keep theirs: test_a_longer_name_or_an_abbreviation_gets_a_hint), and a name that differs in
    its first letter alone is none when the typed word is itself bafusion's (batch: the
    parameter train.batch), while a mistyped first letter (--nodel) still gets its hint."""
    from bafusion.cli import main

    with pytest.raises(SystemExit):
        main(argv)
    err = capsys.readouterr().err
    assert f"unrecognized arguments: {word}" in err and "did you mean" not in err, err


def test_the_option_names_known_to_the_hints_are_the_parsers() -> None:
    """The hints' list of option names (read without building the parsers, which import torch)
    is every long option of bafusion's commands and of bafusion itself: an option added or
    renamed must be added to ``bafusion.cli.app._OPTION_NAMES``."""
    from bafusion.cli.app import _OPTION_NAMES

    parser = build_parser()
    parsers = [parser, *next(a for a in parser._actions if a.dest == "command").choices.values()]
    names = {s[2:] for p in parsers for a in p._actions for s in a.option_strings if s.startswith("--")}
    assert sorted(names - _OPTION_NAMES) == [] and sorted(_OPTION_NAMES - names) == [], (
        "missing:", sorted(names - _OPTION_NAMES), "not an option:", sorted(_OPTION_NAMES - names))


@pytest.mark.parametrize("word", ["log", "shard", "checksum", "figure-pair"])
def test_another_commands_option_is_no_typo_of_a_name_one_first_letter_away(word: str) -> None:
    """An option of another command (``--log``, train's, typed to ``fuse``) is a word of
    bafusion's, as a parameter's name is (``--batch``: test_no_suggestion_of_an_unrelated_option),
    and no typo of a name that differs in its first letter alone: the hints knew the commands
    and the parameters but not the other commands' options. No two of today's names differ so,
    so the name here is made up (``--log`` and a ``--fog``)."""
    from bafusion.cli.app import _close_name

    other = ("x" if word[0] != "x" else "y") + word[1:]
    assert _close_name(word, [other, "zzzzzzzz"]) is None
    assert _close_name("q" + other[1:], [other]) == other  # a first letter mistyped is still one


@pytest.mark.parametrize("argv", [["fus", "a.png"], ["evalute"], ["zzz"], []])
def test_an_unknown_command_is_refused_as_the_full_parser_refuses_it(capsys: pytest.CaptureFixture[str],
                                                                     argv: list[str]) -> None:
    """An unknown command (or none) is refused from the commands' names alone: the same line,
    the same status, as the parser of every command gives."""
    from bafusion.cli import main

    with pytest.raises(SystemExit) as full:
        build_parser().parse_known_args(argv)
    expected = capsys.readouterr().err
    with pytest.raises(SystemExit) as light:
        main(argv)
    assert (light.value.code, capsys.readouterr().err) == (full.value.code, expected) == (2, expected)
    assert "error: " in expected


def test_the_version_has_its_changelog_entry() -> None:
    """The version stayed 0.1.0 across every build, so pip kept an older build when given a newer
    one: it is bumped whenever outputs or behaviour change, each number with its entry in
    CHANGELOG.md, and `bafusion --version` says it."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    from bafusion import __version__

    changelog = (Path(__file__).resolve().parents[1] / "CHANGELOG.md").read_text(encoding="utf-8")
    entries = re.findall(r"^## (\S+)", changelog, flags=re.M)
    assert entries and entries[0] == __version__, (entries, __version__)  # the newest entry first
    assert __version__ != "0.1.0"
    r = subprocess.run([sys.executable, "-m", "bafusion", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and __version__ in r.stdout + r.stderr, (r.stdout, r.stderr)


def test_initial_without_boundary_is_refused_before_torch(tmp_path: Path) -> None:
    """``--initial`` without ``--boundary`` (and the files beside ``--model``) were refused by
    the nets' loading, after torch's import (seconds); fuse, fuse-dir and fuse-set refuse them
    with the other mistakes of the command line now."""
    from PIL import Image

    for c in "ab":
        Image.new("RGB", (32, 24)).save(tmp_path / f"p-{c.upper()}.png")
    (tmp_path / "init.pt").write_bytes(b"x")
    shots = [str(tmp_path / "p-A.png"), str(tmp_path / "p-B.png")]
    for argv in (["fuse", *shots, "-o", str(tmp_path / "f.png"), "--initial", str(tmp_path / "init.pt")],
                 ["fuse-dir", str(tmp_path), str(tmp_path / "out"), "--boundary", str(tmp_path / "init.pt")],
                 ["fuse-set", "--pairs", str(tmp_path), "-o", str(tmp_path / "out"), "--initial", str(tmp_path / "init.pt")]):
        p = _main_in_a_fresh_process([*argv, "--device", "cpu"])
        assert "--initial and --boundary go together" in p.stderr, (argv, p.stderr)
        assert p.stdout.split() == ["2", "False"], (argv, p.stdout, p.stderr)


def test_evaluate_refuses_initial_without_boundary_before_torch(tmp_path: Path) -> None:
    """evaluate refused ``--initial`` without ``--boundary`` (and the net files beside
    ``--models``) only in the nets' loading, after torch's import ('2 True'), where fuse, fuse-dir
    and fuse-set refuse them before it."""
    from PIL import Image

    (tmp_path / "pairs").mkdir()
    for c in "AB":
        Image.new("RGB", (32, 24)).save(tmp_path / "pairs" / f"p-{c}.png")
    (tmp_path / "init.pt").write_bytes(b"x")
    common = ["evaluate", "--dataset", f"d={tmp_path / 'pairs'}", "--out", str(tmp_path / "out"),
              "--methods", "Ours", "--device", "cpu"]
    for extra, said in ((["--initial", str(tmp_path / "init.pt")], "--initial and --boundary go together"),
                        (["--initial", str(tmp_path / "init.pt"), "--boundary", str(tmp_path / "init.pt"),
                          "--models", str(tmp_path)], "both name the nets")):
        p = _main_in_a_fresh_process([*common, *extra])
        assert said in p.stderr, (extra, p.stderr)
        assert p.stdout.split() == ["2", "False"], (extra, p.stdout, p.stderr)
