"""Per-request token rules the worker enforces with the grammar masks (grammar.py): a reasoning
budget (docs/wire.md `ReasoningBudget`), vLLM's `allowed_token_ids` and `bad_words`.

Each is a `Layer`: a Python constraint around an optional inner one (the request's native
grammar, or another layer). A layer's mask is built from the mask of the native constraint
beneath it (`needs`, computed with the other natives of the step on several threads) by
`mask_from`; None stands for "every token". Layers fork and accept tokens as the native
constraints do, so MTP drafts are cut and masked through them alike (grammar.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from glm47.worker.grammar import Constraint


def packed(ids: list[int] | tuple[int, ...], mask_bytes: int) -> bytes:
    """The mask allowing `ids` alone (bit `id % 32` of little-endian 32-bit word `id / 32`, so
    bit `id % 8` of byte `id / 8`); ids past the mask are left out."""
    bits = np.zeros(mask_bytes * 8, dtype=np.uint8)
    kept = [i for i in ids if 0 <= i < mask_bytes * 8]
    bits[kept] = 1
    return np.packbits(bits, bitorder="little").tobytes()


class Layer(ABC):
    """A Python constraint around `inner` (None: nothing beneath it)."""

    inner: Constraint | None

    def needs(self) -> Constraint | None:
        """The native constraint whose mask this layer's mask is built from, if it applies now."""
        inner = self.inner
        if isinstance(inner, Layer):
            return inner.needs()
        return inner if inner is not None and inner.active else None

    @abstractmethod
    def mask_from(self, native: bytes | None) -> bytes | None:
        """This layer's mask given the mask of `needs()` (None: every token allowed)."""

    def may_mask(self, unseen: int) -> bool:
        """Whether a sample `unseen` tokens past those accepted may need a mask (a step queued
        ahead waits for its masks only then)."""
        return True

    def inner_mask(self, native: bytes | None) -> bytes | None:
        """The mask of the layers and grammar beneath this one."""
        if isinstance(self.inner, Layer):
            return self.inner.mask_from(native)
        return native

    def mask(self) -> bytes:
        need = self.needs()
        mask = self.mask_from(need.mask() if need is not None else None)
        assert mask is not None, "a layer is asked for its mask only while it is active"
        return mask


class ReasoningBudget(Layer):
    """A request's reasoning budget around its grammar, if any: while the reasoning the prompt
    opened is open, its tokens are counted, and once `budget` of them have been generated the
    only token allowed is `end_id`, which closes it; from then on `inner` (whose grammar starts
    after `end_id`) is the constraint."""

    def __init__(
        self,
        end_id: int,
        budget: int,
        forced_mask: bytes,
        inner: Constraint | None,
        spent: int = 0,
        reasoning: bool = True,
    ) -> None:
        self.end_id = end_id
        self.budget = budget
        self.forced_mask = forced_mask  # `end_id` alone
        self.inner = inner
        self.spent = spent  # reasoning tokens generated
        self.reasoning = reasoning  # the reasoning is still open

    @property
    def forcing(self) -> bool:
        """The next token must close the reasoning."""
        return self.reasoning and self.spent >= self.budget

    @property
    def active(self) -> bool:
        return self.forcing or (self.inner is not None and self.inner.active)

    def accept(self, token: int) -> bool:
        ok = True
        if self.reasoning:
            if token == self.end_id:
                self.reasoning = False
            elif self.forcing:
                ok = False
            else:
                self.spent += 1
        if self.inner is not None:
            ok = self.inner.accept(token) and ok
        return ok

    def is_done(self) -> bool:
        return self.inner is not None and self.inner.is_done()

    def needs(self) -> Constraint | None:
        return None if self.forcing else super().needs()

    def may_mask(self, unseen: int) -> bool:
        near = self.reasoning and self.spent + unseen >= self.budget
        if isinstance(self.inner, Layer):
            return near or self.inner.may_mask(unseen)
        return near or self.inner is not None

    def mask_from(self, native: bytes | None) -> bytes | None:
        return self.forced_mask if self.forcing else self.inner_mask(native)

    def fork(self) -> ReasoningBudget:
        inner = self.inner.fork() if self.inner is not None else None
        return ReasoningBudget(
            self.end_id, self.budget, self.forced_mask, inner, self.spent, self.reasoning
        )


class TokenRules(Layer):
    """vLLM's `allowed_token_ids` (every sample is one of them; `allowed` their mask, None: no
    such rule) and `bad_words` (token sequences, each never completed: its last token is banned
    where the output ends with the rest of it), around `inner`. Always active: its mask applies
    to every sample."""

    def __init__(
        self,
        allowed: bytes | None,
        bad: list[tuple[int, ...]],
        mask_bytes: int,
        inner: Constraint | None,
        recent: tuple[int, ...] = (),
    ) -> None:
        self.allowed = allowed
        self.bad = bad
        self.mask_bytes = mask_bytes
        self.inner = inner
        self.keep = max((len(b) for b in bad), default=1) - 1  # output tokens a ban looks back on
        self.recent = recent  # the last `keep` output tokens
        self.gave_way = False  # the last mask was the one beneath alone (see mask_from)

    @property
    def active(self) -> bool:
        return True

    def banned(self) -> list[int]:
        """The tokens that would complete a bad word now."""
        out = []
        for word in self.bad:
            head = len(word) - 1
            if head == 0 or (len(self.recent) >= head and self.recent[-head:] == word[:-1]):
                out.append(word[-1])
        return out

    def allows(self, token: int) -> bool:
        if self.allowed is not None:
            byte = token // 8
            if byte >= len(self.allowed) or not (self.allowed[byte] >> (token % 8)) & 1:
                return False
        return token not in self.banned()

    def accept(self, token: int) -> bool:
        ok = self.allows(token) or self.gave_way
        self.gave_way = False
        if self.keep:
            self.recent = (*self.recent, token)[-self.keep :]
        if self.inner is not None:
            ok = self.inner.accept(token) and ok
        return ok

    def is_done(self) -> bool:
        return self.inner is not None and self.inner.is_done()

    def mask_from(self, native: bytes | None) -> bytes | None:
        """The rules within the mask beneath; where they leave no token of it (the client's
        rules exclude all a grammar or a forced close allows), the mask beneath alone, so that
        the grammar's document and the reasoning's close still come."""
        base = self.inner_mask(native)
        mask = np.full(self.mask_bytes, 0xFF, dtype=np.uint8)
        if self.allowed is not None:
            mask &= np.frombuffer(self.allowed, dtype=np.uint8)[: self.mask_bytes]
        for token in self.banned():
            if token < self.mask_bytes * 8:
                mask[token // 8] &= ~np.uint8(1 << (token % 8))
        self.gave_way = False
        if base is not None:
            within = mask & np.frombuffer(base, dtype=np.uint8)[: self.mask_bytes]
            if not within.any():
                self.gave_way = True  # the token sampled from it is not the rules' to refuse
                return base
            mask = within
        return mask.tobytes()

    def fork(self) -> TokenRules:
        inner = self.inner.fork() if self.inner is not None else None
        fork = TokenRules(self.allowed, self.bad, self.mask_bytes, inner, self.recent)
        fork.gave_way = self.gave_way
        return fork
