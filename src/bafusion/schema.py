"""The parameter schema (``bafusion/schemas/params.schema.yaml``) and its one-line errors.

One JSON Schema describes every key of ``params.yaml``: its type, range and allowed values;
unknown keys are refused by name. The Snakefile applies it at start-up (so ``snakemake -n``
and every ``dvc repro`` stage fail before any job runs), and every ``bafusion`` command that
reads parameters applies it through :func:`validate_params` (also exported by
:mod:`bafusion.config`).

Two extensions of JSON Schema, ignored by other validators (Snakemake's ``validate()``):

- ``x-rule``: the phrase an error message uses for a key (``"a positive multiple of 4"``);
- ``x-resnet-depth: true``: the value is a CIFAR ResNet depth ``6n + 2`` with ``n >= 1``;
- ``x-colour-map: true``: the value names a matplotlib colour map (:func:`colour_map_problem`);
- ``x-default``: the value used when the key is absent (:func:`default`, :func:`defaults`).
  The typed objects built from the parameters (:class:`bafusion.fusion.FusionParams`,
  :class:`bafusion.nets.train.TrainConfig`, :class:`bafusion.evaluation.evaluate.EvalConfig`)
  take their field defaults from here and check their values with :func:`validate_params`,
  so the schema is the one place that knows defaults, types and ranges. (Not JSON Schema's
  ``default``: Snakemake's ``validate`` would write it into the config, and into the per-net
  ``train.initial`` / ``train.boundary``, which share ``train``'s rules but inherit its values.)

Python tuples count as JSON arrays here, so a typed object's tuple fields validate as they are.
"""

from __future__ import annotations

import copy
import functools
import json
import reprlib
import math
import numbers
from collections.abc import Iterator, Mapping
from importlib import resources
from typing import Any

import yaml

from bafusion.errors import UserError

SCHEMA_RESOURCE = ("bafusion.schemas", "params.schema.yaml")


class ParamsError(UserError):
    """Parameters that do not satisfy the schema; ``problems`` holds one line per violation."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:3])}{'; ...' if len(problems) > 3 else ''})" \
            if len(problems) > 1 else ""
        super().__init__(f"{source}: {problems[0]}{more}")


def schema_path() -> str:
    """Path of the schema file inside the installed package (for Snakemake's ``validate``)."""
    return str(resources.files(SCHEMA_RESOURCE[0]) / SCHEMA_RESOURCE[1])


@functools.lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The parsed schema (cached)."""
    f = resources.files(SCHEMA_RESOURCE[0]) / SCHEMA_RESOURCE[1]
    text = f.read_text(encoding="utf-8-sig")
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 - a safe loader


def _resnet_depth(validator: Any, enabled: Any, instance: Any, schema: Mapping[str, Any]) -> Iterator[Any]:
    from jsonschema import ValidationError

    if enabled and isinstance(instance, int) and not isinstance(instance, bool):
        if instance < 8 or (instance - 2) % 6:
            yield ValidationError(f"{instance} is not 6n+2 with n >= 1")


#: Colour maps an unknown colour map's message offers (perceptually uniform ones first; jet: the paper's).
COLOUR_MAP_EXAMPLES = ("magma", "inferno", "viridis", "cividis", "gray", "jet")


#: matplotlib's own colour maps in every version the project supports (``matplotlib>=3.8``),
#: each also reversed (``<name>_r``): a value among them is accepted without importing
#: matplotlib, which every command reading parameters did (0.2 s, and under an unwritable HOME
#: two lines of matplotlib's cache warning in every step's log); any other value is looked up
#: in ``matplotlib.colormaps`` itself. tests/test_schema.py checks the list against matplotlib.
MATPLOTLIB_COLOUR_MAPS = frozenset((
    "Accent", "Blues", "BrBG", "BuGn", "BuPu", "CMRmap", "Dark2", "GnBu", "Greens", "Greys", "OrRd", "Oranges",
    "PRGn", "Paired", "Pastel1", "Pastel2", "PiYG", "PuBu", "PuBuGn", "PuOr", "PuRd", "Purples", "RdBu", "RdGy",
    "RdPu", "RdYlBu", "RdYlGn", "Reds", "Set1", "Set2", "Set3", "Spectral", "Wistia", "YlGn", "YlGnBu", "YlOrBr",
    "YlOrRd", "afmhot", "autumn", "binary", "bone", "brg", "bwr", "cividis", "cool", "coolwarm", "copper",
    "cubehelix", "flag", "gist_earth", "gist_gray", "gist_heat", "gist_ncar", "gist_rainbow", "gist_stern",
    "gist_yarg", "gnuplot", "gnuplot2", "gray", "hot", "hsv", "inferno", "jet", "magma", "nipy_spectral",
    "ocean", "pink", "plasma", "prism", "rainbow", "seismic", "spring", "summer", "tab10", "tab20", "tab20b",
    "tab20c", "terrain", "turbo", "twilight", "twilight_shifted", "viridis", "winter"))


def colour_map_problem(name: Any) -> str | None:
    """Why ``name`` is not the name of a matplotlib colour map (``"magma"``, ``"jet"``, ...), or
    None where it is one.

    Parameters
    ----------
    name : str
        The name to check (matplotlib's names are case-sensitive: ``Greys``, ``gray``).

    Returns
    -------
    str or None
        ``"'jte' is not a matplotlib colour map (did you mean jet? others: magma, ...)"``; None
        for a known name.
    """
    if isinstance(name, str) and name.removesuffix("_r") in MATPLOTLIB_COLOUR_MAPS:
        return None
    import difflib

    import matplotlib

    known = list(matplotlib.colormaps)
    if isinstance(name, str) and name in known:
        return None
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6) if isinstance(name, str) else []
    hint = f"did you mean {close[0]}? " if close else ""
    examples = ", ".join(c for c in COLOUR_MAP_EXAMPLES if c in known)
    return f"{_show(name)} is not a matplotlib colour map ({hint}e.g. {examples}; all: matplotlib.colormaps)"


def _colour_map(validator: Any, enabled: Any, instance: Any, schema: Mapping[str, Any]) -> Iterator[Any]:
    from jsonschema import ValidationError

    if enabled and isinstance(instance, str):  # a non-string: the type rule says so
        problem = colour_map_problem(instance)
        if problem:
            yield ValidationError(problem)


def _non_finite(v: Any) -> bool:
    """NaN or inf, of any float type; never an integer (``10**400`` is finite, and too large
    for ``math.isfinite``)."""
    return isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral) and not math.isfinite(v)


@functools.lru_cache(maxsize=1)
def _validator() -> Any:
    from jsonschema import Draft202012Validator, validators

    # Tuples are arrays too (the typed objects hold their lists as tuples).
    # ... and NaN is no number: every bound compares false with it, so it passed them all
    # (of any float type: numpy's float32 NaN is no Python float, but NaN all the same);
    # nor is inf, which passed every lower bound (train.lr: .inf): a number is finite.
    base = Draft202012Validator.TYPE_CHECKER
    checker = base.redefine("array", lambda _c, v: isinstance(v, (list, tuple))).redefine(
        "number", lambda c, v: base.is_type(v, "number") and not _non_finite(v))
    cls = validators.extend(Draft202012Validator, {"x-resnet-depth": _resnet_depth, "x-colour-map": _colour_map}, type_checker=checker)
    return cls(load_schema())  # the schema itself is checked against the metaschema by the tests


def _key(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


#: The most characters of a value an error line shows (a long list, or a long string, would
#: otherwise fill the terminal, or a log, with one line).
SHOW_CHARS = 200


def _show(value: Any) -> str:
    if isinstance(value, str):
        text = repr(value[:SHOW_CHARS + 1])
    else:
        try:
            text = json.dumps(value)
        except (TypeError, ValueError, RecursionError):
            text = reprlib.repr(value)
    if len(text) <= SHOW_CHARS:
        return text
    digits = f" ({len(text)} digits)" if isinstance(value, int) and text.lstrip("-").isdigit() else ""
    return f"{text[:SHOW_CHARS]}...{digits}"


def _known_keys(schema: Mapping[str, Any]) -> list[str]:
    keys = list(schema.get("properties", {}))
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        keys += _known_keys(load_schema()["$defs"][ref.split("/")[-1]])
    return keys


_TYPE_WORDS = {"integer": "an integer", "number": "a number", "boolean": "true or false", "string": "a string",
               "array": "a list", "object": "a mapping"}
_BOUNDS = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}


def _problem(err: Any) -> str:
    """One line for one ``jsonschema.ValidationError``."""
    key = _key(err.absolute_path)
    schema = err.schema if isinstance(err.schema, Mapping) else {}
    v, value = err.validator, err.instance
    if v in ("additionalProperties", "unevaluatedProperties"):
        known = _known_keys(schema)
        extra = [k for k in value if k not in known] if isinstance(value, Mapping) else []
        names = ", ".join(f"{key + '.' if key else ''}{k}" for k in extra) or err.message
        return f"unknown key{'s' if len(extra) > 1 else ''} {names} (known{' in ' + key if key else ''}: {', '.join(known)})"
    if v == "required":
        return f"{key or 'top level'}: {err.message}"
    if v == "type" and _non_finite(value):  # said so also where the key has an x-rule
        if math.isinf(value):
            return f"{key or 'params'}: {float(value)!r} is not a finite number"
        return f"{key or 'params'}: {_show(value)} is not a number"
    rule = schema.get("x-rule")
    if rule is None:
        if v == "enum":
            rule = "one of " + " | ".join(_show(x) if not isinstance(x, str) else x for x in err.validator_value)
        elif v == "const":
            rule = _show(err.validator_value)
        elif v == "type":
            t = err.validator_value
            rule = " or ".join(_TYPE_WORDS.get(x, x) for x in ([t] if isinstance(t, str) else t))
        elif v in _BOUNDS:
            word = {"integer": "an integer", "number": "a number"}.get(str(schema.get("type")), "a value")
            rule = f"{word} {_BOUNDS[v]} {err.validator_value}"
        elif v == "multipleOf":
            rule = f"a multiple of {err.validator_value}"
        elif v in ("minItems", "maxItems"):
            rule = f"a list of {'at least' if v == 'minItems' else 'at most'} {err.validator_value} items"
        elif v == "uniqueItems":
            rule = "a list without repeated items"
        elif v == "pattern":
            rule = f"a string matching {err.validator_value}"
        else:
            return f"{key}: {err.message}"
    return f"{key or 'params'}: {_show(value)} is not {rule}"


def problems(params: Any) -> list[str]:
    """Every violation of the schema in ``params``, one line each (empty: valid)."""
    errs = sorted(_validator().iter_errors(params), key=lambda e: (list(map(str, e.absolute_path)), e.validator))
    return list(dict.fromkeys(_problem(e) for e in errs))  # two rules with one x-rule: one line


def _deref(node: Mapping[str, Any]) -> Mapping[str, Any]:
    """``node`` with its ``$ref`` (to ``#/$defs/...``) merged in, properties included."""
    ref = node.get("$ref")
    if not (isinstance(ref, str) and ref.startswith("#/$defs/")):
        return node
    target = _deref(load_schema()["$defs"][ref.split("/")[-1]])
    return {**target, **{k: v for k, v in node.items() if k != "$ref"},
            "properties": {**target.get("properties", {}), **node.get("properties", {})}}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _wants_int(node: Mapping[str, Any]) -> bool:
    """Whether the schema ``node`` takes whole numbers only: type integer, or a choice among
    integers (``enum: [1, 2, 4]``, ``const: 0``), or alternatives of which one does and none
    takes any number."""
    node = _deref(node)
    t = node.get("type")
    types = [t] if isinstance(t, str) else list(t) if isinstance(t, list) else []
    if "number" in types:
        return False
    if "integer" in types:
        return True
    numbers = [v for v in node.get("enum", [node["const"]] if "const" in node else [])
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if numbers:
        return all(_is_int(v) for v in numbers)
    branches = [_deref(b) for key in ("anyOf", "oneOf") for b in node.get(key, [])]
    return any(_wants_int(b) for b in branches) and not any(
        b.get("type") == "number" or (isinstance(b.get("type"), list) and "number" in b["type"]) for b in branches)


def _is_numpy_scalar(v: Any) -> bool:
    # Without importing numpy here: the schema is read where numpy need not be loaded yet.
    return type(v).__module__ == "numpy" and getattr(v, "ndim", None) == 0 and hasattr(v, "item")


def _whole_floats_to_ints(value: Any, node: Mapping[str, Any]) -> Any:
    """``value`` with every float that is a whole number (``16.0``) turned into an int where
    the schema ``node`` wants an integer; mappings and lists are changed in place, a tuple
    that changes is returned anew (its parent holds the new one). A numpy scalar
    (``np.int64(4)``, ``np.bool_(True)``, ``np.float32(0.5)``) becomes the Python scalar it
    holds, so that it is checked, and reaches the code, as that value."""
    node = _deref(node)
    if _is_numpy_scalar(value):
        value = value.item()
    if isinstance(value, float) and value.is_integer() and _wants_int(node):
        return int(value)
    branches = [b for key in ("anyOf", "oneOf", "allOf") for b in node.get(key, [])]
    if isinstance(value, dict):
        props, extra = node.get("properties", {}), node.get("additionalProperties")
        for k, v in value.items():
            sub = props.get(k, extra if isinstance(extra, Mapping) else None)
            if sub is not None:
                value[k] = _whole_floats_to_ints(v, sub)
        for b in branches:
            _whole_floats_to_ints(value, b)
    elif isinstance(value, (list, tuple)):
        first, rest = node.get("prefixItems", []), node.get("items")
        new = [_whole_floats_to_ints(v, first[i] if i < len(first) else rest)
               if i < len(first) or isinstance(rest, Mapping) else v for i, v in enumerate(value)]
        for b in branches:
            new = list(_whole_floats_to_ints(new, b))
        if any(a is not b for a, b in zip(new, value)):
            if isinstance(value, tuple):
                return tuple(new)
            value[:] = new
    return value


def whole_floats_to_ints(params: Any) -> Any:
    """Turn, in place, every whole number written as a float (``16.0``, as ``dvc exp run -S
    x=16.0`` or a JSON writer may give it) into an int where the schema wants an integer
    (``patch``, ``fuse.dense_margin``, ``fuse.initial_step``), so that the commands and the
    rules get ``16``; ``16.5`` stays, for the schema to refuse. Numpy scalars become the
    Python scalars they hold (``np.int64(4)`` is ``4``). Returns ``params``."""
    return _whole_floats_to_ints(params, load_schema())


def validate_params(params: Any, source: str = "params.yaml") -> Any:
    """Check ``params`` (a whole params.yaml, or any subset of its keys) against the schema.

    A whole number written as a float where the schema wants an integer (``patch: 32.0``)
    is taken as that integer: it becomes an int in ``params`` (:func:`whole_floats_to_ints`),
    so everything downstream sees ``32``; a numpy scalar (``np.int64(4)``) likewise becomes
    the Python scalar it holds.

    Parameters
    ----------
    params
        The parsed parameters.
    source
        Where they came from; starts the error message (``"params.yaml"``).

    Returns
    -------
    The same ``params``, its whole floats at integer keys made ints (in place).

    Raises
    ------
    ParamsError
        A :class:`~bafusion.errors.UserError` whose message is one line:
        ``params.yaml: patch: 30 is not a positive multiple of 4 (...)``.
    """
    whole_floats_to_ints(params)
    found = problems(params)
    if found:
        raise ParamsError(source, found)
    return params


def validate_section(section: str, values: Any, source: str) -> Any:
    """:func:`validate_params` of one top-level section (``fuse``, ``evaluate``) given alone."""
    validate_params({section: values}, source)
    return values


def _resolved(node: Mapping[str, Any]) -> Mapping[str, Any]:
    """``node`` with its ``$ref`` (to ``#/$defs/...``) merged in, properties included; a list of
    mappings (``evaluate.datasets``) stands for its items."""
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target = _resolved(load_schema()["$defs"][ref.split("/")[-1]])
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"},
                "properties": {**target.get("properties", {}), **node.get("properties", {})}}
    items = node.get("items")
    if "properties" not in node and isinstance(items, Mapping):
        node = _resolved(items)
    return node


def _node(key: str) -> Mapping[str, Any]:
    """The schema entry of a dotted key (``"fuse.l"``, ``"train.epochs"``, ``"patch"``,
    ``"evaluate.datasets.pattern"``), its ``$ref`` resolved."""
    node: Mapping[str, Any] = load_schema()
    for part in key.split("."):
        props = _resolved(node).get("properties", {})
        if part not in props:
            raise KeyError(f"no parameter {key!r} in the schema")
        node = props[part]
    return {**node, **{k: v for k, v in _resolved(node).items() if k not in node}} if "$ref" in node else node


def default(key: str) -> Any:
    """The default of one parameter: its ``x-default`` in the schema (a fresh copy).

    Parameters
    ----------
    key
        Dotted name: ``"fuse.l"``, ``"train.epochs"`` (the ``train`` keys are those of
        ``$defs/train_net``), ``"patch"``.

    Raises
    ------
    KeyError
        The key is not in the schema, or has no ``x-default``.
    """
    node = _node(key)
    if "x-default" not in node:
        raise KeyError(f"parameter {key!r} has no x-default in the schema")
    return copy.deepcopy(node["x-default"])


def defaults(section: str) -> dict[str, Any]:
    """Every key of a top-level section (``"fuse"``, ``"train"``, ``"evaluate"``) that has a
    default, with that default; ``""``: the top-level scalars (``seed``, ``patch``, ``depth``)."""
    node = load_schema() if not section else _resolved(_node(section))
    props = node.get("properties", {})
    return {k: copy.deepcopy(v["x-default"]) for k, v in props.items() if "x-default" in v}


def maximum(key: str) -> Any:
    """The largest value one parameter takes (its ``maximum`` in the schema), e.g.
    ``maximum("fuse.threads")``; for the command-line options that set it. For a list of
    numbers (``composite.sigma``), the largest of its items.

    Raises
    ------
    KeyError
        The key is not in the schema, or has no maximum.
    """
    node = _node(key)
    if "maximum" not in node and node.get("type") == "array" and isinstance(node.get("items"), dict):
        node = node["items"]
    if "maximum" not in node:
        raise KeyError(f"parameter {key!r} has no maximum in the schema")
    return node["maximum"]


def allowed(key: str) -> tuple[Any, ...]:
    """The allowed values (``enum``) of one parameter, e.g. ``allowed("fuse.boundary_mode")``.

    Raises
    ------
    KeyError
        The key is not in the schema, or is not a choice among listed values.
    """
    node = _node(key)
    if "enum" not in node:
        raise KeyError(f"parameter {key!r} has no list of allowed values in the schema")
    return tuple(node["enum"])


def _leaves(node: Mapping[str, Any], prefix: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    resolved = _resolved(node) if "properties" not in node or "$ref" in node else node
    for name, sub in resolved.get("properties", {}).items():
        key = f"{prefix}{name}"
        if "$ref" in sub and sub.get("$ref") == node.get("$ref"):
            continue  # train.initial / train.boundary: per-net overrides of the keys beside them
        inner = _resolved(sub) if "$ref" in sub else sub
        if inner.get("type") == "object" and inner.get("properties") and "items" not in inner:
            yield from _leaves(sub, key + ".")
        else:
            yield key, {**inner, **sub}


def leaf_keys() -> dict[str, Mapping[str, Any]]:
    """Every key of a whole params.yaml the schema knows, dotted (``"fuse.boundary_weight"``,
    ``"download.net.retries"``), with its schema entry (``$ref`` resolved). A section's own
    keys, not the sections; not the per-net ``train.initial.*`` / ``train.boundary.*`` (they
    override ``train.*``) nor the keys inside list items (``evaluate.datasets``)."""
    return dict(_leaves(load_schema(), ""))


def _has(params: Any, key: str) -> bool:
    node = params
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def missing_defaults(params: Mapping[str, Any]) -> dict[str, Any]:
    """The keys with an ``x-default`` that a whole ``params`` lacks, with that default: the
    values the commands use for them. A ``train`` key both nets set (``train.initial.lr`` and
    ``train.boundary.lr``) is not missing. Keys without an ``x-default`` are left out (the
    rules refuse those they need, naming them)."""
    out: dict[str, Any] = {}
    for key, node in leaf_keys().items():
        if "x-default" not in node or _has(params, key):
            continue
        head, _, rest = key.partition(".")
        if head == "train" and all(_has(params, f"train.{net}.{rest}") for net in ("initial", "boundary")):
            continue
        out[key] = copy.deepcopy(node["x-default"])
    return out
