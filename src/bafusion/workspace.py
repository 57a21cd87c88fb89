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

__all__ = ["project_root", "resolve"]


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
    place in the workspace (``$DVC_ROOT``), absolute.

    Examples
    --------
    >>> str(resolve("/data/x")), str(resolve("data/testset"))
    ('/data/x', 'data/testset')
    """
    p = Path(path)
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
