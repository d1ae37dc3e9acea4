"""The benchmark client's data handling and statistics, without a server."""

from __future__ import annotations

import json

import pytest

from glm47.bench.client import RequestResult
from glm47.bench.dataset import (
    LengthFilter,
    iter_sharegpt_records,
    random_requests,
    sample_sharegpt,
    sharegpt_pairs,
)
from glm47.bench.report import Dist, markdown_table, summarize


def _conv(human: str, reply: str) -> dict:
    return {
        "id": "x",
        "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": reply}],
    }


def test_truncated_sharegpt_file_yields_only_complete_records() -> None:
    records = [_conv("a b c d e", "f g h i j"), _conv("k", "l"), {"id": "y", "conversations": []}]
    text = json.dumps(records, indent=2)
    cut = text + ',\n  {"id": "z", "conversations": [{"from": "hum'
    cut = cut.replace("\n]", "", 1)
    assert [r["id"] for r in iter_sharegpt_records(cut)] == ["x", "x", "y"]
    assert len(list(sharegpt_pairs(cut))) == 2


def test_sharegpt_sampling_filters_lengths_and_is_seeded() -> None:
    records = [
        _conv(" ".join(["w"] * n), " ".join(["r"] * m))
        for n, m in [(2, 10), (10, 10), (20, 5), (1500, 10), (600, 1500), (8, 3), (12, 40)]
    ]
    text = json.dumps(records)
    encode = str.split
    a = sample_sharegpt(text, encode, 10, seed=1)
    assert sorted((r.prompt_len, r.output_len) for r in a) == [(10, 10), (12, 40), (20, 5)]
    assert a == sample_sharegpt(text, encode, 10, seed=1)
    assert len(sample_sharegpt(text, encode, 2, seed=1)) == 2
    assert LengthFilter().keep(4, 4) and not LengthFilter().keep(3, 4)


def test_random_requests_have_lengths_in_range() -> None:
    reqs = random_requests(50, 100, 20, 0.5, vocab_size=5000, seed=3)
    assert all(50 <= r.prompt_len <= 150 and 10 <= r.output_len <= 30 for r in reqs)
    assert all(isinstance(r.prompt, list) and len(r.prompt) == r.prompt_len for r in reqs)
    assert reqs == random_requests(50, 100, 20, 0.5, vocab_size=5000, seed=3)


def test_summary_counts_tokens_and_latencies() -> None:
    r1 = RequestResult(
        prompt_len=10,
        output_len_wanted=3,
        start=0.0,
        end=1.0,
        ttft=0.4,
        token_times=[0.4, 0.7, 1.0],
        output_tokens=3,
    )
    r2 = RequestResult(prompt_len=5, output_len_wanted=3, start=0.5, end=2.0, error="HTTP 500")
    s = summarize([r1, r2], duration_s=2.0)
    assert (s.completed, s.errors, s.total_output_tokens) == (1, 1, 3)
    assert s.output_throughput == pytest.approx(1.5)
    assert s.ttft_ms.median == pytest.approx(400.0)
    assert s.tpot_ms.mean == pytest.approx(300.0)
    assert s.itl_ms.mean == pytest.approx(300.0)
    assert "| w | 1 | 1 |" in markdown_table({"w": s})
    assert "| 300.00 / 300.00 / 300.00 |" in markdown_table({"w": s})  # per-token, to 0.01 ms


def test_p99_of_a_hundred_values() -> None:
    d = Dist.of([i / 1000 for i in range(1, 101)])
    assert d.median == pytest.approx(50.5)
    assert d.p99 == pytest.approx(99.0)


def test_saved_requests_load_back_identically(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from glm47.bench.dataset import BenchRequest, load_requests, save_requests

    reqs = [BenchRequest("héllo wörld", 3, 7), BenchRequest([1, 2, 3], 3, 4)]
    save_requests(str(tmp_path / "r.jsonl"), reqs)
    assert load_requests(str(tmp_path / "r.jsonl")) == reqs


def test_raw_results_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from glm47.bench.report import read_raw, write_raw

    r = RequestResult(
        prompt_len=1,
        output_len_wanted=2,
        start=0.1,
        end=0.5,
        ttft=0.2,
        token_times=[0.3, 0.5],
        output_tokens=2,
    )
    write_raw(tmp_path / "w.requests.json", [r])
    assert read_raw(tmp_path / "w.requests.json") == [r]


def test_send_offsets_follow_the_arrival_mode() -> None:
    from glm47.bench.client import Arrival, send_offsets

    assert send_offsets(4, Arrival()) == [0.0] * 4
    assert send_offsets(3, Arrival(concurrency=2)) == [0.0] * 3
    poisson = send_offsets(4000, Arrival(rate=10.0, seed=3))
    assert poisson == send_offsets(4000, Arrival(rate=10.0, seed=3))  # seeded
    assert poisson[0] == 0.0 and poisson == sorted(poisson)
    assert 380 < poisson[-1] < 420  # 3999 gaps of mean 0.1 s


def test_client_processes_hold_the_concurrency_until_the_last_request(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """conc:N over several processes (threads here): the streams of all of them take the next
    request from one shared index, so N are in flight while N are left (an even split of the
    requests let the processes that finished first drop the concurrency), each request is sent
    once, and the results come back in request order."""
    import asyncio
    import concurrent.futures
    import threading

    import glm47.bench.client as client
    from glm47.bench.client import Arrival, Endpoint, RequestResult, Sampling
    from glm47.bench.dataset import BenchRequest

    lock = threading.Lock()
    state = {"in_flight": 0, "peak": 0}
    at_start: list[tuple[int, int]] = []  # (requests started before, in flight) at each start
    sent: list[int] = []
    samplings: list[Sampling] = []

    async def fake_send(http, url, req, endpoint, model, t0, sampling):  # type: ignore[no-untyped-def]
        with lock:
            at_start.append((len(sent), state["in_flight"]))
            state["in_flight"] += 1
            state["peak"] = max(state["peak"], state["in_flight"])
            sent.append(req.prompt_len)
            samplings.append(sampling)
        await asyncio.sleep(0.05 if req.prompt_len < 4 else 0.005)  # the first few are long
        with lock:
            state["in_flight"] -= 1
        return RequestResult(prompt_len=req.prompt_len, output_len_wanted=1)

    class Threads(concurrent.futures.ThreadPoolExecutor):
        def __init__(self, procs: int, mp_context: object = None, **kwargs: object) -> None:
            super().__init__(procs, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(client, "send_one", fake_send)
    monkeypatch.setattr(client, "START_DELAY_S", 0.0)
    monkeypatch.setattr(client.concurrent.futures, "ProcessPoolExecutor", Threads)
    reqs = [BenchRequest(prompt=str(i), prompt_len=i, output_len=1) for i in range(40)]
    sampled = Sampling(temperature=1.0, top_p=0.95)
    results, _ = client.run_workload_procs(
        "http://x", "m", reqs, Endpoint.COMPLETIONS, Arrival(concurrency=4), procs=3,
        progress=False, sampling=sampled,
    )  # fmt: skip
    assert [r.prompt_len for r in results] == list(range(40))
    assert sorted(sent) == list(range(40)) and state["peak"] == 4
    assert samplings == [sampled] * 40
    # once the first four are under way, every later start finds the other three in flight
    # (one of the processes' streams just ended), however the processes' streams are spread
    assert all(in_flight == 3 for before, in_flight in at_start if before >= 4)


def test_requests_carry_the_runs_sampling_settings() -> None:
    from glm47.bench.client import Endpoint, Sampling, _payload
    from glm47.bench.dataset import BenchRequest

    req = BenchRequest(prompt=[1, 2], prompt_len=2, output_len=8)
    greedy = _payload(req, Endpoint.COMPLETIONS, "m", Sampling())
    assert greedy["temperature"] == 0.0 and "top_p" not in greedy and "top_k" not in greedy
    text = BenchRequest(prompt="hi", prompt_len=1, output_len=8)
    sampled = _payload(text, Endpoint.CHAT, "m", Sampling(temperature=1.0, top_p=0.95, top_k=40))
    assert (sampled["temperature"], sampled["top_p"], sampled["top_k"]) == (1.0, 0.95, 40)
    assert sampled["messages"][0]["content"] == "hi" and sampled["max_tokens"] == 8
    with pytest.raises(ValueError, match="text prompts"):  # ids are no chat message
        _payload(req, Endpoint.CHAT, "m", Sampling())
    assert "frequency_penalty" not in sampled and "repetition_penalty" not in sampled


def test_penalty_flags_reach_the_requests() -> None:
    from glm47.bench.cli import build_parser, sampling_of
    from glm47.bench.client import Endpoint, _payload
    from glm47.bench.dataset import BenchRequest

    args = build_parser().parse_args(
        ["--temperature", "1", "--frequency-penalty", "0.5", "--repetition-penalty", "1.1"]
    )
    body = _payload(BenchRequest(prompt=[1], prompt_len=1, output_len=4), Endpoint.COMPLETIONS,
                    "m", sampling_of(args))  # fmt: skip
    assert (body["frequency_penalty"], body["repetition_penalty"]) == (0.5, 1.1)
    assert "presence_penalty" not in body


def test_a_stream_that_fails_or_carries_nothing_is_an_error() -> None:
    """An error event after the headers (glm47's, vLLM's and SGLang's way to fail a stream), a
    200 without output and a chunk that is not an object fail their request; a null count in
    the usage does not end the run."""
    import asyncio

    import httpx

    from glm47.bench.client import Endpoint, send_one
    from glm47.bench.dataset import BenchRequest

    def stream(*events: str) -> bytes:
        return "".join(f"data: {e}\n\n" for e in events).encode()

    text = json.dumps({"choices": [{"text": "a"}]})
    null_usage = json.dumps({"choices": [], "usage": {"completion_tokens": None}})
    lost = json.dumps({"error": {"message": "worker lost"}})
    cases = {
        "error event": (stream(text, lost, "[DONE]"), "error event"),
        "nothing": (stream("[DONE]"), "no output"),
        "array": (stream("[1]", "[DONE]"), "not a JSON object"),
        "null usage": (stream(text, null_usage, "[DONE]"), None),
        "two tokens": (stream(text, text, "[DONE]"), None),
    }

    async def send(content: bytes):  # type: ignore[no-untyped-def]
        def answer(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, content=content)

        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
            req = BenchRequest(prompt="p", prompt_len=1, output_len=2)
            return await send_one(
                http, "http://x/v1/completions", req, Endpoint.COMPLETIONS, "m", 0.0
            )

    for name, (content, error) in cases.items():
        res = asyncio.run(send(content))
        if error is None:
            assert res.error is None and res.output_tokens >= 1, (name, res)
        else:
            assert res.error is not None and error in res.error, (name, res.error)


def test_an_empty_workload_writes_strict_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from glm47.bench.report import summarize, write_json

    path = tmp_path / "bench.json"
    write_json(path, {}, {"w": summarize([], 1.0)})
    row = json.loads(path.read_text())["workloads"]["w"]
    assert "NaN" not in path.read_text() and row["ttft_ms"]["mean"] is None


def test_flush_cache_asks_sglangs_endpoint_then_vllms_and_fails_without_either() -> None:
    import http.server
    import threading

    from glm47.bench.cli import flush_cache

    asked: list[str] = []

    def server(routes: set[str]) -> http.server.ThreadingHTTPServer:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                asked.append(self.path)
                self.send_response(200 if self.path in routes else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        return srv

    for routes, want in [
        ({"/flush_cache"}, ["/flush_cache"]),
        ({"/reset_prefix_cache"}, ["/flush_cache", "/reset_prefix_cache"]),
    ]:
        asked.clear()
        srv = server(routes)
        flush_cache(f"http://127.0.0.1:{srv.server_address[1]}/")
        srv.shutdown()
        assert asked == want
    srv = server(set())
    with pytest.raises(SystemExit, match="neither"):
        flush_cache(f"http://127.0.0.1:{srv.server_address[1]}")
    srv.shutdown()


def test_random_prompts_for_the_chat_endpoint_are_the_ids_text(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from glm47 import _native
    from glm47.bench.cli import build_parser, build_requests
    from glm47.worker.model.tiny import make_tiny_model

    make_tiny_model(str(tmp_path), seed=0)
    argv = ["--dataset", "random", "--num-prompts", "3", "--random-input-len", "12"]
    argv += ["--vocab-size", "1200", "--endpoint", "chat"]
    with pytest.raises(SystemExit, match="needs --tokenizer"):
        build_requests(build_parser().parse_args(argv))
    chat = build_requests(build_parser().parse_args([*argv, "--tokenizer", str(tmp_path)]))
    ids = build_requests(build_parser().parse_args(argv[:-2]))  # the completions endpoint
    tok = _native.Tokenizer(str(tmp_path))
    for text, raw in zip(chat, ids, strict=True):
        assert isinstance(text.prompt, str) and isinstance(raw.prompt, list)
        assert text.prompt == tok.decode(raw.prompt, False) and text.prompt_len == raw.prompt_len
