"""Warming and write-through against real PostgreSQL (through PgBouncer) and Redis: the
entries they store are exactly the ones a request without parameters looks up."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import anyio
from prometheus_client import CollectorRegistry

from skillcoach.answers.bodies import recommendations_variant, weaknesses_variant
from skillcoach.answers.learner_answers import AnswerConfig, LearnerAnswers
from skillcoach.answers.warming import warm_cache, write_through
from skillcoach.cache.store import Cache, CacheConfig, connect_redis
from skillcoach.data.attempt_writes import batch_fingerprint, record_attempts
from skillcoach.data.database import Database, PoolConfig
from skillcoach.data.records import Attempt
from skillcoach.limits import RECOMMENDATIONS_LIMIT, WEAKNESSES_LIMIT
from skillcoach.ml.live_model import LiveModel, ServedModel
from tests.fixtures_api import exercise_id

LEARNERS = range(900_001, 900_006)
POOL = PoolConfig(pool_size=2, max_overflow=0, pool_timeout=2.0, pool_recycle=600)


def record(db: Database, learner: int, correct: bool, minute: int) -> int:
    attempts = [Attempt(exercise_id(1, 0), correct, datetime(2026, 5, 1, 10, minute, tzinfo=UTC))]
    result = db.run_sync(
        record_attempts,
        learner_id=learner,
        attempts=attempts,
        idempotency_key=None,
        fingerprint=batch_fingerprint(learner, attempts),
    )
    return int(result["data_version"])


def with_answers(
    db_url: str, redis_url: str, body: Callable[[LearnerAnswers, ServedModel], Awaitable[None]]
) -> None:
    db = Database(db_url, POOL, statement_timeout_ms=3000, registry=CollectorRegistry())
    config = CacheConfig(url=redis_url)
    cache = Cache(connect_redis(config), config, CollectorRegistry())

    async def main() -> None:
        live = LiveModel()
        assert await live.refresh(db)
        assert live.current is not None
        try:
            await body(LearnerAnswers(db, cache, AnswerConfig()), live.current)
        finally:
            await cache.aclose()

    try:
        anyio.run(main)
    finally:
        db.dispose()


async def default_entries(
    answers: LearnerAnswers, served: ServedModel, learner: int
) -> tuple[bytes | None, bytes | None]:
    assert answers.cache is not None
    weak = await answers.cache.lookup(
        learner_id=learner,
        kind="weaknesses",
        variant=weaknesses_variant(served.version, WEAKNESSES_LIMIT.default),
    )
    recs = await answers.cache.lookup(
        learner_id=learner,
        kind="recommendations",
        variant=recommendations_variant(
            served.version, RECOMMENDATIONS_LIMIT.default, answers.config.recommendation_target
        ),
    )
    return weak, recs


def test_warming_stores_what_a_default_request_looks_up(
    api_bouncer_url: str, redis_url: str
) -> None:
    probe = Database(api_bouncer_url, POOL, statement_timeout_ms=3000)
    try:
        for i, learner in enumerate(LEARNERS):
            record(probe, learner, correct=i % 2 == 0, minute=i)
    finally:
        probe.dispose()

    async def body(answers: LearnerAnswers, served: ServedModel) -> None:
        live = LiveModel()
        live.current = served
        warmed = await warm_cache(answers, live, learners=len(LEARNERS), seconds=30)
        assert warmed == len(LEARNERS)
        for learner in LEARNERS:
            weak, recs = await default_entries(answers, served, learner)
            computed = await answers.compute_weaknesses(
                served, learner_id=learner, limit=WEAKNESSES_LIMIT.default
            )
            assert computed is not None and weak == computed[0]
            assert recs is not None and b'"exercises"' in recs

    with_answers(api_bouncer_url, redis_url, body)


def test_write_through_replaces_the_entries_with_the_new_version(
    api_bouncer_url: str, redis_url: str
) -> None:
    learner = 900_100

    async def body(answers: LearnerAnswers, served: ServedModel) -> None:
        db = answers.db
        await write_through(answers, served, learner, record(db, learner, True, 0))
        before, _ = await default_entries(answers, served, learner)
        assert before is not None and b'"attempts":1' in before
        await write_through(answers, served, learner, record(db, learner, False, 1))
        after, recs = await default_entries(answers, served, learner)
        assert after is not None and b'"attempts":2' in after
        assert recs is not None

    with_answers(api_bouncer_url, redis_url, body)
