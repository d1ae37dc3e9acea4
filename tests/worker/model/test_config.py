"""ModelConfig: both rope spellings, dense/MoE layer layout, eos ids, validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from glm47.worker.model.config import ModelConfig

REAL: dict[str, Any] = {
    "model_type": "glm4_moe_lite",
    "vocab_size": 154880,
    "hidden_size": 2048,
    "num_hidden_layers": 47,
    "num_attention_heads": 20,
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
    "rope_theta": 1000000,
    "max_position_embeddings": 202752,
    "rms_norm_eps": 1e-05,
    "num_nextn_predict_layers": 1,
    "pad_token_id": 154820,
    "eos_token_id": [154820, 154827, 154829],
}


def test_the_real_config_reads_into_every_dimension() -> None:
    cfg = ModelConfig.from_dict(REAL)
    assert cfg.qk_head_dim == 256 and cfg.kv_cache_dim == 576
    assert cfg.softmax_scale == 256**-0.5
    assert cfg.mlp_layer_types == ("dense",) + ("sparse",) * 46
    assert cfg.is_moe_layer(1) and not cfg.is_moe_layer(0) and cfg.is_moe_layer(47)
    assert cfg.has_mtp and cfg.mtp_layer_index == 47
    assert cfg.eos_token_ids == (154820, 154827, 154829)
    assert cfg.rope_theta == 1e6 and cfg.latent_norm_eps == 1e-6 and cfg.rms_norm_eps == 1e-5


def test_rope_parameters_and_mlp_layer_types_spellings() -> None:
    raw = {k: v for k, v in REAL.items() if k not in ("rope_theta", "first_k_dense_replace")}
    raw["rope_parameters"] = {"rope_type": "default", "rope_theta": 5e5}
    raw["mlp_layer_types"] = ["dense", "dense"] + ["sparse"] * 45
    raw["eos_token_id"] = 7
    cfg = ModelConfig.from_dict(raw)
    assert cfg.rope_theta == 5e5
    assert cfg.mlp_layer_types[:3] == ("dense", "dense", "sparse")
    assert cfg.eos_token_ids == (7,)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "llama"}, "model_type"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4}}, "rope_type"),
        ({"n_group": 3}, "n_group"),
        ({"num_experts_per_tok": 65}, "num_experts_per_tok"),
        ({"mlp_layer_types": ["dense"]}, "mlp_layer_types"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"rope_theta": None}, "rope_theta"),
        ({"hidden_size": "abc"}, "hidden_size is 'abc', not an integer"),
        ({"num_hidden_layers": 2.5}, "num_hidden_layers is 2.5, not an integer"),
        ({"kv_lora_rank": True}, "kv_lora_rank is True"),
        ({"rms_norm_eps": [1]}, "rms_norm_eps is \\[1\\], not a number"),
        ({"vocab_size": None}, "vocab_size is missing"),
    ],
)
def test_invalid_configs_raise(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict({**REAL, **change})


def test_a_bad_value_in_config_json_names_the_file_and_the_field(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({**REAL, "hidden_size": "abc"}))
    with pytest.raises(ValueError, match=r"config\.json: hidden_size is 'abc'"):
        ModelConfig.from_dir(tmp_path)
    whole = {**REAL, "hidden_size": float(REAL["hidden_size"])}  # 2048.0 reads as 2048
    assert ModelConfig.from_dict(whole).hidden_size == REAL["hidden_size"]
