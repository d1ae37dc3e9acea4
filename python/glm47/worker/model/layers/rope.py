"""Interleaved rotary embedding (GPT-J style pairs) with a cos/sin cache in the activation dtype.

Pairs (x0, x1), (x2, x3), … are rotated by one frequency each. The output is laid out as
[rotated evens | rotated odds], as transformers returns it: queries and keys get the same
permutation, so their dot products equal those of the interleaved layout. The k_rope values in
the KV cache are in this layout.

`rotate_and_cache` also stores the new tokens' latents [c | rotated k_rope] in the KV cache: the
MLA layer fills the cache before its attention backend runs. With `fused` set (see
`enable_fused_kernels`), q and k are rotated in place by one Triton kernel launch (kernels/rope),
from the same cos/sin values with the same rounding points, and that launch also writes the cache.
"""

from __future__ import annotations

import torch
from torch import nn

from glm47.kernels.rope import apply_rope_, rope_and_cache_


class InterleavedRope(nn.Module):
    fused = False

    def __init__(self, rope_dim: int, max_positions: int, theta: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.rope_dim = rope_dim
        # Computed on the CPU in fp32 exactly as the reference does, then cast and moved.
        exponents = torch.arange(0, rope_dim, 2, dtype=torch.float, device="cpu") / rope_dim
        inv_freq = 1.0 / (theta**exponents)  # [rope_dim / 2]
        positions = torch.arange(max_positions, dtype=torch.float, device="cpu")
        freqs = torch.outer(positions, inv_freq)  # [max_positions, rope_dim / 2]
        device = torch.get_default_device()
        self.cos_cache: torch.Tensor
        self.sin_cache: torch.Tensor
        self.register_buffer("cos_cache", freqs.cos().to(dtype).to(device), persistent=False)
        self.register_buffer("sin_cache", freqs.sin().to(dtype).to(device), persistent=False)
        self.cos_sin: torch.Tensor  # [max_positions, rope_dim]: cos | sin, for the fused kernel
        self.register_buffer(
            "cos_sin", torch.cat([self.cos_cache, self.sin_cache], dim=-1), persistent=False
        )

    def forward(
        self,
        positions: torch.Tensor,  # [T] int64
        q: torch.Tensor,  # [T, heads, rope_dim]
        k: torch.Tensor,  # [T, rope_dim]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fused:
            apply_rope_(q, k, positions, self.cos_sin)  # in place: views of fresh outputs
            return q, k
        cos = self.cos_cache[positions]  # [T, rope_dim / 2]
        sin = self.sin_cache[positions]
        q_out = _rotate(q, cos.unsqueeze(1), sin.unsqueeze(1))
        k_out = _rotate(k, cos, sin)
        return q_out, k_out

    def rotate_and_cache(
        self,
        positions: torch.Tensor,  # [T] int64
        q: torch.Tensor,  # [T, heads, rope_dim]
        k: torch.Tensor,  # [T, rope_dim]
        latent: torch.Tensor,  # [T, kv_lora_rank]
        kv_cache: torch.Tensor,  # [num_slots, kv_lora_rank + rope_dim]: one layer's
        slot_mapping: torch.Tensor,  # [T] int64: cache row of each token
    ) -> torch.Tensor:  # [T, heads, rope_dim]: q rotated
        """Rotate q and k and store [latent | rotated k] in `kv_cache` at `slot_mapping`."""
        if self.fused:  # in place: q and k are views of fresh outputs
            rope_and_cache_(q, k, latent, positions, self.cos_sin, kv_cache, slot_mapping)
            return q
        q_out, k_out = self(positions, q, k)
        # Slots index as given: the worker points padding rows at page 0, never below 0.
        kv_cache[slot_mapping] = torch.cat([latent, k_out], dim=-1).to(kv_cache.dtype)
        return q_out


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1 = x[..., 0::2]
    x2 = x[..., 1::2]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
