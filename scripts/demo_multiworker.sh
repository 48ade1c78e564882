#!/usr/bin/env bash
# Loopback demo of multi-worker training: N `keras-vit train --distribute
# multi_worker` processes on 127.0.0.1, each with its own TF_CONFIG, training a
# small ViT on the embedded digits (no network). Only worker 0 (the chief) writes
# RUN_DIR and the SavedModel export; every worker logs the same
# "final weights sha256" line.
#
#   scripts/demo_multiworker.sh [WORKERS] [RUN_DIR] [more keras-vit train flags...]
#   scripts/demo_multiworker.sh 3 runs/mw3 --epochs 5
#   make demo-multiworker
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
# A small model and few epochs, so the demo takes about a minute on 2 cores;
# flags given to the script come later and win.
flags=(--distribute multi_worker --output-dir "$RUN_DIR" --export-dir "$RUN_DIR-export"
       --hidden-dim 32 --depth 2 --num-heads 2 --mlp-dim 64 --epochs 10 --batch-size 64
       --precision float32 --verbose 0 --no-baseline --overwrite "$@")
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
for ((i = 0; i < WORKERS; i++)); do
  log="$RUN_DIR-worker$i.log"
  echo "worker $i: TF_CONFIG cluster $addresses, task index $i, log $log"
  TF_CONFIG="{\"cluster\":{\"worker\":$addresses},\"task\":{\"type\":\"worker\",\"index\":$i}}" \
    "$PYTHON" -m pipelines.train "${flags[@]}" >"$log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
grep -h "^epoch\|: error:\|^test accuracy\|^SavedModel" "$RUN_DIR-worker0.log" || true
grep -h "final weights sha256" "$RUN_DIR"-worker*.log || true
echo "exit status $status; run folder $RUN_DIR (chief only), export $RUN_DIR-export"
exit $status
