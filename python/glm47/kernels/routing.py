"""MoE routing after the router GEMM, in one launch: sigmoid scores, the selection-only correction
bias, top-k, renormalisation and scaling (DeepSeek-V3 `noaux_tc` with a single expert group).

One program per token: the E router logits are loaded once, the k best experts of
`sigmoid(logit) + bias` are picked one after another (the lowest index wins a tie), and their
sigmoid scores are normalised to sum to one (when `renormalize`) and multiplied by `scale`. Experts
come out in descending order of their biased score.

`route_align` does the same for a decode-sized batch in a single program and, in the same launch,
sorts the routed pairs by expert for the grouped GEMMs (the layout of kernels/moe_align). With
`shared`, every token gets one more pair, last in its row: expert id E (one past the routed
experts) with weight 1, the shared expert run inside the grouped GEMMs. `route_align_rows` is that
program's body, which kernels/norm_route also runs at the end of the norm and the router's product.
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
from glm47.kernels.pdl import pdl_wait, use_pdl

# Tokens up to which `route_align` runs (one program holds every token's logits and pairs).
ROUTE_ALIGN_MAX_TOKENS = 64


@triton.jit
def _route_kernel(
    logits_ptr,  # [T, E] fp32
    bias_ptr,  # [E] fp32
    ids_ptr,  # [T, K] int32
    weights_ptr,  # [T, K] fp32
    stride_l,
    num_experts,
    scale,
    K: tl.constexpr,
    RENORMALIZE: tl.constexpr,
    BLOCK_E: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    t = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_E)
    valid = offs < num_experts
    logit = tl.load(logits_ptr + t * stride_l + offs, mask=valid, other=0.0)
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
    logits: torch.Tensor,  # [T, E] fp32 router logits
    correction_bias: torch.Tensor,  # [E] fp32
    top_k: int,
    renormalize: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # ids [T, k] int32, weights [T, k] fp32
    """The k experts of each token and their routing weights."""
    t, e = check_routing(logits.shape, logits, correction_bias, top_k)
    ids = torch.empty(t, top_k, dtype=torch.int32, device=logits.device)
    weights = torch.empty(t, top_k, dtype=torch.float32, device=logits.device)
    if t == 0:
        return ids, weights
    _route_kernel[(t,)](
        logits, correction_bias.contiguous(), ids, weights, logits.stride(0), e, scale,
        K=top_k, RENORMALIZE=renormalize, BLOCK_E=triton.next_power_of_2(e), num_warps=1,
        USE_PDL=use_pdl(logits), launch_pdl=use_pdl(logits),
    )  # fmt: skip
    return ids, weights


@triton.jit
def route_align_rows(
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
    LOGITS_CACHE: tl.constexpr,  # the logits' load cache modifier ("" or ".cg")
):
    """Every token of the batch in the calling program: its top-k (as `_route_kernel`, a token per
    row), then the pairs' expert-sorted layout (as moe_align's single-program kernel)."""
    K1: tl.constexpr = K + SHARED
    offs_t = tl.arange(0, BLOCK_T)
    offs_e = tl.arange(0, BLOCK_E)
    tok_ok = offs_t < num_tokens
    valid = tok_ok[:, None] & (offs_e < NUM_EXPERTS)[None, :]  # [BLOCK_T, BLOCK_E]
    logit = tl.load(
        logits_ptr + offs_t[:, None].to(tl.int64) * stride_l + offs_e[None, :],
        mask=valid, other=0.0, cache_modifier=LOGITS_CACHE,
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
    """One program: `route_align_rows` once the logits are ready."""
    pdl_wait(USE_PDL)
    route_align_rows(
        logits_ptr, bias_ptr, ids_ptr, weights_ptr, sorted_ids_ptr, expert_ids_ptr, num_padded_ptr,
        num_tokens, stride_l, scale, max_padded, max_blocks, NUM_EXPERTS, K, SHARED, RENORMALIZE,
        BLOCK_T, BLOCK_E, BLOCK_M, BLOCK_FILL, BLOCK_B, "",
    )  # fmt: skip


def check_routing(
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


def check_route_align(t: int, e: int, block_m: int) -> None:
    """Checks that `route_align_rows` can take T tokens of E experts in blocks of `block_m`."""
    if not 0 < t <= ROUTE_ALIGN_MAX_TOKENS:
        raise ValueError(f"route_align takes 1 to {ROUTE_ALIGN_MAX_TOKENS} tokens, got {t}")
    if e > 256 or block_m < 1:
        raise ValueError(
            f"route_align takes up to 256 experts and block_m >= 1, got {e}, {block_m}"
        )


def route_outputs(
    t: int, e: int, top_k: int, shared: bool, block_m: int, dev: torch.device
) -> tuple[torch.Tensor, torch.Tensor, MoeAlignment]:
    """Empty ids and weights [T, k (+ 1 with `shared`)] and the alignment a routing launch fills."""
    k1 = top_k + int(shared)
    max_rows = max_padded_rows(t * k1, e + int(shared), block_m)
    al = MoeAlignment(
        sorted_ids=torch.empty((max_rows,), dtype=torch.int32, device=dev),
        expert_ids=torch.empty((max_rows // block_m,), dtype=torch.int32, device=dev),
        num_padded=torch.empty((1,), dtype=torch.int32, device=dev),
        block_m=block_m,
    )
    ids = torch.empty(t, k1, dtype=torch.int32, device=dev)
    weights = torch.empty(t, k1, dtype=torch.float32, device=dev)
    return ids, weights, al


def route_meta(
    t: int, e: int, top_k: int, shared: bool, renormalize: bool, block_m: int
) -> dict[str, int]:
    """The constexpr arguments of `route_align_rows`, but the logits' cache modifier."""
    return dict(
        NUM_EXPERTS=e, K=top_k, SHARED=int(shared), RENORMALIZE=renormalize,
        BLOCK_T=triton.next_power_of_2(t), BLOCK_E=triton.next_power_of_2(e), BLOCK_M=block_m,
        BLOCK_FILL=256, BLOCK_B=32,
    )  # fmt: skip


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
    t, e = check_routing(logits.shape, logits, correction_bias, top_k)
    check_route_align(t, e, block_m)
    ids, weights, al = route_outputs(t, e, top_k, shared, block_m, logits.device)
    pdl = use_pdl(logits)
    # One warp up to 16 tokens: the top-k and the scans are chains of reductions, cheapest when
    # none of them crosses warps.
    _route_align_kernel[(1,)](
        logits, correction_bias.contiguous(), ids, weights, al.sorted_ids, al.expert_ids,
        al.num_padded, t, logits.stride(0), scale, al.sorted_ids.shape[0], al.expert_ids.shape[0],
        **route_meta(t, e, top_k, shared, renormalize, block_m), USE_PDL=pdl,
        num_warps=1 if t <= 16 else 4, launch_pdl=pdl,
    )  # fmt: skip
    return ids, weights, al


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


__all__ = [
    "ROUTE_ALIGN_MAX_TOKENS",
    "check_route_align",
    "check_routing",
    "route_align",
    "route_align_rows",
    "route_meta",
    "route_outputs",
    "route_topk",
    "route_topk_ref",
]
