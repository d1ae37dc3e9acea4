"""The worker's msgpack codec against docs/wire.md and the shared fixtures."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import msgpack
import pytest

from glm47.worker.wire import (
    Abort,
    Error,
    FlushCache,
    Hello,
    Message,
    Output,
    Ready,
    Step,
    Submit,
    WireError,
    WireGrammar,
    WireRequest,
    decode,
    encode,
)

FIXTURES = sorted((Path(__file__).parents[1] / "wire_fixtures").glob("*.json"))


def pack(value: Any) -> bytes:
    data = msgpack.packb(value, use_bin_type=True)
    assert isinstance(data, bytes)
    return data


def same(a: Any, b: Any) -> bool:
    """Structural equality with float tolerance (fixtures may hold 32-bit floats)."""
    if isinstance(a, float) or isinstance(b, float):
        return (
            isinstance(a, int | float)
            and isinstance(b, int | float)
            and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
        )
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def test_fixture_folder_is_not_empty() -> None:
    assert FIXTURES, "tests/wire_fixtures/*.json holds the shared examples of docs/wire.md"


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_fixture_decodes_to_its_value_and_round_trips(path: Path) -> None:
    fixture = json.loads(path.read_text())
    data = bytes.fromhex(fixture["hex"])
    assert same(msgpack.unpackb(data, raw=False), fixture["value"])
    msg = decode(data)
    assert isinstance(msg, Hello | Submit | Abort | FlushCache | Ready | Step | Error)
    if isinstance(msg, Submit):
        assert msg.rejected == [], [e.message for e in msg.rejected]
    again = decode(encode(msg))
    assert again == msg
    assert decode(pack(fixture["value"])) == msg


SUBMIT_VALUE = [
    "submit",
    1,
    {
        "reqs": [
            {"rid": "a", "input_ids": [1, 2, 3], "max_new_tokens": 4, "future_key": {"x": 1}},
            {
                "rid": "b",
                "input_ids": [5],
                "max_new_tokens": 2,
                "temperature": 0,
                "top_k": 5,
                "seed": 7,
                "logprobs": 2,
                "stop_token_ids": [9],
                "ignore_eos": True,
                "mtp": False,
                "min_p": None,
            },
        ],
        "another_future_key": 3,
    },
]


def test_submit_applies_defaults_and_ignores_unknown_keys() -> None:
    msg = decode(pack(SUBMIT_VALUE))
    assert isinstance(msg, Submit)
    a, b = msg.reqs
    assert a == WireRequest(rid="a", input_ids=[1, 2, 3], max_new_tokens=4)
    assert a.temperature == 1.0 and a.top_k == -1 and a.logprobs == -1 and a.mtp
    assert b.temperature == 0.0 and isinstance(b.temperature, float)
    assert (b.top_k, b.seed, b.logprobs, b.stop_token_ids) == (5, 7, 2, [9])
    assert b.ignore_eos and not b.mtp and b.min_p == 0.0
    assert decode(encode(msg)) == msg


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("input_ids", []),
        ("input_ids", [1, "2"]),
        ("input_ids", [1, True]),
        ("max_new_tokens", 0),
        ("max_new_tokens", 1.5),
        ("temperature", "hot"),
        ("temperature", -0.5),
        ("temperature", float("nan")),
        ("top_p", 0.0),
        ("top_k", -2),
        ("min_p", 1.5),
        ("repetition_penalty", 0.0),
        ("seed", "x"),
        ("ignore_eos", 1),
        ("logprobs", -3),
        ("prompt_logprobs", -2),
        ("prompt_logprobs", 21),
        ("logit_bias", [[3, 1.0], [3, 2.0]]),
        ("logit_bias", [[3, 100.5]]),
        ("logit_bias", [[-1, 1.0]]),
        ("grammar", "json"),
        ("grammar", {"schema": 3}),
        ("grammar", {"start_after": -1}),
        ("grammar", {"start_after": 2**62}),
        ("grammar", {"schema": None, "pattern": "a+"}),
        ("grammar", {"choices": []}),
        ("grammar", {"choices": ["a", ""]}),
        ("grammar", {"choices": ["a"], "schema": "{}"}),
        ("grammar", {"regex": ""}),
        ("grammar", {"regex": "a+", "choices": ["a"]}),
        ("grammar", {"tool_calls": ""}),
        ("grammar", {"tool_calls": 3}),
        ("grammar", {"tool_calls": "{}", "regex": "a+"}),
        ("grammar", {"tool_calls": "{}", "schema": "{}"}),
        ("grammar", {"ebnf": ""}),
        ("grammar", {"ebnf": 'root ::= "a"', "regex": "a"}),
        ("reasoning_budget", 5),
        ("reasoning_budget", {"tokens": 1}),
        ("reasoning_budget", {"tokens": -1, "end_id": 3}),
        ("reasoning_budget", {"tokens": 1, "end_id": 3, "more": 1}),
        ("cache_salt", ""),
        ("cache_salt", 7),
    ],
)
def test_a_bad_request_is_rejected_with_its_rid_and_others_pass(field: str, value: Any) -> None:
    bad = {"rid": "bad", "input_ids": [1], "max_new_tokens": 3, field: value}
    good = {"rid": "good", "input_ids": [1], "max_new_tokens": 3}
    msg = decode(pack(["submit", 1, {"reqs": [bad, good]}]))
    assert isinstance(msg, Submit)
    assert [r.rid for r in msg.reqs] == ["good"]
    (err,) = msg.rejected
    assert (err.rid, err.code, err.fatal) == ("bad", "invalid_request", False)
    assert field in err.message or field.split("_")[0] in err.message


def test_missing_required_keys_are_errors() -> None:
    msg = decode(
        pack(["submit", 1, {"reqs": [{"rid": "x", "input_ids": [1]}, {"input_ids": [1]}]}])
    )
    assert isinstance(msg, Submit) and msg.reqs == []
    assert [(e.rid, e.code) for e in msg.rejected] == [
        ("x", "invalid_request"),
        (None, "invalid_request"),
    ]
    assert "max_new_tokens" in msg.rejected[0].message
    with pytest.raises(WireError):
        decode(pack(["submit", 1, {}]))
    with pytest.raises(WireError):
        decode(pack(["abort", 1, {"rids": ["a", 2]}]))


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",  # a reserved msgpack byte
        pack({"type": "hello"}),
        pack(["hello", 1]),
        pack([7, 1, {}]),
        pack(["hello", 1, []]),
        pack(["hello", "1", {}]),
    ],
)
def test_malformed_envelopes_raise_fatal_protocol_errors(data: bytes) -> None:
    with pytest.raises(WireError) as info:
        decode(data)
    assert info.value.code == "protocol" and info.value.fatal and info.value.rid is None


def test_an_unknown_message_type_is_refused_without_ending_the_connection() -> None:
    """A newer router's message: a `protocol` error that keeps the worker in service."""
    with pytest.raises(WireError) as info:
        decode(pack(["nope", 1, {}]))
    assert info.value.code == "protocol" and not info.value.fatal and "nope" in info.value.message


def test_an_unknown_version_is_fatal() -> None:
    with pytest.raises(WireError) as info:
        decode(pack(["hello", 2, {}]))
    assert info.value.fatal and "version" in info.value.message
    assert info.value.to_message() == Error(
        rid=None, code="protocol", message=info.value.message, fatal=True
    )


def test_worker_messages_round_trip() -> None:
    msgs: list[Message] = [
        Hello(client="glm47-router 0.1"),
        Abort(rids=["a", "b"]),
        Ready(
            model="tiny",
            vocab_size=256,
            eos_token_ids=[1, 2],
            max_req_total_len=4096,
            max_running_requests=64,
            max_waiting_requests=128,
            kv_capacity_tokens=8192,
            mtp_step=0,
            worker_id="w0",
        ),
        Step(
            outs=[
                Output(rid="a", ids=[5], prompt_tokens=3, cached_tokens=0),
                Output(
                    rid="b",
                    ids=[6, 7],
                    logprobs=[-0.5, -1.25],
                    top_logprobs=[[(6, -0.5)], [(7, -1.25)]],
                    finish="stop",
                    spec_accepted=1,
                ),
                Output(rid="c", ids=[], finish="abort"),
                Output(
                    rid="d",
                    ids=[8],
                    prompt_tokens=3,
                    prompt_logprobs=[-2.5, -0.75],
                    prompt_top_logprobs=[[(4, -0.5), (9, -1.5)], []],
                    prompt_ranks=[3, 0],
                ),
            ],
            stats={"waiting": 1, "running": 2},
        ),
        Error(rid="a", code="queue_full", message="full", fatal=False),
        Error(rid=None, code="internal", message="boom", fatal=True),
    ]
    for msg in msgs:
        assert decode(encode(msg)) == msg


def test_prompt_ranks_must_be_ints() -> None:
    out = {"rid": "a", "ids": [1], "prompt_logprobs": [-1.0], "prompt_ranks": [1.5]}
    with pytest.raises(WireError) as info:
        decode(pack(["step", 1, {"outs": [out]}]))
    assert "prompt_ranks" in info.value.message
    (decoded,) = decode(pack(["step", 1, {"outs": [{**out, "prompt_ranks": [2]}]}])).outs
    assert decoded.prompt_ranks == [2]


def test_step_outputs_are_plain_msgpack_maps() -> None:
    step = Step(
        outs=[Output(rid="b", ids=[6], logprobs=[-0.5], top_logprobs=[[(6, -0.5), (3, -2.0)]])]
    )
    kind, version, body = msgpack.unpackb(encode(step), raw=False)
    assert (kind, version) == ("step", 1)
    (out,) = body["outs"]
    assert out["top_logprobs"] == [[[6, -0.5], [3, -2.0]]]
    assert set(out) == {"rid", "ids", "logprobs", "top_logprobs"}  # nil fields are left out
    assert body["stats"] == {}


def test_a_tool_call_grammar_is_read_as_its_json_text() -> None:
    spec = '{"tools": [{"name": "f"}], "function": null, "parallel": true}'
    req = {"rid": "r", "input_ids": [1], "max_new_tokens": 3, "grammar": {"tool_calls": spec}}
    msg = decode(pack(["submit", 1, {"reqs": [req]}]))
    assert isinstance(msg, Submit) and not msg.rejected
    assert msg.reqs[0].grammar == WireGrammar(tool_calls=spec)


def test_an_ebnf_grammar_is_read_as_its_text() -> None:
    text = 'root ::= "a" | "b"'
    req = {"rid": "r", "input_ids": [1], "max_new_tokens": 3, "grammar": {"ebnf": text}}
    msg = decode(pack(["submit", 1, {"reqs": [req]}]))
    assert isinstance(msg, Submit) and not msg.rejected
    assert msg.reqs[0].grammar == WireGrammar(ebnf=text)


def test_a_structural_tag_is_read_as_its_text_and_alone() -> None:
    tag = json.dumps({"triggers": ["<f="], "structures": [
        {"begin": "<f=a>", "schema": {"type": "object"}, "end": "</f>"}]})  # fmt: skip
    req = {"rid": "r", "input_ids": [1], "max_new_tokens": 3, "grammar": {"structural_tag": tag}}
    msg = decode(pack(["submit", 1, {"reqs": [req]}]))
    assert isinstance(msg, Submit) and not msg.rejected
    assert msg.reqs[0].grammar == WireGrammar(structural_tag=tag)
    both = {**req, "grammar": {"structural_tag": tag, "regex": "a"}}
    msg = decode(pack(["submit", 1, {"reqs": [both]}]))
    assert isinstance(msg, Submit) and [r.rid for r in msg.rejected] == ["r"]
