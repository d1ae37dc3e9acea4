"""Batched sampling on the logits' device.

One call handles the whole batch with tensor operations over [N, V]; Python only loops over the
requests to gather their settings into a few small tensors. Order of operations per row:

1. the row's `logit_bias` added to the raw logits; then penalties: repetition (HF/CTRL: prompt
   and output tokens), then frequency and presence (OpenAI: output tokens only), then the row's
   `banned_token_ids` set to -inf (its stop and eos ids while fewer than min_new_tokens tokens
   are generated);
2. logprobs = log_softmax of the penalised, masked logits (independent of the sampling settings);
3. greedy rows (temperature 0 or top_k 1) take the argmax of the penalised logits;
4. the other rows: temperature, then top-k, top-p and min-p masks, then an exponential race
   (`argmax(p / q)` with `q ~ Exp(1)`, computed as `argmax(logits / T - log q)`), which draws
   exactly from `p`. Rows with top-k or top-p only look at their best tokens (`torch.topk`, much
   cheaper than sorting the vocab) unless the kept set may reach past them.

The race noise of a row with a seed is a counter-based hash of (seed, tokens generated so far,
token id), so a seeded request gives the same tokens whatever else is in the batch. Rows without a
seed draw their noise from the sampler's generator.

`sample_deferred` leaves the samples on the device, their copy to the host queued behind them:
the engine can queue the next step before it reads them (see engine.py, running ahead).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from glm47.worker.batch import SampleOutput, SamplingParams, ScheduledSeq
from glm47.worker.sampling_penalties import (
    TokenHistory,
    apply_bans,
    apply_logit_bias,
    apply_penalties,
)

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
CANDIDATES = 1024  # tokens a top-k/top-p row is drawn from when they hold its whole kept set
_SEEDED_CHUNK_ROWS = 32  # rows of seeded noise built at once (bounds the [rows, V] int64 buffer)


def _signed64(x: int) -> int:
    """The two's-complement int64 value of an unsigned 64-bit integer."""
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


def _splitmix64_int(x: int) -> int:
    """splitmix64 on Python ints (unsigned 64-bit arithmetic)."""
    z = (x + _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK64
    return z ^ (z >> 31)


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 values seen as unsigned 64-bit integers."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _splitmix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64 finaliser on int64 tensors; multiplication wraps modulo 2**64."""
    z = x + _signed64(_GOLDEN)
    z = (z ^ _shr(z, 30)) * _signed64(_MIX1)
    z = (z ^ _shr(z, 27)) * _signed64(_MIX2)
    return z ^ _shr(z, 31)


def row_key(seed: int, step: int) -> int:
    """The int64 key of one seeded row at one decoding step (step = tokens generated so far)."""
    return _signed64(_splitmix64_int(_splitmix64_int(seed & _MASK64) ^ (step & _MASK64)))


def seeded_exponentials(
    keys: torch.Tensor,  # [R] int64, from row_key
    tokens: torch.Tensor,  # [R, K] or [1, K] int64 token ids
) -> torch.Tensor:  # [R, K] fp32
    """Exp(1) noise, a pure function of (key, token id): the same on any batch and device."""
    h = _splitmix64(keys[:, None] + tokens * _signed64(_GOLDEN))  # [R, K]
    bits = _shr(h, 11)  # [R, K] uniform in [0, 2**53)
    u = (bits.to(torch.float64) + 0.5) * (1.0 / (1 << 53))  # [R, K] in (0, 1)
    return (-torch.log(u)).to(torch.float32)


@dataclass
class _Rows:
    """Sampling settings of a set of rows as device columns."""

    temperature: torch.Tensor  # [n, 1] fp32 (> 0: greedy rows never get here)
    top_k: torch.Tensor  # [n, 1] int64, V when off
    top_p: torch.Tensor  # [n, 1] fp32
    log_min_p: torch.Tensor  # [n, 1] fp32, -inf when off

    @staticmethod
    def of(params: list[SamplingParams], vocab: int, device: torch.device) -> _Rows:
        host = torch.tensor(
            [[p.temperature, _top_k(p, vocab), p.top_p, p.min_p] for p in params],
            dtype=torch.float64,
        )  # [n, 4]: one host-to-device copy
        dev = host.to(device, non_blocking=True)
        return _Rows(
            temperature=dev[:, 0:1].float(),
            top_k=dev[:, 1:2].long(),
            top_p=dev[:, 2:3].float(),
            log_min_p=dev[:, 3:4].float().log(),
        )


def _top_k(p: SamplingParams, vocab: int) -> int:
    return p.top_k if 0 < p.top_k < vocab else vocab


def _needs_sorting(p: SamplingParams, vocab: int) -> bool:
    return _top_k(p, vocab) < vocab or p.top_p < 1.0


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

    State: the generator of rows without a seed (one per device), and the token history that makes
    penalties cheap. Rows with top-k or top-p draw from their best `CANDIDATES` tokens (or top_k,
    if larger) when those hold the whole kept set, which is exact; other rows use the whole vocab.
    """

    def __init__(self, seed: int | None = None) -> None:
        self._seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}
        self._history = TokenHistory()

    def generator(self, device: torch.device) -> torch.Generator:
        """The global generator for rows without a seed, one per device."""
        if device not in self._generators:
            gen = torch.Generator(device=device)
            if self._seed is None:
                gen.seed()
            else:
                gen.manual_seed(self._seed)
            self._generators[device] = gen
        return self._generators[device]

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
    ) -> DeferredSamples:
        """`sample`, its results left on the device with their host copy queued."""
        if logits.dim() != 2 or logits.shape[0] != len(seqs):
            raise ValueError(f"logits {tuple(logits.shape)} do not match {len(seqs)} sequences")
        self._history.retain({s.rid for s in seqs})
        logits = logits.float()
        if any(s.sampling.logit_bias_ids for s in seqs):
            logits = apply_logit_bias(logits, seqs)
        logits = apply_bans(apply_penalties(logits, seqs, self._history), seqs)
        tokens = self._choose(logits, seqs)  # [N] int64
        want = [s.sampling.logprobs for s in seqs]
        return DeferredSamples(tokens, _packed(logits, tokens, want), seqs, want)

    def _choose(self, logits: torch.Tensor, seqs: list[ScheduledSeq]) -> torch.Tensor:  # [N]
        """Greedy rows take the argmax; the others are split by whether they need sorting."""
        tokens = logits.argmax(dim=-1)  # [N]
        vocab = logits.shape[1]
        plain: list[int] = []
        ranked: list[int] = []
        for i, s in enumerate(seqs):
            if not s.sampling.greedy:
                (ranked if _needs_sorting(s.sampling, vocab) else plain).append(i)
        for rows, draw in ((plain, self._draw_full), (ranked, self._draw_ranked)):
            if len(rows) == len(seqs):
                return draw(logits, seqs)
            if rows:
                idx = torch.tensor(rows, dtype=torch.int64).to(logits.device, non_blocking=True)
                tokens.index_copy_(0, idx, draw(logits[idx], [seqs[i] for i in rows]))
        return tokens

    def _draw_full(self, logits: torch.Tensor, seqs: list[ScheduledSeq]) -> torch.Tensor:  # [n]
        """Temperature and min-p over the whole vocab, then the exponential race."""
        rows = _Rows.of([s.sampling for s in seqs], logits.shape[1], logits.device)
        scaled = logits / rows.temperature  # [n, V]
        if any(s.sampling.min_p > 0.0 for s in seqs):
            floor = scaled.amax(dim=-1, keepdim=True) + rows.log_min_p  # [n, 1]
            scaled = scaled.masked_fill(scaled < floor, float("-inf"))
        log_q = self._log_noise(seqs, logits.shape[1], None, logits.device)  # [n, V]
        return (scaled - log_q).argmax(dim=-1)

    def _draw_ranked(
        self, logits: torch.Tensor, seqs: list[ScheduledSeq], width: int | None = None
    ) -> torch.Tensor:  # [n]
        """Top-k, top-p and min-p over each row's best `width` tokens, then the exponential race.
        Rows whose kept set may reach past the candidates are drawn again over the whole vocab."""
        vocab = logits.shape[1]
        params = [s.sampling for s in seqs]
        rows = _Rows.of(params, vocab, logits.device)
        top_ks = [_top_k(p, vocab) for p in params]
        width = width or min(vocab, max([CANDIDATES] + [k for k in top_ks if k < vocab]))
        vals, ids = logits.topk(width, dim=-1)  # [n, W] each, best first
        rank = torch.arange(width, device=logits.device)[None, :]  # [1, W]
        drop = rank >= rows.top_k  # [n, W]
        vals = (vals / rows.temperature).masked_fill(drop, float("-inf"))  # [n, W]
        log_norm = vals.logsumexp(dim=-1, keepdim=True)  # [n, 1] over the top-k set
        top_k_off = rows.top_k >= vocab  # [n, 1]
        if width < vocab and any(k >= vocab for k in top_ks):
            full = (logits / rows.temperature).logsumexp(dim=-1, keepdim=True)  # [n, 1]
            log_norm = torch.where(top_k_off, full, log_norm)
        probs = (vals - log_norm).exp()  # [n, W]
        before = probs.cumsum(dim=-1) - probs  # [n, W] mass of the better tokens
        drop = drop | ((before >= rows.top_p) & (rank > 0)) | (vals < vals[:, :1] + rows.log_min_p)
        log_q = self._log_noise(seqs, width, ids, logits.device)  # [n, W]
        chosen = (vals.masked_fill(drop, float("-inf")) - log_q).argmax(dim=-1, keepdim=True)
        tokens = ids.gather(1, chosen)[:, 0]  # [n]
        if width < vocab:
            cut = top_k_off[:, 0] & (probs.sum(dim=-1) < rows.top_p[:, 0])  # [n]
            # A host sync: a step queued ahead (engine.py) whose batch has top-k / top-p rows waits
            # here for its own forward pass, so running ahead hides no host work for such steps.
            redo = cut.nonzero()[:, 0]  # [r]
            if redo.numel() > 0:
                again = [seqs[i] for i in redo.tolist()]
                tokens[redo] = self._draw_ranked(logits[redo], again, width=vocab)
        return tokens

    def _log_noise(
        self,
        seqs: list[ScheduledSeq],
        width: int,
        token_ids: torch.Tensor | None,  # [n, W] token id of each column; None: column = token id
        device: torch.device,
    ) -> torch.Tensor:  # [n, W] fp32, log of Exp(1) noise
        """Unseeded rows draw from the generator; seeded rows hash (seed, step, token id)."""
        noise = torch.empty(len(seqs), width, device=device)
        noise.exponential_(generator=self.generator(device))
        seeded = [i for i, s in enumerate(seqs) if s.sampling.seed is not None]
        columns = torch.arange(width, device=device, dtype=torch.int64)[None, :]  # [1, W]
        for start in range(0, len(seeded), _SEEDED_CHUNK_ROWS):
            chunk = seeded[start : start + _SEEDED_CHUNK_ROWS]
            keys = [row_key(seqs[i].sampling.seed or 0, len(seqs[i].output_ids)) for i in chunk]
            key_t = torch.tensor(keys, dtype=torch.int64).to(device, non_blocking=True)
            idx = torch.tensor(chunk, dtype=torch.int64).to(device, non_blocking=True)
            toks = columns if token_ids is None else token_ids[idx]  # [1 or c, W]
            noise.index_copy_(0, idx, seeded_exponentials(key_t, toks))
        return noise.clamp_min_(1e-30).log_()


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
