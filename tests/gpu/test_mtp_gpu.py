"""MTP speculative decoding on the GPU at the real layer widths (3 layers and the MTP layer, dummy
weights, bf16): the engine with drafts against the engine without, through the Triton backends,
decode CUDA graphs for plain decode steps and segment graphs for verification steps.

In bf16 a verification step computes a row in another kernel and batch layout than a plain decode
step, so logits may differ in their last bits and flip a near tie: the check is that outputs agree
token for token up to such a flip, in almost every request."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

from glm47.worker.batch import SamplingParams
from glm47.worker.config import EngineConfig
from glm47.worker.engine import Engine, Request
from glm47.worker.model.config import ModelConfig
from glm47.worker.runner import ModelRunner
from glm47.worker.sampling import Sampler

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_model import GLM47_FLASH_CONFIG

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def generate(mtp_step: int) -> tuple[dict[str, list[int]], Engine]:
    raw = dict(GLM47_FLASH_CONFIG, num_hidden_layers=3, vocab_size=4096, num_nextn_predict_layers=1)
    runner = ModelRunner(
        ModelConfig.from_dict(raw),
        None,
        device=torch.device("cuda"),
        dtype=torch.bfloat16,
        page_size=16,
        kv_tokens=16384,
        load_format="dummy",
        seed=0,
        prefill_backend="triton",
        decode_backend="triton",
        graph_max_batch_size=16,
        segment_graph_max_tokens=1024,
    )
    config = EngineConfig(
        page_size=16, max_req_total_len=4096, max_num_batched_tokens=1024, mtp_step=mtp_step
    )
    engine = Engine(config, runner, Sampler(seed=0), eos_token_ids=[])
    rng = random.Random(0)
    for i in range(12):
        prompt = [rng.randrange(4, 4096) for _ in range(rng.randrange(5, 300))]
        engine.add_request(Request(f"r{i}", prompt, 24, sampling=SamplingParams(temperature=0)))
    tokens: dict[str, list[int]] = {}
    while engine.has_work():
        for out in engine.step():
            tokens.setdefault(out.rid, []).extend(out.ids)
    return tokens, engine


def test_mtp_drafts_leave_greedy_output_unchanged_up_to_bf16_ties() -> None:
    plain, _ = generate(0)
    spec, engine = generate(2)
    assert engine.spec_drafted > 0
    same_prefix = []
    for rid, want in plain.items():
        got = spec[rid]
        assert len(got) == len(want) == 24
        same_prefix.append(
            next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), 24)
        )
    print(f"[mtp] drafted {engine.spec_drafted}, accepted {engine.spec_accepted}; "
          f"tokens equal before the first difference: {same_prefix}")  # fmt: skip
    assert sum(n == 24 for n in same_prefix) >= 10, same_prefix
