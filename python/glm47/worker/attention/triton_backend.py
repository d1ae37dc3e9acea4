"""The Triton MLA backend: absorbed attention over the paged latent cache.

Per layer (the layer has stored the step's new latents in the cache): project the queries into
the latent space with W_UK, attend with the split-K decode kernel when every sequence has one new
token and with the variable-length causal prefill kernel otherwise, then map the attended latents
to values with W_UV. Both kernels read the cache in place; nothing is expanded per head.
"""

from __future__ import annotations

import torch

from glm47.kernels.device import num_sms
from glm47.kernels.mla_decode import default_num_splits, mla_decode
from glm47.kernels.mla_prefill import mla_prefill
from glm47.worker.attention.base import (
    AttentionMetadata,
    MLAWeights,
    absorb_query,
    register_backend,
    values_from_latents,
)


class TritonMLABackend:
    """Registered as "triton"; works wherever Triton runs (the interpreter included)."""

    name = "triton"
    supports_cuda_graph = True
    # Its short-query path (mla_prefill) takes its grid from max_query_len and the batch, and
    # every position from the metadata tensors: graphs of verification steps hold.
    supports_multi_token_cuda_graph = True

    def forward(
        self,
        q_nope: torch.Tensor,  # [T, H, qk_nope_head_dim]
        q_rope: torch.Tensor,  # [T, H, qk_rope_head_dim], rope applied
        kv_cache: torch.Tensor,  # [num_slots, kv_lora_rank + qk_rope_head_dim]
        weights: MLAWeights,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:  # [T, H, v_head_dim]
        dtype = kv_cache.dtype
        rope_dim = q_rope.shape[-1]
        # The kernels read the latent and rope parts of the query from two tensors, so the
        # [T, H, rank] view of the absorbed product is never copied into a concatenation.
        q_lat = absorb_query(q_nope, weights)  # [T, H, rank]
        q_lat, q_pe = q_lat.to(dtype), q_rope.to(dtype)
        if q_pe.stride(-1) != 1:
            q_pe = q_pe.contiguous()
        if meta.is_decode:
            splits = default_num_splits(q_lat.shape[0], num_sms(q_lat.device))
            att = mla_decode(
                q_lat, kv_cache, meta.page_table, meta.seq_lens, meta.page_size, scale,
                d_rope=rope_dim, num_splits=splits, q_rope=q_pe,
            )  # fmt: skip
        else:
            att = mla_prefill(
                q_lat, kv_cache, meta.page_table, meta.query_start_loc, meta.seq_lens,
                meta.max_query_len, meta.page_size, scale, d_rope=rope_dim, q_rope=q_pe,
            )  # fmt: skip
        return values_from_latents(att, weights, q_nope.dtype)  # [T, H, v_head_dim]


register_backend("triton", TritonMLABackend)
