"""The pool of KV cache pages and its accounting.

The runner's KV cache holds `num_pages * page_size` rows per layer; a page is `page_size` rows.
Page 0 is the padding page (CUDA-graph and page-table padding point at it) and is never handed out,
so `total == num_pages - 1` pages are usable.

Every usable page is in exactly one of three states:
- free: on the free list, held by nobody;
- in use: referenced by at least one running request's page table (`ref[p] > 0`); a page shared
  through the prefix cache has one reference per request using it;
- cached: held only by the prefix cache (`ref[p] == 0` and `cached[p]`), evictable.
`check()` verifies `free + cached + in_use == total` and that the three sets are disjoint.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

PADDING_PAGE = 0


class OutOfPagesError(RuntimeError):
    """`allocate` was asked for more pages than are free (callers check `num_free` first)."""


class PagePool:
    """Free list, per-page reference counts and prefix-cache membership of the KV pages."""

    def __init__(self, num_pages: int, page_size: int) -> None:
        if num_pages < 2:
            raise ValueError(
                f"the KV pool needs at least 2 pages (one is padding), got {num_pages}"
            )
        if page_size < 1 or page_size & (page_size - 1):
            raise ValueError(f"page_size must be a power of two, got {page_size}")
        self.num_pages = num_pages
        self.page_size = page_size
        # Stack of free page ids; popping from the end hands out low ids first.
        self._free: list[int] = list(range(num_pages - 1, PADDING_PAGE, -1))
        self._ref = [0] * num_pages  # [num_pages] page tables that hold each page
        self._cached = [False] * num_pages  # [num_pages] page owned by the prefix cache
        self._num_cached = 0  # pages with _cached set (whatever their ref)
        self._num_in_use = 0  # pages with ref > 0

    # -- sizes --------------------------------------------------------------------------------

    @property
    def total(self) -> int:
        """Usable pages (the padding page excluded)."""
        return self.num_pages - 1

    @property
    def capacity_tokens(self) -> int:
        return self.total * self.page_size

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_in_use(self) -> int:
        """Pages referenced by at least one request."""
        return self._num_in_use

    @property
    def num_cached_only(self) -> int:
        """Pages held only by the prefix cache (evictable)."""
        return self.total - self.num_free - self._num_in_use

    def pages_for(self, num_tokens: int) -> int:
        """Pages needed to hold `num_tokens` positions."""
        return -(-num_tokens // self.page_size)

    def ref(self, page: int) -> int:
        return self._ref[page]

    def all_cached(self, pages: Iterable[int]) -> bool:
        return all(map(self._cached.__getitem__, pages))

    @property
    def num_cached(self) -> int:
        """Pages owned by the prefix cache, referenced or not."""
        return self._num_cached

    def referenced(self) -> dict[int, int]:
        """Reference count of every referenced page."""
        return {p: r for p, r in enumerate(self._ref) if r > 0}

    # -- requests -----------------------------------------------------------------------------

    def allocate(self, n: int) -> list[int]:
        """Take `n` free pages, each with one reference."""
        if n > len(self._free):
            raise OutOfPagesError(f"asked for {n} pages, {len(self._free)} free")
        pages = [self._free.pop() for _ in range(n)]
        for p in pages:
            self._ref[p] = 1
        self._num_in_use += n
        return pages

    def retain(self, pages: Iterable[int]) -> None:
        """Add one reference to each page (a request starts using shared prefix pages)."""
        for p in pages:
            assert p != PADDING_PAGE and (self._ref[p] > 0 or self._cached[p]), f"page {p} is free"
            if self._ref[p] == 0:
                self._num_in_use += 1
            self._ref[p] += 1

    def release(self, pages: Iterable[int]) -> None:
        """Drop one reference from each page; pages left unreferenced and uncached become free."""
        for p in pages:
            assert self._ref[p] > 0, f"page {p} released more often than retained"
            self._ref[p] -= 1
            if self._ref[p] == 0:
                self._num_in_use -= 1
                if not self._cached[p]:
                    self._free.append(p)

    # -- prefix cache -------------------------------------------------------------------------

    def mark_cached(self, page: int) -> None:
        """The prefix cache takes ownership of a page a request still references."""
        assert self._ref[page] > 0 and not self._cached[page], f"page {page} cannot be adopted"
        self._cached[page] = True
        self._num_cached += 1

    def evict(self, page: int) -> None:
        """The prefix cache gives up an unreferenced page; it becomes free."""
        assert self._cached[page] and self._ref[page] == 0, f"page {page} is not evictable"
        self._cached[page] = False
        self._num_cached -= 1
        self._free.append(page)

    # -- accounting ---------------------------------------------------------------------------

    def check(self) -> None:
        """Assert the accounting invariant of the module doc by recounting every page (C-level
        loops only: a few milliseconds for 100k pages, so it runs whenever the engine idles)."""
        free = set(self._free)
        assert len(free) == len(self._free), "a page is on the free list twice"
        assert PADDING_PAGE not in free and self._ref[PADDING_PAGE] == 0, "padding page handed out"
        assert not self._cached[PADDING_PAGE], "padding page in the prefix cache"
        assert not any(map(self._ref.__getitem__, free)), "a free page is still referenced"
        assert not any(map(self._cached.__getitem__, free)), "a free page is still cached"
        in_use = len(self._ref) - self._ref.count(0)
        cached = self._cached.count(True)
        cached_and_used = len(list(filter(None, itertools.compress(self._ref, self._cached))))
        assert in_use == self._num_in_use, "in-use counter drifted"
        assert cached == self._num_cached, "cached counter drifted"
        cached_only = cached - cached_and_used
        counted = len(free) + cached_only + in_use
        assert counted == self.total, (
            f"KV page accounting broken: free {len(free)} + cached {cached_only} + in use "
            f"{in_use} = {counted} != total {self.total} (leaked {self.total - counted})"
        )
