"""CPU cost of the worker's step loop around a free forward pass, per phase.

Drives the real `Service` (its step: engine step, output conversion, msgpack encode, send over an
inproc ZeroMQ socket), the real `Engine` and scheduler, the runner's real `StepInputBuilder` (every
metadata and page-table tensor a forward pass reads) and the real `Sampler` on fixed random logits
of a small vocabulary. Only the model is missing: its forward pass costs nothing here.

Each batch size B runs B requests with random prompts of `--context` tokens (no shared prefixes),
prefills them, then times `--steps` decode steps. Phases per step, in ms:
- schedule: `Scheduler.schedule`;
- prepare: `StepInputBuilder.build`;
- sample: `Sampler.sample` on [B, vocab] logits (grows with the vocabulary: reported apart);
- apply: the rest of `Engine.step` (append tokens, finish checks, step outputs);
- encode: the rest of `Service._step` (wire outputs, msgpack, send);
- total: the whole `Service._step`; cpu_no_sample: total less sample.

Usage: .venv/bin/python benchmarks/step_overhead.py [--batches 64 256 512] [--steps 200]
       [--profile 512]  (cProfile of the timed steps at that batch size, top functions)
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import platform
import pstats
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import zmq

# Measure the worker of the checkout this script lives in, whatever is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from glm47.worker.batch import RunnerOutput, ScheduledBatch
from glm47.worker.config import EngineConfig
from glm47.worker.engine.engine import Engine
from glm47.worker.sampling import Sampler
from glm47.worker.service import Service
from glm47.worker.step_inputs import StepInputBuilder
from glm47.worker.wire import Ready, Submit, WireRequest, encode

PREFILL_CHUNK = 8192  # prompt tokens per step while the requests are admitted
PHASES = ("schedule", "prepare", "sample", "apply", "encode", "total", "cpu_no_sample")


class Clock:
    """Per-step sums of named phases."""

    def __init__(self) -> None:
        self.step: dict[str, float] = defaultdict(float)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.step[name] += time.perf_counter() - t0

        return timed


class FreeForwardRunner:
    """The runner's step: real input tensors, no model, logits from a fixed random tensor."""

    def __init__(self, num_pages: int, page_size: int, vocab: int, clock: Clock) -> None:
        self.num_pages = num_pages
        self.page_size = page_size
        self.builder = StepInputBuilder(page_size, torch.device("cpu"))
        gen = torch.Generator().manual_seed(0)
        self.logits = torch.randn(4096, vocab, generator=gen)  # [rows, V] fp32
        self.build = clock.wrap("prepare", self.builder.build)
        self.clock = clock

    def run(self, batch: ScheduledBatch, sampler: Any) -> RunnerOutput:
        inputs = self.build(batch)
        n = len(inputs.sample_seqs)
        if n == 0:
            return RunnerOutput(samples=[])
        sample = self.clock.wrap("sample", sampler.sample)
        return RunnerOutput(samples=sample(self.logits[:n], inputs.sample_seqs))


def max_total_len(batch: int, args: argparse.Namespace) -> int:
    """Room for the prompt and every token decoded, prefill steps included: nobody finishes."""
    prefill_steps = -(-batch * args.context // PREFILL_CHUNK)
    return args.context + prefill_steps + args.warmup + args.steps + 64


def build(batch: int, args: argparse.Namespace, clock: Clock) -> tuple[Service, Engine]:
    max_len = max_total_len(batch, args)
    pages = batch * (-(-max_len // args.page_size) + 1) + 2
    cfg = EngineConfig(
        device="cpu",
        page_size=args.page_size,
        max_running_requests=batch,
        max_req_total_len=max_len,
        chunked_prefill_size=PREFILL_CHUNK,
        reserve_output_ratio=0.0,  # admit all at once: the pool holds every request to the end
    )
    runner = FreeForwardRunner(pages, args.page_size, args.vocab, clock)
    engine = Engine(cfg, runner, Sampler(seed=0), eos_token_ids=[0])
    ready = Ready("bench", args.vocab, [0], max_len, batch, engine.kv_capacity_tokens, 0, "w0")
    service = Service(engine, ready, f"inproc://step-overhead-{batch}", context=zmq.Context())
    return service, engine


def submit_all(client: zmq.Socket[bytes], service: Service, batch: int, args: Any) -> None:
    gen = torch.Generator().manual_seed(batch)
    reqs = [
        WireRequest(
            rid=f"r{i}",
            input_ids=torch.randint(1, args.vocab, (args.context,), generator=gen).tolist(),
            max_new_tokens=max_total_len(batch, args),
            ignore_eos=True,
        )
        for i in range(batch)
    ]
    client.send(encode(Submit(reqs=reqs)))
    while len(service._live) < batch:
        service._drain(block=True)


def drain_client(client: zmq.Socket[bytes]) -> int:
    received = 0
    while client.poll(0, zmq.POLLIN):
        received += len(client.recv())
    return received


def run_batch(batch: int, args: argparse.Namespace) -> dict[str, list[float]]:
    """Per-step phase times (ms) of `args.steps` decode steps at `batch` running requests."""
    clock = Clock()
    service, engine = build(batch, args, clock)
    client = service._ctx.socket(zmq.DEALER)
    client.connect(service.endpoint)
    submit_all(client, service, batch, args)
    engine.scheduler.schedule = clock.wrap("schedule", engine.scheduler.schedule)  # type: ignore[method-assign]
    engine.step = clock.wrap("engine", engine.step)  # type: ignore[method-assign]
    while (
        any(r.num_output_tokens == 0 for r in engine.scheduler.running) or engine.scheduler.waiting
    ):
        service._step()
        drain_client(client)
    if args.gc == "worker":
        from glm47.worker.__main__ import tune_gc

        tune_gc()
    elif args.gc == "off":
        gc.disable()
    prof = cProfile.Profile() if args.profile == batch else None
    times: dict[str, list[float]] = defaultdict(list)
    for i in range(args.warmup + args.steps):
        clock.step.clear()
        if prof is not None and i == args.warmup:
            prof.enable()
        t0 = time.perf_counter()
        service._step()
        total = time.perf_counter() - t0
        drain_client(client)
        if i >= args.warmup:
            record(times, clock.step, total)
    if prof is not None:
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(args.profile_top)
    assert len(engine.scheduler.running) == batch, "every request decodes through the run"
    gc.enable()
    gc.unfreeze()
    client.close(linger=0)
    service.close()
    return times


def record(times: dict[str, list[float]], step: dict[str, float], total: float) -> None:
    ms = {k: v * 1e3 for k, v in step.items()}
    ms["total"] = total * 1e3
    runner = ms["prepare"] + ms.get("sample", 0.0)
    ms["apply"] = ms["engine"] - ms["schedule"] - runner
    ms["encode"] = ms["total"] - ms["engine"]
    ms["cpu_no_sample"] = ms["total"] - ms.get("sample", 0.0)
    for name in PHASES:
        times[name].append(ms.get(name, 0.0))


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Model name" in ln)
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return f"{nproc} cores ({model}), Python {platform.python_version()}, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--page-size", type=int, default=16)
    parser.add_argument("--gc", choices=["worker", "default", "off"], default="worker")
    parser.add_argument("--profile", type=int, default=None, help="batch size to profile")
    parser.add_argument("--profile-top", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"# {time.strftime('%Y-%m-%d %H:%M %Z')}; {machine()}")
    print(f"# {' '.join(sys.argv)}")
    print(f"# context {args.context}, page size {args.page_size}, vocab {args.vocab}, gc {args.gc}")
    print("| batch | " + " | ".join(f"{p} med / p99" for p in PHASES) + " |")
    print("|---" * (len(PHASES) + 1) + "|")
    for batch in args.batches:
        times = run_batch(batch, args)
        cells = [f"{statistics.median(times[p]):.2f} / {p99(times[p]):.2f}" for p in PHASES]
        print(f"| {batch} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
