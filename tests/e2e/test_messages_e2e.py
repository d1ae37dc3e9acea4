"""`POST /v1/messages` with the `anthropic` client: a scripted worker's text as thinking, text and
tool_use blocks, streamed or not; a conversation with tool results (an image among them as a
placeholder); token counting; the real tiny model under a forced tool; a prefill; what is refused,
in Anthropic's error shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
import requests

from .conftest import WEATHER_CALL_TEXT, Server, scripted_router

pytestmark = pytest.mark.e2e

TOOLS: list[dict[str, Any]] = [
    {
        "name": "get_weather",
        "description": "Weather of a city",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    }
]
ASK = [{"role": "user", "content": "Weather in Paris?"}]
THINK = {"type": "enabled", "budget_tokens": 1024}  # thinking is off unless asked for


@pytest.fixture(scope="module")
def scripted(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with scripted_router(
        tiny_model_dir, tmp_path_factory.mktemp("messages"), WEATHER_CALL_TEXT
    ) as base:
        yield base


def _client(base: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=base, api_key="unused", max_retries=0)


def test_the_message_is_thinking_then_text_then_the_tool_use(scripted: str) -> None:
    msg = _client(scripted).messages.create(
        model="m",
        max_tokens=200,
        messages=ASK,
        tools=TOOLS,
        system="Be brief.",
        thinking=THINK,  # type: ignore[arg-type]
    )
    assert msg.type == "message" and msg.role == "assistant"
    assert [b.type for b in msg.content] == ["thinking", "text", "tool_use"], msg.content
    thinking, text, call = msg.content
    assert thinking.thinking == "The user wants weather."  # type: ignore[union-attr]
    assert thinking.signature.startswith("glm47-")  # type: ignore[union-attr]
    assert text.text == "Let me check.\n"  # type: ignore[union-attr]
    assert call.name == "get_weather"  # type: ignore[union-attr]
    assert call.input == {"city": "Paris", "days": 3}  # type: ignore[union-attr]
    assert msg.stop_reason == "tool_use"
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0


def test_the_stream_tells_each_block_and_ends_with_the_stop_reason(scripted: str) -> None:
    client = _client(scripted)
    with client.messages.stream(
        model="m",
        max_tokens=200,
        messages=ASK,
        tools=TOOLS,
        thinking=THINK,  # type: ignore[arg-type]
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    types = [e.type for e in events]
    assert types[0] == "message_start" and types[-1] == "message_stop"
    starts = [e.content_block.type for e in events if e.type == "content_block_start"]  # type: ignore[union-attr]
    assert starts == ["thinking", "text", "tool_use"]
    assert types.count("content_block_stop") == 3
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use"]
    assert final.content[2].input == {"city": "Paris", "days": 3}  # type: ignore[union-attr]
    assert final.stop_reason == "tool_use"
    partial = "".join(
        e.delta.partial_json  # type: ignore[union-attr]
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"  # type: ignore[union-attr]
    )
    assert json.loads(partial) == {"city": "Paris", "days": 3}
    # the thinking block's signature comes last in it, before its stop
    deltas = [
        (i, e.delta)  # type: ignore[union-attr]
        for i, e in enumerate(events)
        if e.type == "content_block_delta" and e.index == 0  # type: ignore[union-attr]
    ]
    last, signed = deltas[-1]
    assert signed.type == "signature_delta" and last < types.index("content_block_stop")
    assert final.content[0].signature == signed.signature != ""  # type: ignore[union-attr]


def test_a_conversation_with_tool_results_and_its_token_count(server: Server) -> None:
    client = _client(server.base_url)
    turns: list[Any] = [
        *ASK,
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Call the tool.", "signature": ""},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                {"type": "text", "text": "sunny, 21 C"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]},
            {"type": "text", "text": "And tomorrow?"}]},
    ]  # fmt: skip
    long = client.messages.count_tokens(model="m", messages=turns, tools=TOOLS)  # type: ignore[arg-type]
    short = client.messages.count_tokens(model="m", messages=ASK, tools=TOOLS)  # type: ignore[arg-type]
    assert long.input_tokens > short.input_tokens + 10
    msg = client.messages.create(model="m", max_tokens=3, messages=turns, tools=TOOLS)  # type: ignore[arg-type]
    assert msg.stop_reason == "max_tokens"
    # a max_tokens past what the prompt leaves room for is cut to that room
    body = {"model": "m", "max_tokens": 10**7, "messages": ASK, "stop_sequences": ["a"]}
    big = requests.post(f"{server.base_url}/v1/messages", json=body, timeout=60)
    assert big.status_code == 200, big.text
    assert big.json()["stop_reason"] in ("end_turn", "stop_sequence", "max_tokens")


def test_a_forced_tool_on_the_tiny_model_follows_its_schema(server: Server) -> None:
    pick = {"name": "pick", "input_schema": {"type": "object", "required": ["city"],
            "properties": {"city": {"enum": ["Paris", "Rome"]}, "days": {"type": "integer"}}}}  # fmt: skip
    msg = _client(server.base_url).messages.create(
        model="m", max_tokens=200, messages=ASK, tools=[pick],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "pick"}, thinking={"type": "disabled"},
        extra_body={"temperature": 1.0, "seed": 1},
    )  # fmt: skip
    assert [b.type for b in msg.content] == ["tool_use"], msg.content
    use = msg.content[0]
    assert use.name == "pick" and use.input["city"] in ("Paris", "Rome"), use  # type: ignore[union-attr,index]
    assert msg.stop_reason == "tool_use"


def test_what_is_not_offered_is_refused(server: Server) -> None:
    url = f"{server.base_url}/v1/messages"
    cases = [
        ({"messages": [{"role": "user", "content": [{"type": "audio", "source": {}}]}]},
         "messages[0].content[0]"),
        ({"messages": ASK, "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
         "tools[0]"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        ({"messages": ASK, "max_tokens": 0}, "max_tokens"),
    ]  # fmt: skip
    for body, param in cases:
        r = requests.post(url, json={"model": "m", **body}, timeout=30)
        assert r.status_code == 400, (body, r.text)
        # Anthropic's error shape, the message led by the field
        assert r.json()["type"] == "error", r.text
        assert r.json()["error"]["type"] == "invalid_request_error", r.text
        assert r.json()["error"]["message"].startswith(f"{param}: "), r.text
    bad_json = requests.post(url, data=b"{", timeout=30)
    assert bad_json.status_code == 400
    assert bad_json.json()["error"]["type"] == "invalid_request_error", bad_json.text
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        _client(server.base_url).messages.create(model="m", max_tokens=0, messages=ASK)  # type: ignore[arg-type]


def test_a_last_assistant_turn_is_a_prefill_the_answer_continues(server: Server) -> None:
    client = _client(server.base_url)
    prefill = [*ASK, {"role": "assistant", "content": "The weather in Paris is"}]
    counted = client.messages.count_tokens(model="m", messages=prefill)  # type: ignore[arg-type]
    plain = client.messages.count_tokens(model="m", messages=ASK)  # type: ignore[arg-type]
    assert counted.input_tokens > plain.input_tokens
    msg = client.messages.create(model="m", max_tokens=3, messages=prefill)  # type: ignore[arg-type]
    assert msg.usage.input_tokens == counted.input_tokens
    assert msg.stop_reason == "max_tokens"
    # the same prompt through the chat API's continue_final_message
    chat = {"model": "m", "max_tokens": 1, "messages": prefill, "continue_final_message": True,
            "chat_template_kwargs": {"enable_thinking": False}}  # fmt: skip
    r = requests.post(f"{server.base_url}/v1/chat/completions", json=chat, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == counted.input_tokens
