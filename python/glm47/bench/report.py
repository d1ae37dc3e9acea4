"""Summary statistics, the JSON and markdown reports, and the PNG plots of a benchmark run."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from glm47.bench.client import RequestResult


@dataclass(frozen=True)
class Dist:
    """Mean, median and 99th percentile of a sample, in milliseconds."""

    mean: float
    median: float
    p99: float

    @staticmethod
    def of(seconds: list[float]) -> Dist:
        if not seconds:
            return Dist(float("nan"), float("nan"), float("nan"))
        ms = sorted(s * 1000.0 for s in seconds)
        p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
        return Dist(statistics.fmean(ms), statistics.median(ms), p99)


@dataclass(frozen=True)
class Summary:
    """What one workload achieved."""

    completed: int
    errors: int
    duration_s: float
    request_throughput: float  # completed requests per second
    output_throughput: float  # output tokens per second
    total_throughput: float  # (prompt + output) tokens per second
    total_output_tokens: int
    total_prompt_tokens: int
    ttft_ms: Dist
    tpot_ms: Dist
    itl_ms: Dist
    e2e_ms: Dist
    # The server's own means over the workload (glm47's /metrics), when the endpoint has them:
    # what the requests cost inside the server, without the network and the client.
    server_ttft_mean_ms: float | None = None  # from dispatch to the worker
    server_e2e_mean_ms: float | None = None
    # From the request's arrival at the router's HTTP server to its first chunk (parsing,
    # tokenization and dispatch included); streams only, and only servers that report it.
    server_first_chunk_mean_ms: float | None = None


def summarize(results: list[RequestResult], duration_s: float) -> Summary:
    ok = [r for r in results if r.error is None]
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.prompt_len for r in ok)
    dur = max(duration_s, 1e-9)
    return Summary(
        completed=len(ok),
        errors=len(results) - len(ok),
        duration_s=duration_s,
        request_throughput=len(ok) / dur,
        output_throughput=out_tokens / dur,
        total_throughput=(out_tokens + in_tokens) / dur,
        total_output_tokens=out_tokens,
        total_prompt_tokens=in_tokens,
        ttft_ms=Dist.of([r.ttft for r in ok if r.ttft is not None]),
        tpot_ms=Dist.of([t for r in ok if (t := r.tpot) is not None]),
        itl_ms=Dist.of([x for r in ok for x in r.itls]),
        e2e_ms=Dist.of([r.latency for r in ok]),
    )


def markdown_table(rows: dict[str, Summary]) -> str:
    """One row per workload: throughput, then latency distributions in ms."""
    head = (
        "| workload | done | errors | req/s | output tok/s | total tok/s | TTFT mean / median / p99 "
        "| TPOT mean / median / p99 | ITL mean / median / p99 | E2E mean / median / p99 |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )

    def d(x: Dist, places: int = 0) -> str:
        return f"{x.mean:.{places}f} / {x.median:.{places}f} / {x.p99:.{places}f}"

    # per-token times in hundredths: a few ms a token on a fast GPU
    lines = [
        f"| {name} | {s.completed} | {s.errors} | {s.request_throughput:.2f} | "
        f"{s.output_throughput:.0f} | {s.total_throughput:.0f} | {d(s.ttft_ms)} | "
        f"{d(s.tpot_ms, 2)} | {d(s.itl_ms, 2)} | {d(s.e2e_ms)} |"
        for name, s in rows.items()
    ]
    return head + "\n".join(lines) + "\n"


def _finite(value: object) -> object:
    """`value` with NaN and infinities (a distribution of no samples) as null: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_json(path: Path, meta: dict, rows: dict[str, Summary]) -> None:
    workloads = {k: _finite(asdict(v)) for k, v in rows.items()}
    text = json.dumps({"meta": meta, "workloads": workloads}, indent=2, allow_nan=False)
    path.write_text(text + "\n")


def write_raw(path: Path, results: list[RequestResult]) -> None:
    """Every request's timings, so that tables and plots can be made again elsewhere."""
    path.write_text(json.dumps([asdict(r) for r in results]) + "\n")


def read_raw(path: Path) -> list[RequestResult]:
    return [RequestResult(**row) for row in json.loads(path.read_text())]


def write_plots(path: Path, name: str, results: list[RequestResult], bin_s: float = 1.0) -> None:
    """A PNG with TTFT, TPOT and E2E latency histograms and output tokens/s over time.

    Skipped with a message where matplotlib is not installed (the raw results are kept, and
    `python -m glm47.bench.report RAW.json...` draws them later)."""
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed: no plot {path.name}")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r.error is None]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    series = [
        ("TTFT (ms)", [r.ttft * 1000 for r in ok if r.ttft is not None]),
        ("TPOT (ms)", [t * 1000 for r in ok if (t := r.tpot) is not None]),
        ("end-to-end latency (ms)", [r.latency * 1000 for r in ok]),
    ]
    for ax, (label, values) in zip(axes.flat, series, strict=False):
        ax.hist(values, bins=50, color="#3b6ea5")
        ax.set_xlabel(label)
        ax.set_ylabel("requests")
    times = [t for r in ok for t in r.token_times]
    ax = axes.flat[3]
    if times:
        nbins = max(1, int(max(times) / bin_s) + 1)
        counts = [0] * nbins
        for t in times:
            counts[int(t / bin_s)] += 1
        ax.plot([i * bin_s for i in range(nbins)], [c / bin_s for c in counts], color="#a53b3b")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("streamed chunks / s")
    fig.suptitle(name)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str]) -> None:
    """Redraw the plots of raw result files: `python -m glm47.bench.report a.requests.json ...`."""
    for raw in map(Path, argv):
        name = raw.name.removesuffix(".requests.json")
        write_plots(raw.with_name(f"{name}.png"), name, read_raw(raw))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
