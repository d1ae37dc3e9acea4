"""MoE routing in one launch: sigmoid scores, the selection-only correction bias, top-k,
renormalisation and scaling (DeepSeek-V3 `noaux_tc` with a single expert group).

`route_topk` starts from the router logits (after the router GEMM). `route_topk_from_hidden` also
computes them, for small steps: each program reads the whole fp32 router weight (512 KB for 64
experts and a 2048-wide hidden state) and its token's hidden state, and accumulates the logits in
fp32 from the exact fp32 products, as the fp32 GEMM of the reference does (up to the order of the
sums). At one to a few tokens this replaces four launches (the cast of x, the GEMM and its
reduction, the routing) with one; larger steps are better served by the GEMM library.

One program per token: the k best experts of `sigmoid(logit) + bias` are picked one after another
(the lowest index wins a tie), and their sigmoid scores are normalised to sum to one (when
`renormalize`) and multiplied by `scale`. Experts come out in descending order of their biased
score.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _store_topk(
    logit,  # [BLOCK_E] fp32 router logits of one token
    t,
    bias_ptr,
    ids_ptr,
    weights_ptr,
    num_experts,
    scale,
    K: tl.constexpr,
    RENORMALIZE: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    offs = tl.arange(0, BLOCK_E)
    valid = offs < num_experts
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
):
    t = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_E)
    logit = tl.load(logits_ptr + t * stride_l + offs, mask=offs < num_experts, other=0.0)
    _store_topk(logit, t, bias_ptr, ids_ptr, weights_ptr, num_experts, scale,
                K, RENORMALIZE, BLOCK_E)  # fmt: skip


@triton.jit
def _route_hidden_kernel(
    x_ptr,  # [T, H] activations (any float dtype)
    w_ptr,  # [E, H] fp32 router weight, rows contiguous
    bias_ptr,  # [E] fp32
    ids_ptr,  # [T, K] int32
    weights_ptr,  # [T, K] fp32
    stride_x,
    hidden,
    num_experts,
    scale,
    K: tl.constexpr,
    RENORMALIZE: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    offs_e = tl.arange(0, BLOCK_E)
    valid_e = offs_e < num_experts
    acc = tl.zeros([BLOCK_E, BLOCK_H], dtype=tl.float32)
    for h0 in range(0, hidden, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        valid_h = offs_h < hidden
        x = tl.load(x_ptr + t * stride_x + offs_h, mask=valid_h, other=0.0).to(tl.float32)
        w = tl.load(
            w_ptr + offs_e[:, None].to(tl.int64) * hidden + offs_h[None, :],
            mask=valid_e[:, None] & valid_h[None, :],
            other=0.0,
        )  # [BLOCK_E, BLOCK_H]
        acc += w * x[None, :]
    logit = tl.sum(acc, 1)  # [BLOCK_E]
    _store_topk(logit, t, bias_ptr, ids_ptr, weights_ptr, num_experts, scale,
                K, RENORMALIZE, BLOCK_E)  # fmt: skip


def _check_routing(correction_bias: torch.Tensor, e: int, top_k: int) -> None:
    if correction_bias.shape != (e,) or correction_bias.dtype != torch.float32:
        raise ValueError(f"correction_bias must be [{e}] fp32, got {tuple(correction_bias.shape)}")
    if not 1 <= top_k <= e or top_k & (top_k - 1):
        raise ValueError(f"top_k must be a power of two in [1, {e}], got {top_k}")


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
    _check_routing(correction_bias, e, top_k)
    ids = torch.empty(t, top_k, dtype=torch.int32, device=logits.device)
    weights = torch.empty(t, top_k, dtype=torch.float32, device=logits.device)
    if t == 0:
        return ids, weights
    _route_kernel[(t,)](
        logits, correction_bias.contiguous(), ids, weights, logits.stride(0), e, scale,
        K=top_k, RENORMALIZE=renormalize, BLOCK_E=triton.next_power_of_2(e), num_warps=1,
    )  # fmt: skip
    return ids, weights


def route_topk_from_hidden(
    x: torch.Tensor,  # [T, H] activations
    gate_weight: torch.Tensor,  # [E, H] fp32 router weight
    correction_bias: torch.Tensor,  # [E] fp32
    top_k: int,
    renormalize: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # ids [T, k] int32, weights [T, k] fp32
    """`route_topk(F.linear(x.float(), gate_weight), ...)` in one launch (for small steps)."""
    if x.dim() != 2 or x.stride(1) != 1 or not x.dtype.is_floating_point:
        raise ValueError(f"x must be [T, H] floating point, contiguous by row, got {x.shape}")
    t, h = x.shape
    if gate_weight.shape[1:] != (h,) or gate_weight.dtype != torch.float32:
        raise ValueError(f"gate_weight must be [E, {h}] fp32, got {tuple(gate_weight.shape)}")
    e = gate_weight.shape[0]
    _check_routing(correction_bias, e, top_k)
    ids = torch.empty(t, top_k, dtype=torch.int32, device=x.device)
    weights = torch.empty(t, top_k, dtype=torch.float32, device=x.device)
    if t == 0:
        return ids, weights
    block_e = triton.next_power_of_2(e)
    _route_hidden_kernel[(t,)](
        x, gate_weight.contiguous(), correction_bias.contiguous(), ids, weights, x.stride(0), h,
        e, scale, K=top_k, RENORMALIZE=renormalize, BLOCK_E=block_e,
        BLOCK_H=max(16, min(128, 8192 // block_e, triton.next_power_of_2(h))), num_warps=4,
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
