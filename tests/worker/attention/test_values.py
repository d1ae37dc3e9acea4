"""values_from_latents: the heads' values from attended latents, laid out for o_proj."""

from __future__ import annotations

import torch

from glm47.worker.attention.base import values_from_latents


def test_values_are_each_heads_projection_in_token_major_order() -> None:
    torch.manual_seed(0)
    tokens, heads, rank, v_dim = 5, 3, 16, 8
    att = torch.randn(tokens, heads, rank)
    w_uv = torch.randn(heads, v_dim, rank)
    out = values_from_latents(att, w_uv, torch.float32)
    assert out.shape == (tokens, heads, v_dim) and out.is_contiguous()
    torch.testing.assert_close(out, torch.einsum("thr,hvr->thv", att, w_uv))
    flat = out.reshape(tokens, heads * v_dim)  # what o_proj reads: a view, not a copy
    assert flat.data_ptr() == out.data_ptr()
    assert values_from_latents(att, w_uv, torch.float16).dtype == torch.float16
