"""Sampling of the non-greedy rows on the device: temperature, top-k, top-p and min-p, then the
exponential race, with nothing read back to the host and nothing of the row's size written.

The rule, per row, with `s = logits * (1 / temperature)` (the inverse rounded to fp32 first) and
`m = max(s)`:
- top-k keeps the row's `top_k` best tokens (by rank; all of them when off);
- top-p keeps a token of that set when the tokens of the set strictly more likely than it hold
  less than `top_p` of the set's mass (so tokens tied with the last one kept are kept too);
- min-p keeps a token when `s >= m + log(min_p)`;
- the sample is the kept token with the largest `s - log(E)`, `E ~ Exp(1)` a pure function of
  the row's 64-bit key and the token id (`race_noise`): an exact draw from the kept set's
  renormalised probabilities, the same on any device and batch.

How: four launches at least, none of them writing anything of the row's size. The chunks of each row
(`CHUNK` tokens a program) give their maximum and mass; one program per row takes the row's
maximum and mass from them and finds the kept set's threshold among the row's candidates:
- a row with top-k: its best `top_k` tokens (`torch.topk` of the batch's largest top_k, ranked);
- a row with top-p alone: every token within some distance of the max, at most `CAP` of them. Two
  more passes over the chunks count the row's tokens in bins of a quarter nat below the max and
  write the tokens of the most bins that fit `CAP`, which the row's program sorts by value.
A row whose kept set lies among its candidates is raced there. The others are raced chunk by
chunk over the whole row above their threshold, and a last program per row takes the best chunk:
rows without top-k or top-p, and rows with top-p alone whose kept set reaches past the
candidates (flat rows). For the latter the threshold is searched on the values' bit patterns, 16
ways a round over the row's chunks: nine more launches (when the batch has a row with top-p
alone), which the other rows leave at once.

`race_sample_ref` is the same rule in plain torch (a stable sort of every row), for the CPU and as
the kernel tests' reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from glm47.kernels.race_noise import race_noise, race_noise_block

_NEG_INF_KEY = tl.constexpr(-2139095041)  # the order key of -inf (below it: every float)
BLOCK = 1024  # candidates a program handles per step of its loops
SUB = 512  # tokens per step of a bisection round's loop over its chunk
CHUNK = 4096  # tokens per program of the passes split over a row's chunks
SEARCH_ROUNDS = 8  # 16-way rounds of the flat rows' threshold search: 4 bits each, 32 in all
CAP = 1024  # most candidates a row with top-p alone is raced among (a power of two)
BINS = 64  # bins of the candidates' count: 62 of 1 / BIN_SCALE nats below the max, the rest, none
BIN_SCALE = 4.0


@triton.jit
def _order_key(s):
    """An int32 that orders fp32 values as the values (no NaN)."""
    bits = s.to(tl.int32, bitcast=True)
    return tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)


@triton.jit
def _stats_kernel(
    logits_ptr,  # [N, V] fp32
    params_ptr,  # [N, 4] fp32
    stats_ptr,  # [N, P, 2] fp32 out: each chunk's max of s and sum of exp(s - that max)
    vocab,
    stride_l,
    CHUNK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    offs = chunk * CHUNK + tl.arange(0, CHUNK)
    ok = offs < vocab
    inv_t = tl.load(params_ptr + row * 4)
    s = tl.load(logits_ptr + row * stride_l + offs, mask=ok, other=float("-inf")) * inv_t
    cmax = tl.max(s, axis=0)
    csum = tl.sum(tl.where(ok & (s > float("-inf")), tl.exp(s - cmax), 0.0), axis=0)
    out = stats_ptr + (row * tl.num_programs(1) + chunk) * 2
    tl.store(out, cmax)
    tl.store(out + 1, csum)


@triton.jit
def _row_max(stats_ptr, row, num_chunks, BLOCK_P: tl.constexpr):
    """The row's max of s from its chunks' stats."""
    p_offs = tl.arange(0, BLOCK_P)
    cmax = tl.load(
        stats_ptr + (row * num_chunks + p_offs) * 2, mask=p_offs < num_chunks, other=float("-inf")
    )
    return tl.max(cmax, axis=0)


@triton.jit
def _bin_of(s, ok, m, BINS: tl.constexpr, BIN_SCALE: tl.constexpr):
    """A token's bin: floor((m - s) * BIN_SCALE) up to BINS - 2 (every token further below the
    max); BINS - 1 for no token (past the vocabulary, or banned). Monotone in s, so the tokens of
    the first B bins are every token above some value."""
    d = tl.minimum((m - s) * BIN_SCALE, BINS - 2)
    return tl.where(ok & (s > float("-inf")), d.to(tl.int32), BINS - 1)


@triton.jit
def _bins_kernel(
    logits_ptr,  # [N, V] fp32
    params_ptr,  # [N, 4] fp32
    stats_ptr,  # [N, P, 2] fp32 from _stats_kernel
    hist_ptr,  # [N, P, BINS] int32: each chunk's token count per bin (out when not WRITE)
    cand_ptr,  # [N, CAP] int32 out (WRITE): the candidates' ids, chunk by chunk
    count_ptr,  # [N] int32 out (WRITE): how many
    vocab,
    stride_l,
    CHUNK: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BINS: tl.constexpr,
    BIN_SCALE: tl.constexpr,
    CAP: tl.constexpr,
    WRITE: tl.constexpr,
):
    """Two passes over the chunks of the rows with top-p alone. The first counts each chunk's
    tokens per bin (`_bin_of`). The second writes the row's candidates: the tokens of its first
    B bins, B the most bins whose tokens number at most CAP (possibly none), each chunk at the
    offset that the counts of the chunks before it give."""
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    top_k = tl.load(params_ptr + row * 4 + 1).to(tl.int32)
    top_p = tl.load(params_ptr + row * 4 + 2)
    if (top_k >= vocab) & (top_p < 1.0):
        num_chunks = tl.num_programs(1)
        m = _row_max(stats_ptr, row, num_chunks, BLOCK_P)
        offs = chunk * CHUNK + tl.arange(0, CHUNK)
        ok = offs < vocab
        inv_t = tl.load(params_ptr + row * 4)
        s = tl.load(logits_ptr + row * stride_l + offs, mask=ok, other=float("-inf")) * inv_t
        bins = _bin_of(s, ok, m, BINS, BIN_SCALE)
        b = tl.arange(0, BINS)
        if WRITE:
            p = tl.arange(0, BLOCK_P)
            hist = tl.load(
                hist_ptr + (row * num_chunks + p[:, None]) * BINS + b[None, :],
                mask=p[:, None] < num_chunks,
                other=0,
            )  # [BLOCK_P, BINS]
            total = tl.cumsum(tl.sum(hist, axis=0), axis=0)  # [BINS]: tokens in bins 0..b
            taken = tl.sum(((total <= CAP) & (b < BINS - 1)).to(tl.int32), axis=0)  # B
            per_chunk = tl.sum(tl.where(b[None, :] < taken, hist, 0), axis=1)  # [BLOCK_P]
            start = tl.sum(tl.where(p < chunk, per_chunk, 0), axis=0)
            if chunk == 0:
                tl.store(count_ptr + row, tl.sum(per_chunk, axis=0))
            pick = bins < taken
            at = start + tl.cumsum(pick.to(tl.int32), axis=0) - 1
            tl.store(cand_ptr + row * CAP + at, offs, mask=pick)
        else:
            counts = tl.histogram(bins, BINS)
            tl.store(hist_ptr + (row * num_chunks + chunk) * BINS + b, counts)


@triton.jit
def _race_among(s, ids, ok, floor, key, vocab):
    """The race's winner among a block of tokens: the largest s - log(E) of those kept (`ok` and
    s >= floor), the smallest id on a tie."""
    score = tl.where(ok & (s >= floor), s - race_noise_block(key, ids), float("-inf"))
    top = tl.max(score, axis=0)
    return tl.min(tl.where(score == top, ids, vocab), axis=0)


@triton.jit
def _threshold_kernel(
    logits_ptr,  # [N, V] fp32
    vals_ptr,  # [N, W] fp32: each row's best W logits, best first (W may be 0)
    ids_ptr,  # [N, W] int64: their token ids
    params_ptr,  # [N, 4] fp32: 1 / temperature, top_k (V when off), top_p, log(min_p) or -inf
    keys_ptr,  # [N] int64: the rows' noise keys
    stats_ptr,  # [N, P, 2] fp32 from _stats_kernel
    cand_ptr,  # [N, CAP] int32 from _bins_kernel (COMPACT)
    count_ptr,  # [N] int32 from _bins_kernel (COMPACT)
    floor_ptr,  # [N] fp32 out: the smallest s kept (rows raced over the whole row)
    floor_key_ptr,  # [N] int32 out: the smallest order key kept (same rows)
    whole_ptr,  # [N] int32 out: 0 raced here, 1 over the whole row, 2 after bisection
    out_ptr,  # [N] int64 out: the sample of rows raced here
    max_ptr,  # [N] fp32 out: the row's max of s
    limit_ptr,  # [N] fp32 out: top_p times the mass of the row's top-k set
    bracket_ptr,  # [N, 2] int64 out: the bisection's first bracket (rows with whole 2)
    vocab,
    width,
    num_chunks,
    stride_l,
    stride_c,
    BLOCK: tl.constexpr,
    BLOCK_P: tl.constexpr,
    COMPACT: tl.constexpr,  # whether rows with top-p alone have candidates (else none exist)
    CAP: tl.constexpr,
):
    """Per row: the maximum and mass from the chunks' stats, then the kept set's threshold. A
    row with top-k is raced among its top-k candidates; a row with top-p alone among its
    compacted candidates when they hold its kept set, else it is left to the bisection rounds
    (`_bisect_kernel`) and the chunks (`_race_chunks_kernel`); a row with neither is left to the
    chunks with its min-p floor."""
    row = tl.program_id(0).to(tl.int64)
    inv_t = tl.load(params_ptr + row * 4)
    top_k = tl.load(params_ptr + row * 4 + 1).to(tl.int32)
    top_p = tl.load(params_ptr + row * 4 + 2)
    log_min_p = tl.load(params_ptr + row * 4 + 3)
    key = tl.load(keys_ptr + row)
    p_offs = tl.arange(0, BLOCK_P)
    p_ok = p_offs < num_chunks
    cmax = tl.load(stats_ptr + (row * num_chunks + p_offs) * 2, mask=p_ok, other=float("-inf"))
    csum = tl.load(stats_ptr + (row * num_chunks + p_offs) * 2 + 1, mask=p_ok, other=0.0)
    m = tl.max(cmax, axis=0)
    row_mass = tl.sum(tl.where(cmax > float("-inf"), csum * tl.exp(cmax - m), 0.0), axis=0)
    floor = m + log_min_p
    floor_key = tl.full([], _NEG_INF_KEY, tl.int64)
    whole = tl.full([], 1, tl.int32)
    limit = tl.full([], float("inf"), tl.float32)
    if top_k < vocab:  # among the best `top_k` (ranks of the [N, W] candidates, W >= top_k)
        whole = tl.full([], 0, tl.int32)
        kk = tl.minimum(top_k, width)
        offs = tl.arange(0, BLOCK)
        c_vals = vals_ptr + row * stride_c
        c_ids = ids_ptr + row * stride_c
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, kk, BLOCK):  # the top-k set's mass
            s = tl.load(c_vals + start + offs, mask=start + offs < kk, other=float("-inf"))
            acc += tl.exp(s * inv_t - m)
        limit = tl.where(top_p < 1.0, top_p * tl.sum(acc, axis=0), float("inf"))
        # Top-p over the candidates: the last rank whose better tokens hold less than the limit.
        carry = 0.0
        cut = m
        for start in range(0, kk, BLOCK):
            ranks = start + offs
            s = tl.load(c_vals + ranks, mask=ranks < kk, other=float("-inf")) * inv_t
            e = tl.exp(s - m)
            before = carry + tl.cumsum(e, axis=0) - e
            keep = (ranks < kk) & ((before < limit) | (ranks == 0))
            cut = tl.minimum(cut, tl.min(tl.where(keep, s, float("inf")), axis=0))
            carry += tl.sum(e, axis=0)
        floor = tl.maximum(floor, cut)
        best = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
        best_id = tl.zeros([BLOCK], dtype=tl.int64)
        for start in range(0, kk, BLOCK):
            ranks = start + offs
            ok = ranks < kk
            s = tl.load(c_vals + ranks, mask=ok, other=float("-inf")) * inv_t
            ids = tl.load(c_ids + ranks, mask=ok, other=0)
            score = tl.where(ok & (s >= floor), s - race_noise_block(key, ids), float("-inf"))
            better = score > best
            best = tl.where(better, score, best)
            best_id = tl.where(better, ids, best_id)
        top = tl.max(best, axis=0)
        tl.store(out_ptr + row, tl.min(tl.where(best == top, best_id, vocab), axis=0))
    elif top_p < 1.0:
        if COMPACT:  # among the compacted candidates: every token above some value
            limit = top_p * row_mass
            count = tl.load(count_ptr + row)
            ranks = tl.arange(0, CAP)
            ok = ranks < count
            ids = tl.load(cand_ptr + row * CAP + ranks, mask=ok, other=0)
            s = tl.load(logits_ptr + row * stride_l + ids, mask=ok, other=float("-inf")) * inv_t
            # The values best first: each one's better tokens' mass is a running sum (tied
            # tokens after the first of their tie count each other, which keeps them all when
            # the first is kept, since the race keeps every token >= the smallest kept value).
            v = tl.sort(s, descending=True)
            e = tl.where(ok, tl.exp(v - m), 0.0)
            before = tl.cumsum(e, axis=0) - e
            keep = ok & ((before < limit) | (ranks == 0))
            if tl.sum(e, axis=0) < limit:
                # The kept set reaches past the candidates: its threshold is found by the
                # bisection rounds, from this bracket (above the last candidate, or above the
                # max when there is none, lies less than the limit).
                whole = tl.full([], 2, tl.int32)
                last = tl.min(tl.where(ok, v, m), axis=0)
                tl.store(bracket_ptr + row * 2, tl.full([], _NEG_INF_KEY - 1, tl.int64))
                tl.store(bracket_ptr + row * 2 + 1, _order_key(last).to(tl.int64))
            else:
                whole = tl.full([], 0, tl.int32)
                floor = tl.maximum(floor, tl.min(tl.where(keep, v, float("inf")), axis=0))
                tl.store(out_ptr + row, _race_among(s, ids.to(tl.int64), ok, floor, key, vocab))
    tl.store(floor_ptr + row, floor)
    tl.store(floor_key_ptr + row, floor_key.to(tl.int32))
    tl.store(whole_ptr + row, whole)
    tl.store(max_ptr + row, m)
    tl.store(limit_ptr + row, limit)


@triton.jit
def _bisect_kernel(
    logits_ptr,  # [N, V] fp32
    params_ptr,  # [N, 4] fp32
    whole_ptr,  # [N] int32: rows with 2 take part
    max_ptr,  # [N] fp32: the row's max of s
    limit_ptr,  # [N] fp32: top_p times the row's mass
    bracket_in_ptr,  # [N, 2] int64: (lo, hi) order keys, mass above lo >= limit > above hi
    mass_in_ptr,  # [N, P, 16] fp32: the previous round's masses above its thresholds
    bracket_out_ptr,  # [N, 2] int64
    mass_out_ptr,  # [N, P, 16] fp32
    floor_key_ptr,  # [N] int32: written by the last round
    vocab,
    stride_l,
    num_chunks,
    FIRST: tl.constexpr,
    LAST: tl.constexpr,
    CHUNK: tl.constexpr,
    SUB: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """One round of a 16-way search for the top-p threshold of flat rows, split over the row's
    chunks: the previous round's masses (summed over the chunks by every program alike) narrow
    the bracket to one sixteenth, then each chunk gives its masses above the new thresholds
    lo + j * (hi - lo) / 16. Eight rounds resolve 32 bits; the last one writes the threshold."""
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    if tl.load(whole_ptr + row) == 2:
        j = tl.arange(0, 16)
        lo = tl.load(bracket_in_ptr + row * 2)
        hi = tl.load(bracket_in_ptr + row * 2 + 1)
        limit = tl.load(limit_ptr + row)
        if not FIRST:
            p = tl.arange(0, BLOCK_P)[:, None]
            part = tl.load(
                mass_in_ptr + (row * num_chunks + p) * 16 + j[None, :],
                mask=(p < num_chunks) & (j[None, :] > 0),
                other=0.0,
            )  # [BLOCK_P, 16]
            mass = tl.sum(part, axis=0)  # [16]
            t = lo + ((hi - lo) * j) // 16  # [16] the previous thresholds, t[0] = lo
            first = tl.min(tl.where((j > 0) & (mass < limit), j, 16), axis=0)
            new_hi = tl.where(first < 16, tl.sum(tl.where(j == first, t, 0), axis=0), hi)
            lo = tl.sum(tl.where(j == first - 1, t, 0), axis=0)
            hi = new_hi
        if LAST:
            if chunk == 0:
                tl.store(floor_key_ptr + row, hi.to(tl.int32))
        else:
            if chunk == 0:
                tl.store(bracket_out_ptr + row * 2, lo)
                tl.store(bracket_out_ptr + row * 2 + 1, hi)
            t = lo + ((hi - lo) * j) // 16  # [16]
            inv_t = tl.load(params_ptr + row * 4)
            m = tl.load(max_ptr + row)
            acc = tl.zeros([16], dtype=tl.float32)
            for sub in range(0, CHUNK, SUB):
                offs = chunk * CHUNK + sub + tl.arange(0, SUB)
                ok = offs < vocab
                s = tl.load(logits_ptr + row * stride_l + offs, mask=ok, other=float("-inf"))
                s = s * inv_t
                e = tl.where(ok, tl.exp(s - m), 0.0)  # [SUB]
                above = _order_key(s)[:, None] > t[None, :]  # [SUB, 16]
                acc += tl.sum(tl.where(above, e[:, None], 0.0), axis=0)
            tl.store(mass_out_ptr + (row * num_chunks + chunk) * 16 + j, acc)


@triton.jit
def _race_chunks_kernel(
    logits_ptr,  # [N, V] fp32
    params_ptr,  # [N, 4] fp32
    keys_ptr,  # [N] int64
    floor_ptr,  # [N] fp32
    floor_key_ptr,  # [N] int32
    whole_ptr,  # [N] int32
    best_ptr,  # [N, P] fp32 out: each chunk's best race score (rows raced over the whole row)
    best_id_ptr,  # [N, P] int64 out: its token
    vocab,
    stride_l,
    CHUNK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    if tl.load(whole_ptr + row) != 0:
        ids = (chunk * CHUNK + tl.arange(0, CHUNK)).to(tl.int64)
        ok = ids < vocab
        inv_t = tl.load(params_ptr + row * 4)
        s = tl.load(logits_ptr + row * stride_l + ids, mask=ok, other=float("-inf")) * inv_t
        kept = ok & (s >= tl.load(floor_ptr + row))
        kept = kept & (_order_key(s) >= tl.load(floor_key_ptr + row))
        score = tl.where(kept, s - race_noise_block(tl.load(keys_ptr + row), ids), float("-inf"))
        top = tl.max(score, axis=0)
        out = row * tl.num_programs(1) + chunk
        tl.store(best_ptr + out, top)
        tl.store(best_id_ptr + out, tl.min(tl.where(score == top, ids, vocab), axis=0))


@triton.jit
def _pick_kernel(
    whole_ptr,  # [N] int32
    best_ptr,  # [N, P] fp32
    best_id_ptr,  # [N, P] int64
    out_ptr,  # [N] int64: written for rows raced over the whole row
    num_chunks,
    BLOCK_P: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    if tl.load(whole_ptr + row) != 0:
        p_offs = tl.arange(0, BLOCK_P)
        ok = p_offs < num_chunks
        best = tl.load(best_ptr + row * num_chunks + p_offs, mask=ok, other=float("-inf"))
        ids = tl.load(best_id_ptr + row * num_chunks + p_offs, mask=ok, other=0)
        top = tl.max(best, axis=0)
        first = tl.min(tl.where(ok & (best == top), p_offs, BLOCK_P), axis=0)
        tl.store(out_ptr + row, tl.sum(tl.where(p_offs == first, ids, 0), axis=0))


def candidate_width(top_ks: list[int], vocab: int) -> int:
    """The W of a batch: its largest top_k among the rows with top-k on; 0 when none has."""
    return max((k for k in top_ks if k < vocab), default=0)


def race_sample(
    logits: torch.Tensor,  # [N, V] fp32, last dim contiguous
    params: torch.Tensor,  # [N, 4] fp32: 1 / temperature, top_k (V when off), top_p, log(min_p)
    keys: torch.Tensor,  # [N] int64
    width: int,  # from candidate_width
    top_p_alone: bool = True,  # whether a row has top-p without top-k (False: skip their work)
    cap: int = CAP,  # most candidates of a row with top-p alone (a power of two)
) -> torch.Tensor:  # [N] int64
    """One token per row by the rule of this module. `width` must be at least every row's top_k
    (when on)."""
    n, vocab = logits.shape
    if params.shape != (n, 4) or keys.shape != (n,) or logits.stride(1) != 1:
        raise ValueError(f"race_sample: logits {tuple(logits.shape)}, params "
                         f"{tuple(params.shape)}, keys {tuple(keys.shape)}")  # fmt: skip
    out = torch.empty(n, dtype=torch.int64, device=logits.device)
    if n == 0:
        return out
    dev = logits.device
    if width > 0:
        vals, ids = logits.topk(width, dim=-1)  # [N, W] each, best first
    else:
        vals = torch.empty(n, 1, dtype=torch.float32, device=dev)
        ids = torch.empty(n, 1, dtype=torch.int64, device=dev)
    params = params.contiguous()
    chunks = triton.cdiv(vocab, CHUNK)
    block_p = triton.next_power_of_2(chunks)
    stride = logits.stride(0)
    stats = torch.empty(n, chunks, 2, dtype=torch.float32, device=dev)
    _stats_kernel[(n, chunks)](logits, params, stats, vocab, stride, CHUNK=CHUNK, num_warps=4)
    cands = torch.empty(n, cap if top_p_alone else 1, dtype=torch.int32, device=dev)
    counts = torch.empty(n, dtype=torch.int32, device=dev)
    if top_p_alone:
        hist = torch.empty(n, chunks, BINS, dtype=torch.int32, device=dev)
        for write in (False, True):  # count, then write the candidates
            _bins_kernel[(n, chunks)](
                logits, params, stats, hist, cands, counts, vocab, stride, CHUNK=CHUNK,
                BLOCK_P=block_p, BINS=BINS, BIN_SCALE=BIN_SCALE, CAP=cap, WRITE=write, num_warps=4,
            )  # fmt: skip
    floor = torch.empty(n, dtype=torch.float32, device=dev)
    floor_key = torch.empty(n, dtype=torch.int32, device=dev)
    whole = torch.empty(n, dtype=torch.int32, device=dev)
    row_max = torch.empty(n, dtype=torch.float32, device=dev)
    limit = torch.empty(n, dtype=torch.float32, device=dev)
    brackets = torch.empty(2, n, 2, dtype=torch.int64, device=dev)
    _threshold_kernel[(n,)](
        logits, vals, ids, params, keys, stats, cands, counts, floor, floor_key, whole, out,
        row_max, limit, brackets[0], vocab, width, chunks, stride, vals.stride(0), BLOCK=BLOCK,
        BLOCK_P=block_p, COMPACT=top_p_alone, CAP=cap, num_warps=8,
    )  # fmt: skip
    if top_p_alone:  # flat rows: the threshold past the candidates
        masses = torch.empty(2, n, chunks, 16, dtype=torch.float32, device=dev)
        # Round r reads brackets[r % 2] and writes brackets[(r + 1) % 2]; the one after the
        # last search round only narrows the bracket and writes the threshold.
        for r in range(SEARCH_ROUNDS + 1):
            _bisect_kernel[(n, chunks)](
                logits, params, whole, row_max, limit, brackets[r % 2], masses[(r + 1) % 2],
                brackets[(r + 1) % 2], masses[r % 2], floor_key, vocab, stride, chunks,
                FIRST=r == 0, LAST=r == SEARCH_ROUNDS, CHUNK=CHUNK, SUB=SUB, BLOCK_P=block_p, num_warps=4,
            )  # fmt: skip
    best = torch.empty(n, chunks, dtype=torch.float32, device=dev)
    best_id = torch.empty(n, chunks, dtype=torch.int64, device=dev)
    _race_chunks_kernel[(n, chunks)](
        logits, params, keys, floor, floor_key, whole, best, best_id, vocab, stride,
        CHUNK=CHUNK, num_warps=4,
    )  # fmt: skip
    _pick_kernel[(n,)](whole, best, best_id, out, chunks, BLOCK_P=block_p, num_warps=1)
    return out


def race_sample_ref(
    logits: torch.Tensor,  # [N, V] fp32
    params: torch.Tensor,  # [N, 4] as race_sample
    keys: torch.Tensor,  # [N] int64
) -> torch.Tensor:  # [N] int64
    """`race_sample` in plain torch: every row sorted (stable: tied tokens by id)."""
    vocab = logits.shape[1]
    inv_t, top_k, top_p, log_min_p = params.unbind(dim=1)  # [N] each
    s = logits * inv_t[:, None]  # [N, V]
    vals, ids = s.sort(dim=-1, descending=True, stable=True)  # [N, V] each
    rank = torch.arange(vocab, device=logits.device)[None, :]  # [1, V]
    in_k = rank < top_k[:, None]  # [N, V]
    m = vals[:, :1]  # [N, 1]
    e = torch.where(in_k, (vals - m).exp(), 0.0)  # [N, V]
    before = e.cumsum(dim=-1) - e  # [N, V]
    limit = top_p[:, None] * e.sum(dim=-1, keepdim=True)  # [N, 1]
    keep_rank = in_k & ((before < limit) | (rank == 0) | (top_p[:, None] >= 1.0))
    cut = vals.masked_fill(~keep_rank, float("inf")).amin(dim=-1, keepdim=True)  # [N, 1]
    kept = in_k & (vals >= cut) & (vals >= m + log_min_p[:, None])  # [N, V]
    score = (vals - race_noise(keys[:, None], ids)).masked_fill(~kept, float("-inf"))
    return ids.gather(1, score.argmax(dim=-1, keepdim=True))[:, 0]
