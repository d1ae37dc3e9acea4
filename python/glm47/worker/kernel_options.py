"""Which of the model's kernel paths a runner switches on: the fused Triton norms, rope and
routing, the skinny products, programmatic dependent launch, and the shared expert's overlap or
fold. The flags ask (None: the device's default); `apply` resolves them against the device,
switches the model and returns what took effect."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch

from glm47.kernels.mla_decode import (
    DEFAULT_HEAD_GROUPS,
    HEAD_GROUP_MAX_BATCH,
    set_small_batch_head_groups,
)
from glm47.kernels.pdl import pdl_supported, set_pdl
from glm47.worker.model.glm4_moe_lite import Glm4MoeLiteForCausalLM

log = logging.getLogger(__name__)

# Steps of at most this many tokens run the shared expert beside the routed experts on a second
# CUDA stream (MoE). On an H200 (run AK, docs/gpu-notes.md) the overlap took 0.15-0.41 ms off
# decode steps of batch 1-128 and added 0.31 ms at batch 256. A decode graph size, since graphed
# steps decide on their padded size.
SHARED_OVERLAP_TOKENS = 128
# Steps of at most this many tokens run the shared expert inside the routed experts' grouped GEMMs,
# after the norm with the router's product and the routing with the pairs' layout (two launches;
# MoE.fold_max_tokens): on a GPU with the Triton experts and the fused routing kernel. On an H100
# (run AZ, docs/gpu-notes.md) that took batch 1 from 5.29 to 5.00 ms and left batch 2, 8 and 16
# within 0.03 ms; batch 4 was 0.14 ms slower. So one-token steps only.
SHARED_FOLD_TOKENS = 1


@dataclass(frozen=True)
class KernelOptions:
    """`fused_kernels`: RMSNorm, rope and routing as Triton kernels (None: on CUDA devices).
    `skinny_gemm`: the products of steps of at most 16 tokens (dense projections, MLA's absorbed
    products, the router) through kernels/skinny_gemm instead of the GEMM library (None: on CUDA
    devices).
    `pdl`: on a GPU that supports it (compute capability 9.0 and up), launch the decode-path
    Triton kernels with programmatic dependent launch (kernels/pdl): each may start while the one
    before it runs, prefetching its weights into L2 until its inputs are ready (None: wherever
    supported).
    `shared_overlap_tokens`: on a GPU, steps of at most this many tokens run the MoE layers'
    shared expert on a second CUDA stream beside the routed experts (None: SHARED_OVERLAP_TOKENS;
    0: never).
    `shared_fold_tokens`: on a GPU with the Triton experts, steps of at most this many tokens run
    the shared expert inside the routed experts' grouped GEMMs instead (None: SHARED_FOLD_TOKENS;
    0: never; takes precedence over the overlap).
    `mla_head_groups`: decode steps of at most HEAD_GROUP_MAX_BATCH (2) sequences split the
    Triton MLA decode kernel's heads over this many programs a slice (kernels/mla_decode
    `head_groups`; None: DEFAULT_HEAD_GROUPS, 2; 1: one program for all heads), process-wide."""

    fused_kernels: bool | None = None
    skinny_gemm: bool | None = None
    pdl: bool | None = None
    shared_overlap_tokens: int | None = None
    shared_fold_tokens: int | None = None
    mla_head_groups: int | None = None

    def apply(self, model: Glm4MoeLiteForCausalLM, device: torch.device) -> KernelOptions:
        """Switch the model's paths for `device`; the options that took effect, none left None."""
        cuda = device.type == "cuda"
        fused = cuda if self.fused_kernels is None else self.fused_kernels
        model.enable_fused_kernels(fused)
        skinny = cuda if self.skinny_gemm is None else self.skinny_gemm
        model.enable_skinny_gemm(skinny)
        pdl = self.pdl is not False and pdl_supported(device)
        if self.pdl and not pdl:
            log.warning("--pdl: %s cannot launch kernels that way; launching plainly", device)
        set_pdl(pdl)
        overlap = (
            SHARED_OVERLAP_TOKENS
            if self.shared_overlap_tokens is None
            else self.shared_overlap_tokens
        )
        overlap = overlap if cuda else 0
        if overlap > 0:
            model.overlap_shared_experts(torch.cuda.Stream(device), overlap)
        fold = self.shared_fold_tokens
        if fold is None:
            fold = SHARED_FOLD_TOKENS if cuda else 0
        if fold < 0:
            raise ValueError(f"shared_fold_tokens must be >= 0, got {fold}")
        fold = model.fold_shared_experts(fold)
        head_groups = DEFAULT_HEAD_GROUPS if self.mla_head_groups is None else self.mla_head_groups
        set_small_batch_head_groups(head_groups)
        return dataclasses.replace(
            self,
            fused_kernels=fused,
            skinny_gemm=skinny,
            pdl=pdl,
            shared_overlap_tokens=overlap,
            shared_fold_tokens=fold,
            mla_head_groups=head_groups,
        )

    def describe(self) -> str:
        """One line for the start-up log."""
        return (
            f"fused norm/rope/routing={self.fused_kernels} skinny gemm={self.skinny_gemm} "
            f"pdl={self.pdl} shared expert overlap up to {self.shared_overlap_tokens} tokens, "
            f"folded into the routed experts up to {self.shared_fold_tokens}, "
            f"MLA decode head groups up to batch {HEAD_GROUP_MAX_BATCH} {self.mla_head_groups}"
        )
