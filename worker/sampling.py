"""Batched sampling on the logits' device.

One call handles the whole batch with tensor operations over [N, V]; Python only loops over the
requests to gather their settings into a few small tensors. Order of operations per row:

1. penalties on the raw logits: repetition (HF/CTRL: prompt and output tokens), then frequency and
   presence (OpenAI: output tokens only);
2. logprobs = log_softmax of the penalised logits (independent of the sampling settings);
3. greedy rows (temperature 0 or top_k 1) take the argmax of the penalised logits;
4. the other rows: temperature, then top-k, top-p and min-p masks, then an exponential race
   (`argmax(p / q)` with `q ~ Exp(1)`), which draws exactly from `p`.

The race noise of a row with a seed is a counter-based hash of (seed, tokens generated so far,
token id), so a seeded request gives the same tokens whatever else is in the batch. Rows without a
seed draw their noise from the sampler's generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from glm47.worker.batch import SampleOutput, SamplingParams, ScheduledSeq

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
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


def seeded_exponentials(keys: torch.Tensor, vocab: int) -> torch.Tensor:  # [R, V] fp32
    """Exp(1) noise, a pure function of (key, token id): the same on any batch and device."""
    token = torch.arange(vocab, device=keys.device, dtype=torch.int64)  # [V]
    h = _splitmix64(keys[:, None] + token[None, :] * _signed64(_GOLDEN))  # [R, V]
    bits = _shr(h, 11)  # [R, V] uniform in [0, 2**53)
    u = (bits.to(torch.float64) + 0.5) * (1.0 / (1 << 53))  # [R, V] in (0, 1)
    return (-torch.log(u)).to(torch.float32)


@dataclass
class _RowParams:
    """The batch's sampling settings as device tensors, one entry per row."""

    temperature: torch.Tensor  # [N, 1] fp32, 1.0 on greedy rows
    top_k: torch.Tensor  # [N, 1] int64, V when off
    top_p: torch.Tensor  # [N, 1] fp32
    min_p: torch.Tensor  # [N, 1] fp32
    greedy: torch.Tensor  # [N] bool


class Sampler:
    """Samples one token per row of a logits batch. Stateless apart from the unseeded generator."""

    def __init__(self, seed: int | None = None) -> None:
        self._seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

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
        if logits.dim() != 2 or logits.shape[0] != len(seqs):
            raise ValueError(f"logits {tuple(logits.shape)} do not match {len(seqs)} sequences")
        params = [s.sampling for s in seqs]
        logits = apply_penalties(logits.float(), seqs)
        tokens = self._choose(logits, seqs, params)  # [N] int64
        want_lp = [p.logprobs for p in params]
        if max(want_lp, default=-1) < 0:
            ids = tokens.tolist()
            return [
                SampleOutput(rid=s.rid, token_id=int(t)) for s, t in zip(seqs, ids, strict=True)
            ]
        return _with_logprobs(logits, tokens, seqs, want_lp)

    def _choose(
        self, logits: torch.Tensor, seqs: list[ScheduledSeq], params: list[SamplingParams]
    ) -> torch.Tensor:  # [N] int64
        greedy_ids = logits.argmax(dim=-1)  # [N]
        if all(p.greedy for p in params):
            return greedy_ids
        rows = _row_params(params, logits.shape[1], logits.device)
        probs = _filtered_probs(logits, rows, params)  # [N, V]
        noise = self._noise(probs, seqs, params)  # [N, V]
        sampled = (probs / noise).argmax(dim=-1)  # [N]
        return torch.where(rows.greedy, greedy_ids, sampled)

    def _noise(
        self, probs: torch.Tensor, seqs: list[ScheduledSeq], params: list[SamplingParams]
    ) -> torch.Tensor:  # [N, V] fp32, Exp(1)
        noise = torch.empty_like(probs).exponential_(generator=self.generator(probs.device))
        seeded = [i for i, p in enumerate(params) if p.seed is not None and not p.greedy]
        for start in range(0, len(seeded), _SEEDED_CHUNK_ROWS):
            chunk = seeded[start : start + _SEEDED_CHUNK_ROWS]
            keys = [row_key(params[i].seed or 0, len(seqs[i].output_ids)) for i in chunk]
            key_t = torch.tensor(keys, dtype=torch.int64).to(probs.device, non_blocking=True)
            idx = torch.tensor(chunk, dtype=torch.int64).to(probs.device, non_blocking=True)
            noise.index_copy_(0, idx, seeded_exponentials(key_t, probs.shape[1]))
        return noise.clamp_min_(1e-30)


def _row_params(params: list[SamplingParams], vocab: int, device: torch.device) -> _RowParams:
    """Pack the settings into one host tensor, copy it once, and split it into columns."""
    host = torch.tensor(
        [
            [
                1.0 if p.greedy else p.temperature,
                float(p.top_k if 0 < p.top_k < vocab else vocab),
                p.top_p,
                p.min_p,
                1.0 if p.greedy else 0.0,
            ]
            for p in params
        ],
        dtype=torch.float64,
    )  # [N, 5]
    dev = host.to(device, non_blocking=True)
    return _RowParams(
        temperature=dev[:, 0:1].float(),
        top_k=dev[:, 1:2].long(),
        top_p=dev[:, 2:3].float(),
        min_p=dev[:, 3:4].float(),
        greedy=dev[:, 4] > 0.5,
    )


def _filtered_probs(
    logits: torch.Tensor, rows: _RowParams, params: list[SamplingParams]
) -> torch.Tensor:  # [N, V] fp32, zero outside each row's kept set
    """Temperature, then top-k and top-p (on the sorted row), then min-p, as probabilities."""
    scaled = logits / rows.temperature  # [N, V]
    vocab = scaled.shape[1]
    need_sort = any((0 < p.top_k < vocab) or p.top_p < 1.0 for p in params if not p.greedy)
    if need_sort:
        sorted_vals, sorted_idx = scaled.sort(dim=-1, descending=True)  # [N, V] each
        rank = torch.arange(vocab, device=scaled.device)[None, :]  # [1, V]
        drop = rank >= rows.top_k  # [N, V]
        sorted_vals = sorted_vals.masked_fill(drop, float("-inf"))
        sorted_probs = sorted_vals.softmax(dim=-1)  # [N, V]
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # [N, V] mass of better tokens
        drop = drop | ((before >= rows.top_p) & (rank > 0))
        scaled = scaled.scatter(1, sorted_idx, sorted_vals.masked_fill(drop, float("-inf")))
    probs = scaled.softmax(dim=-1)  # [N, V]
    if any(p.min_p > 0.0 for p in params if not p.greedy):
        threshold = rows.min_p * probs.amax(dim=-1, keepdim=True)  # [N, 1]
        probs = probs.masked_fill(probs < threshold, 0.0)
    return probs


def apply_penalties(logits: torch.Tensor, seqs: list[ScheduledSeq]) -> torch.Tensor:  # [N, V]
    """Repetition penalty over prompt + output tokens, then frequency and presence penalties over
    output tokens. Rows without penalties are left untouched; returns a new tensor when any row has
    one, else `logits` itself."""
    params = [s.sampling for s in seqs]
    rep_rows = [i for i, p in enumerate(params) if p.repetition_penalty != 1.0]
    oai_rows = [
        i for i, p in enumerate(params) if p.frequency_penalty != 0.0 or p.presence_penalty != 0.0
    ]
    if not rep_rows and not oai_rows:
        return logits
    logits = logits.clone()
    n, vocab = logits.shape
    device = logits.device
    if rep_rows:
        seen = torch.zeros(n, vocab, dtype=torch.bool, device=device)  # [N, V]
        row_idx, tok_idx = _flat_indices(
            rep_rows, [seqs[i].prompt_ids + seqs[i].output_ids for i in rep_rows], device
        )
        seen[row_idx, tok_idx] = True
        penalty = _column([p.repetition_penalty for p in params], device)  # [N, 1]
        penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
        logits = torch.where(seen, penalised, logits)
    if oai_rows:
        counts = torch.zeros(n, vocab, dtype=torch.float32, device=device)  # [N, V]
        row_idx, tok_idx = _flat_indices(oai_rows, [seqs[i].output_ids for i in oai_rows], device)
        counts.index_put_(
            (row_idx, tok_idx), torch.ones_like(tok_idx, dtype=torch.float32), accumulate=True
        )
        freq = _column([p.frequency_penalty for p in params], device)  # [N, 1]
        pres = _column([p.presence_penalty for p in params], device)  # [N, 1]
        logits = logits - freq * counts - pres * (counts > 0).float()
    return logits


def _column(values: list[float], device: torch.device) -> torch.Tensor:  # [N, 1] fp32
    return torch.tensor(values, dtype=torch.float32).to(device, non_blocking=True)[:, None]


def _flat_indices(
    rows: list[int], tokens: list[list[int]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:  # ([M] int64 row index, [M] int64 token id)
    """(row, token) index pairs for every token of every listed row, as device tensors."""
    lengths = torch.tensor([len(t) for t in tokens], dtype=torch.int64)  # [R]
    row_idx = torch.repeat_interleave(torch.tensor(rows, dtype=torch.int64), lengths)  # [M]
    flat = [t for toks in tokens for t in toks]
    tok_idx = torch.tensor(flat, dtype=torch.int64)  # [M]
    return row_idx.to(device, non_blocking=True), tok_idx.to(device, non_blocking=True)


def _with_logprobs(
    logits: torch.Tensor,  # [N, V] penalised
    tokens: torch.Tensor,  # [N] int64
    seqs: list[ScheduledSeq],
    want: list[int],
) -> list[SampleOutput]:
    """Attach the sampled token's logprob and the requested top-k pairs, with one host transfer."""
    logprobs = logits.log_softmax(dim=-1)  # [N, V]
    chosen = logprobs.gather(1, tokens[:, None])[:, 0]  # [N]
    k = max(want)
    cols = [tokens.double(), chosen.double()]
    if k > 0:
        top_vals, top_ids = logprobs.topk(min(k, logits.shape[1]), dim=-1)  # [N, k] each
        cols += [top_ids.double().T, top_vals.double().T]
    host = torch.cat([c.reshape(-1, logits.shape[0]) for c in cols], dim=0).T.tolist()  # [N, 2+2k]
    width = (len(host[0]) - 2) // 2 if host else 0
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
