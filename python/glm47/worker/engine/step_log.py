"""A periodic one-line summary of the engine's steps, for the worker's log.

Every `interval_s` seconds in which steps ran, one line: how many steps (and how many of them were
queued on the device ahead of the samples of the step before, engine.py), their mean and longest
wall time, prompt and generation throughput, and the batch and KV state at the end of the period.
The longest step is what shows a stall (a compilation, a slow admission step) that averages hide.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class StepLog:
    """Accumulates step timings; `report` returns the period's line once it is due."""

    interval_s: float  # 0: never report
    clock: Callable[[], float] = time.monotonic
    _start: float = field(init=False)
    _steps: int = field(default=0, init=False)
    _seconds: float = field(default=0.0, init=False)
    _longest: float = field(default=0.0, init=False)
    _prompt: int = field(default=0, init=False)
    _generated: int = field(default=0, init=False)
    _ahead: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.interval_s < 0:
            raise ValueError(f"the stats interval must be >= 0 seconds, got {self.interval_s}")
        self._start = self.clock()

    def record(
        self, seconds: float, prompt_tokens: int, generated_tokens: int, ahead: bool = False
    ) -> None:
        """One step: its wall time, prompt tokens computed, tokens emitted, whether it was queued
        ahead of the samples of the step before."""
        if self._steps == 0 and self.clock() - self._start > self.interval_s:
            self._start = self.clock() - seconds  # an idle stretch does not dilute the rates
        self._steps += 1
        self._seconds += seconds
        self._longest = max(self._longest, seconds)
        self._prompt += prompt_tokens
        self._generated += generated_tokens
        self._ahead += ahead

    def due(self) -> bool:
        """True when a report would say something now (cheap: call it every step)."""
        return bool(
            self.interval_s and self._steps and self.clock() - self._start >= self.interval_s
        )

    def report(self, stats: dict[str, int]) -> str | None:
        """The line for the period just ended, if `interval_s` has passed and steps ran; the
        period then starts again. `stats` is the engine's wire stats map."""
        now = self.clock()
        elapsed = now - self._start
        if self.interval_s == 0 or self._steps == 0 or elapsed < self.interval_s:
            return None
        total = max(1, stats.get("kv_pages_total", 0))
        ahead = f", {self._ahead} run ahead" if self._ahead else ""
        line = (
            f"{self._steps} steps{ahead} in {elapsed:.1f} s (mean {1e3 * self._seconds / self._steps:.1f}"
            f" ms, longest {1e3 * self._longest:.1f} ms); prompt {self._prompt / elapsed:.0f}"
            f" tok/s, generation {self._generated / elapsed:.0f} tok/s; running"
            f" {stats.get('running', 0)}, waiting {stats.get('waiting', 0)}, KV"
            f" {100 * stats.get('kv_pages_used', 0) / total:.1f}% used"
        )
        self._start = now
        self._steps = self._prompt = self._generated = self._ahead = 0
        self._seconds = self._longest = 0.0
        return line
