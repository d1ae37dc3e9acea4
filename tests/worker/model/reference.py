"""Helpers shared by the model, loader and runner tests: a tiny transformers reference model
written to disk, a page allocator and a greedy sampler."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from transformers import Glm4MoeLiteConfig, Glm4MoeLiteForCausalLM

from glm47.worker.batch import SampleOutput, ScheduledBatch, ScheduledSeq
from glm47.worker.model.config import ModelConfig
from glm47.worker.runner import ModelRunner
from glm47.worker.sampling import DeferredSamples

TINY_HF: dict[str, Any] = dict(
    vocab_size=96,
    hidden_size=48,
    intermediate_size=80,
    moe_intermediate_size=24,
    num_hidden_layers=3,
    num_attention_heads=3,
    num_key_value_heads=3,
    n_routed_experts=8,
    n_shared_experts=1,
    num_experts_per_tok=3,
    n_group=2,
    topk_group=1,
    routed_scaling_factor=1.8,
    kv_lora_rank=32,
    q_lora_rank=40,
    qk_rope_head_dim=8,
    qk_nope_head_dim=16,
    v_head_dim=12,
    max_position_embeddings=512,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    initializer_range=0.1,
)


def make_hf_model(seed: int, dtype: torch.dtype, **overrides: Any) -> Glm4MoeLiteForCausalLM:
    """A random tiny reference model whose norms and correction biases are not trivial."""
    torch.manual_seed(seed)
    cfg = Glm4MoeLiteConfig(**{**TINY_HF, **overrides})
    model = Glm4MoeLiteForCausalLM(cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.uniform_(-0.1, 0.1)
    model.config._attn_implementation = "eager"
    model.config._experts_implementation = "eager"
    return model.to(dtype).eval()


def save_hf_model(model: Glm4MoeLiteForCausalLM, path: Path) -> Path:
    model.save_pretrained(path)
    return path


@torch.no_grad()
def hf_last_logits(model: Glm4MoeLiteForCausalLM, tokens: list[int]) -> torch.Tensor:
    """[V] fp32 logits of the reference after the whole token list (one full forward)."""
    out = model(input_ids=torch.tensor([tokens]), use_cache=False)
    return out.logits[0, -1].float()


def make_runner(
    model_dir: Path, dtype: torch.dtype, page_size: int, kv_tokens: int = 512, **kwargs: Any
) -> ModelRunner:
    """A CPU runner of `model_dir`; `kwargs` go to ModelRunner."""
    return ModelRunner(
        ModelConfig.from_dir(model_dir),
        model_dir,
        device="cpu",
        dtype=dtype,
        page_size=page_size,
        kv_tokens=kv_tokens,
        **kwargs,
    )


class PageAllocator:
    """Hands out pages 1.. in a shuffled order, so page tables are not the identity."""

    def __init__(self, num_pages: int, page_size: int, seed: int = 0) -> None:
        self.page_size = page_size
        self.free = list(range(1, num_pages))
        random.Random(seed).shuffle(self.free)
        self.tables: dict[str, list[int]] = {}

    def pages_for(self, rid: str, num_tokens: int) -> list[int]:
        table = self.tables.setdefault(rid, [])
        while len(table) * self.page_size < num_tokens:
            table.append(self.free.pop())
        return list(table)


class GreedySampler:
    def sample(self, logits: torch.Tensor, seqs: list[ScheduledSeq]) -> list[SampleOutput]:
        return self.sample_deferred(logits, seqs).collect()

    def sample_deferred(
        self, logits: torch.Tensor, seqs: list[ScheduledSeq], last: torch.Tensor | None = None
    ) -> DeferredSamples:
        tokens = logits.argmax(dim=-1)
        return DeferredSamples(tokens, tokens.double()[:, None], seqs, [-1] * len(seqs))


def seq(
    alloc: PageAllocator, rid: str, tokens: list[int], start: int, sample: bool = True
) -> ScheduledSeq:
    """A scheduled chunk: `tokens` computed at positions [start, start + len(tokens))."""
    pages = alloc.pages_for(rid, start + len(tokens))
    return ScheduledSeq(rid=rid, token_ids=tokens, start_pos=start, page_ids=pages, sample=sample)


def batch(*seqs: ScheduledSeq) -> ScheduledBatch:
    return ScheduledBatch(seqs=list(seqs))
