"""Write outputs under a temporary name and rename them into place, so a killed job never
leaves a half-written output that a later run would take for a finished one.

The ``bafusion`` command's signal handlers (:mod:`bafusion.cli.app`) also record here that a
stop was asked for (:func:`request_stop`): the exception they raise can be lost (raised inside
a weakref callback or a ``__del__``, such as h5py's, Python prints "Exception ignored" and goes
on), and then no output is renamed into place after all (:func:`raise_if_stopped`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: The signal that asked this process to stop (set by the command's handlers), or ``None``.
_stop_signal: int | None = None


def request_stop(signum: int) -> None:
    """Record that signal ``signum`` asked the process to stop: nothing is committed any more."""
    global _stop_signal
    _stop_signal = signum


def stop_requested() -> int | None:
    """The signal that asked the process to stop, or ``None``."""
    return _stop_signal


def clear_stop() -> None:
    """Forget a stop request (a new command starts in this process)."""
    global _stop_signal
    _stop_signal = None


def raise_if_stopped() -> None:
    """Raise what the handler of the recorded stop signal raises: ``KeyboardInterrupt`` for
    SIGINT, ``SystemExit(128 + signum)`` for another (143 for SIGTERM); nothing without one."""
    if _stop_signal is None:
        return
    if _stop_signal == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + _stop_signal)


def part_path(path: Path) -> Path:
    return path.with_name(path.name + ".part")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block succeeds,
    delete it when the block raises (or when a stop was asked for meanwhile). A ``path`` that
    is a symbolic link keeps it: the file it points to is replaced (renaming over the link
    turned it into a plain file, the target unchanged). A file replaced keeps its permission
    bits (a params.yaml of mode 640 became 644)."""
    final = Path(path)
    if final.is_symlink():
        final = final.resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = part_path(final)
    if tmp.exists():
        tmp.unlink()
    try:
        yield tmp
        raise_if_stopped()
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, stat.S_IMODE(final.stat().st_mode))
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


#: The file that marks a temporary folder of :func:`atomic_dir` as bafusion's own: a leftover
#: of a killed run is removed by a later run only when it holds this file (naming a process of
#: this host that is gone), never a folder of the user's that happens to match the name.
PART_MARKER = ".bafusion-part"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: a process of another user
        return True
    return True


def _remove_part(wrap: Path) -> None:
    """Remove the temporary folder ``wrap`` of :func:`atomic_dir`, its marker last (a run killed
    meanwhile leaves a folder that is still known as bafusion's own). Errors are ignored: what
    stays keeps its marker, and a later run tries again."""
    with contextlib.suppress(OSError):  # also another run removing the same leftover meanwhile
        for entry in wrap.iterdir():
            if entry.name == PART_MARKER:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
        if any(e.name != PART_MARKER for e in wrap.iterdir()):
            return
        with contextlib.suppress(FileNotFoundError):
            (wrap / PART_MARKER).unlink()
        wrap.rmdir()


def remove_stale_parts(final: Path) -> list[Path]:
    """Remove the temporary folders ``.<name>.part-*`` beside ``final`` left by killed runs of
    :func:`atomic_dir`: only those holding :data:`PART_MARKER` written by a process of this host
    that no longer runs (a run in progress, of this host or another, keeps its own). Returns
    the folders removed."""
    removed = []
    for wrap in final.parent.glob(f".{glob.escape(final.name)}.part-*"):
        marker = wrap / PART_MARKER
        if wrap.is_symlink() or not wrap.is_dir() or not marker.is_file() or marker.is_symlink():
            continue
        try:
            host, _, pid = marker.read_text().strip().rpartition(" ")
            owner = int(pid)
        except (OSError, ValueError):
            continue
        if host != socket.gethostname() or owner == os.getpid() or _pid_alive(owner):
            continue
        _remove_part(wrap)
        removed.append(wrap)
    return removed


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``path``; on success it replaces ``path`` whole
    (not when a stop was asked for meanwhile). A ``path`` that is a symbolic link keeps it: the
    folder it points to is replaced (renaming over the link broke it, and every later run).

    The temporary folder, and the earlier output while it is replaced, lie in a hidden folder of
    a name of their own, ``.<name>.part-<random>`` beside ``path``, marked by
    :data:`PART_MARKER`: a folder of the user's (``<name>.part``, ``<name>.old``) is never
    touched (the fixed names deleted them), and the leftovers of a killed run are removed by the
    next run (:func:`remove_stale_parts`)."""
    final = Path(path)
    if final.is_symlink():
        final = final.resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(final)
    wrap = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.part-"))
    try:
        (wrap / PART_MARKER).write_text(f"{socket.gethostname()} {os.getpid()}\n")
        tmp = wrap / final.name
        tmp.mkdir()  # the umask's mode, as the output had (mkdtemp's folder is 700)
        yield tmp
        raise_if_stopped()
        if final.exists():
            old = wrap / (final.name + ".old")
            os.replace(final, old)
            try:
                os.replace(tmp, final)
            except BaseException:
                os.replace(old, final)  # the earlier output back in place, not deleted with the rest
                raise
        else:
            os.replace(tmp, final)
    finally:
        _remove_part(wrap)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)
