"""Speculative decoding in the engine: drafts are verified in one step, accepted while they equal
the model's own samples, and never change what is generated."""

from __future__ import annotations

import random

import pytest

from glm47.worker.batch import SamplingParams
from tests.worker.engine.engine_fakes import Harness, MakeHarness, next_token


def oracle(context: list[int], count: int) -> list[int]:
    """The fake model's own continuation: every draft is accepted."""
    out: list[int] = []
    for _ in range(count):
        out.append(next_token(context + out))
    return out


def wrong(context: list[int], count: int) -> list[int]:
    return [t + 1 for t in oracle(context, count)]


def flaky(seed: int):  # type: ignore[no-untyped-def]
    """Right or wrong at random, position by position."""
    rng = random.Random(seed)

    def draft(context: list[int], count: int) -> list[int]:
        good = oracle(context, count)
        return [t if rng.random() < 0.6 else t + 7 for t in good]

    return draft


PROMPTS = {"a": [3, 4, 5, 6, 7], "b": [9, 8], "c": list(range(20, 41)), "d": [11, 12, 13]}


def generate(make_harness: MakeHarness, drafter=None, **config) -> Harness:  # type: ignore[no-untyped-def]
    h = make_harness(drafter=drafter, mtp_step=3 if drafter else 0, eos=(), **config)
    for i, (rid, prompt) in enumerate(PROMPTS.items()):
        h.add(rid, prompt, max_new_tokens=9 + i)
    h.run()
    return h


@pytest.mark.parametrize("drafter", [oracle, wrong, flaky(0), flaky(1)])
def test_output_equals_decoding_without_drafts(make_harness: MakeHarness, drafter) -> None:  # type: ignore[no-untyped-def]
    plain = generate(make_harness)
    spec = generate(make_harness, drafter)
    for rid in PROMPTS:
        assert spec.tokens(rid) == plain.tokens(rid), rid
        assert spec.finish(rid) == plain.finish(rid) == "length"
    engine = spec.engine
    assert engine.spec_drafted > 0
    accepted = sum(o.spec_accepted or 0 for outs in spec.outputs.values() for o in outs)
    assert accepted == engine.spec_accepted
    if drafter is oracle:
        assert engine.spec_accepted == engine.spec_drafted
        assert len(spec.runner.batches) < len(plain.runner.batches) / 2
    if drafter is wrong:
        assert engine.spec_accepted == 0
        assert all(len(o.ids) == 1 for outs in spec.outputs.values() for o in outs)


def test_tight_pool_preemption_and_prefix_cache_keep_the_output(make_harness: MakeHarness) -> None:
    plain = generate(make_harness, num_pages=64)
    spec = generate(make_harness, flaky(3), num_pages=14, max_num_batched_tokens=12,
                    chunked_prefill_size=8)  # fmt: skip
    for rid in PROMPTS:
        assert spec.tokens(rid) == plain.tokens(rid), rid
    assert spec.engine.spec_accepted > 0


def test_drafts_stop_at_the_length_limit_and_at_a_stop_token(make_harness: MakeHarness) -> None:
    h = make_harness(drafter=oracle, mtp_step=4, eos=())
    h.add("short", [3, 4, 5], max_new_tokens=3)
    h.run()
    assert len(h.tokens("short")) == 3 and h.finish("short") == "length"
    # no draft is ever proposed past the length limit
    drafted = [it.num_drafts for call in h.runner.draft_calls for it in call if it.rid == "short"]
    assert drafted and max(drafted) <= 2

    expect = oracle([3, 4, 5], 8)
    h = make_harness(drafter=oracle, mtp_step=4, eos=(expect[3],))
    h.add("eos", [3, 4, 5], max_new_tokens=20)
    h.run()
    assert h.tokens("eos") == expect[:4] and h.finish("eos") == "stop"


def test_logprobs_come_one_per_token(make_harness: MakeHarness) -> None:
    h = make_harness(drafter=oracle, mtp_step=2, eos=())
    h.add("lp", [3, 4], max_new_tokens=7, sampling=SamplingParams(logprobs=1))
    h.run()
    for out in h.outputs["lp"]:
        assert out.logprobs is not None and len(out.logprobs) == len(out.ids)
        assert out.top_logprobs is not None and len(out.top_logprobs) == len(out.ids)
    assert any(len(out.ids) > 1 for out in h.outputs["lp"])


def test_drafts_under_penalties_and_min_tokens_none_when_disabled(
    make_harness: MakeHarness,
) -> None:
    h = make_harness(drafter=oracle, mtp_step=2, eos=())
    h.add("pen", [3, 4], max_new_tokens=5, sampling=SamplingParams(repetition_penalty=1.2))
    h.add("min", [5, 6], max_new_tokens=5, min_new_tokens=3)
    h.add("off", [7, 8], max_new_tokens=5, mtp=False)
    h.run()
    drafts = {}
    for call in h.runner.draft_calls:
        for it in call:
            drafts.setdefault(it.rid, []).append(it.num_drafts)
    assert set(drafts["off"]) == {0}
    assert drafts["pen"][0] == 2  # each draft's row is penalised with the drafts before it
    assert drafts["min"][0] == 2  # each draft's row has the ban of its own output count


def test_a_model_without_its_mtp_layer_cannot_draft(make_harness: MakeHarness) -> None:
    with pytest.raises(ValueError, match="MTP layer"):
        make_harness(mtp_step=2)
