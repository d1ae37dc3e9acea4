"""The sampler on a GPU at the real vocabulary: queuing a batch's samples never synchronises with
the device (PyTorch's sync debug mode turned to errors), penalised rows included, and the draws
agree with the CPU's for seeded rows (the seeded noise is a pure function of seed, step and token
id; the penalties are computed bit for bit alike)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from glm47.worker.sampling import Sampler

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from sampler_bench import VOCAB, seqs_for

SETTINGS: list[dict[str, Any]] = [
    {"temperature": 0.0},
    {"temperature": 1.0},
    {"temperature": 1.0, "top_p": 0.95},
    {"temperature": 1.0, "top_p": 0.95, "seed": 7},
    {"temperature": 0.7, "top_k": 40, "min_p": 0.05},
    {"temperature": 1.0, "top_k": 40, "top_p": 0.9, "logprobs": 5},
    {"temperature": 1.0, "min_p": 0.05, "seed": 3},
    {"temperature": 1.0, "top_p": 0.95, "repetition_penalty": 1.2, "frequency_penalty": 0.5},
    {"temperature": 0.0, "presence_penalty": 0.4},
]
HISTORY = (64, 32)  # prompt and output tokens of each request: what the penalties count


@pytest.fixture
def sync_errors(cuda: torch.device) -> Iterator[None]:
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("settings", SETTINGS)
def test_queuing_samples_does_not_synchronise(
    settings: dict[str, Any], cuda: torch.device, sync_errors: None
) -> None:
    sampler = Sampler(seed=0)
    for flat in (True, False):
        logits = torch.randn(4, VOCAB, device=cuda) * (0.1 if flat else 4.0)
        deferred = sampler.sample_deferred(logits, seqs_for(4, settings, HISTORY))
        torch.cuda.set_sync_debug_mode("default")
        outputs = deferred.collect()
        torch.cuda.set_sync_debug_mode("error")
        assert all(0 <= o.token_id < VOCAB for o in outputs)


def test_seeded_rows_draw_the_same_tokens_on_the_gpu_and_the_cpu(cuda: torch.device) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(8, VOCAB, generator=gen) * 3.0
    for settings in (
        {"temperature": 1.0, "top_p": 0.9, "seed": 11},
        {"temperature": 0.8, "top_k": 30, "seed": 12},
        {"temperature": 1.2, "min_p": 0.02, "seed": 13},
        {"temperature": 1.0, "top_p": 0.9, "seed": 14, "repetition_penalty": 1.3,
         "frequency_penalty": 0.4, "presence_penalty": -0.2},
    ):  # fmt: skip
        seqs = seqs_for(8, settings, HISTORY)
        cpu = [o.token_id for o in Sampler().sample(logits, seqs)]
        gpu = [o.token_id for o in Sampler().sample(logits.to(cuda), seqs)]
        assert gpu == cpu, settings
