"""The engine through the real router and worker on the tiny model: continuous batching, chunked
prefill, prefix cache and preemption give exactly the greedy tokens of plain one-at-a-time runs."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from .conftest import Server
from .engine_client import (
    PAGE_SIZE,
    Job,
    completion,
    generate,
    generate_concurrently,
    generate_one_at_a_time,
    metrics,
    open_stream,
    random_prompt,
    running_server,
    wait_idle,
    worker_gauge,
)

pytestmark = pytest.mark.e2e

TINY_KV_TOKENS = 320  # 20 pages: 16 requests of ~100 tokens (7 pages each) cannot all fit


@pytest.fixture(scope="module")
def default_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """Default flags: prefix cache on, prompts prefilled in one piece."""
    log = tmp_path_factory.mktemp("default") / "serve.log"
    with running_server(tiny_model_dir, log) as srv:
        yield srv


@pytest.fixture(scope="module")
def nocache_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The roomy reference: no prefix cache, prompts prefilled in one piece."""
    log = tmp_path_factory.mktemp("nocache") / "serve.log"
    with running_server(tiny_model_dir, log, "--disable-prefix-cache") as srv:
        yield srv


@pytest.fixture(scope="module")
def chunked_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """Prompts prefilled 16 tokens a step; no prefix cache, so only the chunking differs from
    `nocache_server`."""
    log = tmp_path_factory.mktemp("chunked") / "serve.log"
    flags = ("--chunked-prefill-size", "16", "--disable-prefix-cache")
    with running_server(tiny_model_dir, log, *flags) as srv:
        yield srv


@pytest.fixture(scope="module")
def tiny_kv_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("tiny-kv") / "serve.log"
    flags = ("--kv-cache-tokens", str(TINY_KV_TOKENS), "--page-size", str(PAGE_SIZE))
    with running_server(tiny_model_dir, log, *flags) as srv:
        yield srv


def test_concurrent_batching_matches_one_at_a_time(nocache_server: Server) -> None:
    rng = random.Random(1)
    jobs = [Job(random_prompt(rng, rng.randint(5, 300)), rng.randint(1, 8)) for _ in range(64)]
    together = generate_concurrently(nocache_server, jobs)
    alone = generate_one_at_a_time(nocache_server, jobs)
    for job, got, want in zip(jobs, together, alone, strict=True):
        assert len(want.ids) == job.max_new_tokens
        assert got.ids == want.ids, f"prompt of {len(job.prompt)} tokens"
        assert got.prompt_tokens == len(job.prompt)


def test_chunked_prefill_matches_one_piece_prefill(
    nocache_server: Server, chunked_server: Server
) -> None:
    rng = random.Random(2)
    jobs = [Job(random_prompt(rng, n), 6) for n in (17, 100, 257)]
    whole = generate_one_at_a_time(nocache_server, jobs)
    for job, want in zip(jobs, whole, strict=True):
        chunked = generate(chunked_server, job)
        assert chunked.ids == want.ids, f"prompt of {len(job.prompt)} tokens"
        assert chunked.prompt_tokens == want.prompt_tokens == len(job.prompt)
    # Chunks of long prompts interleaved with other requests' decode steps.
    together = generate_concurrently(chunked_server, jobs)
    assert [g.ids for g in together] == [g.ids for g in whole]
    # The OpenAI API reports the whole prompt in usage.prompt_tokens, however it was chunked.
    long = jobs[-1]
    text, prompt_tokens, _ = completion(chunked_server, long.prompt, long.max_new_tokens)
    assert prompt_tokens == len(long.prompt)
    assert (text, prompt_tokens) == completion(nocache_server, long.prompt, long.max_new_tokens)[:2]


def test_prefix_cache_reuses_pages_and_keeps_outputs(
    default_server: Server, nocache_server: Server
) -> None:
    rng = random.Random(3)
    prefix = random_prompt(rng, 150)
    first = Job(prefix + random_prompt(rng, 30), 6)
    second = Job(prefix + random_prompt(rng, 20), 6)
    want = generate_one_at_a_time(nocache_server, [first, second, first])
    assert [g.cached_tokens for g in want] == [0, 0, 0]
    got = generate_one_at_a_time(default_server, [first, second, first])
    assert [g.ids for g in got] == [g.ids for g in want]
    assert got[0].cached_tokens == 0
    # The shared prefix's full pages come from the cache; the repeated prompt's too.
    full_prefix = len(prefix) // PAGE_SIZE * PAGE_SIZE
    assert got[1].cached_tokens == full_prefix
    assert full_prefix <= got[2].cached_tokens < len(first.prompt)
    assert got[2].cached_tokens % PAGE_SIZE == 0


def test_prefix_cache_in_openai_usage(default_server: Server, nocache_server: Server) -> None:
    prompt = random_prompt(random.Random(8), 90)
    texts = []
    for srv in (default_server, nocache_server):
        text, prompt_tokens, cached = completion(srv, prompt, 5)
        assert (prompt_tokens, cached) == (len(prompt), 0)
        again, prompt_tokens, cached = completion(srv, prompt, 5)
        assert prompt_tokens == len(prompt)
        if srv is default_server:
            assert 0 < cached < len(prompt) and cached % PAGE_SIZE == 0
        else:
            assert cached == 0
        texts += [text, again]
    assert len(set(texts)) == 1


def test_a_cache_salt_keeps_prefixes_apart(default_server: Server) -> None:
    """vLLM's `cache_salt`: a prompt finds the pages of its own salt only."""
    prompt = random_prompt(random.Random(10), 70)
    text, _, cached = completion(default_server, prompt, 4, salt="a")
    assert cached == 0
    for salt in ("b", None):
        again, _, cached = completion(default_server, prompt, 4, salt=salt)
        assert (again, cached) == (text, 0), salt
    assert completion(default_server, prompt, 4, salt="a")[2] > 0
    assert completion(default_server, prompt, 4, salt="b")[2] > 0


def test_flush_cache_drops_the_cached_prefixes(default_server: Server) -> None:
    """SGLang's `/flush_cache` and vLLM's `/reset_prefix_cache`: the next identical prompt finds
    nothing cached, and the one after it hits again."""
    prompt = random_prompt(random.Random(9), 70)
    text, _, _ = completion(default_server, prompt, 4)
    assert completion(default_server, prompt, 4)[2] > 0
    for route in ("/flush_cache", "/reset_prefix_cache"):
        resp = requests.post(f"{default_server.base_url}{route}", timeout=30)
        assert resp.status_code == 200 and resp.json()["workers"] == 1, resp.text
        again, _, cached = completion(default_server, prompt, 4)
        assert (again, cached) == (text, 0)
    assert completion(default_server, prompt, 4)[2] > 0
    assert "prefix cache flushed" in default_server.log()


def test_preemption_keeps_outputs_and_fails_nothing(
    nocache_server: Server, tiny_kv_server: Server
) -> None:
    rng = random.Random(4)
    # Short prompts and long outputs: admission reserves only part of the output to come, so the
    # admitted requests (4 at least: each reserves under 80 tokens of the 320) outgrow the pool.
    jobs = [Job(random_prompt(rng, rng.randint(5, 12)), rng.randint(90, 100)) for _ in range(16)]
    assert all(len(j.prompt) + j.max_new_tokens <= 7 * PAGE_SIZE for j in jobs)
    assert 4 * 7 * PAGE_SIZE > TINY_KV_TOKENS
    want = generate_concurrently(nocache_server, jobs)  # equal to one at a time (test above)
    got = generate_concurrently(tiny_kv_server, jobs)
    assert [g.ids for g in got] == [g.ids for g in want]
    assert all(g.finish_reason == "length" for g in got)
    assert "preempted request" in tiny_kv_server.log()
    after = metrics(tiny_kv_server)
    assert worker_gauge(after, "glm47_kv_pages_used") == 0
    assert worker_gauge(after, "glm47_kv_pages_capacity") == TINY_KV_TOKENS // PAGE_SIZE
    assert worker_gauge(after, "glm47_preemptions_total") >= 1


def _wait_for_queue(server: Server, timeout_s: float = 5.0) -> float:
    """The worker's queue depth once it is positive (or the last one seen after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        waiting = worker_gauge(metrics(server), "glm47_num_requests_waiting")
        if waiting > 0 or time.monotonic() > deadline:
            return waiting
        time.sleep(0.05)


def test_tight_pool_with_shared_prefixes_and_aborted_streams(
    nocache_server: Server, tiny_kv_server: Server
) -> None:
    """Prefix sharing, preemption and clients that go away, all at once, in a pool of 20 pages:
    the requests that stay give the roomy server's tokens, and every page comes back."""
    rng = random.Random(7)
    prefixes = [random_prompt(rng, 40), random_prompt(rng, 24)]
    jobs = [
        Job(prefixes[i % 2] + random_prompt(rng, rng.randint(5, 30)), rng.randint(10, 30))
        for i in range(12)
    ]
    want = generate_concurrently(nocache_server, jobs)
    streams = [open_stream(tiny_kv_server, Job(prefixes[i % 2] + [i], 150)) for i in range(4)]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [pool.submit(generate, tiny_kv_server, job) for job in jobs]
        # The long streams hold the pool: the queue depth shows requests waiting behind them.
        assert _wait_for_queue(tiny_kv_server) > 0
        for conn, _ in streams:
            conn.close()  # the four long streams go away, admitted or not
        got = [f.result() for f in futures]
    assert [g.ids for g in got] == [g.ids for g in want]
    idle = wait_idle(tiny_kv_server, timeout_s=5.0)
    for name in ("glm47_num_requests_waiting", "glm47_num_requests_running"):
        assert worker_gauge(idle, name) == 0, name
    assert worker_gauge(idle, "glm47_kv_pages_used") == 0
