"""mla_prefill against its torch reference: variable lengths, cached prefixes, causal."""

from __future__ import annotations

import pytest
import torch
from kernel_utils import ON_GPU, rel_err
from test_mla_decode import make_paged_cache, query_parts

from glm47.kernels.mla_prefill import mla_prefill, mla_prefill_ref

# (heads, d_lat, d_rope, [(new tokens, cached prefix)], page_size, block_m)
CASES = (
    [
        (3, 32, 16, [(5, 0), (1, 9), (17, 20)], 4, 16),
        (4, 64, 16, [(33, 0)], 1, 32),
        (2, 32, 16, [(7, 3), (2, 0)], 16, 16),
    ]
    if not ON_GPU
    else [
        (20, 512, 64, [(1000, 0), (1, 4000), (513, 3000), (64, 64)], 64, 32),
        (20, 512, 64, [(2048, 0)], 16, 64),
    ]
)


@pytest.mark.parametrize(("heads", "d_lat", "d_rope", "seqs", "page_size", "block_m"), CASES)
def test_mla_prefill_matches_reference(
    heads: int,
    d_lat: int,
    d_rope: int,
    seqs: list[tuple[int, int]],
    page_size: int,
    block_m: int,
    device: str,
    dtype: torch.dtype,
) -> None:
    width = d_lat + d_rope
    lens = [n + p for n, p in seqs]
    cache, table = make_paged_cache(lens, width, page_size, dtype, device)
    new = [n for n, _ in seqs]
    qsl = torch.tensor([0, *torch.tensor(new).cumsum(0).tolist()], dtype=torch.int32, device=device)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    q = torch.randn((sum(new), heads, width), dtype=dtype, device=device)
    scale = (d_lat // 2) ** -0.5
    out = mla_prefill(
        q, cache, table, qsl, seq_lens, max(new), page_size, scale, d_rope=d_rope, block_m=block_m
    )
    ref = mla_prefill_ref(
        q.double(), cache.double(), table, qsl, seq_lens, page_size, scale, d_rope
    )
    assert out.shape == (sum(new), heads, d_lat)
    assert rel_err(out, ref) < 1e-2
    q_lat, q_pe = query_parts(q, d_lat)
    apart = mla_prefill(
        q_lat, cache, table, qsl, seq_lens, max(new), page_size, scale, d_rope=d_rope,
        block_m=block_m, q_rope=q_pe,
    )  # fmt: skip
    torch.testing.assert_close(apart, out, rtol=0, atol=0)


def test_mla_prefill_first_token_sees_only_itself(device: str, dtype: torch.dtype) -> None:
    """A prompt's first token attends to its own latent alone: the output is that value row."""
    cache, table = make_paged_cache([6], 48, 2, dtype, device)
    qsl = torch.tensor([0, 6], dtype=torch.int32, device=device)
    lens = torch.tensor([6], dtype=torch.int32, device=device)
    q = torch.randn((6, 2, 48), dtype=dtype, device=device)
    out = mla_prefill(q, cache, table, qsl, lens, 6, 2, 0.2, d_rope=16, block_m=16)
    first_slot = int(table[0, 0]) * 2
    torch.testing.assert_close(out[0], cache[first_slot, :32].expand(2, 32))
