"""`glm47 serve --mtp-step 2` on the tiny model: speculative decoding through the real router and
worker gives the greedy output of the server without it, and reports its acceptance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from .conftest import Server, start_server, stop_server

pytestmark = pytest.mark.e2e

PROMPTS = ["Hello there", "The weather in Paris is", "1 2 3 4"]


def completions(base: str) -> list[str]:
    texts = []
    for prompt in PROMPTS:
        body = {"model": "x", "prompt": prompt, "max_tokens": 16, "temperature": 0}
        resp = requests.post(f"{base}/v1/completions", json=body, timeout=120)
        assert resp.status_code == 200, resp.text
        texts.append(resp.json()["choices"][0]["text"])
    return texts


def json_answers(base: str) -> list[str]:
    """Constrained requests beside free ones: the free ones get drafts, the JSON ones none."""
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    texts = []
    for i, prompt in enumerate(PROMPTS):
        body = {"model": "x", "prompt": prompt, "max_tokens": 200, "temperature": 1.0, "seed": i,
                "guided_json": schema}  # fmt: skip
        resp = requests.post(f"{base}/v1/completions", json=body, timeout=120)
        assert resp.status_code == 200, resp.text
        texts.append(resp.json()["choices"][0]["text"])
    return texts


def test_mtp_serving_keeps_greedy_output(server: Server, tmp_path: Path) -> None:
    log_path = tmp_path / "serve-mtp.log"
    proc, base = start_server(server.model_dir, log_path, "--mtp-step", "2")
    try:
        with_mtp = completions(base)
        json_texts = json_answers(base)
        metrics = requests.get(f"{base}/metrics", timeout=30).text
    finally:
        stop_server(proc)
    assert with_mtp == completions(server.base_url)
    assert json_texts == json_answers(server.base_url), "seeded JSON answers, drafts or not"
    assert all(isinstance(json.loads(t)["ok"], bool) for t in json_texts), json_texts
    log = log_path.read_text()
    assert "speculative decoding: 2 draft token(s) per step from the MTP layer" in log
    assert "glm47_spec_acceptance_rate" in metrics
    assert "mtp_step 2" in log  # the router learned it from the worker's ready message
