"""A tiny model directory for the router's tokenizer and chat-template tests.

It holds a byte-level BPE trained on a few sentences (English, Chinese, emoji) with the GLM-4.7
special tokens, the real chat template, and small configs, so glm47.Tokenizer and transformers'
PreTrainedTokenizerFast can be compared on the same files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

TEMPLATE = Path(__file__).resolve().parents[1] / "fixtures" / "glm47_chat_template.jinja"

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<arg_key>",
    "</arg_key>",
    "<arg_value>",
    "</arg_value>",
]

CORPUS = [
    "Hello, world! The capital of France is Paris.",
    "What is the weather like in Beijing today? 今天北京的天气怎么样？",
    "def add(a, b):\n    return a + b\n",
    '{"city": "Paris", "days": 3, "metric": true}',
    "Emoji test 😀🎉 and accents: café, naïve, Zürich.",
    "The quick brown fox jumps over the lazy dog. 你好，世界！",
]


def _train_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    return tok


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with tokenizer.json, chat_template.jinja and configs."""
    path = tmp_path_factory.mktemp("router-model")
    tok = _train_tokenizer()
    tok.save(str(path / "tokenizer.json"))
    shutil.copy(TEMPLATE, path / "chat_template.jinja")
    eos = [tok.token_to_id(t) for t in ("<|endoftext|>", "<|user|>", "<|observation|>")]
    (path / "generation_config.json").write_text(
        json.dumps({"eos_token_id": eos, "temperature": 1.0, "top_p": 0.95})
    )
    (path / "config.json").write_text(
        json.dumps({"eos_token_id": eos[0], "max_position_embeddings": 4096})
    )
    (path / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "<|endoftext|>", "tokenizer_class": "PreTrainedTokenizerFast"})
    )
    return path


@pytest.fixture(scope="session")
def hf_tokenizer(model_dir: Path) -> PreTrainedTokenizerFast:
    """transformers' own tokenizer over the same files, with the real chat template."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(model_dir / "tokenizer.json"),
        chat_template=TEMPLATE.read_text(),
        eos_token="<|endoftext|>",
    )


@pytest.fixture(scope="session")
def native_tokenizer(model_dir: Path) -> Any:
    """glm47.Tokenizer over the model directory."""
    import glm47

    return glm47.Tokenizer(str(model_dir))
