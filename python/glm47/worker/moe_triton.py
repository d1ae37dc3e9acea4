"""The Triton fused MoE as an experts backend, registered as "triton".

Routing stays in `moe.select_experts`; this backend only runs the experts: one grouped GEMM for
gate+up with SiLU(gate) * up fused, one for down with the routing weights applied, then the sum over
the top-k (see glm47.kernels.fused_moe). Block configs come from kernels/configs or the autotuner.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from glm47.kernels.fused_moe import fused_experts
from glm47.worker.model.layers.experts import register_experts_backend


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


register_experts_backend("triton", TritonExperts)
