"""The tiny model through the Triton attention backend (under the Triton interpreter on the CPU),
both prefill forms against transformers: a long fresh prompt goes expanded (kernels/
varlen_attention), a short extend after it absorbed (kernels/mla_prefill), then decode steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import glm47.worker.attention.triton_backend as triton_backend
import glm47.worker.runner as runner_module
from tests.worker.model.reference import (
    PageAllocator,
    batch,
    hf_last_logits,
    make_hf_model,
    make_runner,
    save_hf_model,
    seq,
)

PROMPT = [(7 * i + 3) % 90 + 2 for i in range(40)]  # long enough for the expanded form
EXTEND = [5, 81, 19, 44]  # a second chunk: short after 40 cached tokens, absorbed
DECODE = [23, 9]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    model = make_hf_model(seed=11, dtype=torch.float32)
    return save_hf_model(model, tmp_path_factory.mktemp("prefill_forms")), model


def test_both_prefill_forms_match_transformers(
    model_dir: tuple[Path, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, hf = model_dir
    chosen: list[bool] = []
    weigh = triton_backend.prefers_expanded

    def spy(*args: object) -> bool:
        chosen.append(weigh(*args))  # type: ignore[arg-type]
        return chosen[-1]

    monkeypatch.setattr(triton_backend, "prefers_expanded", spy)
    r = make_runner(path, torch.float32, page_size=4, kv_tokens=256, prefill_backend="triton",
                    decode_backend="triton")  # fmt: skip
    alloc = PageAllocator(r.num_pages, r.page_size, seed=3)
    context: list[int] = []
    for tokens in (PROMPT, EXTEND, *([t] for t in DECODE)):
        logits = r.run_logits(batch(seq(alloc, "a", tokens, len(context))))
        context += tokens
        ref = hf_last_logits(hf, context)  # type: ignore[arg-type]
        torch.testing.assert_close(logits[0], ref, rtol=1e-3, atol=1e-3)
    layers = r.cfg.num_hidden_layers  # one choice a layer and step: the prompt expanded only
    assert chosen == [True] * layers + [False] * layers * (1 + len(DECODE))


@pytest.mark.parametrize(
    "step",
    [{"a": [5, 81, 19], "b": [44], "c": [23, 9]}, {"a": [5, 81], "b": [44, 3], "c": [23, 9]}],
    ids=["uneven", "even"],
)
def test_short_query_steps_attend_as_decode_rows(
    model_dir: tuple[Path, object], monkeypatch: pytest.MonkeyPatch, step: dict[str, list[int]]
) -> None:
    """A step where each sequence computes 1-3 tokens after its cached prompt (drafts being
    verified; as many each, as in a verification graph, or not): each token as a decode row of
    the split decode kernel gives the logits of the per-sequence prefill kernel, and
    transformers' at every row."""
    path, hf = model_dir
    prompts = {"a": PROMPT[:13], "b": PROMPT[5:30], "c": PROMPT[20:27]}

    decode_rows: list[int] = []
    real_decode = triton_backend.mla_decode

    def logits_of_step(runner_rows: bool) -> torch.Tensor:
        if not runner_rows:
            monkeypatch.setattr(runner_module, "with_token_rows", lambda meta: meta)
        monkeypatch.setattr(
            triton_backend,
            "mla_decode",
            lambda q, *a, **k: decode_rows.append(q.shape[0]) or real_decode(q, *a, **k),
        )
        r = make_runner(path, torch.float32, page_size=4, kv_tokens=256, prefill_backend="triton",
                        decode_backend="triton")  # fmt: skip
        alloc = PageAllocator(r.num_pages, r.page_size, seed=5)
        r.run_logits(batch(*[seq(alloc, rid, p, 0) for rid, p in prompts.items()]))
        seqs = [seq(alloc, rid, step[rid], len(p)) for rid, p in prompts.items()]
        for s in seqs:  # every row sampled, as a verification step samples each draft's row
            s.draft_ids = s.token_ids[1:]
        out = r.run_logits(batch(*seqs))
        monkeypatch.undo()
        return out

    rows = logits_of_step(True)
    assert rows.shape[0] == sum(len(t) for t in step.values())
    tokens = sum(len(t) for t in step.values())
    assert decode_rows == [tokens] * 3  # the step's tokens, in each of the three layers
    decode_rows.clear()
    torch.testing.assert_close(rows, logits_of_step(False), rtol=1e-4, atol=1e-4)
    assert decode_rows == []  # the prefill kernel took the step
    i = 0
    for rid, prompt in prompts.items():
        for k in range(len(step[rid])):
            ref = hf_last_logits(hf, prompt + step[rid][: k + 1])  # type: ignore[arg-type]
            torch.testing.assert_close(rows[i], ref, rtol=1e-3, atol=1e-3)
            i += 1
