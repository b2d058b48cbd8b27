#!/usr/bin/env bash
# Run a vft command on every host of a Cloud TPU pod slice (same command on all workers;
# jax.distributed auto-detects the pod). Usage:
#   launch/tpu_pod.sh TPU_NAME ZONE train configs/tokenizer_d12_d12.py gs://bucket/runs/d12 [--config.x=y ...]
set -euo pipefail
TPU_NAME=$1 ZONE=$2 CMD=$3 CONFIG=$4 WORKDIR=$5
shift 5
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
  cd ~/vft && make venv >/dev/null &&
  .venv/bin/python -m vft.main $CMD --config=$CONFIG --workdir=$WORKDIR --distributed $*"
