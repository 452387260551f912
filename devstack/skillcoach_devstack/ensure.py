"""`python -m skillcoach_devstack.ensure`: the services the test suite needs, before `pytest`.

Used by `make test` and so by .ci/run. It installs the Debian packages the fixtures run
(pgbouncer, redis-server, haproxy), starts PostgreSQL if it is down, and starts the system
Redis on 6379 if it is down. It never stops anything.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from skillcoach_devstack import packages, postgres
from skillcoach_devstack.config import DEFAULT_PG_ADMIN_DSN
from skillcoach_devstack.errors import StackError
from skillcoach_devstack.processes import run_bounded, wait_until
from skillcoach_devstack.redis import ping

__all__ = ["ensure_services", "main"]

SYSTEM_REDIS_PORT = 6379


def _system_redis_command(binary: str) -> list[str]:
    return [
        binary,
        "--daemonize", "yes",
        "--bind", "127.0.0.1", "-::1",
        "--port", str(SYSTEM_REDIS_PORT),
        "--save", "",
        "--appendonly", "no",
        "--dir", "/var/lib/redis",
        "--logfile", "/var/log/redis/ci.log",
    ]  # fmt: skip


def ensure_system_redis(*, timeout: float = 15.0) -> bool:
    """True if it had to be started."""
    if ping("127.0.0.1", SYSTEM_REDIS_PORT):
        return False
    binary = packages.find_binary("redis-server")
    if binary is None:
        raise StackError("redis-server is not installed")
    for directory in ("/var/lib/redis", "/var/log/redis"):
        Path(directory).mkdir(parents=True, exist_ok=True)
    run_bounded(_system_redis_command(binary), what="redis-server", timeout=timeout)
    if not wait_until(lambda: ping("127.0.0.1", SYSTEM_REDIS_PORT), timeout):
        raise StackError(f"Redis on {SYSTEM_REDIS_PORT} did not answer PING within {timeout:g}s")
    return True


def ensure_services() -> None:
    installed = packages.ensure_packages()
    print(f"ensure: packages {'installed ' + ' '.join(installed) if installed else 'present'}")
    dsn = os.environ.get("SKILLCOACH_STACK_PG_ADMIN_DSN") or DEFAULT_PG_ADMIN_DSN
    started = postgres.ensure_running(dsn)
    print(f"ensure: postgres {'started' if started else 'up'}")
    started = ensure_system_redis()
    print(f"ensure: redis on {SYSTEM_REDIS_PORT} {'started' if started else 'up'}", flush=True)


def main() -> int:
    try:
        ensure_services()
    except StackError as exc:
        print(f"ensure: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
