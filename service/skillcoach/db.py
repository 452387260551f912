"""The one way to the database.

Every DB call of the API goes through `Database.run`: it checks a connection out of the
SQLAlchemy pool inside a context manager, runs the (synchronous, psycopg2) work in a thread
pool bounded to the pool's capacity, and returns the connection on every path. Cancellation
cannot leak a connection: the worker thread is never abandoned, it finishes its transaction
and checks the connection back in, whatever happened to the awaiting request.

Everything here is PgBouncer-safe (transaction pooling): no session state, no server-side
prepared statements, and per-transaction settings only through SET LOCAL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import anyio
import anyio.to_thread
from sqlalchemy import Engine, create_engine, exc

from skillcoach.settings import Settings

__all__ = [
    "Database",
    "DatabaseUnavailable",
    "PoolConfig",
    "PoolExhausted",
    "PoolStats",
    "create_sync_engine",
]

P = ParamSpec("P")
T = TypeVar("T")


class DatabaseUnavailable(RuntimeError):
    """The database (or PgBouncer) could not be reached or timed out: retry later."""


class PoolExhausted(DatabaseUnavailable):
    """No pooled connection became free within pool_timeout."""


@dataclass(frozen=True, slots=True)
class PoolConfig:
    pool_size: int
    max_overflow: int
    pool_timeout: float
    pool_recycle: int
    pool_pre_ping: bool = True

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


@dataclass(frozen=True, slots=True)
class PoolStats:
    size: int
    checked_out: int
    idle: int
    overflow: int
    capacity: int
    waiters: int


def create_sync_engine(
    url: str, pool: PoolConfig | None = None, *, name: str = "skillcoach"
) -> Engine:
    kwargs: dict[str, object] = {}
    if pool is not None:
        kwargs.update(
            pool_size=pool.pool_size,
            max_overflow=pool.max_overflow,
            pool_timeout=pool.pool_timeout,
            pool_recycle=pool.pool_recycle,
            pool_pre_ping=pool.pool_pre_ping,
        )
    return create_engine(
        url,
        pool_logging_name=name,
        # Through PgBouncer a reset must not rely on session state; rollback is enough.
        pool_reset_on_return="rollback",
        connect_args={"connect_timeout": 3, "application_name": name},
        **kwargs,
    )


class Database:
    def __init__(self, url: str, pool: PoolConfig, *, statement_timeout_ms: int) -> None:
        self.pool_config = pool
        self.engine = create_sync_engine(url, pool)
        self._statement_timeout_ms = int(statement_timeout_ms)
        # Threads beyond the pool's capacity would only queue inside the pool, each holding
        # a worker; AnyIO's default of 40 threads against 15 connections is the seed's failure.
        self.limiter = anyio.CapacityLimiter(pool.capacity)

    def _transaction(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        try:
            with self.engine.begin() as conn:
                conn.exec_driver_sql(f"SET LOCAL statement_timeout = {self._statement_timeout_ms}")
                return fn(conn, *args, **kwargs)
        except exc.TimeoutError as e:
            raise PoolExhausted(
                f"no database connection free within {self.pool_config.pool_timeout:g}s"
            ) from e
        except exc.OperationalError as e:
            raise DatabaseUnavailable(_first_line(e)) from e
        except exc.DBAPIError as e:
            if e.connection_invalidated or _is_query_canceled(e):
                raise DatabaseUnavailable(_first_line(e)) from e
            raise

    async def run(self, fn: Callable[..., T], /, *args: object, **kwargs: object) -> T:
        """Run fn(conn, *args, **kwargs) in one transaction on a worker thread."""
        return await anyio.to_thread.run_sync(
            lambda: self._transaction(fn, *args, **kwargs), limiter=self.limiter
        )

    def run_sync(self, fn: Callable[..., T], /, *args: object, **kwargs: object) -> T:
        return self._transaction(fn, *args, **kwargs)

    def stats(self) -> PoolStats:
        pool = self.engine.pool
        size = int(pool.size())  # type: ignore[attr-defined]
        checked_out = int(pool.checkedout())  # type: ignore[attr-defined]
        idle = int(pool.checkedin())  # type: ignore[attr-defined]
        overflow = max(0, int(pool.overflow()))  # type: ignore[attr-defined]
        return PoolStats(
            size=size,
            checked_out=checked_out,
            idle=idle,
            overflow=overflow,
            capacity=self.pool_config.capacity,
            waiters=int(self.limiter.statistics().tasks_waiting),
        )

    def dispose(self) -> None:
        self.engine.dispose()


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "orig", None) or e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _is_query_canceled(e: exc.DBAPIError) -> bool:
    # 57014: query_canceled (statement_timeout); treated as "the database is too slow now".
    return getattr(e.orig, "pgcode", None) == "57014"
