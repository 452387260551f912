"""ROOT/.stack/env: where scripts find the running stack (`. .stack/env` in a shell).

One `export NAME='value'` per line, values shell-quoted, so it is sourceable by sh and bash
and parsed back by `read_env` without a shell. Mode 0600: it holds the API key and passwords.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path

__all__ = ["read_env", "render_env", "stack_env", "write_env", "write_private"]

_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


def stack_env(
    *,
    api_url: str,
    api_key: str,
    database_url: str,
    direct_database_url: str,
    redis_url: str,
    pgbouncer_admin_url: str,
    replica_urls: list[str],
    replica_metrics_urls: list[str],
    pgbouncer_metrics_url: str,
    haproxy_stats_url: str,
    haproxy_metrics_url: str,
    prometheus_url: str | None = None,
    otlp_endpoint: str | None = None,
    standalone_redis_url: str | None = None,
) -> dict[str, str]:
    """The variables of a running stack; DATABASE_URL and REDIS_URL are the replicas' own.
    api_url is the load balancer's; replica_urls reach each replica directly, and
    replica_metrics_urls are their /metrics (on each replica's metrics port, in the same
    order). prometheus_url: the stack's Prometheus; otlp_endpoint: where the replicas send
    traces (their OTEL_EXPORTER_OTLP_ENDPOINT), when the receiver runs.
    standalone_redis_url: the stack's single redis-server, beside the cluster that REDIS_URL
    names, for comparing the two (e.g. SKILLCOACH_REDIS_URL=$SKILLCOACH_STANDALONE_REDIS_URL)."""
    if len(replica_metrics_urls) != len(replica_urls):
        raise ValueError("one metrics URL per replica")
    values = {
        "SKILLCOACH_URL": api_url,
        "SKILLCOACH_API_KEY": api_key,
        # /metrics is served on each replica's metrics port only, never through the load
        # balancer: this is the first replica's; SKILLCOACH_REPLICA_METRICS_URLS has each.
        "SKILLCOACH_METRICS_URL": replica_metrics_urls[0] if replica_metrics_urls else "",
        "SKILLCOACH_REPLICA_URLS": " ".join(replica_urls),
        "SKILLCOACH_REPLICA_METRICS_URLS": " ".join(replica_metrics_urls),
        "SKILLCOACH_PGBOUNCER_METRICS_URL": pgbouncer_metrics_url,
        "SKILLCOACH_HAPROXY_STATS_URL": haproxy_stats_url,
        "SKILLCOACH_HAPROXY_METRICS_URL": haproxy_metrics_url,
        "SKILLCOACH_DATABASE_URL": database_url,
        "SKILLCOACH_DIRECT_DATABASE_URL": direct_database_url,
        "SKILLCOACH_REDIS_URL": redis_url,
        "SKILLCOACH_PGBOUNCER_ADMIN_URL": pgbouncer_admin_url,
    }
    if prometheus_url is not None:
        values["SKILLCOACH_PROMETHEUS_URL"] = prometheus_url
    if otlp_endpoint is not None:
        values["SKILLCOACH_OTLP_ENDPOINT"] = otlp_endpoint
    if standalone_redis_url is not None:
        values["SKILLCOACH_STANDALONE_REDIS_URL"] = standalone_redis_url
    return values


def render_env(values: Mapping[str, str]) -> str:
    lines = ["# Written by `skillcoach stack up`; source it: . .stack/env"]
    for name, value in values.items():
        if not _NAME.fullmatch(name):
            raise ValueError(f"not a shell variable name: {name!r}")
        lines.append(f"export {name}={shlex.quote(value)}")
    return "\n".join(lines) + "\n"


def write_env(path: Path, values: Mapping[str, str]) -> None:
    """Write atomically (readers never see half a file), private to the owner."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(render_env(values))
    os.replace(tmp, path)


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it may echo a secret, such as the demo API
    key a `skillcoach apikey create` log shows); an existing file is made private too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    # O_CREAT's mode applies only to a new file: an older, world-readable one is fixed here.
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def read_env(path: Path) -> dict[str, str]:
    """Parse a file written by write_env; a missing file is an empty mapping."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    values: dict[str, str] = {}
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["export"]:
            words = words[1:]
        if len(words) != 1 or "=" not in words[0]:
            continue
        name, _, value = words[0].partition("=")
        if _NAME.fullmatch(name):
            values[name] = value
    return values
