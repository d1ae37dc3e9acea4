"""Command line of the worker: `python -m glm47.worker --listen ADDR --model-dir DIR [flags]`.

Flags use dashes; LightLLM's underscore spellings (`--model_dir`, `--max_req_total_len`,
`--llm_prefill_att_backend`, ...) and the vLLM and SGLang names of the same settings
(`--max-model-len`, `--gpu-memory-utilization`, `--context-length`, `--mem-fraction-static`,
`--enforce-eager`, `--speculative-config`, ...) are accepted as aliases so deployments can keep
their flags.
Unknown flags are an error; router flags given to the worker get a hint instead of a bare refusal.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any

from glm47.worker.config import (
    ATTENTION_BACKEND_CHOICES,
    DTYPE_CHOICES,
    LOAD_FORMAT_CHOICES,
    MTP_MODE_CHOICES,
    EngineConfig,
)

# Flags that belong to the router (or `glm47 serve`), with the reason the worker refuses them.
ROUTER_ONLY = {
    "--host": "the worker binds --listen; --host is the router's HTTP address",
    "--port": "the worker binds --listen; --port is the router's HTTP port",
    "--tool-call-parser": "tool calls are parsed by the router",
    "--tool_call_parser": "tool calls are parsed by the router",
    "--reasoning-parser": "reasoning is parsed by the router",
    "--reasoning_parser": "reasoning is parsed by the router",
    "--worker-addr": "--worker-addr is a router flag; the worker binds --listen",
}
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class WorkerArgs:
    """The parsed command line: where to listen, what to call the worker, and the engine config."""

    listen: str  # ZeroMQ address the ROUTER socket binds
    worker_id: str  # name in `ready`, logs and metrics
    model_name: str | None  # model name announced in `ready`; None: the model directory's name
    log_level: str
    engine: EngineConfig


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _flag(parser: argparse.ArgumentParser, names: list[str], **kw: Any) -> None:
    """Add a flag under its dashed name and every alias; the dest is the first name's (or
    `dest_override`'s)."""
    dest = kw.pop("dest_override", None) or names[0].lstrip("-").replace("-", "_")
    parser.add_argument(*names, dest=dest, **kw)


# SGLang's names of the draft method a GLM-4.7 checkpoint's MTP layer serves.
SPECULATIVE_ALGORITHMS = ("EAGLE", "EAGLE3", "NEXTN", "MTP")
# vLLM's `--speculative-config` methods that mean the checkpoint's own MTP layer.
SPECULATIVE_METHODS = ("mtp", "glm4_moe_mtp", "deepseek_mtp", "eagle", "nextn")


def _speculative_config(text: str) -> int:
    """vLLM's `--speculative-config` JSON: the draft tokens a step, from the model's MTP layer."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise argparse.ArgumentTypeError("a JSON object is expected")
    method = raw.get("method", "mtp")
    if method not in SPECULATIVE_METHODS:
        raise argparse.ArgumentTypeError(
            f"method {method!r}: drafts come from the model's MTP layer "
            f"({', '.join(SPECULATIVE_METHODS)})"
        )
    model = raw.get("model")
    if model is not None:
        raise argparse.ArgumentTypeError(
            "a separate draft model is not supported (leave out model)"
        )
    tokens = raw.get("num_speculative_tokens")
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
        raise argparse.ArgumentTypeError("num_speculative_tokens must be an integer >= 1")
    unknown = sorted(set(raw) - {"method", "model", "num_speculative_tokens"})
    if unknown:
        raise argparse.ArgumentTypeError(f"unsupported keys: {', '.join(unknown)}")
    return tokens


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="glm47 worker",
        description="The glm47 GPU worker: loads the model and serves the router over ZeroMQ.",
        allow_abbrev=False,
    )
    _flag(p, ["--listen"], required=True, help="address to bind, e.g. tcp://0.0.0.0:5557")
    _flag(
        p,
        ["--model-dir", "--model_dir", "--model", "--model-path"],
        required=True,
        help="checkpoint directory",
    )
    _flag(p, ["--model-name", "--model_name"], help="model name announced to routers")
    _flag(p, ["--worker-id", "--worker_id"], default=None, help="name of this worker in logs")
    _flag(p, ["--log-level", "--log_level"], default="info", choices=LOG_LEVELS)
    _flag(p, ["--device"], default=None, help="cuda, cuda:N or cpu (default: cuda if available)")
    _flag(p, ["--dtype", "--data-type", "--data_type"], default=None, choices=DTYPE_CHOICES)
    _flag(
        p,
        ["--tp", "--tp-size", "--tensor-parallel-size"],
        type=int,
        default=1,
        help="tensor-parallel ranks: one process and one GPU each (the worker's device and the "
        "next ones), the heads and intermediate columns split over them",
    )
    _flag(p, ["--seed"], type=int, default=0, help="seed of sampling and dummy weights")
    _flag(p, ["--load-format", "--load_format"], default="auto", choices=LOAD_FORMAT_CHOICES)
    _flag(
        p,
        ["--page-size", "--page_size", "--block-size"],
        type=int,
        default=16,
        help="tokens per KV page",
    )
    _flag(
        p, ["--kv-cache-tokens", "--kv_cache_tokens", "--max-total-tokens"], type=int, default=None
    )
    _flag(
        p,
        ["--mem-fraction", "--mem_fraction", "--gpu-memory-utilization", "--mem-fraction-static"],
        type=float,
        default=0.9,
        help="share of the GPU's memory the worker may fill (weights, graphs, KV cache)",
    )
    _flag(p, ["--chunked-prefill-size", "--chunked_prefill_size"], type=int, default=8192)
    _flag(
        p,
        ["--enable-chunked-prefill"],
        action="store_true",
        help="accepted for compatibility: prompts are always prefilled in chunks",
    )
    _flag(p, ["--max-num-batched-tokens", "--max_num_batched_tokens"], type=int, default=None)
    _flag(
        p,
        ["--max-req-total-len", "--max_req_total_len", "--max-model-len", "--context-length"],
        type=int,
        default=None,
        help="longest prompt + output (default: the model's max_position_embeddings)",
    )
    _flag(
        p,
        ["--max-running-requests", "--max_running_requests", "--max-num-seqs"],
        type=int,
        default=1024,
    )
    _flag(p, ["--max-waiting-requests", "--max_waiting_requests"], type=int, default=4096)
    _flag(
        p,
        [
            "--max-wait-steps",
            "--max_wait_steps",
            "--router-max-wait-tokens",
            "--router_max_wait_tokens",
        ],
        type=int,
        default=6,
        help="while requests decode, admit new ones at most once per this many steps (1: always)",
    )
    _flag(
        p,
        ["--scheduling-policy", "--scheduling_policy", "--schedule-policy"],
        choices=["fcfs", "priority"],
        default="fcfs",
        help="fcfs: oldest first; priority: requests' `priority` (lower first), then oldest",
    )
    _flag(
        p,
        ["--disable-overlap-schedule", "--disable_overlap_schedule"],
        action="store_true",
        help="read each step's samples before planning the next (no step queued ahead)",
    )
    _flag(
        p,
        ["--log-stats-interval", "--log_stats_interval"],
        type=float,
        default=5.0,
        help="seconds between the engine's summary lines (step times, throughput, batch, KV)",
    )
    _flag(
        p,
        ["--disable-log-stats", "--disable_log_stats"],
        action="store_true",
        help="no periodic engine summary in the log",
    )
    _flag(
        p,
        ["--skip-server-warmup", "--skip_server_warmup"],
        action="store_true",
        help="on a GPU, serve without first running synthetic requests through the engine "
        "(the first real steps then compile kernels while requests wait)",
    )
    _flag(
        p,
        ["--disable-prefix-cache", "--disable_prefix_cache", "--disable-radix-cache",
         "--no-enable-prefix-caching"],
        action="store_true",
        help="no KV sharing between requests with a common prefix",
    )  # fmt: skip
    _flag(
        p,
        ["--enable-prefix-caching"],
        action="store_false",
        dest_override="disable_prefix_cache",
        help="share KV between requests with a common prefix (the default)",
    )
    _flag(
        p,
        ["--kv-cache-dtype"],
        choices=["auto"],
        default="auto",
        help="the KV cache holds the model's dtype (auto); quantised caches are not supported",
    )
    _flag(
        p,
        ["--trust-remote-code"],
        action="store_true",
        help="accepted for compatibility: the model's code is built in, none is loaded",
    )
    # unset: --attention-backend's (SGLang's one backend for both phases), else auto
    backends: dict[str, Any] = {"choices": ATTENTION_BACKEND_CHOICES, "default": None}
    _flag(
        p,
        ["--prefill-att-backend", "--llm_prefill_att_backend", "--llm-prefill-att-backend"],
        **backends,
    )
    _flag(
        p,
        ["--decode-att-backend", "--llm_decode_att_backend", "--llm-decode-att-backend"],
        **backends,
    )
    _flag(
        p,
        ["--attention-backend"],
        **backends,
        help="both phases' backend where --prefill-att-backend / --decode-att-backend is not given",
    )
    _flag(
        p,
        ["--graph-max-batch-size", "--graph_max_batch_size", "--cuda-graph-max-bs"],
        type=int,
        default=512,
    )
    _flag(
        p, ["--disable-cuda-graph", "--disable_cuda_graph", "--enforce-eager"], action="store_true"
    )
    _flag(
        p,
        ["--skinny-gemm", "--skinny_gemm"],
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the products of steps of at most 16 tokens (dense projections, MLA's absorbed "
        "products, the router) through glm47's Triton kernel instead of the GEMM library "
        "(default: on CUDA devices)",
    )
    _flag(
        p,
        ["--pdl"],
        action=argparse.BooleanOptionalAction,
        default=None,
        help="launch the decode-path Triton kernels with programmatic dependent launch: each "
        "prefetches its weights into L2 while the kernel before it runs (default: on GPUs of "
        "compute capability 9.0 and up; ignored elsewhere)",
    )
    _flag(
        p,
        ["--shared-expert-overlap-tokens", "--shared_expert_overlap_tokens"],
        type=int,
        default=None,
        help="steps of at most this many tokens run the MoE shared expert on a second CUDA "
        "stream beside the routed experts (default 128; 0: never; best a decode graph size, "
        "since graphed steps decide on their padded size)",
    )
    _flag(
        p,
        ["--shared-expert-fold-tokens", "--shared_expert_fold_tokens"],
        type=int,
        default=None,
        help="steps of at most this many tokens run the MoE shared expert inside the routed "
        "experts' grouped GEMMs, one more expert per token (default 1 on a GPU with the Triton "
        "experts, at most 64; 0: never; before the overlap above)",
    )
    _flag(
        p,
        ["--segment-graph-max-tokens", "--segment_graph_max_tokens"],
        type=int,
        default=None,
        help="capture steps that decode graphs do not serve (prompt tokens, larger batches), up "
        "to this many tokens, as CUDA graphs between the attention calls (default: the step "
        "token budget; 0: run them eagerly)",
    )
    _flag(
        p,
        ["--mtp-step", "--mtp_step", "--speculative-num-steps"],
        type=int,
        default=None,
        help="MTP draft tokens per step",
    )
    _flag(
        p,
        ["--speculative-algorithm"],
        type=str.upper,
        choices=SPECULATIVE_ALGORITHMS,
        default=None,
        help="SGLang's name of the draft method: the model's MTP layer, any of these",
    )
    _flag(
        p,
        ["--speculative-eagle-topk"],
        type=int,
        default=None,
        help="SGLang's draft tree width: 1 (a chain of drafts) is what the MTP layer drafts",
    )
    _flag(
        p,
        ["--speculative-num-draft-tokens"],
        type=int,
        default=None,
        help="SGLang's tokens verified a step: the drafts plus one (--speculative-num-steps + 1)",
    )
    _flag(
        p,
        ["--speculative-config"],
        type=_speculative_config,
        default=None,
        help='vLLM\'s JSON: {"method": "mtp", "num_speculative_tokens": N} (N drafts a step)',
    )
    _flag(p, ["--mtp-mode", "--mtp_mode"], default="vanilla_with_att", choices=MTP_MODE_CHOICES)
    _flag(p, ["--mtp-draft-model-dir", "--mtp_draft_model_dir"], default=None)
    return p


def _mtp_step(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Draft tokens a step from `--mtp-step` (SGLang: `--speculative-num-steps`) or vLLM's
    `--speculative-config`; SGLang's `--speculative-algorithm` needs a step count."""
    steps, config = ns.mtp_step, ns.speculative_config
    if steps is not None and config is not None and steps != config:
        parser.error(
            f"--mtp-step {steps} and --speculative-config's num_speculative_tokens {config} differ"
        )
    chosen = steps if steps is not None else config
    if ns.speculative_eagle_topk not in (None, 1):
        parser.error("--speculative-eagle-topk: the MTP layer drafts a chain (topk 1)")
    verified = ns.speculative_num_draft_tokens
    if verified is not None:
        if chosen is None:
            chosen = verified - 1
        elif verified != chosen + 1:
            parser.error(
                f"--speculative-num-draft-tokens {verified} must be the drafts a step plus one "
                f"({chosen + 1})"
            )
    if ns.speculative_algorithm is not None and not chosen:
        parser.error("--speculative-algorithm needs --speculative-num-steps N (drafts a step)")
    return max(chosen or 0, 0)


def parse_args(argv: list[str]) -> WorkerArgs:
    """Parse and validate; exits with a usage message (status 2) on any bad flag or value."""
    parser = build_parser()
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if flag in ROUTER_ONLY:
            parser.error(f"{flag} is not a worker flag: {ROUTER_ONLY[flag]}")
    ns = parser.parse_args(argv)
    device = ns.device or default_device()
    dtype = ns.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    try:
        engine = EngineConfig(
            model_dir=ns.model_dir,
            device=device,
            dtype=dtype,
            tp=ns.tp,
            seed=ns.seed,
            load_format=ns.load_format,
            page_size=ns.page_size,
            kv_cache_tokens=ns.kv_cache_tokens,
            mem_fraction=ns.mem_fraction,
            chunked_prefill_size=ns.chunked_prefill_size,
            max_num_batched_tokens=ns.max_num_batched_tokens,
            max_req_total_len=ns.max_req_total_len,
            max_running_requests=ns.max_running_requests,
            max_waiting_requests=ns.max_waiting_requests,
            max_wait_steps=ns.max_wait_steps,
            scheduling_policy=ns.scheduling_policy,
            overlap_schedule=not ns.disable_overlap_schedule,
            enable_prefix_cache=not ns.disable_prefix_cache,
            log_stats_interval=0.0 if ns.disable_log_stats else ns.log_stats_interval,
            server_warmup=not ns.skip_server_warmup,
            prefill_att_backend=ns.prefill_att_backend or ns.attention_backend or "auto",
            decode_att_backend=ns.decode_att_backend or ns.attention_backend or "auto",
            graph_max_batch_size=ns.graph_max_batch_size,
            disable_cuda_graph=ns.disable_cuda_graph,
            skinny_gemm=ns.skinny_gemm,
            pdl=ns.pdl,
            shared_expert_overlap_tokens=ns.shared_expert_overlap_tokens,
            shared_expert_fold_tokens=ns.shared_expert_fold_tokens,
            segment_graph_max_tokens=ns.segment_graph_max_tokens,
            mtp_step=_mtp_step(ns, parser),
            mtp_mode=ns.mtp_mode,
            mtp_draft_model_dir=ns.mtp_draft_model_dir,
        )
    except ValueError as exc:
        parser.error(str(exc))
    problem = _listen_problem(ns.listen)
    if problem is not None:
        parser.error(f"--listen {ns.listen}: {problem}")
    return WorkerArgs(
        listen=ns.listen,
        worker_id=ns.worker_id or f"worker@{ns.listen}",
        model_name=ns.model_name,
        log_level=ns.log_level,
        engine=engine,
    )


def _listen_problem(listen: str) -> str | None:
    """What is wrong with a `--listen` address, if anything ZeroMQ would not catch (a TCP port
    out of range, which it would take modulo 65536)."""
    transport, sep, rest = listen.partition("://")
    if not sep:
        return "an address is transport://where, e.g. tcp://0.0.0.0:5557"
    if transport != "tcp":
        return None
    port = rest.rpartition(":")[2]
    if port == "*" or (port.isascii() and port.isdecimal() and int(port) < 65536):
        return None
    return f"the port must be 0 to 65535 or *, not {port!r}"
