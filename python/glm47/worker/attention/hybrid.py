"""The `triton+flashinfer` decode backend: small decode batches through the Triton kernel, large
ones through FlashInfer's MLA kernel.

On an H200 (benchmarks/results/2026-12-02-h200, runs AE-AF) FlashInfer's paged MLA decode reads
the cache at 0.83-0.95 of the copy bandwidth at batch 256, where the Triton kernel reaches
0.55-0.60. Whole decode steps (context 1024) are faster with FlashInfer from batch 192 on (23.92
against 25.17 ms; 30.64 against 34.04 at 512) and slower up to batch 128 (22.82 against 21.94 ms;
6.40 against 5.45 at batch 1), hence the threshold. Each captured
decode graph and each eager step takes one of the two by its number of sequences; steps of several
tokens a sequence (verification, prompt chunks) always go to Triton.
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

# Decode steps of at least this many sequences go to FlashInfer (run AF, see the docstring).
FLASHINFER_MIN_BATCH = 192


class TritonFlashInferBackend:
    """Registered as "triton+flashinfer"; decode and short-query steps on a CUDA device."""

    name = "triton+flashinfer"
    supports_cuda_graph = True
    supports_multi_token_cuda_graph = True  # those steps run in the Triton backend

    def __init__(
        self,
        small: AttentionBackend | None = None,
        large: AttentionBackend | None = None,
        min_large_batch: int | None = None,  # None: FLASHINFER_MIN_BATCH
    ) -> None:
        self.small = small if small is not None else TritonMLABackend()
        self.large = large if large is not None else FlashInferMLABackend()
        self.min_large_batch = FLASHINFER_MIN_BATCH if min_large_batch is None else min_large_batch

    def backend_for(self, meta: AttentionMetadata) -> AttentionBackend:
        """FlashInfer for plain decode steps of at least `min_large_batch` sequences."""
        if meta.is_decode and meta.num_seqs >= self.min_large_batch:
            return self.large
        return self.small

    def forward(
        self,
        q_nope: torch.Tensor,  # [T, H, qk_nope_head_dim]
        q_rope: torch.Tensor,  # [T, H, qk_rope_head_dim], rope applied
        latent: torch.Tensor,  # [T, kv_lora_rank], normalised
        k_rope: torch.Tensor,  # [T, qk_rope_head_dim], rope applied
        kv_cache: torch.Tensor,  # [num_slots, kv_lora_rank + qk_rope_head_dim]
        weights: MLAWeights,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:  # [T, H, v_head_dim]
        backend = self.backend_for(meta)
        return backend.forward(q_nope, q_rope, latent, k_rope, kv_cache, weights, meta, scale)

    def prepare_graph_replay(self, meta: AttentionMetadata) -> None:
        """FlashInfer's plan for the graphs it serves (see FlashInferMLABackend)."""
        hook = getattr(self.backend_for(meta), "prepare_graph_replay", None)
        if hook is not None:
            hook(meta)


register_backend("triton+flashinfer", TritonFlashInferBackend)
