"""Forced tool calls under their grammar (docs/wire.md `Grammar.tool_calls`) on the built-in tiny
model (random weights, CPU): whatever the model prefers, the text after the prompt's
`<tool_call>` reads back through the tool parser as calls of declared functions whose arguments
follow the parameters' schemas (a string's pattern included)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from glm47 import _native
from glm47.worker.batch import SamplingParams
from glm47.worker.config import EngineConfig
from glm47.worker.engine import Engine, Request
from glm47.worker.engine.errors import InvalidRequestError
from glm47.worker.grammar import Grammars
from glm47.worker.model.config import ModelConfig
from glm47.worker.model.tiny import make_tiny_model
from glm47.worker.sampling import Sampler
from glm47.worker.wire_messages import WireGrammar
from tests.worker.engine.engine_fakes import drain
from tests.worker.model.reference import make_runner

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "set_alarm",
            "parameters": {
                "type": "object",
                "properties": {
                    "hour": {"type": "integer", "minimum": 0, "maximum": 9},
                    "loud": {"type": "boolean"},
                    "day": {"enum": ["mon", "tue"]},
                    "label": {"type": "string"},
                    "code": {"type": "string", "pattern": "^[a-c]{2}[0-9]$"},
                },
                "required": ["hour", "day", "code"],
            },
        },
    },
    {"type": "function", "function": {"name": "stop_alarm", "parameters": {"type": "object"}}},
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def valid_call(name: str, args: dict[str, Any], function: str | None) -> bool:
    if function is not None and name != function:
        return False
    if name == "stop_alarm":
        return True
    return (
        name == "set_alarm"
        and set(args) <= {"hour", "loud", "day", "label", "code"}
        and {"hour", "day", "code"} <= set(args)
        and isinstance(args["hour"], int)
        and 0 <= args["hour"] <= 9
        and args["day"] in ("mon", "tue")
        and isinstance(args.get("loud", True), bool)
        and isinstance(args.get("label", ""), str)
        and re.fullmatch("[a-c]{2}[0-9]", args["code"]) is not None
    )


def test_forced_calls_read_back_as_valid_calls(tiny_dir: Path) -> None:
    cfg = ModelConfig.from_dir(tiny_dir)
    runner = make_runner(tiny_dir, torch.float32, page_size=4, kv_tokens=4096)
    config = EngineConfig(device="cpu", dtype="float32", page_size=4, max_req_total_len=2048)
    tok = _native.Tokenizer(str(tiny_dir))
    engine = Engine(
        config, runner, Sampler(seed=0), tok.eos_token_ids, Grammars(str(tiny_dir), cfg.vocab_size)
    )
    # Free text (a string value, a key of stop_alarm, which lists none) runs on with random
    # weights: the closing tags are favoured (logit_bias applies before the mask), as is the end.
    close = [tok.encode(tag) for tag in ("</arg_value>", "</arg_key>", "</tool_call>")]
    assert all(len(ids) == 1 for ids in close), "each tag is one added token"
    favoured = (*(ids[0] for ids in close), *tok.eos_token_ids)
    bias = SamplingParams(temperature=1.0, logit_bias_ids=favoured,
                          logit_bias_values=(4.0,) * len(favoured))  # fmt: skip
    cases = {  # rid: (function, parallel)
        "required0": (None, False),
        "required1": (None, False),
        "parallel0": (None, True),
        "parallel1": (None, True),
        "named0": ("set_alarm", True),
        "named1": ("set_alarm", False),
    }
    for i, (rid, (function, parallel)) in enumerate(cases.items()):
        opened = "<tool_call>" + (function or "")
        spec = json.dumps({"tools": TOOLS, "function": function, "parallel": parallel})
        engine.add_request(Request(
            rid=rid, prompt_ids=tok.encode("Wake me up.<|assistant|></think>" + opened),
            max_new_tokens=400, sampling=replace(bias, seed=i),
            grammar=WireGrammar(tool_calls=spec),
        ))  # fmt: skip
    tokens, finish = drain(engine)
    for rid, (function, parallel) in cases.items():
        text = tok.decode(tokens[rid], skip_special_tokens=False)
        assert finish[rid] == "stop", (rid, text)
        # exactly the template's format: a name, then at once the arguments or the end
        assert text.startswith(("<arg_key>", "</tool_call>") if function else ("set_", "stop_"))
        opened = "<tool_call>" + (function or "")
        parsed = _native.Glm47ToolParser(TOOLS, "", None).parse(opened + text)
        calls = [(c["name"], json.loads(c["arguments"])) for c in parsed["tool_calls"]]
        ends = {tok.decode([eos], skip_special_tokens=False) for eos in tok.eos_token_ids}
        assert parsed["content"] in {"", *ends}, (rid, text)  # at most the end of generation
        assert calls, (rid, text)
        assert all(valid_call(name, args, function) for name, args in calls), (rid, calls)
        if function is not None or not parallel:
            assert len(calls) == 1, (rid, text)
    assert not engine.has_work()


def test_a_tool_call_grammar_that_cannot_be_made_is_refused(tiny_dir: Path) -> None:
    cfg = ModelConfig.from_dir(tiny_dir)
    runner = make_runner(tiny_dir, torch.float32, page_size=4, kv_tokens=256)
    config = EngineConfig(device="cpu", dtype="float32", page_size=4, max_req_total_len=256)
    engine = Engine(config, runner, Sampler(seed=0), [1], Grammars(str(tiny_dir), cfg.vocab_size))
    for spec, why in (
        (json.dumps({"tools": TOOLS, "function": "get_time"}), "get_time"),
        ("{not json", "not valid"),
        (json.dumps({"tools": []}), "no function"),
    ):
        with pytest.raises(InvalidRequestError, match=why):
            engine.add_request(Request(
                rid="r", prompt_ids=[5, 6], max_new_tokens=4,
                grammar=WireGrammar(tool_calls=spec),
            ))  # fmt: skip
    assert not engine.has_work()
