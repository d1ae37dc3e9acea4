"""Tune the fused MoE block configs on this GPU and store them as data.

    python -m glm47.kernels.tune_moe [--tokens 1 32 256 ...] [--experts 64 --hidden 2048
        --inter 1536 --top-k 4] [--out-dir DIR]

For every token count, times each candidate config (moe_config.candidate_configs) on random
routing, then the down GEMM's own tiles beside the fastest (moe_config.down_candidates), and writes
the result into `fused_moe_<gpu>.json` (kernels/configs by default), merged with what is there.
Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from glm47.kernels.fused_moe import tune_config
from glm47.kernels.moe_config import (
    MoeConfig,
    candidate_configs,
    down_candidates,
    save_stored,
    shape_key,
)

# Decode batch sizes first (the tuned file is written after each count), then prompt chunks.
DEFAULT_TOKENS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 8192]


def tune_shape(
    tokens: list[int],
    experts: int,
    hidden: int,
    inter: int,
    top_k: int,
    dtype: torch.dtype,
    gpu: str,
    out_dir: Path | None,
) -> dict[int, MoeConfig]:
    """The fastest config per token count for one expert shape, stored after each count."""
    key = shape_key(experts, hidden, inter, top_k, str(dtype).removeprefix("torch."))
    w13 = torch.randn((experts, 2 * inter, hidden), dtype=dtype, device="cuda") * 0.02
    w2 = torch.randn((experts, hidden, inter), dtype=dtype, device="cuda") * 0.02
    best = {}
    for t in tokens:
        start = time.perf_counter()
        x = torch.randn((t, hidden), dtype=dtype, device="cuda")
        joint = tune_config(x, w13, w2, top_k, candidate_configs(t, experts, top_k))
        best[t] = tune_config(x, w13, w2, top_k, down_candidates(joint, t, experts, top_k))
        path = save_stored(gpu, {key: {t: best[t]}}, out_dir)
        print(f"T={t}: {best[t]} ({time.perf_counter() - start:.1f} s) -> {path}", flush=True)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, nargs="+", default=DEFAULT_TOKENS)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--inter", type=int, default=1536)
    ap.add_argument("--top-k", type=int, default=4)
    ap.add_argument("--out-dir", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    dtype = torch.bfloat16
    gpu = torch.cuda.get_device_name()
    tune_shape(
        args.tokens, args.experts, args.hidden, args.inter, args.top_k, dtype, gpu, args.out_dir
    )


if __name__ == "__main__":
    main()
