"""vLLM's priority scheduling policy: waiting requests are admitted by (priority, arrival) and
the running request of the highest (priority, arrival) is preempted for pages."""

from __future__ import annotations

import pytest

from glm47.worker.engine import InvalidRequestError
from tests.worker.engine.engine_fakes import MakeHarness

# Admission on the prompt alone, so that requests outgrow a small pool (see test_preemption.py).
EAGER = {"reserve_output_ratio": 0.0}


def test_waiting_requests_are_admitted_by_priority_then_arrival(
    make_harness: MakeHarness,
) -> None:
    h = make_harness(
        num_pages=64, page_size=2, scheduling_policy="priority", max_running_requests=1
    )
    for rid, priority in [("a", 5), ("b", 0), ("c", 5), ("d", -1)]:
        h.add(rid, [1, 2, 3], max_new_tokens=1, priority=priority)
    assert [r.rid for r in h.engine.scheduler.waiting] == ["d", "b", "a", "c"]
    order = []
    while h.engine.has_work():
        order += [o.rid for o in h.step() if o.finish]
    assert order == ["d", "b", "a", "c"]


@pytest.mark.parametrize("policy", ["priority", "fcfs"])
def test_the_lowest_priority_running_request_is_preempted(
    make_harness: MakeHarness, policy: str
) -> None:
    h = make_harness(
        num_pages=6, page_size=2, scheduling_policy=policy, max_wait_steps=1,
        enable_prefix_cache=False, **EAGER,
    )  # fmt: skip
    p = (lambda x: x) if policy == "priority" else (lambda x: 0)
    low = h.add("low", [1, 2, 3], max_new_tokens=8, priority=p(9))
    h.step()
    high = h.add("high", [4, 5, 6], max_new_tokens=8, priority=p(1))
    while not low.num_preemptions and not high.num_preemptions:
        h.step()
    # by priority the low one gives way though high is the newest; else the newest does
    victim, kept = (low, high) if policy == "priority" else (high, low)
    assert victim.num_preemptions == 1 and kept.num_preemptions == 0
    assert [r.rid for r in h.engine.scheduler.running] == [kept.rid]
    h.run()
    assert h.finish("high") == h.finish("low") == "length"


def test_a_priority_without_the_policy_is_refused(make_harness: MakeHarness) -> None:
    h = make_harness(num_pages=16, page_size=2)
    with pytest.raises(InvalidRequestError, match="scheduling-policy priority"):
        h.add("r", [1, 2], priority=3)
    assert not h.engine.has_work()
