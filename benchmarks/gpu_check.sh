#!/usr/bin/env bash
# One script for a GPU run: kernel tests on the GPU, MoE tuning, kernel benchmarks,
# the fa3-fwd check. Logs and JSON go to $OUT (default ./gpu-out).
#   benchmarks/gpu_check.sh [steps...]   steps: info tests tune bench (default: all four)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH}
steps=${*:-info tests tune bench}

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi

for step in $steps; do
  start=$(date +%s)
  case $step in
    info)
      { date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
        python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
      } 2>&1 | tee "$OUT/info.log" ;;
    tests)
      timeout 300 python3 -m pytest tests/kernels -q -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -25 ;;
    tune)
      timeout 240 python3 -m glm47.kernels.tune_moe --out-dir kernels/configs 2>&1 | tee "$OUT/tune.log"
      cp kernels/configs/fused_moe_*.json "$OUT/" 2>/dev/null ;;
    bench)
      timeout 400 python3 benchmarks/kernels.py --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" | tail -60 ;;
    bench-*)
      timeout 400 python3 benchmarks/kernels.py --only "${step#bench-}" --json "$OUT/bench-${step#bench-}.json" \
        2>&1 | tee "$OUT/bench-${step#bench-}.log" | tail -60 ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
  echo "== step $step: $(( $(date +%s) - start )) s"
done
