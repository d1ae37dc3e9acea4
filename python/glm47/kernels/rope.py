"""Interleaved (GPT-J pair) rotary embedding of q_rope and k_rope, in place.

Pair i = (x[2i], x[2i+1]) is rotated by angle pos * theta^(-2i/R). The result is written in the
half-split layout `[x0 cos - x1 sin | x1 cos + x0 sin]` (evens' results, then odds'), as the model's
reference implementation returns it; q and k share the layout, so their dot products are unchanged.
Products are rounded to the activation dtype before the sum, as in the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from glm47.kernels.pdl import pdl_wait, use_pdl


@triton.jit
def _rope_kernel(
    q_ptr,  # [T, H, R] q_rope
    k_ptr,  # [T, R] k_rope
    pos_ptr,  # [T] int64
    cs_ptr,  # [max_pos, R]: cos of the R/2 pair angles, then their sin
    stride_qt,
    stride_qh,
    stride_kt,
    stride_cs,
    num_heads,
    HALF: tl.constexpr,
    BLOCK_H: tl.constexpr,  # > num_heads: rows 0..H-1 are the query heads, row H the key
    USE_PDL: tl.constexpr,
):
    """One token per program: its query heads and its key as one tile, one read of cos and sin."""
    pdl_wait(USE_PDL)
    t = tl.program_id(0).to(tl.int64)
    offs_h = tl.arange(0, BLOCK_H)
    offs_i = tl.arange(0, HALF)
    pos = tl.load(pos_ptr + t)
    cos = tl.load(cs_ptr + pos * stride_cs + offs_i)[None, :]  # [1, HALF]
    sin = tl.load(cs_ptr + pos * stride_cs + HALF + offs_i)[None, :]
    q_rows = q_ptr + t * stride_qt + offs_h * stride_qh
    k_rows = k_ptr + t * stride_kt + offs_h * 0
    row = tl.where(offs_h < num_heads, q_rows, k_rows)[:, None]  # [BLOCK_H, 1]
    mask = (offs_h <= num_heads)[:, None]
    offs_r = tl.arange(0, 2 * HALF)
    x = tl.load(row + offs_r[None, :], mask=mask, other=0.0)  # [BLOCK_H, R], contiguous
    x1, x2 = tl.split(tl.reshape(x, [BLOCK_H, HALF, 2]))  # evens, odds: [BLOCK_H, HALF]
    dt = x1.dtype
    a = (x1 * cos).to(dt).to(tl.float32) - (x2 * sin).to(dt).to(tl.float32)
    b = (x2 * cos).to(dt).to(tl.float32) + (x1 * sin).to(dt).to(tl.float32)
    tl.store(row + offs_i[None, :], a.to(dt), mask=mask)
    tl.store(row + HALF + offs_i[None, :], b.to(dt), mask=mask)


def rope_cos_sin(
    max_pos: int, rot_dim: int, theta: float, dtype: torch.dtype, device: torch.device | str
) -> torch.Tensor:  # [max_pos, rot_dim]
    """The cos|sin table: angles in fp32, then cast to the activation dtype."""
    inv_freq = theta ** -(
        torch.arange(0, rot_dim, 2, dtype=torch.int64, device=device).float() / rot_dim
    )
    angles = torch.arange(max_pos, device=device).float()[:, None] * inv_freq[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=-1).to(dtype)


def apply_rope_(
    q_rope: torch.Tensor,  # [T, H, R], may be a strided view of q
    k_rope: torch.Tensor,  # [T, R]
    positions: torch.Tensor,  # [T] int64
    cos_sin: torch.Tensor,  # [max_pos, R], from rope_cos_sin
) -> None:
    """Rotate q_rope and k_rope in place, in one launch."""
    t, _, r = q_rope.shape
    if k_rope.shape != (t, r) or positions.shape != (t,) or cos_sin.shape[1] != r:
        raise ValueError(
            f"shapes do not fit: q {tuple(q_rope.shape)}, k {tuple(k_rope.shape)}, "
            f"positions {tuple(positions.shape)}, cos_sin {tuple(cos_sin.shape)}"
        )
    if r & (r - 1) or r < 4:
        raise ValueError(f"rope width must be a power of two >= 4, got {r}")
    if positions.dtype != torch.int64 or cos_sin.dtype != q_rope.dtype:
        raise ValueError("positions must be int64 and cos_sin in the activation dtype")
    if q_rope.stride(2) != 1 or k_rope.stride(1) != 1:
        raise ValueError("rope inputs need a contiguous last dimension")
    if t == 0:
        return
    heads = q_rope.shape[1]
    _rope_kernel[(t,)](
        q_rope, k_rope, positions, cos_sin,
        q_rope.stride(0), q_rope.stride(1), k_rope.stride(0), cos_sin.stride(0), heads,
        HALF=r // 2, BLOCK_H=triton.next_power_of_2(heads + 1), num_warps=2 if heads > 4 else 1,
        USE_PDL=use_pdl(k_rope), launch_pdl=use_pdl(k_rope),
    )  # fmt: skip


def rope_ref(
    x: torch.Tensor,  # [..., R]
    positions: torch.Tensor,  # [T]: x's first dim
    cos_sin: torch.Tensor,  # [max_pos, R]
) -> torch.Tensor:  # [..., R]
    """Plain torch reference (returns a new tensor)."""
    half = x.shape[-1] // 2
    cs = cos_sin[positions]  # [T, R]
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (half,)
    cos, sin = cs[:, :half].reshape(shape), cs[:, half:].reshape(shape)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
