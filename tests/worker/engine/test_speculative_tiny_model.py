"""MTP speculative decoding with the real runner on the tiny model (CPU): its MTP layer drafts,
the model verifies, and greedy and seeded sampled outputs, penalised or not, equal decoding
without drafts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from glm47.worker.batch import DraftInput, SamplingParams
from glm47.worker.config import EngineConfig
from glm47.worker.engine import Engine, Request
from glm47.worker.grammar import Grammars
from glm47.worker.model.config import ModelConfig
from glm47.worker.model.tiny import make_tiny_model
from glm47.worker.sampling import Sampler
from glm47.worker.wire_messages import WireGrammar, WireReasoningBudget
from tests.worker.model.reference import make_runner

PAGE_SIZE = 4
PROMPTS = {"a": [5, 17, 33, 9, 41, 8, 12], "b": [60, 61], "c": list(range(30, 52))}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-mtp")
    make_tiny_model(str(path), seed=0)
    return path


def generate(
    model_dir: Path, mtp_step: int, sampling: SamplingParams,
    oracle: dict[str, list[int]] | None = None, **request_kw: Any,
) -> tuple[dict, Engine]:  # fmt: skip
    """Each request's tokens. With `oracle` (the tokens of a run without drafts) the MTP layer's
    drafts are replaced by those tokens, every third one wrong, so that drafts are accepted."""
    runner = make_runner(model_dir, torch.float32, PAGE_SIZE, kv_tokens=512)
    config = EngineConfig(
        device="cpu",
        dtype="float32",
        page_size=PAGE_SIZE,
        max_req_total_len=256,
        chunked_prefill_size=8,
        max_num_batched_tokens=24,
        mtp_step=mtp_step,
    )
    grammars = None
    if request_kw.get("grammar") is not None or request_kw.get("reasoning_budget") is not None:
        grammars = Grammars(str(model_dir), ModelConfig.from_dir(model_dir).vocab_size)
    engine = Engine(config, runner, Sampler(seed=0), eos_token_ids=[], grammars=grammars)
    requests = {rid: Request(rid, prompt, max_new_tokens=12, sampling=sampling, **request_kw)
                for rid, prompt in PROMPTS.items()}  # fmt: skip
    if oracle is not None:
        propose = runner.propose_drafts

        def from_oracle(items: list[DraftInput]) -> dict[str, list[int]]:
            drafted = propose(items)  # the MTP layer's passes still run
            for rid, ids in drafted.items():
                done = len(requests[rid].output_ids)
                right = oracle[rid][done : done + len(ids)]
                drafted[rid] = [t + (k % 3 == 2) for k, t in enumerate(right)] + ids[len(right) :]
            return drafted

        runner.propose_drafts = from_oracle  # type: ignore[method-assign]
    for req in requests.values():
        engine.add_request(req)
    tokens: dict[str, list[int]] = {}
    while engine.has_work():
        for out in engine.step():
            tokens.setdefault(out.rid, []).extend(out.ids)
        engine.check_accounting()
    return tokens, engine


SETTINGS = [
    SamplingParams(temperature=0.0),
    SamplingParams(temperature=0.9, top_p=0.95, seed=11),
    SamplingParams(temperature=0.0, repetition_penalty=3.0, frequency_penalty=2.0,
                   presence_penalty=1.0),
    SamplingParams(temperature=0.9, seed=12, frequency_penalty=0.6),
]  # fmt: skip
IDS = ["greedy", "seeded", "greedy-penalised", "seeded-penalised"]


@pytest.mark.parametrize("sampling", SETTINGS, ids=IDS)
def test_mtp_drafting_leaves_the_output_unchanged(
    model_dir: Path, sampling: SamplingParams
) -> None:
    plain, _ = generate(model_dir, 0, sampling)
    spec, engine = generate(model_dir, 2, sampling)
    assert spec == plain
    assert all(len(t) == 12 for t in spec.values())
    assert engine.spec_drafted > 0
    assert 0 <= engine.spec_accepted <= engine.spec_drafted


@pytest.mark.parametrize("sampling", SETTINGS, ids=IDS)
def test_accepted_drafts_leave_the_output_unchanged(
    model_dir: Path, sampling: SamplingParams
) -> None:
    """Drafts that are often right: the rows after an accepted draft are sampled (and
    penalised) with the drafts before them as output, as decoding one token a step would."""
    plain, _ = generate(model_dir, 0, sampling)
    spec, engine = generate(model_dir, 2, sampling, oracle=plain)
    assert spec == plain
    assert engine.spec_accepted >= engine.spec_drafted // 3


@pytest.mark.parametrize("window, min_new", [((3, 8), 8), ((2, 6), 2), ((2, 6), 5)])
def test_drafts_across_the_min_tokens_boundary_leave_the_output_unchanged(
    model_dir: Path, window: tuple[int, int], min_new: int
) -> None:
    """Stop ids (the tokens a run without them emits in `window`) banned for the first `min_new`
    outputs: a draft's row before the boundary keeps the ban, one past it does not, as decoding
    one token a step; requests then stop where they did. (Each case fails when drafts' rows all
    take the first row's ban, or none.)"""
    greedy = SamplingParams(temperature=0.0)
    free, _ = generate(model_dir, 0, greedy)
    stops = frozenset(t for tokens in free.values() for t in tokens[window[0] : window[1]])
    kw: dict[str, Any] = {"min_new_tokens": min_new, "stop_token_ids": stops}
    plain, _ = generate(model_dir, 0, greedy, **kw)
    spec, engine = generate(model_dir, 2, greedy, oracle=plain, **kw)
    assert spec == plain
    assert any(len(t) < 12 for t in plain.values())  # some stop after the boundary
    assert all(not stops & set(t[:min_new]) for t in plain.values())
    assert engine.spec_accepted > 0


@pytest.mark.parametrize("sampling", SETTINGS[:2], ids=IDS[:2])
def test_drafts_under_a_grammar_leave_the_output_unchanged(
    model_dir: Path, sampling: SamplingParams
) -> None:
    """JSON output with drafts: drafts are cut where the grammar stops allowing them (every
    third oracle draft is off by one id, often outside it), each draft's row is masked by the
    grammar read on through the drafts before it, and the output is decoding's."""
    schema = '{"type": "object", "properties": {"name": {"type": "string", "maxLength": 40}}}'
    kw: dict[str, Any] = {"grammar": WireGrammar(schema=schema)}
    plain, _ = generate(model_dir, 0, sampling, **kw)
    spec, engine = generate(model_dir, 2, sampling, oracle=plain, **kw)
    assert spec == plain
    assert all(t and t[0] != 0 for t in plain.values())
    assert engine.spec_accepted > 0


@pytest.mark.parametrize("sampling", SETTINGS[:2], ids=IDS[:2])
def test_drafts_under_a_reasoning_budget_leave_the_output_unchanged(
    model_dir: Path, sampling: SamplingParams
) -> None:
    """A reasoning budget with drafts: a draft past the budget other than the close is cut, the
    row at the budget allows the close alone, and the output is decoding's."""
    close = 3
    kw: dict[str, Any] = {"reasoning_budget": WireReasoningBudget(tokens=5, end_id=close)}
    plain, _ = generate(model_dir, 0, sampling, **kw)
    spec, engine = generate(model_dir, 2, sampling, oracle=plain, **kw)
    assert spec == plain
    assert all(close in t and t.index(close) <= 5 for t in plain.values()), plain
    assert engine.spec_accepted > 0


@torch.inference_mode()
def chained_drafts(runner: Any, items: list[DraftInput]) -> dict[str, list[int]]:
    """The MTP layer's drafts for `items`, one sequence at a time, each chained pass fed the
    token the one before it chose on the host: what `MtpDrafter.propose` must give."""
    from glm47.worker.batch import ScheduledBatch, ScheduledSeq

    drafter, hidden = runner.drafter, runner._last_hidden
    out: dict[str, list[int]] = {}
    for it in items:
        if not it.next_ids or not it.num_drafts:
            continue
        rows = torch.arange(it.first_row, it.first_row + len(it.next_ids))
        seq = ScheduledSeq(it.rid, it.next_ids, it.start_pos, it.page_ids, True)
        inputs = drafter.inputs.build(ScheduledBatch([seq]))
        last = drafter._forward(inputs, hidden[rows])[inputs.sample_rows]
        out[it.rid] = []
        for step in range(it.num_drafts):
            token = int(drafter.mtp.compute_logits(last).argmax(dim=-1).item())
            out[it.rid].append(token)
            if step + 1 < it.num_drafts:
                pos = it.start_pos + len(it.next_ids) + step
                seq = ScheduledSeq(it.rid, [token], pos, it.page_ids, True)
                inputs = drafter.inputs.build(ScheduledBatch([seq]))
                last = drafter._forward(inputs, last)
    return out


def test_batched_drafts_equal_each_sequence_drafted_alone(model_dir: Path) -> None:
    """The drafter chains its passes on the device for every sequence at once, sequences asking
    for different draft counts among them; each sequence's drafts are the ones it gets alone."""
    runner = make_runner(model_dir, torch.float32, PAGE_SIZE, kv_tokens=512)
    config = EngineConfig(device="cpu", dtype="float32", page_size=PAGE_SIZE,
                          max_req_total_len=256, mtp_step=3)  # fmt: skip
    engine = Engine(config, runner, Sampler(seed=0), eos_token_ids=[])
    propose, checked = runner.propose_drafts, []

    def compared(items: list[DraftInput]) -> dict[str, list[int]]:
        # fewer drafts for some sequences: 3, 1, 2, 3, ... of what each may take
        items = [DraftInput(it.rid, it.first_row, it.start_pos, it.next_ids, it.page_ids,
                            min(it.num_drafts, (3, 1, 2)[k % 3])) for k, it in enumerate(items)]  # fmt: skip
        want = chained_drafts(runner, items)
        got = propose(items)
        assert {rid: ids for rid, ids in got.items() if ids} == want
        checked.append(sorted({len(ids) for ids in want.values()}))
        return got

    runner.propose_drafts = compared  # type: ignore[method-assign]
    for rid, prompt in PROMPTS.items():
        engine.add_request(Request(rid, prompt, max_new_tokens=8, sampling=SamplingParams()))
    while engine.has_work():
        engine.step()
    assert [1, 2, 3] in checked, checked  # a step drafted 1, 2 and 3 tokens at once
