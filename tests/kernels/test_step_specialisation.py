"""On the GPU: the MLA and rope-with-KV-write kernels serve every step layout with the specialisations the
first call built. Outside CUDA graphs each step brings another page-table width, split count and
row offset of its sliced metadata; a kernel that specialised on them compiled anew in the middle
of serving (once for 11.5 s). Under the interpreter nothing compiles, so these run on a GPU only."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from kernel_utils import ON_GPU

from glm47.kernels.mla_decode import mla_decode
from glm47.kernels.mla_prefill import mla_prefill
from glm47.kernels.rope import rope_and_cache_, rope_cos_sin
from glm47.worker.compile_watch import CompileWatch

pytestmark = pytest.mark.skipif(not ON_GPU, reason="counts Triton compiles: needs a GPU")

HEADS, D_LAT, D_ROPE, PAGE = 20, 512, 64, 16
MAX_POS = 1024


@pytest.fixture
def compiles() -> Iterator[CompileWatch]:
    from triton import knobs

    saved = knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook
    watch = CompileWatch()
    watch.install()
    try:
        yield watch
    finally:
        knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook = saved


def layout(width: int, rows: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A page table `width` pages wide and sequence lengths filling it, both sliced from `offset`
    rows on (as the second part of a split step is)."""
    table = torch.randint(1, 64, (rows + offset, width), dtype=torch.int32, device="cuda")
    lens = torch.full((rows + offset,), width * PAGE - 3, dtype=torch.int32, device="cuda")
    return table[offset:], lens[offset:]


def new_compiles(watch: CompileWatch, call: Callable[..., None], *args: int) -> int:
    before = watch.startup_count
    call(*args)
    torch.cuda.synchronize()
    return watch.startup_count - before


def test_mla_decode_compiles_once_for_every_step_layout(compiles: CompileWatch) -> None:
    cache = torch.randn((64 * PAGE, D_LAT + D_ROPE), dtype=torch.bfloat16, device="cuda")

    def run(width: int, rows: int, offset: int, splits: int) -> None:
        table, lens = layout(width, rows, offset)
        q = torch.randn((rows, HEADS, D_LAT + D_ROPE), dtype=torch.bfloat16, device="cuda")
        mla_decode(q, cache, table, lens, PAGE, 0.1, d_rope=D_ROPE, num_splits=splits)

    new_compiles(compiles, run, 1, 3, 0, 3)  # builds the variant (or loads it)
    # Widths 1 / 16 / 17, row offsets 0 / 1 / 4, splits 3 and 4 (one merge block size, partial
    # row strides 60 and 80: not and a multiple of 16).
    for width, rows, offset, splits in [(16, 5, 1, 4), (17, 2, 4, 3), (32, 7, 3, 4), (1, 1, 1, 3)]:
        assert new_compiles(compiles, run, width, rows, offset, splits) == 0, (width, offset)


def test_mla_prefill_and_rope_with_kv_write_compile_once_for_every_step_layout(
    compiles: CompileWatch,
) -> None:
    cache = torch.randn((64 * PAGE, D_LAT + D_ROPE), dtype=torch.bfloat16, device="cuda")
    cos_sin = rope_cos_sin(MAX_POS, D_ROPE, 1e6, torch.bfloat16, "cuda")

    def run(width: int, rows: int, offset: int) -> None:
        table, lens = layout(width, rows, offset)
        per_seq = 5
        starts = torch.arange(0, (rows + offset + 1) * per_seq, per_seq, device="cuda")
        loc = starts.int()[offset:] - offset * per_seq
        tokens = rows * per_seq
        q = torch.randn((tokens, HEADS, D_LAT + D_ROPE), dtype=torch.bfloat16, device="cuda")
        mla_prefill(q, cache, table, loc, lens, per_seq, PAGE, 0.1, d_rope=D_ROPE)
        slots = torch.randint(0, 64 * PAGE, (tokens + offset,), device="cuda")[offset:]
        positions = torch.randint(0, MAX_POS, (tokens + offset,), device="cuda")[offset:]
        fresh = torch.randn((tokens + offset, D_LAT + D_ROPE), dtype=torch.bfloat16, device="cuda")
        latent, k_pe = fresh[offset:, :D_LAT], fresh[offset:, D_LAT:]
        rope_and_cache_(q[..., D_LAT:], k_pe, latent, positions, cos_sin, cache, slots)

    new_compiles(compiles, run, 1, 3, 0)
    for width, rows, offset in [(16, 5, 1), (17, 2, 4), (32, 7, 3), (1, 1, 1)]:
        assert new_compiles(compiles, run, width, rows, offset) == 0, (width, offset)
