"""The bench client's event-stream line splitting."""

from __future__ import annotations

import asyncio
import json

import httpx

from glm47.bench.client import sse_lines


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
