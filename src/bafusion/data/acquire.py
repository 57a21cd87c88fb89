"""Acquiring the paper's data from the internet (``data.source: web``), or from a mirror.

Three steps, each a plain function and a ``bafusion`` subcommand:

- :func:`acquire_alphamatting` (``bafusion download-alphamatting``): the alphamatting.com
  training images and ground-truth mattes, verified against the published SHA-256 values,
  extracted to ``<out>/input/GTxx.png`` + ``<out>/gt/GTxx.png`` (the ``dir`` source's layout).
- :func:`acquire_coco` (``bafusion download-coco``): COCO-2017 annotations (md5-verified),
  candidate selection with pycocotools, images fetched in parallel from their ``coco_url``,
  the sharpest ``count`` kept (see :mod:`bafusion.data.coco`), written to ``<out>/<file_name>``
  with ``<out>/selection.json``.
- :func:`acquire_eval` (``bafusion download-eval``): the 20 Lytro pairs and the classic pairs
  listed with their SHA-256 in the packaged ``eval_manifest.json``, from a base URL or a
  local folder, written to ``<out>/lytro/...`` and ``<out>/classic/...``.

Every step takes a local override (a folder with the same layout, or a ``file://`` URL).
Downloads are cached under ``cache`` (default :func:`default_cache`, outside the work tree)
so a rerun fetches nothing that is already present and verified; each output folder is assembled under a
temporary name and renamed into place only when complete.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
import stat
import sys
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any


from bafusion.atomic import atomic_dir, shown_path
from bafusion.data.coco import (
    CocoFilter,
    Ranked,
    coco_url_problem,
    image_url,
    load_coco,
    measure,
    rank_by_sharpness,
    select_candidates,
)
from bafusion.data.download import (
    Checksum,
    FetchJob,
    FetchSummary,
    check_zip_sizes,
    extract_zip,
    fetch,
    fetch_many,
    file_digest,
    join_url,
    shown_location,
    to_url,
)
from bafusion.data.sources import dir_foregrounds
from bafusion.errors import InputFileError, UserError, json_loads
from bafusion.io.formats import pillow_open
from bafusion.workspace import home_path, resolve

ALPHAMATTING_URL = "http://www.alphamatting.com/datasets/zip/"
#: Published SHA-256 of the alphamatting.com archives (the highres ones are not published
#: here: pass ``checksums`` or ``allow_unverified``).
ALPHAMATTING_SHA256: dict[str, str] = {
    "input_training_lowres.zip": "78d403b0671424cd6e6a01b5489a4d26e53c40b1b9b98ea33f3ee02a09ccb5db",
    "gt_training_lowres.zip": "686d560ea2b6e920b97485a34b64c24657b049e751cf97b05c962ebd5f1f7569",
    "trimap_training_lowres.zip": "819a095689057c3747df5d18492b4ef42f13f2d8d58b18de1411938229a3f4b6",
}
#: Sizes (bytes) of the archives with those published checksums: a download is cut off there.
ALPHAMATTING_SIZE: dict[str, int] = {
    "input_training_lowres.zip": 18_218_854,
    "gt_training_lowres.zip": 2_268_429,
    "trimap_training_lowres.zip": 375_510,
}
COCO_ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"
COCO_ANNOTATIONS_CHECKSUM = "md5:f4bbac642086de4f52a3fdda2de5fa2c"
#: Size in bytes of the annotations archive with :data:`COCO_ANNOTATIONS_CHECKSUM`.
COCO_ANNOTATIONS_SIZE = 252_907_541
#: Most bytes one COCO photo may hold (they have no published size; the largest train2017
#: photos are a few MB): a server sending more is cut off.
COCO_IMAGE_MAX_BYTES = 64 * 2**20


def default_cache() -> Path:
    """The download cache: ``$BAFUSION_CACHE``, else ``$XDG_CACHE_HOME/bafusion/downloads``
    (``~/.cache/bafusion/downloads``). It lives outside the work tree so that every checkout
    and every ``dvc exp run --temp`` workspace reuses the verified downloads."""
    env = os.environ.get("BAFUSION_CACHE")
    if env:
        return Path(home_path(env))  # BAFUSION_CACHE='~/x' (quoted): the home's x, not ./~/x
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(home_path(xdg)) / "bafusion" / "downloads"


EVAL_MANIFEST = "eval_manifest.json"
EVAL_SETS = ("lytro", "classic")
RECORD = "download.json"
#: The ``kind`` each command records in its ``download.json`` (the command line refuses to
#: replace a folder of the other kind: :data:`bafusion.preflight.MARKER_KINDS`).
KIND_ALPHAMATTING, KIND_EVAL = "alphamatting", "eval"


@dataclass(frozen=True)
class NetOptions:
    """How to talk to servers: attempts after a failure, backoff base (s), socket timeout
    (s), parallel downloads, progress bars."""

    retries: int = 4
    backoff: float = 1.0
    timeout: float = 60.0
    workers: int = 8
    progress: bool = True


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _zip_ok(path: Path, *, test_crcs: bool = True) -> None:
    """Reject a download that is not a whole zip archive: a web page a server answered with 200,
    or a damaged file whose directory reads but whose members do not (with ``test_crcs``, every
    member's CRC is tested, after the archive passed :func:`check_zip_sizes`' limits: no zip
    bomb is unpacked). A download whose checksum matched is the published file: ``test_crcs``
    False spares reading it whole once more (:func:`_zip_check`)."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"not a zip archive ({e}; a web page instead of the file?)") from e
    check_zip_sizes(path, infos)
    if not test_crcs:
        return
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, RuntimeError, NotImplementedError) as e:
        raise UserError(f"corrupt zip archive ({e.__class__.__name__}: {e})") from e
    if bad is not None:
        raise UserError(f"corrupt zip archive (member {bad!r} fails its CRC check)")


def _zip_check(checksum: str | None) -> Callable[[Path], None]:
    """The ``validate`` of a zip download: :func:`_zip_ok`, its CRC test only without a
    ``checksum`` (:func:`~bafusion.data.download.fetch` validates after the checksum matched;
    the CRCs of the multi-GB archives took minutes to read again)."""
    return functools.partial(_zip_ok, test_crcs=not checksum)


def _annotations_ok(path: Path, *, test_crcs: bool = True) -> None:
    """Reject COCO annotations that are neither a zip archive nor a JSON object (a zip's CRCs
    tested with ``test_crcs``, as :func:`_zip_ok` does)."""
    if zipfile.is_zipfile(path):
        _zip_ok(path, test_crcs=test_crcs)
        return
    try:
        with open(path, encoding="utf-8") as f:
            data = json_loads(f.read())
    except (ValueError, OSError) as e:
        problem = f"{e.__class__.__name__}: {e}"
        raise UserError(f"neither a zip archive nor JSON ({problem}; a web page instead of the file?)") from e
    if not isinstance(data, dict):
        raise UserError(f"not COCO annotations (JSON {type(data).__name__}, expected an object)")


#: What :func:`check_copied_tree` calls a file that is neither a regular file nor a folder.
_SPECIAL_FILES = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def check_copied_tree(src: Path, subs: tuple[str, ...]) -> None:
    """Refuse, naming the entry, what copying ``src``'s ``subs`` whole (``download-alphamatting
    --from-dir``, which follows symbolic links) must not copy: a symbolic link, inside a sub, to
    a folder outside ``src`` and outside the subs (``input/ext -> /elsewhere`` copied that folder
    into the data folder and its record; ``input/home -> /`` would copy the whole file system;
    the layout holds files), a broken link or a loop of links, a link to a folder that holds it
    (``input/loop -> ..``: copied into itself until the path was too long), and a file that is
    neither a regular file nor a folder (a named pipe, which the copy refused with an internal
    error). Followed, as before: the subs themselves linked anywhere, links to files anywhere
    (a tree of links into DVC's cache, git-annex or ``cp -rs``), links to folders inside ``src``.

    Parameters
    ----------
    src : Path
        The folder given (``--from-dir``).
    subs : tuple of str
        Its sub-folders that are copied.

    Raises
    ------
    bafusion.errors.InputFileError
        Naming the first such entry, its target and what to do.
    """
    roots = {src.resolve()} | {(src / sub).resolve() for sub in subs if (src / sub).exists()}
    todo: list[tuple[Path, frozenset[Path]]] = [(src / sub, frozenset()) for sub in reversed(subs)]
    while todo:
        p, holding = todo.pop()
        if p.is_symlink():
            try:
                target = p.resolve(strict=True)
            except (OSError, RuntimeError) as e:
                raise InputFileError(p, f"broken symbolic link, or a loop of links (to {os.readlink(p)}): "
                                        "remove it") from e
            at = p.parent.resolve()
            if target == at or target in at.parents:
                raise InputFileError(p, f"symbolic link to {target}, a folder that holds it (a loop): remove it")
            if (target.is_dir() and p.parent != src
                    and not any(target == r or r in target.parents for r in roots)):
                raise InputFileError(p, f"symbolic link to the folder {target}, outside {src}: a folder linked from "
                                        "outside is not copied (input/ and gt/ hold files); copy or link its files "
                                        "in its place, or remove the link")
        try:
            mode = p.stat().st_mode
        except OSError as e:
            raise InputFileError(p, f"cannot be read ({e.strerror or e})") from e
        if stat.S_ISDIR(mode):
            here = p.resolve()
            if here in holding:
                raise InputFileError(p, f"symbolic link to {here}, a folder that holds it (a loop): remove it")
            try:
                entries = sorted(p.iterdir(), reverse=True)
            except OSError as e:
                raise InputFileError(p, f"cannot be listed ({e.strerror or e})") from e
            todo += [(q, holding | {here}) for q in entries]
        elif not stat.S_ISREG(mode):
            kind = next((name for test, name in _SPECIAL_FILES if test(mode)), "not a regular file")
            raise InputFileError(p, f"{kind}, not a regular file: it cannot be copied; remove it")


def _written(folder: Path, subs: tuple[str, ...]) -> list[str]:
    """Every file under ``folder``'s ``subs``, as sorted paths relative to ``folder``: what a
    command copied or extracted there, recorded so that a rerun knows them for its own (and a
    file the user adds later for no output of it: bafusion.preflight.MARKER_INNER)."""
    return sorted(p.relative_to(folder).as_posix() for sub in subs for p in (folder / sub).rglob("*")
                  if p.is_file() or p.is_symlink())


#: The key of a record that says which folder its relative local paths are relative to, where
#: that is not the project's root (:func:`relative_base`).
RELATIVE_TO = "relative_to"


def relative_base(*paths: str | os.PathLike[str] | None) -> dict[str, str]:
    """``{"relative_to": folder}`` for a record that names some of ``paths`` (local folders or
    files as the user gave them) relatively and was made outside the project's root folder (a
    by-hand ``download-eval --from-dir ../photos`` run in ``proj/sub``): ``folder`` is the
    working directory relative to the project's root (``sub``), or absolute outside any project
    (no ``dvc.yaml`` or ``Snakefile`` above it). Empty at the root (the pipeline's runs, also in a
    DVC experiment's copy, whose records stay the same in every checkout) and when every path is
    absolute or a URL."""
    from bafusion.workspace import project_root

    relative = [p for p in paths if p and "://" not in os.fspath(p) and not Path(home_path(p)).is_absolute()]
    if not relative:
        return {}
    here = Path.cwd().resolve()
    root = project_root(here)
    if root == here:
        in_project = (root / "dvc.yaml").exists() or (root / "Snakefile").exists()
        return {} if in_project else {RELATIVE_TO: str(here)}
    return {RELATIVE_TO: here.relative_to(root).as_posix()}


def _write_record(folder: Path, record: dict[str, Any], name: str = RECORD) -> None:
    (folder / name).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# alphamatting.com


def alphamatting_archives(resolution: str) -> tuple[str, str]:
    """The (input, ground truth) archive names for ``lowres`` or ``highres``."""
    if resolution not in ("lowres", "highres"):
        raise UserError(f"alphamatting resolution must be 'lowres' or 'highres', got {resolution!r}")
    return f"input_training_{resolution}.zip", f"gt_training_{resolution}.zip"


def acquire_alphamatting(
    out: str | Path,
    *,
    resolution: str = "lowres",
    base_url: str = ALPHAMATTING_URL,
    from_dir: str | Path | None = None,
    checksums: dict[str, str] | None = None,
    allow_unverified: bool = False,
    cache: str | Path | None = None,
    net: NetOptions = NetOptions(),
) -> dict[str, Any]:
    """Fetch, verify and extract the alphamatting.com training set into ``out``.

    ``from_dir`` is a local override: a folder holding the two archives, or an already
    extracted ``input/`` + ``gt/`` folder (checked and copied); the record names it as given
    (a relative path stays relative, so that the record is the same in every checkout; it is
    read from :func:`bafusion.workspace.resolve`). ``checksums`` maps archive names to
    ``"<algorithm>:<hex>"`` and overrides the published values (for a mirror with repacked
    archives). Returns the record written to ``<out>/download.json``.
    """
    out, cache = Path(out), Path(cache) if cache else default_cache()
    names = alphamatting_archives(resolution)
    source = base_url
    if from_dir:
        src, source = resolve(from_dir), os.fspath(from_dir)
        if not src.is_dir():
            raise InputFileError(src, "alphamatting folder not found")
        if (src / "input").is_dir() and (src / "gt").is_dir():
            fgs = dir_foregrounds(src)  # checks every image has its matte
            check_copied_tree(src, ("input", "gt"))
            with atomic_dir(out) as tmp:
                for sub in ("input", "gt"):
                    try:
                        shutil.copytree(src / sub, tmp / sub)
                    except shutil.Error as e:  # a file unreadable, or changed since the check
                        first = e.args[0][0] if e.args and isinstance(e.args[0], list) and e.args[0] else None
                        raise UserError(f"{first[0]}: cannot be copied ({shown_path(str(first[2]))})" if first
                                        else f"{src / sub}: cannot be copied ({e})") from e
                record = {"kind": KIND_ALPHAMATTING, "source": source, "foregrounds": len(fgs),
                          "resolution": resolution, "written": _written(tmp, ("input", "gt")),
                          **relative_base(source)}
                _write_record(tmp, record)
            _log(f"alphamatting: {len(fgs)} foregrounds copied from {src}")
            return record
        base_url = to_url(src)
    summary = FetchSummary()
    archives: dict[str, Path] = {}
    digests: dict[str, str] = {}
    for name in names:
        expected = (checksums or {}).get(name) or ALPHAMATTING_SHA256.get(name)
        if not expected and not allow_unverified:
            raise UserError(
                f"no published checksum for {name}: pass one (--checksum {name}=sha256:<hex>) or --allow-unverified"
            )
        url = join_url(base_url, name)
        published = bool(expected) and name in ALPHAMATTING_SHA256 and (
            Checksum.parse(expected) == Checksum.parse(ALPHAMATTING_SHA256[name])
        )
        res = fetch(
            url,
            cache / "alphamatting" / name,
            checksum=expected,
            size=ALPHAMATTING_SIZE.get(name) if published else None,
            retries=net.retries,
            backoff=net.backoff,
            timeout=net.timeout,
            progress=net.progress,
            validate=_zip_check(expected),
        )
        summary.add(res)
        archives[name] = res.path
        digests[name] = f"sha256:{file_digest(res.path, 'sha256')}" if not expected else str(Checksum.parse(expected))
        if not expected:
            _log(f"WARNING: {name} is unverified (no checksum given); its sha256 is {digests[name]}")
    _log(summary.format("alphamatting archives"))
    with atomic_dir(out) as tmp:
        extract_zip(archives[names[0]], tmp / "input")
        extract_zip(archives[names[1]], tmp / "gt")
        fgs = dir_foregrounds(tmp)  # every GTxx.png has its matte: the archives fit together
        record = {
            "kind": KIND_ALPHAMATTING,
            "source": source,
            **relative_base(source if from_dir else None),
            "resolution": resolution,
            "archives": digests,
            "foregrounds": len(fgs),
            "summary": summary.as_dict(),
            "written": _written(tmp, ("input", "gt")),
        }
        _write_record(tmp, record)
    _log(f"alphamatting: {len(fgs)} foregrounds with mattes -> {out}")
    return record


# ---------------------------------------------------------------------------------------------
# COCO backgrounds


def _file_name_problem(name: object) -> str | None:
    """Why an annotation's ``file_name`` cannot be used as a file name (None when it can):
    it must be a plain name, with no folder part, so that it stays inside the cache and ``out``."""
    if not isinstance(name, str) or not name:
        return "expected a plain file name (a non-empty string)"
    if "/" in name or "\\" in name or "\x00" in name or name in (".", "..") or Path(name).is_absolute():
        return "expected a plain file name (no '/', '\\', '.' or '..'; it would land outside the cache)"
    return None


def split_problem(split: object) -> str | None:
    """Why ``split`` (``download.coco.split``, ``--split``) cannot name a COCO split (None when
    it can): a plain name such as ``train2017``, since the photos land in ``<cache>/coco/<split>/``
    (``../../x`` wrote them outside the cache)."""
    if not isinstance(split, str) or not split or not (split[0].isascii() and split[0].isalnum()) or any(
        not (c.isascii() and (c.isalnum() or c in "_.-")) for c in split
    ):
        return "expected a plain COCO split name such as train2017 (letters, digits, '_', '.', '-'; no '/')"
    return None


def _image_ok(path: Path) -> None:
    """Reject a download that is not a complete, decodable image."""
    with pillow_open(path) as im:
        im.load()


def acquire_coco(
    out: str | Path,
    *,
    count: int,
    oversample: float = 2.0,
    flt: CocoFilter = CocoFilter(),
    seed: int = 0,
    annotations: str | Path | None = None,
    annotations_url: str = COCO_ANNOTATIONS_URL,
    annotations_checksum: str | None = COCO_ANNOTATIONS_CHECKSUM,
    image_base_url: str | None = None,
    images_dir: str | Path | None = None,
    min_sharpness: float = 0.0,
    max_failures: int | None = None,
    cache: str | Path | None = None,
    net: NetOptions = NetOptions(),
) -> dict[str, Any]:
    """Select, fetch and rank COCO backgrounds; the ``count`` sharpest land in ``out``.

    ``ceil(count * oversample)`` usable candidates (decodable, colour when
    ``flt.colour_only``) are gathered in the seed's order, topping up after failures or gray
    photos, then ranked by :func:`bafusion.data.coco.sharpness`. ``annotations`` (a local zip or
    JSON) overrides ``annotations_url``; ``image_base_url`` (``<base>/<split>/<file_name>``)
    or ``images_dir`` (a folder of ``<file_name>``; only the images present there are
    candidates) override each record's ``coco_url``. More than ``max_failures`` failed
    downloads (default: 10% of the pool + 10) stop the step. Local paths are recorded as
    given (in ``selection.json``: the same in every checkout) and read from
    :func:`bafusion.workspace.resolve`.
    """
    out, cache = Path(out), Path(cache) if cache else default_cache()
    if count <= 0:
        raise UserError(f"coco count must be > 0, got {count}")
    if oversample < 1.0:
        raise UserError(f"coco oversample must be >= 1, got {oversample}")
    problem = split_problem(flt.split)
    if problem:
        raise UserError(f"coco split {flt.split!r}: {problem}")
    pool_size = max(count, math.ceil(count * oversample))
    max_failures = (pool_size // 10 + 10) if max_failures is None else max_failures
    summary = FetchSummary()

    if annotations:
        ann_path = resolve(annotations)
        if not ann_path.is_file():
            raise InputFileError(ann_path, "COCO annotations file not found")
        ann_source = os.fspath(annotations)
    else:
        res = fetch(
            annotations_url,
            cache / "coco" / Path(annotations_url.rstrip("/")).name,
            checksum=annotations_checksum or None,
            size=COCO_ANNOTATIONS_SIZE if annotations_checksum == COCO_ANNOTATIONS_CHECKSUM else None,
            retries=net.retries,
            backoff=net.backoff,
            timeout=net.timeout,
            progress=net.progress,
            validate=functools.partial(_annotations_ok, test_crcs=not annotations_checksum),
        )
        summary.add(res)
        ann_path, ann_source = res.path, annotations_url
    _log(f"coco: reading {ann_path} ({flt.split})")
    coco = load_coco(ann_path, flt)
    candidates = select_candidates(coco, flt, seed)
    for r in candidates:  # each lands at cache/coco/<split>/<file_name> and out/<file_name>
        problem = _file_name_problem(r.get("file_name"))
        if problem:
            raise InputFileError(
                ann_path, f"image record {r.get('id')!r} has file_name {r.get('file_name')!r}: {problem}"
            )
        if not images_dir and not image_base_url and r.get("coco_url"):  # fetched from its coco_url
            problem = coco_url_problem(r["coco_url"])
            if problem:
                raise InputFileError(ann_path, f"image record {r.get('id')!r} has coco_url {r['coco_url']!r}: {problem}")
    seen: set[str] = set()
    unique = []
    for r in candidates:  # one photo per file name: a second record would overwrite the first
        if r["file_name"] not in seen:
            seen.add(r["file_name"])
            unique.append(r)
    if len(unique) < len(candidates):
        _log(f"coco: {len(candidates) - len(unique)} image record(s) whose file_name an earlier candidate has were "
             "dropped (a file name is kept once)")
        candidates = unique
    local: Path | None = resolve(images_dir) if images_dir else None
    if local is not None:
        if not local.is_dir():
            raise InputFileError(local, "COCO images folder not found")
        present = {p.name for p in local.iterdir()}
        candidates = [r for r in candidates if r["file_name"] in present]
    _log(f"coco: {len(candidates)} candidate images pass the filters; gathering {pool_size} to keep {count}")

    measured: list[Ranked] = []
    next_i = 0
    while True:
        usable = sum(1 for m in measured if m.colour or not flt.colour_only)
        need = pool_size - usable
        if need <= 0 or next_i >= len(candidates):
            break
        batch = candidates[next_i : next_i + need]
        next_i += len(batch)
        jobs = []
        shown = []  # where each candidate is from, as recorded
        for r in batch:
            url = join_url(str(local), r["file_name"]) if local is not None else image_url(r, flt.split, image_base_url)
            jobs.append(FetchJob(url, cache / "coco" / flt.split / r["file_name"]))
            shown.append((Path(images_dir) / r["file_name"]).as_posix() if images_dir else url)
        s = fetch_many(
            jobs,
            workers=net.workers,
            retries=net.retries,
            backoff=net.backoff,
            timeout=net.timeout,
            progress=net.progress,
            desc="coco images",
            validate=_image_ok,
            max_bytes=COCO_IMAGE_MAX_BYTES,
        )
        # a failed local photo as its kept ones are recorded (the path as given), not the file:// URL
        # of the folder resolved here (the record would differ between checkouts)
        where_of = {job.url: where for job, where in zip(jobs, shown)}
        s.failed = [(where_of.get(u, u), msg) for u, msg in s.failed]
        summary.extend(s)
        if len(summary.failed) > max_failures:
            _log(summary.format("coco"))
            raise UserError(
                f"coco: {len(summary.failed)} image downloads failed (more than max_failures={max_failures}); "
                f"first: {shown_location(summary.failed[0][0])}: {summary.failed[0][1]}"
            )
        ok = {r.path for r in s.downloaded + s.skipped}
        for r, job, where in zip(batch, jobs, shown):
            if job.dest not in ok:
                continue
            m = measure(job.dest, id=Path(r["file_name"]).stem, meta={"coco_id": r["id"], "url": where})
            measured.append(m)
    kept, dropped = rank_by_sharpness(measured, count, colour_only=flt.colour_only, min_sharpness=min_sharpness)
    _log(summary.format("coco"))
    if len(kept) < count:
        raise UserError(
            f"coco: only {len(kept)} usable backgrounds of the {count} requested "
            f"({len(candidates)} candidates passed the filters, {len(summary.failed)} downloads failed): "
            "relax the filters or lower the count"
        )
    with atomic_dir(out) as tmp:
        for m in kept:
            shutil.copyfile(m.path, tmp / m.path.name)
        record = {
            "source": {"annotations": ann_source,
                       "images": os.fspath(images_dir) if images_dir else (image_base_url or "coco_url")},
            **relative_base(annotations, images_dir),
            "params": {
                "count": count,
                "oversample": oversample,
                "pool": pool_size,
                "seed": seed,
                "split": flt.split,
                "min_side": flt.min_side,
                "colour_only": flt.colour_only,
                "categories": list(flt.categories),
                "exclude": list(flt.exclude),
                "min_sharpness": min_sharpness,
            },
            "criterion": "variance of the Laplacian of the gray image at long side <= 512 px; the sharpest are kept",
            "kept": [
                {
                    "file": m.path.name,
                    "coco_id": m.meta["coco_id"],
                    "url": m.meta["url"],
                    "sharpness": round(m.sharpness, 3),
                    "width": m.width,
                    "height": m.height,
                }
                for m in kept
            ],
            "dropped": [
                {"file": m.path.name, "sharpness": round(m.sharpness, 3), "reason": why} for m, why in dropped
            ],
            "summary": summary.as_dict(),
        }
        _write_record(tmp, record, "selection.json")
    sharp = [m.sharpness for m in kept]
    _log(
        f"coco: kept {len(kept)} of {len(measured)} measured candidates -> {out} "
        f"(sharpness {min(sharp):.1f}..{max(sharp):.1f})"
    )
    return record


# ---------------------------------------------------------------------------------------------
# Evaluation pairs


def load_eval_manifest(path: str | Path | None = None) -> dict[str, Any]:
    """The eval manifest: ``{"files": [{"name", "set", "size", "sha256"}, ...]}`` (the
    packaged one when ``path`` is None)."""
    try:
        if path is None:
            text = resources.files("bafusion.data").joinpath(EVAL_MANIFEST).read_text(encoding="utf-8-sig")
            where = f"bafusion/{EVAL_MANIFEST}"
        else:
            text = Path(home_path(path)).read_text(encoding="utf-8-sig")
            where = str(path)
        m = json_loads(text)
    except FileNotFoundError as e:
        raise InputFileError(path or EVAL_MANIFEST, "eval manifest not found") from e
    except ValueError as e:
        raise InputFileError(path or EVAL_MANIFEST, f"corrupt eval manifest: {e}") from e
    if not isinstance(m, dict) or not isinstance(m.get("files"), list):
        raise InputFileError(where, 'not an eval manifest (expected a JSON object {"files": [...]})')
    seen: set[str] = set()
    for f in m["files"]:
        problem = _manifest_entry_problem(f)
        if problem is None and f["name"] in seen:
            problem = "listed twice"
        if problem:
            raise InputFileError(where, f"bad manifest entry {f!r}: {problem}")
        seen.add(f["name"])
    return m


def _eval_set(entry: dict[str, Any]) -> str:
    """The set of a manifest entry: its ``set``, else the top folder of its name."""
    return entry.get("set", entry["name"].split("/")[0])


def _manifest_entry_problem(f: object) -> str | None:
    """What is wrong with one eval manifest entry (None when nothing is)."""
    if not isinstance(f, dict):
        return 'expected an object {"name": ..., "sha256": ...}'
    name, digest = f.get("name"), f.get("sha256")
    if not isinstance(name, str) or not name:
        return "'name' must be a relative file name such as 'lytro/lytro-01-A.jpg'"
    parts = name.split("/")
    if "\\" in name or "\x00" in name or any(part in ("", ".", "..") for part in parts):
        return "'name' must be a relative path without '.', '..', '\\' or empty parts (it could land outside --out)"
    if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest):
        return "'sha256' must be 64 hexadecimal digits"
    if not isinstance(f.get("set", ""), str):
        return "'set' must be a string"
    size = f.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        return "'size' must be the file's size in bytes (an integer >= 0)"
    return None


def acquire_eval(
    out: str | Path,
    *,
    base_url: str | None = None,
    from_dir: str | Path | None = None,
    sets: tuple[str, ...] = EVAL_SETS,
    manifest: str | Path | None = None,
    cache: str | Path | None = None,
    net: NetOptions = NetOptions(),
) -> dict[str, Any]:
    """Fetch the evaluation pairs listed in the manifest, verify their SHA-256, write ``out``.

    The files come from ``<base_url>/<name>`` or, with ``from_dir``, from
    ``<from_dir>/<name>`` (a folder laid out like the manifest: ``lytro/lytro-01-A.jpg``...;
    recorded as given, read from :func:`bafusion.workspace.resolve`).
    """
    out, cache = Path(out), Path(cache) if cache else default_cache()
    m = load_eval_manifest(manifest)
    if from_dir:
        if not resolve(from_dir).is_dir():
            raise InputFileError(resolve(from_dir), "eval folder not found")
        base, source = to_url(resolve(from_dir)), os.fspath(from_dir)
    elif base_url:
        base = source = base_url
    else:
        raise UserError(
            "download-eval needs a source: a base URL (--base-url, params download.eval.base_url) "
            "or a local folder (--from-dir, download.eval.from_dir)"
        )
    known = {_eval_set(f) for f in m["files"]}
    unknown = sorted(set(sets) - known)
    if unknown:
        raise UserError(f"unknown eval set(s) {unknown}; the manifest has {sorted(known)}")
    files = [f for f in m["files"] if _eval_set(f) in sets]
    jobs = [FetchJob(join_url(base, f["name"]), cache / "eval" / f["name"], f"sha256:{f['sha256']}", f.get("size"))
            for f in files]
    summary = fetch_many(
        jobs,
        workers=net.workers,
        retries=net.retries,
        backoff=net.backoff,
        timeout=net.timeout,
        progress=net.progress,
        desc="eval pairs",
    )
    _log(summary.format("eval pairs"))
    if summary.failed:
        url, msg = summary.failed[0]
        raise UserError(f"{len(summary.failed)} of {len(jobs)} eval files failed; first: {shown_location(url)}: {msg}")
    with atomic_dir(out) as tmp:
        for f, job in zip(files, jobs):
            dest = tmp / f["name"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(job.dest, dest)
        folders = sorted({f["name"].split("/")[0] for f in files})  # what --out holds (see preflight)
        record = {"kind": KIND_EVAL, "source": source, "sets": list(sets), "folders": folders, "files": len(files),
                  "summary": summary.as_dict(), **relative_base(from_dir)}
        _write_record(tmp, record)
    _log(f"eval: {len(files)} files -> {out}")
    return record


# ---------------------------------------------------------------------------------------------
# A record of what was downloaded (a small file DVC can track while the folders are not)


def folder_digest(folder: str | Path) -> tuple[int, str]:
    """(number of files, sha256 over the sorted (relative path, file sha256) list); hidden
    files (such as Snakemake's ``.snakemake_timestamp``) are left out. A leading ``~`` is the
    home folder (a record names the folder as given)."""
    root = Path(home_path(folder))
    if not root.is_dir():
        raise InputFileError(root, "is a file, not a folder" if root.exists() else "folder not found")
    h = hashlib.sha256()
    n = 0
    files = [
        q for q in root.rglob("*") if q.is_file() and not any(part.startswith(".") for part in q.relative_to(root).parts)
    ]
    for p in sorted(files):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + file_digest(p).encode() + b"\n")
        n += 1
    return n, h.hexdigest()


def write_download_record(out: str | Path, source: str, folders: dict[str, str | Path]) -> dict[str, Any]:
    """Write ``out`` (JSON): the data source and, per downloaded folder, its file count and
    content digest. With ``source`` other than ``web`` it records that nothing was fetched."""
    from bafusion.atomic import write_text

    record: dict[str, Any] = {"source": source, "folders": {}, **relative_base(*folders.values())}
    for name, folder in sorted(folders.items()):
        n, digest = folder_digest(folder)
        record["folders"][name] = {"path": str(folder), "files": n, "sha256": digest}
    write_text(out, json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record
