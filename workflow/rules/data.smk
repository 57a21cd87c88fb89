import json
import sys

# Data: prepare -> composite (sharded by foreground) -> patches; testset from held-out images.

DATA = config.get("data", {}) or {}
# composite.shards, at most the training foregrounds (the shards split them whole; more would
# run empty jobs): said in a note when fewer, once per snakemake call
from bafusion.data.composite import shard_jobs

# param() first: a composite.shards missing (no default) ends Snakemake with one line naming it
_SHARD_COUNT, _SHARD_NOTE = shard_jobs({**config, "composite": {**(config.get("composite") or {}),
                                                                "shards": param("composite.shards")}}, _source)
if _SHARD_NOTE and getattr(workflow, "is_main_process", True):
    print(f"note: {_SHARD_NOTE}", file=sys.stderr)
SHARDS = range(_SHARD_COUNT)
# composite.realistic (real-camera degradations) travels as one JSON argument; {} = the paper's pairs.
REALISTIC = json.dumps(config["composite"].get("realistic") or {}, sort_keys=True)
# data.source: web downloads (workflow/rules/download.smk) into folders that prepare then
# reads exactly like data.source: dir.
WEB = param("data.source") == "web"
PREP_FG = rules.download_alphamatting.output[0] if WEB else DATA.get("dir", {}).get("alphamatting", "")
PREP_BG = rules.download_coco.output[0] if WEB else DATA.get("dir", {}).get("backgrounds", "")

# Each rule's values once; the rule passes them as params and, whole, as `settings` (see
# settings_json: a change of any of them reruns the rule).
PREP_SOURCE = "dir" if WEB else param("data.source")
PREPARE = dict(
    source=PREP_SOURCE,
    foregrounds=DATA.get("foregrounds", 0),
    backgrounds=DATA.get("backgrounds", 0),
    holdout_fg=DATA.get("holdout_foregrounds", 0),
    holdout_bg=DATA.get("holdout_backgrounds", 0),
    # the source's own options only (prepare refuses the other source's)
    builtin_fg=csv(DATA.get("builtin", {}).get("foregrounds")) if PREP_SOURCE == "builtin" else "",
    builtin_bg=csv(DATA.get("builtin", {}).get("backgrounds")) if PREP_SOURCE == "builtin" else "",
    alphamatting=PREP_FG if PREP_SOURCE == "dir" else "",
    backgrounds_dir=PREP_BG if PREP_SOURCE == "dir" else "",
    scale=param("prepare.scale"),
    min_bg=param("prepare.min_background_side"),
    seed=param("seed"),
)
# composite_shard and testset: the pairs' settings
PAIRS = dict(
    sigma=" ".join(str(s) for s in param("composite.sigma")),
    fit=param("composite.fit"),
    realistic=REALISTIC,
    seed=param("seed"),
)
PATCHES = dict(
    patch=param("patch"),
    per_pair=param("patches.per_pair"),
    boundary_per_pair=param("patches.boundary_per_pair"),
    min_focused=param("patches.min_focused"),
    min_defocused=param("patches.min_defocused"),
    label_threshold=param("patches.label_threshold"),
    val_fraction=param("patches.val_fraction"),
    context=(config.get("patches", {}) or {}).get("context", 0),
    seed=param("seed"),
)


rule prepare:
    input:
        [PREP_FG, PREP_BG] if WEB else [],
    output:
        directory("data/prepared"),
    params:
        **PREPARE,
        settings=settings_json(PREPARE),
    log:
        "logs/prepare.log",
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "bafusion prepare --source={params.source:q} --seed {params.seed}"
        " --foregrounds {params.foregrounds} --backgrounds {params.backgrounds}"
        " --holdout-foregrounds {params.holdout_fg} --holdout-backgrounds {params.holdout_bg}"
        " --builtin-foregrounds={params.builtin_fg:q} --builtin-backgrounds={params.builtin_bg:q}"
        " --alphamatting={params.alphamatting:q} --backgrounds-dir={params.backgrounds_dir:q}"
        " --scale {params.scale} --min-background-side {params.min_bg} --out {output} > {log} 2>&1"


rule composite_shard:
    input:
        rules.prepare.output,
    output:
        "data/composite/shard-{shard}.h5",
    params:
        shards=len(SHARDS),
        **PAIRS,
        settings=settings_json({"shards": len(SHARDS), **PAIRS}),
    log:
        "logs/composite/shard-{shard}.log",
    benchmark:
        "logs/benchmarks/composite/shard-{shard}.tsv"
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "bafusion composite --prepared {input} --shard {wildcards.shard} --shards {params.shards}"
        " --sigma {params.sigma} --fit {params.fit} --realistic {params.realistic:q} --seed {params.seed}"
        " --out {output} > {log} 2>&1"


rule composite:
    input:
        expand(rules.composite_shard.output, shard=SHARDS),
    output:
        "data/composite/index.json",
    log:
        "logs/composite/index.log",
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "bafusion composite-index {input} --out {output} > {log} 2>&1"


rule testset:
    input:
        rules.prepare.output,
    output:
        directory("data/testset"),
    params:
        **PAIRS,
        settings=settings_json(PAIRS),
    log:
        "logs/testset.log",
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "bafusion testset --prepared {input} --sigma {params.sigma} --fit {params.fit}"
        " --realistic {params.realistic:q} --seed {params.seed}"
        " --out {output} > {log} 2>&1"


rule patches:
    input:
        index=rules.composite.output,
        shards=rules.composite.input,
    output:
        initial="data/patches/initial.h5",
        boundary="data/patches/boundary.h5",
        summary="data/patches/summary.json",
    params:
        **PATCHES,
        settings=settings_json(PATCHES),
        out=lambda wildcards, output: os.path.dirname(output.initial),
    log:
        "logs/patches.log",
    benchmark:
        "logs/benchmarks/patches.tsv"
    threads: 4  # deflating the patch chunks; the files are the same for any number
    conda:
        CONDA_ENV
    shell:
        "bafusion patches {input.shards} --patch {params.patch} --per-pair {params.per_pair}"
        " --boundary-per-pair {params.boundary_per_pair} --min-focused {params.min_focused}"
        " --min-defocused {params.min_defocused} --label-threshold {params.label_threshold}"
        " --val-fraction {params.val_fraction} --context {params.context} --seed {params.seed}"
        " --out {params.out} --summary {output.summary} --threads {threads} > {log} 2>&1"
