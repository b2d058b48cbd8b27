#!/usr/bin/env bash
# N processes on this machine, each with its own simulated CPU devices, joined by
# jax.distributed over localhost: a multi-host rehearsal without a cluster.
#   launch/local_multiprocess.sh 2 train configs/demo.py runs/mp [--config.x=y ...]
set -euo pipefail
N=$1 CMD=$2 CONFIG=$3 WORKDIR=$4
shift 4
PORT=${PORT:-12355}
pids=()
for ((i = 0; i < N; i++)); do
  JAX_PLATFORMS=cpu JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo \
  XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-2}" \
    .venv/bin/python -m vft.main "$CMD" --config="$CONFIG" --workdir="$WORKDIR" --distributed \
    --coordinator="127.0.0.1:$PORT" --num_processes="$N" --process_id="$i" "$@" &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
exit $status
