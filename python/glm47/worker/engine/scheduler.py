"""The token-budget scheduler: which tokens of which requests the next step computes.

There are no prefill and decode phases, only tokens: each request has computed tokens and wanted
tokens (see request.py), and a step hands out at most `max_num_batched_tokens` of the difference.
Order of service:
1. running requests that are decoding (one token each; with speculation, 1 + drafts);
2. running requests part-way through their prompt (chunked prefill continues);
3. waiting requests, oldest first, while the KV room left after the running requests' growth
   reserve (admission.py) covers them: a prefix-cache match, then pages for their first chunk.
A request gets min(tokens it still wants, budget left, chunked_prefill_size) tokens per step.

While requests are decoding, waiting requests are admitted at most once per `max_wait_steps`
steps: an all-decode step replays a CUDA graph, a step with prompt tokens runs eagerly and costs
several decode steps, so admissions are gathered into fewer such steps. The count runs from the
last step that admitted, so a request arriving after a quiet stretch is admitted at once; a
step that continues a chunked prompt admits too (it runs eagerly anyway); and while the waiting
prompts exceed a step's token budget (a burst), every step admits.

When a running request needs a page and none is free (after evicting unreferenced cache pages),
the newest running request is preempted: its full pages are offered to the prefix cache, its
references dropped, and it goes back to the front of the waiting queue to be recomputed from
prompt + output so far. No waiting request is admitted in a step that preempted.

Under the `priority` policy (vLLM's), the waiting queue is ordered by (priority, arrival) instead:
lower `priority` values first, the oldest first among equals, a preempted request back at its
place; and the running request preempted for pages is the one of the highest value, the newest
among equals.
"""

from __future__ import annotations

import bisect
import itertools
import logging
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field

from glm47.worker.batch import ScheduledBatch, ScheduledSeq
from glm47.worker.config import EngineConfig
from glm47.worker.engine.admission import GrowthReserve
from glm47.worker.engine.page_pool import PagePool
from glm47.worker.engine.prefix_cache import PrefixCache
from glm47.worker.engine.request import Request, RequestState

log = logging.getLogger(__name__)

NO_DRAFTS: list[int] = []  # shared by every sequence without drafts; never modified
NO_SCORES: list[int] = []  # shared by every sequence that scores no prompt token; never modified


@dataclass
class _Plan:
    """The step being planned: tokens per request (in batch order) and the budget left."""

    budget: int
    chunks: dict[Request, int] = field(default_factory=dict)
    preempted: bool = False


class Scheduler:
    """Waiting and running queues; delegates pages to `PagePool` and prefixes to `PrefixCache`."""

    def __init__(self, config: EngineConfig, pool: PagePool, cache: PrefixCache) -> None:
        self.config = config
        self.pool = pool
        self.cache = cache
        self.waiting: deque[Request] = deque()  # FIFO; preempted requests re-enter at the front
        self.running: list[Request] = []  # admission order: oldest first, newest last
        self.prompt_tokens = 0  # cumulative prompt tokens admitted (first admission only)
        self.num_preemptions = 0  # cumulative
        self._evict_batch = max(1, pool.total // 256)  # fewest pages one eviction frees
        self.reserve = GrowthReserve(config.reserve_output_ratio)
        self._steps_since_admission = config.max_wait_steps  # the first arrival is admitted at once
        self._backlog = False  # the last admission stopped at the step's token budget
        self._by_priority = config.scheduling_policy == "priority"
        self._arrivals = itertools.count()
        self._order: dict[Request, tuple[int, int]] = {}  # (priority, arrival) of live requests

    def add(self, req: Request) -> None:
        req.state = RequestState.WAITING
        self._order[req] = (req.priority, next(self._arrivals))
        self._enqueue(req, front=False)

    def _enqueue(self, req: Request, front: bool) -> None:
        """Into the waiting queue: at the back (a new request) or the front (a preempted one),
        or, under the priority policy, at its place by (priority, arrival)."""
        if self._by_priority:
            bisect.insort(self.waiting, req, key=self._order.__getitem__)
        elif front:
            self.waiting.appendleft(req)
        else:
            self.waiting.append(req)

    def check(self) -> None:
        """Assert that the order keys follow the live requests, and the waiting queue its order."""
        live = set(self.waiting) | set(self.running)
        assert set(self._order) == live, "order keys follow the waiting and running requests"
        if self._by_priority:
            keys = [self._order[r] for r in self.waiting]
            assert keys == sorted(keys), "the waiting queue is in (priority, arrival) order"

    def _victim(self) -> Request:
        """The running request preempted for pages: the newest, or under the priority policy
        the one of the highest (priority, arrival)."""
        if self._by_priority:
            return max(self.running, key=self._order.__getitem__)
        return self.running[-1]

    # -- planning -----------------------------------------------------------------------------

    def schedule(self, skip: Collection[Request] = ()) -> ScheduledBatch:
        """Plan one step and advance every scheduled request's `num_computed_tokens`. Running
        requests in `skip` are left out (the engine's: their last token is still on the device)."""
        plan = _Plan(budget=self.config.token_budget)
        # Decoding requests (at most the last known token left) first, then those part-way
        # through their prompt; the sort is stable, so each group keeps admission order.
        order = sorted(
            (r for r in self.running if r not in skip),
            key=lambda r: r.num_computed_tokens < r.num_tokens - 1,
        )
        for req in order:
            if plan.budget == 0:
                break
            if req.state is RequestState.RUNNING:  # not preempted earlier in this loop
                self._schedule_running(req, plan)
        self._steps_since_admission += 1
        decoding = any(r.num_computed_tokens >= r.num_tokens - 1 for r in self.running)
        prefilling = any(r.num_computed_tokens < r.num_tokens - 1 for r in plan.chunks)
        may_admit = (
            not decoding
            or prefilling  # the step carries prompt tokens anyway
            or self._backlog
            or self._steps_since_admission >= self.config.max_wait_steps
        )
        if not plan.preempted and may_admit and self._admit_waiting(plan):
            self._steps_since_admission = 0
            # More waiting work than one step's budget: the next step admits again, since it
            # carries prompt tokens anyway.
            self._backlog = plan.budget == 0 and bool(self.waiting)
        elif not self.waiting:
            self._backlog = False
        self.reserve.on_step(plan.preempted)
        return self._build(plan)

    def _schedule_running(self, req: Request, plan: _Plan) -> None:
        """Give a running request its chunk, preempting the newest requests for pages."""
        n = min(req.num_tokens_to_compute, plan.budget, self.config.chunked_prefill_size)
        need = self.pool.pages_for(req.num_computed_tokens + n) - len(req.page_ids)
        while need > 0 and not self._make_room(need):
            victim = self._victim()
            plan.preempted = True
            plan.budget += plan.chunks.pop(victim, 0)
            self.preempt(victim)
            if victim is req:
                return
        if need > 0:
            req.page_ids += self.pool.allocate(need)
        plan.chunks[req] = n
        plan.budget -= n

    def _admit_waiting(self, plan: _Plan) -> int:
        """Admit from the head of the queue while budget, slots and KV room (with the growth
        reserve of admission.py) allow; the first request that does not fit blocks the rest.
        Returns how many were admitted."""
        room = self.reserve.room(self.pool, self.running) if self.waiting else 0.0
        admitted = 0
        while self.waiting and plan.budget > 0:
            if len(self.running) >= self.config.max_running_requests:
                return admitted
            req = self.waiting[0]
            # A prompt whose logprobs are asked for runs whole: cached pages hold no logits.
            shared: list[int] = []
            num_cached = 0
            if not req.scores_prompt:
                num_cached, shared = self.cache.match(req.all_token_ids, req.cache_salt)
            cost = self.reserve.cost(req, num_cached)
            if self.running and cost > room:
                return admitted
            self.pool.retain(shared)  # protects the matched pages from the eviction below
            n = min(
                req.num_tokens_wanted - num_cached, plan.budget, self.config.chunked_prefill_size
            )
            need = self.pool.pages_for(num_cached + n) - len(shared)
            if not self._make_room(need):
                self.pool.release(shared)
                return admitted
            room -= cost
            self.waiting.popleft()
            req.page_ids = shared + self.pool.allocate(need)
            req.num_computed_tokens = num_cached
            if req.num_cached_tokens is None:
                req.num_cached_tokens = num_cached
                self.prompt_tokens += req.num_prompt_tokens
                self.cache.record_lookup(req.num_prompt_tokens, num_cached)
            req.state = RequestState.RUNNING
            self.running.append(req)
            plan.chunks[req] = n
            plan.budget -= n
            admitted += 1
        return admitted

    def grow_from_free(self, req: Request, num_tokens: int) -> bool:
        """Extend a running request's pages to hold `num_tokens` positions from free pages only
        (nothing is evicted or preempted for it); False, with nothing taken, if too few are
        free."""
        need = self.pool.pages_for(num_tokens) - len(req.page_ids)
        if need <= 0:
            return True
        if self.pool.num_free < need:
            return False
        req.page_ids += self.pool.allocate(need)
        return True

    def _make_room(self, num_pages: int) -> bool:
        """True when `num_pages` pages are free, evicting unreferenced cache pages if needed (at
        least `_evict_batch` at a time, so that a step of many small needs evicts once)."""
        short = num_pages - self.pool.num_free
        if short > 0:
            self.cache.evict(max(short, self._evict_batch))
        return self.pool.num_free >= num_pages

    def _build(self, plan: _Plan) -> ScheduledBatch:
        seqs = []
        prompt_tokens = 0
        scores = False
        for req, n in plan.chunks.items():
            start = req.num_computed_tokens
            known = req.num_tokens
            if start < len(req.prompt_ids):
                prompt_tokens += min(start + n, len(req.prompt_ids)) - start
            sample = start + n >= known
            drafts = req.draft_token_ids[: start + n - known] if start + n > known else NO_DRAFTS
            score_ids, score_top = NO_SCORES, 0
            if req.prompt_logprobs >= 0:
                score_ids, score_top = self._score_ids(req, start, n), req.prompt_logprobs
                scores = scores or bool(score_ids)
            seqs.append(
                ScheduledSeq(
                    rid=req.rid,
                    token_ids=req.wanted_tokens(start, start + n),
                    start_pos=start,
                    sample=sample,
                    sampling=req.sampling,
                    # The request's own lists, read-only, the same objects every step (the
                    # sampler keys its penalty history on them, the runner its page tables);
                    # valid until samples are applied.
                    page_ids=req.page_ids,
                    prompt_ids=req.prompt_ids,
                    output_ids=req.output_ids,
                    banned_token_ids=req.banned_token_ids() if sample else (),
                    ban_lifts_at=req.min_new_tokens,
                    draft_ids=drafts,
                    score_ids=score_ids,
                    score_top=score_top,
                )
            )
            req.num_computed_tokens = start + n
        return ScheduledBatch(seqs=seqs, num_prompt_tokens=prompt_tokens, scores_prompts=scores)

    @staticmethod
    def _score_ids(req: Request, start: int, n: int) -> list[int]:
        """The prompt tokens after rows [start, start + n) to score, while the request scores its
        prompt (the last prompt row samples instead)."""
        end = min(start + n, req.num_prompt_tokens - 1)
        if not req.scores_prompt or end <= start:
            return NO_SCORES
        return req.prompt_ids[start + 1 : end + 1]

    # -- leaving the running batch ------------------------------------------------------------

    def preempt(self, req: Request) -> None:
        """Give back a running request's pages; it will be recomputed from its known tokens."""
        self.running.remove(req)
        self._release_pages(req)  # also resets num_computed_tokens
        req.draft_token_ids.clear()
        req.num_preemptions += 1
        req.state = RequestState.PREEMPTED
        self._enqueue(req, front=True)
        self.num_preemptions += 1
        log.info(
            "preempted request %s: %d known tokens to recompute, %d pages free, %d running",
            req.rid,
            req.num_tokens,
            self.pool.num_free,
            len(self.running),
        )

    def finish(self, reqs: list[Request]) -> None:
        """Take finished or aborted requests out of the queues; their full pages are offered to
        the prefix cache and every other page is freed at once."""
        if not reqs:
            return
        gone = set(reqs)
        for req in reqs:
            self._order.pop(req, None)
            if req.state is RequestState.RUNNING:
                self._release_pages(req)
            req.state = RequestState.FINISHED
        self.running = [r for r in self.running if r not in gone]
        if any(r in gone for r in self.waiting):
            self.waiting = deque(r for r in self.waiting if r not in gone)

    def publish_prefix(self, req: Request) -> None:
        """Offer a running request's full computed pages to the prefix cache now (after its
        prompt is computed) so that requests arriving while it decodes can share them."""
        full = min(req.num_computed_tokens, req.num_tokens) // self.pool.page_size
        if full:
            ids = req.all_token_ids[: full * self.pool.page_size]
            self.cache.insert(ids, req.page_ids[:full], req.cache_salt)

    def _release_pages(self, req: Request) -> None:
        self.publish_prefix(req)
        self.pool.release(req.page_ids)
        req.page_ids = []
        req.num_computed_tokens = 0
