"""The worker entry point's garbage-collector settings."""

from __future__ import annotations

import gc
import weakref

from glm47.worker.__main__ import GC_GEN0_THRESHOLD, tune_gc


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_tune_gc_freezes_start_up_objects_and_still_collects_later_cycles() -> None:
    before = gc.get_threshold()
    alive = [[i] for i in range(1000)]  # containers built at start-up, like the model's
    try:
        tune_gc()
        assert gc.get_freeze_count() >= len(alive)
        assert gc.get_threshold() == (GC_GEN0_THRESHOLD, before[1], before[2])
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle made while serving
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        assert gone() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
