"""Fixtures that start the real `glm47 serve` (router + worker) on the tiny model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from glm47.serve import free_port


@dataclass(frozen=True)
class Server:
    base_url: str  # http://127.0.0.1:PORT
    model_dir: Path
    log_path: Path

    @property
    def openai_base(self) -> str:
        return f"{self.base_url}/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _wait_healthy(base: str, timeout_s: float, procs: list[subprocess.Popen[bytes]]) -> bool:
    """Poll `base`/health: True once it answers 200, False when one of `procs` exits first or
    `timeout_s` pass."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            return False
        try:
            if requests.get(f"{base}/health", timeout=1).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.2)
    return False


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from glm47.worker.model.tiny import make_tiny_model

    path = tmp_path_factory.mktemp("tiny-model")
    make_tiny_model(str(path), seed=0)
    return path


def start_server(
    model_dir: Path, log_path: Path, *extra: str, session: bool = False
) -> tuple[subprocess.Popen[bytes], str]:
    """Starts `glm47 serve` and waits until it is healthy; with `session`, in a session (and
    process group) of its own, as a terminal would start it."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "glm47.cli",
        "serve",
        "--model-dir",
        str(model_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
        *extra,
    ]
    # One torch thread per worker: on the CI machine's 2 cores, shared by the test process and
    # the router, a second OpenMP thread stalls at every barrier while another process holds a
    # core, and the same steps take several times longer. Every server of the suite starts here,
    # so outputs compared between servers come from the same thread count.
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=session
        )
    base = f"http://127.0.0.1:{port}"
    if _wait_healthy(base, 180, [proc]):
        return proc, base
    if proc.poll() is not None:
        raise RuntimeError(f"glm47 serve exited early:\n{log_path.read_text()}")
    proc.kill()
    raise RuntimeError(f"glm47 serve not ready in time:\n{log_path.read_text()}")


def stop_server(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


@pytest.fixture(scope="session")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    proc, base = start_server(
        tiny_model_dir,
        log_path,
        "--tool-call-parser",
        "glm47",
        "--reasoning-parser",
        "glm45",
        "--enable-log-requests",
    )
    try:
        yield Server(base_url=base, model_dir=tiny_model_dir, log_path=log_path)
    finally:
        stop_server(proc)


# What a scripted worker writes in the API tests: reasoning, a sentence, then one call.
WEATHER_CALL_TEXT = (
    "The user wants weather.</think>Let me check.\n"
    "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value>"
    "<arg_key>days</arg_key><arg_value>3</arg_value></tool_call>"
)


@contextmanager
def scripted_router(model_dir: Path, tmp: Path, text: str) -> Iterator[str]:
    """The real router in front of tests/e2e/scripted_worker.py answering every request with
    `text`; yields the router's base URL."""
    (tmp / "text").write_text(text)
    listen = f"tcp://127.0.0.1:{free_port()}"
    port = free_port()
    log = (tmp / "log").open("wb")
    worker_cmd = ["-m", "tests.e2e.scripted_worker", "--listen", listen]
    worker_cmd += ["--model-dir", str(model_dir), "--text-file", str(tmp / "text")]
    router_cmd = ["-m", "glm47.router", "--worker-addr", listen, "--model-dir", str(model_dir)]
    router_cmd += ["--host", "127.0.0.1", "--port", str(port)]
    router_cmd += ["--tool-call-parser", "glm47", "--reasoning-parser", "glm45"]
    procs = [
        subprocess.Popen([sys.executable, *cmd], stdout=log, stderr=subprocess.STDOUT)
        for cmd in (worker_cmd, router_cmd)
    ]
    base = f"http://127.0.0.1:{port}"
    try:
        if not _wait_healthy(base, 60, procs):
            raise RuntimeError((tmp / "log").read_text())
        yield base
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(timeout=20)
