"""The `flashinfer` MLA backend: FlashInfer's paged MLA kernel (BatchMLAPagedAttentionWrapper).

Absorbed form, like the Triton backend: queries are projected into the latent space with W_UK,
FlashInfer attends over the paged cache, whose pages it reads as two strided views of our
[num_pages, page_size, 576] rows (`ckv` = the 512 latent columns, `kpe` = the 64 rope columns),
and the attended latents are mapped to values with W_UV.

FlashInfer plans on the host from the batch layout: `plan` once per step (the first layer's call
plans, the others reuse it). Under CUDA graphs, each captured batch size gets a wrapper whose
index buffers are static; `prepare_graph_replay` re-plans it outside the graph before every
replay, after the graph runner has filled the static metadata.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from glm47.worker.attention.base import (
    AttentionMetadata,
    MLAWeights,
    absorb_query,
    register_backend,
    values_from_latents,
)

REQUIRED_MODULES = ("flashinfer",)
INSTALL_HINT = (
    "the flashinfer attention backend needs FlashInfer with MLA support: "
    "`pip install flashinfer-python` (module flashinfer, class flashinfer.mla."
    "BatchMLAPagedAttentionWrapper)"
)
WORKSPACE_BYTES = 128 * 1024 * 1024  # FlashInfer's recommended split-k workspace


def load_flashinfer_mla() -> Any:
    """`flashinfer.mla`; a missing package raises ValueError with the fix."""
    try:
        module = importlib.import_module("flashinfer.mla")
    except ImportError as err:
        raise ValueError(f"{INSTALL_HINT} ({err})") from None
    if not hasattr(module, "BatchMLAPagedAttentionWrapper"):
        raise ValueError(f"{INSTALL_HINT} (this flashinfer has no BatchMLAPagedAttentionWrapper)")
    return module


@dataclass(frozen=True)
class PlanShape:
    """What `plan` needs besides the batch layout; fixed for a model."""

    num_heads: int
    rank: int  # kv_lora_rank: width of the cached latent (head_dim_ckv)
    rope: int  # qk_rope_head_dim (head_dim_kpe)
    scale: float
    dtype: torch.dtype


def page_indices(meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
    """kv_indptr [B + 1] int32 and kv_indices [sum pages] int32 of the sequences' pages in use."""
    pages = (meta.seq_lens.long() + meta.page_size - 1) // meta.page_size  # [B]
    indptr = torch.zeros(pages.shape[0] + 1, dtype=torch.int32, device=pages.device)
    torch.cumsum(pages, dim=0, out=indptr[1:])
    cols = torch.arange(meta.page_table.shape[1], device=pages.device)  # [max_pages]
    used = cols[None, :] < pages[:, None]  # [B, max_pages]
    return indptr, meta.page_table[used].int()


class FlashInferMLABackend:
    """Registered as "flashinfer"; decode and extend steps on a CUDA device."""

    name = "flashinfer"
    supports_cuda_graph = True

    def __init__(self) -> None:
        self._mla = load_flashinfer_mla()
        self._workspace: torch.Tensor | None = None
        self._shape: PlanShape | None = None
        self._eager: Any = None
        # captured batch size -> (its wrapper, the graph's static metadata)
        self._graph_wrappers: dict[int, tuple[Any, AttentionMetadata]] = {}
        self._planned: tuple[AttentionMetadata, Any] | None = None
        self._graph_indices: torch.Tensor | None = None

    def forward(
        self,
        q_nope: torch.Tensor,  # [T, H, qk_nope_head_dim]
        q_rope: torch.Tensor,  # [T, H, qk_rope_head_dim], rope applied
        kv_cache: torch.Tensor,  # [num_slots, kv_lora_rank + qk_rope_head_dim]
        weights: MLAWeights,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:  # [T, H, v_head_dim]
        dtype = kv_cache.dtype
        rank = weights.w_uk.shape[2]
        if self._shape is None:
            self._shape = PlanShape(q_nope.shape[1], rank, q_rope.shape[-1], scale, dtype)
        wrapper = self._wrapper_for(meta)
        # FlashInfer reads the queries and writes the output through their token and head strides,
        # so neither is copied: the absorbed product stays in its head-major layout, the roped part
        # a view of q, and the output is head-major for W_UV's batched matmul.
        q_lat = absorb_query(q_nope, weights)  # [T, H, rank]
        q_lat, q_pe = q_lat.to(dtype), q_rope.to(dtype)
        if q_pe.stride(-1) != 1:
            q_pe = q_pe.contiguous()
        heads, tokens = q_lat.shape[1], q_lat.shape[0]
        out = torch.empty((heads, tokens, rank), dtype=dtype, device=q_lat.device).transpose(0, 1)
        pages = kv_cache.view(-1, meta.page_size, kv_cache.shape[-1])  # [P, page_size, 576]
        att = wrapper.run(q_lat, q_pe, pages[:, :, :rank], pages[:, :, rank:], out=out)
        return values_from_latents(att, weights, q_nope.dtype)  # [T, H, v_head_dim]

    def prepare_graph_replay(self, meta: AttentionMetadata) -> None:
        """Plan the wrapper of this captured batch size on the static metadata (outside the graph).

        Before the first capture the plan shape is not known yet: the graph runner's warm-up runs
        go through `forward`, which plans then."""
        wrapper = self._graph_wrapper(meta)
        self._planned = None
        if self._shape is not None:
            self._plan(wrapper, meta)
            self._planned = (meta, wrapper)

    def _wrapper_for(self, meta: AttentionMetadata) -> Any:
        """The wrapper planned for `meta`: its captured batch size's when `meta` is that graph's
        static metadata, else the eager one; planned at the first layer of a step."""
        if self._planned is not None and self._planned[0] is meta:
            return self._planned[1]
        graph = self._graph_wrappers.get(meta.num_seqs)
        if graph is not None and graph[1] is meta:
            wrapper = graph[0]
        else:
            if self._eager is None:
                self._eager = self._mla.BatchMLAPagedAttentionWrapper(self._buffer(meta))
            wrapper = self._eager
        self._plan(wrapper, meta)
        self._planned = (meta, wrapper)
        return wrapper

    def _graph_wrapper(self, meta: AttentionMetadata) -> Any:
        """The wrapper of a captured batch size, its index buffers static (sized for `meta`)."""
        batch = meta.num_seqs
        if batch not in self._graph_wrappers:
            device = meta.seq_lens.device
            wrapper = self._mla.BatchMLAPagedAttentionWrapper(
                self._buffer(meta),
                use_cuda_graph=True,
                qo_indptr=torch.zeros(batch + 1, dtype=torch.int32, device=device),
                kv_indptr=torch.zeros(batch + 1, dtype=torch.int32, device=device),
                kv_indices=self._shared_indices(meta.page_table.numel(), device),
                kv_len_arr=torch.zeros(batch, dtype=torch.int32, device=device),
            )
            self._graph_wrappers[batch] = (wrapper, meta)
        return self._graph_wrappers[batch][0]

    def _shared_indices(self, numel: int, device: torch.device) -> torch.Tensor:
        """One kv_indices buffer for all graph wrappers (one replays at a time); the graph runner
        captures the largest batch first, so the first allocation is the largest."""
        if self._graph_indices is None or self._graph_indices.numel() < numel:
            self._graph_indices = torch.zeros(numel, dtype=torch.int32, device=device)
        return self._graph_indices

    def _plan(self, wrapper: Any, meta: AttentionMetadata) -> None:
        shape = self._shape
        assert shape is not None
        indptr, indices = page_indices(meta)
        wrapper.plan(
            meta.query_start_loc.int(), indptr, indices, meta.seq_lens.int(),
            shape.num_heads, shape.rank, shape.rope, meta.page_size, not meta.is_decode,
            shape.scale, shape.dtype, shape.dtype,
        )  # fmt: skip

    def _buffer(self, meta: AttentionMetadata) -> torch.Tensor:
        if self._workspace is None:
            device = meta.seq_lens.device
            self._workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        return self._workspace


register_backend("flashinfer", FlashInferMLABackend)


def probe(
    num_heads: int,
    rank: int,
    rope: int,
    dtype: torch.dtype,
    device: torch.device,
    page_size: int = 16,
) -> None:
    """One decode of one cached token through FlashInfer at the model's widths and page size, its
    queries and output laid out as `forward` hands them over (head-major, strided): compiles (or
    loads) the kernel and shows that it runs here. Attention over a single key returns that key's
    latent, which is checked. Raises ValueError when FlashInfer is missing, RuntimeError when it
    fails."""
    mla = load_flashinfer_mla()
    ints = partial(torch.tensor, dtype=torch.int32, device=device)
    pages = torch.randn((1, page_size, rank + rope), dtype=dtype, device=device)
    q = torch.randn((num_heads, 1, rank + rope), dtype=dtype, device=device).transpose(0, 1)
    out = torch.empty((num_heads, 1, rank), dtype=dtype, device=device).transpose(0, 1)
    try:
        workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        wrapper = mla.BatchMLAPagedAttentionWrapper(workspace)
        wrapper.plan(ints([0, 1]), ints([0, 1]), ints([0]), ints([1]), num_heads, rank, rope,
                     page_size, False, 1.0, dtype, dtype)  # fmt: skip
        out = wrapper.run(
            q[..., :rank], q[..., rank:], pages[..., :rank], pages[..., rank:], out=out
        )
        expected = pages[0, 0, :rank].expand(1, num_heads, rank)
        ok = bool(torch.allclose(out.float(), expected.float(), atol=1e-2, rtol=1e-2))
    except Exception as err:  # a JIT build or launch failure: report it as one error
        raise RuntimeError(f"FlashInfer's MLA decode does not run here: {err}") from err
    if not ok:
        raise RuntimeError("FlashInfer's MLA decode gave a wrong result on a one-token check")
