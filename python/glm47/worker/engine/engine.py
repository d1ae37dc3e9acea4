"""The engine: requests in, one step at a time, per-request outputs out.

One step = schedule (tokens under a budget) → runner.run (model + sampler) → apply samples (append,
check stop) → free finished requests → outputs. The service calls `add_request`, `abort` and `step`
from one thread; nothing here is thread-safe or blocking besides the runner.

Running ahead (`EngineConfig.overlap_schedule`): the engine queues step n + 1 on the device
before it reads step n's samples, so the host's work between steps (applying samples, sending
outputs, planning, building inputs) overlaps the device's. Step n + 1 is planned with a
placeholder for each sampled request's unknown token n; the runner takes the real one on the
device from step n's samples (`TokenFeed`), and the placeholder is replaced when step n's samples
arrive. Planning early gives the step that planning after the samples would, except for
requests that step n stops (a stop or eos token): they have had one more step computed for
nothing, whose result is dropped. So step n + 1 may admit waiting requests and carry prompt
chunks, and a request whose length ends with step n's token is left out of it (with many
requests running, one ends so nearly every step). Penalties read the fed token on the device
too (`ScheduledSeq.fed`). A step with JSON-constrained samples is queued ahead without its
sampling: the masks need the samples before, so its forward pass runs while the host applies
them, and its sampling is queued after (`LaunchedStep.sample`). Not run ahead: a step after one
with drafts, one with a running
request that step n left out, and one whose requests may need more pages than are free or held
by the prefix cache alone (planning it could preempt). (A step with prompt scores is queued
ahead too, though computing them waits for the step on the host.) A request that arrives while
a step is queued joins the step after it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

from glm47.worker.batch import (
    DraftInput,
    RunnerOutput,
    SampleOutput,
    ScheduledBatch,
    TokenFeed,
)
from glm47.worker.config import EngineConfig
from glm47.worker.engine.errors import InvalidRequestError, QueueFullError, TooLongError
from glm47.worker.engine.interfaces import Launched, Launcher, Runner, StepOutput
from glm47.worker.engine.page_pool import PagePool
from glm47.worker.engine.prefix_cache import PrefixCache
from glm47.worker.engine.request import FinishReason, Request, RequestState
from glm47.worker.engine.scheduler import Scheduler
from glm47.worker.engine.step_log import StepLog
from glm47.worker.grammar import Constraint, Grammars
from glm47.worker.token_rules import Layer

log = logging.getLogger(__name__)

# A step this long is logged with its shape: far above any steady-state step, so it points at a
# stall (a kernel compiled at run time, a host-side hitch) rather than at load.
SLOW_STEP_S = 1.0


# The token id a request holds for its sample of a step still on the device (running ahead). Any
# valid id: the runner replaces it on the device before the model reads it.
PLACEHOLDER = 0


@dataclass
class _Queued:
    """A step on the device whose samples are not applied yet."""

    batch: ScheduledBatch
    launched: Launched | None  # None: already run (`result`)
    result: RunnerOutput | None = None
    # The requests holding a placeholder for this step's samples while the step after it is
    # queued (None: nothing was queued after it).
    placeholders: list[Request] | None = None
    ahead: bool = False  # itself queued before the samples of the step before were read

    def collect(self) -> RunnerOutput:
        if self.result is None:
            assert self.launched is not None
            self.result = self.launched.collect()
        return self.result


class Engine:
    """Continuous batching over a paged KV cache with chunked prefill, prefix cache, preemption."""

    def __init__(
        self,
        config: EngineConfig,
        runner: Runner,
        sampler: Any,
        eos_token_ids: list[int],
        grammars: Grammars | None = None,
    ) -> None:
        """`grammars` builds the JSON constraints of requests that ask for one (None: such
        requests are refused)."""
        if config.max_req_total_len is None:
            raise ValueError("EngineConfig.max_req_total_len unset: use config.with_model_limits()")
        self.config = config
        self.runner = runner
        self.sampler = sampler
        self.eos_token_ids = frozenset(eos_token_ids)
        self.grammars = grammars
        self._constrained: set[str] = set()  # the rids of live requests with a grammar
        self.pool = PagePool(runner.num_pages, runner.page_size)
        self.cache = PrefixCache(self.pool, enabled=config.enable_prefix_cache)
        self.scheduler = Scheduler(config, self.pool, self.cache)
        # Longest prompt + output served: the configured limit, capped so one request alone always
        # fits the KV pool (then preempting everyone else always makes room for the oldest).
        self.max_req_total_len = min(config.max_req_total_len, self.pool.capacity_tokens)
        self._requests: dict[str, Request] = {}  # waiting and running, by rid
        self._pending: list[StepOutput] = []  # abort outputs for the next step
        self._queued: _Queued | None = None  # a step run ahead, its samples still on the device
        launches = config.overlap_schedule and hasattr(runner, "launch")
        self._launcher: Launcher | None = cast(Launcher, runner) if launches else None
        self.steps_ahead = 0  # cumulative steps queued before the samples of the one before
        self.spec_drafted = 0  # cumulative draft tokens proposed
        self.spec_accepted = 0  # cumulative draft tokens accepted
        self.step_log = StepLog(config.log_stats_interval)
        # Draft tokens proposed per request and step (MTP speculative decoding); 0: none.
        self.mtp_step = config.mtp_step if getattr(runner, "can_draft", False) else 0
        if config.mtp_step and not self.mtp_step:
            raise ValueError("mtp_step > 0 needs a model with its MTP layer loaded")

    # -- requests in --------------------------------------------------------------------------

    def add_request(self, req: Request) -> None:
        """Queue a request. Raises `InvalidRequestError`, `TooLongError` or `QueueFullError`
        (their `.code` is the wire error code); a rejected request leaves no trace."""
        self._validate(req)
        if not req.eos_token_ids:
            req.eos_token_ids = self.eos_token_ids
        if req.grammar is not None or req.has_token_rules:
            req.constraint = self._constraint(req)
            self._constrained.add(req.rid)
        self._requests[req.rid] = req
        self.scheduler.add(req)

    def _validate(self, req: Request) -> None:
        if req.rid in self._requests:
            raise InvalidRequestError(req.rid, f"request id {req.rid!r} is already in use")
        if not req.prompt_ids:
            raise InvalidRequestError(req.rid, "input_ids must not be empty")
        if req.max_new_tokens < 1 or req.min_new_tokens < 0:
            raise InvalidRequestError(req.rid, "need max_new_tokens >= 1 and min_new_tokens >= 0")
        if req.state is not RequestState.WAITING or req.output_ids:
            raise InvalidRequestError(req.rid, "a request can be added only once")
        if req.num_prompt_tokens >= self.max_req_total_len:
            why = f"max_req_total_len {self.max_req_total_len}"
            if self.max_req_total_len < (self.config.max_req_total_len or 0):
                why = f"the KV cache capacity of {self.max_req_total_len} tokens"
            raise TooLongError(
                req.rid,
                f"prompt of {req.num_prompt_tokens} tokens leaves no room for output under {why}",
            )
        if req.priority and self.config.scheduling_policy != "priority":
            raise InvalidRequestError(
                req.rid, "priority needs the worker started with --scheduling-policy priority"
            )
        if len(self.scheduler.waiting) >= self.config.max_waiting_requests:
            raise QueueFullError(
                req.rid, f"waiting queue full ({self.config.max_waiting_requests} requests)"
            )

    def _constraint(self, req: Request) -> Constraint:
        """The constraint of `req`'s grammar, which ends at its stop ids and (unless it ignores
        them) the eos ids, under its reasoning budget and token rules."""
        ends = set(req.stop_token_ids) | (set() if req.ignore_eos else set(req.eos_token_ids))
        try:
            if self.grammars is None:
                raise ValueError("constrained decoding is not available here")
            inner = None
            if req.grammar is not None:
                inner = self.grammars.constraint(req.grammar, sorted(ends))
            if inner is not None and not req.has_token_rules:
                return inner
            g = self.grammars
            return g.layered(inner, req.reasoning_budget, req.allowed_token_ids, req.bad_words)
        except ValueError as exc:
            raise InvalidRequestError(req.rid, f"grammar: {exc}") from exc

    def flush_prefix_cache(self) -> int:
        """Drop every prefix-cache page no request holds; returns the pages freed."""
        return self.cache.evict(self.pool.num_pages)

    def abort(self, rid: str) -> None:
        """Stop a request now and free its pages; the next step reports finish "abort". Unknown
        or already finished ids are ignored."""
        req = self._requests.pop(rid, None)
        if req is None:
            return
        self._constrained.discard(rid)
        self.scheduler.finish([req])
        req.finish_reason = FinishReason.ABORT
        out = StepOutput(rid=rid, ids=[], finish=FinishReason.ABORT.value)
        self._pending.append(req.first_output(out))

    # -- the step -----------------------------------------------------------------------------

    def step(self) -> list[StepOutput]:
        """Run one engine step; returns every request's news (possibly none)."""
        outputs, self._pending = self._pending, []
        start = time.perf_counter()
        current, self._queued = self._queued, None
        if current is None:
            batch = self.scheduler.schedule()
            if batch.seqs:
                current = self._launch(batch)
        if current is not None:
            batch = current.batch
            self._queued = self._queue_next(current)
            result = current.collect()
            for req in current.placeholders or ():
                req.output_ids.pop()  # the samples below take their place
                req.all_token_ids.pop()
            for scores in result.scores:
                self._requests[scores.rid].record_prompt_scores(scores)
            before = len(outputs)
            finished = self._apply_samples(batch, result.samples, outputs)
            self.scheduler.finish(finished)
            queued = self._queued
            if queued is not None and queued.launched is not None:
                if queued.launched.waits_to_sample:
                    # Its forward pass is on the device; its masks need the samples above.
                    self._attach_masks(queued.batch)
                    queued.launched.sample()
            if self.mtp_step:
                self._propose_drafts(batch)
            seconds = time.perf_counter() - start
            emitted = sum(len(out.ids) for out in outputs[before:])
            self.step_log.record(seconds, batch.num_prompt_tokens, emitted, current.ahead)
            if seconds >= SLOW_STEP_S:
                log.warning(
                    "slow step: %.2f s for %d sequences, %d tokens (%d of them prompt tokens)",
                    seconds,
                    len(batch.seqs),
                    batch.num_tokens,
                    batch.num_prompt_tokens,
                )
        if self.step_log.due():
            line = self.step_log.report(self.stats())
            if line is not None:
                log.info("%s", line)
        if not self.has_work():
            self.check_accounting()
        return outputs

    def _launch(self, batch: ScheduledBatch) -> _Queued:
        self._attach_masks(batch)
        if self._launcher is not None:
            return _Queued(batch, self._launcher.launch(batch, self.sampler))
        return _Queued(batch, None, self.runner.run(batch, self.sampler))

    def _queue_next(self, current: _Queued) -> _Queued | None:
        """Plan and queue the step after `current` before its samples are read, when planning it
        now gives the step that planning after them would (see the module doc); else None."""
        if self._launcher is None or self.mtp_step or current.launched is None:
            return None
        tokens = current.launched.tokens
        seqs = current.batch.seqs
        if tokens is None:
            return None
        live = [s for s in seqs if s.rid in self._requests]
        if not live or len(live) != len(self.scheduler.running):
            return None  # a running request without tokens in `current` (budget): plan after
        max_len = self.max_req_total_len
        fed: list[Request] = []  # sampled in `current`: their next step's token is its sample
        ending = set()  # requests whose length ends with their sample in `current`
        pages = 0  # pages the running requests' next chunks may take (free or evicted for them)
        for seq in live:
            req = self._requests[seq.rid]
            if seq.draft_ids or req.state is not RequestState.RUNNING:
                return None
            if not seq.sample:  # part-way through its prompt: the next chunk is known
                n = min(req.num_tokens_to_compute, self.config.chunked_prefill_size)
                pages += self.pool.pages_for(req.num_computed_tokens + n) - len(req.page_ids)
            elif req.num_output_tokens + 1 >= req.max_new_tokens or req.num_tokens + 1 >= max_len:
                ending.add(req)
            else:
                fed.append(req)
                pages += self.pool.pages_for(req.num_tokens + 1) - len(req.page_ids)
        if not fed or not self.cache.can_evict(pages - self.pool.num_free):
            return None  # nothing to feed, or room only by preempting: plan after the samples
        rows = [s.rid for s in seqs if s.sample]  # one sample a sampled sequence, in batch order
        row_of = {rid: i for i, rid in enumerate(rows)}
        for req in fed:
            req.append_output(PLACEHOLDER)
        batch = self.scheduler.schedule(skip=ending)
        feed_rows, feed_seqs = [], []
        fed_ids = {r.rid for r in fed}
        for i, s in enumerate(batch.seqs):
            if s.rid in fed_ids:
                assert len(s.token_ids) == 1 and s.sample, "a fed request decodes one token"
                s.fed = True
                feed_rows.append(row_of[s.rid])
                feed_seqs.append(i)
        assert len(feed_rows) == len(fed), "every fed request is in the step queued ahead"
        # Masks of constrained samples need `current`'s samples: sampling is queued after them.
        defer = bool(self._constrained) and any(
            s.sample and s.rid in self._constrained and self._may_mask(s.rid) for s in batch.seqs
        )
        launched = self._launcher.launch(
            batch, self.sampler, TokenFeed(tokens, feed_rows, feed_seqs), defer_sampling=defer
        )
        current.placeholders = fed
        self.steps_ahead += 1
        return _Queued(batch, launched, ahead=True)

    def _attach_masks(self, batch: ScheduledBatch) -> None:
        """Gives each sample of a request under an active grammar its allowed ids."""
        if self.grammars is not None and self._constrained:
            self.grammars.attach_masks(batch.seqs, self._constraint_of)

    def _may_mask(self, rid: str) -> bool:
        """Whether the sample of `rid` in a step queued ahead (one token past those its
        constraint has seen) may need a mask: a grammar's always, a reasoning budget's only
        near its end."""
        c = self._constraint_of(rid)
        return c is not None and (not isinstance(c, Layer) or c.may_mask(1))

    def _constraint_of(self, rid: str) -> Constraint | None:
        req = self._requests.get(rid)
        return req.constraint if req is not None else None

    def _apply_samples(
        self, batch: ScheduledBatch, samples: list[SampleOutput], outputs: list[StepOutput]
    ) -> list[Request]:
        """Append each sequence's sampled tokens, decide finishes; returns the finished requests.

        A sequence with drafts has one sample per row from its last known token on: the drafts
        are accepted while each equals the sample of the row before it, and the sample after the
        last accepted draft is appended too. Every emitted token is a sample of the model at its
        position, so greedy output (and any sampled output) is what decoding without drafts gives.
        """
        finished = []
        rows = iter(samples)
        max_len = self.max_req_total_len
        for seq in batch.seqs:
            if not seq.sample:
                continue
            first = next(rows, None)
            assert first is not None and first.rid == seq.rid, (
                f"the runner sampled no row for {seq.rid}"
            )
            req = self._requests.get(seq.rid)
            if req is None or req.output_ids is not seq.output_ids:
                # Finished or aborted after this step was queued (running ahead), its id perhaps
                # taken by a new request since: the sample is dropped.
                assert not seq.draft_ids, "a step with drafts is never run ahead"
                continue
            if seq.draft_ids:
                out, reason = self._verify(req, seq.draft_ids, first, rows)
            else:
                token = first.token_id
                req.append_output(token)
                if req.constraint is not None and not req.constraint.accept(token):
                    # Only a row the mask did not cover (see _attach_masks) can get here.
                    log.warning("request %s: token %d is outside its grammar", req.rid, token)
                out = StepOutput(rid=req.rid, ids=[token])
                if req.sampling.logprobs >= 0 and first.logprob is not None:
                    out.logprobs = [first.logprob]
                    if req.sampling.logprobs > 0 and first.top_logprobs is not None:
                        out.top_logprobs = [first.top_logprobs]
                reason = req.check_finish(max_len)
            if reason is not None:
                req.finish_reason = reason
                out.finish = reason.value
                finished.append(req)
                del self._requests[req.rid]
                self._constrained.discard(req.rid)
            elif req.num_output_tokens == len(out.ids):
                self.scheduler.publish_prefix(req)  # its prompt is computed: share it
            outputs.append(req.first_output(out))
        assert next(rows, None) is None, "the runner sampled rows of no sequence"
        return finished

    def _verify(
        self, req: Request, drafts: list[int], first: SampleOutput, rows: Iterator[SampleOutput]
    ) -> tuple[StepOutput, FinishReason | None]:
        """Accept `drafts` while each equals the sample of the row before it; append the accepted
        tokens and the sample after them (stopping at a finish). Returns the output and the finish
        reason, if any."""
        picked = [first]
        picked.extend(next(rows) for _ in drafts)
        accepted = 0
        while accepted < len(drafts) and picked[accepted].token_id == drafts[accepted]:
            accepted += 1
        # Positions of the rejected drafts hold stale latents: recompute from the first of them.
        req.num_computed_tokens = req.num_tokens + accepted
        req.draft_token_ids = []
        out = StepOutput(rid=req.rid, ids=[])
        reason = None
        for sample in picked[: accepted + 1]:
            req.append_output(sample.token_id)
            out.ids.append(sample.token_id)
            if req.constraint is not None and not req.constraint.accept(sample.token_id):
                log.warning("request %s: token %d is outside its grammar", req.rid, sample.token_id)
            if req.sampling.logprobs >= 0 and sample.logprob is not None:
                out.logprobs = (out.logprobs or []) + [sample.logprob]
                if req.sampling.logprobs > 0 and sample.top_logprobs is not None:
                    out.top_logprobs = (out.top_logprobs or []) + [sample.top_logprobs]
            reason = req.check_finish(self.max_req_total_len)
            if reason is not None:
                break
        out.spec_accepted = min(accepted, len(out.ids))
        self.spec_drafted += len(drafts)
        self.spec_accepted += out.spec_accepted
        return out, reason

    def _propose_drafts(self, batch: ScheduledBatch) -> None:
        """After a step: the drafter reads every row whose next token is now known, and proposes
        the next drafts of the sequences that go on decoding."""
        items = []
        first_row = 0
        for seq in batch.seqs:
            row = first_row
            first_row += len(seq.token_ids)
            req = self._requests.get(seq.rid)
            if req is None or req.state is not RequestState.RUNNING:
                continue
            computed = req.num_computed_tokens
            next_ids = req.all_token_ids[seq.start_pos + 1 : computed + 1]
            drafts = self._draft_count(req) if seq.sample else 0
            items.append(DraftInput(seq.rid, row, seq.start_pos, next_ids, req.page_ids, drafts))
        for rid, ids in self.runner.propose_drafts(items).items():
            req = self._requests[rid]
            if req.constraint is not None:
                ids = self.grammars.cut_drafts(req.constraint, ids) if self.grammars else []
            req.draft_token_ids = ids

    def _draft_count(self, req: Request) -> int:
        """Drafts to propose for `req`: up to `mtp_step`, none past its length limits, and only
        when the pool has the pages they (and the drafter's chained steps) will take. Each draft's
        row is sampled with the drafts before it as output: its penalties, seeded draw and
        min-tokens ban are those of decoding one token a step."""
        if not req.mtp:
            return 0
        room = min(
            req.max_new_tokens - req.num_output_tokens, self.max_req_total_len - req.num_tokens
        )
        count = max(0, min(self.mtp_step, room - 1))
        if count and not self.scheduler.grow_from_free(req, req.num_tokens + count):
            return 0
        return count

    # -- observation --------------------------------------------------------------------------

    def has_work(self) -> bool:
        """True while requests are queued or running, outputs are pending or a step run ahead
        is still on the device."""
        return bool(self._requests or self._pending or self._queued)

    @property
    def kv_capacity_tokens(self) -> int:
        return self.pool.capacity_tokens

    def stats(self) -> dict[str, int]:
        """The wire `Stats` map."""
        return {
            "waiting": len(self.scheduler.waiting),
            "running": len(self.scheduler.running),
            "kv_pages_used": self.pool.num_in_use,
            "kv_pages_cached": self.pool.num_cached_only,
            "kv_pages_total": self.pool.total,
            "prefix_hit_tokens": self.cache.hit_tokens,
            "prompt_tokens": self.scheduler.prompt_tokens,
            "spec_drafted": self.spec_drafted,
            "spec_accepted": self.spec_accepted,
            "preemptions": self.scheduler.num_preemptions,
        }

    def check_accounting(self) -> None:
        """Assert that page tables, reference counts, the prefix tree and the free list agree."""
        self.pool.check()
        self.cache.check()
        self.scheduler.check()
        held = Counter(p for req in self.scheduler.running for p in req.page_ids)
        refs = self.pool.referenced()
        if held != refs:
            page = next(p for p in held.keys() | refs.keys() if held[p] != refs.get(p, 0))
            raise AssertionError(
                f"page {page}: {held[page]} page tables hold it, reference count "
                f"{refs.get(page, 0)}"
            )
        for req in self.scheduler.waiting:
            assert not req.page_ids, f"waiting request {req.rid} holds pages"
        constrained = {rid for rid, r in self._requests.items() if r.constraint is not None}
        assert self._constrained == constrained, "the constrained set follows the requests"
