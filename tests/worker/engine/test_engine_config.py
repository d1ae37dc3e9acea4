"""EngineConfig validation and defaults, and the Env section."""

from __future__ import annotations

import dataclasses

import pytest

from glm47.worker.config import EngineConfig, Env


def test_max_num_batched_tokens_defaults_to_the_chunked_prefill_size() -> None:
    assert EngineConfig(chunked_prefill_size=1024).max_num_batched_tokens == 1024
    assert EngineConfig(max_num_batched_tokens=300).token_budget == 300
    assert EngineConfig().chunked_prefill_size == 8192 and EngineConfig().page_size == 16


def test_the_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        EngineConfig().page_size = 32  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("page_size", 12, "power of two"),
        ("page_size", 0, "power of two"),
        ("mem_fraction", 1.5, "mem_fraction"),
        ("prefill_att_backend", "cudnn", "prefill_att_backend"),
        ("decode_att_backend", "fa2", "decode_att_backend"),
        ("load_format", "pt", "load_format"),
        ("mtp_mode", "medusa", "mtp_mode"),
        ("mtp_step", -1, "mtp_step"),
        ("max_req_total_len", 1, "max_req_total_len"),
        ("kv_cache_tokens", 8, "at least one page"),
        ("dtype", "int8", "dtype"),
    ],
)
def test_out_of_range_settings_are_rejected(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EngineConfig(**{field: value})  # type: ignore[arg-type]


def test_a_page_size_of_one_is_allowed() -> None:
    assert EngineConfig(page_size=1).page_size == 1


def test_model_limits_fill_max_req_total_len_only_when_unset() -> None:
    assert EngineConfig().with_model_limits(202752).max_req_total_len == 202752
    assert EngineConfig(max_req_total_len=4096).with_model_limits(202752).max_req_total_len == 4096


def test_env_reads_autotune_level_and_load_workers_with_the_lightllm_alias() -> None:
    assert Env.from_environ({}) == Env()
    env = Env.from_environ({"LIGHTLLM_TRITON_AUTOTUNE_LEVEL": "1", "LOADWORKER": "18"})
    assert (env.triton_autotune_level, env.load_workers) == (1, 18)
    both = {"GLM47_TRITON_AUTOTUNE_LEVEL": "2", "LIGHTLLM_TRITON_AUTOTUNE_LEVEL": "1"}
    assert Env.from_environ(both).triton_autotune_level == 2


def test_env_rejects_malformed_values() -> None:
    with pytest.raises(ValueError, match="LOADWORKER must be an integer"):
        Env.from_environ({"LOADWORKER": "many"})
    with pytest.raises(ValueError, match="must be 0, 1 or 2"):
        Env.from_environ({"GLM47_TRITON_AUTOTUNE_LEVEL": "5"})
