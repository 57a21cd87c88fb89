"""Outputs written under a temporary name and renamed into place (bafusion.atomic)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from overlay_layer import overlay_lower_layer

from bafusion.atomic import atomic_dir, atomic_file, write_text


def test_a_folder_given_as_a_symbolic_link_keeps_the_link(tmp_path: Path) -> None:
    # renaming over the link turned `fused -> big/fused` into `fused.old` (a link) and a real
    # folder, and the next run failed on rmtree(fused.old): "Cannot call rmtree on a symbolic link"
    target = tmp_path / "big" / "fused"
    target.mkdir(parents=True)
    (target / "old.txt").write_text("earlier")
    link = tmp_path / "fused"
    link.symlink_to(target, target_is_directory=True)
    for run in ("first", "second"):
        with atomic_dir(link) as tmp:
            (tmp / "new.txt").write_text(run)
        assert link.is_symlink() and link.resolve() == target.resolve()
        assert sorted(p.name for p in target.iterdir()) == ["new.txt"] and (link / "new.txt").read_text() == run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big", "fused"]
    assert sorted(p.name for p in (tmp_path / "big").iterdir()) == ["fused"]


def test_an_old_link_beside_the_output_does_not_block_the_next_run(tmp_path: Path) -> None:
    # `out.old` was atomic_dir's fixed backup name (a leftover link made the run fail); it is
    # no name of atomic_dir's any more: the link is the user's and is kept
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out.old").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a").write_text("x")
    assert (tmp_path / "out" / "a").read_text() == "x" and (tmp_path / "elsewhere").is_dir()
    assert (tmp_path / "out.old").is_symlink() and (tmp_path / "out.old").resolve() == (tmp_path / "elsewhere")


def test_a_file_given_as_a_symbolic_link_keeps_the_link_and_its_mode(tmp_path: Path) -> None:
    # `bafusion preset --apply link.yaml` replaced the link by a plain file (the target
    # unchanged), and a params file of mode 640 came back 644
    import stat

    target = tmp_path / "real" / "params.yaml"
    target.parent.mkdir()
    target.write_text("a: 1\n")
    target.chmod(0o640)
    link = tmp_path / "params.yaml"
    link.symlink_to(target)
    for text in ("a: 2\n", "a: 3\n"):
        write_text(link, text)
        assert link.is_symlink() and link.resolve() == target.resolve() and target.read_text() == text
        assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "real"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["params.yaml"]
    new = tmp_path / "new.txt"  # a new file: the umask's mode, as before
    with atomic_file(new) as tmp:
        tmp.write_text("x")
    assert new.read_text() == "x" and not new.is_symlink()


def test_folders_of_the_user_beside_the_output_are_never_touched(tmp_path: Path) -> None:
    # atomic_dir wrote to `out.part` and moved the earlier output to `out.old`, deleting (rmtree)
    # whatever the user kept under those names: `prepare --out prep` twice lost `prep.old/`
    out = tmp_path / "out"
    for name in ("out.part", "out.old"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "important.txt").write_text(name)
    for run in ("first", "second"):
        with atomic_dir(out) as tmp:
            (tmp / "a").write_text(run)
        assert (out / "a").read_text() == run
    for name in ("out.part", "out.old"):
        assert (tmp_path / name / "important.txt").read_text() == name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.old", "out.part"]


def test_a_failed_block_leaves_the_earlier_output_and_nothing_else(tmp_path: Path) -> None:
    import pytest

    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("earlier")
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "a").write_text("new")
        raise RuntimeError
    assert (out / "a").read_text() == "earlier" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_rename_into_place_puts_the_earlier_output_back(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The earlier output is moved aside before the new folder is renamed into place; when that
    rename fails (a full or read-only parent, EXDEV), the earlier output is put back, not
    deleted with the temporary folder, and the error is raised. (Where the system cannot swap the
    two folders in one step: :func:`bafusion.atomic.exchange`, made to say so here.)"""
    import bafusion.atomic as atomic

    monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("earlier")
    real = os.replace

    def replace(src, dst):
        if Path(src).name == "out" and Path(dst) == out:  # the new folder into place
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(OSError, match="No space left"), atomic_dir(out) as tmp:
        (tmp / "a").write_text("new")
    monkeypatch.undo()
    assert (out / "a").read_text() == "earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_leftovers_of_a_killed_run_are_removed_and_only_those(tmp_path: Path) -> None:
    import os
    import socket
    import subprocess
    import sys

    from bafusion.atomic import PART_MARKER

    out = tmp_path / "out"
    # a run killed (SIGKILL) inside the block leaves its hidden temporary folder
    code = ("import os, signal, sys\nfrom bafusion.atomic import atomic_dir\n"
            "with atomic_dir(sys.argv[1]) as tmp:\n    (tmp / 'half').write_text('x')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(out)], env={**os.environ}, check=False)
    assert proc.returncode == -9
    (left,) = tmp_path.glob(".out.part-*")
    assert (left / "out" / "half").is_file()
    # folders of the same pattern that are not a dead bafusion run's are kept
    unmarked = tmp_path / ".out.part-mine"
    unmarked.mkdir()
    (unmarked / "keep").write_text("x")
    running = tmp_path / ".out.part-running"  # a run in progress (this process stands for it)
    running.mkdir()
    (running / PART_MARKER).write_text(f"{socket.gethostname()} {os.getppid()}\n")
    elsewhere = tmp_path / ".out.part-other-host"
    elsewhere.mkdir()
    (elsewhere / PART_MARKER).write_text("some-other-host 1\n")
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("x")
    assert (out / "a").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.part-mine", ".out.part-other-host",
                                                         ".out.part-running", "out"]


def test_a_file_of_the_user_named_like_the_old_temporary_name_is_kept(tmp_path: Path) -> None:
    # atomic_file wrote to the fixed name `<file>.part`: a file of the user's of that name (or a
    # half download of another tool) was deleted without a word, then written and renamed away
    out = tmp_path / "out.png"
    (tmp_path / "out.png.part").write_text("mine")
    for run in ("first", "second"):
        with atomic_file(out) as tmp:
            tmp.write_text(run)
        assert out.read_text() == run
    assert (tmp_path / "out.png.part").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png", "out.png.part"]


def test_a_symbolic_link_named_like_the_old_temporary_name_is_not_written_through(tmp_path: Path) -> None:
    # `out.png.part -> elsewhere`: the link was deleted (its target existing) or, dangling, written
    # through (a file created at its target) and then renamed to `out.png` (the output a link)
    out = tmp_path / "out.png"
    elsewhere, gone = tmp_path / "elsewhere.txt", tmp_path / "not-yet"
    elsewhere.write_text("the link's target")
    for target in (elsewhere, gone):
        link = tmp_path / "out.png.part"
        link.unlink(missing_ok=True)
        link.symlink_to(target)
        with atomic_file(out) as tmp:
            tmp.write_text("new")
        assert out.read_text() == "new" and not out.is_symlink()
        assert link.is_symlink() and Path(os.readlink(link)) == target
    assert elsewhere.read_text() == "the link's target" and not gone.exists()


def test_two_writers_of_one_output_do_not_share_a_temporary_file(tmp_path: Path) -> None:
    # two runs writing the same output (two processes; nested here) used the same `.part`: the
    # second deleted the first's half-written file and the first then failed or renamed the other's
    out = tmp_path / "out.txt"
    with atomic_file(out) as first:
        first.write_text("first, begun")
        with atomic_file(out) as second:
            assert second != first
            second.write_text("second")
        assert first.read_text() == "first, begun" and out.read_text() == "second"
        first.write_text("first")
    assert out.read_text() == "first" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_a_new_file_gets_the_mode_a_plain_open_gives(tmp_path: Path) -> None:
    # the temporary file is the output: its mode must be what open() gives under the umask (not
    # mkstemp's 600), and a replaced file's stays
    import stat

    old = os.umask(0o027)
    try:
        with open(tmp_path / "plain", "w") as fh:
            fh.write("x")
        with atomic_file(tmp_path / "new.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert mode == 0o640 and stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == mode
    (tmp_path / "new.txt").chmod(0o604)
    write_text(tmp_path / "new.txt", "y")
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o604


def test_the_temporary_file_has_the_outputs_name_for_writers_that_go_by_it(tmp_path: Path) -> None:
    # np.save appends `.npy` to a name without it and Pillow picks the format from the suffix: with
    # `out.npy.part` np.save wrote `out.npy.part.npy` (the rename then failed), Pillow refused
    import numpy as np
    from PIL import Image

    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    with atomic_file(tmp_path / "a.npy") as tmp:
        assert tmp.name == "a.npy"
        np.save(tmp, arr)
    assert (np.load(tmp_path / "a.npy") == arr).all()
    for name, fmt in (("b.png", "PNG"), ("c.jpg", "JPEG"), ("d.tif", "TIFF")):
        with atomic_file(tmp_path / name) as tmp:
            Image.fromarray(arr).save(tmp)
        with Image.open(tmp_path / name) as im:
            assert im.format == fmt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "b.png", "c.jpg", "d.tif"]


def test_a_failed_or_stopped_block_leaves_no_file(tmp_path: Path, monkeypatch) -> None:
    import signal

    import pytest

    from bafusion import atomic

    out = tmp_path / "out.txt"
    out.write_text("earlier")
    with pytest.raises(RuntimeError), atomic_file(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    monkeypatch.setattr(atomic, "_stop_signal", signal.SIGTERM)
    with pytest.raises(SystemExit), atomic_file(out) as tmp:
        tmp.write_text("half")  # a stop was asked for meanwhile: not renamed into place
    assert out.read_text() == "earlier" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_a_file_left_by_a_killed_run_is_removed_by_the_next_and_only_ours(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    from bafusion.atomic import PART_MARKER

    out = tmp_path / "out.png"
    code = ("import os, signal, sys\nfrom bafusion.atomic import atomic_file\n"
            "with atomic_file(sys.argv[1]) as tmp:\n    tmp.write_text('half')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    for name in ("out.png", "other.h5"):  # the folder's leftovers, of any output
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], check=False)
        assert proc.returncode == -9
        (left,) = tmp_path.glob(f".{name}.part-*")
        assert (left / name).read_text() == "half" and (left / PART_MARKER).is_file()
    mine = tmp_path / ".out.png.part-mine"  # the user's, of the same pattern (no marker): kept
    mine.write_text("keep")
    running = tmp_path / ".out.png.part-running"  # a run in progress (this process stands for it)
    running.mkdir()
    (running / PART_MARKER).write_text(f"{socket.gethostname()} {os.getppid()}\n")
    with atomic_file(out) as tmp:
        tmp.write_text("done")
    assert out.read_text() == "done"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.png.part-mine", ".out.png.part-running", "out.png"]


def test_a_folder_that_refuses_the_temporary_file_is_named_by_the_output(tmp_path: Path, monkeypatch) -> None:
    # the error of the hidden folder's creation names the output, not `.out.png.part-<random>`
    import tempfile

    import pytest

    def denied(dir: str, prefix: str) -> str:
        raise PermissionError(13, "Permission denied", os.path.join(dir, prefix + "abc123"))

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    with pytest.raises(PermissionError) as e, atomic_file(tmp_path / "out.png"):
        pass
    assert e.value.filename == str(tmp_path / "out.png") and e.value.strerror == "Permission denied"


def test_an_error_inside_a_temporary_folder_names_the_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """prepare and evaluate on a full disk named the hidden temporary path
    (/tmp/fk/.prep.part-qkdkfhzg/prep/bg/gravel.png): the message names the output's own path."""
    import errno

    from bafusion import atomic
    from bafusion.cli import app

    out = tmp_path / "prep"

    def work(args: object) -> int:
        with atomic.atomic_dir(out) as tmp:
            (tmp / "bg").mkdir()
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "bg" / "gravel.png"))

    def parser(command: str | None = None) -> app.Parser:
        p = app.Parser(prog="bafusion")
        sub = p.add_subparsers(dest="command")
        sub.add_parser("prepare").set_defaults(func=work)
        return p

    monkeypatch.setattr(app, "build_parser", parser)
    assert app.main(["prepare"]) == 2
    assert capsys.readouterr().err.strip() == f"bafusion prepare: error: {out}/bg/gravel.png: No space left on device"
    f = tmp_path / "m.pt"
    assert atomic.shown_path(f"{tmp_path}/.m.pt.part-ab_c12x/m.pt.part: Permission denied") == f"{f}: Permission denied"
    assert atomic.shown_path(f"{tmp_path}/.x.part-zz/x.old") == f"{tmp_path}/x"
    assert atomic.shown_path(f"{tmp_path}/.x.part-zz/y") == f"{tmp_path}/.x.part-zz/y"  # not ours: as it is
    assert atomic.shown_path("my.part-of/my") == "my.part-of/my"
    long = "x" * 230 + ".png"  # the folder's name is cut short (atomic._new_part): the whole name is said
    assert atomic.shown_path(f"{tmp_path}/.{'x' * 200}.part-ab12/{long}: No space") == f"{tmp_path}/{long}: No space"


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def test_a_leftover_is_removed_only_when_its_process_is_gone_from_our_own_pid_namespace(tmp_path: Path) -> None:
    # a process of another PID namespace (a container with the host's network: same hostname)
    # is invisible to os.kill: its folder, in use, was deleted under it and its rename failed
    import socket

    from bafusion.atomic import PART_MARKER, _marker_text

    host, pid = socket.gethostname(), _dead_pid()
    ours = _marker_text(pid)
    assert ours.split()[:2] == [host, str(pid)]
    fields = dict(f.split("=", 1) for f in ours.split()[2:])
    assert set(fields) == {"pidns", "boot"}
    other_ns = f"{host} {pid} pidns={fields['pidns']}1 boot={fields['boot']}\n"
    other_boot = f"{host} {pid} pidns={fields['pidns']} boot=another-boot\n"
    old_format = f"{host} {pid}\n"  # can not tell the namespace: left alone
    for name, text in (("ns", other_ns), ("boot", other_boot), ("old", old_format), ("dead", ours)):
        wrap = tmp_path / f".{name}.png.part-x"
        wrap.mkdir()
        (wrap / name).write_text("half")
        (wrap / PART_MARKER).write_text(text)
    write_text(tmp_path / "out.txt", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".boot.png.part-x", ".ns.png.part-x", ".old.png.part-x",
                                                          "out.txt"]
    # atomic_dir's sweep goes by the same rule
    for name, text in (("ns", other_ns), ("dead", ours)):
        wrap = tmp_path / f".d.part-{name}"
        wrap.mkdir()
        (wrap / PART_MARKER).write_text(text)
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "a").write_text("x")
    assert sorted(p.name for p in tmp_path.glob(".d.part-*")) == [".d.part-ns"]


def test_a_run_in_another_pid_namespace_of_the_same_host_keeps_our_temporary_folder(tmp_path: Path) -> None:
    # the reviewer's reproduction: a run in a PID namespace of its own (a container with the
    # host's network, `unshare -p`) found our folder's process gone and deleted it under us
    import shutil
    import subprocess
    import sys

    import pytest

    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "--pid", "--fork", "--mount-proc", "true"],
                                         capture_output=True, check=False).returncode != 0:
        pytest.skip("needs unshare --pid (root)")
    code = "import sys\nfrom bafusion.atomic import write_text\nwrite_text(sys.argv[1], '{}')\n"
    with atomic_file(tmp_path / "result.png") as tmp:
        tmp.write_text("ours")
        subprocess.run([unshare, "--pid", "--fork", "--mount-proc", sys.executable, "-c", code,
                        str(tmp_path / "other.json")], check=True)
    assert (tmp_path / "result.png").read_text() == "ours" and (tmp_path / "other.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.json", "result.png"]


def test_an_output_name_of_up_to_255_bytes_is_written(tmp_path: Path) -> None:
    # the hidden folder `.<name>.part-<random>` is 15 bytes longer than the name: names of
    # 241-255 bytes failed with "File name too long", naming the output
    from bafusion.atomic import PART_MARKER, _marker_text

    name = "a" * 242 + ".png"  # 246 bytes
    write_text(tmp_path / name, "x")
    assert (tmp_path / name).read_text() == "x" and [p.name for p in tmp_path.iterdir()] == [name]
    wide = "a" + "é" * 124 + ".txt"  # 253 bytes
    write_text(tmp_path / wide, "y")
    assert (tmp_path / wide).read_text() == "y"
    # a leftover of a dead run of such an output (shortened name) is found by the next run
    folder = tmp_path / ("d" * 250)
    with atomic_dir(folder) as tmp:
        (tmp / "a").write_text("1")
    from bafusion.atomic import _part_prefix

    _part_prefix(tmp_path / wide).encode("utf-8")  # a shortened name never splits a character
    prefix = _part_prefix(folder)
    assert len(os.fsencode(prefix)) + 8 <= 255 and prefix.startswith(".ddd") and prefix.endswith(".part-")
    wrap = tmp_path / (prefix + "deadbeef")
    wrap.mkdir()
    (wrap / PART_MARKER).write_text(_marker_text(_dead_pid()))
    with atomic_dir(folder) as tmp:
        (tmp / "a").write_text("2")
    assert (folder / "a").read_text() == "2" and not wrap.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, wide, folder.name])


def test_a_relative_output_is_written_where_it_named_when_the_block_changes_folder(tmp_path: Path,
                                                                                  monkeypatch) -> None:
    # a chdir inside the block made the rename fail and left the hidden temporary folder behind
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    with atomic_file("out.txt") as tmp:
        tmp.write_text("x")
        os.chdir(tmp_path / "elsewhere")
    os.chdir(tmp_path)
    with atomic_dir("d") as tmp:
        (tmp / "a").write_text("y")
        os.chdir(tmp_path / "elsewhere")
    assert (tmp_path / "out.txt").read_text() == "x" and (tmp_path / "d" / "a").read_text() == "y"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "elsewhere", "out.txt"]
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_an_os_error_naming_a_file_descriptor_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """os.stat(fd) and the like set the OSError's filename to the int: the handler that names
    the output for a temporary path called os.fsdecode on it and crashed with a TypeError
    traceback; the message is one line naming the descriptor, exit 2."""
    from bafusion.cli import app

    def work(args: object) -> int:
        os.stat(987654)  # no such descriptor: EBADF, filename 987654
        return 0

    def parser(command: str | None = None) -> app.Parser:
        p = app.Parser(prog="bafusion")
        sub = p.add_subparsers(dest="command")
        sub.add_parser("evaluate").set_defaults(func=work)
        return p

    monkeypatch.setattr(app, "build_parser", parser)
    assert app.main(["evaluate"]) == 2
    assert capsys.readouterr().err.strip() == "bafusion evaluate: error: 987654: Bad file descriptor"


class _Busy(Exception):
    def __init__(self, pid: int | None) -> None:
        super().__init__(pid)
        self.pid = pid


def test_folder_lock_refuses_a_second_holder_naming_the_first_and_is_free_again_after(tmp_path: Path) -> None:
    """fuse-dir's and train's folder locks are one function (they were two copies)."""
    import subprocess
    import sys

    from bafusion.atomic import folder_lock

    out = tmp_path / "new" / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from bafusion.atomic import folder_lock\n"
         "with folder_lock(Path(sys.argv[1]), 'x.lock', busy=RuntimeError) as held:\n"
         "    print('held', held, flush=True); time.sleep(60)", str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held True"
        assert (out / "x.lock").read_text() == f"{holder.pid}\n"
        with pytest.raises(_Busy) as e:
            with folder_lock(out, "x.lock", busy=_Busy):
                pass
        assert e.value.pid == holder.pid
    finally:
        holder.kill()  # killed, not ended: the OS releases its lock
        holder.wait()
    with folder_lock(out, "x.lock", busy=_Busy) as held:
        assert held and (out / "x.lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(_Busy) as e:  # a second holder in one process too
            with folder_lock(out, "x.lock", busy=_Busy):
                pass
        assert e.value.pid == os.getpid()
    assert list(out.iterdir()) == []  # the lock file (the killed holder's, then ours) removed on release
    with folder_lock(tmp_path / "gone", "x.lock", busy=_Busy, remove_created=True):
        assert (tmp_path / "gone").is_dir()
    assert not (tmp_path / "gone").exists()  # created by the call, left empty: removed
    with folder_lock(out, "x.lock", busy=_Busy, remove_created=True):
        pass
    assert out.is_dir()  # there before: kept


@pytest.mark.parametrize("code", ["ENOLCK", "EOPNOTSUPP"])
def test_folder_lock_goes_on_without_a_lock_where_the_filesystem_has_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture, code: str) -> None:
    import errno
    import fcntl

    from bafusion.atomic import folder_lock

    def no_locks(fh, op):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    out = tmp_path / "nfs"
    for _ in range(2):
        with folder_lock(out, "x.lock", busy=_Busy) as held:
            assert held is False and out.is_dir() and not (out / "x.lock").exists()
            with folder_lock(out, "x.lock", busy=_Busy) as again:  # nothing to refuse a second one
                assert again is False
    err = capsys.readouterr().err
    assert err == f"{out}: this filesystem does not support locks ({errno.errorcode[getattr(errno, code)]}): two runs into it are not kept apart\n"

    def other(fh, op):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(fcntl, "flock", other)
    with pytest.raises(OSError, match="I/O error"):  # not taken for a missing lock service
        with folder_lock(out, "x.lock", busy=_Busy):
            pass


def test_folder_lock_names_a_lock_file_it_cannot_create(tmp_path: Path) -> None:
    from bafusion.atomic import folder_lock
    from bafusion.errors import UserError

    out = tmp_path / "out"
    (out / "x.lock").mkdir(parents=True)  # a folder in the way (root may write anywhere)
    with pytest.raises(UserError, match=r"x\.lock: cannot create fuse-dir's lock: Is a directory"):
        with folder_lock(out, "x.lock", busy=_Busy, what="fuse-dir's lock"):
            pass
    with pytest.raises(IsADirectoryError):
        with folder_lock(out, "x.lock", busy=_Busy):
            pass


def test_leftovers_that_are_kept_are_named_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A leftover of another host, container or boot, or with the marker of a version before
    2026-12-05, stayed forever without a word: the sweep now names it (it still keeps it: whether
    its run goes on cannot be told from here). A run in progress here and a folder without a
    marker are not named."""
    import socket
    import subprocess
    import sys
    import time

    from bafusion.atomic import PART_MARKER

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    markers = {".a.part-host": "some-other-host 12 pidns=1 boot=b\n",
               ".a.part-ns": f"{host} {dead.pid} pidns=1 boot=not-this-boot\n",
               ".a.part-oldform": f"{host} {dead.pid}\n",
               ".a.part-running": f"{host} {os.getppid()}\n"}  # an earlier version's run in progress
    for name, text in markers.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / PART_MARKER).write_text(text)
    old = time.time() - 5 * 3600
    os.utime(tmp_path / ".a.part-host" / PART_MARKER, (old, old))
    (tmp_path / ".a.part-mine").mkdir()  # no marker: not bafusion's
    for run in ("first", "second"):
        with atomic_file(tmp_path / "a") as tmp:
            tmp.write_text(run)
        with atomic_dir(tmp_path / "a.d") as tmp:
            pass
    err = capsys.readouterr().err.splitlines()
    end = "is not removed (whether that run still goes on cannot be told from here): remove it by hand once no run writes there"
    assert sorted(err) == [
        f"bafusion: note: {tmp_path / '.a.part-host'}: the temporary folder of a write by host some-other-host "
        f"(process 12), begun 5 h ago {end}",
        f"bafusion: note: {tmp_path / '.a.part-ns'}: the temporary folder of a write by process {dead.pid} of another "
        f"container or an earlier boot of this host {end}",
        f"bafusion: note: {tmp_path / '.a.part-oldform'}: the temporary folder of a write by process {dead.pid} of "
        f"this host written by a bafusion version before 2026-12-05 {end}"], err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*markers, ".a.part-mine", "a", "a.d"])


def test_on_windows_no_process_is_killed_to_see_whether_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    # os.kill(pid, 0) on Windows is TerminateProcess(pid, 0): asking whether a leftover's (or a
    # RUNNING MLflow run's) process still ran killed it; there psutil is asked (OpenProcess on
    # Windows), and without psutil the process is not known gone
    import sys
    import types

    from bafusion import atomic

    killed: list[tuple[int, int]] = []
    named = {**atomic.process_identity(), "pid": str(_dead_pid())}
    monkeypatch.setattr(os, "kill", lambda pid, sig: killed.append((pid, sig)))
    monkeypatch.setattr(atomic, "_KILL_TERMINATES", True, raising=False)  # as on Windows
    asked: list[int] = []
    windows_psutil = types.SimpleNamespace(pid_exists=lambda pid: asked.append(pid) or False)
    monkeypatch.setitem(sys.modules, "psutil", windows_psutil)
    assert atomic.process_gone(named) and asked == [int(named["pid"])]
    monkeypatch.setitem(sys.modules, "psutil", None)  # not installed: not known gone
    assert not atomic.process_gone(named)
    assert killed == []


def test_a_process_whose_namespace_or_boot_is_unknown_is_not_known_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
) -> None:
    # where the PID namespace and boot cannot be read ("-"), ours and a leftover's compared
    # equal: a process of another PID namespace with the same host name (containers sharing it),
    # whose PID is not alive here, was judged gone and its temporary folder (its MLflow run)
    # removed (ended) under it. An unknown identity, here or there, is never known gone; the
    # leftover is kept and named once
    import socket

    from bafusion import atomic
    from bafusion.atomic import PART_MARKER

    pid, host = _dead_pid(), socket.gethostname()
    monkeypatch.setattr(atomic, "_identity", lambda: {"pidns": "-", "boot": "-"})
    assert not atomic.process_gone({"host": host, "pid": str(pid), "start": "-", "pidns": "-", "boot": "-"})
    monkeypatch.setattr(atomic, "_identity", lambda: {"pidns": "4026531836", "boot": "b"})
    assert atomic.process_gone({"host": host, "pid": str(pid), "pidns": "4026531836", "boot": "b"})  # all known
    # an unknown boot makes no live process look gone (a PID not alive here is gone whatever the
    # boot), and where there are no PID namespaces (macOS) an unknown one is no doubt
    monkeypatch.setattr(atomic, "_identity", lambda: {"pidns": "4026531836", "boot": "-"})
    assert atomic.process_gone({"host": host, "pid": str(pid), "pidns": "4026531836", "boot": "-"})
    monkeypatch.setattr(atomic, "_identity", lambda: {"pidns": "-", "boot": "-"})
    monkeypatch.setattr(atomic.sys, "platform", "darwin")
    assert atomic.process_gone({"host": host, "pid": str(pid), "start": "-", "pidns": "-", "boot": "-"})
    monkeypatch.setattr(atomic.sys, "platform", "linux")
    monkeypatch.setattr(atomic, "_identity", lambda: {"pidns": "-", "boot": "-"})
    (tmp_path / ".a.part-x").mkdir()
    (tmp_path / ".a.part-x" / PART_MARKER).write_text(f"{host} {pid} pidns=- boot=-\n")
    with atomic.atomic_file(tmp_path / "a") as tmp:
        tmp.write_text("done")
    assert (tmp_path / ".a.part-x" / PART_MARKER).is_file() and (tmp_path / "a").read_text() == "done"
    assert f"a write by process {pid} of this host whose PID namespace is unknown" in capsys.readouterr().err


def test_folder_lock_without_fcntl_locks_with_msvcrt_and_says_when_it_cannot_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Windows has no fcntl: folder_lock yielded "no lock" silently, and a second fuse-dir into
    the same folder (or a second training of one checkpoint) ran beside the first, each writing
    the record. It now locks with msvcrt.locking (here a stand-in made of flock, whose locks
    also exclude a second open of the file); a system with neither says so once per folder."""
    import errno
    import fcntl

    import bafusion.atomic as atomic

    class FakeMsvcrt:
        LK_UNLCK, LK_NBLCK = 0, 2

        @staticmethod
        def locking(fd: int, mode: int, nbytes: int) -> None:
            assert nbytes == 1 and os.lseek(fd, 0, os.SEEK_CUR) == atomic._MSVCRT_LOCK_OFFSET
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB if mode == FakeMsvcrt.LK_NBLCK else fcntl.LOCK_UN)
            except BlockingIOError:
                raise OSError(errno.EACCES, "Permission denied") from None

    monkeypatch.setattr(atomic, "fcntl", None)
    monkeypatch.setattr(atomic, "msvcrt", FakeMsvcrt, raising=False)
    out = tmp_path / "out"
    with atomic.folder_lock(out, "x.lock", busy=_Busy) as held:
        assert held is True and (out / "x.lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(_Busy) as e:
            with atomic.folder_lock(out, "x.lock", busy=_Busy):
                pass
        assert e.value.pid == os.getpid()
    assert list(out.iterdir()) == []
    with atomic.folder_lock(out, "x.lock", busy=_Busy) as held:  # free again
        assert held is True
    monkeypatch.setattr(atomic, "msvcrt", None)
    for _ in range(2):
        with atomic.folder_lock(out, "x.lock", busy=_Busy) as held:
            assert held is False
    assert capsys.readouterr().err == (f"{out}: this system has no file locks (neither fcntl nor msvcrt): two runs "
                                       "into it are not kept apart\n")


def test_a_killed_writes_leftover_is_removed_where_os_kill_cannot_ask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """On Windows os.kill(pid, 0) terminates instead of asking, so every process counted as
    running: the temporary folder of a killed write (50 MB, hundreds for patches) was never
    removed and never named. Whether the process runs is now asked without os.kill (psutil,
    whose Windows side opens the process; on Linux, where this runs, it asks os.kill itself);
    where that cannot be told, the kept folder is named."""
    import sys

    import bafusion.atomic as atomic

    monkeypatch.setattr(atomic, "_KILL_TERMINATES", True)
    dead = tmp_path / ".out.bin.part-qn9nzss7"
    dead.mkdir()
    (dead / "out.bin").write_bytes(b"half")
    (dead / atomic.PART_MARKER).write_text(atomic._marker_text(_dead_pid()))
    live = tmp_path / ".other.bin.part-abcdefgh"
    live.mkdir()
    (live / atomic.PART_MARKER).write_text(atomic._marker_text(os.getppid()))  # a run in progress
    write_text(tmp_path / "out.bin", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.bin.part-abcdefgh", "out.bin"]
    assert capsys.readouterr().err == ""
    # without a way to ask (no psutil): kept, and named once
    dead.mkdir()
    (dead / atomic.PART_MARKER).write_text(atomic._marker_text(_dead_pid()))
    monkeypatch.setitem(sys.modules, "psutil", None)
    monkeypatch.setattr(atomic, "_swept", set())  # the folder is swept again
    write_text(tmp_path / "out.bin", "y")
    assert dead.exists()
    err = capsys.readouterr().err
    assert f"{dead}: the temporary folder of a write by process" in err and "psutil is missing" in err


def test_an_earlier_output_that_cannot_be_removed_is_named_once_and_again_by_a_later_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """An earlier folder output with a read-only sub-folder was kept for good, hidden as
    ``.out.part-*/out.old``, and no run said a word (errors ignored). The new output is still
    put in place, and the folder left behind is named with the cause, once; a later run that
    cannot remove it either says so again. Root ignores permission bits (the tests run as root
    in CI), so where running as root the refusal is simulated by ``os.unlink``."""
    import errno

    from bafusion import atomic

    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "maps").mkdir()
        (tmp / "maps" / "m.png").write_text("earlier")
    real_unlink = os.unlink

    def refuse(path, *args, **kwargs):
        if os.fspath(path) == "m.png" or os.fspath(path).endswith(os.sep + "m.png"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_unlink(path, *args, **kwargs)

    if os.geteuid() == 0:
        monkeypatch.setattr(os, "unlink", refuse)
    (out / "maps").chmod(0o555)
    try:
        with atomic_dir(out) as tmp:
            (tmp / "new.txt").write_text("new")
        assert sorted(p.name for p in out.iterdir()) == ["new.txt"]  # the work is done
        (left,) = tmp_path.glob(".out.part-*")
        err = capsys.readouterr().err
        assert err.count("warning") == 1, err
        assert f"could not remove {left / 'out.old'}: {os.strerror(errno.EACCES)}: " in err, err
        assert "m.png" in err and "remove it by hand" in err, err
        # a later run (the first one's process gone) tries again and says so again
        (left / atomic.PART_MARKER).write_text(atomic._marker_text(2**22 + 12345))
        assert atomic._is_stale(left)
        monkeypatch.setattr(atomic, "_said_unremoved", set())  # a later run: another process
        with atomic_dir(out) as tmp:
            (tmp / "new.txt").write_text("newer")
        assert (out / "new.txt").read_text() == "newer" and left.is_dir()
        err = capsys.readouterr().err
        assert err.count(f"could not remove {left / 'out.old'}: ") == 1, err
        # once it can be removed, the next run removes it without a word
        monkeypatch.setattr(os, "unlink", real_unlink)
        (left / "out.old" / "maps").chmod(0o755)
        with atomic_dir(out) as tmp:
            (tmp / "new.txt").write_text("newest")
        assert not left.exists() and capsys.readouterr().err == ""
    finally:
        for p in tmp_path.rglob("maps"):
            p.chmod(0o755)


def _exchange_works(tmp_path: Path) -> bool:
    """Whether this system swaps two folders in one step (Linux ``renameat2``, a file system that
    takes ``RENAME_EXCHANGE``)."""
    from bafusion.atomic import exchange

    a, b = tmp_path / "probe-a", tmp_path / "probe-b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    try:
        return exchange(a, b) and (b / "x").read_text() == "a" and not (a / "x").exists()
    finally:
        import shutil

        shutil.rmtree(a)
        shutil.rmtree(b)


def test_a_folder_output_killed_while_replaced_leaves_the_old_or_the_new_one(tmp_path: Path) -> None:
    """The earlier output was renamed away and then the new one renamed in: a SIGKILL between
    the two left neither in place (the earlier one hidden in the temporary folder, removed by the
    next run). Where the system swaps two folders in one step (Linux), nothing lies between: the
    process here is killed at its first plain rename of the earlier output away."""
    import subprocess
    import sys

    if not _exchange_works(tmp_path):
        pytest.skip("this system or file system cannot swap two folders in one step (renameat2)")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("earlier")
    code = ("import os, signal, sys\nfrom pathlib import Path\nimport bafusion.atomic as atomic\n"
            "real = os.replace\n"
            "def replace(src, dst):\n"
            "    real(src, dst)\n"
            "    if Path(src) == Path(sys.argv[1]):  # the earlier output renamed away: killed here\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            "atomic.os.replace = replace\n"
            "with atomic.atomic_dir(sys.argv[1]) as tmp:\n    (tmp / 'a').write_text('new')\n")
    proc = subprocess.run([sys.executable, "-c", code, str(out)], check=False)
    assert (out / "a").read_text() == "new"  # killed between two renames: no out at all
    assert proc.returncode == 0  # never killed: no rename of the earlier output away
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the earlier one removed


def test_a_file_system_that_cannot_swap_falls_back_to_two_renames(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``renameat2`` refused with EINVAL (a file system without ``RENAME_EXCHANGE``) or missing
    (not Linux): the folder is still replaced, by two renames."""
    import errno

    import bafusion.atomic as atomic

    calls: list[tuple[bytes, bytes, int]] = []

    def refusing(olddir, old, newdir, new, flags):
        calls.append((old, new, flags))
        import ctypes

        ctypes.set_errno(errno.EINVAL)
        return -1

    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("earlier")
    for func in (refusing, None):
        monkeypatch.setattr(atomic, "_renameat2", func)
        with atomic_dir(out) as tmp:
            (tmp / "a").write_text(f"new {func is None}")
        assert (out / "a").read_text() == f"new {func is None}"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert len(calls) == 1 and calls[0][2] == 2  # RENAME_EXCHANGE asked for, refused


def test_exchange_names_both_paths_when_it_fails_otherwise(tmp_path: Path) -> None:
    """A failure that is not "cannot swap here" (a path missing) is an OSError naming both."""
    from bafusion.atomic import exchange

    if not _exchange_works(tmp_path):
        pytest.skip("this system or file system cannot swap two folders in one step (renameat2)")
    (tmp_path / "a").mkdir()
    with pytest.raises(FileNotFoundError) as e:
        exchange(tmp_path / "a", tmp_path / "missing")
    assert e.value.filename == str(tmp_path / "a") and e.value.filename2 == str(tmp_path / "missing")


def test_a_file_is_flushed_to_the_disk_before_it_is_renamed_into_place(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing was flushed: after a power cut (not a kill: the kernel still holds the data then)
    a file system may show the new name with an empty or partly written file (XFS; ext4 for a
    new name), which a later run takes for a finished output. The file is now flushed
    (``fsync``) once, after it is written and before the rename, on the file written."""
    import bafusion.atomic as atomic

    events: list[tuple[str, object]] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: events.append(("fsync", os.fstat(fd).st_ino)) or real_fsync(fd))
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: events.append(("replace", os.stat(a).st_ino)) or real_replace(a, b))
    out = tmp_path / "f.txt"
    with atomic_file(out) as tmp:
        tmp.write_text("new")
    written = out.stat().st_ino
    assert events == [("fsync", written), ("replace", written)] and out.read_text() == "new"


def test_a_flush_that_fails_names_the_output_and_one_the_file_system_cannot_do_is_no_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``EIO`` from ``fsync`` (the data did not reach the disk) fails the write naming the
    output, which keeps its earlier content; ``EINVAL`` (a file system that cannot flush) does not."""
    import errno

    import bafusion.atomic as atomic

    out = tmp_path / "f.txt"
    out.write_text("earlier")
    for err in (errno.EIO, errno.EINVAL):
        def failing(fd: int, err: int = err) -> None:
            raise OSError(err, os.strerror(err))

        monkeypatch.setattr(atomic.os, "fsync", failing)
        if err == errno.EIO:
            with pytest.raises(OSError) as e:
                write_text(out, "new")
            assert e.value.errno == errno.EIO and e.value.filename == str(out)
            assert out.read_text() == "earlier" and sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]
        else:
            write_text(out, "new")
            assert out.read_text() == "new"


def test_a_folder_is_flushed_file_by_file_before_it_is_swapped_into_place(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The files of a folder output (copied, extracted, written by atomic_file inside it) were
    never flushed. They are flushed before the folder is swapped in: an ``fsync`` of each
    regular file, from a few threads (the files atomic_file writes inside it are not flushed
    one by one as well), then of each folder but on Windows: only the output's own. A
    ``syncfs`` of the whole file system waited for every other writer's data there too (200
    files with another process's 1-3 GB not yet written: 0.4-1.1 s, the files' ``fsync``
    0.02-0.13 s) and, before Linux 5.8, reported no write error. An ``EIO`` of one file fails
    the write naming the output, which keeps its earlier content."""
    import errno

    import bafusion.atomic as atomic

    events: list[object] = []
    real_fsync, real_exchange = os.fsync, atomic.exchange
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: events.append(os.fstat(fd).st_ino) or real_fsync(fd))
    monkeypatch.setattr(atomic, "exchange", lambda a, b: events.append("swap") or real_exchange(a, b))
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("earlier")
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("new")
        (tmp / "sub").mkdir()
        write_text(tmp / "sub" / "b", "new")
        (tmp / "link").symlink_to(tmp / "a")
    assert (out / "a").read_text() == "new" and (out / "sub" / "b").read_text() == "new"
    files = {(out / "a").stat().st_ino, (out / "sub" / "b").stat().st_ino}
    folders = set() if os.name == "nt" else {out.stat().st_ino, (out / "sub").stat().st_ino}
    assert events[-1] == "swap" and sorted(events[:-1]) == sorted(files | folders), events  # each once, nothing else
    assert set(events[:len(files)]) == files  # the files first, then the folders that name them
    events.clear()
    write_text(tmp_path / "alone.txt", "x")  # outside a folder being written: flushed on its own again
    assert events == [(tmp_path / "alone.txt").stat().st_ino]

    def failing(fd: int) -> None:
        if os.fstat(fd).st_size == 3:  # the file "bad"
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(atomic.os, "fsync", failing)
    with pytest.raises(OSError) as e:
        with atomic_dir(out) as tmp:
            for k in range(20):
                (tmp / f"f{k}").write_text("fine!")
            (tmp / "bad").write_text("bad")
    assert e.value.errno == errno.EIO and e.value.filename == str(out)
    assert (out / "a").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["alone.txt", "out"]


@pytest.mark.parametrize("swap", ["exdev", "none"])
def test_an_earlier_folder_that_cannot_be_renamed_is_replaced_in_place(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch, swap: str) -> None:
    """A folder of an overlay file system's lower layer (a container image's, without
    ``redirect_dir``) cannot be renamed: ``renameat2`` and ``rename`` both fail with EXDEV
    (checked on a real overlay mount: the swap, then the fallback's first rename, failed "Invalid
    cross-device link" after the work). Simulated here: the earlier folder is removed where it
    is and the new one renamed in; nothing is left beside it."""
    import ctypes
    import errno

    import bafusion.atomic as atomic

    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "a").write_text("earlier")
    overlay_lower_layer(monkeypatch, out, swap=swap == "exdev")
    with atomic_dir(out) as tmp:
        (tmp / "b").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["b"] and (out / "b").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # another failure of the swap is still an error, the earlier output in place
    def eacces(olddir, old, newdir, new, flags):
        ctypes.set_errno(errno.EACCES)
        return -1

    monkeypatch.setattr(atomic, "_renameat2", eacces)
    with pytest.raises(PermissionError):
        with atomic_dir(out) as tmp:
            (tmp / "c").write_text("newer")
    assert sorted(p.name for p in out.iterdir()) == ["b"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_on_macos_a_folder_is_swapped_in_one_step_with_renamex_np(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """macOS has no ``renameat2``: its folders were replaced by two renames (a SIGKILL between
    lost both). ``renamex_np(from, to, RENAME_SWAP)`` swaps in one step; simulated here (this
    machine is no Mac): looked up in the C library on ``darwin``, called with the flag 2, and a
    file system that refuses it (``ENOTSUP``) falls back to two renames."""
    import ctypes
    import errno
    import sys

    import bafusion.atomic as atomic

    calls: list[tuple[bytes, bytes, int]] = []
    refuse = [False]

    class RenamexNp:
        argtypes: object = None
        restype: object = None

        def __call__(self, old: bytes, new: bytes, flags: int) -> int:
            calls.append((old, new, flags))
            if refuse[0]:
                ctypes.set_errno(errno.ENOTSUP)
                return -1
            side = old + b".swap"
            os.rename(old, side)
            os.rename(new, old)
            os.rename(side, new)
            return 0

    class Libc:
        def __init__(self, name: object, use_errno: bool = False) -> None:
            assert name is None and use_errno
            self.renamex_np = RenamexNp()  # no renameat2 attribute: as macOS's libSystem

    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(ctypes, "CDLL", Libc)
    monkeypatch.setattr(atomic, "_renameat2", False)  # looked up again
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("earlier")
    for refused in (False, True):
        refuse[0] = refused
        with atomic_dir(out) as tmp:
            (tmp / "a").write_text(f"new {refused}")
        assert (out / "a").read_text() == f"new {refused}" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [flags for _, _, flags in calls] == [2, 2] and calls[0][1] == os.fsencode(out)
    assert isinstance(atomic._renameat2, type(lambda: 0))  # the wrapper, not renameat2


@pytest.mark.parametrize("blocks", ["permission", "mount"])
def test_an_unrenamable_earlier_folder_that_cannot_be_emptied_is_kept_whole(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch,
                                                                           blocks: str) -> None:
    """An earlier folder that cannot be renamed (EXDEV: an overlay's lower layer) is removed in
    place before the new one is renamed in; one with a sub-folder this process may not empty
    was half removed first, then the error, and the new output removed with its temporary
    folder: both lost (and a file system mounted inside was emptied). Now it is refused before
    anything is removed, naming the folder that blocks, the earlier output whole. (Simulated:
    root may remove anything, and this test mounts nothing.)"""
    import errno

    import bafusion.atomic as atomic

    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "x").write_text("earlier")
    (out / "ro").mkdir()
    (out / "ro" / "y").write_text("earlier")
    overlay_lower_layer(monkeypatch, out)
    if blocks == "permission":
        real_access = os.access
        monkeypatch.setattr(atomic.os, "access", lambda p, mode: Path(p) != out / "ro" and real_access(p, mode))
    else:
        real_ismount = os.path.ismount
        monkeypatch.setattr(atomic.os.path, "ismount", lambda p: Path(p) == out / "ro" or real_ismount(p))
    with pytest.raises(OSError) as e:
        with atomic_dir(out) as tmp:
            (tmp / "b").write_text("new")
    assert e.value.errno == errno.EXDEV and e.value.filename == str(out) and str(out / "ro") in str(e.value)
    assert (out / "a" / "x").read_text() == "earlier" and (out / "ro" / "y").read_text() == "earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_unrenamable_earlier_folder_replaced_in_place_keeps_the_new_output_when_the_rename_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the new folder cannot be renamed in after the earlier one (an overlay's lower
    layer's) was removed in place (a full disk here), the new output was removed with its
    temporary folder: the earlier output and the run's work both lost. It is kept beside as
    ``<out>.new-<pid>`` and named in the error."""
    import errno

    import bafusion.atomic as atomic

    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("earlier")
    overlay_lower_layer(monkeypatch, out)
    exdev_replace = atomic.os.replace

    def replace(src, dst):
        if Path(dst) == out:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(src), None, os.fspath(dst))
        return exdev_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(OSError) as e:
        with atomic_dir(out) as tmp:
            (tmp / "b").write_text("new")
    kept = tmp_path / f"out.new-{os.getpid()}"
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(out) and str(kept) in str(e.value)
    assert (kept / "b").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out.new-%d" % os.getpid()]


def test_on_macos_a_file_is_flushed_with_f_fullfsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """macOS's ``fsync`` only hands the data to the drive, whose cache a power cut loses: there
    ``fcntl(fd, F_FULLFSYNC)`` flushes it (Apple's fsync(2)). Simulated here (this machine is
    no Mac): a ``fcntl`` with ``F_FULLFSYNC`` is used, and ``fsync`` only where it is refused
    (``ENOTSUP``: some network file systems); its ``EIO`` is raised, naming the output."""
    import errno
    import types

    import bafusion.atomic as atomic

    calls: list[str] = []
    refuse: list[int | None] = [None]

    def fake_fcntl(fd: int, cmd: int) -> int:
        assert cmd == 51
        calls.append("F_FULLFSYNC")
        if refuse[0] is not None:
            raise OSError(refuse[0], os.strerror(refuse[0]))
        return 0

    fake = types.SimpleNamespace(F_FULLFSYNC=51, fcntl=fake_fcntl, flock=atomic.fcntl.flock,
                                 LOCK_EX=atomic.fcntl.LOCK_EX, LOCK_NB=atomic.fcntl.LOCK_NB,
                                 LOCK_UN=atomic.fcntl.LOCK_UN)
    monkeypatch.setattr(atomic, "fcntl", fake)
    real_fsync = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    out = tmp_path / "out.txt"
    with atomic_file(out) as tmp:
        tmp.write_text("new")
    assert calls == ["F_FULLFSYNC"] and out.read_text() == "new"
    calls.clear()
    refuse[0] = errno.ENOTSUP
    with atomic_file(out) as tmp:
        tmp.write_text("newer")
    assert calls == ["F_FULLFSYNC", "fsync"] and out.read_text() == "newer"
    calls.clear()
    refuse[0] = errno.EIO
    with pytest.raises(OSError) as e:
        with atomic_file(out) as tmp:
            tmp.write_text("lost")
    assert calls == ["F_FULLFSYNC"] and e.value.errno == errno.EIO and e.value.filename == str(out)
    assert out.read_text() == "newer"


_KILLED_WHILE_REPLACED = """
import ctypes, errno, os, shutil, signal, sys
from pathlib import Path
import bafusion.atomic as atomic
out, how, step = Path(sys.argv[1]), sys.argv[2], sys.argv[3]

def kill():
    os.kill(os.getpid(), signal.SIGKILL)

def exdev(olddir, old, newdir, new, flags):
    ctypes.set_errno(errno.EXDEV)
    return -1

atomic._renameat2 = exdev if how == "exdev" else None  # an overlay's lower layer, or no swap at all
real_replace, real_rmtree = os.replace, shutil.rmtree

def replace(src, dst):
    if how == "exdev" and Path(src) == out:  # the earlier folder cannot be renamed
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), os.fspath(src), None, os.fspath(dst))
    real_replace(src, dst)
    if (step == "after_rename_away" and Path(src) == out) or (step == "after_rename_in" and Path(dst) == out):
        kill()

def rmtree(path, *args, **kwargs):
    if Path(path) == out and step == "before_removal":
        kill()
    if Path(path) == out and step == "mid_removal":
        os.remove(out / "a")
        kill()
    real_rmtree(path, *args, **kwargs)
    if Path(path) == out and step == "after_removal":
        kill()

os.replace, shutil.rmtree = replace, rmtree
if hasattr(atomic, "_remove_in_place"):  # the earlier output removed in place, its token last
    real_remove = atomic._remove_in_place

    def remove_in_place(path, token):
        if Path(path) == out and step == "before_removal":
            kill()
        if Path(path) == out and step == "mid_removal":
            os.remove(out / "a")
            kill()
        real_remove(path, token)
        if Path(path) == out and step == "after_removal":
            kill()

    atomic._remove_in_place = remove_in_place
if step == "before_replacement":  # the new folder complete, the earlier one not touched yet
    atomic.sync_tree = lambda folder, final: kill()
with atomic.atomic_dir(out) as tmp:
    (tmp / "a").write_text("new")
    (tmp / "b").write_text("new")
"""


@pytest.mark.parametrize("how,step", [("exdev", "before_replacement"), ("exdev", "before_removal"), ("exdev", "mid_removal"), ("exdev", "after_removal"),
                                      ("exdev", "after_rename_in"), ("renames", "after_rename_away"),
                                      ("renames", "before_replacement"), ("renames", "after_rename_in")])
def test_a_folder_output_killed_at_any_step_of_its_replacement_is_whole_after_the_next_run(
        tmp_path: Path, how: str, step: str) -> None:
    """An earlier folder that cannot be renamed (EXDEV: an overlay's lower layer) is removed in
    place, then the new one renamed in; where the system cannot swap, the earlier one is renamed
    away, then the new one in. A SIGKILL between (or during the removal) left neither output in
    place, or a part of the earlier one, and the next run removed the complete new one with the
    killed run's temporary folder. The new one is now marked ready (flushed) before anything is
    touched, and the next run puts it in place: the output is the earlier one whole (killed before
    it was touched) or the new one, never neither. Each step is killed for real (SIGKILL in a
    child process); the next run's sweep is :func:`remove_stale_parts`, as :func:`atomic_dir`'s."""
    import subprocess
    import sys

    from bafusion.atomic import remove_stale_parts

    out = tmp_path / "out"
    out.mkdir()
    for name in ("a", "c"):
        (out / name).write_text("earlier")
    proc = subprocess.run([sys.executable, "-c", _KILLED_WHILE_REPLACED, str(out), how, step], check=False)
    assert proc.returncode == -9  # killed at that step
    remove_stale_parts(out)  # the next run
    if step == "before_replacement":
        assert {p.name: p.read_text() for p in out.iterdir()} == {"a": "earlier", "c": "earlier"}
    else:
        assert {p.name: p.read_text() for p in out.iterdir()} == {"a": "new", "b": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the killed run's temporary folder removed


def test_a_killed_replacement_whose_output_was_written_since_is_left_alone(tmp_path: Path) -> None:
    """The next run puts the new output of a killed replacement in place only where the output
    is missing or is the earlier one half removed: an output put there since (by another run, by
    hand) is kept, and the killed run's temporary folder removed as before."""
    import subprocess
    import sys

    from bafusion.atomic import remove_stale_parts

    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("earlier")
    proc = subprocess.run([sys.executable, "-c", _KILLED_WHILE_REPLACED, str(out), "exdev", "mid_removal"], check=False)
    assert proc.returncode == -9
    import shutil

    shutil.rmtree(out)
    out.mkdir()
    (out / "z").write_text("the user's")
    remove_stale_parts(out)
    assert {p.name: p.read_text() for p in out.iterdir()} == {"z": "the user's"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _killed_after_the_removal_in_place(out: Path, step: str = "after_removal") -> Path:
    """Run :data:`_KILLED_WHILE_REPLACED` (EXDEV) on ``out`` (holding ``a``), killed at ``step``;
    its temporary folder."""
    import subprocess
    import sys

    out.mkdir()
    (out / "a").write_text("earlier")
    proc = subprocess.run([sys.executable, "-c", _KILLED_WHILE_REPLACED, str(out), "exdev", step], check=False)
    assert proc.returncode == -9
    (wrap,) = [p for p in out.parent.iterdir() if p.name.startswith(".out.part-")]
    return wrap


def test_a_folder_made_at_the_path_since_with_the_inode_reused_and_the_earlier_names_is_left_alone(
        tmp_path: Path) -> None:
    """A run killed once the earlier output (EXDEV) was removed in place leaves the output
    missing; a folder made there since (a backup of the earlier output put back, another run's
    newer output) often has the removed folder's inode again (ext4 reuses it at once: 2 runs of
    3 here) and the earlier output's names, and the next run took it for the earlier output half
    removed: removed it and put the killed run's output in its place. The earlier output is now
    told by a token put into it before its removal and removed last. The reuse is made sure of
    here by writing the new folder's identity into the marker."""
    from bafusion.atomic import REMOVING_MARKER, _file_id, remove_stale_parts

    out = tmp_path / "out"
    wrap = _killed_after_the_removal_in_place(out)
    assert out.is_dir() and not any(out.iterdir()) and (wrap / REMOVING_MARKER).is_file()  # emptied, not removed
    out.rmdir()
    out.mkdir()
    (out / "a").write_text("the user's, put back")
    marker = json.loads((wrap / REMOVING_MARKER).read_text())
    marker["old"] = _file_id(out)  # the inode reused
    (wrap / REMOVING_MARKER).write_text(json.dumps(marker))
    remove_stale_parts(out)
    assert {p.name: p.read_text() for p in out.iterdir()} == {"a": "the user's, put back"}


@pytest.mark.parametrize("step", ["before_removal", "mid_removal", "after_removal"])
def test_an_output_left_partly_removed_by_a_killed_run_and_removed_by_the_user_since_stays_removed(
        tmp_path: Path, step: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A run killed while it removed the earlier output in place (EXDEV) left it partly removed;
    the user removed the rest, and the next write into the folder (of any output there) put the
    killed run's new output back in its place. The earlier folder is now emptied and the new one
    renamed over it in one step, so that a kill never leaves the output missing: missing, it was
    removed since, and stays so (said on stderr); the killed run's temporary folder is removed."""
    import shutil

    from bafusion.atomic import remove_stale_parts_in

    out = tmp_path / "out"
    _killed_after_the_removal_in_place(out, step)
    shutil.rmtree(out)  # the user's removal
    remove_stale_parts_in(tmp_path)  # the next write there
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
    assert "it was removed since: the killed run's new output is not put in its place" in capsys.readouterr().err


@pytest.mark.parametrize("step", ["before_removal", "mid_removal", "after_removal"])
def test_the_token_of_an_earlier_output_removed_in_place_never_stays(tmp_path: Path, step: str) -> None:
    """The token put into the earlier output before its removal in place goes with it: killed
    before, during or after the removal, the next run leaves the new output alone, without it."""
    from bafusion.atomic import remove_stale_parts

    out = tmp_path / "out"
    _killed_after_the_removal_in_place(out, step)
    remove_stale_parts(out)
    assert {p.name: p.read_text() for p in out.iterdir()} == {"a": "new", "b": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_two_runs_completing_one_killed_replacement_at_once_never_lose_both(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs that start at once both find the earlier output half removed by a killed run
    (EXDEV). One that went on after the other had put the new output in place removed that (as
    the rest of the earlier output) and then failed to rename it in: neither output was left.
    The completion is now done under a lock of the killed run's marker; here the other run
    (another open file, as another process's) does it while this one checks the folder."""
    import bafusion.atomic as atomic

    out = tmp_path / "out"
    wrap = _killed_after_the_removal_in_place(out, "mid_removal")
    real = atomic._unremovable
    calls: list[Path] = []
    other: list[bool] = []

    def unremovable(folder: Path) -> str | None:
        calls.append(folder)
        if len(calls) == 1:  # the other run completes it first (and removes the folder: _remove_stale)
            other.append(atomic._roll_forward(wrap))
            if other[0]:
                atomic._remove_part(wrap)
        return real(folder)

    monkeypatch.setattr(atomic, "_unremovable", unremovable)
    atomic.remove_stale_parts(out)
    assert out.is_dir() and {p.name: p.read_text() for p in out.iterdir()} == {"a": "new", "b": "new"}
    assert other == [False]  # the other found it under way
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_kept_folder_of_an_earlier_boot_holding_a_new_output_marked_ready_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A power cut while the earlier output was away (or removed in place) leaves the output
    missing and the new one, complete and marked ready, in a temporary folder of an earlier boot,
    which is kept and named with "remove it by hand": done as told, the only copy left was lost.
    The note now says that the folder holds the new output and that it goes in place first."""
    import socket

    from bafusion.atomic import PART_MARKER, READY_MARKER, _file_id, _marker_text, remove_stale_parts

    fields = dict(f.split("=", 1) for f in _marker_text(os.getpid()).split()[2:])
    wrap = tmp_path / ".out.part-x"
    (wrap / "out").mkdir(parents=True)
    (wrap / "out" / "a").write_text("new")
    (wrap / PART_MARKER).write_text(f"{socket.gethostname()} {_dead_pid()} pidns={fields['pidns']} boot=another-boot\n")
    (wrap / READY_MARKER).write_text(json.dumps({"name": "out", "new": _file_id(wrap / "out")}))
    assert remove_stale_parts(tmp_path / "out") == []
    err = capsys.readouterr().err
    assert f"it holds that run's new output, complete, at {wrap / 'out'}: where {tmp_path / 'out'} is missing" in err
    assert (wrap / "out" / "a").read_text() == "new"


@pytest.mark.parametrize("marker", [".bafusion-ready", ".bafusion-removing"])
def test_a_damaged_marker_of_a_killed_replacement_changes_nothing_and_fails_no_run(tmp_path: Path, marker: str) -> None:
    """A marker of a killed replacement that cannot be read as written (cut short, garbage, other
    types, nested too deep for the JSON reader: a RecursionError, which no sweep caught, failed
    the run) puts nothing in place: the output found there is kept and the killed run's
    temporary folder removed, as a run killed before it touched the earlier output."""
    from bafusion.atomic import PART_MARKER, READY_MARKER, REMOVING_MARKER, _file_id, _marker_text, remove_stale_parts

    out = tmp_path / "out"
    for i, text in enumerate(['{"name": "out", "ne', "\x00\xff garbage", "[" * 100_000, '["out"]', '"out"', "5",
                              '{"name": 5, "new": [1, 2]}', '{"name": "out", "new": "x"}', '{"old": 1, "names": [[1]]}',
                              '{"old": null, "names": 3, "token": []}']):
        out.mkdir()
        (out / "a").write_text("earlier")
        wrap = tmp_path / f".out.part-{i}"
        (wrap / "out").mkdir(parents=True)
        (wrap / "out" / "a").write_text("new")
        (wrap / PART_MARKER).write_text(_marker_text(_dead_pid()))
        (wrap / READY_MARKER).write_text(json.dumps({"name": "out", "new": _file_id(wrap / "out")}))
        (wrap / REMOVING_MARKER).write_text(json.dumps({"old": _file_id(out), "names": ["a"], "token": "x"}))
        (wrap / marker).write_bytes(text.encode("utf-8", "surrogateescape"))
        assert remove_stale_parts(out) == [wrap], text[:30]
        assert {p.name: p.read_text() for p in out.iterdir()} == {"a": "earlier"}, text[:30]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
        import shutil

        shutil.rmtree(out)


def test_on_macos_a_folder_asks_the_drive_for_one_whole_flush_not_one_a_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``F_FULLFSYNC`` flushes the drive's whole cache: one for each file of a folder output
    (sync_tree: thousands of files for prepare or fuse-set) asked the drive for as many whole
    flushes. The files and folders are now each flushed with ``fsync`` and the cache once, at the
    end. Simulated (no Mac here), as test_on_macos_a_file_is_flushed_with_f_fullfsync."""
    import types

    import bafusion.atomic as atomic

    calls: list[str] = []

    def fake_fcntl(fd: int, cmd: int) -> int:
        assert cmd == 51
        calls.append("F_FULLFSYNC")
        return 0

    fake = types.SimpleNamespace(F_FULLFSYNC=51, fcntl=fake_fcntl, flock=atomic.fcntl.flock,
                                 LOCK_EX=atomic.fcntl.LOCK_EX, LOCK_NB=atomic.fcntl.LOCK_NB,
                                 LOCK_UN=atomic.fcntl.LOCK_UN)
    monkeypatch.setattr(atomic, "fcntl", fake)
    real_fsync = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    with atomic_dir(tmp_path / "out") as tmp:
        for i in range(20):
            (tmp / f"{i}.png").write_bytes(b"x")
        (tmp / "sub").mkdir()
    assert calls.count("F_FULLFSYNC") == 1 and calls[-1] == "F_FULLFSYNC", calls
    assert calls.count("fsync") == 20 + 2  # each file, each folder
    assert sorted(p.name for p in (tmp_path / "out").iterdir())[:2] == ["0.png", "1.png"]


def test_a_killed_replacement_is_not_completed_between_another_writers_two_renames(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the system cannot swap, a writer renames the earlier output away, then its new one
    in. Another run that completed a killed run's replacement (killed once its new output was
    marked ready, before it touched the output) between those two renames found the output
    missing and put the killed run's output in its place: the writer's rename in, and its
    putting back of the earlier output, failed ("Directory not empty"), and the writer's new
    output and the earlier one were lost. The completion now waits for the writer's lock of the
    folder; here it runs in another thread, started between the writer's two renames."""
    import subprocess
    import threading
    import time

    import bafusion.atomic as atomic

    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("earlier")
    wrap = tmp_path / ".out.part-killed"
    (wrap / "out").mkdir(parents=True)
    (wrap / "out" / "a").write_text("the killed run's")
    dead = subprocess.Popen(["true"])
    dead.wait()
    (wrap / atomic.PART_MARKER).write_text(atomic._marker_text(dead.pid))
    (wrap / atomic.READY_MARKER).write_text(json.dumps({"name": "out", "new": atomic._file_id(wrap / "out")}))
    monkeypatch.setattr(atomic, "_renameat2", None)  # no swap
    monkeypatch.setattr(atomic, "remove_stale_parts", lambda final: [])  # the writer swept before that run died
    real = os.replace
    other: list[threading.Thread] = []

    def replace(src: object, dst: object) -> None:
        real(src, dst)  # type: ignore[arg-type]
        if Path(src) == out and not other:  # the earlier output renamed away: another run sweeps now
            other.append(threading.Thread(target=atomic._roll_forward, args=(wrap,)))
            other[0].start()
            other[0].join(timeout=1.0)  # done at once without the lock

    monkeypatch.setattr(atomic.os, "replace", replace)
    with atomic.atomic_dir(out) as tmp:
        (tmp / "a").write_text("the writer's")
    other[0].join(timeout=30)
    assert not other[0].is_alive()
    assert {p.name: p.read_text() for p in out.iterdir()} == {"a": "the writer's"}


_locks_listed = os.path.isfile("/proc/locks")


@pytest.mark.skipif(not _locks_listed, reason="needs /proc/locks (Linux)")
def test_a_folder_locked_by_the_process_that_runs_the_writer_is_not_waited_for(tmp_path: Path) -> None:
    """`flock FOLDER command` (util-linux: the lock held while its command runs) around a run
    that replaces an output in FOLDER where the system cannot swap: the replacement waited for
    the folder's lock (_replacing), which the run's own parent holds till the run ends, for
    ever. The holder runs this run: not waited for, said once. Here the test process is the
    parent that holds the lock (the child does not inherit its descriptor, as under Snakemake's
    subprocesses)."""
    import fcntl
    import subprocess
    import sys

    folder = tmp_path / "p"
    folder.mkdir()
    child = ("import sys; from pathlib import Path; import bafusion.atomic as a; a._renameat2 = None\n"
             "out = Path(sys.argv[1])\n"
             "for i in range(3):\n"
             "    with a.atomic_dir(out) as t:\n"
             "        (t / 'x').write_text(str(i))\n"
             "print((out / 'x').read_text())\n")
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        done = subprocess.run([sys.executable, "-c", child, str(folder / "out")], capture_output=True, text=True,
                              timeout=60)
    finally:
        os.close(fd)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2"
    assert done.stderr.count(f"{folder}: this folder is locked (flock) by process {os.getpid()}, which runs this "
                             "one") == 1, done.stderr


@pytest.mark.skipif(not _locks_listed, reason="needs /proc/locks (Linux)")
def test_a_folder_locked_by_a_descriptor_of_the_writing_process_itself_is_not_waited_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller of this process that holds the folder's flock on a descriptor of its own: the
    replacement waited for it for ever (the same process, another open file)."""
    import fcntl
    import threading

    import bafusion.atomic as atomic

    monkeypatch.setattr(atomic, "_renameat2", None)  # no swap
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(tmp_path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)

    def write() -> None:
        with atomic_dir(out) as tmp:
            (tmp / "x").write_text("new")

    writer = threading.Thread(target=write, daemon=True)
    try:
        writer.start()
        writer.join(timeout=30)
        assert not writer.is_alive()
    finally:
        os.close(fd)  # a waiting writer goes on then
        writer.join(timeout=30)
    assert (out / "x").read_text() == "new"


@pytest.mark.skipif(not _locks_listed, reason="needs /proc/locks (Linux)")
def test_a_folder_locked_by_another_process_is_still_waited_for_and_the_wait_said(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The lock of another run (not one that runs this one) is waited for, as 99f1622 made it,
    and a long wait is said on stderr, naming the holder."""
    import subprocess
    import sys
    import time

    import bafusion.atomic as atomic

    monkeypatch.setattr(atomic, "_renameat2", None)  # no swap
    monkeypatch.setattr(atomic, "_REPLACING_NOTE_S", 0.2)
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], "
                               "os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); "
                               "time.sleep(1.5)", str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with atomic_dir(out) as tmp:
            (tmp / "x").write_text("new")
        waited = time.monotonic() - t0
    finally:
        holder.wait(timeout=30)
    assert waited >= 0.8, waited
    assert (out / "x").read_text() == "new"
    assert f"{tmp_path}: waiting for this folder's lock (flock), held by process {holder.pid}" in capsys.readouterr().err


def test_a_killed_replacement_completed_while_another_writer_puts_its_output_in_a_missing_place_loses_neither(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The output is missing (a run killed between its two renames, its new output marked
    ready); a writer that started before that run died finds it missing and renames its own in.
    Another run completing the killed run's replacement between the writer's look and its
    rename put the killed run's output there first: the writer's rename failed ("Directory not
    empty") after its work, and its output was deleted. The writer's look and rename now hold
    the folder's lock too: the completion waits, finds the writer's output and leaves it."""
    import subprocess
    import threading

    import bafusion.atomic as atomic

    out = tmp_path / "out"
    wrap = tmp_path / ".out.part-killed"
    (wrap / "out").mkdir(parents=True)
    (wrap / "out" / "a").write_text("the killed run's")
    dead = subprocess.Popen(["true"])
    dead.wait()
    (wrap / atomic.PART_MARKER).write_text(atomic._marker_text(dead.pid))
    (wrap / atomic.READY_MARKER).write_text(json.dumps({"name": "out", "new": atomic._file_id(wrap / "out")}))
    monkeypatch.setattr(atomic, "remove_stale_parts", lambda final: [])  # the writer swept before that run died
    real = os.replace
    other: list[threading.Thread] = []

    def replace(src: object, dst: object) -> None:
        if Path(dst) == out and Path(src).parent != wrap and not other:  # the writer's rename in: another run sweeps
            other.append(threading.Thread(target=atomic._roll_forward, args=(wrap,)))
            other[0].start()
            other[0].join(timeout=1.0)  # done at once without the lock
        real(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(atomic.os, "replace", replace)
    with atomic.atomic_dir(out) as tmp:
        (tmp / "a").write_text("the writer's")
    other[0].join(timeout=30)
    assert not other[0].is_alive()
    assert {p.name: p.read_text() for p in out.iterdir()} == {"a": "the writer's"}


def test_a_folder_lock_whose_holder_cannot_be_named_is_waited_for_a_bounded_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Where the holder of the folder's lock cannot be named (macOS has no /proc/locks; a process
    of another container), `flock FOLDER command` around the run cannot be told from another
    run's brief hold: the wait is bounded (_REPLACING_UNKNOWN_S), said, not for ever."""
    import subprocess
    import sys
    import time

    import bafusion.atomic as atomic

    monkeypatch.setattr(atomic, "_renameat2", None)  # no swap
    monkeypatch.setattr(atomic, "_flock_holders", lambda fd: set())  # as on macOS
    monkeypatch.setattr(atomic, "_REPLACING_UNKNOWN_S", 0.5, raising=False)
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], "
                               "os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); "
                               "time.sleep(15)", str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with atomic_dir(out) as tmp:
            (tmp / "x").write_text("new")
        waited = time.monotonic() - t0
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert 0.4 <= waited < 10, waited
    assert (out / "x").read_text() == "new"
    assert f"{tmp_path}: this folder's lock (flock) is held by a process that cannot be named" in capsys.readouterr().err


def _local_or_skip(folder: Path) -> None:
    """Skip where ``folder`` is not on a local file system (the marker's lock is not trusted there)."""
    from bafusion import atomic

    fd = os.open(folder, os.O_RDONLY)
    try:
        if atomic.fcntl is None or not atomic._local_fs(fd):
            pytest.skip("the temporary folder is not on a local file system (ext4, XFS, Btrfs, tmpfs ...)")
    finally:
        os.close(fd)


_WRITER = """
import sys, os, signal
from bafusion.atomic import atomic_dir
with atomic_dir(sys.argv[1]) as tmp:
    (tmp / "half").write_text("half")
    print(os.getpid(), flush=True)
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.stdin.readline()  # holds its folder until told to finish
    (tmp / "half").write_text("done")
"""


def _reboot_marker(wrap: Path, **changes: str) -> None:
    """Rewrite ``wrap``'s marker in place (its inode, and a lock held on it, kept) with ``changes``
    to its fields (``pid``, ``boot``, ...)."""
    from bafusion.atomic import PART_MARKER

    host, pid, *rest = (wrap / PART_MARKER).read_text().split()
    fields = {"pid": pid, **dict(f.split("=", 1) for f in rest)}
    fields.update(changes)
    pid = fields.pop("pid")
    with open(wrap / PART_MARKER, "r+", encoding="utf-8") as f:
        f.truncate(0)
        f.write(" ".join([host, pid, *(f"{k}={v}" for k, v in fields.items())]) + "\n")


def test_a_leftover_of_an_earlier_boot_is_recovered_when_its_marker_is_unlocked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run killed (a power cut) leaves its temporary folder; after the reboot the marker's
    boot id is another, and the folder was only named ("another container or an earlier boot"),
    never removed: a boot id cannot tell a reboot from another kernel sharing the file system.
    Its writer held the marker's flock, which no process holds now on this local file system:
    the writer is gone, and the folder is removed."""
    import subprocess
    import sys

    from bafusion.atomic import PART_MARKER, remove_stale_parts

    _local_or_skip(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", _WRITER, str(out), "kill"], capture_output=True, text=True)
    assert proc.returncode == -9
    [wrap] = tmp_path.glob(".out.part-*")
    assert " lock=flock" in (wrap / PART_MARKER).read_text()
    _reboot_marker(wrap, boot="an-earlier-boot", pidns="4026531836")  # the boot before the power cut
    assert remove_stale_parts(out) == [wrap]
    assert not wrap.exists() and "not removed" not in capsys.readouterr().err


def test_a_leftover_whose_marker_is_locked_is_kept_whatever_it_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A writer that runs holds its marker's lock: its folder is kept, and not named as a
    leftover, whatever process, namespace or boot the marker names (a run of another container
    on this machine; a marker naming a process that is gone, removed under a live writer before,
    were the lock not looked at)."""
    import subprocess
    import sys

    from bafusion.atomic import remove_stale_parts

    _local_or_skip(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(out), "hold"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == str(proc.pid)
        [wrap] = tmp_path.glob(".out.part-*")
        _reboot_marker(wrap, pid=str(_dead_pid()))  # by the process identity alone: gone
        assert remove_stale_parts(out) == [] and (wrap / "out" / "half").read_text() == "half"
        _reboot_marker(wrap, boot="another-boot")  # another container's or boot's: kept, and not named
        assert remove_stale_parts(out) == [] and wrap.is_dir()
        assert "not removed" not in capsys.readouterr().err
    finally:
        proc.communicate("go\n", timeout=60)
    assert proc.returncode == 0 and (out / "half").read_text() == "done"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_marker_without_the_lock_field_is_judged_by_its_process(tmp_path: Path) -> None:
    """A marker of an earlier version, or of a file system not local (no ``lock=flock``): nobody
    holds its lock, which does not make its writer gone; the process identity decides, as before
    (an earlier boot: kept)."""
    import socket

    from bafusion.atomic import PART_MARKER, _marker_text, remove_stale_parts

    out = tmp_path / "out"
    fields = dict(f.split("=", 1) for f in _marker_text(os.getpid()).split()[2:])
    assert "lock" not in fields
    wrap = tmp_path / ".out.part-x"
    wrap.mkdir()
    (wrap / PART_MARKER).write_text(f"{socket.gethostname()} {_dead_pid()} pidns={fields['pidns']} boot=another\n")
    assert remove_stale_parts(out) == [] and wrap.is_dir()


def test_a_python_without_ctypes_writes_with_a_marker_that_says_no_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Python built without ``ctypes`` (no libffi): looking up ``fstatfs`` raised its
    ``ImportError`` out of every :func:`atomic_dir` and :func:`atomic_file`. The file system
    cannot be told local then: the marker says no lock, and the write goes on."""
    import sys

    from bafusion import atomic

    monkeypatch.setitem(sys.modules, "ctypes", None)  # import ctypes: ImportError
    atomic._libc_fstatfs.cache_clear()
    markers: list[str] = []
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "a").write_text("a")
            markers += [m.read_text() for m in tmp_path.glob(f".out.part-*/{atomic.PART_MARKER}")]
        with atomic_file(tmp_path / "f") as f:
            f.write_text("f")
    finally:
        atomic._libc_fstatfs.cache_clear()
    assert (tmp_path / "out" / "a").read_text() == "a" and (tmp_path / "f").read_text() == "f"
    assert len(markers) == 1 and "lock=" not in markers[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "out"]


def test_the_marker_lock_is_not_held_by_a_program_the_killed_writer_started(tmp_path: Path) -> None:
    """The marker's descriptor, which holds its lock, is not passed to a program the writer
    starts (``O_CLOEXEC``, even where the program keeps every inheritable descriptor): a program
    left running after the writer was killed would hold the lock, its folder kept for as long as
    a run in progress."""
    import subprocess
    import sys

    from bafusion.atomic import remove_stale_parts

    _local_or_skip(tmp_path)
    out = tmp_path / "out"
    writer = """
import os, signal, subprocess, sys
from pathlib import Path
from bafusion.atomic import atomic_dir
with atomic_dir(Path(sys.argv[1])) as tmp:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline()"], close_fds=False)
    print(child.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.Popen([sys.executable, "-c", writer, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        assert proc.wait(timeout=60) == -9
        os.kill(child, 0)  # still runs, holding the writer's stdin
        [wrap] = tmp_path.glob(".out.part-*")
        assert remove_stale_parts(out) == [wrap] and not wrap.exists()
    finally:
        assert proc.stdin is not None
        proc.stdin.close()  # the child's stdin: it ends
