"""Uncached answers against real PostgreSQL through PgBouncer: weaknesses asked for at once
share one evidence statement and are, byte for byte, what each would be alone."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import anyio
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import make_url

from skillcoach.answers.learner_answers import AnswerConfig, LearnerAnswers
from skillcoach.data.attempt_writes import batch_fingerprint, record_attempts
from skillcoach.data.database import Database, PoolConfig
from skillcoach.data.deadline import work_scope
from skillcoach.data.records import Attempt
from skillcoach.errors import DatabaseUnavailable
from skillcoach.limits import WEAKNESSES_LIMIT
from skillcoach.ml.live_model import LiveModel
from skillcoach_devstack.processes import free_port
from tests.fixtures_api import EX_WEIGHTS, exercise_id

LEARNERS = range(910_001, 910_007)
NOBODY = 910_999
POOL = PoolConfig(pool_size=4, max_overflow=0, pool_timeout=2.0, pool_recycle=600)


def seed(db: Database) -> None:
    for n, learner in enumerate(LEARNERS):
        attempts = [
            Attempt(exercise_id(skill, i), (n + skill + i) % 3 != 0,
                    datetime(2026, 5, 1, 10 + n, skill * 10 + i, tzinfo=UTC))
            for skill in (1, 2, 3)[: 1 + n % 3]
            for i in range(1 + n % len(EX_WEIGHTS))
        ]  # fmt: skip
        db.run_sync(
            record_attempts,
            learner_id=learner,
            attempts=attempts,
            idempotency_key=None,
            fingerprint=batch_fingerprint(learner, attempts),
        )


def test_weaknesses_asked_at_once_share_a_statement_and_equal_lone_answers(
    api_bouncer_url: str,
) -> None:
    registry = CollectorRegistry()
    db = Database(api_bouncer_url, POOL, statement_timeout_ms=3000, registry=registry)
    try:
        seed(db)

        async def main() -> tuple[dict[int, bytes | None], dict[int, bytes | None], int]:
            live = LiveModel()
            assert await live.refresh(db)
            served = live.current
            assert served is not None
            answers = LearnerAnswers(db, None, AnswerConfig())

            async def one(learner: int) -> bytes | None:
                return await answers.weaknesses(
                    served, learner_id=learner, limit=WEAKNESSES_LIMIT.default
                )

            alone = {learner: await one(learner) for learner in [*LEARNERS, NOBODY]}
            loads = answers.evidence.loads
            together: dict[int, bytes | None] = {}

            async def keep(learner: int) -> None:
                together[learner] = await one(learner)

            async with anyio.create_task_group() as tg:
                for learner in [*LEARNERS, NOBODY]:
                    tg.start_soon(keep, learner)
            return alone, together, answers.evidence.loads - loads

        alone, together, loads = anyio.run(main)
    finally:
        db.dispose()
    assert alone[NOBODY] is None and all(alone[learner] for learner in LEARNERS)
    assert together == alone
    assert loads == 1  # seven requests, one statement
    # The batch sizes are exported: seven lone reads, then one of seven.
    name = "skillcoach_db_shared_read_learners"
    assert registry.get_sample_value(f"{name}_count") == 8
    assert registry.get_sample_value(f"{name}_sum") == 14
    assert registry.get_sample_value(f"{name}_bucket", {"le": "4.0"}) == 7


def test_a_failed_shared_read_fails_each_request_with_the_databases_error(
    api_bouncer_url: str,
) -> None:
    db = Database(api_bouncer_url, POOL, statement_timeout_ms=3000, registry=CollectorRegistry())
    # A port nothing listens on: the shared read cannot connect (no retry within 1 s).
    gone_url = make_url(api_bouncer_url).set(port=free_port()).render_as_string(hide_password=False)
    gone = Database(gone_url, POOL, statement_timeout_ms=1000, registry=CollectorRegistry())
    try:

        async def main() -> list[BaseException | bytes | None]:
            live = LiveModel()
            assert await live.refresh(db)
            served = live.current
            assert served is not None
            answers = LearnerAnswers(gone, None, AnswerConfig())
            results: list[BaseException | bytes | None] = []

            async def keep(learner: int) -> None:
                try:
                    results.append(await answers.weaknesses(served, learner_id=learner, limit=5))
                except DatabaseUnavailable as exc:
                    results.append(exc)

            with work_scope(deadline=time.monotonic() + 1.0, name=lambda: "test"):
                async with anyio.create_task_group() as tg:
                    for learner in LEARNERS[:3]:
                        tg.start_soon(keep, learner)
            assert answers.evidence.loads == 1
            return results

        results = anyio.run(main)
    finally:
        db.dispose()
        gone.dispose()
    assert len(results) == 3
    assert all(isinstance(r, DatabaseUnavailable) for r in results), results
