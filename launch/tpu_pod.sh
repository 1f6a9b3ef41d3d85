#!/usr/bin/env bash
# Starts one ibmd_jax run on every worker of a TPU pod slice (each worker runs the same command;
# jax.distributed.initialize() finds the coordinator and its process id from the TPU metadata).
#
#   TPU_NAME=my-v6e-16 ZONE=us-east5-b WORKDIR=gs://bucket/runs/e2h TFDS_DATA_DIR=gs://bucket/tfds \
#     launch/tpu_pod.sh configs/ddbm_e2h64.py --config.mesh.fsdp=4 ...
#
# What it does on every worker (docs/tpu.md, steps 3-4):
# - with SYNC=1, first copies this checkout (without .git and .venv) to $REPO on every worker;
# - installs the versions the plan was compiled with: jax[tpu]==$JAX_VERSION (0.10.2) and
#   libtpu==$LIBTPU_VERSION (0.0.42.1), the rest pinned by constraints.txt, and the gcs and tfds
#   extras (gcsfs for gs:// workdirs, TFDS for the TFDS data sources);
# - runs python -m launch.main with the config and overrides given, --workdir=$WORKDIR and
#   --config.distributed=True, in an environment that carries this shell's TFDS_DATA_DIR,
#   XLA_FLAGS, LIBTPU_INIT_ARGS, JAX_COMPILATION_CACHE_DIR, GOOGLE_CLOUD_PROJECT and any names listed
#   in POD_ENV (space-separated): set here, they reach the workers (unset ones are not passed).
# DRY_RUN=1 prints the commands (one argument a line) instead of running them.
# WORKDIR must be shared by all workers (a gs:// bucket or a shared filesystem): checkpoints are
# written collectively by Orbax, metrics, config.json and the lock by process 0.
set -euo pipefail
CONFIG="${1:?usage: tpu_pod.sh CONFIG [--config.key=value ...]}"
shift
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR}"
REPO="${REPO:-~/ibmd_jax}"
JAX_VERSION="${JAX_VERSION:-0.10.2}"
LIBTPU_VERSION="${LIBTPU_VERSION:-0.0.42.1}"
EXTRA=""
if (($#)); then EXTRA="$(printf ' %q' "$@")"; fi
ENVS=""
for name in TFDS_DATA_DIR XLA_FLAGS LIBTPU_INIT_ARGS JAX_COMPILATION_CACHE_DIR \
    GOOGLE_CLOUD_PROJECT ${POD_ENV:-}; do
  if [[ -n "${!name+x}" ]]; then
    ENVS+=" $name=$(printf '%q' "${!name}")"
  fi
done
run() {
  if [[ -n "${DRY_RUN:-}" ]]; then printf '%s\n' "$@"; else "$@"; fi
}
if [[ -n "${SYNC:-}" ]]; then  # this checkout (no .git, no virtual environments) to every worker
  TARBALL="${TMPDIR:-/tmp}/ibmd_jax_sync.tgz"
  run tar -C "$(cd "$(dirname "$0")/.." && pwd)" -czf "$TARBALL" --exclude-vcs --exclude=.venv \
    --exclude=__pycache__ --exclude=venv .
  run gcloud compute tpus tpu-vm scp "$TARBALL" "$TPU_NAME:/tmp/ibmd_jax_sync.tgz" --worker=all \
    --zone "$ZONE"
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all \
    --command "mkdir -p $REPO && tar -xzf /tmp/ibmd_jax_sync.tgz -C $REPO"
fi
run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  cd $REPO && python3 -m pip install -q -c constraints.txt -e '.[tfds,gcs]' \
    'jax[tpu]==$JAX_VERSION' 'libtpu==$LIBTPU_VERSION' &&
  env$ENVS python3 -m launch.main --config=$CONFIG --workdir=$WORKDIR \
    --config.distributed=True$EXTRA"
