"""The router <-> worker messages of docs/wire.md as typed dataclasses, and `WireError`, the
error a malformed message raises. The msgpack codec lives in `glm47.worker.wire`, which re-exports
these names."""

from __future__ import annotations

from dataclasses import dataclass, field

PROTOCOL_VERSION = 1


class WireError(Exception):
    """A message (or one request of a `submit`) that does not follow the contract."""

    def __init__(
        self, message: str, *, code: str = "protocol", rid: str | None = None, fatal: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code  # an `Error.code` of docs/wire.md
        self.rid = rid
        self.fatal = fatal

    def to_message(self) -> Error:
        return Error(rid=self.rid, code=self.code, message=self.message, fatal=self.fatal)


@dataclass(frozen=True)
class WireGrammar:
    """A request's output grammar (docs/wire.md `Grammar`): JSON under `schema` (JSON text; None
    for any JSON object), exactly one of `choices`, a match of `regex`, a sentence of the EBNF
    grammar `ebnf`, text under the structural tag `structural_tag` (JSON text), or the rest of a
    forced tool call (`tool_calls`, JSON text); from the token after `start_after` (None: from
    the first)."""

    schema: str | None = None
    start_after: int | None = None
    choices: list[str] | None = None
    regex: str | None = None
    tool_calls: str | None = None
    ebnf: str | None = None
    structural_tag: str | None = None
    compact: bool = False  # JSON without whitespace between tokens


@dataclass(frozen=True)
class WireReasoningBudget:
    """A bound on the reasoning a prompt opened (docs/wire.md `ReasoningBudget`): once `tokens`
    tokens have been generated inside it, the next token is `end_id` (`</think>`)."""

    tokens: int
    end_id: int


@dataclass(frozen=True)
class WireRequest:
    """One request of a `submit` (docs/wire.md `Request`)."""

    rid: str
    input_ids: list[int]
    max_new_tokens: int
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int = -1
    mtp: bool = True
    prompt_logprobs: int = -1
    logit_bias: list[tuple[int, float]] = field(default_factory=list)
    grammar: WireGrammar | None = None
    reasoning_budget: WireReasoningBudget | None = None
    allowed_token_ids: list[int] = field(default_factory=list)
    bad_words: list[list[int]] = field(default_factory=list)
    priority: int = 0
    cache_salt: str | None = None


@dataclass(frozen=True)
class Hello:
    client: str | None = None


@dataclass(frozen=True)
class Submit:
    reqs: list[WireRequest]
    rejected: list[WireError] = field(default_factory=list)  # decode only: bad requests, in order


@dataclass(frozen=True)
class Abort:
    rids: list[str]


@dataclass(frozen=True)
class FlushCache:
    """Drop every prefix-cache page no request holds (no answer)."""


@dataclass(frozen=True)
class Ready:
    model: str
    vocab_size: int
    eos_token_ids: list[int]
    max_req_total_len: int
    max_running_requests: int
    kv_capacity_tokens: int
    mtp_step: int
    worker_id: str
    max_waiting_requests: int = 0  # capacity of the waiting queue (0: not stated)
    protocol: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class Output:
    """One request's news in a `step` message."""

    rid: str
    ids: list[int]
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None
    finish: str | None = None  # "stop", "length" or "abort" on the last output
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    spec_accepted: int | None = None
    prompt_logprobs: list[float] | None = None  # of prompt tokens 1..P-1, on the first output
    prompt_top_logprobs: list[list[tuple[int, float]]] | None = None  # per prompt token 1..P-1
    # Per prompt token 1..P-1: 1 + the ids more likely than it at its position; 0 where unscored.
    prompt_ranks: list[int] | None = None


STATS_KEYS = tuple(
    "waiting running kv_pages_used kv_pages_cached kv_pages_total prefix_hit_tokens prompt_tokens "
    "spec_drafted spec_accepted preemptions".split()
)  # the keys of the wire `Stats` map


@dataclass(frozen=True)
class Step:
    outs: list[Output]
    stats: dict[str, int] = field(default_factory=dict)  # keys from STATS_KEYS


@dataclass(frozen=True)
class Error:
    rid: str | None
    code: str  # invalid_request, queue_full, too_long, protocol, internal
    message: str
    fatal: bool = False


Message = Hello | Submit | Abort | FlushCache | Ready | Step | Error
