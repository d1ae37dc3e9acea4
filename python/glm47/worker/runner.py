"""The model runner: turns a `ScheduledBatch` into tensors, runs the model over the paged KV cache,
and samples the sequences that ask for it.

The KV cache is one tensor [num_cache_layers, num_pages * page_size, kv_lora_rank + rope_dim]
(num_cache_layers = num_hidden_layers, + 1 with the MTP layer). Page 0 is the padding page.
Step inputs are staged into device buffers that persist across steps (`StaticBuffers`), the shape
CUDA-graph capture of decode steps builds on.
"""

from __future__ import annotations

import importlib
import logging
import math
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch

import glm47.worker.attention.torch_backend  # noqa: F401  (registers "torch")
from glm47.kernels.pdl import set_pdl
from glm47.worker.attention.base import (
    AttentionBackend,
    AttentionMetadata,
    DispatchingBackend,
    SplitAttention,
    create_backend,
    with_token_rows,
)
from glm47.worker.attention.select import flashinfer_probe, resolve_backends
from glm47.worker.batch import (
    DraftInput,
    RunnerOutput,
    ScheduledBatch,
    ScheduledSeq,
    TokenFeed,
)
from glm47.worker.cuda_graph import (
    Capturer,
    CudaGraphCapturer,
    DecodeGraphRunner,
    capture_sizes,
    supports_cuda_graph,
    supports_multi_token_graphs,
)
from glm47.worker.drafter import MtpDrafter
from glm47.worker.kernel_options import KernelOptions
from glm47.worker.model.config import ModelConfig
from glm47.worker.model.context import ForwardContext
from glm47.worker.model.layers.experts import ExpertsBackend, registered_experts_backends
from glm47.worker.model.layers.moe import MoE
from glm47.worker.model.loader import load_model
from glm47.worker.model.parallel import SINGLE, TensorParallel
from glm47.worker.segment_graph import SegmentGraphRunner, segment_sizes
from glm47.worker.step_inputs import SHORT_QUERY, StepInputBuilder, StepInputs, feed_input_ids
from glm47.worker.step_results import LaunchedStep, Sampler, score_prompts

if TYPE_CHECKING:
    from glm47.worker.tp_worker import StepMirror

log = logging.getLogger(__name__)


# Modules whose import registers optional backends; one that fails to import (no Triton) just
# leaves its names unregistered.
OPTIONAL_BACKEND_MODULES = (
    "glm47.worker.attention.triton_backend",
    "glm47.worker.moe_triton",
)


def import_optional_backends() -> None:
    for module in OPTIONAL_BACKEND_MODULES:
        try:
            importlib.import_module(module)
        except ImportError as err:
            log.info("backend module %s not available: %s", module, err)


def resolve_experts_backend(name: str, device: torch.device) -> str:
    """`auto` → "triton" on a GPU when it is registered, else "torch"."""
    if name != "auto":
        return name
    if device.type == "cuda" and "triton" in registered_experts_backends():
        return "triton"
    return "torch"


class ModelRunner:
    def __init__(
        self,
        model_config: ModelConfig,
        model_dir: str | Path | None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        page_size: int = 16,
        num_pages: int | None = None,
        kv_tokens: int | None = None,
        mem_fraction: float = 0.9,
        prefill_backend: str = "auto",
        decode_backend: str = "auto",
        moe_backend: str = "auto",
        load_format: str = "safetensors",
        seed: int = 0,
        graph_max_batch_size: int = 512,
        graph_batch_sizes: list[int] | None = None,
        disable_cuda_graph: bool = False,
        max_req_total_len: int | None = None,
        fused_kernels: bool | None = None,
        skinny_gemm: bool | None = None,
        pdl: bool | None = None,
        shared_overlap_tokens: int | None = None,
        shared_fold_tokens: int | None = None,
        mla_head_groups: int | None = None,
        warmup_tokens: int = 0,
        segment_graph_max_tokens: int = 0,
        segment_capturer: Capturer | None = None,
        verify_tokens: int = 0,
        tp: TensorParallel = SINGLE,
    ) -> None:
        """`fused_kernels`, `skinny_gemm`, `pdl`, `shared_overlap_tokens`, `shared_fold_tokens` and
        `mla_head_groups`: the model's kernel paths (`KernelOptions`).
        `warmup_tokens`: on a GPU, run prefill steps of up to this many tokens before returning,
        so that the kernels' first-call compilation is not paid by the first requests.
        `segment_graph_max_tokens`: capture the steps that decode graphs do not serve, up to this
        many tokens, as graphs between the attention calls (segment_graph.py; 0: eager);
        `segment_capturer` replaces CUDA graph capture (tests on the CPU).
        `verify_tokens`: with speculative decoding, the tokens a sequence verifies per step (1 +
        drafts); decode graphs are also captured for steps where every sequence has that many,
        up to `graph_max_batch_size // verify_tokens` sequences.
        `tp`: this rank's place under tensor parallelism (model/parallel.py). Every rank builds
        its runner with the same arguments, in step (the graph captures and the warm-up run the
        same collectives); then rank 0 sets `mirror`, and every forward pass it runs is announced
        to the other ranks, which run it too (worker/tp_worker.py)."""
        if page_size < 1 or page_size & (page_size - 1):
            raise ValueError(f"page_size must be a power of two, got {page_size}")
        self.cfg = model_config
        self.device = torch.device(device)
        self.dtype = dtype
        self.page_size = page_size
        self.tp = tp
        if tp.staged and not (disable_cuda_graph and segment_graph_max_tokens == 0):
            raise ValueError("collectives staged through host memory cannot be graphed")
        # Rank 0 under tensor parallelism: what announces each forward pass to the other ranks.
        self.mirror: StepMirror | None = None
        import_optional_backends()
        probe = flashinfer_probe(
            tp.part(model_config.num_attention_heads, "num_attention_heads"),
            model_config.kv_lora_rank,
            model_config.qk_rope_head_dim,
            dtype,
            self.device,
            page_size,
        )
        prefill, decode = resolve_backends(prefill_backend, decode_backend, self.device, probe)
        self.prefill_backend: AttentionBackend = create_backend(prefill)
        self.decode_backend: AttentionBackend = create_backend(decode)
        moe = resolve_experts_backend(moe_backend, self.device)
        self.model = load_model(
            model_config,
            model_dir,
            device=self.device,
            dtype=dtype,
            load_format=load_format,
            experts_backend=moe,
            seed=seed,
            tp=tp,
        )
        self.kernels = KernelOptions(
            fused_kernels, skinny_gemm, pdl, shared_overlap_tokens, shared_fold_tokens,
            mla_head_groups,
        ).apply(self.model, self.device)  # fmt: skip
        self.pdl = bool(self.kernels.pdl)
        self.num_pages = self._pool_pages(num_pages, kv_tokens, mem_fraction)
        self.kv_cache = torch.zeros(
            self.model.num_cache_layers,
            self.num_pages * page_size,
            model_config.kv_cache_dim,
            dtype=dtype,
            device=self.device,
        )  # [num_cache_layers, num_slots, kv_lora_rank + rope_dim]
        self.inputs = StepInputBuilder(page_size, self.device)
        self.drafter = (
            None
            if self.model.mtp is None
            else MtpDrafter(
                self.model.mtp,
                StepInputBuilder(page_size, self.device),
                partial(self._context, draft=True),
            )
        )
        self._last_hidden: torch.Tensor | None = None  # final hidden states of the last run()
        log.info(
            "runner: device=%s dtype=%s attention prefill=%s decode=%s experts=%s %s "
            "mtp=%s kv pages=%d x %d tokens (%.2f GiB)",
            self.device,
            dtype,
            prefill,
            decode,
            moe,
            self.kernels.describe(),
            self.model.mtp is not None,
            self.num_pages,
            page_size,
            self.kv_cache.numel() * self.kv_cache.element_size() / 2**30,
        )
        self.graphs: DecodeGraphRunner | None = None
        # With a dispatching decode backend (`triton+flashinfer`): the graphs of its large part,
        # for the steps it sends there (`self.graphs` then holds its small part's).
        self.large_graphs: DecodeGraphRunner | None = None
        # the rule that sends a step to `large_graphs`: that of the backend they were captured for
        self._prefers_large: Callable[[AttentionMetadata], bool] | None = None
        self.verify_graphs: DecodeGraphRunner | None = None
        self._graph_capturer: Capturer | None = None
        if not disable_cuda_graph:
            max_len = max_req_total_len or model_config.max_position_embeddings
            self.capture_decode_graphs(
                capture_sizes(graph_max_batch_size, graph_batch_sizes),
                -(-max_len // page_size),
                verify_tokens,
            )
        self.segments = self._capture_segments(segment_graph_max_tokens, segment_capturer)
        if warmup_tokens > 0 and self.device.type == "cuda":
            self.warmup(warmup_tokens)

    def _capture_segments(
        self, max_tokens: int, capturer: Capturer | None
    ) -> SegmentGraphRunner | None:
        """Segment graphs up to `max_tokens` tokens (0: none), on a CUDA device or with
        `capturer` (tests), when the experts backend is capturable."""
        experts = self._experts_backend()
        if max_tokens <= 0 or (self.device.type != "cuda" and capturer is None):
            return None
        if experts is not None and not supports_cuda_graph(experts):
            log.warning("segment graphs off: experts backend %s cannot be captured", experts.name)
            return None
        capturer = capturer or CudaGraphCapturer(self.device)
        segments = SegmentGraphRunner(
            self.model, segment_sizes(max_tokens), self.device, capturer, self.kv_cache
        )
        segments.capture()
        return segments

    @property
    def bytes_per_page(self) -> int:
        per_token = self.model.num_cache_layers * self.cfg.kv_cache_dim
        return per_token * self.page_size * torch.empty((), dtype=self.dtype).element_size()

    def _pool_pages(self, num_pages: int | None, kv_tokens: int | None, mem_fraction: float) -> int:
        """Pages in the pool, page 0 (padding) included."""
        if num_pages is None and kv_tokens is not None:
            num_pages = math.ceil(kv_tokens / self.page_size) + 1
        if num_pages is None:
            if self.device.type != "cuda":
                raise ValueError("on the CPU give num_pages or kv_tokens")
            torch.cuda.empty_cache()
            free, total = torch.cuda.mem_get_info(self.device)
            budget = free - (1.0 - mem_fraction) * total
            num_pages = int(budget // self.bytes_per_page)
            log.info("free GPU memory %.2f GiB of %.2f GiB", free / 2**30, total / 2**30)
        num_pages = self.tp.min_over_ranks(num_pages)  # every rank holds the same pool
        if num_pages < 2:
            raise ValueError(f"the KV pool needs at least 2 pages, got {num_pages}")
        return num_pages

    def _experts_backend(self) -> ExpertsBackend | None:
        """The routed-experts backend the MoE layers share (None without MoE layers)."""
        return next((m.experts for m in self.model.modules() if isinstance(m, MoE)), None)

    def capture_decode_graphs(
        self, sizes: list[int], max_pages: int, verify_tokens: int = 0
    ) -> None:
        """Decode graphs of `sizes` sequences (with a dispatching decode backend, one set for
        each of its backends, the large one's from its `min_seqs` up), and verification graphs
        of `verify_tokens` tokens a sequence (1 + drafts) when that is a short query. On a CUDA
        device, or anywhere with `_graph_capturer` set (tests)."""
        backend = self.decode_backend
        if isinstance(backend, DispatchingBackend):
            self.graphs = self._capture_graphs(sizes, max_pages, backend=backend.small)
            large_sizes = [s for s in sizes if s >= backend.min_seqs]
            if self.graphs is not None and large_sizes:
                self.large_graphs = self._capture_graphs(
                    large_sizes, max_pages, backend=backend.large
                )
                self._prefers_large = backend.prefers_large
        else:
            self.graphs = self._capture_graphs(sizes, max_pages)
        verify_batch = max(sizes) // max(1, verify_tokens)
        if (
            1 < verify_tokens <= SHORT_QUERY  # longer ones are not short-query steps
            and verify_batch >= 1
            and self.graphs is not None
            and supports_multi_token_graphs(backend)
        ):
            self.verify_graphs = self._capture_graphs(
                capture_sizes(verify_batch), max_pages, tokens_per_seq=verify_tokens
            )

    @torch.inference_mode()
    def _capture_graphs(
        self,
        sizes: list[int],
        max_pages: int,
        tokens_per_seq: int = 1,
        backend: AttentionBackend | None = None,
    ) -> DecodeGraphRunner | None:
        """Graphs of the decode forward through `backend` (default: the decode backend) when it
        and the experts backend are capturable."""
        on_gpu = self.device.type == "cuda"
        if not on_gpu and self._graph_capturer is None:
            return None
        backend = self.decode_backend if backend is None else backend
        parts = [backend, self._experts_backend()]
        blockers = [p.name for p in parts if p is not None and not supports_cuda_graph(p)]
        if blockers:
            log.warning("decode CUDA graphs off: backend(s) %s cannot be captured", blockers)
            return None
        free_before = torch.cuda.mem_get_info(self.device)[0] if on_gpu else 0
        if self._graph_capturer is None:  # one memory pool for every graph set
            self._graph_capturer = CudaGraphCapturer(self.device)
        graphs = DecodeGraphRunner(
            partial(self._forward_with, backend),
            backend,
            sizes=sizes,
            max_pages=min(max_pages, self.num_pages),
            page_size=self.page_size,
            device=self.device,
            capturer=self._graph_capturer,
            tokens_per_seq=tokens_per_seq,
            # the other tensor-parallel ranks sample nothing: no logits in their graphs
            logits=self.model.compute_logits if self.tp.rank == 0 else None,
        )
        graphs.capture()
        used = free_before - torch.cuda.mem_get_info(self.device)[0] if on_gpu else 0
        log.info(
            "decode CUDA graphs (%s attention, %d tokens a sequence) for batch sizes %s use "
            "%.2f GiB",
            backend.name,
            tokens_per_seq,
            sizes,
            used / 2**30,
        )
        return graphs

    @torch.inference_mode()
    def warmup(self, max_tokens: int) -> None:
        """Prefill and extend steps of several sizes up to `max_tokens` (the largest step the
        scheduler builds), eagerly: compiles the prefill-side kernels and their size-dependent
        configs, and shows at start-up that the largest step fits in memory. Uses the pool's
        first pages, which hold nothing yet."""
        start = time.perf_counter()
        budget = min(max_tokens, (self.num_pages - 1) * self.page_size)
        sizes = sorted({n for n in (budget, 2048, 512, 64, 7) if n <= budget})
        vocab = self.cfg.vocab_size
        for n in sizes:
            ids = [(i * 7919 + 13) % vocab for i in range(n)]
            self.run_logits(ScheduledBatch([ScheduledSeq("warmup", ids, 0, self._pages(n), True)]))
        a_pages = self._pages(self.page_size + 20)
        b_pages = self._pages(4, first=len(a_pages) + 1)
        if b_pages[-1] < self.num_pages and budget >= 23:  # an extend over cached prefixes
            a = ScheduledSeq("warmup-a", [5] * 20, self.page_size, a_pages, True)
            b = ScheduledSeq("warmup-b", [6] * 3, 1, b_pages, True)
            self.run_logits(ScheduledBatch([a, b]))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        log.info(
            "warm-up: prefill steps of %s tokens in %.1f s", sizes, time.perf_counter() - start
        )

    def _pages(self, tokens: int, first: int = 1) -> list[int]:
        """Consecutive pool pages from `first` (page 0 is padding) holding `tokens` tokens."""
        return list(range(first, first + -(-tokens // self.page_size)))

    def _forward_with(
        self, backend: AttentionBackend, input_ids: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        ctx = ForwardContext(meta=meta, kv_cache=self.kv_cache, backend=backend)
        return self.model(input_ids, meta.positions, ctx)

    def _context(self, meta: AttentionMetadata, draft: bool = False) -> ForwardContext:
        """The forward context of an eager or segment-graphed step: plain decode through the
        decode backend, anything else through the split of the two. With `draft` (the MTP
        layer's passes, one layer each), a dispatching decode backend's small part stands in for
        it: its rule was measured on whole-model steps, and its large part plans per step."""
        decode = self.decode_backend
        if draft and isinstance(decode, DispatchingBackend):
            decode = decode.small
        backend = decode if meta.is_decode else SplitAttention(decode, self.prefill_backend)
        return ForwardContext(meta=with_token_rows(meta), kv_cache=self.kv_cache, backend=backend)

    def prepare(self, batch: ScheduledBatch) -> StepInputs:
        """Host-side layout of the batch, staged into the static device buffers."""
        inputs = self.inputs.build(batch)
        inputs.batch = batch
        return inputs

    @torch.inference_mode()
    def forward(self, inputs: StepInputs) -> torch.Tensor:  # [T, H] final hidden states
        return self._forward(inputs)[0]

    def _forward(self, inputs: StepInputs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The final hidden states [T, H], and the logits of every row [T, V] fp32 when a
        decode graph computed them."""
        if self.mirror is not None:
            self.mirror.announce(inputs)
        set_pdl(self.pdl)  # the launch switch is process-wide; tests hold several runners
        decode = self.graphs
        if decode is not None and self.large_graphs is not None:
            assert self._prefers_large is not None  # set with large_graphs
            if self._prefers_large(inputs.meta):
                decode = self.large_graphs
        for graphs in (decode, self.verify_graphs):
            if graphs is not None and graphs.can_run(inputs.input_ids, inputs.meta):
                hidden = graphs.run(inputs.input_ids, inputs.meta)
                return hidden, graphs.last_logits
        ctx = self._context(inputs.meta)
        if self.segments is not None and self.segments.can_run(inputs.input_ids.shape[0]):
            return self.segments.run(inputs.input_ids, ctx), None
        return self.model(inputs.input_ids, inputs.meta.positions, ctx), None

    @torch.inference_mode()
    def follow(self, inputs: StepInputs) -> None:
        """A tensor-parallel follower's pass (worker/tp_worker.py): `forward`, its hidden states
        kept for the drafter as `launch` keeps rank 0's."""
        hidden = self.forward(inputs)
        if self.model.mtp is not None:
            self._last_hidden = hidden

    @torch.inference_mode()
    def forward_sampled(self, inputs: StepInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """The final hidden states [T, H] and the logits of the sampled rows [N, V] fp32: a
        decode graph's own when every row is sampled, else lm_head on the gathered rows."""
        hidden, logits = self._forward(inputs)
        if logits is None or not inputs.every_row_sampled:
            logits = self.model.compute_logits(hidden[inputs.sample_rows])
        return hidden, logits

    @torch.inference_mode()
    def run_logits(self, batch: ScheduledBatch) -> torch.Tensor:  # [N, V] fp32
        """Logits of the sequences with sample=True, in batch order (a tensor of their own: a
        decode graph's are overwritten by its next replay)."""
        return self.forward_sampled(self.prepare(batch))[1].clone()

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch, sampler: Sampler) -> RunnerOutput:
        """One forward pass; a sample for every sampled row (see `ScheduledSeq.num_samples`)."""
        return self.launch(batch, sampler).collect()

    @torch.inference_mode()
    def launch(
        self,
        batch: ScheduledBatch,
        sampler: Sampler,
        feed: TokenFeed | None = None,
        defer_sampling: bool = False,
    ) -> LaunchedStep:
        """`run` up to the samples, which stay on the device (their host copy queued): the host
        may queue the next step before it reads them. With `feed`, the step's input tokens are
        taken on the device from an earlier step's samples (the batch holds placeholders). With
        `defer_sampling`, only the forward pass and the logits are queued; the returned step's
        `sample` queues the sampling, with the sequences' settings as they are then."""
        inputs = self.prepare(batch)
        if feed is not None:
            feed_input_ids(batch, inputs.input_ids, feed)
        if inputs.sample_seqs:
            hidden, logits = self.forward_sampled(inputs)  # [T, H], [N, V] fp32
        else:
            hidden = self.forward(inputs)
        if self.model.mtp is not None:
            self._last_hidden = hidden  # the drafter's input, read before the next forward
        scores = score_prompts(self.model.compute_logits, batch, hidden)
        if not inputs.sample_seqs:
            return LaunchedStep(None, scores)
        # Fed rows' penalties read their last output token, which is their input token here.
        last = inputs.input_ids[inputs.sample_rows] if feed is not None else None
        if defer_sampling:
            seqs = inputs.sample_seqs
            return LaunchedStep(None, scores, lambda: sampler.sample_deferred(logits, seqs, last))
        return LaunchedStep(sampler.sample_deferred(logits, inputs.sample_seqs, last), scores)

    @property
    def can_draft(self) -> bool:
        """True when the model has its MTP layer (speculative decoding is possible)."""
        return self.drafter is not None

    def propose_drafts(self, items: list[DraftInput]) -> dict[str, list[int]]:
        """The MTP layer's drafts after the last step (`MtpDrafter.propose` over its hidden
        states)."""
        assert self.drafter is not None and self._last_hidden is not None, "drafts follow run()"
        if self.mirror is not None:
            self.mirror.announce_drafts(items)
        return self.drafter.propose(items, self._last_hidden)
