"""The "triton" experts backend against the "torch" experts backend on the model's own routing."""

from __future__ import annotations

import torch
from kernel_utils import ON_GPU, rel_err

import glm47.worker.moe_triton  # noqa: F401
from glm47.worker.model.layers.experts import create_experts_backend
from glm47.worker.model.layers.moe import select_experts


def test_triton_experts_match_torch_experts(device: str, dtype: torch.dtype) -> None:
    t, hidden, inter, e, k = (300, 2048, 1536, 64, 4) if ON_GPU else (6, 64, 32, 8, 2)
    x = torch.randn((t, hidden), dtype=dtype, device=device)
    gate = torch.randn((e, hidden), dtype=dtype, device=device)
    bias = torch.randn(e, dtype=torch.float32, device=device) * 0.1
    ids, weights = select_experts(
        x, gate, bias, top_k=k, n_group=1, topk_group=1, norm_topk_prob=True,
        routed_scaling_factor=1.8,
    )  # fmt: skip
    w13 = torch.randn((e, 2 * inter, hidden), dtype=dtype, device=device) * hidden**-0.5
    w2 = torch.randn((e, hidden, inter), dtype=dtype, device=device) * inter**-0.5
    out = create_experts_backend("triton").forward(x, w13, w2, ids, weights)
    ref = create_experts_backend("torch").forward(x, w13, w2, ids, weights)
    assert out.shape == ref.shape and out.dtype == dtype
    assert rel_err(out, ref) < 2e-2
