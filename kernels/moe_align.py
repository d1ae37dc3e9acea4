"""Sorting routed (token, slot) pairs by expert, padded to the grouped GEMM's row block.

A routed pair is identified by its flat id `t * top_k + j` (token t, its j-th expert). The grouped
GEMM walks `sorted_ids` in blocks of `block_m` rows; every block belongs to one expert, so each
expert's run of ids is padded to a multiple of `block_m` with the invalid id `T * top_k`.

Built from torch operations that never read back to the host, so it can be captured in a CUDA
graph: the output sizes depend only on T, top_k, the expert count and block_m.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MoeAlignment:
    """The expert-sorted layout of one batch's routed pairs."""

    sorted_ids: torch.Tensor  # [max_padded] int32: flat pair ids; T * top_k marks padding
    expert_ids: torch.Tensor  # [max_padded // block_m] int32: the expert of each row block
    num_padded: torch.Tensor  # [1] int32: rows in use (blocks at or past it are skipped)
    block_m: int

    @property
    def max_blocks(self) -> int:
        return int(self.expert_ids.shape[0])


def max_padded_rows(num_pairs: int, num_experts: int, block_m: int) -> int:
    """Upper bound of the padded row count: every expert may add up to block_m - 1 pad rows."""
    bound = num_pairs + num_experts * (block_m - 1)
    return (bound + block_m - 1) // block_m * block_m


def moe_align(
    topk_ids: torch.Tensor,  # [T, top_k] int
    num_experts: int,
    block_m: int,
) -> MoeAlignment:
    """Sort pair ids by expert (stable: token order inside an expert) and pad each expert's run."""
    if topk_ids.dim() != 2:
        raise ValueError(f"topk_ids must be [T, top_k], got {tuple(topk_ids.shape)}")
    if block_m < 1:
        raise ValueError(f"block_m must be positive, got {block_m}")
    dev = topk_ids.device
    flat = topk_ids.reshape(-1).long()  # [P]
    num_pairs = flat.numel()
    counts = torch.zeros(num_experts, dtype=torch.long, device=dev)
    counts.scatter_add_(0, flat, torch.ones_like(flat))  # [E]
    padded = (counts + block_m - 1) // block_m * block_m
    ends = padded.cumsum(0)  # [E]
    starts = ends - padded
    order = torch.sort(flat, stable=True).indices  # [P]: pair ids grouped by expert
    sorted_exp = flat[order]
    first_of_expert = counts.cumsum(0) - counts
    rank = torch.arange(num_pairs, device=dev) - first_of_expert[sorted_exp]
    dest = starts[sorted_exp] + rank
    max_rows = max_padded_rows(num_pairs, num_experts, block_m)
    sorted_ids = torch.full((max_rows,), num_pairs, dtype=torch.int32, device=dev)
    sorted_ids[dest] = order.to(torch.int32)
    block_start = torch.arange(0, max_rows, block_m, device=dev)
    expert_ids = torch.searchsorted(ends, block_start, right=True).clamp_(max=num_experts - 1)
    return MoeAlignment(
        sorted_ids=sorted_ids,
        expert_ids=expert_ids.to(torch.int32),
        num_padded=ends[-1:].to(torch.int32),
        block_m=block_m,
    )
