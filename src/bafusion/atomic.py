"""Write outputs under a temporary name and rename them into place, so a killed job never
leaves a half-written output that a later run would take for a finished one.

The ``bafusion`` command's signal handlers (:mod:`bafusion.cli.app`) also record here that a
stop was asked for (:func:`request_stop`): the exception they raise can be lost (raised inside
a weakref callback or a ``__del__``, such as h5py's, Python prints "Exception ignored" and goes
on), and then no output is renamed into place after all (:func:`raise_if_stopped`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import glob
import json
import os
import re
import shutil
import signal
import socket
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: folder_lock locks with msvcrt
    fcntl = None  # type: ignore[assignment]
try:
    import msvcrt
except ImportError:  # not Windows
    msvcrt = None  # type: ignore[assignment]

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


#: The file that marks a temporary folder of :func:`atomic_dir` or :func:`atomic_file` as
#: bafusion's own: a leftover of a killed run is removed by a later run only when it holds this
#: file (naming a process of this host, PID namespace and boot that is gone, or, on a local file
#: system, no longer locked by its writer, see :func:`_is_stale`), never a folder of the user's
#: that happens to match the name.
PART_MARKER = ".bafusion-part"
#: The file that a temporary folder of :func:`atomic_dir` (or of
#: :func:`bafusion.data.download.extract_zip`) holds once its new output is complete and flushed,
#: where :func:`replace_folder` cannot swap it in one step, before it removes or renames the
#: earlier output: the output's name and the identity (device, inode) of the new folder. A run
#: killed while the earlier output was away or being removed is completed by the next one
#: (:func:`_roll_forward`).
READY_MARKER = ".bafusion-ready"
#: The file written beside :data:`READY_MARKER` before an earlier output that cannot be renamed
#: is removed in place (:func:`_replace_unmovable`): a part of it may be gone. It holds that
#: output's identity, its entries' names and the name of a token file put into it, removed last
#: (:func:`_mark_removing`, :func:`_half_removed`).
REMOVING_MARKER = ".bafusion-removing"


#: Whether ``os.kill(pid, 0)`` terminates the process instead of asking whether it runs (Windows:
#: TerminateProcess for any signal but CTRL_C_EVENT and CTRL_BREAK_EVENT).
_KILL_TERMINATES = os.name == "nt"


def _pid_alive_without_kill(pid: int) -> bool | None:
    """Whether a process ``pid`` runs, asked without ``os.kill`` (Windows: psutil opens the
    process and reads its exit code); ``None`` where that cannot be told (no psutil, which dvc
    and snakemake install)."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        return bool(psutil.pid_exists(pid))
    except Exception:  # noqa: BLE001 - psutil's own failure: not known
        return None


def _pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs (of any user); where ``os.kill`` cannot ask that
    (:data:`_KILL_TERMINATES`: Windows) :func:`_pid_alive_without_kill` says, and where that
    cannot tell either, ``True``: a process there is never known gone. (It was always ``True``
    there: a killed write's temporary folder was never removed, nor named.)"""
    if _KILL_TERMINATES:
        alive = _pid_alive_without_kill(pid)
        return True if alive is None else alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: a process of another user
        return True
    return True


def _remove_part(wrap: Path) -> None:
    """Remove the temporary folder ``wrap`` (:func:`_new_part`), its marker last (a run killed
    meanwhile leaves a folder that is still known as bafusion's own). What cannot be removed
    (an earlier output with a read-only sub-folder) stays, with its marker, for a later run to
    try again, and is named once on stderr (:func:`_note_unremoved`): it was kept, hidden and
    unsaid, for good. One removed meanwhile by another run is no error. The marker's lock, where
    this process holds it (:func:`_write_marker`), is let go last: what is left is then a later
    run's to remove."""
    try:
        _remove_part_locked(wrap)
    finally:
        _release_marker(wrap)


def _remove_part_locked(wrap: Path) -> None:
    """:func:`_remove_part`, the marker's lock (if this process holds it) still held."""
    failed: list[OSError] = []

    def record(_func: object, _path: object, exc: object) -> None:
        error = exc[1] if isinstance(exc, tuple) else exc  # onerror's exc_info, onexc's exception
        if isinstance(error, OSError) and not isinstance(error, FileNotFoundError):
            failed.append(error)

    handler = {"onexc": record} if sys.version_info >= (3, 12) else {"onerror": record}
    try:
        with contextlib.suppress(FileNotFoundError):  # first: a new output half removed is never put in place
            (wrap / READY_MARKER).unlink()
        for entry in wrap.iterdir():
            if entry.name == PART_MARKER:
                continue
            try:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, **handler)
                else:
                    entry.unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                failed.append(e)
        left = [e for e in wrap.iterdir() if e.name != PART_MARKER]
        if left:
            if failed:
                _note_unremoved(left, failed[0])
            return
        with contextlib.suppress(FileNotFoundError):
            (wrap / PART_MARKER).unlink()
        wrap.rmdir()
    except FileNotFoundError:  # another run removed the same leftover meanwhile
        return
    except OSError as e:
        _note_unremoved([wrap], failed[0] if failed else e)


#: The leftovers this process has said it could not remove (:func:`_note_unremoved`): once each.
_said_unremoved: set[str] = set()


def _note_unremoved(left: list[Path], error: OSError) -> None:
    """Say once on stderr that ``left`` (in a temporary folder of this module) could not be
    removed, and why (``error``)."""
    if str(left[0]) in _said_unremoved:
        return
    _said_unremoved.add(str(left[0]))
    names = ", ".join(map(str, left[:3])) + (f" and {len(left) - 3} more" if len(left) > 3 else "")
    why = error.strerror or str(error) or type(error).__name__
    where = f": {error.filename}" if error.filename is not None else ""
    print(f"bafusion: warning: could not remove {names}: {why}{where}; remove it by hand", file=sys.stderr)


def _read_proc(path: str, what: str) -> str:
    """``what`` of ``path`` under /proc (``"-"`` where there is none)."""
    try:
        if what == "inode":
            return str(os.stat(path).st_ino)
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or "-"
    except OSError:
        return "-"


def _namespace_unknown(fields: dict[str, str]) -> bool:
    """Whether ``fields`` (:func:`_identity`'s) leave the PID namespace unknown where there are
    PID namespaces (Linux): there a process not seen here may run in another one."""
    return sys.platform.startswith("linux") and fields.get("pidns", "-") == "-"


def _identity() -> dict[str, str]:
    """What tells this process's PIDs apart from those of another that shares the hostname:
    the PID namespace (a container with the host's network has the host's name, and its own
    PIDs, which ``os.kill`` here does not see) and the boot (PIDs are reused after a reboot)."""
    return {"pidns": _read_proc("/proc/self/ns/pid", "inode"),
            "boot": _read_proc("/proc/sys/kernel/random/boot_id", "text")}


def _start_time(pid: int) -> str:
    """When process ``pid`` started (clock ticks since the boot, /proc/<pid>/stat's 22nd field),
    ``"-"`` where there is no /proc (or no such process): a PID reused by a later process has
    another start time."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "-"


def process_identity() -> dict[str, str]:
    """What names this process for :func:`process_gone` in another one: ``host``, ``pid``, its
    ``start`` time (:func:`_start_time`) and :func:`_identity`'s ``pidns`` and ``boot``."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": str(pid), "start": _start_time(pid), **_identity()}


def process_gone(named: dict[str, str]) -> bool:
    """Whether the process ``named`` (:func:`process_identity`'s fields, ``start`` may be left
    out) is known to run no more: it is of this host, PID namespace and boot, and no process has
    its PID, or the one that has it started at another time (the PID reused). A process of
    another host, namespace or boot, or named without them, is not known gone: ``False``; so is
    one whose PID namespace is unknown on Linux (``"-"``: no /proc there or here), even when
    ours is unknown too: two unknowns are no proof of one namespace (containers that share a
    host name each have their own PIDs). Systems without PID namespaces (macOS, the BSDs) have
    none to tell, and an unknown boot never makes a live process look gone (a PID not alive is
    gone whatever the boot; a live one is compared by its start time)."""
    identity = _identity()
    if _namespace_unknown(identity):  # unknown here (and so, where it matches, there)
        return False
    ours = {"host": socket.gethostname(), **identity}
    if any(named.get(key) != value for key, value in ours.items()):
        return False
    try:
        pid = int(named.get("pid", ""))
    except ValueError:
        return False
    if pid == os.getpid() or pid <= 0:
        return False
    if not _pid_alive(pid):
        return True
    start = named.get("start", "-")
    now = _start_time(pid)
    return "-" not in (start, now) and start != now


def _marker_text(pid: int, locked: bool = False) -> str:
    """The content of :data:`PART_MARKER` for process ``pid`` of this process's host, PID
    namespace and boot: ``<host> <pid> pidns=<inode> boot=<id>`` (``-`` for one unknown), and
    ``lock=flock`` where ``locked``: the writer holds the marker's ``flock`` on a local file
    system for as long as the folder is its (:func:`_marker_held`)."""
    fields = {**_identity(), **({"lock": "flock"} if locked else {})}
    return " ".join([socket.gethostname(), str(pid), *(f"{k}={v}" for k, v in fields.items())]) + "\n"


#: ``statfs`` magic numbers of the file systems that one kernel alone mounts (ext2/3/4, XFS,
#: Btrfs, tmpfs, F2FS, ZFS): every process that sees a file there sees its ``flock`` locks.
#: Not a network or shared one (NFS, SMB, FUSE, 9p, virtiofs, Lustre, GFS2, Ceph), whose other
#: kernels' locks are not all seen, nor overlayfs (a lock taken through it is not seen through
#: its upper folder's own path).
_LOCAL_FS_MAGIC = frozenset({0xEF53, 0x58465342, 0x9123683E, 0x01021994, 0xF2F52010, 0x2FC12FC1})


def _local_fs(fd: int) -> bool:
    """Whether the open file ``fd`` lies on a file system of :data:`_LOCAL_FS_MAGIC` (Linux's
    ``fstatfs``, through ctypes); ``False`` where that cannot be told (another system)."""
    fstatfs = _libc_fstatfs()
    if fstatfs is None:
        return False
    import ctypes

    buf = ctypes.create_string_buffer(512)  # struct statfs, its f_type first (a long)
    if fstatfs(fd, buf) != 0:
        return False
    return ctypes.c_long.from_buffer(buf).value in _LOCAL_FS_MAGIC


@functools.lru_cache(maxsize=None)
def _libc_fstatfs() -> Any:
    """Linux libc's ``fstatfs`` through ctypes, looked up once; ``None`` elsewhere, and where
    Python has no ``ctypes`` (built without libffi: its ``ImportError`` failed every write of
    :func:`atomic_dir` and :func:`atomic_file`; the marker then says no lock, as elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).fstatfs
    except (OSError, AttributeError, ImportError):
        return None


#: The open :data:`PART_MARKER` of each temporary folder of this process whose ``flock`` it holds
#: (:func:`_write_marker`), closed by :func:`_remove_part`, and the lock that guards it.
_marker_fds: dict[str, int] = {}
_marker_fds_guard = threading.Lock()


def _write_marker(wrap: Path) -> None:
    """Write :data:`PART_MARKER` into the new temporary folder ``wrap``, its ``flock`` taken
    (exclusive) before any content, and held until :func:`_remove_part` (or this process's
    end: a kill, a reboot, releases it) where the file system is local (:func:`_local_fs`):
    then ``lock=flock`` in it tells another run that an unlocked marker's writer is gone
    (:func:`_marker_held`). A marker read before its content (empty) names no process: never
    stale (:func:`_read_marker`)."""
    fd = os.open(wrap / PART_MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    locked = False
    try:
        if fcntl is not None and _local_fs(fd):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
            except OSError:
                pass  # no locks here: the marker says none, the process's identity tells
        view = memoryview(_marker_text(os.getpid(), locked).encode("utf-8"))
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        raise
    if locked:
        with _marker_fds_guard:
            _marker_fds[str(wrap)] = fd
    else:
        os.close(fd)


def _release_marker(wrap: Path) -> None:
    """Close the marker of ``wrap`` that this process holds locked (:func:`_write_marker`), if any."""
    with _marker_fds_guard:
        fd = _marker_fds.pop(str(wrap), None)
    if fd is not None:
        os.close(fd)


def _marker_held(wrap: Path, fields: dict[str, str]) -> bool | None:
    """Whether the writer of the temporary folder ``wrap``, whose marker's ``fields`` say it
    holds the marker's ``flock`` (``lock=flock``), still runs: ``True`` while the lock is held,
    ``False`` once it is free (the writer is gone: ended, killed, or the machine rebooted since;
    a process ID or boot id cannot tell a reboot from another kernel sharing the file system,
    a lock on a local file system can: no other kernel mounts it); ``None`` where this cannot
    be told (no such field, no ``fcntl``, a file system not local here, a marker that cannot
    be opened)."""
    if fields.get("lock") != "flock" or fcntl is None:
        return None
    try:
        fd = os.open(wrap / PART_MARKER, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        if not _local_fs(fd):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # shared: two runs that look never see each other
        except BlockingIOError:
            return True
        except OSError:
            return None
        return False
    finally:
        os.close(fd)  # the lock taken, if any, with it


def _read_marker(wrap: Path) -> tuple[str, int, dict[str, str]] | None:
    """The host, process id and other fields (``pidns``, ``boot``) of the temporary folder
    ``wrap``'s :data:`PART_MARKER`; ``None`` when ``wrap`` is no folder of ours with a readable
    marker (a link, a file, no marker, another content)."""
    marker = wrap / PART_MARKER
    if wrap.is_symlink() or not wrap.is_dir() or not marker.is_file() or marker.is_symlink():
        return None
    try:
        host, pid, *rest = marker.read_text(encoding="utf-8-sig").split()
        return host, int(pid), dict(field.split("=", 1) for field in rest)
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def _is_stale(wrap: Path) -> bool:
    """Whether ``wrap`` is a temporary folder of this module left by a process that no longer
    runs: it holds :data:`PART_MARKER` whose lock no process holds on a local file system
    (:func:`_marker_held`: whatever host, namespace and boot it names; one held: a run in
    progress), else naming this host, PID namespace and boot, and a process that ``os.kill``
    does not find. A marker of the older form ``<host> <pid>`` (versions of
    2026-12-04) cannot tell a process of another PID namespace from a dead one: it is kept."""
    read = _read_marker(wrap)
    if read is None:
        return False
    host, owner, fields = read
    held = _marker_held(wrap, fields)  # a lock on a local file system: whatever the host, namespace, boot
    if held is not None:
        return not held
    # another host, namespace or boot, or the older form: not known gone
    return process_gone({**fields, "host": host, "pid": str(owner)})


#: The leftovers this process has named (:func:`_note_kept`): once each.
_said_kept: set[str] = set()


def _kept_owner(wrap: Path) -> str | None:
    """Who wrote the temporary folder ``wrap`` that :func:`_is_stale` keeps, for the user:
    ``host <host> (process <pid>)``, ``process <pid> of another container or an earlier boot of
    this host``, ``process <pid> of this host written by a bafusion version before 2026-12-05``
    (a marker without PID namespace and boot); ``None`` for a folder without a readable marker
    (not bafusion's) and for one of a process that runs here (a run in progress)."""
    read = _read_marker(wrap)
    if read is None:
        return None
    host, owner, fields = read
    if _marker_held(wrap, fields):
        return None  # its writer holds the marker's lock: a run in progress
    if host != socket.gethostname():
        return f"host {host} (process {owner})"
    if not fields:
        if owner == os.getpid() or _pid_alive(owner):
            return None  # most likely a run in progress here (of an earlier version)
        return f"process {owner} of this host written by a bafusion version before 2026-12-05"
    if any(fields.get(key) != value for key, value in _identity().items()):
        return f"process {owner} of another container or an earlier boot of this host"
    if _namespace_unknown(fields):  # unknown there and here (no /proc): never known gone (process_gone)
        if owner == os.getpid() or _pid_alive(owner):
            return None  # most likely a run in progress here
        return f"process {owner} of this host whose PID namespace is unknown (no /proc)"
    if _KILL_TERMINATES and owner != os.getpid() and _pid_alive_without_kill(owner) is None:
        return f"process {owner} of this host (whether a process runs cannot be asked here: psutil is missing)"
    return None  # ours: stale (removed) or running


def _note_kept(wrap: Path) -> None:
    """Say once on stderr that the leftover ``wrap`` of another host, container, boot or an
    earlier version is kept (:func:`_is_stale` cannot tell whether its process still runs)."""
    if str(wrap) in _said_kept:
        return
    who = _kept_owner(wrap)
    if who is None:
        return
    _said_kept.add(str(wrap))
    try:
        hours = (time.time() - (wrap / PART_MARKER).stat().st_mtime) / 3600
        age = f", begun {hours:.0f} h ago" if hours >= 1 else ""
    except OSError:
        age = ""
    print(f"bafusion: note: {wrap}: the temporary folder of a write by {who}{age} is not removed (whether that "
          f"run still goes on cannot be told from here): remove it by hand once no run writes there{_ready_note(wrap)}",
          file=sys.stderr)

def _ready_note(wrap: Path) -> str:
    """For :func:`_note_kept`: where the kept folder ``wrap`` holds a new output marked ready
    (:data:`READY_MARKER`: a power cut, or a run of another container, while the earlier output
    was away or being removed), that it is there and goes in place of a missing output before
    the folder is removed (removed as told, it was the only copy left); else ``""``."""
    try:
        name = json.loads((wrap / READY_MARKER).read_text(encoding="utf-8"))["name"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return ""
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
        return ""
    new = wrap / name
    if new.is_symlink() or not new.is_dir():
        return ""
    return (f"; it holds that run's new output, complete, at {new}: where {wrap.parent / name} is missing or partly "
            "removed, move it there first")


def _remove_stale(pattern: str, folder: Path) -> list[Path]:
    """Remove the leftovers ``pattern`` in ``folder`` of dead runs of this host (:func:`_is_stale`);
    name those kept of another host, container, boot or earlier version (:func:`_note_kept`)."""
    removed = []
    with contextlib.suppress(OSError):  # an unreadable folder: nothing removed
        for wrap in folder.glob(pattern):
            if _is_stale(wrap):
                if not _roll_forward(wrap):
                    continue  # the complete new output of a killed run that could not be put in place: kept
                _remove_part(wrap)
                removed.append(wrap)
            else:
                _note_kept(wrap)
    return removed


def _file_id(path: Path) -> list[int] | None:
    """``[st_dev, st_ino]`` of ``path`` (not followed), ``None`` where there is none."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino]


def _write_flushed(path: Path, text: str, final: Path) -> None:
    """Write ``text`` to the marker ``path`` of a temporary folder and flush it, and the folder's
    names, to the disk (:func:`sync_file`): it is there before what it announces begins."""
    path.write_text(text, encoding="utf-8")
    sync_file(path, final)
    if os.name != "nt":  # Windows opens no folder to flush
        sync_file(path.parent, final)


def _mark_ready(new: Path, final: Path) -> None:
    """Write :data:`READY_MARKER` into ``new``'s temporary folder (one holding
    :data:`PART_MARKER`; none elsewhere): ``new`` is complete and goes in place of ``final``."""
    wrap = new.parent
    if not (wrap / PART_MARKER).is_file():
        return
    _write_flushed(wrap / READY_MARKER, json.dumps({"name": final.name, "new": _file_id(new)}), final)


def _mark_removing(new: Path, final: Path) -> str | None:
    """Write :data:`REMOVING_MARKER` beside :data:`READY_MARKER` (none where ``new``'s folder
    holds none): ``final``, the earlier output, is about to be removed in place; then put the
    file it names, ``.bafusion-removing-<random>`` (the token), into ``final`` itself, which
    :func:`_remove_in_place` removes last. Its identity, its entries' names and the token tell
    it, half removed, from a folder put there since: the inode of a folder made at once after
    the removal is often the same, reused (ext4), and a copy of the earlier output (a backup put
    back, another run's newer output) has its names. Returns the token's name (``None``: no
    marker written)."""
    wrap = new.parent
    if not (wrap / READY_MARKER).is_file():
        return None
    token = f"{REMOVING_MARKER}-{os.urandom(8).hex()}"
    text = json.dumps({"old": _file_id(final), "names": sorted(os.listdir(final)), "token": token})
    _write_flushed(wrap / REMOVING_MARKER, text, final)
    (final / token).write_bytes(b"")
    return token


def _remove_in_place(folder: Path, token: str | None) -> None:
    """Empty ``folder`` (the earlier output, which cannot be renamed), its file ``token``
    (:func:`_mark_removing`) last: until then a kill leaves it known as half removed
    (:func:`_half_removed`). The empty folder itself is left for :func:`_rename_over` to
    replace in one step: removed here, a kill before the new output was renamed in left the
    output missing, which the next run could not tell from an output the user removed since
    (it put the killed run's output back in its place). Without ``token`` (no marker) it is
    removed whole."""
    if token is None:
        shutil.rmtree(folder)
        return
    for entry in os.scandir(folder):
        if entry.name == token:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(folder / token)


def _rename_over(new: Path, final: Path) -> None:
    """Rename the folder ``new`` to ``final``, an empty folder (:func:`_remove_in_place`) or
    none: over the empty folder in one step (``rename`` replaces an empty folder on POSIX), so
    that a kill leaves either it or the new output; where the system refuses that (Windows; an
    overlay mounted without working extended attributes fails with ``EIO``, and its ``rmdir``
    too), the empty folder is removed first (a kill between those two leaves the output missing,
    which the next run takes for removed by the user: the output is then not done, as after a
    kill between two renames before)."""
    try:
        os.replace(new, final)
    except OSError:
        if not final.is_dir() or final.is_symlink():
            raise
        final.rmdir()
        os.replace(new, final)


def _half_removed(wrap: Path, final: Path) -> tuple[bool, str | None]:
    """Whether ``final`` is the earlier output that the killed run of ``wrap`` was removing in
    place (:data:`REMOVING_MARKER`): the same folder, holding none but its own entries' names,
    and the marker's token (:func:`_mark_removing`), or nothing at all (killed between the
    token's removal and the folder's); and the token's name. A folder put there since, even
    with the inode reused and the earlier output's names, holds no token."""
    try:
        removing = json.loads((wrap / REMOVING_MARKER).read_text(encoding="utf-8"))
        old_id, names, token = removing["old"], set(removing["names"]), removing["token"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return False, None
    if not isinstance(token, str) or not token.startswith(REMOVING_MARKER + "-") or Path(token).name != token:
        return False, None
    if old_id is None or final.is_symlink() or not final.is_dir() or _file_id(final) != old_id:
        return False, None
    try:
        held = set(os.listdir(final))
    except OSError:
        return False, None
    token_held = token in held and os.path.isfile(final / token) and not os.path.islink(final / token)
    return (token_held or not held) and held <= names | {token}, token


#: The outputs this process has named as not put in place (:func:`_note_not_rolled`): once each.
_said_not_rolled: set[str] = set()


def _note_not_rolled(new: Path, final: Path, why: str) -> None:
    """Say once on stderr that the complete new output ``new`` of a killed run is kept, not put
    in place of ``final``, and why."""
    if str(new) in _said_not_rolled:
        return
    _said_not_rolled.add(str(new))
    print(f"bafusion: warning: {final}: a run killed while it replaced this output left the new one, complete, at "
          f"{new}; it cannot be put in place ({why}): move it there by hand", file=sys.stderr)


def _roll_forward(wrap: Path) -> bool:
    """Complete the replacement of an output begun by a killed run, from its stale temporary
    folder ``wrap``: where it holds :data:`READY_MARKER` and the new output it names (the same
    folder: not the earlier output swapped in its place), and the output is missing (killed
    between the earlier one renamed or removed and the new one renamed in) or is the earlier
    one half removed in place (:data:`REMOVING_MARKER`, the same folder), the new one is put in
    place (and the rest of the earlier one removed), said on stderr. A kill before the earlier
    output was touched, or an output put there since by another, is left as it is. Returns
    whether ``wrap`` may be removed: ``False`` where the new output cannot be put in place
    (named on stderr: :func:`_note_not_rolled`), which is then kept, as it is where another
    process is completing it at the same time (:func:`_rolling`: without it, one that had found
    the earlier output half removed went on to remove the new one that the other had put in
    place meanwhile, leaving neither)."""
    with _rolling(wrap) as mine:
        if not mine:
            return False  # another process puts it in place now (and removes the folder)
        try:
            ready = json.loads((wrap / READY_MARKER).read_text(encoding="utf-8"))
            name, new_id = ready["name"], ready["new"]
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            return True
        with _replacing(wrap.parent):  # not between another writer's two renames (replace_folder)
            return _roll_forward_held(wrap, name, new_id)


@contextlib.contextmanager
def _replacing(folder: Path) -> Iterator[None]:
    """Hold the exclusive lock (``flock``, waited for) of the folder ``folder``, the outputs'
    own, while an output in it is replaced in more than one step (:func:`replace_folder`) or a
    killed run's replacement is completed (:func:`_roll_forward`): a completion that looked
    while another writer had renamed the earlier output away found it missing and put the
    killed run's output in its place, and the writer's new output, and the earlier one, were
    lost (its rename in and its putting back both failed, "Directory not empty"). Held briefly
    (renames; the rest of a half removed earlier output). Where the folder cannot be locked (no
    ``fcntl``: Windows; a file system without locks, or NFS, which locks only files open for
    writing) nothing is held, as before.

    Not waited for where the lock's holder is this process (not one of its own
    :func:`_replacing` blocks: another thread's is waited for) or one that runs it
    (:func:`_held_by_this_run`): ``flock FOLDER command``, util-linux's lock of a folder around a
    command, made the command wait for ever at its first such replacement. Said on stderr when
    the wait lasts (:data:`_REPLACING_NOTE_S`), naming the holders (:func:`_flock_holders`); a
    holder that cannot be named (no /proc/locks: macOS) is waited for :data:`_REPLACING_UNKNOWN_S`
    at most."""
    if fcntl is None:
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        yield
        return
    key = (st.st_dev, st.st_ino)
    with _replacing_guard:  # before the lock is tried: another thread of ours that sees it held waits
        _replacing_here[key] = _replacing_here.get(key, 0) + 1
    try:
        start, said = time.monotonic(), False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            except OSError:
                break  # no locks here: nothing held, as before
            else:
                break
            holders = _flock_holders(fd)
            if _held_by_this_run(key, holders):
                if str(folder) not in _said_flocked:
                    _said_flocked.add(str(folder))
                    print(f"bafusion: note: {folder}: this folder is locked (flock) by process {min(holders)}, which "
                          "runs this one (flock FOLDER command?): its outputs are replaced without waiting for "
                          "that lock", file=sys.stderr)
                break
            if not holders and time.monotonic() - start >= _REPLACING_UNKNOWN_S:
                print(f"bafusion: note: {folder}: this folder's lock (flock) is held by a process that cannot be "
                      f"named (no /proc/locks, or one of another machine or container) for {_REPLACING_UNKNOWN_S:.0f} "
                      "s: its output is replaced without waiting for that lock", file=sys.stderr)
                break
            if not said and time.monotonic() - start >= _REPLACING_NOTE_S:
                said = True
                who = f" by process {', '.join(map(str, sorted(holders)))}" if holders else ""
                print(f"bafusion: note: {folder}: waiting for this folder's lock (flock), held{who}: another run "
                      "replaces an output here", file=sys.stderr)
            time.sleep(_REPLACING_POLL_S)
        yield
    finally:
        with _replacing_guard:
            _replacing_here[key] -= 1
            if not _replacing_here[key]:
                del _replacing_here[key]
        os.close(fd)


#: Seconds between tries of a folder's lock (:func:`_replacing`), and before the wait is said.
_REPLACING_POLL_S = 0.05
_REPLACING_NOTE_S = 10.0
#: Seconds a lock whose holder cannot be named (:func:`_flock_holders`: macOS has no /proc/locks,
#: where ``flock FOLDER command`` around the run cannot be told) is waited for at most: the
#: lock of a replacement is held for its renames only (or the removal in place of the rest of an
#: earlier output that cannot be renamed).
_REPLACING_UNKNOWN_S = 60.0
#: The folders (device, inode) whose lock this process's :func:`_replacing` blocks hold or try,
#: with how many (threads), and the lock that guards it.
_replacing_here: dict[tuple[int, int], int] = {}
_replacing_guard = threading.Lock()
#: The folders this process said it replaces outputs in without their lock (:func:`_replacing`): once each.
_said_flocked: set[str] = set()


def _flock_holders(fd: int) -> set[int]:
    """The processes holding a ``flock`` of the file or folder open as ``fd``, as /proc/locks
    names them (Linux: ``1: FLOCK  ADVISORY  WRITE <pid> <major>:<minor>:<inode> 0 EOF``, the
    holder's own PID namespace's numbers; a waiter's line has ``->``); empty where unknown."""
    try:
        st = os.fstat(fd)
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return set()
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = set()
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == want and fields[4].isdigit():
            pids.add(int(fields[4]))
    return pids


def _held_by_this_run(key: tuple[int, int], holders: set[int]) -> bool:
    """Whether the lock of the folder ``key`` (device, inode), held by ``holders``
    (:func:`_flock_holders`), is held by a process that would wait for this one's end: one of
    its ancestors (``flock FOLDER command``: util-linux's flock holds the lock while its command
    runs), or this process itself where no other thread of it is in a :func:`_replacing` block
    of that folder (a descriptor of its own, opened by its caller)."""
    if not holders:
        return False
    with _replacing_guard:
        others = _replacing_here.get(key, 0) > 1  # the caller's own block counts one
    if os.getpid() in holders and not others:
        return True
    pid, seen = os.getppid(), 0
    while pid > 1 and seen < 256:
        if pid in holders:
            return True
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])  # the 4th field: the parent
        except (OSError, IndexError, ValueError):
            return False
        seen += 1
    return False


@contextlib.contextmanager
def _rolling(wrap: Path) -> Iterator[bool]:
    """Hold the exclusive lock (``flock``, not waited for) of ``wrap``'s :data:`READY_MARKER`
    while its replacement is completed (:func:`_roll_forward`); yields ``False`` where another
    process holds it. Where there is no marker, no ``fcntl`` (Windows) or no lock on the file
    system, ``True`` without a lock."""
    if fcntl is None:
        yield True
        return
    try:
        fd = os.open(wrap / READY_MARKER, os.O_RDONLY)
    except OSError:
        yield True  # none: nothing is rolled forward
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        except OSError as e:
            if e.errno not in NO_LOCK_ERRNOS:
                raise
        yield True
    finally:
        os.close(fd)


def _roll_forward_held(wrap: Path, name: Any, new_id: Any) -> bool:
    """:func:`_roll_forward` once its lock is held and :data:`READY_MARKER` read."""
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name or name.startswith(".bafusion-"):
        return True
    new, final = wrap / name, wrap.parent / name
    if new.is_symlink() or not new.is_dir() or new_id is None or _file_id(new) != new_id:
        return True  # put in place already (or swapped: the earlier output lies there)
    state = "missing"
    if not os.path.lexists(final) and os.path.lexists(wrap / REMOVING_MARKER):
        # the earlier output was being emptied in place, and the empty folder is renamed over
        # (_rename_over): a kill leaves it, so a missing output was removed by the user since
        print(f"bafusion: note: {final}: a run killed while it replaced this output had left it partly removed, "
              "and it was removed since: the killed run's new output is not put in its place", file=sys.stderr)
        return True
    if os.path.lexists(final):
        state = "half removed"
        half, token = _half_removed(wrap, final)
        if not half:
            return True  # the earlier output whole, or another's output since: the new one goes
        blocked = _unremovable(final)
        if blocked is not None:
            _note_not_rolled(new, final, f"the rest of the earlier output cannot be removed: {blocked}")
            return False
        try:
            _remove_in_place(final, token)
        except OSError as e:
            _note_not_rolled(new, final, f"the rest of the earlier output cannot be removed: {e.strerror or e}")
            return False
    try:
        _rename_over(new, final)
    except OSError as e:
        _note_not_rolled(new, final, e.strerror or str(e))
        return False
    print(f"bafusion: note: {final}: a run killed while it replaced this output had left it {state}; its new "
          "output, complete, is put in place now", file=sys.stderr)
    return True


#: The longest name part of a temporary folder ``.<name>.part-<random>``, in bytes: a longer
#: output name is cut there (at a character's start), so that the folder's name stays within
#: the 255 bytes a file system allows a name (``.``, ``.part-`` and the 8 random characters
#: add 15: outputs of 241-255 bytes failed with "File name too long").
_PART_NAME_BYTES = 200


def _part_prefix(final: Path) -> str:
    """``.<name>.part-``: the start of the name of a temporary folder of ``final``, ``<name>``
    being ``final``'s name, or its first :data:`_PART_NAME_BYTES` bytes where the whole one
    would make too long a folder name (the file inside keeps the whole name)."""
    raw = os.fsencode(final.name)
    if len(raw) + 15 > 255:
        cut = _PART_NAME_BYTES
        while cut > 0 and (raw[cut] & 0xC0) == 0x80:  # not inside a UTF-8 character
            cut -= 1
        raw = raw[:cut]
    return f".{os.fsdecode(raw)}.part-"


def remove_stale_parts(final: Path) -> list[Path]:
    """Remove the temporary folders ``.<name>.part-*`` beside ``final`` left by killed runs of
    :func:`atomic_dir` or :func:`atomic_file`: only those holding :data:`PART_MARKER` written by
    a process of this host, PID namespace and boot that no longer runs (a run in progress, of
    this host, another container or another host, keeps its own). Returns the folders removed."""
    return _remove_stale(f"{glob.escape(_part_prefix(final))}*", final.parent)


def remove_stale_parts_in(folder: Path) -> list[Path]:
    """:func:`remove_stale_parts` for every output in ``folder``: the leftovers ``.*.part-*``
    of dead runs of this host."""
    return _remove_stale(".*.part-*", folder)


def part_path(path: Path) -> Path:
    """``<path>.part``: the fixed name of a download in progress (:func:`bafusion.data.download.fetch`
    resumes it on purpose). :func:`atomic_file` and :func:`atomic_dir` never use it."""
    return path.with_name(path.name + ".part")


#: A path inside a temporary folder of :func:`atomic_dir` or :func:`atomic_file`:
#: ``.<name>.part-<random>/<name>`` (or ``<name>.old``, the earlier output, or ``<name>.part``,
#: a net's temporary file), at the start of a path component.
_PART_IN_TEXT = re.compile(r"(?<![^/\s'\"(])\.(?P<name>[^/]+?)\.part-[A-Za-z0-9_]+/(?P<inner>(?P=name)[^/\s:'\",)]*)"
                           r"(?=/|$|[\s:'\",)])")


def _output_name(m: re.Match[str]) -> str:
    name, inner = m.group("name"), m.group("inner")
    if inner in (name + ".old", name + ".part"):  # the earlier output, a net's temporary file
        return name
    return inner  # the output's name (whole where the folder's is cut short)


def shown_path(text: str) -> str:
    """``text`` (a path, or a message naming paths) with each path inside a temporary folder of
    this module told as the output's own: ``/d/.prep.part-qkdkfhzg/prep/bg/x.png`` as
    ``/d/prep/bg/x.png``, the path the user gave (a disk-full error of prepare named the hidden
    temporary folder)."""
    return _PART_IN_TEXT.sub(_output_name, text)


def _new_part(final: Path) -> Path:
    """Make the hidden temporary folder ``.<name>.part-<random>`` beside ``final``, marked by
    :data:`PART_MARKER` as this process's. An error names ``final``, not the random name."""
    try:
        wrap = Path(tempfile.mkdtemp(dir=final.parent, prefix=_part_prefix(final)))
    except OSError as e:
        raise OSError(e.errno, e.strerror, os.fspath(final)) from e
    try:
        _write_marker(wrap)
    except BaseException as e:
        _remove_part(wrap)
        if isinstance(e, OSError):
            raise OSError(e.errno, e.strerror, os.fspath(final)) from e
        raise
    return wrap


@contextlib.contextmanager
def part_folder(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a new temporary folder ``.<name>.part-<random>`` beside ``final``, marked by
    :data:`PART_MARKER` as this process's (as :func:`atomic_dir`'s), after removing the
    leftovers of killed runs of this host there (:func:`remove_stale_parts`: a replacement left
    half done is completed); it is removed, with what it holds, when the block ends. For a
    writer that builds the new output inside itself and puts it in place with
    :func:`replace_folder` (:func:`bafusion.data.download.extract_zip`).

    Parameters
    ----------
    final : path
        The output, whose folder holds the temporary folder.

    Yields
    ------
    Path
        The temporary folder (on ``final``'s file system, so that a rename out of it works).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(final)
    wrap = _new_part(final)
    try:
        yield wrap
    finally:
        _remove_part(wrap)


#: What ``fsync`` fails with where a file system cannot flush (some FUSE and special file systems;
#: ``EBADF``: a system that flushes no file opened only to read, as POSIX allows): nothing to
#: wait for there, the write goes on (as it did before files were flushed).
_NO_SYNC_ERRNOS = frozenset(e for e in (getattr(errno, n, None) for n in ("EINVAL", "ENOTSUP", "EOPNOTSUPP", "EROFS",
                                                                          "EBADF"))
                            if e is not None)


def _flush_fd(fd: int, full: bool = True) -> None:
    """Flush the open file ``fd`` to the disk: on macOS (``full``) ``fcntl(fd, F_FULLFSYNC)``, where its
    ``fsync`` only hands the data to the drive, whose cache a power cut loses (Apple's fsync(2));
    ``fsync`` where the system has no ``F_FULLFSYNC`` or the file system refuses it (some network
    and FUSE file systems, ``ENOTSUP``/``EINVAL``: Apple's own SQLite falls back so too). Its
    ``EIO`` or a full disk is raised as it is. Without ``full``, ``fsync`` alone: the drive's
    cache, which ``F_FULLFSYNC`` flushes whole, is flushed once for many files
    (:func:`sync_tree`)."""
    cmd = getattr(fcntl, "F_FULLFSYNC", None) if fcntl is not None and full else None
    if cmd is not None:
        try:
            fcntl.fcntl(fd, cmd)
            return
        except OSError as e:
            if e.errno == errno.EIO or e.errno in _DISK_FULL:
                raise  # the data did not reach the disk: no fsync hides that
            # refused here: the plain fsync below (its error, if any, is the one raised)
    os.fsync(fd)


def sync_file(tmp: str | os.PathLike[str], final: str | os.PathLike[str] | None = None, *, full: bool = True) -> None:
    """Flush the written and closed file ``tmp`` to the disk (``fsync``; ``F_FULLFSYNC`` on macOS:
    :func:`_flush_fd`), once, before it is
    renamed into place: the rename alone is no promise that the data is on the disk, and after
    a power cut or a crash of the system (not of the process: the kernel still holds the data
    then) a file system may show the new name with an empty or partly written file (XFS; ext4
    for a new name), which a later run takes for a finished output. Flushed first, the name
    holds either the earlier file or the whole new one. The folder is not flushed after the
    rename: that would only make the rename itself outlast a crash, and a rename lost leaves the
    earlier output, or none, which every reader takes for not done.

    A ``tmp`` that is gone is left to the rename to name; a file system that cannot flush
    (``EINVAL``, ``ENOTSUP``, ``EBADF``) is no error. Another failure (``EIO``: the data did not reach the
    disk) is raised as the ``OSError`` it is, naming ``final`` (or ``tmp``). ``full=False``: a
    plain ``fsync`` on macOS too, for :func:`sync_tree`, which flushes the drive's cache once
    after all."""
    try:  # Windows' FlushFileBuffers needs a handle that may write
        fd = os.open(tmp, (os.O_RDWR | getattr(os, "O_BINARY", 0)) if os.name == "nt" else os.O_RDONLY)
    except FileNotFoundError:
        return
    except (IsADirectoryError, PermissionError):  # a writer made a folder, or a file it cannot open: not flushed
        return
    try:
        _flush_fd(fd, full)
    except OSError as e:
        if e.errno not in _NO_SYNC_ERRNOS:
            raise OSError(e.errno, e.strerror, os.fspath(final if final is not None else tmp)) from e
    finally:
        os.close(fd)


#: Threads that flush a folder's files (:func:`sync_tree`): ``fsync`` calls made together share
#: the file system's journal commits (2000 files of 20 kB: 6.4 s one after another, 0.42-0.57 s
#: from 8 threads; one run each, ext4 on a virtual disk, a loaded machine: BENCHMARKS.md).
_SYNC_THREADS = 8


def sync_tree(folder: str | os.PathLike[str], final: str | os.PathLike[str] | None = None) -> None:
    """Flush every file under ``folder`` to the disk before :func:`atomic_dir` swaps it into
    place (see :func:`sync_file`): an ``fsync`` of each regular file (symbolic links not
    followed) from :data:`_SYNC_THREADS` threads, then, but on Windows, of each folder (the
    names in it). Only the folder's own files: a ``syncfs`` of the whole file system (of
    versions of 2026-12-07) waited for every other writer's data there too (200 files of
    20 kB with another process's 1-3 GB not yet written: 0.40-1.06 s, where the ``fsync`` of
    each from 8 threads took 0.02-0.13 s), and on Linux before 5.8 reported no write error.
    On macOS each is a plain ``fsync`` and the drive's cache is flushed once at the end
    (``F_FULLFSYNC`` of one file: :func:`_flush_fd`; it flushes the whole cache, so one of each
    file asked the drive for as many whole flushes as there are files).
    A failure (``EIO``) is raised as the ``OSError`` it is, naming ``final`` (or ``folder``)."""
    files: list[str] = []
    dirs: list[str] = []
    for root, _dirs, names in os.walk(folder):
        dirs.append(root)
        for name in names:
            path = os.path.join(root, name)
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISREG(os.lstat(path).st_mode):
                    files.append(path)
    if len(files) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(_SYNC_THREADS, len(files))) as pool:
            list(pool.map(lambda path: sync_file(path, final, full=False), files))  # the first error raised
    else:
        for path in files:
            sync_file(path, final, full=False)
    if os.name != "nt":  # Windows opens no folder to flush
        for path in dirs:
            sync_file(path, final, full=False)
    if fcntl is not None and getattr(fcntl, "F_FULLFSYNC", None) is not None and (files or dirs):
        sync_file(files[-1] if files else dirs[0], final)  # the drive's cache, once for all (macOS)


#: The temporary folders of the :func:`atomic_dir` blocks under way in this process: a file
#: :func:`atomic_file` writes inside one is not flushed on its own (the folder's
#: :func:`sync_tree` flushes it before the folder is swapped into place, when it first appears
#: under its final name; ``fsync`` calls made together share the journal's commits).
_pending_dirs: set[str] = set()


def _in_pending_dir(path: Path) -> bool:
    """Whether ``path`` lies inside a temporary folder of an :func:`atomic_dir` under way here."""
    if not _pending_dirs:
        return False
    text = os.path.realpath(path.parent)
    return any(text == d or text.startswith(d + os.sep) for d in _pending_dirs)


#: The folders in which this process has removed the leftovers of killed runs
#: (:func:`remove_stale_parts_in`) before writing a file there with :func:`atomic_file`: once
#: each, not a listing of a folder of thousands of outputs for every one written.
_swept: set[str] = set()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], *, name: str | None = None) -> Iterator[Path]:
    """Yield a temporary path for ``path``; rename it to ``path`` when the block succeeds,
    delete it when the block raises (or when a stop was asked for meanwhile). A ``path`` that
    is a symbolic link keeps it: the file it points to is replaced (renaming over the link
    turned it into a plain file, the target unchanged). A file replaced keeps its permission
    bits (a params.yaml of mode 640 became 644); a new one has those a plain ``open()`` gives
    (the umask's).

    The temporary file lies in a hidden folder of a name of its own beside ``path``,
    ``.<name>.part-<random>`` (as :func:`atomic_dir`'s), and has the name of ``path`` itself
    (or ``name``): a writer that goes by the name (Pillow's format by the suffix, ``np.save``
    that appends ``.npy``) writes what it would write to ``path``, and nothing of the user's is
    touched. The fixed ``<path>.part`` of versions before 2026-12-04 deleted a file of that name
    and wrote through a symbolic link of that name, and two runs writing one output shared it.
    ``name`` is for a writer that stores the name in the file: ``torch.save`` names its zip's
    root folder after the file name less its last suffix (the model files are written as
    ``<name>.part``, their root ``<name>/``, as they always were).

    The file is flushed to the disk before the rename (:func:`sync_file`: a power cut then
    leaves the earlier file or the whole new one under ``path``), but inside an
    :func:`atomic_dir` block under way, whose folder is flushed whole before it is swapped in.

    A run killed inside the block leaves its folder (holding :data:`PART_MARKER`); the next
    write of this module into that folder by a process of this host and PID namespace removes
    it, and every other leftover of a dead run of theirs there (:func:`remove_stale_parts_in`),
    once per folder and process; on a local file system also one of another container or boot
    whose marker's lock is free (:func:`_marker_held`). One left by another machine, or elsewhere
    by another container (PID namespace) or boot, or by a version before 2026-12-05 (a marker
    without the namespace), stays until removed by hand (the sweep names it on stderr, once per
    process: :func:`_note_kept`).

    A file or folder ``<name>.part`` beside ``path`` (the fixed temporary name of versions before
    2026-12-04, left only by a run killed with SIGKILL or a crash) is never touched nor named: it
    holds no marker, so nothing tells it from a file of the user's of that name or a download
    in progress (:func:`part_path`); such a leftover is removed by hand."""
    final = Path(os.path.abspath(path))  # a chdir inside the block changes nothing
    if final.is_symlink():
        final = final.resolve()
    if name is not None and (name in ("", ".", "..", PART_MARKER) or Path(name).name != name):
        raise ValueError(f"atomic_file: name must be a plain file name, not {name!r}")
    final.parent.mkdir(parents=True, exist_ok=True)
    folder = os.path.realpath(final.parent)
    if folder not in _swept:
        _swept.add(folder)
        remove_stale_parts_in(final.parent)
    wrap = _new_part(final)
    tmp = wrap / (name or final.name)
    try:
        yield tmp
        raise_if_stopped()
        if not _in_pending_dir(final):  # inside an atomic_dir: flushed with its folder (sync_tree)
            sync_file(tmp, final)  # before the chmod: Windows opens a read-only file for no flush
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, stat.S_IMODE(final.stat().st_mode))
        os.replace(tmp, final)
    finally:
        _remove_part(wrap)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``path``; on success it replaces ``path`` whole
    (not when a stop was asked for meanwhile). A ``path`` that is a symbolic link keeps it: the
    folder it points to is replaced (renaming over the link broke it, and every later run).

    The temporary folder, and the earlier output while it is replaced, lie in a hidden folder of
    a name of their own, ``.<name>.part-<random>`` beside ``path``, marked by
    :data:`PART_MARKER`: a folder of the user's (``<name>.part``, ``<name>.old``) is never
    touched (the fixed names deleted them), and the leftovers of a killed run are removed by the
    next run (:func:`remove_stale_parts`).

    An earlier output is swapped with the new one in one step where the system can
    (:func:`exchange`: Linux, macOS); elsewhere it is renamed away and the new one renamed in. An
    earlier output that cannot be renamed at all (``EXDEV``: a folder of an overlay's lower
    layer, a container image's) is removed where it is and the new one renamed in
    (:func:`_replace_unmovable`; it failed after the work). A SIGKILL between those two steps
    leaves neither in place (or a part of the earlier one) until the next write there of a
    process of this host, which puts the new one, complete and marked ready
    (:data:`READY_MARKER`), in place (:func:`_roll_forward`; the next run removed it with the
    temporary folder). After a power cut (another boot) the temporary folder is kept and named,
    but on a local file system, where its marker's lock, ended with its process, tells that its
    run is gone (:func:`_marker_held`): there it is completed and removed as any dead run's.
    The new folder's files are flushed to the disk before it is swapped in (:func:`sync_tree`)."""
    final = Path(os.path.abspath(path))  # a chdir inside the block changes nothing
    if final.is_symlink():
        final = final.resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(final)
    wrap = _new_part(final)
    try:
        tmp = wrap / final.name
        tmp.mkdir()  # the umask's mode, as the output had (mkdtemp's folder is 700)
        pending = os.path.realpath(tmp)
        _pending_dirs.add(pending)
        try:
            yield tmp
        finally:
            _pending_dirs.discard(pending)
        raise_if_stopped()
        sync_tree(tmp, final)
        old = wrap / (final.name + ".old")
        if replace_folder(tmp, final, old) == tmp:  # swapped: the earlier output now lies in tmp, removed below
            with contextlib.suppress(OSError):  # named as the earlier output, if left (read-only)
                os.replace(tmp, old)
    finally:
        _remove_part(wrap)


def replace_folder(new: Path, final: Path, old: Path) -> Path | None:
    """Put the folder ``new`` in place of ``final`` (of :func:`atomic_dir`, of
    :func:`bafusion.data.download.extract_zip`), ``new`` and ``old`` beside it on its file system.

    An earlier ``final`` is swapped with ``new`` in one step where the system can
    (:func:`exchange`); elsewhere renamed to ``old`` and ``new`` renamed in (put back when that
    fails). One that cannot be renamed at all (``EXDEV``: a folder of an overlay's lower layer)
    is removed where it is and ``new`` renamed in (:func:`_replace_unmovable`).

    Parameters
    ----------
    new : Path
        The new folder, complete (and flushed: :func:`sync_tree`).
    final : Path
        Where it goes.
    old : Path
        A free name for the earlier ``final`` when it is renamed away.

    Returns
    -------
    Path or None
        Where the earlier ``final`` lies now, for the caller to remove: ``new`` (swapped) or
        ``old``; None where there was none or it is removed.

    Raises
    ------
    OSError
        A rename's failure (the earlier ``final`` left in place); see :func:`_replace_unmovable`.
    """
    if not final.exists():
        with _replacing(final.parent):  # a killed run's replacement completed meanwhile (_roll_forward) is swapped
            if not final.exists():
                os.replace(new, final)
                return None
    try:
        if exchange(new, final):
            return new
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        with _replacing(final.parent):
            _mark_ready(new, final)
            _replace_unmovable(new, final, e)
        return None
    with _replacing(final.parent):  # no completion of a killed run's replacement in between (_roll_forward)
        try:
            _mark_ready(new, final)  # two steps from here: a kill between them is completed by the next run
            os.replace(final, old)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            _mark_ready(new, final)
            _replace_unmovable(new, final, e)
            return None
        try:
            os.replace(new, final)
        except BaseException:
            os.replace(old, final)  # the earlier output back in place, not deleted with the rest
            raise
        return old


def _unremovable(folder: Path) -> str | None:
    """Why ``folder`` cannot be removed whole: the first folder (``folder``'s parent, ``folder``
    or one inside it) whose entries this process may not remove (no write or search
    permission), or a mount point inside it (``shutil.rmtree`` empties the file system mounted
    there, then fails), named; None where none is found."""
    for top in (folder.parent, folder):
        if not os.access(top, os.W_OK | os.X_OK):
            return f"no write permission on {top}"
    for root, dirs, _files in os.walk(folder):
        for name in dirs:
            inner = os.path.join(root, name)
            if os.path.islink(inner):
                continue
            if os.path.ismount(inner):
                return f"{inner} is a mount point"
            if not os.access(inner, os.W_OK | os.X_OK):
                return f"no write permission on {inner}"
    return None


def _replace_unmovable(tmp: Path, final: Path, error: OSError) -> None:
    """Put the new folder ``tmp`` in place of the earlier output ``final``, which cannot be
    renamed at all (``error``: ``EXDEV``, "Invalid cross-device link", beside itself: a folder
    of an overlay file system's lower layer, such as one of a container's image, where the
    overlay has no ``redirect_dir``): the swap and the two renames both fail so, after the
    work. The earlier folder is emptied where it is (an overlay hides its files), then the new
    one renamed over it in one step (:func:`_rename_over`): a kill or a power cut between leaves
    a part of the earlier one, or it empty, the new one in its temporary folder, which the next
    run puts in place (:data:`REMOVING_MARKER`, :func:`_roll_forward`); an output missing then
    was removed by the user since, and stays so.

    Refused, ``error`` raised naming ``final`` with the earlier output untouched, for a mount
    point and for a folder with one inside, or one that this process may not empty (no write
    permission: :func:`_unremovable`; removed, it was left half removed, and a file system
    mounted inside emptied). Where the removal or
    the rename fails all the same, the new folder is kept beside ``final`` as
    ``<final>.new-<pid>`` and named in the error (it was removed with its temporary folder, so
    that both outputs were lost)."""
    if os.path.ismount(final):
        raise OSError(error.errno, error.strerror, os.fspath(final)) from error
    blocked = _unremovable(final)
    if blocked is not None:
        raise OSError(error.errno, f"{error.strerror} (a folder of an overlay's lower layer cannot be renamed), and "
                      f"it cannot be removed either ({blocked})", os.fspath(final)) from error
    try:
        token = _mark_removing(tmp, final)  # a kill from here on: the next run puts tmp in place
        _remove_in_place(final, token)
        _rename_over(tmp, final)
    except OSError as e:
        kept = final.with_name(f"{final.name}.new-{os.getpid()}")
        try:
            os.replace(tmp, kept)
        except OSError:
            raise e from error
        why = e.strerror or str(e)
        where = f": {e.filename}" if e.filename is not None else ""
        raise OSError(e.errno, f"{why}{where} (replacing the earlier output, which cannot be renamed: a folder of an "
                      f"overlay's lower layer); the new output is kept at {kept}", os.fspath(final)) from e


#: ``renameat2``'s flag that swaps two paths (Linux 3.15, glibc 2.28; <linux/fs.h>).
_RENAME_EXCHANGE = 2
#: ``AT_FDCWD``: paths relative to the working directory (<fcntl.h>, Linux).
_AT_FDCWD = -100
#: What ``renameat2`` fails with where it cannot swap (a kernel or C library without it, a file
#: system that does not support the flag, such as some FUSE and network file systems): the
#: caller falls back to two renames.
_NO_EXCHANGE_ERRNOS = frozenset(e for e in (getattr(errno, n, None) for n in ("EINVAL", "ENOSYS", "EOPNOTSUPP",
                                                                                "ENOTSUP")) if e is not None)
#: ``renamex_np``'s flag that swaps two paths (macOS 10.12; <stdio.h>).
_RENAME_SWAP = 2
#: libc's ``renameat2`` (on macOS ``renamex_np`` with :data:`_RENAME_SWAP`, called as
#: ``renameat2``), ``None`` where there is none (another system, an older glibc, musl before
#: 1.2.5, macOS before 10.12), or ``False`` before the first look.
_renameat2: Any = False


def _libc_renameat2() -> Any:
    """libc's ``renameat2`` through ctypes, looked up once; ``None`` where there is none. On
    macOS, ``renamex_np(from, to, RENAME_SWAP)`` (APFS and HFS+ swap; another file system
    refuses with ``ENOTSUP``) in its place, taking ``renameat2``'s arguments: the working
    directory's paths only (:data:`_AT_FDCWD`), any flags meaning the swap."""
    global _renameat2
    if _renameat2 is False:
        _renameat2 = None
        linux, mac = sys.platform.startswith("linux"), sys.platform == "darwin"
        if linux or mac:
            try:
                import ctypes

                func = getattr(ctypes.CDLL(None, use_errno=True), "renameat2" if linux else "renamex_np")
            except (OSError, AttributeError, ImportError):
                pass
            else:
                if linux:
                    func.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
                    func.restype = ctypes.c_int
                    _renameat2 = func
                else:
                    func.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint)
                    func.restype = ctypes.c_int

                    def swap(_olddir: int, old: bytes, _newdir: int, new: bytes, _flags: int) -> int:
                        return int(func(old, new, _RENAME_SWAP))

                    _renameat2 = swap
    return _renameat2


def exchange(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Swap the files or folders ``a`` and ``b`` in one step, where the system can: Linux's
    ``renameat2`` with ``RENAME_EXCHANGE``, macOS's ``renamex_np`` with ``RENAME_SWAP``. A folder output replaced by two renames (the earlier
    one away, the new one in) was lost, old and new, by a SIGKILL or a power cut between them;
    swapped, either the old or the new one is in place at every moment.

    Parameters
    ----------
    a, b : path
        Two existing paths on one file system.

    Returns
    -------
    bool
        True when swapped; False, nothing changed, where the system cannot swap (neither Linux
        nor macOS, a C library without ``renameat2``, a file system that refuses the flag:
        ``EINVAL``, ``EOPNOTSUPP``, ``ENOTSUP``): the caller renames instead.

    Raises
    ------
    OSError
        Any other failure of ``renameat2`` (a path missing, no permission, two file systems),
        naming both paths.
    """
    func = _libc_renameat2()
    if func is None:
        return False
    import ctypes

    src, dst = os.fsencode(a), os.fsencode(b)
    if func(_AT_FDCWD, src, _AT_FDCWD, dst, _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _NO_EXCHANGE_ERRNOS:
        return False
    raise OSError(err, os.strerror(err), os.fspath(a), None, os.fspath(b))


def displayable(text: str) -> str:
    """``text`` as UTF-8 can hold it: a file name undecodable in the locale (``os.fsdecode``
    gives its bytes as lone surrogates, such as ``Ádám`` in UTF-8 under a cp1252 or ASCII
    locale) is read back as UTF-8, its bytes that are not UTF-8 as U+FFFD; other text is
    returned as it is. A lone surrogate failed a figure's title in matplotlib ("TypeError:
    set_text(): incompatible function arguments") and the write of metrics.csv, and with them
    the command after its work (:func:`write_text`, :mod:`bafusion.fusion.maps`)."""
    if not _SURROGATE.search(text):
        return text
    return _NON_ASCII.sub(lambda m: _read_back(m.group()), text)  # each run alone: one name's bytes


#: A lone surrogate (``os.fsdecode``'s stand-in for a byte the locale cannot decode) ...
_SURROGATE = re.compile("[\ud800-\udfff]")
#: ... and a run of characters that are not ASCII (every file system encoding's ASCII is ASCII).
_NON_ASCII = re.compile("[^\x00-\x7f]+")


def _read_back(run: str) -> str:
    """A run of non-ASCII characters of :func:`displayable`: its bytes in the locale read as UTF-8."""
    if not _SURROGATE.search(run):
        return run
    try:
        return os.fsencode(run).decode("utf-8", "replace")
    except UnicodeEncodeError:  # characters the locale lacks beside the surrogates: those kept
        return _SURROGATE.sub("\ufffd", run)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_file`: in UTF-8 and with its line ends
    as given, whatever the locale and the platform (a CSV, JSON or Markdown output is the same
    bytes everywhere; in the locale's encoding, cp1252 on Windows, a pair named 日本 failed the
    write of metrics.csv after the work, and Windows' text mode turned ``\n`` into ``\r\n``).
    A name the locale could not decode is written as :func:`displayable` reads it."""
    with atomic_file(path) as tmp:
        tmp.write_text(displayable(text), encoding="utf-8", newline="")


#: What ``flock`` raises on a filesystem without locks (NFS without lockd, some FUSE mounts).
NO_LOCK_ERRNOS = frozenset(e for e in (getattr(errno, n, None) for n in ("ENOLCK", "EOPNOTSUPP", "ENOTSUP", "EINVAL"))
                           if e is not None)
_said_no_locks: set[str] = set()


def locks_unsupported(e: OSError, folder: Path) -> bool:
    """Whether ``flock`` failed with ``e`` because ``folder``'s filesystem has no locks; if so,
    say once (per folder and process) on stderr that the run goes on without one."""
    if e.errno not in NO_LOCK_ERRNOS:
        return False
    if str(folder) not in _said_no_locks:
        _said_no_locks.add(str(folder))
        name = errno.errorcode.get(e.errno, str(e.errno))
        print(f"{folder}: this filesystem does not support locks ({name}): two runs into it are not kept apart",
              file=sys.stderr)
    return True


#: Where the byte that ``msvcrt.locking`` locks lies in a lock file (Windows): past the holder's
#: process id, which Windows' mandatory lock would hide from the process it refuses.
_MSVCRT_LOCK_OFFSET = 1 << 30
#: The folders this process said that it cannot lock (no ``fcntl`` nor ``msvcrt``): once each.
_said_no_lock_api: set[str] = set()


def _msvcrt_lock(fh: object, mode: int) -> None:
    """``msvcrt.locking`` of the byte at :data:`_MSVCRT_LOCK_OFFSET` of the open file ``fh``;
    a lock held by another raises ``BlockingIOError``, as ``flock`` does."""
    fd = fh.fileno()  # type: ignore[attr-defined]
    fh.flush()  # type: ignore[attr-defined]
    os.lseek(fd, _MSVCRT_LOCK_OFFSET, os.SEEK_SET)
    try:
        msvcrt.locking(fd, mode, 1)
    except OSError as e:
        if mode == msvcrt.LK_NBLCK and e.errno in (errno.EACCES, getattr(errno, "EDEADLOCK", errno.EDEADLK)):
            raise BlockingIOError(e.errno, e.strerror) from e
        raise
    finally:
        fh.seek(0)  # type: ignore[attr-defined]


#: Seconds between tries of a lock that :func:`_lock` waits for with ``msvcrt`` (Windows).
_MSVCRT_WAIT_S = 0.05


def _lock(fh: object, wait: bool = False) -> None:
    """Take the exclusive lock of the open file ``fh`` (``flock``, on Windows
    ``msvcrt.locking``): without waiting, ``BlockingIOError`` when another holds it; with
    ``wait``, once the other releases it (``msvcrt``'s own wait gives up after 10 s, so it is
    tried again every :data:`_MSVCRT_WAIT_S`). The OS releases it when the process ends."""
    if fcntl is not None:
        fcntl.flock(fh, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    while True:
        try:
            _msvcrt_lock(fh, msvcrt.LK_NBLCK)
            return
        except BlockingIOError:
            if not wait:
                raise
        time.sleep(_MSVCRT_WAIT_S)


def _unlock(fh: object) -> None:
    if fcntl is not None:
        fcntl.flock(fh, fcntl.LOCK_UN)
    else:
        _msvcrt_lock(fh, msvcrt.LK_UNLCK)


#: The errors of a full disk (or of a user's quota reached).
_DISK_FULL = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


def _lock_write_error(e: OSError, lock: Path, what: str | None) -> OSError:
    """The error for ``e``, raised writing the holder's process id into the lock file ``lock``
    (:func:`folder_lock`): with ``what``, a :class:`~bafusion.errors.UserError` ``<lock>: cannot
    write <what>: <reason>`` (a full disk said so, with what to do); else ``e`` naming ``lock``."""
    if what is None:
        return OSError(e.errno, e.strerror, os.fspath(lock))
    from bafusion.errors import UserError

    why = e.strerror or str(e)
    if e.errno in _DISK_FULL:
        why += " (the disk is full: free space on it and rerun)"
    return UserError(f"{lock}: cannot write {what}: {why}")


@contextlib.contextmanager
def folder_lock(folder: Path, lock_name: str, *, busy: Callable[[int | None], BaseException],
                what: str | None = None, remove_created: bool = False) -> Iterator[bool]:
    """Hold an exclusive lock (``flock``) on ``folder`` for one run: on its file ``lock_name``,
    created when missing and holding the holder's process id. Yields whether a lock is held.

    The lock is taken without waiting: where another process holds it, ``busy(pid)`` is raised
    (``pid`` the holder's process id as its lock file names it, ``None`` when unknown). The OS
    releases the lock when the process ends, killed too; the lock file is removed on release
    (while still held). A holder checks, once it has the lock, that the file it locked is still
    the one at the path (another holder may have removed it in between), and takes the lock
    again on the new file otherwise. ``folder`` is created when missing, and with
    ``remove_created`` removed again on release when this call created it and it is left empty.

    On Windows, which has no ``fcntl``, the lock is ``msvcrt.locking``'s on one byte of the lock
    file (:func:`_lock`), also released by the OS when the process ends; there the lock file
    is removed once released (Windows removes no open file). Where neither is there, or the
    filesystem has no locks (``ENOLCK``: NFS without lockd, some FUSE mounts), no lock is taken
    and ``False`` is yielded, said once per folder on stderr (:func:`locks_unsupported`; no
    ``fcntl`` nor ``msvcrt`` took no lock silently, and two runs wrote one record). Another error of ``flock``, or one
    creating ``folder``, is raised as the ``OSError`` it is; one creating the lock file too,
    or with ``what`` (the lock's name for the user, e.g. ``"fuse-dir's lock"``) a
    :class:`~bafusion.errors.UserError` ``<lock file>: cannot create <what>: <reason>``; one
    writing the process id into it (a full disk) likewise ``<lock file>: cannot write <what>:
    <reason>``, or without ``what`` the ``OSError`` naming the lock file.
    """
    created = not folder.exists()
    lock = folder / lock_name
    fh = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if fcntl is None and msvcrt is None:
            if str(folder) not in _said_no_lock_api:
                _said_no_lock_api.add(str(folder))
                print(f"{folder}: this system has no file locks (neither fcntl nor msvcrt): two runs into it are "
                      "not kept apart", file=sys.stderr)
            yield False
            return
        while True:
            folder.mkdir(parents=True, exist_ok=True)  # removed by an earlier holder that created it
            try:
                fh = open(lock, "a+", encoding="utf-8")
            except OSError as e:
                if what is None:
                    raise
                from bafusion.errors import UserError

                raise UserError(f"{lock}: cannot create {what}: {e.strerror or e}") from e
            try:
                _lock(fh)
            except BlockingIOError:
                fh.seek(0)
                text = fh.read().strip()
                fh.close()
                fh = None
                raise busy(int(text) if text.isdigit() else None) from None
            except OSError as e:
                fh.close()
                fh = None
                if not locks_unsupported(e, folder):
                    raise
                with contextlib.suppress(OSError):
                    lock.unlink()
                yield False  # no lock on this filesystem: go on without one
                return
            try:
                if os.stat(lock).st_ino == os.fstat(fh.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            fh.close()  # the file locked was removed by its holder meanwhile: lock the one there now
            fh = None
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}\n")
            fh.flush()
        except OSError as e:  # a full disk: the error named only the folder
            raise _lock_write_error(e, lock, what) from e
        yield True
    finally:
        if fh is not None:
            with contextlib.suppress(OSError):
                lock.unlink()  # while held (Windows refuses: removed below)
            _unlock(fh)
            fh.close()
            if fcntl is None:  # Windows: a file another process has opened meanwhile is not removed
                with contextlib.suppress(OSError):
                    lock.unlink()
        if created and remove_created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
