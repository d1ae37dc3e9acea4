"""Tensor parallelism on the GPU at the real layer widths: two ranks, each with half of the heads
(10) and of every expert's intermediate columns (768), against transformers as in
test_model_parity_gpu. Both ranks share the one GPU, so their collectives go through gloo and host
memory (NCCL wants a GPU a rank) and the steps run eagerly; the kernels run at the per-rank
widths the `--tp 2` server gives them."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import torch

from glm47.worker.tp_worker import (
    StepMirror,
    exit_now_with,
    follow_and_exit,
    free_port,
    init_rank,
)
from tests.gpu.conftest import Checkpoint
from tests.gpu.harness import (
    SessionResult,
    assert_agree,
    compare,
    load_runner,
    reference_logits,
    run_session,
)
from tests.gpu.test_model_parity_gpu import ROW_TOL, SESSION, SPLIT

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _rank(rank: int, path: str, port: int, out: str) -> None:
    tp = init_rank(rank, 2, "cuda:0", port, backend="gloo")
    runner = load_runner(
        Path(path), torch.device("cuda:0"), prefill_backend="triton", decode_backend="triton",
        disable_cuda_graph=True, tp=tp,
    )  # fmt: skip
    if rank > 0:
        follow_and_exit(runner, tp)
    mirror = StepMirror(tp)
    runner.mirror = mirror
    try:
        result = run_session(runner, SESSION, split=SPLIT)
        logits = [t.cpu() for t in result.logits]
        torch.save({"logits": logits, "contexts": result.contexts}, out)
    finally:
        mirror.stop()
        exit_now_with(0)


def test_two_ranks_match_transformers(checkpoint: Checkpoint, tmp_path: Path) -> None:
    out = tmp_path / "tp.pt"
    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_rank, args=(rank, str(checkpoint[0]), port, str(out)))
        for rank in range(2)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(600)
    assert [p.exitcode for p in procs] == [0, 0]
    data = torch.load(out)
    result = SessionResult(data["logits"], data["contexts"])
    agreement = compare(result.logits, reference_logits(checkpoint[1], result), near=2 * ROW_TOL)
    print(f"\n[tp 2, triton eager] vs transformers fp32: {agreement.summary()}")
    assert_agree(agreement, ROW_TOL)
