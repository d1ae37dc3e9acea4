"""Fixtures of the engine tests; the fakes live in engine_fakes.py."""

from __future__ import annotations

import pytest

from tests.worker.engine.engine_fakes import MakeHarness, harness_factory


@pytest.fixture
def make_harness() -> MakeHarness:
    return harness_factory()
