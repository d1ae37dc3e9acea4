"""Segment graphs (steps with prompt tokens captured between the attention calls) against the
eager forward pass on the GPU, at the real layer widths: prefill, extend and decode steps."""

from __future__ import annotations

import pytest
import torch

from glm47.worker.runner import ModelRunner
from tests.gpu.conftest import Checkpoint
from tests.gpu.harness import Session, assert_agree, compare, load_runner, run_session

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SESSION = Session.random([150, 60, 33, 97, 12, 201], steps=4, vocab=4096, seed=1)


def test_segment_graphs_give_the_eager_logits(
    checkpoint: Checkpoint,
    cuda: torch.device,
    eager_runner: ModelRunner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runner = load_runner(
        checkpoint[0],
        cuda,
        prefill_backend="triton",
        decode_backend="triton",
        disable_cuda_graph=True,  # decode steps go through the segment graphs too
        segment_graph_max_tokens=1024,
    )
    segments = runner.segments
    assert segments is not None
    served: list[int] = []
    real_run = segments.run
    monkeypatch.setattr(
        segments, "run", lambda ids, ctx: served.append(ids.shape[0]) or real_run(ids, ctx)
    )
    graphed = run_session(runner, SESSION, split=100)
    eager = run_session(eager_runner, SESSION, split=100)
    assert len(served) == len(SESSION.forced) + 1  # every step, padded to a captured size
    agreement = compare(graphed.logits, eager.logits)
    print(f"\n[segment graphs vs eager] {agreement.summary()}")
    assert_agree(agreement, 0.02, min_fraction=0.9)
