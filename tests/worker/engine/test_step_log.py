"""The engine's periodic summary line: step counts and times, throughput, batch and KV state."""

from __future__ import annotations

import logging

import pytest

from glm47.worker.engine.step_log import StepLog
from tests.worker.engine.engine_fakes import MakeHarness


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


STATS = {"running": 7, "waiting": 3, "kv_pages_used": 25, "kv_pages_total": 100}


def test_a_line_per_period_with_the_longest_step() -> None:
    clock = Clock()
    steps = StepLog(5.0, clock=clock)
    steps.record(0.040, prompt_tokens=1000, generated_tokens=10)
    steps.record(0.800, prompt_tokens=0, generated_tokens=10)
    clock.now += 2.0
    assert steps.report(STATS) is None  # not due yet
    steps.record(0.060, prompt_tokens=0, generated_tokens=10)
    clock.now += 3.0
    line = steps.report(STATS)
    assert line == (
        "3 steps in 5.0 s (mean 300.0 ms, longest 800.0 ms); prompt 200 tok/s, generation 6 "
        "tok/s; running 7, waiting 3, KV 25.0% used"
    )
    clock.now += 10.0
    assert steps.report(STATS) is None  # no steps in the new period: nothing to say


def test_an_idle_stretch_does_not_dilute_the_next_period() -> None:
    clock = Clock()
    steps = StepLog(5.0, clock=clock)
    clock.now += 60.0  # idle
    steps.record(0.5, prompt_tokens=500, generated_tokens=5)  # the period starts as it started
    clock.now += 4.0
    assert steps.report(STATS) is None
    clock.now += 0.5
    line = steps.report(STATS)
    assert line is not None and line.startswith("1 steps in 5.0 s") and "prompt 100 tok/s" in line


def test_interval_zero_never_reports_and_negative_is_refused() -> None:
    clock = Clock()
    steps = StepLog(0.0, clock=clock)
    steps.record(0.1, 1, 1)
    clock.now += 100
    assert steps.report(STATS) is None
    with pytest.raises(ValueError, match=">= 0"):
        StepLog(-1.0)


def test_the_scheduler_counts_the_prompt_tokens_of_each_step(make_harness: MakeHarness) -> None:
    h = make_harness(num_pages=64, page_size=4, chunked_prefill_size=4)
    recorded: list[tuple[int, int]] = []  # (prompt tokens, samples) per step
    h.engine.step_log.record = lambda s, p, g, a=False: recorded.append((p, g))  # type: ignore[method-assign]
    h.add("a", list(range(3, 13)), max_new_tokens=2)  # 10 prompt tokens: chunks of 4, 4, 2
    h.add("b", [20, 21], max_new_tokens=2)
    h.run()
    assert recorded[0] == (4, 0)  # a's first chunk takes the whole step budget of 4 tokens
    # 12 prompt tokens in all, then only outputs fed back; two samples per request
    assert sum(p for p, _ in recorded) == 12 and sum(g for _, g in recorded) == 4
    assert recorded[-1][0] == 0


def test_the_engine_logs_its_summary_while_it_works(
    make_harness: MakeHarness, caplog: pytest.LogCaptureFixture
) -> None:
    h = make_harness(num_pages=64, page_size=4)
    clock = Clock()
    h.engine.step_log = StepLog(1.0, clock=clock)
    h.add("a", [3, 4, 5], max_new_tokens=6)
    with caplog.at_level(logging.INFO, logger="glm47.worker.engine.engine"):
        h.engine.step()
        clock.now += 1.5
        h.engine.step()
    lines = [r.getMessage() for r in caplog.records if " steps" in r.getMessage()]
    assert len(lines) == 1
    # The prompt's step, then the step of token 2 queued before the prompt step's sample is read.
    assert (
        lines[0].startswith("2 steps, 1 run ahead in 1.5 s") and "running 1, waiting 0" in lines[0]
    )
    with caplog.at_level(logging.INFO, logger="glm47.worker.engine.engine"):
        for _ in range(3):
            h.engine.step()
        clock.now += 1.5
        h.engine.step()
    lines = [r.getMessage() for r in caplog.records if " steps" in r.getMessage()]
    # The steps of its tokens 3-6 were each queued before the samples of the step before.
    assert lines[-1].startswith("4 steps, 4 run ahead in 1.5 s"), lines[-1]


def test_a_slow_step_is_logged_with_its_shape(
    make_harness: MakeHarness, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from glm47.worker.engine import engine as engine_module

    h = make_harness(num_pages=64, page_size=4)
    h.add("a", [3, 4, 5], max_new_tokens=6)
    h.add("b", [6, 7], max_new_tokens=6)
    monkeypatch.setattr(engine_module, "SLOW_STEP_S", 0.0)  # every step counts as slow
    with caplog.at_level(logging.WARNING, logger="glm47.worker.engine.engine"):
        h.engine.step()
    slow = [r.getMessage() for r in caplog.records if r.getMessage().startswith("slow step")]
    assert len(slow) == 1
    assert slow[0].endswith("for 2 sequences, 5 tokens (5 of them prompt tokens)")
