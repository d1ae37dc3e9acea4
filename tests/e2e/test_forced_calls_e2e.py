"""A forced `tool_choice` through the real router and worker on the tiny model (random weights),
with the `openai` client: the call follows the declared functions and their parameters' schemas
whatever the weights prefer (the worker's tool-call grammar), streamed or not."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from .conftest import Server

pytestmark = pytest.mark.e2e

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "set_alarm",
            "parameters": {
                "type": "object",
                "properties": {
                    "hour": {"type": "integer", "minimum": 5, "maximum": 9},
                    "loud": {"type": "boolean"},
                    "day": {"type": "string", "enum": ["mon", "tue"]},
                },
                "required": ["hour", "day"],
            },
        },
    },
    {
        "type": "function",
        "function": {"name": "stop_alarm", "parameters": {"type": "object", "properties": {}}},
    },
]
MESSAGES = [{"role": "user", "content": "Wake me up at seven on Monday."}]
NAMED = {"type": "function", "function": {"name": "set_alarm"}}


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_base, api_key="unused", max_retries=0)


def valid(name: str, args: dict[str, Any]) -> bool:
    if name == "stop_alarm":
        return args == {}
    return (
        name == "set_alarm"
        and set(args) <= {"hour", "loud", "day"}
        and {"hour", "day"} <= set(args)
        and type(args["hour"]) is int
        and 5 <= args["hour"] <= 9
        and args["day"] in ("mon", "tue")
        and type(args.get("loud", False)) is bool
    )


def _calls(tool_calls: Any) -> list[tuple[str, Any]]:
    return [(t.function.name, json.loads(t.function.arguments)) for t in tool_calls or []]


def calls_of(client: openai.OpenAI, stream: bool, **extra: Any) -> list[tuple[str, list]]:
    """Per choice: its finish reason and its calls as (name, arguments)."""
    if not stream:
        resp = client.chat.completions.create(
            model="m", messages=MESSAGES, tools=TOOLS, max_tokens=300, temperature=1.0, **extra
        )  # type: ignore[call-overload]
        return [(c.finish_reason, _calls(c.message.tool_calls)) for c in resp.choices]
    chunks = client.chat.completions.create(
        model="m", messages=MESSAGES, tools=TOOLS, max_tokens=300, temperature=1.0, stream=True,
        **extra,
    )  # type: ignore[call-overload]  # fmt: skip
    finish: dict[int, str] = {}
    parts: dict[int, dict[int, list[str]]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            finish[choice.index] = choice.finish_reason or finish.get(choice.index, "")
            for tc in choice.delta.tool_calls or []:
                entry = parts.setdefault(choice.index, {}).setdefault(tc.index, ["", ""])
                entry[0] += (tc.function and tc.function.name) or ""
                entry[1] += (tc.function and tc.function.arguments) or ""
    return [
        (finish[i], [(n, json.loads(a)) for _, (n, a) in sorted(parts.get(i, {}).items())])
        for i in sorted(finish)
    ]


@pytest.mark.parametrize("stream", [False, True])
def test_required_calls_follow_the_schemas(client: openai.OpenAI, stream: bool) -> None:
    for seed in (1, 2):
        answers = calls_of(
            client, stream, tool_choice="required", parallel_tool_calls=False, n=2, seed=seed
        )
        assert len(answers) == 2
        for finish, calls in answers:
            assert finish == "tool_calls", answers
            assert len(calls) == 1 and valid(*calls[0]), calls


@pytest.mark.parametrize("stream", [False, True])
def test_a_named_function_is_called_once_with_valid_arguments(
    client: openai.OpenAI, stream: bool
) -> None:
    for seed in (3, 4):
        [(finish, calls)] = calls_of(client, stream, tool_choice=NAMED, seed=seed)
        assert finish == "tool_calls"
        assert len(calls) == 1 and calls[0][0] == "set_alarm" and valid(*calls[0]), calls


def test_parallel_required_calls_are_each_valid(client: openai.OpenAI) -> None:
    [(_, calls)] = calls_of(client, False, tool_choice="required", seed=5)
    assert calls and all(valid(name, args) for name, args in calls), calls


def test_tools_the_grammar_cannot_follow_are_a_400_on_tools(client: openai.OpenAI) -> None:
    odd = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a<b": {"type": "string"}}}}}]  # fmt: skip
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="m", messages=MESSAGES, tools=odd, tool_choice="required"
        )  # type: ignore[call-overload]
    assert err.value.body["param"] == "tools"  # type: ignore[index]


def test_auto_calls_of_a_strict_function_follow_its_schema(
    client: openai.OpenAI, server: Server
) -> None:
    """`tool_choice` auto with `"strict": true`: once the model opens a call (here pushed to with
    `logit_bias`), the call follows the declared functions and the strict one's schema."""
    from glm47 import _native

    [open_id] = _native.Tokenizer(str(server.model_dir)).encode("<tool_call>")
    strict = [{**t, "function": {**t["function"], "strict": True}} for t in TOOLS]
    for seed in (6, 7, 8):
        resp = client.chat.completions.create(
            model="m", messages=MESSAGES, tools=strict, max_tokens=300, temperature=1.0,
            seed=seed, logit_bias={str(open_id): 100}, parallel_tool_calls=False,
            extra_body={"chat_template_kwargs": {"enable_thinking": False}},
        )  # type: ignore[call-overload]  # fmt: skip
        choice = resp.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        calls = _calls(choice.message.tool_calls)
        assert len(calls) == 1 and valid(*calls[0]), calls
