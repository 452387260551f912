"""Metrics of the database path: event counters updated by `Database`, and the pool state
read at scrape time. Declared here, next to the code that updates them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["DbMetrics", "PoolCollector", "PoolStats"]

WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5)


@dataclass(frozen=True, slots=True)
class PoolStats:
    size: int
    checked_out: int
    idle: int
    overflow: int
    capacity: int
    waiters: int
    long_held: int
    generation: int
    retiring_pools: int
    # PgBouncer's client budget the pool file was sized against (0: unknown).
    client_budget: int = 0


class DbMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.registry = registry
        self.checkout_wait = Histogram(
            "skillcoach_db_checkout_wait_seconds",
            "Time from asking for a DB connection to holding one (slot wait + pool checkout)",
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.checkout_timeouts = Counter(
            "skillcoach_db_checkout_timeouts_total",
            "DB work refused because no connection was free before the deadline",
            registry=registry,
        )
        self.connection_errors = Counter(
            "skillcoach_db_connection_errors_total",
            "Failures to reach the database (PgBouncer/PostgreSQL down or restarting)",
            registry=registry,
        )
        self.query_timeouts = Counter(
            "skillcoach_db_query_timeouts_total",
            "Transactions cancelled by statement_timeout",
            registry=registry,
        )
        self.retries = Counter(
            "skillcoach_db_retries_total",
            "Idempotent reads retried after a transient connection error",
            registry=registry,
        )
        self.long_checkouts = Counter(
            "skillcoach_db_long_checkouts_total",
            "Connections held longer than long_checkout_seconds, by route",
            ["route"],
            registry=registry,
        )
        # How full the shared evidence reads are: 1 when requests come one at a time.
        self.shared_read_learners = Histogram(
            "skillcoach_db_shared_read_learners",
            "Learners read by one shared evidence statement (the uncached weaknesses one event"
            " loop turn asked for)",
            buckets=(1, 2, 4, 8, 16, 32),
            registry=registry,
        )
        self.resizes = Counter(
            "skillcoach_db_pool_resizes_total",
            "Live pool replacements applied from the pool file",
            registry=registry,
        )


class PoolCollector(Collector):
    """Pool state read when Prometheus scrapes: nothing to keep in sync on the hot path."""

    def __init__(self, stats: Callable[[], PoolStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        for name, value, doc in (
            ("size", s.size, "Connections the pool keeps open (pool_size)"),
            ("checked_out", s.checked_out, "Connections in use by requests"),
            ("idle", s.idle, "Connections idle in the pool"),
            ("overflow", s.overflow, "Connections open beyond pool_size"),
            (
                "capacity",
                s.capacity,
                "This replica's pool maximum, pool_size + max_overflow (sum it over replicas"
                " to compare with skillcoach_db_pool_client_budget)",
            ),
            ("waiters", s.waiters, "Requests waiting for a DB connection"),
            ("long_held", s.long_held, "Connections held longer than long_checkout_seconds"),
            ("generation", s.generation, "Generation of the applied pool file (0: settings)"),
            ("retiring", s.retiring_pools, "Replaced pools still returning connections"),
            (
                "client_budget",
                s.client_budget,
                "PgBouncer's client budget the applied pool file was sized against (0: unknown)",
            ),
        ):
            yield GaugeMetricFamily(f"skillcoach_db_pool_{name}", doc, value=value)
