"""The one place where images are read, converted to gray and written; errors name the file.

Reading (:func:`read_image`, :func:`read_images`; :func:`read_source_set` adds full depth
and metadata) -- the same rules for fusion, metrics, baselines, figures and the data stages:

* **Orientation.** A file's EXIF orientation is applied (the pixels are turned); a size error
  says when it swapped a file's width and height (:func:`check_same_sizes`).
* **Frames.** Of a file of several frames or pages (multi-page TIFF, animated GIF, WebP or
  PNG) only the first is read; :func:`read_source_set` notes it (:func:`frame_note`; also for
  a camera TIFF's thumbnail page, not for an MPO JPEG's previews), ``bafusion metrics`` and
  ``evaluate`` say it too: a focus stack is given as one file per shot.
* **Not read.** Camera RAW files and HEIC/HEIF ones (without a Pillow plugin for them, which the
  ``bafusion`` command never registers; a program that registers pillow-heif's reads them) are
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
  data (see "Sources of more than 8 bits per sample" in :mod:`bafusion.io.depth`): the significant bits a file
  marks (PNG ``sBIT``, whose samples the PNG specification stores scaled up to 16 bits, so
  that they are read from 16 unless they cannot be so scaled; OME-TIFF ``SignificantBits``,
  unscaled), else one depth common to the unmarked
  files read together (beside an 8-bit source, an unmarked one's file depth: its full scale, as
  raw converters export) -- so the sources of one fusion, or the A, B, F of ``bafusion metrics``,
  are scaled alike (a 12-bit pair and its sBIT-12 fusion compare as the 8-bit triple). A file
  read on its own is a set of one. 32-bit float gray files (TIFF) of a set share one scale too,
  [0, 1], [0, 255] or [0, 65535] from their largest value (:func:`float_scale`); samples outside
  it are clipped, with a note naming the file (:func:`float_to_u8`).

Gray (:func:`gray_float`, :func:`to_gray_u8`): MATLAB ``rgb2gray``, coefficients
:data:`RGB2GRAY`, in MATLAB's summation order or as a matrix product (why both:
:mod:`bafusion.io.convert`).

Writing: :func:`write_image` (uint8 or uint16, format from the suffix, atomic,
deterministic); :func:`to_uint8` rounds a [0, 255] float image to uint8.

Public API
----------
The names below, imported from :mod:`bafusion.io` itself (``from bafusion.io import
read_image``): the modules they live in are the package's own layout, one concern each.

* :mod:`.formats` -- which files are read and opening them: :data:`IMAGE_SUFFIXES`,
  :data:`RAW_SUFFIXES`, :data:`HEIF_SUFFIXES`, :func:`read_suffixes`, :data:`LISTED_SUFFIXES`, :func:`list_images`,
  :func:`unread_format`, :func:`unread_advice`, :func:`open_image`, :func:`header_exif`,
  :data:`NO_PAGES`;
* :mod:`.info` -- a file's header, before reading: :class:`ImageInfo`, :func:`image_info`,
  :func:`frame_note`, :func:`frame_notes`, :func:`mix_note`, :func:`check_same_sizes`,
  :func:`orientation_clause`, :func:`size_remedy`;
* :mod:`.convert` -- gray, rounding, resizing: :data:`RGB2GRAY`, :func:`gray_float`,
  :func:`to_gray_u8`, :func:`round_half_away`, :func:`to_uint8`, :func:`resize`,
  :func:`scaled_size`, :data:`GRAY_TABLE_MIN_PIXELS`;
* :mod:`.depth` -- sources of more than 8 bits per sample: :func:`png_depth`,
  :func:`source_bits`, :func:`sbit_scaled`, :func:`common_bits`, :func:`scale_to_u8`,
  :data:`SENSOR_BITS`;
* :mod:`.read` -- reading: :func:`read_image`, :func:`read_images`, :func:`read_source_set`,
  :class:`SourceSet`, :func:`read_matte`, :func:`float_scale`, :func:`float_to_u8`;
* :mod:`.metadata` -- EXIF, ICC profile, resolution, PNG colour chunks and JPEG chroma
  subsampling of a source (all of them for :func:`write_image`: :func:`output_metadata`), and the
  notes on them: :func:`source_metadata`, :func:`source_dpi`, :func:`source_png_colour`,
  :func:`source_subsampling`, :func:`icc_name`, :func:`png_colour_name`, :func:`profile_notes`,
  :func:`cmyk_notes`, :func:`dpi_notes`, :func:`unkept_metadata_note`;
* :mod:`.write` -- writing: :func:`write_image`, :func:`image_bytes` and :func:`write_bytes` (its
  encoding and its writing apart), :data:`JPEG_QUALITY`, :data:`JPEG_SUBSAMPLING`,
  :data:`PNG_COMPRESS_LEVEL`,
  :func:`written_metadata`, :func:`keeps_16_bits`, :data:`HIGH_DEPTH_SUFFIXES`, :func:`icc_fits`,
  :func:`png16_bytes`, :func:`fit_jpeg_exif`, :class:`ExifWarning`, :func:`output_format_problem`.

The modules import one way (formats <- depth <- info, write <- metadata <- read; convert on
its own) and nothing of bafusion but ``errors`` and ``atomic``: the package is part of the
ground floor, under every stage. A test or caller that replaces a function (``monkeypatch``)
replaces it here, in :mod:`bafusion.io`, where callers look it up (``bafusion.io.write_image``,
or ``from bafusion.io import write_image`` at the call); the modules' own calls to each other
are not redirected by that.
"""

from bafusion.io.convert import (
    GRAY_TABLE_MIN_PIXELS,
    RGB2GRAY,
    _gray_by_table,
    _matlab_sum,
    gray_float,
    resize,
    round_half_away,
    scaled_size,
    to_gray_u8,
    to_uint8,
)
from bafusion.io.depth import (
    SENSOR_BITS,
    _orient,
    _read_png16,
    common_bits,
    png_depth,
    sbit_scaled,
    scale_to_u8,
    source_bits,
)
from bafusion.io.formats import (
    HEIF_SUFFIXES,
    IMAGE_SUFFIXES,
    LISTED_SUFFIXES,
    NO_PAGES,
    RAW_SUFFIXES,
    READ_FORMATS,
    header_exif,
    header_orientation,
    list_images,
    open_image,
    pillow_open,
    read_formats,
    read_suffixes,
    unread_advice,
    unread_format,
)
from bafusion.io.info import (
    ImageInfo,
    check_same_sizes,
    frame_note,
    frame_notes,
    image_info,
    mix_note,
    orientation_clause,
    size_remedy,
)
from bafusion.io.metadata import (
    cmyk_notes,
    dpi_notes,
    icc_name,
    output_metadata,
    png_colour_name,
    profile_notes,
    source_dpi,
    source_metadata,
    source_png_colour,
    source_subsampling,
    unkept_metadata_note,
)
from bafusion.io.read import (
    SourceSet,
    _read_8bit,
    float_scale,
    float_to_u8,
    read_image,
    read_images,
    read_matte,
    read_source_set,
)
from bafusion.io.write import (
    _USUAL_SUFFIX,
    _WRITTEN_METADATA,
    HIGH_DEPTH_SUFFIXES,
    JPEG_QUALITY,
    JPEG_SUBSAMPLING,
    PNG_COMPRESS_LEVEL,
    QUALITY_FORMATS,
    WEBP_LOSSLESS_EFFORT,
    WEBP_LOSSLESS_METHOD,
    WEBP_MAX_SIDE,
    ExifWarning,
    _png_chunk,
    fit_jpeg_exif,
    icc_fits,
    image_bytes,
    keeps_16_bits,
    output_format_problem,
    png16_bytes,
    write_bytes,
    write_image,
    written_metadata,
)

#: The public API (the private names imported above are the ones tests and benchmarks use).
__all__ = [
    # formats
    "IMAGE_SUFFIXES", "RAW_SUFFIXES", "READ_FORMATS", "read_formats", "read_suffixes", "pillow_open", "header_orientation",
    "JPEG_QUALITY", "JPEG_SUBSAMPLING", "PNG_COMPRESS_LEVEL", "QUALITY_FORMATS", "WEBP_MAX_SIDE",
    "WEBP_LOSSLESS_METHOD", "WEBP_LOSSLESS_EFFORT",
    "HEIF_SUFFIXES", "LISTED_SUFFIXES", "NO_PAGES", "list_images",
    "unread_format", "unread_advice", "open_image", "header_exif",
    # info
    "ImageInfo", "image_info", "frame_note", "frame_notes", "mix_note", "check_same_sizes",
    "orientation_clause", "size_remedy",
    # convert
    "RGB2GRAY", "GRAY_TABLE_MIN_PIXELS", "gray_float", "to_gray_u8", "round_half_away", "to_uint8", "resize",
    "scaled_size",
    # depth
    "SENSOR_BITS", "png_depth", "source_bits", "sbit_scaled", "common_bits", "scale_to_u8",
    # read
    "SourceSet", "read_image", "read_images", "read_source_set", "read_matte", "float_scale", "float_to_u8",
    # metadata
    "source_metadata", "source_dpi", "source_png_colour", "icc_name", "png_colour_name", "profile_notes",
    "cmyk_notes", "dpi_notes", "unkept_metadata_note", "source_subsampling", "output_metadata",
    # write
    "write_image", "image_bytes", "write_bytes", "written_metadata", "keeps_16_bits", "HIGH_DEPTH_SUFFIXES", "icc_fits", "png16_bytes",
    "fit_jpeg_exif", "ExifWarning", "output_format_problem",
]
