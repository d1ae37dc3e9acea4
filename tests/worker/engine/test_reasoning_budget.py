"""Reasoning budgets: once a request has generated its budget of tokens inside the reasoning its
prompt opened, the only token allowed is the one that closes it; a grammar that starts after
that token then applies. On the built-in tiny model (random weights, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from glm47 import _native
from glm47.worker.batch import SamplingParams
from glm47.worker.config import EngineConfig
from glm47.worker.engine import Engine, Request
from glm47.worker.engine.errors import InvalidRequestError
from glm47.worker.grammar import Grammars, unpack_masks
from glm47.worker.model.config import ModelConfig
from glm47.worker.model.tiny import make_tiny_model
from glm47.worker.sampling import Sampler
from glm47.worker.token_rules import ReasoningBudget
from glm47.worker.wire_messages import WireGrammar, WireReasoningBudget
from tests.worker.engine.engine_fakes import drain
from tests.worker.model.reference import make_runner


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def _grammars(tiny_dir: Path) -> Grammars:
    return Grammars(str(tiny_dir), ModelConfig.from_dir(tiny_dir).vocab_size)


def _unpacked(mask: bytes, vocab: int) -> torch.Tensor:
    words = torch.frombuffer(bytearray(mask), dtype=torch.int32).unsqueeze(0)
    return unpack_masks(words, vocab)[0]


def test_the_budget_counts_reasoning_tokens_then_forces_the_close(tiny_dir: Path) -> None:
    grammars = _grammars(tiny_dir)
    vocab = ModelConfig.from_dir(tiny_dir).vocab_size
    budget = grammars.layered(None, WireReasoningBudget(tokens=2, end_id=77), [], [])
    assert isinstance(budget, ReasoningBudget)
    assert not budget.active
    assert budget.accept(5) and budget.accept(6)
    assert budget.active and budget.forcing
    fork = budget.fork()
    assert not budget.accept(9), "only the close is allowed once the budget is spent"
    (mask,) = grammars.masks([fork])
    assert _unpacked(mask, vocab).nonzero().flatten().tolist() == [77]
    assert fork.accept(77) and not fork.active and not fork.is_done()
    assert fork.accept(9), "after the close the output is free"
    # the model closing its reasoning early ends the count
    early = grammars.layered(None, WireReasoningBudget(tokens=3, end_id=77), [], [])
    assert early.accept(77) and early.accept(1) and early.accept(2) and early.accept(3)
    assert not early.active
    with pytest.raises(ValueError, match="outside the vocabulary"):
        grammars.layered(None, WireReasoningBudget(tokens=1, end_id=vocab), [], [])
    # a step queued ahead (a sample one token past what was seen) waits for masks only near the end
    near = grammars.layered(None, WireReasoningBudget(tokens=3, end_id=77), [], [])
    assert isinstance(near, ReasoningBudget) and not near.may_mask(1)
    assert near.accept(5) and not near.may_mask(1)
    assert near.accept(6) and near.may_mask(1)
    assert near.accept(77) and not near.may_mask(1)


def _engine(tiny_dir: Path, overlap: bool, mtp_step: int = 0) -> Engine:
    runner = make_runner(tiny_dir, torch.float32, page_size=4, kv_tokens=2048)
    config = EngineConfig(
        device="cpu", dtype="float32", page_size=4, max_req_total_len=1024,
        overlap_schedule=overlap, mtp_step=mtp_step,
    )  # fmt: skip
    tok = _native.Tokenizer(str(tiny_dir))
    return Engine(config, runner, Sampler(seed=0), tok.eos_token_ids, _grammars(tiny_dir))


@pytest.mark.parametrize("overlap", [False, True])
def test_an_engine_closes_reasoning_at_the_budget_and_applies_the_grammar_after(
    tiny_dir: Path, overlap: bool
) -> None:
    tok = _native.Tokenizer(str(tiny_dir))
    (close,) = tok.encode("</think>")
    prompt = tok.encode("Think, then answer in JSON.<think>")
    engine = _engine(tiny_dir, overlap)
    # the close is made unlikely, so that only the budget ends the reasoning
    unlikely = SamplingParams(temperature=1.0, seed=3, logit_bias_ids=(close,),
                              logit_bias_values=(-100.0,))  # fmt: skip
    for budget in (0, 1, 6):
        engine.add_request(Request(
            rid=f"free{budget}", prompt_ids=prompt, max_new_tokens=12, sampling=unlikely,
            reasoning_budget=WireReasoningBudget(tokens=budget, end_id=close),
        ))  # fmt: skip
    schema = json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"}},
                         "required": ["ok"], "additionalProperties": False})  # fmt: skip
    engine.add_request(Request(
        rid="json", prompt_ids=prompt, max_new_tokens=400, sampling=unlikely,
        grammar=WireGrammar(schema=schema, start_after=close),
        reasoning_budget=WireReasoningBudget(tokens=4, end_id=close),
    ))  # fmt: skip
    engine.add_request(Request(rid="unbounded", prompt_ids=prompt, max_new_tokens=12,
                               sampling=unlikely))  # fmt: skip
    tokens, finish = drain(engine)
    for budget in (0, 1, 6):
        out = tokens[f"free{budget}"]
        assert out.index(close) == budget and out.count(close) == 1, out
        assert finish[f"free{budget}"] == "length"
    out = tokens["json"]
    assert out.index(close) == 4, out
    assert json.loads(tok.decode(out[5:], False)) in ({"ok": True}, {"ok": False})
    assert finish["json"] == "stop"
    assert close not in tokens["unbounded"]
    engine.check_accounting()


def test_a_budget_needs_the_grammar_machinery(tiny_dir: Path) -> None:
    runner = make_runner(tiny_dir, torch.float32, page_size=4, kv_tokens=256)
    config = EngineConfig(device="cpu", dtype="float32", page_size=4, max_req_total_len=256)
    without = Engine(config, runner, Sampler(seed=0), [1])
    budget = WireReasoningBudget(tokens=1, end_id=3)
    with pytest.raises(InvalidRequestError, match="not available"):
        without.add_request(
            Request(rid="r", prompt_ids=[5, 6], max_new_tokens=4, reasoning_budget=budget)
        )
    assert not without.has_work()


def test_steps_queued_ahead_wait_for_masks_only_near_the_budgets_end(tiny_dir: Path) -> None:
    tok = _native.Tokenizer(str(tiny_dir))
    (close,) = tok.encode("</think>")
    engine = _engine(tiny_dir, overlap=True)
    assert engine._launcher is not None
    launch = engine._launcher.launch
    deferred: list[bool] = []  # per step queued ahead: whether its sampling waited for masks

    def spy(*args: object, **kw: object) -> object:
        if len(args) > 2:  # a step queued ahead carries the token feed
            deferred.append(bool(kw.get("defer_sampling")))
        return launch(*args, **kw)  # type: ignore[arg-type]

    engine._launcher.launch = spy  # type: ignore[method-assign]
    unlikely = SamplingParams(temperature=1.0, seed=3, logit_bias_ids=(close,),
                              logit_bias_values=(-100.0,))  # fmt: skip
    prompt = tok.encode("Think.<think>")
    engine.add_request(Request(
        rid="r", prompt_ids=prompt, max_new_tokens=20, sampling=unlikely,
        reasoning_budget=WireReasoningBudget(tokens=8, end_id=close),
    ))  # fmt: skip
    tokens, _ = drain(engine)
    assert tokens["r"].index(close) == 8
    assert any(deferred) and not all(deferred), deferred
    assert sum(deferred) <= 2, "only the steps whose sample may be the forced close wait"
