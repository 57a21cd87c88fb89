#!/usr/bin/env bash
# The lowest versions pyproject.toml declares: a fresh venv gets each dependency (core and the
# test extra, the pipeline's tools with it) at the oldest release its bounds allow
# (.ci/lowest_constraints.py; torch stays at its pin), the rest resolved by pip as usual, and a
# fast subset of the tests runs in it: fusion, reading and writing images, the command line's
# start-up, the metrics. A bound that fails here is too low: raise it in pyproject.toml.
# Usage: bash .ci/lowest.sh [pytest args...]   (LOWEST_VENV: the venv's folder, .venv-lowest)
set -euo pipefail
cd "$(dirname "$0")/.."
export DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true PIP_DISABLE_PIP_VERSION_CHECK=1
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
echo "lowest versions installed in $((SECONDS - start)) s"
"$venv/bin/python" -m pytest -q -p no:cacheprovider -m "not slow" \
  tests/test_fusion.py tests/test_io.py tests/test_cli_startup.py tests/test_metrics.py "$@"
echo "lowest versions: install and tests took $((SECONDS - start)) s"
