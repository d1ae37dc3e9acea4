"""The "triton" attention backend against the "torch" reference backend, decode and extend."""

from __future__ import annotations

import pytest
import torch
from kernel_utils import ON_GPU, rel_err
from test_mla_decode import make_paged_cache

import glm47.worker.attention.torch_backend  # noqa: F401
from glm47.worker.attention.base import AttentionMetadata, MLAWeights, create_backend
from glm47.worker.attention.triton_backend import prefers_expanded

# heads, nope, rope, rank, v
DIMS = (20, 192, 64, 512, 256) if ON_GPU else (4, 16, 16, 32, 16)


def make_meta(
    seqs: list[tuple[int, int]], page_size: int, width: int, dtype: torch.dtype, device: str
) -> tuple[AttentionMetadata, torch.Tensor]:
    """Metadata for sequences of (new tokens, cached tokens) and a random cache holding them."""
    lens = [n + c for n, c in seqs]
    cache, table = make_paged_cache(lens, width, page_size, dtype, device)
    positions, slots, qsl = [], [], [0]
    for i, (n, c) in enumerate(seqs):
        pos = torch.arange(c, c + n)
        positions.append(pos)
        slots.append(table[i].cpu().long()[pos // page_size] * page_size + pos % page_size)
        qsl.append(qsl[-1] + n)
    meta = AttentionMetadata(
        positions=torch.cat(positions).to(device),
        slot_mapping=torch.cat(slots).to(device),
        query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(lens, dtype=torch.int32, device=device),
        page_table=table,
        page_size=page_size,
        max_query_len=max(n for n, _ in seqs),
        max_seq_len=max(lens),
        is_decode=all(n == 1 for n, _ in seqs),
        total_seq_len=sum(lens),
        attended_pairs=sum(n * c + n * (n + 1) // 2 for n, c in seqs),
    )
    return meta, cache


# (new tokens, cached tokens) a sequence; "prompts" takes the expanded form, the others the
# absorbed one (checked in the test)
CASES = {
    "decode": [(1, 5), (1, 0), (1, 70), (1, 33)],
    "extend": [(6, 0), (3, 11), (1, 20)],
    "prompts": [(40, 0), (33, 2)],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_triton_backend_matches_torch_backend(case: str, device: str, dtype: torch.dtype) -> None:
    heads, nope, rope, rank, v = DIMS
    seqs = CASES[case] if not ON_GPU else [(n * 7, c * 50) for n, c in CASES[case]]
    if ON_GPU and case == "decode":
        seqs = [(1, c * 50) for _, c in CASES[case]]
    if ON_GPU and case == "prompts":  # long enough for the expanded form at the real widths
        seqs = [(1024, 0), (700, 300)]
    meta, cache = make_meta(seqs, 4, rank + rope, dtype, device)
    t = sum(n for n, _ in seqs)
    q_nope = torch.randn((t, heads, nope), dtype=dtype, device=device)
    q_rope = torch.randn((t, heads, rope), dtype=dtype, device=device)
    latent = torch.randn((t, rank), dtype=dtype, device=device)
    k_rope = torch.randn((t, rope), dtype=dtype, device=device)
    weights = MLAWeights(
        w_uk=torch.randn((heads, nope, rank), dtype=dtype, device=device) * nope**-0.5,
        w_uv=torch.randn((heads, v, rank), dtype=dtype, device=device) * rank**-0.5,
    )
    scale = (nope + rope) ** -0.5
    assert prefers_expanded(meta, weights, rope) == (case == "prompts")
    cache[meta.slot_mapping] = torch.cat([latent, k_rope], dim=-1)  # the layer's write
    before = cache.clone()
    out = create_backend("triton").forward(q_nope, q_rope, cache, weights, meta, scale)
    ref = create_backend("torch").forward(q_nope, q_rope, cache, weights, meta, scale)
    assert out.shape == (t, heads, v) and out.dtype == dtype
    assert torch.equal(cache, before)  # backends only read the cache
    assert rel_err(out, ref) < 2e-2


def test_the_expanded_form_is_weighed_against_the_absorbed_one() -> None:
    """At the real widths: a long fresh prompt expanded, a short extend after a long prefix and a
    short prompt absorbed, decode steps and graphs' metadata (no pair count) never expanded, nor
    steps whose expanded keys and values would pass EXPANDED_MAX_BYTES (74K tokens in bf16)."""
    heads, nope, rope, rank, v = 20, 192, 64, 512, 256
    bf16 = torch.bfloat16
    weights = MLAWeights(
        w_uk=torch.empty((heads, nope, rank), dtype=bf16),
        w_uv=torch.empty((heads, v, rank), dtype=bf16),
    )

    def meta(seqs: list[tuple[int, int]], pairs: int | None = None) -> AttentionMetadata:
        lens = [n + c for n, c in seqs]
        return AttentionMetadata(
            positions=torch.empty(0), slot_mapping=torch.empty(0), query_start_loc=torch.empty(0),
            seq_lens=torch.empty(0), page_table=torch.empty(0), page_size=16,
            max_query_len=max(n for n, _ in seqs), max_seq_len=max(lens),
            is_decode=all(n == 1 for n, _ in seqs), total_seq_len=sum(lens),
            attended_pairs=sum(n * c + n * (n + 1) // 2 for n, c in seqs) if pairs is None else pairs,
        )  # fmt: skip

    assert prefers_expanded(meta([(8192, 0)]), weights, rope)
    assert prefers_expanded(meta([(2048, 6144)]), weights, rope)
    assert not prefers_expanded(meta([(16, 8000)]), weights, rope)
    assert not prefers_expanded(meta([(64, 0)]), weights, rope)
    assert not prefers_expanded(meta([(1, 9000)] * 8), weights, rope)
    assert not prefers_expanded(meta([(8192, 0)], pairs=0), weights, rope)
    assert prefers_expanded(meta([(8192, 60 * 1024)]), weights, rope)
    assert not prefers_expanded(meta([(8192, 68 * 1024)]), weights, rope)
