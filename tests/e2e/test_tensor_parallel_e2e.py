"""`glm47 serve --tp 2` on the tiny model (two CPU ranks joined by gloo), with and without MTP:
through the real router and worker, greedy and seeded answers equal the single-process server's,
streamed or not, and the second rank stops with the server."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import requests
from openai import OpenAI

from .conftest import Server, start_server, stop_server

pytestmark = pytest.mark.e2e

PROMPTS = ["Hello there", "The weather in Paris is", "1 2 3 4"]


def answers(base: str) -> list[str]:
    texts = []
    for i, prompt in enumerate(PROMPTS):
        for temperature in (0.0, 1.0):
            body = {"model": "x", "prompt": prompt, "max_tokens": 12,
                    "temperature": temperature, "seed": i}  # fmt: skip
            resp = requests.post(f"{base}/v1/completions", json=body, timeout=120)
            assert resp.status_code == 200, resp.text
            texts.append(resp.json()["choices"][0]["text"])
    client = OpenAI(base_url=f"{base}/v1", api_key="x")
    stream = client.chat.completions.create(
        model="x",
        messages=[{"role": "user", "content": "Tell me about Paris"}],
        max_tokens=16,
        temperature=0,
        stream=True,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    texts.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
    return texts


@pytest.mark.parametrize("mtp", [False, True])
def test_two_ranks_serve_the_single_rank_answers(server: Server, tmp_path: Path, mtp: bool) -> None:
    """With MTP the ranks draft too (each from its copy of the hidden states); greedy output and
    seeded samples are the single-rank server's without drafts either way."""
    log_path = tmp_path / "serve-tp.log"
    extra = ["--mtp-step", "2"] if mtp else []
    proc, base = start_server(server.model_dir, log_path, "--tp", "2", *extra)
    try:
        with_tp = answers(base)
        metrics = requests.get(f"{base}/metrics", timeout=30).text
    finally:
        code = stop_server(proc)
    assert with_tp == answers(server.base_url)
    assert all(with_tp), with_tp
    assert code == 0
    log = log_path.read_text()
    assert "tensor parallelism over 2 ranks: this process is rank 0" in log
    assert "tensor-parallel rank 1 stopped after" in log, log[-3000:]
    if mtp:  # the worker's acceptance rate exists once it has proposed drafts (random weights
        # accept few or none)
        assert "glm47_spec_acceptance_rate{worker=" in metrics, metrics


def _children(pid: int) -> list[int]:
    """Process ids whose parent is `pid` (from /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _ranks(serve_pid: int) -> tuple[int, int]:
    """(the worker's pid, its one follower's pid) under `glm47 serve`."""
    workers = [
        p
        for p in _children(serve_pid)
        if b"glm47.worker" in Path(f"/proc/{p}/cmdline").read_bytes()
    ]
    assert len(workers) == 1, workers
    followers = [
        p for p in _children(workers[0])
        if b"multiprocessing" in Path(f"/proc/{p}/cmdline").read_bytes()
        and b"resource_tracker" not in Path(f"/proc/{p}/cmdline").read_bytes()
    ]  # fmt: skip
    assert len(followers) == 1, followers
    return workers[0], followers[0]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_lost_rank_ends_the_server_with_the_reason_in_its_log(
    server: Server, tmp_path: Path
) -> None:
    log_path = tmp_path / "serve-tp-lost.log"
    proc, base = start_server(server.model_dir, log_path, "--tp", "2")
    try:
        assert answers(base)  # serving
        _, follower = _ranks(proc.pid)
        os.kill(follower, signal.SIGKILL)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            stop_server(proc)
    assert code != 0
    log = log_path.read_text()
    assert "tensor-parallel rank glm47-tp1 exited" in log, log[-3000:]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_follower_ends_when_its_rank_0_is_killed(server: Server, tmp_path: Path) -> None:
    proc, _ = start_server(server.model_dir, tmp_path / "serve-tp-killed.log", "--tp", "2")
    try:
        worker, follower = _ranks(proc.pid)
        os.kill(worker, signal.SIGKILL)  # no word to the follower
        deadline = time.monotonic() + 20
        while Path(f"/proc/{follower}").exists() and time.monotonic() < deadline:
            state = Path(f"/proc/{follower}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "Z":  # exited, waiting to be reaped
                break
            time.sleep(0.1)
        gone = not Path(f"/proc/{follower}").exists() or state == "Z"
        assert gone, "the follower outlived its rank 0"
    finally:
        if proc.poll() is None:
            stop_server(proc)
