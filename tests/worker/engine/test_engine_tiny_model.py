"""The engine driving the real runner on a tiny random model (CPU): greedy outputs under a tight KV
pool (preemption, recompute, prefix sharing, chunked prefill) equal those of a roomy pool."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from glm47.worker.config import EngineConfig
from glm47.worker.engine import Engine, Request
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
