#!/usr/bin/env bash
# Fetches, on a machine with PyPI, the cp312 wheels that the GPU image lacks for the launcher and
# bench/bench64.py (grain, ml-collections and their missing needs; ~4.5 MB) into .whl/ (ignored by
# git), for the device tool's `carry`. On the GPU machine, before the command:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
# (bench/run_gpu.sh does this itself when .whl/ is there.)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  grain==0.2.18 array-record==0.8.6 portpicker==1.6.0 ml-collections==1.1.0
ls -la .whl
