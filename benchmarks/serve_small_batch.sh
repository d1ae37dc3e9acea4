#!/usr/bin/env bash
# Small-batch serving on one GPU: `glm47 serve` on the bench model directory (real config, stand-in
# tokenizer, dummy weights), then fixed-concurrency workloads of random token-id prompts through
# HTTP (`glm47 bench --workload conc:N`, streamed completions), and the graphed decode step of
# benchmarks/model_bench.py at the same batch sizes and context, so that the time per output token
# a client sees stands next to the step the GPU runs (their difference: host work and streaming).
#
# Prepare on the development machine, from the repository root (see serve_bench.sh):
#   python benchmarks/bench_model.py .bench-model
#   maturin build --release -o .whl     # plus the pyzmq wheel for the GPU machine's Python in .whl
# and carry `.bench-model` and `.whl`. Knobs: CONCS ("1 2 4"), NUM_PROMPTS (16 a workload),
# INPUT_LEN (1024), OUTPUT_LEN (256), SERVE_FLAGS, MODEL_BENCH (1: run model_bench.py after),
# SAMPLING (glm47 bench's sampling flags, default greedy; the model card's settings:
# "--temperature 1.0 --top-p 0.95").
# Everything lands in $OUT/results (bench.json / bench.md, serve.log, model_bench.log).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/glm47-small}
RES=$OUT/results
mkdir -p "$RES"
CONCS=${CONCS:-"1 2 4"}
NUM_PROMPTS=${NUM_PROMPTS:-16}
INPUT_LEN=${INPUT_LEN:-1024}
OUTPUT_LEN=${OUTPUT_LEN:-256}
MODEL_BENCH=${MODEL_BENCH:-1}
SAMPLING=${SAMPLING:-}
SERVE_FLAGS=${SERVE_FLAGS:-"--load-format dummy --graph-max-batch-size 16 \
--tool-call-parser glm47 --reasoning-parser glm45"}
source benchmarks/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$RES/gpu.txt"
git describe --always --dirty 2>/dev/null | tee "$RES/commit.txt"

source benchmarks/serve_common.sh
start_serve "$RES"
trap 'kill -INT $SERVE_PID 2>/dev/null; wait $SERVE_PID' EXIT
grep -E 'backends|runner:|kernels|graphs|KV cache' "$RES/serve.log" | cut -c1-240

ARGS=(--base-url http://127.0.0.1:8000 --dataset random --random-input-len "$INPUT_LEN"
      --random-output-len "$OUTPUT_LEN" --num-prompts "$NUM_PROMPTS" --output-dir "$RES"
      --label "$(cat "$RES/gpu.txt"); dummy weights; stand-in tokenizer; glm47 serve $SERVE_FLAGS; \
sampling: ${SAMPLING:-greedy}" --no-progress)
# shellcheck disable=SC2206
ARGS+=($SAMPLING)
for c in $CONCS; do ARGS+=(--workload "conc:$c"); done
timeout -k 10 300 python3 -m glm47.cli bench "${ARGS[@]}" 2>&1 | tee "$RES/bench.log"
kill -INT $SERVE_PID; wait $SERVE_PID
trap - EXIT
grep -iE 'error|traceback' "$RES/serve.log" | head -5

if [ "$MODEL_BENCH" = 1 ]; then
  batches=$(echo "$CONCS" | tr ' ' ',')
  ctx=$((INPUT_LEN + OUTPUT_LEN / 2))
  timeout -k 10 200 python3 benchmarks/model_bench.py --budget-s 120 --iters 20 \
    --batches "$batches" --context "$ctx" --prefill-tokens 0 --json "$RES/model_bench.json" \
    >"$RES/model_bench.log" 2>&1
  sed -n '/^ batch/,/^prefill/p' "$RES/model_bench.log" | grep -v '^prefill'
fi
