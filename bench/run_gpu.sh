#!/usr/bin/env bash
# The GPU benchmark of issue 9, in parts that each end inside the device tool's 10-minute limit.
#
#   bash bench/run_gpu.sh PART [PART ...]      PART: peak e2h i2sb sampling sharded | all
#
# On the device machine (the device tool's `run`, repository root, $OUT set), one call per line:
#   bash bench/run_gpu.sh peak e2h     # ~9 min: matmul/copy ceilings, Edges->Handbags 64² rounds
#   bash bench/run_gpu.sh i2sb         # ~10 min: I2SB 256² compile cold/warm, rounds at B=16/4/8
#   bash bench/run_gpu.sh sampling     # ~8 min: teacher NFE 1..1000 vs student 1/2/4 steps
#   bash bench/run_gpu.sh sharded      # ~5 min: full-size layouts, sharded round on 8 CPU devices
#   bash bench/run_gpu.sh one          # <= 9 min, issue 19's single call: matmul peak, the E->H 64²
#                                      # round (B=64), the I2SB 256² round (B=8, remat full) with
#                                      # its cold compile time, teacher vs student sampling (teacher
#                                      # NFE 1, 10, 50 measured, 1000 extrapolated), each under its
#                                      # own timeout (ONE_* below) so that the call ends in time
#   bash bench/run_gpu.sh bench64      # the real-image benchmark at 64² (docs/results.md), 510 s
#                                      # of its stages per call (call again to continue: its state
#                                      # stays in $BENCH64_ROOT); needs .whl/ (bash
#                                      # bench/gpu_wheels.sh here) carried; $OUT gets the report,
#                                      # stages.json and a tarball of the evaluations
# Each part leaves $OUT/<part>.json (every result, merged), $OUT/<part>.md (the tables) and
# $OUT/<part>.log: three files per part, within the tool's 8 files per call.
#
# The scripts need jax, flax, optax, numpy (and orbax/absl for 'sharded', through ibmd_jax.sharding):
# all in the device image, so no wheels travel. BENCH_TINY=1 swaps in the CPU-sized 'micro' UNet
# and tiny sizes, so that every flag here can be checked on a CPU in a few minutes:
#   BENCH_TINY=1 OUT=/tmp/bench_dry bash bench/run_gpu.sh all
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
WORK=${BENCH_WORK:-/tmp/ibmd_bench_work}
CACHE=${BENCH_CACHE:-/tmp/ibmd_jax_cache}
TINY=${BENCH_TINY:-0}

if [[ "$TINY" == 1 ]]; then
  I2SB=micro; E2H=micro; DT=f32; STEPS=2; WARM=1
  E2H_B=1,2; E2H_B2=2; I2SB_B=2; I2SB_B2=1; I2SB_B3=2
  NFE_I2SB=1,2,4; NFE_E2H=1,3; S_B_I2SB=2; S_B_E2H=2
  SH_I2SB="--preset micro"; SH_E2H="--preset micro --mesh 8x1"; SH_B=8
  PEAK_SIZES=256; PART_TIMEOUT=1800; B1=0; B2=0; B3=0
  ONE_E2H_B=2; ONE_I2SB_B=2; ONE_NFE=1,4,16; ONE_T=(600 600 600 600 600 600)
else
  I2SB=i2sb_imagenet256; E2H=ddbm_e2h64; DT=bf16; STEPS=5; WARM=2
  E2H_B=32,64,128; E2H_B2=64,128; I2SB_B=16; I2SB_B2=4; I2SB_B3=8
  NFE_I2SB=1,10,100,1000; NFE_E2H=1,10,100,1000; S_B_I2SB=4; S_B_E2H=32
  # Full-size parameters and programs, at image sizes a CPU runs in minutes.
  SH_I2SB="--preset i2sb_imagenet256 --image_size 32"; SH_E2H="--preset ddbm_e2h64 --image_size 16"
  SH_B=8; PEAK_SIZES=4096,8192; PART_TIMEOUT=570
  B1=300; B2=200; B3=330  # --time_budget_s of the sweeps (s)
  # part 'one': timeouts (s) of peak, e2h round, i2sb round, i2sb sampling, e2h sampling, flops;
  # with start-up they sum to 520 s, inside the device tool's 9-minute call.
  ONE_E2H_B=64; ONE_I2SB_B=8; ONE_NFE=1,10,50; ONE_T=(40 110 200 80 60 30)
fi

if [[ -d .whl ]]; then  # wheels the GPU image lacks (bench/gpu_wheels.sh): grain, ml-collections
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
B64_ROOT=${BENCH64_ROOT:-/tmp/ibmd_bench64}

peak_json() {  # the measured bf16 matmul peak, for --peak_tflops (0: each script measures it)
  "$PY" - "$WORK/peak/matmul_peak.json" <<'EOF' 2>/dev/null || echo 0
import json, sys
print(json.load(open(sys.argv[1]))["peak_tflops"])
EOF
}

merge() {  # merge() PART: every JSON under $WORK/PART into $OUT/PART.json, the .md files too
  "$PY" - "$WORK/$1" "$OUT/$1" <<'EOF'
import glob, json, os, sys
src, dst = sys.argv[1], sys.argv[2]
runs = {}
for p in sorted(glob.glob(os.path.join(src, "*.json"))):
  try:
    runs[os.path.basename(p)[:-5]] = json.load(open(p))
  except ValueError as e:
    runs[os.path.basename(p)[:-5]] = {"unreadable": str(e)}
json.dump(runs, open(dst + ".json", "w"), indent=1)
with open(dst + ".md", "w") as f:
  for p in sorted(glob.glob(os.path.join(src, "*.md"))):
    f.write(open(p).read() + "\n")
print(f"{dst}.json: {len(runs)} runs")
EOF
}

round_bench() {  # round_bench PART NAME ARGS...: one bench/ibmd_round.py process
  local part=$1 name=$2; shift 2
  "$PY" bench/ibmd_round.py --dtype "$DT" --steps "$STEPS" --warmup "$WARM" --xla_cost off \
      --out "$WORK/$part/$name.json" "$@"
}

part_peak() {
  "$PY" bench/matmul_peak.py --sizes "$PEAK_SIZES" --out "$WORK/peak/matmul_peak.json"
  "$PY" bench/flops.py --out "$WORK/peak/flops.json"
}

part_e2h() {
  local pk; pk=$(peak_json)
  round_bench e2h e2h_none --preset "$E2H" --sweep_batch "$E2H_B" --remat none \
      --peak_tflops "$pk" --cache_dir "$CACHE" --time_budget_s "$B1"
  round_bench e2h e2h_dots --preset "$E2H" --sweep_batch "$E2H_B2" --remat dots_saveable \
      --peak_tflops "$pk" --cache_dir "$CACHE" --time_budget_s "$B2"
}

part_i2sb() {
  local pk; pk=$(peak_json)
  local c="$WORK/i2sb_cache"
  rm -rf "$c"
  # Cold start (empty cache), then a restart with the warm cache: compile time only.
  round_bench i2sb compile_cold --preset "$I2SB" --batch "$I2SB_B" --remat full \
      --compile_only --cache_dir "$c"
  round_bench i2sb compile_warm --preset "$I2SB" --batch "$I2SB_B" --remat full \
      --compile_only --cache_dir "$c"
  # Timed rounds (the first one's program comes from the warm cache).
  round_bench i2sb b${I2SB_B}_full --preset "$I2SB" --batch "$I2SB_B" --remat full \
      --peak_tflops "$pk" --cache_dir "$c"
  round_bench i2sb b${I2SB_B2}_none --preset "$I2SB" --batch "$I2SB_B2" --remat none \
      --peak_tflops "$pk" --cache_dir "$c"
  round_bench i2sb b${I2SB_B3}_dots --preset "$I2SB" --batch "$I2SB_B3" --remat dots_saveable \
      --peak_tflops "$pk" --cache_dir "$c"
}

part_sampling() {
  "$PY" bench/sampling.py --preset "$I2SB" --batch "$S_B_I2SB" --dtype "$DT" \
      --teacher_nfe "$NFE_I2SB" --student_steps 1,2,4 --repeats 3 --max_point_s 45 \
      --cache_dir "$CACHE" --time_budget_s "$B3" --out "$WORK/sampling/i2sb.json"
  "$PY" bench/sampling.py --preset "$E2H" --batch "$S_B_E2H" --dtype "$DT" \
      --teacher_nfe "$NFE_E2H" --student_steps 1,2,4 --repeats 3 --max_point_s 30 \
      --cache_dir "$CACHE" --time_budget_s "$B2" --out "$WORK/sampling/e2h.json"
}

part_sharded() {
  # 8 fake CPU devices even on the GPU machine (the script sets JAX_PLATFORMS/XLA_FLAGS).
  timeout 280 "$PY" bench/sharded_round.py $SH_E2H --batch "$SH_B" --critic_steps 1 \
      --out "$WORK/sharded/e2h.json"
  timeout 280 "$PY" bench/sharded_round.py $SH_I2SB --batch "$SH_B" --critic_steps 1 \
      --out "$WORK/sharded/i2sb.json"
}

part_one() {  # issue 19: the GPU numbers in ONE call of at most 9 minutes; every step is cut by
  # its timeout (a cut step leaves what it wrote and the next one runs)
  local ONE_T; read -r -a ONE_T <<< "$ONE_T_S"
  timeout "${ONE_T[0]}" "$PY" bench/matmul_peak.py --sizes "${PEAK_SIZES%%,*}" \
      --out "$WORK/one/matmul_peak.json"
  local pk; pk=$("$PY" -c "import json; print(json.load(open('$WORK/one/matmul_peak.json'))['peak_tflops'])" 2>/dev/null || echo 0)
  timeout "${ONE_T[1]}" "$PY" bench/ibmd_round.py --dtype "$DT" --steps "$STEPS" --warmup "$WARM" \
      --xla_cost off --preset "$E2H" --batch "$ONE_E2H_B" --remat none --peak_tflops "$pk" \
      --out "$WORK/one/e2h_round.json"
  timeout "${ONE_T[2]}" "$PY" bench/ibmd_round.py --dtype "$DT" --steps "$STEPS" --warmup "$WARM" \
      --xla_cost off --preset "$I2SB" --batch "$ONE_I2SB_B" --remat full --peak_tflops "$pk" \
      --out "$WORK/one/i2sb_round.json"
  timeout "${ONE_T[3]}" "$PY" bench/sampling.py --preset "$I2SB" --batch "$S_B_I2SB" --dtype "$DT" \
      --teacher_nfe "$ONE_NFE" --student_steps 1,2 --repeats 3 --max_point_s 20 \
      --reference_nfe 1000 --out "$WORK/one/i2sb_sampling.json"
  timeout "${ONE_T[4]}" "$PY" bench/sampling.py --preset "$E2H" --batch "$S_B_E2H" --dtype "$DT" \
      --teacher_nfe "$ONE_NFE" --student_steps 1,2 --repeats 3 --max_point_s 15 \
      --reference_nfe 1000 --out "$WORK/one/e2h_sampling.json"
  timeout "${ONE_T[5]}" "$PY" bench/flops.py --out "$WORK/one/flops.json"
  return 0
}

part_bench64() {  # issue 20: the three setups of docs/results.md at 64² (variant gpu9, sized by
  # the FLOP model for 9-minute calls): stages until 510 s are spent (exit 75: call again, the
  # stages resume), then the report with bootstrap intervals and the checks
  local tasks=${BENCH64_TASKS:-sr4,inpaint,sr4_vp} variant=${BENCH64_VARIANT:-gpu9}
  [[ "$TINY" == 1 ]] && variant=tiny
  "$PY" bench/bench64.py --root="$B64_ROOT" --tasks="$tasks" --budget_s="${BENCH64_BUDGET:-510}" \
      --variant="$variant"
  local rc=$?
  "$PY" bench/bench64.py --root="$B64_ROOT" --tasks="$tasks" --report="$OUT/results_gpu.md" \
      --grids_dir="$B64_ROOT/report_grids" --reps=200 || true
  cp "$B64_ROOT/stages.json" "$OUT/bench64_stages.json"
  (cd "$B64_ROOT" && tar czf "$OUT/bench64_evals.tar.gz" report_grids report.json \
      */*/eval/metrics.json */*/eval/report.md */*.log 2>/dev/null) || true
  return $rc
}

export PY DT STEPS WARM WORK CACHE I2SB E2H E2H_B E2H_B2 I2SB_B I2SB_B2 I2SB_B3 NFE_I2SB NFE_E2H \
    S_B_I2SB S_B_E2H SH_I2SB SH_E2H SH_B PEAK_SIZES B1 B2 B3 ONE_E2H_B ONE_I2SB_B ONE_NFE
export B64_ROOT OUT TINY
export ONE_T_S="${ONE_T[*]}"  # bash cannot export arrays: part_one rebuilds ONE_T from this
export -f peak_json round_bench part_peak part_e2h part_i2sb part_sampling part_sharded part_bench64 \
    part_one
parts=("$@")
[[ ${#parts[@]} -eq 0 ]] && { echo "usage: bash bench/run_gpu.sh PART [PART ...] (peak e2h i2sb sampling sharded bench64 one | all)" >&2; exit 2; }
[[ "${parts[0]}" == all ]] && parts=(peak e2h i2sb sampling sharded)
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())" || exit 1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.draw --format=csv
status=0
for part in "${parts[@]}"; do
  case "$part" in peak|e2h|i2sb|sampling|sharded|bench64|one) ;; *) echo "unknown part $part" >&2; exit 2;; esac
  mkdir -p "$WORK/$part"
  [[ "$part" != peak && "$part" != bench64 && "$part" != one && ! -f "$WORK/peak/matmul_peak.json" ]] && { mkdir -p "$WORK/peak"; part_peak; }
  echo "=== $part ($(date -u +%T))"
  t=$PART_TIMEOUT
  [[ "$part" == one && "$TINY" != 1 ]] && t=530  # the single 9-minute call, start-up included
  timeout "$t" bash -c "part_$part" 2>&1 | tee "$OUT/$part.log"
  rc=${PIPESTATUS[0]}
  [[ $rc -ne 0 ]] && { echo "part $part exited with $rc" | tee -a "$OUT/$part.log"; status=1; }
  merge "$part"
done
for part in "${parts[@]}"; do [[ -f "$OUT/$part.md" ]] && cat "$OUT/$part.md"; done
exit $status
