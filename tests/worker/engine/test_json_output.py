"""JSON output under a request's grammar, on the built-in tiny model (random weights, CPU): every
sample is drawn under the grammar's mask, so whatever the model prefers, the output is a
document of the schema, ended by the grammar (finish "stop")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from glm47 import _native
from glm47.worker.batch import SamplingParams, ScheduledSeq
from glm47.worker.config import EngineConfig
from glm47.worker.engine import Engine, Request
from glm47.worker.engine.errors import InvalidRequestError
from glm47.worker.grammar import Grammars, apply_masks, unpack_masks
from glm47.worker.model.config import ModelConfig
from glm47.worker.model.tiny import make_tiny_model
from glm47.worker.sampling import Sampler
from glm47.worker.wire_messages import WireGrammar
from tests.worker.engine.engine_fakes import drain
from tests.worker.model.reference import make_runner

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "ok": {"type": "boolean"},
        "n": {"type": "integer"},
        "tags": {"type": "array", "items": {"enum": ["a", "b", 3]}, "maxItems": 3},
    },
    "required": ["name", "ok", "n", "tags"],
}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def conforms(doc: Any) -> bool:
    return (
        isinstance(doc, dict)
        and set(doc) == {"name", "ok", "n", "tags"}
        and isinstance(doc["name"], str)
        and len(doc["name"]) <= 8
        and isinstance(doc["ok"], bool)
        and isinstance(doc["n"], int)
        and not isinstance(doc["n"], bool)
        and isinstance(doc["tags"], list)
        and len(doc["tags"]) <= 3
        and all(t in ("a", "b", 3) for t in doc["tags"])
    )


def run(tiny_dir: Path, overlap: bool) -> tuple[dict[str, list[int]], dict[str, str], Engine]:
    cfg = ModelConfig.from_dir(tiny_dir)
    runner = make_runner(tiny_dir, torch.float32, page_size=4, kv_tokens=4096)
    config = EngineConfig(
        device="cpu", dtype="float32", page_size=4, max_req_total_len=2048,
        overlap_schedule=overlap,
    )  # fmt: skip
    tok = _native.Tokenizer(str(tiny_dir))
    engine = Engine(
        config, runner, Sampler(seed=0), tok.eos_token_ids, Grammars(str(tiny_dir), cfg.vocab_size)
    )
    prompt = tok.encode("Describe a person as JSON.")
    schema = json.dumps(SCHEMA)
    for i in range(3):
        engine.add_request(Request(
            rid=f"schema{i}", prompt_ids=prompt, max_new_tokens=1500,
            sampling=SamplingParams(temperature=1.0, seed=i), grammar=WireGrammar(schema=schema),
        ))  # fmt: skip
    # Any object: free strings and members could run on with random weights, so quotes and the
    # closing brace are favoured (logit_bias applies before the mask).
    ends = [tok.encode(t)[0] for t in ('"', "}")]
    engine.add_request(Request(
        rid="object", prompt_ids=prompt, max_new_tokens=1500,
        sampling=SamplingParams(temperature=1.0, seed=5, logit_bias_ids=tuple(ends),
                                logit_bias_values=(3.0, 3.0)),
        grammar=WireGrammar(schema=None),
    ))  # fmt: skip
    engine.add_request(Request(
        rid="choice", prompt_ids=prompt, max_new_tokens=50, sampling=SamplingParams(seed=9),
        grammar=WireGrammar(choices=["positive", "negative", "neg"]),
    ))  # fmt: skip
    engine.add_request(Request(rid="free", prompt_ids=prompt, max_new_tokens=300))
    tokens, finish = drain(engine)
    texts = {rid: tok.decode(ids) for rid, ids in tokens.items()}
    return tokens, {rid: f"{finish[rid]}:{texts[rid]}" for rid in tokens}, engine


def test_constrained_requests_write_documents_of_their_schema(tiny_dir: Path) -> None:
    tokens, results, _ = run(tiny_dir, overlap=False)
    for rid in ("schema0", "schema1", "schema2"):
        reason, text = results[rid].split(":", 1)
        assert reason == "stop", results[rid]
        assert conforms(json.loads(text)), text
    reason, text = results["object"].split(":", 1)
    assert reason == "stop" and isinstance(json.loads(text), dict), text
    reason, text = results["choice"].split(":", 1)
    assert reason == "stop" and text in ("positive", "negative", "neg"), results["choice"]
    assert results["free"].startswith("length:")
    # Queued ahead, a constrained step's sampling waits for the masks, which wait for the
    # samples before: the same tokens, with the forward passes run ahead.
    ahead, _, engine = run(tiny_dir, overlap=True)
    assert ahead == tokens
    longest = max(len(ids) for rid, ids in tokens.items() if rid not in ("free", "choice"))
    assert engine.steps_ahead >= longest - 2


def test_a_schema_the_grammar_cannot_enforce_is_refused(tiny_dir: Path) -> None:
    cfg = ModelConfig.from_dir(tiny_dir)
    runner = make_runner(tiny_dir, torch.float32, page_size=4, kv_tokens=256)
    config = EngineConfig(device="cpu", dtype="float32", page_size=4, max_req_total_len=256)
    engine = Engine(config, runner, Sampler(seed=0), [1], Grammars(str(tiny_dir), cfg.vocab_size))
    bad = WireGrammar(schema=json.dumps({"type": "array", "uniqueItems": True}))
    with pytest.raises(InvalidRequestError, match="uniqueItems"):
        engine.add_request(Request(rid="r", prompt_ids=[5, 6], max_new_tokens=4, grammar=bad))
    without = Engine(config, runner, Sampler(seed=0), [1])
    with pytest.raises(InvalidRequestError, match="not available"):
        without.add_request(
            Request(rid="r", prompt_ids=[5, 6], max_new_tokens=4, grammar=WireGrammar())
        )
    assert not engine.has_work() and not without.has_work()


def test_masks_unpack_and_set_disallowed_logits_to_minus_infinity() -> None:
    vocab = 70
    gen = torch.Generator().manual_seed(0)
    allowed = torch.rand((2, vocab), generator=gen) < 0.3
    words = torch.zeros((2, 3), dtype=torch.int64)
    for r, i in allowed.nonzero().tolist():
        words[r, i // 32] |= 1 << (i % 32)
    packed = [words[r].to(torch.uint32).numpy().tobytes() for r in range(2)]
    assert torch.equal(
        unpack_masks(torch.stack([torch.frombuffer(bytearray(p), dtype=torch.int32) for p in packed]),
                     vocab),
        allowed,
    )  # fmt: skip
    logits = torch.randn((3, vocab), generator=gen)
    out = apply_masks(logits, [0, 2], packed)
    assert torch.equal(out[1], logits[1]), "a row without a mask is untouched"
    for row, mask in ((0, allowed[0]), (2, allowed[1])):
        assert torch.equal(out[row][mask], logits[row][mask])
        assert torch.isneginf(out[row][~mask]).all()
    seqs = [
        ScheduledSeq(rid=str(i), token_ids=[1], start_pos=0, page_ids=[1], sample=True,
                     sampling=SamplingParams(temperature=0.0))
        for i in range(3)
    ]  # fmt: skip
    seqs[0].allowed, seqs[2].allowed = packed
    chosen = [s.token_id for s in Sampler(seed=0).sample(logits, seqs)]
    assert allowed[0, chosen[0]] and allowed[1, chosen[2]]
    assert chosen[1] == int(logits[1].argmax())


def test_masks_of_many_constraints_on_threads_equal_their_own(tiny_dir: Path) -> None:
    cfg = ModelConfig.from_dir(tiny_dir)
    grammars = Grammars(str(tiny_dir), cfg.vocab_size)
    tok = _native.Tokenizer(str(tiny_dir))
    texts = ['{"name": "Al', '{"name": "Al", "ok": tr', '{"name": "", "ok": false, "n": 1', "", "{"]
    constraints = []
    for i in range(12):
        c = grammars.constraint(WireGrammar(schema=json.dumps(SCHEMA)), tok.eos_token_ids)
        for t in tok.encode(texts[i % len(texts)]):
            assert c.accept(t)
        constraints.append(c)
    assert grammars.masks(constraints) == [c.mask() for c in constraints]
    assert len({m for m in grammars.masks(constraints)}) == len(texts)
