"""Apply a changed pgbouncer.ini without dropping clients (`skillcoach pgbouncer-reloader`).

A sidecar next to PgBouncer on Kubernetes (deploy/pgbouncer). The config is a ConfigMap
mounted as a directory: some time after the ConfigMap changes, the kubelet swaps the mounted
file atomically (a symlink flip to a new data directory). Every `interval` seconds this
reads the file through its symlinks and hashes the content; when the hash differs from the
last one applied it sends RELOAD to PgBouncer's admin console, which re-reads the config and
keeps every client and server connection. It also reloads once at start: the file may have
changed while it was not running. While PgBouncer does not answer it retries with
exponential backoff; a file missing or unreadable in the middle of a swap is read again on
the next pass. SIGTERM or SIGINT ends the loop at once, between two passes.

With `heartbeat`, every pass touches that file (PgBouncer up or not), so a liveness probe
(`--check-heartbeat`) can tell a stuck loop from a slow PgBouncer.
"""

from __future__ import annotations

import hashlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg2

from skillcoach.pgbouncer.admin import admin_query

__all__ = [
    "Backoff",
    "Reloader",
    "content_digest",
    "heartbeat_age",
    "reload_pgbouncer",
    "serve",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before retry n (1-based): initial * 2**(n-1), capped at maximum."""

    initial: float = 1.0
    maximum: float = 30.0

    def delay(self, failures: int) -> float:
        if failures < 1:
            return 0.0
        # The exponent is capped too: past the cap the value no longer matters.
        return min(self.maximum, self.initial * float(2 ** min(failures - 1, 32)))


def content_digest(path: Path) -> str | None:
    """sha256 of the file's content, following symlinks; None if it cannot be read now."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def reload_pgbouncer(admin_url: str, *, timeout: int = 3) -> None:
    """RELOAD through the admin console: PgBouncer re-reads its config, clients stay."""
    admin_query(admin_url, "RELOAD", timeout=timeout)


def heartbeat_age(path: Path, *, now: float | None = None) -> float | None:
    """Seconds since the heartbeat file was touched; None if there is none."""
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return None
    return (time.time() if now is None else now) - mtime


class Reloader:
    """One config file, one PgBouncer: `step` is one pass, `run` the loop."""

    def __init__(
        self,
        config: Path,
        admin_url: str,
        *,
        interval: float = 5.0,
        backoff: Backoff | None = None,
        heartbeat: Path | None = None,
        timeout: int = 3,
        reload: Callable[[], None] | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.config = config
        self.interval = interval
        self.backoff = backoff or Backoff(initial=min(1.0, interval), maximum=max(30.0, interval))
        self.heartbeat = heartbeat
        self._reload = reload or (lambda: reload_pgbouncer(admin_url, timeout=timeout))
        # The digest PgBouncer last accepted; None until the first RELOAD succeeds.
        self.applied: str | None = None
        self.reloads = 0
        self.failures = 0
        self._missing_logged = False

    def step(self) -> float:
        """Look at the file once, RELOAD if it changed; the seconds to wait before the next."""
        self._beat()
        digest = content_digest(self.config)
        if digest is None:
            if not self._missing_logged:
                log.warning("cannot read %s; looking again every %gs", self.config, self.interval)
                self._missing_logged = True
            return self.interval
        self._missing_logged = False
        if digest == self.applied:
            return self.interval
        try:
            self._reload()
        except psycopg2.Error as exc:
            self.failures += 1
            delay = self.backoff.delay(self.failures)
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning(
                "RELOAD for %s (sha256 %s) failed (attempt %d): %s; retrying in %gs",
                self.config, digest, self.failures, message, delay,
            )  # fmt: skip
            return delay
        first = self.applied is None
        self.applied = digest
        self.reloads += 1
        self.failures = 0
        log.info(
            "PgBouncer reloaded %s (sha256 %s)%s",
            self.config, digest, " at start" if first else ": the file changed",
        )  # fmt: skip
        return self.interval

    def run(self, stop: threading.Event, *, max_passes: int | None = None) -> int:
        """Pass after pass until `stop` is set (or max_passes); the number of passes."""
        passes = 0
        while not stop.is_set() and (max_passes is None or passes < max_passes):
            delay = self.step()
            passes += 1
            stop.wait(delay)
        return passes

    def _beat(self) -> None:
        if self.heartbeat is None:
            return
        try:
            self.heartbeat.touch()
        except OSError as exc:
            log.warning("cannot touch the heartbeat %s: %s", self.heartbeat, exc)


def serve(
    config: Path, admin_url: str, *, interval: float = 5.0, heartbeat: Path | None = None
) -> None:
    """Run the reloader until SIGTERM or SIGINT."""
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    reloader = Reloader(config, admin_url, interval=interval, heartbeat=heartbeat)
    log.info("watching %s every %gs", config, interval)
    # A daemon: it runs until it is told to stop (the pod's SIGTERM).
    reloader.run(stop)
    log.info("stopped after %d reloads", reloader.reloads)
