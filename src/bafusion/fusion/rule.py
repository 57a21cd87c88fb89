"""Fusion with the trained nets: the paper's section 2 (Ma, Zhang, Liu, Liao, ICME 2019).

Steps, every constant a field of :class:`FusionParams`:

1. The *initial* net gives every pixel a focus score ``s0`` = softmax probability of class 1
   (the centre pixel of the patch around it is focused in A).
2. Eq. 1: the mean of ``s0`` over a ``(2l+1) x (2l+1)`` window (``l``; reflect at the borders).
3. Eq. 2: pixels with ``low < mean < high`` (0.2 / 0.8) lie near the focus boundary; there the
   score is replaced by the *boundary* net's score, giving ``s1``.
4. ``dm = s1 > threshold`` (0.5; a tie goes to B).
5. Small regions are removed: focused islands and defocused holes with fewer than
   ``ceil(min_region * H * W)`` pixels (4-connected) are flipped. Optionally (``unsure_region``
   above ``min_region``; off by default and in the paper preset) so are those with fewer than
   ``ceil(unsure_region * H * W)`` pixels where the initial net was unsure, its mean
   ``|2 * s0 - 1|`` below ``unsure_confidence`` (:func:`remove_unsure_regions`). The islands
   go first, then the holes of what is left; optionally (``symmetric_regions``, off by default
   and in the paper preset) both are judged on the same map, so that swapping A and B gives
   the complementary decision.
6. Eq. 3: ``F = dm * A + (1 - dm) * B``, in colour when a source is RGB (a gray source is then
   replicated to three channels), in gray when both are gray; alpha is dropped. The output is
   uint8 and equals A exactly where ``dm = 1`` and B where ``dm = 0``.

How the nets score the pixels: :mod:`bafusion.fusion.scoring`.

Focal stacks: ``A B C ...`` are fused one into the next, ``F1 = fuse(A, B)``,
``F2 = fuse(F1, C)``, ...: the running result plays A, the next source B.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bafusion.errors import InputFileError, InputTypeError, UserError
from bafusion.fusion import working as _working
from bafusion.fusion.decide import decide
from bafusion.fusion.exposure import (MATCH_STEPS, apply_gains, colour_gains, exposure_note, match_noise,
                                       match_pair, stack_exposure)
from bafusion.fusion.models import FusionNets
from bafusion.fusion.params import FusionParams
# defined without torch (fuse reads and checks its shots before importing it: batch.prepare_sources), public here
from bafusion.fusion.scene import check_same_size as check_same_size
from bafusion.fusion.working import (
    FUSING_STEP_COST,
    decide_upscaled,
    decide_working,
    patch_note,
    progress_bar,
    scales_note,
    uses_upscale,
    uses_working,
)
from bafusion.io import to_gray_u8
from bafusion.threads import side_by_side


#: How the note of a visible exposure difference names the option that matches the pixels.
OUTPUT_EXPOSURE_OPTION = "--match-output-exposure (fuse.match_output_exposure: true)"
#: The same in the Python API (:func:`bafusion.fuse`'s :class:`FusionNoteWarning`).
OUTPUT_EXPOSURE_PARAM = 'params={"match_output_exposure": True}'


class FusionNoteWarning(UserWarning):
    """Issued by :func:`bafusion.fuse` for each of the fusion's notes (:attr:`FusionResult.notes`,
    what ``bafusion fuse`` prints as a note): a shot whose exposure or colour differs visibly
    from the first's, so that seams may show; and for each line ``bafusion fuse`` says of the
    files as it reads them that concerns the pixels (colour profiles that differ, a CMYK file
    converted, gray beside colour, ...: :meth:`bafusion.io.SourceSet.array_notes`); by
    :func:`fuse_images`, :func:`fuse_stack` and :func:`bafusion.fuse` for an array source whose
    alpha, not opaque everywhere, is dropped (as a file's line says it); by
    :func:`bafusion.fusion.fuse_set` called from
    Python for each note ``bafusion fuse-set`` prints (those of the written files too). The text is the note, naming the parameter that
    helps as the Python API takes it (``params={"match_output_exposure": True}``) rather than
    the command line's option. Filter it with :mod:`warnings`."""


@dataclass
class FusionResult:
    """Everything one fusion of two images produced.

    All maps are at the sources' size (H, W). The relations between the score maps below are
    exact for a pair decided at its own size (the paper's way; ``working_min`` and
    ``working_side`` 0, or a pair between ``working_min`` and ``working_above`` px). A pair
    decided at another resolution (Notes) has its maps computed there and resampled back to
    (H, W), so they hold only approximately: ``score_mean`` is not exactly the window mean of
    the returned ``score_initial``, and ``score_refined`` differs from it outside
    ``near_boundary`` too (on a 128 px pair decided upscaled: on 17 % of those pixels, by up
    to 0.18).
    ``decision_raw`` and ``decision`` are exact at any size.
    A step before the last of :func:`fuse_stack` with ``keep_maps`` False holds only its
    ``decision``, ``seconds``, ``notes`` and ``gains``: its other maps are None.

    Attributes
    ----------
    fused : ndarray
        The fused image, uint8, (H, W) or (H, W, 3): A's pixel where ``decision``, else B's.
    score_initial : ndarray
        float32 (H, W) in [0, 1]: the initial net's score s0 (1: focused in A), after
        flat-region filling when ``flat_level`` > 0.
    score_mean : ndarray
        float32 (H, W): the Eq. 1 window mean of s0 (of s0 at the resolution the pair was
        decided at, resampled: see above).
    near_boundary : ndarray
        bool (H, W): Eq. 2, ``low < score_mean < high``. A camera-size pair (above
        ``working_above``): the band of full-resolution pixels refined around the decision's
        boundary (``working_band``) instead.
    score_refined : ndarray
        float32 (H, W): s1, s0 with the near-boundary pixels rescored by the boundary net
        (weighed with s0 by ``boundary_weight``); elsewhere s0 itself when decided at the
        pair's own size without flat-region filling (``flat_level`` > 0 fills s1 again), and
        approximately so when resampled (see above).
    decision_raw : ndarray
        bool (H, W): ``score_refined > threshold``.
    decision : ndarray
        bool (H, W): after small-region removal (True: take A).
    seconds : dict of str to float
        Wall time of each step (``gray``, ``exposure``, ``initial``, ``boundary``, ``post``, ...);
        their sum is the fusing time `bafusion fuse` reports.
    notes : list of str
        Lines for the user (``bafusion fuse`` prints them as notes, :func:`bafusion.fuse` issues
        them as :class:`FusionNoteWarning`): B's exposure or colour differs visibly from A's, so
        seams may show (:func:`bafusion.fusion.exposure.exposure_note`; none when
        ``match_output_exposure`` brought B to A); the pair is decided at a size less than the
        nets' patch high or wide (:func:`bafusion.fusion.working.patch_note`). Often empty.
    gains : ndarray or None
        float64 (C,), B's per-channel gains applied before compositing when
        ``match_output_exposure`` is on (``fused`` holds B's pixels times them), else None.

    Notes
    -----
    A pair whose long side is below ``working_min`` is decided upscaled to it
    (:func:`bafusion.fusion.working.decide_upscaled`); one above ``working_above`` at the
    working resolution ``working_side`` and refined in a band at full size
    (:func:`bafusion.fusion.working.decide_working`).
    """

    fused: np.ndarray  #: uint8, (H, W) or (H, W, 3)
    score_initial: np.ndarray  #: float32 in [0, 1], the initial net's score s0
    score_mean: np.ndarray  #: float32, Eq. 1 window mean of s0 (approximate when resampled: see above)
    near_boundary: np.ndarray  #: bool, Eq. 2 (a camera-size pair: the refined band)
    score_refined: np.ndarray  #: float32, s1 (s0 with near-boundary pixels rescored; see above)
    decision_raw: np.ndarray  #: bool, s1 > threshold
    decision: np.ndarray  #: bool, after small-region removal (True: take A)
    seconds: dict[str, float] = field(default_factory=dict)
    #: Lines for the user: B's exposure or colour differs visibly from A's
    #: (:func:`bafusion.fusion.exposure.exposure_note`), a pair narrower than the nets' patch
    #: (:func:`bafusion.fusion.working.patch_note`).
    notes: list[str] = field(default_factory=list)
    #: B's per-channel gains applied before compositing (``match_output_exposure``), else None.
    gains: np.ndarray | None = None


# --------------------------------------------------------------------------------------
# The fusion rule
# --------------------------------------------------------------------------------------




def _flip_small(dm: np.ndarray, area: int) -> np.ndarray:
    """``dm`` with its 4-connected True regions of fewer than ``area`` pixels set False, then the
    4-connected False regions of what is left (holes, those at the border included) of fewer
    than ``area`` pixels set True: skimage's ``remove_small_objects`` then ``remove_small_holes``
    (``connectivity=1``), computed by one labelling and one count per class, and no mask of
    the whole map where nothing is small (1.1-1.7x less CPU on a 24 MP map in medians of 7,
    BENCHMARKS.md "Where a camera-size fusion's time goes"; the same maps, tests/test_fusion.py)."""
    from scipy import ndimage

    out = np.array(dm, dtype=bool)  # a copy
    four = ndimage.generate_binary_structure(2, 1)
    for value in (True, False):  # the islands first, then the holes of what is left (as skimage's two calls)
        labels, _ = ndimage.label(out if value else ~out, four)
        small = np.bincount(labels.ravel()) < area
        small[0] = False  # label 0: the other class
        if small.any():
            out[small[labels]] = not value
    return out


def _flip_symmetric(dm: np.ndarray, candidate: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
    """The symmetric small-region rule (``fuse.symmetric_regions``): the candidate regions of
    both classes are judged on ``dm`` itself (``candidate(labels, n)``: a bool per label of a
    4-connected labelling of one class, label 0 the other class). Each group of touching
    candidates (4-connected) takes the class of the other regions around it; a group bordering
    regions of both classes, or none, is left as it was. Nothing depends on which class is
    True, so ``_flip_symmetric(~dm) == ~_flip_symmetric(dm)``: swapping the shots gives the
    complementary map (islands-then-holes, :func:`_flip_small`, does not where an island and a
    hole touch)."""
    from scipy import ndimage

    dm = np.asarray(dm, dtype=bool)
    four = ndimage.generate_binary_structure(2, 1)
    small = np.zeros(dm.shape, dtype=bool)
    for value in (True, False):
        labels, n = ndimage.label(dm if value else ~dm, four)
        pick = np.asarray(candidate(labels, n), dtype=bool).copy()
        pick[0] = False  # label 0: the other class
        if pick.any():
            small |= pick[labels]
    out = dm.copy()
    if not small.any():
        return out
    groups, n = ndimage.label(small, four)
    near = np.zeros((2, n + 1), dtype=bool)  # [class False, class True] of the regions around a group
    whole = slice(None)
    for axis in (0, 1):
        for here, there in ((slice(1, None), slice(None, -1)), (slice(None, -1), slice(1, None))):
            p = (here, whole) if axis == 0 else (whole, here)
            q = (there, whole) if axis == 0 else (whole, there)
            g = groups[p]
            edge = (g > 0) & ~small[q]
            near[dm[q][edge].astype(np.intp), g[edge]] = True
    to_true, to_false = near[1] & ~near[0], near[0] & ~near[1]
    out[to_true[groups]] = True
    out[to_false[groups]] = False
    return out


def remove_small_regions(dm: np.ndarray, min_region: float, symmetric: bool = False) -> np.ndarray:
    """Flip focused islands and defocused holes smaller than ``min_region * H * W`` pixels.

    Parameters
    ----------
    dm : ndarray of bool, (H, W)
        Decision map (True: take A).
    min_region : float
        Fraction of the image in [0, 1); regions (4-connected) with fewer than
        ``ceil(min_region * H * W)`` pixels are flipped. 0: nothing is removed.
    symmetric : bool
        False (the default and the paper preset): the islands first, then the holes of what is
        left (skimage's ``remove_small_objects`` then ``remove_small_holes``). True
        (``fuse.symmetric_regions``): islands and holes judged on ``dm`` alike, each group of
        touching small regions taking the class of the regions around it, a group between
        regions of both classes left as it was; the map of the swapped pair (``~dm``) then
        gives exactly the complementary result.

    Returns
    -------
    ndarray of bool, (H, W)
    """
    area = math.ceil(min_region * dm.size)
    if area <= 1:
        return dm.copy()
    if symmetric:
        return _flip_symmetric(dm, lambda labels, n: np.bincount(labels.ravel(), minlength=n + 1) < area)
    return _flip_small(dm, area)


def remove_unsure_regions(dm: np.ndarray, score_initial: np.ndarray, unsure_region: float,
                          unsure_confidence: float, symmetric: bool = False) -> np.ndarray:
    """Flip the small regions the initial net is unsure of: focused islands and defocused holes
    with fewer than ``ceil(unsure_region * H * W)`` pixels whose mean confidence
    ``|2 * s0 - 1|`` is below ``unsure_confidence`` (``fuse.unsure_region``,
    ``fuse.unsure_confidence``; off by default and in the paper preset).

    Applied after :func:`remove_small_regions`, so regions under ``min_region`` are gone already
    whatever their confidence. A larger region that is still small is flipped only where the
    nets' votes in it were uninformed (a wrong island on a flat or low-texture surface, where
    both shots look alike) and kept where they were confident (a cell of background seen
    through a sharp fence, cut small by the thin structure). Islands first, then the holes of
    what is left, 4-connected, as :func:`remove_small_regions`.

    Parameters
    ----------
    dm : ndarray of bool, (H, W)
        Decision map after small-region removal (True: take A).
    score_initial : ndarray of float, (H, W)
        The initial net's score s0 in [0, 1] (1: focused in A), at the map's size
        (:attr:`FusionResult.score_initial`).
    unsure_region : float
        Fraction of the image in [0, 1): regions with fewer than ``ceil(unsure_region * H * W)``
        pixels are candidates. 0 (or not above ``min_region``): nothing more is removed.
    unsure_confidence : float
        In (0, 1]: a candidate whose mean ``|2 * s0 - 1|`` is below this is flipped.
    symmetric : bool
        As for :func:`remove_small_regions`: True judges the islands and holes on ``dm`` alike
        (``fuse.symmetric_regions``).

    Returns
    -------
    ndarray of bool, (H, W)
        A new map; equal to ``dm`` where no region qualifies.

    Raises
    ------
    bafusion.errors.UserError
        ``score_initial`` of another height and width than ``dm``.
    """
    from scipy import ndimage

    out = np.array(dm, dtype=bool)  # a copy
    area = math.ceil(unsure_region * out.size)
    if area <= 1:
        return out
    s0 = np.asarray(score_initial)
    if s0.shape != out.shape:
        raise UserError(f"score_initial of shape {s0.shape} for a decision map of shape {out.shape}")
    conf = np.abs(2.0 * s0.astype(np.float64) - 1.0).ravel()

    def unsure(labels: np.ndarray, n: int) -> np.ndarray:
        flat = labels.ravel()
        count = np.bincount(flat, minlength=n + 1)
        mean = np.bincount(flat, weights=conf, minlength=n + 1) / np.maximum(count, 1)
        return (count < area) & (mean < unsure_confidence)

    if symmetric:
        return _flip_symmetric(out, unsure)
    four = ndimage.generate_binary_structure(2, 1)
    for value in (True, False):  # the islands first, then the holes of what is left
        labels, n = ndimage.label(out if value else ~out, four)
        if n == 0:
            continue
        flip = unsure(labels, n)
        flip[0] = False  # label 0: the other class
        if flip.any():
            out[flip[labels]] = not value
    return out


def clean_decision(dm_raw: np.ndarray, score_initial: np.ndarray, params: FusionParams) -> np.ndarray:
    """The rule's step 5: :func:`remove_small_regions` (``min_region``), then, where
    ``params.unsure_region`` is above ``min_region``, :func:`remove_unsure_regions`.

    Parameters
    ----------
    dm_raw : ndarray of bool, (H, W)
        The binarised score (True: take A).
    score_initial : ndarray of float, (H, W)
        The initial net's score s0 at the map's size.
    params : FusionParams
        ``min_region``, ``unsure_region``, ``unsure_confidence`` and ``symmetric_regions`` are read.

    Returns
    -------
    ndarray of bool, (H, W)
        The decision map; with ``unsure_region`` 0 (the default) exactly
        ``remove_small_regions(dm_raw, params.min_region, params.symmetric_regions)``.
    """
    dm = remove_small_regions(dm_raw, params.min_region, params.symmetric_regions)
    if params.unsure_region > params.min_region:
        dm = remove_unsure_regions(dm, score_initial, params.unsure_region, params.unsure_confidence,
                                   params.symmetric_regions)
    return dm


def fuse_with_map(a: np.ndarray, b: np.ndarray, dm: np.ndarray) -> np.ndarray:
    """Eq. 3 with a binary map: A's pixel where ``dm``, B's elsewhere (exact).

    Parameters
    ----------
    a, b : ndarray
        The sources, uint8 or uint16 (full-depth sources on the 16-bit scale: a uint8 source
        beside a uint16 one is taken x 257, so 12-bit data is brought to that scale first;
        :func:`bafusion.fuse`, which cannot tell the depth of a uint16 array, refuses one
        beside a uint8 one), (H, W) or (H, W, 3/4); a gray source beside a colour one is replicated to three
        channels, alpha is dropped.
    dm : ndarray of bool, (H, W)
        Decision map of the sources' height and width: True takes A's pixel, False B's.

    Returns
    -------
    ndarray
        uint8, or uint16 when a source is uint16 (its values kept), (H, W, 3) if a source is
        colour, else (H, W).

    Raises
    ------
    bafusion.errors.UserError
        A map or a source of another height or width (the message names the shapes).
    """
    a, b, dm = np.asarray(a), np.asarray(b), np.asarray(dm)
    if not a.shape[:2] == b.shape[:2] == dm.shape:  # numpy's broadcast error named no size
        raise UserError(f"fuse_with_map: the map is {dm.shape} (H, W) but the sources are {a.shape} and {b.shape}: "
                        "the map must have the sources' height and width")
    a, b = _match_channels(a, b)
    sel = dm if a.ndim == 2 else dm[..., None]
    wide = [x.dtype == np.uint16 for x in (a, b)]
    if any(wide):  # was cast to uint8: the 16-bit values wrapped (65535 -> 255, 256 -> 0)
        a, b = (x if w else x.astype(np.uint16) * np.uint16(257) for x, w in zip((a, b), wide))
        return np.where(sel, a, b)
    return np.where(sel, a, b).astype(np.uint8)


def _match_channels(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop alpha; if one source is RGB and the other gray, replicate the gray one."""
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    if b.ndim == 3 and b.shape[2] == 4:
        b = b[..., :3]
    if a.ndim != b.ndim:
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        else:
            b = np.repeat(b[..., None], 3, axis=2)
    return a, b


def source_channels(s: np.ndarray, name: str) -> np.ndarray:
    """A source array as (H, W) gray or (H, W, 3) colour: (H, W, 1) is gray, the alpha of
    (H, W, 2) and (H, W, 4) is dropped (as from a file: a :class:`FusionNoteWarning` naming
    ``name`` when that alpha is not opaque everywhere, as a file's line says it); anything else
    (or an empty array) is a :class:`UserError` naming ``name`` and the shape."""
    if not isinstance(s, np.ndarray):
        hint = " (a PIL image: pass numpy.asarray(image))" if hasattr(s, "getbands") else ""
        raise UserError(f"{name}: expected a numpy array, got {type(s).__name__}{hint}")
    if s.ndim == 3 and s.shape[2] in (2, 4) and s.dtype in (np.uint8, np.uint16) and s.size \
            and int(s[..., -1].min()) < np.iinfo(s.dtype).max:  # other dtypes are refused by the callers
        import warnings

        from bafusion.fusion.models import _user_stacklevel

        # the words of a file's line (bafusion.io's alpha note): an array got none. At the caller's
        # line (fuse_images, fuse_stack and bafusion.fuse reach here through 2-3 frames of the package)
        warnings.warn(f"{name}: its alpha channel (transparency) is dropped: its colours are used as on full "
                      "opacity", FusionNoteWarning, stacklevel=_user_stacklevel())
    if s.ndim == 3 and s.shape[2] in (1, 2):
        s = s[..., 0]  # gray, or gray + alpha (alpha dropped, as from a file)
    elif s.ndim == 3 and s.shape[2] == 4:
        s = s[..., :3]  # RGBA: alpha dropped, as from a file
    if s.ndim not in (2, 3) or s.size == 0 or (s.ndim == 3 and s.shape[2] != 3):
        raise UserError(f"{name}: expected an (H, W) gray or (H, W, 3) colour image, got an array of shape "
                        f"{s.shape}" + (" (empty)" if s.size == 0 else ""))
    return s


def checked_params(params: FusionParams | Mapping[str, Any] | None) -> FusionParams:
    """``params`` as :class:`FusionParams`: None gives the defaults, a mapping of its fields
    (``{"l": 4}``, a ``fuse`` section) is checked like ``params.yaml``'s."""
    if params is None:
        return FusionParams()
    if isinstance(params, Mapping):
        return FusionParams.from_mapping(params, source="params")
    if not isinstance(params, FusionParams):
        raise UserError(f"params must be a FusionParams or a mapping of its fields, got {type(params).__name__}")
    return params


def _check_nets(nets: FusionNets) -> None:
    if not isinstance(nets, FusionNets):
        raise UserError(f"nets must be the loaded nets (bafusion.load_model(...), e.g. load_model(\"default\")), got "
                        f"{type(nets).__name__}; bafusion.fuse() takes a model name")


def fuse_images(
    a: np.ndarray,
    b: np.ndarray,
    nets: FusionNets,
    params: FusionParams | Mapping[str, Any] | None = None,
    names: tuple[str, str] = ("A", "B"),
    progress: bool | None = None,
    threads: int | str | None = None,
    step: Callable[[str], None] | None = None,
) -> FusionResult:
    """Fuse two registered sources by the paper's rule (section 2, Eqs. 1-3).

    Parameters
    ----------
    a, b : ndarray
        The sources, uint8, (H, W) gray or (H, W, 3) colour, of the same size ((H, W, 1) is
        gray; the alpha of (H, W, 2) and (H, W, 4) is dropped, as for :func:`bafusion.fuse`).
    nets : FusionNets
        The initial and boundary nets (:func:`bafusion.load_model`,
        :func:`bafusion.fusion.load_nets_from_dir`).
    params : FusionParams or mapping, optional
        Every constant of the rule; the defaults are the shipped configuration. A mapping of
        its fields (``{"l": 4}``) is checked like ``params.yaml``'s; None: the defaults.
    names : tuple of str
        The two sources' names, for error messages.
    progress : bool or None
        A progress bar on stderr. None: when stderr is a terminal and the pair has 4
        megapixels or more; True: always; False: never.
    threads : int, "auto" or None
        CPU threads torch runs the nets on for this call (:func:`torch.set_num_threads`), torch's
        setting restored afterwards. None: torch's setting as it is (what the caller set with
        :func:`torch.set_num_threads`). ``"auto"``: as ``bafusion fuse`` without ``--threads``:
        torch's setting, lowered to the cores the 1-minute load average leaves free at this call
        (but for the part this process's earlier ``"auto"`` calls left in it) and to a
        container's CPU quota (:func:`bafusion.threads.auto_threads`: on a 2-core CPU
        with another process running, two threads wait for each other and run several times
        slower than one). The fused image does not depend on it.
    step : callable, optional
        Called with a line naming each step that takes seconds at camera size as it starts
        ("matching the exposures", "the nets at 640x427 px", "the maps at full size, 6000x4000
        px", "refining the boundary band, 89 tiles", "removing small regions and compositing"),
        for pairs of :data:`~bafusion.fusion.working.PROGRESS_MIN_PIXELS` or more (as
        :func:`fuse_stack` names them).

    Returns
    -------
    FusionResult
        The fused image and every map of the rule.

    Raises
    ------
    bafusion.errors.UserError
        Sources of different sizes (naming both), not uint8 arrays of those shapes, a bad
        parameter, ``nets`` that are not loaded nets, ``names`` that are not two str. As :func:`bafusion.fuse`, before any work:
        a pair whose estimated memory (:func:`bafusion.fusion.memory.fuse_need_mib`, from the
        arrays' shapes) exceeds by more than 10 % this process's cgroup memory limit and the
        swap it may use beyond it (the kernel would end the process, a notebook's kernel and its
        state, without a word); ``os.environ["BAFUSION_MEMORY_CHECK"] = "0"`` fuses anyway.

    Warns
    -----
    UserWarning
        As :func:`bafusion.fuse`: the pair fits the cgroup's memory limit only with swap (slow),
        or needs more memory than the machine has available now.

    Notes
    -----
    Pairs whose long side exceeds ``params.working_above`` are decided at a working
    resolution (:mod:`bafusion.fusion.working`); pairs whose long side is below
    ``params.working_min`` are decided upscaled to it
    (:func:`bafusion.fusion.working.decide_upscaled`); the others at their size.
    """
    from bafusion.threads import checked_threads, torch_threads

    # names=None or one name failed with TypeError/IndexError at the size check, naming nothing
    if isinstance(names, str) or not isinstance(names, Sequence) or len(names) != 2 \
            or not all(isinstance(n, (str, os.PathLike)) for n in names):
        raise InputTypeError(f"names: expected the two sources' names, a tuple of two str (for messages), got {names!r}")
    threads = checked_threads(threads)
    params = checked_params(params)
    _check_pair_memory(a, b, names, params)
    with torch_threads(threads):
        return _fuse_pair(a, b, nets, params, (str(names[0]), str(names[1])), progress, step=step)


def _check_pair_memory(a: object, b: object, names: tuple[str, str], params: FusionParams) -> None:
    """:func:`fuse_images`'s memory check, as :func:`bafusion.fuse`'s for arrays: a
    :class:`UserError` naming the pair over the cgroup limit and its swap
    (:func:`bafusion.fusion.memory.memory_problem`), a :class:`UserWarning` where it fits only
    by swapping or beyond what is available (:func:`bafusion.fusion.memory.memory_warning`).
    Arrays :func:`_fuse_pair` refuses (not uint8, not (H, W) or (H, W, C)) are left to it. The
    command line's fusions (and ``evaluate``'s, ``fuse-set``'s) call :func:`_fuse_pair`: ``fuse``
    and ``fuse-set`` check once a file or a run, ``evaluate`` not at all (README)."""
    import warnings

    if not all(isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim in (2, 3) for x in (a, b)):
        return
    from bafusion.fusion.memory import memory_problem, memory_warning

    why = memory_problem([a, b], params=params)  # type: ignore[list-item]
    if why:
        raise UserError(f"{names[0]}, {names[1]}: {why}")
    low = memory_warning([a, b], params=params)  # type: ignore[list-item]
    if low:
        warnings.warn(f"{names[0]}, {names[1]}: {low}", UserWarning, stacklevel=3)


def dtype_hint(x: np.ndarray, wide: bool = True) -> str:
    """How to convert an image array of another dtype than the sources' (said after the error):
    a float one by :func:`bafusion.io.to_uint8`, an integer one (int32, int64, uint32) by its
    values (astype(numpy.uint8) wraps 1000, a 16-bit file read as PIL mode "I", to 232); ``wide``:
    uint16 is taken too (:func:`bafusion.fuse`), else uint8 only (:func:`fuse_images`, the stack
    rules). ``""`` for other kinds."""
    if x.dtype.kind == "f":
        return (" (a float image: bafusion.io.to_uint8(x * 255) converts one in [0, 1], to_uint8(x) one "
                "on the [0, 255] scale)")
    if x.dtype.kind not in "iu":
        return ""
    lo, hi = (int(x.min()), int(x.max())) if x.size else (0, 0)
    if lo >= 0 and hi <= 255:
        return " (an integer image of 8-bit values: x.astype(numpy.uint8))"
    if wide and lo >= 0 and hi <= 65535:
        return (f" (an integer image of values up to {hi}: x.astype(numpy.uint16), a 16-bit image; "
                "x.astype(numpy.uint8) would wrap the values above 255)")
    top, to = (255, "uint8") if hi <= 255 or not wide else (65535, "uint16")
    return (f" (an integer image of values from {lo} to {hi}, outside 0..{top}: astype alone would wrap them; "
            f"clip or rescale first, e.g. numpy.clip(x, 0, {top}).astype(numpy.{to}))")


def _fuse_pair(a: np.ndarray, b: np.ndarray, nets: FusionNets, params: FusionParams | Mapping[str, Any] | None,
               names: tuple[str, str], progress: bool | None, note_patch: bool = True,
               step: Callable[[str], None] | None = None,
               grays: tuple[np.ndarray, np.ndarray] | None = None) -> FusionResult:
    """:func:`fuse_images` on torch's threads as they are set (the command line sets them).
    ``note_patch`` False: no :func:`patch_note` (a chain's steps: :func:`fuse_stack` notes the
    stack once). ``step``: called with a line naming each step that takes seconds at camera
    size as it starts (matching the exposures, the nets, the full-size maps, the band, the small
    regions), for pairs of :data:`~bafusion.fusion.working.PROGRESS_MIN_PIXELS` or more.
    ``grays``: the (A, B) grays the nets score, already at one exposure (a chain's step of three or
    more shots: :func:`fuse_stack` maps every shot onto one reference); no exposure matching then."""
    params = checked_params(params)
    _check_nets(nets)
    a, b = source_channels(a, names[0]), source_channels(b, names[1])
    check_same_size(a, b, *names)
    for x, name in ((a, names[0]), (b, names[1])):
        if x.dtype != np.uint8:
            raise InputTypeError(f"{name}: sources must be uint8 images, got {x.dtype}{dtype_hint(x, wide=False)}")
    both_colour = a.ndim == 3 and b.ndim == 3  # a gray shot beside a colour one: noted apart
    a, b = _match_channels(a, b)
    t_pre: dict[str, float] = {}  # counted in the fusing time: a camera-size pair's seconds
    # a log heard nothing from "fusing" to "writing" (48 s for a 24 MP pair under load): each step said
    # working's constant as it is now: a copy taken at this module's (lazy) first import kept a
    # value a caller had lowered for a while (a test's monkeypatch) for the rest of the process
    camera_size = a.shape[0] * a.shape[1] >= _working.PROGRESS_MIN_PIXELS
    say = step if step is not None and camera_size else (lambda text: None)
    t0 = time.perf_counter()
    if grays is None:
        ga, gb = side_by_side([lambda: to_gray_u8(a), lambda: to_gray_u8(b)])  # on the command's threads
    else:  # a chain's step: the grays matched already, onto the stack's reference shot
        ga, gb = grays
    t_pre["gray"] = time.perf_counter() - t0
    if params.exposure_match != "none" and grays is None:  # the nets score A and B at one exposure
        t0 = time.perf_counter()
        say("matching the exposures")
        with progress_bar(MATCH_STEPS, ga.size, progress, desc="matching exposure") as bar:  # as the fusion's bar
            ga, gb = match_pair(ga, gb, params.exposure_match, step=params.exposure_fit_step, bar=bar)
        t_pre["exposure"] = time.perf_counter() - t0
    if params.noise_match:  # the nets score both shots at one noise level
        t0 = time.perf_counter()
        say("matching the noise levels")
        ga, gb, _ = match_noise(ga, gb)
        t_pre["noise"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    gains = colour_gains(a, b)
    notes = []
    if params.match_output_exposure:  # B's pixels at A's exposure and colour: no seam of two exposures
        b = apply_gains(b, gains)
    else:
        note = exposure_note(gains, names, OUTPUT_EXPOSURE_OPTION, colour=both_colour)
        notes += [note] if note else []
    t_pre["colour"] = time.perf_counter() - t0
    note = patch_note(ga.shape, params, nets.patch_initial, names) if note_patch else None
    notes += [note] if note else []
    note = scales_note(ga.shape, params, nets.patch_initial) if note_patch else None  # a chain: once, by fuse_stack
    notes += [note] if note else []
    with contextlib.ExitStack() as held:
        bar = None
        if uses_working(ga.shape, params):
            # one bar for the decision and the small regions (a 24 MP pair's last 4 s), each step
            # advancing it by its share of the time for the pair's size (working.FUSING_STEP_COST)
            bar = held.enter_context(progress_bar(len(FUSING_STEP_COST), ga.size, progress, fractional=True))
            s0, mean, near, s1, t = decide_working(ga, gb, nets, params, bar=bar, step=say)
        elif uses_upscale(ga.shape, params):
            with progress_bar(2, ga.size, progress) as bar2:  # shown only when asked for: the pair is small
                bar2.set_postfix_str("initial net (upscaled)")
                s0, mean, near, s1, t = decide_upscaled(ga, gb, nets, params, bar=bar2)
        else:
            with progress_bar(2, ga.size, progress) as bar2:  # shown for large pairs fused at full size
                bar2.set_postfix_str("initial net")
                s0, mean, near, s1, t = decide(ga, gb, nets, params, bar=bar2)
        t0 = time.perf_counter()
        say("removing small regions and compositing")
        if bar is not None:
            bar.set_postfix_str("small regions")
        dm_raw = s1 > params.threshold
        dm = clean_decision(dm_raw, s0, params)
        fused = fuse_with_map(a, b, dm)
        t["post"] = time.perf_counter() - t0
        if bar is not None:
            bar.update(bar.total - bar.n)
    return FusionResult(fused, s0, mean, near, s1, dm_raw, dm, {**t_pre, **t}, notes,
                        gains if params.match_output_exposure else None)


def fusion_name(names: Sequence[str]) -> str:
    """How a chain's step names its A, the fusion of the shots ``names`` (the first alone: its
    name): "the fusion of a.png and b.png", "... of a.png, b.png and c.png", beyond four shots
    "the fusion of the 5 shots a.png to e.png"."""
    names = [str(n) for n in names]
    if len(names) == 1:
        return names[0]
    if len(names) > 4:
        return f"the fusion of the {len(names)} shots {names[0]} to {names[-1]}"
    return f"the fusion of {', '.join(names[:-1])} and {names[-1]}"


def _slim(res: FusionResult) -> FusionResult:
    """``res`` with only what a stack's fusion reads of an earlier step (:func:`fuse_stack`'s
    ``keep_maps`` False): its decision, gains, seconds and notes; the maps None."""
    return FusionResult(None, None, None, None, None, None, res.decision, res.seconds,  # type: ignore[arg-type]
                        res.notes, res.gains)


def fuse_stack(
    images: Sequence[np.ndarray], nets: FusionNets, params: FusionParams | Mapping[str, Any] | None = None,
    names: Sequence[str] = (), progress: bool | None = None, step: Callable[[str], None] | None = None,
    keep_maps: bool = True, on_step: Callable[[int, FusionResult], None] | None = None,
) -> list[FusionResult]:
    """Fuse a focal stack one into the next (the "chain" stack rule).

    ``F1 = fuse(I1, I2)``, ``Fk = fuse(F(k-1), I(k+1))``; the joint rule is
    :func:`bafusion.fusion.stack.fuse_stack_joint`. All sizes and dtypes are checked before any work.

    Exposure matching (``params.exposure_match`` other than "none") of three or more shots maps
    every shot's gray onto one reference before any step (:func:`bafusion.fusion.exposure.stack_exposure`:
    the middle shot's exposure, or with ``brighter`` the brightest shot's; a flat one there, onto
    which no fit is reliable, passed over for the next); each step scores its A
    as the composite of the matched grays of the shots it took and its B as the new shot's matched
    gray. Each new shot used to be fitted to the fusion so far, a patchwork of the earlier
    shots' exposures, which cost accuracy under a steady exposure drift across the stack
    (BENCHMARKS.md, "Exposure drift across a stack"). Two shots are the pair fusion, bit for
    bit; with "none" (the paper preset's) each step is :func:`fuse_images` of the fusion so far
    and the next shot, as before. The fused pixels are the shots' own (or, with
    ``match_output_exposure``, brought to A's exposure per step, as before).

    Parameters
    ----------
    images : sequence of ndarray
        Two or more registered uint8 shots of one size.
    nets : FusionNets
        As for :func:`fuse_images`.
    params : FusionParams or mapping, optional
        As for :func:`fuse_images` (None: the defaults).
    names : sequence of str
        The shots' names, for error messages and step lines; a shot without one (fewer names
        than shots) is ``image <n>``.
    progress : bool or None
        As for :func:`fuse_images`.
    step : callable, optional
        Called with a line naming each step as it starts ("step 2/9: fusing c.png into the
        fusion of a.png and b.png"; the shots by file name), for three or more shots: a long
        stack said nothing from its start to its end; and, for shots of
        :data:`~bafusion.fusion.working.PROGRESS_MIN_PIXELS` or more, with each step of a pair's
        fusion that takes seconds at camera size ("matching the exposures": for three or more
        shots once, before step 1, "matching the exposures of the 5 shots"; "the nets at
        640x427 px", "the maps at full size, 6000x4000 px", "refining the boundary band, 89
        tiles", "removing small regions and compositing").
    keep_maps : bool
        Keep every step's maps (the default). False: each step before the last keeps only its
        ``decision``, ``gains``, ``seconds`` and ``notes`` (what the stack's fusion, its
        shot-index map :func:`bafusion.fusion.stack.chain_index` and a 16-bit composition
        read); its ``fused``, score maps, ``near_boundary`` and ``decision_raw`` are None,
        freed once the step is done instead of held to the end (about 18 bytes a pixel a
        step: 8 shots of 5.3 MP peaked at 1287 MiB with them, 835 MiB without; BENCHMARKS.md,
        "Memory of a stack"). ``bafusion fuse`` (with ``--save-maps`` too, its maps encoded
        by ``on_step``), ``fuse-dir`` and :func:`bafusion.fuse` fuse so.
    on_step : callable, optional
        Called with each step's index (0: the first two shots) and its whole result, every map
        held, as the step is done, before ``keep_maps`` False lets its maps go: ``bafusion fuse
        --save-maps`` encodes the step's maps then (:func:`bafusion.fusion.maps.render_maps`)
        instead of holding every step's maps to the end (8 shots of 5.3 MP: 1664 MiB peak
        before, BENCHMARKS.md "Memory of a stack").

    Returns
    -------
    list of FusionResult
        One per step; the last one's ``fused`` is the stack's fusion. A stack less than the
        nets' patch high or wide is noted once, in the first step's ``notes``
        (:func:`bafusion.fusion.working.patch_note`), not by each step.
    """
    if len(images) < 2:
        raise UserError("fusion needs at least two source images")
    # the shots without a name (fewer names than shots) are named by their place
    names = [*names[: len(images)], *(f"image {i + 1}" for i in range(len(names), len(images)))]
    params = checked_params(params)
    _check_nets(nets)
    images = [source_channels(im, names[i]) for i, im in enumerate(images)]
    for i in range(1, len(images)):
        check_same_size(images[0], images[i], names[0], names[i])
    for x, name in zip(images, names):  # every shot before any work, as its step would (_fuse_pair)
        if x.dtype != np.uint8:
            raise InputTypeError(f"{name}: sources must be uint8 images, got {x.dtype}{dtype_hint(x, wide=False)}")
    results = []
    cur = images[0]
    short = [Path(n).name for n in names]
    # three or more shots: every gray scored at one fixed reference's exposure (exposure.stack_exposure),
    # not each new shot fitted to the running fusion (a patchwork of the earlier shots' exposures)
    fixed, t_match, cur_gray = None, 0.0, None
    if params.exposure_match != "none" and len(images) > 2:
        t0 = time.perf_counter()
        if step is not None and images[0].shape[0] * images[0].shape[1] >= _working.PROGRESS_MIN_PIXELS:
            step(f"matching the exposures of the {len(images)} shots")
        fixed = stack_exposure([to_gray_u8(im) for im in images], params.exposure_match, step=params.exposure_fit_step)
        cur_gray = fixed.gray(0, to_gray_u8(images[0]))
        t_match = time.perf_counter() - t0
    for i in range(1, len(images)):
        if step is not None and len(images) > 2:
            step(f"step {i}/{len(images) - 1}: fusing {short[i]} into {fusion_name(short[:i])}")
        grays = None
        if fixed is not None:
            grays = (cur_gray, fixed.gray(i, to_gray_u8(images[i])))
        res = _fuse_pair(cur, images[i], nets, params, (fusion_name(names[:i]), names[i]), progress, note_patch=False,
                         step=step, grays=grays)
        if fixed is not None:  # the next step's A, scored as the composite of the matched grays
            cur_gray = np.where(res.decision, cur_gray, grays[1])
            if i == 1:
                res.seconds["exposure"] = res.seconds.get("exposure", 0.0) + t_match
        cur = res.fused  # the next step's A
        if on_step is not None:
            on_step(i - 1, res)
        # not kept: this step's maps freed now, not held through the next steps (and `res` let go)
        results.append(res if keep_maps or i == len(images) - 1 else _slim(res))
        del res
    # one note for the stack (its steps all have its size), not one a step: "the 5 shots a.png to e.png"
    note = patch_note(images[0].shape, params, nets.patch_initial, names)
    results[0].notes.extend([note] if note else [])
    note = scales_note(images[0].shape, params, nets.patch_initial)
    results[0].notes.extend([note] if note else [])
    return results

