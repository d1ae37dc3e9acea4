"""glm47.Tokenizer.apply_chat_template renders byte-identically to transformers.

transformers is the reference: the same real GLM-4.7 chat template and the same tokenizer files
go through its `apply_chat_template(tokenize=False)`. The router accepts OpenAI-style tool-call
arguments as JSON strings; transformers' template needs them as dicts, so the reference side gets
them parsed with `json.loads` (which is what the router does before rendering).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerFast

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": '查询城市天气 — returns the forecast; use "metric" units <b>by default</b>',
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "城市名，例如 北京"},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
                "options": {
                    "type": "object",
                    "properties": {
                        "units": {"type": "string", "enum": ["metric", "imperial"]},
                        "hourly": {"type": "boolean"},
                        "fields": {"type": "array", "items": {"type": "string"}},
                    },
                    "required": ["units"],
                },
            },
            "required": ["city"],
        },
    },
}

SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web.\nReturns JSON with keys 'title' and \"url\".",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}, "limit": {"type": "number"}},
        },
    },
}

ARGS = {
    "city": "北京",
    "days": 3,
    "big": 123456789012345678901234567890,
    "ratio": 0.25,
    "tiny": 1.5e-7,
    "huge": 1e20,
    "metric": True,
    "nothing": None,
    "options": {
        "units": "metric",
        "fields": ["temp", "湿度"],
        "nested": {"deep": [1, {"x": False}]},
    },
    "quote": 'say "hi"\n\\ done',
}


def _call(name: str, arguments: Any, call_id: str = "call_1") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _conversations() -> dict[str, tuple[list[dict[str, Any]], dict[str, Any]]]:
    """name -> (messages, keyword arguments of apply_chat_template)."""
    user = {"role": "user", "content": "What's the weather in Beijing?"}
    calls_as_str = {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            _call("get_weather", json.dumps(ARGS, ensure_ascii=False)),
            _call("search", json.dumps({"query": "北京 天气", "limit": 5}), "call_2"),
        ],
    }
    calls_as_dict = {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [_call("get_weather", ARGS), _call("search", {"query": "x"}, "call_2")],
    }
    results = [
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21, "sky": "晴"}'},
        {"role": "tool", "tool_call_id": "call_2", "content": "Top result: weather.cn"},
    ]
    history = [
        {"role": "user", "content": "First question"},
        {"role": "assistant", "content": "First answer", "reasoning_content": "old thoughts"},
        {"role": "user", "content": "Second question"},
        {"role": "assistant", "content": "Second answer", "reasoning_content": "\nnew thoughts\n"},
    ]
    tools = {"tools": [WEATHER_TOOL, SEARCH_TOOL]}
    return {
        "plain": ([{"role": "user", "content": "hello"}], {}),
        "system": ([{"role": "system", "content": "You are terse."}, user], {}),
        "multi_turn": (
            [
                user,
                {"role": "assistant", "content": "Sunny, 21°C."},
                {"role": "user", "content": "And tomorrow? 😀"},
            ],
            {},
        ),
        "tools": ([{"role": "system", "content": "Use tools."}, user], tools),
        "tool_calls_as_json_strings": ([user, calls_as_str], tools),
        "tool_calls_as_dicts": ([user, calls_as_dict], tools),
        "tool_results_in_a_row": ([user, calls_as_dict, *results], tools),
        "tool_results_then_user": (
            [user, calls_as_dict, *results, {"role": "user", "content": "thanks"}],
            tools,
        ),
        "tool_call_without_content": (
            [user, {"role": "assistant", "content": None, "tool_calls": [_call("search", {})]}],
            {},
        ),
        "tool_result_parts": (
            [
                user,
                calls_as_dict,
                {
                    "role": "tool",
                    "content": [{"output": "42"}, "raw", {"type": "text", "text": "t"}],
                },
            ],
            {},
        ),
        "reasoning_history": (history, {}),
        "reasoning_history_kept": (history, {"clear_thinking": False}),
        "reasoning_after_last_user": (
            [*history[:3], {"role": "assistant", "content": "A", "reasoning_content": "R"}],
            {"add_generation_prompt": False},
        ),
        "inline_think": (
            [
                {"role": "user", "content": "q1"},
                {"role": "assistant", "content": "<think>\nhidden\n</think>\n\nshown"},
                {"role": "user", "content": "q2"},
                {"role": "assistant", "content": "<think>mine</think>visible  "},
            ],
            {},
        ),
        "multipart_content": (
            [
                {
                    "role": "system",
                    "content": [
                        {"type": "text", "text": "Sys A. "},
                        {"type": "text", "text": "Sys B."},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "part 1"},
                        {"type": "image_url", "image_url": {"url": "x"}},
                        {"type": "text", "text": " part 2"},
                    ],
                },
            ],
            {},
        ),
        "thinking_disabled": ([user], {"enable_thinking": False}),
        "no_generation_prompt": (
            [user, {"role": "assistant", "content": "Sunny."}],
            {"add_generation_prompt": False},
        ),
    }


CONVERSATIONS = _conversations()


def _reference_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages as transformers' template needs them: tool-call arguments as dicts."""
    out = copy.deepcopy(messages)
    for message in out:
        for call in message.get("tool_calls") or []:
            function = call.get("function", call)
            if isinstance(function.get("arguments"), str):
                function["arguments"] = json.loads(function["arguments"])
    return out


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_render_matches_transformers(
    name: str, native_tokenizer: Any, hf_tokenizer: PreTrainedTokenizerFast
) -> None:
    messages, kwargs = CONVERSATIONS[name]
    kwargs = dict(kwargs)
    add_generation_prompt = kwargs.pop("add_generation_prompt", True)
    want = hf_tokenizer.apply_chat_template(
        _reference_messages(messages),
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        **kwargs,
    )
    got = native_tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, **kwargs
    )
    assert got == want
    assert got.startswith("[gMASK]<sop>")


def test_tool_call_strings_keep_large_integers_exact(native_tokenizer: Any) -> None:
    messages, kwargs = CONVERSATIONS["tool_calls_as_json_strings"]
    text = native_tokenizer.apply_chat_template(messages, **kwargs)
    assert "<arg_value>123456789012345678901234567890</arg_value>" in text
    assert (
        "<arg_value>1e+20</arg_value><arg_key>metric</arg_key><arg_value>true</arg_value>" in text
    )


def test_generation_prompt_follows_enable_thinking(native_tokenizer: Any) -> None:
    messages = [{"role": "user", "content": "hello"}]
    on = native_tokenizer.apply_chat_template(messages)
    off = native_tokenizer.apply_chat_template(messages, enable_thinking=False)
    assert on == "[gMASK]<sop><|user|>hello<|assistant|><think>"
    assert off == "[gMASK]<sop><|user|>hello<|assistant|></think>"


def test_bad_tool_arguments_raise_value_error(native_tokenizer: Any) -> None:
    messages = [{"role": "assistant", "content": "", "tool_calls": [_call("f", "{not json")]}]
    with pytest.raises(ValueError, match="arguments must be a JSON object"):
        native_tokenizer.apply_chat_template(messages)


def test_messages_must_be_a_list(native_tokenizer: Any) -> None:
    for messages in ({"role": "user", "content": "hi"}, [], ["hi"]):
        with pytest.raises(ValueError, match="messages must be a non-empty list"):
            native_tokenizer.apply_chat_template(messages)


def test_values_json_cannot_hold_raise_value_error(native_tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="not JSON data"):
        native_tokenizer.apply_chat_template([{"role": "user", "content": {1, 2}}])
    with pytest.raises(ValueError, match="not JSON data"):
        native_tokenizer.apply_chat_template([{"role": "user", "content": float("nan")}])


_TEXT = st.lists(
    st.sampled_from([*"ab \n\t'\"\\{}<>/é你😀", "<think>", "</think>", "\n\n", "None", "<|user|>"]),
    max_size=8,
).map("".join)
_ARG_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=6,
)


@st.composite
def _messages(draw: st.DrawFn) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for role in draw(
        st.lists(st.sampled_from(["system", "user", "assistant", "tool"]), min_size=1, max_size=6)
    ):
        message: dict[str, Any] = {"role": role, "content": draw(_TEXT)}
        if role == "assistant" and draw(st.booleans()):
            message["reasoning_content"] = draw(_TEXT)
        if role == "assistant" and draw(st.booleans()):
            args = draw(st.dictionaries(_TEXT, _ARG_VALUES, max_size=3))
            as_text = draw(st.booleans())
            arguments = json.dumps(args, ensure_ascii=False) if as_text else args
            message["tool_calls"] = [_call(draw(_TEXT), arguments)]
        messages.append(message)
    return messages


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    messages=_messages(),
    with_tools=st.booleans(),
    kwargs=st.fixed_dictionaries(
        {},
        optional={
            "enable_thinking": st.booleans(),
            "clear_thinking": st.booleans(),
            "add_generation_prompt": st.booleans(),
        },
    ),
)
def test_random_conversations_match_transformers(
    messages: list[dict[str, Any]],
    with_tools: bool,
    kwargs: dict[str, Any],
    native_tokenizer: Any,
    hf_tokenizer: PreTrainedTokenizerFast,
) -> None:
    kwargs = dict(kwargs)
    add_generation_prompt = kwargs.pop("add_generation_prompt", True)
    tools = [WEATHER_TOOL, SEARCH_TOOL] if with_tools else None
    want = hf_tokenizer.apply_chat_template(
        _reference_messages(messages),
        tools=tools,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        **kwargs,
    )
    got = native_tokenizer.apply_chat_template(
        messages, tools=tools, add_generation_prompt=add_generation_prompt, **kwargs
    )
    assert got == want
