"""Cache-aside for analysis responses, on a standalone Redis or a Redis Cluster.

What a hit costs: one round trip (MGET of the learner's version counter and the entry, which
share a hash slot through the `{l<id>}` tag) and no JSON work: the entry holds the finished
response body, so a hit hands Redis' bytes straight to the client.

Correctness (read-your-writes on every replica): the version is the learner's data_version
from PostgreSQL, bumped in every write transaction. An entry carries the data_version of the
snapshot it was computed from; Redis keeps the newest version seen for the learner, and an
entry is served only if the two match. A script stores an entry only if it is not older than
that version, and a write raises the version (or stores its fresh answers with it) before it
answers 201, so no replica serves pre-write data. Versions come from the database, so a lost
or reset key can only be re-created with the current version. Keys also carry the model
version, so a promotion makes every old entry unreachable at once. TTL (with jitter) is only a
backstop. If Redis does not take a write's version, this replica serves that learner from
PostgreSQL and retries every second; other replicas may serve the old entry until it lands.

Redis is optional: every call has a short timeout, failures open a circuit breaker that skips
Redis for a cool-down (then one probe), and the request is served from PostgreSQL.

AUTH and TLS apply to every connection, redis-py's and the hit path's alike (see
connect_redis and tls_context). A wrong password or an untrusted certificate is a Redis that
fails: requests are served from PostgreSQL, the breaker opens, and the errors are counted with
reason `auth` or `tls`. No password reaches a log line, a repr or a metric label.
"""

from __future__ import annotations

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
from prometheus_client import CollectorRegistry
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from skillcoach.cache.breaker import Breaker
from skillcoach.cache.cache_metrics import CacheMetrics, error_reason
from skillcoach.cache.resp import PipelinedRedis
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
        )


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
    retry = Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), retries=2)
    common: dict[str, Any] = {
        "socket_timeout": config.call_timeout,
        "socket_connect_timeout": config.call_timeout,
        "socket_keepalive": True,
        "health_check_interval": config.health_check_interval,
        "retry": retry,
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
        # MOVED/ASK and node failures: the client refreshes its slot map and retries. Every
        # node it finds gets these same connection settings (credentials and TLS).
        return RedisCluster(
            startup_nodes=nodes,
            cluster_error_retry_attempts=3,
            max_connections=config.max_connections,
            ssl=target.tls,
            **common,
            **tls,
        )
    # A blocking pool: past max_connections a call waits briefly for a free connection
    # instead of failing (which would count against the breaker under a burst).
    pool = BlockingConnectionPool.from_url(
        target.url,
        max_connections=config.max_connections,
        timeout=config.call_timeout,
        retry_on_timeout=True,
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
        """The stored body if it is current, else None (the caller takes the full path).

        One pipelined MGET on the lean connection (see resp.py). Counts only hits: a miss is
        counted by the get_or_compute that follows it."""
        # Every hit comes here: a request the sampler dropped makes no span at all.
        if self._traced and trace.get_current_span().is_recording():
            attributes = {**_span_attributes("lookup"), "skillcoach.cache.kind": kind}
            with self._spans.child("cache.lookup", attributes, kind=SpanKind.CLIENT):
                body = await self._lookup(learner_id, kind, variant)
                trace.get_current_span().set_attribute("skillcoach.cache.hit", body is not None)
                return body
        return await self._lookup(learner_id, kind, variant)

    async def _lookup(self, learner_id: int, kind: str, variant: str) -> bytes | None:
        # Only while the breaker is closed: the half-open probe belongs to the full path,
        # which reports its outcome to the breaker.
        if learner_id in self.dirty or self.breaker.state != Breaker.CLOSED:
            return None
        vkey, ekey, _ = _keys(learner_id, kind, variant)
        node = self._node(vkey)
        if node is None:
            return None
        try:
            version, entry = await self._fast.mget(node[0], node[1], vkey.encode(), ekey.encode())
        except Exception:  # any failure: the full path will count and handle it
            return None
        if entry is None or version is None:
            return None
        tag, _, body = entry.partition(b"\n")
        if tag != version:
            return None
        self.lookup_count += 1
        self.hit_count += 1
        self.metrics.hits.labels(kind).inc()
        return body

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
        if learner_id in self.dirty:
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
        return await self._single_flight(
            ekey, lkey, kind, seen, compute, redis_ok=got is not FAILED
        )

    async def _single_flight(
        self,
        ekey: str,
        lkey: str,
        kind: str,
        seen: bytes | None,
        compute: Callable[[], Awaitable[tuple[bytes, int] | None]],
        *,
        redis_ok: bool,
    ) -> bytes | None:
        # Concurrent misses of one key and version in this replica share one computation.
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
                ekey, lkey, kind, seen, compute, redis_ok=redis_ok
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

    async def write_through(
        self, *, learner_id: int, version: int, entries: list[tuple[str, str, bytes, int]]
    ) -> bool:
        """After a committed write (its data_version `version`): raise the learner's version
        and store the fresh answers `entries` ((kind, variant, body, data_version), computed
        after the commit) in one script call each. False if Redis did not take the version; the
        learner is then served from PostgreSQL by this replica until a retry lands."""
        vkey, _, _ = _keys(learner_id, "", "")
        try:
            # Not under the breaker: a write must raise the version even while reads skip Redis.
            with self._spans.child(
                "cache.version", _span_attributes("version"), kind=SpanKind.CLIENT
            ):
                await self._client.eval(STORE, 2, vkey, f"{vkey}:none", version, b"", 0)
        except Exception as exc:  # any failure: see _call
            # Evidence for the breaker like any call: once a learner is dirty its reads skip
            # Redis, so the retries may be the only calls left that can show an outage.
            self.breaker.failure()
            self._failed("version", exc)
            self.dirty[learner_id] = max(version, self.dirty.get(learner_id, version))
            return False
        self.breaker.success()
        self.dirty.pop(learner_id, None)
        for kind, variant, body, computed_at in entries:
            _, ekey, _ = _keys(learner_id, kind, variant)
            await self._store(ekey, body, computed_at)
        return True

    async def retry_invalidations(self) -> None:
        for learner_id, version in list(self.dirty.items())[:1000]:
            if not await self.write_through(learner_id=learner_id, version=version, entries=[]):
                return  # Redis still unhappy; the next round tries again

    async def ping(self) -> bool:
        return await self._call("ping", lambda: self._client.ping()) is True

    async def aclose(self) -> None:
        self._fast.close()
        await self._client.aclose()
