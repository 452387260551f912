"""Two real replicas sharing PostgreSQL (through PgBouncer) and Redis: a write through one
invalidates the learner's cached answers on both; Redis stopped entirely costs no request."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from skillcoach_devstack.processes import free_port
from skillcoach_devstack.redis import RedisServer
from skillcoach_devstack.redis_cluster import RedisClusterNodes
from tests.fixtures_api import Keys, exercise_id, run_server

_learners = itertools.count(880_000)


def post(base: str, keys: Keys, learner: int, correct: bool) -> None:
    body = {
        "attempts": [
            {
                "exercise_id": exercise_id(3, 1),
                "correct": correct,
                "answered_at": datetime.now(UTC).isoformat(),
            }
        ]
    }
    r = httpx.post(
        f"{base}/v1/learners/{learner}/attempts",
        json=body,
        headers={"Authorization": f"Bearer {keys.write}"},
    )
    assert r.status_code == 201, r.text


def weak(base: str, keys: Keys, learner: int) -> dict[str, object]:
    r = httpx.get(
        f"{base}/v1/learners/{learner}/weaknesses", headers={"Authorization": f"Bearer {keys.read}"}
    )
    assert r.status_code == 200, r.text
    return dict(r.json()["skills"][0])


def hits(metrics_url: str) -> float:
    for line in httpx.get(f"{metrics_url}/metrics").text.splitlines():
        if line.startswith('skillcoach_cache_hits_total{kind="weaknesses"}'):
            return float(line.split()[-1])
    raise AssertionError("no cache hit metric")


@pytest.mark.parametrize("topology", ["standalone", "cluster"])
def test_a_write_on_one_replica_invalidates_both(
    api_bouncer_url: str, keys: Keys, topology: str, request: pytest.FixtureRequest
) -> None:
    url = (
        request.getfixturevalue("redis_url")
        if topology == "standalone"
        else request.getfixturevalue("redis_cluster").url
    )
    env = {"cache_enabled": "true", "redis_url": url}
    with (
        run_server(api_bouncer_url, **env) as (a, a_metrics),
        run_server(api_bouncer_url, **env) as (b, b_metrics),
    ):
        learner = next(_learners)
        post(a, keys, learner, True)
        first = weak(b, keys, learner)
        assert weak(b, keys, learner) == first and weak(a, keys, learner) == first
        # Both serve it from Redis. A first call on a cold client can exceed the 50 ms socket
        # timeout on a busy machine and fall back to PostgreSQL (same answer, counted as a
        # miss), so each replica gets a few reads to show a hit.
        for url, metrics in ((a, a_metrics), (b, b_metrics)):
            for _ in range(5):
                if hits(metrics) >= 1:
                    break
                assert weak(url, keys, learner) == first
            assert hits(metrics) >= 1, f"{url} never served the entry from Redis"
        post(a, keys, learner, False)  # through A...
        after = weak(b, keys, learner)  # ...and B answers the new data at once
        assert after["attempts"] == 2 and after["correct"] == 1
        assert weak(a, keys, learner) == after


def test_redis_stopped_entirely_then_back(
    api_bouncer_url: str, keys: Keys, tmp_path_factory: pytest.TempPathFactory
) -> None:
    redis = RedisServer(port=free_port(), data_dir=tmp_path_factory.mktemp("redis-outage"))
    redis.start(timeout=10)
    try:
        env = {"cache_enabled": "true", "redis_url": redis.url, "cache_warm_learners": "0"}
        with run_server(api_bouncer_url, **env) as (base, metrics):
            learner = next(_learners)
            post(base, keys, learner, True)
            weak(base, keys, learner)
            weak(base, keys, learner)
            assert hits(metrics) >= 1  # the refresh after the write may already have stored it
            redis.stop()

            def status() -> dict[str, Any]:
                auth = {"Authorization": f"Bearer {keys.read}"}
                body: dict[str, Any] = httpx.get(f"{base}/v1/model-status", headers=auth).json()
                return body

            # Every request still succeeds, from PostgreSQL; the breaker opens once the
            # failures have lasted breaker_min_span (0.5 s), not on the first burst.
            deadline = time.monotonic() + 10
            for i in itertools.count():
                if i == 10:
                    post(base, keys, learner, False)
                weak(base, keys, learner)
                if i >= 10 and (status()["cache"]["degraded"] or time.monotonic() > deadline):
                    break
                time.sleep(0.02)
            assert status()["cache"]["degraded"] is True
            ready = httpx.get(f"{base}/readyz")
            assert ready.status_code == 200 and ready.json()["checks"]["cache"] == "degraded"
            redis.start(timeout=10)
            deadline = time.monotonic() + 15
            before = hits(metrics)
            while hits(metrics) < before + 5 and time.monotonic() < deadline:
                weak(base, keys, learner)
                time.sleep(0.05)
            assert hits(metrics) >= before + 5  # the hit rate recovered
            assert weak(base, keys, learner)["attempts"] == 2  # and nothing stale came back
    finally:
        redis.stop()


def test_a_master_killed_during_reads_costs_no_request(
    api_bouncer_url: str, keys: Keys, redis_cluster: RedisClusterNodes
) -> None:
    env = {"cache_enabled": "true", "redis_url": redis_cluster.url, "cache_warm_learners": "0"}
    learners = [next(_learners) for _ in range(12)]  # spread over the three masters' slots
    failures: list[int] = []
    with run_server(api_bouncer_url, **env) as (base, metrics):
        for learner in learners:
            post(base, keys, learner, True)

        def read_all() -> None:
            for learner in learners:
                r = httpx.get(
                    f"{base}/v1/learners/{learner}/weaknesses",
                    headers={"Authorization": f"Bearer {keys.read}"},
                )
                if r.status_code != 200:
                    failures.append(r.status_code)

        read_all()
        victim = redis_cluster.masters()[0]
        redis_cluster.kill_node(victim)
        try:
            killed_at = time.monotonic()
            while time.monotonic() - killed_at < 8.0:  # the failover window and beyond
                read_all()
            redis_cluster.wait_ok(15, full=False)
            before = hits(metrics)
            for _ in range(3):
                read_all()
            assert hits(metrics) >= before + len(learners)  # the cache works again
        finally:
            redis_cluster.start_node(victim)
            redis_cluster.wait_ok(20)
    assert failures == []


def counter(metrics_url: str, name: str) -> float:
    for line in httpx.get(f"{metrics_url}/metrics").text.splitlines():
        if line.startswith(f'{name}{{kind="weaknesses"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"no {name}")


def test_a_write_stores_its_fresh_answers_before_the_201(
    api_bouncer_url: str, keys: Keys, redis_url: str
) -> None:
    env = {"cache_enabled": "true", "redis_url": redis_url, "cache_warm_learners": "0"}
    with run_server(api_bouncer_url, **env) as (base, metrics):
        learner = next(_learners)
        for n, correct in enumerate((True, False, True), start=1):
            post(base, keys, learner, correct)
            misses = counter(metrics, "skillcoach_cache_misses_total")
            # Right after the 201: a hit, and already the new data (read-your-writes).
            assert weak(base, keys, learner)["attempts"] == n
            assert counter(metrics, "skillcoach_cache_misses_total") == misses


def test_hits_take_the_fast_path_but_only_for_known_keys(
    api_bouncer_url: str, keys: Keys, redis_url: str
) -> None:
    env = {"cache_enabled": "true", "redis_url": redis_url, "cache_warm_learners": "0"}
    with run_server(api_bouncer_url, **env) as (base, metrics):
        learner = next(_learners)
        post(base, keys, learner, True)
        first = weak(base, keys, learner)
        for _ in range(3):
            assert weak(base, keys, learner) == first
        fast = [
            float(line.split()[-1])
            for line in httpx.get(f"{metrics}/metrics").text.splitlines()
            if line.startswith('skillcoach_http_cache_fast_path_total{kind="weaknesses"}')
        ]
        assert fast and fast[0] >= 3  # the first read may hit too (refresh after the write)
        url = f"{base}/v1/learners/{learner}/weaknesses"
        assert httpx.get(url, headers={"Authorization": "Bearer sk_wrong"}).status_code == 401
        assert httpx.get(url).status_code == 401
        # An unusual query goes the full way and still answers correctly.
        r = httpx.get(
            url, params={"limit": 1, "x": 2}, headers={"Authorization": f"Bearer {keys.read}"}
        )
        assert r.status_code == 200 and len(r.json()["skills"]) == 1
