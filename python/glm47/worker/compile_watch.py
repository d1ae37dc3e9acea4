"""Which Triton kernels compile, and when: a compile while serving stalls every request in the
step (a new specialisation costs about a second), so each one is logged as a warning with the
kernel's specialisation; those compiled during start-up are counted and timed.

Triton calls `knobs.runtime.jit_cache_hook` before it builds a specialisation the process has not
built yet (from its disk cache or from source) and `jit_post_compile_hook` after."""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)


class CompileWatch:
    def __init__(self) -> None:
        self.serving = False  # set once the worker is ready: later compiles are warnings
        self.startup_count = 0
        self.startup_seconds = 0.0
        self.serving_count = 0
        self._started: dict[Any, float] = {}

    def install(self) -> bool:
        """Hook into Triton; False where Triton (or its hooks) is missing."""
        try:
            from triton import knobs
        except ImportError:
            return False
        knobs.runtime.jit_cache_hook = self.before
        knobs.runtime.jit_post_compile_hook = self.after
        return True

    def before(self, *, key: Any, **_: Any) -> bool:
        self._started[_hashable(key)] = time.perf_counter()
        return False  # True would make Triton skip the compile

    def after(self, *, key: Any, repr: str, fn: Any = None, compile: Any = None, **_: Any) -> bool:
        start = self._started.pop(_hashable(key), None)
        seconds = time.perf_counter() - start if start is not None else 0.0
        what = describe(fn, compile) or repr
        if self.serving:
            self.serving_count += 1
            log.warning("triton kernel compiled while serving (%.2f s): %s", seconds, what)
        else:
            self.startup_count += 1
            self.startup_seconds += seconds
            log.debug("triton kernel compiled (%.2f s): %s", seconds, what)
        return False

    def start_serving(self) -> None:
        log.info(
            "triton: %d kernel specialisations compiled during start-up (%.1f s)",
            self.startup_count,
            self.startup_seconds,
        )
        self.serving = True


def describe(fn: Any, compile: Any) -> str | None:
    """`kernel(arg: type/attributes, constexpr=value, ...)` from what Triton hands its hooks:
    `compile["signature"]` (argument name to type, "constexpr" for constants),
    `compile["constants"]` and `compile["configs"][0]` (both keyed by argument path, e.g. (3,);
    the attributes are the specialisations, such as divisibility by 16). None where they have
    another shape (another Triton version)."""
    try:
        signature = compile["signature"]
        constants = compile["constants"]
        attrs = compile["configs"][0]
        parts = []
        for i, (name, ty) in enumerate(signature.items()):
            if ty == "constexpr":
                parts.append(f"{name}={constants.get((i,))}")
                continue
            marks = "".join(f"/{attr}={value}" for attr, value in attrs.get((i,), []))
            parts.append(f"{name}: {ty}{marks}")
        return f"{fn.name}({', '.join(parts)})"
    except (AttributeError, TypeError, ValueError, KeyError, IndexError):
        return None


def _hashable(key: Any) -> Any:
    try:
        hash(key)
        return key
    except TypeError:
        return repr(key)
