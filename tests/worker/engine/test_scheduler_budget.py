"""Token budget, chunked prefill, decode batching and continuous batching."""

from __future__ import annotations

from tests.worker.engine.engine_fakes import Harness, MakeHarness


def chunk_sizes(h: Harness, step: int) -> dict[str, int]:
    return {s.rid: len(s.token_ids) for s in h.runner.batches[step].seqs}


def test_requests_are_admitted_until_the_token_budget_is_spent(make_harness: MakeHarness) -> None:
    h = make_harness(chunked_prefill_size=16, max_num_batched_tokens=16, overlap_schedule=False)
    for rid in "abc":
        h.add(rid, [ord(rid)] * 6, max_new_tokens=3)
    h.step()
    assert chunk_sizes(h, 0) == {"a": 6, "b": 6, "c": 4}
    batch = h.last_batch()
    assert [batch[r].sample for r in "abc"] == [True, True, False]
    assert h.runner.batches[0].num_tokens == 16
    h.step()
    assert chunk_sizes(h, 1) == {"a": 1, "b": 1, "c": 2}
    assert h.last_batch()["c"].start_pos == 4 and h.last_batch()["c"].sample


def test_a_long_prompt_is_chunked_across_steps_with_exact_token_counts(
    make_harness: MakeHarness,
) -> None:
    h = make_harness(chunked_prefill_size=8, max_num_batched_tokens=32)
    prompt = list(range(100, 121))  # 21 tokens
    h.add("long", prompt, max_new_tokens=2)
    h.run()
    seqs = [b.seqs[0] for b in h.runner.batches]
    assert [(s.start_pos, len(s.token_ids), s.sample) for s in seqs] == [
        (0, 8, False),
        (8, 8, False),
        (16, 5, True),
        (21, 1, True),
    ]
    assert seqs[0].token_ids + seqs[1].token_ids + seqs[2].token_ids == prompt
    assert seqs[3].token_ids == h.tokens("long")[:1]
    assert h.outputs["long"][0].prompt_tokens == 21  # first output only after the last chunk


def test_running_requests_decode_one_token_each_in_one_batch(make_harness: MakeHarness) -> None:
    h = make_harness()
    for i in range(5):
        h.add(f"r{i}", [i + 2] * (3 + i), max_new_tokens=4)
    h.run()
    assert len(h.runner.batches) == 4  # one prefill step, then three decode steps
    assert not h.runner.batches[0].is_decode
    for batch in h.runner.batches[1:]:
        assert batch.is_decode and len(batch.seqs) == 5 and all(s.sample for s in batch.seqs)
    for i in range(5):
        assert len(h.tokens(f"r{i}")) == 4 and h.finish(f"r{i}") == "length"


def test_a_request_that_arrives_mid_way_joins_the_running_batch(make_harness: MakeHarness) -> None:
    # Each step planned after the samples of the one before (with a step run ahead, an arrival
    # joins one step later: test_overlap.py).
    h = make_harness(max_wait_steps=1, overlap_schedule=False)
    h.add("first", [5, 6, 7], max_new_tokens=6)
    h.step()
    h.step()
    h.add("late", [8, 9, 10, 11, 12], max_new_tokens=2)
    h.step()
    assert chunk_sizes(h, 2) == {"first": 1, "late": 5}
    h.step()
    assert chunk_sizes(h, 3) == {"first": 1, "late": 1}
    h.run()
    assert len(h.tokens("first")) == 6 and len(h.tokens("late")) == 2


def test_decodes_are_served_before_a_continuing_prefill(make_harness: MakeHarness) -> None:
    h = make_harness(chunked_prefill_size=8, max_num_batched_tokens=8, overlap_schedule=False)
    h.add("short", [3, 4, 5], max_new_tokens=5)
    h.add("long", list(range(200, 220)), max_new_tokens=1)
    h.step()
    assert chunk_sizes(h, 0) == {"short": 3, "long": 5}
    h.step()
    assert list(chunk_sizes(h, 1).items()) == [("short", 1), ("long", 7)]
    h.step()
    assert list(chunk_sizes(h, 2).items()) == [("short", 1), ("long", 7)]
    h.step()
    assert list(chunk_sizes(h, 3).items()) == [("short", 1), ("long", 1)]
    assert h.last_batch()["long"].sample


def test_max_running_requests_holds_back_admission(make_harness: MakeHarness) -> None:
    h = make_harness(max_running_requests=2)
    for rid in "abc":
        h.add(rid, [7, 8], max_new_tokens=2)
    h.step()
    assert set(chunk_sizes(h, 0)) == {"a", "b"}
    assert h.engine.stats()["waiting"] == 1 and h.engine.stats()["running"] == 2
    h.step()  # a and b finish
    h.step()
    assert set(chunk_sizes(h, 2)) == {"c"}
    h.run()
    assert all(h.finish(r) == "length" for r in "abc")


def test_pages_are_allocated_per_chunk_not_for_the_whole_prompt(make_harness: MakeHarness) -> None:
    h = make_harness(page_size=4, chunked_prefill_size=8, max_num_batched_tokens=8)
    req = h.add("r", list(range(30, 50)), max_new_tokens=1)
    h.step()
    assert len(req.page_ids) == 2 and h.engine.pool.num_in_use == 2
    h.step()
    assert len(req.page_ids) == 4


def test_admissions_wait_for_max_wait_steps_while_requests_decode(
    make_harness: MakeHarness,
) -> None:
    h = make_harness(max_wait_steps=3, overlap_schedule=False)
    h.add("first", [5, 6, 7], max_new_tokens=10)
    h.step()  # nothing was decoding: admitted at once
    assert chunk_sizes(h, 0) == {"first": 3}
    h.add("second", [8, 9], max_new_tokens=2)
    h.step()
    h.step()  # two steps since the last admission: "second" waits while "first" decodes
    assert chunk_sizes(h, 1) == {"first": 1} and chunk_sizes(h, 2) == {"first": 1}
    h.add("third", [4, 4, 4], max_new_tokens=2)
    h.step()  # the third step since the last admission: both waiting requests join together
    assert chunk_sizes(h, 3) == {"first": 1, "second": 2, "third": 3}
    for _ in range(4):
        h.step()
    h.add("quiet", [6, 6], max_new_tokens=1)
    h.step()  # after a quiet stretch a newcomer is admitted at once
    assert chunk_sizes(h, 8)["quiet"] == 2
    h.run()
    assert [len(h.tokens(r)) for r in ("first", "second", "third", "quiet")] == [10, 2, 2, 1]


def test_a_burst_larger_than_the_budget_is_admitted_step_after_step(
    make_harness: MakeHarness,
) -> None:
    """Waiting prompts beyond one step's budget do not wait for max_wait_steps: every step takes
    the next ones while earlier ones decode."""
    h = make_harness(max_wait_steps=50, chunked_prefill_size=8, max_num_batched_tokens=8)
    for i in range(4):
        h.add(f"r{i}", [10 + i] * 6, max_new_tokens=4)
    h.step()  # r0 (6 tokens) and 2 tokens of r1: the budget is spent
    assert chunk_sizes(h, 0) == {"r0": 6, "r1": 2}
    h.step()  # r0 decodes, r1 continues (4), then r2 is admitted with what is left
    assert chunk_sizes(h, 1) == {"r0": 1, "r1": 4, "r2": 3}
    h.step()
    assert chunk_sizes(h, 2) == {"r0": 1, "r1": 1, "r2": 3, "r3": 3}
    h.run()
    assert all(len(h.tokens(f"r{i}")) == 4 for i in range(4))


def test_a_step_continuing_a_chunked_prompt_admits_at_once(make_harness: MakeHarness) -> None:
    h = make_harness(
        max_wait_steps=50, chunked_prefill_size=4, max_num_batched_tokens=8, overlap_schedule=False
    )
    h.add("short", [3, 4], max_new_tokens=10)
    h.add("long", list(range(30, 42)), max_new_tokens=2)
    h.step()
    assert chunk_sizes(h, 0) == {"short": 2, "long": 4}
    h.add("late", [9, 9, 9], max_new_tokens=2)
    h.step()  # "short" decodes, but "long" carries prompt tokens: "late" joins this step
    assert chunk_sizes(h, 1) == {"short": 1, "long": 4, "late": 3}
    h.run()
    assert [len(h.tokens(r)) for r in ("short", "long", "late")] == [10, 2, 2]
