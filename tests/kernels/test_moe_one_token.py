"""kernels/moe_decode's one-token MoE (each GEMM program ranks its own expert from the router's
logits) against the routed path it replaces: `route_align`, then `fused_experts`."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import triton
import triton.language as tl
from kernel_utils import ON_GPU, rel_err

from glm47.kernels.fused_moe import choose_config, fused_experts, fused_experts_ref
from glm47.kernels.moe_decode import (
    RoutedExperts,
    fused_moe_from_residual,
    fused_moe_one_token,
    one_token_route,
)
from glm47.kernels.routing import norm_route_align, route_align, route_topk_ref


@triton.jit
def _slots_kernel(logits_ptr, bias_ptr, ids_ptr, weights_ptr, scale, E: tl.constexpr,
                  K: tl.constexpr, RENORMALIZE: tl.constexpr, BLOCK_E: tl.constexpr):  # fmt: skip
    slot = tl.program_id(0)
    expert, weight = one_token_route(logits_ptr, bias_ptr, slot, scale, E, K, RENORMALIZE, BLOCK_E,
                                     4)  # fmt: skip
    tl.store(ids_ptr + slot, expert)
    tl.store(weights_ptr + slot, weight)


def slots(
    logits: torch.Tensor, bias: torch.Tensor, k: int, renormalize: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:  # [1, k + 1] ids and weights, the shared slot last
    e = logits.shape[1]
    ids = torch.empty((1, k + 1), dtype=torch.int32, device=logits.device)
    weights = torch.empty((1, k + 1), dtype=torch.float32, device=logits.device)
    block_e = triton.next_power_of_2(e)
    _slots_kernel[(k + 1,)](logits, bias, ids, weights, scale, E=e, K=k,
                            RENORMALIZE=renormalize, BLOCK_E=block_e, num_warps=4)  # fmt: skip
    return ids, weights


@pytest.mark.parametrize(("e", "k"), [(64, 4), (8, 2), (48, 8)])
@pytest.mark.parametrize("renormalize", [True, False])
def test_each_slot_ranks_as_route_align(e: int, k: int, renormalize: bool, device: str) -> None:
    """Slot j holds route_align's j-th pair, ties to the lower index, on fresh logits (biased
    scores of either sign); the shared slot is expert E with weight 1."""
    for trial in range(6):
        logits = torch.randn((1, e), device=device) * 2
        bias = torch.rand(e, device=device) * 0.1
        if trial % 3 == 1:  # ties: a few values repeated, no bias to separate them
            logits = torch.randint(0, 3, (1, e), device=device).float()
            bias = torch.zeros(e, device=device)
        if trial % 3 == 2:  # biased scores of both signs
            bias = torch.randn(e, device=device)
        ids, weights = slots(logits, bias, k, renormalize, 1.8)
        want_ids, want_w, _ = route_align(logits, bias, k, renormalize, 1.8, 16, shared=True)
        assert torch.equal(ids.cpu(), want_ids.cpu())
        torch.testing.assert_close(weights, want_w, rtol=1e-6, atol=1e-7)


def test_nan_logits_still_name_valid_experts(device: str) -> None:
    e, k = 16, 4
    logits = torch.randn((1, e), device=device)
    logits[0, ::3] = float("nan")
    ids, _ = slots(logits, torch.zeros(e, device=device), k, True, 1.0)
    assert ((ids[0, :k] >= 0) & (ids[0, :k] < e)).all() and int(ids[0, k]) == e


SHAPES = [(64, 32, 8, 2), (32, 48, 16, 4)] if not ON_GPU else [(2048, 1536, 64, 4)]


def experts(
    hidden: int, inter: int, e: int, k: int, shared: bool, device: str, dtype: torch.dtype
) -> RoutedExperts:
    w13 = torch.randn((e, 2 * inter, hidden), dtype=dtype, device=device) * hidden**-0.5
    w2 = torch.randn((e, hidden, inter), dtype=dtype, device=device) * inter**-0.5
    sh = (
        torch.randn((2 * inter, hidden), dtype=dtype, device=device) * hidden**-0.5,
        torch.randn((hidden, inter), dtype=dtype, device=device) * inter**-0.5,
    )
    bias = torch.rand(e, device=device) * 0.1
    return RoutedExperts(bias, k, True, 1.8, w13, w2, sh if shared else None)


def routed_path(x: torch.Tensor, logits: torch.Tensor, moe: RoutedExperts, cfg) -> torch.Tensor:
    ids, weights, align = route_align(
        logits, moe.correction_bias, moe.top_k, moe.renormalize, moe.scale, cfg.block_m,
        shared=moe.shared is not None,
    )  # fmt: skip
    return fused_experts(x, moe.w13, moe.w2, weights, ids, cfg, shared=moe.shared, align=align)


@pytest.mark.parametrize(("hidden", "inter", "e", "k"), SHAPES)
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("down_split_k", [1, 2])
def test_one_token_moe_equals_the_routed_path(
    hidden: int, inter: int, e: int, k: int, shared: bool, down_split_k: int, device: str,
    dtype: torch.dtype,
) -> None:  # fmt: skip
    """The same output as route_align + fused_experts with the same tiles (the GEMMs sum in the
    same order; only the renormalising sum may round its last bit otherwise), and near the fp64
    reference."""
    moe = experts(hidden, inter, e, k, shared, device, dtype)
    x = torch.randn((1, hidden), dtype=dtype, device=device)
    logits = torch.randn((1, e), device=device) * 2
    cfg = replace(choose_config(x, moe.w13, moe.w2, k), down_split_k=down_split_k)
    got = fused_moe_one_token(x, logits, moe, cfg)
    want = routed_path(x, logits, moe, cfg)
    assert got.shape == (1, hidden) and got.dtype == dtype
    torch.testing.assert_close(got, want, rtol=2**-7, atol=1e-5)  # a step of bf16 at most
    ids, weights = route_topk_ref(logits, moe.correction_bias, k, True, 1.8)
    ref = fused_experts_ref(x.double(), moe.w13.double(), moe.w2.double(), weights.double(), ids)
    if moe.shared is not None:
        ref = ref + fused_experts_ref(
            x.double(), moe.shared[0][None].double(), moe.shared[1][None].double(),
            torch.ones((1, 1), dtype=torch.float64, device=device),
            torch.zeros((1, 1), dtype=torch.int32, device=device),
        )  # fmt: skip
    assert rel_err(got, ref) < 2e-2


def test_one_token_moe_from_the_residual(device: str, dtype: torch.dtype) -> None:
    """fused_moe_from_residual at one token (norm with the router, then the one-token GEMMs):
    the two-launch routing's norm, residual and output."""
    hidden, inter, e, k = SHAPES[0]
    moe = experts(hidden, inter, e, k, True, device, dtype)
    x = torch.randn((1, hidden), dtype=dtype, device=device)
    residual = torch.randn((1, hidden), dtype=dtype, device=device)
    norm_w = (torch.rand(hidden, device=device) + 0.5).to(dtype)
    gate = torch.randn((e, hidden), device=device) * hidden**-0.5
    out, new_res = fused_moe_from_residual(x, residual, norm_w, 1e-5, gate, moe)
    normed, want_res, ids, weights, align = norm_route_align(
        x, residual, norm_w, 1e-5, gate, moe.correction_bias, k, True, 1.8,
        choose_config(x, moe.w13, moe.w2, k).block_m, shared=True,
    )  # fmt: skip
    want = fused_experts(normed, moe.w13, moe.w2, weights, ids, shared=moe.shared, align=align)
    assert torch.equal(new_res, want_res)
    torch.testing.assert_close(out, want, rtol=2**-7, atol=1e-5)


def test_one_token_moe_refuses_what_does_not_fit(device: str, dtype: torch.dtype) -> None:
    hidden, inter, e, k = SHAPES[0]
    moe = experts(hidden, inter, e, k, True, device, dtype)
    x = torch.randn((1, hidden), dtype=dtype, device=device)
    with pytest.raises(ValueError, match="logits"):
        fused_moe_one_token(x, torch.randn((1, e), device=device).half(), moe)
    with pytest.raises(ValueError, match="one contiguous"):
        fused_moe_one_token(x.repeat(2, 1), torch.randn((2, e), device=device), moe)
    with pytest.raises(ValueError, match="bias"):
        fused_moe_one_token(x, torch.randn((1, e), device=device),
                            replace(moe, correction_bias=moe.correction_bias[:-1]))  # fmt: skip
