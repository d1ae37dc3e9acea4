"""Both grouped GEMMs of a decode-sized MoE in one launch: the gate/up tiles, then the down tiles,
each down tile starting as soon as the gate/up tiles it reads are stored.

In two launches (kernels/fused_moe) the down GEMM waits for the whole gate/up GEMM to finish: its
programs ask for their weights in L2 (up to PREFETCH_BYTES) while the gate/up GEMM streams, then
wait for its last program, and the memory idles over the gate/up GEMM's tail and the down GEMM's
start. Here the grid holds the gate/up tiles first and the down tiles after them, and a down
tile waits only for its own inputs: the intermediate rows of its row block over its split of K,
written by `expected` gate/up tiles, each of which adds one to the block's and split's `ready`
counter after its stores. Meanwhile a waiting down program has asked for its whole weight tile in
L2.

Waiting inside a launch is safe because the hardware starts a launch's programs in grid order:
every gate/up program starts before any down program, and none of them waits. (The Triton
interpreter runs the programs one after another in that order too, so no down program ever finds
its counter short there.) The last down program of a block and split (a `done` counter) sets both
counters back to zero, so every launch starts from zero (kernels/counters).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from glm47.kernels.counters import launch_counters
from glm47.kernels.moe_align import MoeAlignment
from glm47.kernels.moe_config import MoeConfig
from glm47.kernels.moe_tile import (
    expert_weights,
    k_splits,
    moe_tile,
    prefetch_columns,
    prefetch_expert_tile,
)
from glm47.kernels.pdl import pdl_wait, prefetch_l2, use_pdl

# Lines of a down tile's weight asked into L2 at a time (a power of two).
_DOWN_PREFETCH_LINES = tl.constexpr(4)


@triton.jit
def _moe_one_launch_kernel(
    x_ptr,  # [T, hidden]
    w13_ptr,  # [E, 2 * inter, hidden]
    shared_w13_ptr,  # [2 * inter, hidden] the shared expert's (read when HAS_SHARED)
    inter_ptr,  # [P, inter]
    w2_ptr,  # [E, hidden, inter]
    shared_w2_ptr,  # [hidden, inter]
    out_ptr,  # [P, hidden], or [D_SPLITS, P, hidden] fp32 parts
    topk_w_ptr,  # [P] fp32
    sorted_ids_ptr,  # [max_padded] int32
    expert_ids_ptr,  # [max_padded // BLOCK_M] int32
    num_padded_ptr,  # [1] int32
    hint_ids_ptr,  # [P] int32 the pairs' experts (the routing's output), for the L2 hints
    ready_ptr,  # [max_padded // BLOCK_M, D_SPLITS] int32 gate/up tiles stored
    done_ptr,  # [max_padded // BLOCK_M, D_SPLITS] int32 down programs past their wait
    hidden,
    inter,
    num_pairs,
    max_padded,
    stride_xm,
    stride_w13e,
    stride_w13n,
    stride_w2e,
    stride_w2n,
    stride_os,
    TOP_K: tl.constexpr,
    NUM_EXPERTS: tl.constexpr,
    HAS_SHARED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    G_BLOCK_N: tl.constexpr,
    G_BLOCK_K: tl.constexpr,
    G_K: tl.constexpr,  # `hidden` rounded up to whole G_BLOCK_K steps
    G_PREFETCH_K: tl.constexpr,  # gate/up columns asked into L2 before the wait (0: none)
    D_BLOCK_N: tl.constexpr,
    D_BLOCK_K: tl.constexpr,
    D_SPLITS: tl.constexpr,
    D_K_PER_SPLIT: tl.constexpr,  # a multiple of G_BLOCK_N and of D_BLOCK_K
    D_PREFETCH: tl.constexpr,  # a down program asks for its weight tile in L2 before it waits
    LINE_ELEMS: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pid = tl.program_id(0)
    num_blocks = max_padded // BLOCK_M
    g_cols = tl.cdiv(inter, G_BLOCK_N)
    g_tiles = num_blocks * g_cols
    if pid < g_tiles:  # gate/up: row block by row block, so the first blocks' splits fill first
        pid_m = pid // g_cols
        pid_n = pid % g_cols
        if G_PREFETCH_K > 0:
            prefetch_expert_tile(
                w13_ptr, shared_w13_ptr, hint_ids_ptr, expert_ids_ptr, num_padded_ptr, pid_m,
                pid_n, inter, 0, num_pairs, stride_w13e, stride_w13n, True, NUM_EXPERTS,
                HAS_SHARED, BLOCK_M, G_BLOCK_N, G_PREFETCH_K, LINE_ELEMS, True,
            )  # fmt: skip
        pdl_wait(USE_PDL)
        if pid_m * BLOCK_M < tl.load(num_padded_ptr):
            moe_tile(
                x_ptr, w13_ptr, shared_w13_ptr, inter_ptr, topk_w_ptr, sorted_ids_ptr,
                expert_ids_ptr, pid_m, pid_n, 0, inter, hidden, num_pairs, stride_xm,
                stride_w13e, stride_w13n, inter, 0, TOP_K, True, True, False, BLOCK_M, G_BLOCK_N,
                G_BLOCK_K, NUM_EXPERTS, HAS_SHARED, G_K, "",
            )  # fmt: skip
            tl.debug_barrier()  # every thread's rows are stored before the count moves
            split = (pid_n * G_BLOCK_N) // D_K_PER_SPLIT
            tl.atomic_add(ready_ptr + pid_m * D_SPLITS + split, 1, sem="release")
    else:  # down: row block, then split, then column block
        d = pid - g_tiles
        d_cols = tl.cdiv(hidden, D_BLOCK_N)
        pid_m = d // (D_SPLITS * d_cols)
        split = (d // d_cols) % D_SPLITS
        pid_n = d % d_cols
        pdl_wait(USE_PDL)
        if pid_m * BLOCK_M < tl.load(num_padded_ptr):
            k_start = split * D_K_PER_SPLIT
            k_end = tl.minimum(k_start + D_K_PER_SPLIT, inter)
            if D_PREFETCH:  # the whole weight tile, while the gate/up tiles run
                expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
                w_base = expert_weights(w2_ptr, shared_w2_ptr, expert, stride_w2e, NUM_EXPERTS,
                                        HAS_SHARED)  # fmt: skip
                rows = tl.minimum(pid_n * D_BLOCK_N + tl.arange(0, D_BLOCK_N), hidden - 1)
                step: tl.constexpr = _DOWN_PREFETCH_LINES * LINE_ELEMS
                for c in range(k_start, k_end, step):
                    cols = tl.minimum(
                        c + tl.arange(0, _DOWN_PREFETCH_LINES) * LINE_ELEMS, inter - 1
                    )
                    prefetch_l2(w_base + rows[:, None] * stride_w2n + cols[None, :])
            expected = tl.cdiv(k_end - k_start, G_BLOCK_N)
            counter = pid_m * D_SPLITS + split
            seen = tl.atomic_add(ready_ptr + counter, 0, sem="acquire")
            while seen < expected:
                seen = tl.atomic_add(ready_ptr + counter, 0, sem="acquire")
            tl.debug_barrier()  # no thread reads the intermediate before the count is seen
            moe_tile(
                inter_ptr, w2_ptr, shared_w2_ptr, out_ptr, topk_w_ptr, sorted_ids_ptr,
                expert_ids_ptr, pid_m, pid_n, split, hidden, inter, num_pairs, inter, stride_w2e,
                stride_w2n, hidden, stride_os, TOP_K, False, False, True, BLOCK_M, D_BLOCK_N,
                D_BLOCK_K, NUM_EXPERTS, HAS_SHARED, D_K_PER_SPLIT, ".cg",
            )  # fmt: skip
            if tl.atomic_add(done_ptr + counter, 1, sem="acq_rel") == d_cols - 1:
                tl.atomic_xchg(ready_ptr + counter, 0)
                tl.atomic_xchg(done_ptr + counter, 0)


def fits_one_launch(cfg: MoeConfig, inter: int) -> bool:
    """Whether `cfg`'s tiles allow the one-launch form for an intermediate width `inter`: every
    gate/up column block lies within one of the down GEMM's K splits, and both GEMMs launch with
    the same warps and stages."""
    down = cfg.down()
    k_per_split, _ = k_splits(inter, down.block_k, cfg.down_splits)
    return (
        k_per_split % cfg.block_n == 0
        and down.num_warps == cfg.num_warps
        and down.num_stages == cfg.num_stages
    )


def moe_gemms_one_launch(
    x: torch.Tensor,  # [T, H]
    w13: torch.Tensor,  # [E, 2I, H]
    w2: torch.Tensor,  # [E, H, I]
    weights: torch.Tensor,  # [P] fp32 routing weights, P = T * top_k
    align: MoeAlignment,
    top_k: int,
    cfg: MoeConfig,
    hint_ids: torch.Tensor,  # [P] int32 the pairs' experts
    shared: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:  # [P, H] in x's dtype, or [splits, P, H] fp32 parts (cfg.down_splits > 1)
    """The gate/up and down GEMMs of kernels/fused_moe in one launch (see the module docstring):
    per pair, the routing weight times down(silu(gate x) * up x), or its K splits' fp32 parts."""
    t, hidden = x.shape
    num_experts, two_inter, _ = w13.shape
    inter = two_inter // 2
    if not fits_one_launch(cfg, inter):
        raise ValueError(f"{cfg} does not fit the one-launch MoE at I={inter}")
    if align.block_m != cfg.block_m:
        raise ValueError(f"alignment block {align.block_m} != config block_m {cfg.block_m}")
    if x.stride(1) != 1 or w13.stride(2) != 1 or w2.stride(2) != 1:
        raise ValueError("x, w13 and w2 need a contiguous last dimension")
    shared_w13, shared_w2 = shared if shared is not None else (w13[0], w2[0])
    if shared is not None and (
        shared_w13.shape != w13.shape[1:] or shared_w13.stride() != w13.stride()[1:]
        or shared_w2.shape != w2.shape[1:] or shared_w2.stride() != w2.stride()[1:]
    ):  # fmt: skip
        raise ValueError("the shared expert's weights must be laid out as one expert's")
    down = cfg.down()
    k_per_split, splits = k_splits(inter, down.block_k, cfg.down_splits)
    pairs = t * top_k
    inter_act = torch.empty((pairs, inter), dtype=x.dtype, device=x.device)
    out = torch.empty(
        (pairs, hidden) if splits == 1 else (splits, pairs, hidden),
        dtype=x.dtype if splits == 1 else torch.float32, device=x.device,
    )  # fmt: skip
    max_padded = int(align.sorted_ids.shape[0])
    num_blocks = max_padded // cfg.block_m
    counters = launch_counters("moe_one_launch", w13, 2 * num_blocks * splits)
    g_tiles = num_blocks * triton.cdiv(inter, cfg.block_n)
    d_tiles = num_blocks * splits * triton.cdiv(hidden, down.block_n)
    pdl = use_pdl(x)
    g_prefetch = 0
    if pdl:  # one block per pair guessed, as kernels/fused_moe's GEMM 1
        hinted = min(num_blocks, pairs)
        g_prefetch = prefetch_columns(hidden, hinted * two_inter * w13.element_size(),
                                      w13.element_size())  # fmt: skip
    _moe_one_launch_kernel[(g_tiles + d_tiles,)](
        x, w13, shared_w13, inter_act, w2, shared_w2, out, weights, align.sorted_ids,
        align.expert_ids, align.num_padded, hint_ids, counters[: num_blocks * splits],
        counters[num_blocks * splits :], hidden, inter, pairs, max_padded, x.stride(0),
        w13.stride(0), w13.stride(1), w2.stride(0), w2.stride(1),
        0 if splits == 1 else out.stride(0),
        TOP_K=top_k, NUM_EXPERTS=num_experts, HAS_SHARED=shared is not None,
        BLOCK_M=cfg.block_m, G_BLOCK_N=cfg.block_n, G_BLOCK_K=cfg.block_k,
        G_K=k_splits(hidden, cfg.block_k, 1)[0],
        G_PREFETCH_K=g_prefetch, D_BLOCK_N=down.block_n, D_BLOCK_K=down.block_k,
        D_SPLITS=splits, D_K_PER_SPLIT=k_per_split, D_PREFETCH=x.is_cuda,
        LINE_ELEMS=128 // w13.element_size(),
        USE_PDL=pdl, num_warps=cfg.num_warps, num_stages=cfg.num_stages, launch_pdl=pdl,
    )  # fmt: skip
    return out


__all__ = ["fits_one_launch", "moe_gemms_one_launch"]
