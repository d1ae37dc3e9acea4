"""`glm47 bench` against the real server: every request completes and the reports are written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glm47.bench.cli import main as bench_main
from glm47.bench.client import Arrival, send_offsets

from .conftest import Server

pytestmark = pytest.mark.e2e


def test_bench_random_workloads_write_reports(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = bench_main(
        [
            "--base-url",
            server.base_url,
            "--dataset",
            "random",
            "--num-prompts",
            "6",
            "--random-input-len",
            "12",
            "--random-output-len",
            "5",
            "--vocab-size",
            "600",
            "--workload",
            "conc:3",
            "--workload",
            "rate:50",
            "--output-dir",
            str(tmp_path),
            "--label",
            "tiny model on CPU",
            "--client-procs",
            "2",
        ]
    )
    assert code == 0
    assert "requests: 100%" in capsys.readouterr().err  # the progress bar of both processes
    report = json.loads((tmp_path / "bench.json").read_text())
    for name in ("conc:3", "rate:50"):
        w = report["workloads"][name]
        assert w["completed"] == 6 and w["errors"] == 0
        assert w["total_output_tokens"] == 30
        # the server's own view, from its /metrics, next to the client's
        assert 0 < w["server_ttft_mean_ms"] <= w["ttft_ms"]["mean"] + 1
        assert w["server_ttft_mean_ms"] < w["server_e2e_mean_ms"] <= w["e2e_ms"]["mean"] + 1
        # from arrival at the router: the dispatch-to-token time plus the router's own work
        first_chunk = w["server_first_chunk_mean_ms"]
        assert w["server_ttft_mean_ms"] - 1 <= first_chunk <= w["ttft_ms"]["mean"] + 1
    # Two client processes on one clock, merged back in request order: each request was released
    # at its time in the shared Poisson schedule.
    raw = json.loads((tmp_path / "rate_50.requests.json").read_text())
    offsets = send_offsets(6, Arrival(rate=50.0, seed=0))
    assert len(raw) == 6 and offsets[-1] > 0.02
    for r, offset in zip(raw, offsets, strict=True):
        assert offset - 0.005 <= r["start"] <= offset + 0.5  # late only on a loaded machine
    assert (tmp_path / "conc_3.png").stat().st_size > 1000
    assert "output tok/s" in (tmp_path / "bench.md").read_text()


def test_bench_sharegpt_chat_uses_the_dataset(server: Server, tmp_path: Path) -> None:
    code = bench_main(
        [
            "--base-url",
            server.base_url,
            "--endpoint",
            "chat",
            "--dataset",
            "sharegpt",
            "--tokenizer",
            str(server.model_dir),
            "--num-prompts",
            "3",
            "--workload",
            "burst",
            "--output-dir",
            str(tmp_path),
            "--no-progress",
        ]
    )
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["meta"]["num_prompts"] == 3
    assert code == 0 and report["workloads"]["burst"]["completed"] == 3
