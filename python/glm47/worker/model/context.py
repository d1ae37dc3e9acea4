"""What every layer of one forward pass shares: batch layout, KV cache and attention backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from glm47.worker.attention.base import AttentionBackend, AttentionMetadata


class CacheWrite(NamedTuple):
    """Where the MLA layers store the step's new latents, each in its own cache layer, before
    they attend. Segment graphs hand the layers their own static slots (padding rows at page 0)."""

    kv_cache: torch.Tensor  # [num_cache_layers, num_slots, kv_lora_rank + qk_rope_head_dim]
    slot_mapping: torch.Tensor  # [T] int64: cache row of each new token


@dataclass
class ForwardContext:
    meta: AttentionMetadata  # positions, slots, page tables of this step
    kv_cache: torch.Tensor  # [num_cache_layers, num_slots, kv_lora_rank + qk_rope_head_dim]
    backend: AttentionBackend  # chosen by the runner for this step (prefill or decode)

    @property
    def cache_write(self) -> CacheWrite:
        """The new tokens' cache rows: the step's slots, all of its rows (split steps too)."""
        return CacheWrite(self.kv_cache, self.meta.slot_mapping)
