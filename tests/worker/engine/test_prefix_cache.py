"""The radix prefix cache on its own: matching, insertion, splitting, eviction."""

from __future__ import annotations

from glm47.worker.engine.page_pool import PagePool
from glm47.worker.engine.prefix_cache import PrefixCache


def cache_with(num_pages: int = 32, page_size: int = 4) -> tuple[PagePool, PrefixCache]:
    pool = PagePool(num_pages, page_size)
    return pool, PrefixCache(pool)


def finish(pool: PagePool, cache: PrefixCache, tokens: list[int]) -> list[int]:
    """Compute `tokens` in fresh pages as a request would, offer them, release them."""
    pages = pool.allocate(pool.pages_for(len(tokens)))
    full = len(tokens) // pool.page_size
    cache.insert(tokens[: full * pool.page_size], pages[:full])
    pool.release(pages)
    return pages


def test_a_match_covers_whole_pages_only() -> None:
    pool, cache = cache_with()
    pages = finish(pool, cache, list(range(10)))  # two full pages cached, the third freed
    assert pool.num_cached_only == 2 and pool.num_free == pool.total - 2
    assert cache.match([*range(10), 99]) == (8, pages[:2])
    assert cache.match([0, 1, 2, 3, 4, 5, 77, 7, 8]) == (4, pages[:1])
    assert cache.match([5, 1, 2, 3, 4]) == (0, [])
    cache.check()


def test_a_fully_cached_prompt_still_leaves_one_token_to_compute() -> None:
    pool, cache = cache_with()
    pages = finish(pool, cache, list(range(12)))
    assert cache.match(list(range(12))) == (8, pages[:2])
    assert cache.match(list(range(13))) == (12, pages[:3])
    assert cache.match(list(range(4))) == (0, [])


def test_insert_splits_a_node_where_two_prompts_diverge() -> None:
    pool, cache = cache_with()
    a = finish(pool, cache, list(range(12)))
    b = finish(pool, cache, [0, 1, 2, 3, 9, 9, 9, 9, 8, 8, 8, 8])
    assert cache.num_pages == 5  # the shared first page is kept once
    assert cache.match([*range(12), 0]) == (12, a)
    assert cache.match([0, 1, 2, 3, 9, 9, 9, 9, 8, 8, 8, 8, 0]) == (12, [a[0], *b[1:]])
    assert pool.num_free == pool.total - 5  # b's duplicate first page went back
    cache.check()
    pool.check()


def test_pages_of_a_prefix_already_cached_are_not_adopted_twice() -> None:
    pool, cache = cache_with()
    first = finish(pool, cache, list(range(8)))
    pages = pool.allocate(2)
    assert cache.insert(list(range(8)), pages) == 0
    pool.release(pages)
    assert cache.match(list(range(9))) == (8, first)
    assert pool.num_cached_only == 2
    pool.check()


def test_referenced_pages_are_never_evicted() -> None:
    pool, cache = cache_with(num_pages=9)
    finish(pool, cache, list(range(16)))
    _, pages = cache.match(list(range(17)))
    pool.retain(pages[:2])  # a running request uses the first two pages
    assert cache.evict(4) == 2
    assert cache.match(list(range(17))) == (8, pages[:2])
    pool.release(pages[:2])
    assert cache.evict(4) == 2 and cache.num_pages == 0
    cache.check()
    pool.check()


def test_eviction_takes_the_least_recently_used_leaf_first() -> None:
    pool, cache = cache_with(num_pages=16)
    old, mid, new = (finish(pool, cache, [k] * 8) for k in (1, 2, 3))
    cache.match([1] * 9)  # touch the oldest: now 2 is least recently used
    assert cache.evict(2) == 2
    assert cache.match([2] * 9) == (0, [])
    assert cache.match([1] * 9) == (8, old) and cache.match([3] * 9) == (8, new)
    assert set(mid) <= set(pool._free)
    cache.check()


def test_eviction_trims_a_leaf_from_its_tail_and_then_climbs_to_its_parent() -> None:
    pool, cache = cache_with(num_pages=16)
    trunk = finish(pool, cache, list(range(12)))
    branch = finish(pool, cache, [*range(8), 7, 7, 7, 7])
    assert cache.evict(1) == 1  # the least recently used leaf is the first prompt's tail
    assert cache.match([*range(12), 0]) == (8, trunk[:2])
    assert cache.evict(2) == 2  # the branch's own page, then the shared second page
    assert cache.match([*range(8), 7, 7, 7, 7, 0]) == (4, trunk[:1])
    assert branch[2] in pool._free
    cache.check()
    pool.check()


def test_a_disabled_cache_matches_nothing_and_keeps_nothing() -> None:
    pool = PagePool(16, 4)
    cache = PrefixCache(pool, enabled=False)
    pages = pool.allocate(2)
    assert cache.insert(list(range(8)), pages) == 0
    pool.release(pages)
    assert pool.num_free == pool.total
    assert cache.match(list(range(9))) == (0, []) and cache.evict(3) == 0
    cache.check()


def test_can_evict_counts_no_more_than_evict_frees() -> None:
    """An unreferenced page under a referenced one (a running request that computed the same
    prefix in its own pages, then published its later pages below the cached ones) is cached
    but not evictable until the page below it is."""
    pool, cache = cache_with(num_pages=9)
    finish(pool, cache, list(range(8)))  # two cached pages, unreferenced
    own = pool.allocate(3)  # a request that computed tokens 0-11 itself
    cache.insert(list(range(12)), own)  # its duplicates of 0-7 go back; its third page is adopted
    assert pool.num_cached_only == 2 and pool.ref(own[2]) == 1
    assert not cache.can_evict(1)
    assert cache.evict(2) == 0
    pool.release(own)
    assert cache.can_evict(1) and not cache.can_evict(2)  # a lower bound: the leaves' tails
    assert cache.evict(3) == 3 and pool.num_free == pool.total
    cache.check()
    pool.check()


def test_salted_prompts_share_pages_only_with_their_own_salt() -> None:
    pool, cache = cache_with(num_pages=16)
    plain = finish(pool, cache, list(range(8)))
    pages = pool.allocate(2)
    assert cache.insert(list(range(8)), pages, salt="tenant-a") == 2  # its own copy
    pool.release(pages)
    prompt = [*range(8), 99]
    assert cache.match(prompt) == (8, plain)
    assert cache.match(prompt, "tenant-a") == (8, pages)
    assert cache.match(prompt, "tenant-b") == (0, [])
    cache.check()
    # evicting a salt's last pages drops its root; the plain tree stays
    cache.match(prompt)  # the plain prefix is now the most recently used
    assert cache.evict(2) == 2
    assert cache.match(prompt, "tenant-a") == (0, []) and cache.match(prompt) == (8, plain)
    assert cache._salted == {}
    cache.check()
    pool.check()
