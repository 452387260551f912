"""The cache against Redis servers that require a password and speak TLS: standalone (AUTH
password, TLS with an ACL user) and 6-node clusters (AUTH; AUTH + TLS on clients, bus and
replication). Real servers with certificates made by openssl for the session, no mocks.

What must hold: a miss computes and stores, the next lookup is a hit of the fast path (resp.py)
which authenticated once per connection; cluster discovery and MOVED redirects work with the
same credentials and TLS; a wrong password or an untrusted certificate degrades the cache (every
request still answered, errors counted with reason auth/tls, breaker open) without an exception
storm and without the password in any log line, repr or metric.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest

from skillcoach.cache.cache_metrics import error_reason
from skillcoach.cache.resp import RespAuthError, RespError
from skillcoach.cache.store import Cache, CacheConfig, connect_redis, parse_redis_url
from skillcoach.settings import load_settings
from skillcoach_devstack.redis import RedisServer
from skillcoach_devstack.redis_cluster import RedisClusterNodes
from tests.cache.test_store import Source, get
from tests.fixtures_api import Keys, exercise_id, run_server
from tests.fixtures_services import TlsFiles, running_redis

_learners = itertools.count(700_000)


def make_cache(url: str, **options: object) -> tuple[Cache, CollectorRegistry]:
    config = CacheConfig(url=url, **options)  # type: ignore[arg-type]
    registry = CollectorRegistry()
    return Cache(connect_redis(config), config, registry), registry


def run(cache: Cache, body: Callable[[Cache], Awaitable[None]]) -> None:
    """body in one event loop (the clients belong to the loop they connected in)."""

    async def main() -> None:
        try:
            await body(cache)
        finally:
            await cache.aclose()

    anyio.run(main)


def errors(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    """skillcoach_cache_errors_total by (op, reason), the zero ones left out."""
    counts = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "skillcoach_cache_errors_total" and sample.value:
                counts[sample.labels["op"], sample.labels["reason"]] = sample.value
    return counts


def options(server: RedisServer | RedisClusterNodes, **extra: object) -> dict[str, object]:
    """CacheConfig credentials and CA of a test server."""
    found: dict[str, object] = {"password": server.password}
    if isinstance(server, RedisServer) and server.username is not None:
        found["username"] = server.username
    if server.tls is not None:
        found["tls_ca_file"] = str(server.tls.ca_file)
    return {**found, **extra}


def admin(
    server: RedisServer | RedisClusterNodes, port: int | None = None, db: int = 0
) -> redis.Redis:
    """A sync client with the right credentials, to one server (or cluster node)."""
    return redis.Redis(
        db=db,
        host="127.0.0.1",
        port=port or (server.port if isinstance(server, RedisServer) else server.ports[0]),
        username=server.username if isinstance(server, RedisServer) else None,
        password=server.password,
        ssl=server.tls is not None,
        ssl_ca_certs=None if server.tls is None else str(server.tls.ca_file),
        socket_timeout=2,
        socket_connect_timeout=2,
    )


def calls(client: redis.Redis, command: str) -> int:
    stats = client.info("commandstats").get(f"cmdstat_{command}", {})
    return int(stats.get("calls", 0))


def refused_auths(client: redis.Redis) -> int:
    """AUTH attempts the server refused (its ACL LOG; Redis 7.0 has no INFO counter for it)."""
    log: list[dict[str, Any]] = client.acl_log(128)
    return sum(int(e["count"]) for e in log if e["reason"] == "auth")


# -- hits through the fast path, authenticated once per connection -------------------------


@pytest.mark.parametrize("variant", ["auth", "auth-url-overridden", "tls-ip", "tls-name"])
def test_a_miss_stores_and_the_fast_path_serves_the_hit(
    variant: str, request: pytest.FixtureRequest
) -> None:
    server: RedisServer = request.getfixturevalue(
        "redis_auth" if "auth" in variant else "redis_tls"
    )
    url = server.url
    if variant == "auth-url-overridden":  # the password setting wins over the URL's
        url = url.replace("redis://", "redis://:not-the-password@")
    if variant == "tls-name":  # a DNS name: the certificate's name is checked too
        url = url.replace("127.0.0.1", "localhost")
    learner, source = next(_learners), Source()
    cache, _ = make_cache(url, **options(server))
    seen: dict[str, int] = {}

    async def body(cache: Cache) -> None:
        assert await get(cache, learner, source) == b'{"v":1}'  # a miss: computed and stored

        def lookup() -> Awaitable[bytes | None]:
            return cache.lookup(learner_id=learner, kind="weaknesses", variant="m1")

        assert await lookup() == b'{"v":1}'  # opens the fast connection
        with admin(server) as client:
            before = calls(client, "auth"), calls(client, "mget")
            for _ in range(200):
                assert await lookup() == b'{"v":1}'
            seen["auth"] = calls(client, "auth") - before[0]
            seen["mget"] = calls(client, "mget") - before[1]

    run(cache, body)
    assert source.calls == 1
    # The server saw the 200 MGETs and not one AUTH for them: one per connection, at its start.
    assert seen == {"auth": 0, "mget": 200}


def test_a_standalone_fast_path_selects_the_urls_database(redis_auth: RedisServer) -> None:
    learner, source = next(_learners), Source(b'{"db":3}')
    cache, _ = make_cache(redis_auth.url.replace("/0", "/3"), **options(redis_auth))
    hit: list[bytes | None] = []

    async def body(cache: Cache) -> None:
        await get(cache, learner, source)
        hit.append(await cache.lookup(learner_id=learner, kind="weaknesses", variant="m1"))

    run(cache, body)
    assert hit == [b'{"db":3}']
    with admin(redis_auth) as db0, admin(redis_auth, db=3) as db3:  # in database 3, not 0
        assert (db0.exists(f"{{l{learner}}}:v"), db3.exists(f"{{l{learner}}}:v")) == (0, 1)


@pytest.fixture(params=["redis_cluster_auth", "redis_cluster_tls"])
def secure_cluster(request: pytest.FixtureRequest) -> Iterator[RedisClusterNodes]:
    nodes: RedisClusterNodes = request.getfixturevalue(request.param)
    yield nodes
    nodes.wait_ok(30)  # whole again for the next test (a failover swaps roles)


def test_a_cluster_serves_hits_from_every_master_and_follows_moved(
    secure_cluster: RedisClusterNodes,
) -> None:
    nodes = secure_cluster
    # One startup node: the others are discovered, with the same credentials and TLS.
    first = nodes.url.split(",")[0]
    learners = [next(_learners) for _ in range(24)]  # spread over the three masters' slots
    source, never = Source(), Source(b"must not be computed")
    cache, registry = make_cache(first, **options(nodes))
    masters = nodes.masters()
    mgets: dict[int, int] = {}

    def mget_calls() -> dict[int, int]:
        found = {}
        for port in nodes.ports:
            with admin(nodes, port) as client:
                found[port] = calls(client, "mget")
        return found

    async def lookup_all() -> list[bytes | None]:
        return [
            await cache.lookup(learner_id=learner, kind="weaknesses", variant="m1")
            for learner in learners
        ]

    async def body(cache: Cache) -> None:
        for learner in learners:
            assert await get(cache, learner, source) == b'{"v":1}'
        before = mget_calls()
        assert await lookup_all() == [b'{"v":1}'] * len(learners)
        after = mget_calls()
        mgets.update({port: after[port] - before[port] for port in nodes.ports})
        # A manual failover: the replica of one master takes its slots; the client's slot
        # map is now stale for them, so the fast path gets MOVED and the full path follows it
        # to a node it may not have connected to yet.
        replica = next(r for r, m in nodes.replicas().items() if m == masters[0])
        with admin(nodes, replica) as client:
            client.execute_command("CLUSTER", "FAILOVER")
        deadline = time.monotonic() + 20
        while replica not in nodes.masters():
            assert time.monotonic() < deadline, "the manual failover did not happen"
            await anyio.sleep(0.1)
        await anyio.to_thread.run_sync(nodes.wait_ok, 20.0)
        await lookup_all()  # the moved slots' lookups fail over to the full path below
        for learner in learners:
            assert await get(cache, learner, never) == b'{"v":1}'  # redirected hits
        assert await lookup_all() == [b'{"v":1}'] * len(learners)  # the fast path again

    run(cache, body)
    assert source.calls == len(learners) and never.calls == 0
    # Every master answered hits on the fast path (the slot map's host, port and TLS).
    assert sorted(port for port, n in mgets.items() if n > 0) == masters
    assert sum(mgets.values()) == len(learners)
    assert errors(registry) == {}


# -- refused credentials and certificates: degraded, counted, nothing leaked -------------------


def served_while_refused(cache: Cache, requests: int = 30) -> tuple[Source, list[bytes | None]]:
    """`requests` reads against a Redis that refuses the cache; returns the source (which must
    have answered them all) and what the fast path returned."""
    source, learner = Source(), next(_learners)
    fast: list[bytes | None] = []

    async def body(cache: Cache) -> None:
        for _ in range(requests):
            fast.append(await cache.lookup(learner_id=learner, kind="weaknesses", variant="m1"))
            assert await get(cache, learner, source) == b'{"v":1}'
            await anyio.sleep(0.02)
        assert cache.degraded  # the failures lasted past breaker_min_span: open

    run(cache, body)
    return source, fast


BREAKER = {"breaker_min_span": 0.2, "breaker_cooldown": 60.0}


@pytest.mark.parametrize("topology", ["standalone", "cluster"])
def test_a_wrong_password_degrades_the_cache_and_is_never_shown(
    topology: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    server: RedisServer | RedisClusterNodes = request.getfixturevalue(
        "redis_auth" if topology == "standalone" else "redis_cluster_auth"
    )
    wrong = f"wrong-{secrets.token_hex(8)}"
    # In the URL and in the setting (which wins): neither may show anywhere.
    in_url = f"url-{secrets.token_hex(8)}"
    url = server.url.replace("://", f"://:{in_url}@", 1)
    caplog.set_level(logging.DEBUG)
    with admin(server) as client:
        refused_before = refused_auths(client)
    cache, registry = make_cache(url, **options(server, password=wrong), **BREAKER)
    source, fast = served_while_refused(cache)

    assert source.calls == 30 and fast == [None] * 30  # every request answered, from the source
    counted = errors(registry)
    assert counted and {reason for _, reason in counted} == {"auth"}, counted
    # Each AUTH the server refused was counted once, and nothing retried behind the counter.
    with admin(server) as client:
        assert refused_auths(client) - refused_before == sum(counted.values()), counted
    # The standalone fast path tried once, then left the server alone; a cluster's has no
    # node to try, as the refused full-path client never loaded the slot map.
    assert counted.pop(("lookup", "auth"), 0) == (1 if topology == "standalone" else 0)
    # The breaker stopped the full path's attempts: far fewer than one per request.
    assert 0 < sum(counted.values()) < 20, counted
    # One warning per kind of failure, not one per request.
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert 1 <= len(warnings) <= 3, [r.getMessage() for r in warnings]
    shown = [caplog.text, generate_latest(registry).decode(), repr(cache._config)]
    shown += [r.getMessage() for r in caplog.records]
    for secret in (wrong, in_url, str(server.password)):
        assert not any(secret in text for text in shown)


@pytest.mark.parametrize("topology", ["standalone", "cluster"])
def test_an_untrusted_certificate_is_refused_and_the_cache_degrades(
    topology: str,
    request: pytest.FixtureRequest,
    redis_tls_files: TlsFiles,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server: RedisServer | RedisClusterNodes = request.getfixturevalue(
        "redis_tls" if topology == "standalone" else "redis_cluster_tls"
    )
    caplog.set_level(logging.WARNING)
    untrusting = options(server, tls_ca_file=str(redis_tls_files.other_ca))
    cache, registry = make_cache(server.url, **untrusting, **BREAKER)
    source, fast = served_while_refused(cache)
    assert source.calls == 30 and fast == [None] * 30
    counted = errors(registry)
    # Refused for the certificate; a handshake that overran its deadline on a busy machine
    # counts as a timeout, which is also a refusal, never a success.
    reasons = {reason for _, reason in counted}
    assert "tls" in reasons and reasons <= {"tls", "timeout"}, counted
    assert counted.get(("lookup", "tls"), 0) == (1 if topology == "standalone" else 0)
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text  # the log says why
    assert str(server.password) not in caplog.text


def test_the_certificate_name_is_checked_unless_an_ip_meets_a_private_ca(
    tmp_path: Path, redis_tls_files: TlsFiles
) -> None:
    # A certificate from the trusted CA, for another name than the one connected to.
    password = secrets.token_hex(8)
    with running_redis(tmp_path, password=password, tls=redis_tls_files.wrong_name) as server:
        trusted = {"password": password, "tls_ca_file": str(redis_tls_files.ca), **BREAKER}
        by_name, registry = make_cache(server.url.replace("127.0.0.1", "localhost"), **trusted)
        source, _ = served_while_refused(by_name, requests=12)
        assert {reason for _, reason in errors(registry)} == {"tls"}
        assert source.calls == 12
        # By IP with the private CA: the chain is verified, the name is not (see
        # store._check_hostname), so this server is accepted, by both paths.
        by_ip, registry = make_cache(server.url, **trusted)
        learner, source = next(_learners), Source()
        hits: list[bytes | None] = []

        async def body(cache: Cache) -> None:
            await get(cache, learner, source)
            hits.append(await cache.lookup(learner_id=learner, kind="weaknesses", variant="m1"))

        run(by_ip, body)
        assert hits == [b'{"v":1}'] and source.calls == 1 and errors(registry) == {}


# -- the pieces: URL parsing, reprs, error reasons ------------------------------------------


def test_urls_are_parsed_with_their_credentials_kept_out_of_reprs() -> None:
    target = parse_redis_url("rediss+cluster://coach:p%40ss@10.0.0.1:6379,[::1]:6380/")
    assert (target.tls, target.cluster, target.username, target.password) == (
        True,
        True,
        "coach",
        "p@ss",
    )
    assert target.nodes == (("10.0.0.1", 6379), ("::1", 6380))
    standalone = parse_redis_url("redis://:pw@cache.internal:6390/2?protocol=2")
    assert standalone.nodes == (("cache.internal", 6390),) and standalone.password == "pw"
    assert standalone.url == "redis://cache.internal:6390/2?protocol=2"
    assert "pw" not in repr(standalone) and "p@ss" not in repr(target)
    config = CacheConfig(url="redis://:in-url@h:1/0", password="in-setting")
    assert "in-url" not in repr(config) and "in-setting" not in repr(config)
    with pytest.raises(ValueError, match="host:port") as refused:
        parse_redis_url("redis+cluster://:secret@host-without-port")
    assert "secret" not in str(refused.value)


def test_settings_reach_the_config_and_a_missing_ca_stops_the_start(tmp_path: Path) -> None:
    settings = load_settings(
        redis_url="rediss+cluster://10.0.0.1:6379",
        redis_username="coach",
        redis_password="from-a-secret",
        redis_tls_ca_file=str(tmp_path / "absent.crt"),
    )
    config = CacheConfig.from_settings(settings)
    assert (config.username, config.password, config.tls_ca_file) == (
        "coach",
        "from-a-secret",
        str(tmp_path / "absent.crt"),
    )
    # A CA bundle that is not there (a Secret not mounted) is a deployment error: the replica
    # refuses to start and names the file, rather than run with a cache that never connects.
    with pytest.raises(ValueError, match=r"absent\.crt"):
        Cache(connect_redis(config), config, CollectorRegistry())


def test_error_reasons_name_auth_and_tls_through_the_wrappers() -> None:
    import ssl

    wrapped_tls = redis.ConnectionError("Error 1 connecting")
    wrapped_tls.__context__ = ssl.SSLCertVerificationError(1, "certificate verify failed")
    from redis.exceptions import AuthenticationError, RedisClusterException

    cluster = RedisClusterException("Redis Cluster cannot be connected")
    cluster.__cause__ = AuthenticationError("invalid username-password pair")
    resp_timeout = RespError("127.0.0.1:1: TimeoutError()")
    resp_timeout.__cause__ = TimeoutError()
    assert [
        error_reason(e)
        for e in (
            wrapped_tls,
            cluster,
            RespAuthError("WRONGPASS"),
            resp_timeout,
            redis.ConnectionError("gone"),
            ValueError("x"),
        )
    ] == ["tls", "auth", "auth", "timeout", "connection", "other"]


# -- end to end: a real `skillcoach serve` on a TLS + AUTH Redis ----------------------------


def fast_path_served(metrics_url: str) -> float:
    for line in httpx.get(f"{metrics_url}/metrics").text.splitlines():
        if line.startswith('skillcoach_http_cache_fast_path_total{kind="weaknesses"}'):
            return float(line.split()[-1])
    raise AssertionError("no fast path metric")


@pytest.mark.parametrize("topology", ["standalone", "cluster"])
def test_a_replica_answers_from_the_fast_path_over_tls_and_auth(
    api_bouncer_url: str, keys: Keys, topology: str, request: pytest.FixtureRequest
) -> None:
    server: RedisServer | RedisClusterNodes = request.getfixturevalue(
        "redis_tls" if topology == "standalone" else "redis_cluster_tls"
    )
    assert server.tls is not None and server.password is not None
    env = {
        "cache_enabled": "true",
        "redis_url": server.url,
        "redis_password": server.password,
        "redis_tls_ca_file": str(server.tls.ca_file),
        "cache_warm_learners": "0",
    }
    if isinstance(server, RedisServer) and server.username is not None:
        env["redis_username"] = server.username
    learner = next(_learners)
    read = {"Authorization": f"Bearer {keys.read}"}
    with run_server(api_bouncer_url, **env) as (base, metrics):
        r = httpx.post(
            f"{base}/v1/learners/{learner}/attempts",
            json={
                "attempts": [
                    {
                        "exercise_id": exercise_id(1, 1),
                        "correct": False,
                        "answered_at": "2026-11-27T10:00:00Z",
                    }
                ]
            },
            headers={"Authorization": f"Bearer {keys.write}"},
        )
        assert r.status_code == 201, r.text
        answers = [
            httpx.get(f"{base}/v1/learners/{learner}/weaknesses", headers=read) for _ in range(4)
        ]
        assert {a.status_code for a in answers} == {200}
        assert len({a.content for a in answers}) == 1
        # The write stored its fresh answer; a cold fast connection may miss its first
        # deadline on a busy machine, so at least three of the four come from the fast path.
        assert fast_path_served(metrics) >= 3
        status = httpx.get(f"{base}/v1/model-status", headers=read).json()
        assert status["cache"]["degraded"] is False
