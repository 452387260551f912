"""The one way to the database.

Every DB call of the API goes through `Database.run`: it checks a connection out of the
SQLAlchemy pool inside a context manager, runs the (synchronous, psycopg2) work in a thread
pool bounded to the pool's capacity, and returns the connection on every path. Cancellation
cannot leak a connection: the worker thread is never abandoned, it finishes its transaction
and checks the connection back in, whatever happened to the awaiting request.

A `single_statement` read skips the thread: untraced, it runs on the event loop over a
psycopg2 connection in asynchronous mode (data/loop_reads.py), within the same connection
budget, whenever that budget has room for one (otherwise it takes the pool like any work).

Everything that waits has the request's deadline: the wait for a slot (cancelled at the
deadline), the query (`SET LOCAL statement_timeout` capped by the time left) and the retries
of idempotent reads. Everything is PgBouncer-safe (transaction pooling): no session state, no
server-side prepared statements, per-transaction settings only through SET LOCAL.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import dataclasses
import functools
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

import anyio
import psycopg2
from prometheus_client import CollectorRegistry
from sqlalchemy import (
    Connection,
    CursorResult,
    Engine,
    PoolProxiedConnection,
    create_engine,
    event,
    exc,
)

from skillcoach.data.deadline import current_work, remaining
from skillcoach.data.loop_reads import LoopConnections, run_statement
from skillcoach.data.pool_metrics import DbMetrics, PoolStats
from skillcoach.data.slot_gate import FIFO_ONLY, GateConfig, SlotGate
from skillcoach.errors import (
    ConnectionLost,
    DatabaseUnavailable,
    DeadlineExceeded,
    PoolExhausted,
    QueryTimeout,
)
from skillcoach.settings import Settings

__all__ = [
    "ConnectionLost",
    "Database",
    "DatabaseUnavailable",
    "DeadlineExceeded",
    "PoolConfig",
    "PoolExhausted",
    "PoolStats",
    "QueryTimeout",
    "Reader",
    "create_sync_engine",
    "single_statement",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger(__name__)

RETRY_BASE = 0.05
QUERY_CANCELED = "57014"  # statement_timeout
RETRY_CAP = 1.0
RETRY_ATTEMPTS = 50  # the deadline ends retries long before this; it only bounds the loop
_SINGLE = "_skillcoach_single_statement"
# How long past its statement_timeout (capped by the request's deadline) a loop read waits
# for a reply before it gives the connection up as silent (a network partition sends no
# reset): the server's own cancellation needs a moment to arrive.
SILENT_MARGIN = 0.25
_NO_ROOM = object()
# Idle connections the SQLAlchemy pool keeps for transactions while reads run on the loop
# (at most a quarter of the capacity): a burst of transactions beyond them opens connections
# that close as they come back, so their budget returns to the reads.
POOL_KEEPS_IDLE = 4


class Rows(Protocol):
    """What a read takes from its statement's result (a CursorResult is one)."""

    def all(self) -> Sequence[Any]: ...
    def first(self) -> Any: ...
    def one(self) -> Any: ...
    def scalar_one(self) -> Any: ...


class Reader(Protocol):
    """What a read needs of its connection: a `Connection` inside a transaction, or, for a
    `single_statement` read run by `Database.run`, the one-statement stand-in."""

    def exec_driver_sql(
        self, statement: str, parameters: Mapping[str, Any] | None = None, /
    ) -> Rows: ...


def single_statement(fn: F) -> F:
    """Mark a read that runs exactly ONE statement. `Database.run` then sends
    `SET LOCAL statement_timeout = N; <statement>` as one simple-query string: PostgreSQL runs
    it as one implicit transaction (the SET LOCAL holds for the statement; PgBouncer's
    transaction pooling sees one transaction), so the read costs one round trip instead of
    three (BEGIN+SET, the statement, COMMIT). A second statement raises. Called directly with
    a Connection (inside another transaction) the mark changes nothing.

    Untraced, the read runs on the event loop (data/loop_reads.py) in two calls: the first
    stops at its statement (so a read must do nothing before it but build its parameters),
    the statement runs without blocking the loop, and the second call gets its rows."""
    setattr(fn, _SINGLE, True)
    return fn


@dataclass(frozen=True, slots=True)
class PoolConfig:
    pool_size: int
    max_overflow: int
    pool_timeout: float
    pool_recycle: int
    pool_pre_ping: bool = True
    # PgBouncer's client budget this pool was sized against (from the pool file; 0: unknown).
    client_budget: int = 0

    @property
    def capacity(self) -> int:
        return self.pool_size + self.max_overflow

    @classmethod
    def from_settings(cls, settings: Settings) -> PoolConfig:
        return cls(
            pool_size=settings.pool_size,
            max_overflow=settings.max_overflow,
            pool_timeout=settings.pool_timeout,
            pool_recycle=settings.pool_recycle,
            pool_pre_ping=settings.pool_pre_ping,
        )


def create_sync_engine(
    url: str,
    pool: PoolConfig | None = None,
    *,
    name: str = "skillcoach",
    explicit_transactions: bool = False,
) -> Engine:
    """An engine for `url`. With explicit_transactions the driver runs in autocommit and the
    caller sends BEGIN/COMMIT itself (see Database): fewer round trips per request."""
    kwargs: dict[str, object] = {}
    if pool is not None:
        kwargs.update(
            pool_size=pool.pool_size,
            max_overflow=pool.max_overflow,
            pool_timeout=pool.pool_timeout,
            pool_recycle=pool.pool_recycle,
            # Database's first statement doubles as the ping (with a reconnect); SQLAlchemy's
            # own pre-ping would cost one more round trip per request.
            pool_pre_ping=pool.pool_pre_ping and not explicit_transactions,
        )
    if explicit_transactions:
        kwargs["isolation_level"] = "AUTOCOMMIT"
    return create_engine(
        url,
        pool_logging_name=name,
        # Bound values (learner data, key hashes) never reach an error message or a log line.
        hide_parameters=True,
        # Through PgBouncer a reset must not rely on session state; rollback is enough.
        pool_reset_on_return="rollback",
        connect_args=_connect_args(name),
        **kwargs,
    )


def _connect_args(name: str) -> dict[str, object]:
    return {"connect_timeout": 3, "application_name": name}


@dataclass(slots=True)
class _Checkout:
    started: float
    route: str
    reported: bool = False


class Database:
    def __init__(
        self,
        url: str,
        pool: PoolConfig,
        *,
        statement_timeout_ms: int,
        request_timeout: float = 5.0,
        long_checkout_seconds: float = 5.0,
        registry: CollectorRegistry | None = None,
        on_engine: Callable[[Engine], None] | None = None,
        gate: GateConfig | None = None,
    ) -> None:
        self._url = url
        self.pool_config = pool
        # Called with every engine this Database opens (at start and on each resize): the
        # tracing's SQL instrumentation.
        self._on_engine = on_engine
        # Untraced, a single-statement read skips SQLAlchemy's Connection and result layers
        # (raw pool checkout and cursor: half the CPU per read, which holds the GIL against
        # the event loop); traced, it keeps them, as the SQL spans hook into them.
        self._raw_reads = on_engine is None
        self._loop: LoopConnections | None = None
        self.engine = self._new_engine(pool)
        self.generation = 0
        self._retiring: list[Engine] = []
        self._statement_timeout_ms = int(statement_timeout_ms)
        self._request_timeout = request_timeout
        self._long_checkout = long_checkout_seconds
        # Threads beyond the pool's capacity would only queue inside the pool, each holding
        # a worker; AnyIO's default of 40 threads against 15 connections is the seed's failure.
        # The gate decides who gets a slot and when (CoDel, adaptive LIFO: see slot_gate);
        # it never lets more than capacity through, so these threads never queue work. A
        # plain executor, not AnyIO's to_thread: its limiter and cancel scopes cost more of
        # the event loop per read than the read's own Python does.
        self._threads = _executor(pool.capacity)
        self._thread_count = pool.capacity
        # Without a gate config (CLI, jobs): FIFO until the deadline; the API passes its own.
        self.gate = SlotGate(pool.capacity, gate or FIFO_ONLY, registry=registry)
        self.metrics = DbMetrics(registry)
        self._held: dict[int, _Checkout] = {}
        self._held_lock = threading.Lock()
        self._tokens = itertools.count()

    def _new_engine(self, pool: PoolConfig) -> Engine:
        engine_pool = pool
        if self._raw_reads:
            # Reads keep their own connections on the loop: the pool keeps a few idle ones for
            # transactions and closes the rest as they come back (QueuePool's overflow rule).
            keep = max(1, min(pool.pool_size, POOL_KEEPS_IDLE, pool.capacity // 4))
            engine_pool = dataclasses.replace(
                pool, pool_size=keep, max_overflow=pool.capacity - keep
            )
        engine = create_sync_engine(self._url, engine_pool, explicit_transactions=True)
        if self._on_engine is not None:
            self._on_engine(engine)
        if self._raw_reads:
            old, self._loop = self._loop, self._loop_connections(engine, pool)
            if old is not None:
                old.close()  # the previous generation's: idle ones now, the rest on release
        return engine

    @staticmethod
    def _loop_connections(engine: Engine, pool: PoolConfig) -> LoopConnections:
        args, kwargs = engine.dialect.create_connect_args(engine.url)
        conns = LoopConnections(
            tuple(args),
            {**kwargs, **_connect_args("skillcoach")},
            capacity=pool.capacity,
            recycle=pool.pool_recycle if pool.pool_recycle > 0 else float("inf"),
        )

        def connect(
            dialect: Any, _: object, cargs: Sequence[Any], cparams: Mapping[str, Any]
        ) -> Any:
            # The pool's connections count in the budget from before they open (two opening
            # at once each see the other) until they close.
            conns.pool_connecting()
            try:
                return dialect.connect(*cargs, **cparams)
            except BaseException:
                conns.pool_closed()
                raise

        event.listen(engine, "do_connect", connect)
        event.listen(engine, "close", lambda *_: conns.pool_closed())
        event.listen(engine, "close_detached", lambda *_: conns.pool_closed())
        return conns

    # -- the transaction, on a worker thread ------------------------------------------------
    def _transaction(
        self,
        fn: Callable[..., T],
        args: tuple[object, ...],
        kwargs: dict[str, object],
        asked_at: float,
        deadline: float,
    ) -> T:
        timeout = self._timeout_ms(deadline)
        token = next(self._tokens)
        engine = self.engine  # a resize swaps the attribute; this transaction keeps its pool
        single = getattr(fn, _SINGLE, False)
        try:
            if single and self._raw_reads:
                prefix = f"SET LOCAL statement_timeout = {timeout}; "
                return self._raw_read(engine, fn, args, kwargs, prefix, token, asked_at)
            for attempt in range(2):
                with engine.connect() as conn:
                    if attempt == 0:
                        self._checked_out(token, asked_at)
                    if single:
                        # The statement is the ping too: a stale pooled connection fails it
                        # before anything ran, and a read may run again on a fresh one.
                        # set_config(..., true) is SET LOCAL; as a SELECT it keeps the SQL
                        # span (named by the string's first word) named after the read.
                        one = _OneStatement(
                            conn, f"SELECT set_config('statement_timeout', '{timeout}', true); "
                        )
                        try:
                            return fn(one, *args, **kwargs)
                        except exc.DBAPIError as e:
                            if attempt == 1 or not _disconnect(e):
                                raise
                            if not conn.invalidated:
                                conn.invalidate()
                            continue
                    # One round trip opens the transaction, sets its timeout and proves the
                    # pooled connection alive. Nothing has run yet if it fails, so a stale
                    # connection (PgBouncer restarted) is replaced once, for writes too.
                    try:
                        _driver_execute(conn, f"BEGIN; SET LOCAL statement_timeout = {timeout}")
                    except psycopg2.Error:
                        conn.invalidate()
                        if attempt == 1:
                            raise
                        continue
                    return _run_in_transaction(conn, fn, args, kwargs)
            raise AssertionError("unreachable")  # pragma: no cover
        except exc.TimeoutError as e:
            self.metrics.checkout_timeouts.inc()
            raise PoolExhausted(
                f"no database connection free within {self.pool_config.pool_timeout:g}s"
            ) from e
        except (exc.DBAPIError, psycopg2.Error) as e:
            failure = self._failure(e, timeout)
            if failure is e:
                raise
            raise failure from e
        finally:
            self._checked_in(token)

    def _timeout_ms(self, deadline: float) -> int:
        """The statement timeout for work starting now: the setting, capped by the time left
        (DeadlineExceeded, counted, when none is)."""
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0:
            self.metrics.checkout_timeouts.inc()
            raise DeadlineExceeded("request deadline passed while waiting for a connection")
        return max(1, min(self._statement_timeout_ms, left_ms))

    def _checked_out(self, token: int, asked_at: float) -> None:
        self.metrics.checkout_wait.observe(time.monotonic() - asked_at)
        with self._held_lock:
            self._held[token] = _Checkout(time.monotonic(), current_work())

    def _checked_in(self, token: int) -> None:
        with self._held_lock:
            held = self._held.pop(token, None)
        if held is not None:
            self._report_if_long(held, time.monotonic() - held.started)

    def _raw_read(
        self,
        engine: Engine,
        fn: Callable[..., T],
        args: tuple[object, ...],
        kwargs: dict[str, object],
        prefix: str,
        token: int,
        asked_at: float,
    ) -> T:
        """A single-statement read on a raw pooled connection (autocommit, see
        create_sync_engine): one round trip, the statement doubling as the liveness ping."""
        for attempt in range(2):
            pooled = engine.raw_connection()
            try:
                if attempt == 0:
                    self._checked_out(token, asked_at)
                try:
                    return fn(_RawStatement(pooled, prefix), *args, **kwargs)
                except psycopg2.Error as e:
                    if _broken(e):
                        # Never handed out again; nothing was written, so a read may run
                        # once more on a fresh connection (a PgBouncer restart).
                        pooled.invalidate(e)
                        if attempt == 0:
                            continue
                    raise
            finally:
                pooled.close()  # back to the pool (or, invalidated, discarded)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- the async entry point --------------------------------------------------------------
    async def run(
        self, fn: Callable[..., T], /, *args: object, retry: bool = False, **kwargs: object
    ) -> T:
        """Run fn(conn, *args, **kwargs) in one transaction on a worker thread, within the
        current request's deadline. `retry=True` (idempotent reads only) retries connection
        errors with jittered exponential backoff until the deadline."""
        deadline = time.monotonic() + remaining(self._request_timeout)
        for attempt in range(RETRY_ATTEMPTS):
            try:
                return await self._run_once(fn, args, kwargs, deadline)
            except ConnectionLost:
                left = deadline - time.monotonic()
                if not retry or attempt == RETRY_ATTEMPTS - 1 or left <= 0:
                    raise
                self.metrics.retries.inc()
                backoff = random.uniform(RETRY_BASE / 2, min(RETRY_CAP, RETRY_BASE * 2**attempt))
                await anyio.sleep(min(backoff, left))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _run_once(
        self,
        fn: Callable[..., T],
        args: tuple[object, ...],
        kwargs: dict[str, object],
        deadline: float,
    ) -> T:
        asked_at = time.monotonic()
        waiter = self.gate.arrive()
        if waiter is not None:  # no free slot: wait, within the deadline, or be shed
            try:
                await self.gate.wait(waiter, deadline)
            except TimeoutError:
                self.metrics.checkout_timeouts.inc()
                raise DeadlineExceeded(
                    "no database connection free before the request deadline"
                ) from None
        loop_conns = self._loop
        if loop_conns is not None and getattr(fn, _SINGLE, False):
            try:
                read = await self._loop_read(loop_conns, fn, args, kwargs, asked_at, deadline)
            except BaseException:
                self.gate.release()
                raise
            if read is not _NO_ROOM:
                self.gate.release()
                return cast(T, read)
        # The slot is held until the thread is done: once it runs, it finishes (bounded by
        # statement_timeout) and returns its connection, whatever happens to this request.
        # The request's context goes with it (asyncio.to_thread's habit): the current span
        # parents the SQL spans, a background task's suppression reaches the instrumentation,
        # and a long checkout is reported under its route.
        work = self._threads.submit(
            contextvars.copy_context().run,
            self._transaction,
            fn,
            args,
            kwargs,
            asked_at,
            deadline,
        )
        try:
            result = await asyncio.wrap_future(work)
        except asyncio.CancelledError:
            self._release_when_done(work)
            raise
        except BaseException:
            self.gate.release()
            raise
        self.gate.release()
        return result

    def _release_when_done(self, work: Future[Any]) -> None:
        if work.cancel():  # never started: nothing holds the slot
            self.gate.release()
            return
        loop = asyncio.get_running_loop()
        work.add_done_callback(lambda _: loop.call_soon_threadsafe(self.gate.release))

    async def _loop_read(
        self,
        conns: LoopConnections,
        fn: Callable[..., T],
        args: tuple[object, ...],
        kwargs: dict[str, object],
        asked_at: float,
        deadline: float,
    ) -> T | object:
        """A single_statement read on a loop connection: one round trip, the statement
        doubling as the liveness ping. _NO_ROOM when the budget has no connection for it."""
        timeout = self._timeout_ms(deadline)
        statement, parameters = _statement_of(fn, args, kwargs)
        sql = f"SET LOCAL statement_timeout = {timeout}; {statement}"
        token = next(self._tokens)
        try:
            for attempt in range(2):
                conn = await conns.acquire(deadline)
                if conn is None:
                    return _NO_ROOM
                if attempt == 0:
                    self._checked_out(token, asked_at)
                reuse = False
                try:
                    # statement_timeout bounds the query; `until` a connection gone silent.
                    until = time.monotonic() + timeout / 1000 + SILENT_MARGIN
                    columns, rows = await run_statement(conn, sql, parameters, until)
                    reuse = True
                except psycopg2.Error as e:
                    reuse = not _broken(e)  # a cancelled statement leaves it in step
                    if attempt == 0 and _broken(e):
                        continue  # nothing ran: once more, on a fresh connection
                    raise
                except TimeoutError as e:
                    raise psycopg2.OperationalError("no reply from the database") from e
                finally:
                    conns.release(conn, reuse=reuse)
                return fn(_Replay(statement, columns, rows), *args, **kwargs)
            raise AssertionError("unreachable")  # pragma: no cover
        except psycopg2.Error as e:
            raise self._failure(e, timeout) from e
        finally:
            self._checked_in(token)

    def _failure(self, e: BaseException, timeout: int) -> BaseException:
        """What a driver error means to the caller (counted), or the error itself."""
        orig = getattr(e, "orig", e)
        if getattr(orig, "pgcode", None) == QUERY_CANCELED:
            self.metrics.query_timeouts.inc()
            return QueryTimeout(f"query cancelled after {timeout} ms")
        if isinstance(orig, psycopg2.OperationalError | psycopg2.InterfaceError) or (
            isinstance(e, exc.DBAPIError) and e.connection_invalidated
        ):
            self.metrics.connection_errors.inc()
            return ConnectionLost(_first_line(e))
        return e

    def run_sync(self, fn: Callable[..., T], /, *args: object, **kwargs: object) -> T:
        now = time.monotonic()
        return self._transaction(fn, args, kwargs, now, now + self._request_timeout)

    # -- long-held checkouts ----------------------------------------------------------------
    def _report_if_long(self, held: _Checkout, age: float) -> None:
        if age >= self._long_checkout and not held.reported:
            held.reported = True
            self.metrics.long_checkouts.labels(held.route).inc()
            log.warning("connection held %.1fs by %s", age, held.route)

    def check_long_held(self) -> int:
        """Report (once each) checkouts held past the threshold; returns how many are."""
        now = time.monotonic()
        with self._held_lock:
            snapshot = list(self._held.values())
        long_held = [h for h in snapshot if now - h.started >= self._long_checkout]
        for h in long_held:
            self._report_if_long(h, now - h.started)
        return len(long_held)

    # -- live resize ------------------------------------------------------------------------
    def resize(self, pool: PoolConfig, *, generation: int) -> None:
        """New checkouts use a new pool at once; the old one is disposed when its connections
        have come back (see `dispose_retired`), so no in-flight request fails."""
        old = self.engine
        self.engine = self._new_engine(pool)
        self.pool_config = pool
        self.generation = generation
        # Growing wakes waiters at once; shrinking lets current holders finish first.
        if pool.capacity > self._thread_count:
            # The old executor's running reads finish on their threads, which then exit.
            self._threads.shutdown(wait=False)
            self._threads = _executor(pool.capacity)
            self._thread_count = pool.capacity
        self.gate.set_capacity(pool.capacity)
        self._retiring.append(old)
        self.metrics.resizes.inc()
        self.dispose_retired()

    def dispose_retired(self) -> None:
        still = []
        for engine in self._retiring:
            if engine.pool.checkedout() == 0:  # type: ignore[attr-defined]
                engine.dispose()
            else:
                still.append(engine)
        self._retiring = still

    # -- state ------------------------------------------------------------------------------
    def stats(self) -> PoolStats:
        pool = self.engine.pool
        retiring_out = sum(e.pool.checkedout() for e in self._retiring)  # type: ignore[attr-defined]
        loop_open = loop_idle = 0
        if self._loop is not None:
            loop_open, loop_idle = self._loop.opened, self._loop.idle
        size = self.pool_config.pool_size
        pool_out = int(pool.checkedout())  # type: ignore[attr-defined]
        # The pool's own idle count includes entries whose connection was closed.
        pool_idle = max(0, self._engine_open() - pool_out)
        return PoolStats(
            size=size,
            checked_out=pool_out + int(retiring_out) + loop_open - loop_idle,
            idle=pool_idle + loop_idle,
            overflow=max(0, pool_out + pool_idle + loop_open - size),
            capacity=self.pool_config.capacity,
            client_budget=self.pool_config.client_budget,
            waiters=self.gate.waiting,
            long_held=self.check_long_held(),
            generation=self.generation,
            retiring_pools=len(self._retiring),
        )

    def _engine_open(self) -> int:
        """The pool's open connections (its own counts are of entries, which outlive a
        closed connection until the entry reconnects)."""
        if self._loop is not None:
            return self._loop.pool_open
        pool = self.engine.pool
        return int(pool.checkedin()) + int(pool.checkedout())  # type: ignore[attr-defined]

    @property
    def loop_connections(self) -> LoopConnections | None:
        """The current generation's event-loop connections (None: traced, or none)."""
        return self._loop

    @property
    def threads(self) -> int:
        """The worker threads DB work may use at once."""
        return self._thread_count

    def dispose(self) -> None:
        if self._loop is not None:
            self._loop.close()
        self._threads.shutdown(wait=True)
        for engine in [*self._retiring, self.engine]:
            engine.dispose()
        self._retiring = []


def _executor(capacity: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(capacity, thread_name_prefix="skillcoach-db")


class _Once:
    """The timeout prefix of a single_statement read, handed out for its one statement."""

    __slots__ = ("_prefix",)

    def __init__(self, prefix: str) -> None:
        self._prefix: str | None = prefix

    def _take(self, statement: str) -> str:
        prefix = self._prefix
        if prefix is None:
            # Two statements in autocommit would be two snapshots and the second without
            # the timeout: such a read must run in a transaction (drop the mark).
            raise RuntimeError("a single_statement read ran a second statement")
        self._prefix = None
        return prefix + statement


class _OneStatement(_Once):
    """The connection a single_statement read gets: its one statement goes out with the
    timeout in front (autocommit: no BEGIN/COMMIT), a second one raises."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection, prefix: str) -> None:
        super().__init__(prefix)
        self._conn = conn

    def exec_driver_sql(
        self, statement: str, parameters: Mapping[str, Any] | None = None, /
    ) -> CursorResult[Any]:
        return self._conn.exec_driver_sql(self._take(statement), parameters)


class _RawStatement(_Once):
    """_OneStatement on a raw DBAPI connection: the rows come back as named tuples."""

    __slots__ = ("_pooled",)

    def __init__(self, pooled: PoolProxiedConnection, prefix: str) -> None:
        super().__init__(prefix)
        self._pooled = pooled

    def exec_driver_sql(
        self, statement: str, parameters: Mapping[str, Any] | None = None, /
    ) -> _Rows:
        sql = self._take(statement)
        with self._pooled.driver_connection.cursor() as cur:  # type: ignore[union-attr]
            cur.execute(sql, parameters)
            if cur.description is None:
                return _Rows([])
            return _rows(statement, cur.description, cur.fetchall())


def _rows(statement: str, columns: Sequence[Any] | None, rows: list[tuple[Any, ...]]) -> _Rows:
    """Rows of `statement` from its cursor description and fetched tuples. The row class is
    made once per statement: psycopg2 decodes every column name on each access."""
    if columns is None:
        return _Rows([])
    make = _MAKERS.get(statement) or _maker(statement, tuple(d.name for d in columns))
    return _Rows([make(r) for r in rows])


def _maker(statement: str, names: tuple[str, ...]) -> Callable[[Iterable[Any]], tuple[Any, ...]]:
    make = _row_maker(names)
    if len(_MAKERS) < 256:  # reads are code constants; bounded all the same
        _MAKERS[statement] = make
    return make


_MAKERS: dict[str, Callable[[Iterable[Any]], tuple[Any, ...]]] = {}


@functools.lru_cache(maxsize=256)
def _row_maker(names: tuple[str, ...]) -> Callable[[Iterable[Any]], tuple[Any, ...]]:
    """Rows with attribute access, as a Row has (one class per statement's columns); rename:
    a column like "?column?" becomes _0, still reachable by index."""
    row: Any = collections.namedtuple("Row", names, rename=True)  # type: ignore[misc]
    make: Callable[[Iterable[Any]], tuple[Any, ...]] = row._make
    return make


class _Rows:
    """The part of a CursorResult the reads use, over fetched rows."""

    __slots__ = ("_rows",)

    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    def all(self) -> list[Any]:
        return self._rows

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def one(self) -> Any:
        if len(self._rows) != 1:
            raise (exc.NoResultFound if not self._rows else exc.MultipleResultsFound)(
                f"expected one row, got {len(self._rows)}"
            )
        return self._rows[0]

    def scalar_one(self) -> Any:
        return self.one()[0]


class _Captured(Exception):
    def __init__(self, statement: str, parameters: Mapping[str, Any] | None) -> None:
        super().__init__(statement)
        self.statement, self.parameters = statement, parameters


class _Capture:
    """What a single_statement read gets first: it learns the statement and stops the read."""

    __slots__ = ()

    def exec_driver_sql(
        self, statement: str, parameters: Mapping[str, Any] | None = None, /
    ) -> Rows:
        raise _Captured(statement, parameters)


def _statement_of(
    fn: Callable[..., Any], args: tuple[object, ...], kwargs: dict[str, object]
) -> tuple[str, Mapping[str, Any] | None]:
    """The one statement of a single_statement read: the read runs up to it (building its
    parameters is all it does before), then `_Replay` runs it again with the rows."""
    try:
        fn(_Capture(), *args, **kwargs)
    except _Captured as captured:
        return captured.statement, captured.parameters
    raise RuntimeError("a single_statement read ran no statement")


class _Replay:
    """What a single_statement read gets second: the rows of its statement, already read."""

    __slots__ = ("_columns", "_rows", "_statement")

    def __init__(
        self, statement: str, columns: Sequence[Any] | None, rows: list[tuple[Any, ...]]
    ) -> None:
        self._statement: str | None = statement
        self._columns, self._rows = columns, rows

    def exec_driver_sql(
        self, statement: str, parameters: Mapping[str, Any] | None = None, /
    ) -> _Rows:
        if statement != self._statement:
            raise RuntimeError("a single_statement read ran a second statement (or another one)")
        self._statement = None
        return _rows(statement, self._columns, self._rows)


def _broken(e: psycopg2.Error) -> bool:
    """The connection broke (not the statement: a cancelled one is Operational too)."""
    return getattr(e, "pgcode", None) != QUERY_CANCELED and isinstance(
        e, psycopg2.OperationalError | psycopg2.InterfaceError
    )


def _disconnect(e: exc.DBAPIError) -> bool:
    """The connection broke (not the statement): worth one retry on a fresh connection."""
    return e.connection_invalidated or (isinstance(e.orig, psycopg2.Error) and _broken(e.orig))


def _driver_execute(conn: Connection, sql: str) -> None:
    """Straight to psycopg2: transaction control needs no SQLAlchemy statement machinery."""
    with conn.connection.driver_connection.cursor() as cur:  # type: ignore[union-attr]
        cur.execute(sql)


def _run_in_transaction(
    conn: Connection, fn: Callable[..., T], args: tuple[object, ...], kwargs: dict[str, object]
) -> T:
    try:
        result = fn(conn, *args, **kwargs)
    except BaseException:
        if not conn.invalidated:  # a disconnect already invalidated it: nothing to roll back
            try:
                _driver_execute(conn, "ROLLBACK")
            except Exception:
                # Unknown server state: this connection must never be handed out again.
                # The error that matters is the one being re-raised.
                conn.invalidate()
        raise
    try:
        _driver_execute(conn, "COMMIT")
    except psycopg2.Error:
        conn.invalidate()
        raise
    return result


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "orig", None) or e).strip()
    return text.splitlines()[0] if text else type(e).__name__
