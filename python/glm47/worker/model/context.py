"""What every layer of one forward pass shares: batch layout, KV cache and attention backend."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from glm47.worker.attention.base import AttentionBackend, AttentionMetadata


@dataclass
class ForwardContext:
    meta: AttentionMetadata  # positions, slots, page tables of this step
    kv_cache: torch.Tensor  # [num_cache_layers, num_slots, kv_lora_rank + qk_rope_head_dim]
    backend: AttentionBackend  # chosen by the runner for this step (prefill or decode)
