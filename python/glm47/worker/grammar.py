"""Constrained decoding in the worker: JSON output under a request's grammar, one of a list of
strings, a match of a regular expression, or forced tool calls (docs/wire.md `Grammar`).

The matcher is Rust (`glm47._native.JsonConstraint`, router-rs/src/grammar): the engine asks a
request's constraint for the allowed-token mask before each of its samples (`Constraint.mask`,
packed 32-bit words) and tells it every sampled token (`accept`); the sampler sets the logits of
the tokens outside the mask to -inf. A request whose document is complete finishes with reason
"stop". Their MTP drafts are cut where the grammar stops allowing them, and each draft's row
is masked by the grammar read on through the drafts before it (`Constraint.fork`). A step with
their samples is queued ahead without its sampling, which waits for the masks (engine.py).

A request's reasoning budget (`ReasoningBudget`) is a constraint too, around its grammar if it
has one: once the budget is spent inside the reasoning its prompt opened, its mask holds the
closing token alone.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Protocol

import torch

from glm47.worker.batch import ScheduledSeq
from glm47.worker.wire_messages import WireGrammar, WireReasoningBudget

log = logging.getLogger(__name__)

# Threads that compute a step's masks (each takes well under a millisecond on the real
# vocabulary; a step of many constrained requests spreads them).
MASK_THREADS = 8


class Constraint(Protocol):
    """What the engine needs of `glm47._native.JsonConstraint`."""

    @property
    def active(self) -> bool: ...  # the grammar applies to the next token

    def accept(self, token: int) -> bool: ...  # False: the grammar does not allow it

    def is_done(self) -> bool: ...  # the document is complete and cannot be extended

    def mask(self) -> bytes: ...  # allowed ids: bit id % 32 of little-endian word id / 32

    def fork(self) -> Constraint: ...  # a copy that reads on independently


class Grammars:
    """Builds requests' constraints over one model's vocabulary (loaded once, at construction,
    from the tokenizer in `model_dir`; masks `vocab_size` ids wide, the logits' width)."""

    def __init__(self, model_dir: str, vocab_size: int) -> None:
        from glm47 import _native

        self._native = _native
        self._mask_bytes = 4 * ((vocab_size + 31) // 32)  # a mask's packed 32-bit words
        self._vocab = None
        self._why: str | None = None
        start = time.perf_counter()
        try:
            self._vocab = _native.JsonVocab(model_dir, vocab_size)
        except (ValueError, OSError) as exc:
            self._why = f"the tokenizer of {model_dir} could not be loaded: {exc}"
            log.warning("constrained decoding is off: %s", self._why)
            return
        log.info("constrained decoding: vocabulary ready in %.2f s",
                 time.perf_counter() - start)  # fmt: skip

    def constraint(self, grammar: WireGrammar, ends: list[int]) -> Constraint:
        """A new constraint; `ends` are the ids that end generation. Raises ValueError for a
        schema the matcher cannot enforce, or when the vocabulary could not be loaded."""
        if self._vocab is None:
            raise ValueError(f"constrained decoding is not available: {self._why}")
        if grammar.ebnf is not None:
            from_ebnf: Constraint = self._native.JsonConstraint.from_ebnf(
                self._vocab, grammar.ebnf, ends, grammar.start_after
            )
            return from_ebnf
        if grammar.structural_tag is not None:
            tagged: Constraint = self._native.JsonConstraint.from_structural_tag(
                self._vocab, grammar.structural_tag, ends, grammar.start_after
            )
            return tagged
        constraint: Constraint = self._native.JsonConstraint(
            self._vocab, grammar.schema, ends, grammar.start_after, grammar.choices, grammar.regex,
            grammar.tool_calls,
        )  # fmt: skip
        return constraint

    def budgeted(self, budget: WireReasoningBudget, inner: Constraint | None) -> Constraint:
        """`inner` (None: no grammar) under a reasoning budget; raises ValueError for an
        `end_id` outside the masks."""
        if budget.end_id >= self._mask_bytes * 8:
            raise ValueError(f"reasoning_budget end_id {budget.end_id} is outside the vocabulary")
        forced = bytearray(self._mask_bytes)
        forced[budget.end_id // 8] = 1 << (budget.end_id % 8)  # little-endian words: bit id % 8
        return ReasoningBudget(budget.end_id, budget.tokens, bytes(forced), inner)

    def attach_masks(
        self, seqs: list[ScheduledSeq], constraint_of: Callable[[str], Constraint | None]
    ) -> None:
        """Sets the masks of each sampled sequence whose request (`constraint_of` its id) has a
        grammar: `allowed` for the row of its last known token and `draft_allowed` for the row
        of each draft (the grammar read on through the drafts before it), None where the grammar
        does not apply yet. All of a step's masks are computed together."""
        rows: list[tuple[ScheduledSeq, int, Constraint]] = []  # (seq, row, its constraint)
        for seq in seqs:
            c = constraint_of(seq.rid) if seq.sample else None
            if c is None:
                continue
            seq.draft_allowed = [None] * len(seq.draft_ids)
            for j in range(1 + len(seq.draft_ids)):
                if j > 0:
                    c = c.fork()
                    c.accept(seq.draft_ids[j - 1])  # drafts are cut where the grammar ends
                if c.active and not c.is_done():  # a row after the document ends is dropped
                    rows.append((seq, j, c))
        if not rows:
            return
        for (seq, j, _), mask in zip(rows, self.masks([c for _, _, c in rows]), strict=True):
            if mask.count(0) == len(mask):  # no token continues the document (never expected)
                log.warning("request %s: its grammar allows no token; sampling unconstrained",
                            seq.rid)  # fmt: skip
            elif j == 0:
                seq.allowed = mask
            else:
                seq.draft_allowed[j - 1] = mask

    @staticmethod
    def cut_drafts(constraint: Constraint, drafts: list[int]) -> list[int]:
        """The drafts up to the first the grammar does not allow (or the one that completes the
        document)."""
        c = constraint.fork()
        kept: list[int] = []
        for token in drafts:
            if not c.accept(token):
                break
            kept.append(token)
            if c.is_done():
                break
        return kept

    def masks(self, constraints: list[Constraint]) -> list[bytes]:
        """`c.mask()` of each constraint, computed on several threads (a step's constrained
        requests wait for all of them)."""
        masks: list[bytes | None] = [None] * len(constraints)
        native: list[tuple[int, Constraint]] = []
        for i, c in enumerate(constraints):
            if isinstance(c, ReasoningBudget):
                if c.forcing or c.inner is None:
                    masks[i] = c.forced_mask
                    continue
                c = c.inner
            native.append((i, c))
        if native:
            threads = min(MASK_THREADS, os.cpu_count() or 1)
            computed = self._native.json_masks([c for _, c in native], threads)
            for (i, _), mask in zip(native, computed, strict=True):
                masks[i] = mask
        return [m if m is not None else b"" for m in masks]


class ReasoningBudget:
    """A request's reasoning budget (docs/wire.md `ReasoningBudget`) around its grammar, if any:
    while the reasoning the prompt opened is open, its tokens are counted, and once `budget` of
    them have been generated the only token allowed is `end_id`, which closes it; from then on
    `inner` (whose grammar starts after `end_id`) is the constraint. A `Constraint`."""

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

    def mask(self) -> bytes:
        if self.forcing or self.inner is None:
            return self.forced_mask
        return self.inner.mask()

    def fork(self) -> ReasoningBudget:
        inner = self.inner.fork() if self.inner is not None else None
        return ReasoningBudget(
            self.end_id, self.budget, self.forced_mask, inner, self.spent, self.reasoning
        )


def unpack_masks(
    words: torch.Tensor,  # [N, W] int32: packed masks, W * 32 >= vocab
    vocab: int,
) -> torch.Tensor:  # [N, vocab] bool
    """Packed masks (bit `id % 32` of word `id / 32`) to one bool per id."""
    shifts = torch.arange(32, dtype=torch.int32, device=words.device)
    bits = (words.unsqueeze(-1) >> shifts) & 1  # [N, W, 32]
    return bits.reshape(words.shape[0], -1)[:, :vocab].bool()


def apply_masks(
    logits: torch.Tensor,  # [N, V] fp32
    rows: list[int],  # the rows with a mask, ascending
    masks: list[bytes],  # per row in `rows`: its packed mask
) -> torch.Tensor:  # [N, V] fp32
    """`logits` with each masked row's disallowed ids at -inf (a new tensor when any row has a
    mask, else `logits` itself)."""
    if not rows:
        return logits
    packed = torch.stack([torch.frombuffer(bytearray(m), dtype=torch.int32) for m in masks])
    allowed = unpack_masks(packed.to(logits.device, non_blocking=True), logits.shape[1])
    idx = torch.tensor(rows, dtype=torch.int64).to(logits.device, non_blocking=True)
    out = logits.clone()
    out[idx] = logits[idx].masked_fill(~allowed, -torch.inf)
    return out
