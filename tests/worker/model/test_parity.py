"""The worker's model against transformers' Glm4MoeLiteForCausalLM on tiny random checkpoints
written by save_pretrained (per-expert tensor names), through the runner and the torch backend.

In bf16 the reference is transformers run in fp32 on the same bf16 weights: transformers' own bf16
run differs from it by a flipped expert choice on some prompts, which no tolerance could absorb.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import Glm4MoeLiteForCausalLM

from tests.worker.model.reference import (
    GreedySampler,
    PageAllocator,
    batch,
    hf_last_logits,
    make_hf_model,
    make_runner,
    save_hf_model,
    seq,
)

TOL = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.bfloat16: dict(atol=5e-2, rtol=2e-2)}
PROMPTS = [[1, 5, 7, 9, 11], list(range(3, 20)), [4, 2], [60, 61, 62, 63, 64, 65, 66, 67]]


@pytest.fixture(scope="module", params=[torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def checkpoint(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Glm4MoeLiteForCausalLM, torch.dtype]:
    dtype = request.param
    path = save_hf_model(make_hf_model(0, dtype), tmp_path_factory.mktemp("hf"))
    reference = Glm4MoeLiteForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager"
    ).eval()
    return path, reference, dtype


@pytest.mark.parametrize("page_size", [1, 4])
def test_prefill_of_prompts_of_different_lengths_matches_transformers(
    checkpoint: tuple[Path, Glm4MoeLiteForCausalLM, torch.dtype], page_size: int
) -> None:
    path, reference, dtype = checkpoint
    runner = make_runner(path, dtype, page_size)
    alloc = PageAllocator(runner.num_pages, page_size)
    logits = runner.run_logits(batch(*[seq(alloc, f"r{i}", p, 0) for i, p in enumerate(PROMPTS)]))
    assert logits.dtype == torch.float32
    assert logits.shape == (len(PROMPTS), reference.config.vocab_size)
    expected = torch.stack([hf_last_logits(reference, p) for p in PROMPTS])
    torch.testing.assert_close(logits, expected, **TOL[dtype])


def test_continuous_batching_decode_matches_transformers(
    checkpoint: tuple[Path, Glm4MoeLiteForCausalLM, torch.dtype],
) -> None:
    """Two requests decode; a third joins after two steps (its prefill in the same batch as the
    others' decode tokens); every step's logits match a full forward of the reference."""
    path, reference, dtype = checkpoint
    runner = make_runner(path, dtype, page_size=2)
    alloc = PageAllocator(runner.num_pages, 2, seed=1)
    sampler = GreedySampler()
    tokens = {"a": list(PROMPTS[0]), "b": list(PROMPTS[1])}
    computed = {"a": 0, "b": 0}
    for step in range(5):
        if step == 2:
            tokens["c"], computed["c"] = list(PROMPTS[3]), 0
        seqs = [seq(alloc, rid, tokens[rid][computed[rid] :], computed[rid]) for rid in tokens]
        logits = runner.run_logits(batch(*seqs))
        expected = torch.stack([hf_last_logits(reference, tokens[rid]) for rid in tokens])
        torch.testing.assert_close(logits, expected, **TOL[dtype])
        samples = sampler.sample(logits, seqs)
        for rid, sample in zip(tokens, samples, strict=True):
            computed[rid] = len(tokens[rid])
            tokens[rid].append(sample.token_id)
    assert runner.kv_cache.abs().sum() > 0


def test_chunked_prefill_equals_one_piece_prefill(
    checkpoint: tuple[Path, Glm4MoeLiteForCausalLM, torch.dtype],
) -> None:
    """A 17-token prompt computed in chunks of 6, 6, 5 (beside a decoding request) gives the same
    last logits and the same cached latents as computing it at once."""
    path, _, dtype = checkpoint
    prompt = PROMPTS[1]
    whole = make_runner(path, dtype, page_size=4)
    whole_alloc = PageAllocator(whole.num_pages, 4)
    one_piece = whole.run_logits(batch(seq(whole_alloc, "p", prompt, 0)))

    chunked = make_runner(path, dtype, page_size=4)
    alloc = PageAllocator(chunked.num_pages, 4, seed=2)
    other = list(PROMPTS[0])
    chunked.run_logits(batch(seq(alloc, "o", other, 0)))
    for start, end in [(0, 6), (6, 12)]:
        no_sample = seq(alloc, "p", prompt[start:end], start, sample=False)
        out = chunked.run_logits(batch(seq(alloc, "o", [3], len(other)), no_sample))
        other.append(3)
        assert out.shape[0] == 1
    last = chunked.run_logits(batch(seq(alloc, "p", prompt[12:], 12)))
    torch.testing.assert_close(last, one_piece, **TOL[dtype])

    def cached(runner_: object, pages: list[int]) -> torch.Tensor:
        rows = torch.cat([torch.arange(p * 4, p * 4 + 4) for p in pages])[: len(prompt)]
        return runner_.kv_cache[:, rows]  # type: ignore[attr-defined]

    torch.testing.assert_close(
        cached(chunked, alloc.tables["p"]), cached(whole, whole_alloc.tables["p"]), **TOL[dtype]
    )
