"""The skinny-product part of benchmarks/kernels.py (`--only skinny`): kernels/skinny_gemm against
the GEMM library for the products of a small decode step, and a sweep of its launch settings.

The measured launches in kernels/skinny_gemm.py (`_MEASURED`) are this sweep's fastest rows.
"""

from __future__ import annotations

import time

import torch
from bench_common import BF16, DEV, EXPERTS, HEADS, Row, graph_ms, row

from glm47.kernels.pdl import pdl_supported, set_pdl
from glm47.kernels.skinny_gemm import SkinnyLaunch, skinny_gemm, skinny_launch

# (name, groups, N, K, weight dtype, transposed) of the small-step products of a decode step: the
# fused q_a + kv_a down-projection, q_b, MLA's absorbed per-head products (W_UK read through a
# transposed view), o_proj, the fp32 router, the shared expert's gate_up and down, and the dense
# first layer's gate_up and down.
SKINNY_SHAPES = [
    ("qkv_a", 1, 1344, 2048, BF16, False), ("q_b", 1, 5120, 768, BF16, False),
    ("w_uk", HEADS, 512, 192, BF16, True), ("w_uv", HEADS, 256, 512, BF16, False),
    ("o_proj", 1, 2048, 5120, BF16, False), ("router", 1, EXPERTS, 2048, torch.float32, False),
    ("shared gate_up", 1, 3072, 2048, BF16, False), ("shared down", 1, 2048, 1536, BF16, False),
    ("dense gate_up", 1, 20480, 2048, BF16, False), ("dense down", 1, 2048, 10240, BF16, False),
]  # fmt: skip


def _skinny_sets(g: int, n: int, k: int, m: int, dtype: torch.dtype, transposed: bool) -> list:
    """Rotating (x, w) pairs: a decode step reads each weight once, from memory, not L2."""
    nbytes = g * n * k * torch.finfo(dtype).bits // 8
    sets = []
    for _ in range(max(2, -(-200_000_000 // nbytes))):
        x = torch.randn((g, m, k), dtype=BF16, device=DEV)
        if transposed:
            w = torch.randn((g, k, n), dtype=dtype, device=DEV).transpose(1, 2)
        else:
            w = torch.randn((g, n, k), dtype=dtype, device=DEV)
        sets.append((x, w) if g > 1 else (x[0], w[0]))
    return sets


def _library(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if x.dim() == 3:
        return torch.bmm(x, w.transpose(1, 2))
    return torch.nn.functional.linear(x.to(w.dtype), w)


def _skinny_variants(n: int, k: int) -> list[SkinnyLaunch]:
    """Launch settings swept at one token: CUDA-core and tensor-core products, column blocks, K
    blocks, the split of K, warps and pipeline stages, with the K loop unrolled or not."""
    sms = torch.cuda.get_device_properties(DEV).multi_processor_count
    out = []
    for bn in (4, 8, 16):  # CUDA-core products: the weight tile straight to registers
        for bk in (512, 1024):
            k_blocks = -(-k // bk)
            for split in (1, 2, 4):
                kps = -(-k_blocks // min(split, k_blocks)) * bk
                for warps, unroll in ((4, False), (4, True), (8, True)):
                    out.append(SkinnyLaunch(bn, bk, -(-k // kps), kps, warps, 3, 4, unroll))
    for bn in (16, 32):  # tensor-core products
        for bk in (128, 256):
            k_blocks = -(-k // bk)
            for per_sm in (1, 2, 4):
                split = max(1, min(round(per_sm * sms / -(-n // bn)), k_blocks))
                kps = -(-k_blocks // split) * bk
                for stages, unroll in ((3, False), (5, False), (3, True)):
                    out.append(SkinnyLaunch(bn, bk, -(-k // kps), kps, 4, stages, 0, unroll))
    return sorted(set(out))


def bench_skinny(ceil: dict, sweep_s: float = 200.0, shapes: set[str] | None = None) -> list[Row]:
    """skinny_gemm against the library (F.linear / bmm) at 1 and 8 tokens, from CUDA graphs over
    rotating weights: the default launch, plainly and with programmatic dependent launch (calls of
    the graph then overlap as a decode step's chain would), and at one token a sweep of launch
    settings while `sweep_s` seconds last. `shapes`: the names of SKINNY_SHAPES to run (all by
    default)."""
    sweep_until = time.monotonic() + sweep_s
    rows = []
    for name, g, n, k, dtype, transposed in SKINNY_SHAPES:
        if shapes is not None and name not in shapes:
            continue
        for m in (1, 8):
            sets = _skinny_sets(g, n, k, m, dtype, transposed)
            elem = torch.finfo(dtype).bits // 8
            nbytes, flops = g * (elem * n * k + 2 * (m * k + m * n)), 2 * g * m * n * k
            shape = f"{name} M={m} N={n} K={k}"
            rows.append(row("skinny_gemm", shape, "library", graph_ms(_library, sets), nbytes,
                            flops, ceil))  # fmt: skip
            rows.append(row("skinny_gemm", shape, f"triton {skinny_launch(n, k)}",
                            graph_ms(skinny_gemm, sets), nbytes, flops, ceil))  # fmt: skip
            if pdl_supported(torch.device(DEV)):
                set_pdl(True)
                try:
                    ms = graph_ms(skinny_gemm, sets)
                finally:
                    set_pdl(False)
                rows.append(row("skinny_gemm", shape, "triton pdl", ms, nbytes, flops, ceil))
            if m == 1:
                for cfg in _skinny_variants(n, k):
                    if time.monotonic() > sweep_until:
                        break
                    ms = graph_ms(skinny_gemm, sets, launch=cfg)
                    rows.append(row("skinny_gemm", shape, f"sweep {tuple(cfg)}", ms, nbytes,
                                    flops, ceil))  # fmt: skip
            del sets
    return rows
