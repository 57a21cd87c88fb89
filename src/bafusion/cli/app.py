"""The ``bafusion`` command. Each module of :mod:`bafusion.cli` registers its subcommands.

A module listed in ``COMMAND_MODULES`` defines ``register(subparsers)``, which adds one or
more subparsers and sets ``func`` (called with the parsed namespace, returning an exit code)
through ``set_defaults``. ``COMMANDS`` says which module registers each command: a command
line that names one builds the parser of that module alone, so ``bafusion metrics`` or
``bafusion preset`` does not import torch and refuses a mistyped option at once (the modules of
``train`` and ``evaluate`` import torch themselves; that of ``fuse``, ``fuse-dir`` and ``fuse-set``
imports it once the command line and the inputs are checked: ``fuse``'s shots' headers, ``fuse-dir``'s
folder, ``fuse-set``'s index and pairs' headers, then a ``--device`` other than cpu or auto; BENCHMARKS.md, "Start-up"). ``bafusion --help`` and unknown commands load every module.

Errors: every user error of every command exits with status 2 and one line
``bafusion <cmd>: error: <what>: <why>`` on stderr, without a traceback. That covers argparse's
errors (no usage block), :class:`bafusion.errors.UserError` raised anywhere, the checks of
:mod:`bafusion.preflight` (output paths, devices) that run before the command's work, and an
``OSError`` naming a file (permission denied, disk full, ...) or, without a name, one of the
disk or its permissions (h5py's, Pillow's: the command's output is named). Anything else is a bug: its
traceback is printed, followed by one line saying so, and the status is 1, unless a signal had asked
the command to stop (numpy and torch turn a Ctrl-C inside their imports into an ``ImportError`` or a
half-initialised module): then it is the stop, one line and 128 + N.

The standard output: a failed write (``> /dev/full``) is one line naming it, status 2; a command
whose result is what it prints (``count``, ``metrics``, ``preset``) stops there, while the commands
that write files drop their lines and go on, their outputs kept. A reader gone (``| head``) ends
quietly with 128 + SIGPIPE; ``count``, ``metrics`` and ``preset`` refuse a closed one (``>&-``),
status 2, while the commands that write files go on, their progress lines lost. A closed standard
error (``2>&-``) is /dev/null: the diagnostics go nowhere, not into the result on stdout.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import errno
import functools
import gc
import importlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bafusion._version import __version__
from bafusion.atomic import clear_stop, request_stop, shown_path, stop_requested
from bafusion.errors import NAME_BYTES_ERRORS, READABLE_ERRORS, UserError, is_out_of_memory

COMMAND_MODULES: tuple[str, ...] = (
    "bafusion.cli.pipeline",
    "bafusion.cli.download",
    "bafusion.cli.train",
    "bafusion.cli.fusion",
    "bafusion.cli.metrics",
    "bafusion.cli.baselines",
    "bafusion.cli.evaluate",
)

#: The module that registers each command (checked against the modules by the tests).
COMMANDS: dict[str, str] = {
    **dict.fromkeys(("prepare", "composite", "composite-index", "testset", "patches", "count", "preset"),
                    "bafusion.cli.pipeline"),
    **dict.fromkeys(("download-alphamatting", "download-coco", "download-eval", "download-record"),
                    "bafusion.cli.download"),
    **dict.fromkeys(("train", "ensemble"), "bafusion.cli.train"),
    **dict.fromkeys(("fuse", "fuse-set", "fuse-dir"), "bafusion.cli.fusion"),
    "metrics": "bafusion.cli.metrics",
    "baseline": "bafusion.cli.baselines",
    "evaluate": "bafusion.cli.evaluate",
}

#: The long options of ``bafusion`` and of all its commands, without their ``--`` (checked
#: against the parsers by tests/test_cli_startup.py): words of bafusion's for
#: :func:`_known_words`, listed here since building the parsers imports torch.
_OPTION_NAMES = frozenset("""
    align allow-gray allow-unverified alpha alphamatting annotations annotations-checksum
    annotations-url apply backgrounds backgrounds-dir backoff base-url boundary
    boundary-fine-step boundary-mode boundary-per-pair boundary-step boundary-weight
    builtin-backgrounds builtin-foregrounds cache categories checkpoints checksum context count
    dataset dense-margin device diff-cmap exact exclude-categories exposure-fit-step
    exposure-match ext figure-pair fit flat-level flat-sigma force foregrounds format from-dir
    fuse-json help high holdout-backgrounds holdout-foregrounds image-base-url images-dir
    initial initial-grid-step initial-mode initial-step l label-threshold log low manifest
    match-output-exposure max-failures method methods metrics min-background-side min-defocused
    min-focused min-region min-sharpness min-side model models net no-compression noise-match
    no-match-output-exposure no-noise-match no-progress no-refine no-resume nproc out output oversample pairs
    params params-file params-json patch patches pattern per-pair plots precision prepared
    preset quality quiet realistic reference-methods report resolution restart-if-changed retries root
    save-maps save-registered scale scale-rule scales score-position seed set sets shard shards sigma
    skip-existing source split stack-rule summary symmetric-regions no-symmetric-regions threads threshold tile timeout tta unsure-confidence unsure-region
    val-fraction version workers
    working-above working-band working-min working-refine working-side
""".split())


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``bafusion fuse: error: ...``), exit 2;
    subcommand parsers inherit the class."""

    def error(self, message: str) -> None:  # type: ignore[override]
        message = one_line(message)
        self.exit(2, f"{self.prog}: error: {message}{self._did_you_mean(message)} (see {self.prog} --help)\n")

    def _did_you_mean(self, message: str) -> str:
        """A mistyped command or choice (``bafusion fus``), or an unknown option of this parser
        (``--fromat``): ``"; did you mean 'fuse'?"`` naming the closest (:func:`_close_name`), else
        ``""`` (Python 3.11's argparse suggests nothing)."""
        import re

        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if m:
            choices = re.findall(r"'([^']*)'", m.group(2)) or [c.strip() for c in m.group(2).split(",")]
            close = _close_name(m.group(1), choices)
            return f"; did you mean '{close}'?" if close else ""
        if message.startswith("unrecognized arguments: "):
            # compared without the leading "--": those two shared characters made --gpu "close"
            # to --output and --resize to --precision
            options = {s[2:]: s for a in self._actions for s in a.option_strings if s.startswith("--")}
            hints = []
            for word in message.split()[2:]:
                name = word.partition("=")[0]
                close = _close_name(name[2:], list(options)) if name.startswith("--") else None
                if close:
                    hints.append(f"{name}: did you mean {options[close]}?")
            return f"; {' '.join(hints)}" if hints else ""
        return ""

    def _print_message(self, message: str, file: Any = None) -> None:
        """argparse's, except that a failed write of the standard output (``--help > /dev/full``,
        a reader gone) is raised (:func:`_main` says it, as for ``--version``): argparse ignored
        it, and ``--help`` exited 0 having written nothing. Messages to stderr are argparse's, and
        so is a closed standard output (``--help >&-``: ``sys.stdout`` and ``file`` are ``None``;
        the help goes to stderr, as ``--version``'s line, see :func:`_main`)."""
        if not message or file is None or file is not sys.stdout:
            super()._print_message(message, file)
            return
        file.write(message)
        file.flush()

    def _get_option_tuples(self, option_string: str) -> list:  # type: ignore[override]
        """The options an abbreviation may mean, one per option: ``--ou`` matches ``--out`` and
        ``--output``, two spellings of one option, and is not "ambiguous" (argparse counts each
        spelling; an option has several since the commands share theirs, e.g. ``-o/--output/--out``)."""
        seen: set[int] = set()
        unique = []
        for t in super()._get_option_tuples(option_string):
            if id(t[0]) not in seen:
                seen.add(id(t[0]))
                unique.append(t)
        return unique


def _edits(a: str, b: str) -> int:
    """The fewest insertions, deletions, substitutions and swaps of neighbours that make ``a``
    into ``b`` (optimal string alignment distance)."""
    rows = [list(range(len(b) + 1))]
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            row[j] = min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], rows[-2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


def _abbreviates(short: str, long: str) -> bool:
    """Whether ``short`` is an abbreviation of ``long``: its letters in order in ``long``, the
    first one first, and at least half as many (``fmt``: ``format``; ``bf16``: ``bfloat16``)."""
    if len(short) < 3 or 2 * len(short) < len(long) or not long or short[0] != long[0]:
        return False
    rest = iter(long)
    return all(c in rest for c in short)


def _close_name(word: str, names: Sequence[str]) -> str | None:
    """The name a mistyped ``word`` most likely meant, else ``None``: of the names that are a
    typo away (one edit per four characters of ``word``, at least one: ``fromat``, ``methd``,
    ``fus``), that ``word`` begins (``prep``: ``prepare``) or that begin ``word`` as a word of
    it or at least half of it (``tile-size``, ``outdir``: ``tile``, ``out``; not ``outline``),
    whose last dash-separated words ``word``'s are (``cmap``: ``diff-cmap``), that ``word``
    abbreviates or that abbreviate it (``fmt``: ``format``; ``bfloat16``: ``bf16``; see
    :func:`_abbreviates`), or that difflib finds clearly close (a ratio of 0.75:
    ``output-dir``), the closest by difflib; not a name that differs from ``word`` in its
    first letter alone when ``word`` is itself a word of bafusion's (:func:`_known_words`:
    ``batch``, a parameter, is not a typo of ``patch``), while a first letter mistyped is
    (``nodel``: ``model``, ``guse``: ``fuse``). difflib alone, at its cutoff of 0.6, pointed
    ``--cores`` at ``--force`` (three letters of five in common)."""
    import difflib

    def near(n: str) -> bool:
        words, name_words = word.split("-"), n.split("-")
        if len(word) == len(n) > 1 and word[0] != n[0] and word[1:] == n[1:]:
            return word.replace("_", "-") not in _known_words()  # batch, patch: another word
        return (_edits(word, n) <= max(1, len(word) // 4)
                or (len(word) >= 3 and n.startswith(word))
                or (len(n) >= 3 and word.startswith(n) and (word[len(n):][:1] in ("-", "_") or 2 * len(n) >= len(word)))
                or (len(name_words) > len(words) and name_words[-len(words):] == words and len(word) >= 3)
                or _abbreviates(word, n) or _abbreviates(n, word)
                or difflib.SequenceMatcher(None, word, n).ratio() >= 0.75)

    close = difflib.get_close_matches(word, [n for n in names if near(n)], n=1, cutoff=0.0)
    return close[0] if close else None


@functools.lru_cache(maxsize=1)
def _known_words() -> frozenset[str]:
    """The words that name something in bafusion, dashes for underscores: its commands, the
    long options of all of them (:data:`_OPTION_NAMES`: ``--log``, train's, typed to ``fuse``),
    and the names of its parameters and of their sections (``batch``, ``fuse``,
    ``boundary-weight``); read from the parameter schema and that list (no command module is
    imported: those of some commands import torch, seconds for a one-line error). A typed word
    of these means that thing, and is no typo of a name one first letter away
    (:func:`_close_name`)."""
    words = set(COMMANDS) | _OPTION_NAMES
    with contextlib.suppress(Exception):  # for a hint only
        from bafusion.schema import leaf_keys

        for key in leaf_keys():
            words.update(part.replace("_", "-") for part in key.split("."))
    return frozenset(words)


def one_line(text: object) -> str:
    """``text`` on one line: line breaks and the blanks around them become one space."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def command_of(argv: Sequence[str]) -> str | None:
    """The command a command line names: its first word when that is a known command (the
    top-level parser has no option that takes a value), else ``None``."""
    first = next(iter(argv), None)
    return first if first in COMMANDS else None


def build_parser(command: str | None = None, *, names_only: bool = False) -> argparse.ArgumentParser:
    """The ``bafusion`` parser; with ``command``, only the subcommands of the module that
    registers it (the same parser for that command line, without importing the others); with
    ``names_only``, the commands' names (:data:`COMMANDS`) without their options, importing no
    command module: enough to refuse a command line whose first word is no command."""
    modules = (COMMANDS[command],) if command in COMMANDS else COMMAND_MODULES
    parser = Parser(
        prog="bafusion",
        description="Boundary-aware multi-focus image fusion: data pipeline, training, fusion, evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"bafusion {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    if names_only:
        for name in COMMANDS:
            sub.add_parser(name)
        return parser
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # that concern is not written yet
                continue
            raise
        module.register(sub)
    return parser


#: What the line of a stopped command adds: how to continue (set by the command, :func:`on_stop_say`).
_stop_advice: Callable[[], str | None] | None = None


def on_stop_say(advice: Callable[[], str | None] | None) -> None:
    """Have the line that says the command was stopped (Ctrl-C, SIGTERM, SIGHUP) add how to
    continue: ``advice()``, asked then (e.g. whether a checkpoint was saved meanwhile); ``None``
    (or an ``advice`` that returns ``None``) adds nothing. :func:`main` forgets it at its end."""
    global _stop_advice
    _stop_advice = advice


#: What :func:`main` calls once it has said how the command ended (:func:`at_command_end`), and
#: how many calls of :func:`main` are running (one that is not cannot call them).
_at_end: list[Callable[[], None]] = []
_mains_running = 0


def at_command_end(fn: Callable[[], None]) -> bool:
    """Have :func:`main` call ``fn`` once it has said how the command ended (its error line, or
    the line of a stop), as the last thing it does: ``train --log`` stops copying the output
    into its log then, so that the log holds that line too. ``False`` (``fn`` not kept) when no
    :func:`main` runs: the caller ends what ``fn`` would itself."""
    if _mains_running <= 0:
        return False
    _at_end.append(fn)
    return True


def _stop_line(cmd: str, said: str) -> str:
    try:
        advice = _stop_advice() if _stop_advice is not None else None
    except Exception:  # noqa: BLE001 - advice only
        advice = None
    return f"{cmd}: {said}" + (f"; {advice}" if advice else "")


#: The command that :func:`main` runs (named by the line of a held repeated stop), whether a stop
#: signal of it was held (:func:`_held_repeat`), and whether the exception of its stop was lost
#: (raised inside a ``__del__`` or a weakref callback: :func:`_quiet_stop_hook`).
_running_cmd = "bafusion"
_repeat_held = False
_stop_exception_lost = False


def _held_repeat(signum: int) -> bool:
    """Whether the stop signal ``signum`` repeats a stop under way and is held: the first
    repeat is, with a line saying that the command is still stopping; a second one is not (it
    stops the command at once). A second Ctrl-C pressed while the command cleaned up after the
    first (ending its MLflow run, removing its temporary outputs) raised in the middle of that
    cleanup and left the run RUNNING. Never held when the first stop's exception was lost: the
    command did not stop, and this signal stops it. A worker of ``train --nproc N`` holds it
    without a word: SLURM and systemd send SIGTERM to every process of the job, and the launcher
    sends its own to the workers, so each worker printed the line, telling to signal it again
    (the command speaks for its workers; the launcher kills the ones left after a grace time)."""
    global _repeat_held
    if stop_requested() is None or _stop_exception_lost or _repeat_held:
        return False
    _repeat_held = True
    if TRAIN_LAUNCHER_ENV in os.environ:
        return True
    again = "press Ctrl-C" if signum == signal.SIGINT else "send the signal"
    line = (f"{_running_cmd}: still stopping (cleaning up); {again} again to stop at once, leaving what is not "
            "cleaned up to its next run\n")
    with contextlib.suppress(OSError):  # not print: the stream may be in the middle of a write
        os.write(2, line.encode(errors="replace"))
    return True


def _exit_on_sigterm(signum: int, frame: object) -> None:
    if _held_repeat(signum):
        return
    request_stop(signum)
    raise SystemExit(128 + signum)


def _interrupt(signum: int, frame: object) -> None:
    if _held_repeat(signum):
        return
    request_stop(signum)
    raise KeyboardInterrupt


def _quiet_stop_hook(previous: object) -> object:
    """An ``sys.unraisablehook`` that drops the ``KeyboardInterrupt``/``SystemExit`` of a
    requested stop (a signal landing in a weakref callback or a ``__del__``: Python would print
    "Exception ignored in: ..." and a traceback before the one line "interrupted"); anything
    else, and any exception while no stop is requested, goes to ``previous``."""

    def hook(unraisable: object) -> None:
        exc_type = getattr(unraisable, "exc_type", None)
        if (stop_requested() is not None and isinstance(exc_type, type)
                and issubclass(exc_type, (KeyboardInterrupt, SystemExit))):
            global _stop_exception_lost
            _stop_exception_lost = True  # a repeated signal stops the command (_held_repeat)
            return
        previous(unraisable)  # type: ignore[operator]

    return hook


#: The signals turned into ``SystemExit(128 + N)`` (:func:`install_sigterm_handler`): SIGTERM, and
#: SIGHUP (the terminal closed, an ssh connection dropped), which ended the command silently with
#: 129, leaving its temporary folders and its MLflow run RUNNING.
_STOP_SIGNALS: tuple[int, ...] = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


def install_sigterm_handler() -> dict[int, object]:
    """Turn SIGTERM (``kill``, ``timeout``, Snakemake or SLURM stopping a job) and SIGHUP (the
    terminal closed, ssh dropped) into ``SystemExit(143)`` (``129``) so that ``finally`` blocks
    and context managers run: partial outputs
    are not renamed into place and the step's MLflow run ends as KILLED instead of staying
    RUNNING. SIGINT (Ctrl-C) still raises ``KeyboardInterrupt``. Both handlers also record the
    stop (:func:`bafusion.atomic.request_stop`): raised inside a weakref callback or a
    ``__del__`` (h5py's), the exception is only printed by Python and lost, and then no output
    is renamed into place and :func:`main` still exits 143 (130). Only from the main thread,
    and only over the default handlers. Returns the handlers it replaced, by signal (for
    :func:`main` to put back)."""
    replaced: dict[int, object] = {}
    if threading.current_thread() is not threading.main_thread():
        return replaced
    for signum in _STOP_SIGNALS:
        if signal.getsignal(signum) == signal.SIG_DFL:  # not over nohup's SIG_IGN
            replaced[signum] = signal.signal(signum, _exit_on_sigterm)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        replaced[signal.SIGINT] = signal.signal(signal.SIGINT, _interrupt)
    return replaced


#: In the environment of the processes that ``bafusion train --nproc N`` starts (its workers):
#: the pid of the launcher. The command speaks for its workers (:mod:`bafusion.cli.train`).
TRAIN_LAUNCHER_ENV = "BAFUSION_TRAIN_LAUNCHER_PID"

#: The outputs of the command that :func:`_run` saw finish (its exit's line names them, see
#: :func:`_exit_signal_handler`).
_finished_outputs: list[str] = []


def _exit_signal_handler(cmd: str, rc: int | None) -> Callable[[int, object], None]:
    """The handler of the stop signals while the ``bafusion`` process exits, its command done
    (``rc``: its status, None when it ended by an exception): Python's exit (MLflow's and torch's
    exit handlers, the teardown of their thousands of modules) takes a second, seconds under
    load, and a signal then killed the process without a word after its last line. It says in
    one line that the command had finished and its outputs were complete when the stop came (or
    had ended with status ``rc``), and ends the process at once with 128 + N, as the signal's own
    default action would have ended it (a stop asked for is a non-zero status, as while it works:
    Snakemake, SLURM and ``timeout`` see what they asked for; the line says that Snakemake, seeing a
    failed job, removes its outputs)
    A worker of ``train --nproc N`` ends so without a word: the launcher stops the workers when
    one of them ends, and the command says what happened."""
    worker = TRAIN_LAUNCHER_ENV in os.environ

    def handler(signum: int, frame: object) -> None:
        if worker:
            os._exit(128 + signum)
        said = {signal.SIGINT: "interrupted", getattr(signal, "SIGHUP", None): "hangup"}.get(signum, "terminated")
        if rc == 0:
            outputs = f" ({', '.join(_finished_outputs)})" if _finished_outputs else ""
            what = (f"it had finished: its outputs{outputs} were complete when the stop came (a workflow manager "
                    "such as Snakemake removes the outputs of a job that fails: rerun it there)")
        else:
            what = "it had ended" + (f" with status {rc} (said above)" if rc is not None else "")
        line = f"{cmd}: {said} while exiting, after {what}\n"
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed pipe, a stream replaced
                stream.flush()
        with contextlib.suppress(OSError):  # after a hangup the terminal may be gone (EIO)
            os.write(2, line.encode(errors="replace"))
        os._exit(128 + signum)

    return handler


def _exit_sooner() -> None:
    """The last exit handler of a ``bafusion`` process (registered first, by :func:`main`):
    collect the garbage there is now (its finalizers run, as at any exit), then freeze the rest
    (``gc.freeze``), so that Python's teardown of the modules does not walk the objects of
    torch's and MLflow's ~2600 modules in collection after collection: 0.75 s of the exit of a
    step that loaded both on an idle machine, seconds under load, and Python's own signal
    handlers are gone by then (a signal ends the process silently). Objects that only the
    teardown leaves unreachable in a cycle are not finalized: Python promises no more."""
    gc.collect()
    gc.freeze()


def _printable_anything() -> list[tuple[object, str]]:
    """Have stdout and stderr write a character their encoding lacks as a ``\\x..`` escape
    instead of raising: a path printed by a command (``fused ... into 日本.png``, a file name
    undecodable in the locale) to a cp1252 or ASCII stdout (Windows' redirected output, a legacy
    POSIX locale) failed the command with "internal error" after its work was done. The handler is
    :data:`bafusion.errors.READABLE_ERRORS`: a name's byte undecodable in the locale is written as
    that byte, ``\\xfd`` (stderr's ``backslashreplace`` wrote ``\\udcfd``), another character as
    ``\\u65e5``. A stream whose own handler is ``surrogateescape`` (stdout in the C or POSIX locale, in UTF-8 mode,
    or as ``PYTHONIOENCODING`` asks) takes :data:`bafusion.errors.NAME_BYTES_ERRORS`: the name's
    bytes as they are, so that a script reading the output to a file or a pipe gets the file's
    path (the text ``\\xfd`` named no file), and ``\\u65e5`` of a character its encoding lacks.
    Returns the streams changed, each with its ``errors`` before, for the caller to restore."""
    changed = []
    for stream in (sys.stdout, sys.stderr):
        errors = getattr(stream, "errors", None)
        if errors in ("strict", "backslashreplace", "surrogateescape"):
            with contextlib.suppress(AttributeError, ValueError, OSError):
                stream.reconfigure(  # type: ignore[union-attr]
                    errors=NAME_BYTES_ERRORS if errors == "surrogateescape" else READABLE_ERRORS)
                changed.append((stream, errors))
    return changed


def _reopen_closed_std_streams() -> None:
    """Open file descriptors 0, 1 and 2 on /dev/null where they are closed (``2>&-``, a daemon),
    so that no file the command opens takes their place, and give a closed stderr a stream: with
    ``sys.stderr`` None, ``print(..., file=sys.stderr)`` printed the command's warnings and errors
    to the standard output, into its result (``metrics --format json 2>&- > m.json``). A closed
    stdout stays ``None`` (its refusal by ``count``, ``metrics``, ``preset``: :func:`_run`)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            with contextlib.suppress(OSError):
                new = os.open(os.devnull, os.O_RDWR)
                if new != fd:
                    os.dup2(new, fd)  # inheritable, as a standard descriptor is
                    os.close(new)
                else:
                    os.set_inheritable(fd, True)  # the processes started here get it too
    if sys.stderr is None:
        with contextlib.suppress(OSError):
            sys.stderr = open(os.devnull, "w", encoding="utf-8", errors=READABLE_ERRORS)  # noqa: SIM115


def main(argv: Sequence[str] | None = None) -> int:
    # argv None: the process's own command (the `bafusion` script, python -m bafusion): its exit
    # is this command's too; a caller's (a test, a notebook) process goes on, as it was
    command_line = argv is None
    _reopen_closed_std_streams()
    if command_line:
        atexit.unregister(_exit_sooner)  # once: the first registered, so the last to run
        atexit.register(_exit_sooner)
    clear_stop()
    on_stop_say(None)
    _finished_outputs.clear()
    global _running_cmd, _repeat_held, _stop_exception_lost
    _repeat_held = _stop_exception_lost = False
    replaced = install_sigterm_handler()
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _quiet_stop_hook(previous_hook)  # type: ignore[assignment]
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = f"bafusion {command_of(argv) or ''}".rstrip()
    _running_cmd = cmd
    # stdout to a file (nohup, cron, a Snakemake log) is block-buffered: the one line per pair of
    # evaluate and fuse-set showed up at the end of a long run; line by line while the command runs
    stdout, line_buffered = sys.stdout, getattr(sys.stdout, "line_buffering", None)
    if line_buffered is False:
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stdout.reconfigure(line_buffering=True)
    strict = _printable_anything()
    # Ctrl-C at any time, also while the parser is built (the modules of some commands import
    # torch: a second or two), is one line, not a traceback
    rc: int | None = None
    global _mains_running
    _mains_running += 1
    try:
        try:
            rc = _main(argv)
        except KeyboardInterrupt:
            if stop_requested() is None:  # else said by _stopped
                print(_stop_line(cmd, "interrupted"), file=sys.stderr)
            rc = 130
        except SystemExit as e:
            if stop_requested() is None:  # argparse's exits
                rc = e.code if isinstance(e.code, int) else None
                raise
            rc = 0  # the status is _stopped's
        except BaseException:
            # a signal raised inside a C-level import (numpy's, torch's, while the parser is built)
            # comes out as another exception: "cannot load module more than once", a RecursionError
            # or AttributeError of the half-initialised module; after a stop, it is the stop
            if stop_requested() is None:
                raise
            rc = 0  # the status is _stopped's
        rc = _stopped(cmd) or rc
        return rc
    finally:
        for signum, handler in replaced.items():
            # the command's own process: a stop signal while it exits says that it had finished;
            # one that goes on (a notebook, a test): its own handlers are back
            signal.signal(signum, _exit_signal_handler(cmd, rc) if command_line else handler)  # type: ignore[arg-type]
        # a stop recorded here no longer refuses the later writes of a process that goes on
        clear_stop()
        on_stop_say(None)
        sys.unraisablehook = previous_hook
        if line_buffered is False:
            with contextlib.suppress(AttributeError, ValueError, OSError):
                stdout.reconfigure(line_buffering=False)
        for stream, errors in strict:
            with contextlib.suppress(AttributeError, ValueError, OSError):
                stream.reconfigure(errors=errors)  # type: ignore[attr-defined]
        _mains_running -= 1
        while _at_end:
            with contextlib.suppress(Exception):
                _at_end.pop()()


#: The modules whose commands run torch (and need
#: :data:`bafusion.fusion.memory.MIN_ADDRESS_SPACE_MIB` of address space to run) ...
_TORCH_MODULES = frozenset({"bafusion.cli.train", "bafusion.cli.fusion", "bafusion.cli.evaluate"})
#: ... and of them, those that import torch to build their options, so also for ``--help``
#: (:data:`bafusion.fusion.memory.MIN_ADDRESS_SPACE_LOAD_MIB`; ``evaluate`` loads it to run).
_TORCH_AT_LOAD_MODULES = frozenset({"bafusion.cli.train", "bafusion.cli.fusion"})
#: Every command runs numpy (``preset`` too: checking params loads matplotlib) and needs
#: :data:`bafusion.fusion.memory.MIN_ADDRESS_SPACE_NUMPY_MIB` of address space to run; the
#: modules that load numpy and scipy to build their options need it also for ``--help`` (below it,
#: ``metrics --help`` hung at 210-250 MiB while scipy's OpenBLAS retried its allocations).
_NUMPY_AT_LOAD_MODULES = frozenset({"bafusion.cli.download", "bafusion.cli.metrics", "bafusion.cli.baselines"})


def _numpy_refusal(cmd: str, limit: int) -> str:
    from bafusion.fusion.memory import MIN_ADDRESS_SPACE_NUMPY_MIB

    return (f"{cmd}: error: the address-space limit (ulimit -v / prlimit --as) of {limit} MiB is too small to "
            f"load numpy, scipy and h5py: it needs at least {MIN_ADDRESS_SPACE_NUMPY_MIB} MiB of address space "
            "(more on a machine of more cores: OpenBLAS maps memory for each of its threads): raise or lift the "
            "limit")


def _address_space_refusal(cmd: str, limit: int, need: int, what: str) -> str:
    from bafusion.fusion.memory import ALIGN_BASE_MIB, ALIGN_MIB_PER_MEGAPIXEL, BASE_MIB, MIB_PER_MEGAPIXEL

    return (f"{cmd}: error: the address-space limit (ulimit -v / prlimit --as) of {limit} MiB is too small to "
            f"{what}: it needs at least {need} MiB of address space, and a fusion far more than its resident "
            f"estimate (~{BASE_MIB} MiB + {MIB_PER_MEGAPIXEL} MiB per megapixel, ~{ALIGN_BASE_MIB} MiB + "
            f"{ALIGN_MIB_PER_MEGAPIXEL} MiB per megapixel with --align, more with more --threads): raise or lift "
            "the limit")


def _loading_out_of_memory(e: BaseException) -> bool:
    """Whether loading the command's modules failed for want of memory: a ``MemoryError``, or
    an ``ImportError`` of a shared library that could not be mapped (an address-space limit)."""
    if isinstance(e, MemoryError):
        return True
    text = str(e).lower()
    # "cannot allocate memory in static TLS block" (libgomp on aarch64) is not a memory
    # shortage: its fix is LD_PRELOAD, and its traceback says so better than we could
    return isinstance(e, ImportError) and "static tls" not in text and (
        "failed to map segment" in text or "cannot allocate memory" in text)


def _main(argv: list[str]) -> int:
    from bafusion.fusion.memory import (
        MIN_ADDRESS_SPACE_LOAD_MIB,
        MIN_ADDRESS_SPACE_MIB,
        MIN_ADDRESS_SPACE_NUMPY_MIB,
        address_space_limit_mib,
        address_space_note,
    )

    command = command_of(argv)
    cmd = f"bafusion {command or ''}".rstrip()
    if command is None and "--version" in argv:  # needs no command module (and no torch)
        try:  # stdout closed (`bafusion --version >&-`): to stderr, as argparse does with --help
            print(f"bafusion {__version__}", file=sys.stdout if sys.stdout is not None else sys.stderr, flush=True)
        except OSError as e:
            return _stdout_failed(cmd, e)
        return 0
    if command is None and (not argv or not argv[0].startswith("-")):
        # no command, or an unknown one (`bafusion fus`): refused by the commands' names alone,
        # without importing their modules (torch: seconds, to print one line)
        parser = build_parser(names_only=True)
        parser.parse_known_args(argv)  # exits 2: "invalid choice: 'fus' ...; did you mean 'fuse'?"
    modules = {COMMANDS[command]} if command in COMMANDS else set(COMMAND_MODULES)
    limit = address_space_limit_mib()
    if limit is not None and limit < MIN_ADDRESS_SPACE_LOAD_MIB and modules & _TORCH_AT_LOAD_MODULES:
        # below it, loading torch fails with a traceback, a C++ abort or OpenBLAS's message, or hangs
        print(_address_space_refusal(cmd, limit, MIN_ADDRESS_SPACE_LOAD_MIB,
                                     "load torch (which this command's options, --help included, import)"),
              file=sys.stderr)
        return 1
    if limit is not None and limit < MIN_ADDRESS_SPACE_NUMPY_MIB and modules & _NUMPY_AT_LOAD_MODULES:
        # checked before the modules load numpy and scipy: below it that raised SIGINT, failed
        # with "out of memory loading the program" or OpenBLAS's message, or hung (SIGTERM unheard)
        print(_numpy_refusal(cmd, limit), file=sys.stderr)
        return 1
    try:
        parser = build_parser(command)
    except (MemoryError, ImportError) as e:
        if not _loading_out_of_memory(e):
            raise
        print(f"{cmd}: error: out of memory loading the program ({one_line(e)[:200] or type(e).__name__}): "
              f"free memory{'; ' + address_space_note() if limit is not None else ''}", file=sys.stderr)
        return 1
    try:
        args, extra = parser.parse_known_args(argv)
    except OSError as e:  # --help's write of the standard output (Parser._print_message)
        return _stdout_failed(cmd, e)
    if extra:  # said by the command's parser: "bafusion fuse-dir: error: ... (see bafusion fuse-dir --help)"
        subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        subs.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    cmd = f"bafusion {args.command}"
    from bafusion.progress import set_command

    set_command(cmd)  # named by its plain lines of progress in a log
    from bafusion.checkout import other_code_problem

    # a pipeline job (the Snakefile names its checkout) that imported another bafusion: python -E
    # or -I ignores the PYTHONPATH the Snakefile sets, a container may not see the checkout
    problem = other_code_problem()
    if problem is not None:
        text, refused = problem
        print(f"{cmd}: {'error' if refused else 'warning'}: {text}", file=sys.stderr, flush=True)
        if refused:
            return 2
    if limit is not None and limit < MIN_ADDRESS_SPACE_MIB and COMMANDS.get(args.command) in _TORCH_MODULES:
        # checked once --help and the arguments are through (they need less): below it, the
        # command runs out of memory loading the rest of its libraries or at its first tensor
        print(_address_space_refusal(cmd, limit, MIN_ADDRESS_SPACE_MIB, "run torch"), file=sys.stderr)
        return 1
    if limit is not None and limit < MIN_ADDRESS_SPACE_NUMPY_MIB:
        # below it, loading numpy fails as OpenBLAS cannot start its threads: it raised SIGINT
        # ("interrupted", status 130), aborted with its own message, or the command hung
        print(_numpy_refusal(cmd, limit), file=sys.stderr)
        return 1
    try:
        with _own_warnings_said(cmd):
            return _finish_stdout(cmd, _run_dropping_lost_lines(cmd, args))
    finally:
        set_command("bafusion")  # main called in a process that goes on (a test, a notebook)


@contextlib.contextmanager
def _own_warnings_said(cmd: str) -> Any:
    """While a command runs, a ``UserWarning`` that bafusion's own code issues (the fusion's
    ``fuse.max_tile`` and ``fuse.boundary_fine_step`` warnings of :mod:`bafusion.fusion.scoring`,
    which library callers get as warnings) is said as the command's other warnings are, one line
    ``bafusion <cmd>: warning: <text>``: Python's format printed the module's path, line number
    and source line. A warning is bafusion's by the file it is attributed to: one that torch
    issues from its C++ code at a line of bafusion (``torch.from_numpy`` of a read-only array:
    "The given NumPy array is not writable, ...") is said so too, as are those a library's
    ``stacklevel`` puts there. Other warnings (torch's Python ones from its own files, ...) keep
    Python's format; so does a warning recorded by a caller (``warnings.catch_warnings(record=True)``, ``pytest.warns``): only
    Python's own printing is replaced, and the previous one is restored after."""
    import warnings

    package = str(Path(__file__).resolve().parents[1]) + os.sep
    previous = warnings.showwarning

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        mine = issubclass(category, UserWarning) and str(Path(filename).resolve()).startswith(package)
        # a caller's catch_warnings(record=True) (pytest's too) puts its list's append there
        recorded = getattr(warnings._showwarnmsg_impl, "__module__", None) != "warnings"  # type: ignore[attr-defined]
        if not mine or recorded:
            previous(message, category, filename, lineno, file, line)
            return
        with contextlib.suppress(OSError, ValueError, AttributeError):
            print(f"{cmd}: warning: {one_line(message)}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():  # restores showwarning (and the filters) after
        warnings.showwarning = show
        yield


class _LineSink:
    """``sys.stdout`` while a command whose products are files runs: a write of its lines
    (progress, a summary) that fails (``> /dev/full``, a log on a full disk) is said once on
    stderr, naming the standard output, and the lines are dropped from then on while the work
    goes on (the failure had been blamed on the output, "F.png: No space left on device", and
    evaluate and fuse-set discarded their output folder at their first line). A reader gone
    (``BrokenPipeError``) still stops the command, as any Unix tool."""

    def __init__(self, stream: Any, cmd: str) -> None:
        self.stream = stream
        self.cmd = cmd
        self.failed: OSError | None = None
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)

    def write(self, text: str) -> int:
        if self.failed is None:
            try:
                return self.stream.write(text)
            except BrokenPipeError:
                raise
            except OSError as e:
                self._fail(e)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self.failed is None:
            try:
                self.stream.flush()
            except BrokenPipeError:
                raise
            except OSError as e:
                self._fail(e)

    def _fail(self, e: OSError) -> None:
        with self._lock:
            if self.failed is not None:
                return
            self.failed = e
        _drop_stdout(self.stream)  # what its buffer holds goes nowhere, also at Python's exit
        with contextlib.suppress(Exception):
            print(f"{self.cmd}: error: {os.strerror(e.errno) if e.errno else one_line(e)} (writing the standard "
                  "output): what it prints there is dropped from now on; the command goes on and keeps its "
                  "outputs, and ends with a non-zero status", file=sys.stderr, flush=True)


def _run_dropping_lost_lines(cmd: str, args: argparse.Namespace) -> int:
    """:func:`_run`, with the lines of a command whose products are files dropped once the
    standard output fails (:class:`_LineSink`): its status then 2 where it would have been 0."""
    if _result_on_stdout(args) is not None or sys.stdout is None:
        return _run(cmd, args)
    sink = _LineSink(sys.stdout, cmd)
    sys.stdout = sink  # type: ignore[assignment]
    try:
        rc = _run(cmd, args)
    finally:
        if sys.stdout is sink:
            sys.stdout = sink.stream
    return 2 if rc == 0 and sink.failed is not None else rc


def _result_on_stdout(args: argparse.Namespace) -> str | None:
    """What the command ``args`` names prints as its result, the standard output being its only
    output (``count``, ``metrics``, ``preset`` without ``--apply``), else None: the others write
    files, and what they print (progress, a summary, evaluate's copy of its table1.md) is lost
    when stdout is closed while their work goes on."""
    command = getattr(args, "command", None)
    if command == "preset" and not getattr(args, "apply", None):
        return "the preset"
    return {"count": "the counts", "metrics": "the metrics"}.get(command)


def _stdout_fails() -> bool:
    """Whether the standard output holds lines it cannot write (a failed write leaves them in
    its buffer: flushing fails again); False when it is fine, closed or None."""
    stream = sys.stdout
    if stream is None:
        return False
    try:
        stream.flush()
    except OSError:
        return True
    except ValueError:  # closed
        return False
    return False


def _finish_stdout(cmd: str, rc: int) -> int:
    """Flush what the command printed: a write that fails only now (the last lines still in the
    buffer) is said as any failed write of the standard output (:func:`_stdout_failed`), and
    after a failure already said, the stream is dropped so that Python's flush at exit does not
    fail again ("Exception ignored ... OSError", status 120)."""
    stream = sys.stdout
    if stream is None:
        return rc
    try:
        stream.flush()
    except ValueError:  # closed by the command or a test: nothing buffered to lose
        return rc
    except OSError as e:
        if rc != 0:  # said already: the command's own error, or this stream's
            _drop_stdout()
            return rc
        return _stdout_failed(cmd, e)
    return rc


def _stdout_failed(cmd: str, e: OSError) -> int:
    """Say that writing the standard output of ``--version`` or ``--help`` failed: a reader
    gone (``| true``) ends silently with 128 + SIGPIPE, as any Unix tool; another error
    (``> /dev/full``) is one line, as every command's writes to stdout, and status 2."""
    _drop_stdout()
    if isinstance(e, BrokenPipeError):
        return 128 + _SIGPIPE
    print(f"{cmd}: error: {os.strerror(e.errno) if e.errno else one_line(e)} (writing the standard output)",
          file=sys.stderr)
    return 2


def _stopped(cmd: str) -> int | None:
    """When a signal asked the command to stop (its exception may have been lost, see
    :func:`install_sigterm_handler`): say so, and the exit status (130 for SIGINT, 128 + N)."""
    signum = stop_requested()
    if signum is None:
        return None
    said = {signal.SIGINT: "interrupted", getattr(signal, "SIGHUP", None): "hangup: stopped"}.get(signum, "terminated")
    with contextlib.suppress(OSError, ValueError):  # after a hangup the terminal may be gone (EIO)
        print(_stop_line(cmd, said), file=sys.stderr)
    return 128 + signum


#: OSErrors that are the machine's (the disk, the permissions), also without a file name.
_MACHINE_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO,
                             errno.EFBIG})
#: ... of them, those only a write raises (the others may come from reading an input).
_WRITE_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EROFS, errno.EFBIG})


#: SIGPIPE's number, for the status of a command whose reader has gone (141, as Unix tools
#: exit); Windows' ``signal`` has no SIGPIPE (``signal.SIGPIPE`` raised AttributeError there).
_SIGPIPE = getattr(signal, "SIGPIPE", 13)


def _run(cmd: str, args: argparse.Namespace) -> int:
    """Run the parsed command: its exit status, its errors said in one line (see the module docstring)."""
    from bafusion.preflight import check_command

    what = _result_on_stdout(args)
    if what is not None and sys.stdout is None:  # `bafusion count >&-`: it exited 0 having written nothing
        print(f"{cmd}: error: the standard output is closed (>&-): {what} would be written nowhere; redirect it to "
              "a file or a pipe instead", file=sys.stderr)
        return 2
    try:
        check_command(args)
        rc = int(args.func(args) or 0)
        with contextlib.suppress(Exception):  # named by a signal's line while the process exits, if any
            from bafusion.preflight import output_paths

            _finished_outputs[:] = output_paths(args)
        return rc
    except UserError as e:
        print(f"{cmd}: error: {shown_path(one_line(e))}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `bafusion count | head -3`: the reader has gone, as for any Unix tool
        _drop_stdout()
        return 128 + _SIGPIPE
    except OSError as e:
        if e.filename is None and e.errno in _WRITE_ERRNOS and _stdout_fails():
            # the standard output of count, metrics, preset (the lines of the commands that write
            # files: _LineSink), not the output file that the lines below would have named
            print(f"{cmd}: error: {os.strerror(e.errno)} (writing the standard output)", file=sys.stderr)
            return 2
        if e.filename is None and e.errno in _MACHINE_ERRNOS:  # h5py's, Pillow's: no file name
            from bafusion.preflight import output_paths

            outs = output_paths(args)
            if e.errno in _WRITE_ERRNOS:  # only a write fails so: the output
                where = f"{outs[0]}: " if len(outs) == 1 else ""
                writing = f" (writing {', '.join(outs)})" if len(outs) > 1 else ""
                if not outs:  # count, metrics > /dev/full: what they write is the standard output
                    writing = " (writing the standard output)"
            else:  # permissions, I/O: a file read as well as one written
                where, writing = "", f" (reading the inputs or writing {', '.join(outs) or 'the outputs'})"
            print(f"{cmd}: error: {where}{os.strerror(e.errno)}{writing}", file=sys.stderr)
            return 2
        if e.filename is None:
            return _internal_error(cmd)
        # a file inside an output's temporary folder (.<out>.part-<random>) is told by the output's path
        name = _shown_filename(e.filename)
        if e.filename2 is not None and _shown_filename(e.filename2) != name:  # a rename of the temporary file
            name = f"{name} -> {_shown_filename(e.filename2)}"  # onto the output: the output once
        print(f"{cmd}: error: {name}: {shown_path(one_line(e.strerror or e))}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a bug: keep the traceback, say so
        # numpy's MemoryError, torch's RuntimeErrors; a library imported on the way that
        # cannot be mapped ("failed to map segment": an address-space limit)
        if is_out_of_memory(e) or _loading_out_of_memory(e):
            # the machine, not a bug: one line
            print(f"{cmd}: error: out of memory ({one_line(e)[:200] or type(e).__name__}): "
                  f"{_memory_advice(args)}", file=sys.stderr)
            return 1
        return _internal_error(cmd)


def _shown_filename(filename: object) -> str:
    """An OSError's ``filename`` as the message names it: a path inside an output's temporary
    folder by the output's path; a file descriptor (``os.stat(fd)`` sets an int) as it is."""
    if isinstance(filename, (str, bytes, os.PathLike)):
        return shown_path(os.fsdecode(filename))
    return str(filename)


def _memory_advice(args: argparse.Namespace) -> str:
    """What lowers the memory of the command ``args`` names (a fusion: the full-size images, with
    what the shots of ``fuse`` need; train: the batch; else more memory or another device)."""
    from bafusion.fusion.memory import address_space_note

    note = address_space_note()
    return "; ".join(x for x in (_command_memory_advice(args), note) if x)


def _command_memory_advice(args: argparse.Namespace) -> str:
    command = getattr(args, "command", None)
    if command in ("fuse", "fuse-dir", "fuse-set", "evaluate"):
        from bafusion.fusion.memory import fuse_advice

        shots = [Path(p) for p in getattr(args, "images", None) or []] if command == "fuse" else []
        # --align auto may align (its estimate is the larger one): the peak it may reach
        advice = fuse_advice(shots, align=(getattr(args, "align", None) or "none") != "none",
                             save_maps=command == "fuse" and bool(getattr(args, "save_maps", None)),
                             params=getattr(args, "fusion_params", None))  # fuse's, once read (--working-side 0)
        if command == "evaluate":
            advice += "; --dataset NAME=... with --pattern evaluates fewer pairs, --methods fewer methods"
        return advice
    if command == "train":
        return ("lower train.batch (--set train.batch=N; train.val_batch for the validation passes), or train on "
                "another device")
    return "free memory, or run it on a machine with more"


def _drop_stdout(stream: Any = None) -> None:
    """Point stdout (or ``stream``) at /dev/null, so that Python's flush at exit does not fail on
    the closed pipe again ("Exception ignored ... BrokenPipeError")."""
    try:
        fd = (sys.stdout if stream is None else stream).fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a test or a notebook: nothing to do
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _internal_error(cmd: str) -> int:
    if stop_requested() is not None:  # the stop's consequence, not a bug: main says the stop
        return 0
    traceback.print_exc()
    exc = sys.exc_info()[1]
    print(f"{cmd}: internal error (a bug in bafusion, not in your input): {type(exc).__name__}: "
          f"{one_line(exc)[:300]}; please report it with the traceback above", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
