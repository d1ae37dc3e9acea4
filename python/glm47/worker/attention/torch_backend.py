"""The reference MLA backend in plain torch: simple, slow, and the yardstick for the others.

Absorbed form over the latent cache (the layer has stored the step's tokens there), per sequence,
in fp32:
  score[t, h, s] = (q_nope[t, h] @ W_UK[h]) . c[s] + q_rope[t, h] . k_rope[s]
  out[t, h]      = W_UV[h] @ sum_s softmax(score * scale)[t, h, s] * c[s]
with query t at position p attending cache positions s <= p.
"""

from __future__ import annotations

import torch

from glm47.worker.attention.base import AttentionMetadata, MLAWeights, register_backend


class TorchMLABackend:
    name = "torch"

    def forward(
        self,
        q_nope: torch.Tensor,  # [T, H, nope]
        q_rope: torch.Tensor,  # [T, H, rope]
        kv_cache: torch.Tensor,  # [num_slots, R + rope]
        weights: MLAWeights,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:  # [T, H, v]
        rank = weights.w_uk.shape[2]
        q_latent = torch.einsum("thd,hdr->thr", q_nope.float(), weights.w_uk.float())  # [T, H, R]
        q_full = torch.cat([q_latent, q_rope.float()], dim=-1)  # [T, H, R + rope]
        out = torch.empty(q_latent.shape, dtype=torch.float32, device=q_latent.device)
        starts = meta.query_start_loc.tolist()
        seq_lens = meta.seq_lens.tolist()
        for b, seq_len in enumerate(seq_lens):
            lo, hi = starts[b], starts[b + 1]
            if hi == lo:
                continue
            cached = kv_cache[_slots(meta, b, seq_len)].float()  # [S, R + rope]
            scores = torch.einsum("thc,sc->hts", q_full[lo:hi], cached) * scale  # [H, q, S]
            q_pos = torch.arange(seq_len - (hi - lo), seq_len, device=scores.device)  # [q]
            k_pos = torch.arange(seq_len, device=scores.device)  # [S]
            scores.masked_fill_(k_pos[None, :] > q_pos[:, None], float("-inf"))
            probs = torch.softmax(scores, dim=-1)  # [H, q, S]
            out[lo:hi] = torch.einsum("hts,sr->thr", probs, cached[:, :rank])
        result = torch.einsum("thr,hvr->thv", out, weights.w_uv.float())  # [T, H, v]
        return result.to(q_nope.dtype)


def _slots(meta: AttentionMetadata, seq: int, seq_len: int) -> torch.Tensor:
    """Cache rows of positions [0, seq_len) of sequence `seq`, through its page table."""
    pos = torch.arange(seq_len, device=meta.page_table.device)  # [S]
    pages = meta.page_table[seq, pos // meta.page_size].long()  # [S]
    return pages * meta.page_size + pos % meta.page_size


register_backend("torch", TorchMLABackend)
