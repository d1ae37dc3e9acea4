"""Running ahead on the GPU: steps queued before the samples of the step before (their decoding
rows fed on the device among prompt chunks, through CUDA graphs where every row decodes, with
penalties reading the fed token) give the outputs of planning every step after its samples.
The requests are admitted together and never stop early, so both engines plan the same batches
and the device computes the same logits."""

from __future__ import annotations

import random

import pytest
import torch

from glm47.worker.batch import SamplingParams
from glm47.worker.config import EngineConfig
from glm47.worker.engine import Engine, Request
from glm47.worker.runner import ModelRunner
from glm47.worker.sampling import Sampler
from tests.gpu.harness import PAGE_SIZE

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SETTINGS = [
    SamplingParams(temperature=0.0),
    SamplingParams(temperature=1.0, top_p=0.95, seed=3),
    SamplingParams(temperature=0.8, top_k=20, seed=4, logprobs=2),
    SamplingParams(temperature=0.0, repetition_penalty=1.3, frequency_penalty=0.5),
    SamplingParams(temperature=1.0, presence_penalty=0.7, seed=5),
    SamplingParams(temperature=1.0, min_p=0.1),
]


def serve(runner: ModelRunner, overlap: bool) -> tuple[dict[str, list], Engine]:
    config = EngineConfig(
        page_size=PAGE_SIZE,
        max_req_total_len=1024,
        chunked_prefill_size=48,  # prompts of 20-140 tokens end at different steps
        max_num_batched_tokens=96,
        overlap_schedule=overlap,
    )
    engine = Engine(config, runner, Sampler(seed=11), eos_token_ids=[])
    rng = random.Random(7)
    for i in range(18):
        prompt = [rng.randrange(2, 4096) for _ in range(rng.randrange(20, 140))]
        engine.add_request(
            Request(rid=f"r{i}", prompt_ids=prompt, max_new_tokens=rng.randrange(4, 24),
                    sampling=SETTINGS[i % len(SETTINGS)])
        )  # fmt: skip
    news: dict[str, list] = {}
    while engine.has_work():
        for out in engine.step():
            news.setdefault(out.rid, []).append((out.ids, out.logprobs, out.top_logprobs))
        engine.check_accounting()
    return news, engine


def test_running_ahead_on_the_gpu_gives_the_outputs_of_planning_after_the_samples(
    graph_runner: ModelRunner,
) -> None:
    plain, _ = serve(graph_runner, overlap=False)
    ahead, engine = serve(graph_runner, overlap=True)
    assert ahead == plain
    assert len(plain) == 18
    assert engine.steps_ahead > 10
