"""Where this bafusion's code lives: its own source checkout (an editable install in the
repository), or an installed package (a wheel, ``pip install .``, ``pip install --target``).

Ground floor: imports nothing of bafusion. Two things depend on it. The shipped nets are
looked for in the repository's ``models/`` only when the package runs from the repository
(:func:`bafusion.fusion.models.default_model_dirs`): for an installed package the folder
three above it is an arbitrary one (``<venv>/lib``, ``$HOME``). And MLflow runs carry the git
commit as the code's only when the code is the checkout's
(:func:`bafusion.tracking.source_tags`); every run carries :func:`code_digest`.
"""

from __future__ import annotations

import functools
import hashlib
import tomllib
from pathlib import Path

#: This package's folder (``<repo>/src/bafusion`` in a checkout, ``site-packages/bafusion`` when
#: installed).
PACKAGE_DIR = Path(__file__).resolve().parent

#: The name in the checkout's ``pyproject.toml`` (``[project] name``).
PROJECT_NAME = "bafusion"


def source_checkout(package_dir: Path | None = None) -> Path | None:
    """The repository whose source this package is, when it runs from there; else None.

    A package folder ``<repo>/src/bafusion`` is the checkout's own code when ``<repo>`` holds a
    ``pyproject.toml`` whose ``[project] name`` is ``bafusion``: an editable install, or
    ``PYTHONPATH=src``. An installed package (``site-packages/bafusion``, a ``--target`` folder)
    is not, whatever folder it lies in; neither is a copy installed with ``pip install .`` from
    the checkout into a virtual environment inside it.

    Parameters
    ----------
    package_dir : Path, optional
        The package folder; default: this one (:data:`PACKAGE_DIR`).

    Returns
    -------
    Path or None
        The repository's folder, resolved.
    """
    pkg = PACKAGE_DIR if package_dir is None else Path(package_dir).resolve()
    if pkg.parent.name != "src":
        return None
    repo = pkg.parent.parent
    try:
        with open(repo / "pyproject.toml", "rb") as f:
            name = tomllib.load(f).get("project", {}).get("name")
    except (OSError, tomllib.TOMLDecodeError, AttributeError):
        return None
    return repo if name == PROJECT_NAME else None


@functools.lru_cache(maxsize=None)
def code_digest(package_dir: Path | None = None) -> str:
    """sha256 of this package's code as it runs: every ``.py`` file under the package folder,
    and its presets and schemas (``.yaml``), each with its path (a module moved or added is other
    code); the shipped nets are not code and are named by the runs' own records. Line endings do
    not count (a Windows checkout's CRLF hashes as LF), nor hidden files nor ``__pycache__``.

    The version number names a release; this names the code itself, for a record (an MLflow
    run) that must say which code ran when the version alone cannot (an edited checkout).

    Parameters
    ----------
    package_dir : Path, optional
        The package folder to hash; default: this one (:data:`PACKAGE_DIR`).

    Returns
    -------
    str
        The hex digest (computed once per process and folder).
    """
    pkg = PACKAGE_DIR if package_dir is None else Path(package_dir)
    files = sorted(f for pattern in ("*.py", "presets/*.yaml", "schemas/*.yaml")
                   for f in (pkg.rglob(pattern) if pattern == "*.py" else pkg.glob(pattern))
                   if not any(part.startswith(".") or part == "__pycache__" or part == "models"
                              for part in f.relative_to(pkg).parts[:-1]) and not f.name.startswith("."))
    h = hashlib.sha256()
    for f in files:
        try:
            data = f.read_bytes()
        except OSError:
            continue
        h.update(f.relative_to(pkg).as_posix().encode() + b"\0")
        h.update(data.replace(b"\r\n", b"\n"))
    return h.hexdigest()


#: The environment variable in which the Snakefile names its checkout's ``src/`` folder for the
#: pipeline's jobs (:func:`other_code_problem`).
CHECKOUT_SRC_ENV = "BAFUSION_CHECKOUT_SRC"


def other_code_problem(environ: dict[str, str] | None = None,
                       package_dir: Path | None = None) -> tuple[str, bool] | None:
    """What is wrong when a pipeline job runs bafusion code other than its checkout's.

    The Snakefile names its checkout's ``src/`` in :data:`CHECKOUT_SRC_ENV` and puts it first on
    the jobs' ``PYTHONPATH``; a job whose Python ignores ``PYTHONPATH`` (``python -E``/``-I``)
    or cannot see the checkout (a container without it mounted) imports the bafusion that its
    environment installed instead, and its outputs were recorded against the checkout's
    ``src/`` (dvc.yaml's deps, the params checked) though that code did not make them. The
    package folders are compared, resolved: this one is the checkout's, or the variable is
    unset (no pipeline job): None. Otherwise :func:`code_digest` of both: the same code (a
    wheel of the same commit, a copy) is no problem; other code is refused (``True``); a
    checkout whose ``src/bafusion`` the job cannot read is warned about (``False``): which code
    the deps name cannot be told there.

    Parameters
    ----------
    environ : dict, optional
        The environment; default: ``os.environ``.
    package_dir : Path, optional
        The package folder imported; default: this one (:data:`PACKAGE_DIR`).

    Returns
    -------
    tuple of (str, bool) or None
        The message (naming both folders) and whether to refuse, or None.
    """
    import os

    env = os.environ if environ is None else environ
    named = env.get(CHECKOUT_SRC_ENV, "")
    if not named:
        return None
    pkg = (PACKAGE_DIR if package_dir is None else Path(package_dir)).resolve()
    theirs = Path(named) / PROJECT_NAME
    try:
        theirs = theirs.resolve()
    except (OSError, RuntimeError):
        pass
    if theirs == pkg:
        return None
    fix = (f"run the jobs with the checkout's code: a Python that reads PYTHONPATH (not python -E or -I), the "
           f"checkout visible to the job (a container: mount it), or the checkout installed in the job's "
           f"environment (pip install -e {Path(named).parent})")
    if not (theirs / "__init__.py").is_file():
        return (f"this pipeline job imported bafusion from {pkg}, not from its checkout's {theirs} ({CHECKOUT_SRC_ENV}), "
                f"which it cannot read: its outputs may be of other code than the checkout's src/ that dvc.yaml "
                f"records as their deps; {fix}", False)
    if code_digest(pkg) == code_digest(theirs):
        return None
    return (f"this pipeline job imported bafusion from {pkg}, not from its checkout's {theirs} ({CHECKOUT_SRC_ENV}), "
            f"and that code differs from the checkout's: its outputs would be recorded against the checkout's src/ "
            f"(dvc.yaml's deps) though other code made them; {fix}", True)
