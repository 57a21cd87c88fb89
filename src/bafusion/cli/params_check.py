"""Checks across keys of a whole params.yaml, for the Snakefile (``snakemake -n``, every
``dvc repro`` stage) and ``bafusion preset --apply``.

The schema (:func:`bafusion.schema.validate_params`) checks each key alone; the rules that tie
keys together (``composite.sigma`` as ``lo <= hi``, ``fuse.low < fuse.high``, boundary fractions
that sum to at most 1, the realistic degradations' ranges) live, once, in the typed object of
the step that needs them. :func:`check_params` builds those objects from the parameters, so a
value a job would refuse fails before any job starts, in one line that names the source.
Light on purpose (no torch): the Snakefile runs it at every ``snakemake`` call. The training
settings have no rule across keys beyond the schema's.
The ``evaluate`` section is left to ``bafusion evaluate``: its datasets name folders that may
not exist until the data is there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bafusion.errors import UserError

__all__ = ["check_init_files", "check_params"]


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
    except UserError as e:
        text = str(e)
        raise UserError(text if text.startswith(source) else f"{source}: {text}") from e


def check_init_files(params: Mapping[str, Any], source: str = "params.yaml") -> None:
    """Refuse a warm-start model file (``train.init``, ``train.<net>.init``) that does not
    exist. Snakemake takes it for a rule input, but once a net has been trained it keeps the
    net and drops the training job silently (exit 0, the typo unnoticed, the old weights used).

    Raises
    ------
    UserError
        ``<source>: train.<net>.init <path>: file not found``, one line.
    """
    from pathlib import Path

    from bafusion.config import net_init

    for net in ("initial", "boundary"):
        path = net_init(params, net)
        if path and not Path(path).is_file():
            per_net = ((params.get("train") or {}).get(net) or {}).get("init")
            key = f"train.{net}.init" if per_net else "train.init"
            raise UserError(f"{source}: {key} {path}: model file not found (the warm start of the {net} net)")
