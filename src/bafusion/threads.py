"""How many CPU threads torch gets when the user does not say (``bafusion fuse --threads``).

Torch's intra-op threads wait for each other at every layer: when another process holds one
of the cores, a two-thread fusion on a 2-core CPU spends most of its time waiting and runs
several times *slower* than one thread (measured: ``benchmarks/bench_camera.py``,
BENCHMARKS.md "Camera resolution"). :func:`auto_threads` therefore gives torch only the cores
that other processes leave free, by the 1-minute load average, and at least one.
"""

from __future__ import annotations

import os


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


__all__ = ["auto_threads", "available_cores"]
