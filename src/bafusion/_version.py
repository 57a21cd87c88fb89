"""The package version (ground floor: importing it loads nothing else). The one copy of the
number: pyproject.toml takes it from here (``dynamic``, ``[tool.setuptools.dynamic]``).

The number alone does not say which code made a result (it stayed 0.1.0 across changes that
alter outputs): what depends on the code itself hashes its sources (:func:`hash_sources`)."""

__version__ = "0.1.0"


def hash_sources(h, files) -> None:
    """Feed the bytes of each of ``files`` (source files, paths, in the order given) to the
    hash ``h`` (a :mod:`hashlib` object): the identity of the code itself, for records that
    must not be taken for another code's (a training's checkpoint, ``fuse-dir``'s record of
    its outputs). A file that cannot be read adds nothing.

    Parameters
    ----------
    h : hashlib hash object
        Updated in place.
    files : iterable of str or os.PathLike
        The source files.
    """
    from pathlib import Path

    for f in files:
        try:
            h.update(Path(f).read_bytes())
        except (OSError, TypeError):
            pass
