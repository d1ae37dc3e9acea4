"""The arrival counters of the last-program kernels: zeroed once, reused per owner, never first
allocated inside a CUDA graph capture."""

from __future__ import annotations

import pytest
import torch

from glm47.kernels.counters import counters_at_rest, launch_counters


class _CudaOwner:
    """Stands in for a CUDA weight: all `launch_counters` reads of its owner, on the CPU."""

    is_cuda = True
    device = torch.device("cpu")

    def data_ptr(self) -> int:
        return id(self)


def test_counters_are_zeroed_and_reused_per_owner_and_size() -> None:
    w = torch.zeros(4)
    buf = launch_counters("test", w, 3)
    assert buf.dtype == torch.int32 and torch.equal(buf, torch.zeros(3, dtype=torch.int32))
    assert launch_counters("test", w, 3) is buf
    assert launch_counters("other", w, 3) is not buf
    assert launch_counters("test", w, 2) is not buf
    buf[1] = 5  # a launch that left a count behind
    assert not counters_at_rest()
    buf.zero_()
    assert counters_at_rest()


def test_first_counters_inside_a_capture_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Allocated in a capture they would be zeroed only when that graph replays."""
    owner = _CudaOwner()
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    with pytest.raises(RuntimeError, match="eagerly before capturing"):
        launch_counters("test", owner, 1)  # type: ignore[arg-type]
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    buf = launch_counters("test", owner, 1)  # type: ignore[arg-type]
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert launch_counters("test", owner, 1) is buf  # type: ignore[arg-type]
