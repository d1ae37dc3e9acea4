"""Radix prefix cache over token ids at page granularity.

Each node holds a run of whole pages: `tokens` has `len(pages) * page_size` ids and `pages[i]` holds
the latents of `tokens[i * page_size : (i + 1) * page_size]` given every token above the node. A
child is keyed by the tuple of its first page's tokens, so siblings never share a first page. Only
full pages are shared: a partly filled last page stays private to its request.

Requests with a `cache_salt` (vLLM's) share only with requests of the same salt: each salt has a
root of its own, so a prompt never finds pages another tenant computed (and cannot tell from its
speed that they exist). Requests without one share the plain root.

Ownership: a page in the tree is "cached" in the `PagePool`. Requests that match a prefix take one
reference per page (`PagePool.retain`); a running request that offered its pages keeps its own
references. A referenced page is never evicted: eviction trims the unreferenced tail pages of
leaves, least recently used leaf first, and removes a leaf once it is empty (its parent may then
become a leaf in turn). Interior pages are evicted only after everything below them.
"""

from __future__ import annotations

import heapq
import itertools

from glm47.worker.engine.page_pool import PagePool


class _Node:
    __slots__ = ("children", "last_access", "pages", "parent", "salt", "tokens")

    def __init__(
        self,
        tokens: tuple[int, ...],
        pages: list[int],
        parent: _Node | None,
        salt: str | None = None,
    ) -> None:
        self.tokens = tokens  # [len(pages) * page_size]
        self.pages = pages  # [len(pages)] page ids, in position order
        self.parent = parent  # None: a root
        self.salt = salt  # a root's salt
        self.children: dict[tuple[int, ...], _Node] = {}  # first page's tokens -> child
        self.last_access = 0  # logical clock of the last match or insert through this node


class PrefixCache:
    """Share the KV pages of common prefixes; disabled mode matches nothing and keeps nothing."""

    def __init__(self, pool: PagePool, enabled: bool = True) -> None:
        self.pool = pool
        self.enabled = enabled
        self.page_size = pool.page_size
        self._root = _Node((), [], None)
        self._salted: dict[str, _Node] = {}  # a root per salt while it has children
        self._leaves: set[_Node] = set()  # nodes without children, root excluded
        self._clock = itertools.count(1)
        self.queried_tokens = 0  # cumulative prompt tokens looked up at first admission
        self.hit_tokens = 0  # cumulative prompt tokens served from the cache

    # -- lookup -------------------------------------------------------------------------------

    def _root_of(self, salt: str | None, create: bool = False) -> _Node | None:
        if salt is None:
            return self._root
        root = self._salted.get(salt)
        if root is None and create:
            root = self._salted[salt] = _Node((), [], None, salt)
        return root

    def match(self, tokens: list[int], salt: str | None = None) -> tuple[int, list[int]]:
        """The longest cached prefix of `tokens` in whole pages under `salt`, leaving at least one
        token out (its logits must be computed). Returns (num_cached_tokens, pages); takes no
        references."""
        root = self._root_of(salt)
        if not self.enabled or root is None:
            return 0, []
        ps = self.page_size
        max_pages = (len(tokens) - 1) // ps
        now = next(self._clock)
        node, pages = root, list[int]()
        while len(pages) < max_pages:
            start = len(pages) * ps
            child = node.children.get(tuple(tokens[start : start + ps]))
            if child is None:
                break
            child.last_access = now
            n = self._common_pages(child, tokens, start, max_pages - len(pages))
            pages.extend(child.pages[:n])
            if n < len(child.pages):
                break
            node = child
        return len(pages) * ps, pages

    def record_lookup(self, num_prompt_tokens: int, num_cached_tokens: int) -> None:
        """Count one first admission for the hit-rate counters."""
        self.queried_tokens += num_prompt_tokens
        self.hit_tokens += num_cached_tokens

    def _common_pages(self, node: _Node, tokens: list[int], start: int, limit: int) -> int:
        """Leading pages of `node` equal to `tokens[start:]`, at most `limit` (the first is known
        to match)."""
        ps = self.page_size
        n = min(len(node.pages), limit, (len(tokens) - start) // ps)
        if node.tokens[: n * ps] == tuple(tokens[start : start + n * ps]):
            return n
        k = 1
        while k < n and node.tokens[k * ps : (k + 1) * ps] == tuple(
            tokens[start + k * ps : start + (k + 1) * ps]
        ):
            k += 1
        return k

    # -- insertion ----------------------------------------------------------------------------

    def insert(self, tokens: list[int], pages: list[int], salt: str | None = None) -> int:
        """Offer a request's full pages (`tokens` spans exactly `pages`) under `salt`. Pages of a
        prefix already in the tree stay the request's (they are freed when it releases them); the
        rest are adopted by the tree. The request must still reference `pages`. Returns the pages
        adopted."""
        if not self.enabled or not pages:
            return 0
        ps = self.page_size
        assert len(tokens) == len(pages) * ps, "insert takes whole pages"
        now = next(self._clock)
        node, i = self._root_of(salt, create=True), 0
        assert node is not None
        while i < len(pages):
            child = node.children.get(tuple(tokens[i * ps : (i + 1) * ps]))
            if child is None:
                self._add_leaf(node, tuple(tokens[i * ps :]), pages[i:], now)
                return len(pages) - i
            n = self._common_pages(child, tokens, i * ps, len(pages) - i)
            if n < len(child.pages):
                child = self._split(child, n)  # the lower part keeps its own access time
            child.last_access = now
            node, i = child, i + n
        return 0

    def _add_leaf(self, parent: _Node, tokens: tuple[int, ...], pages: list[int], now: int) -> None:
        for p in pages:
            self.pool.mark_cached(p)
        leaf = _Node(tokens, list(pages), parent)
        leaf.last_access = now
        parent.children[tokens[: self.page_size]] = leaf
        self._leaves.discard(parent)
        self._leaves.add(leaf)

    def _split(self, node: _Node, n: int) -> _Node:
        """Cut `node` after its first `n` pages; returns the new upper part (node keeps the rest)."""
        ps = self.page_size
        parent = node.parent
        assert parent is not None and 0 < n < len(node.pages)
        head = _Node(node.tokens[: n * ps], node.pages[:n], parent)
        head.last_access = node.last_access
        parent.children[head.tokens[:ps]] = head
        node.tokens, node.pages, node.parent = node.tokens[n * ps :], node.pages[n:], head
        head.children[node.tokens[:ps]] = node
        return head

    # -- eviction -----------------------------------------------------------------------------

    def can_evict(self, num_pages: int) -> bool:
        """Whether `evict` can surely free `num_pages` pages now: counts the unreferenced tails
        of the leaves, which it frees first (a lower bound: it may climb to their parents too;
        an unreferenced page under a referenced one is not freeable), stopping once there are
        enough."""
        if num_pages <= 0:
            return True
        if not self.enabled:
            return False
        found = 0
        for leaf in self._leaves:
            idle = 0
            while idle < len(leaf.pages) and self.pool.ref(leaf.pages[-1 - idle]) == 0:
                idle += 1
            found += idle
            if found >= num_pages:
                return True
        return False

    def evict(self, num_pages: int) -> int:
        """Free up to `num_pages` unreferenced pages, least recently used leaves first, trimming
        each leaf from its tail. Returns the pages freed (fewer when everything left is in use)."""
        if not self.enabled or num_pages <= 0 or self.pool.num_cached_only == 0:
            return 0
        heap = [(leaf.last_access, id(leaf), leaf) for leaf in self._leaves]
        heapq.heapify(heap)
        freed = 0
        while freed < num_pages and heap:
            _, _, leaf = heapq.heappop(heap)
            idle = 0
            while idle < len(leaf.pages) and self.pool.ref(leaf.pages[-1 - idle]) == 0:
                idle += 1
            take = min(idle, num_pages - freed)
            if take == 0:
                continue
            for p in leaf.pages[len(leaf.pages) - take :]:
                self.pool.evict(p)
            freed += take
            leaf.pages = leaf.pages[: len(leaf.pages) - take]
            leaf.tokens = leaf.tokens[: len(leaf.pages) * self.page_size]
            parent = self._remove_if_empty(leaf)
            if parent is not None:
                heapq.heappush(heap, (parent.last_access, id(parent), parent))
        return freed

    def _remove_if_empty(self, leaf: _Node) -> _Node | None:
        """Unlink an emptied leaf; returns its parent when that became a leaf itself."""
        if leaf.pages:
            return None
        parent = leaf.parent
        assert parent is not None
        del parent.children[next(k for k, c in parent.children.items() if c is leaf)]
        self._leaves.discard(leaf)
        if parent.children:
            return None
        if parent.parent is not None:
            self._leaves.add(parent)
            return parent
        if parent.salt is not None:
            del self._salted[parent.salt]  # an empty salted root goes
        return None

    # -- introspection ------------------------------------------------------------------------

    @property
    def num_pages(self) -> int:
        """Pages owned by the tree, referenced or not."""
        return sum(len(n.pages) for n in self._walk())

    def check(self) -> None:
        """Assert the tree's structure and that its pages are exactly the pool's cached pages."""
        ps = self.page_size
        pages: list[int] = []
        for node in self._walk():
            assert node.pages and len(node.tokens) == len(node.pages) * ps, "malformed node"
            assert node.parent is not None and node.parent.children[node.tokens[:ps]] is node
            assert (not node.children) == (node in self._leaves), "leaf set out of date"
            pages.extend(node.pages)
        assert len(set(pages)) == len(pages), "a page appears twice in the prefix tree"
        assert self.pool.all_cached(pages), "a tree page is not marked cached in the pool"
        assert all(r.children for r in self._salted.values()), "an empty salted root is kept"
        assert self.pool.num_cached == len(pages), (
            f"the pool marks {self.pool.num_cached} pages cached, the tree holds {len(pages)}"
        )

    def _walk(self) -> list[_Node]:
        roots = [self._root, *self._salted.values()]
        out, stack = [], [c for root in roots for c in root.children.values()]
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out
