"""Errors meant for the user: the CLI prints them as one line naming the file and the problem."""

from __future__ import annotations

import codecs
import re


#: The name of the codec error handler (``errors=``) that writes a file name's byte undecodable in
#: the locale (``os.fsdecode`` gives it as a lone surrogate, U+DC80-U+DCFF) as the byte, ``\\xfd``,
#: and any other character the encoding lacks as ``backslashreplace`` does (``\\u65e5``): the
#: command's standard output and error use it (:func:`bafusion.cli.app.main`; a stream whose own
#: handler is ``surrogateescape`` takes :data:`NAME_BYTES_ERRORS`), so that a name reads the same
#: on both streams (stderr wrote ``\\udcfd``).
READABLE_ERRORS = "bafusion-readable"


def _readable(e: UnicodeError) -> tuple[str, int]:
    """The :data:`READABLE_ERRORS` handler: the replacement of ``e``'s unencodable characters."""
    if not isinstance(e, UnicodeEncodeError):
        raise e
    return "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF
                   else c.encode("ascii", "backslashreplace").decode("ascii")
                   for c in e.object[e.start:e.end]), e.end


codecs.register_error(READABLE_ERRORS, _readable)


#: The codec error handler of a stream whose own is ``surrogateescape`` (Python's standard output
#: in the C or POSIX locale, in UTF-8 mode, or as ``PYTHONIOENCODING`` asks): a file name's byte
#: undecodable in the locale is written as that byte, as ``surrogateescape`` writes it, so that a
#: path printed to a file or a pipe is the file's own name for a script that reads it back (the
#: text ``\\xfd`` named no file); any other character the encoding lacks is written as
#: ``backslashreplace`` does (``surrogateescape`` failed on it, an ASCII stdout on ``日本.png``).
NAME_BYTES_ERRORS = "bafusion-name-bytes"


def _name_bytes(e: UnicodeError) -> tuple[bytes, int]:
    """The :data:`NAME_BYTES_ERRORS` handler: the replacement of ``e``'s unencodable characters."""
    if not isinstance(e, UnicodeEncodeError):
        raise e
    return b"".join(bytes([ord(c) - 0xDC00]) if 0xDC80 <= ord(c) <= 0xDCFF
                    else c.encode("ascii", "backslashreplace")
                    for c in e.object[e.start:e.end]), e.end


codecs.register_error(NAME_BYTES_ERRORS, _name_bytes)


class UserError(Exception):
    """Bad input or configuration: printed without a traceback, exit status 2."""


class InputTypeError(UserError, TypeError):
    """An argument of the Python API of the wrong type (a float array given as an image, a PIL
    image as a source): a :class:`UserError` (the command line prints it as one), and a
    :class:`TypeError` for code that catches that."""


class InputFileError(UserError):
    """A named input file is missing, unreadable or inconsistent with another."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


#: A request of this many bytes or more is no image's (a 100-megapixel pair as float64 takes a
#: few GiB): it comes from a wrong shape, a bug, and is not said as "out of memory".
ABSURD_ALLOCATION = 2**40  # 1 TiB

_UNITS = {"": 1, "B": 1, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "PIB": 2**50, "EIB": 2**60,
          "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "PB": 10**15, "EB": 10**18, "BYTES": 1}
# numpy: "Unable to allocate 728. TiB for an array ..."; torch (CPU): "you tried to allocate
# 400000000000000 bytes"; torch (CUDA): "Tried to allocate 20.00 GiB"
_REQUESTED = re.compile(r"(?:unable to allocate|tried to allocate)\s+(-?[0-9.]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)",
                        re.IGNORECASE)


def requested_bytes(e: BaseException) -> float | None:
    """The size an allocation error says was asked for (bytes), or None when it names none."""
    m = _REQUESTED.search(str(e))
    if m is None:
        return None
    try:
        number = float(m.group(1))
    except ValueError:
        return None
    return number * _UNITS.get(m.group(2).upper(), 1)


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` says the machine ran out of memory: a ``MemoryError`` (numpy's), torch's
    ``OutOfMemoryError`` (a GPU's) or a ``RuntimeError`` of torch's CPU allocator ("can't
    allocate memory": a ``ulimit -v``/``prlimit --as`` or a container's limit). Not when the
    size asked for is negative or :data:`ABSURD_ALLOCATION` or more: a wrong shape, a bug,
    whose traceback is kept."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        oom = True
    else:
        oom = isinstance(e, RuntimeError) and "can't allocate memory" in str(e)
    if not oom:
        return False
    size = requested_bytes(e)
    return size is None or 0 <= size < ABSURD_ALLOCATION


#: The deepest nesting of lists and objects :func:`json_loads` returns (no document bafusion
#: reads nests more than a few levels; 500 to 980 levels parsed, then overflowed the stack in the
#: code that walks the value, e.g. ``copy.deepcopy`` of ``--params-json``).
MAX_JSON_DEPTH = 100


def json_loads(text: str | bytes) -> object:
    """``json.loads(text)``, with lists or objects nested too deeply refused as a ``ValueError``
    (as any other malformed JSON), not a ``RecursionError`` that the readers' ``except
    ValueError`` misses and the CLI reports as a bug in bafusion: deeper than Python's
    recursion limit, or than :data:`MAX_JSON_DEPTH` (what the readers' own recursive walks
    could not take).

    Raises
    ------
    ValueError
        Not valid JSON (``json.JSONDecodeError``), or nested too deeply to read.
    """
    import json

    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError("lists or objects nested too deeply to read") from None
    todo = [(value, 1)]
    while todo:
        v, depth = todo.pop()
        if isinstance(v, (list, dict)):
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"lists or objects nested too deeply to read (more than {MAX_JSON_DEPTH} levels)")
            todo += [(x, depth + 1) for x in (v.values() if isinstance(v, dict) else v)]
    return value
