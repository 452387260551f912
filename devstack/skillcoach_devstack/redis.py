"""A dedicated, standalone redis-server on its own port (never the system one on 6379).

It is a cache only (docs/architecture.md): no RDB snapshots, no AOF, so nothing is written to disk
and a restart starts empty.

Optionally it requires a password (AUTH, or an ACL user) and speaks TLS only, like a production
Redis; the local stack runs without either. The password goes into a config file readable by its
owner only, included from the command line, so it never shows in `ps` or in an error message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
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

__all__ = [
    "RedisServer",
    "RedisTLS",
    "auth_config",
    "ping",
    "server_args",
    "tls_args",
    "write_private",
]


@dataclass(frozen=True, slots=True)
class RedisTLS:
    """The PEM files of a server that speaks TLS only: its certificate and key, and the CA that
    clients verify it with (and that it would verify client certificates with, if asked)."""

    cert_file: Path
    key_file: Path
    ca_file: Path


def tls_args(tls: RedisTLS) -> list[str]:
    """redis-server options for TLS with the given files; clients need no certificate."""
    return [
        "--tls-cert-file", str(tls.cert_file),
        "--tls-key-file", str(tls.key_file),
        "--tls-ca-cert-file", str(tls.ca_file),
        "--tls-auth-clients", "no",
    ]  # fmt: skip


def _quoted(value: str) -> str:
    """A redis.conf string argument; Redis unescapes backslash and double quote inside quotes."""
    if any(c in value for c in "\r\n\0"):
        raise ValueError("a Redis password or user name cannot contain line breaks or NUL")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def auth_config(password: str, *, username: str | None = None, replication: bool = False) -> str:
    """redis.conf lines that require `password`: the default user's (requirepass), or an ACL
    user's with the default user disabled. replication: replicas authenticate to their master
    with the same credentials (a cluster's nodes)."""
    if username is None:
        lines = [f"requirepass {_quoted(password)}"]
    else:
        lines = [
            "user default off",
            f"user {_quoted(username)} on {_quoted('>' + password)} ~* &* +@all",
        ]
        if replication:
            lines.append(f"masteruser {_quoted(username)}")
    if replication:
        lines.append(f"masterauth {_quoted(password)}")
    return "\n".join(lines) + "\n"


def write_private(path: Path, text: str) -> Path:
    """Write text to a file only its owner can read (it holds a password)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    path.chmod(0o600)  # an older file keeps its mode through O_CREAT
    return path


def ping(
    host: str,
    port: int,
    *,
    timeout: float = 1.0,
    username: str | None = None,
    password: str | None = None,
    tls: RedisTLS | None = None,
) -> bool:
    client = redis_client.Redis(
        host=host,
        port=port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        username=username,
        password=password,
        ssl=tls is not None,
        ssl_ca_certs=None if tls is None else str(tls.ca_file),
        # A readiness probe of a server started here, at an address chosen here: the chain
        # is verified, the certificate's name is not (a test may give it another on purpose).
        ssl_check_hostname=False,
    )
    try:
        return bool(client.ping())
    except redis_client.RedisError:
        return False
    finally:
        client.close()


def server_args(
    *,
    port: int,
    data_dir: Path,
    pidfile: Path,
    logfile: Path,
    host: str = "127.0.0.1",
    include: Path | None = None,
    tls: RedisTLS | None = None,
) -> list[str]:
    """The redis-server command-line options of a cache-only, loopback-only daemon. include: a
    config file with more settings (the password); tls: TLS only, on `port` (no plain port)."""
    listen = ["--port", str(port)] if tls is None else ["--port", "0", "--tls-port", str(port)]
    return [
        *listen,
        *([] if include is None else ["--include", str(include)]),
        *([] if tls is None else tls_args(tls)),
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
    # Unset: no AUTH (the local stack). With a username, only that ACL user may log in.
    password: str | None = field(default=None, repr=False)
    username: str | None = None
    tls: RedisTLS | None = None

    @property
    def pidfile(self) -> Path:
        return self.data_dir / "redis.pid"

    @property
    def logfile(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def auth_file(self) -> Path:
        return self.data_dir / "redis-auth.conf"

    @property
    def url(self) -> str:
        """The server's URL without credentials (rediss:// when TLS)."""
        scheme = "redis" if self.tls is None else "rediss"
        return f"{scheme}://{self.host}:{self.port}/0"

    def pid(self) -> int | None:
        return owned_pid(self.pidfile, "redis-server")

    def is_running(self) -> bool:
        return self.pid() is not None

    def healthy(self) -> bool:
        return ping(
            self.host, self.port, username=self.username, password=self.password, tls=self.tls
        )

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
        include = None
        if self.password is not None:
            include = write_private(
                self.auth_file, auth_config(self.password, username=self.username)
            )
        args = server_args(
            port=self.port,
            data_dir=self.data_dir,
            pidfile=self.pidfile,
            logfile=self.logfile,
            host=self.host,
            include=include,
            tls=self.tls,
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
