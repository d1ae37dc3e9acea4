#!/usr/bin/env bash
# One script for a GPU run: kernel tests on the GPU, MoE tuning, kernel benchmarks,
# the fa3-fwd check. Logs and JSON go to $OUT (default ./gpu-out).
#   benchmarks/gpu_check.sh [steps...]   steps: info tests tune bench (default: all four),
#   bench-PART (one part of benchmarks/kernels.py), ncu (Nsight Compute on the MLA decode and
#   fused MoE kernels at serving shapes)
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
      timeout 420 python3 -m glm47.kernels.tune_moe --out-dir kernels/configs 2>&1 | tee "$OUT/tune.log"
      cp kernels/configs/fused_moe_*.json "$OUT/" 2>/dev/null ;;
    bench)
      timeout 400 python3 benchmarks/kernels.py --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" | tail -60 ;;
    bench-*)
      timeout 400 python3 benchmarks/kernels.py --only "${step#bench-}" --json "$OUT/bench-${step#bench-}.json" \
        2>&1 | tee "$OUT/bench-${step#bench-}.log" | tail -60 ;;
    ncu)
      # Hardware counters where the machine allows them (clocks left as they are).
      sections=(--section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats
        --section Occupancy --section LaunchStats --section SchedulerStats)
      for target in "mla_decode --batch 256 --ctx 8192 _mla_decode_split" \
        "mla_decode --batch 32 --ctx 8192 _mla_decode_split" \
        "fused_moe --tokens 1 _moe_gemm" "fused_moe --tokens 256 _moe_gemm"; do
        read -r kernel a1 v1 a2 v2 name <<<"$target"
        [ -z "$name" ] && { name=$a2; a2=""; v2=""; }
        log="$OUT/ncu-$kernel-$v1.log"
        timeout 120 ncu --clock-control none --kernel-name "regex:$name" --launch-skip 2 \
          --launch-count 2 "${sections[@]}" python3 benchmarks/profile_target.py "$kernel" \
          $a1 $v1 $a2 $v2 >"$log" 2>&1
        echo "ncu $kernel $a1 $v1 $a2 $v2: rc=$?"; grep -E "Duration|Throughput|Registers|Achieved Occupancy|Stall|Theoretical Occupancy|Block Limit" "$log" | head -30
      done ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
  echo "== step $step: $(( $(date +%s) - start )) s"
done
