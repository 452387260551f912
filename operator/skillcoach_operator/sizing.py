"""The connection budget split across pods: one pure function for the operator, the Helm chart's
defaults and the local stack (docs/architecture.md, "The pool-sizing contract"; docs/operator.md).

Client side: PgBouncer accepts `max_client_conn` clients for the app; `client_reserve` of them
are kept for migrations, admin tools and exporters. Every pod that may hold a pool is counted:
the larger of the desired and the current replica count (a scale-down is not over until the
surplus pods are gone), plus the rollout surge, plus the pods a scale-up may add before new
sizes reach the running pods. Each pod gets floor(budget / counted), clamped to [min, max], all
of it as pool_size: behind PgBouncer an overflow connection is closed and reopened (a SCRAM
handshake each) whenever load hovers above pool_size, which measurably costs throughput.

Server side: PostgreSQL allows `max_connections`; `server_reserve` stay free for the superuser
and maintenance; the rest is divided among the PgBouncer pods, each keeping room for its reserve
pool, as default_pool_size. The app uses one database/user pair, so that pair's pool is
PgBouncer's whole server side, and max_db_connections caps it at default + reserve.

The result says which limit bound it. When the clamp to the per-pod minimum (or one server
connection per PgBouncer pod) promises more than the budget holds, the budget is exceeded: the
operator then keeps the last configuration that fitted instead of applying this one.

`plan_pools` keeps the signature and results of the first version of this function, which the
local stack and the chart's grid test were written against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "Bound",
    "Budget",
    "PoolDecision",
    "PoolPlan",
    "Replicas",
    "decide",
    "plan_pools",
    "resolve_surge",
    "scale_up_headroom",
]

# Share of a pod's connections kept open (the rest is overflow); see the docstring.
STEADY_SHARE = 1.0


class Bound(StrEnum):
    """The limit that decided the per-pod pool (or that the budget cannot meet)."""

    CLIENT_BUDGET = "ClientBudget"  # the client budget split over the counted pods
    MAX_PER_POD = "MaxPerPod"  # the budget has room for more: every pod gets its maximum
    MIN_PER_POD = "MinPerPod"  # exceeded: the counted pods at their minimum overrun the budget
    SERVER_BUDGET = "ServerBudget"  # exceeded: PgBouncer's pods cannot all get a server pool


@dataclass(frozen=True, slots=True)
class Budget:
    max_client_conn: int = 1000
    client_reserve: int = 50
    max_connections: int = 100
    server_reserve: int = 10
    # PgBouncer pods sharing the server budget (counted like the API pods by the operator).
    pgbouncer_replicas: int = 1
    # PgBouncer's reserve_pool_size comes on top of default_pool_size when clients wait.
    pgbouncer_reserve_pool: int = 0
    min_per_pod: int = 4
    # Reads run on a pod's event loop and each transaction on a worker thread of one Python
    # process: about 8 connections per core of the pod.
    max_per_pod: int = 16
    pool_timeout: float = 2.0
    pool_recycle: int = 3600

    def __post_init__(self) -> None:
        if self.max_client_conn <= self.client_reserve:
            raise ValueError("max_client_conn must exceed client_reserve")
        if self.client_reserve < 0 or self.server_reserve < 0:
            raise ValueError("the reserves must not be negative")
        if self.max_connections <= self.server_reserve:
            raise ValueError("max_connections must exceed server_reserve")
        if self.pgbouncer_reserve_pool < 0:
            raise ValueError("pgbouncer_reserve_pool must not be negative")
        if self.pgbouncer_replicas < 1:
            raise ValueError("pgbouncer_replicas must be at least 1")
        if not 1 <= self.min_per_pod <= self.max_per_pod:
            raise ValueError("min_per_pod and max_per_pod must satisfy 1 <= min <= max")
        if not 0 < self.pool_timeout <= 60:
            raise ValueError("pool_timeout must be in (0, 60] seconds")
        if self.pool_recycle < -1:
            raise ValueError("pool_recycle must be -1 (never) or more")

    @property
    def client_budget(self) -> int:
        return self.max_client_conn - self.client_reserve

    @property
    def server_budget(self) -> int:
        return self.max_connections - self.server_reserve


@dataclass(frozen=True, slots=True)
class Replicas:
    """The pods one decision must hold: desired (the HPA's or the Deployment's spec), current
    (pods that exist, possibly still draining), surge (a rollout's extra pods) and headroom
    (pods a scale-up may add before new pool sizes reach the running pods)."""

    desired: int
    current: int = 0
    surge: int = 0
    headroom: int = 0

    def __post_init__(self) -> None:
        if self.desired < 0 or self.current < 0 or self.surge < 0 or self.headroom < 0:
            raise ValueError("replica counts must not be negative")

    @property
    def counted(self) -> int:
        """Pods that may hold a pool at once; at least one, so a Deployment scaled to zero
        still has a plan for the first pod that comes back."""
        return max(1, max(self.desired, self.current) + self.surge + self.headroom)


@dataclass(frozen=True, slots=True)
class PoolDecision:
    pods: int  # the counted API pods the client budget was split over
    pool_size: int
    max_overflow: int
    pool_timeout: float
    pool_recycle: int
    client_budget: int
    pgbouncer_pods: int
    pgbouncer_default_pool_size: int
    pgbouncer_reserve_pool: int
    server_budget: int
    bound_by: Bound

    @property
    def per_pod(self) -> int:
        return self.pool_size + self.max_overflow

    @property
    def pgbouncer_max_db_connections(self) -> int:
        return self.pgbouncer_default_pool_size + self.pgbouncer_reserve_pool

    @property
    def client_total(self) -> int:
        """Client connections all counted pods may hold at once."""
        return self.per_pod * self.pods

    @property
    def server_total(self) -> int:
        """Server connections all PgBouncer pods may open at once."""
        return self.pgbouncer_pods * self.pgbouncer_max_db_connections

    @property
    def client_exceeded(self) -> bool:
        return self.client_total > self.client_budget

    @property
    def server_exceeded(self) -> bool:
        return self.server_total > self.server_budget

    @property
    def budget_exceeded(self) -> bool:
        return self.bound_by in (Bound.MIN_PER_POD, Bound.SERVER_BUDGET)


def decide(budget: Budget, replicas: Replicas) -> PoolDecision:
    """The pools for `replicas` API pods and `budget.pgbouncer_replicas` PgBouncer pods."""
    pods = replicas.counted
    raw = budget.client_budget // pods
    per_pod = min(budget.max_per_pod, max(budget.min_per_pod, raw))
    pool_size = max(1, round(per_pod * STEADY_SHARE))
    server_share = budget.server_budget // budget.pgbouncer_replicas
    default_pool_size = max(1, server_share - budget.pgbouncer_reserve_pool)

    if budget.pgbouncer_replicas * (default_pool_size + budget.pgbouncer_reserve_pool) > (
        budget.server_budget
    ):
        bound = Bound.SERVER_BUDGET
    elif raw < budget.min_per_pod:
        bound = Bound.MIN_PER_POD
    elif raw >= budget.max_per_pod:
        bound = Bound.MAX_PER_POD
    else:
        bound = Bound.CLIENT_BUDGET
    return PoolDecision(
        pods=pods,
        pool_size=pool_size,
        max_overflow=per_pod - pool_size,
        pool_timeout=budget.pool_timeout,
        pool_recycle=budget.pool_recycle,
        client_budget=budget.client_budget,
        pgbouncer_pods=budget.pgbouncer_replicas,
        pgbouncer_default_pool_size=default_pool_size,
        pgbouncer_reserve_pool=budget.pgbouncer_reserve_pool,
        server_budget=budget.server_budget,
        bound_by=bound,
    )


def scale_up_headroom(
    replicas: int, *, pods: int, percent: int, max_replicas: int = 0, steps: int = 1
) -> int:
    """Pods a scale-up may add to `replicas` in `steps` steps of an HPA scale-up policy (each
    adds the larger of `pods` and `percent` of the count then, rounded up), never beyond
    `max_replicas` (0: no cap)."""
    if min(replicas, pods, percent, max_replicas, steps) < 0:
        raise ValueError("headroom inputs must not be negative")
    reached = replicas
    for _ in range(steps):
        grown = reached + max(pods, math.ceil(reached * percent / 100))
        if max_replicas:
            grown = min(grown, max(max_replicas, replicas))
        if grown == reached:
            break
        reached = grown
    return reached - replicas


def resolve_surge(max_surge: int | str | None, desired: int) -> int:
    """A RollingUpdate's maxSurge as a pod count: an integer as is, a percentage of the desired
    replicas rounded up (as the Deployment controller does), Kubernetes' 25% when unset."""
    if max_surge is None:
        max_surge = "25%"
    if isinstance(max_surge, int):
        if max_surge < 0:
            raise ValueError(f"maxSurge {max_surge} is negative")
        return max_surge
    text = max_surge.strip()
    if text.endswith("%") and text[:-1].isdigit():
        return math.ceil(desired * int(text[:-1]) / 100)
    if text.isdigit():
        return int(text)
    raise ValueError(f"maxSurge {max_surge!r} is neither a count nor a percentage")


@dataclass(frozen=True, slots=True)
class PoolPlan:
    """The first version's result, kept for its callers (the local stack, the chart's test)."""

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
    """`replicas` pods plus `surge` during rollouts, as the first version computed it."""
    if replicas < 1:
        raise ValueError("replicas must be at least 1")
    if surge < 0:
        raise ValueError("surge must not be negative")
    d = decide(budget, Replicas(desired=replicas, surge=surge))
    return PoolPlan(
        pool_size=d.pool_size,
        max_overflow=d.max_overflow,
        pool_timeout=d.pool_timeout,
        pool_recycle=d.pool_recycle,
        pgbouncer_default_pool_size=d.pgbouncer_default_pool_size,
        oversubscribed=d.client_exceeded,
    )
