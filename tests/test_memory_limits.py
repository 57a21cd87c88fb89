"""The ``bafusion`` command under a memory limit: an address-space limit (``ulimit -v``,
``prlimit --as``) too small to load torch, and the advice of an out-of-memory error."""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from bafusion.cli import app
from bafusion.cli import main as cli_main

SRC = Path(__file__).resolve().parents[1] / "src"


def _limit_address_space(mib: int):
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (mib * 2**20, mib * 2**20))

    return limit


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS as Linux counts it")
def test_an_address_space_limit_too_small_for_torch_is_one_line(tmp_path: Path) -> None:
    """Under ``prlimit --as=300M`` the command died importing torch with a raw traceback
    (ImportError: libtorch_cpu.so: failed to map segment), at 400-700 MiB with a C++
    abort, OpenBLAS's message or a hang. It says what happened and what it needs, status 1."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "bafusion.cli", "fuse", "a.png", "b.png", "-o", "F.png"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
                       preexec_fn=_limit_address_space(300))
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("bafusion fuse: error: ") and "address-space limit" in lines[0]
    assert "300 MiB" in lines[0] and "ulimit -v" in lines[0]


@pytest.mark.parametrize("error", [ImportError("libtorch_cpu.so: failed to map segment from shared object"),
                                   MemoryError()], ids=["map-segment", "memory-error"])
def test_running_out_of_memory_while_loading_is_one_line(monkeypatch, capsys, error) -> None:
    """A failure to load the command's modules for want of memory (under a limit that the
    check before it lets through) is said in one line, not a traceback."""
    def fail(name: str):
        raise error

    monkeypatch.setattr(app.importlib, "import_module", fail)
    assert cli_main(["fuse", "a.png", "b.png", "-o", "F.png"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("bafusion fuse: error: out of memory loading the program")


def test_an_import_error_of_another_kind_stays_a_traceback(monkeypatch) -> None:
    def fail(name: str):
        raise ImportError("cannot import name 'x' from 'y'")

    monkeypatch.setattr(app.importlib, "import_module", fail)
    with pytest.raises(ImportError, match="cannot import name"):
        cli_main(["fuse", "a.png", "b.png", "-o", "F.png"])


def test_the_advice_names_an_address_space_limit(monkeypatch) -> None:
    """The advice estimates resident memory (~380 MiB + 32 MiB per megapixel); under an
    address-space limit torch reserves far more virtual memory than that, and the advice
    did not say so: a user set ``ulimit -v`` to the estimate and still ran out."""
    real = resource.getrlimit
    monkeypatch.setattr(resource, "getrlimit",
                        lambda which: (2048 * 2**20, resource.RLIM_INFINITY) if which == resource.RLIMIT_AS else real(which))
    for command in ("fuse", "train", "count"):
        advice = app._memory_advice(argparse.Namespace(command=command))
        assert "address-space limit" in advice and "2048 MiB" in advice, advice
    monkeypatch.setattr(resource, "getrlimit",
                        lambda which: (resource.RLIM_INFINITY, resource.RLIM_INFINITY) if which == resource.RLIMIT_AS else real(which))
    assert "address-space" not in app._memory_advice(argparse.Namespace(command="fuse"))


def test_a_static_tls_import_error_is_not_called_out_of_memory(monkeypatch) -> None:
    """libgomp's "cannot allocate memory in static TLS block" (aarch64, torch beside sklearn or
    cv2) is not a memory shortage (its fix is LD_PRELOAD): it keeps its traceback."""
    def fail(name: str):
        raise ImportError("/lib/aarch64-linux-gnu/libgomp.so.1: cannot allocate memory in static TLS block")

    monkeypatch.setattr(app.importlib, "import_module", fail)
    with pytest.raises(ImportError, match="static TLS"):
        cli_main(["fuse", "a.png", "b.png", "-o", "F.png"])


def test_version_under_a_small_address_space_limit(monkeypatch, capsys) -> None:
    """``bafusion --version`` loads no command module: a limit too small for torch must not
    refuse it with "this command needs at least 1024 MiB"."""
    monkeypatch.setattr("bafusion.fusion.memory.address_space_limit_mib", lambda: 900)
    assert cli_main(["--version"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("bafusion ") and "address-space" not in out.err, out
