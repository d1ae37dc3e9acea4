"""The dense projections through kernels/skinny_gemm (`--skinny-gemm`) at the real layer widths,
in bf16, replayed from decode CUDA graphs: the logits of the library path."""

from __future__ import annotations

import random

import pytest
import torch

from glm47.worker.model.layers.linear import Linear
from glm47.worker.runner import ModelRunner
from tests.gpu.conftest import GRAPH_RUNNER, Checkpoint
from tests.gpu.harness import Session, assert_agree, compare, load_runner, run_session

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ROW_TOL = 0.02  # the same products, summed in another order and rounded once more or less


@pytest.fixture(scope="module")
def skinny_runner(checkpoint: Checkpoint, cuda: torch.device) -> ModelRunner:
    """`graph_runner` with the skinny projections."""
    return load_runner(checkpoint[0], cuda, **GRAPH_RUNNER, skinny_gemm=True)


@pytest.mark.parametrize("batch", [1, 8])
def test_skinny_projections_give_the_library_logits(
    batch: int,
    skinny_runner: ModelRunner,
    graph_runner: ModelRunner,
) -> None:
    lengths = [random.Random(batch + i).randint(5, 60) for i in range(batch)]
    session = Session.random(lengths, steps=3, vocab=4096, seed=batch)
    linears = [m for m in skinny_runner.model.modules() if isinstance(m, Linear)]
    assert linears and all(m.skinny for m in linears)
    assert skinny_runner.graphs is not None  # decode steps replay graphs captured with the kernel
    skinny = run_session(skinny_runner, session)
    library = run_session(graph_runner, session)
    agreement = compare(skinny.logits, library.logits)
    print(f"\n[skinny vs library, batch {batch}] {agreement.summary()}")
    assert_agree(agreement, ROW_TOL, min_fraction=0.9)
