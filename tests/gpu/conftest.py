"""Fixtures of the GPU tests (skipped without CUDA): one reference checkpoint with the real layer
widths, written once per session, and runners loaded from it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import Glm4MoeLiteForCausalLM

from glm47.worker.runner import ModelRunner
from tests.gpu.harness import load_runner, make_reference_checkpoint

Checkpoint = tuple[Path, Glm4MoeLiteForCausalLM]


@pytest.fixture(scope="session")
def cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return torch.device("cuda")


@pytest.fixture(scope="session")
def checkpoint(
    tmp_path_factory: pytest.TempPathFactory, cuda: torch.device
) -> Iterator[Checkpoint]:
    path = tmp_path_factory.mktemp("real-widths")
    reference = make_reference_checkpoint(path, cuda)
    yield path, reference
    del reference
    torch.cuda.empty_cache()


@pytest.fixture(scope="session")
def eager_runner(checkpoint: Checkpoint, cuda: torch.device) -> ModelRunner:
    """Triton attention and experts, no CUDA graphs."""
    return load_runner(
        checkpoint[0],
        cuda,
        prefill_backend="triton",
        decode_backend="triton",
        disable_cuda_graph=True,
    )


# Triton attention and experts, decode graphs for batches up to 32.
GRAPH_RUNNER = dict(prefill_backend="triton", decode_backend="triton", graph_max_batch_size=32)


@pytest.fixture(scope="session")
def graph_runner(checkpoint: Checkpoint, cuda: torch.device) -> ModelRunner:
    """Triton attention and experts, decode graphs for batches up to 32."""
    return load_runner(checkpoint[0], cuda, **GRAPH_RUNNER)
