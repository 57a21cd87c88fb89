# Fusion of the embedded test pairs with the trained nets (paper section 2).
# Reads the `fuse:` section of the config (params.yaml), passed whole as JSON so that
# `--config` overrides reach the fuser too. Writes data/fused/<name>.png, the maps and
# figures into data/fused/maps/, and the decision-map accuracy vs the true maps per pair
# into data/fused/accuracy.json, and their means into metrics/fuse.json (git-tracked, for DVC).

FUSE = config.get("fuse", {})


rule fuse:
    input:
        pairs=rules.testset.output[0],
        initial=rules.train_initial.output.model,
        boundary=rules.train_boundary.output.model,
        initial_meta=rules.train_initial.output.meta,
        boundary_meta=rules.train_boundary.output.meta,
    output:
        fused=report(directory("data/fused"), patterns=["maps/{pair}-fig3.png"], caption="../report/fused.rst",
                     category="Fusion of the test pairs (Fig. 3)", labels={"pair": "{pair}"}),
        metrics="metrics/fuse.json",
    params:
        cfg=section_param("fuse"),  # every fuse key, for the command; no rerun trigger (section_param)
        settings=settings_json(section_values("fuse", rule="fuse")),  # what reruns it: not fuse.threads, save_maps
        # --threads of a number; none for 0: the command then takes torch's threads, which Snakemake
        # sets to the job's (OMP_NUM_THREADS: all of --cores), lowered to the cores the load leaves
        # free (given as --threads, every core of a DVC stage's --cores all ran whatever the load).
        # A function of threads: a derived param, no rerun trigger (as common.smk's download_net)
        threads=lambda wildcards, threads: f" --threads {threads}" if FUSE.get("threads") else "",
    log:
        "logs/fuse.log",
    benchmark:
        "logs/benchmarks/fuse.tsv"
    threads: int(FUSE.get("threads") or all_cores())  # 0: all of --cores, of which the command takes the free ones; capped by --cores
    conda:
        CONDA_ENV
    shell:
        "bafusion fuse-set --pairs {input.pairs} --initial {input.initial} --boundary {input.boundary}"
        " --out {output.fused} --report {output.metrics} --params-json {params.cfg:q}"
        "{params.threads} > {log} 2>&1"
