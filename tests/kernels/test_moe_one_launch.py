"""The MoE's two grouped GEMMs in one launch (kernels/moe_one_launch) against the two-launch form
and the per-expert torch reference."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from kernel_utils import ON_GPU, rel_err

from glm47.kernels.counters import counters_at_rest
from glm47.kernels.fused_moe import fused_experts, fused_experts_ref
from glm47.kernels.moe_align import moe_align
from glm47.kernels.moe_config import MoeConfig
from glm47.kernels.moe_one_launch import fits_one_launch, moe_gemms_one_launch

SHAPES = (
    [(1, 64, 32, 8, 2), (6, 64, 48, 8, 3)]
    if not ON_GPU
    else [(1, 2048, 1536, 64, 4), (4, 2048, 1536, 64, 4), (16, 2048, 1536, 64, 4)]
)
CONFIGS = (
    [
        MoeConfig(16, 16, 16, 1, 4, 1, one_launch=True),
        MoeConfig(16, 16, 32, 1, 4, 1, down_split_k=2, one_launch=True),
        MoeConfig(
            16, 16, 16, 1, 4, 1, down_block_n=32, down_block_k=16, down_split_k=3, one_launch=True
        ),
    ]
    if not ON_GPU
    else [
        MoeConfig(16, 32, 128, 8, 4, 4, down_split_k=2, one_launch=True),
        MoeConfig(16, 64, 128, 8, 4, 4, one_launch=True),
        MoeConfig(16, 32, 128, 8, 4, 4, down_block_n=64, down_split_k=2, one_launch=True),
    ]
)


def _experts(
    t: int, hidden: int, inter: int, e: int, device: str, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.randn((t, hidden), dtype=dtype, device=device)
    w13 = torch.randn((e, 2 * inter, hidden), dtype=dtype, device=device) * hidden**-0.5
    w2 = torch.randn((e, hidden, inter), dtype=dtype, device=device) * inter**-0.5
    return x, w13, w2


@pytest.mark.parametrize(("t", "hidden", "inter", "e", "k"), SHAPES)
@pytest.mark.parametrize("cfg", CONFIGS)
def test_one_launch_equals_two_launches_and_the_reference(
    t: int, hidden: int, inter: int, e: int, k: int, cfg: MoeConfig, device: str,
    dtype: torch.dtype,
) -> None:  # fmt: skip
    assert fits_one_launch(cfg, inter)
    x, w13, w2 = _experts(t, hidden, inter, e, device, dtype)
    for _ in range(3):  # every launch must leave its counters at zero for the next
        ids = torch.rand((t, e), device=device).topk(k, dim=1).indices.to(torch.int32)
        weights = torch.rand((t, k), device=device)
        one = fused_experts(x, w13, w2, weights, ids, cfg)
        two = fused_experts(x, w13, w2, weights, ids, replace(cfg, one_launch=False))
        ref = fused_experts_ref(x.double(), w13.double(), w2.double(), weights.double(), ids)
        # the same tiles summed in the same order: the same bits
        assert torch.equal(one, two)
        assert rel_err(one, ref) < 2e-2
        assert counters_at_rest()


def test_one_launch_with_the_shared_expert_last(device: str, dtype: torch.dtype) -> None:
    t, hidden, inter, e, k = (3, 64, 32, 8, 2) if not ON_GPU else (1, 2048, 1536, 64, 4)
    cfg = CONFIGS[1]
    x, w13, w2 = _experts(t, hidden, inter, e, device, dtype)
    shared = (w13[0].clone() * 0.5, w2[0].clone() * 2.0)
    ids = torch.rand((t, e), device=device).topk(k, dim=1).indices.to(torch.int32)
    ids = torch.cat([ids, torch.full((t, 1), e, dtype=torch.int32, device=device)], 1)
    weights = torch.cat([torch.rand((t, k), device=device), torch.ones((t, 1), device=device)], 1)
    one = fused_experts(x, w13, w2, weights, ids, cfg, shared=shared)
    two = fused_experts(x, w13, w2, weights, ids, replace(cfg, one_launch=False), shared=shared)
    assert torch.equal(one, two)
    routed = fused_experts_ref(x.double(), w13.double(), w2.double(), weights[:, :k].double(),
                               ids[:, :k])  # fmt: skip
    ones = torch.zeros((t, 1), dtype=torch.int32, device=device)
    own = fused_experts_ref(x.double(), shared[0][None].double(), shared[1][None].double(),
                            weights[:, k:].double(), ones)  # fmt: skip
    assert rel_err(one, routed + own) < 2e-2
    assert counters_at_rest()


def test_one_launch_writes_the_weighted_pairs_or_their_parts(
    device: str, dtype: torch.dtype
) -> None:
    """Per pair, the routing weight times the expert's output; split, fp32 parts that add up."""
    t, hidden, inter, e, k = 2, 64, 32, 4, 2
    x, w13, w2 = _experts(t, hidden, inter, e, device, dtype)
    ids = torch.tensor([[0, 3], [3, 1]], dtype=torch.int32, device=device)
    weights = torch.tensor([[0.5, 2.0], [1.0, 0.25]], device=device)
    flat = ids.reshape(-1)
    for cfg in (MoeConfig(16, 16, 16, 1, 4, 1), MoeConfig(16, 16, 16, 1, 4, 1, down_split_k=2)):
        align = moe_align(ids, e, cfg.block_m)
        out = moe_gemms_one_launch(x, w13, w2, weights.reshape(-1), align, k, cfg, flat)
        per_pair = out if out.dim() == 2 else out.sum(0)
        assert per_pair.shape == (t * k, hidden)
        for p in range(t * k):
            tok, expert = p // k, int(flat[p])
            want = fused_experts_ref(
                x[tok : tok + 1].double(), w13[expert : expert + 1].double(),
                w2[expert : expert + 1].double(), weights.reshape(-1)[p].double().view(1, 1),
                torch.zeros((1, 1), dtype=torch.int32, device=device),
            )  # fmt: skip
            assert rel_err(per_pair[p : p + 1], want) < 2e-2
    assert counters_at_rest()


def test_configs_that_do_not_fit_take_two_launches(device: str, dtype: torch.dtype) -> None:
    # a gate/up column block of 32 straddles the down GEMM's K splits of 16 columns
    straddles = MoeConfig(16, 32, 16, 1, 4, 1, down_split_k=2, one_launch=True)
    other_warps = MoeConfig(16, 16, 16, 1, 4, 1, down_num_warps=8, one_launch=True)
    assert not fits_one_launch(straddles, 32) and not fits_one_launch(other_warps, 32)
    assert fits_one_launch(replace(straddles, down_split_k=1), 32)
    x, w13, w2 = _experts(2, 64, 32, 4, device, dtype)
    ids = torch.tensor([[0, 1], [2, 1]], dtype=torch.int32, device=device)
    weights = torch.rand((2, 2), device=device)
    ref = fused_experts_ref(x.double(), w13.double(), w2.double(), weights.double(), ids)
    for cfg in (straddles, other_warps):
        assert rel_err(fused_experts(x, w13, w2, weights, ids, cfg), ref) < 2e-2
        with pytest.raises(ValueError, match="does not fit"):
            moe_gemms_one_launch(x, w13, w2, weights.reshape(-1), moe_align(ids, 4, 16), 2, cfg,
                                 ids.reshape(-1))  # fmt: skip


def test_one_launch_is_stored_only_when_set() -> None:
    assert "one_launch" not in MoeConfig(16, 32, 128, 8, 4, 4).stored()
    on = MoeConfig(16, 32, 128, 8, 4, 4, down_split_k=2, one_launch=True)
    assert on.stored()["one_launch"] is True
    assert MoeConfig(**on.stored()) == on
