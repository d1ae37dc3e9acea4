"""`with_token_rows`: a short-query step's tokens as decode rows (their causal lengths and the
page-table rows they read through)."""

from __future__ import annotations

import torch

from glm47.worker.attention.base import TOKEN_ROWS_MAX_SEQS, with_token_rows
from glm47.worker.batch import ScheduledBatch, ScheduledSeq
from glm47.worker.step_inputs import StepInputBuilder


def _meta(tokens: list[int], start: int = 5) -> object:
    seqs = [
        ScheduledSeq(f"s{i}", [7] * n, start + i % 3, [10 + 3 * i, 11 + 3 * i, 12 + 3 * i], True)
        for i, n in enumerate(tokens)
    ]
    return StepInputBuilder(4, torch.device("cpu")).build(ScheduledBatch(seqs)).meta


def test_even_steps_read_their_sequences_rows_uneven_ones_a_row_per_token() -> None:
    even = with_token_rows(_meta([2, 2, 2]))
    assert even.token_rows is not None
    lens, table, per = even.token_rows
    assert lens.tolist() == [6, 7, 7, 8, 8, 9] and per == 2
    assert table is even.page_table  # no copy: row i // 2 of the sequences' table
    uneven = with_token_rows(_meta([3, 1, 2]))
    assert uneven.token_rows is not None
    lens, table, per = uneven.token_rows
    assert lens.tolist() == [6, 7, 8, 7, 8, 9] and per == 1
    rows = uneven.page_table[torch.tensor([0, 0, 0, 1, 2, 2])]
    assert torch.equal(table, rows)


def test_decode_steps_and_large_steps_keep_their_kernels() -> None:
    assert with_token_rows(_meta([1, 1])).token_rows is None  # decode: the decode kernel as is
    many = with_token_rows(_meta([1, 2] * (TOKEN_ROWS_MAX_SEQS // 2 + 1), start=0))
    assert many.token_rows is None  # the prefill kernel fills the GPU there
