#!/usr/bin/env bash
# N processes on this machine, each with its own simulated CPU devices, joined by
# jax.distributed over localhost (gloo collectives): a multi-host rehearsal without a cluster.
#   launch/local_multiprocess.sh N CMD CONFIG WORKDIR [flags...]
#   launch/local_multiprocess.sh 2 train configs/demo.py:smoke runs/mp [--config.x=y ...]
#   launch/local_multiprocess.sh 2 eval - - --checkpoint=runs/mp --videos=DIR --out=OUT
# CONFIG / WORKDIR "-" leave --config / --workdir out (standalone `vft eval --checkpoint`).
# Env: PORT (default: a free one), DEVICES_PER_PROCESS (default 2), PYTHON (default
# .venv/bin/python). If one process fails, the others are killed and its exit code returned.
set -euo pipefail
N=$1 CMD=$2 CONFIG=$3 WORKDIR=$4
shift 4
PYTHON=${PYTHON:-.venv/bin/python}
PORT=${PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
args=()
[[ $CONFIG != - ]] && args+=(--config="$CONFIG")
[[ $WORKDIR != - ]] && args+=(--workdir="$WORKDIR")
pids=()
# shellcheck disable=SC2329  # invoked by the EXIT trap
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
trap 'exit 130' INT TERM
for ((i = 0; i < N; i++)); do
  JAX_PLATFORMS=cpu JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo \
  XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-2}" \
    "$PYTHON" -m vft.main "$CMD" "${args[@]}" --distributed \
    --coordinator="127.0.0.1:$PORT" --num_processes="$N" --process_id="$i" "$@" &
  pids+=($!)
done
status=0
for ((left = N; left > 0; left--)); do
  wait -n || { status=$?; break; }
done
exit $status
