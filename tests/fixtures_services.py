"""Fixtures that run real PgBouncer and Redis processes for the tests (a pytest plugin).

- `pgbouncer` (session): a PgBouncer in transaction mode on a free loopback port, in front of
  the PostgreSQL server of `pg_url`, started as the postgres user from its own runtime dir.
  `pgbouncer_url` is a SQLAlchemy URL to `pg_url`'s database through it, as `pg_url`'s user
  with a random password (PostgreSQL itself trusts loopback); `pgbouncer_admin_url` is its
  admin console (database "pgbouncer": SHOW POOLS, SHOW STATS).
- `make_pgbouncer` (function): a factory for a private PgBouncer a test may kill and restart.
- `redis_server` (session): a dedicated redis-server on a free port, nothing persisted;
  `redis_url` (module) is its URL, emptied as each module starts (learner ids repeat).
- `redis_cluster` (session): a 6-node Redis Cluster (3 masters, 3 replicas) on free ports;
  `.url` is its redis+cluster:// URL, kill_node/start_node/masters/wait_ok drive failovers.
  A test that kills a node must leave the cluster whole again (start_node + wait_ok).
- `redis_tls_files` (session): PEM files made with openssl for the session: a CA, a server
  certificate it signed for 127.0.0.1 and localhost, another CA (untrusted by the servers'
  clients) and a certificate the first CA signed for a name nobody connects to.
- `redis_auth` (session): a standalone Redis that requires a password (AUTH, plain TCP);
  `redis_tls` (session): one that speaks TLS only and admits one ACL user (AUTH user pass).
  Both are RedisServer objects: `.url` (without credentials), `.password`, `.username`, `.tls`.
- `redis_cluster_auth`, `redis_cluster_tls` (session): 6-node clusters that require a password
  (replicas to their masters too), the second TLS-only on client ports, bus and replication.

Every start waits with a deadline; every process is stopped at teardown.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis import Redis
from sqlalchemy.engine import make_url

from skillcoach_devstack.errors import StackError
from skillcoach_devstack.packages import find_binary
from skillcoach_devstack.pgbouncer import (
    PgBouncer,
    start_ephemeral,
    stop_ephemeral,
)
from skillcoach_devstack.processes import free_port, run_bounded
from skillcoach_devstack.redis import RedisServer, RedisTLS
from skillcoach_devstack.redis_cluster import RedisClusterNodes, free_base_port

__all__ = [
    "TlsFiles",
    "make_pgbouncer",
    "make_tls_files",
    "pgbouncer",
    "pgbouncer_admin_url",
    "pgbouncer_url",
    "redis_auth",
    "redis_cluster",
    "redis_cluster_auth",
    "redis_cluster_tls",
    "redis_server",
    "redis_tls",
    "redis_tls_files",
    "redis_url",
    "running_redis",
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


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca: Path  # the CA the clients trust
    server: RedisTLS  # signed by `ca` for 127.0.0.1 and localhost
    other_ca: Path  # a CA that signed none of the servers' certificates
    wrong_name: RedisTLS  # signed by `ca`, for a name no test connects to


def make_tls_files(directory: Path) -> TlsFiles:
    """Two CAs and two server certificates (EC P-256, valid two days), made with openssl."""
    _require("openssl")
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        run_bounded(["openssl", *args], what=f"openssl {args[0]}", timeout=30, cwd=directory)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]

    def ca(name: str) -> Path:
        openssl(
            "req", "-x509", *key, "-days", "2", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.crt",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        return directory / f"{name}.crt"

    def server(name: str, signer: str, alt_names: str) -> RedisTLS:
        (directory / f"{name}.ext").write_text(
            f"subjectAltName={alt_names}\nbasicConstraints=CA:FALSE\n"
            "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n"
        )
        openssl(
            "req", *key, "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr",
        )  # fmt: skip
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-days", "2",
            "-CA", f"{signer}.crt", "-CAkey", f"{signer}.key",
            "-set_serial", str(secrets.randbits(63)), "-extfile", f"{name}.ext",
            "-out", f"{name}.crt",
        )  # fmt: skip
        signer_crt = directory / f"{signer}.crt"
        return RedisTLS(directory / f"{name}.crt", directory / f"{name}.key", signer_crt)

    trusted = ca("ca")
    return TlsFiles(
        ca=trusted,
        server=server("redis", "ca", "IP:127.0.0.1,DNS:localhost"),
        other_ca=ca("other-ca"),
        wrong_name=server("elsewhere", "ca", "DNS:redis.elsewhere.invalid"),
    )


@pytest.fixture(scope="session")
def redis_tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("redis-tls"))


@contextlib.contextmanager
def running_redis(
    data_dir: Path,
    *,
    password: str | None = None,
    username: str | None = None,
    tls: RedisTLS | None = None,
) -> Iterator[RedisServer]:
    """A redis-server on a free port for the block, stopped after it."""
    _require("redis-server")
    last: StackError | None = None
    for _ in range(_START_ATTEMPTS):
        server = RedisServer(
            port=free_port(), data_dir=data_dir, password=password, username=username, tls=tls
        )
        try:
            server.start(timeout=10)
        except StackError as exc:
            last = exc
            server.stop()
            continue
        try:
            yield server
        finally:
            server.stop()
        return
    raise RuntimeError(f"redis-server did not start in {_START_ATTEMPTS} attempts: {last}")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def redis_url(redis_server: RedisServer) -> str:
    # Modules get their own databases, and learner ids repeat across them: an answer cached
    # by one module must never be a hit for the next, whatever order they run in.
    client = Redis.from_url(redis_server.url, socket_timeout=10)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture(scope="session")
def redis_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    password = f"pw-{secrets.token_hex(12)}"
    with running_redis(tmp_path_factory.mktemp("redis-auth"), password=password) as server:
        yield server


@pytest.fixture(scope="session")
def redis_tls(
    tmp_path_factory: pytest.TempPathFactory, redis_tls_files: TlsFiles
) -> Iterator[RedisServer]:
    with running_redis(
        tmp_path_factory.mktemp("redis-tls"),
        password=f"pw-{secrets.token_hex(12)}",
        username="skillcoach",
        tls=redis_tls_files.server,
    ) as server:
        yield server


def _cluster(
    data_dir: Callable[[], Path], *, password: str | None = None, tls: RedisTLS | None = None
) -> Iterator[RedisClusterNodes]:
    _require("redis-server")
    _require("redis-cli")
    last: StackError | None = None
    for _ in range(_START_ATTEMPTS):
        nodes = RedisClusterNodes(
            base_port=free_base_port(), data_dir=data_dir(), password=password, tls=tls
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


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    yield from _cluster(lambda: tmp_path_factory.mktemp("redis-cluster"))


@pytest.fixture(scope="session")
def redis_cluster_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    password = f"pw-{secrets.token_hex(12)}"
    yield from _cluster(lambda: tmp_path_factory.mktemp("redis-cluster-auth"), password=password)


@pytest.fixture(scope="session")
def redis_cluster_tls(
    tmp_path_factory: pytest.TempPathFactory, redis_tls_files: TlsFiles
) -> Iterator[RedisClusterNodes]:
    yield from _cluster(
        lambda: tmp_path_factory.mktemp("redis-cluster-tls"),
        password=f"pw-{secrets.token_hex(12)}",
        tls=redis_tls_files.server,
    )
