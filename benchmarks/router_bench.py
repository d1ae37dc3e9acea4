"""The router alone under load: the real `glm47-router` in front of a paced worker that speaks the
wire protocol and needs no model.

The paced worker admits up to `--capacity` requests (the rest wait, first come first served) and
every `--step-ms` emits one random token for each running request, the way a GPU worker at that
step time would. So the router's own cost (HTTP, chat template, tokenization, detokenization, the
parsers, SSE) is what a benchmark client sees beyond the step cadence. The router's histograms
split its time to first chunk into the part before a request reaches the worker and the part after.

    python benchmarks/router_bench.py --model-dir .bench-model --workload burst --num-prompts 2000
"""

from __future__ import annotations

import argparse
import math
import os
import random
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import zmq

from glm47 import _native
from glm47.serve import free_port
from glm47.worker import wire


@dataclass
class Running:
    ident: bytes
    rid: str
    left: int
    sent: int = 0


def paced_worker(
    listen: str, model_dir: str, step_ms: float, capacity: int, hold_s: float, stop: threading.Event
) -> None:
    """Serve the wire protocol at one token per running request per step until `stop` is set; a
    request waits at least `hold_s` before it runs (a worker busy with earlier prompts)."""
    tok = _native.Tokenizer(model_dir)
    special = set(tok.special_token_ids)
    ids = [i for i in range(tok.vocab_size) if i not in special]
    rng = random.Random(0)
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.bind(listen)
    waiting: deque[tuple[float, bytes, wire.WireRequest]] = deque()
    running: dict[tuple[bytes, str], Running] = {}
    next_step = time.perf_counter()
    while not stop.is_set():
        timeout = math.ceil(max(0.0, next_step - time.perf_counter()) * 1e3)  # whole ms
        while sock.poll(timeout=timeout):
            ident, data = sock.recv_multipart()
            msg = wire.decode(data)
            if isinstance(msg, wire.Hello):
                ready = wire.Ready(
                    model="paced",
                    vocab_size=tok.vocab_size,
                    eos_token_ids=list(tok.eos_token_ids),
                    max_req_total_len=202752,
                    max_running_requests=capacity,
                    kv_capacity_tokens=1 << 30,
                    mtp_step=0,
                    worker_id="paced",
                )
                sock.send_multipart([ident, wire.encode(ready)])
            elif isinstance(msg, wire.Submit):
                now = time.perf_counter()
                waiting.extend((now + hold_s, ident, r) for r in msg.reqs)
            elif isinstance(msg, wire.Abort):
                gone = set(msg.rids)
                for key in [k for k in running if k[0] == ident and k[1] in gone]:
                    del running[key]
                waiting = deque(w for w in waiting if w[1] != ident or w[2].rid not in gone)
            timeout = 0
        if time.perf_counter() < next_step:
            continue
        next_step += step_ms / 1e3
        now = time.perf_counter()
        while waiting and len(running) < capacity and waiting[0][0] <= now:
            _, ident, r = waiting.popleft()
            running[(ident, r.rid)] = Running(ident, r.rid, r.max_new_tokens)
        by_conn: dict[bytes, list[wire.Output]] = {}
        for key, run in list(running.items()):
            run.left -= 1
            out = wire.Output(
                rid=run.rid,
                ids=[rng.choice(ids)],
                finish="length" if run.left <= 0 else None,
                prompt_tokens=1 if run.sent == 0 else None,
                cached_tokens=0 if run.sent == 0 else None,
            )
            run.sent += 1
            if run.left <= 0:
                del running[key]
            by_conn.setdefault(run.ident, []).append(out)
        stats = {"running": len(running), "waiting": len(waiting)}
        for ident, outs in by_conn.items():
            sock.send_multipart([ident, wire.encode(wire.Step(outs=outs, stats=stats))])


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model-dir", required=True, help="tokenizer and chat template for the router")
    p.add_argument("--step-ms", type=float, default=50.0)
    p.add_argument("--capacity", type=int, default=2048)
    p.add_argument("--hold-s", type=float, default=0.0, help="least wait before a request runs")
    p.add_argument(
        "--router-arg", action="append", default=[], help="extra router flag (repeatable)"
    )
    args, bench_args = p.parse_known_args()
    listen = f"tcp://127.0.0.1:{free_port()}"
    port = free_port()
    stop = threading.Event()
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            paced_worker(listen, args.model_dir, args.step_ms, args.capacity, args.hold_s, stop)
        except BaseException as err:  # reported by main(), which stops the benchmark
            failure.append(err)

    worker = threading.Thread(target=serve, daemon=True)
    worker.start()
    router = subprocess.Popen(
        [sys.executable, "-m", "glm47.router", "--worker-addr", listen,
         "--model-dir", args.model_dir, "--host", "127.0.0.1", "--port", str(port),
         *args.router_arg]
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not failure:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        else:
            why = f"the paced worker failed: {failure[0]!r}" if failure else "no ready router"
            print(f"router_bench: {why}", file=sys.stderr)
            return 1
        print(f"router_bench: paced worker at {args.step_ms} ms a step, capacity {args.capacity}")
        bench = [sys.executable, "-m", "glm47.cli", "bench", "--base-url", base, *bench_args]
        if "--tokenizer" not in bench_args and "--dataset" not in bench_args:
            bench += ["--tokenizer", args.model_dir]
        cpu0 = process_cpu_s(router.pid)
        client = subprocess.Popen(bench)
        while client.poll() is None:
            if failure:
                client.terminate()
                client.wait()
                print(f"router_bench: the paced worker failed: {failure[0]!r}", file=sys.stderr)
                return 1
            time.sleep(0.2)
        rc = client.returncode
        rss = peak_rss_mib(router.pid)
        print(
            f"router_bench: the router used {process_cpu_s(router.pid) - cpu0:.1f} CPU seconds"
            f" (peak resident memory {rss:.0f} MiB)"
        )
        return rc
    finally:
        router.terminate()
        router.wait(timeout=10)
        stop.set()
        worker.join(timeout=5)


if __name__ == "__main__":
    raise SystemExit(main())
