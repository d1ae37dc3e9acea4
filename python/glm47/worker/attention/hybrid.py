"""The `triton+flashinfer` decode backend: decode steps over few cached tokens through the Triton
kernel, the others through FlashInfer's MLA kernel.

FlashInfer's paged MLA decode reads the cache faster, the Triton kernel costs less per launch. On
an H200 (benchmarks/results/2026-12-02-h200, runs AE, AF and AI) FlashInfer's kernel reads the
cache at 0.83-0.95 of the copy bandwidth at batch 256, where the Triton kernel reaches 0.55-0.60,
yet the whole decode step is slower with it when the step attends over few tokens. Step times, ms,
FlashInfer against Triton:

| context | batch | cached tokens | FlashInfer | Triton |
|---|---|---|---|---|
| 1024 | 1 | 1K | 6.40 | 5.45 |
| 1024 | 128 | 131K | 22.82 | 21.94 |
| 1024 | 192 | 197K | 23.92 | 25.17 |
| 1024 | 512 | 524K | 30.64 | 34.04 |
| 8192 | 8 | 65K | 12.66 | 12.23 |
| 8192 | 16 | 131K | 16.22 | 16.57 |
| 8192 | 32 | 262K | 21.20 | 22.26 |
| 8192 | 128 | 1M | 34.52 | 41.51 |

A decode step goes to FlashInfer when it has at least `FLASHINFER_MIN_SEQS` sequences and attends
over at least `FLASHINFER_MIN_KV_TOKENS` cached tokens (between the 131K tokens where it lost at
context 1024 and the 197K where it won). Under CUDA graphs the runner captures a graph set for
each of the two backends and picks one per step by the same rule (`prefers_large`); steps of
several tokens a sequence (verification, prompt chunks) always go to Triton.
"""

from __future__ import annotations

import torch

from glm47.worker.attention.base import (
    AttentionBackend,
    AttentionMetadata,
    MLAWeights,
    register_backend,
)
from glm47.worker.attention.flashinfer_backend import FlashInferMLABackend
from glm47.worker.attention.triton_backend import TritonMLABackend

# Decode steps with at least this many sequences and cached tokens go to FlashInfer (see above).
FLASHINFER_MIN_SEQS = 16
FLASHINFER_MIN_KV_TOKENS = 160 * 1024


class TritonFlashInferBackend:
    """Registered as "triton+flashinfer"; decode and short-query steps on a CUDA device."""

    name = "triton+flashinfer"
    supports_cuda_graph = True
    supports_multi_token_cuda_graph = True  # those steps run in the Triton backend

    def __init__(
        self,
        small: AttentionBackend | None = None,
        large: AttentionBackend | None = None,
        min_seqs: int | None = None,  # None: FLASHINFER_MIN_SEQS
        min_kv_tokens: int | None = None,  # None: FLASHINFER_MIN_KV_TOKENS
    ) -> None:
        self.small = small if small is not None else TritonMLABackend()
        self.large = large if large is not None else FlashInferMLABackend()
        self.min_seqs = FLASHINFER_MIN_SEQS if min_seqs is None else min_seqs
        self.min_kv_tokens = FLASHINFER_MIN_KV_TOKENS if min_kv_tokens is None else min_kv_tokens

    def prefers_large(self, meta: AttentionMetadata) -> bool:
        """Whether a step goes to FlashInfer: a decode step with at least `min_seqs` sequences
        over at least `min_kv_tokens` cached tokens (its host-side `total_seq_len`)."""
        return (
            meta.is_decode
            and meta.num_seqs >= self.min_seqs
            and meta.total_seq_len >= self.min_kv_tokens
        )

    def backend_for(self, meta: AttentionMetadata) -> AttentionBackend:
        return self.large if self.prefers_large(meta) else self.small

    def forward(
        self,
        q_nope: torch.Tensor,  # [T, H, qk_nope_head_dim]
        q_rope: torch.Tensor,  # [T, H, qk_rope_head_dim], rope applied
        kv_cache: torch.Tensor,  # [num_slots, kv_lora_rank + qk_rope_head_dim]
        weights: MLAWeights,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:  # [T, H, v_head_dim]
        backend = self.backend_for(meta)
        return backend.forward(q_nope, q_rope, kv_cache, weights, meta, scale)


register_backend("triton+flashinfer", TritonFlashInferBackend)
