"""Fused MoE experts for a few tokens: two matrix-vector launches, no expert sorting.

With one to a few tokens, each routed (token, expert) pair multiplies one activation row by one
expert's weights, and the layer is bound by reading the active experts once. The grouped GEMMs of
`fused_moe` pad every pair to a 16-row tile and need the pairs sorted by expert first (`moe_align`),
then a third launch sums a token's top-k rows. Here:

- launch 1, one program per (pair, block of intermediate columns): the program reads its pair's
  expert id, streams that expert's gate and up rows along H against the token's row of `x`, and
  writes `silu(gate) * up` for the pair ([P, I]);
- launch 2, one program per (token, block of hidden columns): the program loops over the token's
  top-k pairs, streams each expert's down-projection rows along I against the pair's activation,
  scales by the routing weight, and writes the token's sum ([T, H]).

Rounding follows the grouped path: the activation is rounded once to the activation dtype, each
pair's weighted down-projection is rounded before the fp32 sum, and the sum is rounded once.
Programs of pairs that share an expert read its weights again, mostly from L2.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl


class GemvLaunch(NamedTuple):
    """Block sizes of the two launches: (columns, K chunk) per program, and warps."""

    up_block_n: int = 16
    up_block_k: int = 256
    down_block_n: int = 8
    down_block_k: int = 256
    num_warps: int = 4


@triton.jit
def _gemv_gate_up_kernel(
    x_ptr,  # [T, H]
    w_ptr,  # [E, 2I, H]: gate rows, then up rows
    ids_ptr,  # [P] int32: the expert of each pair (pair = t * TOP_K + j)
    act_ptr,  # [P, I]
    hidden,
    inter,
    stride_xt,
    stride_we,
    stride_wn,
    TOP_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pair = tl.program_id(0)
    token = pair // TOP_K
    expert = tl.load(ids_ptr + pair).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < inter
    offs_k = tl.arange(0, BLOCK_K)
    gate_rows = w_ptr + expert * stride_we + offs_n[:, None].to(tl.int64) * stride_wn
    up_rows = gate_rows + inter * stride_wn
    x_row = x_ptr + token.to(tl.int64) * stride_xt
    acc_gate = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(0, hidden, BLOCK_K):
        k_ok = offs_k < hidden - k0
        xk = tl.load(x_row + k0 + offs_k, mask=k_ok, other=0.0).to(tl.float32)  # [BK]
        mask = n_ok[:, None] & k_ok[None, :]
        gate = tl.load(gate_rows + k0 + offs_k[None, :], mask=mask, other=0.0)  # [BN, BK]
        up = tl.load(up_rows + k0 + offs_k[None, :], mask=mask, other=0.0)
        acc_gate += gate.to(tl.float32) * xk[None, :]
        acc_up += up.to(tl.float32) * xk[None, :]
    gate_sum = tl.sum(acc_gate, axis=1)  # [BN]
    up_sum = tl.sum(acc_up, axis=1)
    act = gate_sum * tl.sigmoid(gate_sum) * up_sum
    out = act_ptr + pair.to(tl.int64) * inter + offs_n
    tl.store(out, act.to(act_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def _gemv_down_kernel(
    act_ptr,  # [P, I]
    w_ptr,  # [E, H, I]
    ids_ptr,  # [P] int32
    weights_ptr,  # [P] fp32 routing weights
    out_ptr,  # [T, H]
    hidden,
    inter,
    stride_we,
    stride_wn,
    stride_ot,
    TOP_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    token = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < hidden
    offs_k = tl.arange(0, BLOCK_K)
    total = tl.zeros([BLOCK_N], dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        pair = token * TOP_K + j
        expert = tl.load(ids_ptr + pair).to(tl.int64)
        rows = w_ptr + expert * stride_we + offs_n[:, None].to(tl.int64) * stride_wn
        act_row = act_ptr + pair.to(tl.int64) * inter
        acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        for k0 in range(0, inter, BLOCK_K):
            k_ok = offs_k < inter - k0
            a = tl.load(act_row + k0 + offs_k, mask=k_ok, other=0.0).to(tl.float32)  # [BK]
            w = tl.load(rows + k0 + offs_k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            acc += w.to(tl.float32) * a[None, :]
        weighted = tl.sum(acc, axis=1) * tl.load(weights_ptr + pair)  # [BN]
        total += weighted.to(out_ptr.dtype.element_ty).to(tl.float32)
    out = out_ptr + token.to(tl.int64) * stride_ot + offs_n
    tl.store(out, total.to(out_ptr.dtype.element_ty), mask=n_ok)


def fused_experts_gemv(
    x: torch.Tensor,  # [T, H]
    w13: torch.Tensor,  # [E, 2I, H], gate rows first
    w2: torch.Tensor,  # [E, H, I]
    topk_weights: torch.Tensor,  # [T, top_k] fp32, already renormalised and scaled
    topk_ids: torch.Tensor,  # [T, top_k] int32
    launch: GemvLaunch | None = None,
) -> torch.Tensor:  # [T, H]
    """sum_j topk_weights[t, j] * expert_{topk_ids[t, j]}(x[t]) in two launches (module docstring).

    Shapes are checked by the caller (`fused_moe.fused_experts`)."""
    launch = launch or GemvLaunch()
    t, hidden = x.shape
    inter = w2.shape[2]
    top_k = topk_ids.shape[1]
    if w13.stride(2) != 1 or w2.stride(2) != 1 or x.stride(1) != 1:
        raise ValueError("x, w13 and w2 need a contiguous last dimension")
    pairs = t * top_k
    out = torch.empty((t, hidden), dtype=x.dtype, device=x.device)
    if t == 0:
        return out
    ids = topk_ids.reshape(-1).contiguous()  # [P]
    weights = topk_weights.reshape(-1).contiguous()  # [P]
    act = torch.empty((pairs, inter), dtype=x.dtype, device=x.device)  # [P, I]
    _gemv_gate_up_kernel[(pairs, triton.cdiv(inter, launch.up_block_n))](
        x, w13, ids, act, hidden, inter, x.stride(0), w13.stride(0), w13.stride(1),
        TOP_K=top_k, BLOCK_N=launch.up_block_n, BLOCK_K=launch.up_block_k,
        num_warps=launch.num_warps,
    )  # fmt: skip
    _gemv_down_kernel[(t, triton.cdiv(hidden, launch.down_block_n))](
        act, w2, ids, weights, out, hidden, inter, w2.stride(0), w2.stride(1), out.stride(0),
        TOP_K=top_k, BLOCK_N=launch.down_block_n, BLOCK_K=launch.down_block_k,
        num_warps=launch.num_warps,
    )  # fmt: skip
    return out


__all__ = ["GemvLaunch", "fused_experts_gemv"]
