"""MTP speculative decoding with the real runner on the tiny model (CPU): its MTP layer drafts,
the model verifies, and greedy and seeded sampled outputs equal decoding without drafts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from glm47.worker.batch import SamplingParams
from glm47.worker.config import EngineConfig
from glm47.worker.engine import Engine, Request
from glm47.worker.model.tiny import make_tiny_model
from glm47.worker.sampling import Sampler
from tests.worker.model.reference import make_runner

PAGE_SIZE = 4
PROMPTS = {"a": [5, 17, 33, 9, 41, 8, 12], "b": [60, 61], "c": list(range(30, 52))}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-mtp")
    make_tiny_model(str(path), seed=0)
    return path


def generate(model_dir: Path, mtp_step: int, sampling: SamplingParams) -> tuple[dict, Engine]:
    runner = make_runner(model_dir, torch.float32, PAGE_SIZE, kv_tokens=512)
    config = EngineConfig(
        device="cpu",
        dtype="float32",
        page_size=PAGE_SIZE,
        max_req_total_len=256,
        chunked_prefill_size=8,
        max_num_batched_tokens=24,
        mtp_step=mtp_step,
    )
    engine = Engine(config, runner, Sampler(seed=0), eos_token_ids=[])
    for rid, prompt in PROMPTS.items():
        engine.add_request(Request(rid, prompt, max_new_tokens=12, sampling=sampling))
    tokens: dict[str, list[int]] = {}
    while engine.has_work():
        for out in engine.step():
            tokens.setdefault(out.rid, []).extend(out.ids)
        engine.check_accounting()
    return tokens, engine


@pytest.mark.parametrize(
    "sampling",
    [SamplingParams(temperature=0.0), SamplingParams(temperature=0.9, top_p=0.95, seed=11)],
    ids=["greedy", "seeded"],
)
def test_mtp_drafting_leaves_the_output_unchanged(
    model_dir: Path, sampling: SamplingParams
) -> None:
    plain, _ = generate(model_dir, 0, sampling)
    spec, engine = generate(model_dir, 2, sampling)
    assert spec == plain
    assert all(len(t) == 12 for t in spec.values())
    assert engine.spec_drafted > 0
    assert 0 <= engine.spec_accepted <= engine.spec_drafted
