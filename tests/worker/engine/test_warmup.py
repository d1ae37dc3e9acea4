"""The serving warm-up on the tiny model (CPU): the synthetic traffic takes the paths real traffic
takes (multi-prompt and chunked prefill, prompts beside decoding, prefix-cache hits, drafts), ends
with nothing left in its engine, and leaves the runner serving exactly as an unused one does."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from glm47.worker.batch import SamplingParams
from glm47.worker.config import EngineConfig
from glm47.worker.engine import Engine, Request
from glm47.worker.engine.warmup import crowd_size, prompt_lengths, warm_up
from glm47.worker.model.config import ModelConfig
from glm47.worker.model.tiny import make_tiny_model
from glm47.worker.sampling import Sampler
from tests.worker.model.reference import make_runner

PAGE_SIZE = 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-warmup")
    make_tiny_model(str(path), seed=0)
    return path


def config(mtp_step: int = 0) -> EngineConfig:
    return EngineConfig(
        device="cpu",
        dtype="float32",
        page_size=PAGE_SIZE,
        max_req_total_len=256,
        chunked_prefill_size=32,
        max_num_batched_tokens=48,
        mtp_step=mtp_step,
    )


def test_prompt_lengths_reach_past_one_step_and_stay_under_the_cap() -> None:
    lengths = prompt_lengths(budget=8192, longest=100_000)
    assert lengths[0] == 1 and max(lengths) > 8192 and lengths == sorted(set(lengths))
    assert max(prompt_lengths(budget=8192, longest=300)) == 300


def test_warm_up_covers_the_serving_paths_and_leaves_nothing_running(model_dir: Path) -> None:
    runner = make_runner(model_dir, torch.float32, PAGE_SIZE, kv_tokens=2048)
    engine = Engine(config(mtp_step=1), runner, Sampler(seed=0), eos_token_ids=[])
    vocab = ModelConfig.from_dir(model_dir).vocab_size
    report = warm_up(engine, vocab)
    assert not engine.has_work()
    engine.check_accounting()
    lengths = prompt_lengths(48, min(256 - 40, engine.kv_capacity_tokens // 8))
    assert max(lengths) > 48  # one prompt is chunked over several steps
    crowd = crowd_size(engine)
    assert crowd == 2048 // 64  # the pool, not the 1024 running requests, bounds it here
    assert report.requests == len(lengths) + len(lengths) + len(lengths) // 2 + crowd
    assert report.prefix_hit_tokens > 0
    assert report.mixed_steps > 0
    assert report.largest_decode_batch >= crowd // 2
    assert report.drafted > 0
    assert report.steps > 10


def test_a_fresh_engine_after_warm_up_serves_as_on_an_unused_runner(model_dir: Path) -> None:
    def serve(warm: bool) -> dict[str, list[int]]:
        runner = make_runner(model_dir, torch.float32, PAGE_SIZE, kv_tokens=2048)
        if warm:
            warm_up(Engine(config(), runner, Sampler(seed=0), []), 64)
        engine = Engine(config(), runner, Sampler(seed=0), eos_token_ids=[])
        assert engine.cache.hit_tokens == 0 and engine.scheduler.prompt_tokens == 0
        sampled = SamplingParams(temperature=0.9, top_p=0.95)
        engine.add_request(Request("g", [5, 17, 33, 9, 41], 10, SamplingParams(temperature=0)))
        engine.add_request(Request("s", [60, 61, 62], 10, sampled))
        out: dict[str, list[int]] = {}
        while engine.has_work():
            for o in engine.step():
                out.setdefault(o.rid, []).extend(o.ids)
        return out

    assert serve(warm=True) == serve(warm=False)


def test_warm_up_skips_what_small_limits_refuse(model_dir: Path) -> None:
    """A queue of 4 and requests of 24 tokens at most: the waves do not fit, and the warm-up
    still runs what does and ends cleanly (it must never stop a worker from starting)."""
    runner = make_runner(model_dir, torch.float32, PAGE_SIZE, kv_tokens=2048)
    small = dataclasses.replace(config(), max_waiting_requests=4, max_req_total_len=24)
    engine = Engine(small, runner, Sampler(seed=0), eos_token_ids=[])
    report = warm_up(engine, ModelConfig.from_dir(model_dir).vocab_size)
    assert report.rejected > 0 and report.requests > 0
    assert not engine.has_work()
    engine.check_accounting()
