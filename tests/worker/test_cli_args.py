"""The worker's command line: dashed flags, LightLLM underscore aliases, clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glm47.worker.build import eos_token_ids
from glm47.worker.cli_args import parse_args
from glm47.worker.model.config import ModelConfig

BASE = ["--listen", "tcp://127.0.0.1:5557", "--model-dir", "/m"]


def test_lightllm_spellings_give_the_same_config_as_dashes() -> None:
    dashed = parse_args(
        [
            *BASE,
            "--device=cpu",
            "--max-req-total-len",
            "4096",
            "--chunked-prefill-size",
            "512",
            "--graph-max-batch-size",
            "64",
            "--mem-fraction",
            "0.8",
            "--prefill-att-backend",
            "triton",
            "--decode-att-backend",
            "triton",
            "--mtp-step",
            "2",
            "--mtp-mode",
            "eagle_with_att",
            "--max-running-requests",
            "32",
            "--disable-prefix-cache",
        ]
    )
    lightllm = parse_args(
        [
            "--listen",
            "tcp://127.0.0.1:5557",
            "--model_dir",
            "/m",
            "--device",
            "cpu",
            "--max_req_total_len",
            "4096",
            "--chunked_prefill_size=512",
            "--graph_max_batch_size",
            "64",
            "--mem_fraction",
            "0.8",
            "--llm_prefill_att_backend",
            "triton",
            "--llm_decode_att_backend",
            "triton",
            "--mtp_step",
            "2",
            "--mtp_mode",
            "eagle_with_att",
            "--max_running_requests",
            "32",
            "--disable_prefix_cache",
            "--tp",
            "1",
        ]
    )
    assert dashed == lightllm
    cfg = dashed.engine
    assert (cfg.max_req_total_len, cfg.chunked_prefill_size, cfg.graph_max_batch_size) == (
        4096,
        512,
        64,
    )
    assert (cfg.prefill_att_backend, cfg.mtp_step, cfg.enable_prefix_cache) == ("triton", 2, False)
    assert cfg.model_dir == "/m" and cfg.dtype == "float32"  # the CPU default


def test_defaults() -> None:
    args = parse_args([*BASE, "--device", "cuda:1"])
    assert args.engine.device == "cuda:1" and args.engine.dtype == "bfloat16"
    assert args.engine.chunked_prefill_size == 8192 and args.engine.max_req_total_len is None
    assert args.worker_id == "worker@tcp://127.0.0.1:5557" and args.log_level == "info"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ([*BASE, "--port", "8000"], "router"),
        ([*BASE, "--host=0.0.0.0"], "router"),
        ([*BASE, "--tool_call_parser", "glm47"], "router"),
        ([*BASE, "--no-such-flag"], "unrecognized"),
        ([*BASE, "--max-req"], "unrecognized"),  # no abbreviations
        ([*BASE, "--tp", "0"], "tp must be >= 1"),
        ([*BASE, "--page-size", "3"], "power of two"),
        ([*BASE, "--shared-expert-overlap-tokens", "-1"], "shared_expert_overlap_tokens must be"),
        ([*BASE, "--shared-expert-fold-tokens", "-2"], "shared_expert_fold_tokens must be"),
        ([*BASE, "--prefill-att-backend", "cudnn"], "invalid choice"),
        (["--model-dir", "/m"], "--listen"),
        (["--listen", "tcp://127.0.0.1:99999", "--model-dir", "/m"], "port must be 0 to 65535"),
        (["--listen", "tcp://127.0.0.1:x", "--model-dir", "/m"], "port must be 0 to 65535"),
        (["--listen", "tcp://127.0.0.1:²", "--model-dir", "/m"], "port must be 0 to 65535"),
        (["--listen", "127.0.0.1:5557", "--model-dir", "/m"], "transport://where"),
    ],
)
def test_bad_flags_exit_with_a_clear_message(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2
    assert says in capsys.readouterr().err


def test_eos_ids_merge_generation_config(tmp_path: Path) -> None:
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 3]}))
    cfg = ModelConfig.__new__(ModelConfig)
    object.__setattr__(cfg, "eos_token_ids", (3, 5))
    assert eos_token_ids(str(tmp_path), cfg) == [3, 5, 7]
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 9}))
    assert eos_token_ids(str(tmp_path), cfg) == [3, 5, 9]


def test_scheduling_and_graph_flags_reach_the_config() -> None:
    args = parse_args([*BASE, "--max-wait-steps", "3", "--segment-graph-max-tokens", "4096"])
    assert args.engine.max_wait_steps == 3
    assert args.engine.segment_graph_max_tokens == 4096
    lightllm = parse_args([*BASE, "--router_max_wait_tokens", "9"])
    assert lightllm.engine.max_wait_steps == 9
    defaults = parse_args(BASE)
    assert defaults.engine.max_wait_steps == 6
    assert defaults.engine.segment_graph_max_tokens == 8192  # the step token budget
    assert defaults.engine.max_running_requests == 1024
    budget = parse_args([*BASE, "--max-num-batched-tokens", "2048"])
    assert budget.engine.segment_graph_max_tokens == 2048
    off = parse_args([*BASE, "--segment-graph-max-tokens", "0"])
    assert off.engine.segment_graph_max_tokens == 0


def test_skinny_gemm_is_off_unless_asked_for() -> None:
    assert not parse_args(BASE).engine.skinny_gemm
    assert parse_args([*BASE, "--skinny-gemm"]).engine.skinny_gemm
    assert parse_args([*BASE, "--skinny_gemm"]).engine.skinny_gemm


def test_shared_expert_overlap_flag_and_its_check() -> None:
    assert parse_args(BASE).engine.shared_expert_overlap_tokens is None  # the runner's default
    off = parse_args([*BASE, "--shared-expert-overlap-tokens", "0"])
    assert off.engine.shared_expert_overlap_tokens == 0
    alias = parse_args([*BASE, "--shared_expert_overlap_tokens", "64"])
    assert alias.engine.shared_expert_overlap_tokens == 64


def test_shared_expert_fold_flag() -> None:
    assert parse_args(BASE).engine.shared_expert_fold_tokens is None  # the runner's default
    assert (
        parse_args([*BASE, "--shared-expert-fold-tokens", "0"]).engine.shared_expert_fold_tokens
        == 0
    )
    alias = parse_args([*BASE, "--shared_expert_fold_tokens", "4"])
    assert alias.engine.shared_expert_fold_tokens == 4


def test_log_stats_flags() -> None:
    assert parse_args(BASE).engine.log_stats_interval == 5.0
    assert parse_args([*BASE, "--log-stats-interval", "2.5"]).engine.log_stats_interval == 2.5
    assert parse_args([*BASE, "--disable-log-stats"]).engine.log_stats_interval == 0.0
    assert parse_args([*BASE, "--log_stats_interval", "1"]).engine.log_stats_interval == 1.0


def test_decode_steps_run_ahead_unless_disabled() -> None:
    assert parse_args(BASE).engine.overlap_schedule
    assert not parse_args([*BASE, "--disable-overlap-schedule"]).engine.overlap_schedule
    assert not parse_args([*BASE, "--disable_overlap_schedule"]).engine.overlap_schedule


def test_server_warmup_is_on_unless_skipped() -> None:
    assert parse_args(BASE).engine.server_warmup
    assert not parse_args([*BASE, "--skip-server-warmup"]).engine.server_warmup


def test_vllm_and_sglang_spellings_are_aliases() -> None:
    vllm = parse_args(
        ["--listen", "tcp://127.0.0.1:5557", "--model", "/m", "--gpu-memory-utilization", "0.8",
         "--max-model-len", "4096", "--enforce-eager", "--max-num-seqs", "64", "--block-size",
         "32", "--no-enable-prefix-caching", "--tensor-parallel-size", "2", "--kv-cache-dtype",
         "auto", "--trust-remote-code", "--speculative-config",
         '{"method": "mtp", "num_speculative_tokens": 2}']
    ).engine  # fmt: skip
    assert (vllm.model_dir, vllm.mem_fraction, vllm.max_req_total_len) == ("/m", 0.8, 4096)
    assert vllm.disable_cuda_graph and not vllm.enable_prefix_cache
    assert (vllm.max_running_requests, vllm.page_size, vllm.tp, vllm.mtp_step) == (64, 32, 2, 2)
    sglang = parse_args(
        ["--listen", "tcp://127.0.0.1:5557", "--model-path", "/m", "--mem-fraction-static",
         "0.85", "--context-length", "8192", "--cuda-graph-max-bs", "64", "--disable-radix-cache",
         "--tp-size", "2", "--speculative-algorithm", "eagle", "--speculative-num-steps", "3"]
    ).engine  # fmt: skip
    assert (sglang.mem_fraction, sglang.max_req_total_len, sglang.graph_max_batch_size) == (
        0.85,
        8192,
        64,
    )
    assert not sglang.enable_prefix_cache and (sglang.tp, sglang.mtp_step) == (2, 3)
    recipe = ["--speculative-algorithm", "EAGLE", "--speculative-eagle-topk", "1",
              "--speculative-num-draft-tokens", "4"]  # fmt: skip
    assert parse_args([*BASE, *recipe]).engine.mtp_step == 3
    assert parse_args([*BASE, *recipe, "--speculative-num-steps", "3"]).engine.mtp_step == 3
    assert parse_args([*BASE, "--enable-prefix-caching"]).engine.enable_prefix_cache
    more = parse_args(
        [*BASE, "--max-total-tokens", "4096", "--schedule-policy", "priority",
         "--enable-chunked-prefill", "--attention-backend", "triton", "--decode-att-backend",
         "flashinfer"]
    ).engine  # fmt: skip
    assert (more.kv_cache_tokens, more.scheduling_policy) == (4096, "priority")
    assert (more.prefill_att_backend, more.decode_att_backend) == ("triton", "flashinfer")
    assert parse_args(BASE).engine.prefill_att_backend == "auto"


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--speculative-config", "{nope"], "not JSON"),
        (["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 2}'], "ngram"),
        (["--speculative-config", '{"method": "mtp"}'], "num_speculative_tokens"),
        (["--speculative-config", '{"model": "x", "num_speculative_tokens": 1}'], "draft model"),
        (["--speculative-config", '{"num_speculative_tokens": 1, "top_k": 2}'], "top_k"),
        (["--mtp-step", "1", "--speculative-config", '{"num_speculative_tokens": 2}'], "differ"),
        (["--speculative-algorithm", "EAGLE"], "--speculative-num-steps"),
        (["--speculative-num-steps", "3", "--speculative-eagle-topk", "4"], "topk 1"),
        (["--speculative-num-steps", "3", "--speculative-num-draft-tokens", "3"], "plus one"),
        (["--speculative-algorithm", "medusa", "--speculative-num-steps", "2"], "invalid choice"),
        (["--kv-cache-dtype", "fp8"], "invalid choice"),
    ],
)
def test_bad_speculative_and_cache_flags_are_refused(
    flags: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_args([*BASE, *flags])
    assert says in capsys.readouterr().err
