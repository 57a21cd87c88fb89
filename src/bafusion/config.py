"""params.yaml: the one reader of the parameters, presets (the paper's configuration) and the
sample-count arithmetic.

Every command reads its parameters with :func:`read_params`: a params file (YAML mapping),
then JSON objects (``--params-json``, ``--fuse-json``: the whole document or one section),
then ``--set KEY=VALUE`` overrides, each later one winning, checked against the schema
(:mod:`bafusion.schema`: the one place that knows keys, types, ranges and defaults). The
typed objects are built from the result: :meth:`bafusion.fusion.FusionParams.from_params`,
:meth:`bafusion.nets.train.TrainConfig.from_params`,
:meth:`bafusion.evaluation.evaluate.EvalConfig.from_params`; :func:`section` gives a section
with the schema's defaults filled in (the settings that are not fields of those objects:
``fuse.device``, ``fuse.alpha``, ...). Command-line flags override on top of that, in the
commands (flags > JSON > file > defaults).
"""

from __future__ import annotations

import codecs
import copy
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from bafusion.errors import InputFileError, UserError, json_loads
from bafusion.schema import defaults, load_schema, validate_params
from bafusion.tracking import flatten

__all__ = ["ALPHAMATTING_FOREGROUNDS", "DEFAULT_COCO_COUNT", "PRESET_WHOLE_KEYS", "ParamsLoader", "apply_overrides_to_file", "apply_preset",
           "batch_split_problem", "coco_download_count", "deep_merge", "dvc_set_args",
           "load_params", "load_preset", "load_yaml", "net_init", "parse_json_object", "preset_names", "read_params", "section", "validate_params",
           "yaml12_floats"]


#: A YAML 1.2 float (the core schema): PyYAML follows YAML 1.1, which wants a dot in the
#: mantissa, so ``5e-05`` (as ``dvc exp run -S`` and ruamel.yaml write it) would read as a string.
_FLOAT_12 = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


#: The most values (scalars, lists and mappings) the aliases (``*name``) of one YAML document
#: may stand for, counted expanded: a 301-byte file of nested aliases (a "billion laughs")
#: stood for 43 million values, which the schema check then walked for minutes.
MAX_ALIAS_VALUES = 100_000


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many nodes ``node`` stands for with its aliases expanded (``memo``: by node id)."""
    stack = [node]
    while stack:
        n = stack[-1]
        if id(n) in memo:
            stack.pop()
            continue
        kids = ([c for pair in n.value for c in pair] if isinstance(n, yaml.MappingNode)
                else list(n.value) if isinstance(n, yaml.SequenceNode) else [])
        todo = [c for c in kids if id(c) not in memo]
        if todo:
            stack.extend(todo)
            continue
        memo[id(n)] = 1 + sum(memo[id(c)] for c in kids)
        stack.pop()
    return memo[id(node)]


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads YAML 1.2 floats without a dot (``1e-3``, ``5e-05``)
    as numbers, as DVC (ruamel.yaml) and JSON do, and refuses a key given twice in one
    mapping, as DVC and ruamel.yaml do (PyYAML keeps the last silently: a second ``train:``
    at the end of params.yaml replaced the whole section, its other keys back to defaults).

    Anchors and aliases (merge keys ``<<: *base`` included) are read, but an alias inside the
    node it names (a recursive structure) is refused, and so is a document whose aliases
    stand for more than :data:`MAX_ALIAS_VALUES` values."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            anchor = event.anchor
            if anchor in self.__dict__.get("_open_anchors", ()):
                raise yaml.composer.ComposerError(
                    None, None, f"alias *{anchor} on line {event.start_mark.line + 1} is inside the node it names "
                    "(a recursive structure)", event.start_mark)
            if anchor in self.anchors:
                memo: dict[int, int] = self.__dict__.setdefault("_sizes", {})
                self._alias_values = getattr(self, "_alias_values", 0) + _expanded_size(self.anchors[anchor], memo)
                if self._alias_values > MAX_ALIAS_VALUES:
                    raise yaml.composer.ComposerError(
                        None, None, f"its aliases stand for more than {MAX_ALIAS_VALUES} values (alias *{anchor} on "
                        f"line {event.start_mark.line + 1}): write the values out", event.start_mark)
        return super().compose_node(parent, index)

    def compose_sequence_node(self, anchor: str | None) -> yaml.Node:
        return self._compose_open(anchor, super().compose_sequence_node)

    def compose_mapping_node(self, anchor: str | None) -> yaml.Node:
        return self._compose_open(anchor, super().compose_mapping_node)

    def _compose_open(self, anchor: str | None, compose: Callable[[str | None], yaml.Node]) -> yaml.Node:
        open_anchors: list[str | None] = self.__dict__.setdefault("_open_anchors", [])
        open_anchors.append(anchor)
        try:
            return compose(anchor)
        finally:
            open_anchors.pop()

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # PyYAML rewrites a node's merge keys in place into the keys they merge (in front of its
        # own): a node is checked once, on its first flattening, so by its own explicit keys
        # only (an anchored node is often flattened first through an alias's ``<<: *c``, before
        # it is constructed; its merged keys, which its own may override, are then among them)
        checked: dict[int, yaml.Node] = self.__dict__.setdefault("_keys_checked", {})
        if id(node) not in checked:
            checked[id(node)] = node  # held: an id is not reused while the document is read
            self._check_duplicate_keys(node)
        super().flatten_mapping(node)

    def _check_duplicate_keys(self, node: yaml.MappingNode) -> None:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` keys may be overridden
                continue
            key = self.construct_object(key_node, deep=False)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # unhashable: PyYAML's own error follows
                continue
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} on line {key_node.start_mark.line + 1} (first on line "
                    f"{first.start_mark.line + 1})", key_node.start_mark)


ParamsLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(_FLOAT_12.pattern, re.X),
                                   list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """Parse YAML text with :class:`ParamsLoader` (safe; YAML 1.2 floats are numbers).

    Raises
    ------
    yaml.YAMLError
        Not valid YAML, a key given twice, aliases that stand for too many values, or lists
        and mappings nested too deeply to read (Python's recursion limit).
    """
    try:
        return yaml.load(text, Loader=ParamsLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise yaml.YAMLError("lists or mappings nested too deeply to read") from None


def yaml12_floats(node: Any) -> Any:
    """Turn, in place, the strings of a parsed YAML tree that YAML 1.2 reads as floats
    (``5e-05``) into floats; returns ``node``. For trees another reader built with PyYAML
    (Snakemake's ``configfile:``)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in list(items):
        if isinstance(v, str) and _FLOAT_12.match(v):
            node[k] = float(v)
        else:
            yaml12_floats(v)
    return node


def retype_config_overrides(config: dict[str, Any], entries: Sequence[str] | None) -> dict[str, Any]:
    """Read Snakemake's ``--config KEY=VALUE`` ``entries`` again with :func:`load_yaml` where
    VALUE is a YAML mapping or list, and merge them into ``config`` (in place; returned).

    Snakemake parses such a VALUE with PyYAML's ``BaseLoader``, so ``train={epochs: 2}``
    arrives as ``{"epochs": "2"}`` and the schema would refuse the string; scalar values
    (``seed=3``) Snakemake already reads as numbers. Mappings merge key by key, as Snakemake
    merges them into the config file's values; a VALUE that is not valid YAML is left as
    Snakemake read it.
    """

    def merge(into: dict[str, Any], new: dict[str, Any]) -> None:
        for k, v in new.items():
            if isinstance(v, dict) and isinstance(into.get(k), dict):
                merge(into[k], v)
            else:
                into[k] = v

    for entry in entries or ():
        key, sep, value = str(entry).partition("=")
        if not sep or not value:
            continue
        try:
            parsed = load_yaml(value)
        except yaml.YAMLError:
            continue
        if isinstance(parsed, (dict, list)):
            merge(config, {key: parsed})
    return config


def _read_mapping(path: str | os.PathLike[str], empty_ok: bool) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise InputFileError(p, "params file not found" if not p.exists() else "params file is not a file")
    try:
        data = load_yaml(p.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise InputFileError(p, f"invalid YAML: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    if data is None and empty_ok:
        return {}
    if not isinstance(data, dict):
        raise InputFileError(p, "params file must hold a mapping at the top level")
    return data


def load_params(path: str | os.PathLike[str] = "params.yaml", validate: bool = True) -> dict[str, Any]:
    """Read a params file (a YAML mapping) and check it against the schema
    (:func:`bafusion.schema.validate_params`) unless ``validate`` is false.

    Raises
    ------
    InputFileError
        The file is missing, not YAML or not a mapping (an empty file too).
    bafusion.schema.ParamsError
        A key is unknown or a value breaks its rule; the message names the file and the key.
    """
    data = _read_mapping(path, empty_ok=False)
    if validate:
        validate_params(data, str(path))
    return data


def parse_json_object(text: str, label: str) -> dict[str, Any]:
    """A JSON object given on the command line (``label``: the option, for the message).

    Raises
    ------
    UserError
        Not JSON, or not an object: ``--params-json: not valid JSON: ...``.
    """
    try:
        value = json_loads(text)
    except ValueError as e:
        raise UserError(f"{label}: not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise UserError(f"{label}: expected a JSON object")
    return value


def _set(params: dict[str, Any], item: str) -> None:
    """Apply one ``--set key.sub=value`` (the value parsed as YAML) to ``params`` in place."""
    key, eq, raw = item.partition("=")
    if not eq or not key:
        raise UserError(f"--set expects key=value, got {item!r}")
    try:
        value = load_yaml(raw)
    except yaml.YAMLError as e:
        raise UserError(f"--set {key}: the value is not YAML: {str(e).splitlines()[0]}") from e
    node = params
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {key}: {part} is not a section")
    node[parts[-1]] = value


def _refuse_section_wrapper(obj: Mapping[str, Any], label: str, sec: str) -> None:
    """A JSON option that takes one section's keys given the section itself
    (``--params-json '{"fuse": {"l": 8}}'`` to ``bafusion fuse``, as ``train``'s takes a whole
    file) was refused as "unknown key fuse.fuse (known in fuse: ...)": say what to give."""
    from bafusion.schema import load_schema

    if sec not in obj or sec in ((load_schema()["properties"].get(sec) or {}).get("properties") or {}):
        return
    inner = obj[sec]
    example = f" ({label} '{json.dumps(inner)}')" if len(obj) == 1 and isinstance(inner, Mapping) else ""
    raise UserError(f"{label}: unknown key {sec}.{sec}: {label} takes the keys of the {sec} section: give them "
                    f"without the wrapper{example}")


def read_params(path: str | os.PathLike[str] | None = None,
                json_layers: Sequence[tuple[str, str | None, str | None]] = (),
                overrides: Sequence[str] = (), sections: Sequence[str] | None = None) -> dict[str, Any]:
    """The parameters of a command: a file, then JSON objects, then ``--set`` overrides; checked.

    Parameters
    ----------
    path
        A params file (YAML mapping; an empty file is an empty mapping); None: none.
    json_layers
        ``(label, text, section)`` per JSON option, in order of precedence (later wins):
        the object is deep-merged into ``section`` (None: into the whole document); an
        empty or None ``text`` is skipped. ``("--params-json", args.params_json, "fuse")``.
    overrides
        ``key.sub=value`` items (values parsed as YAML), applied last.
    sections
        Check (and keep) only these top-level sections (``("fuse",)``: ``bafusion fuse`` reads
        its section of a params file and ignores the rest, as before); None: check everything.
        A section that is absent or empty (``fuse:``) becomes ``{}``. The file's top-level keys
        are checked either way: one that no params file has (a pair index, a typo) is refused
        by name, as without ``sections``.

    Returns
    -------
    dict
        The merged parameters (no defaults filled in: see :func:`section` and the typed
        objects' ``from_params``).

    Raises
    ------
    InputFileError
        The file is missing, not YAML or not a mapping.
    UserError
        A JSON option is not a JSON object, or an override is malformed.
    bafusion.schema.ParamsError
        A key is unknown or a value breaks its rule; the message starts with what was given
        (``params.yaml + --params-json: fuse.tile: 30 is not a positive multiple of 4``).
    """
    params: dict[str, Any] = _read_mapping(path, empty_ok=True) if path else {}
    given = [str(path)] if path else []
    if sections is not None:
        if path:  # unknown keys are refused by name, also where only some sections are read
            known = load_schema()["properties"]
            unknown = {k: v for k, v in params.items() if k not in known}
            if unknown:
                validate_params(unknown, str(path))  # "p.yaml: unknown keys pairs, params (known: ...)"
        params = {s: {} if params.get(s) is None else params[s] for s in sections}
    for label, text, sec in json_layers:
        if not text:
            continue
        obj = parse_json_object(text, label)
        if sec is not None:
            _refuse_section_wrapper(obj, label, sec)
        params = deep_merge(params, obj if sec is None else {sec: obj})
        given.append(label)
    for item in overrides:
        _set(params, item)
    if overrides:
        given.append("--set")
    return validate_params(params, " + ".join(given) or "parameters")


def section(params: Mapping[str, Any], name: str) -> dict[str, Any]:
    """One top-level section of ``params`` over the schema's defaults of its keys
    (:func:`bafusion.schema.defaults`); ``""``: the top-level scalars (seed, patch, depth).

    Examples
    --------
    >>> section({"fuse": {"alpha": 5}}, "fuse")["alpha"], section({}, "fuse")["device"]
    (5, 'auto')
    """
    if not name:
        given = {k: v for k, v in params.items() if not isinstance(v, Mapping)}
    else:
        given = dict(params.get(name) or {})
    return {**defaults(name), **copy.deepcopy(given)}


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``: mappings merge key by key, any other value (a list too) replaces."""
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
    return validate_params(load_yaml(f.read_text(encoding="utf-8-sig")) or {},
                           f"preset {name} (bafusion/presets/{name}.yaml)")


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


#: Keys whose value a preset sets whole: the per-net training overrides. Merged key by key, a
#: ``train.initial.lr`` already in params.yaml would survive ``bafusion preset paper`` and win
#: over the preset's ``train.lr`` (:meth:`bafusion.nets.train.TrainConfig.from_params`).
PRESET_WHOLE_KEYS: tuple[str, ...] = ("train.initial", "train.boundary")


def preset_leaves(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` flattened to dotted keys, except that a key of :data:`PRESET_WHOLE_KEYS`
    keeps its mapping as one value (it replaces, not merges)."""
    out: dict[str, Any] = {}

    def walk(d: Mapping[str, Any], prefix: str) -> None:
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, Mapping) and key not in PRESET_WHOLE_KEYS:
                walk(v, key + ".")
            else:
                out[key] = v

    walk(overrides, "")
    return out


def apply_preset(params: Mapping[str, Any], preset: Mapping[str, Any]) -> dict[str, Any]:
    """``preset`` over ``params`` as ``bafusion preset --apply`` writes it: :func:`deep_merge`,
    except that the keys of :data:`PRESET_WHOLE_KEYS` the preset sets are replaced whole."""
    out = deep_merge(params, preset)
    for key, value in preset_leaves(preset).items():
        if key in PRESET_WHOLE_KEYS:
            *parents, last = key.split(".")
            node = out
            for part in parents:
                node = node[part]
            node[last] = copy.deepcopy(value)
    return out


def dvc_set_args(overrides: Mapping[str, Any]) -> list[str]:
    """``{"data": {"backgrounds": 700}}`` -> ``["-S", "data.backgrounds=700"]``.

    A key of :data:`PRESET_WHOLE_KEYS` is removed and added again (``-S ~train.initial -S
    +train.initial={init:""}``): DVC merges a mapping given as a value into the one it replaces.
    """
    args: list[str] = []
    for k, v in preset_leaves(overrides).items():
        if k in PRESET_WHOLE_KEYS and isinstance(v, Mapping):
            args += ["-S", f"~{k}", "-S", f"+{k}={_hydra_value(v)}"]
        else:
            args += ["-S", f"{k}={_hydra_value(v)}"]
    return args


def net_init(params: Mapping[str, Any], net: str) -> str:
    """The warm-start model file of ``net`` (``initial``, ``boundary``): ``train.<net>.init``
    when set and not empty, else ``train.init``; ``""`` for none. The rule
    :meth:`bafusion.nets.train.TrainConfig.from_params` follows (an empty per-net ``init``
    inherits)."""
    train = params.get("train") or {}
    return str((train.get(net) or {}).get("init") or train.get("init") or "")


def batch_split_problem(batch_key: str, batch: int, nproc_key: str, nproc: Any,
                        processes: int | None = None) -> str | None:
    """Why the global batch ``train.batch`` cannot be split evenly over the training
    processes, in the one wording of the parameter check
    (:func:`bafusion.cli.params_check.check_params`) and the train job (before torchrun, and
    in each process after it).

    Parameters
    ----------
    batch_key, nproc_key : str
        The keys (or options) that set the batch and the process count, as the message names
        them (``train.initial.batch``, ``--nproc``).
    batch : int
        The global batch.
    nproc : int or str
        The process count as given (``auto`` too).
    processes : int, optional
        The processes there are (``auto`` resolved, torchrun's world size); default ``nproc``.

    Returns
    -------
    str or None
        ``"train.batch: 32 is not divisible by train.nproc: 3 (...)"``; None when it divides.
    """
    n = int(nproc) if processes is None else int(processes)
    if n <= 1 or int(batch) % n == 0:
        return None
    shown = "auto" if nproc in (None, 0) else nproc  # (resolve_nproc's auto)
    given = f"{shown}" if processes is None or str(shown) == str(processes) else f"{shown}, {processes} processes here"
    return (f"{batch_key}: {batch} is not divisible by {nproc_key}: {given} (the global batch is split evenly over "
            "the training processes)")


#: The COCO backgrounds ``data.source: web`` trains on when neither ``download.coco.count``
#: nor ``data.backgrounds`` says how many (the paper's number).
DEFAULT_COCO_COUNT = 700

#: The foregrounds of the alphamatting.com training set that ``data.source: web`` downloads
#: (GT01 to GT27, at either ``download.alphamatting.resolution``).
ALPHAMATTING_FOREGROUNDS = 27


def coco_download_count(params: Mapping[str, Any]) -> int:
    """The number of COCO backgrounds the ``download_coco`` rule keeps for ``data.source: web``
    (its ``--count``).

    Parameters
    ----------
    params : Mapping
        The whole parameters (``data`` and ``download.coco`` are read).

    Returns
    -------
    int
        ``download.coco.count``; if 0, the training backgrounds plus the held-out ones:
        ``data.backgrounds`` (0 = all: :data:`DEFAULT_COCO_COUNT`) + ``data.holdout_backgrounds``.
        ``data.backgrounds: 0`` so means, as for every source, all the backgrounds the source
        has but the held-out ones: the download's ``download.coco.count``, less the held-out,
        or 700 where ``download.coco.count`` is 0 too.
    """
    data = params.get("data") or {}
    coco = (params.get("download") or {}).get("coco") or {}
    return int(coco.get("count") or 0) or (
        (int(data.get("backgrounds") or 0) or DEFAULT_COCO_COUNT) + int(data.get("holdout_backgrounds") or 0))


def _yaml_node(value: Any, old: Any) -> Any:
    """``value`` as ``dvc exp run -S`` writes it into params.yaml (ruamel.yaml's defaults): lists
    and mappings in block style, ``[]`` and ``{}`` in flow style; a list or mapping it replaces
    is refilled in place, keeping its style (``initial: {init: ''}``) and the comment lines that
    followed it (``# - {name: lytro, ...}``). A string that PyYAML (Snakemake's reader) would
    not read back where ruamel.yaml writes it plain (YAML 1.1's ``no``, ``12:30``; ``g??-*`` in
    a flow list) is single-quoted."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    def node(v: Any, flow: bool) -> Any:
        if isinstance(v, str):
            return _pyyaml_safe(v, flow)
        if isinstance(v, (Mapping, list, tuple)):
            c = (CommentedMap((k, node(x, flow)) for k, x in v.items()) if isinstance(v, Mapping)
                 else CommentedSeq(node(x, flow) for x in v))
            if flow:
                c.fa.set_flow_style()
            return c
        return v

    refill = isinstance(old, CommentedSeq if isinstance(value, (list, tuple)) else CommentedMap) and value
    new = node(value, bool(refill and old.fa.flow_style()))
    if not refill:
        return new
    if isinstance(old, CommentedSeq):
        del old[:]
        old.extend(new)
    else:
        old.clear()
        old.update(new)
    return old


def _pyyaml_safe(text: str, flow: bool) -> Any:
    """``text``, or ``text`` single-quoted where ruamel.yaml writes it plain (in a flow
    collection with ``flow``) and PyYAML does not read that back as ``text``."""
    import io

    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedSeq
    from ruamel.yaml.scalarstring import SingleQuotedScalarString

    buf = io.StringIO()
    value: Any = text
    if flow:
        value = CommentedSeq([text])
        value.fa.set_flow_style()
    YAML().dump({"k": value}, buf)
    try:
        same = load_yaml(buf.getvalue()) == {"k": [text] if flow else text}
    except yaml.YAMLError:  # `g??-*` in a flow list: unreadable as written
        same = False
    return text if same else SingleQuotedScalarString(text)


def _keep_end_comments(parent: Any, key: str, old: Any) -> None:
    """The comment lines that followed a block list ``old`` (``# - {name: lytro, ...}``) are
    kept after the flow value that replaces it (``datasets: []``): ruamel.yaml writes a flow
    list's own end comments nowhere, so they move to the key's end-of-line comment."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq
    from ruamel.yaml.error import CommentMark
    from ruamel.yaml.tokens import CommentToken

    if not (isinstance(old, CommentedSeq) and isinstance(parent, CommentedMap) and old.ca.end):
        return
    lines = "".join(" " * c.column + c.value.lstrip(" ") for c in old.ca.end if isinstance(c, CommentToken))
    if not lines:
        return
    slot = parent.ca.items.setdefault(key, [None, None, None, None])
    eol = slot[2]
    if isinstance(eol, CommentToken):
        eol.value = eol.value if eol.value.endswith("\n") else eol.value + "\n"
        eol.value += lines
    else:
        slot[2] = CommentToken("\n" + lines, CommentMark(0), None)


def apply_overrides_to_file(path: str | os.PathLike[str], overrides: Mapping[str, Any],
                            check: Callable[[dict[str, Any], str], None] | None = None) -> None:
    """Write ``overrides`` into a params file in place, keeping its comments and order, its
    line ends (those of its first line: ``\r\n`` or ``\n``) and its UTF-8 BOM, if any.

    ``check(params, source)``, when given, sees the result (parsed) before the file is
    replaced, and raises to leave the file as it was (``bafusion preset --apply``: the schema
    and the rules across keys, so a file is never left holding what the pipeline would
    refuse). An empty file takes the overrides alone.

    Raises
    ------
    InputFileError
        The file is missing, not YAML, or not a mapping.
    UserError
        What ``check`` raises (the file is left as it was).
    """
    import io

    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap
    from ruamel.yaml.error import YAMLError

    from bafusion.atomic import atomic_file

    p = Path(path)
    if not p.is_file():
        raise InputFileError(p, "params file not found" if not p.exists() else "params file is not a file")
    ry = YAML()
    ry.preserve_quotes = True
    # ruamel.yaml's default indents and line width, as `dvc exp run -S` writes the file: one
    # written by either is left as it is by the other, but for the values each changes
    ry.default_flow_style = False
    # read first as every other reader does, for the same message: ruamel.yaml's first line of
    # a key given twice was "while constructing a mapping", not "duplicate key 'train' on line 170"
    _read_mapping(p, empty_ok=True)
    try:
        doc = ry.load(p.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, YAMLError) as e:
        raise InputFileError(p, f"invalid YAML: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    if doc is None:
        doc = CommentedMap()
    if not isinstance(doc, Mapping):
        raise InputFileError(p, "params file must hold a mapping at the top level")
    for key, value in preset_leaves(overrides).items():
        node = doc
        parts = key.split(".")
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], Mapping):
                node[part] = {}
            node = node[part]
        old = node.get(parts[-1])
        node[parts[-1]] = new = _yaml_node(value, old)
        if new is not old:
            _keep_end_comments(node, parts[-1], old)
    buf = io.StringIO()
    ry.dump(doc, buf)
    text = buf.getvalue()
    if check is not None:
        check(load_yaml(text) or {}, f"{p} with the overrides applied")
    # the file's conventions kept: its line ends (a CRLF file from Windows was rewritten with LF,
    # every line shown changed by git) and its UTF-8 BOM, if any
    raw = p.read_bytes()
    end = re.search(rb"\r?\n", raw)
    with atomic_file(p) as tmp:
        tmp.write_text(text, encoding="utf-8-sig" if raw.startswith(codecs.BOM_UTF8) else "utf-8",
                       newline=end.group().decode() if end else "\n")
