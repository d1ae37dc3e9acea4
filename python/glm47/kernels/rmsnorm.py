"""RMSNorm, optionally fused with the residual add that precedes it.

`h = x + residual` (rounded to the activation dtype, returned as the new residual), then
`weight * (h.float() * rsqrt(mean(h^2) + eps)).to(dtype)`, the model's RMSNorm rounding.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rmsnorm_kernel(
    x_ptr,  # [T, D]
    res_ptr,  # [T, D] (read when HAS_RES)
    w_ptr,  # [D]
    out_ptr,  # [T, D]
    res_out_ptr,  # [T, D] (written when HAS_RES)
    stride_x,
    stride_r,
    stride_o,
    stride_ro,
    D,
    eps,
    HAS_RES: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_D)
    mask = offs < D
    h = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    if HAS_RES:
        h = (h.to(tl.float32) + tl.load(res_ptr + row * stride_r + offs, mask=mask, other=0.0)).to(
            h.dtype
        )
        tl.store(res_out_ptr + row * stride_ro + offs, h, mask=mask)
    hf = h.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(hf * hf, 0) / D + eps)
    normed = (hf * rstd).to(h.dtype).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + offs, (normed * w).to(out_ptr.dtype.element_ty), mask=mask)


def rmsnorm(
    x: torch.Tensor,  # [T, D]
    weight: torch.Tensor,  # [D]
    eps: float,
    residual: torch.Tensor | None = None,  # [T, D]
) -> tuple[torch.Tensor, torch.Tensor | None]:  # normed [T, D], new residual [T, D] or None
    """RMSNorm of `x` (or of `x + residual`, which is also returned as the next residual)."""
    if x.dim() != 2 or weight.shape != (x.shape[1],):
        raise ValueError(
            f"x must be [T, D] and weight [D], got {tuple(x.shape)}, {tuple(weight.shape)}"
        )
    if x.stride(1) != 1 or weight.stride(0) != 1:
        raise ValueError("x and weight need a contiguous last dimension")
    if residual is not None and (residual.shape != x.shape or residual.stride(1) != 1):
        raise ValueError("residual must match x and be contiguous in its last dimension")
    if residual is not None and residual.dtype != x.dtype:
        raise ValueError(f"residual dtype {residual.dtype} != x dtype {x.dtype}")
    t, d = x.shape
    out = torch.empty_like(x)
    res_out = torch.empty_like(x) if residual is not None else None
    if t == 0:
        return out, res_out
    res_in = residual if residual is not None else x
    res_dst = res_out if res_out is not None else out
    block = triton.next_power_of_2(d)
    _rmsnorm_kernel[(t,)](
        x, res_in, weight, out, res_dst,
        x.stride(0), res_in.stride(0), out.stride(0), res_dst.stride(0), d, eps,
        HAS_RES=residual is not None, BLOCK_D=block, num_warps=min(16, max(1, block // 256)),
    )  # fmt: skip
    return out, res_out


def rmsnorm_ref(
    x: torch.Tensor,  # [T, D]
    weight: torch.Tensor,  # [D]
    eps: float,
    residual: torch.Tensor | None = None,  # [T, D]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Plain torch reference with the model's rounding points."""
    h = x + residual if residual is not None else x
    hf = h.float()
    normed = (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return weight * normed, (h if residual is not None else None)
