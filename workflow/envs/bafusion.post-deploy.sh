#!/usr/bin/env bash
# Runs inside the new environment, from the workflow's working directory (the repository
# root): installs the bafusion package (its dependencies come from bafusion.yaml).
set -euo pipefail
pip install --no-deps --no-build-isolation .
