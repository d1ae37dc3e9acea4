"""Typed rejections at admission, aborts, and the idle accounting check."""

from __future__ import annotations

import pytest

from glm47.worker.batch import RunnerOutput
from glm47.worker.engine import InvalidRequestError, QueueFullError, TooLongError
from tests.worker.engine.engine_fakes import MakeHarness


def test_a_full_waiting_queue_rejects_with_queue_full(make_harness: MakeHarness) -> None:
    h = make_harness(max_waiting_requests=2)
    h.add("a", [1, 2])
    h.add("b", [1, 2])
    with pytest.raises(QueueFullError, match="waiting queue full") as err:
        h.add("c", [1, 2])
    assert err.value.code == "queue_full" and err.value.rid == "c"
    h.step()  # a and b leave the queue for the running batch
    h.add("c", [1, 2])
    h.run()
    assert h.finish("c") == "length"


def test_a_prompt_as_long_as_max_req_total_len_is_too_long(make_harness: MakeHarness) -> None:
    h = make_harness(max_req_total_len=8)
    with pytest.raises(TooLongError, match="max_req_total_len 8") as err:
        h.add("long", list(range(8)))
    assert err.value.code == "too_long"
    h.add("fits", list(range(7)), max_new_tokens=5)
    h.run()
    assert h.tokens("fits") and h.finish("fits") == "length" and len(h.tokens("fits")) == 1


@pytest.mark.parametrize(
    ("prompt", "max_new_tokens", "message"),
    [([], 4, "must not be empty"), ([1], 0, "max_new_tokens >= 1")],
)
def test_out_of_range_fields_are_invalid_requests(
    make_harness: MakeHarness, prompt: list[int], max_new_tokens: int, message: str
) -> None:
    h = make_harness()
    with pytest.raises(InvalidRequestError, match=message) as err:
        h.add("r", prompt, max_new_tokens=max_new_tokens)
    assert err.value.code == "invalid_request"
    assert not h.engine.has_work()


def test_a_request_id_in_use_is_rejected_until_that_request_finishes(
    make_harness: MakeHarness,
) -> None:
    h = make_harness()
    h.add("r", [1, 2], max_new_tokens=1)
    with pytest.raises(InvalidRequestError, match="already in use"):
        h.add("r", [3, 4])
    h.run()
    h.add("r", [3, 4], max_new_tokens=1)
    h.run()
    assert len(h.outputs["r"]) == 2


def test_abort_frees_pages_at_once_and_the_next_step_reports_it(make_harness: MakeHarness) -> None:
    h = make_harness(page_size=4, enable_prefix_cache=False)
    req = h.add("r", list(range(10)), max_new_tokens=50)
    h.add("other", [7, 8], max_new_tokens=50)
    h.step()
    h.step()
    assert h.engine.pool.num_in_use == 4
    h.engine.abort("r")
    assert h.engine.pool.num_in_use == 1 and not req.page_ids
    h.engine.check_accounting()
    outs = {o.rid: o for o in h.step()}
    assert outs["r"].finish == "abort" and outs["r"].ids == [] and outs["r"].prompt_tokens is None
    assert "r" not in h.last_batch()
    h.step()
    assert "r" not in h.last_batch() and len(h.outputs["r"]) == 3


def test_aborting_a_waiting_request_reports_abort_with_its_prompt_length(
    make_harness: MakeHarness,
) -> None:
    h = make_harness()
    h.add("r", [1, 2, 3])
    h.engine.abort("r")
    assert h.engine.stats()["waiting"] == 0
    [out] = h.step()
    assert (out.rid, out.finish, out.prompt_tokens, out.cached_tokens) == ("r", "abort", 3, 0)
    assert not h.engine.has_work() and not h.runner.batches


def test_aborting_an_unknown_or_finished_request_is_ignored(make_harness: MakeHarness) -> None:
    h = make_harness()
    h.add("r", [1, 2], max_new_tokens=1)
    h.run()
    h.engine.abort("r")
    h.engine.abort("never")
    assert not h.engine.has_work() and h.step() == []


def test_an_aborted_prefix_stays_reusable_in_the_cache(make_harness: MakeHarness) -> None:
    h = make_harness(page_size=4)
    h.add("r", list(range(12)), max_new_tokens=50)
    h.step()
    h.engine.abort("r")
    assert h.engine.stats()["kv_pages_cached"] == 3 and h.engine.pool.num_in_use == 0
    h.step()
    h.add("again", list(range(12)), max_new_tokens=1)
    h.step()
    assert h.outputs["again"][0].cached_tokens == 8


def test_the_engine_checks_page_accounting_whenever_it_goes_idle(
    make_harness: MakeHarness,
) -> None:
    h = make_harness()
    h.add("r", [1, 2], max_new_tokens=1)
    h.run()
    h.engine.pool._free.pop()  # leak a page behind the engine's back
    with pytest.raises(AssertionError, match="KV page accounting broken"):
        h.engine.step()


def test_a_runner_that_drops_a_sample_is_caught_at_once(make_harness: MakeHarness) -> None:
    h = make_harness()
    h.add("r", [1, 2], max_new_tokens=3)
    run = h.runner.run
    h.runner.run = lambda batch, sampler: RunnerOutput(run(batch, sampler).samples[:0])  # type: ignore[method-assign]
    with pytest.raises(AssertionError, match="the runner sampled no row for r"):
        h.engine.step()
