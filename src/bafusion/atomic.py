"""Write outputs under a temporary name and rename them into place, so a killed job never
leaves a half-written output that a later run would take for a finished one.

The ``bafusion`` command's signal handlers (:mod:`bafusion.cli.app`) also record here that a
stop was asked for (:func:`request_stop`): the exception they raise can be lost (raised inside
a weakref callback or a ``__del__``, such as h5py's, Python prints "Exception ignored" and goes
on), and then no output is renamed into place after all (:func:`raise_if_stopped`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
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


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``path``; on success it replaces ``path`` whole
    (not when a stop was asked for meanwhile). A ``path`` that is a symbolic link keeps it: the
    folder it points to is replaced (renaming over the link broke it, and every later run)."""
    final = Path(path)
    if final.is_symlink():
        final = final.resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = part_path(final)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        raise_if_stopped()
        if final.exists():
            old = final.with_name(final.name + ".old")
            if old.is_symlink():
                old.unlink()
            elif old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)
