"""``bafusion metrics``: argument parsing only; the metrics are :mod:`bafusion.evaluation.metrics`."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable

from bafusion.cli.common import nonempty_path
from bafusion.errors import UserError
from bafusion.evaluation.metrics import (
    METRICS,
    MIN_SIDE,
    REQUIRED_METRICS,
    _format_value,
    _parse_metric_names,
    check_same_size,
    compute_all,
    read_metric_files,
    undefined_reason,
)
from bafusion.io import frame_note, image_info, orientation_clause


def _cmd_metrics(args: argparse.Namespace) -> int:
    if args.metrics is not None and not args.metrics.strip(" ,"):
        raise UserError("--metrics: no metric named (omit the option for all eight)")
    names = _parse_metric_names(args.metrics.split(",")) if args.metrics else None
    # A, B and F as one set: files of more than 8 bits per sample are scaled alike (the bits
    # a file marks, else one depth common to the unmarked ones), as fusion scales its sources;
    # an unmarked deeper F beside an 8-bit A or B is refused (its depth cannot be told); unmarked
    # deeper A, B beside an 8-bit F (fuse's .jpg/.bmp of 16-bit sources) are read as fuse reads them
    src = read_metric_files(args.a, args.b, args.f)
    a, b, f = src.images
    infos = [image_info(p) for p in (args.a, args.b, args.f)]
    try:
        check_same_size(a, b, f, names=(str(args.a), str(args.b), str(args.f)))
    except UserError as e:  # where an EXIF orientation swapped a file's width and height, say so
        raise UserError(f"{e}{''.join(orientation_clause(i) for i in infos)}") from None
    for note in filter(None, map(frame_note, infos)):  # a multi-page TIFF: only its first page is read
        print(f"bafusion metrics: {note}", file=sys.stderr)
    for note in src.notes:  # float samples outside the scale they are read on: clipped
        print(f"bafusion metrics: {note}", file=sys.stderr)
    try:
        values: dict[str, float | None] = dict(compute_all(a, b, f, names, stage=_stage_lines(args.progress)))
    except UserError as e:  # e.g. too small for QY: say which images, and what does work
        hint = ""
        if names is None and min(a.shape[:2]) < _MIN_SIDE["QY"]:
            fit = [m for m in METRICS if min(a.shape[:2]) >= _MIN_SIDE.get(m, 1)]
            hint = f" (of the default eight, --metrics {','.join(fit)} compute on this size)"
        raise UserError(f"{args.a}, {args.b}, {args.f}: {e}{hint}") from e
    # NaN is not a number to report: an undefined metric is written as null (JSON) or an
    # empty field (CSV), with a warning naming it.
    undefined = [k for k, v in values.items() if v is None or not math.isfinite(v)]
    if undefined:
        why = undefined_reason(a, b, f)
        written = "null" if args.format == "json" else "an empty field"
        for k in undefined:
            values[k] = None
            print(f"bafusion metrics: warning: {k} is undefined for these images ({why}): written as {written}",
                  file=sys.stderr)
    if args.format == "json":
        print(json.dumps(values, allow_nan=False))
    else:
        print(",".join(values))
        print(",".join(_format_value(v) for v in values.values()))
    return 0


#: the smallest image side some metrics need (QY's 11x11 window, QE's 8x8 box); the others take any size
_MIN_SIDE = MIN_SIDE


def _stage_lines(progress: bool | None) -> Callable[[str], None] | None:
    """Each metric named on stderr as it starts ("bafusion metrics: QP ..."): stderr a terminal
    and no --no-progress (:func:`bafusion.progress.bars_enabled`); else None (silent). QP alone
    takes about a minute on 6 MP images, minutes on 24 MP."""
    from bafusion.progress import bars_enabled

    if not bars_enabled(progress is not False):
        return None
    return lambda name: print(f"bafusion metrics: {name} ...", file=sys.stderr, flush=True)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bafusion metrics A B F [--format csv|json] [--metrics QMI,QG,...]``."""
    p = subparsers.add_parser(
        "metrics",
        help="objective fusion metrics of a fused image F against its sources A and B",
        description=(
            "Compute objective fusion metrics (QMI, QG, QY, QCB, ...) of a fused image F of "
            "sources A and B, as the survey's MATLAB reference code computes them. Prints a "
            "CSV header and one line of values, or a JSON object. A metric that is undefined "
            "on the images (0/0, e.g. QCB, QP, QCV on constant images, and QE on most of them: "
            "as in MATLAB, QE of an all-black triple is 1.0) is written as null "
            "(JSON) or an empty field (CSV), with a warning on stderr naming it. Of a file of several "
            "frames or pages only the first is read (said on stderr). A and B must be the shots F was "
            "made of: metrics does not register them, so score a fusion made with --align against the "
            "registered, cropped shots that bafusion fuse --save-registered DIR writes."
        ),
    )
    p.add_argument("a", metavar="A", type=nonempty_path, help="first source image")
    p.add_argument("b", metavar="B", type=nonempty_path, help="second source image")
    p.add_argument("f", metavar="F", type=nonempty_path, help="fused image")
    p.add_argument("--format", choices=("csv", "json"), default="csv", help="output format (default csv)")
    p.add_argument(
        "--metrics",
        default=None,
        help=f"comma-separated metrics to compute (default: all eight, {','.join(METRICS)}; the paper's "
        f"four: {','.join(REQUIRED_METRICS)})",
    )
    p.add_argument("--no-progress", "--quiet", dest="progress", action="store_const", const=False, default=None,
                   help="do not name each metric on stderr as it starts (default: named when stderr is a terminal)")
    p.set_defaults(func=_cmd_metrics)
