"""What the kernel benchmarks share: the real shapes, the ceilings measured in the same run, the
timers (L2-flushed events, CUDA-graph replays over rotating inputs, and the model bench's step
timers: events around one call, or around calls queued back to back), the result rows and their
tables."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import triton
from triton.testing import do_bench

HEADS, D_LAT, D_ROPE, HIDDEN, INTER, EXPERTS, TOP_K = 20, 512, 64, 2048, 1536, 64, 4
WIDTH = D_LAT + D_ROPE
SCALE = 256**-0.5
DEV = "cuda"
BF16 = torch.bfloat16


@dataclass
class Row:
    kernel: str
    shape: str
    variant: str
    ms: float
    gbps: float
    tflops: float
    frac: float  # of the ceiling that bounds this case
    bound: str  # "mem" or "compute"


def time_ms(fn: Callable[..., object], *args: object, **kwargs: object) -> float:
    """Median milliseconds of fn(*args, **kwargs)."""
    return float(do_bench(partial(fn, *args, **kwargs), warmup=25, rep=100, return_mode="median"))


def row(
    kernel: str, shape: str, variant: str, ms: float, nbytes: int, flops: int, ceil: dict
) -> Row:
    gbps, tflops = nbytes / ms / 1e6, flops / ms / 1e9
    t_mem, t_cmp = nbytes / (ceil["copy_gbps"] * 1e6), flops / (ceil["mm_tflops"] * 1e9)
    bound = "mem" if t_mem >= t_cmp else "compute"
    frac = max(t_mem, t_cmp) / ms
    return Row(kernel, shape, variant, ms, gbps, tflops, frac, bound)


def ceilings() -> dict:
    src = torch.randn(1 << 29, dtype=BF16, device=DEV)  # 1 GiB
    dst = torch.empty_like(src)
    copy_ms = time_ms(dst.copy_, src)
    a = torch.randn((8192, 8192), dtype=BF16, device=DEV)
    b = torch.randn((8192, 8192), dtype=BF16, device=DEV)
    mm_ms = time_ms(torch.matmul, a, b)
    del src, dst, a, b
    return {"copy_gbps": 2 * (1 << 30) / copy_ms / 1e6, "mm_tflops": 2 * 8192**3 / mm_ms / 1e9}


def paged_cache(batch: int, ctx: int, page_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    pages = batch * ctx // page_size
    cache = torch.randn(((pages + 1) * page_size, WIDTH), dtype=BF16, device=DEV)
    table = (torch.randperm(pages, device=DEV) + 1).int().view(batch, ctx // page_size)
    return cache, table


def graph_ms(fn: Callable[..., object], sets: list[tuple], **kwargs: object) -> float:
    """Milliseconds per call of fn over rotating input sets, replayed from one CUDA graph.

    Rotation keeps small working sets from being served by L2 across calls; the graph removes the
    host's launch cost, as in the server's decode step.
    """

    def run() -> None:
        for args in sets:
            fn(*args, **kwargs)

    torch.cuda.synchronize()  # the inputs were made on the default stream; the bench uses another
    total = triton.testing.do_bench_cudagraph(run, rep=50, return_mode="median")
    return float(total) / len(sets)


def print_table(rows: list[Row]) -> None:
    print(
        f"{'kernel':<18}{'shape':<30}{'variant':<44}{'ms':>9}{'GB/s':>8}{'TFLOP/s':>9}{'frac':>6} bound"
    )
    for r in rows:
        print(f"{r.kernel:<18}{r.shape:<30}{r.variant[:43]:<44}{r.ms:>9.4f}{r.gbps:>8.0f}{r.tflops:>9.1f}"
              f"{r.frac:>6.2f} {r.bound}")  # fmt: skip


def best_rows(rows: list[Row]) -> list[Row]:
    best: dict[tuple[str, str], Row] = {}
    for r in rows:
        key = (r.kernel, r.shape)
        if key not in best or r.ms < best[key].ms:
            best[key] = r
    return list(best.values())


def time_cuda(
    fn: Callable[[], object],
    iters: int,
    warmup: int = 3,
    before: Callable[[], object] | None = None,
) -> float:
    """Median milliseconds of `fn` over `iters` runs, CUDA events around each; `before` runs
    ahead of each, untimed."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if before is not None:
            before()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def time_cuda_back_to_back(
    fn: Callable[[], object],
    steps: int,
    repeats: int = 5,
    before: Callable[[], object] | None = None,
) -> float:
    """Median milliseconds a run of `fn` takes when `steps` runs are queued back to back (CUDA
    events around the whole run, divided by `steps`): the host queues a run while the device
    works on the one before, as the server's engine does when it runs steps ahead, so the host's
    launch latency between two runs is hidden unless it exceeds a run's device time."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            if before is not None:
                before()
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / steps)
    return statistics.median(times)
