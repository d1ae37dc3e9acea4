"""SwiGLU's activation in one launch: `silu(gate) * up` over the [gate | up] halves of a row.

Rounded like the unfused torch expression in the activation dtype: silu(gate) is rounded, then the
product is.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from glm47.kernels.pdl import pdl_wait, use_pdl


@triton.jit
def _silu_and_mul_kernel(
    x_ptr,  # [T, 2I]: gate columns, then up columns
    out_ptr,  # [T, I]
    stride_x,
    stride_o,
    inter,
    BLOCK: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < inter
    gate = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * stride_x + inter + offs, mask=mask, other=0.0)
    g = gate.to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(gate.dtype).to(tl.float32)
    tl.store(out_ptr + row * stride_o + offs, (act * up.to(tl.float32)).to(gate.dtype), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:  # [T, 2I] -> [T, I]
    """`silu(x[:, :I]) * x[:, I:]`."""
    if x.dim() != 2 or x.shape[1] % 2 or x.stride(1) != 1:
        raise ValueError(f"x must be [T, 2I] with a contiguous last dimension, got {x.shape}")
    t, inter = x.shape[0], x.shape[1] // 2
    out = torch.empty((t, inter), dtype=x.dtype, device=x.device)
    if t == 0:
        return out
    block = min(1024, triton.next_power_of_2(inter))
    _silu_and_mul_kernel[(t, triton.cdiv(inter, block))](
        x,
        out,
        x.stride(0),
        out.stride(0),
        inter,
        BLOCK=block,
        num_warps=4,
        USE_PDL=use_pdl(x),
        launch_pdl=use_pdl(x),
    )
    return out


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up
