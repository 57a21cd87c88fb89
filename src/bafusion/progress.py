"""When to draw progress bars.

A tqdm bar redraws its line with carriage returns: readable on a terminal, clutter in a log
file (Snakemake and DVC send each step's output to ``logs/<step>.log``). Bars are drawn only
when stderr is a terminal; otherwise the long steps print one line per unit of work (training:
one line per epoch, see :mod:`bafusion.nets.train`).
"""

from __future__ import annotations

import sys


def stderr_is_terminal() -> bool:
    """Whether stderr is an interactive terminal (False for a pipe, a file, a closed stream)."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def bars_enabled(progress: bool = True) -> bool:
    """Whether to draw a progress bar: ``progress`` asked for and stderr a terminal."""
    return bool(progress) and stderr_is_terminal()
