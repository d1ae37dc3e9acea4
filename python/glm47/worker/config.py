"""Worker configuration: one frozen, validated dataclass for the engine, one for the environment.

Flags of `python -m glm47.worker` map one to one onto `EngineConfig` fields (dashes on the command
line, underscores here, which are also LightLLM's spellings). Environment variables are read in
exactly one place: `Env.from_environ`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

# torch: the reference; triton+flashinfer: each decode step through one of the two, by its
# sequences and cached tokens (attention/hybrid.py)
ATTENTION_BACKEND_CHOICES = ("auto", "triton", "fa3", "flashinfer", "triton+flashinfer", "torch")
LOAD_FORMAT_CHOICES = ("auto", "dummy")
MTP_MODE_CHOICES = ("vanilla_with_att", "eagle_with_att")
DTYPE_CHOICES = ("bfloat16", "float16", "float32")


SCHEDULING_POLICIES = ("fcfs", "priority")


@dataclass(frozen=True)
class EngineConfig:
    """Settings of one worker's engine. Invalid values raise `ValueError` at construction."""

    # Where the model lives and runs.
    model_dir: str | None = None  # checkpoint directory (config.json, safetensors)
    device: str = "cuda"  # "cuda", "cuda:N" or "cpu"
    dtype: str = "bfloat16"  # weights and activations; one of DTYPE_CHOICES
    tp: int = 1  # tensor-parallel world size
    seed: int = 0  # seed of the default sampling generator and of dummy weights
    load_format: str = "auto"  # "auto": safetensors from model_dir; "dummy": random weights
    # KV cache sizing.
    page_size: int = 16  # tokens per KV page; a power of two (1 allowed)
    kv_cache_tokens: int | None = (
        None  # explicit KV capacity in tokens (CPU); None: size from memory
    )
    mem_fraction: float = 0.9  # share of total GPU memory that weights + KV cache may use
    # Scheduling.
    chunked_prefill_size: int = 8192  # most prompt tokens one request computes in one step
    max_num_batched_tokens: int | None = None  # token budget of a step; None: chunked_prefill_size
    max_req_total_len: int | None = (
        None  # prompt + output limit; None: model max_position_embeddings
    )
    max_running_requests: int = 1024  # requests in the running batch at most
    max_waiting_requests: int = 4096  # queued requests at most; more are rejected with queue_full
    # While requests are decoding, new ones are admitted at most once per this many steps: a step
    # with prompt tokens cannot replay a decode CUDA graph, so admissions are batched (LightLLM's
    # router_max_wait_tokens). A request arriving after a quiet stretch is admitted at once. 1:
    # admit whenever there is room.
    max_wait_steps: int = 6
    # Which waiting request is admitted first and which running one is preempted: "fcfs" (oldest
    # first; the newest is preempted) or "priority" (vLLM's: lowest `priority` value first, then
    # oldest; the highest value, then newest, is preempted).
    scheduling_policy: str = "fcfs"
    # Queue step n + 1 on the device before reading step n's samples, so the host's work between
    # steps overlaps the device's (engine.py, running ahead).
    overlap_schedule: bool = True
    enable_prefix_cache: bool = True  # share KV pages of common prompt prefixes (radix cache)
    # Seconds between the engine's summary lines in the log (steps, step times, throughput, batch
    # and KV state) while it works; 0: none.
    log_stats_interval: float = 5.0
    # On a GPU, run synthetic requests through a throwaway engine before serving (engine/warmup.py).
    server_warmup: bool = True
    # Admission keeps KV room for running requests to grow: this share of their remaining output
    # budget (see engine/admission.py; decays while nothing is preempted). 0: known tokens only.
    reserve_output_ratio: float = 0.7
    # Kernels.
    prefill_att_backend: str = (
        "auto"  # attention for steps with prompt chunks; ATTENTION_BACKEND_CHOICES
    )
    decode_att_backend: str = "auto"  # attention for all-decode steps; ATTENTION_BACKEND_CHOICES
    graph_max_batch_size: int = 512  # largest decode batch captured in a CUDA graph
    disable_cuda_graph: bool = False  # run decode eagerly
    # Products of <= 16-token steps through kernels/skinny_gemm. None: on CUDA devices.
    skinny_gemm: bool | None = None
    # Decode-path Triton kernels with programmatic dependent launch (kernels/pdl). None: where
    # the GPU supports it.
    pdl: bool | None = None
    # Steps of at most this many tokens run the MoE layers' shared expert on a second CUDA stream
    # beside the routed experts. None: kernel_options.SHARED_OVERLAP_TOKENS; 0: never.
    shared_expert_overlap_tokens: int | None = None
    # Steps of at most this many tokens run the shared expert inside the routed experts' grouped
    # GEMMs (Triton experts). None: kernel_options.SHARED_FOLD_TOKENS; 0: never.
    shared_expert_fold_tokens: int | None = None
    # Steps the decode graphs do not serve (prompt tokens, decode batches above the largest
    # graph), up to this many tokens, as CUDA graphs between the attention calls
    # (segment_graph.py). None: the step's token budget; 0: such steps run eagerly.
    segment_graph_max_tokens: int | None = None
    # Speculative decoding with the model's MTP layer.
    mtp_step: int = 0  # draft tokens proposed per step; 0 disables speculation
    mtp_mode: str = "vanilla_with_att"  # one of MTP_MODE_CHOICES
    mtp_draft_model_dir: str | None = None  # checkpoint holding the MTP layer; None: model_dir

    def __post_init__(self) -> None:
        if self.max_num_batched_tokens is None:
            object.__setattr__(self, "max_num_batched_tokens", self.chunked_prefill_size)
        if self.segment_graph_max_tokens is None:
            object.__setattr__(self, "segment_graph_max_tokens", self.max_num_batched_tokens)
        self._validate()

    def _validate(self) -> None:
        _check(self.dtype in DTYPE_CHOICES, f"dtype must be one of {DTYPE_CHOICES}")
        _check(self.tp >= 1, "tp must be >= 1")
        _check(
            self.load_format in LOAD_FORMAT_CHOICES, f"load_format: one of {LOAD_FORMAT_CHOICES}"
        )
        _check(
            self.page_size >= 1 and self.page_size & (self.page_size - 1) == 0,
            f"page_size must be a power of two, got {self.page_size}",
        )
        _check(
            self.kv_cache_tokens is None or self.kv_cache_tokens >= self.page_size,
            "kv_cache_tokens must hold at least one page",
        )
        _check(0.0 < self.mem_fraction <= 1.0, "mem_fraction must be in (0, 1]")
        _check(self.chunked_prefill_size >= 1, "chunked_prefill_size must be >= 1")
        _check(self.max_wait_steps >= 1, "max_wait_steps must be >= 1")
        _check(
            self.scheduling_policy in SCHEDULING_POLICIES,
            f"scheduling_policy must be one of {', '.join(SCHEDULING_POLICIES)}",
        )
        _check(self.log_stats_interval >= 0, "log_stats_interval must be >= 0")
        assert self.max_num_batched_tokens is not None and self.segment_graph_max_tokens is not None
        _check(self.segment_graph_max_tokens >= 0, "segment_graph_max_tokens must be >= 0")
        _check(self.max_num_batched_tokens >= 1, "max_num_batched_tokens must be >= 1")
        _check(
            self.max_req_total_len is None or self.max_req_total_len >= 2,
            "max_req_total_len must be >= 2 (one prompt token and one output token)",
        )
        _check(self.max_running_requests >= 1, "max_running_requests must be >= 1")
        _check(self.max_waiting_requests >= 0, "max_waiting_requests must be >= 0")
        _check(0.0 <= self.reserve_output_ratio <= 1.0, "reserve_output_ratio must be in [0, 1]")
        for name in ("prefill_att_backend", "decode_att_backend"):
            value = getattr(self, name)
            _check(
                value in ATTENTION_BACKEND_CHOICES, f"{name}: one of {ATTENTION_BACKEND_CHOICES}"
            )
        _check(self.graph_max_batch_size >= 1, "graph_max_batch_size must be >= 1")
        _check(
            self.shared_expert_overlap_tokens is None or self.shared_expert_overlap_tokens >= 0,
            "shared_expert_overlap_tokens must be >= 0",
        )
        _check(
            self.shared_expert_fold_tokens is None or self.shared_expert_fold_tokens >= 0,
            "shared_expert_fold_tokens must be >= 0",
        )
        _check(self.mtp_step >= 0, "mtp_step must be >= 0")
        _check(self.mtp_mode in MTP_MODE_CHOICES, f"mtp_mode must be one of {MTP_MODE_CHOICES}")

    def with_model_limits(self, max_position_embeddings: int) -> EngineConfig:
        """Fill the defaults that come from the model: `max_req_total_len` when unset."""
        if self.max_req_total_len is not None:
            return self
        return replace(self, max_req_total_len=max_position_embeddings)

    @property
    def token_budget(self) -> int:
        """`max_num_batched_tokens` with its default resolved (never None after construction)."""
        assert self.max_num_batched_tokens is not None
        return self.max_num_batched_tokens


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


# ---------------------------------------------------------------------------------------------
# Env: every environment variable the worker reads, declared once.
# ---------------------------------------------------------------------------------------------

ENV_AUTOTUNE_LEVEL = "GLM47_TRITON_AUTOTUNE_LEVEL"
ENV_AUTOTUNE_LEVEL_ALIAS = "LIGHTLLM_TRITON_AUTOTUNE_LEVEL"  # accepted for migrating deployments
ENV_LOAD_WORKERS = "LOADWORKER"
ENV_TUNED_CONFIG_DIR = "GLM47_TUNED_CONFIG_DIR"


@dataclass(frozen=True)
class Env:
    """Settings taken from the environment (read once at start-up with `Env.from_environ`)."""

    # GLM47_TRITON_AUTOTUNE_LEVEL (or LIGHTLLM_TRITON_AUTOTUNE_LEVEL): 0 uses stored configs and
    # built-in defaults, never tunes; 1 tunes shapes with no stored config and stores the result;
    # 2 re-tunes every shape and overwrites stored configs.
    triton_autotune_level: int = 0
    # LOADWORKER: threads that read checkpoint shards in parallel.
    load_workers: int = 8
    # GLM47_TUNED_CONFIG_DIR: extra directory searched for tuned kernel configs (None: built-ins).
    tuned_config_dir: str | None = None

    def __post_init__(self) -> None:
        _check(self.triton_autotune_level in (0, 1, 2), f"{ENV_AUTOTUNE_LEVEL} must be 0, 1 or 2")
        _check(self.load_workers >= 1, f"{ENV_LOAD_WORKERS} must be >= 1")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Env:
        """Read the variables above; unset ones keep their defaults, malformed ones raise."""
        env = os.environ if environ is None else environ
        level = env.get(ENV_AUTOTUNE_LEVEL, env.get(ENV_AUTOTUNE_LEVEL_ALIAS))
        workers = env.get(ENV_LOAD_WORKERS)
        return cls(
            triton_autotune_level=_int_var(ENV_AUTOTUNE_LEVEL, level, cls.triton_autotune_level),
            load_workers=_int_var(ENV_LOAD_WORKERS, workers, cls.load_workers),
            tuned_config_dir=env.get(ENV_TUNED_CONFIG_DIR) or None,
        )


def _int_var(name: str, raw: str | None, default: int) -> int:
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None
