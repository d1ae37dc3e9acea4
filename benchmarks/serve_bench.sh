#!/usr/bin/env bash
# The serving benchmark on one GPU: `glm47 serve` on the bench model directory (real config, real
# template format, stand-in tokenizer, dummy weights), then the workloads of the published LightLLM
# table (burst, 512 concurrent, Poisson 10 and 5 req/s) on the same ShareGPT requests, then
# transformers' baseline on the same requests. Everything lands in $OUT/results.tar.gz (JSON,
# markdown, raw timings, plots, logs); unpack it into benchmarks/results/<date>-<gpu>/.
#
# Prepare on the development machine (no GPU), from the repository root:
#   python benchmarks/bench_model.py .bench-model
#   glm47 bench --dataset sharegpt --tokenizer .bench-model --num-prompts 2000 \
#       --save-requests .bench-model/requests.jsonl --dry-run
#   maturin build --release -o .whl     # plus the pyzmq 27.3.0 and fa3-fwd 0.0.3 wheels in .whl
# and copy `.bench-model` and `.whl` to the GPU machine. The four workloads take over ten minutes
# together (the Poisson ones alone last 200 s and 400 s); to split them into two runs:
#   GPU_TESTS=triton WORKLOADS="burst high-conc moderate" BASELINE_BUDGET_S=0 BENCH_LIMIT_S=430 \
#       bash benchmarks/serve_bench.sh
#   WORKLOADS=steady BASELINE_BUDGET_S=60 bash benchmarks/serve_bench.sh
# Environment knobs: NUM_PROMPTS (2000), WORKLOADS, SERVE_FLAGS, BASELINE_BUDGET_S (60; 0 skips the
# transformers baseline), MODEL_BENCH (1: run benchmarks/model_bench.py first), GPU_TESTS (a pytest
# -k expression: run those GPU tests first), BENCH_LIMIT_S (480: the limit of all workloads),
# PROFILE_S (0; N: for the first N seconds of the workloads, per-process CPU from top every 2 s and,
# the router's thread count, memory and busiest threads (router_threads.log) and, where py-spy is
# installed (its wheel in .whl), py-spy samples of the worker (worker.pyspy.txt, collapsed stacks)),
# SAMPLING (glm47 bench's sampling flags, default greedy; the model card's settings:
# "--temperature 1.0 --top-p 0.95"), JSON_BENCH (concurrencies, e.g. "1 32": after the workloads,
# benchmarks/json_output_bench.py against the same server; JSON_MODES: its --modes, default
# "json free").
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/glm47-bench}
RES=$OUT/results
mkdir -p "$RES"
NUM_PROMPTS=${NUM_PROMPTS:-2000}
WORKLOADS=${WORKLOADS:-"burst high-conc moderate steady"}
BASELINE_BUDGET_S=${BASELINE_BUDGET_S:-60}
MODEL_BENCH=${MODEL_BENCH:-0}
BENCH_LIMIT_S=${BENCH_LIMIT_S:-480}
SAMPLING=${SAMPLING:-}
SERVE_FLAGS=${SERVE_FLAGS:-"--load-format dummy --chunked-prefill-size 8192 --graph-max-batch-size 512 \
--max-running-requests 2048 --tool-call-parser glm47 --reasoning-parser glm45"}
source benchmarks/gpu_env.sh
pack() { tar -czf "$OUT/results.tar.gz" -C "$OUT" results; }
trap pack EXIT
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$RES/gpu.txt"
# "-dirty" when the tree differs from that commit (a copied tree may carry an older .git)
git describe --always --dirty 2>/dev/null | tee "$RES/commit.txt"

if [ -n "${GPU_TESTS:-}" ]; then  # a pytest -k expression over tests/gpu, run before serving
  timeout -k 10 150 python3 -m pytest -q -s -rA -p no:cacheprovider tests/gpu -k "$GPU_TESTS" \
    >"$RES/gpu_tests.log" 2>&1
  grep -hE '^\[|^(PASSED|FAILED|ERROR)|[0-9]+ (passed|failed|error)' "$RES/gpu_tests.log" | cut -c1-400
fi
if [ "$MODEL_BENCH" = 1 ]; then
  timeout -k 10 120 python3 benchmarks/model_bench.py --budget-s 70 --iters 10 \
    --json "$RES/model_bench.json" >"$RES/model_bench.log" 2>&1
  sed -n '/^== model bench/,$p' "$RES/model_bench.log"
fi

source benchmarks/serve_common.sh
start_serve "$RES"
trap 'kill -INT $SERVE_PID 2>/dev/null; wait $SERVE_PID; pack' EXIT
grep -E 'backends|runner:|graphs|warm-up|KV cache' "$RES/serve.log" | cut -c1-240

LABEL="$(cat "$RES/gpu.txt"); dummy weights; stand-in tokenizer; glm47 serve $SERVE_FLAGS; \
sampling: ${SAMPLING:-greedy}"
ARGS=(--base-url http://127.0.0.1:8000 --dataset file --dataset-path .bench-model/requests.jsonl
      --num-prompts "$NUM_PROMPTS" --output-dir "$RES" --label "$LABEL" --no-progress
      --flush-cache)  # each workload meets the prompts cold, not in the cache the one before left
for w in $WORKLOADS; do ARGS+=(--workload "$w"); done
# shellcheck disable=SC2206  # the sampling flags split into words on purpose
ARGS+=($SAMPLING)
PROFILE_S=${PROFILE_S:-0}
PROF_PIDS=()
if [ "$PROFILE_S" != 0 ]; then
  [ "$PROFILE_S" -lt 2 ] && PROFILE_S=2
  (sleep 1; top -b -d 2 -n $((PROFILE_S / 2)) -o %CPU -w 220 \
    | awk '/^top -/ {n = 0} n++ < 24' >"$RES/top.log") &
  PROF_PIDS+=($!)
  rpid=$(pgrep -f "glm47\.router " | head -1)
  (for t in $(seq 2 2 "$PROFILE_S"); do  # the router's threads, memory and busiest threads
    sleep 2
    { echo "== +${t} s"; grep -E "Threads|VmRSS" "/proc/$rpid/status"
      top -H -b -n 1 -p "$rpid" -w 200 | sed -n 7,18p; } >>"$RES/router_threads.log" 2>&1
  done) &
  PROF_PIDS+=($!)
  if command -v py-spy >/dev/null; then
    wpid=$(pgrep -f "glm47\.worker " | head -1)
    timeout $((PROFILE_S + 30)) py-spy record --pid "$wpid" --duration "$PROFILE_S" --rate 50 \
      --nonblocking --format raw -o "$RES/worker.pyspy.txt" >"$RES/worker.pyspy.log" 2>&1 &
    PROF_PIDS+=($!)
  fi
fi
timeout -k 10 "$BENCH_LIMIT_S" python3 -m glm47.cli bench "${ARGS[@]}" 2>&1 | tee "$RES/bench.log"
if [ ${#PROF_PIDS[@]} -gt 0 ]; then  # profilers still sampling (a short run) write what they have
  kill -INT "${PROF_PIDS[@]}" 2>/dev/null
  wait "${PROF_PIDS[@]}" 2>/dev/null
fi
if [ -n "${JSON_BENCH:-}" ]; then  # JSON output against free text, e.g. JSON_BENCH="1 32"
  # shellcheck disable=SC2086  # the concurrencies split into words on purpose
  # shellcheck disable=SC2086  # and the modes (JSON_MODES, default "json free")
  timeout -k 10 240 python3 benchmarks/json_output_bench.py --concurrency $JSON_BENCH \
    --modes ${JSON_MODES:-json free} --json "$RES/json_output.json" 2>&1 | tee "$RES/json_output.log"
fi
curl -s http://127.0.0.1:8000/metrics >"$RES/metrics.txt"
grep -E '^glm47_(preemptions|request_finish|generation_tokens|prompt_tokens|cached)' "$RES/metrics.txt"
kill -INT $SERVE_PID; wait $SERVE_PID
trap pack EXIT
grep -iE 'error|traceback|cancelled' "$RES/serve.log" | head -5

if [ "$BASELINE_BUDGET_S" != 0 ]; then
  timeout -k 10 $((BASELINE_BUDGET_S + 90)) python3 benchmarks/hf_baseline.py \
    --model-dir .bench-model --requests .bench-model/requests.jsonl --num-prompts "$NUM_PROMPTS" \
    --budget-s "$BASELINE_BUDGET_S" --out "$RES/hf_baseline.json" >"$RES/hf_baseline.log" 2>&1
  tail -3 "$RES/hf_baseline.log"
fi
cat "$RES/bench.md"
