"""`POST /v1/responses` with the `openai` client's Responses API: a scripted worker's text as
reasoning, message and function-call items, streamed or not, in the background or not; a
multi-turn input with calls and their outputs; the real tiny model under a forced call; what is
refused."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from .conftest import WEATHER_CALL_TEXT, Server, scripted_router

pytestmark = pytest.mark.e2e


def test_a_background_response_is_polled_and_one_is_cancelled(server: Server) -> None:
    client = openai.OpenAI(base_url=server.openai_base, api_key="unused", max_retries=0)
    started = client.responses.create(
        model="m", input="Hello there", max_output_tokens=6, background=True, temperature=0
    )
    assert started.status == "in_progress" and started.background is True
    deadline = time.monotonic() + 60
    polled = client.responses.retrieve(started.id)
    while polled.status == "in_progress" and time.monotonic() < deadline:
        time.sleep(0.05)
        polled = client.responses.retrieve(started.id)
    plain = client.responses.create(model="m", input="Hello there", max_output_tokens=6,
                                    temperature=0)  # fmt: skip
    assert polled.status in ("completed", "incomplete"), polled.status
    assert polled.output_text == plain.output_text  # the same greedy answer
    long = client.responses.create(
        model="m", input="Tell a story", max_output_tokens=3000, background=True,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    cancelled = client.responses.cancel(long.id)
    assert cancelled.status == "cancelled", cancelled.status
    assert client.responses.retrieve(long.id).status == "cancelled"


TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    }
]


@pytest.fixture(scope="module")
def scripted(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with scripted_router(
        tiny_model_dir, tmp_path_factory.mktemp("responses"), WEATHER_CALL_TEXT
    ) as base:
        yield base


def _client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)


def test_the_output_is_reasoning_then_a_message_then_the_call(scripted: str) -> None:
    resp = _client(scripted).responses.create(
        model="m",
        input="Weather in Paris?",
        tools=TOOLS,
        instructions="Be brief.",  # type: ignore[arg-type]
    )
    assert resp.status == "completed" and resp.object == "response"
    kinds = [item.type for item in resp.output]
    assert kinds == ["reasoning", "message", "function_call"], resp.output
    reasoning, _, call = resp.output
    assert reasoning.content[0].text == "The user wants weather."  # type: ignore[union-attr,index]
    assert resp.output_text == "Let me check.\n"
    assert call.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.arguments) == {"city": "Paris", "days": 3}  # type: ignore[union-attr]
    assert call.call_id.startswith("call_")  # type: ignore[union-attr]
    usage = resp.usage
    assert usage is not None and usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert 0 < usage.output_tokens_details.reasoning_tokens < usage.output_tokens
    assert resp.instructions == "Be brief."


def test_the_stream_tells_each_item_and_ends_with_the_whole_response(scripted: str) -> None:
    events = list(
        _client(scripted).responses.create(
            model="m",
            input="Weather in Paris?",
            tools=TOOLS,
            stream=True,  # type: ignore[arg-type]
        )
    )
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    added = [e.item.type for e in events if e.type == "response.output_item.added"]  # type: ignore[union-attr]
    done = [e.item.type for e in events if e.type == "response.output_item.done"]  # type: ignore[union-attr]
    assert added == done == ["reasoning", "message", "function_call"]
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    thought = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")  # type: ignore[union-attr]
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")  # type: ignore[union-attr]
    final = events[-1].response  # type: ignore[union-attr]
    assert final.status == "completed"
    assert text == final.output_text == "Let me check.\n"
    assert thought == "The user wants weather."
    assert json.loads(args) == json.loads(final.output[2].arguments) == {"city": "Paris", "days": 3}
    # the reasoning and the message each open and close their one content part
    parts = [(e.type, e.output_index, e.part.type) for e in events if "content_part" in e.type]  # type: ignore[union-attr]
    assert parts == [
        ("response.content_part.added", 0, "reasoning_text"),
        ("response.content_part.done", 0, "reasoning_text"),
        ("response.content_part.added", 1, "output_text"),
        ("response.content_part.done", 1, "output_text"),
    ]
    # every item's events come between its added and done, in output order
    order = [e.output_index for e in events if hasattr(e, "output_index")]  # type: ignore[union-attr]
    assert order == sorted(order)


def test_a_background_stream_is_left_and_picked_up_again(scripted: str) -> None:
    client = _client(scripted)
    stream: Any = client.responses.create(
        model="m", input="Weather in Paris?", tools=TOOLS, background=True, stream=True,  # type: ignore[arg-type]
    )  # fmt: skip
    head: list[Any] = []
    for event in stream:
        head.append(event)
        if len(head) == 3:
            break
    stream.close()  # leaving stops nothing: the response runs on
    assert [e.type for e in head[:2]] == ["response.created", "response.in_progress"]
    first = head[0].response
    assert first.background is True and first.status == "in_progress"
    after = head[-1].sequence_number
    events: list[Any] = head + list(
        client.responses.retrieve(first.id, stream=True, starting_after=after)
    )
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed"
    whole: list[Any] = list(client.responses.retrieve(first.id, stream=True))
    assert [e.model_dump() for e in whole] == [e.model_dump() for e in events]
    final = events[-1].response
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    stored = client.responses.retrieve(first.id)
    assert text == final.output_text == stored.output_text == "Let me check.\n"
    assert [i.type for i in stored.output] == ["reasoning", "message", "function_call"]
    # a response made otherwise keeps no events to stream
    plain = client.responses.create(model="m", input="hi", max_output_tokens=2)
    with pytest.raises(openai.BadRequestError):
        list(client.responses.retrieve(plain.id, stream=True))


def test_a_conversation_with_calls_and_their_outputs_is_taken(server: Server) -> None:
    client = openai.OpenAI(base_url=server.openai_base, api_key="unused", max_retries=0)
    turns: list[Any] = [
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "reasoning", "id": "rs_1", "summary": [],
         "content": [{"type": "reasoning_text", "text": "Call the tool."}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny, 21 C"},
        {"role": "user", "content": [{"type": "input_text", "text": "And tomorrow?"}]},
    ]  # fmt: skip
    resp = client.responses.create(model="m", tools=TOOLS, input=turns, max_output_tokens=4)  # type: ignore[arg-type]
    short = client.responses.create(model="m", tools=TOOLS, input=turns[:1], max_output_tokens=4)  # type: ignore[arg-type]
    assert resp.usage is not None and short.usage is not None
    assert resp.usage.input_tokens > short.usage.input_tokens + 10  # the whole conversation


def test_a_forced_call_on_the_tiny_model_follows_the_schema(server: Server) -> None:
    client = openai.OpenAI(base_url=server.openai_base, api_key="unused", max_retries=0)
    resp = client.responses.create(
        model="m", input="Weather?", tools=TOOLS, max_output_tokens=200, temperature=1.0,  # type: ignore[arg-type]
        tool_choice={"type": "function", "name": "get_weather"},
        reasoning={"effort": "none"},
    )  # fmt: skip
    calls = [item for item in resp.output if item.type == "function_call"]
    assert calls and all(c.name == "get_weather" for c in calls), resp.output
    for c in calls:
        args = json.loads(c.arguments)
        assert isinstance(args.get("city"), str), args
    assert not [item for item in resp.output if item.type == "reasoning"]
    short = client.responses.create(model="m", input="Tell me a story.", max_output_tokens=3)
    assert short.status == "incomplete"
    assert short.incomplete_details is not None
    assert short.incomplete_details.reason == "max_output_tokens"


def test_stored_responses_are_continued_retrieved_and_deleted(server: Server) -> None:
    client = openai.OpenAI(base_url=server.openai_base, api_key="unused", max_retries=0)
    first = client.responses.create(model="m", input="Hello there", max_output_tokens=4)
    assert first.store is True
    again = client.responses.retrieve(first.id)
    assert again.id == first.id and again.output_text == first.output_text
    second = client.responses.create(
        model="m", input="And more?", previous_response_id=first.id, max_output_tokens=4
    )
    assert second.previous_response_id == first.id
    assert first.usage is not None and second.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens  # the first turn came first
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    # a streamed response is stored once it completes
    events = list(client.responses.create(model="m", input="hi", max_output_tokens=3, stream=True))
    done = events[-1].response  # type: ignore[union-attr]
    assert client.responses.retrieve(done.id).output_text == done.output_text
    unkept = client.responses.create(model="m", input="hi", max_output_tokens=2, store=False)
    assert unkept.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unkept.id)


def test_input_items_are_the_requests_own_a_page_at_a_time(server: Server) -> None:
    client = openai.OpenAI(base_url=server.openai_base, api_key="unused", max_retries=0)
    first = client.responses.create(model="m", input="Hello there", max_output_tokens=4)
    turns: list[Any] = [
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny, 21 C"},
        {"type": "message", "id": "msg_mine", "role": "user",
         "content": [{"type": "input_text", "text": "And tomorrow?"}]},
    ]  # fmt: skip
    second = client.responses.create(
        model="m", tools=TOOLS, input=turns, previous_response_id=first.id, max_output_tokens=4,  # type: ignore[arg-type]
    )  # fmt: skip
    # the client follows `has_more` and `after` through both pages
    listed = client.responses.input_items.list(second.id, order="asc", limit=3)
    items = [item.model_dump(exclude_none=True) for item in listed]
    assert [i["type"] for i in items] == ["message", "function_call", "function_call_output",
                                          "message"]  # fmt: skip
    assert items[0]["content"] == [{"type": "input_text", "text": "Weather in Paris?"}]
    assert items[0]["status"] == "completed" and items[0]["role"] == "user"
    assert items[1]["call_id"] == "call_1" and items[2]["output"] == "sunny, 21 C"
    assert items[3]["id"] == "msg_mine"
    ids = [i["id"] for i in items]
    assert len(set(ids)) == 4
    newest = client.responses.input_items.list(
        second.id, limit=3, include=["message.input_image.image_url"]
    )
    assert newest.has_more is True
    assert [i.id for i in newest.data] == ids[::-1][:3]  # newest first, the same ids again
    (own,) = [i.model_dump(exclude_none=True) for i in client.responses.input_items.list(first.id)]
    assert own["content"] == [{"type": "input_text", "text": "Hello there"}]
    with pytest.raises(openai.BadRequestError):
        client.responses.input_items.list(second.id, limit=101)
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list("resp_unknown")


def test_logprobs_of_the_answer_text_come_with_it(server: Server) -> None:
    client = openai.OpenAI(base_url=server.openai_base, api_key="unused", max_retries=0)
    ask: dict[str, Any] = {"model": "m", "input": "Hi", "max_output_tokens": 6, "top_logprobs": 2,
                           "include": ["message.output_text.logprobs"],
                           "reasoning": {"effort": "minimal"}, "temperature": 0}  # fmt: skip
    resp = client.responses.create(**ask)
    (message,) = [item for item in resp.output if item.type == "message"]
    part = message.content[0]  # type: ignore[union-attr]
    assert part.logprobs and all(len(lp.top_logprobs) == 2 for lp in part.logprobs)  # type: ignore[union-attr]
    assert all(lp.bytes is not None for lp in part.logprobs)  # type: ignore[union-attr]
    events = list(client.responses.create(**ask, stream=True))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert sum(len(e.logprobs) for e in deltas) == len(part.logprobs)  # type: ignore[union-attr]


def test_what_is_not_kept_or_offered_is_refused(server: Server) -> None:
    url = f"{server.base_url}/v1/responses"
    cases = [
        ({"input": "hi", "previous_response_id": "resp_1"}, "previous_response_id"),
        ({"input": 5, "previous_response_id": "resp_1"}, "input"),
        ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": [{"type": "input_image", "image_url": "x"}]}, "input[0]"),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "input[0].content"),
        ({"input": []}, "input"),
        ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "hi", "text": {"format": {"type": "yaml"}}}, "text.format"),
    ]
    for body, param in cases:
        r = requests.post(url, json={"model": "m", **body}, timeout=30)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["param"] == param, r.text
