"""Keeping the cache ahead of demand: warming after start-up and after a model promotion (the
most recently active learners, bounded in count and time, in the background), and the
write-through after a committed write."""

from __future__ import annotations

import logging

import anyio

from skillcoach.answers.bodies import recommendations_variant, weaknesses_variant
from skillcoach.answers.learner_answers import LearnerAnswers
from skillcoach.data.learner_reads import most_active_learners
from skillcoach.errors import DatabaseUnavailable
from skillcoach.limits import RECOMMENDATIONS_LIMIT, WEAKNESSES_LIMIT
from skillcoach.ml.live_model import LiveModel, ServedModel

__all__ = ["warm_cache", "warm_learner", "write_through"]

log = logging.getLogger(__name__)

# What a client without parameters asks for: the entries worth having before it asks.
_WEAK_LIMIT = WEAKNESSES_LIMIT.default
_RECS_LIMIT = RECOMMENDATIONS_LIMIT.default


async def warm_cache(
    answers: LearnerAnswers, live_model: LiveModel, *, learners: int, seconds: float
) -> int:
    """Warm up to `learners` learners within `seconds`; returns how many were warmed."""
    served = live_model.current
    if answers.cache is None or served is None or learners == 0:
        return 0
    warmed = 0
    with anyio.move_on_after(seconds):
        ids = await answers.db.run(most_active_learners, limit=learners)
        for learner_id in ids:
            if live_model.current is not served:
                break  # a newer model arrived; its own warming takes over
            await warm_learner(answers, served, learner_id)
            warmed += 1
    log.info("cache warmed for %d learners (model v%d)", warmed, served.version)
    return warmed


async def warm_learner(answers: LearnerAnswers, served: ServedModel, learner_id: int) -> None:
    """Compute and store the learner's default answers (a miss computes, a hit is a no-op)."""
    await answers.weaknesses(served, learner_id=learner_id, limit=_WEAK_LIMIT, background=True)
    await answers.recommendations(served, learner_id=learner_id, limit=_RECS_LIMIT, background=True)


async def write_through(
    answers: LearnerAnswers, served: ServedModel | None, learner_id: int, version: int
) -> None:
    """After a committed write: compute the learner's default answers from PostgreSQL and
    store them with the new version before the write is acknowledged, so the reads that
    follow hit (invalidating alone caps the hit ratio at 1 - write share on hot learners).
    If the database is too busy for that, the version is still raised (invalidation)."""
    cache = answers.cache
    if cache is None:
        return
    entries: list[tuple[str, str, bytes, int]] = []
    if served is not None:
        target = answers.config.recommendation_target
        try:
            weak = await answers.compute_weaknesses(
                served, learner_id=learner_id, limit=_WEAK_LIMIT
            )
            recs = await answers.compute_recommendations(
                served, learner_id=learner_id, limit=_RECS_LIMIT, target=target
            )
        except DatabaseUnavailable as exc:
            log.debug("write-through of learner %d skipped: %s", learner_id, exc)
        else:
            if weak is not None:
                variant = weaknesses_variant(served.version, _WEAK_LIMIT)
                entries.append(("weaknesses", variant, *weak))
            if recs is not None:
                variant = recommendations_variant(served.version, _RECS_LIMIT, target)
                entries.append(("recommendations", variant, *recs))
    await cache.write_through(learner_id=learner_id, version=version, entries=entries)
