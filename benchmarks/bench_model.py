"""The bench model directory: the real GLM-4.7-Flash config and chat template format with a stand-in
tokenizer of the real vocabulary size, for serving with `--load-format dummy`.

The real tokenizer is not bundled, so a byte-level BPE is trained on ShareGPT text with as many
ordinary tokens as the real one (154820) and the GLM special tokens placed at their real ids
(154820..154879). Token counts therefore differ somewhat from the real tokenizer's; every result
produced with this directory must say that the tokenizer was a stand-in and the weights dummy.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from glm47.bench.dataset import read_packaged_sharegpt, sharegpt_pairs
from glm47.worker.model.tiny_tokenizer import OUTPUT_TAGS

VOCAB_SIZE = 154880
FIRST_SPECIAL_ID = 154820
# The special tokens whose ids the model documentation fixes; the rest of the block is reserved.
KNOWN_SPECIALS = {
    154820: "<|endoftext|>",
    154822: "[gMASK]",
    154824: "<sop>",
    154826: "<|system|>",
    154827: "<|user|>",
    154828: "<|assistant|>",
    154829: "<|observation|>",
    154841: "<think>",
    154842: "</think>",
    154843: "<tool_call>",
    154844: "</tool_call>",
    154845: "<tool_response>",
    154846: "</tool_response>",
    154847: "<arg_key>",
    154848: "</arg_key>",
    154849: "<arg_value>",
    154850: "</arg_value>",
}

GLM47_FLASH_CONFIG = {
    "architectures": ["Glm4MoeLiteForCausalLM"],
    "model_type": "glm4_moe_lite",
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 2048,
    "num_hidden_layers": 47,
    "num_attention_heads": 20,
    "num_key_value_heads": 20,
    "q_lora_rank": 768,
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 192,
    "qk_rope_head_dim": 64,
    "v_head_dim": 256,
    "intermediate_size": 10240,
    "moe_intermediate_size": 1536,
    "n_routed_experts": 64,
    "n_shared_experts": 1,
    "num_experts_per_tok": 4,
    "first_k_dense_replace": 1,
    "n_group": 1,
    "topk_group": 1,
    "routed_scaling_factor": 1.8,
    "norm_topk_prob": True,
    "topk_method": "noaux_tc",
    "rope_theta": 1000000.0,
    "rope_scaling": None,
    "partial_rotary_factor": 1.0,
    "max_position_embeddings": 202752,
    "rms_norm_eps": 1e-05,
    "tie_word_embeddings": False,
    "num_nextn_predict_layers": 1,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "torch_dtype": "bfloat16",
    "pad_token_id": 154820,
    "eos_token_id": [154820, 154827, 154829],
    "use_cache": True,
}


def special_tokens() -> dict[int, str]:
    return {
        i: KNOWN_SPECIALS.get(i, f"<|reserved_special_{i}|>")
        for i in range(FIRST_SPECIAL_ID, VOCAB_SIZE)
    }


def _texts(max_chars: int) -> Iterator[str]:
    seen = 0
    for prompt, reply in sharegpt_pairs(read_packaged_sharegpt()):
        yield prompt
        yield reply
        seen += len(prompt) + len(reply)
        if seen >= max_chars:
            return


def train_stand_in_tokenizer(max_chars: int) -> dict:
    """A byte-level BPE with exactly FIRST_SPECIAL_ID ordinary tokens, as tokenizer.json data."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=FIRST_SPECIAL_ID,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_texts(max_chars), trainer=trainer)
    data = json.loads(tok.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    filler = len(vocab)
    while len(vocab) < FIRST_SPECIAL_ID:  # pad to the real size with unreachable entries
        vocab[f"<|stand_in_unused_{filler}|>"] = len(vocab)
        filler += 1
    data["added_tokens"] = [
        {
            "id": i,
            "content": s,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": s not in OUTPUT_TAGS,  # tags the model writes must survive decoding
        }
        for i, s in special_tokens().items()
    ]
    return data


def make_bench_model_dir(
    out: str | Path, template: str | Path, max_chars: int = 40_000_000
) -> Path:
    """Write config.json, generation_config.json, tokenizer files and the chat template."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(GLM47_FLASH_CONFIG, indent=2) + "\n")
    gen = {
        "eos_token_id": GLM47_FLASH_CONFIG["eos_token_id"],
        "pad_token_id": GLM47_FLASH_CONFIG["pad_token_id"],
        "temperature": 1.0,
        "top_p": 0.95,
        "do_sample": True,
    }
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    (out / "tokenizer.json").write_text(json.dumps(train_stand_in_tokenizer(max_chars)))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "model_max_length": 202752,
            },
            indent=2,
        )
        + "\n"
    )
    (out / "chat_template.jinja").write_text(Path(template).read_text())
    (out / "STAND_IN.md").write_text(
        "Bench model directory: real GLM-4.7-Flash config and chat template; the tokenizer is a "
        "stand-in (byte-level BPE trained on ShareGPT, real vocabulary size and special-token ids). "
        "No weights: serve with --load-format dummy.\n"
    )
    return out


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description="Write the bench model directory.")
    p.add_argument("out")
    p.add_argument(
        "--template",
        default=str(Path(__file__).parents[1] / "tests" / "fixtures" / "glm47_chat_template.jinja"),
    )
    p.add_argument(
        "--max-chars",
        type=int,
        default=40_000_000,
        help="ShareGPT characters to train the stand-in tokenizer on",
    )
    args = p.parse_args()
    print(make_bench_model_dir(args.out, args.template, args.max_chars))


if __name__ == "__main__":
    main()
