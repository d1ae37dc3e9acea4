"""Block configurations of the fused MoE kernels: stored data per GPU and shape, or autotuned.

Stored configs live in `kernels/configs/fused_moe_<gpu>.json` (written by `kernels/tune_moe.py`):
`{shape_key: {num_tokens: config}}`; a lookup takes the entry of the nearest stored token count.
`GLM47_TRITON_AUTOTUNE_LEVEL` (read here and nowhere else) chooses what happens at run time:
0 = stored configs, else built-in defaults; 1 = autotune shapes with no stored entry; 2 = autotune
every shape. Autotuned results are kept for the life of the process.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

AUTOTUNE_ENV = "GLM47_TRITON_AUTOTUNE_LEVEL"
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class MoeConfig:
    """Tile shape and launch settings of the grouped GEMMs (both GEMMs share block_m)."""

    block_m: int  # rows (routed pairs) per program; also the expert padding granule
    block_n: int  # output columns per program
    block_k: int  # reduction step
    group_m: int  # row blocks walked together for L2 reuse of weights
    num_warps: int
    num_stages: int

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n", "block_k"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two >= 16, got {value}")
        if self.group_m < 1 or self.num_warps not in (1, 2, 4, 8, 16) or self.num_stages < 1:
            raise ValueError(f"invalid launch settings in {self}")


def autotune_level() -> int:
    """The autotune level from the environment (0, 1 or 2; unset means 0)."""
    raw = os.environ.get(AUTOTUNE_ENV, "0").strip() or "0"
    if raw not in ("0", "1", "2"):
        raise ValueError(f"{AUTOTUNE_ENV} must be 0, 1 or 2, got {raw!r}")
    return int(raw)


def shape_key(num_experts: int, hidden: int, inter: int, top_k: int, dtype: str) -> str:
    return f"E={num_experts},H={hidden},I={inter},k={top_k},dtype={dtype}"


def gpu_slug(gpu_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", gpu_name).strip("_")


def config_path(gpu_name: str) -> Path:
    return CONFIG_DIR / f"fused_moe_{gpu_slug(gpu_name)}.json"


@cache
def load_stored(gpu_name: str) -> dict[str, dict[int, MoeConfig]]:
    """Every stored config for this GPU, by shape key and token count ({} without a file)."""
    path = config_path(gpu_name)
    if not path.exists():
        return {}
    raw = json.loads(path.read_text())
    return {
        key: {int(m): MoeConfig(**cfg) for m, cfg in table.items()} for key, table in raw.items()
    }


def save_stored(gpu_name: str, table: dict[str, dict[int, MoeConfig]]) -> Path:
    """Write (merge into) this GPU's config file; returns its path."""
    path = config_path(gpu_name)
    raw = json.loads(path.read_text()) if path.exists() else {}
    for key, by_m in table.items():
        entry = raw.setdefault(key, {})
        for m, cfg in sorted(by_m.items()):
            entry[str(m)] = asdict(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(raw, indent=1, sort_keys=True) + "\n")
    load_stored.cache_clear()
    return path


def default_config(num_tokens: int, num_experts: int, top_k: int) -> MoeConfig:
    """Built-in choice by rows per expert: narrow tiles when each expert sees a few rows."""
    rows_per_expert = num_tokens * top_k / max(1, num_experts)
    if rows_per_expert <= 2:
        return MoeConfig(16, 64, 128, 1, 4, 4)
    if rows_per_expert <= 48:
        return MoeConfig(32, 64, 128, 8, 4, 4)
    if rows_per_expert <= 256:
        return MoeConfig(64, 128, 64, 8, 4, 4)
    return MoeConfig(128, 128, 64, 8, 8, 3)


def candidate_configs(num_tokens: int, num_experts: int, top_k: int) -> list[MoeConfig]:
    """The search space of the autotuner (12-16 configs), sized to the rows each expert sees."""
    rows_per_expert = num_tokens * top_k / max(1, num_experts)
    space: tuple[list[int], list[int], list[int], list[tuple[int, int]]]
    if rows_per_expert <= 16:
        space = ([16, 32], [32, 64, 128], [128, 256], [(4, 4)])
    elif rows_per_expert <= 128:
        space = ([32, 64], [64, 128], [64, 128], [(4, 3), (8, 3)])
    else:
        space = ([64, 128], [64, 128], [64, 128], [(4, 3), (8, 3)])
    block_ms, block_ns, block_ks, launches = space
    return [
        MoeConfig(bm, bn, bk, 8, warps, stages)
        for bm in block_ms
        for bn in block_ns
        for bk in block_ks
        for warps, stages in launches
    ]


def nearest(table: dict[int, MoeConfig], num_tokens: int) -> MoeConfig:
    """The entry whose token count is nearest in ratio (log scale)."""
    n = max(1, num_tokens)
    return table[min(table, key=lambda m: max(m, n) / max(1, min(m, n)))]


_TUNED: dict[tuple[str, str, int], MoeConfig] = {}


def bucket(num_tokens: int) -> int:
    """Token counts tuned together: powers of two."""
    return 1 << max(0, (num_tokens - 1).bit_length())


def select_config(
    gpu_name: str,
    key: str,
    num_tokens: int,
    num_experts: int,
    top_k: int,
    tune: Callable[[list[MoeConfig]], MoeConfig],
) -> MoeConfig:
    """The config for one call, following the autotune level; `tune` times the candidates."""
    level = autotune_level()
    stored = load_stored(gpu_name).get(key)
    if level == 0 or (level == 1 and stored):
        if stored:
            return nearest(stored, num_tokens)
        return default_config(num_tokens, num_experts, top_k)
    slot = (gpu_name, key, bucket(num_tokens))
    if slot not in _TUNED:
        _TUNED[slot] = tune(candidate_configs(num_tokens, num_experts, top_k))
    return _TUNED[slot]
