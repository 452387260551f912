"""Fixtures that run real PgBouncer and Redis processes for the tests (a pytest plugin).

- `pgbouncer` (session): a PgBouncer in transaction mode on a free loopback port, in front of
  the PostgreSQL server of `pg_url`, started as the postgres user from its own runtime dir.
  `pgbouncer_url` is a SQLAlchemy URL to `pg_url`'s database through it, as `pg_url`'s user
  with a random password (PostgreSQL itself trusts loopback); `pgbouncer_admin_url` is its
  admin console (database "pgbouncer": SHOW POOLS, SHOW STATS).
- `make_pgbouncer` (function): a factory for a private PgBouncer a test may kill and restart.
- `redis_url` (session): a dedicated redis-server on a free port, nothing persisted.
- `redis_cluster` (session): a 6-node Redis Cluster (3 masters, 3 replicas) on free ports;
  `.url` is its redis+cluster:// URL, kill_node/start_node/masters/wait_ok drive failovers.
  A test that kills a node must leave the cluster whole again (start_node + wait_ok).

Every start waits with a deadline; every process is stopped at teardown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy.engine import make_url

from skillcoach_devstack.errors import StackError
from skillcoach_devstack.packages import find_binary
from skillcoach_devstack.pgbouncer import (
    PgBouncer,
    start_ephemeral,
    stop_ephemeral,
)
from skillcoach_devstack.processes import free_port
from skillcoach_devstack.redis import RedisServer
from skillcoach_devstack.redis_cluster import RedisClusterNodes, free_base_port

__all__ = [
    "make_pgbouncer",
    "pgbouncer",
    "pgbouncer_admin_url",
    "pgbouncer_url",
    "redis_cluster",
    "redis_url",
]

_START_ATTEMPTS = 3  # a free port can be taken between choosing it and binding it


def _require(binary: str) -> None:
    if find_binary(binary) is None:
        pytest.fail(
            f"{binary} is not installed: run `make test` (or .venv/bin/python -m"
            " skillcoach_devstack.ensure) to install the Debian packages the tests need",
            pytrace=False,
        )


def start_pgbouncer(pg_url: str, **overrides: int | float) -> PgBouncer:
    """A running PgBouncer in front of pg_url's server, on a free port."""
    _require("pgbouncer")
    return start_ephemeral(pg_url, attempts=_START_ATTEMPTS, **overrides)


stop_pgbouncer = stop_ephemeral


def pgbouncer_db_url(bouncer: PgBouncer, pg_url: str, database: str | None = None) -> str:
    """pg_url's user and database (or another database) through bouncer."""
    url = make_url(pg_url)
    return bouncer.url(url.username or "postgres", database or url.database or "postgres")


@pytest.fixture(scope="session")
def pgbouncer(pg_url: str) -> Iterator[PgBouncer]:
    bouncer = start_pgbouncer(pg_url)
    try:
        yield bouncer
    finally:
        stop_pgbouncer(bouncer)


@pytest.fixture(scope="session")
def pgbouncer_url(pgbouncer: PgBouncer, pg_url: str) -> str:
    return pgbouncer_db_url(pgbouncer, pg_url)


@pytest.fixture(scope="session")
def pgbouncer_admin_url(pgbouncer: PgBouncer) -> str:
    return pgbouncer.admin_url


@pytest.fixture
def make_pgbouncer(pg_url: str) -> Iterator[Callable[..., PgBouncer]]:
    """Start private PgBouncers (keyword overrides of PgBouncerConfig); all stopped after."""
    started: list[PgBouncer] = []

    def make(**overrides: int | float) -> PgBouncer:
        bouncer = start_pgbouncer(pg_url, **overrides)
        started.append(bouncer)
        return bouncer

    try:
        yield make
    finally:
        for bouncer in started:
            stop_pgbouncer(bouncer)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _require("redis-server")
    last: StackError | None = None
    for _ in range(_START_ATTEMPTS):
        server = RedisServer(port=free_port(), data_dir=tmp_path_factory.mktemp("redis"))
        try:
            server.start(timeout=10)
        except StackError as exc:
            last = exc
            server.stop()
            continue
        try:
            yield server.url
        finally:
            server.stop()
        return
    raise RuntimeError(f"redis-server did not start in {_START_ATTEMPTS} attempts: {last}")


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    _require("redis-server")
    _require("redis-cli")
    last: StackError | None = None
    for _ in range(_START_ATTEMPTS):
        nodes = RedisClusterNodes(
            base_port=free_base_port(), data_dir=tmp_path_factory.mktemp("redis-cluster")
        )
        try:
            nodes.start(timeout=30)
        except StackError as exc:
            last = exc
            nodes.stop()
            continue
        try:
            yield nodes
        finally:
            nodes.stop()
        return
    raise RuntimeError(f"the Redis Cluster did not start in {_START_ATTEMPTS} attempts: {last}")
