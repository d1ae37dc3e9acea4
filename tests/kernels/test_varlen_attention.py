"""varlen_attention (MLA's expanded form) against its torch reference: variable lengths, cached
prefixes, bottom-right causal alignment, head dims that are not powers of two, strided values."""

from __future__ import annotations

import pytest
import torch
from kernel_utils import ON_GPU, rel_err

from glm47.kernels.varlen_attention import default_launch, varlen_attention, varlen_attention_ref

# (heads, d_qk, d_v, [(new tokens, cached prefix)], launch or None for the default)
CASES = (
    [
        (2, 24, 16, [(5, 0), (1, 9), (37, 20)], (16, 16, 4, 1)),
        (3, 32, 32, [(40, 0)], (16, 32, 4, 1)),
        (1, 48, 40, [(7, 3), (2, 0), (16, 16)], (32, 16, 4, 1)),
    ]
    if not ON_GPU
    else [
        (20, 256, 256, [(1000, 0), (1, 4000), (513, 3000), (64, 64)], None),
        (20, 256, 256, [(2048, 0)], None),
        (4, 192, 128, [(300, 77), (129, 0)], None),
    ]
)


def _cu(lengths: list[int], device: str) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32,
                        device=device)  # fmt: skip


@pytest.mark.parametrize(("heads", "d_qk", "d_v", "seqs", "launch"), CASES)
def test_varlen_attention_matches_reference(
    heads: int,
    d_qk: int,
    d_v: int,
    seqs: list[tuple[int, int]],
    launch: tuple[int, int, int, int] | None,
    device: str,
    dtype: torch.dtype,
) -> None:
    new = [n for n, _ in seqs]
    kv = [n + p for n, p in seqs]
    cu_q, cu_k = _cu(new, device), _cu(kv, device)
    q = torch.randn((sum(new), heads, d_qk), dtype=dtype, device=device)
    k = torch.randn((sum(kv), heads, d_qk), dtype=dtype, device=device)
    # v as the backend has it: a strided view of a [S, H, d_qk + d_v] product
    kv_out = torch.randn((sum(kv), heads, d_qk + d_v), dtype=dtype, device=device)
    v = kv_out[..., d_qk:]
    scale = d_qk**-0.5
    out = varlen_attention(q, k, v, cu_q, cu_k, max(new), max(kv), scale, launch=launch)
    ref = varlen_attention_ref(q, k, v, cu_q, cu_k, scale)
    assert out.shape == (sum(new), heads, d_v) and out.dtype == dtype
    assert rel_err(out, ref) < 1e-2


def test_varlen_attention_in_bf16_on_the_cpu_too(device: str) -> None:
    """bf16 inputs (the model's dtype) take fp32 products under the interpreter."""
    cu = _cu([9, 20], device)
    q = torch.randn((29, 2, 32), dtype=torch.bfloat16, device=device)
    k, v = torch.randn_like(q), torch.randn_like(q)
    out = varlen_attention(q, k, v, cu, cu, 20, 20, 0.3, launch=(16, 16, 4, 1))
    assert rel_err(out, varlen_attention_ref(q, k, v, cu, cu, 0.3)) < 2e-2


def test_first_query_of_a_fresh_prompt_sees_only_its_own_key(
    device: str, dtype: torch.dtype
) -> None:
    cu = _cu([6], device)
    q = torch.randn((6, 3, 32), dtype=dtype, device=device)
    k, v = torch.randn_like(q), torch.randn_like(q)
    out = varlen_attention(q, k, v, cu, cu, 6, 6, 0.5, launch=(16, 16, 4, 1))
    torch.testing.assert_close(out[0], v[0])


def test_a_query_after_a_prefix_ignores_later_keys(device: str, dtype: torch.dtype) -> None:
    """Extend: three new tokens after 10 cached ones, at positions 10-12. Key 12 is the last
    query's own; changing it moves that row only."""
    cu_q, cu_k = _cu([3], device), _cu([13], device)
    q = torch.randn((3, 2, 16), dtype=dtype, device=device)
    k = torch.randn((13, 2, 16), dtype=dtype, device=device)
    v = torch.randn((13, 2, 16), dtype=dtype, device=device)
    out = varlen_attention(q, k, v, cu_q, cu_k, 3, 13, 0.25, launch=(16, 16, 4, 1))
    k2, v2 = k.clone(), v.clone()
    k2[12], v2[12] = 0.0, 5.0  # key 12 is seen by the last query (position 12) alone
    out2 = varlen_attention(q, k2, v2, cu_q, cu_k, 3, 13, 0.25, launch=(16, 16, 4, 1))
    torch.testing.assert_close(out2[:2], out[:2], rtol=0, atol=0)
    assert not torch.equal(out2[2], out[2])


def test_empty_batch_and_bad_arguments(device: str, dtype: torch.dtype) -> None:
    q = torch.empty((0, 2, 16), dtype=dtype, device=device)
    cu = torch.zeros(1, dtype=torch.int32, device=device)
    assert varlen_attention(q, q, q, cu, cu, 0, 0, 1.0).shape == (0, 2, 16)
    q = torch.randn((4, 2, 16), dtype=dtype, device=device)
    cu = _cu([4], device)
    with pytest.raises(ValueError, match="int32"):
        varlen_attention(q, q, q, cu.long(), cu, 4, 4, 1.0)
    with pytest.raises(ValueError, match="do not fit"):
        varlen_attention(q, q[:, :1], q, cu, cu, 4, 4, 1.0)
    with pytest.raises(ValueError, match="contiguous"):
        varlen_attention(q, q, q.transpose(1, 2).contiguous().transpose(1, 2), cu, cu, 4, 4, 1.0)
    with pytest.raises(ValueError, match="dtypes"):
        varlen_attention(q, q, q.float(), cu, cu, 4, 4, 1.0)


def test_default_launch_by_head_dim() -> None:
    assert default_launch(256, 256) == (128, 64, 8, 2)
    assert default_launch(64, 64)[0] == 128
