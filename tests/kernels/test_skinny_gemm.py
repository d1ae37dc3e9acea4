"""skinny_gemm against `x @ w.T` on random inputs: every row count up to 16, ragged N and K, K
split over programs (the last one of a column block sums), per-group products with transposed
weight views, an fp32 weight taking a half-precision input. On the GPU the same tests also run
with programmatic dependent launch and the L2 prefetch."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from kernel_utils import ON_GPU, rel_err

from glm47.kernels.counters import counters_at_rest
from glm47.kernels.pdl import pdl_supported, set_pdl
from glm47.kernels.skinny_gemm import (
    MAX_ROWS,
    SkinnyLaunch,
    skinny_gemm,
    skinny_gemm_parts,
    skinny_gemm_ref,
    skinny_launch,
)
from glm47.kernels.split_k import SplitProduct

# (N, K): on the GPU the decode projections of the real model (q_a + kv_a, q_b, o_proj, the
# shared expert's gate_up and down, the fp32 router); on the CPU small ragged shapes.
SHAPES = (
    [(1344, 2048), (5120, 768), (2048, 5120), (3072, 2048), (2048, 1536)]
    if ON_GPU
    else [(40, 96), (17, 33), (64, 256)]
)
PDL_MODES = [False, True] if ON_GPU and pdl_supported(torch.device("cuda")) else [False]


@pytest.fixture(params=PDL_MODES, ids=lambda on: "pdl" if on else "plain")
def pdl(request: pytest.FixtureRequest) -> Iterator[bool]:
    set_pdl(request.param)
    yield request.param
    set_pdl(False)


@pytest.mark.parametrize(("n", "k"), SHAPES)
@pytest.mark.parametrize("m", [1, 3, 16])
def test_skinny_gemm_matches_the_product(
    m: int, n: int, k: int, device: str, dtype: torch.dtype, pdl: bool
) -> None:
    x = torch.randn((m, k), dtype=dtype, device=device)
    w = torch.randn((n, k), dtype=dtype, device=device) / k**0.5
    out = skinny_gemm(x, w)
    assert out.shape == (m, n) and out.dtype == dtype
    assert rel_err(out, skinny_gemm_ref(x, w)) < 5e-3
    assert counters_at_rest()


@pytest.mark.parametrize("unroll", [False, True], ids=["loop", "unrolled"])
@pytest.mark.parametrize("fma_rows", [0, 4], ids=["tensor-core", "cuda-core"])
@pytest.mark.parametrize("split_k", [1, 2, 3])
def test_k_split_over_programs_sums_every_part(
    split_k: int, fma_rows: int, unroll: bool, device: str, dtype: torch.dtype, pdl: bool
) -> None:
    n, k = 70, 96 * split_k  # three column blocks, the last one ragged
    launch = SkinnyLaunch(32 if fma_rows == 0 else 8, 32, split_k, 96, 4, 2, fma_rows, unroll)
    x = torch.randn((3, k), dtype=dtype, device=device)
    w = torch.randn((n, k), dtype=dtype, device=device) / k**0.5
    for _ in range(2):  # the counters are back at zero after a launch: a second one sums again
        out = skinny_gemm(x, w, launch=launch)
        assert rel_err(out, skinny_gemm_ref(x, w)) < 5e-3
        assert counters_at_rest()


@pytest.mark.parametrize("fma_rows", [0, 4], ids=["tensor-core", "cuda-core"])
@pytest.mark.parametrize("split_k", [1, 2, 3])
def test_parts_are_the_k_slices_whose_sum_is_the_product(
    split_k: int, fma_rows: int, device: str, dtype: torch.dtype, pdl: bool
) -> None:
    """`skinny_gemm_parts` leaves one fp32 partial per K slice; summed in slice order and rounded
    they are bit for bit what the same launch returns summed in the kernel."""
    n, k = 70, 96 * split_k
    launch = SkinnyLaunch(32 if fma_rows == 0 else 8, 32, split_k, 96, 4, 2, fma_rows)
    x = torch.randn((3, k), dtype=dtype, device=device)
    w = torch.randn((n, k), dtype=dtype, device=device) / k**0.5
    prod = skinny_gemm_parts(x, w, launch=launch)
    assert isinstance(prod, SplitProduct)
    assert prod.parts.shape == (split_k, 3, n) and prod.parts.dtype == torch.float32
    assert prod.shape == (3, n) and prod.dtype == dtype and prod.parts.is_contiguous()
    for s in range(split_k):  # each part is its slice's product
        cols = slice(s * 96, (s + 1) * 96)
        ref = x[:, cols].float() @ w[:, cols].float().T
        torch.testing.assert_close(prod.parts[s], ref, rtol=2e-3, atol=2e-3)
    assert torch.equal(prod.total(), skinny_gemm(x, w, launch=launch))
    assert counters_at_rest()
    with pytest.raises(ValueError, match="non-empty"):
        skinny_gemm_parts(x[:0], w, launch=launch)


@pytest.mark.parametrize("launch", [None, SkinnyLaunch(32, 32, 3, 32, 4, 2)])
def test_accumulate_adds_into_out_and_reads_strided_rows(
    launch: SkinnyLaunch | None, device: str, dtype: torch.dtype, pdl: bool
) -> None:
    n, k = SHAPES[0]
    if launch is not None:
        launch = launch._replace(k_per_split=-(-k // (3 * 32)) * 32)
    wide = torch.randn((5, 2 * k), dtype=dtype, device=device)
    x = wide[:, 1 : 1 + k]  # rows 2k apart, not contiguous
    w = torch.randn((n, k), dtype=dtype, device=device) / k**0.5
    base = torch.randn((5, n), dtype=dtype, device=device)
    out = base.clone()
    got = skinny_gemm(x, w, out=out, accumulate=True, launch=launch)
    assert got.data_ptr() == out.data_ptr()
    assert rel_err(out, skinny_gemm_ref(x, w, base, accumulate=True)) < 5e-3


@pytest.mark.parametrize("transposed", [False, True])
def test_one_product_per_group_with_views_of_the_weight(
    transposed: bool, device: str, dtype: torch.dtype, pdl: bool
) -> None:
    """MLA's absorbed products: x [T, G, K] read group-major through a view, the weight of a
    group [N, K] or the transpose of a [K, N] tensor, written token-major through a view."""
    g, t, n, k = (20, 3, 512, 192) if ON_GPU else (3, 2, 40, 24)
    q = torch.randn((t, g, k + 8), dtype=dtype, device=device)
    x = q[:, :, :k].transpose(0, 1)  # [G, T, K], strided
    if transposed:
        w = (torch.randn((g, k, n), dtype=dtype, device=device) / k**0.5).transpose(1, 2)
    else:
        w = torch.randn((g, n, k), dtype=dtype, device=device) / k**0.5
    out = torch.empty((t, g, n), dtype=dtype, device=device)
    skinny_gemm(x, w, out=out.transpose(0, 1))
    ref = skinny_gemm_ref(x, w).transpose(0, 1)
    assert rel_err(out, ref) < 5e-3


def test_fp32_weight_takes_a_half_precision_input(device: str, dtype: torch.dtype) -> None:
    """The router: bf16 activations against its fp32 weight, fp32 logits, no TF32 rounding."""
    x = torch.randn((3, 256), dtype=dtype, device=device)
    w = torch.randn((16, 256), dtype=torch.float32, device=device)
    out = skinny_gemm(x, w)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x.float() @ w.T, rtol=1e-5, atol=1e-4)


def test_default_launch_splits_k_to_feed_every_multiprocessor() -> None:
    for n, k in [(1000, 2048), (4096, 768), (1024, 8192), (300, 1536)]:  # shapes not measured
        cfg = skinny_launch(n, k, num_sms=132)
        programs = -(-n // cfg.block_n) * cfg.split_k
        # a program per multiprocessor at least, unless a program would get fewer than two K
        # blocks; at most four per multiprocessor
        assert programs >= 132 or cfg.split_k == max(1, -(-k // cfg.block_k) // 2), (n, k, cfg)
        assert programs <= 4 * 132, (n, k, cfg)
        assert cfg.k_per_split % cfg.block_k == 0 and cfg.split_k * cfg.k_per_split >= k
        assert (cfg.split_k - 1) * cfg.k_per_split < k  # no program without columns


@pytest.mark.parametrize("m", [1, 2, 8, 16])
def test_measured_launches_cover_k_and_fit_the_row_count(m: int) -> None:
    """The real model's shapes take their measured launches: tensor-core tiles of at least 16
    columns wherever the CUDA-core path does not take that many rows."""
    shapes = [(1, 1344, 2048, 2), (1, 5120, 768, 2), (20, 512, 192, 2), (20, 256, 512, 2),
              (1, 2048, 5120, 2), (1, 64, 2048, 4), (1, 3072, 2048, 2), (1, 2048, 1536, 2)]  # fmt: skip
    for g, n, k, elem in shapes:
        cfg = skinny_launch(n, k, 132, m, g, elem)
        assert cfg.k_per_split % cfg.block_k == 0 and cfg.split_k * cfg.k_per_split >= k
        assert (cfg.split_k - 1) * cfg.k_per_split < k
        assert m <= cfg.fma_rows or cfg.block_n >= 16, (g, n, k, m, cfg)


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
    with pytest.raises(ValueError, match="groups"):
        skinny_gemm(torch.randn((2, 2, 32), device=device), torch.randn((3, 8, 32), device=device))
    with pytest.raises(ValueError, match="out must be"):
        skinny_gemm(torch.randn((2, 32), device=device), w, out=torch.empty((2, 9), device=device))
