"""What the MLA attention kernels (kernels/mla_decode, kernels/mla_prefill) share: the query's
two parts, the checks of the query against the paged latent cache, and a sequence's cached rows.
"""

from __future__ import annotations

import torch

LOG2E = 1.4426950408889634  # softmax runs in exp2: scores are pre-scaled by log2(e)


def check_q_and_cache(q: torch.Tensor, kv_cache: torch.Tensor, width: int) -> None:
    """The checks shared by the MLA launchers: the query is W wide, kv_cache [slots, >= W], both
    with a contiguous last dimension and one dtype."""
    if kv_cache.dim() != 2 or kv_cache.shape[1] < width:
        raise ValueError(f"kv_cache must be [slots, >= {width}], got {tuple(kv_cache.shape)}")
    if kv_cache.stride(1) != 1 or q.stride(-1) != 1:
        raise ValueError("q and kv_cache need a contiguous last dimension")
    if q.dtype != kv_cache.dtype:
        raise ValueError(f"q dtype {q.dtype} != kv_cache dtype {kv_cache.dtype}")


def split_query(
    q: torch.Tensor, q_rope: torch.Tensor | None, d_rope: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(latent part [.., H, D_LAT], rope part [.., H, D_ROPE]) of the query: views of one
    `[.., H, D_LAT + D_ROPE]` tensor, or `q` and `q_rope` given apart (then no concatenation is
    needed before the launch). Both need a contiguous last dimension and q's dtype."""
    if q_rope is None:
        d_lat = q.shape[-1] - d_rope
        return q[..., :d_lat], q[..., d_lat:]
    if q_rope.shape[:-1] != q.shape[:-1] or q_rope.shape[-1] != d_rope:
        raise ValueError(f"q_rope must be {(*q.shape[:-1], d_rope)}, got {tuple(q_rope.shape)}")
    if q_rope.stride(-1) != 1 or q_rope.dtype != q.dtype:
        raise ValueError("q_rope needs a contiguous last dimension and the dtype of q")
    return q, q_rope


def gather_latents(
    kv_cache: torch.Tensor,  # [num_slots, W]
    page_ids: torch.Tensor,  # [max_pages] int
    length: int,
    page_size: int,
) -> torch.Tensor:  # [length, W]
    """The cached rows of positions [0, length) of one sequence."""
    pos = torch.arange(length, device=kv_cache.device)
    slots = page_ids.long()[pos // page_size] * page_size + pos % page_size
    return kv_cache[slots]


__all__ = ["LOG2E", "check_q_and_cache", "gather_latents", "split_query"]
