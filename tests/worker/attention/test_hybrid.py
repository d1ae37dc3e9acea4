"""The `triton+flashinfer` decode backend: which steps go where, and the graph-replay hook."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from glm47.worker.attention.base import AttentionMetadata, MLAWeights, create_backend
from glm47.worker.attention.hybrid import TritonFlashInferBackend


class Recorder:
    """A backend that returns its tag and records the graph-replay plans it was asked for."""

    def __init__(self, tag: float) -> None:
        self.tag = tag
        self.prepared: list[int] = []

    def forward(self, q_nope: torch.Tensor, *rest: object) -> torch.Tensor:
        return torch.full((q_nope.shape[0], 1, 1), self.tag)

    def prepare_graph_replay(self, meta: AttentionMetadata) -> None:
        self.prepared.append(meta.num_seqs)


def _meta(seqs: int, tokens_per_seq: int = 1) -> AttentionMetadata:
    t = seqs * tokens_per_seq
    return AttentionMetadata(
        positions=torch.zeros(t, dtype=torch.long),
        slot_mapping=torch.zeros(t, dtype=torch.long),
        query_start_loc=torch.arange(seqs + 1, dtype=torch.int32) * tokens_per_seq,
        seq_lens=torch.full((seqs,), 8, dtype=torch.int32),
        page_table=torch.zeros((seqs, 1), dtype=torch.int32),
        page_size=16, max_query_len=tokens_per_seq, max_seq_len=8,
        is_decode=tokens_per_seq == 1, short_queries=True,
    )  # fmt: skip


def _run(backend: TritonFlashInferBackend, meta: AttentionMetadata) -> float:
    t = meta.positions.shape[0]
    args = [torch.zeros(t, 2, 4), torch.zeros(t, 2, 2), torch.zeros(t, 4), torch.zeros(t, 2)]
    weights = MLAWeights(w_uk=torch.zeros(2, 4, 4), w_uv=torch.zeros(2, 3, 4))
    out = backend.forward(*args, torch.zeros(16, 6), weights, meta, 1.0)
    return float(out[0, 0, 0])


@pytest.mark.parametrize(
    ("seqs", "tokens_per_seq", "expected"),
    [(1, 1, 1.0), (3, 1, 1.0), (4, 1, 2.0), (9, 1, 2.0), (4, 2, 1.0), (9, 3, 1.0)],
)
def test_decode_steps_from_the_threshold_on_go_to_flashinfer_all_else_to_triton(
    seqs: int, tokens_per_seq: int, expected: float
) -> None:
    small, large = Recorder(1.0), Recorder(2.0)
    backend = TritonFlashInferBackend(small, large, min_large_batch=4)  # type: ignore[arg-type]
    assert _run(backend, _meta(seqs, tokens_per_seq)) == expected


def test_graph_replays_plan_only_the_graphs_flashinfer_serves() -> None:
    small, large = Recorder(1.0), Recorder(2.0)
    backend = TritonFlashInferBackend(small, large, min_large_batch=4)  # type: ignore[arg-type]
    for seqs in (1, 2, 4, 8):
        backend.prepare_graph_replay(_meta(seqs))
    assert large.prepared == [4, 8]
    backend.small = SimpleNamespace(forward=small.forward)  # type: ignore[assignment]
    backend.prepare_graph_replay(_meta(2))  # a backend without the hook is skipped


def test_the_registered_name_builds_triton_below_and_flashinfer_above(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import glm47.worker.attention.flashinfer_backend as fib
    import glm47.worker.attention.hybrid as hybrid

    monkeypatch.setattr(fib, "load_flashinfer_mla", lambda: SimpleNamespace())
    monkeypatch.setattr(hybrid, "FLASHINFER_MIN_BATCH", 7)
    backend = create_backend("triton+flashinfer")
    assert isinstance(backend, TritonFlashInferBackend)
    assert (backend.small.name, backend.large.name, backend.min_large_batch) == (
        "triton",
        "flashinfer",
        7,
    )
    assert backend.supports_cuda_graph and backend.supports_multi_token_cuda_graph
