"""The `fa3` MLA backend: FlashAttention-3 over keys and values expanded from the latent cache.

Expanded form, for prefill and extend steps (any batch layout works, decode included, but decode is
cheaper absorbed). Per layer, after the layer has stored [c | k_rope] of the new tokens at their
slots:
  c, kr  <- the cached rows of every sequence's positions [0, seq_len), gathered through the pages
  k_h    = [W_UK[h] c | kr]        (qk head dim nope + rope, 256 on the real model)
  v_h    = W_UV[h] c               (v head dim, 256 on the real model)
  out    = causal varlen attention of q = [q_nope | q_rope] over (k, v)
Queries are the last q_len positions of each sequence, so FlashAttention's bottom-right causal
alignment (query i sees keys up to i + seq_len - q_len) is exactly the model's causal mask.

The kernel comes from `fa3_fwd_interface` (the `fa3-fwd` wheel) or `flash_attn_interface` (the
flash-attn package's Hopper build); any function with the same signature can be injected, which
is how the CPU tests check the gather and expansion against the torch backend.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from glm47.worker.attention.base import AttentionMetadata, MLAWeights, register_backend

# Modules that provide `flash_attn_varlen_func`, in order of preference.
REQUIRED_MODULES = ("fa3_fwd_interface", "flash_attn_interface")
INSTALL_HINT = (
    "the fa3 attention backend needs FlashAttention-3 for Hopper: `pip install fa3-fwd` "
    "(module fa3_fwd_interface) or flash-attn's hopper build (module flash_attn_interface)"
)

# (q [T, H, Dqk], k [S, H, Dqk], v [S, H, Dv], cu_seqlens_q [B + 1] int32,
#  cu_seqlens_k [B + 1] int32, max_seqlen_q, max_seqlen_k, softmax_scale) -> [T, H, Dv]
VarlenAttention = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, int, float],
    torch.Tensor,
]


def load_fa3() -> VarlenAttention:
    """The causal varlen FlashAttention-3 call; a missing package raises ValueError with the fix."""
    for module_name in REQUIRED_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        return _causal_varlen(module.flash_attn_varlen_func)
    raise ValueError(INSTALL_HINT)


def _causal_varlen(fn: Callable[..., Any]) -> VarlenAttention:
    def attend(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cu_q: torch.Tensor,
        cu_k: torch.Tensor,
        max_q: int,
        max_k: int,
        scale: float,
    ) -> torch.Tensor:
        out = fn(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=scale, causal=True)
        return out[0] if isinstance(out, tuple) else out  # some versions also return the lse

    return attend


@dataclass
class KeyGather:
    """Where each sequence's cached keys are, concatenated in batch order (one per step)."""

    slots: torch.Tensor  # [S] int64: cache row of position p of sequence b, S = sum(seq_lens)
    cu_seqlens_k: torch.Tensor  # [B + 1] int32: start of each sequence's keys in the S rows


def build_key_gather(meta: AttentionMetadata) -> KeyGather:
    """Cache rows of positions [0, seq_len) of every sequence, through the page tables."""
    device = meta.seq_lens.device
    lens = meta.seq_lens.long()  # [B]
    total = int(lens.sum().item())  # the one host read of a step
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


class Fa3MLABackend:
    """Registered as "fa3". Host reads once per step, so it is not captured in CUDA graphs."""

    name = "fa3"
    supports_cuda_graph = False

    def __init__(self, attend: VarlenAttention | None = None) -> None:
        self._attend = attend if attend is not None else load_fa3()
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


register_backend("fa3", Fa3MLABackend)
