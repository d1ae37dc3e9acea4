"""MLA decode attention over the paged latent cache (absorbed form, split-K flash decoding).

Every sequence has one query token with H heads, each a `D_LAT + D_ROPE`-wide vector
(`q_nope @ W_UK` concatenated with the roped `q_rope`). All heads attend to the same single key per
cached token: the latent row `[c | k_rope]`; the value is `c` (the first `D_LAT` columns). One
program handles all heads of one sequence over one slice of its tokens, so each cached row is read
from memory once per step. A second kernel merges the slices with their log-sum-exp.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from glm47.kernels.mla_common import LOG2E, check_q_and_cache, gather_latents, split_query
from glm47.kernels.pdl import pdl_wait, prefetch_l2, use_pdl

# How far (log2 units) a head's score may pass the running maximum before the decode kernel
# rescales its accumulator: probabilities stay below 2**8, far inside fp32 and bf16.
RESCALE_SLACK = 8.0
# Unscaled probabilities reach 2**slack and are cast to the cache dtype for the value product:
# fp16 ends at 65504 (just under 2**16).
MAX_RESCALE_SLACK = 15.0

# Arguments that change from step to step outside CUDA graphs (the page table's width, the split
# count of the batch size and the partials' row stride, 20 x splits). Triton would build one
# specialisation per class of value (1, a multiple of 16, other) and compile it the first time a
# step brings it: one such compile took 11.5 s in the middle of a burst. The same for the pointers
# of sliced step tensors (their 16-byte alignment).
STEP_VARYING_DECODE = ["stride_pt", "stride_plb", "num_splits"]
STEP_VARYING_POINTERS = ["page_table_ptr", "seq_lens_ptr"]
# Programs per head of the merge below batch 16 (each takes D_LAT / this many value columns).
MERGE_COLUMN_BLOCKS = 4
# Head groups of the decode steps of at most HEAD_GROUP_MAX_BATCH sequences
# (`small_batch_head_groups`; set once per process by the model runner's kernel options, like
# dependent launch). Two groups measured faster at batch 1 and 2 on an H200 (run CA: the split
# kernel's advance in the batch-1 layer 7.08 to 5.33 µs, steps 3.79 to 3.71 and 5.11 to 5.00 ms)
# and slower at batch 4 (6.43 to 6.66 ms).
DEFAULT_HEAD_GROUPS = 2
HEAD_GROUP_MAX_BATCH = 2
_small_batch_groups = DEFAULT_HEAD_GROUPS


@triton.jit
def _slice_length(seq_len, num_splits, BLOCK_N: tl.constexpr):
    """Cached tokens each slice of a sequence of `seq_len` covers: whole tiles, at least one."""
    return tl.maximum(tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N), 1) * BLOCK_N


@triton.jit
def _slice_bounds(seq_lens_ptr, b, split, num_splits, BLOCK_N: tl.constexpr):
    """[start, end) of sequence b's cached tokens that slice `split` of `num_splits` covers."""
    seq_len = tl.load(seq_lens_ptr + b)
    length = _slice_length(seq_len, num_splits, BLOCK_N)
    start = split * length
    return start, tl.minimum(start + length, seq_len)


@triton.jit
def _tile_slots(
    page_table_ptr, b, stride_pt, n0, end, PAGE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr
):
    """(mask [N], cache slot [N]) of sequence b's positions [n0, n0 + BLOCK_N) through its page
    table; positions at or past `end` are masked and point at page 0 (still a row of the cache)."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    mask_n = offs_n < end
    page = tl.load(page_table_ptr + b * stride_pt + offs_n // PAGE_SIZE, mask=mask_n, other=0)
    return mask_n, page.to(tl.int64) * PAGE_SIZE + offs_n % PAGE_SIZE


@triton.jit
def _cached_rows(kv_ptr, slot, mask_n, stride_kv, D_LAT: tl.constexpr, D_ROPE: tl.constexpr):
    """The cached rows at `slot` ([N]): the two halves of the latent part [N, D_LAT / 2] each and
    the rope part [N, D_ROPE]; masked rows read as zeros."""
    kv_row = kv_ptr + slot[:, None] * stride_kv
    offs_half = tl.arange(0, D_LAT // 2)[None, :]
    k_lo = tl.load(kv_row + offs_half, mask=mask_n[:, None], other=0.0)
    k_hi = tl.load(kv_row + D_LAT // 2 + offs_half, mask=mask_n[:, None], other=0.0)
    k_rope = tl.load(
        kv_row + D_LAT + tl.arange(0, D_ROPE)[None, :], mask=mask_n[:, None], other=0.0
    )
    return k_lo, k_hi, k_rope


@triton.jit
def _prefetch_rows(
    kv_ptr,
    slot,  # [N] cache slots, every one a row of the cache
    stride_kv,
    LINES: tl.constexpr,  # 128-byte lines a row
    BLOCK_L: tl.constexpr,  # LINES rounded up to a power of two
    LINE_ELEMS: tl.constexpr,
):
    """Ask for the 128-byte lines of the cached rows at `slot` in L2."""
    cols = tl.minimum(tl.arange(0, BLOCK_L), LINES - 1) * LINE_ELEMS
    prefetch_l2(kv_ptr + slot[:, None] * stride_kv + cols[None, :])


@triton.jit
def _attend_slice(
    q_row_ptr,  # sequence b's query rows
    qr_row_ptr,
    kv_ptr,
    page_table_ptr,
    po_ptr,  # this slice's partial output [H, D_LAT]
    lse_ptr,  # this slice's log-sum-exp [H]
    pt_row,  # the page-table row the slice's rows are read through
    start,
    end,
    stride_qh,
    stride_qrh,
    stride_kv,
    stride_pt,
    stride_poh,
    num_heads,
    scale_log2,
    mask_n,  # [BLOCK_N]: which of the first tile's positions are in the slice
    slot,  # [BLOCK_N]: the first tile's cache slots
    PAGE_SIZE: tl.constexpr,
    D_LAT: tl.constexpr,
    D_ROPE: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    RESCALE_SLACK: tl.constexpr,
):
    """All heads of one sequence over cached positions [start, end): the normalised partial output
    and its log-sum-exp (log2 units), stored. A tile's slots are read from the page table one
    tile ahead (the first tile's by the caller), so a tile's rows load at once with no page-table
    load before them."""
    offs_h = tl.arange(0, BLOCK_H)
    offs_half = tl.arange(0, D_LAT // 2)
    offs_r = tl.arange(0, D_ROPE)
    mask_h = offs_h < num_heads
    q_row = q_row_ptr + offs_h * stride_qh  # [BLOCK_H]
    qr_row = qr_row_ptr + offs_h * stride_qrh
    q_lo = tl.load(q_row[:, None] + offs_half[None, :], mask=mask_h[:, None], other=0.0)
    q_hi = tl.load(
        q_row[:, None] + D_LAT // 2 + offs_half[None, :], mask=mask_h[:, None], other=0.0
    )
    q_rope = tl.load(qr_row[:, None] + offs_r[None, :], mask=mask_h[:, None], other=0.0)
    acc_lo = tl.zeros([BLOCK_H, D_LAT // 2], dtype=tl.float32)
    acc_hi = tl.zeros([BLOCK_H, D_LAT // 2], dtype=tl.float32)
    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    for n0 in range(start, end, BLOCK_N):
        k_lo, k_hi, k_rope = _cached_rows(kv_ptr, slot, mask_n, stride_kv, D_LAT, D_ROPE)
        tile_mask = mask_n
        mask_n, slot = _tile_slots(page_table_ptr, pt_row, stride_pt, n0 + BLOCK_N, end,
                                   PAGE_SIZE, BLOCK_N)  # fmt: skip
        s = tl.dot(q_lo, tl.trans(k_lo)) + tl.dot(q_hi, tl.trans(k_hi))
        s += tl.dot(q_rope, tl.trans(k_rope))  # [BLOCK_H, N]
        s = tl.where(tile_mask[None, :], s * scale_log2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        if tl.max(m_new - m_i, 0) > RESCALE_SLACK:  # the first tile always (m_i = -inf)
            alpha = tl.exp2(m_i - m_new)
            acc_lo = acc_lo * alpha[:, None]
            acc_hi = acc_hi * alpha[:, None]
            l_i = l_i * alpha
            m_i = m_new
        p = tl.exp2(s - m_i[:, None])
        l_i += tl.sum(p, 1)
        p = p.to(k_lo.dtype)
        acc_lo = tl.dot(p, k_lo, acc_lo)
        acc_hi = tl.dot(p, k_hi, acc_hi)

    has = l_i > 0.0
    norm = tl.where(has, l_i, 1.0)
    po = po_ptr + offs_h * stride_poh  # [BLOCK_H]
    tl.store(po[:, None] + offs_half[None, :], acc_lo / norm[:, None], mask=mask_h[:, None])
    tl.store(
        po[:, None] + D_LAT // 2 + offs_half[None, :], acc_hi / norm[:, None], mask=mask_h[:, None]
    )
    tl.store(lse_ptr + offs_h, tl.where(has, m_i + tl.log2(norm), float("-inf")), mask=mask_h)


@triton.jit(
    do_not_specialize=STEP_VARYING_DECODE, do_not_specialize_on_alignment=STEP_VARYING_POINTERS
)
def _mla_decode_split_kernel(
    q_ptr,  # [B, H, D_LAT] (any strides, contiguous last dimension)
    qr_ptr,  # [B, H, D_ROPE] the roped part of the query
    kv_ptr,  # [num_slots, >= D_LAT + D_ROPE]
    page_table_ptr,  # [B, max_pages] int32
    seq_lens_ptr,  # [B] int32
    part_out_ptr,  # [B, num_splits, H, D_LAT] fp32
    part_lse_ptr,  # [B, num_splits, H] fp32, log2 units
    stride_qb,
    stride_qh,
    stride_qrb,
    stride_qrh,
    stride_kv,
    stride_pt,
    stride_pob,
    stride_pos,
    stride_poh,
    stride_plb,
    stride_pls,
    num_heads,
    heads_per_group,  # heads a program takes (grid axis 2 walks the groups)
    num_splits,
    scale_log2,
    PAGE_SIZE: tl.constexpr,
    D_LAT: tl.constexpr,
    D_ROPE: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    RESCALE_SLACK: tl.constexpr,
    USE_PDL: tl.constexpr,
    HEAD_GROUPS: tl.constexpr = 1,  # grid axis 2; 1: every head in one program
    KV_LINES: tl.constexpr = 9,  # 128-byte lines of a cached row
    KV_BLOCK_L: tl.constexpr = 16,  # KV_LINES rounded up to a power of two
    KV_LINE_ELEMS: tl.constexpr = 64,
    ROWS_PER_TABLE_ROW: tl.constexpr = 1,  # query rows sharing a page-table row (in order)
):
    """One slice of one sequence, one group of heads (all of them unless the launch splits the
    heads: then each group's programs read the slice's rows again): partial output and
    log-sum-exp.

    Per tile of BLOCK_N cached rows: scores `Q @ K^T` ([BLOCK_H, BLOCK_N]) and the accumulator
    `P @ V` ([BLOCK_H, D_LAT]). The latent columns are taken in two halves, so each product is two
    independent chains of tensor-core steps rather than one (the scores' chain runs over the 576
    columns with only BLOCK_N = 32 outputs: latency, not bandwidth, bounded it). The running
    maximum moves, and the accumulator is rescaled, only when a head's tile maximum exceeds it by
    more than RESCALE_SLACK (log2 units; 0 = whenever it grows): until then the probabilities are
    exp2 of at most the slack, and the [BLOCK_H, D_LAT] rescale is skipped.
    """
    # The step's inputs (lengths, page table) were written before its first kernel, so they are
    # read before the wait: the first tile's slots, and with dependent launch its cached rows
    # asked into L2. After the wait only the query and this step's row are new, and they load
    # together with the first tile's rows.
    b = tl.program_id(0)
    split = tl.program_id(1)
    start, end = _slice_bounds(seq_lens_ptr, b, split, num_splits, BLOCK_N)
    pt_row = b // ROWS_PER_TABLE_ROW
    mask_n, slot = _tile_slots(page_table_ptr, pt_row, stride_pt, start, end, PAGE_SIZE, BLOCK_N)
    if USE_PDL and start < end:
        _prefetch_rows(kv_ptr, slot, stride_kv, KV_LINES, KV_BLOCK_L, KV_LINE_ELEMS)
    pdl_wait(USE_PDL)

    h0 = 0  # the group's first head
    group_heads = num_heads
    if HEAD_GROUPS > 1:
        h0 = tl.program_id(2) * heads_per_group
        group_heads = tl.minimum(heads_per_group, num_heads - h0)
    lse_row = part_lse_ptr + b * stride_plb + split * stride_pls + h0
    if start < end:
        _attend_slice(
            q_ptr + b * stride_qb + h0 * stride_qh, qr_ptr + b * stride_qrb + h0 * stride_qrh,
            kv_ptr, page_table_ptr,
            part_out_ptr + b * stride_pob + split * stride_pos + h0 * stride_poh, lse_row, pt_row,
            start, end, stride_qh, stride_qrh, stride_kv, stride_pt, stride_poh, group_heads,
            scale_log2, mask_n, slot, PAGE_SIZE, D_LAT, D_ROPE, BLOCK_H, BLOCK_N, RESCALE_SLACK,
        )  # fmt: skip
    else:
        # Past the sequence's end (most slices at small batches): the partial is left unwritten
        # and its log-sum-exp at -inf, so the merge neither weighs nor reads it.
        offs_h = tl.arange(0, BLOCK_H)
        tl.store(lse_row + offs_h, tl.full([BLOCK_H], float("-inf"), tl.float32),
                 mask=offs_h < group_heads)  # fmt: skip


@triton.jit(do_not_specialize=["stride_plb", "num_splits"],
            do_not_specialize_on_alignment=["seq_lens_ptr"])  # fmt: skip
def _mla_decode_merge_kernel(
    part_out_ptr,  # [B, num_splits, H, D_LAT] fp32
    part_lse_ptr,  # [B, num_splits, H] fp32, log2 units
    seq_lens_ptr,  # [B] int32
    out_ptr,  # [B, H, D_LAT]
    stride_pob,
    stride_pos,
    stride_poh,
    stride_plb,
    stride_pls,
    stride_ob,
    stride_oh,
    num_splits,
    BLOCK_C: tl.constexpr,  # value columns a program
    BLOCK_S: tl.constexpr,
    SPLIT_BLOCK_N: tl.constexpr,  # the split kernel's BLOCK_N
    USE_PDL: tl.constexpr,
):
    """Columns [c * BLOCK_C, (c + 1) * BLOCK_C) of head h of sequence b, from its slices."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_s = tl.arange(0, BLOCK_S)
    # Which slices hold rows follows from the length (written before the step), so it is known
    # before the wait: the partials then load together with their log-sum-exps, not after them.
    seq_len = tl.load(seq_lens_ptr + b)
    used = tl.cdiv(seq_len, _slice_length(seq_len, num_splits, SPLIT_BLOCK_N))
    mask_s = offs_s < used
    pdl_wait(USE_PDL)
    lse = tl.load(
        part_lse_ptr + b * stride_plb + offs_s * stride_pls + h, mask=mask_s, other=float("-inf")
    )  # [BLOCK_S]
    parts = tl.load(
        part_out_ptr
        + b * stride_pob
        + h * stride_poh
        + offs_s[:, None] * stride_pos
        + offs_c[None, :],
        mask=mask_s[:, None],
        other=0.0,
    )  # [BLOCK_S, BLOCK_C]
    w = tl.where(mask_s, tl.exp2(lse - tl.max(lse, 0)), 0.0)
    out = tl.sum(parts * w[:, None], 0) / tl.sum(w, 0)
    tl.store(out_ptr + b * stride_ob + h * stride_oh + offs_c, out.to(out_ptr.dtype.element_ty))


def default_launch(batch: int) -> tuple[int, int, int]:
    """(block_n, num_warps, num_stages) measured best on an H100 for this batch size, and again
    on an H200 (2026-12-02) against 8 warps capped at 128 registers (two programs a
    multiprocessor), which reached 0.42 of the copy bandwidth at batch 256 and 8K tokens against
    0.60 for this launch."""
    return (32, 4, 3) if batch >= 16 else (64, 8, 2)


def set_small_batch_head_groups(groups: int) -> None:
    """The `head_groups` that `small_batch_head_groups` gives up to HEAD_GROUP_MAX_BATCH
    sequences, process-wide."""
    global _small_batch_groups
    if groups < 1:
        raise ValueError(f"head groups must be >= 1, got {groups}")
    _small_batch_groups = groups


def small_batch_head_groups(batch: int, heads: int) -> int:
    """`head_groups` for a decode step of `batch` sequences: the process-wide setting up to
    HEAD_GROUP_MAX_BATCH sequences (at most one group per head), one group above."""
    return min(_small_batch_groups, heads) if batch <= HEAD_GROUP_MAX_BATCH else 1


def default_num_splits(batch: int, num_sms: int = 132, max_seq_len: int | None = None) -> int:
    """Slices per sequence so that all programs are resident at once, none waiting for a slot.

    With `default_launch` two programs fit a multiprocessor's shared memory from batch 16 up, one
    below. Depends on the batch size alone unless `max_seq_len` is given (then no slice is shorter
    than 256 tokens), so a CUDA graph captured per batch size stays valid for any context length:
    slices past a sequence's end return at once. (H100, 2026-11-25, batch 32 at 8K tokens: 8
    slices = 256 programs reached 71% of copy bandwidth, 9 slices = 288 programs 47%.)
    """
    per_sm = 2 if batch >= 16 else 1
    splits = max(1, per_sm * num_sms // batch)
    if max_seq_len is not None:
        splits = min(splits, max(1, max_seq_len // 256))
    return int(min(splits, 64))


def mla_decode(
    q: torch.Tensor,  # [B, H, D_LAT + D_ROPE], or [B, H, D_LAT] with q_rope
    kv_cache: torch.Tensor,  # [num_slots, D_LAT + D_ROPE]
    page_table: torch.Tensor,  # [B, max_pages] int32
    seq_lens: torch.Tensor,  # [B] int32, >= 1
    page_size: int,
    scale: float,
    d_rope: int = 64,
    num_splits: int = 4,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    q_rope: torch.Tensor | None = None,  # [B, H, D_ROPE]: the roped part, when q holds D_LAT
    rescale_slack: float = RESCALE_SLACK,
    head_groups: int = 1,
    rows_per_table_row: int = 1,
) -> torch.Tensor:  # [B, H, D_LAT]
    """Attention of one query token per sequence over its cached latents (values = first D_LAT).

    Launch settings left as None take `default_launch(B)`. `rescale_slack` (log2 units, 0-15) is
    how far a head's score may pass the running maximum before the accumulator is rescaled (see
    `_mla_decode_split_kernel`); every value gives the same result up to rounding. `head_groups`
    > 1 splits the heads over that many programs per slice (each reading the slice's rows), so a
    program's products are narrower: for small batches, where a few programs' chains of
    instructions are the step's time. With `rows_per_table_row` r > 1, query rows [i*r, i*r + r)
    read the cache through page-table row i (each row its own length in `seq_lens`): the tokens
    of a sequence verifying drafts, each attending up to its own position.
    """
    q_lat, q_pe = split_query(q, q_rope, d_rope)
    b, h, d_lat = q_lat.shape
    auto_n, auto_warps, auto_stages = default_launch(b)
    block_n = block_n or auto_n
    num_warps = num_warps or auto_warps
    num_stages = num_stages or auto_stages
    check_q_and_cache(q_lat, kv_cache, d_lat + d_rope)
    if page_table.dtype != torch.int32 or seq_lens.dtype != torch.int32:
        raise ValueError("page_table and seq_lens must be int32")
    if rows_per_table_row < 1 or page_table.shape[0] * rows_per_table_row != b:
        raise ValueError("page_table needs one row per rows_per_table_row query rows")
    if seq_lens.shape != (b,):
        raise ValueError("seq_lens needs one length per query row")
    for dim in (d_lat, d_rope):
        if dim & (dim - 1):
            raise ValueError(f"latent and rope widths must be powers of two, got {dim}")
    if d_lat < 2:
        raise ValueError(f"the latent width is taken in two halves, got {d_lat}")
    if not 0.0 <= rescale_slack <= MAX_RESCALE_SLACK:
        raise ValueError(f"rescale_slack must be in [0, {MAX_RESCALE_SLACK}], got {rescale_slack}")
    if q_lat.is_cuda and (d_lat < 32 or d_rope < 16):
        raise ValueError(
            f"on a GPU the products need d_lat >= 32 and d_rope >= 16, got {d_lat}, {d_rope}"
        )
    if page_size < 1 or page_size & (page_size - 1):
        raise ValueError(f"page_size must be a power of two, got {page_size}")
    if not 1 <= num_splits <= 64:
        raise ValueError(f"num_splits must be in [1, 64], got {num_splits}")
    if not 1 <= head_groups <= h:
        raise ValueError(f"head_groups must be in [1, {h}], got {head_groups}")
    heads_per_group = triton.cdiv(h, head_groups)
    head_groups = triton.cdiv(h, heads_per_group)  # none empty
    block_h = max(16, triton.next_power_of_2(heads_per_group))
    pdl = use_pdl(q_lat)
    kv_lines = triton.cdiv((d_lat + d_rope) * kv_cache.element_size(), 128)  # a cached row's
    part_out = torch.empty((b, num_splits, h, d_lat), dtype=torch.float32, device=q_lat.device)
    part_lse = torch.empty((b, num_splits, h), dtype=torch.float32, device=q_lat.device)
    _mla_decode_split_kernel[(b, num_splits, head_groups)](
        q_lat, q_pe, kv_cache, page_table, seq_lens, part_out, part_lse,
        q_lat.stride(0), q_lat.stride(1), q_pe.stride(0), q_pe.stride(1),
        kv_cache.stride(0), page_table.stride(0),
        part_out.stride(0), part_out.stride(1), part_out.stride(2),
        part_lse.stride(0), part_lse.stride(1),
        h, heads_per_group, num_splits, scale * LOG2E,
        PAGE_SIZE=page_size, D_LAT=d_lat, D_ROPE=d_rope, BLOCK_H=block_h, BLOCK_N=block_n,
        RESCALE_SLACK=float(rescale_slack), HEAD_GROUPS=head_groups, num_warps=num_warps,
        num_stages=num_stages,
        USE_PDL=pdl, launch_pdl=pdl, KV_LINES=kv_lines,
        KV_BLOCK_L=triton.next_power_of_2(kv_lines), KV_LINE_ELEMS=128 // kv_cache.element_size(),
        ROWS_PER_TABLE_ROW=rows_per_table_row,
    )  # fmt: skip
    out = torch.empty((b, h, d_lat), dtype=q_lat.dtype, device=q_lat.device)
    # Small batches spread each head's columns over MERGE_COLUMN_BLOCKS programs, so the few
    # heads' partials are read by more multiprocessors.
    column_blocks = min(MERGE_COLUMN_BLOCKS, d_lat) if b < 16 else 1
    _mla_decode_merge_kernel[(b, h, column_blocks)](
        part_out, part_lse, seq_lens, out,
        part_out.stride(0), part_out.stride(1), part_out.stride(2),
        part_lse.stride(0), part_lse.stride(1), out.stride(0), out.stride(1), num_splits,
        BLOCK_C=d_lat // column_blocks, BLOCK_S=max(2, triton.next_power_of_2(num_splits)),
        SPLIT_BLOCK_N=block_n, num_warps=4, USE_PDL=pdl, launch_pdl=pdl,
    )  # fmt: skip
    return out


def mla_decode_ref(
    q: torch.Tensor,  # [B, H, D_LAT + D_ROPE]
    kv_cache: torch.Tensor,  # [num_slots, D_LAT + D_ROPE]
    page_table: torch.Tensor,  # [B, max_pages] int32
    seq_lens: torch.Tensor,  # [B] int32
    page_size: int,
    scale: float,
    d_rope: int = 64,
) -> torch.Tensor:  # [B, H, D_LAT]
    """Plain torch reference of `mla_decode`, in fp32."""
    width = q.shape[2]
    d_lat = width - d_rope
    outs = []
    for i in range(q.shape[0]):
        rows = gather_latents(kv_cache, page_table[i], int(seq_lens[i]), page_size).float()
        s = q[i].float() @ rows[:, :width].T * scale  # [H, S]
        outs.append(torch.softmax(s, dim=-1) @ rows[:, :d_lat])  # [H, D_LAT]
    return torch.stack(outs).to(q.dtype)


def decode_bytes(batch: int, heads: int, seq_len: int, width: int = 576, d_lat: int = 512) -> int:
    """Fewest bytes a decode step must move in bf16: each cached row once, q in, out once."""
    return 2 * (batch * seq_len * width + batch * heads * width + batch * heads * d_lat)


def decode_flops(batch: int, heads: int, seq_len: int, width: int = 576, d_lat: int = 512) -> int:
    return 2 * batch * heads * seq_len * (width + d_lat)


__all__ = [
    "DEFAULT_HEAD_GROUPS",
    "HEAD_GROUP_MAX_BATCH",
    "RESCALE_SLACK",
    "decode_bytes",
    "decode_flops",
    "default_launch",
    "default_num_splits",
    "mla_decode",
    "mla_decode_ref",
    "set_small_batch_head_groups",
    "small_batch_head_groups",
]
