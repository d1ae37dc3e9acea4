"""Routed-expert compute behind a small interface and a registry.

An experts backend receives tokens, the fused expert weights and the routing decision (made once,
by `moe.select_experts`) and returns the weighted sum of the chosen experts' outputs. `torch` is the
reference; faster backends (a Triton fused MoE) register under their own name and are tested
against it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F


class ExpertsBackend(Protocol):
    name: str

    def forward(
        self,
        x: torch.Tensor,  # [T, H] activation dtype
        w13: torch.Tensor,  # [E, 2I, H]: rows [gate (I) | up (I)] of each expert
        w2: torch.Tensor,  # [E, H, I]
        topk_ids: torch.Tensor,  # [T, k] int32
        topk_weights: torch.Tensor,  # [T, k] fp32, already renormalised and scaled
        extra: Callable[[], torch.Tensor] | None = None,
    ) -> torch.Tensor:  # [T, H] activation dtype: sum_k w_k * down(silu(gate) * up)
        """With `extra`, the result is the routed sum rounded to the activation dtype plus
        `extra()` (a [T, H] tensor, also in that dtype), rounded again: the MoE layer's shared
        expert, whose stream `extra` joins. It is called once, after the experts' GEMMs are
        enqueued, so that they overlap whatever produces it."""
        ...


ExpertsFactory = Callable[[], ExpertsBackend]
_REGISTRY: dict[str, ExpertsFactory] = {}


def register_experts_backend(name: str, factory: ExpertsFactory) -> None:
    """Make an experts backend selectable by name (`--moe-backend`)."""
    _REGISTRY[name] = factory


def create_experts_backend(name: str) -> ExpertsBackend:
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"unknown experts backend {name!r} (known: {known})")
    return _REGISTRY[name]()


def registered_experts_backends() -> list[str]:
    return sorted(_REGISTRY)


class TorchExperts:
    """Loop over the experts that received tokens, in ascending expert id.

    Each expert's weighted output is rounded to the activation dtype and accumulated into an
    activation-dtype buffer in that order, which is exactly what the transformers reference does.
    """

    name = "torch"

    def forward(
        self,
        x: torch.Tensor,
        w13: torch.Tensor,
        w2: torch.Tensor,
        topk_ids: torch.Tensor,
        topk_weights: torch.Tensor,
        extra: Callable[[], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        out = torch.zeros_like(x)  # [T, H]
        ids = topk_ids.long()
        for expert in torch.unique(ids).tolist():
            token_idx, slot = torch.where(ids == expert)  # [n] each
            gate, up = F.linear(x[token_idx], w13[expert]).chunk(2, dim=-1)  # [n, I]
            y = F.linear(F.silu(gate) * up, w2[expert])  # [n, H]
            y = y * topk_weights[token_idx, slot, None]  # fp32
            out.index_add_(0, token_idx, y.to(out.dtype))
        return out if extra is None else out.add_(extra())


register_experts_backend("torch", TorchExperts)
