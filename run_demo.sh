#!/usr/bin/env bash
# The main job on its embedded default: the toy IBMD pipeline (train a teacher, distill it into a
# one-step generator, evaluate both against the exact conditional) in a local virtual environment.
#   ./run_demo.sh [WORKDIR] [--config.key=value ...]
set -euo pipefail
cd "$(dirname "$0")"
VENV="${IBMD_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[images]"
WORKDIR="${1:-runs/toy_cond}"
shift || true
exec "$VENV/bin/python" -m launch.main --config=configs/toy_cond.py --workdir="$WORKDIR" "$@"
