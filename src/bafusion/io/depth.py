"""Sources of more than 8 bits per sample: their depth, significant bits and scaling.

:func:`png_depth`, the readers of 16-bit PNG and TIFF samples (pypng, tifffile), the bits a
source is scaled from (:func:`source_bits`, :func:`sbit_scaled`, :func:`common_bits`,
:data:`SENSOR_BITS`) and :func:`scale_to_u8`; the rules are in the comment below, the reader
that applies them is :func:`bafusion.io.read_source_set`.
"""

from __future__ import annotations

import functools
import math
import os
import re
import struct
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from bafusion.errors import InputFileError
from bafusion.io.formats import (
    _ORIENTATION,
    _alpha_opaque,
    _damaged_or,
    _quiet_pillow,
    _tiff_file,
    _too_large,
    header_orientation,
    open_image,
    pillow_open,
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
#   fits in 8 bits, as before), so that A and B are never scaled differently;
# * except beside an 8-bit source (a camera JPEG): an unmarked one of up to 16 bits is then
#   scaled from its file's depth, its full scale, as raw converters write their 16-bit TIFFs
#   and PNGs (by its largest value, a dark export read as 14- or 12-bit data: 4x / 16x too
#   bright beside the JPEG, a false exposure difference); with the metadata, a note says so
#   when its values would fit fewer bits (unscaled camera values: mark them, see above).
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
    from its chunks before the image data; None when it is not a PNG.

    Parameters
    ----------
    path : str or path-like
        The file (read up to its first image data chunk).

    Returns
    -------
    tuple of (int, int, int or None), or None
        ``(depth, colour_type, sig)``: the IHDR's bits per sample and colour type, and the
        largest of the colour channels' ``sBIT`` values (not alpha's) or None without one.
    """
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


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an array read without Pillow as ``ImageOps.exif_transpose`` turns an image."""
    ops = {
        2: lambda x: x[:, ::-1], 3: lambda x: x[::-1, ::-1], 4: lambda x: x[::-1],
        5: lambda x: np.swapaxes(x, 0, 1), 6: lambda x: np.rot90(x, -1),
        7: lambda x: np.swapaxes(x[::-1, ::-1], 0, 1), 8: lambda x: np.rot90(x, 1),
    }
    return np.ascontiguousarray(ops[orientation](a)) if orientation in ops else a


def _read_png16(path: Path, opaque: dict[str, bool | None] | None = None) -> np.ndarray:
    """The raw samples of a 16-bit gray/colour PNG (float64, (H, W) or (H, W, 3), alpha dropped).
    ``opaque``: where given and the PNG has an alpha channel, ``opaque[os.fspath(path)]`` is set
    to whether it is opaque everywhere (as :func:`bafusion.io.info._alpha_opaque` tells Pillow's
    images; exact here, where Pillow sees the high byte)."""
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
    if opaque is not None and planes in (2, 4):
        opaque[os.fspath(path)] = bool(a[..., -1].min() >= (1 << int(info["bitdepth"])) - 1) if a.size else True
    return a[..., 0] if planes <= 2 else a[..., :3]


_HIGH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _ppm_colour_maxval(im: Image.Image) -> int | None:
    """The maxval of a netpbm colour file (PPM, P6 or plain P3) of more than 8 bits, from the
    header Pillow read (its tile's arguments); None for other files. Pillow decodes such a file
    onto 8 bits (mode RGB): read whole by :func:`_read_ppm16`."""
    if im.format != "PPM" or im.mode != "RGB" or len(im.tile) != 1:
        return None
    tile = im.tile[0]
    args = tile.args if isinstance(tile.args, tuple) else (tile.args,)
    maxval = args[-1] if args else None
    return maxval if tile.codec_name in ("ppm", "ppm_plain") and isinstance(maxval, int) and maxval > 255 else None


def _read_ppm16(path: Path, offset: int, maxval: int, plain: bool, size: tuple[int, int]) -> np.ndarray:
    """The samples of a colour PPM of maxval over 255 (binary P6: two bytes a sample, big-endian;
    plain P3: decimal numbers) as float64 (H, W, 3) on the 16-bit scale, each ``round(v / maxval
    * 65535)`` (values over maxval taken as maxval), as Pillow decodes a gray PGM of such a maxval
    (:func:`_high_depth_array`)."""
    w, h = size
    n = w * h * 3
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
        if plain:
            text = b"\n".join(line.split(b"#", 1)[0] for line in data.splitlines())
            v = np.array(text.split()[:n], dtype=np.int64)
        else:
            v = np.frombuffer(data[: 2 * min(n, len(data) // 2)], dtype=">u2").astype(np.int64)
    except (OSError, ValueError) as e:
        raise InputFileError(path, f"unreadable {maxval}-maxval PPM ({e.__class__.__name__}: {e})") from e
    if v.size < n:
        raise InputFileError(path, f"damaged PPM: {v.size} of its {n} samples (the file is cut short)")
    return np.minimum(np.round(np.minimum(v, maxval) / maxval * 65535), 65535).reshape(h, w, 3)


def _read_tiff_samples(path: Path, depth: int, opaque: dict[str, bool | None] | None = None) -> np.ndarray:
    """The samples of a TIFF of more than 8 bits read with tifffile (a scikit-image
    dependency): gray (H, W) or RGB (H, W, 3), float64, alpha and other extra samples dropped,
    not yet turned by the orientation; a colour space other than RGB or gray is refused.
    ``opaque``: where given and the TIFF has an alpha sample (associated or not),
    ``opaque[os.fspath(path)]`` is set to whether it is opaque everywhere."""
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
            # the first alpha sample, associated or not (an unspecified extra sample is no alpha)
            alpha_at = next((colours + k for k, e in enumerate(extra) if e in (1, 2)), None)
            raw = page.asarray()
            full = float(np.iinfo(raw.dtype).max) if raw.dtype.kind in "ui" else 1.0
            a = np.asarray(raw, dtype=np.float64)
            del raw
    except InputFileError:
        raise
    except Exception as e:  # noqa: BLE001 - tifffile raises many types for bad files
        raise InputFileError(path, f"unreadable {depth}-bit TIFF ({e.__class__.__name__}: {e})") from e
    if a.ndim == 3 and planar:  # (samples, H, W); a guess by shape took a 3-4 px tall image for one
        a = np.moveaxis(a, 0, -1)
    if opaque is not None and alpha_at is not None and a.ndim == 3 and a.shape[2] > alpha_at:
        opaque[os.fspath(path)] = bool(a[..., alpha_at].min() >= full) if a.size else True
    if assoc is not None and a.ndim == 3 and a.shape[2] > assoc:
        a = _unpremultiplied(a[..., :colours], a[..., assoc], full)
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


def _tiff16_without_pillow(path: Path, opaque: dict[str, bool | None] | None = None,
                           ) -> tuple[np.ndarray, int, int | None, bool] | None:
    """A TIFF of 16-bit samples that Pillow cannot identify, read with tifffile as
    :func:`_high_depth_array` returns it: above all 16-bit gray + alpha (Photoshop's and GIMP's
    gray with transparency; Pillow has no mode for it), read as 16-bit gray, alpha dropped.
    None for anything else (not a TIFF, one tifffile cannot open either, other sample
    formats): the 8-bit reader then says why it is not read (:func:`_tiff_problem`). Pillow's
    decompression-bomb limit holds here too. ``opaque``: as for :func:`_read_tiff_samples`."""
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
    a = _read_tiff_samples(path, depth, opaque)
    return _orient(a, orientation), depth, (int(m.group(1)) if m else None), False


def _pillow_high(path: Path, opaque: dict[str, bool | None] | None = None) -> np.ndarray:
    """A 16/32-bit gray source as Pillow decodes it (float64); ``opaque``: as for
    :func:`_high_depth_array` (a transparent gray value, ``tRNS``)."""
    im = open_image(path)
    if opaque is not None:
        opaque[os.fspath(path)] = _alpha_opaque(im)
    return np.asarray(im, dtype=np.float64)


def _high_depth_array(path: Path, opaque: dict[str, bool | None] | None = None,
                      ) -> tuple[np.ndarray, int, int | None, bool] | None:
    """The raw samples of a source stored with more than 8 bits (gray (H, W) or colour
    (H, W, 3), float64), the file's depth, its marked significant bits and whether they are a
    PNG ``sBIT`` (samples scaled up to the depth by the specification); None for a file of
    at most 8 bits per sample, or one Pillow cannot open (both left to the 8-bit reader), except
    a 16-bit TIFF Pillow cannot identify (:func:`_tiff16_without_pillow`). ``opaque``: where
    given, ``opaque[os.fspath(path)]`` is set to whether the transparency the reader drops (an
    alpha channel, a 16-bit gray PNG's transparent value) leaves every pixel opaque, where it
    has some (:func:`bafusion.io.info._alpha_opaque`)."""
    try:
        with _quiet_pillow(), pillow_open(path) as im:  # the header only
            fmt, mode = im.format, im.mode
            tiff = _tiff_depth(im) if fmt == "TIFF" else None
            orientation = header_orientation(im, path)
            ppm = _ppm_colour_maxval(im)
            if ppm is not None:
                ppm_tile, ppm_size = im.tile[0], im.size
    except Image.DecompressionBombError as e:
        raise _too_large(path, e) from e
    except UnidentifiedImageError:
        return _tiff16_without_pillow(path, opaque)
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
            return _pillow_high(path, opaque), depth, sig, True
        return _orient(_read_png16(path, opaque), orientation), depth, sig, True  # colour: Pillow gives the high byte only
    if tiff is not None and tiff[0] > 8 and mode != "F":
        depth, sig = tiff
        if mode in _HIGH_MODES:
            return _pillow_high(path, opaque), depth, sig, False
        # Pillow gives colour TIFFs' high byte only
        return _orient(_read_tiff_samples(path, depth, opaque), orientation), depth, sig, False
    if fmt == "PPM" and mode == "I":
        # a netpbm gray file of maxval over 255 (PGM, PFM aside): Pillow decodes every maxval onto
        # 0..65535 (65535 as stored, others scaled by value / maxval * 65535), so the samples are on
        # the 16-bit scale, which the file marks: read so, also when dark (taken as unmarked 32-bit
        # values, a dark 10- or 16-bit PGM was read by its largest value, 4x too bright, beside a
        # JPEG too)
        return _pillow_high(path, opaque), 16, 16, False
    if ppm is not None:
        # a colour PPM of maxval over 255: Pillow decodes it onto 8 bits (a 16-bit PPM became an
        # 8-bit fusion, unsaid); read onto the 16-bit scale as the gray PGM above, 16-bit as a
        # 16-bit PNG or TIFF is
        return (_read_ppm16(path, ppm_tile.offset, ppm, ppm_tile.codec_name == "ppm_plain", ppm_size),
                16, 16, False)
    if mode in _HIGH_MODES:  # other formats of 16/32-bit gray
        return _pillow_high(path, opaque), 16 if mode.startswith("I;16") else 32, None, False
    return None


def _deep_alpha(path: str | os.PathLike[str]) -> tuple[np.ndarray, float] | None:
    """The alpha channel of a PNG or TIFF of more than 8 bits per sample at its full depth,
    which the image readers drop and Pillow truncates (a 16-bit PNG's alpha decoded to its high
    byte) or does not read (16-bit gray + alpha TIFF): for :func:`bafusion.io.read_matte`.

    Parameters
    ----------
    path : str or path-like
        The file.

    Returns
    -------
    tuple of (ndarray, float), or None
        The alpha samples (float64, (H, W), the file's orientation applied as the readers apply
        it) and their value of full opacity (65535 for 16-bit samples, the integer maximum of
        deeper ones, 1.0 for floating-point ones); None for a file of at most 8 bits per sample
        (Pillow's alpha is exact there), one without an alpha channel, of another format, or
        one not read (the image reader says why).
    """
    path = Path(path)
    try:
        depth = png_depth(path)
    except OSError:
        return None
    if depth is not None:  # a PNG: 16-bit gray + alpha (colour type 4) or RGBA (6)
        if depth[0] <= 8 or depth[1] not in (4, 6):
            return None
        try:
            with _quiet_pillow(), pillow_open(path) as im:
                orientation = header_orientation(im, path)
            import png  # pypng, as _read_png16

            with open(path, "rb") as fh:
                w, h, rows, info = png.Reader(file=fh).read()
                a = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows])
        except Exception:  # noqa: BLE001 - pypng's own errors: the image reader said why
            return None
        alpha = a.reshape(h, w, int(info["planes"]))[..., -1].astype(np.float64)
        return _orient(alpha, orientation), float((1 << int(info["bitdepth"])) - 1)
    try:
        with open(path, "rb") as fh:
            if fh.read(4) not in _TIFF_MAGIC:
                return None
        import tifffile

        with _tiff_file(path) as tf:
            page = tf.pages.first
            if int(page.bitspersample) <= 8:
                return None
            colours = 3 if tifffile.PHOTOMETRIC(page.photometric) == tifffile.PHOTOMETRIC.RGB else 1
            extra = tuple(page.extrasamples or ())
            at = next((colours + k for k, e in enumerate(extra) if e in (1, 2)), None)  # associated or not
            if at is None:
                return None
            tag = page.tags.get(_ORIENTATION)
            orientation = int(tag.value) if tag is not None and isinstance(tag.value, int) else 1
            planar = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE
            raw = page.asarray()
            full = float(np.iinfo(raw.dtype).max) if raw.dtype.kind in "ui" else 1.0
    except Exception:  # noqa: BLE001 - tifffile's many error types: the image reader said why
        return None
    a = np.moveaxis(raw, 0, -1) if planar and raw.ndim == 3 else raw
    if a.ndim != 3 or a.shape[2] <= at:
        return None
    return _orient(a[..., at].astype(np.float64), orientation), full


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

    Returns
    -------
    int or None
        ``sig`` when the values fit in ``sig`` bits and are not ``scaled``, else ``depth``; None
        when the file marks none (or a ``sig`` outside 1..``depth``).
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
    specification's reading).

    Parameters
    ----------
    a : array_like
        The samples, integers 0-65535.
    bits : int
        The ``sBIT`` significant bits; outside 1-15 the answer is True.

    Returns
    -------
    bool
    """
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
    of :data:`SENSOR_BITS` that holds ``values_max`` (beyond 16 bits: as many as it needs).

    Parameters
    ----------
    values_max : float
        The largest sample value of those sources.

    Returns
    -------
    int
        8, 10, 12, 14 or 16 (:data:`SENSOR_BITS`), or more beyond 65535.
    """
    for bits in SENSOR_BITS:
        if values_max <= (1 << bits) - 1:
            return bits
    return max(SENSOR_BITS[-1], math.ceil(math.log2(values_max + 1)))


def scale_to_u8(a: np.ndarray, bits: int) -> np.ndarray:
    """Samples of ``bits`` bits to uint8: ``round(a / (2**bits - 1) * 255)``, clipped.

    Parameters
    ----------
    a : ndarray
        Samples (any shape, integer or float) on the ``bits``-bit scale.
    bits : int
        The bits the samples are scaled from.

    Returns
    -------
    ndarray of uint8
        Of ``a``'s shape (numpy's ``round``: halves to even).
    """
    return np.clip(np.round(a / float((1 << bits) - 1) * 255.0), 0, 255).astype(np.uint8)
