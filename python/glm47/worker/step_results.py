"""What a forward pass gives back: samples (the sampler's interface and a step whose samples are
still on the device) and prompt logprobs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from glm47.worker.batch import (
    PromptScores,
    RunnerOutput,
    SampleOutput,
    ScheduledBatch,
    ScheduledSeq,
)
from glm47.worker.sampling import DeferredSamples, score_tokens

# Rows whose logits are computed at once for prompt logprobs: [SCORE_ROWS, vocab] fp32 is 0.3 GiB
# at the real vocabulary.
SCORE_ROWS = 512


class Sampler(Protocol):
    def sample(self, logits: torch.Tensor, seqs: list[ScheduledSeq]) -> list[SampleOutput]:
        """logits [N, V] fp32, one row per entry of `seqs` (the sequences with sample=True)."""
        ...

    def sample_deferred(
        self, logits: torch.Tensor, seqs: list[ScheduledSeq], last: torch.Tensor | None = None
    ) -> DeferredSamples:
        """`sample` with the results left on the device (sampling.Sampler.sample_deferred);
        `last` [N]: each row's input token, which fed rows' penalties read."""
        ...


class LaunchedStep:
    """A step queued on the device (`ModelRunner.launch`); `collect` waits for its samples.

    With `pending`, the step's forward pass is queued but its sampling is not: `sample` queues it
    (the engine calls it once the rows' allowed-token masks are known)."""

    def __init__(
        self,
        samples: DeferredSamples | None,
        scores: list[PromptScores],
        pending: Callable[[], DeferredSamples] | None = None,
    ) -> None:
        self.samples = samples
        self._scores = scores
        self._pending = pending

    @property
    def waits_to_sample(self) -> bool:
        """True while the sampling is not queued yet (`sample`)."""
        return self._pending is not None

    def sample(self) -> None:
        """Queue the sampling that `launch` left pending, reading the rows' settings now."""
        assert self._pending is not None, "the step's sampling is queued already"
        self.samples, self._pending = self._pending(), None

    @property
    def tokens(self) -> torch.Tensor | None:
        """The sampled tokens on the device, in sample order (None: the step sampled nothing)."""
        return self.samples.tokens if self.samples is not None else None

    def collect(self) -> RunnerOutput:
        assert self._pending is None, "collect before sample"
        samples = self.samples.collect() if self.samples is not None else []
        return RunnerOutput(samples=samples, scores=self._scores)


def score_prompts(
    compute_logits: Callable[[torch.Tensor], torch.Tensor],  # [R, H] hidden -> [R, V] fp32
    batch: ScheduledBatch,
    hidden: torch.Tensor,  # [T, H]: the step's final hidden states, its sequences in batch order
) -> list[PromptScores]:
    """The prompt logprobs of the sequences with `score_ids`, their logits computed
    `SCORE_ROWS` rows at a time (a whole chunk's [T, V] logits would not fit)."""
    scores: list[PromptScores] = []
    if not batch.scores_prompts:
        return scores
    first_row = 0  # a sequence's rows are consecutive, in batch order
    for seq in batch.seqs:
        if seq.score_ids:
            logprobs: list[float] = []
            ranks: list[int] = []
            top: list[list[tuple[int, float]]] | None = [] if seq.score_top > 0 else None
            next_ids = torch.tensor(seq.score_ids, dtype=torch.int64, device=hidden.device)
            for lo in range(0, len(seq.score_ids), SCORE_ROWS):
                hi = min(lo + SCORE_ROWS, len(seq.score_ids))
                logits = compute_logits(hidden[first_row + lo : first_row + hi])
                values, places, best = score_tokens(logits, next_ids[lo:hi], seq.score_top)
                logprobs += values
                ranks += places
                if top is not None and best is not None:
                    top += best
            scores.append(PromptScores(seq.rid, seq.start_pos, logprobs, ranks, top))
        first_row += len(seq.token_ids)
    return scores
