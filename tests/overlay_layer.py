"""Test helper: a folder that cannot be renamed, as one of an overlay's lower layer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def overlay_lower_layer(monkeypatch: pytest.MonkeyPatch, out: Path, swap: bool = True) -> None:
    """Make ``out`` a folder that cannot be renamed (EXDEV for the swap and for a rename of
    ``out`` away), as one of an overlay's lower layer (checked on a real overlay mount);
    ``swap=False``: a system without the swap (no ``renameat2``), only the rename away fails."""
    import ctypes
    import errno

    import bafusion.atomic as atomic

    def exdev(olddir, old, newdir, new, flags):
        ctypes.set_errno(errno.EXDEV)
        return -1

    monkeypatch.setattr(atomic, "_renameat2", exdev if swap else None)
    real = os.replace

    def replace(src, dst):
        if Path(src) == out:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), os.fspath(src), None, os.fspath(dst))
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
