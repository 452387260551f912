"""The cache against a real Redis: hits, versioned invalidation, single flight, breaker."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable

import anyio
from prometheus_client import CollectorRegistry

from skillcoach.cache.store import Cache, CacheConfig, connect_redis
from skillcoach_devstack.processes import free_port

_learners = itertools.count(1)


def make_cache(url: str, **kw: float) -> Cache:
    config = CacheConfig(url=url, **kw)  # type: ignore[arg-type]
    return Cache(connect_redis(config), config, CollectorRegistry())


def with_cache(url: str, body: Callable[[Cache], Awaitable[None]], **kw: float) -> Cache:
    """Run body in one event loop (redis-py's asyncio clients belong to the loop they
    connected in) and return the closed cache for inspection."""
    cache = make_cache(url, **kw)

    async def main() -> None:
        try:
            await body(cache)
        finally:
            await cache.aclose()

    anyio.run(main)
    return cache


class Source:
    """Stands for PostgreSQL: counts computations and returns the current data with the
    data_version of the snapshot it read."""

    def __init__(self, data: bytes = b'{"v":1}', delay: float = 0.0, version: int = 1) -> None:
        self.data, self.delay, self.version, self.calls = data, delay, version, 0

    async def __call__(self) -> tuple[bytes, int] | None:
        self.calls += 1
        snapshot = (self.data, self.version)  # read at the start, like a transaction
        await anyio.sleep(self.delay)
        return snapshot


async def get(cache: Cache, learner: int, source: Source, variant: str = "m1") -> bytes | None:
    return await cache.get_or_compute(
        learner_id=learner, kind="weaknesses", variant=variant, compute=source
    )


def test_miss_then_hit_serves_the_stored_bytes(redis_url: str) -> None:
    learner, source = next(_learners), Source()

    async def body(cache: Cache) -> None:
        assert await get(cache, learner, source) == b'{"v":1}'
        assert await get(cache, learner, source) == b'{"v":1}'

    cache = with_cache(redis_url, body)
    assert source.calls == 1
    assert cache.hit_ratio == 0.5


def test_invalidation_and_model_version_make_old_entries_unreachable(redis_url: str) -> None:
    learner, source = next(_learners), Source()

    async def body(cache: Cache) -> None:
        await get(cache, learner, source)
        source.data, source.version = b'{"v":2}', 2
        assert await cache.write_through(learner_id=learner, version=2, entries=[])
        assert await get(cache, learner, source) == b'{"v":2}'
        assert await get(cache, learner, source, variant="m2") == b'{"v":2}'

    with_cache(redis_url, body)
    assert source.calls == 3


def test_write_through_stores_fresh_answers_and_refuses_older_ones(redis_url: str) -> None:
    learner = next(_learners)
    never = Source(b"should not be computed")

    async def body(cache: Cache) -> None:
        fresh = [("weaknesses", "m1", b'{"v":7}', 7)]
        assert await cache.write_through(learner_id=learner, version=7, entries=fresh)
        assert await get(cache, learner, never) == b'{"v":7}'  # a hit at once
        stale = [("weaknesses", "m1", b'{"v":6}', 6)]  # a slower writer's older snapshot
        assert await cache.write_through(learner_id=learner, version=6, entries=stale)
        assert await get(cache, learner, never) == b'{"v":7}'

    with_cache(redis_url, body)
    assert never.calls == 0


def test_a_computation_racing_a_write_is_never_served(redis_url: str) -> None:
    learner = next(_learners)
    slow = Source(b'{"v":"old"}', delay=0.2, version=1)
    fresh = Source(b'{"v":"new"}', version=2)

    async def body(cache: Cache) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(get, cache, learner, slow)
            await anyio.sleep(0.05)  # the read has started from pre-write data...
            assert await cache.write_through(learner_id=learner, version=2, entries=[])
        assert await get(cache, learner, fresh) == b'{"v":"new"}'  # old entry: refused

    with_cache(redis_url, body)
    assert fresh.calls == 1


def test_100_concurrent_misses_compute_once(redis_url: str) -> None:
    learner, source = next(_learners), Source(delay=0.2)
    results: list[bytes | None] = []

    async def body(cache: Cache) -> None:
        async def one() -> None:
            results.append(await get(cache, learner, source))

        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(one)

    with_cache(redis_url, body)
    assert results == [b'{"v":1}'] * 100
    assert source.calls == 1


class FailingFirst(Source):
    """The first computation fails after a delay (its request ran out of time); later ones
    succeed after a delay of their own."""

    async def __call__(self) -> tuple[bytes, int] | None:
        self.calls += 1
        await anyio.sleep(self.delay)
        if self.calls == 1:
            raise TimeoutError("deadline")
        return self.data, self.version


def test_a_failed_flight_hands_over_to_one_new_computation(redis_url: str) -> None:
    # Regression: two waiters of a failed flight both started a new one; the second
    # registration replaced the first, and the finally of one raised KeyError (a 500).
    learner, source = next(_learners), FailingFirst(delay=0.1)
    results: list[object] = []

    async def body(cache: Cache) -> None:
        async def one() -> None:
            try:
                results.append(await get(cache, learner, source))
            except Exception as exc:
                results.append(type(exc).__name__)

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(one)

    with_cache(redis_url, body)
    assert sorted(map(str, results)) == ["TimeoutError"] + ["b'{\"v\":1}'"] * 4, results
    assert source.calls == 2  # the failed one, then one shared by the four waiters


def test_unknown_learners_are_not_cached(redis_url: str) -> None:
    learner = next(_learners)
    source = Source()

    async def nothing() -> tuple[bytes, int] | None:
        return None

    async def body(cache: Cache) -> None:
        none = await cache.get_or_compute(
            learner_id=learner, kind="weaknesses", variant="m1", compute=nothing
        )
        assert none is None
        assert await get(cache, learner, source) == b'{"v":1}'

    with_cache(redis_url, body)
    assert source.calls == 1


def test_redis_down_serves_from_the_source_and_opens_the_breaker() -> None:
    source = Source()

    async def body(cache: Cache) -> None:
        for _ in range(10):
            assert await get(cache, 1, source) == b'{"v":1}'
        # Ten refusals in a few milliseconds: a burst, not yet an outage (breaker_min_span).
        assert not cache.degraded
        await anyio.sleep(0.3)
        for _ in range(10):
            assert await get(cache, 1, source) == b'{"v":1}'
        assert cache.degraded  # still failing 0.3 s later: open
        assert not await cache.write_through(learner_id=1, version=3, entries=[])

    cache = with_cache(
        f"redis://127.0.0.1:{free_port()}/0", body, breaker_cooldown=60, breaker_min_span=0.25
    )
    assert source.calls == 20
    assert cache.metrics.skipped._value.get() > 0  # type: ignore[attr-defined]
    assert cache.dirty == {1: 3}  # this replica now bypasses the cache for learner 1


def test_redis_down_a_read_after_a_write_never_joins_an_older_computation() -> None:
    # Regression (a stale read in the fault test "all of Redis stopped"): with Redis down the
    # version is unknown, and a read that joined a computation already under way here could
    # answer from data older than a write its client had seen acknowledged (on another
    # replica, which bypasses the cache for that learner; this one does not know yet).
    source = Source(delay=0.3)
    got: dict[str, bytes | None] = {}

    async def body(cache: Cache) -> None:
        async def read(name: str) -> None:
            got[name] = await get(cache, 5, source)

        async with anyio.create_task_group() as tg:
            tg.start_soon(read, "before")
            await anyio.sleep(0.1)  # the first computation has read the old data
            source.data, source.version = b'{"v":2}', 2  # a write, acknowledged elsewhere
            tg.start_soon(read, "after")

    with_cache(f"redis://127.0.0.1:{free_port()}/0", body, breaker_cooldown=60)
    assert got == {"before": b'{"v":1}', "after": b'{"v":2}'}
    assert source.calls == 2


def test_failed_version_raises_alone_open_the_breaker() -> None:
    # A written learner is served from PostgreSQL without touching Redis, so the background
    # retries of its version may be the only Redis calls left: they must show the outage.
    async def body(cache: Cache) -> None:
        assert not await cache.write_through(learner_id=7, version=2, entries=[])
        for _ in range(6):
            await anyio.sleep(0.06)
            await cache.retry_invalidations()
        assert cache.degraded

    cache = with_cache(
        f"redis://127.0.0.1:{free_port()}/0", body, breaker_cooldown=60, breaker_min_span=0.25
    )
    assert cache.dirty == {7: 2}


def test_a_version_raise_that_lands_closes_the_breaker(redis_url: str) -> None:
    async def body(cache: Cache) -> None:
        for _ in range(5):
            cache.breaker.failure()
        assert cache.degraded
        assert await cache.write_through(learner_id=next(_learners), version=1, entries=[])
        assert not cache.degraded

    with_cache(redis_url, body, breaker_cooldown=60, breaker_min_span=0)


def test_a_fast_path_lookup_that_fails_is_counted_as_what_it_was() -> None:
    """A node that accepts and never answers: the lookup falls back to the full path (None)
    and is counted as a lookup timeout, so a fast path failing under load shows on the
    errors counter even when the full path then serves the request."""

    async def body() -> tuple[bytes | None, float | None]:
        silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = silent.sockets[0].getsockname()[1]
        config = CacheConfig(url=f"redis://127.0.0.1:{port}/0", socket_timeout=0.05)
        registry = CollectorRegistry()
        cache = Cache(connect_redis(config), config, registry)
        try:
            got = await cache.lookup(learner_id=next(_learners), kind="weaknesses", variant="m1")
            fell = registry.get_sample_value(
                "skillcoach_cache_fallthrough_total", {"reason": "error"}
            )
            assert fell == 1
            return got, registry.get_sample_value(
                "skillcoach_cache_errors_total", {"op": "lookup", "reason": "timeout"}
            )
        finally:
            await cache.aclose()
            silent.close()

    got, timeouts = asyncio.run(body())
    assert got is None and timeouts == 1
