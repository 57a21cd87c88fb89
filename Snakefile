# bafusion: boundary-aware multi-focus image fusion (Ma, Zhang, Liu, Liao, ICME 2019).
# Thin top level: params.yaml is the config, the rules live in workflow/rules/.
#   snakemake --cores 8 patches            # data pipeline up to the HDF5 patch sets
#   snakemake --cores 8 train_boundary     # ... and the nets
#   snakemake --cores 8 --profile workflow/profiles/local

configfile: "params.yaml"
report: "workflow/report/workflow.rst"


# The config (params.yaml + any --config overrides) is checked against the package's schema
# before any rule is planned, so a bad value fails `snakemake -n` and every `dvc repro` stage
# with one line naming the key and its allowed values.
import os
import sys

from snakemake.utils import validate

from bafusion.cli.params_check import (check_devices, check_evaluate_inputs, check_init_files, check_params,
                                       pipeline_outputs, planned_rules, plans_jobs, runs_locally, snakemake_args,
                                       upstream_rules, warn_missing_keys)
from bafusion.errors import UserError
from bafusion.config import load_params, retype_config_overrides, yaml12_floats
from bafusion.schema import schema_path, validate_params

yaml12_floats(config)  # 5e-05 (as `dvc exp run -S` writes it) is a number, not PyYAML 1.1's string
_overrides = getattr(getattr(workflow, "config_settings", None), "config", None)
# --config "train={epochs: 2}": Snakemake reads the nested values as strings; read them as YAML
_config_args = getattr(getattr(workflow, "config_settings", None), "config_args", None)
retype_config_overrides(config, _config_args if isinstance(_config_args, (list, tuple)) else None)
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
    for _file in dict.fromkeys(["params.yaml", *(str(f) for f in _configfiles)]):
        load_params(_file, validate=False)
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


# What needs the rules' outputs, checked before any rule is planned as well.
# (After `rule all`: a run's targets are followed to the rules they need.)
try:
    _outputs = pipeline_outputs(workflow.rules)
    # snakemake's command line as Snakemake reads it (its profiles included): what follows only
    # matters for a run that plans jobs (not --unlock, --cleanup-metadata, --report, --list-*,
    # --touch; a job's own reading of this file counts as one: _args None)
    _args = snakemake_args(sys.argv) if getattr(workflow, "is_main_process", True) else None
    _plans_jobs = plans_jobs(_args)
    if _plans_jobs:
        # a warm-start file that is not there (Snakemake would keep an existing net and say
        # nothing) or that the pipeline writes (data/models/initial.pt: a cycle, and the run
        # deleted both trained nets); in the jobs too, as before
        check_init_files(config, _source, _outputs, stage=os.environ.get("DVC_STAGE"))
    # ... and only in the main process (not in each job's reading of this file)
    if getattr(workflow, "is_main_process", True) and _plans_jobs:
        # an evaluate dataset folder that is not there: refused by the evaluate job, after training
        # (a folder counts as made only by a rule the evaluate rule waits for: download_eval too
        # once a dataset reads from its folder, see evaluate.smk; not in a dvc stage, none runs it)
        _planned = planned_rules(getattr(_args, "targets", None) if _args is not None else None, workflow.rules,
                                 workflow.default_target)
        check_evaluate_inputs(config, _source, _outputs, upstream_rules(workflow.rules, "evaluate"), _planned,
                              stage=os.environ.get("DVC_STAGE"))
        # a device this machine lacks (fuse.device: cuda without CUDA), when the jobs run here with
        # this torch (not under a cluster executor or profile, nor in a conda or apptainer
        # environment): the fuse job refused it after training
        if runs_locally(_args):
            check_devices(config, _source)
except UserError as _e:
    _refuse(_e)


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
