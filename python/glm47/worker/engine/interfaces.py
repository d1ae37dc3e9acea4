"""What the engine needs of the model runner, and what a step hands back per request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from glm47.worker.batch import DraftInput, RunnerOutput, ScheduledBatch, TokenFeed


class Runner(Protocol):
    """What the engine needs of `worker.runner.ModelRunner`."""

    @property
    def num_pages(self) -> int: ...  # KV pages, padding page 0 included

    @property
    def page_size(self) -> int: ...

    def run(self, batch: ScheduledBatch, sampler: Any) -> RunnerOutput: ...

    def propose_drafts(self, items: list[DraftInput]) -> dict[str, list[int]]: ...


class Launched(Protocol):
    """A step queued on the device (`ModelRunner.launch`)."""

    @property
    def tokens(self) -> Any: ...  # [N] sampled tokens on the device, in sample order; or None

    @property
    def waits_to_sample(self) -> bool: ...  # launched with defer_sampling, `sample` not called

    def sample(self) -> None: ...  # queue the sampling deferred at launch

    def collect(self) -> RunnerOutput: ...


class Launcher(Protocol):
    """A runner that can queue a step and hand its samples over later (`ModelRunner.launch`);
    the engine runs ahead only with one."""

    def launch(
        self,
        batch: ScheduledBatch,
        sampler: Any,
        feed: TokenFeed | None = None,
        defer_sampling: bool = False,
    ) -> Launched: ...


@dataclass
class StepOutput:
    """One request's news from one step: the fields of the wire `Output` (docs/wire.md)."""

    rid: str
    ids: list[int]  # new token ids (empty on an abort)
    logprobs: list[float] | None = None  # one per id, when the request asked for logprobs >= 0
    top_logprobs: list[list[tuple[int, float]]] | None = None  # per id, best first (logprobs > 0)
    finish: str | None = None  # "stop" | "length" | "abort" on the last output
    prompt_tokens: int | None = None  # on a request's first output
    cached_tokens: int | None = None  # on a request's first output
    spec_accepted: int | None = None  # draft tokens accepted this step (MTP)
    prompt_logprobs: list[float] | None = None  # prompt tokens 1..P-1, on the first output
    prompt_top_logprobs: list[list[tuple[int, float]]] | None = None  # per prompt token 1..P-1
    prompt_ranks: list[int] | None = None  # per prompt token 1..P-1: its rank, 0 where unscored
