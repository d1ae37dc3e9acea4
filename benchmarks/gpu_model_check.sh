#!/usr/bin/env bash
# One GPU run for the model fast path:
#   - the GPU tests: parity with transformers at the real layer widths (triton eager and graphed,
#     fa3 prefill, flashinfer decode eager and graphed), CUDA-graph replay against eager; the
#     flashinfer tests run beside the others, since their first call compiles FlashInfer's kernels
#     on the CPU;
#   - the whole-model benchmark (decode steps with the decode attention `auto` picks, FlashInfer's
#     eager decode rows when that is plain Triton, an 8192-token prefill at full size with dummy
#     weights), and its batch 1 and 8 decode steps with --skinny-gemm;
#   - the host time of eager steps (benchmarks/eager_profile.py: a mixed decode + prompt step and
#     a decode step without graphs, kernels per layer, top host functions);
#   - a serving smoke run: `glm47 serve` on the bench model directory with dummy weights, 400
#     ShareGPT requests at once through `glm47 bench` (needs the glm47 wheel in .whl and
#     .bench-model with requests.jsonl; see benchmarks/serve_bench.sh).
#   - the kernel tests on the GPU and the kernel benchmark (ceilings, MoE, small kernels, alignment);
# Each section has its own time limit and a failing section does not stop the next; the summary
# is printed last. With SKIP="flashinfer_tests serve_smoke" it took 194 s on an H200 (2026-12-02,
# before the skinny and swapped-decode rows were added). Logs go to $OUT (default ./gpu-out),
# packed in logs.tar.gz.
# SKIP="serve_smoke flashinfer_tests ..." leaves sections out.
#   bash benchmarks/gpu_model_check.sh     (on the GPU machine, .whl and .bench-model beside it)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT/logs"
LOGS=$OUT/logs
source benchmarks/gpu_env.sh
start_all=$(date +%s)
: >"$LOGS/sections.txt"

SKIP=${SKIP:-}
section() {  # name, limit in seconds, command...
  local name=$1 limit=$2
  shift 2
  case " $SKIP " in *" $name "*) echo "$name skipped" | tee -a "$LOGS/sections.txt"; return 0 ;; esac
  local t0
  t0=$(date +%s)
  echo "== $name (limit ${limit}s)"
  timeout -k 10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $(( $(date +%s) - t0 ))s" | tee -a "$LOGS/sections.txt"
  tail -n 8 "$LOGS/$name.log"
}

section info 60 bash -c '
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton, transformers; print(\"torch\", torch.__version__, \"triton\", triton.__version__, \"transformers\", transformers.__version__)"
  python3 -c "import fa3_fwd_interface; print(\"fa3_fwd_interface importable\")" || echo "fa3 not importable"
  python3 -c "import flashinfer; print(\"flashinfer\", flashinfer.__version__)" || echo "flashinfer not importable"
  which nvcc ninja; nvcc --version | tail -2'

PYTEST=(python3 -m pytest -q -s -rA -p no:cacheprovider)
section flashinfer_tests 220 "${PYTEST[@]}" tests/gpu/test_model_parity_gpu.py -k flashinfer &
FI_PID=$!
section gpu_tests 260 "${PYTEST[@]}" tests/gpu -k "not flashinfer"
wait $FI_PID

section model_bench 220 python3 benchmarks/model_bench.py --budget-s 170 --iters 10 --verify-tokens 2 \
  --json "$OUT/model_bench.json"

# The same decode steps at small batches with the dense projections through kernels/skinny_gemm
# (`--skinny-gemm`), to set beside the rows above.
section model_bench_skinny 120 python3 benchmarks/model_bench.py --budget-s 80 --iters 10 \
  --batches 1,8 --prefill-tokens 0 --verify-tokens 2 --skinny-gemm \
  --json "$OUT/model_bench_skinny.json"

section eager_profile 150 python3 benchmarks/eager_profile.py --segment-graphs \
  --json "$OUT/eager_profile.json"

section kernel_tests 150 python3 -m pytest -q -p no:cacheprovider tests/kernels
section kernel_bench 200 python3 benchmarks/kernels.py --only decode,moe,small,skinny,align \
  --json "$OUT/kernel_bench.json"

serve_smoke() {
  python3 -m glm47.cli serve --model-dir .bench-model --host 127.0.0.1 --port 8000 \
    --load-format dummy --tool-call-parser glm47 --reasoning-parser glm45 >"$LOGS/serve.log" 2>&1 &
  local pid=$! t0
  t0=$(date +%s)
  for _ in $(seq 1 150); do
    curl -sf http://127.0.0.1:8000/health >/dev/null && break
    kill -0 $pid 2>/dev/null || { echo "server exited"; tail -40 "$LOGS/serve.log"; return 1; }
    sleep 1
  done
  echo "server ready after $(( $(date +%s) - t0 )) s"
  python3 -m glm47.cli bench --base-url http://127.0.0.1:8000 --dataset file \
    --dataset-path .bench-model/requests.jsonl --num-prompts 400 --workload burst \
    --output-dir "$OUT/smoke" --no-progress --label "smoke: dummy weights, stand-in tokenizer"
  curl -s http://127.0.0.1:8000/metrics | grep -E '^glm47_' | head -30
  kill -INT $pid; wait $pid
  grep -E 'graph|backend|KV|pages|ERROR|Traceback' "$LOGS/serve.log" | head -20
}
section serve_smoke 150 bash -c "$(declare -f serve_smoke); LOGS=$LOGS OUT=$OUT serve_smoke"

echo
echo "==================== summary ($(( $(date +%s) - start_all )) s) ===================="
cat "$LOGS/sections.txt"
echo "-- GPU tests (agreement per row)"
grep -hE '^\[|^(PASSED|FAILED|ERROR|SKIPPED)|[0-9]+ (passed|failed|skipped|error)' \
  "$LOGS/gpu_tests.log" "$LOGS/flashinfer_tests.log" | tail -n 30
echo "-- kernel tests"
tail -n 3 "$LOGS/kernel_tests.log" 2>/dev/null
echo "-- model bench"
sed -n '/^== model bench/,$p' "$LOGS/model_bench.log"
grep -E 'skipped|failed|Error' "$LOGS/model_bench.log" | grep -v '^== ' | tail -n 5
echo "-- model bench with --skinny-gemm"
sed -n '/^== model bench/,/^prefill/p' "$LOGS/model_bench_skinny.log" 2>/dev/null | head -n 8
echo "-- eager profile"
sed -n '/^== eager profile/,/^-- mixed step, top host/p' "$LOGS/eager_profile.log" | head -n 75
echo "-- serve smoke"
grep -vE '^\s*$' "$LOGS/serve_smoke.log" | tail -n 40
cp "$OUT"/smoke/*.md "$LOGS/" 2>/dev/null
tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$LOGS" "$OUT/smoke"
