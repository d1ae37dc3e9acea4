"""JSON output against free text on a running server: the same chat prompts at a given
concurrency, once with a `response_format` json_schema and once free (`ignore_eos`, a fixed
budget). Reports for each how many answers were documents of the schema, their finish reasons,
completion tokens, and the time per output token (a request's latency over its tokens) and the
output tokens per second of the whole run.

    python benchmarks/json_output_bench.py --base-url http://127.0.0.1:8000 \
        --concurrency 1 32 --requests 64 --json out.json

Standard library only (it runs beside the server on the GPU machine). With dummy weights the
content is random: the point is that every constrained answer parses and fits the schema, and
what the masks cost per token.
"""

from __future__ import annotations

import argparse
import json
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


def post(url: str, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as resp:
        answer = json.loads(resp.read())
    return answer, time.perf_counter() - start


def run(base: str, concurrency: int, count: int, constrained: bool, max_tokens: int) -> dict:
    """`count` requests, `concurrency` at a time; `max_tokens` each (the free ones always that
    many)."""
    url = f"{base}/v1/chat/completions"

    def one(i: int) -> tuple[dict[str, Any], float]:
        body: dict[str, Any] = {
            "model": "m",
            "messages": [{"role": "user", "content": f"Weather report {i} as JSON, please."}],
            "max_tokens": max_tokens,
            "temperature": 1.0,
            "seed": i,
            "chat_template_kwargs": {"enable_thinking": False},
        }
        if constrained:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "weather", "schema": SCHEMA},
            }
        else:
            body["ignore_eos"] = True
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
        try:
            valid += conforms(json.loads(choice["message"]["content"] or ""))
        except json.JSONDecodeError:
            pass
    return {
        "constrained": constrained,
        "concurrency": concurrency,
        "requests": count,
        "valid_documents": valid,
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
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    rows = []
    for conc in args.concurrency:
        count = max(args.requests, conc)
        for constrained in (True, False):
            budget = args.max_tokens if constrained else args.free_tokens
            row = run(args.base_url, conc, count, constrained, budget)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
