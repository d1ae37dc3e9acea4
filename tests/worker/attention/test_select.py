"""Attention backend selection: `auto` resolution and clear errors for what cannot run here."""

from __future__ import annotations

import pytest
import torch

import glm47.worker.attention.select as select
from glm47.worker.attention.base import create_backend
from glm47.worker.attention.fa3_backend import INSTALL_HINT as FA3_HINT

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # only named: nothing here touches a CUDA runtime


def _installed(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Pretend exactly `modules` (plus triton) import."""
    present = {"triton", *modules}
    monkeypatch.setattr(select, "_imports", lambda name: name in present)


def test_auto_on_the_cpu_is_the_torch_reference() -> None:
    assert select.resolve_backends("auto", "auto", CPU) == ("torch", "torch")


def test_explicit_names_that_run_on_the_cpu_pass_through() -> None:
    assert select.resolve_backends("torch", "triton", CPU) == ("torch", "triton")


def test_auto_on_a_hopper_with_fa3_prefills_with_fa3_and_decodes_with_triton(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _installed(monkeypatch, "fa3_fwd_interface")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert select.resolve_backends("auto", "auto", CUDA) == ("fa3", "triton")


def test_auto_falls_back_to_triton_without_fa3_or_off_hopper(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _installed(monkeypatch)
    assert select.resolve_backends("auto", "auto", CUDA) == ("triton", "triton")
    _installed(monkeypatch, "flash_attn_interface")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert select.resolve_backends("auto", "auto", CUDA) == ("triton", "triton")


def test_auto_decodes_with_triton_and_flashinfer_on_a_hopper_with_flashinfer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _installed(monkeypatch, "flashinfer")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    probed: list[str] = []
    chosen = select.resolve_backends("auto", "auto", CUDA, lambda n: probed.append(n) or None)
    assert chosen == ("triton", "triton+flashinfer")
    assert probed == ["triton", "triton+flashinfer"]  # fa3 does not import: never probed
    assert select.resolve_backends("auto", "flashinfer", CUDA)[1] == "flashinfer"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert select.resolve_backends("auto", "auto", CUDA)[1] == "triton"  # measured on Hopper only


def test_auto_passes_over_a_backend_whose_probe_fails_and_says_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _installed(monkeypatch, "flashinfer")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))

    def probe(name: str) -> str | None:
        return "no nvcc to build the kernel" if "flashinfer" in name else None

    with caplog.at_level("WARNING", logger=select.__name__):
        assert select.resolve_backends("auto", "auto", CUDA, probe) == ("triton", "triton")
    assert any("triton+flashinfer passed over: no nvcc" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="no nvcc to build the kernel"):
        select.resolve_backends("auto", "triton+flashinfer", CUDA, probe)


def test_the_flashinfer_probe_runs_once_and_only_for_flashinfer_backends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[int, int, int, int]] = []

    def fake_probe(
        heads: int, rank: int, rope: int, dtype: torch.dtype, device: object, page_size: int
    ) -> None:
        calls.append((heads, rank, rope, page_size))
        raise RuntimeError("FlashInfer's MLA decode does not run here: boom")

    monkeypatch.setattr(select.flashinfer_backend, "probe", fake_probe)
    probe = select.flashinfer_probe(20, 512, 64, torch.bfloat16, CUDA, page_size=32)
    assert probe("triton") is None and probe("fa3") is None
    assert (
        probe("flashinfer")
        == probe("triton+flashinfer")
        == ("FlashInfer's MLA decode does not run here: boom")
    )
    assert calls == [(20, 512, 64, 32)]
    assert select.flashinfer_probe(20, 512, 64, torch.bfloat16, CPU)("flashinfer") is None


def test_a_missing_package_is_an_error_that_names_it_and_the_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _installed(monkeypatch)
    with pytest.raises(ValueError, match="pip install fa3-fwd") as fa3:
        select.resolve_backends("fa3", "auto", CUDA)
    assert "fa3_fwd_interface" in str(fa3.value)
    with pytest.raises(ValueError, match="pip install flashinfer-python"):
        select.resolve_backends("auto", "flashinfer", CUDA)


def test_fa3_off_hopper_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _installed(monkeypatch, "fa3_fwd_interface")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    with pytest.raises(ValueError, match=r"compute capability 9\.x, this GPU has 8\.9"):
        select.resolve_backends("fa3", "triton", CUDA)


@pytest.mark.parametrize("name", ["fa3", "flashinfer"])
def test_gpu_only_backends_are_refused_on_the_cpu(name: str) -> None:
    with pytest.raises(ValueError, match="CUDA devices only"):
        select.resolve_backends(name, "auto", CPU)


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown attention backend 'flash'.*fa3, flashinfer"):
        select.resolve_backends("auto", "flash", CPU)


def test_building_a_backend_whose_package_is_missing_raises_the_hint() -> None:
    if select._imports("fa3_fwd_interface") or select._imports("flash_attn_interface"):
        pytest.skip("FlashAttention-3 is installed here")
    with pytest.raises(ValueError) as err:
        create_backend("fa3")
    assert str(err.value) == FA3_HINT
    if not select._imports("flashinfer"):
        with pytest.raises(ValueError, match="pip install flashinfer-python"):
            create_backend("flashinfer")


def test_the_choice_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger=select.__name__):
        select.resolve_backends("auto", "torch", CPU)
    lines = [r.getMessage() for r in caplog.records if r.name == select.__name__]
    assert lines == [
        "attention backends: prefill=torch (asked auto), decode=torch (asked torch) on cpu"
    ]
