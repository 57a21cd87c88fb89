"""params.yaml: loading, presets (the paper's configuration) and the sample-count arithmetic."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from bafusion.errors import InputFileError, UserError
from bafusion.schema import validate_params
from bafusion.tracking import flatten

__all__ = ["load_params", "validate_params", "deep_merge", "load_preset", "preset_names", "dvc_set_args",
           "apply_overrides_to_file"]


def load_params(path: str | os.PathLike[str] = "params.yaml", validate: bool = True) -> dict[str, Any]:
    """Read a params file (a YAML mapping) and check it against the schema
    (:func:`bafusion.schema.validate_params`) unless ``validate`` is false.

    Raises
    ------
    InputFileError
        The file is missing, not YAML or not a mapping.
    bafusion.schema.ParamsError
        A key is unknown or a value breaks its rule; the message names the file and the key.
    """
    p = Path(path)
    if not p.exists():
        raise InputFileError(p, "params file not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise InputFileError(p, f"invalid YAML: {e}") from e
    if not isinstance(data, dict):
        raise InputFileError(p, "params file must hold a mapping at the top level")
    if validate:
        validate_params(data, str(p))
    return data


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def preset_names() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in resources.files("bafusion.presets").iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict[str, Any]:
    f = resources.files("bafusion.presets") / f"{name}.yaml"
    if not f.is_file():
        raise UserError(f"unknown preset {name!r} (available: {', '.join(preset_names())})")
    return validate_params(yaml.safe_load(f.read_text()) or {}, f"preset {name} (bafusion/presets/{name}.yaml)")


def _hydra_value(v: Any) -> str:
    """A value in the override grammar that ``dvc exp run -S`` parses back to the same YAML."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_hydra_value(x) for x in v) + "]"
    if isinstance(v, Mapping):  # e.g. an entry of evaluate.datasets
        return "{" + ",".join(f"{k}:{_hydra_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, str):
        return v if v and all(c.isalnum() or c in "._/-" for c in v) else json.dumps(v)
    return repr(v) if isinstance(v, float) else str(v)


def dvc_set_args(overrides: Mapping[str, Any]) -> list[str]:
    """``{"data": {"backgrounds": 700}}`` -> ``["-S", "data.backgrounds=700"]``."""
    args: list[str] = []
    for k, v in flatten(overrides).items():
        args += ["-S", f"{k}={_hydra_value(v)}"]
    return args


def apply_overrides_to_file(path: str | os.PathLike[str], overrides: Mapping[str, Any]) -> None:
    """Write ``overrides`` into a params file in place, keeping its comments and order."""
    from ruamel.yaml import YAML

    from bafusion.atomic import atomic_file

    p = Path(path)
    ry = YAML()
    ry.preserve_quotes = True
    doc = ry.load(p.read_text())
    for key, value in flatten(overrides).items():
        node = doc
        parts = key.split(".")
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], Mapping):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    with atomic_file(p) as tmp, open(tmp, "w") as fh:
        ry.dump(doc, fh)
