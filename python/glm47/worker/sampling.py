"""Batched sampling on the logits' device.

One call handles the whole batch on the device; Python only loops over the requests to gather
their settings into a few small tensors, and nothing is read back until the samples are. Order of operations per row:

1. the row's `logit_bias` added to the raw logits; then penalties: repetition (HF/CTRL: prompt
   and output tokens), then frequency and presence (OpenAI: output tokens only), then the row's
   `banned_token_ids` set to -inf (its stop and eos ids while fewer than min_new_tokens tokens
   are generated), and under a JSON grammar every id outside the row's `allowed` mask;
2. logprobs = log_softmax of the penalised, masked logits (independent of the sampling settings);
3. greedy rows (temperature 0 or top_k 1) take the argmax of the penalised logits;
4. the other rows: temperature, then top-k, top-p and min-p masks, then an exponential race
   (`argmax(p / q)` with `q ~ Exp(1)`, computed as `argmax(logits / T - log q)`), which draws
   exactly from `p`: the same kernels for all of them (kernels/sampling.py, where the rule is exact,
   ties included).

The race noise is a counter-based hash of a row's 64-bit key and the token id; the key is that of
(the request's seed, tokens generated so far). A request without a seed gets one from the
sampler's random stream when it is first sampled. So a request's tokens do not depend on what
else is in the batch, nor on rows computed for nothing (a step run ahead past a stop).

`sample_deferred` leaves the samples on the device, their copy to the host queued behind them:
the engine can queue the next step before it reads them (see engine.py, running ahead).
"""

from __future__ import annotations

import math
import random

import torch

from glm47.kernels.race_noise import row_key
from glm47.kernels.sampling import candidate_width, race_sample, race_sample_ref
from glm47.worker.batch import SampleOutput, SamplingParams, ScheduledSeq
from glm47.worker.grammar import apply_masks
from glm47.worker.sampling_penalties import (
    PenaltyCounts,
    apply_bans,
    apply_logit_bias,
    apply_penalties,
)


def _top_k(p: SamplingParams, vocab: int) -> int:
    return p.top_k if 0 < p.top_k < vocab else vocab


class DeferredSamples:
    """A batch's samples on the device, with their copy to the host queued right behind them.

    `tokens` ([N] int64, row i = seqs[i]) can feed the next step's input on the device;
    `collect` waits for the copy alone (not for work queued after it) and builds the outputs."""

    def __init__(
        self,
        tokens: torch.Tensor,  # [N] int64
        packed: torch.Tensor,  # [N, C] float64: token, logprob, top ids, top logprobs
        seqs: list[ScheduledSeq],
        want: list[int],  # per row: the logprobs asked for (-1: none)
    ) -> None:
        self.tokens = tokens
        self.seqs = seqs
        self._want = want
        self._event: torch.cuda.Event | None = None
        if packed.is_cuda:
            self._host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
            self._host.copy_(packed, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record(torch.cuda.current_stream(packed.device))
        else:
            self._host = packed
        self._outputs: list[SampleOutput] | None = None

    def collect(self) -> list[SampleOutput]:
        """The samples on the host (waits for their copy the first time)."""
        if self._outputs is None:
            if self._event is not None:
                self._event.synchronize()
            self._outputs = _outputs(self._host.tolist(), self.seqs, self._want)
        return self._outputs


class Sampler:
    """Samples one token per row of a logits batch.

    State: the seeds given to requests without one (and the stream they come from), and the
    penalised requests' token counts on the device. Nothing in a call waits for the device: what it queues depends on the
    rows' settings alone, so the engine can queue the next step before the samples are read.
    """

    def __init__(self, seed: int | None = None) -> None:
        self._random = random.Random(seed)  # the seeds of requests without one
        # rid -> (the request's prompt list, its seed): a new prompt list is a new request
        self._seeds: dict[str, tuple[list[int], int]] = {}
        self._counts = PenaltyCounts()

    def sample(
        self,
        logits: torch.Tensor,  # [N, V] fp32, row i belongs to seqs[i]
        seqs: list[ScheduledSeq],
    ) -> list[SampleOutput]:
        """Sample the next token of every row; `seqs[i]` holds row i's settings and history."""
        return self.sample_deferred(logits, seqs).collect()

    def sample_deferred(
        self,
        logits: torch.Tensor,  # [N, V] fp32, row i belongs to seqs[i]
        seqs: list[ScheduledSeq],
        last: torch.Tensor | None = None,  # [N] int64: each row's input token (fed rows' need)
    ) -> DeferredSamples:
        """`sample`, its results left on the device with their host copy queued. `last` gives
        the penalties the real last output token of rows fed on the device (`ScheduledSeq.fed`)."""
        if logits.dim() != 2 or logits.shape[0] != len(seqs):
            raise ValueError(f"logits {tuple(logits.shape)} do not match {len(seqs)} sequences")
        rids = {s.rid for s in seqs}
        self._counts.retain(rids)
        for rid in [r for r in self._seeds if r not in rids]:
            del self._seeds[rid]
        logits = logits.float()
        if any(s.sampling.logit_bias_ids for s in seqs):
            logits = apply_logit_bias(logits, seqs)
        logits = apply_bans(apply_penalties(logits, seqs, self._counts, last), seqs)
        masked = [i for i, s in enumerate(seqs) if s.allowed is not None]
        if masked:
            logits = apply_masks(logits, masked, [seqs[i].allowed or b"" for i in masked])
        tokens = self._choose(logits, seqs)  # [N] int64
        want = [s.sampling.logprobs for s in seqs]
        return DeferredSamples(tokens, _packed(logits, tokens, want), seqs, want)

    def _choose(self, logits: torch.Tensor, seqs: list[ScheduledSeq]) -> torch.Tensor:  # [N]
        """Greedy rows take the argmax; the others are drawn together (`_draw`)."""
        drawn = [i for i, s in enumerate(seqs) if not s.sampling.greedy]
        if len(drawn) == len(seqs):
            return self._draw(logits, seqs)
        tokens = logits.argmax(dim=-1)  # [N]
        if drawn:
            idx = torch.tensor(drawn, dtype=torch.int64).to(logits.device, non_blocking=True)
            tokens.index_copy_(0, idx, self._draw(logits[idx], [seqs[i] for i in drawn]))
        return tokens

    def _draw(self, logits: torch.Tensor, seqs: list[ScheduledSeq]) -> torch.Tensor:  # [n]
        """Temperature, top-k, top-p and min-p, then the exponential race (kernels/sampling):
        the Triton kernel on a GPU, its torch reference elsewhere. The settings and noise keys
        go over in two small copies; nothing comes back."""
        vocab = logits.shape[1]
        params = [s.sampling for s in seqs]
        top_ks = [_top_k(p, vocab) for p in params]
        host = torch.tensor(
            [
                [1.0 / p.temperature, k, p.top_p, math.log(p.min_p) if p.min_p > 0 else -math.inf]
                for p, k in zip(params, top_ks, strict=True)
            ],
            dtype=torch.float32,
        )  # [n, 4]
        keys = torch.tensor([self._key(s) for s in seqs], dtype=torch.int64)  # [n]
        if not logits.is_cuda:
            return race_sample_ref(logits, host.to(logits.device), keys.to(logits.device))
        width = candidate_width(top_ks, vocab)
        alone = any(k >= vocab and p.top_p < 1.0 for p, k in zip(params, top_ks, strict=True))
        dev_params = host.to(logits.device, non_blocking=True)
        dev_keys = keys.to(logits.device, non_blocking=True)
        return race_sample(logits, dev_params, dev_keys, width, alone)

    def _key(self, seq: ScheduledSeq) -> int:
        """The row's noise key: from the request's seed (or the one it was given) and its output
        length."""
        seed = seq.sampling.seed
        if seed is None:
            held = self._seeds.get(seq.rid)
            if held is None or held[0] is not seq.prompt_ids:
                held = (seq.prompt_ids, self._random.getrandbits(64))
                self._seeds[seq.rid] = held
            seed = held[1]
        return row_key(seed, len(seq.output_ids))


def _packed(
    logits: torch.Tensor,  # [N, V] penalised
    tokens: torch.Tensor,  # [N] int64
    want: list[int],
) -> torch.Tensor:  # [N, 1] or [N, 2 + 2k] float64
    """The sampled tokens and, where asked, each one's logprob and the top-k pairs: one tensor,
    so one host transfer."""
    if max(want, default=-1) < 0:
        return tokens.double()[:, None]
    log_norm = logits.logsumexp(dim=-1, keepdim=True)  # [N, 1]: log_softmax without [N, V]
    chosen = (logits.gather(1, tokens[:, None]) - log_norm)[:, 0]  # [N]
    k = max(want)
    cols = [tokens.double(), chosen.double()]
    if k > 0:
        top_vals, top_ids = logits.topk(min(k, logits.shape[1]), dim=-1)  # [N, k] each
        cols += [top_ids.double().T, (top_vals - log_norm).double().T]
    return torch.cat([c.reshape(-1, logits.shape[0]) for c in cols], dim=0).T  # [N, 2+2k]


def _outputs(
    host: list[list[float]], seqs: list[ScheduledSeq], want: list[int]
) -> list[SampleOutput]:
    """SampleOutputs from `_packed`'s rows on the host."""
    width = (len(host[0]) - 2) // 2 if host and len(host[0]) > 1 else 0
    out = []
    for seq, row, k_i in zip(seqs, host, want, strict=True):
        sample = SampleOutput(rid=seq.rid, token_id=int(row[0]))
        if k_i >= 0:
            sample.logprob = float(row[1])
        if k_i > 0:
            ids, vals = row[2 : 2 + width], row[2 + width :]
            sample.top_logprobs = [
                (int(t), float(v)) for t, v in zip(ids[:k_i], vals[:k_i], strict=True)
            ]
        out.append(sample)
    return out


def score_tokens(
    logits: torch.Tensor,  # [R, V] fp32
    next_ids: torch.Tensor,  # [R] int64, the token that follows each row
    k: int,
) -> tuple[list[float], list[int], list[list[tuple[int, float]]] | None]:
    """Each row's logprob of its next token under log_softmax(logits), that token's rank in the
    row and, for k > 0, the row's top k (token id, logprob) pairs, best first: prompt logprobs (no
    penalty or ban applies).

    The rank is 1 + the number of ids whose logit is strictly larger: ids tied with the next token
    do not push it down (it takes the best rank of its tie). Logits and logprobs of one row differ
    by a constant, so this is their order under log_softmax too."""
    log_norm = logits.logsumexp(dim=-1, keepdim=True)  # [R, 1]
    next_logits = logits.gather(1, next_ids[:, None])  # [R, 1]
    chosen = (next_logits - log_norm)[:, 0]  # [R]
    ranks = (logits > next_logits).sum(dim=-1) + 1  # [R]
    cols = [chosen[:, None].double(), ranks[:, None].double()]
    width = 0
    if k > 0:
        top_vals, top_ids = logits.topk(min(k, logits.shape[1]), dim=-1)  # [R, k] each
        cols += [top_ids.double(), (top_vals - log_norm).double()]
        width = top_ids.shape[1]
    host = torch.cat(cols, 1).tolist()  # [R, 2 + 2k]: one host transfer
    logprobs = [float(row[0]) for row in host]
    rank_list = [int(row[1]) for row in host]
    if k <= 0:
        return logprobs, rank_list, None
    top = [
        [(int(t), float(v)) for t, v in zip(row[2 : 2 + width], row[2 + width :], strict=True)]
        for row in host
    ]
    return logprobs, rank_list, top
