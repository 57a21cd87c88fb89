"""When to draw progress bars, and what a long step prints instead in a log.

A tqdm bar redraws its line with carriage returns: readable on a terminal, clutter in a log
file (Snakemake and DVC send each step's output to ``logs/<step>.log``). Bars are drawn only
when stderr is a terminal; otherwise the long steps print one line per unit of work (training:
one line per epoch, see :mod:`bafusion.nets.train`; ``fuse-dir``: one per stack), and the
steps whose units are many and short (``prepare``, ``composite``, ``testset``, ``patches``, the
downloads) a plain line at most every :data:`PLAIN_INTERVAL_S` seconds (:func:`bar_options`):
none for a step that ends sooner.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

#: Seconds between two plain lines of a step's progress in a log (:func:`bar_options`); the
#: first comes after as long, so a step shorter than that prints none.
PLAIN_INTERVAL_S = 30.0
#: The plain line: ``composite shard 0: 28% 120/432 pair [00:41<01:47, 2.93pair/s]``.
PLAIN_FORMAT = "{desc}: {percentage:.0f}% {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def stderr_is_terminal() -> bool:
    """Whether stderr is an interactive terminal (False for a pipe, a file, a closed stream)."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def bars_enabled(progress: bool = True) -> bool:
    """Whether to draw a progress bar: ``progress`` asked for and stderr a terminal."""
    return bool(progress) and stderr_is_terminal()


class _PlainLines:
    """A file for tqdm that writes each of its redraws (``\\r`` + the line) as a line of its own."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        for part in str(text).split("\r"):
            line = part.strip()
            if line:
                with contextlib.suppress(OSError, ValueError):  # the log gone: the step goes on
                    self.stream.write(line + "\n")
                    self.stream.flush()

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()


def bar_options(progress: bool = True, **terminal: Any) -> dict[str, Any]:
    """The keyword arguments of a ``tqdm`` bar of a long step.

    Parameters
    ----------
    progress : bool
        Whether progress is asked for (False: ``--no-progress``/``--quiet``, nothing is shown).
    **terminal
        The bar's own options on a terminal (``leave``, ``mininterval``, ``file``, ...).

    Returns
    -------
    dict
        On a terminal: ``terminal``, the bar drawn. Elsewhere (a log, a pipe) with ``progress``:
        options that make tqdm write a plain line (:data:`PLAIN_FORMAT`, no carriage return)
        at most every :data:`PLAIN_INTERVAL_S` seconds, the first after as long, and one at
        the end of a step that wrote any. Without ``progress``, or with stderr closed: the
        bar disabled.
    """
    if bars_enabled(progress):
        return {**terminal, "disable": False}
    if not progress or sys.stderr is None:
        return {**terminal, "disable": True}
    return {"disable": False, "file": _PlainLines(sys.stderr), "ascii": True, "bar_format": PLAIN_FORMAT,
            "mininterval": PLAIN_INTERVAL_S, "delay": PLAIN_INTERVAL_S, "miniters": 1, "leave": True}
