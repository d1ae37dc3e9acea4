#!/usr/bin/env bash
# One GPU device call for the model fast path: the GPU tests (parity with transformers at the real
# layer widths, CUDA-graph replay against eager), then the whole-model benchmark (decode steps and
# an 8192-token prefill at full size with dummy weights). Each section has its own time limit and
# a failing section does not stop the next; the summary table is printed last. About 8 minutes.
# Logs and JSON go to $OUT (default ./gpu-out).
#   bash benchmarks/gpu_model_check.sh          (device call: carry .whl, timeout 600)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD/python
fi
start_all=$(date +%s)
: >"$OUT/sections.txt"

section() {  # name, limit in seconds, command...
  local name=$1 limit=$2
  shift 2
  local t0
  t0=$(date +%s)
  echo "== $name (limit ${limit}s)"
  timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $(( $(date +%s) - t0 ))s" | tee -a "$OUT/sections.txt"
  tail -n 15 "$OUT/$name.log"
}

section info 60 bash -c '
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton, transformers; print(\"torch\", torch.__version__, \"triton\", triton.__version__, \"transformers\", transformers.__version__)"
  python3 -c "import fa3_fwd_interface; print(\"fa3_fwd_interface importable\")" || echo "fa3 not importable"
  python3 -c "import flashinfer; print(\"flashinfer\", flashinfer.__version__)" || echo "flashinfer not importable"'

section gpu_tests 230 python3 -m pytest tests/gpu -q -s -rA -p no:cacheprovider

section model_bench 280 python3 benchmarks/model_bench.py --budget-s 200 --json "$OUT/model_bench.json"

echo
echo "==================== summary ($(( $(date +%s) - start_all )) s) ===================="
cat "$OUT/sections.txt"
echo "-- GPU tests (agreement per row; see $OUT/gpu_tests.log)"
grep -E '^\[|^(PASSED|FAILED|ERROR|SKIPPED)|[0-9]+ (passed|failed|skipped|error)' \
  "$OUT/gpu_tests.log" | tail -n 24
echo "-- model bench"
sed -n '/^== model bench/,$p' "$OUT/model_bench.log"
grep -E 'skipped|failed|Error' "$OUT/model_bench.log" | grep -v '^== ' | tail -n 5
