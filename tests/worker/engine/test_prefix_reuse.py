"""Prefix cache hits through the engine: cached_tokens, fewer tokens computed, shared pages."""

from __future__ import annotations

import pytest

from tests.worker.engine.engine_fakes import MakeHarness

PROMPT = list(range(40, 50))  # 10 tokens: two full pages of 4 and a partial one


def test_a_repeated_prompt_reports_cached_tokens_and_computes_fewer(
    make_harness: MakeHarness,
) -> None:
    h = make_harness(page_size=4, overlap_schedule=False)
    h.add("a", PROMPT, max_new_tokens=3)
    h.run()
    h.add("b", PROMPT, max_new_tokens=3)
    h.step()
    seq = h.last_batch()["b"]
    assert (seq.start_pos, seq.token_ids) == (8, PROMPT[8:])
    first_b = h.outputs["b"][0]
    assert (first_b.prompt_tokens, first_b.cached_tokens) == (10, 8)
    assert h.outputs["a"][0].cached_tokens == 0
    h.run()
    assert h.tokens("b") == h.tokens("a")


def test_running_requests_share_prefix_pages_with_one_reference_each(
    make_harness: MakeHarness,
) -> None:
    h = make_harness(page_size=4, overlap_schedule=False)
    h.add("warm", PROMPT, max_new_tokens=1)
    h.run()
    b = h.add("b", [*PROMPT, 1000, 1001], max_new_tokens=4)
    c = h.add("c", [*PROMPT, 2000], max_new_tokens=4)
    h.step()
    shared = b.page_ids[:2]
    assert c.page_ids[:2] == shared and set(b.page_ids[2:]).isdisjoint(c.page_ids[2:])
    assert [h.engine.pool.ref(p) for p in shared] == [2, 2]
    assert h.engine.stats()["kv_pages_used"] == 2 + 1 + 1
    h.run()
    assert [h.engine.pool.ref(p) for p in shared] == [0, 0]
    assert h.engine.stats()["kv_pages_used"] == 0


@pytest.mark.parametrize("enable_prefix_cache", [True, False])
def test_outputs_with_prefix_hits_equal_outputs_without_the_cache(
    make_harness: MakeHarness, enable_prefix_cache: bool
) -> None:
    h = make_harness(page_size=2, enable_prefix_cache=enable_prefix_cache)
    prompts = {f"r{i}": [*PROMPT[: 3 + i], 7 * i] for i in range(6)}
    for rid, prompt in prompts.items():
        h.add(rid, prompt, max_new_tokens=5)
        h.step()
    h.run()
    fresh = make_harness(page_size=2, enable_prefix_cache=False)
    for rid, prompt in prompts.items():
        fresh.add(rid, prompt, max_new_tokens=5)
    fresh.run()
    assert {r: h.tokens(r) for r in prompts} == {r: fresh.tokens(r) for r in prompts}
    hits = h.engine.stats()["prefix_hit_tokens"]
    assert (hits > 0) == enable_prefix_cache


def test_stats_count_prompt_tokens_and_prefix_hits(make_harness: MakeHarness) -> None:
    h = make_harness(page_size=4)
    h.add("a", PROMPT, max_new_tokens=2)
    h.run()
    h.add("b", PROMPT, max_new_tokens=2)
    h.run()
    stats = h.engine.stats()
    assert stats["prompt_tokens"] == 20 and stats["prefix_hit_tokens"] == 8
    assert stats["kv_pages_cached"] == 2 and stats["kv_pages_used"] == 0
    assert stats["kv_pages_total"] == 63 and stats["waiting"] == stats["running"] == 0


def test_least_recently_used_prefixes_are_evicted_to_admit_new_requests(
    make_harness: MakeHarness,
) -> None:
    h = make_harness(num_pages=9, page_size=4)  # 8 usable pages
    for k in range(4):  # each leaves two full pages in the cache
        h.add(f"p{k}", [k + 2] * 8, max_new_tokens=1)
        h.run()
    assert h.engine.stats()["kv_pages_cached"] == 8 and h.engine.pool.num_free == 0
    h.add("again0", [2] * 8 + [5], max_new_tokens=1)  # touches p0's prefix
    h.run()
    h.add("new", [9] * 8, max_new_tokens=1)
    h.run()
    assert h.finish("new") == "length"
    assert h.engine.cache.match([3] * 9) == (0, [])  # p1 was least recently used
    for k in (0, 2, 3):
        assert h.engine.cache.match([k + 2] * 9)[0] == 8


def test_a_request_arriving_while_another_decodes_shares_its_prompt_pages(
    make_harness: MakeHarness,
) -> None:
    h = make_harness(
        page_size=4, max_wait_steps=1, overlap_schedule=False
    )  # admitted in the step it arrives
    first = h.add("first", PROMPT, max_new_tokens=6)
    h.step()  # the prompt is computed and offered to the cache
    h.add("second", [*PROMPT, 3], max_new_tokens=2)
    h.step()
    assert h.last_batch()["second"].start_pos == 8
    second = h.engine.scheduler.running[1]
    assert second.page_ids[:2] == first.page_ids[:2]
    assert [h.engine.pool.ref(p) for p in first.page_ids[:2]] == [2, 2]
    assert h.outputs["second"][0].cached_tokens == 8
    h.run()
    fresh = make_harness(page_size=4, enable_prefix_cache=False)
    fresh.add("second", [*PROMPT, 3], max_new_tokens=2)
    fresh.run()
    assert h.tokens("second") == fresh.tokens("second")


def test_a_flush_drops_idle_prefixes_and_keeps_the_running_ones(make_harness: MakeHarness) -> None:
    h = make_harness(page_size=4, overlap_schedule=False)
    h.add("a", PROMPT, max_new_tokens=2)
    h.run()
    running = h.add("b", [*range(70, 80)], max_new_tokens=50)
    h.step()
    held = list(running.page_ids)
    assert h.engine.flush_prefix_cache() == 2  # a's two full pages; b's are in use
    assert all(h.engine.pool.ref(p) == 1 for p in held)
    h.add("c", PROMPT, max_new_tokens=2)
    h.run()
    assert h.outputs["c"][0].cached_tokens == 0
    assert h.tokens("c") == h.tokens("a")
    h.engine.cache.check()


def test_a_salted_prompt_hits_only_the_prefixes_of_its_salt(make_harness: MakeHarness) -> None:
    h = make_harness(page_size=4, overlap_schedule=False)
    for rid, salt in [("a", "s1"), ("b", "s2"), ("c", None), ("d", "s1"), ("e", None)]:
        h.add(rid, PROMPT, max_new_tokens=2, cache_salt=salt)
        h.run()
    cached = {rid: h.outputs[rid][0].cached_tokens for rid in "abcde"}
    assert cached == {"a": 0, "b": 0, "c": 0, "d": 8, "e": 8}
    assert h.tokens("d") == h.tokens("a")
