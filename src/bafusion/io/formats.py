"""Which image files are read, and opening them: suffixes, formats refused, unreadable files.

:data:`IMAGE_SUFFIXES` (the photo formats ``fuse`` reads), :data:`LISTED_SUFFIXES` and
:func:`list_images` (the data stages' folders); camera RAW and HEIC/HEIF files refused by suffix
or content with the advice to convert them (:func:`unread_format`, :func:`unread_advice`);
:func:`open_image` (decoded, EXIF orientation applied, Pillow's warnings silenced) and
:func:`header_exif` (a header's EXIF without decoding the pixels); the messages for a file that
cannot be read (empty, damaged PNG, too large, TIFF problems: :data:`NO_PAGES`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bafusion.errors import InputFileError


#: The suffixes ``fuse-dir`` takes for shots (and for images in an output folder): the photo formats
#: that ``fuse`` reads, each measured by writing a file with Pillow and reading it as ``fuse`` does
#: (``tests/test_io.py``): PNG (APNG), JPEG (``.jpe``, ``.jfif``, MPO), BMP (DIB), TIFF, WebP, AVIF
#: (where Pillow has libavif, as Pillow 11.2 and later do), JPEG 2000, GIF, TGA, the netpbm formats,
#: QOI, SGI and PCX. It listed only .png .jpg .jpeg .bmp .tif .tiff .webp, so a folder of .avif
#: shots fused nothing though ``fuse`` read each. Left out, though Pillow reads them: icons
#: (``.ico``, ``.icns``, ``.cur``), textures (``.dds``, ``.blp``) and 1-bit bitmaps (``.xbm``,
#: ``.msp``).
IMAGE_SUFFIXES = (".png", ".apng", ".jpg", ".jpeg", ".jpe", ".jfif", ".mpo", ".bmp", ".dib", ".tif", ".tiff",
                  ".webp", ".avif", ".jp2", ".j2k", ".j2c", ".jpc", ".jpf", ".jpx", ".gif", ".tga", ".ppm", ".pgm",
                  ".pbm", ".pnm", ".pfm", ".qoi", ".sgi", ".rgb", ".bw", ".pcx")


#: The Pillow formats that are read, whatever a file's suffix (:func:`pillow_open`: ``Image.open(...,
#: formats=...)``): those of :data:`IMAGE_SUFFIXES` (an MPO is read by Pillow's JPEG reader, APNG by
#: its PNG reader, PFM by its PPM reader) and HEIF where a plugin (pillow-heif) registers it.
#: Pillow's other readers are never tried: an EPS file named .png went to Ghostscript, a
#: PostScript interpreter (an "unreadable image" only where Ghostscript was missing or failed),
#: and the rest (PSD, FITS, WMF, ICO, ...) are no photo formats :data:`IMAGE_SUFFIXES` names.
#: Such a file is "not an image format bafusion reads", naming the format it is
#: (:func:`_foreign_problem`).
READ_FORMATS = ("BMP", "DIB", "GIF", "JPEG", "PPM", "PNG", "AVIF", "JPEG2000", "PCX", "QOI", "SGI", "TGA", "TIFF",
                "WEBP", "HEIF")


def read_formats() -> tuple[str, ...]:
    """The formats of :data:`READ_FORMATS` that this Pillow registers, in Pillow's own order of
    trying them (``Image.ID``: as ``Image.open`` without ``formats`` tries them).

    Returns
    -------
    tuple of str
        Pillow format names (``"PNG"``, ``"JPEG"``, ...).
    """
    Image.init()
    return tuple(f for f in Image.ID if f in READ_FORMATS)


def pillow_open(fp: str | os.PathLike[str] | BinaryIO) -> Image.Image:
    """``Image.open(fp)`` trying only the formats read here (:func:`read_formats`): any other
    file, such as an EPS file (which Pillow hands to Ghostscript) under any name, raises
    Pillow's ``UnidentifiedImageError``; :func:`open_image` says which format it is.

    Parameters
    ----------
    fp : str, path-like or binary file object
        The file, as ``Image.open`` takes it.

    Returns
    -------
    PIL.Image.Image
        The image, opened lazily (its header read), as ``Image.open`` returns it.
    """
    return Image.open(fp, formats=read_formats())


def _foreign_problem(p: Path) -> str | None:
    """"not an image format bafusion reads" naming what ``p`` is, when its first bytes are those
    of a Pillow format not in :data:`READ_FORMATS` (an EPS file named .png) and of none read
    here; None otherwise (a damaged PNG: the reader's own error says why). Looks at the bytes only
    (each reader's test of the file's start), opens nothing."""
    try:
        with open(p, "rb") as fh:
            prefix = fh.read(16)
    except OSError:
        return None
    Image.init()
    ours = set(read_formats())

    def accepts(fmt: str) -> bool:
        accept = Image.OPEN[fmt][1]
        if accept is None:  # a reader that tests nothing before opening (TGA, IM, ...): tells nothing
            return False
        try:
            found = accept(prefix)
        except Exception:  # noqa: BLE001 - a reader's test of too few bytes
            return False
        return bool(found) and not isinstance(found, str)

    if any(accepts(f) for f in ours if f in Image.OPEN):
        return None
    for fmt in Image.ID:
        if fmt not in ours and fmt in Image.OPEN and accepts(fmt):
            what = getattr(Image.OPEN[fmt][0], "format_description", None)
            named = f"{fmt} ({what})" if what and what.lower() != fmt.lower() else fmt
            return (f"not an image format bafusion reads: its first bytes are those of {named}, "
                    "whatever its name says; convert it to PNG, TIFF or JPEG first")
    return None


#: Camera RAW files: read by no reader here (no demosaicing). Many are TIFF inside (NEF, ARW, DNG,
#: PEF, ...), which Pillow opened as TIFF and read their small preview page: ``fuse`` fused two
#: 160x120 thumbnails without a word. They are refused by suffix, with the advice to convert them
#: (:func:`unread_format`).
RAW_SUFFIXES = (".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".dng", ".orf", ".rw2", ".raf",
                ".pef", ".srw", ".x3f", ".3fr", ".iiq", ".erf", ".kdc", ".mrw", ".mef", ".mos", ".rwl", ".raw")

#: HEIC/HEIF files (phones, recent cameras: Canon's ``.hif``): read only where a Pillow plugin for
#: them is registered (pillow-heif's opener, which bafusion does not load itself: the ``bafusion``
#: command refuses them; a program that registers it reads them with :func:`open_image`, and
#: ``fuse-dir`` lists them as shots, :func:`read_suffixes`).
HEIF_SUFFIXES = (".heic", ".heif", ".hif")

#: The brands of an ISO media file's ``ftyp`` box that make it a HEIF image (a HEIC named .jpg).
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1")

#: The brands of an AVIF file, which also carries the generic HEIF brands (mif1, msf1) and is
#: no HEIC (Pillow reads it, where built with AVIF): :func:`_heif_problem`.
_AVIF_BRANDS = (b"avif", b"avis")

#: The converters :func:`unread_advice` names for each :func:`unread_format` kind.
_CONVERTERS = {"camera RAW": ("the camera's software", "darktable", "RawTherapee", "'dcraw -T -6'"),
               "HEIC/HEIF": ("'heif-convert'", "darktable")}


def _heif_readable() -> bool:
    """Whether a HEIF reader is registered with Pillow (pillow-heif's ``register_heif_opener``)."""
    return ".heic" in Image.registered_extensions()


def read_suffixes() -> tuple[str, ...]:
    """The suffixes of the photo files read here, as ``fuse-dir`` lists a folder's shots:
    :data:`IMAGE_SUFFIXES`, and :data:`HEIF_SUFFIXES` where a Pillow plugin for HEIF is
    registered (pillow-heif's ``register_heif_opener()``, which bafusion does not call itself:
    a program that uses bafusion as a library may). With the plugin, :func:`open_image` read a
    HEIC, while ``fuse-dir`` passed a folder of them over without a word.

    Returns
    -------
    tuple of str
        Lower-case suffixes with their dot (``".png"``, ...).

    Examples
    --------
    >>> ".png" in read_suffixes() and ".nef" not in read_suffixes()
    True
    """
    return IMAGE_SUFFIXES + HEIF_SUFFIXES if _heif_readable() else IMAGE_SUFFIXES


def unread_format(path: str | os.PathLike[str]) -> str | None:
    """What kind of photo ``path`` is that no reader here reads, by its suffix: ``"camera RAW"``,
    ``"HEIC/HEIF"`` (unless a Pillow plugin reads it), else None.

    Parameters
    ----------
    path : str or path-like
        The file (only its suffix is looked at, case-insensitively).

    Returns
    -------
    str or None
        ``"camera RAW"`` (:data:`RAW_SUFFIXES`), ``"HEIC/HEIF"`` (:data:`HEIF_SUFFIXES`,
        without a plugin) or None.
    """
    suffix = Path(path).suffix.lower()
    if suffix in RAW_SUFFIXES:
        return "camera RAW"
    if suffix in HEIF_SUFFIXES and not _heif_readable():
        return "HEIC/HEIF"
    return None


def unread_advice(kinds: Iterable[str], *, them: bool = False) -> str:
    """What to do with files of these :func:`unread_format` kinds: convert ``it`` (``them``) to
    TIFF or JPEG first, and with what.

    Parameters
    ----------
    kinds : iterable of str
        Kinds that :func:`unread_format` returned (``"camera RAW"``, ``"HEIC/HEIF"``).
    them : bool
        Say "them" (several files) instead of "it".

    Returns
    -------
    str
        ``"convert it to TIFF (16-bit keeps the most) or JPEG first"``, followed by ``", e.g.
        with ... or ..."`` when two or more converters are known for those kinds.
    """
    tools: list[str] = []
    given = set(kinds)
    for kind in (k for k in _CONVERTERS if k in given):
        tools += [t for t in _CONVERTERS[kind] if t not in tools]
    with_ = f", e.g. with {', '.join(tools[:-1])} or {tools[-1]}" if len(tools) > 1 else ""
    return f"convert {'them' if them else 'it'} to TIFF (16-bit keeps the most) or JPEG first{with_}"


def _unread_problem(kind: str) -> str:
    return f"{kind} file, which bafusion does not read: {unread_advice([kind])}"


def _check_format(p: Path) -> None:
    """Refuse a camera RAW file (and a HEIC/HEIF one Pillow cannot read) by its suffix, before
    Pillow opens it (:func:`unread_format`): the error says what to convert it to and with what."""
    kind = unread_format(p)
    if kind is not None:
        raise InputFileError(p, _unread_problem(kind))


def _heif_problem(p: Path) -> str | None:
    """Why ``p`` is not read when it starts as a HEIF image does (an ``ftyp`` box of a HEIF
    brand: a HEIC named .jpg) and Pillow could not open it; an AVIF file (:data:`_AVIF_BRANDS`
    among the ``ftyp`` box's brands: it carries mif1 too, and a damaged one was called HEIC, with
    the advice to convert it) is said unreadable as an AVIF; None otherwise. Only on the error path."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(256)
    except OSError:
        return None
    if head[4:8] != b"ftyp":
        return None
    # the box: size, 'ftyp', major brand, minor version, compatible brands to its end
    size = int.from_bytes(head[:4], "big")
    end = len(head) if size == 0 else min(size, len(head))  # 0: the box runs to the file's end
    brands = {head[8:12]} | {head[i:i + 4] for i in range(16, end - 3, 4)}
    if brands & set(_AVIF_BRANDS):
        from PIL import features

        if not features.check("avif"):
            return "unreadable image: an AVIF file, which this Pillow does not read (built without AVIF): convert it " \
                   "to PNG or TIFF first"
        return "unreadable image: an AVIF file Pillow could not decode (damaged or cut short)"
    if brands & set(_HEIF_BRANDS):
        return _unread_problem("HEIC/HEIF")
    return None


@contextlib.contextmanager
def _quiet_pillow() -> Iterator[None]:
    """Pillow's warnings silenced while a file is opened, decoded or its metadata read: the
    decompression-bomb warning of a photo between ``Image.MAX_IMAGE_PIXELS`` and twice that
    (90 to 179 megapixels by default: a 102 MP camera's shot is no attack; above, Pillow
    raises and the file is "image too large to read") and the ``UserWarning`` of damaged
    EXIF ("Truncated File Read", "Corrupt EXIF data": what Pillow reads of it is kept). Each
    was a raw Python warning with a source line on stderr."""
    from bafusion.threads import quiet_warnings  # not catch_warnings: safe beside other threads' blocks

    with quiet_warnings({"category": Image.DecompressionBombWarning}, {"category": UserWarning, "module": r"PIL\."}):
        yield


def _not_regular(p: Path) -> str | None:
    """Why ``p``, an entry named like an image to read, is no file to read: a broken link
    (naming its target) or not a regular file (a named pipe, a device, a socket: read, a pipe
    hangs); None for a file. evaluate names a pair's file (a source, a truth) and a reference
    method's result so."""
    if p.is_file():
        return None
    if p.is_symlink() and not p.exists():
        try:
            return f"broken link (to {os.readlink(p)})"
        except OSError:  # gone meanwhile
            return "broken link"
    return "not a regular file (a named pipe, a device or a socket)"


def _check_not_empty(path: str | os.PathLike[str]) -> None:
    """An empty path is named so (pathlib reads '' as '.', which was '.: not a regular file')."""
    if os.fspath(path) in ("", b""):
        raise InputFileError("''", "the path is empty: no file named")


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open and fully decode an image, applying its EXIF orientation (Pillow's warnings
    silenced: :func:`_quiet_pillow`).

    Parameters
    ----------
    path : str or path-like
        The image file.

    Returns
    -------
    PIL.Image.Image
        The first frame, loaded (the file is closed), turned by its EXIF orientation.

    Raises
    ------
    bafusion.errors.InputFileError
        Naming the file: an empty path, a missing file, not a regular file, an empty file, a
        format not read here (camera RAW, HEIC), an image too large for Pillow's limit, or a
        file Pillow cannot read (damaged, not an image).
    MemoryError
        Decoding ran out of memory and the file shows no damage that explains it.
    """
    _check_not_empty(path)
    p = Path(path)
    if not p.exists():
        raise InputFileError(p, "file not found")
    if not p.is_file():
        raise InputFileError(p, "not a regular file")
    if p.stat().st_size == 0:  # Pillow: "cannot identify image file <_io.BufferedReader name=...>"
        raise InputFileError(p, "empty file (0 bytes): not an image")
    _check_format(p)
    try:
        # through a file object, not the name: Pillow (13.0) memory-maps an uncompressed gray
        # TIFF opened by name and then turns it by its orientation tag into garbled pixels
        with _quiet_pillow(), open(p, "rb") as fh, pillow_open(fh) as im:
            im.load()
            return _exif_transposed(im)
    except Image.DecompressionBombError as e:
        raise _too_large(p, e) from e
    except MemoryError as e:
        raise _damaged_or(p, e) from e
    except Exception as e:  # noqa: BLE001 - Pillow's readers: OSError, ValueError, but also TypeError,
        # struct.error, IndexError, ... of a damaged file (a TIFF integer tag stored as text)
        raise InputFileError(p, _tiff_problem(p) or _heif_problem(p) or _foreign_problem(p) or _unreadable(e)) from e


def _damaged_or(p: Path, e: MemoryError) -> BaseException:
    """The error for a MemoryError of Pillow reading ``p``: a PNG whose chunk declares more
    bytes than the file holds (Pillow reads the declared length at once: 4 GiB for a length
    of 0xFFFFFFFF) is damaged (:func:`_png_damage`); else ``e`` itself, out of memory."""
    damage = _png_damage(p)
    return InputFileError(p, damage) if damage else e


def _png_damage(path: Path) -> str | None:
    """Why a PNG's chunks cannot be walked (a chunk declaring more bytes than follow it in
    the file), None when they can or it is no PNG. Chunk headers only."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            if fh.read(8) != b"\x89PNG\r\n\x1a\n":
                return None
            while True:
                at = fh.tell()
                head = fh.read(8)
                if len(head) < 8:
                    return None
                length, kind = struct.unpack(">I4s", head)
                left = size - at - 12  # after the length, type and CRC
                if length > left:
                    name = kind.decode("latin-1") if kind.isalpha() else repr(kind)
                    return (f"damaged PNG: its {name} chunk at byte {at} declares {length} bytes, but only "
                            f"{max(left, 0)} follow in the file of {size} bytes")
                if kind == b"IEND":
                    return None
                fh.seek(length + 4, os.SEEK_CUR)
    except OSError:
        return None


_ORIENTATION = 0x0112  # EXIF/TIFF Orientation tag

#: Image.transpose methods turning a stored image by its EXIF orientation (as ImageOps.exif_transpose).
_TRANSPOSE = {2: (Image.Transpose.FLIP_LEFT_RIGHT,), 3: (Image.Transpose.ROTATE_180,),
              4: (Image.Transpose.FLIP_TOP_BOTTOM,), 5: (Image.Transpose.TRANSPOSE,),
              6: (Image.Transpose.ROTATE_270,), 7: (Image.Transpose.TRANSVERSE,), 8: (Image.Transpose.ROTATE_90,)}


def _exif_transposed(im: Image.Image) -> Image.Image:
    """``im`` turned by its EXIF orientation. Pillow's ``exif_transpose`` also rewrites the
    EXIF block, which raises (TypeError, struct.error, ...) when another tag has a type Pillow
    cannot write back (XResolution or ImageWidth as text): then the orientation is read from
    ``getexif()`` and applied here, the pixels alone (the EXIF of the output is
    :func:`source_metadata`'s, which drops such tags with a note)."""
    try:
        return ImageOps.exif_transpose(im) or im
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - Pillow's EXIF writer: any error of a malformed tag
        pass
    try:
        orientation = im.getexif().get(_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - an EXIF Pillow cannot read: no orientation
        return im
    out = im
    for method in _TRANSPOSE.get(orientation, ()) if isinstance(orientation, int) else ():
        out = out.transpose(method)
    return out


def _too_large(p: Path, e: Exception) -> InputFileError:
    """The error for a file over Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``
    times two: about 179 megapixels by default; a program may raise it before reading)."""
    return InputFileError(p, f"image too large to read: {e}".rstrip(". ") + " (Pillow's Image.MAX_IMAGE_PIXELS)")


def _unreadable(e: BaseException) -> str:
    """Why Pillow read no image, in words: its UnidentifiedImageError says "cannot identify
    image file <_io.BufferedReader name=...>", Python's internals rather than the problem."""
    if isinstance(e, UnidentifiedImageError):
        return "unreadable image: not an image file Pillow can read (an unknown format, or not an image)"
    return f"unreadable image ({e.__class__.__name__}: {e})"


_tifffile_quiet = threading.local()


class _QuietTifffile(logging.Filter):
    """Drops tifffile's log records in a thread inside :func:`_tiff_file`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_tifffile_quiet, "depth", 0)


@contextlib.contextmanager
def _tiff_file(path: Path) -> Iterator:
    """``tifffile.TiffFile(path)``, opened and used with tifffile's log records of a damaged
    file dropped: a TIFF with no pages printed "<tifffile.TiffFile 'z.tif'> contains no pages"
    once per look at it, without the command's prefix, beside bafusion's own error for it."""
    import tifffile

    # A logger's filters see only the records logged on it, not those its children propagate:
    # tifffile logs on "tifffile" (2024 on) or "tifffile.tifffile" (2023), so each is filtered.
    names = {"tifffile", "tifffile.tifffile", *(n for n in logging.Logger.manager.loggerDict
                                                if n.startswith("tifffile."))}
    for name in sorted(names):
        log = logging.getLogger(name)
        if not any(isinstance(f, _QuietTifffile) for f in log.filters):
            log.addFilter(_QuietTifffile())
    _tifffile_quiet.depth = getattr(_tifffile_quiet, "depth", 0) + 1
    try:
        with tifffile.TiffFile(path) as tf:
            yield tf
    finally:
        _tifffile_quiet.depth -= 1


#: Why a TIFF of no pages (a header only: a write that never came) is not read.
NO_PAGES = "TIFF file with no image in it (no pages: an empty or unfinished file)"


def _tiff_problem(p: Path) -> str | None:
    """Why a TIFF Pillow cannot open is not read, when tifffile can say (floating-point or
    other sample formats); None otherwise, also for 1-, 8- and 16-bit samples, which Pillow
    reads (16-bit ones it cannot identify, such as gray + alpha, are read with tifffile:
    :func:`_tiff16_without_pillow`), so such a file is damaged, and the caller's generic
    message says so; a TIFF of no pages is said so (:data:`NO_PAGES`). Only on the error path."""
    if p.suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        with _tiff_file(p) as tf:
            if len(tf.pages) == 0:
                return NO_PAGES
            page = tf.pages[0]
            dtype, shape = np.dtype(page.dtype), page.shape
    except Exception:  # noqa: BLE001 - not a TIFF tifffile reads either: the generic message
        return None
    if dtype in (np.dtype(bool), np.dtype(np.uint8), np.dtype(np.uint16)):
        return None
    if dtype.kind == "f":
        return (f"floating-point TIFF ({dtype.name}, shape {tuple(shape)}) is not supported: save the shots as 8- or "
                "16-bit integer TIFF or PNG")
    return f"unsupported TIFF sample format ({dtype.name}, shape {tuple(shape)}): use 8- or 16-bit integer samples"


#: PNG chunks after the pixel data that Pillow's load() adds to ``info``, where its getexif()
#: looks: the EXIF block (eXIf) and text (an XMP packet or "Raw profile type exif": tEXt, zTXt, iTXt).
_PNG_EXIF_CHUNKS = (b"eXIf", b"tEXt", b"zTXt", b"iTXt")


def header_exif(im: Image.Image, path: str | os.PathLike[str]) -> Image.Exif:
    """``im.getexif()`` (``im`` just opened from ``path``) without decoding the pixels where it
    can be helped: Pillow's PNG reader decodes the whole image when no eXIf chunk precedes the
    pixel data (an eXIf or text chunk may follow it), as long as a full read. The PNG's chunks are
    walked instead (their headers only): with no such chunk after the pixel data, the EXIF is
    what the header gave, taken without decoding; with one (rare), Pillow's getexif() as before,
    so the orientation is the one the read applies.

    Parameters
    ----------
    im : PIL.Image.Image
        The image, opened (not loaded) from ``path``.
    path : str or path-like
        Its file, whose PNG chunks are walked.

    Returns
    -------
    PIL.Image.Exif
        The EXIF tags (empty when the file has none).
    """
    if im.format == "PNG" and "exif" not in im.info and not _png_exif_after_pixels(Path(path)):
        return Image.Image.getexif(im)  # the generic one: from ``info``, without PngImageFile's load()
    return im.getexif()


def header_orientation(im: Image.Image, path: str | os.PathLike[str]) -> int:
    """The EXIF orientation (1 to 8; 1 when none) of ``im`` just opened from ``path``, from
    :func:`header_exif`; 1 also where the EXIF block cannot be read (damaged), as the pixel
    reader (:func:`open_image`) then reads the pixels unturned.

    Parameters
    ----------
    im : PIL.Image.Image
        The image, opened (not loaded) from ``path``.
    path : str or path-like
        Its file.

    Returns
    -------
    int
        The orientation tag's value (1: as stored).
    """
    try:
        return int(header_exif(im, path).get(_ORIENTATION, 1) or 1)
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - an EXIF Pillow cannot read (SyntaxError "not a TIFF file", ...)
        return 1


def _png_exif_after_pixels(path: Path) -> bool:
    """Whether a PNG has an eXIf or text chunk after its first IDAT (True also when its chunks
    cannot be walked to IEND: then Pillow's reader decides)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(8)  # the signature
            seen_idat = False
            while True:
                head = fh.read(8)
                if len(head) < 8:
                    return True
                length, kind = struct.unpack(">I4s", head)
                if kind == b"IEND":
                    return False
                seen_idat = seen_idat or kind == b"IDAT"
                if seen_idat and kind in _PNG_EXIF_CHUNKS:
                    return True
                fh.seek(length + 4, os.SEEK_CUR)  # the data and the CRC
    except OSError:
        return True


#: The suffixes :func:`list_images` lists (the data stages' foreground, matte and background
#: folders): those :data:`IMAGE_SUFFIXES` held before it took every photo format ``fuse`` reads,
#: so that a folder prepared before (a .gif or .avif beside its images) gives the same data set.
LISTED_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """The image files in ``folder`` (by extension: :data:`LISTED_SUFFIXES`), sorted; hidden
    files (``.name``, such as macOS's ``._GT01.png`` metadata) are left out, as the download
    record leaves them out.

    Parameters
    ----------
    folder : str or path-like
        The folder (not searched recursively).

    Returns
    -------
    list of pathlib.Path
        The files, sorted by path; the suffix is compared case-insensitively.
    """
    d = Path(folder)
    return sorted(
        p for p in d.iterdir() if not p.name.startswith(".") and p.is_file() and p.suffix.lower() in LISTED_SUFFIXES
    )


#: Pillow modes with an alpha channel (the reader drops it: :mod:`bafusion.io`'s docstring).
_ALPHA_MODES = ("LA", "La", "RGBA", "RGBa", "PA")


def _png_low_gray_scale(path: str | os.PathLike[str] | None) -> int:
    """The factor by which Pillow scales the samples of a 1, 2 or 4-bit gray PNG to 8 bits
    (2 bits: 0, 85, 170, 255), which it does not apply to the file's transparent gray value
    (``tRNS``, raw: 3 for white at 2 bits); 1 for any other file, or one whose header cannot be
    read (the reader names it)."""
    if path is None:
        return 1
    try:
        with open(path, "rb") as fh:
            head = fh.read(26)  # signature, IHDR length and type, width, height, depth, colour type
    except OSError:
        return 1
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return 1
    depth, colour_type = head[24], head[25]
    return 255 // ((1 << depth) - 1) if colour_type == 0 and depth in (1, 2, 4) else 1


def _alpha_opaque(im: Image.Image, path: str | os.PathLike[str] | None = None) -> bool | None:
    """Whether ``im`` is opaque everywhere: its alpha channel (a Pillow mode of
    :data:`_ALPHA_MODES`; 16-bit PNGs too: Pillow's high byte) is, or no pixel has its
    transparent colour (``tRNS``, GIF: a palette index of alpha under 255 that some pixel uses, a
    gray or RGB colour that some pixel has; ``path``, the file ``im`` was read from, tells the
    transparent gray of a 1, 2 or 4-bit gray PNG on the scale Pillow decodes it to:
    :func:`_png_low_gray_scale`). None for an image without either, or a transparent colour of
    a mode not told here. Decodes ``im`` if it is not yet loaded."""
    if im.mode in _ALPHA_MODES:
        band = "A" if "A" in im.getbands() else im.getbands()[-1]
        low, high = im.getchannel(band).getextrema()
        return bool(low == high == 255)
    key = im.info.get("transparency")
    if key is None:
        return None
    if im.mode == "P":
        alphas = list(key) if isinstance(key, (bytes, bytearray)) else [255] * int(key) + [0]
        used = [i for i, n in enumerate(im.histogram()[:256]) if n]
        return all(alphas[i] >= 255 for i in used if i < len(alphas))
    if im.mode in ("L", "I", "I;16", "I;16B", "I;16L") and isinstance(key, int):
        scale = _png_low_gray_scale(path) if im.mode == "L" else 1
        return not bool((np.asarray(im) == key * scale).any())
    if im.mode == "RGB" and isinstance(key, tuple) and len(key) == 3:
        # int64: a (malformed) 16-bit value in an 8-bit file's tRNS, which no pixel has
        return not bool((np.asarray(im) == np.asarray(key, np.int64)).all(axis=-1).any())
    return None
