"""Constrained decoding in the worker: JSON output under a request's grammar, or one of a
list of strings (docs/wire.md `Grammar`).

The matcher is Rust (`glm47._native.JsonConstraint`, router-rs/src/grammar): the engine asks a
request's constraint for the allowed-token mask before each of its samples (`Constraint.mask`,
packed 32-bit words) and tells it every sampled token (`accept`); the sampler sets the logits of
the tokens outside the mask to -inf. A request whose document is complete finishes with reason
"stop". Such requests get no drafts; a step with their samples is queued ahead without its
sampling, which waits for the masks (engine.py).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Protocol

import torch

from glm47.worker.batch import ScheduledSeq
from glm47.worker.wire_messages import WireGrammar

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


class Grammars:
    """Builds requests' constraints over one model's vocabulary (loaded once, at construction,
    from the tokenizer in `model_dir`; masks `vocab_size` ids wide, the logits' width)."""

    def __init__(self, model_dir: str, vocab_size: int) -> None:
        from glm47 import _native

        self._native = _native
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
        constraint: Constraint = self._native.JsonConstraint(
            self._vocab, grammar.schema, ends, grammar.start_after, grammar.choices
        )
        return constraint

    def attach_masks(
        self, seqs: list[ScheduledSeq], constraint_of: Callable[[str], Constraint | None]
    ) -> None:
        """Sets `allowed` on each sampled sequence whose request (`constraint_of` its id) is
        under an active grammar; all of a step's masks are computed together."""
        masked: list[tuple[ScheduledSeq, Constraint]] = []
        for seq in seqs:
            c = constraint_of(seq.rid) if seq.sample else None
            if c is not None and c.active:
                masked.append((seq, c))
        if not masked:
            return
        for (seq, _), mask in zip(masked, self.masks([c for _, c in masked]), strict=True):
            if mask.count(0) == len(mask):  # no token continues the document (never expected)
                log.warning("request %s: its grammar allows no token; sampling unconstrained",
                            seq.rid)  # fmt: skip
                continue
            seq.allowed = mask

    def masks(self, constraints: list[Constraint]) -> list[bytes]:
        """`c.mask()` of each constraint, computed on several threads (a step's constrained
        requests wait for all of them)."""
        threads = min(MASK_THREADS, os.cpu_count() or 1)
        masks: list[bytes] = self._native.json_masks(constraints, threads)
        return masks


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
