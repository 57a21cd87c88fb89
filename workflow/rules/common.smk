# Included first by the Snakefile. The config (params.yaml + any --config overrides) is read as
# the rules use it and checked against the package's schema before any rule is planned, so a bad
# value fails `snakemake -n` and every `dvc repro` stage with one line naming the key and its
# allowed values.
import atexit
import contextlib
import json
import os
import shlex
import sys

from snakemake.utils import validate

from bafusion.cli.params_check import check_params, warn_missing_keys
from bafusion.errors import UserError
from bafusion.config import load_params, retype_config_overrides, yaml12_floats
from bafusion.schema import schema_path, validate_params

_overrides = getattr(getattr(workflow, "config_settings", None), "config", None)
_config_args = getattr(getattr(workflow, "config_settings", None), "config_args", None)
# where the values came from, for the messages: params.yaml, any --configfile, any --config
_configfiles = getattr(getattr(workflow, "config_settings", None), "configfiles", None) or []
_source = " + ".join(["params.yaml", *(str(f) for f in _configfiles if str(f) != "params.yaml"),
                      *(["--config"] if _overrides else [])])


def _refuse(e):
    """Exit with one line naming the problem, not Snakemake's traceback of the Snakefile; under
    `dvc repro` / `dvc exp run`, DVC deleted this stage's outputs before calling us: say so."""
    from bafusion.workspace import dvc_removed_outputs_note

    note = dvc_removed_outputs_note()
    sys.exit(f"error: {e}" + (f"\n{note}" if note else ""))


try:
    # a key given twice: Snakemake's reader keeps the last silently (a second `train:` replaced
    # the whole section); the package's reader names it and its lines
    # (first: its aliases are capped; a params.yaml of nested aliases, which Snakemake's reader
    # keeps shared, kept yaml12_floats walking 10**9 values for many minutes)
    for _file in dict.fromkeys(["params.yaml", *(str(f) for f in _configfiles)]):
        load_params(_file, validate=False)
    yaml12_floats(config)  # 5e-05 (as `dvc exp run -S` writes it) is a number, not PyYAML 1.1's string
    # --config "train={epochs: 2}": Snakemake reads the nested values as strings; read them as YAML
    retype_config_overrides(config, _config_args if isinstance(_config_args, (list, tuple)) else None)
    validate_params(config, _source)  # also makes a whole float at an integer key an int (seed: 1.0)
    validate(config, schema_path())
    check_params(config, _source)  # rules across keys (fuse.low < fuse.high)
    # keys an older params.yaml lacks take the library defaults (x-default): one line, once per
    # snakemake call (not in each cluster job's reading of this file), and under `dvc repro`
    # only in the stages that use them
    if getattr(workflow, "is_main_process", True):
        warn_missing_keys(config, _source, stage=os.environ.get("DVC_STAGE"))
except UserError as _e:  # one line naming the key
    _refuse(_e)


os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# The pipeline's steps are tracked (into the project's mlflow.db) even where the working
# directory (--directory) holds no Snakefile; a command run by hand outside a project is not
# (bafusion.tracking.enabled). BAFUSION_MLFLOW=0 still turns it off.
os.environ.setdefault("BAFUSION_MLFLOW", "1")

# The software environment of every rule (used with `--sdm conda`; see the file).
CONDA_ENV = "../envs/bafusion.yaml"


def _targets():
    try:
        return " ".join(sorted(workflow.dag_settings.targets)) or "all"
    except Exception:
        return ""


def _runs_jobs():
    """Whether this snakemake call runs jobs: `--touch` (after `dvc pull`) only marks the
    outputs as made, and recorded a FINISHED parent run of no work in MLflow."""
    from bafusion.cli.params_check import plans_jobs, snakemake_args

    return plans_jobs(snakemake_args(sys.argv))


#: The project's run lock while this snakemake call executes jobs (onstart): released when the
#: process ends.
_RUN_LOCK = contextlib.ExitStack()


def _take_run_lock():
    """One snakemake run executing jobs in the project at a time. Snakemake's own lock does not
    hold: from 9.17 any run (a dry run too) deletes the whole .snakemake/locks at its end, and a
    second run then rebuilt data/prepared, data/composite and data/patches under a running
    training. Taken in onstart, which Snakemake calls before the first job and never for a dry
    run (-n), nor in the jobs it spawns (--no-hooks); --touch marks outputs only and takes none.
    The OS releases the lock when this process ends, killed too."""
    from bafusion.cli.params_check import run_lock

    folder = getattr(getattr(workflow, "persistence", None), "path", None) or ".snakemake"
    try:
        _RUN_LOCK.enter_context(run_lock(folder))
    except UserError as e:
        _refuse(e)
    atexit.register(_RUN_LOCK.close)


def _nolock():
    """`--nolock`: the user asked for no lock of the working directory (two runs on separate
    targets, knowingly), so the run lock is not taken either."""
    from bafusion.cli.params_check import snakemake_args

    return bool(getattr(snakemake_args(sys.argv), "nolock", False))


onstart:
    if _runs_jobs() and not _nolock():
        _take_run_lock()
    # Create/migrate the MLflow database once, before parallel jobs log into it, and open
    # this invocation's parent run: the jobs' runs nest under it ($BAFUSION_PARENT_RUN).
    from bafusion import tracking

    if tracking.enabled() and _runs_jobs():
        tracking.ensure_db()
        tracking.begin_invocation(config, _targets())
        # Ctrl-C or SIGTERM (a stopped dvc exp run): onerror ends the parent KILLED, not FAILED
        tracking.watch_stop_signals()


onsuccess:
    from bafusion import tracking

    if _runs_jobs():
        tracking.end_invocation(True)


onerror:
    from bafusion import tracking

    if _runs_jobs():
        tracking.end_invocation(False)


def csv(values):
    return ",".join(str(v) for v in values or [])


# Helpers of the rule files (kept here so that the rule files hold rules only).


def param(key):
    """The config value of a dotted key ("prepare.scale"); an absent key takes the schema's
    x-default, as the commands do; one without a default ends Snakemake with one line naming
    the key (it was a KeyError traceback of the rule file)."""
    from bafusion.schema import default

    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or node.get(part) is None:
            try:
                return default(key)
            except KeyError:
                source = globals().get("_source") or "params.yaml"
                sys.exit(f"error: {source}: {key}: missing (the key has no default)")
        node = node[part]
    return node


def settings_json(values):
    """Every config value a rule uses, as one sorted JSON param. Snakemake compares a rule's
    params as a set of values, names dropped: a value changed to one another param of the rule
    already had (holdout_backgrounds 1 -> 0 beside holdout_foregrounds 0) went unnoticed and
    the rule was not rerun. This string changes with any of them."""
    return json.dumps(values, sort_keys=True)


def section_json(name):
    """A top-level section of the config as sorted JSON, passed whole to a command so that
    `--config` overrides reach it too (fuse, evaluate)."""
    return json.dumps(config.get(name, {}) or {}, sort_keys=True)


#: Keys of the fuse and evaluate sections that leave a rule's outputs as they are (dvc.yaml's fuse and
#: evaluate stages leave them out too: tests/test_dvc_deps.py's UNLISTED): passed to the command, but no
#: rerun trigger (section_values(name, rule), section_param). fuse.threads and evaluate.threads: the same
#: images on any number; fuse.save_maps: not read by the pipeline. A change of fuse.threads reran fuse and
#: evaluate under `snakemake` (the DVC stages' --rerun-triggers mtime do not compare params).
UNCOMPARED = {
    "fuse": {"fuse": ("threads", "save_maps")},
    "evaluate": {"evaluate": ("threads",), "fuse": ("threads", "save_maps")},
}


def section_values(name, rule=None):
    """A top-level section of the config as a dict; with ``rule``, less that rule's UNCOMPARED keys."""
    values = dict(config.get(name, {}) or {})
    left_out = UNCOMPARED.get(rule or "", {}).get(name, ())
    return {k: v for k, v in values.items() if k not in left_out}


def section_param(name):
    """section_json(name) whole, as a params function taking `threads` (a "derived" param, which
    Snakemake leaves out of the params it compares, as train_params): the command gets every key,
    the plain `settings` param (the compared values) decides a rerun."""

    def params(wildcards, threads):
        return section_json(name)

    return params


def all_cores():
    """--cores when given; under a cluster executor (no --cores) this machine's CPU count,
    which a profile's set-threads overrides."""
    try:
        return int(workflow.cores)
    except Exception:  # WorkflowError: no total number of cores defined
        return os.cpu_count() or 1


TRAIN_NETS = ("initial", "boundary")  # bafusion.nets.train.NETS (not imported: it loads torch)


#: Train keys that leave the weights as they are (nets/train.py; dvc.yaml's training stages leave
#: them out too): passed to the trainer, but no rerun trigger (train_config_json(net, compared=True)).
TRAIN_UNCOMPARED = ("checkpoint_every",)


def train_config_json(net, compared=False):
    """seed, patch, depth and the train section, less the other net's override (train.boundary
    for the initial net): what `bafusion train --net <net> --params-json` reads (TrainConfig.from_params
    takes train.* and then train.<net> only). As the rule's params, a change of train.boundary.lr
    reruns train_boundary only, as the DVC stages list their keys; with the whole section both
    trainings reran after any change under train. ``compared``: also less TRAIN_UNCOMPARED (in
    train.* and train.<net>), the rule's plain param that decides a rerun."""
    keys = ("seed", "patch", "depth", "train")
    values = {k: config[k] for k in keys if k in config}
    train = values.get("train")
    if isinstance(train, dict):
        train = {k: v for k, v in train.items() if k == net or k not in TRAIN_NETS}
        if compared:
            train = {k: v for k, v in train.items() if k not in TRAIN_UNCOMPARED}
            if isinstance(train.get(net), dict):
                train[net] = {k: v for k, v in train[net].items() if k not in TRAIN_UNCOMPARED}
        values["train"] = train
    return json.dumps(values, sort_keys=True)


def train_params(net):
    """train_config_json(net) whole, as a params function of a training rule that takes
    `threads`: such a param is "derived" and Snakemake leaves it out of the params it compares
    (snakemake/snakemake#3154, as download_net), so a change of train.checkpoint_every alone (a
    mid-epoch save: the weights are the same) reran both trainings, and after them fuse and
    evaluate; the rule's plain param train_config_json(net, compared=True) decides a rerun.
    `threads` itself is not used."""

    def params(wildcards, threads):
        return train_config_json(net)

    return params


def init_input(net):
    """train.<net>.init, else train.init (an empty per-net init inherits, as the trainer
    reads it): the warm-start model file, an input when set; a leading ~ is the home folder, as
    the trainer and the params check read it."""
    from bafusion.config import net_init
    from bafusion.workspace import home_path

    v = net_init(config, net)
    return [home_path(v)] if v else []


def download_net_args():
    """download.cache and download.net.* as the options of the `bafusion download-*` commands."""
    download = config.get("download", {}) or {}
    net = download.get("net", {}) or {}
    cache = download.get("cache") or ""
    args = [
        f"--retries {int(net.get('retries', 4))}",
        f"--backoff {float(net.get('backoff', 1.0))}",
        f"--timeout {float(net.get('timeout', 60))}",
        f"--workers {int(net.get('workers', 8))}",
    ]
    if cache:
        args.append(f"--cache {shlex.quote(str(cache))}")  # a path with ' or $(...) stays one argument
    return " ".join(args)


def download_net(wildcards, threads):
    """download_net_args(), as a params function of the download rules that takes `threads`: such
    a param is "derived" (from the job's threads, resources, input or output) and Snakemake leaves it
    out of the params it records and compares (snakemake/snakemake#3154), so a change of the network
    settings is no rerun trigger. They decide how the files are fetched, not which (checksums where
    published; a COCO photo that fails even so is replaced by the next candidate, under any
    settings); as a plain param a longer timeout reran the downloads and, under data.source: web,
    everything after them (prepare ... evaluate). What decides the files (sources, counts,
    checksums, from_dir, ...) stays plain params. `threads` itself is not used."""
    return download_net_args()


def coco_count():
    """download.coco.count, else the backgrounds prepare will use (train + held out), else 700:
    bafusion.config.coco_download_count, which the parameter check uses too."""
    from bafusion.config import coco_download_count

    return coco_download_count(config)


def download_eval_input():
    """download_eval's folder, when an evaluate dataset reads from it (a `sources`, `reference`
    or `reference_metrics` inside data/download/eval), else nothing: the command reads the
    dataset folders from --params-json, so without this input nothing ordered download_eval
    before evaluate (`snakemake download_eval all` could evaluate first) and `snakemake all`
    was refused; now Snakemake runs download_eval first. No DVC stage runs download_eval: under
    `dvc repro` the folder has to be there (the Snakefile's check refuses it otherwise). Nor
    when download.eval has no source (base_url and from_dir empty, the defaults): download_eval
    would fail, and `-F evaluate` would replace a folder filled by hand; the folder is used as
    it is (the Snakefile's check refuses it when it is not there)."""
    from bafusion.cli.params_check import download_eval_has_source, written_by
    from bafusion.workspace import resolve

    if not download_eval_has_source(config):
        return []
    folder = rules.download_eval.output[0]
    for d in (config.get("evaluate", {}) or {}).get("datasets") or []:
        if isinstance(d, dict) and any(d.get(k) and written_by(resolve(str(d[k])), [("download_eval", str(folder), True)])
                                       for k in ("sources", "reference", "reference_metrics")):
            return [folder]
    return []


#: The listing of the evaluate datasets' files (evaluate_inputs_listing), evaluate's input.
EVALUATE_INPUTS = "data/evaluate-inputs.json"
#: The listing a dry run takes as evaluate's input when EVALUATE_INPUTS would change (evaluate_inputs_listing).
EVALUATE_INPUTS_DRY_RUN = ".snakemake/evaluate-inputs.dry-run.json"


def evaluate_inputs_listing(wildcards):
    """EVALUATE_INPUTS, an input of evaluate, rewritten here (when the DAG is built) whenever it
    would change: per configured dataset its folders as resolved and, for those no rule writes
    (`sources`, the method folders of `reference`, `reference_metrics`), the name, size and mtime
    of every file evaluate reads (read_by_evaluate: the pairs matching `pattern`, the method
    folders compared; the others by name where evaluate's note names them: every file of them
    reran it). The command reads the folders from --params-json, so Snakemake saw only the
    parameters, and Table 1 stayed as it was on a new or replaced image (one's own method's
    results added to `reference`, a pair fixed in `sources`).
    The files themselves were the inputs before: under --rerun-triggers mtime (the DVC stages'
    flag) a removed file, a file copied in with its old mtime (`cp -p`, `rsync -a`), a renamed
    one or another folder configured reran nothing (only newer mtimes count there), a file named
    with braces (p{x}.png: Snakemake takes {x} for a wildcard) stood for its folder, whose mtime
    no edit inside changes, and 30,000 files made a 3.8 MB input line. The listing sees every
    such change, under any rerun triggers; unchanged, it is not rewritten, so nothing reruns.
    Only a run's main process rewrites it (a job's own reading of the workflow, under a cluster
    executor, takes it as it is): a dry run (-n) or a command that runs nothing (--dag, --summary, ...)
    leaves it alone, writes a listing that differs to EVALUATE_INPUTS_DRY_RUN (with the mtime the
    run would give it) and takes that as the input, so it still shows evaluate to run. A dry run
    rewrote the listing: after a change undone before the run (files added, `snakemake -n`,
    removed again), the listing read as at the last run, but its newer mtime reran evaluate.
    Made, it takes the newest mtime or ctime of what it lists (the files, their folders): a project
    that evaluated before reruns only for what changed since, a file copied in with its old mtime
    (`cp -p`, which the mtime alone missed) included, and a chmod or chown since (one rerun more).
    A folder a rule writes (data/testset, download_eval's) is that rule's output, an input
    already; a folder not there is listed as missing (the checks, checks.smk, and the command name
    it). DVC cannot list the folders: dvc.yaml's templating interpolates no list into deps (see
    its evaluate stage)."""
    if not getattr(workflow, "is_main_process", True):
        # a job's own reading of the workflow (a cluster executor's job, --mode remote): the main
        # process listed the files when it planned the job and made the listing the job's input; a job
        # rewrote it (a file changed since, paths as this node mounts them) and scanned every file again
        return [EVALUATE_INPUTS]
    from bafusion.cli.params_check import pipeline_outputs, written_by
    from bafusion.workspace import resolve

    outputs = pipeline_outputs(workflow.rules)
    newest = [0]

    def stat(path):
        try:
            st = os.stat(path)
        except OSError:
            return None
        newest[0] = max(newest[0], st.st_mtime_ns, st.st_ctime_ns)  # ctime: `cp -p` keeps an old mtime
        return st

    def files(folder, keep=lambda name: True, methods=None, skipped=()):
        # {name: [size, mtime_ns]} of the files `keep` takes, dot-names out; an entry that is no file (a
        # broken link, a named pipe) as itself: evaluate refuses it, naming it. With `methods` (a
        # reference folder): those of each <METHOD>/ of `methods` (by its path, as evaluate reads it: also
        # a dot-named or a nested one), the other sub-folders by name only, [] for their files, but those of
        # `skipped` (a reference_metrics CSV's methods: evaluate reads neither their files nor their names)
        if stat(folder) is None:
            return None
        found = {}
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return None
        for e in entries:
            if e.name.startswith("."):
                continue
            if methods is not None:
                if e.is_dir() and e.name not in methods and e.name not in skipped:
                    found[f"{e.name}/"] = []  # evaluate reads only its name (its note on folders not compared)
            elif not e.is_dir() and keep(e.name):
                st = stat(e.path)
                if st is None:  # a broken link: its own size and mtime
                    with contextlib.suppress(OSError):
                        st = os.lstat(e.path)
                if st is not None:
                    found[e.name] = [st.st_size, st.st_mtime_ns]
        for m in sorted(methods or ()):
            for name, v in (files(os.path.join(folder, m), keep) or {}).items():
                found[f"{m}/{name}"] = v
        return found

    def noted(d):  # evaluate names the reference folders it does not compare (_unlisted_reference_folders)
        from bafusion.evaluation.evaluate import REFERENCE_METHODS

        chosen = tuple(str(m) for m in d.get("reference_methods") or ())
        return not chosen or chosen[:len(REFERENCE_METHODS)] == REFERENCE_METHODS

    def read_by_evaluate(d):
        """(keep a source file, keep a reference file) and, compared(d), the reference methods whose
        files are read: what evaluate reads (bafusion.evaluation.evaluate.find_pairs and
        read_method_results): the files of the pairs matching `pattern` (as find_pairs matches it,
        fnmatch.fnmatchcase: case-sensitive; <pair> is the stem's part before its last '-', a superset
        of find_pairs' <pair>-<letter>), every file with an index.json (the test set's names); the
        method folders of `reference_methods`, by default the paper's six, less a reference_metrics
        CSV's methods (evaluate takes them from the CSV, never from a folder: csv_methods); the
        other folders by name only, and only with the default methods or chosen ones starting with
        the six (evaluate's note names them)."""
        import fnmatch

        pattern = str(d.get("pattern") or "*")
        src = resolve(str(d["sources"])) if d.get("sources") else None
        # the test set's folder (the testset rule's output) always has an index.json, there yet or
        # not; before the testset rule had made it, the reference files were filtered by `pattern`,
        # after it they were not, and evaluate ran once more for a changed listing (no "rule <name>"
        # and a colon on one line here: `snakemake --lint` takes it for a rule beside functions)
        testset = src is not None and os.path.realpath(src) == os.path.realpath(str(rules.testset.output[0]))
        if pattern == "*" or testset or (src is not None and os.path.isfile(os.path.join(src, "index.json"))):
            keep_src = keep_ref = lambda name: True
        else:
            def stem(name):
                return name.rsplit(".", 1)[0]

            def keep_src(name):  # <pair>-A.<ext>, <pair>-truth.<ext>, ...; index.json (read when there)
                return name == "index.json" or ("-" in stem(name) and fnmatch.fnmatchcase(stem(name).rsplit("-", 1)[0], pattern))

            def keep_ref(name):  # <pair>.<ext>
                return fnmatch.fnmatchcase(stem(name), pattern)
        return keep_src, keep_ref

    def csv_methods(d):  # a reference_metrics CSV's methods: evaluate reads them from it, never from a folder
        if not d.get("reference_metrics"):
            return set()
        path = resolve(str(d["reference_metrics"]))
        if written_by(path, outputs):
            # a rule's CSV (download_eval's): none, as before that rule made it; its methods left out once
            # it was there changed the listing, and evaluate ran once more (their folders' files: a superset)
            return set()
        import csv as csv_module  # (csv: the helper above)

        from bafusion.evaluation.evaluate import read_peer_metrics

        try:
            return set(read_peer_metrics(path).methods)
        except (UserError, OSError, ValueError, csv_module.Error):  # not there, unreadable: evaluate refuses it, naming it
            return set()

    def compared(d):  # the method folders whose files evaluate reads (<REF>/<METHOD>/)
        if d.get("reference_methods"):
            return {str(m) for m in d["reference_methods"]} - csv_methods(d)
        from bafusion.evaluation.evaluate import REFERENCE_METHODS  # (1 s to import: only with a reference)

        return set(REFERENCE_METHODS) - csv_methods(d)  # the CSV's other methods: read from it too

    listing = []
    for d in (config.get("evaluate", {}) or {}).get("datasets") or []:
        if not isinstance(d, dict):
            continue
        entry = {"name": str(d.get("name"))}
        for key in ("sources", "reference", "reference_metrics"):
            if not d.get(key):
                continue
            path = resolve(str(d[key]))
            writer = written_by(path, outputs)
            item = {"path": str(path)}
            if writer:
                item["written_by"] = writer[0]
            elif key == "reference_metrics":
                st = stat(path)
                item["file"] = None if st is None else [st.st_size, st.st_mtime_ns]
            else:
                keep_src, keep_ref = read_by_evaluate(d)
                if key == "reference":  # <REF>/<METHOD>/<pair>.<ext>
                    found = files(path, keep_ref, compared(d), csv_methods(d))
                    if found is not None and not noted(d):  # the other folders: not read at all
                        found = {k: v for k, v in found.items() if not k.endswith("/")}
                    item["files"] = found
                else:
                    item["files"] = files(path, keep_src)
            entry[key] = item
        listing.append(entry)
    text = json.dumps({"datasets": listing}, indent=1, sort_keys=True) + "\n"
    try:
        with open(EVALUATE_INPUTS, encoding="utf-8") as fh:
            old = fh.read()
    except OSError:
        old = None
    if old == text:
        return [EVALUATE_INPUTS]
    # only a run rewrites the listing: a dry run (-n; also --dag, --summary, ..., which execute nothing)
    # writes its own, with the mtime the listing would get, and takes it as the input
    running = getattr(workflow, "executor_plugin", None) is not None and not workflow.dryrun
    path = EVALUATE_INPUTS if running else EVALUATE_INPUTS_DRY_RUN
    os.makedirs(os.path.dirname(path), exist_ok=True)
    import secrets  # a name of its own (pids repeat across the nodes of a shared disk), removed on failure;

    # made as a plain open() makes a file, the umask's mode (mkstemp's is 600: the other users of a
    # shared project could not read the listing)
    tmp = os.path.join(os.path.dirname(path), f".evaluate-inputs.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        if old is None:  # made: as old as what it lists (see the docstring)
            os.utime(tmp, ns=(newest[0], newest[0]))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return [path]
