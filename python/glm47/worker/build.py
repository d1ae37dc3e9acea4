"""Building a worker: its model runner (on every tensor-parallel rank) and, on rank 0, the engine
and the `ready` message it announces to routers."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from glm47.worker.cli_args import WorkerArgs
from glm47.worker.config import EngineConfig
from glm47.worker.model.config import ModelConfig
from glm47.worker.model.parallel import SINGLE, TensorParallel
from glm47.worker.tp_worker import StepMirror, rank_device
from glm47.worker.wire import Ready

if TYPE_CHECKING:
    from glm47.worker.engine.engine import Engine
    from glm47.worker.runner import ModelRunner

log = logging.getLogger("glm47.worker")

CPU_KV_CACHE_TOKENS = 16384  # KV capacity on the CPU when --kv-cache-tokens is not given


def eos_token_ids(model_dir: str, model_cfg: ModelConfig) -> list[int]:
    """The model's eos ids: config.json's, plus generation_config.json's when present."""
    ids = set(model_cfg.eos_token_ids)
    gen_path = Path(model_dir) / "generation_config.json"
    if gen_path.is_file():
        raw = json.loads(gen_path.read_text(encoding="utf-8")).get("eos_token_id")
        ids.update([raw] if isinstance(raw, int) else [i for i in raw or [] if isinstance(i, int)])
    return sorted(ids)


def resolve_config(cfg: EngineConfig, model_cfg: ModelConfig) -> EngineConfig:
    """Fill what depends on the model and the device: the length limit, the CPU KV size."""
    cfg = cfg.with_model_limits(model_cfg.max_position_embeddings)
    if cfg.kv_cache_tokens is None and not cfg.device.startswith("cuda"):
        cfg = replace(cfg, kv_cache_tokens=CPU_KV_CACHE_TOKENS)
    return cfg


def make_runner(
    args: WorkerArgs, tp: TensorParallel = SINGLE, model_cfg: ModelConfig | None = None
) -> ModelRunner:
    """This rank's model runner (every tensor-parallel rank builds it the same way, in step);
    `model_cfg`: the model directory's config where the caller has read it already."""
    import torch

    from glm47.worker.runner import ModelRunner

    assert args.engine.model_dir is not None
    model_dir = args.engine.model_dir
    model_cfg = model_cfg or ModelConfig.from_dir(model_dir)
    cfg = resolve_config(args.engine, model_cfg)
    log.info(
        "worker %s: model %s, device %s, dtype %s, attention prefill=%s decode=%s, page size %d",
        args.worker_id,
        model_dir,
        cfg.device,
        cfg.dtype,
        cfg.prefill_att_backend,
        cfg.decode_att_backend,
        cfg.page_size,
    )
    return ModelRunner(
        model_cfg,
        model_dir,
        device=rank_device(cfg.device, tp.rank),
        dtype=getattr(torch, cfg.dtype),
        page_size=cfg.page_size,
        kv_tokens=cfg.kv_cache_tokens,
        mem_fraction=cfg.mem_fraction,
        prefill_backend=cfg.prefill_att_backend,
        decode_backend=cfg.decode_att_backend,
        load_format="dummy" if cfg.load_format == "dummy" else "safetensors",
        seed=cfg.seed,
        graph_max_batch_size=cfg.graph_max_batch_size,
        disable_cuda_graph=cfg.disable_cuda_graph,
        skinny_gemm=cfg.skinny_gemm,
        pdl=cfg.pdl,
        shared_overlap_tokens=cfg.shared_expert_overlap_tokens,
        shared_fold_tokens=cfg.shared_expert_fold_tokens,
        max_req_total_len=cfg.max_req_total_len,
        warmup_tokens=cfg.max_num_batched_tokens or cfg.chunked_prefill_size,
        segment_graph_max_tokens=0 if cfg.disable_cuda_graph else cfg.segment_graph_max_tokens or 0,
        verify_tokens=1 + cfg.mtp_step if cfg.mtp_step > 0 else 0,
        tp=tp,
    )


def build(
    args: WorkerArgs, tp: TensorParallel = SINGLE, mirror: StepMirror | None = None
) -> tuple[Engine, Ready]:
    """Load the model and build runner, sampler and engine; returns the engine and its `ready`.
    Under tensor parallelism this is rank 0, whose runner announces its forward passes through
    `mirror`."""
    from glm47.worker.compile_watch import CompileWatch
    from glm47.worker.engine.engine import Engine
    from glm47.worker.engine.warmup import warm_up
    from glm47.worker.grammar import Grammars
    from glm47.worker.sampling import Sampler

    assert args.engine.model_dir is not None
    model_dir = args.engine.model_dir
    model_cfg = ModelConfig.from_dir(model_dir)
    cfg = resolve_config(args.engine, model_cfg)
    compiles = CompileWatch()
    compiles.install()
    if cfg.mtp_step > 0:
        draft_dir = cfg.mtp_draft_model_dir
        if draft_dir is not None and Path(draft_dir).resolve() != Path(model_dir).resolve():
            raise SystemExit(
                f"--mtp-draft-model-dir {draft_dir}: the MTP layer is read from --model-dir "
                "(the checkpoint's layer num_hidden_layers); a separate draft checkpoint is not "
                "supported"
            )
        if model_cfg.num_nextn_predict_layers < 1:
            raise SystemExit(f"--mtp-step {cfg.mtp_step}: {model_dir} has no MTP layer")
        log.info(
            "speculative decoding: %d draft token(s) per step from the MTP layer (%s: one layer, "
            "chained on its own output past the first draft)",
            cfg.mtp_step,
            cfg.mtp_mode,
        )
    runner = make_runner(args, tp, model_cfg)
    runner.mirror = mirror  # from here on the other ranks follow rank 0's passes
    if cfg.mtp_step > 0 and not runner.can_draft:
        raise SystemExit(f"--mtp-step {cfg.mtp_step}: no MTP layer weights in {model_dir}")
    eos = eos_token_ids(model_dir, model_cfg)
    if cfg.server_warmup and runner.device.type == "cuda":
        # A throwaway engine: the synthetic requests leave no cache entries, counters or sampler
        # state in the one that serves.
        warm_up(Engine(cfg, runner, Sampler(seed=cfg.seed), eos), model_cfg.vocab_size)
    compiles.start_serving()
    grammars = Grammars(model_dir, model_cfg.vocab_size)
    engine = Engine(cfg, runner, Sampler(seed=cfg.seed), eos, grammars)
    ready = Ready(
        model=args.model_name or Path(model_dir).resolve().name,
        vocab_size=model_cfg.vocab_size,
        eos_token_ids=eos,
        max_req_total_len=engine.max_req_total_len,
        max_running_requests=cfg.max_running_requests,
        max_waiting_requests=cfg.max_waiting_requests,
        kv_capacity_tokens=engine.kv_capacity_tokens,
        mtp_step=cfg.mtp_step,
        worker_id=args.worker_id,
    )
    log.info(
        "KV cache %d tokens (%d pages of %d); max_req_total_len %d; eos %s",
        engine.kv_capacity_tokens,
        runner.num_pages,
        cfg.page_size,
        engine.max_req_total_len,
        eos,
    )
    return engine, ready


def check_split(cfg: EngineConfig, size: int) -> None:
    """Raises ValueError when the model's heads or intermediate columns do not split over `size`
    tensor-parallel ranks (before any rank starts)."""
    assert cfg.model_dir is not None
    model = ModelConfig.from_dir(cfg.model_dir)
    tp = TensorParallel(rank=0, size=size)
    tp.part(model.num_attention_heads, "num_attention_heads")
    tp.part(model.intermediate_size, "intermediate_size")
    tp.part(model.moe_intermediate_size, "moe_intermediate_size")
