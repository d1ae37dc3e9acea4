"""vLLM's `prompt_logprobs` through the real router and worker on the tiny model, with the `openai`
client: each prompt token's logprob and rank against transformers, on completions (plain, with an
echo, streamed) and chat, and the refused chat stream."""

from __future__ import annotations

from typing import Any

import openai
import pytest
import torch
from transformers import AutoModelForCausalLM

import glm47

from .conftest import Server

pytestmark = pytest.mark.e2e

TOP = 2


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_base, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def tok(server: Server) -> glm47.Tokenizer:
    return glm47.Tokenizer(str(server.model_dir))


@pytest.fixture(scope="module")
def hf_model(server: Server) -> Any:
    return AutoModelForCausalLM.from_pretrained(str(server.model_dir), dtype=torch.float32)


@torch.no_grad()
def hf_scores(model: Any, ids: list[int]) -> tuple[list[float], list[int], list[list[int]]]:
    """Logprob and rank (1 + the ids with a larger logprob) of prompt tokens 1..P-1, and the top
    TOP ids at the positions before them."""
    logp = model(input_ids=torch.tensor([ids])).logits[0, :-1].float().log_softmax(dim=-1)
    chosen = logp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    ranks = (logp > chosen[:, None]).sum(dim=-1) + 1
    return chosen.tolist(), ranks.tolist(), logp.topk(TOP, dim=-1).indices.tolist()


def check_listed(
    listed: list[dict[str, dict[str, Any]] | None],
    ids: list[int],
    tok: glm47.Tokenizer,
    model: Any,
) -> None:
    """`listed` is vLLM's `prompt_logprobs` of `ids` with top TOP, matching transformers."""
    want, ranks, top_ids = hf_scores(model, ids)
    assert len(listed) == len(ids) and listed[0] is None
    for i, position in enumerate(listed[1:]):
        assert position is not None
        token = position[str(ids[i + 1])]
        assert token["logprob"] == pytest.approx(want[i], abs=2e-3)
        assert token["rank"] == ranks[i]
        assert token["decoded_token"] == tok.decode([ids[i + 1]], False)
        assert {str(t) for t in top_ids[i]} <= position.keys()
        assert len(position) == TOP + (ranks[i] > TOP)
        for place, t in enumerate(top_ids[i], start=1):
            assert position[str(t)]["rank"] == place
    assert max(ranks) > TOP, "some prompt token lies outside its top list"


def test_completions_list_the_prompt_like_transformers_and_like_the_echo(
    client: openai.OpenAI, server: Server, tok: glm47.Tokenizer, hf_model: Any
) -> None:
    ids = tok.encode("The quick brown fox jumps over the lazy dog")
    kwargs: dict[str, Any] = dict(model="m", prompt=ids, max_tokens=2, temperature=0)
    plain = client.completions.create(**kwargs, extra_body={"prompt_logprobs": TOP}).choices[0]
    listed = plain.model_extra["prompt_logprobs"]
    check_listed(listed, ids, tok, hf_model)

    echoed = client.completions.create(
        **kwargs, echo=True, logprobs=1, extra_body={"prompt_logprobs": TOP}
    ).choices[0]
    assert echoed.model_extra["prompt_logprobs"] == listed
    echo_lp = echoed.logprobs.token_logprobs[1 : len(ids)]
    assert echo_lp == [p[str(t)]["logprob"] for p, t in zip(listed[1:], ids[1:], strict=True)]
    for alts, token in zip(echoed.logprobs.top_logprobs[1 : len(ids)],
                           echoed.logprobs.tokens[1 : len(ids)], strict=True):  # fmt: skip
        assert token in alts and len(alts) <= 2  # the best one, and the token itself

    stream = client.completions.create(**kwargs, stream=True, extra_body={"prompt_logprobs": TOP})
    streamed = [c for c in stream if c.choices]
    assert streamed[0].choices[0].model_extra["prompt_logprobs"] == listed
    assert all(c.choices[0].model_extra.get("prompt_logprobs") is None for c in streamed[1:])
    assert "".join(c.choices[0].text for c in streamed) == plain.text

    # n choices: the worker scores the prompt once and every choice lists (and echoes) it
    choices = client.completions.create(
        **kwargs, n=3, echo=True, logprobs=1, extra_body={"prompt_logprobs": TOP}
    ).choices
    assert [c.index for c in choices] == [0, 1, 2]
    shared = choices[0].model_extra["prompt_logprobs"]
    check_listed(shared, ids, tok, hf_model)  # scored in a batch of three: equal up to rounding
    for choice in choices:
        assert choice.model_extra["prompt_logprobs"] == shared
        assert choice.logprobs.token_logprobs[1 : len(ids)] == [
            p[str(t)]["logprob"] for p, t in zip(shared[1:], ids[1:], strict=True)
        ]


def test_chat_lists_the_rendered_prompt_and_refuses_a_stream(
    client: openai.OpenAI, tok: glm47.Tokenizer, hf_model: Any
) -> None:
    messages: list[Any] = [{"role": "user", "content": "what is the capital of France?"}]
    resp = client.chat.completions.create(
        model="m", messages=messages, max_tokens=2, extra_body={"prompt_logprobs": TOP}
    )
    ids = tok.encode(tok.apply_chat_template(messages))
    assert resp.usage.prompt_tokens == len(ids)
    check_listed(resp.model_extra["prompt_logprobs"], ids, tok, hf_model)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="m", messages=messages, stream=True, extra_body={"prompt_logprobs": TOP}
        )
    assert err.value.status_code == 400
    assert "prompt_logprobs" in str(err.value)
