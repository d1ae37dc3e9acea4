"""A mixed step's attention: decoding rows through the decode backend, prompt chunks through the
prefill backend, built from the step builder's metadata, against one backend over the whole step."""

from __future__ import annotations

import torch

from glm47.worker.attention.base import AttentionMetadata, MLAWeights, SplitAttention
from glm47.worker.attention.fa3_backend import Fa3MLABackend
from glm47.worker.attention.torch_backend import TorchMLABackend
from glm47.worker.batch import ScheduledBatch, ScheduledSeq
from glm47.worker.step_inputs import StepInputBuilder
from tests.worker.attention.test_fa3_backend import varlen_ref

H, NOPE, ROPE, RANK, V = 3, 8, 4, 16, 6
PAGE = 4


class Recording:
    """A backend that remembers the rows and metadata it was given."""

    def __init__(self, inner: TorchMLABackend | Fa3MLABackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls: list[tuple[int, AttentionMetadata]] = []

    def forward(self, q_nope, q_rope, kv_cache, weights, meta, scale):  # type: ignore[no-untyped-def]
        self.calls.append((q_nope.shape[0], meta))
        return self.inner.forward(q_nope, q_rope, kv_cache, weights, meta, scale)


def test_mixed_step_splits_into_decode_and_prefill_backends() -> None:
    torch.manual_seed(0)
    # three decoding sequences and one verifying three drafts first (as the scheduler orders
    # them), then a fresh prompt, a chunk after a cached prefix, and a one-token chunk that is not
    # among the leading rows
    starts, news = [9, 3, 14, 11, 0, 6, 5], [1, 1, 1, 4, 12, 10, 1]
    pages, seqs, first = [], [], 1
    for i, (start, n) in enumerate(zip(starts, news, strict=True)):
        count = -(-(start + n) // PAGE)
        pages.append(list(range(first, first + count)))
        first += count
        seqs.append(ScheduledSeq(f"s{i}", [7] * n, start, pages[-1], True))
    inputs = StepInputBuilder(PAGE, torch.device("cpu")).build(ScheduledBatch(seqs))
    meta = inputs.meta
    assert meta.parts is not None and meta.parts[0].num_seqs == 4

    tokens = sum(news)
    cache = torch.randn(first * PAGE, RANK + ROPE)
    cache[:PAGE] = 0
    kv_b = torch.randn(H, NOPE + V, RANK) * 0.3
    weights = MLAWeights(w_uk=kv_b[:, :NOPE], w_uv=kv_b[:, NOPE:], w_kv=kv_b)
    q_nope, q_rope = torch.randn(tokens, H, NOPE), torch.randn(tokens, H, ROPE)
    cache[meta.slot_mapping] = torch.randn(tokens, RANK + ROPE)  # the layer's write, every row

    decode = Recording(TorchMLABackend())
    prefill = Recording(Fa3MLABackend(attend=varlen_ref))
    before = cache.clone()
    got = SplitAttention(decode, prefill).forward(q_nope, q_rope, cache, weights, meta, 0.25)
    whole = TorchMLABackend().forward(q_nope, q_rope, cache, weights, meta, 0.25)

    torch.testing.assert_close(got, whole, atol=1e-5, rtol=1e-5)
    assert torch.equal(cache, before)  # the parts only read the cache
    assert [(rows, m.is_decode) for rows, m in decode.calls] == [(7, False)]
    assert [(rows, m.is_decode) for rows, m in prefill.calls] == [(tokens - 7, False)]


def run_split(seqs: list[ScheduledSeq]) -> tuple[Recording, Recording]:
    meta = StepInputBuilder(PAGE, torch.device("cpu")).build(ScheduledBatch(seqs)).meta
    assert meta.parts is None
    decode, prefill = Recording(TorchMLABackend()), Recording(TorchMLABackend())
    tokens = sum(len(s.token_ids) for s in seqs)
    cache = torch.zeros(16 * PAGE, RANK + ROPE)
    kv_b = torch.randn(H, NOPE + V, RANK)
    weights = MLAWeights(w_uk=kv_b[:, :NOPE], w_uv=kv_b[:, NOPE:])
    args = (torch.randn(tokens, H, NOPE), torch.randn(tokens, H, ROPE))
    SplitAttention(decode, prefill).forward(*args, cache, weights, meta, 0.3)
    return decode, prefill


def test_steps_without_parts_go_to_one_backend() -> None:
    # a long prompt first: nothing short leads, the prefill backend takes the step
    decode, prefill = run_split(
        [ScheduledSeq("a", list(range(12)), 0, [1, 2, 3], True),
         ScheduledSeq("b", [4], 2, [4], True)]
    )  # fmt: skip
    assert decode.calls == [] and len(prefill.calls) == 1
    # short sequences only (decoding and verifying drafts): the decode backend takes it
    decode, prefill = run_split(
        [ScheduledSeq("a", [1, 2, 3], 5, [1, 2], True), ScheduledSeq("b", [4], 2, [4], True)]
    )
    assert len(decode.calls) == 1 and prefill.calls == []
    assert decode.calls[0][1].short_queries and not decode.calls[0][1].is_decode
