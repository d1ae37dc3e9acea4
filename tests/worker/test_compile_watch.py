"""CompileWatch: Triton's compile hooks counted during start-up and logged as warnings after."""

from __future__ import annotations

import logging

import pytest

from glm47.worker.compile_watch import CompileWatch


def test_compiles_after_start_up_are_warnings_with_the_specialisation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch = CompileWatch()
    caplog.set_level(logging.DEBUG, logger="glm47.worker.compile_watch")
    assert watch.before(key=("k1", ["i32"]), repr="_kernel_a[num_warps=4](n: i32)") is False
    assert watch.after(key=("k1", ["i32"]), repr="_kernel_a[num_warps=4](n: i32)") is False
    assert (watch.startup_count, watch.serving_count) == (1, 0)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    watch.start_serving()
    assert "1 kernel specialisations compiled during start-up" in caplog.text
    # What Triton 3.6 hands the hooks: a string key and the compile description.
    key = "[('*bf16', 'D'), ('i32', ''), ('constexpr', 64)]{'num_warps': 8}"
    info = {
        "signature": {"x_ptr": "*bf16", "stride": "i32", "BLOCK": "constexpr"},
        "constants": {(2,): 64},
        "configs": [{(0,): [["tt.divisibility", 16]]}],
    }

    class Fn:
        name = "_kernel_b"

    watch.before(key=key, repr="_kernel_b[num_warps=8](x_ptr: ()")
    watch.after(key=key, repr="_kernel_b[num_warps=8](x_ptr: ()", fn=Fn(), compile=info)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "_kernel_b(x_ptr: *bf16/tt.divisibility=16, stride: i32, BLOCK=64)" in warnings[0]
    assert watch.serving_count == 1


def test_install_sets_both_triton_hooks() -> None:
    knobs = pytest.importorskip("triton").knobs
    saved = knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook
    try:
        watch = CompileWatch()
        assert watch.install()
        assert knobs.runtime.jit_cache_hook == watch.before
        assert knobs.runtime.jit_post_compile_hook == watch.after
    finally:
        knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook = saved
