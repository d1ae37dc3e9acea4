"""The msgpack codec of the router <-> worker messages of docs/wire.md (typed in
`glm47.worker.wire_messages`, re-exported here).

Every message is one msgpack array `[type, version, body]`. `decode` checks the envelope and the
types of every known key, ignores unknown keys and fills defaults; anything malformed raises
`WireError` carrying the error code to answer with and, when it could be read, the request id.
A `submit` is decoded request by request: a bad request lands in `Submit.rejected` and the good
ones still go through.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import msgpack

from glm47.worker.wire_messages import (
    PROTOCOL_VERSION,
    STATS_KEYS,
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
    WireReasoningBudget,
    WireRequest,
)

__all__ = [
    "PROTOCOL_VERSION",
    "STATS_KEYS",
    "Abort",
    "Error",
    "FlushCache",
    "Hello",
    "Message",
    "Output",
    "Ready",
    "Step",
    "Submit",
    "WireError",
    "WireGrammar",
    "WireReasoningBudget",
    "WireRequest",
    "decode",
    "decode_request",
    "encode",
    "encode_step",
    "output_map",
]

_TYPE_NAMES: dict[type, str] = {
    Hello: "hello",
    Submit: "submit",
    Abort: "abort",
    FlushCache: "flush_cache",
    Ready: "ready",
    Step: "step",
    Error: "error",
}


def encode(msg: Message) -> bytes:
    """The msgpack bytes of one message. Floats are 64-bit; a step `Output` omits its nil fields
    (receivers read a missing optional key as nil), every other message writes every field."""
    if isinstance(msg, Submit):
        body: dict[str, Any] = {"reqs": [asdict(r) for r in msg.reqs]}
    elif isinstance(msg, Step):
        return encode_step([output_map(o.rid, o) for o in msg.outs], msg.stats)
    else:
        body = asdict(msg)
    data = msgpack.packb([_TYPE_NAMES[type(msg)], PROTOCOL_VERSION, body], use_bin_type=True)
    assert isinstance(data, bytes)
    return data


def encode_step(outs: list[dict[str, Any]], stats: dict[str, int]) -> bytes:
    """The bytes of `encode(Step(...))` from outputs already in map form (`output_map`): the
    worker's per-step path, which skips building `Output` objects."""
    data = msgpack.packb(
        [_TYPE_NAMES[Step], PROTOCOL_VERSION, {"outs": outs, "stats": stats}],
        use_bin_type=True,
    )
    assert isinstance(data, bytes)
    return data


def output_map(rid: str, out: Any) -> dict[str, Any]:
    """The wire map of one step output under the router's `rid`; `out` has the attributes of
    `Output` (its own `rid` is ignored). Nil fields are omitted."""
    d: dict[str, Any] = {"rid": rid, "ids": out.ids}
    if out.logprobs is not None:
        d["logprobs"] = out.logprobs
    if out.top_logprobs is not None:
        d["top_logprobs"] = [[[t, v] for t, v in row] for row in out.top_logprobs]
    # The other optional keys, written out (not a loop over names): this runs per request per step.
    if out.finish is not None:
        d["finish"] = out.finish
    if out.prompt_tokens is not None:
        d["prompt_tokens"] = out.prompt_tokens
    if out.cached_tokens is not None:
        d["cached_tokens"] = out.cached_tokens
    if out.spec_accepted is not None:
        d["spec_accepted"] = out.spec_accepted
    if out.prompt_logprobs is not None:
        d["prompt_logprobs"] = out.prompt_logprobs
    if out.prompt_top_logprobs is not None:
        d["prompt_top_logprobs"] = [[[t, v] for t, v in row] for row in out.prompt_top_logprobs]
    if out.prompt_ranks is not None:
        d["prompt_ranks"] = out.prompt_ranks
    return d


def decode(data: bytes) -> Message:
    """Parse one message; raises `WireError` (code `protocol`) on a malformed envelope or body."""
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise WireError(f"undecodable msgpack: {exc}", fatal=True) from exc
    if not isinstance(raw, list) or len(raw) != 3:
        raise WireError("a message must be an array [type, version, body]", fatal=True)
    kind, version, body = raw
    if not isinstance(kind, str):
        raise WireError(f"a message type must be a string, got {kind!r}", fatal=True)
    if kind not in _DECODERS:  # a newer router's message: refused, the connection stays
        raise WireError(f"unknown message type {kind!r}", fatal=False)
    if not _is_int(version) or version != PROTOCOL_VERSION:
        raise WireError(
            f"protocol version {version!r} not spoken (this worker speaks {PROTOCOL_VERSION})",
            fatal=True,
        )
    if not isinstance(body, dict) or not all(isinstance(k, str) for k in body):
        raise WireError(f"the body of {kind!r} must be a map with string keys", fatal=True)
    return _DECODERS[kind](body)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_float(v: object) -> bool:
    return isinstance(v, float) or _is_int(v)


def _is_int_list(v: object) -> bool:
    return isinstance(v, list) and all(type(x) is int for x in v)  # bool is not int here


def _is_str_list(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _is_opt_int(v: object) -> bool:
    return v is None or _is_int(v)


def _is_top_row(v: object) -> bool:
    return isinstance(v, list) and all(
        isinstance(p, list) and len(p) == 2 and _is_int(p[0]) and _is_float(p[1]) for p in v
    )


def _is_grammar(v: object) -> bool:
    """A `Grammar` map: `schema` a string or nil, `choices` nil or a non-empty array of
    non-empty strings (then no schema), `regex`, `tool_calls`, `ebnf` or `structural_tag` a
    non-empty string (then none of the others), `start_after` a token id (below 2^32) or nil."""
    kinds = ("schema", "choices", "regex", "tool_calls", "ebnf", "structural_tag")
    keys = {"start_after", "compact", *kinds}
    if not isinstance(v, dict) or not isinstance(v.get("compact", False), bool):
        return False
    if not isinstance(v, dict) or not set(v) <= keys:
        return False
    schema, start, choices = v.get("schema"), v.get("start_after"), v.get("choices")
    for only in ("regex", "tool_calls", "ebnf", "structural_tag"):
        text = v.get(only)
        others = [v.get(k) for k in kinds if k != only]
        if text is not None and (not isinstance(text, str) or not text or any(others)):
            return False
    return (
        (schema is None or isinstance(schema, str))
        and (start is None or (_is_int(start) and 0 <= start < 2**32))
        and (
            choices is None
            or (
                schema is None
                and isinstance(choices, list)
                and len(choices) > 0
                and all(isinstance(c, str) and c for c in choices)
            )
        )
    )


def _is_budget(v: object) -> bool:
    """A `ReasoningBudget` map: `tokens` and `end_id` non-negative ints."""
    return (
        isinstance(v, dict)
        and set(v) == {"tokens", "end_id"}
        and all(_is_int(v[k]) and v[k] >= 0 for k in ("tokens", "end_id"))
    )


# OpenAI's `logit_bias` limits: entries per request and magnitude of a bias.
MAX_LOGIT_BIAS_ENTRIES = 1024
MAX_LOGIT_BIAS = 100.0

# vLLM's `bad_words` limits: sequences per request, tokens per sequence (the router's too).
MAX_BAD_WORDS = 256
MAX_BAD_WORD_TOKENS = 128

# Most alternatives a prompt position reports (the OpenAI `logprobs` limit): a prompt's top lists
# stay on the host until its first output.
MAX_PROMPT_TOP = 20

# key -> (check, description); a key absent here is ignored by the decoders
_REQUEST_FIELDS = {
    "rid": (lambda v: isinstance(v, str), "str"),
    "input_ids": (_is_int_list, "array of int"),
    "max_new_tokens": (_is_int, "int"),
    "min_new_tokens": (_is_int, "int"),
    "temperature": (_is_float, "float"),
    "top_p": (_is_float, "float"),
    "top_k": (_is_int, "int"),
    "min_p": (_is_float, "float"),
    "presence_penalty": (_is_float, "float"),
    "frequency_penalty": (_is_float, "float"),
    "repetition_penalty": (_is_float, "float"),
    "seed": (_is_opt_int, "int or nil"),
    "stop_token_ids": (_is_int_list, "array of int"),
    "ignore_eos": (lambda v: isinstance(v, bool), "bool"),
    "logprobs": (_is_int, "int"),
    "mtp": (lambda v: isinstance(v, bool), "bool"),
    "prompt_logprobs": (_is_int, "int"),
    "logit_bias": (_is_top_row, "array of [int, float] pairs"),
    "grammar": (
        _is_grammar,
        "a Grammar map (schema, choices, regex, tool_calls, ebnf, structural_tag, start_after)",
    ),
    "reasoning_budget": (_is_budget, "a ReasoningBudget map (tokens, end_id)"),
    "allowed_token_ids": (_is_int_list, "array of int"),
    "priority": (_is_int, "int"),
    "cache_salt": (lambda v: isinstance(v, str) and v != "", "a non-empty str or nil"),
    "bad_words": (
        lambda v: isinstance(v, list) and all(_is_int_list(w) and w for w in v),
        "array of non-empty arrays of int",
    ),
}
_FLOAT_FIELDS = {k for k, (check, _) in _REQUEST_FIELDS.items() if check is _is_float}
_REQUIRED_REQUEST = ("rid", "input_ids", "max_new_tokens")


def _checked(
    body: dict[str, Any],
    fields: dict[str, Any],
    required: tuple[str, ...],
    what: str,
    code: str,
    rid: str | None,
) -> dict[str, Any]:
    """The known keys of `body`, type-checked; missing required keys and bad types raise."""
    for key in required:
        if key not in body:
            raise WireError(f"{what}: missing required key {key!r}", code=code, rid=rid)
    out: dict[str, Any] = {}
    for key, (check, desc) in fields.items():
        if key not in body:
            continue
        value = body[key]
        if value is None and key not in required:
            if desc.endswith("or nil"):
                out[key] = None
            continue  # otherwise nil means "not set": keep the default
        if not check(value):
            text = repr(value)
            got = text if len(text) <= 60 else text[:57] + "..."
            raise WireError(f"{what}: {key!r} must be {desc}, got {got}", code=code, rid=rid)
        out[key] = value
    return out


def decode_request(raw: object) -> WireRequest:
    """One `Request` map; errors carry the rid when it is readable (code `invalid_request`)."""
    if not isinstance(raw, dict):
        raise WireError("submit: every request must be a map", code="invalid_request")
    rid = raw.get("rid") if isinstance(raw.get("rid"), str) else None
    values = _checked(
        raw, _REQUEST_FIELDS, _REQUIRED_REQUEST, f"request {rid!r}", "invalid_request", rid
    )
    for key in _FLOAT_FIELDS & values.keys():
        values[key] = float(values[key])
    if "logit_bias" in values:
        values["logit_bias"] = [(int(t), float(b)) for t, b in values["logit_bias"]]
    if "grammar" in values:
        g = values["grammar"]
        values["grammar"] = WireGrammar(
            schema=g.get("schema"),
            start_after=g.get("start_after"),
            choices=g.get("choices"),
            regex=g.get("regex"),
            tool_calls=g.get("tool_calls"),
            ebnf=g.get("ebnf"),
            structural_tag=g.get("structural_tag"),
            compact=bool(g.get("compact", False)),
        )
    if "reasoning_budget" in values:
        b = values["reasoning_budget"]
        values["reasoning_budget"] = WireReasoningBudget(tokens=b["tokens"], end_id=b["end_id"])
    req = WireRequest(**values)
    problem = _range_problem(req)
    if problem:
        raise WireError(f"request {rid!r}: {problem}", code="invalid_request", rid=rid)
    return req


def _range_problem(r: WireRequest) -> str | None:
    """The first field of `r` outside its documented range, described; None when all are fine."""
    bad_floats = [k for k in sorted(_FLOAT_FIELDS) if not math.isfinite(getattr(r, k))]
    checks = (
        (not bad_floats, f"{', '.join(bad_floats)} must be finite"),
        (len(r.input_ids) > 0, "input_ids must not be empty"),
        (not r.input_ids or min(r.input_ids) >= 0, "input_ids must be non-negative"),
        (r.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
        (r.min_new_tokens >= 0, "min_new_tokens must be >= 0"),
        (r.temperature >= 0.0, "temperature must be >= 0"),
        (0.0 < r.top_p <= 1.0, "top_p must be in (0, 1]"),
        (r.top_k >= -1, "top_k must be -1, 0 or positive"),
        (0.0 <= r.min_p <= 1.0, "min_p must be in [0, 1]"),
        (r.repetition_penalty > 0.0, "repetition_penalty must be > 0"),
        (-2.0 <= r.presence_penalty <= 2.0, "presence_penalty must be in [-2, 2]"),
        (-2.0 <= r.frequency_penalty <= 2.0, "frequency_penalty must be in [-2, 2]"),
        (r.logprobs >= -1, "logprobs must be >= -1"),
        (
            -1 <= r.prompt_logprobs <= MAX_PROMPT_TOP,
            f"prompt_logprobs must be in [-1, {MAX_PROMPT_TOP}]",
        ),
        (min(r.stop_token_ids, default=0) >= 0, "stop_token_ids must be non-negative"),
        (min(r.allowed_token_ids, default=0) >= 0, "allowed_token_ids must be non-negative"),
        (
            len(r.bad_words) <= MAX_BAD_WORDS
            and all(min(w) >= 0 and len(w) <= MAX_BAD_WORD_TOKENS for w in r.bad_words),
            f"bad_words needs at most {MAX_BAD_WORDS} sequences of at most "
            f"{MAX_BAD_WORD_TOKENS} non-negative ids",
        ),
        (
            len(r.logit_bias) <= MAX_LOGIT_BIAS_ENTRIES
            and len({t for t, _ in r.logit_bias}) == len(r.logit_bias)
            and all(t >= 0 and abs(b) <= MAX_LOGIT_BIAS for t, b in r.logit_bias),
            f"logit_bias needs at most {MAX_LOGIT_BIAS_ENTRIES} distinct non-negative ids with "
            f"biases in [-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}]",
        ),
    )
    return next((msg for ok, msg in checks if not ok), None)


def _decode_hello(body: dict[str, Any]) -> Hello:
    client = body.get("client")
    return Hello(client=client if isinstance(client, str) else None)


def _decode_submit(body: dict[str, Any]) -> Submit:
    reqs = body.get("reqs")
    if not isinstance(reqs, list):
        raise WireError("submit: 'reqs' must be an array of requests", fatal=True)
    good: list[WireRequest] = []
    bad: list[WireError] = []
    for raw in reqs:
        try:
            good.append(decode_request(raw))
        except WireError as err:
            bad.append(err)
    return Submit(reqs=good, rejected=bad)


def _decode_abort(body: dict[str, Any]) -> Abort:
    rids = body.get("rids")
    if not _is_str_list(rids):
        raise WireError("abort: 'rids' must be an array of str", fatal=True)
    assert isinstance(rids, list)
    return Abort(rids=rids)


_READY_FIELDS = {
    "protocol": (_is_int, "int"),
    "model": (lambda v: isinstance(v, str), "str"),
    "vocab_size": (_is_int, "int"),
    "eos_token_ids": (_is_int_list, "array of int"),
    "max_req_total_len": (_is_int, "int"),
    "max_running_requests": (_is_int, "int"),
    "kv_capacity_tokens": (_is_int, "int"),
    "mtp_step": (_is_int, "int"),
    "worker_id": (lambda v: isinstance(v, str), "str"),
    "max_waiting_requests": (_is_int, "int"),
}


def _decode_ready(body: dict[str, Any]) -> Ready:
    required = tuple(k for k in _READY_FIELDS if k not in ("protocol", "max_waiting_requests"))
    return Ready(**_checked(body, _READY_FIELDS, required, "ready", "protocol", None))


_LOGPROBS = (
    lambda v: isinstance(v, list) and all(_is_float(x) for x in v),
    "array of float or nil",
)
_TOP_LOGPROBS = (
    lambda v: isinstance(v, list) and all(_is_top_row(r) for r in v),
    "array of [int, float] arrays or nil",
)
_OUTPUT_FIELDS = {
    "rid": (lambda v: isinstance(v, str), "str"),
    "ids": (_is_int_list, "array of int"),
    "logprobs": _LOGPROBS,
    "top_logprobs": _TOP_LOGPROBS,
    "finish": (lambda v: v in ("stop", "length", "abort"), "stop, length, abort or nil"),
    "prompt_tokens": (_is_int, "int or nil"),
    "cached_tokens": (_is_int, "int or nil"),
    "spec_accepted": (_is_int, "int or nil"),
    "prompt_logprobs": _LOGPROBS,
    "prompt_top_logprobs": _TOP_LOGPROBS,
    "prompt_ranks": (_is_int_list, "array of int or nil"),
}


def _decode_step(body: dict[str, Any]) -> Step:
    outs = body.get("outs")
    if not isinstance(outs, list) or not all(isinstance(o, dict) for o in outs):
        raise WireError("step: 'outs' must be an array of maps")
    decoded = []
    for raw in outs:
        values = _checked(raw, _OUTPUT_FIELDS, ("rid", "ids"), "step output", "protocol", None)
        for key in ("logprobs", "prompt_logprobs"):
            if values.get(key) is not None:
                values[key] = [float(x) for x in values[key]]
        for key in ("top_logprobs", "prompt_top_logprobs"):
            if values.get(key) is not None:
                values[key] = [[(int(t), float(v)) for t, v in row] for row in values[key]]
        decoded.append(Output(**values))
    stats = body.get("stats") or {}
    if not isinstance(stats, dict):
        raise WireError("step: 'stats' must be a map")
    return Step(
        outs=decoded, stats={k: v for k, v in stats.items() if k in STATS_KEYS and _is_int(v)}
    )


_ERROR_FIELDS = {
    "rid": (lambda v: isinstance(v, str), "str or nil"),
    "code": (lambda v: isinstance(v, str), "str"),
    "message": (lambda v: isinstance(v, str), "str"),
    "fatal": (lambda v: isinstance(v, bool), "bool"),
}


def _decode_error(body: dict[str, Any]) -> Error:
    values = _checked(body, _ERROR_FIELDS, ("code", "message"), "error", "protocol", None)
    values.setdefault("rid", None)
    return Error(**values)


_DECODERS: dict[str, Any] = {
    "hello": _decode_hello,
    "submit": _decode_submit,
    "abort": _decode_abort,
    "flush_cache": lambda body: FlushCache(),
    "ready": _decode_ready,
    "step": _decode_step,
    "error": _decode_error,
}
