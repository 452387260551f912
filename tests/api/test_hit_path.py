"""The fast path's misses: requests that find the same entry gone together wait for the one
computation under way on the fast path, not at the request gate (a cache stampede)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from starlette.testclient import TestClient

from skillcoach.answers.bodies import weaknesses_variant
from skillcoach.answers.learner_answers import LearnerAnswers
from skillcoach.api.app import create_app
from skillcoach.cache.store import _keys
from skillcoach.limits import WEAKNESSES_LIMIT
from tests.fixtures_api import Keys, app_state, cached_settings, give_two_answers

LEARNER = 4343
WEAK = f"/v1/learners/{LEARNER}/weaknesses"


@pytest.fixture(scope="module")
def client(api_bouncer_url: str, redis_url: str, keys: Keys) -> Iterator[TestClient]:
    settings = cached_settings(api_bouncer_url, redis_url)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        c.headers["Authorization"] = f"Bearer {keys.read}"
        give_two_answers(c, LEARNER, keys.write)
        yield c


def _sample(client: TestClient, name: str, labels: dict[str, str]) -> float:
    registry = client.app.state.metrics_registry  # type: ignore[attr-defined]
    return float(registry.get_sample_value(name, labels) or 0.0)


def _drop_entry(client: TestClient, redis_url: str) -> None:
    """The learner's cached weaknesses end (as at the end of their TTL); its version stays."""
    served = app_state(client).live_model.current
    assert served is not None
    variant = weaknesses_variant(served.version, WEAKNESSES_LIMIT.default)
    _, entry_key, _ = _keys(LEARNER, "weaknesses", variant)
    r = redis.Redis.from_url(redis_url)
    try:
        assert r.delete(entry_key) == 1
    finally:
        r.close()


def test_a_burst_that_finds_an_entry_gone_waits_for_one_computation_on_the_fast_path(
    client: TestClient, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = client.get(WEAK)
    assert first.status_code == 200  # the key and the entry are cached now
    _drop_entry(client, redis_url)
    computed = 0
    real = LearnerAnswers.compute_weaknesses

    async def slow(self: LearnerAnswers, *args: Any, **kwargs: Any) -> Any:
        nonlocal computed
        computed += 1
        await asyncio.sleep(0.5)  # the computation is under way for half a second
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(LearnerAnswers, "compute_weaknesses", slow)
    fast = ("skillcoach_http_cache_fast_path_total", {"kind": "weaknesses"})
    waits = ("skillcoach_cache_lock_waits_total", {"kind": "weaknesses"})
    before = _sample(client, *fast), _sample(client, *waits)
    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(lambda _: client.get(WEAK), range(10)))
    assert [a.status_code for a in answers] == [200] * 10
    assert all(a.content == first.content for a in answers)
    assert all(a.headers["x-request-id"] for a in answers)
    assert computed == 1
    # Nine followed the first one's computation on the fast path; it computed.
    assert _sample(client, *fast) - before[0] == 9
    assert _sample(client, *waits) - before[1] == 9
    assert client.get(WEAK).content == first.content  # stored again: a plain hit


def test_a_failed_computation_sends_its_followers_the_usual_way(
    client: TestClient, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert client.get(WEAK).status_code == 200
    _drop_entry(client, redis_url)
    calls = 0
    real = LearnerAnswers.compute_weaknesses

    async def first_fails(self: LearnerAnswers, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(0.3)
            raise RuntimeError("the first computation breaks")
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(LearnerAnswers, "compute_weaknesses", first_fails)
    with ThreadPoolExecutor(max_workers=5) as pool:
        statuses = sorted(pool.map(lambda _: client.get(WEAK).status_code, range(5)))
    # The leader's 500 is its own; the others took the usual way and were answered.
    assert statuses == [200, 200, 200, 200, 500]
