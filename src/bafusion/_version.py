"""The package version (ground floor: importing it loads nothing else). The one copy of the
number: pyproject.toml takes it from here (``dynamic``, ``[tool.setuptools.dynamic]``).

The number is bumped whenever outputs or behaviour change (CHANGELOG.md), so that an install of
a newer build replaces an older one (pip keeps an installed version when given a build of the
same number). It names a release, not an edited checkout's code: what depends on the code
itself hashes its code (:func:`hash_sources`, :func:`code_digest`: the syntax tree without
docstrings, so a reworded comment or docstring does not count)."""

__version__ = "0.12.0"


def hash_sources(h, files) -> None:
    """Feed the code of each of ``files`` (Python source files, paths, in the order given) to
    the hash ``h`` (a :mod:`hashlib` object): the identity of the code itself, for records that
    must not be taken for another code's (a training's checkpoint). Each file counts as its
    code (:func:`code_digest`), so a reworded docstring or comment, or other line endings, do
    not make a checkpoint another code's, while any change of the code does. A file that
    cannot be read adds nothing.

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
            data = Path(f).read_bytes()
        except (OSError, TypeError):
            continue
        h.update(code_digest(data))


#: sha256 of a module's source -> sha256 of its code (:func:`code_of`): parsed once per process.
_CODE_DIGESTS: dict = {}


def code_digest(source: bytes) -> bytes:
    """sha256 (raw bytes) of the code of a Python module's source (:func:`code_of`), cached per
    process.

    Parameters
    ----------
    source : bytes
        The module's source.

    Returns
    -------
    bytes
        The digest of its code.
    """
    import hashlib

    key = hashlib.sha256(source).digest()
    if key not in _CODE_DIGESTS:
        _CODE_DIGESTS[key] = hashlib.sha256(code_of(source)).digest()
    return _CODE_DIGESTS[key]


def code_of(source: bytes) -> bytes:
    """The code of a Python module's source, as the code digests hash it (fuse-dir's
    ``bafusion.fusion.batch.fusion_code_digest``, a training checkpoint's code digest): its
    syntax tree (:func:`ast.parse`) without the docstrings of the module, its classes and
    functions (a first statement that is a string alone), written out field by field, so
    that comments, formatting, line endings and docstrings do not count and any other change
    does (a string constant the code uses, such as a message, is code). Fields that are None
    or empty lists are left out (not :func:`ast.dump`), so that a field a later Python adds,
    empty in code that does not use it (3.12's ``type_params`` of every function), changes
    nothing. An f-string's empty pieces are left out too (3.12.1 ends a format spec that ends
    with a replacement field, as in ``f"{x:>{w}}"``, with an empty string that 3.11 and 3.13
    do not have), so that the code of a source is the same on each Python from 3.11 to 3.13.
    A source that does not parse is taken as its text, with CRLF line endings as LF.

    Parameters
    ----------
    source : bytes
        The module's source (its encoding declared as Python reads it).

    Returns
    -------
    bytes
        Its code, a text to hash.
    """
    import ast

    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):  # ValueError: a null byte
        return b"text\0" + source.replace(b"\r\n", b"\n")
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                node.body = node.body[1:]
        elif isinstance(node, ast.JoinedStr):
            node.values = [x for x in node.values
                           if not (isinstance(x, ast.Constant) and x.value == "")]

    def dump(v) -> str:
        if isinstance(v, ast.AST):
            fields = (f"{k}={dump(x)}" for k in v._fields
                      if (x := getattr(v, k, None)) is not None and not (isinstance(x, list) and not x))
            return f"{type(v).__name__}({','.join(fields)})"
        if isinstance(v, list):
            return f"[{','.join(dump(x) for x in v)}]"
        return repr(v)

    return b"ast\0" + dump(tree).encode()
