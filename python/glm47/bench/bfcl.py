"""Function-calling accuracy on BFCL's single-turn categories, against any OpenAI-compatible
endpoint, streaming and non-streaming, reported per category.

Data: the `BFCL_v*_<category>.json` files (one JSON object per line) and their
`possible_answer/` twins, as shipped in the `bfcl-eval` package's `bfcl_eval/data` folder
(`pip download --no-deps bfcl-eval` and unzip, or an installed copy). Each case is sent once as a
chat request with its functions as tools (temperature 0, `max_tokens` 1024), and the calls that
come back are scored with a simplified AST check, the same rules for both transports:
- irrelevance categories: correct when no call is made; `live_relevance`: when at least one is;
- otherwise the calls must pair one-to-one (any order) with the ground truth calls: same function,
  every argument among the allowed values (numbers compare as numbers, 5 equals 5.0; strings
  compare case-, space- and punctuation-insensitively; lists element by element; dicts key by
  key), an argument whose allowed values include "" may be left out, and no argument the ground
  truth does not name.
Function names are sent with "." replaced by "_" (OpenAI tool names allow neither dots nor
spaces) and mapped back. This is not BFCL's official scorer: numbers from it are comparable with
other runs of this harness, not with the leaderboard.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from glm47.bench.client import sse_lines

CATEGORIES = (
    "simple_python",
    "multiple",
    "parallel",
    "parallel_multiple",
    "irrelevance",
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
    "live_irrelevance",
    "live_relevance",
)
NO_CALL_CATEGORIES = ("irrelevance", "live_irrelevance")
SOME_CALL_CATEGORIES = ("live_relevance",)
TYPE_NAMES = {"dict": "object", "float": "number", "tuple": "array", "int": "integer"}


@dataclass
class Case:
    id: str
    category: str
    messages: list[dict[str, Any]]
    functions: list[dict[str, Any]]
    answers: list[dict[str, dict[str, list[Any]]]] | None  # None: no ground truth calls


@dataclass
class Call:
    name: str
    arguments: dict[str, Any]


@dataclass
class Outcome:
    case_id: str
    category: str
    correct: bool
    reason: str
    calls: list[dict[str, Any]] = field(default_factory=list)


def _data_file(data_dir: Path, category: str, answers: bool = False) -> Path | None:
    """The newest version's file of exactly this category (`BFCL_v4_multiple.json`, not
    `BFCL_v4_live_multiple.json`)."""
    folder = data_dir / "possible_answer" if answers else data_dir
    pattern = re.compile(rf"BFCL_v(\d+)_{re.escape(category)}\.json")
    found = [
        (int(m.group(1)), p)
        for p in folder.glob("BFCL_v*.json")
        if (m := pattern.fullmatch(p.name))
    ]
    return max(found)[1] if found else None


def _read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_cases(data_dir: Path, categories: Iterable[str], limit: int | None = None) -> list[Case]:
    """The first `limit` cases (all when None) of each category; a category without a data file,
    or (where it needs one) without an answer file, raises ValueError."""
    cases = []
    for category in categories:
        if category not in CATEGORIES:
            raise ValueError(f"unknown category {category!r} (known: {', '.join(CATEGORIES)})")
        path = _data_file(data_dir, category)
        if path is None:
            raise ValueError(f"no BFCL_v*_{category}.json in {data_dir}")
        entries = _read_lines(path)[:limit]
        answers: dict[str, Any] = {}
        if category not in NO_CALL_CATEGORIES + SOME_CALL_CATEGORIES:
            answer_path = _data_file(data_dir, category, answers=True)
            if answer_path is None:
                raise ValueError(f"no possible_answer/BFCL_v*_{category}.json in {data_dir}")
            answers = {a["id"]: a["ground_truth"] for a in _read_lines(answer_path)}
        for entry in entries:
            turns = entry["question"]
            messages = turns[0] if turns and isinstance(turns[0], list) else turns
            truth = answers.get(entry["id"]) if answers else None
            if answers and truth is None:
                raise ValueError(f"case {entry['id']} has no ground truth in the answer file")
            cases.append(Case(entry["id"], category, messages, entry["function"], truth))
    return cases


def tool_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def convert_schema(schema: Any) -> Any:
    """BFCL's parameter schema as JSON Schema: its type names mapped, `optional` dropped, `any`
    left untyped."""
    if isinstance(schema, list):
        return [convert_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type":
            if value == "any":
                continue
            out[key] = TYPE_NAMES.get(value, value)
        elif key == "optional":
            continue
        elif key in ("properties",) and isinstance(value, dict):
            out[key] = {name: convert_schema(v) for name, v in value.items()}
        else:
            out[key] = convert_schema(value)
    return out


def to_tools(functions: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """OpenAI tools for the case's functions, and the map from tool name back to BFCL's name."""
    tools, names = [], {}
    for fn in functions:
        name = tool_name(fn["name"])
        names[name] = fn["name"]
        params = convert_schema(fn.get("parameters", {"type": "dict", "properties": {}}))
        tool = {"name": name, "description": fn.get("description", ""), "parameters": params}
        tools.append({"type": "function", "function": tool})
    return tools, names


# -- scoring -----------------------------------------------------------------------------------

_STRIP = re.compile(r"[ ,./\-_*^'\"]")


def _norm_str(s: str) -> str:
    return _STRIP.sub("", s).lower()


def value_matches(got: Any, want: Any) -> bool:
    """One argument value against one allowed value."""
    if isinstance(want, bool) or isinstance(got, bool):
        return isinstance(got, bool) and isinstance(want, bool) and got == want
    if isinstance(want, (int, float)):
        return isinstance(got, (int, float)) and float(got) == float(want)
    if isinstance(want, str):
        return isinstance(got, str) and _norm_str(got) == _norm_str(want)
    if isinstance(want, list):
        return (
            isinstance(got, list)
            and len(got) == len(want)
            and all(value_matches(g, w) for g, w in zip(got, want, strict=True))
        )
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return False
        for key, allowed in want.items():
            options = allowed if isinstance(allowed, list) else [allowed]
            if key not in got:
                if "" not in options:
                    return False
            elif not any(value_matches(got[key], o) for o in options if o != ""):
                return False
        return set(got) <= set(want)
    return bool(got == want)


def call_matches(call: Call, answer: dict[str, dict[str, list[Any]]]) -> str | None:
    """None when `call` satisfies the ground truth call `answer`, else why not."""
    ((name, params),) = answer.items()
    if call.name != name:
        return f"called {call.name}, expected {name}"
    for param, allowed in params.items():
        if param not in call.arguments:
            if "" not in allowed:
                return f"{name}: missing argument {param}"
        elif not any(value_matches(call.arguments[param], a) for a in allowed if a != ""):
            return f"{name}: {param}={call.arguments[param]!r} not in {allowed!r}"
    extra = sorted(set(call.arguments) - set(params))
    if extra:
        return f"{name}: unexpected argument(s) {', '.join(extra)}"
    return None


def score(case: Case, calls: list[Call]) -> tuple[bool, str]:
    """(correct, reason) of one case's calls."""
    if case.category in NO_CALL_CATEGORIES:
        return (not calls, "no call" if not calls else f"{len(calls)} call(s) made")
    if case.category in SOME_CALL_CATEGORIES:
        return (bool(calls), f"{len(calls)} call(s)" if calls else "no call made")
    answers = case.answers or []
    if len(calls) != len(answers):
        return False, f"{len(calls)} call(s), expected {len(answers)}"
    reasons: list[str] = []

    def pair(i: int, free: list[int]) -> bool:  # calls[i:] against the answers still free
        if i == len(calls):
            return True
        for j in free:
            why = call_matches(calls[i], answers[j])
            if why is None and pair(i + 1, [k for k in free if k != j]):
                return True
            if why is not None:
                reasons.append(why)
        return False

    if pair(0, list(range(len(answers)))):
        return True, "match"
    return False, reasons[0] if reasons else "no match"


# -- the client --------------------------------------------------------------------------------


def _parse_arguments(text: str) -> dict[str, Any] | None:
    try:
        args = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return None
    return args if isinstance(args, dict) else None


async def ask(
    http: httpx.AsyncClient, base_url: str, model: str, case: Case, stream: bool
) -> list[Call]:
    """The calls the endpoint makes for `case`; raises ValueError on unparseable arguments and
    httpx errors on transport failures."""
    tools, names = to_tools(case.functions)
    payload = {
        "model": model,
        "messages": case.messages,
        "tools": tools,
        "tool_choice": "auto",
        "temperature": 0.0,
        "max_tokens": 1024,
        "stream": stream,
    }
    url = base_url.rstrip("/") + "/v1/chat/completions"
    raw: list[tuple[str, str]] = []  # (tool name, argument text) in call order
    if stream:
        parts: dict[int, list[str]] = {}  # index -> [name, arguments]
        async with http.stream("POST", url, json=payload) as resp:
            if resp.status_code != 200:
                raise ValueError(f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}")
            async for line in sse_lines(resp):
                if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                    continue
                chunk = json.loads(line[5:])
                for choice in chunk.get("choices", []):
                    for delta in (choice.get("delta") or {}).get("tool_calls") or []:
                        slot = parts.setdefault(delta.get("index", 0), ["", ""])
                        fn = delta.get("function") or {}
                        slot[0] += fn.get("name") or ""
                        slot[1] += fn.get("arguments") or ""
        raw = [(parts[i][0], parts[i][1]) for i in sorted(parts)]
    else:
        resp = await http.post(url, json=payload)
        if resp.status_code != 200:
            raise ValueError(f"HTTP {resp.status_code}: {resp.text[:200]}")
        message = resp.json()["choices"][0]["message"]
        for tc in message.get("tool_calls") or []:
            raw.append((tc["function"]["name"], tc["function"].get("arguments") or ""))
    calls = []
    for name, text in raw:
        args = _parse_arguments(text)
        if args is None:
            raise ValueError(f"arguments of {name} are not a JSON object: {text[:200]!r}")
        calls.append(Call(names.get(name, name), args))
    return calls


async def run_cases(
    base_url: str, model: str, cases: list[Case], stream: bool, concurrency: int = 16
) -> list[Outcome]:
    """Every case once; a failed request counts as incorrect, with the error as the reason."""
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0)) as http:

        async def one(case: Case) -> Outcome:
            async with gate:
                try:
                    calls = await ask(http, base_url, model, case, stream)
                except (httpx.HTTPError, ValueError, KeyError) as err:
                    return Outcome(case.id, case.category, False, f"{type(err).__name__}: {err}")
            ok, reason = score(case, calls)
            made = [{"name": c.name, "arguments": c.arguments} for c in calls]
            return Outcome(case.id, case.category, ok, reason, made)

        return list(await asyncio.gather(*(one(c) for c in cases)))


def summarize(outcomes: list[Outcome]) -> dict[str, dict[str, float]]:
    """Per category: cases, correct, accuracy; "overall" is the mean of the category accuracies."""
    table: dict[str, dict[str, float]] = {}
    for o in outcomes:
        row = table.setdefault(o.category, {"cases": 0, "correct": 0})
        row["cases"] += 1
        row["correct"] += o.correct
    for row in table.values():
        row["accuracy"] = row["correct"] / row["cases"]
    if table:
        accuracies = [row["accuracy"] for row in table.values()]
        table["overall"] = {
            "cases": sum(r["cases"] for r in table.values()),
            "correct": sum(r["correct"] for r in table.values()),
            "accuracy": sum(accuracies) / len(accuracies),
        }
    return table


def markdown(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """One row per category, one column pair per transport."""
    modes = list(results)
    cats = [c for c in CATEGORIES if any(c in results[m] for m in modes)] + ["overall"]
    head = "| category | " + " | ".join(f"{m} accuracy | {m} correct" for m in modes) + " |"
    lines = [head, "|---|" + "---|---|" * len(modes)]
    for cat in cats:
        cells = []
        for m in modes:
            row = results[m].get(cat)
            cells += (
                [f"{100 * row['accuracy']:.2f}%", f"{int(row['correct'])}/{int(row['cases'])}"]
                if row
                else ["-", "-"]
            )
        lines.append(f"| {cat} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _first_model(base_url: str) -> str:
    resp = httpx.get(base_url.rstrip("/") + "/v1/models", timeout=30.0)
    resp.raise_for_status()
    return str(resp.json()["data"][0]["id"])


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="glm47 bfcl", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default=None, help="default: the server's first model")
    parser.add_argument("--data-dir", type=Path, required=True, help="bfcl_eval/data")
    parser.add_argument(
        "--categories", default=",".join(CATEGORIES), help="comma-separated (default: all)"
    )
    parser.add_argument("--limit", type=int, default=None, help="cases per category")
    parser.add_argument(
        "--mode", choices=("both", "stream", "no-stream"), default="both", help="transports"
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--output-dir", type=Path, default=Path("bfcl-results"))
    args = parser.parse_args(argv)
    try:
        cases = load_cases(args.data_dir, args.categories.split(","), args.limit)
    except (ValueError, OSError, json.JSONDecodeError) as err:
        parser.error(str(err))
    model = args.model or _first_model(args.base_url)
    modes = {"both": (False, True), "stream": (True,), "no-stream": (False,)}[args.mode]
    results: dict[str, dict[str, dict[str, float]]] = {}
    details: dict[str, list[dict[str, Any]]] = {}
    for stream in modes:
        label = "stream" if stream else "no-stream"
        outcomes = asyncio.run(run_cases(args.base_url, model, cases, stream, args.concurrency))
        results[label] = summarize(outcomes)
        details[label] = [o.__dict__ for o in outcomes]
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "bfcl.json").write_text(
        json.dumps({"model": model, "base_url": args.base_url, "results": results}, indent=1)
    )
    (args.output_dir / "bfcl_cases.json").write_text(json.dumps(details, indent=1))
    table = markdown(results)
    (args.output_dir / "bfcl.md").write_text(table)
    print(table)
    return 0
