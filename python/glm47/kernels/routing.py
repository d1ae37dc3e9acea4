"""MoE routing after the router GEMM, in one launch: sigmoid scores, the selection-only correction
bias, top-k, renormalisation and scaling (DeepSeek-V3 `noaux_tc` with a single expert group).

One program per token: the E router logits are loaded once, the k best experts of
`sigmoid(logit) + bias` are picked one after another (the lowest index wins a tie), and their
sigmoid scores are normalised to sum to one (when `renormalize`) and multiplied by `scale`. Experts
come out in descending order of their biased score.

`route_align` does the same for a decode-sized batch in a single program and, in the same launch,
sorts the routed pairs by expert for the grouped GEMMs (the layout of kernels/moe_align). With
`shared`, every token gets one more pair, last in its row: expert id E (one past the routed
experts) with weight 1, the shared expert run inside the grouped GEMMs. `norm_route_align` puts
the RMSNorm before the MoE and the router's product in front of it, in one more launch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from glm47.kernels.moe_align import (
    MoeAlignment,
    fill_padding,
    max_padded_rows,
    write_block_experts,
)
from glm47.kernels.pdl import pdl_wait, prefetch_l2, use_pdl
from glm47.kernels.rmsnorm import rms_normed
from glm47.kernels.split_k import SplitProduct, load_summed, summed_args

# Tokens up to which `route_align` runs (one program holds every token's logits and pairs).
ROUTE_ALIGN_MAX_TOKENS = 64


@triton.jit
def _route_kernel(
    logits_ptr,  # [T, E] fp32, or a SplitProduct's partials [NUM_PARTS, T, E]
    bias_ptr,  # [E] fp32
    ids_ptr,  # [T, K] int32
    weights_ptr,  # [T, K] fp32
    stride_l,
    stride_ls,
    num_experts,
    scale,
    K: tl.constexpr,
    RENORMALIZE: tl.constexpr,
    BLOCK_E: tl.constexpr,
    NUM_PARTS: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    t = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_E)
    valid = offs < num_experts
    logit = load_summed(logits_ptr + t * stride_l + offs, valid, stride_ls, NUM_PARTS, tl.float32)
    score = tl.sigmoid(logit)
    choice = score + tl.load(bias_ptr + offs, mask=valid, other=0.0)
    choice = tl.where(valid, choice, float("-inf"))
    offs_k = tl.arange(0, K)
    ids = tl.zeros([K], dtype=tl.int32)
    picked = tl.zeros([K], dtype=tl.float32)
    for i in tl.static_range(K):
        best = tl.max(choice, 0)
        idx = tl.min(tl.where(choice == best, offs, BLOCK_E), 0)  # first index of the maximum
        idx = tl.minimum(idx, num_experts - 1)  # NaN logits match nothing: stay a valid expert
        w = tl.sum(tl.where(offs == idx, score, 0.0), 0)
        ids = tl.where(offs_k == i, idx, ids)
        picked = tl.where(offs_k == i, w, picked)
        choice = tl.where(offs == idx, float("-inf"), choice)
    if RENORMALIZE:
        picked = picked / (tl.sum(picked, 0) + 1e-20)
    tl.store(ids_ptr + t * K + offs_k, ids)
    tl.store(weights_ptr + t * K + offs_k, picked * scale)


def route_topk(
    logits: torch.Tensor | SplitProduct,  # [T, E] fp32 router logits
    correction_bias: torch.Tensor,  # [E] fp32
    top_k: int,
    renormalize: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # ids [T, k] int32, weights [T, k] fp32
    """The k experts of each token and their routing weights. The logits may be the router's
    product as a `SplitProduct`, summed as the kernel loads them."""
    src, stride_s, num_parts = summed_args(logits)
    t, e = _check_routing(logits.shape, src if num_parts == 0 else None, correction_bias, top_k)
    if num_parts and logits.dtype != torch.float32:
        raise ValueError(f"logits must be fp32, got {logits.dtype}")
    ids = torch.empty(t, top_k, dtype=torch.int32, device=src.device)
    weights = torch.empty(t, top_k, dtype=torch.float32, device=src.device)
    if t == 0:
        return ids, weights
    pdl = use_pdl(src)
    _route_kernel[(t,)](
        src, correction_bias.contiguous(), ids, weights, src.stride(-2), stride_s, e, scale,
        K=top_k, RENORMALIZE=renormalize, BLOCK_E=triton.next_power_of_2(e),
        NUM_PARTS=num_parts, num_warps=1, USE_PDL=pdl, launch_pdl=pdl,
    )  # fmt: skip
    return ids, weights


@triton.jit
def _route_align_kernel(
    logits_ptr,  # [T, E] fp32
    bias_ptr,  # [E] fp32
    ids_ptr,  # [T, K1] int32, K1 = K + SHARED
    weights_ptr,  # [T, K1] fp32
    sorted_ids_ptr,  # [max_padded] int32
    expert_ids_ptr,  # [max_blocks] int32
    num_padded_ptr,  # [1] int32
    num_tokens,
    stride_l,
    scale,
    max_padded,
    max_blocks,
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
    """Every token of the batch in one program: its top-k (as `_route_kernel`, a token per row),
    then the pairs' expert-sorted layout (as moe_align's single-program kernel)."""
    pdl_wait(USE_PDL)
    K1: tl.constexpr = K + SHARED
    offs_t = tl.arange(0, BLOCK_T)
    offs_e = tl.arange(0, BLOCK_E)
    tok_ok = offs_t < num_tokens
    valid = tok_ok[:, None] & (offs_e < NUM_EXPERTS)[None, :]  # [BLOCK_T, BLOCK_E]
    logit = tl.load(
        logits_ptr + offs_t[:, None].to(tl.int64) * stride_l + offs_e[None, :],
        mask=valid, other=0.0,
    )  # fmt: skip
    score = tl.sigmoid(logit)
    bias = tl.load(bias_ptr + offs_e, mask=offs_e < NUM_EXPERTS, other=0.0)
    choice = tl.where(valid, score + bias[None, :], float("-inf"))
    offs_k = tl.arange(0, K)
    ids = tl.zeros([BLOCK_T, K], dtype=tl.int32)
    picked = tl.zeros([BLOCK_T, K], dtype=tl.float32)
    for i in tl.static_range(K):
        best = tl.max(choice, 1)  # [BLOCK_T]
        idx = tl.min(tl.where(choice == best[:, None], offs_e[None, :], BLOCK_E), 1)
        idx = tl.minimum(idx, NUM_EXPERTS - 1)  # NaN logits match nothing: stay a valid expert
        hit = offs_e[None, :] == idx[:, None]  # [BLOCK_T, BLOCK_E]
        w = tl.sum(tl.where(hit, score, 0.0), 1)
        ids = tl.where(offs_k[None, :] == i, idx[:, None], ids)
        picked = tl.where(offs_k[None, :] == i, w[:, None], picked)
        choice = tl.where(hit, float("-inf"), choice)
    if RENORMALIZE:
        picked = picked / (tl.sum(picked, 1) + 1e-20)[:, None]
    row = offs_t[:, None] * K1 + offs_k[None, :]  # [BLOCK_T, K]: the routed pairs' flat ids
    tl.store(ids_ptr + row, ids, mask=tok_ok[:, None])
    tl.store(weights_ptr + row, picked * scale, mask=tok_ok[:, None])
    if SHARED:
        tl.store(ids_ptr + offs_t * K1 + K, tl.zeros_like(offs_t) + NUM_EXPERTS, mask=tok_ok)
        tl.store(weights_ptr + offs_t * K1 + K, tl.full([BLOCK_T], 1.0, tl.float32), mask=tok_ok)

    # The routed pairs in flat-id order (token-major), as moe_align sorts them.
    pair = tl.reshape(row, [BLOCK_T * K])
    pair_ok = tl.reshape(tok_ok[:, None] & (offs_k[None, :] >= 0), [BLOCK_T * K])
    expert = tl.where(pair_ok, tl.reshape(ids, [BLOCK_T * K]), -1)
    onehot = (expert[:, None] == offs_e[None, :]).to(tl.int32)  # [BLOCK_T * K, BLOCK_E]
    counts = tl.sum(onehot, 0)  # [BLOCK_E]
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = tl.cumsum(padded, 0)
    rank = tl.cumsum(onehot, 0) - onehot  # earlier pairs of the same expert
    dest = tl.sum(onehot * (ends - padded + rank), 1)
    routed_rows = tl.sum(padded, 0)
    fill_padding(sorted_ids_ptr, num_tokens * K1, max_padded, BLOCK_FILL)
    tl.debug_barrier()
    tl.store(sorted_ids_ptr + dest, pair, mask=pair_ok)
    total = routed_rows
    if SHARED:  # the shared expert's run comes last: every token, in order
        tl.store(sorted_ids_ptr + routed_rows + offs_t, offs_t * K1 + K, mask=tok_ok)
        total += (num_tokens + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    tl.store(num_padded_ptr, total)
    write_block_experts(ends, expert_ids_ptr, max_blocks, NUM_EXPERTS + SHARED, BLOCK_M, BLOCK_B)


def _check_routing(
    shape: tuple[int, ...], logits: torch.Tensor | None, correction_bias: torch.Tensor, top_k: int
) -> tuple[int, int]:
    """(T, E) of a routing call on logits of `shape` (checked for dtype and layout when given),
    after checking the bias and top-k against them."""
    if len(shape) != 2 or (
        logits is not None and (logits.dtype != torch.float32 or logits.stride(1) != 1)
    ):
        raise ValueError(f"logits must be [T, E] fp32, contiguous by row, got {tuple(shape)}")
    t, e = shape
    if correction_bias.shape != (e,) or correction_bias.dtype != torch.float32:
        raise ValueError(f"correction_bias must be [{e}] fp32, got {tuple(correction_bias.shape)}")
    if not 1 <= top_k <= e or top_k & (top_k - 1):
        raise ValueError(f"top_k must be a power of two in [1, {e}], got {top_k}")
    return t, e


def _check_route_align(t: int, e: int, block_m: int) -> None:
    if not 0 < t <= ROUTE_ALIGN_MAX_TOKENS:
        raise ValueError(f"route_align takes 1 to {ROUTE_ALIGN_MAX_TOKENS} tokens, got {t}")
    if e > 256 or block_m < 1:
        raise ValueError(
            f"route_align takes up to 256 experts and block_m >= 1, got {e}, {block_m}"
        )


def route_align(
    logits: torch.Tensor,  # [T, E] fp32 router logits
    correction_bias: torch.Tensor,  # [E] fp32
    top_k: int,
    renormalize: bool,
    scale: float,
    block_m: int,
    shared: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, MoeAlignment]:
    """`route_topk` and `moe_align` of its ids in one launch, for up to ROUTE_ALIGN_MAX_TOKENS
    tokens. With `shared`, ids and weights are [T, k + 1]: each token's last pair is expert E
    (the shared expert) with weight 1, and the alignment covers E + 1 experts."""
    t, e = _check_routing(logits.shape, logits, correction_bias, top_k)
    _check_route_align(t, e, block_m)
    dev, k1 = logits.device, top_k + int(shared)
    ids = torch.empty(t, k1, dtype=torch.int32, device=dev)
    weights = torch.empty(t, k1, dtype=torch.float32, device=dev)
    max_rows = max_padded_rows(t * k1, e + int(shared), block_m)
    al = MoeAlignment(
        sorted_ids=torch.empty((max_rows,), dtype=torch.int32, device=dev),
        expert_ids=torch.empty((max_rows // block_m,), dtype=torch.int32, device=dev),
        num_padded=torch.empty((1,), dtype=torch.int32, device=dev),
        block_m=block_m,
    )
    pdl = use_pdl(logits)
    _route_align_kernel[(1,)](
        logits, correction_bias.contiguous(), ids, weights, al.sorted_ids, al.expert_ids,
        al.num_padded, t, logits.stride(0), scale, al.sorted_ids.shape[0], al.expert_ids.shape[0],
        NUM_EXPERTS=e, K=top_k, SHARED=int(shared), RENORMALIZE=renormalize,
        BLOCK_T=triton.next_power_of_2(t), BLOCK_E=triton.next_power_of_2(e), BLOCK_M=block_m,
        BLOCK_FILL=256, BLOCK_B=32, USE_PDL=pdl, num_warps=1 if t <= 16 else 4, launch_pdl=pdl,
    )  # fmt: skip
    return ids, weights, al


@triton.jit
def _norm_router_kernel(
    x_ptr,  # [T, D], or a SplitProduct's partials [NUM_PARTS, T, D]
    res_ptr,  # [T, D]
    norm_w_ptr,  # [D]
    out_ptr,  # [T, D]: the normalised rows (the experts' input)
    res_out_ptr,  # [T, D]: x + residual
    gate_ptr,  # [E, D] fp32
    logits_ptr,  # [T, E] fp32
    num_tokens,
    stride_x,
    stride_xs,
    stride_r,
    eps,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    NUM_PARTS: tl.constexpr,
    EXPERTS_PER_PROGRAM: tl.constexpr,
    TOKENS_PER_PROGRAM: tl.constexpr,
    NUM_EXPERTS: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """Program (i, j): RMSNorm with the residual add (kernels/rmsnorm's rounding) of token tile j
    and the router's fp32 product of those rows with expert block i; programs (0, j) store the
    rows."""
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
    row = load_summed(x_ptr + offs_t[:, None] * stride_x + offs_d[None, :], mask, stride_xs,
                      NUM_PARTS, out_ptr.dtype.element_ty)  # fmt: skip
    res = tl.load(res_ptr + offs_t[:, None] * stride_r + offs_d[None, :], mask=mask, other=0.0)
    h = (row.to(tl.float32) + res.to(tl.float32)).to(row.dtype)  # [TOKENS, BLOCK_D]
    y = rms_normed(h, norm_w[None, :], eps, D, 1)
    if pid_e == 0:
        tl.store(res_out_ptr + offs_t[:, None] * D + offs_d[None, :], h, mask=mask)
        tl.store(out_ptr + offs_t[:, None] * D + offs_d[None, :], y, mask=mask)
    # The block's experts in one reduction (one exchange between the warps, not one an expert).
    offs_x = pid_e * EXPERTS_PER_PROGRAM + tl.arange(0, EXPERTS_PER_PROGRAM)
    x_ok = offs_x < NUM_EXPERTS
    gate_rows = gate_ptr + offs_x[:, None] * D + offs_d[None, :]
    gate = tl.load(gate_rows, mask=x_ok[:, None] & d_ok[None, :], other=0.0)  # [EXPERTS, BLOCK_D]
    logit = tl.sum(y.to(tl.float32)[:, None, :] * gate[None, :, :], 2)  # [TOKENS, EXPERTS]
    tl.store(logits_ptr + offs_t[:, None] * NUM_EXPERTS + offs_x[None, :], logit,
             mask=t_ok[:, None] & x_ok[None, :])  # fmt: skip


NORM_ROUTE_EXPERTS_PER_PROGRAM = 4
NORM_ROUTE_TOKENS_PER_PROGRAM = 4


def norm_router(
    x: torch.Tensor | SplitProduct,  # [T, D]
    residual: torch.Tensor,  # [T, D]
    norm_weight: torch.Tensor,  # [D]
    eps: float,
    gate_weight: torch.Tensor,  # [E, D] fp32, the router
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # normed, new residual, logits [T, E] fp32
    """The MoE layer's input and its router logits in one launch: `normed, new_residual =
    rmsnorm(x, norm_weight, eps, residual)` (kernels/rmsnorm) and `normed.float() @
    gate_weight.T`. `x` may be a `SplitProduct` (the attention block's output projection), summed
    as it loads."""
    t, d = x.shape
    e = gate_weight.shape[0]
    if residual.shape != x.shape or residual.dtype != x.dtype or norm_weight.shape != (d,):
        raise ValueError(
            f"x {tuple(x.shape)}, residual {tuple(residual.shape)} and norm weight "
            f"{tuple(norm_weight.shape)} do not fit"
        )
    src, stride_s, num_parts = summed_args(x)
    if src.stride(-1) != 1 or residual.stride(1) != 1 or not norm_weight.is_contiguous():
        raise ValueError("x, residual and the norm weight need a contiguous last dimension")
    if gate_weight.shape != (e, d) or gate_weight.dtype != torch.float32:
        raise ValueError(f"gate_weight must be [E, {d}] fp32, got {tuple(gate_weight.shape)}")
    if not gate_weight.is_contiguous():
        raise ValueError("gate_weight must be contiguous")
    dev = x.device
    normed = torch.empty((t, d), dtype=x.dtype, device=dev)
    new_residual = torch.empty((t, d), dtype=x.dtype, device=dev)
    logits = torch.empty((t, e), dtype=torch.float32, device=dev)
    if t == 0:
        return normed, new_residual, logits
    per_program = NORM_ROUTE_EXPERTS_PER_PROGRAM
    tokens = min(NORM_ROUTE_TOKENS_PER_PROGRAM, triton.next_power_of_2(t))
    grid = (triton.cdiv(e, per_program), triton.cdiv(t, tokens))
    block_d = triton.next_power_of_2(d)
    pdl = use_pdl(src)
    _norm_router_kernel[grid](
        src, residual, norm_weight, normed, new_residual, gate_weight, logits, t, src.stride(-2),
        stride_s, residual.stride(0), eps, D=d, BLOCK_D=block_d, NUM_PARTS=num_parts,
        EXPERTS_PER_PROGRAM=per_program,
        TOKENS_PER_PROGRAM=tokens, NUM_EXPERTS=e, USE_PDL=pdl,
        num_warps=min(8, max(1, block_d // 256)), launch_pdl=pdl,
    )  # fmt: skip
    return normed, new_residual, logits


def norm_route_align(
    x: torch.Tensor | SplitProduct,  # [T, D]
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
    """The MoE layer's input and routing in two launches: `norm_router`, then `route_align` of
    its logits (one program of one warp: its top-k and scans are chains of reductions, which cost
    least inside one warp). Returns (normed, new_residual, ids, weights, alignment)."""
    _check_routing((x.shape[0], gate_weight.shape[0]), None, correction_bias, top_k)
    _check_route_align(x.shape[0], gate_weight.shape[0], block_m)  # both before any launch
    normed, new_residual, logits = norm_router(x, residual, norm_weight, eps, gate_weight)
    ids, weights, al = route_align(
        logits, correction_bias, top_k, renormalize, scale, block_m, shared=shared
    )
    return normed, new_residual, ids, weights, al


def route_topk_ref(
    logits: torch.Tensor,  # [T, E] fp32
    correction_bias: torch.Tensor,  # [E] fp32
    top_k: int,
    renormalize: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain torch reference (experts in descending biased score)."""
    scores = torch.sigmoid(logits)
    ids = torch.topk(scores + correction_bias, k=top_k, dim=-1, sorted=True)[1]
    weights = scores.gather(1, ids)
    if renormalize:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return ids.to(torch.int32), weights * scale
