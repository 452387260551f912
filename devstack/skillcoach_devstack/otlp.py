"""The stack's OTLP receiver (`make up OTLP=1`): traces without a cluster or a tracing backend.

The receiver is rotel's agent, the binary the PyPI package `rotel` ships (no download at run
time). It listens on loopback for OTLP over gRPC and HTTP and prints every span it receives, in
full, to its log (.stack/logs/otlp.log): the replicas export to it with the standard
OTEL_EXPORTER_OTLP_ENDPOINT (http/protobuf, the service's exporter), and `tail -f` shows the
traces. Nothing is forwarded anywhere (rotel's blackhole exporter).
"""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
from dataclasses import dataclass
from pathlib import Path

from skillcoach_devstack.errors import StackError
from skillcoach_devstack.processes import (
    ensure_port_free,
    log_tail,
    owned_pid,
    port_open,
    stop_owned,
    wait_until,
)

__all__ = ["OtlpReceiver", "rotel_binary"]

MARKER = "rotel-agent"


def rotel_binary() -> Path:
    """The agent inside the installed `rotel` package (found without importing it)."""
    spec = importlib.util.find_spec("rotel")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        binary = Path(location) / MARKER
        if binary.is_file():
            return binary
    raise StackError(
        "the OTLP receiver needs the Python package rotel: run `make up` (or make venv)"
    )


@dataclass(frozen=True, slots=True)
class OtlpReceiver:
    grpc_port: int
    http_port: int
    state_dir: Path
    host: str = "127.0.0.1"

    @property
    def pidfile(self) -> Path:
        return self.state_dir / "otlp.pid"

    @property
    def fingerprint_file(self) -> Path:
        return self.state_dir / "otlp.config"

    @property
    def logfile(self) -> Path:
        """Where the received spans are printed."""
        return self.state_dir / "logs" / "otlp.log"

    @property
    def endpoint(self) -> str:
        """OTEL_EXPORTER_OTLP_ENDPOINT for OTLP over HTTP (the SDK appends /v1/traces)."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_endpoint(self) -> str:
        return f"http://{self.host}:{self.grpc_port}"

    def pid(self) -> int | None:
        return owned_pid(self.pidfile, MARKER)

    def _fingerprint(self) -> str:
        text = f"{self.host}:{self.grpc_port}:{self.http_port}"
        return hashlib.sha256(text.encode()).hexdigest()

    def _listening(self) -> bool:
        return port_open(self.host, self.http_port, timeout=0.5) and port_open(
            self.host, self.grpc_port, timeout=0.5
        )

    def _command(self) -> list[str]:
        return [
            str(rotel_binary()),
            "start",
            "--otlp-grpc-endpoint", f"{self.host}:{self.grpc_port}",
            "--otlp-http-endpoint", f"{self.host}:{self.http_port}",
            # Print every span in full to stdout (the log) and forward nothing.
            "--exporter", "blackhole",
            "--debug-log", "traces",
            "--debug-log-verbosity", "detailed",
            # Metrics and logs are Prometheus' and the replicas' own log files' business.
            "--otlp-receiver-metrics-disabled",
            "--otlp-receiver-logs-disabled",
        ]  # fmt: skip

    def ensure(self, *, timeout: float = 15.0) -> str:
        """Reuse a running receiver on these ports, else (re)start it; wait until it listens."""
        fingerprint = self._fingerprint()
        restarted = ""
        if self.pid() is not None:
            try:
                same = self.fingerprint_file.read_text().strip() == fingerprint
            except FileNotFoundError:
                same = False
            if same and wait_until(self._listening, timeout):
                return f"reused on {self.endpoint} (spans printed to {self.logfile})"
            self.stop()
            restarted = " (restarted: its ports changed)"
        for port in (self.grpc_port, self.http_port):
            ensure_port_free(
                self.host,
                port,
                who="otlp receiver",
                hint="set SKILLCOACH_STACK_OTLP_GRPC_PORT / SKILLCOACH_STACK_OTLP_HTTP_PORT",
            )
        command = self._command()
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        with self.logfile.open("ab") as log:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pidfile.write_text(f"{proc.pid}\n")
        self.fingerprint_file.write_text(fingerprint + "\n")

        def listening() -> bool:
            if proc.poll() is not None:
                raise StackError(
                    f"the OTLP receiver exited with code {proc.returncode}; log {self.logfile}:\n"
                    + log_tail(self.logfile)
                )
            return self._listening()

        if not wait_until(listening, timeout, interval=0.1):
            self.stop()
            raise StackError(
                f"the OTLP receiver did not listen on {self.host}:{self.http_port} within"
                f" {timeout:g}s; log {self.logfile}:\n{log_tail(self.logfile)}"
            )
        return (
            f"started on {self.endpoint} (HTTP) and {self.grpc_endpoint} (gRPC), pid"
            f" {proc.pid}{restarted}: spans are printed to {self.logfile}"
        )

    def stop(self, *, timeout: float = 10.0) -> bool:
        return stop_owned(self.pidfile, MARKER, timeout=timeout, forget=[self.fingerprint_file])
