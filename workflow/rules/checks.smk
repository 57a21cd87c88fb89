# Included by the Snakefile after `rule all`. Refusals only: this file changes no value a rule
# passes (the config is read and rewritten in common.smk, a dep of every DVC stage).
from bafusion.cli.params_check import (check_devices, check_dvc_params, check_evaluate_inputs, check_init_files,
                                       pipeline_outputs, planned_rules, plans_jobs, runs_locally, snakemake_args,
                                       upstream_rules)

# What needs the rules' outputs, checked before any rule is planned as well.
# (After `rule all`: a run's targets are followed to the rules they need.)
try:
    # dvc.yaml's check stage (run first by `dvc repro` / `dvc exp run`): a key a stage lists that the
    # file lacks, which DVC refuses only after deleting that stage's outputs
    if os.environ.get("DVC_STAGE", "").rpartition(":")[2] == "check":
        check_dvc_params(config, _source)
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

# dvc.yaml's check stage (a dry run of `download`) ends here, its checks passed: Snakemake prints
# a dry run's job plan whatever --quiet says (9.x: `--quiet all` quiets all but a dry run) and
# writes .snakemake/iocache, and every `dvc repro` / `dvc exp run` printed that plan. The plan
# itself checks nothing more of params.yaml (its values are checked above and in common.smk,
# before any job is planned), so the stage prints only problems and leaves no .snakemake/.
# Only the stage's own command (a dry run of `download` alone): DVC_STAGE is `check` in any DVC
# stage of that name, also one of the user's own (another dvc.yaml), and a `snakemake -n evaluate`
# there printed nothing and exited 0, its plan (the one thing it was asked for) unshown.
if (os.environ.get("DVC_STAGE", "").rpartition(":")[2] == "check" and getattr(workflow, "is_main_process", True)
        and getattr(_args, "dryrun", False) and list(getattr(_args, "targets", None) or ()) == ["download"]):
    sys.exit(0)
