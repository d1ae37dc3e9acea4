"""Baseline: transformers' Glm4MoeLiteForCausalLM generating the burst workload's requests offline.

Random weights of the real shapes (N(0, 0.02), norms 1) built directly on the GPU, bf16, the
`grouped_mm` experts implementation, padded `generate` batches of requests with similar output lengths
(the requests sorted by target output length, then cut into batches, which wastes the fewest padded
steps), each request generating exactly its target output length (ignore eos). The batches run in a
seeded random order (the first one no longer than the median request) until `--budget-s` would be exceeded; output tokens/s counts the tokens the
completed requests asked for over the time spent. Prints and writes the result. Its
continuous-batching `generate_batch` is not used: with this model its paged cache is sized for head
dim 64 and receives 256.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from glm47.bench.dataset import load_requests


def build_model(model_dir: str) -> torch.nn.Module:
    from transformers import AutoConfig, Glm4MoeLiteForCausalLM

    cfg = AutoConfig.from_pretrained(model_dir)
    with torch.device("cuda"):
        model = Glm4MoeLiteForCausalLM._from_config(
            cfg, dtype=torch.bfloat16, experts_implementation="grouped_mm"
        )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            elif "e_score_correction_bias" in name:
                p.zero_()
            else:
                p.normal_(0.0, 0.02)
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", required=True, help="the bench model directory")
    p.add_argument(
        "--requests", required=True, help="JSON lines from `glm47 bench --save-requests`"
    )
    p.add_argument("--num-prompts", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--budget-s", type=float, default=120.0, help="start no batch past this")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(args.model_dir) / "tokenizer.json"))
    reqs = load_requests(args.requests)[: args.num_prompts]
    model = build_model(args.model_dir)
    order = sorted(range(len(reqs)), key=lambda i: reqs[i].output_len)
    batches = [order[i : i + args.batch_size] for i in range(0, len(order), args.batch_size)]
    random.Random(0).shuffle(batches)
    # Start with a batch no longer than the median request, so the step time is known early.
    median = reqs[order[len(order) // 2]].output_len
    first = next(i for i, b in enumerate(batches) if reqs[b[-1]].output_len <= median)
    batches.insert(0, batches.pop(first))
    generated = done = steps_run = 0
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for number, members in enumerate(batches):
        batch = [reqs[i] for i in members]
        elapsed = time.perf_counter() - t0
        per_step = elapsed / steps_run if steps_run else 0.0
        if elapsed + per_step * max(r.output_len for r in batch) > args.budget_s and done:
            continue  # would run past the budget: a shorter batch may still fit
        ids = [tok.encode(r.prompt).ids for r in batch]  # type: ignore[arg-type]
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), 154820, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, x in enumerate(ids):  # left padding
            input_ids[row, width - len(x) :] = torch.tensor(x)
            mask[row, width - len(x) :] = 1
        new = max(r.output_len for r in batch)
        with torch.no_grad():
            model.generate(
                input_ids=input_ids.cuda(),
                attention_mask=mask.cuda(),
                do_sample=False,
                max_new_tokens=new,
                min_new_tokens=new,
                eos_token_id=None,
                pad_token_id=154820,
            )
        generated += sum(r.output_len for r in batch)  # tokens the requests asked for
        done += len(batch)
        steps_run += new
        print(
            f"batch {number}: {len(batch)} requests, {new} steps, {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    result = {
        "requests": done,
        "requests_offered": len(reqs),
        "output_tokens": generated,
        "seconds": wall,
        "output_tok_per_s": generated / wall,
        "batch_size": args.batch_size,
        "gpu": torch.cuda.get_device_name(),
    }
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
