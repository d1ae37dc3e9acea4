"""Constrained decoding in the worker: JSON output under a request's grammar, one of a list of
strings, a match of a regular expression, or forced tool calls (docs/wire.md `Grammar`).

The matcher is Rust (`glm47._native.JsonConstraint`, router-rs/src/grammar): the engine asks a
request's constraint for the allowed-token mask before each of its samples (`Constraint.mask`,
packed 32-bit words) and tells it every sampled token (`accept`); the sampler sets the logits of
the tokens outside the mask to -inf. A request whose document is complete finishes with reason
"stop". Their MTP drafts are cut where the grammar stops allowing them, and each draft's row
is masked by the grammar read on through the drafts before it (`Constraint.fork`). A step with
their samples is queued ahead without its sampling, which waits for the masks (engine.py).

A request's reasoning budget, allowed token ids and bad words are constraints too, layered
around its grammar if it has one (token_rules.py).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Protocol

import torch

from glm47.worker.batch import ScheduledSeq
from glm47.worker.token_rules import Layer, ReasoningBudget, TokenRules, packed
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
        self._vocab_size = vocab_size
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
            grammar.tool_calls, compact=grammar.compact,
        )  # fmt: skip
        return constraint

    def layered(
        self,
        inner: Constraint | None,
        budget: WireReasoningBudget | None,
        allowed_ids: list[int],
        bad_words: list[list[int]],
    ) -> Constraint:
        """`inner` (None: no grammar) under a reasoning budget and token rules (token_rules.py),
        those given; raises ValueError for a closing or allowed id outside the vocabulary."""
        c = inner
        if budget is not None:
            if budget.end_id >= self._vocab_size:
                raise ValueError(
                    f"reasoning_budget end_id {budget.end_id} is outside the vocabulary"
                )
            forced = packed([budget.end_id], self._mask_bytes)
            c = ReasoningBudget(budget.end_id, budget.tokens, forced, c)
        if allowed_ids or bad_words:
            outside = [i for i in allowed_ids if not 0 <= i < self._vocab_size]
            if outside:
                raise ValueError(f"allowed_token_ids {outside[:5]} are outside the vocabulary")
            allowed = packed(allowed_ids, self._mask_bytes) if allowed_ids else None
            bad = [tuple(w) for w in bad_words if w]
            c = TokenRules(allowed, bad, self._mask_bytes, c)
        assert c is not None, "a layered constraint has a grammar or a rule"
        return c

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
        """`c.mask()` of each constraint, the native grammars' computed on several threads (a
        step's constrained requests wait for all of them), the layers' built on them."""
        native = [(i, c.needs() if isinstance(c, Layer) else c) for i, c in enumerate(constraints)]
        native = [(i, c) for i, c in native if c is not None]
        computed: dict[int, bytes] = {}
        if native:
            threads = min(MASK_THREADS, os.cpu_count() or 1)
            masks = self._native.json_masks([c for _, c in native], threads)
            computed = {i: m for (i, _), m in zip(native, masks, strict=True)}
        out = []
        for i, c in enumerate(constraints):
            mask = c.mask_from(computed.get(i)) if isinstance(c, Layer) else computed.get(i)
            out.append(mask if mask is not None else b"\xff" * self._mask_bytes)
        return out


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
