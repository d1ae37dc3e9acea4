"""Bias-free linear layer whose weight is created empty on the current default device and dtype."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from glm47.kernels.skinny_gemm import skinny_gemm, skinny_gemm_parts, takes_rows
from glm47.kernels.split_k import SplitProduct


class Linear(nn.Module):
    """`y = x @ W^T` with `W` [out_features, in_features], the checkpoint's layout.

    Fused projections (gate_up) are one Linear whose rows are the concatenated checkpoint tensors;
    the loader's name table says which rows each checkpoint tensor fills. With `skinny` set (see
    `enable_skinny_gemm`; on by default on CUDA devices), inputs of at most `MAX_ROWS` rows go
    through the Triton kernel for few-row products (kernels/skinny_gemm) instead of the GEMM
    library; `forward_parts` leaves such a product's split-K sum to the kernel that reads it.
    """

    skinny = False

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, in] -> [T, out]
        if self._takes_skinny(x):
            return skinny_gemm(x, self.weight)
        return F.linear(x, self.weight)

    def forward_parts(self, x: torch.Tensor) -> torch.Tensor | SplitProduct:  # [T, out]
        """`forward(x)`, as a `SplitProduct` where the skinny kernel takes `x`: for a consumer
        that sums the partials as it loads them (kernels/rmsnorm, kernels/routing)."""
        if self._takes_skinny(x):  # 1 to MAX_ROWS rows
            return skinny_gemm_parts(x, self.weight)
        return self(x)

    def add_into(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """`out += x @ W^T` in place (one matmul that accumulates: no copy, one rounding)."""
        if (
            self._takes_skinny(x)
            and out.shape == (x.shape[0], self.out_features)
            and out.stride(-1) == 1
            and out.dtype == x.dtype
        ):
            return skinny_gemm(x, self.weight, out=out, accumulate=True)
        return out.addmm_(x, self.weight.t())

    def _takes_skinny(self, x: torch.Tensor) -> bool:
        """The kernel runs on CUDA devices (or under the Triton interpreter), on half-precision
        inputs of at most MAX_ROWS rows; anything else goes to the library."""
        return (
            self.skinny
            and x.dim() == 2
            and takes_rows(x, x.shape[0])
            and x.stride(-1) == 1
            and self.weight.stride(-1) == 1
            and x.dtype == self.weight.dtype
            and (x.dtype in (torch.float16, torch.bfloat16) or not x.is_cuda)
        )

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"
