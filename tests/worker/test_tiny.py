"""make_tiny_model: deterministic files that transformers and the worker both load, with the
same logits; a tokenizer with every GLM special token; a chat template in the GLM-4.7 format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoTokenizer, Glm4MoeLiteForCausalLM

from glm47.worker.model.config import ModelConfig
from glm47.worker.model.tiny import make_tiny_model
from glm47.worker.model.tiny_tokenizer import EOS_TOKENS, SPECIAL_TOKENS
from tests.worker.model.reference import PageAllocator, batch, make_runner, seq

FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "generation_config.json",
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)


def test_same_seed_gives_the_same_files_and_another_seed_other_weights(
    tiny: Path, tmp_path: Path
) -> None:
    again = make_tiny_model(tmp_path / "again", seed=0)
    for name in FILES:
        assert (again / name).read_bytes() == (tiny / name).read_bytes(), name
    other = make_tiny_model(tmp_path / "other", seed=1)
    assert (other / "model.safetensors").read_bytes() != (tiny / "model.safetensors").read_bytes()


def test_tokenizer_has_every_special_token_at_a_distinct_id(tiny: Path) -> None:
    tok = Tokenizer.from_file(str(tiny / "tokenizer.json"))
    config = json.loads((tiny / "config.json").read_text())
    ids = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
    assert None not in ids and len(set(ids)) == len(SPECIAL_TOKENS)
    assert config["vocab_size"] == tok.get_vocab_size() and 1000 <= config["vocab_size"] <= 2000
    assert config["eos_token_id"] == [tok.token_to_id(t) for t in EOS_TOKENS]
    text = "[gMASK]<sop><|user|>Hello, world!<|assistant|><think>"
    encoding = tok.encode(text)
    assert encoding.tokens[:3] == ["[gMASK]", "<sop>", "<|user|>"]
    assert encoding.tokens[-2:] == ["<|assistant|>", "<think>"]
    assert tok.decode(encoding.ids, skip_special_tokens=False) == text
    assert ModelConfig.from_dir(tiny).eos_token_ids == tuple(config["eos_token_id"])


def test_transformers_and_the_worker_give_the_same_logits(tiny: Path) -> None:
    reference = Glm4MoeLiteForCausalLM.from_pretrained(
        tiny, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager"
    ).eval()
    runner = make_runner(tiny, torch.float32, page_size=4)
    assert runner.model.mtp is not None  # the MTP layer (checkpoint layer 3) was loaded
    assert runner.kv_cache.shape[0] == 4
    tok = Tokenizer.from_file(str(tiny / "tokenizer.json"))
    prompts = [tok.encode(t).ids for t in ("[gMASK]<sop><|user|>hello", "The capital of France")]
    alloc = PageAllocator(runner.num_pages, 4)
    logits = runner.run_logits(batch(*[seq(alloc, str(i), p, 0) for i, p in enumerate(prompts)]))
    with torch.no_grad():
        expected = torch.stack(
            [reference(input_ids=torch.tensor([p])).logits[0, -1] for p in prompts]
        )
    torch.testing.assert_close(logits, expected, atol=2e-5, rtol=1e-4)
    assert logits[0].argmax() != logits[1].argmax()


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
TOOLS_BLOCK = (
    "<|system|>\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", '
    '"properties": {"city": {"type": "string"}}}}}\n</tools>\n\n'
    "For each function call, output the function name and arguments within the following XML "
    "format:\n<tool_call>{function-name}<arg_key>{arg-key-1}</arg_key><arg_value>{arg-value-1}"
    "</arg_value><arg_key>{arg-key-2}</arg_key><arg_value>{arg-value-2}</arg_value>...</tool_call>"
)
# Rendered with the chat template that ships with GLM-4.7-Flash.
CHATS: list[tuple[dict[str, Any], str]] = [
    (
        {"messages": [{"role": "user", "content": "hello"}]},
        "[gMASK]<sop><|user|>hello<|assistant|><think>",
    ),
    (
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "<think>\nplan\n</think>\n\nHello!"},
                {"role": "user", "content": [{"type": "text", "text": "more"}]},
            ],
            "enable_thinking": False,
        },
        "[gMASK]<sop><|system|>Be brief.<|user|>hi<|assistant|></think>Hello!<|user|>more"
        "<|assistant|></think>",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": "",
                    "reasoning_content": "Use the tool.",
                    "tool_calls": [
                        {
                            "type": "function",
                            "function": {
                                "name": "get_weather",
                                "arguments": {"city": "Paris", "days": 2, "opts": {"u": "C"}},
                            },
                        }
                    ],
                },
                {"role": "tool", "content": '{"temp": 21}'},
                {"role": "tool", "content": "sunny"},
            ],
            "tools": TOOLS,
        },
        "[gMASK]<sop>" + TOOLS_BLOCK + "<|user|>Weather in Paris?<|assistant|><think>Use the "
        "tool.</think><tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value>"
        '<arg_key>days</arg_key><arg_value>2</arg_value><arg_key>opts</arg_key><arg_value>{"u": '
        '"C"}</arg_value></tool_call><|observation|><tool_response>{"temp": 21}</tool_response>'
        "<tool_response>sunny</tool_response><|assistant|><think>",
    ),
]


@pytest.mark.parametrize(("kwargs", "expected"), CHATS)
def test_chat_template_renders_the_glm_format(
    tiny: Path, kwargs: dict[str, Any], expected: str
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    options = {k: v for k, v in kwargs.items() if k != "messages"}
    rendered = tokenizer.apply_chat_template(
        kwargs["messages"], tokenize=False, add_generation_prompt=True, **options
    )
    assert rendered == expected
