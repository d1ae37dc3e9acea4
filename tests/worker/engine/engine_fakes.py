"""A fake model runner and a small harness for CPU engine tests (no weights, no torch).

The fake runner keeps a fake KV cache: one token id per cache row. Every step it checks that the
rows a sequence attends to (positions [0, start_pos)) hold exactly that sequence's known tokens,
writes the new tokens into their rows, and never lets a sequence write a page another sequence of
the batch also holds. The "model" then reads the whole context back from the fake cache and returns
a deterministic function of it, so a wrong page table changes the output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, cast

from glm47.worker.batch import (
    DraftInput,
    RunnerOutput,
    SampleOutput,
    ScheduledBatch,
    ScheduledSeq,
    TokenFeed,
)
from glm47.worker.config import EngineConfig
from glm47.worker.engine import Engine, Request, StepOutput

EOS = 1


def next_token(context: list[int]) -> int:
    """The fake model: a token in [10, 1000) determined by the whole context."""
    return 10 + sum((i + 1) * t for i, t in enumerate(context)) % 990


class FakeRunner:
    def __init__(
        self, num_pages: int, page_size: int, script: dict[str, list[int]] | None = None
    ) -> None:
        self.num_pages = num_pages
        self.page_size = page_size
        self.kv: list[int | None] = [None] * (num_pages * page_size)  # token id per cache row
        self.script = script or {}  # rid -> tokens to return, in order, instead of next_token
        self.batches: list[ScheduledBatch] = []  # snapshots of every batch run
        self.launches = 0
        self.draft_calls = []

    def run(self, batch: ScheduledBatch, sampler: Any) -> RunnerOutput:
        self.batches.append(ScheduledBatch([self._snapshot(s) for s in batch.seqs]))
        holders: dict[int, int] = {}
        for seq in batch.seqs:
            for p in seq.page_ids:
                holders[p] = holders.get(p, 0) + 1
        samples = []
        for seq in batch.seqs:
            self._write(seq, holders)
            for j in range(seq.num_samples):  # the last known token's row, then each draft's
                samples.append(self._sample(seq, seq.num_samples - 1 - j))
        return RunnerOutput(samples)

    def launch(
        self,
        batch: ScheduledBatch,
        sampler: Any,
        feed: TokenFeed | None = None,
        defer_sampling: bool = False,
    ) -> FakeLaunched:
        """`run`, its samples handed over by `collect`; with `feed`, the batch's placeholder
        tokens replaced by the fed samples first (as the real runner does on the device)."""
        if feed is not None:
            seqs = list(batch.seqs)
            for r, i in zip(feed.rows, feed.seqs, strict=True):
                assert len(seqs[i].token_ids) == 1, "a fed sequence computes one token"
                seqs[i] = replace(seqs[i], token_ids=[feed.tokens[r]])
            batch = replace(batch, seqs=seqs)
        self.launches += 1
        assert not defer_sampling, "the fake runner serves no constrained requests"
        return FakeLaunched(self.run(batch, sampler))

    # -- drafting (speculative decoding) -------------------------------------------------------

    drafter: Callable[[list[int], int], list[int]] | None = None  # (context, count) -> drafts
    draft_calls: list[list[DraftInput]]

    @property
    def can_draft(self) -> bool:
        return self.drafter is not None

    def propose_drafts(self, items: list[DraftInput]) -> dict[str, list[int]]:
        """Drafts from `drafter` on the context the KV cache holds plus the newest known token."""
        assert self.drafter is not None
        self.draft_calls.append(items)
        out = {}
        for it in items:
            end = it.start_pos + len(it.next_ids)  # positions [0, end) computed, then one known
            seq = ScheduledSeq(it.rid, [], 0, it.page_ids, False)
            context = [self.kv[self._row(seq, p)] for p in range(end)] + [it.next_ids[-1]]
            assert None not in context, f"{it.rid}: drafter reads an unwritten row"
            assert len(it.page_ids) * self.page_size >= end + it.num_drafts, "no room for drafts"
            if it.num_drafts:
                out[it.rid] = self.drafter(cast(list[int], context), it.num_drafts)
        return out

    @staticmethod
    def _snapshot(seq: ScheduledSeq) -> ScheduledSeq:
        return replace(
            seq,
            token_ids=list(seq.token_ids),
            draft_ids=list(seq.draft_ids),
            page_ids=list(seq.page_ids),
            prompt_ids=list(seq.prompt_ids),
            output_ids=list(seq.output_ids),
        )

    def _row(self, seq: ScheduledSeq, pos: int) -> int:
        return seq.page_ids[pos // self.page_size] * self.page_size + pos % self.page_size

    def _write(self, seq: ScheduledSeq, holders: dict[int, int]) -> None:
        end = seq.start_pos + len(seq.token_ids)
        assert len(seq.page_ids) * self.page_size >= end, "page table too short"
        assert len(set(seq.page_ids)) == len(seq.page_ids), "a page twice in one page table"
        assert 0 not in seq.page_ids, "padding page in a page table"
        known = seq.prompt_ids + seq.output_ids
        cached = [self.kv[self._row(seq, p)] for p in range(seq.start_pos)]
        assert cached == known[: seq.start_pos], f"{seq.rid}: KV cache does not hold its prefix"
        for i, tok in enumerate(seq.token_ids):
            page = seq.page_ids[(seq.start_pos + i) // self.page_size]
            assert holders[page] == 1, f"{seq.rid} writes page {page} shared in the batch"
            self.kv[self._row(seq, seq.start_pos + i)] = tok

    def _sample(self, seq: ScheduledSeq, back: int = 0) -> SampleOutput:
        """The sample at the row `back` rows before the sequence's last one."""
        end = seq.start_pos + len(seq.token_ids) - back
        if seq.rid in self.script:
            drafts_before = len(seq.draft_ids) - back
            token = self.script[seq.rid][len(seq.output_ids) + drafts_before]
        else:
            context = [self.kv[self._row(seq, p)] for p in range(end)]
            token = next_token([t for t in context if t is not None])
        logprob = -0.25 if seq.sampling.logprobs >= 0 else None
        top = [(token, -0.25), (token + 1, -2.0)] if seq.sampling.logprobs > 0 else None
        return SampleOutput(seq.rid, token, logprob=logprob, top_logprobs=top)


class FakeLaunched:
    """A fake step on the device: its samples are known at once, handed over by `collect`."""

    waits_to_sample = False  # no constrained requests: sampled at launch

    def __init__(self, out: RunnerOutput) -> None:
        self._out = out
        self.tokens = [s.token_id for s in out.samples] or None

    def sample(self) -> None:
        raise AssertionError("sampled at launch")

    def collect(self) -> RunnerOutput:
        return self._out


@dataclass
class Harness:
    engine: Engine
    runner: FakeRunner
    outputs: dict[str, list[StepOutput]] = field(default_factory=dict)

    def add(self, rid: str, prompt: list[int], max_new_tokens: int = 4, **kw: Any) -> Request:
        req = Request(rid=rid, prompt_ids=list(prompt), max_new_tokens=max_new_tokens, **kw)
        self.engine.add_request(req)
        return req

    def step(self) -> list[StepOutput]:
        outs = self.engine.step()
        self.engine.check_accounting()
        for out in outs:
            self.outputs.setdefault(out.rid, []).append(out)
        return outs

    def run(self, max_steps: int = 2000) -> int:
        """Step until idle; returns the number of steps."""
        steps = 0
        while self.engine.has_work():
            self.step()
            steps += 1
            assert steps <= max_steps, "engine did not finish"
        return steps

    def tokens(self, rid: str) -> list[int]:
        return [t for out in self.outputs.get(rid, []) for t in out.ids]

    def finish(self, rid: str) -> str | None:
        outs = self.outputs.get(rid, [])
        return outs[-1].finish if outs else None

    def last_batch(self) -> dict[str, ScheduledSeq]:
        return {s.rid: s for s in self.runner.batches[-1].seqs}


MakeHarness = Callable[..., Harness]


def harness_factory() -> MakeHarness:
    def make(
        num_pages: int = 64,
        page_size: int = 4,
        script: dict[str, list[int]] | None = None,
        eos: tuple[int, ...] = (EOS,),
        drafter: Callable[[list[int], int], list[int]] | None = None,
        **config: Any,
    ) -> Harness:
        config.setdefault("max_req_total_len", 4096)
        cfg = EngineConfig(device="cpu", dtype="float32", page_size=page_size, **config)
        runner = FakeRunner(num_pages, page_size, script)
        runner.drafter = drafter
        return Harness(Engine(cfg, runner, sampler=None, eos_token_ids=list(eos)), runner)

    return make


def drain(engine: Engine) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Steps `engine` until it has no work: each request's tokens and finish reason."""
    tokens: dict[str, list[int]] = {}
    finish: dict[str, str] = {}
    while engine.has_work():
        for out in engine.step():
            tokens.setdefault(out.rid, []).extend(out.ids)
            if out.finish:
                finish[out.rid] = out.finish
    return tokens, finish
