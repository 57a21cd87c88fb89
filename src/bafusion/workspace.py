"""Where the relative paths of the parameters point, also in a DVC experiment's temporary copy.

``dvc exp run --temp`` and ``dvc exp run --queue`` run the stages in a copy of the project
under ``.dvc/tmp/exps/`` (``$DVC_ROOT`` still names the workspace). A path inside the project
(``data/testset``) is the copy's own: the experiment's outputs. A path that leaves the project
(``../shared/data/train``) would point into ``.dvc/tmp/exps/``, where nothing is; it is taken
from the workspace instead, so that it names what it names in a workspace run.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["dvc_removed_outputs_note", "home_path", "project_root", "resolve"]


def home_path(s: str | os.PathLike[str]) -> str:
    """``s`` with a leading ``~`` made the home folder, as a shell would have made it: the shell
    leaves ``~`` alone in ``--out=~/x`` and in quotes (Snakemake's rules quote the params they
    pass), Windows' cmd everywhere, and a param of params.yaml or a data source is never a
    shell's. On POSIX ``~user`` is that user's home when the user exists
    (``os.path.expanduser``, as the shell), else ``s`` is kept. On Windows only ``~`` alone and
    ``~\\...`` or ``~/...`` are expanded: ``ntpath.expanduser`` turns any ``~word`` into a
    sibling of the home folder without asking whether the user exists, so a file ``~draft.jpg``
    of the current folder was read as ``C:\\Users\\draft.jpg``.

    Parameters
    ----------
    s : str or os.PathLike
        A path as written (an option, a param, an environment variable).

    Returns
    -------
    str
        The path, its leading ``~`` (if any, as above) made the home folder.

    Examples
    --------
    >>> home_path("photos/a.png")
    'photos/a.png'
    """
    s = os.fspath(s)
    path = os.path
    if path.sep == "\\" and s != "~" and not (s.startswith("~") and s[1:2] in ("\\", "/")):
        return s
    return path.expanduser(s)


def project_root(start: str | os.PathLike[str] | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: the working directory) holding
    ``dvc.yaml`` or ``Snakefile``, else ``start`` itself; absolute. Unlike
    :func:`bafusion.tracking.repo_root` it does not follow ``$DVC_ROOT``: in a temporary
    experiment it is the copy the stage runs in."""
    here = Path(start if start is not None else Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "dvc.yaml").exists() or (d / "Snakefile").exists():
            return d
    return here


def resolve(path: str | os.PathLike[str], base: str | os.PathLike[str] | None = None) -> Path:
    """``path`` taken from ``base`` (default: the working directory, and then a relative path
    stays relative); from a DVC experiment's copy of the project (a project under
    ``$DVC_ROOT/.dvc/tmp/exps/``), a relative path that leaves the copy is taken from the same
    place in the workspace (``$DVC_ROOT``), absolute. A leading ``~`` is the home folder (a
    param ``sources: ~/photos`` was taken as ``<project>/~/photos``).

    Examples
    --------
    >>> str(resolve("/data/x")), str(resolve("data/testset"))
    ('/data/x', 'data/testset')
    """
    p = Path(home_path(path))  # ~/x from a param or an option the shell did not expand
    if p.is_absolute():
        return p
    b = Path(base) if base is not None else Path(".")
    workspace = os.environ.get("DVC_ROOT")
    if workspace:
        here = b.resolve()
        local, ws = project_root(here), Path(workspace).resolve()
        target = Path(os.path.normpath(here / p))
        # only in DVC's copy (.dvc/tmp/exps/...), not from a folder outside the project
        if local.is_relative_to(ws / ".dvc" / "tmp" / "exps") and not target.is_relative_to(local):
            return Path(os.path.normpath(ws / here.relative_to(local) / p))
    return p if base is None else b / p


def _git_tracked(root: Path, paths: list[str]) -> list[str]:
    """Those of ``paths`` that git tracks in ``root`` (none when git cannot say)."""
    import subprocess

    try:
        out = subprocess.run(["git", "ls-files", "-z", "--", *paths], cwd=root, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    tracked = set(out.stdout.decode(errors="replace").split("\0")) if out.returncode == 0 else set()
    return [p for p in paths if p in tracked]


def dvc_removed_outputs_note(environ: dict[str, str] | None = None, cwd: str | os.PathLike[str] | None = None) -> str | None:
    """The line that says, under a DVC stage run in the workspace, that DVC deleted the stage's
    outputs before calling its command (it does so for every stage it runs): a refusal of the
    parameters there (``dvc exp run -S fuse.l=-1``) leaves them gone, and how to bring them back.

    A stage's command runs with ``$DVC_STAGE`` (its name) and ``$DVC_ROOT`` (the workspace);
    in ``dvc exp run --temp``/``--queue`` it runs in a copy (the working directory is not
    ``$DVC_ROOT``), whose removal leaves the workspace's outputs: None. None too when the
    stage is not in ``dvc.yaml`` or none of its outputs is missing.

    Returns
    -------
    ``"note: dvc removed the outputs of stage 'fuse' (data/fused, metrics/fuse.json) before
    running it: fix the value in params.yaml; `dvc checkout fuse && git checkout --
    metrics/fuse.json` brings them back"`` (``git checkout`` only for the stage's git-tracked
    outputs that DVC does not cache, never for ``params.yaml``: its uncommitted edits are kept)
    """
    env = os.environ if environ is None else environ
    stage, root = env.get("DVC_STAGE"), env.get("DVC_ROOT")
    if not stage or not root:
        return None
    try:
        import yaml

        from bafusion.config import load_yaml  # the project's reader: aliases capped, a key given twice refused

        here = Path(cwd if cwd is not None else Path.cwd()).resolve()
        if here != Path(root).resolve():
            return None
        name = stage.rpartition(":")[2]
        outs: list[tuple[str, bool]] = []  # (path, in DVC's cache)
        stages = (load_yaml((here / "dvc.yaml").read_text(encoding="utf-8-sig")) or {})["stages"]
        for out in stages[name].get("outs") or []:
            if isinstance(out, str):
                outs.append((out, True))
            elif isinstance(out, dict):
                for path, opts in out.items():
                    opts = opts if isinstance(opts, dict) else {}
                    if not opts.get("persist"):
                        outs.append((str(path), opts.get("cache", True) is not False))
        gone = [p for p, _ in outs if not (here / p).exists()]
        if not gone:
            return None
        lock = here / "dvc.lock"
        locked = lock.is_file() and name in (
            (load_yaml(lock.read_text(encoding="utf-8-sig")) or {}).get("stages") or {})
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ImportError, yaml.YAMLError):
        return None
    if not locked:  # never run by DVC: whether there were any is not known
        return (f"note: dvc removes a stage's outputs before running it: those of stage {name!r} "
                f"({', '.join(gone)}), if there were any, are gone (dvc.lock has no record of them): fix the value "
                "and run the stage again")
    head = f"note: dvc removed the outputs of stage {name!r} ({', '.join(gone)}) before running it"
    # never `git checkout -- params.yaml`: it would throw away every uncommitted edit of it; only the
    # stage's git-tracked outputs outside DVC's cache (cache: false), which `dvc checkout` cannot restore
    from_git = _git_tracked(here, [p for p, cached in outs if not cached and p in gone])
    back = f"dvc checkout {name}" + (f" && git checkout -- {' '.join(from_git)}" if from_git else "")
    return f"{head}: fix the value in params.yaml; `{back}` brings them back"
