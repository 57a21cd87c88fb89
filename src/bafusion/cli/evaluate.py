"""``bafusion evaluate``: argument parsing only; Table 1 is built by :mod:`bafusion.evaluation.evaluate`."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bafusion.cli.common import (
    ModelOption,
    add_threads_argument,
    check_net_options,
    nets_from_args,
    nonempty_csv,
    nonempty_json,
    nonempty_path,
    nonempty_text,
    note_params_file_without,
    note_params_yaml_unread,
    set_torch_threads,
)
from bafusion.errors import InputFileError, UserError, json_loads
from bafusion.evaluation.evaluate import (
    DEFAULT_METHODS,
    DEFAULT_METRICS,
    NATIVE_METHODS,
    OURS,
    OURS_INITIAL,
    _config_dict,
    check_datasets,
    check_report_paths,
    parse_config,
    reference_folders,
    run_evaluation,
)
from bafusion.preflight import EVALUATE_PROVENANCE
from bafusion.schema import maximum

# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from bafusion.config import read_params, section
    from bafusion.workspace import project_root

    # --params-file's evaluate and fuse sections, under --params-json and --fuse-json; checked.
    note_params_yaml_unread("evaluate", "--params-file", args.params_file, args.params_json, args.fuse_json)
    if args.params_file:  # rule fields at its top level: read by nothing (refused as fuse's --params-file refuses them)
        from bafusion.config import _read_mapping
        from bafusion.fusion.params import refuse_top_level_fields

        whole = _read_mapping(args.params_file, empty_ok=True)
        refuse_top_level_fields(whole, str(args.params_file),
                                "--params-file reads the file's 'evaluate' and 'fuse' sections only: put them "
                                "under 'fuse:'", settings=False)  # device, threads, alpha: evaluate's own, below
        # and evaluate's own fields there (methods: [...] beside no evaluate section): dropped in silence too
        from bafusion.schema import load_schema

        own = load_schema()["properties"]["evaluate"]["properties"]
        stray = [str(k) for k in whole if k in own]
        if stray:
            where = ("and no 'evaluate' section" if "evaluate" not in whole
                     else "and an empty 'evaluate' section" if not whole["evaluate"] else "beside the 'evaluate' section")
            raise UserError(f"{args.params_file}: {', '.join(stray)} at the top level, {where}: --params-file reads "
                            "the file's 'evaluate' and 'fuse' sections only: put them under 'evaluate:'")
    params = read_params(args.params_file, [("--params-json", args.params_json, "evaluate"),
                                            ("--fuse-json", args.fuse_json, "fuse")], sections=("evaluate", "fuse"))
    note_params_file_without("evaluate", args.params_file, ("evaluate", "fuse"))
    section_ = dict(params["evaluate"])
    if args.threads is not None and not 1 <= args.threads <= maximum("evaluate.threads"):
        raise UserError(f"--threads {args.threads}: give a positive number of CPU threads, at most "
                        f"{maximum('evaluate.threads')} (omit it for the default)")
    if args.pattern and not args.dataset:
        raise UserError("--pattern works with --dataset NAME=SOURCES (the configured datasets take 'pattern' in "
                        "params.yaml)")
    if args.figure_pair and not args.dataset:
        raise UserError("--figure-pair works with --dataset NAME=SOURCES (the configured datasets take "
                        "'figure_pair' in params.yaml)")
    if args.reference_methods and not (args.dataset and split_dataset(args.dataset)[2]):
        raise UserError("--reference-methods works with --dataset NAME=SOURCES,REFERENCE: it chooses among the "
                        "method folders of REFERENCE (a configured dataset takes 'reference_methods' in params.yaml)")
    flagged = bool(args.methods or args.metrics or args.dataset)
    if args.methods:
        section_["methods"] = _option_list("--methods", args.methods)
        _check_methods(section_["methods"], args.dataset)
    if args.metrics:
        given = _option_list("--metrics", args.metrics)
        from bafusion.evaluation.metrics import METRICS

        section_["metrics"] = [q.upper() for q in given]  # as `bafusion metrics` reads them: qmi is QMI
        for i, q in enumerate(section_["metrics"]):
            if q in section_["metrics"][:i]:
                raise UserError(f"--metrics {args.metrics}: {given[i]!r} given twice: name each once")
        unknown = [g for g, q in zip(given, section_["metrics"]) if q not in METRICS]
        if unknown:
            raise UserError(f"--metrics {args.metrics}: {', '.join(map(repr, unknown))} "
                            f"{'is no metric' if len(unknown) == 1 else 'are no metrics'}: choose among "
                            f"{', '.join(METRICS)}")
    if args.dataset:
        name, src, ref = split_dataset(args.dataset)
        if not name or not src:
            raise UserError("--dataset: expected NAME=SOURCES[,REFERENCE]")
        _check_comma_split(args.dataset, name, src, ref)
        if name == EVALUATE_PROVENANCE:  # parse_config's refusal named evaluate.datasets[0], never written
            raise UserError(f"--dataset {args.dataset}: dataset name {name!r} is taken (metrics.json records under it "
                            "what made the output): name the dataset otherwise")
        _check_dataset_name(args.dataset, name)
        # typed on the command line: from the working folder, as every other path option (they
        # were taken from --root, the project root, so `--dataset mine=mine,REF` in a sub-folder
        # looked for <project>/REF); the parameters' dataset paths stay the project root's
        one: dict[str, Any] = {"name": name, "sources": _typed_path(src)}
        if ref:
            one["reference"] = _typed_path(ref)
        if args.pattern:
            one["pattern"] = args.pattern
        # A dataset of that name in the parameters keeps its figure settings (its figure_pair
        # was dropped: Fig. 4 of lytro-04, not the card's lytro-05); --figure-pair overrides.
        configured = next((d for d in section_.get("datasets") or [] if isinstance(d, dict) and d.get("name") == name),
                          None)
        for key in ("figure_pair", "crop"):
            if configured is not None and configured.get(key):
                one[key] = configured[key]
        one = {**one, **_json_dataset(args.params_json, name)}  # its settings (reference_methods, ...) win
        if args.reference_methods:  # over --params-json's
            one["reference_methods"] = _option_list("--reference-methods", args.reference_methods)
            computed = [m for m in one["reference_methods"] if m in (OURS, OURS_INITIAL, *NATIVE_METHODS)]
            if computed:
                raise UserError(f"--reference-methods: {', '.join(map(repr, computed))} computed here, not read from "
                                f"{ref}: name it in --methods")
            _check_reference_methods(args.reference_methods, one, ref)
        inherited = str(one.get("figure_pair") or "")
        if args.figure_pair:
            one["figure_pair"], inherited = args.figure_pair, ""
            one.pop("crop", None)  # the configured crop is a region of the configured pair
        section_["datasets"] = [one]
    # the project the stage runs in (in `dvc exp run --temp`, DVC's copy: its data/testset)
    root = Path(args.root) if args.root else project_root()
    one = section_["datasets"][0] if args.dataset else {}
    if one.get("reference") and not one.get("reference_methods") and not one.get("reference_metrics"):
        # (with a reference_metrics CSV from --params-json, its default stays: the six, then the CSV's)
        ref_dir = Path(one["reference"])  # absolute; `ref` as typed, for the messages
        if not ref_dir.is_dir():
            raise UserError(f"--dataset {args.dataset}: reference folder {ref_dir} not found (it holds one sub-folder "
                            "of fused images per method, <REF>/<METHOD>/<pair>.<ext>)")
        found = reference_folders(ref_dir)
        computed = [m for m in found if m in (OURS, OURS_INITIAL, *NATIVE_METHODS)]
        one["reference_methods"] = [m for m in found if m not in computed]
        if one["reference_methods"]:
            print(f"bafusion evaluate: dataset {one['name']!r}: reference methods {', '.join(one['reference_methods'])}: "
                  f"the sub-folders of {ref} (<REF>/<METHOD>/<pair>.<ext>; pass "
                  "--reference-methods M1,M2 to choose)"
                  + (f"; {', '.join(computed)} left out (computed here)" if computed else ""), file=sys.stderr)
        elif computed:  # e.g. an earlier evaluate's fused/ folder: Ours, Laplacian, ...
            raise UserError(f"--dataset {args.dataset}: the folders of {ref} ({', '.join(computed)}) "
                            "have the names of methods computed here, so none is read as a reference method: rename "
                            f"them (e.g. {computed[0]}-old) to compare them, one image per pair in each "
                            "(<REF>/<METHOD>/<pair>.<ext>)")
        else:
            raise UserError(f"--dataset {args.dataset}: {ref} holds no method folders: the reference "
                            "folder holds one sub-folder of fused images per method, <REF>/<METHOD>/<pair>.<ext>")
    cfg = parse_config(section_, root, source="command line" if flagged else "parameters")
    _check_net_options(args, cfg.methods)
    if args.dataset and inherited:
        cfg = _inherited_figure_pair(cfg, inherited, args.params_file)
    if args.dataset and args.figure_pair:
        _check_figure_pair(cfg, args.figure_pair)
    check_report_paths(cfg, args.out, args.report, args.plots)  # before any work: inputs are never overwritten
    if not args.dataset:  # the configured datasets, read outside the project: say how to name a folder
        for ds in cfg.datasets:
            if not ds.sources.is_dir():
                made = (" (the pipeline's `testset` step writes it in the project folder: run there)"
                        if ds.name == "testset" else "")
                raise InputFileError(ds.sources, f"sources folder of dataset {ds.name!r} not found{made}; to evaluate "
                                     "a folder of pairs <pair>-A.<ext>, <pair>-B.<ext>, pass --dataset "
                                     "NAME=PAIRS[,REFERENCE]")
    check_datasets(cfg)  # a missing reference image or peer value: before the nets are loaded
    threads = args.threads or section(params, "evaluate")["threads"]
    nets = fusion = None
    if OURS in cfg.methods or OURS_INITIAL in cfg.methods:
        import torch

        from bafusion.fusion.params import FusionParams

        if not threads:  # torch's, lowered to the free cores: two threads collapse when a core is busy
            from bafusion.threads import auto_threads

            threads = min(torch.get_num_threads(), auto_threads())
        set_torch_threads(int(threads))
        fusion = FusionParams.from_params(params, source="fuse parameters")
        device = args.device or section_.get("device") or section(params, "fuse")["device"]
        from bafusion.preflight import check_device

        check_device(device, "--device" if args.device else "evaluate.device" if section_.get("device") else "fuse.device")
        nets = nets_from_args(args, device, args.models)
    run_params = {"evaluate": _config_dict(cfg), "fuse": asdict(fusion) if fusion is not None else {}}
    if nets is not None:
        run_params["models"] = list(nets.sources)
    run_evaluation(cfg, args.out, nets, fusion, run_params, args.report, args.plots, checked=True,
                   progress=args.progress, model=args.models if nets is not None else None)
    print(f"evaluation written to {args.out}")
    return 0


# An example of each list option, for the empty-item error (it gave "e.g. GFF,CNN", reference
# methods, also for --metrics and --methods).
_LIST_EXAMPLES: dict[str, str] = {
    "--methods": f"{OURS},{NATIVE_METHODS[0]}",
    "--metrics": "QMI,QG",
    "--reference-methods": "GFF,CNN",
}


def _option_list(option: str, value: str) -> list[str]:
    """The items of a comma-separated list option, stripped. An empty item (``GFF,,X``, ``GFF,``)
    or one given twice is refused naming the option; the repeat was refused naming a setting the
    user never wrote (``evaluate.datasets[0].reference_methods``), the empty item dropped."""
    items = [m.strip() for m in value.split(",")]
    if "" in items:
        raise UserError(f"{option} {value}: empty item (item {items.index('') + 1}): give comma-separated names, "
                        f"e.g. {_LIST_EXAMPLES[option]}")
    for i, m in enumerate(items):
        if m in items[:i]:
            raise UserError(f"{option} {value}: {m!r} given twice: name each once")
    return items


def _check_dataset_name(given: str, name: str) -> None:
    """The NAME of ``--dataset NAME=...`` checked as the schema's ``evaluate.datasets.name``
    (no ``/``, not starting with ``.``), refused naming ``--dataset`` as given: parse_config
    refused it as ``command line: evaluate.datasets[0].name: ...``, a setting the user never wrote."""
    import re

    from bafusion.schema import _node

    node = _node("evaluate.datasets.name")
    if not re.search(str(node["pattern"]), name):
        raise UserError(f"--dataset {given}: {name!r} is not {node.get('x-rule', 'a dataset name')}: name the dataset "
                        "otherwise")


def split_dataset(value: str) -> tuple[str, str, str]:
    """Split ``--dataset NAME=SOURCES[,REFERENCE]``.

    Parameters
    ----------
    value : str
        The option's value: split at its first ``=`` and at the last comma after it, so that a
        SOURCES folder may be named with commas (``mine=a,b,REF``); a value ending in a comma gives
        no reference (``mine=a,b,``: the folder ``a,b``, no REFERENCE).

    Returns
    -------
    tuple of str
        NAME, SOURCES and REFERENCE ("" for none), as typed.
    """
    name, _, rest = value.partition("=")
    src, comma, ref = rest.rpartition(",")
    return (name, src, ref) if comma else (name, rest, "")


def _check_comma_split(given: str, name: str, src: str, ref: str) -> None:
    """Refuse ``--dataset`` where its split at the last comma (:func:`split_dataset`) names
    folders that do not exist but another reading of the commas does, saying how to write it:
    the folder ``a,b`` was read as SOURCES ``a`` and REFERENCE ``b``, refused as "reference
    folder b not found", with no way to name it."""
    if not ref or (Path(_typed_path(src)).is_dir() and Path(_typed_path(ref)).is_dir()):
        return
    whole = f"{src},{ref}"
    if Path(_typed_path(whole)).is_dir():
        raise UserError(f"--dataset {given}: {whole} is one folder, but --dataset splits SOURCES from REFERENCE at "
                        f"the last comma ({src!r}, {ref!r}): to evaluate {whole} without a reference folder, end "
                        f"the value with a comma, --dataset {name}={whole}, (with one: --dataset {name}={whole},REF)")
    first, _, rest = whole.partition(",")
    if "," in rest and Path(_typed_path(first)).is_dir() and Path(_typed_path(rest)).is_dir():
        raise UserError(f"--dataset {given}: --dataset splits SOURCES from REFERENCE at the last comma ({src!r}, "
                        f"{ref!r}), so a REFERENCE named with a comma ({rest}) cannot be given: give it through a "
                        "link (or a copy) named without one")


def _typed_path(path: str) -> str:
    """A path of ``--dataset``, absolute: taken from the working folder (``~`` is the home; from a
    DVC experiment's copy, a path leaving it is the workspace's, see
    :func:`bafusion.workspace.resolve`), so that the dataset's settings, resolved from ``--root``,
    keep it."""
    from bafusion.workspace import resolve

    return str(resolve(path, Path.cwd()))


def _check_reference_methods(value: str, one: dict[str, Any], ref: str) -> None:
    """A method of --reference-methods that is no folder of the reference folder (``one``'s
    ``reference``, absolute; ``ref`` as typed) is refused naming the option (unless --params-json
    gives the dataset a reference_metrics CSV: its methods may be there); a missing reference
    folder is left to the dataset check, which names it."""
    if one.get("reference_metrics"):
        return
    ref_dir = Path(one["reference"])
    if not ref_dir.is_dir():
        return
    found = reference_folders(ref_dir)
    unknown = [m for m in one["reference_methods"] if m not in found]
    if unknown:
        raise UserError(f"--reference-methods {value}: {', '.join(map(repr, unknown))} {'is not a method folder' if len(unknown) == 1 else 'are no method folders'} of "
                        f"{ref} (<REF>/<METHOD>/<pair>.<ext>); its method folders: "
                        f"{', '.join(found) or 'none'}")


def _check_net_options(args: argparse.Namespace, methods: tuple[str, ...] | list[str]) -> None:
    """--models, --initial and --boundary choose the nets of Ours and Ours-initial and were ignored
    in silence when neither method is evaluated. With --methods on the command line they are
    refused naming both; with the methods from the parameters (the pipeline's evaluate stage
    always passes --initial and --boundary) a note on stderr says they are not used. --device
    (which device runs the nets) was ignored in silence too: a note says it is not used, also
    with --methods (not refused: scripts pass --device cpu whatever the methods, and it chooses
    no files). Where the nets are used, ``--initial`` without ``--boundary`` (or with
    ``--models``) is refused here, before torch's import (:func:`check_net_options`), as fuse
    refuses it."""
    if OURS in methods or OURS_INITIAL in methods:
        check_net_options(args, args.models)
        return
    given = [o for o, v in (("--models", args.models), ("--initial", args.initial), ("--boundary", args.boundary))
             if v is not None]
    if given and args.methods:
        them = ", ".join(given)
        raise UserError(f"{them}: the nets of {OURS} and {OURS_INITIAL}, but --methods {args.methods} evaluates "
                        f"neither: add {OURS} to --methods, or leave {them} out")
    unused = ([] if args.methods else given) + ([f"--device {args.device}"] if args.device is not None else [])
    if unused:
        print(f"bafusion evaluate: note: {', '.join(unused)} not used: the methods evaluated ({', '.join(methods)}) "
              f"include neither {OURS} nor {OURS_INITIAL}", file=sys.stderr)


def _check_methods(methods: list[str], dataset: str | None) -> None:
    """--methods names methods computed here; one that is not (one's own method, with fused
    images of its own) is refused saying where such a method goes, not with the schema's bare
    'not one of'."""
    computed = (OURS_INITIAL, OURS, *NATIVE_METHODS)
    for m in methods:
        if m not in computed:
            ref = split_dataset(dataset)[2] if dataset else ""
            there = (f"; {Path(ref) / m} exists, so it is compared already: leave it out of --methods"
                     if ref and (Path(ref) / m).is_dir() else "")
            raise UserError(
                f"--methods: {m!r} is not a method computed here ({', '.join(computed)}): a method with fused "
                f"images of its own is a reference method, read from <REF>/{m}/<pair>.<ext>: with --dataset "
                "NAME=PAIRS,REF every sub-folder of REF is one; in a parameter file, list it in the dataset's "
                "reference_methods" + there)


def _json_dataset(params_json: str | None, name: str) -> dict[str, Any]:
    """The settings of dataset ``name`` in --params-json's ``datasets`` (empty when it has none);
    a ``datasets`` without ``name`` is refused: --dataset would drop it silently."""
    if not params_json:
        return {}
    given = json_loads(params_json)
    datasets = given.get("datasets") if isinstance(given, dict) else None
    if not datasets:
        return {}
    names = [str(d.get("name")) for d in datasets if isinstance(d, dict)]
    if name not in names:
        raise UserError(f"--dataset {name}: --params-json gives evaluate.datasets too ({', '.join(map(repr, names))}), "
                        "which --dataset would drop: name the dataset as one of them to take its settings (e.g. "
                        "reference_methods), or leave 'datasets' out of --params-json")
    return {k: v for k, v in datasets[names.index(name)].items() if k not in ("sources", "reference", "pattern")}


def _check_figure_pair(cfg, pair: str) -> None:
    """--figure-pair names one of the pairs --dataset (and --pattern) select: else refused
    naming both options and the pairs there are (the dataset check said only 'figure_pair ...
    is not one of its pairs')."""
    from bafusion.evaluation.evaluate import find_pairs

    ds = cfg.datasets[0]
    names = [p.name for p in find_pairs(ds)]
    if not names or pair in names:
        return
    among = f"the pairs of {ds.sources}" + (f" that match --pattern {ds.pattern!r}" if ds.pattern != "*" else "")
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    raise UserError(f"--figure-pair {pair!r} is not among {among}: {shown}"
                    + (" (widen --pattern or choose one of these)" if ds.pattern != "*" else ""))


def _inherited_figure_pair(cfg, pair: str, params_file: str | None):
    """``cfg`` (one dataset, from --dataset) with the figure_pair it took from the parameters'
    dataset of its name, unless --pattern (or the sources) leave that pair out: then the first
    pair, with a note on stderr (an explicit --figure-pair that is not a pair is refused)."""
    import dataclasses
    import sys

    from bafusion.evaluation.evaluate import find_pairs

    ds = cfg.datasets[0]
    names = [p.name for p in find_pairs(ds)]
    if pair in names or not names:
        return cfg
    print(f"bafusion evaluate: note: figure_pair {pair!r} of {params_file or 'the parameters'}'s dataset "
          f"{ds.name!r} is not among the pairs of {ds.sources}"
          f"{' that match --pattern ' + repr(ds.pattern) if ds.pattern != '*' else ''}: the figures show "
          f"the first, {names[0]!r} (pass --figure-pair to choose)", file=sys.stderr)
    return dataclasses.replace(cfg, datasets=(dataclasses.replace(ds, figure_pair="", crop=None),))


class _OneDatasetAction(argparse.Action):
    """``--dataset``: one per run. argparse kept the last of several, so ``--dataset X=...
    --dataset Y=...`` evaluated only Y (exit 0): a second one is refused naming both."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        first = getattr(namespace, self.dest, None)
        if first is not None:
            raise argparse.ArgumentError(
                None, f"{option_string} given twice ({first} and {values}): evaluate takes one --dataset a run; run it "
                      "once for each, or list them in the evaluate section's datasets (--params-file or --params-json)")
        setattr(namespace, self.dest, values)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bafusion evaluate``."""
    p = subparsers.add_parser(
        "evaluate",
        help="objective metrics of our fusion and the baselines per dataset: Table 1, Fig. 4",
        description="For each dataset of the 'evaluate' section (default: the embedded test set "
        "data/testset) fuse every pair with our method (with and without boundary refinement) "
        "and the native baselines, read the reference baselines' results when a reference root "
        "is configured, and write <out>/<dataset>/metrics.csv, table1.md, figures/ and "
        "<out>/metrics.json; log an MLflow run 'evaluate' (into the project's mlflow.db; outside a "
        "project only when MLFLOW_TRACKING_URI is set or BAFUSION_MLFLOW=1).",
    )
    p.add_argument("--params", "--params-file", dest="params_file", type=nonempty_path, default=None, metavar="FILE",
                   help="YAML file with 'evaluate' and 'fuse' sections (params.yaml)")
    p.add_argument("--params-json", type=nonempty_json, default=None,
                   help="JSON object overriding the 'evaluate' section")
    p.add_argument("--fuse-json", type=nonempty_json, default=None, help="JSON object overriding the 'fuse' section (fusion parameters)")
    p.add_argument("--dataset", type=nonempty_text, action=_OneDatasetAction, default=None,
                   metavar="NAME=SOURCES[,REFERENCE]",
                   help="evaluate only this dataset (one --dataset a run); SOURCES and REFERENCE relative to the "
                        "working folder, as --out; split at the last comma, so SOURCES may hold commas: a value "
                        "ending in a comma has no REFERENCE (NAME=a,b, evaluates the folder a,b)")
    p.add_argument("--pattern", type=nonempty_text, default=None, help="with --dataset: only pairs whose name matches this glob (e.g. 'g??-*')")
    p.add_argument("--figure-pair", type=nonempty_text, default=None, metavar="PAIR",
                   help="with --dataset: the pair of Fig. 4 and the difference maps (default: the figure_pair of "
                        "--params-file's dataset of that name, else the first pair)")
    p.add_argument("--reference-methods", type=nonempty_csv, default=None, metavar="M1,M2",
                   help="with --dataset NAME=SOURCES,REFERENCE: the published methods of Table 1, each a sub-folder "
                        "REFERENCE/<METHOD>/ (default: every sub-folder)")
    p.add_argument("--methods", type=nonempty_csv, default=None, help=f"comma-separated methods (default {','.join(DEFAULT_METHODS)})")
    p.add_argument("--metrics", type=nonempty_csv, default=None, help=f"comma-separated metrics, in any case as in bafusion metrics (default {','.join(DEFAULT_METRICS)})")
    p.add_argument("--model", "--models", dest="models", action=ModelOption, type=nonempty_path, default=None, metavar="DIR",
                   help="folder with initial.pt and boundary.pt (+ .json), or a shipped model by name (default: the "
                        "shipped model models/default, even inside a project that has data/models: give --models "
                        "data/models for the pipeline's nets, as the pipeline's evaluate stage does with --initial "
                        "data/models/initial.pt --boundary data/models/boundary.pt)")
    p.add_argument("--initial", type=nonempty_path, default=None, help="initial-net file (instead of --model)")
    p.add_argument("--boundary", type=nonempty_path, default=None, help="boundary-net file (instead of --model)")
    p.add_argument("-o", "--output", "--out", dest="out", type=nonempty_path, default="data/evaluation",
                   help="output folder (replaced whole; default data/evaluation)")
    p.add_argument("--report", type=nonempty_path, default=None,
                   help="also write the metrics JSON here, without its provenance (a DVC metrics file: numbers only)")
    p.add_argument("--plots", type=nonempty_path, default=None,
                   help="write every method's means as CSV here (for DVC plots)")
    p.add_argument("--root", type=nonempty_path, default=None, help="folder the relative paths of the parameters' datasets (params.yaml, --params-file, --params-json) "
                        "start from (default: the project root, the nearest folder at or above the working folder that "
                        "holds dvc.yaml or Snakefile, else the working folder); --dataset's are the working folder's")
    p.add_argument("--device", type=nonempty_text, default=None, help="auto, cpu, cuda, cuda:N or mps (default: the evaluate section's device, else the "
                        "fuse section's, else auto)")
    add_threads_argument(p, "torch CPU threads", "--params-file's evaluate.threads, else torch's, lowered to the "
                         "cores the load average leaves free and the whole CPUs of a cgroup CPU quota, at least 1")
    p.add_argument("--no-progress", "--quiet", dest="progress", action="store_const", const=False, default=None,
                   help="no progress bars (by default a fusion of a camera's 4 megapixels or more, from 3.5 MP, shows one on a terminal)")
    p.set_defaults(func=_cmd_evaluate)
