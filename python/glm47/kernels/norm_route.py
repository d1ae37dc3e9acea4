"""The MoE layer's input and routing in one launch, for a decode-sized batch: the residual add and
RMSNorm before the MoE (kernels/rmsnorm's rounding), the router's fp32 logits of the normalised
rows, and their routing with the pairs' expert-sorted layout (`routing.route_align`).

The grid tiles tokens and experts for the norm and the product. Each program, its logits stored,
counts itself in a counter of the router weight (kernels/counters); the last of them runs the
routing over every token in the same launch, as the split-K sum of kernels/skinny_gemm does, and
sets the counter back to zero. A decode step at batch 1 is a chain of short, latency-bound
kernels: this is one launch where the norm with the product and the routing were two (3.30 and
3.23 µs a layer on an H100, run AZ in docs/gpu-notes.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from glm47.kernels.counters import launch_counters
from glm47.kernels.moe_align import MoeAlignment
from glm47.kernels.pdl import pdl_wait, prefetch_l2, use_pdl
from glm47.kernels.rmsnorm import rms_normed
from glm47.kernels.routing import (
    check_route_align,
    check_routing,
    route_align_rows,
    route_meta,
    route_outputs,
)


@triton.jit
def _norm_route_align_kernel(
    x_ptr,  # [T, D]
    res_ptr,  # [T, D]
    norm_w_ptr,  # [D]
    out_ptr,  # [T, D]: the normalised rows (the experts' input)
    res_out_ptr,  # [T, D]: x + residual
    gate_ptr,  # [E, D] fp32
    logits_ptr,  # [T, E] fp32
    counter_ptr,  # [1] int32, zero between launches: the programs done with their logits
    bias_ptr,  # [E] fp32
    ids_ptr,  # [T, K1] int32, K1 = K + SHARED
    weights_ptr,  # [T, K1] fp32
    sorted_ids_ptr,  # [max_padded] int32
    expert_ids_ptr,  # [max_blocks] int32
    num_padded_ptr,  # [1] int32
    num_tokens,
    stride_x,
    stride_r,
    eps,
    scale,
    max_padded,
    max_blocks,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    EXPERTS_PER_PROGRAM: tl.constexpr,
    TOKENS_PER_PROGRAM: tl.constexpr,
    NUM_EXPERTS: tl.constexpr,
    K: tl.constexpr,
    SHARED: tl.constexpr,
    RENORMALIZE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_FILL: tl.constexpr,
    BLOCK_B: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """Program (i, j): RMSNorm with the residual add (kernels/rmsnorm's rounding) of token tile j
    and the router's fp32 product of those rows with expert block i; programs (0, j) store the
    rows. The last program to store its logits then routes and aligns every token
    (`routing.route_align_rows`)."""
    pid_e = tl.program_id(0)
    offs_t = tl.program_id(1) * TOKENS_PER_PROGRAM + tl.arange(0, TOKENS_PER_PROGRAM)
    offs_d = tl.arange(0, BLOCK_D)
    t_ok = offs_t < num_tokens
    d_ok = offs_d < D
    mask = t_ok[:, None] & d_ok[None, :]
    norm_w = tl.load(norm_w_ptr + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    if USE_PDL:  # the router rows (no kernel writes them) into L2 while the previous kernel runs
        offs_e = pid_e * EXPERTS_PER_PROGRAM + tl.arange(0, EXPERTS_PER_PROGRAM)
        lines = tl.arange(0, BLOCK_D // 32) * 32  # 32 fp32 = one 128-byte line
        rows = tl.minimum(offs_e, NUM_EXPERTS - 1)[:, None] * D
        prefetch_l2(gate_ptr + rows + tl.minimum(lines, D - 1)[None, :])
    pdl_wait(USE_PDL)
    row = tl.load(x_ptr + offs_t[:, None] * stride_x + offs_d[None, :], mask=mask, other=0.0)
    res = tl.load(res_ptr + offs_t[:, None] * stride_r + offs_d[None, :], mask=mask, other=0.0)
    h = (row.to(tl.float32) + res.to(tl.float32)).to(row.dtype)  # [TOKENS, BLOCK_D]
    y = rms_normed(h, norm_w[None, :], eps, D, 1)
    if pid_e == 0:
        tl.store(res_out_ptr + offs_t[:, None] * D + offs_d[None, :], h, mask=mask)
        tl.store(out_ptr + offs_t[:, None] * D + offs_d[None, :], y, mask=mask)
    yf = y.to(tl.float32)
    for i in tl.static_range(EXPERTS_PER_PROGRAM):
        e = pid_e * EXPERTS_PER_PROGRAM + i
        if e < NUM_EXPERTS:
            gate = tl.load(gate_ptr + e * D + offs_d, mask=d_ok, other=0.0)  # [BLOCK_D] fp32
            logit = tl.sum(yf * gate[None, :], 1)  # [TOKENS]
            tl.store(logits_ptr + offs_t * NUM_EXPERTS + e, logit, mask=t_ok)
    # As the split-K sum of kernels/skinny_gemm: every thread's logits are stored before the
    # counter moves (the barrier), and the acq_rel add publishes them to the program that gets
    # the count of all the others back, which reads them from L2 (.cg), not from a stale L1.
    tl.debug_barrier()
    last = tl.num_programs(0) * tl.num_programs(1) - 1
    if tl.atomic_add(counter_ptr, 1, sem="acq_rel") == last:
        route_align_rows(  # the logits' row stride is E: they are contiguous
            logits_ptr, bias_ptr, ids_ptr, weights_ptr, sorted_ids_ptr, expert_ids_ptr,
            num_padded_ptr, num_tokens, NUM_EXPERTS, scale, max_padded, max_blocks, NUM_EXPERTS,
            K, SHARED, RENORMALIZE, BLOCK_T, BLOCK_E, BLOCK_M, BLOCK_FILL, BLOCK_B, ".cg",
        )  # fmt: skip
        tl.atomic_xchg(counter_ptr, 0)  # zero for the next launch (graph replays reuse it)


NORM_ROUTE_EXPERTS_PER_PROGRAM = 4
NORM_ROUTE_TOKENS_PER_PROGRAM = 4


def norm_route_align(
    x: torch.Tensor,  # [T, D]
    residual: torch.Tensor,  # [T, D]
    norm_weight: torch.Tensor,  # [D]
    eps: float,
    gate_weight: torch.Tensor,  # [E, D] fp32, the router
    correction_bias: torch.Tensor,  # [E] fp32
    top_k: int,
    renormalize: bool,
    scale: float,
    block_m: int,
    shared: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, MoeAlignment]:
    """The MoE layer's input and routing in one launch: `normed, new_residual =
    rmsnorm(x, norm_weight, eps, residual)` (kernels/rmsnorm), the router's logits
    `normed.float() @ gate_weight.T`, and `route_align` of them, run by the last program to finish
    its logits. Returns (normed, new_residual, ids, weights, alignment).

    The launch counts its programs in a counter per router weight (kernels/counters), so the first
    call for a weight must not be made during a CUDA graph capture (RuntimeError)."""
    normed, new_residual, _, ids, weights, al = _norm_route_align(
        x, residual, norm_weight, eps, gate_weight, correction_bias, top_k, renormalize, scale,
        block_m, shared,
    )  # fmt: skip
    return normed, new_residual, ids, weights, al


def _norm_route_align(
    x: torch.Tensor,  # [T, D]
    residual: torch.Tensor,  # [T, D]
    norm_weight: torch.Tensor,  # [D]
    eps: float,
    gate_weight: torch.Tensor,  # [E, D] fp32
    correction_bias: torch.Tensor,  # [E] fp32
    top_k: int,
    renormalize: bool,
    scale: float,
    block_m: int,
    shared: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, MoeAlignment]:
    """`norm_route_align`, with the router's logits [T, E] fp32 third (what the routing read)."""
    t, d = x.shape
    e = gate_weight.shape[0]
    _check_norm_router(x, residual, norm_weight, gate_weight)
    check_routing((t, e), None, correction_bias, top_k)  # before any launch
    check_route_align(t, e, block_m)
    dev = x.device
    normed = torch.empty((t, d), dtype=x.dtype, device=dev)
    new_residual = torch.empty((t, d), dtype=x.dtype, device=dev)
    logits = torch.empty((t, e), dtype=torch.float32, device=dev)
    ids, weights, al = route_outputs(t, e, top_k, shared, block_m, dev)
    counter = launch_counters("norm_route_align", gate_weight, 1)
    per_program = NORM_ROUTE_EXPERTS_PER_PROGRAM
    tokens = min(NORM_ROUTE_TOKENS_PER_PROGRAM, triton.next_power_of_2(t))
    grid = (triton.cdiv(e, per_program), triton.cdiv(t, tokens))
    block_d = triton.next_power_of_2(d)
    pdl = use_pdl(x)
    # The warps suit the norm and the product (a [tokens, D] tile); the last program's routing
    # runs on them too, though its reductions then cross warps through shared memory (route_align
    # keeps to one warp): a few barriers each, against the launch of its own that this saves.
    _norm_route_align_kernel[grid](
        x, residual, norm_weight, normed, new_residual, gate_weight, logits, counter,
        correction_bias.contiguous(), ids, weights, al.sorted_ids, al.expert_ids, al.num_padded,
        t, x.stride(0), residual.stride(0), eps, scale, al.sorted_ids.shape[0],
        al.expert_ids.shape[0], D=d, BLOCK_D=block_d, EXPERTS_PER_PROGRAM=per_program,
        TOKENS_PER_PROGRAM=tokens, **route_meta(t, e, top_k, shared, renormalize, block_m),
        USE_PDL=pdl, num_warps=min(8, max(1, block_d // 256)), launch_pdl=pdl,
    )  # fmt: skip
    return normed, new_residual, logits, ids, weights, al


def _check_norm_router(
    x: torch.Tensor, residual: torch.Tensor, norm_weight: torch.Tensor, gate_weight: torch.Tensor
) -> None:
    """Checks the norm's and the router's operands against x [T, D]."""
    d = x.shape[1]
    e = gate_weight.shape[0]
    if residual.shape != x.shape or residual.dtype != x.dtype or norm_weight.shape != (d,):
        raise ValueError(
            f"x {tuple(x.shape)}, residual {tuple(residual.shape)} and norm weight "
            f"{tuple(norm_weight.shape)} do not fit"
        )
    if x.stride(1) != 1 or residual.stride(1) != 1 or not norm_weight.is_contiguous():
        raise ValueError("x, residual and the norm weight need a contiguous last dimension")
    if gate_weight.shape != (e, d) or gate_weight.dtype != torch.float32:
        raise ValueError(f"gate_weight must be [E, {d}] fp32, got {tuple(gate_weight.shape)}")
    if not gate_weight.is_contiguous():
        raise ValueError("gate_weight must be contiguous")


__all__ = ["norm_route_align"]
