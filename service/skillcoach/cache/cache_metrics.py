"""Metrics of the cache, declared next to the cache that updates them."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from redis.exceptions import AuthenticationError, AuthorizationError, NoPermissionError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from skillcoach.cache.resp import RespAuthError

__all__ = ["FALLTHROUGH_REASONS", "CacheMetrics", "error_reason"]

# Why a fast-path read found nothing to serve and took the full path: its API key was not
# cached; the learner is bypassed after a write; the breaker is not closed; the cluster's slot
# map had no node for the key; the lookup failed (see skillcoach_cache_errors_total); no entry;
# an entry older than the learner's version.
FALLTHROUGH_REASONS = ("key", "bypassed", "breaker", "no_node", "error", "absent", "stale")

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


_AUTH = (AuthenticationError, AuthorizationError, NoPermissionError, RespAuthError)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """exc and what it was raised from: the clients wrap the error that tells (redis-py's
    cluster client an AuthenticationError, its connection an ssl.SSLError)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 8:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def error_reason(exc: BaseException) -> str:
    """auth, tls, timeout, connection or other: a bounded label value for a failed Redis call.

    auth (credentials refused) and tls (handshake or certificate refused) are configuration
    errors that no retry fixes, so they win over the generic connection error wrapping them."""
    chain = list(_chain(exc))
    for error in chain:
        if isinstance(error, _AUTH):
            return "auth"
        if isinstance(error, ssl.SSLError):
            return "tls"
    for error in chain:
        if isinstance(error, TimeoutError | RedisTimeoutError):
            return "timeout"
        if isinstance(error, OSError | RedisConnectionError):
            return "connection"
    return "other"


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        def counter(name: str, doc: str) -> Counter:
            return Counter(f"skillcoach_cache_{name}_total", doc, ["kind"], registry=registry)

        self.hits = counter("hits", "Responses served from the cache")
        self.misses = counter("misses", "Responses computed from PostgreSQL")
        self.stale = counter("stale", "Entries found but invalidated (older learner version)")
        # op: the call (get, set, lock, unlock, ping, version; lookup: the hit path could not
        # open a connection, or its reply failed); reason: auth, tls, timeout, connection or
        # other (the class name goes to the log): a burst of timeouts on a saturated replica,
        # a Redis that is gone and a wrong password look alike in a plain count.
        self.errors = Counter(
            "skillcoach_cache_errors_total",
            "Failed Redis calls",
            ["op", "reason"],
            registry=registry,
        )
        self.skipped = Counter(
            "skillcoach_cache_skipped_total",
            "Requests that skipped Redis because the breaker was open",
            registry=registry,
        )
        self.lock_waits = counter("lock_waits", "Misses that waited for another computation")
        self.computations = counter("computations", "Computations of a cacheable response")
        self.latency = Histogram(
            "skillcoach_cache_latency_seconds",
            "Redis round-trip time of cache calls",
            ["op"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        fallthrough = Counter(
            "skillcoach_cache_fallthrough_total",
            "Fast-path reads that found nothing to serve and took the full path, by reason",
            ["reason"],
            registry=registry,
        )
        # Bound once: the fast path counts without a label lookup.
        self.fallthrough = {r: fallthrough.labels(r) for r in FALLTHROUGH_REASONS}
        self.breaker = Gauge(
            "skillcoach_cache_breaker_state",
            "Circuit breaker: 0 closed, 1 open, 2 half-open",
            registry=registry,
        )
        for kind in ("weaknesses", "recommendations"):
            for c in (self.hits, self.misses, self.stale, self.lock_waits, self.computations):
                c.labels(kind)
