"""The absorbed products around MLA attention: the query into the latent space and the heads'
values from the attended latents, through the batched-matmul library and through
kernels/skinny_gemm (the decode-size path), laid out for the attention kernels and o_proj."""

from __future__ import annotations

import pytest
import torch

from glm47.worker.attention.base import MLAWeights, absorb_query, values_from_latents


def weights(heads: int, nope: int, rank: int, v_dim: int, skinny: bool) -> MLAWeights:
    kv_b = torch.randn(heads, nope + v_dim, rank) / rank**0.5
    return MLAWeights(w_uk=kv_b[:, :nope], w_uv=kv_b[:, nope:], w_kv=kv_b, skinny=skinny)


@pytest.mark.parametrize("skinny", [False, True])
def test_values_are_each_heads_projection_in_token_major_order(skinny: bool) -> None:
    torch.manual_seed(0)
    tokens, heads, rank, v_dim = 5, 3, 16, 8
    w = weights(heads, 4, rank, v_dim, skinny)
    att = torch.randn(tokens, heads, rank)
    out = values_from_latents(att, w, torch.float32)
    assert out.shape == (tokens, heads, v_dim) and out.is_contiguous()
    torch.testing.assert_close(out, torch.einsum("thr,hvr->thv", att, w.w_uv))
    flat = out.reshape(tokens, heads * v_dim)  # what o_proj reads: a view, not a copy
    assert flat.data_ptr() == out.data_ptr()
    assert values_from_latents(att, w, torch.float16).dtype == torch.float16


@pytest.mark.parametrize("skinny", [False, True])
def test_the_query_is_absorbed_per_head(skinny: bool) -> None:
    torch.manual_seed(1)
    tokens, heads, nope, rank = 3, 4, 8, 16
    w = weights(heads, nope, rank, 8, skinny)
    q = torch.randn(tokens, heads, nope + 6)
    q_nope = q[..., :nope]  # a view of the projected query, as the model passes it
    out = absorb_query(q_nope, w)
    assert out.shape == (tokens, heads, rank)
    torch.testing.assert_close(out, torch.einsum("thd,hdr->thr", q_nope, w.w_uk))
