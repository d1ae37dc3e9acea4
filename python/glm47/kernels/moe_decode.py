"""The MoE of a decode-sized step from the router's logits or from the attention block's output:
the routing with the pairs' layout (kernels/routing), then the grouped GEMMs with the shared
expert as one more expert and the top-k sum (kernels/fused_moe)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from glm47.kernels.fused_moe import choose_config, fused_experts
from glm47.kernels.routing import norm_route_align, route_align
from glm47.kernels.split_k import SplitProduct


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
    more expert when given) and the top-k sum."""
    cfg = choose_config(x, moe.w13, moe.w2, moe.top_k)
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
    sum."""
    cfg = choose_config(residual, moe.w13, moe.w2, moe.top_k)  # x's shape, dtype and device
    normed, new_residual, ids, weights, align = norm_route_align(
        x, residual, norm_weight, eps, gate_weight, moe.correction_bias, moe.top_k,
        moe.renormalize, moe.scale, cfg.block_m, shared=moe.shared is not None,
    )  # fmt: skip
    out = fused_experts(normed, moe.w13, moe.w2, weights, ids, cfg, shared=moe.shared, align=align)
    return out, new_residual
