"""Steps run through the segment graphs (here with a capturer that re-runs each segment, as CUDA
graphs cannot run on the CPU) give the logits of the plain forward pass: prompt, mixed and decode
steps, padded to the captured sizes, and steps too large for them fall back to the plain pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from glm47.worker.cuda_graph import eager_capturer
from glm47.worker.runner import ModelRunner
from glm47.worker.segment_graph import segment_sizes
from tests.worker.model.reference import (
    PageAllocator,
    batch,
    make_hf_model,
    make_runner,
    save_hf_model,
    seq,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = make_hf_model(seed=11, dtype=torch.float32)
    return save_hf_model(model, tmp_path_factory.mktemp("segments"))


def runner(path: Path, segments: int, moe_backend: str = "triton") -> ModelRunner:
    """Triton experts by default: capturable (under the Triton interpreter here)."""
    return make_runner(
        path,
        torch.float32,
        page_size=4,
        moe_backend=moe_backend,
        segment_graph_max_tokens=segments,
        segment_capturer=eager_capturer if segments else None,
    )


# (rid, tokens, start) per step: two prompts; decodes with a new prompt (mixed); decodes only; a
# step of 50 tokens, above the largest captured size (40).
STEPS: list[list[tuple[str, list[int], int]]] = [
    [("a", [3, 17, 42, 8, 91, 5, 60, 22, 13], 0), ("b", [7, 7, 30, 2], 0)],
    [("a", [11], 9), ("b", [12], 4), ("c", list(range(20, 40)), 0)],
    [("a", [50], 10), ("b", [4], 5), ("c", [33], 20)],
    [("d", [(i * 7) % 90 + 2 for i in range(50)], 0)],
]


def run_steps(r: ModelRunner) -> list[torch.Tensor]:
    alloc = PageAllocator(r.num_pages, r.page_size, seed=4)
    return [r.run_logits(batch(*(seq(alloc, *s) for s in step))) for step in STEPS]


def test_segment_graphs_give_the_plain_logits(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    graphed = runner(model_dir, segments=40)
    assert graphed.segments is not None and graphed.segments.sizes == [16, 32, 40]
    served: list[int] = []
    real_run = graphed.segments.run
    monkeypatch.setattr(
        graphed.segments, "run", lambda ids, ctx: served.append(ids.shape[0]) or real_run(ids, ctx)
    )
    got = run_steps(graphed)
    want = run_steps(runner(model_dir, segments=0))
    assert served == [13, 22, 3]  # the 50-token step ran the plain forward pass
    for step, (a, b) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"step {step}")


def test_padding_rows_do_not_change_later_steps(model_dir: Path) -> None:
    """A small step after a large one of the same size class reads stale padding rows: its
    logits still equal the plain pass."""
    graphed = runner(model_dir, segments=32)
    plain = runner(model_dir, segments=0)
    alloc_g = PageAllocator(graphed.num_pages, 4, seed=9)
    alloc_p = PageAllocator(plain.num_pages, 4, seed=9)
    for rid, tokens in (("x", list(range(2, 32))), ("y", [5, 6])):
        a = graphed.run_logits(batch(seq(alloc_g, rid, tokens, 0)))
        b = plain.run_logits(batch(seq(alloc_p, rid, tokens, 0)))
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_segment_sizes_ladder() -> None:
    assert segment_sizes(40) == [16, 32, 40]
    assert segment_sizes(8192)[-5:] == [2048, 3072, 4096, 6144, 8192]
    assert segment_sizes(8) == [8]
    with pytest.raises(ValueError):
        segment_sizes(0)


def test_segment_graphs_stay_off_when_the_experts_cannot_be_captured(model_dir: Path) -> None:
    r = runner(model_dir, segments=32, moe_backend="torch")  # reads routing back to the host
    assert r.segments is None
