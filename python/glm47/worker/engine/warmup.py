"""Serving warm-up: synthetic requests through an engine before the worker says it is ready.

Triton compiles a kernel the first time it sees a new specialisation: another block config of the
fused MoE for a token count, an integer argument that is now 1, now a multiple of 16, now neither,
a causal prefill over a cached prefix, a short query verifying drafts. The runner's own warm-up
covers single prompts; real traffic then compiled the rest inside its first steps, one of which
took 11 s on the H200 while 2000 requests waited. This traffic takes the paths serving takes: several
prompts in one step, prompts longer than a step's budget (chunked, beside decoding sequences), prefix
cache hits (partial and whole-prompt), decode batches growing and shrinking, every sampling
transform, and drafts when the engine drafts. Then the sampler alone on synthetic rows, flat and
peaked (`warm_up_sampler`): which of its kernels a row takes depends on its logits.

Run it on a throwaway `Engine` over the real runner and serve with a fresh one: the synthetic
requests then leave no prefix-cache entries, counters or sampler state behind.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import torch

from glm47.worker.batch import SamplingParams, ScheduledSeq
from glm47.worker.engine.engine import Engine
from glm47.worker.engine.errors import EngineError
from glm47.worker.engine.request import Request

log = logging.getLogger(__name__)

# The sampling settings the requests cycle through: greedy, every filter, top-p alone (the model
# card's settings), the penalties, a seed, log probabilities.
SAMPLINGS = (
    SamplingParams(temperature=0.0),
    SamplingParams(temperature=0.8, top_p=0.9, top_k=40, min_p=0.05),
    SamplingParams(temperature=1.0, top_p=0.95),
    SamplingParams(temperature=1.0, presence_penalty=0.5, frequency_penalty=0.3),
    SamplingParams(temperature=0.7, repetition_penalty=1.1, seed=7, logprobs=3),
    SamplingParams(temperature=0.0, logprobs=0),
)


@dataclass
class WarmUpReport:
    requests: int = 0
    rejected: int = 0  # refused by the engine's limits (queue size, length): skipped
    steps: int = 0
    prefix_hit_tokens: int = 0
    mixed_steps: int = 0  # steps with prompt tokens and decoding sequences together
    largest_decode_batch: int = 0
    drafted: int = 0
    seconds: float = 0.0


def prompt_lengths(budget: int, longest: int) -> list[int]:
    """Prompt lengths from one token to a little over a step's token budget (so that one prompt
    is chunked), none above `longest`."""
    lengths = [1, 2, 5, 13, 16, 40, 100, 250, 600, 1500, budget // 2 + 3, budget + 7]
    return sorted({max(1, min(n, longest)) for n in lengths})


def crowd_size(engine: Engine) -> int:
    """Requests in the crowd wave: a few more than fit in the running batch (so admission waits
    too), as the KV pool allows at 64 tokens a request."""
    running = engine.config.max_running_requests
    return max(2, min(running + running // 8, engine.kv_capacity_tokens // 64))


def warm_up(engine: Engine, vocab_size: int, seed: int = 0) -> WarmUpReport:
    """Drive synthetic requests through `engine` until none is left; returns what they covered.

    Waves: every prompt length at once (a multi-sequence prefill, the longest chunked); a wave of
    prompts sharing the first wave's prefixes, added while the first decodes (mixed steps, partial
    hits); whole-prompt repeats (a hit up to the last token); a crowd of short prompts a little
    larger than the running batch; each wave drains through ever smaller decode batches."""
    start = time.perf_counter()
    rng = random.Random(seed)
    config = engine.config
    budget = config.max_num_batched_tokens or config.chunked_prefill_size
    # Room for every request of a wave at once, whatever the pool: the longest prompt is capped
    # at a share of the KV capacity.
    longest = max(1, min(engine.max_req_total_len - 40, engine.kv_capacity_tokens // 8))
    lengths = prompt_lengths(budget, longest)
    report = WarmUpReport()
    first: list[list[int]] = []

    def add(prompt: list[int], max_new: int) -> None:
        """Queue one request; one the engine's limits refuse is skipped (small test configs)."""
        sampling = SAMPLINGS[(report.requests + report.rejected) % len(SAMPLINGS)]
        rid = f"warmup-{report.requests + report.rejected}"
        prompt = prompt[: max(1, engine.max_req_total_len - 1)]
        request = Request(rid, prompt, max_new, sampling=sampling, min_new_tokens=min(2, max_new))
        try:
            engine.add_request(request)
        except EngineError as err:
            log.debug("warm-up request %s skipped: %s", rid, err)
            report.rejected += 1
            return
        report.requests += 1

    for n in lengths:
        prompt = [rng.randrange(1, vocab_size) for _ in range(n)]
        first.append(prompt)
        add(prompt, 8 + 4 * (len(first) % 5))
    stem = [rng.randrange(1, vocab_size) for _ in range(24)]
    waves = [
        # Shared prefixes with a new tail: partial prefix-cache hits.
        [
            p[: max(1, len(p) // 2)] + [rng.randrange(1, vocab_size) for _ in range(9)]
            for p in first
        ],
        # The same prompts again: hits up to the last token, which is computed anew.
        [list(p) for p in first[: len(first) // 2]],
        # A crowd of short prompts, as a burst of chat requests brings: steps with hundreds of
        # sequences, many of them hits on a common stem, then decode batches past the largest
        # decode graph.
        [
            stem[: rng.randrange(0, len(stem))] + [rng.randrange(1, vocab_size) for _ in range(4)]
            for _ in range(crowd_size(engine))
        ],
    ]
    step = 0
    while engine.has_work() or waves:
        if waves and (step >= 3 * (4 - len(waves)) or not engine.has_work()):
            for prompt in waves.pop(0):
                add(prompt, 6)
        running = engine.scheduler.running
        decoding = sum(r.num_computed_tokens >= r.num_prompt_tokens for r in running)
        prefilling = len(running) - decoding + len(engine.scheduler.waiting)
        engine.step()
        step += 1
        report.mixed_steps += bool(decoding and prefilling)
        report.largest_decode_batch = max(report.largest_decode_batch, decoding)
    device = getattr(engine.runner, "device", None)
    if isinstance(device, torch.device):
        warm_up_sampler(engine.sampler, vocab_size, device)
    report.steps = step
    report.prefix_hit_tokens = engine.cache.hit_tokens
    report.drafted = engine.spec_drafted
    report.seconds = time.perf_counter() - start
    log.info(
        "serving warm-up: %d requests (%d skipped) in %d steps, %.1f s (%d prompt tokens from the "
        "prefix cache, %d steps with prompts beside decoding, decode batches up to %d, %d drafts)",
        report.requests,
        report.rejected,
        report.steps,
        report.seconds,
        report.prefix_hit_tokens,
        report.mixed_steps,
        report.largest_decode_batch,
        report.drafted,
    )
    return report


def warm_up_sampler(sampler: Any, vocab_size: int, device: torch.device, seed: int = 0) -> None:
    """Every sampling setting on a flat row and on a peaked one, each setting alone and all in
    one batch: a top-p row whose kept set passes the candidates' room takes the bisection
    kernels, another the compaction, and a batch's mix of settings decides some launches'
    arguments (Triton specialises a stride or width of 1), which random prompts through random
    or real weights need not all produce."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    batches: list[tuple[list[ScheduledSeq], list[torch.Tensor]]] = []
    for i, sampling in enumerate(SAMPLINGS):
        seqs, rows = [], []
        for scale in (0.01, 8.0):  # flat, peaked
            rows.append(torch.randn(vocab_size, generator=gen) * scale)
            seqs.append(ScheduledSeq(f"warmup-sampler-{i}-{scale}", [1], 0, [1], True,
                                     sampling=sampling, prompt_ids=[1]))  # fmt: skip
        batches += [([seqs[0]], rows[:1]), ([seqs[1]], rows[1:]), (seqs, rows)]
    everything = [b for batch in batches[2::3] for b in batch[0]]
    batches.append((everything, [r for batch in batches[2::3] for r in batch[1]]))
    for seqs, rows in batches:
        sampler.sample(torch.stack(rows).to(device), seqs)
