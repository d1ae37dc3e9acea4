"""Repetition, frequency and presence penalties over a logits batch.

Repetition (HF/CTRL) divides positive logits and multiplies negative ones by the penalty, for every
token of the prompt or the output. Frequency and presence (OpenAI) subtract
`count * frequency + (count > 0) * presence`, counting output tokens only.

Before `min_new_tokens` outputs, a row's `banned_token_ids` (its stop and eos ids) are set to
-inf after the penalties, so they are never sampled and the logprobs reflect the mask.

Building the (row, token) index pairs from Python lists each step would cost O(prompt) host work
per request and step; `TokenHistory` keeps each request's prompt on the device and its output in a
growing host buffer, keyed by request id and checked against the list objects it was built from.
A row fed on the device (running ahead, `ScheduledSeq.fed`) has a placeholder as its last output
token: that one is taken from the row's input token on the device instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from glm47.worker.batch import ScheduledSeq


@dataclass
class _Entry:
    prompt_src: list[int]  # the list the device copy was made from (held: identity check)
    prompt: torch.Tensor  # [P] int64 on the device
    output_src: list[int]
    output: np.ndarray  # [capacity] int64; the first `filled` entries mirror output_src
    filled: int


class TokenHistory:
    """Per-request token ids in forms cheap to scatter; entries not used in a step are dropped."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def gather(
        self,
        seqs: list[ScheduledSeq],
        rows: list[int],
        device: torch.device,
        prompt: bool,
        last: torch.Tensor | None = None,  # [N] int64 on device: each row's input token
    ) -> tuple[torch.Tensor, torch.Tensor]:  # ([M] row index, [M] token id), int64 on device
        """(row, token) pairs of the listed rows: output tokens, plus prompt tokens if `prompt`.
        A fed row's last output token is its input token on the device, `last[row]`."""
        entries = [self._entry(seqs[i], device) for i in rows]
        outputs = [e.output[: e.filled] for e in entries]
        out_lens = [len(o) for o in outputs]
        flat_out = np.concatenate(outputs) if outputs else np.zeros(0, dtype=np.int64)
        tokens = [torch.from_numpy(flat_out).to(device, non_blocking=True)]
        lengths = out_lens
        row_ids = list(rows)
        fed = [i for i in rows if seqs[i].fed]
        if fed:
            if last is None:
                raise ValueError("penalties of fed rows need the rows' input tokens")
            fed_t = torch.tensor(fed, dtype=torch.int64).to(device, non_blocking=True)
            tokens.append(last.index_select(0, fed_t))
            lengths = lengths + [1] * len(fed)
            row_ids = row_ids + fed
        if prompt:
            tokens += [e.prompt for e in entries]
            lengths = lengths + [int(e.prompt.shape[0]) for e in entries]
            row_ids = row_ids + list(rows)
        flat = torch.cat(tokens)  # [M]
        row_t = torch.tensor(row_ids, dtype=torch.int64).to(device, non_blocking=True)
        len_t = torch.tensor(lengths, dtype=torch.int64).to(device, non_blocking=True)
        row_idx = torch.repeat_interleave(row_t, len_t, output_size=int(flat.shape[0]))  # [M]
        return row_idx, flat

    def retain(self, rids: set[str]) -> None:
        """Forget every request not in `rids` (called once per step with that step's requests)."""
        for rid in [r for r in self._entries if r not in rids]:
            del self._entries[rid]

    def _entry(self, seq: ScheduledSeq, device: torch.device) -> _Entry:
        e = self._entries.get(seq.rid)
        if e is None or e.prompt_src is not seq.prompt_ids or e.output_src is not seq.output_ids:
            prompt = torch.tensor(seq.prompt_ids, dtype=torch.int64).to(device, non_blocking=True)
            e = _Entry(seq.prompt_ids, prompt, seq.output_ids, np.zeros(64, dtype=np.int64), 0)
            self._entries[seq.rid] = e
        n = len(seq.output_ids) - seq.fed  # a placeholder is not mirrored (gather adds it)
        if n < e.filled:  # the output list shrank (a rollback): rebuild it
            e.filled = 0
        if n > e.output.shape[0]:
            grown = np.zeros(max(n, 2 * e.output.shape[0]), dtype=np.int64)
            grown[: e.filled] = e.output[: e.filled]
            e.output = grown
        if n > e.filled:
            e.output[e.filled : n] = seq.output_ids[e.filled : n]
            e.filled = n
        return e


def apply_penalties(
    logits: torch.Tensor,  # [N, V] fp32
    seqs: list[ScheduledSeq],
    history: TokenHistory | None = None,
    last: torch.Tensor | None = None,  # [N] int64: each row's input token (needed for fed rows)
) -> torch.Tensor:  # [N, V] fp32
    """Penalised logits: a new tensor when any row has a penalty, else `logits` itself."""
    params = [s.sampling for s in seqs]
    rep_rows = [i for i, p in enumerate(params) if p.repetition_penalty != 1.0]
    oai_rows = [
        i for i, p in enumerate(params) if p.frequency_penalty != 0.0 or p.presence_penalty != 0.0
    ]
    if not rep_rows and not oai_rows:
        return logits
    history = history or TokenHistory()
    n, vocab = logits.shape
    device = logits.device  # below, every step makes a new tensor: `logits` is never written
    if rep_rows:
        seen = torch.zeros(n, vocab, dtype=torch.bool, device=device)  # [N, V]
        row_idx, tok_idx = history.gather(seqs, rep_rows, device, prompt=True, last=last)
        seen[row_idx, tok_idx] = True
        penalty = _column([p.repetition_penalty for p in params], device)  # [N, 1]
        penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
        logits = torch.where(seen, penalised, logits)
    if oai_rows:
        counts = torch.zeros(n, vocab, dtype=torch.float32, device=device)  # [N, V]
        row_idx, tok_idx = history.gather(seqs, oai_rows, device, prompt=False, last=last)
        ones = torch.ones(tok_idx.shape, dtype=torch.float32, device=device)  # [M]
        counts.index_put_((row_idx, tok_idx), ones, accumulate=True)
        freq = _column([p.frequency_penalty for p in params], device)  # [N, 1]
        pres = _column([p.presence_penalty for p in params], device)  # [N, 1]
        logits = logits - freq * counts - pres * (counts > 0).float()
    return logits


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


def _column(values: list[float], device: torch.device) -> torch.Tensor:  # [N, 1] fp32
    return torch.tensor(values, dtype=torch.float32).to(device, non_blocking=True)[:, None]
