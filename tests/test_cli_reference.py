"""docs/cli.md, the command reference, is what the parsers say (bafusion.cli.reference writes it):
an option added, renamed or reworded without rewriting it fails here, so it cannot rot."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bafusion.cli.app import COMMANDS, build_parser
from bafusion.cli.reference import REGENERATE, main, render

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "docs" / "cli.md"


@pytest.fixture(scope="module")
def reference() -> str:
    return render()


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return dict(next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices)


def test_docs_cli_md_is_the_parsers_reference(reference: str) -> None:
    if not REFERENCE.is_file():
        pytest.skip("no docs/cli.md: bafusion runs from an installed package, not a source checkout")
    assert REFERENCE.read_text(encoding="utf-8") == reference, (
        f"docs/cli.md is out of date with the parsers: run {REGENERATE}")


def test_every_command_and_option_is_in_the_reference(reference: str) -> None:
    """Each command has its section and each of its spellings and help texts is there (none
    hidden by the rendering: argument groups, positionals, required options); ``-h, --help``,
    which every command has, once at the top."""
    subs = _subparsers()
    assert set(subs) == set(COMMANDS)
    assert "\n- `-h, --help`: show this help message and exit\n" in reference.split("\n## ", 1)[0]
    for name, sub in subs.items():
        section = reference.split(f"\n## `bafusion {name}`\n", 1)[1].split("\n## ", 1)[0]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                assert "- `-h, --help`" not in section
                continue
            for spelling in action.option_strings:
                assert re.search(rf"`[^`\n]*(?<![\w-]){re.escape(spelling)}(?![\w-])", section), (name, spelling)
            if action.help:
                first_words = " ".join(action.help.split()[:3])
                if "%" not in first_words and "`" not in first_words and not re.search(r"[\\*<>\[\]_]", first_words):
                    assert first_words in section, (name, action.dest, first_words)


def test_fuses_options_that_only_help_listed_are_in_the_reference(reference: str) -> None:
    """The options the README never named (session 36's note, item 8), each with its help."""
    fuse = reference.split("\n## `bafusion fuse`\n", 1)[1].split("\n## ", 1)[0]
    for option in ("--low", "--high", "--threshold", "--no-refine"):
        assert re.search(rf"^- `{option}[ `]", fuse, re.M), option
    patches = reference.split("\n## `bafusion patches`\n", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"^- `--min-focused ", patches, re.M)


def test_markdown_in_help_texts_is_escaped_and_code_spans_kept() -> None:
    from bafusion.cli.reference import _text

    assert _text("Software 'bafusion <version>'") == "Software 'bafusion \\<version\\>'"
    assert _text("run `bafusion metrics A.png` or *x*") == "run `bafusion metrics A.png` or \\*x\\*"
    assert _text("a `b") == "a \\`b"
    assert _text("train.val_seed _x_") == "train.val_seed \\_x\\_"
    assert _text("two\n   lines") == "two lines"


def test_the_reference_is_the_same_on_every_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   reference: str) -> None:
    """argparse wraps --help at $COLUMNS, and download-*'s --cache help names the cache folder
    ($BAFUSION_CACHE, else ~/.cache/bafusion/downloads, the home's): the reference is the same
    bytes at any width and in any home, and the environment is the caller's again after it."""
    monkeypatch.setenv("COLUMNS", "37")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("BAFUSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert render() == reference
    assert "download cache folder (default $BAFUSION_CACHE or ~/.cache/bafusion/downloads)" in reference
    assert str(tmp_path) not in reference
    assert os.environ["HOME"] == str(tmp_path) and os.environ["BAFUSION_CACHE"] == str(tmp_path / "cache")
    assert "XDG_CACHE_HOME" not in os.environ


def test_check_says_a_stale_reference_and_how_to_rewrite_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            reference: str) -> None:
    written = tmp_path / "cli.md"
    assert main(["-o", str(written)]) == 0
    assert written.read_text(encoding="utf-8") == reference
    assert main(["--check", str(written)]) == 0
    written.write_text(reference.replace("--no-refine", "--no-refinement"), encoding="utf-8")
    assert main(["--check", str(written)]) == 1
    err = capsys.readouterr().err
    assert f"{written}: out of date with the parsers: run {REGENERATE}" in err
    assert main(["--check", str(tmp_path / "none.md")]) == 1
    assert "none.md: missing" in capsys.readouterr().err


def test_the_readme_links_the_reference() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "(docs/cli.md)" in readme


def test_a_command_line_does_not_import_the_reference() -> None:
    """The reference builds every parser (torch); a command line builds its own module's alone
    (tests/test_cli_startup.py), and the reference's module is none of them."""
    code = ("import sys; from bafusion.cli import main\n"
            "try:\n    main(['metrics', '--no-such-option'])\nexcept SystemExit:\n    pass\n"
            "print('bafusion.cli.reference' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"], out
