"""The MLA decode part of benchmarks/kernels.py (`--only decode,fi_decode`): kernels/mla_decode's
split and merge over paged caches at real shapes, each launch of `DECODE_CFGS`, and FlashInfer's
paged MLA decode at the same shapes where it is installed.
"""

from __future__ import annotations

from functools import partial

import torch
from bench_common import (
    BF16,
    D_LAT,
    D_ROPE,
    DEV,
    HEADS,
    SCALE,
    WIDTH,
    Row,
    graph_ms,
    paged_cache,
    row,
    time_ms,
)

from glm47.kernels.mla_decode import decode_bytes, decode_flops, default_num_splits, mla_decode

# (block_n, warps, stages, rescale slack, head groups). Slack 0 rescales the accumulator whenever
# a head's maximum grows (as the kernel did before the slack). 8 warps capped at 128 registers
# (two programs a multiprocessor) measured slower on the H200 (2026-12-02) and were dropped. Two
# head groups (10 heads a program) only where the batch is small.
DECODE_CFGS = [(32, 4, 3, 0.0, 1), (32, 4, 3, 8.0, 1), (32, 4, 2, 8.0, 1), (64, 8, 2, 8.0, 1),
               (64, 8, 2, 8.0, 2), (64, 4, 2, 8.0, 2), (32, 8, 2, 8.0, 2), (32, 4, 2, 8.0, 2)]  # fmt: skip


def bench_decode(ceil: dict, sms: int, batches: tuple[int, ...] = (1, 32, 256)) -> list[Row]:
    rows = []
    for batch in batches:
        for ctx in (1024, 8192):
            nbytes, flops = decode_bytes(batch, HEADS, ctx), decode_flops(batch, HEADS, ctx)
            copies = min(64, max(1, -(-200_000_000 // nbytes)))
            lens = torch.full((batch,), ctx, dtype=torch.int32, device=DEV)
            sets = []
            for _ in range(copies):
                cache, table = paged_cache(batch, ctx, 16)
                q = torch.randn((batch, HEADS, WIDTH), dtype=BF16, device=DEV)
                sets.append((q, cache, table, lens, 16, SCALE))
            base = default_num_splits(batch, sms)
            for bn, warps, stages, slack, groups in DECODE_CFGS:
                if groups > 1 and batch >= 16:
                    continue
                # Besides the default and its neighbours, fewer slices for short contexts: each
                # slice writes a 20 x 512 fp32 partial, which at batch 1 and 1K tokens with 64
                # slices is twice the bytes of the cache it reads.
                few = {max(1, base // 8), max(1, base // 4)} if batch * ctx <= 32 * 1024 else set()
                for splits in sorted({base, max(1, base // 2), min(64, base * 2), *few}):
                    ms = graph_ms(
                        mla_decode, sets, num_splits=splits, block_n=bn, num_warps=warps,
                        num_stages=stages, rescale_slack=slack, head_groups=groups,
                    )  # fmt: skip
                    var = f"graph x{copies} bn{bn} w{warps} s{stages} slack{slack:g} splits{splits}"
                    var += f" hg{groups}" if groups > 1 else ""
                    shape = f"B={batch} ctx={ctx}"
                    rows.append(row("mla_decode", shape, var, ms, nbytes, flops, ceil))
            del sets
    return rows


def bench_fi_decode(ceil: dict) -> list[Row]:
    """FlashInfer's paged MLA decode (BatchMLAPagedAttentionWrapper), if installed, at the shapes of
    `bench_decode`: checked against our kernel, then timed. Shapes whose cache fills L2 many times
    over replay one planned call from a CUDA graph; smaller ones are timed eagerly with L2 flushed
    (launch included), since a plan covers one page table and so cannot rotate input sets."""
    try:
        from flashinfer.mla import BatchMLAPagedAttentionWrapper  # type: ignore[import-not-found]
    except ImportError as err:
        print(f"fi_decode: flashinfer not importable: {err}")
        return []
    rows = []
    workspace = torch.empty(128 << 20, dtype=torch.uint8, device=DEV)
    for backend in ("fa2", "fa3"):
        for batch in (1, 32, 256):
            for ctx in (1024, 8192):
                nbytes, flops = decode_bytes(batch, HEADS, ctx), decode_flops(batch, HEADS, ctx)
                cache, table = paged_cache(batch, ctx, 16)
                q = torch.randn((batch, HEADS, WIDTH), dtype=BF16, device=DEV)
                lens = torch.full((batch,), ctx, dtype=torch.int32, device=DEV)
                pages = cache.view(-1, 16, WIDTH)
                qo_indptr = torch.arange(batch + 1, dtype=torch.int32, device=DEV)
                kv_indptr = qo_indptr * (ctx // 16)
                try:
                    wrapper = BatchMLAPagedAttentionWrapper(workspace, backend=backend)
                    wrapper.plan(qo_indptr, kv_indptr, table.reshape(-1), lens, HEADS, D_LAT,
                                 D_ROPE, 16, False, SCALE, BF16, BF16)  # fmt: skip
                    q_nope, q_pe = q[..., :D_LAT].contiguous(), q[..., D_LAT:].contiguous()
                    fn = partial(wrapper.run, q_nope, q_pe, pages[..., :D_LAT], pages[..., D_LAT:])
                    ref = mla_decode(q, cache, table, lens, 16, SCALE)
                    maxdiff = float((fn().float() - ref.float()).abs().max())
                except Exception as exc:  # a backend this card or build cannot run
                    print(f"fi_decode {backend} B={batch} ctx={ctx}: {type(exc).__name__}: {exc}")
                    continue
                if nbytes >= 200_000_000:
                    ms, how = graph_ms(fn, [()]), "graph"
                else:
                    ms, how = time_ms(fn), "eager, L2 flushed"
                var = f"flashinfer {backend} {how} maxdiff {maxdiff:.1e}"
                rows.append(
                    row("fi_mla_decode", f"B={batch} ctx={ctx}", var, ms, nbytes, flops, ceil)
                )
            del cache, table
    return rows
