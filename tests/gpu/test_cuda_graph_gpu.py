"""Decode steps replayed from CUDA graphs give the eager logits, at batch sizes that fill a graph
(1) and that are padded to a larger one (3 -> 4, 17 -> 24)."""

from __future__ import annotations

import random

import pytest
import torch

from glm47.worker.cuda_graph import padded_batch_size
from glm47.worker.runner import ModelRunner
from tests.gpu.harness import Session, assert_agree, compare, run_session

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GRAPH_ROW_TOL = 0.02  # same weights and kernels; only the padded batch shape differs


@pytest.mark.parametrize(("batch", "graph_batch"), [(1, 1), (3, 4), (17, 24)])
def test_graph_replay_gives_the_eager_logits(
    batch: int,
    graph_batch: int,
    eager_runner: ModelRunner,
    graph_runner: ModelRunner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    graphs = graph_runner.graphs
    assert graphs is not None, "decode CUDA graphs were not captured"
    assert padded_batch_size(batch, graphs.sizes) == graph_batch
    lengths = [random.Random(batch + i).randint(5, 60) for i in range(batch)]
    session = Session.random(lengths, steps=3, vocab=4096, seed=batch)
    replays: list[int] = []
    real_run = graphs.run
    monkeypatch.setattr(
        graphs, "run", lambda ids, meta: replays.append(ids.shape[0]) or real_run(ids, meta)
    )
    graphed = run_session(graph_runner, session)
    eager = run_session(eager_runner, session)
    assert replays == [batch] * 3
    agreement = compare(graphed.logits, eager.logits)
    print(f"\n[graph vs eager, batch {batch} in graph {graph_batch}] {agreement.summary()}")
    assert_agree(agreement, GRAPH_ROW_TOL, min_fraction=0.9)
