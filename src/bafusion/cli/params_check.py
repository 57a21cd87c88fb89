"""Checks across keys of a whole params.yaml, for the Snakefile (``snakemake -n``, every
``dvc repro`` stage) and ``bafusion preset --apply``.

The schema (:func:`bafusion.schema.validate_params`) checks each key alone; the rules that tie
keys together (``composite.sigma`` as ``lo <= hi``, ``fuse.low < fuse.high``, boundary fractions
that sum to at most 1, the realistic degradations' ranges) live, once, in the typed object of
the step that needs them. :func:`check_params` builds those objects from the parameters, so a
value a job would refuse fails before any job starts, in one line that names the source.
It also refuses what the pipeline's jobs would refuse only after the data stages
(``patches.label_threshold: 0``, ``train.consistency`` without ``patches.context``, a
``train.batch`` that ``train.nproc`` does not divide) and warns,
one line each, of an empty boundary patch set (only ``train_boundary`` and what follows it
need it) and of milestones the learning rate never reaches. Light on purpose (no torch): the Snakefile runs it
at every ``snakemake`` call.
:func:`warn_missing_keys` says, in one line, which keys a whole params file lacks and the
library defaults (the schema's ``x-default``) they take: an older project's params.yaml lacks
the keys added since, and its runs would silently differ from its earlier ones and from a
fresh project's.
:func:`check_init_files` and :func:`check_evaluate_inputs` refuse the files and folders a
warm start or an evaluate dataset names that are not there (or, for a warm start, that the
pipeline writes itself), given the rules' outputs (:func:`pipeline_outputs`): a folder a rule
makes (``data/testset``) is left to the job.
:func:`run_lock` is the lock a ``snakemake`` call that executes jobs holds while it lives (the
Snakefile's ``onstart``): a second run is refused before any job.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import warnings
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bafusion.errors import UserError
from bafusion.workspace import home_path

__all__ = ["check_devices", "check_dvc_params", "check_evaluate_inputs", "check_init_files", "check_params",
           "download_eval_has_source",
           "missing_keys_warning", "pipeline_outputs", "planned_rules", "plans_jobs", "run_lock", "runs_locally",
           "snakemake_args", "upstream_rules", "warn_missing_keys", "written_by"]


def check_params(params: Mapping[str, Any], source: str = "params.yaml") -> None:
    """Build the composite, patch and fusion settings of ``params`` (already checked
    against the schema) and refuse what their checks across keys refuse.

    Raises
    ------
    UserError
        ``<source>: <the step's message>``, one line.
    """
    from bafusion.data.composite import CompositeOptions, Realism
    from bafusion.data.patches import PatchOptions
    from bafusion.fusion.params import FusionParams

    seed = int(params.get("seed", 0))
    try:
        _check_data(params)
        _check_prepared_size(params)
        comp = dict(params.get("composite") or {})
        CompositeOptions(seed=seed, realistic=Realism.from_mapping(comp.get("realistic")),
                         **({"sigma": tuple(comp["sigma"])} if "sigma" in comp else {}),
                         **({"fit": comp["fit"]} if "fit" in comp else {}))
        pat = dict(params.get("patches") or {})
        if "patch" in params:
            PatchOptions(patch=params["patch"], seed=seed,
                         **{k: pat[k] for k in ("per_pair", "boundary_per_pair", "min_focused", "min_defocused",
                                                "label_threshold", "val_fraction", "context") if k in pat})
        FusionParams.from_params(params, source)
        _check_pipeline(params)
    except UserError as e:
        text = str(e)
        raise UserError(text if text.startswith(source) else f"{source}: {text}") from e
    for line in [*_training_warnings(params), *_patch_space_warnings(params)]:
        print(f"warning: {source}: {line}", file=sys.stderr)


def _check_data(params: Mapping[str, Any]) -> None:
    """The ``data`` section's rules that its values alone decide (the hold-out counts, the
    builtin images' names), which the prepare job would refuse only after Snakemake (or DVC)
    deleted data/prepared: :func:`bafusion.data.sources.check_selection`; and, for
    ``data.source: web``, a hold-out that takes every foreground or background the download
    keeps, which prepare refused after it: :func:`_check_web_foregrounds`,
    :func:`_check_web_backgrounds`."""
    from bafusion.data.sources import check_selection

    check_selection(dict(params.get("data") or {}))
    _check_web_foregrounds(params)
    _check_web_backgrounds(params)


def _check_web_foregrounds(params: Mapping[str, Any]) -> None:
    """A ``data.holdout_foregrounds`` that takes every foreground ``data.source: web``
    downloads (:func:`bafusion.data.counts.alphamatting_download_count`): prepare refused it
    only after the download."""
    from bafusion.data.counts import alphamatting_download_count

    data = params.get("data") or {}
    if data.get("source", "builtin") != "web":
        return
    holdout = int(data.get("holdout_foregrounds") or 0)
    known = alphamatting_download_count(params) if holdout else None
    if known is None or holdout < known[0]:
        return
    count, where = known
    raise UserError(f"data.holdout_foregrounds: cannot hold out {holdout} of the {count} foregrounds {where} that "
                    f"data.source: web downloads: nothing would be left to train on; hold out fewer than {count}")


def _check_web_backgrounds(params: Mapping[str, Any]) -> None:
    """A ``data.holdout_backgrounds`` that takes every background ``data.source: web``
    downloads (:func:`bafusion.config.coco_download_count`, the download rule's ``--count``):
    prepare refused it only after the download (the 253 MB annotations and the photos). Only
    a ``download.coco.count`` given can be that small: its 0 downloads the training
    backgrounds (``data.backgrounds``, 0 = 700) and the held-out ones."""
    from bafusion.config import coco_download_count

    data = params.get("data") or {}
    if data.get("source", "builtin") != "web":
        return
    holdout = int(data.get("holdout_backgrounds") or 0)
    count = coco_download_count(params)
    if not holdout or holdout < count:
        return
    raise UserError(f"data.holdout_backgrounds: cannot hold out {holdout} of the {count} COCO backgrounds that "
                    f"data.source: web downloads (download.coco.count: {count}): nothing would be left to train "
                    f"on; set download.coco.count above {holdout}, or to 0 (data.backgrounds + "
                    "data.holdout_backgrounds)")


def _check_prepared_size(params: Mapping[str, Any]) -> None:
    """A ``prepare.scale`` that makes a training foreground smaller than ``patch``: the pairs
    take the prepared foreground's size, and the patches job refused them only after prepare
    and composite had run. Known here for the builtin images; a folder's are refused by the
    patches job."""
    from bafusion.data.sources import builtin_train_foreground_sizes
    from bafusion.io import scaled_size

    scale, patch = (params.get("prepare") or {}).get("scale"), params.get("patch")
    if scale is None or patch is None:  # (an override file that leaves them to params.yaml)
        return
    scale, patch = float(scale), int(patch)
    sizes = builtin_train_foreground_sizes(dict(params.get("data") or {}), int(params.get("seed", 0)))
    small = [(min(scaled_size(hw, scale)), name, hw) for name, hw in sizes.items() if min(scaled_size(hw, scale)) < patch]
    if small:
        _, name, (h, w) = min(small)
        sh, sw = scaled_size((h, w), scale)
        raise UserError(f"prepare.scale: {scale:g} makes the builtin foreground {name!r} {sw}x{sh} (from {w}x{h}), "
                        f"smaller than patch: {patch} (the pairs take the prepared foreground's size): "
                        "raise prepare.scale or lower patch")


def _net_value(params: Mapping[str, Any], net: str, key: str) -> tuple[str, Any]:
    """The key name and value of ``train.<key>`` for ``net`` as the trainer reads it:
    ``train.<net>.<key>``, else ``train.<key>``, else the schema's default."""
    from bafusion.schema import default

    train = params.get("train") or {}
    mine = train.get(net) or {}
    if key in mine:
        return f"train.{net}.{key}", mine[key]
    if key in train:
        return f"train.{key}", train[key]
    return f"train.{key}", default(f"train.{key}")


def _check_pipeline(params: Mapping[str, Any]) -> None:
    """What the pipeline's jobs would refuse late, after the data stages, or train on
    uselessly: a label threshold that labels every pixel focused in A (one class for the
    initial net, an empty boundary set: train_boundary's "the train split is empty"), a
    consistency term without the surroundings it compares (train) and a global batch that
    the training processes cannot share evenly (train, after DDP started)."""
    pat = params.get("patches") or {}
    # (patches.boundary_per_pair: 0 only empties the boundary net's set: a warning, below)
    if pat.get("label_threshold") == 0:
        raise UserError("patches.label_threshold: 0 makes every pixel focused in A: every patch is labelled 1 (the "
                        "initial net learns one class) and none holds a boundary (the boundary net's set is empty)")
    context = int(pat.get("context") or 0)
    for net in ("initial", "boundary"):
        key, weight = _net_value(params, net, "consistency")
        if weight and not context:
            raise UserError(f"{key}: {weight} needs patches.context > 0 (the consistency term compares each patch "
                            "with its view in context), got patches.context: 0")
    from bafusion.config import batch_split_problem

    for net in ("initial", "boundary"):
        # (nproc: auto is the number of GPUs of the machine that trains: left to the job)
        bkey, batch = _net_value(params, net, "batch")
        nkey, nproc = _net_value(params, net, "nproc")
        if isinstance(nproc, int) and not isinstance(nproc, bool) and nproc > 0:
            problem = batch_split_problem(bkey, int(batch), nkey, nproc)
            if problem:
                raise UserError(problem)


def _training_warnings(params: Mapping[str, Any]) -> list[str]:
    """Milestones the learning rate never reaches (at or after the last epoch) or not in
    increasing order: allowed, likely a slip (epochs cut without the milestones). An empty
    boundary patch set (``patches.boundary_per_pair: 0``): fine for targets before the
    boundary net (``train_initial``), a failure of ``train_boundary``; the Snakefile is read
    before Snakemake knows the targets (9.x sets them after), so it is said, not refused."""
    lines: list[str] = []
    if (params.get("patches") or {}).get("boundary_per_pair") == 0:
        lines.append("patches.boundary_per_pair: 0 leaves the boundary net's patch set empty: train_boundary "
                     "(and what needs the boundary net: fuse, evaluate, all) would fail on it")
    for net in ("initial", "boundary"):
        mkey, milestones = _net_value(params, net, "milestones")
        ekey, epochs = _net_value(params, net, "epochs")
        milestones = [int(m) for m in milestones or []]
        late = [m for m in milestones if m >= int(epochs)]
        if late:
            lines.append(f"{mkey}: {', '.join(map(str, late))} not before the last epoch ({ekey}: {epochs}): "
                         "the learning rate never drops there")
        if any(b <= a for a, b in zip(milestones, milestones[1:])):
            lines.append(f"{mkey}: {milestones} is not increasing (a repeated milestone multiplies by gamma twice)")
    return list(dict.fromkeys(lines))


def _patch_space_warnings(params: Mapping[str, Any], folder: str = "data/patches") -> list[str]:
    """Patch sets larger, uncompressed, than the free space where the pipeline writes them
    (``patches.per_pair`` has no bound: 1,000,000 for 48 pairs is ~98 GB): said at the start,
    not refused, since gzip's share is known only from the pairs; the patches job refuses
    before writing when its estimate does not fit
    (:func:`bafusion.data.patches.check_free_space`). The patch files already in ``folder``
    count as free (:func:`_replaced_bytes`: the job's outputs are deleted before it runs).
    Nothing where the pairs cannot be counted here."""
    from bafusion.data.counts import count_samples
    from bafusion.data.patches import PatchOptions, free_space, patch_bytes, size_text

    if "patch" not in params:
        return []
    try:
        # read at every parse of the workflow: what listing the source warns about (images in a
        # background folder's subfolders) is said once, by the prepare job
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c = count_samples(params)
    except (UserError, OSError, ValueError, TypeError):
        return []
    context = int((params.get("patches") or {}).get("context") or 0)
    bnd = 0 if c.get("boundary_subset") else int(c["boundary_patches_at_most"])
    raw = (int(c["base_patches"]) + bnd) * patch_bytes(PatchOptions(patch=int(params["patch"]), context=context))
    where, free = free_space(folder)
    replaced = _replaced_bytes(folder)
    if raw <= free + replaced:
        return []
    also = f" (and {size_text(replaced)} of the patch files there, which the job replaces)" if replaced else ""
    return [f"patches.per_pair: {c['patches_per_pair']} makes {c['base_patches']:,} initial"
            f"{f' and up to {bnd:,} boundary' if bnd else ''} patches for {c['pairs']:,} pairs: about "
            f"{size_text(raw)} before gzip, more than the {size_text(free)} free on the disk of {where}{also}; the "
            "patches job refuses to start where its estimate with gzip does not fit"]


def _replaced_bytes(folder: str) -> int:
    """Bytes the patches job's outputs in ``folder`` hold now that deleting them frees: Snakemake
    (and ``dvc repro``) deletes a job's outputs before the job runs, so their space is free to
    it. Only regular files of one link count: a link (a DVC cache's symlink or hard link) frees
    nothing. (A reflinked copy frees nothing either, and cannot be told: counted.)"""
    total = 0
    for name in ("initial.h5", "boundary.h5", "summary.json"):
        try:
            st = os.lstat(os.path.join(folder, name))
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
            total += st.st_size
    return total


def check_init_files(params: Mapping[str, Any], source: str = "params.yaml",
                     outputs: Sequence[PipelineOutput] = (), stage: str | None = None) -> None:
    """Refuse a warm-start model file (``train.init``, ``train.<net>.init``) that does not
    exist. Snakemake takes it for a rule input, but once a net has been trained it keeps the
    net and drops the training job silently (exit 0, the typo unnoticed, the old weights used).
    Also refuse one that a rule of the pipeline writes (``outputs``: :func:`pipeline_outputs`),
    such as ``data/models/initial.pt``: ``train_initial`` would need its own output (Snakemake
    logs a cycle and goes on) and the run deleted both trained nets; and any file in a
    training job's checkpoint folder (``data/checkpoints/initial/best.pt``: no rule declares
    it, and ``train_initial`` rewrites it while ``train_boundary`` reads it). The boundary net
    may start from the initial net's model (``train.boundary.init: data/models/initial.pt``)
    under Snakemake, not in a DVC stage (``stage``: ``$DVC_STAGE``): the ``train_boundary``
    stage does not depend on ``train_initial``'s model in dvc.yaml. And refuse one whose
    description (``<model>.json``'s ``arch.depth``) is of another depth than ``params``'
    ``depth`` (where ``params`` has one): the train job refused it only once running, after
    the data stages.

    Raises
    ------
    UserError
        ``<source>: train.<net>.init <path>: file not found``, one line.
    """
    from pathlib import Path

    from bafusion.config import net_init

    writers = {net: written_by(net_init(params, net), outputs) if net_init(params, net) else None
               for net in ("initial", "boundary")}
    for net in ("initial", "boundary"):
        path = net_init(params, net)
        if not path:
            continue
        per_net = ((params.get("train") or {}).get(net) or {}).get("init")
        key = f"train.{net}.init" if per_net else "train.init"
        made = writers[net]
        other = "boundary" if net == "initial" else "initial"
        other_made = writers[other]
        if made:
            # the net trained first, for the other (train.boundary.init: data/models/initial.pt): no
            # cycle; only its declared model file (not a file of its checkpoint folder, which no
            # rule declares: no edge, and the training rewrites it), and not under DVC
            model = written_by(path, [o for o in outputs if not o[2]])
            first = bool(model and model[0] == f"train_{other}" and not (other_made and other_made[0] == f"train_{net}"))
            if first and not stage:
                continue
            if first:
                raise UserError(f"{source}: {key} {path}: the model of rule train_{other} is a warm start under "
                                f"snakemake only: in dvc.yaml the train_{net} stage does not depend on it (it may run "
                                "first, or keep a stale start): copy it elsewhere to warm-start from it under DVC")
            raise UserError(f"{source}: {key} {path}: is the pipeline's own output ({made[1]}): copy it elsewhere "
                            "to warm-start from it")
        if not Path(home_path(path)).is_file():  # ~/m.pt: the home's, as the trainer reads it
            raise UserError(f"{source}: {key} {path}: model file not found (the warm start of the {net} net)")
        depth = _described_depth(Path(home_path(path))) if "depth" in params else None
        want = int(params.get("depth", 0))
        if depth is not None and depth != want:
            # the train job refused it only once running, after prepare, composite and patches
            raise UserError(f"{source}: {key} {path}: a net of depth {depth} (its .json), not of depth: {want} (a warm "
                            "start is a model of the same depth)")


def _described_depth(model: Path) -> int | None:
    """The ResNet depth a model file's description (``<model>.json``, ``arch.depth``) states, or
    None where it states none or cannot be read (the train job says what is wrong then). Read
    as JSON: no torch here."""
    import json

    try:
        depth = json.loads(model.with_suffix(".json").read_text(encoding="utf-8-sig"))["arch"]["depth"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None
    return depth if isinstance(depth, int) and not isinstance(depth, bool) else None


#: Rules that no DVC stage runs (dvc.yaml: no stage's target or --allowed-rules): what only
#: they make is not there under `dvc repro` unless a snakemake call made it before.
NO_STAGE_RULES = ("download_eval",)


def download_eval_has_source(params: Mapping[str, Any]) -> bool:
    """Whether rule ``download_eval`` has something to fetch from: ``download.eval.base_url``
    or ``download.eval.from_dir`` (both empty, the defaults: ``bafusion download-eval`` fails)."""
    section = (params.get("download") or {}).get("eval") or {}
    return bool(section.get("base_url") or section.get("from_dir"))


def check_evaluate_inputs(params: Mapping[str, Any], source: str = "params.yaml",
                          outputs: Sequence[PipelineOutput] = (), upstream: Collection[str] | None = None,
                          planned: Collection[str] | None = None, stage: str | None = None) -> None:
    """Refuse an ``evaluate.datasets`` entry whose ``sources`` or ``reference`` folder or
    ``reference_metrics`` file is not there and that no rule the evaluate rule waits for makes
    (``outputs``: :func:`pipeline_outputs`; ``upstream``: the names of the rules the evaluate
    rule needs, :func:`upstream_rules`, None: any rule; ``data/testset``, and
    ``data/download/eval/...`` once a dataset reads from it: evaluate.smk makes download_eval's
    folder an input of evaluate then): the evaluate job refused it only at the end, after
    training. One no rule makes is refused for any target. One only a rule off that path makes
    is refused only when the run's rules (``planned``: :func:`planned_rules`) include
    ``evaluate`` and not that rule (None: not known, left to the job). In a DVC stage
    (``stage``: ``$DVC_STAGE``) one that only a rule no stage runs makes
    (:data:`NO_STAGE_RULES`: ``download_eval``) is refused, and so is one of ``download_eval``
    without a source (:func:`download_eval_has_source`) where the run evaluates: evaluate does
    not wait for it then (the folder, filled by hand, is used as it is).
    For a dataset whose folder is there and no rule before evaluate rewrites,
    its ``figure_pair`` is checked to be one of its pairs and its ``crop`` against that pair's
    size too (the job's checks, before any fusion:
    :func:`bafusion.evaluation.evaluate.check_dataset`).

    Raises
    ------
    UserError
        ``<source>: evaluate.datasets[1].sources /nonexist: folder not found (...)``, one line.
    """
    from bafusion.workspace import resolve

    section = params.get("evaluate") or {}
    datasets = section.get("datasets") or []
    kept = []  # (index, name): folders that are there and that no rule rewrites
    for i, d in enumerate(datasets):
        if not isinstance(d, Mapping):
            continue
        made = False
        for key, what in (("sources", "folder"), ("reference", "folder"), ("reference_metrics", "file")):
            value = d.get(key)
            if not value:
                continue
            writer = written_by(resolve(str(value)), outputs)
            unstaged = bool(stage and writer and writer[0] in NO_STAGE_RULES)  # dvc repro never makes it
            sourceless = bool(writer and writer[0] == "download_eval" and not download_eval_has_source(params))
            if writer and (upstream is None or writer[0] in upstream) and not unstaged:
                made = made or key == "sources"
                continue
            there = resolve(str(value))
            if not (there.is_dir() if what == "folder" else there.is_file()):
                if writer and not stage and (planned is None or "evaluate" not in planned
                                             or (writer[0] in planned and not sourceless)):
                    # this run does not evaluate, or runs the rule that makes it
                    made = made or key == "sources"
                    continue
                if sourceless:  # first: running the rule fails without a source
                    why = (f"rule {writer[0]} makes it, but download.eval.base_url and download.eval.from_dir are both "
                           f"empty{' and no dvc stage runs it' if unstaged else ''}: set one and run "
                           f"`snakemake {writer[0]}`{' first' if unstaged else ''}, or fill the folder by hand")
                elif unstaged:
                    why = f"rule {writer[0]} makes it, but no dvc stage runs it: run `snakemake {writer[0]}` first"
                elif writer:
                    why = f"rule {writer[0]} makes it, but no target runs it before evaluate: run `snakemake {writer[0]}` first"
                else:
                    why = "and no rule of the pipeline makes it"
                raise UserError(f"{source}: evaluate.datasets[{i}].{key} {value}: {what} not found ({why}): the "
                                "evaluate job (targets evaluate, all) would refuse it after training: fix it, or "
                                "remove the dataset")
        if (d.get("crop") or d.get("figure_pair")) and not made:
            kept.append(i)
    if kept:
        from bafusion.evaluation import evaluate as ev

        try:
            cfg = ev.parse_config(section, Path("."), source)
            for i in kept:
                ds = cfg.datasets[i]
                pairs = ev.find_pairs(ds)
                names = [p.name for p in pairs]
                fig = ds.figure_pair or (names[0] if names else None)
                if fig is None:
                    continue
                if fig not in names:
                    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
                    raise UserError(f"evaluate.datasets[{i}].figure_pair {fig}: not one of the pairs of dataset "
                                    f"{ds.name!r} ({shown}): the evaluate job would refuse it")
                if ds.crop is not None and cfg.figures:
                    ev._check_crop(ds, cfg, next(p for p in pairs if p.name == fig))
        except UserError as e:
            text = str(e)
            raise UserError(text if text.startswith(source) else f"{source}: {text}") from e


def check_devices(params: Mapping[str, Any], source: str = "params.yaml") -> None:
    """Refuse a ``train.device``, ``train.<net>.device``, ``fuse.device`` or ``evaluate.device``
    this machine lacks (``cuda`` without CUDA): the job refused it only when it ran (the fuse
    job after training). For a run whose jobs run here (:func:`runs_locally`); torch is
    imported only for a device other than ``auto`` and ``cpu``.

    Raises
    ------
    UserError
        ``<source>: fuse.device cuda: CUDA is not available on this machine (use auto or cpu)``.
    """
    keys = [_net_value(params, net, "device") for net in ("initial", "boundary")]
    for section in ("fuse", "evaluate"):
        value = (params.get(section) or {}).get("device")
        if value:
            keys.append((f"{section}.device", value))
    for key, value in dict(keys).items():
        if value and str(value) not in ("auto", "cpu"):
            from bafusion.preflight import check_device

            try:
                check_device(str(value), key)
            except UserError as e:
                raise UserError(f"{source}: {e} - the jobs of this run run on this machine") from e


#: Snakemake executors whose jobs run on this machine.
LOCAL_EXECUTORS = ("local", "dryrun", "touch")

#: Snakemake's options (their ``argparse`` names) for which it runs no job: it lists, draws, unlocks
#: or cleans up (``--unlock``, ``--cleanup-metadata``, ``--report`` without ``--report-after-run``,
#: ``--list-*``, ``--summary``, ``--dag``, ...), or only marks the outputs up to date (``--touch``).
NO_JOB_OPTIONS = ("lint", "list_target_rules", "list_rules", "print_compilation", "containerize", "report",
                  "generate_unit_tests", "dag", "rulegraph", "filegraph", "d3dag", "unlock", "cleanup_metadata",
                  "conda_cleanup_envs", "conda_create_envs_only", "list_conda_envs", "cleanup_shadow",
                  "container_cleanup_images", "list_changes", "list_input_changes", "list_params_changes",
                  "list_untracked", "summary", "detailed_summary", "archive", "delete_all_output",
                  "delete_temp_output", "export_cwl", "touch")


def snakemake_args(argv: Sequence[str]) -> Any | None:
    """Snakemake's own reading of its command line ``argv`` (``sys.argv``), its profiles
    included: ``--profile`` and ``$SNAKEMAKE_PROFILE``, and the workflow profile
    (``--workflow-profile``, else an existing ``profiles/default/`` in the working directory or
    beside the Snakefile, which Snakemake uses unasked), each with its ``profile.yaml`` or
    ``config.yaml`` (:func:`snakemake.cli.parse_args`, its messages silenced). None when it
    cannot be read (not a snakemake command line: Snakemake run through its Python API; another
    Snakemake version): what depends on it is then left to the jobs."""
    import contextlib
    import io

    try:
        from snakemake.cli import parse_args

        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            _, args = parse_args(list(argv[1:]))
    except (Exception, SystemExit):  # argparse refuses with SystemExit
        return None
    return args


def plans_jobs(args: Any | None) -> bool:
    """Whether a snakemake command line (:func:`snakemake_args`) plans the jobs of its targets,
    to run them or to show them (``-n``): not ``--unlock``, ``--cleanup-metadata``, ``--report``,
    ``--list-*``, ``--touch`` ... (:data:`NO_JOB_OPTIONS`), for which a value a job would refuse
    does not matter. A command line that cannot be read counts as planning jobs."""
    if args is None:
        return True
    if getattr(args, "report", None) and getattr(args, "report_after_run", False):
        return True
    return not any(getattr(args, name, None) not in (None, False) for name in NO_JOB_OPTIONS)


#: The file, in Snakemake's folder (``.snakemake/``, not its ``locks/``), that a snakemake run
#: which executes jobs holds locked (``flock``) while it lives: :func:`run_lock`.
RUN_LOCK_FILE = "bafusion-run.lock"


def run_lock(folder: str | os.PathLike[str]) -> contextlib.AbstractContextManager[bool]:
    """Hold the project's run lock (``folder``/:data:`RUN_LOCK_FILE`, ``folder`` being
    Snakemake's ``.snakemake``) for a ``snakemake`` call that executes jobs (its ``onstart``).

    Snakemake 9.17 and later delete the whole ``.snakemake/locks`` folder at the end of any run
    (a dry run, another target's), so a second run started while a first one trains was no
    longer refused and rebuilt the data under the running training. This lock is
    :func:`bafusion.atomic.folder_lock`'s: taken without waiting, held in the file the holder's
    process id is written into, and released by the OS when the holder ends, killed too (so a
    lock is never left behind by a dead run). Yields whether a lock is held (not where the
    filesystem has no locks, said on stderr).

    Parameters
    ----------
    folder : path
        Snakemake's folder of the working directory (``workflow.persistence.path``).

    Returns
    -------
    context manager
        Holding the lock while entered.

    Raises
    ------
    UserError
        Another process holds the lock: naming the lock file, the holder's process id and when
        it took the lock, and what to do.
    """
    import time

    from bafusion.atomic import folder_lock

    lock = Path(folder) / RUN_LOCK_FILE

    def busy(pid: int | None) -> UserError:
        who = f"process {pid}" if pid is not None else "another process"
        try:
            since = time.strftime(", running since %Y-%m-%d %H:%M:%S %Z", time.localtime(lock.stat().st_mtime))
        except OSError:
            since = ""
        return UserError(f"{lock}: another snakemake run ({who}{since}) is executing jobs in this project; a "
                         "second one would rebuild the data under its jobs (the training). Wait for it to end, "
                         "or stop it; the lock goes with the process that holds it, so there is nothing to "
                         "delete (`snakemake -n` still shows what would run)")

    return folder_lock(Path(folder), RUN_LOCK_FILE, busy=busy, what="the run lock")


def runs_locally(args: Any | None) -> bool:
    """Whether the jobs of a snakemake command line (:func:`snakemake_args`, profiles
    included) run on this machine with this Python's packages (its torch): no ``--executor``
    (``-e``) other than local, and no software deployment (``--sdm conda`` / ``apptainer``,
    ``--use-conda``, ``--use-apptainer`` / ``--use-singularity``: the jobs' own environment). A
    command line that cannot be read counts as not local (its jobs' machines are not known here),
    as does one with ``--directory`` (``-d``): Snakemake has moved into that folder before the
    Snakefile reads its command line, so a relative ``-s`` or ``--profile`` and the launch
    folder's ``profiles/default/`` would be looked up in the wrong folder."""
    if args is None or getattr(args, "directory", None):
        return False
    if (getattr(args, "executor", None) or "local") not in LOCAL_EXECUTORS:
        return False
    methods = {str(getattr(m, "name", m)).lower().replace("_", "-")
               for m in getattr(args, "software_deployment_method", None) or ()}
    return not (methods & {"conda", "apptainer", "singularity"} or getattr(args, "use_conda", False)
                or getattr(args, "use_apptainer", False))


#: What a rule of the pipeline writes: (rule name, path or pattern, a folder?).
PipelineOutput = tuple[str, str, bool]


def pipeline_outputs(rules: Iterable[Any]) -> list[PipelineOutput]:
    """The outputs of Snakemake's ``rules`` (``workflow.rules``) as :data:`PipelineOutput`:
    every output file or folder (``directory()``), and a ``checkpoints`` param (the folder a
    training job keeps its ``last.pt`` in)."""
    found: list[PipelineOutput] = []
    for rule in rules:
        for f in getattr(rule, "output", ()):
            found.append((str(rule.name), str(f), bool(getattr(f, "is_directory", False))))
        params = getattr(rule, "params", None)
        folder = params.get("checkpoints") if hasattr(params, "get") else None
        if isinstance(folder, str) and folder:
            found.append((str(rule.name), folder, True))
    return found


def upstream_rules(rules: Iterable[Any], target: str) -> set[str]:
    """The names of the rules whose outputs the rule ``target`` needs, directly or through
    other rules, among Snakemake's ``rules`` (``workflow.rules``): each input file matched
    against the rules' outputs (:func:`written_by`)."""
    rules = list(rules)
    outputs = pipeline_outputs(rules)
    by_name = {str(r.name): r for r in rules}
    found: set[str] = set()
    todo = [target]
    while todo:
        for f in getattr(by_name.get(todo.pop()), "input", ()):
            hit = None if callable(f) else written_by(str(f), outputs)
            if hit and hit[0] not in found:
                found.add(hit[0])
                todo.append(hit[0])
    return found


def planned_rules(targets: Sequence[str] | None, rules: Iterable[Any], default: str | None = None) -> set[str] | None:
    """The names of the rules a snakemake command's ``targets`` (:func:`snakemake_args`'s
    ``targets``: rule names or files) run, with every rule they need (:func:`upstream_rules`),
    among Snakemake's ``rules``; no target: the ``default`` rule (``workflow.default_target``).
    A file counts for the rule that writes it (:func:`written_by`). None when the targets are
    not known (``targets`` None)."""
    if targets is None:
        return None
    rules = list(rules)
    names = {str(r.name) for r in rules}
    outputs = pipeline_outputs(rules)
    start: set[str] = set()
    for target in list(targets) or ([default] if default else []):
        hit = str(target) if str(target) in names else (written_by(str(target), outputs) or (None,))[0]
        if hit:
            start.add(hit)
    found = set(start)
    for name in start:
        found |= upstream_rules(rules, name)
    return found


def written_by(path: str | Path, outputs: Sequence[PipelineOutput]) -> tuple[str, str] | None:
    """Which rule writes ``path`` (the output itself, or a file in an output folder): the
    rule's name and ``"rule train_initial writes it"``; None when none does. Paths are compared from the
    working directory (the project's root, where Snakemake runs), symbolic links resolved;
    an output with wildcards (``data/composite/shard-{shard}.h5``) matches by its pattern."""
    import os
    import re

    def norm(p: str | Path) -> str:
        return os.path.realpath(os.path.abspath(home_path(p)))

    here = norm(path)
    rel = os.path.relpath(here, norm("."))
    for rule, out, folder in outputs:
        if "{" in out:
            pattern = re.sub(r"\\\{[^}]*\\\}", ".+", re.escape(out))
            hit = re.fullmatch(pattern + ("(/.*)?" if folder else ""), rel) is not None
        else:
            where = norm(out)
            hit = here == where or (folder and here.startswith(where.rstrip(os.sep) + os.sep))
        if hit:
            return rule, f"rule {rule} writes {'it' if here == norm(out) or not folder else out}"
    return None


#: At most this many missing keys are named (a file that pins little: the count of the rest).
MISSING_NAMED = 8


def _show(value: Any) -> str:
    """A value as params.yaml writes it (``0.75``, ``1``, ``none``, ``[1, 0.5]``, ``""``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    return str(value)


def _stage_params(stage: str, dvc_yaml: str | Path) -> list[str] | None:
    """The params.yaml keys (or sections) a DVC stage declares in ``dvc_yaml``; None: not
    known (no such file or stage, or a stage that takes a whole params file)."""
    import yaml

    from bafusion.config import load_yaml

    try:  # the project's reader: a 516-byte dvc.yaml of nested aliases took 67 s below (a 522-million-character key)
        stages = (load_yaml(Path(dvc_yaml).read_text(encoding="utf-8-sig")) or {}).get("stages") or {}
        entries = stages[stage.rpartition(":")[2]].get("params") or []
    except (OSError, yaml.YAMLError, AttributeError, KeyError, TypeError):
        return None
    keys: list[str] = []
    for entry in entries:
        if isinstance(entry, str):
            keys.append(entry)
        elif isinstance(entry, Mapping):
            for file, names in entry.items():
                if Path(str(file)).name == "params.yaml":
                    if not names:
                        return None
                    keys += [str(n) for n in names]
    return keys


def check_dvc_params(params: Mapping[str, Any], source: str = "params.yaml", dvc_yaml: str | Path = "dvc.yaml") -> None:
    """Refuse a params file that lacks a key a stage of ``dvc_yaml`` lists (for the DVC stage
    that checks the whole file, ``check``, which ``dvc repro`` and ``dvc exp run`` run first).
    Plain ``snakemake`` takes the library default for such a key, but DVC refuses the stage, one
    key per run, and only once it has deleted that stage's outputs: a file that set a train key
    per net only (``train.initial.lr`` and ``train.boundary.lr``, no ``train.lr``) lost
    data/models/initial.pt and metrics/train_initial.json to "Parameters 'train.lr' are missing
    from 'params.yaml'". Here every such key is named at once, with the value to add, before any
    stage runs.

    Raises
    ------
    UserError
        ``<source>: train.lr missing (stages train_initial, train_boundary list it; DVC refuses ...)``,
        one line.
    """
    from bafusion.config import load_yaml
    from bafusion.schema import _has, default

    try:
        stages = (load_yaml(Path(dvc_yaml).read_text(encoding="utf-8-sig")) or {}).get("stages") or {}
    except OSError:
        return
    listed: dict[str, list[str]] = {}
    for name, spec in stages.items() if isinstance(stages, Mapping) else ():
        for entry in (spec.get("params") or []) if isinstance(spec, Mapping) else []:
            keys = [entry] if isinstance(entry, str) else [
                str(k) for f, names in (entry.items() if isinstance(entry, Mapping) else ())
                if Path(str(f)).name == "params.yaml" for k in (names or [])]
            for key in keys:
                listed.setdefault(key, []).append(str(name))
    missing = [k for k in listed if not _has(params, k)]
    if not missing:
        return

    def value(key: str) -> str:
        try:
            return f"add {key}: {_show(default(key))} (the library default)"
        except KeyError:
            return f"add {key}"

    said = "; ".join(f"{k} (stage{'s' if len(listed[k]) > 1 else ''} {', '.join(listed[k])})" for k in missing)
    raise UserError(f"{source} lacks keys that dvc.yaml's stages list: {said}. DVC refuses such a stage after "
                    f"deleting its outputs; plain snakemake would use the library defaults. "
                    f"{'; '.join(value(k) for k in missing)} (a per-net override, train.initial / train.boundary, "
                    "still wins over a train key)")


def missing_keys_warning(params: Mapping[str, Any], stage: str | None = None,
                         dvc_yaml: str | Path = "dvc.yaml") -> str | None:
    """The warning about the keys a whole params file lacks (the schema's keys with an
    ``x-default``), or None when it lacks none.

    Parameters
    ----------
    params
        The whole parameters (params.yaml, with any override files merged over it).
    stage
        The DVC stage this runs in (``$DVC_STAGE``): only the keys it declares in ``dvc_yaml``
        count, so that ``dvc repro`` says it in the stages that use them, not in every stage.

    Returns
    -------
    ``"no fuse.boundary_weight (0.75 used: the library default; the paper preset's is 1) - add
    the keys to pin them (...)"``: the keys whose paper preset value differs first.
    """
    from bafusion.config import load_preset
    from bafusion.schema import missing_defaults

    missing = missing_defaults(params)
    if stage:
        used = _stage_params(stage, dvc_yaml)
        if used is not None:
            missing = {k: v for k, v in missing.items() if any(k == u or k.startswith(u + ".") for u in used)}
    if not missing:
        return None
    paper: dict[str, Any] = {}
    preset = load_preset("paper")
    for key, value in missing.items():
        node: Any = preset
        for part in key.split("."):
            node = node.get(part, paper) if isinstance(node, Mapping) else paper
        if node is not paper and node != value:
            paper[key] = node
    keys = sorted(missing, key=lambda k: k not in paper)  # stable: schema order within each group
    named = []
    for i, k in enumerate(keys[:MISSING_NAMED]):
        why = ": the library default" if i == 0 else ""
        pin = f"; the paper preset's is {_show(paper[k])}" if k in paper else ""
        named.append(f"{k} ({_show(missing[k])} used{why}{pin})")
    more = f" and {len(keys) - MISSING_NAMED} more" if len(keys) > MISSING_NAMED else ""
    return f"no {', '.join(named)}{more} - add the keys to pin them (new keys since the file was written)"


def warn_missing_keys(params: Mapping[str, Any], source: str = "params.yaml", stage: str | None = None,
                      dvc_yaml: str | Path = "dvc.yaml") -> None:
    """Print :func:`missing_keys_warning` as one line ``warning: <source>: ...`` on stderr,
    if there is one. For the pipeline's whole params file: the Snakefile (once per
    ``snakemake`` call, not in the jobs' own readings of it) and ``bafusion preset --apply``."""
    line = missing_keys_warning(params, stage, dvc_yaml)
    if line:
        print(f"warning: {source}: {line}", file=sys.stderr)
