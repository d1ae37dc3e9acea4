"""RMSNorm with transformers' numerics and an optional fused residual add."""

from __future__ import annotations

from typing import overload

import torch
from torch import nn

from glm47.kernels.rmsnorm import rmsnorm
from glm47.kernels.split_k import SplitProduct, product_tensor


class RMSNorm(nn.Module):
    """`w * (x.float() * rsqrt(mean(x^2) + eps)).to(x.dtype)`.

    `forward(x)` returns the normalised tensor. `forward(x, residual)` first adds: the new residual
    is `x + residual` (in the activation dtype, as the unfused `h = h + f(h)` of the reference does)
    and the result is `(norm(new_residual), new_residual)`.

    With `fused` set (see `enable_fused_kernels`), both run as one Triton kernel (kernels/rmsnorm)
    with the same rounding points; `x` must then be 2-D with a contiguous last dimension. `x` may
    be a `SplitProduct` (a projection's partials), which the kernel sums as it loads.
    """

    fused = False

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(size), requires_grad=False)

    @overload
    def forward(self, x: torch.Tensor | SplitProduct, residual: None = None) -> torch.Tensor: ...

    @overload
    def forward(
        self, x: torch.Tensor | SplitProduct, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def forward(
        self, x: torch.Tensor | SplitProduct, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.fused:
            normed, new_residual = rmsnorm(x, self.weight, self.eps, residual)
            return normed if new_residual is None else (normed, new_residual)
        x = product_tensor(x)
        if residual is None:
            return self._norm(x)
        summed = x + residual  # [T, H]
        return self._norm(summed), summed

    def _norm(self, x: torch.Tensor) -> torch.Tensor:  # [..., size]
        xf = x.float()
        variance = xf.pow(2).mean(-1, keepdim=True)
        return self.weight * (xf * torch.rsqrt(variance + self.eps)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}"
