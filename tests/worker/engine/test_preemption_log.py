"""A preempted request is logged at INFO, so operators (and the end-to-end tests) can see it."""

from __future__ import annotations

import logging

import pytest

from tests.worker.engine.engine_fakes import MakeHarness


def test_each_preemption_logs_the_request_at_info(
    make_harness: MakeHarness, caplog: pytest.LogCaptureFixture
) -> None:
    h = make_harness(num_pages=5, page_size=2, reserve_output_ratio=0.0)  # 4 usable pages
    h.add("old", [1, 2, 3], max_new_tokens=4)
    h.add("new", [4, 5, 6], max_new_tokens=4)
    with caplog.at_level(logging.INFO, logger="glm47.worker.engine.scheduler"):
        h.run()
    lines = [r.getMessage() for r in caplog.records if "preempted request" in r.getMessage()]
    assert h.engine.scheduler.num_preemptions >= 1
    assert len(lines) == h.engine.scheduler.num_preemptions
    assert all(r.levelno == logging.INFO for r in caplog.records if "preempted" in r.getMessage())
    assert lines[0].startswith("preempted request new:")
