"""Where the Triton kernels run, and the device property the launchers size their grids by."""

from __future__ import annotations

import functools
import os

import torch


@functools.cache
def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 4 elsewhere (the Triton interpreter on the CPU,
    where only the number of programs depends on it, and few keep it quick)."""
    if device.type != "cuda":
        return 4
    return int(torch.cuda.get_device_properties(device).multi_processor_count)


def runs_triton(t: torch.Tensor) -> bool:
    """Whether Triton kernels can take this tensor: on a CUDA device, or anywhere under the
    Triton interpreter (TRITON_INTERPRET=1, the CPU test runs)."""
    return t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


__all__ = ["num_sms", "runs_triton"]
