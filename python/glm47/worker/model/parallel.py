"""Tensor parallelism: which part of each weight a rank holds, and the sums across the ranks.

With `--tp N`, MLA's heads are split over the ranks (q_b_proj and kv_b_proj by rows, o_proj by
columns), and so are the intermediate columns of the dense MLP, the shared expert and every routed
expert (gate and up by rows, down by columns). Everything else is replicated: the latent
projections, the norms, the router, the embedding, lm_head and the KV cache (one latent a token,
which every head reads). A decoder layer's attention output and MLP output are then partial sums,
added up over the ranks by one all-reduce each (two a layer), after which every rank holds the same
hidden states. Rank 0 runs the engine; the others follow its forward passes (`worker/tp_worker.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class TensorParallel:
    """This process's place in a tensor-parallel group (the default: one rank, no group)."""

    rank: int = 0
    size: int = 1
    group: Any = None  # torch.distributed group of the device collectives
    host_group: Any = None  # a gloo group over the same ranks, for host-side messages
    # The device collectives go through host memory (gloo over GPU tensors: ranks that share a
    # GPU, which NCCL refuses; the GPU tests run two ranks on one device this way).
    staged: bool = False

    @property
    def enabled(self) -> bool:
        return self.size > 1

    def part(self, n: int, what: str) -> int:
        """This rank's share of `n` columns (heads, intermediate columns)."""
        if n % self.size:
            raise ValueError(
                f"{what} ({n}) is not divisible by the tensor-parallel size {self.size}"
            )
        return n // self.size

    def narrow(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's block of `t` along `dim` (equal blocks in rank order)."""
        width = self.part(t.shape[dim], f"dimension {dim} of a {list(t.shape)} tensor")
        return t.narrow(dim, self.rank * width, width)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """`x` summed over the ranks, in place (a contiguous copy first when it is not)."""
        if self.size == 1:
            return x
        import torch.distributed as dist

        if self.staged:
            host = x.float().cpu()
            dist.all_reduce(host, group=self.group)
            return x.copy_(host)
        if not x.is_contiguous():
            x = x.contiguous()
        dist.all_reduce(x, group=self.group)
        return x

    def broadcast(self, x: torch.Tensor) -> None:
        """Rank 0's `x` into every rank's `x`, in place."""
        import torch.distributed as dist

        if self.staged:
            host = x.cpu()
            dist.broadcast(host, src=0, group=self.group)
            x.copy_(host)
        else:
            dist.broadcast(x, src=0, group=self.group)

    def min_over_ranks(self, value: int) -> int:
        """The smallest of every rank's `value` (host-side)."""
        if self.size == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.host_group)
        return int(t.item())


SINGLE = TensorParallel()
