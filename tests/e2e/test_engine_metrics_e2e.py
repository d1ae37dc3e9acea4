"""The engine's observable state through the real router and worker on the tiny model: a client
that disconnects mid-stream frees its KV pages, and /metrics reports queue, batch, KV, prefix cache,
token counters and latency histograms."""

from __future__ import annotations

import random

import pytest
import requests

from .conftest import Server
from .engine_client import (
    Job,
    generate,
    metrics,
    open_stream,
    random_prompt,
    wait_idle,
    worker_gauge,
)

pytestmark = pytest.mark.e2e

HISTOGRAMS = (
    "glm47_time_to_first_token_seconds",
    "glm47_inter_token_latency_seconds",
    "glm47_e2e_request_latency_seconds",
)
WORKER_GAUGES = (
    "glm47_num_requests_waiting",
    "glm47_num_requests_running",
    "glm47_kv_pages_used",
    "glm47_kv_pages_capacity",
    "glm47_kv_cache_usage_ratio",
    "glm47_prefix_cache_hit_rate",
)


def test_client_disconnect_mid_stream_frees_pages(server: Server) -> None:
    prompt = random_prompt(random.Random(5), 40)
    conn, resp = open_stream(server, Job(prompt, 3000))
    events = 0
    while events < 3:
        line = resp.readline()
        assert line, "the stream ended early"
        events += line.startswith(b"data:")
    busy = metrics(server)
    assert worker_gauge(busy, "glm47_num_requests_running") == 1
    assert worker_gauge(busy, "glm47_kv_pages_used") >= 3  # 40 + 3 tokens, pages of 16
    conn.close()  # the client goes away with ~3000 tokens still to generate
    idle = wait_idle(server)
    assert worker_gauge(idle, "glm47_num_requests_running") == 0
    assert worker_gauge(idle, "glm47_num_requests_waiting") == 0
    assert worker_gauge(idle, "glm47_kv_pages_used") == 0
    assert "request cancelled before it finished: the client disconnected" in server.log()
    # The server still serves.
    assert len(generate(server, Job(prompt, 2)).ids) == 2


def test_metrics_report_engine_state_and_latencies(server: Server) -> None:
    rng = random.Random(6)
    before = metrics(server)
    prompt = random_prompt(rng, 64)
    jobs = [Job(prompt, 4), Job(prompt, 3)]  # the second hits the prefix cache
    for job in jobs:
        generate(server, job)
    after = wait_idle(server)

    def delta(name: str) -> float:
        return after[name] - before.get(name, 0.0)

    assert delta("glm47_prompt_tokens_total") == 2 * len(prompt)
    assert delta("glm47_generation_tokens_total") == 7
    assert delta("glm47_cached_prompt_tokens_total") == 48  # 3 full pages of the 64-token prompt
    for name in HISTOGRAMS:
        assert f'{name}_bucket{{le="+Inf"}}' in after, name
        assert after[f"{name}_sum"] > 0
    assert delta("glm47_time_to_first_token_seconds_count") == 2
    assert delta("glm47_e2e_request_latency_seconds_count") == 2
    assert delta("glm47_inter_token_latency_seconds_count") == 3 + 2
    for name in WORKER_GAUGES:
        worker_gauge(after, name)  # present, one series for the one worker
    assert worker_gauge(after, "glm47_num_requests_waiting") == 0
    assert worker_gauge(after, "glm47_kv_pages_capacity") > 0
    assert 0 < worker_gauge(after, "glm47_prefix_cache_hit_rate") <= 1


def test_a_stop_string_finish_is_counted_as_stop_not_abort(server: Server) -> None:
    url = f"{server.base_url}/v1/completions"
    body = {"prompt": "Once upon a time", "max_tokens": 20, "temperature": 0, "ignore_eos": True}
    full = requests.post(url, json=body, timeout=120).json()["choices"][0]["text"]
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert stop.strip(), "tiny model produced blank text; pick another prompt"
    before = wait_idle(server)
    cut = requests.post(url, json=body | {"stop": [stop]}, timeout=120).json()["choices"][0]
    assert cut["finish_reason"] == "stop"
    after = wait_idle(server)
    stopped = 'glm47_request_finish_total{reason="stop"}'
    aborted = 'glm47_request_finish_total{reason="abort"}'
    assert after.get(stopped, 0.0) - before.get(stopped, 0.0) == 1
    assert after.get(aborted, 0.0) == before.get(aborted, 0.0)
