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


def test_a_leftover_old_link_does_not_block_the_next_run(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out.old").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a").write_text("x")
    assert (tmp_path / "out" / "a").read_text() == "x" and (tmp_path / "elsewhere").is_dir()
    assert not (tmp_path / "out.old").exists()


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
