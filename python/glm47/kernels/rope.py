"""Interleaved (GPT-J pair) rotary embedding of q_rope and k_rope, in place; optionally the same
launch stores the new tokens' latents `[c | roped k_rope]` in the paged KV cache.

Pair i = (x[2i], x[2i+1]) is rotated by angle pos * theta^(-2i/R). The result is written in the
half-split layout `[x0 cos - x1 sin | x1 cos + x0 sin]` (evens' results, then odds'), as the model's
reference implementation returns it; q and k share the layout, so their dot products are unchanged.
Products are rounded to the activation dtype before the sum, as in the reference.

The cache write rides on the rope launch (`rope_and_cache_`): the program that rotates a token's
key already holds it, and each kernel of a layer's chain of short kernels costs a decode step
about a microsecond. A negative slot skips the token's cache write (its rotation still happens).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from glm47.kernels.pdl import pdl_wait, use_pdl


@triton.jit(do_not_specialize_on_alignment=["pos_ptr", "slot_ptr"])
def _rope_kernel(
    q_ptr,  # [T, H, R] q_rope
    k_ptr,  # [T, R] k_rope
    pos_ptr,  # [T] int64
    cs_ptr,  # [max_pos, R]: cos of the R/2 pair angles, then their sin
    latent_ptr,  # [T, D_LAT] (CACHE only)
    slot_ptr,  # [T] int64 (CACHE only): cache row of each token, negative: not stored
    cache_ptr,  # [num_slots, D_LAT + R] (CACHE only)
    stride_qt,
    stride_qh,
    stride_kt,
    stride_cs,
    stride_lt,
    stride_c,
    num_heads,
    HALF: tl.constexpr,
    BLOCK_H: tl.constexpr,  # > num_heads: rows 0..H-1 are the query heads, row H the key
    D_LAT: tl.constexpr,
    CACHE: tl.constexpr,  # also store [latent | rotated key] at the token's slot
    USE_PDL: tl.constexpr,
):
    """One token per program: its query heads and its key as one tile, one read of cos and sin.

    Positions and slots are step inputs, written before the step's first kernel, so they (and
    the cos and sin they select) are read before the dependent-launch wait; after it only the
    projections' outputs are new."""
    t = tl.program_id(0).to(tl.int64)
    offs_h = tl.arange(0, BLOCK_H)
    offs_i = tl.arange(0, HALF)
    pos = tl.load(pos_ptr + t)
    cos = tl.load(cs_ptr + pos * stride_cs + offs_i)[None, :]  # [1, HALF]
    sin = tl.load(cs_ptr + pos * stride_cs + HALF + offs_i)[None, :]
    if CACHE:
        slot = tl.load(slot_ptr + t)
    pdl_wait(USE_PDL)
    q_rows = q_ptr + t * stride_qt + offs_h * stride_qh
    k_rows = k_ptr + t * stride_kt + offs_h * 0
    row = tl.where(offs_h < num_heads, q_rows, k_rows)[:, None]  # [BLOCK_H, 1]
    mask = (offs_h <= num_heads)[:, None]
    offs_r = tl.arange(0, 2 * HALF)
    x = tl.load(row + offs_r[None, :], mask=mask, other=0.0)  # [BLOCK_H, R], contiguous
    x1, x2 = tl.split(tl.reshape(x, [BLOCK_H, HALF, 2]))  # evens, odds: [BLOCK_H, HALF]
    dt = x1.dtype
    a = ((x1 * cos).to(dt).to(tl.float32) - (x2 * sin).to(dt).to(tl.float32)).to(dt)
    b = ((x2 * cos).to(dt).to(tl.float32) + (x1 * sin).to(dt).to(tl.float32)).to(dt)
    tl.store(row + offs_i[None, :], a, mask=mask)
    tl.store(row + HALF + offs_i[None, :], b, mask=mask)
    if CACHE:
        if slot >= 0:
            dst = cache_ptr + slot * stride_c
            offs_c = tl.arange(0, D_LAT)
            tl.store(dst + offs_c, tl.load(latent_ptr + t * stride_lt + offs_c))
            # the key is row H of the tile: every row points at the cache row, only H stores
            k_dst = dst + D_LAT + (offs_h * 0)[:, None] + offs_i[None, :]  # [BLOCK_H, HALF]
            is_key = (offs_h == num_heads)[:, None]
            tl.store(k_dst, a, mask=is_key)
            tl.store(k_dst + HALF, b, mask=is_key)


def rope_cos_sin(
    max_pos: int, rot_dim: int, theta: float, dtype: torch.dtype, device: torch.device | str
) -> torch.Tensor:  # [max_pos, rot_dim]
    """The cos|sin table: angles in fp32, then cast to the activation dtype."""
    inv_freq = theta ** -(
        torch.arange(0, rot_dim, 2, dtype=torch.int64, device=device).float() / rot_dim
    )
    angles = torch.arange(max_pos, device=device).float()[:, None] * inv_freq[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=-1).to(dtype)


def _check_rope(
    q_rope: torch.Tensor, k_rope: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor
) -> None:
    t, _, r = q_rope.shape
    if k_rope.shape != (t, r) or positions.shape != (t,) or cos_sin.shape[1] != r:
        raise ValueError(
            f"shapes do not fit: q {tuple(q_rope.shape)}, k {tuple(k_rope.shape)}, "
            f"positions {tuple(positions.shape)}, cos_sin {tuple(cos_sin.shape)}"
        )
    if r & (r - 1) or r < 4:
        raise ValueError(f"rope width must be a power of two >= 4, got {r}")
    if positions.dtype != torch.int64 or cos_sin.dtype != q_rope.dtype:
        raise ValueError("positions must be int64 and cos_sin in the activation dtype")
    if k_rope.dtype != q_rope.dtype:
        raise ValueError("q_rope and k_rope must share a dtype")
    if q_rope.stride(2) != 1 or k_rope.stride(1) != 1:
        raise ValueError("rope inputs need a contiguous last dimension")


def _check_cache(
    k_rope: torch.Tensor, latent: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    t, d_rope = k_rope.shape
    if latent.dim() != 2 or latent.shape[0] != t or slot_mapping.shape != (t,):
        raise ValueError(
            f"latent and slot_mapping need one row per token ({t}), got latent "
            f"{tuple(latent.shape)}, slot_mapping {tuple(slot_mapping.shape)}"
        )
    d_lat = latent.shape[1]
    if kv_cache.dim() != 2 or kv_cache.shape[1] != d_lat + d_rope:
        raise ValueError(f"kv_cache must be [slots, {d_lat + d_rope}], got {tuple(kv_cache.shape)}")
    if latent.dtype != kv_cache.dtype or k_rope.dtype != kv_cache.dtype:
        raise ValueError("latent, k_rope and kv_cache must share a dtype")
    if slot_mapping.dtype != torch.int64:
        raise ValueError("slot_mapping must be int64")
    if latent.stride(1) != 1 or kv_cache.stride(1) != 1:
        raise ValueError("latent and kv_cache need a contiguous last dimension")
    if d_lat & (d_lat - 1) or d_lat < 1:
        raise ValueError(f"the latent width must be a power of two, got {d_lat}")


def _launch(
    q_rope: torch.Tensor,
    k_rope: torch.Tensor,
    positions: torch.Tensor,
    cos_sin: torch.Tensor,
    cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,  # latent, kv_cache, slots
) -> None:
    t, heads, r = q_rope.shape
    if t == 0:
        return
    latent, kv_cache, slots = cache if cache is not None else (None, None, None)
    pdl = use_pdl(k_rope)
    _rope_kernel[(t,)](
        q_rope, k_rope, positions, cos_sin, latent, slots, kv_cache,
        q_rope.stride(0), q_rope.stride(1), k_rope.stride(0), cos_sin.stride(0),
        0 if latent is None else latent.stride(0), 0 if kv_cache is None else kv_cache.stride(0),
        heads,
        HALF=r // 2, BLOCK_H=triton.next_power_of_2(heads + 1),
        D_LAT=1 if latent is None else latent.shape[1], CACHE=cache is not None,
        num_warps=2 if heads > 4 else 1, USE_PDL=pdl, launch_pdl=pdl,
    )  # fmt: skip


def apply_rope_(
    q_rope: torch.Tensor,  # [T, H, R], may be a strided view of q
    k_rope: torch.Tensor,  # [T, R]
    positions: torch.Tensor,  # [T] int64
    cos_sin: torch.Tensor,  # [max_pos, R], from rope_cos_sin
) -> None:
    """Rotate q_rope and k_rope in place, in one launch."""
    _check_rope(q_rope, k_rope, positions, cos_sin)
    _launch(q_rope, k_rope, positions, cos_sin, None)


def rope_and_cache_(
    q_rope: torch.Tensor,  # [T, H, R], may be a strided view of q
    k_rope: torch.Tensor,  # [T, R]
    latent: torch.Tensor,  # [T, D_LAT]
    positions: torch.Tensor,  # [T] int64
    cos_sin: torch.Tensor,  # [max_pos, R], from rope_cos_sin
    kv_cache: torch.Tensor,  # [num_slots, D_LAT + R]
    slot_mapping: torch.Tensor,  # [T] int64, negative: not stored
) -> None:
    """Rotate q_rope and k_rope in place and set kv_cache[slot_mapping[t]] = [latent[t] | rotated
    k_rope[t]] for every token t with a slot, in one launch."""
    _check_rope(q_rope, k_rope, positions, cos_sin)
    _check_cache(k_rope, latent, kv_cache, slot_mapping)
    _launch(q_rope, k_rope, positions, cos_sin, (latent, kv_cache, slot_mapping))


def rope_ref(
    x: torch.Tensor,  # [..., R]
    positions: torch.Tensor,  # [T]: x's first dim
    cos_sin: torch.Tensor,  # [max_pos, R]
) -> torch.Tensor:  # [..., R]
    """Plain torch reference (returns a new tensor)."""
    half = x.shape[-1] // 2
    cs = cos_sin[positions]  # [T, R]
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (half,)
    cos, sin = cs[:, :half].reshape(shape), cs[:, half:].reshape(shape)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def write_kv_ref(
    kv_cache: torch.Tensor,  # [num_slots, D_LAT + R]
    latent: torch.Tensor,  # [T, D_LAT]
    k_rope: torch.Tensor,  # [T, R]
    slot_mapping: torch.Tensor,  # [T] int64, negative: not stored
) -> None:
    """Plain torch reference of the cache write."""
    keep = slot_mapping >= 0
    kv_cache[slot_mapping[keep]] = torch.cat([latent, k_rope], dim=-1)[keep]
