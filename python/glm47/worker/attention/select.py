"""Choosing the attention backends once at start-up.

`resolve_backends(prefill, decode, device)` turns the two flags into registered backend names:
- `auto` on a GPU: prefill `fa3` when FlashAttention-3 imports and the GPU is a Hopper, else
  `triton`; decode the first importable backend of `AUTO_DECODE_ORDER` (Triton; FlashInfer joins
  the list once it has been measured faster on the device); `torch` when Triton is missing.
- `auto` on the CPU: `torch`.
- an explicit name is checked: its package must import and its device must fit, else ValueError
  with a message that names the package and how to install it.
The choice is logged once.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass

import torch

import glm47.worker.attention.fa3_backend as fa3_backend
import glm47.worker.attention.flashinfer_backend as flashinfer_backend
import glm47.worker.attention.torch_backend  # noqa: F401  (registers "torch")
from glm47.worker.attention.base import registered_backends

log = logging.getLogger(__name__)

AUTO_PREFILL_ORDER = ("fa3", "triton", "torch")
AUTO_DECODE_ORDER = ("triton", "torch")


@dataclass(frozen=True)
class Requirement:
    """What a backend needs to run."""

    modules: tuple[str, ...]  # at least one must import
    install: str  # how to get it, for the error message
    cuda_only: bool  # runs on CUDA devices only
    capability_major: int | None = None  # needed compute capability major (9 = Hopper)


REQUIREMENTS: dict[str, Requirement] = {
    "torch": Requirement(modules=(), install="", cuda_only=False),
    "triton": Requirement(
        modules=("triton",),
        install="the triton attention backend needs Triton: `pip install triton`",
        cuda_only=False,
    ),
    "fa3": Requirement(
        modules=fa3_backend.REQUIRED_MODULES,
        install=fa3_backend.INSTALL_HINT,
        cuda_only=True,
        capability_major=9,
    ),
    "flashinfer": Requirement(
        modules=flashinfer_backend.REQUIRED_MODULES,
        install=flashinfer_backend.INSTALL_HINT,
        cuda_only=True,
    ),
}


def _register_triton() -> None:
    try:
        importlib.import_module("glm47.worker.attention.triton_backend")
    except ImportError as err:
        log.info("triton attention backend not available: %s", err)


def _imports(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # a broken install (ABI mismatch, missing CUDA library) counts as missing
        return False
    return True


def unavailable_reason(name: str, device: torch.device) -> str | None:
    """None when backend `name` can run on `device`, else why not (with the fix)."""
    if name not in REQUIREMENTS or name not in registered_backends():
        known = ", ".join(sorted(REQUIREMENTS))
        return f"unknown attention backend {name!r} (known: {known})"
    req = REQUIREMENTS[name]
    if req.cuda_only and device.type != "cuda":
        return f"the {name} attention backend runs on CUDA devices only, not {device}"
    if req.modules and not any(_imports(m) for m in req.modules):
        return f"{req.install} (none of {', '.join(req.modules)} can be imported)"
    if req.capability_major is not None:
        major, minor = torch.cuda.get_device_capability(device)
        if major != req.capability_major:
            return (
                f"the {name} attention backend needs compute capability "
                f"{req.capability_major}.x, this GPU has {major}.{minor}"
            )
    return None


def _resolve_one(requested: str, order: tuple[str, ...], device: torch.device) -> str:
    if requested != "auto":
        reason = unavailable_reason(requested, device)
        if reason is not None:
            raise ValueError(reason)
        return requested
    if device.type != "cuda":
        return "torch"
    for name in order:
        if unavailable_reason(name, device) is None:
            return name
    return "torch"


def resolve_backends(prefill: str, decode: str, device: torch.device) -> tuple[str, str]:
    """(prefill backend, decode backend) names for the flags; raises ValueError on an explicit
    request that cannot run here."""
    _register_triton()
    chosen = (
        _resolve_one(prefill, AUTO_PREFILL_ORDER, device),
        _resolve_one(decode, AUTO_DECODE_ORDER, device),
    )
    log.info(
        "attention backends: prefill=%s (asked %s), decode=%s (asked %s) on %s",
        chosen[0],
        prefill,
        chosen[1],
        decode,
        device,
    )
    return chosen
