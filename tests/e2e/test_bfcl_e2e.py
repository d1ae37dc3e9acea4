"""`glm47 bfcl` against the real router, with a worker whose tokens spell one tool call: both
transports parse the same call and score it the same way."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from glm47.bench.bfcl import main
from tests.bench.test_bfcl import write_data

from .conftest import scripted_router

pytestmark = pytest.mark.e2e

MODEL_TEXT = (
    "The area needs one call.</think>"
    "<tool_call>geometry_area<arg_key>base</arg_key><arg_value>10</arg_value>"
    "<arg_key>height</arg_key><arg_value>5</arg_value></tool_call>"
)


@pytest.fixture(scope="module")
def area_router(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with scripted_router(tiny_model_dir, tmp_path_factory.mktemp("bfcl"), MODEL_TEXT) as base:
        yield base


def test_both_transports_score_the_same_calls(area_router: str, tmp_path: Path) -> None:
    data = write_data(tmp_path / "data")
    out = tmp_path / "out"
    argv = ["--base-url", area_router, "--data-dir", str(data), "--output-dir", str(out)]
    assert main([*argv, "--categories", "simple_python,irrelevance", "--limit", "2"]) == 0
    results = json.loads((out / "bfcl.json").read_text())["results"]
    for mode in ("no-stream", "stream"):
        assert results[mode]["simple_python"] == {"cases": 2, "correct": 2, "accuracy": 1.0}
        assert results[mode]["irrelevance"]["correct"] == 0  # the worker calls a tool anyway
    cases = json.loads((out / "bfcl_cases.json").read_text())
    calls = {mode: [c["calls"] for c in cases[mode]] for mode in cases}
    assert calls["stream"] == calls["no-stream"]
    assert calls["stream"][0] == [{"name": "geometry.area", "arguments": {"base": 10, "height": 5}}]
    assert "| simple_python | 100.00% | 2/2 | 100.00% | 2/2 |" in (out / "bfcl.md").read_text()
