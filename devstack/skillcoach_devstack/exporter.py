"""The stack's PgBouncer exporter: `skillcoach pgbouncer-exporter` as a background process.

The admin URL (with its password) is passed in the environment, never on the command line
where `ps` would show it; it is fingerprinted so a changed password restarts the exporter.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from skillcoach_devstack.errors import StackError
from skillcoach_devstack.processes import (
    ensure_port_free,
    log_tail,
    owned_pid,
    stop_owned,
    wait_until,
)

__all__ = ["ExporterProcess"]


@dataclass(frozen=True, slots=True)
class ExporterProcess:
    port: int
    state_dir: Path
    host: str = "127.0.0.1"

    @property
    def pidfile(self) -> Path:
        return self.state_dir / "pgbouncer-exporter.pid"

    @property
    def fingerprint_file(self) -> Path:
        return self.state_dir / "pgbouncer-exporter.config"

    @property
    def logfile(self) -> Path:
        return self.state_dir / "logs" / "pgbouncer-exporter.log"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def pid(self) -> int | None:
        return owned_pid(self.pidfile, "pgbouncer-exporter")

    def _fingerprint(self, admin_url: str) -> str:
        return hashlib.sha256(f"{self.host}:{self.port}\n{admin_url}".encode()).hexdigest()

    def scrape(self, *, timeout: float = 3.0) -> str | None:
        """The metrics text, or None if it does not answer."""
        try:
            with urllib.request.urlopen(self.url, timeout=timeout) as response:
                body: bytes = response.read()
                return body.decode(errors="replace")
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def pgbouncer_up(self) -> bool | None:
        """What the exporter reports for skillcoach_pgbouncer_up (None: it does not answer)."""
        text = self.scrape()
        if text is None:
            return None
        return "skillcoach_pgbouncer_up 1.0" in text.splitlines()

    def ensure(
        self, admin_url: str, *, env: Mapping[str, str], cwd: Path, timeout: float = 15.0
    ) -> str:
        """Reuse a running exporter with this admin URL, else (re)start it; wait until it
        answers. Returns what it did."""
        fingerprint = self._fingerprint(admin_url)
        restarted = ""
        if self.pid() is not None:
            try:
                same = self.fingerprint_file.read_text().strip() == fingerprint
            except FileNotFoundError:
                same = False
            if same and wait_until(lambda: self.scrape() is not None, timeout):
                return f"reused on {self.url}"
            self.stop()
            restarted = " (restarted: its settings changed)"
        ensure_port_free(
            self.host,
            self.port,
            who="pgbouncer-exporter",
            hint="set SKILLCOACH_STACK_EXPORTER_PORT to move it",
        )
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "skillcoach.cli", "pgbouncer-exporter",
            "--host", self.host, "--port", str(self.port),
        ]  # fmt: skip
        with self.logfile.open("ab") as log:
            proc = subprocess.Popen(
                cmd,
                env={**env, "SKILLCOACH_PGBOUNCER_ADMIN_URL": admin_url},
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pidfile.write_text(f"{proc.pid}\n")
        self.fingerprint_file.write_text(fingerprint + "\n")

        def answering() -> bool:
            if proc.poll() is not None:
                raise StackError(
                    f"pgbouncer-exporter exited with code {proc.returncode};"
                    f" log {self.logfile}:\n{log_tail(self.logfile)}"
                )
            return self.scrape(timeout=1.0) is not None

        if not wait_until(answering, timeout, interval=0.1):
            self.stop()
            raise StackError(
                f"pgbouncer-exporter did not answer on {self.url} within {timeout:g}s;"
                f" log {self.logfile}:\n{log_tail(self.logfile)}"
            )
        return f"started on {self.url} (pid {proc.pid}){restarted}"

    def stop(self, *, timeout: float = 10.0) -> bool:
        return stop_owned(
            self.pidfile, "pgbouncer-exporter", timeout=timeout, forget=[self.fingerprint_file]
        )
