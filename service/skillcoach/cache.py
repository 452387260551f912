"""Cache-aside for analysis responses, on a standalone Redis or a Redis Cluster.

What a hit costs: one round trip (MGET of the learner's version counter and the entry, which
share a hash slot through the `{l<id>}` tag) and no JSON work: the entry holds the finished
response body, so a hit hands Redis' bytes straight to the client.

Correctness (read-your-writes on every replica): an entry is tagged with the learner's version
as read *before* the database was; a write commits to PostgreSQL, then replaces the version
with a new random one before it answers 201. An entry computed from pre-write data therefore
carries an old tag and is never served again. Keys also carry the model version, so a
promotion makes every old entry unreachable at once. TTL (with jitter) is only the backstop.
If Redis does not take a version bump, this replica serves that learner from PostgreSQL and
retries the bump every second; other replicas may serve the old entry until it lands.

Redis is optional: every call has a short timeout, failures open a circuit breaker that skips
Redis for a cool-down (then one probe), and the request is served from PostgreSQL.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

__all__ = ["Breaker", "Cache", "CacheConfig", "connect_redis"]

log = logging.getLogger("skillcoach.cache")

# What a failed (or skipped) Redis call returns: None is a legitimate reply (SET NX not set).
FAILED: Any = object()

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
# A fresh counter starts at a random value: if a counter is ever lost (restart, eviction,
# failover) while entries survive, old tags cannot collide with the new counter.
FRESH_VERSION_RANGE = 2**62


@dataclass(frozen=True, slots=True)
class CacheConfig:
    url: str
    ttl_seconds: float = 300.0
    socket_timeout: float = 0.05
    max_connections: int = 64
    breaker_failures: int = 5
    breaker_cooldown: float = 2.0
    lock_seconds: float = 2.0
    lock_wait: float = 0.2


def connect_redis(config: CacheConfig) -> Redis | RedisCluster:
    """A standalone client for redis:// URLs, a cluster client for
    redis+cluster://host:port[,host:port...] (any node list works as startup nodes)."""
    retry = Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), retries=2)
    common: dict[str, Any] = {
        "socket_timeout": config.socket_timeout,
        "socket_connect_timeout": config.socket_timeout * 4,
        "socket_keepalive": True,
        "health_check_interval": 30,
        "retry": retry,
    }
    if config.url.startswith("redis+cluster://"):
        hosts = config.url.removeprefix("redis+cluster://").rstrip("/").split(",")
        nodes = [ClusterNode(h.rsplit(":", 1)[0], int(h.rsplit(":", 1)[1])) for h in hosts]
        # MOVED/ASK and node failures: the client refreshes its slot map and retries.
        return RedisCluster(
            startup_nodes=nodes,
            cluster_error_retry_attempts=3,
            max_connections=config.max_connections,
            **common,
        )
    # A blocking pool: past max_connections a call waits briefly for a free connection
    # instead of failing (which would count against the breaker under a burst).
    pool = BlockingConnectionPool.from_url(
        config.url,
        max_connections=config.max_connections,
        timeout=config.socket_timeout * 4,
        retry_on_timeout=True,
        **common,
    )
    return Redis(connection_pool=pool)


class Breaker:
    """Closed -> open after N consecutive failures -> half-open after the cool-down (one probe)
    -> closed on success. Pure state; the clock is injectable for tests."""

    CLOSED, OPEN, HALF_OPEN = 0, 1, 2

    def __init__(
        self, failures: int, cooldown: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit = failures
        self._cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> int:
        if self._failures < self._limit:
            return self.CLOSED
        if self._clock() - self._opened_at >= self._cooldown:
            return self.HALF_OPEN
        return self.OPEN

    def allow(self) -> bool:
        state = self.state
        if state == self.CLOSED:
            return True
        if state == self.HALF_OPEN and not self._probing:
            self._probing = True  # one probe at a time; the rest keep skipping Redis
            return True
        return False

    def success(self) -> None:
        self._failures = 0
        self._probing = False

    def failure(self) -> None:
        self._probing = False
        self._failures += 1
        if self._failures >= self._limit:
            self._opened_at = self._clock()


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        def counter(name: str, doc: str) -> Counter:
            return Counter(f"skillcoach_cache_{name}_total", doc, ["kind"], registry=registry)

        self.hits = counter("hits", "Responses served from the cache")
        self.misses = counter("misses", "Responses computed from PostgreSQL")
        self.stale = counter("stale", "Entries found but invalidated (older learner version)")
        self.errors = Counter(
            "skillcoach_cache_errors_total", "Failed Redis calls", registry=registry
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
        self.breaker = Gauge(
            "skillcoach_cache_breaker_state",
            "Circuit breaker: 0 closed, 1 open, 2 half-open",
            registry=registry,
        )
        for kind in ("weaknesses", "recommendations"):
            for c in (self.hits, self.misses, self.stale, self.lock_waits, self.computations):
                c.labels(kind)


@dataclass(slots=True)
class _Flight:
    done: anyio.Event = field(default_factory=anyio.Event)
    ok: bool = False
    body: bytes | None = None


def _keys(learner_id: int, kind: str, variant: str) -> tuple[str, str, str]:
    tag = f"{{l{learner_id}}}"
    return f"{tag}:v", f"{tag}:{kind}:{variant}", f"{tag}:{kind}:{variant}:lock"


class Cache:
    def __init__(
        self,
        client: Redis | RedisCluster,
        config: CacheConfig,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._client = client
        self._config = config
        self.breaker = Breaker(config.breaker_failures, config.breaker_cooldown)
        self.metrics = CacheMetrics(registry)
        self.metrics.breaker.set_function(lambda: self.breaker.state)
        self._inflight: dict[str, _Flight] = {}
        # Learners whose invalidation did not reach Redis: served from PostgreSQL by this
        # replica, and retried in the background until Redis takes the bump.
        self.dirty: set[int] = set()
        self.hit_count = 0
        self.lookup_count = 0

    @property
    def hit_ratio(self) -> float | None:
        return None if self.lookup_count == 0 else self.hit_count / self.lookup_count

    @property
    def degraded(self) -> bool:
        return self.breaker.state != Breaker.CLOSED

    async def _call(self, op: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        """One Redis call under the breaker; FAILED (and a counted error) on failure.

        Socket timeouts bound each call (no extra cancel scope on the hot path). Any exception
        counts as a Redis failure: the cache is optional, and redis-py's cluster client can
        raise non-Redis errors (AttributeError) while a node goes away.
        """
        if not self.breaker.allow():
            self.metrics.skipped.inc()
            return FAILED
        t0 = time.perf_counter()
        try:
            result = await fn()
        except Exception as exc:
            self.breaker.failure()
            self.metrics.errors.inc()
            log.debug("redis %s failed: %r", op, exc)
            return FAILED
        self.breaker.success()
        self.metrics.latency.labels(op).observe(time.perf_counter() - t0)
        return result

    async def lookup(self, *, learner_id: int, kind: str, variant: str) -> bytes | None:
        """The stored body if it is current, else None (the caller takes the full path).

        Counts only hits: a miss is counted by the get_or_compute that follows it."""
        # Only while the breaker is closed: the half-open probe belongs to the full path,
        # which reports its outcome to the breaker.
        if learner_id in self.dirty or self.breaker.state != Breaker.CLOSED:
            return None
        vkey, ekey, _ = _keys(learner_id, kind, variant)
        try:
            got: list[Any] = await self._client.mget([vkey, ekey])
        except Exception:  # any failure: the full path will count and handle it
            return None
        version, entry = got
        if entry is None or version is None:
            return None
        tag, _, body = bytes(entry).partition(b"\n")
        if tag != bytes(version):
            return None
        self.lookup_count += 1
        self.hit_count += 1
        self.metrics.hits.labels(kind).inc()
        return body

    async def get_or_compute(
        self,
        *,
        learner_id: int,
        kind: str,
        variant: str,
        compute: Callable[[], Awaitable[bytes | None]],
        background: bool = False,
    ) -> bytes | None:
        """The cached body, or compute() (None: nothing to cache, e.g. unknown learner).

        `background` (warming, refresh after a write) keeps the lookup out of the hit and miss
        counts, which describe what clients got."""
        vkey, ekey, lkey = _keys(learner_id, kind, variant)
        counted = not background
        if counted:
            self.lookup_count += 1
        if learner_id in self.dirty:
            if counted:
                self.metrics.misses.labels(kind).inc()
            return await compute()
        got = await self._call("get", lambda: self._client.mget([vkey, ekey]))
        version: bytes | None = None
        if got is not FAILED:
            version, entry = got
            if entry is not None:
                tag, _, body = bytes(entry).partition(b"\n")
                if version is not None and tag == bytes(version):
                    if counted:
                        self.hit_count += 1
                        self.metrics.hits.labels(kind).inc()
                    return body
                if counted:
                    self.metrics.stale.labels(kind).inc()
            if version is None:
                version = await self._fresh_version(vkey)
        if counted:
            self.metrics.misses.labels(kind).inc()
        return await self._single_flight(ekey, lkey, kind, version, compute)

    async def _fresh_version(self, vkey: str) -> bytes | None:
        fresh = str(random.randrange(FRESH_VERSION_RANGE)).encode()
        created = await self._call("init", lambda: self._client.set(vkey, fresh, nx=True))
        if created is FAILED:
            return None
        if created:
            return fresh
        current = await self._call("get", lambda: self._client.get(vkey))
        return None if current is FAILED or current is None else bytes(current)

    async def _single_flight(
        self,
        ekey: str,
        lkey: str,
        kind: str,
        version: bytes | None,
        compute: Callable[[], Awaitable[bytes | None]],
    ) -> bytes | None:
        # Concurrent misses of one key in this replica wait for the first one's result.
        flight_key = f"{ekey}@{version!r}"
        flight = self._inflight.get(flight_key)
        if flight is not None:
            self.metrics.lock_waits.labels(kind).inc()
            await flight.done.wait()
            if flight.ok:
                return flight.body
        flight = _Flight()
        self._inflight[flight_key] = flight
        try:
            flight.body = await self._compute_once_across_replicas(
                ekey, lkey, kind, version, compute
            )
            flight.ok = True
            return flight.body
        finally:
            del self._inflight[flight_key]
            flight.done.set()

    async def _compute_once_across_replicas(
        self,
        ekey: str,
        lkey: str,
        kind: str,
        version: bytes | None,
        compute: Callable[[], Awaitable[bytes | None]],
    ) -> bytes | None:
        locked: Any = FAILED
        if version is not None:
            # The lock is per version: a computation for older data never blocks this one.
            lock = f"{lkey}:{version.decode()}"
            ms = int(self._config.lock_seconds * 1000)
            locked = await self._call("lock", lambda: self._client.set(lock, b"1", nx=True, px=ms))
            if locked is None:
                # Another replica computes it: wait briefly for its entry, else compute anyway.
                self.metrics.lock_waits.labels(kind).inc()
                body = await self._await_entry(ekey, version)
                if body is not None:
                    return body
        self.metrics.computations.labels(kind).inc()
        body = await compute()
        if body is not None and version is not None:
            await self._store(ekey, version, body)
        if locked is True:
            await self._call("unlock", lambda: self._client.delete(lock))
        return body

    async def _store(self, ekey: str, version: bytes, body: bytes) -> None:
        ttl = self._config.ttl_seconds * random.uniform(0.9, 1.1)  # jitter: no herd expiry
        value = version + b"\n" + body
        await self._call("set", lambda: self._client.set(ekey, value, px=int(ttl * 1000)))

    async def _await_entry(self, ekey: str, version: bytes) -> bytes | None:
        deadline = time.monotonic() + self._config.lock_wait
        while time.monotonic() < deadline:
            await anyio.sleep(0.02)
            entry = await self._call("get", lambda: self._client.get(ekey))
            if entry is not FAILED and entry is not None:
                tag, _, body = bytes(entry).partition(b"\n")
                if tag == version:
                    return body
        return None

    async def invalidate(self, learner_id: int) -> bool:
        """Give the learner a new version after a committed write; False if Redis did not take
        it (the learner is then marked dirty: see `retry_invalidations`)."""
        vkey, _, _ = _keys(learner_id, "", "")
        # A new random version rather than INCR: a counter recreated after loss (restart,
        # eviction, failover) could repeat a value old entries carry. Not under the breaker:
        # a write must try to invalidate even while reads skip Redis.
        try:
            await self._client.set(vkey, str(random.randrange(FRESH_VERSION_RANGE)))
        except Exception as exc:  # any failure: see _call
            self.metrics.errors.inc()
            self.dirty.add(learner_id)
            log.warning("cache invalidation of learner %d failed: %r", learner_id, exc)
            return False
        self.dirty.discard(learner_id)
        return True

    async def retry_invalidations(self) -> None:
        for learner_id in list(self.dirty)[:1000]:
            if not await self.invalidate(learner_id):
                return  # Redis still unhappy; the next round tries again

    async def ping(self) -> bool:
        return await self._call("ping", lambda: self._client.ping()) is True

    async def aclose(self) -> None:
        await self._client.aclose()
