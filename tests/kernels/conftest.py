"""Kernel tests run on the GPU when one is present, else under the Triton interpreter on the CPU
(chosen in tests/conftest.py, before anything imports triton)."""

from __future__ import annotations

import zlib

import pytest
import torch
from kernel_utils import ON_GPU


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
