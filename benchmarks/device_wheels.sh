#!/usr/bin/env bash
# Wheels that the device machine's image lacks for `bafusion composite/patches/train`
# (benchmarks/device_train.py): jsonschema (parameter checks) and its dependencies, pypng
# (16-bit PNG). Everything else the image has (torch, numpy, scipy, h5py, scikit-image,
# pillow, tifffile, tqdm, pyyaml: /work/.library/device/KINDS.md). The image's Python is 3.12.
# Usage: bash benchmarks/device_wheels.sh [DIR]   (default .device/wheels)
set -euo pipefail
usage="Usage: bash benchmarks/device_wheels.sh [DIR]   (default .device/wheels)"
case "${1:-}" in
  -h|--help) echo "$usage"; exit 0 ;;
  -*) echo "device_wheels.sh: unknown option $1; $usage" >&2; exit 2 ;;
esac
dir=${1:-.device/wheels}
mkdir -p "$dir"
plat=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  plat+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${plat[@]}" -d "$dir" jsonschema jsonschema-specifications referencing rpds-py pypng
ls "$dir"
