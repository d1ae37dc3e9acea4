"""The worker's ZeroMQ service: one ROUTER socket, the request table, and the step loop.

Loop: drain every pending message (without blocking while the engine has work, else waiting on the
socket with a timeout), run one engine step, and send each connection ONE `step` message holding all
its outputs and the engine's stats. Requests are keyed by (connection identity, rid) so several
routers can share a worker; inside the engine they carry a worker-unique id `"<conn>:<rid>"`.

Bad input never stops the loop: undecodable messages and bad requests are logged and answered with
`error`. An exception out of the engine (the model failing) is fatal: every connected router gets
`error` fatal=true for each of its live requests and for the connection, then `serve` raises
`EngineFailure`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import zmq
from zmq.utils.monitor import recv_monitor_message

from glm47.worker.batch import SamplingParams
from glm47.worker.engine.interfaces import StepOutput
from glm47.worker.engine.request import Request
from glm47.worker.wire import (
    STATS_KEYS,
    Abort,
    Error,
    FlushCache,
    Hello,
    Message,
    Ready,
    Submit,
    WireError,
    WireRequest,
    decode,
    encode,
    encode_step,
    output_map,
)

log = logging.getLogger(__name__)

POLL_MS = 100  # idle wait on the socket between checks of the stop flag


class EngineLike(Protocol):
    """What the service needs of `worker.engine.Engine`."""

    def add_request(self, req: Request) -> None: ...
    def abort(self, rid: str) -> None: ...
    def flush_prefix_cache(self) -> int: ...
    def step(self) -> list[StepOutput]: ...
    def has_work(self) -> bool: ...
    def stats(self) -> dict[str, int]: ...


class EngineFailure(RuntimeError):
    """The engine raised during a step; the worker cannot continue."""


@dataclass(frozen=True)
class _Live:
    """A request the engine holds: who asked for it, under which id."""

    identity: bytes  # ROUTER identity of the connection
    rid: str  # the router's id


def to_engine_request(engine_rid: str, w: WireRequest) -> Request:
    """The engine's `Request` for one wire request."""
    sampling = SamplingParams(
        temperature=w.temperature,
        top_p=w.top_p,
        top_k=w.top_k,
        min_p=w.min_p,
        presence_penalty=w.presence_penalty,
        frequency_penalty=w.frequency_penalty,
        repetition_penalty=w.repetition_penalty,
        seed=w.seed,
        logprobs=w.logprobs,
        logit_bias_ids=tuple(t for t, _ in w.logit_bias),
        logit_bias_values=tuple(b for _, b in w.logit_bias),
    )
    return Request(
        rid=engine_rid,
        prompt_ids=list(w.input_ids),
        max_new_tokens=w.max_new_tokens,
        sampling=sampling,
        min_new_tokens=w.min_new_tokens,
        stop_token_ids=frozenset(w.stop_token_ids),
        ignore_eos=w.ignore_eos,
        mtp=w.mtp,
        prompt_logprobs=w.prompt_logprobs,
        grammar=w.grammar,
        reasoning_budget=w.reasoning_budget,
        priority=w.priority,
        allowed_token_ids=list(w.allowed_token_ids),
        bad_words=[list(b) for b in w.bad_words],
        cache_salt=w.cache_salt,
    )


def _source_fd(frame: zmq.Frame) -> int | None:
    """The file descriptor of the connection `frame` came on (None where the transport has
    none, e.g. inproc)."""
    try:
        fd = int(frame.get(zmq.SRCFD))
    except zmq.ZMQError:
        return None
    return fd if fd >= 0 else None


@dataclass
class Bound:
    """A ROUTER socket bound where routers connect, with the monitor that tells when one of
    their connections closes."""

    sock: zmq.Socket[bytes]
    monitor: zmq.Socket[bytes]
    endpoint: str  # the address bound (a `*` port resolved)


def bind(listen: str, context: zmq.Context[zmq.Socket[bytes]] | None = None) -> Bound:
    """Binds the worker's socket at `listen` (before the model loads, so that a bad or taken
    address is found at once). Raises `zmq.ZMQError`."""
    ctx = context or zmq.Context.instance()
    sock: zmq.Socket[bytes] = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 2000)  # let final errors out on close
    sock.setsockopt(zmq.SNDHWM, 0)  # never drop or block on a slow router
    # Closed connections (a router that exited or crashed): their requests are aborted.
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        sock.bind(listen)
    except zmq.ZMQError:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)
        raise
    return Bound(sock, monitor, sock.getsockopt_string(zmq.LAST_ENDPOINT))


class Service:
    """Serves one engine on one bound ROUTER socket. Single-threaded: call `serve` once."""

    def __init__(
        self,
        engine: EngineLike,
        ready: Ready,
        listen: str | Bound,
        *,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        """`listen`: the address to bind, or a socket `bind` bound."""
        self.engine = engine
        self.ready = ready
        bound = bind(listen, context) if isinstance(listen, str) else listen
        self._sock = bound.sock
        self._monitor = bound.monitor
        self.endpoint: str = bound.endpoint
        self._conn_ids: dict[bytes, int] = {}  # identity -> small connection number
        self._next_conn = 0
        self._fds: dict[bytes, int] = {}  # identity -> the socket its messages last came on
        self._live: dict[str, _Live] = {}  # engine rid -> owner
        log.info("worker %s listening on %s", ready.worker_id, self.endpoint)

    def close(self) -> None:
        self._sock.disable_monitor()
        self._monitor.close()
        self._sock.close()

    # -- the loop ------------------------------------------------------------------------------

    def serve(self, stop: threading.Event | None = None) -> None:
        """Run until `stop` is set, then fail the requests still running (`error` fatal=true, the
        worker is going away). Raises `EngineFailure` after reporting a failed step."""
        stop = stop or threading.Event()
        while not stop.is_set():
            self._drain(block=not self.engine.has_work())
            if self.engine.has_work():
                self._step()
        if self._live:
            log.warning("stopping with %d requests unfinished", len(self._live))
            self._report_fatal("the worker is shutting down")

    def _drain(self, block: bool) -> None:
        """Handle every message already queued; first wait up to POLL_MS when `block`."""
        self._reap_closed()
        if block and not self._sock.poll(POLL_MS, zmq.POLLIN):
            return
        while True:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(frames) != 2:
                log.warning("dropping a message of %d frames (want identity + body)", len(frames))
                if frames:
                    identity = frames[0].bytes
                    self._error(identity, None, "protocol", "one msgpack frame per message", True)
                continue
            identity = frames[0].bytes
            fd = _source_fd(frames[1])
            if fd is not None and self._fds.get(identity) != fd:
                # A connection on a descriptor a closed one had: that one's disconnect is queued
                # before this message could come, so reap it first (it must not take this one).
                self._reap_closed()
                self._fds[identity] = fd
            self._handle(identity, frames[1].bytes)

    def _reap_closed(self) -> None:
        """Aborts the requests of every connection that has closed since the last call: nobody
        reads their tokens any more."""
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] != zmq.EVENT_DISCONNECTED:
                continue
            fd = int(event["value"])
            for identity in [i for i, f in self._fds.items() if f == fd]:
                del self._fds[identity]
                self._conn_ids.pop(identity, None)
                gone = [rid for rid, live in self._live.items() if live.identity == identity]
                if gone:
                    log.warning(
                        "connection %s closed: aborting its %d request(s)",
                        identity.hex(),
                        len(gone),
                    )
                for engine_rid in gone:
                    self.engine.abort(engine_rid)  # its finish goes nowhere and is dropped

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as exc:
            log.exception("engine step failed; reporting and exiting")
            self._report_fatal(f"engine failure: {type(exc).__name__}: {exc}")
            raise EngineFailure(str(exc)) from exc
        by_conn: dict[bytes, list[dict[str, Any]]] = {}  # wire output maps per connection
        live = self._live
        for out in outputs:
            owner = live.get(out.rid)
            if owner is None:
                log.warning("engine output for unknown request %s dropped", out.rid)
                continue
            if out.finish is not None:
                del live[out.rid]
            outs = by_conn.get(owner.identity)
            if outs is None:
                outs = by_conn[owner.identity] = []
            outs.append(output_map(owner.rid, out))
        if by_conn:
            stats = {k: v for k, v in self.engine.stats().items() if k in STATS_KEYS}
            for identity, maps in by_conn.items():
                self._send_bytes(identity, encode_step(maps, stats), "Step")

    # -- messages ------------------------------------------------------------------------------

    def _handle(self, identity: bytes, data: bytes) -> None:
        first_contact = identity not in self._conn_ids
        if first_contact:
            self._conn_ids[identity] = self._next_conn
            self._next_conn += 1
        try:
            msg: Message = decode(data)
        except WireError as err:
            log.warning("bad message from %s: %s", identity.hex(), err.message)
            self._send(identity, err.to_message())
            return
        if isinstance(msg, Hello):
            level = logging.INFO if first_contact else logging.DEBUG  # hellos double as probes
            log.log(level, "hello from %s (%s)", identity.hex(), msg.client or "unnamed")
            self._send(identity, self.ready)
        elif isinstance(msg, Submit):
            self._submit(identity, msg)
        elif isinstance(msg, Abort):
            self._abort(identity, msg.rids)
        elif isinstance(msg, FlushCache):
            freed = self.engine.flush_prefix_cache()
            log.info("prefix cache flushed (asked by %s): %d pages freed", identity.hex(), freed)
        else:
            kind = type(msg).__name__.lower()
            log.warning("unexpected %r message from %s", kind, identity.hex())
            self._error(identity, None, "protocol", f"a worker does not accept {kind!r}", False)

    def _submit(self, identity: bytes, msg: Submit) -> None:
        for err in msg.rejected:
            log.warning("rejected request %r from %s: %s", err.rid, identity.hex(), err.message)
            self._send(identity, err.to_message())
        full: list[tuple[str, str]] = []  # (rid, why) refused for a full queue: logged together
        for w in msg.reqs:
            engine_rid = self._engine_rid(identity, w.rid)
            problem = self._check_ids(w, engine_rid)
            if problem is not None:
                log.warning("rejected request %r from %s: %s", w.rid, identity.hex(), problem)
                self._error(identity, w.rid, "invalid_request", problem, False)
                continue
            try:
                self.engine.add_request(to_engine_request(engine_rid, w))
            except Exception as exc:
                code = getattr(exc, "code", "internal")
                code = code if code in ("invalid_request", "queue_full", "too_long") else "internal"
                if code == "queue_full":
                    full.append((w.rid, str(exc)))
                else:
                    log.warning(
                        "engine refused %r from %s: %s (%s)", w.rid, identity.hex(), exc, code
                    )
                self._error(identity, w.rid, code, str(exc), False)
                continue
            self._live[engine_rid] = _Live(identity=identity, rid=w.rid)
            log.debug(
                "request %r from %s: %d prompt tokens", w.rid, identity.hex(), len(w.input_ids)
            )
        if full:
            log.warning("engine refused %d request(s) from %s (%r%s): %s", len(full),
                        identity.hex(), full[0][0], ", ..." if len(full) > 1 else "",
                        full[0][1])  # fmt: skip

    def _check_ids(self, w: WireRequest, engine_rid: str) -> str | None:
        if engine_rid in self._live:
            return f"request id {w.rid!r} is already in use on this connection"
        vocab = self.ready.vocab_size
        if max(w.input_ids) >= vocab or max(w.stop_token_ids, default=0) >= vocab:
            return f"token ids must be below the vocabulary size {vocab}"
        return None

    def _abort(self, identity: bytes, rids: list[str]) -> None:
        for rid in rids:
            engine_rid = self._engine_rid(identity, rid)
            if engine_rid in self._live:
                log.debug("abort %r from %s", rid, identity.hex())
                self.engine.abort(engine_rid)  # the engine reports finish "abort" next step

    def _engine_rid(self, identity: bytes, rid: str) -> str:
        return f"{self._conn_ids[identity]}:{rid}"  # `_handle` numbered the connection

    # -- sending -------------------------------------------------------------------------------

    def _error(
        self, identity: bytes, rid: str | None, code: str, message: str, fatal: bool
    ) -> None:
        self._send(identity, Error(rid=rid, code=code, message=message, fatal=fatal))

    def _send(self, identity: bytes, msg: Message) -> None:
        self._send_bytes(identity, encode(msg), type(msg).__name__)

    def _send_bytes(self, identity: bytes, data: bytes, kind: str) -> None:
        try:
            self._sock.send_multipart([identity, data], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # the router went away or its queue is full
            log.warning("could not send %s to %s: %s", kind, identity.hex(), exc)

    def _report_fatal(self, message: str) -> None:
        """Tell every connection about the failure: each live request, then the connection."""
        for live in list(self._live.values()):
            self._error(live.identity, live.rid, "internal", message, True)
        self._live.clear()
        for identity in self._conn_ids:
            self._error(identity, None, "internal", message, True)
