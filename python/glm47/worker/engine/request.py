"""One request's state inside the engine.

Terms, used the same way in every engine file:
- known tokens: `all_token_ids` = prompt + generated output, in order.
- wanted tokens: known tokens + `draft_token_ids` (speculative tokens proposed for verification);
  `num_tokens_wanted` is their count. With no speculation, wanted == known.
- computed tokens: the first `num_computed_tokens` wanted tokens, whose latents are in the KV cache
  in the pages `page_ids` (page i holds positions [i * page_size, (i + 1) * page_size)).

Invariants while RUNNING: 0 <= num_computed_tokens < num_tokens_wanted (there is always something
to compute: the rest of the prompt, or the last sampled token) and
len(page_ids) * page_size >= num_computed_tokens. WAITING and PREEMPTED requests hold no pages and
have num_computed_tokens == 0. A FINISHED request holds no pages.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from glm47.worker.batch import PromptScores, SamplingParams
from glm47.worker.engine.interfaces import StepOutput
from glm47.worker.grammar import Constraint
from glm47.worker.wire_messages import WireGrammar, WireReasoningBudget


class RequestState(enum.Enum):
    WAITING = "waiting"  # queued, never admitted
    RUNNING = "running"  # in the running batch, holds pages
    PREEMPTED = "preempted"  # was running, pages given back; queued again at the front
    FINISHED = "finished"  # done; holds nothing


class FinishReason(enum.StrEnum):
    """The wire `finish` values."""

    STOP = "stop"  # an eos id (unless ignore_eos) or a stop id, at or after min_new_tokens
    LENGTH = "length"  # max_new_tokens generated, or max_req_total_len reached
    ABORT = "abort"  # aborted by the router


@dataclass(eq=False)
class Request:
    """A request as the engine tracks it. Built by the service from a wire `submit` entry."""

    rid: str
    prompt_ids: list[int]  # [P] prompt token ids, P >= 1
    max_new_tokens: int  # >= 1
    sampling: SamplingParams = field(default_factory=SamplingParams)
    min_new_tokens: int = 0  # eos and stop ids do not finish the request before this many tokens
    stop_token_ids: frozenset[int] = frozenset()  # extra ids that finish with reason "stop"
    ignore_eos: bool = False  # do not finish on eos_token_ids
    eos_token_ids: frozenset[int] = frozenset()  # empty: Engine.add_request fills the model's ids
    mtp: bool = True  # speculative drafting allowed for this request
    # Prompt logprobs: -1 none; 0: the logprob of each prompt token after the first, under the
    # model's logits at the position before it; k > 0: also the top k there.
    prompt_logprobs: int = -1
    # JSON output under this grammar (constrained decoding); None: free text.
    grammar: WireGrammar | None = None
    # The reasoning the prompt opened is closed after this many tokens; None: unbounded.
    reasoning_budget: WireReasoningBudget | None = None
    priority: int = 0  # under the priority policy, lower values are served (and kept) first
    allowed_token_ids: list[int] = field(default_factory=list)  # every sample is one; empty: any
    bad_words: list[list[int]] = field(default_factory=list)  # token sequences never completed
    # Shares prefix-cache pages only with requests of the same salt (vLLM's `cache_salt`).
    cache_salt: str | None = None

    # Engine-owned state below; never set by the caller.
    # The grammar's matcher (`Engine.add_request` builds it), told every sampled token.
    constraint: Constraint | None = field(default=None, init=False, repr=False)
    state: RequestState = field(default=RequestState.WAITING, init=False)
    output_ids: list[int] = field(default_factory=list, init=False)  # [O] generated tokens
    all_token_ids: list[int] = field(default_factory=list, init=False)  # [P + O] prompt + output
    draft_token_ids: list[int] = field(default_factory=list, init=False)  # [D] drafts to verify
    num_computed_tokens: int = field(default=0, init=False)  # wanted tokens already in the KV cache
    page_ids: list[int] = field(default_factory=list, init=False)  # page table, see module doc
    # Prompt tokens served from the prefix cache at first admission; None until admitted once.
    num_cached_tokens: int | None = field(default=None, init=False)
    finish_reason: FinishReason | None = field(default=None, init=False)
    first_output_sent: bool = field(default=False, init=False)  # prompt_tokens already reported
    num_preemptions: int = field(default=0, init=False)
    # The prompt logprobs computed so far, position p - 1 holding prompt token p's (p >= 1), NaN
    # where none arrived (rank 0 there): allocated with the first ones, handed to the first output.
    prompt_scores: list[float] | None = field(default=None, init=False, repr=False)
    prompt_ranks: list[int] | None = field(default=None, init=False, repr=False)
    prompt_top: list[list[tuple[int, float]]] | None = field(default=None, init=False, repr=False)
    # The ids masked while fewer than min_new_tokens are generated; built on first use.
    _min_tokens_ban: tuple[int, ...] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.all_token_ids = list(self.prompt_ids)

    @property
    def has_token_rules(self) -> bool:
        """Whether a reasoning budget, allowed ids or bad words constrain the samples beside the
        grammar (grammar.py `Grammars.layered`)."""
        return self.reasoning_budget is not None or bool(self.allowed_token_ids or self.bad_words)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_ids)

    @property
    def scores_prompt(self) -> bool:
        """True while the prompt's logprobs are still to be computed and reported: its prompt
        positions then run through the model (no prefix-cache hit) and are scored."""
        return self.prompt_logprobs >= 0 and not self.first_output_sent

    def first_output(self, out: StepOutput) -> StepOutput:
        """`out`, with the fields only a request's first output carries when it is the first:
        the prompt's token counts and, when asked for, its logprobs."""
        if not self.first_output_sent:
            self.first_output_sent = True
            out.prompt_tokens = self.num_prompt_tokens
            out.cached_tokens = self.num_cached_tokens or 0
            if self.prompt_logprobs >= 0 and out.ids:  # an abort before any sample has none
                scores = self.take_prompt_scores()
                out.prompt_logprobs, out.prompt_ranks = scores.logprobs, scores.ranks
                out.prompt_top_logprobs = scores.top
        return out

    def take_prompt_scores(self) -> PromptScores:
        """The prompt's logprobs from prompt token 1 on (NaN where none were computed), their
        ranks (0 there) and, with prompt_logprobs > 0, the top alternatives; the request keeps no
        copy."""
        if self.prompt_scores is None:
            self._allocate_prompt_scores()
        assert self.prompt_scores is not None and self.prompt_ranks is not None
        scores = PromptScores(self.rid, 0, self.prompt_scores, self.prompt_ranks, self.prompt_top)
        self.prompt_scores = self.prompt_ranks = self.prompt_top = None
        return scores

    def _allocate_prompt_scores(self) -> None:
        """NaN scores, rank 0 (and empty alternatives, with prompt_logprobs > 0) everywhere."""
        size = max(0, self.num_prompt_tokens - 1)
        self.prompt_scores = [math.nan] * size
        self.prompt_ranks = [0] * size
        self.prompt_top = [[] for _ in range(size)] if self.prompt_logprobs > 0 else None

    def record_prompt_scores(self, scores: PromptScores) -> None:
        """Store the scores of prompt tokens start_pos + 1 .. start_pos + len(logprobs)."""
        if self.prompt_scores is None:
            self._allocate_prompt_scores()
        assert self.prompt_scores is not None and self.prompt_ranks is not None
        start, end = scores.start_pos, scores.start_pos + len(scores.logprobs)
        size = len(self.prompt_scores)
        assert end <= size, f"{self.rid}: scores past the prompt ({end} > {size})"
        self.prompt_scores[start:end] = scores.logprobs
        self.prompt_ranks[start:end] = scores.ranks
        if self.prompt_top is not None and scores.top is not None:
            self.prompt_top[start:end] = scores.top

    @property
    def num_tokens(self) -> int:
        """Known tokens: prompt + output."""
        return len(self.all_token_ids)

    @property
    def num_tokens_wanted(self) -> int:
        """Known tokens + draft tokens: what the KV cache should hold before the next sample."""
        return len(self.all_token_ids) + len(self.draft_token_ids)

    @property
    def num_tokens_to_compute(self) -> int:
        return self.num_tokens_wanted - self.num_computed_tokens

    def wanted_tokens(self, start: int, end: int) -> list[int]:
        """Wanted tokens [start, end): known tokens, then drafts."""
        known = len(self.all_token_ids)
        if end <= known:
            return self.all_token_ids[start:end]
        drafts = self.draft_token_ids[max(0, start - known) : end - known]
        return self.all_token_ids[start:known] + drafts

    def banned_token_ids(self) -> tuple[int, ...]:
        """Ids the next sample must not be: before `min_new_tokens` outputs, every id that would
        stop the request (stop ids, and eos ids unless `ignore_eos`); afterwards none."""
        if len(self.output_ids) >= self.min_new_tokens:
            return ()
        if self._min_tokens_ban is None:
            eos = frozenset() if self.ignore_eos else self.eos_token_ids
            self._min_tokens_ban = tuple(sorted(self.stop_token_ids | eos))
        return self._min_tokens_ban

    def append_output(self, token_id: int) -> None:
        self.output_ids.append(token_id)
        self.all_token_ids.append(token_id)

    def check_finish(self, max_total_len: int) -> FinishReason | None:
        """The finish reason after the last appended token, if any. A stop beats a length limit."""
        num_out = len(self.output_ids)
        if num_out == 0:
            return None
        if num_out >= self.min_new_tokens:
            last = self.output_ids[-1]
            if last in self.stop_token_ids or (not self.ignore_eos and last in self.eos_token_ids):
                return FinishReason.STOP
        if self.constraint is not None and self.constraint.is_done():
            return FinishReason.STOP  # the JSON document is complete
        if num_out >= self.max_new_tokens or len(self.all_token_ids) >= max_total_len:
            return FinishReason.LENGTH
        return None
