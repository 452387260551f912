"""Cache warming: after start-up and after a model promotion, compute the default answers of
the most recently active learners, in the background, bounded in count and time."""

from __future__ import annotations

import logging

import anyio
from sqlalchemy import Connection

from skillcoach.answers.compute import (
    Answer,
    cached,
    recommendations_answer,
    recommendations_variant,
    weaknesses_answer,
    weaknesses_variant,
)
from skillcoach.api.state import AppState
from skillcoach.data.database import DatabaseUnavailable
from skillcoach.ml.live_model import ServedModel

__all__ = ["most_active_learners", "warm_cache", "warm_learner", "write_through"]

log = logging.getLogger("skillcoach.cache.store")

# The endpoints' default parameters: what an unparameterised client asks for.
WEAKNESSES_LIMIT = 100
RECOMMENDATIONS_LIMIT = 10


def most_active_learners(conn: Connection, *, limit: int) -> list[int]:
    rows = conn.exec_driver_sql(
        "SELECT learner_id FROM learner_skill_stats GROUP BY learner_id"
        " ORDER BY max(last_answered_at) DESC LIMIT %(n)s",
        {"n": limit},
    ).all()
    return [int(r.learner_id) for r in rows]


async def warm_cache(state: AppState) -> int:
    """Warm up to cache_warm_learners learners within cache_warm_seconds; returns how many."""
    served = state.live_model.current
    settings = state.settings
    if state.cache is None or served is None or settings.cache_warm_learners == 0:
        return 0
    warmed = 0
    with anyio.move_on_after(settings.cache_warm_seconds):
        ids = await state.db.run(most_active_learners, limit=settings.cache_warm_learners)
        for learner_id in ids:
            if state.live_model.current is not served:
                break  # a newer model arrived; its own warming takes over
            await warm_learner(state, served, learner_id)
            warmed += 1
    log.info("cache warmed for %d learners (model v%d)", warmed, served.version)
    return warmed


async def warm_learner(state: AppState, served: ServedModel, learner_id: int) -> None:
    """Compute and store the learner's default answers (a miss computes, a hit is a no-op)."""
    target = state.settings.recommendation_target

    async def weak() -> Answer | None:
        return await weaknesses_answer(state, served, learner_id=learner_id, limit=WEAKNESSES_LIMIT)

    async def recs() -> Answer | None:
        return await recommendations_answer(
            state, served, learner_id=learner_id, limit=RECOMMENDATIONS_LIMIT, target=target
        )

    await cached(
        state,
        learner_id=learner_id,
        kind="weaknesses",
        variant=weaknesses_variant(served, WEAKNESSES_LIMIT),
        compute=weak,
        background=True,
    )
    await cached(
        state,
        learner_id=learner_id,
        kind="recommendations",
        variant=recommendations_variant(served, RECOMMENDATIONS_LIMIT, target),
        compute=recs,
        background=True,
    )


async def write_through(state: AppState, learner_id: int, version: int) -> None:
    """After a committed write: compute the learner's default answers from PostgreSQL and
    store them with the new version before the write is acknowledged, so the reads that
    follow hit (invalidating alone caps the hit ratio at 1 - write share on hot learners).
    If the database is too busy for that, the version is still raised (invalidation)."""
    assert state.cache is not None
    served = state.live_model.current
    entries: list[tuple[str, str, bytes, int]] = []
    if served is not None:
        target = state.settings.recommendation_target
        try:
            weak = await weaknesses_answer(
                state, served, learner_id=learner_id, limit=WEAKNESSES_LIMIT
            )
            recs = await recommendations_answer(
                state, served, learner_id=learner_id, limit=RECOMMENDATIONS_LIMIT, target=target
            )
        except DatabaseUnavailable as exc:
            log.debug("write-through of learner %d skipped: %s", learner_id, exc)
        else:
            if weak is not None:
                entries.append(("weaknesses", weaknesses_variant(served, WEAKNESSES_LIMIT), *weak))
            if recs is not None:
                variant = recommendations_variant(served, RECOMMENDATIONS_LIMIT, target)
                entries.append(("recommendations", variant, *recs))
    await state.cache.write_through(learner_id=learner_id, version=version, entries=entries)
