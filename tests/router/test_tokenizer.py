"""glm47.Tokenizer encodes and decodes like transformers, adds no BOS, knows special tokens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import PreTrainedTokenizerFast

import glm47

TEXTS = [
    "Hello, world!",
    "今天北京的天气怎么样？ 😀🎉",
    "  leading spaces, tabs\tand\nnewlines\n",
    "café naïve Zürich ÆØÅ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "",
]


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_round_trip(native_tokenizer: Any, text: str) -> None:
    ids = native_tokenizer.encode(text)
    assert native_tokenizer.decode(ids) == text


@pytest.mark.parametrize("text", TEXTS)
def test_ids_match_transformers_without_special_tokens(
    native_tokenizer: Any, hf_tokenizer: PreTrainedTokenizerFast, text: str
) -> None:
    assert native_tokenizer.encode(text) == hf_tokenizer.encode(text, add_special_tokens=False)


def test_no_bos_is_added(native_tokenizer: Any, hf_tokenizer: PreTrainedTokenizerFast) -> None:
    ids = native_tokenizer.encode("hello")
    assert not set(ids) & set(native_tokenizer.special_token_ids)
    prefix = [hf_tokenizer.convert_tokens_to_ids(t) for t in ("[gMASK]", "<sop>")]
    assert native_tokenizer.encode("[gMASK]<sop>hello") == prefix + ids


def test_special_tokens_in_text_are_single_ids(
    native_tokenizer: Any, hf_tokenizer: PreTrainedTokenizerFast
) -> None:
    text = "[gMASK]<sop><|user|>你好<|assistant|><think>"
    ids = native_tokenizer.encode(text)
    specials = ["[gMASK]", "<sop>", "<|user|>"]
    assert ids[:3] == [hf_tokenizer.convert_tokens_to_ids(t) for t in specials]
    assert ids[-2:] == [hf_tokenizer.convert_tokens_to_ids(t) for t in ("<|assistant|>", "<think>")]
    assert native_tokenizer.decode(ids) == text
    assert native_tokenizer.decode(ids, skip_special_tokens=True) == "你好"


def test_rendered_prompt_tokenizes_like_transformers(
    native_tokenizer: Any, hf_tokenizer: PreTrainedTokenizerFast
) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "天气 in Paris?"},
    ]
    text = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    want = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    prompt = native_tokenizer.apply_chat_template(messages)
    assert prompt == text
    assert native_tokenizer.encode(prompt) == want


def test_properties_come_from_the_model_files(native_tokenizer: Any, model_dir: Path) -> None:
    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert native_tokenizer.eos_token_ids == generation["eos_token_id"]
    tokenizer_json = json.loads((model_dir / "tokenizer.json").read_text())
    expected = len(tokenizer_json["model"]["vocab"])
    assert native_tokenizer.vocab_size == expected
    assert len(native_tokenizer.special_token_ids) == 20


def test_missing_files_raise_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tokenizer"):
        glm47.Tokenizer(str(tmp_path))
