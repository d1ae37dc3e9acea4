"""RMSNorm (+ residual), interleaved rope (alone and with the KV-cache write) and SwiGLU against
their torch references."""

from __future__ import annotations

import pytest
import torch
from kernel_utils import ON_GPU, rel_err

from glm47.kernels.activation import silu_and_mul, silu_and_mul_ref
from glm47.kernels.rmsnorm import rmsnorm, rmsnorm_pair, rmsnorm_ref
from glm47.kernels.rope import (
    apply_rope_,
    rope_and_cache_,
    rope_cos_sin,
    rope_ref,
    write_kv_ref,
)
from glm47.kernels.skinny_gemm import SkinnyLaunch, skinny_gemm_parts
from glm47.kernels.split_k import SplitProduct

HIDDEN = 2048 if ON_GPU else 96


@pytest.mark.parametrize("with_residual", [False, True])
def test_rmsnorm_matches_reference(with_residual: bool, device: str, dtype: torch.dtype) -> None:
    x = torch.randn((7, HIDDEN), dtype=dtype, device=device)
    w = torch.rand(HIDDEN, dtype=dtype, device=device) + 0.5
    res = torch.randn_like(x) if with_residual else None
    out, new_res = rmsnorm(x, w, 1e-5, res)
    ref, ref_res = rmsnorm_ref(x, w, 1e-5, res)
    assert rel_err(out, ref) < 8e-3
    if with_residual:
        assert new_res is not None and ref_res is not None
        torch.testing.assert_close(new_res, ref_res)
    else:
        assert new_res is None


def test_rmsnorm_pair_normalises_both_ranges_of_each_row(device: str, dtype: torch.dtype) -> None:
    """MLA's layout: [q_a | latent | k_rope] per row; q_a and latent normalised, k_rope left."""
    d_a, d_b, rest = (768, 512, 64) if ON_GPU else (24, 16, 8)
    x = torch.randn((5, d_a + d_b + rest), dtype=dtype, device=device)
    before = x.clone()
    w_a = torch.rand(d_a, dtype=dtype, device=device) + 0.5
    w_b = torch.rand(d_b, dtype=dtype, device=device) + 0.5
    out_a, out_b, tail = rmsnorm_pair(x, w_a, w_b, d_a, 1e-6)
    assert tail is None
    ref_a, _ = rmsnorm_ref(x[:, :d_a], w_a, 1e-6)
    ref_b, _ = rmsnorm_ref(x[:, d_a : d_a + d_b], w_b, 1e-6)
    assert out_a.is_contiguous() and out_b.is_contiguous()
    assert rel_err(out_a, ref_a) < 8e-3 and rel_err(out_b, ref_b) < 8e-3
    single_a, _ = rmsnorm(x[:, :d_a], w_a, 1e-6)  # the one-range kernel, same rounding points
    torch.testing.assert_close(out_a, single_a, rtol=0, atol=0)
    assert torch.equal(x, before)
    with pytest.raises(ValueError, match="do not fit"):
        rmsnorm_pair(x, w_a, w_b, d_a + rest + 1, 1e-6)
    with pytest.raises(ValueError, match="outside"):
        rmsnorm_pair(x, w_a, w_b, d_a, 1e-6, tail_from=x.shape[1])


def split_product(t: int, n: int, device: str, dtype: torch.dtype) -> SplitProduct:
    """A random [t, n] product left as three K slices' partials."""
    k = 3 * 32
    x = torch.randn((t, k), dtype=dtype, device=device)
    w = torch.randn((n, k), dtype=dtype, device=device) / k**0.5
    return skinny_gemm_parts(x, w, launch=SkinnyLaunch(32, 32, 3, 32, 4, 2))


def assert_same_rows(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Equal, up to one rounding step of the interpreter's casts on the CPU."""
    step = 0.0 if out.is_cuda else 2**-9
    torch.testing.assert_close(out, ref, rtol=step, atol=step)


@pytest.mark.parametrize("with_residual", [False, True])
def test_rmsnorm_sums_a_split_product_as_it_loads_it(
    with_residual: bool, device: str, dtype: torch.dtype
) -> None:
    """A SplitProduct's partials summed in the norm's loads: the norm of the summed product."""
    prod = split_product(5, HIDDEN, device, dtype)
    w = torch.rand(HIDDEN, dtype=dtype, device=device) + 0.5
    res = torch.randn((5, HIDDEN), dtype=dtype, device=device) if with_residual else None
    out, new_res = rmsnorm(prod, w, 1e-5, res)
    ref, ref_res = rmsnorm(prod.total(), w, 1e-5, res)
    assert_same_rows(out, ref)
    if with_residual:
        assert new_res is not None and ref_res is not None
        assert_same_rows(new_res, ref_res)


def test_rmsnorm_pair_sums_a_split_product_and_returns_its_tail(
    device: str, dtype: torch.dtype
) -> None:
    """[q_a | latent | k_rope] as a SplitProduct: both norms of the summed rows, and k_rope
    summed (the tail), in one launch."""
    d_a, d_b, rest = (768, 512, 64) if ON_GPU else (24, 16, 8)
    prod = split_product(4, d_a + d_b + rest, device, dtype)
    w_a = torch.rand(d_a, dtype=dtype, device=device) + 0.5
    w_b = torch.rand(d_b, dtype=dtype, device=device) + 0.5
    out_a, out_b, tail = rmsnorm_pair(prod, w_a, w_b, d_a, 1e-6, tail_from=d_a + d_b)
    summed = prod.total()
    ref_a, ref_b, ref_tail = rmsnorm_pair(summed, w_a, w_b, d_a, 1e-6, tail_from=d_a + d_b)
    assert tail is not None and ref_tail is not None and tail.shape == (4, rest)
    assert_same_rows(out_a, ref_a)
    assert_same_rows(out_b, ref_b)
    assert_same_rows(tail, ref_tail)
    assert torch.equal(ref_tail, summed[:, d_a + d_b :])  # a plain tensor's tail: copied as is


def assert_rotated(out: torch.Tensor, x: torch.Tensor, pos: torch.Tensor, cs: torch.Tensor) -> None:
    """`out` is x rotated to within the rounding of its dtype: each element within one epsilon of
    the sizes of its two products and its result, from the exact rotation of the same inputs (the
    GPU may round each product first, or contract a product and a sum into one rounding)."""
    half = x.shape[-1] // 2
    exact = rope_ref(x.double(), pos, cs.double())
    c = cs.double()[pos]
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (half,)
    cos, sin = c[:, :half].reshape(shape).abs(), c[:, half:].reshape(shape).abs()
    x1, x2 = x.double()[..., 0::2].abs(), x.double()[..., 1::2].abs()
    terms = torch.cat([x1 * cos + x2 * sin, x2 * cos + x1 * sin], dim=-1)
    bound = torch.finfo(x.dtype).eps * (terms + exact.abs())
    err = (out.double() - exact).abs()
    assert bool((err <= bound).all()), f"worst error {(err / bound).max().item():.2f}x the bound"


def test_rope_rotates_q_and_k_in_place(device: str, dtype: torch.dtype) -> None:
    t, h, r = 5, 20 if ON_GPU else 3, 64 if ON_GPU else 16
    cs = rope_cos_sin(64, r, 1e6 if ON_GPU else 1e4, dtype, device)
    q = torch.randn((t, h, 8 + r), dtype=dtype, device=device)  # rope part is a strided view
    k_wide = torch.randn((t, 4 + r), dtype=dtype, device=device)  # k_rope: after the latent
    k = k_wide[:, 4:]
    latent = k_wide[:, :4].clone()
    pos = torch.randint(0, 64, (t,), device=device)
    q_in, k_in, nope = q[..., 8:].clone(), k.clone(), q[..., :8].clone()
    apply_rope_(q[..., 8:], k, pos, cs)
    assert_rotated(q[..., 8:], q_in, pos, cs)
    assert_rotated(k, k_in, pos, cs)
    assert torch.equal(q[..., :8], nope)
    assert torch.equal(k_wide[:, :4], latent)


def test_rope_at_position_zero_only_deinterleaves(device: str, dtype: torch.dtype) -> None:
    cs = rope_cos_sin(4, 8, 1e4, dtype, device)
    q = torch.randn((1, 2, 8), dtype=dtype, device=device)
    k = torch.randn((1, 8), dtype=dtype, device=device)
    expect = torch.cat([q[..., 0::2], q[..., 1::2]], dim=-1)
    apply_rope_(q, k, torch.zeros(1, dtype=torch.int64, device=device), cs)
    torch.testing.assert_close(q, expect)


@pytest.mark.parametrize("fp32", [False, True])
def test_rope_and_cache_rotates_and_fills_slots_skipping_negative(
    fp32: bool, device: str, dtype: torch.dtype
) -> None:
    """The model's layout: q_rope a strided view of q, k_rope after the latent in one row."""
    dtype = torch.float32 if fp32 else dtype
    t, h, r, d_lat = 6, 20 if ON_GPU else 3, 64 if ON_GPU else 16, 512 if ON_GPU else 32
    cs = rope_cos_sin(64, r, 1e6 if ON_GPU else 1e4, dtype, device)
    q = torch.randn((t, h, 8 + r), dtype=dtype, device=device)
    kv_a = torch.randn((t, d_lat + r), dtype=dtype, device=device)  # [latent | k_rope]
    latent, k = kv_a[:, :d_lat], kv_a[:, d_lat:]
    pos = torch.randint(0, 64, (t,), device=device)
    slots = torch.tensor([3, 17, -1, 39, 0, 8], dtype=torch.int64, device=device)
    cache = torch.randn((40, d_lat + r), dtype=dtype, device=device)
    q_in, k_in, nope, latent_in = q[..., 8:].clone(), k.clone(), q[..., :8].clone(), latent.clone()
    untouched = torch.ones(40, dtype=torch.bool, device=device)
    untouched[slots[slots >= 0]] = False
    cache_before = cache.clone()
    rope_and_cache_(q[..., 8:], k, latent, pos, cs, cache, slots)
    assert_rotated(q[..., 8:], q_in, pos, cs)
    assert_rotated(k, k_in, pos, cs)
    assert torch.equal(q[..., :8], nope) and torch.equal(latent, latent_in)
    kept = slots >= 0
    expect = cache_before.clone()
    write_kv_ref(expect, latent_in, k_in, slots)  # the key unrotated: compared apart below
    assert torch.equal(cache[:, :d_lat], expect[:, :d_lat])  # latents copied bit for bit
    assert torch.equal(cache[untouched], expect[untouched])  # no other row written
    assert_rotated(cache[slots[kept], d_lat:], k_in[kept], pos[kept], cs)


def test_rope_and_cache_rejects_inputs_that_do_not_fit(device: str) -> None:
    t, h, r, d_lat = 2, 3, 16, 32

    def z(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.zeros(shape, dtype=dtype, device=device)

    def call(**over: torch.Tensor) -> None:
        args = {
            "q_rope": z(t, h, r),
            "k_rope": z(t, r),
            "latent": z(t, d_lat),
            "positions": z(t, dtype=torch.int64),
            "cos_sin": z(8, r),
            "kv_cache": z(10, d_lat + r),
            "slot_mapping": z(t, dtype=torch.int64),
        }
        rope_and_cache_(**(args | over))

    call()  # the defaults fit
    bad = {
        "int64": {"slot_mapping": z(t, dtype=torch.int32)},
        "one row per token": {"latent": z(t + 1, d_lat)},
        "kv_cache must be": {"kv_cache": z(10, d_lat + r + 1)},
        "share a dtype": {"kv_cache": z(10, d_lat + r, dtype=torch.float16)},
        "contiguous": {"latent": z(d_lat, t).t()},
        "power of two": {"latent": z(t, 24), "kv_cache": z(10, 24 + r)},
        "do not fit": {"positions": z(t + 1, dtype=torch.int64)},
    }
    for message, over in bad.items():
        with pytest.raises(ValueError, match=message):
            call(**over)


@pytest.mark.parametrize("inter", [24, 1536 if ON_GPU else 40])
def test_silu_and_mul_matches_reference(inter: int, device: str, dtype: torch.dtype) -> None:
    x = torch.randn((5, 2 * inter), dtype=dtype, device=device) * 3
    out = silu_and_mul(x)
    ref = silu_and_mul_ref(x)  # the torch expression, same rounding points
    assert out.shape == (5, inter)
    # exp may round differently in its last fp32 bit: one activation-dtype ulp of slack
    torch.testing.assert_close(out, ref, atol=1e-3, rtol=1.6e-2)
    assert rel_err(out, silu_and_mul_ref(x.double())) < 1e-2
    with pytest.raises(ValueError):
        silu_and_mul(x[:, :-1])
