"""The safetensors loader and its name table, and dummy weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from glm47.worker.model.config import ModelConfig
from glm47.worker.model.loader import (
    LOAD_WORKERS_ENV,
    CheckpointError,
    load_model,
    load_workers,
    param_slice,
)
from glm47.worker.model.tiny import make_tiny_model
from glm47.worker.model.weight_map import build_name_table

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny"), seed=3)


@pytest.fixture(scope="module")
def tensors(tiny: Path) -> dict[str, torch.Tensor]:
    return load_file(str(tiny / "model.safetensors"))


def _variant(tiny: Path, dest: Path, shards: list[dict[str, torch.Tensor]]) -> Path:
    """A copy of the tiny model directory whose weights are the given shard files."""
    dest.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(tiny / name, dest / name)
    for i, shard in enumerate(shards):
        save_file(shard, str(dest / f"model-{i:05d}.safetensors"))
    return dest


def _load(path: Path, cfg: ModelConfig | None = None) -> torch.nn.Module:
    cfg = cfg or ModelConfig.from_dir(path)
    return load_model(cfg, path, device=CPU, dtype=torch.float32)


def test_unknown_checkpoint_key_raises_with_its_name(
    tiny: Path, tensors: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    extra = {"model.layers.0.mlp.surprise.weight": torch.zeros(2)}
    path = _variant(tiny, tmp_path / "m", [tensors, extra])
    with pytest.raises(CheckpointError, match=r"unknown .*model\.layers\.0\.mlp\.surprise\.weight"):
        _load(path)


def test_missing_checkpoint_key_raises_with_its_name(
    tiny: Path, tensors: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    name = "model.layers.2.mlp.experts.5.up_proj.weight"
    path = _variant(tiny, tmp_path / "m", [{k: v for k, v in tensors.items() if k != name}])
    with pytest.raises(CheckpointError, match=r"missing .*experts\.5\.up_proj"):
        _load(path)


def test_misshapen_tensor_raises(
    tiny: Path, tensors: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    name = "model.layers.1.self_attn.kv_b_proj.weight"
    broken = {**tensors, name: tensors[name][:-1]}
    with pytest.raises(CheckpointError, match=r"wrong shape.*kv_b_proj"):
        _load(_variant(tiny, tmp_path / "m", [broken]))


def test_experts_are_fused_and_the_mtp_layer_is_loaded(
    tiny: Path, tensors: dict[str, torch.Tensor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Split over three files read by two threads; every fused slice holds its tensor."""
    monkeypatch.setenv(LOAD_WORKERS_ENV, "2")
    names = sorted(tensors)
    shards = [{n: tensors[n] for n in names[i::3]} for i in range(3)]
    model = _load(_variant(tiny, tmp_path / "m", shards))
    cfg = ModelConfig.from_dir(tiny)
    inter = cfg.moe_intermediate_size
    params = dict(model.named_parameters())
    for layer, module in [(2, "layers.2"), (3, "mtp.layer")]:
        prefix = f"model.layers.{layer}.mlp.experts.5"
        w13, w2 = params[f"{module}.mlp.w13"][5], params[f"{module}.mlp.w2"][5]
        assert torch.equal(w13[:inter], tensors[f"{prefix}.gate_proj.weight"].float())
        assert torch.equal(w13[inter:], tensors[f"{prefix}.up_proj.weight"].float())
        assert torch.equal(w2, tensors[f"{prefix}.down_proj.weight"].float())
    gate_up = params["layers.0.mlp.gate_up_proj.weight"]
    assert torch.equal(
        gate_up[cfg.intermediate_size :], tensors["model.layers.0.mlp.up_proj.weight"].float()
    )
    assert torch.equal(
        params["mtp.eh_proj.weight"], tensors["model.layers.3.eh_proj.weight"].float()
    )
    assert torch.equal(
        params["mtp.shared_head_norm.weight"],
        tensors["model.layers.3.shared_head.norm.weight"].float(),
    )
    bias = params["layers.1.mlp.e_score_correction_bias"]
    assert bias.dtype == torch.float32
    assert torch.equal(bias, tensors["model.layers.1.mlp.gate.e_score_correction_bias"])
    # the absorbed views follow the loaded kv_b_proj
    kv_b = tensors["model.layers.1.self_attn.kv_b_proj.weight"].float()
    kv_b = kv_b.view(cfg.num_attention_heads, cfg.qk_nope_head_dim + cfg.v_head_dim, -1)
    weights = model.layers[1].self_attn.mla_weights  # type: ignore[index]
    assert torch.equal(weights.w_uk, kv_b[:, : cfg.qk_nope_head_dim])
    assert torch.equal(weights.w_uv, kv_b[:, cfg.qk_nope_head_dim :])


def test_mtp_copies_of_embedding_and_head_are_checked_and_skipped(
    tiny: Path, tensors: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    copies = {
        "model.layers.3.embed_tokens.weight": torch.zeros_like(
            tensors["model.embed_tokens.weight"]
        ),
        "model.layers.3.shared_head.head.weight": torch.zeros_like(tensors["lm_head.weight"]),
    }
    model = _load(_variant(tiny, tmp_path / "ok", [tensors, copies]))
    assert torch.equal(model.embed_tokens.weight, tensors["model.embed_tokens.weight"].float())
    bad = {"model.layers.3.shared_head.head.weight": torch.zeros(3, 3)}
    with pytest.raises(CheckpointError, match=r"shared_head\.head"):
        _load(_variant(tiny, tmp_path / "bad", [tensors, bad]))


def test_checkpoint_without_mtp_layer_loads_without_it(
    tiny: Path, tensors: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    main = {k: v for k, v in tensors.items() if not k.startswith("model.layers.3.")}
    model = _load(_variant(tiny, tmp_path / "m", [main]))
    assert model.mtp is None and model.num_cache_layers == 3
    no_mtp_cfg = ModelConfig.from_dict({**_raw_config(tiny), "num_nextn_predict_layers": 0})
    with pytest.raises(CheckpointError, match=r"unknown .*model\.layers\.3\.eh_proj"):
        _load(tiny, no_mtp_cfg)


def _raw_config(path: Path) -> dict[str, object]:
    return json.loads((path / "config.json").read_text())


def test_name_table_covers_every_parameter_exactly_once(tiny: Path) -> None:
    cfg = ModelConfig.from_dir(tiny)
    model = load_model(cfg, None, device=CPU, dtype=torch.float32, load_format="dummy")
    params = dict(model.named_parameters())
    hits = {name: torch.zeros(p.shape, dtype=torch.int32) for name, p in params.items()}
    for target in build_name_table(cfg, with_mtp=True).values():
        param_slice(hits[target.param], target).add_(1)  # the view each checkpoint tensor fills
    for name, count in hits.items():
        assert bool((count == 1).all()), name


def test_fused_qkv_a_rows_hold_q_a_then_kv_a(tiny: Path) -> None:
    cfg = ModelConfig.from_dir(tiny)
    table = build_name_table(cfg, with_mtp=False)
    q_a = table["model.layers.0.self_attn.q_a_proj.weight"]
    kv_a = table["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"]
    assert q_a.param == kv_a.param == "layers.0.self_attn.qkv_a_proj.weight"
    assert q_a.rows == (0, cfg.q_lora_rank)
    assert kv_a.rows == (cfg.q_lora_rank, cfg.q_lora_rank + cfg.kv_cache_dim)


def test_dummy_weights_have_the_real_shapes_on_the_target_device(
    tiny: Path, tensors: dict[str, torch.Tensor]
) -> None:
    cfg = ModelConfig.from_dir(tiny)
    dummy = load_model(cfg, None, device=CPU, dtype=torch.bfloat16, load_format="dummy", seed=1)
    loaded = _load(tiny)
    assert dummy.mtp is not None
    shapes = {n: p.shape for n, p in dummy.named_parameters()}
    assert shapes == {n: p.shape for n, p in loaded.named_parameters()}
    params = dict(dummy.named_parameters())
    assert params["embed_tokens.weight"].dtype == torch.bfloat16
    assert params["layers.1.mlp.e_score_correction_bias"].dtype == torch.float32
    assert bool((params["layers.1.mlp.e_score_correction_bias"] == 0).all())
    assert bool((params["mtp.layer.self_attn.kv_a_layernorm.weight"] == 1).all())
    std = params["layers.2.mlp.w13"].float().std().item()
    assert 0.018 < std < 0.022
    again = load_model(cfg, None, device=CPU, dtype=torch.bfloat16, load_format="dummy", seed=1)
    assert torch.equal(again.lm_head.weight, dummy.lm_head.weight)


def test_bad_load_settings_raise(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = ModelConfig.from_dir(tiny)
    with pytest.raises(ValueError, match="load_format"):
        load_model(cfg, tiny, device=CPU, dtype=torch.float32, load_format="gguf")
    monkeypatch.setenv(LOAD_WORKERS_ENV, "0")
    with pytest.raises(ValueError, match=LOAD_WORKERS_ENV):
        load_workers()
