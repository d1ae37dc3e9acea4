"""The objects that cross the scheduler → runner → scheduler boundary.

The scheduler decides, per step, which tokens of which requests are computed; the runner turns that
into tensors, runs the model and samples; the scheduler then applies the sampled tokens. Nothing else
crosses this seam.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Temperatures below this sample greedily: 1 / temperature would leave fp32 (1e-40 gives inf, and
# the scaled logits inf and NaN), and the draw is the argmax well before that.
GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings (the `Request` fields of docs/wire.md)."""

    temperature: float = 1.0  # below GREEDY_BELOW (0 included): greedy
    top_p: float = 1.0  # (0, 1]
    top_k: int = -1  # -1 or 0 = off
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    logprobs: int = -1  # -1 none, 0 sampled token only, k > 0 also top k
    # OpenAI's logit_bias as two columns: bias logit_bias_values[j] added to the logit of token
    # logit_bias_ids[j] (distinct ids).
    logit_bias_ids: tuple[int, ...] = ()
    logit_bias_values: tuple[float, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW or self.top_k == 1


@dataclass
class ScheduledSeq:
    """One request's share of a step.

    Invariant: the KV cache already holds positions [0, start_pos) of this request in the pages
    `page_ids`; this step computes positions [start_pos, start_pos + len(token_ids)) and writes their
    latents into the same pages. `page_ids` covers at least start_pos + len(token_ids) positions.
    """

    rid: str
    token_ids: list[int]  # tokens computed this step (a prompt chunk, or the last sampled token)
    start_pos: int  # tokens of this request already in the KV cache
    page_ids: list[int]  # page table: page i holds positions [i*page_size, (i+1)*page_size)
    sample: bool  # True when this step ends at a position whose next token must be sampled
    sampling: SamplingParams = field(default_factory=SamplingParams)
    prompt_ids: list[int] = field(default_factory=list)  # for the repetition penalty
    output_ids: list[int] = field(default_factory=list)  # generated so far, for penalties and seeds
    # Ids the sampler sets to -inf after penalties: the stop and eos ids while fewer than
    # min_new_tokens tokens are generated, else empty.
    banned_token_ids: tuple[int, ...] = ()
    # The output count from which the ban lifts (min_new_tokens): a draft's row past it has none.
    ban_lifts_at: int = 0
    # Draft tokens (speculative decoding) at the end of token_ids, to verify: the runner samples
    # the row of the last known token and the row of every draft, in order.
    draft_ids: list[int] = field(default_factory=list)
    # Prompt logprobs: the prompt tokens that follow its first len(score_ids) rows; the runner
    # reports each one's logprob under the logits of the row before it (and the top
    # `score_top` there), unpenalised. Empty: nothing to score.
    score_ids: list[int] = field(default_factory=list)
    score_top: int = 0
    # Running ahead: the last of output_ids (and token_ids) is a placeholder for a token still on
    # the device, which the runner takes from an earlier step's samples (`TokenFeed`).
    fed: bool = False
    # Constrained decoding: the ids the sample may take (packed, `grammar.Constraint.mask`);
    # None: any. `draft_allowed`: the same for each draft's row.
    allowed: bytes | None = None
    draft_allowed: list[bytes | None] = field(default_factory=list)

    @property
    def num_samples(self) -> int:
        """Rows sampled this step: 0, or 1 plus one per draft."""
        return 1 + len(self.draft_ids) if self.sample else 0


@dataclass
class ScheduledBatch:
    """Everything the runner needs for one forward pass."""

    seqs: list[ScheduledSeq]
    # Tokens of the batch that are prompt tokens (the scheduler counts them as it plans; the
    # rest are outputs fed back to decode, drafts, or recomputed outputs).
    num_prompt_tokens: int = 0
    # True when a sequence has `score_ids` (prompt logprobs to compute this step).
    scores_prompts: bool = False

    @property
    def num_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.seqs)

    @property
    def is_decode(self) -> bool:
        """True when every sequence computes exactly one token (the CUDA-graph case)."""
        return all(len(s.token_ids) == 1 for s in self.seqs)


@dataclass
class SampleOutput:
    """What the runner returns for one sampled row of a sequence."""

    rid: str
    token_id: int
    logprob: float | None = None  # log_softmax of the penalised logits at token_id
    top_logprobs: list[tuple[int, float]] | None = None  # best first


@dataclass
class TokenFeed:
    """Input tokens of a step taken on the device from an earlier step's samples (the step's
    batch holds placeholders for them): sequence `seqs[i]` of the batch, which computes one
    token, reads `tokens[rows[i]]`."""

    tokens: Any  # [N] int64 tensor on the runner's device (`DeferredSamples.tokens`)
    rows: list[int]
    seqs: list[int]  # indices into the batch's seqs, ascending


@dataclass
class PromptScores:
    """The logprobs of one sequence's `score_ids`, in order, with their ranks."""

    rid: str
    start_pos: int  # the position of the first scored row: it scores prompt token start_pos + 1
    logprobs: list[float]
    # Per scored token: 1 + the number of ids with a strictly larger logprob at its row (1 = the
    # most likely id); 0 where no score was computed.
    ranks: list[int]
    top: list[list[tuple[int, float]]] | None = None  # best first, when score_top > 0


@dataclass
class RunnerOutput:
    """The runner's answer to a `ScheduledBatch`: `num_samples` entries per sequence, in batch
    order (one per sequence that asked to sample, plus one per draft), and the prompt scores of
    the sequences with `score_ids`."""

    samples: list[SampleOutput]
    scores: list[PromptScores] = field(default_factory=list)


@dataclass
class DraftInput:
    """One sequence of the step just run, for the drafter (speculative decoding): its first rows,
    whose next token is known now, and how many draft tokens to propose after them."""

    rid: str
    first_row: int  # index of the sequence's first row in the step's batch
    start_pos: int  # position of that row
    next_ids: list[int]  # the token that follows each of its first len(next_ids) rows, >= 1
    page_ids: list[int]  # its page table, covering the positions the drafts will take
    num_drafts: int  # tokens to propose; 0: only bring the drafter's KV cache up to date
