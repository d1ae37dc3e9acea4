"""moe_align's layout and the fused MoE experts against the per-expert torch reference."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
import torch
from kernel_utils import ON_GPU, rel_err

from glm47.kernels.fused_moe import (
    choose_config,
    fused_experts,
    fused_experts_ref,
    tune_config,
)
from glm47.kernels.moe_align import (
    MoeAlignment,
    max_padded_rows,
    moe_align,
    moe_align_blocked,
    moe_align_small,
    moe_align_torch,
)
from glm47.kernels.moe_config import MoeConfig, default_config
from glm47.kernels.moe_decode import RoutedExperts, fused_moe_from_logits
from glm47.kernels.routing import route_topk_ref
from glm47.kernels.topk_sum import topk_sum, topk_sum_ref


def random_routing(t: int, e: int, k: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.rand((t, e), device=device).topk(k, dim=1).indices.to(torch.int32)
    weights = torch.rand((t, k), device=device, dtype=torch.float32)
    return weights, ids


@pytest.mark.parametrize(("t", "e", "k", "block_m"), [(1, 8, 2, 16), (37, 6, 3, 4), (5, 64, 4, 16)])
def test_moe_align_groups_every_pair_once_by_expert(
    t: int, e: int, k: int, block_m: int, device: str
) -> None:
    _, ids = random_routing(t, e, k, device)
    al = moe_align(ids, e, block_m)
    used = int(al.num_padded)
    assert used % block_m == 0
    real = al.sorted_ids[:used]
    valid = real[real < t * k].long()
    assert sorted(valid.tolist()) == list(range(t * k))
    assert (al.sorted_ids[used:] == t * k).all()
    block_expert = al.expert_ids[torch.arange(used, device=device) // block_m].long()
    assert torch.equal(block_expert[real < t * k], ids.reshape(-1).long()[valid])
    counts = torch.bincount(ids.reshape(-1).long(), minlength=e)
    assert used == int(((counts + block_m - 1) // block_m * block_m).sum())


@pytest.mark.parametrize(
    ("t", "e", "k", "block_m"), [(1, 64, 4, 16), (4, 64, 4, 16), (50, 6, 3, 8)]
)
def test_moe_align_row_bound_is_reached_by_spread_routing(
    t: int, e: int, k: int, block_m: int, device: str
) -> None:
    # Pairs spread over as many experts as there are: the most padding a batch can need. The
    # bound counts pad rows only for experts that can receive a pair, and this routing needs them.
    ids = (torch.arange(t * k, device=device) % e).reshape(t, k).to(torch.int32)
    al = moe_align(ids, e, block_m)
    bound = max_padded_rows(t * k, e, block_m)
    assert al.sorted_ids.shape[0] == bound
    assert int(al.num_padded) == bound
    assert torch.equal(al.sorted_ids, moe_align_torch(ids, e, block_m).sorted_ids)


SHAPES = (
    [(1, 64, 32, 8, 2), (9, 32, 16, 4, 3)]
    if not ON_GPU
    else [(1, 2048, 1536, 64, 4), (32, 2048, 1536, 64, 4), (700, 2048, 1536, 64, 4)]
)
CONFIGS = (
    [
        MoeConfig(16, 16, 16, 1, 4, 1),
        MoeConfig(16, 32, 32, 2, 4, 1, down_block_n=16, down_block_k=64),
        MoeConfig(16, 16, 16, 1, 4, 1, down_split_k=2),  # K of 16 takes one split, 32 two
    ]
    if not ON_GPU
    else [
        None,
        MoeConfig(16, 64, 128, 1, 4, 4),
        MoeConfig(64, 128, 64, 8, 4, 3),
        MoeConfig(16, 32, 128, 8, 4, 4, down_block_n=64, down_block_k=256, down_num_stages=3),
        MoeConfig(16, 32, 128, 8, 4, 4, down_split_k=4),
    ]
)


@pytest.mark.parametrize(("t", "hidden", "inter", "e", "k"), SHAPES)
@pytest.mark.parametrize("cfg", CONFIGS)
def test_fused_experts_matches_reference(
    t: int, hidden: int, inter: int, e: int, k: int, cfg: MoeConfig | None, device: str,
    dtype: torch.dtype,
) -> None:  # fmt: skip
    x = torch.randn((t, hidden), dtype=dtype, device=device)
    w13 = torch.randn((e, 2 * inter, hidden), dtype=dtype, device=device) * hidden**-0.5
    w2 = torch.randn((e, hidden, inter), dtype=dtype, device=device) * inter**-0.5
    weights, ids = random_routing(t, e, k, device)
    out = fused_experts(x, w13, w2, weights, ids, cfg)
    ref = fused_experts_ref(x.double(), w13.double(), w2.double(), weights.double(), ids)
    assert out.shape == (t, hidden) and out.dtype == dtype
    assert rel_err(out, ref) < 2e-2


def test_fused_experts_rejects_wrong_weight_dtype(device: str) -> None:
    x = torch.randn((2, 32), dtype=torch.float16, device=device)
    w13 = torch.randn((4, 32, 32), dtype=torch.float32, device=device)
    w2 = torch.randn((4, 32, 16), dtype=torch.float16, device=device)
    weights, ids = random_routing(2, 4, 2, device)
    with pytest.raises(ValueError, match="dtype"):
        fused_experts(x, w13, w2, weights, ids, default_config(2, 4, 2))


ALIGN_CASES = [(1, 64, 4, 16), (13, 6, 3, 4), (64, 64, 4, 32)]
GPU_ALIGN_CASES = [(128, 64, 4, 32), (100, 64, 4, 16)]  # up to the kernel's 512-pair limit


# The blocked version: pair counts across tile edges (128 pairs per tile), and many tiles.
BLOCKED_CASES = [(1, 64, 4, 16), (32, 64, 4, 16), (33, 64, 4, 32), (300, 64, 4, 64), (97, 6, 3, 8)]
BLOCKED_CASES += [(1100, 64, 4, 16)]  # 35 tiles: the scan takes them 32 at a time
GPU_BLOCKED_CASES = [(8192, 64, 4, 64), (2049, 64, 4, 128)]
KERNEL_CASES = [(moe_align_small, *c) for c in ALIGN_CASES + (GPU_ALIGN_CASES if ON_GPU else [])]
KERNEL_CASES += [
    (moe_align_blocked, *c) for c in BLOCKED_CASES + (GPU_BLOCKED_CASES if ON_GPU else [])
]


@pytest.mark.parametrize(("align", "t", "e", "k", "block_m"), KERNEL_CASES)
def test_moe_align_kernels_equal_torch_version(
    align: Callable[[torch.Tensor, int, int], MoeAlignment],
    t: int,
    e: int,
    k: int,
    block_m: int,
    device: str,
) -> None:
    _, ids = random_routing(t, e, k, device)
    got = align(ids, e, block_m)
    ref = moe_align_torch(ids, e, block_m)
    assert torch.equal(got.num_padded, ref.num_padded)
    assert torch.equal(got.sorted_ids, ref.sorted_ids)
    assert torch.equal(got.expert_ids, ref.expert_ids)


def test_moe_align_blocked_with_one_hot_expert(device: str) -> None:
    """Every pair routed to expert 5 (a skewed batch): one run, the rest of the blocks padding."""
    ids = torch.full((200, 2), 5, dtype=torch.int32, device=device)
    blocked = moe_align_blocked(ids, 8, 16)
    ref = moe_align_torch(ids, 8, 16)
    assert int(blocked.num_padded) == 400
    assert torch.equal(blocked.sorted_ids, ref.sorted_ids)
    assert torch.equal(blocked.expert_ids, ref.expert_ids)


def test_moe_align_small_rejects_batches_past_its_limit(device: str) -> None:
    _, ids = random_routing(129, 64, 4, device)
    with pytest.raises(ValueError, match="single-program"):
        moe_align_small(ids, 64, 16)
    assert int(moe_align(ids, 64, 16).num_padded) % 16 == 0


def test_moe_align_falls_back_to_torch_when_the_blocked_kernels_fail(
    device: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from triton.errors import TritonError

    import glm47.kernels.moe_align as align_module

    def broken(*args: object) -> None:
        raise TritonError("out of resources")

    monkeypatch.setattr(align_module, "moe_align_blocked", broken)
    monkeypatch.setattr(align_module, "_blocked_failed", False)
    _, ids = random_routing(300, 64, 4, device)
    got = moe_align(ids, 64, 16)
    assert torch.equal(got.sorted_ids, moe_align_torch(ids, 64, 16).sorted_ids)
    assert align_module._blocked_failed and "using torch" in caplog.text


def test_tune_config_returns_a_candidate_that_runs(device: str) -> None:
    x = torch.randn((3, 64), dtype=torch.float16, device=device)
    w13 = torch.randn((8, 64, 64), dtype=torch.float16, device=device) * 0.1
    w2 = torch.randn((8, 64, 32), dtype=torch.float16, device=device) * 0.1
    candidates = [MoeConfig(16, 16, 16, 1, 4, 1), MoeConfig(16, 32, 32, 2, 4, 1)]
    best = tune_config(x, w13, w2, 2, candidates)
    assert best in candidates
    weights, ids = random_routing(3, 8, 2, device)
    ref = fused_experts_ref(x, w13, w2, weights, ids)
    assert rel_err(fused_experts(x, w13, w2, weights, ids, best), ref) < 2e-2


@pytest.mark.parametrize(
    ("tokens", "top_k", "hidden", "dtype"),
    [(1, 4, 2048, torch.bfloat16), (7, 4, 300, torch.float16), (3, 2, 1500, torch.float32)],
)
def test_topk_sum_equals_torch_sum_over_a_tokens_rows(
    tokens: int, top_k: int, hidden: int, dtype: torch.dtype, device: str
) -> None:
    per_pair = torch.randn(tokens * top_k, hidden, device=device).to(dtype)
    got = topk_sum(per_pair, top_k)
    expected = topk_sum_ref(per_pair, top_k)
    assert got.dtype == dtype
    # exact on the GPU; the Triton interpreter's fp32 -> bf16 cast may land one bf16 step off
    step = 2**-7 if dtype == torch.bfloat16 and not per_pair.is_cuda else 0.0
    torch.testing.assert_close(got, expected, rtol=step, atol=0)
    # with an addend (the shared expert): the rounded sum plus it, as torch adds the two
    add = torch.randn(tokens, 2 * hidden, device=device).to(dtype)[:, :hidden]  # strided rows
    got = topk_sum(per_pair, top_k, add=add)
    # (an interpreter step off in the rounded sum is a step of the sum, not of the result)
    atol = 4 * step  # the sums are about N(0, 4): a step of 2**-7 relative is below 4 * 2**-7
    torch.testing.assert_close(got, topk_sum_ref(per_pair, top_k, add), rtol=step, atol=atol)
    assert topk_sum(per_pair[:0], top_k).shape == (0, hidden)
    with pytest.raises(ValueError, match="add must be"):
        topk_sum(per_pair, top_k, add=add.float() if dtype != torch.float32 else add.half())
    with pytest.raises(ValueError, match="contiguous"):
        topk_sum(per_pair[:, ::2], top_k)
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        topk_sum(per_pair, 0)


def test_topk_sum_with_the_shared_expert_last(device: str) -> None:
    """`shared_last`: a token's last row is added to its rounded routed sum, as torch adds the
    shared expert's output to the routed output."""
    tokens, top_k, hidden = 5, 5, 700
    per_pair = torch.randn(tokens * top_k, hidden, device=device).to(torch.float16)
    got = topk_sum(per_pair, top_k, shared_last=True)
    rows = per_pair.view(tokens, top_k, hidden)
    expected = rows[:, :-1].float().sum(1).half() + rows[:, -1]
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(got, topk_sum_ref(per_pair, top_k, shared_last=True), rtol=0, atol=0)
    with pytest.raises(ValueError, match="top_k must be >= 2"):
        topk_sum(per_pair, 1, shared_last=True)


@pytest.mark.parametrize("splits", [2, 3])
def test_topk_sum_rounds_the_parts_of_each_row_then_sums(splits: int, device: str) -> None:
    """fp32 parts of a split GEMM: each pair's row is their sum rounded to the output dtype (where
    the unsplit GEMM rounds), then the rows are summed as without parts."""
    tokens, top_k, hidden = 3, 5, 300
    parts = torch.randn(splits, tokens * top_k, hidden, device=device)
    add = torch.randn(tokens, hidden, device=device).half()
    got = topk_sum(parts, top_k, add=add, shared_last=True, dtype=torch.float16)
    rows = parts.sum(0).half().view(tokens, top_k, hidden)
    expected = rows[:, :-1].float().sum(1).half() + rows[:, -1] + add
    assert got.dtype == torch.float16
    # the parts summed in another order may land a row one fp16 step off
    torch.testing.assert_close(got, expected, rtol=2e-3, atol=2e-3)
    ref = topk_sum_ref(parts, top_k, add=add, shared_last=True, dtype=torch.float16)
    torch.testing.assert_close(got, ref, rtol=2e-3, atol=2e-3)
    with pytest.raises(ValueError, match="fp32 parts"):
        topk_sum(parts.half(), top_k)
    with pytest.raises(ValueError, match="add must be"):
        topk_sum(parts, top_k, add=add)  # the output dtype is fp32 unless given


FOLD_SHAPES = [(1, 64, 32, 8, 2), (6, 64, 32, 8, 2)] if not ON_GPU else [(1, 2048, 1536, 64, 4), (16, 2048, 1536, 64, 4)]  # fmt: skip


@pytest.mark.parametrize(("t", "hidden", "inter", "e", "k"), FOLD_SHAPES)
def test_fused_moe_from_logits_with_the_shared_expert(
    t: int, hidden: int, inter: int, e: int, k: int, device: str, dtype: torch.dtype
) -> None:
    """Routing, the grouped GEMMs with the shared expert as expert E, and the top-k sum: the
    routed experts' weighted sum, rounded, plus the shared expert's output."""
    x = torch.randn((t, hidden), dtype=dtype, device=device)
    w13 = torch.randn((e, 2 * inter, hidden), dtype=dtype, device=device) * hidden**-0.5
    w2 = torch.randn((e, hidden, inter), dtype=dtype, device=device) * inter**-0.5
    shared_w13 = torch.randn((2 * inter, hidden), dtype=dtype, device=device) * hidden**-0.5
    shared_w2 = torch.randn((hidden, inter), dtype=dtype, device=device) * inter**-0.5
    logits = torch.randn((t, e), device=device) * 2
    bias = torch.rand(e, device=device) * 0.1
    moe = RoutedExperts(bias, k, True, 1.8, w13, w2, (shared_w13, shared_w2))
    out = fused_moe_from_logits(x, logits, moe)
    ids, weights = route_topk_ref(logits, bias, k, True, 1.8)
    routed = fused_experts_ref(x.double(), w13.double(), w2.double(), weights.double(), ids)
    ones = torch.ones((t, 1), dtype=torch.float64, device=device)
    shared = fused_experts_ref(
        x.double(), shared_w13[None].double(), shared_w2[None].double(), ones,
        torch.zeros((t, 1), dtype=torch.int32, device=device),
    )  # fmt: skip
    assert out.shape == (t, hidden) and out.dtype == dtype
    assert rel_err(out, routed + shared) < 2e-2
    # the same through fused_experts with the routing given
    got = fused_experts(
        x, w13, w2, torch.cat([weights, ones.float()], 1),
        torch.cat([ids, torch.full((t, 1), e, dtype=torch.int32, device=device)], 1),
        shared=(shared_w13, shared_w2),
    )  # fmt: skip
    assert rel_err(got, routed + shared) < 2e-2
    # the down GEMM's K split over programs: the same sum up to where its parts round
    split = replace(choose_config(x, w13, w2, k), down_split_k=2)
    ids_e = torch.cat([ids, torch.full((t, 1), e, dtype=torch.int32, device=device)], 1)
    got_split = fused_experts(
        x, w13, w2, torch.cat([weights, ones.float()], 1), ids_e, split,
        shared=(shared_w13, shared_w2),
    )  # fmt: skip
    assert rel_err(got_split, got) < 1e-2
    with pytest.raises(ValueError, match="laid out as one expert"):
        fused_experts(x, w13, w2, weights, ids, shared=(shared_w13[:, :-1], shared_w2))
