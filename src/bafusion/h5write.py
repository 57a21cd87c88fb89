"""Writing an HDF5 output so that a full disk is one line naming the output, not a crash.

h5py reports a failed write in three ways: an ``OSError`` without a file name (a chunk written
at once, e.g. ``write_direct_chunk``), a ``RuntimeError`` "Can't close dataset (file write
failed: ... errno = 28 ...)" when a cached chunk is flushed, and an "Exception ignored in
ObjectID.__dealloc__" when that flush happens as a dataset object is dropped. After the last,
or after a failed close, the file can no longer be closed and Python crashed at exit
("Segmentation fault", status 139). :func:`h5_output` turns the first two into an ``OSError``
naming the output (``bafusion`` says it in one line, exit 2) and closes the file in the error
path; the writer calls :meth:`h5py.File.flush` before it drops a dataset (so the third cannot
happen: the flush raises instead).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator
from typing import Any

import h5py

_ERRNO = re.compile(r"\berrno = (\d+)")
_FILENAME = re.compile(r"\bfilename = '([^']*)'")

#: Errors of a write that h5py raises without a file name: the output's.
_WRITE_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG, errno.EROFS, errno.EIO})


def write_error(e: BaseException, final: str | os.PathLike[str], tmp: str | os.PathLike[str] | None = None) -> OSError | None:
    """The ``OSError`` naming ``final`` that h5py's error ``e`` stands for (a failed write of
    the file: disk full, quota, read-only, I/O), or ``None`` when ``e`` is something else, or
    names (HDF5's "filename = '...'") another file than ``tmp``."""
    if not isinstance(e, (OSError, RuntimeError)) or getattr(e, "filename", None) is not None:
        return None
    named = _FILENAME.search(str(e))
    if tmp is not None and named and os.path.abspath(named.group(1)) != os.path.abspath(tmp):
        return None  # another file's (two outputs written at once: patches)
    m = _ERRNO.search(str(e))
    code = int(m.group(1)) if m else e.errno if isinstance(e, OSError) else None
    if code not in _WRITE_ERRNOS:
        return None
    return OSError(code, os.strerror(code), os.fspath(final))


def discard(f: h5py.File) -> None:
    """Close ``f``, whose content is thrown away, even when its writes fail: its file descriptor
    is first pointed at ``/dev/null``, so the flush of what is cached succeeds (on a full disk
    the close failed, and Python crashed at exit closing the file again)."""
    with contextlib.suppress(Exception):
        if f.id.valid and f.driver == "sec2":
            fd = f.id.get_vfd_handle()
            null = os.open(os.devnull, os.O_RDWR)
            try:
                os.dup2(null, fd)
            finally:
                os.close(null)
    with contextlib.suppress(Exception):
        f.close()


@contextlib.contextmanager
def h5_output(tmp: str | os.PathLike[str], final: str | os.PathLike[str], **kwargs: Any) -> Iterator[h5py.File]:
    """Yield ``tmp`` opened for writing (``h5py.File(tmp, "w", **kwargs)``; ``tmp`` is the
    temporary file of :func:`bafusion.atomic.atomic_file` for ``final``) and close it. A write
    that fails (in the block or at the close) raises ``OSError(errno, strerror, final)``; on
    any error the file is closed unwritten (:func:`discard`)."""
    f = h5py.File(tmp, "w", **kwargs)
    try:
        yield f
    except BaseException as e:
        discard(f)
        err = write_error(e, final, tmp)
        if err is not None:
            raise err from e
        raise
    try:
        f.close()
    except (OSError, RuntimeError) as e:
        discard(f)
        err = write_error(e, final, tmp)
        if err is not None:
            raise err from e
        raise
