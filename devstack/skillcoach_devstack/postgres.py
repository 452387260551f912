"""PostgreSQL for the local stack: make sure the local cluster answers, and the app's role and
database exist. The server itself is the system's: the stack starts it if it is down but never
stops it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import parse_dsn

from skillcoach_devstack.errors import StackError
from skillcoach_devstack.processes import run_bounded, wait_until

__all__ = [
    "ensure_role_and_database",
    "ensure_running",
    "is_up",
    "libpq_url",
    "scalar",
    "start_local_cluster",
]

_LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1"}


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL (postgresql+psycopg2://) as libpq understands it (postgresql://)."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}"


def is_up(dsn: str, *, timeout: int = 2) -> bool:
    try:
        psycopg2.connect(libpq_url(dsn), connect_timeout=timeout).close()
    except psycopg2.OperationalError:
        return False
    return True


def start_local_cluster(*, timeout: float = 60.0) -> str:
    """Start the newest Debian cluster named main; returns its version."""
    conf = Path("/etc/postgresql")
    versions = sorted(
        (p.name for p in conf.iterdir() if (p / "main").is_dir()) if conf.is_dir() else [],
        key=lambda v: [int(x) if x.isdigit() else 0 for x in v.split(".")],
    )
    if not versions:
        raise StackError("PostgreSQL is down and no Debian cluster exists under /etc/postgresql")
    version = versions[-1]
    cmd = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"]
    if os.geteuid() != 0:
        raise StackError(f"PostgreSQL is down; start it with: sudo {' '.join(cmd)}")
    # Exit 2 means "already running", which is what we want.
    run_bounded(cmd, timeout=timeout, ok_codes=(0, 2))
    return version


def ensure_running(dsn: str, *, timeout: float = 60.0) -> bool:
    """True if PostgreSQL had to be started; raises if it does not answer within timeout."""
    if is_up(dsn):
        return False
    host = parse_dsn(libpq_url(dsn)).get("host", "")
    if host not in _LOCAL_HOSTS and not host.startswith("/"):
        raise StackError(f"PostgreSQL at {host} does not answer (and is not ours to start)")
    start_local_cluster(timeout=timeout)
    if not wait_until(lambda: is_up(dsn), timeout, interval=0.5):
        raise StackError(f"PostgreSQL did not accept connections within {timeout:g}s")
    return True


def ensure_role_and_database(
    admin_dsn: str, *, role: str, password: str, database: str
) -> list[str]:
    """Create the login role and its database if missing; returns what was created.

    The password is (re)set every time so PgBouncer, which logs in with the userlist's
    password, also works against a server that does not trust loopback.
    """
    created: list[str] = []
    try:
        conn = psycopg2.connect(libpq_url(admin_dsn), connect_timeout=5)
    except psycopg2.Error as exc:
        raise StackError(f"cannot connect to PostgreSQL as admin: {exc}".strip()) from None
    try:
        # CREATE DATABASE cannot run inside a transaction block.
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
                created.append(f"role {role}")
            cur.execute(
                sql.SQL("ALTER ROLE {} PASSWORD %s").format(sql.Identifier(role)), (password,)
            )
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if cur.fetchone() is None:
                cur.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(database), sql.Identifier(role)
                    )
                )
                created.append(f"database {database}")
    except psycopg2.Error as exc:
        raise StackError(
            f"creating role/database {role}/{database} failed: {exc}".strip()
        ) from None
    finally:
        conn.close()
    return created


def scalar(url: str, query: str, *, timeout: int = 5) -> Any:
    """The first column of the first row (None when there is no row)."""
    try:
        conn = psycopg2.connect(libpq_url(url), connect_timeout=timeout)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(query)
                row = cur.fetchone()
                return None if row is None else row[0]
        finally:
            conn.close()
    except psycopg2.Error as exc:
        raise StackError(f"query {query!r} failed: {exc}".strip()) from None
