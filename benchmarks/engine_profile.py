"""What the GPU does between the decoder layers of served decode steps.

`graph_profile.py` replays a decode graph alone; a served step also stages its inputs, fills the
graph's buffers, takes the sampled rows' hidden states, computes the logits, samples, copies the
samples to the host and feeds them to the step queued ahead. This script drives the real `Engine`
(running ahead, as the worker runs it) over a runner with dummy weights of the real shapes: it
admits `--batch` requests with random prompts of `--context` tokens, lets them decode `--warmup`
steps, then records `--steps` engine steps under the torch profiler (kernels, copies, fills).

It prints the GPU time per step (the profiled window over the steps: what a client sees per token
when the device never waits), the part of it inside the repeated decoder layers, and for the
stretch between two steps' layer runs (the dense first layer, lm_head, sampling, copies and
whatever the device waits for) every GPU event in order with its duration and the idle gap
before it: the median such stretch, and the mean.

    python3 benchmarks/engine_profile.py [--batch 1] [--context 1024] [--steps 20]
        [--sampling greedy|top_p] [--json out.json] [the kernel flags of bench_kernel_flags.py]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kernel_flags import add_kernel_flags, kernel_options
from graph_profile import find_period, short
from model_bench import PAGE_SIZE, build_runner

from glm47.worker.batch import SamplingParams
from glm47.worker.config import EngineConfig
from glm47.worker.engine.engine import Engine
from glm47.worker.engine.request import Request
from glm47.worker.sampling import Sampler

GPU_EVENTS = ("kernel", "gpu_memcpy", "gpu_memset")
SAMPLINGS = {
    "greedy": SamplingParams(temperature=0.0),
    "top_p": SamplingParams(temperature=1.0, top_p=0.95),
}


def gpu_events(trace_path: Path) -> list[tuple[str, float, float]]:
    """(name, start µs, end µs) of every kernel, copy and fill in a chrome trace, in start order."""
    events = json.loads(trace_path.read_text())["traceEvents"]
    spans = [
        (e["name"], float(e["ts"]), float(e["ts"]) + float(e["dur"]))
        for e in events
        if e.get("cat") in GPU_EVENTS
    ]
    return sorted(spans, key=lambda s: s[1])


def layer_runs(names: list[str], block: list[str]) -> list[tuple[int, int]]:
    """[first, end) index ranges of the maximal runs of consecutive `block`s in `names`."""
    runs: list[tuple[int, int]] = []
    p, i = len(block), 0
    while i + p <= len(names):
        if names[i : i + p] != block:
            i += 1
            continue
        j = i
        while j + p <= len(names) and names[j : j + p] == block:
            j += p
        runs.append((i, j))
        i = j
    return runs


def step_layer_runs(names: list[str], steps: int) -> tuple[int, list[tuple[int, int]]]:
    """(kernels a layer, each step's run of layers) in the GPU events of `steps` engine steps.

    A layer is shorter than half a step (a longer repeating block would be the step itself), and
    of four points a quarter of a step apart, at least one is inside a step's layers."""
    step_len = len(names) // max(1, steps)
    ends = tuple(len(names) // 2 + k * step_len // 4 for k in range(4))
    start, period = find_period(names, max_period=step_len // 2, ends=ends)
    return period, layer_runs(names, names[start : start + period]) if period else []


def between_runs(events: list[tuple[str, float, float]], runs: list[tuple[int, int]]) -> list[dict]:
    """For each stretch between two layer runs: its length (end of the last layer kernel to the
    start of the next run's first) and its events with the idle gap before each."""
    out = []
    for (_, end), (nxt, _) in itertools.pairwise(runs):
        t = max(e[2] for e in events[:end])
        rows = []
        for name, s, e in events[end:nxt]:
            rows.append({"name": name, "dur_us": e - s, "gap_us": max(0.0, s - t)})
            t = max(t, e)
        gap = max(0.0, events[nxt][1] - t)
        out.append(
            {"span_us": events[nxt][1] - events[end - 1][2], "events": rows, "tail_gap_us": gap}
        )
    return out


def run(args: argparse.Namespace) -> dict:
    total = args.context + args.warmup + args.steps + 8 * PAGE_SIZE
    sizes = sorted({s for s in (1, 2, 4, 8, 16) if s <= args.batch} | {args.batch})
    runner = build_runner(sizes, total, kernel_options(args))
    cfg = EngineConfig(
        device="cuda",
        page_size=PAGE_SIZE,
        max_req_total_len=total,
        max_running_requests=args.batch,
        server_warmup=False,
        log_stats_interval=0.0,
        reserve_output_ratio=0.0,
    )
    engine = Engine(cfg, runner, Sampler(seed=0), eos_token_ids=[0])
    gen = torch.Generator().manual_seed(args.batch)
    vocab = runner.cfg.vocab_size
    for i in range(args.batch):
        prompt = torch.randint(1, vocab, (args.context,), generator=gen).tolist()
        budget = args.warmup + args.steps + 16
        engine.add_request(
            Request(f"r{i}", prompt, budget, SAMPLINGS[args.sampling], ignore_eos=True)
        )
    for _ in range(10_000):  # the prompts' prefill
        if not engine.scheduler.waiting and all(
            r.num_computed_tokens >= len(r.prompt_ids) for r in engine.scheduler.running
        ):
            break
        engine.step()
    for _ in range(args.warmup):
        engine.step()
    torch.cuda.synchronize()
    host = []
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            start = time.perf_counter()
            engine.step()
            host.append((time.perf_counter() - start) * 1e6)
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = gpu_events(path)
    names = [e[0] for e in events]
    period, runs = step_layer_runs(names, args.steps)
    if len(runs) < 2:
        raise SystemExit(
            f"{len(runs)} layer runs found in {len(names)} GPU events (period {period})"
        )
    stretches = between_runs(events, runs)
    layer_us = [events[j - 1][2] - events[i][1] for i, j in runs]
    window = events[runs[-1][0]][1] - events[runs[0][0]][1]  # from the first run to the last
    steps = len(runs) - 1
    return {
        "batch": args.batch,
        "context": args.context,
        "sampling": args.sampling,
        "steps_ahead": engine.steps_ahead,
        "gpu_us_per_step": window / steps if steps else 0.0,
        "layer_run_us": statistics.median(layer_us),
        "layers_per_run": (runs[0][1] - runs[0][0]) // period,
        "kernels_per_layer": period,
        "between_us_median": statistics.median(s["span_us"] for s in stretches),
        "between_us_mean": statistics.fmean(s["span_us"] for s in stretches),
        "host_us_per_step_median": statistics.median(host),
        "median_stretch": sorted(stretches, key=lambda s: s["span_us"])[len(stretches) // 2],
    }


def print_report(r: dict) -> None:
    print(f"batch {r['batch']}, context {r['context']}, {r['sampling']}: "
          f"{r['gpu_us_per_step']:.1f} µs of GPU time a step; "
          f"{r['layers_per_run']} layers of {r['kernels_per_layer']} kernels {r['layer_run_us']:.1f} µs, "
          f"between them {r['between_us_median']:.1f} µs (median; mean {r['between_us_mean']:.1f}); "
          f"host {r['host_us_per_step_median']:.1f} µs an engine step; "
          f"{r['steps_ahead']} steps run ahead")  # fmt: skip
    s = r["median_stretch"]
    print(f"the median stretch between layer runs, {s['span_us']:.1f} µs:")
    print(f"  {'event':<48} {'gap µs':>8} {'dur µs':>8}")
    for e in s["events"]:
        print(f"  {short(e['name']):<48} {e['gap_us']:>8.2f} {e['dur_us']:>8.2f}")
    print(f"  {'(to the next layer run)':<48} {s['tail_gap_us']:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampling", choices=sorted(SAMPLINGS), default="greedy")
    parser.add_argument("--json", default=None)
    add_kernel_flags(parser)
    args = parser.parse_args()
    print(torch.cuda.get_device_name(), "dummy weights")
    with torch.inference_mode():
        report = run(args)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
