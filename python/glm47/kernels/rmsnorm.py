"""RMSNorm, optionally fused with the residual add that precedes it.

`h = x + residual` (rounded to the activation dtype, returned as the new residual), then
`weight * (h.float() * rsqrt(mean(h^2) + eps)).to(dtype)`, the model's RMSNorm rounding.

`rmsnorm_pair` normalises two column ranges of each row with their own weights in one launch: MLA's
compressed query and latent, which sit side by side in the output of one projection.

Both take the projection before them as a tensor or as a `SplitProduct` (kernels/split_k), whose
partials they sum as they load it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from glm47.kernels.pdl import pdl_wait, use_pdl
from glm47.kernels.split_k import SplitProduct, load_summed, product_tensor, summed_args


@triton.jit
def _rmsnorm_kernel(
    x_ptr,  # [T, D], or a SplitProduct's partials [NUM_PARTS, T, D]
    res_ptr,  # [T, D] (read when HAS_RES)
    w_ptr,  # [D]
    out_ptr,  # [T, D]
    res_out_ptr,  # [T, D] (written when HAS_RES)
    stride_x,
    stride_xs,
    stride_r,
    stride_o,
    stride_ro,
    D,
    eps,
    HAS_RES: tl.constexpr,
    NUM_PARTS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_D)
    mask = offs < D
    h = load_summed(
        x_ptr + row * stride_x + offs, mask, stride_xs, NUM_PARTS, out_ptr.dtype.element_ty
    )
    if HAS_RES:
        h = (h.to(tl.float32) + tl.load(res_ptr + row * stride_r + offs, mask=mask, other=0.0)).to(
            h.dtype
        )
        tl.store(res_out_ptr + row * stride_ro + offs, h, mask=mask)
    _store_normed(h, w_ptr, out_ptr + row * stride_o, offs, mask, eps, D)


@triton.jit
def rms_normed(h, w, eps, D, AXIS: tl.constexpr):
    """`w * (h.float() * rsqrt(mean(h^2) + eps)).to(dtype)` along AXIS of `h` (masked past D, in
    the activation dtype; `w` fp32, broadcastable): the model's rounding points, shared by every
    kernel that normalises."""
    hf = h.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(hf * hf, AXIS, keep_dims=True) / D + eps)
    return ((hf * rstd).to(h.dtype).to(tl.float32) * w).to(h.dtype)


@triton.jit
def _store_normed(h, w_ptr, out_row, offs, mask, eps, D):
    """`rms_normed` of one row `h`, stored at `out_row`."""
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = rms_normed(h, w, eps, D, 0)
    tl.store(out_row + offs, y.to(out_row.dtype.element_ty), mask=mask)


@triton.jit
def _norm_row(
    x_row, stride_xs, w_ptr, out_row, eps, D: tl.constexpr, BLOCK_D: tl.constexpr,
    NUM_PARTS: tl.constexpr,
):  # fmt: skip
    """One row of RMSNorm without a residual."""
    offs = tl.arange(0, BLOCK_D)
    mask = offs < D
    h = load_summed(x_row + offs, mask, stride_xs, NUM_PARTS, out_row.dtype.element_ty)
    _store_normed(h, w_ptr, out_row, offs, mask, eps, D)


@triton.jit
def _rmsnorm_pair_kernel(
    x_ptr,  # [T, W], or a SplitProduct's partials [NUM_PARTS, T, W]
    wa_ptr,  # [D_A]
    wb_ptr,  # [D_B]
    out_a_ptr,  # [T, D_A]
    out_b_ptr,  # [T, D_B]
    tail_ptr,  # [T, W - TAIL] (TAIL > 0 only)
    stride_x,
    stride_xs,
    stride_a,
    stride_b,
    stride_t,
    eps,
    D_A: tl.constexpr,
    D_B: tl.constexpr,
    OFF_B: tl.constexpr,
    BLOCK_A: tl.constexpr,
    BLOCK_B: tl.constexpr,
    TAIL: tl.constexpr,  # > 0: the program of range B also stores columns [TAIL, W)
    W: tl.constexpr,
    BLOCK_TAIL: tl.constexpr,
    NUM_PARTS: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    if tl.program_id(1) == 0:
        _norm_row(x_row, stride_xs, wa_ptr, out_a_ptr + row * stride_a, eps, D_A, BLOCK_A,
                  NUM_PARTS)  # fmt: skip
    else:
        _norm_row(x_row + OFF_B, stride_xs, wb_ptr, out_b_ptr + row * stride_b, eps, D_B,
                  BLOCK_B, NUM_PARTS)  # fmt: skip
        if TAIL > 0:
            offs = tl.arange(0, BLOCK_TAIL)
            mask = offs < W - TAIL
            dst = tail_ptr + row * stride_t
            v = load_summed(x_row + TAIL + offs, mask, stride_xs, NUM_PARTS, dst.dtype.element_ty)
            tl.store(dst + offs, v, mask=mask)


def rmsnorm_pair(
    x: torch.Tensor | SplitProduct,  # [T, W]
    weight_a: torch.Tensor,  # [D_A]: normalises columns [0, D_A)
    weight_b: torch.Tensor,  # [D_B]: normalises columns [offset_b, offset_b + D_B)
    offset_b: int,
    eps: float,
    tail_from: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """RMSNorm of two column ranges of every row, each with its weight, in one launch: [T, D_A],
    [T, D_B], both contiguous. With `tail_from`, the same launch also returns columns
    [tail_from, W) of `x` as they are (contiguous; what a SplitProduct needs summed), else None.
    """
    d_a, d_b = weight_a.shape[0], weight_b.shape[0]
    if len(x.shape) != 2 or (isinstance(x, torch.Tensor) and x.stride(1) != 1):
        raise ValueError(f"x must be [T, W] with a contiguous last dimension, got {tuple(x.shape)}")
    t, width = x.shape
    if not (d_a <= offset_b and offset_b + d_b <= width):
        raise ValueError(f"ranges [0, {d_a}) and [{offset_b}, {offset_b + d_b}) do not fit {width}")
    if tail_from is not None and not 0 <= tail_from < width:
        raise ValueError(f"tail_from {tail_from} is outside [0, {width})")
    if weight_a.stride(0) != 1 or weight_b.stride(0) != 1:
        raise ValueError("weights must be contiguous")
    dtype = x.dtype
    out_a = torch.empty((t, d_a), dtype=dtype, device=x.device)
    out_b = torch.empty((t, d_b), dtype=dtype, device=x.device)
    tail = None
    if tail_from is not None:
        tail = torch.empty((t, width - tail_from), dtype=dtype, device=x.device)
    if t == 0:
        return out_a, out_b, tail
    src, stride_s, num_parts = summed_args(x)
    block_a, block_b = triton.next_power_of_2(d_a), triton.next_power_of_2(d_b)
    # Partials to sum: twice the warps, so more of their loads are in flight (qkv_a's six at batch
    # 1 on an H200: 1.9 µs of the chain against 2.8 with half the warps, 2026-12-03).
    pdl = use_pdl(src)
    _rmsnorm_pair_kernel[(t, 2)](
        src, weight_a, weight_b, out_a, out_b, out_b if tail is None else tail,
        src.stride(-2), stride_s, out_a.stride(0), out_b.stride(0),
        0 if tail is None else tail.stride(0), eps,
        D_A=d_a, D_B=d_b, OFF_B=offset_b, BLOCK_A=block_a, BLOCK_B=block_b,
        TAIL=0 if tail_from is None else tail_from, W=width,
        BLOCK_TAIL=triton.next_power_of_2(max(1, width - (tail_from or 0))), NUM_PARTS=num_parts,
        num_warps=min(16, max(1, max(block_a, block_b) // (128 if num_parts else 256))),
        USE_PDL=pdl, launch_pdl=pdl,
    )  # fmt: skip
    return out_a, out_b, tail


def rmsnorm(
    x: torch.Tensor | SplitProduct,  # [T, D]
    weight: torch.Tensor,  # [D]
    eps: float,
    residual: torch.Tensor | None = None,  # [T, D]
) -> tuple[torch.Tensor, torch.Tensor | None]:  # normed [T, D], new residual [T, D] or None
    """RMSNorm of `x` (or of `x + residual`, which is also returned as the next residual)."""
    if len(x.shape) != 2 or weight.shape != (x.shape[1],):
        raise ValueError(
            f"x must be [T, D] and weight [D], got {tuple(x.shape)}, {tuple(weight.shape)}"
        )
    if (isinstance(x, torch.Tensor) and x.stride(1) != 1) or weight.stride(0) != 1:
        raise ValueError("x and weight need a contiguous last dimension")
    if residual is not None and (residual.shape != x.shape or residual.stride(1) != 1):
        raise ValueError("residual must match x and be contiguous in its last dimension")
    if residual is not None and residual.dtype != x.dtype:
        raise ValueError(f"residual dtype {residual.dtype} != x dtype {x.dtype}")
    t, d = x.shape
    out = torch.empty((t, d), dtype=x.dtype, device=x.device)
    res_out = torch.empty_like(out) if residual is not None else None
    if t == 0:
        return out, res_out
    src, stride_s, num_parts = summed_args(x)
    res_in = residual if residual is not None else out
    res_dst = res_out if res_out is not None else out
    block = triton.next_power_of_2(d)
    pdl = use_pdl(src)
    _rmsnorm_kernel[(t,)](
        src, res_in, weight, out, res_dst,
        src.stride(-2), stride_s, res_in.stride(0), out.stride(0), res_dst.stride(0), d, eps,
        HAS_RES=residual is not None, NUM_PARTS=num_parts, BLOCK_D=block,
        num_warps=min(16, max(1, block // 256)), USE_PDL=pdl, launch_pdl=pdl,
    )  # fmt: skip
    return out, res_out


def rmsnorm_ref(
    x: torch.Tensor | SplitProduct,  # [T, D]
    weight: torch.Tensor,  # [D]
    eps: float,
    residual: torch.Tensor | None = None,  # [T, D]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Plain torch reference with the model's rounding points."""
    x = product_tensor(x)
    h = x + residual if residual is not None else x
    hf = h.float()
    normed = (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return weight * normed, (h if residual is not None else None)
