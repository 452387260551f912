"""Cache warming: after start-up and after a model promotion, compute the default answers of
the most recently active learners, in the background, bounded in count and time."""

from __future__ import annotations

import logging

import anyio
from sqlalchemy import Connection

from skillcoach.answers import (
    cached,
    recommendations_answer,
    recommendations_variant,
    weaknesses_answer,
    weaknesses_variant,
)
from skillcoach.db import DatabaseUnavailable
from skillcoach.live_model import ServedModel
from skillcoach.state import AppState

__all__ = ["most_active_learners", "refresh_after_write", "warm_cache", "warm_learner"]

log = logging.getLogger("skillcoach.cache")

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

    async def weak() -> bytes | None:
        return await weaknesses_answer(state, served, learner_id=learner_id, limit=WEAKNESSES_LIMIT)

    async def recs() -> bytes | None:
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


async def refresh_after_write(state: AppState, learner_id: int) -> None:
    """Recompute a learner's default answers right after a write, so the reads that follow
    hit (invalidate-on-write alone caps the hit ratio at 1 - write share on hot learners)."""
    served = state.live_model.current
    if served is None or learner_id in state.refreshing:
        return  # one refresh per learner at a time; a later write schedules its own
    state.refreshing.add(learner_id)
    try:
        await warm_learner(state, served, learner_id)
    except DatabaseUnavailable as exc:
        log.debug("refresh of learner %d skipped: %s", learner_id, exc)
    finally:
        state.refreshing.discard(learner_id)
