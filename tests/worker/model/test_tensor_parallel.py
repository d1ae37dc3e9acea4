"""Tensor parallelism on the CPU: two ranks (processes joined by gloo) each hold half of the tiny
model's heads and intermediate columns; rank 0's logits must be the single-process model's, for
prefill chunks, decode steps and mixed steps over the paged cache, and for fed input ids (only on
rank 0's side, as when the engine runs steps ahead)."""

from __future__ import annotations

import functools
import multiprocessing
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

import glm47.worker.runner as runner_module
from glm47.worker.batch import ScheduledBatch, ScheduledSeq
from glm47.worker.cuda_graph import eager_capturer
from glm47.worker.model.config import ModelConfig
from glm47.worker.model.loader import load_model
from glm47.worker.model.parallel import SINGLE, TensorParallel
from glm47.worker.model.tiny import make_tiny_model
from glm47.worker.runner import ModelRunner
from glm47.worker.tp_worker import (
    Followers,
    StepMirror,
    _FollowerPages,
    _PageLists,
    exit_now_with,
    free_port,
    init_rank,
)

PAGE = 4


def _runner(model_dir: str, tp: TensorParallel, graphs: bool = False) -> ModelRunner:
    """With `graphs`, decode graphs (batch 1, 2, 4) and segment graphs (up to 64 tokens) through
    the eager stand-in of capture: padded replays, each rank choosing its path by itself."""
    if not graphs:
        return ModelRunner(
            ModelConfig.from_dir(model_dir), model_dir, device="cpu", dtype=torch.float32,
            page_size=PAGE, kv_tokens=256, tp=tp,
        )  # fmt: skip
    saved = runner_module.supports_cuda_graph
    runner_module.supports_cuda_graph = lambda backend: True
    try:
        runner = ModelRunner(
            ModelConfig.from_dir(model_dir), model_dir, device="cpu", dtype=torch.float32,
            page_size=PAGE, kv_tokens=256, tp=tp, segment_graph_max_tokens=64,
            segment_capturer=eager_capturer,
        )  # fmt: skip
        runner._graph_capturer = eager_capturer
        runner.capture_decode_graphs([1, 2, 4], max_pages=16)
    finally:
        runner_module.supports_cuda_graph = saved
    assert runner.graphs is not None and runner.segments is not None
    return runner


def _steps() -> list[ScheduledBatch]:
    """Two prompts in chunks, then decode steps, one step mixing a chunk with a decode."""
    a = list(range(3, 30))
    b = [7, 9, 11, 400, 5, 6, 8]
    pages_a, pages_b = [3, 1, 8, 2, 9, 4, 12, 13], [5, 7, 6, 10]
    seq = ScheduledSeq
    return [
        ScheduledBatch([seq("a", a[:20], 0, pages_a, False), seq("b", b, 0, pages_b, True)]),
        ScheduledBatch([seq("a", a[20:], 20, pages_a, True), seq("b", [17], 7, pages_b, True)]),
        ScheduledBatch([seq("a", [21], 27, pages_a, True), seq("b", [31], 8, pages_b, True)]),
        ScheduledBatch([seq("b", [44], 9, pages_b, True)]),
        ScheduledBatch([seq("a", [3], 28, pages_a, True), seq("b", [2], 10, pages_b, True)]),
    ]


@torch.inference_mode()
def _run(runner: ModelRunner, fed: bool) -> list[torch.Tensor]:
    """Each step's logits; with `fed`, the last step's input ids are written on the device after
    the layout (the batch holds placeholders), as the engine's token feed does."""
    out = []
    steps = _steps()
    for i, step in enumerate(steps):
        if fed and i == len(steps) - 1:
            real = [s.token_ids[0] for s in step.seqs]
            for s in step.seqs:
                s.token_ids, s.fed = [0], True
            inputs = runner.prepare(step)
            inputs.input_ids.copy_(torch.tensor(real))
            out.append(runner.forward_sampled(inputs)[1].clone())
        else:
            out.append(runner.run_logits(step))
    return out


def _rank0(model_dir: str, port: int, fed: bool, graphs: bool, results: Any) -> None:
    tp = init_rank(0, 2, "cpu", port)
    runner = _runner(model_dir, tp, graphs)
    mirror = StepMirror(tp)
    runner.mirror = mirror
    try:
        results.put([t.tolist() for t in _run(runner, fed)])
    finally:
        mirror.stop()
        results.close()
        results.join_thread()  # the answer is out before the process ends
        exit_now_with(0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0))


@pytest.mark.parametrize(("fed", "graphs"), [(False, False), (True, False), (True, True)])
def test_two_ranks_give_the_single_process_logits(tiny: str, fed: bool, graphs: bool) -> None:
    expected = _run(_runner(tiny, SINGLE), fed)
    port = free_port()
    build = functools.partial(_runner, tiny, graphs=graphs)
    followers = Followers(build, 2, "cpu", port, "warning")
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    rank0 = ctx.Process(target=_rank0, args=(tiny, port, fed, graphs, results))
    rank0.start()
    try:
        got = results.get(timeout=240)
    finally:
        rank0.join(60)
        followers.stop(None, timeout_s=60)
    assert rank0.exitcode == 0
    assert [p.exitcode for p in followers.procs] == [0]  # it left its loop on `stop`
    assert len(got) == len(expected)
    for step, (mine, ref) in enumerate(zip(got, expected, strict=True)):
        mine_t = torch.tensor(mine)
        assert mine_t.shape == ref.shape, step
        torch.testing.assert_close(mine_t, ref, rtol=1e-4, atol=1e-4, msg=f"step {step}")
        assert torch.equal(mine_t.argmax(-1), ref.argmax(-1)), step


def test_a_split_that_does_not_divide_is_refused(tmp_path: Path) -> None:
    model_dir = make_tiny_model(tmp_path / "m", seed=0)
    with pytest.raises(ValueError, match="num_attention_heads \\(4\\) is not divisible by"):
        _model(str(model_dir), TensorParallel(rank=0, size=3))


def _model(model_dir: str, tp: TensorParallel) -> Any:
    return load_model(
        ModelConfig.from_dir(model_dir), model_dir, device=torch.device("cpu"),
        dtype=torch.float32, tp=tp,
    )  # fmt: skip


def test_each_rank_reads_its_block_of_the_split_tensors(tiny: str) -> None:
    """A rank's q_b_proj, o_proj and expert weights are its rows and columns of the whole ones."""
    whole = _model(tiny, SINGLE)
    for rank in range(2):
        part = _model(tiny, TensorParallel(rank=rank, size=2))
        attn, ref_attn = part.layers[0].self_attn, whole.layers[0].self_attn
        rows = ref_attn.q_b_proj.weight.shape[0] // 2
        assert torch.equal(
            attn.q_b_proj.weight, ref_attn.q_b_proj.weight[rank * rows : (rank + 1) * rows]
        )
        cols = ref_attn.o_proj.weight.shape[1] // 2
        assert torch.equal(
            attn.o_proj.weight, ref_attn.o_proj.weight[:, rank * cols : (rank + 1) * cols]
        )
        assert torch.equal(attn.qkv_a_proj.weight, ref_attn.qkv_a_proj.weight)  # replicated
        moe, ref_moe = part.layers[1].mlp, whole.layers[1].mlp
        inter = ref_moe.w2.shape[2] // 2
        assert torch.equal(moe.w2, ref_moe.w2[:, :, rank * inter : (rank + 1) * inter])
        gate, up = ref_moe.w13.chunk(2, dim=1)
        mine = torch.cat(
            [gate[:, rank * inter : (rank + 1) * inter], up[:, rank * inter : (rank + 1) * inter]],
            dim=1,
        )
        assert torch.equal(moe.w13, mine)


def test_steps_send_only_the_pages_a_running_sequence_gained() -> None:
    """The followers' page lists follow rank 0's: whole when a list is new or replaced, else the
    appended pages, extended into the same list object (so the page tables copy only those)."""
    sent, held = _PageLists(), _FollowerPages()
    a, b = [1, 2], [7]
    seq = ScheduledSeq

    def step(*seqs: ScheduledSeq) -> tuple[list[Any], ScheduledBatch]:
        layout = sent.layout(ScheduledBatch(list(seqs)))
        layout = pickle.loads(pickle.dumps(layout))  # as the broadcast carries it
        return layout, held.batch(layout)

    layout, got = step(seq("a", [5], 0, a, True), seq("b", [6], 0, b, True))
    assert [r[3] for r in layout] == [[1, 2], [7]]
    first_a = got.seqs[0].page_ids
    a.append(3)
    layout, got = step(seq("a", [5], 8, a, True), seq("b", [6], 1, b, True))
    assert [r[3] for r in layout] == [(3,), ()]
    assert got.seqs[0].page_ids is first_a and first_a == [1, 2, 3]
    b = [9, 8]  # b left the batch and came back with a new list
    layout, got = step(seq("b", [6], 0, b, True))
    assert [r[3] for r in layout] == [[9, 8]] and got.seqs[0].page_ids == [9, 8]
    layout, got = step(seq("a", [5], 9, a, True))  # a skipped a step: its list is sent whole
    assert [r[3] for r in layout] == [[1, 2, 3]] and got.seqs[0].page_ids == [1, 2, 3]
    a.append(4)  # room for drafts, taken after the step: the drafting round sends the new page
    encoded = pickle.loads(pickle.dumps(sent.encode("a", a)))
    assert encoded == (4,)
    assert held.decode("a", encoded) is got.seqs[0].page_ids == [1, 2, 3, 4]
