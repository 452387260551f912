"""The bare endpoint's answer from a plain uvloop protocol: the loop and the kernel alone.

    python -m loadtests.protocol_app --port 8102 [--skills 16]

Answers every GET with the bytes the bare endpoint (loadtests/bare_app.py) sends for the same
--skills: the same JSON body, serialised once, behind a fixed status line and headers. No
HTTP framework, no ASGI, no task per request: `data_received` finds the end of each request's
headers and writes the whole answer at once. It reads GETs without bodies only (what h2load
sends), keeps connections open, and answers /healthz alike. `python -m loadtests connections`
runs it beside the bare endpoint to tell what a connection costs the loop and the kernel from
what it costs uvicorn and Starlette.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import cast

import orjson
import uvloop

from loadtests.bare_app import payload

__all__ = ["HttpAnswerer", "answer_bytes", "main", "serve"]

END_OF_HEADERS = b"\r\n\r\n"
# A client that sends this much without ending its headers is not one of ours.
MAX_HEADER_BYTES = 64 * 1024


def answer_bytes(skills: int) -> bytes:
    body = orjson.dumps(payload(skills))
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    return head % len(body) + body


class HttpAnswerer(asyncio.Protocol):
    """One fixed answer per request on a keep-alive connection."""

    def __init__(self, answer: bytes) -> None:
        self._answer = answer
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport has asyncio.Transport's methods, not the class.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        buffer = self._buffer + data
        answered = buffer.count(END_OF_HEADERS)
        if answered:
            self._transport.write(self._answer * answered)
            buffer = buffer[buffer.rindex(END_OF_HEADERS) + len(END_OF_HEADERS) :]
        if len(buffer) > MAX_HEADER_BYTES:
            self._transport.close()
            buffer = b""
        self._buffer = buffer

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


async def serve(host: str, port: int, skills: int) -> None:
    loop = asyncio.get_running_loop()
    answer = answer_bytes(skills)
    # uvicorn's backlog, so both servers queue connections alike.
    server = await loop.create_server(lambda: HttpAnswerer(answer), host, port, backlog=2048)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.protocol_app")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--skills", type=int, default=16, help="entries in the fixed body")
    args = p.parse_args(argv)
    uvloop.run(serve(args.host, args.port, args.skills))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
