"""mla_decode_values (the split kernel, then the merge inside the W_UV product) against the torch
reference, and against mla_decode followed by the product of its rounded output."""

from __future__ import annotations

import pytest
import torch
from kernel_utils import ON_GPU, rel_err
from test_mla_decode import make_paged_cache, query_parts

from glm47.kernels.mla_decode import decode_partials, mla_decode
from glm47.kernels.mla_values import merge_values, mla_decode_values, mla_decode_values_ref

# heads, d_lat, d_rope, v_dim (not a multiple of the column block: the last block is masked)
DIMS = (20, 512, 64, 256) if ON_GPU else (3, 32, 16, 12)
PAGE_SIZE = 16 if ON_GPU else 4
# Lengths per batch size: some sequences shorter than a slice, so most of their slices are past
# the end and only write lse = -inf.
LENS = {1: [5], 2: [3, 70], 3: [1, 40, 17]}


def make_inputs(
    lens: list[int], device: str, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    heads, d_lat, d_rope, v_dim = DIMS
    cache, table = make_paged_cache(lens, d_lat + d_rope, PAGE_SIZE, dtype, device)
    q = torch.randn((len(lens), heads, d_lat + d_rope), dtype=dtype, device=device)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    w_uv = torch.randn((heads, v_dim, d_lat), dtype=dtype, device=device) * d_lat**-0.5
    return q, cache, table, seq_lens, w_uv


@pytest.mark.parametrize("batch", sorted(LENS))
@pytest.mark.parametrize("num_splits", [1, 4, 7])
@pytest.mark.parametrize(("block_n", "chunk_s"), [(16, 16), (8, 2)])
def test_fused_values_match_decode_then_product(
    batch: int, num_splits: int, block_n: int, chunk_s: int, device: str, dtype: torch.dtype
) -> None:
    lens = [n * 20 for n in LENS[batch]] if ON_GPU else LENS[batch]
    q, cache, table, seq_lens, w_uv = make_inputs(lens, device, dtype)
    _, d_lat, d_rope, v_dim = DIMS
    scale = (d_lat // 2) ** -0.5
    args = (q, cache, table, seq_lens, PAGE_SIZE, scale)
    out = mla_decode_values(
        *args, w_uv, d_rope=d_rope, num_splits=num_splits, block_n=block_n, chunk_s=chunk_s
    )
    assert out.shape == (batch, DIMS[0], v_dim) and out.dtype == w_uv.dtype
    assert out.is_contiguous()  # o_proj reads [B, H * V]
    ref = mla_decode_values_ref(*args, w_uv, d_rope)
    assert rel_err(out, ref) < 1e-2
    # The merged row is rounded where mla_decode rounds its output: the product of that output
    # differs only by the order of the product's fp32 sums (an ulp of the output at most).
    att = mla_decode(*args, d_rope=d_rope, num_splits=num_splits)
    apart = torch.einsum("bhr,hvr->bhv", att.float(), w_uv.float())
    ulp = torch.finfo(dtype).eps * apart.abs() + 1e-6
    assert ((out.float() - apart).abs() <= ulp).all()


def test_query_given_in_two_parts_gives_the_same_values(device: str, dtype: torch.dtype) -> None:
    q, cache, table, seq_lens, w_uv = make_inputs([9, 2], device, dtype)
    _, d_lat, d_rope, _ = DIMS
    whole = mla_decode_values(q, cache, table, seq_lens, PAGE_SIZE, 0.3, w_uv, d_rope, 3)
    q_lat, q_pe = query_parts(q, d_lat)
    apart = mla_decode_values(
        q_lat, cache, table, seq_lens, PAGE_SIZE, 0.3, w_uv, d_rope, 3, q_rope=q_pe
    )
    torch.testing.assert_close(apart, whole, rtol=0, atol=0)


def test_a_strided_weight_view_is_read_in_place(device: str, dtype: torch.dtype) -> None:
    """W_UV is a slice of kv_b_proj's [H, nope + v, rank] weight, as the model holds it."""
    q, cache, table, seq_lens, w_uv = make_inputs([6], device, dtype)
    heads, _, d_rope, v_dim = DIMS
    kv_b = torch.randn((heads, 5 + v_dim, w_uv.shape[2]), dtype=dtype, device=device)
    kv_b[:, 5:] = w_uv
    view = kv_b[:, 5:]
    assert not view.is_contiguous()
    args = (q, cache, table, seq_lens, PAGE_SIZE, 0.3)
    torch.testing.assert_close(
        mla_decode_values(*args, view, d_rope, 2), mla_decode_values(*args, w_uv, d_rope, 2),
        rtol=0, atol=0,
    )  # fmt: skip


def test_merge_values_rejects_mismatched_inputs(device: str) -> None:
    heads, d_lat, _, v_dim = DIMS
    part_out = torch.zeros((2, 3, heads, d_lat), device=device)
    part_lse = torch.zeros((2, 3, heads), device=device)
    w_uv = torch.zeros((heads, v_dim, d_lat), device=device)
    with pytest.raises(ValueError, match="w_uv must be"):
        merge_values(part_out, part_lse, w_uv[:, :, :-1], torch.float32)
    with pytest.raises(ValueError, match="w_uv must be"):
        merge_values(part_out, part_lse, w_uv[:-1], torch.float32)
    with pytest.raises(ValueError, match="part_lse must be"):
        merge_values(part_out, part_lse[:, :2], w_uv, torch.float32)
    with pytest.raises(ValueError, match="part_out must be"):
        merge_values(part_out.half(), part_lse, w_uv, torch.float32)
    with pytest.raises(ValueError, match="fp16, bf16 or fp32"):
        merge_values(part_out, part_lse, w_uv.double(), torch.float32)
    with pytest.raises(ValueError, match="block_n must be a power of two"):
        merge_values(part_out, part_lse, w_uv, torch.float32, block_n=12)
    with pytest.raises(ValueError, match="chunk_s must be a power of two"):
        merge_values(part_out, part_lse, w_uv, torch.float32, chunk_s=0)


def test_mla_decode_values_checks_the_query_like_mla_decode(device: str) -> None:
    q, cache, table, seq_lens, w_uv = make_inputs([4], device, torch.float16)
    with pytest.raises(ValueError, match="dtype"):
        mla_decode_values(q.float(), cache, table, seq_lens, PAGE_SIZE, 0.3, w_uv, DIMS[2])
    with pytest.raises(ValueError, match="num_splits"):
        mla_decode_values(q, cache, table, seq_lens, PAGE_SIZE, 0.3, w_uv, DIMS[2], 65)


def test_partials_past_the_end_are_never_read(device: str, dtype: torch.dtype) -> None:
    """The split kernel leaves the partials of slices past a sequence's end unwritten: filled
    with NaN here, the values stay finite and equal."""
    q, cache, table, seq_lens, w_uv = make_inputs([2, 30], device, dtype)
    _, _, d_rope, _ = DIMS
    part_out, part_lse = decode_partials(q, cache, table, seq_lens, PAGE_SIZE, 0.3, d_rope, 8)
    dead = torch.isinf(part_lse)
    assert dead.any()
    clean = merge_values(part_out, part_lse, w_uv, dtype)
    part_out[dead] = float("nan")
    poisoned = merge_values(part_out, part_lse, w_uv, dtype)
    assert torch.isfinite(poisoned).all()
    torch.testing.assert_close(poisoned, clean, rtol=0, atol=0)
