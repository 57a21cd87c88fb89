# Training: the initial net on all patches, the boundary net on the boundary subset only.
# Both read the top-level seed/patch/depth and the `train:` section of the config (params.yaml),
# passed as JSON so that `--config` overrides reach the trainer too; each rule's JSON leaves out the
# other net's override (train.boundary for train_initial), so a change there reruns that net only;
# train.checkpoint_every reaches the trainer but reruns neither (train_params in common.smk).
# A killed job resumes from data/checkpoints/<net>/last.pt (not an output: it survives the
# deletion of incomplete outputs, and a checkpoint of other parameters is ignored). A finished
# run marks its checkpoint finished: a rerun of it (killed before its exit, or -R/--forcerun,
# dvc repro -f: its outputs deleted) writes its model again without training; delete
# data/checkpoints/<net> to train again. Progress: one line per epoch, copied from the log to
# the console (stderr). The log is written by `bafusion train --log` once it holds the checkpoint
# folder's lock: a second run of the rule refused by that lock (Snakemake >= 9.17 removes every
# lock of .snakemake/locks when any run ends, so it no longer refuses a duplicate) leaves the
# running job's log alone, and writes it again should Snakemake have removed it (`| tee {log}`
# emptied it, and the log of the job that went on to finish held only the refusal).

TRAIN = config.get("train", {})


rule train_initial:
    input:
        patches=rules.patches.output.initial,
        init=init_input("initial"),
    output:
        model="data/models/initial.pt",
        meta="data/models/initial.json",
        metrics="metrics/train_initial.json",
        plots=report("metrics/plots/train_initial.csv", caption="../report/training.rst", category="Training",
                     labels={"net": "initial", "file": "per-epoch curve"}),
    params:
        settings=train_config_json("initial", compared=True),  # what reruns it
        cfg=train_params("initial"),  # what the trainer reads: settings + train.checkpoint_every
        checkpoints="data/checkpoints/initial",
    log:
        "logs/train_initial.log",
    benchmark:
        "logs/benchmarks/train_initial.tsv"
    threads: int(TRAIN.get("threads") or all_cores())  # 0: all of --cores
    conda:
        CONDA_ENV
    shell:
        "bafusion train --net initial --patches {input.patches} --out {output.model}"
        " --params-json {params.cfg:q} --threads {threads} --checkpoints {params.checkpoints}"
        " --metrics {output.metrics} --plots {output.plots} --log {log} >&2"


rule train_boundary:
    input:
        patches=rules.patches.output.boundary,
        init=init_input("boundary"),
    output:
        model="data/models/boundary.pt",
        meta="data/models/boundary.json",
        metrics="metrics/train_boundary.json",
        plots=report("metrics/plots/train_boundary.csv", caption="../report/training.rst", category="Training",
                     labels={"net": "boundary", "file": "per-epoch curve"}),
    params:
        settings=train_config_json("boundary", compared=True),  # what reruns it
        cfg=train_params("boundary"),  # what the trainer reads: settings + train.checkpoint_every
        checkpoints="data/checkpoints/boundary",
    log:
        "logs/train_boundary.log",
    benchmark:
        "logs/benchmarks/train_boundary.tsv"
    threads: int(TRAIN.get("threads") or all_cores())  # 0: all of --cores
    conda:
        CONDA_ENV
    shell:
        "bafusion train --net boundary --patches {input.patches} --out {output.model}"
        " --params-json {params.cfg:q} --threads {threads} --checkpoints {params.checkpoints}"
        " --metrics {output.metrics} --plots {output.plots} --log {log} >&2"
