"""The connection budget, split across replicas: one pure function for the operator, the Helm
chart's defaults and the local stack (docs/architecture.md, "The pool-sizing contract").

Client side: PgBouncer accepts `max_client_conn` clients; `client_reserve` of them are kept for
admin, migrations and exporters. During a rolling update `surge` extra pods hold connections
too, so each pod gets floor(budget / (replicas + surge)), clamped to [min, max], all of it as
pool_size: behind PgBouncer, max_overflow connections would be closed and reopened (a SCRAM
handshake each) whenever load hovers above pool_size, which measurably costs throughput.
Server side: PostgreSQL allows `max_connections`; `server_reserve` stay free for superuser and
maintenance; the rest is divided among the PgBouncer instances, each keeping room for its
reserve pool, as default_pool_size. The app uses one database/user pair, so that pair's pool
is PgBouncer's whole server side.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Budget", "PoolPlan", "plan_pools"]

# Share of a pod's connections kept open (the rest is overflow); see the docstring.
STEADY_SHARE = 1.0


@dataclass(frozen=True, slots=True)
class Budget:
    max_client_conn: int = 1000
    client_reserve: int = 50
    max_connections: int = 100
    server_reserve: int = 10
    pgbouncer_replicas: int = 1
    # PgBouncer's reserve_pool_size comes on top of default_pool_size when clients wait.
    pgbouncer_reserve_pool: int = 0
    min_per_pod: int = 4
    # Each connection is a worker thread of one Python process: about 8 per core of the pod.
    max_per_pod: int = 16
    pool_timeout: float = 2.0
    pool_recycle: int = 3600

    def __post_init__(self) -> None:
        if self.max_client_conn <= self.client_reserve:
            raise ValueError("max_client_conn must exceed client_reserve")
        if self.max_connections <= self.server_reserve:
            raise ValueError("max_connections must exceed server_reserve")
        if self.pgbouncer_reserve_pool < 0:
            raise ValueError("pgbouncer_reserve_pool must not be negative")
        if self.pgbouncer_replicas < 1:
            raise ValueError("pgbouncer_replicas must be at least 1")
        if not 1 <= self.min_per_pod <= self.max_per_pod:
            raise ValueError("min_per_pod and max_per_pod must satisfy 1 <= min <= max")


@dataclass(frozen=True, slots=True)
class PoolPlan:
    pool_size: int
    max_overflow: int
    pool_timeout: float
    pool_recycle: int
    pgbouncer_default_pool_size: int
    # True when the clamp to min_per_pod promises more client connections than the budget has:
    # the replicas then queue at PgBouncer (query_wait_timeout) instead of being refused.
    oversubscribed: bool

    @property
    def per_pod(self) -> int:
        return self.pool_size + self.max_overflow


def plan_pools(budget: Budget, *, replicas: int, surge: int = 1) -> PoolPlan:
    if replicas < 1:
        raise ValueError("replicas must be at least 1")
    if surge < 0:
        raise ValueError("surge must not be negative")
    client_budget = budget.max_client_conn - budget.client_reserve
    raw = client_budget // (replicas + surge)
    per_pod = min(budget.max_per_pod, max(budget.min_per_pod, raw))
    pool_size = max(1, round(per_pod * STEADY_SHARE))
    server_budget = budget.max_connections - budget.server_reserve
    return PoolPlan(
        pool_size=pool_size,
        max_overflow=per_pod - pool_size,
        pool_timeout=budget.pool_timeout,
        pool_recycle=budget.pool_recycle,
        pgbouncer_default_pool_size=max(
            1, server_budget // budget.pgbouncer_replicas - budget.pgbouncer_reserve_pool
        ),
        oversubscribed=per_pod * (replicas + surge) > client_budget,
    )
