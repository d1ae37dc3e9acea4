"""The engine through the real router and worker on the tiny model: continuous batching, chunked
prefill, prefix cache and preemption give exactly the greedy tokens of plain one-at-a-time runs."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from .conftest import Server
from .engine_client import (
    PAGE_SIZE,
    Job,
    generate,
    generate_concurrently,
    generate_one_at_a_time,
    metrics,
    random_prompt,
    running_server,
    worker_gauge,
)

pytestmark = pytest.mark.e2e

TINY_KV_TOKENS = 320  # 20 pages: 16 requests of ~100 tokens (7 pages each) cannot all fit


@pytest.fixture(scope="module")
def nocache_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("nocache") / "serve.log"
    with running_server(tiny_model_dir, log, "--disable-prefix-cache") as srv:
        yield srv


@pytest.fixture(scope="module")
def chunked_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("chunked") / "serve.log"
    with running_server(tiny_model_dir, log, "--chunked-prefill-size", "16") as srv:
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


def test_chunked_prefill_matches_one_piece_prefill(server: Server, chunked_server: Server) -> None:
    rng = random.Random(2)
    jobs = [Job(random_prompt(rng, n), 6) for n in (17, 100, 257)]
    for job in jobs:
        chunked = generate(chunked_server, job)
        whole = generate(server, job)
        assert chunked.ids == whole.ids, f"prompt of {len(job.prompt)} tokens"
        assert chunked.prompt_tokens == whole.prompt_tokens == len(job.prompt)
    # Chunks of long prompts interleaved with other requests' decode steps.
    together = generate_concurrently(chunked_server, jobs)
    assert [g.ids for g in together] == [g.ids for g in generate_one_at_a_time(server, jobs)]


def _completion(srv: Server, prompt: list[int], n: int) -> tuple[str, int, int]:
    """Greedy /v1/completions by token ids: text, prompt_tokens, cached_tokens."""
    client = openai.OpenAI(base_url=srv.openai_base, api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    resp = client.completions.create(
        model=model, prompt=prompt, max_tokens=n, temperature=0, extra_body={"ignore_eos": True}
    )
    usage = resp.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    cached = usage.prompt_tokens_details.cached_tokens
    assert cached is not None
    return resp.choices[0].text, usage.prompt_tokens, cached


def test_prefix_cache_reuses_pages_and_keeps_outputs(
    server: Server, nocache_server: Server
) -> None:
    rng = random.Random(3)
    prefix = random_prompt(rng, 150)
    first = Job(prefix + random_prompt(rng, 30), 6)
    second = Job(prefix + random_prompt(rng, 20), 6)
    want = generate_one_at_a_time(nocache_server, [first, second, first])
    assert [g.cached_tokens for g in want] == [0, 0, 0]
    got = generate_one_at_a_time(server, [first, second, first])
    assert [g.ids for g in got] == [g.ids for g in want]
    assert got[0].cached_tokens == 0
    # The shared prefix's full pages come from the cache; the repeated prompt's too.
    assert got[1].cached_tokens == len(prefix) // PAGE_SIZE * PAGE_SIZE
    assert 0 < got[2].cached_tokens < len(first.prompt)
    assert got[2].cached_tokens % PAGE_SIZE == 0
    assert got[2].cached_tokens >= len(prefix) // PAGE_SIZE * PAGE_SIZE

    # The OpenAI usage reports the same, and the text of the same tokens.
    third = Job(random_prompt(rng, 90), 5)
    texts = []
    for srv, first_cached in ((server, 0), (nocache_server, 0)):
        text, prompt_tokens, cached = _completion(srv, third.prompt, third.max_new_tokens)
        assert (prompt_tokens, cached) == (len(third.prompt), first_cached)
        text2, _, cached2 = _completion(srv, third.prompt, third.max_new_tokens)
        texts += [text, text2]
        if srv is server:
            assert cached2 > 0 and cached2 % PAGE_SIZE == 0
        else:
            assert cached2 == 0
    assert len(set(texts)) == 1


def test_preemption_keeps_outputs_and_fails_nothing(
    nocache_server: Server, tiny_kv_server: Server
) -> None:
    rng = random.Random(4)
    jobs = [Job(random_prompt(rng, rng.randint(50, 70)), rng.randint(30, 40)) for _ in range(16)]
    assert all(len(j.prompt) + j.max_new_tokens < 7 * PAGE_SIZE for j in jobs)
    assert 16 * 7 * PAGE_SIZE > TINY_KV_TOKENS
    want = generate_one_at_a_time(nocache_server, jobs)
    got = generate_concurrently(tiny_kv_server, jobs)
    assert [g.ids for g in got] == [g.ids for g in want]
    assert all(g.finish_reason == "length" for g in got)
    assert "preempted request" in tiny_kv_server.log()
    after = metrics(tiny_kv_server)
    assert worker_gauge(after, "glm47_kv_pages_used") == 0
    assert worker_gauge(after, "glm47_kv_pages_total") == TINY_KV_TOKENS // PAGE_SIZE
