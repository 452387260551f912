"""Single-statement reads on the event loop, and the connection budget they share with the
SQLAlchemy pool. Real PostgreSQL; pg_stat_activity counts what is really open."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime

import anyio
import psycopg2
import pytest
from sqlalchemy import Connection, make_url

from skillcoach.data.database import (
    ConnectionLost,
    Database,
    PoolConfig,
    Reader,
    single_statement,
)
from skillcoach.data.loop_reads import Conn, LoopConnections, run_statement
from tests.data.test_database import make_db, read_pid, read_sleep


@single_statement
def read_on_thread(conn: Reader) -> tuple[int, str]:
    row = conn.exec_driver_sql("SELECT 7 AS seven").one()
    return int(row.seven), threading.current_thread().name


def in_transaction(conn: Connection, seconds: float) -> int:
    """Unmarked: a transaction on a worker thread, holding a pool connection."""
    conn.exec_driver_sql(f"SELECT pg_sleep({seconds})")
    return int(conn.exec_driver_sql("SELECT 1").scalar_one())


def loop_conns(db: Database) -> LoopConnections:
    conns = db.loop_connections
    assert conns is not None
    return conns


def open_connections(pg_url: str, since: datetime) -> int:
    """Client connections of a Database (application_name skillcoach) opened since `since`."""
    dsn = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg2.connect(dsn) as admin, admin.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'skillcoach'"
            " AND datname = current_database() AND backend_start >= %s",
            (since,),
        )
        (count,) = cur.fetchone()  # type: ignore[misc]
    admin.close()
    return int(count)


def server_now(pg_url: str) -> datetime:
    dsn = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg2.connect(dsn) as admin, admin.cursor() as cur:
        cur.execute("SELECT now()")
        (now,) = cur.fetchone()  # type: ignore[misc]
    admin.close()
    assert isinstance(now, datetime)
    return now


def test_an_untraced_read_runs_on_the_event_loop_a_traced_one_on_a_worker(
    pgbouncer_url: str,
) -> None:
    untraced = make_db(pgbouncer_url)
    traced = make_db(pgbouncer_url, on_engine=lambda engine: None)
    try:
        loop_thread = threading.current_thread().name  # anyio.run runs its loop here
        assert anyio.run(untraced.run, read_on_thread) == (7, loop_thread)
        assert loop_conns(untraced).opened == 1
        value, thread = anyio.run(traced.run, read_on_thread)
        assert value == 7 and thread.startswith("skillcoach-db")
        assert traced.loop_connections is None
        assert untraced.stats().checked_out == traced.stats().checked_out == 0
    finally:
        untraced.dispose()
        traced.dispose()


def test_loop_and_pool_connections_stay_within_the_capacity_together(pg_url: str) -> None:
    """Reads and writes at once, several times the capacity (3) in flight: the connections
    open (in use plus idle, as the pool metrics report them) never exceed 3, whichever kind;
    and at rest PostgreSQL sees exactly as many as reported."""
    since = server_now(pg_url)
    db = make_db(pg_url, size=2, overflow=1, deadline=20.0)
    seen: list[int] = []
    at_rest: list[tuple[int, int]] = []
    try:

        def open_now() -> int:
            stats = db.stats()
            return stats.checked_out + stats.idle

        async def main() -> None:
            stop = asyncio.Event()

            async def sample() -> None:
                while not stop.is_set():
                    seen.append(open_now())
                    await asyncio.sleep(0.002)

            sampler = asyncio.create_task(sample())
            for round_ in range(4):
                reads = [db.run(read_sleep, 0.02) for _ in range(9)]
                writes = [db.run(in_transaction, 0.02) for _ in range(2 + round_)]
                await asyncio.gather(*reads, *writes)
                reported = open_now()
                # A closed connection's backend exits shortly after: wait for the count.
                for _ in range(100):
                    if open_connections(pg_url, since) == reported:
                        break
                    await asyncio.sleep(0.02)
                at_rest.append((reported, open_connections(pg_url, since)))
            stop.set()
            await sampler

        anyio.run(main)
        assert len(seen) >= 20
        assert max(seen) <= 3, seen
        assert all(reported == actual for reported, actual in at_rest), at_rest
        assert max(r for r, _ in at_rest) >= 2  # really open, both kinds at some point
        assert db.stats().checked_out == 0
    finally:
        db.dispose()


def test_a_burst_of_transactions_leaves_the_reads_their_budget(pgbouncer_url: str) -> None:
    """Eight transactions at once open eight pool connections; the pool keeps two of them
    idle (a quarter of the capacity) and closes the rest as they come back, so six reads at
    once then all run on the loop."""
    db = make_db(pgbouncer_url, size=8, overflow=0)
    try:

        async def transactions() -> None:
            await asyncio.gather(*[db.run(in_transaction, 0.05) for _ in range(8)])

        async def reads() -> list[tuple[int, str]]:
            return list(await asyncio.gather(*[db.run(read_on_thread) for _ in range(6)]))

        anyio.run(transactions)
        assert db.stats().idle == 2 and loop_conns(db).opened == 0
        loop_thread = threading.current_thread().name  # anyio.run runs its loop here
        assert anyio.run(reads) == [(7, loop_thread)] * 6
        assert loop_conns(db).opened == 6
        assert db.stats().idle == 8  # two of the pool's, six of the loop's: the capacity
    finally:
        db.dispose()


def test_a_read_with_no_room_on_the_loop_takes_the_pool(pgbouncer_url: str) -> None:
    """Capacity 2: a transaction holds a pool connection and a read a loop one. A second read
    waits for a slot; the transaction ends first, leaving its connection idle in the pool and
    no room for another loop connection, so that read runs on the pool's, on a worker."""
    db = make_db(pgbouncer_url, size=2, overflow=0)
    try:

        async def main() -> str:
            transaction = asyncio.create_task(db.run(in_transaction, 0.1))
            await asyncio.sleep(0.03)
            first = asyncio.create_task(db.run(read_sleep, 1.5))
            await asyncio.sleep(0.03)
            _, thread = await db.run(read_on_thread)
            await asyncio.gather(transaction, first)
            return thread

        assert anyio.run(main).startswith("skillcoach-db")
        assert loop_conns(db).opened == 1
        assert db.stats().checked_out == 0 and db.stats().idle == 2
    finally:
        db.dispose()


def test_the_pool_opening_a_connection_closes_an_idle_loop_one(pgbouncer_url: str) -> None:
    db = make_db(pgbouncer_url, size=2, overflow=0)
    try:

        async def two_reads() -> None:
            await asyncio.gather(*[db.run(read_sleep, 0.05) for _ in range(2)])

        anyio.run(two_reads)
        assert loop_conns(db).opened == 2  # the whole capacity, idle
        assert anyio.run(db.run, in_transaction, 0) == 1
        assert loop_conns(db).opened == 1  # gave way to the pool's new connection
        assert db.stats().idle == 2
    finally:
        db.dispose()


def test_a_cancelled_loop_read_closes_its_connection_and_frees_its_slot(
    pgbouncer_url: str,
) -> None:
    db = make_db(pgbouncer_url, size=1, overflow=0)
    try:

        async def main() -> int:
            task = asyncio.create_task(db.run(read_sleep, 3))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert loop_conns(db).opened == 0  # out of step mid-query: closed, not reused
            started = time.monotonic()
            pid = await db.run(read_pid)  # the only slot is free at once
            assert time.monotonic() - started < 2
            return pid

        assert anyio.run(main) > 0
        assert db.stats().checked_out == 0 and db.gate.waiting == 0
    finally:
        db.dispose()


def test_a_resize_closes_the_previous_loop_connections(pgbouncer_url: str) -> None:
    db = make_db(pgbouncer_url)
    try:
        assert anyio.run(db.run, read_pid) > 0
        old = loop_conns(db)
        assert old.opened == 1
        db.resize(
            PoolConfig(pool_size=3, max_overflow=0, pool_timeout=2, pool_recycle=3600),
            generation=1,
        )
        assert old.opened == 0
        assert loop_conns(db) is not old
        assert anyio.run(db.run, read_pid) > 0
        assert loop_conns(db).opened == 1
    finally:
        db.dispose()


def test_connections_older_than_the_recycle_age_are_closed_not_reused(pg_url: str) -> None:
    dsn = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    conns = LoopConnections((dsn,), {}, capacity=5, recycle=0.2)

    async def pid(conn: Conn) -> int:
        _, rows = await run_statement(conn, "SELECT pg_backend_pid()", None)
        return int(rows[0][0])

    async def main() -> tuple[int, int, int]:
        first = await conns.acquire()
        assert first is not None
        a = await pid(first)
        conns.release(first, reuse=True)
        again = await conns.acquire()
        assert again is first  # young: reused
        conns.release(again, reuse=True)
        await asyncio.sleep(0.3)
        fresh = await conns.acquire()
        assert fresh is not None and fresh is not first and first.closed
        b = await pid(fresh)
        conns.release(fresh, reuse=False)
        return a, b, conns.opened

    a, b, opened = asyncio.run(main())
    assert a != b and opened == 0


def test_no_room_means_no_new_connection(pg_url: str) -> None:
    dsn = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    conns = LoopConnections((dsn,), {}, capacity=1, recycle=60)

    async def main() -> tuple[object, object]:
        first = await conns.acquire()
        second = await conns.acquire()
        assert first is not None
        conns.release(first, reuse=True)
        return first, second

    first, second = asyncio.run(main())
    assert second is None and conns.opened == 1 and conns.idle == 1
    conns.close()
    assert conns.opened == 0 and first.closed  # type: ignore[attr-defined]


class Partition:
    """A TCP forwarder on loopback to `port`; `frozen`, it drops every byte both ways and
    keeps the sockets open, as a network partition does (no reset, no reply)."""

    def __init__(self, port: int) -> None:
        self.frozen = False
        self._target = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._socks: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                server = socket.create_connection(("127.0.0.1", self._target))
                self._socks += [client, server]
                for a, b in ((client, server), (server, client)):
                    threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if not self.frozen:
                    sink.sendall(data)

    def close(self) -> None:
        for sock in self._socks:
            sock.close()


@pytest.fixture
def partition(pgbouncer_url: str) -> Iterator[tuple[Partition, str]]:
    url = make_url(pgbouncer_url)
    assert url.port is not None
    proxy = Partition(url.port)
    yield proxy, url.set(port=proxy.port).render_as_string(hide_password=False)
    proxy.close()


def test_a_partitioned_loop_read_gives_up_by_its_deadline(
    partition: tuple[Partition, str],
) -> None:
    """The connection goes silent mid-read: the read waits for its statement timeout and a
    short margin, tries a fresh connection (whose opening is silent too) until the request's
    deadline, and fails as a lost connection (a 503), leaving nothing open."""
    proxy, url = partition
    db = make_db(url, statement_ms=500, deadline=2.0)
    try:
        assert anyio.run(db.run, read_pid) > 0
        proxy.frozen = True
        started = time.monotonic()
        with pytest.raises(ConnectionLost):
            anyio.run(db.run, read_pid)
        elapsed = time.monotonic() - started
        assert 0.5 <= elapsed < 3.0, elapsed  # the deadline (2 s), not a hang
        assert loop_conns(db).opened == 0
        assert db.stats().checked_out == 0
    finally:
        db.dispose()


def test_a_statement_with_no_reply_by_its_until_raises_timeout_and_is_out_of_step(
    pg_url: str,
) -> None:
    """`until` bounds the wait for the reply (the server's statement_timeout bounds the
    query; this, a connection gone silent): TimeoutError, and the connection is left mid-query
    so the caller must not reuse it."""
    dsn = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    conns = LoopConnections((dsn,), {}, capacity=1, recycle=60)

    async def main() -> tuple[float, bool]:
        conn = await conns.acquire()
        assert conn is not None
        started = time.monotonic()
        try:
            with pytest.raises(TimeoutError):
                await run_statement(conn, "SELECT pg_sleep(5)", None, started + 0.2)
            return time.monotonic() - started, bool(conn.isexecuting())
        finally:
            conns.release(conn, reuse=True)  # refused: still executing

    waited, executing = asyncio.run(main())
    assert 0.15 <= waited < 2.5  # the sleep is 5 s: it did not wait for the reply
    assert executing and conns.opened == 0 and conns.idle == 0
