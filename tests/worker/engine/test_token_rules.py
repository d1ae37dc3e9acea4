"""vLLM's `allowed_token_ids` and `bad_words` as the worker enforces them (token_rules.py), alone,
around a reasoning budget and around a grammar, on the built-in tiny model (random weights, CPU)."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest
import torch

from glm47 import _native
from glm47.worker.batch import SamplingParams
from glm47.worker.config import EngineConfig
from glm47.worker.engine import Engine, Request
from glm47.worker.grammar import Grammars, unpack_masks
from glm47.worker.model.config import ModelConfig
from glm47.worker.model.tiny import make_tiny_model
from glm47.worker.sampling import Sampler
from glm47.worker.token_rules import TokenRules
from glm47.worker.wire_messages import WireGrammar, WireReasoningBudget
from tests.worker.engine.engine_fakes import drain
from tests.worker.model.reference import make_runner


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def _allowed(grammars: Grammars, c: object, vocab: int) -> list[int]:
    (mask,) = grammars.masks([c])  # type: ignore[list-item]
    words = torch.frombuffer(bytearray(mask), dtype=torch.int32).unsqueeze(0)
    return unpack_masks(words, vocab)[0].nonzero().flatten().tolist()


def test_rules_mask_what_is_not_allowed_and_what_would_complete_a_bad_word(
    tiny_dir: Path,
) -> None:
    vocab = ModelConfig.from_dir(tiny_dir).vocab_size
    grammars = Grammars(str(tiny_dir), vocab)
    rules = grammars.layered(None, None, [4, 5, 6, 9], [[9], [4, 5], [4, 6, 5]])
    assert isinstance(rules, TokenRules) and rules.active
    assert _allowed(grammars, rules, vocab) == [4, 5, 6]  # 9 is a bad word of one token
    assert rules.accept(4)
    assert _allowed(grammars, rules, vocab) == [4, 6]  # 5 would complete "4 5"
    fork = rules.fork()
    assert not rules.accept(5), "a token the rules ban is refused"
    assert fork.accept(6)
    assert _allowed(grammars, fork, vocab) == [4, 6]  # "4 6 5"
    assert not fork.accept(7), "outside the allowed ids"
    # around a reasoning budget: the forced close passes the rules where they allow it, and
    # comes anyway where they do not (the rules give way to the close, not the other way)
    for bad in ([[7, 6]], [[8, 6]]):
        layered = grammars.layered(None, WireReasoningBudget(tokens=1, end_id=6), [], bad)
        assert layered.accept(8)
        assert _allowed(grammars, layered, vocab) == [6]
        assert layered.accept(6), "the close the mask gave is taken"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        grammars.layered(None, None, [3, vocab], [])


def _engine(tiny_dir: Path, overlap: bool) -> Engine:
    runner = make_runner(tiny_dir, torch.float32, page_size=4, kv_tokens=2048)
    config = EngineConfig(
        device="cpu", dtype="float32", page_size=4, max_req_total_len=1024,
        overlap_schedule=overlap,
    )  # fmt: skip
    cfg = ModelConfig.from_dir(tiny_dir)
    tok = _native.Tokenizer(str(tiny_dir))
    return Engine(
        config, runner, Sampler(seed=0), tok.eos_token_ids, Grammars(str(tiny_dir), cfg.vocab_size)
    )


@pytest.mark.parametrize("overlap", [False, True])
def test_an_engine_samples_only_allowed_ids_and_never_completes_a_bad_word(
    tiny_dir: Path, overlap: bool
) -> None:
    tok = _native.Tokenizer(str(tiny_dir))
    prompt = tok.encode("Say something.")
    engine = _engine(tiny_dir, overlap)
    allowed = [40, 41, 42, 43]
    engine.add_request(Request(
        rid="allowed", prompt_ids=prompt, max_new_tokens=20, allowed_token_ids=allowed,
        sampling=SamplingParams(temperature=1.0, seed=1),
    ))  # fmt: skip
    # the banned tokens are favoured, so that only the rules keep them out
    favour = SamplingParams(temperature=1.0, seed=2, logit_bias_ids=(50, 51, 52),
                            logit_bias_values=(8.0, 8.0, 8.0))  # fmt: skip
    engine.add_request(Request(
        rid="bad", prompt_ids=prompt, max_new_tokens=30, sampling=favour,
        bad_words=[[52], [50, 51]],
    ))  # fmt: skip
    # under a grammar: every token that could start "xyz" banned leaves "b"
    vocab = ModelConfig.from_dir(tiny_dir).vocab_size
    x_first = [[i] for i in range(vocab) if tok.decode([i], False).startswith("x")]
    engine.add_request(Request(
        rid="choice", prompt_ids=prompt, max_new_tokens=30, grammar=WireGrammar(choices=["xyz", "b"]),
        sampling=SamplingParams(seed=3, logit_bias_ids=tuple(w[0] for w in x_first),
                                logit_bias_values=(8.0,) * len(x_first)),
        bad_words=x_first,
    ))  # fmt: skip
    # rules that leave no token of the grammar give way to it
    engine.add_request(Request(
        rid="conflict", prompt_ids=prompt, max_new_tokens=30, sampling=SamplingParams(seed=4),
        grammar=WireGrammar(choices=["b"]), allowed_token_ids=allowed,
    ))  # fmt: skip
    tokens, finish = drain(engine)
    assert tok.decode(tokens["conflict"], False) == "b" and finish["conflict"] == "stop"
    assert set(tokens["allowed"]) <= set(allowed) and len(tokens["allowed"]) == 20
    bad = tokens["bad"]
    assert 52 not in bad and 50 in bad, bad
    assert all(b != 51 for a, b in pairwise(bad) if a == 50), bad
    assert tok.decode(tokens["choice"], False) == "b"
    assert finish["choice"] == "stop"
    engine.check_accounting()
