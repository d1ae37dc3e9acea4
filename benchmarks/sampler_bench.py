"""The sampler on the GPU at the real vocabulary: what a batch's sampling costs, and whether the
call that queues it (`Sampler.sample_deferred`) returns before the device gets there.

For each setting and batch size N, on [N, 154880] fp32 logits:
- `step_us`: the time per call of `sample_deferred` + `collect`, run back to back (the larger of
  its host and device time);
- `device_us`: the device time of the work one call queues (CUDA events around
  `sample_deferred`, the device kept busy until all of it is queued, so host launches do not
  show);
- `host_us_busy`: the host time of `sample_deferred` alone while the device is still busy with
  earlier work (`torch.cuda._sleep`, about `--busy-ms`). Close to `--busy-ms` or above: the call
  waited for the device (a host sync); far below it: it only queued work, so a decode step queued
  ahead of its samples (engine.py, running ahead) gains.
Settings: greedy; temperature 1; top_k 50; top_p 0.95 on peaked logits (the best 20 tokens hold
about 99% of the mass), on wide ones (the best 500 hold about 98%: a kept set of a few hundred)
and on flat ones (random logits, as dummy weights give); min_p 0.05; repetition, frequency and
presence penalties over a history of 512 prompt and 256 output tokens, one more output token
each call. Then the raw `topk(1024)`
and full-row `sort` that top-k rows (and, before the compacted candidates, top-p rows) start from.

Usage: python3 benchmarks/sampler_bench.py [--batches 1,4,16,64] [--json out.json]
(measures the `glm47` on PYTHONPATH, so a variant tree can be measured with the same script)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from glm47.worker.batch import SamplingParams, ScheduledSeq
from glm47.worker.sampling import DeferredSamples, Sampler

VOCAB = 154880
SETTINGS: dict[str, dict[str, float | int]] = {
    "greedy": {"temperature": 0.0},
    "temperature": {"temperature": 1.0},
    "top_k_50": {"temperature": 1.0, "top_k": 50},
    "top_p_peaked": {"temperature": 1.0, "top_p": 0.95},
    "top_p_wide": {"temperature": 1.0, "top_p": 0.95},
    "top_p_flat": {"temperature": 1.0, "top_p": 0.95},
    "min_p": {"temperature": 1.0, "min_p": 0.05},
    "penalties": {
        "temperature": 1.0,
        "repetition_penalty": 1.1,
        "frequency_penalty": 0.3,
        "presence_penalty": 0.2,
    },
}
# (prompt, output) tokens of each request in the settings with penalties: its history, which
# grows by one output token a call, as a decoding request's does
HISTORY = {"penalties": (512, 256)}


def seqs_for(
    n: int, params: dict[str, float | int], history: tuple[int, int] = (3, 0)
) -> list[ScheduledSeq]:
    """`n` requests of one setting, with `history` (prompt, output) random tokens each."""
    prompt, output = history
    gen = torch.Generator().manual_seed(n)
    return [
        ScheduledSeq(
            rid=f"r{i}",
            token_ids=[1],
            start_pos=0,
            page_ids=[0],
            sample=True,
            sampling=SamplingParams(**params),  # type: ignore[arg-type]
            prompt_ids=torch.randint(0, VOCAB, (prompt,), generator=gen).tolist(),
            output_ids=torch.randint(0, VOCAB, (output,), generator=gen).tolist(),
        )
        for i in range(n)
    ]


def grown(seqs: list[ScheduledSeq]) -> list[ScheduledSeq]:
    """`seqs` after each request's last sample joined its output."""
    for s in seqs:
        s.output_ids.append(len(s.output_ids) % VOCAB)
    return seqs


def logits_for(n: int, setting: str) -> torch.Tensor:
    """Random logits, the best 20 tokens raised by 14 (the best 500 by 10 for `_wide`, none for
    `_flat` and the raw ops)."""
    logits = torch.randn(n, VOCAB, device="cuda")
    if setting.endswith("_wide"):
        logits[:, 1000:1500] += 10.0
    elif not setting.endswith("_flat") and setting in SETTINGS:
        logits[:, :20] += 14.0
    return logits


def busy_cycles(busy_ms: float) -> int:
    """Cycles of `torch.cuda._sleep` that keep the device busy for about `busy_ms` (measured
    after a warm-up call, so the first launch's set-up does not shorten it)."""
    cycles = 10_000_000
    elapsed = 0.0
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        torch.cuda.synchronize()
        elapsed = start.elapsed_time(end)
    return int(cycles * busy_ms / elapsed)


def time_calls(fn: Callable[[], object], iters: int) -> float:
    """Microseconds per call, back to back, after a warm-up."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters * 1e6


def device_us(fn: Callable[[], object], cycles: int, iters: int) -> float:
    """Median device time of the work one call queues: the device is kept busy until the host
    has queued it all, and what the call returns is collected (if it can be) only after the
    closing event."""
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(cycles)
        start.record()
        out = fn()
        end.record()
        torch.cuda.synchronize()
        if isinstance(out, DeferredSamples):
            out.collect()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times)


def host_us_busy(
    sampler: Sampler, logits: torch.Tensor, seqs: list[ScheduledSeq], cycles: int, iters: int
) -> float:
    times = []
    for _ in range(iters):
        torch.cuda.synchronize()
        torch.cuda._sleep(cycles)
        t0 = time.perf_counter()
        deferred = sampler.sample_deferred(logits, grown(seqs))
        times.append((time.perf_counter() - t0) * 1e6)
        deferred.collect()
    return statistics.median(times)


def profile(sampler: Sampler, name: str, n: int, iters: int) -> None:
    """The device kernels of `iters` calls of one setting, by total time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    logits = logits_for(n, name)
    seqs = seqs_for(n, SETTINGS[name], HISTORY.get(name, (3, 0)))
    sampler.sample(logits, seqs)
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            sampler.sample(logits, grown(seqs))
        torch.cuda.synchronize()
    print(f"== kernels of {name} at N={n}, {iters} calls")
    print(
        prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=60)
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--batches", default="1,4,16,64")
    ap.add_argument("--settings", default=",".join(SETTINGS), help="which settings to time")
    ap.add_argument("--no-raw", action="store_true", help="skip the raw topk and sort timings")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--busy-ms", type=float, default=5.0)
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--profile",
        default=None,
        metavar="SETTING:N",
        help="also print the kernels of one setting at one batch size (torch.profiler), e.g. "
        "top_p_flat:1",
    )
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    cycles = busy_cycles(args.busy_ms)
    sampler = Sampler(seed=0)
    rows: list[dict[str, object]] = []
    print(f"{torch.cuda.get_device_name()}, vocab {VOCAB}, device kept busy {args.busy_ms} ms")
    print(f"{'setting':>14} {'N':>4} {'step_us':>9} {'device_us':>10} {'host_us_busy':>13}")
    for name in args.settings.split(","):
        for n in batches:
            logits = logits_for(n, name)
            seqs = seqs_for(n, SETTINGS[name], HISTORY.get(name, (3, 0)))

            def call(logits: torch.Tensor = logits, seqs: list[ScheduledSeq] = seqs) -> object:
                return sampler.sample(logits, grown(seqs))

            def queue(logits: torch.Tensor = logits, seqs: list[ScheduledSeq] = seqs) -> object:
                return sampler.sample_deferred(logits, grown(seqs))

            row = {
                "setting": name,
                "batch": n,
                "step_us": time_calls(call, args.iters),
                "device_us": device_us(queue, cycles, args.iters),
                "host_us_busy": host_us_busy(sampler, logits, seqs, cycles, args.iters),
            }
            rows.append(row)
            print(
                f"{name:>14} {n:>4} {row['step_us']:>9.1f} {row['device_us']:>10.1f} "
                f"{row['host_us_busy']:>13.1f}"
            )
    for n in [] if args.no_raw else batches:
        logits = logits_for(n, "raw")
        for op, fn in (
            ("topk_1024", lambda x=logits: x.topk(1024, dim=-1)),
            ("topk_256", lambda x=logits: x.topk(256, dim=-1)),
            ("sort", lambda x=logits: x.sort(dim=-1, descending=True)),
        ):
            us = device_us(fn, cycles, args.iters)
            rows.append({"setting": op, "batch": n, "device_us": us})
            print(f"{op:>14} {n:>4} {'':>9} {us:>10.1f}")
    if args.profile:
        name, n = args.profile.split(":")
        profile(sampler, name, int(n), args.iters)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"gpu": torch.cuda.get_device_name(), "vocab": VOCAB, "rows": rows}, f, indent=1
            )


if __name__ == "__main__":
    main()
