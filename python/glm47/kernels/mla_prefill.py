"""MLA prefill / extend attention over the paged latent cache, absorbed form, variable lengths.

Each sequence computes `q_len` new tokens at positions `[seq_len - q_len, seq_len)`; their latents
are already in the cache, so the new tokens and the cached prefix are one key range. Attention is
causal. As in decode, every head attends to the same single 576-wide key per token, so a program
takes a block of rows of the flattened `(token, head)` grid of one sequence (token-major) and loads
each key tile once for all of them: the cache is read without expanding k_nope / v.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from glm47.kernels.mla_common import LOG2E, check_q_and_cache, gather_latents, split_query


@triton.jit(
    do_not_specialize=["stride_pt"],
    do_not_specialize_on_alignment=["page_table_ptr", "seq_lens_ptr", "query_start_loc_ptr"],
)
def _mla_prefill_kernel(
    q_ptr,  # [T, H, D_LAT] (any strides, contiguous last dimension)
    qr_ptr,  # [T, H, D_ROPE] the roped part of the query
    kv_ptr,  # [num_slots, >= D_LAT + D_ROPE]
    page_table_ptr,  # [B, max_pages] int32
    query_start_loc_ptr,  # [B + 1] int32
    seq_lens_ptr,  # [B] int32
    out_ptr,  # [T, H, D_LAT]
    stride_qt,
    stride_qh,
    stride_qrt,
    stride_qrh,
    stride_kv,
    stride_pt,
    stride_ot,
    stride_oh,
    num_heads,
    scale_log2,
    PAGE_SIZE: tl.constexpr,
    D_LAT: tl.constexpr,
    D_ROPE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    mblk = tl.program_id(0)
    b = tl.program_id(1)
    q_start = tl.load(query_start_loc_ptr + b)
    q_len = tl.load(query_start_loc_ptr + b + 1) - q_start
    if mblk * BLOCK_M >= q_len * num_heads:
        return
    seq_len = tl.load(seq_lens_ptr + b)
    prefix = seq_len - q_len

    rows = mblk * BLOCK_M + tl.arange(0, BLOCK_M)
    tok = rows // num_heads
    head = rows % num_heads
    valid = tok < q_len
    q_pos = prefix + tok  # [BLOCK_M]
    offs_c = tl.arange(0, D_LAT)
    offs_r = tl.arange(0, D_ROPE)
    q_tok = (q_start + tok)[:, None].to(tl.int64)
    q_row = q_ptr + q_tok * stride_qt + head[:, None] * stride_qh
    q_lat = tl.load(q_row + offs_c[None, :], mask=valid[:, None], other=0.0)  # [BLOCK_M, D_LAT]
    qr_row = qr_ptr + q_tok * stride_qrt + head[:, None] * stride_qrh
    q_rope = tl.load(qr_row + offs_r[None, :], mask=valid[:, None], other=0.0)

    last_tok = tl.minimum((mblk * BLOCK_M + BLOCK_M - 1) // num_heads, q_len - 1)
    end = prefix + last_tok + 1  # keys past the block's last query are masked for every row
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D_LAT], dtype=tl.float32)
    for n0 in range(0, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < end
        page = tl.load(page_table_ptr + b * stride_pt + offs_n // PAGE_SIZE, mask=mask_n, other=0)
        slot = page.to(tl.int64) * PAGE_SIZE + offs_n % PAGE_SIZE
        kv_row = kv_ptr + slot[:, None] * stride_kv
        k_lat = tl.load(kv_row + offs_c[None, :], mask=mask_n[:, None], other=0.0)  # [N, D_LAT]
        k_rope = tl.load(kv_row + D_LAT + offs_r[None, :], mask=mask_n[:, None], other=0.0)
        s = tl.dot(q_lat, tl.trans(k_lat)) + tl.dot(q_rope, tl.trans(k_rope))  # [BLOCK_M, N]
        causal = (offs_n[None, :] <= q_pos[:, None]) & mask_n[None, :]
        s = tl.where(causal, s * scale_log2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(k_lat.dtype), k_lat)
        m_i = m_new

    out = acc / l_i[:, None]
    o_row = out_ptr + (q_start + tok)[:, None].to(tl.int64) * stride_ot + head[:, None] * stride_oh
    tl.store(o_row + offs_c[None, :], out.to(out_ptr.dtype.element_ty), mask=valid[:, None])


def mla_prefill(
    q: torch.Tensor,  # [T, H, D_LAT + D_ROPE], or [T, H, D_LAT] with q_rope
    kv_cache: torch.Tensor,  # [num_slots, D_LAT + D_ROPE], new tokens' latents already written
    page_table: torch.Tensor,  # [B, max_pages] int32
    query_start_loc: torch.Tensor,  # [B + 1] int32
    seq_lens: torch.Tensor,  # [B] int32: cached + new tokens
    max_query_len: int,
    page_size: int,
    scale: float,
    d_rope: int = 64,
    block_m: int = 64,
    block_n: int = 64,
    num_warps: int = 8,
    num_stages: int = 3,
    q_rope: torch.Tensor | None = None,  # [T, H, D_ROPE]: the roped part, when q holds D_LAT
) -> torch.Tensor:  # [T, H, D_LAT]
    """Causal attention of every new token over its sequence's cached prefix and new tokens."""
    q_lat, q_pe = split_query(q, q_rope, d_rope)
    t, h, d_lat = q_lat.shape
    b = seq_lens.shape[0]
    check_q_and_cache(q_lat, kv_cache, d_lat + d_rope)
    for name, ten in (("page_table", page_table), ("query_start_loc", query_start_loc)):
        if ten.dtype != torch.int32:
            raise ValueError(f"{name} must be int32")
    if seq_lens.dtype != torch.int32 or query_start_loc.shape != (b + 1,):
        raise ValueError("seq_lens must be int32 [B] and query_start_loc [B + 1]")
    if page_table.shape[0] != b:
        raise ValueError("page_table needs one row per sequence")
    if page_size < 1 or page_size & (page_size - 1):
        raise ValueError(f"page_size must be a power of two, got {page_size}")
    out = torch.empty((t, h, d_lat), dtype=q_lat.dtype, device=q_lat.device)
    if t == 0:
        return out
    grid = (triton.cdiv(max_query_len * h, block_m), b)
    _mla_prefill_kernel[grid](
        q_lat, q_pe, kv_cache, page_table, query_start_loc, seq_lens, out,
        q_lat.stride(0), q_lat.stride(1), q_pe.stride(0), q_pe.stride(1),
        kv_cache.stride(0), page_table.stride(0),
        out.stride(0), out.stride(1), h, scale * LOG2E,
        PAGE_SIZE=page_size, D_LAT=d_lat, D_ROPE=d_rope, BLOCK_M=block_m, BLOCK_N=block_n,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return out


def mla_prefill_ref(
    q: torch.Tensor,  # [T, H, D_LAT + D_ROPE]
    kv_cache: torch.Tensor,  # [num_slots, D_LAT + D_ROPE]
    page_table: torch.Tensor,  # [B, max_pages] int32
    query_start_loc: torch.Tensor,  # [B + 1] int32
    seq_lens: torch.Tensor,  # [B] int32
    page_size: int,
    scale: float,
    d_rope: int = 64,
) -> torch.Tensor:  # [T, H, D_LAT]
    """Plain torch reference of `mla_prefill`, in fp32 (or the input dtype if wider)."""
    width = q.shape[2]
    d_lat = width - d_rope
    work = torch.promote_types(q.dtype, torch.float32)
    out = torch.empty((q.shape[0], q.shape[1], d_lat), dtype=work, device=q.device)
    for i in range(seq_lens.shape[0]):
        a, z, n = int(query_start_loc[i]), int(query_start_loc[i + 1]), int(seq_lens[i])
        rows = gather_latents(kv_cache, page_table[i], n, page_size).to(work)  # [n, W]
        s = torch.einsum("thw,nw->htn", q[a:z].to(work), rows[:, :width]) * scale
        q_pos = torch.arange(n - (z - a), n, device=q.device)
        mask = torch.arange(n, device=q.device)[None, :] > q_pos[:, None]  # [t, n]
        p = torch.softmax(s.masked_fill(mask, float("-inf")), dim=-1)
        out[a:z] = torch.einsum("htn,nc->thc", p, rows[:, :d_lat])
    return out.to(q.dtype)


def prefill_flops(q_len: int, prefix: int, heads: int, width: int = 576, d_lat: int = 512) -> int:
    """Useful multiply-adds x 2 of one sequence's causal extend (masked half not counted)."""
    pairs = q_len * prefix + q_len * (q_len + 1) // 2
    return 2 * heads * pairs * (width + d_lat)
