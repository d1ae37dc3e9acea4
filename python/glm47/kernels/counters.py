"""Arrival counters for kernels whose last program to finish does the launch's final step (the sum
of the split-K parts in kernels/skinny_gemm).

A counter is int32 and zero between launches: every program adds one after its stores, the one
that gets back the count of all the others does the final step and sets the counter back to zero.
Buffers are keyed by the kernel, the tensor a launch is for (a weight: never used on two streams at
once, while two weights may be) and the size, and live as long as the process: captured CUDA
graphs hold their addresses.
"""

from __future__ import annotations

import torch

_counters: dict[tuple[str, torch.device, int, int], torch.Tensor] = {}


def launch_counters(kernel: str, owner: torch.Tensor, size: int) -> torch.Tensor:
    """Zeroed int32 counters [size] for launches of `kernel` on `owner`; every launch leaves them
    at zero.

    Raises RuntimeError when they do not exist yet and the current stream is capturing a CUDA
    graph: allocated there they would come from the graph's memory pool and be zeroed only when
    that graph replays, so an eager launch (or another graph) before then would count from
    whatever the memory held. Run the launch once eagerly first (the graph capturer's warm-up
    runs do)."""
    key = (kernel, owner.device, owner.data_ptr(), size)
    buf = _counters.get(key)
    if buf is None:
        if owner.is_cuda and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                f"{kernel} counters for a new tensor requested during CUDA graph capture: "
                "launch it once eagerly before capturing"
            )
        buf = _counters[key] = torch.zeros(size, dtype=torch.int32, device=owner.device)
    return buf


def counters_at_rest() -> bool:
    """Whether every counter is back at zero (no launch left one behind)."""
    return all(bool((c == 0).all()) for c in _counters.values())


__all__ = ["counters_at_rest", "launch_counters"]
