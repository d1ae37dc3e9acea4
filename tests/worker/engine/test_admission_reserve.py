"""Admission keeps KV room for running requests to grow into (engine/admission.py)."""

from __future__ import annotations

import pytest

from glm47.worker.engine.admission import DECAY_STEPS, OUTPUT_ESTIMATE_CLIP, GrowthReserve
from glm47.worker.engine.request import Request
from tests.worker.engine.engine_fakes import MakeHarness


def test_a_request_waits_while_the_running_ones_need_their_reserve(
    make_harness: MakeHarness,
) -> None:
    h = make_harness(num_pages=17, page_size=4, reserve_output_ratio=0.7)  # 64 tokens of KV
    h.add("a", [5, 6, 7, 8], max_new_tokens=40)  # expected to grow by 4 + 0.7 * 40 = 32 tokens
    h.add("b", [9, 10, 11, 12], max_new_tokens=50)  # would need 4 + 35 = 39 more: does not fit
    h.step()
    assert set(h.last_batch()) == {"a"}
    h.run()
    assert h.finish("a") == "length" and h.finish("b") == "length"
    assert h.engine.scheduler.num_preemptions == 0


def test_without_a_reserve_both_requests_start_at_once_and_one_is_preempted(
    make_harness: MakeHarness,
) -> None:
    h = make_harness(num_pages=17, page_size=4, reserve_output_ratio=0.0)
    h.add("a", [5, 6, 7, 8], max_new_tokens=40)
    h.add("b", [9, 10, 11, 12], max_new_tokens=50)
    h.step()
    assert set(h.last_batch()) == {"a", "b"}
    h.run()
    assert h.engine.scheduler.num_preemptions > 0


def test_the_head_of_the_queue_is_admitted_when_nothing_runs(make_harness: MakeHarness) -> None:
    h = make_harness(num_pages=5, page_size=4, reserve_output_ratio=1.0)  # 16 tokens of KV
    h.add("big", [3] * 10, max_new_tokens=1000)  # its estimate far exceeds the pool
    h.run()
    assert h.finish("big") == "length" and len(h.tokens("big")) == 6


def test_the_ratio_decays_without_preemption_and_resets_after_one() -> None:
    reserve = GrowthReserve(0.7)
    for _ in range(DECAY_STEPS // 2):
        reserve.on_step(preempted=False)
    assert reserve.ratio == pytest.approx(0.4)
    for _ in range(DECAY_STEPS):
        reserve.on_step(preempted=False)
    assert reserve.ratio == pytest.approx(0.1)
    reserve.on_step(preempted=True)
    assert reserve.ratio == 0.7
    assert GrowthReserve(0.0).ratio == 0.0


def test_the_cost_counts_uncomputed_tokens_and_a_clipped_output_budget() -> None:
    reserve = GrowthReserve(0.5)
    req = Request(rid="r", prompt_ids=list(range(100)), max_new_tokens=10**6)
    assert reserve.cost(req, num_computed=40) == 60 + 0.5 * OUTPUT_ESTIMATE_CLIP
    small = Request(rid="s", prompt_ids=[1, 2], max_new_tokens=8)
    small.append_output(3)
    assert reserve.cost(small, num_computed=2) == 1 + 0.5 * 7
