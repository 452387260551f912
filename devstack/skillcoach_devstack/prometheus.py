"""The stack's Prometheus (Debian's `prometheus`), on loopback, with skillcoach's alert rules.

It scrapes every replica's metrics port, HAProxy's built-in exporter, the PgBouncer exporter
and itself, and loads deploy/helm/skillcoach/files/alerts/skillcoach.rules.yaml (the one
source of the alerts; templates/skillcoach.rules.yaml links to it) as its rule file.

Replicas come and go with `stack scale`: they are a file_sd target file
(.stack/prometheus/replicas.json) that Prometheus re-reads by itself when it changes (its
discovery passes changes on every few seconds; `apply` waits until the replicas are targets).
The static part (prometheus.yml) only changes with ports or the interval, and the rules with
the rules file: then a running Prometheus gets POST /-/reload. Every target is labelled the
way the
ServiceMonitor labels pods on Kubernetes (namespace, pod), so the alerts and the dashboards read
the same labels here and there.

Both files are JSON, which Prometheus reads as YAML: no YAML library needed.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skillcoach_devstack.errors import StackError
from skillcoach_devstack.packages import require_binary
from skillcoach_devstack.processes import (
    ensure_port_free,
    log_tail,
    owned_pid,
    stop_owned,
    wait_until,
)

__all__ = [
    "LOCAL_NAMESPACE",
    "PrometheusConfig",
    "PrometheusServer",
    "Target",
    "default_rules_path",
    "query",
]

# The `namespace` label of every local target: the alerts group by (namespace, pod).
LOCAL_NAMESPACE = "local"
RETENTION = "2d"


def default_rules_path() -> Path:
    """The alert rules, shipped with the package (a link to the chart's file in a checkout)."""
    return Path(__file__).resolve().parent / "templates" / "skillcoach.rules.yaml"


@dataclass(frozen=True, slots=True)
class Target:
    """One scrape target: host:port and the pod name it stands for."""

    pod: str
    port: int
    host: str = "127.0.0.1"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class PrometheusConfig:
    port: int
    scrape_interval: int
    replicas: tuple[Target, ...]
    haproxy: Target | None
    exporter: Target | None
    rules_file: Path
    listen_addr: str = "127.0.0.1"


def _duration(seconds: int) -> str:
    return f"{seconds}s"


def _static(job: str, target: Target, *, metrics_path: str = "/metrics") -> dict[str, Any]:
    return {
        "job_name": job,
        "metrics_path": metrics_path,
        "static_configs": [
            {
                "targets": [target.address],
                "labels": {"namespace": LOCAL_NAMESPACE, "pod": target.pod},
            }
        ],
    }


def render_config(cfg: PrometheusConfig, targets_file: Path) -> str:
    """prometheus.yml (as JSON) for cfg; the replicas come from targets_file."""
    interval = _duration(cfg.scrape_interval)
    jobs: list[dict[str, Any]] = [
        {
            "job_name": "skillcoach-api",
            "metrics_path": "/metrics",
            "file_sd_configs": [{"files": [str(targets_file)]}],
        }
    ]
    if cfg.exporter is not None:
        jobs.append(_static("pgbouncer-exporter", cfg.exporter))
    if cfg.haproxy is not None:
        jobs.append(_static("haproxy", cfg.haproxy))
    jobs.append(_static("prometheus", Target(pod="prometheus", port=cfg.port)))
    document = {
        "global": {
            "scrape_interval": interval,
            # A scrape may not outlast its interval (Prometheus refuses the config).
            "scrape_timeout": _duration(min(cfg.scrape_interval, 10)),
            "evaluation_interval": interval,
        },
        "rule_files": [str(cfg.rules_file)],
        "scrape_configs": jobs,
    }
    return json.dumps(document, indent=2) + "\n"


def render_targets(replicas: Sequence[Target]) -> str:
    groups = [
        {"targets": [t.address], "labels": {"namespace": LOCAL_NAMESPACE, "pod": t.pod}}
        for t in replicas
    ]
    return json.dumps(groups, indent=2) + "\n"


def _write_if_changed(path: Path, text: str) -> bool:
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    # Atomic: Prometheus watches the targets file and must never read half of it.
    tmp.replace(path)
    return True


def _http(url: str, *, method: str = "GET", timeout: float = 3.0) -> tuple[int, bytes] | None:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError, ValueError):
        return None


def query(base_url: str, expr: str, *, timeout: float = 5.0) -> list[dict[str, Any]]:
    """An instant query through the HTTP API; the result vector (empty: no data). Raises
    StackError when Prometheus refuses the expression or does not answer."""
    url = f"{base_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    answer = _http(url, timeout=timeout)
    if answer is None:
        raise StackError(f"prometheus at {base_url} did not answer")
    status, body = answer
    try:
        doc = json.loads(body)
    except ValueError:
        raise StackError(f"prometheus answered {status} with no JSON for {expr!r}") from None
    if status != 200 or doc.get("status") != "success":
        raise StackError(f"prometheus refused {expr!r}: {doc.get('error', status)}")
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


@dataclass(frozen=True, slots=True)
class PrometheusServer:
    config: PrometheusConfig
    runtime_dir: Path
    logfile: Path

    @property
    def config_file(self) -> Path:
        return self.runtime_dir / "prometheus.yml"

    @property
    def targets_file(self) -> Path:
        return self.runtime_dir / "replicas.json"

    @property
    def data_dir(self) -> Path:
        return self.runtime_dir / "data"

    @property
    def pidfile(self) -> Path:
        return self.runtime_dir / "prometheus.pid"

    @property
    def fingerprint_file(self) -> Path:
        """What the running process loaded: its config and rules (a change means reload)."""
        return self.runtime_dir / "loaded"

    @property
    def url(self) -> str:
        return f"http://{self.config.listen_addr}:{self.config.port}"

    def pid(self) -> int | None:
        return owned_pid(self.pidfile, "prometheus")

    def is_running(self) -> bool:
        return self.pid() is not None

    def ready(self, *, timeout: float = 2.0) -> bool:
        answer = _http(f"{self.url}/-/ready", timeout=timeout)
        return answer is not None and answer[0] == 200

    def _fingerprint(self) -> str:
        digest = hashlib.sha256(render_config(self.config, self.targets_file).encode())
        try:
            digest.update(self.config.rules_file.read_bytes())
        except OSError as exc:
            raise StackError(
                f"prometheus: cannot read the rules {self.config.rules_file}: {exc}"
            ) from None
        return digest.hexdigest()

    def _write_files(self) -> None:
        _write_if_changed(self.targets_file, render_targets(self.config.replicas))
        _write_if_changed(self.config_file, render_config(self.config, self.targets_file))

    def replica_targets_active(self) -> bool:
        """Whether every replica of the config is an active target (and no other replica)."""
        health = self.targets_health(timeout=1.0)
        if health is None:
            return False
        wanted = {f"http://{t.address}/metrics" for t in self.config.replicas}
        others = {
            f"http://{t.address}/metrics" for t in (self.config.haproxy, self.config.exporter) if t
        }
        seen = {url for url in health if url != f"{self.url}/metrics" and url not in others}
        return seen == wanted

    def _wait_targets(self, timeout: float) -> str:
        if wait_until(self.replica_targets_active, timeout, interval=0.25):
            return f"{len(self.config.replicas)} replica target(s)"
        return (
            f"{len(self.config.replicas)} replica target(s), not all active after"
            f" {timeout:g}s: see {self.url}/targets"
        )

    def _command(self) -> list[str]:
        return [
            require_binary("prometheus", package="prometheus"),
            f"--config.file={self.config_file}",
            f"--web.listen-address={self.config.listen_addr}:{self.config.port}",
            # POST /-/reload: a changed config or rules file without a restart.
            "--web.enable-lifecycle",
            f"--storage.tsdb.path={self.data_dir}",
            f"--storage.tsdb.retention.time={RETENTION}",
        ]

    def apply(self, *, timeout: float = 30.0) -> str:
        """Start Prometheus, or bring a running one to this config (targets are picked up from
        their file; a changed config or rules file is reloaded). Returns what it did."""
        self._write_files()
        fingerprint = self._fingerprint()
        pid = self.pid()
        if pid is None:
            return self._start(fingerprint, timeout=timeout)
        try:
            loaded = self.fingerprint_file.read_text().strip()
        except FileNotFoundError:
            loaded = ""
        if loaded == fingerprint and wait_until(self.ready, timeout):
            return f"reused on {self.url} ({self._wait_targets(timeout)})"
        answer = _http(f"{self.url}/-/reload", method="POST", timeout=timeout)
        if answer is None or answer[0] != 200:
            detail = "no answer" if answer is None else answer[1].decode(errors="replace")
            raise StackError(
                f"prometheus: reload failed ({detail.strip()}); log {self.logfile}:\n"
                + log_tail(self.logfile)
            )
        self.fingerprint_file.write_text(fingerprint + "\n")
        return f"reloaded on {self.url} (new configuration or rules; {self._wait_targets(timeout)})"

    def _start(self, fingerprint: str, *, timeout: float) -> str:
        command = self._command()
        ensure_port_free(
            self.config.listen_addr,
            self.config.port,
            who="prometheus",
            hint="set SKILLCOACH_STACK_PROMETHEUS_PORT to move it",
        )
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
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
        t0 = time.monotonic()

        def up() -> bool:
            if proc.poll() is not None:
                raise StackError(
                    f"prometheus exited with code {proc.returncode}; log {self.logfile}:\n"
                    + log_tail(self.logfile)
                )
            return self.ready(timeout=1.0)

        if not wait_until(up, timeout, interval=0.2):
            self.stop()
            raise StackError(
                f"prometheus not ready on {self.url} within {timeout:g}s; log {self.logfile}:\n"
                + log_tail(self.logfile)
            )
        ready_s = time.monotonic() - t0
        return (
            f"started on {self.url} (pid {proc.pid}, ready in {ready_s:.1f}s; scraping every"
            f" {self.config.scrape_interval}s: {self._wait_targets(timeout)}, haproxy,"
            f" pgbouncer exporter; rules {self.config.rules_file.name})"
        )

    def targets_health(self, *, timeout: float = 3.0) -> dict[str, str] | None:
        """scrape URL -> health ("up", "down", "unknown") of every active target; None when
        Prometheus does not answer."""
        answer = _http(f"{self.url}/api/v1/targets?state=active", timeout=timeout)
        if answer is None or answer[0] != 200:
            return None
        try:
            active = json.loads(answer[1])["data"]["activeTargets"]
        except (ValueError, KeyError, TypeError):
            return None
        return {str(t["scrapeUrl"]): str(t["health"]) for t in active}

    def stop(self, *, timeout: float = 15.0) -> bool:
        return stop_owned(
            self.pidfile, "prometheus", timeout=timeout, forget=[self.fingerprint_file]
        )
