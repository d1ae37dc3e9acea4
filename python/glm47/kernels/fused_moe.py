"""Fused MoE experts: two grouped GEMMs over the expert-sorted routed pairs.

GEMM 1 reads `x[t]` for each pair and `w13[e]` (`[2I, H]`, gate rows first) and writes
`silu(x W_gate^T) * (x W_up^T)` per pair (`[P, I]`, P = T * top_k). GEMM 2 multiplies that by
`w2[e]^T` (`w2[e]` is `[H, I]`) and the routing weight, per pair (`[P, H]`); the top_k rows of a
token are then summed (kernels/topk_sum). Rows of a block all belong to one expert (see
moe_align), so each program reads one expert's weight tile: at decode sizes the kernel is bound by
reading the active experts.

The shared expert can run as one more expert of the same launches (`shared`): expert id E (one past
the routed ones) reads its own weight tensors, every token has one pair of it, last in the token's
row, with weight 1, and the top-k sum adds that row after rounding the routed sum (as the reference
adds the two outputs). At decode sizes that replaces the shared expert's three launches (and the
second stream they ran on) with a few more programs in two launches that run anyway; the
decode-sized entry points that route and run the experts are in kernels/moe_decode.py.

At decode sizes a tile row of GEMM 2 has few programs (one per active expert and column block),
each streaming its weight over the whole of K; `MoeConfig.down_split_k` splits K over more
programs, which write fp32 parts that the top-k sum adds and rounds where GEMM 2 would have.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
import triton
import triton.language as tl

from glm47.kernels.moe_align import MoeAlignment, moe_align
from glm47.kernels.moe_config import MoeConfig, down_candidates, select_config, shape_key
from glm47.kernels.pdl import pdl_wait, prefetch_l2, use_pdl
from glm47.kernels.topk_sum import topk_sum

log = logging.getLogger(__name__)

# The tuner cycles through routings whose expert weights add up to at least this many bytes, so
# that one replay's experts are not left in L2 for the next (an H200 has 50 MB of L2).
TUNE_ROTATION_BYTES = 256 << 20
# With programmatic dependent launch, at most this many expert-weight bytes a launch are asked into
# L2 before the wait (see kernels/pdl): about what the memory moves during the kernel before.
PREFETCH_BYTES = 16 << 20


@triton.jit
def _moe_gemm_kernel(
    a_ptr,  # [rows_a, K]: x [T, K] when A_PER_TOKEN, else the intermediate [P, K]
    w_ptr,  # [E, N_total, K]: N_total = 2N when GATED (gate rows, then up rows), else N
    shared_w_ptr,  # [N_total, K] expert E's weights, same row stride (read when HAS_SHARED)
    c_ptr,  # [P, N], or [SPLIT_K, P, N] fp32 parts
    topk_w_ptr,  # [P] fp32 routing weights (read when MUL_WEIGHT)
    sorted_ids_ptr,  # [max_padded] int32
    expert_ids_ptr,  # [max_padded // BLOCK_M] int32
    num_padded_ptr,  # [1] int32
    hint_ids_ptr,  # [P] int32 expert of each pair (the routing output; read when PREFETCH_K)
    N,
    K,
    num_pairs,
    max_padded,
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
    GROUP_M: tl.constexpr,
    NUM_EXPERTS: tl.constexpr,
    HAS_SHARED: tl.constexpr,
    # K is split over the programs of grid axis 1, K_PER_SPLIT columns each (a multiple of
    # BLOCK_K); split s writes its part of the product to c + s * stride_cs
    K_PER_SPLIT: tl.constexpr,
    # Before the wait, the first PREFETCH_K columns of the block's weight tile are asked into L2
    # (0: none), LINE_ELEMS elements a request. HINT_FROM_PAIRS: the block's expert is guessed as
    # the expert of pair pid_m (GEMM 1, whose alignment may still run), else read from the
    # alignment (GEMM 2: the alignment ran before GEMM 1, so it is complete).
    PREFETCH_K: tl.constexpr,
    LINE_ELEMS: tl.constexpr,
    HINT_FROM_PAIRS: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(max_padded, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_pid_n
    first_m = (pid // per_group) * GROUP_M
    group_size = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_size
    pid_n = (pid % per_group) // group_size
    k_start = tl.program_id(1) * K_PER_SPLIT
    if PREFETCH_K > 0:
        _prefetch_expert_tile(
            w_ptr, shared_w_ptr, hint_ids_ptr, expert_ids_ptr, num_padded_ptr, pid_m, pid_n, N,
            k_start, num_pairs, stride_we, stride_wn, GATED, NUM_EXPERTS, HAS_SHARED, BLOCK_M,
            BLOCK_N, PREFETCH_K, LINE_ELEMS, HINT_FROM_PAIRS,
        )  # fmt: skip
    pdl_wait(USE_PDL)
    if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
        return

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

    k_len = tl.minimum(K_PER_SPLIT, K - k_start)
    acc = tile_product(a_ptrs, w_ptrs, N * stride_wn, row_ok, col_ok, offs_k, K, k_len,
                       BLOCK_M, BLOCK_N, BLOCK_K, GATED)  # fmt: skip
    if MUL_WEIGHT:
        acc = acc * tl.load(topk_w_ptr + pair, mask=row_ok, other=0.0)[:, None]
    c_ptrs = c_ptr + tl.program_id(1) * stride_cs + pair[:, None].to(tl.int64) * stride_cm
    c_ptrs += offs_n[None, :]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def tile_product(
    a_ptrs,  # [BLOCK_M, BLOCK_K]: the rows' first K block
    w_ptrs,  # [BLOCK_K, BLOCK_N]: the weight tile's first K block (the gate rows when GATED)
    up_offset,  # from a gate row to its up row (read when GATED)
    row_ok,  # [BLOCK_M]
    col_ok,  # [BLOCK_N]
    offs_k,  # [BLOCK_K]: the first block's columns
    K,
    k_len,  # columns from the first block on (a multiple of BLOCK_K, or up to K)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GATED: tl.constexpr,
):
    """One tile of a grouped GEMM in fp32: `a @ w` over k_len columns, or `silu(a @ w_gate) *
    (a @ w_up)` when GATED."""
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, k_len, BLOCK_K):
        k_ok = offs_k < K - k0
        a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(a, w, acc)
        if GATED:
            w_up = tl.load(w_ptrs + up_offset, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            acc_up = tl.dot(a, w_up, acc_up)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    if GATED:
        acc = acc * tl.sigmoid(acc) * acc_up
    return acc


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
def _prefetch_expert_tile(
    w_ptr, shared_w_ptr, hint_ids_ptr, expert_ids_ptr, num_padded_ptr, pid_m, pid_n, N, k_start,
    num_pairs, stride_we, stride_wn, GATED: tl.constexpr, NUM_EXPERTS: tl.constexpr,
    HAS_SHARED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PREFETCH_K: tl.constexpr, LINE_ELEMS: tl.constexpr, HINT_FROM_PAIRS: tl.constexpr,
):  # fmt: skip
    """Ask for the start (from column k_start) of this block's weight tile in L2. Only a hint: what it reads was written
    by kernels that finished before the previous one started, and a wrong guess costs bandwidth,
    never a result (the addresses are clamped into the weights)."""
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


def moe_gemm(
    a: torch.Tensor,  # [T, K] (a_per_token) or [P, K]
    w: torch.Tensor,  # [E, 2N or N, K]
    out: torch.Tensor,  # [P, N], or [split_k, P, N] fp32
    topk_weights: torch.Tensor,  # [P] fp32
    align: MoeAlignment,
    top_k: int,
    *,
    a_per_token: bool,
    gated: bool,
    mul_weight: bool,
    cfg: MoeConfig,
    hint_ids: torch.Tensor | None = None,  # [P] int32: the pairs' experts, for the L2 prefetch
    shared_w: torch.Tensor | None = None,  # [2N or N, K]: expert E's weights
    split_k: int = 1,
) -> None:
    """One grouped GEMM over the aligned pairs (see the module docstring). With `split_k` > 1
    (not gated), K is split over that many programs a tile, each writing its fp32 part of the
    (weighted) product to `out[split]`; `topk_sum` adds the parts."""
    k = a.shape[1]
    k_per_split, splits = k_splits(k, cfg.block_k, split_k)
    parts = out if splits > 1 else out.unsqueeze(0)
    if splits > 1 and (gated or out.dim() != 3 or out.shape[0] != splits
                       or out.dtype != torch.float32):  # fmt: skip
        raise ValueError(f"a split GEMM is not gated and writes [{splits}, P, N] fp32 parts")
    n = parts.shape[2]
    if w.shape[2] != k or w.shape[1] != (2 * n if gated else n):
        raise ValueError(f"weights {tuple(w.shape)} do not fit K={k}, N={n}, gated={gated}")
    if a.stride(1) != 1 or w.stride(2) != 1 or parts.stride(2) != 1:
        raise ValueError("a, w and out need a contiguous last dimension")
    if shared_w is not None and (
        shared_w.shape != w.shape[1:]
        or shared_w.stride() != w.stride()[1:]
        or shared_w.dtype != w.dtype
    ):
        raise ValueError(
            f"shared weights {tuple(shared_w.shape)} must be laid out as one expert of {tuple(w.shape)}"
        )
    if align.block_m != cfg.block_m:
        raise ValueError(f"alignment block {align.block_m} != config block_m {cfg.block_m}")
    max_padded = int(align.sorted_ids.shape[0])
    num_blocks = triton.cdiv(max_padded, cfg.block_m)
    grid = (num_blocks * triton.cdiv(n, cfg.block_n), splits)
    pdl = use_pdl(a)
    prefetch_k = 0
    if pdl and hint_ids is not None:  # GEMM 1 guesses one block per pair
        hinted = min(num_blocks, parts.shape[1]) if a_per_token else num_blocks
        prefetch_k = prefetch_columns(
            min(k, k_per_split), hinted * w.shape[1] * w.element_size() * grid[1], w.element_size()
        )
    _moe_gemm_kernel[grid](
        a, w, w if shared_w is None else shared_w, out, topk_weights, align.sorted_ids, align.expert_ids, align.num_padded,
        hint_ids if hint_ids is not None else align.expert_ids,
        n, k, parts.shape[1], max_padded, a.stride(0), w.stride(0), w.stride(1), parts.stride(1),
        parts.stride(0), TOP_K=top_k, A_PER_TOKEN=a_per_token, GATED=gated, MUL_WEIGHT=mul_weight,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
        NUM_EXPERTS=w.shape[0], HAS_SHARED=shared_w is not None, K_PER_SPLIT=k_per_split, PREFETCH_K=prefetch_k, LINE_ELEMS=128 // w.element_size(),
        HINT_FROM_PAIRS=a_per_token, USE_PDL=pdl,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, launch_pdl=pdl,
    )  # fmt: skip


def down_output(x: torch.Tensor, pairs: int, hidden: int, splits: int) -> torch.Tensor:
    """The down GEMM's output: [P, H] in x's dtype, or [S, P, H] fp32 parts when split."""
    if splits == 1:
        return torch.empty((pairs, hidden), dtype=x.dtype, device=x.device)
    return torch.empty((splits, pairs, hidden), dtype=torch.float32, device=x.device)


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


def fused_experts(
    x: torch.Tensor,  # [T, H]
    w13: torch.Tensor,  # [E, 2I, H], gate rows first
    w2: torch.Tensor,  # [E, H, I]
    topk_weights: torch.Tensor,  # [T, top_k] fp32, already renormalised and scaled
    topk_ids: torch.Tensor,  # [T, top_k] int32
    cfg: MoeConfig | None = None,
    extra: Callable[[], torch.Tensor] | None = None,
    shared: tuple[torch.Tensor, torch.Tensor] | None = None,
    align: MoeAlignment | None = None,
) -> torch.Tensor:  # [T, H]
    """sum_j topk_weights[t, j] * expert_{topk_ids[t, j]}(x[t]), expert(x) = down(silu(gate x) * up x).
    With `extra`, that sum rounded to x's dtype plus `extra()` ([T, H], x's dtype), rounded once
    more, in the top-k sum's launch; `extra` is called after both GEMMs are enqueued.

    With `shared` (its gate_up [2I, H] and down [H, I] weights), each token's last column is the
    shared expert (id E, weight 1; see `routing.route_align`), added after the routed sum is
    rounded. `align`: the pairs' layout when the routing already made it (its block_m must be
    `cfg`'s)."""
    t, hidden = x.shape
    num_experts, two_inter, _ = w13.shape
    inter = two_inter // 2
    top_k = topk_ids.shape[1]
    if w13.shape[2] != hidden or w2.shape != (num_experts, hidden, inter):
        raise ValueError(f"w13 {tuple(w13.shape)} / w2 {tuple(w2.shape)} do not fit H={hidden}")
    if x.dtype != w13.dtype or x.dtype != w2.dtype:
        raise ValueError(f"x {x.dtype}, w13 {w13.dtype}, w2 {w2.dtype} must share a dtype")
    if topk_ids.shape != topk_weights.shape or topk_ids.shape[0] != t:
        raise ValueError("topk_ids and topk_weights must both be [T, top_k]")
    if topk_weights.dtype != torch.float32:
        raise ValueError("topk_weights must be float32")
    if shared is not None and top_k < 2:
        raise ValueError("with a shared expert, topk_ids hold the routed experts and one more")
    routed_k = top_k - int(shared is not None)
    if cfg is None:
        cfg = choose_config(x, w13, w2, routed_k)
    x = x.contiguous()
    if align is None:
        align = moe_align(topk_ids, num_experts + int(shared is not None), cfg.block_m)
    shared_w13, shared_w2 = shared if shared is not None else (None, None)
    pairs = t * top_k
    weights = topk_weights.reshape(-1).contiguous()  # [P]
    inter_act = torch.empty((pairs, inter), dtype=x.dtype, device=x.device)  # [P, I]
    flat_ids = topk_ids.reshape(-1)
    hint_ids = flat_ids if flat_ids.dtype == torch.int32 and flat_ids.is_contiguous() else None
    moe_gemm(x, w13, inter_act, weights, align, top_k, a_per_token=True, gated=True,
             mul_weight=False, cfg=cfg, hint_ids=hint_ids, shared_w=shared_w13)  # fmt: skip
    down = cfg.down()
    _, splits = k_splits(inter, down.block_k, cfg.down_splits)
    per_pair = down_output(x, pairs, hidden, splits)
    moe_gemm(inter_act, w2, per_pair, weights, align, top_k, a_per_token=False, gated=False,
             mul_weight=True, cfg=down, hint_ids=hint_ids, shared_w=shared_w2,
             split_k=splits)  # fmt: skip
    return topk_sum(
        per_pair, top_k, add=None if extra is None else extra(), shared_last=shared is not None,
        dtype=x.dtype,
    )  # fmt: skip


def _gpu_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def choose_config(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, top_k: int) -> MoeConfig:
    """Stored, default or autotuned config for this call's shape (see moe_config)."""
    num_experts, two_inter, hidden = w13.shape
    t = x.shape[0]
    key = shape_key(num_experts, hidden, two_inter // 2, top_k, str(x.dtype).removeprefix("torch."))

    def tune(candidates: list[MoeConfig]) -> MoeConfig:  # the tile, then the down GEMM's own
        best = tune_config(x, w13, w2, top_k, candidates)
        return tune_config(x, w13, w2, top_k, down_candidates(best, t, num_experts, top_k))

    # Tuning runs kernels and captures graphs of its own: inside a capture (a bucket the graph
    # runner's warm-up did not see) the stored or default config is used, and nothing is cached.
    capturing = x.is_cuda and torch.cuda.is_current_stream_capturing()
    return select_config(
        _gpu_name(x.device), key, t, num_experts, top_k, tune, may_tune=not capturing
    )


def tune_config(
    x: torch.Tensor,  # [T, H]
    w13: torch.Tensor,  # [E, 2I, H]
    w2: torch.Tensor,  # [E, H, I]
    top_k: int,
    candidates: list[MoeConfig],
) -> MoeConfig:
    """The fastest candidate on random routing of x's token count.

    On a CUDA device each candidate is timed as the server runs it, replayed from a CUDA graph,
    over enough routings that their experts' weights do not fit in L2 (decode layers each read
    other experts): timed eagerly, a one-token call measures the host's launches, not the GPU.
    """
    t, e = x.shape[0], w13.shape[0]
    expert_bytes = (w13[0].numel() + w2[0].numel()) * w13.element_size()
    call_bytes = max(1, min(e, t * top_k)) * expert_bytes
    num_sets = max(1, min(16, -(-TUNE_ROTATION_BYTES // call_bytes))) if x.is_cuda else 1
    routings = []
    for _ in range(num_sets):
        ids = torch.rand((t, e), device=x.device).topk(top_k, dim=1).indices.to(torch.int32)
        wts = torch.rand((t, top_k), device=x.device, dtype=torch.float32)
        routings.append((wts, ids))
    best: tuple[float, MoeConfig] | None = None
    for cfg in candidates:

        def run(cfg: MoeConfig = cfg) -> None:
            for wts, ids in routings:
                fused_experts(x, w13, w2, wts, ids, cfg)

        try:
            run()  # compiles outside the graph capture
            if x.is_cuda:
                torch.cuda.synchronize()
                ms = triton.testing.do_bench_cudagraph(run, rep=20, return_mode="median")
            else:  # the interpreter: wall time of one more run
                start = time.perf_counter()
                run()
                ms = (time.perf_counter() - start) * 1e3
        except triton.runtime.errors.OutOfResources as err:
            log.info("fused MoE tuning: %s skipped: %s", cfg, err)
            continue
        ms = float(ms) / num_sets
        log.debug("fused MoE tuning: T=%d %s %.4f ms", t, cfg, ms)
        if best is None or ms < best[0]:
            best = (ms, cfg)
    if best is None:
        raise RuntimeError("no fused MoE config candidate could run on this device")
    return best[1]


def fused_experts_ref(
    x: torch.Tensor,  # [T, H]
    w13: torch.Tensor,  # [E, 2I, H]
    w2: torch.Tensor,  # [E, H, I]
    topk_weights: torch.Tensor,  # [T, top_k]
    topk_ids: torch.Tensor,  # [T, top_k]
) -> torch.Tensor:  # [T, H]
    """Plain torch reference: each token through each of its experts, in fp32."""
    inter = w13.shape[1] // 2
    xf = x.float()
    out = torch.zeros_like(xf)
    for e in topk_ids.unique().tolist():
        tok, slot = (topk_ids == e).nonzero(as_tuple=True)
        gate_up = xf[tok] @ w13[e].float().T  # [n, 2I]
        act = torch.nn.functional.silu(gate_up[:, :inter]) * gate_up[:, inter:]
        out.index_add_(0, tok, (act @ w2[e].float().T) * topk_weights[tok, slot, None].float())
    return out.to(x.dtype)


def moe_bytes(num_tokens: int, active_experts: int, hidden: int, inter: int, top_k: int) -> int:
    """Fewest bytes in bf16: each active expert's weights once, activations in and out."""
    weights = active_experts * 3 * hidden * inter
    acts = num_tokens * hidden * 2 + num_tokens * top_k * inter * 2
    return 2 * (weights + acts)


def moe_flops(num_tokens: int, hidden: int, inter: int, top_k: int) -> int:
    return 2 * num_tokens * top_k * 3 * hidden * inter
