"""The Triton MLA backend: absorbed attention over the paged latent cache, and the expanded form
for long prefill steps.

Per layer (the layer has stored the step's new latents in the cache): project the queries into
the latent space with W_UK, attend with the split-K decode kernel when every sequence has one new
token, or a few (verifying drafts: each token a decode row over its own causal length, the rows
`with_token_rows` set), and with the variable-length causal prefill kernel otherwise, then map
the attended latents to values with W_UV. Both absorbed kernels read the cache in place; nothing is expanded per head.

The absorbed form weighs every (query, key) pair over 576 + 512 columns a head, the expanded form
(attention/expanded with kernels/varlen_attention) over 256 + 256 on the real model but first
rebuilds keys and values for every token the step attends over. So a step with many pairs for its
keys (a long fresh prompt) takes the expanded form, an extend of a few tokens after a long prefix
the absorbed one: `prefers_expanded` weighs the two by their products' FLOPs at their measured
rates.
"""

from __future__ import annotations

import torch

from glm47.kernels.device import num_sms
from glm47.kernels.mla_decode import default_num_splits, mla_decode, small_batch_head_groups
from glm47.kernels.mla_prefill import mla_prefill
from glm47.kernels.varlen_attention import varlen_attention
from glm47.worker.attention.base import (
    AttentionMetadata,
    MLAWeights,
    absorb_query,
    register_backend,
    values_from_latents,
)
from glm47.worker.attention.expanded import ExpandedMLA

# Rates of the three products, as fractions of the bf16 matmul peak, that `prefers_expanded`
# weighs, measured on an H200 (docs/gpu-notes.md): the absorbed prefill kernel 0.36-0.38; the
# expanded attention kernel 0.59 (four 1K chunks after 3K cached tokens) to 0.71 (an 8K prompt);
# the expansion's GEMM alone 0.88, taken lower for the gather and concatenations around it.
ABSORBED_RATE = 0.37
EXPANDED_RATE = 0.6
EXPANSION_RATE = 0.7
PREFILL_FORMS = ("auto", "absorbed", "expanded")
# The expanded form's keys and values of a step ([S, H, nope + v] from the expansion, [S, H, nope
# + rope] keys, and the [S, rank + rope] rows gathered from the cache) are made per layer; above
# this many bytes the step stays absorbed, which reads the cache in place (2 GiB: about 74K
# attended tokens at the real widths).
EXPANDED_MAX_BYTES = 2 << 30


def prefers_expanded(meta: AttentionMetadata, weights: MLAWeights, rope_dim: int) -> bool:
    """Whether a prefill step costs less expanded: its pairs over 256 + 256 columns a head plus
    the expansion of its keys (nope + v columns from the latent each) against its pairs over
    576 + 512. Never for decode steps, where the pair count is not known (graphs), or where the
    expanded keys and values would pass EXPANDED_MAX_BYTES."""
    if meta.is_decode or meta.attended_pairs <= 0:
        return False
    heads, nope, rank = weights.w_uk.shape
    v_dim = weights.w_uv.shape[1]
    per_token = heads * (2 * nope + rope_dim + v_dim) + rank + rope_dim  # and the gathered rows
    if meta.total_seq_len * per_token * weights.w_uk.element_size() > EXPANDED_MAX_BYTES:
        return False
    absorbed = meta.attended_pairs * (2 * rank + rope_dim) / ABSORBED_RATE
    expansion = meta.total_seq_len * (nope + v_dim) * rank / EXPANSION_RATE
    expanded = expansion + meta.attended_pairs * (nope + rope_dim + v_dim) / EXPANDED_RATE
    return expanded < absorbed


class TritonMLABackend:
    """Registered as "triton"; works wherever Triton runs (the interpreter included)."""

    name = "triton"
    supports_cuda_graph = True
    # Its short-query paths (decode rows from `token_rows`, else mla_prefill) take their grids
    # from the host fields of the metadata and every position from its tensors: graphs of
    # verification steps hold.
    supports_multi_token_cuda_graph = True

    def __init__(self, prefill_form: str = "auto") -> None:
        """`prefill_form`: "auto" (`prefers_expanded` decides per step), "absorbed" or
        "expanded" (every prefill step; the benchmarks compare the two)."""
        if prefill_form not in PREFILL_FORMS:
            raise ValueError(f"prefill_form must be one of {PREFILL_FORMS}, got {prefill_form!r}")
        self.prefill_form = prefill_form
        self.expanded = ExpandedMLA(varlen_attention)

    def _expands(self, meta: AttentionMetadata, weights: MLAWeights, rope_dim: int) -> bool:
        if self.prefill_form == "auto":
            return prefers_expanded(meta, weights, rope_dim)
        # forced, still not in graphs (no pair count there): the expansion reads its size on the host
        return self.prefill_form == "expanded" and not meta.is_decode and meta.attended_pairs > 0

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
        rope_dim = q_rope.shape[-1]
        if self._expands(meta, weights, rope_dim):
            return self.expanded.forward(q_nope, q_rope, kv_cache, weights, meta, scale)
        # The kernels read the latent and rope parts of the query from two tensors, so the
        # [T, H, rank] view of the absorbed product is never copied into a concatenation.
        q_lat = absorb_query(q_nope, weights)  # [T, H, rank]
        q_lat, q_pe = q_lat.to(dtype), q_rope.to(dtype)
        if q_pe.stride(-1) != 1:
            q_pe = q_pe.contiguous()
        if meta.is_decode:
            batch, heads = q_lat.shape[:2]
            splits = default_num_splits(batch, num_sms(q_lat.device))
            att = mla_decode(
                q_lat, kv_cache, meta.page_table, meta.seq_lens, meta.page_size, scale,
                d_rope=rope_dim, num_splits=splits, q_rope=q_pe,
                head_groups=small_batch_head_groups(batch, heads),
            )  # fmt: skip
        elif meta.token_rows is not None:
            # A few tokens a sequence (verifying drafts): each token a decode row over its own
            # causal length, split over the sequence like a decode step (the prefill kernel
            # walks each sequence's cache in one program per query block).
            rows, heads = q_lat.shape[:2]
            lens, table, per_row = meta.token_rows
            att = mla_decode(
                q_lat, kv_cache, table, lens, meta.page_size, scale, d_rope=rope_dim,
                num_splits=default_num_splits(rows, num_sms(q_lat.device)), q_rope=q_pe,
                head_groups=small_batch_head_groups(rows, heads), rows_per_table_row=per_row,
            )  # fmt: skip
        else:
            att = mla_prefill(
                q_lat, kv_cache, meta.page_table, meta.query_start_loc, meta.seq_lens,
                meta.max_query_len, meta.page_size, scale, d_rope=rope_dim, q_rope=q_pe,
            )  # fmt: skip
        return values_from_latents(att, weights, q_nope.dtype)  # [T, H, v_head_dim]


register_backend("triton", TritonMLABackend)
