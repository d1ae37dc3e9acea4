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


PREFETCH_CHUNK = tl.constexpr(1024)  # lines a program asks for per loop step of prefetch_share


@triton.jit
def prefetch_share(ptr, lines, LINE_ELEMS: tl.constexpr):
    """Ask for this program's share of the `lines` 128-byte lines at `ptr` (a contiguous tensor
    of LINE_ELEMS elements a line) in L2: the lines are spread evenly over the launch's programs.
    A kernel calls this before `pdl_wait` to warm a tensor that a later kernel reads."""
    programs = tl.num_programs(0) * tl.num_programs(1) * tl.num_programs(2)
    pid = (tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)) * tl.num_programs(2)
    pid += tl.program_id(2)
    per_program = tl.cdiv(lines, programs)
    first = pid * per_program
    for c in range(0, per_program, PREFETCH_CHUNK):
        line = tl.minimum(first + c + tl.arange(0, PREFETCH_CHUNK), lines - 1)
        prefetch_l2(ptr + line.to(tl.int64) * LINE_ELEMS)


def prefetch_args(t: torch.Tensor | None, pdl: bool) -> tuple[torch.Tensor | None, int, int]:
    """(tensor, lines, elements a line) for a launcher's `prefetch_share`: the tensor only with
    dependent launch (else (None, 0, 64): the kernel skips it). It must be contiguous."""
    if t is not None and not t.is_contiguous():
        raise ValueError("the prefetched tensor must be contiguous")
    if not pdl or t is None or t.numel() == 0:
        return None, 0, 64
    return t, triton.cdiv(t.numel() * t.element_size(), 128), 128 // t.element_size()


__all__ = [
    "pdl_supported",
    "pdl_wait",
    "prefetch_args",
    "prefetch_l2",
    "prefetch_share",
    "set_pdl",
    "use_pdl",
]
