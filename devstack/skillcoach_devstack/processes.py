"""Background processes of the local stack: pid files, bounded waits, and the API replicas.

Every wait here has a deadline; every stop is SIGTERM, then SIGKILL once the grace period
is over. Processes are identified by pid file *and* command line, so a recycled pid that now
belongs to something else is never signalled.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from skillcoach_devstack.errors import StackError

__all__ = [
    "ApiReplica",
    "bindable",
    "ensure_port_free",
    "free_port",
    "free_port_block",
    "http_status",
    "known_replicas",
    "log_tail",
    "owned_pid",
    "pid_alive",
    "port_open",
    "process_cmdline",
    "read_pidfile",
    "run_bounded",
    "stop_owned",
    "terminate",
    "wait_healthy",
    "wait_until",
]


def run_bounded(
    cmd: Sequence[str],
    *,
    timeout: float,
    what: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    ok_codes: Sequence[int] = (0,),
    log: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion within `timeout`; StackError (with the output's tail and,
    if given, the tail of `log`) when it overruns or exits with a code not in ok_codes."""
    what = what or " ".join(cmd)
    try:
        result = subprocess.run(
            list(cmd),
            env=None if env is None else dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise StackError(f"{what} did not finish within {timeout:g}s") from None
    if result.returncode not in ok_codes:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        extra = f"\nlog {log}:\n{log_tail(log)}" if log is not None else ""
        raise StackError(f"{what} failed (exit {result.returncode}):\n{tail}{extra}")
    return result


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll predicate until it is true or timeout seconds have passed; returns the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def read_pidfile(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (FileNotFoundError, PermissionError):
        return None
    return int(text) if text.isdigit() else None


def process_cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def pid_alive(pid: int) -> bool:
    # Reap it first if it is our own child: a zombie still answers kill(pid, 0).
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by another user (PgBouncer runs as postgres)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the parenthesised command name, which may contain spaces.
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def terminate(pid: int, *, timeout: float = 10.0) -> None:
    """SIGTERM, wait up to timeout, then SIGKILL and wait a little more."""
    for sig, grace in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if wait_until(lambda: not pid_alive(pid), grace):
            return
    raise StackError(f"process {pid} survived SIGKILL")


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the caller must still cope with losing a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports nothing listens on right now. Each is held until all are
    chosen: consecutive `free_port` calls may return the same port, since the kernel may hand
    out a port again as soon as it is released."""
    with contextlib.ExitStack() as held:
        ports: list[int] = []
        for _ in range(count):
            s = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind((host, 0))
            ports.append(s.getsockname()[1])
        return ports


# -- daemons with pid files: what redis, pgbouncer, haproxy, the exporter and the replicas share


def owned_pid(pidfile: Path, marker: str) -> int | None:
    """The pid in pidfile if that process is alive and its command line contains marker: a
    recycled pid (another program now) is never taken for ours, nor signalled."""
    pid = read_pidfile(pidfile)
    if pid is None or not pid_alive(pid) or marker not in process_cmdline(pid):
        return None
    return pid


def stop_owned(pidfile: Path, marker: str, *, timeout: float, forget: Sequence[Path] = ()) -> bool:
    """SIGTERM (then SIGKILL after timeout) the process of pidfile if it is ours; remove the
    pid file and the `forget` files either way. True if it ran."""
    pid = owned_pid(pidfile, marker)
    if pid is not None:
        terminate(pid, timeout=timeout)
    for path in (pidfile, *forget):
        path.unlink(missing_ok=True)
    return pid is not None


def ensure_port_free(host: str, port: int, *, who: str, hint: str = "") -> None:
    """Raise before starting `who` if something else already listens on port."""
    if port_open(host, port):
        raise StackError(
            f"{who}: port {port} is already in use by another process"
            + (f" ({hint})" if hint else "")
        )


def wait_healthy(
    healthy: Callable[[], bool],
    timeout: float,
    *,
    what: str,
    logfile: Path,
    interval: float = 0.1,
) -> None:
    """Wait until healthy(); else raise naming `what` with the tail of its log."""
    if not wait_until(healthy, timeout, interval=interval):
        raise StackError(f"{what} within {timeout:g}s; log {logfile}:\n{log_tail(logfile)}")


def bindable(port: int, host: str = "127.0.0.1") -> bool:
    """Whether port can be bound on host right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_port_block(
    size: int,
    *,
    low: int,
    high: int,
    offsets: Sequence[int] = (0,),
    attempts: int = 200,
) -> int:
    """A base port B in [low, high) with B+i+o bindable for every i < size and offset o.

    For services that need consecutive ports (replicas after HAProxy's, a Redis Cluster and
    its bus ports at +10000). Keep the range below the kernel's ephemeral range (32768..) so
    no outgoing connection can be holding one of them; a race with another process stays
    possible, so callers retry on a failed start."""
    for _ in range(attempts):
        base = random.randrange(low, high)
        if all(bindable(base + i + o) for o in offsets for i in range(size)):
            return base
    raise RuntimeError(
        f"no free block of {size} ports (offsets {list(offsets)}) in [{low}, {high})"
    )


def http_status(
    url: str, *, headers: Mapping[str, str] | None = None, timeout: float = 2.0
) -> int | None:
    """The HTTP status of a GET, or None when nothing answered within timeout."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True, slots=True)
class ApiReplica:
    """One `skillcoach serve` process on its own port, detached, with pid file and log.

    metrics_port: where it serves /metrics (recorded in api-<port>.metrics beside its pid file
    when it starts; None for a replica started without one)."""

    port: int
    state_dir: Path
    host: str = "127.0.0.1"
    metrics_port: int | None = None

    @property
    def pidfile(self) -> Path:
        return self.state_dir / f"api-{self.port}.pid"

    @property
    def logfile(self) -> Path:
        return self.state_dir / "logs" / f"api-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def metrics_port_file(self) -> Path:
        return self.state_dir / f"api-{self.port}.metrics"

    @property
    def metrics_url(self) -> str | None:
        """Its /metrics, or None when it has no metrics port of its own."""
        if self.metrics_port is None:
            return None
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def name(self) -> str:
        """How HAProxy, Prometheus (the `pod` label) and the logs call it."""
        return f"api-{self.port}"

    def pid(self) -> int | None:
        return owned_pid(self.pidfile, "skillcoach")

    @property
    def fingerprint_file(self) -> Path:
        return self.state_dir / f"api-{self.port}.config"

    @staticmethod
    def fingerprint(settings: Mapping[str, str]) -> str:
        """A digest of the settings a replica was started with (passwords included, so it is
        a hash, not the values)."""
        text = "\n".join(f"{k}={v}" for k, v in sorted(settings.items()))
        return hashlib.sha256(text.encode()).hexdigest()

    def started_with(self, settings: Mapping[str, str]) -> bool:
        try:
            return self.fingerprint_file.read_text().strip() == self.fingerprint(settings)
        except FileNotFoundError:
            return False

    def ready(self, timeout: float = 2.0) -> bool:
        return http_status(f"{self.url}/readyz", timeout=timeout) == 200

    def start(
        self, env: Mapping[str, str], *, cwd: Path, settings: Mapping[str, str] | None = None
    ) -> int:
        """Start `skillcoach serve` with env; settings (the stack-chosen part of env) are
        fingerprinted so a later `up` can tell whether this replica is still configured right."""
        ensure_port_free(
            self.host, self.port, who="api", hint="set SKILLCOACH_STACK_API_PORT to move the stack"
        )
        if self.metrics_port is not None:
            ensure_port_free(
                self.host,
                self.metrics_port,
                who=f"api on port {self.port} (its metrics port)",
                hint="set SKILLCOACH_STACK_METRICS_PORT_OFFSET or SKILLCOACH_STACK_API_PORT",
            )
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        with self.logfile.open("ab") as log:
            # A new session: the replica outlives this command and ignores its terminal's ^C.
            proc = subprocess.Popen(
                [sys.executable, "-m", "skillcoach.cli", "serve"],
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pidfile.write_text(f"{proc.pid}\n")
        self.fingerprint_file.write_text(self.fingerprint(settings or {}) + "\n")
        if self.metrics_port is None:
            self.metrics_port_file.unlink(missing_ok=True)
        else:
            self.metrics_port_file.write_text(f"{self.metrics_port}\n")
        return proc.pid

    def wait_ready(self, timeout: float) -> None:
        def done() -> bool:
            pid = read_pidfile(self.pidfile)
            if pid is None or not pid_alive(pid):
                raise StackError(
                    f"api on port {self.port} exited during start-up; log {self.logfile}:\n"
                    + log_tail(self.logfile)
                )
            return self.ready(timeout=1.0)

        if not wait_until(done, timeout, interval=0.25):
            raise StackError(
                f"api on port {self.port} not ready within {timeout:g}s; log {self.logfile}:\n"
                + log_tail(self.logfile)
            )

    def stop(self, timeout: float = 15.0) -> bool:
        """Stop it if it runs; True if something was stopped."""
        return stop_owned(
            self.pidfile,
            "skillcoach",
            timeout=timeout,
            forget=[self.fingerprint_file, self.metrics_port_file],
        )


def known_replicas(state_dir: Path) -> list[ApiReplica]:
    """Every replica that has a pid file, running or not, by port, with the metrics port it
    was started with."""
    replicas = []
    for path in sorted(state_dir.glob("api-*.pid")):
        port = path.stem.removeprefix("api-")
        if port.isdigit():
            metrics = read_pidfile(path.with_suffix(".metrics"))
            replicas.append(ApiReplica(port=int(port), state_dir=state_dir, metrics_port=metrics))
    return replicas
