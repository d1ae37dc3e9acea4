"""PenaltyCounts over many steps: the counts kept on the device give the penalties that the
requests' whole token lists give, through growing outputs, rows fed on the device, draft rows,
requests leaving and coming back, rebuilt output lists and a fed token the host never got."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest
import torch

from glm47.worker.batch import SamplingParams, ScheduledSeq
from glm47.worker.sampling_penalties import PenaltyCounts, apply_penalties

VOCAB = 40


def from_lists(
    logits: torch.Tensor, seqs: list[ScheduledSeq], last: torch.Tensor
) -> torch.Tensor:  # [N, V]
    """The penalties written out from each row's token lists (a fed row's last token: `last`)."""
    out = logits.clone()
    for i, s in enumerate(seqs):
        p = s.sampling
        outputs = list(s.output_ids)
        if s.fed:
            outputs[-1] = int(last[i])
        if p.repetition_penalty != 1.0:
            rep = torch.tensor(p.repetition_penalty)
            for t in set(s.prompt_ids) | set(outputs):
                x = out[i, t]
                out[i, t] = x / rep if x > 0 else x * rep
        for t, c in Counter(outputs).items():
            out[i, t] = out[i, t] - p.frequency_penalty * c - p.presence_penalty
    return out


class Req:
    def __init__(self, rid: str, rng: random.Random, kind: int) -> None:
        self.rid = rid
        self.prompt = [rng.randrange(VOCAB) for _ in range(rng.randrange(1, 6))]
        self.output: list[int] = [rng.randrange(VOCAB) for _ in range(rng.randrange(0, 4))]
        self.fed_token: int | None = None  # the placeholder's real token, while one is out
        self.params = [
            SamplingParams(repetition_penalty=1.5),
            SamplingParams(frequency_penalty=0.7, presence_penalty=-0.3),
            SamplingParams(repetition_penalty=0.8, frequency_penalty=-0.4, presence_penalty=0.2),
            SamplingParams(),  # none: a row the counts leave alone
        ][kind]

    def seq(self) -> ScheduledSeq:
        return ScheduledSeq(
            rid=self.rid, token_ids=[1], start_pos=0, page_ids=[0], sample=True,
            sampling=self.params, prompt_ids=self.prompt, output_ids=self.output,
            fed=self.fed_token is not None,
        )  # fmt: skip


def test_counts_kept_across_steps_equal_the_whole_lists() -> None:
    rng = random.Random(5)
    torch.manual_seed(5)
    counts = PenaltyCounts()
    reqs = {f"r{i}": Req(f"r{i}", rng, i % 4) for i in range(10)}
    for step in range(120):
        for r in reqs.values():  # what happened on the host since the last step
            event = rng.random()
            if r.fed_token is not None:
                r.output[-1] = r.fed_token  # the sample arrived
                r.fed_token = None
                if event < 0.05:  # ...or the step that fed it was dropped: the host lacks it
                    r.output.pop()
            elif event < 0.6:
                r.output.extend(rng.randrange(VOCAB) for _ in range(rng.choice([1, 1, 1, 2])))
            elif event < 0.63:  # a rebuilt list, its last token another
                r.output = [*r.output[:-1], rng.randrange(VOCAB)]
            elif event < 0.66:
                reqs[r.rid] = Req(r.rid, rng, rng.randrange(4))  # the rid reused
        chosen = rng.sample(sorted(reqs), rng.randrange(1, len(reqs) + 1))
        seqs: list[ScheduledSeq] = []
        inputs: list[int] = []
        for rid in chosen:
            r = reqs[rid]
            if rng.random() < 0.3:  # runs ahead: its last output is a placeholder
                r.fed_token = rng.randrange(VOCAB)
                r.output.append(0)
                seqs.append(r.seq())
                inputs.append(r.fed_token)
            elif rng.random() < 0.3:  # verifies drafts: one row a draft, each seeing those before
                drafts = [rng.randrange(VOCAB) for _ in range(rng.randrange(1, 4))]
                base = replace(r.seq(), draft_ids=drafts)
                seqs.append(base)
                seqs += [replace(base, output_ids=r.output + drafts[:j]) for j in range(1, 4)
                         if j <= len(drafts)]  # fmt: skip
                inputs += [rng.randrange(VOCAB)] * (1 + len(drafts))
            else:
                seqs.append(r.seq())
                inputs.append(rng.randrange(VOCAB))
        logits = torch.randn(len(seqs), VOCAB) * 3
        last = torch.tensor(inputs)
        counts.retain({s.rid for s in seqs})
        got = apply_penalties(logits, seqs, counts, last)
        torch.testing.assert_close(got, from_lists(logits, seqs, last), rtol=1e-6, atol=1e-5,
                                   msg=f"step {step}")  # fmt: skip
    assert counts.table is not None and counts.table.shape[0] <= 64


def test_a_request_gaining_one_token_sends_one_token() -> None:
    """After its first step a request's step adds the tokens it gained, not its history."""
    counts = PenaltyCounts()
    r = Req("a", random.Random(1), 1)
    r.output = list(range(30))
    logits = torch.zeros(1, VOCAB)
    apply_penalties(logits, [r.seq()], counts, torch.tensor([0]))
    sent: list[int] = []
    real_index_put = torch.Tensor.index_put_

    def spy(
        self: torch.Tensor, indices: tuple[torch.Tensor, ...], *a: object, **k: object
    ) -> torch.Tensor:
        sent.append(int(indices[0].numel()))
        return real_index_put(self, indices, *a, **k)  # type: ignore[arg-type]

    torch.Tensor.index_put_ = spy  # type: ignore[method-assign]
    try:
        r.output.append(7)
        got = apply_penalties(logits, [r.seq()], counts, torch.tensor([0]))
    finally:
        torch.Tensor.index_put_ = real_index_put  # type: ignore[method-assign]
    assert sent == [1]
    assert got[0, 7].item() == pytest.approx(-0.7 * 2 + 0.3)


def test_the_table_is_let_go_once_no_request_holds_a_row() -> None:
    counts = PenaltyCounts()
    reqs = [Req(f"r{i}", random.Random(i), 1) for i in range(9)]
    logits = torch.zeros(9, VOCAB)
    apply_penalties(logits, [r.seq() for r in reqs], counts, torch.zeros(9, dtype=torch.long))
    assert counts.table is not None and counts.table.shape[0] >= 9
    counts.retain({"r0"})
    assert counts.table.shape[0] >= 9  # r0 still holds its row
    counts.retain(set())
    assert counts.table.shape[0] == 0
    got = apply_penalties(logits[:1], [reqs[3].seq()], counts, torch.zeros(1, dtype=torch.long))
    want = from_lists(logits[:1], [reqs[3].seq()], torch.zeros(1, dtype=torch.long))
    torch.testing.assert_close(got, want)
