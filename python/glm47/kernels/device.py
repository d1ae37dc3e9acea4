"""The device property the launchers size their grids by."""

from __future__ import annotations

import functools

import torch


@functools.cache
def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 4 elsewhere (the Triton interpreter on the CPU,
    where only the number of programs depends on it, and few keep it quick)."""
    if device.type != "cuda":
        return 4
    return int(torch.cuda.get_device_properties(device).multi_processor_count)


__all__ = ["num_sms"]
