"""Dense SwiGLU MLP with the gate and up projections fused into one matmul."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from glm47.kernels.activation import silu_and_mul
from glm47.worker.model.layers.linear import Linear


class DenseMLP(nn.Module):
    """`down(silu(gate(x)) * up(x))`; `gate_up_proj` rows are [gate (I) | up (I)].

    With `fused` set (see `enable_fused_kernels`), the activation and product run as one Triton
    kernel (kernels/activation) with the same rounding points.
    """

    fused = False

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.intermediate_size = intermediate_size
        self.gate_up_proj = Linear(hidden_size, 2 * intermediate_size)
        self.down_proj = Linear(intermediate_size, hidden_size)

    def forward(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        """[T, H] -> [T, H]; plus `add` [T, H] when given. On the fused path the down projection
        accumulates into `add` itself (an in-place addmm: one matmul with beta = 1, no copy and no
        separate add; one rounding instead of two), so `add` must be a tensor the caller gives up."""
        if self.fused:
            act = silu_and_mul(self.gate_up_proj(x))  # [T, I]
            if add is None:
                return self.down_proj(act)
            return self.down_proj.add_into(act, add)
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)  # [T, I] each
        out = self.down_proj(F.silu(gate) * up)
        return out if add is None else out + add
