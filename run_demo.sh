#!/usr/bin/env bash
# The main job on its embedded default, in a local virtual environment with the tested versions:
# the toy IBMD pipeline (train a teacher, distill it into a one-step generator, evaluate both
# against the exact conditional), ~2-3 minutes on 2 CPU cores.
#   ./run_demo.sh [--config=FILE] [WORKDIR] [--config.key=value ...]
# --config=configs/digits.py runs the digits pipeline instead (configs/digits.py:sr4,tiny: an I2SB
# teacher for 4x super-resolution of real MNIST digits, a one-step IBMD student, both judged by a
# digit classifier: <workdir>/eval/digits.md with the CA / FD table and a picture grid); it takes
# about 350 s of CPU time (README.md, "Expected results").
set -euo pipefail
cd "$(dirname "$0")"
CONFIG="configs/toy_cond.py"
if [[ "${1:-}" == --config=* ]]; then
  CONFIG="${1#--config=}"
  shift
fi
[[ "$CONFIG" == configs/digits.py ]] && CONFIG="configs/digits.py:sr4,tiny"
VENV="${IBMD_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[images,digits]"
case "$CONFIG" in
  configs/digits.py*) NAME=digits ;;
  *) NAME="$(basename "${CONFIG%%:*}" .py)" ;;
esac
WORKDIR="runs/$NAME"
if [[ $# -gt 0 && "$1" != --* ]]; then
  WORKDIR="$1"
  shift
fi
if [[ "$NAME" != digits ]]; then
  exec "$VENV/bin/python" -m launch.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
fi
"$VENV/bin/python" -m launch.main --config="$CONFIG" --workdir="$WORKDIR" \
  --config.mode=pipeline --config.eval.save_outputs=True "$@"
EXPECTED=()  # the demo's own settings: mark numbers outside its expected results (README.md)
[[ "$CONFIG" == "configs/digits.py:sr4,tiny" && $# -eq 0 ]] && \
  EXPECTED=(--expected=docs/results/digits_demo/expected.json)
exec "$VENV/bin/python" -m ibmd_jax.eval.digits --workdir="$WORKDIR" ${EXPECTED[@]+"${EXPECTED[@]}"}
