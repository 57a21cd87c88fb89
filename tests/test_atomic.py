"""Outputs written under a temporary name and renamed into place (bafusion.atomic)."""

from __future__ import annotations

from pathlib import Path

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
