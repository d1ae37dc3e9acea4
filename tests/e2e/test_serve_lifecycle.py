"""`glm47 serve` supervises its processes: Ctrl-C stops them all, a dead worker stops the router, and
`--dp 2` serves from two workers."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import requests

from .conftest import start_server, stop_server

pytestmark = pytest.mark.e2e


def _children(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def test_ctrl_c_stops_worker_and_router_and_exits_0(tiny_model_dir: Path, tmp_path: Path) -> None:
    proc, _ = start_server(tiny_model_dir, tmp_path / "serve.log")
    kids = _children(proc.pid)
    assert len(kids) >= 2
    assert stop_server(proc) == 0
    _, alive = psutil.wait_procs(kids, timeout=10)
    assert not alive
    # The router stops before its worker, so it does not report the worker's going as a fault.
    log = (tmp_path / "serve.log").read_text()
    assert "shutting down" in log and " WARN " not in log and "ERROR" not in log


def test_a_dead_worker_stops_serve_with_an_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    proc, _ = start_server(tiny_model_dir, tmp_path / "serve.log")
    worker = next(k for k in _children(proc.pid) if "glm47.worker" in " ".join(k.cmdline()))
    os.kill(worker.pid, signal.SIGKILL)
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert code == 128 + signal.SIGKILL, "a death by signal N reads as 128 + N"
    time.sleep(0.5)
    assert "worker exited" in (tmp_path / "serve.log").read_text()


def test_serve_killed_takes_its_worker_and_router_with_it(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    proc, _ = start_server(tiny_model_dir, tmp_path / "serve.log")
    kids = _children(proc.pid)
    assert len(kids) >= 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    _, alive = psutil.wait_procs(kids, timeout=20)
    for k in alive:
        k.kill()
    assert not alive, [" ".join(k.cmdline()) for k in alive]


def test_dp_serves_from_two_workers_and_stops_them_all(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    proc, base = start_server(tiny_model_dir, tmp_path / "serve.log", "--dp", "2")
    try:
        kids = _children(proc.pid)
        workers = [k for k in kids if "glm47.worker" in " ".join(k.cmdline())]
        assert len(workers) == 2
        deadline = time.monotonic() + 120
        while True:  # /health answers once one worker is ready; wait for the second one too
            metrics = requests.get(f"{base}/metrics", timeout=5).text.splitlines()
            ready = [m for m in metrics if m.startswith("glm47_worker_ready") and m.endswith(" 1")]
            if len(ready) == 2:
                break
            assert time.monotonic() < deadline, "the second worker did not become ready"
            time.sleep(0.2)
        body = {"prompt": "hello", "max_tokens": 4, "ignore_eos": True}
        answers = [requests.post(f"{base}/v1/completions", json=body, timeout=60) for _ in range(2)]
        assert all(a.status_code == 200 for a in answers)
    finally:
        assert stop_server(proc) == 0
    _, alive = psutil.wait_procs(kids, timeout=10)
    assert not alive


def test_ctrl_c_at_a_terminal_drains_a_stream_then_a_second_one_ends_it(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A terminal's Ctrl-C reaches serve's whole process group: the router and the worker leave
    it to serve, which stops the router with one SIGTERM (it drains); a second Ctrl-C is passed
    on and ends the stream at once, with its error and [DONE]."""
    proc, base = start_server(
        tiny_model_dir, tmp_path / "serve.log", "--shutdown-timeout", "60", session=True
    )
    try:
        kids = _children(proc.pid)
        body = {"prompt": "hello", "max_tokens": 4000, "ignore_eos": True, "stream": True}
        with requests.post(f"{base}/v1/completions", json=body, stream=True, timeout=60) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith(b"data:"))
            assert b'"text"' in first
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
            # the stream goes on through the drain (60 s): tokens keep coming
            more = [next(line for line in lines if line.startswith(b"data:")) for _ in range(20)]
            assert all(b'"text"' in line for line in more)
            assert all(k.is_running() for k in kids), "no child stopped on the group's SIGINT"
            signalled = time.monotonic()
            os.killpg(proc.pid, signal.SIGINT)  # again: the requests end now
            rest = [line for line in lines if line.startswith(b"data:")]
        assert time.monotonic() - signalled < 10
        assert rest[-1] == b"data: [DONE]", rest[-3:]
        assert b'"error"' in rest[-2], rest[-3:]
        assert proc.wait(timeout=30) == 0
        _, alive = psutil.wait_procs(kids, timeout=10)
        assert not alive
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
