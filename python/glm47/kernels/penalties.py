"""Repetition, frequency and presence penalties from per-request token counts kept on the device.

A penalised request owns a row of a counts table (`[slots, V]` int32): its output tokens' counts,
plus `PROMPT_BIT` on every token of its prompt when it has a repetition penalty. A batch row reads
its request's table row (`slots[row]`, -1 for rows without penalties) and gets, in fp32:

    x = where(seen, where(x > 0, x / repetition, x * repetition), x)    seen: count or prompt bit
    x = x - frequency * count - presence * (count > 0)

in that order (HF/CTRL repetition over prompt and output tokens, then the OpenAI penalties over
output tokens only). `apply_counts` is one pass over the logits (`_penalty_kernel`);
`apply_counts_ref` is the same in plain torch, for the CPU and as the kernel tests' reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

PROMPT_BIT = 1 << 30  # set on a request's prompt tokens (repetition only); counts stay below it
BLOCK = 2048  # tokens per program


@triton.jit
def _penalty_kernel(
    logits_ptr,  # [N, V] fp32
    out_ptr,  # [N, V] fp32
    counts_ptr,  # [S, V] int32
    slots_ptr,  # [N] int64: each row's counts row, -1 for none
    params_ptr,  # [N, 3] fp32: repetition, frequency, presence
    vocab,
    stride_l,
    stride_o,
    stride_c,
    PROMPT_BIT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < vocab
    x = tl.load(logits_ptr + row * stride_l + offs, mask=ok, other=0.0)
    slot = tl.load(slots_ptr + row)
    if slot >= 0:
        c = tl.load(counts_ptr + slot * stride_c + offs, mask=ok, other=0)
        n = c & (PROMPT_BIT - 1)
        rep = tl.load(params_ptr + row * 3)
        freq = tl.load(params_ptr + row * 3 + 1)
        pres = tl.load(params_ptr + row * 3 + 2)
        x = tl.where(c != 0, tl.where(x > 0, tl.math.div_rn(x, rep), x * rep), x)
        x = x - freq * n.to(tl.float32) - pres * (n > 0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + offs, x, mask=ok)


def _check(logits: torch.Tensor, counts: torch.Tensor, slots: torch.Tensor,
           params: torch.Tensor) -> None:  # fmt: skip
    n, vocab = logits.shape
    if (
        logits.dtype != torch.float32
        or counts.dtype != torch.int32
        or counts.dim() != 2
        or counts.shape[1] != vocab
        or slots.shape != (n,)
        or slots.dtype != torch.int64
        or params.shape != (n, 3)
        or params.dtype != torch.float32
    ):
        raise ValueError(
            f"penalties: logits {tuple(logits.shape)} {logits.dtype}, counts "
            f"{tuple(counts.shape)} {counts.dtype}, slots {tuple(slots.shape)} {slots.dtype}, "
            f"params {tuple(params.shape)} {params.dtype}"
        )


def apply_counts(
    logits: torch.Tensor,  # [N, V] fp32
    counts: torch.Tensor,  # [S, V] int32
    slots: torch.Tensor,  # [N] int64: counts row of each row, -1 for none
    params: torch.Tensor,  # [N, 3] fp32: repetition, frequency, presence
) -> torch.Tensor:  # [N, V] fp32, a new tensor
    """The penalised logits (the module's rule), in one pass over them."""
    _check(logits, counts, slots, params)
    n, vocab = logits.shape
    out = torch.empty_like(logits, memory_format=torch.contiguous_format)
    if n == 0:
        return out
    if logits.stride(1) != 1 or counts.stride(1) != 1:
        raise ValueError("penalties: logits and counts need a contiguous last dimension")
    _penalty_kernel[(n, triton.cdiv(vocab, BLOCK))](
        logits, out, counts, slots, params.contiguous(), vocab, logits.stride(0), out.stride(0),
        counts.stride(0), PROMPT_BIT=PROMPT_BIT, BLOCK=BLOCK, num_warps=4,
        enable_fp_fusion=False,  # each product rounded, as the reference's (no fused multiply-add)
    )  # fmt: skip
    return out


def apply_counts_ref(
    logits: torch.Tensor,  # [N, V] fp32
    counts: torch.Tensor,  # [S, V] int32
    slots: torch.Tensor,  # [N] int64
    params: torch.Tensor,  # [N, 3] fp32
) -> torch.Tensor:  # [N, V] fp32
    """`apply_counts` in plain torch."""
    _check(logits, counts, slots, params)
    has = slots >= 0  # [N]
    c = counts[slots.clamp(min=0)] * has[:, None]  # [N, V]
    n = (c & (PROMPT_BIT - 1)).float()
    rep, freq, pres = (params[:, i : i + 1] for i in range(3))  # [N, 1] each
    x = torch.where(c != 0, torch.where(logits > 0, logits / rep, logits * rep), logits)
    return torch.where(has[:, None], x - freq * n - pres * (n > 0).float(), logits)
