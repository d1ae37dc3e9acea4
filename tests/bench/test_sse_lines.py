"""The bench client: event-stream line splitting, and the timings it records per request."""

from __future__ import annotations

import asyncio
import json
import time

import httpx

from glm47.bench.client import Endpoint, send_one, sse_lines
from glm47.bench.dataset import BenchRequest


def test_sse_lines_split_at_newlines_only() -> None:
    text = "a\u2028b\u0085c\u2029d\re"  # separators a general splitter would break at
    events = [f"data: {json.dumps({'t': text}, ensure_ascii=False)}", "", "data: [DONE]", ""]
    body = "\n".join(events).encode()
    pieces = [body[i : i + 5] for i in range(0, len(body), 5)]  # lines cut across chunks

    async def collect() -> list[str]:
        resp = httpx.Response(200, stream=httpx.ByteStream(b""))
        resp.stream = _Chunks(pieces)  # type: ignore[assignment]
        return [line async for line in sse_lines(resp)]

    lines = asyncio.run(collect())
    assert lines == events[:-1]
    assert json.loads(lines[0][5:])["t"] == text


class _Chunks(httpx.AsyncByteStream):
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        for piece in self.pieces:
            yield piece


def test_a_request_records_headers_first_event_and_first_text_in_order() -> None:
    events = [
        {"choices": [{"index": 0, "text": ""}]},  # held-back text: an event with none
        {"choices": [{"index": 0, "text": "hi"}]},
        {"choices": [{"index": 0, "text": " there"}], "usage": {"completion_tokens": 3}},
    ]
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, content=body.encode(), headers={"content-type": "text/event-stream"}
        )

    async def run():  # type: ignore[no-untyped-def]
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            req = BenchRequest("a prompt", prompt_len=2, output_len=3)
            return await send_one(
                http, "http://x/v1/completions", req, Endpoint.COMPLETIONS, "m", time.perf_counter()
            )

    res = asyncio.run(run())
    assert res.error is None and res.output_tokens == 3 and len(res.token_times) == 2
    assert res.headers_at is not None and res.first_event_at is not None and res.ttft is not None
    assert res.start <= res.headers_at <= res.first_event_at <= res.start + res.ttft
    assert res.first_event_at <= res.token_times[0]
