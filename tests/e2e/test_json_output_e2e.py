"""JSON output (`response_format`, `guided_json`) through the real router and worker on the tiny
model, with the `openai` client: whatever the random weights prefer, the answer is a document of
the schema, streamed or not."""

from __future__ import annotations

import json
import re
from typing import Any

import openai
import pytest
import requests

import glm47

from .conftest import Server

pytestmark = pytest.mark.e2e

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 10},
        "rain": {"type": "boolean"},
        "days": {"type": "array", "items": {"enum": ["mon", "tue"]}, "maxItems": 2},
    },
    "required": ["city", "rain", "days"],
    "additionalProperties": False,
}
NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_base, api_key="unused", max_retries=0)


def conforms(doc: Any) -> bool:
    return (
        isinstance(doc, dict)
        and set(doc) == {"city", "rain", "days"}
        and isinstance(doc["city"], str)
        and len(doc["city"]) <= 10
        and isinstance(doc["rain"], bool)
        and isinstance(doc["days"], list)
        and len(doc["days"]) <= 2
        and all(d in ("mon", "tue") for d in doc["days"])
    )


def schema_format() -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA}}


def test_chat_answers_follow_the_schema_streamed_or_not(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "What is the weather? Answer in JSON."}]
    whole = client.chat.completions.create(
        model="m", messages=messages, max_tokens=600, temperature=1.0, seed=3, n=2,
        response_format=schema_format(), extra_body=NO_THINKING,  # type: ignore[arg-type]
    )  # fmt: skip
    for choice in whole.choices:
        assert choice.finish_reason == "stop", choice
        assert conforms(json.loads(choice.message.content or "")), choice.message.content
    stream = client.chat.completions.create(
        model="m", messages=messages, max_tokens=600, temperature=1.0, seed=4, stream=True,
        response_format=schema_format(), extra_body=NO_THINKING,  # type: ignore[arg-type]
    )  # fmt: skip
    text, finish = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    assert finish == "stop"
    assert conforms(json.loads(text)), text


def test_completions_take_guided_json_as_vllm_does(client: openai.OpenAI) -> None:
    out = client.completions.create(
        model="m", prompt="weather as JSON:", max_tokens=600, temperature=1.0, seed=5,
        extra_body={"guided_json": SCHEMA},
    )  # fmt: skip
    assert out.choices[0].finish_reason == "stop"
    assert conforms(json.loads(out.choices[0].text)), out.choices[0].text


def seeded_answers(client: openai.OpenAI, prompt: str, extra: dict[str, Any]) -> list[str]:
    """Three sampled completions under `extra`'s constraint, each ended by it (finish stop)."""
    texts = []
    for seed in range(3):
        out = client.completions.create(
            model="m", prompt=prompt, max_tokens=50, temperature=1.0, seed=seed, extra_body=extra
        )
        assert out.choices[0].finish_reason == "stop"
        texts.append(out.choices[0].text)
    return texts


def test_vllm_json_options_give_compact_closed_objects(client: openai.OpenAI) -> None:
    """`structured_outputs` with `disable_any_whitespace` (no whitespace between tokens) and
    `disable_additional_properties` (objects closed unless their schema says)."""
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    extra = {"structured_outputs": {"json": schema, "disable_any_whitespace": True,
                                    "disable_additional_properties": True}}  # fmt: skip
    for text in seeded_answers(client, "A number as JSON:", extra):
        doc = json.loads(text)
        assert set(doc) == {"n"} and isinstance(doc["n"], int), text
        assert text == json.dumps(doc, separators=(",", ":")), text


def test_guided_choice_answers_one_of_its_strings(client: openai.OpenAI) -> None:
    choices = ["sunny", "rainy", "rain"]
    for text in seeded_answers(client, "The weather tomorrow:", {"guided_choice": choices}):
        assert text in choices, text
    # masked alternatives in the top logprobs read -9999, as vLLM writes them (not null)
    scored = client.completions.create(
        model="m", prompt="The weather tomorrow:", max_tokens=50, temperature=0, logprobs=5,
        extra_body={"guided_choice": choices},
    )  # fmt: skip
    tops = scored.choices[0].logprobs.top_logprobs
    assert tops and all(isinstance(v, float) for top in tops for v in top.values()), tops
    assert any(v == -9999.0 for top in tops for v in top.values()), tops
    chat = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Weather?"}], max_tokens=50,
        temperature=1.0, extra_body={"structured_outputs": {"choice": choices}, **NO_THINKING},
    )  # fmt: skip
    assert chat.choices[0].message.content in choices


def test_guided_regex_answers_match_it_whole(client: openai.OpenAI) -> None:
    pattern = r"(sun|rain) at [0-9]{1,2}(am|pm)"
    whole = re.compile(pattern)
    for text in seeded_answers(client, "Forecast:", {"guided_regex": pattern}):
        assert whole.fullmatch(text), text


def test_guided_grammar_answers_are_sentences_of_it(client: openai.OpenAI) -> None:
    """vLLM's `guided_grammar` and SGLang's `ebnf`: an EBNF grammar (rules, alternatives, a
    class, bounded and optional repetition) holds in every answer."""
    grammar = (
        'root ::= forecast ("; " forecast)?\n'
        'forecast ::= ("sun" | "rain") " at " [1-9] [0-9]? ("am" | "pm")  # one forecast\n'
    )
    one = r"(sun|rain) at [1-9][0-9]?(am|pm)"
    sentence = re.compile(f"{one}(; {one})?")
    for text in seeded_answers(client, "Forecast:", {"guided_grammar": grammar}):
        assert sentence.fullmatch(text), text
    chat = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Forecast?"}], max_tokens=50,
        temperature=1.0, seed=3, extra_body={"ebnf": grammar, **NO_THINKING},
    )  # fmt: skip
    assert chat.choices[0].finish_reason == "stop"
    assert sentence.fullmatch(chat.choices[0].message.content or ""), chat
    # the same language in Lark's notation, left-recursive as LR grammars are written
    lark = (
        "start: forecasts\n"
        'forecasts: forecast | forecasts "; " forecast\n'
        'forecast: ("sun" | "rain") " at " HOUR /[ap]m/\n'
        "HOUR: /[1-9][0-9]?/\n"
    )
    many = re.compile(f"{one}(; {one})*")
    for text in seeded_answers(client, "Forecast:", {"guided_grammar": lark}):
        assert many.fullmatch(text), text


def test_structural_tags_hold_in_every_answer(client: openai.OpenAI) -> None:
    """`response_format` `structural_tag`: a forced tag (`at_least_one`, `stop_after_first`) is
    the whole answer, its content a document of the schema; with free text around structures
    (the first form, as SGLang's `structural_tag` field), every trigger opens one."""
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}},
              "required": ["city"], "additionalProperties": False}  # fmt: skip
    tag = {"begin": "<f=weather>", "content": {"type": "json_schema", "json_schema": schema},
           "end": "</f>"}  # fmt: skip
    forced = {"type": "structural_tag", "format": {
        "type": "triggered_tags", "triggers": ["<f="], "tags": [tag], "at_least_one": True,
        "stop_after_first": True}}  # fmt: skip
    out = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Weather in a city?"}], max_tokens=200,
        temperature=1.0, seed=5, n=2, response_format=forced, extra_body=NO_THINKING,  # type: ignore[arg-type]
    )  # fmt: skip
    for choice in out.choices:
        assert choice.finish_reason == "stop", choice
        call = re.fullmatch(r"<f=weather>(.*)</f>", choice.message.content or "", re.S)
        assert call, choice.message.content
        doc = json.loads(call[1])
        assert set(doc) == {"city"} and len(doc["city"]) <= 8, doc
    legacy = {"triggers": ["<f="], "structures": [
        {"begin": "<f=weather>", "schema": schema, "end": "</f>"}]}  # fmt: skip
    for seed in range(3):
        text = client.completions.create(
            model="m", prompt="Call:", max_tokens=60, temperature=1.0, seed=seed,
            extra_body={"structural_tag": json.dumps(legacy)},
        ).choices[0].text  # fmt: skip
        parts = text.split("<f=")[1:]  # what follows each trigger
        for i, part in enumerate(parts):
            call = re.match(r"weather>(\{.*?\})</f>", part, re.S)
            if call is None and i == len(parts) - 1:  # cut short by max_tokens
                assert part[:9] == "weather>{"[: len(part)], text
                continue
            assert call, text
            assert set(json.loads(call[1])) == {"city"}, text


def test_schema_patterns_and_numeric_bounds_hold_in_every_answer(client: openai.OpenAI) -> None:
    """`pattern`, anchored or found anywhere in the string, with length bounds beside it; an
    integer and a number within their bounds; a number with at most two fraction digits."""
    schema = {
        "type": "object",
        "properties": {
            "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
            "note": {"type": "string", "pattern": "ok", "minLength": 4, "maxLength": 8},
            "n": {"type": "integer", "minimum": -5, "exclusiveMaximum": 40},
            "p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "price": {"type": "number", "exclusiveMinimum": 0, "multipleOf": 0.01},
        },
        "required": ["code", "note", "n", "p", "price"],
        "additionalProperties": False,
    }
    out = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "A code and a note, in JSON."}],
        max_tokens=400, temperature=1.0, seed=8, n=3, extra_body=NO_THINKING,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},  # type: ignore[typeddict-item]
    )  # fmt: skip
    for choice in out.choices:
        assert choice.finish_reason == "stop", choice
        doc = json.loads(choice.message.content or "")
        assert set(doc) == {"code", "note", "n", "p", "price"}, doc
        assert isinstance(doc["n"], int) and -5 <= doc["n"] < 40, doc
        assert 0 < doc["p"] <= 1, doc
        assert re.fullmatch(r"[A-Z]{2}-[0-9]{3}", doc["code"]), doc
        assert "ok" in doc["note"] and 4 <= len(doc["note"]) <= 8, doc
        price = re.search(r"\"price\"\s*:\s*([-0-9.]+)", choice.message.content or "")
        assert price and re.fullmatch(r"[0-9]+(\.[0-9]{1,2})?", price[1]), doc
        assert doc["price"] > 0, doc


def test_the_grammar_starts_after_the_reasoning(client: openai.OpenAI, server: Server) -> None:
    """Thinking on: the prompt ends inside `<think>`; reasoning is free text and the answer after
    `</think>` is the document (here `</think>` is made the first token by a logit bias)."""
    close = glm47.Tokenizer(str(server.model_dir)).encode("</think>")
    assert len(close) == 1
    out = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "weather?"}], max_tokens=600,
        temperature=1.0, seed=6, logit_bias={str(close[0]): 100},
        response_format=schema_format(),  # type: ignore[arg-type]
    )  # fmt: skip
    message = out.choices[0].message
    assert out.choices[0].finish_reason == "stop"
    assert not getattr(message, "reasoning_content", None)
    assert conforms(json.loads(message.content or "")), message.content


def test_unenforceable_schemas_and_other_constraints_are_refused(server: Server) -> None:
    url = f"{server.openai_base}/chat/completions"
    base = {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 4}
    cases = [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {
            "type": "string", "pattern": "^a$", "minLength": 2}}}},
         "response_format.json_schema.schema"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {
            "type": "number", "multipleOf": 0.5}}}}, "response_format.json_schema.schema"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "n"}}},
         "response_format.json_schema.schema"),
        ({"guided_regex": "a("}, "guided_regex"),
        ({"guided_grammar": "root ::= x"}, "guided_grammar"),
        ({"ebnf": "root ::= root \"a\""}, "ebnf"),
        ({"structural_tag": {"structures": []}}, "structural_tag"),
        ({"response_format": {"type": "structural_tag", "triggers": ["<a"], "structures": [
            {"begin": "<b>", "schema": {}, "end": ""}]}}, "response_format"),
        ({"response_format": {"type": "json_object"}, "guided_json": {"type": "object"}},
         "guided_json"),
    ]  # fmt: skip
    for extra, param in cases:
        r = requests.post(url, json={**base, **extra}, timeout=30)
        assert r.status_code == 400, (extra, r.text)
        assert r.json()["error"]["param"] == param, r.text
