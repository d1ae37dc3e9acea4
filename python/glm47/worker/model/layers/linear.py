"""Bias-free linear layer whose weight is created empty on the current default device and dtype."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Linear(nn.Module):
    """`y = x @ W^T` with `W` [out_features, in_features], the checkpoint's layout.

    Fused projections (gate_up) are one Linear whose rows are the concatenated checkpoint tensors;
    the loader's name table says which rows each checkpoint tensor fills.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, in] -> [T, out]
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"
