"""Single-statement reads on the event loop: psycopg2 connections in asynchronous mode.

A read run on a worker thread pays for the hop twice (waking the thread, then the loop) and
holds the GIL against the event loop while it does; psycopg2's asynchronous mode sends the
statement and lets the loop wait for the socket instead. These connections carry only
`single_statement` reads (autocommit: one simple-query string, `SET LOCAL statement_timeout`
in front, is one implicit transaction); everything else keeps the SQLAlchemy pool.

Both kinds share the replica's connection budget, the pool's capacity, kept here under one
lock: a loop connection opens only while the two together stay below it, and when the
SQLAlchemy pool opens one (`pool_connecting`, from its connect hook on a worker thread) idle
loop connections close to make way for it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psycopg2
import psycopg2.extensions

__all__ = ["Conn", "LoopConnections", "run_statement"]


class Conn(psycopg2.extensions.connection):
    """A psycopg2 connection that knows when it was opened (for recycling)."""

    opened_at: float = 0.0


async def _ready(conn: Conn, until: float | None = None) -> None:
    """Poll `conn` until its current operation (connect, query) is done, waiting for its
    socket on the event loop. Raises what psycopg2 raises (the server's errors included), and
    TimeoutError once the monotonic `until` passes while it waits."""
    loop = asyncio.get_running_loop()
    fd = conn.fileno()
    while True:
        state = conn.poll()
        if state == psycopg2.extensions.POLL_OK:
            return
        if state == psycopg2.extensions.POLL_READ:
            watch, unwatch = loop.add_reader, loop.remove_reader
        elif state == psycopg2.extensions.POLL_WRITE:
            watch, unwatch = loop.add_writer, loop.remove_writer
        else:  # pragma: no cover - psycopg2 documents no other state
            raise psycopg2.OperationalError(f"unexpected poll state {state}")
        waiter = loop.create_future()
        watch(fd, _wake, waiter)
        # One timer on the waiter itself: cheaper than a timeout scope per read (every
        # uncached request makes one), and it fails only this wait.
        timer = None
        if until is not None:
            timer = loop.call_later(until - time.monotonic(), _expire, waiter)
        try:
            await waiter
        finally:
            unwatch(fd)
            if timer is not None:
                timer.cancel()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


async def run_statement(
    conn: Conn, sql: str, parameters: Mapping[str, Any] | None, until: float | None = None
) -> tuple[Sequence[Any] | None, list[tuple[Any, ...]]]:
    """Send one simple-query string and wait for its result: (cursor description, rows) of
    its last statement, or (None, []) when that returns no rows. (The description, not the
    names: psycopg2 decodes every column name on each access, which a caller that knows the
    statement's columns already can skip.) TimeoutError when no reply has come by the
    monotonic `until`: the connection is then out of step and must not be reused."""
    cur = conn.cursor()
    try:
        cur.execute(sql, parameters)
        await _ready(conn, until)
        if cur.description is None:
            return None, []
        return cur.description, cur.fetchall()
    finally:
        cur.close()


class LoopConnections:
    """The asynchronous connections of one pool generation, and its connection budget: idle
    ones kept for reuse (until `recycle` seconds old), new ones opened while these and the
    SQLAlchemy pool's together stay below `capacity`."""

    def __init__(
        self,
        connect_args: tuple[Any, ...],
        connect_kwargs: Mapping[str, Any],
        *,
        capacity: int,
        recycle: float,
        open_timeout: float = 3.0,
    ) -> None:
        self._args = connect_args
        self._kwargs = dict(connect_kwargs)
        self.capacity = capacity
        self._recycle = recycle
        self._open_timeout = open_timeout
        self._idle: list[Conn] = []
        self._lock = threading.Lock()
        self._opened = 0  # open connections of this generation, idle or in use
        self._pool_open = 0  # the SQLAlchemy pool's, opening ones included
        self._closed = False
        # Called with each connection once it is open (tests record what it sends).
        self.on_open: list[Callable[[Conn], None]] = []

    @property
    def opened(self) -> int:
        return self._opened

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def pool_open(self) -> int:
        return self._pool_open

    def pool_connecting(self) -> None:
        """The SQLAlchemy pool opens a connection: counted now, and idle loop connections
        beyond the budget close (the gate keeps the work in flight within the capacity, so
        when the budget is full there is an idle one)."""
        with self._lock:
            self._pool_open += 1
            excess = self._pool_open + self._opened - self.capacity
            shed = self._take_idle(excess)
        _close_all(shed)

    def pool_closed(self) -> None:
        """A connection of the SQLAlchemy pool closed (or failed to open)."""
        with self._lock:
            self._pool_open -= 1

    async def acquire(self, deadline: float | None = None) -> Conn | None:
        """An open connection, or None when the budget has no room for another (the read
        then takes the SQLAlchemy pool). Raises if opening one fails, or takes longer than
        the open timeout or past the monotonic `deadline`."""
        now = time.monotonic()
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if now - conn.opened_at < self._recycle and not conn.closed:
                    return conn
                self._opened -= 1
                conn.close()
            if self._closed or self._opened + self._pool_open >= self.capacity:
                return None
            self._opened += 1  # counted while it opens: the budget includes it
        try:
            return await self._open(now, deadline)
        except BaseException:
            with self._lock:
                self._opened -= 1
            raise

    async def _open(self, now: float, deadline: float | None) -> Conn:
        conn = psycopg2.connect(*self._args, connection_factory=Conn, async_=1, **self._kwargs)
        until = time.monotonic() + self._open_timeout
        if deadline is not None:
            until = min(until, deadline)
        try:
            await _ready(conn, until)
        except TimeoutError as e:  # what the pool's connect_timeout would raise
            conn.close()
            raise psycopg2.OperationalError("timeout expired opening a connection") from e
        except BaseException:
            conn.close()
            raise
        conn.opened_at = now
        for hook in self.on_open:
            hook(conn)
        return conn

    def release(self, conn: Conn, *, reuse: bool) -> None:
        """Back to the idle list, or closed (`reuse=False`: a broken or interrupted one)."""
        with self._lock:
            if reuse and not self._closed and not conn.closed and not _busy(conn):
                self._idle.append(conn)
                return
            self._opened -= 1
        conn.close()

    def _take_idle(self, count: int) -> list[Conn]:
        """Up to `count` idle connections, the oldest first, no longer counted (under the
        lock; the caller closes them outside it)."""
        if count <= 0:
            return []
        taken, self._idle = self._idle[:count], self._idle[count:]
        self._opened -= len(taken)
        return taken

    def close(self) -> None:
        """No more connections: the idle ones close now, those in use when released."""
        with self._lock:
            self._closed = True
            shed = self._take_idle(len(self._idle))
        _close_all(shed)


def _close_all(conns: list[Conn]) -> None:
    for conn in conns:
        conn.close()


def _busy(conn: Conn) -> bool:
    """A query still in flight (an interrupted wait): the connection is out of step."""
    return bool(conn.isexecuting())
