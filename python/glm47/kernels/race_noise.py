"""The exponential race's noise: log(E), E ~ Exp(1), a pure function of a 64-bit row key and a
token id (splitmix64), the same in torch (`race_noise`, the reference and the CPU path) and inside
Triton kernels (`race_noise_block`), so a row draws the same token on any device and in any
batch. `row_key` gives a seeded row's key at a decoding step."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def signed64(x: int) -> int:
    """The two's-complement int64 value of an unsigned 64-bit integer."""
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


def _splitmix64_int(x: int) -> int:
    """splitmix64 on Python ints (unsigned 64-bit arithmetic): `race_noise`'s hash."""
    z = (x + _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK64
    return z ^ (z >> 31)


def row_key(seed: int, step: int) -> int:
    """The noise key of a seeded row at one decoding step (step = tokens generated so far)."""
    return signed64(_splitmix64_int(_splitmix64_int(seed & _MASK64) ^ (step & _MASK64)))


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 values seen as unsigned 64-bit integers."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def race_noise(keys: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """log(E), E ~ Exp(1), of each (row key, token id): [R, 1] int64 keys and [R or 1, K] int64
    ids give [R, K] fp32. splitmix64 of `key + id * golden` gives 23 uniform bits, u = (2 * bits +
    1) / 2**24 (exact in fp32), E = -log(u)."""
    z = keys + token_ids * signed64(_GOLDEN) + signed64(_GOLDEN)
    z = (z ^ _shr(z, 30)) * signed64(_MIX1)
    z = (z ^ _shr(z, 27)) * signed64(_MIX2)
    z = z ^ _shr(z, 31)
    u = (_shr(z, 41) * 2 + 1).to(torch.float32) * (1.0 / (1 << 24))
    return (-torch.log(u)).clamp_min(1e-30).log()


@triton.jit
def race_noise_block(key, ids):
    """`race_noise` of one row's key (int64 scalar) and a block of int64 token ids."""
    z = (key + ids * -7046029254386353131).to(tl.uint64, bitcast=True)  # ids * golden
    z = z + 0x9E3779B97F4A7C15
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    z = z ^ (z >> 31)
    u = ((z >> 41) * 2 + 1).to(tl.float32) * (1.0 / 16777216.0)
    return tl.log(tl.maximum(-tl.log(u), 1e-30))
