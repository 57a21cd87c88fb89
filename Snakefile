# bafusion: boundary-aware multi-focus image fusion (Ma, Zhang, Liu, Liao, ICME 2019).
# Thin top level: params.yaml is the config (read and checked in workflow/rules/common.smk), the
# rules live in workflow/rules/, the refusals that need the rules in workflow/rules/checks.smk.
#   snakemake --cores 8 patches            # data pipeline up to the HDF5 patch sets
#   snakemake --cores 8 train_boundary     # ... and the nets
#   snakemake --cores 8 --profile workflow/profiles/local

configfile: "params.yaml"
report: "workflow/report/workflow.rst"

import os
import sys

# This checkout's code runs the pipeline: its src/ first on sys.path (this Snakemake process:
# the params checks, the MLflow parent run) and on the jobs' PYTHONPATH. A conda environment
# built by another checkout and shared through one --conda-prefix (Snakemake names it by the env
# files, not the checkout), a virtual environment shared by checkouts, or the project copy of a
# `dvc exp run --temp`/`--queue` (the environment's editable install is the workspace's) ran
# that other checkout's code, installed there editable, under this checkout's name, its params
# and its dvc.yaml deps (src/ files) -- unsaid. The environment still gives the dependencies.
# The runs' source commit follows the imported code (bafusion.tracking.source_tags): this
# checkout's commit (in a DVC experiment's copy, the git repository DVC makes there: HEAD is the
# experiment's baseline, its uncommitted code applied). Here, not in workflow/rules/common.smk,
# which every DVC stage depends on: where the code is found changes no output in the checkout's
# own environment, and in a shared one it makes the code that runs the code the stages' src/
# deps name. (update(), not a subscript: --lint takes a subscripted environment variable for
# one the user must set)
_CHECKOUT_SRC = os.path.join(workflow.basedir, "src")
if os.path.isdir(_CHECKOUT_SRC):
    if sys.path[:1] != [_CHECKOUT_SRC]:
        sys.path.insert(0, _CHECKOUT_SRC)
    if os.environ.get("PYTHONPATH", "").split(os.pathsep)[0] != _CHECKOUT_SRC:
        os.environ.update(PYTHONPATH=os.pathsep.join(p for p in (_CHECKOUT_SRC, os.environ.get("PYTHONPATH")) if p))
    # and names it: a job whose Python ignores PYTHONPATH (python -E, -I) or cannot see the checkout
    # (a container) imports the environment's bafusion; the job's bafusion command refuses that
    # code where it differs from this checkout's, warns where it cannot tell (bafusion.checkout)
    os.environ.update(BAFUSION_CHECKOUT_SRC=_CHECKOUT_SRC)


include: "workflow/rules/common.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/fuse.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    default_target: True
    input:
        rules.testset.output,
        rules.train_initial.output,
        rules.train_boundary.output,
        rules.fuse.output,
        rules.evaluate.output,


include: "workflow/rules/checks.smk"


# Every DVC stage runs `snakemake <target> --allowed-rules <its rules>`: DVC has run the
# upstream stages. Snakemake keeps to --allowed-rules only for the inputs it looks up by file
# name; an input given by rule reference (rules.x.output) schedules rule x past the
# restriction, and Snakemake's mtime check reruns it whenever DVC rewrote an upstream file with
# the same bytes (dvc repro after an io.py change retrained both nets inside the fuse stage).
# So under --allowed-rules (or an abbreviation argparse takes: --allowe...; not when a
# profile sets it) the references are forgotten: inputs are found by name.
if any(a.split("=", 1)[0].startswith("--allowe") and "--allowed-rules".startswith(a.split("=", 1)[0])
       for a in sys.argv):
    for _rule in workflow.rules:
        _rule.dependencies.clear()
