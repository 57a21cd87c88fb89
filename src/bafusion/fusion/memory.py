"""How much memory a fusion needs, and what to say when it runs out (measured: README,
"Memory"; BENCHMARKS.md, "Camera resolution")."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

from bafusion import cgroup
from bafusion.cgroup import controller_levels

#: Peak memory of ``bafusion fuse`` for a pair decided at the working resolution (pairs above
#: ``fuse.working_above``): a base (Python, torch, the nets) and MiB per megapixel of the pair
#: (its full-size sources, as float64, and the output). Measured with ``/usr/bin/time -v``
#: (maximum resident set size), ``--threads 1``, CPU, single runs on a shared machine: JPEG pairs
#: whose shots differ by 0.3 EV (the camera probe's 24 MP handheld pair and copies of it resized)
#: 670 MiB at 6 MP, 916 at 13.5, 1301 at 24 (2091 at 45.4 MP in the probe, 2026-12-06): 35 MiB
#: per megapixel over 460, rounded up to 36 (2094 predicted at 45.4 MP). A registered Lytro PNG pair upscaled to
#: 2000x1500 needed less (468 MiB), and 750 MiB at 4000x3000.
BASE_MIB = 460
MIB_PER_MEGAPIXEL = 36

#: Added for a pair decided at its full size (:func:`bafusion.fusion.working.uses_working` false:
#: its long side up to ``fuse.working_above``, a strip narrower than a 16:9 frame's short side,
#: ``--working-side 0``), where the nets and the decision's maps run on the full-size pair:
#: this many MiB per megapixel up to one megapixel, the whole of it from one on. Measured as
#: :data:`BASE_MIB` (session 33, one run each, loaded 2-core machine, the default model, JPEG
#: pairs made from lytro-05): 481 MiB at 520x520 (0.27 MP), 513 at 724x724, 678 at 1024x1024,
#: and strips 300 px high of 4000, 8000 and 16000 px (1.2, 2.4 and 4.8 MP, decided at full size
#: since the panorama rule) 683, 671 and 753 MiB, where :data:`BASE_MIB` and
#: :data:`MIB_PER_MEGAPIXEL` alone predict 470, 479, 498, 503, 546 and 633 (the peaks of the 1024x1024
#: pair and the strips 19-36 % above these); with this 524, 584, 698, 703, 746 and 833 (3-14 % above).
#: Beyond 4.8 MP at full size (``--working-side 0`` of a camera photo) not measured.
FULL_SIZE_MIB = 200

#: Peak memory of the alignment (``--align``): both shots' float64 gray copies and pyramids, the
#: warped shot, the masks; the fusion's nets are not loaded yet, so the peak of an aligned fusion
#: is the larger of the two. Measured as above, ``--align similarity`` (with the estimate's
#: anti-aliasing blur, :data:`bafusion.fusion.align._ANTIALIAS`): 800 MiB at 6 MP, 1477 at 13.5,
#: 2388 at 24 (1.2x, 1.6x and 1.8x the fusion without it): 88 MiB per megapixel over 271,
#: rounded up to 280 + 89.
ALIGN_BASE_MIB = 280
ALIGN_MIB_PER_MEGAPIXEL = 89
#: ... for each shot of a stack beyond two: its full-size source and, of each earlier step, what
#: the fusion reads (the chain's decision, gains and notes, :func:`bafusion.fusion.rule.fuse_stack`
#: ``keep_maps=False``; the joint rule's logit sums at the working size). Measured as
#: :data:`BASE_MIB` (session 38, one run each, loaded 2-core machine; shots of a focus sweep
#: upscaled to 2304x2304 PNG, 5.3 MP): the chain 683 MiB at 3 shots and 835 at 8 (+30 MiB a shot,
#: 5.7 MiB per megapixel), the joint rule 843 at 8; rounded up to 8 (694 and 906 predicted, 2-8 %
#: above; 16 before, an estimate: 1161 at 8 shots, 39 % above).
MIB_PER_MEGAPIXEL_SHOT = 8
#: With ``--save-maps`` the chain encodes each step's maps and Fig. 3 as PNG as the step is done
#: and lets the step's arrays go (:func:`bafusion.fusion.maps.render_maps`; since session 39: it
#: held every step's maps, about 18 bytes a pixel, to the end), so each shot beyond two adds what
#: it adds without the maps (:data:`MIB_PER_MEGAPIXEL_SHOT`) and its step's encoded files: this
#: many MiB per megapixel in all, in place of :data:`MIB_PER_MEGAPIXEL_SHOT`. Measured as
#: :data:`MIB_PER_MEGAPIXEL_SHOT` (``fuse --stack-rule chain --threads 1 --save-maps``, session 39,
#: one run each): 950 MiB at 3 shots and 1128 at 8 (+36 MiB a shot, 6.7 MiB per megapixel; the
#: files of a step 0.87 bytes a pixel for these upscaled shots, 1.77 for a real photo pair,
#: tsai-04), so 8 and 2 for the files: 10 (1075 and 1340 MiB predicted over the pair's 1022,
#: 13 and 19 % above). Before: 1050, 1664 (1667 in session 38) and 2462 MiB at 3, 8 and 15 shots,
#: +124 MiB a shot from 3 to 8. The joint rule keeps no per-step maps:
#: :data:`JOINT_MAPS_MIB_PER_MEGAPIXEL`.
MAPS_MIB_PER_MEGAPIXEL_SHOT = 10
#: With ``--save-maps`` and the joint rule (``--stack-rule joint``, three or more shots), added once
#: to the stack's estimate without maps: it writes five maps of the whole stack
#: (:func:`bafusion.fusion.stack.save_stack_maps`: gray index maps, the band, the index in colour),
#: no per-step maps nor Fig. 3. Measured as :data:`MIB_PER_MEGAPIXEL_SHOT` (session 38): 8 shots
#: of 5.3 MP peaked at 875 MiB with ``--save-maps``, 843 without: 6 MiB per megapixel, rounded up
#: to 8 (948 MiB predicted, 8 % above; the chain's estimate, which it had before session 39,
#: 1733); 3 shots with ``--save-maps``: 701 MiB (session 39, one run), 736 predicted (1096 before).
JOINT_MAPS_MIB_PER_MEGAPIXEL = 8
#: Added to :data:`MIB_PER_MEGAPIXEL` when a source has more than 8 bits per sample: the uint16
#: copies of the sources and of the output (:attr:`bafusion.io.SourceSet.full`). Measured as above
#: (probeBig, session 32, one run): a 24 MP RGB 16-bit TIFF pair peaked at 1542 MiB, the same
#: pair as JPEG at 1290 MiB: 10.5 MiB per megapixel more, rounded up to 11.
DEEP_MIB_PER_MEGAPIXEL = 11
#: ... for each shot of a stack beyond two of more than 8 bits (computed, not measured: its uint16
#: RGB copy, 6 bytes a pixel).
DEEP_MIB_PER_MEGAPIXEL_SHOT = 6

#: Peak memory of ``--save-maps`` (:func:`bafusion.fusion.maps.save_maps`, after the fusion, with
#: its sources, result and maps held): the nine map PNGs and Fig. 3 (its panels drawn reduced to
#: twice the panel, :func:`bafusion.fusion.maps.area_reduce`). Measured as :data:`BASE_MIB`
#: (``fuse --threads 1 --save-maps``, ``/usr/bin/time -v``, single runs, 2026-12-07): JPEG pairs
#: made from lytro-05, 785 MiB at 6.0 MP and 960 at 12 MP (the fusion alone 642 and 848), and
#: 972 MiB for a 4096x3072 pair made from tsai-03 (866 alone): 29 MiB per megapixel over 611,
#: rounded up to 620 + 30; a pair's peak with --save-maps is the larger of this and the
#: fusion's. It overestimates small pairs, whose Fig. 3 is small too (the 520x520 lytro-05
#: pair: 492 MiB, 480 without the maps; 658 predicted). Stacks: :data:`MAPS_MIB_PER_MEGAPIXEL_SHOT`.
#: Raised from 620 for ``--threads 2`` (session 34: gray conversions, exposure matching's
#: filters and the band's tiles side by side, :func:`bafusion.threads.side_by_side`): the 12 MP
#: lytro-05 pair with ``--save-maps`` peaked at 978 and 991 MiB with two threads, 878 and 893
#: with one (single runs, alternating, load 12-17; 980 predicted before, 1010 now).
MAPS_BASE_MIB = 650
MAPS_MIB_PER_MEGAPIXEL = 30
#: Added to :data:`MAPS_MIB_PER_MEGAPIXEL` where Fig. 3 draws the maps as they are
#: (:func:`bafusion.fusion.maps.fig3_factor` 1: a map less than four times its panel both ways,
#: the panel 640 px wide and up to 960 high: up to 2559x2559 or 2560x1919, a portrait one up to
#: 2559x3840, 9.8 MP, W x H; the shot's size as fused, turned by its EXIF orientation), since
#: matplotlib then resamples the full-size maps itself.
#: The JPEG pairs above were reduced by 2 or more. Measured as :data:`MAPS_BASE_MIB` (session 39,
#: ``fuse --threads 1 --save-maps``, one run each, loaded 2-core machine; PNG pairs upscaled from a
#: synthetic stack): 2304x2304 (5.3 MP) 919 MiB, 2550x2550 (6.5 MP, near the largest square drawn unreduced)
#: 1075 MiB, where 809 and 845 were predicted (12-21 % below); 1800x1350 (2.4 MP) 621 MiB
#: (723 predicted). 36 MiB per megapixel at 6.5 MP over :data:`MAPS_BASE_MIB` and
#: :data:`MAPS_MIB_PER_MEGAPIXEL`, rounded up to 40 (1105 and 1021 MiB predicted, 3 and 11 % above).
#: Figure alone (:func:`bafusion.fusion.maps.figure_maps` of made-up maps): +292 MiB at 2304x2304,
#: +31 MiB at 2560x2560 (reduced by 2). Portrait maps above 6.5 MP (up to 9.8) not measured.
FIG3_FULL_MIB_PER_MEGAPIXEL = 40


#: Address space (MiB) needed to load torch at all: building the options of ``fuse``, ``fuse-set``,
#: ``fuse-dir``, ``train`` and ``ensemble`` (their modules import torch), so also their ``--help``
#: and their argument errors, and ``bafusion --help``. Measured under ``prlimit --as`` (torch
#: 2.13 CPU, Python 3.11, x86-64): ``fuse --help`` failed at 759 MiB and worked from 768 MiB
#: (``train --help`` from 635); below, loading fails with a traceback, a C++ abort
#: (std::bad_alloc), OpenBLAS's message, "cannot allocate memory for thread-local data" or a
#: hang. Set at the measured 768 MiB plus a margin of 64 MiB (another torch, other libraries).
MIN_ADDRESS_SPACE_LOAD_MIB = 768 + 64

#: Address space (MiB) a command that runs numpy, scipy and h5py without torch (``count``,
#: ``patches`` and the other data commands of the pipeline, ``metrics``, ``baseline``, the
#: ``download-*`` commands; ``preset``'s check of the params loads numpy too) needs to run at all,
#: checked once its arguments are parsed, and before they are for the modules whose options load
#: numpy and scipy (``metrics``, ``baseline``, ``download-*``: their ``--help`` hung at 210-250
#: MiB, scipy's OpenBLAS retrying its allocations, and worked from 300). Measured under ``prlimit --as`` on a 2-core x86-64 machine (numpy 2,
#: OpenBLAS, Python 3.11), ``bafusion count``: at 150 MiB OpenBLAS could not start its threads
#: and raised SIGINT while numpy loaded ("interrupted", status 130), at 100 MiB it aborted with
#: its own message only, at 180-200 MiB loading scipy failed (one line), at 210-250 MiB it hung
#: (SIGTERM did not end it), at 300 MiB it failed with "SystemError: error return without
#: exception set"; it worked from 320 MiB, as ``patches`` of the toy project did. Set at 320
#: MiB plus a margin of 64; OpenBLAS maps more for each thread, so a machine of more cores needs
#: more (not measured).
MIN_ADDRESS_SPACE_NUMPY_MIB = 320 + 64

#: Address space (MiB) a command that runs torch (``fuse``, ``train``, ``evaluate``, ...) needs to
#: run at all, checked once its arguments are parsed (``--help`` and argument errors do not need
#: it): measured under ``prlimit --as``, ``fuse`` of a 64x64 pair (``--threads`` 1 or 2) failed at
#: 917 MiB and worked from 922 MiB (each thread beyond two takes more: 1227 MiB with
#: ``--threads 4``, 1425 with 8); torch maps far more virtual memory than it keeps resident, so
#: an address-space limit must be well above the resident estimates below. Set at the measured
#: 922 MiB plus a margin of 64 MiB; below it the command refuses to start (it would run out of
#: memory anyway, loading the rest of its libraries or at its first tensor).
MIN_ADDRESS_SPACE_MIB = 922 + 64


def address_space_limit_mib() -> int | None:
    """The address-space limit (``ulimit -v``, ``prlimit --as``: RLIMIT_AS, soft) in MiB, or
    None when there is none (or the platform has no such limit)."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, AttributeError, OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY or soft < 0:
        return None
    return int(soft // 2**20)


def address_space_note() -> str:
    """A clause on the address-space limit, when one is set: it counts the virtual memory that
    torch reserves, far more than the resident memory the estimates give ("" when none)."""
    limit = address_space_limit_mib()
    if limit is None:
        return ""
    return (f"an address-space limit (ulimit -v / prlimit --as) of {limit} MiB is set: it counts the virtual "
            f"memory torch reserves, far more than the resident memory estimated here (at least "
            f"{MIN_ADDRESS_SPACE_MIB} MiB only to start), so raise or lift it rather than set it to the estimate "
            "(a container's or cgroup's limit, on resident memory, is what the estimate is for)")


def _source(p: object) -> object:
    """A shot as the estimate reads it: a path, or an array (the Python API's) as it is."""
    return p if hasattr(p, "shape") else Path(p)  # type: ignore[arg-type]


def _regular_file(path: object) -> bool:
    """Whether ``path`` is a regular file (a link to one too), whose header may be read: opening a
    named pipe (FIFO) waits for a writer, and ``bafusion fuse pipe.png b.png`` (and
    ``bafusion.fuse()``) hung in the estimate, before the reader could say "not a regular file"."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)  # type: ignore[arg-type]
    except (OSError, TypeError, ValueError):
        return False


def _megapixels(path: Path) -> float:
    shape = getattr(path, "shape", None)
    if shape is not None:  # an array (bafusion.fuse): (H, W) or (H, W, C)
        return shape[0] * shape[1] / 1e6 if len(shape) >= 2 else 0.0
    from bafusion.io.formats import _quiet_pillow, pillow_open

    if not _regular_file(path):  # the reader names it
        return 0.0
    try:
        with _quiet_pillow(), pillow_open(path) as im:  # a 100 MP photo: no raw bomb warning
            w, h = im.size
    except Exception:  # noqa: BLE001 - an estimate only
        return 0.0
    return w * h / 1e6


def _deep(path: Path) -> bool:
    """Whether ``path`` holds more than 8 bits per sample (read as uint16 beside its uint8
    version), from its header; False when that cannot be told (an estimate only)."""
    if hasattr(path, "dtype"):  # an array: uint16 has its full-depth copies
        return getattr(path.dtype, "itemsize", 1) > 1
    from bafusion.io.depth import _HIGH_MODES, _ppm_colour_maxval, _tiff_depth, png_depth
    from bafusion.io.formats import _quiet_pillow, pillow_open

    if not _regular_file(path):
        return False
    try:
        with _quiet_pillow(), pillow_open(path) as im:
            fmt, mode = im.format, im.mode
            tiff = _tiff_depth(im) if fmt == "TIFF" else None
            if _ppm_colour_maxval(im) is not None:  # a 16-bit colour PPM (Pillow's mode: RGB)
                return True
        if fmt == "PNG":
            png = png_depth(path)
            return png is not None and png[0] > 8
    except Exception:  # noqa: BLE001 - an estimate only
        return False
    return (tiff is not None and tiff[0] > 8 and mode != "F") or mode in _HIGH_MODES


def _shape(path: object) -> tuple[int, int] | None:
    """(H, W) of a shot as it is fused, by its header: turned by its EXIF orientation (a portrait
    phone shot stored landscape with orientation 6 is fused, and its maps drawn, portrait: Fig. 3
    draws a 2448x3264 map unreduced, a 3264x2448 one halved); an array: its shape. None when it
    cannot be read."""
    shape = getattr(path, "shape", None)
    if shape is not None:
        return (int(shape[0]), int(shape[1])) if len(shape) >= 2 else None
    from bafusion.io.formats import _quiet_pillow, header_orientation, pillow_open

    if not _regular_file(path):
        return None
    try:
        with _quiet_pillow(), pillow_open(path) as im:
            w, h = im.size
            if header_orientation(im, path) in (5, 6, 7, 8):  # turned by 90 degrees as read
                w, h = h, w
    except Exception:  # noqa: BLE001 - an estimate only
        return None
    return h, w


def _full_size(shots: Sequence[Path], params: object = None) -> bool:
    """Whether the largest of ``shots`` is decided at its full size by ``params`` (None: the
    defaults), :func:`bafusion.fusion.working.uses_working`; False where its size cannot be read."""
    shapes = [s for s in (_shape(_source(p)) for p in shots) if s is not None]
    if not shapes:
        return False
    try:  # loads torch: in the advice of a command that ran out of memory loading it, unknown
        from bafusion.fusion.params import FusionParams
        from bafusion.fusion.working import uses_working

        return not uses_working(max(shapes, key=lambda s: s[0] * s[1]), params or FusionParams())  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - an estimate only
        return False


def fuse_need_mib(shots: Sequence[Path], align: bool = False, save_maps: bool = False, *,
                  params: object = None) -> int | None:
    """The memory (MiB) that :data:`BASE_MIB` and :data:`MIB_PER_MEGAPIXEL` predict for fusing
    ``shots`` (with ``align``, the larger of that and the alignment's, :data:`ALIGN_BASE_MIB` and
    :data:`ALIGN_MIB_PER_MEGAPIXEL`; with ``save_maps``, the larger of that and the maps',
    :data:`MAPS_BASE_MIB` and :data:`MAPS_MIB_PER_MEGAPIXEL`), or ``None`` when their size
    cannot be read. Sources of more than 8 bits per sample add their uint16 copies
    (:data:`DEEP_MIB_PER_MEGAPIXEL`), a pair decided at its full size by ``params`` (a
    :class:`bafusion.fusion.FusionParams`; None: the defaults) its nets' and maps' share
    (:data:`FULL_SIZE_MIB`); each shot of a stack beyond two :data:`MIB_PER_MEGAPIXEL_SHOT` (with
    ``save_maps``, :data:`MAPS_MIB_PER_MEGAPIXEL_SHOT`; where Fig. 3 draws the maps unreduced, :data:`FIG3_FULL_MIB_PER_MEGAPIXEL` more per
    megapixel). A stack of three or more shots that ``params`` fuses by the joint rule
    (``stack_rule: joint``) writes five maps of the whole stack and no per-step maps nor Fig. 3:
    with ``save_maps``, :data:`JOINT_MAPS_MIB_PER_MEGAPIXEL` once instead. A shot may be an
    array (:func:`bafusion.fuse`'s): its shape and dtype for a file's header."""
    mp = max((_megapixels(_source(p)) for p in shots), default=0.0)
    if mp <= 0:
        return None
    deep = any(_deep(_source(p)) for p in shots)
    peak = BASE_MIB + (MIB_PER_MEGAPIXEL + (DEEP_MIB_PER_MEGAPIXEL if deep else 0)) * mp
    if _full_size(shots, params):
        peak += FULL_SIZE_MIB * min(mp, 1.0)
    if align:
        peak = max(peak, ALIGN_BASE_MIB + ALIGN_MIB_PER_MEGAPIXEL * mp)
    extra = max(len(shots) - 2, 0)
    joint = extra > 0 and _stack_rule(params) == "joint"
    if save_maps and joint:
        peak += JOINT_MAPS_MIB_PER_MEGAPIXEL * mp
    elif save_maps:
        per_mp = MAPS_MIB_PER_MEGAPIXEL + (FIG3_FULL_MIB_PER_MEGAPIXEL if _fig3_unreduced(shots) else 0)
        peak = max(peak, MAPS_BASE_MIB + per_mp * mp)
    maps_chain = save_maps and not joint
    shot = (MAPS_MIB_PER_MEGAPIXEL_SHOT if maps_chain else MIB_PER_MEGAPIXEL_SHOT) + (
        DEEP_MIB_PER_MEGAPIXEL_SHOT if deep else 0)
    return int(round(peak + shot * mp * extra))


def _stack_rule(params: object) -> str:
    """The stack rule of ``params`` (a :class:`bafusion.fusion.FusionParams` or a mapping of its
    fields; None: the defaults, the chain)."""
    rule = params.get("stack_rule") if isinstance(params, Mapping) else getattr(params, "stack_rule", None)
    return str(rule or "chain")


def _fig3_unreduced(shots: Sequence[Path]) -> bool:
    """Whether Fig. 3 of the largest of ``shots`` draws its maps as they are
    (:func:`bafusion.fusion.maps.fig3_factor` 1), so that matplotlib resamples them at full size
    (:data:`FIG3_FULL_MIB_PER_MEGAPIXEL`); False where no size can be read."""
    shapes = [s for s in (_shape(_source(p)) for p in shots) if s is not None]
    if not shapes:
        return False
    from bafusion.fusion.maps import fig3_factor

    return fig3_factor(max(shapes, key=lambda s: s[0] * s[1])) == 1


def fuse_advice(shots: Sequence[Path] = (), align: bool = False, save_maps: bool = False, *,
                maps_as: str = "--save-maps", params: object = None) -> str:
    """What lowers the memory of a fusion (``fuse``, ``fuse-dir``, ``fuse-set``, ``evaluate``):
    the full-size images dominate (a pair above ``fuse.working_above`` is decided at
    ``fuse.working_side``, so the nets and their tiles take little), so smaller images or more
    free memory; with ``shots``, what they need (``align``: aligned, ``save_maps``: with
    ``--save-maps``, :func:`fuse_need_mib`; ``maps_as`` names the maps where the command has no
    such option: ``fuse-set`` writes them always)."""
    need = fuse_need_mib(shots, align, save_maps, params=params) if shots else None
    mp = max((_megapixels(_source(p)) for p in shots), default=0.0) if shots else 0.0
    options = " and ".join(o for o, on in (("--align", align), (maps_as, save_maps)) if on)
    size = (f"a {mp:.3g}-megapixel {'pair' if len(shots) == 2 else f'stack of {len(shots)}'} needs about "
            f"{need} MiB{f' with {options}' if options else ''}; " if need else "")
    aligned = (f", ~{ALIGN_MIB_PER_MEGAPIXEL} with --align (the alignment's copies of the shots; "
               "--align none needs less)" if align else "")
    return (f"{size}the full-size images take ~{MIB_PER_MEGAPIXEL} MiB per megapixel{aligned} (the nets' tiles, "
            "--tile and fuse.max_tile, are not what fills it): free memory or downscale the shots, and keep "
            "fuse.working_side on (--working-side 0 fuses at full size and needs far more)")


#: Where :func:`memory_limit` reads the process's cgroup (``/proc/self/cgroup``) and the cgroup
#: file system's mount (tests point them at a fake tree).
PROC_CGROUP = cgroup.PROC_CGROUP
CGROUP_ROOT = cgroup.CGROUP_ROOT
#: ``/proc/meminfo``, read by :func:`available_mib`.
PROC_MEMINFO = "/proc/meminfo"
#: The environment variable that, set to ``0``, fuses even where :func:`check_memory` refuses.
MEMORY_CHECK_ENV = "BAFUSION_MEMORY_CHECK"
#: :func:`check_memory` refuses only an estimate above this many times the limit: the estimate is
#: 1-3 % above the measured peak of JPEG pairs (1324 MiB estimated, 1290 measured at 24 MP; 2071
#: and 2056 at 45 MP) and up to ~20 % above for PNG pairs (568 and 468 at 3 MP), so 10 % leaves a
#: pair that may fit its chance; one that needs 1.0-1.1 times the limit is still ended by the kernel.
MEMORY_MARGIN = 1.10


def _limit_file(path: Path) -> int | None:
    """The bytes a cgroup's ``memory.max`` / ``memory.limit_in_bytes`` holds; None for none
    (``max``, v1's "unlimited" 2**63 rounded to a page) or a file that cannot be read."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, ValueError):
        return None
    if not text.isdigit() or int(text) >= 1 << 60:
        return None
    return int(text)


def _levels(proc_cgroup: str | None, root: str | None) -> list[tuple[Path, bool]]:
    """The memory controller's folders of this process's cgroup and of its parents, each with
    whether it is cgroup v1's (none without a cgroup file): :func:`bafusion.cgroup.controller_levels`
    on this module's :data:`PROC_CGROUP` and :data:`CGROUP_ROOT`."""
    return controller_levels("memory", PROC_CGROUP if proc_cgroup is None else proc_cgroup,
                             CGROUP_ROOT if root is None else root)


def memory_limit(proc_cgroup: str | None = None, root: str | None = None) -> tuple[int, str] | None:
    """The memory limit (MiB) of this process's cgroup and the file that sets it: cgroup v2's
    ``memory.max``, v1's ``memory.limit_in_bytes``, the smallest of the process's cgroup and its
    parents' (a limit applies to every cgroup under it); None where there is none (or no cgroup:
    not Linux). Docker's ``--memory``, SLURM's ``--mem`` and systemd's ``MemoryMax`` set it; the
    kernel ends a process that goes over it and cannot swap the rest (:func:`swap_room`) with
    SIGKILL (exit status 137), without a message.

    Parameters
    ----------
    proc_cgroup, root : str, optional
        As for :func:`bafusion.cgroup.controller_levels` (default :data:`PROC_CGROUP`, :data:`CGROUP_ROOT`).

    Returns
    -------
    tuple of (int, str), or None
        The limit in MiB (rounded down) and the file it was read from.
    """
    found: list[tuple[int, str]] = []
    for where, v1 in _levels(proc_cgroup, root):
        f = where / ("memory.limit_in_bytes" if v1 else "memory.max")
        limit = _limit_file(f)
        if limit is not None:
            found.append((limit, str(f)))
    if not found:
        return None
    limit, where_set = min(found)
    return limit >> 20, where_set


def _swap_free_mib(meminfo: str | None) -> int:
    """The machine's free swap (MiB, ``SwapFree`` of ``/proc/meminfo``); 0 where it is not told."""
    try:
        for line in Path(PROC_MEMINFO if meminfo is None else meminfo).read_text(encoding="utf-8").splitlines():
            if line.startswith("SwapFree:"):
                return int(line.split()[1]) >> 10  # kB
    except (OSError, ValueError, IndexError):
        return 0
    return 0


def swap_room(proc_cgroup: str | None = None, root: str | None = None,
              meminfo: str | None = None) -> tuple[int, str] | None:
    """The swap (MiB) this process's cgroup may use beyond its memory limit (:func:`memory_limit`),
    and what sets it: over the limit the kernel first swaps the cgroup's pages out, and ends the
    process only when that is full too. cgroup v2: ``memory.swap.max`` (the smallest of the
    cgroup's and its parents'; Docker's ``--memory-swap`` minus ``--memory``, by default as much
    as ``--memory``); v1: ``memory.memsw.limit_in_bytes`` (memory and swap together) less the
    memory limit, unbounded where swap is not accounted (no such file), and none where the
    cgroup's ``memory.swappiness`` is 0 (v1's limit reclaim then swaps nothing: the kernel ends
    the process at the limit, swap or not; that of the process's own cgroup, or of the nearest
    parent that has the file, as inside a container); either way at most the machine's free
    swap (``SwapFree``: 0 on a machine without swap). None where there is no memory limit.

    Parameters
    ----------
    proc_cgroup, root : str, optional
        As for :func:`bafusion.cgroup.controller_levels` (default :data:`PROC_CGROUP`, :data:`CGROUP_ROOT`).
    meminfo : str, optional
        The file that tells the machine's free swap (default :data:`PROC_MEMINFO`).

    Returns
    -------
    tuple of (int, str), or None
        The swap in MiB (rounded down; 0 for none) and what bounds it (a file, or
        ``/proc/meminfo SwapFree``).
    """
    limit = memory_limit(proc_cgroup, root)
    if limit is None:
        return None
    bounds: list[tuple[int, str]] = [(_swap_free_mib(meminfo), f"{PROC_MEMINFO if meminfo is None else meminfo} SwapFree")]
    swappiness_read = False
    for where, v1 in _levels(proc_cgroup, root):
        f = where / ("memory.memsw.limit_in_bytes" if v1 else "memory.swap.max")
        value = _limit_file(f)
        if value is not None:
            bounds.append((max((value >> 20) - limit[0], 0) if v1 else value >> 20, str(f)))
        if v1 and not swappiness_read:  # the cgroup's own (the nearest that has one): its pages' reclaim
            s = where / "memory.swappiness"
            swappiness = _limit_file(s)
            if swappiness is not None:
                swappiness_read = True
                if swappiness == 0:
                    bounds.append((0, str(s)))
    return min(bounds)


def available_mib(meminfo: str | None = None) -> int | None:
    """The memory (MiB) the kernel says is available for a new process without swapping
    (``MemAvailable`` of ``/proc/meminfo``), or None where it is not told (not Linux).

    Parameters
    ----------
    meminfo : str, optional
        The file to read (default :data:`PROC_MEMINFO`).

    Returns
    -------
    int or None
    """
    try:
        for line in Path(PROC_MEMINFO if meminfo is None else meminfo).read_text(encoding="utf-8").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) >> 10  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _resident_mib() -> int:
    """This process's resident memory (MiB): already part of what the estimate counts (Python,
    torch), so not needed again from what is available."""
    try:
        pages = int(Path("/proc/self/statm").read_text(encoding="utf-8").split()[1])
        return (pages * os.sysconf("SC_PAGE_SIZE")) >> 20
    except (OSError, ValueError, IndexError, AttributeError):
        return 0


def _over_limit(need: int) -> tuple[tuple[int, str], tuple[int, str]] | None:
    """This process's cgroup memory limit and the swap it may use beyond it (:func:`memory_limit`,
    :func:`swap_room`) when ``need`` MiB is more than :data:`MEMORY_MARGIN` times the limit;
    None when it is not, or when there is no limit."""
    limit = memory_limit()
    if limit is None or need <= limit[0] * MEMORY_MARGIN:
        return None
    return limit, swap_room() or (0, "")


def memory_problem(shots: Sequence[Path], align: bool = False, save_maps: bool = False, *,
                   maps_as: str = "--save-maps", params: object = None) -> str | None:
    """Why ``shots`` cannot be fused within this process's cgroup memory limit
    (:func:`memory_limit`) and the swap it may use beyond it (:func:`swap_room`): the estimate
    (:func:`fuse_need_mib`) is more than :data:`MEMORY_MARGIN` times the two together; None when
    it is not (between the limit and the two, :func:`memory_warning` says it will swap), when
    there is no limit, when the size cannot be read, or when :data:`MEMORY_CHECK_ENV` is ``0``.
    The reason names the estimate, the limit, the swap and what helps (:func:`fuse_advice`),
    without the files.

    It judges one fusion at a time, against the whole limit: the estimate is that of a process
    running this fusion alone (Python, torch and the nets in its base). Fusions that run at once
    in one process (threads of a service calling :func:`bafusion.fuse`) are each checked as if
    alone, and what the process holds besides (a notebook's arrays) is not counted: several
    that each fit can together pass the limit, and the kernel ends the process. Keep them
    within it yourself (fewer at once, or a process each, each under its own limit).

    Parameters
    ----------
    shots : sequence of path
        The shots of one fusion.
    align : bool
        They are aligned (the alignment's estimate when it is the larger).
    save_maps : bool
        Their maps and Fig. 3 are written (``--save-maps``: their estimate when it is the larger).
    maps_as : str
        What the reason calls those maps (``fuse-set``, which has no ``--save-maps``, writes
        them always).
    params : FusionParams, optional
        The fusion's parameters (None: the defaults): whether the pair is decided at its full
        size (:data:`FULL_SIZE_MIB`).

    Returns
    -------
    str or None
    """
    if os.environ.get(MEMORY_CHECK_ENV, "").strip() == "0":
        return None
    need = fuse_need_mib(shots, align, save_maps, params=params)
    over = _over_limit(need) if need is not None else None
    if over is None:
        return None
    limit, swap = over
    if need is not None and need <= (limit[0] + swap[0]) * MEMORY_MARGIN:
        return None
    swapped = (f" and the swap it may use beyond it {swap[0]} MiB ({swap[1]})" if swap[0] else
               f", with no swap to use beyond it{f' ({swap[1]})' if swap[1] else ''}")
    return (f"needs more memory than this process may use: {fuse_advice(shots, align, save_maps, maps_as=maps_as, params=params)}; the limit is {limit[0]} MiB "
            f"({limit[1]}: a container's --memory, SLURM's --mem, systemd's MemoryMax){swapped}, and the kernel ends a "
            "process over them without a message (SIGKILL, exit status 137); raise the limit, or set "
            f"{MEMORY_CHECK_ENV}=0 to fuse anyway (the estimate is a few per cent above the measured peak of JPEG "
            "pairs, up to ~20 % above for PNG ones)")


def memory_warning(shots: Sequence[Path], align: bool = False, save_maps: bool = False, *,
                   maps_as: str = "--save-maps", params: object = None) -> str | None:
    """A line for the user when fusing ``shots`` needs more memory (:func:`fuse_need_mib`) than
    this process's cgroup memory limit but fits with the swap it may use beyond it
    (:func:`swap_room`: the kernel swaps the rest out, slowly), or, below the limit or without
    one, more than the machine has available now (:func:`available_mib`, plus what this process
    holds already): it may swap or run out of memory. None otherwise, or where that is not told.
    A warning only: other processes may free memory, and swap may hold the rest.

    Parameters
    ----------
    shots : sequence of path
        The shots of one fusion.
    align : bool
        They are aligned.
    save_maps : bool
        Their maps and Fig. 3 are written (``--save-maps``).
    maps_as : str
        What the line calls those maps (see :func:`memory_problem`).
    params : FusionParams, optional
        The fusion's parameters (see :func:`memory_problem`).

    Returns
    -------
    str or None
    """
    need = fuse_need_mib(shots, align, save_maps, params=params)
    if need is None:
        return None
    over = _over_limit(need)
    if over is not None:
        (limit, where), (swap, bound) = over
        if swap and need <= (limit + swap) * MEMORY_MARGIN:
            return (f"{fuse_advice(shots, align, save_maps, maps_as=maps_as, params=params)}; over this process's memory limit of {limit} MiB ({where}) "
                    f"the kernel swaps the rest out (up to {swap} MiB, {bound}): it will be slow")
        return None  # refused (memory_problem), or fused anyway as BAFUSION_MEMORY_CHECK=0 asks
    avail = available_mib()
    if avail is None:
        return None
    have = avail + _resident_mib()
    if need <= have * MEMORY_MARGIN:
        return None
    return (f"{fuse_advice(shots, align, save_maps, maps_as=maps_as, params=params)}; about {have} MiB are available now (MemAvailable and what this process "
            "holds): it may swap or run out of memory")


def check_memory(shots: Sequence[Path], align: bool = False, save_maps: bool = False, *,
                 params: object = None) -> None:
    """Refuse, before any work, a fusion of ``shots`` whose estimate exceeds this process's
    cgroup memory limit (:func:`memory_problem`), naming the files.

    Parameters
    ----------
    shots : sequence of path
        The shots of one fusion.
    align : bool
        They are aligned.
    save_maps : bool
        Their maps and Fig. 3 are written (``--save-maps``).
    params : FusionParams, optional
        The fusion's parameters (see :func:`memory_problem`).

    Raises
    ------
    bafusion.errors.UserError
        Naming the shots, the estimate, the limit and what helps.
    """
    why = memory_problem(shots, align, save_maps, params=params)
    if why:
        from bafusion.errors import UserError

        raise UserError(f"{', '.join(str(p) for p in shots)}: {why}")
