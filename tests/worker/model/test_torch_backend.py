"""The torch MLA backend against the expanded (non-absorbed) attention written out directly."""

from __future__ import annotations

import pytest
import torch

from glm47.worker.attention.base import AttentionMetadata, MLAWeights, create_backend
from glm47.worker.attention.torch_backend import TorchMLABackend

HEADS, NOPE, ROPE, V, RANK = 3, 16, 8, 12, 32


def _expanded_attention(
    q_nope: torch.Tensor,  # [q, H, NOPE]
    q_rope: torch.Tensor,  # [q, H, ROPE]
    latent: torch.Tensor,  # [S, RANK]
    k_rope: torch.Tensor,  # [S, ROPE]
    kv_b: torch.Tensor,  # [H * (NOPE + V), RANK]
    scale: float,
) -> torch.Tensor:  # [q, H, V]
    """One sequence whose last q tokens are the queries: rebuild k and v, causal softmax."""
    seq_len, q_len = latent.shape[0], q_nope.shape[0]
    kv = (latent @ kv_b.T).view(seq_len, HEADS, NOPE + V)
    k = torch.cat([kv[..., :NOPE], k_rope[:, None].expand(-1, HEADS, -1)], dim=-1)  # [S, H, D]
    q = torch.cat([q_nope, q_rope], dim=-1)  # [q, H, D]
    scores = torch.einsum("thd,shd->hts", q, k) * scale
    allowed = torch.arange(seq_len)[None, :] <= torch.arange(seq_len - q_len, seq_len)[:, None]
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    return torch.einsum("hts,shv->thv", probs, kv[..., NOPE:])


@pytest.mark.parametrize("page_size", [1, 4])
def test_mixed_batch_with_cached_prefixes_matches_expanded_attention(page_size: int) -> None:
    """Prefill from scratch, a chunk after a cached prefix, and a decode token, in one batch."""
    torch.manual_seed(page_size)
    cached, new = [0, 5, 9], [6, 4, 1]  # per sequence: tokens already cached, tokens this step
    num_pages = 40
    kv_cache = torch.zeros(num_pages * page_size, RANK + ROPE)
    perm = (torch.randperm(num_pages - 1) + 1).tolist()  # page 0 stays the padding page
    totals = [c + n for c, n in zip(cached, new, strict=True)]
    widths = [-(-t // page_size) for t in totals]
    tables = [perm[sum(widths[:i]) : sum(widths[: i + 1])] for i in range(3)]
    latents = [torch.randn(t, RANK) for t in totals]
    k_ropes = [torch.randn(t, ROPE) for t in totals]

    def slot(b: int, pos: int) -> int:
        return tables[b][pos // page_size] * page_size + pos % page_size

    # the cached prefixes were written by earlier steps, this step's tokens by the layer
    for b in range(3):
        for pos in range(totals[b]):
            kv_cache[slot(b, pos)] = torch.cat([latents[b][pos], k_ropes[b][pos]])
    page_table = torch.zeros(3, max(widths), dtype=torch.int32)
    for b in range(3):
        page_table[b, : widths[b]] = torch.tensor(tables[b])
    meta = AttentionMetadata(
        positions=torch.cat([torch.arange(c, t) for c, t in zip(cached, totals, strict=True)]),
        slot_mapping=torch.tensor(
            [slot(b, p) for b in range(3) for p in range(cached[b], totals[b])]
        ),
        query_start_loc=torch.tensor([0, 6, 10, 11], dtype=torch.int32),
        seq_lens=torch.tensor(totals, dtype=torch.int32),
        page_table=page_table,
        page_size=page_size,
        max_query_len=6,
        max_seq_len=max(totals),
        is_decode=False,
    )
    kv_b = torch.randn(HEADS * (NOPE + V), RANK) * 0.2
    view = kv_b.view(HEADS, NOPE + V, RANK)
    weights = MLAWeights(w_uk=view[:, :NOPE], w_uv=view[:, NOPE:])
    q_nope, q_rope = torch.randn(11, HEADS, NOPE), torch.randn(11, HEADS, ROPE)

    backend = create_backend("torch")
    assert isinstance(backend, TorchMLABackend)
    before = kv_cache.clone()
    out = backend.forward(q_nope, q_rope, kv_cache, weights, meta, 0.3)

    assert out.shape == (11, HEADS, V)
    starts = [0, 6, 10, 11]
    for b in range(3):
        rows = slice(starts[b], starts[b + 1])
        expected = _expanded_attention(
            q_nope[rows], q_rope[rows], latents[b], k_ropes[b], kv_b, 0.3
        )
        torch.testing.assert_close(out[rows], expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(kv_cache, before)  # the backend only reads the cache
