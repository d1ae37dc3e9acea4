"""The Triton fused MoE as an experts backend, registered as "triton".

Routing stays in `moe.select_experts`; this backend only runs the experts: one grouped GEMM for
gate+up with SiLU(gate) * up fused, one for down with the routing weights applied, then the sum over
the top-k (see glm47.kernels.fused_moe), which can end in the RMSNorm that follows the MoE. Block
configs come from kernels/configs or the autotuner.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from glm47.kernels.fused_moe import fused_experts
from glm47.worker.model.layers.experts import register_experts_backend
from glm47.worker.model.layers.norm import NextNorm


class TritonExperts:
    name = "triton"

    def forward(
        self,
        x: torch.Tensor,  # [T, H]
        w13: torch.Tensor,  # [E, 2I, H]: rows [gate | up]
        w2: torch.Tensor,  # [E, H, I]
        topk_ids: torch.Tensor,  # [T, k] int32
        topk_weights: torch.Tensor,  # [T, k] fp32
        extra: Callable[[], torch.Tensor] | None = None,
    ) -> torch.Tensor:  # [T, H]
        return fused_experts(x, w13, w2, topk_weights.float(), topk_ids, extra=extra)

    def forward_then_norm(
        self,
        x: torch.Tensor,
        w13: torch.Tensor,
        w2: torch.Tensor,
        topk_ids: torch.Tensor,
        topk_weights: torch.Tensor,
        extra: Callable[[], torch.Tensor] | None,
        next_norm: NextNorm,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # the normed next input, the new residual: [T, H]
        """The norm in the top-k sum's launch when it runs as the Triton kernel."""
        args = next_norm.in_kernel
        if args is None:
            return next_norm(self.forward(x, w13, w2, topk_ids, topk_weights, extra))
        weights = topk_weights.float()
        return fused_experts(x, w13, w2, weights, topk_ids, extra=extra, next_norm=args)


register_experts_backend("triton", TritonExperts)
