"""How much KV room admission may spend: running requests keep a reserve to grow into.

Admitting a request allocates pages only for its first chunk, yet every admitted request keeps
growing: the rest of its prompt, then its output. Admitting on the first chunk alone fills the
pool with requests that soon preempt each other, and preempted requests are recomputed. So a
waiting request is admitted only while the free and evictable KV room covers, for every running
request and for the candidate: the tokens still to compute of its known tokens, plus `ratio` times
its remaining output budget (max_new_tokens left, clipped to `OUTPUT_ESTIMATE_CLIP`).

`ratio` starts at `EngineConfig.reserve_output_ratio`, decays towards `MIN_RATIO` over
`DECAY_STEPS` steps without preemption (requests often stop before max_new_tokens), and jumps back
after a preemption. A ratio of 0 reserves only the known tokens. With nothing running, the head of
the queue is always admitted, so the engine makes progress whatever the estimate says.
"""

from __future__ import annotations

from collections.abc import Iterable

from glm47.worker.engine.page_pool import PagePool
from glm47.worker.engine.request import Request

OUTPUT_ESTIMATE_CLIP = 4096  # an output budget counts as at most this many tokens
MIN_RATIO = 0.1  # the ratio never decays below this (or below the configured start)
DECAY_STEPS = 600  # steps without preemption to decay from the start to MIN_RATIO


class GrowthReserve:
    """The adaptive output-growth estimate used to gate admission."""

    def __init__(self, ratio: float) -> None:
        self.initial = ratio
        self.floor = min(MIN_RATIO, ratio)
        self.decay = (ratio - self.floor) / DECAY_STEPS
        self.ratio = ratio

    def on_step(self, preempted: bool) -> None:
        self.ratio = self.initial if preempted else max(self.floor, self.ratio - self.decay)

    def cost(self, req: Request, num_computed: int) -> float:
        """KV tokens `req` is still expected to add, with `num_computed` tokens in the cache."""
        output_left = min(req.max_new_tokens - len(req.output_ids), OUTPUT_ESTIMATE_CLIP)
        return req.num_tokens_wanted - num_computed + self.ratio * output_left

    def room(self, pool: PagePool, running: Iterable[Request]) -> float:
        """KV tokens free or evictable, less what the running requests are expected to add."""
        free = (pool.num_free + pool.num_cached_only) * pool.page_size
        return free - sum(self.cost(r, r.num_computed_tokens) for r in running)
