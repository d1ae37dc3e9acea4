"""Layers against transformers' modules (or a plain formula) on fresh random inputs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from transformers import Glm4MoeLiteConfig
from transformers.models.glm4_moe_lite import modeling_glm4_moe_lite as hf

from glm47.worker.model.config import ModelConfig
from glm47.worker.model.layers.experts import TorchExperts, create_experts_backend
from glm47.worker.model.layers.mlp import DenseMLP
from glm47.worker.model.layers.moe import MoE, select_experts
from glm47.worker.model.layers.norm import RMSNorm
from glm47.worker.model.layers.rope import InterleavedRope
from tests.worker.model.reference import TINY_HF


def _hf_config(**overrides: object) -> Glm4MoeLiteConfig:
    cfg = Glm4MoeLiteConfig(**{**TINY_HF, **overrides})
    cfg._experts_implementation = "eager"
    return cfg


def test_group_limited_routing_matches_transformers_router() -> None:
    torch.manual_seed(0)
    cfg = _hf_config(n_routed_experts=16, n_group=4, topk_group=2, num_experts_per_tok=4)
    router = hf.Glm4MoeLiteTopkRouter(cfg)
    torch.nn.init.normal_(router.weight, std=0.2)
    router.e_score_correction_bias.uniform_(-0.2, 0.2)
    x = torch.randn(37, cfg.hidden_size)
    _, ref_weights, ref_ids = router(x)
    ids, weights = select_experts(
        x,
        router.weight,
        router.e_score_correction_bias,
        top_k=4,
        n_group=4,
        topk_group=2,
        norm_topk_prob=True,
        routed_scaling_factor=cfg.routed_scaling_factor,
    )
    assert ids.dtype == torch.int32 and weights.dtype == torch.float32
    order, ref_order = ids.long().sort(-1), ref_ids.sort(-1)
    torch.testing.assert_close(order.values, ref_order.values)
    torch.testing.assert_close(
        weights.gather(1, order.indices), ref_weights.gather(1, ref_order.indices)
    )
    # the experts of a token come from at most topk_group = 2 of the 4 groups
    groups_per_token = [len(set((row // 4).tolist())) for row in ids]
    assert max(groups_per_token) <= 2


def test_correction_bias_changes_the_choice_but_not_the_weights() -> None:
    torch.manual_seed(1)
    x, gate = torch.randn(8, 16), torch.randn(6, 16)
    bias = torch.zeros(6)
    bias[5] = 10.0  # expert 5 is always chosen, weighted by its own sigmoid score
    kwargs = dict(top_k=2, n_group=1, topk_group=1, norm_topk_prob=False, routed_scaling_factor=1.0)
    ids, weights = select_experts(x, gate, bias, **kwargs)  # type: ignore[arg-type]
    assert (ids == 5).any(-1).all()
    scores = torch.sigmoid(x @ gate.T)
    torch.testing.assert_close(weights, scores.gather(1, ids.long()))


def test_torch_experts_match_transformers_bit_for_bit_in_bf16() -> None:
    torch.manual_seed(2)
    cfg = _hf_config()
    experts = hf.Glm4MoeLiteExperts(cfg).to(torch.bfloat16)
    torch.nn.init.normal_(experts.gate_up_proj, std=0.1)
    torch.nn.init.normal_(experts.down_proj, std=0.1)
    x = torch.randn(29, cfg.hidden_size, dtype=torch.bfloat16)
    ids = torch.stack([torch.randperm(8)[:3] for _ in range(29)])
    weights = torch.rand(29, 3)
    expected = experts(x, ids, weights)
    got = create_experts_backend("torch").forward(
        x, experts.gate_up_proj, experts.down_proj, ids.to(torch.int32), weights
    )
    assert isinstance(create_experts_backend("torch"), TorchExperts)
    assert torch.equal(got, expected)


def test_rmsnorm_matches_transformers_and_fuses_the_residual_add() -> None:
    torch.manual_seed(3)
    ref = hf.Glm4MoeLiteRMSNorm(32, eps=1e-5).to(torch.bfloat16)
    ref.weight.data.uniform_(0.5, 1.5)
    norm = RMSNorm(32, 1e-5).to(torch.bfloat16)
    norm.weight.data.copy_(ref.weight.data)
    x, residual = torch.randn(2, 5, 32, dtype=torch.bfloat16).unbind(0)
    assert torch.equal(norm(x), ref(x))
    normed, new_residual = norm(x, residual)
    assert torch.equal(new_residual, residual + x)
    assert torch.equal(normed, ref(residual + x))


def test_rope_matches_transformers_interleaved_rope() -> None:
    torch.manual_seed(4)
    cfg = _hf_config(rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    rotary = hf.Glm4MoeLiteRotaryEmbedding(cfg)
    positions = torch.tensor([0, 3, 17, 400, 511])
    q = torch.randn(5, 3, cfg.qk_rope_head_dim, dtype=torch.bfloat16)
    k = torch.randn(5, cfg.qk_rope_head_dim, dtype=torch.bfloat16)
    cos, sin = rotary(q, positions[None])
    ref_q, ref_k = hf.apply_rotary_pos_emb_interleave(
        q.transpose(0, 1)[None], k[None, None], cos, sin
    )
    rope = InterleavedRope(cfg.qk_rope_head_dim, 512, 1e6, torch.bfloat16)
    got_q, got_k = rope(positions, q, k)
    assert torch.equal(got_q, ref_q[0].transpose(0, 1))
    assert torch.equal(got_k, ref_k[0, 0])


@pytest.mark.parametrize(("fused", "skinny"), [(False, False), (True, False), (True, True)])
def test_dense_mlp_adds_the_given_tensor_on_both_paths(fused: bool, skinny: bool) -> None:
    """The MoE layer hands the routed output to the shared expert to add (on the fused path in
    the down projection's matmul, or the skinny kernel's accumulating store): the sum equals
    computing both and adding."""
    torch.manual_seed(0)
    mlp = DenseMLP(16, 24)
    mlp.gate_up_proj.weight.data.normal_(0, 0.2)
    mlp.down_proj.weight.data.normal_(0, 0.2)
    x, other = torch.randn(5, 16), torch.randn(5, 16)
    plain = mlp(x)
    mlp.fused = fused
    mlp.gate_up_proj.skinny = mlp.down_proj.skinny = skinny
    expected = plain + other
    torch.testing.assert_close(mlp(x, add=other.clone()), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mlp(x), plain, rtol=1e-5, atol=1e-5)


class _FakeStream:
    """Stands in for a CUDA stream on the CPU: records forks and joins."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def wait_stream(self, other: _FakeStream) -> None:
        self.log.append(f"{self.name} waits {other.name}")


def test_the_shared_expert_overlap_forks_and_joins_around_the_routed_experts_and_sums_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Steps of at most `overlap_max_tokens` tokens: the side stream waits for x, the shared
    expert runs inside it, the routed experts on the current stream, which then waits for the
    side stream before the add; the sum is the serial path's up to the extra rounding."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_dict(TINY_HF)
    moe = MoE(cfg, TorchExperts())
    for p in moe.parameters():
        p.data.normal_(0, 0.2)
    x = torch.randn(3, cfg.hidden_size)
    serial = moe(x)
    log: list[str] = []
    main, side = _FakeStream("main", log), _FakeStream("side", log)
    current = [main]

    @contextlib.contextmanager
    def on(stream: _FakeStream) -> Iterator[None]:
        current.append(stream)
        yield
        current.pop()

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current[-1])
    monkeypatch.setattr(torch.cuda, "stream", on)
    real_shared, real_route = moe.shared_experts.forward, moe.route
    monkeypatch.setattr(moe.shared_experts, "forward",
                        lambda *a, **k: log.append(f"shared on {current[-1].name}") or real_shared(*a, **k))  # fmt: skip
    monkeypatch.setattr(moe, "route", lambda t: log.append(f"route on {current[-1].name}") or real_route(t))  # fmt: skip
    moe.side_stream, moe.overlap_max_tokens = side, 3  # type: ignore[assignment]
    overlapped = moe(x)
    assert log == ["side waits main", "shared on side", "route on main", "main waits side"]
    torch.testing.assert_close(overlapped, serial, rtol=1e-5, atol=1e-5)
    log.clear()
    moe.overlap_max_tokens = 2  # a step above the bound runs serially
    torch.testing.assert_close(moe(x), serial, rtol=0, atol=0)
    assert log == ["route on main", "shared on main"]


def test_the_folded_moe_layer_matches_the_unfolded_one() -> None:
    """A step of at most `fold_max_tokens` tokens through MoE.forward (the router's product, then
    routing, both GEMMs with the shared expert as expert E and the top-k sum) and through
    `forward_from_residual` (the norm joins the router's launch) gives the unfolded layer's result
    (Triton experts under the interpreter; fp32, so only summation order differs)."""
    import glm47.worker.moe_triton  # noqa: F401  (registers "triton")

    torch.manual_seed(0)
    cfg = ModelConfig.from_dict(dict(TINY_HF, n_group=1, topk_group=1, num_experts_per_tok=2))
    moe = MoE(cfg, create_experts_backend("triton"))
    for p in moe.parameters():
        p.data.normal_(0, 0.2)
    moe.fused = moe.shared_experts.fused = True
    norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
    norm.weight.data.uniform_(0.5, 1.5)
    norm.fused = True
    x, residual = torch.randn(3, cfg.hidden_size), torch.randn(3, cfg.hidden_size)
    hidden, new_residual = norm(x, residual)
    unfolded = moe(hidden)
    assert moe.can_fold_shared and not moe.folds(3)
    moe.fold_max_tokens = 3
    torch.testing.assert_close(moe(hidden), unfolded, rtol=1e-5, atol=1e-5)
    out, res = moe.forward_from_residual(x, residual, norm)
    torch.testing.assert_close(res, new_residual, rtol=0, atol=0)
    torch.testing.assert_close(out, unfolded, rtol=1e-5, atol=1e-5)
