"""The batched sampler against plain torch references on small random logits."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from glm47.kernels.race_noise import race_noise
from glm47.worker.batch import SamplingParams, ScheduledSeq
from glm47.worker.sampling import (
    Sampler,
    row_key,
    score_tokens,
)
from glm47.worker.sampling_penalties import PenaltyCounts, apply_penalties

V = 50


def seq(
    rid: str = "r", prompt: list[int] | None = None, out: list[int] | None = None, **kw: object
) -> ScheduledSeq:
    return ScheduledSeq(
        rid=rid,
        token_ids=[1],
        start_pos=0,
        page_ids=[1],
        sample=True,
        sampling=SamplingParams(**kw),  # type: ignore[arg-type]
        prompt_ids=list(prompt or [1, 2, 3]),
        output_ids=list(out or []),
    )


def rand_logits(n: int, vocab: int = V, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, vocab, generator=gen) * 3.0


def test_greedy_rows_take_the_argmax() -> None:
    logits = rand_logits(6)
    seqs = [seq(f"r{i}", temperature=0.0) for i in range(6)]
    out = Sampler(seed=1).sample(logits, seqs)
    assert [o.token_id for o in out] == logits.argmax(-1).tolist()
    assert [o.rid for o in out] == [f"r{i}" for i in range(6)]
    assert all(o.logprob is None and o.top_logprobs is None for o in out)


def test_temperatures_too_small_for_fp32_are_greedy() -> None:
    logits = rand_logits(6, seed=2)
    for temperature in (1e-40, 1e-30, 9e-6):
        seqs = [seq(f"r{i}", temperature=temperature, logprobs=0) for i in range(6)]
        out = Sampler(seed=1).sample(logits, seqs)
        assert [o.token_id for o in out] == logits.argmax(-1).tolist(), temperature
        assert all(math.isfinite(o.logprob or 0.0) for o in out)


def test_top_k_one_and_tiny_top_p_equal_greedy() -> None:
    logits = rand_logits(8, seed=3)
    want = logits.argmax(-1).tolist()
    sampler = Sampler(seed=2)
    for _ in range(5):
        top1 = sampler.sample(logits, [seq(top_k=1, temperature=1.5) for _ in range(8)])
        tiny_p = sampler.sample(logits, [seq(top_p=1e-6, temperature=2.0) for _ in range(8)])
        assert [o.token_id for o in top1] == want
        assert [o.token_id for o in tiny_p] == want


def test_top_k_samples_stay_in_the_top_k() -> None:
    logits = rand_logits(4, seed=5)
    allowed = logits.topk(3, dim=-1).indices
    sampler = Sampler(seed=3)
    for _ in range(30):
        out = sampler.sample(logits, [seq(top_k=3, temperature=5.0) for _ in range(4)])
        for row, o in enumerate(out):
            assert o.token_id in allowed[row].tolist()


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    sampler = Sampler(seed=4)
    seen = set()
    for _ in range(200):
        seen.add(sampler.sample(logits, [seq(top_p=0.7)])[0].token_id)
    assert seen == {0, 1}


def test_min_p_drops_tokens_below_the_scaled_max() -> None:
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    logits = probs.log()
    sampler = Sampler(seed=5)
    seen = {sampler.sample(logits, [seq(min_p=0.6)])[0].token_id for _ in range(200)}
    assert seen == {0, 1}  # 0.2 and 0.1 are below 0.6 * 0.4


def test_repetition_penalty_changes_exactly_prompt_and_output_tokens() -> None:
    logits = rand_logits(2, seed=7)
    seqs = [seq("a", prompt=[4, 5], out=[9, 4], repetition_penalty=1.3), seq("b")]
    got = apply_penalties(logits, seqs)
    want = logits.clone()
    for t in (4, 5, 9):
        x = logits[0, t]
        want[0, t] = x / 1.3 if x > 0 else x * 1.3
    torch.testing.assert_close(got, want)


def test_frequency_and_presence_penalties_use_output_counts() -> None:
    logits = rand_logits(3, seed=8)
    seqs = [
        seq("a", prompt=[7], out=[2, 2, 2, 5], frequency_penalty=0.5, presence_penalty=0.25),
        seq("b", prompt=[7], out=[2], presence_penalty=-1.0),
        seq("c", out=[2, 3]),
    ]
    got = apply_penalties(logits, seqs)
    want = logits.clone()
    want[0, 2] -= 3 * 0.5 + 0.25
    want[0, 5] -= 0.5 + 0.25
    want[1, 2] += 1.0
    torch.testing.assert_close(got, want)
    assert apply_penalties(logits, [seq("c", out=[1])] * 3) is logits


def test_a_fed_rows_penalties_read_its_last_token_from_the_device() -> None:
    """Running ahead, a row's last output token is a placeholder (`ScheduledSeq.fed`) whose value
    is the row's input token on the device: its penalties equal those of the row that holds the
    real token, over steps whose counts the same `PenaltyCounts` keeps."""
    logits = rand_logits(1, seed=13).repeat(2, 1)
    kw = dict(repetition_penalty=1.4, frequency_penalty=0.6, presence_penalty=0.3)
    real_out, fed_out = [9, 9], [9, 9]
    counts = PenaltyCounts()
    for token in (4, 7, 4):
        real_out.append(token)
        fed_out.append(0)  # the placeholder
        real = seq("a", prompt=[3, 5], out=real_out, **kw)
        fed = seq("b", prompt=[3, 5], out=fed_out, **kw)
        fed.fed = True
        last = torch.tensor([0, token])  # row 1's input token: the fed one
        got = apply_penalties(logits, [real, fed], counts, last)
        assert torch.equal(got[1], got[0])
        assert not torch.equal(got[1], logits[1])
        fed_out[-1] = token  # the sample arrives and replaces the placeholder
    with pytest.raises(ValueError, match="input tokens"):
        apply_penalties(logits[1:], [fed], PenaltyCounts())


def test_logprobs_match_log_softmax_of_penalised_logits() -> None:
    logits = rand_logits(3, seed=9)
    seqs = [
        seq("a", out=[1, 1], frequency_penalty=1.0, logprobs=0, temperature=0.7),
        seq("b", logprobs=4, temperature=0.0),
        seq("c", logprobs=-1),
    ]
    out = Sampler(seed=6).sample(logits, seqs)
    ref = apply_penalties(logits, seqs).log_softmax(-1)
    for row in (0, 1):
        assert out[row].logprob == pytest.approx(ref[row, out[row].token_id].item(), abs=1e-5)
    assert out[0].top_logprobs is None
    top = ref[1].topk(4)
    assert [t for t, _ in out[1].top_logprobs or []] == top.indices.tolist()
    assert [v for _, v in out[1].top_logprobs or []] == pytest.approx(top.values.tolist(), abs=1e-5)
    assert out[1].top_logprobs and out[1].top_logprobs[0][0] == out[1].token_id
    assert out[2].logprob is None and out[2].top_logprobs is None


def test_seeded_rows_repeat_across_batch_compositions() -> None:
    logits = rand_logits(1, seed=11)[0]
    history = [3, 1, 4]

    def run(sampler: Sampler, others: int, row: int) -> int:
        batch = rand_logits(others + 1, seed=others + 20)
        batch[row] = logits
        seqs = [seq(f"x{i}", temperature=1.0) for i in range(others + 1)]
        seqs[row] = seq("s", out=history, temperature=1.3, top_p=0.9, seed=1234)
        return sampler.sample(batch, seqs)[row].token_id

    first = run(Sampler(seed=1), 0, 0)
    for others, row, gseed in ((3, 2, 7), (6, 0, 8), (9, 9, None)):
        assert run(Sampler(seed=gseed), others, row) == first
    draws = {
        Sampler().sample(logits[None], [seq(out=[7] * i, temperature=1.3, seed=1234)])[0].token_id
        for i in range(40)
    }
    assert len(draws) > 3  # the step counter moves the noise


def test_an_unseeded_request_draws_the_same_whatever_else_is_sampled() -> None:
    """A request without a seed gets one from the sampler's stream when first sampled: its
    tokens then depend neither on the other rows nor on rows drawn for nothing."""
    logits = rand_logits(1, seed=31)[0]

    def run(others: list[list[str]]) -> list[int]:
        sampler = Sampler(seed=9)
        a = seq("a", temperature=1.5, top_p=0.9)
        extra: dict[str, ScheduledSeq] = {}
        tokens = []
        for step, names in enumerate(others):
            batch = [a] + [extra.setdefault(n, seq(n, temperature=1.2)) for n in names]
            out = sampler.sample(logits[None].repeat(len(batch), 1), batch)
            a.output_ids.append(out[0].token_id)
            tokens.append(out[0].token_id)
            if step % 3 == 2:  # a row drawn for nothing (a step run ahead past its stop)
                sampler.sample(logits[None].repeat(2, 1), [a, seq(f"x{step}", temperature=1.2)])
        return tokens

    alone = run([[] for _ in range(30)])
    assert run([["b", "c"][: i % 3] for i in range(30)]) == alone
    assert len(set(alone)) > 5


def test_seeded_noise_is_exponential() -> None:
    keys = torch.tensor([row_key(s, 0) for s in range(64)], dtype=torch.int64)
    noise = race_noise(keys[:, None], torch.arange(4096)[None, :]).double().exp()  # [64, 4096]
    assert noise.min() > 0
    assert noise.mean().item() == pytest.approx(1.0, abs=0.01)
    assert noise.var().item() == pytest.approx(1.0, abs=0.03)


def _chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("seeded", [False, True])
def test_temperature_sampling_matches_the_distribution(seeded: bool) -> None:
    base = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -0.5])
    temperature = 0.8
    probs = (base / temperature).softmax(-1)
    n = 4000
    logits = base[None].expand(n, -1).contiguous()
    if seeded:
        seqs = [seq(f"r{i}", temperature=temperature, seed=i) for i in range(n)]
    else:
        seqs = [seq(f"r{i}", temperature=temperature) for i in range(n)]
    out = Sampler(seed=42).sample(logits, seqs)
    counts = torch.bincount(torch.tensor([o.token_id for o in out]), minlength=6).double()
    # 5 degrees of freedom: P(chi2 > 25) is about 1e-4; the seeds are fixed, so this cannot flake.
    assert _chi_square(counts, probs.double()) < 25.0


def test_min_p_top_k_top_p_combined_distribution() -> None:
    base = torch.tensor([1.0, 0.9, 0.8, 0.0, -3.0, -4.0, 0.7])
    n = 3000
    out = Sampler(seed=9).sample(
        base[None].expand(n, -1).contiguous(),
        [seq(f"r{i}", top_k=4, top_p=0.9, temperature=1.0) for i in range(n)],
    )
    kept = base.clone()
    kept[[3, 4, 5]] = -math.inf  # top-4 keeps 0, 1, 2, 6
    probs = kept.softmax(-1)  # top-p 0.9 needs all four (the first three hold < 0.9)
    counts = torch.bincount(torch.tensor([o.token_id for o in out]), minlength=7).double()
    assert counts[[3, 4, 5]].sum() == 0
    nz = probs > 0
    assert _chi_square(counts[nz], probs[nz].double()) < 20.0


def test_mismatched_rows_are_rejected() -> None:
    with pytest.raises(ValueError):
        Sampler().sample(rand_logits(2), [seq()])


def test_top_p_keeps_thousands_of_tokens_when_the_mass_is_flat() -> None:
    vocab = 3072
    n = 2000
    logits = torch.zeros(n, vocab)  # uniform: top_p 0.9 keeps 2765 tokens
    out = Sampler(seed=12).sample(logits, [seq(f"r{i}", top_p=0.9) for i in range(n)])
    ids = [o.token_id for o in out]
    # 2000 draws over 2765 tokens give about 1400 distinct ones; a draw from a fixed shortlist
    # of 1024 candidates would give at most 1024.
    assert len(set(ids)) > 1200


def test_top_k_of_thousands_of_tokens_is_honoured() -> None:
    vocab = 3072
    logits = torch.arange(vocab, dtype=torch.float32).flip(0)[None].repeat(400, 1) * 1e-4
    k = 2048
    out = Sampler(seed=13).sample(logits, [seq(f"r{i}", top_k=k) for i in range(400)])
    ids = [o.token_id for o in out]
    assert max(ids) < k and max(ids) > 1024


class _DataDependentOps(TorchDispatchMode):
    """Records the operators whose result on a GPU can only be known on the host after a sync."""

    WAITING: ClassVar[set[Any]] = {
        torch.ops.aten.nonzero.default,
        torch.ops.aten._local_scalar_dense.default,
        torch.ops.aten.masked_select.default,
        torch.ops.aten.is_nonzero.default,
        torch.ops.aten.equal.default,
        torch.ops.aten._unique2.default,
    }

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func in self.WAITING:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "settings",
    [
        {"temperature": 0.0},
        {"temperature": 0.8},
        {"temperature": 0.8, "top_p": 0.95},
        {"temperature": 0.8, "top_p": 0.95, "seed": 5},
        {"temperature": 0.8, "top_k": 20, "min_p": 0.1},
        {"temperature": 0.8, "top_k": 20, "top_p": 0.5, "logprobs": 3},
    ],
)
def test_queuing_the_samples_reads_nothing_back_from_the_device(settings: dict[str, Any]) -> None:
    # Flat logits: a top-p row's kept set is most of the vocab, the case that once made the
    # sampler look at the values on the host before it could finish.
    logits = torch.zeros(6, 4096)
    seqs = [seq(f"r{i}", **settings) for i in range(3)] + [
        seq(f"g{i}", temperature=0.0) for i in range(3)
    ]
    with _DataDependentOps() as ops:
        deferred = Sampler(seed=1).sample_deferred(logits, seqs)
    assert ops.seen == []
    assert len(deferred.collect()) == 6


def test_penalty_counts_follow_growing_outputs_and_new_requests() -> None:
    counts = PenaltyCounts()
    logits = torch.ones(1, 8)
    s = seq("a", prompt=[1], out=[2], repetition_penalty=2.0, frequency_penalty=1.0)
    first = apply_penalties(logits, [s], counts)
    s.output_ids.append(3)
    second = apply_penalties(logits, [s], counts)
    assert second[0, 3] == 0.5 - 1.0 and first[0, 3] == 1.0
    reused = seq("a", prompt=[5], out=[], repetition_penalty=2.0)  # same rid, new lists
    third = apply_penalties(logits, [reused], counts)
    assert third[0].tolist() == [1, 1, 1, 1, 1, 0.5, 1, 1]


def test_a_mixed_batch_applies_each_rows_own_settings() -> None:
    logits = rand_logits(40, seed=21)
    kinds: list[dict[str, Any]] = [
        {"temperature": 0.0},
        {"temperature": 2.0},
        {"temperature": 2.0, "top_k": 2},
        {"temperature": 2.0, "top_p": 1e-6, "seed": 4},
    ]
    seqs = [seq(f"r{i}", **kinds[i % 4]) for i in range(40)]
    sampler = Sampler(seed=22)
    spread: set[int] = set()
    for _ in range(10):
        out = sampler.sample(logits, seqs)
        for s, o in zip(seqs, out, strict=True):
            s.output_ids.append(o.token_id)  # the next step: a new position, new noise
        for i, o in enumerate(out):
            best2 = logits[i].topk(2).indices.tolist()
            if i % 4 in (0, 3):
                assert o.token_id == best2[0]
            elif i % 4 == 2:
                assert o.token_id in best2
            else:
                spread.add(o.token_id)
    assert len(spread) > 20  # temperature 2 rows really sample


def test_banned_ids_are_never_sampled_and_logprobs_see_the_mask() -> None:
    logits = torch.zeros(4, 8)
    logits[:, 3] = 9.0  # eos is every row's best token by far
    logits[:, 5] = 8.0  # a stop id comes next
    logits[:, 6] = 7.0
    seqs = [
        seq("greedy", temperature=0.0, logprobs=2),
        seq("hot", temperature=3.0, logprobs=0),
        seq("ranked", temperature=3.0, top_k=3, top_p=0.99, seed=3),
        seq("free", temperature=0.0),  # no ban: still picks eos
    ]
    for s in seqs[:3]:
        s.banned_token_ids = (3, 5)
    sampler = Sampler(seed=14)
    drawn: set[int] = set()
    for _ in range(50):
        out = sampler.sample(logits, seqs)
        for s, o in zip(seqs, out, strict=True):
            s.output_ids.append(o.token_id)  # the next step: a new position, new noise
        drawn |= {o.token_id for o in out[:3]}
        assert out[0].token_id == 6 and out[3].token_id == 3
    assert drawn.isdisjoint({3, 5}) and len(drawn) > 2  # the sampled rows do vary
    out = sampler.sample(logits, seqs)
    ref = logits[0].clone()
    ref[[3, 5]] = -math.inf
    ref = ref.log_softmax(-1)
    assert out[0].logprob == pytest.approx(ref[6].item(), abs=1e-5)
    assert out[0].top_logprobs is not None and out[0].top_logprobs[0][0] == 6
    assert all(t not in (3, 5) for t, _ in out[0].top_logprobs)
    assert logits[0, 3] == 9.0  # the caller's logits are left alone


def test_banned_ids_apply_after_penalties_and_lift_when_empty() -> None:
    logits = torch.tensor([[0.0, 5.0, 4.0, 3.0]])
    s = seq(out=[2], temperature=0.0, frequency_penalty=2.0)
    s.banned_token_ids = (1,)
    assert Sampler().sample(logits, [s])[0].token_id == 3  # 2 is penalised to 2.0, 1 is banned
    s.banned_token_ids = ()
    assert Sampler().sample(logits, [s])[0].token_id == 1  # min_new_tokens reached: eos allowed


def test_logit_bias_is_added_per_row_before_sampling_and_logprobs() -> None:
    logits = rand_logits(3, seed=11)
    worst = int(logits[0].argmin())
    best = int(logits[1].argmax())
    seqs = [
        seq(
            "lift", temperature=0.0, logprobs=0, logit_bias_ids=(worst,), logit_bias_values=(100.0,)
        ),
        seq(
            "ban",
            temperature=0.0,
            logprobs=0,
            logit_bias_ids=(best, V + 5),
            logit_bias_values=(-100.0, 50.0),
        ),
        seq("plain", temperature=0.0, logprobs=0),
    ]
    out = Sampler(seed=1).sample(logits.clone(), seqs)
    assert out[0].token_id == worst
    banned = logits[1].clone()
    banned[best] -= 100.0
    assert out[1].token_id == int(banned.argmax()) != best
    assert out[1].logprob == pytest.approx(float(banned.log_softmax(-1).max()), abs=1e-5)
    assert out[2].token_id == int(logits[2].argmax())
    lifted = logits[0].clone()
    lifted[worst] += 100.0
    assert out[0].logprob == pytest.approx(float(lifted.log_softmax(-1)[worst]), abs=1e-5)
    # Sampled rows see the bias too: a +100 token is drawn (almost) surely.
    hot = [
        seq(
            f"s{i}",
            temperature=t,
            top_k=k,
            seed=seed,
            logit_bias_ids=(worst,),
            logit_bias_values=(100.0,),
        )
        for i, (t, k, seed) in enumerate([(1.0, -1, None), (0.7, 5, 3), (1.3, -1, 9)])
    ]
    # (plain, top-k with a seed, seeded: the fast paths all see the biased logits)
    assert [o.token_id for o in Sampler(seed=3).sample(logits.clone(), hot)] == [worst] * 3


def test_score_tokens_gives_logprobs_ranks_and_top_like_plain_torch() -> None:
    logits = rand_logits(7)
    next_ids = torch.tensor([0, 5, 17, 49, 3, 3, 21])
    logp = logits.log_softmax(dim=-1)
    chosen = logp.gather(1, next_ids[:, None])[:, 0]
    for k in (0, 3):
        logprobs, ranks, top = score_tokens(logits, next_ids, k)
        torch.testing.assert_close(torch.tensor(logprobs), chosen)
        assert ranks == ((logp > chosen[:, None]).sum(dim=-1) + 1).tolist()
        assert min(ranks) >= 1 and max(ranks) > 1
        if k == 0:
            assert top is None
            continue
        assert top is not None
        vals, ids = logp.topk(k, dim=-1)
        assert [[t for t, _ in row] for row in top] == ids.tolist()
        torch.testing.assert_close(torch.tensor([[v for _, v in row] for row in top]), vals)


def test_a_token_tied_with_others_takes_the_best_rank_of_its_tie() -> None:
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0]] * 3)
    _, ranks, _ = score_tokens(logits, torch.tensor([2, 0, 3]), 0)
    assert ranks == [1, 3, 4]
