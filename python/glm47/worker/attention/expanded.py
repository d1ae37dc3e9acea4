"""MLA in the expanded form: keys and values rebuilt per head from the cached latents.

For prefill and extend steps. Per layer, after the layer has stored [c | k_rope] of the new tokens
at their slots:
  c, kr  <- the cached rows of every sequence's positions [0, seq_len), gathered through the pages
  k_h    = [W_UK[h] c | kr]        (qk head dim nope + rope, 256 on the real model)
  v_h    = W_UV[h] c               (v head dim, 256 on the real model)
  out    = causal varlen attention of q = [q_nope | q_rope] over (k, v)
Queries are the last q_len positions of each sequence, so FlashAttention's bottom-right causal
alignment (query i sees keys up to i + seq_len - q_len) is exactly the model's causal mask.

The attention itself is a `VarlenAttention` given to `ExpandedMLA`: FlashAttention-3 in the `fa3`
backend, kernels/varlen_attention in the `triton` backend's long prefill steps, plain torch in the
CPU tests of the gather and expansion.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from glm47.worker.attention.base import AttentionMetadata, MLAWeights

# (q [T, H, Dqk], k [S, H, Dqk], v [S, H, Dv], cu_seqlens_q [B + 1] int32,
#  cu_seqlens_k [B + 1] int32, max_seqlen_q, max_seqlen_k, softmax_scale) -> [T, H, Dv]
VarlenAttention = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, int, float],
    torch.Tensor,
]


@dataclass
class KeyGather:
    """Where each sequence's cached keys are, concatenated in batch order (one per step)."""

    slots: torch.Tensor  # [S] int64: cache row of position p of sequence b, S = sum(seq_lens)
    cu_seqlens_k: torch.Tensor  # [B + 1] int32: start of each sequence's keys in the S rows


def build_key_gather(meta: AttentionMetadata) -> KeyGather:
    """Cache rows of positions [0, seq_len) of every sequence, through the page tables."""
    device = meta.seq_lens.device
    lens = meta.seq_lens.long()  # [B]
    # the step's host copy, else the one host read of a step
    total = meta.total_seq_len or int(lens.sum().item())
    cu = torch.zeros(lens.shape[0] + 1, dtype=torch.int64, device=device)
    torch.cumsum(lens, dim=0, out=cu[1:])
    seq = torch.repeat_interleave(
        torch.arange(lens.shape[0], device=device), lens, output_size=total
    )
    pos = torch.arange(total, device=device) - cu[seq]  # [S] position within its sequence
    pages = meta.page_table[seq, pos // meta.page_size].long()  # [S]
    return KeyGather(slots=pages * meta.page_size + pos % meta.page_size, cu_seqlens_k=cu.int())


def expand_keys_values(
    c: torch.Tensor,  # [S, rank]: cached latents
    weights: MLAWeights,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:  # k_nope [S, H, nope], v [S, H, v]
    """Keys and values of the expanded form. With the whole kv_b at hand, one matmul, and v stays
    a strided view of its output (attention kernels need only a contiguous last dimension)."""
    if weights.w_kv is not None:
        heads, width, rank = weights.w_kv.shape
        nope = weights.w_uk.shape[1]
        kv = c @ weights.w_kv.reshape(heads * width, rank).to(dtype).t()  # [S, H * (nope + v)]
        kv = kv.view(-1, heads, width)
        return kv[..., :nope], kv[..., nope:]
    k_nope = torch.einsum("sr,hdr->shd", c, weights.w_uk.to(dtype))
    v = torch.einsum("sr,hdr->shd", c, weights.w_uv.to(dtype)).contiguous()
    return k_nope, v


class ExpandedMLA:
    """The gather, the expansion and the attention of one step; the key gather is planned once
    a step and shared by its layers. Not for CUDA graphs: the gather's size is the step's."""

    def __init__(self, attend: VarlenAttention) -> None:
        self._attend = attend
        self._plan: tuple[AttentionMetadata, KeyGather] | None = None

    def forward(
        self,
        q_nope: torch.Tensor,  # [T, H, qk_nope_head_dim]
        q_rope: torch.Tensor,  # [T, H, qk_rope_head_dim], rope applied
        kv_cache: torch.Tensor,  # [num_slots, kv_lora_rank + qk_rope_head_dim]
        weights: MLAWeights,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:  # [T, H, v_head_dim]
        dtype = q_nope.dtype
        rank = weights.w_uk.shape[2]
        heads = q_nope.shape[1]
        gather = self._gather(meta)
        cached = kv_cache[gather.slots].to(dtype)  # [S, rank + rope]
        c, kr = cached[:, :rank], cached[:, rank:]
        k_nope, v = expand_keys_values(c, weights, dtype)  # [S, H, nope], [S, H, v]
        k = torch.cat([k_nope, kr.unsqueeze(1).expand(-1, heads, -1)], dim=-1)  # [S, H, nope+rope]
        q = torch.cat([q_nope, q_rope], dim=-1).contiguous()  # [T, H, nope + rope]
        out = self._attend(
            q, k, v, meta.query_start_loc, gather.cu_seqlens_k, meta.max_query_len,
            meta.max_seq_len, scale,
        )  # fmt: skip
        return out.to(dtype)  # [T, H, v_head_dim]

    def _gather(self, meta: AttentionMetadata) -> KeyGather:
        """One gather per step: every layer of a forward pass shares the metadata object."""
        if self._plan is None or self._plan[0] is not meta:
            self._plan = (meta, build_key_gather(meta))
        return self._plan[1]
