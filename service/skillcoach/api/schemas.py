"""Request and response shapes: validation of input, and the source of /openapi.json."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from skillcoach.limits import ATTEMPTS_PER_BATCH, EXERCISE_ID

__all__ = [
    "AttemptBatch",
    "AttemptIn",
    "AttemptsAccepted",
    "ExerciseOut",
    "ExercisePage",
    "ModelStatus",
    "PoolStatus",
    "Problem",
    "RecommendationOut",
    "Recommendations",
    "SkillOut",
    "SkillPage",
    "WeaknessOut",
    "Weaknesses",
]

Probability = Annotated[float, Field(ge=0, le=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AttemptIn(_Strict):
    exercise_id: Annotated[StrictInt, Field(ge=EXERCISE_ID.low, le=EXERCISE_ID.high)]
    correct: StrictBool
    answered_at: datetime = Field(
        description="ISO 8601; without an offset it is taken as UTC. At most a few minutes ahead."
    )


class AttemptBatch(_Strict):
    attempts: list[AttemptIn] = Field(
        min_length=ATTEMPTS_PER_BATCH.low, max_length=ATTEMPTS_PER_BATCH.high
    )


class AttemptsAccepted(BaseModel):
    learner_id: int
    accepted: int
    data_version: int
    skills_updated: list[int]
    replayed: bool = Field(description="true when an Idempotency-Key matched an earlier batch")


class WeaknessOut(BaseModel):
    skill_id: int
    skill_name: str | None
    mastery: Probability
    interval: tuple[Probability, Probability] = Field(description="80% interval")
    attempts: int
    correct: int
    insufficient_data: bool
    last_practised_at: datetime


class Weaknesses(BaseModel):
    learner_id: int
    model_version: int
    data_version: int | None = None
    skills: list[WeaknessOut]


class RecommendationOut(BaseModel):
    exercise_id: int
    skill_id: int
    skill_name: str | None
    predicted_success: Probability
    seen_count: int
    last_seen_at: datetime | None
    reason: dict[str, Any]


class Recommendations(BaseModel):
    learner_id: int
    model_version: int
    target: Probability
    exercises: list[RecommendationOut]


class SkillOut(BaseModel):
    id: int
    name: str
    exercises: int


class SkillPage(BaseModel):
    items: list[SkillOut]
    next_cursor: int | None


class ExerciseOut(BaseModel):
    id: int
    skill_id: int
    difficulty: float


class ExercisePage(BaseModel):
    items: list[ExerciseOut]
    next_cursor: int | None


class PoolStatus(BaseModel):
    size: int
    checked_out: int
    idle: int
    overflow: int
    capacity: int
    waiters: int
    long_held: int
    generation: int


class CacheStatus(BaseModel):
    enabled: bool
    hit_ratio: float | None = Field(description="hits / lookups since start-up")
    degraded: bool = Field(description="Redis failing: requests served from PostgreSQL")


class ModelStatus(BaseModel):
    status: str
    model_version: int | None
    trained_at: datetime | None
    loaded_at: datetime | None
    metrics: dict[str, Any]
    pool: PoolStatus
    cache: CacheStatus


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
