"""When to draw progress bars, and what a long step prints instead in a log.

A tqdm bar redraws its line with carriage returns: readable on a terminal, clutter in a log
file (Snakemake and DVC send each step's output to ``logs/<step>.log``). Bars are drawn only
when stderr is a terminal; otherwise the long steps print one line per unit of work (training:
one line per epoch, see :mod:`bafusion.nets.train`; ``fuse-dir``: one per stack; ``fuse``,
``fuse-dir`` and ``fuse-set``: one per step of camera-size shots), and the steps whose units
are many and short (``prepare``, ``composite``, ``testset``, ``patches``, the downloads), a
training's epoch and a large pair's fusion a plain line at most every
:data:`PLAIN_INTERVAL_S` seconds (:func:`bar_options`): none for a step that ends sooner. Each
plain line starts with the local time and the command (:func:`log_prefix`), so that a log of a
run of hours says when it was written: ``2026-12-06T15:44:16 bafusion composite: composite shard
0: 28% 120/432 pair [...]``. So do, where stderr is a log, the other lines on stderr that say
what a long step does (train's start, resume and end lines, fuse-set's seconds per pair, what
``--align`` did with each shot: :func:`stamped`); error, warning and note lines do not (they start with the command and the
problem). Nor does anything printed on stdout: the results there (train's result line,
fuse-set's and evaluate's line per pair, a step's summary) are for the program that reads them
(``out=$(bafusion train ...)``, a pipe, a file) and stay the same from run to run.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from typing import Any

#: Seconds between two plain lines of a step's progress in a log (:func:`bar_options`); the
#: first comes after as long, so a step shorter than that prints none.
PLAIN_INTERVAL_S = 30.0
#: The plain line: ``composite shard 0: 28% 120/432 pair [00:41<01:47, 2.93pair/s]``.
PLAIN_FORMAT = "{desc}: {percentage:.0f}% {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
#: The plain line of a step whose size is not known (a download without Content-Length):
#: ``download x.zip: 3.1M B [00:41, 77.4kB/s]``, no share done nor time left.
PLAIN_FORMAT_UNSIZED = "{desc}: {n_fmt} {unit} [{elapsed}, {rate_fmt}{postfix}]"

#: The command whose plain lines these are (:func:`set_command`; ``bafusion`` outside the CLI).
_command = "bafusion"


def set_command(name: str) -> None:
    """Name the command that runs (``bafusion composite``): its plain lines in a log say it.

    Parameters
    ----------
    name : str
        The command as a user types it, without its arguments.
    """
    global _command
    _command = str(name)


def log_prefix() -> str:
    """What a plain line of progress in a log starts with: the local time (ISO 8601, to the
    second) and the command, ``2026-12-06T15:44:16 bafusion composite:``.

    Returns
    -------
    str
        The prefix, without a space after it.
    """
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {_command}:"


def in_log(line: str) -> str:
    """A line of progress that names its command (``bafusion train: initial epoch 3/40 ...``) as
    printed on stderr: after the local time where stderr is a log, unchanged on a terminal.

    Parameters
    ----------
    line : str
        The line, without its newline.

    Returns
    -------
    str
        ``2026-12-06T15:44:16 bafusion train: ...`` off a terminal, ``line`` on one.
    """
    return line if stderr_is_terminal() else f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}"


#: A line that names its command already (``bafusion train: ...``, ``bafusion: ...``).
_NAMED = re.compile(r"bafusion(?: [\w-]+)?: ")


def stamped(line: str, stream: Any = None) -> str:
    """An informational line of a long command on stderr (train's start and end, fuse-set's
    seconds per pair) as printed there: where stderr is a log, after the local time and the
    command, as the plain lines of progress (``2026-12-06T15:44:16 bafusion train: initial done:
    ...``; a line that names its command already gets the time only); unchanged on a terminal.
    Not for error, warning or note lines (they start with the command and the problem), nor for
    a result printed on stdout: that is for the program that reads it (``out=$(bafusion train
    ...)``, a pipe, a file) and is printed as it is.

    Parameters
    ----------
    line : str
        The line, without its newline.
    stream : file-like, optional
        The stream of a log or a terminal it is printed on, ``sys.stderr`` by default (never
        ``sys.stdout``: results are not stamped).

    Returns
    -------
    str
        The line as printed there.
    """
    stream = sys.stderr if stream is None else stream
    if stderr_is_terminal() if stream is sys.stderr else _is_terminal(stream):
        return line
    if _NAMED.match(line):
        return f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}"
    return f"{log_prefix()} {line}"


def stderr_is_terminal() -> bool:
    """Whether stderr is an interactive terminal that can redraw a bar: False for a pipe, a file,
    a closed stream, and for a terminal with ``TERM=dumb`` (Emacs' shell, some CI consoles:
    a carriage return does not go back) or of no width (a pseudo-terminal whose size is not set,
    as script(1) in a batch job gives: tqdm draws nothing there), which get a log's lines."""
    return _is_terminal(sys.stderr)


def _is_terminal(stream: Any) -> bool:
    """:func:`stderr_is_terminal` of ``stream``."""
    try:
        if not stream.isatty():
            return False
    except (AttributeError, ValueError):  # replaced or closed stream
        return False
    if os.environ.get("TERM", "").strip().lower() == "dumb":
        return False
    try:
        return os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, ValueError, OSError):  # no size to ask for: taken as a terminal
        return True


def fd_is_terminal(fd: int) -> bool:
    """:func:`stderr_is_terminal` of the file descriptor ``fd``: the console that ``train --log``
    copies stderr to (its own stderr is then a pipe).

    Parameters
    ----------
    fd : int
        An open file descriptor.

    Returns
    -------
    bool
        Whether ``fd`` is an interactive terminal that can redraw a bar (not ``TERM=dumb``, of
        a width).
    """
    try:
        if not os.isatty(fd):
            return False
    except OSError:
        return False
    if os.environ.get("TERM", "").strip().lower() == "dumb":
        return False
    try:
        return os.get_terminal_size(fd).columns > 0
    except OSError:  # no size to ask for: taken as a terminal
        return True


#: The time :func:`stamped` and :func:`in_log` put before a line that names its command, in a log.
STAMP = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d (?=bafusion)")
#: What a stamped line starts with, ``0`` for a digit: a line's start shorter than this that
#: matches it so far may still be a stamp (:class:`Unstamped`).
_STAMP_SHAPE = b"0000-00-00T00:00:00 bafusion"


class Unstamped:
    """The lines of a log's stream as a terminal shows them: the time that starts a stamped line
    (:data:`STAMP`) dropped. ``train --log`` copies its stderr, a pipe, to the log as it is and,
    through this, to a terminal it was run on: there its lines read as without ``--log``.

    Bytes are fed as they come (:meth:`feed`); a line's start that may still turn out to be a
    stamp is held back until it is whole enough to tell (at most 28 bytes, never past a newline),
    and given by :meth:`flush` at the end.
    """

    def __init__(self) -> None:
        self.held = b""
        self.at_start = True

    def feed(self, data: bytes) -> bytes:
        """The bytes ``data`` without the stamps of the lines that start in them.

        Parameters
        ----------
        data : bytes
            What was written next to the stream.

        Returns
        -------
        bytes
            What to show now (a line's start that may be a stamp is held back).
        """
        buf, self.held = self.held + data, b""
        out: list[bytes] = []
        i = 0
        while i < len(buf):
            if self.at_start:
                m = STAMP.match(buf, i)
                if m:
                    i = m.end()
                elif _may_be_stamp(buf[i:]):
                    self.held = buf[i:]
                    break
                self.at_start = False
                continue
            nl = buf.find(b"\n", i)
            if nl < 0:
                out.append(buf[i:])
                break
            out.append(buf[i:nl + 1])
            i = nl + 1
            self.at_start = True
        return b"".join(out)

    def flush(self) -> bytes:
        """What is still held back (the stream ended on a line's start).

        Returns
        -------
        bytes
            Those bytes, as written.
        """
        held, self.held = self.held, b""
        return held


def _may_be_stamp(start: bytes) -> bool:
    """Whether the line's start ``start`` (shorter than a stamped line's :data:`_STAMP_SHAPE`)
    may still become one."""
    if len(start) >= len(_STAMP_SHAPE):
        return False
    return all(0x30 <= b <= 0x39 if s == ord("0") else b == s for b, s in zip(start, _STAMP_SHAPE))


def bars_enabled(progress: bool = True) -> bool:
    """Whether to draw a progress bar: ``progress`` asked for and stderr a terminal."""
    return bool(progress) and stderr_is_terminal()


class _PlainLines:
    """A file for tqdm that writes each of its redraws (``\\r`` + the line) as a line of its own."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> None:
        for part in str(text).split("\r"):
            line = part.strip()
            # the end's line says the count of the last step's line again, with another rate
            # (tqdm's average against the smoothed one): one line per count
            count = line.split(" [", 1)[0]
            if line and count != self.last:
                self.last = count
                with contextlib.suppress(OSError, ValueError):  # the log gone: the step goes on
                    self.stream.write(f"{log_prefix()} {line}\n")
                    self.stream.flush()

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()


def bar_options(progress: bool = True, *, fractional: bool = False, sized: bool = True,
                **terminal: Any) -> dict[str, Any]:
    """The keyword arguments of a ``tqdm`` bar of a long step.

    Parameters
    ----------
    progress : bool
        Whether progress is asked for (False: ``--no-progress``/``--quiet``, nothing is shown).
    fractional : bool
        The bar advances by fractions of a step: its plain line shows the count with one
        decimal (``3.4/4``).
    sized : bool
        The bar's total is known; False (a download of unknown size): the plain line says the
        count, the time spent and the rate (:data:`PLAIN_FORMAT_UNSIZED`), no share nor time left.
    **terminal
        The bar's own options on a terminal (``leave``, ``mininterval``, ``file``, ...).

    Returns
    -------
    dict
        On a terminal: ``terminal``, the bar drawn. Elsewhere (a log, a pipe) with ``progress``:
        options that make tqdm write a plain line (:data:`PLAIN_FORMAT` after
        :func:`log_prefix`, no carriage return) at most every :data:`PLAIN_INTERVAL_S` seconds, the first after as long, and one at
        the end of a step that wrote any. Without ``progress``, or with stderr closed: the
        bar disabled.
    """
    if bars_enabled(progress):
        return {**terminal, "disable": False}
    if not progress or sys.stderr is None:
        return {**terminal, "disable": True}
    fmt = PLAIN_FORMAT if sized else PLAIN_FORMAT_UNSIZED
    fmt = fmt.replace("{n_fmt}", "{n:.1f}") if fractional else fmt
    return {"disable": False, "file": _PlainLines(sys.stderr), "ascii": True, "bar_format": fmt,
            "mininterval": PLAIN_INTERVAL_S, "delay": PLAIN_INTERVAL_S, "miniters": 1, "leave": True}
