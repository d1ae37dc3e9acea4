"""benchmarks/eager_profile.py runs end to end on the CPU with the tiny shapes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_eager_profile_reports_both_steps(tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "eager_profile.py"), "--tiny"]
    cmd += ["--device", "cpu", "--decode", "3", "--context", "20", "--prefill", "9"]
    cmd += ["--iters", "2", "--top", "5", "--json", str(out), "--segment-graphs"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["mixed"]["tokens"] == 3 + 9 and report["decode"]["tokens"] == 3
    assert "mixed+sg" not in report  # segment graphs are captured on CUDA devices only
    for row in (report["mixed"], report["decode"]):
        assert row["wall_ms"] > 0 and row["torch_ops_per_step"] > 0
        assert "tottime" in row["cprofile_top"]
    assert "eager profile" in proc.stdout
