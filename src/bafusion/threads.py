"""How many CPU threads torch gets when the user does not say (``bafusion fuse --threads``).

Torch's intra-op threads wait for each other at every layer: when another process holds one
of the cores, a two-thread fusion on a 2-core CPU spends most of its time waiting and runs
several times *slower* than one thread (measured: ``benchmarks/bench_camera.py``,
BENCHMARKS.md "Camera resolution"). :func:`auto_threads` therefore gives torch only the cores
that other processes leave free, by the 1-minute load average, and at least one, and never
more than the CPUs its cgroup's CPU quota allows (:func:`cpu_quota`: a container's
``--cpus``, a Kubernetes CPU limit, systemd's ``CPUQuota``), which torch's own default count
(the cores of the affinity mask: 2 on a 2-core machine, 1 under ``taskset -c 0``) and the
affinity mask do not see.

The same setting bounds the numpy/scipy steps of a fusion that run side by side
(:func:`side_by_side`, :func:`work_threads`): the two gray conversions,
exposure matching's two low-pass filters and the band's guided-filter tiles, each the same bits
with one thread or several (measured: BENCHMARKS.md, "Where a camera-size fusion's time goes").

A process forked from one that had imported torch runs torch on one thread
(:func:`_after_fork_in_child`, :func:`torch_threads`): torch's OpenMP threads do not survive a fork.
Where the parent had imported this module, its at-fork handler sees the fork; where it had not (it
ran torch itself and only its fork-started ``multiprocessing`` workers import bafusion), this
module sees at its import in the worker that torch came from the parent
(:func:`_torch_inherited`). A process forked with :func:`os.fork` itself, from a parent that had not
imported this module, is not seen: its fusion on several threads can wait forever where the
parent ran torch on several.
"""

from __future__ import annotations

import math
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, SupportsIndex, cast

from bafusion import cgroup
from bafusion.cgroup import controller_levels

#: Where :func:`cpu_quota` reads the process's cgroup and the cgroup file system's mount (tests
#: point them at a fake tree), as :mod:`bafusion.fusion.memory` does for the memory limit.
PROC_CGROUP = cgroup.PROC_CGROUP
CGROUP_ROOT = cgroup.CGROUP_ROOT

#: The 1-minute load average's time constant (s): the kernel's average of the runnable tasks
#: weighs a task that ran ``t`` seconds ago by ``exp(-t / 60)``.
LOAD_TIME_CONSTANT = 60.0
#: This process's own part of the load average left by its finished :func:`torch_threads`
#: ``"auto"`` blocks, as [tasks, at]: the tasks at monotonic time ``at`` (the last block's end),
#: which decay as ``exp(-(t - at) / LOAD_TIME_CONSTANT)`` (:func:`_record`, :func:`own_load`).
_own: list[float] = [0.0, 0.0]
_own_lock = threading.Lock()


def _record(start: float, end: float, cpu: float) -> None:
    """Adds a finished ``"auto"`` block, ``cpu`` CPU seconds of the process between the monotonic
    times ``start`` and ``end``, to :data:`_own`: its CPU seconds a second, weighed as the kernel
    weighs the load. The total is one number decayed at each block, so a loop of any number of
    short fusions counts them all (a list of the last 64 blocks forgot all but their last
    seconds), in constant time and memory."""
    if end <= start:
        return
    tau = LOAD_TIME_CONSTANT
    with _own_lock:
        tasks, at = _own
        t = max(at, end)
        tasks = tasks * math.exp(-(t - at) / tau) + cpu / (end - start) * (
            math.exp(-(t - end) / tau) - math.exp(-(t - start) / tau))
        _own[:] = [max(0.0, tasks), t]


def _quota_file(where: Path, v1: bool) -> float | None:
    """The CPUs one cgroup folder's CFS bandwidth limit allows: v2's ``cpu.max`` ("quota
    period", or "max ..." for none), v1's ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us`` (-1
    for none); None for none or a file that cannot be read."""
    try:
        if v1:
            quota = int((where / "cpu.cfs_quota_us").read_text(encoding="utf-8").strip())
            period = int((where / "cpu.cfs_period_us").read_text(encoding="utf-8").strip())
        else:
            text = (where / "cpu.max").read_text(encoding="utf-8").split()
            if not text or text[0] == "max":
                return None
            quota, period = int(text[0]), int(text[1]) if len(text) > 1 else 100_000
    except (OSError, ValueError, IndexError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def cpu_quota(proc_cgroup: str | None = None, root: str | None = None) -> float | None:
    """The CPUs this process's cgroup may use by its CPU bandwidth limit: cgroup v2's ``cpu.max``,
    v1's ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, the smallest of the process's cgroup and
    its parents'. Docker's ``--cpus``, a Kubernetes CPU limit and systemd's ``CPUQuota`` set it;
    neither ``os.cpu_count()`` nor the affinity mask shows it, nor torch's default thread count
    (the machine's cores): more threads than it allows are throttled each period, and torch's
    threads, which wait for each other at every layer, collapse as on a busy CPU.

    Parameters
    ----------
    proc_cgroup, root : str, optional
        As for :func:`bafusion.cgroup.controller_levels` (default :data:`PROC_CGROUP`, :data:`CGROUP_ROOT`).

    Returns
    -------
    float or None
        CPUs (1.5 for ``150000 100000``); None where there is no limit (or no cgroup: not Linux).
    """
    found = [q for where, v1 in controller_levels("cpu", PROC_CGROUP if proc_cgroup is None else proc_cgroup,
                                                   CGROUP_ROOT if root is None else root)
             if (q := _quota_file(where, v1)) is not None]
    return min(found) if found else None


def _affinity() -> int:
    """CPUs of this process's affinity mask (``os.cpu_count()`` where the OS has none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def available_cores() -> int:
    """CPU cores this process may run on: its affinity mask where the OS has one, at most the
    whole CPUs its cgroup's CPU quota allows (:func:`cpu_quota`, rounded down: a thread more
    than the quota is throttled), at least one."""
    cores = _affinity()
    quota = cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return cores


def own_load(now: float | None = None) -> float:
    """This process's own part of the 1-minute load average, left by its earlier
    :func:`torch_threads` ``"auto"`` blocks (the Python API's fusions with ``threads="auto"``):
    each block's CPU seconds a second, weighed as the kernel weighs the load (exponentially,
    :data:`LOAD_TIME_CONSTANT`). Without it a loop of fusions read its own last fusions as
    other processes' load: on an idle 4-core machine where torch takes the 4 cores, a minute of
    fusing on 4 threads brings the load average near 4 (by the kernel's formula), and the next
    call got 1 thread. On a busy machine the process's threads run less than they are
    runnable, so this counts less than their share; the CPU seconds are the process's, so its
    other threads' work during a block (another thread's fusion at the same time) is counted
    too, and two such blocks at once count each other's.

    Parameters
    ----------
    now : float, optional
        The :func:`time.monotonic` time to estimate at (default: now; a time before the last
        block's end gives the estimate at that end).

    Returns
    -------
    float
        Runnable tasks of the load average (0 before any ``"auto"`` block).
    """
    now = time.monotonic() if now is None else now
    with _own_lock:
        tasks, at = _own
    return max(0.0, tasks * math.exp(-max(0.0, now - at) / LOAD_TIME_CONSTANT))


def auto_threads(cores: int | None = None, load: float | None = None) -> int:
    """Threads for torch: the cores that the current load leaves free, at least one.

    Parameters
    ----------
    cores : int, optional
        Cores available, all free of load but ``load`` (default: the affinity mask's CPUs, less
        ``load``, at most :func:`available_cores`: the load average counts the machine's
        runnable processes, which share the CPUs it may run on, not its cgroup's CPU quota).
    load : float, optional
        Runnable processes, e.g. the 1-minute load average (default ``os.getloadavg()[0]``,
        less this process's own earlier fusions' part, :func:`own_load`; 0 where the OS has
        none).

    Returns
    -------
    int
        ``max(1, min(cores, round(cores - load)))``: 2 on an idle 2-core CPU, 1 as soon as
        about one other process runs on it; in a container limited to 4 CPUs of an idle 64-core
        machine, 4.
    """
    if cores is None:
        cpus, cores = _affinity(), available_cores()
    else:
        cpus = cores = int(cores)
    if load is None:
        try:
            load = max(0.0, os.getloadavg()[0] - own_load())
        except (AttributeError, OSError):
            load = 0.0
    return max(1, min(cores, int(round(cpus - float(load)))))


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
        n = None if isinstance(threads, bool) else operator.index(cast(SupportsIndex, threads))  # numpy integers too, not 1.5
    except TypeError:
        n = None
    if n is None or not 1 <= n <= top:
        raise UserError(f"{name}{threads!r}: give a positive number of CPU threads, at most {top}, \"auto\" for "
                        "the cores the load leaves free, or None for torch's current setting")
    return n


#: Set in a process forked (:func:`os.fork`, a worker of a fork-started ``multiprocessing.Pool``,
#: Python 3.11's default on Linux) from one that had imported torch and this module
#: (:func:`_after_fork_in_child`).
_forked_after_torch = False
#: Whether :func:`torch_threads` has said in this process that it runs torch on one thread.
_said_fork = False


def _after_fork_in_child() -> None:
    """In a child forked from a process that had imported torch: torch on one intra-op thread,
    as torch's own DataLoader sets its workers. Torch's OpenMP thread pool (GNU libgomp) does not
    survive a fork: the child's first convolution on several threads waited forever once the
    parent had run one on several (pytorch/pytorch#17199; measured: ``fuse()`` in the workers of
    ``multiprocessing.Pool(2)`` after one ``fuse()`` in the parent on 2 threads never returned,
    on 1 thread it fused the same bytes). Registered with :func:`os.register_at_fork` when this
    module is imported (the Python API's fusions import it); called at that import in a
    fork-started worker that found torch loaded by its parent, which had not imported this module
    (:func:`_torch_inherited`)."""
    global _forked_after_torch, _said_fork
    _said_fork = False  # a new process: its own warning
    torch = sys.modules.get("torch")
    if torch is None or not callable(getattr(torch, "set_num_threads", None)):
        return
    _forked_after_torch = True
    try:
        torch.set_num_threads(1)
    except Exception:  # noqa: BLE001 - a fork handler must not fail the fork
        pass


def _torch_ranges(maps: str, path: str) -> set[str]:
    """The address ranges (``start-end``) at which a ``/proc/PID/maps`` text maps the file ``path``."""
    found = set()
    for line in maps.splitlines():
        fields = line.split(None, 5)
        if len(fields) == 6 and fields[5] == path:
            found.add(fields[0])
    return found


def _shared_dirty(smaps: str, path: str) -> int:
    """The kB of the mappings of the file ``path`` in a ``/proc/PID/smaps`` text that are written
    (its relocated data, its GOT made read-only after loading) and shared with another process
    (``Shared_Dirty``): pages a fork left shared with the parent, which a library loaded by this
    process itself after the fork does not have (its own copies, ``Private_Dirty``)."""
    total, inside = 0, False
    for line in smaps.splitlines():
        fields = line.split(None, 5)
        if fields and not fields[0].endswith(":"):  # a mapping's first line: range perms offset dev inode path
            inside = len(fields) == 6 and fields[5] == path
        elif inside and len(fields) >= 2 and fields[0] == "Shared_Dirty:":
            total += int(fields[1])
    return total


def _torch_inherited() -> bool:
    """Whether this process is a fork-started ``multiprocessing`` worker (a ``Pool``'s,
    ``ProcessPoolExecutor``'s or ``Process``'s of the fork start method, Python 3.11's default on
    Linux) that found torch loaded, by its parent before the fork: torch in :data:`sys.modules`,
    and its extension module mapped at the same addresses in the parent (``/proc/PID/maps``; a
    parent that never loaded torch maps it nowhere) with its written pages shared with another
    process (:func:`_shared_dirty`: a parent that loaded torch after the fork while the worker loaded
    its own can map it at the same addresses, each with its own pages). Where the maps cannot be
    read (no ``/proc``, the parent gone), a fork-started
    worker with torch loaded counts as inherited. False in any other process: the main process, a
    spawn or forkserver worker (torch loaded in a fresh interpreter, or the fork server's), a child
    of :func:`os.fork` itself.

    Called when this module is imported: the at-fork handler (:func:`_after_fork_in_child`) does
    not run in the worker of a parent that had not imported this module (the parent ran torch itself
    and only the worker imported bafusion), where a fusion on several threads waited forever."""
    torch = sys.modules.get("torch")
    process = sys.modules.get("multiprocessing.process")
    if torch is None or process is None:
        return False
    parent = process.parent_process()
    if parent is None:
        return False
    method = getattr(process.current_process(), "_start_method", None)
    if method is None:  # multiprocessing.Process of the default context: the method it was started with
        method = sys.modules["multiprocessing"].get_start_method(allow_none=True)
    if method != "fork":
        return False
    try:
        path = os.path.realpath(torch._C.__file__)
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            mine = _torch_ranges(f.read(), path)
        with open(f"/proc/{int(parent.pid)}/maps", encoding="utf-8", errors="replace") as f:
            theirs = _torch_ranges(f.read(), path)
        if not mine or not mine & theirs:
            return not mine
        # The same addresses: inherited, or loaded by each after the fork from the same layout (a
        # Process forked before the parent's `import torch` that imports torch first maps it where the
        # parent does, measured 5 runs of 5); the pages written at loading tell them apart.
        with open("/proc/self/smaps", encoding="utf-8", errors="replace") as f:
            return _shared_dirty(f.read(), path) > 0
    except (AttributeError, TypeError, ValueError, OSError):
        return True


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)
    if _torch_inherited():  # a worker forked from a process that had torch but not this module
        _after_fork_in_child()


def _user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning issued here at the first frame outside the
    bafusion package and :mod:`contextlib` (the user's line that called the fusion)."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    import contextlib

    skip = (package, os.path.abspath(contextlib.__file__))
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(skip):
        frame, level = frame.f_back, level + 1
    return level if frame is not None else 2


@contextmanager
def torch_threads(threads: int | str | None = None) -> Iterator[int]:
    """Torch's intra-op threads set to ``threads`` for a block, and torch's previous setting
    restored after it. None: torch's setting as it is (nothing changed, as a caller that set
    :func:`torch.set_num_threads` expects); ``"auto"``: as ``bafusion fuse`` without
    ``--threads``: torch's current setting, lowered to :func:`auto_threads` (the cores the
    1-minute load average leaves free, read at each call, less this process's earlier
    ``"auto"`` blocks' part, :func:`own_load`). Yields the number in use.

    In a process forked from one that had imported torch (a worker of a fork-started
    ``multiprocessing.Pool``), torch is set to one thread at the fork where the parent had
    imported this module (``bafusion.fuse``, ``fuse_images`` or ``load_model`` used there), else
    when the worker imports it (:func:`_after_fork_in_child`, :func:`_torch_inherited`),
    and more than one (``threads=2``, or a ``torch.set_num_threads(2)`` of the child's) is
    lowered to one, with a :class:`RuntimeWarning` once a process: torch's OpenMP threads do not
    survive a fork, and a fusion on several would wait forever. Spawn or forkserver workers
    (``multiprocessing.get_context("spawn")``) get the threads asked for."""
    global _said_fork
    import torch

    before = torch.get_num_threads()
    auto = isinstance(threads, str) and threads == "auto"
    if threads is None:
        n = before
    elif auto:
        n = min(before, auto_threads())
    else:
        n = int(threads)
    if n > 1 and _forked_after_torch:
        if not _said_fork:
            _said_fork = True
            asked = f"threads={threads!r}" if threads is not None else f"torch.set_num_threads({n})"
            warnings.warn(f"{asked}: this process was forked from one that had loaded torch, whose OpenMP threads do "
                          "not survive a fork (a fusion on several threads can wait forever, "
                          "pytorch/pytorch#17199): fusing on 1 thread; start the worker processes with "
                          "multiprocessing.get_context(\"spawn\") or \"forkserver\" to use more",
                          RuntimeWarning, stacklevel=_user_stacklevel())
        n = 1
    if n != before:
        torch.set_num_threads(n)
    start, cpu = time.monotonic(), time.process_time()
    try:
        yield n
    finally:
        if auto:  # its load is this process's own at the next "auto" call (own_load)
            _record(start, time.monotonic(), time.process_time() - cpu)
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)




#: Guards :func:`quiet_warnings`' changes to :data:`warnings.filters`.
_filters_lock = threading.Lock()


def _filters_changed() -> None:
    """Tell the warnings machinery that :data:`warnings.filters` changed (as
    :func:`warnings.filterwarnings` does): the once-per-place registries are read anew."""
    changed = getattr(warnings, "_filters_mutated", None) or getattr(warnings, "_filters_mutated_lock_held", None)
    if changed is not None:
        changed()


class _QuietMessage:
    """The ``message`` of one :func:`quiet_warnings` filter (the warnings machinery calls its
    ``match``): matches as ``pattern`` (None: any message) in the thread of its block while the
    block runs, and nothing in other threads or once the block has ended. A copy of the filter
    list that another thread's :class:`warnings.catch_warnings` took during the block, and puts
    back after it, keeps the filter: inert, and dropped by the next block."""

    __slots__ = ("active", "pattern", "thread")

    def __init__(self, pattern: re.Pattern[str] | None) -> None:
        self.pattern = pattern
        self.thread = threading.get_ident()
        self.active = True

    def match(self, text: str) -> object:
        if not self.active or threading.get_ident() != self.thread:
            return None
        return True if self.pattern is None else self.pattern.match(text)

    def __repr__(self) -> str:
        return (f"<bafusion.threads.quiet_warnings {self.pattern.pattern if self.pattern else 'any'!r}, thread "
                f"{self.thread}{'' if self.active else ', ended'}>")


def _drop_ended() -> None:
    """Remove from :data:`warnings.filters` the filters of :func:`quiet_warnings` blocks that
    have ended (put back by another thread's ``catch_warnings``). Called with the lock held."""
    cast("list[Any]", warnings.filters)[:] = [f for f in warnings.filters
                           if not (isinstance(f[1], _QuietMessage) and not f[1].active)]


@contextmanager
def quiet_warnings(*filters: dict[str, Any]) -> Iterator[None]:
    """Ignore some warnings of this thread for a block, safely beside other threads.

    :class:`warnings.catch_warnings` saves the process's whole filter list and puts it back at
    its end: two such blocks of two threads that overlap without nesting (a model loaded in one
    thread while another reads an image) put back the list of the block that started last,
    holding the other block's filters, which then stayed for the rest of the process (a
    ``simplefilter("ignore")`` of the model loader's silenced every warning of a service after
    it; measured with ``fuse()`` and ``load_model()`` from a 4-thread pool). This inserts its
    filters and removes exactly those at its end; they ignore only the warnings of the thread
    that runs the block, and only while it runs, so that one left in a list another thread's
    ``catch_warnings`` block copied meanwhile and put back after (which removing cannot reach)
    ignores nothing (it is dropped at the next block's start or end).

    Parameters
    ----------
    *filters : dict
        Each the ``message``, ``category`` and ``module`` of one "ignore" filter, as
        :func:`warnings.filterwarnings` takes them (``message`` a regular expression matched
        case-insensitively at the start, ``category`` default :class:`Warning`, ``module`` a
        regular expression matched at the start of the warning's module name).

    Yields
    ------
    None
    """
    added = []
    for f in filters:
        message, module = f.get("message", ""), f.get("module", "")
        added.append(("ignore", _QuietMessage(re.compile(message, re.I) if message else None),
                      f.get("category", Warning), re.compile(module) if module else None, 0))
    with _filters_lock:
        _drop_ended()
        for item in added:
            cast("list[Any]", warnings.filters).insert(0, item)
        _filters_changed()
    try:
        yield
    finally:
        with _filters_lock:
            for item in added:
                item[1].active = False
            _drop_ended()  # this block's own, and any left before: a user's equal filter stays
            _filters_changed()


def work_threads() -> int:
    """Threads the numpy/scipy steps of a fusion may use side by side
    (:func:`side_by_side`): the command's thread setting, that is torch's (``bafusion fuse
    --threads`` and ``fuse.threads`` set it, :func:`torch_threads` for the Python API), or 1
    where torch is not loaded (a command that does not run the nets, e.g. ``metrics``).

    Returns
    -------
    int
        ``torch.get_num_threads()`` where torch is imported, else 1; at least 1.
    """
    torch = sys.modules.get("torch")
    return max(1, int(torch.get_num_threads())) if torch is not None else 1


def side_by_side(calls: Sequence[Callable[[], Any]], threads: int | None = None,
                 done: Callable[[int], None] | None = None) -> list[Any]:
    """Run independent calls on up to ``threads`` threads at once, their results in order.

    For steps whose work releases the GIL (numpy, scipy.ndimage filters)
    and whose results do not depend on the order they run in: each call computes what it
    would compute alone, so the results are the same bits with one thread or several.

    Parameters
    ----------
    calls : sequence of callables
        Called without arguments.
    threads : int, optional
        At most this many at once (default :func:`work_threads`, the command's thread
        setting); 1 (or a single call): one after the other in this thread, as a loop would.
    done : callable, optional
        Called in this thread with each call's index, in order, once its result is there (a
        progress bar's step).

    Returns
    -------
    list
        The calls' results, in the order of ``calls``.

    Raises
    ------
    Exception
        The first call's (in order) exception; the calls already started are waited for,
        those not started are cancelled.
    """
    calls = list(calls)
    n = min(len(calls), work_threads() if threads is None else max(1, int(threads)))
    out: list[Any] = []
    if n <= 1:
        for i, call in enumerate(calls):
            out.append(call())
            if done is not None:
                done(i)
        return out
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="bafusion") as pool:
        futures = [pool.submit(call) for call in calls]
        try:
            for i, f in enumerate(futures):
                out.append(f.result())
                if done is not None:
                    done(i)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return out


__all__ = ["auto_threads", "available_cores", "checked_threads", "cpu_quota", "own_load", "quiet_warnings",
           "side_by_side", "torch_threads", "work_threads"]
