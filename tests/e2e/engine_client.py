"""Helpers of the engine end-to-end tests: greedy `/generate` calls by token ids, prompts, metrics."""

from __future__ import annotations

import http.client
import json
import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import openai
import requests

from glm47.worker.model.tiny_tokenizer import BPE_VOCAB_SIZE

from .conftest import Server, start_server, stop_server

PAGE_SIZE = 16  # the worker's default --page-size


@dataclass(frozen=True)
class Greedy:
    """One greedy `/generate` answer: the generated ids and what the server reported."""

    ids: list[int]
    prompt_tokens: int
    cached_tokens: int
    finish_reason: str


@dataclass(frozen=True)
class Job:
    """One request: prompt ids and how many tokens to generate."""

    prompt: list[int]
    max_new_tokens: int


def random_prompt(rng: random.Random, n: int) -> list[int]:
    """`n` ids of the tiny model's learned vocabulary (no special tokens)."""
    return [rng.randrange(BPE_VOCAB_SIZE) for _ in range(n)]


def _greedy_parameters(job: Job) -> dict[str, object]:
    """The parameters of a greedy `ignore_eos` request for `job`."""
    return {"do_sample": False, "ignore_eos": True, "max_new_tokens": job.max_new_tokens}


def generate(server: Server, job: Job) -> Greedy:
    """Greedy `/generate` by token ids with `ignore_eos`, so exactly `max_new_tokens` come back."""
    body = {"inputs": job.prompt, "parameters": {**_greedy_parameters(job), "return_details": True}}
    resp = requests.post(f"{server.base_url}/generate", json=body, timeout=300)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    return Greedy(
        ids=[t["id"] for t in out["details"]["tokens"]],
        prompt_tokens=out["prompt_tokens"],
        cached_tokens=out["details"]["cached_tokens"],
        finish_reason=out["finish_reason"],
    )


def generate_one_at_a_time(server: Server, jobs: list[Job]) -> list[Greedy]:
    return [generate(server, job) for job in jobs]


def generate_concurrently(server: Server, jobs: list[Job]) -> list[Greedy]:
    """All of `jobs` in flight at once (one thread each); answers in `jobs` order."""
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(lambda job: generate(server, job), jobs))


def completion(
    server: Server, prompt: list[int], n: int, salt: str | None = None
) -> tuple[str, int, int]:
    """Greedy /v1/completions by token ids (under the prefix-cache salt `salt`): the text,
    usage.prompt_tokens and usage.prompt_tokens_details.cached_tokens."""
    client = openai.OpenAI(base_url=server.openai_base, api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    resp = client.completions.create(
        model=model,
        prompt=prompt,
        max_tokens=n,
        temperature=0,
        extra_body={"ignore_eos": True, **({"cache_salt": salt} if salt else {})},
    )
    usage = resp.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    cached = usage.prompt_tokens_details.cached_tokens
    assert cached is not None
    return resp.choices[0].text, usage.prompt_tokens, cached


def metrics(server: Server) -> dict[str, float]:
    """The `/metrics` samples by series (`name{labels}`), and by bare name for unlabelled ones."""
    resp = requests.get(f"{server.base_url}/metrics", timeout=10)
    assert resp.status_code == 200, resp.text
    samples: dict[str, float] = {}
    for line in resp.text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        samples[series] = float(value)
    return samples


def worker_gauge(samples: dict[str, float], name: str) -> float:
    """The value of a per-worker gauge (one worker: exactly one series of that name)."""
    values = [v for k, v in samples.items() if k.startswith(name + "{")]
    assert len(values) == 1, f"{name}: {values} in {sorted(samples)}"
    return values[0]


def open_stream(
    server: Server, job: Job
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """Start a greedy `/generate_stream`; returns the connection and its response, unread.
    Closing the connection is a client that goes away mid-stream."""
    body = {"inputs": job.prompt, "parameters": _greedy_parameters(job)}
    url = urlsplit(server.base_url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=120)
    conn.request("POST", "/generate_stream", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    return conn, resp


def wait_idle(server: Server, timeout_s: float = 2.0) -> dict[str, float]:
    """/metrics once the worker reports nothing waiting or running and no KV page in use (or
    the last samples after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    names = ("glm47_num_requests_waiting", "glm47_num_requests_running", "glm47_kv_pages_used")
    while True:
        samples = metrics(server)
        busy = sum(worker_gauge(samples, name) for name in names)
        if busy == 0 or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


@contextmanager
def running_server(model_dir: Path, log_path: Path, *flags: str) -> Iterator[Server]:
    """`glm47 serve` on the tiny model with `flags`, stopped on exit (`start_server` gives every
    process one CPU thread, so all servers of the suite compute with the same thread count)."""
    proc, base = start_server(model_dir, log_path, *flags)
    try:
        yield Server(base_url=base, model_dir=model_dir, log_path=log_path)
    finally:
        stop_server(proc)
