"""Block configurations of the fused MoE kernels: stored data per GPU and shape, or autotuned.

Stored configs are JSON files `fused_moe_<gpu>.json` (written by `kernels/tune_moe.py`):
`{shape_key: {num_tokens: config}}`; a lookup takes the entry of the nearest stored token count.
They are read from `kernels/configs/` and from `GLM47_TUNED_CONFIG_DIR` (whose entries win).
A GPU with no stored file of its own uses the file of a sibling on the same chip (`SAME_CHIP`:
the H200 is the H100's processor with faster memory, so the same tiles fit its multiprocessors).
The autotune level (`GLM47_TRITON_AUTOTUNE_LEVEL`, or LightLLM's spelling; both declared in
`glm47.worker.config.Env`, the one place that reads the environment) chooses what happens at run
time: 0 = stored configs, else built-in defaults; 1 = autotune shapes with no stored entry;
2 = autotune every shape. Tuned results are kept for the process and, when a tuned-config
directory is set, stored there. Tuning runs kernels: do it (warm up) before CUDA-graph capture.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import cache
from pathlib import Path

from glm47.worker.config import Env

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
MAX_DOWN_SPLIT_K = 8

# GPUs whose stored configs stand in for another's when it has none: same multiprocessors, same
# shared memory per multiprocessor, different memory.
SAME_CHIP: dict[str, str] = {
    "NVIDIA H200": "NVIDIA H100 80GB HBM3",
    "NVIDIA H200 NVL": "NVIDIA H100 80GB HBM3",
    "NVIDIA H100 NVL": "NVIDIA H100 80GB HBM3",
}


@dataclass(frozen=True)
class TuneSettings:
    """How configs are chosen at run time."""

    level: int  # 0, 1 or 2 (see the module docstring)
    extra_dir: Path | None  # searched before CONFIG_DIR; tuned results are written here

    def __post_init__(self) -> None:
        if self.level not in (0, 1, 2):
            raise ValueError(f"autotune level must be 0, 1 or 2, got {self.level}")

    @classmethod
    def from_env(cls, env: Env) -> TuneSettings:
        extra = Path(env.tuned_config_dir) if env.tuned_config_dir else None
        return cls(level=env.triton_autotune_level, extra_dir=extra)


_settings: TuneSettings | None = None


def configure(settings: TuneSettings | None) -> None:
    """Set the tuning settings (the runner passes `TuneSettings.from_env(env)` at start-up);
    None makes the next lookup read the environment again."""
    global _settings
    _settings = settings
    load_stored.cache_clear()
    _TUNED.clear()
    _TUNING.clear()


def current_settings() -> TuneSettings:
    global _settings
    if _settings is None:
        _settings = TuneSettings.from_env(Env.from_environ())
    return _settings


@dataclass(frozen=True)
class MoeConfig:
    """Tile shape and launch settings of the grouped GEMMs (both GEMMs share block_m). The down
    GEMM may have a tile of its own (the `down_` fields; 0 = the gate/up GEMM's value): its N and K
    are the gate/up GEMM's K and N / 2, and at decode sizes another tile can read faster."""

    block_m: int  # rows (routed pairs) per program; also the expert padding granule
    block_n: int  # output columns per program
    block_k: int  # reduction step
    group_m: int  # row blocks walked together for L2 reuse of weights
    num_warps: int
    num_stages: int
    down_block_n: int = 0
    down_block_k: int = 0
    down_num_warps: int = 0
    down_num_stages: int = 0
    # The down GEMM's K split over this many programs a tile (0 or 1: none); the top-k sum adds
    # the fp32 parts (see fused_moe.fused_experts)
    down_split_k: int = 0

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n", "block_k"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two >= 16, got {value}")
        if self.group_m < 1 or self.num_warps not in (1, 2, 4, 8, 16) or self.num_stages < 1:
            raise ValueError(f"invalid launch settings in {self}")
        for name in ("down_block_n", "down_block_k"):
            value = getattr(self, name)
            if value and (value < 16 or value & (value - 1)):
                raise ValueError(f"{name} must be 0 or a power of two >= 16, got {value}")
        if self.down_num_warps not in (0, 1, 2, 4, 8, 16) or self.down_num_stages < 0:
            raise ValueError(f"invalid down-GEMM launch settings in {self}")
        if not 0 <= self.down_split_k <= MAX_DOWN_SPLIT_K:
            raise ValueError(f"down_split_k must be in [0, {MAX_DOWN_SPLIT_K}], got {self}")

    @property
    def down_splits(self) -> int:
        """Programs a tile of the down GEMM's output is split over along K."""
        return max(1, self.down_split_k)

    def down(self) -> MoeConfig:
        """The tile the down GEMM launches with (its own where set; its split: `down_splits`)."""
        return MoeConfig(
            self.block_m,
            self.down_block_n or self.block_n,
            self.down_block_k or self.block_k,
            self.group_m,
            self.down_num_warps or self.num_warps,
            self.down_num_stages or self.num_stages,
        )

    def stored(self) -> dict[str, int]:
        """The fields written to a config file: the down GEMM's own settings only where set."""
        return {k: v for k, v in asdict(self).items() if not (k.startswith("down_") and v == 0)}


def shape_key(num_experts: int, hidden: int, inter: int, top_k: int, dtype: str) -> str:
    return f"E={num_experts},H={hidden},I={inter},k={top_k},dtype={dtype}"


def gpu_slug(gpu_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", gpu_name).strip("_")


def config_path(gpu_name: str, directory: Path | None = None) -> Path:
    return (directory or CONFIG_DIR) / f"fused_moe_{gpu_slug(gpu_name)}.json"


def _read(path: Path) -> dict[str, dict[int, MoeConfig]]:
    if not path.exists():
        return {}
    raw = json.loads(path.read_text())
    return {
        key: {int(m): MoeConfig(**cfg) for m, cfg in table.items()} for key, table in raw.items()
    }


@cache
def load_stored(gpu_name: str) -> dict[str, dict[int, MoeConfig]]:
    """Every stored config for this GPU by shape key and token count; the extra directory wins.
    Without a file of its own, a GPU reads its `SAME_CHIP` sibling's."""
    path = config_path(gpu_name)
    if not path.exists() and gpu_name in SAME_CHIP:
        path = config_path(SAME_CHIP[gpu_name])
    table = _read(path)
    extra = current_settings().extra_dir
    if extra is not None:
        for key, by_m in _read(config_path(gpu_name, extra)).items():
            table.setdefault(key, {}).update(by_m)
    return table


def save_stored(
    gpu_name: str, table: dict[str, dict[int, MoeConfig]], directory: Path | None = None
) -> Path:
    """Write (merge into) this GPU's config file in `directory` (default CONFIG_DIR)."""
    path = config_path(gpu_name, directory)
    raw = json.loads(path.read_text()) if path.exists() else {}
    for key, by_m in table.items():
        entry = raw.setdefault(key, {})
        for m, cfg in sorted(by_m.items()):
            entry[str(m)] = cfg.stored()
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
    """The search space of the autotuner (16 configs), sized to the rows each expert sees. At
    decode sizes the narrow column blocks matter: a program streams BLOCK_N rows of an expert's
    weights, so one token's 4 experts give 4 * 2I / BLOCK_N programs to fill the GPU."""
    rows_per_expert = num_tokens * top_k / max(1, num_experts)
    space: tuple[list[int], list[int], list[int], list[tuple[int, int]]]
    if rows_per_expert <= 16:
        space = ([16, 32], [16, 32, 64, 128], [128, 256], [(4, 4)])
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


def down_candidates(
    cfg: MoeConfig, num_tokens: int, num_experts: int, top_k: int
) -> list[MoeConfig]:
    """The down GEMM's own tiles to try beside `cfg` (which comes first: the search never ends
    worse than it), sized like `candidate_configs`."""
    rows_per_expert = num_tokens * top_k / max(1, num_experts)
    if rows_per_expert <= 16:  # decode sizes: few programs a tile row, so K splits as well
        space = ([16, 32, 64, 128], [64, 128, 256], [(4, 4), (4, 3)], [0, 2, 4])
    else:
        space = ([64, 128], [64, 128], [(4, 3), (8, 3)], [0])
    block_ns, block_ks, launches, splits = space
    found = [cfg]
    for bn in block_ns:
        for bk in block_ks:
            for warps, stages in launches:
                for split in splits:
                    cand = replace(cfg, down_block_n=bn, down_block_k=bk, down_num_warps=warps,
                                   down_num_stages=stages, down_split_k=split)  # fmt: skip
                    if (cand.down(), cand.down_splits) != (cfg.down(), cfg.down_splits):
                        found.append(cand)
    return found


def nearest(table: dict[int, MoeConfig], num_tokens: int) -> MoeConfig:
    """The entry whose token count is nearest in ratio (log scale)."""
    n = max(1, num_tokens)
    return table[min(table, key=lambda m: max(m, n) / max(1, min(m, n)))]


_TUNED: dict[tuple[str, str, int], MoeConfig] = {}  # (gpu, shape key, token bucket) -> config
_TUNING: set[tuple[str, str]] = set()  # shapes tuned by this process


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
    may_tune: bool = True,
) -> MoeConfig:
    """The config for one call, following the autotune level; `tune` times the candidates.
    With `may_tune` off, a call that would tune takes the stored or default config instead,
    and caches nothing."""
    settings = current_settings()
    slot = (gpu_name, key, bucket(num_tokens))
    if slot in _TUNED:
        return _TUNED[slot]
    stored = load_stored(gpu_name).get(key)
    tuning_shape = (gpu_name, key) in _TUNING  # its stored entries were written by this process
    if settings.level == 0 or not may_tune or (settings.level == 1 and stored and not tuning_shape):
        if stored:
            return nearest(stored, num_tokens)
        return default_config(num_tokens, num_experts, top_k)
    _TUNING.add((gpu_name, key))
    _TUNED[slot] = tune(candidate_configs(num_tokens, num_experts, top_k))
    if settings.extra_dir is not None:
        save_stored(gpu_name, {key: {slot[2]: _TUNED[slot]}}, settings.extra_dir)
    return _TUNED[slot]
