"""skinny_gemm against `x @ w.T` on random inputs: every row count up to 16, ragged N and K."""

from __future__ import annotations

import pytest
import torch
from kernel_utils import ON_GPU, rel_err

from glm47.kernels.skinny_gemm import MAX_ROWS, skinny_gemm, skinny_gemm_ref

# (N, K): on the GPU the decode projections of the real model (q_a + kv_a, q_b, o_proj, the
# shared expert's gate_up and down); on the CPU small ragged shapes.
SHAPES = (
    [(1344, 2048), (5120, 768), (2048, 5120), (3072, 2048), (2048, 1536)]
    if ON_GPU
    else [(40, 96), (17, 33), (64, 256)]
)


@pytest.mark.parametrize(("n", "k"), SHAPES)
@pytest.mark.parametrize("m", [1, 3, 16])
def test_skinny_gemm_matches_the_product(
    m: int, n: int, k: int, device: str, dtype: torch.dtype
) -> None:
    x = torch.randn((m, k), dtype=dtype, device=device)
    w = torch.randn((n, k), dtype=dtype, device=device) / k**0.5
    out = skinny_gemm(x, w)
    assert out.shape == (m, n) and out.dtype == dtype
    assert rel_err(out, skinny_gemm_ref(x, w)) < 5e-3


@pytest.mark.parametrize("launch", [None, (16, 32, 4, 2)])
def test_accumulate_adds_into_out_and_reads_strided_rows(
    launch: tuple[int, int, int, int] | None, device: str, dtype: torch.dtype
) -> None:
    n, k = SHAPES[0]
    wide = torch.randn((5, 2 * k), dtype=dtype, device=device)
    x = wide[:, 1 : 1 + k]  # rows 2k apart, not contiguous
    w = torch.randn((n, k), dtype=dtype, device=device) / k**0.5
    base = torch.randn((5, n), dtype=dtype, device=device)
    out = base.clone()
    got = skinny_gemm(x, w, out=out, accumulate=True, launch=launch)
    assert got.data_ptr() == out.data_ptr()
    assert rel_err(out, skinny_gemm_ref(x, w, base, accumulate=True)) < 5e-3


def test_empty_products_leave_out_as_it_was(device: str, dtype: torch.dtype) -> None:
    w = torch.randn((8, 32), dtype=dtype, device=device)
    assert skinny_gemm(torch.randn((0, 32), dtype=dtype, device=device), w).shape == (0, 8)
    out = torch.randn((2, 0), dtype=dtype, device=device)
    x = torch.randn((2, 32), dtype=dtype, device=device)
    assert skinny_gemm(x, w[:0], out=out, accumulate=True) is out


def test_skinny_gemm_rejects_what_it_cannot_compute(device: str) -> None:
    w = torch.randn((8, 32), device=device)
    with pytest.raises(ValueError, match="at most"):
        skinny_gemm(torch.randn((MAX_ROWS + 1, 32), device=device), w)
    with pytest.raises(ValueError, match="must be"):
        skinny_gemm(torch.randn((2, 31), device=device), w)
    with pytest.raises(ValueError, match="accumulate needs out"):
        skinny_gemm(torch.randn((2, 32), device=device), w, accumulate=True)
    with pytest.raises(ValueError, match="dtype"):
        skinny_gemm(torch.randn((2, 32), device=device, dtype=torch.float16), w)
