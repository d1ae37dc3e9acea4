"""Sends benchmark requests to an OpenAI-compatible endpoint and times every streamed token."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import multiprocessing
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import httpx

from glm47.bench.dataset import BenchRequest
from glm47.system import raise_open_file_limit


class Endpoint(Enum):
    COMPLETIONS = "completions"
    CHAT = "chat"


@dataclass(frozen=True)
class Arrival:
    """How requests are released: all at once, under a fixed concurrency, or as a Poisson process."""

    concurrency: int | None = None  # at most this many in flight (None: unbounded)
    rate: float | None = None  # requests per second, exponential gaps (None: all at once)
    seed: int = 0


@dataclass(frozen=True)
class Sampling:
    """The sampling settings every request of a run sends (greedy unless set)."""

    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    repetition_penalty: float | None = None

    def body(self) -> dict[str, float | int]:
        fields = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
            "repetition_penalty": self.repetition_penalty,
        }
        return {k: v for k, v in fields.items() if v is not None}


GREEDY = Sampling()


@dataclass
class RequestResult:
    """Timings of one request, in seconds since the benchmark started."""

    prompt_len: int
    output_len_wanted: int
    start: float = 0.0
    end: float = 0.0
    ttft: float | None = None  # first content token
    token_times: list[float] = field(default_factory=list)  # arrival of each streamed chunk
    # When the response headers came, and the first event (with text or not): together with
    # `ttft` they tell a slow server from text held back in empty chunks, or a slow client.
    headers_at: float | None = None
    first_event_at: float | None = None
    output_tokens: int = 0  # from the server's usage when reported, else chunks counted
    error: str | None = None

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.token_times, self.token_times[1:], strict=False)]

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.output_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)


def _payload(req: BenchRequest, endpoint: Endpoint, model: str, sampling: Sampling) -> dict:
    body: dict = {
        "model": model,
        "max_tokens": req.output_len,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
        **sampling.body(),
    }
    if endpoint is Endpoint.CHAT:
        if not isinstance(req.prompt, str):
            raise ValueError("the chat endpoint takes text prompts, not token ids")
        body["messages"] = [{"role": "user", "content": req.prompt}]
    else:
        body["prompt"] = req.prompt
    return body


def _chunk_has_text(chunk: dict) -> bool:
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        if choice.get("text") or delta.get("content") or delta.get("reasoning_content"):
            return True
        if delta.get("tool_calls"):
            return True
    return False


async def sse_lines(resp: httpx.Response) -> AsyncIterator[str]:
    """The lines of an event stream, split at "\n" only: generated text inside a JSON string may
    hold U+0085, U+2028 or U+2029, which a general line splitter would also break at."""
    pending = b""
    async for chunk in resp.aiter_bytes():
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r").decode("utf-8")
    if pending:
        yield pending.decode("utf-8")


async def send_one(
    http: httpx.AsyncClient,
    url: str,
    req: BenchRequest,
    endpoint: Endpoint,
    model: str,
    t0: float,
    sampling: Sampling = GREEDY,
) -> RequestResult:
    """Stream one request and record its timings; errors are recorded, never raised."""
    res = RequestResult(prompt_len=req.prompt_len, output_len_wanted=req.output_len)
    res.start = time.perf_counter() - t0
    try:
        async with http.stream("POST", url, json=_payload(req, endpoint, model, sampling)) as resp:
            res.headers_at = time.perf_counter() - t0
            if resp.status_code != 200:
                res.error = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                return res
            chunks = 0
            async for line in sse_lines(resp):
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if not isinstance(chunk, dict):
                    res.error = f"not a JSON object: {data[:200]!r}"
                    return res
                if chunk.get("error"):  # a failure after the headers (vLLM, SGLang, glm47)
                    res.error = f"error event: {json.dumps(chunk['error'])[:200]}"
                    return res
                now = time.perf_counter() - t0
                if res.first_event_at is None:
                    res.first_event_at = now
                if _chunk_has_text(chunk):
                    chunks += 1
                    res.token_times.append(now)
                    if res.ttft is None:
                        res.ttft = now - res.start
                usage = chunk.get("usage")
                if usage:
                    res.output_tokens = int(usage.get("completion_tokens") or 0)
            if not chunks:  # a 200 that carried no output is no answer
                res.error = "no output in the stream"
            res.output_tokens = res.output_tokens or chunks
    except (httpx.HTTPError, ValueError, TypeError, AttributeError) as e:
        # JSON and UTF-8 decoding errors are ValueErrors; a malformed chunk fails this request
        res.error = f"{type(e).__name__}: {e}"
    finally:
        res.end = time.perf_counter() - t0
    return res


def send_offsets(num: int, arrival: Arrival) -> list[float]:
    """When each request is released, in seconds from the start: all at 0, or a Poisson process
    (seeded exponential gaps) at `arrival.rate`."""
    if not arrival.rate:
        return [0.0] * num
    rng = random.Random(arrival.seed)
    offsets, now = [], 0.0
    for _ in range(num):
        offsets.append(now)
        now += rng.expovariate(arrival.rate)
    return offsets


async def run_workload(
    base_url: str,
    model: str,
    requests: list[BenchRequest],
    endpoint: Endpoint,
    arrival: Arrival,
    progress: Any = True,
    offsets: list[float] | None = None,
    start_at: float | None = None,
    sampling: Sampling = GREEDY,
) -> tuple[list[RequestResult], float]:
    """Run every request; returns the results (in request order) and the wall time in seconds.

    `offsets` (default: from `arrival`) release the requests; `start_at` (a `time.time()` value)
    delays the start, so that several processes share one clock (see `run_workload_procs`).
    `progress`: True for a progress bar, False for none, or an object with `update(n)` and
    `close()`."""
    url = _url(base_url, endpoint)
    gate = asyncio.Semaphore(arrival.concurrency) if arrival.concurrency else None
    if offsets is None:
        offsets = send_offsets(len(requests), arrival)
    bar = _progress(len(requests)) if progress is True else (progress or None)
    raise_open_file_limit()
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=httpx.Timeout(None), limits=limits) as http:
        if start_at is not None:
            await asyncio.sleep(max(0.0, start_at - time.time()))
        # Time zero is `start_at` on the shared clock, also for a process that started late.
        late = max(0.0, time.time() - start_at) if start_at is not None else 0.0
        t0 = time.perf_counter() - late

        async def one(req: BenchRequest) -> RequestResult:
            if gate is None:
                out = await send_one(http, url, req, endpoint, model, t0, sampling)
            else:
                async with gate:
                    out = await send_one(http, url, req, endpoint, model, t0, sampling)
            if bar is not None:
                bar.update(1)
            return out

        tasks = []
        for req, offset in zip(requests, offsets, strict=True):
            delay = t0 + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(req)))
        results = await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    return list(results), wall


def _url(base_url: str, endpoint: Endpoint) -> str:
    path = "/v1/chat/completions" if endpoint is Endpoint.CHAT else "/v1/completions"
    return base_url.rstrip("/") + path


# Seconds from the launch of the client processes to their common start: their start-up (spawn
# imports) fits in this.
START_DELAY_S = 2.0

_done_counter: Any = None  # in a client process: the shared count of finished requests
_next_index: Any = None  # in a client process pulling requests: the next one to send


def _init_share(counter: Any, next_index: Any = None) -> None:
    global _done_counter, _next_index
    _done_counter, _next_index = counter, next_index


def _take() -> int:
    with _next_index.get_lock():
        i = int(_next_index.value)
        _next_index.value += 1
    return i


def _run_pull(*args: Any) -> tuple[list[tuple[int, RequestResult]], float]:
    """`_pull` in a client process (module level, so that it can be sent to one)."""
    return asyncio.run(_pull(*args))


async def _pull(
    base_url: str,
    model: str,
    requests: list[BenchRequest],
    endpoint: Endpoint,
    workers: int,
    start_at: float,
    sampling: Sampling,
) -> tuple[list[tuple[int, RequestResult]], float]:
    """One client process of a closed-loop workload: `workers` streams, each sending the next
    request not yet taken by any process, so that the processes together hold the limit until
    the last request; (request index, result) pairs and the wall time."""
    url, progress = _url(base_url, endpoint), _SharedCount()
    raise_open_file_limit()
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    done: list[tuple[int, RequestResult]] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(None), limits=limits) as http:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        t0 = time.perf_counter() - max(0.0, time.time() - start_at)

        async def worker() -> None:
            while (i := _take()) < len(requests):
                done.append(
                    (i, await send_one(http, url, requests[i], endpoint, model, t0, sampling))
                )
                progress.update(1)

        await asyncio.gather(*(worker() for _ in range(workers)))
        wall = time.perf_counter() - t0
    return done, wall


class _SharedCount:
    """A progress sink for `run_workload` that adds to the parent's shared counter."""

    def update(self, n: int) -> None:
        with _done_counter.get_lock():
            _done_counter.value += n

    def close(self) -> None:
        pass


def _run_share(
    base_url: str,
    model: str,
    requests: list[BenchRequest],
    endpoint: Endpoint,
    arrival: Arrival,
    offsets: list[float],
    start_at: float,
    sampling: Sampling,
) -> tuple[list[RequestResult], float]:
    """One client process's share (module level, so that it can be sent to a process)."""
    return asyncio.run(
        run_workload(
            base_url,
            model,
            requests,
            endpoint,
            arrival,
            _SharedCount(),
            offsets,
            start_at,
            sampling,
        )
    )


def run_workload_procs(
    base_url: str,
    model: str,
    requests: list[BenchRequest],
    endpoint: Endpoint,
    arrival: Arrival,
    procs: int,
    progress: bool = True,
    sampling: Sampling = GREEDY,
) -> tuple[list[RequestResult], float]:
    """`run_workload` spread over `procs` client processes, so that reading thousands of streams
    does not make the client the bottleneck (a single Python event loop falls behind a fast
    server, which inflates every latency it measures). Request i goes to process i % procs with
    its release time from the one shared schedule. Under a concurrency limit alone (a closed
    loop) the limit is divided between the processes, each stream taking the next request not
    yet taken by any of them (an even split of the requests would let the processes that finish
    first drop the concurrency at the end). All processes start on one wall-clock instant, and
    the timings are merged in request order."""
    if procs <= 1 or len(requests) < 2:
        return asyncio.run(
            run_workload(base_url, model, requests, endpoint, arrival, progress, sampling=sampling)
        )
    procs = min(procs, len(requests), arrival.concurrency or len(requests))
    if procs <= 1:
        return asyncio.run(
            run_workload(base_url, model, requests, endpoint, arrival, progress, sampling=sampling)
        )
    if arrival.concurrency and not arrival.rate:
        return _run_pulling(base_url, model, requests, endpoint, arrival.concurrency, procs,
                            progress, sampling)  # fmt: skip
    offsets = send_offsets(len(requests), arrival)
    shares = []
    for i in range(procs):
        conc = None
        if arrival.concurrency:
            conc = arrival.concurrency // procs + (i < arrival.concurrency % procs)
        share = Arrival(concurrency=conc, rate=arrival.rate, seed=arrival.seed)
        shares.append((requests[i::procs], share, offsets[i::procs]))
    start_at = time.time() + START_DELAY_S
    calls = [
        (_run_share, base_url, model, reqs, endpoint, share, offs, start_at, sampling)
        for reqs, share, offs in shares
    ]
    outs = _in_processes(calls, len(requests), progress, pulling=False)
    results: list[RequestResult | None] = [None] * len(requests)
    for i, (share_results, _) in enumerate(outs):
        results[i::procs] = share_results
    return [r for r in results if r is not None], max(wall for _, wall in outs)


def _run_pulling(
    base_url: str,
    model: str,
    requests: list[BenchRequest],
    endpoint: Endpoint,
    concurrency: int,
    procs: int,
    progress: bool,
    sampling: Sampling,
) -> tuple[list[RequestResult], float]:
    """`run_workload_procs` for a closed loop: `concurrency` streams over `procs` processes,
    pulling requests from one shared index."""
    start_at = time.time() + START_DELAY_S
    workers = [concurrency // procs + (i < concurrency % procs) for i in range(procs)]
    calls = [
        (_run_pull, base_url, model, requests, endpoint, n, start_at, sampling) for n in workers
    ]
    outs = _in_processes(calls, len(requests), progress, pulling=True)
    results: dict[int, RequestResult] = {i: r for done, _ in outs for i, r in done}
    return [results[i] for i in range(len(requests))], max(wall for _, wall in outs)


def _in_processes(calls: list[tuple[Any, ...]], total: int, progress: bool, pulling: bool) -> list:
    """Each call (a function and its arguments) in a client process of its own, the progress
    bar fed from their shared count of finished requests (and, `pulling`, a shared index of
    the next request to send); their results in order."""
    ctx = multiprocessing.get_context("spawn")
    counter = ctx.Value("l", 0)
    initargs = (counter, ctx.Value("l", 0)) if pulling else (counter,)
    bar = _progress(total) if progress else None
    with concurrent.futures.ProcessPoolExecutor(
        len(calls), mp_context=ctx, initializer=_init_share, initargs=initargs
    ) as pool:
        futures = [pool.submit(*call) for call in calls]
        while concurrent.futures.wait(futures, timeout=0.5).not_done:
            if bar is not None:
                bar.update(counter.value - bar.n)
        outs = [f.result() for f in futures]
    if bar is not None:
        bar.update(counter.value - bar.n)
        bar.close()
    return outs


def _progress(total: int):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    return tqdm(total=total, desc="requests", unit="req")
