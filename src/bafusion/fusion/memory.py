"""How much memory a fusion needs, and what to say when it runs out (measured: README,
"Memory"; BENCHMARKS.md, "Camera resolution")."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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

#: Peak memory of the alignment (``--align``): both shots' float64 gray copies and pyramids, the
#: warped shot, the masks; the fusion's nets are not loaded yet, so the peak of an aligned fusion
#: is the larger of the two. Measured as above, ``--align similarity`` (with the estimate's
#: anti-aliasing blur, :data:`bafusion.fusion.align._ANTIALIAS`): 800 MiB at 6 MP, 1477 at 13.5,
#: 2388 at 24 (1.2x, 1.6x and 1.8x the fusion without it): 88 MiB per megapixel over 271,
#: rounded up to 280 + 89.
ALIGN_BASE_MIB = 280
ALIGN_MIB_PER_MEGAPIXEL = 89
#: ... for each shot of a stack beyond two (an estimate, not measured: its full-size source).
MIB_PER_MEGAPIXEL_SHOT = 16
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
#: pair: 492 MiB, 480 without the maps; 628 predicted). Stacks (a step's maps at a time, each step's result held) are not measured: each
#: shot beyond two adds :data:`MIB_PER_MEGAPIXEL_SHOT` as for the fusion.
MAPS_BASE_MIB = 620
MAPS_MIB_PER_MEGAPIXEL = 30


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


def _megapixels(path: Path) -> float:
    from bafusion.io.formats import pillow_open

    try:
        with pillow_open(path) as im:
            w, h = im.size
    except Exception:  # noqa: BLE001 - an estimate only
        return 0.0
    return w * h / 1e6


def _deep(path: Path) -> bool:
    """Whether ``path`` holds more than 8 bits per sample (read as uint16 beside its uint8
    version), from its header; False when that cannot be told (an estimate only)."""
    from bafusion.io.depth import _HIGH_MODES, _tiff_depth, png_depth
    from bafusion.io.formats import pillow_open

    try:
        with pillow_open(path) as im:
            fmt, mode = im.format, im.mode
            tiff = _tiff_depth(im) if fmt == "TIFF" else None
        if fmt == "PNG":
            png = png_depth(path)
            return png is not None and png[0] > 8
    except Exception:  # noqa: BLE001 - an estimate only
        return False
    return (tiff is not None and tiff[0] > 8 and mode != "F") or mode in _HIGH_MODES


def fuse_need_mib(shots: Sequence[Path], align: bool = False, save_maps: bool = False) -> int | None:
    """The memory (MiB) that :data:`BASE_MIB` and :data:`MIB_PER_MEGAPIXEL` predict for fusing
    ``shots`` (with ``align``, the larger of that and the alignment's, :data:`ALIGN_BASE_MIB` and
    :data:`ALIGN_MIB_PER_MEGAPIXEL`; with ``save_maps``, the larger of that and the maps',
    :data:`MAPS_BASE_MIB` and :data:`MAPS_MIB_PER_MEGAPIXEL`), or ``None`` when their size
    cannot be read. Sources of more than 8 bits per sample add their uint16 copies
    (:data:`DEEP_MIB_PER_MEGAPIXEL`)."""
    mp = max((_megapixels(Path(p)) for p in shots), default=0.0)
    if mp <= 0:
        return None
    deep = any(_deep(Path(p)) for p in shots)
    peak = BASE_MIB + (MIB_PER_MEGAPIXEL + (DEEP_MIB_PER_MEGAPIXEL if deep else 0)) * mp
    if align:
        peak = max(peak, ALIGN_BASE_MIB + ALIGN_MIB_PER_MEGAPIXEL * mp)
    if save_maps:
        peak = max(peak, MAPS_BASE_MIB + MAPS_MIB_PER_MEGAPIXEL * mp)
    shot = MIB_PER_MEGAPIXEL_SHOT + (DEEP_MIB_PER_MEGAPIXEL_SHOT if deep else 0)
    return int(round(peak + shot * mp * max(len(shots) - 2, 0)))


def fuse_advice(shots: Sequence[Path] = (), align: bool = False, save_maps: bool = False) -> str:
    """What lowers the memory of a fusion (``fuse``, ``fuse-dir``, ``fuse-set``, ``evaluate``):
    the full-size images dominate (a pair above ``fuse.working_above`` is decided at
    ``fuse.working_side``, so the nets and their tiles take little), so smaller images or more
    free memory; with ``shots``, what they need (``align``: aligned, ``save_maps``: with
    ``--save-maps``, :func:`fuse_need_mib`)."""
    need = fuse_need_mib(shots, align, save_maps) if shots else None
    mp = max((_megapixels(Path(p)) for p in shots), default=0.0) if shots else 0.0
    options = " and ".join(o for o, on in (("--align", align), ("--save-maps", save_maps)) if on)
    size = (f"a {mp:.3g}-megapixel {'pair' if len(shots) == 2 else f'stack of {len(shots)}'} needs about "
            f"{need} MiB{f' with {options}' if options else ''}; " if need else "")
    aligned = (f", ~{ALIGN_MIB_PER_MEGAPIXEL} with --align (the alignment's copies of the shots; "
               "--align none needs less)" if align else "")
    return (f"{size}the full-size images take ~{MIB_PER_MEGAPIXEL} MiB per megapixel{aligned} (the nets' tiles, "
            "--tile and fuse.max_tile, are not what fills it): free memory or downscale the shots, and keep "
            "fuse.working_side on (--working-side 0 fuses at full size and needs far more)")

