"""The MTP layer against the same computation written with transformers' decoder layer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import Glm4MoeLiteConfig
from transformers.models.glm4_moe_lite import modeling_glm4_moe_lite as hf

from glm47.worker.model.context import ForwardContext
from glm47.worker.model.tiny import make_tiny_model
from tests.worker.model.reference import PageAllocator, batch, make_runner, seq


def _hf_mtp_layer(path: Path) -> tuple[hf.Glm4MoeLiteDecoderLayer, dict[str, torch.Tensor], int]:
    """transformers' decoder layer filled with checkpoint layer L (the MTP layer)."""
    raw = json.loads((path / "config.json").read_text())
    layer_idx = raw["num_hidden_layers"]
    cfg = Glm4MoeLiteConfig(**{**raw, "num_hidden_layers": layer_idx + 1})
    cfg._attn_implementation = "eager"
    cfg._experts_implementation = "eager"
    layer = hf.Glm4MoeLiteDecoderLayer(cfg, layer_idx).float()
    tensors = {k: v.float() for k, v in load_file(str(path / "model.safetensors")).items()}
    prefix = f"model.layers.{layer_idx}."
    own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    experts = range(cfg.n_routed_experts)
    state = {k: v for k, v in own.items() if ".experts." not in k}
    state["mlp.experts.gate_up_proj"] = torch.stack(
        [
            torch.cat(
                [own[f"mlp.experts.{e}.gate_proj.weight"], own[f"mlp.experts.{e}.up_proj.weight"]]
            )
            for e in experts
        ]
    )
    state["mlp.experts.down_proj"] = torch.stack(
        [own[f"mlp.experts.{e}.down_proj.weight"] for e in experts]
    )
    head = ("enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight")
    layer.load_state_dict({k: v for k, v in state.items() if k not in head}, strict=True)
    return layer.eval(), {**{k: own[k] for k in head}, **tensors}, layer_idx


def _norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    module = hf.Glm4MoeLiteRMSNorm(weight.shape[0], eps=1e-5)
    module.weight.data.copy_(weight)
    return module(x)


@torch.no_grad()
def _reference(path: Path, ids: list[int], prev_hidden: torch.Tensor) -> torch.Tensor:  # [n, H]
    layer, w, _ = _hf_mtp_layer(path)
    embeds = w["model.embed_tokens.weight"][torch.tensor(ids)]
    x = torch.cat([_norm(embeds, w["enorm.weight"]), _norm(prev_hidden, w["hnorm.weight"])], -1)
    x = (x @ w["eh_proj.weight"].T)[None]
    n = len(ids)
    positions = torch.arange(n)[None]
    cos, sin = hf.Glm4MoeLiteRotaryEmbedding(layer.self_attn.config)(x, positions)
    mask = torch.full((n, n), float("-inf")).triu(1)[None, None]
    y = layer(x, attention_mask=mask, position_ids=positions, position_embeddings=(cos, sin))
    return _norm(y[0], w["shared_head.norm.weight"])


@pytest.mark.parametrize("page_size", [1, 4])
def test_mtp_layer_matches_reference_and_uses_its_own_cache_layer(
    tmp_path: Path, page_size: int
) -> None:
    path = make_tiny_model(tmp_path / "tiny", seed=5)
    runner = make_runner(path, torch.float32, page_size)
    mtp = runner.model.mtp
    assert mtp is not None
    torch.manual_seed(0)
    ids = [17, 99, 3, 250, 7, 640]
    prev_hidden = torch.randn(len(ids), runner.cfg.hidden_size)
    alloc = PageAllocator(runner.num_pages, page_size)
    outputs = []
    for start, end in [(0, 4), (4, 5), (5, 6)]:  # a prefill then two decode steps
        inputs = runner.prepare(batch(seq(alloc, "r", ids[start:end], start)))
        ctx = ForwardContext(inputs.meta, runner.kv_cache, runner.prefill_backend)
        with torch.inference_mode():
            outputs.append(
                mtp(inputs.input_ids, prev_hidden[start:end], inputs.meta.positions, ctx)
            )
    hidden = torch.cat(outputs)
    expected = _reference(path, ids, prev_hidden)
    torch.testing.assert_close(hidden, expected, atol=2e-5, rtol=1e-4)
    logits = mtp.compute_logits(hidden)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, runner.model.compute_logits(hidden))
    layer = runner.cfg.mtp_layer_index
    assert runner.kv_cache[:layer].abs().sum() == 0  # the main layers' caches are untouched
    assert runner.kv_cache[layer].abs().sum() > 0
