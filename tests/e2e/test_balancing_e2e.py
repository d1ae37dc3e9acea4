"""Prefix-aware balancing through the real router in front of two real workers (tiny model, CPU):
a conversation's next turn goes to the worker whose prefix cache holds its earlier turn, even
while that worker is the busier one, and is served from that cache."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from glm47.serve import free_port

from .conftest import _wait_healthy

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def two_workers(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, list[str]]]:
    """The router's base URL and its two workers' addresses, prefix-aware balancing (the
    default)."""
    log_path = tmp_path_factory.mktemp("balance") / "log"
    log = log_path.open("wb")
    listens = [f"tcp://127.0.0.1:{free_port()}" for _ in range(2)]
    port = free_port()
    model = ["--model-dir", str(tiny_model_dir)]
    cmds = [["-m", "glm47.worker", "--listen", addr, *model, "--device", "cpu"] for addr in listens]
    router = ["-m", "glm47.router", *model, "--host", "127.0.0.1", "--port", str(port)]
    for addr in listens:
        router += ["--worker-addr", addr]
    cmds.append(router)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    procs = [
        subprocess.Popen([sys.executable, *cmd], stdout=log, stderr=subprocess.STDOUT, env=env)
        for cmd in cmds
    ]
    base = f"http://127.0.0.1:{port}"
    try:
        if not _wait_healthy(base, 180, procs):
            raise RuntimeError(log_path.read_text())
        # /health answers once one worker is ready; wait for both.
        deadline = time.monotonic() + 180
        while _ready_workers(base) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("the second worker is not ready:\n" + log_path.read_text())
            time.sleep(0.2)
        yield base, listens
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(timeout=30)


def _ready_workers(base: str) -> int:
    metrics = requests.get(f"{base}/metrics", timeout=5).text.splitlines()
    return sum(line.startswith("glm47_worker_ready") and line.endswith(" 1") for line in metrics)


def _has_served(base: str, worker: str) -> bool:
    """True once `worker` has reported a step (its stats reach the router with its steps)."""
    metrics = requests.get(f"{base}/metrics", timeout=5).text
    return f'glm47_kv_pages_capacity{{worker="{worker}"}}' in metrics


def _complete(base: str, prompt: list[int], max_tokens: int) -> dict:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    resp = requests.post(f"{base}/v1/completions", json=body, timeout=120)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _cached(answer: dict) -> int:
    return int(answer["usage"].get("prompt_tokens_details", {}).get("cached_tokens", 0))


def test_a_next_turn_follows_its_prefix_to_the_busier_worker(
    two_workers: tuple[str, list[str]],
) -> None:
    base, (_, second_worker) = two_workers
    turn1 = [(i * 37 + 11) % 90 + 3 for i in range(160)]
    first = _complete(base, turn1, 4)  # both idle: the first worker
    assert _cached(first) == 0
    # Keep the first worker busy with a long stream: once both are idle again, it goes there too.
    deadline = time.monotonic() + 30
    while "glm47_requests_in_flight 0" not in requests.get(f"{base}/metrics", timeout=5).text:
        assert time.monotonic() < deadline, "the first request is still in flight"
        time.sleep(0.05)
    hold_body = {"prompt": [5, 6, 7], "max_tokens": 3000, "ignore_eos": True, "stream": True}
    with requests.post(f"{base}/v1/completions", json=hold_body, stream=True, timeout=120) as hold:
        assert hold.status_code == 200
        lines = hold.iter_lines()  # kept: dropping the iterator closes the connection
        assert next(lines).startswith(b"data:")  # admitted and generating
        # Least loaded would be the idle second worker; the prefix is on the first.
        turn2 = [*turn1, 4, 5, 6, 7, 8, 9, 10, 11]
        second = _complete(base, turn2, 4)
        assert _cached(second) >= 144, second["usage"]  # the full pages of turn 1
        assert not _has_served(base, second_worker)
        # An unrelated prompt goes by load: to the idle second worker.
        other = _complete(base, [(i * 53 + 7) % 90 + 3 for i in range(160)], 4)
        assert _cached(other) == 0
        assert _has_served(base, second_worker)
    metrics = requests.get(f"{base}/metrics", timeout=5).text
    assert "glm47_prefix_routed_total 1" in metrics
