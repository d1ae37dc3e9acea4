"""The name table: checkpoint tensor names → model parameters, as data.

Each rule maps a checkpoint name template to a parameter name template and says where in the
parameter the tensor goes: the whole parameter, a block of rows of a fused projection (gate_up:
[gate | up]; qkv_a: [q_a | kv_a], blocks of unequal height), or one expert of a fused expert tensor
(w13: [E, gate | up, H], w2: [E, H, I]). Under tensor parallelism (model/parallel.py) a rule's
`split` names the dimension of the checkpoint tensor whose equal blocks go to the ranks in order.
`build_name_table` expands the rules for one config into a dict keyed by checkpoint name, which
the loader uses both to place tensors and to report unknown and missing keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from glm47.worker.model.config import ModelConfig


@dataclass(frozen=True)
class Rule:
    checkpoint: str  # name template; {p}: layer prefix, {e}: expert id
    param: str  # parameter template; {p}: module prefix of the layer
    shard: int | None = None  # index of the row block this tensor fills (of num_shards)
    num_shards: int = 1  # equal row blocks the parameter is split into
    per_expert: bool = False  # the tensor is expert {e} of an [E, ...] parameter
    # Unequal row blocks: the config attributes giving each block's height, in order (then
    # `shard` indexes them and num_shards is ignored).
    block_heights: tuple[str, ...] = ()
    split: int | None = None  # tensor parallelism: the dimension split over the ranks


@dataclass(frozen=True)
class Target:
    """Where one checkpoint tensor goes."""

    param: str  # parameter name in the model's named_parameters()
    expert: int | None  # index into dim 0 of the parameter, for per-expert tensors
    shard: int | None  # row block (along the first dim after `expert`), None: the whole tensor
    num_shards: int
    rows: tuple[int, int] | None = None  # [start, stop) of the block, when blocks are unequal
    split: int | None = None  # the checkpoint tensor's dimension split over tensor-parallel ranks


GLOBAL_RULES = (
    Rule("model.embed_tokens.weight", "embed_tokens.weight"),
    Rule("model.norm.weight", "norm.weight"),
    Rule("lm_head.weight", "lm_head.weight"),
)

# q_a_proj and kv_a_proj_with_mqa read the same input: one matmul, [q_a | kv_a] rows.
_QKV_A = ("q_lora_rank", "kv_cache_dim")

ATTENTION_RULES = (
    Rule("{p}.input_layernorm.weight", "{p}.input_layernorm.weight"),
    Rule("{p}.post_attention_layernorm.weight", "{p}.post_attention_layernorm.weight"),
    Rule(
        "{p}.self_attn.q_a_proj.weight", "{p}.self_attn.qkv_a_proj.weight", 0, block_heights=_QKV_A
    ),
    Rule("{p}.self_attn.q_a_layernorm.weight", "{p}.self_attn.q_a_layernorm.weight"),
    Rule("{p}.self_attn.q_b_proj.weight", "{p}.self_attn.q_b_proj.weight", split=0),
    Rule(
        "{p}.self_attn.kv_a_proj_with_mqa.weight",
        "{p}.self_attn.qkv_a_proj.weight",
        1,
        block_heights=_QKV_A,
    ),
    Rule("{p}.self_attn.kv_a_layernorm.weight", "{p}.self_attn.kv_a_layernorm.weight"),
    Rule("{p}.self_attn.kv_b_proj.weight", "{p}.self_attn.kv_b_proj.weight", split=0),
    Rule("{p}.self_attn.o_proj.weight", "{p}.self_attn.o_proj.weight", split=1),
)

DENSE_MLP_RULES = (
    Rule("{p}.mlp.gate_proj.weight", "{p}.mlp.gate_up_proj.weight", 0, 2, split=0),
    Rule("{p}.mlp.up_proj.weight", "{p}.mlp.gate_up_proj.weight", 1, 2, split=0),
    Rule("{p}.mlp.down_proj.weight", "{p}.mlp.down_proj.weight", split=1),
)

_SHARED = "{p}.mlp.shared_experts"
MOE_RULES = (
    Rule("{p}.mlp.gate.weight", "{p}.mlp.gate_weight"),
    Rule("{p}.mlp.gate.e_score_correction_bias", "{p}.mlp.e_score_correction_bias"),
    Rule("{p}.mlp.experts.{e}.gate_proj.weight", "{p}.mlp.w13", 0, 2, per_expert=True, split=0),
    Rule("{p}.mlp.experts.{e}.up_proj.weight", "{p}.mlp.w13", 1, 2, per_expert=True, split=0),
    Rule("{p}.mlp.experts.{e}.down_proj.weight", "{p}.mlp.w2", per_expert=True, split=1),
    Rule(f"{_SHARED}.gate_proj.weight", f"{_SHARED}.gate_up_proj.weight", 0, 2, split=0),
    Rule(f"{_SHARED}.up_proj.weight", f"{_SHARED}.gate_up_proj.weight", 1, 2, split=0),
    Rule(f"{_SHARED}.down_proj.weight", f"{_SHARED}.down_proj.weight", split=1),
)

# The MTP layer's own head: {p} is the checkpoint prefix, the parameter is mtp.{name}.
MTP_HEAD_RULES = (
    Rule("{p}.enorm.weight", "mtp.enorm.weight"),
    Rule("{p}.hnorm.weight", "mtp.hnorm.weight"),
    Rule("{p}.eh_proj.weight", "mtp.eh_proj.weight"),
    Rule("{p}.shared_head.norm.weight", "mtp.shared_head_norm.weight"),
)

# Copies of the main embedding and lm_head that some MTP checkpoints carry. The main model's
# tensors are used instead (as SGLang and LightLLM do); the loader checks the shapes agree.
MTP_DUPLICATE_RULES = (
    Rule("{p}.embed_tokens.weight", "embed_tokens.weight"),
    Rule("{p}.shared_head.head.weight", "lm_head.weight"),
)


def build_name_table(cfg: ModelConfig, with_mtp: bool) -> dict[str, Target]:
    """Every checkpoint tensor the model needs, and where each goes."""
    table: dict[str, Target] = {}
    for rule in GLOBAL_RULES:
        _add(table, cfg, rule, "", "")
    for layer in range(cfg.num_hidden_layers):
        _add_layer(table, cfg, layer, f"layers.{layer}")
    if with_mtp:
        layer = cfg.mtp_layer_index
        _add_layer(table, cfg, layer, "mtp.layer")
        for rule in MTP_HEAD_RULES:
            _add(table, cfg, rule, f"model.layers.{layer}", "")
    return table


def mtp_duplicate_names(cfg: ModelConfig) -> dict[str, str]:
    """Optional MTP checkpoint names that duplicate a main parameter: name → parameter."""
    prefix = f"model.layers.{cfg.mtp_layer_index}"
    return {rule.checkpoint.format(p=prefix): rule.param for rule in MTP_DUPLICATE_RULES}


def is_mtp_name(cfg: ModelConfig, name: str) -> bool:
    return name.startswith(f"model.layers.{cfg.mtp_layer_index}.")


def _add_layer(table: dict[str, Target], cfg: ModelConfig, layer: int, module: str) -> None:
    rules = ATTENTION_RULES + (MOE_RULES if cfg.is_moe_layer(layer) else DENSE_MLP_RULES)
    for rule in rules:
        _add(table, cfg, rule, f"model.layers.{layer}", module, cfg.n_routed_experts)


def _add(
    table: dict[str, Target],
    cfg: ModelConfig,
    rule: Rule,
    ckpt_prefix: str,
    module: str,
    num_experts: int = 0,
) -> None:
    experts = range(num_experts) if rule.per_expert else [None]
    rows = None
    if rule.block_heights and rule.shard is not None:
        heights = [int(getattr(cfg, attr)) for attr in rule.block_heights]
        start = sum(heights[: rule.shard])
        rows = (start, start + heights[rule.shard])
    for expert in experts:
        name = rule.checkpoint.format(p=ckpt_prefix, e=expert)
        param = rule.param.format(p=module)
        table[name] = Target(param, expert, rule.shard, rule.num_shards, rows, rule.split)
