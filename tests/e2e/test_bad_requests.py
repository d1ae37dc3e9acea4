"""Bad input gets a clear OpenAI-style error with the right status, and the server keeps serving."""

from __future__ import annotations

import time

import pytest
import requests

from .conftest import Server

pytestmark = pytest.mark.e2e


def _error(resp: requests.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["message"]
    return err


def test_malformed_json_is_400(server: Server) -> None:
    resp = requests.post(
        f"{server.base_url}/v1/chat/completions",
        data=b"{not json",
        headers={"content-type": "application/json"},
        timeout=10,
    )
    _error(resp, 400)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", "hot"),
        ("temperature", -1.0),
        ("top_p", 1.5),
        ("max_tokens", -3),
        ("n", 0),
        ("messages", "hello"),
    ],
)
def test_invalid_chat_field_is_400_and_named(server: Server, field: str, value: object) -> None:
    body: dict = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    body[field] = value
    resp = requests.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=10)
    err = _error(resp, 400)
    assert field in (err.get("param") or "") + err["message"]
    refused = [line for line in server.log().splitlines() if "request refused (400" in line]
    assert any(field in line for line in refused), refused[-3:]  # the log says what happened


def test_prompt_longer_than_the_limit_is_400(server: Server) -> None:
    prompt = "hello " * 20000
    resp = requests.post(
        f"{server.base_url}/v1/completions",
        json={"model": "m", "prompt": prompt, "max_tokens": 2},
        timeout=60,
    )
    _error(resp, 400)


def test_unknown_route_is_404(server: Server) -> None:
    _error(requests.get(f"{server.base_url}/v1/nothing-here", timeout=10), 404)


def test_server_still_serves_after_bad_requests(server: Server) -> None:
    body = {"inputs": "ok", "parameters": {"max_new_tokens": 2, "ignore_eos": True}}
    assert requests.post(f"{server.base_url}/generate", json=body, timeout=60).status_code == 200


def _router_rss(server: Server) -> int:
    text = requests.get(f"{server.base_url}/metrics", timeout=10).text
    line = next(ln for ln in text.splitlines() if ln.startswith("process_resident_memory_bytes "))
    return int(line.split()[1])


def test_memory_taken_by_huge_prompts_is_given_back(server: Server) -> None:
    """Tokenizing a 5 MB prompt takes the router hundreds of megabytes, which it hands back to
    the system once answered (without that it stayed some 300 MB larger)."""
    before = _router_rss(server)
    huge = "hello world " * 400_000
    for path, body in [
        ("/tokenize", {"prompt": huge}),
        ("/v1/completions", {"prompt": huge, "max_tokens": 1}),
    ]:
        resp = requests.post(f"{server.base_url}{path}", json=body, timeout=120)
        assert resp.status_code in (200, 400), resp.text
    deadline = time.monotonic() + 10
    while _router_rss(server) > before + 100_000_000 and time.monotonic() < deadline:
        time.sleep(0.2)  # the release runs on the blocking pool after the answer
    assert _router_rss(server) < before + 100_000_000
