# Objective evaluation (the paper's Table 1 and Fig. 4): every dataset of the `evaluate:`
# section (default: the embedded test set) fused with our method, with and without boundary
# refinement, and the baselines; all metrics per pair, Table 1 as Markdown, figures.
# The `evaluate:` and `fuse:` sections are passed whole as JSON so `--config` overrides reach
# the command. Runs after `fuse` (whose decision-map accuracy it complements) and re-fuses
# with the same nets and fusion parameters, so that both of our variants come from one run.
# Writes data/evaluation/<dataset>/{metrics.csv,means.csv,table1.md,figures/,fused/},
# data/evaluation/metrics.json, and for DVC metrics/evaluate.json (our means) and
# metrics/plots/evaluate.csv (every method's means).

EVALUATE = config.get("evaluate", {}) or {}


def _download_eval_input():
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
    for d in EVALUATE.get("datasets") or []:
        if isinstance(d, dict) and any(d.get(k) and written_by(resolve(str(d[k])), [("download_eval", str(folder), True)])
                                       for k in ("sources", "reference", "reference_metrics")):
            return [folder]
    return []


rule evaluate:
    input:
        fused=rules.fuse.output.fused,
        pairs=rules.testset.output[0],
        initial=rules.train_initial.output.model,
        boundary=rules.train_boundary.output.model,
        initial_meta=rules.train_initial.output.meta,
        boundary_meta=rules.train_boundary.output.meta,
        downloaded=_download_eval_input(),
    output:
        evaluation=report(directory("data/evaluation"), patterns=["{dataset}/{file}.csv", "{dataset}/figures/{file}.png"],
                          caption="../report/evaluation.rst", category="Evaluation (Table 1, Fig. 4, Fig. 5)",
                          labels={"dataset": "{dataset}", "file": "{file}"}),
        metrics="metrics/evaluate.json",
        plots="metrics/plots/evaluate.csv",
    params:
        cfg=section_json("evaluate"),
        fuse=section_json("fuse"),
        settings=settings_json({"evaluate": EVALUATE, "fuse": config.get("fuse", {}) or {}}),  # see settings_json
    log:
        "logs/evaluate.log",
    benchmark:
        "logs/benchmarks/evaluate.tsv"
    threads: int(EVALUATE.get("threads") or 2)  # capped by --cores
    conda:
        CONDA_ENV
    shell:
        "bafusion evaluate --initial {input.initial} --boundary {input.boundary}"
        " --params-json {params.cfg:q} --fuse-json {params.fuse:q}"
        " --out {output.evaluation} --report {output.metrics} --plots {output.plots}"
        " --threads {threads} > {log} 2>&1"
