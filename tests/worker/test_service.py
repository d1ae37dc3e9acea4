"""The ZeroMQ service loop, driven through real DEALER sockets against a fake engine."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from glm47.worker.engine.errors import QueueFullError
from glm47.worker.engine.interfaces import StepOutput
from glm47.worker.engine.request import Request
from glm47.worker.service import EngineFailure, Service, bind
from glm47.worker.wire import (
    Abort,
    Error,
    FlushCache,
    Hello,
    Message,
    Ready,
    Step,
    Submit,
    WireRequest,
    decode,
    encode,
)

VOCAB = 100
READY = Ready(
    model="fake",
    vocab_size=VOCAB,
    eos_token_ids=[0],
    max_req_total_len=64,
    max_running_requests=8,
    kv_capacity_tokens=256,
    mtp_step=0,
    worker_id="w-test",
)
TIMEOUT_MS = 5000


@dataclass
class FakeEngine:
    """Emits token (last + 1) % VOCAB per step for every request; finishes on max_new_tokens."""

    max_waiting: int = 4
    fail_after: int | None = None  # raise on this step number
    requests: dict[str, Request] = field(default_factory=dict)
    pending: list[StepOutput] = field(default_factory=list)
    steps: int = 0
    flushes: int = 0

    def add_request(self, req: Request) -> None:
        if len(self.requests) >= self.max_waiting:
            raise QueueFullError(req.rid, "queue full")
        self.requests[req.rid] = req

    def flush_prefix_cache(self) -> int:
        self.flushes += 1
        return 3

    def abort(self, rid: str) -> None:
        if self.requests.pop(rid, None) is not None:
            self.pending.append(StepOutput(rid=rid, ids=[], finish="abort"))

    def step(self) -> list[StepOutput]:
        self.steps += 1
        if self.fail_after is not None and self.steps >= self.fail_after:
            raise RuntimeError("device lost")
        outs, self.pending = self.pending, []
        for rid, req in list(self.requests.items()):
            token = (req.all_token_ids[-1] + 1) % VOCAB
            req.append_output(token)
            out = StepOutput(rid=rid, ids=[token])
            if req.num_output_tokens == 1:
                out.prompt_tokens, out.cached_tokens = req.num_prompt_tokens, 0
            if req.num_output_tokens >= req.max_new_tokens:
                out.finish = "length"
                del self.requests[rid]
            outs.append(out)
        return outs

    def has_work(self) -> bool:
        return bool(self.requests or self.pending)

    def stats(self) -> dict[str, int]:
        return {"running": len(self.requests), "waiting": 0, "not_a_wire_key": 1}


@dataclass
class Running:
    service: Service
    engine: FakeEngine
    ctx: zmq.Context[zmq.Socket[bytes]]
    thread: threading.Thread
    errors: list[BaseException]

    def dealer(self) -> zmq.Socket[bytes]:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, TIMEOUT_MS)
        sock.connect(self.service.endpoint)
        return sock


def start(engine: FakeEngine) -> tuple[Running, threading.Event]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    service = Service(engine, READY, "tcp://127.0.0.1:*", context=ctx)
    stop = threading.Event()
    errors: list[BaseException] = []

    def body() -> None:
        try:
            service.serve(stop)
        except BaseException as exc:
            errors.append(exc)
        finally:
            service.close()

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return Running(service, engine, ctx, thread, errors), stop


@pytest.fixture
def running() -> Iterator[Running]:
    run, stop = start(FakeEngine())
    yield run
    stop.set()
    run.thread.join(timeout=5)
    run.ctx.destroy(linger=0)
    assert not run.errors


def send(sock: zmq.Socket[bytes], msg: Message) -> None:
    sock.send(encode(msg))


def recv(sock: zmq.Socket[bytes]) -> Message:
    return decode(sock.recv())


def req(rid: str, prompt: list[int], n: int, **kw: Any) -> WireRequest:
    return WireRequest(rid=rid, input_ids=prompt, max_new_tokens=n, **kw)


def collect(sock: zmq.Socket[bytes], rids: set[str]) -> dict[str, list[Any]]:
    """Read step messages until every rid has finished; returns each rid's outputs in order."""
    outs: dict[str, list[Any]] = {r: [] for r in rids}
    done: set[str] = set()
    while done != rids:
        msg = recv(sock)
        assert isinstance(msg, Step), msg
        assert msg.stats == {"running": msg.stats["running"], "waiting": 0}
        for out in msg.outs:
            outs[out.rid].append(out)
            if out.finish is not None:
                done.add(out.rid)
    return outs


def test_hello_is_answered_with_ready(running: Running) -> None:
    sock = running.dealer()
    send(sock, Hello(client="test"))
    assert recv(sock) == READY


def test_two_requests_in_one_submit_stream_their_tokens(running: Running) -> None:
    sock = running.dealer()
    send(sock, Submit(reqs=[req("a", [5, 6], 3), req("b", [40], 2)]))
    outs = collect(sock, {"a", "b"})
    assert [t for o in outs["a"] for t in o.ids] == [7, 8, 9]
    assert [t for o in outs["b"] for t in o.ids] == [41, 42]
    assert outs["a"][0].prompt_tokens == 2 and outs["b"][0].prompt_tokens == 1
    assert [o.finish for o in outs["a"]] == [None, None, "length"]


def test_abort_ends_a_request_with_finish_abort(running: Running) -> None:
    sock = running.dealer()
    send(sock, Submit(reqs=[req("long", [1], 10_000)]))
    first = recv(sock)
    assert isinstance(first, Step) and first.outs[0].rid == "long"
    send(sock, Abort(rids=["long", "never-seen"]))
    outs = collect(sock, {"long"})
    assert outs["long"][-1].finish == "abort" and outs["long"][-1].ids == []
    assert not running.engine.requests


def test_flush_cache_reaches_the_engine_in_order_and_serving_goes_on(running: Running) -> None:
    sock = running.dealer()
    send(sock, FlushCache())
    send(sock, Submit(reqs=[req("after", [1], 2)]))
    outs = collect(sock, {"after"})  # handled after the flush, in the order sent
    assert outs["after"][-1].finish == "length"
    assert running.engine.flushes == 1


@pytest.mark.parametrize(
    ("payload", "fatal"),
    [
        (b"\xc1not msgpack", True),
        (msgpack.packb(["hello", 99, {}]), True),  # a version this worker does not speak
        (msgpack.packb(["submit", 1, {"reqs": 5}]), True),
        (msgpack.packb(["step", 1, {"outs": []}]), False),  # well-formed, wrong direction
    ],
)
def test_malformed_messages_get_errors_and_the_loop_keeps_serving(
    running: Running, payload: bytes, fatal: bool
) -> None:
    sock = running.dealer()
    sock.send(payload)
    err = recv(sock)
    assert isinstance(err, Error) and err.rid is None and err.code == "protocol"
    assert err.fatal is fatal
    send(sock, Submit(reqs=[req("ok", [3], 1)]))
    assert [o.ids for o in collect(sock, {"ok"})["ok"]] == [[4]]


def test_bad_requests_get_per_request_errors(running: Running) -> None:
    sock = running.dealer()
    bad_type = {"rid": "t", "input_ids": [1], "max_new_tokens": "many"}
    good = {"rid": "g", "input_ids": [1], "max_new_tokens": 1}
    sock.send(msgpack.packb(["submit", 1, {"reqs": [bad_type, good]}]))
    dup = [req("d", [2], 10_000), req("d", [2], 1)]
    send(sock, Submit(reqs=[req("v", [VOCAB + 1], 1), req("h", [2], 1), *dup]))
    errors: dict[str, Error] = {}
    outs: list[str] = []
    while len(errors) < 3 or sorted(outs) != ["g", "h"]:
        msg = recv(sock)
        if isinstance(msg, Error):
            assert msg.rid is not None and msg.rid not in errors and not msg.fatal
            errors[msg.rid] = msg
        else:
            assert isinstance(msg, Step)
            outs += [o.rid for o in msg.outs if o.rid != "d"]
    assert {k: e.code for k, e in errors.items()} == dict.fromkeys("tvd", "invalid_request")
    assert "max_new_tokens" in errors["t"].message and "already in use" in errors["d"].message


def test_queue_full_maps_to_its_error_code_and_one_log_line(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    sock = running.dealer()
    with caplog.at_level(logging.WARNING, logger="glm47.worker.service"):
        send(sock, Submit(reqs=[req(f"r{i}", [1], 10_000) for i in range(7)]))
        errs: list[Error] = []
        while len(errs) < 3:
            msg = recv(sock)
            if isinstance(msg, Error):
                errs.append(msg)
        # the service logs the refusals once it has sent their errors: wait for the line
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
            "refused" in r.getMessage() for r in caplog.records
        ):
            time.sleep(0.01)
    assert [(e.rid, e.code, e.fatal) for e in errs] == [
        (f"r{i}", "queue_full", False) for i in (4, 5, 6)
    ]
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and "3 request(s)" in refusals[0] and "'r4', ..." in refusals[0]
    send(sock, Abort(rids=[f"r{i}" for i in range(4)]))
    assert set(collect(sock, {f"r{i}" for i in range(4)})) == {"r0", "r1", "r2", "r3"}


def test_two_connections_are_isolated(running: Running) -> None:
    one, two = running.dealer(), running.dealer()
    send(one, Submit(reqs=[req("same", [10], 2)]))
    send(two, Submit(reqs=[req("same", [50], 3)]))
    a = collect(one, {"same"})["same"]
    b = collect(two, {"same"})["same"]
    assert [t for o in a for t in o.ids] == [11, 12]
    assert [t for o in b for t in o.ids] == [51, 52, 53]
    send(one, Abort(rids=["same"]))  # finished already on this connection: ignored
    send(one, Hello())
    assert recv(one) == READY


def test_a_closed_connection_has_its_requests_aborted_and_others_go_on(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    gone, stays = running.dealer(), running.dealer()
    send(gone, Submit(reqs=[req("long", [1], 10_000), req("longer", [2], 10_000)]))
    send(stays, Submit(reqs=[req("long", [3], 10_000)]))
    assert isinstance(recv(gone), Step) and isinstance(recv(stays), Step)
    with caplog.at_level(logging.WARNING, logger="glm47.worker.service"):
        gone.close(linger=0)
        deadline = time.monotonic() + 5
        while len(running.engine.requests) > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    left = [r.prompt_ids for r in running.engine.requests.values()]
    assert left == [[3]], "the other connection's request runs on"
    assert "closed: aborting its 2 request(s)" in caplog.text
    send(stays, Abort(rids=["long"]))
    assert collect(stays, {"long"})["long"][-1].finish == "abort"
    # a new connection is served as any
    again = running.dealer()
    send(again, Submit(reqs=[req("long", [7], 2)]))
    assert [t for o in collect(again, {"long"})["long"] for t in o.ids] == [8, 9]


@dataclass
class SlowEngine(FakeEngine):
    """Takes 0.8 s to add a request with prompt [99] (as a grammar compiling would): the service
    is busy in its receive loop meanwhile."""

    def add_request(self, req: Request) -> None:
        if req.prompt_ids == [99]:
            time.sleep(0.8)
        super().add_request(req)


def test_a_connection_on_a_closed_ones_descriptor_is_not_taken_for_it() -> None:
    run, stop = start(SlowEngine(max_waiting=100))
    try:
        old, busy = run.dealer(), run.dealer()
        send(old, Submit(reqs=[req("a", [1], 10_000)]))
        assert isinstance(recv(old), Step)
        send(busy, Hello())
        recv(busy)
        new: list[zmq.Socket[bytes]] = []

        def swap() -> None:  # while the service is busy: close one, open another
            time.sleep(0.2)
            old.close(linger=0)  # its disconnect is queued for the monitor
            time.sleep(0.1)
            sock = run.dealer()  # likely on the descriptor just freed
            send(sock, Submit(reqs=[req("b", [5], 3)]))
            new.append(sock)

        thread = threading.Thread(target=swap)
        thread.start()
        send(busy, Submit(reqs=[req("s", [99], 1)]))
        thread.join()
        outs = collect(new[0], {"b"})["b"]
        assert [t for o in outs for t in o.ids] == [6, 7, 8]
        assert outs[-1].finish == "length", "the new connection's request was not aborted"
    finally:
        stop.set()
        run.thread.join(timeout=5)
        run.ctx.destroy(linger=0)


def test_an_address_in_use_is_found_when_binding(running: Running) -> None:
    with pytest.raises(zmq.ZMQError):
        bind(running.service.endpoint, running.ctx)
    bound = bind("tcp://127.0.0.1:*", running.ctx)  # and a free one serves
    assert bound.endpoint.startswith("tcp://127.0.0.1:")
    bound.sock.disable_monitor()
    bound.monitor.close(linger=0)
    bound.sock.close(linger=0)


def test_stopping_fails_the_unfinished_requests() -> None:
    run, stop = start(FakeEngine())
    try:
        sock = run.dealer()
        send(sock, Submit(reqs=[req("slow", [1], 10_000)]))
        assert isinstance(recv(sock), Step)
        stop.set()
        run.thread.join(timeout=5)
        assert not run.thread.is_alive() and not run.errors
        msg = recv(sock)
        while isinstance(msg, Step):
            msg = recv(sock)
        assert isinstance(msg, Error) and (msg.rid, msg.fatal) == ("slow", True)
        assert "shutting down" in msg.message
    finally:
        run.ctx.destroy(linger=0)


def test_engine_failure_is_reported_as_fatal_and_stops_the_loop() -> None:
    run, stop = start(FakeEngine(fail_after=2))
    try:
        sock = run.dealer()
        send(sock, Submit(reqs=[req("x", [1], 100)]))
        assert isinstance(recv(sock), Step)
        got = [recv(sock), recv(sock)]
        assert [(e.rid, e.code, e.fatal) for e in got if isinstance(e, Error)] == [
            ("x", "internal", True),
            (None, "internal", True),
        ]
        run.thread.join(timeout=5)
        assert not run.thread.is_alive()
        assert len(run.errors) == 1 and isinstance(run.errors[0], EngineFailure)
    finally:
        stop.set()
        run.ctx.destroy(linger=0)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from glm47.worker.model.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)


def test_the_real_engine_on_the_tiny_model_through_the_socket(tiny_dir: Path) -> None:
    from glm47.worker.build import build
    from glm47.worker.cli_args import parse_args

    args = parse_args(
        [
            *("--listen", "tcp://127.0.0.1:*", "--model-dir", str(tiny_dir), "--device", "cpu"),
            *("--kv-cache-tokens", "512", "--page-size", "4", "--worker-id", "tiny"),
        ]
    )
    engine, ready = build(args)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    service = Service(engine, ready, args.listen, context=ctx)
    stop = threading.Event()
    thread = threading.Thread(target=service.serve, args=(stop,), daemon=True)
    thread.start()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.RCVTIMEO, 60_000)
        sock.connect(service.endpoint)
        send(sock, Hello())
        got = recv(sock)
        assert isinstance(got, Ready) and got.worker_id == "tiny" and got.vocab_size > 100
        assert got.eos_token_ids and got.kv_capacity_tokens >= 512
        prompts = {"a": [5, 6, 7, 8, 9], "b": [11, 12]}
        greedy = {"temperature": 0.0, "ignore_eos": True, "logprobs": 2}
        send(sock, Submit(reqs=[req(r, p, 4, **greedy) for r, p in prompts.items()]))
        together = collect_real(sock, set(prompts))
        send(sock, Submit(reqs=[req("a2", prompts["a"], 4, **greedy)]))
        alone = collect_real(sock, {"a2"})
    finally:
        stop.set()
        thread.join(timeout=10)
        service.close()
        ctx.destroy(linger=0)
    for rid, outs in together.items():
        ids = [t for o in outs for t in o.ids]
        assert len(ids) == 4 and all(0 <= t < got.vocab_size for t in ids)
        assert outs[0].prompt_tokens == len(prompts[rid]) and outs[-1].finish == "length"
        assert all(o.logprobs and len(o.top_logprobs[0]) == 2 for o in outs)
        assert all(o.top_logprobs[0][0][0] == o.ids[0] for o in outs)  # greedy = the best
    assert [o.ids for o in alone["a2"]] == [o.ids for o in together["a"]]


def collect_real(sock: zmq.Socket[bytes], rids: set[str]) -> dict[str, list[Any]]:
    outs: dict[str, list[Any]] = {r: [] for r in rids}
    done: set[str] = set()
    while done != rids:
        msg = recv(sock)
        assert isinstance(msg, Step), msg
        for out in msg.outs:
            outs[out.rid].append(out)
            done |= {out.rid} if out.finish else set()
    return outs


def test_the_worker_process_serves_and_exits_cleanly_on_sigterm(
    tiny_dir: Path, tmp_path: Path
) -> None:
    address = f"ipc://{tmp_path}/w.sock"
    log_path = tmp_path / "worker.log"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2] / "python"))
    cmd = [sys.executable, "-m", "glm47.worker", "--listen", address, "--model-dir", str(tiny_dir)]
    cmd += ["--device", "cpu", "--kv-cache-tokens", "256", "--max_req_total_len", "200"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.RCVTIMEO, 120_000)
        sock.connect(address)  # queued until the worker binds
        send(sock, Hello(client="test"))
        ready = recv(sock)
        assert isinstance(ready, Ready) and ready.max_req_total_len == 200
        send(sock, Submit(reqs=[req("p", [3, 4, 5], 3, temperature=0.0, ignore_eos=True)]))
        outs = collect_real(sock, {"p"})["p"]
        assert sum(len(o.ids) for o in outs) == 3 and outs[-1].finish == "length"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ctx.destroy(linger=0)
    text = log_path.read_text()
    assert "KV cache" in text and "stopped" in text, text
