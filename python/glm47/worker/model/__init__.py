"""The glm4_moe_lite model (GLM-4.7-Flash).

- `config.ModelConfig`: every dimension, read from config.json.
- `layers/`: linear, norm (fused residual add), interleaved rope, MLA attention (attention itself
  in an `attention` backend), dense MLP, MoE (routing in `moe.select_experts`, expert compute in
  an `experts` backend), embedding and lm_head.
- `glm4_moe_lite.Glm4MoeLiteForCausalLM`: architecture only; `mtp.MTPLayer`: the draft layer.
- `weight_map` (the checkpoint name table) and `loader` (safetensors or dummy weights).
- `tiny.make_tiny_model`: a complete tiny model directory for tests and CPU serving.

Conventions shared with the attention backends: the KV cache row of a token is
[kv_lora_rank normalised latent | qk_rope_head_dim roped k], the rope part in the
[rotated evens | rotated odds] layout that `layers.rope` returns for both q_rope and k_rope.
"""
