"""Programmatic dependent launch (compute capability 9.0 and up) for the decode-path kernels.

A kernel launched with it may start while the kernel before it in the stream is still running.
Every such kernel calls `pdl_wait` before it touches memory that earlier kernels write (its
activations, its outputs); what it does before that (its setup, `prefetch_l2` of weights that no
kernel writes) overlaps the previous kernel's tail and the launch gap. Right after the wait it
lets the next kernel start, so at most two kernels of a stream overlap: the running one and the
next one warming its weights into L2.

A small decode step is a chain of short kernels, most of them latency-bound (norms, rope,
attention, routing); with this the weight reads of the projections stream while those run.

The switch is process-wide (`set_pdl`), set once by the model runner before any graph capture;
launchers ask `use_pdl(tensor)` so that CPU tensors (the Triton interpreter) never take it.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_enabled = False


def pdl_supported(device: torch.device) -> bool:
    """Whether the device can launch kernels this way (CUDA, compute capability 9.0 and up)."""
    if device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9


def set_pdl(enabled: bool) -> None:
    """Turn programmatic dependent launch on or off for every launcher in this process."""
    global _enabled
    _enabled = enabled


def use_pdl(t: torch.Tensor) -> bool:
    """Whether a launcher whose kernel reads `t` launches with it."""
    return _enabled and t.is_cuda


@triton.jit
def pdl_wait(USE_PDL: tl.constexpr):
    """Wait for the previous kernel of the stream (and so every earlier one) to finish and its
    writes to be visible, then let the next kernel launch. A no-op without USE_PDL."""
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def prefetch_l2(ptrs):
    """Ask for the 128-byte lines at `ptrs` (a tensor of valid addresses) to be brought into L2.
    A hint: nothing waits for it and no value comes back."""
    tl.inline_asm_elementwise(
        "prefetch.global.L2 [$1]; // $0",
        "=r,l",
        [ptrs.to(tl.int64)],
        dtype=tl.int32,
        is_pure=False,
        pack=1,
    )


__all__ = ["pdl_supported", "pdl_wait", "prefetch_l2", "set_pdl", "use_pdl"]
