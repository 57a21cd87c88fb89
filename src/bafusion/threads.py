"""How many CPU threads torch gets when the user does not say (``bafusion fuse --threads``).

Torch's intra-op threads wait for each other at every layer: when another process holds one
of the cores, a two-thread fusion on a 2-core CPU spends most of its time waiting and runs
several times *slower* than one thread (measured: ``benchmarks/bench_camera.py``,
BENCHMARKS.md "Camera resolution"). :func:`auto_threads` therefore gives torch only the cores
that other processes leave free, by the 1-minute load average, and at least one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def auto_threads(cores: int | None = None, load: float | None = None) -> int:
    """Threads for torch: the cores that the current load leaves free, at least one.

    Parameters
    ----------
    cores : int, optional
        Cores available (default :func:`available_cores`).
    load : float, optional
        Runnable processes, e.g. the 1-minute load average (default ``os.getloadavg()[0]``;
        0 where the OS has none).

    Returns
    -------
    int
        ``max(1, min(cores, round(cores - load)))``: 2 on an idle 2-core CPU, 1 as soon as
        about one other process runs on it.
    """
    cores = available_cores() if cores is None else int(cores)
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    return max(1, min(cores, int(round(cores - float(load)))))


def checked_threads(threads: object, name: str = "threads=") -> int | str | None:
    """``threads`` of the Python API (:func:`bafusion.fuse`, :func:`bafusion.fuse_images`): None
    (torch's current setting), ``"auto"`` (the command line's choice, :func:`torch_threads`), or
    a positive number of threads (an int or a numpy integer), at most ``fuse.threads``' maximum,
    else a :class:`bafusion.errors.UserError` naming it as ``name``."""
    import operator

    from bafusion.errors import UserError
    from bafusion.schema import maximum

    top = maximum("fuse.threads")
    if threads is None or (isinstance(threads, str) and threads == "auto"):
        return threads
    try:
        n = None if isinstance(threads, bool) else operator.index(threads)  # numpy integers too, not 1.5
    except TypeError:
        n = None
    if n is None or not 1 <= n <= top:
        raise UserError(f"{name}{threads!r}: give a positive number of CPU threads, at most {top}, \"auto\" for "
                        "the cores the load leaves free, or None for torch's current setting")
    return n


@contextmanager
def torch_threads(threads: int | str | None = None) -> Iterator[int]:
    """Torch's intra-op threads set to ``threads`` for a block, and torch's previous setting
    restored after it. None: torch's setting as it is (nothing changed, as a caller that set
    :func:`torch.set_num_threads` expects); ``"auto"``: as ``bafusion fuse`` without
    ``--threads``: torch's current setting, lowered to :func:`auto_threads` (the cores the
    1-minute load average leaves free, read at each call). Yields the number in use."""
    import torch

    before = torch.get_num_threads()
    if threads is None:
        n = before
    elif isinstance(threads, str) and threads == "auto":
        n = min(before, auto_threads())
    else:
        n = int(threads)
    if n != before:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


__all__ = ["auto_threads", "available_cores", "checked_threads", "torch_threads"]
