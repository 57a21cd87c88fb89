"""Writing images: :func:`write_image` (uint8 or uint16, format from the suffix, atomic,
deterministic) and what it needs.

16-bit PNG (:func:`png16_bytes`) and TIFF, the metadata each format keeps
(:func:`written_metadata`, :func:`keeps_16_bits`, :data:`HIGH_DEPTH_SUFFIXES`, :func:`icc_fits`)
and EXIF fitted to the output (its image size; shortened for a JPEG: :func:`fit_jpeg_exif`,
:class:`ExifWarning`).
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from bafusion.atomic import atomic_file
from bafusion.io.depth import _onto_sbit_grid, sbit_scaled, scale_to_u8
from bafusion.io.formats import _quiet_pillow


def write_image(path: str | os.PathLike[str], img: np.ndarray, *, exif: bytes | None = None,
                icc: bytes | None = None, bits: int | None = None,
                dpi: tuple[float, float] | None = None, png_colour: bytes | None = None,
                quality: int | None = None, subsampling: str | None = None) -> None:
    """Write a uint8 or uint16 gray or RGB image atomically; the format follows the suffix
    (.png, .jpg, .tif, .webp, .bmp, or another format Pillow writes); a suffix of no format
    Pillow writes is an error naming the file and those five. A WebP is lossless unless
    ``quality`` is given (the file reads back as ``img``, as a PNG or TIFF does); a JPEG is
    written at quality 95 unless ``quality`` is given, with chroma subsampling 4:4:4 unless
    ``subsampling`` is given. :func:`output_metadata` gives the metadata ``bafusion fuse``
    carries from the first source: ``write_image(out, fused, **output_metadata("near.jpg"))``.

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
        ``iCCP``; JPEG, WebP and TIFF: both, a 16-bit TIFF its camera tags, Exif and GPS
        sub-IFDs, written after tifffile's image, not in a BigTIFF; BMP: neither). Without them
        the file is byte-identical to what it was before they existed, but for a 16-bit TIFF,
        whose Software tag is now ``bafusion <version>``, not tifffile's ``tifffile.py``.
        EXIF over 65,533 bytes, more than a JPEG's APP1 segment holds, is shortened for a
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
        written as the PNG ``sBIT`` chunk (the samples stay on the 16-bit scale, as the PNG
        specification asks), so that :func:`read_images` scales the file like its unmarked
        12-bit sources; ``sBIT`` 16 (``bits`` of 16 or more) marks data on the 16-bit scale,
        read so also when dark and beside 8-bit files (unmarked, its depth is guessed from its
        largest value beside other 16-bit files, and ``bafusion metrics`` refuses it beside
        8-bit sources). The file always reads back as ``img`` on the 16-bit scale:
        when every sample fits in ``bits`` bits (dark data), samples off the scaled grid (see
        :func:`sbit_scaled`; not the case for data of ``bits`` bits scaled by
        ``round(v / (2**bits - 1) * 65535)``, as :func:`read_source_set` scales it) are
        rounded onto it (by at most ``65535 / (2**bits - 1) / 2``), else the reader would
        take them for unscaled ``bits``-bit data. A 16-bit TIFF holds the ``bits``-bit values
        themselves, marked as OME-TIFF ``SignificantBits`` (written with tifffile): it reads
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
    quality : int, optional
        Lossy quality, 1 to 100, of a JPEG (default 95) or WebP (default: lossless, the
        pixels exactly; with it, lossy and smaller); refused for the other formats, which
        are lossless (:func:`output_format_problem`). A WebP has no gray: a gray image is
        stored as RGB of equal channels (gray + alpha as RGBA).
    subsampling : {"4:4:4", "4:2:2", "4:2:0"}, optional
        The chroma subsampling of a colour JPEG (:data:`JPEG_SUBSAMPLING`, 4:4:4, when not
        given; a source JPEG's: :func:`source_subsampling`); other formats, and gray JPEGs,
        have none (it is not used). 4:2:0, Pillow's default, halves the colour resolution
        both ways: on photographs at quality 95 it gave 2.6 dB less PSNR than 4:4:4 for 0.75x
        the bytes, and 4:4:4 at quality 90 beat it at a smaller size (``BENCHMARKS.md``, "JPEG
        chroma subsampling").

    Raises
    ------
    bafusion.errors.UserError
        Naming ``path``, before anything is written: a suffix of no format Pillow writes (a
        ``.webp`` where this Pillow was built without WebP), an image that is not uint8 or
        uint16, of another shape than above, with alpha for a format that cannot store it,
        larger than the format holds (WebP: 16383 x 16383), a ``quality`` the format has no
        use for, a ``subsampling`` not named above, or an image Pillow cannot encode in that
        format.
    bafusion.errors.InputTypeError
        Naming ``path`` and the argument, before anything is written: ``exif``, ``icc`` or
        ``png_colour`` that is not bytes (a str, an ``Image.Exif``), ``bits`` that is not a
        whole number, ``dpi`` that is not a pair of numbers (``dpi=300``); Pillow raised its
        own TypeError, or wrote an unreadable chunk. A :class:`~bafusion.errors.UserError`
        (and :class:`TypeError`).
    OSError
        The file cannot be written (naming ``path``, not its temporary name; a short write is
        ``ENOSPC``). The file is written atomically: on error its temporary file is deleted
        and a file already at ``path`` is left as it was.
    """
    _write_checked(Path(path), _writer(path, img, exif=exif, icc=icc, bits=bits, dpi=dpi, png_colour=png_colour,
                                       quality=quality, subsampling=subsampling))


def _writer(path: str | os.PathLike[str], img: np.ndarray, *, exif: bytes | None = None,
            icc: bytes | None = None, bits: int | None = None,
            dpi: tuple[float, float] | None = None, png_colour: bytes | None = None,
            quality: int | None = None, subsampling: str | None = None) -> Callable[[BinaryIO], int]:
    """:func:`write_image`'s checks (raising as it does, before anything is written) and its
    encoding: what writes the file's bytes to an open file and returns their count (a
    compressed format encoded in memory here already; a 16-bit TIFF written straight)."""
    import io

    from bafusion.errors import UserError

    p = Path(path)
    _check_metadata_arguments(p, exif=exif, icc=icc, bits=bits, dpi=dpi, png_colour=png_colour)
    why = output_format_problem(p, quality=quality)  # a Pillow without WebP, a quality of no use
    if why:
        raise UserError(f"{p}: {why}")
    if subsampling is not None and subsampling not in _SUBSAMPLINGS:
        raise UserError(f"{p}: subsampling must be one of {', '.join(map(repr, _SUBSAMPLINGS))} or None, got "
                        f"{subsampling!r}")
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
    why = output_format_problem(p, shape=img.shape)
    if why:
        raise UserError(f"{p}: {why}")
    if img.ndim == 3 and img.shape[2] in _NO_ALPHA.get(fmt, ()):
        # Pillow raised a bare OSError ('cannot write mode RGBA as JPEG'); the reader drops alpha,
        # but a writer that dropped it in silence would lose what the caller handed it
        keep = "img[..., :3]" if img.shape[2] == 4 else "img[..., 0]"
        raise UserError(f"{p}: {fmt} cannot store an alpha channel (image of shape {img.shape}): pass the image "
                        f"without it ({keep}) or write .png or .tif, which keep it")
    if icc and not icc_fits(icc, img, p):  # as stored: a gray image is RGB in a .webp
        icc = None
    if exif:
        exif = _exif_sized(exif, img.shape[1], img.shape[0])
        if fmt == "JPEG" and len(exif) > _JPEG_MAX_EXIF:
            exif, note = fit_jpeg_exif(exif, p, what="the EXIF given")
            warnings.warn(str(note), ExifWarning, stacklevel=3)  # write_image's caller
    if img.dtype == np.uint16 and not keeps_16_bits(p):
        img = _u16_to_u8_table()[img]  # scale_to_u8(img, 16) by table: no float64 copy (8 bytes a sample)
    if img.dtype == np.uint16 and fmt == "TIFF":
        # tifffile writes straight to the file (the image, of 100+ MB, is not copied into memory)
        return lambda fh: _write_tiff16(fh, img, icc, bits, dpi, exif)
    # encoded in memory, then written with Python's file I/O, which raises on a short write
    # (ENOSPC): Pillow writes a JPEG of quality >= 95 in one write() straight to the file's
    # descriptor and ignores a short one, so a full disk left a cut-off JPEG reported as written.
    # Compressed PNG and JPEG are small in memory; BMP and 8-bit TIFF are not compressed: about
    # the image's size, up to three times that while the buffer grows
    if img.dtype == np.uint16:  # PNG
        sbit = min(bits, 16) if bits and bits > 0 else None  # 16: the 16-bit scale, also when dark
        if sbit and sbit < 16 and int(img.max()) < 1 << sbit and not sbit_scaled(img, sbit):
            img = _onto_sbit_grid(sbit)[img]  # dark and off the grid: would read back as unscaled data
        data: bytes | memoryview = png16_bytes(img, exif=exif, icc=icc, sbit=sbit, dpi=dpi)
        if png_colour:
            data = _after_ihdr(bytes(data), png_colour)
    else:
        kwargs: dict = {"compress_level": PNG_COMPRESS_LEVEL} if fmt == "PNG" else {}
        if fmt == "JPEG":
            kwargs["quality"] = JPEG_QUALITY if quality is None else int(quality)
            kwargs["subsampling"] = JPEG_SUBSAMPLING if subsampling is None else subsampling
        elif fmt == "WEBP":
            # lossless: the pixels exactly, also the colour under fully transparent ones (exact),
            # at the effort WEBP_LOSSLESS_METHOD/_EFFORT; Pillow's default was lossy at quality
            # 80. quality: lossy at that quality
            kwargs.update({"lossless": True, "exact": True, "method": WEBP_LOSSLESS_METHOD,
                           "quality": WEBP_LOSSLESS_EFFORT} if quality is None else {"quality": int(quality)})
        keeps = written_metadata(p)
        if exif and "exif" in keeps:
            kwargs["exif"] = exif
            info = _tiff8_exif_info(exif) if fmt == "TIFF" else None
            if info is not None:  # Pillow's TIFF writer copies an Interoperability IFD's offset as it stands
                kwargs["tiffinfo"] = info
                del kwargs["exif"]
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

    return write


def _check_metadata_arguments(p: Path, *, exif: object, icc: object, bits: object, dpi: object,
                              png_colour: object) -> None:
    """Refuses, naming ``p`` and the argument, metadata arguments of :func:`write_image` of the
    wrong type or value: Pillow raised a TypeError naming neither (``dpi=300``: "'int' object
    is not subscriptable"), or failed deep in its encoder (``exif="abc"``)."""
    from bafusion.errors import InputTypeError, UserError

    for name, value in (("exif", exif), ("icc", icc), ("png_colour", png_colour)):
        if value is not None and not isinstance(value, (bytes, bytearray)):
            hint = " (Image.Exif: pass its .tobytes())" if isinstance(value, Image.Exif) else ""
            raise InputTypeError(f"{p}: {name} must be bytes or None, got {type(value).__name__}{hint}")
    if bits is not None and (isinstance(bits, bool) or not isinstance(bits, (int, np.integer))):
        raise InputTypeError(f"{p}: bits must be a whole number (the significant bits, e.g. 12) or None, got "
                             f"{bits!r}")
    if dpi is None:
        return
    pair = tuple(dpi) if isinstance(dpi, (tuple, list, np.ndarray)) else None
    # numbers.Real: also Pillow's own dpi of a TIFF (IFDRational, as Image.open gives it in
    # .info["dpi"]), a Fraction, numpy's numbers
    if pair is None or len(pair) != 2 or not all(
            isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) for v in pair):
        raise InputTypeError(f"{p}: dpi must be (x, y) dots per inch, a pair of numbers, or None, got {dpi!r}")
    if not all(math.isfinite(float(v)) and float(v) > 0 for v in pair):
        raise UserError(f"{p}: dpi must be (x, y) dots per inch, two finite numbers above 0, got {dpi!r}")


#: The usual suffix of each format of :data:`_WRITTEN_METADATA`: the ones :func:`write_image`
#: names when a suffix names no format it writes.
_USUAL_SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "WEBP": ".webp", "BMP": ".bmp"}
#: What :func:`write_image` stores of the metadata it is given, by Pillow format (:func:`written_metadata`).
_WRITTEN_METADATA = {"PNG": frozenset({"icc", "exif", "dpi", "png_colour"}),
                     "JPEG": frozenset({"icc", "exif", "dpi"}), "TIFF": frozenset({"icc", "exif", "dpi"}),
                     "WEBP": frozenset({"icc", "exif"}), "BMP": frozenset({"dpi"})}


#: Formats :func:`write_image` writes lossily, whose ``quality`` it takes (default: JPEG 95,
#: WebP lossless).
QUALITY_FORMATS = {"JPEG": ".jpg", "WEBP": ".webp"}
#: The quality :func:`write_image` writes a JPEG at when given none.
JPEG_QUALITY = 95
#: zlib's level (0-9) of an 8-bit PNG :func:`write_image` writes (Pillow; the pixels are the
#: same at any level). ``benchmarks/bench_png.py`` (BENCHMARKS.md, "PNG compression level";
#: 6000x4000 RGB, CPU seconds, two runs each, load 10-14 on 2 cores): the development set's
#: photos tiled took 3.24 s at level 6 (Pillow's default, which this was), 1.36 at 3, 1.06 at
#: 1, for 19.8, 20.9 (+6 %) and 21.9 MB; lytro-05 upscaled (smooth) 1.9, 0.95 and 0.70 s for
#: 6.2, 7.6 (+23 %) and 8.2 MB; the same with camera-like noise (sigma 2 levels) 8.4, 2.8 and
#: 1.9 s for 33.3, 37.8 (+14 %) and 39.2 MB. Level 3: a third to a half of level 6's time for
#: 6-23 % more bytes; level 1 saves another 20-30 % of the time for as many bytes again.
PNG_COMPRESS_LEVEL = 3
#: The chroma subsampling :func:`write_image` writes a colour JPEG with when given none (a fusion
#: of JPEG shots keeps the first's: :func:`source_subsampling`). Measured by
#: ``benchmarks/bench_subsampling.py`` (BENCHMARKS.md, "JPEG chroma subsampling"): on 8 lossless
#: colour photographs, at quality 95, 4:4:4 gave 43.05 dB PSNR for 1.34x the bytes of Pillow's
#: default 4:2:0 (40.49 dB); 4:4:4 one quality step lower (90 against 95, 85 against 90, 75
#: against 85) was about as large as 4:2:0 and 0.3-0.8 dB better; saturated 1-pixel colour
#: lines kept 37.2 dB against 8.8 at quality 95.
JPEG_SUBSAMPLING = "4:4:4"
#: The chroma subsamplings :func:`write_image` takes.
_SUBSAMPLINGS = ("4:4:4", "4:2:2", "4:2:0")
#: The largest width and height a WebP holds (libwebp's limit).
WEBP_MAX_SIDE = 16383
#: libwebp's ``method`` (0-6) and ``quality`` (0-100: for a lossless WebP the effort, not a
#: loss) of a lossless WebP: any pair decodes to the same pixels; more effort, a smaller file
#: more slowly. ``benchmarks/bench_webp.py`` (BENCHMARKS.md, "Lossless WebP"; two 6.9-megapixel
#: RGB images, CPU seconds of the encoding, two runs on a loaded machine): Pillow's default
#: (method 4, quality 80) took 2.8-4.5 s, 2.5-3.3x PNG's; quality 40 gives files within 0.03 %
#: of its size in 0.55x its time (3.4-4.8x a level-3 PNG's, 39-44 % smaller; 1.4-1.9x a level-6
#: PNG's, 36 % smaller); quality 25 and under,
#: 2-11 % larger in about PNG's time; method 0, 0.4 s but 20-48 % larger.
WEBP_LOSSLESS_METHOD = 4
WEBP_LOSSLESS_EFFORT = 40


def _webp_supported() -> bool:
    """Whether this Pillow writes WebP (built with libwebp)."""
    from PIL import features

    return bool(features.check("webp"))


def output_format_problem(path: str | os.PathLike[str], *, quality: int | None = None,
                          shape: tuple[int, ...] | None = None) -> str | None:
    """Why :func:`write_image` would refuse to write ``path`` for a reason of its format alone,
    so that commands can say it before any work: a ``.webp`` where this Pillow was built
    without WebP (``PIL.features.check('webp')`` is False), a ``quality`` that is no whole
    number from 1 to 100 or that is given for a format written losslessly (PNG, TIFF, BMP: only
    JPEG and WebP take one), or an image of ``shape`` larger than the format holds (WebP: 16383 x
    16383). None when none of these applies (other problems, an unknown suffix among them,
    :func:`write_image` says itself).

    Parameters
    ----------
    path : str or path-like
        The output file (only its suffix is looked at).
    quality : int, optional
        The lossy quality asked for.
    shape : tuple of int, optional
        The image's shape, (H, W) or (H, W, C).

    Returns
    -------
    str or None
        The reason, without the file's name.
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".webp" and not _webp_supported():
        return ("this Pillow cannot write WebP (it was built without libwebp: PIL.features.check('webp') is False); "
                "install a Pillow with WebP support (PyPI's wheels have it) or write .png or .tif")
    if quality is not None:
        if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= 100:
            return f"quality {quality!r}: give a whole number from 1 to 100"
        fmt = Image.registered_extensions().get(suffix)
        if fmt is not None and fmt in Image.SAVE and fmt not in QUALITY_FORMATS:  # unknown: write_image says so
            return (f"quality {quality}: a {suffix} output takes no quality (only "
                    f"{' and '.join(QUALITY_FORMATS.values())} outputs are written lossily)")
    if shape is not None and suffix == ".webp" and max(shape[:2]) > WEBP_MAX_SIDE:
        return (f"the image is {shape[1]} x {shape[0]} pixels and a WebP holds at most {WEBP_MAX_SIDE} x "
                f"{WEBP_MAX_SIDE}: write .png or .tif")
    return None


def written_metadata(path: str | os.PathLike[str], high_depth: bool = False) -> frozenset[str]:
    """The metadata :func:`write_image` stores in a file of ``path``'s suffix: ``'icc'`` (the ICC
    profile, when it fits the image: :func:`icc_fits`), ``'exif'``, ``'dpi'`` and
    ``'png_colour'`` (PNG ``gAMA``/``cHRM``/``sRGB`` chunks). ``high_depth``: a uint16 image
    (the same answer: a 16-bit TIFF holds EXIF too). A BMP holds the resolution only, a WebP no
    resolution, other formats none of them.

    Parameters
    ----------
    path : str or path-like
        The output file (only its suffix is looked at).
    high_depth : bool
        The image is uint16 (no longer changes the answer).

    Returns
    -------
    frozenset of str
        Some of ``'icc'``, ``'exif'``, ``'dpi'``, ``'png_colour'``; empty for a suffix of no
        format listed above.
    """
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    keeps = _WRITTEN_METADATA.get(fmt or "", frozenset())
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
            with open(tmp, "w+b") as fh:  # (read back: a 16-bit TIFF's EXIF pointers are set after)
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


def icc_fits(icc: bytes, img: np.ndarray, path: str | os.PathLike[str] | None = None) -> bool:
    """Whether the ICC profile ``icc`` describes ``img``'s colour space: its header's data
    colour space (bytes 16-19) is ``'RGB '`` for an RGB or RGBA image, ``'GRAY'`` for a gray
    one (with or without alpha: (H, W), (H, W, 1) or (H, W, 2)); an alpha channel is not part
    of the colour space. With ``path``, the image as a file of that suffix stores it: a .webp
    stores a gray image as RGB, so only an RGB profile fits it there.

    Parameters
    ----------
    icc : bytes
        The profile (one shorter than its 128-byte header fits nothing).
    img : ndarray
        The image, (H, W) or (H, W, C).
    path : str or path-like, optional
        The file the image is written to (only its suffix is looked at).

    Returns
    -------
    bool
    """
    space = bytes(icc[16:20]) if len(icc) >= 128 else b""
    channels = 1 if img.ndim == 2 else img.shape[2] if img.ndim == 3 else 0
    if path is not None and channels in (1, 2) and Path(path).suffix.lower() == ".webp":
        channels += 2  # Pillow writes L as RGB and LA as RGBA to a WebP
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
    """``exif`` made to fit a JPEG's APP1 segment (65,533 bytes) when ``output``
    is a JPEG, with a note for the user when anything is dropped; else ``(exif, None)``.

    A larger block (a camera's MakerNote from a PNG or TIFF source) was left out whole and
    unsaid: now its MakerNote (0x927C) is dropped, then, while still too large, its largest
    remaining tag; the note names what was dropped. A block Pillow cannot rewrite is left out,
    and the note says so. ``what`` names the block in the note (:func:`write_image`: "the
    EXIF given").

    Parameters
    ----------
    exif : bytes or None
        The EXIF block.
    output : str or path-like
        The output file (a JPEG by its suffix, as Pillow registers it).
    what : str
        The block's name in the note.

    Returns
    -------
    exif : bytes or None
        The block as it fits (unchanged when it already fits or ``output`` is no JPEG), or None
        when it could not be shortened.
    note : str or None
        ``"<output>: <what> is written without MakerNote, ... (N bytes, a JPEG holds at most
        65533)"``, or that it is not written; None when nothing was dropped.
    """
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
    """Whether :func:`write_image` writes 16 bits per sample to this file (PNG, TIFF).

    Parameters
    ----------
    path : str or path-like
        The output file (its suffix, in :data:`HIGH_DEPTH_SUFFIXES`, case-insensitively).

    Returns
    -------
    bool
    """
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
    metre) and ``eXIf`` chunks when given; deterministic.

    Parameters
    ----------
    img : ndarray
        uint16 (H, W), or (H, W, C) with C = 1 or 2 (gray, gray + alpha), 3 or 4 (RGB, RGBA).
    exif : bytes, optional
        EXIF block (with or without the ``Exif\\0\\0`` header), as ``eXIf``.
    icc : bytes, optional
        ICC profile, as ``iCCP`` (named "ICC profile", zlib-compressed).
    sbit : int, optional
        Significant bits per sample, as ``sBIT`` (the same for every channel).
    dpi : tuple of (float, float), optional
        Resolution (x, y) in dots per inch, as ``pHYs``.

    Returns
    -------
    bytes
        The PNG file, the chunks right after the header.
    """
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


#: IFD0 tags of an EXIF block a 16-bit TIFF carries as its own (:func:`_tiff16_exif`): Make, Model,
#: Orientation, DateTime, Artist, Copyright, each with its TIFF type for tifffile.
_TIFF16_IFD0_TAGS = {0x010F: "s", 0x0110: "s", 0x0112: "H", 0x0132: "s", 0x013B: "s", 0x8298: "s"}

#: The EXIF and GPS sub-IFD pointer tags.
_EXIF_POINTERS = (0x8769, 0x8825)


def _tiff16_exif(exif: bytes | None) -> tuple[list[tuple], dict[int, dict], str]:
    """What a 16-bit TIFF (written by tifffile, which writes no EXIF) carries of an EXIF block:
    tifffile ``extratags`` of its descriptive IFD0 tags (:data:`_TIFF16_IFD0_TAGS`), its Exif
    (with the Interoperability IFD) and GPS sub-IFDs as dicts (:func:`_append_sub_ifds` writes
    them), and the Software to write (the block's: ``bafusion <version>`` from
    :func:`bafusion.io.source_metadata`; bafusion's when it has none, not tifffile's
    ``tifffile.py``). A block Pillow cannot read or write back gives the sub-IFDs none."""
    from bafusion._version import __version__

    software = f"bafusion {__version__}"
    if not exif:
        return [], {}, software
    try:
        with _quiet_pillow():
            ex = Image.Exif()
            ex.load(exif[6:] if exif.startswith(b"Exif\x00\x00") else exif)
            tags: list[tuple] = []
            for tag, dtype in _TIFF16_IFD0_TAGS.items():
                value = ex.get(tag)
                if dtype == "s" and isinstance(value, (str, bytes)) and value:
                    data = value.encode("utf-8", "replace") if isinstance(value, str) else value
                    tags.append((tag, "s", 0, data.rstrip(b"\0"), True))
                elif dtype == "H" and isinstance(value, int) and 1 <= value <= 8:
                    tags.append((tag, "H", 1, value, True))
            if isinstance(ex.get(0x0131), str) and ex[0x0131].strip("\0 "):
                software = ex[0x0131].strip("\0")
            subs: dict[int, dict] = {}
            for tag in _EXIF_POINTERS:
                sub = dict(ex.get_ifd(tag)) if tag in ex else {}
                if tag == 0x8769 and 0xA005 in sub:
                    sub[0xA005] = dict(ex.get_ifd(0xA005))  # the Interoperability IFD, as a dict
                    if not sub[0xA005]:
                        del sub[0xA005]
                if sub:
                    subs[tag] = sub
            if subs:
                _sub_ifds_bytes(subs, 8)  # one Pillow cannot write back: none of them
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - Pillow's EXIF reader or writer: a malformed block
        return [], {}, software
    return tags, subs, software


def _sub_ifds_bytes(subs: dict[int, dict], start: int) -> tuple[bytes, dict[int, int]]:
    """Little-endian bytes to place at file offset ``start`` holding the sub-IFDs ``subs``
    (pointer tag: dict of tags, as Pillow's EXIF writer writes them) and the file offset of each."""
    ex = Image.Exif()
    ex.endian = "<"  # as tifffile writes (Pillow's default is big-endian)
    for tag, sub in subs.items():
        ex[tag] = sub
    with _quiet_pillow():
        block = ex.tobytes(start)  # b"Exif\0\0", an 8-byte little-endian header, then the IFD at ``start``
    data = block[6 + 8:]
    (count,) = struct.unpack_from("<H", data, 0)
    offsets = {}
    for i in range(count):
        tag, _, _, value = struct.unpack_from("<HHLL", data, 2 + 12 * i)
        offsets[tag] = value
    return data, offsets


def _append_sub_ifds(fh: BinaryIO, subs: dict[int, dict]) -> int:
    """Append the sub-IFDs ``subs`` to the little-endian classic TIFF written to ``fh`` and make
    its first IFD's placeholders (a LONG 0 of the code after each pointer tag, which tifffile
    does not write: no tag lies between them) the pointers to them; the file's new size."""
    fh.seek(0, os.SEEK_END)
    start = fh.tell()
    if start & 1:  # IFDs start on a word boundary
        fh.write(b"\0")
        start += 1
    data, offsets = _sub_ifds_bytes(subs, start)
    fh.write(data)
    fh.seek(4)
    (ifd0,) = struct.unpack("<L", fh.read(4))
    fh.seek(ifd0)
    (count,) = struct.unpack("<H", fh.read(2))
    entries = fh.read(12 * count)
    for i in range(count):
        (code,) = struct.unpack_from("<H", entries, 12 * i)
        if code - 1 in offsets:
            fh.seek(ifd0 + 2 + 12 * i)
            fh.write(struct.pack("<HHLL", code - 1, 4, 1, offsets[code - 1]))  # LONG, one
    fh.seek(0, os.SEEK_END)
    return start + len(data)


def _tiff8_exif_info(exif: bytes) -> dict | None:
    """The tags of an EXIF block with an Interoperability IFD (an Adobe RGB camera's ``R03``)
    as Pillow's TIFF writer writes them whole (``tiffinfo``): its Exif sub-IFD with the
    Interoperability IFD as a dict, and its GPS sub-IFD. Given the block itself, Pillow writes
    the Interoperability pointer's offset within the block, which in the TIFF points at
    whatever lies there. None for a block without one (written as given) or one Pillow cannot
    read."""
    try:
        with _quiet_pillow():
            ex = Image.Exif()
            ex.load(exif[6:] if exif.startswith(b"Exif\x00\x00") else exif)
            if 0x8769 not in ex or 0xA005 not in ex.get_ifd(0x8769):
                return None
            info: dict = dict(ex.items())
            sub = dict(ex.get_ifd(0x8769))
            interop = dict(ex.get_ifd(0xA005))
            if interop:
                sub[0xA005] = interop
            else:
                del sub[0xA005]
            info[0x8769] = sub
            if 0x8825 in ex:
                info[0x8825] = dict(ex.get_ifd(0x8825))
            return info
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - a block Pillow cannot read: written as given
        return None


#: tifffile writes a BigTIFF from this many bytes of image data (``imwrite``'s own threshold).
_BIGTIFF_BYTES = 2**32 - 2**25


def _write_tiff16(fh: BinaryIO, img: np.ndarray, icc: bytes | None, bits: int | None = None,
                  dpi: tuple[float, float] | None = None, exif: bytes | None = None) -> int:
    """Write a 16-bit TIFF of ``img`` (uint16 on the 16-bit scale) to ``fh`` (opened for
    reading too); the end of what was written (the size the file has at least). ``dpi``:
    XResolution/YResolution in dots per inch (else tifffile's 1/1, unit none). ``exif``: the
    EXIF block whose camera tags the file carries (:func:`_tiff16_exif`): Make, Model, DateTime,
    Artist, Copyright and Orientation in its first IFD, its Exif and GPS sub-IFDs appended after
    the image (not in a BigTIFF, of 4 GB of pixels or more), Software as the block states it
    (else ``bafusion <version>``; tifffile's own is ``tifffile.py``).

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
    ifd0_tags, subs, software = _tiff16_exif(exif)
    bigtiff = img.nbytes >= _BIGTIFF_BYTES
    if bigtiff:
        subs = {}  # Pillow writes classic TIFF IFDs only
    # the pointers, set after the image is written (:func:`_append_sub_ifds`): tifffile writes no
    # ExifTag nor GPSTag, so each is a placeholder of the next code, where the pointer sorts
    extratags += ifd0_tags + [(tag + 1, "I", 1, 0, True) for tag in subs]
    common = {"software": software, "bigtiff": bigtiff, "byteorder": "<"}
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
                                         extratags=extratags, returnoffset=True, **common, **layout, **layout_res)
    else:
        offset, count = tifffile.imwrite(fh, img, photometric=photometric, metadata=None, extratags=extratags,
                                         returnoffset=True, **common, **layout, **layout_res)
    end = int(offset) + int(count)
    return max(end, _append_sub_ifds(fh, subs)) if subs else end


@functools.lru_cache(maxsize=16)
def _to_bits_table(bits: int) -> np.ndarray:
    """uint16 table: every 16-bit sample to the ``bits``-bit value ``round(x / 65535 *
    (2**bits - 1))`` (no ties: 65535 is odd); the inverse of :func:`read_source_set`'s
    ``round(v / (2**bits - 1) * 65535)``, so values from ``bits``-bit sources come back exactly."""
    x = np.arange(1 << 16, dtype=np.float64)
    return np.round(x / 65535.0 * float((1 << bits) - 1)).astype(np.uint16)


def image_bytes(path: str | os.PathLike[str], img: np.ndarray) -> bytes:
    """The bytes :func:`write_image` writes to ``path`` for ``img`` (the format by the suffix,
    no metadata), encoded in memory; nothing is written. With :func:`write_bytes` later, the
    same file as :func:`write_image` now: ``bafusion fuse --save-maps`` encodes a stack's maps so
    as each step is done (compressed PNG, about a tenth of the maps' arrays) and writes them
    after the fused image.

    Parameters
    ----------
    path : str or path-like
        The file the bytes are for (its suffix: the format; errors name it).
    img : ndarray
        As for :func:`write_image`.

    Returns
    -------
    bytes

    Raises
    ------
    bafusion.errors.UserError
        As :func:`write_image`, for an image or suffix it refuses.
    """
    import io

    buf = io.BytesIO()
    _writer(path, img)(buf)
    return buf.getvalue()


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` (:func:`image_bytes`) to ``path`` as :func:`write_image` writes a file:
    atomically, a short write reported as ``ENOSPC``, an error naming ``path``.

    Parameters
    ----------
    path : str or path-like
        The file to write.
    data : bytes
        Its content.

    Raises
    ------
    OSError
        The file cannot be written (naming ``path``); a file already there is left as it was.
    """

    def write(fh: BinaryIO) -> int:
        fh.write(data)
        return len(data)

    _write_checked(Path(path), write)
