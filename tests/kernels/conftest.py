"""Kernel tests run on the GPU when one is present, else under the Triton interpreter on the CPU.

The interpreter must be chosen before triton is imported, so this file decides it first.
"""

from __future__ import annotations

import os
import shutil
import zlib


def _has_gpu() -> bool:
    return os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") is not None


if not _has_gpu():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from kernel_utils import ON_GPU  # noqa: E402


@pytest.fixture
def device() -> str:
    return "cuda" if ON_GPU else "cpu"


@pytest.fixture
def dtype() -> torch.dtype:
    """bf16 on the GPU; fp16 on the CPU, where the interpreter's bf16 tl.dot is wrong."""
    return torch.bfloat16 if ON_GPU else torch.float16


@pytest.fixture(autouse=True)
def _seed(request: pytest.FixtureRequest) -> None:
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
