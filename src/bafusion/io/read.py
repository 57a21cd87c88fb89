"""Reading images by the rules of :mod:`bafusion.io`: :func:`read_image`, :func:`read_images`
and :func:`read_source_set` (:class:`SourceSet`: full depth, metadata and notes).

Also :func:`read_matte` and the scale of floating-point sources (:func:`float_scale`,
:func:`float_to_u8`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from bafusion.errors import InputFileError
from bafusion.io.depth import _deep_alpha, _high_depth_array, common_bits, sbit_scaled, scale_to_u8, source_bits
from bafusion.io.formats import _ALPHA_MODES, _check_not_empty, _quiet_pillow, open_image, pillow_open, unread_format
from bafusion.io.info import _alpha_note, _alpha_opaque, frame_notes, mix_note
from bafusion.io.metadata import (
    _source_metadata,
    cmyk_notes,
    dpi_notes,
    profile_notes,
    source_dpi,
    source_png_colour,
    source_subsampling,
    unkept_metadata_note,
)


def read_matte(path: str | os.PathLike[str]) -> np.ndarray:
    """An alpha matte as uint8 (H, W), 255 = foreground. Files of at most 8 bits per sample
    (and floating-point ones) are read by :func:`read_image`; a file of more than 8 bits is
    read on its own full scale (a 16-bit file's 65535 = foreground, rounded to 8 bits,
    ``round(v / 65535 * 255)``), or from the significant bits it marks (PNG ``sBIT``, OME-TIFF
    ``SignificantBits``), not by the camera-depth rule of :func:`read_image`, which reads a
    faint 16-bit matte as if its largest value were full. RGB mattes (alphamatting stores
    R=G=B) take the R channel; a matte whose channels differ is an error, since it would not
    be a matte. A file with transparency (an alpha channel not opaque everywhere, a
    transparent colour) holds its matte there when its gray is one value everywhere (a white or
    black image whose alpha is the matte, as matting tools export a matte) or equals the alpha;
    gray values and an alpha that differ are an error (which of the two is the matte?). A
    transparent colour (``tRNS``) that only marks gray values (a gray or RGB key, which marks
    one value of the file at its depth; palette entries when every pixel of one gray has one
    alpha), such as a gray matte saved with black made transparent, adds nothing to the gray:
    the gray is the matte, as in a file without it. A 16-bit alpha is read at its full depth,
    rounded to 8 bits as the gray is.

    Parameters
    ----------
    path : str or path-like
        The matte file.

    Returns
    -------
    ndarray of uint8, (H, W)

    Raises
    ------
    bafusion.errors.InputFileError
        Naming the file: as :func:`read_image`, a colour matte whose channels differ, gray
        values beside an alpha channel that differs from them, or a matte of more than 8 bits
        per sample that marks no significant bits and holds values 0..1 to 0..255 only (8-bit
        values in a deeper file: read on its scale it would be background everywhere).
    """
    a, problem = _matte_samples(path)
    alpha, alpha_problem, keyed = _matte_alpha(path, a.shape[:2])
    if a.ndim == 3:
        if not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])):
            also = (": it has a transparency (alpha) channel too; if that is the matte, save the alpha alone as a "
                    "gray image" if alpha is not None else "")
            raise InputFileError(path, f"matte is not gray (its R, G and B channels differ){also}")
        a = a[..., 0].copy()
    if alpha is None or keyed == "key" or (keyed == "palette" and _keyed_by_gray(a, alpha)):
        if problem:
            raise InputFileError(path, problem)
        return a
    if a.size and int(a.min()) != int(a.max()) and not np.array_equal(a, alpha):
        raise InputFileError(path, "matte holds gray values and a transparency (alpha) channel that differ: which is "
                                   "the matte is not clear; save the matte as a gray image without alpha")
    if alpha_problem:
        raise InputFileError(path, alpha_problem)
    return alpha


def _matte_samples(path: str | os.PathLike[str]) -> tuple[np.ndarray, str | None]:
    """The samples of the matte file ``path`` as uint8 (gray (H, W) or colour (H, W, 3)) read
    as :func:`read_matte` says, and the problem of a deep file whose unmarked values are those
    of 8 bits (:func:`_deep_matte_problem`; None else)."""
    p = Path(path)
    raw = _high_depth_array(p) if p.is_file() and unread_format(p) is None else None
    if raw is None:  # at most 8 bits per sample, floating point, or refused: read_image's reading
        return read_image(path), None
    a, depth, sig, sbit = raw
    top = float(a.max()) if a.size else 0.0
    # PNG sBIT: the samples are scaled to the depth unless they cannot be (see bafusion.io.depth)
    scaled = sbit and sig is not None and 0 < sig < depth and top <= (1 << sig) - 1 and sbit_scaled(a, sig)
    bits = source_bits(top, depth, sig, scaled=scaled)
    problem = _deep_matte_problem(top, float((1 << depth) - 1), depth) if bits is None else None
    return scale_to_u8(a, bits or depth), problem


def _deep_matte_problem(top: float, full: float, depth: int, what: str = "values") -> str | None:
    """The problem of a matte read on a deep file's full scale ``full`` (``depth`` bits) whose
    largest value ``top`` is 1 to 255: 8-bit values (or a 0/1 mask) stored in a deeper file,
    background everywhere on its scale. None otherwise (an all-zero matte is left to the
    checks of its use)."""
    if full <= 255 or not 1 <= top <= 255:
        return None
    scale = f"0..{int(full)} ({int(full)} = foreground)"
    return (f"matte {what} are 0..{top:g} in a {depth}-bit file, whose scale is {scale}: read so it is background "
            f"everywhere; save a 0..255 matte as an 8-bit image, or scale it to 0..{int(full)}")


def _matte_alpha(
    path: str | os.PathLike[str], shape: tuple[int, ...]
) -> tuple[np.ndarray | None, str | None, str | None]:
    """The 8-bit alpha of the matte file ``path`` (EXIF orientation applied, as the reader
    applies it) when it has transparency somewhere (:func:`bafusion.io.info._alpha_opaque`)
    and ``shape`` (height, width) as read; None for an opaque file, one without alpha, or one
    Pillow does not open (read otherwise: its alpha is not told here). The alpha of a file of
    more than 8 bits per sample is read at its full depth (:func:`bafusion.io.depth._deep_alpha`:
    Pillow truncates a 16-bit PNG's to its high byte and does not open a 16-bit gray + alpha
    TIFF) and rounded to 8 bits; the problem beside it: :func:`_deep_matte_problem` of that
    alpha (None else); and what the transparency is when it is a transparent colour (``tRNS``)
    rather than an alpha channel: ``"key"`` (a gray or RGB value, transparent wherever the
    file holds it), ``"palette"`` (alphas of palette entries), None else. A file whose header
    tells no transparency (no alpha mode, no ``tRNS``) is not decoded again."""
    deep = _deep_alpha(path)
    if deep is not None:
        samples, full = deep
        if samples.shape != tuple(shape) or not samples.size or samples.min() >= full:
            return None, None, None
        top = float(samples.max())
        alpha = np.clip(np.round(samples / full * 255.0), 0, 255).astype(np.uint8)
        return alpha, _deep_matte_problem(top, full, int(full).bit_length(), "alpha values"), None
    try:
        with _quiet_pillow(), pillow_open(path) as im:  # the header: no second decoding of an opaque file
            if im.mode not in _ALPHA_MODES and "transparency" not in im.info:
                return None, None, None
    except Exception:  # noqa: BLE001 - open_image below says what it says; the reader has named the file
        pass
    try:
        with open_image(path) as im:
            if _alpha_opaque(im, path) is not False:
                return None, None, None
            keyed = None if im.mode in _ALPHA_MODES else "palette" if im.mode == "P" else "key"
            alpha = np.asarray(im.convert("RGBA").getchannel("A"), dtype=np.uint8).copy()
    except (OSError, ValueError, InputFileError):
        return None, None, None
    return (alpha if alpha.shape == tuple(shape) else None), None, keyed


def _keyed_by_gray(gray: np.ndarray, alpha: np.ndarray) -> bool:
    """Whether ``alpha`` is a function of ``gray`` (every pixel of one gray value has one
    alpha): a transparent colour that only marks gray values."""
    pairs = gray.astype(np.uint16) << 8 | alpha
    return bool(np.unique(pairs).size == np.unique(gray).size)


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
        (the result is gray where taken from a gray one: :func:`mix_note`), one per source whose
        transparency (an alpha channel not opaque everywhere, a transparent colour) is dropped; and, also without
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
    depths : list of int or None
        Per source, its file's bits per sample: 8 for files of at most 8 bits, 16 (or 32) for
        deeper integer files, None for floating-point files.
    unmarked : list of bool
        Per source, True for a file of more than 8 bits that marks no significant bits it is
        read by (PNG ``sBIT``, OME-TIFF ``SignificantBits``): its bit depth is taken from the
        largest value of all such sources (:func:`bafusion.io.depth.common_bits`), or, beside
        an 8-bit source, from its file (its full scale, for files of up to 16 bits).
    file_notes : list of str
        The lines of :attr:`notes` on what an output file keeps, not on the pixels (the
        sources' XMP, IPTC or comments not kept, a malformed EXIF, a source's resolution that
        differs from the first's: :func:`dpi_notes`): :meth:`array_notes` leaves them out.
    subsampling : str or None
        The first source's JPEG chroma subsampling (:func:`source_subsampling`), for a JPEG
        output.
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
    depths: list[int | None] = field(default_factory=list)
    unmarked: list[bool] = field(default_factory=list)
    file_notes: list[str] = field(default_factory=list)
    subsampling: str | None = None

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

    def array_notes(self) -> list[str]:
        """:attr:`notes` for a result returned as an array, not written (:func:`bafusion.fuse`):
        those on the pixels (CMYK converted, frames, gray beside colour, transparency dropped,
        depth, clipping), the colour-description lines saying that colours are not converted
        (:func:`profile_notes` with ``array``), without :attr:`file_notes`."""
        rest = [n for n in self.notes if n not in self.file_notes]
        if not self.colour_notes:
            return rest
        rgb = any(a.ndim == 3 and a.shape[2] >= 3 for a in self.images)
        told = profile_notes(self.paths, self.icc, rgb, array=True)
        first = rest.index(self.colour_notes[0]) if self.colour_notes[0] in rest else len(rest)
        rest = [n for n in rest if n not in self.colour_notes]
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


def read_source_set(paths: Sequence[str | os.PathLike[str]], metadata: bool = True, *,
                    sources: int | None = None) -> SourceSet:
    """Read the sources of one fusion: uint8 images as :func:`read_images`, the full-depth
    uint16 versions when any source has more than 8 bits (scaled by the same bits as the
    uint8 ones, so the two agree), and the first source's EXIF and ICC profile, with notes
    (when ``metadata``, see :attr:`SourceSet.notes`): a source whose profile is not the first's,
    one of several frames or pages, gray sources beside colour ones, an unmarked deeper source
    read on its file's scale beside an 8-bit one although its values would fit fewer bits, a
    source whose transparency is dropped;
    always: a float source's clipped samples. Floating-point sources share one scale
    (:func:`float_scale` of the largest value over all of them), as unmarked integer sources
    share one bit depth -- unless a source is an 8-bit file: the unmarked ones of up to 16 bits
    are then read on their file's full scale (see :mod:`bafusion.io.depth`).

    Parameters
    ----------
    paths : sequence of str or path-like
        The source files, the first the one whose metadata is kept.
    metadata : bool
        Read the first source's EXIF, ICC profile, resolution and PNG colour chunks, and make
        the notes on profiles, frames, gray/colour mixes and unkept metadata; False: images
        and the notes on their pixels only (clipped float samples, CMYK converted,
        transparency dropped).
    sources : int, optional
        How many of ``paths``, from the first, are the fusion's sources (default: all); only
        they decide whether an 8-bit source is among them (the files after them, e.g. a fused
        image measured beside its sources, do not: the sources read as ``fuse`` read them).

    Returns
    -------
    SourceSet

    Raises
    ------
    bafusion.errors.InputFileError
        Naming the file when one is missing, not a file, of a format not read here, or not a
        readable image.
    """
    out: list[np.ndarray | None] = []
    high: list[tuple[int, np.ndarray, int | None, int]] = []
    significant: list[int] = []  # the marked sources' significant bits (not the bits scaled from)
    floats: list[tuple[int, Path, np.ndarray]] = []  # float sources: scaled alike, below
    depths: list[int | None] = []
    no_mark: list[bool] = []  # per source: more than 8 bits, no significant bits marked
    # per source: the transparency its reader drops leaves it opaque everywhere (the note, below)
    opaque: dict[str, bool | None] = {}
    for p in paths:
        _check_not_empty(p)
    for p in map(Path, paths):
        raw = _high_depth_array(p, opaque) if p.is_file() and unread_format(p) is None else None  # else refused below
        if raw is None:
            low = _read_low(p, opaque)
            if low.dtype != np.uint8:
                floats.append((len(out), p, low))
            out.append(low if low.dtype == np.uint8 else None)
            depths.append(8 if low.dtype == np.uint8 else None)
            no_mark.append(False)
            continue
        a, depth, sig, sbit = raw
        raw = None  # its float64 samples: not held while the next source is read
        a = _compact(a, depth)
        out.append(None)
        top = float(a.max()) if a.size else 0.0
        # PNG sBIT: the samples are scaled to the depth unless they cannot be (see bafusion.io.depth)
        scaled = sbit and sig is not None and 0 < sig < depth and top <= (1 << sig) - 1 and sbit_scaled(a, sig)
        bits = source_bits(top, depth, sig, scaled=scaled)
        high.append((len(out) - 1, a, bits, depth))
        depths.append(depth)
        no_mark.append(bits is None)
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
    # an 8-bit source beside unmarked deeper ones: those were exported on their file's full scale
    # (a raw converter's 16-bit TIFF or PNG beside a camera JPEG), not unscaled sensor values; by
    # their largest value a dark one read as 14- or 12-bit data, 4x / 16x too bright beside it
    n_sources = len(depths) if sources is None else sources
    container: list[str] = []
    if 8 in depths[:n_sources]:
        narrow = os.fspath(paths[depths.index(8)])
        for k, (i, a, bits, depth) in enumerate(high):
            if bits is None and depth <= 16:
                high[k] = (i, a, depth, depth)
                significant.append(depth)
                guess = common_bits(float(a.max()) if a.size else 0.0)
                if guess < depth:
                    container.append(
                        f"{os.fspath(paths[i])}: {depth}-bit, no significant bits marked, beside the 8-bit "
                        f"{narrow}: read on its full {depth}-bit scale, as raw converters write their exports "
                        f"(it is dark: largest value {float(a.max()):g}); if it holds unscaled {guess}-bit camera "
                        "values, mark their bits (PNG sBIT, OME-TIFF SignificantBits) or give every shot at one "
                        "depth")
    unmarked = [a for _, a, bits, _ in high if bits is None and a.size]
    shared = common_bits(max(float(a.max()) for a in unmarked)) if unmarked else 8
    full: list[np.ndarray | None] | None = None
    if high:
        full = [None if o is None else o.astype(np.uint16) * np.uint16(257) for o in out]
    for i, a, bits, _ in high:
        assert full is not None
        out[i], full[i] = _scaled_both(a, bits or shared)
    exif, icc, exif_note = _source_metadata(paths[0]) if metadata and paths else (None, None, None)
    images = [o for o in out if o is not None]
    rgb = any(a.ndim == 3 and a.shape[2] >= 3 for a in images)
    notes = profile_notes(paths, icc, rgb) if metadata and len(paths) > 1 else []
    colour_notes = list(notes)
    notes += cmyk_notes(paths)  # on the pixels: also without metadata (bafusion metrics says it)
    unkept = unkept_metadata_note(paths) if metadata else None
    notes += [unkept] if unkept else []
    notes += [exif_note] if exif_note else []
    resolutions = dpi_notes(paths) if metadata else []
    notes += resolutions
    notes += clipped
    if metadata:
        notes += container
        notes += frame_notes(paths)
    # on the pixels, also without metadata; once per file: a file given twice (refused by fuse) or
    # read for a metric beside its sources (told by the reader's decode where it read the file: a
    # large RGBA PNG is not decoded twice)
    notes += list(dict.fromkeys(n for n in (_alpha_note(p, opaque.get(os.fspath(Path(p)))) for p in paths) if n))
    if metadata:
        mixed = mix_note([os.fspath(p) for p in paths], [a.ndim == 2 for a in images])
        notes += [mixed] if mixed else []
    bits = max(significant + [shared for _, _, b, _ in high if b is None], default=8)
    # a source read from its file's full depth of 16 bits (sBIT samples scaled up as the PNG
    # specification asks, or 16-bit data) was stored on the 16-bit scale
    full_scale = any((b or shared) >= 16 and depth >= 16 for _, _, b, depth in high)
    dpi = source_dpi(paths[0]) if metadata and paths else None
    png_colour = source_png_colour(paths[0]) if metadata and paths else None
    subsampling = source_subsampling(paths[0]) if metadata and paths else None
    return SourceSet(images, None if full is None else [f for f in full if f is not None], exif, icc, bits, notes,
                     full_scale, dpi, png_colour, [os.fspath(p) for p in paths] if metadata else [], colour_notes,
                     depths, no_mark, [n for n in (unkept, exif_note) if n] + resolutions, subsampling)


#: Samples per block in which :func:`_scaled_both` scales a deep source (256 K: 2 MiB of
#: float64 temporaries, where the whole image's took 576 MiB each for a 24-megapixel RGB shot).
_SCALE_BLOCK = 1 << 18


def _compact(a: np.ndarray, depth: int) -> np.ndarray:
    """A deep source's samples (float64, as :func:`bafusion.io.depth._high_depth_array` reads
    them) as uint16 when they are what uint16 holds exactly (the integer samples of a file of
    up to 16 bits): a quarter of the memory while the other sources are read, and the same
    values to every computation after it (uint16 converts to float64 exactly). Else ``a``."""
    if depth > 16 or a.dtype.kind != "f" or not a.size or a.min() < 0 or a.max() > 65535:
        return a
    u = a.astype(np.uint16)
    return u if np.array_equal(u, a) else a


def _scaled_both(a: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """A deep source's uint8 version (:func:`bafusion.io.depth.scale_to_u8`) and its uint16
    one on the 16-bit scale (``round(v / (2**bits - 1) * 65535)``, clipped), computed in
    blocks of rows (:data:`_SCALE_BLOCK` samples): the same values as over the whole image
    at once, whose float64 temporaries of a 24-megapixel RGB shot took gigabytes."""
    u8 = np.empty(a.shape, dtype=np.uint8)
    u16 = np.empty(a.shape, dtype=np.uint16)
    rows = max(1, _SCALE_BLOCK // max(1, int(np.prod(a.shape[1:]))))
    for r in range(0, a.shape[0], rows):
        blk = a[r : r + rows]
        u8[r : r + rows] = scale_to_u8(blk, bits)
        u16[r : r + rows] = np.clip(np.round(blk / float((1 << bits) - 1) * 65535.0), 0, 65535).astype(np.uint16)
    return u8, u16


def read_image(path: str | os.PathLike[str], *, rgb: bool = False) -> np.ndarray:
    """Read one image file as uint8, by the rules in :mod:`bafusion.io`'s docstring.

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
    significant bits a file marks, else by one bit depth common to all the unmarked ones --
    except beside a file of at most 8 bits per sample (a camera JPEG), where an unmarked one
    of up to 16 bits is read on its file's full scale (a 16-bit file's 0..65535, also when
    dark), as raw converters export (see "Sources of more than 8 bits per sample" in
    :mod:`bafusion.io.depth`). Files of at most 8 bits per sample read exactly as
    :func:`read_image` reads them alone.

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
    scale, from the largest value over all of them, as integer sources share one bit depth.

    Parameters
    ----------
    top : float or ndarray
        The largest sample value, or the samples (an empty array counts as 0).

    Returns
    -------
    float
        1.0, 255.0 or 65535.0.
    """
    top = (float(top.max()) if top.size else 0.0) if isinstance(top, np.ndarray) else float(top)
    return 1.0 if top < 16.0 else 255.0 if top < 4096.0 else 65535.0


def float_to_u8(a: np.ndarray, scale: float, path: str | os.PathLike[str]) -> tuple[np.ndarray, str | None]:
    """Floating-point samples ``a`` on [0, ``scale``] as uint8, ``round(a / scale * 255)``;
    samples outside [0, ``scale``] (negative ones, overshoot) are clipped to it, and the line
    for the user says so (the file, how many samples, their range), None when none is.

    Parameters
    ----------
    a : ndarray
        Floating-point samples, any shape.
    scale : float
        The full scale (:func:`float_scale`).
    path : str or path-like
        The file, named in the note.

    Returns
    -------
    image : ndarray of uint8
        Of ``a``'s shape (numpy's ``round``: halves to even).
    note : str or None
        The clipping note, or None when every sample lies in [0, ``scale``].
    """
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


def _read_low(path: str | os.PathLike[str], opaque: dict[str, bool | None] | None = None) -> np.ndarray:
    """:func:`_read_8bit` without the float scaling: a 32-bit float file's samples are returned
    as float64, to be scaled with the other float sources read with it
    (:func:`read_source_set`); NaN or infinite values are refused. ``opaque``: where given,
    ``opaque[os.fspath(path)]`` is set to :func:`bafusion.io.info._alpha_opaque` of the decoded
    image (None without alpha)."""
    im = open_image(path)
    if opaque is not None:
        opaque[os.fspath(path)] = _alpha_opaque(im, path)
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
