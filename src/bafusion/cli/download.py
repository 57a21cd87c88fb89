"""``bafusion download-*``: fetch and verify the datasets (argument parsing only; the work is :mod:`bafusion.data.acquire`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bafusion.cli.common import (finite_float, home_path, non_negative_int, nonempty_csv, nonempty_path, positive_int, seed_int,
                                 user_path)
from bafusion.data.acquire import (
    ALPHAMATTING_URL,
    COCO_ANNOTATIONS_CHECKSUM,
    COCO_ANNOTATIONS_URL,
    EVAL_SETS,
    RECORD,
    NetOptions,
    acquire_alphamatting,
    acquire_coco,
    acquire_eval,
    default_cache,
    split_problem,
    write_download_record,
)
from bafusion.data.coco import CocoFilter
from bafusion.data.download import (
    MAX_TIMEOUT,
    Checksum,
)
from bafusion.errors import UserError

# ---------------------------------------------------------------------------------------------
# Command line


def _net(args: argparse.Namespace) -> NetOptions:
    return NetOptions(
        retries=args.retries, backoff=args.backoff, timeout=args.timeout, workers=args.workers, progress=not args.no_progress
    )


def _outside(path: str | None) -> str | None:
    """The cache folder option: None when empty; ``../x`` from a DVC experiment's copy of the
    project is the workspace's (:func:`bafusion.workspace.resolve`). The data folders are passed
    as given: the records name them so (the same in every checkout), and
    :mod:`bafusion.data.acquire` reads them from the same place."""
    from bafusion.workspace import resolve

    return str(resolve(path)) if path else None


def _csv(s: str | None) -> tuple[str, ...]:
    return tuple(x for x in (t.strip() for t in (s or "").split(",")) if x)


def _checksums(items: list[str] | None) -> dict[str, str]:
    out = {}
    for it in items or []:
        name, sep, value = it.partition("=")
        if not sep or not name or not value:
            raise UserError(f"--checksum {it!r}: expected NAME=ALGORITHM:HEX")
        Checksum.parse(value)
        out[name] = value
    return out


def _net_params(args: argparse.Namespace) -> dict:
    """``download.cache`` and ``download.net.*`` of the options the four commands share."""
    return {"cache": args.cache,
            "net": {"retries": args.retries, "backoff": args.backoff, "timeout": args.timeout, "workers": args.workers}}


def _alphamatting_run(args: argparse.Namespace) -> tuple[dict, dict]:
    return ({"download": {**_net_params(args), "alphamatting": {
                "resolution": args.resolution, "base_url": args.base_url, "from_dir": args.from_dir,
                "checksums": _checksums(args.checksum)}}},
            {"allow_unverified": args.allow_unverified})


def _coco_run(args: argparse.Namespace) -> tuple[dict, dict]:
    coco = {"count": args.count, "oversample": args.oversample, "split": args.split, "min_side": args.min_side,
            "colour_only": not args.allow_gray, "categories": list(_csv(args.categories)),
            "exclude_categories": list(_csv(args.exclude_categories)), "min_sharpness": args.min_sharpness,
            "annotations": args.annotations, "annotations_url": args.annotations_url,
            "annotations_checksum": args.annotations_checksum, "image_base_url": args.image_base_url,
            "images_dir": args.images_dir}
    return ({"seed": args.seed, "download": {**_net_params(args), "coco": coco}},
            {"max_failures": "none" if args.max_failures is None else args.max_failures})


def _eval_run(args: argparse.Namespace) -> tuple[dict, dict]:
    return ({"download": {**_net_params(args), "eval": {
                "base_url": args.base_url, "from_dir": args.from_dir, "sets": list(_csv(args.sets))}}},
            {"manifest": args.manifest or "packaged"})


def _record_run(args: argparse.Namespace) -> tuple[dict, dict]:
    return {"data": {"source": args.source}}, {"folders": " ".join(args.folders or []) or "none"}


def _logged(stage: str, run_of):
    """Run a ``download-*`` command as the MLflow step ``stage``. ``run_of(args)`` gives its
    params, named by params.yaml's keys with the values the rules pass from there
    (``download.coco.split``, ``download.net.retries``, ``seed``; ``download.coco.count`` is
    the count the command was given: the rule's when params.yaml's is 0), and tags for the
    options params.yaml has no key for (``allow_unverified``, ...), besides ``output``: the
    folder or file written. They were logged as ``download.<option>``, names params.yaml does
    not hold (``download.retries``, ``download.allow_gray``, ``download.out``)."""

    def wrap(fn):
        def cmd(args: argparse.Namespace) -> int:
            from bafusion import tracking

            params, tags = run_of(args)
            with tracking.stage_run(stage, params, tags={"output": args.out, **tags}):
                return fn(args)

        cmd.__doc__ = fn.__doc__
        return cmd

    return wrap


@_logged("download_alphamatting", _alphamatting_run)
def cmd_download_alphamatting(args: argparse.Namespace) -> int:
    rec = acquire_alphamatting(
        args.out,
        resolution=args.resolution,
        base_url=args.base_url,
        from_dir=args.from_dir or None,
        checksums=_checksums(args.checksum),
        allow_unverified=args.allow_unverified,
        cache=_outside(args.cache),
        net=_net(args),
    )
    print(f"{rec['foregrounds']} foregrounds with their mattes -> {args.out} "
          f"(recorded in {Path(args.out) / RECORD})")
    return 0


def _split(s: str) -> str:
    """argparse type of ``--split``: a plain name (see :func:`bafusion.data.acquire.split_problem`)."""
    problem = split_problem(s)
    if problem:
        raise argparse.ArgumentTypeError(f"{s!r}: {problem}")
    return s


@_logged("download_coco", _coco_run)
def cmd_download_coco(args: argparse.Namespace) -> int:
    flt = CocoFilter(
        split=args.split,
        min_side=args.min_side,
        colour_only=not args.allow_gray,
        categories=_csv(args.categories),
        exclude=_csv(args.exclude_categories),
    )
    rec = acquire_coco(
        args.out,
        count=args.count,
        oversample=args.oversample,
        flt=flt,
        seed=args.seed,
        annotations=args.annotations or None,
        annotations_url=args.annotations_url,
        annotations_checksum=args.annotations_checksum,
        image_base_url=args.image_base_url or None,
        images_dir=args.images_dir or None,
        min_sharpness=args.min_sharpness,
        max_failures=args.max_failures,
        cache=_outside(args.cache),
        net=_net(args),
    )
    print(f"{len(rec['kept'])} backgrounds kept, {len(rec['dropped'])} dropped -> {args.out} "
          f"(recorded in {Path(args.out) / 'selection.json'})")
    return 0


@_logged("download_eval", _eval_run)
def cmd_download_eval(args: argparse.Namespace) -> int:
    rec = acquire_eval(
        args.out,
        base_url=args.base_url or None,
        from_dir=args.from_dir or None,
        sets=_csv(args.sets) or EVAL_SETS,
        manifest=args.manifest or None,
        cache=_outside(args.cache),
        net=_net(args),
    )
    print(f"{rec['files']} files of the test sets -> {args.out} (recorded in "
          f"{Path(args.out) / RECORD})")
    return 0


def _named_folder(item: str) -> tuple[str, str]:
    """``NAME=FOLDER`` (or ``FOLDER``, named by its last part) of ``download-record``."""
    name, sep, path = item.partition("=")
    return (name, path) if sep else (Path(item).name, item)


class _FoldersAction(argparse.Action):
    """Store ``download-record``'s ``[NAME=]FOLDER`` arguments as given (``folders``) and their
    paths (``folder_paths``: the inputs the preflight keeps ``--out`` out of)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # type: ignore[no-untyped-def]
        items = list(values or [])
        setattr(namespace, self.dest, items)
        namespace.folder_paths = [home_path(_named_folder(item)[1]) for item in items]


@_logged("download", _record_run)
def cmd_download_record(args: argparse.Namespace) -> int:
    folders = dict(_named_folder(item) for item in args.folders)
    rec = write_download_record(args.out, args.source, folders)
    counted = ", ".join(f"{k} {v['files']} files" for k, v in rec["folders"].items())
    print(f"data source {args.source}: {counted or 'nothing downloaded'} -> {args.out}")
    return 0


#: The values of params ``data.source`` (the schema's enum; a test keeps the two equal).
DATA_SOURCES = ("builtin", "dir", "web")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``download-alphamatting``, ``download-coco``, ``download-eval`` and ``download-record``."""
    net = argparse.ArgumentParser(add_help=False)
    net.add_argument(
        "--cache", type=user_path, default="", help=f"download cache folder (default $BAFUSION_CACHE or {default_cache()})"
    )
    net.add_argument("--retries", type=non_negative_int, default=4, help="further attempts after a failed one (default %(default)s)")
    net.add_argument(
        "--backoff", type=finite_float(0.0), default=1.0, help="seconds before the first retry, doubling (default %(default)s)"
    )
    net.add_argument("--timeout", type=finite_float(0.0, above=True, maximum=MAX_TIMEOUT), default=60.0, help="socket timeout in seconds, and the grace after which a download must average 1 KiB/s "
                     "(bafusion.data.download.MIN_RATE) (default %(default)s)")
    net.add_argument("--workers", type=positive_int, default=8, help="parallel downloads of small files (default %(default)s)")
    net.add_argument("--no-progress", "--quiet", dest="no_progress", action="store_true", help="no progress bars")

    p = sub.add_parser(
        "download-alphamatting", parents=[net], help="fetch + verify + extract the alphamatting.com training set"
    )
    p.add_argument("-o", "--output", "--out", dest="out", type=nonempty_path, required=True, help="output folder (gets input/ and gt/)")
    p.add_argument("--resolution", choices=["lowres", "highres"], default="lowres",
                   help="which archives: lowres (long side about 800 px, the paper's) or highres (no checksums known here: "
                        "give --checksum or --allow-unverified) (default %(default)s)")
    p.add_argument("--base-url", type=user_path, default=ALPHAMATTING_URL,
                   help="where the archives are (a mirror, file:// URL or folder)")
    p.add_argument("--from-dir", type=user_path, default="",
                   help="local override: folder with the archives, or with input/ and gt/")
    p.add_argument("--checksum", action="append", metavar="NAME=ALGO:HEX", help="override an archive's checksum")
    p.add_argument("--allow-unverified", action="store_true", help="accept archives without a known checksum")
    p.set_defaults(func=cmd_download_alphamatting)

    p = sub.add_parser("download-coco", parents=[net], help="select, fetch and rank COCO-2017 backgrounds")
    p.add_argument("-o", "--output", "--out", dest="out", type=nonempty_path, required=True, help="output folder of background photos")
    p.add_argument("--count", type=positive_int, required=True, help="backgrounds to keep (paper: 700)")
    p.add_argument("--oversample", type=finite_float(1.0), default=2.0, help="candidates ranked per kept image (default %(default)s)")
    p.add_argument("--seed", type=seed_int, default=0,
                   help="seed of the shuffle that picks the candidates (default %(default)s)")
    p.add_argument("--split", type=_split, default="train2017",
                   help="COCO split to draw from (default %(default)s, the paper's COCO-2017)")
    p.add_argument("--min-side", type=non_negative_int, default=256, help="smallest allowed min(width, height)")
    p.add_argument("--allow-gray", action="store_true", help="keep gray photos too")
    p.add_argument("--categories", default="", help="comma-separated COCO category names; an image needs one")
    p.add_argument("--exclude-categories", default="", help="comma-separated COCO category names to avoid")
    p.add_argument("--min-sharpness", type=finite_float(0.0), default=0.0, help="absolute floor for the Laplacian variance")
    p.add_argument("--max-failures", type=non_negative_int, default=None, help="failed image downloads tolerated (default: a tenth of the "
                   "candidates, count x oversample, plus 10)")
    p.add_argument("--annotations", type=user_path, default="", help="local override: annotations zip or COCO JSON")
    p.add_argument("--annotations-url", default=COCO_ANNOTATIONS_URL,
                   help="where the COCO annotations zip is fetched from when --annotations is not given (default %(default)s)")
    p.add_argument("--annotations-checksum", default=COCO_ANNOTATIONS_CHECKSUM, help="'' to skip the check")
    p.add_argument("--image-base-url", default="", help="mirror: images at <base>/<split>/<file_name>")
    p.add_argument("--images-dir", type=user_path, default="", help="local override: folder of <file_name> images")
    p.set_defaults(func=cmd_download_coco)

    p = sub.add_parser("download-eval", parents=[net], help="fetch + verify the Lytro and classic evaluation pairs")
    p.add_argument("-o", "--output", "--out", dest="out", type=nonempty_path, required=True, help="output folder (gets lytro/ and classic/)")
    p.add_argument("--base-url", type=user_path, default="", help="where the files are: <base>/<set>/<file>")
    p.add_argument("--from-dir", type=user_path, default="", help="local override: folder laid out like the manifest")
    p.add_argument("--sets", type=nonempty_csv, default=",".join(EVAL_SETS), help="comma-separated: lytro, classic")
    p.add_argument("--manifest", type=user_path, default="", help="another manifest (default: the packaged one)")
    p.set_defaults(func=cmd_download_eval)

    p = sub.add_parser("download-record", help="write a JSON record (file counts, digests) of downloaded folders")
    p.add_argument("-o", "--output", "--out", dest="out", type=nonempty_path, required=True, help="the record file (e.g. data/download/record.json)")
    p.add_argument("--source", required=True, choices=DATA_SOURCES, help="params data.source (builtin, dir or web)")
    p.add_argument("folders", nargs="*", metavar="[NAME=]FOLDER", action=_FoldersAction,
                   help="downloaded folders to describe")
    p.set_defaults(func=cmd_download_record, folder_paths=[])
