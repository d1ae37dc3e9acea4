"""The top-k sum that ends the fused MoE (kernels/fused_moe): each token's pair rows, the output of
the down GEMM, summed in fp32 and rounded once, as torch sums them. It also takes the shared
expert's row as an addend after the rounded routed sum, an extra addend after that, and the fp32
parts of a down GEMM split along K (summed and rounded where the unsplit GEMM rounds).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from glm47.kernels.pdl import pdl_wait, use_pdl
from glm47.kernels.split_k import load_summed


@triton.jit
def _pair_row(pairs_ptr, row, offs, ok, stride_split, SPLITS: tl.constexpr, dtype: tl.constexpr):
    """One pair's output row in `dtype`: as stored, or its SPLITS fp32 parts summed and rounded
    (where the unsplit GEMM rounds)."""
    if SPLITS == 1:
        return load_summed(pairs_ptr + row + offs, ok, stride_split, 0, dtype)
    return load_summed(pairs_ptr + row + offs, ok, stride_split, SPLITS, dtype)


@triton.jit
def _topk_sum_kernel(
    pairs_ptr,  # [T * TOP_K, H]: a token's TOP_K rows are consecutive; or [SPLITS, ...] fp32
    add_ptr,  # [T, H] (read when HAS_ADD)
    out_ptr,  # [T, H]
    hidden,
    stride_add,
    stride_split,
    HAS_ADD: tl.constexpr,
    SHARED_LAST: tl.constexpr,
    TOP_K: tl.constexpr,
    SPLITS: tl.constexpr,
    BLOCK: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    t = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < hidden
    dtype: tl.constexpr = out_ptr.dtype.element_ty
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    summed: tl.constexpr = TOP_K - 1 if SHARED_LAST else TOP_K
    for j in tl.static_range(summed):
        row = _pair_row(pairs_ptr, (t * TOP_K + j) * hidden, offs, ok, stride_split, SPLITS, dtype)
        acc += row.to(tl.float32)
    total = acc.to(dtype)
    if SHARED_LAST:  # the token's last row is an addend, as below
        last = (t * TOP_K + TOP_K - 1) * hidden
        addend = _pair_row(pairs_ptr, last, offs, ok, stride_split, SPLITS, dtype)
        total = (total.to(tl.float32) + addend.to(tl.float32)).to(dtype)
    if HAS_ADD:  # rounded sum, plus the addend, rounded again: torch's add of the two
        addend = tl.load(add_ptr + t * stride_add + offs, mask=ok, other=0.0)
        total = (total.to(tl.float32) + addend.to(tl.float32)).to(dtype)
    tl.store(out_ptr + t * hidden + offs, total, mask=ok)


def topk_sum(
    per_pair: torch.Tensor,  # [T * top_k, H] contiguous, a token's rows consecutive; or [S, ...]
    top_k: int,
    add: torch.Tensor | None = None,  # [T, H] in the output dtype, last dim contiguous
    shared_last: bool = False,
    dtype: torch.dtype | None = None,  # the output's (per_pair's by default)
) -> torch.Tensor:  # [T, H]
    """`per_pair.view(T, top_k, H).sum(1)`, summed in fp32 and rounded once (as torch's sum);
    with `add`, `sum + add` as torch adds two tensors of that dtype (the sum rounded first).
    With `shared_last`, each token's last row is such an addend (the shared expert's output) and
    only the first top_k - 1 are summed; `add`, if also given, is added after it.

    A 3-D `per_pair` holds S fp32 parts of each row (a split GEMM's): a row is their sum rounded
    to `dtype`, then summed as above."""
    if top_k < 1 + int(shared_last):
        raise ValueError(f"top_k must be >= {1 + int(shared_last)}, got {top_k}")
    parts = per_pair if per_pair.dim() == 3 else per_pair.unsqueeze(0)
    if (
        per_pair.dim() not in (2, 3)
        or not per_pair.is_contiguous()
        or parts.shape[1] % top_k
        or (per_pair.dim() == 3 and per_pair.dtype != torch.float32)
    ):
        raise ValueError(
            f"per_pair must be a contiguous [T * {top_k}, H], or [S, T * {top_k}, H] fp32 parts, "
            f"got {tuple(per_pair.shape)} {per_pair.dtype}"
        )
    splits, pairs, hidden = parts.shape
    t = pairs // top_k
    dtype = dtype or per_pair.dtype
    if add is not None and (add.shape != (t, hidden) or add.dtype != dtype or add.stride(1) != 1):
        raise ValueError(f"add must be a [{t}, {hidden}] {dtype} tensor, got {add.shape}")
    out = torch.empty((t, hidden), dtype=dtype, device=per_pair.device)
    if t == 0:
        return out
    block = min(1024, triton.next_power_of_2(hidden))
    pdl = use_pdl(per_pair)
    _topk_sum_kernel[(t, triton.cdiv(hidden, block))](
        per_pair,
        out if add is None else add,
        out,
        hidden,
        0 if add is None else add.stride(0),
        parts.stride(0),
        HAS_ADD=add is not None,
        SHARED_LAST=shared_last,
        TOP_K=top_k,
        SPLITS=splits,
        BLOCK=block,
        USE_PDL=pdl,
        num_warps=4,
        launch_pdl=pdl,
    )
    return out


def topk_sum_ref(
    per_pair: torch.Tensor,
    top_k: int,
    add: torch.Tensor | None = None,
    shared_last: bool = False,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Plain torch reference of `topk_sum`."""
    if per_pair.dim() == 3:  # fp32 parts: each row their sum, rounded
        per_pair = per_pair.sum(0).to(dtype or per_pair.dtype)
    t = per_pair.shape[0] // top_k
    rows = per_pair.view(t, top_k, -1)
    total = rows[:, : top_k - int(shared_last)].float().sum(1).to(per_pair.dtype)
    if shared_last:
        total = total + rows[:, -1]
    return total if add is None else total + add


__all__ = ["topk_sum", "topk_sum_ref"]
