"""A lean, pipelined RESP2 connection for the cache-hit path: MGET and nothing else.

redis-py spends most of a hit in its own machinery (connection checkout, command packing,
parser objects, per-call timeouts). Here one connection per Redis node carries every
concurrent hit of a replica: the requests of a loop turn go out in one write and replies
are matched in order by an asyncio Protocol. Anything unusual (an error reply such as MOVED,
a timeout, a lost connection) fails that lookup only; the caller then takes the full
redis-py path, which handles redirects, failover and the circuit breaker.

Security costs nothing per hit: a connection is wrapped in TLS and authenticated (AUTH, then
SELECT for a database other than 0) once, when it opens, before it carries its first MGET.
An open that is refused (connection, TLS, AUTH) is reported once and the node is left alone
for `retry_after` seconds, so a wrong password does not turn every request into a handshake.
An open that times out is reported too, but the next lookup tries again: on a busy replica a
slow handshake is no reason to give up the fast path, and the breaker bounds a real outage.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import cast

__all__ = ["PipelinedRedis", "RespAuthError", "RespError", "is_redirect"]


class RespError(Exception):
    """The lookup did not get a usable reply; take the full path."""


class RespAuthError(RespError):
    """Redis refused the credentials (the text is the server's reply, which never holds them)."""


class _ErrorReply(RespError):
    """Redis answered this request with an error (e.g. MOVED); the stream is still in step."""


def is_redirect(exc: BaseException) -> bool:
    """A cluster's MOVED or ASK answer: the slot map is stale, not the node failing (the full
    path follows it and refreshes the map)."""
    return isinstance(exc, _ErrorReply) and str(exc).startswith(("MOVED ", "ASK "))


def _command(*args: bytes) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


def _mget(keys: tuple[bytes, ...]) -> bytes:
    return _command(b"MGET", *keys)


class _Protocol(asyncio.Protocol):
    def __init__(self, timeout: float | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending: deque[asyncio.Future[list[bytes | None]]] = deque()
        self.buffer = bytearray()
        self.closed = False
        # time.monotonic() of the last bytes from the server: replies still flowing means a
        # live node whose answers are queued behind others (see _ReplyWatch).
        self.last_data = -math.inf
        # The requests that have a reply deadline, oldest first, with the time.monotonic() at
        # which each was written (a subsequence of `pending`: the handshake's replies have
        # none).
        self.sent: deque[tuple[asyncio.Future[list[bytes | None]], float]] = deque()
        self.watch = None if timeout is None else _ReplyWatch(self, timeout)
        # Requests queued on this loop turn, and their futures, written together on the next
        # (see send).
        self.outgoing: list[bytes] = []
        self.unsent: list[asyncio.Future[list[bytes | None]]] = []

    def send(
        self,
        request: bytes,
        fut: asyncio.Future[list[bytes | None]],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """Queue a request; `fut` waits for its reply, within the reply deadline (counted from
        the write). The requests of one loop turn go out in one write on the next turn: under
        load a turn starts dozens of hits, and a write per request (a system call each) cost
        the event loop more than anything else a hit does."""
        self.pending.append(fut)
        if not self.outgoing:
            loop.call_soon(self._flush)
        self.outgoing.append(request)
        self.unsent.append(fut)

    def _flush(self) -> None:
        out, self.outgoing = self.outgoing, []
        written, self.unsent = self.unsent, []
        if out and not self.closed and self.transport is not None:
            self.transport.write(b"".join(out))
            # The clock, not loop.time(): uvloop's is the time its current turn began, and a
            # turn that starts a thousand hits lasts longer than the reply deadline.
            at = time.monotonic()
            self.sent.extend([(fut, at) for fut in written])
            if self.watch is not None:
                self.watch.arm()

    def _answered(self) -> asyncio.Future[list[bytes | None]]:
        fut = self.pending.popleft()
        if self.sent and self.sent[0][0] is fut:
            self.sent.popleft()
        return fut

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail_all(RespError(f"connection lost: {exc!r}"))

    def _fail_all(self, exc: Exception) -> None:
        self.outgoing.clear()
        self.unsent.clear()
        self.sent.clear()
        if self.watch is not None:
            self.watch.disarm()
        while self.pending:
            fut = self.pending.popleft()
            if not fut.done():
                fut.set_exception(exc)

    def data_received(self, data: bytes) -> None:
        self.last_data = time.monotonic()
        self.buffer += data
        while self.pending:
            try:
                parsed = _parse_reply(self.buffer)
            except _ErrorReply as exc:  # it answers the oldest request
                fut = self._answered()
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
            fut = self._answered()
            if not fut.done():
                fut.set_result(value)

    def abort(self, reason: str, *, timed_out: bool = False) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        error = RespError(reason)
        if timed_out:  # what error_reason reads: a timeout, not some other failure
            error.__cause__ = TimeoutError(reason)
        self._fail_all(error)


def _line(buf: bytearray, start: int) -> tuple[bytes, int] | None:
    end = buf.find(b"\r\n", start)
    return None if end < 0 else (bytes(buf[start:end]), end + 2)


def _parse_reply(buf: bytearray) -> tuple[list[bytes | None], int] | None:
    """One complete reply from the front of buf, or None if incomplete: an `*N` array of bulk
    strings (MGET), or a status line (`+OK`, to AUTH and SELECT) as a one-item list. An error
    reply (`-...`) is consumed and raised as RespError."""
    head = _line(buf, 0)
    if head is None:
        return None
    line, pos = head
    kind = line[:1]
    if kind == b"-":
        del buf[:pos]
        raise _ErrorReply(line[1:].decode(errors="replace"))
    if kind == b"+":
        return [line[1:]], pos
    if kind != b"*":
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


def _auth(username: str | None, password: str | None) -> bytes | None:
    """AUTH [username] password, as redis-py sends it; None without credentials."""
    if password is None and username is None:
        return None
    secret = (password or "").encode()
    return _command(b"AUTH", *((username.encode(), secret) if username else (secret,)))


# How many times a reply's deadline is extended because the event loop, not Redis, was late.
MAX_EXTENSIONS = 4
# How long (in timeouts) a reply is waited for while the node's replies keep coming.
MAX_FLOWING_WAIT = 20


class _ReplyWatch:
    """The reply deadline of a connection's requests, judged on Redis's time rather than the
    event loop's, with one timer per connection (not one per request: at thousands of hits a
    second, arming and cancelling a timer for each reply cost the loop more than the reply).

    Replies come in the order the requests were sent, so only the oldest request waiting
    can be overdue; the timer is armed for its deadline, and when it fires a newer oldest
    (its predecessor answered meanwhile) just moves the timer on. An overdue reply:

    - on a connection that received replies within the last timeout (a live node, this
      answer queued behind others': a burst of a thousand lookups takes the loop several
      turns to read) is waited for, up to MAX_FLOWING_WAIT timeouts after its request;
    - when the timer fired more than half a timeout late (under load the loop runs its
      timers 100 ms or more late, before it polls the sockets in which the replies are
      already waiting) gets one more timeout (the reply is read on the same loop turn, if it
      is there), at most MAX_EXTENSIONS times;
    - otherwise (a timer on time, a silent connection) aborts the connection at once, which
      fails every lookup queued on it (they fall back to the full path)."""

    __slots__ = ("_extensions", "_handle", "_judged", "_proto", "_timeout")

    def __init__(self, proto: _Protocol, timeout: float) -> None:
        self._proto, self._timeout = proto, timeout
        self._handle: asyncio.TimerHandle | None = None
        self._judged: asyncio.Future[list[bytes | None]] | None = None
        self._extensions = 0

    def arm(self) -> None:
        """After a request is sent: a timer for the oldest request's deadline, if none runs."""
        if self._handle is None and self._proto.sent:
            self._at(self._proto.sent[0][1] + self._timeout)

    def disarm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _at(self, due: float) -> None:
        """Fire at time.monotonic() `due`."""
        delay = max(0.0, due - time.monotonic())
        self._handle = asyncio.get_running_loop().call_later(delay, self._fire, due)

    def _fire(self, due: float) -> None:
        self._handle = None
        proto = self._proto
        if proto.closed or not proto.sent:
            return
        fut, sent_at = proto.sent[0]
        if fut is not self._judged:  # a newer oldest request: its own count of extensions
            self._judged, self._extensions = fut, 0
        now = time.monotonic()
        if now - sent_at < self._timeout:  # not overdue yet
            self._at(sent_at + self._timeout)
            return
        flowing = now - proto.last_data < self._timeout
        if flowing and now - sent_at < MAX_FLOWING_WAIT * self._timeout:
            self._at(now + self._timeout)
            return
        if now - due > self._timeout / 2 and self._extensions < MAX_EXTENSIONS:
            self._extensions += 1
            self._at(now + self._timeout)
            return
        proto.abort("reply timed out", timed_out=True)


class PipelinedRedis:
    """Pipelined MGET connections, one per node address, opened on first use.

    tls: the context every connection is wrapped in (None: plain TCP); username, password:
    AUTH on every new connection; db: the database of a standalone server. on_failure is
    called once for each failed attempt to open a connection, and once for each lookup whose
    reply failed (timed out, connection lost, an error reply other than a redirect)."""

    def __init__(
        self,
        *,
        timeout: float,
        tls: ssl.SSLContext | None = None,
        username: str | None = None,
        password: str | None = None,
        db: int = 0,
        retry_after: float = 1.0,
        open_timeout: float | None = None,
        on_failure: Callable[[Exception], None] | None = None,
    ) -> None:
        self._timeout = timeout
        # Opening (connect, TLS handshake, AUTH) happens once per node and costs more than a
        # reply; on a busy machine a handshake overruns a reply's deadline.
        self._open_timeout = timeout * 4 if open_timeout is None else open_timeout
        self._tls = tls
        # Built once; the bytes hold the password, so they are never logged or repr'd.
        self._auth = _auth(username, password)
        self._select = _command(b"SELECT", str(db).encode()) if db else None
        self._retry_after = retry_after
        self._on_failure = on_failure
        self._conns: dict[tuple[str, int], _Protocol] = {}
        self._opening: dict[tuple[str, int], asyncio.Future[_Protocol]] = {}
        self._failed_at: dict[tuple[str, int], float] = {}

    async def _connection(self, host: str, port: int) -> _Protocol:
        key = (host, port)
        proto = self._conns.get(key)
        if proto is not None and not proto.closed:
            return proto
        opening = self._opening.get(key)
        if opening is not None:
            return await opening
        failed_at = self._failed_at.get(key)
        if failed_at is not None and time.monotonic() - failed_at < self._retry_after:
            raise RespError(f"{host}:{port} failed recently")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[_Protocol] = loop.create_future()
        self._opening[key] = fut
        try:
            # One bound for connect, TLS handshake and AUTH together.
            opened = await asyncio.wait_for(self._open(host, port), self._open_timeout)
            self._conns[key] = opened
            self._failed_at.pop(key, None)
            fut.set_result(opened)
            return opened
        except BaseException as exc:
            error = exc if isinstance(exc, RespError) else RespError(f"{host}:{port}: {exc!r}")
            if error is not exc:
                error.__cause__ = exc  # what error_reason classifies: timeout, TLS, refused
            fut.set_exception(error)
            fut.exception()  # retrieved: waiters get it, the loop does not log it
            if not isinstance(exc, Exception):
                raise  # cancelled: the request went away, the node did not fail
            if not isinstance(exc, TimeoutError):
                self._failed_at[key] = time.monotonic()
            if self._on_failure is not None:
                self._on_failure(error)
            if error is exc:
                raise
            raise error from exc
        finally:
            del self._opening[key]

    async def _open(self, host: str, port: int) -> _Protocol:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(
            lambda: _Protocol(self._timeout),
            host,
            port,
            ssl=self._tls,
            server_hostname=host if self._tls else None,
        )
        hello = [c for c in (self._auth, self._select) if c is not None]
        if not hello:
            return proto
        assert proto.transport is not None
        replies: list[asyncio.Future[list[bytes | None]]] = []
        for command in hello:  # pipelined: one round trip
            replies.append(loop.create_future())
            proto.pending.append(replies[-1])
            proto.transport.write(command)
        try:
            outcomes = await asyncio.gather(*replies, return_exceptions=True)
            for command, outcome in zip(hello, outcomes, strict=True):
                if command is self._auth and isinstance(outcome, _ErrorReply):
                    raise RespAuthError(str(outcome))
                if isinstance(outcome, BaseException):
                    raise outcome
        except BaseException:
            proto.abort("handshake failed")  # refused, or timed out: never left half open
            raise
        return proto

    async def mget(self, host: str, port: int, *keys: bytes) -> list[bytes | None]:
        proto = self._conns.get((host, port))
        if proto is None or proto.closed:  # _connection's own first check, without a coroutine
            proto = await self._connection(host, port)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[bytes | None]] = loop.create_future()
        proto.send(_mget(keys), fut, loop)
        try:
            return await fut
        except RespError as exc:
            # Reported like a failed open: a lookup failing here sends its request the slow
            # way, which the full path's own success would otherwise hide. A redirect is no
            # failure of the node.
            if self._on_failure is not None and not is_redirect(exc):
                self._on_failure(exc)
            raise

    def close(self) -> None:
        for proto in self._conns.values():
            if proto.transport is not None:
                proto.transport.close()
        self._conns.clear()
