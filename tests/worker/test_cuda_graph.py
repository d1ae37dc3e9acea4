"""Decode graph bookkeeping on the CPU: capture sizes, padding to captured sizes, the static
buffers, and a full replay path with a stand-in capturer that re-runs the model eagerly."""

from __future__ import annotations

import itertools
from functools import partial
from pathlib import Path

import pytest
import torch

import glm47.worker.cuda_graph as cuda_graph_module
import glm47.worker.runner as runner_module
from glm47.worker.attention.base import AttentionMetadata, SplitAttention
from glm47.worker.attention.hybrid import TritonFlashInferBackend
from glm47.worker.attention.torch_backend import TorchMLABackend
from glm47.worker.cuda_graph import (
    DecodeGraphInputs,
    DecodeGraphRunner,
    capture_sizes,
    eager_capturer,
    padded_batch_size,
    supports_cuda_graph,
)
from glm47.worker.model.tiny import make_tiny_model
from glm47.worker.runner import ModelRunner
from glm47.worker.step_inputs import StepInputs
from tests.worker.model.reference import PageAllocator, batch, make_runner, seq


def test_default_ladder_doubles_to_16_then_24_32_then_steps_by_16() -> None:
    sizes = capture_sizes(512)
    assert sizes[:8] == [1, 2, 4, 8, 16, 24, 32, 48]
    assert sizes[-2:] == [496, 512]
    assert all(b - a == 16 for a, b in itertools.pairwise(sizes[6:]))
    assert len(sizes) == 37


def test_the_largest_size_is_always_captured_and_nothing_above_it() -> None:
    assert capture_sizes(20) == [1, 2, 4, 8, 16, 20]
    assert capture_sizes(1) == [1]
    assert capture_sizes(100, [64, 3, 3, 200]) == [3, 64, 100]


def test_invalid_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="graph_max_batch_size"):
        capture_sizes(0)
    with pytest.raises(ValueError, match=">= 1"):
        capture_sizes(8, [0, 4])


@pytest.mark.parametrize(
    ("batch", "padded"), [(1, 1), (3, 4), (4, 4), (17, 24), (33, 48), (512, 512), (513, None)]
)
def test_a_batch_runs_in_the_smallest_graph_that_holds_it(batch: int, padded: int | None) -> None:
    assert padded_batch_size(batch, capture_sizes(512)) == padded


def test_backends_declare_graph_support_or_are_known_by_name() -> None:
    class Declared:
        name = "triton"
        supports_cuda_graph = False

    class Legacy:
        name = "triton"

    class Unknown:
        name = "torch"

    assert not supports_cuda_graph(Declared())
    assert supports_cuda_graph(Legacy())
    assert not supports_cuda_graph(Unknown())


def _decode_meta(seq_lens: list[int], tables: list[list[int]], page_size: int) -> AttentionMetadata:
    pos = [n - 1 for n in seq_lens]
    slots = [
        t[p // page_size] * page_size + p % page_size for t, p in zip(tables, pos, strict=True)
    ]
    return AttentionMetadata(
        positions=torch.tensor(pos),
        slot_mapping=torch.tensor(slots),
        query_start_loc=torch.arange(len(seq_lens) + 1, dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        page_table=torch.tensor(tables, dtype=torch.int32),
        page_size=page_size,
        max_query_len=1,
        max_seq_len=max(seq_lens),
        is_decode=True,
    )


def test_fill_copies_the_rows_and_resets_padding_left_by_a_larger_step() -> None:
    inputs = DecodeGraphInputs(max_batch=8, max_pages=4, page_size=2, device=torch.device("cpu"))
    big = _decode_meta([5, 6, 3, 6], [[1, 2, 3], [4, 5, 6], [7, 8, 0], [9, 10, 11]], 2)
    inputs.fill(torch.tensor([11, 12, 13, 14]), big, 4)
    small = _decode_meta([3, 2], [[12, 13], [14, 0]], 2)
    inputs.fill(torch.tensor([21, 22]), small, 4)
    meta = inputs.meta(4)
    assert inputs.input_ids[:4].tolist() == [21, 22, 0, 0]
    assert meta.positions.tolist() == [2, 1, 0, 0]
    assert meta.slot_mapping.tolist() == [13 * 2, 14 * 2 + 1, 0, 0]  # padding: slot 0 of page 0
    assert meta.seq_lens.tolist() == [3, 2, 1, 1]
    assert meta.page_table[:2, :2].tolist() == [[12, 13], [14, 0]]
    assert meta.page_table[2:, 0].tolist() == [0, 0]  # the only page padding rows read
    assert meta.query_start_loc.tolist() == [0, 1, 2, 3, 4]
    assert (meta.is_decode, meta.max_query_len, meta.num_seqs) == (True, 1, 4)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)


def eager_graphs(runner: ModelRunner, tokens_per_seq: int = 1) -> DecodeGraphRunner:
    """Graphs of 1, 2 and 4 sequences (page size 2) whose replays re-run the model eagerly."""
    graphs = DecodeGraphRunner(
        partial(runner._forward_with, runner.decode_backend),
        runner.decode_backend,
        sizes=[1, 2, 4],
        max_pages=16,
        page_size=2,
        device=runner.device,
        capturer=eager_capturer,
        tokens_per_seq=tokens_per_seq,
    )
    graphs.capture()
    return graphs


def test_padded_replay_gives_the_eager_logits_and_writes_only_real_slots(tiny: Path) -> None:
    """Batch 3 runs in the graph of 4; the model itself stands in for the captured graph."""
    runner = make_runner(tiny, torch.float32, page_size=2)
    with torch.inference_mode():
        assert runner.graphs is None  # never on the CPU
        graphs = eager_graphs(runner)
        alloc = PageAllocator(runner.num_pages, 2)
        prompts = {"a": [5, 6, 7], "b": [30, 31, 32, 33, 34], "c": [100]}
        runner.run_logits(batch(*[seq(alloc, r, p, 0) for r, p in prompts.items()]))
        step = batch(*[seq(alloc, r, [40 + i], len(p)) for i, (r, p) in enumerate(prompts.items())])
        inputs = runner.prepare(step)
        assert graphs.can_run(inputs.input_ids, inputs.meta)
        before = runner.kv_cache.clone()
        eager = runner.model.compute_logits(runner.forward(inputs))
        eager_cache, runner.kv_cache[:] = runner.kv_cache.clone(), before
        hidden = graphs.run(inputs.input_ids, inputs.meta)  # 3 rows padded to 4
        assert hidden.shape[0] == 3
        torch.testing.assert_close(runner.model.compute_logits(hidden), eager, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(runner.kv_cache, eager_cache, atol=1e-5, rtol=1e-5)
        changed = (runner.kv_cache != before).any(dim=2).any(dim=0).nonzero().flatten().tolist()
        assert [s for s in changed if s >= 2] == sorted(inputs.meta.slot_mapping.tolist())
        assert set(changed) - set(inputs.meta.slot_mapping.tolist()) <= {0}  # padding: page 0


def test_steps_that_do_not_fit_are_left_to_the_eager_path(tiny: Path) -> None:
    runner = make_runner(tiny, torch.float32, page_size=2)
    graphs = DecodeGraphRunner(
        partial(runner._forward_with, runner.decode_backend),
        runner.decode_backend,
        sizes=[1, 2],
        max_pages=2,
        page_size=2,
        device=runner.device,
        capturer=eager_capturer,
    )
    graphs.capture()
    alloc = PageAllocator(runner.num_pages, 2)
    three = runner.prepare(batch(*[seq(alloc, f"r{i}", [1], 0) for i in range(3)]))
    assert not graphs.can_run(three.input_ids, three.meta)
    with pytest.raises(ValueError, match="no captured decode graph fits a batch of 3"):
        graphs.run(three.input_ids, three.meta)
    long = runner.prepare(batch(seq(alloc, "long", [1], 6)))  # 7 tokens: 4 pages > 2
    assert not graphs.can_run(long.input_ids, long.meta)
    prefill = runner.prepare(batch(seq(alloc, "p", [1, 2], 0)))
    assert not graphs.can_run(prefill.input_ids, prefill.meta)


def test_verification_graphs_pad_whole_sequences_of_q_tokens() -> None:
    inputs = DecodeGraphInputs(
        max_batch=4, max_pages=4, page_size=2, device=torch.device("cpu"), tokens_per_seq=3
    )
    meta = inputs.meta(4)
    assert (meta.is_decode, meta.short_queries, meta.max_query_len) == (False, True, 3)
    assert meta.query_start_loc.tolist() == [0, 3, 6, 9, 12]
    inputs.page_table.fill_(9)  # pages of an earlier, larger step
    step = AttentionMetadata(
        positions=torch.tensor([4, 5, 6]),
        slot_mapping=torch.tensor([10, 11, 14]),
        query_start_loc=torch.tensor([0, 3], dtype=torch.int32),
        seq_lens=torch.tensor([7], dtype=torch.int32),
        page_table=torch.tensor([[3, 4, 5, 7]], dtype=torch.int32),
        page_size=2,
        max_query_len=3,
        max_seq_len=7,
        is_decode=False,
        short_queries=True,
    )
    inputs.fill(torch.tensor([1, 2, 3]), step, 2)
    meta = inputs.meta(2)
    assert inputs.input_ids[:6].tolist() == [1, 2, 3, 0, 0, 0]
    assert meta.positions.tolist() == [4, 5, 6, 0, 1, 2]
    # the padded sequence writes positions 0..2 into page 0 (slots 0, 1, 0) and reads them back
    assert meta.slot_mapping.tolist() == [10, 11, 14, 0, 1, 0]
    assert meta.seq_lens.tolist() == [7, 3]
    assert meta.page_table[1, :2].tolist() == [0, 0]  # the two pages positions 0..2 fall in


def test_verification_steps_replay_their_graph_with_the_eager_logits(tiny: Path) -> None:
    """Three sequences verifying two drafts each run in the 3-token graph of 4 sequences."""
    runner = make_runner(tiny, torch.float32, page_size=2)
    with torch.inference_mode():
        graphs = eager_graphs(runner, tokens_per_seq=3)
        alloc = PageAllocator(runner.num_pages, 2)
        prompts = {"a": [5, 6, 7], "b": [30, 31, 32, 33, 34], "c": [100]}
        runner.run_logits(batch(*[seq(alloc, r, p, 0) for r, p in prompts.items()]))
        seqs = []
        for i, (rid, prompt) in enumerate(prompts.items()):
            step = seq(alloc, rid, [40 + i, 50 + i, 60 + i], len(prompt))
            step.draft_ids = [50 + i, 60 + i]
            seqs.append(step)
        inputs = runner.prepare(batch(*seqs))
        assert graphs.can_run(inputs.input_ids, inputs.meta)
        before = runner.kv_cache.clone()
        eager = runner.model.compute_logits(runner.forward(inputs)[inputs.sample_rows])
        eager_cache, runner.kv_cache[:] = runner.kv_cache.clone(), before
        hidden = graphs.run(inputs.input_ids, inputs.meta)  # 3 sequences padded to 4
        assert hidden.shape[0] == 9
        logits = runner.model.compute_logits(hidden[inputs.sample_rows])
        torch.testing.assert_close(logits, eager, atol=1e-5, rtol=1e-5)
        # pages past the padding page hold what the eager step wrote
        torch.testing.assert_close(runner.kv_cache[:, 2:], eager_cache[:, 2:], atol=1e-5, rtol=1e-5)
        changed = (runner.kv_cache != before).any(dim=2).any(dim=0).nonzero().flatten().tolist()
        assert set(changed) - set(inputs.meta.slot_mapping.tolist()) <= {0, 1}  # padding: page 0
        # A step whose sequences verify different numbers of tokens is not this graph's.
        alloc2 = PageAllocator(runner.num_pages, 2)
        mixed = runner.prepare(batch(seq(alloc2, "x", [1, 2, 3], 0), seq(alloc2, "y", [4, 5], 0)))
        assert not graphs.can_run(mixed.input_ids, mixed.meta)
        decode = runner.prepare(batch(seq(alloc2, "z", [7], 0)))
        assert not graphs.can_run(decode.input_ids, decode.meta)


def test_small_decode_graphs_give_the_logits_of_their_rows(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Graphs up to LOGITS_MAX_BATCH (2 here) compute the logits: a step whose rows are all
    sampled takes them from the replay; a step with an unsampled row, or in a larger graph,
    gathers its sampled rows; either way the eager step's logits."""
    monkeypatch.setattr(cuda_graph_module, "LOGITS_MAX_BATCH", 2)
    monkeypatch.setattr(runner_module, "supports_cuda_graph", lambda backend: True)
    runner = make_runner(tiny, torch.float32, page_size=2)
    runner._graph_capturer = eager_capturer
    runner.capture_decode_graphs([1, 2, 4], max_pages=16)
    graphs = runner.graphs
    assert graphs is not None
    alloc = PageAllocator(runner.num_pages, 2)
    prompts = {"a": [5, 6, 7], "b": [30, 31, 32, 33, 34], "c": [100]}
    lm_head_rows: list[int] = []
    real_logits = runner.model.compute_logits

    def eager_logits(inputs: StepInputs) -> torch.Tensor:
        saved, runner.graphs, cache = runner.graphs, None, runner.kv_cache.clone()
        try:
            return runner.forward_sampled(inputs)[1]
        finally:
            runner.graphs, runner.kv_cache[:] = saved, cache

    with torch.inference_mode():
        runner.run_logits(batch(*[seq(alloc, r, p, 0) for r, p in prompts.items()]))
        monkeypatch.setattr(
            runner.model,
            "compute_logits",
            lambda h: lm_head_rows.append(h.shape[0]) or real_logits(h),
        )
        cases = [  # (rids, sampled, graph logits used)
            (["a", "b"], [True, True], True),
            (["c"], [True], True),
            (["a", "b"], [True, False], False),  # b's row is not sampled
            (["a", "b", "c"], [True, True, True], False),  # the graph of 4 leaves them
        ]
        for rids, sampled, from_graph in cases:
            step = batch(
                *[
                    seq(alloc, r, [9], len(prompts[r]), sample=s)
                    for r, s in zip(rids, sampled, strict=True)
                ]
            )
            inputs = runner.prepare(step)
            expected = eager_logits(inputs)
            lm_head_rows.clear()
            hidden, logits = runner.forward_sampled(inputs)
            assert hidden.shape[0] == len(rids)
            assert (graphs.last_logits is not None) == (len(rids) <= 2)
            assert lm_head_rows == ([] if from_graph else [sum(sampled)])
            torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_logits_from_a_graph_outlive_its_next_replay_where_a_caller_keeps_them(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A graph's logits are its output tensor, overwritten by its next replay (the stand-in
    copies into one tensor as a CUDA graph writes one): `run_logits` hands out its own copy."""
    monkeypatch.setattr(runner_module, "supports_cuda_graph", lambda backend: True)
    runner = make_runner(tiny, torch.float32, page_size=2)
    runner._graph_capturer = eager_capturer
    runner.capture_decode_graphs([1, 2], max_pages=16)
    graphs = runner.graphs
    assert graphs is not None
    alloc = PageAllocator(runner.num_pages, 2)
    with torch.inference_mode():
        runner.run_logits(batch(seq(alloc, "a", [5, 6, 7], 0), seq(alloc, "b", [8, 9], 0)))
        first = runner.run_logits(batch(seq(alloc, "a", [11], 3)))
        kept = first.clone()
        view = graphs.last_logits
        assert view is not None
        second = runner.run_logits(batch(seq(alloc, "b", [12], 2)))
        assert graphs.last_logits is not None
        assert graphs.last_logits.data_ptr() == view.data_ptr()  # one output tensor
        assert not torch.equal(first, second)
        torch.testing.assert_close(first, kept, atol=0, rtol=0)


def test_a_dispatching_decode_backend_gets_a_graph_set_per_part_and_each_step_the_right_one(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`triton+flashinfer`'s runner captures a graph set per part (the large part's from its
    `min_seqs` up) and each decode step replays the set `prefers_large` names (torch backends
    stand in for both parts; the eager capturer re-runs the model for a replay)."""
    runner = make_runner(tiny, torch.float32, page_size=2)
    small, large = TorchMLABackend(), TorchMLABackend()
    runner.decode_backend = TritonFlashInferBackend(small, large, min_seqs=2, min_kv_tokens=10)  # type: ignore[arg-type]
    runner._graph_capturer = eager_capturer
    # the torch backends are not capturable; the eager capturer does not need them to be
    monkeypatch.setattr(runner_module, "supports_cuda_graph", lambda backend: True)
    runner.capture_decode_graphs([1, 2, 4], max_pages=16)
    assert runner.graphs is not None and runner.large_graphs is not None
    assert (runner.graphs.sizes, runner.large_graphs.sizes) == ([1, 2, 4], [2, 4])
    replays: list[str] = []
    for name, graphs in (("small", runner.graphs), ("large", runner.large_graphs)):
        real = graphs.run
        graphs.run = lambda ids, meta, n=name, r=real: replays.append(n) or r(ids, meta)  # type: ignore[method-assign]
    alloc = PageAllocator(runner.num_pages, 2)
    prompts = {"a": [5, 6, 7], "b": [30, 31, 32, 33, 34], "c": [100]}
    with torch.inference_mode():
        runner.run_logits(batch(*[seq(alloc, r, p, 0) for r, p in prompts.items()]))
        steps = [
            (["a", "b", "c"], "large"),  # 3 sequences over 4 + 6 + 2 = 12 cached tokens
            (["a", "c"], "small"),  # 2 sequences over 5 + 3 = 8 tokens: too few
            (["b"], "small"),  # one sequence: too few
        ]
        lengths = {r: len(p) for r, p in prompts.items()}
        for rids, expected in steps:
            step = batch(*[seq(alloc, r, [40], lengths[r]) for r in rids])
            lengths.update({r: lengths[r] + 1 for r in rids})
            inputs = runner.prepare(step)
            graphed = runner.forward(inputs)
            assert replays.pop() == expected and not replays
            eager = runner.model(
                inputs.input_ids, inputs.meta.positions, runner._context(inputs.meta)
            )
            torch.testing.assert_close(graphed, eager, atol=1e-5, rtol=1e-5)


def test_mtp_draft_passes_take_the_small_part_of_a_dispatching_decode_backend(tiny: Path) -> None:
    """The MTP layer's one-layer passes go to the small part even where the rule would pick the
    large one (its plan per step is not worth one layer); other steps follow the rule."""
    runner = make_runner(tiny, torch.float32, page_size=2)
    small, large = TorchMLABackend(), TorchMLABackend()
    dispatching = TritonFlashInferBackend(small, large, min_seqs=1, min_kv_tokens=1)  # type: ignore[arg-type]
    runner.decode_backend = dispatching
    alloc = PageAllocator(runner.num_pages, 2)
    decode = runner.prepare(batch(seq(alloc, "a", [5], 3), seq(alloc, "b", [6], 4))).meta
    assert dispatching.prefers_large(decode)
    assert runner._context(decode, draft=True).backend is small
    assert runner._context(decode).backend is dispatching
    extend = runner.prepare(batch(seq(alloc, "c", [7, 8, 9], 0))).meta
    split = runner._context(extend, draft=True).backend
    assert isinstance(split, SplitAttention) and split.decode is small
