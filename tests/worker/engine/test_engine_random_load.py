"""Random arrivals, shared prefixes and aborts on a small pool: accounting holds after every step
and every request that was not aborted gets the output of an unconstrained run."""

from __future__ import annotations

import random

import pytest

from tests.worker.engine.engine_fakes import MakeHarness


@pytest.mark.parametrize(
    ("seed", "page_size", "reserve"),
    [(0, 1, 0.0), (1, 2, 0.0), (2, 4, 0.0), (3, 4, 0.7), (4, 2, 0.7)],
)
def test_random_load_keeps_accounting_and_outputs_exact(
    make_harness: MakeHarness, seed: int, page_size: int, reserve: float
) -> None:
    rng = random.Random(seed)
    prefixes = [[rng.randrange(10, 500) for _ in range(rng.randrange(2, 12))] for _ in range(3)]
    h = make_harness(
        num_pages=48 // page_size + 1,
        page_size=page_size,
        chunked_prefill_size=rng.choice([3, 8, 16]),
        max_num_batched_tokens=rng.choice([8, 24]),
        max_running_requests=rng.choice([3, 6]),
        reserve_output_ratio=reserve,
        # without a reserve, admitting at once is what outgrows the pool (asserted below)
        max_wait_steps=1 if reserve == 0.0 else rng.choice([1, 4]),
    )
    prompts: dict[str, list[int]] = {}
    limits: dict[str, int] = {}
    aborted: set[str] = set()
    for i in range(30):
        rid = f"r{i}"
        prompts[rid] = rng.choice(prefixes) + [
            rng.randrange(10, 500) for _ in range(rng.randrange(1, 9))
        ]
        limits[rid] = rng.randrange(1, 12)
        h.add(rid, prompts[rid], max_new_tokens=limits[rid])
        for _ in range(rng.randrange(0, 3)):
            h.step()
        live = [r for r in prompts if r not in aborted and h.finish(r) is None]
        if live and rng.random() < 0.15:
            victim = rng.choice(live)
            h.engine.abort(victim)
            aborted.add(victim)
    h.run()
    fresh = make_harness(num_pages=1024, page_size=page_size, enable_prefix_cache=False)
    for rid, prompt in prompts.items():
        fresh.add(rid, prompt, max_new_tokens=limits[rid])
    fresh.run()
    for rid in prompts:
        if rid in aborted:
            assert h.finish(rid) in ("abort", "length")
            assert h.tokens(rid) == fresh.tokens(rid)[: len(h.tokens(rid))]
        else:
            assert h.finish(rid) == "length" and h.tokens(rid) == fresh.tokens(rid)
    stats = h.engine.stats()
    assert stats["prefix_hit_tokens"] > 0
    if reserve == 0.0:  # admission without an output reserve outgrows the small pool
        assert h.engine.scheduler.num_preemptions > 0
    assert stats["running"] == stats["waiting"] == stats["kv_pages_used"] == 0
