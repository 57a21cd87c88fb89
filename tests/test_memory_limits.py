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
    """The advice estimates resident memory (~460 MiB + 36 MiB per megapixel); under an
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


def _limit(monkeypatch, mib: int) -> None:
    monkeypatch.setattr("bafusion.fusion.memory.address_space_limit_mib", lambda: mib)


@pytest.mark.parametrize("command", ["fuse", "fuse-dir", "train", "evaluate"])
def test_help_under_a_limit_that_loads_torch_but_is_too_small_to_run(monkeypatch, capsys, command) -> None:
    """``--help`` needs only to load the command's options (torch: ``fuse --help`` worked from
    768 MiB; ``evaluate --help`` does not import it): under a limit of 900 MiB it was refused
    with "this command needs at least 1024 MiB to start"."""
    from bafusion.fusion.memory import MIN_ADDRESS_SPACE_LOAD_MIB, MIN_ADDRESS_SPACE_MIB

    _limit(monkeypatch, (MIN_ADDRESS_SPACE_LOAD_MIB + MIN_ADDRESS_SPACE_MIB) // 2)
    with pytest.raises(SystemExit) as e:
        cli_main([command, "--help"])
    out = capsys.readouterr()
    assert e.value.code == 0 and out.out.startswith("usage: bafusion ") and "address-space" not in out.err, out


def test_evaluate_help_loads_no_torch_and_is_never_refused(monkeypatch, capsys) -> None:
    _limit(monkeypatch, 300)
    with pytest.raises(SystemExit) as e:
        cli_main(["evaluate", "--help"])
    assert e.value.code == 0 and "address-space" not in capsys.readouterr().err


def test_an_argument_error_under_a_small_limit_is_the_argument_error(monkeypatch, capsys) -> None:
    from bafusion.fusion.memory import MIN_ADDRESS_SPACE_MIB

    _limit(monkeypatch, MIN_ADDRESS_SPACE_MIB - 1)
    with pytest.raises(SystemExit) as e:
        cli_main(["fuse", "a.png", "b.png", "-o", "F.png", "--no-such-option"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--no-such-option" in err and "address-space" not in err, err


@pytest.mark.parametrize("argv", [["fuse", "a.png", "b.png", "-o", "F.png"], ["evaluate", "--models", "m"]])
def test_a_job_under_the_measured_minimum_is_refused_naming_limit_and_minimum(monkeypatch, capsys, argv) -> None:
    from bafusion.fusion.memory import MIN_ADDRESS_SPACE_MIB

    _limit(monkeypatch, MIN_ADDRESS_SPACE_MIB - 1)
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert f"of {MIN_ADDRESS_SPACE_MIB - 1} MiB" in err and f"at least {MIN_ADDRESS_SPACE_MIB} MiB" in err, err


def test_help_below_what_loading_torch_needs_is_refused_naming_it(monkeypatch, capsys) -> None:
    """Below what loading torch needs, ``fuse --help`` aborted or hung (measured): refused."""
    from bafusion.fusion.memory import MIN_ADDRESS_SPACE_LOAD_MIB

    _limit(monkeypatch, 700)
    assert cli_main(["fuse", "--help"]) == 1
    err = capsys.readouterr().err
    assert "of 700 MiB" in err and f"at least {MIN_ADDRESS_SPACE_LOAD_MIB} MiB" in err, err


def test_a_library_that_cannot_be_mapped_while_running_is_out_of_memory(capsys) -> None:
    """Under ``prlimit --as=900M`` a tiny fuse died in a lazy ``import scipy.sparse`` ("failed
    to map segment from shared object") with a traceback called a bug in bafusion."""
    def fail(args):
        raise ImportError("/venv/scipy/sparse/_sparsetools.so: failed to map segment from shared object")

    rc = app._run("bafusion fuse", argparse.Namespace(command="fuse", images=[], func=fail))
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err and err.startswith("bafusion fuse: error: out of memory"), err


def test_the_out_of_memory_estimate_counts_the_alignment(monkeypatch) -> None:
    """The estimate (fuse's out-of-memory line, fuse-dir's skip reason) ignored --align, which
    measured 1.8x the fusion's peak at 24 MP (2.1x the old estimate): a 24 MP
    aligned pair was said to need the fusion's 1.3 GB. With --align (auto too: it may align)
    the estimate is the larger of the fusion's and the alignment's, and says so."""
    from bafusion.fusion import batch, memory

    monkeypatch.setattr(memory, "_megapixels", lambda path: 24.0)
    shots = [Path("a.jpg"), Path("b.jpg")]
    plain = round(memory.BASE_MIB + memory.MIB_PER_MEGAPIXEL * 24)
    aligned = round(memory.ALIGN_BASE_MIB + memory.ALIGN_MIB_PER_MEGAPIXEL * 24)
    assert memory.fuse_need_mib(shots) == plain and memory.fuse_need_mib(shots, align=True) == aligned > plain
    monkeypatch.setattr(memory, "_megapixels", lambda path: 1.0)  # small: the fusion's peak is the larger
    assert memory.fuse_need_mib(shots, align=True) == memory.fuse_need_mib(shots)
    monkeypatch.setattr(memory, "_megapixels", lambda path: 24.0)
    for align, need in ((None, plain), ("none", plain), ("similarity", aligned), ("auto", aligned)):
        advice = app._memory_advice(argparse.Namespace(command="fuse", images=["a.jpg", "b.jpg"], align=align))
        assert f"needs about {need} MiB" in advice and (("with --align" in advice) == (need == aligned)), advice
    reason = batch.out_of_memory_reason(MemoryError("Unable to allocate"), shots, align=True)
    assert f"needs about {aligned} MiB with --align" in reason, reason


def test_the_out_of_memory_estimate_counts_save_maps(monkeypatch) -> None:
    """The estimate (fuse's out-of-memory line) ignored --save-maps, whose maps and Fig. 3 peak
    after the fusion above it: 960 MiB against the fusion's 848 for a 12 MP pair (785 against
    642 at 6 MP), beside an estimate of 892 (676). With --save-maps the estimate is the larger
    of the fusion's and the maps' (1010 at 12 MP, 830 at 6 MP; 991 MiB measured at 12 MP with
    --threads 2) and says so; fuse-dir writes no
    maps."""
    from bafusion.fusion import memory

    shots = [Path("a.jpg"), Path("b.jpg")]
    # 991: the 12 MP pair at --threads 2 (steps side by side, bafusion.threads.side_by_side)
    for mp, measured in ((6.0, 785), (12.0, 960), (12.0, 991)):
        monkeypatch.setattr(memory, "_megapixels", lambda path, mp=mp: mp)
        plain, maps = memory.fuse_need_mib(shots), memory.fuse_need_mib(shots, save_maps=True)
        assert plain < measured <= maps < 1.1 * measured, (mp, plain, maps)
        advice = app._memory_advice(argparse.Namespace(command="fuse", images=["a.jpg", "b.jpg"], align=None,
                                                       save_maps="maps"))
        assert f"needs about {maps} MiB with --save-maps;" in advice, advice
        advice = app._memory_advice(argparse.Namespace(command="fuse", images=["a.jpg", "b.jpg"], align="similarity",
                                                       save_maps="maps"))
        both = memory.fuse_need_mib(shots, align=True, save_maps=True)
        assert both == max(maps, memory.fuse_need_mib(shots, align=True)), (both, maps)
        assert f"needs about {both} MiB with --align and --save-maps;" in advice, advice
    assert "--save-maps" not in app._memory_advice(argparse.Namespace(command="fuse", images=["a.jpg", "b.jpg"],
                                                                      align=None, save_maps=None))


def test_the_stack_estimate_covers_the_measured_peaks_with_and_without_save_maps(monkeypatch) -> None:
    """A stack's per-shot allowance was an estimate (16 MiB per megapixel): with --save-maps it
    predicted 1319 MiB for 8 shots at 5.3 MP where ``fuse --stack-rule chain --threads 1
    --save-maps`` peaked at 1667 (session 38, one run each, every step's maps held to the end);
    since session 39 each step's maps are encoded as it is done: 950 MiB at 3 shots, 1128 at 8.
    Without, since the chain keeps only each step's decision, 1161 where the chain peaked at 835
    and the joint rule at 843 (683 at 3). The estimate is at or above each measured peak, within
    10 % of it (20 % with the maps: the pair's own estimate is 11 % above), and grows per shot at
    least as the measured peaks did."""
    from bafusion.fusion import memory

    mp = 2304 * 2304 / 1e6
    monkeypatch.setattr(memory, "_megapixels", lambda path: mp)
    monkeypatch.setattr(memory, "_shape", lambda path: (2304, 2304))  # Fig. 3 draws these unreduced
    monkeypatch.setattr(memory, "_full_size", lambda *a, **k: False)

    def need(n: int, save_maps: bool) -> int:
        est = memory.fuse_need_mib([Path(f"s{i}.png") for i in range(n)], save_maps=save_maps)
        assert est is not None
        return est

    # the joint rule's 843 MiB at 8 shots without the maps (the chain's: 835); with them, each
    # step's maps encoded as it is done (session 39): 950 and 1128 MiB, the pair 919
    for save_maps, measured, within in ((True, {2: 919, 3: 950, 8: 1128}, 1.20), (False, {3: 683, 8: 843}, 1.10)):
        for n, peak in measured.items():
            assert peak <= need(n, save_maps) <= within * peak, (save_maps, n, need(n, save_maps), peak)
        shots = sorted(measured)
        for lo, hi in zip(shots, shots[1:]):
            growth = (measured[hi] - measured[lo]) / (hi - lo)
            assert (need(hi, save_maps) - need(lo, save_maps)) / (hi - lo) >= growth, (save_maps, lo, hi, growth)
    # the chain holding every step's maps to write them (before session 39): 1664 MiB at 8 shots
    assert need(8, True) < 1664 * 0.85
    assert need(2, True) == round(memory.MAPS_BASE_MIB + (memory.MAPS_MIB_PER_MEGAPIXEL  # a pair: its own
                                                         + memory.FIG3_FULL_MIB_PER_MEGAPIXEL) * mp) >= 919


def test_fuse_dir_out_of_memory_reason_names_the_address_space_limit(monkeypatch) -> None:
    """fuse-dir's skip reason under ``prlimit --as=1300M`` said "a 12-megapixel pair needs about
    892 MiB" and nothing of the 1300 MiB limit (fuse's error says what the limit counts): read
    as a contradiction. The reason now ends with the same note, and has none without a limit."""
    from bafusion.fusion import batch, memory

    monkeypatch.setattr(memory, "_megapixels", lambda path: 12.0)
    shots = [Path("a.jpg"), Path("b.jpg")]
    _limit(monkeypatch, 1300)
    reason = batch.out_of_memory_reason(MemoryError("Unable to allocate 89.9 MiB"), shots)
    assert "needs about" in reason and "address-space limit (ulimit -v / prlimit --as) of 1300 MiB" in reason, reason
    monkeypatch.setattr("bafusion.fusion.memory.address_space_limit_mib", lambda: None)
    reason = batch.out_of_memory_reason(MemoryError("Unable to allocate 89.9 MiB"), shots)
    assert "needs about" in reason and "address-space" not in reason and not reason.endswith("; "), reason


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS as Linux counts it")
def test_an_address_space_limit_too_small_for_numpy_is_one_line_not_an_interrupt(tmp_path: Path) -> None:
    """Under ``prlimit --as=150M`` ``count`` and ``patches`` said "interrupted" (status 130):
    OpenBLAS, unable to start its threads, raised SIGINT while numpy loaded. They now refuse up
    front, naming the limit and what loading numpy needs, status 1."""
    from bafusion.fusion.memory import MIN_ADDRESS_SPACE_NUMPY_MIB

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "BAFUSION_MLFLOW": "0"}
    r = subprocess.run([sys.executable, "-m", "bafusion.cli", "count"], capture_output=True, text=True, env=env,
                       cwd=Path(__file__).resolve().parents[1], timeout=120, preexec_fn=_limit_address_space(150))
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "interrupted" not in r.stderr, r.stderr
    assert lines[0].startswith("bafusion count: error: the address-space limit (ulimit -v / prlimit --as) of 150 MiB")
    assert f"at least {MIN_ADDRESS_SPACE_NUMPY_MIB} MiB" in lines[0], lines[0]


@pytest.mark.parametrize("argv", [["count"], ["patches", "shard-0.h5", "--out", "p"]])
def test_a_numpy_command_under_the_measured_minimum_is_refused_naming_limit_and_minimum(monkeypatch, capsys,
                                                                                       argv) -> None:
    from bafusion.fusion.memory import MIN_ADDRESS_SPACE_NUMPY_MIB

    _limit(monkeypatch, MIN_ADDRESS_SPACE_NUMPY_MIB - 1)
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert f"of {MIN_ADDRESS_SPACE_NUMPY_MIB - 1} MiB" in err and f"at least {MIN_ADDRESS_SPACE_NUMPY_MIB} MiB" in err
    with pytest.raises(SystemExit) as e:  # --help needs less: never refused
        cli_main([argv[0], "--help"])
    assert e.value.code == 0 and "address-space" not in capsys.readouterr().err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS as Linux counts it")
@pytest.mark.parametrize("argv", [["metrics", "a.png", "b.png", "f.png"], ["download-record", "--help"]],
                         ids=["metrics", "download-record-help"])
def test_a_command_loading_scipy_with_its_options_is_refused_not_hung(tmp_path: Path, argv) -> None:
    """Under ``prlimit --as=230M`` ``metrics``, ``baseline`` and the ``download-*`` commands (also
    their ``--help``: their modules load numpy and scipy to build the options) hung, SIGTERM
    unheard, as scipy's OpenBLAS retried its allocations; at 150 MiB they said "out of memory
    loading the program", at 300 MiB OpenBLAS aborted. Refused up front as ``count`` is."""
    from bafusion.fusion.memory import MIN_ADDRESS_SPACE_NUMPY_MIB

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "BAFUSION_MLFLOW": "0"}
    try:
        r = subprocess.run([sys.executable, "-m", "bafusion.cli", *argv], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=60, preexec_fn=_limit_address_space(230))
    except subprocess.TimeoutExpired:
        pytest.fail(f"bafusion {argv[0]} hung under a 230 MiB address-space limit")
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"bafusion {argv[0]}: error: the address-space limit (ulimit -v / prlimit --as) of "
                               "230 MiB"), lines[0]
    assert f"at least {MIN_ADDRESS_SPACE_NUMPY_MIB} MiB" in lines[0], lines[0]


@pytest.mark.parametrize("argv", [
    ["metrics", "a.png", "b.png", "f.png"], ["baseline", "a.png", "b.png", "-o", "F.png"],
    ["download-eval", "-o", "ev"], ["download-alphamatting", "-o", "am"], ["download-coco", "-o", "bg", "--count", "3"],
    ["download-record", "-o", "r.json", "--source", "dir", "bg=bg"], ["preset", "paper"],
    ["composite-index", "-o", "i.json", "s.h5"], ["prepare", "-o", "prepared"],
], ids=lambda a: a[0])
def test_every_command_running_numpy_is_refused_under_its_minimum(monkeypatch, capsys, argv) -> None:
    """The check covered the data commands of the pipeline only: ``metrics``, ``baseline``, the
    ``download-*`` commands and ``preset`` (its check of the params loads numpy) went on to fail
    loading numpy (SIGINT, OpenBLAS's message, a SystemError called a bug) or hang."""
    from bafusion.fusion.memory import MIN_ADDRESS_SPACE_NUMPY_MIB

    _limit(monkeypatch, MIN_ADDRESS_SPACE_NUMPY_MIB - 1)
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"bafusion {argv[0]}: error: the address-space limit"), err
    assert f"of {MIN_ADDRESS_SPACE_NUMPY_MIB - 1} MiB" in err and f"at least {MIN_ADDRESS_SPACE_NUMPY_MIB} MiB" in err



# ---------------------------------------------------------------- a cgroup's memory limit


def _png_pair(folder: Path, stem: str = "s", size: int = 40) -> tuple[Path, Path]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(stem))
    paths = []
    for n in "AB":
        p = folder / f"{stem}-{n}.png"
        Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths[0], paths[1]


def _fake_limit(monkeypatch, mib: int, megapixels=lambda path: 24.0, swap: int = 0) -> None:
    """A cgroup limit of ``mib`` MiB (:func:`memory_limit` faked) and ``swap`` MiB of swap beyond
    it (:func:`swap_room`: none by default, whatever this machine has), shots of ``megapixels`` by
    their header, decided at the working resolution, and no MemAvailable warning (this machine's free memory is no test's)."""
    from bafusion.fusion import memory

    monkeypatch.setattr(memory, "memory_limit", lambda *a, **k: (mib, "/fake/cgroup/memory.max"))
    monkeypatch.setattr(memory, "swap_room", lambda *a, **k: (swap, "/fake/cgroup/memory.swap.max"))
    monkeypatch.setattr(memory, "_full_size", lambda *a, **k: False)  # decided at the working resolution, as 24 MP is
    monkeypatch.setattr(memory, "_megapixels", megapixels)
    monkeypatch.setattr(memory, "available_mib", lambda *a, **k: None)
    monkeypatch.delenv(memory.MEMORY_CHECK_ENV, raising=False)


def test_memory_limit_reads_cgroup_v2_and_v1_files(tmp_path: Path) -> None:
    """The limit of the process's cgroup or of a parent (v2 ``memory.max``; v1
    ``memory.limit_in_bytes`` of the memory hierarchy, the top one inside a container), none
    where each says "max" or v1's unlimited, none without a cgroup file."""
    from bafusion.fusion import memory

    proc, root = tmp_path / "cgroup", tmp_path / "fs"
    proc.write_text("0::/job/step\n")
    (root / "job" / "step").mkdir(parents=True)
    (root / "job" / "step" / "memory.max").write_text("max\n")
    (root / "job" / "memory.max").write_text(f"{800 << 20}\n")
    assert memory.memory_limit(str(proc), str(root)) == (800, str(root / "job" / "memory.max"))
    (root / "job" / "step" / "memory.max").write_text(f"{(600 << 20) + 5}\n")  # the smaller one holds
    assert memory.memory_limit(str(proc), str(root)) == (600, str(root / "job" / "step" / "memory.max"))
    (root / "job" / "step" / "memory.max").write_text("max\n")
    (root / "job" / "memory.max").write_text("max\n")
    assert memory.memory_limit(str(proc), str(root)) is None
    # v1 beside a v2 line (hybrid), the host's cgroup path not mounted in the container
    proc.write_text("5:devices:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    (root / "memory").mkdir()
    (root / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert memory.memory_limit(str(proc), str(root)) is None
    (root / "memory" / "memory.limit_in_bytes").write_text(f"{1 << 30}\n")
    assert memory.memory_limit(str(proc), str(root)) == (1024, str(root / "memory" / "memory.limit_in_bytes"))
    assert memory.memory_limit(str(tmp_path / "no-such-file"), str(root)) is None


def test_fuse_refuses_a_pair_over_the_cgroup_limit_before_reading_it(tmp_path: Path, tiny_nets: Path, monkeypatch,
                                                                     capsys) -> None:
    """Under a cgroup limit (docker --memory=800m) a 24 MP pair printed "fusing 2 images" and
    was ended by the kernel, exit 137, no message: the estimate was used only after a
    MemoryError, which a cgroup never raises. It is refused before the shots are read, naming
    them, the estimate, the limit and what helps; within the margin, or with
    BAFUSION_MEMORY_CHECK=0, it is fused."""
    from bafusion.fusion import batch, memory

    a, b = _png_pair(tmp_path / "in")
    out = tmp_path / "f.png"
    _fake_limit(monkeypatch, 800)
    real = batch.prepare_sources

    def no_work(*args, **kwargs):
        raise AssertionError("the shots were read")

    monkeypatch.setattr(batch, "prepare_sources", no_work)
    argv = ["fuse", str(a), str(b), "-o", str(out), "--model", str(tiny_nets), "--device", "cpu", "--quiet"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    need = round(memory.BASE_MIB + memory.MIB_PER_MEGAPIXEL * 24)
    assert f"error: {a}, {b}: needs more memory" in err and f"needs about {need} MiB" in err, err
    assert "the limit is 800 MiB (/fake/cgroup/memory.max" in err and "BAFUSION_MEMORY_CHECK=0" in err, err
    assert "fuse.working_side" in err and "Traceback" not in err and not out.exists()
    monkeypatch.setattr(batch, "prepare_sources", real)
    _fake_limit(monkeypatch, int(need / memory.MEMORY_MARGIN) + 1)  # within the margin: fused
    assert cli_main(argv) == 0, capsys.readouterr().err
    _fake_limit(monkeypatch, 800)
    monkeypatch.setenv(memory.MEMORY_CHECK_ENV, "0")
    out.unlink()
    assert cli_main(argv) == 0 and out.is_file(), capsys.readouterr().err


def test_fuse_warns_when_less_memory_is_available_than_the_estimate(tmp_path: Path, tiny_nets: Path, monkeypatch,
                                                                    capsys) -> None:
    """No cgroup limit, but less available memory (MemAvailable) than the pair needs: a warning,
    and the fusion goes on (swap, or other processes freeing memory, may hold it)."""
    from bafusion.fusion import memory

    a, b = _png_pair(tmp_path / "in")
    monkeypatch.setattr(memory, "memory_limit", lambda *a, **k: None)
    monkeypatch.setattr(memory, "_megapixels", lambda path: 24.0)
    monkeypatch.setattr(memory, "available_mib", lambda *a, **k: 500)
    monkeypatch.setattr(memory, "_resident_mib", lambda: 100)
    rc = cli_main(["fuse", str(a), str(b), "-o", str(tmp_path / "f.png"), "--model", str(tiny_nets), "--device",
                   "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 0 and "warning: a 24-megapixel pair needs about" in err and "about 600 MiB are available" in err, err
    monkeypatch.setattr(memory, "available_mib", lambda *a, **k: 4000)
    assert memory.memory_warning([a, b]) is None


def test_fuse_dir_skips_a_stack_over_the_cgroup_limit_and_fuses_the_others(tmp_path: Path, tiny_nets: Path,
                                                                           monkeypatch, capsys) -> None:
    """fuse-dir under a cgroup limit: the stack over it is skipped with the reason (the estimate,
    the limit) before it is read, the others are fused; the kernel ended the whole batch."""
    from bafusion.fusion import batch

    src, out = tmp_path / "in", tmp_path / "out"
    for stem in ("p", "q", "r"):
        _png_pair(src, stem)
    _fake_limit(monkeypatch, 800, lambda path: 24.0 if path.name.startswith("q-") else 0.001)
    real = batch.fuse_files

    def fuse_files(paths, *args, **kwargs):
        assert not paths[0].name.startswith("q-"), "the stack over the limit was read"
        return real(paths, *args, **kwargs)

    monkeypatch.setattr(batch, "fuse_files", fuse_files)
    rc = cli_main(["fuse-dir", str(src), str(out), "--model", str(tiny_nets), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert rc == batch.EXIT_SKIPPED, err
    assert "skipped q: needs more memory than this process may use" in err and "the limit is 800 MiB" in err, err
    assert sorted(p.name for p in out.iterdir()) == [batch.OUTPUT_MARKER, "p.png", "r.png"]


def test_fuse_set_refuses_a_pair_over_the_cgroup_limit_before_any_work(tmp_path: Path, tiny_nets: Path,
                                                                       monkeypatch, capsys) -> None:
    """fuse-set: a pair over the cgroup limit is refused before the first pair is fused (the
    kernel would end the run at it, the pairs before lost with it)."""
    import json

    pairs, out = tmp_path / "set", tmp_path / "fused"
    for stem in ("p1", "p2"):
        _png_pair(pairs, stem)
    (pairs / "index.json").write_text(json.dumps({"pairs": ["p1", "p2"]}))
    _fake_limit(monkeypatch, 800, lambda path: 24.0 if path.name.startswith("p2-") else 0.001)
    rc = cli_main(["fuse-set", "--pairs", str(pairs), "--model", str(tiny_nets), "--out", str(out), "--device",
                   "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and f"pair p2 ({pairs / 'p2-A.png'}, {pairs / 'p2-B.png'}): needs more memory" in err, err
    assert "the limit is 800 MiB" in err and not out.exists()


def test_the_estimate_counts_the_uint16_copies_of_deep_sources(tmp_path: Path, monkeypatch) -> None:
    """A 24 MP 16-bit RGB TIFF pair peaked at 1542 MiB, 16 % over the 1324 MiB estimated (its
    uint16 copies, ~11 MiB per megapixel, not counted): a source of more than 8 bits (TIFF,
    colour and gray PNG) adds them; 8-bit pairs keep their estimate."""
    import numpy as np
    import tifffile
    from PIL import Image

    from bafusion.fusion import memory
    from bafusion.io import png16_bytes

    rgb16 = np.random.default_rng(1).integers(0, 65536, (16, 20, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "a16.tif", rgb16, photometric="rgb")
    (tmp_path / "a16.png").write_bytes(png16_bytes(rgb16))
    Image.fromarray(rgb16[..., 0]).save(tmp_path / "g16.png")  # 16-bit gray (Pillow I;16)
    Image.fromarray((rgb16 >> 8).astype(np.uint8)).save(tmp_path / "a8.png")
    tifffile.imwrite(tmp_path / "a8.tif", (rgb16 >> 8).astype(np.uint8), photometric="rgb")
    monkeypatch.setattr(memory, "_megapixels", lambda path: 24.0)
    monkeypatch.setattr(memory, "_full_size", lambda *a, **k: False)
    plain = round(memory.BASE_MIB + memory.MIB_PER_MEGAPIXEL * 24)
    deep = round(memory.BASE_MIB + (memory.MIB_PER_MEGAPIXEL + memory.DEEP_MIB_PER_MEGAPIXEL) * 24)
    assert plain == 1324 and deep == 1588  # the probe's 24 MP pairs: 1290 MiB (JPEG) and 1542 MiB (16-bit TIFF)
    assert memory.fuse_need_mib([tmp_path / "a8.png", tmp_path / "a8.tif"]) == plain
    for name in ("a16.tif", "a16.png", "g16.png"):
        assert memory.fuse_need_mib([tmp_path / "a8.png", tmp_path / name]) == deep, name
    three = [tmp_path / "a16.tif", tmp_path / "a16.png", tmp_path / "a8.png"]
    shot = memory.MIB_PER_MEGAPIXEL_SHOT + memory.DEEP_MIB_PER_MEGAPIXEL_SHOT
    assert memory.fuse_need_mib(three) == round(memory.BASE_MIB + (memory.MIB_PER_MEGAPIXEL
                                                                   + memory.DEEP_MIB_PER_MEGAPIXEL) * 24 + shot * 24)


def test_a_stack_with_save_maps_is_estimated_with_each_steps_encoded_maps(tmp_path: Path, monkeypatch) -> None:
    """``fuse --save-maps`` of a chain stack keeps each step's maps encoded as PNG (session 39;
    before, every step's arrays, about 18 bytes a pixel: session 38's probe measured 672 / 1246
    / 2066 MiB at 3 / 8 / 15 shots of 2304x2304 holding them without writing them): 950 and 1128
    MiB at 3 and 8 shots with ``--save-maps`` (BENCHMARKS.md "Memory of a stack"). Without
    ``--save-maps`` the earlier steps' maps are let go, and the estimate stays."""
    from bafusion.fusion import memory

    monkeypatch.setattr(memory, "_megapixels", lambda path: 2304 * 2304 / 1e6)
    monkeypatch.setattr(memory, "_shape", lambda path: (2304, 2304))
    monkeypatch.setattr(memory, "_full_size", lambda *a, **k: False)
    monkeypatch.setattr(memory, "_deep", lambda path: False)
    for n, measured in ((3, 950), (8, 1128)):
        shots = [tmp_path / f"{i}.png" for i in range(n)]
        assert memory.fuse_need_mib(shots, save_maps=True) >= measured, n
    # the plain estimate is the fusion's (its per-shot share unchanged)
    mp = 2304 * 2304 / 1e6
    assert memory.fuse_need_mib(shots) == round(memory.BASE_MIB + memory.MIB_PER_MEGAPIXEL * mp
                                                + memory.MIB_PER_MEGAPIXEL_SHOT * mp * 6)


def _shot(h: int, w: int) -> "np.ndarray":
    """A uint8 RGB array of (h, w) that takes no memory: the estimate reads only its shape and dtype."""
    import numpy as np

    return np.broadcast_to(np.zeros(1, np.uint8), (h, w, 3))


def test_a_pair_whose_fig3_draws_its_maps_unreduced_is_estimated_above_its_measured_peak() -> None:
    """Fig. 3 of a pair of at most 2559 px a side (a map under four times its 640 px panel) draws
    the maps as they are, and matplotlib resamples them at full size: session 39 measured PNG
    pairs with ``--save-maps`` at 919 MiB (2304x2304) and 1075 MiB (2550x2550), where the
    estimate said 809 and 845, which let start a fusion the limit could not hold
    (BENCHMARKS.md "Memory of a stack"). A pair whose maps are reduced by 2 or more (the JPEG
    pairs the constants were measured on) keeps its estimate."""
    from bafusion.fusion import memory
    from bafusion.fusion.maps import fig3_factor

    assert fig3_factor((2304, 2304)) == fig3_factor((2550, 2550)) == 1
    assert fig3_factor((2560, 2560)) == fig3_factor((2000, 3000)) == 2
    for side, measured in ((2304, 919), (2550, 1075)):
        need = memory.fuse_need_mib([_shot(side, side)] * 2, save_maps=True)
        assert need is not None and measured <= need <= measured * 1.15, (side, need)
    assert memory.fuse_need_mib([_shot(2000, 3000)] * 2, save_maps=True) == round(
        memory.MAPS_BASE_MIB + memory.MAPS_MIB_PER_MEGAPIXEL * 6.0)
    # the figure is drawn only with the maps
    assert memory.fuse_need_mib([_shot(2304, 2304)] * 2) == round(memory.BASE_MIB + memory.MIB_PER_MEGAPIXEL
                                                                  * 2304 * 2304 / 1e6)


def test_a_joint_stack_with_save_maps_is_estimated_by_its_own_rule() -> None:
    """The joint rule writes five maps of the whole stack, no per-step maps nor Fig. 3: 8 shots
    of 2304x2304 peaked at 875 MiB with ``--save-maps`` (843 without), where the estimate, the
    chain's, said 1733 (twice the peak: a limit that holds it refused it). Now within 15 % above;
    the chain's (1128 measured) stays above its peak, and without the maps the rules are alike."""
    from bafusion.fusion import memory
    from bafusion.fusion.params import FusionParams

    shots = [_shot(2304, 2304)] * 8
    joint = memory.fuse_need_mib(shots, save_maps=True, params=FusionParams(stack_rule="joint"))
    assert joint is not None and 875 <= joint <= 875 * 1.15, joint
    assert memory.fuse_need_mib(shots, save_maps=True, params={"stack_rule": "joint"}) == joint
    chain = memory.fuse_need_mib(shots, save_maps=True, params=FusionParams(stack_rule="chain"))
    assert chain is not None and chain >= 1128 and chain == memory.fuse_need_mib(shots, save_maps=True)
    assert memory.fuse_need_mib(shots, params=FusionParams(stack_rule="joint")) == memory.fuse_need_mib(shots) >= 843
    # a pair is fused by the pair rule whatever the stack rule: the chain's estimate
    pair = [_shot(2304, 2304)] * 2
    assert (memory.fuse_need_mib(pair, save_maps=True, params=FusionParams(stack_rule="joint"))
            == memory.fuse_need_mib(pair, save_maps=True))


def test_fuse_with_save_maps_is_checked_against_the_limit_with_the_maps_estimate(tmp_path: Path, tiny_nets: Path,
                                                                                 monkeypatch, capsys) -> None:
    """``--save-maps`` needs more than the fusion (its estimate counts them since 0.5.0): the
    cgroup check before any work counted the fusion alone, so a pair whose maps go over the
    limit was started and then ended by the kernel. A limit between the two estimates lets the
    plain fusion through and refuses it with --save-maps, naming the maps' estimate."""
    from bafusion.fusion import batch, memory

    a, b = _png_pair(tmp_path / "in")
    out = tmp_path / "f.png"
    mp = 1.0
    plain = memory.fuse_need_mib([a, b])
    with_maps = memory.fuse_need_mib([a, b], save_maps=True)
    assert plain is not None and with_maps is not None
    _fake_limit(monkeypatch, 0, megapixels=lambda path: mp)
    plain, with_maps = memory.fuse_need_mib([a, b]), memory.fuse_need_mib([a, b], save_maps=True)
    assert with_maps > plain * memory.MEMORY_MARGIN * 1.05, (plain, with_maps)
    limit = int(plain / memory.MEMORY_MARGIN) + 5  # the fusion fits within the margin, the maps do not
    assert with_maps > limit * memory.MEMORY_MARGIN
    _fake_limit(monkeypatch, limit, megapixels=lambda path: mp)
    argv = ["fuse", str(a), str(b), "-o", str(out), "--model", str(tiny_nets), "--device", "cpu", "--quiet"]
    assert cli_main(argv) == 0 and out.is_file(), capsys.readouterr().err
    out.unlink()
    real = batch.prepare_sources

    def no_work(*args, **kwargs):
        raise AssertionError("the shots were read")

    monkeypatch.setattr(batch, "prepare_sources", no_work)
    assert cli_main([*argv, "--save-maps", str(tmp_path / "maps")]) == 2
    err = capsys.readouterr().err
    assert "needs more memory" in err and f"needs about {with_maps} MiB" in err and "--save-maps" in err, err
    assert not out.exists() and not (tmp_path / "maps").exists()
    monkeypatch.setattr(batch, "prepare_sources", real)


def test_fuse_set_is_checked_against_the_limit_with_the_maps_estimate(tmp_path: Path, tiny_nets: Path,
                                                                      monkeypatch, capsys) -> None:
    """fuse-set writes every pair's maps and Fig. 3 (maps/), which need more than the fusion
    below 27 MP (628 MiB against 470 for a 520x520 pair), but its cgroup check counted the fusion
    alone: a limit between the two let the run start, and the kernel would end it at the maps
    of the first pair. It is checked with the maps' estimate, as fuse --save-maps."""
    import json

    from bafusion.fusion import memory

    pairs, out = tmp_path / "set", tmp_path / "fused"
    _png_pair(pairs, "p1")
    (pairs / "index.json").write_text(json.dumps({"pairs": ["p1"]}))
    shots = [pairs / "p1-A.png", pairs / "p1-B.png"]
    _fake_limit(monkeypatch, 0, megapixels=lambda path: 0.27)
    plain, with_maps = memory.fuse_need_mib(shots), memory.fuse_need_mib(shots, save_maps=True)
    limit = int(plain / memory.MEMORY_MARGIN) + 5  # the fusion fits within the margin, the maps do not
    assert plain <= limit * memory.MEMORY_MARGIN < with_maps, (plain, with_maps, limit)
    _fake_limit(monkeypatch, limit, megapixels=lambda path: 0.27)
    rc = cli_main(["fuse-set", "--pairs", str(pairs), "--model", str(tiny_nets), "--out", str(out), "--device",
                   "cpu", "--no-progress"])
    err = capsys.readouterr().err
    # fuse-set has no --save-maps (it writes the maps always): the reason named that option
    assert rc == 2 and "pair p1 (" in err and f"needs about {with_maps} MiB with its maps and Fig. 3" in err, err
    assert "--save-maps" not in err and not out.exists()


def test_swap_room_reads_cgroup_v2_and_v1_swap_files(tmp_path: Path) -> None:
    """The swap a cgroup may use beyond its memory limit: v2 ``memory.swap.max`` (the smallest of
    the cgroup's and its parents'), v1 ``memory.memsw.limit_in_bytes`` (memory and swap) less
    the limit, unbounded by the cgroup without one; at most the machine's free swap (none on a
    machine without swap); None without a memory limit."""
    from bafusion.fusion import memory

    proc, root, meminfo = tmp_path / "cgroup", tmp_path / "fs", tmp_path / "meminfo"
    proc.write_text("0::/job/step\n")
    (root / "job" / "step").mkdir(parents=True)
    (root / "job" / "memory.max").write_text(f"{800 << 20}\n")
    meminfo.write_text("MemTotal:       24683772 kB\nSwapTotal:       4194304 kB\nSwapFree:        2048000 kB\n")
    args = (str(proc), str(root), str(meminfo))
    assert memory.swap_room(*args) == (2000, f"{meminfo} SwapFree")  # no swap.max: the machine's free swap
    (root / "job" / "memory.swap.max").write_text(f"{800 << 20}\n")  # docker --memory=800m (--memory-swap 1600m)
    (root / "job" / "step" / "memory.swap.max").write_text(f"{(300 << 20) + 7}\n")
    assert memory.swap_room(*args) == (300, str(root / "job" / "step" / "memory.swap.max"))
    (root / "job" / "step" / "memory.swap.max").write_text("0\n")  # --memory-swap = --memory: no swap
    assert memory.swap_room(*args)[0] == 0
    (root / "job" / "step" / "memory.swap.max").write_text("max\n")
    (root / "job" / "memory.swap.max").write_text("max\n")
    meminfo.write_text("SwapTotal:             0 kB\nSwapFree:              0 kB\n")  # a machine without swap
    assert memory.swap_room(*args) == (0, f"{meminfo} SwapFree")
    meminfo.write_text("SwapFree:        2048000 kB\n")
    (root / "job" / "memory.max").write_text("max\n")
    assert memory.swap_room(*args) is None  # no memory limit
    # v1: memory and swap together
    proc.write_text("4:memory:/docker/abc\n")
    (root / "memory").mkdir()
    (root / "memory" / "memory.limit_in_bytes").write_text(f"{1 << 30}\n")
    assert memory.swap_room(*args) == (2000, f"{meminfo} SwapFree")  # swap not accounted
    (root / "memory" / "memory.memsw.limit_in_bytes").write_text(f"{3 << 29}\n")  # 1536 MiB in all
    assert memory.swap_room(*args) == (512, str(root / "memory" / "memory.memsw.limit_in_bytes"))
    (root / "memory" / "memory.memsw.limit_in_bytes").write_text("9223372036854771712\n")
    assert memory.swap_room(*args) == (2000, f"{meminfo} SwapFree")
    # v1 memory.swappiness 0 (docker --memory-swappiness=0): the limit's reclaim swaps nothing, so
    # the kernel ends the process at the limit; it was counted as 2000 MiB of swap (warned, not refused)
    (root / "memory" / "memory.swappiness").write_text("0\n")
    assert memory.swap_room(*args) == (0, str(root / "memory" / "memory.swappiness"))
    (root / "memory" / "docker" / "abc").mkdir(parents=True)  # the cgroup's own folder: its own says
    (root / "memory" / "docker" / "abc" / "memory.swappiness").write_text("60\n")
    assert memory.swap_room(*args) == (2000, f"{meminfo} SwapFree")
    (root / "memory" / "docker" / "abc" / "memory.swappiness").write_text("0\n")
    (root / "memory" / "memory.swappiness").write_text("60\n")
    assert memory.swap_room(*args)[0] == 0


def test_fuse_over_the_limit_but_within_its_swap_warns_and_fuses(tmp_path: Path, tiny_nets: Path, monkeypatch,
                                                                 capsys) -> None:
    """A container allowed swap (docker --memory=800m: as much swap again by default) was refused
    a 24 MP pair that the kernel would have fused, swapping the rest out: the check ignored swap.
    Over the limit but within the limit and its swap, a warning that it will swap, and the pair
    is fused; over both, refused, naming the swap."""
    from bafusion.fusion import memory

    a, b = _png_pair(tmp_path / "in")
    out = tmp_path / "f.png"
    need = round(memory.BASE_MIB + memory.MIB_PER_MEGAPIXEL * 24)
    _fake_limit(monkeypatch, 800, swap=800)
    argv = ["fuse", str(a), str(b), "-o", str(out), "--model", str(tiny_nets), "--device", "cpu", "--quiet"]
    assert cli_main(argv) == 0 and out.is_file()
    err = capsys.readouterr().err
    assert "warning: a 24-megapixel pair needs about" in err and f"{need} MiB" in err, err
    assert "memory limit of 800 MiB (/fake/cgroup/memory.max)" in err and "up to 800 MiB" in err, err
    assert "it will be slow" in err and "needs more memory" not in err, err
    out.unlink()
    _fake_limit(monkeypatch, 800, swap=200)  # 1324 MiB > 1.1 x (800 + 200)
    assert cli_main(argv) == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "needs more memory" in err and "the swap it may use beyond it 200 MiB" in err, err
    _fake_limit(monkeypatch, 800, swap=0)
    assert "with no swap to use beyond it" in memory.memory_problem([a, b])
    assert memory.memory_warning([a, b]) is None  # refused: no warning besides


def test_fuse_dir_and_fuse_set_warn_as_fuse_does(tmp_path: Path, tiny_nets: Path, monkeypatch, capsys) -> None:
    """fuse warned when less memory is available (MemAvailable) than a pair needs, or when it will
    swap beyond a cgroup limit; fuse-dir and fuse-set said nothing and went on. fuse-dir warns
    for each such stack (its size and what is available differ), fuse-set once a run, naming
    the pair that needs the most; both fuse."""
    import json

    from bafusion.fusion import memory

    src, out = tmp_path / "in", tmp_path / "out"
    for stem in ("p", "q"):
        _png_pair(src, stem)
    monkeypatch.setattr(memory, "memory_limit", lambda *a, **k: None)
    monkeypatch.setattr(memory, "_megapixels", lambda path: 24.0 if path.name.startswith("q") else 12.0)
    monkeypatch.setattr(memory, "available_mib", lambda *a, **k: 500)
    monkeypatch.setattr(memory, "_resident_mib", lambda: 100)
    rc = cli_main(["fuse-dir", str(src), str(out), "--model", str(tiny_nets), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 0 and sorted(p.name for p in out.iterdir() if p.suffix == ".png") == ["p.png", "q.png"], err
    assert "bafusion fuse-dir: q: warning: a 24-megapixel pair needs about" in err, err
    assert "bafusion fuse-dir: p: warning: a 12-megapixel pair" in err and "about 600 MiB are available" in err, err
    pairs, fused = tmp_path / "set", tmp_path / "fused"
    for stem in ("p1", "q2", "p3"):
        _png_pair(pairs, stem)
    (pairs / "index.json").write_text(json.dumps({"pairs": ["p1", "q2", "p3"]}))
    rc = cli_main(["fuse-set", "--pairs", str(pairs), "--model", str(tiny_nets), "--out", str(fused), "--device",
                   "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0 and (fused / "q2.png").is_file(), err
    lines = [line for line in err.splitlines() if "warning" in line]
    assert len(lines) == 1 and lines[0].startswith("bafusion fuse-set: warning: pair q2 ("), err
    assert "24-megapixel pair needs about" in lines[0] and "with its maps and Fig. 3" in lines[0], lines
    assert "--save-maps" not in err
    # a cgroup limit within its swap: the same warning, the run goes on
    _fake_limit(monkeypatch, 800, megapixels=lambda path: 24.0 if path.name.startswith("q") else 0.001, swap=1600)
    rc = cli_main(["fuse-set", "--pairs", str(pairs), "--model", str(tiny_nets), "--out", str(fused), "--device",
                   "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0 and "warning: pair q2 (" in err and "the kernel swaps the rest out" in err, err


def test_python_fuse_is_checked_against_the_cgroup_limit_before_reading(tmp_path: Path, tiny_nets: Path,
                                                                        monkeypatch) -> None:
    """``bafusion.fuse()`` had no check: under a container's limit a notebook's kernel was ended
    by the kernel, its state lost, without a word. Over the limit and its swap it is refused
    (a UserError, before the shots are read), paths by their headers and arrays by their shapes;
    fitting only with swap, or beyond MemAvailable, a UserWarning; BAFUSION_MEMORY_CHECK=0 fuses."""
    import numpy as np

    from bafusion import fuse
    from bafusion.errors import UserError
    from bafusion.fusion import api, memory

    a, b = _png_pair(tmp_path / "in")
    real_read, real_megapixels = api._read_sources, memory._megapixels

    def no_read(*args, **kwargs):
        raise AssertionError("the shots were read")

    _fake_limit(monkeypatch, 800)
    monkeypatch.setattr(api, "_read_sources", no_read)
    with pytest.raises(UserError, match=rf"^{a}, {b}: needs more memory than this process may use: a 24-megapixel"):
        fuse(a, b, model=tiny_nets, device="cpu", align="none")
    arrays = [np.zeros((40, 48, 3), np.uint8), np.zeros((40, 48, 3), np.uint8)]
    _fake_limit(monkeypatch, 100, megapixels=real_megapixels)  # 460 MiB for any pair: over 100
    with pytest.raises(UserError, match=r"^source 1, source 2: needs more memory .* the limit is 100 MiB"):
        fuse(*arrays, model=tiny_nets, device="cpu", align="none")
    monkeypatch.setattr(api, "_read_sources", real_read)
    _fake_limit(monkeypatch, 100, megapixels=real_megapixels, swap=1000)
    with pytest.warns(UserWarning, match="source 1, source 2: .* the kernel swaps the rest out"):
        assert fuse(*arrays, model=tiny_nets, device="cpu", align="none").shape == (40, 48, 3)
    _fake_limit(monkeypatch, 100, megapixels=real_megapixels)
    monkeypatch.setenv(memory.MEMORY_CHECK_ENV, "0")
    assert fuse(*arrays, model=tiny_nets, device="cpu", align="none").shape == (40, 48, 3)
    monkeypatch.delenv(memory.MEMORY_CHECK_ENV)
    monkeypatch.setattr(memory, "memory_limit", lambda *a, **k: None)
    monkeypatch.setattr(memory, "available_mib", lambda *a, **k: 10)
    monkeypatch.setattr(memory, "_resident_mib", lambda: 0)
    with pytest.warns(UserWarning, match=r"about 10 MiB are available now"):
        fuse(*arrays, model=tiny_nets, device="cpu", align="none")


def test_python_fuse_images_is_checked_against_the_cgroup_limit(tiny_nets: Path, monkeypatch) -> None:
    """``bafusion.fuse_images`` (the lower-level call, on arrays) had no check where
    ``bafusion.fuse`` has one: over the cgroup limit and its swap the kernel ended the notebook
    unsaid. It is refused now (a UserError naming the pair, before any work), warned when it
    fits only with swap, and fused with BAFUSION_MEMORY_CHECK=0; the command line's fusions
    (fuse-set, evaluate) do not check each pair again."""
    import numpy as np

    from bafusion import fuse_images, load_model
    from bafusion.errors import UserError
    from bafusion.fusion import memory, rule

    nets = load_model(tiny_nets, device="cpu")
    a, b = np.zeros((40, 48, 3), np.uint8), np.full((40, 48, 3), 9, np.uint8)
    real_megapixels = memory._megapixels

    def no_work(*args, **kwargs):
        raise AssertionError("the pair was fused")

    _fake_limit(monkeypatch, 100, megapixels=real_megapixels)  # 460 MiB for any pair: over 100
    real_pair, rule._fuse_pair = rule._fuse_pair, no_work
    try:
        with pytest.raises(UserError, match=r"^near, far: needs more memory .* the limit is 100 MiB"):
            fuse_images(a, b, nets, names=("near", "far"))
    finally:
        rule._fuse_pair = real_pair
    _fake_limit(monkeypatch, 100, megapixels=real_megapixels, swap=1000)
    with pytest.warns(UserWarning, match="A, B: .* the kernel swaps the rest out"):
        assert fuse_images(a, b, nets).fused.shape == (40, 48, 3)
    _fake_limit(monkeypatch, 100, megapixels=real_megapixels)
    monkeypatch.setenv(memory.MEMORY_CHECK_ENV, "0")
    assert fuse_images(a, b, nets).fused.shape == (40, 48, 3)


def test_the_estimate_counts_a_decision_at_full_size() -> None:
    """A pair decided at its full size (up to fuse.working_above, a strip narrower than a 16:9
    frame's short side, --working-side 0) ran the nets and the maps at that size, which the
    estimate did not count: 678 MiB measured at 1024x1024 and 683 for a 300x4000 strip, 498 and
    503 estimated. It adds FULL_SIZE_MIB per megapixel up to one; a pair decided at the working
    resolution keeps its estimate."""
    import numpy as np

    from bafusion.fusion import memory
    from bafusion.fusion.params import FusionParams

    def need(h: int, w: int, params=None) -> int | None:
        shot = np.zeros((h, w, 3), np.uint8)
        return memory.fuse_need_mib([shot, shot], **({} if params is None else {"params": params}))

    base, per = memory.BASE_MIB, memory.MIB_PER_MEGAPIXEL
    assert need(300, 4000) == round(base + per * 1.2 + 200) == 703  # measured 683
    assert memory.FULL_SIZE_MIB == 200
    assert need(1024, 1024) == round(base + per * 1.048576 + 200) == 698  # measured 678
    assert need(520, 520) == round(base + (per + 200) * 0.2704) == 524  # measured 481
    assert need(3000, 4000) == round(base + per * 12) == 892  # at the working resolution: as before
    assert need(3000, 4000, FusionParams(working_side=0)) == 892 + 200  # --working-side 0: at full size


def test_fuse_checks_the_limit_with_its_own_params(tmp_path: Path, tiny_nets: Path, monkeypatch, capsys) -> None:
    """--working-side 0 decides a 12 MP pair at its full size (FULL_SIZE_MIB more): the check
    before the work counts it with the command's parameters, not the defaults."""
    from bafusion.fusion import memory

    a, b = _png_pair(tmp_path / "in")
    out = tmp_path / "f.png"
    real_full_size = memory._full_size
    _fake_limit(monkeypatch, 900, megapixels=lambda path: 12.0)
    monkeypatch.setattr(memory, "_full_size", real_full_size)  # by the shape below and the params
    monkeypatch.setattr(memory, "_shape", lambda path: (3000, 4000))
    argv = ["fuse", str(a), str(b), "-o", str(out), "--model", str(tiny_nets), "--device", "cpu", "--quiet"]
    assert cli_main(argv) == 0, capsys.readouterr().err  # 892 MiB at the working resolution: within 1.1 x 900
    out.unlink()
    assert cli_main([*argv, "--working-side", "0"]) == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "needs about 1092 MiB" in err and "the limit is 900 MiB" in err, err


def test_the_advice_after_running_out_of_memory_loading_torch_does_not_load_it_again(tmp_path: Path,
                                                                                    monkeypatch) -> None:
    """The out-of-memory line of a command whose libraries could not be loaded gives the estimate
    for its shots: whether they are decided at full size is told by the fusion's module, which
    loads torch; where that fails the estimate goes without it, and the line is still said."""
    import sys

    from bafusion.fusion import memory

    a, b = _png_pair(tmp_path / "in")
    full = memory.fuse_need_mib([a, b])
    monkeypatch.setitem(sys.modules, "bafusion.fusion.working", None)  # importing it raises ImportError
    assert memory.fuse_need_mib([a, b]) == round(memory.BASE_MIB + memory.MIB_PER_MEGAPIXEL * 40 * 48 / 1e6)
    assert full == round(memory.BASE_MIB + (memory.MIB_PER_MEGAPIXEL + memory.FULL_SIZE_MIB) * 40 * 48 / 1e6)
    assert "needs about" in memory.fuse_advice([a, b])


def test_python_fuse_leaves_a_source_it_cannot_size_to_the_reader(tmp_path: Path, tiny_nets: Path,
                                                                   monkeypatch) -> None:
    """Under a cgroup limit, ``bafusion.fuse()`` refused a readable shot beside a missing file,
    a folder or a float array for memory (the estimate of the readable one), before the reader
    could say what was wrong with the other (no such file; floats: how to convert them). Those
    are now the reader's errors; two good shots over the limit are still refused for memory."""
    import numpy as np

    from bafusion import fuse
    from bafusion.errors import InputTypeError, UserError
    from bafusion.fusion import memory

    a, b = _png_pair(tmp_path / "in")
    _fake_limit(monkeypatch, 100, megapixels=memory._megapixels)  # 460 MiB for any pair: over 100
    for other in (tmp_path / "missing.png", tmp_path):
        with pytest.raises(UserError) as err:
            fuse(a, other, model=tiny_nets, device="cpu", align="none")
        assert "needs more memory" not in str(err.value) and str(other) in str(err.value), err.value
    good = np.zeros((40, 48, 3), np.uint8)
    with pytest.raises(InputTypeError, match="float"):
        fuse(good, good.astype(np.float32), model=tiny_nets, device="cpu", align="none")
    with pytest.raises(UserError, match="needs more memory"):
        fuse(a, b, model=tiny_nets, device="cpu", align="none")


def test_the_out_of_memory_line_counts_the_commands_own_params(tmp_path: Path, tiny_nets: Path, monkeypatch,
                                                                capsys) -> None:
    """fuse's out-of-memory line and fuse-dir's skip reason gave the estimate by the default
    params: with --working-side 0 a 12 MP pair was said to need 892 MiB where the check before
    the work (its own params) says 1092. Both now give the run's estimate."""
    from bafusion.fusion import batch, memory

    src = tmp_path / "in"
    a, b = _png_pair(src)
    monkeypatch.setattr(memory, "memory_limit", lambda *a, **k: None)
    monkeypatch.setattr(memory, "available_mib", lambda *a, **k: None)
    monkeypatch.setattr(memory, "_megapixels", lambda path: 12.0)
    monkeypatch.setattr(memory, "_shape", lambda path: (3000, 4000))

    def out_of_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 137. MiB for an array")

    monkeypatch.setattr(batch, "prepare_sources", out_of_memory)  # fuse
    monkeypatch.setattr(batch, "fuse_files", out_of_memory)  # fuse-dir
    common = ["--model", str(tiny_nets), "--device", "cpu", "--quiet", "--working-side", "0"]
    assert cli_main(["fuse", str(a), str(b), "-o", str(tmp_path / "f.png"), *common]) == 1
    err = capsys.readouterr().err
    assert "out of memory" in err and "needs about 1092 MiB" in err, err
    rc = cli_main(["fuse-dir", str(src), str(tmp_path / "out"), *common])
    err = capsys.readouterr().err
    assert rc == batch.EXIT_NONE_FUSED and "skipped s: out of memory" in err and "needs about 1092 MiB" in err, err


def test_the_estimate_reads_a_large_photos_header_without_pillows_raw_warning(tmp_path: Path, tiny_nets: Path,
                                                                             monkeypatch) -> None:
    """The reader silences Pillow's decompression-bomb warning of a photo between
    Image.MAX_IMAGE_PIXELS and twice that (a 102 MP camera's); the memory estimate, which now
    reads every stack's headers in fuse-dir, fuse-set and bafusion.fuse() (with or without a
    limit), let it out as a raw Python warning with a source line. It is silenced there too."""
    import warnings

    from PIL import Image

    from bafusion.fusion import memory

    src = tmp_path / "in"
    _png_pair(src)  # 40x48
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 48 - 1)  # over it, under twice it: a warning
    monkeypatch.setattr(memory, "memory_limit", lambda *a, **k: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = cli_main(["fuse-dir", str(src), str(tmp_path / "out"), "--model", str(tiny_nets), "--device", "cpu",
                       "--quiet"])
    assert rc == 0
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)], \
        [str(w.message) for w in caught]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_named_pipe_as_a_shot_is_refused_not_waited_for(tmp_path: Path, tiny_nets: Path) -> None:
    """``bafusion fuse pipe.png b.png`` (and ``bafusion.fuse()``) hung for good: the memory
    estimate opened the named pipe to read its header, which waits for a writer, before the
    reader could say that it is not a regular file. The estimate now leaves it to the reader."""
    import threading

    from bafusion import fuse
    from bafusion.errors import UserError

    a, b = _png_pair(tmp_path / "in")
    pipe = tmp_path / "in" / "pipe.png"
    os.mkfifo(pipe)
    out = tmp_path / "f.png"
    results: dict[str, object] = {}

    def run() -> None:
        results["cli"] = cli_main(["fuse", str(pipe), str(b), "-o", str(out), "--model", str(tiny_nets),
                                   "--device", "cpu", "--quiet"])
        try:
            fuse(a, pipe, model=tiny_nets, device="cpu", align="none")
        except UserError as e:
            results["api"] = str(e)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(60)
    hung = worker.is_alive()
    while worker.is_alive():  # a reader waiting on the pipe: give it a writer, so the test ends
        try:
            os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # no reader waiting at this moment
            pass
        worker.join(0.1)
    assert not hung, "a shot that is a named pipe was waited for"
    assert results["cli"] == 2 and not out.exists()
    assert f"{pipe}: not a regular file" in str(results.get("api")), results


def test_fuse_set_and_evaluate_do_not_check_each_pair_again(tmp_path: Path, tiny_nets: Path, monkeypatch) -> None:
    """``bafusion.fuse_images`` checks its pair against the cgroup limit; ``fuse-set`` (checked
    once a run, before any work, for every pair by its headers) and ``evaluate``'s fusion call the
    unchecked ``_fuse_pair``, so that a run says its warning once, not again for each pair (through
    fuse_images each pair would be checked again: a warning per pair when the run fits only with
    swap). A guard of a9407d1's split, which a merge of fuse-set's step lines had to keep."""
    import json

    import numpy as np

    from bafusion import load_model
    from bafusion.evaluation import evaluate
    from bafusion.fusion import rule
    from bafusion.fusion.params import FusionParams

    checked: list[tuple[str, str]] = []
    monkeypatch.setattr(rule, "_check_pair_memory", lambda a, b, names, params: checked.append(names))
    pairs, fused = tmp_path / "set", tmp_path / "fused"
    for stem in ("p1", "p2"):
        _png_pair(pairs, stem)
    (pairs / "index.json").write_text(json.dumps({"pairs": ["p1", "p2"]}))
    rc = cli_main(["fuse-set", "--pairs", str(pairs), "--model", str(tiny_nets), "--out", str(fused), "--device",
                   "cpu", "--no-progress"])
    assert rc == 0 and (fused / "p2.png").is_file()
    a, b = np.zeros((40, 48, 3), np.uint8), np.full((40, 48, 3), 9, np.uint8)
    got = evaluate._ours(a, b, load_model(tiny_nets, device="cpu"), FusionParams(), ("a", "b"))
    assert got[evaluate.OURS][0].shape == (40, 48, 3)
    assert checked == [], checked
    rule.fuse_images(a, b, load_model(tiny_nets, device="cpu"))  # the spy sees fuse_images' own check
    assert checked == [("A", "B")], checked


def test_the_fig3_estimate_reads_a_shots_size_turned_by_its_exif_orientation(tmp_path: Path) -> None:
    """An 8-megapixel portrait phone shot stored landscape (3264x2448) with EXIF orientation 6 is
    fused, and its maps drawn, turned (2448 wide, 3264 high): Fig. 3 draws maps of that shape
    unreduced (:func:`bafusion.fusion.maps.fig3_factor` 1, 2 for the stored 2448x3264), so its
    estimate with ``--save-maps`` is that of the same pixels stored portrait, not the
    landscape's (890 MiB where 1209 were due: the stored size was read, unturned)."""
    from PIL import Image

    from bafusion.fusion import memory
    from bafusion.fusion.maps import fig3_factor

    assert fig3_factor((3264, 2448)) == 1 and fig3_factor((2448, 3264)) == 2
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: turned 90 degrees clockwise to be seen
    stored, portrait, landscape = [], [], []
    for i in range(2):
        Image.new("RGB", (3264, 2448)).save(tmp_path / f"t{i}.jpg", exif=exif.tobytes())
        Image.new("RGB", (2448, 3264)).save(tmp_path / f"p{i}.jpg")
        Image.new("RGB", (3264, 2448)).save(tmp_path / f"l{i}.jpg")
        stored.append(tmp_path / f"t{i}.jpg")
        portrait.append(tmp_path / f"p{i}.jpg")
        landscape.append(tmp_path / f"l{i}.jpg")
    turned = memory.fuse_need_mib(stored, save_maps=True)
    assert turned == memory.fuse_need_mib(portrait, save_maps=True)
    assert turned is not None and turned > memory.fuse_need_mib(landscape, save_maps=True)  # type: ignore[operator]
    assert memory._shape(stored[0]) == (3264, 2448)
