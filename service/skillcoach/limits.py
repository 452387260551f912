"""Bounds and defaults of the public interface, in one place.

The routes validate against these, the cache-hit fast path and cache warming use the same
defaults (so a warmed entry is the one a default request hits), the OpenAPI document and the
request schemas publish them, and the local stack's load balancer sizes itself from
`in_flight_limit`. Change a value here and every one of them follows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

__all__ = [
    "ATTEMPTS_PER_BATCH",
    "CATALOG_CURSOR",
    "CATALOG_PAGE_LIMIT",
    "CLOCK_SKEW",
    "EXERCISE_ID",
    "IDEMPOTENCY_KEY_MAX_CHARS",
    "IDEMPOTENCY_KEY_PATTERN",
    "LEARNER_ID",
    "MAX_BODY_BYTES",
    "RECOMMENDATIONS_LIMIT",
    "RECOMMENDATION_TARGET",
    "SKILL_ID",
    "WEAKNESSES_LIMIT",
    "FloatRange",
    "IntParam",
    "IntRange",
    "balancer_limit",
    "in_flight_limit",
    "running_limit",
]

MAX_INT32 = 2**31 - 1
MAX_INT64 = 2**63 - 1


@dataclass(frozen=True, slots=True)
class IntRange:
    low: int
    high: int

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and self.low <= value <= self.high


@dataclass(frozen=True, slots=True)
class IntParam(IntRange):
    """An optional integer query parameter: its range and what its absence means."""

    default: int


@dataclass(frozen=True, slots=True)
class FloatRange:
    low: float
    high: float

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int | float) and self.low <= value <= self.high


# Identifiers: learners are BIGINT (the platform's own ids), the catalog is INTEGER.
LEARNER_ID = IntRange(1, MAX_INT64)
EXERCISE_ID = IntRange(1, MAX_INT32)
SKILL_ID = IntRange(1, MAX_INT32)

# GET /v1/learners/{id}/weaknesses?limit=
WEAKNESSES_LIMIT = IntParam(1, 1000, default=100)
# GET /v1/learners/{id}/recommendations?limit=&target= (the target's default is a setting,
# SKILLCOACH_RECOMMENDATION_TARGET, which must lie in this range too)
RECOMMENDATIONS_LIMIT = IntParam(1, 100, default=10)
RECOMMENDATION_TARGET = FloatRange(0.05, 0.95)
# GET /v1/skills, /v1/exercises?limit=&cursor=
CATALOG_PAGE_LIMIT = IntParam(1, 1000, default=100)
CATALOG_CURSOR = IntParam(0, MAX_INT32, default=0)

# POST /v1/learners/{id}/attempts
ATTEMPTS_PER_BATCH = IntRange(1, 500)
IDEMPOTENCY_KEY_MAX_CHARS = 200
# Visible ASCII, inner spaces allowed: HTTP strips a header value's outer spaces, and
# anything else would not survive every client and proxy unchanged.
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7E]([\x20-\x7E]*[\x21-\x7E])?$"
MAX_BODY_BYTES = 1024 * 1024
# How far in the future an answered_at may lie (clocks of clients drift).
CLOCK_SKEW = timedelta(minutes=5)


def running_limit(*, pool_capacity: int) -> int:
    """Requests one replica runs at once (past admission); the rest wait at its request gate.
    Twice the pool: requests that reach their evidence read in the same event loop turn share
    one statement (data.read_batches), so the running requests beyond one per connection
    make those statements fuller instead of queueing for a connection of their own."""
    return 2 * pool_capacity


def in_flight_limit(*, pool_capacity: int, queue_allowance: int) -> int:
    """Requests one replica admits at once before it sheds with 503: one per pooled
    connection plus a bounded queue. A load balancer in front should send no more."""
    return pool_capacity + queue_allowance


def balancer_limit(*, pool_capacity: int) -> int:
    """Requests a load balancer that can queue (HAProxy's per-server maxconn) sends one
    replica at once: twice what it runs, so each replica has its next requests at hand,
    while the rest wait first in, first out in the balancer, bounded by its queue timeout.
    Waiting there costs a replica nothing; waiting inside it costs the event loop a parsed
    request and a task each, and an overloaded gate serves the newest first, so a few wait
    long."""
    return 2 * running_limit(pool_capacity=pool_capacity)
