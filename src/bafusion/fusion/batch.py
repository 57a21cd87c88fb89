"""Fusing files: the sources of one fusion read at full depth with their metadata, checked to be
one scene, fused, and written at their depth (:func:`fuse_files`); and a whole folder of pairs and
stacks (``bafusion fuse-dir``, :func:`find_groups`, :func:`fuse_dir`).

Naming rule of ``fuse-dir IN OUT`` (documented in the README):

* files directly in ``IN`` named ``<name>-<L>.<ext>`` with ``<L>`` one letter (``A``, ``B``,
  ``C``, ... in either case) are the shots of stack ``<name>``, in letter order;
* every sub-folder of ``IN`` is one stack: its images in file-name order, named after the folder;
* a group of one shot, and an image in ``IN`` that follows neither rule, is skipped and listed
  (the latter in one line: :func:`skip_lines`);
* a stack whose name (a sub-folder's, or the file name of an image directly in ``IN``) holds a
  control character (a newline, a tab, ...) is skipped and listed, the character shown escaped
  (:data:`CONTROL_NAME`): its output would be named with it, and a newline broke the lines
  that name it (``q-A<newline>.png`` was taken as shot A of ``q``);
  so is a broken symbolic link (a shot on a card not mounted), with its stack;
* the fusion of ``<name>`` is written to ``OUT/<name>.<ext>`` (``--ext``, default ``png``); of
  two stacks whose names differ only in case (``P/`` and ``p-A.jpg``) or Unicode normalization
  (:func:`same_file_key`) the later is skipped;
* ``OUT`` inside ``IN`` is no stack; one that holds images other than outputs is refused
  before any work (:func:`check_output_folder`);
* ``OUT/.bafusion-fuse-dir`` (:data:`OUTPUT_MARKER`) records what makes the outputs: the nets'
  sha256, the fusion parameters, ``--align``, ``--ext``, bafusion's version and the digest of
  its fusion code (:func:`fusion_code_digest`), and the outputs written so, and per output the input folder and the shots it was fused from (resolved
  paths, sizes, modification times); ``--skip-existing`` keeps only outputs it lists whose
  shots are unchanged, and refuses a folder whose marker records another setup, or none
  (:func:`check_skip_existing`);
* an existing file in ``OUT`` named like an output that the record does not show fuse-dir
  wrote from this ``IN`` (a file of the user's, an earlier batch of another input folder) is
  refused before any work (:func:`check_replaced`); an output that is a symbolic link to a
  file of ``IN`` (or to a file of another format) is not written through: its stack is skipped
  (:func:`link_problem`).

Exit status (:data:`EXIT_SKIPPED`, :data:`EXIT_NONE_FUSED`): 0 when every group was fused (or,
with ``--skip-existing``, already was), 3 when some were skipped (the others are fused), 4 when
every group was skipped (nothing fused, none already there; also when every image of ``IN``
was skipped before fusing, e.g. one shot alone), 2 for bad usage (no ``IN`` folder, no image
in it, bad parameters) and for a full disk: the batch stops at the first output that finds the
disk full (the record lists what was written; rerun with ``--skip-existing``). A stack that
runs out of memory is skipped with what it needs, and the batch goes on.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import json
import os
import re
import sys
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bafusion._version import code_digest
from bafusion.atomic import folder_lock, stop_requested
from bafusion.errors import InputFileError, UserError, is_out_of_memory, json_loads
from bafusion.io import (SourceSet, check_same_sizes, fit_jpeg_exif, icc_fits, image_info,
                         keeps_16_bits, output_format_problem, read_source_set, read_suffixes, unread_advice, unread_format,
                         written_metadata)
from bafusion.progress import stamped

#: Exit status of ``fuse-dir`` when some groups were skipped (the others fused).
EXIT_SKIPPED = 3

#: Exit status of ``fuse-dir`` when every group was skipped: nothing fused, none already there.
EXIT_NONE_FUSED = 4

#: A shot's file name (without its suffix) directly in ``IN``, matched whole (``fullmatch``: a
#: ``$`` matched before a final newline, so ``q-A<newline>.png`` was shot A of ``q``).
_SHOT = re.compile(r"(?P<name>.+)-(?P<letter>[A-Za-z])", re.DOTALL)


@dataclass
class Fused:
    """A fusion of files: the image to write (uint8, or uint16 for sources of more than 8 bits),
    the first source's metadata (EXIF, ICC profile; ``dpi``: its resolution), notes for the user
    (one line each), the fusion's seconds and the significant bits of the image (the sources'
    most); ``png_colour``: its PNG gAMA/cHRM/sRGB chunks (for a PNG output only); ``subsampling``:
    its JPEG chroma subsampling (:func:`bafusion.io.source_subsampling`, for a JPEG output);
    ``sources``: the shots as fused (registered and cropped by an alignment), kept only when
    asked (:func:`fuse_files`' ``keep_sources``: ``--save-registered``)."""

    image: np.ndarray
    exif: bytes | None
    icc: bytes | None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    bits: int = 8
    dpi: tuple[float, float] | None = None
    png_colour: bytes | None = None
    subsampling: str | None = None
    sources: SourceSet | None = None


def registered_paths(folder: Path, stem: str, n: int) -> list[Path]:
    """The files ``--save-registered`` writes for the ``n`` shots of an output named ``stem``
    (``fuse``'s output file, a ``fuse-dir`` stack): ``folder/<stem>-registered1.png``,
    ``-registered2.png``, ...

    Parameters
    ----------
    folder : Path
        The option's folder.
    stem : str
        The output's stem (``fuse -o f.png``: ``f``; a ``fuse-dir`` stack's name).
    n : int
        The number of shots.

    Returns
    -------
    list of Path
    """
    return [Path(folder) / f"{stem}-registered{i}.png" for i in range(1, n + 1)]


def write_registered(src: SourceSet, names: Sequence[Path], *, full: bool = True) -> None:
    """Write the shots as fused to the PNGs ``names`` (:func:`registered_paths`): with an
    alignment registered onto the first's frame and cropped to the fused image's area, lossless
    and at the depth the fusion was composed at (the full-depth shots on the 16-bit scale,
    marked with their bits), so that ``bafusion metrics REGISTERED1 REGISTERED2 OUT`` scores the
    fused image against the pair it was made of. Unaligned, they are the sources' pixels (turned
    by their EXIF orientation). Each is written atomically; the folder is made. An ``OSError``
    with an errno names the file in ``filename``.

    Parameters
    ----------
    src : SourceSet
        The shots as fused (:class:`Fused`' ``sources``, :func:`prepare_sources`).
    names : sequence of Path
        One file per shot.
    full : bool
        The output holds the full-depth composition (its image is 16-bit): the full-depth shots
        are written; else the 8-bit shots, which an 8-bit output of deeper sources is composed from.
    """
    from bafusion.io import write_image

    shots = src.full if full and src.full is not None else src.images
    for name, img in zip(names, shots, strict=True):
        try:
            Path(name).parent.mkdir(parents=True, exist_ok=True)
            write_image(name, img, bits=src.bits_for(name) if img.dtype.itemsize > 1 else None)
        except OSError as e:
            if e.errno is None:  # no errno (Pillow's "cannot write mode X"): a bug, said as one
                raise
            raise OSError(e.errno, e.strerror, os.fspath(name)) from e


def compose_full(full: Sequence[np.ndarray], decisions: Sequence[np.ndarray],
                 gains: Sequence[np.ndarray | None] = (), top: int | None = None) -> np.ndarray:
    """Eq. 3 on the full-depth sources with the binary decision maps of a chained fusion:
    ``F1 = DM1*I1 + (1-DM1)*I2``, ``Fk = DMk*F(k-1) + (1-DMk)*I(k+1)``; a gray source with
    colour ones is replicated to three channels.

    Parameters
    ----------
    full : sequence of numpy.ndarray
        The N sources (uint16, gray or RGB, same size).
    decisions : sequence of numpy.ndarray
        The N-1 boolean maps (True: the fusion so far / A).
    gains : sequence of (numpy.ndarray or None)
        Per step, the gains brought B to A's exposure by (``match_output_exposure``:
        :attr:`FusionResult.gains`), applied to the full-depth source too; None: as it is.
    top : int, optional
        The largest value of the sources' scale, where the gains clip (default 65535, the
        16-bit scale files are read to; ``bafusion.fuse`` of uint16 arrays of fewer bits
        passes theirs, e.g. 4095).

    Returns
    -------
    numpy.ndarray
        The fused uint16 image.
    """
    colour = any(f.ndim == 3 for f in full)
    srcs = [np.repeat(f[..., None], 3, axis=2) if colour and f.ndim == 2 else f for f in full]
    from bafusion.fusion.exposure import apply_gains

    cur = srcs[0]
    gains = list(gains) + [None] * (len(decisions) - len(gains))
    for dm, nxt, g in zip(decisions, srcs[1:], gains):
        nxt = nxt if g is None else apply_gains(nxt.astype(np.uint16), g, top)
        cur = np.where(dm[..., None] if cur.ndim == 3 else dm, cur, nxt)
    return cur.astype(np.uint16)


def prepare_sources(paths: Sequence[Path], *, align: str = "none", force: bool = False,
                    motion_hint: bool = False, stage: Callable[[str], None] | None = None,
                    prefix: str = "bafusion", details: bool = True) -> SourceSet:
    """Check the shots' sizes from their headers (:func:`bafusion.io.check_same_sizes`: the
    error says where an EXIF orientation swapped a file's width and height), read them
    (:func:`bafusion.io.read_source_set`), then align them (``align`` other than ``none``:
    :mod:`bafusion.fusion.align`, which also refuses two scenes) or check that they are one scene (:func:`bafusion.fusion.scene.check_one_scene`); unless
    ``force``, shots of two scenes are a :class:`UserError`. After alignment the set's uint8
    images are the aligned ones, and its full-depth ones (sources of more than 8 bits) are
    registered and cropped alike (:meth:`bafusion.fusion.align.Alignment.apply`).
    With ``motion_hint`` and no alignment, a shot that moves against the first by more than
    :data:`bafusion.fusion.scene.HINT_MOTION_PX` gets a line on stderr that suggests ``--align``
    (:func:`bafusion.fusion.scene.motion_hints`). ``align='auto'``: ``similarity`` when a shot
    moves so (:func:`bafusion.fusion.scene.shot_motions`), else ``none``; a line on stderr says
    which and why. Neither looks for motion between shots of two scenes (fused with ``force``).
    ``stage``, when given, is told each step before it starts ("reading ...", "checking ...",
    "aligning the shots ...", and the alignment's own steps: "aligning: shot 2 of 2: estimating
    its motion (similarity), level 7 of 7 (6000x4000 px)", :func:`bafusion.fusion.align.align_images`).
    Every line on stderr starts with ``prefix`` and a colon (the command's: ``bafusion fuse``);
    the alignment's per-shot lines (:meth:`bafusion.fusion.align.Alignment.describe`) are
    details, written only with ``details`` (not under ``--quiet``).
    """
    from tqdm import tqdm

    from bafusion.fusion.scene import MIN_CORRELATION, check_one_scene, check_same_size, check_turned, shared_reductions

    if len(paths) < 2:
        raise UserError("give at least two source images")
    say = stage or (lambda text: None)

    def note(text: str) -> None:
        tqdm.write(f"{prefix}: {text}", file=sys.stderr)  # between the lines of a fuse-dir bar, not into it

    def told(text: str) -> None:  # what the alignment did: after the time in a log, as the steps' lines
        tqdm.write(stamped(f"{prefix}: {text}", sys.stderr), file=sys.stderr)

    names = [str(p) for p in paths]
    check_source_headers(paths, align=align)
    say(f"reading {', '.join(names)}" if len(names) <= 3 else f"reading {len(names)} images")
    src = read_source_set(paths)
    resized = [i for i in range(1, len(src.images)) if src.images[i].shape[:2] != src.images[0].shape[:2]]
    for i in range(1, len(src.images)):
        if align == "none":
            check_same_size(src.images[0], src.images[i], names[0], names[i])
    if align in ("none", "auto"):
        from bafusion.fusion.align import to_first_frame

        # the checks compare shots pixel by pixel: a shot of another size is judged scaled onto the first's frame
        judged = to_first_frame(src.images) if resized else src.images
        with shared_reductions():  # the check and the motion estimate reduce each shot once
            say("checking that the shots show one scene")
            failing: list[int] = []
            try:
                scores = check_one_scene(judged, names, True)
                failing = [i for i, c in enumerate(scores, 1) if c is not None and c < MIN_CORRELATION]
                if failing and not force:
                    check_turned(judged, names, failing)  # a sideways shot: turning it helps, not --align
                    if align != "auto":  # auto judges first (it may align them)
                        check_one_scene(judged, names)  # refuses two scenes
            except UserError as e:
                if not failing or "looks turned" in str(e):
                    raise
                # a shot moved by a large fraction of the image also fails the check before alignment:
                # --force would fuse it unaligned; --align similarity registers it (and checks again)
                raise UserError(f"{e}, or --align similarity if the camera moved a lot between the shots") from e
            one_scene = all(c is None or c >= MIN_CORRELATION for c in scores)
            if align == "auto" and not one_scene and not force:
                # a shot moved by a large fraction of the image fails the check before alignment:
                # aligned, it may match (then it is fused aligned), else the shots are refused
                say("aligning the shots (similarity), which do not match as they are")
                aligned = align_despite_scene_check(src.images, names, scores, tell=told,
                                                    step=stage and (lambda text: say(f"aligning: {text}")))
                for line in aligned.describe(names) if details else ():
                    told(line)
                src.images = aligned.images
                align = "none"  # done
                if src.full is not None:  # the full-depth shots registered and cropped alike
                    say("aligning the full-depth shots alike")
                    src.full = aligned.apply(src.full)
            elif align == "auto":
                say("checking whether the shots move")
                align = _auto_align(judged, names, one_scene, resized, prefix,
                                    sizes=[(im.shape[1], im.shape[0]) for im in src.images])
                if resized and align == "none":  # a shot of another size is registered in any case
                    align = "similarity"
            elif motion_hint and one_scene:
                say("checking whether the shots move")
                for line in _safe_motion_hints(src.images, names):
                    note(line)
    if align != "none":
        say(f"aligning the shots ({align})")
        al = align_for_fuse(src.images, names, align, force, alignment=True, prefix=prefix, details=details,
                            step=stage and (lambda text: say(f"aligning: {text}")))
        src.images = al.images
        if src.full is not None:  # the full-depth shots registered and cropped alike
            say("aligning the full-depth shots alike")
            src.full = al.apply(src.full)
    return src


def check_source_headers(paths: Sequence[Path], *, align: str = "none") -> None:
    """Check the shots from their headers alone, as :func:`prepare_sources` does first: each is
    there, a regular file, of a format read here and with a readable header
    (:func:`bafusion.io.image_info`), and they have one size (``align`` ``none``,
    :func:`bafusion.io.check_same_sizes`: the error says where an EXIF orientation swapped a
    file's width and height) or sizes ``--align`` registers (:func:`check_alignable_sizes`).
    Milliseconds, and no torch: ``bafusion fuse`` calls it before importing torch, so a bad
    file is refused at once.

    Parameters
    ----------
    paths : sequence of Path
        The shots.
    align : str
        The ``--align`` value (``none``, ``auto`` or a model).

    Raises
    ------
    bafusion.errors.InputFileError
        Naming the file that is missing, no regular file, or not an image read here.
    bafusion.errors.UserError
        Shots of sizes that cannot be fused.
    """
    infos = [image_info(p) for p in paths]
    if align == "none":
        check_same_sizes(infos, remedy="use --align similarity (or auto) to register shots of different sizes")
    else:  # --align registers a shot of another size (align.MAX_ASPECT_DIFF), not a turned or another frame
        check_alignable_sizes(infos)


def align_despite_scene_check(images: Sequence[np.ndarray], names: Sequence[str],
                               scores: Sequence[float | None], *, force: str | None = "--force",
                               unaligned: str = "--align none", auto: str = "--align auto",
                               tell: Callable[[str], None] | None = None,
                               step: Callable[[str], None] | None = None):
    """``--align auto`` when a shot fails the one-scene check (``scores``, of
    :func:`bafusion.fusion.scene.check_one_scene`): a shot moved by a large fraction of the
    image (a 28 px shift and 2 degrees on 440 px read 0.54) does not match before alignment. The
    shots are aligned (similarity) and accepted when the alignment's match quality passes
    :data:`bafusion.fusion.align.MIN_QUALITY` with the first or, a stack's shot, with the shot it
    was registered against (:meth:`bafusion.fusion.align.Alignment.not_one_scene`,
    :func:`bafusion.fusion.align.check_alignment`);
    else refused, the message giving both numbers. Returns the
    :class:`bafusion.fusion.align.Alignment`; a line (``auto`` names the option) to ``tell``,
    by default stderr after ``bafusion: ``, says why it aligned; ``step`` is told each step of the
    alignment as it starts (:func:`bafusion.fusion.align.align_images`)."""
    from tqdm import tqdm

    from bafusion.fusion.align import MIN_QUALITY, align_images, check_alignment
    from bafusion.fusion.scene import MIN_CORRELATION, check_turned

    judged = None
    if any(im.shape[:2] != images[0].shape[:2] for im in images[1:]):
        from bafusion.fusion.align import to_first_frame

        judged = to_first_frame(images)
    # a sideways shot (orientation tag missing): turning it helps, not the alignment
    check_turned(judged or images, names, [i for i, c in enumerate(scores, 1) if c is not None and c < MIN_CORRELATION])
    al = align_images(images, "similarity", step=step)
    bad = set(al.not_one_scene())
    for i, (n, c, why) in enumerate(zip(names[1:], scores, al.implausible[1:]), 1):
        if c is None or c >= MIN_CORRELATION:
            continue
        if i in bad or why:
            after = (f"{al.match_text(i, names)}, below {MIN_QUALITY}" if not why else
                     f"and the similarity alignment failed: {why}")
            raise UserError(f"{n}: does not look like the same scene as {names[0]} (correlation {c:.2f} at a coarse "
                            f"scale, below {MIN_CORRELATION}; {after}); "
                            + (f"use {force} to fuse anyway" if force else f"use {unaligned} to fuse them as they are"))
    check_alignment(al, names, force=force, unaligned=unaligned)
    for i, (n, c) in enumerate(zip(names[1:], scores), 1):
        if c is not None and c < MIN_CORRELATION:
            # a stack's far shot passes with the shot it was registered against (not_one_scene)
            line = (f"{auto}: {n} does not match {names[0]} as it is (correlation {c:.2f}, below "
                    f"{MIN_CORRELATION}), but does after similarity alignment ({al.match_text(i, names)}): aligned")
            tell(line) if tell else tqdm.write(f"bafusion: {line}", file=sys.stderr)
    return al


def check_alignable_sizes(infos) -> None:
    """Under ``--align``: a shot of another size than the first is registered onto the first's
    frame when its aspect ratio is close (:func:`bafusion.fusion.align.size_problem`); a shot
    turned by 90 degrees or of another aspect ratio is an error naming both files and sizes."""
    from bafusion.fusion.align import size_problem
    from bafusion.io.info import _orientation_clauses

    a = infos[0]
    for b in infos[1:]:
        why = size_problem((a.width, a.height), (b.width, b.height))
        if why:
            raise InputFileError(b.path, f"size {b.width}x{b.height} (WxH) differs from {a.width}x{a.height} of "
                                 f"{a.path}: {why}" + _orientation_clauses(b, a))


def _safe_motion_hints(images: Sequence[np.ndarray], names: Sequence[str]) -> list[str]:
    """:func:`bafusion.fusion.scene.motion_hints`, or nothing when the estimate itself fails on
    odd shots (it is advice: it must not stop a fusion)."""
    from bafusion.fusion.scene import motion_hints as hints

    try:
        return hints(images, names)
    except Exception:  # noqa: BLE001 - advice only
        return []


def _auto_align(images: Sequence[np.ndarray], names: Sequence[str], one_scene: bool,
                resized: Sequence[int] = (), prefix: str = "bafusion",
                sizes: Sequence[tuple[int, int]] | None = None) -> str:
    """``--align auto``: :func:`auto_alignment`, its lines on stderr after ``prefix``; with a shot
    of another size (``resized``), which is registered in any case, the lines say that the shots
    are aligned. Where they do not (shots of two scenes fused with ``--force``, a failed
    estimate, a flat shot), a line per such shot says so, naming its size and the first's from
    ``sizes`` (``(width, height)`` of each shot as read; the model returned is then still
    ``"none"``: registering it is the caller's)."""
    from tqdm import tqdm

    model, lines = auto_alignment(images, names, one_scene, resized)
    for verdict, text in lines:  # what auto decided: after the time in a log; a failure as a warning, unstamped
        line = f"{prefix}: --align auto: {text}"
        tqdm.write(line if verdict in AUTO_FAILURES else stamped(line, sys.stderr), file=sys.stderr)
    if resized and model == "none" and sizes and not any(
            f"as {names[resized[0]]} is of another size" in text for _, text in lines):
        w, h = sizes[0]
        for i in resized:  # said once: only where the lines above did not
            tqdm.write(stamped(f"{prefix}: --align auto: {names[i]} is {sizes[i][0]}x{sizes[i][1]} px, {names[0]} "
                               f"{w}x{h}: a shot of another size is registered onto the first's frame all the same "
                               "(similarity)", sys.stderr), file=sys.stderr)
    return model


#: The verdicts of :func:`auto_alignment` that discard an estimate (or could not make one): a
#: failure the caller should hear of, where the others are information.
AUTO_FAILURES = ("failed", "implausible", "error")


def auto_alignment(images: Sequence[np.ndarray], names: Sequence[str],
                   one_scene: bool, resized: Sequence[int] = ()) -> tuple[str, list[tuple[str, str]]]:
    """``align='auto'`` (``fuse --align auto``, :func:`bafusion.fuse`): ``similarity`` when a shot
    moves (:func:`bafusion.fusion.scene.shot_motions`), else ``none``.

    Parameters
    ----------
    images : sequence of numpy.ndarray
        The shots, the first the reference.
    names : sequence of str
        Their names, for the lines.
    one_scene : bool
        Whether the shots look like one scene (:func:`bafusion.fusion.scene.check_one_scene`);
        shots of two scenes (fused with ``--force``) are not aligned.
    resized : sequence of int
        The shots of another size than the first, which the caller registers onto its frame
        whatever the model (``images`` holds them scaled onto it): the lines of the shots that
        do not move then say that they are registered with the others and cropped to the area
        they all cover, as they do when a shot moves.

    Returns
    -------
    tuple
        The model (``"similarity"`` or ``"none"``) and, per shot (or once for the set), the
        verdict (a :class:`bafusion.fusion.scene.ShotMotion` verdict, ``"error"`` when the
        estimate raised, ``"two scenes"``) and a line that says why.
    """
    from bafusion.fusion.scene import HINT_MOTION_PX, HINT_REDUCED_PX, shot_motions

    if not one_scene:
        return "none", [("two scenes", "the shots do not look like one scene (fused with --force): not aligned")]
    try:
        motions = shot_motions(images)
    except Exception as e:  # noqa: BLE001 - fall back to the shots as they are
        return "none", [("error", f"the motion could not be estimated ({type(e).__name__}: {e}): not aligned")]
    movers = [names[sm.index] for sm in motions if sm.verdict == "moves"]
    # a shot that does not move is registered with the others when another moves (every shot is
    # registered onto the first) or is of another size (``resized``), and cropped to the area
    # they all cover: its line says so (it said "aligned all the same", where its align line
    # then said "not warped": one under the tolerance is not resampled, only cropped)
    common = ": registered with the others (similarity) and cropped to the area they all cover, as"
    if movers:
        outcome = f"{common} {movers[0]} moves"
    elif resized:
        outcome = f"{common} {names[resized[0]]} is of another size"
    else:
        outcome = ": fused as registered"
    lines: list[tuple[str, str]] = []
    for sm in motions:
        n = names[sm.index]
        if sm.verdict == "moves":
            text = f"{n} moves about {sm.px:.1f} px against {names[0]}: aligning (similarity)"
        elif sm.verdict == "still":
            why = (f"not more than {HINT_MOTION_PX:g} px" if sm.px <= HINT_MOTION_PX else
                   f"under {HINT_REDUCED_PX:g} px at the reduced scale it is measured on (the estimate's error)")
            text = f"{n} moves {sm.px:.1f} px against {names[0]}, {why}{outcome}"
        elif sm.verdict == "defocus":
            text = (f"{n} reads {sm.px:.1f} px against {names[0]}, but {sm.blurred:.1f} px with either shot blurred: "
                    f"the focus difference, not a motion{outcome}")
        elif sm.verdict in ("failed", "implausible") and sm.px is not None and sm.px > max(images[0].shape[:2]):
            # a registration that ran away on a shot with too little structure (a 64 px crop of a
            # smooth backdrop read 232591.3 px): no figure, the reason; the size compared is the
            # first shot's (every shot is judged on its frame), named as such
            text = (f"{n}: too flat or too small to judge its motion (its motion estimate ran away, moving it "
                    f"further than the size of {names[0]}), taken for a failure{outcome}")
        elif sm.verdict == "failed":
            text = (f"{n}: the motion estimate ({sm.px:.1f} px) matches the shots worse than no motion, taken "
                    f"for a failure{outcome}")
        elif sm.verdict == "implausible":
            text = (f"{n}: the motion estimate ({sm.px:.1f} px: {sm.reason}) is not one a hand-held focus pair shows, "
                    f"taken for a failure{outcome}")
        elif sm.verdict == "too flat":
            text = (f"{n}: too flat to judge its motion (no structure to register by, in it or in {names[0]})"
                    + (": not aligned (nothing to register by)" if movers or resized else outcome))
        else:
            text = f"{n}: too small to judge its motion{outcome}"
        lines.append((sm.verdict, text))
    return ("similarity" if movers else "none"), lines


def fused_output(src: SourceSet, results, output: Path) -> Fused:
    """The image to write to ``output`` from the fusion of ``src``: the per-step results of a
    chain (:func:`bafusion.fusion.fuse_stack`) or the joint rule's
    :class:`bafusion.fusion.stack.StackResult`. The uint8 fusion, or for sources of more than 8 bits
    the full-depth one (:func:`compose_full`, or the joint rule's index map) when the format
    keeps 16 bits; notes say when a source's colour profile is not the first's (and what
    ``output`` carries: :meth:`bafusion.io.SourceSet.notes_for`), when 16-bit sources end up in
    8 bits, when the first source's EXIF is too large for a JPEG output
    (:func:`bafusion.io.fit_jpeg_exif`: what is dropped) and when ``output``'s format cannot hold
    its ICC profile or EXIF (:func:`unwritten_metadata_note`)."""
    joint = not isinstance(results, (list, tuple))  # a StackResult
    fused: np.ndarray = results.fused if joint else results[-1].fused
    high_depth = src.full is not None and keeps_16_bits(output)
    notes: list[str] = src.notes_for(output, high_depth)
    if src.full is not None:
        if high_depth:
            if joint:
                fused = compose_index(src.full, results.index, results.gains)
            else:
                fused = compose_full(src.full, [r.decision for r in results], [r.gains for r in results])
        else:
            notes.append(f"{output}: written with 8 bits per sample from sources of more than 8 ({output.suffix} "
                         "keeps 8 bits; use .png or .tif for 16)")
    notes += list(getattr(results, "notes", [])) if joint else [n for r in results for n in r.notes]
    exif, exif_note = fit_jpeg_exif(src.exif, output)
    notes += [exif_note] if exif_note else []
    fits = src.icc is not None and icc_fits(src.icc, fused)
    stored = src.icc is not None and icc_fits(src.icc, fused, output)  # a .webp stores a gray result as RGB
    lost = unwritten_metadata_note(output, high_depth, fits or stored, bool(exif), dpi=src.dpi is not None,
                                   icc_unfit=fits and not stored)
    notes += [lost] if lost else []
    png_colour = src.png_colour if Path(output).suffix.lower() == ".png" else None
    if src.png_colour and png_colour is None and not src.icc:
        from bafusion.io import png_colour_name

        notes.append(f"{output}: the first source's PNG colour description ({png_colour_name(src.png_colour)}) is not "
                     f"written ({Path(output).suffix} cannot hold it; a .png output keeps it)")
    secs = sum(results.seconds.values()) if joint else sum(sum(r.seconds.values()) for r in results)
    return Fused(fused, exif, src.icc, notes, secs, src.bits_for(output) if fused.dtype == np.uint16 else 8,
                 src.dpi, png_colour, src.subsampling)


def unwritten_metadata_note(output: Path, high_depth: bool, icc: bool, exif: bool, *,
                            dpi: bool = False, icc_unfit: bool = False) -> str | None:
    """The line saying that the first source's ICC profile (``icc``: it has one that fits the
    result), EXIF (``exif``) or resolution (``dpi``) is not written, since ``output``'s format
    cannot hold it (:func:`bafusion.io.written_metadata`: a .bmp holds neither profile nor
    EXIF, a .webp no resolution), or, for the profile, since ``output``
    stores the result in another colour space (``icc_unfit``: a .webp stores a gray result as
    RGB, which a gray profile does not describe); None when the output holds them all."""
    keeps = written_metadata(output, high_depth)
    lost = [name for name, has, key in (("ICC profile", icc, "icc"), ("EXIF", exif, "exif"),
                                        ("resolution (dpi)", dpi, "dpi"))
            if has and (key not in keeps or (key == "icc" and icc_unfit))]
    if not lost:
        return None
    them = "it" if len(lost) == 1 else "them"
    gray = ": it stores a gray result as RGB, which a gray profile does not describe" if icc and icc_unfit else ""
    why = f"{Path(output).suffix} cannot hold {them}{gray}; a .png, .tif or .jpg output keeps {them}"
    listed = lost[0] if len(lost) == 1 else ", ".join(lost[:-1]) + " and " + lost[-1]
    return f"{output}: the first source's {listed} {'is' if len(lost) == 1 else 'are'} not written ({why})"


def compose_index(full: Sequence[np.ndarray], index: np.ndarray, gains: Sequence | None = None,
                  top: int | None = None) -> np.ndarray:
    """Each pixel from the full-depth source ``index`` names (the joint stack rule's map); a
    gray source with colour ones is replicated to three channels; ``gains`` (per source, or
    None): those ``match_output_exposure`` applied, clipped at ``top`` (as :func:`compose_full`)."""
    from bafusion.fusion.exposure import apply_gains

    colour = any(f.ndim == 3 for f in full)
    srcs = [np.repeat(f[..., None], 3, axis=2) if colour and f.ndim == 2 else f for f in full]
    st = np.stack([f if not gains or gains[i] is None else apply_gains(f.astype(np.uint16), gains[i], top)
                   for i, f in enumerate(srcs)])
    sel = index[None, ..., None] if st.ndim == 4 else index[None]
    return np.take_along_axis(st, sel.astype(np.intp), 0)[0].astype(np.uint16)


def fuse_shots(images: Sequence[np.ndarray], nets, params, names: Sequence[str], progress: bool | None = None,
               step: Callable[[str], None] | None = None):
    """Fuse registered uint8 shots by ``params.stack_rule``: a list of per-step results
    (pairs, and stacks under ``chain``) or a :class:`bafusion.fusion.stack.StackResult` (``joint``),
    holding only what :func:`fused_output` reads (``keep_maps`` / ``keep_scores`` False);
    ``step`` is called with a line naming each step of a stack of three or more as it starts, and
    each step of a camera-size pair's fusion (:func:`bafusion.fusion.fuse_stack`)."""
    from bafusion.fusion.rule import fuse_stack

    if len(images) > 2 and params.stack_rule == "joint":
        from bafusion.fusion.stack import fuse_stack_joint

        return fuse_stack_joint(images, nets, params, names, step=step, keep_scores=False)
    return fuse_stack(images, nets, params, names, progress=progress, step=step, keep_maps=False)


def fuse_files(paths: Sequence[Path], nets, params, *, output: Path, align: str = "none",
               force: bool = False, motion_hint: bool = False, progress: bool | None = None,
               prefix: str = "bafusion", details: bool = True, step: Callable[[str], None] | None = None,
               stage: Callable[[str], None] | None = None, keep_sources: bool = False) -> Fused:
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
        ``none``, a :mod:`bafusion.fusion.align` model, or ``auto`` (:func:`prepare_sources`).
    force : bool
        Fuse shots that do not look like one scene.
    motion_hint : bool
        Without alignment, say on stderr when the shots move (:func:`prepare_sources`).
    progress : bool or None
        The fusion's progress bar (None: for camera-size shots on a terminal; False: never).
    prefix, details : str, bool
        The lines on stderr start with ``prefix``; the alignment's per-shot lines are written
        only with ``details`` (:func:`prepare_sources`).
    step : callable, optional
        Called with a line naming each step of a stack of three or more shots (:func:`fuse_shots`).
    stage : callable, optional
        Called with a line naming each step before the fusion as it starts: reading, checking,
        aligning and the alignment's own steps (:func:`prepare_sources`).
    keep_sources : bool
        Keep the shots as fused in the result's ``sources`` (:func:`write_registered`); not
        kept by default, so that they are freed once fused.

    Returns
    -------
    Fused
    """
    src = prepare_sources(paths, align=align, force=force, motion_hint=motion_hint, prefix=prefix, details=details,
                          stage=stage)
    too_large = output_format_problem(output, shape=src.images[0].shape)  # a WebP's largest side
    if too_large:
        raise UserError(f"{output}: {too_large}")
    results = fuse_shots(src.images, nets, params, [str(p) for p in paths], progress=progress, step=step)
    fused = fused_output(src, results, output)
    if keep_sources:
        fused.sources = src
    return fused


#: The most folders :func:`_holds_output_folder` reads below a sub-folder without shots: it read
#: every one, so a shot-less tree of 20,000 empty folders took ~0.9 s of each fuse-dir (warm
#: cache, a loaded 2-core machine; more on a cold or network disk). Read breadth first, an earlier
#: output nested a few levels down (``fuse-dir IN IN/a/b``) is found long before the bound; past it,
#: the folder is a stack of 0 shots, listed as skipped (as every folder without shots or output is).
OUTPUT_SEARCH_FOLDERS = 1000


def _holds_output_folder(folder: Path) -> bool:
    """Whether a folder below ``folder`` (at any depth, hidden ones left out, the nearest first and
    at most :data:`OUTPUT_SEARCH_FOLDERS` of them, those of a level by name) holds
    :data:`OUTPUT_MARKER`: an earlier run's output folder nested in it (``fuse-dir IN IN/a/b``
    leaves IN/a holding only IN/a/b), which makes ``folder`` no stack of 0 shots."""
    from collections import deque

    queue, read = deque([(os.fspath(folder), True)]), 0
    while queue and read < OUTPUT_SEARCH_FOLDERS + 1:  # ``folder`` itself, then the bound's folders
        path, top = queue.popleft()
        read += 1
        try:
            with os.scandir(path) as entries:
                found = []
                for e in entries:
                    if e.name == OUTPUT_MARKER and not top and e.is_file():
                        return True
                    if not e.name.startswith(".") and e.is_dir(follow_symlinks=False):  # as os.walk: a
                        found.append(e.path)  # linked folder is not entered
        except OSError:  # unreadable: as os.walk, passed over
            continue
        # by name, not in the file system's order: which folders the bound reaches (and so
        # whether an output past it is found) is the same on every machine
        queue.extend((p, False) for p in sorted(found))
    return False


def _unread_images_in(folder: Path) -> bool:
    """Whether ``folder`` holds, directly, an image that is no shot but is named when its stack
    is skipped: a camera RAW or HEIC file (:func:`bafusion.io.unread_format`) or an image whose
    extension was lost (:func:`_image_without_suffix`); hidden files left out."""
    for q in folder.iterdir():
        if q.name.startswith("."):
            continue
        if (unread_format(q) and q.is_file()) or _image_without_suffix(q):
            return True
    return False


def find_groups(folder: Path, exclude: Path | None = None,
                notes: list[tuple[str, list[Path], str | None]] | None = None,
                ) -> tuple[dict[str, list[Path]], list[tuple[str, str]]]:
    """The stacks of ``folder`` by the naming rule (module doc), sorted by name, and the
    images skipped with the reason.

    Parameters
    ----------
    folder : Path
        The input folder.
    exclude : Path, optional
        A sub-folder that is not a stack (the output folder, when it lies inside ``folder``;
        :func:`fuse_dir` refuses one that holds other images: :func:`check_output_folder`).
        A sub-folder holding :data:`OUTPUT_MARKER` (an earlier run's output folder) is no
        stack either, nor one without shots that holds ``exclude`` or such a folder at any
        depth (``fuse-dir IN IN/a/b``: ``IN/a``), unless it also holds images bafusion does not
        read (RAW, HEIC, an extension lost: :func:`_unread_images_in`), which are named.

    Returns
    -------
    (dict of str to list of Path, list of (str, str))
        Stack name to its shots in order; (file, reason) of what cannot be fused. A broken
        symbolic link (its target gone: a card not mounted) named like a shot, or like a stack
        folder (no suffix), is listed with its target, and its stack is not fused (it was left
        out silently: the stack fused without that shot, or not at all, unsaid); so is a named
        pipe, a device or a socket named like a shot ("not a regular file"). So is an image
        file without a suffix (its extension lost: ``lytro-01-A``), directly in ``folder`` or in
        a stack folder, told by its first bytes (it was passed over without a word).

    Camera RAW and HEIC files (:func:`bafusion.io.unread_format`), which were passed over without
    a word (a folder of RAW shots: "stack 'x' has only 0 shot(s)"), are named, one line per folder
    (:func:`unread_files`): in the reason of a stack skipped for too few shots, else appended to
    ``notes`` as (folder, files, stack) when a list is given: ``stack`` is the name of the stack
    fused from the other images of the folder (a RAW + JPEG folder), ``None`` for RAW files
    directly in ``folder``. Their line is made once the fusing is over (:func:`unread_notes`):
    made here, it said such a stack fused before it was, also when it was then skipped.
    """
    groups: dict[str, list[tuple[str, Path]]] = {}
    folders: set[str] = set()
    skipped: list[tuple[str, str]] = []
    broken: dict[str, list[Path]] = {}  # stack name -> its shots that are broken links or no regular files
    unread: dict[str, list[Path]] = {}  # stack folder name ("" for folder itself) -> RAW, HEIC files
    suffixes = read_suffixes()  # HEIC too where a Pillow plugin reads it, as read_image does
    excluded = exclude.resolve() if exclude is not None else None
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            if excluded is not None and p.resolve() == excluded:
                continue
            if (p / OUTPUT_MARKER).is_file():  # an earlier run's OUT inside IN (fuse-dir IN IN/fused): its
                continue  # outputs are no stack (a later fuse-dir IN OUT2 fused them as one)
            if _controls(p.name):
                skipped.append((escape_controls(str(p)), f"{CONTROL_NAME} ({_controls(p.name)}): rename it"))
                continue
            # dot-files (macOS ._1.png resource forks, editors' temporaries) are not shots
            shots = sorted(q for q in p.iterdir()
                           if (q.is_file() or _unusable(q)) and not q.name.startswith(".")
                           and q.suffix.lower() in suffixes)
            if (not shots and ((excluded is not None and p.resolve() in excluded.parents) or _holds_output_folder(p))
                    and not _unread_images_in(p)):
                # the folder this run's OUT lies in (fuse-dir IN IN/a/b), or an earlier run's (IN/a, for
                # another OUT): no stack (it was one of 0 shots, exit 3); one that also holds images
                # bafusion does not read (RAW, an extension lost) is still listed, naming them
                continue
            groups[p.name] = [(q.name, q) for q in shots]
            for q in sorted(p.iterdir()):  # an image whose extension was lost: said, not passed over
                why = None if q.name.startswith(".") else _image_without_suffix(q)
                if why:
                    skipped.append((str(q), why))
            others = sorted(q for q in p.iterdir() if not q.name.startswith(".") and unread_format(q) and q.is_file())
            if others:
                unread[p.name] = others
            folders.add(p.name)
            broken_shots = [q for q in shots if _unusable(q)]
            if broken_shots:
                broken[p.name] = broken_shots
            continue
        if _broken_link(p) and not p.suffix:  # a stack folder's link
            skipped.append((str(p), _broken_reason(p)))
            continue
        if p.is_file() and unread_format(p):
            unread.setdefault("", []).append(p)
            continue
        if not (p.is_file() or _unusable(p)) or p.suffix.lower() not in suffixes:
            why = _image_without_suffix(p, top=True)  # an image whose extension was lost: said, not passed over
            if why:
                skipped.append((str(p), why))
            continue
        if _controls(p.name):
            skipped.append((escape_controls(str(p)), f"{CONTROL_NAME} ({_controls(p.name)}): rename it"))
            continue
        m = _SHOT.fullmatch(p.stem)
        if m is None:
            skipped.append((str(p), _unusable_reason(p) if _unusable(p) else OUTSIDE_RULE))
            continue
        if m["name"] in folders:
            skipped.append((str(p), f"stack {m['name']!r} is also a sub-folder: rename one of them"))
            continue
        groups.setdefault(m["name"], []).append((m["letter"].upper(), p))
        if _unusable(p):
            broken.setdefault(m["name"], []).append(p)
    out: dict[str, list[Path]] = {}
    for name in sorted(groups):
        shots = [p for _, p in sorted(groups[name])]
        letters = [k for k, _ in sorted(groups[name])]
        if name in broken:
            skipped.extend((str(q), f"{_unusable_reason(q)}: stack {name!r} not fused") for q in broken[name])
        elif len(set(letters)) != len(letters):
            skipped.append((", ".join(map(str, shots)), f"stack {name!r} has two shots with one letter"))
        elif len(shots) < 2:
            where = shots[0] if shots else folder / name
            if name in folders and name in unread:
                others = unread.pop(name)
                skipped.append((str(folder / name), f"stack {name!r} has only {len(shots)} shot(s) bafusion reads; "
                                f"{unread_files(others, 'its')}"))
            else:
                skipped.append((str(where), f"stack {name!r} has only {len(shots)} shot(s)"))
        else:
            out[name] = shots
    # P/ and p-A.jpg, p-B.jpg: P.png and p.png are one file where names ignore case (macOS,
    # Windows; café NFC and NFD on macOS only), so one output would replace the other: the later
    # stack is skipped
    seen: dict[str, str] = {}
    for name in list(out):
        first = seen.setdefault(same_file_key(name), name)
        if first != name:
            shots = out.pop(name)
            where = str(folder / name) if name in folders else ", ".join(map(str, shots))
            skipped.append((where, f"stack {name!r} differs from stack {first!r} only in {name_difference(name, first)}: "
                            f"their outputs would be one file {where_one_file(name, first)}: rename one of them"))
    if notes is not None:
        for name, others in sorted(unread.items()):
            notes.append((str(folder / name) if name else str(folder), others, name if name in out else None))
    return out, skipped


def same_file_key(name: str) -> str:
    """``name`` as macOS's file systems compare names: two names of one key are one file on
    macOS (APFS and HFS+ ignore case and also the Unicode normalization: ``café`` with ``é`` as
    one character or as ``e`` and a combining accent); on Windows (NTFS, which ignores case but
    not the normalization) only when they differ in case alone (:func:`where_one_file`).

    Their case mapping is the simple one, character for character (``str.lower()`` of the
    decomposed form, NFD), not Python's ``casefold()``, which also folds ``ß`` to ``ss``:
    ``Straße`` and ``Strasse`` are two files everywhere.
    """
    return unicodedata.normalize("NFD", name).lower()


def name_difference(name: str, other: str) -> str:
    """How ``name`` and ``other`` (of one :func:`same_file_key`) differ, for a message: ``case``,
    ``Unicode normalization (accents composed or decomposed)`` or both."""
    nfd, other_nfd = unicodedata.normalize("NFD", name), unicodedata.normalize("NFD", other)
    if nfd == other_nfd:
        return "Unicode normalization (accents composed or decomposed)"
    if name.lower() == other.lower():
        return "case"
    return "case and Unicode normalization (accents composed or decomposed)"


def where_one_file(name: str, other: str) -> str:
    """Where ``name`` and ``other`` (of one :func:`same_file_key`) are one file, for a message:
    ``where file names ignore case (macOS, Windows)`` when they differ in case alone, else
    ``on macOS, whose file names also ignore Unicode normalization (not on Windows)``: NTFS
    keeps ``café`` with a composed and a decomposed ``é`` apart."""
    if name.lower() == other.lower():
        return "where file names ignore case (macOS, Windows)"
    return "on macOS, whose file names also ignore Unicode normalization (not on Windows)"


def unread_files(files: Sequence[Path], whose: str = "", fused: str | None = None, outcome: str = "fused") -> str:
    """One line naming camera RAW and HEIC ``files`` (:func:`bafusion.io.unread_format`), at most
    :data:`NAMED` of them, and what to do: "2 camera RAW files are not read (a.CR2, b.CR2):
    convert them to TIFF ... first"; ``whose`` before the count ("its"); ``fused``: the stack
    of the other images of their folder (a camera's RAW + JPEG pairs), and what became of it
    said before the advice by ``outcome``: ``fused``, ``existing`` (its output was there:
    ``--skip-existing``), ``skipped`` (listed after the line), anything else (not reached: the
    batch stopped) nothing."""
    kinds = [unread_format(q) or "" for q in files]
    counts = [(kinds.count(k), k) for k in dict.fromkeys(kinds)]
    what = " and ".join(f"{n} {k}" for n, k in counts) + (" files" if len(files) > 1 else " file")
    names = ", ".join(q.name for q in files[:NAMED]) + (f" and {len(files) - NAMED} more" if len(files) > NAMED else "")
    verb, it = ("are", "them") if len(files) > 1 else ("is", "it")
    became = {"fused": "is fused from its other images",
              "existing": "was fused from its other images (its output is already there)",
              "skipped": "is skipped (listed below)"}.get(outcome) if fused is not None else None
    then = f"; stack {fused!r} {became}; to fuse {it}, " if became else ": "
    advice = unread_advice(kinds, them=it == "them")
    return f"{whose + ' ' if whose else ''}{what} {verb} not read ({names}){then}{advice}"


def unread_notes(notes: Sequence[tuple[str, Sequence[Path], str | None]], rep: BatchReport) -> list[tuple[str, str]]:
    """(folder, line) of :func:`find_groups`' ``notes`` (files not read), said from what became
    of the stack of each folder in ``rep`` (:func:`unread_files`)."""
    skipped = {name for name, _ in rep.skipped}
    return [(where, unread_files(files, fused=stack,
                                 outcome="fused" if stack in rep.fused else "existing" if stack in rep.existing
                                 else "skipped" if stack in skipped else "not reached"))
            for where, files, stack in notes]


#: Pixels of a stack (its shots' in all, from their headers) from which ``fuse-dir`` names the
#: steps around its fusion on a terminal (reading, checking, aligning, writing), as ``fuse``
#: does: below it those steps are short (aligning up to 10 s; reading, checking and writing
#: as measured below: not timed for every size under it), and a batch of small stacks printed three lines per stack (eight with ``--align``) between
#: the lines of its bar. Measured on a shared 2-core CPU (load average about 5; pairs of 4:3
#: JPEGs scaled from a Lytro pair): a pair of 1 MP shots was read, checked and written in under
#: 0.6 s in all and aligned (similarity) in 8.7-9.7 s (0.27 MP shots: 4.7-5.0 s); a pair of
#: 2 MP shots (4 MP in all) wrote its PNG in 0.8-1.1 s and aligned in 9.6 s; a pair of 4 MP
#: shots in 1.5-2.5 s and 19 s; of 8 MP shots in 3.6-4.7 s and 33 s. The steps of a stack of
#: three or more shots (each a pair's fusion, decided at the working resolution whatever the
#: size) are named for any size.
STEP_LINES_MIN_PIXELS = 4_000_000


def _stack_pixels(shots: Sequence[Path]) -> int:
    """The pixels of a stack's shots in all, from their headers (:func:`bafusion.io.image_info`);
    0 when a header cannot be read (the fusion then says why)."""
    try:
        return sum(i.width * i.height for i in map(image_info, shots))
    except Exception:  # noqa: BLE001 - the fusion reads them again and names the problem
        return 0


#: How many files a line of fuse-dir names before "and N more".
NAMED = 5

#: Why an image directly in IN is no shot (:func:`find_groups`); :func:`skip_lines` says them in one line.
OUTSIDE_RULE = "name does not follow the rule <name>-A.<ext>, <name>-B.<ext>, ..."

#: How to lay out shots that follow neither rule (:func:`skip_lines`).
LAYOUT_HINT = ("files directly in the input folder are shots only when so named; put each stack in a sub-folder of "
               "its own (its images are fused in name order) or rename its shots so")


def skip_lines(skipped: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """``(what, why)`` of :attr:`BatchReport.skipped` as ``fuse-dir`` lists them: the images of a
    folder whose names follow neither rule (:data:`OUTSIDE_RULE`: camera names IMG_0001.JPG, ...
    beside stack folders) in one line where the first of them was, with their count, at most
    :data:`NAMED` names and how to lay them out (:data:`LAYOUT_HINT`); they were one line each,
    with no hint. The others as they are."""
    outside: dict[str, list[str]] = {}
    for what, why in skipped:
        if why == OUTSIDE_RULE:
            outside.setdefault(str(Path(what).parent), []).append(what)
    out: list[tuple[str, str]] = []
    for what, why in skipped:
        if why != OUTSIDE_RULE:
            out.append((what, why))
            continue
        folder = str(Path(what).parent)
        files = outside.pop(folder, None)
        if files is None:  # said with the first
            continue
        if len(files) == 1:
            out.append((what, f"{why}: {LAYOUT_HINT}"))
            continue
        names = ", ".join(Path(f).name for f in files[:NAMED])
        more = f" and {len(files) - NAMED} more" if len(files) > NAMED else ""
        out.append((f"{len(files)} images directly in {folder}",
                    f"their names do not follow the rule <name>-A.<ext>, <name>-B.<ext>, ... ({names}{more}): "
                    f"{LAYOUT_HINT}"))
    return out


def _image_without_suffix(p: Path, top: bool = False) -> str | None:
    """Why ``p``, a regular file without a suffix (``lytro-01-A``: its extension lost in a copy),
    is skipped when its first bytes are an image's (Pillow identifies it): fuse-dir takes shots
    by their suffix and passed it over without a word. None for other files (a README).
    ``top``: ``p`` is directly in the input folder, where a name outside the rule
    ``<name>-A.<ext>`` is no shot with an extension either (``photo``: renamed ``photo.png`` it
    would be skipped as outside the rule), which the reason then says."""
    if p.suffix or not p.is_file():  # is_file: no pipe opened (it would wait for a writer)
        return None
    from bafusion.io.formats import _quiet_pillow, pillow_open

    try:
        with _quiet_pillow(), pillow_open(p) as im:
            fmt = str(im.format or "")
    except Exception:  # noqa: BLE001 - not an image Pillow knows: not a shot
        return None
    from PIL import Image

    # a suffix read here for its format (JPEG2000: jp2, not "jpeg2000")
    known = [e[1:] for e, f in Image.registered_extensions().items() if f == fmt and e in read_suffixes()]
    ext = {"JPEG": "jpg", "TIFF": "tif", "MPO": "jpg"}.get(fmt) or (
        fmt.lower() if fmt.lower() in known or not known else known[0])
    if top and _SHOT.fullmatch(p.name) is None:
        return (f"a {fmt} image without a file extension, and fuse-dir takes shots by theirs and, directly in "
                f"the input folder, by names of the rule <name>-A.<ext>, <name>-B.<ext>, ...: name it so, "
                f"<name>-A.{ext}, or move it to a stack's sub-folder as {p.name}.{ext}, to fuse it")
    return (f"a {fmt} image without a file extension, and fuse-dir takes shots by theirs: rename it "
            f"{p.name}.{ext} to fuse it")


#: Why a stack is skipped whose name holds control characters (:func:`find_groups`).
CONTROL_NAME = "name holds a control character, which no output's name takes"


def _controls(name: str) -> str:
    """The control characters of ``name`` (Unicode category Cc: newline, tab, escape, ...),
    each once, escaped and quoted (``'\\n'``); empty when it holds none."""
    return ", ".join(repr(c) for c in dict.fromkeys(name) if unicodedata.category(c) == "Cc")


def escape_controls(text: str) -> str:
    """``text`` with each control character (Unicode category Cc) written as its escape
    (``\\n``, ``\\t``, ``\\x1b``), so that a file name holding one stays on its line.

    Parameters
    ----------
    text : str
        A message or a path.

    Returns
    -------
    str
        ``text``, its other characters unchanged.
    """
    return "".join(repr(c)[1:-1] if unicodedata.category(c) == "Cc" else c for c in text)


def _broken_link(p: Path) -> bool:
    """Whether ``p`` is a symbolic link whose target does not exist (or a loop of links)."""
    return p.is_symlink() and not p.exists()


#: Why a shot that is a named pipe, a device or a socket is not read (fuse's reader says so too).
_NOT_REGULAR = "not a regular file (a named pipe, a device or a socket)"


def _unusable(p: Path) -> bool:
    """Whether ``p``, named like a shot, cannot be read as one: a broken link (:func:`_broken_link`)
    or not a regular file (a named pipe, a device, a socket: passed over without a word, its
    stack fused without it or skipped for too few shots; read, a pipe hangs)."""
    return _broken_link(p) or (p.exists() and not p.is_file() and not p.is_dir())


def _unusable_reason(p: Path) -> str:
    """Why :func:`_unusable` ``p`` is not read: its broken link's target, or :data:`_NOT_REGULAR`."""
    return _broken_reason(p) if _broken_link(p) else _NOT_REGULAR


def _broken_reason(p: Path) -> str:
    try:
        target = os.readlink(p)
    except OSError:  # gone meanwhile
        return "broken link"
    return f"broken link (to {target})"


#: fuse-dir's record in its output folder: what makes the outputs (:func:`batch_setup`) and
#: which were written so, a JSON object written atomically at a run's start and end; while a run
#: writes, what changes is appended to its :data:`JOURNAL_FILE` (:func:`read_marker` reads both).
#: Inside the input folder it also marks the folder as fuse-dir's (:func:`check_output_folder`).
#: Earlier versions wrote it empty, and only there.
OUTPUT_MARKER = ".bafusion-fuse-dir"

#: Beside :data:`OUTPUT_MARKER` while a fuse-dir run writes (and after one killed or stopped): one JSON
#: line per change of the record, appended with one ``write`` (unbuffered: in the kernel before
#: the run goes on, so a SIGKILL at any point leaves every whole line; not flushed to the disk,
#: where the outputs and the record are before their rename (:func:`bafusion.atomic.sync_file`):
#: an ``fsync`` per line cost ~5 ms on a loaded disk, measured, two per stack, as much as 0.7.0's
#: rewrites at 200 outputs):
#: ``{"journal": <token>}`` first (the record names the token: a journal of another
#: run, or one the record does not name, is not read), then ``{"op": "fusing", "name": <output>,
#: "sources": <shots_record>}`` before an output is written (it is no longer listed as written)
#: and ``{"op": "fused", "name": <output>}`` once it is. Version 0.7.0 rewrote the whole record
#: twice per stack instead: its time grew with the outputs listed (BENCHMARKS.md, one run on a
#: loaded 2-core machine: 17 ms a write at 200 outputs, 205 ms at 5000), so a batch's with the square
#: of its stacks (~17 min of record writes in a 5000-stack batch; the journal's: 0.7 s). The run's end
#: writes the record whole again and removes the journal (:func:`compact_record`); so does the
#: start of the next run after one killed or stopped by a signal (whose end writes nothing).
JOURNAL_FILE = ".bafusion-fuse-dir.journal"

#: The layout of :data:`OUTPUT_MARKER`'s JSON.
MARKER_FORMAT = 1

#: The keys a record must have to record a setup (:func:`read_marker`): what the outputs are
#: made by, compared by ``--skip-existing``. :func:`batch_setup` adds ``code``
#: (:func:`fusion_code_digest`); a record without it (an earlier version's) is of other code.
SETUP_KEYS = ("bafusion", "model", "params", "align", "ext")


def fusion_code_digest(pkg: Path | None = None) -> str:
    """sha256 of the sources of the code that makes ``fuse-dir``'s outputs: the modules of
    :mod:`bafusion.fusion` and :mod:`bafusion.io`, the nets (``nets/model.py``) and the
    defocus model of the stack rule (``data/composite.py``). The version number is no such
    identity: it names a release (it stayed 0.1.0 across fixes that changed outputs until 0.2.0),
    and an edited checkout keeps it. Each module is hashed as its code
    (:func:`bafusion._version.code_of`: its syntax tree without docstrings), so any change of the code
    changes it, a string the code uses too (a message's wording), while comments, formatting,
    line endings (a Windows checkout's CRLF) and docstrings do not; neither do hidden files
    (an editor's ``.#x.py`` lock) or files that cannot be read.

    Parameters
    ----------
    pkg : Path, optional
        The package folder to hash; default: this installed ``bafusion``.

    Returns
    -------
    str
        The hex digest.
    """
    pkg = Path(__file__).resolve().parents[1] if pkg is None else Path(pkg)
    files = [*sorted((pkg / "fusion").glob("*.py")), *sorted((pkg / "io").glob("*.py")),
             pkg / "nets" / "model.py", pkg / "data" / "composite.py"]
    h = hashlib.sha256()
    for f in files:
        if f.name.startswith("."):
            continue
        try:
            data = f.read_bytes()
        except OSError:
            continue
        # the name too: a module moved or added is other code
        h.update(f.relative_to(pkg).as_posix().encode() + b"\0")
        h.update(code_digest(data))
    return h.hexdigest()


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _weights_sha256(net) -> str:
    """sha256 of a net's tensors (names and values), for nets that came from no file."""
    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update((t.float() if t.is_floating_point() else t).numpy().tobytes())
    return h.hexdigest()


def model_identity(nets) -> dict[str, dict[str, Any]]:
    """The nets as :data:`OUTPUT_MARKER` records them: per role (``initial``, ``boundary``) the
    file they came from, its sha256 (of the weights, for nets built in memory) and the patch side."""
    out: dict[str, dict[str, Any]] = {}
    for role, source, net, patch in (("initial", nets.sources[0], nets.initial, nets.patch_initial),
                                     ("boundary", nets.sources[1], nets.boundary, nets.patch_boundary)):
        p = Path(source) if source else None
        if p is not None and p.is_file():
            out[role] = {"file": str(p), "sha256": _file_sha256(p), "patch": int(patch)}
        else:
            out[role] = {"file": "", "sha256": _weights_sha256(net), "patch": int(patch)}
    return out


def batch_setup(nets, params, *, ext: str, align: str, quality: int | None = None) -> dict[str, Any]:
    """What makes ``fuse-dir``'s outputs (:data:`SETUP_KEYS`): bafusion's version and the
    digest of its fusion code (``code``: :func:`fusion_code_digest`), the nets
    (:func:`model_identity`), the fusion parameters, ``--align``, ``--ext`` (the format: JPEG
    is lossy, PNG and TIFF keep 16 bits) and ``--quality`` (None: the format's default, a
    lossless WebP; a jpg's default quality given is recorded as None too: the same bytes), as
    JSON values. ``--force`` and the device are not in it (one decides which stacks are fused,
    not how)."""
    from dataclasses import asdict

    from bafusion._version import __version__

    return {"bafusion": __version__, "code": fusion_code_digest(), "model": model_identity(nets),
            "params": json.loads(json.dumps(asdict(params))), "align": align, "ext": ext,
            "quality": _same_quality(ext, quality)}


def _same_quality(ext: Any, quality: Any) -> Any:
    """``quality`` as :func:`batch_setup` records it for outputs of suffix ``ext``: None for a
    jpg's default (:data:`bafusion.io.write.JPEG_QUALITY`), which writes the bytes that no
    ``--quality`` writes; else ``quality`` as it is."""
    from PIL import Image

    from bafusion.io.write import JPEG_QUALITY

    jpeg = isinstance(ext, str) and Image.registered_extensions().get(f".{ext.lower()}") == "JPEG"
    return None if jpeg and quality == JPEG_QUALITY and not isinstance(quality, bool) else quality


def read_marker(out: Path) -> dict[str, Any] | None:
    """The record in ``out`` (:data:`OUTPUT_MARKER`), or None where there is none (or it cannot
    be opened), or one that records no setup (an earlier version's empty file, or JSON of
    another layout). A record that is no JSON (damaged, not UTF-8, nested too deeply to read)
    is refused, naming it, as the checkpoints and model descriptions are: taken as none, it
    was replaced by this run's, which forgot the other outputs it vouched for, and files it
    listed were refused as "not fused from" their input folder."""
    marker = out / OUTPUT_MARKER
    try:
        text = marker.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise _damaged_marker(marker, f"not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError:
        return None
    if not text.strip():  # the record of versions before the JSON one
        return None
    try:
        doc = json_loads(text)
    except ValueError as e:
        raise _damaged_marker(marker, str(e).splitlines()[0] if str(e) else "not JSON") from e
    if not isinstance(doc, dict) or any(k not in doc for k in SETUP_KEYS):
        return None
    if isinstance(doc.get("journal"), str):
        _replay_journal(out, doc)
    return doc


def _replay_journal(out: Path, doc: dict[str, Any]) -> None:
    """Apply to ``doc`` (:data:`OUTPUT_MARKER`'s JSON) the lines of ``out``'s
    :data:`JOURNAL_FILE` that it names (its ``journal`` token): up to the first line that is
    not whole (a run killed while appending it: its output was not written yet, or was and is
    then fused again) or not of the journal's layout; a journal of another token (left by a run
    whose record was since rewritten) is not read."""
    try:
        data = (out / JOURNAL_FILE).read_bytes()
    except OSError:
        return
    if not isinstance(doc.get("outputs"), list):
        return
    outputs = {str(n) for n in doc["outputs"]}
    sources = dict(doc.get("sources")) if isinstance(doc.get("sources"), dict) else {}
    for i, line in enumerate(data.split(b"\n")[:-1]):  # after the last newline: nothing, or a torn line
        try:
            entry = json_loads(line.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            break
        if not isinstance(entry, dict):
            break
        if i == 0:
            if entry.get("journal") != doc["journal"]:
                return
            continue
        name, op = entry.get("name"), entry.get("op")
        if not isinstance(name, str):
            break
        if op == "fusing" and isinstance(entry.get("sources"), dict):
            sources[name] = entry["sources"]
            outputs.discard(name)
        elif op == "fused":
            outputs.add(name)
        else:
            break
    doc["outputs"] = sorted(outputs)
    doc["sources"] = {k: sources[k] for k in sorted(sources)}


def _damaged_marker(marker: Path, why: str) -> UserError:
    """The refusal of a record (:data:`OUTPUT_MARKER`) that cannot be read: :func:`read_marker`."""
    return UserError(f"{marker}: fuse-dir's record is unreadable ({why}): it says which files in {marker.parent} are "
                     "fuse-dir's outputs and what made them; move it away (or delete it) to go on (the outputs it "
                     "listed are then refused as files of an unknown setup until moved too), or give another "
                     "output folder")


def _short(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, (int, float, bool, str)) else str(v)


#: Fusion parameters that only bound memory (exact patches per forward pass, the largest
#: tile): a batch resumed with a smaller one after running out of memory, as the error advises,
#: keeps its outputs. The dense pass gives every box edge inside the image the trunk's whole
#: reach (scoring.trunk_reach), so a pixel's score is the whole image's up to float rounding
#: (measured: batch_size 64 gives the same bytes; lytro-05 with the shipped nets, max_tile 256
#: and 64: the same fused image and maps as 1024, byte for byte).
MEMORY_PARAMS = frozenset({"batch_size", "max_tile"})


def setup_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two :func:`batch_setup` records, one phrase each ("other
    parameters (l: 8 -> 6)"); empty when they match."""
    diffs: list[str] = []
    om, nm = old.get("model") or {}, new.get("model") or {}
    changed, where = [], []
    for role in ("initial", "boundary"):
        o, n = om.get(role) or {}, nm.get(role) or {}
        if (o.get("sha256"), o.get("patch")) != (n.get("sha256"), n.get("patch")):
            patch = f", patch {o.get('patch')} -> {n.get('patch')}" if o.get("patch") != n.get("patch") else ""
            changed.append(f"{role} sha256 {str(o.get('sha256'))[:12]} -> {str(n.get('sha256'))[:12]}{patch}")
            files = [str(Path(f).parent) if f else "(nets in memory)" for f in (o.get("file"), n.get("file"))]
            if files[0] != files[1] and " -> ".join(files) not in where:
                where.append(" -> ".join(files))
    if changed:
        diffs.append(f"another model ({'; '.join([*where, *changed])})")
    op, np_ = old.get("params") or {}, new.get("params") or {}
    if not isinstance(op, dict):
        op = {}
    keys = [k for k in np_ if op.get(k, None) != np_[k]] + [k for k in op if k not in np_]
    keys = [k for k in keys if k not in MEMORY_PARAMS]
    if keys:
        shown = [f"{k}: {_short(op[k]) if k in op else '(not recorded)'} -> "
                 f"{_short(np_[k]) if k in np_ else '(none)'}" for k in keys[:4]]
        more = f" and {len(keys) - 4} more" if len(keys) > 4 else ""
        diffs.append(f"other parameters ({', '.join(shown)}{more})")
    for key, what in (("align", "--align"), ("ext", "--ext"), ("quality", "--quality"),
                      ("bafusion", "bafusion version")):
        # quality: None (not given; a record before it: not recorded); a jpg's 95 is its default
        o, n = ((_same_quality(r.get("ext"), r.get(key)) if key == "quality" else r.get(key)) for r in (old, new))
        if o != n:
            was, now = ("default" if v is None and key == "quality" else v for v in (o, n))
            diffs.append(f"another {what} ({was} -> {now})")
    if old.get("code") != new.get("code"):  # a record without it: a version before the digest
        was = old.get("code")
        by = f" by bafusion {old['bafusion']}" if isinstance(old.get("bafusion"), str) else ""
        diffs.append(f"other fusion code (bafusion's fusion code changed since they were made{by}: code digest "
                     f"{str(was)[:12] if isinstance(was, str) else '(not recorded: an earlier version)'} -> "
                     f"{str(new.get('code'))[:12]})")
    return diffs


def check_skip_existing(out: Path, setup: Mapping[str, Any], targets: Sequence[Path]) -> None:
    """Refuse (a :class:`UserError`, before any work) ``--skip-existing`` into ``out`` when its
    :data:`OUTPUT_MARKER` records another setup than ``setup`` (the outputs kept would come
    from two), naming what differs; or records none (an earlier version's empty marker, or no
    marker) while one of ``targets`` (this run's outputs) exists: what made it is unknown, and
    a run without ``--skip-existing`` does not replace it either (:func:`check_replaced`), so
    the message says to move them away or give another folder."""
    if not out.is_dir():
        return
    doc = read_marker(out)
    if doc is None:
        there = [t for t in targets if t.is_file()]
        if not there:
            return
        marker = out / OUTPUT_MARKER
        how = ("its marker records no model or parameters (an earlier bafusion's)" if marker.is_file()
               else f"no {OUTPUT_MARKER} records the model and parameters that made them")
        more = f" and {len(there) - 1} more" if len(there) > 1 else ""
        # not "drop --skip-existing": without it check_replaced refuses them too (no record shows
        # them fuse-dir's, they may be files of the user's), so nothing but moving them works
        raise UserError(f"{out}: holds outputs ({there[0].name}{more}) of an unknown setup: {how}; fuse-dir neither "
                        "keeps nor replaces files it has no record of (with or without --skip-existing): move them "
                        "away (or delete them) to fuse those stacks again, or give another output folder")
    diffs = setup_differences(doc, setup)
    if diffs:
        raise UserError(f"{out}: holds outputs of {', '.join(diffs)}; give another folder or drop --skip-existing "
                        "(they are then fused again)")


def write_marker(out: Path, setup: Mapping[str, Any], outputs: Iterable[str], device: str = "",
                 sources: Mapping[str, Any] | None = None, journal: str | None = None) -> None:
    """Write :data:`OUTPUT_MARKER` in ``out`` atomically: ``setup`` (:func:`batch_setup`), the
    outputs written with it (file names), the device (for the record only), ``sources``: per
    output file name (of any setup) what it was fused from (:func:`shots_record`), and
    ``journal``: the token of the :data:`JOURNAL_FILE` whose lines complete it (None: none)."""
    from bafusion.atomic import atomic_file

    doc = {"format": MARKER_FORMAT, **setup, "device": device, "outputs": sorted(set(outputs)),
           "sources": {k: sources[k] for k in sorted(sources or {})}}
    if journal is not None:
        doc["journal"] = journal
    try:
        with atomic_file(out / OUTPUT_MARKER) as tmp:
            tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    except OSError as e:
        raise UserError(f"{out / OUTPUT_MARKER}: cannot write fuse-dir's record: {e.strerror or e}") from e


#: The fields of :data:`OUTPUT_MARKER` that are no part of the setup (:func:`batch_setup`).
_RECORD_FIELDS = ("format", "device", "outputs", "sources", "journal")


def _append_line(fd: int, data: bytes) -> None:
    """Append ``data`` to the open file ``fd`` (opened ``O_APPEND``, no buffer of Python's)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _Journal:
    """fuse-dir's record while a run writes (:data:`JOURNAL_FILE`): the record written whole
    once, naming a new journal, then a line appended per change (:meth:`fusing`,
    :meth:`fused`): a write of the record cost the time to write all the outputs it lists, a
    line does not. A line that fails is cut off again (no torn line before the next), and the
    failure is a :class:`UserError` whose cause is the ``OSError``, as :func:`write_marker`'s."""

    def __init__(self, out: Path, setup: Mapping[str, Any], outputs: Iterable[str], device: str,
                 sources: Mapping[str, Any]) -> None:
        self.out, self.path, self.token = out, out / JOURNAL_FILE, os.urandom(8).hex()
        self.fd: int | None = None
        # the record first, naming the new token: the journal of an earlier run is read no more
        write_marker(out, setup, outputs, device, sources, journal=self.token)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # an earlier run's (or a link of that name: never written through)
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
                              | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as e:
            raise UserError(f"{self.path}: cannot write fuse-dir's record: {e.strerror or e}") from e
        self._append({"journal": self.token})

    def _append(self, entry: Mapping[str, Any]) -> None:
        data = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
        end = None
        try:
            end = os.lseek(self.fd, 0, os.SEEK_END)
            _append_line(self.fd, data)
        except OSError as e:
            if end is not None:
                with contextlib.suppress(OSError):
                    os.ftruncate(self.fd, end)
            raise UserError(f"{self.path}: cannot write fuse-dir's record: {e.strerror or e}") from e

    def fusing(self, name: str, sources: Mapping[str, Any]) -> None:
        """Before output ``name`` is written: it is fused from ``sources`` and no longer written."""
        self._append({"op": "fusing", "name": name, "sources": sources})

    def fused(self, name: str) -> None:
        """Once output ``name`` is written."""
        self._append({"op": "fused", "name": name})

    def close(self) -> None:
        """Close the journal and write the record whole (:func:`compact_record`)."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
        compact_record(self.out)


def compact_record(out: Path) -> bool:
    """Write ``out``'s record (:data:`OUTPUT_MARKER`) whole with the lines of its
    :data:`JOURNAL_FILE` (:func:`read_marker`), and remove the journal: at the end of a
    fuse-dir run, and for the journal a killed run left. A failure (a full disk) leaves both
    as they are: they still say what the folder holds.

    Parameters
    ----------
    out : Path
        fuse-dir's output folder.

    Returns
    -------
    bool
        Whether a journal was folded into the record.
    """
    if stop_requested() is not None:  # a signal stops the run: the rename would raise it again; the next run does it
        return False
    try:
        doc = read_marker(out)
    except UserError:
        return False
    if doc is None or not isinstance(doc.get("journal"), str):
        return False
    setup = {k: v for k, v in doc.items() if k not in _RECORD_FIELDS}
    try:
        write_marker(out, setup, doc["outputs"], str(doc.get("device", "")), doc["sources"])
    except UserError:
        return False
    with contextlib.suppress(OSError):
        os.unlink(out / JOURNAL_FILE)
    return True


def _write_record(out: Path, write: Callable[[], None]) -> None:
    """``write`` (the record) before an output is written; a full disk is an ``OSError`` (the
    batch stops as at an output's), other failures a :class:`UserError`."""
    try:
        write()
    except UserError as e:
        cause = e.__cause__
        if isinstance(cause, OSError) and cause.errno in _DISK_FULL:
            raise OSError(cause.errno, cause.strerror, cause.filename or str(out / OUTPUT_MARKER)) from e
        raise


def _recorded_sources(doc: Mapping[str, Any] | None) -> dict[str, Any]:
    """The record's ``sources`` (per output, :func:`shots_record`); empty when it has none."""
    got = doc.get("sources") if doc is not None else None
    return {str(k): v for k, v in got.items() if isinstance(v, dict)} if isinstance(got, dict) else {}


def shots_record(src: Path, shots: Sequence[Path]) -> dict[str, Any]:
    """What :data:`OUTPUT_MARKER` records of the shots an output is fused from: the input
    folder and each shot's path (both resolved), size and modification time (ns)."""
    def one(p: Path) -> list[Any]:
        try:
            q = p.resolve()
            st = q.stat()
            return [str(q), st.st_size, st.st_mtime_ns]
        except (OSError, RuntimeError):
            return [str(p), -1, -1]

    try:
        where = str(src.resolve())
    except (OSError, RuntimeError):
        where = str(src)
    return {"in": where, "shots": [one(p) for p in shots]}


def same_folder(recorded: Any, here: str) -> bool:
    """Whether the input folder ``recorded`` (as :func:`shots_record` wrote it) is ``here``: the
    same string, or, where both exist, the same folder (:func:`os.path.samefile`: another
    spelling of it where names ignore case, macOS and Windows, ``~/photos/shoot`` after
    ``~/Photos/Shoot``)."""
    if not isinstance(recorded, str):
        return False
    if recorded == here:
        return True
    try:
        return os.path.samefile(recorded, here)
    except (OSError, ValueError):
        return False


def sources_changed(old: Any, new: Mapping[str, Any]) -> str | None:
    """Why an output recorded as fused from ``old`` (:func:`shots_record`) is not one of the
    shots ``new``: "p1-A.png changed since", "another input folder", ...; None when they match."""
    if not isinstance(old, dict) or not isinstance(old.get("shots"), list):
        return "the record does not say which shots it was fused from"
    if not same_folder(old.get("in"), new["in"]):
        return f"it was fused from another input folder ({old.get('in')})"
    then, now_in = str(old["in"]), new["in"]

    def spelt(path: str) -> str:  # a shot in IN spelt as this run spells IN (same_folder)
        rest = path[len(then):]
        return now_in + rest if then != now_in and path.startswith(then) and rest[:1] in ("/", os.sep) else path

    shots = [[spelt(str(s[0])), *s[1:]] for s in old["shots"] if isinstance(s, list) and s]
    was = {str(s[0]): list(s[1:]) for s in shots}
    now = {str(s[0]): list(s[1:]) for s in new["shots"]}
    changed = [Path(k).name for k in now if k in was and was[k] != now[k]]
    added = [Path(k).name for k in now if k not in was]
    gone = [Path(k).name for k in was if k not in now]
    parts = ([f"{', '.join(changed)} changed since it was fused"] if changed else []) + \
            ([f"{', '.join(added)} not among the shots it was fused from"] if added else []) + \
            ([f"{', '.join(gone)} no longer among its shots"] if gone else [])
    if not parts and [str(s[0]) for s in shots] != list(now):
        parts = ["its shots are in another order"]
    return "; ".join(parts) or None


def _legacy_names(doc: Mapping[str, Any] | None) -> set[str]:
    """The outputs an earlier version's record (``doc``: :func:`read_marker`) lists without
    recording what they were fused from (a record with ``outputs`` and no ``sources``): they are
    vouched for as that version did. An empty record (versions before the JSON record) lists
    none: it does not say which files are fuse-dir's, nor from which input folder."""
    if doc is not None and "sources" not in doc and isinstance(doc.get("outputs"), list):
        return set(map(str, doc["outputs"]))
    return set()


def _legacy_sources(src: Path, doc: Mapping[str, Any] | None, targets: Sequence[Path]) -> dict[str, Any]:
    """The ``sources`` entries that keep the outputs an earlier version's record lists
    (:func:`_legacy_names`: those of ``targets`` that exist) covered once the record is
    rewritten: fused from ``src``, ``"legacy": true`` and no shots, until fused again."""
    names = _legacy_names(doc)
    if not names:
        return {}
    here = shots_record(src, ())["in"]
    return {t.name: {"in": here, "legacy": True} for t in targets
            if t.name in names and os.path.lexists(t) and not (t.is_dir() and not t.is_symlink())}


def check_replaced(src: Path, out: Path, targets: Sequence[Path]) -> None:
    """Refuse (a :class:`UserError`, before any work) to replace an existing file among
    ``targets`` (this run's outputs in ``out``) that :data:`OUTPUT_MARKER` does not record as
    fused from ``src``: a file of the user's named like an output, or an earlier batch of
    another input folder (``fuse-dir day2 OUT`` into the outputs of ``day1``), were overwritten
    silently. A record of a version before the input folder was recorded vouches for the
    outputs it lists (:func:`_legacy_names`); an empty one (older still) for none. A
    folder in the way of an output is left to the write (that stack is skipped, "cannot write")."""
    if not out.is_dir():
        return
    doc = read_marker(out)
    legacy = _legacy_names(doc)
    sources = _recorded_sources(doc)
    here = shots_record(src, ())["in"]
    foreign: list[str] = []
    for t in targets:
        if not os.path.lexists(t) or (t.is_dir() and not t.is_symlink()):
            continue
        rec = sources.get(t.name)
        if (isinstance(rec, dict) and same_folder(rec.get("in"), here)) or t.name in legacy:
            continue
        foreign.append(t.name)
    if foreign:
        shown = ", ".join(foreign[:NAMED]) + (f" and {len(foreign) - NAMED} more" if len(foreign) > NAMED else "")
        raise UserError(f"{out}: holds {shown}, named like outputs of this run, that fuse-dir's record "
                        f"({OUTPUT_MARKER}) does not show it fused from {src} (files of yours, or outputs of "
                        "another input folder); fuse-dir replaces only its own outputs of the same input folder: "
                        "move them away, or give another output folder")


#: Suffixes that name one image format (an output written through a link keeps its format).
_SAME_FORMAT = {".jpeg": ".jpg", ".tiff": ".tif"}


def link_problem(target: Path, src: Path, out: Path, inputs: Iterable[Path] = ()) -> str | None:
    """Why the output ``target``, a symbolic link, must not be written through (the write
    replaces the file it points to: :func:`bafusion.atomic.atomic_file`): it points to a file of
    the input folder ``src`` (outside ``out``) or to one of ``inputs`` (the resolved shots), or
    to a file of another format than its suffix says (``keepme.jpg`` would get PNG bytes).
    None for a plain file or a link that is fine."""
    if not target.is_symlink():
        return None
    try:
        real = target.resolve()
        home, dest = src.resolve(), out.resolve()
    except (OSError, RuntimeError) as e:
        return f"{target}: a symbolic link that cannot be followed ({e}): not written through"

    def under(p: Path, folder: Path) -> bool:
        return p == folder or folder in p.parents

    if real in set(inputs) or (under(real, home) and not under(real, dest)):
        return (f"{target}: a symbolic link to {real}, a file of the input folder: fuse-dir never overwrites an "
                "input; remove the link")
    fmt = [_SAME_FORMAT.get(x.lower(), x.lower()) for x in (real.suffix, target.suffix)]
    if fmt[0] != fmt[1]:
        return (f"{target}: a symbolic link to {real}, whose suffix is not {target.suffix}: the output would be "
                "written into it in another format; remove the link")
    return None


#: In fuse-dir's output folder while a run writes there: held (``flock``) by that run, holding its
#: process id (:func:`output_lock`).
LOCK_FILE = ".bafusion-fuse-dir.lock"


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on the output folder ``out`` (its :data:`LOCK_FILE`) for one
    ``fuse-dir`` run, created when missing.

    Two runs into one folder (two terminals) each rewrote :data:`OUTPUT_MARKER` from their own
    list, so the last one's record forgot the other's outputs (and ``--skip-existing`` then fused
    them again, or a run of another setup replaced the record under the other). The lock is
    taken without waiting; the OS releases it when the process ends, killed too. The lock file
    holds the holder's process id, named by the refusal, and is removed on release. On Windows
    the lock is ``msvcrt``'s; where the system or the filesystem has no locks (``ENOLCK``: NFS
    without lockd, some FUSE mounts), no lock is taken, said once on stderr (:func:`bafusion.atomic.folder_lock`).

    Raises
    ------
    UserError
        ``out`` cannot be created, or another process holds the lock.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{out}: cannot create the output folder: {e.strerror or e}") from e

    def busy(pid: int | None) -> UserError:
        who = f"process {pid}" if pid is not None else "another process"
        return UserError(f"{out}: another bafusion fuse-dir ({who}) is writing into this output folder; "
                         "wait for it to end, or give another output folder")

    with folder_lock(out, LOCK_FILE, busy=busy, what="fuse-dir's lock"):
        yield


def _inside(src: Path, out: Path) -> bool:
    try:
        return out.resolve().parent == src.resolve()
    except (OSError, RuntimeError):
        return False


def check_output_folder(src: Path, out: Path, groups: Mapping[str, Sequence[Path]]) -> None:
    """Refuse (a :class:`UserError`, before any work) an output folder that is an existing
    sub-folder of ``src`` holding images other than outputs of ``groups`` (``<name>.<ext>``,
    any image suffix: an earlier run's): by the naming rule it would be a stack, but as the
    output folder it is no stack (:func:`find_groups` leaves it out), so its shots would be
    dropped silently and one named like an output overwritten. An output folder inside ``src``
    that is new, empty, holds only outputs, or holds :data:`OUTPUT_MARKER` (fuse-dir wrote
    there before: outputs of stacks since moved away stay) is fine (``fuse-dir shots
    shots/fused``, run again with other shots)."""
    if not (out.is_dir() and _inside(src, out)) or (out / OUTPUT_MARKER).is_file():
        return
    suffixes = read_suffixes()
    foreign = sorted(q.name for q in out.iterdir()
                     if not q.name.startswith(".") and q.suffix.lower() in suffixes and q.is_file()
                     and q.stem not in groups)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise UserError(f"{out}: the output folder lies in {src} and holds images that are no fuse-dir outputs "
                        f"({shown}): stack {out.name!r} would not be fused and its files could be overwritten; "
                        "choose another output folder")


def check_registered_folder(src: Path, out: Path, groups: Mapping[str, Sequence[Path]], folder: Path) -> None:
    """Refuse (a :class:`UserError`, before any work) a ``fuse-dir --save-registered`` folder
    whose files would be a stack's shot (however spelled), that lies in ``src`` outside ``out``
    (the next run would take its PNGs for shots outside the naming rule), or where a folder is
    in the way of one of its files (:func:`registered_paths`).

    Parameters
    ----------
    src, out : Path
        ``fuse-dir``'s input and output folders.
    groups : mapping
        The stacks (:func:`find_groups`).
    folder : Path
        The ``--save-registered`` folder.
    """
    from bafusion.preflight import check_not_input

    try:
        where, here, there = folder.resolve(), src.resolve(), out.resolve()
    except (OSError, RuntimeError):
        where = here = there = None
    # IN and its sub-folders are read for stacks (find_groups), but for OUT; a folder deeper in IN
    # is not read, but the sub-folder of IN it is made in is (a stack of no shots: skipped, exit 3)
    if (where is not None and where != there and there not in where.parents
            and (here == where or here in where.parents)):
        raise UserError(f"{folder}: the --save-registered folder is {src} or one of its sub-folders, which the next "
                        "run reads for stacks: its PNGs would be taken for shots; choose a folder outside it (the "
                        "output folder may be it)")
    shots = [q for qs in groups.values() for q in qs]
    for name, qs in groups.items():
        for p in registered_paths(folder, name, len(qs)):
            check_not_input(p, shots, "registered source")
            if p.is_dir():
                raise UserError(f"{p}: a folder is in the way of --save-registered's file")


#: Write errors after which every later output fails too: :func:`fuse_dir` stops the batch.
_DISK_FULL = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


def _kept(target: Path, src: Path, shots: Sequence[Path], out: Path, inputs: Iterable[Path], written: set[str],
          sources: Mapping[str, Any], skip_existing: bool, registered: Sequence[Path] = ()) -> bool:
    """Whether ``fuse-dir --skip-existing`` keeps ``target`` as it is (the test of its loop,
    made before it to count the bar's outputs already there): listed as written with this
    setup and fused from these shots, unchanged since, and its ``registered`` files
    (``--save-registered``) there."""
    return (skip_existing and target.is_file() and target.name in written
            and link_problem(target, src, out, inputs) is None
            and sources_changed(sources.get(target.name), shots_record(src, shots)) is None
            and all(p.is_file() for p in registered))


def out_of_memory_reason(e: BaseException, shots: Sequence[Path], align: bool = False, params=None) -> str:
    """Why a stack was skipped for a ``MemoryError`` ``e``: numpy's words (the array it failed
    to allocate) and what the stack needs (:func:`bafusion.fusion.memory.fuse_advice`; ``align``:
    aligned; ``params``: the run's, which tell whether it is decided at full size), and, where
    an address-space limit is set, what it counts (:func:`bafusion.fusion.memory.address_space_note`:
    without it, "needs about 892 MiB" beside a limit of 1300 MiB read as a contradiction)."""
    from bafusion.fusion.memory import address_space_note, fuse_advice

    what = " ".join(str(e).split())[:200] or type(e).__name__
    return "; ".join(x for x in (f"out of memory ({what}): {fuse_advice(shots, align, params=params)}", address_space_note()) if x)


def _free_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


@dataclass
class BatchReport:
    """What :func:`fuse_dir` did: fused names, names already done, (file, reason) skipped."""

    fused: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    #: Why the batch stopped before its end (a full disk), or ``None``.
    stopped: str | None = None
    #: (folder, line) of files not read that skipped no stack (:func:`find_groups`' ``notes``,
    #: :func:`unread_notes`), made once the stacks are fused.
    notes: list[tuple[str, str]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.stopped:
            return 2
        if not self.skipped:
            return 0
        return EXIT_SKIPPED if self.fused or self.existing else EXIT_NONE_FUSED


def fuse_dir(src: Path, out: Path, nets, params, *, ext: str = "png", align: str = "none", force: bool = False,
             skip_existing: bool = False, progress: bool = True, motion_hint: bool = False,
             quality: int | None = None, report: BatchReport | None = None,
             save_registered: Path | None = None) -> BatchReport:
    """Fuse every stack of ``src`` (:func:`find_groups`) into ``out/<name>.<ext>``; a stack that
    cannot be fused is skipped with its reason, the batch goes on. ``align``, ``force`` and
    ``motion_hint`` as for :func:`fuse_files`; ``quality``: the lossy quality of a jpg or webp
    output (:func:`bafusion.io.write_image`; None: JPEG 95, WebP lossless). ``save_registered``
    (``--save-registered``): also write each fused stack's shots as fused to
    ``save_registered/<name>-registered1.png``, ... (:func:`write_registered`), after its output;
    with ``skip_existing`` a stack whose files there are missing is fused again.

    ``out/`` :data:`OUTPUT_MARKER` records the setup (:func:`batch_setup`) and the outputs
    written with it: written whole at a run's start and end, and in between completed by a line
    per output started and written in :data:`JOURNAL_FILE`. ``skip_existing``: an output that exists and
    that the record lists is kept; one it does not list (left by a run of another setup that
    was stopped) is fused again; a record of another setup, or none beside existing outputs,
    is refused before any work (:func:`check_skip_existing`). Without it every output is
    replaced and the record starts anew (it keeps the outputs of the same setup). A second
    run into ``out`` while one runs there is refused (:func:`output_lock`).

    ``report``: an empty :class:`BatchReport` filled as the batch goes (and returned), so that a
    caller knows what a batch stopped by a signal (``KeyboardInterrupt``, ``SystemExit``) did
    before it stopped: ``bafusion fuse-dir`` logs its counts to MLflow then too.

    Returns
    -------
    BatchReport
    """
    if not src.is_dir():
        raise UserError(f"{src}: not a folder")
    notes: list[tuple[str, list[Path], str | None]] = []
    groups, skipped = find_groups(src, exclude=out, notes=notes)
    skipped = skipped + _long_name_skips(groups, src, out, ext, save_registered)  # drops them from groups
    check_output_folder(src, out, groups)
    rep = report if report is not None else BatchReport()
    rep.skipped.extend(skipped)
    if not groups and skipped:  # every stack dropped before fusing (one shot, a name outside the rule): listed, status 4
        rep.notes = unread_notes(notes, rep)
        return rep
    check_some_stack(src, groups, skipped, notes)
    why = output_format_problem(f"x.{ext}", quality=quality)  # before the folder is made
    if why:
        raise UserError(f"--ext {ext}: {why}")
    setup = batch_setup(nets, params, ext=ext, align=align, quality=quality)
    if skip_existing:  # before the folder is made (refused: nothing left behind); again under the lock
        check_skip_existing(out, setup, [out / f"{name}.{ext}" for name in groups])
    check_replaced(src, out, [out / f"{name}.{ext}" for name in groups])  # again under the lock
    if save_registered is not None:
        check_registered_folder(src, out, groups, save_registered)
    created = not out.exists()
    try:
        # one run at a time per output folder: each keeps the record of what it wrote
        with output_lock(out):
            rep = _fuse_dir_locked(src, groups, out, nets, params, rep, setup, ext=ext, quality=quality,
                                   align=align, force=force, skip_existing=skip_existing, progress=progress,
                                   motion_hint=motion_hint, save_registered=save_registered)
        rep.notes = unread_notes(notes, rep)  # what became of a RAW + JPEG folder's stack, now known
        return rep
    except (UserError, OSError):
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only when empty: a run refused (or failed: a full disk) leaves no folder
        raise
    except BaseException:
        if stop_requested() is not None:  # a signal stopped the batch: its end, which lists them, never comes
            _say_skipped(rep, unread_notes(notes, rep))
        raise


def _long_name_skips(groups: dict[str, list[Path]], src: Path, out: Path, ext: str,
                     save_registered: Path | None) -> list[tuple[str, str]]:
    """Take out of ``groups`` the stacks whose output ``out/<name>.<ext>`` (or, with
    ``--save-registered``, a ``<name>-registeredN.png``) would be longer than a file name may be
    there (:func:`bafusion.preflight.check_name_length`, as fuse refuses its own), and return
    them as skipped with the reason: a sub-folder of 253 bytes or more stopped the whole batch
    ("File name too long") before any stack was fused, and a long name with --save-registered
    failed after its fusion. A stack is named by its folder, or its shots in ``src`` itself."""
    from bafusion.preflight import check_name_length

    skips: list[tuple[str, str]] = []
    for name in list(groups):
        shots = groups[name]
        files = [(out / f"{name}.{ext}", "output")]
        if save_registered is not None:
            files.append((save_registered / f"{name}-registered{len(shots)}.png", "registered source"))
        for target, what in files:
            try:
                check_name_length(target, what, "shorten the stack's name")
            except UserError as e:
                del groups[name]
                folder = Path(shots[0]).parent
                where = str(folder) if os.path.abspath(folder) != os.path.abspath(src) else ", ".join(map(str, shots))
                skips.append((where, str(e)))
                break
    return skips


def check_some_stack(src: Path, groups: Mapping[str, Sequence[Path]], skipped: Sequence[tuple[str, str]],
                     notes: Sequence[tuple[str, Sequence[Path], str | None]]) -> None:
    """Refuse an input folder that holds no stack to fuse and no image skipped (an empty folder,
    one of RAW files only): :func:`find_groups`' ``groups``, ``skipped`` and ``notes`` of ``src``.
    A folder whose images were all skipped (one shot alone, names outside the rule) is no error:
    :func:`fuse_dir` lists them (exit status 4). Reads nothing: ``bafusion fuse-dir`` calls it
    before importing torch, so the refusal comes at once.

    Parameters
    ----------
    src : Path
        The input folder.
    groups : mapping of str to sequence of Path
        Its stacks (:func:`find_groups`).
    skipped : sequence of (str, str)
        The images it skipped, with the reason.
    notes : sequence of (str, sequence of Path, str or None)
        The files it did not read (RAW, HEIC), named in the refusal.

    Raises
    ------
    bafusion.errors.UserError
        ``<src>: no pair or stack to fuse``, with the files not read or how to name the shots.
    """
    if groups or skipped:
        return
    unread = "; ".join(line for _, line in unread_notes(notes, BatchReport()))  # RAW or HEIC files directly in src
    raise UserError(f"{src}: no pair or stack to fuse" + (f": {unread}" if unread else
                    " (name shots <name>-A.<ext>, <name>-B.<ext>, or put each stack in its own sub-folder)"))


def header_skips(groups: Mapping[str, Sequence[Path]], *, align: str = "none",
                 kept: Callable[[str], bool] | None = None) -> list[tuple[str, str]] | None:
    """The stacks of ``groups`` that :func:`fuse_dir` would skip for what their shots' headers
    say (:func:`check_source_headers`: missing, unreadable, of a format not read here, sizes
    that cannot be fused), as ``(stack, reason)`` in the words :func:`fuse_dir` lists them; None
    as soon as one stack passes, or may be kept (``kept(name)`` true: ``--skip-existing`` with
    its output there), so that a batch with something to fuse costs one stack's headers.
    ``bafusion fuse-dir`` calls it before importing torch: a folder of which nothing can be
    fused is said without loading the nets (exit status :data:`EXIT_NONE_FUSED`, as before).

    Parameters
    ----------
    groups : mapping of str to sequence of Path
        The stacks (:func:`find_groups`).
    align : str
        The ``--align`` value (:func:`check_source_headers`).
    kept : callable, optional
        Whether a stack's output may be kept rather than fused (not read then).

    Returns
    -------
    list of (str, str) or None
        Every stack with its reason when each fails; None when one may be fused or kept.
    """
    out: list[tuple[str, str]] = []
    for name, shots in groups.items():
        if kept is not None and kept(name):
            return None
        try:
            check_source_headers(shots, align=align)
        except UserError as e:
            out.append((name, str(e)))
            continue
        return None
    return out


def _say_skipped(rep: BatchReport, notes: Sequence[tuple[str, str]]) -> None:
    """Say on stderr what ``fuse-dir`` lists at its end: the files not read and the stacks
    skipped so far with their reasons (a batch stopped by a signal: its log's lines said
    "skipped (why: at the end)")."""
    from tqdm import tqdm

    lines = [f"bafusion fuse-dir: {where}: {line}" for where, line in notes]
    lines += [f"bafusion fuse-dir: skipped {what}: {why}" for what, why in skip_lines(rep.skipped)]
    with contextlib.suppress(OSError, ValueError, AttributeError):
        for line in lines:
            tqdm.write(line, file=sys.stderr)  # below a bar drawn on a terminal


def _fuse_dir_locked(src: Path, groups: Mapping[str, Sequence[Path]], out: Path, nets, params, rep: BatchReport,
                     setup: Mapping[str, Any], *, ext: str, align: str, force: bool, skip_existing: bool,
                     progress: bool, motion_hint: bool, quality: int | None = None,
                     save_registered: Path | None = None) -> BatchReport:
    """:func:`fuse_dir` once ``out`` exists and its lock is held (:func:`output_lock`)."""
    if skip_existing:
        check_skip_existing(out, setup, [out / f"{name}.{ext}" for name in groups])
    check_replaced(src, out, [out / f"{name}.{ext}" for name in groups])
    old = read_marker(out)
    same = old is not None and not setup_differences(old, setup) and isinstance(old.get("outputs"), list)
    written = {str(n) for n in old["outputs"]} if same else set()  # outputs known to be of this setup
    # what each output in out was fused from, of any setup (check_replaced: what fuse-dir may replace)
    sources = {k: v for k, v in _recorded_sources(old).items() if os.path.lexists(out / k)}
    # an earlier version's record vouched for this IN's outputs: still so once rewritten, until re-fused
    sources.update(_legacy_sources(src, old, [out / f"{name}.{ext}" for name in groups]))
    inputs = set()  # the resolved shots of every stack: no output is written through a link to one
    for shots in groups.values():
        for q in shots:
            with contextlib.suppress(OSError, RuntimeError):
                inputs.add(q.resolve())
    device = str(getattr(nets, "device", ""))
    # the record first: a stopped run leaves outputs that it describes (inside IN it also marks
    # the folder as fuse-dir's for later runs: check_output_folder); then a line per change in its
    # journal, and the record whole again at the end (a killed run's journal: at the next start)
    journal = _Journal(out, setup, written, device, sources)
    try:
        return _fuse_groups(src, groups, out, nets, params, rep, journal, written, sources, inputs, ext=ext,
                            align=align, force=force, skip_existing=skip_existing, progress=progress,
                            motion_hint=motion_hint, quality=quality, save_registered=save_registered)
    finally:
        journal.close()


def _fuse_groups(src: Path, groups: Mapping[str, Sequence[Path]], out: Path, nets, params, rep: BatchReport,
                 journal: _Journal, written: set[str], sources: dict[str, Any], inputs: set[Path], *, ext: str,
                 align: str, force: bool, skip_existing: bool, progress: bool, motion_hint: bool,
                 quality: int | None, save_registered: Path | None = None) -> BatchReport:
    """:func:`_fuse_dir_locked`'s loop over the stacks, the record open as ``journal``."""
    from tqdm import tqdm

    from bafusion.fusion.memory import memory_problem, memory_warning
    from bafusion.io import write_image
    from bafusion.progress import bars_enabled, in_log

    said_once: set[str] = set()  # notes said once a run (metadata not kept)
    # --skip-existing: the outputs kept are counted from the start (``initial``), not as
    # iterations: a resumed batch's bar took the kept ones, done in a blink, for its rate (150 of
    # 200 kept: "151/200 [00:12<00:00, 151.57stack/s]" while 49 stacks were left), and tqdm's
    # dynamic miniters, fed by that burst, then redrew it only every ~16 stacks; one redraw per stack
    kept_before = {name for name, shots in groups.items()
                   if _kept(out / f"{name}.{ext}", src, shots, out, inputs, written, sources, skip_existing,
                            registered_paths(save_registered, name, len(shots)) if save_registered is not None else ())}
    bar = tqdm(total=len(groups), initial=len(kept_before), miniters=1, unit="stack", file=sys.stderr,
               disable=not bars_enabled(progress), desc="fuse-dir")
    # without a terminal (nohup, cron, a Snakemake log) no bar is drawn: one plain line per
    # stack instead, so that a long batch's log shows how far it got (none with --no-progress)
    plain = bool(progress) and bar.disable
    total = len(groups)

    def said(i: int, name: str, what: str) -> None:
        if plain:
            print(in_log(f"bafusion fuse-dir: {i}/{total} {name}: {what}"), file=sys.stderr, flush=True)

    def steps(name: str) -> Callable[[str], None] | None:
        # each step of a stack of three or more shots as it starts (a 10-shot stack: a minute and
        # more without a word): between the lines of the bar, or plain lines in a log
        if not progress:
            return None
        if plain:
            return lambda text: print(in_log(f"bafusion fuse-dir: {name}: {text} ..."), file=sys.stderr, flush=True)
        return lambda text: tqdm.write(f"bafusion fuse-dir: {name}: {text} ...", file=sys.stderr)

    def stages(name: str, shots: Sequence[Path]) -> Callable[[str], None] | None:
        # each step of a stack before and after its fusion (reading, checking, aligning and the
        # alignment's own steps, writing) as it starts, as ``fuse`` names them: between the lines
        # of the bar where it is drawn; a camera-size
        # pair spends minutes aligning and half a minute writing, a small stack about a second
        # or less on each step but aligning (measured: STEP_LINES_MIN_PIXELS): only its
        # alignment is named (4.7-9.7 s for a pair of 0.27-1 MP shots, measured there), in one line.
        # In a log (no bar) a camera-size stack's steps are plain lines after the time, as fuse
        # prints them there: its log said nothing for the minutes of reading and aligning (a 24 MP
        # pair with --align auto) before its fusion's step lines; a small stack keeps its one line
        if not progress:
            return None
        big = _stack_pixels(shots) >= STEP_LINES_MIN_PIXELS
        if plain:
            if not big:
                return None
            return lambda text: print(in_log(f"bafusion fuse-dir: {name}: {text} ..."), file=sys.stderr, flush=True)

        def line(text: str) -> None:
            tqdm.write(f"bafusion fuse-dir: {name}: {text} ...", file=sys.stderr)

        if big:
            return line
        return lambda text: line(text) if text.startswith("aligning the shots") else None

    def _skipped(t0: float, why: str) -> str:
        # a stack refused before any work said "skipped after 0.0 s": no time where nothing ran
        dt = time.perf_counter() - t0
        return f"skipped after {dt:.1f} s ({why})" if dt >= 0.05 else f"skipped ({why})"

    def advancing() -> Iterator[tuple[str, Sequence[Path]]]:
        try:
            for item in groups.items():
                yield item  # the bar advances once the stack is done (fused, skipped, or kept unforeseen)
                if item[0] not in kept_before:
                    bar.update(1)
        finally:
            bar.close()

    for i, (name, shots) in enumerate(advancing(), 1):
        target = out / f"{name}.{ext}"
        t0 = time.perf_counter()
        why = link_problem(target, src, out, inputs)
        if why:
            rep.skipped.append((name, why))
            said(i, name, _skipped(t0, "why: at the end"))
            continue
        record = shots_record(src, shots)  # before the fusion: a shot changed meanwhile reads as changed later
        registered = registered_paths(save_registered, name, len(shots)) if save_registered is not None else []
        if skip_existing and target.is_file() and target.name in written:
            was = sources.get(target.name)
            # (an earlier version's record, which lists outputs without their shots, is of other
            # fusion code: refused by check_skip_existing, so none of its outputs is kept here)
            changed = sources_changed(was, record)
            missing = next((p for p in registered if not p.is_file()), None)
            if changed is None and missing is None:
                rep.existing.append(name)
                said(i, name, "already there")
                continue
            tqdm.write(f"bafusion fuse-dir: {name}: fused again (--skip-existing keeps an output only when its shots "
                       f"are unchanged): {changed}" if changed is not None else
                       f"bafusion fuse-dir: {name}: fused again: its registered source {missing} "
                       "(--save-registered) is missing", file=sys.stderr)
        # over the cgroup's memory limit the kernel would end the whole batch without a word
        why = memory_problem(shots, align not in ("none", "auto"), params=params)
        if why:
            rep.skipped.append((name, why))
            said(i, name, _skipped(t0, "why: at the end"))
            continue
        # over the limit but within its swap, or more than the machine has available now: as fuse,
        # a warning for this stack (the stacks differ in size, and what is available changes)
        low = memory_warning(shots, align not in ("none", "auto"), params=params)
        if low:
            tqdm.write(f"bafusion fuse-dir: {name}: warning: {low}", file=sys.stderr)
        out_of_memory = False
        stage = stages(name, shots)
        try:
            # without bars (--no-progress, alias --quiet) no stack's own bar either; the lines about
            # the stack's motion and alignment ("--align auto: b.jpg moves about ...") name it, as
            # its other lines do
            fused = fuse_files(shots, nets, params, output=target, align=align, force=force,
                               motion_hint=motion_hint, progress=None if progress else False,
                               prefix=f"bafusion fuse-dir: {name}", details=bool(progress), step=steps(name),
                               stage=stage, keep_sources=bool(registered))
            # the record first says that fuse-dir writes this output from these shots (a run stopped
            # while writing it leaves a file the next run may replace) and no longer lists it as written
            _write_record(out, lambda: journal.fusing(target.name, record))
            sources[target.name] = record
            written.discard(target.name)
            if stage is not None:
                stage(f"writing {target}")
            write_image(target, fused.image, exif=fused.exif, icc=fused.icc, bits=fused.bits,
                        dpi=fused.dpi, png_colour=fused.png_colour, quality=quality, subsampling=fused.subsampling)
            if registered:  # after the output, as fuse writes them; what bafusion metrics scores it against
                if stage is not None:
                    stage(f"writing the registered sources to {save_registered}")
                try:
                    write_registered(fused.sources, registered, full=fused.image.dtype.itemsize > 1)
                except OSError as e:
                    if e.errno in _DISK_FULL or e.errno is None:
                        raise
                    raise UserError(f"{e.filename}: cannot write the registered source: {os.strerror(e.errno)}; its output "
                                    f"{target} was written") from e
                finally:
                    fused.sources = None  # freed before the next stack
        except UserError as e:
            rep.skipped.append((name, str(e)))
            said(i, name, _skipped(t0, "why: at the end"))
            continue
        except OSError as e:
            if e.errno in _DISK_FULL:  # every stack after it would be fused and fail at its write too: stop
                rep.stopped = (f"{e.filename or target}: {os.strerror(e.errno)}: the batch stopped at stack {name!r}; "
                               f"free space on the disk of {out} and rerun with --skip-existing (the "
                               f"{len(written)} output(s) written are kept)")
                break
            # this output cannot be written (a folder in the way): the others may be
            rep.skipped.append((name, f"{target}: cannot write: {e.strerror or e}"))
            said(i, name, _skipped(t0, "why: at the end"))
            continue
        except Exception as e:  # noqa: BLE001 - re-raised unless out of memory
            if not is_out_of_memory(e):
                raise
            # this stack is too large for the memory left: the others may fit
            rep.skipped.append((name, out_of_memory_reason(e, shots, align != "none", params)))
            out_of_memory = True
        if out_of_memory:
            # here, past the except: its traceback held the failed stack's arrays until it ended
            _free_memory()
            said(i, name, _skipped(t0, "out of memory"))
            continue
        try:
            journal.fused(target.name)
        except UserError as e:
            cause = e.__cause__
            if not (isinstance(cause, OSError) and cause.errno in _DISK_FULL):
                raise
            # the record cannot list this output: it goes, so that the record (the one before)
            # still describes the folder, and the batch stops as at an output's full disk
            with contextlib.suppress(OSError):
                target.unlink()
            rep.stopped = (f"{out / OUTPUT_MARKER}: {os.strerror(cause.errno)}: the batch stopped at stack {name!r} "
                           f"(its output, not in fuse-dir's record, is removed); free space on the disk of {out} "
                           f"and rerun with --skip-existing (the {len(written)} output(s) written are kept)")
            break
        for note in fused.notes:
            # after the stack's name, as the lines of its fusion ("p8: p8-B.png: moves about 2.3 px"):
            # its exposure and colour notes were prefixed with the shot's path alone
            setting = note.startswith("fuse.")  # the joint rule's on a setting it does not use: every stack's
            if note not in said_once:  # a line without a file name (metadata not kept): once a run
                tqdm.write(f"bafusion fuse-dir: {'note' if setting else name}: {note}", file=sys.stderr)
            if setting or note.startswith("the sources' "):
                said_once.add(note)
        rep.fused.append(name)
        written.add(target.name)
        said(i, name, f"fused in {time.perf_counter() - t0:.1f} s")
    return rep


def align_for_fuse(images: list[np.ndarray], names: list[str], model: str, force: bool, *,
                   alignment: bool = False, prefix: str = "bafusion", details: bool = True,
                   step: Callable[[str], None] | None = None):
    """Register the shots to the first (:mod:`bafusion.fusion.align`), print one line per shot to
    stderr (after ``prefix``; only with ``details``), refuse unless ``force`` an estimate that no hand-held focus pair shows
    (:func:`bafusion.fusion.align.implausible_motion`) and shots that are not one scene; returns
    the cropped shots (``alignment``: the :class:`bafusion.fusion.align.Alignment`, whose
    ``apply`` registers other copies of the shots alike). Shots too flat to register are left as
    they are (a line says so). ``step`` is told each step of the alignment as it starts
    (:func:`bafusion.fusion.align.align_images`)."""
    from bafusion.fusion.align import align_images, check_alignment
    from bafusion.fusion.scene import check_turned

    al = align_images(images, model, step=step)
    if not force:
        failing = al.not_one_scene()
        # a sideways shot: turning it helps, not the alignment (nor aligning again: only --force)
        check_turned(images, names, failing, remedy="fuse with --force; force=True in Python")
        check_alignment(al, names)
    from tqdm import tqdm

    for line in al.describe(names) if details else ():  # what it did: after the time in a log
        tqdm.write(stamped(f"{prefix}: {line}", sys.stderr), file=sys.stderr)  # between a fuse-dir bar's lines
    for name, why in zip(names, al.replaced) if not details else ():  # the align lines above say it
        if why:
            tqdm.write(f"{prefix}: {name}: {why}", file=sys.stderr)
    from bafusion.fusion.align import translation_shortfalls

    for line in translation_shortfalls(al, images, names):  # a turn or scale a translation leaves
        tqdm.write(f"{prefix}: {line}", file=sys.stderr)
    return al if alignment else al.images
