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

from bafusion.fusion.api import fuse, load_model
from bafusion.fusion.decide import decide, window_mean
from bafusion.fusion.models import (
    FusionNets,
    default_model_dirs,
    find_model_dir,
    load_nets,
    load_nets_from_dir,
    resolve_device,
    shipped_models,
)
from bafusion.fusion.params import FusionParams
from bafusion.fusion.rule import (
    FusionResult,
    check_same_size,
    fuse_images,
    fuse_stack,
    fuse_with_map,
    remove_small_regions,
)
from bafusion.fusion.scoring import (
    auto_batch,
    auto_step,
    boundary_steps,
    combine_scales,
    score,
    score_adaptive,
    score_dense,
    score_exact,
    score_grid,
    score_multiscale,
)
from bafusion.fusion.testset import decision_accuracy, fuse_set, read_pair_index

__all__ = [
    "FusionNets",
    "FusionParams",
    "FusionResult",
    "auto_batch",
    "auto_step",
    "boundary_steps",
    "check_same_size",
    "combine_scales",
    "decide",
    "decision_accuracy",
    "fuse",
    "default_model_dirs",
    "find_model_dir",
    "fuse_images",
    "fuse_set",
    "fuse_stack",
    "fuse_with_map",
    "load_model",
    "load_nets",
    "load_nets_from_dir",
    "read_pair_index",
    "remove_small_regions",
    "resolve_device",
    "score",
    "score_adaptive",
    "score_dense",
    "score_exact",
    "score_grid",
    "score_multiscale",
    "shipped_models",
    "window_mean",
]
