"""Products split along K and left as their slices' fp32 partials for the kernel that reads them.

A split-K product's slices are summed either by its own last program (which waits for the others
through a counter) or by the next kernel, which loads the partials where it would load the
product, all at once, and sums them in slice order from zero: the same fp32 additions, so the
same rounded values. The skinny projections (kernels/skinny_gemm) hand a `SplitProduct` to the
norms after them (kernels/rmsnorm, kernels/routing); the MoE's down GEMM hands its parts to the
top-k sum (kernels/topk_sum).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl


class SplitProduct(NamedTuple):
    """A product `x @ w.T` left as its K slices' fp32 partial products: their sum in slice order,
    rounded to `dtype`, is what `skinny_gemm` returns (`total`). Kernels that take one read it
    with `load_summed`."""

    parts: torch.Tensor  # [S, M, N] fp32, contiguous
    dtype: torch.dtype

    @property
    def shape(self) -> torch.Size:  # [M, N], the product's
        return self.parts.shape[1:]

    @property
    def device(self) -> torch.device:
        return self.parts.device

    def total(self) -> torch.Tensor:  # [M, N] in dtype
        acc = torch.zeros_like(self.parts[0])
        for part in self.parts:
            acc += part
        return acc.to(self.dtype)


def product_tensor(x: torch.Tensor | SplitProduct) -> torch.Tensor:
    """`x` as a tensor: a `SplitProduct` summed (for code without a kernel that reads one)."""
    return x.total() if isinstance(x, SplitProduct) else x


def summed_args(x: torch.Tensor | SplitProduct) -> tuple[torch.Tensor, int, int]:
    """(pointer tensor, slice stride, NUM_PARTS) for a kernel reading `x` with `load_summed`:
    NUM_PARTS = 0 for a plain tensor."""
    if isinstance(x, SplitProduct):
        return x.parts, x.parts.stride(0), x.parts.shape[0]
    return x, 0, 0


@triton.jit
def load_summed(ptrs, mask, stride_s, NUM_PARTS: tl.constexpr, DTYPE: tl.constexpr):
    """The product at `ptrs` (masked: 0): a plain tensor's values (NUM_PARTS = 0), or the sum of
    a `SplitProduct`'s NUM_PARTS partials in slice order from zero, rounded to DTYPE, as the
    split kernel's own sum rounds. The partials load together."""
    if NUM_PARTS == 0:
        return tl.load(ptrs, mask=mask, other=0.0)
    total = tl.zeros(ptrs.shape, dtype=tl.float32)
    for s in tl.static_range(NUM_PARTS):
        total += tl.load(ptrs + s * stride_s, mask=mask, other=0.0)
    return total.to(DTYPE)


__all__ = ["SplitProduct", "load_summed", "product_tensor", "summed_args"]
