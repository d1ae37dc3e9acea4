"""The fa3 backend's gather and expansion, with a plain torch causal varlen attention standing in
for FlashAttention-3, against the torch reference backend (fp32, CPU)."""

from __future__ import annotations

import pytest
import torch

from glm47.worker.attention.base import AttentionMetadata, MLAWeights
from glm47.worker.attention.expanded import build_key_gather
from glm47.worker.attention.fa3_backend import Fa3MLABackend
from glm47.worker.attention.torch_backend import TorchMLABackend

H, NOPE, ROPE, RANK, V = 3, 8, 4, 16, 6
PAGE = 4


def varlen_ref(
    q: torch.Tensor,  # [T, H, D]
    k: torch.Tensor,  # [S, H, D]
    v: torch.Tensor,  # [S, H, Dv]
    cu_q: torch.Tensor,
    cu_k: torch.Tensor,
    max_q: int,
    max_k: int,
    scale: float,
) -> torch.Tensor:  # [T, H, Dv]
    """Causal attention per sequence, queries aligned to the end of the keys."""
    assert max_q == int((cu_q[1:] - cu_q[:-1]).max()) and max_k >= int((cu_k[1:] - cu_k[:-1]).max())
    out = torch.empty(q.shape[0], q.shape[1], v.shape[2])
    for b in range(cu_q.shape[0] - 1):
        q0, q1, k0, k1 = int(cu_q[b]), int(cu_q[b + 1]), int(cu_k[b]), int(cu_k[b + 1])
        s = torch.einsum("qhd,khd->hqk", q[q0:q1], k[k0:k1]) * scale
        qpos = torch.arange(q1 - q0) + (k1 - k0) - (q1 - q0)
        s.masked_fill_(torch.arange(k1 - k0)[None, :] > qpos[:, None], float("-inf"))
        out[q0:q1] = torch.einsum("hqk,khd->qhd", s.softmax(-1), v[k0:k1])
    return out


def _meta(prefixes: list[int], news: list[int], tables: list[list[int]]) -> AttentionMetadata:
    width = max(len(t) for t in tables)
    table = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32)
    positions, slots = [], []
    for b, (p, n) in enumerate(zip(prefixes, news, strict=True)):
        for pos in range(p, p + n):
            positions.append(pos)
            slots.append(tables[b][pos // PAGE] * PAGE + pos % PAGE)
    starts = torch.tensor([0, *news]).cumsum(0).int()
    lens = [p + n for p, n in zip(prefixes, news, strict=True)]
    return AttentionMetadata(
        positions=torch.tensor(positions),
        slot_mapping=torch.tensor(slots),
        query_start_loc=starts,
        seq_lens=torch.tensor(lens, dtype=torch.int32),
        page_table=table,
        page_size=PAGE,
        max_query_len=max(news),
        max_seq_len=max(lens),
        is_decode=all(n == 1 for n in news),
    )


def test_key_gather_walks_the_page_tables() -> None:
    meta = _meta([2, 0], [3, 2], [[7, 3], [5]])
    gather = build_key_gather(meta)
    assert gather.cu_seqlens_k.tolist() == [0, 5, 7]
    assert gather.slots.tolist() == [28, 29, 30, 31, 12, 20, 21]
    meta.total_seq_len = 7  # the step builder's host copy: the same gather without a device read
    assert build_key_gather(meta).slots.tolist() == gather.slots.tolist()


@pytest.mark.parametrize("whole_kv_b", [True, False])
def test_expanded_attention_matches_the_absorbed_torch_reference(whole_kv_b: bool) -> None:
    torch.manual_seed(0)
    prefixes, news = [5, 0, 7, 2], [3, 4, 1, 1]
    tables = [[9, 2], [4], [1, 6], [3]]
    meta = _meta(prefixes, news, tables)
    t = sum(news)
    cache = torch.randn(12 * PAGE, RANK + ROPE)  # prefixes: random cached latents
    kv_b = torch.randn(H, NOPE + V, RANK) / RANK**0.5
    weights = MLAWeights(
        w_uk=kv_b[:, :NOPE], w_uv=kv_b[:, NOPE:], w_kv=kv_b if whole_kv_b else None
    )
    args = (torch.randn(t, H, NOPE), torch.randn(t, H, ROPE))
    cache[meta.slot_mapping] = torch.randn(t, RANK + ROPE)  # the new tokens, as the layer writes
    scale = (NOPE + ROPE) ** -0.5
    before = cache.clone()
    expected = TorchMLABackend().forward(*args, cache, weights, meta, scale)
    backend = Fa3MLABackend(attend=varlen_ref)
    got = backend.forward(*args, cache, weights, meta, scale)
    assert got.shape == (t, H, V)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert torch.equal(cache, before)  # the backend only reads the cache
    again = backend.forward(*args, cache, weights, meta, scale)  # planned gather reused
    torch.testing.assert_close(again, got, atol=0, rtol=0)
