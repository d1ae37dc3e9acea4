"""The BFCL harness: data loading, tool conversion and the simplified AST scorer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glm47.bench.bfcl import (
    Call,
    Case,
    Outcome,
    convert_schema,
    load_cases,
    markdown,
    score,
    summarize,
    to_tools,
)

AREA = {
    "name": "geometry.area",
    "description": "Area of a shape.",
    "parameters": {
        "type": "dict",
        "properties": {
            "base": {"type": "integer"},
            "height": {"type": "float"},
            "unit": {"type": "string", "optional": True},
            "sides": {"type": "tuple", "items": {"type": "any"}},
            "type": {"type": "string"},  # a parameter named like a schema key
        },
        "required": ["base", "height"],
    },
}
TRUTH = {"geometry.area": {"base": [10], "height": [5.0], "unit": ["units", ""]}}


def write_data(root: Path) -> Path:
    """A data folder in BFCL's layout: one object per line, answers under possible_answer/."""
    (root / "possible_answer").mkdir(parents=True)

    def lines(path: Path, entries: list[dict]) -> None:
        path.write_text("".join(json.dumps(e) + "\n" for e in entries))

    question = [[{"role": "user", "content": "Area of base 10, height 5?"}]]
    lines(
        root / "BFCL_v4_simple_python.json",
        [{"id": f"simple_python_{i}", "question": question, "function": [AREA]} for i in range(3)],
    )
    lines(
        root / "possible_answer" / "BFCL_v4_simple_python.json",
        [{"id": f"simple_python_{i}", "ground_truth": [TRUTH]} for i in range(3)],
    )
    lines(root / "BFCL_v3_irrelevance.json", [{"id": "old", "question": question, "function": []}])
    lines(
        root / "BFCL_v4_irrelevance.json",
        [{"id": "irrelevance_0", "question": question, "function": [AREA]}],
    )
    lines(  # must not be read as "irrelevance"
        root / "BFCL_v4_live_irrelevance.json",
        [{"id": "live_irrelevance_0", "question": question, "function": [AREA]}],
    )
    return root


def test_load_reads_exactly_the_category_asked_in_its_newest_version(tmp_path: Path) -> None:
    data = write_data(tmp_path)
    cases = load_cases(data, ["simple_python", "irrelevance"], limit=2)
    assert [c.id for c in cases] == ["simple_python_0", "simple_python_1", "irrelevance_0"]
    assert cases[0].messages == [{"role": "user", "content": "Area of base 10, height 5?"}]
    assert cases[0].answers == [TRUTH] and cases[2].answers is None
    with pytest.raises(ValueError, match="unknown category"):
        load_cases(data, ["simple"])
    with pytest.raises(ValueError, match="no BFCL_v"):
        load_cases(data, ["parallel"])


def test_tools_are_json_schema_with_legal_names() -> None:
    tools, names = to_tools([AREA])
    fn = tools[0]["function"]
    assert fn["name"] == "geometry_area" and names == {"geometry_area": "geometry.area"}
    props = fn["parameters"]["properties"]
    assert fn["parameters"]["type"] == "object"
    assert props["height"] == {"type": "number"} and props["unit"] == {"type": "string"}
    assert props["sides"] == {"type": "array", "items": {}}
    assert props["type"] == {"type": "string"}
    assert convert_schema({"type": "dict", "properties": {}}) == {
        "type": "object",
        "properties": {},
    }


CASE = Case("c", "simple_python", [], [AREA], [TRUTH])


@pytest.mark.parametrize(
    ("args", "ok", "why"),
    [
        ({"base": 10, "height": 5}, True, "match"),  # int for float, optional left out
        ({"base": 10.0, "height": 5.0, "unit": "Units"}, True, "match"),
        ({"base": 10, "height": 5, "unit": "units."}, True, "match"),  # punctuation ignored
        ({"base": 11, "height": 5}, False, "geometry.area: base=11 not in [10]"),
        ({"base": "10", "height": 5}, False, "geometry.area: base='10' not in [10]"),
        ({"height": 5}, False, "geometry.area: missing argument base"),
        ({"base": 10, "height": 5, "color": "red"}, False, "unexpected argument(s) color"),
        ({"base": True, "height": 5}, False, "base=True"),
    ],
)
def test_one_call_against_its_ground_truth(args: dict, ok: bool, why: str) -> None:
    got_ok, got_why = score(CASE, [Call("geometry.area", args)])
    assert got_ok == ok and why in got_why


def test_parallel_calls_pair_in_any_order_and_count_must_match() -> None:
    truth = [
        {"f": {"x": [1], "tags": [["a", "b"]], "opt": [{"k": ["v"], "z": ["", 0]}]}},
        {"f": {"x": [2], "tags": [["c"]], "opt": [{"k": ["w"]}]}},
    ]
    case = Case("p", "parallel", [], [], truth)
    first = Call("f", {"x": 1, "tags": ["A", "b"], "opt": {"k": "v"}})
    second = Call("f", {"x": 2, "tags": ["c"], "opt": {"k": "W"}})
    assert score(case, [second, first]) == (True, "match")
    assert score(case, [first])[0] is False
    assert score(case, [first, first])[0] is False  # one ground truth call cannot pair twice
    wrong_list = Call("f", {"x": 2, "tags": ["c", "d"], "opt": {"k": "w"}})
    assert score(case, [first, wrong_list])[0] is False
    extra_key = Call("f", {"x": 2, "tags": ["c"], "opt": {"k": "w", "q": 1}})
    assert score(case, [first, extra_key])[0] is False


def test_relevance_categories_score_whether_a_call_was_made() -> None:
    call = Call("geometry.area", {"base": 1})
    assert score(Case("i", "irrelevance", [], [AREA], None), []) == (True, "no call")
    assert score(Case("i", "live_irrelevance", [], [AREA], None), [call])[0] is False
    assert score(Case("r", "live_relevance", [], [AREA], None), [call])[0] is True
    assert score(Case("r", "live_relevance", [], [AREA], None), [])[0] is False


def test_summary_and_table() -> None:
    outcomes = [
        Outcome("a", "simple_python", True, ""),
        Outcome("b", "simple_python", False, ""),
        Outcome("c", "irrelevance", True, ""),
    ]
    table = summarize(outcomes)
    assert table["simple_python"]["accuracy"] == 0.5 and table["irrelevance"]["accuracy"] == 1.0
    assert table["overall"]["accuracy"] == 0.75 and table["overall"]["cases"] == 3
    text = markdown({"no-stream": table, "stream": table})
    assert "| simple_python | 50.00% | 1/2 | 50.00% | 1/2 |" in text
    assert text.splitlines()[-1].startswith("| overall | 75.00% | 2/3 |")


def test_a_streamed_call_with_a_line_separator_in_its_arguments_reads_whole() -> None:
    """The router writes U+2028 raw inside JSON strings; a general line splitter would cut the
    event there and lose the call."""
    import asyncio

    import httpx

    from glm47.bench.bfcl import Case, ask

    args = json.dumps({"text": "a\u2028b"}, ensure_ascii=False)
    delta = {"index": 0, "function": {"name": "echo", "arguments": args}}
    events = [json.dumps({"choices": [{"delta": {"tool_calls": [delta]}}]}, ensure_ascii=False)]
    body = "".join(f"data: {e}\n\n" for e in [*events, "[DONE]"]).encode()
    case = Case("c", "simple_python", [{"role": "user", "content": "x"}],
                [{"name": "echo", "parameters": {"type": "dict", "properties": {}}}], None)  # fmt: skip

    async def run():  # type: ignore[no-untyped-def]
        transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body))
        async with httpx.AsyncClient(transport=transport) as http:
            return await ask(http, "http://x", "m", case, stream=True)

    (call,) = asyncio.run(run())
    assert (call.name, call.arguments) == ("echo", {"text": "a\u2028b"})
