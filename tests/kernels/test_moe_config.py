"""Config selection of the fused MoE: stored data, defaults, and the autotune levels."""

from __future__ import annotations

from pathlib import Path

import pytest

from glm47.kernels import moe_config
from glm47.kernels.moe_config import MoeConfig, select_config

STORED = {1: MoeConfig(16, 32, 64, 1, 4, 3), 256: MoeConfig(64, 64, 64, 8, 4, 3)}
TUNED = MoeConfig(32, 128, 128, 4, 8, 2)


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(moe_config, "CONFIG_DIR", tmp_path)
    moe_config.load_stored.cache_clear()
    moe_config._TUNED.clear()
    moe_config.save_stored("Test GPU 80GB", {"shape-a": STORED})
    return tmp_path


def pick(key: str, tokens: int, calls: list[int]) -> MoeConfig:
    def tune(cands: list[MoeConfig]) -> MoeConfig:
        calls.append(len(cands))
        return TUNED

    return select_config("Test GPU 80GB", key, tokens, 64, 4, tune)


def test_level0_uses_nearest_stored_entry_then_defaults(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(moe_config.AUTOTUNE_ENV, raising=False)
    calls: list[int] = []
    assert (config_dir / "fused_moe_Test_GPU_80GB.json").exists()
    assert pick("shape-a", 3, calls) == STORED[1]
    assert pick("shape-a", 200, calls) == STORED[256]
    assert pick("shape-b", 3, calls) == moe_config.default_config(3, 64, 4)
    assert calls == []


def test_level1_tunes_only_missing_shapes_once(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(moe_config.AUTOTUNE_ENV, "1")
    calls: list[int] = []
    assert pick("shape-a", 3, calls) == STORED[1]
    assert pick("shape-b", 3, calls) == TUNED
    assert pick("shape-b", 4, calls) == TUNED
    assert len(calls) == 1 and calls[0] > 1


def test_level2_tunes_stored_shapes_too(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(moe_config.AUTOTUNE_ENV, "2")
    calls: list[int] = []
    assert pick("shape-a", 3, calls) == TUNED
    assert len(calls) == 1


def test_bad_level_and_bad_config_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(moe_config.AUTOTUNE_ENV, "3")
    with pytest.raises(ValueError, match="GLM47_TRITON_AUTOTUNE_LEVEL"):
        moe_config.autotune_level()
    with pytest.raises(ValueError, match="block_n"):
        MoeConfig(16, 24, 64, 1, 4, 3)
