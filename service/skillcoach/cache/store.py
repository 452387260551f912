"""Cache-aside for analysis responses, on a standalone Redis or a Redis Cluster.

What a hit costs: one round trip (MGET of the learner's version counter and the entry, which
share a hash slot through the `{l<id>}` tag) and no JSON work: the entry holds the finished
response body, so a hit hands Redis' bytes straight to the client.

Correctness (read-your-writes on every replica): the version is the learner's data_version
from PostgreSQL, bumped in every write transaction. An entry carries the data_version of the
snapshot it was computed from; Redis keeps the newest version seen for the learner, and an
entry is served only if the two match. A script stores an entry only if it is not older than
that version, and a write (or its replay) raises the version (or stores its fresh answers with
it) before it answers, so no replica serves pre-write data. Versions come from the database,
so a lost or reset key can only be re-created with the current version. Keys also carry the
model version, so a promotion makes every old entry unreachable at once. TTL (with jitter) is
only a backstop.

A raise counts only once `version_replicas` replicas of the key's master acknowledged it
(WAIT on the connection that raised it): Redis replicates asynchronously, and a failover to
a replica that missed the raise would bring the pre-write entries back. A raise that fails
(refused, timed out, unacknowledged) is recorded in PostgreSQL (data/cache_bypass.py) before
the write is answered; every replica reloads that list every second and serves the listed
learners from PostgreSQL until a repair re-raises the version. So another replica serves a
pre-write entry at most one refresh (about a second) after the acknowledgement, and only when
the raise failed. Should PostgreSQL be unreachable right after the commit too, this replica
alone knows (Cache.dirty) and the failure is counted (skillcoach_cache_bypass_total,
event="unrecorded"). See docs/redis.md.

Redis is optional: every call has a short timeout, failures open a circuit breaker that skips
Redis for a cool-down (then one probe), and the request is served from PostgreSQL.

AUTH and TLS apply to every connection, redis-py's and the hit path's alike (see
connect_redis and tls_context). A wrong password or an untrusted certificate is a Redis that
fails: requests are served from PostgreSQL, the breaker opens, and the errors are counted with
reason `auth` or `tls`. No password reaches a log line, a repr or a metric label.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import anyio
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff

from skillcoach.cache.breaker import Breaker
from skillcoach.cache.cache_metrics import CacheMetrics, error_reason
from skillcoach.cache.resp import PipelinedRedis
from skillcoach.data.cache_bypass import clear_bypass, load_bypass, record_bypass
from skillcoach.data.database import Database
from skillcoach.settings import Settings
from skillcoach.telemetry.tracing import NO_SPANS, Spans

__all__ = ["Cache", "CacheConfig", "RedisTarget", "connect_redis", "parse_redis_url", "tls_context"]

log = logging.getLogger(__name__)

# What a failed (or skipped) Redis call returns: None is a legitimate reply (SET NX not set).
FAILED: Any = object()
# How many failed single-flight computations a waiting request sits through before it
# computes on its own (see Cache._single_flight).
FLIGHT_WAITS = 2
LOG_EVERY_SECONDS = 60

# KEYS: version, entry. ARGV: data_version, body (empty: version only), ttl ms.
# Raises the learner's version to ARGV[1] if newer; stores the entry unless it is older.
STORE = """
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
local version = tonumber(ARGV[1])
if version > current then redis.call('SET', KEYS[1], ARGV[1]) end
if ARGV[2] ~= '' and version >= current then
  redis.call('SET', KEYS[2], ARGV[1] .. '\\n' .. ARGV[2], 'PX', ARGV[3])
end
return current
"""

# KEYS: version. ARGV: data_version. Raises the learner's version to ARGV[1] if newer, and
# always writes the key: a write is what WAIT, on the same connection, waits for, and it
# carries an earlier raise from another connection along (replication is in order).
RAISE = """
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
local version = tonumber(ARGV[1])
if version > current then current = version end
redis.call('SET', KEYS[1], current)
return current
"""
# How many learners one repair round re-raises (the rest wait for the next round).
REPAIR_BATCH = 1000


def version_replicas(url: str, configured: int | None) -> int:
    """Replicas that must acknowledge a version raise: as configured, else 1 for a cluster
    URL (a failover promotes a replica) and 0 for a standalone server."""
    if configured is not None:
        return configured
    return 1 if parse_redis_url(url).cluster else 0


class UnreplicatedRaise(Exception):
    """A version raise that fewer replicas acknowledged than required, within the wait."""


@dataclass(frozen=True, slots=True)
class CacheConfig:
    # redis:// or rediss:// (TLS), redis+cluster:// or rediss+cluster://host:port[,...]. Out
    # of the repr: it may carry a password.
    url: str = field(repr=False)
    ttl_seconds: float = 300.0
    # The hit path's lean MGET (resp.py): a late reply just means the full path answers.
    socket_timeout: float = 0.05
    # Every other call (redis-py: misses, stores, locks, version raises). Longer, because a
    # timeout there is costly twice over: redis-py tears the connection down, and the next
    # calls on it fail with leaked transport errors (redis-py #4287) until it reconnects. At
    # 50 ms a saturated replica's own event-loop stalls timed calls out by the dozen.
    call_timeout: float = 0.25
    max_connections: int = 64
    health_check_interval: float = 0
    breaker_failures: int = 5
    breaker_cooldown: float = 2.0
    # The failures that open the breaker must span this long (see Breaker): a burst from one
    # event-loop stall is not an outage.
    breaker_min_span: float = 0.5
    lock_seconds: float = 2.0
    lock_wait: float = 0.2
    # Credentials; each overrides the one in the URL. A username means an ACL user.
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    # The CA bundle that signed the servers' certificates (TLS URLs only; None: the system's).
    tls_ca_file: str | None = None
    # Replicas that must acknowledge a version raise (WAIT); None: see version_replicas.
    version_replicas: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> CacheConfig:
        password, ca_file = settings.redis_password, settings.redis_tls_ca_file
        return cls(
            url=settings.redis_url.get_secret_value(),
            ttl_seconds=settings.cache_ttl_seconds,
            socket_timeout=settings.cache_socket_timeout,
            call_timeout=settings.cache_call_timeout,
            max_connections=settings.cache_max_connections,
            health_check_interval=settings.cache_health_check_interval,
            username=settings.redis_username,
            password=None if password is None else password.get_secret_value(),
            tls_ca_file=None if ca_file is None else str(ca_file),
            version_replicas=settings.cache_version_replicas,
        )

    @property
    def replicas(self) -> int:
        return version_replicas(self.url, self.version_replicas)

    @property
    def wait_ms(self) -> int:
        # Well inside the socket timeout, so an unacknowledged raise is WAIT's answer (fewer
        # replicas), not a timed-out connection that redis-py would have to tear down.
        return max(1, int(self.call_timeout * 1000 / 2))


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """What a Redis URL names, its credentials taken out."""

    tls: bool
    cluster: bool
    # (host, port) of the standalone server, or the cluster's startup nodes.
    nodes: tuple[tuple[str, int], ...]
    # A standalone server's URL without credentials (path and query kept); "" for a cluster.
    url: str = field(repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def parse_redis_url(url: str) -> RedisTarget:
    """redis[s]://[user[:password]@]host[:port][/db][?options] or
    redis[s]+cluster://[user[:password]@]host:port[,host:port...]. ValueError names the URL's
    shape, never its text (which may hold a password)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
        raise ValueError("not a redis://, rediss://, redis+cluster:// or rediss+cluster:// URL")
    userinfo, at, hosts = rest.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    tls = scheme.startswith("rediss")
    if scheme.endswith("+cluster"):
        nodes = []
        for node in hosts.rstrip("/").split(","):
            host, colon, port = node.rpartition(":")
            if not colon or not port.isdigit():
                raise ValueError("a cluster URL lists host:port pairs")
            nodes.append((host.strip("[]"), int(port)))
        return RedisTarget(tls, True, tuple(nodes), "", username, password)
    plain = f"{scheme}://{hosts}"
    split = urlsplit(plain)
    server = (split.hostname or "localhost", split.port or 6379)
    return RedisTarget(tls, False, (server,), plain, username, password)


def _credentials(config: CacheConfig, target: RedisTarget) -> tuple[str | None, str | None]:
    """(username, password): the settings' own, else the URL's."""
    return config.username or target.username, config.password or target.password


def _check_hostname(config: CacheConfig, target: RedisTarget) -> bool:
    """Whether TLS checks the server's name; the chain is always verified.

    Not when a private CA is named (tls_ca_file) and the servers are reached by IP address.
    A cluster's nodes are taken to be: its slot map and MOVED redirects carry the addresses the
    nodes announce, on Kubernetes pod IPs that change with every restart and that no
    certificate lists. A standalone server is if its URL names an IP. Trust then rests on the
    private CA, which should sign nothing but the Redis servers. With the system's CAs the name
    is always checked: any publicly trusted certificate would pass a chain-only check.
    """
    if config.tls_ca_file is None:
        return True
    if target.cluster:
        return False
    try:
        ipaddress.ip_address(target.nodes[0][0])
    except ValueError:
        return True  # a DNS name: checked
    return False


def tls_context(config: CacheConfig) -> ssl.SSLContext | None:
    """The hit path's TLS context, verifying like redis-py's (None for a plain URL)."""
    target = parse_redis_url(config.url)
    if not target.tls:
        return None
    try:
        context = ssl.create_default_context(cafile=config.tls_ca_file)
    except (OSError, ssl.SSLError) as exc:
        # A missing or broken CA bundle is a deployment error: refuse to start, saying which.
        raise ValueError(f"cannot load the Redis CA bundle {config.tls_ca_file}: {exc}") from exc
    context.check_hostname = _check_hostname(config, target)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def connect_redis(config: CacheConfig) -> Redis | RedisCluster:
    """A standalone client for redis[s]:// URLs, a cluster client for
    redis[s]+cluster://host:port[,host:port...] (any node list works as startup nodes), both
    with the configured credentials and TLS."""
    target = parse_redis_url(config.url)
    username, password = _credentials(config, target)
    common: dict[str, Any] = {
        "socket_timeout": config.call_timeout,
        "socket_connect_timeout": config.call_timeout,
        "socket_keepalive": True,
        "health_check_interval": config.health_check_interval,
        "username": username,
        "password": password,
    }
    tls: dict[str, Any] = {}
    if target.tls:
        tls = {
            "ssl_cert_reqs": "required",
            "ssl_ca_certs": config.tls_ca_file,
            "ssl_check_hostname": _check_hostname(config, target),
        }
    if target.cluster:
        nodes = [ClusterNode(host, port) for host, port in target.nodes]
        # MOVED/ASK and node failures: the client refreshes its slot map and retries a
        # command up to twice (its node connections themselves never retry). Every node it
        # finds gets these same connection settings (credentials and TLS).
        return RedisCluster(
            startup_nodes=nodes,
            retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), retries=2),
            max_connections=config.max_connections,
            ssl=target.tls,
            **common,
            **tls,
        )
    # A blocking pool: past max_connections a call waits briefly for a free connection
    # instead of failing (which would count against the breaker under a burst). A failed call
    # is not retried: the request is answered from the source and the breaker counts it, so
    # a Redis that is down costs a request one call_timeout, not three.
    pool = BlockingConnectionPool.from_url(
        target.url,
        max_connections=config.max_connections,
        timeout=config.call_timeout,
        retry=Retry(NoBackoff(), retries=0),
        **common,
        **tls,
    )
    return Redis(connection_pool=pool)


def _span_attributes(op: str) -> dict[str, str]:
    """A cache span's attributes: which call, never which key (keys hold the learner id)."""
    return {"db.system": "redis", "skillcoach.cache.op": op}


@dataclass(slots=True)
class _Flight:
    done: anyio.Event = field(default_factory=anyio.Event)
    ok: bool = False
    body: bytes | None = None


# What a fast-path lookup saw of the learner's version: (version,), or None if not asked.
Seen = tuple[bytes | None] | None


def _keys(learner_id: int, kind: str, variant: str) -> tuple[str, str, str]:
    tag = f"{{l{learner_id}}}"
    return f"{tag}:v", f"{tag}:{kind}:{variant}", f"{tag}:{kind}:{variant}:lock"


class Cache:
    def __init__(
        self,
        client: Redis | RedisCluster,
        config: CacheConfig,
        registry: CollectorRegistry | None = None,
        *,
        spans: Spans = NO_SPANS,
    ) -> None:
        self._client = client
        self._config = config
        # A span per Redis call of a traced request ("cache.lookup", "cache.get", ...); the
        # names and attributes carry the operation and the answer kind, never a key (keys
        # hold the learner id) or a value.
        self._spans = spans
        self._traced = spans.enabled
        self.breaker = Breaker(
            config.breaker_failures, config.breaker_cooldown, min_span=config.breaker_min_span
        )
        # (op, exception class) -> when it was last logged: one warning a minute per kind.
        self._logged: dict[tuple[str, str], float] = {}
        self.metrics = CacheMetrics(registry)
        self._fast = self._fast_client(client, config)
        # A standalone server's address, found once: every hit needs it, and an isinstance
        # check against redis-py's Protocol-based client classes costs microseconds.
        self._server: tuple[str, int] | None = None
        if not isinstance(client, RedisCluster):
            kwargs = client.connection_pool.connection_kwargs
            self._server = str(kwargs.get("host", "127.0.0.1")), int(kwargs.get("port", 6379))
        self.metrics.breaker.set_function(lambda: self.breaker.state)
        self._inflight: dict[str, _Flight] = {}
        # Learners whose new version did not reach Redis (-> that version): served from
        # PostgreSQL by this replica, and retried in the background until Redis takes it.
        self.dirty: dict[int, int] = {}
        # The durable list (data/cache_bypass.py) as last loaded: learner -> version Redis
        # did not take. Without a database (use_database) there is none to load.
        self.bypass: dict[int, int] = {}
        self._db: Database | None = None
        self._bypass_loaded = True
        self._bypass_loading = False
        self._replicas = config.replicas
        self.bypass_events = Counter(
            "skillcoach_cache_bypass_total",
            "Failed version raises and their handling: recorded (listed in PostgreSQL),"
            " unrecorded (PostgreSQL unreachable too: this replica alone bypasses), repaired"
            " (re-raised and unlisted), refresh_failed (the list could not be reloaded)",
            ["event"],
            registry=registry,
        )
        for event in ("recorded", "unrecorded", "repaired", "refresh_failed"):
            self.bypass_events.labels(event)
        Gauge(
            "skillcoach_cache_bypass_learners",
            "Learners every replica serves from PostgreSQL because a version raise failed"
            " (this replica's last load of the list, plus its own unrecorded ones)",
            registry=registry,
        ).set_function(lambda: len(self.bypass.keys() | self.dirty.keys()))
        self.hit_count = 0
        self.lookup_count = 0

    def _fast_client(self, client: Redis | RedisCluster, config: CacheConfig) -> PipelinedRedis:
        """The hit path's connections: the same servers, credentials and TLS as `client`. A
        failed open is counted (op `lookup`); a refused one leaves its node alone for the
        breaker's cool-down. The full path that follows reports to the breaker."""
        username, password = _credentials(config, parse_redis_url(config.url))
        db = 0
        if isinstance(client, Redis):
            db = int(client.connection_pool.connection_kwargs.get("db", 0) or 0)
        return PipelinedRedis(
            timeout=config.socket_timeout,
            tls=tls_context(config),
            username=username,
            password=password,
            db=db,
            retry_after=config.breaker_cooldown,
            open_timeout=max(config.socket_timeout * 4, config.call_timeout * 4),
            on_failure=lambda exc: self._failed("lookup", exc),
        )

    @property
    def client(self) -> Redis | RedisCluster:
        """The redis-py client, for other users of the same Redis (the rate limits' sync):
        one connection pool per replica."""
        return self._client

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
        if self._traced:
            with self._spans.child(f"cache.{op}", _span_attributes(op), kind=SpanKind.CLIENT):
                return await self._timed_call(op, fn)
        return await self._timed_call(op, fn)

    async def _timed_call(self, op: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        t0 = time.perf_counter()
        try:
            result = await fn()
        except Exception as exc:
            self.breaker.failure()
            self._failed(op, exc)
            return FAILED
        self.breaker.success()
        self.metrics.latency.labels(op).observe(time.perf_counter() - t0)
        return result

    def _failed(self, op: str, exc: Exception) -> None:
        """Count a failed Redis call; log its kind at most once a minute (the counter has the
        rest), so a Redis outage does not turn into a log flood."""
        reason = error_reason(exc)
        self.metrics.errors.labels(op, reason).inc()
        kind = (op, type(exc).__name__)
        now = time.monotonic()
        if now - self._logged.get(kind, -LOG_EVERY_SECONDS) >= LOG_EVERY_SECONDS:
            self._logged[kind] = now
            # The class and the message: redis-py's reprs drop the message (which says which
            # node, and why). Neither ever holds a password.
            log.warning(
                "redis %s failed (%s): %s: %s (further %s failures of %s within %d s are only"
                " counted)",
                op, reason, kind[1], exc, kind[1], op, LOG_EVERY_SECONDS,
            )  # fmt: skip

    async def lookup(self, *, learner_id: int, kind: str, variant: str) -> bytes | None:
        """The stored body if it is current, else None (the caller takes the full path)."""
        return (await self.lookup_seen(learner_id=learner_id, kind=kind, variant=variant))[0]

    async def lookup_seen(
        self, *, learner_id: int, kind: str, variant: str
    ) -> tuple[bytes | None, Seen]:
        """(the stored body if it is current, else None; the learner's version Redis answered
        with, as a 1-tuple, or None when Redis was not asked). Requests that missed on the
        same version may share one computation (api/hit_path.py).

        One pipelined MGET on the lean connection (see resp.py). Counts only hits: a miss is
        counted by the get_or_compute that follows it."""
        # Every hit comes here: a request the sampler dropped makes no span at all.
        if self._traced and trace.get_current_span().is_recording():
            attributes = {**_span_attributes("lookup"), "skillcoach.cache.kind": kind}
            with self._spans.child("cache.lookup", attributes, kind=SpanKind.CLIENT):
                found = await self._lookup(learner_id, kind, variant)
                hit = found[0] is not None
                trace.get_current_span().set_attribute("skillcoach.cache.hit", hit)
                return found
        return await self._lookup(learner_id, kind, variant)

    async def _lookup(self, learner_id: int, kind: str, variant: str) -> tuple[bytes | None, Seen]:
        fallthrough = self.metrics.fallthrough
        if self._bypassed(learner_id):
            fallthrough["bypassed"].inc()
            return None, None
        # Only while the breaker is closed: the half-open probe belongs to the full path,
        # which reports its outcome to the breaker.
        if self.breaker.state != Breaker.CLOSED:
            fallthrough["breaker"].inc()
            return None, None
        vkey, ekey, _ = _keys(learner_id, kind, variant)
        node = self._node(vkey)
        if node is None:
            fallthrough["no_node"].inc()
            return None, None
        try:
            version, entry = await self._fast.mget(node[0], node[1], vkey.encode(), ekey.encode())
        except Exception:  # the full path then handles it (PipelinedRedis counted it)
            fallthrough["error"].inc()
            return None, None
        if entry is None or version is None:
            fallthrough["absent"].inc()
            return None, (version,)
        tag, _, body = entry.partition(b"\n")
        if tag != version:
            fallthrough["stale"].inc()
            return None, (version,)
        self.lookup_count += 1
        self.hit_count += 1
        self.metrics.hits.labels(kind).inc()
        return body, (version,)

    def _node(self, key: str) -> tuple[str, int] | None:
        """Where the key lives: the standalone server, or the cluster client's slot map."""
        if self._server is not None:
            return self._server
        cluster = cast(RedisCluster, self._client)
        try:
            node = cluster.get_node_from_key(key)
        except Exception:  # slot map not loaded yet or being rebuilt
            return None
        return None if node is None else (str(node.host), int(node.port))

    async def get_or_compute(
        self,
        *,
        learner_id: int,
        kind: str,
        variant: str,
        compute: Callable[[], Awaitable[tuple[bytes, int] | None]],
        background: bool = False,
    ) -> bytes | None:
        """The cached body, or the body of compute() (None: nothing to cache, e.g. unknown
        learner). compute() returns the body and the data_version it was computed from.

        `background` (warming) keeps the lookup out of the hit and miss
        counts, which describe what clients got."""
        vkey, ekey, lkey = _keys(learner_id, kind, variant)
        counted = not background
        if counted:
            self.lookup_count += 1
        await self._load_bypass_once()
        if self._bypassed(learner_id):
            if counted:
                self.metrics.misses.labels(kind).inc()
            answer = await compute()
            return None if answer is None else answer[0]
        got = await self._call("get", lambda: self._client.mget([vkey, ekey]))
        seen: bytes | None = None
        if got is not FAILED:
            version, entry = got
            seen = None if version is None else bytes(version)
            if entry is not None:
                tag, _, body = bytes(entry).partition(b"\n")
                if tag == seen:
                    if counted:
                        self.hit_count += 1
                        self.metrics.hits.labels(kind).inc()
                    return body
                if counted:
                    self.metrics.stale.labels(kind).inc()
        if counted:
            self.metrics.misses.labels(kind).inc()
        if got is FAILED:
            # Redis did not say which version is current, so a computation already under way
            # here may have read data older than a write this request's client has seen
            # acknowledged (on another replica, say): compute afresh, never join it.
            return await self._compute_once_across_replicas(
                ekey, lkey, kind, seen, compute, redis_ok=False
            )
        return await self._single_flight(ekey, lkey, kind, seen, compute)

    async def _single_flight(
        self,
        ekey: str,
        lkey: str,
        kind: str,
        seen: bytes | None,
        compute: Callable[[], Awaitable[tuple[bytes, int] | None]],
    ) -> bytes | None:
        # Concurrent misses of one key and version in this replica share one computation
        # (Redis answered: `seen` is the version it holds, None if it holds none).
        flight_key = f"{ekey}@{seen!r}"
        # When the flight we waited for failed (its request ran out of time, say), the first
        # waiter to wake starts the next one and the others wait for that; a second failure
        # and each computes on its own, so a waiter never waits on failures without end.
        for _ in range(FLIGHT_WAITS):
            flight = self._inflight.get(flight_key)
            if flight is None:
                break
            self.metrics.lock_waits.labels(kind).inc()
            await flight.done.wait()
            if flight.ok:
                return flight.body
        flight = _Flight()
        owner = flight_key not in self._inflight
        if owner:
            self._inflight[flight_key] = flight
        try:
            flight.body = await self._compute_once_across_replicas(
                ekey, lkey, kind, seen, compute, redis_ok=True
            )
            flight.ok = True
            return flight.body
        finally:
            # Only the registered flight leaves the table: a computation that ran beside it
            # must not remove (or, before this, fail with KeyError on) someone else's entry.
            if owner and self._inflight.get(flight_key) is flight:
                del self._inflight[flight_key]
            flight.done.set()

    async def _compute_once_across_replicas(
        self,
        ekey: str,
        lkey: str,
        kind: str,
        seen: bytes | None,
        compute: Callable[[], Awaitable[tuple[bytes, int] | None]],
        *,
        redis_ok: bool,
    ) -> bytes | None:
        locked: Any = FAILED
        lock = f"{lkey}:{(seen or b'-').decode()}"
        if redis_ok:
            # The lock is per version: a computation for older data never blocks this one.
            ms = int(self._config.lock_seconds * 1000)
            locked = await self._call("lock", lambda: self._client.set(lock, b"1", nx=True, px=ms))
            if locked is None and seen is not None:
                # Another replica computes it: wait briefly for its entry, else compute anyway.
                self.metrics.lock_waits.labels(kind).inc()
                body = await self._await_entry(ekey, seen)
                if body is not None:
                    return body
        self.metrics.computations.labels(kind).inc()
        answer = await compute()
        if answer is None:
            return None
        body, version = answer
        if redis_ok:
            await self._store(ekey, body, version)
        if locked is True:
            await self._call("unlock", lambda: self._client.delete(lock))
        return body

    async def _store(self, ekey: str, body: bytes, version: int) -> Any:
        vkey = ekey.split(":", 1)[0] + ":v"
        ttl = int(self._config.ttl_seconds * random.uniform(0.9, 1.1) * 1000)  # no herd expiry
        return await self._call(
            "set", lambda: self._client.eval(STORE, 2, vkey, ekey, version, body, ttl)
        )

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

    def use_database(self, db: Database) -> None:
        """Record failed version raises in `db` and bypass the learners it lists (loaded by
        the first request, then by every retry_invalidations round)."""
        self._db = db
        self._bypass_loaded = False

    async def _load_bypass_once(self) -> None:
        """The first miss or write after start loads the list (the fast path skips Redis
        until then); others meanwhile bypass rather than queue behind it."""
        if self._bypass_loaded or self._bypass_loading:
            return
        self._bypass_loading = True
        try:
            await self.refresh_bypass()
        finally:
            self._bypass_loading = False

    def _bypassed(self, learner_id: int) -> bool:
        """Serve this learner from PostgreSQL: a version raise failed (here or on any replica)
        or the list is not loaded yet."""
        return not self._bypass_loaded or learner_id in self.dirty or learner_id in self.bypass

    async def write_through(
        self, *, learner_id: int, version: int, entries: list[tuple[str, str, bytes, int]]
    ) -> bool:
        """After a committed write (its data_version `version`): raise the learner's version
        and store the fresh answers `entries` ((kind, variant, body, data_version), computed
        after the commit) in one script call each. False if Redis did not take the version;
        the learner is then listed in PostgreSQL for every replica to bypass (or, should that
        fail too, bypassed by this replica) until a retry lands."""
        await self._load_bypass_once()
        if not await self.raise_version(learner_id, version):
            self.dirty[learner_id] = max(version, self.dirty.get(learner_id, version))
            await self._record(learner_id, version)
            return False
        self.dirty.pop(learner_id, None)
        for kind, variant, body, computed_at in entries:
            _, ekey, _ = _keys(learner_id, kind, variant)
            await self._store(ekey, body, computed_at)
        return True

    async def raise_version(self, learner_id: int, version: int) -> bool:
        """Raise the learner's version to `version` (if newer); True once the master holds it
        and `replicas` of its replicas acknowledged it."""
        vkey, _, _ = _keys(learner_id, "", "")
        try:
            # Not under the breaker: a write must raise the version even while reads skip Redis.
            with self._spans.child(
                "cache.version", _span_attributes("version"), kind=SpanKind.CLIENT
            ):
                t0 = time.perf_counter()
                if self._replicas == 0:
                    await self._client.eval(RAISE, 1, vkey, version)
                else:
                    acked = await self._raise_and_wait(vkey, version)
                    if acked < self._replicas:
                        raise UnreplicatedRaise(
                            f"{acked} of {self._replicas} replicas acknowledged in"
                            f" {self._config.wait_ms} ms"
                        )
        except UnreplicatedRaise as exc:
            # The master answered: not evidence of an outage for the breaker.
            self._failed("version", exc)
            return False
        except Exception as exc:  # any failure: see _call
            # Evidence for the breaker like any call: once a learner is bypassed its reads
            # skip Redis, so the retries may be the only calls left that can show an outage.
            self.breaker.failure()
            self._failed("version", exc)
            return False
        self.breaker.success()
        self.metrics.latency.labels("version").observe(time.perf_counter() - t0)
        return True

    async def _raise_and_wait(self, vkey: str, version: int) -> int:
        """RAISE then WAIT on one connection to the key's master (WAIT counts the replicas
        that have this connection's writes); the number that acknowledged."""
        wait = ("WAIT", self._replicas, self._config.wait_ms)
        if not isinstance(self._client, RedisCluster):
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.eval(RAISE, 1, vkey, version)
                pipe.execute_command(*wait)
                _, acked = await pipe.execute()
            return int(acked)
        cluster = self._client
        for attempt in range(2):
            node = None
            if attempt == 0:
                with contextlib.suppress(Exception):  # slot map not loaded yet
                    node = cluster.get_node_from_key(vkey)
            if node is None:
                # Slot map not loaded, or stale after a failover (MOVED, a dead node): the
                # routed call loads or refreshes it on the way.
                await cluster.eval(RAISE, 1, vkey, version)
                node = cluster.get_node_from_key(vkey)
                if node is None:
                    raise ConnectionError("no node serves the learner's slot")
            # One connection for both: redis-py's routed calls may each take another.
            commands = [
                PipelineCommand(0, "EVAL", RAISE, 1, vkey, version),
                PipelineCommand(1, *wait),
            ]
            try:
                await node.execute_pipeline(commands)
            except Exception:
                if attempt == 1:
                    raise
                continue
            error = next((c.result for c in commands if isinstance(c.result, Exception)), None)
            if error is None:
                return int(cast(int, commands[1].result))
            if attempt == 1:
                raise error
        raise AssertionError("unreachable")  # pragma: no cover

    async def _record(self, learner_id: int, version: int) -> None:
        """List a failed raise in PostgreSQL, in its own transaction after the write's."""
        if self._db is None:
            return
        try:
            await self._db.run(record_bypass, learner_id=learner_id, data_version=version)
        except Exception as exc:  # the write is committed: never turn it into a 500
            # The write is committed; this replica bypasses the learner (dirty), others may
            # serve the old entry until a retry lands. Rare (PostgreSQL gone right after a
            # commit) and never silent.
            self.bypass_events.labels("unrecorded").inc()
            log.error(
                "learner %d: cache version %d neither in Redis nor listed in PostgreSQL (%s);"
                " other replicas may serve its previous answers until a retry lands",
                learner_id, version, exc,
            )  # fmt: skip
            return
        self.bypass_events.labels("recorded").inc()
        self.bypass[learner_id] = max(version, self.bypass.get(learner_id, version))

    async def refresh_bypass(self) -> bool:
        """Reload the durable list; False (counted) if PostgreSQL did not answer."""
        if self._db is None:
            return True
        try:
            self.bypass = await self._db.run(load_bypass, retry=True)
        except Exception as exc:  # the background loop must survive anything
            self.bypass_events.labels("refresh_failed").inc()
            log.debug("cache bypass list not reloaded: %s", exc)
            return False
        self._bypass_loaded = True
        return True

    async def _repair(self, learner_id: int, version: int) -> bool:
        if not await self.raise_version(learner_id, version):
            return False
        if self.dirty.get(learner_id, version) <= version:
            self.dirty.pop(learner_id, None)
        if self._db is not None:
            try:
                cleared = await self._db.run(
                    clear_bypass, learner_id=learner_id, data_version=version
                )
            except Exception:  # listed still: bypassed a little longer, repaired next round
                return False
            if cleared:
                self.bypass_events.labels("repaired").inc()
        return True

    async def retry_invalidations(self) -> None:
        """One round (every second): reload the durable list first (the bound on other
        replicas' failures rests on it, whatever Redis does), then re-raise this replica's
        unrecorded failures and the listed learners (any replica may repair: each step is
        idempotent and the delete conditional), stopping at the first raise that fails."""
        loaded = await self.refresh_bypass()
        for learner_id, version in list(self.dirty.items())[:REPAIR_BATCH]:
            if not await self._repair(learner_id, version):
                return  # Redis still unhappy; the next round tries again
        if loaded:
            for learner_id, version in list(self.bypass.items())[:REPAIR_BATCH]:
                if not await self._repair(learner_id, version):
                    return

    async def ping(self) -> bool:
        return await self._call("ping", lambda: self._client.ping()) is True

    async def aclose(self) -> None:
        self._fast.close()
        await self._client.aclose()
