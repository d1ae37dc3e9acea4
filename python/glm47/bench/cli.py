"""`glm47 bench`: run one or more workloads against an endpoint and write the reports."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import urllib.request
from collections import Counter
from pathlib import Path

from glm47.bench.client import Arrival, Endpoint, Sampling, run_workload_procs
from glm47.bench.dataset import (
    BenchRequest,
    load_requests,
    random_requests,
    read_packaged_sharegpt,
    sample_sharegpt,
    save_requests,
)
from glm47.bench.report import (
    Summary,
    markdown_table,
    summarize,
    write_json,
    write_plots,
    write_raw,
)

# Named workloads (the LightLLM table's): name -> arrival.
PRESETS = {
    "burst": Arrival(),
    "high-conc": Arrival(concurrency=512),
    "moderate": Arrival(rate=10.0),
    "steady": Arrival(rate=5.0),
}


def parse_workload(spec: str, seed: int) -> tuple[str, Arrival]:
    """`burst`, a preset name, `conc:N` (fixed concurrency) or `rate:R` (Poisson, req/s)."""
    if spec in PRESETS:
        a = PRESETS[spec]
        return spec, Arrival(concurrency=a.concurrency, rate=a.rate, seed=seed)
    kind, _, value = spec.partition(":")
    try:
        if kind == "conc":
            return spec, Arrival(concurrency=int(value), seed=seed)
        if kind == "rate":
            return spec, Arrival(rate=float(value), seed=seed)
    except ValueError:
        pass
    raise SystemExit(
        f"glm47 bench: bad workload {spec!r} (use {', '.join(PRESETS)}, conc:N, rate:R)"
    )


DEFAULT_CLIENT_PROCS = max(1, min(8, (os.cpu_count() or 2) // 2))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glm47 bench", description=__doc__)
    p.add_argument("--base-url", default="http://127.0.0.1:8000", help="server root URL")
    p.add_argument("--model", default=None, help="model name (default: the server's first model)")
    p.add_argument("--endpoint", choices=[e.value for e in Endpoint], default="completions")
    p.add_argument("--dataset", choices=["sharegpt", "random", "file"], default="sharegpt")
    p.add_argument("--dataset-path", default=None, help="JSON lines written by --save-requests")
    p.add_argument("--save-requests", default=None, help="write the sampled requests here")
    p.add_argument("--dry-run", action="store_true", help="only sample (and save) the requests")
    p.add_argument(
        "--tokenizer",
        default=None,
        help="model directory whose tokenizer measures ShareGPT lengths (required for sharegpt)",
    )
    p.add_argument("--num-prompts", type=int, default=2000)
    p.add_argument("--random-input-len", type=int, default=256)
    p.add_argument("--random-output-len", type=int, default=256)
    p.add_argument("--random-range-ratio", type=float, default=0.0)
    p.add_argument("--vocab-size", type=int, default=154880, help="for random token ids")
    p.add_argument(
        "--workload",
        action="append",
        default=None,
        help="burst | high-conc | moderate | steady | conc:N | rate:R (repeatable)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--temperature", type=float, default=0.0, help="sent with every request (default: greedy)"
    )
    p.add_argument("--top-p", type=float, default=None, help="sent with every request when set")
    p.add_argument("--top-k", type=int, default=None, help="sent with every request when set")
    for penalty in ("frequency", "presence", "repetition"):
        p.add_argument(
            f"--{penalty}-penalty",
            type=float,
            default=None,
            help="sent with every request when set",
        )
    p.add_argument(
        "--client-procs",
        type=int,
        default=DEFAULT_CLIENT_PROCS,
        help="client processes sharing the requests, so that the client keeps up with the "
        f"server's streams (default {DEFAULT_CLIENT_PROCS}: half the CPUs, at most 8)",
    )
    p.add_argument(
        "--output-dir", default=None, help="write bench.json, bench.md and PNG plots here"
    )
    p.add_argument(
        "--flush-cache",
        action="store_true",
        help="empty the server's prefix cache before each workload (SGLang's /flush_cache, "
        "else vLLM's /reset_prefix_cache), so that no workload finds the prompts of the one before",
    )
    p.add_argument("--label", default="", help="free text stored with the results (GPU, flags)")
    p.add_argument("--no-progress", action="store_true")
    return p


def build_requests(args: argparse.Namespace) -> list[BenchRequest]:
    if args.dataset == "file":
        if args.dataset_path is None:
            raise SystemExit("glm47 bench: --dataset file needs --dataset-path")
        return load_requests(args.dataset_path)[: args.num_prompts]
    if args.dataset == "random":
        requests = random_requests(
            args.num_prompts,
            args.random_input_len,
            args.random_output_len,
            args.random_range_ratio,
            args.vocab_size,
            args.seed,
        )
        if args.endpoint != Endpoint.CHAT.value:
            return requests
        # a chat message is text: the ids' text, as vLLM's random dataset writes it
        if args.tokenizer is None:
            raise SystemExit("glm47 bench: --dataset random --endpoint chat needs --tokenizer")
        from glm47 import _native

        tok = _native.Tokenizer(args.tokenizer)
        return [dataclasses.replace(r, prompt=tok.decode(list(r.prompt), False)) for r in requests]
    if args.tokenizer is None:
        raise SystemExit("glm47 bench: --tokenizer MODEL_DIR is required for the sharegpt dataset")
    from glm47 import _native

    tok = _native.Tokenizer(args.tokenizer)
    return sample_sharegpt(read_packaged_sharegpt(), tok.encode, args.num_prompts, args.seed)


SERVER_HISTOGRAMS = {
    "ttft": "glm47_time_to_first_token_seconds",
    "e2e": "glm47_e2e_request_latency_seconds",
}
# Read where present (servers from before it lack it).
OPTIONAL_HISTOGRAMS = {"first_chunk": "glm47_http_time_to_first_chunk_seconds"}


def server_totals(base_url: str) -> dict[str, tuple[float, float]] | None:
    """(sum, count) of the server's latency histograms, from glm47's /metrics; None where the
    endpoint has none (another server)."""
    try:
        with urllib.request.urlopen(base_url.rstrip("/") + "/metrics", timeout=10) as resp:
            text = resp.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.endswith(("_sum", "_count")):
            try:
                values[name] = float(value)
            except ValueError:
                continue
    totals = {}
    for key, metric in SERVER_HISTOGRAMS.items():
        if f"{metric}_sum" not in values or f"{metric}_count" not in values:
            return None
        totals[key] = (values[f"{metric}_sum"], values[f"{metric}_count"])
    for key, metric in OPTIONAL_HISTOGRAMS.items():
        if f"{metric}_sum" in values and f"{metric}_count" in values:
            totals[key] = (values[f"{metric}_sum"], values[f"{metric}_count"])
    return totals


def server_means(
    before: dict[str, tuple[float, float]] | None, after: dict[str, tuple[float, float]] | None
) -> dict[str, float | None]:
    """Mean milliseconds of each histogram between two readings."""
    means: dict[str, float | None] = dict.fromkeys([*SERVER_HISTOGRAMS, *OPTIONAL_HISTOGRAMS])
    if before is None or after is None:
        return means
    for key in means:
        if key not in before or key not in after:
            continue
        total = after[key][0] - before[key][0]
        count = after[key][1] - before[key][1]
        means[key] = 1e3 * total / count if count > 0 else None
    return means


def flush_cache(base_url: str) -> None:
    """Empties the server's prefix cache: SGLang's (and glm47's) `/flush_cache`, else vLLM's
    `/reset_prefix_cache`; a server with neither is an error (its numbers would not be what
    was asked for)."""
    root = base_url.rstrip("/")
    for path in ("/flush_cache", "/reset_prefix_cache"):
        try:
            req = urllib.request.Request(root + path, data=b"", method="POST")
            with urllib.request.urlopen(req, timeout=60):
                return
        except (OSError, ValueError):
            continue
    raise SystemExit(f"glm47 bench: {root} has neither /flush_cache nor /reset_prefix_cache")


def first_model(base_url: str) -> str:
    with urllib.request.urlopen(base_url.rstrip("/") + "/v1/models", timeout=30) as resp:
        return str(json.load(resp)["data"][0]["id"])


def write_reports(
    out_dir: Path, args: argparse.Namespace, model: str, num_prompts: int, rows: dict[str, Summary]
) -> None:
    """bench.json and bench.md for the workloads finished so far."""
    meta = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "base_url": args.base_url,
        "model": model,
        "endpoint": args.endpoint,
        "dataset": args.dataset,
        "num_prompts": num_prompts,
        "seed": args.seed,
        "sampling": sampling_of(args).body(),
        "label": args.label,
    }
    write_json(out_dir / "bench.json", meta, rows)
    (out_dir / "bench.md").write_text(f"{args.label}\n\n{markdown_table(rows)}")


def sampling_of(args: argparse.Namespace) -> Sampling:
    return Sampling(
        args.temperature, args.top_p, args.top_k,
        args.frequency_penalty, args.presence_penalty, args.repetition_penalty,
    )  # fmt: skip


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    requests = build_requests(args)
    if args.endpoint == Endpoint.CHAT.value and any(isinstance(r.prompt, list) for r in requests):
        raise SystemExit("glm47 bench: the chat endpoint takes text prompts, not token ids")
    if args.save_requests:
        save_requests(args.save_requests, requests)
    if args.dry_run:
        print(
            f"{len(requests)} requests"
            + (f" saved to {args.save_requests}" if args.save_requests else "")
        )
        return 0
    model = args.model or first_model(args.base_url)
    endpoint = Endpoint(args.endpoint)
    out_dir = Path(args.output_dir) if args.output_dir else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    rows: dict[str, Summary] = {}
    for spec in args.workload or ["burst"]:
        name, arrival = parse_workload(spec, args.seed)
        if args.flush_cache:
            flush_cache(args.base_url)
        print(f"== {name}: {len(requests)} requests, {arrival}")
        before = server_totals(args.base_url)
        results, wall = run_workload_procs(
            args.base_url, model, requests, endpoint, arrival, args.client_procs,
            not args.no_progress, sampling_of(args),
        )  # fmt: skip
        means = server_means(before, server_totals(args.base_url))
        rows[name] = dataclasses.replace(
            summarize(results, wall),
            server_ttft_mean_ms=means["ttft"],
            server_e2e_mean_ms=means["e2e"],
            server_first_chunk_mean_ms=means["first_chunk"],
        )
        print(markdown_table({name: rows[name]}), flush=True)
        if means["ttft"] is not None and means["e2e"] is not None:
            from_arrival = means["first_chunk"]
            print(
                f"  the server's own means: TTFT {means['ttft']:.0f} ms from dispatch"
                + (f" ({from_arrival:.0f} ms from arrival)" if from_arrival is not None else "")
                + f", E2E {means['e2e']:.0f} ms"
            )
        for message, count in Counter(r.error for r in results if r.error).most_common(5):
            print(f"  {count} request(s) failed: {message}")
        if out_dir:
            stem = name.replace(":", "_")
            write_raw(out_dir / f"{stem}.requests.json", results)
            write_plots(out_dir / f"{stem}.png", f"{name} ({args.label})", results)
            write_reports(out_dir, args, model, len(requests), rows)  # after each workload
    print(markdown_table(rows))
    return 0 if all(s.errors == 0 for s in rows.values()) else 1
