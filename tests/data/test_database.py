"""The one way to the database, against real PostgreSQL through a real PgBouncer."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import psycopg2.extensions
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Connection, Engine, event

from skillcoach.data.database import (
    ConnectionLost,
    Database,
    DeadlineExceeded,
    PoolConfig,
    QueryTimeout,
    Reader,
    single_statement,
)
from skillcoach.data.deadline import work_scope
from skillcoach_devstack.pgbouncer import PgBouncer
from tests.fixtures_services import pgbouncer_db_url


class Boom(Exception):
    pass


def sleep(conn: Connection, seconds: float) -> int:
    conn.exec_driver_sql(f"SELECT pg_sleep({seconds})")
    return 1


def fail_after_checkout(conn: Connection) -> None:
    conn.exec_driver_sql("SELECT 1")
    raise Boom


def backend_pid(conn: Connection) -> int:
    return int(conn.exec_driver_sql("SELECT 1").scalar_one())


def make_db(
    url: str,
    size: int = 2,
    overflow: int = 1,
    *,
    on_engine: Callable[[Engine], None] | None = None,
    **kw: float,
) -> Database:
    return Database(
        url,
        PoolConfig(pool_size=size, max_overflow=overflow, pool_timeout=2, pool_recycle=3600),
        statement_timeout_ms=int(kw.get("statement_ms", 3000)),
        request_timeout=kw.get("deadline", 5.0),
        long_checkout_seconds=kw.get("long", 5.0),
        registry=CollectorRegistry(),
        on_engine=on_engine,
    )


@pytest.fixture
def db(pgbouncer_url: str) -> Iterator[Database]:
    d = make_db(pgbouncer_url)
    yield d
    d.dispose()


def metric(db: Database, name: str, labels: dict[str, str] | None = None) -> float:
    assert db.metrics.registry is not None
    return db.metrics.registry.get_sample_value(name, labels or {}) or 0.0


def test_connections_come_back_after_1000_failures_and_cancellations(db: Database) -> None:
    async def main() -> None:
        for _ in range(1000):
            with pytest.raises(Boom):
                await db.run(fail_after_checkout)
        # Cancelled callers: the worker finishes its transaction and returns the connection.
        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(db.run, sleep, 0.2)
            await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
        await anyio.sleep(0.4)

    anyio.run(main)
    stats = db.stats()
    assert stats.checked_out == 0
    assert stats.waiters == 0


def test_concurrency_never_exceeds_the_pool(db: Database) -> None:
    peak = 0

    async def main() -> None:
        nonlocal peak

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, db.stats().checked_out)
                await anyio.sleep(0.005)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            async with anyio.create_task_group() as work:
                for _ in range(12):
                    work.start_soon(db.run, sleep, 0.05)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert peak == db.pool_config.capacity == 3


def test_deadline_cuts_the_wait_for_a_slot(db: Database) -> None:
    outcome: dict[str, float] = {}

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(3):  # the whole pool, for a second
                tg.start_soon(db.run, sleep, 1.0)
            await anyio.sleep(0.1)
            t0 = time.monotonic()
            with (
                work_scope(deadline=t0 + 0.3, name=lambda: "test"),
                pytest.raises(DeadlineExceeded),
            ):
                await db.run(sleep, 0)
            outcome["waited"] = time.monotonic() - t0

    anyio.run(main)
    assert 0.25 < outcome["waited"] < 0.6
    assert metric(db, "skillcoach_db_checkout_timeouts_total") == 1


def test_statement_timeout_is_capped_by_the_deadline(db: Database) -> None:
    async def main() -> float:
        t0 = time.monotonic()
        with work_scope(deadline=t0 + 0.4, name=lambda: "test"), pytest.raises(QueryTimeout):
            await db.run(sleep, 5)
        return time.monotonic() - t0

    took = anyio.run(main)
    assert took < 1.0
    assert db.stats().checked_out == 0


def test_long_held_checkouts_are_reported_with_the_route(pgbouncer_url: str) -> None:
    db = make_db(pgbouncer_url, long=0.2)
    try:

        async def main() -> int:
            async with anyio.create_task_group() as tg:
                tg.start_soon(db.run, sleep, 0.6)
                await anyio.sleep(0.4)
                held = db.stats().long_held  # reported while still held
            return held

        assert anyio.run(main) == 1
        assert db.stats().long_held == 0
        name = "skillcoach_db_long_checkouts_total"
        assert metric(db, name, {"route": "background"}) == 1  # counted once, not twice
    finally:
        db.dispose()


def test_live_resize_under_load_fails_nothing(db: Database) -> None:
    results: list[int] = []

    async def main() -> None:
        async def client() -> None:
            for _ in range(20):
                results.append(await db.run(sleep, 0.01))

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(client)
            await anyio.sleep(0.1)
            db.resize(PoolConfig(5, 3, 2, 3600), generation=1)
            await anyio.sleep(0.1)
            db.resize(PoolConfig(1, 1, 2, 3600), generation=2)

    anyio.run(main)
    assert results == [1] * 160
    assert db.pool_config.capacity == 2 and db.threads == 8  # grown to 8, never shrunk
    db.dispose_retired()
    stats = db.stats()
    assert (stats.generation, stats.retiring_pools, stats.checked_out) == (2, 0, 0)


def test_reads_retry_through_a_pgbouncer_restart_writes_do_not(
    make_pgbouncer: Callable[..., PgBouncer], pg_url: str
) -> None:
    bouncer = make_pgbouncer()
    db = make_db(pgbouncer_db_url(bouncer, pg_url), deadline=8.0)
    try:
        assert anyio.run(db.run, backend_pid) == 1
        bouncer.stop()
        with pytest.raises(ConnectionLost):
            anyio.run(db.run, backend_pid)  # a write-like call: no retry, fails at once

        async def read_while_restarting() -> tuple[int, float]:
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.to_thread.run_sync, _restart_later, bouncer)
                t0 = time.monotonic()
                value = await db.run(backend_pid, retry=True)
            return value, time.monotonic() - t0

        value, took = anyio.run(read_while_restarting)
        assert value == 1
        assert took < 6
        assert metric(db, "skillcoach_db_retries_total") >= 1
    finally:
        db.dispose()


def _restart_later(bouncer: PgBouncer) -> None:
    time.sleep(1.0)
    bouncer.start(timeout=10)


def test_a_stale_pooled_connection_is_replaced_before_any_work(
    make_pgbouncer: Callable[..., PgBouncer], pg_url: str
) -> None:
    bouncer = make_pgbouncer()
    db = make_db(pgbouncer_db_url(bouncer, pg_url))
    try:
        assert anyio.run(db.run, backend_pid) == 1  # leaves one idle pooled connection
        bouncer.stop()
        bouncer.start(timeout=10)
        # The pooled connection died with the old PgBouncer; the opening round trip notices
        # and reconnects, so even a non-retried (write) call succeeds.
        assert anyio.run(db.run, backend_pid) == 1
        assert metric(db, "skillcoach_db_connection_errors_total") == 0
    finally:
        db.dispose()


def test_failed_work_is_rolled_back_and_the_connection_reused(db: Database) -> None:
    def write_then_fail(conn: Connection) -> None:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS rollback_probe (x int)")
        conn.exec_driver_sql("INSERT INTO rollback_probe VALUES (1)")
        raise Boom

    def count(conn: Connection) -> int:
        found = conn.exec_driver_sql("SELECT to_regclass('rollback_probe')").scalar_one()
        return 0 if found is None else 1

    with pytest.raises(Boom):
        anyio.run(db.run, write_then_fail)
    assert anyio.run(db.run, count) == 0  # even the DDL was rolled back
    assert db.stats().checked_out == 0


# -- single-statement reads -----------------------------------------------------------------
# Two ways, both tested: untraced on the event loop (an asynchronous psycopg2 connection),
# traced (an engine hook set, as the tracing's SQL instrumentation is) through SQLAlchemy's
# Connection on a worker thread.
WAYS = {"raw": None, "traced": lambda engine: None}


@pytest.fixture(params=list(WAYS))
def way(request: pytest.FixtureRequest) -> Callable[[Engine], None] | None:
    hook: Callable[[Engine], None] | None = WAYS[request.param]
    return hook


@pytest.fixture
def rdb(pgbouncer_url: str, way: Callable[[Engine], None] | None) -> Iterator[Database]:
    d = make_db(pgbouncer_url, on_engine=way)
    yield d
    d.dispose()


class Recorded(psycopg2.extensions.cursor):
    """Every statement string psycopg2 sends (one per round trip: simple query protocol)."""

    sent: list[str] = []

    def execute(self, query: Any, vars: Any = None) -> None:
        Recorded.sent.append(query if isinstance(query, str) else query.decode())
        super().execute(query, vars)


def recording(db: Database) -> list[str]:
    Recorded.sent = []

    @event.listens_for(db.engine, "connect")
    def _record(dbapi_conn: Any, _: Any) -> None:
        dbapi_conn.cursor_factory = Recorded

    if db.loop_connections is not None:
        db.loop_connections.on_open.append(lambda c: setattr(c, "cursor_factory", Recorded))
    return Recorded.sent


@single_statement
def read_pid(conn: Reader) -> int:
    return int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


@single_statement
def read_timeout_and_txn(conn: Reader) -> tuple[str, bool]:
    # In an implicit transaction block SET LOCAL holds for the statement: the timeout shows.
    row = conn.exec_driver_sql(
        "SELECT current_setting('statement_timeout'), now() = statement_timestamp()"
    ).one()
    return str(row[0]), bool(row[1])


@single_statement
def read_sleep(conn: Reader, seconds: float) -> int:
    conn.exec_driver_sql(f"SELECT pg_sleep({seconds})")
    return 1


@single_statement
def two_statements(conn: Reader) -> None:
    conn.exec_driver_sql("SELECT 1")
    conn.exec_driver_sql("SELECT 2")


def test_a_single_statement_read_is_one_round_trip_a_transaction_three(
    rdb: Database, way: Callable[[Engine], None] | None
) -> None:
    db = rdb
    sent = recording(db)
    assert anyio.run(functools.partial(db.run, read_pid, retry=True)) > 0
    # Traced, the timeout is set by a SELECT (SET LOCAL's equivalent) so that the SQL span,
    # named by the string's first word, is named after the read.
    timeout = (
        "SET LOCAL statement_timeout = 3000; "
        if way is None
        else "SELECT set_config('statement_timeout', '3000', true); "
    )
    assert sent == [timeout + "SELECT pg_backend_pid()"]
    sent.clear()
    assert anyio.run(db.run, backend_pid) == 1  # unmarked: the explicit transaction
    assert sent == ["BEGIN; SET LOCAL statement_timeout = 3000", "SELECT 1", "COMMIT"]
    assert db.stats().checked_out == 0


def test_a_single_statement_read_carries_its_timeout_and_no_transaction_lingers(
    pgbouncer_url: str, way: Callable[[Engine], None] | None
) -> None:
    db = make_db(pgbouncer_url, statement_ms=250, on_engine=way)
    try:
        assert anyio.run(db.run, read_timeout_and_txn) == ("250ms", True)
        t0 = time.monotonic()
        with pytest.raises(QueryTimeout):
            anyio.run(db.run, read_sleep, 5)
        assert time.monotonic() - t0 < 3  # cancelled at 250 ms, not after 5 s
        assert metric(db, "skillcoach_db_query_timeouts_total") == 1
        # The implicit transaction ended with its statement: the same connection serves on.
        assert anyio.run(db.run, read_timeout_and_txn) == ("250ms", True)
        assert db.stats().checked_out == 0
    finally:
        db.dispose()


def test_a_single_statement_read_refuses_a_second_statement(rdb: Database) -> None:
    db = rdb
    with pytest.raises(RuntimeError, match="second statement"):
        anyio.run(db.run, two_statements)
    assert anyio.run(db.run, read_pid) > 0
    assert db.stats().checked_out == 0


def test_the_mark_changes_nothing_inside_a_transaction(db: Database) -> None:
    def both(conn: Connection) -> tuple[int, int]:
        return read_pid(conn), read_pid(conn)  # a Connection: two statements are fine

    first, second = anyio.run(db.run, both)
    assert first == second > 0


def test_a_stale_connection_is_replaced_for_a_single_statement_read(
    make_pgbouncer: Callable[..., PgBouncer], pg_url: str, way: Callable[[Engine], None] | None
) -> None:
    bouncer = make_pgbouncer()
    db = make_db(pgbouncer_db_url(bouncer, pg_url), on_engine=way)
    try:
        assert anyio.run(db.run, read_pid) > 0  # leaves one idle pooled connection
        bouncer.stop()
        bouncer.start(timeout=10)
        # Its statement finds the connection dead and runs again on a fresh one, no retry.
        assert anyio.run(db.run, read_pid) > 0
        assert metric(db, "skillcoach_db_connection_errors_total") == 0
        assert metric(db, "skillcoach_db_retries_total") == 0
    finally:
        db.dispose()


def test_single_statement_reads_retry_through_a_pgbouncer_restart(
    make_pgbouncer: Callable[..., PgBouncer], pg_url: str, way: Callable[[Engine], None] | None
) -> None:
    bouncer = make_pgbouncer()
    db = make_db(pgbouncer_db_url(bouncer, pg_url), deadline=8.0, on_engine=way)
    try:
        assert anyio.run(db.run, read_pid) > 0
        bouncer.stop()

        async def read_while_restarting() -> int:
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.to_thread.run_sync, _restart_later, bouncer)
                value = await db.run(read_pid, retry=True)
            return value

        assert anyio.run(read_while_restarting) > 0
        assert metric(db, "skillcoach_db_retries_total") >= 1
        assert db.stats().checked_out == 0
    finally:
        db.dispose()


@single_statement
def read_rows(conn: Reader) -> list[tuple[int, str, int]]:
    rows = conn.exec_driver_sql(
        "SELECT g AS n, 'x' || g AS label, 1 FROM generate_series(1, %(k)s) g", {"k": 3}
    ).all()
    return [(r.n, r.label, r[2]) for r in rows]


@single_statement
def read_none(conn: Reader) -> object:
    return conn.exec_driver_sql("SELECT 1 WHERE false").first()


@single_statement
def bad_sql(conn: Reader) -> None:
    conn.exec_driver_sql("SELECT no_such_column FROM learners")


def test_single_statement_rows_read_like_sqlalchemy_rows_and_errors_are_not_retried(
    rdb: Database,
) -> None:
    db = rdb
    sent = recording(db)  # on connect: before the first read
    assert anyio.run(db.run, read_rows) == [(1, "x1", 1), (2, "x2", 1), (3, "x3", 1)]
    assert anyio.run(db.run, read_none) is None
    sent.clear()
    with pytest.raises(Exception, match="no_such_column"):
        anyio.run(functools.partial(db.run, bad_sql, retry=True))
    assert len(sent) == 1  # a failed statement is not a broken connection: sent once
    assert metric(db, "skillcoach_db_connection_errors_total") == 0
    assert anyio.run(db.run, read_pid) > 0  # and the connection serves on
    assert db.stats().checked_out == 0
