"""StepInputBuilder against a plain per-token construction, over many steps of a changing batch."""

from __future__ import annotations

import random

import pytest
import torch

from glm47.worker.attention.base import AttentionMetadata
from glm47.worker.batch import ScheduledBatch, ScheduledSeq
from glm47.worker.step_inputs import SHORT_QUERY, PageTables, StepInputBuilder


def reference(batch: ScheduledBatch, ps: int) -> dict[str, list]:
    """Every tensor of the step built token by token from the page lists."""
    width = max(-(-(s.start_pos + len(s.token_ids)) // ps) for s in batch.seqs)
    out: dict[str, list] = {k: [] for k in ("ids", "pos", "slots", "lens", "table", "rows")}
    starts = [0]
    for seq in batch.seqs:
        end = seq.start_pos + len(seq.token_ids)
        need = -(-end // ps)
        out["table"].append(seq.page_ids[:need] + [0] * (width - need))
        for j, tok in enumerate(seq.token_ids):
            p = seq.start_pos + j
            out["ids"].append(tok)
            out["pos"].append(p)
            out["slots"].append(seq.page_ids[p // ps] * ps + p % ps)
        starts.append(starts[-1] + len(seq.token_ids))
        out["lens"].append(end)
        if seq.sample:
            out["rows"].append(starts[-1] - 1)
    out["starts"] = starts
    return out


class Workload:
    """Requests that prefill in chunks, decode, grow pages, leave and come back with new lists."""

    def __init__(self, rng: random.Random, ps: int) -> None:
        self.rng, self.ps = rng, ps
        self.next_page = 1
        self.live: dict[str, tuple[list[int], int]] = {}  # rid -> (page list, tokens computed)
        self.count = 0

    def step(self) -> ScheduledBatch:
        rng = self.rng
        if len(self.live) < 6 or rng.random() < 0.3:
            self.count += 1
            self.live[f"r{self.count % 9}"] = ([], 0)  # a reused id gets a new page list
        for rid in [r for r in self.live if rng.random() < 0.1]:
            del self.live[rid]
        seqs = []
        for rid, (pages, done) in self.live.items():
            if rng.random() < 0.2:
                continue  # not scheduled this step
            n = rng.choice([1, 1, 1, rng.randint(1, 3 * self.ps), rng.randint(1, 24)])
            while len(pages) * self.ps < done + n:
                pages.append(self.next_page)  # grows in place, as the scheduler's lists do
                self.next_page += 1
            tokens = [rng.randint(0, 999) for _ in range(n)]
            seqs.append(ScheduledSeq(rid, tokens, done, pages, sample=rng.random() < 0.8))
            self.live[rid] = (pages, done + n)
        return ScheduledBatch(seqs)


@pytest.mark.parametrize("page_size", [1, 4, 16])
def test_builder_matches_the_plain_construction_over_many_steps(page_size: int) -> None:
    rng = random.Random(page_size)
    work = Workload(rng, page_size)
    builder = StepInputBuilder(page_size, torch.device("cpu"))
    builder.page_tables = PageTables(rows=2, width=2)  # forces both kinds of growth
    steps = split_steps = 0
    while steps < 150:
        batch = work.step()
        if not batch.seqs:
            continue
        steps += 1
        got, want = builder.build(batch), reference(batch, page_size)
        meta = got.meta
        assert got.input_ids.tolist() == want["ids"]
        assert meta.positions.tolist() == want["pos"]
        assert meta.slot_mapping.tolist() == want["slots"]
        assert meta.seq_lens.tolist() == want["lens"]
        assert meta.query_start_loc.tolist() == want["starts"]
        assert meta.page_table.tolist() == want["table"]
        assert got.sample_rows.tolist() == want["rows"]
        assert [s.rid for s in got.sample_seqs] == [s.rid for s in batch.seqs if s.sample]
        assert meta.is_decode == all(len(s.token_ids) == 1 for s in batch.seqs)
        assert meta.max_seq_len == max(want["lens"])
        assert meta.total_seq_len == sum(want["lens"])
        assert meta.attended_pairs == causal_pairs(batch.seqs, want["lens"])
        assert meta.max_query_len == max(len(s.token_ids) for s in batch.seqs)
        assert meta.positions.dtype == meta.slot_mapping.dtype == torch.int64
        assert meta.page_table.dtype == meta.seq_lens.dtype == torch.int32
        check_parts(batch, meta, want)
        split_steps += meta.parts is not None
    assert split_steps > 10  # the workload mixes decoding sequences with prompt chunks


def check_parts(batch: ScheduledBatch, meta: AttentionMetadata, want: dict[str, list]) -> None:
    """A step with longer chunks splits after its leading short sequences (at most SHORT_QUERY
    tokens each); each part is that slice. A step of short sequences only is not split."""
    lens = [len(s.token_ids) for s in batch.seqs]
    d = next((i for i, n in enumerate(lens) if n > SHORT_QUERY), len(lens))
    assert meta.short_queries == (not meta.is_decode and d == len(lens))
    if meta.is_decode or d in (0, len(lens)):
        assert meta.parts is None
        return
    assert meta.parts is not None
    head, tail = meta.parts
    r = sum(lens[:d])  # rows of the head
    assert head.is_decode == (r == d) and head.short_queries and not tail.is_decode
    assert head.positions.tolist() == want["pos"][:r]
    assert tail.positions.tolist() == want["pos"][r:]
    assert head.slot_mapping.tolist() == want["slots"][:r]
    assert tail.slot_mapping.tolist() == want["slots"][r:]
    assert head.query_start_loc.tolist() == want["starts"][: d + 1]
    assert tail.query_start_loc.tolist() == [x - r for x in want["starts"][d:]]
    assert head.seq_lens.tolist() == want["lens"][:d]
    assert tail.seq_lens.tolist() == want["lens"][d:]
    assert head.page_table.tolist() == want["table"][:d]
    assert tail.page_table.tolist() == want["table"][d:]
    assert (head.max_query_len, head.max_seq_len) == (max(lens[:d]), max(want["lens"][:d]))
    assert tail.max_query_len == max(lens[d:])
    assert tail.max_seq_len == max(want["lens"][d:])
    assert (head.total_seq_len, tail.total_seq_len) == (
        sum(want["lens"][:d]),
        sum(want["lens"][d:]),
    )
    assert head.attended_pairs == causal_pairs(batch.seqs[:d], want["lens"][:d])
    assert tail.attended_pairs == causal_pairs(batch.seqs[d:], want["lens"][d:])


def causal_pairs(seqs: list[ScheduledSeq], lens: list[int]) -> int:
    """Query i of a sequence's new tokens sits at position end - n + i and sees that many keys
    plus itself."""
    total = 0
    for seq, end in zip(seqs, lens, strict=True):
        n = len(seq.token_ids)
        total += sum(end - n + i + 1 for i in range(n))
    return total


def test_a_page_list_replaced_or_shrunk_is_read_afresh() -> None:
    builder = StepInputBuilder(2, torch.device("cpu"))
    pages = [5, 6, 7]
    first = builder.build(ScheduledBatch([ScheduledSeq("a", [1], 4, pages, True)]))
    assert first.meta.page_table.tolist() == [[5, 6, 7]]
    pages[:] = [3]  # the same list object, shorter
    small = builder.build(ScheduledBatch([ScheduledSeq("a", [1], 0, pages, True)]))
    assert small.meta.page_table.tolist() == [[3]]
    again = builder.build(ScheduledBatch([ScheduledSeq("a", [1], 2, [9, 8], True)]))
    assert again.meta.page_table.tolist() == [[9, 8]]
    assert again.meta.slot_mapping.tolist() == [8 * 2]


def test_a_repeated_request_id_in_one_batch_keeps_both_tables() -> None:
    builder = StepInputBuilder(4, torch.device("cpu"))
    a, b = ScheduledSeq("x", [1], 0, [3], True), ScheduledSeq("x", [2], 4, [4, 5], True)
    got = builder.build(ScheduledBatch([a, b]))
    assert got.meta.page_table.tolist() == [[3, 0], [4, 5]]
    assert got.meta.slot_mapping.tolist() == [12, 20]
