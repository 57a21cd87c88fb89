import json
import os
import shlex
import sys

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

# The software environment of every rule (used with `--sdm conda`; see the file).
CONDA_ENV = "../envs/bafusion.yaml"


def _targets():
    try:
        return " ".join(sorted(workflow.dag_settings.targets)) or "all"
    except Exception:
        return ""


onstart:
    # Create/migrate the MLflow database once, before parallel jobs log into it, and open
    # this invocation's parent run: the jobs' runs nest under it ($BAFUSION_PARENT_RUN).
    from bafusion import tracking

    if tracking.enabled():
        tracking.ensure_db()
        tracking.begin_invocation(config, _targets())


onsuccess:
    from bafusion import tracking

    tracking.end_invocation(True)


onerror:
    from bafusion import tracking

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


def all_cores():
    """--cores when given; under a cluster executor (no --cores) this machine's CPU count,
    which a profile's set-threads overrides."""
    try:
        return int(workflow.cores)
    except Exception:  # WorkflowError: no total number of cores defined
        return os.cpu_count() or 1


def train_config_json():
    """seed, patch, depth and the train section: what `bafusion train --params-json` reads."""
    keys = ("seed", "patch", "depth", "train")
    return json.dumps({k: config[k] for k in keys if k in config}, sort_keys=True)


def init_input(net):
    """train.<net>.init, else train.init (an empty per-net init inherits, as the trainer
    reads it): the warm-start model file, an input when set."""
    from bafusion.config import net_init

    v = net_init(config, net)
    return [v] if v else []


def download_net_args():
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


def coco_count():
    """download.coco.count, else the backgrounds prepare will use (train + held out), else 700."""
    data = config.get("data", {}) or {}
    coco = (config.get("download", {}) or {}).get("coco", {}) or {}
    return int(coco.get("count") or 0) or (
        int(data.get("backgrounds", 0) or 0) + int(data.get("holdout_backgrounds", 0) or 0)
    ) or 700
