"""Rate limits: the decisions (pure, on a fake clock), the sync through a real Redis shared by
two limiters, the fallback to local counts when Redis stops, and 429 + Retry-After end to end
on the full and the fast path, shared by two app instances."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from sqlalchemy import Engine
from starlette.testclient import TestClient

from skillcoach.api.app import create_app
from skillcoach.api.rate_limit import RateLimiter, Refusal, limit_per_window
from skillcoach.data.api_keys import Scope, create_api_key
from skillcoach.data.database import create_sync_engine
from skillcoach.settings import Settings, load_settings
from tests.fixtures_api import Keys, app_state, cached_settings, exercise_id
from tests.fixtures_services import running_redis

LEARNER = 5151
T0 = "2026-03-01T00:00:00+00:00"
# End to end: an hour's window, so a test never straddles two (see _fresh_window).
WINDOW = 3600.0
LIMIT = 8


def _fresh_window(min_left: float = 120.0) -> None:
    """Wait (bounded) until the current window has min_left seconds to run."""
    left = WINDOW - time.time() % WINDOW
    if left < min_left:
        time.sleep(left + 0.5)


def _until(check: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not within {seconds} s"
        time.sleep(0.05)


# -- decisions ------------------------------------------------------------------------------


def test_limit_per_window_rounds_up_and_zero_is_off() -> None:
    assert limit_per_window(0, 1) == 0
    assert limit_per_window(200, 1) == 200
    assert limit_per_window(2.5, 1) == 3
    assert limit_per_window(0.001, 1) == 1
    assert limit_per_window(8 / 3600, 3600) == 8


def test_a_subject_gets_its_limit_per_window_then_429_until_the_next() -> None:
    now = [1000.25]
    registry = CollectorRegistry()
    limiter = RateLimiter(
        per_key=5, per_client=0, window=2.0, registry=registry, clock=lambda: now[0]
    )
    assert [limiter.check_key(1) for _ in range(10)] == [None] * 10  # 5/s x 2 s
    refusal = limiter.check_key(1)
    # The window is [1000, 1002): 1.75 s left, rounded up.
    assert refusal == Refusal("key", 2)
    assert limiter.check_key(2) is None  # another key is independent
    assert limiter.check_client("10.0.0.1") is None  # no client limit configured
    assert limiter.count("key", 1) == 10  # refusals are not counted
    refused = registry.get_sample_value("skillcoach_rate_limited_total", {"subject": "key"})
    assert refused == 1
    now[0] = 1002.0
    assert limiter.check_key(1) is None


def test_the_client_limit_is_checked_first() -> None:
    now = [50.5]
    limiter = RateLimiter(per_key=3, per_client=2, window=1.0, clock=lambda: now[0])
    assert limiter.check(key_id=7, address="a") is None
    assert limiter.check(key_id=7, address="a") is None
    assert limiter.check(key_id=7, address="a") == Refusal("client", 1)
    assert limiter.count("key", 7) == 2
    assert limiter.check(key_id=7, address="b") is None
    assert limiter.check(key_id=7, address="b") == Refusal("key", 1)
    assert limiter.count("client", "b") == 2  # the client's limit was passed, and counted
    problem = Refusal("key", 1).problem()
    assert problem.status == 429 and problem.headers == {"Retry-After": "1"}


def test_disabled_limiter_admits_everything() -> None:
    limiter = RateLimiter(per_key=0, per_client=0, window=1.0)
    assert not limiter.enabled
    assert all(limiter.check(key_id=1, address="a") is None for _ in range(10_000))
    assert limiter.count("key", 1) == 0


# -- the sync through Redis -----------------------------------------------------------------


def test_two_limiters_share_one_limit_through_redis(redis_url: str) -> None:
    key_id = secrets.randbelow(10**9) + 10**9  # unique in the session's Redis
    clock = time.time

    async def scenario() -> None:
        a_client, b_client = Redis.from_url(redis_url), Redis.from_url(redis_url)
        try:
            a = RateLimiter(
                per_key=10 / WINDOW, per_client=0, window=WINDOW, redis=a_client, clock=clock
            )
            b = RateLimiter(
                per_key=10 / WINDOW, per_client=0, window=WINDOW, redis=b_client, clock=clock
            )
            assert all(a.check_key(key_id) is None for _ in range(6))
            assert await a.sync() and a.shared
            assert b.check_key(key_id) is None  # B has not heard of A's 6 yet
            assert await b.sync()
            assert b.count("key", key_id) == 7
            assert [b.check_key(key_id) is None for _ in range(4)] == [True] * 3 + [False]
            await b.sync()
            await a.sync()
            assert a.count("key", key_id) == 10
            assert a.check_key(key_id) is not None  # A is refused by B's requests too
        finally:
            await a_client.aclose()
            await b_client.aclose()

    _fresh_window()
    anyio.run(scenario)


def test_the_limit_falls_back_to_local_counts_when_redis_stops(tmp_path: Path) -> None:
    key_id = 42

    async def scenario(url: str, stop: Callable[[], object]) -> None:
        client = Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            limiter = RateLimiter(per_key=10 / WINDOW, per_client=0, window=WINDOW, redis=client)
            assert all(limiter.check_key(key_id) is None for _ in range(3))
            assert await limiter.sync() and limiter.shared
            stop()
            assert not await limiter.sync()
            assert not limiter.shared
            # What it knew (3) plus its own new counts: 7 more, then 429.
            assert [limiter.check_key(key_id) is None for _ in range(8)] == [True] * 7 + [False]
            assert not await limiter.sync()
            assert limiter.check_key(key_id) is not None
        finally:
            await client.aclose()

    _fresh_window()
    with running_redis(tmp_path) as server:
        anyio.run(scenario, server.url, server.stop)


# -- end to end -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(api_db_url: str) -> Iterator[Engine]:
    engine = create_sync_engine(api_db_url)
    yield engine
    engine.dispose()


def _new_key(engine: Engine) -> tuple[str, int]:
    with engine.begin() as conn:
        key = create_api_key(
            conn, name=f"rl-{secrets.token_hex(4)}", scopes=frozenset({Scope.READ})
        )
        key_id = conn.exec_driver_sql("SELECT max(id) FROM api_keys").scalar_one()
    return key, int(key_id)


def _settings(database_url: str, redis_url: str, **overrides: Any) -> Settings:
    limits = {"rate_limit_per_key": LIMIT / WINDOW, "rate_limit_window_seconds": WINDOW}
    return cached_settings(database_url, redis_url, **{**limits, **overrides})


def _refused(client: TestClient, subject: str) -> float:
    value = client.app.state.metrics_registry.get_sample_value(  # type: ignore[attr-defined]
        "skillcoach_rate_limited_total", {"subject": subject}
    )
    return float(value or 0.0)


def _assert_429(r: Any) -> None:
    assert r.status_code == 429, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == 429 and "rate limit" in body["detail"]
    retry_after = int(r.headers["retry-after"])
    assert 1 <= retry_after <= WINDOW


@pytest.fixture(scope="module")
def two_apps(
    api_bouncer_url: str, redis_url: str, keys: Keys
) -> Iterator[tuple[TestClient, TestClient]]:
    settings = _settings(api_bouncer_url, redis_url)
    with (
        TestClient(create_app(settings), raise_server_exceptions=False) as a,
        TestClient(create_app(settings), raise_server_exceptions=False) as b,
    ):
        # A learner with cached answers, so GET weaknesses takes the fast path.
        r = a.post(
            f"/v1/learners/{LEARNER}/attempts",
            json={
                "attempts": [
                    {"exercise_id": exercise_id(1, 0), "correct": False, "answered_at": T0}
                ]
            },
            headers={"Authorization": f"Bearer {keys.write}"},
        )
        assert r.status_code == 201, r.text
        yield a, b


def test_two_app_instances_share_a_key_limit_through_redis(
    two_apps: tuple[TestClient, TestClient], engine: Engine, redis_url: str
) -> None:
    a, b = two_apps
    _fresh_window()
    key, key_id = _new_key(engine)
    auth = {"Authorization": f"Bearer {key}"}
    weak = f"/v1/learners/{LEARNER}/weaknesses"
    fast = app_state(a).registry.get_sample_value(
        "skillcoach_http_cache_fast_path_total", {"kind": "weaknesses"}
    )
    for path in ("/v1/skills", weak, weak, weak, weak):
        assert a.get(path, headers=auth).status_code == 200
    # The fast path served (and counted) some of them.
    after = app_state(a).registry.get_sample_value(
        "skillcoach_http_cache_fast_path_total", {"kind": "weaknesses"}
    )
    assert (after or 0) > (fast or 0)
    store = redis.Redis.from_url(redis_url)
    window = int(time.time() // WINDOW)
    rkey = f"skillcoach:rl:k:{key_id}:{window}"
    try:
        _until(lambda: int(store.get(rkey) or 0) == 5, 10)  # A reported its 5
        assert b.get(weak, headers=auth).status_code == 200
        _until(lambda: app_state(b).limiter.count("key", key_id) == 6, 10)
        assert b.get("/v1/skills", headers=auth).status_code == 200
        assert b.get(weak, headers=auth).status_code == 200
        # 8 across both instances: the next is refused, on the fast path's route and the other.
        _assert_429(b.get(weak, headers=auth))
        _assert_429(b.get("/v1/skills", headers=auth))
        _until(lambda: int(store.get(rkey) or 0) == LIMIT, 10)
        _until(lambda: app_state(a).limiter.count("key", key_id) == LIMIT, 10)
        _assert_429(a.get(weak, headers=auth))
        assert int(store.get(rkey) or 0) == LIMIT  # refusals are not counted
    finally:
        store.close()
    assert _refused(a, "key") >= 1 and _refused(b, "key") >= 2


def test_the_limit_holds_per_replica_when_redis_is_stopped(
    api_bouncer_url: str, engine: Engine, tmp_path: Path
) -> None:
    _fresh_window()
    key, key_id = _new_key(engine)
    auth = {"Authorization": f"Bearer {key}"}
    with running_redis(tmp_path) as server:
        settings = _settings(api_bouncer_url, server.url)
        with TestClient(create_app(settings), raise_server_exceptions=False) as c:
            state = app_state(c)
            for _ in range(3):
                assert c.get("/v1/skills", headers=auth).status_code == 200
            _until(lambda: state.limiter.shared, 10)
            server.stop()
            _until(lambda: not state.limiter.shared, 10)
            for _ in range(LIMIT - 3):
                assert c.get("/v1/skills", headers=auth).status_code == 200
            _assert_429(c.get("/v1/skills", headers=auth))
            assert state.limiter.count("key", key_id) == LIMIT
            assert _refused(c, "key") == 1


def test_a_client_address_limit_without_redis(api_bouncer_url: str, keys: Keys) -> None:
    _fresh_window()
    settings = load_settings(
        database_url=api_bouncer_url,
        environment="test",
        pool_size=4,
        metrics_port=0,
        rate_limit_per_client=3 / WINDOW,
        rate_limit_window_seconds=WINDOW,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        assert app_state(c).cache is None
        auth = {"Authorization": f"Bearer {keys.read}"}
        assert [c.get("/v1/skills", headers=auth).status_code for _ in range(3)] == [200] * 3
        r = c.get("/v1/skills", headers=auth)
        _assert_429(r)
        assert "client address" in r.json()["detail"]
        # Counted per client before the key: an unknown key is refused by the limit too.
        _assert_429(c.get("/v1/skills", headers={"Authorization": "Bearer sk_" + "A" * 43}))
        assert _refused(c, "client") == 2 and _refused(c, "key") == 0
        # Unauthenticated routes are not limited.
        assert c.get("/healthz").status_code == 200
