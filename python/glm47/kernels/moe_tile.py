"""One tile of the MoE's grouped GEMMs, shared by their launches (kernels/fused_moe: one launch a
GEMM; kernels/moe_one_launch: both GEMMs in one launch).

A tile is a block of BLOCK_M aligned pairs (kernels/moe_align: every row of a block belongs to one
expert) times BLOCK_N output columns, over one split of K. GEMM 1 (`GATED`) reads `x[t]` for each
pair and `w13[e]` (`[2I, H]`, gate rows first) and writes `silu(x W_gate^T) * (x W_up^T)`; GEMM 2
reads the pair's intermediate row and `w2[e]` (`[H, I]`) and writes the product times the routing
weight (`MUL_WEIGHT`), or its fp32 part of it when K is split.
"""

from __future__ import annotations

import triton
import triton.language as tl

from glm47.kernels.pdl import prefetch_l2

# With programmatic dependent launch, at most this many expert-weight bytes a launch are asked into
# L2 before the wait (see kernels/pdl): about what the memory moves during the kernel before.
PREFETCH_BYTES = 16 << 20


@triton.jit
def expert_weights(w_ptr, shared_w_ptr, expert, stride_we, NUM_EXPERTS: tl.constexpr,
                   HAS_SHARED: tl.constexpr):  # fmt: skip
    """The first weight of `expert`: a routed expert's slice of w, or the shared expert's tensor
    for id NUM_EXPERTS."""
    base = w_ptr + expert * stride_we
    if HAS_SHARED:
        if expert == NUM_EXPERTS:
            base = shared_w_ptr
    return base


@triton.jit
def prefetch_expert_tile(
    w_ptr, shared_w_ptr, hint_ids_ptr, expert_ids_ptr, num_padded_ptr, pid_m, pid_n, N, k_start,
    num_pairs, stride_we, stride_wn, GATED: tl.constexpr, NUM_EXPERTS: tl.constexpr,
    HAS_SHARED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PREFETCH_K: tl.constexpr, LINE_ELEMS: tl.constexpr, HINT_FROM_PAIRS: tl.constexpr,
):  # fmt: skip
    """Ask for the start (from column k_start) of this block's weight tile in L2. Only a hint:
    what it reads was written by kernels that finished before the previous one started, and a
    wrong guess costs bandwidth, never a result (the addresses are clamped into the weights).
    HINT_FROM_PAIRS: the block's expert is guessed as the expert of pair pid_m (the alignment may
    still run), else read from the alignment (which must be complete)."""
    if HINT_FROM_PAIRS:
        wanted = pid_m < num_pairs
        expert = tl.load(hint_ids_ptr + tl.minimum(pid_m, num_pairs - 1), cache_modifier=".cg")
    else:
        wanted = pid_m * BLOCK_M < tl.load(num_padded_ptr, cache_modifier=".cg")
        expert = tl.load(expert_ids_ptr + pid_m, cache_modifier=".cg")
    if wanted:
        last: tl.constexpr = NUM_EXPERTS if HAS_SHARED else NUM_EXPERTS - 1
        e = tl.minimum(tl.maximum(expert, 0), last).to(tl.int64)
        base = expert_weights(w_ptr, shared_w_ptr, e, stride_we, NUM_EXPERTS, HAS_SHARED)
        rows = tl.minimum(pid_n * BLOCK_N + tl.arange(0, BLOCK_N), N - 1)
        cols = k_start + tl.arange(0, PREFETCH_K // LINE_ELEMS) * LINE_ELEMS
        tile = base + rows[:, None] * stride_wn + cols[None, :]
        prefetch_l2(tile)
        if GATED:
            prefetch_l2(tile + N * stride_wn)


@triton.jit
def moe_tile(
    a_ptr,  # [rows_a, K]: x [T, K] when A_PER_TOKEN, else the intermediate [P, K]
    w_ptr,  # [E, N_total, K]: N_total = 2N when GATED (gate rows, then up rows), else N
    shared_w_ptr,  # [N_total, K] expert E's weights, same row stride (read when HAS_SHARED)
    c_ptr,  # [P, N], or [splits, P, N] fp32 parts
    topk_w_ptr,  # [P] fp32 routing weights (read when MUL_WEIGHT)
    sorted_ids_ptr,  # [max_padded] int32
    expert_ids_ptr,  # [max_padded // BLOCK_M] int32
    pid_m,
    pid_n,
    split,  # this tile's K columns: [split * K_PER_SPLIT, (split + 1) * K_PER_SPLIT)
    N,
    K,
    num_pairs,
    stride_am,
    stride_we,
    stride_wn,
    stride_cm,
    stride_cs,
    TOP_K: tl.constexpr,
    A_PER_TOKEN: tl.constexpr,
    GATED: tl.constexpr,
    MUL_WEIGHT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NUM_EXPERTS: tl.constexpr,
    HAS_SHARED: tl.constexpr,
    K_PER_SPLIT: tl.constexpr,
    A_CACHE: tl.constexpr,  # the activations' cache modifier ("" or ".cg": from L2, not L1)
):
    """One [BLOCK_M, BLOCK_N] tile of a grouped GEMM over row block pid_m of the aligned pairs
    (see the module docstring). The block must hold pairs (below the alignment's padded count)."""
    k_start = split * K_PER_SPLIT
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(sorted_ids_ptr + offs_m)  # [BLOCK_M]
    row_ok = pair < num_pairs
    a_row = pair // TOP_K if A_PER_TOKEN else pair
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    w_base = expert_weights(w_ptr, shared_w_ptr, expert, stride_we, NUM_EXPERTS, HAS_SHARED)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = offs_n < N
    offs_k = k_start + tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + a_row[:, None].to(tl.int64) * stride_am + offs_k[None, :]  # [BM, BK]
    w_ptrs = w_base + offs_n[None, :] * stride_wn + offs_k[:, None]  # [BK, BN]

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, tl.minimum(K_PER_SPLIT, K - k_start), BLOCK_K):
        k_ok = offs_k < K - k0
        a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0,
                    cache_modifier=A_CACHE)  # fmt: skip
        w = tl.load(w_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(a, w, acc)
        if GATED:
            w_up = tl.load(w_ptrs + N * stride_wn, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            acc_up = tl.dot(a, w_up, acc_up)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K

    if GATED:
        acc = acc * tl.sigmoid(acc) * acc_up
    if MUL_WEIGHT:
        acc = acc * tl.load(topk_w_ptr + pair, mask=row_ok, other=0.0)[:, None]
    c_ptrs = c_ptr + split * stride_cs + pair[:, None].to(tl.int64) * stride_cm
    c_ptrs += offs_n[None, :]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def k_splits(k: int, block_k: int, split_k: int) -> tuple[int, int]:
    """(columns a split, number of splits) when K is split over about `split_k` programs in
    whole BLOCK_K steps: fewer where K has fewer steps."""
    k_per_split = triton.cdiv(triton.cdiv(k, block_k), max(1, split_k)) * block_k
    return k_per_split, triton.cdiv(k, k_per_split)


def prefetch_columns(k: int, bytes_per_column: int, elem: int) -> int:
    """Weight columns a GEMM asks into L2 ahead of its wait: a power of two that keeps the launch
    within PREFETCH_BYTES, at least one 128-byte line, at most K; 0 when none fits."""
    cols = min(k, PREFETCH_BYTES // max(1, bytes_per_column))
    cols = 1 << (cols.bit_length() - 1) if cols > 0 else 0
    return cols if cols * elem >= 128 else 0


__all__ = [
    "PREFETCH_BYTES",
    "expert_weights",
    "k_splits",
    "moe_tile",
    "prefetch_columns",
    "prefetch_expert_tile",
]
