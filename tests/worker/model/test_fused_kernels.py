"""The model with its fused Triton kernels (RMSNorm + residual, rope, routing; run under the
Triton interpreter on the CPU) against the plain torch path and transformers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from glm47.kernels.mla_decode import (
    DEFAULT_HEAD_GROUPS,
    HEAD_GROUP_MAX_BATCH,
    small_batch_head_groups,
)
from glm47.worker.attention import triton_backend
from glm47.worker.kernel_options import KernelOptions
from glm47.worker.model.layers import linear as linear_module
from glm47.worker.model.layers import moe as moe_module
from glm47.worker.model.layers.linear import Linear
from glm47.worker.model.layers.mlp import DenseMLP
from glm47.worker.model.layers.moe import MoE
from glm47.worker.model.layers.norm import RMSNorm
from glm47.worker.model.layers.rope import InterleavedRope
from glm47.worker.runner import ModelRunner
from tests.worker.model.reference import (
    PageAllocator,
    batch,
    hf_last_logits,
    make_hf_model,
    make_runner,
    save_hf_model,
    seq,
)

# One expert group and a power-of-two top-k: the config the fused routing kernel serves.
FUSABLE = dict(n_group=1, topk_group=1, num_experts_per_tok=2)
PROMPTS = {"a": [3, 17, 42, 8, 91, 5, 60, 22, 13], "b": [7, 7, 30, 2]}
FORCED = [[11, 12], [50, 4], [33, 89]]  # tokens fed at decode steps 1..3


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    model = make_hf_model(seed=5, dtype=torch.float32, **FUSABLE)
    return save_hf_model(model, tmp_path_factory.mktemp("fusable")), model


def runner(path: Path, fused: bool, skinny: bool = False, **kwargs: Any) -> ModelRunner:
    return make_runner(
        path, torch.float32, page_size=4, kv_tokens=256, fused_kernels=fused, skinny_gemm=skinny,
        **kwargs,
    )  # fmt: skip


def session(r: ModelRunner) -> tuple[list[torch.Tensor], list[list[int]]]:
    """Prefill both prompts, then decode the forced tokens; logits and contexts per step."""
    alloc = PageAllocator(r.num_pages, r.page_size, seed=1)
    tokens = {rid: list(p) for rid, p in PROMPTS.items()}
    logits = [r.run_logits(batch(*(seq(alloc, rid, p, 0) for rid, p in PROMPTS.items())))]
    contexts = [list(tokens["a"])]
    for step in FORCED:
        seqs = []
        for rid, tok in zip(PROMPTS, step, strict=True):
            seqs.append(seq(alloc, rid, [tok], len(tokens[rid])))
            tokens[rid].append(tok)
        logits.append(r.run_logits(batch(*seqs)))
        contexts.append(list(tokens["a"]))
    return logits, contexts


def test_fused_kernels_are_switched_on_for_every_norm_rope_and_router(
    model_dir: tuple[Path, object],
) -> None:
    fused = runner(model_dir[0], fused=True)
    flags = [
        m.fused
        for m in fused.model.modules()
        if isinstance(m, (RMSNorm, InterleavedRope, MoE, DenseMLP))
    ]
    assert flags and all(flags)
    plain = runner(model_dir[0], fused=False)
    assert not any(
        m.fused
        for m in plain.model.modules()
        if isinstance(m, (RMSNorm, InterleavedRope, MoE, DenseMLP))
    )


def test_fused_path_matches_torch_path_and_transformers(model_dir: tuple[Path, object]) -> None:
    path, hf = model_dir
    fused_logits, contexts = session(runner(path, fused=True))
    plain_logits, _ = session(runner(path, fused=False))
    for fused, plain, ctx in zip(fused_logits, plain_logits, contexts, strict=True):
        torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fused[0], hf_last_logits(hf, ctx), rtol=1e-3, atol=1e-3)  # type: ignore[arg-type]


def test_skinny_gemm_path_matches_the_library_path(model_dir: tuple[Path, object]) -> None:
    """Every step of the session has at most 16 tokens, so every dense projection (attention's
    and the shared expert's, the latter accumulating into the routed output) takes the kernel;
    qkv_a and o_proj as partials, which the norms after them sum."""
    path, _ = model_dir
    r = runner(path, fused=True, skinny=True)
    linears = {name: m for name, m in r.model.named_modules() if isinstance(m, Linear)}
    assert linears and all(m.skinny for m in linears.values())
    served: set[int] = set()  # the weights the kernel multiplied
    parted: set[int] = set()  # those left as partials to the fused norm after them
    with pytest.MonkeyPatch.context() as mp:
        for fn, seen in (("skinny_gemm", served), ("skinny_gemm_parts", parted)):
            real = getattr(linear_module, fn)
            mp.setattr(
                linear_module,
                fn,
                lambda x, w, real=real, seen=seen, **kw: seen.add(w.data_ptr()) or real(x, w, **kw),
            )
        skinny_logits, _ = session(r)
    assert parted == {
        m.weight.data_ptr()
        for name, m in linears.items()
        if name.endswith(("qkv_a_proj", "o_proj")) and not name.startswith("mtp")
    }
    served |= parted
    # kv_b_proj only feeds the absorbed weights (decode) and prefill expansions, not a forward
    # of its own here; the MTP layer does not run in these steps.
    expected = {
        m.weight.data_ptr()
        for name, m in linears.items()
        if "kv_b_proj" not in name and not name.startswith("mtp")
    }
    assert served == expected, sorted(
        n for n, m in linears.items() if m.weight.data_ptr() not in served
    )
    plain_logits, _ = session(runner(path, fused=True))
    for skinny, plain in zip(skinny_logits, plain_logits, strict=True):
        torch.testing.assert_close(skinny, plain, rtol=1e-4, atol=1e-4)


def test_warmup_runs_prefill_and_extend_steps(
    model_dir: tuple[Path, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    r = runner(model_dir[0], fused=True)
    steps: list[list[tuple[int, int]]] = []  # (start_pos, tokens) of each sequence, per step
    real_run = r.run_logits
    monkeypatch.setattr(
        r,
        "run_logits",
        lambda b: steps.append([(s.start_pos, len(s.token_ids)) for s in b.seqs]) or real_run(b),
    )
    r.warmup(64)  # the start-up warm-up, here on the CPU: prefill sizes up to 64 and an extend
    assert steps[:3] == [[(0, 7)], [(0, 64)], [(4, 20), (1, 3)]]
    monkeypatch.undo()
    logits, _ = session(r)  # the pool it scribbled on still serves correct requests
    reference, _ = session(runner(model_dir[0], fused=True))
    for a, b in zip(logits, reference, strict=True):
        torch.testing.assert_close(a, b)


def test_the_folded_shared_expert_matches_the_unfolded_moe(
    model_dir: tuple[Path, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps of at most 16 tokens (every step here) run the post-attention norm, the router and
    the routing in one launch and the shared expert inside the routed experts' GEMMs; the logits
    are those of the unfolded Triton experts and of transformers."""
    path, hf = model_dir
    folded = runner(path, fused=True, moe_backend="triton", shared_fold_tokens=16)
    moes = [m for m in folded.model.modules() if isinstance(m, MoE)]
    assert moes and all(m.fold_max_tokens == 16 for m in moes)
    calls: list[int] = []
    real = moe_module.fused_moe_from_residual
    monkeypatch.setattr(
        moe_module,
        "fused_moe_from_residual",
        lambda x, *args, **kw: calls.append(x.shape[0]) or real(x, *args, **kw),
    )
    folded_logits, contexts = session(folded)
    assert calls.count(13) == len(moes) and calls.count(2) == 3 * len(moes)  # prefill, 3 decodes
    plain_logits, _ = session(runner(path, fused=True, moe_backend="triton", shared_fold_tokens=0))
    for a, b, ctx in zip(folded_logits, plain_logits, contexts, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(a[0], hf_last_logits(hf, ctx), rtol=1e-3, atol=1e-3)  # type: ignore[arg-type]


def test_the_shared_expert_folds_only_into_the_triton_experts(
    model_dir: tuple[Path, object],
) -> None:
    r = runner(model_dir[0], fused=True, moe_backend="torch", shared_fold_tokens=16)
    assert all(m.fold_max_tokens == 0 for m in r.model.modules() if isinstance(m, MoE))
    r = runner(model_dir[0], fused=False, moe_backend="triton", shared_fold_tokens=16)
    assert all(m.fold_max_tokens == 0 for m in r.model.modules() if isinstance(m, MoE))


def test_kernel_options_resolve_against_the_device(model_dir: tuple[Path, object]) -> None:
    """On the CPU the defaults take the torch paths, nothing overlaps or folds, and no dependent
    launch takes effect; asked for, the fused and skinny paths and the fold do."""
    plain = make_runner(model_dir[0], torch.float32, page_size=4, kv_tokens=256).kernels
    assert plain == KernelOptions(False, False, False, 0, 0, DEFAULT_HEAD_GROUPS)
    asked = runner(
        model_dir[0], fused=True, skinny=True, pdl=True, moe_backend="triton",
        shared_fold_tokens=8, mla_head_groups=3,
    ).kernels  # fmt: skip
    assert asked == KernelOptions(True, True, False, 0, 8, 3)
    assert "folded into the routed experts up to 8" in asked.describe()
    assert "MLA decode head groups up to batch 2 3" in asked.describe()
    groups = [small_batch_head_groups(b, 20) for b in (1, HEAD_GROUP_MAX_BATCH, 3, 16)]
    assert groups == [3, 3, 1, 1]
    assert small_batch_head_groups(1, 1) == 1  # at most a group per head
    with pytest.raises(ValueError, match="shared_fold_tokens"):
        runner(model_dir[0], fused=True, shared_fold_tokens=-1)
    with pytest.raises(ValueError, match="head groups"):
        runner(model_dir[0], fused=True, mla_head_groups=0)
    runner(model_dir[0], fused=True)  # the default again
    assert small_batch_head_groups(1, 20) == DEFAULT_HEAD_GROUPS == 2
    runner(model_dir[0], fused=True, mla_head_groups=1)
    assert small_batch_head_groups(1, 20) == 1


def test_mla_head_groups_give_the_same_logits(model_dir: tuple[Path, object]) -> None:
    """Decode steps with MLA decode's heads over two programs a slice (the default; every decode
    step here has at most two sequences), through the Triton backend: the logits of one program
    for all heads."""
    triton = dict(prefill_backend="triton", decode_backend="triton")
    grouped_runner = runner(model_dir[0], fused=True, mla_head_groups=2, **triton)
    real = triton_backend.mla_decode
    groups: list[int] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            triton_backend,
            "mla_decode",
            lambda *a, **kw: groups.append(kw["head_groups"]) or real(*a, **kw),
        )
        grouped, _ = session(grouped_runner)
    assert groups and set(groups) == {2}
    plain, _ = session(runner(model_dir[0], fused=True, mla_head_groups=1, **triton))
    for g, p in zip(grouped, plain, strict=True):
        torch.testing.assert_close(g, p, rtol=1e-4, atol=1e-4)
