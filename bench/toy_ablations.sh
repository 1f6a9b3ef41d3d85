#!/usr/bin/env bash
# The toy IBMD measurements of docs/toy_results.md, with the launcher and its sweep tool.
#   bench/toy_ablations.sh [ROOT]      (default runs/toy_ablations; ~3 h on 2 CPU cores)
# 1. the default conditional pipeline (teacher -> 1-step student -> eval), 2. a 2-step student from
# the same teacher, 3. the unconditional toy, 4. ablations from the same teacher: critic:generator
# ratio 10:1 and 1:1 against the default 5:1 (the paper's), noise input on/off, distilling the
# closed-form teacher instead of the trained one, zero-initialised z, the teacher's 1/c_out²
# weighting, and the DMD2-style 2-step variant. Each run writes <run>/eval/report.md and
# metrics.json.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="${1:-runs/toy_ablations}"
PY="${PYTHON:-python}"
MAIN=("$PY" -m launch.main --config=configs/toy_cond.py)
"${MAIN[@]}" --workdir="$ROOT/default"
T="--config.teacher.checkpoint=$ROOT/default/teacher"
E='--config.eval.teachers=("exact",)'  # the network teacher's rows: default run (same seed, same set)
"${MAIN[@]}" --workdir="$ROOT/2step" "$T" "$E" --config.distill.n_steps=2
"$PY" -m launch.main --config=configs/toy_uncond.py --workdir="$ROOT/uncond"
"${MAIN[@]}" --workdir="$ROOT/ratio_10to1" "$T" "$E" --config.distill.critic_steps=10
"${MAIN[@]}" --workdir="$ROOT/ratio_1to1" "$T" "$E" --config.distill.critic_steps=1
"${MAIN[@]}" --workdir="$ROOT/no_noise" "$T" "$E" --config.distill.z_channels=0
"${MAIN[@]}" --workdir="$ROOT/exact_teacher" "$T" "$E" --config.distill.teacher=exact
"${MAIN[@]}" --workdir="$ROOT/zero_init_z" "$T" "$E" --config.distill.z_init_scale=0
"${MAIN[@]}" --workdir="$ROOT/cout_weighting" "$T" "$E" --config.bridge.weighting=default
"${MAIN[@]}" --workdir="$ROOT/dmd2_2step" "$T" "$E" --config.distill.n_steps=2 \
    --config.distill.multistep=dmd2
grep -H "IBMD student" "$ROOT"/*/eval/report.md "$ROOT"/*/*/eval/report.md || true
