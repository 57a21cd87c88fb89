# Training: the initial net on all patches, the boundary net on the boundary subset only.
# Both read the top-level seed/patch/depth and the `train:` section of the config (params.yaml),
# passed whole as JSON so that `--config` overrides reach the trainer too.
# A killed job resumes from data/checkpoints/<net>/last.pt (not an output: it survives the
# deletion of incomplete outputs, and a checkpoint of other parameters is ignored).
import json
import os

TRAIN = config.get("train", {})


def all_cores():
    """--cores when given; under a cluster executor (no --cores) this machine's CPU count,
    which a profile's set-threads overrides."""
    try:
        return int(workflow.cores)
    except Exception:  # WorkflowError: no total number of cores defined
        return os.cpu_count() or 1


def train_config_json():
    keys = ("seed", "patch", "depth", "train")
    return json.dumps({k: config[k] for k in keys if k in config}, sort_keys=True)


def init_input(net):
    """train.init (or train.<net>.init): the warm-start model file, an input when set."""
    v = {**TRAIN, **(TRAIN.get(net) or {})}.get("init")
    return [v] if v else []


rule train_initial:
    input:
        patches=rules.patches.output.initial,
        init=init_input("initial"),
    output:
        model="data/models/initial.pt",
        meta="data/models/initial.json",
        metrics="metrics/train_initial.json",
        plots="metrics/plots/train_initial.csv",
    params:
        cfg=train_config_json(),
        checkpoints="data/checkpoints/initial",
    log:
        "logs/train_initial.log",
    threads: int(TRAIN.get("threads") or all_cores())  # 0: all of --cores
    shell:
        "bafusion train --net initial --patches {input.patches} --out {output.model}"
        " --params-json {params.cfg:q} --threads {threads} --checkpoints {params.checkpoints}"
        " --metrics {output.metrics} --plots {output.plots} > {log} 2>&1"


rule train_boundary:
    input:
        patches=rules.patches.output.boundary,
        init=init_input("boundary"),
    output:
        model="data/models/boundary.pt",
        meta="data/models/boundary.json",
        metrics="metrics/train_boundary.json",
        plots="metrics/plots/train_boundary.csv",
    params:
        cfg=train_config_json(),
        checkpoints="data/checkpoints/boundary",
    log:
        "logs/train_boundary.log",
    threads: int(TRAIN.get("threads") or all_cores())  # 0: all of --cores
    shell:
        "bafusion train --net boundary --patches {input.patches} --out {output.model}"
        " --params-json {params.cfg:q} --threads {threads} --checkpoints {params.checkpoints}"
        " --metrics {output.metrics} --plots {output.plots} > {log} 2>&1"
