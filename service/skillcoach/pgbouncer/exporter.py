"""PgBouncer's side of the pool as Prometheus metrics (`skillcoach pgbouncer-exporter`).

A scrape-time collector: every scrape asks PgBouncer's admin console SHOW POOLS, SHOW STATS and
SHOW DATABASES, so nothing runs between scrapes and the numbers are never stale. Values are in
base units (PgBouncer reports times in microseconds; these are seconds). A scrape that cannot
reach the console yields `skillcoach_pgbouncer_up 0` and nothing else; it never raises.

    skillcoach_pgbouncer_client_waiting_connections{database,user}  SHOW POOLS cl_waiting
    skillcoach_pgbouncer_max_wait_seconds{database,user}            maxwait + maxwait_us / 1e6
    skillcoach_pgbouncer_transactions_total{database}               SHOW STATS total_xact_count
    ...

The API replicas do not collect this themselves: N replicas would report the same PgBouncer N
times, and a replica's /metrics must stay fast while PgBouncer is down.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from skillcoach.pgbouncer.admin import admin_query

__all__ = ["PgBouncerCollector", "new_registry", "serve"]

log = logging.getLogger(__name__)

PREFIX = "skillcoach_pgbouncer"
MICRO = 1e-6

# SHOW POOLS column -> (metric suffix, help); one sample per (database, user) pool.
POOL_GAUGES: tuple[tuple[str, str, str], ...] = (
    (
        "cl_active",
        "client_active_connections",
        "Client connections paired with a server connection or idle (SHOW POOLS cl_active)",
    ),
    (
        "cl_waiting",
        "client_waiting_connections",
        "Client connections that sent a query and wait for a server connection"
        " (SHOW POOLS cl_waiting)",
    ),
    (
        "sv_active",
        "server_active_connections",
        "Server connections linked to a client (SHOW POOLS sv_active)",
    ),
    (
        "sv_idle",
        "server_idle_connections",
        "Server connections unused and ready for a client (SHOW POOLS sv_idle)",
    ),
    (
        "sv_used",
        "server_used_connections",
        "Server connections idle longer than server_check_delay, to be checked before reuse"
        " (SHOW POOLS sv_used)",
    ),
    (
        "sv_tested",
        "server_tested_connections",
        "Server connections running server_reset_query or server_check_query"
        " (SHOW POOLS sv_tested)",
    ),
    (
        "sv_login",
        "server_login_connections",
        "Server connections logging in to PostgreSQL (SHOW POOLS sv_login)",
    ),
)

# SHOW STATS column -> (metric name without _total, scale to base unit, help); per database.
STATS_COUNTERS: tuple[tuple[str, str, float, str], ...] = (
    ("total_xact_count", "transactions", 1.0, "Transactions pooled (SHOW STATS total_xact_count)"),
    ("total_query_count", "queries", 1.0, "Queries pooled (SHOW STATS total_query_count)"),
    ("total_received", "received_bytes", 1.0, "Bytes received from clients (total_received)"),
    ("total_sent", "sent_bytes", 1.0, "Bytes sent to clients (SHOW STATS total_sent)"),
    (
        "total_xact_time",
        "transaction_time_seconds",
        MICRO,
        "Time spent in transactions, idle in transaction included (total_xact_time)",
    ),
    (
        "total_query_time",
        "query_time_seconds",
        MICRO,
        "Time spent running queries on server connections (total_query_time)",
    ),
    (
        "total_wait_time",
        "wait_time_seconds",
        MICRO,
        "Time clients spent waiting for a server connection (SHOW STATS total_wait_time)",
    ),
)

# SHOW STATS averages over the last stats_period -> (metric suffix, scale, help).
STATS_GAUGES: tuple[tuple[str, str, float, str], ...] = (
    (
        "avg_xact_count",
        "avg_transactions_per_second",
        1.0,
        "Transactions per second over the last stats_period (avg_xact_count)",
    ),
    (
        "avg_query_count",
        "avg_queries_per_second",
        1.0,
        "Queries per second over the last stats_period (avg_query_count)",
    ),
    (
        "avg_xact_time",
        "avg_transaction_time_seconds",
        MICRO,
        "Mean transaction duration over the last stats_period (avg_xact_time)",
    ),
    (
        "avg_query_time",
        "avg_query_time_seconds",
        MICRO,
        "Mean query duration over the last stats_period (avg_query_time)",
    ),
    (
        "avg_wait_time",
        "avg_wait_time_seconds",
        MICRO,
        "Mean time clients waited for a server connection over the last stats_period"
        " (avg_wait_time)",
    ),
)

# SHOW DATABASES column -> (metric suffix, help): the configured limits, for saturation ratios.
DATABASE_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("pool_size", "database_pool_size", "Server connections per user pool (default_pool_size)"),
    (
        "max_connections",
        "database_max_connections",
        "Server connections allowed for the database over all users (0: no limit)",
    ),
)


def _number(value: Any) -> float | None:
    """A console value as a float; None for a missing or non-numeric column."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _label(row: Mapping[str, Any], key: str) -> str:
    value = row.get(key)
    return "" if value is None else str(value)


class PgBouncerCollector(Collector):
    """Asks PgBouncer's admin console at scrape time; `skillcoach_pgbouncer_up` says whether
    it could."""

    def __init__(self, admin_url: str, *, timeout: int = 2) -> None:
        self._admin_url = admin_url
        self._timeout = timeout

    def describe(self) -> list[Metric]:
        # Nothing to declare up front: registering must not contact PgBouncer.
        return []

    def _query(self) -> tuple[list[dict[str, Any]], ...]:
        return tuple(
            admin_query(self._admin_url, sql, timeout=self._timeout)
            for sql in ("SHOW POOLS", "SHOW STATS", "SHOW DATABASES")
        )

    def collect(self) -> Iterator[Metric]:
        t0 = time.perf_counter()
        try:
            pools, stats, databases = self._query()
        except Exception as exc:  # a scrape must never raise: up=0 says what happened
            log.warning("pgbouncer exporter: admin console unreachable: %s", str(exc).strip())
            yield from self._scrape_metrics(up=False, seconds=time.perf_counter() - t0)
            return
        yield from self._pool_metrics(pools)
        yield from self._stats_metrics(stats)
        yield from self._database_metrics(databases)
        yield from self._scrape_metrics(up=True, seconds=time.perf_counter() - t0)

    @staticmethod
    def _scrape_metrics(*, up: bool, seconds: float) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            f"{PREFIX}_up",
            "1 if the last scrape reached PgBouncer's admin console, else 0",
            value=1.0 if up else 0.0,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_scrape_duration_seconds",
            "Time the last scrape of PgBouncer's admin console took",
            value=seconds,
        )

    @staticmethod
    def _pool_metrics(rows: Sequence[Mapping[str, Any]]) -> Iterator[Metric]:
        labels = ["database", "user"]
        for column, suffix, doc in POOL_GAUGES:
            family = GaugeMetricFamily(f"{PREFIX}_{suffix}", doc, labels=labels)
            for row in rows:
                value = _number(row.get(column))
                if value is not None:
                    family.add_metric([_label(row, "database"), _label(row, "user")], value)
            yield family
        wait = GaugeMetricFamily(
            f"{PREFIX}_max_wait_seconds",
            "How long the oldest waiting client has waited for a server connection"
            " (SHOW POOLS maxwait + maxwait_us)",
            labels=labels,
        )
        for row in rows:
            seconds = _number(row.get("maxwait"))
            if seconds is None:
                continue
            micros = _number(row.get("maxwait_us")) or 0.0
            wait.add_metric(
                [_label(row, "database"), _label(row, "user")], seconds + micros * MICRO
            )
        yield wait

    @staticmethod
    def _stats_metrics(rows: Sequence[Mapping[str, Any]]) -> Iterator[Metric]:
        for column, name, scale, doc in STATS_COUNTERS:
            counter = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=["database"])
            for row in rows:
                value = _number(row.get(column))
                if value is not None:
                    counter.add_metric([_label(row, "database")], value * scale)
            yield counter
        for column, suffix, scale, doc in STATS_GAUGES:
            gauge = GaugeMetricFamily(f"{PREFIX}_{suffix}", doc, labels=["database"])
            for row in rows:
                value = _number(row.get(column))
                if value is not None:
                    gauge.add_metric([_label(row, "database")], value * scale)
            yield gauge

    @staticmethod
    def _database_metrics(rows: Sequence[Mapping[str, Any]]) -> Iterator[Metric]:
        for column, suffix, doc in DATABASE_GAUGES:
            gauge = GaugeMetricFamily(f"{PREFIX}_{suffix}", doc, labels=["database"])
            for row in rows:
                value = _number(row.get(column))
                if value is not None:
                    gauge.add_metric([_label(row, "name")], value)
            yield gauge


def new_registry(admin_url: str, *, timeout: int = 2) -> CollectorRegistry:
    """A registry with only the PgBouncer collector (no process or GC metrics of the exporter)."""
    registry = CollectorRegistry()
    registry.register(PgBouncerCollector(admin_url, timeout=timeout))
    return registry


def serve(admin_url: str, *, port: int, host: str = "127.0.0.1") -> None:
    """Serve /metrics on host:port until SIGTERM or SIGINT."""
    server, thread = start_http_server(port, addr=host, registry=new_registry(admin_url))
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    bound_port = server.server_address[1]
    print(f"pgbouncer-exporter: serving http://{host}:{bound_port}/metrics", flush=True)
    # A server: it runs until it is told to stop (the stack stops it with SIGTERM).
    stop.wait()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
