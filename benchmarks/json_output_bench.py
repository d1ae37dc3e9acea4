"""Constrained output against free text on a running server: the same chat prompts at a given
concurrency, under each of `--modes`: `json` (a `response_format` json_schema), `pattern` (a
schema whose strings have `pattern`s), `choice` (vLLM's `guided_choice`), `regex`
(`guided_regex`), `tool` (a forced `tool_choice`) and `free` (`ignore_eos`, a fixed budget).
Reports for each how many answers were valid (a document of the schema, one of the choices, a
whole match, one call of a declared function with valid arguments), their finish reasons,
completion tokens, and the time per output token (a request's latency over its tokens) and the
output tokens per second of the whole run.

    python benchmarks/json_output_bench.py --base-url http://127.0.0.1:8000 \
        --concurrency 1 32 --requests 64 [--modes json pattern choice regex tool free] --json out.json

Standard library only (it runs beside the server on the GPU machine). With dummy weights the
content is random: the point is that every constrained answer parses and fits the schema, and
what the masks cost per token.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 16},
        "temperature_c": {"type": "number"},
        "rain": {"type": "boolean"},
        "days": {"type": "array", "items": {"enum": ["mon", "tue", "wed"]}, "maxItems": 3},
    },
    "required": ["city", "temperature_c", "rain", "days"],
    "additionalProperties": False,
}


def conforms(doc: Any) -> bool:
    return (
        isinstance(doc, dict)
        and set(doc) == set(SCHEMA["properties"])
        and isinstance(doc["city"], str)
        and len(doc["city"]) <= 16
        and isinstance(doc["temperature_c"], int | float)
        and not isinstance(doc["temperature_c"], bool)
        and isinstance(doc["rain"], bool)
        and isinstance(doc["days"], list)
        and len(doc["days"]) <= 3
        and all(d in ("mon", "tue", "wed") for d in doc["days"])
    )


PATTERN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
        "note": {"type": "string", "pattern": "ok", "maxLength": 24},
    },
    "required": ["code", "note"],
    "additionalProperties": False,
}
CHOICES = ["sunny", "rainy", "cloudy with a chance of rain"]
REGEX = r"(sun|rain) at [0-9]{1,2}(am|pm)"


def parses_to(text: str, check: Any) -> bool:
    try:
        return bool(check(json.loads(text)))
    except json.JSONDecodeError:
        return False


def pattern_conforms(doc: Any) -> bool:
    return (
        isinstance(doc, dict)
        and set(doc) == {"code", "note"}
        and re.fullmatch(r"[A-Z]{2}-[0-9]{3}", doc["code"]) is not None
        and "ok" in doc["note"]
        and len(doc["note"]) <= 24
    )


# A forced call's tools: bounded arguments only (a free string would run to the budget with
# dummy weights).
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {"name": "set_alarm", "parameters": {
        "type": "object",
        "properties": {"hour": {"type": "integer", "minimum": 0, "maximum": 23},
                       "day": {"enum": ["mon", "tue", "wed"]}, "loud": {"type": "boolean"}},
        "required": ["hour", "day"]}}},
    {"type": "function", "function": {"name": "stop_alarm",
                                      "parameters": {"type": "object", "properties": {}}}},
]  # fmt: skip


def tool_call_valid(message: dict[str, Any]) -> bool:
    calls = message.get("tool_calls") or []
    if len(calls) != 1:
        return False
    name, args = calls[0]["function"]["name"], json.loads(calls[0]["function"]["arguments"])
    if name == "stop_alarm":
        return args == {}
    return (
        name == "set_alarm" and {"hour", "day"} <= set(args) <= {"hour", "day", "loud"}
        and type(args["hour"]) is int and 0 <= args["hour"] <= 23
        and args["day"] in ("mon", "tue", "wed") and type(args.get("loud", True)) is bool
    )  # fmt: skip


def content(check: Any) -> Any:
    """A check of the answer's message by its content."""
    return lambda message: check(message.get("content") or "")


# mode: (request fields, whether the answer's message is valid)
MODES: dict[str, tuple[dict[str, Any], Any]] = {
    "json": (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA}}},
        content(lambda text: parses_to(text, conforms)),
    ),
    "pattern": (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "code", "schema": PATTERN_SCHEMA}}},
        content(lambda text: parses_to(text, pattern_conforms)),
    ),
    "choice": ({"guided_choice": CHOICES}, content(lambda text: text in CHOICES)),
    "regex": ({"guided_regex": REGEX}, content(lambda text: re.fullmatch(REGEX, text) is not None)),
    "tool": ({"tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False},
             tool_call_valid),
    "free": ({"ignore_eos": True}, content(lambda text: True)),
}  # fmt: skip


def post(url: str, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as resp:
        answer = json.loads(resp.read())
    return answer, time.perf_counter() - start


def run(base: str, concurrency: int, count: int, mode: str, max_tokens: int) -> dict:
    """`count` requests of `mode`, `concurrency` at a time; `max_tokens` each (the free ones
    always that many)."""
    url = f"{base}/v1/chat/completions"
    fields, valid_message = MODES[mode]

    def one(i: int) -> tuple[dict[str, Any], float]:
        body: dict[str, Any] = {
            "model": "m",
            "messages": [{"role": "user", "content": f"Weather report {i} as JSON, please."}],
            "max_tokens": max_tokens,
            "temperature": 1.0,
            "seed": i,
            "chat_template_kwargs": {"enable_thinking": False},
            **fields,
        }
        return post(url, body)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(count)))
    wall = time.perf_counter() - start
    tokens = [a["usage"]["completion_tokens"] for a, _ in results]
    per_token = [1e3 * s / max(1, n) for (_, s), n in zip(results, tokens, strict=True)]
    finishes: dict[str, int] = {}
    valid = 0
    for answer, _ in results:
        choice = answer["choices"][0]
        finishes[choice["finish_reason"]] = finishes.get(choice["finish_reason"], 0) + 1
        valid += bool(valid_message(choice["message"]))
    return {
        "mode": mode,
        "concurrency": concurrency,
        "requests": count,
        "valid": valid,
        "finish_reasons": finishes,
        "completion_tokens_mean": statistics.mean(tokens),
        "ms_per_token_mean": statistics.mean(per_token),
        "ms_per_token_median": statistics.median(per_token),
        "output_tok_s": sum(tokens) / wall,
        "wall_s": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-url", default="http://127.0.0.1:8000")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--requests", type=int, default=16, help="requests per concurrency and mode")
    ap.add_argument("--max-tokens", type=int, default=512, help="budget of a JSON answer")
    ap.add_argument("--free-tokens", type=int, default=128, help="length of a free answer")
    ap.add_argument("--modes", nargs="+", choices=list(MODES), default=["json", "free"])
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    rows = []
    for conc in args.concurrency:
        count = max(args.requests, conc)
        for mode in args.modes:
            budget = args.free_tokens if mode == "free" else args.max_tokens
            row = run(args.base_url, conc, count, mode, budget)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
