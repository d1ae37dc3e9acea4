"""Repetition, frequency and presence penalties over a logits batch.

Repetition (HF/CTRL) divides positive logits and multiplies negative ones by the penalty, for every
token of the prompt or the output. Frequency and presence (OpenAI) subtract
`count * frequency + (count > 0) * presence`, counting output tokens only.

Before `min_new_tokens` outputs, a row's `banned_token_ids` (its stop and eos ids) are set to
-inf after the penalties, so they are never sampled and the logprobs reflect the mask.

`PenaltyCounts` keeps each penalised request's token counts on the device across steps
(kernels/penalties: a row of a counts table, its prompt marked there when it has a repetition
penalty), so a step sends only the tokens a request gained since its last step (one, or none when
it runs ahead) and the logits go through one pass, whatever the outputs' lengths. A row fed on the
device (running ahead, `ScheduledSeq.fed`) has a placeholder as its last output token: that one
is counted from the row's input token on the device instead, and the host's copy of it, when it
arrives, is not counted again. The rows of a sequence's drafts (speculative decoding) see the
drafts before them as output: each takes a copy of its sequence's row for the step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from glm47.kernels.penalties import PROMPT_BIT, apply_counts, apply_counts_ref
from glm47.worker.batch import ScheduledSeq


@dataclass
class _Slot:
    index: int  # the request's row of the counts table
    prompt_src: list[int]  # the lists the row was built from (held: identity checks)
    output_src: list[int]
    counted: int  # output_src[:counted] are counted (the last perhaps fed, not yet on the host)


def penalised(seq: ScheduledSeq) -> bool:
    p = seq.sampling
    return p.repetition_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0


class PenaltyCounts:
    """Penalised requests' token counts on the device, one row of `table` a request, kept while
    the request is in every step (`retain`)."""

    def __init__(self) -> None:
        self._slots: dict[str, _Slot] = {}
        self._free: list[int] = []
        self.table: torch.Tensor | None = None  # [S, V] int32: counts, PROMPT_BIT on prompts

    def retain(self, rids: set[str]) -> None:
        """Free the rows of every request not in `rids` (called once a step with its requests);
        the table itself once no request holds a row (a warm-up's, say, or a burst's)."""
        for rid in [r for r in self._slots if r not in rids]:
            self._free.append(self._slots.pop(rid).index)
        if not self._slots and self.table is not None and self.table.shape[0]:
            self.table = self.table.new_zeros(0, self.table.shape[1])
            self._free = []

    def rows(
        self,
        seqs: list[ScheduledSeq],
        vocab: int,
        device: torch.device,
        last: torch.Tensor | None = None,  # [N] int64: each row's input token (fed rows)
    ) -> torch.Tensor:  # [N] int64: each row's table row, -1 for rows without penalties
        """Bring the penalised rows' counts up to date on the device (queued, nothing waits) and
        give each row its table row."""
        if self.table is None or self.table.shape[1] != vocab or self.table.device != device:
            self._slots.clear()
            self._free = []
            self.table = torch.zeros(0, vocab, dtype=torch.int32, device=device)
        out = [-1] * len(seqs)
        fresh: list[tuple[int, list[int]]] = []  # rows to zero, and the prompt to mark (or [])
        adds: tuple[list[int], list[int]] = ([], [])  # (row, token) counted from the host
        fed: tuple[list[int], list[int]] = ([], [])  # (row, batch row) counted from the device
        first: dict[str, int] = {}  # rid -> its first batch row
        drafts: list[tuple[int, int, list[int]]] = []  # (batch row, its sequence's row, drafts)
        for i, seq in enumerate(seqs):
            if not penalised(seq):
                continue
            if seq.rid in first:  # a draft's row: the drafts before it are output too
                base = seqs[first[seq.rid]]
                extra = seq.output_ids[len(base.output_ids) :]
                drafts.append((i, out[first[seq.rid]], extra))
                continue
            first[seq.rid] = i
            slot = self._slot(seq, fresh)
            out[i] = slot.index
            real = len(seq.output_ids) - seq.fed  # a fed placeholder is not on the host yet
            if slot.counted > real:  # counted a token the host does not hold: recount
                fresh.append((slot.index, seq.prompt_ids if self._marks(seq) else []))
                slot.counted = 0
            new = seq.output_ids[slot.counted : real]
            adds[0].extend([slot.index] * len(new))
            adds[1].extend(new)
            slot.counted = real
            if seq.fed:
                fed[0].append(slot.index)
                fed[1].append(i)
                slot.counted += 1
        if fed[0] and last is None:
            raise ValueError("penalties of fed rows need the rows' input tokens")
        for i, _, _ in drafts:
            out[i] = self._take()
        self._update(fresh, adds, fed, drafts, out, last, device)
        for i, _, _ in drafts:  # the copies are the step's alone (reused in stream order)
            self._free.append(out[i])
        return torch.tensor(out, dtype=torch.int64).to(device, non_blocking=True)

    @staticmethod
    def _marks(seq: ScheduledSeq) -> bool:
        """Whether the request's prompt tokens count as seen (a repetition penalty)."""
        return seq.sampling.repetition_penalty != 1.0

    def _slot(self, seq: ScheduledSeq, fresh: list[tuple[int, list[int]]]) -> _Slot:
        """The request's slot; a new one (queued to be zeroed and its prompt marked) for a new
        request or a rebuilt output list."""
        slot = self._slots.get(seq.rid)
        if slot is not None and slot.prompt_src is seq.prompt_ids:
            if slot.output_src is seq.output_ids:
                return slot
            self._free.append(slot.index)
        slot = _Slot(self._take(), seq.prompt_ids, seq.output_ids, 0)
        self._slots[seq.rid] = slot
        fresh.append((slot.index, seq.prompt_ids if self._marks(seq) else []))
        return slot

    def _take(self) -> int:
        """A free table row, the table grown (doubled) when none is."""
        if not self._free:
            assert self.table is not None
            size = self.table.shape[0]
            grown = self.table.new_zeros(max(8, 2 * size), self.table.shape[1])
            grown[:size] = self.table
            self.table = grown
            self._free = list(range(grown.shape[0] - 1, size - 1, -1))
        return self._free.pop()

    def _update(
        self,
        fresh: list[tuple[int, list[int]]],
        adds: tuple[list[int], list[int]],
        fed: tuple[list[int], list[int]],
        drafts: list[tuple[int, int, list[int]]],
        out: list[int],
        last: torch.Tensor | None,
        device: torch.device,
    ) -> None:
        """Queue the table's changes, in order: rows zeroed and prompts marked, host tokens
        counted, fed tokens counted, then the drafts' rows copied and their drafts counted."""
        table = self.table
        assert table is not None

        def dev(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int64).to(device, non_blocking=True)

        if fresh:
            table.index_fill_(0, dev([r for r, _ in fresh]), 0)
            marks = [(r, t) for r, prompt in fresh for t in prompt]
            if marks:
                where = dev([r for r, _ in marks]), dev([t for _, t in marks])
                table.index_put_(where, table.new_full((len(marks),), PROMPT_BIT))
        ones = torch.ones(1, dtype=torch.int32, device=device)
        if adds[0]:
            table.index_put_(
                (dev(adds[0]), dev(adds[1])), ones.expand(len(adds[0])), accumulate=True
            )
        if fed[0]:
            assert last is not None
            tokens = last.index_select(0, dev(fed[1]))
            table.index_put_((dev(fed[0]), tokens), ones.expand(len(fed[0])), accumulate=True)
        if drafts:
            table.index_copy_(0, dev([out[i] for i, _, _ in drafts]),
                              table.index_select(0, dev([b for _, b, _ in drafts])))  # fmt: skip
            rows = [out[i] for i, _, extra in drafts for _ in extra]
            if rows:
                tokens_t = dev([t for _, _, extra in drafts for t in extra])
                table.index_put_((dev(rows), tokens_t), ones.expand(len(rows)), accumulate=True)


def apply_penalties(
    logits: torch.Tensor,  # [N, V] fp32
    seqs: list[ScheduledSeq],
    counts: PenaltyCounts | None = None,
    last: torch.Tensor | None = None,  # [N] int64: each row's input token (needed for fed rows)
) -> torch.Tensor:  # [N, V] fp32
    """Penalised logits: a new tensor when any row has a penalty, else `logits` itself. `counts`
    carries the requests' counts from step to step (a fresh one counts every token again)."""
    if not any(penalised(s) for s in seqs):
        return logits
    counts = counts or PenaltyCounts()
    slots = counts.rows(seqs, logits.shape[1], logits.device, last)
    params = torch.tensor(
        [[p.repetition_penalty, p.frequency_penalty, p.presence_penalty]
         for p in (s.sampling for s in seqs)],
        dtype=torch.float32,
    ).to(logits.device, non_blocking=True)  # fmt: skip
    assert counts.table is not None
    apply = apply_counts if logits.is_cuda else apply_counts_ref
    return apply(logits, counts.table, slots, params)


def apply_logit_bias(
    logits: torch.Tensor,  # [N, V] fp32
    seqs: list[ScheduledSeq],
) -> torch.Tensor:  # [N, V] fp32
    """`logits` plus each row's `logit_bias` (OpenAI's: added to the model's logits before
    anything else; a new tensor when any row has one, else `logits` itself). Ids outside the
    vocabulary are left out. Python touches each row's bias columns once, as whole tuples."""
    rows: list[int] = []
    ids: list[int] = []
    biases: list[float] = []
    for i, s in enumerate(seqs):
        p = s.sampling
        if p.logit_bias_ids:
            rows += [i] * len(p.logit_bias_ids)
            ids += p.logit_bias_ids
            biases += p.logit_bias_values
    if not ids:
        return logits
    pairs = torch.tensor([rows, ids], dtype=torch.int64).to(logits.device, non_blocking=True)
    values = torch.tensor(biases, dtype=logits.dtype).to(logits.device, non_blocking=True)
    inside = pairs[1] < logits.shape[1]  # [E]
    pairs, values = pairs[:, inside], values[inside]
    return logits.index_put((pairs[0], pairs[1]), values, accumulate=True)  # [N, V]


def apply_bans(
    logits: torch.Tensor,  # [N, V] fp32
    seqs: list[ScheduledSeq],
) -> torch.Tensor:  # [N, V] fp32
    """`logits` with each row's `banned_token_ids` set to -inf (a new tensor when any row bans
    ids, else `logits` itself): the ids that would stop a request before its min_new_tokens."""
    rows: list[int] = []
    ids: list[int] = []
    for i, s in enumerate(seqs):
        if s.banned_token_ids:
            rows += [i] * len(s.banned_token_ids)
            ids += s.banned_token_ids
    if not ids:
        return logits
    pairs = torch.tensor([rows, ids], dtype=torch.int64).to(logits.device, non_blocking=True)
    fill = torch.full((len(ids),), float("-inf"), dtype=logits.dtype, device=logits.device)
    return logits.index_put((pairs[0], pairs[1]), fill)  # [N, V]
