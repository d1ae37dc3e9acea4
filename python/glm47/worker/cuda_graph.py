"""Decode CUDA graphs: the model's decode forward captured once per batch size, replayed per step.

A decode step of B sequences runs the graph of the smallest captured size G >= B. All graphs read
one set of static buffers (`DecodeGraphInputs`, sized for the largest graph; graph G uses their
leading G rows). Before a replay the step's inputs are copied into rows [0, B) and rows [B, G)
become padding: token 0 at position 0, seq_len 1, its only page page 0 (the reserved padding page)
and its slot 0 of page 0, so padded rows attend to one padding row and write only there.

The attention backend's side of the contract (docs/style.md point 7):
- `supports_cuda_graph` (bool attribute): its decode `forward` reads the metadata only from the
  tensors it is given (no host reads, no shapes that depend on their values), so a graph captured
  on the static buffers stays right when the buffers change in place;
- optionally `prepare_graph_replay(meta)`: called outside the graph, before capture and before
  every replay, with the static metadata of the graph about to run (FlashInfer plans there).
The experts backend must be capturable too (`supports_cuda_graph`, same rule).

Logits are computed outside the graph from the returned hidden states, exactly as in eager mode.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Sequence

import torch

from glm47.worker.attention.base import AttentionMetadata

log = logging.getLogger(__name__)

# Backends written before the `supports_cuda_graph` attribute existed, known to be capturable.
GRAPH_SAFE_BY_NAME = frozenset({"triton"})
WARMUP_RUNS = 2  # eager runs before a capture: compile kernels, settle allocator and plans

# Forward of the model on decode inputs: (input_ids [G] int64, meta) -> hidden [G, H].
DecodeForward = Callable[[torch.Tensor, AttentionMetadata], torch.Tensor]
# Records `body` and returns (replay, output): `replay()` recomputes `output` in place.
Capturer = Callable[[Callable[[], torch.Tensor]], tuple[Callable[[], None], torch.Tensor]]


def supports_cuda_graph(backend: object) -> bool:
    """A backend's `supports_cuda_graph`, or whether its name is a known capturable one."""
    flag = getattr(backend, "supports_cuda_graph", None)
    if flag is None:
        return getattr(backend, "name", None) in GRAPH_SAFE_BY_NAME
    return bool(flag)


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
    """The static input buffers every graph reads; graph G uses rows [0, G)."""

    def __init__(
        self, max_batch: int, max_pages: int, page_size: int, device: torch.device
    ) -> None:
        self.page_size = page_size
        self.max_pages = max_pages
        self.input_ids = torch.zeros(max_batch, dtype=torch.int64, device=device)  # [G]
        self.positions = torch.zeros(max_batch, dtype=torch.int64, device=device)  # [G]
        self.slot_mapping = torch.zeros(max_batch, dtype=torch.int64, device=device)  # [G]
        self.seq_lens = torch.ones(max_batch, dtype=torch.int32, device=device)  # [G]
        # [G, max_pages]: page ids of each row; columns past a row's pages are never read
        self.page_table = torch.zeros(max_batch, max_pages, dtype=torch.int32, device=device)
        # [G + 1]: one new token per row
        self.query_start_loc = torch.arange(max_batch + 1, dtype=torch.int32, device=device)

    def meta(self, graph_batch: int) -> AttentionMetadata:
        """Metadata over the leading `graph_batch` rows (views: in-place fills show through)."""
        g = graph_batch
        return AttentionMetadata(
            positions=self.positions[:g],
            slot_mapping=self.slot_mapping[:g],
            query_start_loc=self.query_start_loc[: g + 1],
            seq_lens=self.seq_lens[:g],
            page_table=self.page_table[:g],
            page_size=self.page_size,
            max_query_len=1,
            max_seq_len=self.max_pages * self.page_size,  # an upper bound; decode kernels ignore it
            is_decode=True,
        )

    def fill(self, input_ids: torch.Tensor, meta: AttentionMetadata, graph_batch: int) -> None:
        """Rows [0, B) from the step, rows [B, graph_batch) padding (see the module doc)."""
        b, g = input_ids.shape[0], graph_batch
        width = meta.page_table.shape[1]
        self.input_ids[:b].copy_(input_ids)
        self.positions[:b].copy_(meta.positions)
        self.slot_mapping[:b].copy_(meta.slot_mapping)
        self.seq_lens[:b].copy_(meta.seq_lens)
        self.page_table[:b, :width].copy_(meta.page_table)
        if g > b:
            self.input_ids[b:g].zero_()
            self.positions[b:g].zero_()
            self.slot_mapping[b:g].zero_()
            self.seq_lens[b:g].fill_(1)
            self.page_table[b:g, 0].zero_()


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
    ) -> None:
        self.sizes = sorted(sizes)
        self.max_pages = max_pages
        self.inputs = DecodeGraphInputs(self.sizes[-1], max_pages, page_size, device)
        self._forward = forward
        self._backend = backend
        self._capturer = capturer
        self._graphs: dict[int, tuple[Callable[[], None], torch.Tensor, AttentionMetadata]] = {}

    def capture(self) -> None:
        """Capture every size, largest first (smaller graphs then reuse the pool's memory)."""
        start = time.perf_counter()
        for size in reversed(self.sizes):
            meta = self.inputs.meta(size)
            ids = self.inputs.input_ids[:size]
            self._prepare(meta)
            replay, out = self._capturer(self._body(ids, meta))
            self._graphs[size] = (replay, out, meta)
        log.info(
            "captured %d decode graphs (batch %d..%d) in %.1f s",
            len(self.sizes),
            self.sizes[0],
            self.sizes[-1],
            time.perf_counter() - start,
        )

    def _body(self, ids: torch.Tensor, meta: AttentionMetadata) -> Callable[[], torch.Tensor]:
        def body() -> torch.Tensor:
            return self._forward(ids, meta)

        return body

    def can_run(self, input_ids: torch.Tensor, meta: AttentionMetadata) -> bool:
        """A decode step that fits the largest graph and the static page table."""
        return (
            meta.is_decode
            and bool(self._graphs)
            and input_ids.shape[0] <= self.sizes[-1]
            and meta.page_table.shape[1] <= self.max_pages
        )

    def run(self, input_ids: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Hidden states [B, H] of the step's B rows (a view, valid until the next replay)."""
        batch = input_ids.shape[0]
        size = padded_batch_size(batch, self.sizes)
        if size is None or not self.can_run(input_ids, meta):
            raise ValueError(f"no captured decode graph fits a batch of {batch}")
        replay, out, graph_meta = self._graphs[size]
        self.inputs.fill(input_ids, meta, size)
        self._prepare(graph_meta)
        replay()
        return out[:batch]

    def _prepare(self, meta: AttentionMetadata) -> None:
        hook = getattr(self._backend, "prepare_graph_replay", None)
        if hook is not None:
            hook(meta)
