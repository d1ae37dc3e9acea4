"""min_new_tokens through the engine and the real sampler: before the minimum, eos ids (unless
ignore_eos) and stop ids are masked, so they are never produced; afterwards they stop as usual."""

from __future__ import annotations

from typing import Any

import torch

from glm47.worker.batch import RunnerOutput, SamplingParams, ScheduledBatch
from glm47.worker.config import EngineConfig
from glm47.worker.engine import Engine, Request
from glm47.worker.sampling import Sampler

VOCAB = 16
EOS = 1
STOP = 4
# Every step the "model" prefers eos, then the stop id, then 7, then the rest.
PREFERENCE = torch.zeros(VOCAB)
PREFERENCE[EOS], PREFERENCE[STOP], PREFERENCE[7] = 9.0, 8.0, 7.0


class LogitsRunner:
    """Returns the fixed preference as every sampled row's logits and samples with the real
    sampler; records each step's banned ids per request."""

    num_pages = 64
    page_size = 4

    def __init__(self) -> None:
        self.banned: dict[str, list[tuple[int, ...]]] = {}

    def run(self, batch: ScheduledBatch, sampler: Any) -> RunnerOutput:
        seqs = [s for s in batch.seqs if s.sample]
        for s in seqs:
            self.banned.setdefault(s.rid, []).append(s.banned_token_ids)
        logits = PREFERENCE[None].repeat(len(seqs), 1)  # [N, V]
        return RunnerOutput(sampler.sample(logits, seqs) if seqs else [])


def generate(reqs: list[Request]) -> tuple[dict[str, list[int]], dict[str, str], LogitsRunner]:
    config = EngineConfig(device="cpu", dtype="float32", page_size=4, max_req_total_len=256)
    runner = LogitsRunner()
    engine = Engine(config, runner, Sampler(seed=0), eos_token_ids=[EOS])
    for req in reqs:
        engine.add_request(req)
    tokens: dict[str, list[int]] = {}
    finish: dict[str, str] = {}
    for _ in range(100):
        if not engine.has_work():
            break
        for out in engine.step():
            tokens.setdefault(out.rid, []).extend(out.ids)
            if out.finish is not None:
                finish[out.rid] = out.finish
    assert not engine.has_work()
    return tokens, finish, runner


def request(rid: str, min_new: int, **kw: Any) -> Request:
    return Request(rid=rid, prompt_ids=[5, 6, 7], max_new_tokens=8, min_new_tokens=min_new, **kw)


def test_eos_and_stop_ids_are_masked_until_min_new_tokens() -> None:
    stops = frozenset({STOP})
    tokens, finish, runner = generate(
        [
            request("plain", 0, sampling=SamplingParams(temperature=0.0)),
            request("min3", 3, sampling=SamplingParams(temperature=0.0)),
            request("min3_stop", 3, stop_token_ids=stops, sampling=SamplingParams(temperature=0)),
            request("hot", 5, stop_token_ids=stops, sampling=SamplingParams(temperature=2.0)),
        ]
    )
    assert tokens["plain"] == [EOS] and finish["plain"] == "stop"  # the model wants eos first
    assert tokens["min3"] == [STOP, STOP, STOP, EOS] and finish["min3"] == "stop"
    assert tokens["min3_stop"] == [7, 7, 7, EOS] and finish["min3_stop"] == "stop"
    hot = tokens["hot"]
    assert len(hot) >= 5 and not {EOS, STOP} & set(hot[:5])
    assert finish["hot"] == "stop" or len(hot) == 8
    assert runner.banned["min3_stop"] == [(EOS, STOP)] * 3 + [()]
    assert runner.banned["plain"] == [()]


def test_ignore_eos_leaves_eos_unmasked_but_masks_stop_ids() -> None:
    greedy = SamplingParams(temperature=0.0)
    tokens, finish, runner = generate(
        [
            request(
                "eos_as_stop", 2, ignore_eos=True, stop_token_ids=frozenset({EOS}), sampling=greedy
            ),
            request("stop", 2, ignore_eos=True, stop_token_ids=frozenset({STOP}), sampling=greedy),
        ]
    )
    assert tokens["eos_as_stop"] == [STOP, STOP, EOS] and finish["eos_as_stop"] == "stop"
    assert runner.banned["eos_as_stop"] == [(EOS,), (EOS,), ()]
    # With ignore_eos, eos is neither masked nor a stop: greedy picks it every step.
    assert tokens["stop"] == [EOS] * 8 and finish["stop"] == "length"
    assert runner.banned["stop"][:3] == [(STOP,), (STOP,), ()]
