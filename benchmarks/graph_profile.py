"""Where a graphed decode step's GPU time goes, kernel by kernel.

Builds the runner as `model_bench.py` does (dummy weights of the real shapes, decode CUDA graphs),
replays the decode step of each `--batches` size under the torch profiler and reads the kernels'
start and end times from its trace. With dependent launch a kernel starts before the previous one
ends (it waits inside), so a kernel's own duration overstates what it costs the chain; what the
step pays for kernel i is how much later it ends than kernel i - 1 ("advance"). The advances sum
to the step's span.

The decoder layers repeat one sequence of kernels; the script finds that period and prints, per
position in it, the kernel's name, its mean duration and its mean advance over the layers, then
the kernels outside the period (embedding, the dense first layer, the final norm, lm_head).

    python3 benchmarks/graph_profile.py [--batches 1,8] [--context 1024] [--json out.json]
        [the kernel flags of bench_kernel_flags.py]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kernel_flags import add_kernel_flags, kernel_options
from model_bench import build_runner, decode_batch, fresh_ids, logits_step


def kernel_spans(trace_path: Path) -> list[tuple[str, float, float]]:
    """(name, start µs, end µs) of every GPU kernel in a chrome trace, in start order."""
    events = json.loads(trace_path.read_text())["traceEvents"]
    spans = [
        (e["name"], float(e["ts"]), float(e["ts"]) + float(e["dur"]))
        for e in events
        if e.get("cat") == "kernel"
    ]
    return sorted(spans, key=lambda s: s[1])


def short(name: str) -> str:
    return name if len(name) <= 48 else name[:45] + "..."


def find_period(
    names: list[str],
    min_period: int = 4,
    max_period: int | None = None,
    ends: tuple[int, ...] | None = None,
) -> tuple[int, int]:
    """(first index, period) of the longest run of a repeating block of kernel names, the block
    at most `max_period` names long (a third of them by default) and ending at one of `ends`
    (the middle by default: the middle of a step is inside its decoder layers)."""
    n = len(names)
    best = (0, 0, 0)  # (repeats, start, period)
    candidates = [
        (period, end - period)
        for period in range(min_period, min(n // 3, max_period or n) + 1)
        for end in ends or (n // 2,)
    ]
    for period, start in candidates:
        if start < 0 or start + period > n:
            continue
        block = names[start : start + period]
        lo = start
        while lo - period >= 0 and names[lo - period : lo] == block:
            lo -= period
        hi = start + period
        while hi + period <= n and names[hi : hi + period] == block:
            hi += period
        while lo > 0 and names[lo - 1] == names[lo - 1 + period]:  # align to the first layer
            lo -= 1
        repeats = (hi - lo) // period
        if repeats >= 3 and repeats * period > best[0] * max(1, best[2]):
            best = (repeats, lo, period)
    return best[1], best[2]


def profile_batch(runner, batch: int, context: int, iters: int, fresh: bool = False) -> dict:  # type: ignore[no-untyped-def]
    step, _ = decode_batch(runner, batch, context)
    inputs = runner.prepare(step)
    step_fn = logits_step(runner, inputs)
    new_ids = fresh_ids(inputs, runner.cfg.vocab_size)

    def fn() -> None:  # with `fresh`, other tokens (other experts) every replay
        if fresh:
            new_ids()
        step_fn()

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        spans = kernel_spans(path)
    per_step = len(spans) // iters
    last = spans[-per_step:]  # the last replay
    names = [s[0] for s in last]
    advance = [last[0][2] - last[0][1]] + [
        max(0.0, last[i][2] - max(s[2] for s in last[:i])) for i in range(1, per_step)
    ]
    start, period = find_period(names)
    layers = 0
    slots: dict[int, list[tuple[float, float]]] = defaultdict(list)
    if period:
        layers = 0
        i = start
        while i + period <= per_step and names[i : i + period] == names[start : start + period]:
            for j in range(period):
                slots[j].append((last[i + j][2] - last[i + j][1], advance[i + j]))
            i += period
            layers += 1
    in_layers = set(range(start, start + layers * period))
    rest: dict[str, list[float]] = defaultdict(list)
    for i, (name, _, _) in enumerate(last):
        if i not in in_layers:
            rest[name].append(advance[i])
    return {
        "batch": batch,
        "kernels_per_step": per_step,
        "span_us": last[-1][2] - last[0][1],
        "sum_of_durations_us": sum(s[2] - s[1] for s in last),
        "layers_found": layers,
        "period": period,
        "slots": [
            {
                "name": names[start + j],
                "mean_duration_us": statistics.fmean(d for d, _ in slots[j]),
                "mean_advance_us": statistics.fmean(a for _, a in slots[j]),
            }
            for j in range(period)
        ],
        "outside_layers": {n: {"count": len(a), "advance_us": sum(a)} for n, a in rest.items()},
    }


def print_profile(p: dict) -> None:
    print(f"\n== batch {p['batch']}: {p['kernels_per_step']} kernels, span {p['span_us']:.1f} µs, "
          f"sum of kernel durations {p['sum_of_durations_us']:.1f} µs; "
          f"{p['layers_found']} layers of {p['period']} kernels")  # fmt: skip
    print(f"{'slot':>4}  {'kernel':<48} {'dur µs':>8} {'adv µs':>8}")
    for j, s in enumerate(p["slots"]):
        print(f"{j:>4}  {short(s['name']):<48} {s['mean_duration_us']:>8.2f} "
              f"{s['mean_advance_us']:>8.2f}")  # fmt: skip
    layer_us = sum(s["mean_advance_us"] for s in p["slots"])
    print(f"      one layer: {layer_us:.1f} µs advance")
    print("outside the repeated layers (kernel, count, advance µs):")
    for name, v in sorted(p["outside_layers"].items(), key=lambda kv: -kv[1]["advance_us"]):
        print(f"      {short(name):<48} {v['count']:>4} {v['advance_us']:>9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--fresh-tokens", action="store_true",
                        help="other random tokens (other experts) every replay")  # fmt: skip
    parser.add_argument("--json", default=None)
    add_kernel_flags(parser)
    args = parser.parse_args()
    batches = sorted(int(b) for b in args.batches.split(","))
    runner = build_runner(batches, args.context, kernel_options(args))
    print(f"{torch.cuda.get_device_name()}, dummy weights, context {args.context}, "
          f"{runner.kernels.describe()}")  # fmt: skip
    results = []
    with torch.inference_mode():
        for batch in batches:
            p = profile_batch(runner, batch, args.context, args.iters, args.fresh_tokens)
            print_profile(p)
            results.append(p)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
