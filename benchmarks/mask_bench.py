"""What the constrained-decoding masks cost on this machine's CPU: for each grammar, the time to
compile it and to compute the allowed-token mask at every step of random walks through it (the
tokens picked at random among the allowed ones, as a sampler over random weights would).

    python3 benchmarks/mask_bench.py --model-dir .bench-model [--walks 8 --steps 64] [--json out]

Needs the router extension (`glm47._native`) and numpy; the vocabulary is the model directory's
tokenizer (the stand-in one of benchmarks/bench_model.py has the real vocabulary's size).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np

from glm47._native import JsonConstraint, JsonVocab

OBJECT = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 16},
        "temperature_c": {"type": "number"},
        "days": {"type": "array", "items": {"enum": ["mon", "tue", "wed"]}, "maxItems": 3},
    },
    "required": ["city", "temperature_c", "days"],
    "additionalProperties": False,
}
# (name, JsonConstraint keyword arguments)
CASES: list[tuple[str, dict[str, Any]]] = [
    ("json_object", {"schema": None}),
    ("schema", {"schema": json.dumps(OBJECT)}),
    ("pattern anchored", {"schema": json.dumps(
        {"type": "object", "properties": {"code": {"pattern": "^[A-Z]{2}-[0-9]{3}$"}},
         "required": ["code"]})}),
    ("pattern anywhere", {"schema": json.dumps(
        {"type": "object", "properties": {"note": {"pattern": "ok", "maxLength": 48}},
         "required": ["note"]})}),
    ("choice", {"schema": None, "choices": ["sunny", "rainy", "cloudy with a chance of rain"]}),
    ("regex", {"schema": None, "regex": r"(sun|rain) at [0-9]{1,2}(am|pm)"}),
    ("regex open", {"schema": None, "regex": r"[a-z ]{1,64}\."}),
    ("tool call", {"schema": None, "tool_calls": json.dumps({"tools": [
        {"type": "function", "function": {"name": "get_weather", "parameters": OBJECT}},
        {"type": "function", "function": {"name": "search", "parameters": {
            "type": "object", "properties": {"query": {"type": "string"}},
            "required": ["query"]}}}], "function": None, "parallel": True})}),
    ("ebnf", {"ebnf": 'root ::= forecast ("; " forecast)*\n'
                      'forecast ::= ("sun" | "rain") " at " [1-9] [0-9]? ("am" | "pm")'}),
    ("ebnf nested", {"ebnf": 'root ::= value\n'
                             'value ::= "[" (value ("," value)*)? "]" | [a-z]+ | [0-9]{1,4}'}),
    ("structural tag", {"structural_tag": json.dumps({"triggers": ["<function="], "structures": [
        {"begin": "<function=get_weather>", "schema": OBJECT, "end": "</function>"}]})}),
    ("structural tag forced", {"structural_tag": json.dumps({"format": {
        "type": "triggered_tags", "triggers": ["<function="], "at_least_one": True,
        "tags": [{"begin": "<function=get_weather>", "end": "</function>",
                  "content": {"type": "json_schema", "json_schema": OBJECT}}]}})}),
]  # fmt: skip


def constraint(vocab: Any, kwargs: dict[str, Any], end: int) -> Any:
    if "ebnf" in kwargs:
        return JsonConstraint.from_ebnf(vocab, kwargs["ebnf"], [end])
    if "structural_tag" in kwargs:
        return JsonConstraint.from_structural_tag(vocab, kwargs["structural_tag"], [end])
    return JsonConstraint(vocab, ends=[end], **kwargs)


def walk(vocab: Any, kwargs: dict[str, Any], end: int, steps: int, rng: Any) -> list[float]:
    """Mask times (ms) along one random walk of at most `steps` tokens."""
    c = constraint(vocab, kwargs, end)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        mask = c.mask()
        times.append((time.perf_counter() - start) * 1e3)
        bits = np.unpackbits(np.frombuffer(mask, dtype=np.uint8), bitorder="little")
        allowed = np.flatnonzero(bits)
        if len(allowed) == 0:
            break
        token = int(rng.choice(allowed))
        c.accept(token)
        if c.is_done() or token == end:
            break
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--vocab-size", type=int, default=154880)
    ap.add_argument("--end-id", type=int, default=154820, help="the id that ends generation")
    ap.add_argument("--walks", type=int, default=8)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    start = time.perf_counter()
    vocab = JsonVocab(args.model_dir, args.vocab_size)
    print(f"vocabulary of {args.vocab_size} ids in {time.perf_counter() - start:.2f} s")
    rows = []
    rng = np.random.default_rng(0)
    for name, kwargs in CASES:
        start = time.perf_counter()
        constraint(vocab, kwargs, args.end_id)
        compile_ms = (time.perf_counter() - start) * 1e3
        times = [
            t for _ in range(args.walks) for t in walk(vocab, kwargs, args.end_id, args.steps, rng)
        ]
        times.sort()
        row = {
            "grammar": name,
            "compile_ms": round(compile_ms, 3),
            "masks": len(times),
            "mask_ms_median": round(statistics.median(times), 4),
            "mask_ms_p90": round(times[int(0.9 * (len(times) - 1))], 4),
            "mask_ms_max": round(times[-1], 4),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
