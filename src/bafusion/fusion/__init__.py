"""Fusion: the paper's section 2, from two (or more) shots to one all-in-focus image.

Modules, in the order of the work: parameters (:mod:`.params`), the nets (:mod:`.models`),
scoring (:mod:`.scoring`), steps 1-3 of the rule (:mod:`.decide`), binarisation,
post-processing and Eq. 3 (:mod:`.rule`), camera-size pairs (:mod:`.working`), alignment
(:mod:`.align`), the one-scene check and the motion hint (:mod:`.scene`), focal stacks (:mod:`.stack`), folders
(:mod:`.batch`), maps and figures (:mod:`.maps`), test sets with ground truth
(:mod:`.testset`) and the one call for users (:mod:`.api`).

May import: the ground floor (:mod:`bafusion.io`, ``errors``, ``atomic``, ``config``,
``tracking``, ...), :mod:`bafusion.data` and :mod:`bafusion.nets`; never
:mod:`bafusion.evaluation` or :mod:`bafusion.cli`.
"""

# Imported under private names (as in :mod:`bafusion`): ``import importlib`` or ``from typing
# import Any`` left ``bafusion.fusion.importlib``, ``bafusion.fusion.Any`` (and ``dir()``).
import importlib as _importlib
import sys as _sys
import types as _types
import typing as _typing

#: Public name -> (module, attribute), imported on first use: ``import bafusion.fusion.params``
#: (the Snakefile's parameter checks) does not load torch and the nets.
_API: dict[str, tuple[str, str]] = {
    "fuse": ("bafusion.fusion.api", "fuse"),
    "load_model": ("bafusion.fusion.api", "load_model"),
    "decide": ("bafusion.fusion.decide", "decide"),
    "window_mean": ("bafusion.fusion.decide", "window_mean"),
    "FusionNets": ("bafusion.fusion.models", "FusionNets"),
    "default_model_dirs": ("bafusion.fusion.models", "default_model_dirs"),
    "find_model_dir": ("bafusion.fusion.models", "find_model_dir"),
    "load_nets": ("bafusion.fusion.models", "load_nets"),
    "load_nets_from_dir": ("bafusion.fusion.models", "load_nets_from_dir"),
    "resolve_device": ("bafusion.fusion.models", "resolve_device"),
    "shipped_models": ("bafusion.fusion.models", "shipped_models"),
    "FusionParams": ("bafusion.fusion.params", "FusionParams"),
    "FusionResult": ("bafusion.fusion.rule", "FusionResult"),
    "check_same_size": ("bafusion.fusion.rule", "check_same_size"),
    "fuse_images": ("bafusion.fusion.rule", "fuse_images"),
    "fuse_stack": ("bafusion.fusion.rule", "fuse_stack"),
    "fuse_with_map": ("bafusion.fusion.rule", "fuse_with_map"),
    "remove_small_regions": ("bafusion.fusion.rule", "remove_small_regions"),
    "remove_unsure_regions": ("bafusion.fusion.rule", "remove_unsure_regions"),
    "auto_batch": ("bafusion.fusion.scoring", "auto_batch"),
    "auto_step": ("bafusion.fusion.scoring", "auto_step"),
    "boundary_steps": ("bafusion.fusion.scoring", "boundary_steps"),
    "combine_scales": ("bafusion.fusion.scoring", "combine_scales"),
    "score": ("bafusion.fusion.scoring", "score"),
    "score_adaptive": ("bafusion.fusion.scoring", "score_adaptive"),
    "score_dense": ("bafusion.fusion.scoring", "score_dense"),
    "score_exact": ("bafusion.fusion.scoring", "score_exact"),
    "score_grid": ("bafusion.fusion.scoring", "score_grid"),
    "score_multiscale": ("bafusion.fusion.scoring", "score_multiscale"),
    "decision_accuracy": ("bafusion.fusion.testset", "decision_accuracy"),
    "fuse_set": ("bafusion.fusion.testset", "fuse_set"),
    "read_pair_index": ("bafusion.fusion.testset", "read_pair_index"),
}

__all__ = sorted(_API)

if _typing.TYPE_CHECKING:
    # What type checkers (mypy, pyright) see of the names __getattr__ loads on first use: without
    # it each was Any to them. Never run; tests/test_public_api_docs.py checks that it imports
    # _API's names from _API's modules.
    from bafusion.fusion.api import fuse as fuse
    from bafusion.fusion.api import load_model as load_model
    from bafusion.fusion.decide import decide as decide
    from bafusion.fusion.decide import window_mean as window_mean
    from bafusion.fusion.models import FusionNets as FusionNets
    from bafusion.fusion.models import default_model_dirs as default_model_dirs
    from bafusion.fusion.models import find_model_dir as find_model_dir
    from bafusion.fusion.models import load_nets as load_nets
    from bafusion.fusion.models import load_nets_from_dir as load_nets_from_dir
    from bafusion.fusion.models import resolve_device as resolve_device
    from bafusion.fusion.models import shipped_models as shipped_models
    from bafusion.fusion.params import FusionParams as FusionParams
    from bafusion.fusion.rule import FusionResult as FusionResult
    from bafusion.fusion.rule import check_same_size as check_same_size
    from bafusion.fusion.rule import fuse_images as fuse_images
    from bafusion.fusion.rule import fuse_stack as fuse_stack
    from bafusion.fusion.rule import fuse_with_map as fuse_with_map
    from bafusion.fusion.rule import remove_small_regions as remove_small_regions
    from bafusion.fusion.rule import remove_unsure_regions as remove_unsure_regions
    from bafusion.fusion.scoring import auto_batch as auto_batch
    from bafusion.fusion.scoring import auto_step as auto_step
    from bafusion.fusion.scoring import boundary_steps as boundary_steps
    from bafusion.fusion.scoring import combine_scales as combine_scales
    from bafusion.fusion.scoring import score as score
    from bafusion.fusion.scoring import score_adaptive as score_adaptive
    from bafusion.fusion.scoring import score_dense as score_dense
    from bafusion.fusion.scoring import score_exact as score_exact
    from bafusion.fusion.scoring import score_grid as score_grid
    from bafusion.fusion.scoring import score_multiscale as score_multiscale
    from bafusion.fusion.testset import decision_accuracy as decision_accuracy
    from bafusion.fusion.testset import fuse_set as fuse_set
    from bafusion.fusion.testset import read_pair_index as read_pair_index


def __getattr__(name: str) -> _typing.Any:
    try:
        module, attr = _API[name]
    except KeyError:
        raise AttributeError(f"module 'bafusion.fusion' has no attribute {name!r}") from None
    value = getattr(_importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public API (:data:`__all__`, loaded or not) and the module's dunders: not the private
    helpers (``_API``, ``_Package``) nor the submodules loaded so far (``bafusion.fusion.rule``,
    ...)."""
    return sorted({*__all__, *(n for n in globals() if n.startswith("__") and n.endswith("__"))})


class _Package(_types.ModuleType):
    """The package object, so that a public name that is also a submodule stays the function.

    Importing ``bafusion.fusion.decide`` (as :mod:`.rule` does) makes the import system set
    the package attribute ``decide`` to the submodule, which would hide the function of
    :data:`_API` from ``from bafusion.fusion import decide``. The submodule stays in
    :data:`sys.modules` (``importlib.import_module("bafusion.fusion.decide")``).
    """

    def __setattr__(self, name: str, value: _typing.Any) -> None:
        target = _API.get(name)
        if (
            target is not None
            and isinstance(value, _types.ModuleType)
            and value.__name__ == target[0]
        ):
            value = getattr(value, target[1])
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package
