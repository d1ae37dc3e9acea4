"""The `triton+flashinfer` decode backend: which steps go where."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from glm47.worker.attention.base import AttentionMetadata, MLAWeights, create_backend
from glm47.worker.attention.hybrid import TritonFlashInferBackend


class Tagged:
    """A backend whose output is its tag."""

    def __init__(self, tag: float) -> None:
        self.tag = tag

    def forward(self, q_nope: torch.Tensor, *rest: object) -> torch.Tensor:
        return torch.full((q_nope.shape[0], 1, 1), self.tag)


def _meta(seqs: int, tokens_per_seq: int = 1, context: int = 8) -> AttentionMetadata:
    t = seqs * tokens_per_seq
    return AttentionMetadata(
        positions=torch.zeros(t, dtype=torch.long),
        slot_mapping=torch.zeros(t, dtype=torch.long),
        query_start_loc=torch.arange(seqs + 1, dtype=torch.int32) * tokens_per_seq,
        seq_lens=torch.full((seqs,), context, dtype=torch.int32),
        page_table=torch.zeros((seqs, 1), dtype=torch.int32),
        page_size=16, max_query_len=tokens_per_seq, max_seq_len=context,
        is_decode=tokens_per_seq == 1, short_queries=True, total_seq_len=seqs * context,
    )  # fmt: skip


def _run(backend: TritonFlashInferBackend, meta: AttentionMetadata) -> float:
    t = meta.positions.shape[0]
    args = [torch.zeros(t, 2, 4), torch.zeros(t, 2, 2)]
    weights = MLAWeights(w_uk=torch.zeros(2, 4, 4), w_uv=torch.zeros(2, 3, 4))
    out = backend.forward(*args, torch.zeros(16, 6), weights, meta, 1.0)
    return float(out[0, 0, 0])


@pytest.mark.parametrize(
    ("seqs", "tokens_per_seq", "context", "large"),
    [
        (1, 1, 1000, False),  # enough cached tokens, too few sequences
        (3, 1, 1000, False),
        (4, 1, 24, False),  # enough sequences, too few cached tokens (96)
        (4, 1, 25, True),  # both, just (100 tokens)
        (9, 1, 500, True),
        (4, 2, 500, False),  # several tokens a sequence: always Triton
        (9, 3, 500, False),
    ],
)
def test_decode_steps_over_many_sequences_and_cached_tokens_go_to_flashinfer(
    seqs: int, tokens_per_seq: int, context: int, large: bool
) -> None:
    backend = TritonFlashInferBackend(Tagged(1.0), Tagged(2.0), min_seqs=4, min_kv_tokens=100)  # type: ignore[arg-type]
    meta = _meta(seqs, tokens_per_seq, context)
    assert backend.prefers_large(meta) == large
    assert _run(backend, meta) == (2.0 if large else 1.0)


def test_the_registered_name_builds_triton_and_flashinfer_with_the_module_thresholds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import glm47.worker.attention.flashinfer_backend as fib
    import glm47.worker.attention.hybrid as hybrid

    monkeypatch.setattr(fib, "load_flashinfer_mla", lambda: SimpleNamespace())
    monkeypatch.setattr(hybrid, "FLASHINFER_MIN_SEQS", 7)
    monkeypatch.setattr(hybrid, "FLASHINFER_MIN_KV_TOKENS", 70)
    backend = create_backend("triton+flashinfer")
    assert isinstance(backend, TritonFlashInferBackend)
    assert (backend.small.name, backend.large.name) == ("triton", "flashinfer")
    assert (backend.min_seqs, backend.min_kv_tokens) == (7, 70)
    assert backend.supports_cuda_graph and backend.supports_multi_token_cuda_graph
