"""Host-side layout of a `ScheduledBatch`: token ids, positions, cache slots and page tables,
staged into device buffers that persist across steps (the shape CUDA-graph capture builds on).

Needs no model: the runner owns one `StepInputBuilder`, and CPU benchmarks of the step loop build
the same tensors with it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import numpy as np
import torch

from glm47.worker.attention.base import AttentionMetadata
from glm47.worker.batch import ScheduledBatch, ScheduledSeq, TokenFeed

# Sequences computing at most this many tokens (decoding, or verifying a few drafts) attend
# through the decode backend, which reads the paged cache in place; longer chunks through the
# prefill backend.
SHORT_QUERY = 8


@dataclass
class StepInputs:
    """Device tensors of one step."""

    input_ids: torch.Tensor  # [T] int64
    meta: AttentionMetadata
    # [N] int64: the rows in [0, T) to sample: the last token of each sampled sequence, and each
    # of its draft tokens
    sample_rows: torch.Tensor
    sample_seqs: list[ScheduledSeq]  # the sequence of each sampled row, as the sampler sees it
    every_row_sampled: bool = False  # sample_rows is [0, T) in order (a plain decode step)
    batch: ScheduledBatch | None = None  # what `ModelRunner.prepare` built it from


class StaticBuffers:
    """Named device buffers reused every step; a step's tensors are leading slices of them."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._buffers: dict[str, torch.Tensor] = {}

    def stage(self, name: str, host: torch.Tensor) -> torch.Tensor:
        """Copy `host` into buffer `name` (grown when too small) and return the filled view."""
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < host.numel() or buf.dtype != host.dtype:
            size = max(host.numel(), 2 * (buf.numel() if buf is not None else 0), 1)
            buf = torch.zeros(size, dtype=host.dtype, device=self.device)
            self._buffers[name] = buf
        view = buf[: host.numel()].view(host.shape)
        view.copy_(host, non_blocking=True)
        return view


class PageTables:
    """Host page tables kept across steps, one row of a growing int32 array per request.

    A request's page list only grows by appending while it runs (the scheduler replaces the list
    object when the request leaves the running batch), so a row is rebuilt only when the list
    object changes or shrinks, and otherwise extended by the pages appended since the last step:
    a decode step copies no page ids at all except a new page every `page_size` tokens.
    """

    def __init__(self, rows: int = 64, width: int = 64) -> None:
        self.table = np.zeros((rows, width), dtype=np.int32)  # [rows, width] page ids per row
        self._rows: dict[str, tuple[list[int], int]] = {}  # rid -> (page list object, row)
        self._filled = [0] * rows  # [rows] page ids copied into each row
        self._free: list[int] = list(range(rows - 1, -1, -1))

    def rows_of(self, seqs: list[ScheduledSeq]) -> tuple[np.ndarray, np.ndarray]:
        """([B] row, [B] pages held) of each sequence, its row brought up to date with its page
        list; rows of requests absent from this step are given back."""
        entries = self._rows
        fresh: dict[str, tuple[list[int], int]] = {}
        spare: list[int] = []  # rows of repeated request ids, given back at the end
        filled = self._filled
        out: list[int] = []
        for seq in seqs:
            pages = seq.page_ids
            entry = entries.pop(seq.rid, None)
            if seq.rid in fresh:
                spare.append(fresh[seq.rid][1])
            if entry is None or entry[0] is not pages:
                row = self._take() if entry is None else entry[1]
                filled[row] = 0
            else:
                row = entry[1]
            if len(pages) != filled[row]:
                self._sync(row, pages)
            fresh[seq.rid] = (pages, row)
            out.append(row)
        self._free.extend(row for _, row in entries.values())
        self._free.extend(spare)
        self._rows = fresh
        rows = np.array(out, dtype=np.int64)  # [B]
        return rows, np.array([self._filled[r] for r in out], dtype=np.int64)  # [B] each

    def _take(self) -> int:
        if not self._free:
            old = self.table.shape[0]
            self.table = np.concatenate([self.table, np.zeros_like(self.table)])
            self._filled += [0] * old
            self._free = list(range(2 * old - 1, old - 1, -1))
        return self._free.pop()

    def _sync(self, row: int, pages: list[int]) -> None:
        done = self._filled[row]
        if len(pages) < done:  # shrank: copy it whole
            done = 0
        if len(pages) > self.table.shape[1]:
            rows, width = self.table.shape
            wider = np.zeros((rows, max(len(pages), 2 * width)), dtype=np.int32)
            wider[:, :width] = self.table
            self.table = wider
        self.table[row, done : len(pages)] = pages[done:]
        self._filled[row] = len(pages)


class StepInputBuilder:
    """Builds a step's `StepInputs` into its own `StaticBuffers`, with array operations over the
    batch (no per-token Python work, one pass over the sequences)."""

    def __init__(self, page_size: int, device: torch.device) -> None:
        self.page_size = page_size
        self.buffers = StaticBuffers(device)
        self.page_tables = PageTables()

    def build(self, batch: ScheduledBatch) -> StepInputs:
        """Host-side layout of the batch, staged into the static device buffers."""
        seqs = batch.seqs
        if not seqs:
            raise ValueError("empty batch")
        ps = self.page_size
        b = len(seqs)
        n = np.fromiter(map(len, (s.token_ids for s in seqs)), dtype=np.int64, count=b)  # [B]
        start = np.fromiter((s.start_pos for s in seqs), dtype=np.int64, count=b)  # [B]
        end = start + n  # [B] seq_lens
        need = -(-end // ps)  # [B] pages each sequence reads
        rows, held = self.page_tables.rows_of(seqs)  # [B] each
        _check(seqs, n, end, need, held)
        width = int(need.max())
        table = self.page_tables.table[rows, :width]  # [B, width] int32, a copy
        table[np.arange(width)[None, :] >= need[:, None]] = 0  # only the pages in use
        starts = np.zeros(b + 1, dtype=np.int64)  # [B + 1]
        np.cumsum(n, out=starts[1:])
        t = int(starts[-1])
        if t == b:  # one token per sequence
            ids = np.fromiter((s.token_ids[0] for s in seqs), dtype=np.int64, count=b)  # [T]
            pos, seq_of_token = start, np.arange(b)  # [T] each
        else:
            flat = itertools.chain.from_iterable(s.token_ids for s in seqs)
            ids = np.fromiter(flat, dtype=np.int64, count=t)  # [T]
            seq_of_token = np.repeat(np.arange(b), n)  # [T]
            pos = np.arange(t) + (start - starts[:-1])[seq_of_token]  # [T]
        slots = table[seq_of_token, pos // ps].astype(np.int64) * ps + pos % ps  # [T]
        sample = np.fromiter((s.sample for s in seqs), dtype=bool, count=b)  # [B]
        stage = self.buffers.stage
        meta = AttentionMetadata(
            positions=stage("positions", torch.from_numpy(pos)),
            slot_mapping=stage("slot_mapping", torch.from_numpy(slots)),
            query_start_loc=stage("query_start_loc", torch.from_numpy(starts.astype(np.int32))),
            seq_lens=stage("seq_lens", torch.from_numpy(end.astype(np.int32))),
            page_table=stage("page_table", torch.from_numpy(table)),
            page_size=ps,
            max_query_len=int(n.max()),
            max_seq_len=int(end.max()),
            is_decode=t == b,
            total_seq_len=int(end.sum()),
            attended_pairs=_attended_pairs(n, end),
        )
        if t != b:
            short = n <= SHORT_QUERY
            lead = b if short.all() else int(np.argmin(short))  # leading short sequences
            meta.short_queries = lead == b
            if 0 < lead < b:
                meta.parts = self._split(meta, lead, starts, end, n)
        if any(s.draft_ids for s in seqs):
            rows, views = _draft_rows(seqs, starts)
        else:
            rows, views = starts[1:][sample] - 1, [s for s in seqs if s.sample]
        return StepInputs(
            input_ids=stage("input_ids", torch.from_numpy(ids)),
            meta=meta,
            sample_rows=stage("sample_rows", torch.from_numpy(rows)),
            sample_seqs=views,
            every_row_sampled=len(rows) == t and bool((rows == np.arange(t)).all()),
        )

    def _split(
        self, meta: AttentionMetadata, d: int, starts: np.ndarray, end: np.ndarray, n: np.ndarray
    ) -> tuple[AttentionMetadata, AttentionMetadata]:
        """Metadata of the first `d` sequences (few tokens each) and of the rest, as views of the
        step's buffers; only the rest's query offsets are staged anew."""
        head_len = int(starts[d])
        head = AttentionMetadata(
            positions=meta.positions[:head_len],
            slot_mapping=meta.slot_mapping[:head_len],
            query_start_loc=meta.query_start_loc[: d + 1],
            seq_lens=meta.seq_lens[:d],
            page_table=meta.page_table[:d],
            page_size=meta.page_size,
            max_query_len=int(n[:d].max()),
            max_seq_len=int(end[:d].max()),
            is_decode=head_len == d,
            total_seq_len=int(end[:d].sum()),
            attended_pairs=_attended_pairs(n[:d], end[:d]),
            short_queries=True,
        )
        rest_starts = (starts[d:] - head_len).astype(np.int32)  # [B - d + 1]
        rest = AttentionMetadata(
            positions=meta.positions[head_len:],
            slot_mapping=meta.slot_mapping[head_len:],
            query_start_loc=self.buffers.stage("rest_start_loc", torch.from_numpy(rest_starts)),
            seq_lens=meta.seq_lens[d:],
            page_table=meta.page_table[d:],
            page_size=meta.page_size,
            max_query_len=meta.max_query_len,
            max_seq_len=int(end[d:].max()),
            is_decode=False,
            total_seq_len=int(end[d:].sum()),
            attended_pairs=_attended_pairs(n[d:], end[d:]),
        )
        return head, rest


def _attended_pairs(n: np.ndarray, end: np.ndarray) -> int:
    """(query, key) pairs of causal attention: each sequence's `n` new tokens at the end of its
    `end` tokens see the cached `end - n` and the new ones up to themselves."""
    n64 = n.astype(np.int64)
    return int((n64 * (end.astype(np.int64) - n64) + n64 * (n64 + 1) // 2).sum())


def _draft_rows(
    seqs: list[ScheduledSeq], starts: np.ndarray
) -> tuple[np.ndarray, list[ScheduledSeq]]:
    """Sampled rows when some sequences carry drafts: the last `num_samples` rows of each, and per
    row the sequence as the sampler must see it there (the drafts before that row count as its
    output, for penalties, seeded draws and the min-tokens ban)."""
    rows: list[int] = []
    views: list[ScheduledSeq] = []
    for i, seq in enumerate(seqs):
        count = seq.num_samples
        if count == 0:
            continue
        end = int(starts[i + 1])
        rows.extend(range(end - count, end))
        views.append(seq)
        for j in range(1, count):
            output = seq.output_ids + seq.draft_ids[:j]
            banned = seq.banned_token_ids if len(output) < seq.ban_lifts_at else ()
            allowed = seq.draft_allowed[j - 1] if seq.draft_allowed else None
            views.append(replace(seq, output_ids=output, banned_token_ids=banned, allowed=allowed))
    return np.array(rows, dtype=np.int64), views


def _check(
    seqs: list[ScheduledSeq], n: np.ndarray, end: np.ndarray, need: np.ndarray, held: np.ndarray
) -> None:
    """Every sequence computes a token and holds the pages its tokens land in."""
    bad = np.flatnonzero((n == 0) | (held < need))
    if bad.size == 0:
        return
    i = int(bad[0])
    if n[i] == 0:
        raise ValueError(f"sequence {seqs[i].rid} schedules no tokens")
    raise ValueError(
        f"sequence {seqs[i].rid} has {len(seqs[i].page_ids)} pages for {end[i]} tokens"
    )


def feed_input_ids(batch: ScheduledBatch, input_ids: torch.Tensor, feed: TokenFeed) -> None:
    """Put the fed sequences' tokens into the step's input on the device (the batch holds
    placeholders for them; see `TokenFeed`)."""
    if input_ids.shape[0] == len(feed.seqs) == len(feed.tokens) and feed.rows == feed.seqs:
        # As many input rows as fed sequences: every sequence is fed one token, in the order
        # of the samples (the common decode step).
        input_ids.copy_(feed.tokens)
        return
    starts, at = [], 0
    for seq in batch.seqs:
        starts.append(at)
        at += len(seq.token_ids)
    if at != input_ids.shape[0] or len(feed.rows) != len(feed.seqs):
        raise ValueError("a token feed does not match its step")
    if any(len(batch.seqs[i].token_ids) != 1 for i in feed.seqs):
        raise ValueError("a fed sequence computes one token")
    idx = torch.tensor([feed.rows, [starts[i] for i in feed.seqs]], dtype=torch.int64)
    idx = idx.to(input_ids.device, non_blocking=True)
    input_ids.index_copy_(0, idx[1], feed.tokens.index_select(0, idx[0]))
