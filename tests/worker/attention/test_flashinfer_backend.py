"""The flashinfer backend's glue (page indices, absorption, plans per step and per captured batch
size) with a torch stand-in for FlashInfer's BatchMLAPagedAttentionWrapper, following its
documented plan/run contract, against the torch reference backend (fp32, CPU)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import glm47.worker.attention.flashinfer_backend as fib
from glm47.worker.attention.base import AttentionMetadata, MLAWeights
from glm47.worker.attention.torch_backend import TorchMLABackend
from glm47.worker.cuda_graph import DecodeGraphInputs

H, NOPE, ROPE, RANK, V, PAGE = 3, 8, 4, 16, 6, 4


class FakeMLAWrapper:
    """Plans copy the layout (into the static buffers in graph mode); runs attend page by page."""

    def __init__(
        self, workspace: torch.Tensor, use_cuda_graph: bool = False, **buffers: torch.Tensor
    ) -> None:
        self.graph = use_cuda_graph
        self.bufs = buffers
        self.plans = 0

    def plan(self, qo_indptr, kv_indptr, kv_indices, kv_len_arr, num_heads, head_dim_ckv,
             head_dim_kpe, page_size, causal, sm_scale, q_data_type, kv_data_type) -> None:  # fmt: skip
        assert (num_heads, head_dim_ckv, head_dim_kpe) == (H, RANK, ROPE)
        if self.graph:
            self.bufs["qo_indptr"].copy_(qo_indptr)
            self.bufs["kv_indptr"].copy_(kv_indptr)
            self.bufs["kv_indices"][: len(kv_indices)].copy_(kv_indices)
            self.bufs["kv_len_arr"].copy_(kv_len_arr)
        else:
            self.bufs = dict(qo_indptr=qo_indptr, kv_indptr=kv_indptr, kv_indices=kv_indices,
                             kv_len_arr=kv_len_arr)  # fmt: skip
        self.page_size, self.causal, self.scale = page_size, causal, sm_scale
        self.plans += 1

    def run(
        self,
        q_nope: torch.Tensor,
        q_pe: torch.Tensor,
        ckv: torch.Tensor,
        kpe: torch.Tensor,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        assert ckv.shape[1:] == (self.page_size, RANK) and kpe.shape[1:] == (self.page_size, ROPE)
        # FlashInfer takes token and head strides; only the last dimension must be dense
        assert q_nope.stride(-1) == q_pe.stride(-1) == 1
        b = self.bufs
        if out is None:
            out = torch.empty_like(q_nope)
        assert out.shape == q_nope.shape and out.stride(-1) == 1
        for i in range(b["kv_len_arr"].shape[0]):
            q0, q1 = int(b["qo_indptr"][i]), int(b["qo_indptr"][i + 1])
            pages = b["kv_indices"][int(b["kv_indptr"][i]) : int(b["kv_indptr"][i + 1])].long()
            n = int(b["kv_len_arr"][i])
            c, r = ckv[pages].reshape(-1, RANK)[:n], kpe[pages].reshape(-1, ROPE)[:n]
            s = (
                torch.einsum("qhc,kc->hqk", q_nope[q0:q1], c)
                + torch.einsum("qhr,kr->hqk", q_pe[q0:q1], r)
            ) * self.scale
            if self.causal:
                qpos = torch.arange(q1 - q0) + n - (q1 - q0)
                s.masked_fill_(torch.arange(n)[None, :] > qpos[:, None], float("-inf"))
            out[q0:q1] = torch.einsum("hqk,kc->qhc", s.softmax(-1), c)
        return out


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch) -> fib.FlashInferMLABackend:
    fake = SimpleNamespace(BatchMLAPagedAttentionWrapper=FakeMLAWrapper)
    monkeypatch.setattr(fib, "load_flashinfer_mla", lambda: fake)
    return fib.FlashInferMLABackend()


def _inputs(t: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q_nope [t, H, NOPE], q_rope [t, H, ROPE] and the new tokens' cache rows [t, RANK + ROPE]."""
    g = torch.Generator().manual_seed(seed)
    q_nope, q_rope = torch.randn(t, H, NOPE, generator=g), torch.randn(t, H, ROPE, generator=g)
    return q_nope, q_rope, torch.randn(t, RANK + ROPE, generator=g)


def _weights() -> MLAWeights:
    kv_b = torch.randn(H, NOPE + V, RANK, generator=torch.Generator().manual_seed(9)) / RANK**0.5
    return MLAWeights(w_uk=kv_b[:, :NOPE], w_uv=kv_b[:, NOPE:])


def test_page_indices_list_the_pages_in_use() -> None:
    inputs = DecodeGraphInputs(4, 3, PAGE, torch.device("cpu"))
    meta = inputs.meta(3)
    meta.seq_lens.copy_(torch.tensor([5, 1, 12], dtype=torch.int32))
    meta.page_table.copy_(torch.tensor([[7, 2, 9], [4, 8, 8], [1, 3, 6]], dtype=torch.int32))
    indptr, indices = fib.page_indices(meta)
    assert indptr.tolist() == [0, 2, 3, 6]
    assert indices.tolist() == [7, 2, 4, 1, 3, 6]


def test_extend_and_decode_steps_match_the_torch_reference(
    backend: fib.FlashInferMLABackend,
) -> None:
    cache = torch.randn(10 * PAGE, RANK + ROPE)
    weights, scale = _weights(), (NOPE + ROPE) ** -0.5
    tables = [[9, 2], [4], [1]]  # cached prefixes 5, 0, 2; new tokens 3, 4, 1
    width = 2
    meta = AttentionMetadata(
        positions=torch.tensor([5, 6, 7, 0, 1, 2, 3, 2]),
        slot_mapping=torch.tensor([2 * PAGE + 1, 2 * PAGE + 2, 2 * PAGE + 3, 16, 17, 18, 19, PAGE + 2]),
        query_start_loc=torch.tensor([0, 3, 7, 8], dtype=torch.int32),
        seq_lens=torch.tensor([8, 4, 3], dtype=torch.int32),
        page_table=torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32),
        page_size=PAGE, max_query_len=4, max_seq_len=8, is_decode=False,
    )  # fmt: skip
    q_nope, q_rope, new_rows = _inputs(8, 0)
    cache[meta.slot_mapping] = new_rows  # the layer's write
    before = cache.clone()
    expected = TorchMLABackend().forward(q_nope, q_rope, cache, weights, meta, scale)
    got = backend.forward(q_nope, q_rope, cache, weights, meta, scale)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert torch.equal(cache, before)  # the backend only reads the cache
    backend.forward(q_nope, q_rope, cache, weights, meta, scale)  # a second layer of the step
    assert backend._eager.plans == 1 and backend._eager.causal


def test_a_captured_batch_size_replans_its_static_buffers_before_each_replay(
    backend: fib.FlashInferMLABackend,
) -> None:
    weights, scale = _weights(), (NOPE + ROPE) ** -0.5
    static = DecodeGraphInputs(4, 3, PAGE, torch.device("cpu"))
    graph_meta = static.meta(4)
    cache = torch.randn(12 * PAGE, RANK + ROPE)
    backend.prepare_graph_replay(graph_meta)  # before capture: shape unknown, nothing planned
    warm = _inputs(4, 1)[:2]
    backend.forward(*warm, cache.clone(), weights, graph_meta, scale)  # warm-up plans
    wrapper = backend._graph_wrappers[4][0]
    assert wrapper.graph and wrapper.plans == 1
    for step, (lens, tables) in enumerate(
        [([6, 3, 9], [[5, 2, 0], [7, 0, 0], [1, 3, 8]]), ([2], [[11]])]
    ):
        b = len(lens)
        step_meta = AttentionMetadata(
            positions=torch.tensor([n - 1 for n in lens]),
            slot_mapping=torch.tensor([t[(n - 1) // PAGE] * PAGE + (n - 1) % PAGE for t, n in zip(tables, lens, strict=False)]),
            query_start_loc=torch.arange(b + 1, dtype=torch.int32),
            seq_lens=torch.tensor(lens, dtype=torch.int32),
            page_table=torch.tensor(tables, dtype=torch.int32),
            page_size=PAGE, max_query_len=1, max_seq_len=max(lens), is_decode=True,
        )  # fmt: skip
        *q, new_rows = _inputs(b, 10 + step)
        ref_cache, fi_cache = cache.clone(), cache.clone()
        ref_cache[step_meta.slot_mapping] = new_rows
        expected = TorchMLABackend().forward(*q, ref_cache, weights, step_meta, scale)
        padded = [torch.cat([x, torch.zeros(4 - b, *x.shape[1:])]) for x in (*q, new_rows)]
        static.fill(torch.zeros(b, dtype=torch.long), step_meta, 4)
        fi_cache[graph_meta.slot_mapping] = padded[2]  # the layer's write: padding rows in page 0
        backend.prepare_graph_replay(graph_meta)  # what the graph runner does before a replay
        assert wrapper.plans == 2 + step and not wrapper.causal
        got = backend.forward(*padded[:2], fi_cache, weights, graph_meta, scale)  # the "replay"
        assert wrapper.plans == 2 + step  # no plan inside the graph
        torch.testing.assert_close(got[:b], expected, atol=1e-5, rtol=1e-4)


def test_the_probe_runs_one_decode_at_the_given_widths_and_checks_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = SimpleNamespace(BatchMLAPagedAttentionWrapper=FakeMLAWrapper)
    monkeypatch.setattr(fib, "load_flashinfer_mla", lambda: fake)
    monkeypatch.setattr(fib, "WORKSPACE_BYTES", 1024)
    fib.probe(H, RANK, ROPE, torch.float32, torch.device("cpu"))  # passes its own check

    class Wrong(FakeMLAWrapper):
        def run(self, *args: torch.Tensor, **kwargs: torch.Tensor | None) -> torch.Tensor:
            return super().run(*args, **kwargs) + 1.0

    fake.BatchMLAPagedAttentionWrapper = Wrong
    with pytest.raises(RuntimeError, match="wrong result on a one-token check"):
        fib.probe(H, RANK, ROPE, torch.float32, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="does not run here"):
        fib.probe(H + 1, RANK, ROPE, torch.float32, torch.device("cpu"))  # the fake's shape check
