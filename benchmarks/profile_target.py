"""One kernel at a real GLM-4.7-Flash shape, launched a few times: a target for Nsight Compute.

    ncu --clock-control none --kernel-name regex:_mla_decode_split --launch-skip 2 \
        --launch-count 1 --section SpeedOfLight ... python3 benchmarks/profile_target.py mla_decode

`mla_decode --batch B --ctx N [--head-groups G]` runs the decode kernel with its default launch
and head groups (the server's);
`fused_moe --tokens T` runs the fused experts with the stored config for T tokens.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
# `bench_common` is benchmarks/bench_common.py (this script's directory): shapes, paged cache.

from bench_common import (
    BF16,
    D_ROPE,
    EXPERTS,
    HEADS,
    HIDDEN,
    INTER,
    SCALE,
    TOP_K,
    WIDTH,
    paged_cache,
)

from glm47.kernels.device import num_sms
from glm47.kernels.fused_moe import fused_experts
from glm47.kernels.mla_decode import default_num_splits, mla_decode, small_batch_head_groups

PAGE = 16


def run_mla_decode(batch: int, ctx: int, launches: int, head_groups: int | None) -> None:
    if ctx % PAGE:
        raise SystemExit(f"--ctx must be a multiple of the page size {PAGE}")
    cache, table = paged_cache(batch, ctx, PAGE)
    lens = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
    q = torch.randn((batch, HEADS, WIDTH), dtype=BF16, device="cuda")
    splits = default_num_splits(batch, num_sms(q.device))
    if head_groups is None:
        head_groups = small_batch_head_groups(batch, HEADS)
    for _ in range(launches):
        mla_decode(q, cache, table, lens, PAGE, SCALE, d_rope=D_ROPE, num_splits=splits,
                   head_groups=head_groups)  # fmt: skip
    print(f"mla_decode batch {batch} ctx {ctx}: {splits} slices, {head_groups} head groups, "
          f"{launches} launches")  # fmt: skip


def run_fused_moe(tokens: int, launches: int) -> None:
    w13 = torch.randn((EXPERTS, 2 * INTER, HIDDEN), dtype=BF16, device="cuda") * 0.02
    w2 = torch.randn((EXPERTS, HIDDEN, INTER), dtype=BF16, device="cuda") * 0.02
    x = torch.randn((tokens, HIDDEN), dtype=BF16, device="cuda")
    for _ in range(launches):
        ids = torch.rand((tokens, EXPERTS), device="cuda").topk(TOP_K, dim=1).indices.int()
        wts = torch.rand((tokens, TOP_K), device="cuda")
        fused_experts(x, w13, w2, wts, ids)
    print(f"fused_moe tokens {tokens}: {launches} calls")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("kernel", choices=["mla_decode", "fused_moe"])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--tokens", type=int, default=1)
    ap.add_argument("--launches", type=int, default=4)
    ap.add_argument("--head-groups", type=int, default=None,
                    help="mla_decode's head_groups (default: the server's for the batch)")  # fmt: skip
    args = ap.parse_args()
    if args.kernel == "mla_decode":
        run_mla_decode(args.batch, args.ctx, args.launches, args.head_groups)
    else:
        run_fused_moe(args.tokens, args.launches)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
