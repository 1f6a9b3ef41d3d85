#!/usr/bin/env bash
# Starts one ibmd_jax run on every worker of a TPU pod slice (each worker runs the same command;
# jax.distributed.initialize() finds the coordinator and its process id from the TPU metadata).
#
#   TPU_NAME=my-v5p-64 ZONE=us-east5-a WORKDIR=gs://bucket/runs/e2h \
#     launch/tpu_pod.sh configs/toy_cond.py --config.distill.rounds=3000
#
# The repository must be present at $REPO (default ~/ibmd_jax) on every worker, e.g. with
#   gcloud compute tpus tpu-vm scp --recurse --worker=all . "$TPU_NAME":~/ibmd_jax --zone "$ZONE"
# WORKDIR must be shared by all workers (a GCS bucket, or a shared filesystem): checkpoints
# are written collectively by Orbax, metrics by process 0.
set -euo pipefail
CONFIG="${1:?usage: tpu_pod.sh CONFIG [--config.key=value ...]}"
shift
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR}"
REPO="${REPO:-~/ibmd_jax}"
EXTRA="$(printf ' %q' "$@")"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  cd $REPO && python3 -m pip install -q -e '.[tfds]' 'jax[tpu]' &&
  TFDS_DATA_DIR=\${TFDS_DATA_DIR:-} python3 -m launch.main --config=$CONFIG --workdir=$WORKDIR \
    --config.distributed=True $EXTRA"
