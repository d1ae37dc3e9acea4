"""The MoE of a decode-sized step from the router's logits or from the attention block's output:
the routing with the pairs' layout (kernels/routing), then the grouped GEMMs with the shared
expert as one more expert and the top-k sum (kernels/fused_moe).

A one-token step takes no routing launch: the token's pairs need no layout (pair j is row block
j), so each program of the grouped GEMMs finds its own expert among the router's logits (the
`slot`-th best, `one_token_route`), as `route_align` would have picked it. That is one short
launch fewer between the router and the experts, for 2K maxima within a warp in every program.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from glm47.kernels.fused_moe import (
    choose_config,
    down_output,
    expert_weights,
    fused_experts,
    k_splits,
    prefetch_columns,
    tile_product,
)
from glm47.kernels.moe_config import MoeConfig
from glm47.kernels.pdl import pdl_wait, prefetch_l2, use_pdl
from glm47.kernels.routing import norm_route_align, norm_router, route_align
from glm47.kernels.split_k import SplitProduct
from glm47.kernels.topk_sum import topk_sum


@dataclass(frozen=True)
class RoutedExperts:
    """What a decode-sized step's MoE reads after the router's product: the routing's knobs and
    the experts' weights, with the shared expert as one more expert when given."""

    correction_bias: torch.Tensor  # [E] fp32, chooses experts without weighting them
    top_k: int
    renormalize: bool
    scale: float
    w13: torch.Tensor  # [E, 2I, H]
    w2: torch.Tensor  # [E, H, I]
    shared: tuple[torch.Tensor, torch.Tensor] | None = None  # the shared expert's [2I, H], [H, I]


def fused_moe_from_logits(
    x: torch.Tensor,  # [T, H], T <= routing.ROUTE_ALIGN_MAX_TOKENS
    logits: torch.Tensor,  # [T, E] fp32 router logits
    moe: RoutedExperts,
) -> torch.Tensor:  # [T, H]
    """The whole MoE of a decode-sized step after the router's product, in four launches: routing
    with the pairs' layout (`route_align`), the two grouped GEMMs (with the shared expert as one
    more expert when given) and the top-k sum; in three at one token (`fused_moe_one_token`)."""
    cfg = choose_config(x, moe.w13, moe.w2, moe.top_k)
    if x.shape[0] == 1:
        return fused_moe_one_token(x, logits, moe, cfg)
    ids, weights, align = route_align(
        logits, moe.correction_bias, moe.top_k, moe.renormalize, moe.scale, cfg.block_m,
        shared=moe.shared is not None,
    )  # fmt: skip
    return fused_experts(x, moe.w13, moe.w2, weights, ids, cfg, shared=moe.shared, align=align)


def fused_moe_from_residual(
    x: torch.Tensor | SplitProduct,  # [T, H], T <= ROUTE_ALIGN_MAX_TOKENS: attention's output
    residual: torch.Tensor,  # [T, H]
    norm_weight: torch.Tensor,  # [H]: the RMSNorm before the MoE
    eps: float,
    gate_weight: torch.Tensor,  # [E, H] fp32 router
    moe: RoutedExperts,
) -> tuple[torch.Tensor, torch.Tensor]:  # the MoE output [T, H], the new residual x + residual
    """A decode-sized step's RMSNorm (with the residual add) and MoE in five launches: the norm
    with the router's product, the routing with the pairs' layout (`routing.norm_route_align`),
    the two grouped GEMMs (with the shared expert as one more expert when given) and the top-k
    sum; in four at one token (`fused_moe_one_token`)."""
    cfg = choose_config(residual, moe.w13, moe.w2, moe.top_k)  # x's shape, dtype and device
    if x.shape[0] == 1:
        normed, new_residual, logits = norm_router(x, residual, norm_weight, eps, gate_weight)
        return fused_moe_one_token(normed, logits, moe, cfg), new_residual
    normed, new_residual, ids, weights, align = norm_route_align(
        x, residual, norm_weight, eps, gate_weight, moe.correction_bias, moe.top_k,
        moe.renormalize, moe.scale, cfg.block_m, shared=moe.shared is not None,
    )  # fmt: skip
    out = fused_experts(normed, moe.w13, moe.w2, weights, ids, cfg, shared=moe.shared, align=align)
    return out, new_residual


@triton.jit
def one_token_route(
    logits_ptr,  # [E] fp32: the token's router logits
    bias_ptr,  # [E] fp32: the correction bias
    slot,  # which of the token's pairs: 0..K-1 routed, K the shared expert
    scale,
    NUM_EXPERTS: tl.constexpr,
    K: tl.constexpr,
    RENORMALIZE: tl.constexpr,
    BLOCK_E: tl.constexpr,
    WARPS: tl.constexpr,  # the program's warps: each ranks the experts on its own
):
    """(expert, routing weight) of the token's pair `slot`, as `routing.route_align` writes
    them: routed experts in descending `sigmoid(logit) + bias` (the lower index first on a tie),
    weighted by their sigmoid scores over the chosen ones' sum (when RENORMALIZE) times `scale`;
    slot K is the shared expert, id NUM_EXPERTS with weight 1.

    Every program of the grouped GEMMs runs this before its weight loads, so it is kept to a
    short chain: the scores as integers of the same order, one row of them per warp, and each
    pick two maxima within the warp (the best score, then the lowest index holding it), with
    no exchange between warps until the last. A NaN logit takes some place among the scores;
    the expert named is always a valid one."""
    offs = tl.arange(0, BLOCK_E)[None, :]
    rows = tl.arange(0, WARPS)[:, None]
    valid = (offs < NUM_EXPERTS) & (rows >= 0)  # [WARPS, BLOCK_E]: a row per warp
    ptrs = rows * 0 + offs
    logit = tl.load(logits_ptr + ptrs, mask=valid, other=0.0, cache_modifier=".cg")
    score = tl.sigmoid(logit)
    bits = (score + tl.load(bias_ptr + ptrs, mask=valid, other=0.0)).to(tl.int32, bitcast=True)
    ordered = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # signed order = the floats' order
    gone: tl.constexpr = -(2**31) + 1  # below every score but a NaN's
    ordered = tl.where(valid, ordered, gone)
    rev = BLOCK_E - 1 - ptrs  # the reversed index: the maximum is the lowest expert
    mine = tl.zeros([WARPS], dtype=tl.int32)
    for i in tl.static_range(K):
        best = tl.max(ordered, 1)
        pick = tl.max(tl.where(ordered == best[:, None], rev, -1), 1)
        mine = tl.where(slot == i, pick, mine)
        ordered = tl.where(rev == pick[:, None], gone, ordered)
    expert = tl.minimum(BLOCK_E - 1 - mine, NUM_EXPERTS - 1)  # [WARPS], the same in each row
    weight = tl.sum(tl.where(ptrs == expert[:, None], score, 0.0), 1)
    if RENORMALIZE:  # the chosen ones are the valid experts taken out of the running
        chosen = valid & (ordered == gone)
        weight = weight / (tl.sum(tl.where(chosen, score, 0.0), 1) + 1e-20)
    shared = slot == K
    expert = tl.where(shared, NUM_EXPERTS, tl.max(expert, 0))
    return expert, tl.where(shared, 1.0, tl.max(weight, 0) * scale)


@triton.jit
def _one_token_gemm_kernel(
    a_ptr,  # [1, K] x (GATED), else [K1, K]: the pairs' intermediates
    w_ptr,  # [E, N_total, K]: N_total = 2N when GATED (gate rows, then up rows), else N
    shared_w_ptr,  # [N_total, K] expert E's weights (read when SHARED)
    c_ptr,  # [K1, N], or [SPLIT_K, K1, N] fp32 parts
    logits_ptr,  # [E] fp32 router logits
    bias_ptr,  # [E] fp32 correction bias
    N,
    K,
    scale,
    stride_am,
    stride_we,
    stride_wn,
    stride_cs,
    NUM_EXPERTS: tl.constexpr,
    TOP_K: tl.constexpr,
    SHARED: tl.constexpr,
    RENORMALIZE: tl.constexpr,
    GATED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_E: tl.constexpr,
    WARPS: tl.constexpr,
    K_PER_SPLIT: tl.constexpr,
    PREFETCH_K: tl.constexpr,
    LINE_ELEMS: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """Program (slot + K1 * n, split) of a one-token grouped GEMM: the token's pair `slot` (its
    expert ranked here from the logits) times column block n of that expert's weight, over the
    split's K columns. GATED: the gate/up GEMM (x's one row, SiLU(gate) * up); else the down GEMM
    (pair row `slot` of the intermediates, times its routing weight). The gate/up GEMM ranks after
    its wait (the logits are the previous kernel's output); the down GEMM ranks before it, since
    it launches only after every gate/up program has passed its own wait, when the logits are
    complete, and asks the start of its weight tile into L2 meanwhile. Before its wait the gate/up
    GEMM asks the shared expert's tiles (PREFETCH_K columns) into L2, in the shared slot's
    programs: the one weight it knows before the logits."""
    K1: tl.constexpr = TOP_K + SHARED
    slot = tl.program_id(0) % K1
    pid_n = tl.program_id(0) // K1
    k_start = tl.program_id(1) * K_PER_SPLIT
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = offs_n < N
    LINES: tl.constexpr = max(PREFETCH_K // LINE_ELEMS, 1)
    cols = k_start + tl.arange(0, LINES) * LINE_ELEMS
    rows = tl.minimum(offs_n, N - 1)
    if not GATED:
        expert, weight = one_token_route(logits_ptr, bias_ptr, slot, scale, NUM_EXPERTS, TOP_K,
                                         RENORMALIZE, BLOCK_E, WARPS)  # fmt: skip
        w_base = expert_weights(w_ptr, shared_w_ptr, expert.to(tl.int64), stride_we, NUM_EXPERTS,
                                SHARED)  # fmt: skip
        if PREFETCH_K > 0:
            prefetch_l2(w_base + rows[:, None] * stride_wn + cols[None, :])
    elif PREFETCH_K > 0 and SHARED:  # the shared expert's programs know their weight already
        if slot == TOP_K:
            tile = shared_w_ptr + rows[:, None] * stride_wn + cols[None, :]
            prefetch_l2(tile)
            prefetch_l2(tile + N * stride_wn)
    pdl_wait(USE_PDL)
    if GATED:
        expert, weight = one_token_route(logits_ptr, bias_ptr, slot, scale, NUM_EXPERTS, TOP_K,
                                         RENORMALIZE, BLOCK_E, WARPS)  # fmt: skip
        w_base = expert_weights(w_ptr, shared_w_ptr, expert.to(tl.int64), stride_we, NUM_EXPERTS,
                                SHARED)  # fmt: skip
    offs_m = tl.arange(0, BLOCK_M)
    row_ok = offs_m == 0  # one row of the block holds the pair
    a_row = 0 if GATED else slot
    offs_k = k_start + tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + a_row * stride_am + offs_m[:, None] * 0 + offs_k[None, :]  # [BM, BK]
    w_ptrs = w_base + offs_n[None, :] * stride_wn + offs_k[:, None]  # [BK, BN]
    k_len = tl.minimum(K_PER_SPLIT, K - k_start)
    acc = tile_product(a_ptrs, w_ptrs, N * stride_wn, row_ok, col_ok, offs_k, K, k_len,
                       BLOCK_M, BLOCK_N, BLOCK_K, GATED)  # fmt: skip
    if not GATED:
        acc = acc * weight
    c_ptrs = c_ptr + tl.program_id(1) * stride_cs + slot * N + offs_m[:, None] * 0
    c_ptrs += offs_n[None, :]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def _check_one_token(num_experts: int, moe: RoutedExperts) -> None:
    e, two_inter, hidden = moe.w13.shape
    if num_experts != e or moe.correction_bias.shape != (e,):
        raise ValueError(f"router of {num_experts} experts, bias {tuple(moe.correction_bias.shape)}"
                         f" and weights of {e} do not fit")  # fmt: skip
    if moe.correction_bias.dtype != torch.float32 or not moe.correction_bias.is_contiguous():
        raise ValueError("the correction bias must be contiguous fp32")
    if not 1 <= moe.top_k <= e or moe.top_k & (moe.top_k - 1):
        raise ValueError(f"top_k must be a power of two in [1, {e}], got {moe.top_k}")
    if moe.w2.shape != (e, hidden, two_inter // 2):
        raise ValueError(f"w13 {tuple(moe.w13.shape)} / w2 {tuple(moe.w2.shape)} do not fit")
    if moe.w13.stride(2) != 1 or moe.w2.stride(2) != 1:
        raise ValueError("the experts' weights need a contiguous last dimension")
    for w, s in zip((moe.w13, moe.w2), moe.shared or (), strict=False):
        if s.shape != w.shape[1:] or s.stride() != w.stride()[1:] or s.dtype != w.dtype:
            raise ValueError(f"shared weights {tuple(s.shape)} must be laid out as one expert "
                             f"of {tuple(w.shape)}")  # fmt: skip


def fused_moe_one_token(
    x: torch.Tensor,  # [1, H]
    logits: torch.Tensor,  # [1, E] fp32 router logits
    moe: RoutedExperts,
    cfg: MoeConfig | None = None,
) -> torch.Tensor:  # [1, H]
    """The MoE of one token in three launches: the gate/up GEMM, the down GEMM (both ranking
    the token's experts from the logits, see `one_token_route`) and the top-k sum (with the
    shared expert's row last when `moe.shared`). The same values as `route_align` then
    `fused_experts` (up to the renormalising sum's order)."""
    e, two_inter, hidden = moe.w13.shape
    inter = two_inter // 2
    _check_one_token(e, moe)
    if x.shape != (1, hidden) or x.dtype != moe.w13.dtype or x.stride(1) != 1:
        raise ValueError(f"x must be one contiguous [1, {hidden}] {moe.w13.dtype} row")
    if logits.shape != (1, e) or logits.dtype != torch.float32 or not logits.is_contiguous():
        raise ValueError(f"logits must be a contiguous [1, {e}] fp32 row")
    cfg = cfg or choose_config(x, moe.w13, moe.w2, moe.top_k)
    shared = moe.shared is not None
    k1 = moe.top_k + int(shared)
    shared_w13, shared_w2 = moe.shared or (moe.w13, moe.w2)
    inter_act = torch.empty((k1, inter), dtype=x.dtype, device=x.device)
    pdl = use_pdl(x)
    common = dict(
        NUM_EXPERTS=e, TOP_K=moe.top_k, SHARED=int(shared), RENORMALIZE=moe.renormalize,
        BLOCK_E=triton.next_power_of_2(e), LINE_ELEMS=128 // x.element_size(), USE_PDL=pdl,
        launch_pdl=pdl,
    )  # fmt: skip
    grid = (k1 * triton.cdiv(inter, cfg.block_n), 1)
    elem = x.element_size()
    shared_k = prefetch_columns(hidden, two_inter * elem, elem) if pdl and shared else 0
    _one_token_gemm_kernel[grid](
        x, moe.w13, shared_w13, inter_act, logits, moe.correction_bias, inter, hidden, moe.scale,
        0, moe.w13.stride(0), moe.w13.stride(1), 0, GATED=True, BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, K_PER_SPLIT=hidden, PREFETCH_K=shared_k,
        WARPS=cfg.num_warps, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **common,
    )  # fmt: skip
    down = cfg.down()
    k_per_split, splits = k_splits(inter, down.block_k, cfg.down_splits)
    per_pair = down_output(x, k1, hidden, splits)
    grid = (k1 * triton.cdiv(hidden, down.block_n), splits)
    prefetch_k = prefetch_columns(k_per_split, k1 * hidden * x.element_size() * splits,
                                  x.element_size()) if pdl else 0  # fmt: skip
    _one_token_gemm_kernel[grid](
        inter_act, moe.w2, shared_w2, per_pair, logits, moe.correction_bias, hidden, inter,
        moe.scale, inter_act.stride(0), moe.w2.stride(0), moe.w2.stride(1), k1 * hidden,
        GATED=False, BLOCK_M=down.block_m, BLOCK_N=down.block_n, BLOCK_K=down.block_k,
        K_PER_SPLIT=k_per_split, PREFETCH_K=prefetch_k,
        WARPS=down.num_warps, num_warps=down.num_warps, num_stages=down.num_stages,
        **common,
    )  # fmt: skip
    return topk_sum(per_pair, k1, shared_last=shared, dtype=x.dtype)
