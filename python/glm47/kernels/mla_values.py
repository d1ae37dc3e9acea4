"""MLA decode's merge of slices and the heads' W_UV product in one kernel (small batches).

`mla_decode` ends with a merge kernel ([B, H] programs, each combining one head's slices into an
attended latent row) and the attention backend then multiplies each head's row by W_UV. At a
few sequences both are latency-bound launches that move little data. Here one program per
(column block of v, head) loads its W_UV tile [BLOCK_N, D_LAT] first (a weight: before the
dependent-launch wait), then for each sequence merges the head's slices as the merge kernel does
(`merged_row`: the same weights and fp32 sums, over CHUNK_S slices a step where the merge kernel
takes them all at once; the row rounded to the activation dtype) and multiplies the row by the
tile with fp32 sums. Every column block of a head repeats that head's merge, so the partials are
read `V / BLOCK_N` times: worth it while the batch and its live slices are small.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from glm47.kernels.mla_decode import decode_partials, merged_row, mla_decode_ref
from glm47.kernels.pdl import pdl_wait, use_pdl

# Launch settings reasoned from the kernel compiled for sm_90 (ptxas; 20 heads, D_LAT 512, bf16,
# 64 slices), not timed: column blocks of 16 give 16 x 20 = 320 programs for v_dim 256 (the
# measured W_UV product alone ran best with 640), and with 4 warps and 16 slices a step a program
# holds 168 registers a thread without spilling, so three fit a multiprocessor and all 320 are
# resident at once on 132. One step of 16 slices merges the 16 live slices of a 1K-token context
# at batch 1 (of 64); whole 64-slice rows at once, as the merge kernel takes them, need 255
# registers and spill. Column blocks of 32 would read the partials half as often, with half the
# programs (234 registers, two a multiprocessor).
DEFAULT_BLOCK_N = 16
DEFAULT_NUM_WARPS = 4
DEFAULT_CHUNK_S = 16

_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


# The batch size, split count and the partials' row stride change from step to step outside
# CUDA graphs: one compiled variant serves them all.
@triton.jit(do_not_specialize=["batch", "stride_plb", "num_splits"])
def _merge_values_kernel(
    part_out_ptr,  # [B, num_splits, H, D_LAT] fp32
    part_lse_ptr,  # [B, num_splits, H] fp32, log2 units
    w_ptr,  # [H, V, D_LAT] W_UV (any strides)
    out_ptr,  # [B, H, V]
    batch,
    v_dim,
    stride_pob,
    stride_pos,
    stride_poh,
    stride_plb,
    stride_pls,
    stride_wh,
    stride_wn,
    stride_wk,
    stride_ob,
    stride_oh,
    num_splits,
    ACT_DTYPE: tl.constexpr,  # the attended latents' dtype, where the merged row is rounded
    D_LAT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr,
    CHUNK_S: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pid_n = tl.program_id(0)
    h = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < v_dim
    offs_k = tl.arange(0, D_LAT)
    # No kernel writes W_UV: its tile is read before the wait, overlapping the split kernel.
    w = tl.load(
        w_ptr
        + h * stride_wh
        + offs_n[:, None].to(tl.int64) * stride_wn
        + offs_k[None, :] * stride_wk,
        mask=mask_n[:, None],
        other=0.0,
    )  # [BLOCK_N, D_LAT]
    pdl_wait(USE_PDL)

    for b in range(batch):
        row = merged_row(part_out_ptr, part_lse_ptr, b, h, stride_pob, stride_pos, stride_poh,
                         stride_plb, stride_pls, num_splits, D_LAT, BLOCK_S, CHUNK_S)  # fmt: skip
        # The merge kernel's output dtype, then the weight's, as the separate product sees it.
        x = row.to(ACT_DTYPE).to(w.dtype).to(tl.float32)  # [D_LAT]
        acc = tl.sum(x[None, :] * w.to(tl.float32), 1)  # [BLOCK_N]
        out = out_ptr + b * stride_ob + h * stride_oh + offs_n
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask_n)


def merge_values(
    part_out: torch.Tensor,  # [B, num_splits, H, D_LAT] fp32
    part_lse: torch.Tensor,  # [B, num_splits, H] fp32, log2 units
    w_uv: torch.Tensor,  # [H, V, D_LAT]
    act_dtype: torch.dtype,
    block_n: int = DEFAULT_BLOCK_N,
    num_warps: int = DEFAULT_NUM_WARPS,
    chunk_s: int = DEFAULT_CHUNK_S,
) -> torch.Tensor:  # [B, H, V] in w_uv's dtype, contiguous
    """`v[b, h] = W_UV[h] @ merge(partials of b, h)`, the merged row rounded to `act_dtype`
    first (as `mla_decode` returns it). The output is contiguous: o_proj reads it as [B, H * V]."""
    if part_out.dim() != 4 or part_out.dtype != torch.float32 or part_out.stride(3) != 1:
        raise ValueError("part_out must be fp32 [B, num_splits, H, D_LAT], contiguous last dim")
    b, splits, h, d_lat = part_out.shape
    if part_lse.shape != (b, splits, h) or part_lse.dtype != torch.float32:
        raise ValueError(f"part_lse must be fp32 {(b, splits, h)}, got {tuple(part_lse.shape)}")
    if part_lse.stride(2) != 1:
        raise ValueError("part_lse needs a contiguous last dimension")
    if w_uv.dim() != 3 or w_uv.shape[0] != h or w_uv.shape[2] != d_lat:
        raise ValueError(f"w_uv must be [{h}, V, {d_lat}], got {tuple(w_uv.shape)}")
    if w_uv.dtype not in _TL_DTYPES or act_dtype not in _TL_DTYPES:
        raise ValueError(f"w_uv and activations need fp16, bf16 or fp32, got {w_uv.dtype}")
    for name, dim in (("the latent width", d_lat), ("block_n", block_n), ("chunk_s", chunk_s)):
        if dim < 1 or dim & (dim - 1):
            raise ValueError(f"{name} must be a power of two, got {dim}")
    if not 1 <= splits <= 64:
        raise ValueError(f"num_splits must be in [1, 64], got {splits}")
    v_dim = w_uv.shape[1]
    out = torch.empty((b, h, v_dim), dtype=w_uv.dtype, device=part_out.device)
    if b == 0 or v_dim == 0:
        return out
    pdl = use_pdl(part_out)
    _merge_values_kernel[(triton.cdiv(v_dim, block_n), h)](
        part_out, part_lse, w_uv, out, b, v_dim,
        part_out.stride(0), part_out.stride(1), part_out.stride(2),
        part_lse.stride(0), part_lse.stride(1),
        w_uv.stride(0), w_uv.stride(1), w_uv.stride(2), out.stride(0), out.stride(1), splits,
        ACT_DTYPE=_TL_DTYPES[act_dtype], D_LAT=d_lat, BLOCK_N=block_n,
        BLOCK_S=max(2, triton.next_power_of_2(splits)), CHUNK_S=chunk_s, USE_PDL=pdl,
        num_warps=num_warps, launch_pdl=pdl,
    )  # fmt: skip
    return out


def mla_decode_values(
    q: torch.Tensor,  # [B, H, D_LAT + D_ROPE], or [B, H, D_LAT] with q_rope
    kv_cache: torch.Tensor,  # [num_slots, D_LAT + D_ROPE]
    page_table: torch.Tensor,  # [B, max_pages] int32
    seq_lens: torch.Tensor,  # [B] int32, >= 1
    page_size: int,
    scale: float,
    w_uv: torch.Tensor,  # [H, V, D_LAT]
    d_rope: int = 64,
    num_splits: int = 4,
    q_rope: torch.Tensor | None = None,  # [B, H, D_ROPE]: the roped part, when q holds D_LAT
    block_n: int = DEFAULT_BLOCK_N,
    num_warps: int = DEFAULT_NUM_WARPS,
    chunk_s: int = DEFAULT_CHUNK_S,
) -> torch.Tensor:  # [B, H, V] in w_uv's dtype, contiguous
    """The heads' values of one query token per sequence, `W_UV[h] @ mla_decode(...)[b, h]`, in
    two launches: the split kernel, then the merge inside the W_UV product (`block_n`,
    `num_warps`, `chunk_s`: that kernel's launch). The arguments before `w_uv` are
    `mla_decode`'s."""
    part_out, part_lse = decode_partials(
        q, kv_cache, page_table, seq_lens, page_size, scale, d_rope, num_splits, q_rope=q_rope
    )
    return merge_values(part_out, part_lse, w_uv, q.dtype, block_n, num_warps, chunk_s)


def mla_decode_values_ref(
    q: torch.Tensor,  # [B, H, D_LAT + D_ROPE]
    kv_cache: torch.Tensor,  # [num_slots, D_LAT + D_ROPE]
    page_table: torch.Tensor,  # [B, max_pages] int32
    seq_lens: torch.Tensor,  # [B] int32
    page_size: int,
    scale: float,
    w_uv: torch.Tensor,  # [H, V, D_LAT]
    d_rope: int = 64,
) -> torch.Tensor:  # [B, H, V] in w_uv's dtype
    """Plain torch reference of `mla_decode_values`: `mla_decode_ref` (rounded to q's dtype),
    then each head's product with W_UV in fp32."""
    att = mla_decode_ref(q, kv_cache, page_table, seq_lens, page_size, scale, d_rope)
    return torch.einsum("bhr,hvr->bhv", att.float(), w_uv.float()).to(w_uv.dtype)


__all__ = [
    "DEFAULT_BLOCK_N",
    "DEFAULT_CHUNK_S",
    "DEFAULT_NUM_WARPS",
    "merge_values",
    "mla_decode_values",
    "mla_decode_values_ref",
]
