"""Reading, converting and writing images, with errors that name the file."""

from __future__ import annotations

import os
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
