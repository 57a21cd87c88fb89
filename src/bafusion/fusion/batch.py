"""Fusing files: the sources of one fusion read at full depth with their metadata, checked to be
one scene, fused, and written at their depth (:func:`fuse_files`); and a whole folder of pairs and
stacks (``bafusion fuse-dir``, :func:`find_groups`, :func:`fuse_dir`).

Naming rule of ``fuse-dir IN OUT`` (documented in the README):

* files directly in ``IN`` named ``<name>-<L>.<ext>`` with ``<L>`` one letter (``A``, ``B``,
  ``C``, ... in either case) are the shots of stack ``<name>``, in letter order;
* every sub-folder of ``IN`` is one stack: its images in file-name order, named after the folder;
* a group of one shot, and an image in ``IN`` that follows neither rule, is skipped and listed;
* the fusion of ``<name>`` is written to ``OUT/<name>.<ext>`` (``--ext``, default ``png``).

Exit status (:data:`EXIT_SKIPPED`): 0 when every group was fused (or, with ``--skip-existing``,
already was), 3 when some were skipped (the others are fused), 2 for bad usage (no ``IN``
folder, nothing to fuse, bad parameters).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bafusion.errors import UserError
from bafusion.images import IMAGE_SUFFIXES, SourceSet, keeps_16_bits, read_source_set

#: Exit status of ``fuse-dir`` when some groups were skipped.
EXIT_SKIPPED = 3

_SHOT = re.compile(r"^(?P<name>.+)-(?P<letter>[A-Za-z])$")


@dataclass
class Fused:
    """A fusion of files: the image to write (uint8, or uint16 for sources of more than 8 bits),
    the first source's metadata, notes for the user (one line each), the fusion's seconds and
    the significant bits of the image (the sources' most)."""

    image: np.ndarray
    exif: bytes | None
    icc: bytes | None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    bits: int = 8


def compose_full(full: Sequence[np.ndarray], decisions: Sequence[np.ndarray]) -> np.ndarray:
    """Eq. 3 on the full-depth sources with the binary decision maps of a chained fusion:
    ``F1 = DM1*I1 + (1-DM1)*I2``, ``Fk = DMk*F(k-1) + (1-DMk)*I(k+1)``; a gray source with
    colour ones is replicated to three channels.

    Parameters
    ----------
    full : sequence of numpy.ndarray
        The N sources (uint16, gray or RGB, same size).
    decisions : sequence of numpy.ndarray
        The N-1 boolean maps (True: the fusion so far / A).

    Returns
    -------
    numpy.ndarray
        The fused uint16 image.
    """
    colour = any(f.ndim == 3 for f in full)
    srcs = [np.repeat(f[..., None], 3, axis=2) if colour and f.ndim == 2 else f for f in full]
    cur = srcs[0]
    for dm, nxt in zip(decisions, srcs[1:]):
        cur = np.where(dm[..., None] if cur.ndim == 3 else dm, cur, nxt)
    return cur.astype(np.uint16)


def prepare_sources(paths: Sequence[Path], *, align: str = "none", force: bool = False) -> SourceSet:
    """Read the shots of one scene (:func:`bafusion.images.read_source_set`), check their sizes,
    then align them (``align`` other than ``none``: :mod:`bafusion.align`, which also refuses two
    scenes) or check that they are one scene (:func:`bafusion.scene.check_one_scene`); unless
    ``force``, shots of two scenes are a :class:`UserError`. After alignment the set's uint8
    images are the aligned ones and the full-depth ones are dropped (alignment works on 8 bits).
    """
    from bafusion.fusion import _align_for_fuse, _read_8bit, check_same_size
    from bafusion.scene import check_one_scene

    if len(paths) < 2:
        raise UserError("give at least two source images")
    src = read_source_set(paths, _read_8bit)
    names = [str(p) for p in paths]
    for i in range(1, len(src.images)):
        check_same_size(src.images[0], src.images[i], names[0], names[i])
    if align != "none":
        src.images = _align_for_fuse(src.images, names, align, force)
        if src.full is not None:
            print(f"bafusion: {names[0]}: sources of more than 8 bits fused in 8 bits (--align works on "
                  "8-bit data)", file=sys.stderr)
            src.full = None
    else:
        check_one_scene(src.images, names, force)
    return src


def fused_output(src: SourceSet, results, output: Path) -> Fused:
    """The image to write to ``output`` from the fusion of ``src``: the per-step results of a
    chain (:func:`bafusion.fusion.fuse_stack`) or the joint rule's
    :class:`bafusion.stack.StackResult`. The uint8 fusion, or for sources of more than 8 bits
    the full-depth one (:func:`compose_full`, or the joint rule's index map) when the format
    keeps 16 bits; notes say when 16-bit sources end up in 8 bits."""
    joint = not isinstance(results, (list, tuple))  # a StackResult
    fused: np.ndarray = results.fused if joint else results[-1].fused
    notes: list[str] = []
    if src.full is not None:
        if keeps_16_bits(output):
            if joint:
                fused = compose_index(src.full, results.index)
            else:
                fused = compose_full(src.full, [r.decision for r in results])
        else:
            notes.append(f"{output}: written with 8 bits per sample from sources of more than 8 ({output.suffix} "
                         "keeps 8 bits; use .png or .tif for 16)")
    secs = sum(results.seconds.values()) if joint else sum(sum(r.seconds.values()) for r in results)
    return Fused(fused, src.exif, src.icc, notes, secs, src.bits if fused.dtype == np.uint16 else 8)


def compose_index(full: Sequence[np.ndarray], index: np.ndarray) -> np.ndarray:
    """Each pixel from the full-depth source ``index`` names (the joint stack rule's map); a
    gray source with colour ones is replicated to three channels."""
    colour = any(f.ndim == 3 for f in full)
    st = np.stack([np.repeat(f[..., None], 3, axis=2) if colour and f.ndim == 2 else f for f in full])
    sel = index[None, ..., None] if st.ndim == 4 else index[None]
    return np.take_along_axis(st, sel.astype(np.intp), 0)[0].astype(np.uint16)


def fuse_shots(images: Sequence[np.ndarray], nets, params, names: Sequence[str], progress: bool | None = None):
    """Fuse registered uint8 shots by ``params.stack_rule``: a list of per-step results
    (pairs, and stacks under ``chain``) or a :class:`bafusion.stack.StackResult` (``joint``)."""
    from bafusion.fusion import fuse_stack

    if len(images) > 2 and params.stack_rule == "joint":
        from bafusion.stack import fuse_stack_joint

        return fuse_stack_joint(images, nets, params, names)
    return fuse_stack(images, nets, params, names, progress=progress)


def fuse_files(paths: Sequence[Path], nets, params, *, output: Path, align: str = "none",
               force: bool = False) -> Fused:
    """Read, check, align (optionally) and fuse the shots of one scene (:func:`prepare_sources`,
    :func:`fuse_shots`, :func:`fused_output`).

    Parameters
    ----------
    paths : sequence of Path
        Two or more shots of the same size.
    nets, params : FusionNets, FusionParams
        As for :func:`bafusion.fusion.fuse_stack`.
    output : Path
        Where the result will be written (its format decides 8 or 16 bits).
    align : str
        ``none`` or a :mod:`bafusion.align` model.
    force : bool
        Fuse shots that do not look like one scene.

    Returns
    -------
    Fused
    """
    src = prepare_sources(paths, align=align, force=force)
    results = fuse_shots(src.images, nets, params, [str(p) for p in paths])
    return fused_output(src, results, output)


def find_groups(folder: Path, exclude: Path | None = None) -> tuple[dict[str, list[Path]], list[tuple[str, str]]]:
    """The stacks of ``folder`` by the naming rule (module doc), sorted by name, and the
    images skipped with the reason.

    Parameters
    ----------
    folder : Path
        The input folder.
    exclude : Path, optional
        A sub-folder that is not a stack (the output folder, when it lies inside ``folder``).

    Returns
    -------
    (dict of str to list of Path, list of (str, str))
        Stack name to its shots in order; (file, reason) of what cannot be fused.
    """
    groups: dict[str, list[tuple[str, Path]]] = {}
    folders: set[str] = set()
    skipped: list[tuple[str, str]] = []
    excluded = exclude.resolve() if exclude is not None else None
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            if excluded is not None and p.resolve() == excluded:
                continue
            shots = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            groups[p.name] = [(q.name, q) for q in shots]
            folders.add(p.name)
            continue
        if not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        m = _SHOT.match(p.stem)
        if m is None:
            skipped.append((str(p), "name does not follow the rule <name>-A.<ext>, <name>-B.<ext>, ..."))
            continue
        if m["name"] in folders:
            skipped.append((str(p), f"stack {m['name']!r} is also a sub-folder: rename one of them"))
            continue
        groups.setdefault(m["name"], []).append((m["letter"].upper(), p))
    out: dict[str, list[Path]] = {}
    for name in sorted(groups):
        shots = [p for _, p in sorted(groups[name])]
        letters = [k for k, _ in sorted(groups[name])]
        if len(set(letters)) != len(letters):
            skipped.append((", ".join(map(str, shots)), f"stack {name!r} has two shots with one letter"))
        elif len(shots) < 2:
            where = shots[0] if shots else folder / name
            skipped.append((str(where), f"stack {name!r} has only {len(shots)} shot(s)"))
        else:
            out[name] = shots
    return out, skipped


@dataclass
class BatchReport:
    """What :func:`fuse_dir` did: fused names, names already done, (file, reason) skipped."""

    fused: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_SKIPPED if self.skipped else 0


def fuse_dir(src: Path, out: Path, nets, params, *, ext: str = "png", align: str = "none", force: bool = False,
             skip_existing: bool = False, progress: bool = True) -> BatchReport:
    """Fuse every stack of ``src`` (:func:`find_groups`) into ``out/<name>.<ext>``; a stack that
    cannot be fused is skipped with its reason, the batch goes on.

    Returns
    -------
    BatchReport
    """
    from tqdm import tqdm

    from bafusion.images import write_image

    if not src.is_dir():
        raise UserError(f"{src}: not a folder")
    groups, skipped = find_groups(src, exclude=out)
    rep = BatchReport(skipped=list(skipped))
    if not groups:
        raise UserError(f"{src}: no pair or stack to fuse (name shots <name>-A.<ext>, <name>-B.<ext>, or put each "
                        "stack in its own sub-folder)")
    bar = tqdm(groups.items(), total=len(groups), unit="stack", file=sys.stderr, disable=not progress,
               desc="fuse-dir")
    for name, shots in bar:
        target = out / f"{name}.{ext}"
        if skip_existing and target.is_file():
            rep.existing.append(name)
            continue
        try:
            fused = fuse_files(shots, nets, params, output=target, align=align, force=force)
            write_image(target, fused.image, exif=fused.exif, icc=fused.icc, bits=fused.bits)
        except UserError as e:
            rep.skipped.append((name, str(e)))
            continue
        for note in fused.notes:
            tqdm.write(f"bafusion fuse-dir: {note}", file=sys.stderr)
        rep.fused.append(name)
    return rep


def _cmd_fuse_dir(args: argparse.Namespace) -> int:
    from bafusion.fusion import load_nets, load_nets_from_dir, params_from_args, resolve_device

    params, other = params_from_args(args)
    src, out = Path(args.input), Path(args.output)
    if not src.is_dir():
        raise UserError(f"{src}: not a folder")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: is a file, not a folder")
    ext = args.ext.lower().lstrip(".")
    if f".{ext}" not in (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg"):
        raise UserError(f"--ext {args.ext}: use png, tif, bmp or jpg")
    if out.resolve() == src.resolve():
        raise UserError(f"{out}: the output folder must not be the input folder")
    resolve_device(other["device"])
    if args.initial or args.boundary:
        if not (args.initial and args.boundary):
            raise UserError("--initial and --boundary go together")
        nets = load_nets(args.initial, args.boundary, other["device"])
    else:
        nets = load_nets_from_dir(args.model, other["device"])
    rep = fuse_dir(src, out, nets, params, ext=ext, align=args.align, force=args.force,
                   skip_existing=args.skip_existing, progress=not args.quiet)
    for what, why in rep.skipped:
        print(f"bafusion fuse-dir: skipped {what}: {why}", file=sys.stderr)
    print(f"fused {len(rep.fused)} stack(s) into {out}" + (f", {len(rep.existing)} already there" if rep.existing else "")
          + (f", skipped {len(rep.skipped)} (listed on stderr)" if rep.skipped else ""))
    return rep.exit_code


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fuse-dir`` to the ``bafusion`` command."""
    from bafusion.fusion import _add_param_args

    p = subparsers.add_parser(
        "fuse-dir",
        help="fuse every pair / focal stack of a folder",
        description="Fuse every stack of IN into OUT/<name>.<ext>. Naming rule: files <name>-A.<ext>, <name>-B.<ext>, "
        "(-C, ...) are one stack, in letter order; each sub-folder of IN is one stack (its images in name order). "
        "What cannot be fused (one shot, a name outside the rule, an unreadable file, sizes that differ, shots "
        f"of two scenes) is skipped and listed at the end. Exit status: 0 all fused, {EXIT_SKIPPED} some skipped "
        "(the others fused), 2 bad usage.",
    )
    p.add_argument("input", metavar="IN", help="folder of shots")
    p.add_argument("output", metavar="OUT", help="output folder")
    p.add_argument("--ext", default="png", help="output format: png (default), tif, bmp or jpg")
    p.add_argument("--model", default=None, help="folder with initial.pt and boundary.pt, or a shipped model by name")
    p.add_argument("--initial", default=None, help="initial-net file (instead of --model)")
    p.add_argument("--boundary", default=None, help="boundary-net file (instead of --model)")
    p.add_argument("--align", choices=("none", "translation", "similarity", "homography"), default="none",
                   help="register every shot to the first (see bafusion fuse --help)")
    p.add_argument("--force", action="store_true", help="fuse even shots that do not look like one scene")
    p.add_argument("--skip-existing", action="store_true", help="leave stacks whose output exists (resume a batch)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_param_args(p)
    p.set_defaults(func=_cmd_fuse_dir)
