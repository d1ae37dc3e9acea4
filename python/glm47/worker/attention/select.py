"""Choosing the attention backends once at start-up.

`resolve_backends(prefill, decode, device)` turns the two flags into registered backend names:
- `auto` on a GPU: prefill `fa3` when FlashAttention-3 imports and the GPU is a Hopper, else
  `triton`; decode the first backend of `AUTO_DECODE_ORDER` that imports and passes the probe:
  `triton+flashinfer` (FlashInfer's MLA kernel for the decode steps that read much cache, where
  it measured faster on an H200, Triton for the others) on a Hopper with FlashInfer, else
  `triton`; `torch` when Triton is missing.
- a probe (given by the caller) runs a backend once at the model's widths: FlashInfer compiles
  its kernel on first use, and a build or launch failure there makes `auto` pass it over (logged)
  and an explicit request a start-up error.
- `auto` on the CPU: `torch`.
- an explicit name is checked: its package must import and its device must fit, else ValueError
  with a message that names the package and how to install it.
The choice is logged once.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

import glm47.worker.attention.fa3_backend as fa3_backend
import glm47.worker.attention.flashinfer_backend as flashinfer_backend
import glm47.worker.attention.torch_backend  # noqa: F401  (registers "torch")
from glm47.worker.attention.base import registered_backends

log = logging.getLogger(__name__)

AUTO_PREFILL_ORDER = ("fa3", "triton", "torch")
AUTO_DECODE_ORDER = ("triton+flashinfer", "triton", "torch")

# Runs a backend once; returns None when it works, else why not.
Probe = Callable[[str], str | None]


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
    # measured against Triton on Hopper only; FlashInfer's MLA kernel there is its sm90 one
    "triton+flashinfer": Requirement(
        modules=flashinfer_backend.REQUIRED_MODULES,
        install=flashinfer_backend.INSTALL_HINT,
        cuda_only=True,
        capability_major=9,
    ),
}


def _register_triton() -> None:
    for module in ("triton_backend", "hybrid"):
        try:
            importlib.import_module(f"glm47.worker.attention.{module}")
        except ImportError as err:
            log.info("attention backend module %s not available: %s", module, err)


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


def flashinfer_probe(
    num_heads: int,
    rank: int,
    rope: int,
    dtype: torch.dtype,
    device: torch.device,
    page_size: int = 16,
) -> Probe:
    """A probe that runs FlashInfer's MLA decode (flashinfer_backend.probe) for the backends that
    use it, once for all of them; the others pass."""
    outcome: list[str | None] = []

    def probe(name: str) -> str | None:
        if "flashinfer" not in name or device.type != "cuda":
            return None
        if not outcome:
            try:
                flashinfer_backend.probe(num_heads, rank, rope, dtype, device, page_size)
                outcome.append(None)
            except (ValueError, RuntimeError) as err:
                outcome.append(str(err))
        return outcome[0]

    return probe


def _resolve_one(
    requested: str, order: tuple[str, ...], device: torch.device, probe: Probe | None
) -> str:
    if requested != "auto":
        reason = unavailable_reason(requested, device)
        if reason is None and probe is not None:
            reason = probe(requested)
        if reason is not None:
            raise ValueError(reason)
        return requested
    if device.type != "cuda":
        return "torch"
    for name in order:
        reason = unavailable_reason(name, device)
        if reason is None and probe is not None:
            reason = probe(name)
            if reason is not None:
                log.warning("attention backend %s passed over: %s", name, reason)
        if reason is None:
            return name
    return "torch"


def resolve_backends(
    prefill: str, decode: str, device: torch.device, probe: Probe | None = None
) -> tuple[str, str]:
    """(prefill backend, decode backend) names for the flags; raises ValueError on an explicit
    request that cannot run here. `probe`, when given, runs each candidate once (see above)."""
    _register_triton()
    chosen = (
        _resolve_one(prefill, AUTO_PREFILL_ORDER, device, probe),
        _resolve_one(decode, AUTO_DECODE_ORDER, device, probe),
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
