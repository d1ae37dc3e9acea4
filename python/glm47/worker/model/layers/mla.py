"""Multi-head latent attention: projections and rope here, the attention itself in a backend."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from glm47.kernels.rmsnorm import rmsnorm_pair
from glm47.kernels.split_k import SplitProduct
from glm47.worker.attention.base import MLAWeights
from glm47.worker.model.config import ModelConfig
from glm47.worker.model.context import CacheWrite, ForwardContext
from glm47.worker.model.layers.linear import Linear
from glm47.worker.model.layers.norm import RMSNorm
from glm47.worker.model.layers.rope import InterleavedRope
from glm47.worker.model.parallel import SINGLE, TensorParallel


class AttentionInputs(NamedTuple):
    """The queries the attention backend takes (views into the projections' outputs); the step's
    new latents are in the KV cache by then."""

    q_nope: torch.Tensor  # [T, heads, qk_nope_head_dim]
    q_rope: torch.Tensor  # [T, heads, qk_rope_head_dim], rope applied


class MLAAttention(nn.Module):
    """[q_a | c | k_rope] = qkv_a(x); q = q_b(norm(q_a)), c normalised; rope on q_rope and k_rope,
    and [c | k_rope] stored in KV cache layer `cache_layer` (the same launch on the fused path);
    the backend attends over the cache; then o_proj. Under tensor parallelism the module holds
    its rank's heads (`num_heads` of them) and o_proj's columns for them: its output is this
    rank's share of the sum.

    `mla_weights` are views of `kv_b_proj.weight`, so the weight must be filled in place (the
    loader copies into it) and the module must be built on its final device.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        cache_layer: int,
        rope: InterleavedRope,
        tp: TensorParallel = SINGLE,
    ) -> None:
        super().__init__()
        self.cache_layer = cache_layer
        heads = tp.part(cfg.num_attention_heads, "num_attention_heads")
        self.num_heads = heads
        self.nope_dim = cfg.qk_nope_head_dim
        self.rope_dim = cfg.qk_rope_head_dim
        self.v_dim = cfg.v_head_dim
        self.kv_lora_rank = cfg.kv_lora_rank
        self.scale = cfg.softmax_scale
        self.rope = rope
        self.q_lora_rank = cfg.q_lora_rank
        self.kv_cache_dim = cfg.kv_cache_dim
        # q_a_proj and kv_a_proj_with_mqa in one matmul: rows [q_a | kv_a] (the loader fills them)
        self.qkv_a_proj = Linear(cfg.hidden_size, cfg.q_lora_rank + cfg.kv_cache_dim)
        self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, cfg.latent_norm_eps)
        self.q_b_proj = Linear(cfg.q_lora_rank, heads * cfg.qk_head_dim)
        self.kv_a_layernorm = RMSNorm(cfg.kv_lora_rank, cfg.latent_norm_eps)
        self.kv_b_proj = Linear(cfg.kv_lora_rank, heads * (cfg.qk_nope_head_dim + cfg.v_head_dim))
        self.o_proj = Linear(heads * cfg.v_head_dim, cfg.hidden_size)
        kv_b = self.kv_b_proj.weight.detach().view(heads, self.nope_dim + self.v_dim, -1)
        self.mla_weights = MLAWeights(
            w_uk=kv_b[:, : self.nope_dim],  # [heads, nope_dim, kv_lora_rank]
            w_uv=kv_b[:, self.nope_dim :],  # [heads, v_dim, kv_lora_rank]
            w_kv=kv_b,  # [heads, nope_dim + v_dim, kv_lora_rank]
        )

    def project(
        self,
        positions: torch.Tensor,  # [T] int64
        x: torch.Tensor,  # [T, H]
        cache: CacheWrite,
    ) -> AttentionInputs:
        """Everything before attention: the query, rope applied, and the new latents stored in
        this layer's cache at `cache.slot_mapping`."""
        num_tokens = x.shape[0]
        rope_from = self.q_lora_rank + self.kv_lora_rank
        if self.q_a_layernorm.fused:
            # Both norms and k_rope in one launch, which sums a split product's partials.
            q_a, latent, tail = rmsnorm_pair(
                self.qkv_a_proj.forward_parts(x), self.q_a_layernorm.weight,
                self.kv_a_layernorm.weight, self.q_lora_rank, self.q_a_layernorm.eps,
                tail_from=rope_from,
            )  # fmt: skip
            assert tail is not None
            k_rope = tail  # [T, rope_dim]
        else:
            qkv_a = self.qkv_a_proj(x)  # [T, q_lora_rank + kv_lora_rank + rope_dim]
            k_rope = qkv_a[:, rope_from:]
            q_a = self.q_a_layernorm(qkv_a[:, : self.q_lora_rank])
            latent = self.kv_a_layernorm(
                qkv_a[:, self.q_lora_rank : self.q_lora_rank + self.kv_lora_rank]
            )
        q = self.q_b_proj(q_a)
        q = q.view(num_tokens, self.num_heads, self.nope_dim + self.rope_dim)
        q_nope, q_rope = q.split([self.nope_dim, self.rope_dim], dim=-1)
        q_rope = self.rope.rotate_and_cache(
            positions, q_rope, k_rope, latent, cache.kv_cache[self.cache_layer], cache.slot_mapping
        )
        return AttentionInputs(q_nope, q_rope)

    def attend(self, inputs: AttentionInputs, ctx: ForwardContext) -> torch.Tensor:
        """The backend attends over the cache, which `project` filled: [T, heads, v_dim]."""
        return ctx.backend.forward(
            inputs.q_nope,
            inputs.q_rope,
            ctx.kv_cache[self.cache_layer],
            self.mla_weights,
            ctx.meta,
            self.scale,
        )

    def output(self, attended: torch.Tensor) -> torch.Tensor:  # [T, heads, v_dim] -> [T, H]
        return self.o_proj(self._flat(attended))

    def output_parts(self, attended: torch.Tensor) -> torch.Tensor | SplitProduct:  # [T, H]
        """o_proj, as a `SplitProduct` where the skinny kernel makes it (for a fused norm)."""
        return self.o_proj.forward_parts(self._flat(attended))

    def _flat(
        self, attended: torch.Tensor
    ) -> torch.Tensor:  # [T, heads, v_dim] -> [T, heads * v_dim]
        return attended.reshape(attended.shape[0], self.num_heads * self.v_dim)

    def forward(
        self,
        positions: torch.Tensor,  # [T] int64
        x: torch.Tensor,  # [T, H]
        ctx: ForwardContext,
    ) -> torch.Tensor:  # [T, H]
        return self.output(self.attend(self.project(positions, x, ctx.cache_write), ctx))
