"""The fused MoE routing kernel against its torch reference and the model's `select_experts`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from glm47.kernels.moe_align import moe_align_torch
from glm47.kernels.rmsnorm import rmsnorm_ref
from glm47.kernels.routing import norm_route_align, route_align, route_topk, route_topk_ref
from glm47.kernels.skinny_gemm import SkinnyLaunch, skinny_gemm_parts
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


@pytest.mark.parametrize("fma_rows", [0, 4], ids=["tensor-core", "cuda-core"])
def test_route_topk_sums_the_routers_split_product(fma_rows: int, device: str) -> None:
    """The router's fp32 product left as K slices (the skinny kernel's parts): the same experts
    and weights as from the summed logits."""
    x = torch.randn(3, 96, device=device, dtype=torch.float16)
    gate = torch.randn(64, 96, device=device) * 0.05
    bias = torch.rand(64, device=device) * 0.1
    launch = SkinnyLaunch(32 if fma_rows == 0 else 8, 32, 3, 32, 4, 2, fma_rows)
    prod = skinny_gemm_parts(x, gate, launch=launch)
    assert prod.parts.shape == (3, 3, 64) and prod.dtype == torch.float32
    ids, weights = route_topk(prod, bias, 4, True, 1.8)
    ref_ids, ref_weights = route_topk(prod.total(), bias, 4, True, 1.8)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(weights, ref_weights, rtol=0, atol=0)


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


ROUTE_ALIGN_CASES = [
    (1, 64, 4, 16),
    (5, 64, 4, 16),
    (16, 64, 4, 16),
    (64, 64, 4, 32),
    (9, 20, 2, 4),
]


@pytest.mark.parametrize(("tokens", "experts", "top_k", "block_m"), ROUTE_ALIGN_CASES)
@pytest.mark.parametrize("shared", [False, True])
def test_route_align_equals_route_then_align(
    tokens: int, experts: int, top_k: int, block_m: int, shared: bool, device: str
) -> None:
    """The one-launch routing gives route_topk's experts and weights and moe_align's layout of
    them; with `shared`, one more pair per token, last: expert E, weight 1."""
    logits = torch.randn(tokens, experts, device=device) * 3
    bias = torch.rand(experts, device=device) * 0.2 - 0.1
    ids, weights, align = route_align(logits, bias, top_k, True, 2.5, block_m, shared=shared)
    ref_ids, ref_weights = route_topk_ref(logits, bias, top_k, True, 2.5)
    if shared:
        assert torch.equal(ids[:, -1].cpu(), torch.full((tokens,), experts, dtype=torch.int32))
        assert torch.equal(weights[:, -1].cpu(), torch.ones(tokens))
    k1 = top_k + int(shared)
    assert ids.shape == weights.shape == (tokens, k1)
    assert torch.equal(ids[:, :top_k].cpu(), ref_ids.cpu())
    torch.testing.assert_close(weights[:, :top_k].cpu(), ref_weights.cpu(), rtol=1e-5, atol=1e-6)
    ref = moe_align_torch(ids, experts + int(shared), block_m)
    assert align.block_m == block_m
    assert torch.equal(align.num_padded.cpu(), ref.num_padded.cpu())
    assert torch.equal(align.sorted_ids.cpu(), ref.sorted_ids.cpu())
    assert torch.equal(align.expert_ids.cpu(), ref.expert_ids.cpu())


def test_route_align_rejects_batches_past_its_limit(device: str) -> None:
    bias = torch.zeros(8, device=device)
    with pytest.raises(ValueError, match="1 to 64 tokens"):
        route_align(torch.randn(65, 8, device=device), bias, 2, True, 1.0, 16)
    with pytest.raises(ValueError, match="fp32"):
        route_align(torch.randn(3, 8, device=device).half(), bias, 2, True, 1.0, 16)
    with pytest.raises(ValueError, match="power of two"):
        route_align(torch.randn(3, 8, device=device), bias, 3, True, 1.0, 16)


@pytest.mark.parametrize(
    ("tokens", "hidden", "experts", "top_k"), [(1, 256, 64, 4), (7, 100, 20, 2), (16, 64, 64, 4)]
)
def test_norm_route_align_is_rmsnorm_router_and_route_align(
    tokens: int, hidden: int, experts: int, top_k: int, device: str, dtype: torch.dtype
) -> None:
    """The residual add and RMSNorm as kernels/rmsnorm rounds them, the router's fp32 product,
    then the routing and layout of `route_align`."""
    x = torch.randn(tokens, hidden, device=device).to(dtype)
    residual = torch.randn(tokens, hidden, device=device).to(dtype)
    norm_w = (torch.rand(hidden, device=device) + 0.5).to(dtype)
    gate = torch.randn(experts, hidden, device=device)
    bias = torch.rand(experts, device=device) * 0.1
    normed, new_res, ids, weights, align = norm_route_align(
        x, residual, norm_w, 1e-5, gate, bias, top_k, True, 1.8, 16, shared=True
    )
    ref_normed, ref_res = rmsnorm_ref(x, norm_w, 1e-5, residual)
    step = 2**-10 if not normed.is_cuda else 0.0  # the interpreter's casts may round a step off
    torch.testing.assert_close(new_res, ref_res, rtol=0, atol=0)
    torch.testing.assert_close(normed, ref_normed, rtol=2 * step, atol=2 * step)
    logits = F.linear(normed.float(), gate)
    ref_ids, ref_weights = route_topk_ref(logits, bias, top_k, True, 1.8)
    assert torch.equal(ids[:, :top_k].cpu(), ref_ids.cpu())
    torch.testing.assert_close(weights[:, :top_k].cpu(), ref_weights.cpu(), rtol=1e-4, atol=1e-5)
    assert torch.equal(ids[:, -1].cpu(), torch.full((tokens,), experts, dtype=torch.int32))
    ref = moe_align_torch(ids, experts + 1, 16)
    assert torch.equal(align.sorted_ids.cpu(), ref.sorted_ids.cpu())
    assert torch.equal(align.expert_ids.cpu(), ref.expert_ids.cpu())
    assert torch.equal(align.num_padded.cpu(), ref.num_padded.cpu())
    with pytest.raises(ValueError, match="fp32"):
        norm_route_align(x, residual, norm_w, 1e-5, gate.to(dtype), bias, top_k, True, 1.8, 16)


def test_norm_route_align_sums_a_split_product(device: str, dtype: torch.dtype) -> None:
    """The attention block's output as a SplitProduct (o_proj's K slices): the same norm, new
    residual and routing as from the summed product."""
    tokens, hidden, experts, top_k, k = 3, 256, 64, 4, 96
    a = torch.randn(tokens, k, device=device).to(dtype)
    w = (torch.randn(hidden, k, device=device) / k**0.5).to(dtype)
    prod = skinny_gemm_parts(a, w, launch=SkinnyLaunch(32, 32, 3, 32, 4, 2))
    residual = torch.randn(tokens, hidden, device=device).to(dtype)
    norm_w = (torch.rand(hidden, device=device) + 0.5).to(dtype)
    gate = torch.randn(experts, hidden, device=device)
    bias = torch.rand(experts, device=device) * 0.1
    got = norm_route_align(prod, residual, norm_w, 1e-5, gate, bias, top_k, True, 1.8, 16)
    ref = norm_route_align(prod.total(), residual, norm_w, 1e-5, gate, bias, top_k, True, 1.8, 16)
    step = 2**-9 if not got[0].is_cuda else 0.0  # the interpreter's casts may round a step off
    for g, r in zip(got[:2], ref[:2], strict=True):  # normed, new residual
        torch.testing.assert_close(g, r, rtol=step, atol=step)
    assert torch.equal(got[2], ref[2])  # ids
    torch.testing.assert_close(got[3], ref[3], rtol=1e-4, atol=1e-5)
