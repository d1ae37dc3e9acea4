"""Typed rejections of `Engine.add_request`; each carries the wire `error` code it maps to."""

from __future__ import annotations


class EngineError(Exception):
    """A request the engine refuses. `code` is the docs/wire.md `error.code`."""

    code = "internal"

    def __init__(self, rid: str, message: str) -> None:
        super().__init__(message)
        self.rid = rid
        self.message = message


class InvalidRequestError(EngineError):
    """A field is out of range (empty prompt, max_new_tokens < 1, a rid already in use)."""

    code = "invalid_request"


class QueueFullError(EngineError):
    """The waiting queue is at `max_waiting_requests`; the router answers HTTP 429."""

    code = "queue_full"


class TooLongError(EngineError):
    """The prompt leaves no room for one output token under `max_req_total_len` or the KV pool."""

    code = "too_long"
