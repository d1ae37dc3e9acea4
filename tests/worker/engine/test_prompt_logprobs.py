"""Prompt logprobs: the engine scores every prompt token after the first under the logits of the
position before it, with its rank there, across prefill chunks, past the prefix cache and through
preemption, and reports them on the request's first output. Checked against transformers on the
tiny model."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
from transformers import Glm4MoeLiteForCausalLM

from glm47.worker.batch import PromptScores
from glm47.worker.config import EngineConfig
from glm47.worker.engine import Engine, Request
from glm47.worker.engine.interfaces import StepOutput
from glm47.worker.engine.page_pool import PagePool
from glm47.worker.engine.prefix_cache import PrefixCache
from glm47.worker.engine.scheduler import Scheduler
from tests.worker.model.reference import GreedySampler, make_hf_model, make_runner, save_hf_model

PAGE_SIZE = 4
TOP = 3


@pytest.fixture(scope="module")
def hf_model() -> Glm4MoeLiteForCausalLM:
    return make_hf_model(seed=0, dtype=torch.float32)


@pytest.fixture(scope="module")
def model_dir(hf_model: Glm4MoeLiteForCausalLM, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_hf_model(hf_model, tmp_path_factory.mktemp("m"))


@torch.no_grad()
def reference(
    model: Glm4MoeLiteForCausalLM, prompt: list[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logprob of prompt tokens 1..P-1 [P-1], their ranks [P-1] (1 + the ids with a larger
    logprob), and the top-TOP ids and logprobs [P-1, TOP] at the positions before them, from one
    full forward."""
    logits = model(input_ids=torch.tensor([prompt]), use_cache=False).logits[0, :-1].float()
    logp = logits.log_softmax(dim=-1)
    chosen = logp.gather(1, torch.tensor(prompt[1:])[:, None])[:, 0]
    ranks = (logp > chosen[:, None]).sum(dim=-1) + 1
    top_vals, top_ids = logp.topk(TOP, dim=-1)
    return chosen, ranks, top_ids, top_vals


def engine_for(model_dir: Path, kv_tokens: int) -> Engine:
    runner = make_runner(model_dir, torch.float32, PAGE_SIZE, kv_tokens)
    config = EngineConfig(
        device="cpu",
        dtype="float32",
        page_size=PAGE_SIZE,
        max_req_total_len=512,
        chunked_prefill_size=8,
        max_num_batched_tokens=16,
        enable_prefix_cache=True,
        reserve_output_ratio=0.0,
    )
    return Engine(config, runner, GreedySampler(), eos_token_ids=[])


def run_all(engine: Engine, reqs: list[Request]) -> dict[str, list[StepOutput]]:
    """One arrival per step; every output, by request."""
    outs: dict[str, list[StepOutput]] = {}
    pending = list(reqs)
    while pending or engine.has_work():
        if pending:
            engine.add_request(pending.pop(0))
        for out in engine.step():
            outs.setdefault(out.rid, []).append(out)
        engine.check_accounting()
    return outs


def test_prompt_logprobs_equal_the_reference_across_chunks_and_the_prefix_cache(
    model_dir: Path, hf_model: Glm4MoeLiteForCausalLM
) -> None:
    rng = random.Random(1)
    shared = [rng.randrange(3, 96) for _ in range(12)]
    prompts = {
        "plain": [*shared, 5, 6],  # publishes the shared prefix to the cache
        "scored": shared + [rng.randrange(3, 96) for _ in range(9)],  # 21 tokens: 3 chunks
        "scored-0": [*shared, 7],  # logprobs only, no top
        "single": [9],  # nothing to score
        "after": [*shared, 8, 9, 10],  # unscored: still served from the cache
    }
    want = {"plain": -1, "scored": TOP, "scored-0": 0, "single": TOP, "after": -1}
    reqs = [
        Request(rid=rid, prompt_ids=p, max_new_tokens=3, prompt_logprobs=want[rid])
        for rid, p in prompts.items()
    ]
    engine = engine_for(model_dir, kv_tokens=512)
    outs = run_all(engine, reqs[:1])  # the shared prefix is in the cache before the others come
    outs.update(run_all(engine, reqs[1:]))

    for rid, prompt in prompts.items():
        first = outs[rid][0]
        assert first.prompt_tokens == len(prompt)
        assert all(o.prompt_logprobs is None for o in outs[rid][1:]), "only the first output"
        if want[rid] < 0:
            assert first.prompt_logprobs is None and first.prompt_top_logprobs is None
            assert first.prompt_ranks is None
            continue
        assert first.cached_tokens == 0, "a scored prompt is computed whole"
        assert first.prompt_logprobs is not None
        assert len(first.prompt_logprobs) == len(prompt) - 1
        if len(prompt) == 1:
            assert first.prompt_logprobs == [] and first.prompt_ranks == []
            continue
        chosen, ranks, top_ids, top_vals = reference(hf_model, prompt)
        torch.testing.assert_close(
            torch.tensor(first.prompt_logprobs), chosen, atol=1e-4, rtol=1e-4
        )
        assert first.prompt_ranks == ranks.tolist()
        if want[rid] == 0:
            assert first.prompt_top_logprobs is None
            continue
        top = first.prompt_top_logprobs
        assert top is not None and len(top) == len(prompt) - 1
        assert [[t for t, _ in row] for row in top] == top_ids.tolist()
        for rank, row, token in zip(first.prompt_ranks, top, prompt[1:], strict=True):
            if rank <= TOP:  # a token in its position's top list sits at its rank there
                assert row[rank - 1][0] == token
        torch.testing.assert_close(
            torch.tensor([[v for _, v in row] for row in top]), top_vals, atol=1e-4, rtol=1e-4
        )
    assert outs["after"][0].cached_tokens == 12, "unscored prompts still hit the cache"


def test_a_prompt_preempted_before_its_first_token_is_scored_again_from_the_start() -> None:
    """Scheduler level: a scoring request's chunks carry the prompt tokens after their rows; once
    preempted it is recomputed from position 0 with scores and no cache hit; after its first
    output, a recompute scores nothing and may use the cache."""
    config = EngineConfig(
        device="cpu",
        dtype="float32",
        page_size=PAGE_SIZE,
        max_req_total_len=64,
        chunked_prefill_size=4,
        max_num_batched_tokens=4,
        enable_prefix_cache=True,
        reserve_output_ratio=0.0,
    )
    pool = PagePool(32, PAGE_SIZE)
    scheduler = Scheduler(config, pool, PrefixCache(pool))
    prompt = list(range(10, 20))  # 10 tokens
    req = Request(rid="r", prompt_ids=prompt, max_new_tokens=4, prompt_logprobs=2)
    scheduler.add(req)
    (seq,) = scheduler.schedule().seqs
    assert (seq.start_pos, seq.score_ids, seq.score_top) == (0, prompt[1:5], 2)
    (seq,) = scheduler.schedule().seqs
    assert (seq.start_pos, seq.score_ids) == (4, prompt[5:9])
    scheduler.preempt(req)
    (seq,) = scheduler.schedule().seqs
    assert (seq.start_pos, seq.score_ids) == (0, prompt[1:5]), "no cache hit, scored again"
    scheduler.schedule()
    (seq,) = scheduler.schedule().seqs
    assert (seq.start_pos, seq.score_ids, seq.sample) == (8, prompt[9:10], True)
    # The last prompt row samples: only the row before it has a prompt token to score.
    req.append_output(42)
    req.first_output_sent = True
    scheduler.preempt(req)
    (seq,) = scheduler.schedule().seqs
    assert seq.start_pos == 8, "the recompute after the first output uses the cache"
    assert seq.score_ids == []


def test_recorded_scores_are_overwritten_by_a_recompute() -> None:
    req = Request(rid="r", prompt_ids=[1, 2, 3, 4, 5], max_new_tokens=1, prompt_logprobs=1)
    req.record_prompt_scores(PromptScores("r", 0, [-1.0, -2.0], [1, 4], [[(2, -1.0)], [(3, -2.0)]]))
    req.record_prompt_scores(PromptScores("r", 2, [-3.0, -4.0], [2, 3], [[(4, -3.0)], [(5, -4.0)]]))
    req.record_prompt_scores(PromptScores("r", 0, [-1.5, -2.5], [5, 6], [[(2, -1.5)], [(3, -2.5)]]))
    assert req.prompt_scores == [-1.5, -2.5, -3.0, -4.0]
    assert req.prompt_ranks == [5, 6, 2, 3]
    assert req.prompt_top == [[(2, -1.5)], [(3, -2.5)], [(4, -3.0)], [(5, -4.0)]]
    with pytest.raises(AssertionError):
        req.record_prompt_scores(PromptScores("r", 3, [-1.0, -1.0], [1, 1]))  # past the prompt


def test_positions_never_scored_read_as_nan_and_the_request_keeps_no_copy() -> None:
    req = Request(rid="r", prompt_ids=[1, 2, 3, 4], max_new_tokens=1, prompt_logprobs=1)
    req.record_prompt_scores(PromptScores("r", 1, [-2.0], [7], [[(3, -2.0)]]))
    scores = req.take_prompt_scores()
    assert math.isnan(scores.logprobs[0]) and scores.logprobs[1] == -2.0
    assert math.isnan(scores.logprobs[2])
    assert scores.ranks == [0, 7, 0], "rank 0: not scored"
    assert scores.top == [[], [(3, -2.0)], []]
    assert req.prompt_scores is None and req.prompt_ranks is None and req.prompt_top is None
    empty = Request(rid="e", prompt_ids=[1, 2, 3], max_new_tokens=1, prompt_logprobs=0)
    scores = empty.take_prompt_scores()
    assert len(scores.logprobs) == 2 and all(math.isnan(x) for x in scores.logprobs)
    assert scores.ranks == [0, 0] and scores.top is None
