"""`x @ w.T` for a few rows of `x`: the dense projections of a small decode batch.

With 1-16 tokens a projection is a matrix-vector product bound by reading its weight once. Each
program owns BLOCK_N output columns for every row of `x` and streams their weight rows along K;
`x` (at most 16 rows) is re-read from L2. `accumulate` adds the product into `out` (the shared
expert's down projection summed into the routed experts' output) instead of overwriting it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from glm47.kernels.device import num_sms

MAX_ROWS = 16  # one tensor-core tile of rows; larger batches belong to a GEMM library


# The row count changes from step to step outside CUDA graphs: one compiled variant serves all.
@triton.jit(do_not_specialize=["m"])
def _skinny_gemm_kernel(
    x_ptr,  # [M, K]
    w_ptr,  # [N, K]
    out_ptr,  # [M, N]
    m,
    n,
    k,
    stride_xm,
    stride_wn,
    stride_om,
    ACCUMULATE: tl.constexpr,
    PRECISION: tl.constexpr,  # "ieee" for fp32 inputs (no TF32 rounding), else the default
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < m
    mask_n = offs_n < n
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, k, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < k
        x = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
            mask=mask_m[:, None] & mask_k[None, :],
            other=0.0,
        )  # [BLOCK_M, BLOCK_K]
        w = tl.load(
            w_ptr + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :],
            mask=mask_n[:, None] & mask_k[None, :],
            other=0.0,
        )  # [BLOCK_N, BLOCK_K]
        acc += tl.dot(x, tl.trans(w), input_precision=PRECISION)
    out = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    if ACCUMULATE:
        acc += tl.load(out, mask=mask, other=0.0).to(tl.float32)
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)


def skinny_launch(n: int, k: int, num_sms: int = 132) -> tuple[int, int, int, int]:
    """(block_n, block_k, num_warps, num_stages): the widest column block that still gives every
    multiprocessor a program, so that the weight streams through all of them at once."""
    block_n = 64
    while block_n > 16 and triton.cdiv(n, block_n) < num_sms:
        block_n //= 2
    block_k = min(256, max(32, triton.next_power_of_2(k)))
    return block_n, block_k, 4, 4


def skinny_gemm(
    x: torch.Tensor,  # [M, K], M <= MAX_ROWS
    w: torch.Tensor,  # [N, K] (an nn.Linear weight)
    out: torch.Tensor | None = None,  # [M, N]
    accumulate: bool = False,
    launch: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:  # [M, N]
    """`x @ w.T`, or `out += x @ w.T` with `accumulate`; fp32 accumulation, rounded once."""
    if x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"x {tuple(x.shape)} and w {tuple(w.shape)} must be [M, K] and [N, K]")
    m, k = x.shape
    n = w.shape[0]
    if m > MAX_ROWS:
        raise ValueError(f"skinny_gemm takes at most {MAX_ROWS} rows, got {m}")
    if x.stride(1) != 1 or w.stride(1) != 1:
        raise ValueError("x and w need a contiguous last dimension")
    if x.dtype != w.dtype:
        raise ValueError(f"x dtype {x.dtype} != w dtype {w.dtype}")
    if out is None:
        if accumulate:
            raise ValueError("accumulate needs out")
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    elif out.shape != (m, n) or out.stride(1) != 1:
        raise ValueError(f"out must be [{m}, {n}] with a contiguous last dimension")
    if m == 0 or n == 0:
        return out
    block_n, block_k, num_warps, num_stages = launch or skinny_launch(n, k, num_sms(x.device))
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    _skinny_gemm_kernel[(triton.cdiv(n, block_n),)](
        x, w, out, m, n, k, x.stride(0), w.stride(0), out.stride(0),
        ACCUMULATE=accumulate, PRECISION=precision, BLOCK_M=16, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return out


def skinny_gemm_ref(
    x: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None, accumulate: bool = False
) -> torch.Tensor:
    prod = x.float() @ w.float().T
    if accumulate:
        assert out is not None
        prod = prod + out.float()
    return prod.to(x.dtype)


__all__ = ["MAX_ROWS", "skinny_gemm", "skinny_gemm_ref", "skinny_launch"]
