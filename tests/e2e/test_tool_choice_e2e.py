"""tool_choice through the real router: a forced call with thinking on, required and named.

The router appends `</think><tool_call>` (required) or `</think><tool_call>NAME` (named) to the
prompt, so the scripted worker's text starts right after that prefix.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from .conftest import scripted_router

pytestmark = pytest.mark.e2e

REQUIRED_TEXT = "get_weather<arg_key>city</arg_key><arg_value>Rome</arg_value></tool_call>"
NAMED_TEXT = (
    "<arg_key>city</arg_key><arg_value>Rome</arg_value></tool_call>"
    "<tool_call>get_time<arg_key>zone</arg_key><arg_value>CET</arg_value></tool_call>"
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "parameters": {"type": "object", "properties": {key: {"type": "string"}}},
        },
    }
    for name, key in (("get_weather", "city"), ("get_time", "zone"))
]
MESSAGES = [{"role": "user", "content": "weather in Rome?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def required_router(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    with scripted_router(tiny_model_dir, tmp_path_factory.mktemp("required"), REQUIRED_TEXT) as b:
        yield b


@pytest.fixture(scope="module")
def named_router(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with scripted_router(tiny_model_dir, tmp_path_factory.mktemp("named"), NAMED_TEXT) as b:
        yield b


def _client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)


def _ask(base: str, stream: bool, **extra: Any) -> dict[str, Any]:
    """The answer as {reasoning, content, finish, calls: [(name, arguments dict)]}."""
    client = _client(base)
    if not stream:
        resp = client.chat.completions.create(
            model="scripted", messages=MESSAGES, tools=TOOLS, **extra
        )
        choice = resp.choices[0]
        return {
            "reasoning": getattr(choice.message, "reasoning_content", None) or "",
            "content": choice.message.content or "",
            "finish": choice.finish_reason,
            "calls": [
                (c.function.name, json.loads(c.function.arguments))
                for c in choice.message.tool_calls or []
            ],
        }
    chunks = client.chat.completions.create(
        model="scripted", messages=MESSAGES, tools=TOOLS, stream=True, **extra
    )
    reasoning, content, finish = "", "", None
    calls: dict[int, list[str]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            d = choice.delta
            reasoning += getattr(d, "reasoning_content", None) or ""
            content += d.content or ""
            finish = choice.finish_reason or finish
            for tc in d.tool_calls or []:
                entry = calls.setdefault(tc.index, ["", ""])
                entry[0] += (tc.function and tc.function.name) or ""
                entry[1] += (tc.function and tc.function.arguments) or ""
    return {
        "reasoning": reasoning,
        "content": content,
        "finish": finish,
        "calls": [(calls[i][0], json.loads(calls[i][1])) for i in sorted(calls)],
    }


@pytest.mark.parametrize("stream", [False, True])
def test_required_with_thinking_on_returns_the_forced_call(
    required_router: str, stream: bool
) -> None:
    answer = _ask(required_router, stream, tool_choice="required")
    assert answer["calls"] == [("get_weather", {"city": "Rome"})]
    assert answer["finish"] == "tool_calls"
    assert answer["reasoning"] == "", "reasoning is skipped for a forced call"
    assert answer["content"] == ""


@pytest.mark.parametrize("stream", [False, True])
def test_named_with_thinking_on_returns_that_call(named_router: str, stream: bool) -> None:
    answer = _ask(named_router, stream, tool_choice=NAMED)
    assert answer["calls"] == [
        ("get_weather", {"city": "Rome"}),
        ("get_time", {"zone": "CET"}),
    ]
    assert answer["finish"] == "tool_calls"
    assert answer["reasoning"] == ""


@pytest.mark.parametrize("stream", [False, True])
def test_named_without_parallel_calls_keeps_only_the_first(named_router: str, stream: bool) -> None:
    answer = _ask(named_router, stream, tool_choice=NAMED, parallel_tool_calls=False)
    assert answer["calls"] == [("get_weather", {"city": "Rome"})]
    assert answer["finish"] == "tool_calls"


def test_a_named_function_missing_from_tools_is_400_naming_tool_choice(
    required_router: str,
) -> None:
    bad = {"type": "function", "function": {"name": "get_stock"}}
    with pytest.raises(openai.BadRequestError) as err:
        _ask(required_router, False, tool_choice=bad)
    assert "tool_choice" in str(err.value)


def test_none_parses_no_call(required_router: str) -> None:
    answer = _ask(
        required_router,
        False,
        tool_choice="none",
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    assert answer["calls"] == []
    assert answer["finish"] == "stop"
    assert answer["content"].startswith("get_weather<arg_key>city</arg_key>")
