"""A dedicated, standalone redis-server on its own port (never the system one on 6379).

It is a cache only (docs/architecture.md): no RDB snapshots, no AOF, so nothing is written to disk
and a restart starts empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import redis as redis_client

from skillcoach_devstack.errors import StackError
from skillcoach_devstack.packages import require_binary
from skillcoach_devstack.processes import (
    ensure_port_free,
    owned_pid,
    run_bounded,
    stop_owned,
    wait_healthy,
    wait_until,
)

__all__ = ["RedisServer", "ping", "server_args"]


def ping(host: str, port: int, *, timeout: float = 1.0) -> bool:
    client = redis_client.Redis(
        host=host, port=port, socket_timeout=timeout, socket_connect_timeout=timeout
    )
    try:
        return bool(client.ping())
    except redis_client.RedisError:
        return False
    finally:
        client.close()


def server_args(
    *, port: int, data_dir: Path, pidfile: Path, logfile: Path, host: str = "127.0.0.1"
) -> list[str]:
    """The redis-server command-line options of a cache-only, loopback-only daemon."""
    return [
        "--port", str(port),
        "--bind", host,
        "--protected-mode", "yes",
        "--daemonize", "yes",
        "--pidfile", str(pidfile),
        "--logfile", str(logfile),
        "--dir", str(data_dir),
        "--save", "",
        "--appendonly", "no",
    ]  # fmt: skip


@dataclass(frozen=True, slots=True)
class RedisServer:
    port: int
    data_dir: Path
    host: str = "127.0.0.1"

    @property
    def pidfile(self) -> Path:
        return self.data_dir / "redis.pid"

    @property
    def logfile(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def pid(self) -> int | None:
        return owned_pid(self.pidfile, "redis-server")

    def is_running(self) -> bool:
        return self.pid() is not None

    def healthy(self) -> bool:
        return ping(self.host, self.port)

    def start(self, *, timeout: float = 10.0) -> None:
        """Start the daemon unless ours already runs; wait until it answers PING."""
        if self.pid() is not None:
            if not wait_until(self.healthy, timeout):
                raise StackError(f"redis (pid {self.pid()}) runs but does not answer PING")
            return
        ensure_port_free(
            self.host, self.port, who="redis", hint="set SKILLCOACH_STACK_REDIS_PORT to move it"
        )
        binary = require_binary("redis-server", package="redis-server")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.pidfile.unlink(missing_ok=True)
        args = server_args(
            port=self.port,
            data_dir=self.data_dir,
            pidfile=self.pidfile,
            logfile=self.logfile,
            host=self.host,
        )
        run_bounded([binary, *args], what="redis-server", timeout=timeout, log=self.logfile)
        wait_healthy(
            self.healthy,
            timeout,
            what=f"redis on port {self.port} did not answer PING",
            logfile=self.logfile,
        )

    def stop(self, *, timeout: float = 10.0) -> bool:
        """SIGTERM (redis shuts down cleanly; with no persistence it saves nothing)."""
        return stop_owned(self.pidfile, "redis-server", timeout=timeout)
