"""A dedicated, standalone redis-server on its own port (never the system one on 6379).

It is a cache only (ARCHITECTURE.md): no RDB snapshots, no AOF, so nothing is written to disk
and a restart starts empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import redis as redis_client

from skillcoach.stack.errors import StackError
from skillcoach.stack.packages import find_binary
from skillcoach.stack.processes import (
    log_tail,
    pid_alive,
    port_open,
    process_cmdline,
    read_pidfile,
    run_bounded,
    terminate,
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
        pid = read_pidfile(self.pidfile)
        if pid is None or not pid_alive(pid) or "redis-server" not in process_cmdline(pid):
            return None
        return pid

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
        if port_open(self.host, self.port):
            raise StackError(
                f"redis: port {self.port} is already in use by another process"
                " (set SKILLCOACH_STACK_REDIS_PORT to move it)"
            )
        binary = find_binary("redis-server")
        if binary is None:
            raise StackError("redis-server is not installed (apt-get install redis-server)")
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
        if not wait_until(self.healthy, timeout):
            raise StackError(
                f"redis on port {self.port} did not answer PING within {timeout:g}s;"
                f" log {self.logfile}:\n{log_tail(self.logfile)}"
            )

    def stop(self, *, timeout: float = 10.0) -> bool:
        """SIGTERM (redis shuts down cleanly; with no persistence it saves nothing)."""
        pid = self.pid()
        if pid is not None:
            terminate(pid, timeout=timeout)
        self.pidfile.unlink(missing_ok=True)
        return pid is not None
