"""A learner's answers, through the cache: a hit returns stored bytes, a miss computes from
PostgreSQL with the served model (one pooled connection, one snapshot) and stores the result."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection

from skillcoach.answers.bodies import (
    Answer,
    recommendations_body,
    recommendations_variant,
    weaknesses_body,
    weaknesses_variant,
)
from skillcoach.cache.store import Cache
from skillcoach.data.catalog_reads import Catalog
from skillcoach.data.database import Database
from skillcoach.data.learner_reads import (
    fetch_exercise_history,
    fetch_skill_evidence,
    fetch_skill_evidences,
)
from skillcoach.data.read_batches import ReadBatch
from skillcoach.data.records import ExerciseHistory, SkillEvidence
from skillcoach.ml.analysis import (
    Candidates,
    RecommendationPolicy,
    candidates,
    recommend,
    weakness_columns,
)
from skillcoach.ml.inference import Inference
from skillcoach.ml.live_model import ServedModel
from skillcoach.ml.model import BestLR
from skillcoach.settings import Settings
from skillcoach.telemetry.tracing import NO_SPANS, Spans

# At most this many learners' evidence in one statement (its rows: about skills times that).
EVIDENCE_BATCH = 32

__all__ = ["AnswerConfig", "LearnerAnswers"]


@dataclass(frozen=True, slots=True)
class AnswerConfig:
    # Fewer attempts on a skill than this: flagged insufficient_data.
    min_attempts: int = 5
    # Skills the recommendations draw exercises from (the weakest first), and how far they
    # widen while too few exercises are on target.
    recommendation_skills: int = 3
    recommendation_max_skills: int = 10
    # Unpractised skills it may reach after those, when they still fall short (0: never).
    recommendation_new_skills: int = 3
    # Predicted success the recommended exercises aim at, when the client names none, and
    # how near it an exercise must be predicted to count as on target.
    recommendation_target: float = 0.7
    recommendation_tolerance: float = 0.05
    # Training answers an exercise needs before its predicted success counts as on target.
    recommendation_min_exercise_attempts: int = 20

    @classmethod
    def from_settings(cls, settings: Settings) -> AnswerConfig:
        return cls(
            min_attempts=settings.insufficient_data_attempts,
            recommendation_skills=settings.recommendation_skills,
            recommendation_max_skills=settings.recommendation_max_skills,
            recommendation_new_skills=settings.recommendation_new_skills,
            recommendation_target=settings.recommendation_target,
            recommendation_tolerance=settings.recommendation_tolerance,
            recommendation_min_exercise_attempts=settings.recommendation_min_exercise_attempts,
        )

    def policy(self, *, target: float, limit: int) -> RecommendationPolicy:
        return RecommendationPolicy(
            target=target,
            tolerance=self.recommendation_tolerance,
            skills=self.recommendation_skills,
            max_skills=self.recommendation_max_skills,
            new_skills=self.recommendation_new_skills,
            limit=limit,
            min_exercise_attempts=self.recommendation_min_exercise_attempts,
        )


_RecommendationInputs = tuple[SkillEvidence, Candidates, ExerciseHistory, float]


def _recommendation_inputs(
    conn: Connection,
    *,
    learner_id: int,
    model: BestLR,
    catalog: Catalog,
    policy: RecommendationPolicy,
) -> _RecommendationInputs | None:
    """Both reads in one transaction (one pooled connection, one consistent snapshot), and
    the seconds the model spent choosing the candidates between them."""
    evidence = fetch_skill_evidence(conn, learner_id=learner_id)
    if evidence is None:
        return None
    start = time.perf_counter()
    pool = candidates(model, evidence, catalog.exercises_of, policy)
    choose_seconds = time.perf_counter() - start
    history = fetch_exercise_history(conn, learner_id=learner_id, exercise_ids=pool.exercise_ids)
    return evidence, pool, history, choose_seconds


class LearnerAnswers:
    """Weaknesses and recommendations of a learner as finished JSON bodies (None: no such
    learner). Without a cache every call computes."""

    def __init__(
        self,
        db: Database,
        cache: Cache | None,
        config: AnswerConfig,
        *,
        inference: Inference | None = None,
        spans: Spans = NO_SPANS,
    ) -> None:
        self.db = db
        self.cache = cache
        if cache is not None:
            # Failed version raises are listed in this database for every replica to see.
            cache.use_database(db)
        self.config = config
        self.inference = Inference(None) if inference is None else inference
        # Uncached weaknesses asked for in the same event loop turn share one statement.
        self.evidence = ReadBatch(
            self._load_evidence,
            max_size=EVIDENCE_BATCH,
            spans=spans,
            span_name="db.shared_read evidence",
        )

    async def _load_evidence(self, learner_ids: Sequence[int]) -> dict[int, SkillEvidence]:
        self.db.metrics.shared_read_learners.observe(len(learner_ids))
        return await self.db.run(fetch_skill_evidences, learner_ids=learner_ids, retry=True)

    # -- through the cache --------------------------------------------------------------
    async def weaknesses(
        self, served: ServedModel, *, learner_id: int, limit: int, background: bool = False
    ) -> bytes | None:
        async def compute() -> Answer | None:
            return await self.compute_weaknesses(served, learner_id=learner_id, limit=limit)

        variant = weaknesses_variant(served.version, limit)
        return await self._cached(learner_id, "weaknesses", variant, compute, background)

    async def recommendations(
        self,
        served: ServedModel,
        *,
        learner_id: int,
        limit: int,
        target: float | None = None,
        background: bool = False,
    ) -> bytes | None:
        aim = self.config.recommendation_target if target is None else target

        async def compute() -> Answer | None:
            return await self.compute_recommendations(
                served, learner_id=learner_id, limit=limit, target=aim
            )

        variant = recommendations_variant(served.version, limit, aim)
        return await self._cached(learner_id, "recommendations", variant, compute, background)

    async def _cached(
        self,
        learner_id: int,
        kind: str,
        variant: str,
        compute: Callable[[], Awaitable[Answer | None]],
        background: bool,
    ) -> bytes | None:
        if self.cache is None:
            answer = await compute()
            return None if answer is None else answer[0]
        return await self.cache.get_or_compute(
            learner_id=learner_id,
            kind=kind,
            variant=variant,
            compute=compute,
            background=background,
        )

    # -- from PostgreSQL ----------------------------------------------------------------
    async def compute_weaknesses(
        self, served: ServedModel, *, learner_id: int, limit: int
    ) -> Answer | None:
        evidence = await self.evidence.get(learner_id)
        if evidence is None:
            return None
        with self.inference.timed("weaknesses"):
            ranked = weakness_columns(
                served.model, evidence, min_attempts=self.config.min_attempts, limit=limit
            )
        body = weaknesses_body(learner_id, served.version, served.catalog.skill_names, ranked)
        return body, evidence.data_version

    async def compute_recommendations(
        self, served: ServedModel, *, learner_id: int, limit: int, target: float
    ) -> Answer | None:
        policy = self.config.policy(target=target, limit=limit)
        loaded = await self.db.run(
            _recommendation_inputs,
            retry=True,
            learner_id=learner_id,
            model=served.model,
            catalog=served.catalog,
            policy=policy,
        )
        if loaded is None:
            return None
        evidence, pool, history, choose_seconds = loaded
        with self.inference.timed("recommendations", earlier=choose_seconds):
            recs = recommend(pool, history, policy)
        self.inference.recommended(recs)
        names = served.catalog.skill_names
        body = recommendations_body(learner_id, served.version, target, names, recs)
        return body, evidence.data_version
