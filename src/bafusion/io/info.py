"""What a file's header says, and the checks and notes made from it before reading.

:class:`ImageInfo` and :func:`image_info` (size as read and as stored, EXIF orientation,
frames, gray or colour); the notes for the user (:func:`frame_note`, :func:`frame_notes`,
:func:`mix_note`) and the size check of one fusion's sources (:func:`check_same_sizes`,
:func:`orientation_clause`, :func:`size_remedy`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from bafusion.errors import InputFileError
from bafusion.io.depth import _TIFF_MAGIC, png_depth
from bafusion.io.formats import (
    _ALPHA_MODES,
    _ORIENTATION,
    _alpha_opaque,
    _check_format,
    _check_not_empty,
    _damaged_or,
    _foreign_problem,
    _heif_problem,
    _quiet_pillow,
    _tiff_file,
    _tiff_problem,
    _too_large,
    _unreadable,
    header_orientation,
    pillow_open,
)


@dataclass(frozen=True)
class ImageInfo:
    """What a file's header says, as :func:`read_image` would read it (:func:`image_info`).

    Attributes
    ----------
    path : str
        The file.
    width, height : int
        The size as read: EXIF orientation applied (5-8 swap the stored width and height).
    stored : tuple of int
        (width, height) as stored in the file.
    orientation : int
        The EXIF/TIFF orientation (1 when none).
    frames : int
        Frames (GIF, WebP, APNG) or pages (TIFF) the file holds; only the first is read.
    format : str
        Pillow's format name ("TIFF" for a TIFF only tifffile reads).
    gray : bool
        Read as a gray (H, W) array (gray, gray + alpha of 8 or 16 bits, 1-bit, 16-bit or
        float gray).
    """

    path: str
    width: int
    height: int
    stored: tuple[int, int]
    orientation: int
    frames: int
    format: str
    gray: bool


#: Pillow modes read as gray (H, W): see :mod:`bafusion.io`'s docstring.
_GRAY_MODES = ("L", "LA", "La", "1", "F", "I", "I;16", "I;16B", "I;16L", "I;16N")


def image_info(path: str | os.PathLike[str], *, decode: bool = False) -> ImageInfo:
    """A file's size (as read and as stored), orientation, frame count and whether it is
    gray, from its header; with ``decode`` its first frame is also fully decoded, so a
    truncated or damaged file is refused here, not on reading.

    Parameters
    ----------
    path : str or path-like
        The image file.
    decode : bool
        Also decode the first frame (slow: the whole image).

    Returns
    -------
    ImageInfo

    Raises
    ------
    InputFileError
        Naming the file when it is missing, not a file, or not a readable image (as
        :func:`open_image` says it).
    """
    _check_not_empty(path)
    p = Path(path)
    if not p.exists():
        raise InputFileError(p, "file not found")
    if not p.is_file():
        raise InputFileError(p, "not a regular file")
    if p.stat().st_size == 0:
        raise InputFileError(p, "empty file (0 bytes): not an image")
    _check_format(p)
    try:
        with _quiet_pillow(), open(p, "rb") as fh, pillow_open(fh) as im:
            orientation = header_orientation(im, p)
            fmt, mode, (w, h) = str(im.format), im.mode, _stored_size(im)
            try:
                frames = int(getattr(im, "n_frames", 1) or 1)
            except Exception:  # noqa: BLE001 - a damaged later frame: the first is what is read
                frames = 1
            if decode:
                im.seek(0)
                im.load()
    except Image.DecompressionBombError as e:
        raise _too_large(p, e) from e
    except UnidentifiedImageError as e:
        info = _tiff_info(p, decode)
        if info is None:
            raise InputFileError(p, _tiff_problem(p) or _heif_problem(p) or _foreign_problem(p) or _unreadable(e)) from e
        return info
    except MemoryError as e:
        raise _damaged_or(p, e) from e
    except Exception as e:  # noqa: BLE001 - any error of Pillow's readers (as open_image)
        raise InputFileError(p, _tiff_problem(p) or _heif_problem(p) or _foreign_problem(p) or _unreadable(e)) from e
    gray = mode in _GRAY_MODES
    if fmt == "PNG" and mode == "RGBA":
        # Pillow opens a 16-bit gray + alpha PNG (colour type 4) as RGBA; the reader reads it
        # as gray (:func:`_read_png16`), like an 8-bit one (mode LA): its header says which
        with contextlib.suppress(OSError):
            ihdr = png_depth(p)
            gray = ihdr is not None and ihdr[1] == 4
    ow, oh = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    return ImageInfo(str(path), ow, oh, (w, h), orientation, frames, fmt, gray)


def _stored_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) as a just-opened image's file stores it: a TIFF's ImageWidth and
    ImageLength tags (Pillow 13 gives a TIFF of orientation 5-8 its size as read, already
    swapped: taken for the stored one, it was swapped twice), else ``im.size``."""
    tags = getattr(im, "tag_v2", None) if im.format == "TIFF" else None
    with contextlib.suppress(Exception):  # tags Pillow cannot give: its size
        if tags is not None and 256 in tags and 257 in tags:
            return int(tags[256]), int(tags[257])
    return im.size


def _tiff_info(p: Path, decode: bool) -> ImageInfo | None:
    """:func:`image_info` of a TIFF Pillow cannot identify, read with tifffile as
    :func:`_tiff16_without_pillow` reads it (16-bit gray + alpha); None for anything else."""
    import tifffile

    with contextlib.ExitStack() as stack:
        try:
            with open(p, "rb") as fh:
                if fh.read(4) not in _TIFF_MAGIC:
                    return None
            tf = stack.enter_context(_tiff_file(p))
        except Exception:  # noqa: BLE001 - not a TIFF tifffile reads either
            return None
        try:
            page = tf.pages.first
            if np.dtype(page.dtype) != np.uint16:
                return None
            w, h = int(page.imagewidth), int(page.imagelength)
            tag = page.tags.get(_ORIENTATION)
            orientation = int(tag.value) if tag is not None and isinstance(tag.value, int) else 1
            gray = tifffile.PHOTOMETRIC(page.photometric) != tifffile.PHOTOMETRIC.RGB
            frames = len(tf.pages)
        except Exception:  # noqa: BLE001 - tifffile raises many types for bad files
            return None
        if decode:
            try:
                page.asarray()
            except Exception as e:  # noqa: BLE001 - as the reader says it
                raise InputFileError(p, f"unreadable 16-bit TIFF ({e.__class__.__name__}: {e})") from e
    ow, oh = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    return ImageInfo(str(p), ow, oh, (w, h), orientation, frames, "TIFF", gray)


def frame_note(info: ImageInfo) -> str | None:
    """The line for the user when a file holds several frames or pages (a focus stack saved
    as one multi-page TIFF, an animated GIF, WebP or PNG): only the first is read. None for a
    single image, and for an MPO JPEG (its further images are the camera's previews or a
    stereo view). A camera TIFF with a thumbnail page gets the line too: it is only a note.

    Parameters
    ----------
    info : ImageInfo
        The file's header (:func:`image_info`).

    Returns
    -------
    str or None
        ``"<path> holds N pages; only the first is used (a focus stack: give its shots as
        separate files)"`` ("frames" for other formats than TIFF), or None.
    """
    if info.frames <= 1 or info.format == "MPO":
        return None
    unit = "pages" if info.format == "TIFF" else "frames"
    return (f"{info.path} holds {info.frames} {unit}; only the first is used (a focus stack: give its shots as "
            "separate files)")


def frame_notes(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """:func:`frame_note` of each file that has one (from its header; a file that cannot be
    read is left to the reader, which names it).

    Parameters
    ----------
    paths : sequence of str or path-like
        The files.

    Returns
    -------
    list of str
        The notes, in the order of ``paths``.
    """
    notes = []
    for p in paths:
        try:
            note = frame_note(image_info(p))
        except InputFileError:
            continue
        if note:
            notes.append(note)
    return notes


def _alpha_note(path: str | os.PathLike[str], opaque: bool | None = None) -> str | None:
    """The line for the user when ``path`` holds transparency the reader drops: an alpha channel
    (8 or 16 bits; one whose every pixel is opaque is no loss and gets no line) or a palette's or
    PNG's transparent colour (``tRNS``, GIF). None otherwise, or when the header cannot be read
    (the reader names the file). ``opaque``: :func:`_alpha_opaque` of the image as the reader
    decoded it, so that a large RGBA source is not decoded a second time to tell."""
    if opaque:  # the reader decoded it: nothing under full opacity, nothing lost
        return None
    p = Path(path)
    try:
        with _quiet_pillow(), open(p, "rb") as fh, pillow_open(fh) as im:
            mode, keyed = im.mode, "transparency" in im.info
            if mode in _ALPHA_MODES:
                if opaque is not None:  # the reader decoded it already
                    if opaque:
                        return None
                elif _alpha_opaque(im):
                    return None
    except UnidentifiedImageError:
        # a 16-bit gray + alpha TIFF, which Pillow cannot identify (read with tifffile, alpha dropped)
        try:
            with _tiff_file(p) as tf:
                mode, keyed = ("LA" if tf.pages.first.extrasamples else ""), False
        except Exception:  # noqa: BLE001 - the reader says why it cannot read it
            return None
    except Exception:  # noqa: BLE001 - the reader says why it cannot read it
        return None
    if mode in _ALPHA_MODES:
        what = "its alpha channel (transparency) is dropped"
    elif keyed:
        what = "its transparent colour is dropped"
    else:
        return None
    return f"{os.fspath(path)}: {what}: its colours are used as on full opacity"


def mix_note(names: Sequence[str], gray: Sequence[bool]) -> str | None:
    """The line for the user when the sources of one fusion mix gray and colour files: the
    gray ones are used as colour (R = G = B), so the result is gray where it is taken from
    them. None when all are gray or all colour.

    Parameters
    ----------
    names : sequence of str
        The sources' names, as the note names them.
    gray : sequence of bool
        For each source, whether it is gray (:attr:`ImageInfo.gray`).

    Returns
    -------
    str or None
    """
    if all(gray) or not any(gray):
        return None
    g = [n for n, k in zip(names, gray) if k]
    c = [n for n, k in zip(names, gray) if not k]
    one = len(g) == 1
    return (f"{', '.join(g)} {'is' if one else 'are'} gray and {', '.join(c)} colour: the result is gray where "
            f"it is taken from {'it' if one else 'them'} (give the shots all in colour or all gray for a uniform "
            "result)")


def orientation_clause(info: ImageInfo) -> str:
    """``'' `` or, for a file whose EXIF orientation swaps width and height, ``"; <file>'s
    EXIF orientation 6 was applied (the file stores 192x160)"``: what a size error adds, so
    that a user checking the stored sizes understands it.

    Parameters
    ----------
    info : ImageInfo
        The file's header.

    Returns
    -------
    str
        The clause, or ``""`` when the size as read is the size stored.
    """
    if (info.width, info.height) == info.stored:
        return ""
    w, h = info.stored
    return f"; {info.path}'s EXIF orientation {info.orientation} was applied (the file stores {w}x{h})"


def check_same_sizes(infos: Sequence[ImageInfo], remedy: str | None = None) -> None:
    """Sources of another size than the first are an error naming both files and both sizes
    as read, and the EXIF orientation where it swapped a file's width and height
    (:func:`orientation_clause`); where the sizes are swapped (WxH against HxW), that the shot
    looks turned by 90 degrees, else ``remedy`` when given (``fuse``: register them with
    ``--align``).

    Parameters
    ----------
    infos : sequence of ImageInfo
        The sources' headers (:func:`image_info`), the first the reference; at least one.
    remedy : str, optional
        What to do about different sizes, added to the message (not for swapped sizes).

    Raises
    ------
    bafusion.errors.InputFileError
        Naming the first file whose size (as read, orientation applied) differs from the
        first's.
    """
    a = infos[0]
    for b in infos[1:]:
        if (b.width, b.height) != (a.width, a.height):
            clauses = _orientation_clauses(b, a)
            raise InputFileError(
                b.path, f"size {b.width}x{b.height} (WxH) differs from {a.width}x{a.height} of {a.path}: the "
                "sources must have the same size" + clauses
                + size_remedy((a.width, a.height), (b.width, b.height), remedy, tagged=bool(clauses)))


def _orientation_clauses(b: ImageInfo, a: ImageInfo) -> str:
    """What an error of ``b``'s size against ``a``'s adds about their EXIF orientations:
    :func:`orientation_clause` of ``b`` and of ``a``, then, where the sizes are swapped (WxH
    against HxW), for each of them whose orientation was applied without swapping its width and
    height (2, 3 = turned 180 degrees, 4), ``"; <file>'s EXIF orientation 3 was applied (it
    keeps the stored 160x120)"``: the tag present may be the wrong one ("its orientation tag may
    be missing" said of a file that has one, applied, was not true). ``""`` when none applies."""
    clauses = orientation_clause(b) + orientation_clause(a)
    if (b.width, b.height) == (a.height, a.width):
        for info in (b, a):
            if info.orientation not in (None, 1) and (info.width, info.height) == info.stored:
                w, h = info.stored
                clauses += (f"; {info.path}'s EXIF orientation {info.orientation} was applied (it keeps the "
                            f"stored {w}x{h})")
    return clauses


def size_remedy(first: tuple[int, int], other: tuple[int, int], remedy: str | None = None, *,
                tagged: bool = False) -> str:
    """What a size error adds: ``"; the shot looks turned by 90 degrees: its orientation tag
    may be missing"`` when the sizes ``(width, height)`` are swapped (with ``tagged``, where an
    orientation tag of one of the files swapped them: that a tag may be wrong, as software that
    turns the pixels upright and keeps the tag leaves it, or one missing), else ``"; " + remedy``
    (or nothing).

    Parameters
    ----------
    first, other : tuple of (int, int)
        The two sizes, ``(width, height)``.
    remedy : str, optional
        What to add when the sizes are not swapped.
    tagged : bool
        An EXIF orientation was applied to one of the files: one that swapped its width and
        height (:func:`orientation_clause` says so beside the clause) or another
        (:func:`_orientation_clauses`).

    Returns
    -------
    str
        The clause, starting with ``"; "``, or ``""``.
    """
    if other == first[::-1]:
        if tagged:  # "its tag may be missing" beside "its EXIF orientation 6 was applied" said nothing true
            return ("; the shot looks turned by 90 degrees: an orientation tag applied may be wrong (software that "
                    "turned the pixels upright and kept the tag), or one missing")
        return "; the shot looks turned by 90 degrees: its orientation tag may be missing"
    return f"; {remedy}" if remedy else ""
