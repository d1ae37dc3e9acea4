"""The multi-token-prediction layer (DeepSeek-V3 style) stored as checkpoint layer
`num_hidden_layers`.

`x = eh_proj(cat[enorm(embed(t_{i+1})), hnorm(h_i)])`, then a full MoE decoder layer (its KV cache
is cache layer `num_hidden_layers`), then `shared_head.norm`; the main model's lm_head turns the
result into the draft logits for position i+2. The main model's embedding and lm_head are used.
"""

from __future__ import annotations

import torch
from torch import nn

from glm47.worker.model.config import ModelConfig
from glm47.worker.model.context import ForwardContext
from glm47.worker.model.layers.embedding import LMHead, VocabEmbedding
from glm47.worker.model.layers.linear import Linear
from glm47.worker.model.layers.norm import RMSNorm


class MTPLayer(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        layer: nn.Module,  # a glm4_moe_lite DecoderLayer built for layer num_hidden_layers
        embed_tokens: VocabEmbedding,
        lm_head: LMHead,
    ) -> None:
        super().__init__()
        self.enorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.hnorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.eh_proj = Linear(2 * cfg.hidden_size, cfg.hidden_size)
        self.layer = layer
        self.shared_head_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        # Held in a tuple so they stay parameters of the main model only.
        self._main: tuple[VocabEmbedding, LMHead] = (embed_tokens, lm_head)

    def forward(
        self,
        input_ids: torch.Tensor,  # [T] int64: token i+1 for each position i
        prev_hidden: torch.Tensor,  # [T, H]: the main model's hidden state at position i
        positions: torch.Tensor,  # [T] int64: position i (rope and KV cache row of the MTP layer)
        ctx: ForwardContext,
    ) -> torch.Tensor:  # [T, H]: hidden states for compute_logits
        embeds = self.enorm(self._main[0](input_ids))
        hidden = self.eh_proj(torch.cat([embeds, self.hnorm(prev_hidden)], dim=-1))
        hidden, residual = self.layer(positions, hidden, None, ctx)
        hidden, _ = self.shared_head_norm(hidden, residual)
        return hidden

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [N, H] -> [N, V] fp32
        return self._main[1](hidden)
