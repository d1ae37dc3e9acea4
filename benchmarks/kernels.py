"""Kernel timings at the real GLM-4.7-Flash shapes against the ceilings measured in the same run.

    python benchmarks/kernels.py [--only ceil,decode,fi_decode,prefill,varlen,moe,moe_decode,small,skinny,align,fa3] [--moe-sweep] [--json F]
        [--decode-batches 1,32,256]

Every time is the median of `triton.testing.do_bench` (L2 flushed before each run, events around
the call). Fractions are of the measured device-to-device copy bandwidth (memory-bound kernels) or
of the measured bf16 matmul rate (compute-bound ones). Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from bench_common import (
    BF16,
    D_LAT,
    D_ROPE,
    DEV,
    EXPERTS,
    HEADS,
    HIDDEN,
    INTER,
    SCALE,
    TOP_K,
    WIDTH,
    Row,
    best_rows,
    ceilings,
    graph_ms,
    paged_cache,
    print_table,
    row,
    time_ms,
)
from bench_decode import bench_decode, bench_fi_decode
from bench_moe_decode import bench_moe_decode
from bench_skinny import bench_skinny

from glm47.kernels.activation import silu_and_mul, silu_and_mul_ref
from glm47.kernels.device import num_sms
from glm47.kernels.fused_moe import (
    choose_config,
    fused_experts,
    moe_bytes,
    moe_flops,
    moe_gemm,
)
from glm47.kernels.mla_prefill import mla_prefill, prefill_flops
from glm47.kernels.moe_align import (
    moe_align,
    moe_align_blocked,
    moe_align_small,
    moe_align_torch,
)
from glm47.kernels.moe_config import MoeConfig, candidate_configs
from glm47.kernels.rmsnorm import rmsnorm
from glm47.kernels.rope import apply_rope_, rope_and_cache_, rope_cos_sin
from glm47.kernels.routing import route_topk, route_topk_ref
from glm47.kernels.varlen_attention import varlen_attention


def tag(cfg: MoeConfig) -> str:
    return (
        f"bm{cfg.block_m} bn{cfg.block_n} bk{cfg.block_k} g{cfg.group_m} "
        f"w{cfg.num_warps} s{cfg.num_stages}"
    )


PREFILL_CFGS = [(64, 64, 8, 2), (64, 64, 4, 2), (64, 128, 8, 2), (64, 64, 8, 3), (32, 64, 4, 2)]


def bench_prefill(ceil: dict) -> list[Row]:
    rows = []
    for nseq, new, prefix in ((1, 8192, 0), (4, 1024, 3072)):
        ctx = new + prefix
        cache, table = paged_cache(nseq, ctx, 16)
        q = torch.randn((nseq * new, HEADS, WIDTH), dtype=BF16, device=DEV)
        qsl = torch.arange(0, nseq + 1, dtype=torch.int32, device=DEV) * new
        lens = torch.full((nseq,), ctx, dtype=torch.int32, device=DEV)
        flops = nseq * prefill_flops(new, prefix, HEADS)
        nbytes = 2 * (nseq * ctx * WIDTH + q.numel() + nseq * new * HEADS * D_LAT)
        for bm, bn, warps, stages in PREFILL_CFGS:
            try:
                ms = time_ms(
                    mla_prefill, q, cache, table, qsl, lens, new, 16, SCALE, block_m=bm,
                    block_n=bn, num_warps=warps, num_stages=stages,
                )  # fmt: skip
            except triton.runtime.errors.OutOfResources as err:
                print(f"mla_prefill bm{bm} bn{bn}: {err}")
                continue
            shape = f"seqs={nseq} new={new} prefix={prefix}"
            var = f"bm{bm} bn{bn} w{warps} s{stages}"
            rows.append(row("mla_prefill", shape, var, ms, nbytes, flops, ceil))
    return rows


def _sdpa_err(out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str:
    """`out`'s relative error against fp32 causal SDPA of one sequence ([T, H, D] each)."""
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1).float(), k.transpose(0, 1).float(), v.transpose(0, 1).float(),
        is_causal=True, scale=SCALE,
    ).transpose(0, 1)  # fmt: skip
    return f"rel err vs fp32 sdpa = {float((out.float() - ref).norm() / ref.norm()):.2e}"


# kernels/varlen_attention's launches at head dims 256 / 256 (block_m, block_n, warps, stages)
VARLEN_CFGS = [(64, 64, 4, 2), (64, 32, 4, 2), (64, 64, 8, 2), (128, 64, 8, 2), (128, 32, 8, 2),
               (64, 32, 4, 3), (128, 64, 8, 1), (128, 128, 8, 1), (128, 32, 8, 3),
               (128, 64, 16, 2)]  # fmt: skip


def bench_varlen(ceil: dict) -> list[Row]:
    """MLA's expanded form through kernels/varlen_attention (the Triton backend's long prefill
    steps): correctness against fp32 sdpa, then each launch at one 8K prompt and at four 1K
    chunks after 3K cached tokens; FLOPs of the causal pairs over 256 + 256 columns a head."""
    rows = []
    for nseq, new, prefix in ((1, 512, 0), (1, 8192, 0), (4, 1024, 3072)):
        ctx = new + prefix
        q = torch.randn((nseq * new, HEADS, 256), dtype=BF16, device=DEV)
        k = torch.randn((nseq * ctx, HEADS, 256), dtype=BF16, device=DEV)
        v = torch.randn_like(k)
        cu_q = torch.arange(nseq + 1, dtype=torch.int32, device=DEV) * new
        cu_k = torch.arange(nseq + 1, dtype=torch.int32, device=DEV) * ctx
        if new == 512:
            out = varlen_attention(q, k, v, cu_q, cu_k, new, ctx, SCALE)
            print(f"varlen_attention causal hdim 256/256, T=512: {_sdpa_err(out, q, k, v)}")
            continue
        pairs = nseq * (new * prefix + new * (new + 1) // 2)
        flops, nbytes = 2 * HEADS * pairs * 512, 2 * (q.numel() + k.numel() + v.numel() + q.numel())
        for launch in VARLEN_CFGS:
            try:
                ms = time_ms(varlen_attention, q, k, v, cu_q, cu_k, new, ctx, SCALE, launch)
            except (triton.runtime.errors.OutOfResources, triton.runtime.errors.PTXASError) as err:
                print(f"varlen_attention {launch} does not fit: {type(err).__name__}")
                continue
            shape = f"seqs={nseq} new={new} prefix={prefix}"
            var = "bm{} bn{} w{} s{}".format(*launch)
            rows.append(row("varlen_attention", shape, var, ms, nbytes, flops, ceil))
    return rows


def grouped_mm_baseline(
    x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, ids: torch.Tensor
) -> torch.Tensor:
    """torch._grouped_mm over tokens sorted by expert (the reference of docs/gpu.md), unweighted."""
    order = ids.view(-1).argsort()
    xs = x[order // TOP_K]
    counts = torch.bincount(ids.view(-1), minlength=EXPERTS)
    offs = counts.cumsum(0).int()
    h = torch._grouped_mm(xs, w13.transpose(1, 2), offs=offs)
    act = torch.nn.functional.silu(h[:, :INTER]) * h[:, INTER:]
    return torch._grouped_mm(act, w2.transpose(1, 2), offs=offs)


def bench_moe(ceil: dict, sweep: bool) -> tuple[list[Row], dict[int, MoeConfig]]:
    rows, tuned = [], {}
    w13 = torch.randn((EXPERTS, 2 * INTER, HIDDEN), dtype=BF16, device=DEV) * 0.02
    w2 = torch.randn((EXPERTS, HIDDEN, INTER), dtype=BF16, device=DEV) * 0.02
    for t in (1, 32, 256, 8192):
        x = torch.randn((t, HIDDEN), dtype=BF16, device=DEV)
        ids = torch.rand((t, EXPERTS), device=DEV).topk(TOP_K, dim=1).indices.int()
        wts = torch.rand((t, TOP_K), device=DEV)
        active = int(ids.unique().numel())
        nbytes, flops = (
            moe_bytes(t, active, HIDDEN, INTER, TOP_K),
            moe_flops(t, HIDDEN, INTER, TOP_K),
        )
        shape = f"T={t} active={active}"
        stored = choose_config(x, w13, w2, TOP_K)
        cfgs = [(f"stored/default {tag(stored)}", stored)]
        if sweep:
            cfgs += [(tag(c), c) for c in candidate_configs(t, EXPERTS, TOP_K)]
        best: tuple[float, MoeConfig] | None = None
        for name, cfg in cfgs:
            try:
                ms = time_ms(fused_experts, x, w13, w2, wts, ids, cfg)
            except triton.runtime.errors.OutOfResources as err:
                print(f"fused_moe {shape} {name}: {err}")
                continue
            rows.append(row("fused_moe", shape, name, ms, nbytes, flops, ceil))
            if best is None or ms < best[0]:
                best = (ms, cfg)
        if best is None:
            continue
        tuned[t] = best[1]
        rows.append(gemm_only_row(x, w13, w2, wts, ids, best[1], shape, nbytes, flops, ceil))
        if t <= 256:
            graph_fn = partial(fused_experts, x, w13, w2, wts, ids, best[1])
            g_ms = float(triton.testing.do_bench_cudagraph(graph_fn, rep=50, return_mode="median"))
            rows.append(
                row("fused_moe", shape, f"graph replay {tag(best[1])}", g_ms, nbytes, flops, ceil)
            )
        try:
            ms = time_ms(grouped_mm_baseline, x, w13, w2, ids)
            rows.append(row("torch_grouped_mm", shape, "baseline", ms, nbytes, flops, ceil))
        except RuntimeError as err:
            print(f"torch._grouped_mm baseline failed: {err}")
    return rows, tuned


def gemm_only_row(x, w13, w2, wts, ids, cfg, shape, nbytes, flops, ceil) -> Row:  # type: ignore[no-untyped-def]
    """The two grouped GEMMs alone (alignment done once outside), to show the alignment's share."""
    t = x.shape[0]
    align = moe_align(ids, EXPERTS, cfg.block_m)
    inter = torch.empty((t * TOP_K, INTER), dtype=BF16, device=DEV)
    out = torch.empty((t * TOP_K, HIDDEN), dtype=BF16, device=DEV)
    flat_w = wts.reshape(-1)

    def run() -> None:
        moe_gemm(
            x,
            w13,
            inter,
            flat_w,
            align,
            TOP_K,
            a_per_token=True,
            gated=True,
            mul_weight=False,
            cfg=cfg,
        )
        moe_gemm(
            inter,
            w2,
            out,
            flat_w,
            align,
            TOP_K,
            a_per_token=False,
            gated=False,
            mul_weight=True,
            cfg=cfg,
        )

    return row("fused_moe", shape, f"gemms only {tag(cfg)}", time_ms(run), nbytes, flops, ceil)


def bench_align(ceil: dict) -> list[Row]:
    """The single-program alignment kernel against the torch version, from CUDA graphs."""
    rows = []
    for t in (16, 32, 64, 128):  # up to SMALL_MAX_PAIRS routed pairs
        ids = torch.rand((t, EXPERTS), device=DEV).topk(TOP_K, dim=1).indices.int()
        ref = moe_align_torch(ids, EXPERTS, 32)
        ms = graph_ms(moe_align_torch, [(ids, EXPERTS, 32)])
        rows.append(row("moe_align", f"T={t} pairs={t * TOP_K}", "torch ops", ms, 0, 0, ceil))
        for warps in (4, 8, 16):
            try:
                got = moe_align_small(ids, EXPERTS, 32, warps)
                same = torch.equal(got.sorted_ids, ref.sorted_ids) and torch.equal(
                    got.expert_ids, ref.expert_ids
                )
                ms = graph_ms(moe_align_small, [(ids, EXPERTS, 32, warps)])
            except (triton.runtime.errors.OutOfResources, RuntimeError) as err:
                print(f"moe_align_small T={t} warps={warps}: {type(err).__name__}: {err}")
                continue
            var = f"triton w{warps} {'equal' if same else 'DIFFERENT'}"
            rows.append(row("moe_align", f"T={t} pairs={t * TOP_K}", var, ms, 0, 0, ceil))
    for t in (256, 512, 2048, 8192):  # the blocked kernels, above the single program's limit too
        ids = torch.rand((t, EXPERTS), device=DEV).topk(TOP_K, dim=1).indices.int()
        ref = moe_align_torch(ids, EXPERTS, 64)
        got = moe_align_blocked(ids, EXPERTS, 64)
        same = torch.equal(got.sorted_ids, ref.sorted_ids) and torch.equal(
            got.expert_ids, ref.expert_ids
        )
        shape = f"T={t} pairs={t * TOP_K}"
        ms = graph_ms(moe_align_torch, [(ids, EXPERTS, 64)])
        rows.append(row("moe_align", shape, "torch ops bm64", ms, 0, 0, ceil))
        ms = graph_ms(moe_align_blocked, [(ids, EXPERTS, 64)])
        var = f"blocked bm64 {'equal' if same else 'DIFFERENT'}"
        rows.append(row("moe_align", shape, var, ms, 0, 0, ceil))
    return rows


def bench_small(ceil: dict) -> list[Row]:
    t = 8192
    x = torch.randn((t, HIDDEN), dtype=BF16, device=DEV)
    res = torch.randn_like(x)
    w = torch.rand(HIDDEN, dtype=BF16, device=DEV)
    rows = [row("rmsnorm+residual", f"T={t} D={HIDDEN}", "", time_ms(rmsnorm, x, w, 1e-5, res),
                8 * t * HIDDEN, 0, ceil)]  # fmt: skip
    q = torch.randn((t, HEADS, 256), dtype=BF16, device=DEV)
    k = torch.randn((t, D_ROPE), dtype=BF16, device=DEV)
    pos = torch.randint(0, 200000, (t,), device=DEV)
    cs = rope_cos_sin(202752, D_ROPE, 1e6, BF16, DEV)
    ms = time_ms(apply_rope_, q[..., 192:], k, pos, cs)
    nbytes = 4 * (t * HEADS * D_ROPE + t * D_ROPE) + 2 * t * D_ROPE
    rows.append(row("rope", f"T={t} H={HEADS}", "", ms, nbytes, 0, ceil))
    cache = torch.randn((4 * t, WIDTH), dtype=BF16, device=DEV)
    lat = torch.randn((t, D_LAT), dtype=BF16, device=DEV)
    slots = torch.randperm(4 * t, device=DEV)[:t]
    ms = time_ms(rope_and_cache_, q[..., 192:], k, lat, pos, cs, cache, slots)
    rows.append(row("rope", f"T={t} H={HEADS}", "with the KV write", ms, nbytes + 4 * t * WIDTH,
                    0, ceil))  # fmt: skip
    inter = 1536  # the shared expert's width
    gate_up = torch.randn((t, 2 * inter), dtype=BF16, device=DEV)
    ms = time_ms(silu_and_mul, gate_up)
    rows.append(row("silu_and_mul", f"T={t} I={inter}", "", ms, 6 * t * inter, 0, ceil))
    ms = time_ms(silu_and_mul_ref, gate_up)
    rows.append(row("silu_and_mul", f"T={t} I={inter}", "torch ops", ms, 6 * t * inter, 0, ceil))
    bias = torch.rand(EXPERTS, device=DEV) * 0.1
    for tokens in (1, 256, t):
        logits = torch.randn((tokens, EXPERTS), device=DEV)
        shape = f"T={tokens} E={EXPERTS}"
        ms = graph_ms(route_topk, [(logits, bias, TOP_K, True, 1.8)])
        rows.append(row("routing", shape, "", ms, 4 * tokens * EXPERTS, 0, ceil))
        ms = graph_ms(route_topk_ref, [(logits, bias, TOP_K, True, 1.8)])
        rows.append(row("routing", shape, "torch ops", ms, 4 * tokens * EXPERTS, 0, ceil))
    return rows


def bench_fa3(ceil: dict) -> list[Row]:
    """The expanded-form prefill through fa3-fwd, if installed: correctness, then time."""
    try:
        from fa3_fwd_interface import flash_attn_varlen_func  # type: ignore[import-not-found]
    except ImportError as err:
        print(f"fa3: not importable: {err}")
        return []
    rows = []
    for t in (512, 8192):
        q = torch.randn((t, HEADS, 256), dtype=BF16, device=DEV)
        k, v = torch.randn_like(q), torch.randn_like(q)
        cu = torch.tensor([0, t], dtype=torch.int32, device=DEV)
        fn = partial(
            flash_attn_varlen_func, q, k, v, cu, cu, t, t, softmax_scale=SCALE, causal=True
        )
        out = fn()
        out = out[0] if isinstance(out, tuple) else out
        if t == 512:
            print(f"fa3 varlen causal hdim 256/256, T=512: {_sdpa_err(out, q, k, v)}")
        flops, nbytes = 2 * HEADS * (t * (t + 1) // 2) * 512, 6 * t * HEADS * 256
        ms = time_ms(fn)
        rows.append(row("fa3_varlen", f"T={t} hdim=256/256", "causal", ms, nbytes, flops, ceil))
    c = torch.randn((8192, D_LAT), dtype=BF16, device=DEV)
    wkv = torch.randn((HEADS * 448, D_LAT), dtype=BF16, device=DEV)
    ms = time_ms(torch.matmul, c, wkv.T)
    rows.append(row("kv_b_proj expand", "T=8192", "matmul", ms, 2 * (c.numel() + wkv.numel() + 8192 * HEADS * 448),
                    2 * 8192 * D_LAT * HEADS * 448, ceil))  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--only",
        default="ceil,decode,fi_decode,prefill,varlen,moe,moe_decode,small,skinny,align,fa3",
    )
    ap.add_argument("--moe-sweep", action="store_true", help="time every candidate MoE config")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--skinny-shapes", default=None, help="e.g. o_proj,q_b (default: all)")
    ap.add_argument("--skinny-sweep-s", type=float, default=200.0)
    ap.add_argument("--decode-batches", default="1,32,256", help="batch sizes of the decode part")
    args = ap.parse_args()
    skinny_shapes = set(args.skinny_shapes.split(",")) if args.skinny_shapes else None
    parts = set(args.only.split(","))
    torch.manual_seed(0)
    gpu = torch.cuda.get_device_name()
    ceil = ceilings()
    print(f"{gpu}: copy {ceil['copy_gbps']:.0f} GB/s, bf16 matmul {ceil['mm_tflops']:.0f} TFLOP/s")
    sms = num_sms(torch.device(DEV))
    rows: list[Row] = []
    tuned: dict[int, MoeConfig] = {}
    benches: dict[str, Callable[[], list[Row]]] = {
        "decode": lambda: bench_decode(
            ceil, sms, tuple(int(b) for b in args.decode_batches.split(","))
        ),
        "fi_decode": lambda: bench_fi_decode(ceil),
        "moe_decode": lambda: bench_moe_decode(ceil),
        "prefill": lambda: bench_prefill(ceil),
        "small": lambda: bench_small(ceil),
        "skinny": lambda: bench_skinny(ceil, args.skinny_sweep_s, skinny_shapes),
        "align": lambda: bench_align(ceil),
        "fa3": lambda: bench_fa3(ceil),
        "varlen": lambda: bench_varlen(ceil),
    }
    for part in ("decode", "fi_decode", "prefill", "varlen", "moe", "moe_decode", "small", "skinny",
                 "align", "fa3"):  # fmt: skip
        if part not in parts:
            continue
        try:  # one failing part does not lose the others' rows
            if part == "moe":
                moe_rows, tuned = bench_moe(ceil, args.moe_sweep)
                new_rows = moe_rows
            else:
                new_rows = benches[part]()
        except Exception as err:
            print(f"== {part}: failed: {type(err).__name__}: {err}")
            continue
        rows += new_rows
        # Each part's rows as soon as it ends: a run stopped by a time limit keeps them.
        print(f"\n== {part} ==")
        print_table(new_rows)
        if args.json:
            payload = {"gpu": gpu, "ceilings": ceil, "rows": [asdict(r) for r in rows],
                       "moe_best": {t: asdict(c) for t, c in tuned.items()}}  # fmt: skip
            args.json.write_text(json.dumps(payload, indent=1))
    print("\n== all ==")
    print_table(rows)
    print("\n== best per kernel and shape ==")
    print_table(best_rows(rows))


if __name__ == "__main__":
    main()
