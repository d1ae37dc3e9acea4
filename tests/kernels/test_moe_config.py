"""Config selection of the fused MoE: stored data, defaults, and the autotune levels."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from glm47.kernels import moe_config
from glm47.kernels.moe_config import MoeConfig, TuneSettings, select_config
from glm47.worker.config import Env

GPU = "Test GPU 80GB"
STORED = {1: MoeConfig(16, 32, 64, 1, 4, 3), 256: MoeConfig(64, 64, 64, 8, 4, 3)}
TUNED = MoeConfig(32, 128, 128, 4, 8, 2)


@pytest.fixture
def builtin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A built-in config directory holding STORED for "shape-a"."""
    builtin = tmp_path / "builtin"
    monkeypatch.setattr(moe_config, "CONFIG_DIR", builtin)
    moe_config.save_stored(GPU, {"shape-a": STORED})
    yield builtin
    moe_config.configure(None)


def pick(key: str, tokens: int, calls: list[int]) -> MoeConfig:
    def tune(cands: list[MoeConfig]) -> MoeConfig:
        calls.append(len(cands))
        return TUNED

    return select_config(GPU, key, tokens, 64, 4, tune)


def test_level0_uses_nearest_stored_entry_then_defaults(builtin_dir: Path) -> None:
    moe_config.configure(TuneSettings(level=0, extra_dir=None))
    calls: list[int] = []
    assert (builtin_dir / "fused_moe_Test_GPU_80GB.json").exists()
    assert pick("shape-a", 3, calls) == STORED[1]
    assert pick("shape-a", 200, calls) == STORED[256]
    assert pick("shape-b", 3, calls) == moe_config.default_config(3, 64, 4)
    assert calls == []


def test_level1_tunes_missing_shapes_per_bucket_and_stores_them(
    builtin_dir: Path, tmp_path: Path
) -> None:
    extra = tmp_path / "tuned"
    moe_config.configure(TuneSettings(level=1, extra_dir=extra))
    calls: list[int] = []
    assert pick("shape-a", 3, calls) == STORED[1]
    assert pick("shape-b", 3, calls) == TUNED
    assert pick("shape-b", 4, calls) == TUNED  # same bucket: no second tuning
    assert pick("shape-b", 100, calls) == TUNED  # new bucket of a shape this process tunes
    assert len(calls) == 2 and calls[0] > 1
    written = moe_config._read(moe_config.config_path(GPU, extra))
    assert written == {"shape-b": {4: TUNED, 128: TUNED}}


def test_level2_tunes_stored_shapes_too(builtin_dir: Path) -> None:
    moe_config.configure(TuneSettings(level=2, extra_dir=None))
    calls: list[int] = []
    assert pick("shape-a", 3, calls) == TUNED
    assert len(calls) == 1


def test_no_tuning_when_not_allowed_and_nothing_cached(builtin_dir: Path) -> None:
    moe_config.configure(TuneSettings(level=2, extra_dir=None))
    calls: list[int] = []

    def tune(cands: list[MoeConfig]) -> MoeConfig:
        calls.append(len(cands))
        return TUNED

    assert select_config(GPU, "shape-a", 3, 64, 4, tune, may_tune=False) == STORED[1]
    assert select_config(GPU, "shape-b", 3, 64, 4, tune, may_tune=False) == (
        moe_config.default_config(3, 64, 4)
    )
    assert calls == []
    assert select_config(GPU, "shape-a", 3, 64, 4, tune) == TUNED  # allowed later: tunes then
    assert calls != []


def test_extra_directory_entries_win(builtin_dir: Path, tmp_path: Path) -> None:
    extra = tmp_path / "tuned"
    moe_config.save_stored(GPU, {"shape-a": {1: TUNED}}, extra)
    moe_config.configure(TuneSettings(level=0, extra_dir=extra))
    assert pick("shape-a", 1, []) == TUNED
    assert pick("shape-a", 300, []) == STORED[256]


def test_settings_come_from_the_worker_environment() -> None:
    env = Env.from_environ({"LIGHTLLM_TRITON_AUTOTUNE_LEVEL": "2", "GLM47_TUNED_CONFIG_DIR": "/x"})
    assert TuneSettings.from_env(env) == TuneSettings(level=2, extra_dir=Path("/x"))


def test_bad_level_and_bad_config_are_rejected() -> None:
    with pytest.raises(ValueError, match="autotune level"):
        TuneSettings(level=3, extra_dir=None)
    with pytest.raises(ValueError, match="block_n"):
        MoeConfig(16, 24, 64, 1, 4, 3)


def test_a_gpu_without_a_file_reads_its_same_chip_sibling(
    builtin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(moe_config.SAME_CHIP, "Test GPU 141GB", GPU)
    moe_config.configure(TuneSettings(level=0, extra_dir=None))

    def tune(cands: list[MoeConfig]) -> MoeConfig:
        raise AssertionError("level 0 never tunes")

    assert select_config("Test GPU 141GB", "shape-a", 3, 64, 4, tune) == STORED[1]
    assert select_config("Other GPU", "shape-a", 3, 64, 4, tune) == moe_config.default_config(
        3, 64, 4
    )
    # A file of its own wins over the sibling's.
    moe_config.save_stored("Test GPU 141GB", {"shape-a": {1: TUNED}})
    assert select_config("Test GPU 141GB", "shape-a", 3, 64, 4, tune) == TUNED


def test_the_down_gemm_tile_defaults_to_the_gate_up_tile_and_is_stored_only_when_set(
    builtin_dir: Path,
) -> None:
    joint = MoeConfig(16, 32, 128, 8, 4, 4)
    assert joint.down() == joint
    own = MoeConfig(16, 32, 128, 8, 4, 4, down_block_n=64, down_block_k=256, down_num_stages=3)
    assert own.down() == MoeConfig(16, 64, 256, 8, 4, 3)
    assert "down_block_n" not in joint.stored() and own.stored()["down_block_k"] == 256
    assert "down_num_warps" not in own.stored()  # 0: the gate/up GEMM's
    moe_config.save_stored(GPU, {"shape-b": {1: own, 8: joint}})
    assert pick("shape-b", 1, []) == own and pick("shape-b", 8, []) == joint
    with pytest.raises(ValueError, match="down_block_n"):
        MoeConfig(16, 32, 128, 8, 4, 4, down_block_n=24)
    with pytest.raises(ValueError, match="down-GEMM"):
        MoeConfig(16, 32, 128, 8, 4, 4, down_num_warps=3)
    split = MoeConfig(16, 32, 128, 8, 4, 4, down_split_k=4)
    assert split.down() == joint and split.down_splits == 4 and joint.down_splits == 1
    assert split.stored()["down_split_k"] == 4 and "down_split_k" not in joint.stored()
    moe_config.save_stored(GPU, {"shape-c": {1: split}})
    assert pick("shape-c", 1, []) == split
    with pytest.raises(ValueError, match="down_split_k"):
        MoeConfig(16, 32, 128, 8, 4, 4, down_split_k=moe_config.MAX_DOWN_SPLIT_K + 1)


@pytest.mark.parametrize("tokens", [1, 256, 1024])
def test_down_candidates_keep_the_tile_first_and_the_row_block(tokens: int) -> None:
    base = MoeConfig(16, 32, 128, 8, 4, 4)
    cands = moe_config.down_candidates(base, tokens, 64, 4)
    assert cands[0] == base and len(cands) > 1
    assert all(c.block_m == base.block_m and c.block_n == base.block_n for c in cands)
    downs = [(c.down(), c.down_splits) for c in cands]
    assert len(set(downs)) == len(downs)  # no tile and split twice
    # K splits over more programs are searched at decode sizes only (<= 16 rows an expert)
    assert any(c.down_splits > 1 for c in cands) == (tokens * 4 / 64 <= 16)
