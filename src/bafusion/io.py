"""The one place where images are read, converted to gray and written; errors name the file.

Reading (:func:`read_image`, :func:`read_images`; :func:`read_source_set` adds full depth
and metadata) -- the same rules for fusion, metrics, baselines, figures and the data stages:

* **Orientation.** A file's EXIF orientation is applied (the pixels are turned); a size error
  says when it swapped a file's width and height (:func:`check_same_sizes`).
* **Frames.** Of a file of several frames or pages (multi-page TIFF, animated GIF, WebP or
  PNG) only the first is read; :func:`read_source_set` notes it (:func:`frame_note`; also for
  a camera TIFF's thumbnail page, not for an MPO JPEG's previews), ``bafusion metrics`` and
  ``evaluate`` say it too: a focus stack is given as one file per shot.
* **Not read.** Camera RAW files and HEIC/HEIF ones (without a Pillow plugin for them) are
  refused by suffix, before Pillow opens them (it read a NEF's or DNG's preview page as the
  shot), and a HEIC by its content, saying what to convert them to (:func:`unread_format`).
* **Modes.** 8-bit gray (``L``), gray + alpha (``LA``; also at 16 bits, which Pillow opens as
  RGBA) and 1-bit (``1``, read as 0/255) give a gray (H, W) array; everything else (RGB, RGBA, palette with or without transparency,
  CMYK, YCbCr, ...) gives RGB (H, W, 3). Alpha is dropped (never composited); associated
  (premultiplied) alpha of a TIFF (8-bit: Pillow's modes ``La``, gray, and ``RGBa``; 16-bit,
  read with tifffile: :func:`_unpremultiplied`, rounded) is first divided out, as Pillow
  converts ``RGBa`` (samples of alpha 0 keep theirs), so that the gray or
  colour read is the one a viewer shows on full opacity, as for unassociated alpha. ``rgb=True``
  replicates gray to three channels (the data stages' foregrounds and backgrounds).
* **Bit depth.** Files of at most 8 bits per sample are used as they are. Files of more (16-bit
  PNG or TIFF, gray or colour; 32-bit integer) are scaled to uint8 from the bit depth of their
  data (see "Sources of more than 8 bits per sample" below): the significant bits a file
  marks (PNG ``sBIT``, whose samples the PNG specification stores scaled up to 16 bits, so
  that they are read from 16 unless they cannot be so scaled; OME-TIFF ``SignificantBits``,
  unscaled), else one depth common to the unmarked
  files read together -- so the sources of one fusion, or the A, B, F of ``bafusion metrics``,
  are scaled alike (a 12-bit pair and its sBIT-12 fusion compare as the 8-bit triple). A file
  read on its own is a set of one. 32-bit float gray files (TIFF) of a set share one scale too,
  [0, 1], [0, 255] or [0, 65535] from their largest value (:func:`float_scale`); samples outside
  it are clipped, with a note naming the file (:func:`float_to_u8`).

Gray (:func:`gray_float`, :func:`to_gray_u8`): MATLAB ``rgb2gray``, coefficients
:data:`RGB2GRAY`. The uint8 variant (:func:`to_gray_u8`; as float64: ``gray_float(img,
rounded=True)``) is MATLAB's ``rgb2gray`` on uint8 data, the weighted sum rounded half away
from zero and clipped: how the reference metric code sees colour images, and what fusion
decides on. The float variant is the sum unrounded, in one of two summation orders that are a
documented fact, not a duplicate:

* the default, a matrix product ``img @ RGB2GRAY`` -- what the data stages (composite, COCO
  sharpness, stacks) always computed, kept so that their outputs stay bit for bit;
* ``matlab_order=True``: ``r*c0 + g*c1 + b*c2`` in that order, as MATLAB (and the ported GFF
  and Laplacian baselines) compute it; the rounded variant always uses it.

The two orders differ by up to one ulp (5.7e-14) on 18% of the 2**24 uint8 colours, which is
enough to flip a rounding or a ``>=`` deep inside the baselines (measured: 12 of the 146
baseline fusions of the evaluation pairs change in some pixels), so each side keeps its
order. After rounding they never differ on uint8 data: no uint8 colour's gray lies within
4.5e-6 of a rounding tie (``tests/test_io.py`` checks all 2**24), so the uint8 gray is one.

Writing: :func:`write_image` (uint8 or uint16, format from the suffix, atomic,
deterministic); :func:`to_uint8` rounds a [0, 255] float image to uint8.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import re
import struct
import threading
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bafusion.atomic import atomic_file
from bafusion.errors import InputFileError

#: MATLAB ``rgb2gray`` coefficients for R, G, B (the reference metric code and our patches use these).
RGB2GRAY = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])

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


#: Camera RAW files: read by no reader here (no demosaicing). Many are TIFF inside (NEF, ARW, DNG,
#: PEF, ...), which Pillow opened as TIFF and read their small preview page: ``fuse`` fused two
#: 160x120 thumbnails without a word. They are refused by suffix, with the advice to convert them
#: (:func:`unread_format`).
RAW_SUFFIXES = (".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".dng", ".orf", ".rw2", ".raf",
                ".pef", ".srw", ".x3f", ".3fr", ".iiq", ".erf", ".kdc", ".mrw", ".mef", ".mos", ".rwl", ".raw")

#: HEIC/HEIF files (phones, recent cameras: Canon's ``.hif``): read only where a Pillow plugin for
#: them is registered (pillow-heif's opener, which bafusion does not load itself).
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


def unread_format(path: str | os.PathLike[str]) -> str | None:
    """What kind of photo ``path`` is that no reader here reads, by its suffix: ``"camera RAW"``,
    ``"HEIC/HEIF"`` (unless a Pillow plugin reads it), else None."""
    suffix = Path(path).suffix.lower()
    if suffix in RAW_SUFFIXES:
        return "camera RAW"
    if suffix in HEIF_SUFFIXES and not _heif_readable():
        return "HEIC/HEIF"
    return None


def unread_advice(kinds: Iterable[str], *, them: bool = False) -> str:
    """What to do with files of these :func:`unread_format` kinds: convert ``it`` (``them``) to
    TIFF or JPEG first, and with what."""
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        yield


def _check_not_empty(path: str | os.PathLike[str]) -> None:
    """An empty path is named so (pathlib reads '' as '.', which was '.: not a regular file')."""
    if os.fspath(path) in ("", b""):
        raise InputFileError("''", "the path is empty: no file named")


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open and fully decode an image, applying its EXIF orientation (Pillow's warnings
    silenced: :func:`_quiet_pillow`)."""
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
        with _quiet_pillow(), open(p, "rb") as fh, Image.open(fh) as im:
            im.load()
            return _exif_transposed(im)
    except Image.DecompressionBombError as e:
        raise _too_large(p, e) from e
    except MemoryError as e:
        raise _damaged_or(p, e) from e
    except Exception as e:  # noqa: BLE001 - Pillow's readers: OSError, ValueError, but also TypeError,
        # struct.error, IndexError, ... of a damaged file (a TIFF integer tag stored as text)
        raise InputFileError(p, _tiff_problem(p) or _heif_problem(p) or _unreadable(e)) from e


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

    log = logging.getLogger("tifffile")
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


#: Pillow modes read as gray (H, W): see the module docstring.
_GRAY_MODES = ("L", "LA", "La", "1", "F", "I", "I;16", "I;16B", "I;16L", "I;16N")


def image_info(path: str | os.PathLike[str], *, decode: bool = False) -> ImageInfo:
    """A file's size (as read and as stored), orientation, frame count and whether it is
    gray, from its header; with ``decode`` its first frame is also fully decoded, so a
    truncated or damaged file is refused here, not on reading.

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
        with _quiet_pillow(), open(p, "rb") as fh, Image.open(fh) as im:
            orientation = int(header_exif(im, p).get(_ORIENTATION, 1) or 1)
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
            raise InputFileError(p, _tiff_problem(p) or _heif_problem(p) or _unreadable(e)) from e
        return info
    except MemoryError as e:
        raise _damaged_or(p, e) from e
    except Exception as e:  # noqa: BLE001 - any error of Pillow's readers (as open_image)
        raise InputFileError(p, _tiff_problem(p) or _heif_problem(p) or _unreadable(e)) from e
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


#: PNG chunks after the pixel data that Pillow's load() adds to ``info``, where its getexif()
#: looks: the EXIF block (eXIf) and text (an XMP packet or "Raw profile type exif": tEXt, zTXt, iTXt).
_PNG_EXIF_CHUNKS = (b"eXIf", b"tEXt", b"zTXt", b"iTXt")


def header_exif(im: Image.Image, path: str | os.PathLike[str]) -> Image.Exif:
    """``im.getexif()`` (``im`` just opened from ``path``) without decoding the pixels where it
    can be helped: Pillow's PNG reader decodes the whole image when no eXIf chunk precedes the
    pixel data (an eXIf or text chunk may follow it), as long as a full read. The PNG's chunks are
    walked instead (their headers only): with no such chunk after the pixel data, the EXIF is
    what the header gave, taken without decoding; with one (rare), Pillow's getexif() as before,
    so the orientation is the one the read applies."""
    if im.format == "PNG" and "exif" not in im.info and not _png_exif_after_pixels(Path(path)):
        return Image.Image.getexif(im)  # the generic one: from ``info``, without PngImageFile's load()
    return im.getexif()


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
    stereo view). A camera TIFF with a thumbnail page gets the line too: it is only a note."""
    if info.frames <= 1 or info.format == "MPO":
        return None
    unit = "pages" if info.format == "TIFF" else "frames"
    return (f"{info.path} holds {info.frames} {unit}; only the first is used (a focus stack: give its shots as "
            "separate files)")


def frame_notes(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """:func:`frame_note` of each file that has one (from its header; a file that cannot be
    read is left to the reader, which names it)."""
    notes = []
    for p in paths:
        try:
            note = frame_note(image_info(p))
        except InputFileError:
            continue
        if note:
            notes.append(note)
    return notes


def mix_note(names: Sequence[str], gray: Sequence[bool]) -> str | None:
    """The line for the user when the sources of one fusion mix gray and colour files: the
    gray ones are used as colour (R = G = B), so the result is gray where it is taken from
    them. None when all are gray or all colour."""
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
    that a user checking the stored sizes understands it."""
    if (info.width, info.height) == info.stored:
        return ""
    w, h = info.stored
    return f"; {info.path}'s EXIF orientation {info.orientation} was applied (the file stores {w}x{h})"


def check_same_sizes(infos: Sequence[ImageInfo], remedy: str | None = None) -> None:
    """Sources of another size than the first are an error naming both files and both sizes
    as read, and the EXIF orientation where it swapped a file's width and height
    (:func:`orientation_clause`); where the sizes are swapped (WxH against HxW), that the shot
    looks turned by 90 degrees, else ``remedy`` when given (``fuse``: register them with
    ``--align``)."""
    a = infos[0]
    for b in infos[1:]:
        if (b.width, b.height) != (a.width, a.height):
            raise InputFileError(
                b.path, f"size {b.width}x{b.height} (WxH) differs from {a.width}x{a.height} of {a.path}: the "
                "sources must have the same size" + orientation_clause(b) + orientation_clause(a)
                + size_remedy((a.width, a.height), (b.width, b.height), remedy))


def size_remedy(first: tuple[int, int], other: tuple[int, int], remedy: str | None = None) -> str:
    """What a size error adds: ``"; the shot looks turned by 90 degrees: its orientation tag
    may be missing"`` when the sizes ``(width, height)`` are swapped, else ``"; " + remedy``
    (or nothing)."""
    if other == first[::-1]:
        return "; the shot looks turned by 90 degrees: its orientation tag may be missing"
    return f"; {remedy}" if remedy else ""


def read_matte(path: str | os.PathLike[str]) -> np.ndarray:
    """An alpha matte as uint8 (H, W), read by :func:`read_image`. RGB mattes (alphamatting
    stores R=G=B) take the R channel; a matte whose channels differ is an error, since it would
    not be a matte."""
    a = read_image(path)
    if a.ndim == 3:
        if not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])):
            raise InputFileError(path, "matte is not gray (its R, G and B channels differ)")
        a = a[..., 0].copy()
    return a


def _gray_input(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[2] == 1:
        return a[..., 0]
    if a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4)):
        return a
    raise ValueError(f"expected a gray (H x W) or colour (H x W x 3 or 4) image, got shape {a.shape}")


def gray_float(img: np.ndarray, *, rounded: bool = False, matlab_order: bool = False) -> np.ndarray:
    """MATLAB ``rgb2gray`` as float64 on the [0, 255] scale.

    Parameters
    ----------
    img : numpy.ndarray
        Gray (H, W) or (H, W, 1), or colour (H, W, 3) or (H, W, 4) (alpha ignored), uint8 or
        float on the [0, 255] scale.
    rounded : bool
        False: the weighted sum, unrounded. True: the sum (in MATLAB's order) rounded half away
        from zero and clipped to [0, 255], as MATLAB's ``rgb2gray`` returns it for uint8 data
        (what the reference metric code sees); equal to ``to_gray_u8(img)`` as float64.
    matlab_order : bool
        Unrounded sum in MATLAB's order ``r*c0 + g*c1 + b*c2`` (the baselines) instead of the
        matrix product ``img @ RGB2GRAY`` (the data stages); see the module docstring for
        why both exist. Ignored when ``rounded`` (always MATLAB's order).

    Returns
    -------
    numpy.ndarray
        (H, W) float64. Gray input is returned as a float64 copy, never rounded.

    Raises
    ------
    ValueError
        For any other shape.
    """
    a = _gray_input(img)
    if a.ndim == 2:
        return a.astype(np.float64, copy=True)
    if not (rounded or matlab_order):
        return a[..., :3].astype(np.float64) @ RGB2GRAY
    g = _matlab_sum(a)
    return np.clip(round_half_away(g), 0.0, 255.0) if rounded else g


def _matlab_sum(a: np.ndarray) -> np.ndarray:
    """``r*c0 + g*c1 + b*c2`` in float64, in that order (MATLAB's)."""
    c = RGB2GRAY
    return a[..., 0].astype(np.float64) * c[0] + a[..., 1].astype(np.float64) * c[1] + a[..., 2].astype(np.float64) * c[2]


def round_half_away(a: np.ndarray) -> np.ndarray:
    """MATLAB ``round``: halves go away from zero (numpy's ``round`` goes to even)."""
    return np.sign(a) * np.floor(np.abs(a) + 0.5)


def to_uint8(a: np.ndarray) -> np.ndarray:
    """A [0, 255] image as uint8: rounded half away from zero (MATLAB's ``round``), clipped.
    Computed in the input's own float type (float32 stays float32, as the data stages had it)."""
    return np.clip(round_half_away(np.asarray(a)), 0, 255).astype(np.uint8)


def to_gray_u8(img: np.ndarray) -> np.ndarray:
    """MATLAB ``rgb2gray`` on uint8 data: the uint8 gray (H, W), ``gray_float(img,
    rounded=True)`` as uint8; gray input passes through (a float one rounded to uint8).

    Parameters
    ----------
    img : numpy.ndarray
        Gray (H, W) or (H, W, 1), or colour (H, W, 3) or (H, W, 4) (alpha ignored), uint8 or
        float on the [0, 255] scale.

    Returns
    -------
    numpy.ndarray
        (H, W) uint8: the weighted sum in MATLAB's order rounded half away from zero and
        clipped to [0, 255]; gray uint8 input as a copy, gray float input rounded so.

    Raises
    ------
    ValueError
        For any other shape.
    """
    a = _gray_input(img)
    if a.ndim == 2:
        return a.copy() if a.dtype == np.uint8 else to_uint8(a.astype(np.float64))
    if a.dtype == np.uint8 and a.shape[0] * a.shape[1] >= GRAY_TABLE_MIN_PIXELS:
        return _gray_by_table(a)  # a table of every (r, g, b): bit-identical, 10-20x faster than the sum
    return to_uint8(_matlab_sum(a))  # rounded once: the same as to_uint8(gray_float(a, rounded=True))


_GRAY_TABLE: np.ndarray | None = None

#: Colour images of at least this many pixels are converted by :func:`_gray_by_table`; smaller
#: ones by the sum (the same bits), so that a small image does not pay for building the table.
GRAY_TABLE_MIN_PIXELS = 1 << 20


def _gray_table() -> np.ndarray:
    """uint8 (2**24,): ``to_uint8(_matlab_sum(rgb))`` of every uint8 ``(r, g, b)``, indexed by
    ``r << 16 | g << 8 | b`` (16 MB, built once: the same float64 operations in the same order
    as :func:`_matlab_sum`, so the same bits; compared on every colour in tests/test_io.py)."""
    global _GRAY_TABLE
    if _GRAY_TABLE is None:
        v = np.arange(256, dtype=np.float64)
        c = RGB2GRAY
        table = np.empty((256, 256, 256), np.uint8)
        for r0 in range(0, 256, 16):  # 16 reds at a time: 8 MB of float64, not 134 MB
            r = v[r0:r0 + 16, None, None]
            table[r0:r0 + 16] = to_uint8((r * c[0] + v[None, :, None] * c[1]) + v[None, None, :] * c[2])
        _GRAY_TABLE = table.ravel()
    return _GRAY_TABLE


def _gray_by_table(a: np.ndarray, rows: int = 256) -> np.ndarray:
    """:func:`to_gray_u8` of uint8 colour (H, W, 3 or 4) by :func:`_gray_table`, a band of
    ``rows`` rows at a time (no float64 copies of a 24 MP image: 26 s of a camera pair under load)."""
    table = _gray_table()
    h, w = a.shape[:2]
    out = np.empty((h, w), np.uint8)
    for y in range(0, h, rows):
        s = a[y:y + rows]
        idx = s[..., 0].astype(np.uint32) << 16
        idx |= s[..., 1].astype(np.uint32) << 8
        idx |= s[..., 2]
        np.take(table, idx, out=out[y:y + rows])
    return out


def resize(img: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Antialiased (Lanczos) resize of a uint8 gray/RGB image or a float gray image; mattes too,
    so soft edges stay soft."""
    h, w = size_hw
    if img.shape[:2] == (h, w):
        return img.copy()
    if img.dtype != np.uint8:  # float gray: resized in float (PIL mode "F"), no rounding
        if img.ndim != 2:
            raise ValueError("float images must be gray (H, W)")
        im = Image.fromarray(img.astype(np.float32), mode="F")
        return np.asarray(im.resize((w, h), Image.Resampling.LANCZOS, reducing_gap=None), dtype=np.float32).copy()
    im = Image.fromarray(img)
    return np.asarray(im.resize((w, h), Image.Resampling.LANCZOS, reducing_gap=None), dtype=np.uint8).copy()


def scaled_size(shape_hw: tuple[int, ...], scale: float) -> tuple[int, int]:
    h, w = shape_hw[:2]
    return max(1, round(h * scale)), max(1, round(w * scale))


def write_image(path: str | os.PathLike[str], img: np.ndarray, *, exif: bytes | None = None,
                icc: bytes | None = None, bits: int | None = None,
                dpi: tuple[float, float] | None = None, png_colour: bytes | None = None) -> None:
    """Write a uint8 or uint16 gray or RGB image atomically; the format follows the suffix
    (.png, .jpg, .tif, .webp, .bmp, or another format Pillow writes); a suffix of no format
    Pillow writes is an error naming the file and those five.

    Parameters
    ----------
    path : path-like
        Output file; its suffix chooses the format.
    img : numpy.ndarray
        Gray (H, W) or (H, W, 1), or colour (H, W, 3) (alpha: (H, W, 2) or (H, W, 4), kept by
        PNG, TIFF and WebP, RGBA by BMP; JPEG, and BMP for gray + alpha, refuse it); uint8,
        or uint16 (16 bits per sample, full range); any other type (float, int64, bool) is an
        error naming the file, raised before anything is written. uint16 is written with 16 bits to
        PNG and TIFF (:data:`HIGH_DEPTH_SUFFIXES`); other formats keep 8 bits and get the
        image scaled to 8 bits (callers warn, see :func:`keeps_16_bits`).
    exif, icc : bytes, optional
        EXIF block and ICC profile to store where the format allows (PNG: ``eXIf`` and
        ``iCCP``; JPEG, WebP and 8-bit TIFF: both; 16-bit TIFF: the ICC profile only; BMP:
        neither). Without them the file is byte-identical to what it was before they existed.
        EXIF over :data:`_JPEG_MAX_EXIF` bytes, more than a JPEG holds, is shortened for a
        JPEG as ``fuse`` and ``fuse-dir`` shorten it (:func:`fit_jpeg_exif`: its MakerNote
        dropped, then its largest tags; left out when Pillow cannot rewrite it), with an
        :class:`ExifWarning` naming the file and what was dropped (``fuse`` shortens it
        before and says so on stderr: no warning then).
        The EXIF's image size (ExifImageWidth/Height), where it has one, is set to ``img``'s
        (a source's, turned by its orientation or cropped by ``--align``, was stale).
        An ICC profile of another colour space than the output's (a CMYK or gray source's
        profile on an RGB output, an RGB profile on a gray one) is left out: it would make
        colour-managed viewers misread the pixels.
    bits : int, optional
        Significant bits of the data behind uint16 ``img`` (e.g. 12 for a 12-bit camera):
        written as the PNG ``sBIT`` chunk when below 16 (the samples stay on the 16-bit scale,
        as the PNG specification asks), so that :func:`read_images` scales the file like its
        unmarked 12-bit sources. The file always reads back as ``img`` on the 16-bit scale:
        when every sample fits in ``bits`` bits (dark data), samples off the scaled grid (see
        :func:`sbit_scaled`; not the case for data of ``bits`` bits scaled by
        ``round(v / (2**bits - 1) * 65535)``, as :func:`read_source_set` scales it) are
        rounded onto it (by at most ``65535 / (2**bits - 1) / 2``), else the reader would
        take them for unscaled ``bits``-bit data. A 16-bit TIFF holds the ``bits``-bit values
        themselves, marked as OME-TIFF ``SignificantBits`` (:func:`_write_tiff16`): it reads
        back as ``img`` on the ``bits``-bit grid, and beside its unmarked sources like them;
        with ``bits`` 16 (sources stored on the 16-bit scale: :meth:`SourceSet.bits_for`) it
        holds ``img`` marked ``SignificantBits`` 16. Without ``bits``: ``img``, unmarked.
    dpi : (float, float), optional
        Resolution in dots per inch (x, y) to store: JPEG's JFIF density, PNG's ``pHYs``,
        TIFF's XResolution/YResolution (unit inch), BMP's pixels per metre; WebP holds none.
        Without it the file states none, so that neither Pillow nor :func:`source_dpi` reads one:
        a PNG has no ``pHYs``, a TIFF 1/1 of no unit (ResolutionUnit 1: Pillow read 1 dpi
        from an 8-bit one without the tags), a BMP 0 pixels per metre (Pillow writes 96 dpi
        by default), a JPEG a JFIF density 1:1 of no unit; only for a JPEG with EXIF does
        Pillow still say 72 dpi, its fallback for any JPEG whose EXIF states no resolution (a
        JPEG source of that EXIF reads so too; :func:`source_dpi` reads none).
    png_colour : bytes, optional
        PNG chunks describing colour without an ICC profile (``gAMA``, ``cHRM``, ``sRGB``, as
        :func:`source_png_colour` reads them), written to a PNG right after its header; other
        formats cannot hold them (callers say so).
    """
    import io

    from bafusion.errors import UserError

    p = Path(path)
    fmt = Image.registered_extensions().get(p.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:  # Image.SAVE: the formats Pillow writes (registered_extensions loads it)
        use = ", ".join(_USUAL_SUFFIX[f] for f in _WRITTEN_METADATA)
        if fmt is None:
            raise UserError(f"{p}: unknown image format {p.suffix or '(no suffix)'!r} (use {use}, or another "
                            "format Pillow writes)")
        raise UserError(f"{p}: cannot write {fmt} files ({p.suffix!r}): Pillow reads them but does not write "
                        f"them (use {use})")
    img = np.ascontiguousarray(img)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]  # gray (H, W, 1): Pillow cannot make an image of it
    if img.dtype not in (np.uint8, np.uint16):
        # Pillow raised 'Cannot handle this data type' (float RGB, int64), 'cannot write mode F
        # as PNG', or wrote a float TIFF nothing here reads back as the image
        hint = " (bafusion.io.to_uint8 rounds a [0, 255] float image)" if img.dtype.kind == "f" else ""
        raise UserError(f"{p}: uint8 or uint16 image expected, got {img.dtype}{hint}")
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (2, 3, 4))) or img.size == 0:
        raise UserError(f"{p}: gray (H, W) or colour (H, W, 3) image expected, got an array of shape {img.shape}")
    if img.ndim == 3 and img.shape[2] in _NO_ALPHA.get(fmt, ()):
        # Pillow raised a bare OSError ('cannot write mode RGBA as JPEG'); the reader drops alpha,
        # but a writer that dropped it in silence would lose what the caller handed it
        keep = "img[..., :3]" if img.shape[2] == 4 else "img[..., 0]"
        raise UserError(f"{p}: {fmt} cannot store an alpha channel (image of shape {img.shape}): pass the image "
                        f"without it ({keep}) or write .png or .tif, which keep it")
    if icc and not icc_fits(icc, img):
        icc = None
    if exif:
        exif = _exif_sized(exif, img.shape[1], img.shape[0])
        if fmt == "JPEG" and len(exif) > _JPEG_MAX_EXIF:
            exif, note = fit_jpeg_exif(exif, p, what="the EXIF given")
            warnings.warn(str(note), ExifWarning, stacklevel=2)
    if img.dtype == np.uint16 and not keeps_16_bits(p):
        img = _u16_to_u8_table()[img]  # scale_to_u8(img, 16) by table: no float64 copy (8 bytes a sample)
    if img.dtype == np.uint16 and fmt == "TIFF":
        # tifffile writes straight to the file (the image, of 100+ MB, is not copied into memory)
        _write_checked(p, lambda fh: _write_tiff16(fh, img, icc, bits, dpi))
        return
    # encoded in memory, then written with Python's file I/O, which raises on a short write
    # (ENOSPC): Pillow writes a JPEG of quality >= 95 in one write() straight to the file's
    # descriptor and ignores a short one, so a full disk left a cut-off JPEG reported as written.
    # Compressed PNG and JPEG are small in memory; BMP and 8-bit TIFF are not compressed: about
    # the image's size, up to three times that while the buffer grows
    if img.dtype == np.uint16:  # PNG
        sbit = bits if bits and 0 < bits < 16 else None
        if sbit and int(img.max()) < 1 << sbit and not sbit_scaled(img, sbit):
            img = _onto_sbit_grid(sbit)[img]  # dark and off the grid: would read back as unscaled data
        data: bytes | memoryview = png16_bytes(img, exif=exif, icc=icc, sbit=sbit, dpi=dpi)
        if png_colour:
            data = _after_ihdr(bytes(data), png_colour)
    else:
        kwargs: dict = {"compress_level": 6} if fmt == "PNG" else ({"quality": 95} if fmt == "JPEG" else {})
        keeps = written_metadata(p)
        if exif and "exif" in keeps:
            kwargs["exif"] = exif
        if icc and "icc" in keeps:
            kwargs["icc_profile"] = icc
        if dpi and "dpi" in keeps:
            kwargs["dpi"] = dpi
        elif fmt == "BMP":  # Pillow's default is 96 dpi; 0 pixels per metre states none
            kwargs["dpi"] = (0, 0)
        elif fmt == "TIFF":  # without these tags Pillow reads 1 dpi: 1/1 of no unit, as the 16-bit TIFF
            kwargs.update(resolution_unit=1, x_resolution=1, y_resolution=1)
        buf = io.BytesIO()
        try:
            Image.fromarray(img).save(buf, format=fmt, **kwargs)
        except (OSError, ValueError, KeyError) as e:  # in memory: the format, not the disk ('cannot write mode')
            raise UserError(f"{p}: cannot write this image (shape {img.shape}) as {fmt}: {e}") from e
        data = buf.getbuffer()
        if png_colour and fmt == "PNG":
            data = _after_ihdr(bytes(data), png_colour)

    def write(fh: BinaryIO) -> int:
        fh.write(data)
        return len(data)

    _write_checked(p, write)


#: The usual suffix of each format of :data:`_WRITTEN_METADATA`: the ones :func:`write_image`
#: names when a suffix names no format it writes.
_USUAL_SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "WEBP": ".webp", "BMP": ".bmp"}
#: What :func:`write_image` stores of the metadata it is given, by Pillow format (:func:`written_metadata`).
_WRITTEN_METADATA = {"PNG": frozenset({"icc", "exif", "dpi", "png_colour"}),
                     "JPEG": frozenset({"icc", "exif", "dpi"}), "TIFF": frozenset({"icc", "exif", "dpi"}),
                     "WEBP": frozenset({"icc", "exif"}), "BMP": frozenset({"dpi"})}


def written_metadata(path: str | os.PathLike[str], high_depth: bool = False) -> frozenset[str]:
    """The metadata :func:`write_image` stores in a file of ``path``'s suffix: ``'icc'`` (the ICC
    profile, when it fits the image: :func:`icc_fits`), ``'exif'``, ``'dpi'`` and
    ``'png_colour'`` (PNG ``gAMA``/``cHRM``/``sRGB`` chunks). ``high_depth``: a uint16 image,
    which a TIFF holds without EXIF. A BMP holds the resolution only, a WebP no resolution, other
    formats none of them."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    keeps = _WRITTEN_METADATA.get(fmt or "", frozenset())
    if high_depth and fmt == "TIFF":
        keeps = keeps - {"exif"}
    return keeps


def _write_checked(p: Path, write: Callable[[BinaryIO], int]) -> None:
    """Write ``p`` atomically by ``write(fh)``, which returns the size the file must have at
    least; a file found shorter after the flush is a full disk (ENOSPC), and an error of a write
    names ``p`` (not its temporary name). Python's file I/O raises on a short write, but a write
    by C code beside it can lose its end unsaid: numpy's ``tofile`` (tifffile writes the image
    data with it) writes through a C ``FILE`` whose closing flush it does not check."""
    import errno

    with atomic_file(p) as tmp:
        try:
            with open(tmp, "wb") as fh:
                size = write(fh)
                fh.flush()
                written = os.fstat(fh.fileno()).st_size
        except OSError as e:  # a write's error names no file: the output's name, not the temporary one's
            if e.errno is None:  # numpy's short write: "120000 requested and 9888 written"
                raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({e})", str(p)) from e
            raise OSError(e.errno, e.strerror or str(e), str(p)) from e
        if written < size:  # a short write that reported no error
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (only {written} of {size} bytes written)",
                          str(p))


@functools.cache
def _u16_to_u8_table() -> np.ndarray:
    """``scale_to_u8(v, 16)`` of every uint16 ``v``, as a uint8 table (indexing it with a uint16
    image gives the same bytes without the float64 copy of the whole image)."""
    return scale_to_u8(np.arange(1 << 16, dtype=np.float64), 16)


#: ExifImageWidth and ExifImageHeight (PixelXDimension, PixelYDimension) in the Exif sub-IFD.
_EXIF_IFD, _EXIF_WIDTH, _EXIF_HEIGHT = 0x8769, 0xA002, 0xA003


def _exif_sized(exif: bytes, width: int, height: int) -> bytes:
    """``exif`` with the Exif sub-IFD's ExifImageWidth/Height set to ``width`` x ``height``
    when it has either and they differ (a camera's shot stored turned, or an output cropped);
    else (also when Pillow cannot parse it) ``exif`` unchanged, byte for byte."""
    try:
        with _quiet_pillow():
            ex = Image.Exif()
            ex.load(exif)
            sub = ex.get_ifd(_EXIF_IFD)
            if not ({_EXIF_WIDTH, _EXIF_HEIGHT} & set(sub)) or (sub.get(_EXIF_WIDTH), sub.get(_EXIF_HEIGHT)) == (
                    width, height):
                return exif
            sub[_EXIF_WIDTH], sub[_EXIF_HEIGHT] = int(width), int(height)
            return ex.tobytes()
    except Exception:  # noqa: BLE001 - EXIF Pillow cannot rewrite is stored as the source had it
        return exif


def icc_fits(icc: bytes, img: np.ndarray) -> bool:
    """Whether the ICC profile ``icc`` describes ``img``'s colour space: its header's data
    colour space (bytes 16-19) is ``'RGB '`` for an RGB or RGBA image, ``'GRAY'`` for a gray
    one (with or without alpha: (H, W), (H, W, 1) or (H, W, 2)); an alpha channel is not part
    of the colour space."""
    space = bytes(icc[16:20]) if len(icc) >= 128 else b""
    channels = 1 if img.ndim == 2 else img.shape[2] if img.ndim == 3 else 0
    return space == (b"RGB " if channels in (3, 4) else b"GRAY" if channels in (1, 2) else b"\0")


#: Pillow formats that cannot store an alpha channel: the channel counts (2: gray + alpha, 4: RGBA)
#: :func:`write_image` refuses for them, naming the file (PNG, TIFF and WebP keep alpha; BMP RGBA).
_NO_ALPHA = {"JPEG": (2, 4), "BMP": (2,)}

#: Longest EXIF block a JPEG APP1 segment holds (a longer one is shortened: :func:`fit_jpeg_exif`).
_JPEG_MAX_EXIF = 65533


class ExifWarning(UserWarning):
    """Issued by :func:`write_image` when the EXIF block it was given does not fit a JPEG
    (over :data:`_JPEG_MAX_EXIF` bytes) and is written shortened, or left out when it cannot
    be shortened: the text names the file and what was dropped (:func:`fit_jpeg_exif`)."""

#: EXIF tag names for :func:`fit_jpeg_exif`'s note (other tags are named by number).
_EXIF_TAG_NAMES = {0x927C: "MakerNote", 0x9286: "UserComment", 0x8825: "GPS", 0x8773: "InterColorProfile",
                   0x02BC: "XMP", 0x83BB: "IPTC", 0x8649: "Photoshop", 0xC4A5: "PrintIM"}


def _exif_value_size(v: object) -> int:
    if isinstance(v, (bytes, bytearray)):
        return len(v)
    if isinstance(v, str):
        return len(v.encode("utf-8", "replace"))
    if isinstance(v, (tuple, list)):
        return sum(_exif_value_size(x) for x in v) or 1
    if isinstance(v, dict):
        return sum(_exif_value_size(x) for x in v.values())
    return 8


def fit_jpeg_exif(exif: bytes | None, output: str | os.PathLike[str], *,
                  what: str = "the first source's EXIF") -> tuple[bytes | None, str | None]:
    """``exif`` made to fit a JPEG's APP1 segment (:data:`_JPEG_MAX_EXIF` bytes) when ``output``
    is a JPEG, with a note for the user when anything is dropped; else ``(exif, None)``.

    A larger block (a camera's MakerNote from a PNG or TIFF source) was left out whole and
    unsaid: now its MakerNote (0x927C) is dropped, then, while still too large, its largest
    remaining tag; the note names what was dropped. A block Pillow cannot rewrite is left out,
    and the note says so. ``what`` names the block in the note (:func:`write_image`: "the
    EXIF given")."""
    if not exif or len(exif) <= _JPEG_MAX_EXIF or Image.registered_extensions().get(
            Path(output).suffix.lower()) != "JPEG":
        return exif, None
    why = f"{len(exif)} bytes, a JPEG holds at most {_JPEG_MAX_EXIF}"
    dropped: list[str] = []
    try:
        with _quiet_pillow():
            ex = Image.Exif()
            ex.load(exif)
            ifds = {0: ex}
            for ifd in (0x8769, 0x8825):
                if ifd in ex:
                    ifds[ifd] = ex.get_ifd(ifd)
            if 0x927C in ifds.get(0x8769, {}):
                del ifds[0x8769][0x927C]
                dropped.append("MakerNote")
            data = ex.tobytes()
            while len(data) > _JPEG_MAX_EXIF:
                where, tag = max(((w, t) for w, d in ifds.items() for t in d if not (w == 0 and t in ifds)),
                                 key=lambda wt: _exif_value_size(ifds[wt[0]][wt[1]]))
                del ifds[where][tag]
                dropped.append(_EXIF_TAG_NAMES.get(tag, f"tag 0x{tag:04X}"))
                data = ex.tobytes()
    except Exception:  # noqa: BLE001 - not rewritable: left out, and said
        return None, f"{output}: {what} is not written ({why}; it cannot be shortened)"
    return data, f"{output}: {what} is written without {', '.join(dropped)} ({why})"


#: Output suffixes that keep 16 bits per sample.
HIGH_DEPTH_SUFFIXES = (".png", ".tif", ".tiff")


def keeps_16_bits(path: str | os.PathLike[str]) -> bool:
    """Whether :func:`write_image` writes 16 bits per sample to this file (PNG, TIFF)."""
    return Path(path).suffix.lower() in HIGH_DEPTH_SUFFIXES


def _after_ihdr(png: bytes, chunks: bytes) -> bytes:
    """A PNG's bytes with ``chunks`` (whole chunks) inserted after its IHDR chunk."""
    ihdr_end = 8 + 8 + 13 + 4  # signature, IHDR length+type, IHDR data, CRC
    return png[:ihdr_end] + chunks + png[ihdr_end:]


def _png_chunk(typ: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + typ + data + struct.pack(">I", zlib.crc32(typ + data) & 0xFFFFFFFF)


def png16_bytes(img: np.ndarray, *, exif: bytes | None = None, icc: bytes | None = None,
                sbit: int | None = None, dpi: tuple[float, float] | None = None) -> bytes:
    """A 16-bit gray or RGB PNG of a uint16 (H, W) or (H, W, 3) array (encoded by pypng: Pillow
    cannot write 16-bit colour), with ``sBIT``, ``iCCP``, ``pHYs`` (``dpi``, as pixels per
    metre) and ``eXIf`` chunks when given; deterministic."""
    import io

    import png  # pypng

    h, w = img.shape[:2]
    planes = 1 if img.ndim == 2 else img.shape[2]
    buf = io.BytesIO()
    png.Writer(w, h, greyscale=planes in (1, 2), alpha=planes in (2, 4), bitdepth=16, compression=6).write_array(
        buf, img.reshape(-1).astype(np.uint16)
    )
    data = buf.getvalue()
    extra = b""
    if sbit:
        extra += _png_chunk(b"sBIT", bytes([sbit] * planes))
    if icc:
        extra += _png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc))
    if dpi:  # pixels per metre, unit 1 (metre), rounded as Pillow rounds them
        extra += _png_chunk(b"pHYs", struct.pack(">IIB", int(dpi[0] / 0.0254 + 0.5), int(dpi[1] / 0.0254 + 0.5), 1))
    if exif:
        extra += _png_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif)
    ihdr_end = 8 + 8 + 13 + 4  # signature, IHDR length+type, IHDR data, CRC
    return data[:ihdr_end] + extra + data[ihdr_end:]


def _write_tiff16(fh: BinaryIO, img: np.ndarray, icc: bytes | None, bits: int | None = None,
                  dpi: tuple[float, float] | None = None) -> int:
    """Write a 16-bit TIFF of ``img`` (uint16 on the 16-bit scale) to ``fh``; the end of its
    image data (the size the file has at least). ``dpi``: XResolution/YResolution in dots per
    inch (else tifffile's 1/1, unit none).

    With ``bits`` below 16 the file holds the ``bits``-bit values (``round(x / 65535 *
    (2**bits - 1))``, as a 12-bit camera's 16-bit TIFF holds 0..4095) and marks them as an
    OME-TIFF does (``SignificantBits``, unscaled values: what :func:`read_source_set` honours),
    so it reads back as ``img`` (on the ``bits``-bit grid) alone or beside unmarked sources of
    ``bits`` bits. With ``bits`` of 16 or more the file holds ``img`` itself, marked
    ``SignificantBits`` 16: it reads back on the 16-bit scale also when dark (unmarked, a dark
    image was scaled from fewer bits). The OME-XML's UUID is derived from the pixels, so the
    bytes are deterministic."""
    import hashlib
    import uuid

    import tifffile

    extratags = [(34675, "B", len(icc), icc, True)] if icc else []
    if dpi:
        layout_res: dict = {"resolution": (float(dpi[0]), float(dpi[1])), "resolutionunit": "INCH"}
    else:
        layout_res = {}
    photometric = "minisblack" if img.ndim == 2 or img.shape[2] == 2 else "rgb"
    # gray + alpha: one page of two samples (tifffile took (H, W, 2) for H pages of W x 2 gray)
    layout: dict = ({"planarconfig": "contig", "extrasamples": ["unassalpha"]}
                    if img.ndim == 3 and img.shape[2] == 2 else {})
    if bits and bits > 0:
        bits = min(bits, 16)
        if bits < 16:
            img = _to_bits_table(bits)[img]
        digest = hashlib.blake2b(img.data, digest_size=16, person=str((img.shape, bits)).encode()[:16])
        metadata = {"SignificantBits": bits, "UUID": f"urn:uuid:{uuid.UUID(bytes=digest.digest())}"}
        if layout:
            metadata["axes"] = "YXS"
        offset, count = tifffile.imwrite(fh, img, photometric=photometric, ome=True, metadata=metadata,
                                         extratags=extratags, returnoffset=True, **layout, **layout_res)
    else:
        offset, count = tifffile.imwrite(fh, img, photometric=photometric, metadata=None, extratags=extratags,
                                         returnoffset=True, **layout, **layout_res)
    return int(offset) + int(count)


@functools.lru_cache(maxsize=16)
def _to_bits_table(bits: int) -> np.ndarray:
    """uint16 table: every 16-bit sample to the ``bits``-bit value ``round(x / 65535 *
    (2**bits - 1))`` (no ties: 65535 is odd); the inverse of :func:`read_source_set`'s
    ``round(v / (2**bits - 1) * 65535)``, so values from ``bits``-bit sources come back exactly."""
    x = np.arange(1 << 16, dtype=np.float64)
    return np.round(x / 65535.0 * float((1 << bits) - 1)).astype(np.uint16)


#: The suffixes :func:`list_images` lists (the data stages' foreground, matte and background
#: folders): those :data:`IMAGE_SUFFIXES` held before it took every photo format ``fuse`` reads,
#: so that a folder prepared before (a .gif or .avif beside its images) gives the same data set.
LISTED_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """The image files in ``folder`` (by extension: :data:`LISTED_SUFFIXES`), sorted; hidden
    files (``.name``, such as macOS's ``._GT01.png`` metadata) are left out, as the download
    record leaves them out."""
    d = Path(folder)
    return sorted(
        p for p in d.iterdir() if not p.name.startswith(".") and p.is_file() and p.suffix.lower() in LISTED_SUFFIXES
    )


# --------------------------------------------------------------------------------------
# Sources of more than 8 bits per sample
#
# A file stores samples of some depth (PNG: 1-16 bits, TIFF: BitsPerSample), but the data may
# use fewer bits: 12-bit camera data in a 16-bit PNG has a maximum of 4095, not 65535. The
# files read together are read by :func:`read_images` / :func:`read_source_set`:
#
# * files of at most 8 bits per sample are read as before (byte-identical);
# * a PNG that marks its significant bits b (``sBIT``) holds them as the PNG specification
#   asks: scaled up to the file's depth (16), the original values recoverable by a right
#   shift; it is scaled from 16 bits. Only when every value fits in b bits and some value is
#   not what such scaling gives (:func:`sbit_scaled`) is the data taken as stored unscaled (a
#   writer that ignored the specification: values 0..2**b - 1) and scaled from b bits. Dark
#   scaled data (all of it below 25% of the range at b = 14, 6% at b = 12) also fits in b bits,
#   but its samples lie on the scaled grid (it was taken for unscaled data: 4x / 16x too
#   bright, also bafusion's own 16-bit fusions of it). :func:`write_image` brings the samples
#   it marks onto that grid when they fit in b bits, so what it writes reads back as written;
# * an OME-TIFF that marks them (``SignificantBits``, OME's convention: unscaled values) is
#   scaled from that many bits when its values fit in them, else from the file's depth
#   (:func:`write_image` writes its 16-bit TIFFs of fewer significant bits so); a mark of as many
#   bits as the file's depth (SignificantBits 16, sBIT 16) is the full scale, also when dark
#   (:func:`write_image` marks a TIFF of data on the 16-bit scale so). A mark that does not hold
#   (values beyond its bits, off the sBIT grid) counts as the file's depth for the bits an
#   output is written with (:attr:`SourceSet.bits`);
# * the unmarked ones are scaled alike, by one factor for the pair: the bit depth of a
#   camera sensor (10, 12, 14 or 16) that holds the largest value over all of them (8 when it
#   fits in 8 bits, as before), so that A and B are never scaled differently.
#
# Pillow decodes 16-bit colour PNGs and TIFFs to their high byte only; 16-bit colour TIFFs are
# read with tifffile instead, 16-bit colour PNGs with pypng (both then get the file's EXIF
# orientation applied, as Pillow's images do in :func:`open_image`). 16-bit gray + alpha TIFFs,
# which Pillow cannot identify, are read with tifffile too (:func:`_tiff16_without_pillow`).
#
# :func:`read_source_set` also keeps the full depth (:attr:`SourceSet.full`: every source as
# uint16 on the 16-bit scale, by the same factor as its 8-bit version) and the first source's
# EXIF (orientation reset, since the pixels are already turned) and ICC profile.

#: Bit depths a source's values are scaled from when the file does not mark them.
SENSOR_BITS = (8, 10, 12, 14, 16)

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_depth(path: str | os.PathLike[str]) -> tuple[int, int, int | None] | None:
    """(bit depth, colour type, significant bits from ``sBIT`` or None) of a PNG file, read
    from its chunks before the image data; None when it is not a PNG."""
    depth = ctype = None
    sig: int | None = None
    with open(path, "rb") as f:
        if f.read(8) != _PNG_MAGIC:
            return None
        while True:
            head = f.read(8)
            if len(head) < 8:
                break
            n, typ = struct.unpack(">I4s", head)
            if typ == b"IHDR":
                data = f.read(n)
                depth, ctype = data[8], data[9]
            elif typ == b"sBIT" and ctype is not None:
                data = f.read(n)
                colour = data[:3] if ctype in (2, 3, 6) else data[:1]
                sig = max(colour) if colour else None
            elif typ in (b"IDAT", b"IEND"):
                break
            else:
                f.seek(n, 1)
            f.seek(4, 1)  # CRC
    if depth is None or ctype is None:
        return None
    return depth, ctype, sig


def _tiff_depth(im: Image.Image) -> tuple[int, int | None] | None:
    tags = getattr(im, "tag_v2", None)
    if tags is None:
        return None
    bps = tags.get(258)
    if bps is None:
        return None
    depth = max(bps) if isinstance(bps, tuple) else int(bps)
    m = re.search(r'SignificantBits\s*=\s*"?(\d+)', str(tags.get(270, "")))
    return depth, (int(m.group(1)) if m else None)



_ORIENTATION = 0x0112  # EXIF/TIFF Orientation tag


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an array read without Pillow as ``ImageOps.exif_transpose`` turns an image."""
    ops = {
        2: lambda x: x[:, ::-1], 3: lambda x: x[::-1, ::-1], 4: lambda x: x[::-1],
        5: lambda x: np.swapaxes(x, 0, 1), 6: lambda x: np.rot90(x, -1),
        7: lambda x: np.swapaxes(x[::-1, ::-1], 0, 1), 8: lambda x: np.rot90(x, 1),
    }
    return np.ascontiguousarray(ops[orientation](a)) if orientation in ops else a


def _read_png16(path: Path) -> np.ndarray:
    """The raw samples of a 16-bit gray/colour PNG (float64, (H, W) or (H, W, 3), alpha dropped)."""
    import png  # pypng: Pillow decodes 16-bit colour PNGs to their high byte only

    try:
        # through a file we close: pypng's Reader(filename=...) left its file open (a ResourceWarning)
        with open(path, "rb") as fh:
            w, h, rows, info = png.Reader(file=fh).read()
            a = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).astype(np.float64)
    except Exception as e:  # noqa: BLE001 - pypng raises its own error types for bad files
        raise InputFileError(path, f"unreadable 16-bit PNG ({e.__class__.__name__}: {e})") from e
    planes = int(info["planes"])
    a = a.reshape(h, w, planes)
    return a[..., 0] if planes <= 2 else a[..., :3]


_HIGH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _read_tiff_samples(path: Path, depth: int) -> np.ndarray:
    """The samples of a TIFF of more than 8 bits read with tifffile (a scikit-image
    dependency): gray (H, W) or RGB (H, W, 3), float64, alpha and other extra samples dropped,
    not yet turned by the orientation; a colour space other than RGB or gray is refused."""
    import tifffile

    try:
        with _tiff_file(path) as tf:
            page = tf.pages.first
            photometric = tifffile.PHOTOMETRIC(page.photometric)
            if photometric not in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.MINISBLACK):
                # e.g. CMYK (SEPARATED): its first three samples are no RGB (read as a negative)
                raise InputFileError(path, f"{depth}-bit TIFF in colour space {photometric.name} is not supported: "
                                           "save the shots as RGB or gray")
            planar = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and page.samplesperpixel > 1
            colours = 3 if photometric == tifffile.PHOTOMETRIC.RGB else 1
            extra = tuple(page.extrasamples or ())
            # associated (premultiplied) alpha: its sample, and its value of full opacity
            assoc = colours + extra.index(tifffile.EXTRASAMPLE.ASSOCALPHA) if 1 in extra else None
            raw = page.asarray()
            opaque = float(np.iinfo(raw.dtype).max) if raw.dtype.kind in "ui" else 1.0
            a = np.asarray(raw, dtype=np.float64)
            del raw
    except InputFileError:
        raise
    except Exception as e:  # noqa: BLE001 - tifffile raises many types for bad files
        raise InputFileError(path, f"unreadable {depth}-bit TIFF ({e.__class__.__name__}: {e})") from e
    if a.ndim == 3 and planar:  # (samples, H, W); a guess by shape took a 3-4 px tall image for one
        a = np.moveaxis(a, 0, -1)
    if assoc is not None and a.ndim == 3 and a.shape[2] > assoc:
        a = _unpremultiplied(a[..., :colours], a[..., assoc], opaque)
    if a.ndim == 3:
        a = a[..., 0] if a.shape[2] <= 2 else a[..., :3]
    if a.ndim != 2 and not (a.ndim == 3 and a.shape[2] == 3):
        raise InputFileError(path, f"unsupported TIFF layout {a.shape}")
    return a


def _unpremultiplied(colour: np.ndarray, alpha: np.ndarray, opaque: float) -> np.ndarray:
    """Samples ``colour`` (H, W, C) stored premultiplied by ``alpha`` (H, W; ``opaque`` = full
    opacity) divided by it, ``round(v * opaque / alpha)`` clipped to [0, ``opaque``], as Pillow
    un-premultiplies an 8-bit TIFF's (``RGBa``, where it truncates); samples of alpha 0 keep
    theirs (zero in a valid file). What a viewer shows on full opacity, as for unassociated
    alpha."""
    out = colour * opaque
    np.divide(out, alpha[..., None], out=out, where=alpha[..., None] > 0)
    np.round(out, out=out)
    return np.clip(out, 0.0, opaque, out=out)


_TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and BigTIFF, either byte order


def _tiff16_without_pillow(path: Path) -> tuple[np.ndarray, int, int | None, bool] | None:
    """A TIFF of 16-bit samples that Pillow cannot identify, read with tifffile as
    :func:`_high_depth_array` returns it: above all 16-bit gray + alpha (Photoshop's and GIMP's
    gray with transparency; Pillow has no mode for it), read as 16-bit gray, alpha dropped.
    None for anything else (not a TIFF, one tifffile cannot open either, other sample
    formats): the 8-bit reader then says why it is not read (:func:`_tiff_problem`). Pillow's
    decompression-bomb limit holds here too."""
    try:
        with open(path, "rb") as fh:
            if fh.read(4) not in _TIFF_MAGIC:
                return None
        with _tiff_file(path) as tf:
            page = tf.pages.first
            if np.dtype(page.dtype) != np.uint16:
                return None
            depth, h, w = int(page.bitspersample), int(page.imagelength), int(page.imagewidth)
            tag = page.tags.get(_ORIENTATION)
            orientation = int(tag.value) if tag is not None and isinstance(tag.value, int) else 1
            m = re.search(r'SignificantBits\s*=\s*"?(\d+)', str(page.description or ""))
    except Exception:  # noqa: BLE001 - not a TIFF tifffile reads either: the 8-bit reader's message
        return None
    limit = Image.MAX_IMAGE_PIXELS
    if limit and h * w > 2 * limit:
        e = Image.DecompressionBombError(f"Image size ({h * w} pixels) exceeds limit of {2 * limit} pixels, "
                                         "could be decompression bomb DOS attack.")
        raise _too_large(path, e)
    return _orient(_read_tiff_samples(path, depth), orientation), depth, (int(m.group(1)) if m else None), False


def _high_depth_array(path: Path) -> tuple[np.ndarray, int, int | None, bool] | None:
    """The raw samples of a source stored with more than 8 bits (gray (H, W) or colour
    (H, W, 3), float64), the file's depth, its marked significant bits and whether they are a
    PNG ``sBIT`` (samples scaled up to the depth by the specification); None for a file of
    at most 8 bits per sample, or one Pillow cannot open (both left to the 8-bit reader), except
    a 16-bit TIFF Pillow cannot identify (:func:`_tiff16_without_pillow`)."""
    try:
        with _quiet_pillow(), Image.open(path) as im:  # the header only
            fmt, mode = im.format, im.mode
            tiff = _tiff_depth(im) if fmt == "TIFF" else None
            orientation = int(header_exif(im, path).get(_ORIENTATION, 1) or 1)
    except Image.DecompressionBombError as e:
        raise _too_large(path, e) from e
    except UnidentifiedImageError:
        return _tiff16_without_pillow(path)
    except MemoryError as e:
        raise _damaged_or(path, e) from e
    except Exception:  # noqa: BLE001 - any error of Pillow's readers: the 8-bit reader says why
        return None
    if fmt == "PNG":
        png = png_depth(path)
        if png is None or png[0] <= 8:
            return None
        depth, _, sig = png
        if mode in _HIGH_MODES:
            return np.asarray(open_image(path), dtype=np.float64), depth, sig, True
        return _orient(_read_png16(path), orientation), depth, sig, True  # colour: Pillow gives the high byte only
    if tiff is not None and tiff[0] > 8 and mode != "F":
        depth, sig = tiff
        if mode in _HIGH_MODES:
            return np.asarray(open_image(path), dtype=np.float64), depth, sig, False
        # Pillow gives colour TIFFs' high byte only
        return _orient(_read_tiff_samples(path, depth), orientation), depth, sig, False
    if mode in _HIGH_MODES:  # other formats of 16/32-bit gray
        return np.asarray(open_image(path), dtype=np.float64), 16 if mode.startswith("I;16") else 32, None, False
    return None


def source_bits(values_max: float, depth: int, sig: int | None, *, scaled: bool = False) -> int | None:
    """The bits a marked source is scaled from (see above); None for an unmarked one.

    Parameters
    ----------
    values_max : float
        The source's largest value.
    depth : int
        The file's bits per sample.
    sig : int or None
        The significant bits the file marks (PNG ``sBIT``, OME-TIFF ``SignificantBits``); as
        many as ``depth``: the full scale.
    scaled : bool
        The values are stored scaled up to ``depth`` bits (a PNG whose samples are on the
        ``sBIT`` grid, :func:`sbit_scaled`): scaled from ``depth`` also when they fit in ``sig``
        bits.
    """
    if sig is None or not 0 < sig <= depth:
        return None
    # sig == depth (OME SignificantBits 16 of a 16-bit TIFF, which write_image writes for data on
    # the 16-bit scale): the full scale, also when dark (unmarked, it was scaled from fewer bits)
    return sig if values_max <= (1 << sig) - 1 and not scaled else depth


@functools.lru_cache(maxsize=16)
def _sbit_grid(bits: int) -> np.ndarray:
    """Of every 16-bit sample: is it what a PNG encoder writes for ``bits``-bit data scaled up
    to 16 bits (bool table of 65536)? The specification's scalings of a ``bits``-bit value
    ``v``: a left shift (``v << (16 - bits)``), left bit replication, and linear scaling
    (``round(v / (2**bits - 1) * 65535)``, which the reader uses and :func:`write_image` writes)."""
    s = 16 - bits
    v = np.arange(1 << bits, dtype=np.int64)
    rep = v << s
    pos = s
    while pos > 0:  # left bit replication: v repeated down the low bits
        pos -= bits
        rep |= v << pos if pos >= 0 else v >> -pos
    table = np.zeros(1 << 16, dtype=bool)
    table[v << s] = table[rep] = True
    table[np.round(v / float((1 << bits) - 1) * 65535.0).astype(np.int64)] = True
    return table


def sbit_scaled(a: np.ndarray, bits: int) -> bool:
    """Whether every sample of a 16-bit PNG (``a``: its integer values, any numeric dtype) is
    what an encoder writes for ``bits``-bit data scaled up to 16 bits as the PNG specification
    asks (a left shift, left bit replication or linear scaling; :func:`_sbit_grid`).

    Unscaled ``bits``-bit data (values 0..2**bits - 1) lies on that grid only by chance: every
    sample a multiple of 2**(16 - bits) where it is dark (for linear scaling, at most 1 more).
    An image that is all zeros, or too small or flat to tell, counts as scaled (the
    specification's reading)."""
    if not 0 < bits < 16:
        return True
    return bool(_sbit_grid(bits)[np.asarray(a).astype(np.uint16)].all())


@functools.lru_cache(maxsize=16)
def _onto_sbit_grid(bits: int) -> np.ndarray:
    """uint16 table: every 16-bit sample to the nearest linearly scaled ``bits``-bit value,
    ``round(round(x / 65535 * (2**bits - 1)) / (2**bits - 1) * 65535)`` (no ties: 65535 and
    2**bits - 1 are odd); samples already on that grid are kept."""
    top = float((1 << bits) - 1)
    x = np.arange(1 << 16, dtype=np.float64)
    return np.round(np.round(x / 65535.0 * top) / top * 65535.0).astype(np.uint16)


def common_bits(values_max: float) -> int:
    """The bits the unmarked high-depth sources of one fusion are scaled from: the smallest
    of :data:`SENSOR_BITS` that holds ``values_max`` (beyond 16 bits: as many as it needs)."""
    for bits in SENSOR_BITS:
        if values_max <= (1 << bits) - 1:
            return bits
    return max(SENSOR_BITS[-1], math.ceil(math.log2(values_max + 1)))


def scale_to_u8(a: np.ndarray, bits: int) -> np.ndarray:
    """Samples of ``bits`` bits to uint8: ``round(a / (2**bits - 1) * 255)``, clipped."""
    return np.clip(np.round(a / float((1 << bits) - 1) * 255.0), 0, 255).astype(np.uint8)


@dataclass
class SourceSet:
    """The sources of one fusion as read by :func:`read_source_set`.

    Attributes
    ----------
    images : list of numpy.ndarray
        uint8 sources (what the decision is made on; equal to :func:`read_images`).
    full : list of numpy.ndarray or None
        The same sources as uint16 on the 16-bit scale (``round(v / (2**bits - 1) * 65535)``
        with each source's bits, 8-bit sources times 257), when any source has more than 8
        bits per sample; None when all have at most 8 (the uint8 images are the data).
    exif, icc : bytes or None
        The first source's EXIF block (orientation reset to 1) and ICC profile.
    bits : int
        The most significant bits of any source (8 when all have at most 8); a source whose
        mark does not hold (values beyond its marked bits, off the PNG ``sBIT`` grid) counts
        with its file's depth.
    notes : list of str
        Lines for the user, read with the metadata: one per source whose colour profile is not
        the first's (:func:`profile_notes`), one per source of several frames or pages (only
        the first is used: :func:`frame_note`) and one when gray and colour sources are mixed
        (the result is gray where taken from a gray one: :func:`mix_note`); and, also without
        metadata, one per floating-point source whose samples were clipped (:func:`float_to_u8`).
    dpi : (float, float) or None
        The first source's resolution in dots per inch (:func:`source_dpi`).
    png_colour : bytes or None
        The first source's PNG ``gAMA``/``cHRM``/``sRGB`` chunks (:func:`source_png_colour`).
    paths : list of str
        The source files (read with metadata; else empty).
    colour_notes : list of str
        The lines of :attr:`notes` from :func:`profile_notes`, said without knowing the output:
        :meth:`notes_for` says them for the file written.
    full_scale : bool
        Some source of more than 8 bits was stored on the 16-bit scale (a PNG's ``sBIT``
        samples scaled up as the specification asks, 16-bit data), none only when all hold
        unscaled values of fewer bits (a 12-bit camera's 0..4095): see :meth:`bits_for`.
    """

    images: list[np.ndarray]
    full: list[np.ndarray] | None
    exif: bytes | None
    icc: bytes | None
    bits: int = 8
    notes: list[str] = field(default_factory=list)
    full_scale: bool = False
    dpi: tuple[float, float] | None = None
    png_colour: bytes | None = None
    paths: list[str] = field(default_factory=list)
    colour_notes: list[str] = field(default_factory=list)

    def notes_for(self, output: str | os.PathLike[str], high_depth: bool = False) -> list[str]:
        """:attr:`notes` with the colour-description lines (:attr:`colour_notes`) saying what
        ``output`` holds (:func:`profile_notes`; ``high_depth``: a uint16 result)."""
        if not self.colour_notes:
            return list(self.notes)
        rgb = any(a.ndim == 3 and a.shape[2] >= 3 for a in self.images)
        told = profile_notes(self.paths, self.icc, rgb, output, high_depth)
        first = self.notes.index(self.colour_notes[0]) if self.colour_notes[0] in self.notes else len(self.notes)
        rest = [n for n in self.notes if n not in self.colour_notes]
        return rest[:first] + told + rest[first:]

    def bits_for(self, output: str | os.PathLike[str]) -> int:
        """The ``bits`` to write the full-depth fusion to ``output`` with (:func:`write_image`):
        :attr:`bits`, except 16 for a TIFF when a source was stored on the 16-bit scale
        (:attr:`full_scale`): the TIFF then holds the 16-bit values as its sources did (marked
        ``SignificantBits`` 16), not ``bits``-bit ones, which viewers that ignore OME metadata
        show 1/16 as bright (12 bits). Camera-style sources of ``bits``-bit values give
        ``bits``-bit values; PNG keeps :attr:`bits` (its ``sBIT`` samples are on the 16-bit
        scale anyway)."""
        if self.full_scale and Path(output).suffix.lower() in (".tif", ".tiff"):
            return max(self.bits, 16)
        return self.bits


#: Descriptive baseline TIFF tags carried from a TIFF source (not its layout tags): Make, Model,
#: Orientation, DateTime, Artist, Copyright. Not its ImageDescription, which a TIFF writer fills
#: with its own record of the file (tifffile's '{"shape": [...]}', ImageJ's, OME-XML, a raw
#: converter's note): it would describe the source, not the output. Its Software is replaced
#: (:func:`_exif_for_output`).
_DESCRIPTIVE_TAGS = (0x010F, 0x0110, 0x0112, 0x0132, 0x013B, 0x8298)

#: EXIF tags of the program that wrote a file: Software (IFD0), replaced by bafusion's name in
#: the EXIF an output carries, and ProcessingSoftware, dropped (:func:`_exif_for_output`).
_SOFTWARE, _PROCESSING_SOFTWARE = 0x0131, 0x000B


def _exif_for_output(exif: Image.Exif) -> None:
    """Make the first source's EXIF (changed in place) the output's: the orientation reset to 1
    (the pixels are turned on reading), Software naming bafusion, which wrote the output, not
    the camera's firmware or the converter that wrote the source, and no ProcessingSoftware. The
    camera, exposure, date and GPS tags -- why the EXIF is carried -- are kept."""
    from bafusion._version import __version__

    if _ORIENTATION in exif:
        exif[_ORIENTATION] = 1
    exif.pop(_PROCESSING_SOFTWARE, None)
    exif[_SOFTWARE] = f"bafusion {__version__}"


def _tiff_exif(tags: Image.Exif) -> Image.Exif:
    new = Image.Exif()
    for tag in _DESCRIPTIVE_TAGS:
        if tag in tags:
            new[tag] = tags[tag]
    for ifd in (0x8769, 0x8825):  # the Exif and GPS sub-IFDs
        sub = tags.get_ifd(ifd) if ifd in tags else {}
        if sub:
            new[ifd] = dict(sub)
    return new


def source_metadata(path: str | os.PathLike[str]) -> tuple[bytes | None, bytes | None]:
    """(EXIF block for the output, ICC profile) of an image file, each None when absent: the
    EXIF with the orientation reset to 1 and Software naming bafusion (:func:`_exif_for_output`);
    a file Pillow cannot open has neither (a TIFF it cannot identify: its ICC profile only, read
    with tifffile). From a TIFF only its descriptive tags (:data:`_DESCRIPTIVE_TAGS`: not its
    ImageDescription) and its Exif and GPS sub-IFDs are kept (its other tags describe its own
    layout). Of an EXIF block Pillow
    reads but cannot write back (a tag of the wrong type, e.g. XResolution as text) the tags
    it cannot write are dropped, the rest kept (:func:`_exif_without_malformed`; all of it
    when the rest still cannot be written): :func:`_source_metadata` says so."""
    return _source_metadata(path)[:2]


def _source_metadata(path: str | os.PathLike[str]) -> tuple[bytes | None, bytes | None, str | None]:
    """:func:`source_metadata` and the note for the user when EXIF tags (or the block) were dropped."""
    try:
        with _quiet_pillow(), Image.open(path) as im:
            icc = im.info.get("icc_profile") or None
            exif = header_exif(im, path)  # (a PNG's eXIf may follow the pixel data)
            if exif and im.format == "TIFF":
                exif = _tiff_exif(exif)
            if not exif:
                return None, icc, None
            _exif_for_output(exif)
            try:
                return exif.tobytes(), icc, None
            except MemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - Pillow's EXIF writer: any error of a malformed tag
                error = e
            data, dropped = _exif_without_malformed(exif)
            why = f"{error.__class__.__name__}: {error}"
            if data is None:
                return None, icc, (f"{os.fspath(path)}: its EXIF block is malformed ({why}): the output carries "
                                   "no EXIF")
            return data, icc, (f"{os.fspath(path)}: its EXIF has malformed tags, of a type that cannot be written "
                               f"back ({', '.join(dropped)}): the output carries the rest of its EXIF without them")
    except UnidentifiedImageError:
        return None, _tiff_icc(Path(path)), None  # a 16-bit gray + alpha TIFF: tifffile reads its profile
    except MemoryError as e:
        raise _damaged_or(Path(path), e) from e
    except Exception:  # noqa: BLE001 - any error of Pillow's readers (a bomb, a damaged header): no metadata
        return None, None, None


#: The EXIF sub-IFDs rewritten tag by tag (:func:`_exif_without_malformed`): Exif, GPS.
_EXIF_SUB_IFDS = (0x8769, 0x8825)


def _exif_without_malformed(exif: Image.Exif) -> tuple[bytes | None, list[str]]:
    """An EXIF block Pillow cannot write back (a tag of a type it cannot write: XResolution
    as text) without the tags it cannot write, each tried on its own (those of IFD0, of the
    Exif sub-IFD with its Interoperability IFD, and of the GPS sub-IFD), and the names of the
    dropped ones; ``(None, names)`` when the rest still cannot be written. Only tags Pillow
    read and wrote back are kept, re-serialised: the raw block is not copied, since the
    orientation must be reset and a malformed block's offsets cannot be trusted."""
    from PIL import ExifTags

    def writes(tag: int, value: object, where: int | None) -> bool:
        trial = Image.Exif()
        trial[where if where is not None else tag] = {tag: value} if where is not None else value
        try:
            trial.tobytes()
        except MemoryError:
            raise
        except Exception:  # noqa: BLE001 - Pillow's EXIF writer: any error of a malformed tag
            return False
        return True

    def name(tag: int, where: int | None) -> str:
        names = ExifTags.GPSTAGS if where == 0x8825 else ExifTags.TAGS
        return names.get(tag) or f"tag 0x{tag:04X}"

    dropped: list[str] = []
    ifds: dict[int | None, dict] = {None: exif}  # type: ignore[dict-item]
    for ifd in _EXIF_SUB_IFDS:
        if ifd in exif:
            ifds[ifd] = exif.get_ifd(ifd)
    try:
        if 0xA005 in ifds.get(0x8769, {}):  # Interoperability, within the Exif sub-IFD: as one
            ifds[0x8769][0xA005] = exif.get_ifd(0xA005)
        for where, tags in ifds.items():
            for tag in list(tags):
                if where is None and tag in _EXIF_SUB_IFDS:
                    continue  # a sub-IFD: its tags are tried
                if not writes(tag, tags[tag], where):
                    del tags[tag]
                    dropped.append(name(tag, where))
        for ifd in _EXIF_SUB_IFDS:  # a sub-IFD left empty is left out
            if ifd in ifds and not ifds[ifd]:
                del exif[ifd]
        return exif.tobytes(), dropped
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - the rest still cannot be written: none of it
        return None, dropped


def source_dpi(path: str | os.PathLike[str]) -> tuple[float, float] | None:
    """The resolution of an image file in dots per inch (x, y), as Pillow reads it (JPEG: JFIF
    density in inches or cm, else its EXIF's as stated: :func:`_exif_dpi`, not Pillow's 72 dpi
    of a JPEG whose EXIF has none; PNG: ``pHYs`` in pixels per metre; TIFF: XResolution/YResolution
    in inches or centimetres, in inches without a ResolutionUnit tag (the TIFF specification's
    default); BMP); a TIFF Pillow cannot identify is read with tifffile. None without one (also
    a TIFF without XResolution/YResolution, which Pillow reads as 1 dpi, and a resolution of
    ResolutionUnit 1, no absolute unit: an aspect ratio only). Values within 0.013 of a whole
    number, half a pixel per metre, are rounded to it (PNG and BMP store whole pixels per metre:
    300 dpi as 11811 reads 299.9994, 96 dpi as 3780 reads 96.0119)."""
    def whole(v: float) -> float:
        return float(round(v)) if abs(v - round(v)) < 0.013 else float(v)

    try:
        with _quiet_pillow(), Image.open(path) as im:
            dpi = im.info.get("dpi")
            tags = getattr(im, "tag_v2", None) if im.format == "TIFF" else None
            if tags is not None and not (282 in tags and 283 in tags):
                dpi = None  # no XResolution/YResolution: Pillow says 1 dpi (its default of 1/1 per inch)
            if im.format in ("JPEG", "MPO") and im.info.get("jfif_unit") not in (1, 2):
                # no JFIF density in inches or cm: Pillow reads the EXIF's, or says 72 dpi without it
                try:
                    exif = header_exif(im, path)
                except Exception:  # noqa: BLE001 - an EXIF Pillow cannot read: no resolution from it
                    exif = Image.Exif()
                dpi = _exif_dpi(exif)
    except UnidentifiedImageError:
        dpi = _tiff_dpi(Path(path))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    try:
        x, y = (float(v) for v in dpi)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(x) and math.isfinite(y) and x > 0 and y > 0):
        return None
    return whole(x), whole(y)


def _exif_dpi(exif: Image.Exif) -> tuple[float, float] | None:
    """The resolution an EXIF block (IFD0) states, in dots per inch: XResolution and
    YResolution (XResolution alone: square pixels) in its ResolutionUnit, inch without one
    (the EXIF default), centimetre; None without XResolution or with unit 1 (no absolute
    unit). Pillow's JPEG reader instead says 72 dpi for a JPEG with EXIF but no resolution
    (or no ResolutionUnit), which was carried to the output, and takes YResolution from
    XResolution."""
    try:
        per = {2: 1.0, 3: 2.54}.get(int(exif.get(0x0128, 2)))
        x = exif.get(0x011A)
        if per is None or x is None:
            return None
        y = exif.get(0x011B, x)
        return float(x) * per, float(y) * per
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):  # a malformed tag: no resolution
        return None


def _tiff_dpi(path: Path) -> tuple[float, float] | None:
    """XResolution/YResolution of a TIFF Pillow cannot identify, in dots per inch (tifffile);
    None without them or without a unit (inch or centimetre)."""
    try:
        with open(path, "rb") as fh:
            if fh.read(4) not in _TIFF_MAGIC:
                return None
        with _tiff_file(path) as tf:
            tags = tf.pages.first.tags
            unit = tags.get(296)
            per = {2: 1.0, 3: 2.54}.get(int(unit.value) if unit is not None else 2)
            xr, yr = tags.get(282), tags.get(283)
            if per is None or xr is None or yr is None:
                return None
            x, y = (v.value[0] / v.value[1] if isinstance(v.value, tuple) else float(v.value) for v in (xr, yr))
            return x * per, y * per
    except Exception:  # noqa: BLE001 - no resolution to carry
        return None


#: PNG chunks that describe colour without an ICC profile, carried from a PNG source to PNG outputs.
_PNG_COLOUR_CHUNKS = (b"gAMA", b"cHRM", b"sRGB")


def source_png_colour(path: str | os.PathLike[str]) -> bytes | None:
    """The ``gAMA``, ``cHRM`` and ``sRGB`` chunks of a PNG (as stored: length, type, data, CRC;
    those before its image data, where the specification puts them), or None for a file with
    none of them or no PNG."""
    out = b""
    try:
        with open(path, "rb") as fh:
            if fh.read(8) != _PNG_MAGIC:
                return None
            while True:
                head = fh.read(8)
                if len(head) < 8:
                    break
                length, kind = struct.unpack(">I4s", head)
                if kind in (b"IDAT", b"IEND", b"PLTE"):
                    break
                if kind in _PNG_COLOUR_CHUNKS and length <= 64:
                    body = fh.read(length + 4)
                    if len(body) < length + 4:
                        break
                    out += head + body
                else:
                    fh.seek(length + 4, os.SEEK_CUR)
    except OSError:
        return None
    return out or None


def _tiff_icc(path: Path) -> bytes | None:
    """The ICC profile (tag 34675) of a TIFF Pillow cannot identify, read with tifffile; None
    when it has none or is no TIFF tifffile reads."""
    try:
        with open(path, "rb") as fh:
            if fh.read(4) not in _TIFF_MAGIC:
                return None
        with _tiff_file(path) as tf:
            tag = tf.pages.first.tags.get(34675)
            return bytes(tag.value) if tag is not None and tag.value else None
    except Exception:  # noqa: BLE001 - no profile to carry
        return None


def _icc_key(icc: bytes | None) -> bytes | None:
    """An ICC profile without its creation date (header bytes 24-35) and profile ID (84-99):
    two copies of one profile written at different times compare equal."""
    return None if not icc else icc[:24] + icc[36:84] + icc[100:]


def _png_colour_label(chunks: bytes | None) -> tuple[tuple | None, str]:
    """A comparable key and a label for a PNG's ``sRGB``/``gAMA``/``cHRM`` chunks (as
    :func:`source_png_colour` reads them): the ``sRGB`` chunk, else gamma and chromaticities."""
    found: dict[bytes, bytes] = {}
    i = 0
    while chunks and i + 8 <= len(chunks):
        length, kind = struct.unpack(">I4s", chunks[i:i + 8])
        found.setdefault(kind, chunks[i + 8:i + 8 + length])
        i += 12 + length
    if b"sRGB" in found:
        return ("sRGB",), "a PNG sRGB chunk"
    if not found:
        return None, "none"
    parts = []
    if len(found.get(b"gAMA", b"")) == 4:
        parts.append(f"gamma {struct.unpack('>I', found[b'gAMA'])[0] / 100000:g}")
    if b"cHRM" in found:
        parts.append("chromaticities")
    return ("png", found.get(b"gAMA"), found.get(b"cHRM")), "PNG " + " and ".join(parts or ["colour chunks"])


def png_colour_name(chunks: bytes) -> str:
    """What a PNG's ``sRGB``/``gAMA``/``cHRM`` chunks (:func:`source_png_colour`) say, for a
    line: ``a PNG sRGB chunk``, ``PNG gamma 0.45455 and chromaticities``."""
    return _png_colour_label(chunks)[1]


def _colour_description(path: str | os.PathLike[str], icc: bytes | None) -> tuple[tuple | None, str]:
    """A source's colour description (its ICC profile, else its PNG ``sRGB`` chunk, else its
    ``gAMA``/``cHRM`` chunks) as a comparable key and a label; (None, 'none') without one."""
    if icc:
        return ("icc", _icc_key(icc)), f"the colour profile {icc_name(icc)}"
    return _png_colour_label(source_png_colour(path))


def icc_name(icc: bytes) -> str:
    """An ICC profile's description (its ``desc`` tag, as colour-managed programs list it), in
    quotes and on one line: ``'Display P3'``; ``an ICC profile`` when it cannot be read."""
    try:
        from io import BytesIO

        from PIL import ImageCms

        with _quiet_pillow():
            name = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(BytesIO(icc)))
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - a damaged profile, or Pillow without littleCMS: unnamed
        name = ""
    name = " ".join(str(name or "").split())
    if not name:
        return "an ICC profile"
    return repr(name if len(name) <= 60 else name[:57] + "...")


_ICC_SPACE_NAMES = {b"CMYK": "CMYK", b"GRAY": "gray", b"RGB ": "RGB"}


def profile_notes(paths: Sequence[str | os.PathLike[str]], first_icc: bytes | None,
                  rgb: bool | None = None, output: str | os.PathLike[str] | None = None,
                  high_depth: bool = False) -> list[str]:
    """One line per source after the first whose colour description (ICC profile, else PNG
    ``sRGB`` chunk, else ``gAMA``/``cHRM`` chunks) differs from the first's, or that has one
    where the first has none or the reverse: the result of a fusion carries the first source's
    description (or none), and colours are not converted, so the user is told. ``rgb``: whether
    the result is colour (True) or gray (False); a first profile of another colour space is not
    written (:func:`icc_fits`) and the line says the result carries no profile. ``output`` (and
    ``high_depth``, a uint16 result: :func:`written_metadata`): the file the result is written to;
    the line says what it holds (no profile in a .bmp, no PNG chunks outside a .png); without it,
    that PNG chunks are carried to a .png only."""
    notes: list[str] = []
    first = os.fspath(paths[0])
    key, label = _colour_description(paths[0], first_icc)
    carried = f"{first}'s" if label != "none" else "none"
    keeps = written_metadata(output, high_depth) if output is not None else None
    suffix = Path(output).suffix if output is not None else ""
    if first_icc and rgb is not None and not icc_fits(first_icc, np.zeros((1, 1, 3) if rgb else (1, 1), np.uint8)):
        space = _ICC_SPACE_NAMES.get(bytes(first_icc[16:20]), repr(bytes(first_icc[16:20]).decode("latin-1")))
        carried = f"no profile: {first}'s {space} profile does not fit {'an RGB' if rgb else 'a gray'} image"
    elif first_icc and keeps is not None and "icc" not in keeps:
        carried = f"no profile ({suffix} cannot hold {first}'s)"
    elif label != "none" and not first_icc:
        what = label.removeprefix("a ")
        if keeps is None:
            carried = f"{first}'s {what} if it is a .png"  # other formats cannot hold it
        elif "png_colour" in keeps:
            carried = f"{first}'s {what}"
        else:
            carried = f"no colour description ({suffix} cannot hold {first}'s {what})"
    for p in paths[1:]:
        icc = source_metadata(p)[1]
        k, lab = _colour_description(p, icc)
        if k == key:
            continue
        if icc and first_icc:
            mine, theirs = icc_name(icc), icc_name(first_icc)
            names = (f"{mine}; {first}: {theirs}" if mine != theirs else
                     f"both {mine}, of different contents" if mine.startswith("'") else "neither named")
            what = f"a different colour profile from {first} ({names})"
        elif icc and label == "none":
            what = f"a colour profile ({icc_name(icc)}) and {first} none"
        elif first_icc and lab == "none":
            what = f"no colour profile and {first} one ({icc_name(first_icc)})"
        elif lab == "none":
            what = f"no colour description and {first} {label}"
        elif label == "none":
            what = f"{lab} and {first} no colour description"
        else:
            what = f"a different colour description from {first} ({lab}; {first}: {label})"
        notes.append(f"{os.fspath(p)} has {what}; the result carries {carried} (colours are not converted)")
    return notes


def cmyk_notes(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """One line per CMYK source: it is converted to RGB without colour management."""
    notes: list[str] = []
    for p in paths:
        try:
            with _quiet_pillow(), Image.open(p) as im:
                cmyk = im.mode == "CMYK"
        except Exception:  # noqa: BLE001 - the reader reports what it cannot open
            continue
        if cmyk:
            notes.append(f"{os.fspath(p)} is CMYK: converted to RGB without colour management "
                         "(its colours are approximate)")
    return notes


def unkept_metadata_note(paths: Sequence[str | os.PathLike[str]]) -> str | None:
    """One line naming the kinds of metadata the sources hold that no output keeps (XMP, IPTC,
    JPEG comments: only the first source's EXIF, ICC profile and resolution are written, where the
    output's format holds them: :func:`written_metadata`), or
    None when they hold none. The line names no file, so that ``fuse-dir`` says it once."""
    kinds: list[str] = []
    for p in paths:
        try:
            with _quiet_pillow(), Image.open(p) as im:
                info, tags = im.info, getattr(im, "tag_v2", {})
                found = [("XMP", bool(info.get("xmp") or info.get("XML:com.adobe.xmp") or 700 in tags)),
                         ("IPTC", 0x0404 in (info.get("photoshop") or {}) or 33723 in tags),
                         ("comments", bool(info.get("comment")))]
        except Exception:  # noqa: BLE001 - the reader reports what it cannot open
            continue
        kinds += [k for k, has in found if has and k not in kinds]
    if not kinds:
        return None
    order = ["XMP", "IPTC", "comments"]
    names = [k for k in order if k in kinds]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    verb = "is" if names in (["XMP"], ["IPTC"]) else "are"
    return (f"the sources' {listed} {verb} not kept (an output carries at most the first source's EXIF, ICC "
            "profile and resolution)")


def read_source_set(paths: Sequence[str | os.PathLike[str]], metadata: bool = True) -> SourceSet:
    """Read the sources of one fusion: uint8 images as :func:`read_images`, the full-depth
    uint16 versions when any source has more than 8 bits (scaled by the same bits as the
    uint8 ones, so the two agree), and the first source's EXIF and ICC profile, with notes
    (when ``metadata``, see :attr:`SourceSet.notes`): a source whose profile is not the first's,
    one of several frames or pages, gray sources beside colour ones; always: a float source's
    clipped samples. Floating-point sources share one scale (:func:`float_scale` of the largest
    value over all of them), as unmarked integer sources share one bit depth."""
    out: list[np.ndarray | None] = []
    high: list[tuple[int, np.ndarray, int | None, int]] = []
    significant: list[int] = []  # the marked sources' significant bits (not the bits scaled from)
    floats: list[tuple[int, Path, np.ndarray]] = []  # float sources: scaled alike, below
    for p in paths:
        _check_not_empty(p)
    for p in map(Path, paths):
        raw = _high_depth_array(p) if p.is_file() and unread_format(p) is None else None  # else refused below
        if raw is None:
            low = _read_low(p)
            if low.dtype != np.uint8:
                floats.append((len(out), p, low))
            out.append(low if low.dtype == np.uint8 else None)
            continue
        a, depth, sig, sbit = raw
        out.append(None)
        top = float(a.max()) if a.size else 0.0
        # PNG sBIT: the samples are scaled to the depth unless they cannot be (see above)
        scaled = sbit and sig is not None and 0 < sig < depth and top <= (1 << sig) - 1 and sbit_scaled(a, sig)
        bits = source_bits(top, depth, sig, scaled=scaled)
        high.append((len(out) - 1, a, bits, depth))
        if bits is not None and sig is not None:
            # the mark holds when the values are sig-bit ones or (PNG) on the sBIT grid; values
            # beyond sig bits off that grid have the file's depth (an output written with sig
            # bits lost their levels: an OME-TIFF marked 12 whose values exceed 12 bits)
            holds = bits == sig or (sbit and sbit_scaled(a, sig))
            significant.append(sig if holds else depth)
    clipped: list[str] = []
    if floats:  # one scale for all float sources, from their largest value (as integer ones: one depth)
        scale = float_scale(max((float(a.max()) for _, _, a in floats if a.size), default=0.0))
        for i, p, a in floats:
            out[i], note = float_to_u8(a, scale, p)
            clipped += [note] if note else []
    unmarked = [a for _, a, bits, _ in high if bits is None and a.size]
    shared = common_bits(max(float(a.max()) for a in unmarked)) if unmarked else 8
    full: list[np.ndarray | None] | None = None
    if high:
        full = [None if o is None else o.astype(np.uint16) * np.uint16(257) for o in out]
    for i, a, bits, _ in high:
        b = bits or shared
        out[i] = scale_to_u8(a, b)
        assert full is not None
        full[i] = np.clip(np.round(a / float((1 << b) - 1) * 65535.0), 0, 65535).astype(np.uint16)
    exif, icc, exif_note = _source_metadata(paths[0]) if metadata and paths else (None, None, None)
    images = [o for o in out if o is not None]
    rgb = any(a.ndim == 3 and a.shape[2] >= 3 for a in images)
    notes = profile_notes(paths, icc, rgb) if metadata and len(paths) > 1 else []
    colour_notes = list(notes)
    notes += cmyk_notes(paths) if metadata else []
    unkept = unkept_metadata_note(paths) if metadata else None
    notes += [unkept] if unkept else []
    notes += [exif_note] if exif_note else []
    notes += clipped
    if metadata:
        notes += frame_notes(paths)
        mixed = mix_note([os.fspath(p) for p in paths], [a.ndim == 2 for a in images])
        notes += [mixed] if mixed else []
    bits = max(significant + [shared for _, _, b, _ in high if b is None], default=8)
    # a source read from its file's full depth of 16 bits (sBIT samples scaled up as the PNG
    # specification asks, or 16-bit data) was stored on the 16-bit scale
    full_scale = any((b or shared) >= 16 and depth >= 16 for _, _, b, depth in high)
    dpi = source_dpi(paths[0]) if metadata and paths else None
    png_colour = source_png_colour(paths[0]) if metadata and paths else None
    return SourceSet(images, None if full is None else [f for f in full if f is not None], exif, icc, bits, notes,
                     full_scale, dpi, png_colour, [os.fspath(p) for p in paths] if metadata else [], colour_notes)


def read_image(path: str | os.PathLike[str], *, rgb: bool = False) -> np.ndarray:
    """Read one image file as uint8, by the rules in the module docstring.

    Parameters
    ----------
    path : path-like
        The file (any format Pillow reads; 16-bit colour PNG and TIFF at full precision).
    rgb : bool
        Replicate gray to three channels, so the result is always (H, W, 3).

    Returns
    -------
    numpy.ndarray
        uint8 (H, W) for gray files (L, LA, 1-bit, 16-bit gray), (H, W, 3) otherwise (alpha
        dropped, palette expanded), EXIF orientation applied. A file of more than 8 bits per
        sample is scaled from its marked significant bits, else from the smallest sensor
        depth (8, 10, 12, 14, 16) that holds its largest value; read files that belong
        together with :func:`read_images` instead, so that they are scaled alike.

    Raises
    ------
    InputFileError
        Naming the file when it is missing, not a file, or not a readable image.
    TypeError
        When ``path`` is no path (e.g. an image array).
    """
    return read_images([path], rgb=rgb)[0]


def read_images(paths: Sequence[str | os.PathLike[str]], *, rgb: bool = False) -> list[np.ndarray]:
    """Read files that belong together (the sources of one fusion; the A, B and F of a metric)
    like :func:`read_image`, scaling those of more than 8 bits per sample **alike**: by the
    significant bits a file marks, else by one bit depth common to all the unmarked ones. Files
    of at most 8 bits per sample read exactly as :func:`read_image` reads them alone.

    Parameters
    ----------
    paths : sequence of path-like
        The files, e.g. ``[a, b]`` (any iterable of paths; a single path is an error: use
        :func:`read_image`).
    rgb : bool
        Replicate gray to three channels, so every result is (H, W, 3).

    Returns
    -------
    list of numpy.ndarray
        One uint8 image per file, in order: (H, W) for gray files, (H, W, 3) otherwise, as
        :func:`read_image` describes.

    Raises
    ------
    InputFileError
        Naming the file when one is missing, not a file, or not a readable image.
    TypeError
        When ``paths`` is a single path or holds something other than paths (e.g. an array).
    """
    images = read_source_set(_path_list(paths), metadata=False).images
    return [np.repeat(a[..., None], 3, axis=2) if rgb and a.ndim == 2 else a for a in images]


def _path_list(paths: object) -> list[str | os.PathLike[str]]:
    """``paths`` as a list, or a TypeError saying what was expected: a single path (it was
    walked character by character: '/: not a regular file') or anything but paths (an array
    reached pathlib's own TypeError)."""
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise TypeError(f"read_images expects a list of paths, got the single path {os.fsdecode(paths)!r} "
                        "(use read_image, or read_images([path]))")
    if isinstance(paths, np.ndarray) or not isinstance(paths, Iterable):
        raise TypeError(f"read_images expects a list of paths, got {type(paths).__name__}")
    out = list(paths)
    for p in out:
        if not isinstance(p, (str, os.PathLike)):
            hint = " (an image already read?)" if isinstance(p, np.ndarray) else ""
            raise TypeError(f"expected an image file path (str or os.PathLike), got {type(p).__name__}{hint}")
    return out


def float_scale(top: float | np.ndarray) -> float:
    """The full scale floating-point samples are read on, from their largest value ``top`` (or
    an array's largest): 1.0 when it is below 16 (the usual convention of float images, [0, 1],
    also when processing overshot it), 255 when below 4096, else 65535. The bounds lie between
    the scales on a log scale (16 ~ sqrt(255), 4096 ~ sqrt(255 * 65535)), so data taken on a
    scale it is not on is clipped in large part, which :func:`float_to_u8` says, rather than
    read dark in silence.

    The float sources read together (:func:`read_source_set`, :func:`read_images`) share one
    scale, from the largest value over all of them, as integer sources share one bit depth."""
    top = (float(top.max()) if top.size else 0.0) if isinstance(top, np.ndarray) else float(top)
    return 1.0 if top < 16.0 else 255.0 if top < 4096.0 else 65535.0


def float_to_u8(a: np.ndarray, scale: float, path: str | os.PathLike[str]) -> tuple[np.ndarray, str | None]:
    """Floating-point samples ``a`` on [0, ``scale``] as uint8, ``round(a / scale * 255)``;
    samples outside [0, ``scale``] (negative ones, overshoot) are clipped to it, and the line
    for the user says so (the file, how many samples, their range), None when none is."""
    out = np.clip(np.round(a / scale * 255.0), 0, 255).astype(np.uint8)
    outside = int(np.count_nonzero((a < 0) | (a > scale)))
    if not outside:
        return out, None
    return out, (f"{os.fspath(path)}: {outside} of {a.size} samples ({100 * outside / a.size:.3g} %) lie outside "
                 f"[0, {scale:g}], the scale its floating-point samples are read on (values {a.min():g} to "
                 f"{a.max():g}): clipped to it")


def _read_8bit(path: str | os.PathLike[str]) -> np.ndarray:
    """A file of at most 8 bits per sample, or a 32-bit float one read on its own scale
    (:func:`float_scale`, clipped to it: :func:`float_to_u8`), by the mode rules of the module
    docstring."""
    a = _read_low(path)
    return a if a.dtype == np.uint8 else float_to_u8(a, float_scale(a), path)[0]


def _read_low(path: str | os.PathLike[str]) -> np.ndarray:
    """:func:`_read_8bit` without the float scaling: a 32-bit float file's samples are returned
    as float64, to be scaled with the other float sources read with it
    (:func:`read_source_set`); NaN or infinite values are refused."""
    im = open_image(path)
    try:
        return _low_array(im, path)
    except (ValueError, OSError) as e:  # Pillow's convert of a mode it has no conversion for
        raise InputFileError(path, f"unsupported image mode {im.mode} ({e.__class__.__name__}: {e})") from e


def _low_array(im: Image.Image, path: str | os.PathLike[str]) -> np.ndarray:
    """:func:`_read_low` of the opened image ``im``."""
    if im.mode == "La":  # gray + associated (premultiplied) alpha: divided out (La -> LA), as for RGBa
        im = im.convert("LA")
    if im.mode in ("L", "LA", "1"):
        return np.asarray(im.convert("L"), dtype=np.uint8).copy()
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        if not np.isfinite(a).all():
            raise InputFileError(path, "floating-point image with NaN or infinite values")
        return a
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if a.max() > 255 else 255.0
        return np.clip(np.round(a / hi * 255.0), 0, 255).astype(np.uint8)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
