"""The `fa3` MLA backend: FlashAttention-3 over keys and values expanded from the latent cache
(attention/expanded).

Expanded form, for prefill and extend steps (any batch layout works, decode included, but decode is
cheaper absorbed). The kernel comes from `fa3_fwd_interface` (the `fa3-fwd` wheel) or
`flash_attn_interface` (the flash-attn package's Hopper build); any function with the same
signature can be injected, which is how the CPU tests check the gather and expansion against the
torch backend.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch

from glm47.worker.attention.base import register_backend
from glm47.worker.attention.expanded import ExpandedMLA, VarlenAttention

# Modules that provide `flash_attn_varlen_func`, in order of preference.
REQUIRED_MODULES = ("fa3_fwd_interface", "flash_attn_interface")
INSTALL_HINT = (
    "the fa3 attention backend needs FlashAttention-3 for Hopper: `pip install fa3-fwd` "
    "(module fa3_fwd_interface) or flash-attn's hopper build (module flash_attn_interface)"
)


def load_fa3() -> VarlenAttention:
    """The causal varlen FlashAttention-3 call; a missing package raises ValueError with the fix."""
    for module_name in REQUIRED_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        return _causal_varlen(module.flash_attn_varlen_func)
    raise ValueError(INSTALL_HINT)


def _causal_varlen(fn: Callable[..., Any]) -> VarlenAttention:
    def attend(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cu_q: torch.Tensor,
        cu_k: torch.Tensor,
        max_q: int,
        max_k: int,
        scale: float,
    ) -> torch.Tensor:
        out = fn(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=scale, causal=True)
        return out[0] if isinstance(out, tuple) else out  # some versions also return the lse

    return attend


class Fa3MLABackend(ExpandedMLA):
    """Registered as "fa3". Host reads once per step, so it is not captured in CUDA graphs."""

    name = "fa3"
    supports_cuda_graph = False

    def __init__(self, attend: VarlenAttention | None = None) -> None:
        super().__init__(attend if attend is not None else load_fa3())


register_backend("fa3", Fa3MLABackend)
