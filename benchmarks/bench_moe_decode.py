"""The MoE of a decode step as the model runs it (`kernels.py --only moe_decode`): from the
router's logits, the routing with the pairs' layout (one launch), the two grouped GEMMs and the
top-k sum, with programmatic dependent launch where the GPU has it, replayed from a CUDA graph over
rotating routings (so the experts' weights come from memory, not L2). With and without the shared
expert as one more expert (kernels/moe_decode folds it in at one token); at one token also the GEMMs that rank
their experts themselves (`fused_moe_one_token`, no routing launch)."""

from __future__ import annotations

from functools import partial

import torch
from bench_common import BF16, DEV, EXPERTS, HIDDEN, INTER, TOP_K, Row, graph_ms, row

from glm47.kernels.fused_moe import choose_config, fused_experts, moe_bytes, moe_flops
from glm47.kernels.moe_config import MoeConfig
from glm47.kernels.moe_decode import RoutedExperts, fused_moe_one_token
from glm47.kernels.pdl import pdl_supported, set_pdl
from glm47.kernels.routing import route_align

ROUTINGS = 8  # logits sets a replay cycles through: 8 x 4 x 19 MB, far past the 50 MB of L2
BIAS_SCALE = 0.1
ROUTED_SCALE = 1.8


def _moe(
    x: torch.Tensor,
    logits: torch.Tensor,
    bias: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    shared: tuple[torch.Tensor, torch.Tensor] | None,
    cfg: MoeConfig,
    one_token: bool = False,
) -> torch.Tensor:
    """kernels/moe_decode.fused_moe_from_logits with the config given: with `one_token`, the
    one-token GEMMs that rank their experts themselves, else the routing launch first."""
    if one_token:
        moe = RoutedExperts(bias, TOP_K, True, ROUTED_SCALE, w13, w2, shared)
        return fused_moe_one_token(x, logits, moe, cfg)
    ids, weights, align = route_align(
        logits, bias, TOP_K, True, ROUTED_SCALE, cfg.block_m, shared=shared is not None
    )
    return fused_experts(x, w13, w2, weights, ids, cfg, shared=shared, align=align)


def bench_moe_decode(ceil: dict, tokens: tuple[int, ...] = (1, 2, 4, 8, 16)) -> list[Row]:
    rows: list[Row] = []
    pdl = pdl_supported(torch.device(DEV))
    set_pdl(pdl)
    try:
        w13 = torch.randn((EXPERTS, 2 * INTER, HIDDEN), dtype=BF16, device=DEV) * 0.02
        w2 = torch.randn((EXPERTS, HIDDEN, INTER), dtype=BF16, device=DEV) * 0.02
        shared_w = (
            torch.randn((2 * INTER, HIDDEN), dtype=BF16, device=DEV) * 0.02,
            torch.randn((HIDDEN, INTER), dtype=BF16, device=DEV) * 0.02,
        )
        bias = torch.rand(EXPERTS, device=DEV) * BIAS_SCALE
        for t in tokens:
            x = torch.randn((t, HIDDEN), dtype=BF16, device=DEV)
            sets = [(x, torch.randn((t, EXPERTS), device=DEV) * 2) for _ in range(ROUTINGS)]
            active = sum(
                int(route_align(lg, bias, TOP_K, True, ROUTED_SCALE, 16)[0].unique().numel())
                for _, lg in sets
            ) / len(sets)
            stored = choose_config(x, w13, w2, TOP_K)
            for shared in (None, shared_w):
                experts = active + (shared is not None)
                nbytes = moe_bytes(t, 1, HIDDEN, INTER, TOP_K) - 2 * 3 * HIDDEN * INTER
                nbytes += int(experts * 2 * 3 * HIDDEN * INTER)
                flops = moe_flops(t, HIDDEN, INTER, TOP_K + (shared is not None))
                for one_token in (False, True) if t == 1 else (False,):
                    run = partial(_moe, bias=bias, w13=w13, w2=w2, shared=shared, cfg=stored,
                                  one_token=one_token)  # fmt: skip
                    ms = graph_ms(run, sets)
                    shape = f"T={t} experts={experts:.1f}"
                    what = "ranking GEMMs+sum" if one_token else "routing+GEMMs+sum"
                    variant = f"{what}{' +shared' if shared else ''} pdl={int(pdl)}"
                    rows.append(row("moe_decode", shape, variant, ms, nbytes, flops, ceil))
    finally:
        set_pdl(False)
    return rows
