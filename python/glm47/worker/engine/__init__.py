"""The engine core: requests, KV pages, prefix cache, scheduler and the engine step."""

from glm47.worker.engine.engine import Engine
from glm47.worker.engine.errors import (
    EngineError,
    InvalidRequestError,
    QueueFullError,
    TooLongError,
)
from glm47.worker.engine.interfaces import Runner, StepOutput
from glm47.worker.engine.request import FinishReason, Request, RequestState

__all__ = [
    "Engine",
    "EngineError",
    "FinishReason",
    "InvalidRequestError",
    "QueueFullError",
    "Request",
    "RequestState",
    "Runner",
    "StepOutput",
    "TooLongError",
]
