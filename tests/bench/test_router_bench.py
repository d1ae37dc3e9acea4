"""benchmarks/router_bench.py runs the real router against its paced worker on the CPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from glm47.serve import default_cache_dir, ensure_tiny_model

ROOT = Path(__file__).resolve().parents[2]


def test_router_bench_streams_every_request_through_the_real_router(tmp_path: Path) -> None:
    model_dir = ensure_tiny_model(default_cache_dir())
    vocab = json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "router_bench.py"), "--model-dir", model_dir]
    cmd += ["--step-ms", "5", "--capacity", "16", "--dataset", "random", "--vocab-size", str(vocab)]
    cmd += ["--random-input-len", "12", "--random-output-len", "5", "--num-prompts", "40"]
    cmd += ["--workload", "burst", "--client-procs", "1", "--no-progress"]
    cmd += ["--output-dir", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    burst = json.loads((tmp_path / "bench.json").read_text())["workloads"]["burst"]
    assert burst["completed"] == 40 and burst["errors"] == 0
    # 40 requests, 16 at a time, 5 tokens each: the paced worker emits exactly what was asked.
    assert burst["total_output_tokens"] == 40 * 5
    assert burst["server_ttft_mean_ms"] is not None
    used = re.search(r"the router used ([0-9.]+) CPU seconds \(peak resident memory (\d+) MiB\)",
                     proc.stdout)  # fmt: skip
    assert used is not None, proc.stdout[-2000:]
