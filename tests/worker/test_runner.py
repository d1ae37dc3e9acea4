"""ModelRunner: batch layout, KV pool, sampling hand-off and input validation (tiny model, CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from glm47.worker.batch import ScheduledBatch, ScheduledSeq
from glm47.worker.model.config import ModelConfig
from glm47.worker.model.layers.experts import registered_experts_backends
from glm47.worker.model.tiny import make_tiny_model
from glm47.worker.runner import (
    ModelRunner,
    import_optional_backends,
    resolve_experts_backend,
)
from tests.worker.model.reference import GreedySampler, PageAllocator, batch, make_runner, seq


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)


def test_kv_pool_has_a_layer_per_decoder_layer_plus_mtp(tiny: Path) -> None:
    runner = make_runner(tiny, torch.bfloat16, page_size=8, kv_tokens=100)
    cfg = ModelConfig.from_dir(tiny)
    assert runner.num_pages == 13 + 1  # ceil(100 / 8) pages plus the padding page
    assert runner.page_size == 8
    assert runner.kv_cache.shape == (cfg.num_hidden_layers + 1, 14 * 8, cfg.kv_cache_dim)
    assert runner.kv_cache.dtype == torch.bfloat16


def test_metadata_follows_the_page_tables(tiny: Path) -> None:
    runner = make_runner(tiny, torch.float32, page_size=2)
    a = ScheduledSeq("a", [11, 12], start_pos=3, page_ids=[5, 7, 2], sample=True)
    b = ScheduledSeq("b", [21, 22, 23], start_pos=0, page_ids=[4, 6, 9], sample=False)
    inputs = runner.prepare(ScheduledBatch([a, b]))
    meta = inputs.meta
    assert inputs.input_ids.tolist() == [11, 12, 21, 22, 23]
    assert meta.positions.tolist() == [3, 4, 0, 1, 2]
    assert meta.slot_mapping.tolist() == [7 * 2 + 1, 2 * 2, 4 * 2, 4 * 2 + 1, 6 * 2]
    assert meta.query_start_loc.tolist() == [0, 2, 5]
    assert meta.seq_lens.tolist() == [5, 3]
    assert meta.page_table.tolist() == [[5, 7, 2], [4, 6, 0]]  # only the pages in use
    assert (meta.max_query_len, meta.max_seq_len, meta.is_decode) == (3, 5, False)
    assert inputs.sample_rows.tolist() == [1]
    assert [s.rid for s in inputs.sample_seqs] == ["a"]
    decode = runner.prepare(ScheduledBatch([ScheduledSeq("a", [13], 5, [5, 7, 2], True)]))
    assert decode.meta.is_decode and decode.meta.slot_mapping.tolist() == [2 * 2 + 1]


@pytest.mark.parametrize("page_size", [1, 4])
def test_run_samples_exactly_the_sequences_that_ask(tiny: Path, page_size: int) -> None:
    runner = make_runner(tiny, torch.float32, page_size=page_size)
    alloc = PageAllocator(runner.num_pages, page_size)
    sampler = GreedySampler()
    prompts = {"x": [5, 6, 7, 8, 9], "y": [30, 31], "z": [100, 200, 300, 400]}
    chunk = seq(alloc, "z", prompts["z"][:3], 0, sample=False)
    first = batch(seq(alloc, "x", prompts["x"], 0), chunk, seq(alloc, "y", prompts["y"], 0))
    out = runner.run(first, sampler)
    assert [s.rid for s in out.samples] == ["x", "y"]
    assert (
        runner.run(batch(seq(alloc, "z", prompts["z"][:3], 0, sample=False)), sampler).samples == []
    )
    # greedy continuation: the sampled ids are the argmax of the logits run_logits returns
    nxt = batch(
        seq(alloc, "x", [out.samples[0].token_id], 5),
        seq(alloc, "z", prompts["z"][3:], 3),
    )
    logits = runner.run_logits(nxt)
    again = runner.run(nxt, sampler)
    assert [s.token_id for s in again.samples] == logits.argmax(-1).tolist()


def test_invalid_batches_and_settings_raise(tiny: Path) -> None:
    runner = make_runner(tiny, torch.float32, page_size=4)
    with pytest.raises(ValueError, match="pages"):
        runner.prepare(ScheduledBatch([ScheduledSeq("a", [1] * 5, 4, [1, 2], True)]))
    with pytest.raises(ValueError, match="no tokens"):
        runner.prepare(ScheduledBatch([ScheduledSeq("a", [], 0, [1], True)]))
    with pytest.raises(ValueError, match="empty"):
        runner.prepare(ScheduledBatch([]))
    cfg = ModelConfig.from_dir(tiny)
    with pytest.raises(ValueError, match="power of two"):
        ModelRunner(cfg, tiny, page_size=3, kv_tokens=64)
    with pytest.raises(ValueError, match="num_pages or kv_tokens"):
        ModelRunner(cfg, tiny, page_size=4)
    with pytest.raises(ValueError, match="unknown attention backend"):
        ModelRunner(cfg, tiny, page_size=4, kv_tokens=64, decode_backend="nope")


def test_step_inputs_live_in_buffers_reused_across_steps(tiny: Path) -> None:
    runner = make_runner(tiny, torch.float32, page_size=4)
    first = runner.prepare(ScheduledBatch([ScheduledSeq("a", [1, 2, 3], 0, [3], True)]))
    ptr = first.meta.slot_mapping.data_ptr()
    second = runner.prepare(ScheduledBatch([ScheduledSeq("a", [4], 3, [3], True)]))
    assert second.meta.slot_mapping.data_ptr() == ptr
    assert second.meta.slot_mapping.tolist() == [3 * 4 + 3]


def test_auto_experts_backend_resolves_per_device() -> None:
    import_optional_backends()
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_experts_backend("auto", cpu) == "torch"
    expected = "triton" if "triton" in registered_experts_backends() else "torch"
    assert resolve_experts_backend("auto", gpu) == expected
    assert resolve_experts_backend("torch", gpu) == "torch"


def test_a_replaced_prefill_backend_takes_the_prompt_chunks(tiny: Path) -> None:
    """Swapping `runner.prefill_backend` (as the model benchmark does per backend) must change
    which backend attends a prompt chunk; the mixed-step splitter follows the current pair."""
    runner = make_runner(tiny, torch.float32, page_size=4)
    calls: list[int] = []
    inner = runner.prefill_backend

    class Recording:
        name = "recording"

        def forward(self, q_nope, *args, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(int(q_nope.shape[0]))
            return inner.forward(q_nope, *args, **kwargs)

    runner.prefill_backend = Recording()  # type: ignore[assignment]
    chunk = ScheduledSeq("p", list(range(3, 23)), 0, [1, 2, 3, 4, 5], sample=True)
    runner.forward(runner.prepare(ScheduledBatch([chunk])))
    assert calls == [20] * runner.cfg.num_hidden_layers
