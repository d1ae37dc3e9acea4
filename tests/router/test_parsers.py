"""Python bindings of the streaming parsers: dict events, and streamed output equal to parse()."""

from __future__ import annotations

import json
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glm47 import _native

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer"},
                    "zip": {"type": ["string", "null"]},
                    "opts": {"type": "object"},
                },
            },
        },
    },
    {"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}},
]

TOOL_TEXTS = [
    'Checking.<tool_call>get_weather<arg_key>city</arg_key><arg_value>São "P" \\ 東京 🌧 a<b\n'
    "</arg_value><arg_key>days</arg_key><arg_value>12345678901234567890123</arg_value>"
    "</tool_call> x < y <tool_call>noop</tool_call><tool_call>noop\n</tool_call>",
    "<tool_call>get_weather\n<arg_key>zip</arg_key>\n<arg_value>00123</arg_value>\n"
    '<arg_key>opts</arg_key>\n<arg_value>{"a": [true, null]}</arg_value>\n</tool_call>',
    "<tool_call>unknown<arg_key>k</arg_key><arg_value>v</arg_value></tool_call> and "
    "<tool_call>get_weather<arg_key>city</arg_key><arg_value>cut off 😀",
]

REASONING_TEXTS = [
    "weigh x < y <tool_call>f</tool_call></think>answer <think>again</think>done",
    "</thi</think><think>",
]


def accumulate(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Folds streamed events like a client would, checking ids and names come once per call."""
    content = ""
    calls: list[dict[str, str]] = []
    for event in events:
        if "content" in event:
            content += event["content"]
            continue
        call = event["tool_call"]
        if call["name"] is not None:
            assert call["index"] == len(calls)
            assert call["id"].startswith("call_") and len(call["id"]) == 29
            calls.append({"name": call["name"], "arguments": ""})
        else:
            assert call["id"] is None and call["index"] < len(calls)
        calls[call["index"]]["arguments"] += call["arguments"] or ""
    return {"content": content, "tool_calls": calls}


def stream_tools(chunks: list[str]) -> dict[str, Any]:
    parser = _native.Glm47ToolParser(TOOLS)
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    return accumulate(events + parser.finish())


def stream_reasoning(in_reasoning: bool, chunks: list[str]) -> dict[str, str]:
    parser = _native.Glm45ReasoningParser(in_reasoning)
    out = {"reasoning_content": "", "content": ""}
    for delta in [parser.feed(chunk) for chunk in chunks] + [parser.finish()]:
        for key in out:
            out[key] += delta[key]
    return out


def split(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted(set(cuts)), len(text)]
    return [text[a:b] for a, b in pairwise(bounds)]


def test_feed_returns_a_header_as_soon_as_the_name_is_complete_then_fragments() -> None:
    parser = _native.Glm47ToolParser(TOOLS, id_seed=5)
    assert parser.feed("Hi <tool_call>get_wea") == [{"content": "Hi "}]
    [header] = parser.feed("ther<arg_key>")
    assert header["tool_call"]["index"] == 0
    assert header["tool_call"]["name"] == "get_weather"
    assert header["tool_call"]["arguments"] is None
    parser.feed("city</arg_key>")
    assert parser.feed("<arg_value>Lyo") == [
        {"tool_call": {"index": 0, "id": None, "name": None, "arguments": '{"city": "Lyo'}}
    ]
    assert parser.feed("n</arg_value></tool_call>") == [
        {"tool_call": {"index": 0, "id": None, "name": None, "arguments": 'n"}'}}
    ]
    assert parser.finish() == []


def test_parse_types_values_by_the_schema() -> None:
    parsed = _native.Glm47ToolParser(TOOLS).parse(TOOL_TEXTS[1])
    assert parsed["content"] == ""
    [call] = parsed["tool_calls"]
    assert call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"zip": "00123", "opts": {"a": [True, None]}}


def test_large_integers_and_zero_argument_calls_survive_the_round_trip() -> None:
    parsed = _native.Glm47ToolParser(TOOLS).parse(TOOL_TEXTS[0])
    assert parsed["content"] == "Checking. x < y "
    assert [c["name"] for c in parsed["tool_calls"]] == ["get_weather", "noop", "noop"]
    assert '"days": 12345678901234567890123' in parsed["tool_calls"][0]["arguments"]
    assert json.loads(parsed["tool_calls"][0]["arguments"])["days"] == 12345678901234567890123
    assert parsed["tool_calls"][1]["arguments"] == "{}"


def test_unknown_functions_are_content_and_cut_off_calls_are_closed() -> None:
    parsed = _native.Glm47ToolParser(TOOLS).parse(TOOL_TEXTS[2])
    assert parsed["content"].startswith("<tool_call>unknown<arg_key>k</arg_key>")
    assert parsed["content"].endswith("</tool_call> and ")
    assert json.loads(parsed["tool_calls"][0]["arguments"]) == {"city": "cut off 😀"}


def test_a_prompt_prefix_is_parsed_but_not_emitted() -> None:
    parser = _native.Glm47ToolParser(TOOLS, prefix="<tool_call>get_weather")
    body = "<arg_key>days</arg_key><arg_value>2</arg_value></tool_call>"
    assert parser.parse(body) == {
        "content": "",
        "tool_calls": [{"name": "get_weather", "arguments": '{"days": 2}'}],
    }
    assert accumulate(parser.feed(body) + parser.finish()) == parser.parse(body)


def test_without_tools_every_call_is_content() -> None:
    text = "<tool_call>noop</tool_call>"
    assert _native.Glm47ToolParser(None).parse(text) == {"content": text, "tool_calls": []}


def test_tools_that_are_not_a_list_are_rejected() -> None:
    with pytest.raises(ValueError, match="list"):
        _native.Glm47ToolParser({"name": "noop"})
    with pytest.raises(TypeError):
        _native.Glm47ToolParser([object()])


def test_reasoning_parser_splits_reasoning_from_content() -> None:
    parser = _native.Glm45ReasoningParser(True)
    assert parser.feed("idea</th") == {"reasoning_content": "idea", "content": ""}
    assert parser.feed("ink>answer") == {"reasoning_content": "", "content": "answer"}
    assert parser.finish() == {"reasoning_content": "", "content": ""}
    outside = _native.Glm45ReasoningParser(False)
    # After reasoning, the answer is passed on verbatim: nothing is held back any more.
    assert outside.feed("<think>r</think>c <") == {"reasoning_content": "r", "content": "c <"}
    assert outside.finish() == {"reasoning_content": "", "content": ""}
    assert outside.feed("<think>x") == {"reasoning_content": "", "content": "<think>x"}
    undecided = _native.Glm45ReasoningParser(False)
    assert undecided.feed(" <thi") == {"reasoning_content": "", "content": " "}
    assert undecided.finish() == {"reasoning_content": "", "content": "<thi"}


@settings(max_examples=150, deadline=None)
@given(which=st.integers(0, len(TOOL_TEXTS) - 1), data=st.data())
def test_any_split_of_tool_output_streams_to_the_parse_result(which: int, data: Any) -> None:
    text = TOOL_TEXTS[which]
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=40))
    assert stream_tools(split(text, cuts)) == _native.Glm47ToolParser(TOOLS).parse(text)


@settings(max_examples=150, deadline=None)
@given(which=st.integers(0, len(REASONING_TEXTS) - 1), inside=st.booleans(), data=st.data())
def test_any_split_of_reasoning_output_streams_to_the_whole_result(
    which: int, inside: bool, data: Any
) -> None:
    text = REASONING_TEXTS[which]
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=20))
    assert stream_reasoning(inside, split(text, cuts)) == stream_reasoning(inside, [text])
