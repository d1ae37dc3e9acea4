"""Running ahead (`EngineConfig.overlap_schedule`): a decode step queued on the device before the
samples of the step before it are read. The fake runner checks every step's KV rows against the
requests' known tokens, so a placeholder that leaked into a step's context, the cache or a
prefix would fail there; here the outputs are compared with the engine that reads each step's
samples before planning the next."""

from __future__ import annotations

import random
from typing import Any

import pytest

from glm47.worker.batch import SamplingParams
from tests.worker.engine.engine_fakes import EOS, Harness, MakeHarness

REQUESTS: dict[str, tuple[list[int], dict[str, Any]]] = {
    "a": ([5, 6, 7], dict(max_new_tokens=9)),
    "b": ([8, 9], dict(max_new_tokens=12, sampling=SamplingParams(logprobs=2))),
    "c": ([5, 6, 7, 1, 2], dict(max_new_tokens=3)),
    "d": ([11] * 9, dict(max_new_tokens=7, min_new_tokens=2)),
}


def serve(make_harness: MakeHarness, overlap: bool, **kw: Any) -> Harness:
    h = make_harness(overlap_schedule=overlap, **kw)
    for rid, (prompt, args) in REQUESTS.items():
        h.add(rid, prompt, **args)
    h.run()
    return h


def news(h: Harness) -> dict[str, list[tuple[Any, ...]]]:
    return {
        rid: [(o.ids, o.logprobs, o.top_logprobs, o.finish) for o in outs]
        for rid, outs in h.outputs.items()
    }


def test_running_ahead_gives_the_outputs_of_planning_after_the_samples(
    make_harness: MakeHarness,
) -> None:
    plain = serve(make_harness, overlap=False)
    ahead = serve(make_harness, overlap=True)
    assert news(ahead) == news(plain)
    assert plain.engine.steps_ahead == 0
    assert ahead.engine.steps_ahead > 0
    assert ahead.engine.pool.num_in_use == 0
    for rid, (_, args) in REQUESTS.items():
        assert len(ahead.tokens(rid)) == args["max_new_tokens"]
        assert ahead.finish(rid) == "length"


def test_a_stop_found_while_the_next_step_runs_ends_the_request_there(
    make_harness: MakeHarness,
) -> None:
    script = {"s": [40, 41, EOS, 43, 44, 45], "t": [50 + i for i in range(8)]}
    outs, steps_of_s = {}, {}
    for overlap in (False, True):
        h = make_harness(overlap_schedule=overlap, script=script)
        h.add("s", [3, 4], max_new_tokens=6)
        h.add("t", [3, 5], max_new_tokens=8)
        h.run()
        assert h.tokens("s") == [40, 41, EOS] and h.finish("s") == "stop"
        assert h.tokens("t") == script["t"] and h.finish("t") == "length"
        outs[overlap] = news(h)
        steps_of_s[overlap] = sum("s" in {q.rid for q in b.seqs} for b in h.runner.batches)
    assert outs[True] == outs[False]
    # Running ahead, the step after the stop was already queued for "s": computed, dropped.
    assert steps_of_s == {False: 3, True: 4}


def test_an_abort_while_a_step_is_queued_drops_its_sample(make_harness: MakeHarness) -> None:
    h = make_harness(overlap_schedule=True)
    h.add("a", [5, 6, 7], max_new_tokens=20)
    h.add("b", [5, 6, 8], max_new_tokens=20)
    for _ in range(4):
        h.step()
    assert h.engine._queued is not None  # a step for both is on the "device"
    before = len(h.tokens("a"))
    h.engine.abort("a")
    h.step()  # applies the queued step: a's sample is dropped
    assert h.finish("a") == "abort" and len(h.tokens("a")) == before
    h.run()
    assert len(h.tokens("b")) == 20 and h.finish("b") == "length"
    assert h.engine.pool.num_in_use == 0 and not h.engine.has_work()


def test_an_arrival_is_admitted_in_the_next_step_queued_ahead(make_harness: MakeHarness) -> None:
    h = make_harness(overlap_schedule=True, max_wait_steps=1)
    h.add("first", [5, 6, 7], max_new_tokens=8)
    h.step()  # the prompt's step; the step of token 2 is queued before its sample is read
    h.add("late", [8, 9, 10], max_new_tokens=2)
    h.step()  # applies token 1; the next step, queued ahead, admits "late"
    assert {s.rid: len(s.token_ids) for s in h.runner.batches[-1].seqs} == {"first": 1, "late": 3}
    assert h.engine.steps_ahead == 2
    h.run()
    assert len(h.tokens("first")) == 8 and len(h.tokens("late")) == 2
    assert h.finish("first") == h.finish("late") == "length"


def test_what_is_run_ahead(make_harness: MakeHarness) -> None:
    """A penalised request is fed like any other (its history's last token read on the device,
    `ScheduledSeq.fed`); a lone request whose length ends with a step's token has no step to
    queue after it."""
    penalised = make_harness(overlap_schedule=True)
    penalised.add("p", [5, 6], max_new_tokens=6, sampling=SamplingParams(repetition_penalty=1.2))
    penalised.run()
    assert penalised.engine.steps_ahead == 5 and len(penalised.tokens("p")) == 6
    assert sum(s.fed for b in penalised.runner.batches for s in b.seqs) == 5
    short = make_harness(overlap_schedule=True)
    short.add("s", [5, 6], max_new_tokens=2)
    short.run()
    # The step of its second and last token is queued ahead of the prompt step's sample; none
    # after it.
    assert short.engine.steps_ahead == 1 and len(short.runner.batches) == 2
    long = make_harness(overlap_schedule=True)
    long.add("l", [5, 6], max_new_tokens=6)
    long.run()
    assert long.engine.steps_ahead == 5 and len(long.runner.batches) == 6


def test_a_request_ending_by_length_is_left_out_of_the_step_queued_ahead(
    make_harness: MakeHarness,
) -> None:
    """With many requests running one ends by length nearly every step; the others' next step
    is queued without it rather than not at all."""
    outs = {}
    for overlap in (False, True):
        h = make_harness(overlap_schedule=overlap)
        h.add("a", [5, 6, 7], max_new_tokens=3)
        h.add("b", [8, 9], max_new_tokens=10)
        h.run()
        assert len(h.tokens("a")) == 3 and len(h.tokens("b")) == 10
        assert h.finish("a") == h.finish("b") == "length"
        assert h.engine.pool.num_in_use == 0
        outs[overlap] = news(h)
        if overlap:
            # Steps 2-10 are queued ahead, step 4 (b's alone) too.
            assert h.engine.steps_ahead == 9
            assert [sorted(s.rid for s in b.seqs) for b in h.runner.batches[2:5]] == [
                ["a", "b"],
                ["b"],
                ["b"],
            ]
    assert outs[True] == outs[False]


def test_an_id_taken_again_while_its_old_step_is_queued_gets_only_its_own_samples(
    make_harness: MakeHarness,
) -> None:
    """A request stopped by a token of step n leaves step n + 1 queued with a row for it; a new
    request under the same id (allowed once the finish is out) must not receive that row."""
    h = make_harness(
        overlap_schedule=True, script={"x": [40, EOS, 43, 44], "y": list(range(60, 68))}
    )
    h.add("x", [3, 4], max_new_tokens=6)
    h.add("y", [3, 5], max_new_tokens=8)
    while h.finish("x") is None:
        h.step()
    assert h.engine._queued is not None and "x" in {s.rid for s in h.engine._queued.batch.seqs}
    seen = len(h.outputs["x"])
    h.runner.script["x"] = [70, 71, 72]
    h.add("x", [9, 9, 9], max_new_tokens=3)
    h.run()
    again = h.outputs["x"][seen:]
    assert [t for o in again for t in o.ids] == [70, 71, 72] and again[-1].finish == "length"
    assert again[0].prompt_tokens == 3


def test_a_request_not_yet_due_for_admission_does_not_stop_running_ahead(
    make_harness: MakeHarness,
) -> None:
    """While requests decode, a newcomer waits up to `max_wait_steps` steps (test_scheduler_budget);
    the steps it waits through are run ahead, and it is admitted when the rule says so."""
    waits = {}
    for overlap in (False, True):
        h = make_harness(overlap_schedule=overlap, max_wait_steps=4)
        h.add("first", [5, 6, 7], max_new_tokens=12)
        h.step()
        h.step()
        h.add("second", [8, 9], max_new_tokens=3)
        ahead_before = h.engine.steps_ahead
        steps = 0
        while "second" not in {s.rid for s in h.runner.batches[-1].seqs}:
            h.step()
            steps += 1
        waits[overlap] = steps
        if overlap:
            assert h.engine.steps_ahead > ahead_before  # ran ahead while "second" waited
        h.run()
        assert len(h.tokens("first")) == 12 and len(h.tokens("second")) == 3
    assert waits[True] <= waits[False] + 1  # at most the one step queued when it arrived


def test_a_busy_workload_gives_the_outputs_of_planning_after_the_samples(
    make_harness: MakeHarness,
) -> None:
    """Arrivals while others decode, chunked prompts sharing prefixes, stops, lengths ending in
    the same steps and a pool small enough to preempt: running ahead (admitting and carrying
    prompt chunks in steps queued ahead) changes no request's tokens, and the fake runner's KV
    checks pass in every step."""
    rng = random.Random(0)
    base = [rng.randrange(10, 1000) for _ in range(12)]
    arrivals: dict[int, list[tuple[str, list[int], int]]] = {}
    for i in range(24):
        prompt = base[: rng.randrange(0, 13)] + [
            rng.randrange(10, 1000) for _ in range(rng.randrange(1, 14))
        ]
        arrivals.setdefault(rng.randrange(0, 30), []).append(
            (f"r{i}", prompt, rng.randrange(1, 12))
        )
    script = {"r3": [50, 51, EOS] + [9] * 20, "r7": [60, EOS] + [9] * 20}
    results, ahead, preempted = {}, {}, {}
    for overlap in (False, True):
        h = make_harness(
            overlap_schedule=overlap,
            num_pages=12,
            page_size=4,
            chunked_prefill_size=8,
            max_num_batched_tokens=16,
            max_wait_steps=2,
            reserve_output_ratio=0.0,  # admitted on their prompts alone: the pool runs short
            script=script,
        )
        step = 0
        while step < 30 or h.engine.has_work():
            for rid, prompt, n in arrivals.get(step, []):
                h.add(rid, prompt, max_new_tokens=n)
            h.step()
            step += 1
            assert step < 1000
        assert h.engine.pool.num_in_use == 0
        results[overlap] = news(h)
        ahead[overlap] = h.engine.steps_ahead
        preempted[overlap] = h.engine.scheduler.num_preemptions
    assert results[True] == results[False]
    assert len(results[True]) == 24
    assert ahead[False] == 0 and ahead[True] > 20
    assert preempted[False] > 0 and preempted[True] > 0


@pytest.mark.parametrize("seed", [*range(8), 125])  # 125: a cached page under a referenced one
def test_random_workloads_give_the_outputs_of_planning_after_the_samples(
    make_harness: MakeHarness, seed: int
) -> None:
    """Random arrivals, prompt lengths, shared prefixes, lengths, min-tokens, stops, penalties
    (whose requests are never fed) and pool sizes: the same outputs either way."""
    rng = random.Random(seed)
    base = [rng.randrange(10, 1000) for _ in range(16)]
    arrivals: dict[int, list[tuple[str, list[int], dict[str, Any]]]] = {}
    script: dict[str, list[int]] = {}
    for i in range(rng.randrange(4, 30)):
        rid = f"r{i}"
        prompt = base[: rng.randrange(0, 17)] + [
            rng.randrange(10, 1000) for _ in range(rng.randrange(1, 20))
        ]
        kw: dict[str, Any] = {"max_new_tokens": rng.randrange(1, 16)}
        if rng.random() < 0.2:
            kw["sampling"] = SamplingParams(repetition_penalty=1.3)
        if rng.random() < 0.3:  # stops at a scripted eos, unless min-tokens holds it off
            script[rid] = [rng.randrange(10, 1000) for _ in range(20)]
            script[rid][rng.randrange(0, 10)] = EOS
            kw["min_new_tokens"] = rng.randrange(0, 3)
        arrivals.setdefault(rng.randrange(0, 25), []).append((rid, prompt, kw))
    config = {
        "num_pages": rng.choice([24, 40, 64]),
        "page_size": rng.choice([2, 4]),
        "chunked_prefill_size": rng.choice([4, 8, 32]),
        "max_wait_steps": rng.randrange(1, 5),
        "reserve_output_ratio": rng.choice([0.0, 0.5]),
        "max_running_requests": rng.choice([3, 8, 256]),
        "script": script,
    }
    config["max_num_batched_tokens"] = config["chunked_prefill_size"] * rng.choice([1, 2])
    results = {}
    for overlap in (False, True):
        h = make_harness(overlap_schedule=overlap, **config)
        step = 0
        while step < 25 or h.engine.has_work():
            for rid, prompt, kw in arrivals.get(step, []):
                h.add(rid, prompt, **kw)
            h.step()
            step += 1
            assert step < 2000
        assert h.engine.pool.num_in_use == 0
        results[overlap] = news(h)
    assert results[True] == results[False]
    assert len(results[True]) == sum(len(v) for v in arrivals.values())


@pytest.mark.parametrize("seed", range(6))
def test_random_aborts_while_steps_run_ahead_leave_consistent_requests(
    make_harness: MakeHarness, seed: int
) -> None:
    """Aborts at random steps, some while a step holding the request is queued: every request's
    tokens are a prefix of what it generates without aborts, aborted ones finish "abort", and
    the pool is empty at the end (the harness checks the page accounting after every step)."""
    rng = random.Random(100 + seed)
    arrivals: dict[int, list[tuple[str, list[int], int]]] = {}
    aborts: dict[int, list[str]] = {}
    for i in range(rng.randrange(6, 20)):
        rid = f"r{i}"
        prompt = [rng.randrange(10, 1000) for _ in range(rng.randrange(1, 12))]
        at = rng.randrange(0, 15)
        arrivals.setdefault(at, []).append((rid, prompt, rng.randrange(2, 14)))
        if rng.random() < 0.4:
            aborts.setdefault(at + rng.randrange(0, 10), []).append(rid)
    config = {"num_pages": 40, "page_size": 2, "chunked_prefill_size": 8, "max_wait_steps": 2}

    def serve(overlap: bool, abort: bool) -> Harness:
        h = make_harness(overlap_schedule=overlap, **config)
        step = 0
        while step < 30 or h.engine.has_work():
            for rid, prompt, n in arrivals.get(step, []):
                h.add(rid, prompt, max_new_tokens=n)
            for rid in aborts.get(step, []) if abort else []:
                h.engine.abort(rid)
            h.step()
            step += 1
            assert step < 2000
        assert h.engine.pool.num_in_use == 0
        return h

    full = serve(overlap=False, abort=False)
    aborted = {rid for rids in aborts.values() for rid in rids}
    for overlap in (False, True):
        h = serve(overlap, abort=True)
        for rid, *_ in (a for arr in arrivals.values() for a in arr):
            got, want = h.tokens(rid), full.tokens(rid)
            assert got == want[: len(got)], (overlap, rid)
            if rid not in aborted:
                assert got == want and h.finish(rid) == full.finish(rid)
            else:
                assert h.finish(rid) in ("abort", full.finish(rid))


def test_steps_run_ahead_when_the_pool_is_full_of_cached_prefixes(
    make_harness: MakeHarness,
) -> None:
    """A long-lived server's pool fills with prefix-cache pages; a step queued ahead takes its
    new pages by evicting them as any step does (no running request holds them)."""
    h = make_harness(overlap_schedule=True, num_pages=25, page_size=2)
    for i in range(5):  # finished requests leave their pages to the prefix cache
        h.add(f"old{i}", [100 + 10 * i + j for j in range(7)], max_new_tokens=2)
    h.run()
    pool = h.engine.pool
    assert pool.num_free < 6 and pool.num_cached_only > 10
    before = h.engine.steps_ahead
    h.add("new", [7, 8, 9], max_new_tokens=12)  # a page every second token
    h.run()
    assert len(h.tokens("new")) == 12
    assert h.engine.steps_ahead - before == 11  # every step after its prompt's


def test_the_step_after_one_with_prompt_scores_is_queued_ahead(make_harness: MakeHarness) -> None:
    """Prompt scores are recorded when their step is collected, so they keep nothing from
    being planned early: the step after the prompt's last (scoring) chunk runs ahead."""
    outs = {}
    for overlap in (False, True):
        h = make_harness(overlap_schedule=overlap, chunked_prefill_size=4)
        h.add("p", list(range(20, 30)), max_new_tokens=4, prompt_logprobs=1)
        h.run()
        assert len(h.tokens("p")) == 4 and h.outputs["p"][0].prompt_logprobs is not None
        outs[overlap] = [(o.ids, o.finish, len(o.prompt_logprobs or [])) for o in h.outputs["p"]]
        if overlap:
            # Chunks of 4, 4 and 2 prompt tokens (scoring each), then the steps of tokens 2-4,
            # each queued before the samples of the step before.
            assert h.engine.steps_ahead == 3
    assert outs[True] == outs[False]
