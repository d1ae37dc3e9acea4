"""When a request finishes, and what its outputs carry."""

from __future__ import annotations

from glm47.worker.batch import SamplingParams
from tests.worker.engine.engine_fakes import EOS, MakeHarness


def test_max_new_tokens_finishes_with_length(make_harness: MakeHarness) -> None:
    h = make_harness()
    h.add("r", [5, 6], max_new_tokens=3)
    h.run()
    assert len(h.tokens("r")) == 3 and h.finish("r") == "length"
    assert [o.finish for o in h.outputs["r"]] == [None, None, "length"]


def test_eos_finishes_with_stop_and_is_included_in_the_output(make_harness: MakeHarness) -> None:
    h = make_harness(script={"r": [5, EOS, 7]})
    h.add("r", [5, 6], max_new_tokens=3)
    h.run()
    assert h.tokens("r") == [5, EOS] and h.finish("r") == "stop"


def test_ignore_eos_keeps_generating_past_eos(make_harness: MakeHarness) -> None:
    h = make_harness(script={"r": [5, EOS, 7]})
    h.add("r", [5, 6], max_new_tokens=3, ignore_eos=True)
    h.run()
    assert h.tokens("r") == [5, EOS, 7] and h.finish("r") == "length"


def test_eos_ids_of_the_model_come_from_the_engine(make_harness: MakeHarness) -> None:
    h = make_harness(script={"r": [5, 77, 7]}, eos=(76, 77))
    h.add("r", [5, 6], max_new_tokens=3)
    h.run()
    assert h.tokens("r") == [5, 77] and h.finish("r") == "stop"


def test_min_new_tokens_ignores_eos_and_stop_ids_before_the_minimum(
    make_harness: MakeHarness,
) -> None:
    h = make_harness(script={"a": [EOS, EOS, EOS, 9, 9], "b": [4, 4, 4, 4, 4]})
    h.add("a", [5, 6], max_new_tokens=5, min_new_tokens=3)
    h.add("b", [5, 6], max_new_tokens=5, min_new_tokens=2, stop_token_ids=frozenset({4}))
    h.run()
    assert h.tokens("a") == [EOS, EOS, EOS] and h.finish("a") == "stop"
    assert h.tokens("b") == [4, 4] and h.finish("b") == "stop"


def test_stop_token_ids_finish_with_stop_even_when_eos_is_ignored(
    make_harness: MakeHarness,
) -> None:
    h = make_harness(script={"r": [5, EOS, 8, 9]})
    h.add("r", [5, 6], max_new_tokens=4, ignore_eos=True, stop_token_ids=frozenset({8}))
    h.run()
    assert h.tokens("r") == [5, EOS, 8] and h.finish("r") == "stop"


def test_a_stop_on_the_last_allowed_token_is_reported_as_stop(make_harness: MakeHarness) -> None:
    h = make_harness(script={"r": [5, EOS]})
    h.add("r", [5, 6], max_new_tokens=2)
    h.run()
    assert h.finish("r") == "stop"


def test_max_req_total_len_finishes_with_length(make_harness: MakeHarness) -> None:
    h = make_harness(max_req_total_len=8)
    h.add("r", [1, 2, 3, 4, 5], max_new_tokens=10)
    h.run()
    assert len(h.tokens("r")) == 3 and h.finish("r") == "length"


def test_logprobs_are_reported_only_when_asked(make_harness: MakeHarness) -> None:
    h = make_harness()
    h.add("none", [5, 6], max_new_tokens=2)
    h.add("own", [5, 6], max_new_tokens=2, sampling=SamplingParams(logprobs=0))
    h.add("top", [5, 6], max_new_tokens=2, sampling=SamplingParams(logprobs=2))
    h.run()
    assert all(o.logprobs is None and o.top_logprobs is None for o in h.outputs["none"])
    assert all(o.logprobs == [-0.25] and o.top_logprobs is None for o in h.outputs["own"])
    for out in h.outputs["top"]:
        assert out.top_logprobs is not None and len(out.top_logprobs[0]) == 2
        assert out.top_logprobs[0][0] == (out.ids[0], -0.25)


def test_only_the_first_output_carries_prompt_and_cached_tokens(make_harness: MakeHarness) -> None:
    h = make_harness()
    h.add("r", [5, 6, 7], max_new_tokens=3)
    h.run()
    first, *rest = h.outputs["r"]
    assert (first.prompt_tokens, first.cached_tokens) == (3, 0)
    assert all(o.prompt_tokens is None and o.cached_tokens is None for o in rest)
