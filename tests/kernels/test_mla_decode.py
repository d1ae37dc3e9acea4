"""mla_decode against its torch reference on random paged caches."""

from __future__ import annotations

import pytest
import torch
from kernel_utils import ON_GPU, rel_err

from glm47.kernels.mla_decode import mla_decode, mla_decode_ref


def make_paged_cache(
    seq_lens: list[int], width: int, page_size: int, dtype: torch.dtype, device: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """A cache with shuffled pages (page 0 reserved) and the page table pointing into it."""
    pages_per_seq = [(n + page_size - 1) // page_size for n in seq_lens]
    total = sum(pages_per_seq) + 1
    perm = torch.randperm(total - 1) + 1
    max_pages = max(pages_per_seq)
    table = torch.zeros((len(seq_lens), max_pages), dtype=torch.int32)
    at = 0
    for i, n in enumerate(pages_per_seq):
        table[i, :n] = perm[at : at + n].int()
        at += n
    cache = torch.randn((total * page_size, width), dtype=dtype, device=device)
    return cache, table.to(device)


CASES = (
    [(4, 32, 16, [1, 7, 40, 129], 1), (3, 64, 16, [300, 5, 64], 4), (2, 32, 16, [33, 17], 2)]
    if not ON_GPU
    else [(20, 512, 64, [1, 1000, 8192, 77], 64), (20, 512, 64, [4097] * 8, 16)]
)


@pytest.mark.parametrize(("heads", "d_lat", "d_rope", "lens", "page_size"), CASES)
@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize(("rescale_slack", "block_n"), [(8.0, None), (0.0, 32), (8.0, 16)])
def test_mla_decode_matches_reference(
    heads: int,
    d_lat: int,
    d_rope: int,
    lens: list[int],
    page_size: int,
    num_splits: int,
    rescale_slack: float,
    block_n: int | None,
    device: str,
    dtype: torch.dtype,
) -> None:
    width = d_lat + d_rope
    cache, table = make_paged_cache(lens, width, page_size, dtype, device)
    q = torch.randn((len(lens), heads, width), dtype=dtype, device=device)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    scale = (d_lat // 2) ** -0.5
    out = mla_decode(
        q, cache, table, seq_lens, page_size, scale, d_rope=d_rope, num_splits=num_splits,
        rescale_slack=rescale_slack, block_n=block_n,
    )  # fmt: skip
    ref = mla_decode_ref(q.double(), cache.double(), table, seq_lens, page_size, scale, d_rope)
    assert out.shape == (len(lens), heads, d_lat)
    assert rel_err(out, ref) < 1e-2
    q_lat, q_pe = query_parts(q, d_lat)
    apart = mla_decode(
        q_lat, cache, table, seq_lens, page_size, scale, d_rope=d_rope, num_splits=num_splits,
        q_rope=q_pe, rescale_slack=rescale_slack, block_n=block_n,
    )  # fmt: skip
    torch.testing.assert_close(apart, out, rtol=0, atol=0)


@pytest.mark.parametrize("rescale_slack", [0.0, 8.0])
def test_mla_decode_with_scores_growing_along_the_sequence(
    rescale_slack: float, device: str, dtype: torch.dtype
) -> None:
    # Rows grow along each sequence and the queries are large, so a head's maximum passes the
    # running one by more than the slack tile after tile: every rescale path runs. Sixteen
    # sequences take the default launch of batches >= 16.
    heads, d_lat, d_rope, page_size = 4, 32, 16, 16
    lens = [64 + 9 * i for i in range(16)]
    cache, table = make_paged_cache(lens, d_lat + d_rope, page_size, dtype, device)
    ramp = torch.linspace(0.2, 3.0, cache.shape[0], device=device)[:, None]
    cache = (cache.float().abs() * ramp).to(dtype)  # positive rows, larger for later slots
    for i, n in enumerate(lens):  # each sequence's pages ascending: later positions, larger rows
        pages = (n + page_size - 1) // page_size
        table[i, :pages] = torch.sort(table[i, :pages]).values
    q = (torch.rand((16, heads, d_lat + d_rope), device=device) * 2.0).to(dtype)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    scale = 1.0
    out = mla_decode(
        q, cache, table, seq_lens, page_size, scale, d_rope=d_rope, num_splits=2,
        rescale_slack=rescale_slack,
    )  # fmt: skip
    ref = mla_decode_ref(q.double(), cache.double(), table, seq_lens, page_size, scale, d_rope)
    assert rel_err(out, ref) < 1e-2


def query_parts(q: torch.Tensor, d_lat: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The query as the attention backend hands it over: the latent part a head-major [H, T, .]
    product seen token-major, the rope part a strided slice of a wider tensor."""
    q_lat = q[..., :d_lat].transpose(0, 1).contiguous().transpose(0, 1)  # [T, H, D_LAT]
    wide = torch.zeros((*q.shape[:-1], 2 * q.shape[-1]), dtype=q.dtype, device=q.device)
    wide[..., 3 : 3 + q.shape[-1] - d_lat] = q[..., d_lat:]
    q_pe = wide[..., 3 : 3 + q.shape[-1] - d_lat]
    assert not q_lat.is_contiguous() and not q_pe.is_contiguous()
    return q_lat, q_pe


def test_query_parts_must_match_in_shape_and_dtype(device: str) -> None:
    q = torch.randn((2, 3, 32), device=device)
    cache = torch.randn((8, 48), device=device)
    table = torch.ones((2, 1), dtype=torch.int32, device=device)
    lens = torch.ones(2, dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match="q_rope must be"):
        mla_decode(q, cache, table, lens, 8, 0.1, d_rope=16, q_rope=torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="dtype"):
        mla_decode(q, cache, table, lens, 8, 0.1, d_rope=16, q_rope=torch.randn(2, 3, 16).half())


@pytest.mark.parametrize("head_groups", [2, 3])
def test_heads_split_over_programs_give_the_same_attention(
    head_groups: int, device: str, dtype: torch.dtype
) -> None:
    """Each group of heads in its own programs (20 heads in 2 groups of 10, or 3 of 7, 7 and 6;
    on the CPU 7 heads in 4 and 3, or 3, 3 and 1): every head as with one program for all."""
    heads, d_lat, d_rope = (20, 512, 64) if ON_GPU else (7, 32, 16)
    lens = [1, 300, 77]
    width = d_lat + d_rope
    cache, table = make_paged_cache(lens, width, 16, dtype, device)
    q = torch.randn((len(lens), heads, width), dtype=dtype, device=device)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    scale = (d_lat // 2) ** -0.5
    args = (q, cache, table, seq_lens, 16, scale)
    whole = mla_decode(*args, d_rope=d_rope, num_splits=3, block_n=32)
    grouped = mla_decode(*args, d_rope=d_rope, num_splits=3, block_n=32, head_groups=head_groups)
    ref = mla_decode_ref(q.double(), cache.double(), table, seq_lens, 16, scale, d_rope)
    assert rel_err(grouped, ref) < 1e-2
    torch.testing.assert_close(grouped, whole, rtol=2e-2, atol=2e-2)
    with pytest.raises(ValueError, match="head_groups"):
        mla_decode(*args, d_rope=d_rope, head_groups=heads + 1)


def test_mla_decode_rejects_mismatched_dtype_and_negative_slack(device: str) -> None:
    q = torch.randn((1, 2, 48), dtype=torch.float16, device=device)
    cache = torch.randn((8, 48), dtype=torch.float32, device=device)
    table = torch.ones((1, 1), dtype=torch.int32, device=device)
    lens = torch.ones(1, dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match="dtype"):
        mla_decode(q, cache, table, lens, 8, 0.1, d_rope=16)
    for slack in (-1.0, 16.0):  # fp16 probabilities overflow from 2**16
        with pytest.raises(ValueError, match="rescale_slack"):
            mla_decode(q, cache.half(), table, lens, 8, 0.1, d_rope=16, rescale_slack=slack)


@pytest.mark.parametrize("rows_per_seq", [2, 3])
def test_rows_sharing_a_page_table_row_attend_up_to_their_own_lengths(
    rows_per_seq: int, device: str, dtype: torch.dtype
) -> None:
    """The tokens of sequences verifying drafts: consecutive query rows read one page-table row,
    each over the cache up to its own length; as with a page-table row per query row."""
    heads, d_lat, d_rope = (20, 512, 64) if ON_GPU else (4, 32, 16)
    seq_lens = [1000, 37] if ON_GPU else [70, 9]
    width = d_lat + d_rope
    cache, table = make_paged_cache(seq_lens, width, 16, dtype, device)
    lens = [n - rows_per_seq + 1 + i for n in seq_lens for i in range(rows_per_seq)]
    rows = torch.tensor(lens, dtype=torch.int32, device=device)
    q = torch.randn((len(lens), heads, width), dtype=dtype, device=device)
    scale = (d_lat // 2) ** -0.5
    shared = mla_decode(
        q, cache, table, rows, 16, scale, d_rope=d_rope, num_splits=3,
        rows_per_table_row=rows_per_seq,
    )  # fmt: skip
    per_row = table.repeat_interleave(rows_per_seq, dim=0)
    apart = mla_decode(q, cache, per_row, rows, 16, scale, d_rope=d_rope, num_splits=3)
    ref = mla_decode_ref(q.double(), cache.double(), per_row, rows, 16, scale, d_rope)
    assert rel_err(shared, ref) < 1e-2
    torch.testing.assert_close(shared, apart, rtol=0, atol=0)
    with pytest.raises(ValueError, match="rows_per_table_row"):
        mla_decode(q, cache, table, rows, 16, scale, d_rope=d_rope, rows_per_table_row=5)
