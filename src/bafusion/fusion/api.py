"""One call from shots to an all-in-focus image: :func:`fuse` (``from bafusion import fuse``)."""

from __future__ import annotations

import os
import sys
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bafusion.errors import InputFileError, InputTypeError, UserError
from bafusion.fusion.models import FusionNets, _check_model_type, find_model_dir, load_nets_from_dir
from bafusion.fusion.params import ALIGN_MODELS, FusionParams
from bafusion.fusion.rule import _fuse_pair, check_same_size, checked_params, dtype_hint, fuse_stack, source_channels
from bafusion.io import read_source_set, scale_to_u8
from bafusion.preflight import check_device
from bafusion.threads import checked_threads, torch_threads

__all__ = ["fuse", "load_model"]



def _load_nets(model: str | os.PathLike[str] | None, device: str, warn: bool = True) -> FusionNets:
    """:func:`load_nets_from_dir` (its messages name this API's ``model=DIR``)."""
    return load_nets_from_dir(model, device, warn=warn)


#: The nets :func:`fuse` loaded (``model=`` a folder or name), the last :data:`_CACHE_SIZE`,
#: keyed on :func:`_model_identity`: a folder of the same name after a chdir, or nets retrained
#: in place, are loaded anew (keyed on the string ``model``, the first nets stayed in use).
#: :data:`_CACHE_LOCK` guards it: fuse() from several threads with more than 4 models raised
#: KeyError (one thread evicted the nets another had just found).
_NETS_CACHE: OrderedDict[tuple[Any, ...], FusionNets] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 4
_MODEL_FILES = ("initial.pt", "initial.json", "boundary.pt", "boundary.json")


def _model_identity(model: str | os.PathLike[str] | None) -> tuple[Any, ...]:
    """The folder ``model`` names now (:func:`bafusion.fusion.models.find_model_dir`, resolved)
    and its model files' (inode, mtime_ns, size), None for a file that is not there (the inode:
    a file replaced by another of the same size and time, ``cp -p`` or a rename, is new)."""
    d = find_model_dir(model).resolve()  # its messages name model=DIR, not the command line's --model DIR

    def stamp(f: Path) -> tuple[int, int, int] | None:
        try:
            st = f.stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    return (str(d), *(stamp(d / name) for name in _MODEL_FILES))


def _cached_nets(model: str | os.PathLike[str] | None, device: str) -> FusionNets:
    key = (_model_identity(model), device)
    with _CACHE_LOCK:  # found and marked recent at once: no other thread evicts it between
        nets = _NETS_CACHE.get(key)
        if nets is not None:
            _NETS_CACHE.move_to_end(key)
            return nets
    # messages name the model as given; _model_identity has said a ModelNameWarning; not under the lock
    nets = _load_nets(model, device, warn=False)
    with _CACHE_LOCK:
        _NETS_CACHE[key] = nets
        _NETS_CACHE.move_to_end(key)
        while len(_NETS_CACHE) > _CACHE_SIZE:
            _NETS_CACHE.popitem(last=False)
    return nets


def load_model(model: str | os.PathLike[str] | None = None, device: str = "auto") -> FusionNets:
    """Load the two trained nets of a model for fusion.

    Parameters
    ----------
    model : str or path, optional
        A folder holding ``initial.pt`` and ``boundary.pt`` (with their ``.json``), or the
        name of a shipped model (``"default"``, ``"lytro-2026-11"``; a folder of that name in
        the working directory that holds neither net file does not hide it, ``"./default"``
        names the folder). None: the shipped ``default`` model, else the pipeline's
        ``data/models``.
    device : str or torch.device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda[:N]"`` or ``"mps"`` (Apple
        Metal); a :class:`torch.device` is checked and used as it is.

    Returns
    -------
    FusionNets
        Inference copies of the initial and boundary nets with their patch sides.

    Raises
    ------
    bafusion.errors.UserError
        No such folder, a missing or invalid model file (the message names it), a device
        this machine lacks (``device='cuda:1': ...``); a ``model`` that is neither a str nor
        a path (a :class:`bafusion.errors.InputTypeError`).
    """
    _check_model_type(model)
    check_device(device, "device=")  # named as this parameter, not as the command line's --device
    return _load_nets(model, device)


def fuse(
    *sources: str | os.PathLike[str] | np.ndarray,
    model: str | os.PathLike[str] | FusionNets | None = None,
    params: FusionParams | Mapping[str, Any] | None = None,
    device: str = "auto",
    align: str | None = None,
    progress: bool | None = False,
    keep_depth: bool = True,
    threads: int | str | None = None,
) -> np.ndarray:
    """Fuse two or more shots of one scene, focused at different depths, into one image.

    Parameters
    ----------
    *sources : path or ndarray
        Two or more registered shots of the same size: file paths (read like the command
        line does: EXIF orientation applied; 16-bit PNG and TIFF at their full depth) or
        uint8 or uint16 arrays, (H, W) gray or (H, W, 3) RGB ((H, W, 1) is gray; the alpha of
        (H, W, 2) and (H, W, 4) is dropped, as from a file).
    model : str, path or FusionNets, optional
        The nets: a model folder or shipped model name (see :func:`load_model`; loaded once
        and cached: on the folder it names and its files' times and sizes, so another folder
        of that name after a change of directory, or nets retrained in it, are loaded anew),
        or nets already loaded. None: the shipped default.
    params : FusionParams or mapping, optional
        The fusion rule's parameters; a mapping of its fields (``{"l": 4}``, a ``fuse``
        section) is checked like ``params.yaml``'s; None: the defaults (``FusionParams()``).
    device : str or torch.device
        Where the nets run when ``model`` is not loaded yet: ``"auto"``, ``"cpu"``,
        ``"cuda[:N]"`` or ``"mps"``, or a :class:`torch.device`.
    align : {None, "none", "auto", "translation", "similarity", "homography"}
        Register every shot to the first before fusing (handheld brackets:
        ``"similarity"``); the result is then cropped to the area every shot covers.
        ``"auto"``: ``"similarity"`` when a shot moves more than
        :data:`bafusion.fusion.scene.HINT_MOTION_PX` pixels against the first
        (:func:`bafusion.fusion.batch.auto_alignment`), else ``"none"``, as ``fuse --align
        auto``: shots of two scenes are refused first, and a shot it could not judge -- its
        motion estimate failed, or it is too flat or too small to judge -- is left as registered
        with a :class:`bafusion.fusion.scene.AutoAlignWarning` (a :class:`UserWarning`) whose
        text is the command line's line (catch it to know the shots were not aligned). As ``fuse --align`` without
        ``--force``, an alignment whose shots do not match (two scenes) or whose estimate no
        hand-held focus pair shows is refused
        (:func:`bafusion.fusion.align.check_alignment`). ``"none"``: the
        shots are taken as registered, unchecked. None (the default): as ``"none"``, plus a
        :class:`bafusion.fusion.scene.MotionWarning` for each shot that moves so, as the
        command line's hint, when the shots look like one scene (a coarse check and estimate on
        copies reduced to a long side of 520 px: about half a second for a 24-megapixel pair;
        silence it with ``align="none"`` or the :mod:`warnings` filters).
    progress : bool or None
        A progress bar on stderr (None: for camera-size pairs on a terminal). Three or more
        shots by the joint stack rule (``params.stack_rule="joint"``), which draws no bar: a
        line on stderr as each step of its scoring starts ("step 1/2: scoring a.jpg against
        the 2 shots after it (pair scorings 1-2 of 3) ..."), on the same terms.
    keep_depth : bool
        When a source has more than 8 bits per sample (a uint16 array, or a file read as
        such), return the uint16 fusion: every pixel is one source's full-depth pixel, chosen
        by the decision made on the 8-bit versions, as the command line does. uint16 arrays
        are scaled for the decision like unmarked 16-bit files: from the smallest of 8, 10, 12,
        14 or 16 bits that holds their largest value (12-bit camera data in uint16 is 12-bit),
        and the result keeps their values; beside a file of more than 8 bits, all is on the
        16-bit scale, as files are read. uint16 arrays beside an 8-bit source (a uint8 array,
        an 8-bit file) are refused: their depth cannot be told there (give the shots at one
        depth, or the 16-bit ones as files). False: the uint8 fusion. With ``align`` the full-depth shots are
        registered and cropped as their 8-bit copies are (the same transforms).
    threads : int, "auto" or None
        CPU threads torch runs the nets on (:func:`torch.set_num_threads`), torch's setting
        restored afterwards. None: torch's setting as it is (what the caller set with
        :func:`torch.set_num_threads`). ``"auto"``: as ``bafusion fuse`` without ``--threads``:
        torch's setting, lowered to the cores the 1-minute load average leaves free at this call
        (but for the part this process's earlier ``"auto"`` calls left in it) and to a
        container's CPU quota (:func:`bafusion.threads.auto_threads`). The fused image does not
        depend on it.

    Warns
    -----
    bafusion.fusion.rule.FusionNoteWarning
        For each note of the fusion (:attr:`bafusion.FusionResult.notes`, the command line's
        notes): a shot whose exposure or colour differs visibly from the first's, so that seams
        may show; ``params={"match_output_exposure": True}`` brings it to the first's. And, before
        the fusion, for each line ``bafusion fuse`` says of the files as it reads them that
        concerns the pixels (:meth:`bafusion.io.SourceSet.array_notes`): a file whose colour
        profile (or PNG colour chunks) differs from the first file's, or that has one where it has
        none (colours are not converted: the array holds each shot's values as stored); a CMYK
        file converted to RGB without colour management; a file of several frames or pages (the
        first is used); transparency dropped; gray sources beside colour ones (the result is gray
        where taken from them). Not those on what an output file keeps: the array carries no
        metadata (see Examples).
    bafusion.fusion.scene.MotionWarning, bafusion.fusion.scene.AutoAlignWarning
        See ``align``.
    UserWarning
        Before the shots are read, as ``bafusion fuse`` says: the fusion fits the cgroup's
        memory limit only with swap (slow), or needs more memory than the machine has available
        now (``MemAvailable`` and what this process holds).

    Returns
    -------
    ndarray
        The fused image, uint8 (uint16 for sources of more than 8 bits, see ``keep_depth``):
        (H, W, 3) when a source is colour, (H, W) when all are gray. Three or more shots are
        fused by ``params.stack_rule``.

    Raises
    ------
    bafusion.errors.UserError
        Fewer than two shots, shots of different sizes, an unreadable file, a bad parameter
        (a device this machine lacks: ``device='cuda:1': ...``), uint16 arrays beside an 8-bit
        source (see ``keep_depth``); with ``align``, shots that are not one scene or an
        implausible estimate (see ``align``). A source that is neither a
        path nor an array, a ``model`` that is neither a folder, a name nor loaded nets, or an array of another type than uint8 and uint16 (floats: the
        message says how to convert them), is a :class:`bafusion.errors.InputTypeError`, a
        UserError that is also a :class:`TypeError`. Before the shots are read, as ``bafusion
        fuse``: a fusion whose estimated memory (:func:`bafusion.fusion.memory.fuse_need_mib`,
        from the files' headers or the arrays' shapes) exceeds by more than 10 % this process's
        cgroup memory limit (a container's, a SLURM job's) and the swap it may use beyond it,
        over which the kernel would end the process (a notebook's kernel, its state lost)
        without a word; ``os.environ["BAFUSION_MEMORY_CHECK"] = "0"`` fuses anyway. Each call
        checks its own fusion as if it ran alone: fusions run at once from several threads of
        one process are not added up (:func:`bafusion.fusion.memory.memory_problem`).

    Examples
    --------
    The array carries no metadata: written with :func:`bafusion.io.output_metadata` of the first
    shot, the file holds what ``bafusion fuse`` writes of it (EXIF, ICC profile, resolution,
    PNG colour chunks, a JPEG's chroma subsampling); without, colour-managed viewers show a Display
    P3 or Adobe RGB pair's fusion as sRGB (desaturated), and the camera, date and GPS are lost.

    >>> from bafusion import fuse, write_image  # doctest: +SKIP
    >>> from bafusion.io import output_metadata  # doctest: +SKIP
    >>> fused = fuse("near.jpg", "far.jpg")  # doctest: +SKIP
    >>> write_image("fused.jpg", fused, **output_metadata("near.jpg"))  # doctest: +SKIP
    """
    if len(sources) == 1 and isinstance(sources[0], (list, tuple)):
        raise UserError("fuse() takes the shots as separate arguments: fuse(a, b) or fuse(*shots), not one list")
    if len(sources) < 2:
        raise UserError("fusion needs at least two source images")
    if align is not None and align not in ALIGN_MODELS:
        raise UserError(f"align must be None or one of {', '.join(ALIGN_MODELS)}, got {align!r}")
    params = checked_params(params)  # a mapping, e.g. {"l": 4}, is checked like params.yaml's
    threads = checked_threads(threads)
    _check_model_type(model, nets_too=True)  # before the shots are read (pathlib's TypeError named no parameter)
    if not isinstance(model, FusionNets):  # the nets are loaded on it: named as this parameter, before the work
        check_device(device, "device=")
    _check_memory(sources, align, params)  # a cgroup's limit: before the shots are read
    images, full, names, top, notes = _read_sources(sources)
    _warn_notes(notes)  # the read's: CMYK converted, colour profiles that differ, gray beside colour, ...
    for i in range(1, len(images)):
        _check_same_size(sources, images, names, i, align not in (None, "none"))
    if align is None:
        _warn_motion(images, names)
        align = "none"
    aligned = None
    if align == "auto":
        align, aligned = _auto_align(images, names)
    if align != "none":
        from bafusion.fusion.align import align_images, check_alignment

        al = aligned or align_images(images, align)
        from bafusion.fusion.scene import check_turned

        # a sideways shot (orientation tag missing): turning it helps, not the alignment
        check_turned(images, names, al.not_one_scene(),
                     remedy='fuse them as they are with align="none"')
        check_alignment(al, names, force=None, unaligned='align="none"')  # as fuse --align without --force
        for name, why in zip(names, al.replaced):  # an estimate the shots' detail did not bear out
            if why:
                warnings.warn(f"{name}: {why}", UserWarning, stacklevel=2)
        from bafusion.fusion.align import translation_shortfalls

        for line in translation_shortfalls(al, images, names):  # a turn or scale a translation leaves
            warnings.warn(line.replace("--align similarity", 'align="similarity"'), UserWarning, stacklevel=2)
        # the full-depth shots registered and cropped as their 8-bit copies were
        images, full = al.images, (al.apply(full) if full is not None and keep_depth else None)
    nets = model if isinstance(model, FusionNets) else _cached_nets(model, device)
    deep = full is not None and keep_depth
    if len(images) > 2 and params.stack_rule == "joint":
        from bafusion.fusion.batch import compose_index
        from bafusion.fusion.stack import fuse_stack_joint

        with torch_threads(threads):
            res = fuse_stack_joint(images, nets, params, names, step=_step_lines(progress, images[0]),
                                   keep_scores=False)
        _warn_notes(res.notes)
        return compose_index(full, res.index, res.gains, top) if deep else res.fused  # match_output_exposure's gains
    with torch_threads(threads):
        if len(images) == 2:
            results = [_fuse_pair(images[0], images[1], nets, params, (names[0], names[1]), progress)]
        else:
            results = fuse_stack(images, nets, params, names, progress=progress, keep_maps=False)
    _warn_notes([n for r in results for n in r.notes])
    if deep:
        from bafusion.fusion.batch import compose_full

        return compose_full(full, [r.decision for r in results], [r.gains for r in results], top)  # as bafusion fuse
    return results[-1].fused


def _step_lines(progress: bool | None, image: np.ndarray) -> Callable[[str], None] | None:
    """The joint stack rule's step lines on stderr where a bar would be drawn (it draws none):
    ``progress`` True, or None for a camera-size stack on a terminal (as
    :func:`bafusion.fusion.working.progress_bar` decides)."""
    from bafusion.fusion.working import PROGRESS_MIN_PIXELS
    from bafusion.progress import stderr_is_terminal

    pixels = image.shape[0] * image.shape[1]
    show = bool(progress) if progress is not None else pixels >= PROGRESS_MIN_PIXELS and stderr_is_terminal()
    return (lambda text: print(f"{text} ...", file=sys.stderr, flush=True)) if show else None


def _check_same_size(sources: tuple[str | os.PathLike[str] | np.ndarray, ...], images: list[np.ndarray],
                     names: list[str], i: int, aligned: bool = False) -> None:
    """Shot ``i`` of another size than the first is an error naming both, and, as the command
    line says it, the EXIF orientation of a file where it swapped the file's width and height
    (:func:`bafusion.io.orientation_clause`), and what to do (:func:`bafusion.io.size_remedy`).
    ``aligned``: a shot of another size is registered onto the first's frame when it can be
    (:func:`bafusion.fusion.align.size_problem`)."""
    from bafusion.fusion.align import size_problem
    from bafusion.io import size_remedy

    size = lambda im: (im.shape[1], im.shape[0])  # noqa: E731
    why = size_problem(size(images[0]), size(images[i])) if aligned else None
    try:
        if why:
            raise InputFileError(names[i], f"size {images[i].shape[1]}x{images[i].shape[0]} (WxH) differs from "
                                 f"{images[0].shape[1]}x{images[0].shape[0]} of {names[0]}: {why}")
        if not aligned:
            check_same_size(images[0], images[i], names[0], names[i])
    except InputFileError as e:
        from bafusion.io import image_info, orientation_clause

        turned = "".join(orientation_clause(image_info(sources[j])) for j in (i, 0)
                         if not isinstance(sources[j], np.ndarray))
        more = "" if why else size_remedy(size(images[0]), size(images[i]), 'use align="similarity" (or "auto") '
                                          "to register shots of different sizes")
        raise InputFileError(e.path, e.problem + turned + more) from None


def _auto_align(images: list[np.ndarray], names: list[str]):
    """``align="auto"`` as ``fuse --align auto`` without ``--force``: the model and, when the
    shots failed the one-scene check (:func:`bafusion.fusion.scene.check_one_scene`) but match
    after alignment, that alignment (:func:`bafusion.fusion.batch.align_despite_scene_check`,
    which refuses them when they do not: two scenes); else the model is chosen by
    :func:`bafusion.fusion.batch.auto_alignment`; a shot whose estimate failed (implausible, or
    matching worse than no motion) gets a warning with the command line's line, and is fused as
    registered unless another shot moves; a shot too flat or too small to judge gets one too
    (:class:`bafusion.fusion.scene.AutoAlignWarning`, as the failures)."""
    from bafusion.fusion.batch import AUTO_FAILURES, align_despite_scene_check, auto_alignment
    from bafusion.fusion.scene import MIN_CORRELATION, check_one_scene, shared_reductions

    from bafusion.fusion.align import to_first_frame

    others = [i for i in range(1, len(images)) if images[i].shape[:2] != images[0].shape[:2]]
    resized = bool(others)
    judged = to_first_frame(images) if resized else images  # the checks compare shots of one size
    with shared_reductions():  # the check and the motion estimate reduce each shot once
        scores = check_one_scene(judged, names, True)
        if not all(c is None or c >= MIN_CORRELATION for c in scores):
            # a shot moved by a large fraction of the image fails the check before alignment:
            # aligned, it may match (then it is fused aligned), else the shots are refused
            return "similarity", align_despite_scene_check(images, names, scores, force=None,
                                                           unaligned='align="none"', auto='align="auto"',
                                                           tell=lambda line: None)
        model, lines = auto_alignment(judged, names, True, others)
    from bafusion.fusion.scene import AutoAlignWarning

    for verdict, text in lines:
        if verdict in AUTO_FAILURES or verdict in ("too flat", "too small"):  # not judged: left as registered
            warnings.warn(f'align="auto": {text}', AutoAlignWarning, stacklevel=3)
    return ("similarity" if resized and model == "none" else model), None  # a shot of another size is registered


def _warn_notes(notes: list[str]) -> None:
    """A :class:`~bafusion.fusion.rule.FusionNoteWarning` per note of the fusion, naming the
    parameter as this API takes it (``params={"match_output_exposure": True}``), not as the
    command line's option."""
    from bafusion.fusion.rule import OUTPUT_EXPOSURE_OPTION, OUTPUT_EXPOSURE_PARAM, FusionNoteWarning

    for note in notes:
        warnings.warn(note.replace(OUTPUT_EXPOSURE_OPTION, OUTPUT_EXPOSURE_PARAM), FusionNoteWarning, stacklevel=3)


def _warn_motion(images: list[np.ndarray], names: list[str]) -> None:
    """A :class:`~bafusion.fusion.scene.MotionWarning` per shot that moves against the first,
    when the shots look like one scene, as the command line's hint (advice only: a failing
    estimate is silent)."""
    from bafusion.fusion.scene import (
        MIN_CORRELATION,
        MotionWarning,
        check_one_scene,
        motion_hints,
        shared_reductions,
    )

    try:
        with shared_reductions():  # the check and the estimate reduce each shot once
            scores = check_one_scene(images, names, True)  # force: judge, never refuse
            if not all(c is None or c >= MIN_CORRELATION for c in scores):
                return
            lines = motion_hints(images, names, advice='align="similarity" (or "auto")')
    except Exception:  # noqa: BLE001 - advice must not stop a fusion
        return
    for line in lines:
        warnings.warn(line, MotionWarning, stacklevel=3)


def _refuse_mixed_depths(wide: Sequence[str], narrow: Sequence[str]) -> None:
    """Refuse uint16 arrays (``wide``, their names) beside 8-bit sources (``narrow``: uint8
    arrays, files of 8 bits): a uint16 array carries no bit depth, and beside an 8-bit source
    none can be told (12-bit camera data in uint16 and a dark 16-bit image look alike, so a
    depth guessed from its largest value made one of them 16 times too bright or too dark
    against the 8-bit shot). Files carry theirs: an unmarked 16-bit file beside an 8-bit one is
    read on its full 16-bit scale (:func:`bafusion.io.read_source_set`), as ``bafusion fuse``
    reads it; arrays are asked for at one depth.

    Parameters
    ----------
    wide, narrow : sequence of str
        The names of the uint16 arrays and of the 8-bit sources, for the message.

    Raises
    ------
    bafusion.errors.UserError
        When both are given.
    """
    if not wide or not narrow:
        return

    def named(items: Sequence[str], what: str) -> str:
        return f"{' and '.join(items)} {'are' if len(items) > 1 else 'is'} {what}"

    raise UserError(
        f"{named(wide, 'a uint16 array' if len(wide) == 1 else 'uint16 arrays')} but {named(narrow, '8-bit')}: the "
        "bit depth of uint16 data beside 8-bit shots cannot be told (12-bit camera data and a dark 16-bit image look "
        "alike); give the shots at one depth: all uint16 on one scale (x.astype(np.uint16) * 257 brings uint8 to the "
        "16-bit scale), or all uint8 (bafusion.io.scale_to_u8(x, bits)), or pass the 16-bit shots as files (an "
        "unmarked 16-bit file beside an 8-bit one is read on its full 16-bit scale, as bafusion fuse reads it)")


def _check_memory(sources: tuple[str | os.PathLike[str] | np.ndarray, ...], align: str | None,
                  params: FusionParams) -> None:
    """Refuse, before the shots are read, a fusion whose estimate exceeds this process's cgroup
    memory limit and the swap it may use beyond it (:func:`bafusion.fusion.memory.memory_problem`,
    as ``bafusion fuse`` does: over them the kernel ends the process, a notebook's kernel and its
    state with it, without a word); warn (:class:`UserWarning`) where it fits only by swapping,
    or needs more than the machine has available now (:func:`bafusion.fusion.memory.memory_warning`).
    Sources of another type, arrays the reader refuses (not uint8 or uint16, not (H, W) or
    (H, W, C)) and paths whose size cannot be read (missing, a folder, not an image) are left to
    :func:`_read_sources` to refuse, in its words: the readable one beside them is not refused
    for memory first."""
    if not all(isinstance(s, (np.ndarray, str, os.PathLike)) for s in sources):
        return
    from bafusion.fusion.memory import _shape, memory_problem, memory_warning

    if any(s.dtype not in (np.uint8, np.uint16) or s.ndim not in (2, 3) if isinstance(s, np.ndarray)
           else _shape(Path(s)) is None for s in sources):
        return

    aligned = align not in (None, "none", "auto")  # "auto" counted as the fusion, as fuse --align auto
    shots = [s if isinstance(s, np.ndarray) else os.fspath(s) for s in sources]
    why = memory_problem(shots, aligned, params=params)  # type: ignore[arg-type]
    names = [f"source {i + 1}" if isinstance(s, np.ndarray) else str(s) for i, s in enumerate(sources)]
    if why:
        raise UserError(f"{', '.join(names)}: {why}")
    low = memory_warning(shots, aligned, params=params)  # type: ignore[arg-type]
    if low:
        warnings.warn(f"{', '.join(names)}: {low}", UserWarning, stacklevel=3)


def _read_sources(
    sources: tuple[str | os.PathLike[str] | np.ndarray, ...],
) -> tuple[list[np.ndarray], list[np.ndarray] | None, list[str], int, list[str]]:
    """The uint8 images the decision is made on, their full-depth uint16 versions when any
    source has more than 8 bits (else None), the sources' names for messages, the largest
    value of the full-depth scale (where ``match_output_exposure``'s gains clip: 4095 for
    12-bit data, which they would otherwise push beyond its bits), and the notes of the read
    that concern the fused array, as ``bafusion fuse`` says them on stderr
    (:meth:`bafusion.io.SourceSet.array_notes`: a CMYK file converted, files whose colour
    profiles differ, a file's first frame only, transparency dropped; gray sources beside colour
    ones, arrays included), not those on what an output file keeps.

    uint16 arrays follow the rule of unmarked 16-bit files (:func:`bafusion.io.common_bits`):
    the decision sees them scaled from the smallest of 8, 10, 12, 14, 16 bits that holds their
    largest value, all alike (12-bit camera data in uint16 is not taken for a dark 16-bit
    image). The full-depth result stays on that scale -- the arrays' own values -- unless a
    file of more than 8 bits is among the sources: then everything is on the 16-bit scale, as
    files are read (a uint8 array beside such a file: x 257). uint16 arrays beside an 8-bit
    source are refused (:func:`_refuse_mixed_depths`)."""
    from bafusion.io import common_bits

    for i, s in enumerate(sources):
        if not isinstance(s, (np.ndarray, str, os.PathLike)):
            if hasattr(s, "getbands"):
                hint = " (a PIL image: pass numpy.asarray(image), or its file)"
            elif isinstance(s, FusionNets):
                hint = " (the nets: pass them as model=..., e.g. fuse(a, b, model=nets))"
            elif isinstance(s, FusionParams):
                hint = " (the fusion parameters: pass them as params=...)"
            else:
                hint = ""
            raise InputTypeError(f"source {i + 1}: expected a file path or a numpy array, got {type(s).__name__}{hint}")
        if not isinstance(s, np.ndarray) and os.fspath(s) in ("", b""):  # pathlib reads '' as '.': 'not a regular file'
            raise InputFileError(f"source {i + 1}", "the path is empty (''): no file named")
    paths = [s for s in sources if not isinstance(s, np.ndarray)]
    src = read_source_set(paths) if paths else None  # with the notes, as bafusion fuse reads them
    read8 = iter(src.images) if src else iter(())
    read16 = iter(src.full) if src and src.full is not None else None
    names = [f"source {i + 1}" if isinstance(s, np.ndarray) else str(s) for i, s in enumerate(sources)]
    arrays: dict[int, np.ndarray] = {}
    for i, (s, name) in enumerate(zip(sources, names)):
        if isinstance(s, np.ndarray):
            s = source_channels(s, name)  # (H, W) or (H, W, 3): alpha dropped, as from a file
            if s.dtype not in (np.uint8, np.uint16):
                raise InputTypeError(f"{name}: sources must be uint8 or uint16 arrays, got {s.dtype}{dtype_hint(s)}")
            arrays[i] = np.ascontiguousarray(s)
    deep16 = [a for a in arrays.values() if a.dtype == np.uint16]
    if deep16:
        _refuse_mixed_depths(
            [names[i] for i, a in arrays.items() if a.dtype == np.uint16],
            [names[i] for i, a in arrays.items() if a.dtype == np.uint8]
            + [n for n, d in zip((names[i] for i, s in enumerate(sources) if i not in arrays),
                                 src.depths if src else ()) if d == 8])
    bits = common_bits(max(float(a.max()) for a in deep16)) if deep16 else 8
    files_deep = src is not None and src.full is not None
    deep = files_deep or bool(deep16)  # else no full-depth copies at all (all 8-bit: the usual case)
    top = float((1 << bits) - 1)
    images: list[np.ndarray] = []
    full: list[np.ndarray] = []

    def on_scale(u8: np.ndarray) -> np.ndarray:  # an 8-bit source on the uint16 arrays' scale
        return np.round(u8.astype(np.float64) * (top / 255.0)).astype(np.uint16)

    for i in range(len(sources)):
        if i not in arrays:
            images.append(next(read8))
            if files_deep:  # read16 holds every file on the 16-bit scale
                full.append(next(read16))  # type: ignore[arg-type]
            elif deep:  # an 8-bit file beside uint16 arrays: like a uint8 array
                full.append(on_scale(images[-1]))
            continue
        a = arrays[i]
        if a.dtype == np.uint16:
            images.append(scale_to_u8(a, bits))
        else:
            images.append(a)
        if not deep:
            continue
        own = a if a.dtype == np.uint16 else on_scale(a)  # on the uint16 arrays' scale
        if files_deep and bits != 16:  # beside files read to the 16-bit scale: that scale
            own = np.clip(np.round(own / top * 65535.0), 0, 65535).astype(np.uint16)
        full.append(own)
    notes = src.array_notes() if src else []
    if arrays:  # gray beside colour said of every source, the arrays too (the files' line alone named files only)
        from bafusion.io import mix_note

        files = mix_note([n for i, n in enumerate(names) if i not in arrays],
                         [a.ndim == 2 for i, a in enumerate(images) if i not in arrays])
        notes = [n for n in notes if n != files]
        mixed = mix_note(names, [a.ndim == 2 for a in images])
        notes += [mixed] if mixed else []
    return images, (full if deep else None), names, 65535 if files_deep else int(top), notes
