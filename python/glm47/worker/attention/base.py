"""The attention backend interface: metadata built once per step and the per-layer call.

MLA keeps one 576-wide latent per token and layer in the cache: [512 normalised latent c | 64 roped
k_rope]. The MLA layer stores the step's new latents there (in its rope launch) before it calls
the backend; every backend receives the projected query and the layer's cache, which already
holds the step's tokens, and returns the attention output per head, before o_proj. Whether it
attends in the absorbed form (queries projected into the latent space with W_UK, a single shared
576-wide key) or the expanded form (k_nope and v rebuilt from cached latents with kv_b_proj) is
the backend's choice; both give the same numbers up to rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from glm47.kernels.skinny_gemm import skinny_gemm, takes_rows


@dataclass
class AttentionMetadata:
    """Per-step batch layout, shared by every layer. Sequences are concatenated along tokens."""

    positions: torch.Tensor  # [T] int64: position of each new token in its sequence
    slot_mapping: torch.Tensor  # [T] int64: cache row of each new token (page * page_size + offset)
    query_start_loc: torch.Tensor  # [B + 1] int32: cumulative count of new tokens per sequence
    seq_lens: torch.Tensor  # [B] int32: tokens in the cache after this step (cached + new)
    page_table: torch.Tensor  # [B, max_pages] int32: page ids of each sequence, padded with 0
    page_size: int  # tokens per page (a power of two, 1 allowed)
    max_query_len: int  # host copy of max(new tokens per sequence)
    max_seq_len: int  # host copy of max(seq_lens)
    is_decode: bool  # every sequence has exactly one new token
    # host copy of sum(seq_lens), the cached tokens the step attends over (a decode backend may
    # choose its kernel by it); 0 where not known (a graph's static metadata)
    total_seq_len: int = 0
    # host copy of the (query, key) pairs the step's causal attention weighs, summed over its
    # sequences (the prefill backends weigh the absorbed against the expanded form by it); 0 where
    # not known (a graph's static metadata)
    attended_pairs: int = 0
    # Every sequence computes a few tokens at most (step_inputs.SHORT_QUERY: decoding, or
    # verifying drafts): the decode backend takes the whole step.
    short_queries: bool = False
    # A step whose leading sequences compute a few tokens each and whose others are longer chunks:
    # (the leading ones, the rest), each with its own metadata over its rows; None otherwise. The
    # decode backend takes the first part and the prefill backend the second (`SplitAttention`).
    parts: tuple[AttentionMetadata, AttentionMetadata] | None = None
    # A short-query step's tokens as decode rows, set once a forward pass (`with_token_rows`):
    # [T] int32 each token's causal length (position + 1), the page table its rows read through
    # and how many consecutive rows share each of its rows (every sequence's token count, when
    # they all have as many; else 1, the table a row per token). None: not computed.
    token_rows: tuple[torch.Tensor, torch.Tensor, int] | None = None

    @property
    def num_seqs(self) -> int:
        return int(self.seq_lens.shape[0])


# Short-query steps of at most this many sequences attend as decode rows. The prefill kernel runs
# one program per sequence over its whole cache (at 20 heads and a few tokens), so with few
# sequences most of the GPU idles while each program walks its cache, where the decode kernel
# splits every row's cache over programs; with many, the prefill kernel fills the GPU and reads
# each sequence's cache once, the decode rows once per token. Measured on an H200 with 2-token
# verification steps (run FC, benchmarks/results/2026-12-05-h200/): decode rows 4.91 / 12.19 /
# 17.96 ms at batch 1 / 8 / 32 and 1K cached tokens (prefill kernel 8.49 / 15.10 / 20.39 in run
# FA), 14.12 against 38.08 ms at batch 8 and 8K tokens, but 54.88 against 52.88 ms at batch 64
# and 8K tokens.
TOKEN_ROWS_MAX_SEQS = 32


def with_token_rows(meta: AttentionMetadata) -> AttentionMetadata:
    """Sets `token_rows` on a short-query step's metadata (and on a split step's short part),
    from its tensors and host fields alone (graph-safe: in a graph it is recomputed at every
    replay); each new token then attends like a decode row whose cache ends at its own position.
    Where every sequence computes as many tokens (a verification graph, a step whose sequences
    all verify as many drafts) the rows read the sequences' own page-table rows, else a gathered
    copy. Steps of more than `TOKEN_ROWS_MAX_SEQS` sequences keep the prefill kernel."""
    short = meta.parts[0] if meta.parts is not None else meta
    if short.is_decode or not short.short_queries or short.num_seqs > TOKEN_ROWS_MAX_SEQS:
        return meta
    t, b, q = short.positions.shape[0], short.num_seqs, short.max_query_len
    lens = (short.positions + 1).to(torch.int32)  # [T]
    if t == b * q:
        short.token_rows = (lens, short.page_table, q)
        return meta
    steps = torch.arange(t, dtype=torch.int32, device=short.positions.device)  # [T]
    seq = torch.searchsorted(short.query_start_loc[1:], steps, right=True)  # [T]
    short.token_rows = (lens, short.page_table.index_select(0, seq), 1)
    return meta


@dataclass(frozen=True)
class MLAWeights:
    """The absorbed views of one layer's kv_b_proj, prepared once at load time."""

    w_uk: torch.Tensor  # [H, qk_nope_head_dim, kv_lora_rank]: k_nope_h = W_UK[h] @ c
    w_uv: torch.Tensor  # [H, v_head_dim, kv_lora_rank]: v_h = W_UV[h] @ c
    # [H, qk_nope_head_dim + v_head_dim, kv_lora_rank]: the whole kv_b_proj, of which w_uk and w_uv
    # are the slices (backends that expand keys and values take both in one matmul); None when
    # only the slices are known
    w_kv: torch.Tensor | None = None
    # the absorbed products of steps of at most MAX_ROWS tokens through kernels/skinny_gemm (on
    # CUDA tensors) instead of the batched-matmul library call
    skinny: bool = False


class AttentionBackend(Protocol):
    """One attention implementation. Stateless per layer; may keep per-step plans."""

    name: str

    def forward(
        self,
        q_nope: torch.Tensor,  # [T, H, qk_nope_head_dim]
        q_rope: torch.Tensor,  # [T, H, qk_rope_head_dim], rope applied
        kv_cache: torch.Tensor,  # [num_slots, kv_lora_rank + qk_rope_head_dim] of this layer
        weights: MLAWeights,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:  # [T, H, v_head_dim]
        """Attend causally over each sequence's tokens in `kv_cache`: the cached ones and the
        step's new ones, which the layer stored at `meta.slot_mapping` before the call."""
        ...


@runtime_checkable
class DispatchingBackend(Protocol):
    """A decode backend that sends each step to one of two backends (`triton+flashinfer`). Under
    CUDA graphs the runner captures a decode graph set with each and replays, per step, the set
    that `prefers_large` names; eager steps go through `forward`, which applies the same rule."""

    name: str
    small: AttentionBackend
    large: AttentionBackend
    min_seqs: int  # steps of fewer sequences never go to `large`

    def prefers_large(self, meta: AttentionMetadata) -> bool: ...


def _takes_skinny(x: torch.Tensor, weights: MLAWeights) -> bool:  # x: [T, H, D]
    return weights.skinny and takes_rows(x, x.shape[0])


def absorb_query(q_nope: torch.Tensor, weights: MLAWeights) -> torch.Tensor:
    """The query in the latent space, `q_lat[t, h] = q_nope[t, h] @ W_UK[h]`: [T, H, rank] in
    W_UK's dtype, token-major (a transposed view of the head-major product)."""
    t, heads, _ = q_nope.shape
    if _takes_skinny(q_nope, weights):
        out = torch.empty((t, heads, weights.w_uk.shape[2]), dtype=weights.w_uk.dtype,
                          device=q_nope.device)  # fmt: skip
        skinny_gemm(q_nope.transpose(0, 1), weights.w_uk.transpose(1, 2), out=out.transpose(0, 1))
        return out
    return torch.bmm(q_nope.transpose(0, 1), weights.w_uk).transpose(0, 1)


def values_from_latents(att: torch.Tensor, weights: MLAWeights, dtype: torch.dtype) -> torch.Tensor:
    """The heads' values from the attended latents, `v[t, h] = W_UV[h] @ att[t, h]`: [T, H, v]
    in `dtype`, contiguous. The batched matmul runs head-major but writes token-major through a
    transposed view of its output, so o_proj reads it as [T, H * v] without a copy."""
    w_uv = weights.w_uv
    t, heads, _ = att.shape  # [T, H, kv_lora_rank]
    out = torch.empty((t, heads, w_uv.shape[1]), dtype=w_uv.dtype, device=att.device)
    if _takes_skinny(att, weights):
        skinny_gemm(att.transpose(0, 1), w_uv, out=out.transpose(0, 1))
    else:
        torch.bmm(att.to(w_uv.dtype).transpose(0, 1), w_uv.transpose(1, 2), out=out.transpose(0, 1))
    return out.to(dtype)


class SplitAttention:
    """The attention of a step with prompt chunks: the leading sequences that compute a few
    tokens each (decoding, or verifying drafts) through the decode backend, the longer chunks
    through the prefill backend. An expanded-form prefill backend would otherwise rebuild keys and
    values for every cached token of every decoding sequence; the decode backend reads the paged
    cache in place (its decode kernel also splits long contexts over the multiprocessors)."""

    name = "split"

    def __init__(self, decode: AttentionBackend, prefill: AttentionBackend) -> None:
        self.decode = decode
        self.prefill = prefill

    def forward(
        self,
        q_nope: torch.Tensor,  # [T, H, qk_nope_head_dim]
        q_rope: torch.Tensor,  # [T, H, qk_rope_head_dim], rope applied
        kv_cache: torch.Tensor,  # [num_slots, kv_lora_rank + qk_rope_head_dim]
        weights: MLAWeights,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:  # [T, H, v_head_dim]
        if meta.parts is None:
            short = meta.is_decode or meta.short_queries
            backend = self.decode if short else self.prefill
            return backend.forward(q_nope, q_rope, kv_cache, weights, meta, scale)
        decode_meta, prefill_meta = meta.parts
        d = decode_meta.positions.shape[0]  # the leading sequences' rows
        head = self.decode.forward(q_nope[:d], q_rope[:d], kv_cache, weights, decode_meta, scale)
        tail = self.prefill.forward(q_nope[d:], q_rope[d:], kv_cache, weights, prefill_meta, scale)
        return torch.cat([head, tail])


BackendFactory = Callable[[], AttentionBackend]
_REGISTRY: dict[str, BackendFactory] = {}


def register_backend(name: str, factory: BackendFactory) -> None:
    """Make a backend selectable by name (`--prefill-att-backend`, `--decode-att-backend`)."""
    _REGISTRY[name] = factory


def create_backend(name: str) -> AttentionBackend:
    """Build a registered backend; unknown names and missing packages raise with a clear message."""
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"unknown attention backend {name!r} (known: {known})")
    return _REGISTRY[name]()


def registered_backends() -> list[str]:
    return sorted(_REGISTRY)
