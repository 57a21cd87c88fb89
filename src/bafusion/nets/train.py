"""Training of the initial net and the boundary net (section 3 of the paper).

``bafusion train --net initial --patches data/patches/initial.h5 --out data/models/initial.pt
--params params.yaml`` trains a CIFAR ResNet (``depth`` from the parameters) on the patch set
with the x12 augmentation of :mod:`bafusion.nets.augment`: SGD with momentum, softmax
cross-entropy, step decay of the learning rate (``MultiStepLR``), validation after every
epoch (with ``bn_recalibrate`` > 0, after re-estimating the BatchNorm statistics with the
weights frozen: :func:`recalibrate_bn`). The final model is the epoch with the best validation
accuracy (``keep: best``, the default) or the net after the last epoch (``keep: last``, the
paper preset's: the paper describes no choice of an epoch), written with
:func:`bafusion.nets.model.save_model`; its ``.json``, the report and the MLflow run name that
epoch as ``saved_epoch``.

Outputs (all written atomically):

- ``--out`` (+ ``.json``): the model (``keep``) and its description;
- ``--checkpoints`` (default ``<out stem>.checkpoints/`` beside ``--out``; the pipeline's
  ``data/checkpoints/<net>/`` for ``--out data/models/<net>.pt``, :func:`default_paths`): ``last.pt`` (full training state:
  weights, optimizer, scheduler, loader position, RNG states, history, and the weights of the
  best epoch so far), ``best.pt`` (a copy of the latter, to look at; a run never reads it, so
  a damaged or deleted ``best.pt`` costs nothing: a resume writes it again from ``last.pt``,
  and with ``keep: best`` the model written is always the best epoch's weights, never the last
  ones under the best epoch's numbers; with ``keep: last``, ``last.pt``'s own weights) and ``history.csv`` (the curve so far, rewritten at every
  epoch end to watch a long run; ``--plots`` is written only at the end, with the model and
  the metrics, so a killed run leaves the previous run's outputs in step with each other);
- ``--report`` (``--metrics``; default ``<out stem>.metrics.json``; ``metrics/train_<net>.json`` for the
  pipeline's ``--out``) for ``dvc metrics``;
- ``--plots`` (default ``<out stem>.epochs.csv``; ``metrics/plots/train_<net>.csv`` for the
  pipeline's ``--out``): one row per epoch for ``dvc plots``;
- an MLflow run ``train_<net>`` with the flattened parameters, per-epoch metrics (step =
  epoch) under ``epoch/`` (``epoch/val_acc``, ``epoch/train_loss``, ...: :data:`EPOCH_PREFIX`), at
  the end the numbers of ``--report`` under its own names (``val_acc`` is the saved epoch's,
  ``saved_epoch``: the best one with ``keep: best``, as ``dvc metrics show`` says; ``last_val_acc``
  the last epoch's), the training's time (``train_time_s``, the steps', and ``wall_time_s``, the
  epochs' whole, validation, checkpoints and logging included; both in ``last.pt`` too, never
  in the model's ``.json``, whose bytes do not depend on the clock) and the model as an artifact; a resumed run is a new MLflow run, tagged
  ``resumed_from`` (epoch and step) and ``resumed_run_id`` (the interrupted run's MLflow run).

Resuming: ``last.pt`` is written at every epoch end (and every ``checkpoint_every`` steps
when that is > 0). Running the same command again after a kill continues from it; with a
fixed seed the final weights equal those of an uninterrupted run (on CPU exactly, with the same
number of CPU threads; on GPU with ``deterministic: true``). The thread count changes the
weights on the CPU but not the fingerprint (a job resumed under other ``--cores`` keeps its
epochs): a resume with another count than the checkpoint's warns that the weights will differ.
So does a resume with another device type, ``compile`` or torch version (recorded in
``last.pt`` since this version): the weights go on, the remaining epochs run under the new
setting, and the final weights may differ in the last bits from an uninterrupted run's.
``keep`` is not in the fingerprint either (it changes no step, see
:attr:`TrainConfig.OUTPUT_KEYS`): a run resumed or restored under another ``keep`` writes the
weights that one asks for, and a finished run rerun under another ``keep`` than the one its
outputs were written under is restored so without training, its outputs in place or not.
The resumed ``last.pt`` keeps the torch versions its epochs ran under (``"1.13.0 then 2.4.1"``;
none when the checkpoint recorded none), so a restore never takes them for this torch's alone.
A checkpoint of an interrupted run written for other parameters or another patch set, or by
other training code (see :func:`fingerprint`; an upgrade: said as such, see :func:`_why_refused`) is refused, naming the folder (a training run by hand must not replace
another's resume state), unless ``replace_stale`` (``--restart-if-changed``, and always for the pipeline's own training,
``data/models/<net>.pt`` with ``data/checkpoints/<net>``, so that a parameter edit retrains) or ``--no-resume``: then training starts afresh. Once the run has written its outputs, ``last.pt`` is
marked ``finished``: a later run by hand, the outputs all there, trains from scratch instead of
resuming a run that has nothing left to do (unless only ``keep`` differs: see above). A later run of the same fingerprint whose outputs
are missing or whose model does not load (a job killed in the seconds between the mark and its
exit, whose outputs Snakemake or SLURM then deleted; also ``snakemake -R`` and ``dvc repro -f``,
which delete them first), or whose ``--out`` holds another training's model (its ``.json``
records another fingerprint: a hand run of other parameters with its own ``--checkpoints``
wrote it; a ``.json`` of an earlier version records none and is trusted), writes the finished run's outputs again from ``last.pt``, the same
bytes, without training, in a new MLflow run tagged ``resumed_from`` ``finished run (model
restored)``; its ``.json`` and MLflow parameters are the finished run's settings (a
``checkpoint_every`` or ``val_batch`` of this run, which do not change the weights, may
differ). It is not restored, but trained from scratch (saying why in one line), when this run
has another device type, CPU thread count (on the CPU), ``compile`` or torch version (where
``last.pt`` records it): those change the weights, so a parameter edit of them retrains. ``--no-resume``, or deleting the checkpoint folder,
trains again (also the way to retrain under ``snakemake -R`` or ``dvc repro -f``: the training
cannot tell the outputs they deleted from those of a job killed after the mark: such a job ends
its MLflow run right after the mark and spends most of its last seconds in the interpreter's
exit, which no later mark would cover). One training at a time per checkpoint
folder: a second one given the same ``--checkpoints`` fails at once (:func:`checkpoints_lock`).

Divergence: when the training loss or the weights become NaN or infinite (a learning rate too
high), the run stops with one line naming the epoch and the step, before it saves anything of
the diverged state: ``last.pt`` and ``best.pt`` keep the last finite one and no model is
written. A validation sample with NaN logits never counts as correct (the argmax of NaNs is an
index, not a decision), and :func:`bafusion.nets.model.load_model` refuses non-finite weights.

Progress: one line per epoch on stderr (losses, accuracies, samples/s, seconds, and for the whole
training the epochs done, the time elapsed and about how long the rest will take); tqdm bars only
when stderr is a terminal (:mod:`bafusion.progress`; the bar ends with the whole training's time
left, ``training: about 1:23:45 left``, beside tqdm's for the epoch), so logs stay free of carriage returns: in
a log a plain line at most every 30 s within an epoch instead, and the lines start with the
local time.

Devices: ``device: auto`` picks cuda, then mps, then cpu. On CUDA, ``amp: auto`` trains
under bf16 autocast and ``channels_last: auto`` uses the channels-last memory format;
``compile: true`` wraps the net in ``torch.compile``. ``nproc > 1`` (or ``auto`` = the
number of GPUs) runs ``nproc`` processes with DistributedDataParallel (NCCL on GPUs, gloo
on CPU): the command re-launches itself under ``torch.distributed.run`` unless it already
runs under ``torchrun``. ``batch`` is the global batch, split evenly over the processes.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bafusion import tracking
from bafusion._version import __version__, hash_sources
from bafusion.atomic import atomic_file, folder_lock, write_text
from bafusion.config import batch_split_problem
from bafusion.errors import InputFileError, UserError
from bafusion.nets.augment import (
    INPUT_SCALE,
    N_VARIANTS,
    AugmentedLoader,
    load_split,
    read_attrs,
)
from bafusion.nets.model import (
    CifarResNet,
    ModelFileError,
    _load_problem,
    build_model,
    load_model,
    save_model,
    save_torch,
    torch_part_name,
)
from bafusion.progress import bar_options, bars_enabled, in_log, stamped
from bafusion.schema import default, validate_params
from bafusion.workspace import home_path

NETS = ("initial", "boundary")
CHECKPOINT_FORMAT = 1
ABORT_ENV = "BAFUSION_TRAIN_ABORT_AT_STEP"  # test hook: simulate a kill after that global step
LIVE_CURVE = "history.csv"  # in --checkpoints: the per-epoch curve so far


@dataclass
class TrainConfig:
    """Everything that defines a training run (``seed``/``patch``/``depth`` are top-level
    parameters, the rest the ``train:`` section, optionally overridden per net by
    ``train.initial:`` / ``train.boundary:``).

    Defaults, types and ranges are the parameter schema's (``x-default``: the embedded quick
    run; the paper's values are in params.yaml's comments); the values are checked against it
    at construction (:func:`bafusion.schema.validate_params`), then normalised (ints, floats).
    Build one from the parameters with :meth:`from_params`.
    """

    seed: int = default("seed")
    patch: int = default("patch")
    depth: int = default("depth")
    epochs: int = default("train.epochs")
    batch: int = default("train.batch")
    lr: float = default("train.lr")
    milestones: list[int] = field(default_factory=lambda: default("train.milestones"))
    gamma: float = default("train.gamma")
    momentum: float = default("train.momentum")
    weight_decay: float = default("train.weight_decay")
    nesterov: bool = default("train.nesterov")
    samples_per_epoch: int = default("train.samples_per_epoch")  # 0: all N*12 augmented samples every epoch
    val_samples: int = default("train.val_samples")  # 0: the whole validation split
    # The seed of the val_samples subset, apart from ``seed``: the members of an ensemble
    # (``train --seed N``) are validated on the same patches (0.8.0 drew it from seed + 1).
    val_seed: int = default("train.val_seed")
    val_batch: int = default("train.val_batch")
    device: str = default("train.device")
    amp: str | bool = default("train.amp")
    channels_last: str | bool = default("train.channels_last")
    compile: bool = default("train.compile")
    deterministic: bool = default("train.deterministic")
    nproc: int | str = default("train.nproc")
    threads: int = default("train.threads")  # 0: torch's default, at most threads.available_cores()
    checkpoint_every: int = default("train.checkpoint_every")  # steps; 0: only at epoch ends
    init: str = default("train.init")  # warm start: a model file (.pt with its .json) of the same depth
    # Weight of the context-consistency term; needs a patch set with surroundings
    # (patches.context > 0), see :func:`train_step`. 0 with such a set: both views, no term.
    consistency: float = default("train.consistency")
    # "Precise BN": augmented train samples over which every BatchNorm layer's running mean and
    # variance are re-estimated with frozen weights before each validation (so the net that is
    # validated, chosen as the best epoch and saved has statistics that match its weights);
    # 0: off, the running averages of the training steps (see :func:`recalibrate_bn`).
    bn_recalibrate: int = default("train.bn_recalibrate")
    # The weights written (--out): "best", the epoch of the best validation accuracy, or "last",
    # the net after the last epoch (the paper's: it describes no choice of an epoch).
    keep: str = default("train.keep")

    # Keys that may differ between a checkpoint and the run resuming from it (they are not in
    # its fingerprint). ``checkpoint_every``, ``val_batch`` and ``nproc`` leave the trained
    # weights as they are (the number of processes enters the fingerprint as the actual world
    # size); the device, ``compile`` (fused kernels round otherwise) and ``threads`` change
    # them. The CPU thread count changes the order of torch's floating-point sums on the
    # CPU; it stays out of the fingerprint so that a job resumed with other --cores
    # (train.threads: 0) is not thrown away, but the checkpoint records the count and a resume
    # with another one says that its weights will differ from an uninterrupted run's. A
    # finished run is restored only under the same device type, thread count (on the CPU) and
    # ``compile`` (see ``_not_restorable``), and with the torch version that wrote the checkpoint.
    RUNTIME_KEYS = ("device", "threads", "checkpoint_every", "compile", "val_batch", "nproc")
    # Keys that only choose what is written from a run's states, never a step of training:
    # ``keep`` (last.pt holds both the last weights and the best epoch's). Out of the
    # fingerprint, so a run resumed or a finished run restored under another ``keep`` goes on
    # from its checkpoint, and the model written follows this run's ``keep``.
    OUTPUT_KEYS = ("keep",)
    TOP_LEVEL = ("seed", "patch", "depth")

    def __post_init__(self) -> None:
        values = self.to_dict()
        top = {k: values.pop(k) for k in self.TOP_LEVEL}
        validate_params({**top, "train": values}, "TrainConfig")  # types and ranges: the schema's
        # Normalised as they enter the run's fingerprint (an integer-valued 3.0 is 3).
        self.seed, self.patch, self.depth, self.epochs, self.batch = (
            int(self.seed), int(self.patch), int(self.depth), int(self.epochs), int(self.batch))
        self.lr, self.gamma, self.momentum, self.weight_decay = (
            float(self.lr), float(self.gamma), float(self.momentum), float(self.weight_decay))
        self.milestones = [int(m) for m in self.milestones]
        self.samples_per_epoch, self.val_samples, self.val_batch, self.val_seed = (
            int(self.samples_per_epoch), int(self.val_samples), int(self.val_batch), int(self.val_seed))
        self.threads, self.checkpoint_every = int(self.threads), int(self.checkpoint_every)
        self.init = str(self.init)
        self.consistency = float(self.consistency)
        self.bn_recalibrate = int(self.bn_recalibrate)
        self.keep = str(self.keep)
        # Set by from_params: the net whose ``train.<net>:`` section gave the keys in
        # ``_per_net_keys`` (not a field: not in to_dict, the fingerprint or equality).
        self._net: str | None = None
        self._per_net_keys: frozenset[str] = frozenset()
        # Fields set by a command-line option since (``{"device": "--device"}``): named by it.
        self._options: dict[str, str] = {}

    def key(self, name: str) -> str:
        """The parameter key that set field ``name``, as params.yaml and ``--set`` spell it:
        ``seed``/``patch``/``depth`` top-level, ``train.<net>.<name>`` where :meth:`from_params`
        took the value from the net's own section, else ``train.<name>``; the option that set it
        where :meth:`set_by_option` did (``--device``)."""
        if name in self._options:
            return self._options[name]
        if name in self.TOP_LEVEL:
            return name
        if self._net is not None and name in self._per_net_keys:
            return f"train.{self._net}.{name}"
        return f"train.{name}"

    def set_by_option(self, name: str, value: Any, option: str) -> None:
        """Set field ``name`` to ``value`` from the command-line option ``option``, which
        :meth:`key` names for it from then on."""
        setattr(self, name, value)
        self._options[name] = option

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_params(cls, params: Mapping[str, Any], net: str, source: str = "parameters") -> TrainConfig:
        """The :class:`TrainConfig` of ``net`` from the parameters (params.yaml as a mapping).

        ``seed``, ``patch``, ``depth``, then ``train``, then ``train.<net>`` (an empty per-net
        ``init`` inherits ``train.init``); absent keys take the schema's defaults.

        Raises
        ------
        UserError
            ``net`` is not a net's name.
        bafusion.schema.ParamsError
            An unknown key or a value outside its rule (one line naming the key).
        """
        if net not in NETS:
            raise UserError(f"--net must be one of {', '.join(NETS)}, got {net!r}")
        mine = {k: params[k] for k in (*cls.TOP_LEVEL, "train") if k in params}
        validate_params(mine, source)
        values: dict[str, Any] = {k: mine[k] for k in cls.TOP_LEVEL if k in mine}
        section = dict(mine.get("train") or {})
        per_net = {n: section.pop(n, None) or {} for n in NETS}
        values.update(section)
        own = {k: v for k, v in per_net[net].items() if not (k == "init" and not v)}
        values.update(own)
        cfg = cls(**values)
        cfg._net, cfg._per_net_keys = net, frozenset(own)
        return cfg


def _param_name(cfg: TrainConfig, name: str) -> str:
    """The params.yaml key of the field ``name`` of ``cfg`` (:meth:`TrainConfig.key`, but the
    parameter's key also where a command-line option set it): an MLflow param name."""
    if name in cfg.TOP_LEVEL:
        return name
    if cfg._net is not None and name in cfg._per_net_keys:
        return f"train.{cfg._net}.{name}"
    return f"train.{name}"


def resolve_config(params: Mapping[str, Any], net: str) -> TrainConfig:
    """Build the :class:`TrainConfig` of ``net`` from the parameter dict (params.yaml):
    :meth:`TrainConfig.from_params`."""
    return TrainConfig.from_params(params, net)


def load_params(path: str | os.PathLike[str] | None, json_text: str | None = None,
                overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Parameters from a YAML file and/or a JSON string (the latter wins), then ``key.sub=value``
    overrides (values parsed as YAML), checked: :func:`bafusion.config.read_params`."""
    from bafusion.config import read_params

    return read_params(path, [("--params-json", json_text, None)], overrides)


# --------------------------------------------------------------------------------------
# Devices and processes
# --------------------------------------------------------------------------------------


def pick_device(name: str, local_rank: int = 0, key: str = "train.device") -> torch.device:
    """``auto`` -> cuda (``cuda:<local_rank>``), then mps, then cpu; else the named device.
    ``key``: what set ``name``, for the refusals (``train.boundary.device``, ``--device``)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{key}={name!r} but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{key}={name!r} but MPS is not available")
    return dev


def resolve_nproc(nproc: int | str, device: str, key: str = "train.nproc") -> int:
    """The number of processes of ``nproc`` (``auto``: one per GPU where ``device`` may be
    CUDA, else 1); ``key``: what set it, for the refusals (``--nproc``)."""
    if nproc in ("auto", None, 0):
        if device in ("auto", "cuda") and torch.cuda.is_available():
            return max(torch.cuda.device_count(), 1)
        return 1
    try:
        n = int(nproc)
    except (TypeError, ValueError) as e:
        raise UserError(f"{key} must be a positive integer or 'auto', got {nproc!r}") from e
    if n < 1:
        raise UserError(f"{key} must be >= 1, got {n}")
    return n


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def dist_from_env() -> Dist:
    return Dist(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def _auto_flag(value: str | bool, device: torch.device) -> bool:
    if isinstance(value, bool):
        return value
    v = str(value).lower()
    if v == "auto":
        return device.type == "cuda"
    return v in ("1", "true", "yes", "on")


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------


def fingerprint(cfg: TrainConfig, net: str, patches: Path, world_size: int) -> str:
    """Identity of a run: the weight-relevant parameters, the net, the number of processes,
    the training code (source of this module, ``augment`` and ``model``: a fixed trainer must
    not resume a checkpoint of the old one), and the patch set (its root attributes, its size,
    and a hash of its labels and of a strided sample of its patches)."""
    from bafusion.nets import augment, model

    d = {k: v for k, v in cfg.to_dict().items()
         if k not in TrainConfig.RUNTIME_KEYS and k not in TrainConfig.OUTPUT_KEYS}
    h = hashlib.sha256()
    h.update(json.dumps({"cfg": d, "net": net, "world": world_size}, sort_keys=True, default=str).encode())
    hash_sources(h, [mod.__file__ or "" for mod in (sys.modules[__name__], augment, model)])
    if cfg.init:  # the warm-start weights, not just their path
        with contextlib.suppress(OSError):
            h.update(Path(home_path(cfg.init)).read_bytes())
    _hash_patches(h, patches)
    return h.hexdigest()


def _hash_patches(h: Any, patches: Path) -> None:
    """Feed the patch set's identity to the hash ``h`` (see :func:`fingerprint`)."""
    import h5py

    h.update(json.dumps(read_attrs(patches), sort_keys=True, default=str).encode())
    h.update(str(patches.stat().st_size).encode())
    with h5py.File(patches, "r") as f:
        for split in ("train", "val"):
            if split in f and "y" in f[split] and "x" in f[split]:
                y = np.asarray(f[split]["y"][...])
                h.update(y.tobytes())
                if "y_block" in f[split]:  # (absent from older files: their fingerprint as before)
                    h.update(np.asarray(f[split]["y_block"][...]).tobytes())
                n = len(y)
                if n:
                    step = max(1, n // 64)
                    h.update(np.asarray(f[split]["x"][0:n:step]).tobytes())


def patches_digest(patches: Path) -> str:
    """The patch set's part of :func:`fingerprint` alone (stored in checkpoints, so that a
    refused or replaced one can say whether the patch set changed)."""
    h = hashlib.sha256()
    _hash_patches(h, patches)
    return h.hexdigest()


def training_code_digest() -> str:
    """sha256 of the training code's sources, the part of :func:`fingerprint` that is code
    (this module, ``augment`` and ``model``), stored in checkpoints so that a refused or
    replaced one can say that the code changed (bafusion upgraded or edited)."""
    from bafusion.nets import augment, model

    h = hashlib.sha256()
    hash_sources(h, [mod.__file__ or "" for mod in (sys.modules[__name__], augment, model)])
    return h.hexdigest()


def _neutral(cfg: TrainConfig, k: str) -> Any:
    """The default of :class:`TrainConfig`'s field ``k`` (the schema's ``x-default``): for a
    key added after a checkpoint was written, the value that trains as before it existed (a
    new setting is off by default: ``train.bn_recalibrate: 0``, ``train.init: ""``)."""
    f = next((f for f in dataclasses.fields(cfg) if f.name == k), None)
    if f is None:
        return object()
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else object()


def _what_changed(ck: Mapping[str, Any], cfg: TrainConfig, net: str, pdigest: str, most: int = 3,
                  code: str | None = None) -> str:
    """What differs between the run that wrote the checkpoint ``ck`` and this one, for the
    user: up to ``most`` parameters as ``train.lr 0.01 -> 0.005`` (each by the key that set it
    in this run, :meth:`TrainConfig.key`: ``seed``, ``patch`` and ``depth`` by their top-level
    names, ``train.initial.lr`` for a value of the net's own section), "the patch set", and
    "the training code changed since this checkpoint was written" where ``code`` (this run's
    :func:`training_code_digest`) differs from the checkpoint's. A key the checkpoint does not
    record, at its default in this run (:func:`_neutral`), is no parameter change: the
    checkpoint predates the key, so its code is another (an upgrade)."""
    def show(v: Any) -> str:
        return json.dumps(v, default=str)

    parts: list[str] = []
    added = False  # a key newer than the checkpoint, at its default: other code, not a parameter
    old = ck.get("config")
    if isinstance(old, Mapping):
        new = cfg.to_dict()
        missing = object()
        keys = (k for k in set(old) | set(new) if k not in (*TrainConfig.RUNTIME_KEYS, *TrainConfig.OUTPUT_KEYS))
        for name, k in sorted((cfg.key(k), k) for k in keys):
            a, b = old.get(k, missing), new.get(k, missing)
            if a is missing and b is not missing and b == _neutral(cfg, k):
                added = True
                continue
            if a != b:
                parts.append(f"{name} {'(unset)' if a is missing else show(a)} -> "
                             f"{'(unset)' if b is missing else show(b)}")
    if isinstance(ck.get("net"), str) and ck["net"] != net:
        parts.insert(0, f"net {ck['net']} -> {net}")
    shown = parts[:most]
    if len(parts) > most:
        shown.append(f"{len(parts) - most} more")
    old_digest = ck.get("patches_digest")
    old_code = ck.get("code_digest")
    # True: changed; False: the same; None: unknown (a checkpoint of a version that did not record it)
    code_changed = (old_code != code) if isinstance(old_code, str) and code is not None else (True if added else None)
    if isinstance(old_digest, str):
        if old_digest != pdigest:
            shown.append("the patch set")
    elif not parts and code_changed is None:  # a checkpoint of a version that did not record its patch set
        shown.append(_either(["the patch set", "the training code",
                              *([f"the weights of {cfg.key('init')}={cfg.init}"] if cfg.init else [])]))
    if code_changed:
        shown.append(CODE_CHANGED)
    if not shown:  # the rest of the fingerprint: the code, and the warm-start file's content
        rest = [*(["the training code"] if code_changed is None else []),
                *([f"the weights of {cfg.key('init')}={cfg.init}"] if cfg.init else [])]
        shown.append(_either(rest) if rest else "the run's fingerprint")
    return ", ".join(shown)


#: What :func:`_what_changed` says of a checkpoint written by other training code.
CODE_CHANGED = "the training code changed since this checkpoint was written"


def _why_refused(ck: Mapping[str, Any], cfg: TrainConfig, net: str, pdigest: str, code: str) -> str:
    """Why the checkpoint ``ck``, of another fingerprint than this run's, is not resumed (after
    "its last.pt"): other parameters or another patch set (:func:`_what_changed`), or, where
    that is all, other training code (bafusion upgraded or edited: a checkpoint is resumed only
    by the code that wrote it, whose steps it continues)."""
    what = _what_changed(ck, cfg, net, pdigest, code=code)
    if what == CODE_CHANGED:
        return (f"was written by other training code ({CODE_CHANGED}: bafusion was upgraded or edited, and a "
                "checkpoint is resumed only by the code that wrote it)")
    return f"was written for other parameters or another patch set ({what})"


def _other_world_size(ck: Mapping[str, Any], cfg: TrainConfig, net: str, patches: Path, world_size: int) -> int | None:
    """The number of processes of the run that wrote the checkpoint ``ck`` where that alone
    differs from this run's (``world_size``): the rest of its fingerprint is this run's. None
    otherwise (the same number, another fingerprint for it too, or not recorded)."""
    ck_world = ck.get("world_size")
    if (isinstance(ck_world, int) and not isinstance(ck_world, bool) and ck_world != world_size
            and fingerprint(cfg, net, patches, ck_world) == ck.get("fingerprint")):
        return ck_world
    return None


def _processes_differ(ck_world: int, world_size: int) -> str:
    """What differs for a checkpoint of :func:`_other_world_size` (after "was written by" or
    "of"): the number of processes is in the fingerprint by design, as it changes the weights."""
    return (f"a run with {ck_world} process(es); this run has {world_size} "
            "(the number of processes changes the weights)")


def _either(items: list[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def _rng_state(device: torch.device) -> dict[str, Any]:
    st: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    name, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    st["numpy"] = {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                   "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}
    version, internal, gauss = random.getstate()
    st["python"] = {"version": int(version), "state": list(internal), "gauss": gauss}
    return st


def _set_rng_state(st: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(st["torch"])
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)
    n = st["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = st["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` under a temporary name, then rename (a kill never leaves half a file)."""
    with atomic_file(path, name=torch_part_name(path)) as tmp:
        save_torch(state, tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        raise InputFileError(path, f"unreadable checkpoint ({_load_problem(path, e)}); delete it to start afresh") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputFileError(path, "not a bafusion training checkpoint; delete it to start afresh")
    return state


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------


@dataclass
class Paths:
    out: Path
    checkpoints: Path
    metrics: Path
    plots: Path


def default_paths(net: str, out: str | os.PathLike[str]) -> Paths:
    """The checkpoint folder, metrics JSON and per-epoch CSV of a training that writes ``out``.

    For the pipeline's model ``data/models/<net>.pt`` (relative to the working directory) they
    are the pipeline's: ``data/checkpoints/<net>/``, ``metrics/train_<net>.json`` and
    ``metrics/plots/train_<net>.csv``. For any other ``out`` they lie beside it,
    ``<dir>/<stem>.checkpoints/``, ``<dir>/<stem>.metrics.json`` and ``<dir>/<stem>.epochs.csv``:
    a training run by hand inside a pipeline project neither takes over the pipeline's resume
    state nor rewrites its git-tracked metrics."""
    out = Path(out)
    pipeline = Path("data/models") / f"{net}.pt"
    if out.resolve() == pipeline.resolve():
        return Paths(
            out=out,
            checkpoints=Path("data/checkpoints") / net,
            metrics=Path("metrics") / f"train_{net}.json",
            plots=Path("metrics/plots") / f"train_{net}.csv",
        )
    return Paths(
        out=out,
        checkpoints=out.with_name(f"{out.stem}.checkpoints"),
        metrics=out.with_name(f"{out.stem}.metrics.json"),
        plots=out.with_name(f"{out.stem}.epochs.csv"),
    )


def two_view_loss(logits: torch.Tensor, y: torch.Tensor, consistency: float) -> torch.Tensor:
    """Loss of a context batch (``CifarResNet.forward(x, context)``: isolated-patch logits
    stacked over in-context logits): the cross-entropy of both views plus ``consistency``
    times the symmetric Kullback-Leibler divergence between their class probabilities.

    The isolated view is the paper's classifier (and fusion's exact mode); the in-context
    view is what fusion's dense pass computes. Training both to agree makes the dense pass a
    faithful fast evaluation of the patch classifier. (The divergence, unlike a squared
    logit difference, stays bounded for confident nets and does not vanish where they
    disagree.)"""
    b = y.shape[0]
    li, lc = logits[:b].float(), logits[b:].float()
    loss = F.cross_entropy(li, y) + F.cross_entropy(lc, y)
    if consistency:
        pi, pc = F.log_softmax(li, 1), F.log_softmax(lc, 1)
        sym_kl = 0.5 * (F.kl_div(pi, pc, log_target=True, reduction="batchmean")
                        + F.kl_div(pc, pi, log_target=True, reduction="batchmean"))
        loss = loss + consistency * sym_kl
    return loss


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               amp: bool, device: torch.device, context: int = 0,
               consistency: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step; returns the summed loss and the number of correct predictions (tensors on
    ``device``, not synchronised, so the host never waits for the device).

    ``context`` > 0: ``x`` holds patches with that many pixels of surroundings; the loss is
    :func:`two_view_loss` and the count is that of the isolated view."""
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
        if context:
            logits_all = model(x, context)
            loss = two_view_loss(logits_all, y, consistency)
            logits = logits_all[: y.shape[0]]
        else:
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        return loss.detach() * y.shape[0], (logits.argmax(1) == y).sum()


@torch.no_grad()
def evaluate(model: nn.Module, loader: AugmentedLoader, amp: bool, device: torch.device,
             dist: Dist, context: int = 0) -> tuple[float, float, int, dict[str, float]]:
    """Mean loss, accuracy and count over the loader (summed over all processes; NaN when
    empty), of the isolated patches; a sample with a NaN or infinite logit is never counted
    correct (the argmax of NaN logits is an index, not a decision). ``context`` > 0 adds, in a dict, the in-context view's
    accuracy (``val_acc_context``) and the share of samples where the two views decide alike
    (``val_view_agreement``).

    The loss does not depend on the batch size (``train.val_batch``): it is the exactly
    rounded sum (``math.fsum``) of the per-sample losses, which on the CPU are the same in any
    batch of two or more; a batch of one sample (a tail) takes other kernels, so it is
    evaluated doubled. (A sum per batch made the last digits depend on the batch size.)"""
    was = model.training
    model.eval()
    tot = torch.zeros(5, dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)
    losses: list[torch.Tensor] = []
    for x, y in loader:
        b = y.shape[0]
        if b == 1:  # one sample alone goes through other kernels than in a batch: its loss differed
            x = torch.cat([x, x])
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x, context) if context else model(x)
        n_in = x.shape[0]
        li = logits[:b]
        losses.append(F.cross_entropy(li.float(), y, reduction="none"))
        ok_i = torch.isfinite(li).all(1)  # argmax of NaN logits is an index, not a decision
        tot[1] += ((li.argmax(1) == y) & ok_i).sum()
        tot[2] += b
        if context:
            lc = logits[n_in:n_in + b]
            ok_c = torch.isfinite(lc).all(1)
            tot[3] += ((lc.argmax(1) == y) & ok_c).sum()
            tot[4] += ((lc.argmax(1) == li.argmax(1)) & ok_i & ok_c).sum()
    if losses:
        per_sample = torch.cat(losses).cpu().numpy().astype(np.float64)
        tot[0] = math.fsum(per_sample.tolist())  # exactly rounded: the same in any order or grouping
    if dist.active:
        torch.distributed.all_reduce(tot)
    model.train(was)
    n = int(tot[2].item())
    if n == 0:
        return math.nan, math.nan, 0, {}
    extra = {"val_acc_context": float(tot[3] / n), "val_view_agreement": float(tot[4] / n)} if context else {}
    return float(tot[0] / n), float(tot[1] / n), n, extra


def bn_recalibration_seed(seed: int, epoch: int) -> int:
    """The seed of the draw of the samples that re-estimate the BatchNorm statistics after
    epoch ``epoch`` (1-based) of a run of ``seed``: a function of both only, so that a resumed
    run draws what an uninterrupted one does, and separate from the training's own draws
    (which it neither advances nor repeats)."""
    digest = hashlib.sha256(f"bafusion bn_recalibrate {int(seed)} {int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # < 2**63


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: AugmentedLoader, amp: bool, device: torch.device,
                   dist: Dist, context: int = 0) -> int:
    """Re-estimate the running mean and variance of every BatchNorm layer of ``model`` with its
    weights frozen ("precise BN"): the statistics are reset, then averaged over every batch of
    ``loader`` in training mode (forward only, cumulative average: ``momentum=None``), each
    layer's momentum and batch count are restored after. Under DDP the processes' estimates are
    averaged (their shards hold equally many batches), so all of them hold the same statistics.

    While the learning rate is high the weights move faster than the running averages of the
    training steps (momentum 0.1) follow, and the eval-mode net (validated, chosen as the best
    epoch and saved) swings with where in that lag an epoch ends; these statistics match the
    weights. Returns the number of samples this process used.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and m.track_running_stats]
    if not bns:
        return 0
    was = model.training
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    model.train()
    n = 0
    try:
        for x, y in loader:
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                model(x, context) if context else model(x)
            n += int(y.shape[0])
    finally:
        for m, (momentum, count) in zip(bns, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)
        model.train(was)
    if dist.active:
        for m in bns:
            for buf in (m.running_mean, m.running_var):
                torch.distributed.all_reduce(buf)
                buf.div_(dist.world_size)
    return n


def _recalibration_loader(train_set: Any, cfg: TrainConfig, epoch: int, local_batch: int, device: torch.device,
                          dist: Dist, channels_last: bool) -> AugmentedLoader:
    """The ``cfg.bn_recalibrate`` augmented train samples (all of them when that is more) of the
    BatchNorm re-estimation after epoch ``epoch``, drawn with :func:`bn_recalibration_seed`, in
    training batches; a last short batch is left out where a full one exists (a cumulative
    average weighs every batch alike)."""
    def make(drop_last: bool) -> AugmentedLoader:
        return AugmentedLoader(train_set, local_batch, device, seed=bn_recalibration_seed(cfg.seed, epoch),
                               augment=True, samples_per_epoch=cfg.bn_recalibrate, rank=dist.rank,
                               world_size=dist.world_size, drop_last=drop_last, channels_last=channels_last)

    loader = make(True)
    return loader if len(loader) else make(False)


class _NoRun:
    def log_metric(self, *a: Any, **k: Any) -> None: ...
    def log_metrics(self, *a: Any, **k: Any) -> None: ...
    def log_artifact(self, *a: Any, **k: Any) -> None: ...
    def set_tag(self, *a: Any, **k: Any) -> None: ...
    def log_model(self, *a: Any, **k: Any) -> None: ...


# Timings (samples/s, seconds) go to MLflow and the log only: the files DVC tracks must be the
# same for the same params and seed, or dvc.lock would change on every run.
CSV_FIELDS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "samples_seen")
CONTEXT_FIELDS = ("val_acc_context", "val_view_agreement")  # with patches.context > 0 only


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    buf = io.StringIO()
    extra = [k for k in CONTEXT_FIELDS if rows and k in rows[0]]
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS + tuple(extra), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    write_text(path, buf.getvalue())


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def _finite(loss_sum: torch.Tensor, model: nn.Module) -> bool:
    """Whether a summed training loss and every floating weight of ``model`` are finite (one
    synchronisation with the device)."""
    checks = [torch.isfinite(loss_sum).all()]
    checks += [torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()]
    return bool(torch.stack(checks).all())


def _diverged(net: str, epoch: int, first_bad: torch.Tensor, step: int, lr: float, last_path: Path,
              saved_at: str | None, dist: Dist, lr_key: str = "train.lr", also: str = "") -> UserError:
    """The error of a training whose loss or weights became NaN or infinite (every process
    raises it: the losses it saw were summed over all of them). ``also``: another setting to
    lower, said after the learning rate (``" or train.consistency (1e+30)"``)."""
    if dist.active:
        bad = torch.where(first_bad < 0, torch.full_like(first_bad, step), first_bad)
        torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MIN)
        first = int(bad.item())
    else:
        first = int(first_bad.item())
        first = step if first < 0 else first  # the loss was finite, the last step's update was not
    kept = (f"{last_path} keeps {saved_at}, the last finite state," if saved_at
            else "no checkpoint of this training was written,")
    return UserError(f"{net}: training diverged: the loss or the weights became NaN or infinite in epoch {epoch} "
                     f"at step {first} (learning rate {lr:.3g}); train again with a lower {lr_key}{also}; {kept} and no "
                     "model was written")


def _diverged_also(cfg: TrainConfig) -> str:
    """The other weight of the loss a diverged training names beside the learning rate: the
    consistency term's, when on (``train.consistency: 1e30`` diverged at step 2, and the
    message named only ``train.lr``)."""
    return f" or {cfg.key('consistency')} ({cfg.consistency:g})" if cfg.consistency > 0 else ""


def _clock(seconds: float) -> str:
    """``H:MM:SS`` (hours past 24 as they are): the run-wide times of the epoch line."""
    s = max(0, round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _run_progress(done: int, total: int, elapsed: float, epoch_walls: Sequence[float], resumed: bool) -> str:
    """The whole training's part of an epoch's line: epochs done of all, the wall time since
    training started in this process, and the time the remaining epochs will take at the mean
    wall time of the epochs this process ran (their training, BatchNorm re-estimate, validation
    and checkpoint; a resumed epoch with the time its part before the kill took, restored from
    the checkpoint). ``3/10 epochs, 0:05:12 elapsed, about 0:12:08 left``; after a resume the
    elapsed time is this process's, and says so (the time between the kill and the resume is no
    training's)."""
    line = f"{done}/{total} epochs, {_clock(elapsed)} elapsed" + (" since the resume" if resumed else "")
    if done < total and epoch_walls:
        line += f", about {_clock((total - done) * sum(epoch_walls) / len(epoch_walls))} left"
    return line


def _run_left(n: float, total: int, rate: float | None, epochs_after: int,
              epoch_walls: Sequence[float]) -> float | None:
    """The seconds the whole training has left as a terminal's epoch bar says them: the epoch's
    remaining steps (``total - n``) at the bar's rate (steps a second), then the ``epochs_after``
    epochs after it at the mean wall time of the epochs this process ran (the epoch line's
    estimate, :func:`_run_progress`), or, before one of them ended, at this epoch's steps' time
    (its validation not known yet). None while the bar has no rate yet."""
    if not rate or rate <= 0 or not math.isfinite(rate):
        return None
    per_epoch = sum(epoch_walls) / len(epoch_walls) if epoch_walls else total / rate
    return max(0.0, total - n) / rate + epochs_after * per_epoch


def _run_bar(tqdm: Any, epochs_after: Callable[[], int], epoch_walls: Sequence[float]) -> Any:
    """A tqdm bar class for a training's epoch on a terminal: its bar ends with the whole
    training's time left (``[00:41<00:50, 2.93batch/s, training: about 1:23:45 left]``, see
    :func:`_run_left`) where tqdm's own says the epoch's only. ``epochs_after`` gives the
    epochs after the bar's, ``epoch_walls`` (read at each redraw) the wall times of the epochs
    ended so far. Only for a bar drawn on a terminal: a log's plain lines keep their format."""

    class RunBar(tqdm):  # type: ignore[misc, valid-type]
        @property
        def format_dict(self) -> dict[str, Any]:
            d = super().format_dict
            n, total, rate, elapsed = d.get("n"), d.get("total"), d.get("rate"), d.get("elapsed")
            if not rate and elapsed and n is not None and n > (d.get("initial") or 0):
                rate = (n - (d.get("initial") or 0)) / elapsed  # before tqdm's smoothed rate
            left = _run_left(n or 0, total or 0, rate, epochs_after(), epoch_walls) if total else None
            if left is not None:
                post = d.get("postfix")
                d = {**d, "postfix": (f"{post}, " if post else "") + f"training: about {_clock(left)} left"}
            return d

    return RunBar


def _better(acc: float, best: float, n_val: int) -> bool:
    """Whether an epoch of validation accuracy ``acc`` over ``n_val`` samples beats ``best``
    (NaN: none yet). Without validation data the latest epoch is the best we know; a NaN
    accuracy over samples is never better."""
    if n_val == 0:
        return True
    if math.isnan(acc):
        return False
    return math.isnan(best) or acc > best



def _batch_over_epoch(net: str, batch: int, epoch_samples: int, patches: int, samples_per_epoch: int,
                      world_size: int, key: Callable[[str], str] = lambda name: f"train.{name}") -> str | None:
    """The warning that ``train.batch`` exceeds the samples of an epoch (each epoch is then one
    short step), saying what sets the epoch: ``train.samples_per_epoch`` only where it is set
    and below the split's ``patches x 12`` (it blamed the key at 0 too, where the epoch was the
    split trimmed to a multiple of the process count); None when the batch fits. ``key`` names
    a field by the key that set it (:meth:`TrainConfig.key`: ``train.initial.batch``)."""
    if batch <= epoch_samples:
        return None
    whole = patches * 12
    sub = 0 < samples_per_epoch < whole
    why = f"{key('samples_per_epoch')} {samples_per_epoch}" if sub else f"{patches} train patches x 12"
    if epoch_samples != (samples_per_epoch if sub else whole):
        why += f", trimmed to a multiple of the {world_size} processes"
    return (f"bafusion train: warning: {net}: {key('batch')} {batch} is more than the {epoch_samples} samples of an "
            f"epoch ({why}): each epoch is one step of {epoch_samples} (the batch is capped at the samples per "
            "epoch)")

#: In --checkpoints: held (``flock``) by the training that uses the folder.
LOCK_FILE = "train.lock"
#: Set by ``bafusion train --nproc N`` in the environment of its processes: the checkpoint
#: folder (resolved) whose lock the command holds for them while they run (it ends with the
#: command, which also ends them); :func:`train` then takes no lock on that folder.
LOCK_HELD_ENV = "BAFUSION_TRAIN_LOCK_HELD"


@contextlib.contextmanager
def checkpoints_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (its :data:`LOCK_FILE`) for one training.

    A second training given the same ``--checkpoints`` would resume the first one's live
    ``last.pt`` and both would write into it. The lock is taken without waiting; the OS
    releases it when the process ends, killed too. On Windows the lock is ``msvcrt``'s; where
    the system or the filesystem has no locks (``ENOLCK``: NFS without lockd, some FUSE mounts),
    no lock is taken, said once on stderr (:func:`bafusion.atomic.folder_lock`).

    The lock file is removed when the lock is released (while still held), and ``folder``
    too when this call created it and it is left empty: a training refused after it took the
    lock (a bad patch set) leaves nothing behind. A holder checks, once it has the lock, that
    the file it locked is still the one at the path (another holder may have removed it in
    between), and takes the lock again on the new file otherwise.

    Raises
    ------
    UserError
        Another process holds the lock.
    """
    def busy(pid: int | None) -> UserError:  # worded as fuse-dir's (bafusion.fusion.batch)
        who = f"process {pid}" if pid is not None else "another process"
        return UserError(f"{folder}: another training ({who}) is using this checkpoint folder "
                         "(wait for it to end, or give --checkpoints another folder)")

    with folder_lock(folder, LOCK_FILE, busy=busy, remove_created=True):
        yield


def train(net: str, patches: str | os.PathLike[str], cfg: TrainConfig, paths: Paths,
          resume: bool = True, progress: bool = True, dist: Dist | None = None,
          replace_stale: bool = False) -> dict[str, Any]:
    """Train ``net`` on the patch set ``patches`` and write the outputs in ``paths``.

    A ``last.pt`` of an interrupted run in ``paths.checkpoints`` written for other parameters,
    another patch set or another number of processes is refused (:class:`~bafusion.errors.UserError` naming the
    folder) unless ``replace_stale`` (the pipeline's rules: a parameter edit retrains) or not
    ``resume``: then training starts afresh over it.

    Returns the summary written to ``paths.metrics``, numbers only (on every process; only
    process 0 writes).
    """
    from tqdm import tqdm

    dist = dist or dist_from_env()
    patches = Path(patches)
    taken = {paths.out.resolve(), paths.out.with_suffix(".json").resolve()}
    for other in (paths.metrics, paths.plots):
        if other.resolve() in taken:
            raise UserError(f"{other}: would overwrite the model or its description; choose another path")
    if cfg.init:  # the warm-start model is an input: no output may replace it or its description
        init = Path(home_path(cfg.init))
        inputs = {init.resolve(), init.with_suffix(".json").resolve()}
        for what, other in (("--out", paths.out), ("--out", paths.out.with_suffix(".json")),
                            ("--report/--metrics", paths.metrics), ("--plots", paths.plots)):
            if other.resolve() in inputs:
                raise UserError(f"{what} {other}: would overwrite the warm-start model {cfg.key('init')}={init} "
                                "or its description; write the trained model elsewhere")
    # one training per checkpoint folder (process 0 holds it for the processes of a run, or the
    # command that launched them does)
    held = os.environ.get(LOCK_HELD_ENV) == str(paths.checkpoints.resolve())
    with checkpoints_lock(paths.checkpoints) if dist.main and not held else contextlib.nullcontext():
        return _train_locked(net, patches, cfg, paths, resume, progress, dist, tqdm, replace_stale)


def _flush_denormal_on() -> bool:
    """Whether torch flushes denormal floats to zero (:func:`torch.set_flush_denormal`, which
    has no getter): a denormal times one comes out zero. On the CPU whatever torch's default
    device (a notebook's ``torch.set_default_device("cuda")`` read the GPU's arithmetic, a
    ``"meta"`` one failed)."""
    return torch.tensor([1e-40], dtype=torch.float32, device="cpu").mul(1.0).item() == 0.0


def _train_locked(net: str, patches: Path, cfg: TrainConfig, paths: Paths, resume: bool, progress: bool,
                  dist: Dist, tqdm: Any, replace_stale: bool = False) -> dict[str, Any]:
    # torch's threads and denormal flushing are the process's: set for the training, then as
    # they were (a caller's process goes on: a notebook, the tests' in-process commands)
    threads, flush = torch.get_num_threads(), _flush_denormal_on()
    try:
        return _train_configured(net, patches, cfg, paths, resume, progress, dist, tqdm, replace_stale)
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        if _flush_denormal_on() != flush:
            torch.set_flush_denormal(flush)


def _train_configured(net: str, patches: Path, cfg: TrainConfig, paths: Paths, resume: bool, progress: bool,
                      dist: Dist, tqdm: Any, replace_stale: bool = False) -> dict[str, Any]:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    elif not (os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS")):
        # train.threads 0: torch's default (its current setting: in a fresh process MKL's count of
        # the affinity mask's cores, 1 under taskset -c 0 on a 2-core machine), at most the cores
        # this process may run on (threads.available_cores: the affinity mask and the cgroup's CPU
        # quota, which torch's count does not see: 64 threads in a container limited to 4 CPUs of a
        # 64-core machine, each throttled), as --nproc's processes share them. Unconstrained,
        # torch's count is at most the mask's CPUs (physical cores <= logical ones): unchanged. A count the environment gives torch is kept.
        from bafusion.threads import available_cores

        if (n := min(torch.get_num_threads(), available_cores())) != torch.get_num_threads():
            torch.set_num_threads(n)
    elif dist.main:
        _warn_threads_over_cores()
    device = pick_device(cfg.device, dist.local_rank, cfg.key("device"))
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # denormal gradients of a well-fit net slow the CPU down ~2x
    if dist.active and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend=backend)
    try:
        return _train(net, patches, cfg, paths, resume, progress, dist, device, tqdm, replace_stale)
    finally:
        if dist.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _warn_threads_over_cores() -> None:
    """With ``train.threads: 0``, a thread count the environment gives torch (``OMP_NUM_THREADS``,
    ``MKL_NUM_THREADS``) is kept; a warning line where the local processes' threads together
    exceed the cores they may run on (:func:`bafusion.threads.available_cores`: the affinity
    mask and the cgroup's CPU quota, which torch does not see; torch caps such a count at the
    machine's cores only): the threads past them are throttled, and torch's, which wait for
    each other at every layer, slow down all together."""
    from bafusion.threads import available_cores, cpu_quota

    n, cores = torch.get_num_threads(), available_cores()
    procs = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))
    if n * procs <= cores:
        return
    var = next(v for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if os.environ.get(v))
    quota = cpu_quota()
    where = "the affinity mask" + (f" and the CPU quota {quota:g}" if quota is not None else "; no CPU quota")
    each = f" in each of {procs} processes" if procs > 1 else ""
    print(f"bafusion train: warning: {var}={os.environ[var]} gives torch {n} CPU thread(s){each}, more than the "
          f"{cores} core(s) this process may use ({where}): kept as set, but the threads past them are throttled; "
          f"unset {var} (train.threads 0 then takes the cores) or set train.threads", file=sys.stderr)


def _train(net: str, patches: Path, cfg: TrainConfig, paths: Paths, resume: bool, progress: bool,
           dist: Dist, device: torch.device, tqdm: Any, replace_stale: bool = False) -> dict[str, Any]:
    amp = _auto_flag(cfg.amp, device) and device.type in ("cuda", "cpu")
    channels_last = _auto_flag(cfg.channels_last, device)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    problem = batch_split_problem(cfg.key("batch"), cfg.batch, cfg.key("nproc"), cfg.nproc, dist.world_size)
    if problem:
        raise UserError(problem)
    local_batch = cfg.batch // dist.world_size

    # the checkpoint to resume, read before the patch set (which can take minutes to load): an
    # unreadable one is refused at once
    last_path = paths.checkpoints / "last.pt"
    resume_state = load_checkpoint(last_path) if resume and last_path.exists() else None

    # data ---------------------------------------------------------------------------
    train_set = load_split(patches, "train", device, expect_kind=net, expect_patch=cfg.patch)
    if len(train_set) == 0:
        raise InputFileError(patches, f"the train split is empty: no {net} patches to train the {net} net on")
    val_set = load_split(patches, "val", device, expect_kind=net, expect_patch=cfg.patch)
    context = train_set.context
    if cfg.consistency and not context:
        raise UserError(f"{cfg.key('consistency')}={cfg.consistency} needs patches with surroundings, but {patches} holds "
                        "the patches alone: set patches.context (e.g. 16) and rerun the patches step")
    if context and context % CifarResNet.stride:
        raise InputFileError(patches, f"context {context} is not a multiple of the nets' stride {CifarResNet.stride}")
    loader = AugmentedLoader(train_set, local_batch, device, seed=cfg.seed, augment=True,
                             samples_per_epoch=cfg.samples_per_epoch, rank=dist.rank,
                             world_size=dist.world_size, channels_last=channels_last)
    if cfg.val_samples and cfg.val_samples < len(val_set):
        # a fixed subset of the validation split, the same for every seed (train.val_seed: 1, as
        # seed + 1 drew it for seed 0): runs of other seeds, an ensemble's members, are compared
        # on the same patches
        g = torch.Generator().manual_seed(cfg.val_seed)
        keep = torch.randperm(len(val_set), generator=g)[: cfg.val_samples].sort().values
        val_set = dataclasses.replace(val_set, x=val_set.x[keep.to(val_set.x.device)],
                                      y=val_set.y[keep.to(val_set.y.device)],
                                      y_block=None if val_set.y_block is None
                                      else val_set.y_block[keep.to(val_set.y_block.device)])
    val_loader = AugmentedLoader(val_set, max(1, cfg.val_batch // dist.world_size), device, augment=False,
                                 rank=dist.rank, world_size=dist.world_size, even_shards=False,
                                 channels_last=channels_last)

    if dist.main:
        print(stamped(f"bafusion train: {net}: {len(train_set)} train patches x 12 = {loader.num_samples} samples, "
              f"{loader.epoch_samples} per epoch, {len(val_set)} val patches; {device}, {dist.world_size} "
              f"process(es), batch {cfg.batch}, amp {amp}, channels_last {channels_last}"
              + (f"; BatchNorm statistics re-estimated on {min(cfg.bn_recalibrate, loader.num_samples)} samples "
                 f"before each validation ({cfg.key('bn_recalibrate')})" if cfg.bn_recalibrate else ""), sys.stderr), file=sys.stderr)
        line = _batch_over_epoch(net, cfg.batch, loader.epoch_samples, len(train_set), cfg.samples_per_epoch,
                                 dist.world_size, cfg.key)
        if line:  # one short step per epoch: the batch is capped
            print(line, file=sys.stderr)  # a warning: as it is

    # model, optimizer ---------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)
    model: CifarResNet = build_model(cfg.depth).to(device)
    if cfg.init:  # a checkpoint resumed below overrides these weights
        try:
            init_net, _ = load_model(Path(home_path(cfg.init)), expect=model.spec)  # ~/m.pt: the home's
        except ModelFileError as e:
            raise UserError(f"{cfg.key('init')}: {e}") from e
        model.load_state_dict(init_net.state_dict())
        if dist.main:
            print(stamped(f"bafusion train: {net} starts from the weights of {cfg.init}", sys.stderr), file=sys.stderr)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=cfg.milestones, gamma=cfg.gamma)

    fp = fingerprint(cfg, net, patches, dist.world_size)
    pdigest = patches_digest(patches)
    code_digest = training_code_digest()
    best_path = paths.checkpoints / "best.pt"
    start_epoch, global_step, samples_seen, train_time = 0, 0, 0, 0.0
    # the finished epochs' wall time: their steps, BatchNorm re-estimate, validation and
    # bookkeeping (checkpoints, MLflow logging, the live curve), summed over the runs that trained
    # them (a resume adds to last.pt's, which lacks the saving and logging of the epoch it is
    # written at, the number being in it; the finished run's last.pt has all); not in the model's
    # .json, which must not depend on the clock: in last.pt and the MLflow run's wall_time_s
    wall_time = 0.0
    history: list[dict[str, Any]] = []
    best_acc, best_epoch = math.nan, -1
    acc_dtype = torch.float32 if device.type == "mps" else torch.float64  # mps has no float64
    acc_state = torch.zeros(3, dtype=torch.float64)  # partial epoch: loss sum, correct, count
    epoch_time_done = 0.0
    resumed_from: str | None = None
    best_state: dict[str, torch.Tensor] | None = None  # process 0: the best epoch's weights, also in last.pt
    saved_at: str | None = None  # what last.pt holds of this training (said when it diverges)
    resumed_run_id: str | None = None  # the MLflow run of the interrupted run, when it had one
    mlflow_run_id: str | None = None  # this run's, recorded in last.pt
    restoring = False  # a finished run's outputs are written again from last.pt, without training
    # What produces the model written: this run's settings, or a restored run's (its runtime keys
    # may differ from this run's: those that do not change the weights, see _not_restorable).
    record: dict[str, Any] = {"config": cfg.to_dict(), "device": str(device), "threads": torch.get_num_threads(),
                              "torch": str(torch.__version__), "bafusion": __version__}
    if resume_state is not None:
        ck = resume_state
        not_restored = ""  # why a finished run of this fingerprint, its outputs missing, trains again
        kept_otherwise = ""  # the finished run's outputs were written under another keep: as 'train.keep "last" -> "best"'
        if ck.get("fingerprint") == fp and ck.get("finished"):
            missing = dist.main and _outputs_missing(paths)
            kept_otherwise = _keep_changed(ck, cfg, paths)  # the same on every process (one --out)
            # --out holds another training's model (its description records another fingerprint)
            foreign = _written_by_another(ck, paths)
            not_restored = _not_restorable(ck, cfg, device) if missing or kept_otherwise or foreign else ""
            # every process takes part
            restoring = _agreed((missing or bool(kept_otherwise) or bool(foreign)) and not not_restored, dist, device)
        if ck.get("fingerprint") != fp:
            ck_world = _other_world_size(ck, cfg, net, patches, dist.world_size)
            if ck_world is not None:
                why = f"was written by {_processes_differ(ck_world, dist.world_size)}"
            else:
                why = _why_refused(ck, cfg, net, pdigest, code_digest)
            if not replace_stale and not ck.get("finished"):
                # another training's resume state (the pipeline's, run by hand with other
                # parameters): never replaced unasked. Every process sees the same file, so all
                # stop here, before any collective. A finished run's has nothing left to resume.
                raise UserError(f"{paths.checkpoints}: its last.pt {why}: pass --checkpoints DIR for a separate "
                                "training, or --no-resume (or --restart-if-changed) to replace it")
            if dist.main:
                print(stamped(f"bafusion train: {last_path} {why}; starting afresh", sys.stderr), file=sys.stderr)
        elif ck.get("finished") and not restoring:
            # The checkpoint belongs to a run that completed and whose outputs are all there:
            # running the same training again by hand means training again. So does a run whose
            # outputs are gone when a setting outside the fingerprint that changes the weights
            # differs (a parameter edit retrains; its model would be recorded under settings
            # that did not produce it).
            if dist.main and not_restored:
                whose = (f"whose outputs were written under another keep ({kept_otherwise})" if kept_otherwise
                         else f"whose outputs were replaced ({foreign})" if foreign
                         else "whose outputs are missing")
                print(stamped(f"bafusion train: {last_path} belongs to a finished run {whose}, but its "
                      f"model is not what this run trains ({not_restored}: that changes the weights); training "
                      "from scratch instead of restoring it", sys.stderr), file=sys.stderr)
            elif dist.main:
                print(stamped(f"bafusion train: {last_path} belongs to a finished run (its model was written); "
                      "training from scratch", sys.stderr), file=sys.stderr)
        else:
            # An interrupted run resumes; a finished run of this fingerprint whose outputs are
            # gone (killed in the seconds after it marked last.pt finished, while MLflow ended
            # the run and the interpreter exited: Snakemake and SLURM then delete the outputs of
            # the failed job) "resumes" after its last epoch: no epoch runs, and the end below
            # writes the best epoch's model, its description, metrics and plots as that run did.
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            loader.load_state_dict(ck["loader"])
            _set_rng_state(ck["rng"], device)
            start_epoch = int(ck["epoch"])
            global_step = int(ck["global_step"])
            samples_seen = int(ck["samples_seen"])
            train_time = float(ck["train_time"])
            wall_time = float(ck.get("wall_time", math.nan))  # NaN: a checkpoint that did not record it
            history = list(ck["history"])
            best_acc, best_epoch = float(ck["best_acc"]), int(ck["best_epoch"])
            best_state = ck.get("best_model")
            if best_epoch >= 1 and best_state is None:
                raise InputFileError(last_path, f"holds no weights of its best epoch {best_epoch}; "
                                                "rerun with --no-resume to train afresh")
            if dist.main:
                acc_state = ck["partial"].double()
            epoch_time_done = float(ck["partial_time"])
            resumed_from = f"epoch {start_epoch} step {loader.position}"
            saved_at = (f"step {global_step} (in epoch {start_epoch + 1})" if loader.position
                        else f"the end of epoch {start_epoch} (step {global_step})")
            resumed_run_id = ck.get("mlflow_run_id")
            if restoring:
                resumed_from = "finished run (model restored)"
                # its outputs record the settings that trained it (runtime keys of this run that do
                # not change the weights may differ: checkpoint_every, val_batch, nproc's spelling)
                old_cfg = ck.get("config")
                record = {"config": {**record["config"], **(old_cfg if isinstance(old_cfg, Mapping) else {}),
                                     **{k: record["config"][k] for k in TrainConfig.OUTPUT_KEYS}},  # this run's keep
                          "device": str(ck.get("device", record["device"])),
                          "threads": ck.get("threads", record["threads"]),
                          "torch": ck.get("torch_version"),  # None: not recorded (an older version's)
                          "bafusion": ck.get("bafusion_version")}  # likewise
            else:  # the epochs so far ran under the checkpoint's torch, threads, device: last.pt goes on saying so
                record["torch"] = _torch_after_resume(ck.get("torch_version"))
                record["bafusion"] = _after_resume(ck.get("bafusion_version"), __version__)
                threads = _after_resume(ck.get("threads"), str(record["threads"]))
                record["threads"] = record["threads"] if threads == str(record["threads"]) else threads
                record["device"] = _device_after_resume(ck.get("device"), device)
            if dist.main and not restoring:
                print(stamped(f"bafusion train: resuming {net} from {last_path} ({resumed_from})", sys.stderr), file=sys.stderr)
            if dist.main:
                if best_state is not None:  # best.pt is for a look only: put back what last.pt holds
                    save_checkpoint(best_path, {"format": CHECKPOINT_FORMAT, "fingerprint": fp, "epoch": best_epoch,
                                                "val_acc": best_acc, "model": best_state})
                was = ck.get("threads")  # on the CPU only: a GPU-trained one warns of the device below
                if (_threads_matter(ck.get("device"), device) and was is not None
                        and str(was) != str(torch.get_num_threads()) and not restoring):
                    print(f"bafusion train: warning: {last_path} was trained with {was} CPU thread(s) per process, "
                          f"this run uses {torch.get_num_threads()}: the final weights will differ from an "
                          f"uninterrupted run's ({was} per process would resume exactly)", file=sys.stderr)
                changed = _weight_settings_changed(ck, cfg, device, threads=False)
                if changed and not restoring:  # allowed (the weights go on), but not an uninterrupted run
                    print(f"bafusion train: warning: {last_path} was trained with {', '.join(changed)}: the remaining "
                          "epochs run so, and the final weights may differ in the last bits from an uninterrupted "
                          "run's", file=sys.stderr)

    train_model: nn.Module = model
    if dist.active:
        ddp_kw: dict[str, Any] = {"device_ids": [device.index]} if device.type == "cuda" else {}
        train_model = nn.parallel.DistributedDataParallel(model, **ddp_kw)
    if cfg.compile:
        train_model = torch.compile(train_model)  # type: ignore[assignment]

    abort_at = int(os.environ.get(ABORT_ENV, "0") or 0)

    def checkpoint_state(epoch: int, partial: torch.Tensor, partial_time: float) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT, "fingerprint": fp, "net": net, "config": record["config"],
            "patches_digest": pdigest, "code_digest": code_digest,
            "model": _cpu_state(model), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "loader": loader.state_dict(), "rng": _rng_state(device), "epoch": epoch,
            "global_step": global_step, "samples_seen": samples_seen, "train_time": train_time,
            "wall_time": wall_time,
            "history": history, "best_acc": best_acc, "best_epoch": best_epoch, "best_model": best_state,
            "partial": partial.cpu().double(), "partial_time": partial_time,
            "threads": record["threads"],  # changes the weights on the CPU, see RUNTIME_KEYS
            "device": record["device"],  # so does the device: a finished run is restored on its own only
            **({"torch_version": record["torch"]} if record["torch"] else {}),  # and torch's version
            **({"bafusion_version": record["bafusion"]} if record["bafusion"] else {}),  # the model's .json says it
            "world_size": dist.world_size,  # in the fingerprint: said when a resume differs in it
            "mlflow_run_id": mlflow_run_id,  # a resumed run's MLflow run names it (resumed_run_id)
        }

    # The settings as given (device: auto), and under resolved.* what trained the weights: the
    # device, bf16 autocast, memory layout, CPU threads per process and torch version (all of
    # which change them; resolved.device came last before, and "auto" of the settings won).
    # The settings under params.yaml's names (seed, train.lr, train.initial.lr where the net's own
    # section set it), as the parent run logs them: the train section was logged without its
    # prefix (lr, epochs), so a search for params.`train.lr` missed the training runs.
    run_params = {"net": net, "patches": str(patches), "world_size": dist.world_size,
                  **{_param_name(cfg, k): v for k, v in record["config"].items()},
                  "resolved": {"device": record["device"], "amp": amp, "channels_last": channels_last,
                               "threads": record["threads"], "torch": record["torch"] or "unknown"}}
    run_tags = {"net": net, "resumed_from": resumed_from or "none", tracking.METRIC_SCHEMA_TAG: tracking.METRIC_SCHEMA,
                **({"resumed_run_id": resumed_run_id} if resumed_run_id else {})}
    run_ctx = (tracking.stage_run(f"train_{net}", params=run_params, tags=run_tags)
               if dist.main else contextlib.nullcontext(_NoRun()))
    with run_ctx as run:
        mlflow_run_id = getattr(run, "run_id", None)
        if resumed_run_id and hasattr(run, "end_interrupted"):  # a SIGKILLed run stayed RUNNING
            run.end_interrupted(resumed_run_id)
        for row in history:  # a resumed run repeats the earlier epochs so it holds the whole curve
            run.log_metrics(_epoch_metrics(row), step=int(row["epoch"]))
        run_t0 = time.perf_counter()  # the whole training's elapsed time and time left (_run_progress)
        epoch_walls: list[float] = []
        run_bar = _run_bar(tqdm, lambda: cfg.epochs - epoch - 1, epoch_walls)
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            lr = opt.param_groups[0]["lr"]
            tot = acc_state.to(device=device, dtype=acc_dtype)
            acc_state = torch.zeros(3, dtype=torch.float64)
            t0 = time.perf_counter() - epoch_time_done
            epoch_time_done = 0.0
            first_bad = torch.full((), -1, dtype=torch.int64, device=device)  # first non-finite loss's step
            # on a terminal the bar says the whole training's time left too (tqdm's: the epoch's)
            bar_cls = run_bar if bars_enabled(dist.main and progress) else tqdm
            bar = bar_cls(loader, total=len(loader), initial=loader.position, desc=f"{net} epoch {epoch + 1}/{cfg.epochs}",
                          unit="batch", **bar_options(dist.main and progress, mininterval=2.0, leave=False))
            for x, y in bar:
                loss_sum, correct = train_step(train_model, opt, x, y, amp, device, context, cfg.consistency)
                tot[0] += loss_sum.to(acc_dtype)
                tot[1] += correct
                tot[2] += y.shape[0]
                global_step += 1
                first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss_sum),  # no sync with the device
                                        torch.full_like(first_bad, global_step), first_bad)
                if abort_at and global_step == abort_at:
                    raise KeyboardInterrupt(f"{ABORT_ENV}={abort_at}: simulated kill after step {global_step}")
                if cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0 and loader.position < len(loader):
                    part = tot.clone()
                    if dist.active:
                        torch.distributed.all_reduce(part)
                    if not _finite(part[0], model):  # never save a diverged state over the last good one
                        raise _diverged(net, epoch + 1, first_bad, global_step, lr, last_path, saved_at, dist,
                                        cfg.key("lr"), _diverged_also(cfg))
                    if dist.main:
                        save_checkpoint(last_path, checkpoint_state(epoch, part, time.perf_counter() - t0))
                    saved_at = f"step {global_step} (in epoch {epoch + 1})"
            bar.close()
            if dist.active:
                torch.distributed.all_reduce(tot)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t_trained = time.perf_counter()
            epoch_time = t_trained - t0
            if not _finite(tot[0], model):  # before anything is saved: the checkpoints keep the last good state
                raise _diverged(net, epoch + 1, first_bad, global_step, lr, last_path, saved_at, dist,
                                cfg.key("lr"), _diverged_also(cfg))
            n_epoch = int(tot[2].item())
            samples_seen += n_epoch
            train_time += epoch_time
            sched.step()
            bn_time, bn_samples = 0.0, 0
            if cfg.bn_recalibrate:  # before the validation: the best epoch is chosen and saved with these
                t_bn = time.perf_counter()
                bn_samples = recalibrate_bn(model, _recalibration_loader(train_set, cfg, epoch + 1, local_batch,
                                                                         device, dist, channels_last),
                                            amp, device, dist, context) * dist.world_size
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                bn_time = time.perf_counter() - t_bn
            val_loss, val_acc, n_val, val_extra = evaluate(model, val_loader, amp, device, dist, context)
            row = {
                "epoch": epoch + 1, "lr": lr,
                "train_loss": float(tot[0] / max(n_epoch, 1)), "train_acc": float(tot[1] / max(n_epoch, 1)),
                "val_loss": val_loss, "val_acc": val_acc,
                "samples_per_s": n_epoch / epoch_time if epoch_time > 0 else math.nan,
                "epoch_time_s": epoch_time, "samples_seen": samples_seen, **val_extra,
                **({"bn_recalibrate_s": bn_time} if cfg.bn_recalibrate else {}),
            }
            history.append(row)
            improved = _better(val_acc, best_acc, n_val)
            if improved:
                best_acc, best_epoch = val_acc, epoch + 1
            t_book = time.perf_counter()
            wall_time += epoch_time + t_book - t_trained
            if dist.main:
                if improved:
                    best_state = _cpu_state(model)
                    save_checkpoint(best_path, {"format": CHECKPOINT_FORMAT, "fingerprint": fp, "epoch": epoch + 1,
                                                "val_acc": val_acc, "model": best_state})
                save_checkpoint(last_path, checkpoint_state(epoch + 1, torch.zeros(3, dtype=torch.float64), 0.0))
                run.log_metrics(_epoch_metrics(row), step=epoch + 1)
                _write_csv(paths.checkpoints / LIVE_CURVE, history)  # not --plots: see the module's docstring
                now = time.perf_counter()
                # the epoch's checkpoints and logging, left out of wall_time until now (and so
                # of last.pt's, which is saved above: a resume misses the last epoch's)
                wall_time += now - t_book
                epoch_walls.append(epoch_time + now - t_trained)
                print(in_log(f"bafusion train: {net} epoch {epoch + 1}/{cfg.epochs} lr {lr:.3g} "
                             f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | "
                             f"val loss {val_loss:.4f} acc {val_acc:.4f}"
                             + (f" (in context {val_extra['val_acc_context']:.4f}, views agree "
                                f"{val_extra['val_view_agreement']:.4f})" if val_extra else "")
                             + f" | {row['samples_per_s']:.1f} samples/s, {epoch_time:.1f} s"
                             + (f" (+ {bn_time:.1f} s re-estimating BatchNorm on {bn_samples} samples)"
                                if cfg.bn_recalibrate else "")
                             + f" | {_run_progress(epoch + 1, cfg.epochs, now - run_t0, epoch_walls, resumed_from is not None)}"),
                      file=sys.stderr)
            saved_at = f"the end of epoch {epoch + 1} (step {global_step})"
            if dist.active:
                torch.distributed.barrier()

        # final model: the best epoch, or the last (train.keep) -------------------------------
        if not history:
            raise UserError(f"{last_path}: holds no finished epoch")
        last = history[-1]
        best_row = next((r for r in history if int(r["epoch"]) == best_epoch), last)
        keep_last = cfg.keep == "last"
        saved_row = last if keep_last else best_row  # the epoch whose weights are written
        saved_epoch = int(saved_row["epoch"])
        # Numbers only (DVC metrics: every key a column of dvc exp show); the net and the device
        # are in the model's .json and the MLflow run. val_acc, val_loss, train_acc, train_loss:
        # the saved epoch's (saved_epoch; with keep best, best_epoch); with keep last, the best
        # epoch's validation numbers beside them as best_val_acc / best_val_loss.
        summary = {
            "epochs": cfg.epochs, "best_epoch": best_epoch, "saved_epoch": saved_epoch,
            "val_acc": saved_row["val_acc"], "val_loss": saved_row["val_loss"],
            "train_acc": saved_row["train_acc"], "train_loss": saved_row["train_loss"],
            "last_val_acc": last["val_acc"], "last_train_acc": last["train_acc"],
            **({"best_val_acc": best_row["val_acc"], "best_val_loss": best_row["val_loss"]} if keep_last else {}),
            "samples_seen": samples_seen,
            "effective_train_samples": loader.num_samples, "train_patches": len(train_set),
            "val_patches": len(val_set), "world_size": dist.world_size,
            **{k: saved_row[k] for k in ("val_acc_context", "val_view_agreement") if k in saved_row},
        }
        if dist.main:
            if not keep_last and best_state is None:  # every finished epoch is compared, the first one always wins
                raise UserError(f"{last_path}: holds no weights of the best epoch {best_epoch}; "
                                "rerun with --no-resume to train afresh")
            final = build_model(cfg.depth)
            # never other weights under the saved epoch's numbers: the model after the last
            # epoch (also when resumed or restored: last.pt's weights are the last epoch's)
            final.load_state_dict(_cpu_state(model) if keep_last else best_state)
            meta = {
                "net": net, "patch": cfg.patch, "depth": cfg.depth, "params": record["config"],
                "fingerprint": fp,  # whose model this is: a rerun beside last.pt tells its own (_written_by_another)
                **({"context": context} if context else {}),
                "epochs": cfg.epochs, "best_epoch": best_epoch, "saved_epoch": saved_epoch,
                "val_acc": saved_row["val_acc"],
                "samples_seen": samples_seen, "device": record["device"],
                "world_size": dist.world_size, "input_scale": INPUT_SCALE, "augment_variants": N_VARIANTS,
                "patches": str(patches), "patches_attrs": {k: v for k, v in train_set.attrs.items() if k != "params"},
                "patches_digest": pdigest,  # the patch set's identity (its path alone says little once copied)
                # what trained the weights (a resumed run's: "0.6.0 then 0.7.0", "4 then 2"; a restored
                # run's, those of the run that trained it, "unknown" where its last.pt records none)
                "trained_with": {"bafusion": record["bafusion"] or "unknown", "torch": record["torch"] or "unknown",
                                 "threads": record["threads"], "code_digest": code_digest},
            }
            save_model(final, paths.out, _json_safe(meta))
            write_text(paths.metrics, json.dumps(_json_safe(summary), indent=2, sort_keys=True) + "\n")
            _write_csv(paths.plots, history)
            run.log_metrics(_summary_metrics(summary), step=cfg.epochs)  # the per-epoch series are epoch/*
            run.log_metrics({"train_time_s": train_time, **({"wall_time_s": wall_time} if math.isfinite(wall_time) else {}),
                             "samples_per_s_overall": samples_seen / train_time if train_time > 0 else 0.0},
                            step=cfg.epochs)
            if restoring:
                print(stamped(f"bafusion train: the model of the finished run in {last_path} was restored to {paths.out} "
                      f"({_saved_words(cfg.keep, summary)}"
                      + (f"; {kept_otherwise}" if kept_otherwise else "") + (f"; {foreign}" if foreign else "")
                      + "); no training needed "
                      f"(to train again, also under snakemake -R or dvc repro -f: delete {paths.checkpoints} first, "
                      "or run by hand with --no-resume)", sys.stderr), file=sys.stderr)
            else:
                print(stamped(f"bafusion train: {net} done: {samples_seen} samples in {train_time:.1f} s, "
                      f"{_saved_words(cfg.keep, summary)}", sys.stderr), file=sys.stderr)
            run.set_tag("best_epoch", best_epoch)
            run.set_tag("saved_epoch", saved_epoch)
            with open(paths.out, "rb") as f:  # fuse's and evaluate's runs name the nets by it (tracking.log_nets)
                model_sha = hashlib.file_digest(f, "sha256").hexdigest()
            run.set_tag(tracking.MODEL_SHA256_TAG, model_sha)
            run.log_artifact(paths.out, "model")
            run.log_artifact(paths.out.with_suffix(".json"), "model")
            run.log_artifact(paths.metrics, "metrics")
            run.log_artifact(paths.plots, "metrics")
            # The net as an MLflow model (UI "Models" column, mlflow.pytorch.load_model): one
            # input patch pair, so MLflow stores the example and infers the signature.
            example = np.zeros((1, 2, cfg.patch, cfg.patch), dtype=np.float32)
            # Tagged, so that the Models view tells one run's nets from another's (all are <net>_net)
            model_tags = {"net": net, tracking.MODEL_SHA256_TAG: model_sha, "best_epoch": best_epoch,
                          "saved_epoch": saved_epoch, "val_acc": saved_row["val_acc"],
                          **({"dvc_exp_name": os.environ["DVC_EXP_NAME"]} if os.environ.get("DVC_EXP_NAME") else {})}
            run.log_model(final, f"{net}_net", input_example=example, tags=model_tags)
            # Mark the run finished only now that its outputs exist and are logged: a later run
            # does not resume it, while a run killed before this point (even after its last
            # epoch, while MLflow logs: Snakemake then deletes the model) still resumes and only
            # writes the outputs again, instead of training from scratch.
            save_checkpoint(last_path, {**checkpoint_state(cfg.epochs, torch.zeros(3, dtype=torch.float64), 0.0),
                                        "finished": True})
        return summary


def _outputs_missing(paths: Paths) -> bool:
    """Whether any output of a training (the model, its description, ``--metrics``, ``--plots``)
    is missing, or the model does not load (damaged): those a finished run writes again."""
    if not all(p.is_file() for p in (paths.out, paths.out.with_suffix(".json"), paths.metrics, paths.plots)):
        return True
    try:
        load_model(paths.out)
    except Exception:  # noqa: BLE001 - any damage: written again
        return True
    return False


def _keep_changed(ck: Mapping[str, Any], cfg: TrainConfig, paths: Paths | None = None) -> str:
    """How this run's ``keep`` differs from the one the finished run in the checkpoint ``ck``
    last wrote its outputs under, as ``train.keep "last" -> "best"``; ``""`` when they are the
    same or none is recorded. ``keep`` is out of the fingerprint (it changes no step,
    :attr:`TrainConfig.OUTPUT_KEYS`), so the outputs are written again from ``last.pt`` under
    the new one, without training, also where the old ones are still in place. With
    ``paths``, the keep is the one this run's model (``paths.out``'s description) was written
    under, where it records one: ``last.pt`` records the last run's, which may have written
    another ``--out`` (two trainings sharing ``--checkpoints``)."""
    was = _written_keep(paths.out, ck.get("fingerprint")) if paths is not None else None
    if was is None:
        old = ck.get("config")
        was = old.get("keep") if isinstance(old, Mapping) else None
    if not isinstance(was, str) or was == cfg.keep:
        return ""
    return f"{cfg.key('keep')} {json.dumps(was)} -> {json.dumps(cfg.keep)}"


def _written_record(out: Path) -> dict[str, Any] | None:
    """The description (``.json``) of the model ``out``; None where it cannot be read."""
    from bafusion.errors import json_loads

    try:
        meta = json_loads(out.with_suffix(".json").read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _written_keep(out: Path, fp: Any = None) -> str | None:
    """The ``train.keep`` the model ``out`` was written under (its description's
    ``params.keep``); None where it records none or cannot be read, or (with ``fp``) where it
    records a fingerprint other than ``fp``: another training's model, whose keep is not the
    one ``fp``'s outputs were written under. A description without a fingerprint (written
    by an earlier version) counts as ``fp``'s."""
    meta = _written_record(out)
    if meta is None or (fp is not None and meta.get("fingerprint", fp) != fp):
        return None
    params = meta.get("params")
    keep = params.get("keep") if isinstance(params, dict) else None
    return keep if isinstance(keep, str) else None


def _written_by_another(ck: Mapping[str, Any], paths: Paths) -> str:
    """Why the model at ``paths.out`` is not the finished run's in the checkpoint ``ck``: its
    description records another fingerprint (another training wrote that ``--out``: a hand
    run of other parameters, with its own ``--checkpoints``), as ``models/initial.pt holds
    another training's model (fingerprint 1a2b3c4d5e6f, last.pt's 6f5e4d3c2b1a)``; ``""``
    where it records this one, none (a description written before the fingerprint was
    recorded: trusted, as before) or cannot be read (then the outputs count as missing,
    :func:`_outputs_missing`)."""
    meta = _written_record(paths.out)
    fp, ck_fp = (meta or {}).get("fingerprint"), ck.get("fingerprint")
    if not isinstance(fp, str) or not isinstance(ck_fp, str) or fp == ck_fp:
        return ""
    return f"{paths.out} holds another training's model (fingerprint {fp[:12]}, last.pt's {ck_fp[:12]})"


def _not_restorable(ck: Mapping[str, Any], cfg: TrainConfig, device: torch.device) -> str:
    """Why the model of the finished run in the checkpoint ``ck`` (of this run's fingerprint) is
    not the one this run would train: the settings outside the fingerprint that change the
    weights, as ``4 CPU thread(s) per process, now 2``; ``""`` when none differs.

    Of :attr:`TrainConfig.RUNTIME_KEYS`, the device (its type: the kernels), the CPU thread count
    (on the CPU: the order of the floating-point sums) and ``compile`` (``torch.compile`` fuses
    operations: other roundings) change the weights; ``checkpoint_every`` (a save reads the
    state, never changes it), ``val_batch`` (the validation is the same in any batch, see
    :func:`evaluate`) and ``nproc`` (the number of processes is in the fingerprint) do not.
    So does torch's version (its kernels), where the checkpoint records it."""
    return ", ".join(_weight_settings_changed(ck, cfg, device))


def _torch_after_resume(was: object) -> str:
    """The torch version(s) a resumed run's last.pt records: the checkpoint's versions and this
    one, as ``"1.13.0 then 2.4.1"`` when they differ, ``"unknown then 2.4.1"`` when the
    checkpoint's epochs ran under a version it does not record (never this torch's alone, so a
    restore of the finished run under it trains again; left unrecorded, it was restored under
    any torch)."""
    return _after_resume(was, str(torch.__version__))


def _after_resume(was: object, now: str) -> str:
    """A setting a resumed run's last.pt records (torch's version, the CPU thread count): the
    checkpoint's ``was`` (``"unknown"`` when it records none), then ``now`` where that differs from
    the last one, as ``"1 then 2"``: never a single setting's value, so a restore under ``now``
    trains again (see :func:`_weight_settings_changed`)."""
    if isinstance(was, bool) or not isinstance(was, (str, int)) or was == "":
        return f"unknown then {now}"
    was = str(was)
    return was if was.rsplit(" then ", 1)[-1] == now else f"{was} then {now}"


def _recorded_type(was: object) -> str | None:
    """The device type of the last device a checkpoint records (``"cuda:0 then cpu"``: cpu; None:
    none recorded, or ``unknown``)."""
    if not isinstance(was, str) or not was:
        return None
    last = was.rsplit(" then ", 1)[-1]
    try:
        return torch.device(last).type
    except RuntimeError:
        return None


def _threads_matter(was: object, device: torch.device) -> bool:
    """Whether the CPU thread count of the checkpoint whose device record is ``was`` is compared
    with this run's: on the CPU, after CPU epochs only (or a device not recorded); after a GPU's,
    the change of device is said instead."""
    return device.type == "cpu" and (was is None or (_recorded_type(was) == "cpu" and " then " not in str(was)))


def _device_after_resume(was: object, device: torch.device) -> str:
    """The device(s) a resumed run's last.pt records, as :func:`_after_resume` does, by device type
    (another GPU of the type replaces the last one: the restore compares types)."""
    if isinstance(was, str) and was and _recorded_type(was) == device.type:
        head = was.rpartition(" then ")[0]
        return f"{head} then {device}" if head else str(device)
    return _after_resume(was, str(device))


def _setting_changed(cfg: TrainConfig, name: str, was: object, now: object) -> str:
    """``train.compile true, now false``; for a field an option set this run, the checkpoint's
    value came from its config, not from that option: ``the checkpoint's device cuda, now cpu
    (--device)``."""
    key = cfg.key(name)
    if key.startswith("-"):
        return f"the checkpoint's {name} {was}, now {now} ({key})"
    return f"{key} {was}, now {now}"


def _weight_settings_changed(ck: Mapping[str, Any], cfg: TrainConfig, device: torch.device,
                             threads: bool = True) -> list[str]:
    """The settings outside the fingerprint that change the weights and differ between the run
    that wrote ``ck`` and this one (see :func:`_not_restorable`), each as ``train.compile true,
    now false``; the CPU thread count only with ``threads``."""
    old = ck.get("config") if isinstance(ck.get("config"), Mapping) else {}
    why: list[str] = []
    was_device = ck.get("device")
    if isinstance(was_device, str):
        if _recorded_type(was_device) != device.type or " then " in was_device:  # devices of a resumed run: never this one
            why.append(f"device {was_device}, now {device}")
    else:  # a checkpoint of a version that did not record the device: its setting
        if "device" in old and str(old["device"]) != str(cfg.device):
            why.append(_setting_changed(cfg, "device", old["device"], cfg.device))
    was_threads = ck.get("threads")
    if (threads and _threads_matter(was_device if isinstance(was_device, str) else None, device)
            and isinstance(was_threads, (int, str))
            and str(was_threads) != str(torch.get_num_threads())):
        why.append(f"{was_threads} CPU thread(s) per process, now {torch.get_num_threads()}")
    if "compile" in old and bool(old["compile"]) != bool(cfg.compile):
        why.append(_setting_changed(cfg, "compile", json.dumps(bool(old["compile"])), json.dumps(bool(cfg.compile))))
    was_torch = ck.get("torch_version")  # not recorded before: not compared
    if isinstance(was_torch, str) and was_torch != str(torch.__version__):
        why.append(f"torch {was_torch}, now {torch.__version__}")
    return why


def _agreed(flag: bool, dist: Dist, device: torch.device) -> bool:
    """Process 0's ``flag``, on every process of a run (one decision for all)."""
    if not dist.active:
        return flag
    t = torch.tensor([int(flag)], device=device if device.type == "cuda" else "cpu")
    torch.distributed.broadcast(t, 0)
    return bool(t.item())


#: The prefix of the per-epoch series of a training's MLflow run (``epoch/val_acc``): the plain
#: names (``val_acc``) hold the numbers of ``metrics/train_<net>.json``, the saved epoch's, logged
#: at the end (:func:`_summary_metrics`). The series had the plain names, so MLflow's ``val_acc``
#: (its latest value: the last epoch's, 0.53) and ``dvc metrics show``'s (the best epoch's, 0.74)
#: differed under one name.
EPOCH_PREFIX = "epoch/"


def _epoch_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    keys = ("lr", "train_loss", "train_acc", "val_loss", "val_acc", "samples_per_s", "epoch_time_s",
            "val_acc_context", "val_view_agreement", "bn_recalibrate_s")
    return {EPOCH_PREFIX + k: float(row[k]) for k in keys
            if k in row and not (isinstance(row[k], float) and math.isnan(row[k]))}


def _summary_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of ``--report`` (``metrics/train_<net>.json``) under its names, as the MLflow
    run logs them at its end (a value that is None or NaN, as without validation data, is left
    out), so that MLflow's ``val_acc`` is ``dvc metrics show``'s; and, as before, ``best_val_acc``
    and ``best_val_loss``: the same numbers where the best epoch is the one saved (``train.keep:
    best``), the report's own ones with ``keep: last``."""
    out = {k: float(v) for k, v in summary.items()
           if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
    for k in ("val_acc", "val_loss"):
        if k in out and f"best_{k}" not in summary:
            out[f"best_{k}"] = out[k]
    return out


def _saved_words(keep: str, summary: Mapping[str, Any]) -> str:
    """What a training wrote, in words, from its ``summary`` (the report): ``best val acc 0.9125
    at epoch 3``, or with ``keep: last`` ``val acc 0.8875 at epoch 7, the last (train.keep: last;
    best val acc 0.9125 at epoch 3)``. The end-of-run line on stderr, the restore's and the
    command's result line on stdout all say it so."""
    if keep == "last":
        return (f"val acc {summary['val_acc']:.4f} at epoch {summary['saved_epoch']}, the last (train.keep: last; "
                f"best val acc {summary['best_val_acc']:.4f} at epoch {summary['best_epoch']})")
    return f"best val acc {summary['val_acc']:.4f} at epoch {summary['best_epoch']}"  # the saved one
