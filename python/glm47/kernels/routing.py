"""MoE routing after the router GEMM, in one launch: sigmoid scores, the selection-only correction
bias, top-k, renormalisation and scaling (DeepSeek-V3 `noaux_tc` with a single expert group).

One program per token: the E router logits are loaded once, the k best experts of
`sigmoid(logit) + bias` are picked one after another (the lowest index wins a tie), and their
sigmoid scores are normalised to sum to one (when `renormalize`) and multiplied by `scale`. Experts
come out in descending order of their biased score.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from glm47.kernels.pdl import pdl_wait, use_pdl


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
    if logits.dim() != 2 or logits.dtype != torch.float32 or logits.stride(1) != 1:
        raise ValueError(f"logits must be [T, E] fp32, contiguous by row, got {logits.shape}")
    t, e = logits.shape
    if correction_bias.shape != (e,) or correction_bias.dtype != torch.float32:
        raise ValueError(f"correction_bias must be [{e}] fp32, got {tuple(correction_bias.shape)}")
    if not 1 <= top_k <= e or top_k & (top_k - 1):
        raise ValueError(f"top_k must be a power of two in [1, {e}], got {top_k}")
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
