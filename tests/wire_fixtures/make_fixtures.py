"""Writes the shared wire-protocol fixtures of docs/wire.md: one `<name>.json` per example.

Each file is `{"hex": "<msgpack bytes>", "value": <the same message as JSON>}`. Run it from the
repository root with `.venv/bin/python tests/wire_fixtures/make_fixtures.py`; the output is
deterministic, so re-running it on an unchanged script changes no file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack

HERE = Path(__file__).parent

FULL_REQUEST: dict[str, Any] = {
    "rid": "chat-1",
    "input_ids": [151331, 151333, 872, 198, 9707],
    "max_new_tokens": 128,
    "min_new_tokens": 2,
    "temperature": 0.7,
    "top_p": 0.95,
    "top_k": 40,
    "min_p": 0.05,
    "presence_penalty": 0.5,
    "frequency_penalty": 0.25,
    "repetition_penalty": 1.1,
    "seed": 1234,
    "stop_token_ids": [151336, 151338],
    "ignore_eos": True,
    "logprobs": 3,
    "mtp": False,
    "prompt_logprobs": 2,
    "logit_bias": [[13, -100.0], [872, 2.5]],
    "grammar": {"schema": '{"type": "object"}', "start_after": 151351},
    "reasoning_budget": {"tokens": 512, "end_id": 151351},
    "cache_salt": "tenant-7",
}

EXAMPLES: dict[str, tuple[list[Any], bool]] = {
    # name: (message, pack floats as 32-bit)
    "hello": (["hello", 1, {"client": "glm47-router 0.1.0"}], False),
    "hello_empty": (["hello", 1, {}], False),
    "ready": (
        [
            "ready",
            1,
            {
                "protocol": 1,
                "model": "GLM-4.7-Flash",
                "vocab_size": 154880,
                "eos_token_ids": [151329, 151336, 151338],
                "max_req_total_len": 202752,
                "max_running_requests": 512,
                "kv_capacity_tokens": 1048576,
                "mtp_step": 4,
                "worker_id": "worker-0",
            },
        ],
        False,
    ),
    "submit_full": (["submit", 1, {"reqs": [FULL_REQUEST]}], False),
    "submit_minimal": (
        [
            "submit",
            1,
            {
                "reqs": [
                    {"rid": "gen-7", "input_ids": [1, 2, 3], "max_new_tokens": 1},
                    {"rid": "gen-8", "input_ids": [4], "max_new_tokens": 16, "seed": None},
                ]
            },
        ],
        False,
    ),
    "abort": (["abort", 1, {"rids": ["chat-1", "gen-7"]}], False),
    "flush_cache": (["flush_cache", 1, {}], False),
    "step": (
        [
            "step",
            1,
            {
                "outs": [
                    {
                        "rid": "chat-1",
                        "ids": [9707, 11],
                        "logprobs": [-0.125, -2.0625],
                        "top_logprobs": [
                            [[9707, -0.125], [3838, -2.5], [13, -3.75]],
                            [[11, -2.0625], [0, -2.125], [25, -4.0]],
                        ],
                        "finish": None,
                        "prompt_tokens": 5,
                        "cached_tokens": 0,
                        "spec_accepted": 1,
                        "prompt_logprobs": [-7.5, -0.375, -1.25, -2.0],
                        "prompt_top_logprobs": [
                            [[151333, -7.5], [872, -0.5]],
                            [[872, -0.375], [13, -2.75]],
                            [[11, -0.25], [198, -1.25]],
                            [[9707, -2.0], [11, -2.25]],
                        ],
                        "prompt_ranks": [40, 1, 2, 1],
                    },
                    {
                        "rid": "gen-7",
                        "ids": [151329],
                        "logprobs": None,
                        "top_logprobs": None,
                        "finish": "stop",
                        "prompt_tokens": None,
                        "cached_tokens": None,
                        "spec_accepted": None,
                    },
                    {"rid": "gen-8", "ids": [], "finish": "abort"},
                    {"rid": "gen-9", "ids": [42], "finish": "length", "prompt_tokens": 3},
                ],
                "stats": {
                    "waiting": 2,
                    "running": 3,
                    "kv_pages_used": 40,
                    "kv_pages_cached": 8,
                    "kv_pages_total": 4096,
                    "prefix_hit_tokens": 1024,
                    "prompt_tokens": 4096,
                    "spec_drafted": 400,
                    "spec_accepted": 250,
                },
            },
        ],
        False,
    ),
    "step_float32": (
        [
            "step",
            1,
            {
                "outs": [
                    {"rid": "r0", "ids": [5], "logprobs": [-0.5], "top_logprobs": [[[5, -0.5]]]}
                ],
                "stats": {},
            },
        ],
        True,
    ),
    "error_request": (
        [
            "error",
            1,
            {
                "rid": "chat-1",
                "code": "too_long",
                "message": "prompt of 300000 tokens is over max_req_total_len 202752",
                "fatal": False,
            },
        ],
        False,
    ),
    "error_fatal": (
        [
            "error",
            1,
            {"rid": None, "code": "protocol", "message": "unsupported version 2", "fatal": True},
        ],
        False,
    ),
}


def write_fixture(name: str, value: list[Any], single_float: bool) -> None:
    data = msgpack.packb(value, use_bin_type=True, use_single_float=single_float)
    assert msgpack.unpackb(data, raw=False) == value
    text = json.dumps({"hex": data.hex(), "value": value}, indent=2, ensure_ascii=False)
    (HERE / f"{name}.json").write_text(text + "\n")


def main() -> None:
    for name, (value, single_float) in EXAMPLES.items():
        write_fixture(name, value, single_float)


if __name__ == "__main__":
    main()
