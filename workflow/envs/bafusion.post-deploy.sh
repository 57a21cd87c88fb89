#!/usr/bin/env bash
# Runs inside the new environment, from the workflow's working directory (the repository
# root): installs the bafusion package (its dependencies come from bafusion.yaml) in editable
# mode, so that the rules run the work tree's code: Snakemake builds the environment once (its
# hash covers this script and bafusion.yaml, not src/), and a copy installed here ignored
# every later edit of src/.
set -euo pipefail
pip install --no-deps --no-build-isolation -e .
