"""Tool calls and reasoning through the real router, driven by a worker whose tokens spell them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from .conftest import scripted_router

pytestmark = pytest.mark.e2e

MODEL_TEXT = (
    "The user wants weather.</think>Let me check both.\n"
    "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value>"
    "<arg_key>days</arg_key><arg_value>3</arg_value></tool_call>"
    "<tool_call>get_weather<arg_key>city</arg_key><arg_value>12345</arg_value>"
    "<arg_key>days</arg_key><arg_value>1</arg_value></tool_call>"
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather forecast",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
]
EXPECTED_ARGS = [{"city": "Paris", "days": 3}, {"city": "12345", "days": 1}]


@pytest.fixture(scope="module")
def tool_router(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with scripted_router(tiny_model_dir, tmp_path_factory.mktemp("scripted"), MODEL_TEXT) as base:
        yield base


def _client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)


def test_non_streaming_chat_returns_reasoning_content_and_typed_calls(tool_router: str) -> None:
    resp = _client(tool_router).chat.completions.create(
        model="scripted",
        messages=[{"role": "user", "content": "weather?"}],
        tools=TOOLS,
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.reasoning_content == "The user wants weather."
    assert (choice.message.content or "").strip() == "Let me check both."
    calls = choice.message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_weather"]
    assert [json.loads(c.function.arguments) for c in calls] == EXPECTED_ARGS
    assert len({c.id for c in calls}) == 2 and all(c.id.startswith("call_") for c in calls)


def test_streamed_tool_calls_match_the_non_streamed_ones(tool_router: str) -> None:
    stream = _client(tool_router).chat.completions.create(
        model="scripted",
        messages=[{"role": "user", "content": "weather?"}],
        tools=TOOLS,
        stream=True,
    )
    reasoning, content, finish = "", "", None
    calls: dict[int, dict] = {}
    for chunk in stream:
        for choice in chunk.choices:
            d = choice.delta
            reasoning += getattr(d, "reasoning_content", None) or ""
            content += d.content or ""
            finish = choice.finish_reason or finish
            for tc in d.tool_calls or []:
                entry = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                if tc.id:
                    assert entry["id"] is None, "a call's id is sent once"
                    entry["id"] = tc.id
                if tc.function and tc.function.name:
                    entry["name"] += tc.function.name
                if tc.function and tc.function.arguments:
                    entry["arguments"] += tc.function.arguments
    assert reasoning == "The user wants weather."
    assert content.strip() == "Let me check both."
    assert sorted(calls) == [0, 1]
    assert [calls[i]["name"] for i in (0, 1)] == ["get_weather", "get_weather"]
    assert [json.loads(calls[i]["arguments"]) for i in (0, 1)] == EXPECTED_ARGS
    assert finish == "tool_calls"


def test_without_tools_the_text_passes_through_as_content(tool_router: str) -> None:
    resp = _client(tool_router).chat.completions.create(
        model="scripted",
        messages=[{"role": "user", "content": "weather?"}],
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    msg = resp.choices[0].message
    assert "<tool_call>get_weather" in (msg.content or "") + (
        getattr(msg, "reasoning_content", None) or ""
    )
    assert not msg.tool_calls
