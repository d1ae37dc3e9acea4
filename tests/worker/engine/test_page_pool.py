"""The KV page pool: allocation, references, cache ownership and the accounting check."""

from __future__ import annotations

import pytest

from glm47.worker.engine.page_pool import OutOfPagesError, PagePool


def test_the_padding_page_is_never_handed_out() -> None:
    pool = PagePool(num_pages=5, page_size=4)
    pages = pool.allocate(4)
    assert sorted(pages) == [1, 2, 3, 4] and pool.num_free == 0
    assert pool.total == 4 and pool.capacity_tokens == 16
    pool.check()


def test_allocating_more_pages_than_are_free_raises() -> None:
    pool = PagePool(num_pages=3, page_size=2)
    pool.allocate(1)
    with pytest.raises(OutOfPagesError, match="asked for 2 pages, 1 free"):
        pool.allocate(2)


def test_released_pages_return_to_the_free_list_and_accounting_holds() -> None:
    pool = PagePool(num_pages=9, page_size=4)
    a, b = pool.allocate(3), pool.allocate(2)
    assert pool.num_in_use == 5 and pool.num_free == 3
    pool.check()
    pool.release(a)
    assert pool.num_in_use == 2 and pool.num_free == 6
    pool.release(b)
    assert pool.num_free == pool.total
    pool.check()


def test_a_shared_page_is_freed_only_after_its_last_reference() -> None:
    pool = PagePool(num_pages=4, page_size=1)
    [p] = pool.allocate(1)
    pool.retain([p])
    assert pool.ref(p) == 2 and pool.num_in_use == 1
    pool.release([p])
    assert pool.num_free == 2
    pool.release([p])
    assert pool.num_free == 3
    with pytest.raises(AssertionError, match="released more often"):
        pool.release([p])


def test_cached_pages_stay_off_the_free_list_until_evicted() -> None:
    pool = PagePool(num_pages=4, page_size=2)
    pages = pool.allocate(2)
    pool.mark_cached(pages[0])
    pool.release(pages)
    assert pool.num_free == 2 and pool.num_cached_only == 1 and pool.num_in_use == 0
    pool.check()
    pool.evict(pages[0])
    assert pool.num_free == 3 and pool.num_cached_only == 0
    pool.check()


def test_the_accounting_check_reports_a_leaked_page() -> None:
    pool = PagePool(num_pages=6, page_size=2)
    pool._free.pop()  # lose a page without referencing it
    with pytest.raises(AssertionError, match=r"leaked 1"):
        pool.check()


def test_page_size_must_be_a_power_of_two_and_the_pool_hold_a_usable_page() -> None:
    with pytest.raises(ValueError, match="power of two"):
        PagePool(num_pages=4, page_size=3)
    with pytest.raises(ValueError, match="at least 2 pages"):
        PagePool(num_pages=1, page_size=1)
    assert PagePool(num_pages=2, page_size=1).total == 1
