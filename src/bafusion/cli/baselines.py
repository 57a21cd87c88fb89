"""``bafusion baseline``: argument parsing only; the methods are :mod:`bafusion.evaluation.baselines`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from bafusion.cli.common import check_distinct_sources, nonempty_path
from bafusion.errors import UserError
from bafusion.evaluation.baselines import (
    METHODS,
    fuse,
)
from bafusion.io import (
    cmyk_notes,
    dpi_notes,
    fit_jpeg_exif,
    icc_fits,
    png_colour_name,
    profile_notes,
    read_images,
    source_dpi,
    source_metadata,
    source_png_colour,
    source_subsampling,
    to_uint8,
    write_image,
)

# command line


def _cmd_baseline(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    check_distinct_sources([args.a, args.b])
    a, b = read_images([args.a, args.b])  # > 8 bits per sample: scaled alike
    if a.shape[:2] != b.shape[:2]:
        raise UserError(
            f"image sizes differ: {args.a} is {a.shape[1]}x{a.shape[0]} (WxH) "
            f"but {args.b} is {b.shape[1]}x{b.shape[0]}"
        )
    if a.ndim != b.ndim:  # one gray, one colour: fuse in colour
        a = a if a.ndim == 3 else np.repeat(a[:, :, None], 3, axis=2)
        b = b if b.ndim == 3 else np.repeat(b[:, :, None], 3, axis=2)
    fused = to_uint8(fuse(args.method, a, b))
    # the first source's EXIF, ICC profile, resolution, PNG colour chunks and JPEG subsampling, as ``fuse`` writes
    # them (each where the output's format holds it), and its lines on differing profiles
    exif, icc = source_metadata(args.a)
    dpi, png_colour = source_dpi(args.a), source_png_colour(args.a)
    notes = (cmyk_notes([args.a, args.b]) + profile_notes([args.a, args.b], icc, fused.ndim == 3, args.output)
             + dpi_notes([args.a, args.b]))
    # and, as fuse says them, what the output's format cannot hold (a .bmp: no EXIF nor profile)
    from bafusion.fusion.batch import unwritten_metadata_note

    exif, exif_note = fit_jpeg_exif(exif, args.output)
    fits = icc is not None and icc_fits(icc, fused)
    stored = icc is not None and icc_fits(icc, fused, args.output)
    lost = unwritten_metadata_note(Path(args.output), False, fits or stored, bool(exif), dpi=dpi is not None,
                                   icc_unfit=fits and not stored)
    notes += [n for n in (exif_note, lost) if n]
    if png_colour and Path(args.output).suffix.lower() != ".png" and not icc:
        notes.append(f"{args.output}: the first source's PNG colour description ({png_colour_name(png_colour)}) is "
                     f"not written ({Path(args.output).suffix} cannot hold it; a .png output keeps it)")
    for note in notes:
        print(f"bafusion baseline: {note}", file=sys.stderr)
    write_image(args.output, fused, exif=exif, icc=icc, dpi=dpi,
                png_colour=png_colour if Path(args.output).suffix.lower() == ".png" else None,
                subsampling=source_subsampling(args.a))
    print(f"fused 2 images into {args.output} with {args.method} "
          f"({time.perf_counter() - t_start:.2f} s with reading and writing)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bafusion baseline --method gff|laplacian A B -o F.png``."""
    p = subparsers.add_parser(
        "baseline",
        help="fuse two images with a native baseline (guided-filter fusion or Laplacian pyramid)",
        description="Fuse sources A and B with a native baseline method and write the fused image (8 bits per "
                    "sample), with A's EXIF, ICC profile, resolution, PNG colour chunks and JPEG chroma "
                    "subsampling, as bafusion fuse writes them.",
    )
    p.add_argument("a", metavar="A", type=nonempty_path, help="first source image")
    p.add_argument("b", metavar="B", type=nonempty_path, help="second source image")
    p.add_argument("--method", choices=tuple(METHODS), default="gff", help="fusion method (default gff)")
    p.add_argument("-o", "--output", "--out", dest="output", type=nonempty_path, required=True, help="fused image to write (format from the suffix)")
    p.set_defaults(func=_cmd_baseline)
