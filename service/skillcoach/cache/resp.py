"""A lean, pipelined RESP2 connection for the cache-hit path: MGET and nothing else.

redis-py spends most of a hit in its own machinery (connection checkout, command packing,
parser objects, per-call timeouts). Here one connection per Redis node carries every
concurrent hit of a replica: requests are written back to back and replies matched in order
by an asyncio Protocol. Anything unusual (an error reply such as MOVED, a timeout, a lost
connection) fails that lookup only; the caller then takes the full redis-py path, which
handles redirects, failover and the circuit breaker.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import cast

__all__ = ["PipelinedRedis", "RespError"]


class RespError(Exception):
    """The lookup did not get a usable reply; take the full path."""


class _ErrorReply(RespError):
    """Redis answered this request with an error (e.g. MOVED); the stream is still in step."""


def _mget(keys: tuple[bytes, ...]) -> bytes:
    parts = [b"*%d\r\n$4\r\nMGET\r\n" % (len(keys) + 1)]
    for key in keys:
        parts.append(b"$%d\r\n%s\r\n" % (len(key), key))
    return b"".join(parts)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending: deque[asyncio.Future[list[bytes | None]]] = deque()
        self.buffer = bytearray()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail_all(RespError(f"connection lost: {exc!r}"))

    def _fail_all(self, exc: Exception) -> None:
        while self.pending:
            fut = self.pending.popleft()
            if not fut.done():
                fut.set_exception(exc)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.pending:
            try:
                parsed = _parse_array(self.buffer)
            except _ErrorReply as exc:  # it answers the oldest request
                fut = self.pending.popleft()
                if not fut.done():
                    fut.set_exception(exc)
                continue
            except (RespError, ValueError) as exc:  # out of step: nothing here can be trusted
                self.abort(f"protocol error: {exc}")
                return
            if parsed is None:
                return  # incomplete: wait for more bytes
            value, used = parsed
            del self.buffer[:used]
            fut = self.pending.popleft()
            if not fut.done():
                fut.set_result(value)

    def abort(self, reason: str) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        self._fail_all(RespError(reason))


def _line(buf: bytearray, start: int) -> tuple[bytes, int] | None:
    end = buf.find(b"\r\n", start)
    return None if end < 0 else (bytes(buf[start:end]), end + 2)


def _parse_array(buf: bytearray) -> tuple[list[bytes | None], int] | None:
    """One complete `*N` array of bulk strings from the front of buf, or None if incomplete.
    An error reply (`-...`) is consumed and raised as RespError."""
    head = _line(buf, 0)
    if head is None:
        return None
    line, pos = head
    if line[:1] == b"-":
        del buf[:pos]
        raise _ErrorReply(line[1:].decode(errors="replace"))
    if line[:1] != b"*":
        raise RespError(f"unexpected reply {line[:20]!r}")
    items: list[bytes | None] = []
    for _ in range(int(line[1:])):
        head = _line(buf, pos)
        if head is None:
            return None
        line, pos = head
        size = int(line[1:])
        if size < 0:
            items.append(None)
            continue
        if len(buf) < pos + size + 2:
            return None
        items.append(bytes(buf[pos : pos + size]))
        pos += size + 2
    return items, pos


class PipelinedRedis:
    """Pipelined MGET connections, one per node address, opened on first use."""

    def __init__(self, *, timeout: float) -> None:
        self._timeout = timeout
        self._conns: dict[tuple[str, int], _Protocol] = {}
        self._opening: dict[tuple[str, int], asyncio.Future[_Protocol]] = {}

    async def _connection(self, host: str, port: int) -> _Protocol:
        key = (host, port)
        proto = self._conns.get(key)
        if proto is not None and not proto.closed:
            return proto
        opening = self._opening.get(key)
        if opening is not None:
            return await opening
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[_Protocol] = loop.create_future()
        self._opening[key] = fut
        try:
            _, opened = await asyncio.wait_for(
                loop.create_connection(_Protocol, host, port), self._timeout * 4
            )
            self._conns[key] = opened
            fut.set_result(opened)
            return opened
        except BaseException as exc:
            fut.set_exception(RespError(f"cannot connect to {host}:{port}: {exc!r}"))
            fut.exception()  # retrieved: waiters get it, the loop does not log it
            raise RespError(f"cannot connect to {host}:{port}") from exc
        finally:
            del self._opening[key]

    async def mget(self, host: str, port: int, *keys: bytes) -> list[bytes | None]:
        proto = await self._connection(host, port)
        assert proto.transport is not None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[bytes | None]] = loop.create_future()
        proto.pending.append(fut)
        proto.transport.write(_mget(keys))
        # A reply that does not come in time means the connection is unusable: abort it,
        # which fails every lookup queued on it (they fall back to the full path).
        timer = loop.call_later(self._timeout, proto.abort, "reply timed out")
        try:
            return await fut
        finally:
            timer.cancel()

    def close(self) -> None:
        for proto in self._conns.values():
            if proto.transport is not None:
                proto.transport.close()
        self._conns.clear()
