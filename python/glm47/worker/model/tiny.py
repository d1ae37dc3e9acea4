"""`make_tiny_model`: a complete, tiny glm4_moe_lite model directory for tests and CPU serving.

It holds config.json, model.safetensors (random weights under the real checkpoint names, per-expert
tensors and an MTP layer included), tokenizer.json, tokenizer_config.json, chat_template.jinja and
generation_config.json. The same seed always gives the same files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from glm47.worker.model.config import ModelConfig
from glm47.worker.model.layers.norm import RMSNorm
from glm47.worker.model.loader import build_model, param_slice
from glm47.worker.model.tiny_tokenizer import (
    CHAT_TEMPLATE,
    EOS_TOKENS,
    PAD_TOKEN,
    train_tokenizer,
)
from glm47.worker.model.weight_map import build_name_table

TINY_DIMS: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 3,
    "first_k_dense_replace": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "q_lora_rank": 32,
    "kv_lora_rank": 32,
    "qk_nope_head_dim": 16,
    "qk_rope_head_dim": 8,
    "v_head_dim": 16,
    "intermediate_size": 128,
    "moe_intermediate_size": 32,
    "n_routed_experts": 8,
    "n_shared_experts": 1,
    "num_experts_per_tok": 2,
    "n_group": 1,
    "topk_group": 1,
    "routed_scaling_factor": 1.8,
    "norm_topk_prob": True,
    "max_position_embeddings": 4096,
    "num_nextn_predict_layers": 1,
}
WEIGHT_STD = 0.08  # large enough that greedy decoding depends on the context
EMBED_STD = 1.0  # token embeddings of unit scale make the first layer input-dependent


def tiny_config(vocab_size: int, eos_ids: list[int], pad_id: int) -> dict[str, Any]:
    return {
        "architectures": ["Glm4MoeLiteForCausalLM"],
        "model_type": "glm4_moe_lite",
        "vocab_size": vocab_size,
        **TINY_DIMS,
        "hidden_act": "silu",
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-05,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": False,
        "topk_method": "noaux_tc",
        "initializer_range": WEIGHT_STD,
        "pad_token_id": pad_id,
        "eos_token_id": eos_ids,
        "dtype": "bfloat16",
        "use_cache": True,
    }


def make_tiny_model(path: str | Path, seed: int = 0) -> Path:
    """Write the tiny model into `path` (created if needed) and return it."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer()
    tokenizer.save(str(out / "tokenizer.json"))
    eos_ids = [_token_id(tokenizer.token_to_id(t), t) for t in EOS_TOKENS]
    pad_id = _token_id(tokenizer.token_to_id(PAD_TOKEN), PAD_TOKEN)
    config = tiny_config(tokenizer.get_vocab_size(), eos_ids, pad_id)
    _write_json(out / "config.json", config)
    save_file(
        _random_checkpoint(ModelConfig.from_dict(config), seed),
        str(out / "model.safetensors"),
        {"format": "pt"},
    )
    _write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": PAD_TOKEN,
            "pad_token": PAD_TOKEN,
            "model_max_length": TINY_DIMS["max_position_embeddings"],
            "clean_up_tokenization_spaces": False,
            "padding_side": "left",
        },
    )
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    _write_json(
        out / "generation_config.json",
        {
            "eos_token_id": eos_ids,
            "pad_token_id": pad_id,
            "do_sample": True,
            "temperature": 1.0,
            "top_p": 0.95,
        },
    )
    return out


def _random_checkpoint(cfg: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """bf16 tensors under the checkpoint names, cut out of a randomly filled model."""
    model = build_model(cfg, device=torch.device("cpu"), dtype=torch.float32, with_mtp=cfg.has_mtp)
    gen = torch.Generator().manual_seed(seed)
    norms = {id(m.weight) for m in model.modules() if isinstance(m, RMSNorm)}
    for name, param in model.named_parameters():
        if id(param) in norms:
            param.data.uniform_(0.8, 1.2, generator=gen)
        elif name.endswith("e_score_correction_bias"):
            param.data.uniform_(-0.05, 0.05, generator=gen)
        else:
            std = EMBED_STD if name == "embed_tokens.weight" else WEIGHT_STD
            param.data.normal_(0.0, std, generator=gen)
    params = dict(model.named_parameters())
    tensors = {}
    for name, target in build_name_table(cfg, with_mtp=cfg.has_mtp).items():
        tensor = param_slice(params[target.param], target)
        keep_fp32 = name.endswith("e_score_correction_bias")
        tensors[name] = tensor.to(torch.float32 if keep_fp32 else torch.bfloat16).contiguous()
    return tensors


def _token_id(token_id: int | None, token: str) -> int:
    if token_id is None:
        raise ValueError(f"the tiny tokenizer lacks {token}")
    return token_id


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
