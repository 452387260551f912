"""HAProxy for the local stack: one port in front of N API replicas.

Rendering (`render_config`) is pure. `HAProxy` runs one process from a runtime dir (config and
pid file) with its log in a file, detached from the terminal like the replicas. It stays in
the foreground of its own session rather than forking with -D, so its stderr log (health-check
transitions, abnormal requests) needs no syslog daemon.

A change of the replica set is a soft reload: a new process starts with `-sf <oldpid>`, binds
the same port (SO_REUSEPORT), and tells the old one to stop listening and finish the requests
it holds; `hard-stop-after` in the config bounds how long that may take. The new process is
known to serve once its stats port's /instance answers with the random token it was started
with (HAProxy 2.6 has no fetch for its own pid).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import secrets
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from skillcoach.limits import balancer_limit
from skillcoach.settings import Settings
from skillcoach_devstack.errors import StackError
from skillcoach_devstack.packages import require_binary
from skillcoach_devstack.processes import (
    ensure_port_free,
    log_tail,
    owned_pid,
    pid_alive,
    process_cmdline,
    run_bounded,
    terminate,
    wait_until,
)

__all__ = [
    "BACKEND",
    "HAProxy",
    "HAProxyConfig",
    "Server",
    "default_template_path",
    "parse_server_states",
    "render_config",
    "server_name",
]

# The backend holding the replicas (its name appears in the stats CSV and HAProxy's metrics).
BACKEND = "replicas"


def default_template_path() -> Path:
    """The HAProxy config template shipped with this package."""
    return Path(__file__).resolve().parent / "templates" / "haproxy.cfg.tmpl"


def server_name(port: int) -> str:
    return f"api-{port}"


def _default_server_maxconn() -> int:
    """A replica's balancer limit under the service's default settings."""
    defaults = Settings.model_fields
    capacity = int(defaults["pool_size"].default) + int(defaults["max_overflow"].default)
    return balancer_limit(pool_capacity=capacity)


@dataclass(frozen=True, slots=True)
class Server:
    name: str
    port: int
    host: str = "127.0.0.1"
    # This server's own limit; None: HAProxyConfig.server_maxconn.
    maxconn: int | None = None


@dataclass(frozen=True, slots=True)
class HAProxyConfig:
    listen_port: int
    stats_port: int
    servers: tuple[Server, ...]
    listen_addr: str = "127.0.0.1"
    # leastconn: see the template; the tests may ask for roundrobin.
    balance: str = "leastconn"
    # HAProxy time format ("1s", "200ms"): how often each replica's /readyz is checked.
    check_interval: str = "1s"
    maxconn: int = 4096
    hard_stop_after: str = "10s"
    # Requests HAProxy sends to one replica at once: twice what the replica runs
    # (skillcoach.limits.balancer_limit, which the stack computes from the pool plan). The
    # rest wait in HAProxy's queue, first in, first out, at no cost to the replicas. With the
    # replica's in-flight limit here instead (1,016 by default), 1,000 clients queued inside
    # the replicas' event loops, whose overloaded gates serve the newest first: a p99 of
    # 0.8-1 s at 1,000 connections against 0.3 s through this queue (docs/benchmarks.md).
    server_maxconn: int = field(default_factory=_default_server_maxconn)
    # HAProxy time format: how long a request may wait in HAProxy's queue for a replica
    # before HAProxy answers its own 503 with Retry-After. The wait is bounded by time, like
    # the replicas' own gates, which shed what waited about a second: a full queue at 1,000
    # connections waits a fifth of that, and only a longer overload is refused.
    timeout_queue: str = "1s"

    def server_lines(self) -> str:
        if not self.servers:
            # A backend with no server is valid: every request gets the 503 problem+json.
            return "    # no replicas"
        return "\n".join(
            f"    server {s.name} {s.host}:{s.port}"
            f" maxconn {self.server_maxconn if s.maxconn is None else s.maxconn}"
            for s in self.servers
        )


def render_config(template: str, cfg: HAProxyConfig) -> str:
    """The haproxy.cfg text; a placeholder without a value raises KeyError."""
    if cfg.balance not in ("leastconn", "roundrobin"):
        raise ValueError(f"balance must be leastconn or roundrobin, not {cfg.balance!r}")
    names = [s.name for s in cfg.servers]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate server names: {names}")
    limits = [cfg.server_maxconn, *(s.maxconn for s in cfg.servers if s.maxconn is not None)]
    if min(limits) < 1:
        # maxconn 0 means "unlimited" to HAProxy: the opposite of a limit.
        raise ValueError(f"server maxconn must be at least 1, not {min(limits)}")
    return Template(template).substitute(
        listen_addr=cfg.listen_addr,
        listen_port=cfg.listen_port,
        stats_port=cfg.stats_port,
        balance=cfg.balance,
        check_interval=cfg.check_interval,
        maxconn=cfg.maxconn,
        hard_stop_after=cfg.hard_stop_after,
        timeout_queue=cfg.timeout_queue,
        servers=cfg.server_lines(),
    )


def parse_server_states(stats_csv: str, backend: str = BACKEND) -> dict[str, str]:
    """Server name -> status ("UP", "DOWN", "MAINT", "UP 1/2"...) from HAProxy's stats CSV."""
    text = stats_csv.removeprefix("# ")
    states: dict[str, str] = {}
    for row in csv.DictReader(io.StringIO(text)):
        name = row.get("svname") or ""
        if row.get("pxname") == backend and name not in ("", "FRONTEND", "BACKEND"):
            states[name] = row.get("status") or ""
    return states


def _get_text(url: str, *, timeout: float) -> str | None:
    """The body of a 200 answer, or None (no answer, another status, or a timeout)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            if response.status != 200:
                return None
            body: bytes = response.read()
            return body.decode(errors="replace")
    except (urllib.error.URLError, OSError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class HAProxy:
    config: HAProxyConfig
    runtime_dir: Path
    logfile: Path
    template_path: Path

    @property
    def cfg_path(self) -> Path:
        return self.runtime_dir / "haproxy.cfg"

    @property
    def pidfile(self) -> Path:
        return self.runtime_dir / "haproxy.pid"

    @property
    def instance_file(self) -> Path:
        """The token the running process answers /instance with."""
        return self.runtime_dir / "haproxy.instance"

    @property
    def url(self) -> str:
        return f"http://{self.config.listen_addr}:{self.config.listen_port}"

    @property
    def stats_url(self) -> str:
        return f"http://{self.config.listen_addr}:{self.config.stats_port}/stats"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.config.listen_addr}:{self.config.stats_port}/metrics"

    def pid(self) -> int | None:
        return owned_pid(self.pidfile, "haproxy")

    def is_running(self) -> bool:
        return self.pid() is not None

    def serving_instance(self, *, timeout: float = 1.0) -> str | None:
        """The token of the process answering on the stats port, or None."""
        body = _get_text(
            f"http://{self.config.listen_addr}:{self.config.stats_port}/instance",
            timeout=timeout,
        )
        return (body or "").strip() or None

    def healthy(self) -> bool:
        """Our process runs and is the one answering."""
        if self.pid() is None:
            return False
        try:
            token = self.instance_file.read_text().strip()
        except FileNotFoundError:
            return False
        return self.serving_instance() == token

    def server_states(self, *, timeout: float = 2.0) -> dict[str, str] | None:
        """Each replica's state as HAProxy sees it (health checks), or None if it does not
        answer."""
        body = _get_text(f"{self.stats_url};csv", timeout=timeout)
        return None if body is None else parse_server_states(body)

    def render(self) -> str:
        try:
            template = self.template_path.read_text()
        except FileNotFoundError:
            raise StackError(
                f"no HAProxy template at {self.template_path} (or pass --root)"
            ) from None
        return render_config(template, self.config)

    def _binary(self) -> str:
        return require_binary("haproxy", package="haproxy")

    def _install_config(self, text: str, *, timeout: float) -> None:
        """Validate the new config with `haproxy -c` before it replaces the current one, so a
        bad render can never take down the running load balancer."""
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        candidate = self.cfg_path.with_name(f".{self.cfg_path.name}.new")
        candidate.write_text(text)
        try:
            run_bounded(
                [self._binary(), "-c", "-q", "-f", str(candidate)],
                what="haproxy -c (config check)",
                timeout=timeout,
            )
        except StackError:
            candidate.unlink(missing_ok=True)
            raise
        os.replace(candidate, self.cfg_path)

    def _spawn(self, extra: Sequence[str], *, timeout: float) -> int:
        """Start a process on the installed config; wait until it answers on its stats port."""
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(8)
        with self.logfile.open("ab") as log:
            # Its own session: it outlives this command and ignores the terminal's ^C.
            proc = subprocess.Popen(
                [self._binary(), "-f", str(self.cfg_path), *extra],
                env={**os.environ, "SKILLCOACH_HAPROXY_INSTANCE": token},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def serving() -> bool:
            if proc.poll() is not None:
                raise StackError(
                    f"haproxy exited with code {proc.returncode} during start-up;"
                    f" log {self.logfile}:\n{log_tail(self.logfile)}"
                )
            return self.serving_instance(timeout=0.5) == token

        if not wait_until(serving, timeout, interval=0.05):
            with contextlib.suppress(StackError):
                terminate(proc.pid, timeout=2)
            raise StackError(
                f"haproxy did not serve on port {self.config.stats_port} within {timeout:g}s;"
                f" log {self.logfile}:\n{log_tail(self.logfile)}"
            )
        self.pidfile.write_text(f"{proc.pid}\n")
        self.instance_file.write_text(f"{token}\n")
        return proc.pid

    def apply(self, *, timeout: float = 10.0) -> tuple[str, int | None]:
        """Make the running HAProxy match the config: start it, soft-reload it, or leave it.

        Returns (what happened: "started" | "reloaded" | "unchanged", the old pid on reload);
        the old process finishes its requests in the background (see wait_retired).
        """
        text = self.render()
        pid = self.pid()
        if pid is not None:
            try:
                current = self.cfg_path.read_text()
            except FileNotFoundError:
                current = None
            if current == text and self.healthy():
                return "unchanged", None
            self._install_config(text, timeout=timeout)
            self._spawn(["-sf", str(pid)], timeout=timeout)
            return "reloaded", pid
        host = self.config.listen_addr
        ensure_port_free(
            host,
            self.config.listen_port,
            who="haproxy",
            hint="set SKILLCOACH_STACK_API_PORT to move the stack",
        )
        ensure_port_free(
            host,
            self.config.stats_port,
            who="haproxy (stats)",
            hint="set SKILLCOACH_STACK_HAPROXY_STATS_PORT to move it",
        )
        self._install_config(text, timeout=timeout)
        self.pidfile.unlink(missing_ok=True)
        self.instance_file.unlink(missing_ok=True)
        self._spawn([], timeout=timeout)
        return "started", None

    @staticmethod
    def wait_retired(old_pid: int, *, timeout: float) -> bool:
        """Wait until a soft-stopped process has finished its requests and left."""
        if wait_until(lambda: not pid_alive(old_pid), timeout, interval=0.05):
            return True
        # hard-stop-after should have ended it; do it ourselves, bounded.
        if "haproxy" in process_cmdline(old_pid):
            terminate(old_pid, timeout=2)
        return False

    def stop(self, *, timeout: float = 12.0) -> bool:
        """Soft stop (SIGUSR1: stop listening, finish in-flight requests), bounded by timeout,
        then SIGTERM/SIGKILL; True if it ran."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)
            if not wait_until(lambda: not pid_alive(pid), timeout, interval=0.05):
                terminate(pid, timeout=5)
        self.pidfile.unlink(missing_ok=True)
        self.instance_file.unlink(missing_ok=True)
        return pid is not None
