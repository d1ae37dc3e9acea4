"""Whole-model timings on the GPU with dummy weights of the real GLM-4.7-Flash shapes.

Decode: one step (CUDA-graph replay of the forward plus lm_head on every row) at each batch size,
every sequence with `--context` cached tokens of random latents; median of `--iters` steps timed
with CUDA events, and the same step without graphs. Next to it the byte floor of a step:
always-read weights + the routed experts the batch touches (expected distinct experts per MoE
layer with uniform routing: E(1 - (1 - k/E)^B)) + the embedding rows + the cached latents read
(B x context x 576 x 2 bytes x layers), over the device-to-device copy bandwidth measured in the
same run.

Prefill: one `--prefill-tokens` chunk of a fresh prompt, per available prefill backend ("triton"
choosing its form per step, "triton absorbed" with the absorbed form forced, "fa3"), next to its
FLOP floor: 2 x active matmul parameters x tokens + causal attention in the expanded form
(2 x heads x pairs x (qk + v head dims) per layer), over the bf16 matmul rate measured here.

The model is the real config without the MTP layer (not used by plain decoding). The KV pool holds
what memory leaves: when B x context exceeds it, sequences share page sets (column kv_sets), which
lets some KV reads hit L2 and flatters those rows.

    python3 benchmarks/model_bench.py [--batches 1,8,32,128,256,512] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import time_cuda, time_cuda_back_to_back
from bench_kernel_flags import add_kernel_flags, kernel_options
from bench_model import GLM47_FLASH_CONFIG

from glm47.worker.attention.base import create_backend
from glm47.worker.attention.select import unavailable_reason
from glm47.worker.attention.triton_backend import TritonMLABackend
from glm47.worker.batch import ScheduledBatch, ScheduledSeq
from glm47.worker.kernel_options import KernelOptions
from glm47.worker.model.config import ModelConfig
from glm47.worker.runner import ModelRunner
from glm47.worker.step_inputs import StepInputs

PAGE_SIZE = 16


@dataclass
class Ceilings:
    copy_bytes_per_s: float  # bytes read + written per second, 1 GiB device-to-device copy
    matmul_flops_per_s: float  # 8192^3 bf16 matmul on random data


@dataclass
class DecodeRow:
    batch: int
    step_ms: float
    floor_ms: float
    tok_per_s: float
    prepare_ms: float  # host-side batch layout (runner.prepare), not in step_ms
    kv_sets: int  # distinct page sets among the batch's sequences
    graphed: bool
    eager_ms: float  # the same step without CUDA graphs
    queued_ms: float  # a step's share of consecutive steps queued back to back (graphed)


@dataclass
class AltDecodeRow:
    backend: str
    batch: int
    eager_ms: float  # the decode step without CUDA graphs, this backend's attention


@dataclass
class VerifyRow:
    """A verification step of speculative decoding: every sequence computes its last token and
    tokens - 1 drafts (MTP), logits at all of them."""

    batch: int
    tokens: int  # per sequence
    step_ms: float
    graphed: bool  # replayed a verification graph


@dataclass
class PrefillRow:
    backend: str
    ms: float
    floor_ms: float
    tok_per_s: float


def measure_ceilings() -> Ceilings:
    src = torch.randn(2**29, dtype=torch.bfloat16, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    copy_ms = time_cuda(lambda: dst.copy_(src), iters=10)
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    mm_ms = time_cuda(lambda: a @ b, iters=10)
    return Ceilings(2 * 2**30 / (copy_ms / 1e3), 2 * 8192**3 / (mm_ms / 1e3))


def model_config() -> ModelConfig:
    raw = dict(GLM47_FLASH_CONFIG)
    raw["num_nextn_predict_layers"] = 0
    return ModelConfig.from_dict(raw)


def moe_layer_count(cfg: ModelConfig) -> int:
    return sum(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers))


@dataclass(frozen=True)
class WeightBytes:
    always: int  # read every step whatever the batch: all but embeddings and routed experts
    embed_row: int  # one embedding row
    expert: int  # one routed expert (gate, up, down)
    active_params: int  # matmul parameters per token: always-read minus lm_head, plus k experts


def weight_bytes(runner: ModelRunner) -> WeightBytes:
    cfg = runner.cfg
    always = always_params = lm_head = embed_row = routed = routed_params = 0
    for name, p in runner.model.named_parameters():
        size = p.numel() * p.element_size()
        if name.endswith((".w13", ".w2")):  # [E, ...] fused routed experts of one layer
            routed += size
            routed_params += p.numel()
        elif name.endswith("embed_tokens.weight"):
            embed_row = size // p.shape[0]
        else:
            always += size
            always_params += p.numel()
            if name.endswith("lm_head.weight"):
                lm_head = p.numel()
    moe_layers = moe_layer_count(cfg)
    e, k = cfg.n_routed_experts, cfg.num_experts_per_tok
    active = always_params - lm_head + k * routed_params // e
    return WeightBytes(always, embed_row, routed // (e * moe_layers), active)


def decode_floor_ms(
    runner: ModelRunner, w: WeightBytes, batch: int, context: int, bw: float
) -> float:
    cfg = runner.cfg
    e, k = cfg.n_routed_experts, cfg.num_experts_per_tok
    experts = e * (1.0 - (1.0 - k / e) ** batch) * moe_layer_count(cfg)
    kv = batch * context * cfg.kv_cache_dim * runner.kv_cache.element_size() * cfg.num_hidden_layers
    total = w.always + batch * w.embed_row + experts * w.expert + kv
    return total / bw * 1e3


def prefill_floor_ms(runner: ModelRunner, w: WeightBytes, tokens: int, flops: float) -> float:
    cfg = runner.cfg
    pairs = tokens * (tokens + 1) // 2
    attn = 2 * cfg.num_attention_heads * pairs * (cfg.qk_head_dim + cfg.v_head_dim)
    total = 2 * w.active_params * tokens + attn * cfg.num_hidden_layers
    return total / flops * 1e3


def build_runner(
    batches: list[int],
    context: int,
    options: KernelOptions,
    graphs: bool = True,
    verify_tokens: int = 0,
    decode_backend: str = "auto",
) -> ModelRunner:
    """Dummy weights on the GPU, the KV pool from what memory leaves, graphs at `batches` (and
    verification graphs of `verify_tokens` tokens a sequence, when given)."""
    return ModelRunner(
        model_config(),
        None,
        device="cuda",
        dtype=torch.bfloat16,
        page_size=PAGE_SIZE,
        load_format="dummy",
        prefill_backend="triton",
        decode_backend=decode_backend,
        graph_max_batch_size=max(batches),
        graph_batch_sizes=batches,
        max_req_total_len=context + PAGE_SIZE,
        disable_cuda_graph=not graphs,
        verify_tokens=verify_tokens,
        **asdict(options),
    )


def build_runner_or_eager(
    batches: list[int],
    context: int,
    options: KernelOptions,
    verify_tokens: int = 0,
    decode_backend: str = "auto",
) -> ModelRunner:
    """With decode graphs; if capturing fails, eagerly (the decode rows then say graph False)."""
    try:
        return build_runner(batches, context, options, True, verify_tokens, decode_backend)
    except RuntimeError as err:
        print(f"building with CUDA graphs failed, timing eager decode instead: {err}")
    gc.collect()  # the failed runner's frames are gone with the exception: free its memory
    torch.cuda.empty_cache()
    return build_runner(batches, context, options, False, decode_backend=decode_backend)


def decode_batch(runner: ModelRunner, batch: int, context: int) -> tuple[ScheduledBatch, int]:
    """`batch` sequences at position `context`; page set i % kv_sets (page 0 is padding)."""
    pages = -(-(context + 1) // PAGE_SIZE)
    kv_sets = max(1, min(batch, (runner.num_pages - 1) // pages))
    gen = torch.Generator().manual_seed(batch)
    ids = torch.randint(0, runner.cfg.vocab_size, (batch,), generator=gen).tolist()
    seqs = []
    for i in range(batch):
        first = 1 + (i % kv_sets) * pages
        table = list(range(first, first + pages))
        seqs.append(ScheduledSeq(f"d{i}", [ids[i]], context, table, sample=True))
    return ScheduledBatch(seqs), kv_sets


def fresh_ids(inputs: StepInputs, vocab: int) -> Callable[[], object]:
    """What writes other random tokens into a step's inputs, in place."""
    return lambda: inputs.input_ids.random_(0, vocab)


def logits_step(runner: ModelRunner, inputs: StepInputs) -> Callable[[], torch.Tensor]:
    """What one timed step computes: the forward pass and the logits of the sampled rows, as a
    served step does (in the decode graph where it computes them)."""

    def step() -> torch.Tensor:
        return runner.forward_sampled(inputs)[1]

    return step


@torch.inference_mode()
def run_decode(
    runner: ModelRunner,
    w: WeightBytes,
    ceil: Ceilings,
    batch: int,
    context: int,
    iters: int,
    fresh_tokens: bool = False,
) -> DecodeRow:
    """With `fresh_tokens`, every timed step decodes other random tokens: other experts in
    every layer, as consecutive tokens of a served sequence take; else the same tokens each
    step (the same experts: what a step reads may be left in L2 or asked for ahead by the
    one before)."""
    step, kv_sets = decode_batch(runner, batch, context)
    start = time.perf_counter()
    inputs = runner.prepare(step)
    prepare_ms = (time.perf_counter() - start) * 1e3
    graphed = runner.graphs is not None and runner.graphs.can_run(inputs.input_ids, inputs.meta)
    one_step = logits_step(runner, inputs)
    vocab = runner.cfg.vocab_size
    before = fresh_ids(inputs, vocab) if fresh_tokens else None
    ms = time_cuda(one_step, iters, before=before)
    queued_ms = time_cuda_back_to_back(one_step, max(5, iters // 2), before=before)
    graphs, runner.graphs = runner.graphs, None
    try:
        eager_ms = time_cuda(one_step, max(3, iters // 2))
    finally:
        runner.graphs = graphs
    floor = decode_floor_ms(runner, w, batch, context, ceil.copy_bytes_per_s)
    return DecodeRow(
        batch, ms, floor, batch / ms * 1e3, prepare_ms, kv_sets, graphed, eager_ms, queued_ms
    )


@torch.inference_mode()
def run_verify(runner: ModelRunner, batch: int, context: int, tokens: int, iters: int) -> VerifyRow:
    """The decode batch's sequences, each verifying `tokens - 1` drafts after its last token."""
    step, _ = decode_batch(runner, batch, context)
    gen = torch.Generator().manual_seed(batch + tokens)
    for s in step.seqs:
        drafts = torch.randint(0, runner.cfg.vocab_size, (tokens - 1,), generator=gen).tolist()
        s.token_ids, s.draft_ids = s.token_ids + drafts, drafts
        s.start_pos -= tokens - 1  # the same context length as the decode rows
    inputs = runner.prepare(step)
    graphs = runner.verify_graphs
    graphed = graphs is not None and graphs.can_run(inputs.input_ids, inputs.meta)
    return VerifyRow(batch, tokens, time_cuda(logits_step(runner, inputs), iters), graphed)


@torch.inference_mode()
def run_alt_decode(
    runner: ModelRunner, backend: str, batch: int, context: int, iters: int
) -> AltDecodeRow:
    """The eager decode step with another decode attention backend (graphs off)."""
    step, _ = decode_batch(runner, batch, context)
    inputs = runner.prepare(step)
    saved = runner.decode_backend, runner.graphs
    runner.decode_backend, runner.graphs = create_backend(backend), None
    try:
        ms = time_cuda(logits_step(runner, inputs), max(3, iters // 2))
    finally:
        runner.decode_backend, runner.graphs = saved
    return AltDecodeRow(backend, batch, ms)


@torch.inference_mode()
def run_prefill(
    runner: ModelRunner, w: WeightBytes, ceil: Ceilings, backend: str, tokens: int
) -> PrefillRow:
    # "triton absorbed": the Triton backend with every prefill step in the absorbed form ("triton"
    # chooses per step, a long fresh chunk expanded)
    if backend == "triton absorbed":
        runner.prefill_backend = TritonMLABackend(prefill_form="absorbed")
    else:
        runner.prefill_backend = create_backend(backend)
    gen = torch.Generator().manual_seed(tokens)
    ids = torch.randint(0, runner.cfg.vocab_size, (tokens,), generator=gen).tolist()
    table = list(range(1, 1 + -(-tokens // PAGE_SIZE)))
    inputs = runner.prepare(ScheduledBatch([ScheduledSeq("p", ids, 0, table, sample=True)]))
    ms = time_cuda(logits_step(runner, inputs), iters=3, warmup=1)
    floor = prefill_floor_ms(runner, w, tokens, ceil.matmul_flops_per_s)
    return PrefillRow(backend, ms, floor, tokens / ms * 1e3)


def print_tables(
    ceil: Ceilings,
    decode: list[DecodeRow],
    alt: list[AltDecodeRow],
    prefill: list[PrefillRow],
    args: argparse.Namespace,
    verify: list[VerifyRow] | None = None,
) -> None:
    print(f"\n== model bench: {torch.cuda.get_device_name()}, dummy weights, real shapes, no MTP")
    print(
        f"ceilings measured here: copy {ceil.copy_bytes_per_s / 1e12:.2f} TB/s, "
        f"bf16 matmul {ceil.matmul_flops_per_s / 1e12:.0f} TFLOP/s"
    )
    print(f"decode ({args.decode_backend_name} attention, {args.kernels}, BLAS library "
          f"{args.blas_library}), context {args.context}, step = forward + lm_head (median of "
          f"{args.iters}); queued = a step's share of steps queued back to back")  # fmt: skip
    print(f"{'batch':>6} {'step ms':>8} {'floor ms':>9} {'ratio':>6} {'tok/s':>8} "
          f"{'queued ms':>9} {'ratio':>6} {'eager ms':>8} {'prep ms':>8} {'kv_sets':>7} "
          f"graph")  # fmt: skip
    for r in decode:
        print(f"{r.batch:>6} {r.step_ms:>8.2f} {r.floor_ms:>9.2f} {r.step_ms / r.floor_ms:>6.2f} "
              f"{r.tok_per_s:>8.0f} {r.queued_ms:>9.2f} {r.queued_ms / r.floor_ms:>6.2f} "
              f"{r.eager_ms:>8.2f} {r.prepare_ms:>8.1f} {r.kv_sets:>7} {r.graphed}")  # fmt: skip
    if verify:
        plain = {r.batch: r.step_ms for r in decode}
        print(f"verification steps ({verify[0].tokens} tokens a sequence) against the decode step")
        print(f"{'batch':>6} {'step ms':>8} {'decode ms':>9} {'ratio':>6} graph")
        for v in verify:
            ref = plain.get(v.batch, float("nan"))
            print(f"{v.batch:>6} {v.step_ms:>8.2f} {ref:>9.2f} {v.step_ms / ref:>6.2f} {v.graphed}")
    if alt:
        triton_eager = {r.batch: r.eager_ms for r in decode}
        print("decode without graphs, other attention backends (triton eager for comparison)")
        print(f"{'backend':>10} {'batch':>6} {'eager ms':>8} {'triton ms':>9}")
        for a in alt:
            ref = triton_eager.get(a.batch, float("nan"))
            print(f"{a.backend:>10} {a.batch:>6} {a.eager_ms:>8.2f} {ref:>9.2f}")
    print(f"prefill, one chunk of {args.prefill_tokens} tokens")
    print(f"{'backend':>8} {'ms':>8} {'floor ms':>9} {'ratio':>6} {'tok/s':>8}")
    for p in prefill:
        print(f"{p.backend:>8} {p.ms:>8.1f} {p.floor_ms:>9.1f} {p.ms / p.floor_ms:>6.2f} "
              f"{p.tok_per_s:>8.0f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default="1,8,32,128,256,512")
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--prefill-tokens", type=int, default=8192, help="0: no prefill rows")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--fresh-tokens", action="store_true",
                        help="decode other random tokens every timed step (other experts)")  # fmt: skip
    parser.add_argument("--budget-s", type=float, default=280.0, help="skip what would start later")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--verify-tokens",
        type=int,
        default=0,
        help="also time verification steps of this many tokens a sequence (1 + MTP drafts) at "
        "the decode batches, with their graphs (0: none)",
    )
    parser.add_argument(
        "--decode-backend",
        default="auto",
        choices=["auto", "triton", "flashinfer", "triton+flashinfer"],
        help="decode attention backend of the decode rows, graphed (auto: the server's choice; "
        "triton+flashinfer: FlashInfer for the steps attention/hybrid.py sends there)",
    )
    parser.add_argument(
        "--blas-library",
        default="default",
        choices=["default", "cublas", "cublaslt"],
        help="torch.backends.cuda.preferred_blas_library for the dense projections",
    )
    add_kernel_flags(parser)
    args = parser.parse_args()
    t0 = time.perf_counter()
    torch.backends.cuda.preferred_blas_library(args.blas_library)
    batches = sorted(int(b) for b in args.batches.split(","))
    ceil = measure_ceilings()
    runner = build_runner_or_eager(
        batches, args.context, kernel_options(args), args.verify_tokens, args.decode_backend
    )
    args.decode_backend_name = runner.decode_backend.name  # what "auto" resolved to
    args.kernels = runner.kernels.describe()
    print(f"model built and graphs captured in {time.perf_counter() - t0:.0f} s; "
          f"KV pool {runner.num_pages} pages of {PAGE_SIZE}")  # fmt: skip
    with torch.inference_mode():
        runner.kv_cache.normal_()  # random latents: timing on zeros hides work
    w = weight_bytes(runner)
    decode: list[DecodeRow] = []
    alt: list[AltDecodeRow] = []
    prefill: list[PrefillRow] = []
    verify: list[VerifyRow] = []

    def save() -> None:
        if args.json is not None:
            data = {"ceilings": asdict(ceil), "weights": asdict(w), "args": vars(args) | {"json": str(args.json)},
                    "decode": [asdict(r) for r in decode], "alt_decode": [asdict(a) for a in alt],
                    "prefill": [asdict(p) for p in prefill],
                    "verify": [asdict(v) for v in verify]}  # fmt: skip
            args.json.write_text(json.dumps(data, indent=2))

    for batch in batches:
        if time.perf_counter() - t0 > args.budget_s:
            print(f"decode batch {batch}: skipped, over the time budget")
            continue
        try:
            decode.append(
                run_decode(runner, w, ceil, batch, args.context, args.iters, args.fresh_tokens)
            )
        except RuntimeError as err:  # out of memory included: the other sizes still run
            print(f"decode batch {batch}: failed: {err}")
            continue
        print(f"decode batch {batch}: {decode[-1].step_ms:.2f} ms", flush=True)
        save()
    for batch in batches if args.verify_tokens > 1 else []:
        if time.perf_counter() - t0 > args.budget_s:
            print(f"verification batch {batch}: skipped, over the time budget")
            continue
        try:
            verify.append(run_verify(runner, batch, args.context, args.verify_tokens, args.iters))
        except RuntimeError as err:
            print(f"verification batch {batch}: failed: {err}")
            continue
        print(f"verification batch {batch}: {verify[-1].step_ms:.2f} ms", flush=True)
        save()
    reason = unavailable_reason("flashinfer", runner.device)
    if args.decode_backend_name != "triton":
        reason = f"the decode rows above are {args.decode_backend_name}'s"
    for batch in batches if reason is None else []:
        if time.perf_counter() - t0 > args.budget_s:
            print(f"flashinfer decode batch {batch}: skipped, over the time budget")
            continue
        try:
            alt.append(run_alt_decode(runner, "flashinfer", batch, args.context, args.iters))
        except (RuntimeError, ValueError) as err:
            print(f"flashinfer decode batch {batch}: failed: {err}")
            continue
        print(f"flashinfer decode batch {batch}: {alt[-1].eager_ms:.2f} ms", flush=True)
        save()
    if reason is not None:
        print(f"flashinfer decode: skipped ({reason})")
    for backend in ("triton", "triton absorbed", "fa3") if args.prefill_tokens > 0 else ():
        reason = unavailable_reason(backend.split()[0], runner.device)
        if reason is not None or time.perf_counter() - t0 > args.budget_s:
            print(f"prefill {backend}: skipped ({reason or 'over the time budget'})")
            continue
        try:
            prefill.append(run_prefill(runner, w, ceil, backend, args.prefill_tokens))
        except (RuntimeError, ValueError) as err:
            print(f"prefill {backend}: failed: {err}")
        save()
    print_tables(ceil, decode, alt, prefill, args, verify)


if __name__ == "__main__":
    main()
