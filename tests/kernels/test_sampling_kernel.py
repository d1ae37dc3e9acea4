"""kernels/sampling.py: the one-launch sampler against its torch reference (a stable sort of every
row) on fresh random rows, and the reference's draws against the exact kept-set probabilities."""

from __future__ import annotations

import math

import pytest
import torch
from kernel_utils import ON_GPU

from glm47.kernels.race_noise import race_noise
from glm47.kernels.sampling import candidate_width, race_sample, race_sample_ref

VOCAB = 3000 if not ON_GPU else 154880


def params_of(rows: list[dict[str, float]], vocab: int) -> torch.Tensor:
    """[N, 4] fp32: 1 / temperature, top_k (vocab when off), top_p, log(min_p) (-inf when off)."""
    out = []
    for r in rows:
        k = int(r.get("top_k", 0))
        min_p = r.get("min_p", 0.0)
        out.append(
            [
                1.0 / r.get("temperature", 1.0),
                k if 0 < k < vocab else vocab,
                r.get("top_p", 1.0),
                math.log(min_p) if min_p > 0 else -math.inf,
            ]
        )
    return torch.tensor(out, dtype=torch.float32)


def width_of(params: torch.Tensor, vocab: int) -> int:
    return candidate_width([int(k) for k in params[:, 1].tolist()], vocab)


ROWS = [
    {"temperature": 0.7},
    {"temperature": 1.3, "min_p": 0.05},
    {"top_k": 20},
    {"top_k": 40, "top_p": 0.8, "temperature": 0.9},
    {"top_p": 0.9},
    {"top_p": 0.95, "temperature": 1.5},
    {"top_p": 0.5, "min_p": 0.2},
    {"top_k": 5, "min_p": 0.5},
]


@pytest.mark.parametrize(
    "scale", [0.05, 1.0, 6.0]
)  # flat rows (kept sets past the candidates) to peaked
def test_kernel_draws_the_references_tokens(device: str, scale: float) -> None:
    n = 2 * len(ROWS)
    logits = torch.randn(n, VOCAB) * scale
    logits[1::5, :7] = float("-inf")  # banned tokens
    params = params_of(ROWS * 2, VOCAB)
    keys = torch.randint(-(2**62), 2**62, (n,), dtype=torch.int64)
    width = width_of(params, VOCAB)
    ref = race_sample_ref(logits, params, keys)
    for cap in (64, 1024):
        got = race_sample(
            logits.to(device), params.to(device), keys.to(device), width, cap=cap
        ).cpu()
        assert got.tolist() == ref.tolist(), (scale, cap)
        assert torch.isfinite(logits.gather(1, got[:, None])).all()  # never a banned token


def test_candidates_from_every_chunk_are_raced_among(device: str) -> None:
    # Top-p alone on rows whose best tokens lie in different chunks, the kept set well inside
    # the candidates: every draw is a kept token and equals the reference's.
    n, vocab = 12, 9000 if not ON_GPU else 154880  # three chunks or more
    logits = torch.randn(n, vocab)
    hot = torch.tensor([5, vocab // 2 + 3, vocab - 2])  # in the first, a middle and the last chunk
    logits[:, hot] += torch.tensor([13.5, 14.0, 14.0])
    params = params_of([{"top_p": 0.9}] * n, vocab)
    keys = torch.arange(n, dtype=torch.int64) * 7919 + 1
    got = race_sample(logits.to(device), params.to(device), keys.to(device), 0).cpu()
    assert got.tolist() == race_sample_ref(logits, params, keys).tolist()
    assert set(got.tolist()) <= set(hot.tolist()) and len(set(got.tolist())) >= 2


def test_ties_at_the_top_p_boundary_are_all_kept(device: str) -> None:
    # Three tokens tied at the boundary: top-p 0.5 keeps 0, 1, 2, 3, whether the candidates hold
    # them (cap 4) or not (cap 2: the threshold is searched over the whole row).
    vocab = 300
    row = torch.full((vocab,), -30.0)
    row[0] = 2.0
    row[1:4] = 1.0
    n = 48
    logits = row[None].repeat(n, 1)
    params = params_of([{"top_p": 0.5}] * n, vocab)
    keys = torch.arange(n, dtype=torch.int64) * 7919
    for cap in (2, 4):
        got = race_sample(logits.to(device), params.to(device), keys.to(device), 0, cap=cap)
        assert got.tolist() == race_sample_ref(logits, params, keys).tolist()
        assert set(got.tolist()) == {0, 1, 2, 3}


def test_a_flat_row_keeps_the_smallest_prefix_reaching_top_p(device: str) -> None:
    # Uniform over 1000 ids and 2000 others far below: top-p 0.9 keeps exactly those 1000, and with
    # room for 64 candidates the kernel has to find that threshold over the whole row.
    vocab = 3000
    row = torch.full((vocab,), -40.0)
    row[1000:2000] = 0.0
    n = 80
    logits = row[None].repeat(n, 1)
    params = params_of([{"top_p": 0.9}] * n, vocab)
    keys = torch.randint(-(2**62), 2**62, (n,), dtype=torch.int64)
    got = race_sample(logits.to(device), params.to(device), keys.to(device), 0, cap=64).cpu()
    assert got.tolist() == race_sample_ref(logits, params, keys).tolist()
    assert all(1000 <= t < 2000 for t in got.tolist())
    assert len(set(got.tolist())) > 64  # draws over the whole kept set, not the candidates


def _draw_counts(logits: torch.Tensor, row: dict[str, float], draws: int) -> torch.Tensor:
    vocab = logits.shape[0]
    params = params_of([row] * draws, vocab)
    keys = torch.randint(-(2**62), 2**62, (draws,), dtype=torch.int64)
    tokens = race_sample_ref(logits[None].expand(draws, vocab), params, keys)
    return torch.bincount(tokens, minlength=vocab).double()


@pytest.mark.parametrize(
    "row",
    [
        {"temperature": 0.8},
        {"top_k": 3, "temperature": 1.2},
        {"top_p": 0.7},
        {"min_p": 0.3, "temperature": 0.9},
    ],
)
def test_reference_draws_follow_the_kept_sets_probabilities(row: dict[str, float]) -> None:
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -0.5])
    draws = 20000
    counts = _draw_counts(logits, row, draws)
    s = logits / row.get("temperature", 1.0)
    probs = s.softmax(0).double()
    order = probs.argsort(descending=True)
    kept = torch.zeros_like(probs, dtype=torch.bool)
    k = int(row.get("top_k", 0)) or len(probs)
    kept[order[:k]] = True
    if "top_p" in row:
        sub = probs * kept
        sub = sub / sub.sum()
        before = sub[order].cumsum(0) - sub[order]
        kept[order[before >= row["top_p"]]] = False
    if "min_p" in row:
        kept &= probs >= row["min_p"] * probs.max()
    want = probs * kept
    want = want / want.sum()
    assert counts[~kept].sum() == 0
    expected = want[kept] * draws
    chi2 = float(((counts[kept] - expected) ** 2 / expected).sum())
    assert chi2 < 25.0  # about 5 degrees of freedom: far in the tail if the draw is biased


def test_noise_is_a_pure_function_of_key_and_token() -> None:
    keys = torch.tensor([[3], [-5], [2**62]], dtype=torch.int64)
    ids = torch.arange(1000)[None, :]
    a = race_noise(keys, ids)
    b = race_noise(keys, ids.flip(1)).flip(1)
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])
    assert torch.isfinite(a).all()
