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
