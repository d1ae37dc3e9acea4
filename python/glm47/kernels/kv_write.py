"""Writing the new tokens' latents `[c | k_rope]` into the paged cache at their slots.

A negative slot skips the token (padding rows of a captured CUDA graph point there).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from glm47.kernels.pdl import pdl_wait, use_pdl


@triton.jit(do_not_specialize_on_alignment=["slot_ptr"])
def _kv_write_kernel(
    latent_ptr,  # [T, D_LAT]
    k_rope_ptr,  # [T, D_ROPE]
    slot_ptr,  # [T] int64
    cache_ptr,  # [num_slots, D_LAT + D_ROPE]
    stride_l,
    stride_k,
    stride_c,
    D_LAT: tl.constexpr,
    D_ROPE: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t)
    if slot < 0:
        return
    offs_c = tl.arange(0, D_LAT)
    offs_r = tl.arange(0, D_ROPE)
    dst = cache_ptr + slot * stride_c
    tl.store(dst + offs_c, tl.load(latent_ptr + t * stride_l + offs_c))
    tl.store(dst + D_LAT + offs_r, tl.load(k_rope_ptr + t * stride_k + offs_r))


def write_kv(
    kv_cache: torch.Tensor,  # [num_slots, D_LAT + D_ROPE]
    latent: torch.Tensor,  # [T, D_LAT]
    k_rope: torch.Tensor,  # [T, D_ROPE]
    slot_mapping: torch.Tensor,  # [T] int64, -1 = skip
) -> None:
    """kv_cache[slot_mapping[t]] = [latent[t] | k_rope[t]] for every t with a slot."""
    t, d_lat = latent.shape
    d_rope = k_rope.shape[1]
    if k_rope.shape[0] != t or slot_mapping.shape != (t,):
        raise ValueError("latent, k_rope and slot_mapping need one row per token")
    if kv_cache.dim() != 2 or kv_cache.shape[1] != d_lat + d_rope:
        raise ValueError(f"kv_cache must be [slots, {d_lat + d_rope}], got {tuple(kv_cache.shape)}")
    if latent.dtype != kv_cache.dtype or k_rope.dtype != kv_cache.dtype:
        raise ValueError("latent, k_rope and kv_cache must share a dtype")
    if slot_mapping.dtype != torch.int64:
        raise ValueError("slot_mapping must be int64")
    if min(latent.stride(1), k_rope.stride(1), kv_cache.stride(1)) != 1:
        raise ValueError("latent, k_rope and kv_cache need a contiguous last dimension")
    for dim in (d_lat, d_rope):
        if dim & (dim - 1):
            raise ValueError(f"widths must be powers of two, got {dim}")
    if t == 0:
        return
    _kv_write_kernel[(t,)](
        latent, k_rope, slot_mapping, kv_cache,
        latent.stride(0), k_rope.stride(0), kv_cache.stride(0),
        D_LAT=d_lat, D_ROPE=d_rope, num_warps=2,
        USE_PDL=use_pdl(kv_cache), launch_pdl=use_pdl(kv_cache),
    )  # fmt: skip


def write_kv_ref(
    kv_cache: torch.Tensor,  # [num_slots, D_LAT + D_ROPE]
    latent: torch.Tensor,  # [T, D_LAT]
    k_rope: torch.Tensor,  # [T, D_ROPE]
    slot_mapping: torch.Tensor,  # [T] int64
) -> None:
    """Plain torch reference."""
    keep = slot_mapping >= 0
    kv_cache[slot_mapping[keep]] = torch.cat([latent, k_rope], dim=-1)[keep]
