"""glm4_moe_lite (GLM-4.7-Flash): embed → decoder layers (MLA + dense MLP or MoE) → norm → lm_head.

Architecture only. Parameters are created empty on the current default device and dtype (see
`loader.build_model`) and filled by the loader.
"""

from __future__ import annotations

import dataclasses
from typing import cast

import torch
from torch import nn

from glm47.kernels.routing import ROUTE_ALIGN_MAX_TOKENS
from glm47.kernels.split_k import SplitProduct
from glm47.worker.model.config import ModelConfig
from glm47.worker.model.context import CacheWrite, ForwardContext
from glm47.worker.model.layers.embedding import LMHead, VocabEmbedding
from glm47.worker.model.layers.experts import ExpertsBackend
from glm47.worker.model.layers.linear import Linear
from glm47.worker.model.layers.mla import AttentionInputs, MLAAttention
from glm47.worker.model.layers.mlp import DenseMLP
from glm47.worker.model.layers.moe import MoE
from glm47.worker.model.layers.norm import RMSNorm
from glm47.worker.model.layers.rope import InterleavedRope
from glm47.worker.model.mtp import MTPLayer
from glm47.worker.model.parallel import SINGLE, TensorParallel


class DecoderLayer(nn.Module):
    """`h += attn(input_layernorm(h)); h += mlp(post_attention_layernorm(h))`, with the residual
    adds fused into the norms: the layer takes and returns (hidden, residual). Under tensor
    parallelism (model/parallel.py) the attention and MLP outputs are summed over the ranks."""

    def __init__(
        self,
        cfg: ModelConfig,
        layer: int,
        rope: InterleavedRope,
        experts: ExpertsBackend,
        tp: TensorParallel = SINGLE,
    ) -> None:
        super().__init__()
        self.tp = tp
        self.self_attn = MLAAttention(cfg, layer, rope, tp)
        self.mlp: nn.Module
        if cfg.is_moe_layer(layer):
            self.mlp = MoE(cfg, experts, tp)
        else:
            self.mlp = DenseMLP(
                cfg.hidden_size, tp.part(cfg.intermediate_size, "intermediate_size")
            )
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self,
        positions: torch.Tensor,  # [T]
        hidden: torch.Tensor,  # [T, H]: output of the previous layer's MLP (or the embedding)
        residual: torch.Tensor | None,  # [T, H]: the residual stream before that output
        ctx: ForwardContext,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, residual = self.begin(positions, hidden, residual, ctx.cache_write)
        return self.end(self.self_attn.attend(inputs, ctx), residual)

    def begin(
        self,
        positions: torch.Tensor,  # [T]
        hidden: torch.Tensor,  # [T, H]
        residual: torch.Tensor | None,  # [T, H]
        cache: CacheWrite,
    ) -> tuple[AttentionInputs, torch.Tensor]:
        """The layer up to attention: input norm (with the residual add), projections, rope and
        the new latents stored in the layer's cache."""
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        return self.self_attn.project(positions, hidden, cache), residual

    def end(
        self, attended: torch.Tensor, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer after attention: o_proj, post-attention norm (with the add), MLP. A MoE
        layer that folds this step's shared expert takes the norm into its routing launch. A
        fused norm takes o_proj's product as a `SplitProduct` where the skinny kernel makes it."""
        mlp, norm, tp = self.mlp, self.post_attention_layernorm, self.tp
        attn = self.self_attn
        if tp.enabled:  # each rank's o_proj covers its heads: the sum over the ranks first
            out: torch.Tensor | SplitProduct = tp.all_reduce(attn.output(attended))
        else:  # a fused norm sums o_proj's split-K partials itself
            out = attn.output_parts(attended) if norm.fused else attn.output(attended)
        if isinstance(mlp, MoE) and norm.fused and mlp.folds(out.shape[0]):
            hidden, residual = mlp.forward_from_residual(out, residual, norm)
            return tp.all_reduce(hidden), residual
        hidden, residual = norm(out, residual)
        return tp.all_reduce(mlp(hidden)), residual


class Glm4MoeLiteForCausalLM(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        experts: ExpertsBackend,
        *,
        with_mtp: bool,
        tp: TensorParallel = SINGLE,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.tp = tp
        dtype = torch.get_default_dtype()
        rope = InterleavedRope(
            cfg.qk_rope_head_dim, cfg.max_position_embeddings, cfg.rope_theta, dtype
        )
        self.rope = rope
        self.embed_tokens = VocabEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg, i, rope, experts, tp) for i in range(cfg.num_hidden_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = LMHead(cfg.vocab_size, cfg.hidden_size)
        self.mtp: MTPLayer | None = None
        if with_mtp:
            mtp_layer = DecoderLayer(cfg, cfg.mtp_layer_index, rope, experts, tp)
            self.mtp = MTPLayer(cfg, mtp_layer, self.embed_tokens, self.lm_head)

    @property
    def decoder_layers(self) -> list[DecoderLayer]:
        """The decoder layers, typed."""
        return [cast(DecoderLayer, layer) for layer in self.layers]

    def enable_fused_kernels(self, enabled: bool = True) -> None:
        """Run RMSNorm (with its residual add), rope, MoE routing and the SwiGLU activation as Triton
        kernels (GPU, or the CPU under TRITON_INTERPRET=1) instead of chains of torch operations."""
        for module in self.modules():
            if isinstance(module, (RMSNorm, InterleavedRope, MoE, DenseMLP)):
                module.fused = enabled

    def overlap_shared_experts(self, stream: torch.cuda.Stream | None, max_tokens: int) -> None:
        """Run the MoE layers' shared experts on `stream`, beside the routed experts, in steps of
        at most `max_tokens` tokens (None or 0: never); see `MoE`."""
        for module in self.modules():
            if isinstance(module, MoE):
                module.side_stream = stream if max_tokens > 0 else None
                module.overlap_max_tokens = max_tokens

    def fold_shared_experts(self, max_tokens: int) -> int:
        """Run the MoE layers' shared experts inside the routed experts' grouped GEMMs in steps of
        at most `max_tokens` tokens (0: never; see `MoE`). Needs the fused routing kernels and the
        Triton experts; returns the limit that took effect (0 where the layers cannot fold)."""
        limit = min(max_tokens, ROUTE_ALIGN_MAX_TOKENS)
        moes = [m for m in self.modules() if isinstance(m, MoE)]
        if not moes or any(not m.can_fold_shared or m.experts.name != "triton" for m in moes):
            limit = 0
        for module in moes:
            module.fold_max_tokens = limit
        return limit

    def enable_skinny_gemm(self, enabled: bool = True) -> None:
        """Run the products of steps of at most 16 tokens (the dense projections, MLA's absorbed
        per-head products, the router) through the Triton kernel kernels/skinny_gemm instead of
        the GEMM library."""
        for module in self.modules():
            if isinstance(module, (Linear, MoE)):
                module.skinny = enabled
            elif isinstance(module, MLAAttention):
                module.mla_weights = dataclasses.replace(module.mla_weights, skinny=enabled)

    @property
    def num_cache_layers(self) -> int:
        """KV cache layers: one per decoder layer, plus the MTP layer's when present."""
        return self.cfg.num_hidden_layers + (1 if self.mtp is not None else 0)

    def forward(
        self,
        input_ids: torch.Tensor,  # [T] int64
        positions: torch.Tensor,  # [T] int64
        ctx: ForwardContext,
    ) -> torch.Tensor:  # [T, H]: final hidden states after model.norm
        hidden = self.embed_tokens(input_ids)
        residual: torch.Tensor | None = None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual, ctx)
        assert residual is not None
        hidden, _ = self.norm(hidden, residual)
        return hidden

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [N, H] -> [N, V] fp32
        return self.lm_head(hidden)
