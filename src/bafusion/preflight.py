"""Checks the ``bafusion`` command runs before a command starts any work.

Every command's output paths are listed once, in :data:`COMMAND_OUTPUTS` (by their argparse
``dest``), with the arguments naming its inputs. Before the command runs,
:func:`check_command` refuses, with a :class:`~bafusion.errors.UserError` (one line, exit 2):

* an output that *is* one of the inputs, however spelled (``./a.png``, an absolute path, a
  symlink, a hard link: resolved paths and inodes are compared): an input is never
  overwritten, while an existing output that is no input is replaced atomically;
* an output file that is a folder or a special file, an image output of an unknown format;
* an output whose folder cannot be created or written (a file in the way of a parent folder,
  a read-only or virtual file system): a probe file is created and removed in the nearest
  existing folder, so the answer is the file system's, also for root;
* an output folder that is an existing file; a folder that the command replaces whole when it
  holds one of the inputs or the working directory, or files that are no earlier output of the
  command (a folder neither empty nor holding its marker, :data:`OUTPUT_MARKERS`, or one holding
  it beside entries the command did not write, also inside the folders it vouches for:
  ``maps/notes.txt`` of fuse-set, :func:`foreign_entries`; an earlier ``--report`` or
  ``--plots`` of evaluate inside ``--out`` is its own while it holds what its record,
  :data:`OUTPUT_RECORDS`, says was written): they would be deleted with it; and the output of another command that writes the same marker (download-eval's and
  download-alphamatting's ``download.json``: the kind it records, :func:`download_kind`);
* an output inside an input folder whose every file is an input (``composite --out`` inside
  ``--prepared``; also an output folder: ``testset --out`` inside ``--prepared``), an output file
  that is an existing file of an input folder (``fuse-set --report`` onto ``--pairs``' index.json or
  an image), a file a command writes into its output folder that is an input
  (``patches --out sh sh/initial.h5``);
* two outputs that are one path (``fuse -o X --save-maps X``, ``patches --out sh --summary
  sh/initial.h5``): the second would overwrite the first;
* a ``--device`` this machine does not have (evaluate's is checked by evaluate, only where a
  method it evaluates runs the nets: otherwise it is not used, and said so; fuse's, fuse-dir's
  and fuse-set's by the command once its input files are checked: a device other than cpu or
  auto imports torch, seconds before a missing file's refusal).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bafusion.errors import UserError, json_loads

#: Suffixes an output image may have (the format follows the suffix; a .webp is lossless unless
#: a quality is given, :func:`bafusion.io.write_image`).
IMAGE_OUTPUT_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg", ".webp")


#: Suffixes of formats bafusion reads that an output image may have under another suffix.
_OUTPUT_SPELLING = {".apng": ".png", ".jpe": ".jpg", ".jfif": ".jpg", ".mpo": ".jpg", ".dib": ".bmp"}
#: Names of formats bafusion reads and no command writes, by suffix (others: the suffix in capitals).
_FORMAT_NAMES = {".avif": "AVIF", ".jp2": "JPEG 2000", ".j2k": "JPEG 2000", ".j2c": "JPEG 2000",
                 ".jpc": "JPEG 2000", ".jpf": "JPEG 2000", ".jpx": "JPEG 2000", ".pfm": "PFM (float)",
                 ".rgb": "SGI", ".bw": "SGI", ".pbm": "netpbm", ".pgm": "netpbm", ".ppm": "netpbm", ".pnm": "netpbm"}


def read_not_written(suffix: str, command: str) -> str | None:
    """Why ``command`` refuses an output of ``suffix`` when that is a format bafusion reads (AVIF:
    "AVIF is not an output format of bafusion fuse (it reads AVIF sources)"), where "unknown
    image format" was said; None for a suffix of no format it reads.

    Parameters
    ----------
    suffix : str
        The suffix with its dot (``.avif``), in either case.
    command : str
        The command as a user types it (``bafusion fuse``).

    Returns
    -------
    str or None
        The reason, without the suffixes to use instead.
    """
    from bafusion.io.formats import IMAGE_SUFFIXES  # Pillow: only when refusing

    s = suffix.lower()
    if s in _OUTPUT_SPELLING:
        return f"{command} writes this format with the suffix {_OUTPUT_SPELLING[s]}, not {suffix}"
    if s not in IMAGE_SUFFIXES:
        return None
    name = _FORMAT_NAMES.get(s, s[1:].upper())
    return f"{name} is not an output format of {command} (it reads {name} sources)"


@dataclass(frozen=True)
class OutputSpec:
    """Argument dests of one command: outputs by kind, and the inputs they must not be."""

    files: tuple[str, ...] = ()  #: output files
    images: tuple[str, ...] = ()  #: output image files (suffix checked too)
    dirs: tuple[str, ...] = ()  #: folders written into
    replaced_dirs: tuple[str, ...] = ()  #: folders replaced whole (atomic_dir)
    inputs: tuple[str, ...] = ()  #: input files or folders (a string or a list of them)
    positional: tuple[str, ...] = ()  #: dests given as positional arguments, named by their metavar
    #: input folders no output file may lie inside (composite's --prepared, fuse-set's --pairs: any
    #: file there is an input, or may be one: a --report replaced index.json or a pair's image);
    #: an output folder may (it adds to the folder)
    closed_inputs: tuple[str, ...] = ()
    #: closed inputs no output folder may lie inside either (testset's --prepared: ``--out prep/fg``
    #: would replace the foregrounds)
    closed_to_folders: tuple[str, ...] = ()
    #: input folders whose existing files are inputs (fuse-set's --pairs: its index.json and the
    #: pairs' images): an output file may not replace one; a new file there is allowed
    read_folders: tuple[str, ...] = ()
    #: the files the command writes into each of its ``dirs`` (patches' initial.h5, boundary.h5)
    dir_files: tuple[str, ...] = ()
    #: ``(dest, option)`` where the option's main spelling is not the dest's (train's ``--report``,
    #: dest ``metrics``: "the --metrics file" named a spelling README does not lead with)
    flags: tuple[tuple[str, str], ...] = ()

    def flag(self, dest: str) -> str:
        """How the user gave ``dest``: ``--save-maps``, ``-o/--output``, or ``OUT`` (positional)."""
        named = dict(self.flags)
        if dest in named:
            return named[dest]
        if dest in self.positional:
            return dest.upper() if dest != "output" else "OUT"
        return "-o/--output" if dest == "output" else f"--{dest.replace('_', '-')}"


_NETS = ("initial", "boundary", "model", "models", "params_file")

#: Outputs and inputs of every command (commands not listed write nothing or edit on purpose,
#: like ``preset --apply``).
COMMAND_OUTPUTS: dict[str, OutputSpec] = {
    "fuse": OutputSpec(images=("output",), dirs=("save_maps", "save_registered"), inputs=("images", *_NETS)),
    "fuse-set": OutputSpec(replaced_dirs=("out",), files=("report",), inputs=("pairs", *_NETS),
                           read_folders=("pairs",)),
    "fuse-dir": OutputSpec(dirs=("output", "save_registered"), inputs=("input", *_NETS), positional=("output",)),
    "baseline": OutputSpec(images=("output",), inputs=("a", "b")),
    "evaluate": OutputSpec(replaced_dirs=("out",), files=("report", "plots"), inputs=("root", *_NETS)),
    "train": OutputSpec(files=("out", "metrics", "plots", "log"), dirs=("checkpoints",), inputs=("patches", "params"),
                        flags=(("metrics", "--report/--metrics"),)),
    "ensemble": OutputSpec(files=("out",), inputs=("members",)),
    "prepare": OutputSpec(replaced_dirs=("out",), inputs=("alphamatting", "backgrounds_dir")),
    "composite": OutputSpec(files=("out",), inputs=("prepared",), closed_inputs=("prepared",)),
    "composite-index": OutputSpec(files=("out",), inputs=("shards",)),
    "testset": OutputSpec(replaced_dirs=("out",), inputs=("prepared",), closed_inputs=("prepared",),
                          closed_to_folders=("prepared",)),
    "patches": OutputSpec(dirs=("out",), files=("summary",), inputs=("shards",),
                          dir_files=("initial.h5", "boundary.h5")),
    "download-alphamatting": OutputSpec(replaced_dirs=("out",), inputs=("from_dir", "cache")),
    "download-coco": OutputSpec(replaced_dirs=("out",), inputs=("annotations", "images_dir", "cache")),
    "download-eval": OutputSpec(replaced_dirs=("out",), inputs=("from_dir", "manifest", "cache")),
    # the folders it describes (NAME=FOLDER: their paths): the record is no file of theirs
    "download-record": OutputSpec(files=("out",), inputs=("folder_paths",), closed_inputs=("folder_paths",)),
}


#: The file that marks an earlier output of a command that replaces its folder whole: an
#: existing folder without it that is not empty holds someone's files, and is refused.
OUTPUT_MARKERS: dict[str, str] = {
    "prepare": "manifest.json",
    "testset": "index.json",
    "evaluate": "metrics.json",
    "fuse-set": "accuracy.json",
    "download-alphamatting": "download.json",
    "download-eval": "download.json",
    "download-coco": "selection.json",
}


def _fuse_set_entries(doc: Any) -> set[str]:
    return {"maps", *(f"{name}.png" for name in doc["pairs"])}


def _testset_entries(doc: Any) -> set[str]:
    return {f"{p['name']}-{k}.png" for p in doc["pairs"] for k in ("A", "B", "truth", "dm")}


#: The key of evaluate's ``metrics.json`` (the one in its output folder; not the DVC metrics
#: file, numbers only) that records what made the output: bafusion's version, the nets of
#: ``Ours`` (as given, and their sha256) and the fusion parameters. No dataset takes the name.
EVALUATE_PROVENANCE = "provenance"


def _evaluate_entries(doc: Any) -> set[str]:
    # a folder per dataset (none for an empty test set); the provenance is no folder
    return {str(name) for name in doc if name != EVALUATE_PROVENANCE}


def _download_entries(doc: Any) -> set[str]:
    if download_kind(doc) == "alphamatting":
        return {"input", "gt"}
    # download-eval: the top folders it wrote. A record of older code lacks them (its sets may be
    # named other than their folders in a custom manifest): the KeyError lets it vouch alone.
    return {str(name) for name in doc["folders"]}


#: The kind of download each command records in the marker they share (``download.json``'s
#: ``kind``): neither replaces a folder holding the other's (:func:`check_output_dir`'s ``kind``).
MARKER_KINDS: dict[str, str] = {"download-alphamatting": "alphamatting", "download-eval": "eval"}


def download_kind(doc: Any) -> str | None:
    """The kind of download a ``download.json`` records: its ``kind``; a record written before
    the kind was (bafusion before 2026-12-05) is told by its content: ``foregrounds`` (the count
    of download-alphamatting) makes it ``alphamatting``; ``sets``, ``folders`` or ``files``
    (download-eval's) ``eval``. None when nothing tells (an empty record: it vouches for its
    folder alone, for either command, as it did before)."""
    if not isinstance(doc, dict):
        return None
    kind = doc.get("kind")
    if isinstance(kind, str) and kind:
        return kind
    if "foregrounds" in doc:
        return "alphamatting"
    if any(k in doc for k in ("sets", "folders", "files")):
        return "eval"
    return None


def _download_holds(kind: str, doc: dict[str, Any]) -> str:
    """What a folder whose ``download.json`` records ``kind`` holds, for a message."""
    def count(key: str, unit: str) -> str:
        n = doc.get(key)
        return f": {n} {unit}{'' if n == 1 else 's'}" if isinstance(n, int) and not isinstance(n, bool) else ""

    if kind == "alphamatting":
        return f"the alphamatting.com training set (input/, gt/{count('foregrounds', 'foreground')})"
    if kind == "eval":
        tops = doc.get("folders") or doc.get("sets")
        shown = ", ".join(f"{t}/" for t in tops) if isinstance(tops, list) and tops else "its sets"
        return f"the evaluation pairs ({shown}{count('files', 'file')})"
    return f"a download of kind {kind!r}"


def _check_marker_kind(shown: str, what: str, folder: Path, marker: str, kind: str) -> None:
    """Refuse ``folder`` when its ``marker`` records another kind of download than ``kind``."""
    try:
        doc = json_loads((folder / marker).read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError):
        return  # unreadable: it vouches alone, as foreign_entries lets it
    recorded = download_kind(doc)
    if recorded is None or recorded == kind:
        return
    commands = {k: c for c, k in MARKER_KINDS.items()}
    made_by = commands.get(recorded, "another command")
    ours = commands.get(kind, "this command")
    raise UserError(f"{shown}: the {what} holds {_download_holds(recorded, doc)}, an earlier output of {made_by} "
                    f"(its {marker} says so); {ours} replaces the folder whole and would delete it: choose "
                    "another folder")


def _coco_entries(doc: Any) -> set[str]:
    return {str(k["file"]) for k in doc["kept"]}


#: What a command writes at the top of the folder it replaces, besides its marker, read from
#: the marker (by its name): fuse-set's ``accuracy.json`` lists the pairs (``<pair>.png`` and
#: ``maps/``), testset's ``index.json`` the pairs (``<pair>-A/B/truth/dm.png``), evaluate's
#: ``metrics.json`` the datasets (a folder each), prepare writes ``fg/``, ``matte/``, ``bg/``,
#: download-alphamatting's ``download.json`` vouches for ``input/`` and ``gt/``, download-eval's
#: for its top folders (``lytro/``, ``classic/``), and download-coco's ``selection.json`` lists
#: the photos it kept.
MARKER_ENTRIES: dict[str, Callable[[Any], set[str]]] = {
    "accuracy.json": _fuse_set_entries,
    "index.json": _testset_entries,
    "metrics.json": _evaluate_entries,
    "manifest.json": lambda doc: {"fg", "matte", "bg"},
    "download.json": _download_entries,
    "selection.json": _coco_entries,
}

#: Image suffixes a download-alphamatting copy (``--from-dir``) may hold in ``input/`` and ``gt/``.
_ALPHAMATTING_IMAGES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _literal(rel: str) -> str:
    """A pattern of :func:`_matches` that matches the relative path ``rel`` alone."""
    *dirs, last = rel.split("/")
    last = last[: len(last) - len(Path(last).suffix)] + Path(last).suffix.lower()
    return "/".join(re.sub(r"([*?[])", r"[\1]", part) for part in (*dirs, last))


def _download_inner(doc: Any) -> tuple[str, ...] | None:
    if download_kind(doc) == "alphamatting":
        written = doc.get("written")
        if isinstance(written, list) and all(isinstance(w, str) for w in written):
            # every file it copied or extracted (--from-dir copies input/ and gt/ whole: a
            # README.txt, a gt/old/ folder), recorded: that and nothing else
            return tuple(_literal(w) for w in written)
        # a record of an earlier version: the images in input/ and gt/, and, for a copy of a
        # local folder, the files that folder holds (what copytree copied)
        own = [f"{d}/*{x}" for d in ("input", "gt") for x in _ALPHAMATTING_IMAGES]
        source = doc.get("source")
        if isinstance(source, str) and source and "://" not in source:
            src = Path(source)
            with contextlib.suppress(OSError):
                if (src / "input").is_dir() and (src / "gt").is_dir():
                    own += [_literal(p.relative_to(src).as_posix()) for d in ("input", "gt")
                            for p in (src / d).rglob("*") if p.is_file()]
        return tuple(own)
    return None  # download-eval: the layout of its sets is the manifest's


#: What a command writes inside the folders its marker vouches for (:data:`MARKER_ENTRIES`), by
#: marker: patterns (``fnmatch``, one part per part of the path, the suffix in any case) of the
#: files' paths in the output folder; a file there matching none is the user's and would be
#: deleted with the folder (``fs/maps/MY-NOTES.txt``, ``out/lytro/MY-ANALYSIS.md`` were, exit 0).
#: fuse-set writes ``maps/<name>-<map>.png``; evaluate per dataset ``metrics.csv``, ``means.csv``,
#: ``means-sets.csv``, ``table1.md``, ``figures/*.png``, ``fused/<method>/<pair>.png`` (and
#: ``.jpg``); prepare ``fg/``, ``matte/``, ``bg/`` PNGs and ``bg/`` JPEGs (``.jpg``); download-alphamatting the files its record
#: lists as ``written`` (an older record: the images in ``input/`` and ``gt/``, and what the
#: local folder it copied holds). None: the folders' contents are not known here (download-eval's sets).
MARKER_INNER: dict[str, Callable[[Any], tuple[str, ...] | None]] = {
    "accuracy.json": lambda doc: ("maps/*.png",),
    "metrics.json": lambda doc: ("*/metrics.csv", "*/means.csv", "*/means-sets.csv", "*/table1.md",
                                 "*/figures/*.png", "*/fused/*/*.png", "*/fused/*/*.jpg"),
    # prepare writes every foreground and matte as PNG; a background as PNG, or a plain RGB JPEG
    # (.jpg or .jpeg) copied as bg/<id>.jpg (data/prepare.py prepare_background)
    "manifest.json": lambda doc: ("fg/*.png", "matte/*.png", "bg/*.png", "bg/*.jpg"),
    "download.json": _download_inner,
}


def _matches(parts: tuple[str, ...], patterns: Iterable[str]) -> bool:
    import fnmatch

    last = parts[-1]
    parts = (*parts[:-1], last[: len(last) - len(Path(last).suffix)] + Path(last).suffix.lower())
    for pat in patterns:
        pp = pat.split("/")
        if len(pp) == len(parts) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(parts, pp)):
            return True
    return False


def _inner_foreign(folder: Path, tops: Iterable[str], patterns: Sequence[str],
                   own: Iterable[str | os.PathLike[str]]) -> list[str]:
    """The files inside the folders ``tops`` of ``folder`` that match none of ``patterns`` nor
    are one of ``own`` (the command's other outputs), as paths relative to ``folder``."""
    mine = {parts for p in own if (parts := _parts_inside(folder, p))}
    found: list[str] = []
    for top in sorted(tops):
        d = folder / top
        if d.is_symlink() or not d.is_dir():
            continue
        for base, subdirs, files in os.walk(d):
            rel = Path(base).relative_to(folder).parts
            # a link to a folder is no folder of the command's: removed with the output, listed as a file
            links = [x for x in subdirs if (Path(base) / x).is_symlink()]
            for name in sorted([*files, *links]):
                parts = (*rel, name)
                if name in _FOREIGN_OK or parts in mine or _matches(parts, patterns):
                    continue
                found.append("/".join(parts))
    return found


#: Entries of an output folder no command writes that are not the user's (a file manager's
#: or Snakemake's, in a ``directory()`` output): replaced with the folder without a word.
_FOREIGN_OK = frozenset({".DS_Store", "Thumbs.db", ".snakemake_timestamp"})


def _parts_inside(folder: Path, p: str | os.PathLike[str]) -> tuple[str, ...] | None:
    """The parts of ``p`` relative to ``folder`` when it lies inside it (resolved), else None."""
    try:
        f, q = folder.resolve(), Path(p).resolve()
    except (OSError, RuntimeError):
        return None
    return q.relative_to(f).parts if f in q.parents else None


def _own_entries(folder: Path, outputs: Iterable[str | os.PathLike[str]]) -> set[str]:
    """The entries at the top of ``folder`` that are the command's other outputs (``--report``,
    ``--plots``: written after the folder is replaced, so they stay), or a folder holding
    nothing but them (``out/m/report.json``; a file of the user's beside it is foreign)."""
    own = {parts for p in outputs if (parts := _parts_inside(folder, p))}
    dirs = {parts[:i] for parts in own for i in range(1, len(parts))}
    names: set[str] = set()
    for top in {parts[0] for parts in own}:
        if (top,) in own:
            names.add(top)
            continue
        ok = True
        for base, subdirs, files in os.walk(folder / top):
            rel = Path(base).relative_to(folder).parts
            ok = ok and all((*rel, d) in dirs for d in subdirs) and all((*rel, f) in own for f in files)
        if ok:
            names.add(top)
    return names


#: The record a command writes beside its marker (by the marker's name) when it writes other
#: files of its own into the folder it replaces: evaluate's ``--report`` and ``--plots`` inside
#: ``--out`` (its marker, the DVC metrics file ``metrics.json``, cannot list them). It lists each
#: file's path in the folder and the SHA-256 of what was written (:func:`write_output_record`); on
#: a rerun the files that still hold that are the command's own (:func:`recorded_outputs`), one
#: changed since, or any other file, is the user's.
OUTPUT_RECORDS: dict[str, str] = {"metrics.json": "evaluate-record.json"}


def _sha256(p: Path) -> str:
    import hashlib

    with open(p, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def write_output_record(folder: str | os.PathLike[str], marker: str,
                        files: Iterable[str | os.PathLike[str]]) -> Path | None:
    """Write the record of :data:`OUTPUT_RECORDS` into ``folder`` (an output the command just
    replaced, holding ``marker``), listing those of ``files`` (written by the command) that lie
    inside it, with the SHA-256 of their content; nothing when none does.

    Parameters
    ----------
    folder : str or path-like
        The output folder.
    marker : str
        Its marker's name (:data:`OUTPUT_MARKERS`), naming the record.
    files : iterable of str or path-like
        The command's other output files, written already.

    Returns
    -------
    pathlib.Path or None
        The record written, or None.
    """
    from bafusion.atomic import write_text

    folder = Path(folder)
    if marker not in OUTPUT_RECORDS:
        return None
    record = folder / OUTPUT_RECORDS[marker]
    inside = {"/".join(parts): p for p in files if (parts := _parts_inside(folder, p)) and Path(p).is_file()
              and parts not in ((marker,), (record.name,))}  # --report out/metrics.json: the marker itself
    if not inside:
        return None
    doc = {"about": f"files this command wrote into this folder besides its {marker} (--report, --plots), with "
                    "the SHA-256 of their content: a rerun replaces them with the folder, unless changed since",
           "sha256": {rel: _sha256(Path(p)) for rel, p in sorted(inside.items())}}
    write_text(record, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return record


def recorded_outputs(folder: Path, marker: str) -> list[str] | None:
    """The files (paths relative to ``folder``, ``/``-separated) that the record of
    :data:`OUTPUT_RECORDS` beside ``marker`` lists and that still hold what the command wrote
    (their SHA-256), sorted; None without a readable record (none written, or not of this layout).

    Parameters
    ----------
    folder : pathlib.Path
        An earlier output of the command.
    marker : str
        Its marker's name.

    Returns
    -------
    list of str or None
    """
    name = OUTPUT_RECORDS.get(marker)
    if name is None or not (folder / name).is_file():
        return None
    try:
        listed = json_loads((folder / name).read_text(encoding="utf-8-sig"))["sha256"]
        items = [(str(rel), str(digest)) for rel, digest in listed.items()]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return None
    kept = []
    for rel, digest in items:
        p = folder / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute() or p.is_symlink() or not p.is_file():
            continue
        with contextlib.suppress(OSError):
            if _sha256(p) == digest:
                kept.append(rel)
    return sorted(kept)


def foreign_entries(folder: Path, marker: str, own: Iterable[str | os.PathLike[str]] = ()) -> list[str] | None:
    """The entries at the top of ``folder``, an earlier output that holds ``marker``, that the
    command did not write (:data:`MARKER_ENTRIES`, and ``own``: its other output files, such as
    ``--report``, where they lie inside ``folder``, and those an earlier run wrote there, listed
    by its record, :func:`recorded_outputs`), sorted, then the files inside the folders the
    marker vouches for that the command does not write there (:data:`MARKER_INNER`: ``maps/notes.txt``);
    None when the marker cannot be read or is of a layout not known here (then the marker alone
    vouches for the folder)."""
    entries = MARKER_ENTRIES.get(marker)
    if entries is None:
        return None
    try:
        doc = json_loads((folder / marker).read_text(encoding="utf-8-sig"))
        vouched = entries(doc)
        inner = MARKER_INNER[marker](doc) if marker in MARKER_INNER else None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return None
    own = list(own)
    recorded = recorded_outputs(folder, marker)
    if recorded is not None:
        own += [folder / rel for rel in recorded]
    written = vouched | _own_entries(folder, own) | ({OUTPUT_RECORDS[marker]} if recorded is not None else set())
    top = sorted(e.name for e in folder.iterdir() if e.name not in written and e.name != marker
                 and e.name not in _FOREIGN_OK)
    if inner is None:
        return top
    return top + _inner_foreign(folder, vouched, inner, own)


# --------------------------------------------------------------------------------------
# Paths


def _paths(value: object) -> list[Path]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)):
        return [Path(v) for v in value if v not in (None, "")]
    return [Path(str(value))]


def _raw(value: object) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v not in (None, "")]
    return [str(value)]


def same_file(p: Path, q: Path) -> bool:
    """Whether ``p`` and ``q`` name the same file or folder (resolved paths, then inodes)."""
    with contextlib.suppress(OSError, RuntimeError):
        if p.resolve() == q.resolve():
            return True
    try:
        return os.path.samefile(p, q)
    except (OSError, ValueError):
        return False


def _contains(folder: Path, p: Path) -> bool:
    """Whether ``p`` lies inside ``folder`` (or is it), resolved."""
    try:
        f, q = folder.resolve(), p.resolve()
    except (OSError, RuntimeError):
        return False
    return f == q or f in q.parents


def _nearest_existing(p: Path) -> Path:
    a = Path(os.path.abspath(p))
    while not os.path.lexists(a) and a != a.parent:
        a = a.parent
    return a


def _check_can_create_in(target: str, start: Path) -> None:
    """Raise unless files can be created where ``target`` goes: the nearest existing folder
    at or above ``start`` must be a folder that accepts a probe file."""
    base = _nearest_existing(start)
    if not base.is_dir():
        raise UserError(f"{target}: cannot be created: {base} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".bafusion-probe-", dir=base)
    except OSError as e:
        why = e.strerror or str(e)
        raise UserError(f"{target}: cannot write in {base}: {why}") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def _name_max(folder: str | os.PathLike[str]) -> int:
    """The longest file name, in bytes, that the file system of ``folder`` (or of its nearest
    existing folder above) takes: ``pathconf``'s ``NAME_MAX``, 255 where it cannot be asked
    (Windows, a folder that cannot be read)."""
    try:
        n = os.pathconf(_nearest_existing(Path(folder)), "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # AttributeError: no os.pathconf (Windows)
        return 255
    return n if isinstance(n, int) and n > 0 else 255


def check_name_length(p: str | os.PathLike[str], what: str, hint: str = "") -> None:
    """Raise a :class:`~bafusion.errors.UserError` naming ``p`` when its name is longer than its
    folder's file system takes (:func:`_name_max`): found only when the file was written, after
    the work ("File name too long"). ``hint`` ends the message (what to shorten)."""
    name = os.fsencode(Path(p).name)
    limit = _name_max(Path(os.path.abspath(p)).parent)
    if len(name) > limit:
        raise UserError(f"{os.fspath(p)}: the {what}'s name is {len(name)} bytes, longer than the {limit} a file name "
                        f"may have there{'; ' + hint if hint else ''}")


def check_not_input(p: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]], what: str) -> None:
    """Raise when ``p`` names one of ``inputs`` (however spelled)."""
    for q in inputs:
        if same_file(Path(p), Path(q)):
            same = "" if Path(q) == Path(p) else f" (as {os.fspath(q)})"
            raise UserError(
                f"{os.fspath(p)}: the {what} is also an input{same}; inputs are never overwritten: choose another name"
            )


def check_output_file(
    path: str | os.PathLike[str],
    inputs: Iterable[str | os.PathLike[str]] = (),
    *,
    suffixes: Sequence[str] | None = None,
    what: str = "output image",
    command: str = "bafusion",
) -> Path:
    """Check an output file before any work (see the module docstring); returns its path.
    ``command`` (``bafusion fuse``) is named where the suffix is of a format bafusion reads but
    that command does not write (:func:`read_not_written`)."""
    p, shown = Path(path), os.fspath(path)
    if p.is_dir():
        raise UserError(f"{shown}: is a folder; the {what} must be a file")
    if suffixes is not None and p.suffix.lower() not in suffixes:
        known = ", ".join(suffixes)
        why = read_not_written(p.suffix, command) if p.suffix else None
        if why:
            raise UserError(f"{shown}: {why}: the {what} must end in {known}")
        raise UserError(f"{shown}: unknown image format {p.suffix or '(no suffix)'!r}: the {what} must end in {known}")
    if suffixes is not None and p.suffix.lower() == ".webp":  # a Pillow without WebP: said before any work
        from bafusion.io.write import output_format_problem

        why = output_format_problem(p)
        if why:
            raise UserError(f"{shown}: {why}")
    if os.path.lexists(p) and not (p.is_file() or p.is_symlink()):
        raise UserError(f"{shown}: is not a regular file (a device, fifo or socket): not replaced")
    check_not_input(path, list(inputs), what)
    target = _link_target(p) if p.is_symlink() else p
    if target.is_file() and _is_mount_point(target):  # a file bound onto it (docker run -v ./f.png:/out.png)
        raise UserError(f"{shown}: the {what} is written beside it, then renamed into place, and it is a mount point"
                        f"{f' ({target})' if target != p else ''} (a file bound there), which cannot be replaced: "
                        "write to a new path, or bind the folder that holds it instead")
    # a symbolic link: the file it points to is replaced (bafusion.atomic.atomic_file), in its folder
    _check_can_create_in(shown, _link_target(p).parent if p.is_symlink() else p.parent)
    return p


def _link_target(p: Path) -> Path:
    try:
        return p.resolve()
    except (OSError, RuntimeError):  # a loop of links: the write fails on its own
        return p


_MOUNTINFO = "/proc/self/mountinfo"


def _mount_points() -> frozenset[str] | None:
    """The mount points of this process's mount namespace, as ``/proc/self/mountinfo`` lists
    them (Linux; its octal escapes of space, tab, newline and backslash undone), or None where
    it cannot be read."""
    try:
        with open(_MOUNTINFO, "rb") as f:
            data = f.read()
    except OSError:
        return None
    points = set()
    for line in data.splitlines():
        fields = line.split(b" ")
        if len(fields) > 4:
            points.add(os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), fields[4])))
    return frozenset(points)


def _is_mount_point(p: Path) -> bool:
    """Whether ``p`` is a mount point: listed in ``/proc/self/mountinfo`` where it can be read,
    else :func:`os.path.ismount`. ``os.path.ismount`` compares ``st_dev`` with the parent
    folder's, which takes every file of an overlay whose layers lie on other file systems for a
    mount point (a file reports its layer's device, its folder the overlay's: ``fuse -o`` there
    was refused), and misses a bind mount from the same file system."""
    points = _mount_points()
    if points is None:
        return os.path.ismount(p)
    return os.path.realpath(p) in points


def _check_not_mount_point(shown: str, what: str, p: Path) -> None:
    """Refuse a folder replaced whole that is a mount point (a drive, a container's volume
    ``docker run -v ./out:/out``), the folder a link ``p`` points to too: it cannot be renamed, nor
    can a folder written beside it, on the file system above, be renamed onto it. The command
    did all its work and then failed with "Device or resource busy"."""
    target = _link_target(p) if p.is_symlink() else p
    if target.is_dir() and _is_mount_point(target):
        raise UserError(f"{shown}: the {what} is replaced whole (written beside it, then renamed into place), and "
                        f"it is a mount point{f' ({target})' if target != p else ''}, which cannot be replaced: give a "
                        f"new folder inside it, such as {os.path.join(shown, 'out')}")


def check_output_dir(
    path: str | os.PathLike[str],
    inputs: Iterable[str | os.PathLike[str]] = (),
    *,
    replaced: bool = False,
    marker: str | None = None,
    what: str = "output folder",
    own: Iterable[str | os.PathLike[str]] = (),
    kind: str | None = None,
) -> Path:
    """Check an output folder: an existing folder or a new path, never a file; ``replaced``
    (the command replaces it whole): it must not hold an input or the working directory and,
    with ``marker``, it must be empty or hold that file (an earlier output of the command) and
    nothing the command did not write (:func:`foreign_entries`; ``own``: its other output
    files, written after the folder is replaced); with ``kind`` (a marker two commands write,
    :data:`MARKER_KINDS`), the marker must not record another kind (:func:`download_kind`)."""
    p, shown = Path(path), os.fspath(path)
    if os.path.lexists(p) and not p.is_dir():
        raise UserError(f"{shown}: is a file, not a folder: the {what} must be a folder or a new path")
    ins = [Path(q) for q in inputs]
    check_not_input(path, ins, what)
    if replaced:
        for q in [*ins, Path.cwd()]:
            if os.path.lexists(q) and _contains(p, q):
                held = "the working directory" if q == Path.cwd() else f"the input {q}"
                raise UserError(f"{shown}: the {what} is replaced whole and holds {held}: choose another folder")
        _check_not_mount_point(shown, what, p)
        if marker and p.is_dir() and not (p / marker).is_file() and any(p.iterdir()):
            raise UserError(f"{shown}: the {what} is replaced whole and holds files that are no earlier output of "
                            f"this command (no {marker}); they would be deleted: remove the folder or choose another")
        if kind and marker and p.is_dir() and (p / marker).is_file():
            _check_marker_kind(shown, what, p, marker, kind)
        foreign = foreign_entries(p, marker, own) if marker and p.is_dir() and (p / marker).is_file() else None
        if foreign:
            more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
            raise UserError(f"{shown}: the {what} is replaced whole and holds files this command did not write: "
                            f"{', '.join(foreign[:5])}{more}; they would be deleted: move them away or choose "
                            "another folder")
        _check_can_create_in(shown, p.parent)
    else:
        _check_can_create_in(shown, p)
    return p


# --------------------------------------------------------------------------------------
# Devices


def check_device(name: str | None, flag: str = "--device") -> None:
    """Refuse a device this machine lacks: ``auto``, ``cpu``, ``cuda[:N]`` (with N GPUs
    present) or ``mps`` (where Metal is available). ``flag`` names what gave it: an option
    (``--device cuda:1: ...``), or a Python parameter ending in ``=`` (``device='cuda:1': ...``).
    None (an option not given) passes, but not as a Python parameter: there it names no device;
    a :class:`torch.device` (from Python) is checked as its name."""
    shown = f"{flag}{name!r}" if flag.endswith("=") else f"{flag} {name}"
    if name is None and not flag.endswith("="):
        return
    if not isinstance(name, str):
        import torch

        if not isinstance(name, torch.device):
            raise UserError(f"{shown}: not a device (use auto, cpu, cuda, cuda:N or mps)")
        name = str(name)
    if name in ("auto", "cpu"):  # without torch (seconds to import): a fuse's bad shot is refused at once
        return
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"{shown}: not a device (use auto, cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{shown}: CUDA is not available on this machine (use auto or cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"{shown}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UserError(f"{shown}: MPS (Apple Metal) is not available on this machine (use auto or cpu)")
        return
    raise UserError(f"{shown}: device type {dev.type!r} is not supported (use auto, cpu, cuda, cuda:N or mps)")


# --------------------------------------------------------------------------------------
# The command's checks


def check_command(args: argparse.Namespace) -> None:
    """Every check of the module docstring for the parsed command line ``args``."""
    spec = COMMAND_OUTPUTS.get(getattr(args, "command", ""), OutputSpec())
    inputs = [q for dest in spec.inputs for q in _paths(getattr(args, dest, None))]
    for dest in spec.images:
        for p in _raw(getattr(args, dest, None)):
            check_output_file(p, inputs, suffixes=IMAGE_OUTPUT_SUFFIXES, what="output image",
                              command=f"bafusion {getattr(args, 'command', '')}".rstrip())
    for dest in spec.files:
        for p in _raw(getattr(args, dest, None)):
            check_output_file(p, inputs, what=f"{spec.flag(dest)} file")
    for dest in spec.dirs:
        for p in _raw(getattr(args, dest, None)):
            check_output_dir(p, inputs, what=f"{spec.flag(dest)} folder")
            for name in spec.dir_files:  # patches --out sh sh/initial.h5: the shard replaced
                check_not_input(Path(p) / name, inputs, f"{spec.flag(dest)} folder's {name}")
    for dest in spec.closed_inputs:
        for folder in _raw(getattr(args, dest, None)):
            outs = (*spec.images, *spec.files)
            if dest in spec.closed_to_folders:
                outs = (*outs, *spec.dirs, *spec.replaced_dirs)
            for out in outs:
                for p in _raw(getattr(args, out, None)):
                    if _contains(Path(folder), Path(p)) or _contains(Path(folder), Path(p).parent):
                        kind = "folder" if out in (*spec.dirs, *spec.replaced_dirs) else "file"
                        where = "a FOLDER argument" if dest == "folder_paths" else f"the {spec.flag(dest)} folder"
                        raise UserError(f"{p}: the {spec.flag(out)} {kind} lies inside {where} "
                                        f"{folder}, whose files are inputs; inputs are never overwritten: choose "
                                        "another path")
    for dest in spec.read_folders:
        for folder in _raw(getattr(args, dest, None)):
            for out in (*spec.images, *spec.files):
                for p in _raw(getattr(args, out, None)):
                    if Path(p).is_file() and _contains(Path(folder), Path(p)):
                        raise UserError(f"{p}: the {spec.flag(out)} file is a file of the {spec.flag(dest)} folder "
                                        f"{folder}, an input; inputs are never overwritten: choose another path")
    # the command's output files (evaluate's --report, --plots) are written after --out is
    # replaced: inside it they are its own entries, not the user's
    own = [p for dest in (*spec.images, *spec.files) for p in _raw(getattr(args, dest, None))]
    for dest in spec.replaced_dirs:
        for p in _raw(getattr(args, dest, None)):
            command = getattr(args, "command", "")
            check_output_dir(p, inputs, replaced=True, marker=OUTPUT_MARKERS.get(command),
                             what=f"{spec.flag(dest)} folder", own=own, kind=MARKER_KINDS.get(command))
    # folders written into may be one (fuse --save-maps d --save-registered d: their files' names differ)
    folders: list[tuple[str, str]] = []
    for dest in spec.dirs:
        for p in _raw(getattr(args, dest, None)):
            if not any(same_file(Path(p), Path(q)) for q, _ in folders):
                folders.append((p, spec.flag(dest)))
    check_outputs_distinct(
        [(p, spec.flag(dest)) for dest in (*spec.images, *spec.files) for p in _raw(getattr(args, dest, None))]
        + folders
        + [(p, spec.flag(dest)) for dest in spec.replaced_dirs for p in _raw(getattr(args, dest, None))]
        + [(os.path.join(p, name), f"{spec.flag(dest)} folder's {name}") for dest in spec.dirs
           for p in _raw(getattr(args, dest, None)) for name in spec.dir_files])
    device = getattr(args, "device", None)
    # evaluate and the fusion commands check theirs once their inputs are (it imports torch, seconds
    # before a missing file's refusal), naming where it came from (--device or a parameter)
    if isinstance(device, str) and getattr(args, "command", None) not in ("evaluate", "fuse", "fuse-dir", "fuse-set"):
        check_device(device)


def output_paths(args: argparse.Namespace) -> list[str]:
    """The output paths of the parsed command line ``args``, as given."""
    spec = COMMAND_OUTPUTS.get(getattr(args, "command", ""), OutputSpec())
    return [p for dest in (*spec.images, *spec.files, *spec.dirs, *spec.replaced_dirs)
            for p in _raw(getattr(args, dest, None))]


def check_outputs_distinct(outputs: Sequence[tuple[str, str]]) -> None:
    """Refuse two outputs, given as ``(path, flag)``, that name one file or folder."""
    for i, (p, flag) in enumerate(outputs):
        for q, other in outputs[:i]:
            if same_file(Path(p), Path(q)):
                raise UserError(f"{p}: given both as {other} and as {flag}; each output needs its own path")
