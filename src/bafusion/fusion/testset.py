"""Fusing a test set of synthetic pairs with ground truth (``bafusion fuse-set``): the
decision-map accuracy of every pair and the maps.

The module imports no torch (the fusion's modules are imported where a pair is fused):
``bafusion fuse-set`` reads the index and checks the pairs' files, decoded
(:func:`check_pair_files`), before that import's seconds, so a refusal comes without them.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from bafusion.atomic import atomic_dir, write_text
from bafusion.errors import InputFileError, UserError, json_loads
from bafusion.fusion.maps import DIFF_CMAP, check_alpha, check_colour_map
from bafusion.fusion.params import FusionParams
from bafusion.io import read_image, read_source_set, to_gray_u8, write_image

if TYPE_CHECKING:
    from bafusion.fusion.models import FusionNets


#: The report in the output folder (it marks an earlier fuse-set output, which may be replaced).
ACCURACY = "accuracy.json"


def read_pair_index(folder: str | os.PathLike[str], allow_empty: bool = False) -> list[str]:
    """Pair names from ``<folder>/index.json``: a list of names, or {"pairs": [names or
    {"name": ...}]}.

    Parameters
    ----------
    folder : str or path
        The pair folder (``data/testset``: ``<name>-A.png``, ``<name>-B.png`` and ``index.json``).
    allow_empty : bool
        Accept an index that lists no pairs (else refused).

    Returns
    -------
    list of str
        The pair names, in the index's order (plain file-name stems, each once).

    Raises
    ------
    bafusion.errors.InputFileError
        No ``index.json``, unreadable JSON, not a list of names, a name that is not a plain name
        (a folder, ``..``), a name listed twice, or (without ``allow_empty``) no names.
    """
    idx = Path(folder) / "index.json"
    if not idx.is_file():
        raise InputFileError(idx, "pair index not found (run the testset rule first)")
    try:
        doc = json_loads(idx.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as e:
        raise InputFileError(idx, f"unreadable JSON: {e}") from e
    items = doc.get("pairs", doc.get("names")) if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise InputFileError(idx, "expected a list of pair names or {'pairs': [...]}")
    names: list[str] = []
    for i, it in enumerate(items):
        name = it.get("name") if isinstance(it, dict) else it
        if isinstance(name, int) and not isinstance(name, bool):
            name = str(name)
        if not isinstance(name, str) or not name:
            raise InputFileError(idx, f"pair {i + 1}: expected a name (a string, or {{'name': ...}}), got {it!r}")
        # a name is a file-name stem in this folder: no path (../x would write outside the output folder)
        if name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
            raise InputFileError(idx, f"pair {i + 1}: {name!r} is not a plain name (no folders)")
        if name in names:
            raise InputFileError(idx, f"pair {name!r} is listed twice")
        names.append(name)
    if not names and not allow_empty:
        raise InputFileError(idx, "lists no pairs")
    return names


def check_report_path(out: str | os.PathLike[str], report_path: str | os.PathLike[str] | None,
                      names: list[str], *, what: str = "report", folder: str = "its output folder") -> None:
    """Refuse a report path (``--report``) that is, or lies in, a file :func:`fuse_set` writes
    into ``out`` for the pairs ``names``: ``accuracy.json``, ``<name>.png``, ``maps/`` or a map
    in it (``maps/<name>-<key>.png``). The report is written after ``out`` is replaced, so it
    would overwrite that file (or fail on it, after the work); another file inside ``out`` is
    allowed (it is the command's own on a rerun). ``what`` and ``folder`` name the two in the
    message (the command line: ``--report file``, ``--out``).

    Raises
    ------
    UserError
        One line naming the report path and the file it would overwrite.
    """
    from bafusion.fusion.maps import MAP_KEYS

    if not report_path:
        return
    try:
        parts = Path(report_path).resolve().relative_to(Path(out).resolve()).parts
    except (ValueError, OSError, RuntimeError):  # outside ``out``
        return
    own = {ACCURACY: "accuracy report", **{f"{n}.png": "fused image" for n in names}, "maps": "folder of maps"}
    if len(parts) > 1 and parts[0] == "maps":
        if parts[1] not in {f"{n}-{k}.png" for n in names for k in MAP_KEYS}:
            return
        hit, kind, exact = Path(out, "maps", parts[1]), "map", len(parts) == 2
    elif parts and parts[0] in own:
        hit, kind, exact = Path(out, parts[0]), own[parts[0]], len(parts) == 1
    else:
        return
    raise UserError(f"{report_path}: the {what} {'would overwrite' if exact else 'would lie in'} {hit}, the {kind} "
                    f"fuse-set writes into {folder}; give the {what} another path")


def _boolean_map(m: np.ndarray, name: str) -> np.ndarray:
    """``m`` as a bool array: bool as it is, 0/1 numbers as False/True; other values refused
    (compared with a bool map, 255 equals neither True nor False: a wrong share, silently)."""
    m = np.asarray(m)
    if m.dtype == bool:
        return m
    if m.dtype.kind not in "iuf" or not np.isin(m, (0, 1)).all():
        values = f"{m.min()}..{m.max()}" if m.size and m.dtype.kind in "iuf" else "values"
        raise UserError(f"decision_accuracy: {name} must be a map of True/False (or 0/1), got {m.dtype} {values}"
                        + (f"; a map read from an image holds 0 and 255: pass {name} > 127" if m.dtype.kind in "iuf" else ""))
    return m.astype(bool)


def decision_accuracy(dm: np.ndarray, truth: np.ndarray, band: int = 0) -> float:
    """Share of pixels where ``dm`` equals ``truth`` (bool); with ``band`` > 0 only pixels
    within ``band`` pixels (city-block distance) of the true boundary count.

    Parameters
    ----------
    dm : ndarray of bool, (H, W)
        Decision map (True: take A); 0/1 numbers are taken as False/True.
    truth : ndarray of bool, (H, W)
        The true map (True: A is in focus); 0/1 numbers alike.
    band : int
        Half-width (pixels) of the band around the true boundary; 0: the whole image.

    Returns
    -------
    float
        The share in [0, 1]; NaN when ``band`` > 0 and ``truth`` has no boundary (one class).

    Raises
    ------
    bafusion.errors.UserError
        Maps of different sizes, or one holding other values than True/False or 0/1 (a map
        read from an image file holds 0 and 255: pass ``map > 127``).
    """
    dm, truth = _boolean_map(dm, "dm"), _boolean_map(truth, "truth")
    if dm.shape != truth.shape:
        raise UserError(f"decision_accuracy: dm is {dm.shape} but truth is {truth.shape}: the maps must have one size")
    if band > 0:
        grow = ndimage.binary_dilation(truth, iterations=band) & ~ndimage.binary_erosion(
            truth, iterations=band, border_value=1
        )
        if not grow.any():
            return float("nan")
        return float((dm[grow] == truth[grow]).mean())
    return float((dm == truth).mean())


def _fuse_pair(*args: Any, **kwargs: Any) -> Any:
    """:func:`bafusion.fusion.rule._fuse_pair` (imported here on the first pair: it imports torch)."""
    from bafusion.fusion.rule import _fuse_pair as fuse_pair

    return fuse_pair(*args, **kwargs)


def _truth_size_message(truth_hw: tuple[int, ...], a_hw: tuple[int, ...], pa: Path) -> str:
    return (f"truth map size {truth_hw[1]}x{truth_hw[0]} (WxH) differs from {a_hw[1]}x{a_hw[0]} of {pa}: a "
            "decision map has the size of its pair")


def check_pair_files(pairs: str | os.PathLike[str], names: list[str], *, decode: bool = True) -> None:
    """Refuse, before any work, a test set whose listed pairs lack a shot (all of them named),
    or a pair whose shot, true decision map or all-in-focus truth (read where there is a decision
    map) is no readable image or is not the size of its A. :func:`fuse_set` checks so first:
    a missing or damaged file found only on reaching its pair lost the pairs fused before it
    (the run replaces ``out`` only at its end).

    Parameters
    ----------
    pairs : str or path
        The pair folder.
    names : list of str
        Its pairs (:func:`read_pair_index`).
    decode : bool
        Decode each file too (:func:`bafusion.io.image_info`: a truncated PNG is caught), as
        :func:`fuse_set` does; False: from the headers alone (milliseconds, and no torch:
        ``bafusion fuse-set`` checks so before importing it).

    Raises
    ------
    bafusion.errors.InputFileError
        Naming ``index.json`` and the missing shots, or the file that is unreadable or of
        another size than its pair's A.
    """
    pairs = Path(pairs)
    missing = [str(p) for name in names for p in (pairs / f"{name}-A.png", pairs / f"{name}-B.png") if not p.is_file()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise InputFileError(pairs / "index.json", f"listed pairs lack their shots: {', '.join(missing[:3])}{more}")
    for name in names:
        _check_pair_files(pairs, name, decode=decode)


def check_map_names(pairs: str | os.PathLike[str], out: str | os.PathLike[str], names: list[str]) -> None:
    """Refuse, before any work, a pair whose maps' names (``maps/<pair>-score-initial.png``, the
    longest) are longer than a file name may be in ``out``: they failed with "File name too long"
    after the pair's fusion. Reads no image: ``bafusion fuse-set`` checks so before importing
    torch, :func:`fuse_set` before decoding the pairs.

    Parameters
    ----------
    pairs : str or path
        The pair folder (named in the refusal, with its ``index.json``).
    out : str or path
        The output folder, where ``maps/`` is written.
    names : list of str
        Its pairs (:func:`read_pair_index`).

    Raises
    ------
    bafusion.errors.UserError
        Naming the longest map file, its length and the pair to rename.
    """
    if not names:
        return
    from bafusion.fusion.maps import MAP_KEYS
    from bafusion.preflight import check_name_length

    pair = max(names, key=lambda n: len(os.fsencode(n)))
    key = max(MAP_KEYS, key=len)
    check_name_length(Path(out) / "maps" / f"{pair}-{key}.png", "map file",
                      f"the maps are named after the pair, {pair!r} of {Path(pairs) / 'index.json'}: give it a shorter "
                      "name (its files and its entry in index.json)")


def _check_pair_files(pairs: Path, name: str, decode: bool = True) -> None:
    """Refuse a pair whose shot, true decision map or all-in-focus truth (read where there is a
    decision map) is no readable image or is not the size of its A; each file decoded with
    ``decode`` (:func:`check_pair_files`)."""
    from bafusion.io import image_info

    pa, pb, pt, paif = (pairs / f"{name}-{k}.png" for k in ("A", "B", "dm", "truth"))
    ia = image_info(pa, decode=decode)
    sa = (ia.height, ia.width)
    ib = image_info(pb, decode=decode)
    if (ib.height, ib.width) != sa:
        raise InputFileError(pb, f"size {ib.width}x{ib.height} (WxH) differs from {sa[1]}x{sa[0]} of {pa}: the sources "
                                 "must have the same size")
    if not pt.is_file():
        return
    it = image_info(pt, decode=decode)
    if (it.height, it.width) != sa:
        raise InputFileError(pt, _truth_size_message((it.height, it.width), sa, pa))
    if paif.is_file():
        ii = image_info(paif, decode=decode)
        if (ii.height, ii.width) != sa:
            raise InputFileError(paif, f"all-in-focus truth size {ii.width}x{ii.height} (WxH) differs from "
                                       f"{sa[1]}x{sa[0]} of {pa}")


def _pair_steps(name: str, shots: list[Path], step: Callable[[str], None] | None) -> Callable[[str], None]:
    """``step`` for pair ``name``'s lines (``p1: reading``), where its shots hold
    :data:`~bafusion.fusion.batch.STEP_LINES_MIN_PIXELS` or more in all; else nothing said (a
    small pair's steps are short, as ``fuse`` and ``fuse-dir`` judge them)."""
    from bafusion.fusion.batch import STEP_LINES_MIN_PIXELS, _stack_pixels

    if step is None or _stack_pixels(shots) < STEP_LINES_MIN_PIXELS:
        return lambda text: None
    return lambda text: step(f"{name}: {text}")


def fuse_set(
    pairs: str | os.PathLike[str],
    out: str | os.PathLike[str],
    nets: FusionNets,
    params: FusionParams | Mapping[str, Any] | None = None,
    *,
    alpha: float = 10.0,
    diff_cmap: str = DIFF_CMAP,
    report_path: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    say: Callable[[str], None] | None = None,
    show: Callable[[str], None] | None = None,
    timed: Callable[[str], None] | None = None,
    step: Callable[[str], None] | None = None,
    files_checked: bool = False,
) -> dict:
    """Fuse every pair of a test set and score its decision map against the truth.

    Parameters
    ----------
    pairs : path
        Folder with ``index.json`` (:func:`read_pair_index`) and ``<name>-A.png``,
        ``<name>-B.png`` and, where there is a truth, ``<name>-dm.png`` (255 = A focused).
    out : path
        Output folder: ``<name>.png`` (fused, with A's EXIF, ICC profile, resolution and PNG colour
        chunks as ``fuse`` writes them, and its notes: see ``say``), ``maps/`` (:func:`bafusion.fusion.maps.save_maps`)
        and ``accuracy.json`` (the report). It is written under a temporary name and replaces
        ``out`` whole at the end; an existing ``out`` must be empty or an earlier output of
        ``fuse-set`` (hold ``accuracy.json``).
    nets : FusionNets
        The nets (:func:`bafusion.load_model`).
    params : FusionParams or mapping, optional
        The fusion rule's parameters: a :class:`FusionParams`, or a mapping of its fields
        (``{"l": 4}``, a ``fuse`` section) checked like ``params.yaml``'s; None: the defaults.
    alpha : float
        Gain of the difference maps, more than 0 and at most the schema's maximum of
        ``fuse.alpha``; checked before any work (:func:`bafusion.fusion.maps.check_alpha`).
    diff_cmap : str
        Matplotlib colour map of the pseudo-colour difference maps (``fuse.diff_cmap``: magma by
        default, jet in the paper preset); checked before any work.
    report_path : path, optional
        Also write the report's numbers here (a DVC metrics file); not one of the files
        written into ``out`` (:func:`check_report_path`).
    progress : bool, optional
        Progress bar of each fusion (see :func:`bafusion.fusion.fuse_images`).
    say : callable, optional
        Called with each line ``bafusion fuse-set`` prints on stderr (after its
        ``bafusion fuse-set:``): the notes of the fusions and of the written files, each pair's
        seconds, an index that lists no pairs, a warning before the work where the largest pair
        may swap or run out of memory (:func:`bafusion.fusion.memory.memory_warning`). None (the default, from Python): each note is
        issued as a :class:`bafusion.fusion.rule.FusionNoteWarning` (naming
        ``params={"match_output_exposure": True}`` where the command line names its option),
        the rest is not said.
    show : callable, optional
        Called with each pair's line of numbers as it is scored (``p1: dm_accuracy=0.9876,
        ...``), which ``bafusion fuse-set`` prints on stdout; None: not shown (the report
        returned holds them).
    timed : callable, optional
        Called with each pair's seconds as it is fused (``p1: 1.234 s``), which ``bafusion
        fuse-set`` prints on stderr as a line of its log (with the time where that is a log);
        None (the default): given to ``say``.
    step : callable, optional
        Called with a line naming each step of a pair whose shots hold
        :data:`~bafusion.fusion.batch.STEP_LINES_MIN_PIXELS` or more in all as it starts
        (``p1: reading ...``, the fusion's steps as ``fuse`` names them, ``p1: matching the
        exposures``, ..., and ``p1: writing its maps and p1.png``), which ``bafusion fuse-set``
        prints on stderr (with the time where that is a log): a 12 MP pair's log said nothing for
        the minute before its fusing bar's first line, nor for the 40 s of its maps. None (the
        default): not said.
    files_checked : bool
        The pairs' files were checked decoded already (:func:`check_pair_files`, as ``bafusion
        fuse-set`` does before importing torch): checked here from their headers only (there,
        images, of their pair's size), not decoded a second time. False (the default): every
        file is decoded before the first pair is fused.

    Returns
    -------
    dict
        The report: parameters, device, models, per-pair accuracies and their mean.
    """
    from bafusion.fusion.batch import fused_output
    from bafusion.fusion.maps import save_maps
    from bafusion.fusion.rule import OUTPUT_EXPOSURE_OPTION, OUTPUT_EXPOSURE_PARAM, FusionNoteWarning, checked_params
    from bafusion.preflight import check_output_dir

    pairs, out = Path(pairs), Path(out)
    params = checked_params(params)
    check_alpha(alpha, "alpha")  # before any work, as --alpha: 0 wrote all-black maps, 1e308 overflowed
    check_colour_map(diff_cmap, "diff_cmap")  # before any work: refused after the first pair, the set's time lost
    # ``out`` is replaced whole: refuse before any work when it holds the test set, the nets or
    # files that are no earlier output of fuse-set (the report, written after it is replaced, is)
    check_output_dir(out, [pairs, *(s for s in nets.sources if s)], replaced=True, marker=ACCURACY,
                     own=[report_path] if report_path else [])
    # An empty test set (no held-out images, as in the paper preset) fuses nothing.
    names = read_pair_index(pairs, allow_empty=True)
    check_report_path(out, report_path, names)  # written last, it would overwrite one of ``out``'s files
    if not names and say is not None:
        say(f"{pairs / 'index.json'} lists no pairs: nothing to fuse")
    # fuse-set fuses pairs, where the stack rule plays no part: kept out of the report.
    report: dict = {"params": {k: v for k, v in asdict(params).items() if k != "stack_rule"}, "device": str(nets.device), "models": list(nets.sources), "pairs": {}}
    # the maps' names before the pairs are decoded (milliseconds, not the set's decoding), then every
    # pair's shots, and that each decodes, of its pair's size (truth maps too): a missing or damaged
    # file or a mismatch found after an hour would lose it
    check_map_names(pairs, out, names)
    check_pair_files(pairs, names, decode=not files_checked)
    # and the memory limit of the process's cgroup (a container, a SLURM job): over it the kernel
    # ends the run without a word, at the first pair too large; every pair's maps are written
    # (maps/, after its fusion), whose estimate is the larger below 27 MP at the working resolution, below
    # 0.78 MP at full size (FULL_SIZE_MIB): 628 MiB at 0.27 MP (520x520), 524 without
    from bafusion.fusion.memory import fuse_need_mib, memory_problem, memory_warning

    maps_as = "its maps and Fig. 3 (maps/)"  # fuse-set has no --save-maps: it writes them always
    largest: tuple[int, str] | None = None  # the pair that needs the most, for the one warning below
    for name in names:
        shots = [pairs / f"{name}-A.png", pairs / f"{name}-B.png"]
        why = memory_problem(shots, save_maps=True, maps_as=maps_as, params=params)
        if why:
            raise UserError(f"pair {name} ({shots[0]}, {shots[1]}): {why}")
        need = fuse_need_mib(shots, save_maps=True, params=params)
        if need is not None and (largest is None or need > largest[0]):
            largest = (need, name)
    # over the limit but within its swap, or more than the machine has available now: one warning
    # a run, for the pair that needs the most (as fuse warns for its pair), and the run goes on
    if largest is not None and say is not None:
        shots = [pairs / f"{largest[1]}-A.png", pairs / f"{largest[1]}-B.png"]
        low = memory_warning(shots, save_maps=True, maps_as=maps_as, params=params)
        if low:
            say(f"warning: pair {largest[1]} ({shots[0]}, {shots[1]}), the largest: {low}")
    # into a fresh folder that replaces ``out`` at the end: a killed run leaves the earlier
    # results whole, never mixed with new ones
    said_once: set[str] = set()  # notes said once a run (metadata not kept), as fuse-dir says them
    with atomic_dir(out) as tmp:
        for name in names:
            pa, pb, pt = pairs / f"{name}-A.png", pairs / f"{name}-B.png", pairs / f"{name}-dm.png"
            said = _pair_steps(name, [pa, pb], step)
            said("reading")
            src = read_source_set([pa, pb])  # the images as read_images reads them, and A's metadata
            a, b = src.images
            # fuse_images without its memory check (fuse-set checks once a run), on the command line's threads;
            # each step of a camera-size pair named
            res = _fuse_pair(a, b, nets, params, (str(pa), str(pb)), progress=progress, step=said)
            # A's EXIF, ICC profile, resolution and PNG colour chunks, and the notes, as fuse writes and says
            # them (the 8-bit fusion: a test set's 16-bit pairs are scored and written in 8 bits, as before)
            fused = fused_output(replace(src, full=None), [res], out / f"{name}.png")
            for note in fused.notes:
                if note not in said_once:  # a line without a file name (metadata not kept): once a run
                    if say is not None:  # a note on a setting as fuse and fuse-dir say it, "note: fuse.scales ..."
                        say(f"note: {note}" if note.startswith("fuse.") else note)
                    else:  # from Python: a warning, as bafusion.fuse issues its notes
                        warnings.warn(note.replace(OUTPUT_EXPOSURE_OPTION, OUTPUT_EXPOSURE_PARAM), FusionNoteWarning,
                                      stacklevel=2)
                if note.startswith(("the sources' ", "fuse.")):  # (a test set's pairs of one size: a scale skipped)
                    said_once.add(note)
            # Timings go to the log, not the report: DVC tracks the report, and it must be the
            # same for the same inputs.
            if (timed or say) is not None:
                (timed or say)(f"{name}: {sum(res.seconds.values()):.3f} s")
            entry: dict = {"near_boundary_fraction": float(res.near_boundary.mean())}
            truth = truth_aif = None
            if pt.is_file():
                truth_img = read_image(pt)
                truth_img = to_gray_u8(truth_img)
                if truth_img.shape[:2] != a.shape[:2]:
                    raise InputFileError(pt, _truth_size_message(truth_img.shape[:2], a.shape[:2], pa))
                truth = truth_img > 127
                entry.update(
                    dm_accuracy=decision_accuracy(res.decision, truth),
                    dm_accuracy_raw=decision_accuracy(res.decision_raw, truth),
                    dm_accuracy_initial=decision_accuracy(res.score_initial > params.threshold, truth),
                    band8_accuracy=decision_accuracy(res.decision_raw, truth, band=8),
                    band8_accuracy_initial=decision_accuracy(res.score_initial > params.threshold, truth, band=8),
                )
            # undefined (a true map without a boundary has no band): null in the JSON, not NaN
            entry = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in entry.items()}
            paif = pairs / f"{name}-truth.png"  # the all-in-focus truth: Fig. 3 shows it beside the result
            if truth is not None and paif.is_file():
                truth_aif = read_image(paif)
                if truth_aif.shape[:2] != a.shape[:2]:
                    raise InputFileError(paif, f"all-in-focus truth size {truth_aif.shape[1]}x{truth_aif.shape[0]} "
                                         f"(WxH) differs from {a.shape[1]}x{a.shape[0]} of {pa}")
            said(f"writing its maps and {name}.png")  # a 12 MP pair's: 40 s
            save_maps(tmp / "maps", name, res, a, b, alpha=alpha, diff_cmap=diff_cmap, truth=truth_aif,
                      truth_dm=truth if truth_aif is not None else None)
            write_image(tmp / f"{name}.png", res.fused, exif=fused.exif, icc=fused.icc, dpi=fused.dpi,
                        png_colour=fused.png_colour)
            report["pairs"][name] = entry
            if show is not None:
                show(f"{name}: " + ", ".join(f"{k}={'n/a' if v is None else format(v, '.4f')}" for k, v in entry.items()))
        accs = [e["dm_accuracy"] for e in report["pairs"].values() if "dm_accuracy" in e]
        if accs:
            report["mean_dm_accuracy"] = float(np.mean(accs))
        text = json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n"
        write_text(tmp / ACCURACY, text)
    if report_path:  # the DVC metrics file: numbers only (settings are DVC params)
        from bafusion.dvc_metrics import fuse_metrics

        try:
            write_text(report_path, json.dumps(fuse_metrics(report), indent=2, sort_keys=True) + "\n")
        except OSError as e:  # a full disk: said only of the report, as if nothing had been written
            raise OSError(e.errno, f"{e.strerror or e}: the report not written; {out} was written whole "
                                   f"(the fused images, maps/ and {ACCURACY})", e.filename or os.fspath(report_path), None,
                          e.filename2) from e
    return report

