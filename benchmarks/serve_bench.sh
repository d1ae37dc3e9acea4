#!/usr/bin/env bash
# The serving benchmark on one GPU: `glm47 serve` on the bench model directory (real config, real
# template format, stand-in tokenizer, dummy weights), then the four workloads of the published
# LightLLM table (burst, 512 concurrent, Poisson 10 and 5 req/s) on the same ShareGPT requests,
# then transformers' baseline on the burst requests. Results (JSON, markdown, raw timings, logs) go
# to $OUT; copy them into benchmarks/results/<date>-<gpu>/ and redraw plots with
# `python -m glm47.bench.report $dir/*.requests.json`.
#
# Prepare on the development machine (no GPU), from the repository root:
#   python benchmarks/bench_model.py .bench-model
#   glm47 bench --dataset sharegpt --tokenizer .bench-model --num-prompts 2000 \
#       --save-requests .bench-model/requests.jsonl --dry-run
#   maturin build --release -o .whl     # plus the pyzmq 27.3.0 wheel for Python 3.12 in .whl
# and carry `.bench-model` and `.whl`. Environment knobs: NUM_PROMPTS (2000), WORKLOADS, SERVE_FLAGS,
# BASELINE_PROMPTS (256; 0 skips the baseline).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/glm47-bench}
mkdir -p "$OUT"
NUM_PROMPTS=${NUM_PROMPTS:-2000}
WORKLOADS=${WORKLOADS:-"burst high-conc moderate steady"}
BASELINE_PROMPTS=${BASELINE_PROMPTS:-256}
SERVE_FLAGS=${SERVE_FLAGS:-"--load-format dummy --chunked-prefill-size 8192 --graph-max-batch-size 512 \
--tool-call-parser glm47 --reasoning-parser glm45"}

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
git rev-parse HEAD 2>/dev/null | tee "$OUT/commit.txt"

# shellcheck disable=SC2086
python3 -m glm47.cli serve --model-dir .bench-model --host 127.0.0.1 --port 8000 $SERVE_FLAGS \
  >"$OUT/serve.log" 2>&1 &
SERVE_PID=$!
trap 'kill -INT $SERVE_PID 2>/dev/null; wait $SERVE_PID' EXIT
for _ in $(seq 1 300); do
  curl -sf http://127.0.0.1:8000/health >/dev/null && break
  kill -0 $SERVE_PID 2>/dev/null || { tail -50 "$OUT/serve.log"; exit 1; }
  sleep 1
done

LABEL="$(cat "$OUT/gpu.txt"); dummy weights; stand-in tokenizer; glm47 serve $SERVE_FLAGS"
ARGS=(--base-url http://127.0.0.1:8000 --dataset file --dataset-path .bench-model/requests.jsonl
      --num-prompts "$NUM_PROMPTS" --output-dir "$OUT" --label "$LABEL" --no-progress)
for w in $WORKLOADS; do ARGS+=(--workload "$w"); done
python3 -m glm47.cli bench "${ARGS[@]}" 2>&1 | tee "$OUT/bench.log"
curl -s http://127.0.0.1:8000/metrics >"$OUT/metrics.txt"
kill -INT $SERVE_PID; wait $SERVE_PID; trap - EXIT

if [ "$BASELINE_PROMPTS" -gt 0 ]; then
  python3 benchmarks/hf_baseline.py --model-dir .bench-model --requests .bench-model/requests.jsonl \
    --num-prompts "$BASELINE_PROMPTS" --out "$OUT/hf_baseline.json" 2>&1 | tail -5
fi
cat "$OUT/bench.md"
