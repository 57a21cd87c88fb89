"""One call from shots to an all-in-focus image: :func:`fuse` (``from bafusion import fuse``)."""

from __future__ import annotations

import functools
import os

import numpy as np

from bafusion.errors import UserError
from bafusion.fusion.models import FusionNets, load_nets_from_dir
from bafusion.fusion.params import FusionParams
from bafusion.fusion.rule import check_same_size, fuse_images, fuse_stack
from bafusion.io import read_images

__all__ = ["fuse", "load_model"]

ALIGN_MODELS = ("none", "translation", "similarity", "homography")


@functools.lru_cache(maxsize=4)
def _cached_nets(model: str | None, device: str) -> FusionNets:
    return load_nets_from_dir(model, device)


def load_model(model: str | os.PathLike[str] | None = None, device: str = "auto") -> FusionNets:
    """Load the two trained nets of a model for fusion.

    Parameters
    ----------
    model : str or path, optional
        A folder holding ``initial.pt`` and ``boundary.pt`` (with their ``.json``), or the
        name of a shipped model (``"default"``, ``"lytro-2026-11"``). None: the shipped
        ``default`` model, else the pipeline's ``data/models``.
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda[:N]"``.

    Returns
    -------
    FusionNets
        Inference copies of the initial and boundary nets with their patch sides.

    Raises
    ------
    bafusion.errors.UserError
        No such folder, a missing or invalid model file (the message names it).
    """
    return load_nets_from_dir(model, device)


def fuse(
    *sources: str | os.PathLike[str] | np.ndarray,
    model: str | os.PathLike[str] | FusionNets | None = None,
    params: FusionParams | None = None,
    device: str = "auto",
    align: str = "none",
    progress: bool | None = False,
) -> np.ndarray:
    """Fuse two or more shots of one scene, focused at different depths, into one image.

    Parameters
    ----------
    *sources : path or ndarray
        Two or more registered shots of the same size: file paths (read like the command
        line does: EXIF orientation applied, sources of more than 8 bits scaled alike to
        8 bits) or uint8 arrays, (H, W) gray or (H, W, 3) RGB.
    model : str, path or FusionNets, optional
        The nets: a model folder or shipped model name (see :func:`load_model`; loaded once
        and cached), or nets already loaded. None: the shipped default.
    params : FusionParams, optional
        The fusion rule's parameters; None: the defaults (``FusionParams()``).
    device : str
        Where the nets run when ``model`` is not loaded yet: ``"auto"``, ``"cpu"``, ``"cuda"``.
    align : {"none", "translation", "similarity", "homography"}
        Register every shot to the first before fusing (handheld brackets:
        ``"similarity"``); the result is then cropped to the area every shot covers.
    progress : bool or None
        A progress bar on stderr (None: for camera-size pairs on a terminal).

    Returns
    -------
    ndarray
        The fused image, uint8: (H, W, 3) when a source is colour, (H, W) when all are gray.
        Three or more shots are fused by ``params.stack_rule``.

    Raises
    ------
    bafusion.errors.UserError
        Fewer than two shots, shots of different sizes, an unreadable file, a bad parameter.

    Examples
    --------
    >>> from bafusion import fuse, write_image  # doctest: +SKIP
    >>> write_image("fused.png", fuse("near.jpg", "far.jpg"))  # doctest: +SKIP
    """
    if len(sources) < 2:
        raise UserError("fusion needs at least two source images")
    if align not in ALIGN_MODELS:
        raise UserError(f"align must be one of {', '.join(ALIGN_MODELS)}, got {align!r}")
    params = params if params is not None else FusionParams()
    paths = [s for s in sources if not isinstance(s, np.ndarray)]
    read = iter(read_images(paths)) if paths else iter(())
    images = [s if isinstance(s, np.ndarray) else next(read) for s in sources]
    names = [f"source {i + 1}" if isinstance(s, np.ndarray) else str(s) for i, s in enumerate(sources)]
    for i in range(1, len(images)):
        check_same_size(images[0], images[i], names[0], names[i])
    if align != "none":
        from bafusion.fusion.align import align_images

        images = align_images(images, align).images
    nets = model if isinstance(model, FusionNets) else _cached_nets(
        None if model is None else str(model), device)
    if len(images) == 2:
        return fuse_images(images[0], images[1], nets, params, (names[0], names[1]), progress=progress).fused
    if params.stack_rule == "joint":
        from bafusion.fusion.stack import fuse_stack_joint

        return fuse_stack_joint(images, nets, params, names).fused
    return fuse_stack(images, nets, params, names, progress=progress)[-1].fused
