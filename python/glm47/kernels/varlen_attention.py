"""Causal attention over variable-length sequences, one key and value per head: MLA's expanded form.

With keys and values rebuilt per head from the cached latents (k = [W_UK c | k_rope], v = W_UV c;
the expansion is the caller's), prefill and extend attention is ordinary multi-head attention,
head dims 256 / 256 on the real model: half the FLOPs of the absorbed form (576-wide keys,
512-wide values), which pays for the expansion once a step's queries are many (see the Triton
backend's choice).

Sequence b has `q_len` queries (rows [cu_q[b], cu_q[b+1]) of q) and `kv_len` keys (rows
[cu_k[b], cu_k[b+1]) of k and v); its queries are its last `q_len` positions, so query i sees keys
[0, kv_len - q_len + i] (bottom-right causal alignment, as FlashAttention's varlen call).

One program per (head, sequence, block of BLOCK_M queries), flash-attention style: an online
softmax over key tiles in exp2, the key tiles left of the block's diagonal without a mask, the
others masked.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _attend_tile(
    q, acc, m_i, l_i, k_ptrs, v_ptrs, n0, q_pos, kv_len, scale_log2, stride_kt, stride_vt,
    mask_dqk, mask_dv, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, DOT_FP32: tl.constexpr,
):  # fmt: skip
    """One key tile [n0, n0 + BLOCK_N): the updated (acc, m_i, l_i)."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    if MASKED:
        ok_n = offs_n < kv_len
        k = tl.load(k_ptrs + offs_n[:, None].to(tl.int64) * stride_kt,
                    mask=ok_n[:, None] & mask_dqk[None, :], other=0.0)  # fmt: skip
        v = tl.load(v_ptrs + offs_n[:, None].to(tl.int64) * stride_vt,
                    mask=ok_n[:, None] & mask_dv[None, :], other=0.0)  # fmt: skip
    else:
        k = tl.load(k_ptrs + offs_n[:, None].to(tl.int64) * stride_kt, mask=mask_dqk[None, :],
                    other=0.0)  # fmt: skip
        v = tl.load(v_ptrs + offs_n[:, None].to(tl.int64) * stride_vt, mask=mask_dv[None, :],
                    other=0.0)  # fmt: skip
    if DOT_FP32:  # the interpreter's bf16 products are wrong: fp32 there
        s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)))
    else:
        s = tl.dot(q, tl.trans(k))  # [BLOCK_M, BLOCK_N]
    s = s * scale_log2
    if MASKED:
        s = tl.where((offs_n[None, :] <= q_pos[:, None]) & (offs_n < kv_len)[None, :], s,
                     float("-inf"))  # fmt: skip
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if DOT_FP32:
        acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32))
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, m_new, l_i


@triton.jit(do_not_specialize_on_alignment=["cu_q_ptr", "cu_k_ptr"])
def _varlen_attention_kernel(
    q_ptr,  # [T, H, D_QK]
    k_ptr,  # [S, H, D_QK]
    v_ptr,  # [S, H, D_V]
    out_ptr,  # [T, H, D_V]
    cu_q_ptr,  # [B + 1] int32
    cu_k_ptr,  # [B + 1] int32
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_ot,
    stride_oh,
    scale_log2,
    D_QK: tl.constexpr,
    D_V: tl.constexpr,
    BLOCK_DQK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    # The blocks with the most keys (the last queries) first, over every head and sequence: the
    # grid's tail is short blocks, not long ones.
    h = tl.program_id(0)
    b = tl.program_id(1)
    mblk = tl.num_programs(2) - 1 - tl.program_id(2)
    q_start = tl.load(cu_q_ptr + b)
    q_len = tl.load(cu_q_ptr + b + 1) - q_start
    if mblk * BLOCK_M >= q_len:
        return
    k_start = tl.load(cu_k_ptr + b)
    kv_len = tl.load(cu_k_ptr + b + 1) - k_start
    prefix = kv_len - q_len

    offs_m = mblk * BLOCK_M + tl.arange(0, BLOCK_M)
    ok_m = offs_m < q_len
    q_pos = prefix + offs_m  # [BLOCK_M]: the last key each row sees
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_dqk = offs_dqk < D_QK
    mask_dv = offs_dv < D_V
    q_rows = q_ptr + (q_start + offs_m)[:, None].to(tl.int64) * stride_qt + h * stride_qh
    q = tl.load(q_rows + offs_dqk[None, :], mask=ok_m[:, None] & mask_dqk[None, :], other=0.0)
    k_ptrs = k_ptr + k_start.to(tl.int64) * stride_kt + h * stride_kh + offs_dqk[None, :]
    v_ptrs = v_ptr + k_start.to(tl.int64) * stride_vt + h * stride_vh + offs_dv[None, :]

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    # Keys every row of the block sees (at most the first row's last key, prefix + mblk * BLOCK_M,
    # itself below kv_len): whole tiles without a mask. Rows past q_len see the same keys as
    # real ones and are never stored, so no row is left without a key.
    full_end = (prefix + mblk * BLOCK_M + 1) // BLOCK_N * BLOCK_N
    for n0 in range(0, full_end, BLOCK_N):
        acc, m_i, l_i = _attend_tile(q, acc, m_i, l_i, k_ptrs, v_ptrs, n0, q_pos, kv_len,
                                     scale_log2, stride_kt, stride_vt, mask_dqk, mask_dv,
                                     BLOCK_N, False, DOT_FP32)  # fmt: skip
    end = tl.minimum(kv_len, prefix + (mblk + 1) * BLOCK_M)  # past the block's last row: masked
    for n0 in range(full_end, end, BLOCK_N):
        acc, m_i, l_i = _attend_tile(q, acc, m_i, l_i, k_ptrs, v_ptrs, n0, q_pos, kv_len,
                                     scale_log2, stride_kt, stride_vt, mask_dqk, mask_dv,
                                     BLOCK_N, True, DOT_FP32)  # fmt: skip

    out = acc / l_i[:, None]
    o_rows = out_ptr + (q_start + offs_m)[:, None].to(tl.int64) * stride_ot + h * stride_oh
    tl.store(o_rows + offs_dv[None, :], out.to(out_ptr.dtype.element_ty),
             mask=ok_m[:, None] & mask_dv[None, :])  # fmt: skip


def default_launch(d_qk: int, d_v: int) -> tuple[int, int, int, int]:
    """(block_m, block_n, num_warps, num_stages): 128-query blocks over 64-key tiles, 8 warps. At
    the real model's 256 / 256 with two stages it was the fastest of seven launches on an H200
    (benchmarks/kernels.py --only varlen, 2026-12-03): 0.71 of the matmul rate on an 8K prompt,
    against 0.45 for 64-query blocks with 4 warps; three stages for narrower heads."""
    if max(d_qk, d_v) <= 128:
        return 128, 64, 8, 3
    return 128, 64, 8, 2


def varlen_attention(
    q: torch.Tensor,  # [T, H, D_QK]
    k: torch.Tensor,  # [S, H, D_QK]
    v: torch.Tensor,  # [S, H, D_V]
    cu_seqlens_q: torch.Tensor,  # [B + 1] int32
    cu_seqlens_k: torch.Tensor,  # [B + 1] int32
    max_seqlen_q: int,
    max_seqlen_k: int,
    scale: float,
    launch: tuple[int, int, int, int] | None = None,  # (block_m, block_n, warps, stages)
) -> torch.Tensor:  # [T, H, D_V] in q's dtype
    """Causal attention, bottom-right aligned per sequence (the arguments of FlashAttention's
    varlen call; `max_seqlen_k` is accepted for that signature and not needed). Every sequence
    needs kv_len >= q_len."""
    del max_seqlen_k
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError("q, k, v must be [tokens, heads, dim]")
    t, h, d_qk = q.shape
    if k.shape[1:] != (h, d_qk) or v.shape[:2] != k.shape[:2]:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} do not fit q {tuple(q.shape)}")
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("q, k and v need a contiguous last dimension")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if cu_seqlens_q.dtype != torch.int32 or cu_seqlens_k.dtype != torch.int32:
        raise ValueError("cu_seqlens_q and cu_seqlens_k must be int32")
    if cu_seqlens_q.shape != cu_seqlens_k.shape or cu_seqlens_q.dim() != 1:
        raise ValueError("cu_seqlens_q and cu_seqlens_k must both be [B + 1]")
    d_v = v.shape[2]
    out = torch.empty((t, h, d_v), dtype=q.dtype, device=q.device)
    b = cu_seqlens_q.shape[0] - 1
    if t == 0 or b <= 0 or max_seqlen_q <= 0:
        return out
    block_m, block_n, warps, stages = launch or default_launch(d_qk, d_v)
    interpreted = not q.is_cuda
    _varlen_attention_kernel[(h, b, triton.cdiv(max_seqlen_q, block_m))](
        q, k, v, out, cu_seqlens_q, cu_seqlens_k,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1), scale * LOG2E,
        D_QK=d_qk, D_V=d_v, BLOCK_DQK=max(16, triton.next_power_of_2(d_qk)),
        BLOCK_DV=max(16, triton.next_power_of_2(d_v)), BLOCK_M=block_m, BLOCK_N=block_n,
        DOT_FP32=interpreted and q.dtype == torch.bfloat16, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out


def varlen_attention_ref(
    q: torch.Tensor,  # [T, H, D_QK]
    k: torch.Tensor,  # [S, H, D_QK]
    v: torch.Tensor,  # [S, H, D_V]
    cu_seqlens_q: torch.Tensor,  # [B + 1]
    cu_seqlens_k: torch.Tensor,  # [B + 1]
    scale: float,
) -> torch.Tensor:  # [T, H, D_V] fp32
    """Plain torch reference of `varlen_attention`, in fp32, one sequence at a time."""
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    out = torch.empty((q.shape[0], q.shape[1], v.shape[2]), dtype=torch.float32, device=q.device)
    for b in range(len(cq) - 1):
        qs, ks = q[cq[b] : cq[b + 1]].float(), k[ck[b] : ck[b + 1]].float()
        vs = v[ck[b] : ck[b + 1]].float()
        q_len, kv_len = qs.shape[0], ks.shape[0]
        scores = torch.einsum("qhd,khd->hqk", qs, ks) * scale
        q_pos = torch.arange(q_len, device=q.device)[:, None] + (kv_len - q_len)
        allowed = torch.arange(kv_len, device=q.device)[None, :] <= q_pos
        scores = scores.masked_fill(~allowed, float("-inf"))
        out[cq[b] : cq[b + 1]] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), vs)
    return out


__all__ = ["default_launch", "varlen_attention", "varlen_attention_ref"]
