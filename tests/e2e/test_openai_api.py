"""The OpenAI API through the real router and worker on the tiny model, with the `openai` client."""

from __future__ import annotations

import openai
import pytest
import requests
from transformers import AutoModelForCausalLM

import glm47

from .conftest import Server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_base, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def model_name(client: openai.OpenAI) -> str:
    models = client.models.list().data
    assert len(models) == 1
    return models[0].id


def _hf_greedy(model_dir: str, ids: list[int], n: int) -> list[int]:
    import torch

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    out = model.generate(
        torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None, min_new_tokens=n
    )
    return [int(t) for t in out[0, len(ids) :]]


def test_greedy_tokens_match_transformers(server: Server) -> None:
    tok = glm47.Tokenizer(str(server.model_dir))
    ids = tok.encode("[gMASK]<sop><|user|>hello there, how are you?<|assistant|><think>")
    body = {
        "inputs": ids,
        "parameters": {
            "max_new_tokens": 12,
            "do_sample": False,
            "ignore_eos": True,
            "return_details": True,
        },
    }
    resp = requests.post(f"{server.base_url}/generate", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    got = [t["id"] for t in resp.json()["details"]["tokens"]]
    assert got == _hf_greedy(str(server.model_dir), ids, 12)


def test_chat_completion_reports_usage_and_finish(
    client: openai.OpenAI, model_name: str, server: Server
) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    resp = client.chat.completions.create(
        model=model_name,
        messages=messages,
        max_tokens=6,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    tok = glm47.Tokenizer(str(server.model_dir))
    prompt_ids = tok.encode(tok.apply_chat_template(messages))
    assert resp.usage.prompt_tokens == len(prompt_ids)
    assert resp.usage.completion_tokens == 6
    assert resp.choices[0].finish_reason == "length"
    msg = resp.choices[0].message
    assert msg.role == "assistant"


def _collect_stream(stream: openai.Stream) -> tuple[str, str, str | None, object]:
    reasoning, content, finish, usage = "", "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            delta = choice.delta
            reasoning += getattr(delta, "reasoning_content", None) or ""
            content += delta.content or ""
            finish = choice.finish_reason or finish
    return reasoning, content, finish, usage


def test_streamed_chat_equals_non_streamed(client: openai.OpenAI, model_name: str) -> None:
    kwargs = dict(
        model=model_name,
        messages=[{"role": "user", "content": "tell me a story"}],
        max_tokens=24,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    whole = client.chat.completions.create(**kwargs)
    stream = client.chat.completions.create(
        stream=True, stream_options={"include_usage": True}, **kwargs
    )
    reasoning, content, finish, usage = _collect_stream(stream)
    msg = whole.choices[0].message
    assert content == (msg.content or "")
    assert reasoning == (getattr(msg, "reasoning_content", None) or "")
    assert finish == whole.choices[0].finish_reason == "length"
    assert usage is not None and usage.completion_tokens == 24


def test_completion_stream_equals_non_stream_and_echo(
    client: openai.OpenAI, model_name: str
) -> None:
    kwargs = dict(
        model=model_name,
        prompt="The capital of France is",
        max_tokens=10,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    whole = client.completions.create(**kwargs)
    text = "".join(
        c.choices[0].text for c in client.completions.create(stream=True, **kwargs) if c.choices
    )
    assert text == whole.choices[0].text
    assert whole.usage.completion_tokens == 10
    echoed = client.completions.create(echo=True, **kwargs)
    assert echoed.choices[0].text == "The capital of France is" + whole.choices[0].text


def test_stop_string_cuts_the_output(client: openai.OpenAI, model_name: str) -> None:
    kwargs = dict(
        model=model_name, prompt="Once upon a time", temperature=0, extra_body={"ignore_eos": True}
    )
    full = client.completions.create(max_tokens=20, **kwargs).choices[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert stop.strip(), "tiny model produced blank text; pick another prompt"
    cut = client.completions.create(max_tokens=20, stop=[stop], **kwargs).choices[0]
    assert cut.text == full[: full.index(stop)]
    assert cut.finish_reason == "stop"
    assert cut.model_extra and cut.model_extra["stop_reason"] == stop, "vLLM's stop_reason"
    streamed = client.completions.create(max_tokens=20, stop=[stop], stream=True, **kwargs)
    last = [c.choices[0] for c in streamed if c.choices][-1]
    assert (last.finish_reason, (last.model_extra or {}).get("stop_reason")) == ("stop", stop)
    long = client.completions.create(max_tokens=20, **kwargs).choices[0]
    assert long.model_extra and "stop_reason" in long.model_extra
    assert long.model_extra["stop_reason"] is None


def test_same_seed_gives_same_sample_and_n_gives_n_choices(
    client: openai.OpenAI, model_name: str
) -> None:
    kwargs = dict(
        model=model_name,
        prompt="Hello",
        max_tokens=12,
        temperature=1.0,
        seed=1234,
        extra_body={"ignore_eos": True},
    )
    a = client.completions.create(**kwargs).choices[0].text
    b = client.completions.create(**kwargs).choices[0].text
    assert a == b
    many = client.completions.create(n=3, **kwargs)
    assert sorted(c.index for c in many.choices) == [0, 1, 2]
    assert many.usage.completion_tokens == 36


def test_logprobs_are_returned_per_token(client: openai.OpenAI, model_name: str) -> None:
    resp = client.chat.completions.create(
        model=model_name,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        extra_body={"ignore_eos": True},
    )
    entries = resp.choices[0].logprobs.content
    assert len(entries) == 4
    for e in entries:
        assert e.logprob <= 0.0
        assert len(e.top_logprobs) == 3
        # greedy: the sampled token is the most likely one
        assert e.top_logprobs[0].logprob == pytest.approx(e.logprob, abs=1e-4)


def _hf_prompt_logprobs(model_dir: str, ids: list[int], k: int) -> tuple[list[float], list]:
    """Logprob of prompt tokens 1..P-1 and the top-k ids at the positions before them."""
    import torch

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
    logp = logits.log_softmax(dim=-1)
    chosen = logp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    return chosen.tolist(), logp.topk(k, dim=-1).indices.tolist()


def test_echo_with_logprobs_scores_the_prompt_like_transformers(
    client: openai.OpenAI, model_name: str, server: Server
) -> None:
    """The request lm-eval's loglikelihood sends: echo, logprobs, one generated token."""
    tok = glm47.Tokenizer(str(server.model_dir))
    ids = tok.encode("The quick brown fox jumps over the lazy dog")
    kwargs = dict(model=model_name, prompt=ids, max_tokens=1, temperature=0, echo=True, logprobs=2)
    resp = client.completions.create(**kwargs)
    lp = resp.choices[0].logprobs
    assert len(lp.tokens) == len(ids) + 1
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    want, top_ids = _hf_prompt_logprobs(str(server.model_dir), ids, 2)
    assert lp.token_logprobs[1 : len(ids)] == pytest.approx(want, abs=2e-3)
    for i, alternatives in enumerate(lp.top_logprobs[1 : len(ids)]):
        texts = {tok.decode([t], False) for t in top_ids[i]}
        # the best two, and the prompt token itself when it is not among them
        assert texts <= set(alternatives) <= texts | {lp.tokens[i + 1]}
    echo = tok.decode(ids, False)
    assert resp.choices[0].text.startswith(echo)
    assert lp.text_offset[: len(ids) + 1] == sorted(lp.text_offset[: len(ids) + 1])
    assert lp.text_offset[len(ids)] == len(echo)  # the generated token starts after the echo
    streamed = [c for c in client.completions.create(stream=True, **kwargs) if c.choices]
    assert "".join(c.choices[0].text for c in streamed) == resp.choices[0].text
    lp_stream = [x for c in streamed for x in c.choices[0].logprobs.token_logprobs]
    assert lp_stream[0] is None
    assert lp_stream[1:] == pytest.approx(lp.token_logprobs[1:], abs=1e-5)
    # max_tokens 0: the prompt's scores alone.
    only = client.completions.create(**{**kwargs, "max_tokens": 0}).choices[0]
    assert only.text == echo and only.finish_reason == "length"
    assert only.logprobs.token_logprobs[1:] == pytest.approx(want, abs=2e-3)


def test_logit_bias_steers_and_out_of_range_ids_are_refused(
    client: openai.OpenAI, model_name: str, server: Server
) -> None:
    tok = glm47.Tokenizer(str(server.model_dir))
    target = tok.encode("hello")[0]
    kwargs = dict(model=model_name, prompt="Once upon a time", max_tokens=5, temperature=0.8)
    resp = client.completions.create(
        logit_bias={str(target): 100}, logprobs=0, extra_body={"ignore_eos": True}, **kwargs
    )
    assert resp.choices[0].text == tok.decode([target], False) * 5
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(logit_bias={"99999999": 5}, **kwargs)
    assert "is not below the vocabulary size" in str(err.value)


def test_a_thinking_budget_closes_the_reasoning_after_its_tokens(server: Server) -> None:
    tokenized = requests.post(
        f"{server.base_url}/tokenize", json={"prompt": "</think>"}, timeout=30
    )
    (close,) = tokenized.json()["tokens"]
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 8,
        "thinking_budget": 3,
        "ignore_eos": True,
        "logit_bias": {str(close): -100},  # only the budget closes the reasoning
        "logprobs": True,
        "return_tokens_as_token_ids": True,
        "seed": 4,
    }
    r = requests.post(f"{server.openai_base}/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    tokens = [t["token"] for t in choice["logprobs"]["content"]]
    assert len(tokens) == 8 and tokens[3] == f"token_id:{close}", tokens
    assert f"token_id:{close}" not in tokens[:3]
    assert choice["message"]["reasoning_content"]


def test_allowed_token_ids_and_bad_words_hold_through_the_server(server: Server) -> None:
    body = {
        "prompt": "hello",
        "max_tokens": 12,
        "ignore_eos": True,
        "allowed_token_ids": [40, 41, 42],
        "bad_words": [],
        "logprobs": 0,
        "return_tokens_as_token_ids": True,
        "seed": 5,
    }
    r = requests.post(f"{server.openai_base}/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    tokens = r.json()["choices"][0]["logprobs"]["tokens"]
    assert len(tokens) == 12 and set(tokens) <= {f"token_id:{i}" for i in (40, 41, 42)}, tokens
    # a word favoured by logit_bias and banned by bad_words is never written
    tok = glm47.Tokenizer(str(server.model_dir))
    (word,) = tok.encode(" the")
    body = {"prompt": "hello", "max_tokens": 12, "ignore_eos": True, "seed": 5,
            "logit_bias": {str(word): 20}, "bad_words": ["the"]}  # fmt: skip
    r = requests.post(f"{server.openai_base}/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    del body["bad_words"]
    free = requests.post(f"{server.openai_base}/completions", json=body, timeout=60)
    assert "the" in free.json()["choices"][0]["text"]
    assert "the" not in r.json()["choices"][0]["text"]
    # a priority needs the worker's priority policy (this one serves first come, first served)
    r = requests.post(
        f"{server.openai_base}/completions", json={"prompt": "a", "priority": 2}, timeout=60
    )
    assert r.status_code == 400 and "scheduling-policy" in r.text, r.text
