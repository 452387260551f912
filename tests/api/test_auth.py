"""Authentication end to end (real PostgreSQL through PgBouncer, real Redis for the fast path):
scopes, revocation within the key cache's TTL on both paths, expiry, every /v1 route closed
without a key, malformed tokens refused before any lookup, and unknown tokens that cannot
evict a valid key."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine
from starlette.routing import Route
from starlette.testclient import TestClient

import skillcoach.api.auth
import skillcoach.api.hit_path
import skillcoach.api.state
from skillcoach.api.app import create_app
from skillcoach.api.auth import KeyCache, KeyUsage, flush_usage
from skillcoach.data.api_keys import (
    ApiKey,
    Scope,
    create_api_key,
    hash_key,
    revoke_api_keys,
)
from skillcoach.data.database import create_sync_engine
from tests.fixtures_api import Keys, app_state, cached_settings, exercise_id, give_two_answers

TTL = 1.0  # the app's api_key_cache_seconds here
LEARNER = 4242
T0 = "2026-03-01T00:00:00+00:00"


@pytest.fixture(scope="module")
def engine(api_db_url: str) -> Iterator[Engine]:
    engine = create_sync_engine(api_db_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def app_client(api_bouncer_url: str, redis_url: str, keys: Keys) -> Iterator[TestClient]:
    """An app with the cache (so the fast path runs) and a 1 s key cache; no default key."""
    settings = cached_settings(api_bouncer_url, redis_url, api_key_cache_seconds=TTL)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        give_two_answers(c, LEARNER, keys.write)
        yield c


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _new_key(engine: Engine, scopes: set[Scope], **kw: Any) -> str:
    with engine.begin() as conn:
        return create_api_key(
            conn, name=f"t-{secrets.token_hex(4)}", scopes=frozenset(scopes), **kw
        )


def _fast_hits(client: TestClient) -> float:
    value = client.app.state.metrics_registry.get_sample_value(  # type: ignore[attr-defined]
        "skillcoach_http_cache_fast_path_total", {"kind": "weaknesses"}
    )
    return float(value or 0.0)


def _fallthrough(client: TestClient, reason: str) -> float:
    value = client.app.state.metrics_registry.get_sample_value(  # type: ignore[attr-defined]
        "skillcoach_cache_fallthrough_total", {"reason": reason}
    )
    return float(value or 0.0)


def _until(check: Callable[[], bool], seconds: float) -> float:
    """Poll until check() holds; how long it took. Fails at the deadline."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < seconds, f"not within {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts of the database lookups and hashes authentication makes."""
    counts = {"lookup": 0, "hash": 0, "refresh": 0}
    real_lookup, real_hash = skillcoach.api.state.lookup_key, skillcoach.api.state.hash_key
    real_refresh = skillcoach.api.auth.lookup_keys

    def lookup(*args: Any, **kwargs: Any) -> ApiKey | None:
        counts["lookup"] += 1
        return real_lookup(*args, **kwargs)

    def hashed(token: str) -> str:
        counts["hash"] += 1
        return real_hash(token)

    def refresh(*args: Any, **kwargs: Any) -> dict[str, ApiKey]:
        counts["refresh"] += 1
        return real_refresh(*args, **kwargs)

    monkeypatch.setattr(skillcoach.api.state, "lookup_key", lookup)
    monkeypatch.setattr(skillcoach.api.auth, "lookup_keys", refresh)
    monkeypatch.setattr(skillcoach.api.state, "hash_key", hashed)
    monkeypatch.setattr(skillcoach.api.hit_path, "hash_key", hashed)
    return counts


def test_read_only_key_cannot_write_and_write_only_key_cannot_read(
    app_client: TestClient, engine: Engine, keys: Keys
) -> None:
    body = {"attempts": [{"exercise_id": exercise_id(3, 0), "correct": True, "answered_at": T0}]}
    r = app_client.post(f"/v1/learners/{LEARNER}/attempts", json=body, headers=_bearer(keys.read))
    assert r.status_code == 403 and "'write'" in r.json()["detail"]
    write_only = _new_key(engine, {Scope.WRITE})
    for path in (f"/v1/learners/{LEARNER}/weaknesses", "/v1/skills", "/v1/model-status"):
        r = app_client.get(path, headers=_bearer(write_only))
        assert r.status_code == 403, (path, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    r = app_client.post(f"/v1/learners/{LEARNER}/attempts", json=body, headers=_bearer(write_only))
    assert r.status_code == 201, r.text


def test_a_revoked_key_is_refused_on_both_paths_within_the_cache_ttl(
    app_client: TestClient, engine: Engine
) -> None:
    key = _new_key(engine, {Scope.READ})
    weak = f"/v1/learners/{LEARNER}/weaknesses"
    assert app_client.get(weak, headers=_bearer(key)).status_code == 200
    before = _fast_hits(app_client)
    assert app_client.get(weak, headers=_bearer(key)).status_code == 200
    assert _fast_hits(app_client) == before + 1  # this key was being served by the fast path
    assert app_client.get("/v1/skills", headers=_bearer(key)).status_code == 200
    with engine.begin() as conn:
        assert len(revoke_api_keys(conn, ident=_key_id(conn, key))) == 1
    # The stated bound is TTL; the deadline leaves room for a busy machine.
    took_fast = _until(lambda: app_client.get(weak, headers=_bearer(key)).status_code == 401, 5)
    took_full = _until(
        lambda: app_client.get("/v1/skills", headers=_bearer(key)).status_code == 401, 5
    )
    assert took_fast < TTL * 5 and took_full < TTL * 5
    r = app_client.get(weak, headers=_bearer(key))
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert "revoked" in r.json()["detail"]


def _key_id(conn: Any, key: str) -> str:
    row = conn.exec_driver_sql(
        "SELECT id FROM api_keys WHERE key_hash = %(h)s", {"h": hash_key(key)}
    ).one()
    return str(row.id)


def test_a_key_in_steady_use_never_misses_the_cache(
    app_client: TestClient, engine: Engine, lookups: dict[str, int]
) -> None:
    """The refresh renews its entry before the TTL ends: no request after the first looks the
    key up itself, and every one takes the fast path (before, each TTL ended in a miss for
    every request in flight: hundreds at once on a busy replica)."""
    key = _new_key(engine, {Scope.READ})
    weak = f"/v1/learners/{LEARNER}/weaknesses"
    assert app_client.get(weak, headers=_bearer(key)).status_code == 200
    assert lookups["lookup"] == 1
    before, sent = _fast_hits(app_client), 0
    start = time.monotonic()
    while time.monotonic() - start < 4 * TTL:
        assert app_client.get(weak, headers=_bearer(key)).status_code == 200
        sent += 1
        time.sleep(0.02)
    assert lookups["lookup"] == 1, "a request looked its key up again"
    assert _fast_hits(app_client) - before == sent
    assert lookups["refresh"] >= 3  # about every 0.5 TTL


def test_requests_that_miss_on_one_key_together_share_one_lookup(
    app_client: TestClient, engine: Engine, lookups: dict[str, int]
) -> None:
    state = app_state(app_client)
    key_hash = hash_key(_new_key(engine, {Scope.READ}))

    async def burst() -> list[ApiKey | None]:
        return list(await asyncio.gather(*(state.find_key(key_hash) for _ in range(20))))

    portal = app_client.portal
    assert portal is not None
    found = portal.call(burst)
    assert lookups["lookup"] == 1
    assert found[0] is not None and all(f == found[0] for f in found)
    assert state.keys.get(key_hash) == (True, found[0]) and state.key_lookups == {}


def _burst_while_lookups_are_slow(
    client: TestClient, key: str, monkeypatch: pytest.MonkeyPatch
) -> list[int]:
    """Ten concurrent reads with `key` while each key lookup takes half a second: statuses."""
    counted = skillcoach.api.state.lookup_key

    def slow(*args: Any, **kwargs: Any) -> ApiKey | None:
        time.sleep(0.5)  # in the worker thread: the lookup is under way for half a second
        return counted(*args, **kwargs)

    monkeypatch.setattr(skillcoach.api.state, "lookup_key", slow)
    weak = f"/v1/learners/{LEARNER}/weaknesses"
    with ThreadPoolExecutor(max_workers=10) as pool:
        return list(
            pool.map(lambda _: client.get(weak, headers=_bearer(key)).status_code, range(10))
        )


def test_requests_for_a_key_being_looked_up_wait_for_it_on_the_fast_path(
    app_client: TestClient,
    engine: Engine,
    keys: Keys,
    lookups: dict[str, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A replica that has not cached a key yet (just started, under load): the first request
    looks it up on the full path; the others arriving meanwhile wait for that lookup and are
    then answered by the fast path, instead of all taking the full path and its request gate."""
    weak = f"/v1/learners/{LEARNER}/weaknesses"
    assert app_client.get(weak, headers=_bearer(keys.read)).status_code == 200  # entry cached
    key = _new_key(engine, {Scope.READ})
    before = lookups["lookup"], _fast_hits(app_client), _fallthrough(app_client, "key")
    assert _burst_while_lookups_are_slow(app_client, key, monkeypatch) == [200] * 10
    assert lookups["lookup"] - before[0] == 1
    assert _fast_hits(app_client) - before[1] == 9  # all but the one that looked it up
    # ... which is the one counted as taking the full path for its key.
    assert _fallthrough(app_client, "key") - before[2] == 1


def test_a_burst_for_a_key_whose_entry_lapsed_shares_one_lookup_started_on_the_fast_path(
    app_client: TestClient,
    engine: Engine,
    lookups: dict[str, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its refresh failed (the database was busy), so the entry of a key in use ended: the
    requests that come back with it start one lookup from the fast path, wait for it there,
    and are all answered by the fast path; none takes the full path and its request gate."""
    state = app_state(app_client)
    saved = state.keys
    now = [0.0]
    # A key cache the replica's refresh task does not know: nothing renews its entries.
    state.keys = KeyCache(TTL, clock=lambda: now[0])
    try:
        key = _new_key(engine, {Scope.READ})
        weak = f"/v1/learners/{LEARNER}/weaknesses"
        assert app_client.get(weak, headers=_bearer(key)).status_code == 200  # cached
        now[0] = 10 * TTL  # the entry ended
        before = lookups["lookup"], _fast_hits(app_client), _fallthrough(app_client, "key")
        assert _burst_while_lookups_are_slow(app_client, key, monkeypatch) == [200] * 10
        assert lookups["lookup"] - before[0] == 1
        assert _fast_hits(app_client) - before[1] == 10
        assert _fallthrough(app_client, "key") - before[2] == 0
        assert not state.keys.lapsed(hash_key(key))
    finally:
        state.keys = saved


def test_only_a_valid_key_whose_entry_ended_is_lapsed() -> None:
    now = [0.0]
    cache = KeyCache(10, clock=lambda: now[0])
    good = ApiKey(1, "good", frozenset({Scope.READ}))
    cache.put("good", good)
    cache.put("unknown", None)
    now[0] = 11.0
    assert cache.get("good") == (False, None) and cache.lapsed("good")
    assert cache.get("unknown") == (False, None) and not cache.lapsed("unknown")
    assert not cache.lapsed("never-seen")
    cache.put("good", None)  # looked up again: revoked meanwhile
    assert not cache.lapsed("good")
    cache.put("again", good)
    now[0] = 30.0
    assert cache.get("again") == (False, None) and cache.lapsed("again")
    cache.put("again", good)  # looked up again: valid
    assert not cache.lapsed("again") and cache.get("again") == (True, good)


def test_the_refresh_renews_keys_in_use_and_refuses_revoked_ones() -> None:
    now = [0.0]
    cache = KeyCache(10, clock=lambda: now[0], keep_fresh=30)
    a, b = (ApiKey(i, n, frozenset({Scope.READ})) for i, n in enumerate("ab"))
    cache.put("a", a)
    cache.put("b", b)
    cache.put("idle", ApiKey(3, "idle", frozenset({Scope.READ})))
    assert cache.take_used() == []  # nothing served yet
    assert cache.get("a") == (True, a) and cache.get("b") == (True, b)
    assert sorted(cache.take_used()) == ["a", "b"]
    now[0] = 6.0
    cache.refreshed(["a", "b"], {"a": a})  # b was revoked meanwhile
    assert cache.get("b") == (True, None)
    assert cache.take_used() == ["a"]  # b is no valid key any more
    now[0] = 12.0  # past the first entries' TTL
    assert cache.get("idle") == (False, None)  # never served: left to end
    # a is not served again, but was within keep_fresh: still refreshed, so its client
    # finds it cached when it comes back.
    for t in (12.0, 18.0, 24.0, 30.0):
        now[0] = t
        assert cache.take_used() == ["a"]
        cache.refreshed(["a"], {"a": a})
    now[0] = 36.5  # served last at 0: past keep_fresh
    assert cache.take_used() == []
    now[0] = 40.5
    assert cache.get("a") == (False, None)  # a renewal lasts one TTL, no more


def test_an_expired_key_is_refused_at_once_from_the_cache(
    app_client: TestClient, engine: Engine
) -> None:
    state = app_state(app_client)
    saved = state.keys
    # A key cache that would keep the key for an hour: only its expiry can refuse it.
    state.keys = KeyCache(3600)
    try:
        expires = datetime.now(UTC) + timedelta(seconds=2)
        key = _new_key(engine, {Scope.READ}, expires_at=expires)
        weak = f"/v1/learners/{LEARNER}/weaknesses"
        assert app_client.get(weak, headers=_bearer(key)).status_code == 200
        before = _fast_hits(app_client)
        assert app_client.get(weak, headers=_bearer(key)).status_code == 200
        assert _fast_hits(app_client) == before + 1
        time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.1)
        assert app_client.get(weak, headers=_bearer(key)).status_code == 401
        assert app_client.get("/v1/skills", headers=_bearer(key)).status_code == 401
    finally:
        state.keys = saved


def _v1_requests(client: TestClient) -> list[tuple[str, str]]:
    """(method, path) of every /v1 route of the app, path parameters filled in."""
    found = []
    for route in client.app.routes:  # type: ignore[attr-defined]
        if isinstance(route, Route) and route.path.startswith("/v1/"):
            path = route.path
            for name in route.param_convertors:
                path = path.replace(f"{{{name}}}", "1")
            for method in sorted(route.methods or ()):
                if method != "HEAD":
                    found.append((method, path))
    return found


def test_every_v1_route_refuses_a_request_without_a_valid_key(
    app_client: TestClient, lookups: dict[str, int]
) -> None:
    requests = _v1_requests(app_client)
    # The weaknesses, recommendations and attempts routes, the catalog and model status.
    assert len(requests) >= 6 and any(m == "POST" for m, _ in requests), requests
    malformed = ("", "Basic dXNlcjpwdw==", "Bearer", "Bearer sk_wrong", "Bearer " + "a" * 46)
    for method, path in requests:
        r = app_client.request(method, path)
        assert r.status_code == 401, (method, path, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.headers["www-authenticate"] == 'Bearer realm="skillcoach"'
        for header in malformed:
            r = app_client.request(method, path, headers={"Authorization": header})
            assert r.status_code == 401, (method, path, header, r.text)
    # None of these came anywhere near a hash or the database.
    assert (lookups["lookup"], lookups["hash"]) == (0, 0)


def test_malformed_tokens_never_reach_the_database(
    app_client: TestClient, lookups: dict[str, int]
) -> None:
    good = "sk_" + secrets.token_urlsafe(32)
    for token in (good[:-1], good + "x", good.replace("sk_", "SK_"), good[:20] + "/" + good[21:]):
        for path in (f"/v1/learners/{LEARNER}/weaknesses", "/v1/skills"):
            r = app_client.get(path, headers=_bearer(token))
            assert r.status_code == 401 and "malformed" in r.json()["detail"], r.text
    assert (lookups["lookup"], lookups["hash"]) == (0, 0)
    # The same path with a well-formed unknown token does ask the database, once.
    assert app_client.get("/v1/skills", headers=_bearer(good)).status_code == 401
    assert app_client.get("/v1/skills", headers=_bearer(good)).status_code == 401
    assert lookups["lookup"] == 1


def test_a_flood_of_unknown_tokens_does_not_evict_a_valid_key() -> None:
    now = [0.0]
    cache = KeyCache(60, clock=lambda: now[0])
    valid = ApiKey(1, "valid", frozenset({Scope.READ}))
    cache.put(hash_key("valid"), valid)
    for i in range(25_000):
        cache.put(hash_key(f"junk-{i}"), None)
    assert cache.get(hash_key("valid")) == (True, valid)
    valid_n, unknown_n = cache.sizes()
    assert valid_n == 1 and unknown_n == 10_000  # bounded
    # The newest unknown tokens are remembered, the oldest were dropped.
    assert cache.get(hash_key("junk-24999")) == (True, None)
    assert cache.get(hash_key("junk-0")) == (False, None)
    now[0] = 61.0
    assert cache.get(hash_key("valid")) == (False, None)  # the TTL still applies


def test_valid_keys_are_evicted_least_recently_used_first() -> None:
    cache = KeyCache(60, valid_entries=2)
    a, b, c = (ApiKey(i, n, frozenset({Scope.READ})) for i, n in enumerate("abc"))
    cache.put("a", a)
    cache.put("b", b)
    assert cache.get("a") == (True, a)  # a is now the most recently used
    cache.put("c", c)
    assert cache.get("b") == (False, None)
    assert cache.get("a") == (True, a) and cache.get("c") == (True, c)


def test_an_expired_key_is_refused_by_the_cache_before_its_ttl() -> None:
    wall = [1000.0]
    cache = KeyCache(3600, wall=lambda: wall[0])
    key = ApiKey(1, "k", frozenset({Scope.READ}), expires=1010.0)
    cache.put("h", key)
    assert cache.get("h") == (True, key)
    wall[0] = 1010.0
    assert cache.get("h") == (True, None)


def test_unknown_tokens_in_the_app_do_not_evict_a_valid_key(
    app_client: TestClient, keys: Keys, lookups: dict[str, int]
) -> None:
    state = app_state(app_client)
    saved = state.keys
    state.keys = KeyCache(3600)  # the flood, not a TTL, is what could drop the key here
    try:
        assert app_client.get("/v1/skills", headers=_bearer(keys.read)).status_code == 200
        assert lookups["lookup"] == 1
        junk = ["sk_" + secrets.token_urlsafe(32) for _ in range(200)]
        for token in junk:
            assert app_client.get("/v1/skills", headers=_bearer(token)).status_code == 401
        assert lookups["lookup"] == 201
        # 20,000 more unknown tokens, put as authenticate puts each one it looked up.
        for i in range(20_000):
            state.keys.put(hash_key(f"flood-{i}"), None)
        weak = f"/v1/learners/{LEARNER}/weaknesses"
        for path in ("/v1/skills", weak):
            assert app_client.get(path, headers=_bearer(keys.read)).status_code == 200
        assert lookups["lookup"] == 201  # the valid key was still cached
    finally:
        state.keys = saved


def test_last_use_is_noted_on_both_paths_and_flushed_in_one_batch(
    app_client: TestClient, engine: Engine
) -> None:
    state = app_state(app_client)
    key = _new_key(engine, {Scope.READ})
    with engine.begin() as conn:
        key_id = int(_key_id(conn, key))
    started = datetime.now(UTC)
    weak = f"/v1/learners/{LEARNER}/weaknesses"
    assert app_client.get(weak, headers=_bearer(key)).status_code == 200  # full path
    noted = state.usage.pending[key_id]
    before = _fast_hits(app_client)
    assert app_client.get(weak, headers=_bearer(key)).status_code == 200
    assert _fast_hits(app_client) == before + 1
    assert state.usage.pending[key_id] >= noted  # the fast path noted it too
    portal = app_client.portal
    assert portal is not None
    assert portal.call(flush_usage, state.db, state.usage) >= 1
    assert key_id not in state.usage.pending
    with engine.begin() as conn:
        used = conn.exec_driver_sql(
            "SELECT last_used_at FROM api_keys WHERE id = %(i)s", {"i": key_id}
        ).scalar_one()
    assert used is not None and started - timedelta(seconds=1) <= used <= datetime.now(UTC)


def test_a_failed_flush_keeps_the_newest_times() -> None:
    wall = [10.0]
    usage = KeyUsage(wall=lambda: wall[0])
    usage.seen(1)
    batch = usage.take()
    wall[0] = 20.0
    usage.seen(2)
    usage.put_back(batch)
    usage.put_back({2: 15.0})
    assert usage.pending == {1: 10.0, 2: 20.0}
