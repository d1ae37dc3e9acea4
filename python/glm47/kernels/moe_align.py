"""Sorting routed (token, slot) pairs by expert, padded to the grouped GEMM's row block.

A routed pair is identified by its flat id `t * top_k + j` (token t, its j-th expert). The grouped
GEMM walks `sorted_ids` in blocks of `block_m` rows; every block belongs to one expert, so each
expert's run of ids is padded to a multiple of `block_m` with the invalid id `T * top_k`.

Three implementations with the same output: a single-program Triton kernel for decode-sized
batches (one launch instead of two dozen small torch operations), a three-launch blocked Triton
version for any size (count per tile of pairs, one scan, scatter), and torch operations (the
reference, and the path where Triton does not run). None reads back to the host, so all can be
captured in a CUDA graph: the output sizes depend only on T, top_k, the expert count and block_m.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.errors import TritonError

from glm47.kernels.device import runs_triton
from glm47.kernels.pdl import pdl_wait, use_pdl

log = logging.getLogger(__name__)

SMALL_MAX_PAIRS = 512  # routed pairs up to which the single-program kernel is used
TILE_PAIRS = 128  # pairs per program of the blocked kernels


@dataclass(frozen=True)
class MoeAlignment:
    """The expert-sorted layout of one batch's routed pairs."""

    sorted_ids: torch.Tensor  # [max_padded] int32: flat pair ids; T * top_k marks padding
    expert_ids: torch.Tensor  # [max_padded // block_m] int32: the expert of each row block
    num_padded: torch.Tensor  # [1] int32: rows in use (blocks at or past it are skipped)
    block_m: int


def max_padded_rows(num_pairs: int, num_experts: int, block_m: int) -> int:
    """Upper bound of the padded row count: every expert that receives a pair (at most
    min(num_experts, num_pairs) of them) adds up to block_m - 1 pad rows. The grouped GEMMs launch
    a program per row block of this bound, so at decode sizes a tight bound means no idle programs
    (one token, top-4, 64 experts, block 16: 4 row blocks instead of 61)."""
    bound = num_pairs + min(num_experts, num_pairs) * (block_m - 1)
    return (bound + block_m - 1) // block_m * block_m


@triton.jit
def fill_padding(sorted_ids_ptr, num_pairs, max_padded, BLOCK: tl.constexpr):
    """Every row of sorted_ids to the invalid pair id (the runs are written over it)."""
    for f in range(0, max_padded, BLOCK):
        offs = f + tl.arange(0, BLOCK)
        tl.store(sorted_ids_ptr + offs, tl.zeros_like(offs) + num_pairs, mask=offs < max_padded)


@triton.jit
def write_block_experts(
    ends,  # [BLOCK_E] int32: the padded end row of each expert's run
    expert_ids_ptr,
    max_blocks,
    NUM_EXPERTS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    """The expert of each row block: how many runs end at or before its first row."""
    for b0 in range(0, max_blocks, BLOCK_B):
        offs_b = b0 + tl.arange(0, BLOCK_B)
        done = (ends[None, :] <= (offs_b * BLOCK_M)[:, None]).to(tl.int32)  # [BLOCK_B, BLOCK_E]
        expert = tl.minimum(tl.sum(done, 1), NUM_EXPERTS - 1)
        tl.store(expert_ids_ptr + offs_b, expert, mask=offs_b < max_blocks)


@triton.jit
def _moe_align_small_kernel(
    topk_ids_ptr,  # [P] int32, the flattened [T, top_k]
    sorted_ids_ptr,  # [max_padded] int32
    expert_ids_ptr,  # [max_blocks] int32
    num_padded_ptr,  # [1] int32
    num_pairs,
    max_padded,
    max_blocks,
    NUM_EXPERTS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_FILL: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    offs_p = tl.arange(0, BLOCK_P)
    pair_ok = offs_p < num_pairs
    ids = tl.load(topk_ids_ptr + offs_p, mask=pair_ok, other=-1)
    offs_e = tl.arange(0, BLOCK_E)
    onehot = (ids[:, None] == offs_e[None, :]).to(tl.int32)  # [BLOCK_P, BLOCK_E]
    counts = tl.sum(onehot, 0)  # [BLOCK_E]
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = tl.cumsum(padded, 0)
    starts = ends - padded
    rank = tl.cumsum(onehot, 0) - onehot  # earlier pairs of the same expert
    dest = tl.sum(onehot * (starts[None, :] + rank), 1)  # [BLOCK_P]
    fill_padding(sorted_ids_ptr, num_pairs, max_padded, BLOCK_FILL)
    tl.debug_barrier()
    tl.store(sorted_ids_ptr + dest, offs_p, mask=pair_ok)
    tl.store(num_padded_ptr, tl.sum(padded, 0))
    write_block_experts(ends, expert_ids_ptr, max_blocks, NUM_EXPERTS, BLOCK_M, BLOCK_FILL)


def moe_align(
    topk_ids: torch.Tensor,  # [T, top_k] int
    num_experts: int,
    block_m: int,
) -> MoeAlignment:
    """Sort pair ids by expert (stable: token order inside an expert) and pad each expert's run."""
    if topk_ids.dim() != 2:
        raise ValueError(f"topk_ids must be [T, top_k], got {tuple(topk_ids.shape)}")
    if block_m < 1:
        raise ValueError(f"block_m must be positive, got {block_m}")
    global _blocked_failed
    if runs_triton(topk_ids) and 0 < topk_ids.numel() and num_experts <= 256:
        if topk_ids.numel() <= SMALL_MAX_PAIRS:
            return moe_align_small(topk_ids, num_experts, block_m)
        if not _blocked_failed:
            try:
                return moe_align_blocked(topk_ids, num_experts, block_m)
            except TritonError as err:  # compilation or resources: the torch version still runs
                _blocked_failed = True
                log.warning("blocked MoE alignment kernel unavailable, using torch: %s", err)
    return moe_align_torch(topk_ids, num_experts, block_m)


_blocked_failed = False  # set once the blocked kernels failed to build on this device


@triton.jit
def _tile_counts_kernel(
    topk_ids_ptr,  # [P] int32
    tile_counts_ptr,  # [num_tiles, BLOCK_E] int32
    num_pairs,
    TILE: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    tile = tl.program_id(0)
    offs_p = tile * TILE + tl.arange(0, TILE)
    ids = tl.load(topk_ids_ptr + offs_p, mask=offs_p < num_pairs, other=-1)
    offs_e = tl.arange(0, BLOCK_E)
    onehot = (ids[:, None] == offs_e[None, :]).to(tl.int32)  # [TILE, BLOCK_E]
    tl.store(tile_counts_ptr + tile * BLOCK_E + offs_e, tl.sum(onehot, 0))


@triton.jit
def _scan_kernel(
    tile_counts_ptr,  # [num_tiles, BLOCK_E] int32: in, counts; out, each tile's first row
    sorted_ids_ptr,  # [max_padded] int32
    expert_ids_ptr,  # [max_blocks] int32
    num_padded_ptr,  # [1] int32
    num_tiles,
    num_pairs,
    max_padded,
    max_blocks,
    NUM_EXPERTS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_FILL: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    offs_e = tl.arange(0, BLOCK_E)
    offs_t = tl.arange(0, BLOCK_T)
    counts = tl.zeros([BLOCK_E], dtype=tl.int32)
    for t0 in range(0, num_tiles, BLOCK_T):  # BLOCK_T tiles per load
        rows = t0 + offs_t
        ptrs = tile_counts_ptr + rows[:, None] * BLOCK_E + offs_e[None, :]
        counts += tl.sum(tl.load(ptrs, mask=(rows < num_tiles)[:, None], other=0), 0)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = tl.cumsum(padded, 0)
    running = ends - padded  # each expert's first row
    for t0 in range(0, num_tiles, BLOCK_T):  # counts in, first rows of the tiles' pairs out
        rows = t0 + offs_t
        ok = (rows < num_tiles)[:, None]
        ptrs = tile_counts_ptr + rows[:, None] * BLOCK_E + offs_e[None, :]
        here = tl.load(ptrs, mask=ok, other=0)  # [BLOCK_T, BLOCK_E]
        tl.store(ptrs, running[None, :] + tl.cumsum(here, 0) - here, mask=ok)
        running += tl.sum(here, 0)
    fill_padding(sorted_ids_ptr, num_pairs, max_padded, BLOCK_FILL)
    tl.store(num_padded_ptr, tl.sum(padded, 0))
    write_block_experts(ends, expert_ids_ptr, max_blocks, NUM_EXPERTS, BLOCK_M, BLOCK_B)


@triton.jit
def _scatter_kernel(
    topk_ids_ptr,  # [P] int32
    tile_first_ptr,  # [num_tiles, BLOCK_E] int32: the row of the tile's first pair per expert
    sorted_ids_ptr,  # [max_padded] int32
    num_pairs,
    TILE: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    tile = tl.program_id(0)
    offs_p = tile * TILE + tl.arange(0, TILE)
    pair_ok = offs_p < num_pairs
    ids = tl.load(topk_ids_ptr + offs_p, mask=pair_ok, other=-1)
    offs_e = tl.arange(0, BLOCK_E)
    onehot = (ids[:, None] == offs_e[None, :]).to(tl.int32)  # [TILE, BLOCK_E]
    rank = tl.cumsum(onehot, 0) - onehot  # earlier pairs of the same expert in this tile
    first = tl.load(tile_first_ptr + tile * BLOCK_E + offs_e)  # [BLOCK_E]
    dest = tl.sum(onehot * (first[None, :] + rank), 1)  # [TILE]
    tl.store(sorted_ids_ptr + dest, offs_p, mask=pair_ok)


def moe_align_blocked(
    topk_ids: torch.Tensor,  # [T, top_k] int
    num_experts: int,
    block_m: int,
) -> MoeAlignment:
    """Any batch size in three launches: per-tile expert counts, one program that scans them
    (each tile's first row per expert, the padding, the block experts), then the scatter."""
    num_pairs = topk_ids.numel()
    if num_pairs == 0 or num_experts > 256:
        raise ValueError(f"{num_pairs} pairs / {num_experts} experts: use moe_align_torch")
    dev = topk_ids.device
    flat = topk_ids.reshape(-1).to(torch.int32)  # [P]
    block_e = triton.next_power_of_2(num_experts)
    num_tiles = triton.cdiv(num_pairs, TILE_PAIRS)
    max_rows = max_padded_rows(num_pairs, num_experts, block_m)
    tiles = torch.empty((num_tiles, block_e), dtype=torch.int32, device=dev)
    sorted_ids = torch.empty((max_rows,), dtype=torch.int32, device=dev)
    expert_ids = torch.empty((max_rows // block_m,), dtype=torch.int32, device=dev)
    num_padded = torch.empty((1,), dtype=torch.int32, device=dev)
    _tile_counts_kernel[(num_tiles,)](
        flat, tiles, num_pairs, TILE=TILE_PAIRS, BLOCK_E=block_e, num_warps=4
    )
    _scan_kernel[(1,)](
        tiles, sorted_ids, expert_ids, num_padded, num_tiles, num_pairs, max_rows,
        max_rows // block_m, NUM_EXPERTS=num_experts, BLOCK_M=block_m, BLOCK_E=block_e,
        BLOCK_T=32, BLOCK_FILL=1024, BLOCK_B=128, num_warps=4,
    )  # fmt: skip
    _scatter_kernel[(num_tiles,)](
        flat, tiles, sorted_ids, num_pairs, TILE=TILE_PAIRS, BLOCK_E=block_e, num_warps=4
    )
    return MoeAlignment(sorted_ids, expert_ids, num_padded, block_m)


def moe_align_small(
    topk_ids: torch.Tensor,  # [T, top_k] int
    num_experts: int,
    block_m: int,
    num_warps: int | None = None,
) -> MoeAlignment:
    """The single-program kernel: every pair and expert of the batch in one block.

    Up to SMALL_MAX_PAIRS pairs and 256 experts: at 1024 pairs x 64 experts its scan needs 256 KB of
    shared memory, more than an H100 has (measured 2026-11-25).
    """
    num_pairs = topk_ids.numel()
    if not 0 < num_pairs <= SMALL_MAX_PAIRS or num_experts > 256:
        raise ValueError(
            f"{num_pairs} pairs / {num_experts} experts exceed the single-program kernel"
        )
    dev = topk_ids.device
    flat = topk_ids.reshape(-1).to(torch.int32)  # [P]
    max_rows = max_padded_rows(num_pairs, num_experts, block_m)
    sorted_ids = torch.empty((max_rows,), dtype=torch.int32, device=dev)
    expert_ids = torch.empty((max_rows // block_m,), dtype=torch.int32, device=dev)
    num_padded = torch.empty((1,), dtype=torch.int32, device=dev)
    _moe_align_small_kernel[(1,)](
        flat, sorted_ids, expert_ids, num_padded, num_pairs, max_rows, max_rows // block_m,
        NUM_EXPERTS=num_experts, BLOCK_M=block_m, BLOCK_P=triton.next_power_of_2(num_pairs),
        BLOCK_E=triton.next_power_of_2(num_experts), BLOCK_FILL=256,
        num_warps=num_warps or 8,
        USE_PDL=use_pdl(topk_ids), launch_pdl=use_pdl(topk_ids),
    )  # fmt: skip
    return MoeAlignment(sorted_ids, expert_ids, num_padded, block_m)


def moe_align_torch(
    topk_ids: torch.Tensor,  # [T, top_k] int
    num_experts: int,
    block_m: int,
) -> MoeAlignment:
    """The torch-operation version (any batch size; the reference of the kernel)."""
    dev = topk_ids.device
    flat = topk_ids.reshape(-1).long()  # [P]
    num_pairs = flat.numel()
    counts = torch.zeros(num_experts, dtype=torch.long, device=dev)
    counts.scatter_add_(0, flat, torch.ones_like(flat))  # [E]
    padded = (counts + block_m - 1) // block_m * block_m
    ends = padded.cumsum(0)  # [E]
    starts = ends - padded
    order = torch.sort(flat, stable=True).indices  # [P]: pair ids grouped by expert
    sorted_exp = flat[order]
    first_of_expert = counts.cumsum(0) - counts
    rank = torch.arange(num_pairs, device=dev) - first_of_expert[sorted_exp]
    dest = starts[sorted_exp] + rank
    max_rows = max_padded_rows(num_pairs, num_experts, block_m)
    sorted_ids = torch.full((max_rows,), num_pairs, dtype=torch.int32, device=dev)
    sorted_ids[dest] = order.to(torch.int32)
    block_start = torch.arange(0, max_rows, block_m, device=dev)
    expert_ids = torch.searchsorted(ends, block_start, right=True).clamp_(max=num_experts - 1)
    return MoeAlignment(
        sorted_ids=sorted_ids,
        expert_ids=expert_ids.to(torch.int32),
        num_padded=ends[-1:].to(torch.int32),
        block_m=block_m,
    )
