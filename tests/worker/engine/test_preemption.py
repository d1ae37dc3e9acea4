"""Preemption under a tiny KV pool and requests that cannot fit."""

from __future__ import annotations

import pytest

from glm47.worker.engine import TooLongError
from tests.worker.engine.engine_fakes import Harness, MakeHarness

# Admission without an output reserve: requests are admitted on their prompt alone and then
# outgrow the pool, which is what these tests need.
EAGER = {"reserve_output_ratio": 0.0}
PROMPTS = {f"r{i}": [3 + i, 4 + i, 5 + i, 6 * i] for i in range(4)}


def run_all(h: Harness, max_new_tokens: int = 8) -> dict[str, list[int]]:
    for rid, prompt in PROMPTS.items():
        h.add(rid, prompt, max_new_tokens=max_new_tokens)
    h.run()
    assert all(h.finish(rid) == "length" for rid in PROMPTS)
    return {rid: h.tokens(rid) for rid in PROMPTS}


@pytest.mark.parametrize("enable_prefix_cache", [True, False])
def test_a_tiny_pool_preempts_and_the_output_matches_an_unconstrained_run(
    make_harness: MakeHarness, enable_prefix_cache: bool
) -> None:
    tiny = make_harness(num_pages=9, page_size=2, enable_prefix_cache=enable_prefix_cache, **EAGER)
    roomy = make_harness(
        num_pages=128, page_size=2, enable_prefix_cache=enable_prefix_cache, **EAGER
    )
    assert run_all(tiny) == run_all(roomy)
    assert tiny.engine.scheduler.num_preemptions > 0
    assert roomy.engine.scheduler.num_preemptions == 0


def test_the_newest_running_request_is_preempted_and_requeued_at_the_front(
    make_harness: MakeHarness,
) -> None:
    h = make_harness(num_pages=5, page_size=2, **EAGER)  # 4 usable pages
    old = h.add("old", [1, 2, 3], max_new_tokens=4)
    new = h.add("new", [4, 5, 6], max_new_tokens=4)
    h.add("third", [7, 8], max_new_tokens=1)
    h.step()  # old and new take two pages each
    assert [r.rid for r in h.engine.scheduler.running] == ["old", "new"]
    h.step()  # both decode a token at position 3 (still inside their second page)
    h.step()  # old needs a third page for position 4: new is preempted
    assert set(h.last_batch()) == {"old"}
    assert new.num_preemptions == 1 and not new.page_ids
    assert [r.rid for r in h.engine.scheduler.waiting] == ["new", "third"]
    assert len(h.tokens("new")) == 2 and len(old.page_ids) == 3
    h.run()
    assert len(h.tokens("new")) == 4 and h.finish("third") == "length"


def test_no_waiting_request_is_admitted_in_a_step_that_preempted(
    make_harness: MakeHarness,
) -> None:
    h = make_harness(num_pages=5, page_size=2, enable_prefix_cache=False, **EAGER)
    h.add("old", [1, 2, 3], max_new_tokens=4)
    h.add("new", [4, 5, 6], max_new_tokens=4)
    h.step()
    h.step()
    h.add("tiny", [9], max_new_tokens=1)
    h.step()  # preempts "new"; one page is free again, yet "tiny" waits
    assert set(h.last_batch()) == {"old"}
    assert h.engine.pool.num_free >= 1
    h.run()


def test_a_resumed_request_recomputes_prompt_and_output_so_far(make_harness: MakeHarness) -> None:
    h = make_harness(
        num_pages=5, page_size=2, enable_prefix_cache=False, overlap_schedule=False, **EAGER
    )
    h.add("old", [1, 2, 3], max_new_tokens=3)
    h.add("new", [4, 5, 6], max_new_tokens=4)
    h.step()
    h.step()
    h.step()  # "new" is preempted with two output tokens
    while "new" not in h.last_batch():
        h.step()
    seq = h.last_batch()["new"]
    assert seq.output_ids == h.tokens("new")[:2]
    assert seq.start_pos == 0 and seq.token_ids == [4, 5, 6, *seq.output_ids]
    assert seq.sample and len(h.tokens("new")) == 3  # the recompute sampled the third token


def test_a_prompt_that_cannot_fit_the_kv_pool_is_rejected_as_too_long(
    make_harness: MakeHarness,
) -> None:
    h = make_harness(num_pages=5, page_size=4)  # 16 tokens of KV
    assert h.engine.max_req_total_len == 16
    with pytest.raises(TooLongError, match="KV cache capacity of 16 tokens") as err:
        h.add("big", list(range(16)), max_new_tokens=1)
    assert err.value.code == "too_long" and err.value.rid == "big"
    assert not h.engine.has_work()


def test_a_request_that_would_outgrow_the_kv_pool_finishes_with_length(
    make_harness: MakeHarness,
) -> None:
    h = make_harness(num_pages=5, page_size=4, **EAGER)
    h.add("grow", list(range(10)), max_new_tokens=100)
    h.add("other", [1, 2], max_new_tokens=100)
    h.run()
    assert h.finish("grow") == "length" and len(h.tokens("grow")) == 6
    assert h.finish("other") == "length" and len(h.tokens("other")) == 14
