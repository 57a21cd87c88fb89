# Downloads for `data.source: web`: the alphamatting.com training set, COCO-2017 backgrounds
# (selected with pycocotools, ranked by sharpness) and the evaluation pairs. Each rule calls a
# `bafusion download-*` command; verified downloads are cached outside the work tree
# (download.cache, default $BAFUSION_CACHE or ~/.cache/bafusion/downloads), so a rerun, another
# checkout or a `dvc exp run --temp` workspace fetches nothing twice.
#
# `download` writes data/download/record.json in every configuration (file counts and content
# digests of the downloaded folders when data.source is web, just the source otherwise), so a
# DVC stage can track it without the builtin quick run ever touching the network.

# Config values reach the shell quoted ({x:q}, shlex.quote): a path with an apostrophe broke
# the command, and one with $(...) ran it. `--option={x:q}`, because {x:q} of an empty value
# is nothing at all (`--option ''` would lose its value).

# Compute nodes often have no internet: under a cluster executor these rules run on the
# submitting (login) node.
localrules:
    download_alphamatting,
    download_coco,
    download_eval,
    download,


DOWNLOAD = config.get("download", {}) or {}
DL_AM = DOWNLOAD.get("alphamatting", {}) or {}
DL_COCO = DOWNLOAD.get("coco", {}) or {}
DL_EVAL = DOWNLOAD.get("eval", {}) or {}
DL_WEB = (config.get("data", {}) or {}).get("source") == "web"
# Each rule's values once, passed as params and, whole, as `settings` (see settings_json): a change
# of any of them reruns the rule (and what follows). The network settings (download.cache,
# download.net.*) are not among them: they decide how the files are fetched, not which, and reach
# the commands through the params function download_net, which Snakemake does not compare.
AM_PARAMS = dict(
    resolution=DL_AM.get("resolution", "lowres"),
    base_url=DL_AM.get("base_url") or "http://www.alphamatting.com/datasets/zip/",
    from_dir=DL_AM.get("from_dir") or "",
    checksums=" ".join(f"--checksum {shlex.quote(f'{k}={v}')}" for k, v in (DL_AM.get("checksums") or {}).items()),
)
COCO_PARAMS = dict(
    n=coco_count(),
    oversample=DL_COCO.get("oversample", 2.0),
    seed=param("seed"),
    split=DL_COCO.get("split", "train2017"),
    min_side=DL_COCO.get("min_side", 256),
    gray="" if DL_COCO.get("colour_only", True) else "--allow-gray",
    categories=",".join(DL_COCO.get("categories") or []),
    exclude=",".join(DL_COCO.get("exclude_categories") or []),
    min_sharpness=DL_COCO.get("min_sharpness", 0.0),
    annotations=DL_COCO.get("annotations") or "",
    annotations_url=DL_COCO.get("annotations_url")
    or "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
    annotations_checksum=DL_COCO.get("annotations_checksum", "md5:f4bbac642086de4f52a3fdda2de5fa2c") or "",
    image_base_url=DL_COCO.get("image_base_url") or "",
    images_dir=DL_COCO.get("images_dir") or "",
)
EVAL_PARAMS = dict(
    base_url=DL_EVAL.get("base_url") or "",
    from_dir=DL_EVAL.get("from_dir") or "",
    sets=",".join(DL_EVAL.get("sets") or ["lytro", "classic"]),
)


rule download_alphamatting:
    output:
        directory("data/download/alphamatting"),
    params:
        **AM_PARAMS,
        settings=settings_json(AM_PARAMS),
        net=download_net,  # no rerun trigger: see download_net
    log:
        "logs/download/alphamatting.log",
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "bafusion download-alphamatting --out {output} --resolution {params.resolution}"
        " --base-url={params.base_url:q} --from-dir={params.from_dir:q} {params.checksums} {params.net}"
        " > {log} 2>&1"


rule download_coco:
    output:
        directory("data/download/coco"),
    params:
        **COCO_PARAMS,
        settings=settings_json(COCO_PARAMS),
        net=download_net,  # no rerun trigger: see download_net
    log:
        "logs/download/coco.log",
    threads: int((DOWNLOAD.get("net", {}) or {}).get("workers", 8))
    conda:
        CONDA_ENV
    shell:
        "bafusion download-coco --out {output} --count {params.n} --oversample {params.oversample}"
        " --seed {params.seed} --split={params.split:q} --min-side {params.min_side} {params.gray}"
        " --categories={params.categories:q} --exclude-categories={params.exclude:q}"
        " --min-sharpness {params.min_sharpness} --annotations={params.annotations:q}"
        " --annotations-url={params.annotations_url:q} --annotations-checksum={params.annotations_checksum:q}"
        " --image-base-url={params.image_base_url:q} --images-dir={params.images_dir:q} {params.net}"
        " > {log} 2>&1"


rule download_eval:
    output:
        directory("data/download/eval"),
    params:
        **EVAL_PARAMS,
        settings=settings_json(EVAL_PARAMS),
        net=download_net,  # no rerun trigger: see download_net
    log:
        "logs/download/eval.log",
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "bafusion download-eval --out {output} --base-url={params.base_url:q} --from-dir={params.from_dir:q}"
        " --sets={params.sets:q} {params.net} > {log} 2>&1"


rule download:
    input:
        **(
            {"alphamatting": rules.download_alphamatting.output[0], "backgrounds": rules.download_coco.output[0]}
            if DL_WEB
            else {}
        ),
    output:
        "data/download/record.json",
    params:
        source=(config.get("data", {}) or {}).get("source", "builtin"),
        folders=lambda wildcards, input: " ".join(f"{k}={v}" for k, v in input.items()),
    log:
        "logs/download/record.log",
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "bafusion download-record --source {params.source} --out {output} {params.folders} > {log} 2>&1"
