"""The LightLLM/TGI `/generate` and `/generate_stream` endpoints, and the plain GET endpoints."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import requests

from .conftest import Server

pytestmark = pytest.mark.e2e


def _sse_events(resp: requests.Response) -> list[dict]:
    return list(_sse_events_iter(resp))


def _sse_events_iter(resp: requests.Response) -> Iterator[dict]:
    for raw in resp.iter_lines():
        line = raw.decode("utf-8")  # SSE is always UTF-8, whatever the content type says
        if line.startswith("data:"):
            payload = line[len("data:") :].strip()
            if payload != "[DONE]":
                yield json.loads(payload)


def test_generate_and_generate_stream_agree(server: Server) -> None:
    body = {
        "inputs": "Hello world",
        "parameters": {"max_new_tokens": 10, "do_sample": False, "ignore_eos": True},
    }
    whole = requests.post(f"{server.base_url}/generate", json=body, timeout=60)
    assert whole.status_code == 200, whole.text
    out = whole.json()
    assert out["count_output_tokens"] == 10
    assert out["finish_reason"] == "length"
    assert out["prompt_tokens"] > 0

    with requests.post(
        f"{server.base_url}/generate_stream", json=body, stream=True, timeout=60
    ) as resp:
        assert resp.status_code == 200
        events = _sse_events(resp)
    assert len(events) == 10
    assert out["generated_text"] == "".join(e["token"]["text"] for e in events)
    assert [e["finished"] for e in events] == [False] * 9 + [True]
    assert events[-1]["finish_reason"] == "length"


def test_generate_accepts_token_ids_and_reports_details(server: Server) -> None:
    body = {
        "inputs": [5, 6, 7, 8],
        "parameters": {
            "max_new_tokens": 3,
            "ignore_eos": True,
            "do_sample": False,
            "return_details": True,
        },
    }
    resp = requests.post(f"{server.base_url}/generate", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    tokens = resp.json()["details"]["tokens"]
    assert len(tokens) == 3
    assert all(t["logprob"] <= 0 for t in tokens)


def test_health_models_and_metrics(server: Server) -> None:
    assert requests.get(f"{server.base_url}/health", timeout=5).status_code == 200
    models = requests.get(f"{server.base_url}/v1/models", timeout=5).json()
    assert models["object"] == "list" and models["data"][0]["object"] == "model"
    metrics = requests.get(f"{server.base_url}/metrics", timeout=5)
    assert metrics.status_code == 200
    assert "# TYPE" in metrics.text


def test_sglang_generate_with_a_schema_and_its_stream(server: Server) -> None:
    """SGLang's native `/generate` shape: `text` + `sampling_params` (a JSON schema among them),
    answered as `{"text", "output_ids", "meta_info"}`; streamed, the text so far each time."""
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    params = {"max_new_tokens": 60, "temperature": 0, "json_schema": json.dumps(schema)}
    body = {"text": "Answer in JSON:", "sampling_params": params}
    r = requests.post(f"{server.base_url}/generate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert isinstance(json.loads(answer["text"])["ok"], bool), answer
    assert answer["meta_info"]["finish_reason"]["type"] == "stop"
    assert answer["meta_info"]["completion_tokens"] == len(answer["output_ids"])
    streamed = requests.post(
        f"{server.base_url}/generate", json={**body, "stream": True}, timeout=60, stream=True
    )
    events = _sse_events(streamed)
    assert events[-1]["text"] == answer["text"] and events[-1]["output_ids"] == answer["output_ids"]


@pytest.mark.parametrize(
    "constraint",
    [
        {"grammar": {"type": "regex", "value": "(yes|no)-[0-9]{3}"}},
        {"regular_constraint": "(yes|no)-[0-9]{3}"},
    ],
)
def test_generate_output_matches_a_tgi_or_lightllm_pattern(
    server: Server, constraint: dict
) -> None:
    """TGI's `grammar` and LightLLM's `regular_constraint`: the whole output matches, sampled."""
    import re

    for seed in range(3):
        params = {"max_new_tokens": 30, "do_sample": True, "temperature": 1.0, "seed": seed}
        body = {"inputs": "Answer:", "parameters": {**params, **constraint}}
        r = requests.post(f"{server.base_url}/generate", json=body, timeout=60)
        assert r.status_code == 200, r.text
        out = r.json()
        assert re.fullmatch(r"(yes|no)-[0-9]{3}", out["generated_text"]), out
        assert out["finish_reason"] == "stop"


def test_generate_json_grammar_and_its_errors(server: Server) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    params = {"max_new_tokens": 60, "grammar": {"type": "json", "value": schema}}
    r = requests.post(
        f"{server.base_url}/generate", json={"inputs": "JSON:", "parameters": params}, timeout=60
    )
    assert r.status_code == 200, r.text
    assert isinstance(json.loads(r.json()["generated_text"])["ok"], bool)
    for parameters, param in [
        ({"grammar": {"type": "regex", "value": "a("}}, "parameters.grammar.value"),
        ({"grammar": {"type": "lark", "value": "x"}}, "parameters.grammar.type"),
        ({"regular_constraint": "a", "guided_json": {}}, "parameters.guided_json"),
    ]:
        body = {"inputs": "x", "parameters": parameters}
        r = requests.post(f"{server.base_url}/generate", json=body, timeout=60)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"].startswith(param), r.text


def test_abort_request_ends_a_streaming_generate_early(server: Server) -> None:
    """SGLang's `/abort_request` with the request's `rid`: the stream ends with an abort finish
    long before its token budget."""
    import threading

    body = {
        "text": "Tell me everything",
        "rid": "long-job",
        "stream": True,
        "sampling_params": {"max_new_tokens": 3000, "ignore_eos": True},
    }
    events: list[dict] = []

    def read() -> None:
        with requests.post(
            f"{server.base_url}/generate", json=body, stream=True, timeout=120
        ) as resp:
            assert resp.status_code == 200
            for event in _sse_events_iter(resp):
                events.append(event)

    reader = threading.Thread(target=read)
    reader.start()
    deadline = time.monotonic() + 60
    while not events and time.monotonic() < deadline:
        time.sleep(0.02)
    assert events, "the stream started"
    # SGLang's /get_load while it runs: the worker reports it running and holding KV tokens
    loads: list[dict] = []
    while time.monotonic() < deadline:
        loads = requests.get(f"{server.base_url}/get_load", timeout=10).json()
        if loads[0]["num_reqs"] >= 1:
            break
        time.sleep(0.02)
    r = requests.post(f"{server.base_url}/abort_request", json={"rid": "long-job"}, timeout=10)
    assert r.status_code == 200, r.text
    reader.join(timeout=60)
    assert not reader.is_alive()
    assert loads and loads[0]["num_reqs"] >= 1 and loads[0]["num_tokens"] > 0, loads
    last = events[-1]
    assert last["meta_info"]["id"] == "long-job"
    assert last["meta_info"]["finish_reason"]["type"] == "abort", last["meta_info"]
    assert last["meta_info"]["completion_tokens"] < 3000


def test_requests_are_logged_as_they_are_sent_and_end(server: Server) -> None:
    """`--enable-log-requests` (on for this server): one line as a request goes to the worker,
    one as it ends, under the client's id."""
    body = {"inputs": "Log me", "parameters": {"max_new_tokens": 3, "ignore_eos": True}}
    headers = {"X-Request-Id": "logged-1"}
    r = requests.post(f"{server.base_url}/generate", json=body, headers=headers, timeout=60)
    assert r.status_code == 200, r.text

    def logged() -> list[str]:
        return [line for line in server.log().splitlines() if "request logged-1-" in line]

    deadline = time.monotonic() + 10
    while not any("ended" in line for line in logged()) and time.monotonic() < deadline:
        time.sleep(0.05)  # the worker's last output reaches the client before the line is written
    lines = logged()
    assert any("sent to" in line and "max_new_tokens 3" in line for line in lines), lines
    assert any("ended (length): 3 tokens generated" in line for line in lines), lines
