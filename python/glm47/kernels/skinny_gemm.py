"""`x @ w.T` for a few rows of `x`: the projections of a small decode batch.

With 1-16 tokens a projection is a matrix-vector product bound by reading its weight once, and
at these sizes (2-21 MB a weight) the fixed costs of a launch (start-up, the first loads' latency,
the tail) weigh as much as the bytes. So:

- the grid splits K as well as N (`SPLIT_K` programs per column block), enough programs to keep
  every multiprocessor streaming; the last program of a column block to finish (a counter per
  block, reset by that program) sums the fp32 partials and writes the output, so a split product
  is still one launch;
- or the sum is left to the kernel that reads the product (`skinny_gemm_parts`, a
  `SplitProduct`): that kernel loads the K slices' partials where it would load the product, all
  at once, and sums them in order (kernels/split_k), so no program waits for the others (the
  counter's round trip and the last program's loads took 1.6-1.9 µs of each split projection at
  batch 1 on an H200);
- with programmatic dependent launch (kernels/pdl) a program first asks for the start of its
  weight slice in L2, then waits for the kernel before it: the weight read overlaps that kernel;
- the products run on the tensor cores (rows padded to 16), or for a single row on the CUDA
  cores with the weight tile loaded straight into registers; the launch settings of the model's
  shapes are the fastest measured (`_MEASURED`).

Batched form: `x` [G, M, K], `w` [G, N, K] (any strides; W^T views included), `out` [G, M, N],
one product per group (MLA's per-head absorbed products). `x` is cast to `w`'s dtype in the
kernel (the fp32 router weight takes a bf16 activation). `accumulate` adds the product into `out`
(the shared expert's down projection summed into the routed experts' output).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from glm47.kernels.counters import launch_counters
from glm47.kernels.device import num_sms, runs_triton
from glm47.kernels.pdl import pdl_wait, prefetch_l2, use_pdl
from glm47.kernels.split_k import SplitProduct

MAX_ROWS = 16  # one tensor-core tile of rows; larger batches belong to a GEMM library
# At most this many weight bytes a launch are prefetched into L2 ahead of the wait: about what
# the memory system moves during a short kernel, well inside the 50 MB L2 of an H100 / H200.
PREFETCH_BYTES = 16 << 20
_LINE = 128  # bytes per L2 prefetch


def takes_rows(x: torch.Tensor, rows: int) -> bool:
    """Whether a product of `rows` rows of `x` belongs to this kernel: 1 to MAX_ROWS rows, on a
    device Triton runs on (CUDA, or the CPU under the interpreter)."""
    return runs_triton(x) and 0 < rows <= MAX_ROWS


class SkinnyLaunch(NamedTuple):
    block_n: int
    block_k: int
    split_k: int
    k_per_split: int  # a multiple of block_k
    num_warps: int
    num_stages: int
    # Up to this many rows the products run on the CUDA cores; above, on the tensor cores
    # (which need block_n >= 16).
    fma_rows: int = 0
    # The K loop unrolled (k_per_split // block_k steps), so its loads need not wait for the
    # products before them.
    unroll: bool = False


@triton.jit
def _add_block(
    acc,  # [BLOCK_M, BLOCK_N] fp32
    x_base,  # [BLOCK_M, 1] row pointers of x
    w_base,
    k0,
    offs_n,
    mask_m,
    mask_n,
    k,
    stride_xk,
    stride_wn,
    stride_wk,
    PRECISION: tl.constexpr,
    USE_DOT: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """acc + x[:, k0:k0 + BLOCK_K] @ w[offs_n, k0:k0 + BLOCK_K].T"""
    offs_k = k0 + tl.arange(0, BLOCK_K)
    mask_k = offs_k < k
    x = tl.load(
        x_base + offs_k[None, :] * stride_xk, mask=mask_m[:, None] & mask_k[None, :], other=0.0
    )  # [BLOCK_M, BLOCK_K]
    if USE_DOT:
        w = tl.load(
            w_base + offs_n[None, :].to(tl.int64) * stride_wn + offs_k[:, None] * stride_wk,
            mask=mask_n[None, :] & mask_k[:, None],
            other=0.0,
        )  # [BLOCK_K, BLOCK_N]
        return acc + tl.dot(x.to(w.dtype), w, input_precision=PRECISION)
    # a few rows: products and sums on the CUDA cores, the tile straight to registers
    w = tl.load(
        w_base + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :] * stride_wk,
        mask=mask_n[:, None] & mask_k[None, :],
        other=0.0,
    )  # [BLOCK_N, BLOCK_K]
    xf = x.to(w.dtype).to(tl.float32)
    return acc + tl.sum(xf[:, None, :] * w.to(tl.float32)[None, :, :], axis=2)


# The row count changes from step to step outside CUDA graphs: one compiled variant serves all.
@triton.jit(do_not_specialize=["m"])
def _skinny_gemm_kernel(
    x_ptr,  # [G, M, K]
    w_ptr,  # [G, N, K]
    out_ptr,  # [G, M, N]
    part_ptr,  # [SPLIT_K, G, M, N] fp32 partial products (used when SPLIT_K > 1)
    count_ptr,  # [G, cdiv(N, BLOCK_N)] int32, zero between launches (used when SPLIT_K > 1)
    m,
    n,
    k,
    stride_xg,
    stride_xm,
    stride_xk,
    stride_wg,
    stride_wn,
    stride_wk,
    stride_og,
    stride_om,
    ACCUMULATE: tl.constexpr,
    PRECISION: tl.constexpr,  # "ieee" for fp32 weights (no TF32 rounding), else the default
    USE_DOT: tl.constexpr,  # tensor-core products (BLOCK_M >= 16), else CUDA-core sums
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    K_PER_SPLIT: tl.constexpr,
    UNROLL: tl.constexpr,  # the K loop unrolled
    PARTS: tl.constexpr,  # every program stores its partial and no program sums (SplitProduct)
    # Before the wait, a program asks for a [PF_ROWS, PF_COLS] grid of 128-byte lines of its
    # weight slice, steps PF_ROW_STEP along N and PF_COL_STEP along K (PF_ROWS = 0: none).
    PF_ROWS: tl.constexpr,
    PF_ROW_STEP: tl.constexpr,
    PF_COLS: tl.constexpr,
    PF_COL_STEP: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    g = tl.program_id(2).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < n
    k_start = pid_k * K_PER_SPLIT
    w_base = w_ptr + g * stride_wg
    if PF_ROWS > 0:
        # Addresses clamped into the weight: a hint must not point outside it.
        rows = tl.minimum(pid_n * BLOCK_N + tl.arange(0, PF_ROWS) * PF_ROW_STEP, n - 1)
        cols = tl.minimum(k_start + tl.arange(0, PF_COLS) * PF_COL_STEP, k - 1)
        prefetch_l2(
            w_base + rows[:, None].to(tl.int64) * stride_wn + cols[None, :].to(tl.int64) * stride_wk
        )
    pdl_wait(USE_PDL)

    offs_m = tl.arange(0, BLOCK_M)
    mask_m = offs_m < m
    x_base = x_ptr + g * stride_xg + offs_m[:, None] * stride_xm
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if UNROLL:  # every load of the slice issued up front, none waiting for an earlier product
        for i in tl.static_range(K_PER_SPLIT // BLOCK_K):
            acc = _add_block(acc, x_base, w_base, k_start + i * BLOCK_K, offs_n, mask_m, mask_n,
                             k, stride_xk, stride_wn, stride_wk, PRECISION, USE_DOT, BLOCK_K)  # fmt: skip
    else:
        for k0 in range(k_start, k_start + K_PER_SPLIT, BLOCK_K):
            acc = _add_block(acc, x_base, w_base, k0, offs_n, mask_m, mask_n, k, stride_xk,
                             stride_wn, stride_wk, PRECISION, USE_DOT, BLOCK_K)  # fmt: skip

    out = out_ptr + g * stride_og + offs_m[:, None] * stride_om + offs_n[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    if PARTS:
        num_g = tl.num_programs(2)
        part = part_ptr + (pid_k * num_g + g) * m * n + offs_m[:, None] * n + offs_n[None, :]
        tl.store(part, acc, mask=mask)
    elif SPLIT_K == 1:
        if ACCUMULATE:
            acc += tl.load(out, mask=mask, other=0.0).to(tl.float32)
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        num_g = tl.num_programs(2)
        part = part_ptr + (pid_k * num_g + g) * m * n + offs_m[:, None] * n + offs_n[None, :]
        tl.store(part, acc, mask=mask)
        tl.debug_barrier()  # every thread's partial is stored before the counter moves
        counter = count_ptr + g * tl.num_programs(0) + pid_n
        if tl.atomic_add(counter, 1, sem="acq_rel") == SPLIT_K - 1:
            # The last of the column block: sum the partials (read from L2, not a stale L1).
            total = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for s in range(SPLIT_K):
                src = part_ptr + (s * num_g + g) * m * n + offs_m[:, None] * n + offs_n[None, :]
                total += tl.load(src, mask=mask, other=0.0, cache_modifier=".cg")
            if ACCUMULATE:
                total += tl.load(out, mask=mask, other=0.0).to(tl.float32)
            tl.store(out, total.to(out_ptr.dtype.element_ty), mask=mask)
            tl.atomic_xchg(counter, 0)


# The fastest launches of `benchmarks/kernels.py --only skinny` on an H200 (2026-12-02, CUDA-graph
# replays over rotating weights), per (groups, N, K, weight bytes): at one row the fastest of the
# whole sweep, for more rows the fastest with tensor-core products. Other shapes (and GPUs with
# the same shapes) take the rule in `skinny_launch`.
_MEASURED: dict[tuple[int, int, int, int], tuple[SkinnyLaunch, SkinnyLaunch]] = {
    # qkv_a: 5.81 us at one row (library 6.86)
    (1, 1344, 2048, 2): (SkinnyLaunch(32, 128, 6, 384, 4, 3, 0),) * 2,
    # q_b: 5.22 us (library 4.81)
    (1, 5120, 768, 2): (SkinnyLaunch(32, 256, 1, 768, 4, 3, 0),) * 2,
    # W_UK through its transposed view: 3.86 us (library 3.82)
    (20, 512, 192, 2): (SkinnyLaunch(32, 256, 1, 256, 4, 3, 0),) * 2,
    # W_UV: 3.94 us with CUDA-core sums (library 4.18); 5.62 us with tensor cores
    (20, 256, 512, 2): (SkinnyLaunch(8, 512, 1, 512, 4, 3, 1), SkinnyLaunch(32, 128, 4, 128, 4, 3, 0)),
    # o_proj: 9.39 us with K split in 8 (library 10.89), 8.9 us in 4. Its partials go to the norm
    # after it (a SplitProduct), which reads fewer of them in 4: batch 1-16 0.08-0.17 ms faster
    # than in 8 in the chain (H200, 2026-12-03)
    (1, 2048, 5120, 2): (SkinnyLaunch(32, 128, 4, 1280, 4, 3, 0),) * 2,
    # the fp32 router: 3.75 us with CUDA-core sums (library, with the cast, 7.73); 6.33 us
    (1, 64, 2048, 4): (SkinnyLaunch(8, 256, 8, 256, 4, 3, 1), SkinnyLaunch(16, 128, 16, 128, 4, 3, 0)),
    # the shared expert's gate_up: 7.72 us (library 6.39); 7.74 us with tensor cores
    (1, 3072, 2048, 2): (SkinnyLaunch(8, 512, 1, 2048, 4, 3, 1), SkinnyLaunch(32, 256, 1, 2048, 4, 3, 0)),
    # its down projection: 5.44 us (library 5.28); 5.85 us with tensor cores
    (1, 2048, 1536, 2): (SkinnyLaunch(8, 512, 1, 1536, 4, 3, 1), SkinnyLaunch(32, 128, 4, 384, 4, 3, 0)),
}  # fmt: skip


def skinny_launch(
    n: int, k: int, num_sms: int = 132, m: int = 1, groups: int = 1, elem_bytes: int = 2
) -> SkinnyLaunch:
    """The measured launch of a known shape, else: tensor-core products, column blocks of 32, and
    K split so that about two programs per multiprocessor stream the weight (each at least two K
    blocks, so the pipeline has something to overlap)."""
    measured = _MEASURED.get((groups, n, k, elem_bytes))
    if measured is not None:
        return (
            measured[0] if m <= measured[0].fma_rows or measured[0].fma_rows == 0 else measured[1]
        )
    block_n = 32
    block_k = 256 if k >= 512 else max(32, triton.next_power_of_2(k) // 2)
    n_blocks = triton.cdiv(n, block_n) * groups
    k_blocks = triton.cdiv(k, block_k)
    split = max(1, min(round(2 * num_sms / n_blocks), k_blocks // 2))
    k_per_split = triton.cdiv(k_blocks, split) * block_k
    split = triton.cdiv(k, k_per_split)
    return SkinnyLaunch(block_n, block_k, split, k_per_split, 4, 3, 0)


def _pow2_floor(v: int) -> int:
    return 1 << (v.bit_length() - 1) if v > 0 else 0


def _prefetch_grid(cfg: SkinnyLaunch, w3: torch.Tensor, rows: int) -> tuple[int, int, int, int]:
    """(PF_ROWS, PF_ROW_STEP, PF_COLS, PF_COL_STEP): one address per 128-byte line of the first
    columns of a program's weight slice, as many columns as keep the whole launch within
    PREFETCH_BYTES (`rows`: weight rows over all groups). (0, 1, 1, 1) when nothing fits."""
    elem = w3.element_size()
    line = _LINE // elem
    cols = _pow2_floor(min(cfg.k_per_split, PREFETCH_BYTES // max(1, rows * elem)))
    if w3.stride(2) == 1 and cols >= line:  # rows contiguous along K
        return cfg.block_n, 1, cols // line, line
    if w3.stride(1) == 1 and cols >= 1:  # a transposed view: contiguous along N
        return max(1, cfg.block_n // line), line, cols, 1
    return 0, 1, 1, 1


def _as_groups(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x and w as [G, M, K] and [G, N, K], checked."""
    batched = x.dim() == 3
    if x.dim() not in (2, 3) or w.dim() != x.dim() or x.shape[-1] != w.shape[-1]:
        raise ValueError(
            f"x {tuple(x.shape)} and w {tuple(w.shape)} must be [(G,) M, K], [(G,) N, K]"
        )
    if batched and x.shape[0] != w.shape[0]:
        raise ValueError(f"x has {x.shape[0]} groups, w {w.shape[0]}")
    x3 = x if batched else x.unsqueeze(0)
    if x3.shape[1] > MAX_ROWS:
        raise ValueError(f"skinny_gemm takes at most {MAX_ROWS} rows, got {x3.shape[1]}")
    return x3, w if batched else w.unsqueeze(0)


def _launch(
    x3: torch.Tensor,  # [G, M, K]
    w3: torch.Tensor,  # [G, N, K]
    o3: torch.Tensor | None,  # [G, M, N]; None: leave the partials (a SplitProduct's)
    accumulate: bool,
    launch: SkinnyLaunch | None,
) -> torch.Tensor | None:  # the partials [S, G, M, N] fp32 when o3 is None
    g, m, k = x3.shape
    n = w3.shape[1]
    cfg = launch or skinny_launch(n, k, num_sms(x3.device), m, g, w3.element_size())
    n_blocks = triton.cdiv(n, cfg.block_n)
    pdl = use_pdl(x3)
    pf = _prefetch_grid(cfg, w3, g * n) if pdl else (0, 1, 1, 1)
    part = None
    if o3 is None or cfg.split_k > 1:
        part = torch.empty((cfg.split_k, g, m, n), dtype=torch.float32, device=x3.device)
    counters = (
        launch_counters("skinny_gemm", w3, g * n_blocks)
        if o3 is not None and cfg.split_k > 1
        else None
    )
    precision = "ieee" if w3.dtype == torch.float32 else "tf32"
    use_dot = m > cfg.fma_rows
    if use_dot and cfg.block_n < 16:
        raise ValueError(f"tensor-core products need block_n >= 16, got {cfg}")
    block_m = 16 if use_dot else triton.next_power_of_2(m)
    dst = o3 if o3 is not None else part
    assert dst is not None
    _skinny_gemm_kernel[(n_blocks, cfg.split_k, g)](
        x3, w3, dst, dst if part is None else part, dst if counters is None else counters,
        m, n, k,
        x3.stride(0), x3.stride(1), x3.stride(2), w3.stride(0), w3.stride(1), w3.stride(2),
        dst.stride(-3), dst.stride(-2),
        ACCUMULATE=accumulate, PRECISION=precision, USE_DOT=use_dot, BLOCK_M=block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k, SPLIT_K=cfg.split_k, K_PER_SPLIT=cfg.k_per_split, UNROLL=cfg.unroll,
        PARTS=o3 is None, PF_ROWS=pf[0], PF_ROW_STEP=pf[1], PF_COLS=pf[2], PF_COL_STEP=pf[3],
        USE_PDL=pdl, num_warps=cfg.num_warps, num_stages=cfg.num_stages, launch_pdl=pdl,
    )  # fmt: skip
    return part


def skinny_gemm(
    x: torch.Tensor,  # [M, K] or [G, M, K], M <= MAX_ROWS
    w: torch.Tensor,  # [N, K] (an nn.Linear weight) or [G, N, K]
    out: torch.Tensor | None = None,  # [M, N] or [G, M, N]
    accumulate: bool = False,
    launch: SkinnyLaunch | None = None,
) -> torch.Tensor:  # [M, N] or [G, M, N] in out's dtype (w's without out)
    """`x @ w.T` per group, or `out += x @ w.T` with `accumulate`; fp32 accumulation, rounded once."""
    x3, w3 = _as_groups(x, w)
    g, m, _ = x3.shape
    n = w3.shape[1]
    if out is None:
        if accumulate:
            raise ValueError("accumulate needs out")
        out = torch.empty((*x.shape[:-1], n), dtype=w.dtype, device=x.device)
    if out.shape != (*x.shape[:-1], n) or out.stride(-1) != 1:
        raise ValueError(f"out must be {(*x.shape[:-1], n)} with a contiguous last dim")
    if m and n and g:
        _launch(x3, w3, out if x.dim() == 3 else out.unsqueeze(0), accumulate, launch)
    return out


def skinny_gemm_parts(
    x: torch.Tensor,  # [M, K], 1 <= M <= MAX_ROWS
    w: torch.Tensor,  # [N, K]
    launch: SkinnyLaunch | None = None,
) -> SplitProduct:  # of [M, N], rounding to w's dtype
    """`x @ w.T` as its K slices' partials, for a kernel that sums them as it reads the product
    (`load_summed`): one launch, no program waiting for the others."""
    if x.dim() != 2:
        raise ValueError(f"x must be [M, K], got {tuple(x.shape)}")
    x3, w3 = _as_groups(x, w)
    if x.shape[0] == 0 or w.shape[0] == 0:
        raise ValueError("skinny_gemm_parts needs a non-empty product")
    part = _launch(x3, w3, None, False, launch)
    assert part is not None
    return SplitProduct(part[:, 0], w.dtype)


def skinny_gemm_ref(
    x: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None, accumulate: bool = False
) -> torch.Tensor:
    prod = x.float() @ w.float().transpose(-1, -2)
    if accumulate:
        assert out is not None
        prod = prod + out.float()
    return prod.to(w.dtype if out is None else out.dtype)


__all__ = [
    "MAX_ROWS",
    "SkinnyLaunch",
    "skinny_gemm",
    "skinny_gemm_parts",
    "skinny_gemm_ref",
    "skinny_launch",
    "takes_rows",
]
