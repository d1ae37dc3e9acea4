"""The engine driving the real runner on a tiny random model (CPU): greedy outputs under a tight KV
pool (preemption, recompute, prefix sharing, chunked prefill) equal those of a roomy pool."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from glm47.worker.batch import SamplingParams
from glm47.worker.config import EngineConfig
from glm47.worker.engine import Engine, Request
from glm47.worker.sampling import Sampler
from tests.worker.model.reference import GreedySampler, make_hf_model, make_runner, save_hf_model

PAGE_SIZE = 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_hf_model(make_hf_model(seed=0, dtype=torch.float32), tmp_path_factory.mktemp("m"))


def prompts() -> dict[str, list[int]]:
    rng = random.Random(0)
    base = [rng.randrange(3, 96) for _ in range(10)]
    out = {f"s{i}": base + [rng.randrange(3, 96) for _ in range(1 + 2 * i)] for i in range(4)}
    out["other"] = [rng.randrange(3, 96) for _ in range(13)]
    return out


def generate(model_dir: Path, kv_tokens: int, prefix_cache: bool) -> tuple[dict, Engine]:
    runner = make_runner(model_dir, torch.float32, PAGE_SIZE, kv_tokens)
    config = EngineConfig(
        device="cpu",
        dtype="float32",
        page_size=PAGE_SIZE,
        max_req_total_len=512,
        chunked_prefill_size=8,
        max_num_batched_tokens=16,
        enable_prefix_cache=prefix_cache,
        reserve_output_ratio=0.0,
    )
    engine = Engine(config, runner, GreedySampler(), eos_token_ids=[])
    tokens: dict[str, list[int]] = {}
    pending = list(prompts().items())
    while pending or engine.has_work():
        if pending:  # one arrival per step: later requests find earlier prefixes cached
            rid, prompt = pending.pop(0)
            engine.add_request(Request(rid=rid, prompt_ids=prompt, max_new_tokens=6))
        for out in engine.step():
            tokens.setdefault(out.rid, []).extend(out.ids)
        engine.check_accounting()
    return tokens, engine


def test_greedy_output_with_a_tight_pool_and_prefix_cache_equals_a_roomy_pool(
    model_dir: Path,
) -> None:
    roomy, _ = generate(model_dir, kv_tokens=512, prefix_cache=False)
    tight, engine = generate(model_dir, kv_tokens=40, prefix_cache=True)
    assert tight == roomy
    assert all(len(ids) == 6 for ids in roomy.values())
    assert engine.scheduler.num_preemptions > 0
    assert engine.stats()["prefix_hit_tokens"] > 0
    # Steps queued ahead of their inputs' samples that also admit or carry prompt chunks (the
    # runner feeds the decoding rows among the prompt rows on the device).
    assert engine.steps_ahead > 0


def decode_all(model_dir: Path, overlap: bool, stop: dict[str, int]) -> tuple[dict, Engine]:
    """Five requests admitted together, then decoded to the end: greedy, seeded sampling with
    top-p, logprobs with their top 3, penalties; `stop` gives a request a stop id."""
    runner = make_runner(model_dir, torch.float32, PAGE_SIZE, 512)
    config = EngineConfig(
        device="cpu", dtype="float32", page_size=PAGE_SIZE, max_req_total_len=512,
        overlap_schedule=overlap,
    )  # fmt: skip
    engine = Engine(config, runner, Sampler(seed=5), eos_token_ids=[])
    settings = [
        SamplingParams(),
        SamplingParams(temperature=0.8, top_p=0.9, seed=11),
        SamplingParams(temperature=1.0, seed=12, logprobs=3),
        SamplingParams(logprobs=0, repetition_penalty=1.3, frequency_penalty=0.4),
        SamplingParams(temperature=0.7, top_k=5, seed=13, presence_penalty=0.5),
    ]
    for (rid, prompt), sampling in zip(prompts().items(), settings, strict=True):
        stops = frozenset({stop[rid]}) if rid in stop else frozenset()
        engine.add_request(Request(rid=rid, prompt_ids=prompt, max_new_tokens=9,
                                   sampling=sampling, stop_token_ids=stops))  # fmt: skip
    news: dict[str, list] = {}
    while engine.has_work():
        for out in engine.step():
            news.setdefault(out.rid, []).append(
                (out.ids, out.logprobs, out.top_logprobs, out.finish)
            )
        engine.check_accounting()
    return news, engine


def test_running_ahead_on_the_real_runner_gives_the_same_outputs(model_dir: Path) -> None:
    """Decode steps queued before the samples of the step before (the real runner takes their
    input tokens on the device) give the tokens, logprobs and finishes of planning each step
    after them, seeded sampling included; a stop found while the next step runs ends there."""
    plain, _ = decode_all(model_dir, overlap=False, stop={})
    ahead, engine = decode_all(model_dir, overlap=True, stop={})
    assert ahead == plain
    assert engine.steps_ahead > 0
    tokens = [t for ids, *_ in plain["s1"] for t in ids]
    stop = {"s1": tokens[3]}  # its fourth token (or an earlier repeat) stops it
    plain, _ = decode_all(model_dir, overlap=False, stop=stop)
    ahead, _ = decode_all(model_dir, overlap=True, stop=stop)
    # Running ahead, the step after the stop still holds "s1" (its sample dropped), so that
    # step's batch is one row larger than without: the other rows may round differently from
    # there on, and only their counts and finishes are compared.
    assert ahead["s1"] == plain["s1"] and plain["s1"][-1][3] == "stop"
    for rid in ("s0", "s2", "s3", "other"):
        assert len(ahead[rid]) == len(plain[rid]) == 9 and ahead[rid][-1][3] == "length"
