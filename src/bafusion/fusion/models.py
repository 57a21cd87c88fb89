"""The trained nets for fusion: finding, loading (``weights_only``) and preparing them for
inference (:class:`FusionNets`).
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from bafusion import checkout
from bafusion.errors import InputTypeError, UserError
from bafusion.nets.model import CifarResNet, ModelFileError, fold_batchnorm, load_model

#: This package's folder (``<repo>/src/bafusion``, or ``site-packages/bafusion`` when installed).
PACKAGE_DIR = Path(__file__).resolve().parents[1]
#: The repository when this package runs from its source checkout (an editable install), else
#: None (:func:`_repo_root`, computed at import).
REPO_ROOT = checkout.source_checkout(PACKAGE_DIR)


def _repo_root() -> Path | None:
    """The repository whose ``models/`` and ``data/models`` are searched for nets: this package's
    source checkout (:func:`bafusion.checkout.source_checkout`), else None. For an installed
    package the folders above it are arbitrary ones (``<venv>/lib``, the parent of a ``pip
    install --target`` folder, ``$HOME``): nets found there would be unrelated ones."""
    return checkout.source_checkout(PACKAGE_DIR)


def _shipped_roots() -> list[Path]:
    """The folders that hold the shipped models (``<root>/<name>/``): the package's ``models``,
    then the checkout's (a checkout made without symlinks has no ``src/bafusion/models``)."""
    repo = _repo_root()
    return [PACKAGE_DIR / "models", *([repo / "models"] if repo is not None else [])]

def _pipeline_folder() -> Path | None:
    """The pipeline's project folder for the missing-nets hint: the nearest folder at or above
    the working directory holding a ``Snakefile``, else this package's source checkout (an
    editable install) when it has one; None for an installed bafusion run elsewhere (a wheel
    ships no Snakefile)."""
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "Snakefile").is_file():
            return d
    repo = _repo_root()
    return repo if repo is not None and (repo / "Snakefile").is_file() else None


def _how_to_get_models(other: str) -> str:
    """How to get trained nets, shown when none are found; ``other`` says how to name others.
    Training with Snakemake is offered only where the pipeline is (:func:`_pipeline_folder`),
    naming its folder when that is not the working directory's."""
    folder = _pipeline_folder()
    if folder is None:
        names = ", ".join(shipped_models()) or "none in this install: reinstall bafusion, whose wheel ships them"
        return (f"{other}: a folder holding initial.pt and boundary.pt (the data/models of a pipeline run, in "
                f"its project folder), or a shipped model's name ({names})")
    where = "" if folder == Path.cwd().resolve() else f" in {folder}"
    return (f"train them with `snakemake --cores 2 train_boundary` (or `dvc repro`){where}, which writes "
            f"data/models/initial.pt and data/models/boundary.pt, or {other}")


#: How to name other nets, as the command line says it (its option ``--model``); the hint
#: itself is :func:`_how_to_get_models` of it, worded when a message is.
HOW_TO_GET_MODELS = "pass --model DIR"

# The public functions below word their messages for a Python caller (``device='gpu'``,
# ``model=DIR``); the command line calls their private forms (_find_model_dir, _load_files(...,
# "cli")) for its options' names (``--device gpu``, ``--model DIR``, ``--initial``/``--boundary``).
_PY_MODEL_HINT = "pass model=DIR"


def _inference_net(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if isinstance(net, CifarResNet):
        net = fold_batchnorm(net)
    return net.to(device).to(memory_format=torch.channels_last).eval()


@dataclass
class FusionNets:
    """The two trained nets with their patch sides and the files they came from.

    Made by :func:`bafusion.load_model` (:func:`load_nets`, :func:`load_nets_from_dir`) and
    passed to :func:`bafusion.fuse_images` and the other fusion functions. Built directly, it
    keeps inference copies of the nets given (BatchNorm folded into the convolutions, moved to
    ``device``, channels-last, eval mode); the caller's nets are left untouched. Each net must be
    a :class:`bafusion.nets.model.CifarResNet` (:func:`bafusion.nets.model.build_model`, trained
    or loaded; one wrapped by ``torch.nn.DataParallel``, ``DistributedDataParallel`` or
    ``torch.compile`` is taken for the net it wraps): the fusion's dense pass runs its trunk and
    classifier directly, so another module or a callable is refused (an :class:`bafusion.errors.InputTypeError`).
    """

    #: The initial net (step 1: scores every pixel), :class:`bafusion.nets.model.CifarResNet`.
    initial: CifarResNet
    #: The boundary net (step 3: rescores the near-boundary pixels).
    boundary: CifarResNet
    #: Patch side (pixels) the initial net was trained on (its ``.json``'s ``patch``; 32 in the
    #: paper).
    patch_initial: int
    #: Patch side (pixels) the boundary net was trained on.
    patch_boundary: int
    #: The :class:`torch.device` both nets run on (given as a name, ``"cpu"``, ``"auto"``,
    #: ``"cuda:1"``, it is resolved as :func:`resolve_device` resolves it).
    device: torch.device
    #: The files the nets came from (initial, boundary), as given; ``("", "")`` when built
    #: from nets in memory. Shown by ``repr`` and recorded in the outputs' markers (the files
    #: and their sha256: ``fuse-dir``, ``fuse-set``).
    sources: tuple[str, str] = ("", "")
    #: Where each net's training labels sit in its patch (initial, boundary):
    #: ``"pixel"``, the pixel ``(p//2, p//2)`` (today's labels, and the default for nets built
    #: in memory), or ``"centre"``, on average the patch's geometric centre (bafusion 0.2.0's
    #: labels: :func:`label_position`). ``fuse.score_position: auto`` follows it.
    label_positions: tuple[str, str] = ("pixel", "pixel")

    def __post_init__(self) -> None:
        # a device name ("cpu", "auto", "cuda:1") as load_model takes it: the fusion reads
        # device.type, which a str lacks (AttributeError deep in the first fusion)
        if not isinstance(self.device, torch.device):
            self.device = resolve_device(self.device, "device=")
        # Any module (one's own scorer, a callable) was taken, and the first fusion failed deep in
        # the dense pass: "AttributeError: 'Mine' object has no attribute 'trunk'" (a function:
        # "... no attribute 'to'"). The fusion reads a CifarResNet's trunk (total stride 4) and fc.
        for role in ("initial", "boundary"):
            net = getattr(self, role)
            while True:
                if isinstance(net, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
                    # a net of one's own training loop, wrapped to train on several GPUs: refused for its
                    # wrapper (and before that check "'DataParallel' object has no attribute 'trunk'"); its net
                    net = net.module
                elif isinstance(getattr(net, "_orig_mod", None), torch.nn.Module):
                    # torch.compile's wrapper (OptimizedModule): kept, it was neither folded nor copied (the
                    # caller's compiled net was set to eval mode in place), and the dense pass, reading its
                    # trunk and fc, ran the net uncompiled anyway; its net, folded as any
                    net = net._orig_mod
                else:
                    break
            setattr(self, role, net)
            if not isinstance(net, CifarResNet):
                raise InputTypeError(
                    f"FusionNets {role}: expected a bafusion.nets.model.CifarResNet (the fusion's dense pass runs its "
                    f"trunk and fc), got {type(net).__module__}.{type(net).__qualname__}: build one with "
                    "bafusion.nets.model.build_model(depth) and train it (bafusion train), or load trained nets "
                    "with bafusion.load_model")
        # Inference copies: BatchNorm folded into the convolutions (1.3-1.4x faster on CPU,
        # same function up to float rounding) and channels-last convolutions (1.3-1.6x faster
        # on batches of small patches, measured). The caller's nets are left untouched.
        self.initial = _inference_net(self.initial, self.device)
        self.boundary = _inference_net(self.boundary, self.device)

    def __repr__(self) -> str:
        """One line (the dataclass's printed both module trees, hundreds of lines in a notebook):
        each net's depth and patch side, the device, the model folder (or the two files)."""
        def net(m: object, patch: int) -> str:
            spec = getattr(m, "spec", None)
            kind = f"ResNet-{spec.depth}" if spec is not None and hasattr(spec, "depth") else type(m).__name__
            return f"{kind}, patch {patch}"

        files = [Path(s) for s in self.sources if s]
        if len(files) == 2 and files[0].parent == files[1].parent:
            where = f"model={str(files[0].parent)!r}"
        elif files:
            where = f"sources={tuple(str(f) for f in files)!r}"
        else:
            where = "model=None"
        return (f"FusionNets(initial={net(self.initial, self.patch_initial)}; boundary="
                f"{net(self.boundary, self.patch_boundary)}; device={self.device}; {where})")

    __str__ = __repr__


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


def resolve_device(device: str = "auto", flag: str = "device=") -> torch.device:
    """The torch device named ``device``: ``"auto"`` (CUDA when available), ``"cpu"``,
    ``"cuda[:N]"`` or ``"mps"``; one this machine lacks is refused.

    Parameters
    ----------
    device : str or torch.device
        ``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda[:N]"`` or ``"mps"``
        (Apple Metal); a :class:`torch.device` is checked and returned as it is.
    flag : str
        What gave it, for the message: a Python parameter ending in ``=`` (``device='gpu': not
        a device ...``, the default) or a command-line option (``"--device"``: ``--device gpu:
        ...``), as :func:`bafusion.preflight.check_device` takes it.

    Returns
    -------
    torch.device

    Raises
    ------
    bafusion.errors.UserError
        A name that is not a device, or a device this machine lacks (no CUDA, no GPU N, no
        Metal).
    """
    if isinstance(device, torch.device):  # as load_nets takes one: checked, used as it is
        from bafusion.preflight import check_device

        check_device(device, flag)
        return device
    if not isinstance(device, str):  # None, a number: check_device lets None pass (an unset option)
        shown = f"{flag}{device!r}" if flag.endswith("=") else f"{flag} {device}"
        raise UserError(f"{shown}: not a device (use auto, cpu, cuda, cuda:N or mps)")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from bafusion.preflight import check_device

    check_device(device, flag)
    try:
        return torch.device(device)
    except RuntimeError as e:
        shown = f"{flag}{device!r}" if flag.endswith("=") else f"{flag} {device}"
        raise UserError(f"{shown}: {e}") from e


#: The largest patch side a model description may give (:func:`_load_one`): fuse.tile's
#: ceiling (params schema), far above any patch trained (the paper's 32 and 64).
MAX_PATCH = 4096


def label_position(meta: dict) -> str:
    """Where the training labels of the net described by ``meta`` (its ``.json``) sit in its patch.

    bafusion before 0.3.0 wrote patch files with one label per patch, and training gave it to
    all 12 augmented variants, though 5 of the 6 turns and flips bring a neighbour of the
    labelled pixel to ``(p//2, p//2)``: averaged over the variants the label is the geometric
    centre's, half a pixel up and left of that pixel. 0.3.0's files hold the central 2 x 2
    labels (``y_block``) and each variant takes its own pixel's. A net's description records the
    patch file's attributes (``patches_attrs``, with the ``code_version`` that wrote it; every
    build called itself 0.1.0 until 0.2.0). An ensemble's description (``bafusion ensemble``)
    records its members' descriptions (``ensemble_of``), not a patch file of its own: its labels
    sit where its members' do, all in one place (``bafusion ensemble`` refuses members whose
    labels sit in different places: the ensemble averages their logits, so no one placement
    fits all of them); an ensemble written before that check, of members that differ, counts
    as ``"pixel"``.

    Parameters
    ----------
    meta : dict
        The model description (the ``.json`` beside the ``.pt``).

    Returns
    -------
    str
        ``"centre"`` when ``patches_attrs.code_version`` is below 0.3.0 and the stored crop
        side (patch + 2 * context) is even (at an odd side the centre stays put), or for an
        ensemble whose members are all ``"centre"``; else ``"pixel"`` (today's labels, or
        nothing recorded).
    """
    members = meta.get("ensemble_of")
    if "patches_attrs" not in meta and isinstance(members, list) and members:
        found = {label_position(m["meta"]) if isinstance(m, dict) and isinstance(m.get("meta"), dict) else "pixel"
                 for m in members}
        return found.pop() if len(found) == 1 else "pixel"
    attrs = meta.get("patches_attrs")
    if not isinstance(attrs, dict):
        return "pixel"
    version = str(attrs.get("code_version", ""))
    try:
        major, minor = (int(v) for v in version.split(".")[:2])
    except ValueError:
        return "pixel"
    patch = attrs.get("patch", meta.get("patch"))
    context = attrs.get("context", meta.get("context", 0)) or 0
    if not isinstance(patch, int) or not isinstance(context, int) or (patch + 2 * context) % 2:
        return "pixel"
    return "centre" if (major, minor) < (0, 3) else "pixel"


def _load_one(path: Path, device: torch.device, role: str | None = None, *, hint: str = HOW_TO_GET_MODELS,
              swap: str = "swap the --initial and --boundary files") -> tuple[CifarResNet, int]:
    """One net and its patch side; ``hint`` (how to name other nets, in
    :func:`_how_to_get_models`) and ``swap`` (what to do with a net of the other role) end the
    messages, worded for the caller."""
    if not path.exists():
        raise UserError(f"{path}: model file not found ({_how_to_get_models(hint)})")
    try:
        net, meta = load_model(path, map_location="cpu")
    except ModelFileError as e:  # a file that is there but wrong: how to train one does not help
        raise UserError(str(e)) from e
    trained_as = meta.get("net")
    if role is not None and trained_as in ("initial", "boundary") and trained_as != role:
        other = "boundary" if role == "initial" else "initial"
        raise UserError(f"{path}: is a {trained_as} net (its {path.with_suffix('.json').name} says so), given as the "
                        f"{role} net: {swap.format(role=role, other=other)}")
    patch = meta.get("patch", meta.get("patch_size"))
    if patch is None:
        raise UserError(f"{path.with_suffix('.json')}: no 'patch' entry (the patch side the net was trained on)")
    if isinstance(patch, bool) or not isinstance(patch, int):  # 32.9 was truncated to 32 in silence
        raise UserError(f"{path.with_suffix('.json')}: 'patch' must be an integer, got {patch!r}")
    if patch < 4 or patch % 4:
        raise UserError(f"{path.with_suffix('.json')}: patch side {patch} is not a positive multiple of 4")
    if patch > MAX_PATCH:  # 1e9: an "out of memory" that blamed the images
        raise UserError(f"{path.with_suffix('.json')}: 'patch' is {patch}: a patch side is at most {MAX_PATCH} "
                        "(the paper's is 32)")
    scale = meta.get("input_scale")
    if scale is not None and (not isinstance(scale, (int, float)) or isinstance(scale, bool)
                              or not abs(float(scale) - 1.0 / 255.0) <= 1e-9):
        raise UserError(f"{path.with_suffix('.json')}: input_scale {scale!r} differs from fusion's 1/255")
    return net.to(device).eval(), patch


def _label_position_of(path: Path) -> str:
    """:func:`label_position` of the model file ``path`` (its ``.json``; ``"pixel"`` when unreadable,
    which :func:`_load_one` has already refused)."""
    import json

    try:
        meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "pixel"
    return label_position(meta) if isinstance(meta, dict) else "pixel"


def load_nets(
    initial: str | os.PathLike[str], boundary: str | os.PathLike[str], device: str | torch.device = "auto"
) -> FusionNets:
    """Load the initial and boundary nets from their files.

    Parameters
    ----------
    initial, boundary : path
        Model files (``.pt`` with a ``.json`` beside it that gives the patch side), loaded
        with ``torch.load(..., weights_only=True)``.
    device : str or torch.device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda[:N]"`` or ``"mps"``
        (:func:`resolve_device`); a :class:`torch.device` is used as it is.

    Returns
    -------
    FusionNets

    Raises
    ------
    bafusion.errors.UserError
        A missing or invalid file (the message names it and says how to get nets), a net
        whose ``.json`` says it was trained for the other role (``"net": "boundary"`` given as
        ``initial``), or a device this machine lacks (``device='cuda:1': ...``).
    """
    return _load_files(initial, boundary, device, "arguments")


def _load_files(initial: str | os.PathLike[str], boundary: str | os.PathLike[str], device: str | torch.device,
                given: str) -> FusionNets:
    """:func:`load_nets`, its messages worded for how the files were ``given``: ``"arguments"``
    (load_nets' own), ``"folder"`` (a model folder's initial.pt and boundary.pt, from Python), or
    ``"cli"`` (the command line's options: ``--device``, ``--model DIR``, ``--initial``/``--boundary``)."""
    if given == "cli":
        flag, hint, swap = "--device", HOW_TO_GET_MODELS, "swap the --{role} and --{other} files"
    elif given == "folder":
        flag, hint, swap = "device=", _PY_MODEL_HINT, "the folder's {role}.pt and {other}.pt are swapped (rename them)"
    else:
        flag, swap = "device=", "swap the {role} and {other} arguments"
        hint = "load a model folder or a shipped model with bafusion.load_model"
    dev = device if isinstance(device, torch.device) else resolve_device(device, flag)
    ni, pi = _load_one(Path(initial), dev, "initial", hint=hint, swap=swap)
    nb, pb = _load_one(Path(boundary), dev, "boundary", hint=hint, swap=swap)
    labels = (_label_position_of(Path(initial)), _label_position_of(Path(boundary)))
    return FusionNets(ni, nb, pi, pb, dev, (str(initial), str(boundary)), labels)


def default_model_dirs() -> list[Path]:
    """Where fusion looks for nets without --model, in order: the shipped ``models/default``
    (package, then repository), then the pipeline's ``data/models`` (working directory, then
    repository). The repository's folders only when the package runs from its source checkout
    (an editable install): an installed package looks in its own ``models/default`` and the
    working directory's ``data/models``.

    Returns
    -------
    list of pathlib.Path
        The candidate folders, without duplicates; they need not exist.
    """
    repo = _repo_root()
    dirs = [root / "default" for root in _shipped_roots()]
    dirs.append(Path.cwd() / "data" / "models")
    if repo is not None:
        dirs.append(repo / "data" / "models")
    seen: list[Path] = []
    for d in dirs:
        if d not in seen:
            seen.append(d)
    return seen


def shipped_models() -> list[str]:
    """Names of the models shipped with the package (``models/<name>``), usable as ``--model``.

    Returns
    -------
    list of str
        Sorted names of the folders under the package's (or repository's) ``models`` that hold
        both ``initial.pt`` and ``boundary.pt`` (``"default"``, ...).
    """
    names: set[str] = set()
    for root in _shipped_roots():
        if root.is_dir():
            names |= {d.name for d in root.iterdir() if (d / "initial.pt").is_file() and (d / "boundary.pt").is_file()}
    return sorted(names)


def _shipped_model_dir(name: str) -> Path | None:
    """The folder of the shipped model ``name`` (``models/<name>``), or None."""
    for root in _shipped_roots():
        if (root / name / "initial.pt").is_file() and (root / name / "boundary.pt").is_file():
            return root / name
    return None


class ModelNameWarning(UserWarning):
    """A model named as a shipped one (``"default"``) beside a folder of that name that holds no
    nets: the shipped model is used, and this says so (``./default`` names the folder)."""


def _user_stacklevel() -> int:
    """The ``stacklevel`` for a warning its caller issues that points at the user's line: the
    first frame outside the bafusion package (find_model_dir, load_nets_from_dir, load_model
    and fuse reach the warning through different numbers of the package's own frames)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    frame = sys._getframe(1)  # the function that warns: stacklevel 1
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level if frame is not None else 2


def find_model_dir(model: str | os.PathLike[str] | None, *, warn: bool = True) -> Path:
    """The folder holding initial.pt and boundary.pt: ``model`` if given (a folder, or a shipped
    model's name: a folder of that name that holds neither file, an output folder ``default``
    in the working directory, is not taken for it, with a :class:`ModelNameWarning` that says
    so (not with ``warn=False``); ``./default`` names the folder), else the first of
    :func:`default_model_dirs` that holds both.

    Parameters
    ----------
    model : str, path or None
        A model folder or a shipped model's name; None: the first folder of
        :func:`default_model_dirs` that holds both files.
    warn : bool
        Warn (:class:`ModelNameWarning`) when a shipped model's name is taken over a folder of
        that name that holds no nets.

    Returns
    -------
    pathlib.Path
        The folder; the net files in it are not checked here (:func:`load_nets` does).

    Raises
    ------
    bafusion.errors.UserError
        ``model`` is a file, or neither a folder nor a shipped model's name; with ``model=None``,
        no default folder holds both files; neither a str nor a path (a
        :class:`bafusion.errors.InputTypeError`).
    """
    _check_model_type(model)
    return _find_model_dir(model, warn=warn, hint=_PY_MODEL_HINT)


def _check_model_type(model: object, nets_too: bool = False) -> None:
    """Refuse a ``model`` argument that names no model: not None, a str or a path (nor, with
    ``nets_too``, loaded :class:`FusionNets`); pathlib's "TypeError: expected str, bytes or
    os.PathLike object, not int" named no parameter."""
    if model is None or isinstance(model, (str, os.PathLike)) or (nets_too and isinstance(model, FusionNets)):
        return
    what = "a model folder, a shipped model's name" + (" or loaded nets (bafusion.load_model(...))" if nets_too else
                                                       " (a str or path)")
    hint = "; loaded nets already: pass them to fuse as model=" if isinstance(model, FusionNets) else ""
    raise InputTypeError(f"model: expected {what}, got {type(model).__name__}{hint}")


def _find_model_dir(model: str | os.PathLike[str] | None, *, warn: bool = True, hint: str = HOW_TO_GET_MODELS) -> Path:
    """:func:`find_model_dir`, ``hint`` (how to name other nets, in :func:`_how_to_get_models`)
    ending its messages: the command line's
    by default (``--model DIR``)."""
    if model is not None:
        d = Path(model)
        if d.is_dir():
            bare = d.name == str(model) and not any((d / f).exists() for f in ("initial.pt", "boundary.pt"))
            shipped = _shipped_model_dir(d.name) if bare else None
            if shipped is not None and warn:
                warnings.warn(f"{model}: the folder holds no nets; using the shipped model {d.name!r} (write "
                              f"./{d.name} to mean the folder)", ModelNameWarning, stacklevel=_user_stacklevel())
            return shipped or d
        if d.is_file():  # a net file given as the folder: "model folder not found" misled
            raise UserError(f"{d}: is a file, not a model folder: pass the folder that holds initial.pt and "
                            "boundary.pt")
        # A shipped model by name (models/<name>: "default", "lytro-2026-11").
        shipped = _shipped_model_dir(d.name) if d.name == str(model) else None
        if shipped is not None:
            return shipped
        if _shipped_model_dir(d.name) is not None:
            # `models/default` outside the repository root: the shipped model is named by its
            # name alone; not taken for it here, as the path may mean a folder of one's own
            by_name = f"model={d.name!r}" if hint == _PY_MODEL_HINT else f"--model {d.name}"
            where = "" if d.is_absolute() else f" (relative to the current folder, {Path.cwd()})"
            raise UserError(f"{d}: model folder not found{where}; {d.name!r} is a shipped model: pass {by_name} "
                            f"to use it (from any folder); for other nets, {_how_to_get_models(hint)}")
        # the shipped models' names: said by the hint outside the pipeline, added here inside it
        names = f"; shipped models: {', '.join(shipped_models())}" if _pipeline_folder() is not None else ""
        raise UserError(f"{d}: model folder not found ({_how_to_get_models(hint)}{names})")
    for d in default_model_dirs():
        if (d / "initial.pt").is_file() and (d / "boundary.pt").is_file():
            return d
    looked = ", ".join(str(d) for d in default_model_dirs())
    raise UserError(f"no trained nets found (looked for initial.pt and boundary.pt in {looked}); "
                    f"{_how_to_get_models(hint)}")


def load_nets_from_dir(model: str | os.PathLike[str] | None, device: str = "auto", *, warn: bool = True) -> FusionNets:
    """Load the two nets of a model folder (:func:`find_model_dir`, ``warn`` passed to it), or
    of a shipped model by name; ``model=None``: the shipped ``default``, else the pipeline's
    ``data/models``. Same as :func:`bafusion.load_model`; messages name the Python arguments
    (``model=DIR``, ``device='gpu'``), not the command line's options.

    Parameters
    ----------
    model : str, path or None
        As for :func:`find_model_dir`.
    device : str or torch.device
        ``"auto"``, ``"cpu"``, ``"cuda[:N]"`` or ``"mps"`` (:func:`resolve_device`); a
        :class:`torch.device` is used as it is.
    warn : bool
        As for :func:`find_model_dir`.

    Returns
    -------
    FusionNets

    Raises
    ------
    bafusion.errors.UserError
        As :func:`find_model_dir` and :func:`load_nets` raise.
    """
    d = find_model_dir(model, warn=warn)
    return _load_files(d / "initial.pt", d / "boundary.pt", device, "folder")

