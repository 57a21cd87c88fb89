#!/usr/bin/env bash
# The lowest versions pyproject.toml declares: a fresh venv gets each dependency (core and the
# test extra, the pipeline's tools with it) at the oldest release its bounds allow
# (.ci/lowest_constraints.py; torch stays at its pin), the rest resolved by pip as usual, and a
# fast subset of the tests runs in it: fusion, reading and writing images, the command line's
# start-up, the metrics, the MLflow tracking (test_tracking), the h5py patch sets (test_patches),
# Snakemake's reading of its command line (snakemake.cli.parse_args) and a dry run
# (snakemake -n -p), Snakemake's config validation and DVC's -S override writer
# (dvc.utils.hydra). A bound that fails here is too low: raise it in pyproject.toml.
# Usage: bash .ci/lowest.sh [pytest args...]   (LOWEST_VENV: the venv's folder, .venv-lowest)
set -euo pipefail
cd "$(dirname "$0")/.."
export DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true PIP_DISABLE_PIP_VERSION_CHECK=1
# the venv's own bafusion (this checkout, installed editable) and nothing from elsewhere: an
# inherited PYTHONPATH (e.g. another checkout's src) would be tested instead, in the tests'
# subprocesses too
unset PYTHONPATH PYTHONHOME PYTHONSTARTUP
export PYTHONNOUSERSITE=1
venv=${LOWEST_VENV:-.venv-lowest}
quiet() { grep -v "is ignored: it is neither a file nor a directory" >&2 || true; }
start=$SECONDS
rm -rf "$venv"
python3.11 -m venv "$venv"
"$venv/bin/python" .ci/lowest_constraints.py > "$venv/lowest.txt" 2> >(quiet)
echo "lowest versions: $(tr '\n' ' ' < "$venv/lowest.txt")"
"$venv/bin/pip" install -q -c "$venv/lowest.txt" -e '.[test]' 2> >(quiet)
# pip must have installed exactly the pins (a constraint it could not meet would have failed)
"$venv/bin/python" - "$venv/lowest.txt" <<'PY'
import sys
from importlib.metadata import version
from pip._vendor.packaging.version import Version
bad = []
for line in open(sys.argv[1], encoding="utf-8"):
    name, want = line.strip().split("==")
    if Version(version(name)).public != Version(want).public:
        bad.append(f"{name}: {version(name)} installed, {want} wanted")
sys.exit("\n".join(bad) or None)
PY
"$venv/bin/python" - "$PWD/src/bafusion" <<'PY'
import sys
from pathlib import Path
import bafusion
where = Path(bafusion.__file__).resolve().parent
sys.exit(None if where == Path(sys.argv[1]).resolve() else f"bafusion is imported from {where}, not {sys.argv[1]}")
PY
echo "lowest versions installed in $((SECONDS - start)) s"
"$venv/bin/python" -m pytest -q -p no:cacheprovider -m "not slow" \
  tests/test_fusion.py tests/test_io.py tests/test_cli_startup.py tests/test_metrics.py \
  tests/test_tracking.py tests/test_patches.py tests/test_workflow_quoting.py \
  tests/test_schema.py::test_runs_locally_reads_the_executor_and_the_profiles \
  tests/test_config.py::test_schema_defaults_never_reach_snakemakes_config \
  tests/test_config.py::test_every_preset_applies_through_dvcs_own_override_parser \
  tests/test_config.py::test_a_preset_replaces_the_per_net_overrides_whole \
  tests/test_config.py::test_dvc_exp_run_set_keeps_every_comment_of_params_yaml "$@"
echo "lowest versions: install and tests took $((SECONDS - start)) s"
