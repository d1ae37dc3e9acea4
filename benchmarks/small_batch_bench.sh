#!/usr/bin/env bash
# Small decode batches on the GPU machine, one model per launch configuration:
#   - the kernel tests of kernels/skinny_gemm (plain and with programmatic dependent launch) and
#     the GPU parity tests of the skinny and dependent-launch paths (tests/gpu/test_skinny_gemm_gpu.py);
#   - benchmarks/model_bench.py's decode steps at batches $BATCHES (default 1,2,4,8,16,32) for each
#     of $VARIANTS (flag sets separated by ';', "-" = the defaults): the library projections,
#     `--skinny-gemm`, `--skinny-gemm --pdl`, `--pdl`; words of the form NAME=value set that
#     environment variable for the variant (e.g. GLM47_TUNED_CONFIG_DIR=/tmp/cfg: other MoE configs);
#   - with PROFILE=1, benchmarks/graph_profile.py at batch 1 for each variant as well (what each
#     kernel of a layer costs the chain).
# Logs and JSON go to $OUT (default ./gpu-out); the table of every variant is printed last.
#   bash benchmarks/small_batch_bench.sh      (on the GPU machine; .whl optional)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
source benchmarks/gpu_env.sh
BATCHES=${BATCHES:-1,2,4,8,16,32}
VARIANTS=${VARIANTS:--;--skinny-gemm;--skinny-gemm --pdl;--pdl}
TESTS=${TESTS:-1}
PROFILE=${PROFILE:-0}

if [ "$TESTS" = 1 ]; then
  timeout -k 10 240 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_skinny_gemm.py \
    >"$OUT/skinny_kernel_tests.log" 2>&1
  echo "skinny kernel tests rc=$?: $(tail -n 1 "$OUT/skinny_kernel_tests.log")"
  timeout -k 10 300 python3 -m pytest -q -s -rA -p no:cacheprovider tests/gpu/test_skinny_gemm_gpu.py \
    >"$OUT/skinny_gpu_tests.log" 2>&1
  echo "skinny GPU tests rc=$?: $(tail -n 1 "$OUT/skinny_gpu_tests.log")"
  grep -E '^\[|FAILED|Error' "$OUT/skinny_gpu_tests.log" | head -n 20
fi

i=0
IFS=';' read -ra SETS <<<"$VARIANTS"
for flags in "${SETS[@]}"; do
  i=$((i + 1))
  [ "$flags" = "-" ] && flags=""
  envs=() args=()
  for word in $flags; do
    if [[ $word == [A-Z]*=* ]]; then envs+=("$word"); else args+=("$word"); fi
  done
  timeout -k 10 200 env "${envs[@]}" python3 benchmarks/model_bench.py --budget-s 150 --iters 20 \
    --batches "$BATCHES" --prefill-tokens 0 "${args[@]}" --json "$OUT/small_batch_$i.json" \
    >"$OUT/small_batch_$i.log" 2>&1
  echo "== variant $i: ${flags:-defaults} (rc=$?)"
  sed -n '/^ batch/,/^prefill/p' "$OUT/small_batch_$i.log" | grep -v '^prefill'
  if [ "$PROFILE" = 1 ]; then
    timeout -k 10 150 env "${envs[@]}" python3 benchmarks/graph_profile.py --batches 1 "${args[@]}" \
      --json "$OUT/profile_$i.json" >"$OUT/profile_$i.log" 2>&1
    echo "   graph profile (rc=$?): $(grep -m1 'one layer' "$OUT/profile_$i.log")"
  fi
done
