"""`ModelConfig`: every dimension of a glm4_moe_lite checkpoint, read from its config.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL_TYPE = "glm4_moe_lite"


@dataclass(frozen=True)
class ModelConfig:
    """The architecture of one checkpoint. Model code reads every size from here."""

    vocab_size: int  # rows of embed_tokens and lm_head
    hidden_size: int  # H: width of the residual stream
    num_hidden_layers: int  # L: decoder layers of the main model (the MTP layer is extra)
    num_attention_heads: int  # query heads of MLA
    q_lora_rank: int  # width of the compressed query (q_a_proj output)
    kv_lora_rank: int  # width of the cached latent c (512 on the real model)
    qk_nope_head_dim: int  # per-head query/key dims without rope
    qk_rope_head_dim: int  # per-head rope dims; k_rope is one vector shared by all heads
    v_head_dim: int  # per-head value dims
    intermediate_size: int  # dense MLP width (the first `first_k_dense_replace` layers)
    moe_intermediate_size: int  # width of one routed expert
    n_routed_experts: int  # E
    n_shared_experts: int  # shared expert width = n_shared_experts * moe_intermediate_size
    num_experts_per_tok: int  # top-k of the router
    n_group: int  # expert groups for group-limited routing
    topk_group: int  # groups kept per token
    routed_scaling_factor: float  # multiplies the (renormalised) routing weights
    norm_topk_prob: bool  # renormalise the top-k weights to sum to 1
    mlp_layer_types: tuple[str, ...]  # "dense" or "sparse" for each main layer
    rope_theta: float  # rope base
    rms_norm_eps: float  # eps of every RMSNorm but q_a_layernorm / kv_a_layernorm
    max_position_embeddings: int  # longest sequence the rope cache covers
    num_nextn_predict_layers: int  # MTP layers in the checkpoint (0 or 1)
    eos_token_ids: tuple[int, ...]  # tokens that end generation
    pad_token_id: int | None  # padding id of the tokenizer, if any
    tie_word_embeddings: bool  # lm_head shares embed_tokens' weight
    hidden_act: str = "silu"  # activation of MLPs and experts
    latent_norm_eps: float = 1e-6  # eps of q_a_layernorm / kv_a_layernorm (transformers' default)

    def __post_init__(self) -> None:
        positive = (
            "vocab_size hidden_size num_hidden_layers num_attention_heads q_lora_rank kv_lora_rank "
            "qk_nope_head_dim qk_rope_head_dim v_head_dim intermediate_size moe_intermediate_size "
            "n_routed_experts num_experts_per_tok n_group topk_group max_position_embeddings"
        ).split()
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"config field {name} must be positive, got {getattr(self, name)}")
        if self.qk_rope_head_dim % 2:
            raise ValueError(f"qk_rope_head_dim must be even, got {self.qk_rope_head_dim}")
        if self.n_routed_experts % self.n_group or self.topk_group > self.n_group:
            raise ValueError(
                f"n_routed_experts={self.n_routed_experts} must split into n_group={self.n_group} "
                f"groups and topk_group={self.topk_group} must not exceed n_group"
            )
        if self.num_experts_per_tok > self.n_routed_experts:
            raise ValueError("num_experts_per_tok exceeds n_routed_experts")
        if len(self.mlp_layer_types) != self.num_hidden_layers:
            raise ValueError(
                f"mlp_layer_types has {len(self.mlp_layer_types)} entries for "
                f"{self.num_hidden_layers} layers"
            )
        bad = sorted(set(self.mlp_layer_types) - {"dense", "sparse"})
        if bad:
            raise ValueError(f"unknown mlp_layer_types {bad}")
        if self.hidden_act != "silu":
            raise ValueError(f"only silu experts are supported, got {self.hidden_act!r}")
        if self.num_nextn_predict_layers not in (0, 1):
            raise ValueError("num_nextn_predict_layers must be 0 or 1")

    @property
    def qk_head_dim(self) -> int:
        """Per-head query/key width: nope + rope dims (256 on the real model)."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def kv_cache_dim(self) -> int:
        """Values cached per token and layer: [kv_lora_rank latent | qk_rope_head_dim k_rope]."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def softmax_scale(self) -> float:
        return float(self.qk_head_dim**-0.5)

    @property
    def has_mtp(self) -> bool:
        return self.num_nextn_predict_layers > 0

    @property
    def mtp_layer_index(self) -> int:
        """Checkpoint index (and KV cache layer) of the MTP layer."""
        return self.num_hidden_layers

    def is_moe_layer(self, layer: int) -> bool:
        """The MTP layer (index num_hidden_layers) is always an MoE layer."""
        return layer >= self.num_hidden_layers or self.mlp_layer_types[layer] == "sparse"

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        if raw.get("model_type", MODEL_TYPE) != MODEL_TYPE:
            raise ValueError(f"model_type {raw.get('model_type')!r} is not {MODEL_TYPE!r}")
        layers = _num(raw, "num_hidden_layers", int)
        return cls(
            vocab_size=_num(raw, "vocab_size", int),
            hidden_size=_num(raw, "hidden_size", int),
            num_hidden_layers=layers,
            num_attention_heads=_num(raw, "num_attention_heads", int),
            q_lora_rank=_q_lora_rank(raw),
            kv_lora_rank=_num(raw, "kv_lora_rank", int),
            qk_nope_head_dim=_num(raw, "qk_nope_head_dim", int),
            qk_rope_head_dim=_num(raw, "qk_rope_head_dim", int),
            v_head_dim=_num(raw, "v_head_dim", int),
            intermediate_size=_num(raw, "intermediate_size", int),
            moe_intermediate_size=_num(raw, "moe_intermediate_size", int),
            n_routed_experts=_num(raw, "n_routed_experts", int),
            n_shared_experts=_num(raw, "n_shared_experts", int, 1),
            num_experts_per_tok=_num(raw, "num_experts_per_tok", int),
            n_group=_num(raw, "n_group", int, None) or 1,
            topk_group=_num(raw, "topk_group", int, None) or 1,
            routed_scaling_factor=_num(raw, "routed_scaling_factor", float, 1.0),
            norm_topk_prob=bool(raw.get("norm_topk_prob", True)),
            mlp_layer_types=_mlp_layer_types(raw, layers),
            rope_theta=_rope_theta(raw),
            rms_norm_eps=_num(raw, "rms_norm_eps", float, 1e-5),
            max_position_embeddings=_num(raw, "max_position_embeddings", int),
            num_nextn_predict_layers=_num(raw, "num_nextn_predict_layers", int, 0),
            eos_token_ids=_int_tuple(raw.get("eos_token_id")),
            pad_token_id=raw.get("pad_token_id"),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            hidden_act=str(raw.get("hidden_act", "silu")),
        )

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> ModelConfig:
        """Read `model_dir/config.json`; a bad or missing value is an error naming the file."""
        path = Path(model_dir) / "config.json"
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        try:
            return cls.from_dict(raw)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: {e}") from e


_REQUIRED = object()


def _num(raw: dict[str, Any], key: str, kind: type, default: Any = _REQUIRED) -> Any:
    """`raw[key]` as an int or float (`default` where it is missing: None passes through), or an
    error naming the field."""
    if key not in raw or raw[key] is None:
        if default is _REQUIRED:
            raise ValueError(f"{key} is missing")
        return default
    value = raw[key]
    try:
        if isinstance(value, bool) or (
            kind is int and isinstance(value, float) and not value.is_integer()
        ):
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        name = "an integer" if kind is int else "a number"
        raise ValueError(f"{key} is {value!r}, not {name}") from None


def _q_lora_rank(raw: dict[str, Any]) -> int:
    if raw.get("q_lora_rank") is None:
        raise ValueError("q_lora_rank is null: only the low-rank query projection is supported")
    return _num(raw, "q_lora_rank", int)


def _mlp_layer_types(raw: dict[str, Any], layers: int) -> tuple[str, ...]:
    """`mlp_layer_types` when given, else `first_k_dense_replace` dense layers then MoE layers."""
    types = raw.get("mlp_layer_types")
    if types is not None:
        return tuple(str(t) for t in types)
    first_dense = _num(raw, "first_k_dense_replace", int, 1)
    return tuple("dense" if i < first_dense else "sparse" for i in range(layers))


def _rope_theta(raw: dict[str, Any]) -> float:
    """`rope_theta`, or `rope_parameters.rope_theta`; only plain (unscaled, full) rope is valid."""
    params = raw.get("rope_parameters") or {}
    scaling = raw.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type")
    if rope_type not in (None, "default"):
        raise ValueError(f"rope_type {rope_type!r} is not supported (only default rope)")
    factor = float(params.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0)))
    if factor != 1.0:
        raise ValueError(f"partial_rotary_factor {factor} is not supported (only 1.0)")
    if raw.get("rope_interleave") is False:
        raise ValueError("rope_interleave=false is not supported (the model uses interleaved rope)")
    theta = params.get("rope_theta", raw.get("rope_theta"))
    if theta is None:
        raise ValueError("config.json has neither rope_theta nor rope_parameters.rope_theta")
    return float(theta)


def _int_tuple(value: int | list[int] | None) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)
