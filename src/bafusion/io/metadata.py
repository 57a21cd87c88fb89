"""What a source carries besides its pixels, for the output and for the notes to the user.

The first source's EXIF (for the output: :func:`source_metadata`) and ICC profile, its
resolution (:func:`source_dpi`), PNG colour chunks (:func:`source_png_colour`) and JPEG chroma
subsampling (:func:`source_subsampling`), all of them as :func:`write_image`'s keyword
arguments (:func:`output_metadata`); names of profiles and chunks (:func:`icc_name`,
:func:`png_colour_name`); the notes when sources differ in colour description
(:func:`profile_notes`) or resolution (:func:`dpi_notes`), are CMYK (:func:`cmyk_notes`) or hold
metadata no output keeps (:func:`unkept_metadata_note`).
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from bafusion.io.depth import _PNG_MAGIC, _TIFF_MAGIC
from bafusion.io.formats import (
    _ORIENTATION,
    _damaged_or,
    _quiet_pillow,
    _tiff_file,
    header_exif,
    header_orientation,
    pillow_open,
)
from bafusion.io.write import icc_fits, written_metadata


#: Descriptive baseline TIFF tags carried from a TIFF source (not its layout tags): Make, Model,
#: Orientation, DateTime, Artist, Copyright. Not its ImageDescription, which a TIFF writer fills
#: with its own record of the file (tifffile's '{"shape": [...]}', ImageJ's, OME-XML, a raw
#: converter's note): it would describe the source, not the output. Its Software is replaced
#: (:func:`_exif_for_output`).
_DESCRIPTIVE_TAGS = (0x010F, 0x0110, 0x0112, 0x0132, 0x013B, 0x8298)

#: EXIF tags of the program that wrote a file: Software (IFD0), replaced by bafusion's name in
#: the EXIF an output carries, and ProcessingSoftware, dropped (:func:`_exif_for_output`).
_SOFTWARE, _PROCESSING_SOFTWARE = 0x0131, 0x000B


#: EXIF orientations that turn the image by 90 degrees (transpose, rotate, transverse): the
#: stored x axis is the turned image's y axis, so a resolution (x, y) reads (y, x) turned.
_TURNING = (5, 6, 7, 8)

#: IFD0 XResolution and YResolution.
_XRES, _YRES = 0x011A, 0x011B


def _exif_for_output(exif: Image.Exif) -> None:
    """Make the first source's EXIF (changed in place) the output's: the orientation reset to 1
    (the pixels are turned on reading; XResolution and YResolution swapped where the orientation
    turned them by 90 degrees), Software naming bafusion, which wrote the output, not
    the camera's firmware or the converter that wrote the source, and no ProcessingSoftware. The
    camera, exposure, date and GPS tags -- why the EXIF is carried -- are kept."""
    from bafusion._version import __version__

    if _ORIENTATION in exif:
        if exif.get(_ORIENTATION) in _TURNING:
            # the pixels are turned by 90 degrees: the resolution across is the one stored down
            try:
                x, y = exif[_XRES], exif[_YRES]
                float(x), float(y)
            except (KeyError, TypeError, ValueError):  # absent, or malformed (text: dropped later, said)
                pass
            else:
                exif[_XRES], exif[_YRES] = y, x
        exif[_ORIENTATION] = 1
    exif.pop(_PROCESSING_SOFTWARE, None)
    exif[_SOFTWARE] = f"bafusion {__version__}"


def _tiff_exif(tags: Image.Exif) -> Image.Exif:
    new = Image.Exif()
    for tag in _DESCRIPTIVE_TAGS:
        if tag in tags:
            new[tag] = tags[tag]
    for ifd in (0x8769, 0x8825):  # the Exif and GPS sub-IFDs
        sub = dict(tags.get_ifd(ifd)) if ifd in tags else {}
        if ifd == 0x8769 and 0xA005 in sub:
            # the Interoperability IFD (an Adobe RGB shot's R03) as its tags: its offset is the
            # source file's, and pointed into the output's block at whatever lay there
            try:
                interop = dict(tags.get_ifd(0xA005))
            except Exception:  # noqa: BLE001 - an unreadable one: left out
                interop = {}
            if interop:
                sub[0xA005] = interop
            else:
                del sub[0xA005]
        if sub:
            new[ifd] = sub
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
    when the rest still cannot be written): :func:`_source_metadata` says so.

    Parameters
    ----------
    path : str or path-like
        The image file.

    Returns
    -------
    exif : bytes or None
        The EXIF block to write (orientation 1, Software naming bafusion), or None.
    icc : bytes or None
        The ICC profile, or None.
    """
    return _source_metadata(path)[:2]


def _source_metadata(path: str | os.PathLike[str]) -> tuple[bytes | None, bytes | None, str | None]:
    """:func:`source_metadata` and the note for the user when EXIF tags (or the block) were dropped."""
    try:
        with _quiet_pillow(), pillow_open(path) as im:
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
    300 dpi as 11811 reads 299.9994, 96 dpi as 3780 reads 96.0119). The resolution is the one
    of the image as read, turned by its EXIF orientation: where that turns it by 90 degrees
    (orientations 5 to 8) the stored x and y are swapped (a JPEG stored 300 x 150 dpi with
    orientation 6 gives (150, 300)).

    Parameters
    ----------
    path : str or path-like
        The image file (a file that cannot be read gives None).

    Returns
    -------
    tuple of (float, float) or None
        (x, y) dots per inch of the turned image, both finite and positive.
    """
    def whole(v: float) -> float:
        return float(round(v)) if abs(v - round(v)) < 0.013 else float(v)

    try:
        with _quiet_pillow(), pillow_open(path) as im:
            dpi = im.info.get("dpi")
            turned = header_orientation(im, path) in _TURNING
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
        dpi, turned = _tiff_dpi(Path(path)), _tiff_turned(Path(path))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    try:
        x, y = (float(v) for v in dpi)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(x) and math.isfinite(y) and x > 0 and y > 0):
        return None
    return (whole(y), whole(x)) if turned else (whole(x), whole(y))


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


def _tiff_turned(path: Path) -> bool:
    """Whether a TIFF Pillow cannot identify has an Orientation (5 to 8) that turns it by 90
    degrees, as its reader applies it (tifffile)."""
    try:
        with _tiff_file(path) as tf:
            tag = tf.pages.first.tags.get(_ORIENTATION)
            return tag is not None and isinstance(tag.value, int) and int(tag.value) in _TURNING
    except Exception:  # noqa: BLE001 - no orientation: as stored
        return False


#: PNG chunks that describe colour without an ICC profile, carried from a PNG source to PNG outputs.
_PNG_COLOUR_CHUNKS = (b"gAMA", b"cHRM", b"sRGB")


def source_png_colour(path: str | os.PathLike[str]) -> bytes | None:
    """The ``gAMA``, ``cHRM`` and ``sRGB`` chunks of a PNG (as stored: length, type, data, CRC;
    those before its image data, where the specification puts them), or None for a file with
    none of them or no PNG.

    Parameters
    ----------
    path : str or path-like
        The file (a file that cannot be opened gives None).

    Returns
    -------
    bytes or None
        The chunks, concatenated in file order (each of at most 64 bytes of data).
    """
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


#: JPEG chroma subsampling by the number :func:`PIL.JpegImagePlugin.get_sampling` gives (the
#: names :func:`write_image`'s ``subsampling`` takes).
_SAMPLING_NAMES = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}


def source_subsampling(path: str | os.PathLike[str]) -> str | None:
    """The chroma subsampling of a colour JPEG: ``"4:4:4"``, ``"4:2:2"`` or ``"4:2:0"``
    (:func:`PIL.JpegImagePlugin.get_sampling`); None for another format, a gray or CMYK JPEG, a
    sampling of another kind (4:1:1, 4:4:0) or a file that cannot be opened; None too for a
    4:2:2 JPEG whose EXIF orientation turns it by 90 degrees (orientations 5 to 8, a portrait
    shot of a 4:2:2 camera): as read, turned, its colour is halved vertically (4:4:0), not
    horizontally, and written 4:2:2 it would be halved both ways. A JPEG output of a fusion is
    written with the first source's (:func:`output_metadata`; None: 4:4:4): a 4:4:4 camera
    JPEG's colour detail is not halved.

    Parameters
    ----------
    path : str or path-like
        The image file.

    Returns
    -------
    str or None
    """
    from PIL import JpegImagePlugin

    try:
        with _quiet_pillow(), pillow_open(path) as im:
            if im.format not in ("JPEG", "MPO"):
                return None
            name = _SAMPLING_NAMES.get(JpegImagePlugin.get_sampling(im))
            if name == "4:2:2" and header_orientation(im, path) in _TURNING:  # read turned: 4:4:0
                return None
            return name
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - the reader reports what it cannot open
        return None


def output_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What ``bafusion fuse`` writes of the first source into its output, as keyword arguments
    of :func:`write_image`: ``write_image("fused.jpg", fuse("near.jpg", "far.jpg"),
    **output_metadata("near.jpg"))`` writes the array :func:`bafusion.fuse` returns with
    near.jpg's EXIF (orientation reset to 1, Software naming bafusion: :func:`source_metadata`),
    ICC profile, resolution (:func:`source_dpi`), PNG colour chunks (:func:`source_png_colour`)
    and, for a JPEG output, its chroma subsampling (:func:`source_subsampling`), each where the
    output's format holds it (:func:`written_metadata`). Without the profile, colour-managed
    viewers show a wide-gamut (Display P3, Adobe RGB) shot's fusion as sRGB: desaturated. Not
    the significant bits of a uint16 fusion (PNG ``sBIT``, which ``bafusion fuse`` writes from
    all the shots: :func:`write_image`'s ``bits``), which are no metadata of the first shot.

    Parameters
    ----------
    path : str or path-like
        The source file whose metadata the output carries (the first shot).

    Returns
    -------
    dict
        ``exif``, ``icc`` (bytes or None), ``dpi`` ((x, y) or None), ``png_colour`` (bytes or
        None) and ``subsampling`` (str or None).
    """
    exif, icc = source_metadata(path)
    return {"exif": exif, "icc": icc, "dpi": source_dpi(path), "png_colour": source_png_colour(path),
            "subsampling": source_subsampling(path)}


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
    line: ``a PNG sRGB chunk``, ``PNG gamma 0.45455 and chromaticities``.

    Parameters
    ----------
    chunks : bytes
        The chunks, as :func:`source_png_colour` returns them.

    Returns
    -------
    str
    """
    return _png_colour_label(chunks)[1]


def _colour_description(path: str | os.PathLike[str], icc: bytes | None) -> tuple[tuple | None, str]:
    """A source's colour description (its ICC profile, else its PNG ``sRGB`` chunk, else its
    ``gAMA``/``cHRM`` chunks, else Adobe RGB stated in its EXIF: :func:`_exif_adobe_rgb`) as a
    comparable key and a label; (None, 'none') without one (an EXIF stating sRGB, or none, is
    the untagged default: sRGB)."""
    if icc:
        return ("icc", _icc_key(icc)), f"the colour profile {icc_name(icc)}"
    key, label = _png_colour_label(source_png_colour(path))
    if key is None and _exif_adobe_rgb(path):
        return ("exif", "Adobe RGB"), _EXIF_ADOBE_LABEL
    return key, label


#: The label of a colour description that is Adobe RGB stated in EXIF (:func:`_exif_adobe_rgb`).
_EXIF_ADOBE_LABEL = "Adobe RGB stated in its EXIF"


def _exif_adobe_rgb(path: str | os.PathLike[str]) -> bool:
    """Whether a file's EXIF states Adobe RGB without an ICC profile, as cameras set to Adobe RGB
    write their JPEGs: ColorSpace (0xA001) 0xFFFF, uncalibrated, with the interoperability index
    ``R03`` (DCF's Adobe RGB option file), or ColorSpace 2 (written by some cameras for Adobe
    RGB). Colour-managed viewers show such a shot in Adobe RGB; one beside an sRGB shot was fused
    unsaid. False when the file or its EXIF cannot be read."""
    try:
        with _quiet_pillow(), pillow_open(path) as im:
            exif = header_exif(im, path)
            if not exif or 0x8769 not in exif:
                return False
            space = exif.get_ifd(0x8769).get(0xA001)
            if space == 2:
                return True
            if space != 0xFFFF:
                return False
            index = exif.get_ifd(0xA005).get(0x0001)
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - an EXIF Pillow cannot read: no colour space stated
        return False
    if isinstance(index, bytes):
        index = index.decode("latin-1")
    return isinstance(index, str) and index.strip("\0 ").upper() == "R03"


def icc_name(icc: bytes) -> str:
    """An ICC profile's description (its ``desc`` tag, as colour-managed programs list it), in
    quotes and on one line: ``'Display P3'``; ``an ICC profile`` when it cannot be read.

    Parameters
    ----------
    icc : bytes
        The profile.

    Returns
    -------
    str
        The quoted description (cut to 60 characters with ``...``), or ``"an ICC profile"``.
    """
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
                  high_depth: bool = False, *, array: bool = False) -> list[str]:
    """One line per source after the first whose colour description (ICC profile, else PNG
    ``sRGB`` chunk, else ``gAMA``/``cHRM`` chunks, else Adobe RGB stated in its EXIF, as cameras
    set to Adobe RGB write JPEGs without a profile) differs from the first's, or that has one
    where the first has none or the reverse: the result of a fusion carries the first source's
    description (or none), and colours are not converted, so the user is told. ``rgb``: whether
    the result is colour (True) or gray (False); a first profile of another colour space is not
    written (:func:`icc_fits`) and the line says the result carries no profile. ``output`` (and
    ``high_depth``, a uint16 result: :func:`written_metadata`): the file the result is written to;
    the line says what it holds (no profile in a .bmp, no gray profile in a .webp, which stores a
    gray result as RGB, no PNG chunks outside a .png); without it, that PNG chunks are carried to
    a .png only. ``array``: the result is an array, not a file (:func:`bafusion.fuse`): the line
    says that colours are not converted and nothing of what a file would carry.

    Parameters
    ----------
    paths : sequence of str or path-like
        The source files.
    first_icc : bytes or None
        The first source's ICC profile (as :func:`source_metadata` reads it).
    rgb : bool or None
        The result is colour (True) or gray (False); None: not known (no fit check).
    output : str or path-like, optional
        The file the result is written to.
    high_depth : bool
        The result is uint16.
    array : bool
        The result is an array (``output`` is not looked at): ``"...; colours are not converted
        (the fused array holds each shot's values as stored)"``.

    Returns
    -------
    list of str
        One line per source whose description differs, in the order of ``paths``.
    """
    notes: list[str] = []
    first = os.fspath(paths[0])
    key, label = _colour_description(paths[0], first_icc)
    carried = f"{first}'s" if label != "none" else "none"
    keeps = written_metadata(output, high_depth) if output is not None else None
    suffix = Path(output).suffix if output is not None else ""
    like = np.zeros((1, 1, 3) if rgb else (1, 1), np.uint8)
    fits = bool(first_icc) and rgb is not None and icc_fits(first_icc, like)
    stored = bool(first_icc) and rgb is not None and icc_fits(first_icc, like, output)  # a .webp: gray as RGB
    if first_icc and rgb is not None and not fits and not stored:
        space = _ICC_SPACE_NAMES.get(bytes(first_icc[16:20]), repr(bytes(first_icc[16:20]).decode("latin-1")))
        carried = f"no profile: {first}'s {space} profile does not fit {'an RGB' if rgb else 'a gray'} image"
    elif first_icc and keeps is not None and "icc" not in keeps:
        carried = f"no profile ({suffix} cannot hold {first}'s)"
    elif fits and not stored:
        carried = f"no profile ({suffix} cannot hold {first}'s: it stores a gray result as RGB)"
    elif key == ("exif", "Adobe RGB"):  # carried in the EXIF, where the output holds it
        if keeps is None:
            carried = f"{first}'s EXIF, which states Adobe RGB, where its format holds EXIF"
        elif "exif" in keeps:
            carried = f"{first}'s EXIF, which states Adobe RGB"
        else:
            carried = f"no colour description ({suffix} cannot hold {first}'s EXIF, which states Adobe RGB)"
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
        if array:
            notes.append(f"{os.fspath(p)} has {what}; colours are not converted (the fused array holds each shot's "
                         "values as stored)")
        else:
            notes.append(f"{os.fspath(p)} has {what}; the result carries {carried} (colours are not converted)")
    return notes


def _dpi_text(dpi: tuple[float, float] | None) -> str:
    if dpi is None:
        return "no resolution"
    x, y = dpi
    return f"{x:g} dpi" if math.isclose(x, y, rel_tol=1e-3) else f"{x:g}x{y:g} dpi"


def dpi_notes(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """One line per source after the first whose resolution (:func:`source_dpi`) differs from
    the first's, or that states one where the first states none or the reverse: an output
    states the first source's resolution (or none), as every other metadata of the first, and
    the user is told, as for a differing colour profile (a 72 dpi shot beside a 300 dpi one is
    printed at the first's size).

    Parameters
    ----------
    paths : sequence of str or path-like
        The source files, the first the one whose resolution an output carries.

    Returns
    -------
    list of str
        ``"<file> states 72 dpi, <first> 300 dpi: the output states <first>'s"`` (``no
        resolution``, ``300x150 dpi``; ``the output states none`` when the first states none).
    """
    if len(paths) < 2:
        return []
    first = os.fspath(paths[0])
    mine = source_dpi(paths[0])
    notes: list[str] = []
    for p in paths[1:]:
        theirs = source_dpi(p)
        same = (mine is None and theirs is None) or (
            mine is not None and theirs is not None
            and all(math.isclose(u, v, rel_tol=1e-3) for u, v in zip(mine, theirs)))
        if same:
            continue
        told = f"{first}'s" if mine is not None else "none"
        notes.append(f"{os.fspath(p)} states {_dpi_text(theirs)}, {first} {_dpi_text(mine)}: the output states {told}")
    return notes


def cmyk_notes(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """One line per CMYK source: it is converted to RGB without colour management.

    Parameters
    ----------
    paths : sequence of str or path-like
        The source files.

    Returns
    -------
    list of str
        ``"<file> is CMYK: converted to RGB without colour management (its colours are
        approximate)"`` per CMYK source; files Pillow cannot open are skipped.
    """
    notes: list[str] = []
    for p in paths:
        try:
            with _quiet_pillow(), pillow_open(p) as im:
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
    None when they hold none. The line names no file, so that ``fuse-dir`` says it once.

    Parameters
    ----------
    paths : sequence of str or path-like
        The source files.

    Returns
    -------
    str or None
    """
    kinds: list[str] = []
    for p in paths:
        try:
            with _quiet_pillow(), pillow_open(p) as im:
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
