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


def checked_threads(threads: object, name: str = "threads=") -> int | None:
    """``threads`` of the Python API (:func:`bafusion.fuse`, :func:`bafusion.fuse_images`): None,
    or a positive number of threads, at most ``fuse.threads``' maximum, else a
    :class:`bafusion.errors.UserError` naming it as ``name``."""
    from bafusion.errors import UserError
    from bafusion.schema import maximum

    top = maximum("fuse.threads")
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= top:
        raise UserError(f"{name}{threads!r}: give a positive number of CPU threads, at most {top}, or None for "
                        "the automatic choice")
    return threads


@contextmanager
def torch_threads(threads: int | None = None) -> Iterator[int]:
    """Torch's intra-op threads set to ``threads`` for a block, and torch's previous setting
    restored after it. None: as ``bafusion fuse`` without ``--threads``: torch's current
    setting, lowered to :func:`auto_threads` (the cores the load leaves free). Yields the
    number set."""
    import torch

    before = torch.get_num_threads()
    n = int(threads) if threads is not None else min(before, auto_threads())
    if n != before:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


__all__ = ["auto_threads", "available_cores", "checked_threads", "torch_threads"]
