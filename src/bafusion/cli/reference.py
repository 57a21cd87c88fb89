"""The command-line reference, ``docs/cli.md``: every ``bafusion`` command and option, written
from the argparse parsers themselves (their descriptions, help texts, choices and defaults), so
that the reference is what ``bafusion <cmd> --help`` says and never a hand-kept copy.

    python -m bafusion.cli.reference -o docs/cli.md     # rewrite it after changing an option
    python -m bafusion.cli.reference --check docs/cli.md  # exit 1 where it is out of date

``tests/test_cli_reference.py`` fails when ``docs/cli.md`` differs from what this writes. The
text does not depend on the terminal's width or on the Python version's help layout: each
option is one Markdown list item, its help on one line.

This module is not one of :data:`bafusion.cli.app.COMMAND_MODULES` and no command imports it:
a command line still builds its own module's parser alone (``bafusion metrics`` imports no
torch). Rendering builds every command's parser (:func:`bafusion.cli.app.build_parser`), which
imports torch.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["main", "render"]

#: The command that rewrites the reference (said at the top of it and by ``--check``).
REGENERATE = "python -m bafusion.cli.reference -o docs/cli.md"

#: The home folder while the reference is rendered, written as ``~`` in it.
_HOME = "/bafusion-reference-home"
#: The environment a help text may quote (``download-*``'s ``--cache`` names the cache folder
#: these give), set as on a plain machine while the reference is rendered: the home
#: :data:`_HOME` (then ``~``), no ``$BAFUSION_CACHE`` nor ``$XDG_CACHE_HOME``.
PLAIN_ENVIRONMENT: dict[str, str | None] = {"HOME": _HOME, "USERPROFILE": _HOME, "BAFUSION_CACHE": None,
                                            "XDG_CACHE_HOME": None}

#: Characters that would be Markdown outside a code span (``<version>`` an HTML tag,
#: ``*`` emphasis, ``[x]`` a link).
_MARKDOWN = re.compile(r"([\\*<>\[\]]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")


def _text(text: str) -> str:
    """``text`` (a help string, a description) on one line, its Markdown characters escaped
    outside the code spans it writes itself (`` `bafusion metrics X.png` ``); an odd backtick
    is escaped too."""
    text = " ".join(text.split())
    parts = text.split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: no code spans at all
        return _MARKDOWN.sub(r"\\\1", text).replace("`", "\\`")
    return "`".join(p if i % 2 else _MARKDOWN.sub(r"\\\1", p) for i, p in enumerate(parts))


def _code(text: str) -> str:
    """``text`` as a Markdown code span (doubled backticks where it holds one)."""
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _shown(action: argparse.Action) -> bool:
    return action.help is not argparse.SUPPRESS


def _listed(action: argparse.Action) -> bool:
    """Whether a command's option is listed: not a hidden one, nor ``-h, --help``, which every
    command has (listed once, with ``bafusion``'s own options)."""
    return _shown(action) and not isinstance(action, argparse._HelpAction)


def _invocation(action: argparse.Action, formatter: argparse.HelpFormatter) -> str:
    """``-o, --output, --out OUTPUT`` (its spellings and, once, what it takes) or a positional's
    metavar, as argparse forms them."""
    if not action.option_strings:
        return formatter._format_args(action, action.dest)  # type: ignore[attr-defined]
    spellings = ", ".join(action.option_strings)
    if action.nargs == 0:
        return spellings
    return f"{spellings} {formatter._format_args(action, action.dest.upper())}"  # type: ignore[attr-defined]


def _default(action: argparse.Action, help_text: str) -> str:
    """`` Default: `X`.`` where the option takes a value, has a default (not an empty string) and
    its help does not speak of one."""
    if (action.nargs == 0 or action.default in (None, "") or action.default is argparse.SUPPRESS
            or action.required or "default" in help_text.lower()):
        return ""
    value = action.default
    value = " ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
    if not value:
        return ""
    if not help_text:
        return f": default {_code(value)}"
    return f"{'' if help_text.rstrip().endswith('.') else '.'} Default: {_code(value)}."


def _item(action: argparse.Action, formatter: argparse.HelpFormatter) -> str:
    help_text = formatter._expand_help(action) if action.help else ""  # type: ignore[attr-defined]
    required = " (required)" if action.option_strings and action.required else ""
    line = f"- {_code(_invocation(action, formatter))}{required}"
    if help_text:
        line += f": {_text(help_text)}"
    return line + _default(action, help_text)


def _synopsis(parser: argparse.ArgumentParser) -> str:
    """``bafusion fuse images [images ...] -o OUTPUT [options]``: the positionals and the
    required options, in argparse's forms."""
    formatter = parser._get_formatter()
    words = [parser.prog]
    optional = False
    for action in parser._actions:
        if not _shown(action):
            continue
        if not action.option_strings:
            words.append(formatter._format_args(action, action.dest))  # type: ignore[attr-defined]
        elif action.required:
            words.append(f"{action.option_strings[0]} {formatter._format_args(action, action.dest.upper())}")  # type: ignore[attr-defined]
        else:
            optional = True
    return " ".join(words + (["[options]"] if optional else []))


def _command(summary: str | None, parser: argparse.ArgumentParser) -> list[str]:
    lines = [f"## `{parser.prog}`", ""]
    if summary:
        lines += [_text(summary[:1].upper() + summary[1:]) + ("" if summary.endswith(".") else "."), ""]
    lines += [_code(_synopsis(parser)), ""]
    if parser.description:
        lines += [_text(parser.description), ""]
    formatter = parser._get_formatter()
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if _listed(a)]
        if not actions:
            continue
        title = {"positional arguments": "Arguments", "options": "Options",
                 "optional arguments": "Options"}.get(group.title or "", group.title or "")
        lines += [f"**{_text(title)}**", ""]
        if group.description:
            lines += [_text(group.description), ""]
        lines += [_item(a, formatter) for a in actions] + [""]
    if parser.epilog:
        lines += [_text(parser.epilog), ""]
    return lines


@contextlib.contextmanager
def _plain_environment() -> Iterator[None]:
    """:data:`PLAIN_ENVIRONMENT` for a block, the environment restored after it."""
    saved = {k: os.environ.get(k) for k in PLAIN_ENVIRONMENT}
    try:
        for k, v in PLAIN_ENVIRONMENT.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def render() -> str:
    """The reference of every ``bafusion`` command, as ``docs/cli.md`` holds it.

    Returns
    -------
    str
        Markdown: a table of the commands, then each command's synopsis, description, options
        (spellings, what each takes, its help and default) and epilog, from the parsers
        :func:`bafusion.cli.app.build_parser` builds (all of them: this imports torch), in
        :data:`PLAIN_ENVIRONMENT`: the same text on every machine.
    """
    from bafusion.cli.app import build_parser

    build_parser()  # imports every command module (torch) in the caller's environment
    with _plain_environment():
        parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {a.dest: a.help for a in subs._choices_actions}
    lines = [
        "# `bafusion` command reference",
        "",
        f"<!-- Generated from the argparse parsers by `{REGENERATE}`; do not edit by hand "
        "(tests/test_cli_reference.py fails when it is out of date). -->",
        "",
        "Every command and option of `bafusion`, as `bafusion <command> --help` gives them (a "
        "default that depends on the machine as on a plain one: the home folder as `~`); "
        "the [README](../README.md) explains what the commands are for.",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    for name in subs.choices:
        anchor = re.sub(r"[^a-z0-9 -]", "", f"bafusion {name}".lower()).replace(" ", "-")
        what = _text(summaries.get(name) or "").replace("|", "\\|")
        lines.append(f"| [`{name}`](#{anchor}) | {what} |")
    formatter = parser._get_formatter()
    top = [a for a in parser._actions if _shown(a) and a.option_strings]
    lines += ["", "Options of `bafusion` itself:", ""] + [_item(a, formatter) for a in top] + [""]
    for name, sub in subs.choices.items():
        lines += _command(summaries.get(name), sub)
    return "\n".join(lines).rstrip("\n").replace(_HOME, "~") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write the reference (``-o FILE``, else to stdout) or check a written one (``--check FILE``).

    Parameters
    ----------
    argv : sequence of str, optional
        The command line (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0; 1 where ``--check``'s file differs from the parsers' reference (a line on stderr says
        how to rewrite it).
    """
    ap = argparse.ArgumentParser(prog="python -m bafusion.cli.reference",
                                 description="Write docs/cli.md, the bafusion command reference, from the parsers.")
    what = ap.add_mutually_exclusive_group()
    what.add_argument("-o", "--output", type=Path, help="write the reference here (atomically)")
    what.add_argument("--check", type=Path, metavar="FILE", help="exit 1 when FILE is not the reference")
    args = ap.parse_args(argv)
    text = render()
    if args.check is not None:
        try:
            written = args.check.read_text(encoding="utf-8")
        except FileNotFoundError:
            written = None
        if written != text:
            print(f"{args.check}: {'missing' if written is None else 'out of date with the parsers'}: "
                  f"run {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    if args.output is None:
        sys.stdout.write(text)
        return 0
    from bafusion.atomic import write_text

    write_text(args.output, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
