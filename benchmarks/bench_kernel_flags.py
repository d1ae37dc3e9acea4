"""The kernel-path flags of the GPU benchmarks (`model_bench.py`, `graph_profile.py`): the
runner's `KernelOptions`, left at the runner's defaults unless given."""

from __future__ import annotations

import argparse

from glm47.worker.kernel_options import KernelOptions


def add_kernel_flags(parser: argparse.ArgumentParser) -> None:
    on_off = dict(action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument(
        "--skinny-gemm",
        **on_off,  # type: ignore[arg-type]
        help="products of steps of at most 16 tokens through kernels/skinny_gemm (default: on)",
    )
    parser.add_argument(
        "--pdl",
        **on_off,  # type: ignore[arg-type]
        help="decode-path Triton kernels with programmatic dependent launch (default: on where "
        "supported)",
    )
    parser.add_argument(
        "--shared-overlap-tokens",
        type=int,
        default=None,
        help="steps of at most this many tokens run the shared expert on a second stream "
        "(default: kernel_options.SHARED_OVERLAP_TOKENS; 0: never)",
    )
    parser.add_argument(
        "--shared-fold-tokens",
        type=int,
        default=None,
        help="steps of at most this many tokens run the shared expert inside the routed experts' "
        "grouped GEMMs (default: kernel_options.SHARED_FOLD_TOKENS; 0: never)",
    )
    parser.add_argument(
        "--mla-head-groups",
        type=int,
        default=None,
        help="decode steps of at most 2 sequences split MLA decode's heads over this many "
        "programs a slice (default: 2)",
    )


def kernel_options(args: argparse.Namespace) -> KernelOptions:
    return KernelOptions(
        skinny_gemm=args.skinny_gemm,
        pdl=args.pdl,
        shared_overlap_tokens=args.shared_overlap_tokens,
        shared_fold_tokens=args.shared_fold_tokens,
        mla_head_groups=args.mla_head_groups,
    )
