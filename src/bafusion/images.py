"""Reading, converting and writing images, with errors that name the file."""

from __future__ import annotations

import math
import os
import re
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bafusion.atomic import atomic_file
from bafusion.errors import InputFileError

#: MATLAB ``rgb2gray`` coefficients (the reference metric code and our patches use these).
RGB2GRAY = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open and fully decode an image, applying its EXIF orientation."""
    p = Path(path)
    if not p.exists():
        raise InputFileError(p, "file not found")
    if not p.is_file():
        raise InputFileError(p, "not a regular file")
    try:
        with Image.open(p) as im:
            im.load()
            return ImageOps.exif_transpose(im) or im
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise InputFileError(p, f"unreadable image ({e.__class__.__name__}: {e})") from e


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Any image as uint8 RGB (H, W, 3): gray is replicated, alpha dropped, 16-bit scaled."""
    im = open_image(path)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if a.max() > 255 else 255.0
        a = np.clip(np.round(a / hi * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8).copy()


def read_matte(path: str | os.PathLike[str]) -> np.ndarray:
    """An alpha matte as uint8 (H, W). RGB mattes (alphamatting stores R=G=B) take the R channel;
    a matte whose channels differ is an error, since it would not be a matte."""
    im = open_image(path)
    a = np.asarray(im)
    if a.ndim == 3:
        if a.shape[2] == 4:
            a = a[..., :3]
        if a.shape[2] >= 3 and not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])):
            raise InputFileError(path, "matte is not gray (its R, G and B channels differ)")
        a = a[..., 0]
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = np.clip(np.round(a.astype(np.float64) / (65535.0 if a.max() > 255 else 255.0) * 255.0), 0, 255)
        a = a.astype(np.uint8)
    return a.copy()


def gray_float(rgb: np.ndarray) -> np.ndarray:
    """MATLAB ``rgb2gray`` without the final rounding, as float64 in [0, 255]."""
    if rgb.ndim == 2:
        return rgb.astype(np.float64)
    return rgb[..., :3].astype(np.float64) @ RGB2GRAY


def to_uint8(a: np.ndarray) -> np.ndarray:
    """Round half away from zero (MATLAB's ``round``) and clip to uint8."""
    return np.clip(np.sign(a) * np.floor(np.abs(a) + 0.5), 0, 255).astype(np.uint8)


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """MATLAB ``rgb2gray`` on uint8 input: uint8 gray, rounded half away from zero."""
    if rgb.ndim == 2:
        return rgb.astype(np.uint8)
    return to_uint8(gray_float(rgb))


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


def write_png(path: str | os.PathLike[str], img: np.ndarray) -> None:
    """Write a uint8 gray or RGB array as PNG, atomically, deterministically (no timestamps)."""
    with atomic_file(path) as tmp:
        Image.fromarray(np.ascontiguousarray(img)).save(tmp, format="PNG", compress_level=6)


def write_image(path: str | os.PathLike[str], img: np.ndarray) -> None:
    """Write a uint8 gray or RGB image atomically; the format follows the suffix
    (.png, .jpg, .tif, .bmp, ...); an unknown suffix is an error naming the file."""
    from bafusion.errors import UserError

    p = Path(path)
    fmt = Image.registered_extensions().get(p.suffix.lower())
    if fmt is None:
        raise UserError(f"{p}: unknown image format {p.suffix!r} (use .png, .tif, .bmp or .jpg)")
    with atomic_file(p) as tmp:
        kwargs = {"compress_level": 6} if fmt == "PNG" else ({"quality": 95} if fmt == "JPEG" else {})
        Image.fromarray(np.ascontiguousarray(img)).save(tmp, format=fmt, **kwargs)


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    d = Path(folder)
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


# --------------------------------------------------------------------------------------
# Sources of more than 8 bits per sample
#
# A file stores samples of some depth (PNG: 1-16 bits, TIFF: BitsPerSample), but the data may
# use fewer bits: 12-bit camera data in a 16-bit PNG has a maximum of 4095, not 65535. The
# sources of one fusion are read by :func:`read_sources`:
#
# * files of at most 8 bits per sample are read as before (byte-identical);
# * a file that marks its significant bits (PNG ``sBIT``, OME-TIFF ``SignificantBits``) is
#   scaled from that many bits when its values fit in them (the data is stored unscaled),
#   else from the file's depth (the PNG specification's way: samples scaled up to the depth);
# * the unmarked ones are scaled alike, by one factor for the pair: the bit depth of a
#   camera sensor (10, 12, 14 or 16) that holds the largest value over all of them (8 when it
#   fits in 8 bits, as before), so that A and B are never scaled differently.
#
# Pillow decodes 16-bit colour PNGs and TIFFs to their high byte only; 16-bit colour TIFFs are
# read with tifffile instead. A 16-bit colour PNG whose sBIT marks unscaled data (its high
# bytes all small) cannot be decoded at full precision and is refused with the advice to
# convert it to a 16-bit TIFF.

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


_HIGH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _high_depth_array(path: Path) -> tuple[np.ndarray, int, int | None] | None:
    """The raw samples of a source stored with more than 8 bits (gray (H, W) or colour
    (H, W, 3), float64), the file's depth and its marked significant bits; None for a file of
    at most 8 bits per sample, or one Pillow cannot open (both left to the 8-bit reader)."""
    try:
        with Image.open(path) as im:  # the header only
            fmt, mode = im.format, im.mode
            tiff = _tiff_depth(im) if fmt == "TIFF" else None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None
    if fmt == "PNG":
        png = png_depth(path)
        if png is None or png[0] <= 8:
            return None
        depth, _, sig = png
        if mode in _HIGH_MODES:
            return np.asarray(open_image(path), dtype=np.float64), depth, sig
        if sig is not None and sig < depth:  # colour: Pillow gives the high byte only
            hi = int(np.asarray(open_image(path).convert("RGB")).max())
            if hi < 1 << max(sig - 8, 0):
                raise InputFileError(
                    path, f"16-bit colour PNG whose sBIT marks {sig}-bit data stored unscaled: Pillow decodes "
                    "only its high byte; convert it to a 16-bit TIFF"
                )
        return None
    if tiff is not None and tiff[0] > 8 and mode != "F":
        depth, sig = tiff
        if mode in _HIGH_MODES:
            return np.asarray(open_image(path), dtype=np.float64), depth, sig
        import tifffile  # a scikit-image dependency; Pillow gives colour TIFFs' high byte only

        try:
            a = np.asarray(tifffile.imread(path, key=0), dtype=np.float64)
        except Exception as e:  # noqa: BLE001 - tifffile raises many types for bad files
            raise InputFileError(path, f"unreadable {depth}-bit TIFF ({e.__class__.__name__}: {e})") from e
        if a.ndim == 3 and a.shape[0] in (3, 4) and a.shape[2] not in (3, 4):
            a = np.moveaxis(a, 0, -1)  # planar
        if a.ndim == 3:
            a = a[..., 0] if a.shape[2] <= 2 else a[..., :3]
        if a.ndim != 2 and not (a.ndim == 3 and a.shape[2] == 3):
            raise InputFileError(path, f"unsupported TIFF layout {a.shape}")
        return a, depth, sig
    if mode in _HIGH_MODES:  # other formats of 16/32-bit gray
        return np.asarray(open_image(path), dtype=np.float64), 16 if mode.startswith("I;16") else 32, None
    return None


def source_bits(values_max: float, depth: int, sig: int | None) -> int | None:
    """The bits a marked source is scaled from (see above); None for an unmarked one."""
    if sig is None or not 0 < sig < depth:
        return None
    return sig if values_max <= (1 << sig) - 1 else depth


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


def read_sources(
    paths: Sequence[str | os.PathLike[str]], read_8bit: Callable[[Path], np.ndarray]
) -> list[np.ndarray]:
    """Read the sources of one fusion (or metric triple) as uint8: files of at most 8 bits
    per sample with ``read_8bit`` (unchanged), those of more bits scaled to 8 bits by the
    rule above, the unmarked ones by a factor common to all of them."""
    out: list[np.ndarray | None] = []
    high: list[tuple[int, np.ndarray, int | None]] = []
    for p in map(Path, paths):
        raw = _high_depth_array(p) if p.is_file() else None
        if raw is None:
            out.append(read_8bit(p))
            continue
        a, depth, sig = raw
        out.append(None)
        high.append((len(out) - 1, a, source_bits(float(a.max()) if a.size else 0.0, depth, sig)))
    unmarked = [a for _, a, bits in high if bits is None and a.size]
    shared = common_bits(max(float(a.max()) for a in unmarked)) if unmarked else 8
    for i, a, bits in high:
        out[i] = scale_to_u8(a, bits or shared)
    return [o for o in out if o is not None]
