"""bafusion: boundary-aware multi-focus image fusion with deep networks (Ma, Zhang, Liu,
Liao, ICME 2019), as a data pipeline.

The public API (loaded on first use, so that ``import bafusion`` stays light):

* :func:`fuse` -- shots (paths or arrays) to one all-in-focus image;
* :func:`load_model` -- the two trained nets of a model folder or shipped model, as a
  :class:`FusionNets`;
* :func:`fuse_images`, :class:`FusionParams`, :class:`FusionResult` -- the paper's rule on
  two arrays, with all its maps;
* :func:`read_image`, :func:`read_images`, :func:`write_image` -- the one image I/O;
* :mod:`metrics` -- QMI, QG, QY, QCB (and more) as the reference MATLAB code computes them.

The subpackages follow the pipeline: :mod:`bafusion.data` -> :mod:`bafusion.nets` ->
:mod:`bafusion.fusion` -> :mod:`bafusion.evaluation`, over a ground floor
(:mod:`bafusion.io`, :mod:`bafusion.config`, :mod:`bafusion.schema`,
:mod:`bafusion.tracking`, ...); :mod:`bafusion.cli` is the command line.
"""

# No ``from __future__ import annotations``, ``import importlib`` or ``from typing import Any``
# here: each left its name in the package's namespace (``bafusion.Any``, ``dir(bafusion)``).
import typing as _typing

from bafusion._version import __version__

#: Public name -> (module, attribute; None for the module itself).
_API: dict[str, tuple[str, str | None]] = {
    "fuse": ("bafusion.fusion.api", "fuse"),
    "load_model": ("bafusion.fusion.api", "load_model"),
    "fuse_images": ("bafusion.fusion.rule", "fuse_images"),
    "FusionParams": ("bafusion.fusion.params", "FusionParams"),
    "FusionResult": ("bafusion.fusion.rule", "FusionResult"),
    "FusionNets": ("bafusion.fusion.models", "FusionNets"),
    "read_image": ("bafusion.io", "read_image"),
    "read_images": ("bafusion.io", "read_images"),
    "write_image": ("bafusion.io", "write_image"),
    "metrics": ("bafusion.evaluation.metrics", None),
}

__all__ = ["__version__", *_API]

if _typing.TYPE_CHECKING:
    # What type checkers (mypy, pyright) see of the names __getattr__ loads on first use: without
    # it each was Any to them. Never run; tests/test_public_api_docs.py checks that it imports
    # _API's names from _API's modules.
    from bafusion.evaluation import metrics as metrics
    from bafusion.fusion.api import fuse as fuse
    from bafusion.fusion.api import load_model as load_model
    from bafusion.fusion.models import FusionNets as FusionNets
    from bafusion.fusion.params import FusionParams as FusionParams
    from bafusion.fusion.rule import FusionResult as FusionResult
    from bafusion.fusion.rule import fuse_images as fuse_images
    from bafusion.io import read_image as read_image
    from bafusion.io import read_images as read_images
    from bafusion.io import write_image as write_image


def __getattr__(name: str) -> _typing.Any:
    from importlib import import_module

    try:
        module, attr = _API[name]
    except KeyError:
        raise AttributeError(f"module 'bafusion' has no attribute {name!r}") from None
    mod = import_module(module)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public API (:data:`__all__`, loaded or not) and the module's dunders: not the private
    helpers (``_API``) nor the subpackages loaded so far (``bafusion.cli``, ...)."""
    return sorted({*__all__, *(n for n in globals() if n.startswith("__") and n.endswith("__"))})
