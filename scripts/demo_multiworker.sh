#!/usr/bin/env bash
# Loopback demo of multi-worker training: N worker processes on 127.0.0.1, each
# with its own TF_CONFIG, training a tiny ViT on the embedded digits with
# pipelines.distributed.fit_distributed. Only worker 0 (the chief) writes RUN_DIR
# and the SavedModel export.
#
#   scripts/demo_multiworker.sh [WORKERS] [RUN_DIR] [extra demo flags...]
#   make demo-multiworker                      # the lead's Makefile target
#
# Environment: PYTHON (default .venv/bin/python, else python3), BASE_PORT (default 23456).
set -euo pipefail
cd "$(dirname "$0")/.."
WORKERS=${1:-2}
RUN_DIR=${2:-runs/demo-multiworker}
shift $(( $# > 2 ? 2 : $# ))
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
BASE_PORT=${BASE_PORT:-23456}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} KERAS_BACKEND=tensorflow TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

addresses=$(for ((i = 0; i < WORKERS; i++)); do printf '"127.0.0.1:%d",' $((BASE_PORT + i)); done)
addresses="[${addresses%,}]"
mkdir -p "$(dirname "$RUN_DIR")"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
for ((i = 0; i < WORKERS; i++)); do
  log="$RUN_DIR-worker$i.log"
  echo "worker $i: TF_CONFIG cluster $addresses, task index $i, log $log"
  TF_CONFIG="{\"cluster\":{\"worker\":$addresses},\"task\":{\"type\":\"worker\",\"index\":$i}}" \
    "$PYTHON" -m pipelines.distributed.demo --distribute multi_worker --run-dir "$RUN_DIR" \
    --export-dir "$RUN_DIR-export" --epochs 3 --batch-size 64 "$@" >"$log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
grep -h "^epoch\|: error:" "$RUN_DIR-worker0.log" || true
echo "exit status $status; run folder $RUN_DIR (chief only), export $RUN_DIR-export/1"
exit $status
