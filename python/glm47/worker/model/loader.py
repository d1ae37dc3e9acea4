"""Build the model on its device and fill it: from safetensors through the name table, or with
random "dummy" weights of the real shapes.

Checkpoint files are read in parallel by a thread pool of `LOADWORKER` threads (environment,
declared in worker/config.py). Unknown checkpoint keys, missing keys and shape mismatches raise
with the offending names. The MTP layer is loaded when the config declares it and the checkpoint
holds it; its optional copies of the embedding and lm_head are checked and skipped. Under tensor
parallelism each rank reads only its block of the split tensors (model/parallel.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from glm47.worker.config import ENV_LOAD_WORKERS, Env
from glm47.worker.model.config import ModelConfig
from glm47.worker.model.glm4_moe_lite import Glm4MoeLiteForCausalLM
from glm47.worker.model.layers.experts import create_experts_backend
from glm47.worker.model.layers.norm import RMSNorm
from glm47.worker.model.parallel import SINGLE, TensorParallel
from glm47.worker.model.weight_map import (
    Target,
    build_name_table,
    is_mtp_name,
    mtp_duplicate_names,
)

LOAD_WORKERS_ENV = ENV_LOAD_WORKERS  # threads reading checkpoint files
LOAD_FORMATS = ("safetensors", "dummy")
DUMMY_STD = 0.02


class CheckpointError(ValueError):
    """The checkpoint does not match the model: unknown, missing or misshapen tensors."""


def load_workers() -> int:
    """Threads reading checkpoint files (`LOADWORKER`); malformed values raise."""
    return Env.from_environ().load_workers


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_model(
    cfg: ModelConfig,
    *,
    device: torch.device,
    dtype: torch.dtype,
    with_mtp: bool,
    experts_backend: str = "torch",
    tp: TensorParallel = SINGLE,
) -> Glm4MoeLiteForCausalLM:
    """The model (this rank's part of it) with uninitialised parameters, created directly on
    `device` in `dtype`."""
    experts = create_experts_backend(experts_backend)
    with torch.device(device), _default_dtype(dtype):
        model = Glm4MoeLiteForCausalLM(cfg, experts, with_mtp=with_mtp, tp=tp)
    return model.eval()


def load_model(
    cfg: ModelConfig,
    model_dir: str | Path | None,
    *,
    device: torch.device,
    dtype: torch.dtype,
    load_format: str = "safetensors",
    experts_backend: str = "torch",
    seed: int = 0,
    tp: TensorParallel = SINGLE,
) -> Glm4MoeLiteForCausalLM:
    """Build and fill the model (this rank's part). `dummy` needs no files and always includes the
    MTP layer when the config declares one; every rank draws the same values for the same seed,
    so the replicated weights agree."""
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"unknown load_format {load_format!r} (known: {', '.join(LOAD_FORMATS)})")
    if load_format == "dummy":
        model = build_model(
            cfg,
            device=device,
            dtype=dtype,
            with_mtp=cfg.has_mtp,
            experts_backend=experts_backend,
            tp=tp,
        )
        init_dummy_weights(model, seed)
        return model
    if model_dir is None:
        raise ValueError("load_format 'safetensors' needs a model directory")
    files = checkpoint_files(model_dir)
    shapes = read_checkpoint_shapes(files)
    with_mtp = cfg.has_mtp and any(is_mtp_name(cfg, name) for name in shapes)
    model = build_model(
        cfg, device=device, dtype=dtype, with_mtp=with_mtp, experts_backend=experts_backend, tp=tp
    )
    table = build_name_table(cfg, with_mtp)
    params = dict(model.named_parameters())
    plan = plan_load(cfg, table, shapes, params, with_mtp, tp)
    _copy_files(files, plan, params, tp)
    return model


def checkpoint_files(model_dir: str | Path) -> list[Path]:
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {model_dir}")
    return files


def read_checkpoint_shapes(files: list[Path]) -> dict[str, tuple[Path, tuple[int, ...]]]:
    """Tensor name → (file, shape), from the safetensors headers only."""
    shapes: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                if name in shapes:
                    raise CheckpointError(f"tensor {name} appears in {shapes[name][0]} and {path}")
                shapes[name] = (path, tuple(f.get_slice(name).get_shape()))
    return shapes


def plan_load(
    cfg: ModelConfig,
    table: dict[str, Target],
    shapes: dict[str, tuple[Path, tuple[int, ...]]],
    params: dict[str, torch.nn.Parameter],
    with_mtp: bool,
    tp: TensorParallel = SINGLE,
) -> dict[str, Target]:
    """Check names and shapes (a split tensor's whole shape: this rank's block times the ranks);
    return the tensors to copy (checkpoint name → target)."""
    duplicates = mtp_duplicate_names(cfg) if with_mtp else {}
    unknown = sorted(n for n in shapes if n not in table and n not in duplicates)
    if unknown:
        raise CheckpointError(f"unknown checkpoint tensors ({len(unknown)}): {_show(unknown)}")
    missing = sorted(n for n in table if n not in shapes)
    if missing:
        raise CheckpointError(f"missing checkpoint tensors ({len(missing)}): {_show(missing)}")
    wrong = []
    for name, (_, shape) in shapes.items():
        if name in duplicates:
            expected = tuple(params[duplicates[name]].shape)
        else:
            target = table[name]
            expected = tuple(param_slice(params[target.param], target).shape)
            if target.split is not None:
                whole = list(expected)
                whole[target.split] *= tp.size
                expected = tuple(whole)
        if shape != expected:
            wrong.append(f"{name} {list(shape)} (expected {list(expected)})")
    if wrong:
        raise CheckpointError(f"checkpoint tensors of the wrong shape: {_show(wrong)}")
    return {name: table[name] for name in shapes if name in table}


def param_slice(param: torch.Tensor, target: Target) -> torch.Tensor:
    """The view of `param` a checkpoint tensor fills."""
    dst = param.data if target.expert is None else param.data[target.expert]
    if target.rows is not None:
        return dst[target.rows[0] : target.rows[1]]
    if target.shard is None:
        return dst
    rows = dst.shape[0] // target.num_shards
    return dst[target.shard * rows : (target.shard + 1) * rows]


def _copy_files(
    files: list[Path],
    plan: dict[str, Target],
    params: dict[str, torch.nn.Parameter],
    tp: TensorParallel = SINGLE,
) -> None:
    progress = tqdm(total=len(plan), desc="Loading weights", unit="tensor")
    lock = threading.Lock()

    def load_file(path: Path) -> None:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                target = plan.get(name)
                if target is None:
                    continue
                dst = param_slice(params[target.param], target)
                if target.split is None or not tp.enabled:
                    dst.copy_(f.get_tensor(name))
                else:  # read only this rank's block
                    width = dst.shape[target.split]
                    block = slice(tp.rank * width, (tp.rank + 1) * width)
                    part = f.get_slice(name)
                    dst.copy_(part[block] if target.split == 0 else part[:, block])
                with lock:
                    progress.update(1)

    workers = min(load_workers(), len(files))
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="load") as pool:
            for future in [pool.submit(load_file, path) for path in files]:
                future.result()
    finally:
        progress.close()


def init_dummy_weights(model: torch.nn.Module, seed: int) -> None:
    """normal(0, 0.02) everywhere, RMSNorm weights 1, router correction biases 0; generated on the
    parameters' own device."""
    norm_weights = {id(m.weight) for m in model.modules() if isinstance(m, RMSNorm)}
    generators: dict[torch.device, torch.Generator] = {}
    for name, param in model.named_parameters():
        if id(param) in norm_weights:
            param.data.fill_(1.0)
        elif name.endswith("e_score_correction_bias"):
            param.data.zero_()
        else:
            gen = generators.get(param.device)
            if gen is None:
                gen = generators[param.device] = torch.Generator(param.device).manual_seed(seed)
            param.data.normal_(0.0, DUMMY_STD, generator=gen)


def _show(names: list[str], limit: int = 20) -> str:
    more = f", … ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
