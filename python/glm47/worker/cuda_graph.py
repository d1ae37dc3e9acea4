"""Decode CUDA graphs: the model's decode forward captured once per batch size, replayed per step.

A decode step of B sequences runs the graph of the smallest captured size G >= B. All graphs read
one set of static buffers (`DecodeGraphInputs`, sized for the largest graph; graph G uses their
leading G sequences). Before a replay the step's inputs are copied into sequences [0, B) and
sequences [B, G) become padding: token 0 at position 0, seq_len 1, its only page page 0 (the
reserved padding page) and its slot 0 of page 0, so padded rows attend to one padding row and write
only there.

Verification steps of speculative decoding have the same shape with Q = 1 + drafts tokens per
sequence (`tokens_per_seq`): a graph set of its own, whose padded sequences hold Q tokens at
positions 0..Q-1, all in page 0, each attending to what the same step wrote.

The attention backend's side of the contract (docs/style.md point 7):
- `supports_cuda_graph` (bool attribute): its decode `forward` reads the metadata only from the
  tensors it is given (no host reads, no shapes that depend on their values), so a graph captured
  on the static buffers stays right when the buffers change in place;
- optionally `prepare_graph_replay(meta)`: called outside the graph, before capture and before
  every replay, with the static metadata of the graph about to run (FlashInfer plans there).
The experts backend must be capturable too (`supports_cuda_graph`, same rule). Verification graphs
also need `supports_multi_token_cuda_graph` on the decode backend.

Decode graphs of at most `LOGITS_MAX_BATCH` sequences also compute the logits of every row
(`logits`, given to the runner: lm_head and the fp32 cast, as in eager mode): a step whose
sampled rows are all its rows in order takes them from the replay (`last_logits`) rather than
gathering the rows and launching lm_head after it. Larger graphs, verification graphs and other
steps leave the logits to the caller.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Sequence

import torch

from glm47.worker.attention.base import AttentionMetadata, with_token_rows

log = logging.getLogger(__name__)

# Backends written before the `supports_cuda_graph` attribute existed, known to be capturable.
GRAPH_SAFE_BY_NAME = frozenset({"triton"})
WARMUP_RUNS = 2  # eager runs before a capture: compile kernels, settle allocator and plans
# Decode graphs up to this batch compute the logits as well: each holds a [G, V] fp32 output,
# 54 MB for the default sizes up to 32 with the real vocabulary.
LOGITS_MAX_BATCH = 32

# Forward of the model on decode inputs: (input_ids [G] int64, meta) -> hidden [G, H].
DecodeForward = Callable[[torch.Tensor, AttentionMetadata], torch.Tensor]
# The logits of hidden rows: [G, H] -> [G, V] fp32.
Logits = Callable[[torch.Tensor], torch.Tensor]
# Records `body` and returns (replay, output): `replay()` recomputes `output` in place.
Capturer = Callable[[Callable[[], torch.Tensor]], tuple[Callable[[], None], torch.Tensor]]


def supports_cuda_graph(backend: object) -> bool:
    """A backend's `supports_cuda_graph`, or whether its name is a known capturable one."""
    flag = getattr(backend, "supports_cuda_graph", None)
    if flag is None:
        return getattr(backend, "name", None) in GRAPH_SAFE_BY_NAME
    return bool(flag)


def supports_multi_token_graphs(backend: object) -> bool:
    """Whether a backend's graphs may also hold steps of several tokens per sequence (its
    `supports_multi_token_cuda_graph`, default False): its short-query path must read the
    metadata only from the tensors it is given, like its decode path."""
    return bool(getattr(backend, "supports_multi_token_cuda_graph", False))


def capture_sizes(max_batch: int, sizes: Sequence[int] | None = None) -> list[int]:
    """Sorted batch sizes to capture, none above `max_batch`, `max_batch` always included.

    Default ladder: 1, 2, 4, 8, 16, 24, 32, then every 16 (48, 64, ...)."""
    if max_batch < 1:
        raise ValueError(f"graph_max_batch_size must be >= 1, got {max_batch}")
    if sizes is None:
        ladder = [1, 2, 4, 8, 16, 24, 32, *range(48, max_batch + 1, 16)]
    else:
        ladder = list(sizes)
        bad = [s for s in ladder if s < 1]
        if bad:
            raise ValueError(f"graph batch sizes must be >= 1, got {bad}")
    return sorted({s for s in ladder if s <= max_batch} | {max_batch})


def padded_batch_size(batch: int, sizes: Sequence[int]) -> int | None:
    """The smallest captured size >= batch (sizes sorted), or None when batch is too large."""
    i = bisect.bisect_left(sizes, batch)
    return sizes[i] if i < len(sizes) else None


class DecodeGraphInputs:
    """The static input buffers every graph reads; graph G uses sequences [0, G), that is token
    rows [0, G * tokens_per_seq)."""

    def __init__(
        self,
        max_batch: int,
        max_pages: int,
        page_size: int,
        device: torch.device,
        tokens_per_seq: int = 1,
    ) -> None:
        q = tokens_per_seq
        self.page_size = page_size
        self.max_pages = max_pages
        self.tokens_per_seq = q
        rows = max_batch * q
        self.input_ids = torch.zeros(rows, dtype=torch.int64, device=device)  # [G * Q]
        self.positions = torch.zeros(rows, dtype=torch.int64, device=device)  # [G * Q]
        self.slot_mapping = torch.zeros(rows, dtype=torch.int64, device=device)  # [G * Q]
        self.seq_lens = torch.full((max_batch,), q, dtype=torch.int32, device=device)  # [G]
        # [G, max_pages]: page ids of each sequence; columns past its pages are never read
        self.page_table = torch.zeros(max_batch, max_pages, dtype=torch.int32, device=device)
        # [G + 1]: Q new tokens per sequence
        self.query_start_loc = torch.arange(max_batch + 1, dtype=torch.int32, device=device) * q
        # What padded sequences hold: positions 0..Q-1, written at the same slots of page 0.
        self._pad_positions = torch.arange(q, device=device).repeat(max_batch)  # [G * Q]
        self._pad_slots = self._pad_positions % page_size
        self._pad_pages = -(-q // page_size)  # page-table columns a padded sequence reads

    def meta(self, graph_batch: int) -> AttentionMetadata:
        """Metadata over the leading `graph_batch` sequences (views: in-place fills show through)."""
        g, q = graph_batch, self.tokens_per_seq
        return AttentionMetadata(
            positions=self.positions[: g * q],
            slot_mapping=self.slot_mapping[: g * q],
            query_start_loc=self.query_start_loc[: g + 1],
            seq_lens=self.seq_lens[:g],
            page_table=self.page_table[:g],
            page_size=self.page_size,
            max_query_len=q,
            max_seq_len=self.max_pages * self.page_size,  # an upper bound; decode kernels ignore it
            is_decode=q == 1,
            short_queries=q > 1,
        )

    def fill(self, input_ids: torch.Tensor, meta: AttentionMetadata, graph_batch: int) -> None:
        """Sequences [0, B) from the step, [B, graph_batch) padding (see the module doc)."""
        b, g, q = meta.num_seqs, graph_batch, self.tokens_per_seq
        n = b * q
        width = meta.page_table.shape[1]
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(meta.positions)
        self.slot_mapping[:n].copy_(meta.slot_mapping)
        self.seq_lens[:b].copy_(meta.seq_lens)
        self.page_table[:b, :width].copy_(meta.page_table)
        if g > b:
            self.input_ids[n : g * q].zero_()
            self.positions[n : g * q].copy_(self._pad_positions[n : g * q])
            self.slot_mapping[n : g * q].copy_(self._pad_slots[n : g * q])
            self.seq_lens[b:g].fill_(q)
            self.page_table[b:g, : self._pad_pages].zero_()


def eager_capturer(body: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
    """A stand-in for capture that re-runs `body` at every replay: the graph runner's buffer and
    padding logic without CUDA (tests)."""
    out = body().clone()

    def replay() -> None:
        out.copy_(body())

    return replay, out


class CudaGraphCapturer:
    """Captures into CUDA graphs that share one memory pool (capture the largest batch first)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: list[torch.cuda.CUDAGraph] = []

    def __call__(self, body: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(WARMUP_RUNS):
                body()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = body()
        self.graphs.append(graph)
        return graph.replay, out


class DecodeGraphRunner:
    """Captures `forward` at each size of `sizes` and replays the right graph for a decode step."""

    def __init__(
        self,
        forward: DecodeForward,
        backend: object,
        *,
        sizes: Sequence[int],
        max_pages: int,
        page_size: int,
        device: torch.device,
        capturer: Capturer,
        tokens_per_seq: int = 1,
        logits: Logits | None = None,
    ) -> None:
        """With `logits` (decode graphs only), graphs up to `LOGITS_MAX_BATCH` sequences
        compute the logits of their rows too."""
        self.sizes = sorted(sizes)
        self.max_pages = max_pages
        self.tokens_per_seq = tokens_per_seq
        self.inputs = DecodeGraphInputs(
            self.sizes[-1], max_pages, page_size, device, tokens_per_seq
        )
        self._forward = forward
        self._backend = backend
        self._capturer = capturer
        self._logits = logits if tokens_per_seq == 1 else None
        self._graphs: dict[int, tuple[Callable[[], None], torch.Tensor, AttentionMetadata]] = {}
        # Per size, what the body last computed besides the hidden states: after a CUDA capture,
        # the graph's own logits tensor; under the eager stand-in, the latest replay's.
        self._extra: dict[int, dict[str, torch.Tensor]] = {}
        # Per size, the logits tensor every replay writes (a CUDA graph's output, overwritten by
        # its next replay; the eager stand-in's replays are copied into it, to behave the same).
        self._logits_out: dict[int, torch.Tensor] = {}
        # [B, V] fp32: the logits of the rows of the latest `run`, when its graph computed them
        # (a view of the graph's output: valid until its next replay)
        self.last_logits: torch.Tensor | None = None

    def capture(self) -> None:
        """Capture every size, largest first (smaller graphs then reuse the pool's memory)."""
        start = time.perf_counter()
        for size in reversed(self.sizes):
            meta = self.inputs.meta(size)
            ids = self.inputs.input_ids[: size * self.tokens_per_seq]
            self._prepare(meta)
            self._extra[size] = {}
            replay, out = self._capturer(self._body(ids, meta, self._extra[size]))
            self._graphs[size] = (replay, out, meta)
            if "logits" in self._extra[size]:  # the graph's own output tensor
                self._logits_out[size] = self._extra[size]["logits"]
        log.info(
            "captured %d %s graphs (batch %d..%d) in %.1f s",
            len(self.sizes),
            "decode" if self.tokens_per_seq == 1 else f"{self.tokens_per_seq}-token verification",
            self.sizes[0],
            self.sizes[-1],
            time.perf_counter() - start,
        )

    def _body(
        self, ids: torch.Tensor, meta: AttentionMetadata, extra: dict[str, torch.Tensor]
    ) -> Callable[[], torch.Tensor]:
        logits = self._logits if meta.num_seqs <= LOGITS_MAX_BATCH else None

        def body() -> torch.Tensor:
            with_token_rows(meta)  # verification graphs: each token a decode row
            hidden = self._forward(ids, meta)
            if logits is not None:
                extra["logits"] = logits(hidden)
            return hidden

        return body

    def can_run(self, input_ids: torch.Tensor, meta: AttentionMetadata) -> bool:
        """A step of `tokens_per_seq` tokens for every sequence (decode: one) that fits the
        largest graph and the static page table."""
        q = self.tokens_per_seq
        # Every sequence has exactly q tokens: as many rows as q per sequence, none longer.
        shaped = (meta.is_decode or meta.short_queries) and meta.parts is None
        return (
            shaped
            and meta.max_query_len == q
            and input_ids.shape[0] == meta.num_seqs * q
            and bool(self._graphs)
            and meta.num_seqs <= self.sizes[-1]
            and meta.page_table.shape[1] <= self.max_pages
        )

    def run(self, input_ids: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Hidden states [B * Q, H] of the step's rows (a view, valid until the next replay);
        `last_logits` then holds their logits when the graph computes them, else None."""
        batch = meta.num_seqs
        size = padded_batch_size(batch, self.sizes)
        if size is None or not self.can_run(input_ids, meta):
            raise ValueError(f"no captured decode graph fits a batch of {batch}")
        replay, out, graph_meta = self._graphs[size]
        self.inputs.fill(input_ids, meta, size)
        self._prepare(graph_meta)
        replay()
        logits = self._logits_out.get(size)
        if logits is not None and self._extra[size]["logits"] is not logits:
            logits.copy_(self._extra[size]["logits"])  # the eager stand-in's new tensor
        self.last_logits = None if logits is None else logits[:batch]
        return out[: batch * self.tokens_per_seq]

    def _prepare(self, meta: AttentionMetadata) -> None:
        hook = getattr(self._backend, "prepare_graph_replay", None)
        if hook is not None:
            hook(meta)
