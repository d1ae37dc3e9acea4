"""The worker on the GPU against transformers' Glm4MoeLiteForCausalLM (fp32 on the same bf16
weights): real layer widths, 3 layers, 4096-token vocabulary, bf16. A session prefills six
prompts (one of them in two chunks, the second chunk batched with the others' decode tokens) and
then decodes four teacher-forced tokens."""

from __future__ import annotations

import pytest
import torch

import glm47.worker.attention.hybrid as hybrid
from glm47.worker.attention.select import resolve_backends, unavailable_reason
from glm47.worker.attention.triton_backend import TritonMLABackend
from glm47.worker.runner import ModelRunner
from tests.gpu.conftest import Checkpoint
from tests.gpu.harness import (
    Session,
    assert_agree,
    compare,
    load_runner,
    reference_logits,
    run_session,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ROW_TOL = 0.05  # max |ours - ref| / max |ref| per row; a wrong kernel gives O(1)
SESSION = Session.random([150, 60, 33, 97, 12, 201], steps=4, vocab=4096, seed=0)
SPLIT = 100


def _check(name: str, runner: ModelRunner, checkpoint: Checkpoint) -> None:
    result = run_session(runner, SESSION, split=SPLIT)
    agreement = compare(result.logits, reference_logits(checkpoint[1], result), near=2 * ROW_TOL)
    print(f"\n[{name}] vs transformers fp32: {agreement.summary()}")
    assert_agree(agreement, ROW_TOL)


def test_triton_eager_matches_transformers(
    eager_runner: ModelRunner, checkpoint: Checkpoint
) -> None:
    assert eager_runner.graphs is None
    _check("triton eager", eager_runner, checkpoint)


def test_triton_with_decode_graphs_matches_transformers(
    graph_runner: ModelRunner, checkpoint: Checkpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    graphs = graph_runner.graphs
    assert graphs is not None, "decode CUDA graphs were not captured"
    replays = []
    real_run = graphs.run
    monkeypatch.setattr(graphs, "run", lambda ids, meta: replays.append(1) or real_run(ids, meta))
    _check("triton graphed", graph_runner, checkpoint)
    assert len(replays) == len(SESSION.forced) - 1  # every all-decode step; step 1 is an extend


def test_triton_expanded_prefill_matches_transformers(
    checkpoint: Checkpoint, cuda: torch.device
) -> None:
    """The Triton backend's expanded form (kernels/varlen_attention) on every prefill step, the
    split prompt's second chunk (an extend after a cached prefix) among them."""
    runner = load_runner(
        checkpoint[0], cuda, prefill_backend="triton", decode_backend="triton",
        disable_cuda_graph=True,
    )  # fmt: skip
    runner.prefill_backend = TritonMLABackend(prefill_form="expanded")
    _check("triton expanded prefill + triton decode", runner, checkpoint)


def test_fa3_prefill_matches_transformers(checkpoint: Checkpoint, cuda: torch.device) -> None:
    reason = unavailable_reason("fa3", cuda)
    if reason is not None:
        pytest.skip(reason)
    assert resolve_backends("auto", "auto", cuda)[0] == "fa3"
    runner = load_runner(
        checkpoint[0], cuda, prefill_backend="fa3", decode_backend="triton", disable_cuda_graph=True
    )
    _check("fa3 prefill + triton decode", runner, checkpoint)


@pytest.mark.parametrize("graphed", [False, True], ids=["eager", "graphed"])
def test_flashinfer_decode_matches_transformers(
    graphed: bool, checkpoint: Checkpoint, cuda: torch.device
) -> None:
    reason = unavailable_reason("flashinfer", cuda)
    if reason is not None:
        pytest.skip(reason)
    runner = load_runner(
        checkpoint[0],
        cuda,
        prefill_backend="triton",
        decode_backend="flashinfer",
        disable_cuda_graph=not graphed,
        graph_max_batch_size=8,
    )
    assert (runner.graphs is not None) == graphed, "decode CUDA graphs captured or not as asked"
    name = "triton prefill + flashinfer decode" + (", graphed" if graphed else "")
    _check(name, runner, checkpoint)


@pytest.mark.parametrize(("min_kv_tokens", "side"), [(1, "flashinfer"), (1 << 30, "triton")])
def test_triton_below_and_flashinfer_above_the_thresholds_match_transformers(
    min_kv_tokens: int,
    side: str,
    checkpoint: Checkpoint,
    cuda: torch.device,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`triton+flashinfer`, graphed, its sequence threshold at 4: the session's decode steps (six
    sequences, the graphs of 8) replay FlashInfer's graph set when the token threshold is low and
    Triton's when it is out of reach."""
    reason = unavailable_reason("triton+flashinfer", cuda)
    if reason is not None:
        pytest.skip(reason)
    monkeypatch.setattr(hybrid, "FLASHINFER_MIN_SEQS", 4)
    monkeypatch.setattr(hybrid, "FLASHINFER_MIN_KV_TOKENS", min_kv_tokens)
    runner = load_runner(
        checkpoint[0],
        cuda,
        prefill_backend="triton",
        decode_backend="triton+flashinfer",
        graph_max_batch_size=8,
    )
    assert isinstance(runner.decode_backend, hybrid.TritonFlashInferBackend)
    assert runner.graphs is not None and runner.large_graphs is not None
    replays: list[str] = []
    for name, graphs in (("triton", runner.graphs), ("flashinfer", runner.large_graphs)):
        real = graphs.run
        monkeypatch.setattr(
            graphs, "run", lambda ids, meta, n=name, r=real: replays.append(n) or r(ids, meta)
        )
    _check(f"triton+flashinfer decode, {side} graphs", runner, checkpoint)
    assert replays == [side] * (len(SESSION.forced) - 1)
