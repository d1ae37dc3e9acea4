"""`glm47 serve` supervises its two processes: Ctrl-C stops both, and a dead worker stops the router."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

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


def test_a_dead_worker_stops_serve_with_an_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    proc, _ = start_server(tiny_model_dir, tmp_path / "serve.log")
    worker = next(k for k in _children(proc.pid) if "glm47.worker" in " ".join(k.cmdline()))
    os.kill(worker.pid, signal.SIGKILL)
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert code != 0
    time.sleep(0.5)
    assert "worker exited" in (tmp_path / "serve.log").read_text()
