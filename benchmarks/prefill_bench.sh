#!/usr/bin/env bash
# The prefill forms on the GPU machine: MLA's absorbed Triton kernel, the expanded form through
# kernels/varlen_attention, FlashAttention-3 (fa3-fwd, when carried in .whl):
#   - the kernel tests of varlen_attention and of the Triton backend at the real widths;
#   - the parity tests of the expanded Triton prefill (and the plain Triton path) against
#     transformers (tests/gpu/test_model_parity_gpu.py);
#   - benchmarks/kernels.py --only varlen,fa3: each varlen_attention launch at an 8K prompt and at
#     four 1K chunks after 3K cached tokens, next to fa3;
#   - benchmarks/model_bench.py: one 8192-token prompt through "triton" (its form chosen per
#     step), "triton absorbed" and "fa3", next to the FLOP floor.
# Logs go to $OUT (default ./gpu-out).   bash benchmarks/prefill_bench.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
source benchmarks/gpu_env.sh

timeout -k 10 200 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_varlen_attention.py \
  tests/kernels/test_triton_backend.py >"$OUT/prefill_kernel_tests.log" 2>&1
echo "kernel tests rc=$?: $(tail -n 1 "$OUT/prefill_kernel_tests.log")"
timeout -k 10 200 python3 -m pytest -q -s -p no:cacheprovider tests/gpu/test_model_parity_gpu.py \
  -k "expanded or triton_eager or fa3" >"$OUT/prefill_parity_tests.log" 2>&1
echo "parity tests rc=$?: $(tail -n 1 "$OUT/prefill_parity_tests.log")"
grep -E '^\[' "$OUT/prefill_parity_tests.log"
(cd benchmarks && timeout -k 10 200 python3 kernels.py --only varlen,fa3) >"$OUT/prefill_kernels.log" 2>&1
echo "kernels.py rc=$?"
grep -E 'rel err|varlen_attention|fa3_varlen|kv_b_proj' "$OUT/prefill_kernels.log" | tail -n 25
timeout -k 10 240 python3 benchmarks/model_bench.py --batches 1 --iters 5 --budget-s 200 \
  --prefill-tokens 8192 >"$OUT/prefill_model.log" 2>&1
echo "model_bench rc=$?"
sed -n '/^prefill, one chunk/,$p' "$OUT/prefill_model.log"
