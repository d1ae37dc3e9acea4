"""Helpers of the GPU tests: a transformers reference checkpoint with the real layer widths, runners
loaded from it, a teacher-forced serving session, and bf16-aware logit comparisons."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Glm4MoeLiteConfig, Glm4MoeLiteForCausalLM

from glm47.worker.batch import ScheduledSeq
from glm47.worker.model.config import ModelConfig
from glm47.worker.runner import ModelRunner
from tests.worker.model.reference import PageAllocator, batch, seq

# The real GLM-4.7-Flash widths with 3 layers (1 dense, 2 MoE) and a 4096-token vocabulary (the
# real one is 154880: only the embedding and lm_head shrink).
REAL_WIDTHS_3_LAYERS: dict[str, Any] = dict(
    vocab_size=4096,
    num_hidden_layers=3,
    pad_token_id=0,
    eos_token_id=[1],
    max_position_embeddings=4096,
    rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
)
PAGE_SIZE = 16


def make_reference_checkpoint(
    path: Path, device: torch.device, seed: int = 0, **overrides: Any
) -> Glm4MoeLiteForCausalLM:
    """Build transformers' model on `device` in bf16, fill it (weights N(0, 0.02), norms 1,
    router correction biases small and random), save it to `path`, and return it upcast to fp32
    with eager attention and experts: the reference."""
    cfg = Glm4MoeLiteConfig(**{**REAL_WIDTHS_3_LAYERS, **overrides})
    gen = torch.Generator(device).manual_seed(seed)
    with torch.device(device):
        model = Glm4MoeLiteForCausalLM._from_config(
            cfg, dtype=torch.bfloat16, attn_implementation="eager", experts_implementation="eager"
        )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=gen)
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.uniform_(-0.05, 0.05, generator=gen)
    model.save_pretrained(path)
    return model.float().eval()


def load_runner(path: Path, device: torch.device, **kwargs: Any) -> ModelRunner:
    return ModelRunner(
        ModelConfig.from_dir(path),
        path,
        device=device,
        dtype=torch.bfloat16,
        page_size=PAGE_SIZE,
        kv_tokens=kwargs.pop("kv_tokens", 32768),
        **kwargs,
    )


@dataclass
class Session:
    """Teacher-forced requests: prompts, then the same fixed tokens fed to every runner."""

    prompts: dict[str, list[int]]
    forced: list[list[int]]  # forced[step][i]: the token request i computes at decode step `step`

    @classmethod
    def random(cls, lengths: list[int], steps: int, vocab: int, seed: int) -> Session:
        gen = torch.Generator().manual_seed(seed)
        prompts = {
            f"r{i}": torch.randint(2, vocab, (n,), generator=gen).tolist()
            for i, n in enumerate(lengths)
        }
        forced = torch.randint(2, vocab, (steps, len(lengths)), generator=gen).tolist()
        return cls(prompts, forced)


@dataclass
class SessionResult:
    logits: list[torch.Tensor]  # per step: [N, V] fp32 of the rows that sampled
    # per step: every sampled row's tokens so far (the reference input)
    contexts: list[list[list[int]]]


@torch.inference_mode()
def run_session(runner: ModelRunner, session: Session, split: int | None = None) -> SessionResult:
    """Step 0 prefills every prompt; with `split`, the first prompt only up to `split` tokens and
    its rest in step 1, batched with the others' first decode token (an extend step). A request
    whose prompt is done decodes the next forced token each step."""
    alloc = PageAllocator(runner.num_pages, runner.page_size, seed=3)
    done = dict.fromkeys(session.prompts, 0)
    tokens = {rid: list(p) for rid, p in session.prompts.items()}
    pending = {rid: list(p) for rid, p in session.prompts.items()}
    first = next(iter(session.prompts))
    if split is not None:
        pending[first] = pending[first][:split]
    result = SessionResult([], [])
    for step in range(len(session.forced) + 1):
        seqs: list[ScheduledSeq] = []
        for rid in session.prompts:
            sample = done[rid] + len(pending[rid]) == len(tokens[rid])
            seqs.append(seq(alloc, rid, pending[rid], done[rid], sample=sample))
        result.logits.append(runner.run_logits(batch(*seqs)))
        result.contexts.append([list(tokens[s.rid]) for s in seqs if s.sample])
        for i, rid in enumerate(session.prompts):
            done[rid] += len(pending[rid])
            if done[rid] < len(tokens[rid]):
                pending[rid] = tokens[rid][done[rid] :]
            elif step < len(session.forced):
                tokens[rid].append(session.forced[step][i])
                pending[rid] = [session.forced[step][i]]
    return result


@torch.inference_mode()
def reference_logits(model: Glm4MoeLiteForCausalLM, result: SessionResult) -> list[torch.Tensor]:
    """The reference's last-position logits for every sampled row of `result`, step by step."""
    device = next(model.parameters()).device
    out = []
    for contexts in result.contexts:
        rows = [
            model(input_ids=torch.tensor([ctx], device=device), use_cache=False).logits[0, -1]
            for ctx in contexts
        ]
        out.append(torch.stack(rows).float())
    return out


@dataclass(frozen=True)
class Agreement:
    """How two sets of logits agree, row by row."""

    errors: list[float]  # max |a - b| / max |b| per row
    argmax_equal: list[bool]
    argmax_near: list[bool]  # a's argmax is within `near` x scale of b's best in b

    def summary(self) -> str:
        errs = ", ".join(f"{e:.4f}" for e in self.errors)
        return (
            f"rows {len(self.errors)}; max|d|/max|ref| per row [{errs}]; argmax equal "
            f"{sum(self.argmax_equal)}/{len(self.errors)}, near {sum(self.argmax_near)}"
        )


def compare(ours: list[torch.Tensor], ref: list[torch.Tensor], near: float = 0.05) -> Agreement:
    a = torch.cat(ours).float()
    b = torch.cat(ref).float().to(a.device)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.isfinite(a).all(), "non-finite logits"
    scale = b.abs().amax(dim=1)  # [N]
    errors = ((a - b).abs().amax(dim=1) / scale).tolist()
    best = b.amax(dim=1)  # [N]
    picked = b.gather(1, a.argmax(dim=1, keepdim=True)).squeeze(1)  # [N]
    return Agreement(
        errors=errors,
        argmax_equal=(a.argmax(dim=1) == b.argmax(dim=1)).tolist(),
        argmax_near=(picked >= best - near * scale).tolist(),
    )


def assert_agree(agreement: Agreement, row_tol: float, min_fraction: float = 0.75) -> None:
    """Most rows within `row_tol` (bf16 routing can flip an expert on a few rows, which moves
    those rows far), and most rows' greedy picks near the reference's best."""
    good = sum(e <= row_tol for e in agreement.errors)
    assert good >= min_fraction * len(agreement.errors), agreement.summary()
    assert sum(agreement.argmax_near) >= min_fraction * len(agreement.errors), agreement.summary()
