"""Suite-wide setup that must happen before any test module imports triton.

Without a GPU, Triton kernels run under the interpreter on CPU tensors. Triton reads
`TRITON_INTERPRET` when it is first imported, and any test (the runner's, the model's) may import
it, so the choice is made here, at the root, before collection.
"""

from __future__ import annotations

import os
import shutil


def _has_gpu() -> bool:
    return os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") is not None


if not _has_gpu():
    os.environ.setdefault("TRITON_INTERPRET", "1")
