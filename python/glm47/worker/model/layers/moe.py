"""The MoE layer: sigmoid router with a selection-only correction bias, group-limited top-k,
renormalisation and scaling, routed experts (through an experts backend) plus the shared expert.

Every routing knob lives here; `select_experts` is the only routing code, reused by every experts
backend.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from glm47.kernels.moe_decode import (
    RoutedExperts,
    fused_moe_from_logits,
    fused_moe_from_residual,
)
from glm47.kernels.routing import route_topk
from glm47.kernels.skinny_gemm import skinny_gemm, skinny_gemm_parts, takes_rows
from glm47.kernels.split_k import SplitProduct
from glm47.worker.model.config import ModelConfig
from glm47.worker.model.layers.experts import ExpertsBackend
from glm47.worker.model.layers.mlp import DenseMLP
from glm47.worker.model.layers.norm import RMSNorm
from glm47.worker.model.parallel import SINGLE, TensorParallel


def select_experts(
    x: torch.Tensor,  # [T, H]
    gate_weight: torch.Tensor,  # [E, H]
    correction_bias: torch.Tensor,  # [E] fp32, used to choose experts, not to weight them
    *,
    top_k: int,
    n_group: int,
    topk_group: int,
    norm_topk_prob: bool,
    routed_scaling_factor: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # topk_ids [T, k] int32, topk_weights [T, k] fp32
    """DeepSeek-V3 `noaux_tc` routing with sigmoid scores."""
    scores = torch.sigmoid(F.linear(x.float(), gate_weight.float()))  # [T, E]
    choice = scores + correction_bias  # [T, E]
    if n_group > 1:
        num_experts = choice.shape[-1]
        grouped = choice.view(-1, n_group, num_experts // n_group)  # [T, G, E/G]
        group_scores = grouped.topk(min(2, grouped.shape[-1]), dim=-1)[0].sum(dim=-1)  # [T, G]
        kept = torch.topk(group_scores, k=topk_group, dim=-1, sorted=False)[1]  # [T, topk_group]
        group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, kept, True)
        expert_mask = group_mask.unsqueeze(-1).expand_as(grouped).reshape(-1, num_experts)
        choice = choice.masked_fill(~expert_mask, float("-inf"))
    topk_ids = torch.topk(choice, k=top_k, dim=-1, sorted=False)[1]  # [T, k]
    topk_weights = scores.gather(1, topk_ids)  # [T, k] fp32
    if norm_topk_prob:
        topk_weights = topk_weights / (topk_weights.sum(dim=-1, keepdim=True) + 1e-20)
    topk_weights = topk_weights * routed_scaling_factor
    return topk_ids.to(torch.int32), topk_weights


class MoE(nn.Module):
    """`y = sum_k w_k * expert_k(x) + shared_experts(x)`.

    The router weight is kept in fp32 (the router runs in fp32). With `fused` set (see
    `enable_fused_kernels`), everything after the router GEMM runs as one Triton kernel
    (kernels/routing) where the config allows it (one expert group, a power-of-two top-k).

    With `side_stream` set (see `Glm4MoeLiteForCausalLM.overlap_shared_experts`), steps of at most
    `overlap_max_tokens` tokens run the shared expert on that CUDA stream while the router and the
    routed experts run on the current one: at decode sizes each of these kernels is short and
    latency-bound, so the two chains overlap. Captured into a CUDA graph, the fork and join become
    parallel branches of the graph.

    With `fold_max_tokens` set (see `Glm4MoeLiteForCausalLM.fold_shared_experts`; the Triton
    experts only), steps of at most that many tokens run everything after the router's product in
    four launches (`fused_moe_from_logits`): the routing with the pairs' layout, the two grouped
    GEMMs with the shared expert as one more expert, and the top-k sum, which adds the shared
    expert's output to the rounded routed sum as the unfolded path does. The decoder layer hands
    such steps to `forward_from_residual`, where the RMSNorm before the MoE runs in the launch of
    the router's product.
    """

    fused = False
    skinny = False  # the router's product through kernels/skinny_gemm at decode sizes
    side_stream: torch.cuda.Stream | None = None
    overlap_max_tokens = 0
    fold_max_tokens = 0

    def __init__(
        self, cfg: ModelConfig, experts: ExpertsBackend, tp: TensorParallel = SINGLE
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.experts = experts
        num_e, hidden = cfg.n_routed_experts, cfg.hidden_size
        # Under tensor parallelism: this rank's intermediate columns of every expert.
        inter = tp.part(cfg.moe_intermediate_size, "moe_intermediate_size")
        self.gate_weight = nn.Parameter(
            torch.empty(num_e, hidden, dtype=torch.float32), requires_grad=False
        )
        self.e_score_correction_bias = nn.Parameter(
            torch.empty(num_e, dtype=torch.float32), requires_grad=False
        )
        self.w13 = nn.Parameter(torch.empty(num_e, 2 * inter, hidden), requires_grad=False)
        self.w2 = nn.Parameter(torch.empty(num_e, hidden, inter), requires_grad=False)
        self.shared_experts = DenseMLP(hidden, inter * cfg.n_shared_experts)

    @property
    def routes_in_kernel(self) -> bool:
        """Whether the routing runs as a Triton kernel (one expert group, power-of-two top-k)."""
        k = self.cfg.num_experts_per_tok
        return self.fused and self.cfg.n_group <= 1 and k & (k - 1) == 0

    @property
    def can_fold_shared(self) -> bool:
        """Whether the shared expert has a routed expert's shape (one shared expert)."""
        return self.cfg.n_shared_experts == 1 and self.routes_in_kernel

    def router_logits(self, x: torch.Tensor) -> torch.Tensor:  # [T, H] -> [T, E] fp32
        if self._skinny_router(x):
            return skinny_gemm(x, self.gate_weight)  # x cast in the kernel
        return F.linear(x.float(), self.gate_weight)

    def _skinny_router(self, x: torch.Tensor) -> bool:
        """Whether the router's product of `x` runs through kernels/skinny_gemm."""
        return self.skinny and takes_rows(x, x.shape[0])

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """topk_ids [T, k] int32 and topk_weights [T, k] fp32 for this layer's router."""
        cfg = self.cfg
        k = cfg.num_experts_per_tok
        if self.routes_in_kernel:
            # [T, E] fp32; from the skinny kernel as its K slices, which the routing sums
            logits: torch.Tensor | SplitProduct = (
                skinny_gemm_parts(x, self.gate_weight)
                if self._skinny_router(x)
                else self.router_logits(x)
            )
            return route_topk(
                logits,
                self.e_score_correction_bias,
                k,
                cfg.norm_topk_prob,
                cfg.routed_scaling_factor,
            )
        return select_experts(
            x,
            self.gate_weight,
            self.e_score_correction_bias,
            top_k=cfg.num_experts_per_tok,
            n_group=cfg.n_group,
            topk_group=cfg.topk_group,
            norm_topk_prob=cfg.norm_topk_prob,
            routed_scaling_factor=cfg.routed_scaling_factor,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, H] -> [T, H]
        if self.folds(x.shape[0]):
            return self._forward_folded(x)
        if self.side_stream is not None and 0 < x.shape[0] <= self.overlap_max_tokens:
            return self._forward_overlapped(x, self.side_stream)
        topk_ids, topk_weights = self.route(x)
        routed = self.experts.forward(x, self.w13, self.w2, topk_ids, topk_weights)  # [T, H]
        return self.shared_experts(x, add=routed)  # routed is fresh: summed into in place

    def _forward_overlapped(self, x: torch.Tensor, side: torch.cuda.Stream) -> torch.Tensor:
        """The shared expert on `side`, the routed experts on the current stream, then the sum
        (as the reference adds them: both rounded to the activation dtype, then added)."""
        main = torch.cuda.current_stream(x.device)
        # x is ready. Waiting first also keeps the caching allocator safe without record_stream:
        # `shared` is freed (back to the side stream's pool) after the current stream's add, and
        # the side stream reuses that memory only in a later call, after this wait.
        side.wait_stream(main)
        with torch.cuda.stream(side):
            shared = self.shared_experts(x)  # [T, H]
        topk_ids, topk_weights = self.route(x)

        def joined_shared() -> torch.Tensor:  # the routed GEMMs are enqueued: join the streams
            main.wait_stream(side)
            return shared

        # [T, H]: routed + shared, the sum in the experts' last launch
        return self.experts.forward(x, self.w13, self.w2, topk_ids, topk_weights, joined_shared)

    def _forward_folded(self, x: torch.Tensor) -> torch.Tensor:
        """The shared expert inside the routed experts' launches (see the class docstring)."""
        return fused_moe_from_logits(x, self.router_logits(x), self._routed_experts)

    @functools.cached_property
    def _routed_experts(self) -> RoutedExperts:
        """The folded path's view of this layer's routing and weights (built once: the weights
        are filled in place)."""
        cfg = self.cfg
        shared = self.shared_experts
        return RoutedExperts(
            self.e_score_correction_bias,
            cfg.num_experts_per_tok,
            cfg.norm_topk_prob,
            cfg.routed_scaling_factor,
            self.w13,
            self.w2,
            shared=(shared.gate_up_proj.weight, shared.down_proj.weight),
        )

    def folds(self, num_tokens: int) -> bool:
        """Whether a step of `num_tokens` tokens runs the shared expert folded in."""
        return 0 < num_tokens <= self.fold_max_tokens

    def forward_from_residual(
        self, x: torch.Tensor | SplitProduct, residual: torch.Tensor, norm: RMSNorm
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(self(norm(x + residual)), x + residual)` for a step that `folds`: the norm with the
        router's product, the routing, then the experts as `_forward_folded`."""
        return fused_moe_from_residual(
            x, residual, norm.weight, norm.eps, self.gate_weight, self._routed_experts
        )
