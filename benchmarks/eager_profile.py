"""Where the host time of an eager forward pass goes: the steps that carry prompt tokens cannot
replay a decode CUDA graph, and their host time decides how much a serving step with admissions
costs.

Builds the runner with dummy weights (the real GLM-4.7-Flash config, or `--layers` of it; `--tiny`
for the small built-in shapes on the CPU), then times a mixed step (`--decode` sequences decoding
at `--context` plus one `--prefill`-token prompt) and a pure decode step (and a decode step of one sequence), eagerly:
- wall ms of the step with a device sync at the end, and the GPU time of the same step (CUDA
  events around it, the host running ahead);
- kernels launched per step and per layer (torch profiler, CUDA activity), and the GPU time of
  each kind of kernel: their sum is what a step would take with no host time at all;
- the top functions by own host time (cProfile over `--iters` steps): Triton launches show up as
  `JITFunction.run`, torch operations under their names.
With `--segment-graphs`, both steps are also timed through segment graphs (segment_graph.py), the
rows marked `+sg`.

    python3 benchmarks/eager_profile.py [--layers 47] [--decode 256] [--prefill 512]
        [--segment-graphs] [--json out]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import GLM47_FLASH_CONFIG

from glm47.worker.batch import ScheduledBatch, ScheduledSeq
from glm47.worker.model.config import ModelConfig
from glm47.worker.model.tiny import tiny_config
from glm47.worker.runner import ModelRunner

PAGE_SIZE = 16


def build(args: argparse.Namespace) -> ModelRunner:
    raw = tiny_config(512, [1], 0) if args.tiny else dict(GLM47_FLASH_CONFIG)
    raw["num_nextn_predict_layers"] = 0
    if args.layers:
        raw["num_hidden_layers"] = args.layers
    pages = (args.decode + 1) * -(-(args.context + args.prefill + 1) // PAGE_SIZE) + 2
    return ModelRunner(
        ModelConfig.from_dict(raw),
        None,
        device=args.device,
        dtype=torch.bfloat16 if args.device == "cuda" else torch.float32,
        page_size=PAGE_SIZE,
        num_pages=pages,
        load_format="dummy",
        disable_cuda_graph=True,
        segment_graph_max_tokens=args.decode + args.prefill if args.segment_graphs else 0,
    )


def step(runner: ModelRunner, decode: int, context: int, prefill: int) -> ScheduledBatch:
    """`decode` sequences at position `context`, then one fresh prompt of `prefill` tokens."""
    per_seq = -(-(context + prefill + 1) // PAGE_SIZE)
    vocab = runner.cfg.vocab_size
    seqs = []
    for i in range(decode):
        table = list(range(1 + i * per_seq, 1 + (i + 1) * per_seq))
        seqs.append(ScheduledSeq(f"d{i}", [(i * 31 + 7) % vocab], context, table, True))
    if prefill:
        first = 1 + decode * per_seq
        ids = [(i * 7919 + 13) % vocab for i in range(prefill)]
        seqs.append(ScheduledSeq("p", ids, 0, list(range(first, first + per_seq)), True))
    return ScheduledBatch(seqs)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def measure(runner: ModelRunner, batch: ScheduledBatch, args: argparse.Namespace) -> dict:
    """Wall and GPU ms of one eager step (median), kernels per step, top host functions."""
    run = lambda: runner.run_logits(batch)  # noqa: E731
    for _ in range(2):  # compile and warm the allocator
        run()
    sync(args.device)
    walls, gpus = [], []
    for _ in range(args.iters):
        start = time.perf_counter()
        if args.device == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            run()
            end.record()
            end.synchronize()
            gpus.append(begin.elapsed_time(end))
        else:
            run()
        walls.append((time.perf_counter() - start) * 1e3)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if args.device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        run()
        sync(args.device)
    events = prof.events()
    kernels = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    by_kernel: dict[str, list[float]] = {}  # name -> [count, GPU us]
    for e in events:
        if e.device_type == torch.autograd.DeviceType.CUDA:
            entry = by_kernel.setdefault(e.name[:60], [0, 0.0])
            entry[0] += 1
            entry[1] += e.time_range.elapsed_us()
    top_kernels = sorted(by_kernel.items(), key=lambda kv: -kv[1][1])[: args.top]
    cpu_ops = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CPU)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(args.iters):
        run()
    sync(args.device)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(args.top)
    layers = runner.cfg.num_hidden_layers
    return {
        "tokens": sum(len(s.token_ids) for s in batch.seqs),
        "wall_ms": sorted(walls)[len(walls) // 2],
        "gpu_ms": sorted(gpus)[len(gpus) // 2] if gpus else None,
        "kernels_per_step": kernels,
        "kernels_per_layer": kernels / layers,
        "torch_ops_per_step": cpu_ops,
        "kernel_gpu_us": sum(v[1] for v in by_kernel.values()),
        "top_kernels": [(name, int(n), round(us, 1)) for name, (n, us) in top_kernels],
        "cprofile_top": text.getvalue(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="the built-in tiny shapes")
    parser.add_argument("--layers", type=int, default=0, help="0: the config's layer count")
    parser.add_argument("--decode", type=int, default=256)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--prefill", type=int, default=512)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--segment-graphs", action="store_true", help="also time both steps with segment graphs"
    )
    args = parser.parse_args()
    runner = build(args)
    mixed = step(runner, args.decode, args.context, args.prefill)
    decode = step(runner, args.decode, args.context, 0)
    single = step(runner, 1, args.context, 0)
    rows = {}
    if runner.segments is not None:
        rows["mixed+sg"] = measure(runner, mixed, args)
        rows["decode+sg"] = measure(runner, decode, args)
    runner.segments = None
    rows["mixed"] = measure(runner, mixed, args)
    rows["decode"] = measure(runner, decode, args)
    rows["decode1"] = measure(runner, single, args)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"== eager profile: {name}, {runner.cfg.num_hidden_layers} layers, dummy weights")
    print(f"{'step':>9} {'tokens':>7} {'wall ms':>8} {'gpu ms':>8} {'kernels':>8} {'/layer':>7} "
          f"{'torch ops':>9}")  # fmt: skip
    for label, r in rows.items():
        gpu = f"{r['gpu_ms']:.1f}" if r["gpu_ms"] is not None else "-"
        print(f"{label:>9} {r['tokens']:>7} {r['wall_ms']:>8.1f} {gpu:>8} "
              f"{r['kernels_per_step']:>8} {r['kernels_per_layer']:>7.1f} "
              f"{r['torch_ops_per_step']:>9}")  # fmt: skip
    for label in ("decode1", "decode", "mixed"):
        r = rows[label]
        print(
            f"-- {label} step: GPU time by kernel (sum of kernel times {r['kernel_gpu_us']:.0f} us)"
        )
        for name, n, us in r["top_kernels"]:
            print(f"{us:>10.1f} us {n:>5}x  {name}")
    print("-- mixed step, top host functions by own time (cProfile):")
    print(rows["mixed"]["cprofile_top"])
    if args.json is not None:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}} | rows))


if __name__ == "__main__":
    main()
