"""Read-your-writes on every replica, even when the version raise does not land: refused by
Redis, lost with a first acknowledgement, or lost in a Redis Cluster failover.

A raise that Redis did not take (or that no replica acknowledged, see
SKILLCOACH_CACHE_VERSION_REPLICAS) is listed in PostgreSQL before the write is answered;
every replica reloads the list every second and serves the listed learners from
PostgreSQL until a repair re-raises the version (docs/redis.md)."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import httpx
import pytest
import redis
from prometheus_client import CollectorRegistry
from redis.cluster import RedisCluster
from sqlalchemy import create_engine

from skillcoach.cache.store import Cache, CacheConfig, connect_redis, version_replicas
from skillcoach.data.cache_bypass import load_bypass, record_bypass
from skillcoach.data.database import Database, PoolConfig
from skillcoach_devstack.processes import free_port
from skillcoach_devstack.redis_cluster import RedisClusterNodes
from tests.fixtures_api import Keys, exercise_id, run_server

_learners = itertools.count(7_300_000)
POOL = PoolConfig(pool_size=2, max_overflow=0, pool_timeout=2.0, pool_recycle=600)
# The replicas reload the bypass list every second (api/app.py's retry loop): waits are
# several times that, on a machine shared with other work.
REFRESH_BOUND = 1.0
MARGIN = 5


# -- in process: two caches on one Redis and one database ---------------------------------
_registries: dict[int, CollectorRegistry] = {}


def make_cache(url: str, db: Database | None, **kw: Any) -> Cache:
    config = CacheConfig(url=url, **kw)
    registry = CollectorRegistry()
    cache = Cache(connect_redis(config), config, registry)
    _registries[id(cache)] = registry
    if db is not None:
        cache.use_database(db)
    return cache


def run(pg_url: str, body: Callable[[Database], Awaitable[None]]) -> None:
    db = Database(pg_url, POOL, statement_timeout_ms=3000, registry=CollectorRegistry())
    try:
        anyio.run(body, db)
    finally:
        db.dispose()


def value(cache: Cache, name: str, **labels: str) -> float:
    got = _registries[id(cache)].get_sample_value(name, labels)
    return 0.0 if got is None else float(got)


def source(data: bytes, version: int, calls: list[int]) -> Callable[[], Awaitable[Any]]:
    async def compute() -> tuple[bytes, int]:
        calls.append(version)
        return data, version

    return compute


def test_the_version_replicas_default_follows_the_url() -> None:
    assert version_replicas("redis://127.0.0.1:6379/0", None) == 0
    assert version_replicas("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", None) == 1
    assert version_replicas("redis+cluster://127.0.0.1:7000", 2) == 2
    assert version_replicas("redis://127.0.0.1:6379/0", 1) == 1


def test_a_refused_raise_is_listed_and_another_cache_bypasses_until_repaired(
    redis_url: str, pg_url: str
) -> None:
    learner = next(_learners)
    calls: list[int] = []

    async def body(db: Database) -> None:
        # `a` wants a replica's acknowledgement that a standalone Redis never gives: each of
        # its raises fails, as when Redis refuses it. `b` is another replica, same Redis.
        a = make_cache(redis_url, db, version_replicas=1)
        b = make_cache(redis_url, db)
        try:

            async def read(cache: Cache, data: bytes, version: int) -> bytes | None:
                return await cache.get_or_compute(
                    learner_id=learner,
                    kind="weaknesses",
                    variant="m1",
                    compute=source(data, version, calls),
                )

            assert await read(b, b"old", 1) == b"old"
            assert await b.lookup(learner_id=learner, kind="weaknesses", variant="m1") == b"old"

            # The write of version 2 commits; its raise fails and is listed in PostgreSQL.
            assert not await a.write_through(learner_id=learner, version=2, entries=[])
            assert (await db.run(load_bypass))[learner] == 2
            assert value(a, "skillcoach_cache_bypass_total", event="recorded") == 1
            assert learner in a.dirty and learner in a.bypass

            # `b` picks the list up on its next refresh and skips Redis for the learner: the
            # fast path misses, the full path computes from the source every time.
            assert await b.refresh_bypass()
            assert value(b, "skillcoach_cache_bypass_learners") == 1
            assert await b.lookup(learner_id=learner, kind="weaknesses", variant="m1") is None
            assert value(b, "skillcoach_cache_fallthrough_total", reason="bypassed") == 1
            calls.clear()
            assert await read(b, b"new", 2) == b"new"
            assert await read(b, b"new", 2) == b"new"
            assert calls == [2, 2]

            # `a` cannot repair (its raises still fail) and keeps the row; `b` can. A failing
            # repair does not hold up the reload: `a` still learns of another's failure.
            other = next(_learners)
            await db.run(record_bypass, learner_id=other, data_version=9)
            await a.retry_invalidations()
            assert (await db.run(load_bypass))[learner] == 2
            assert a.bypass.get(other) == 9
            await b.retry_invalidations()
            listed = await db.run(load_bypass)
            assert learner not in listed and other not in listed
            assert value(b, "skillcoach_cache_bypass_total", event="repaired") == 2
            assert await b.refresh_bypass()
            assert value(b, "skillcoach_cache_bypass_learners") == 0
            # Redis holds version 2 now: the old entry is dead, the next miss stores anew.
            assert await b.lookup(learner_id=learner, kind="weaknesses", variant="m1") is None
            assert value(b, "skillcoach_cache_fallthrough_total", reason="stale") == 1
            assert await read(b, b"new", 2) == b"new"
            assert await b.lookup(learner_id=learner, kind="weaknesses", variant="m1") == b"new"
        finally:
            await a.aclose()
            await b.aclose()

    run(pg_url, body)


def test_postgres_gone_after_the_commit_too_is_counted_and_bypassed_here(
    redis_url: str,
) -> None:
    learner = next(_learners)
    dead_db = f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/nowhere"

    async def body(db: Database) -> None:
        cache = make_cache(redis_url, db, version_replicas=1)
        try:
            assert not await cache.write_through(learner_id=learner, version=5, entries=[])
            assert value(cache, "skillcoach_cache_bypass_total", event="unrecorded") == 1
            assert cache.dirty == {learner: 5}
            assert await cache.lookup(learner_id=learner, kind="weaknesses", variant="m") is None
        finally:
            await cache.aclose()

    run(dead_db, body)


# -- real replicas ---------------------------------------------------------------------------
def post(base: str, keys: Keys, learner: int, correct: bool, **headers: str) -> httpx.Response:
    payload = {
        "attempts": [
            {
                "exercise_id": exercise_id(3, 1),
                "correct": correct,
                "answered_at": (
                    datetime(2026, 6, 1, tzinfo=UTC) + timedelta(seconds=int(correct))
                ).isoformat(),
            }
        ]
    }
    return httpx.post(
        f"{base}/v1/learners/{learner}/attempts",
        json=payload,
        headers={"Authorization": f"Bearer {keys.write}", **headers},
        timeout=10,
    )


def attempts(base: str, keys: Keys, learner: int) -> int:
    r = httpx.get(
        f"{base}/v1/learners/{learner}/weaknesses",
        headers={"Authorization": f"Bearer {keys.read}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return int(r.json()["skills"][0]["attempts"])


def cached(base: str, keys: Keys, learner: int, expected: int) -> None:
    """Read until the answer is in Redis (the second read of a stored entry is a hit)."""
    for _ in range(3):
        assert attempts(base, keys, learner) == expected


def bypass_rows(db_url: str) -> dict[int, int]:
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            return load_bypass(conn)
    finally:
        engine.dispose()


def metric(metrics_url: str, name: str) -> float:
    for line in httpx.get(f"{metrics_url}/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    raise AssertionError(f"no {name}")


def test_a_refused_raise_is_not_served_by_another_replica_after_the_bound(
    api_bouncer_url: str, api_db_url: str, keys: Keys, redis_url: str
) -> None:
    common = {"cache_enabled": "true", "redis_url": redis_url, "cache_warm_learners": "0"}
    # A's raises always fail (a standalone Redis acknowledges no replica): every write of A
    # is a raise Redis did not take. B is an ordinary replica.
    with (
        run_server(api_bouncer_url, cache_version_replicas="1", **common) as (a, a_metrics),
        run_server(api_bouncer_url, **common) as (b, b_metrics),
    ):
        learner = next(_learners)
        assert post(b, keys, learner, True).status_code == 201
        cached(b, keys, learner, 1)
        r = post(a, keys, learner, False)
        assert r.status_code == 201, r.text
        acknowledged = time.monotonic()
        assert metric(a_metrics, 'skillcoach_cache_bypass_total{event="recorded"}') == 1
        # Within the bound B may still answer from its old view; after it, never.
        time.sleep(REFRESH_BOUND * 3)
        assert attempts(b, keys, learner) == 2
        assert time.monotonic() - acknowledged < REFRESH_BOUND * 3 + MARGIN
        # B's repair loop re-raised the version in Redis and unlisted the learner.
        deadline = time.monotonic() + REFRESH_BOUND * MARGIN
        while learner in bypass_rows(api_db_url) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert learner not in bypass_rows(api_db_url)
        assert metric(b_metrics, 'skillcoach_cache_bypass_total{event="repaired"}') >= 1
        assert attempts(b, keys, learner) == 2 and attempts(a, keys, learner) == 2


def test_a_replay_raises_the_version_its_first_attempt_did_not(
    api_bouncer_url: str, keys: Keys, redis_url: str
) -> None:
    common = {"redis_url": redis_url, "cache_warm_learners": "0"}
    # The first attempt is answered by a replica that raises nothing at all (no cache): its
    # raise is lost with nothing listed, as if its acknowledgement and raise were both lost.
    with (
        run_server(api_bouncer_url, cache_enabled="false", **common) as (a, _),
        run_server(api_bouncer_url, cache_enabled="true", **common) as (b, _),
    ):
        learner = next(_learners)
        assert post(b, keys, learner, True).status_code == 201
        cached(b, keys, learner, 1)
        first = post(a, keys, learner, False, **{"Idempotency-Key": "once"})
        assert first.status_code == 201, first.text
        replay = post(b, keys, learner, False, **{"Idempotency-Key": "once"})
        assert replay.status_code == 200 and replay.json()["replayed"] is True
        # Right after the replay's answer: B has raised the version, the old entry is dead.
        assert attempts(b, keys, learner) == 2


# -- a real Redis Cluster failover -----------------------------------------------------------
def master_of(nodes: RedisClusterNodes, key: str) -> tuple[int, int]:
    """(master port, its replica's port) of the node holding `key`."""
    client = RedisCluster(host="127.0.0.1", port=nodes.ports[0])
    try:
        master = int(client.get_node_from_key(key).port)  # type: ignore[no-untyped-call]
    finally:
        client.close()
    replica = next(r for r, m in nodes.replicas().items() if m == master)
    return master, replica


def node(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)


@contextlib.contextmanager
def replication_cut(replica: int) -> Iterator[None]:
    """The replica stays connected to the cluster bus but cannot resync with its master (a
    wrong masterauth after its link is dropped): writes reach the master only, as in the
    moment before asynchronous replication ships them."""
    client = node(replica)
    try:
        client.config_set("masterauth", "not-the-password")
        client.execute_command("CLIENT", "KILL", "TYPE", "master")  # type: ignore[no-untyped-call]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            info = client.info("replication")
            if info.get("master_link_status") == "down":
                break
            time.sleep(0.05)
        assert client.info("replication").get("master_link_status") == "down"
        yield
    finally:
        client.config_set("masterauth", "")
        client.close()


@pytest.mark.parametrize("replication", ["in sync", "cut"])
def test_read_your_writes_across_a_failover(
    api_bouncer_url: str, keys: Keys, redis_cluster: RedisClusterNodes, replication: str
) -> None:
    env = {"cache_enabled": "true", "redis_url": redis_cluster.url, "cache_warm_learners": "0"}
    learner = next(_learners)
    master, replica = master_of(redis_cluster, f"{{l{learner}}}:v")
    with (
        run_server(api_bouncer_url, **env) as (a, _),
        run_server(api_bouncer_url, **env) as (b, _),
    ):
        assert post(a, keys, learner, True).status_code == 201
        cached(b, keys, learner, 1)
        cut = replication_cut(replica) if replication == "cut" else contextlib.nullcontext()
        killed = False
        try:
            with cut:
                r = post(a, keys, learner, False)
                assert r.status_code == 201, r.text
                redis_cluster.kill_node(master)  # right after the 201
                killed = True
                # The replica takes over (cluster-replica-validity-factor 0: even cut off).
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and master in redis_cluster.masters():
                    time.sleep(0.1)
                assert master not in redis_cluster.masters(), "no failover"
                redis_cluster.wait_ok(20, full=False)
            assert replica in redis_cluster.masters()
            # The new master must not bring the entry of the first write back.
            assert attempts(b, keys, learner) == 2
            assert attempts(a, keys, learner) == 2
        finally:
            if killed:
                redis_cluster.start_node(master)
            redis_cluster.wait_ok(30)
