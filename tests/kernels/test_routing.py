"""The fused MoE routing kernel against its torch reference and the model's `select_experts`."""

from __future__ import annotations

import pytest
import torch

from glm47.kernels.routing import route_topk, route_topk_ref
from glm47.worker.model.layers.moe import select_experts


@pytest.mark.parametrize(("tokens", "experts", "top_k"), [(1, 64, 4), (37, 64, 4), (9, 20, 2)])
@pytest.mark.parametrize("renormalize", [True, False])
def test_route_topk_matches_reference(
    tokens: int, experts: int, top_k: int, renormalize: bool, device: str
) -> None:
    logits = torch.randn(tokens, experts, device=device) * 3
    bias = torch.rand(experts, device=device) * 0.2 - 0.1
    ids, weights = route_topk(logits, bias, top_k, renormalize, 1.8)
    ref_ids, ref_weights = route_topk_ref(logits, bias, top_k, renormalize, 1.8)
    assert ids.dtype == torch.int32 and weights.dtype == torch.float32
    assert torch.equal(ids.cpu(), ref_ids.cpu())
    torch.testing.assert_close(weights.cpu(), ref_weights.cpu(), rtol=1e-5, atol=1e-6)
    if renormalize:
        torch.testing.assert_close(weights.sum(-1).cpu(), torch.full((tokens,), 1.8))


def test_route_topk_bias_chooses_but_does_not_weight(device: str) -> None:
    logits = torch.zeros(1, 8, device=device)
    logits[0, 0] = 4.0  # the best score
    bias = torch.zeros(8, device=device)
    bias[5] = 10.0  # chosen first for the bias alone
    ids, weights = route_topk(logits, bias, 2, False, 1.0)
    assert ids[0].tolist() == [5, 0]
    expect = torch.sigmoid(torch.tensor([0.0, 4.0]))
    torch.testing.assert_close(weights[0].cpu(), expect)


def test_route_topk_equals_select_experts(device: str) -> None:
    """The model's routing: same experts, same weights, up to the order within a token."""
    x = torch.randn(23, 128, device=device, dtype=torch.float16)
    gate = torch.randn(64, 128, device=device) * 0.05
    bias = torch.rand(64, device=device) * 0.1
    kwargs = dict(top_k=4, n_group=1, topk_group=1, norm_topk_prob=True, routed_scaling_factor=1.8)
    ref_ids, ref_w = select_experts(x, gate, bias, **kwargs)  # type: ignore[arg-type]
    ids, w = route_topk(torch.nn.functional.linear(x.float(), gate), bias, 4, True, 1.8)
    order, ref_order = ids.long().sort(-1), ref_ids.long().sort(-1)
    assert torch.equal(order.values.cpu(), ref_order.values.cpu())
    torch.testing.assert_close(
        w.gather(1, order.indices).cpu(), ref_w.gather(1, ref_order.indices).cpu()
    )


def test_route_topk_rejects_bad_input(device: str) -> None:
    logits = torch.randn(3, 8, device=device)
    with pytest.raises(ValueError, match="fp32"):
        route_topk(logits.half(), torch.zeros(8, device=device), 2, True, 1.0)
    with pytest.raises(ValueError, match="power of two"):
        route_topk(logits, torch.zeros(8, device=device), 3, True, 1.0)
    ids, weights = route_topk(logits[:0], torch.zeros(8, device=device), 2, True, 1.0)
    assert ids.shape == (0, 2) and weights.shape == (0, 2)


def test_route_topk_keeps_nan_rows_on_valid_experts(device: str) -> None:
    """A row of NaN logits (a broken upstream value) still names experts that exist."""
    logits = torch.full((2, 20), float("nan"), device=device)
    logits[1] = torch.randn(20, device=device)
    ids, _ = route_topk(logits, torch.zeros(20, device=device), 4, True, 1.0)
    assert int(ids.min()) >= 0 and int(ids.max()) < 20
