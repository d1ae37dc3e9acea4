"""glm47: an OpenAI-compatible inference server for GLM-4.7-Flash.

The Rust parts (tokenizer, chat template, parsers) live in the `glm47._native` extension and are
imported on first use, so the worker can be imported where the extension is not built.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_NATIVE_NAMES = ("Tokenizer", "Glm47ToolParser", "Glm45ReasoningParser")


def __getattr__(name: str) -> Any:
    if name in _NATIVE_NAMES:
        from glm47 import _native

        return getattr(_native, name)
    raise AttributeError(f"module 'glm47' has no attribute {name!r}")
