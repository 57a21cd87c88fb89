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


rule evaluate:
    input:
        fused=rules.fuse.output.fused,
        pairs=rules.testset.output[0],
        initial=rules.train_initial.output.model,
        boundary=rules.train_boundary.output.model,
        initial_meta=rules.train_initial.output.meta,
        boundary_meta=rules.train_boundary.output.meta,
        downloaded=download_eval_input(),
        datasets=evaluate_inputs_listing,  # the configured datasets' files listed: an image added, removed or replaced reruns it
    output:
        evaluation=report(directory("data/evaluation"), patterns=["{dataset}/{file}.csv", "{dataset}/figures/{file}.png"],
                          caption="../report/evaluation.rst", category="Evaluation (Table 1, Fig. 4, Fig. 5)",
                          labels={"dataset": "{dataset}", "file": "{file}"}),
        metrics="metrics/evaluate.json",
        plots="metrics/plots/evaluate.csv",
    params:
        cfg=section_param("evaluate"),  # the sections whole, for the command; no rerun trigger (section_param)
        fuse=section_param("fuse"),
        # what reruns it (see settings_json): not the keys that leave its outputs as they are (UNCOMPARED)
        settings=settings_json({s: section_values(s, rule="evaluate") for s in ("evaluate", "fuse")}),
        # --threads of a number; none for 0: the command lowers the job's threads to the free cores (see fuse.smk)
        threads=lambda wildcards, threads: f" --threads {threads}" if EVALUATE.get("threads") else "",
    log:
        "logs/evaluate.log",
    benchmark:
        "logs/benchmarks/evaluate.tsv"
    threads: int(EVALUATE.get("threads") or all_cores())  # 0: all of --cores, of which the command takes the free ones; capped by --cores
    conda:
        CONDA_ENV
    shell:
        "bafusion evaluate --initial {input.initial} --boundary {input.boundary}"
        " --params-json {params.cfg:q} --fuse-json {params.fuse:q}"
        " --out {output.evaluation} --report {output.metrics} --plots {output.plots}"
        "{params.threads} > {log} 2>&1"
