"""kernels/penalties.py: the one-pass penalty kernel against its torch reference on fresh random
logits and counts tables, and the reference against the rule written out element by element."""

from __future__ import annotations

import pytest
import torch
from kernel_utils import ON_GPU

from glm47.kernels.penalties import PROMPT_BIT, apply_counts, apply_counts_ref

VOCAB = 5000 if not ON_GPU else 154880


def random_case(
    n: int, slots: int, vocab: int, device: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    logits = torch.randn(n, vocab, device=device) * 4
    logits[:, :7] = torch.tensor([0.0, -0.0, 1e-30, -1e-30, float("-inf"), 50.0, -50.0])
    counts = torch.randint(0, 4, (slots, vocab), dtype=torch.int32, device=device)
    counts *= torch.rand(slots, vocab, device=device) < 0.05  # most tokens unseen
    counts |= (torch.rand(slots, vocab, device=device) < 0.02).int() * PROMPT_BIT
    rows = torch.randint(-1, slots, (n,), device=device)  # -1: a row without penalties
    params = torch.stack(
        [
            torch.rand(n, device=device) + 0.6,  # repetition
            torch.rand(n, device=device) * 2 - 1,  # frequency
            torch.rand(n, device=device) * 2 - 1,  # presence
        ],
        dim=1,
    )
    params[0] = torch.tensor([1.0, 0.0, 0.0])  # penalties that change nothing
    return logits, counts, rows, params


@pytest.mark.parametrize("n", [1, 5, 33])
def test_kernel_equals_the_reference_bit_for_bit(n: int, device: str) -> None:
    logits, counts, rows, params = random_case(n, 6, VOCAB, device)
    got = apply_counts(logits, counts, rows, params)
    want = apply_counts_ref(logits, counts, rows, params)
    assert torch.equal(got, want)
    unpenalised = rows < 0
    assert torch.equal(got[unpenalised], logits[unpenalised])


def test_the_reference_follows_the_rule_token_by_token() -> None:
    logits, counts, rows, params = random_case(4, 3, 64, "cpu")
    rows = torch.tensor([2, -1, 0, 2])
    got = apply_counts_ref(logits, counts, rows, params)
    for r in range(4):
        rep, freq, pres = params[r].tolist()
        for t in range(64):
            x = logits[r, t].item()
            if rows[r] >= 0:
                c = int(counts[rows[r], t])
                n = c & (PROMPT_BIT - 1)
                x = torch.tensor(x, dtype=torch.float32)
                if c:
                    x = x / torch.tensor(rep) if x > 0 else x * torch.tensor(rep)
                x = x - torch.tensor(freq) * n - torch.tensor(pres) * (n > 0)
                x = x.item()
            assert got[r, t].item() == x


def test_bad_shapes_are_refused() -> None:
    logits, counts, rows, params = random_case(3, 2, 16, "cpu")
    with pytest.raises(ValueError, match="penalties"):
        apply_counts_ref(logits, counts[:, :8], rows, params)
    with pytest.raises(ValueError, match="penalties"):
        apply_counts(logits, counts.long(), rows, params)
