"""The repeating-layer search of benchmarks/graph_profile.py and engine_profile.py on kernel-name
traces shaped like the GPU's: one graphed step, and engine steps back to back."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = str(Path(__file__).resolve().parents[2] / "benchmarks")
sys.path.insert(0, BENCHMARKS)  # the scripts import each other by name
try:
    from engine_profile import step_layer_runs
    from graph_profile import find_period
finally:
    sys.path.remove(BENCHMARKS)  # its kernels.py would shadow the kernels package

# A layer whose kernel names repeat inside it (several products share one kernel).
LAYER = ["norm", "gemm", "norm2", "gemm", "rope", "gemm", "split", "merge", "gemm", "gemm",
         "router", "moe", "moe", "sum"]  # fmt: skip
LAYERS = 46


def step(tail: list[str]) -> list[str]:
    return ["embed", "norm", "gemm", "attn", "mlp"] + LAYER * LAYERS + tail


def test_one_graphed_step_gives_the_layer() -> None:
    names = step(["norm", "lm_head"])
    start, period = find_period(names)
    assert period == len(LAYER)
    assert names[start : start + period] == LAYER


@pytest.mark.parametrize("tail", [["norm", "lm_head", "argmax", "copy"], ["lm_head"]])
@pytest.mark.parametrize("steps", [1, 3, 20])
def test_engine_steps_give_one_run_of_layers_each(tail: list[str], steps: int) -> None:
    """Unbounded, the longest repeating block of many steps is the step itself; the trace's
    middle can fall on a step boundary (20 steps), outside any layer; and one step's points
    reach past its end."""
    names = step(tail) * steps
    period, runs = step_layer_runs(names, steps)
    assert period == len(LAYER)
    assert len(runs) == steps
    for first, end in runs:
        assert end - first == LAYERS * len(LAYER)
        assert names[first : first + period] == LAYER
