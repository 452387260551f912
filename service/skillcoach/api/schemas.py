"""Request and response shapes: validation of input, and the source of /openapi.json."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    WithJsonSchema,
)

from skillcoach.limits import ATTEMPTS_PER_BATCH, CLOCK_SKEW, EXERCISE_ID

__all__ = [
    "ANSWERED_AT_PATTERN",
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


# RFC 3339 date-time (a space for the T, and no offset, are tolerated: naive is UTC), from
# 1970 on, with a UTC offset within +-14:00 (the widest in use; PostgreSQL refuses some
# wider ones). The schema publishes this pattern, so schema and validation agree.
ANSWERED_AT_PATTERN = (
    r"^(19[7-9][0-9]|[2-9][0-9]{3})-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}"
    r"(\.[0-9]{1,6})?([Zz]|[+-](0[0-9]|1[0-3]):[0-5][0-9]|[+-]14:00)?$"
)
_ANSWERED_AT = re.compile(ANSWERED_AT_PATTERN)
ANSWERED_AT_DESCRIPTION = (
    "RFC 3339 date-time string, from 1970 on, UTC offset within +-14:00; without an offset"
    f" it is taken as UTC. At most {int(CLOCK_SKEW.total_seconds() // 60)} minutes ahead of"
    " the server's clock (allowed clock skew): a later one is refused with 422."
)


def _rfc3339(value: object) -> object:
    # Before pydantic's own parsing, which would also take numbers (Unix time) and other
    # ISO 8601 forms.
    if not isinstance(value, str) or not _ANSWERED_AT.match(value):
        raise ValueError(
            "must be an RFC 3339 date-time string from 1970 on, UTC offset within +-14:00"
        )
    return value


AnsweredAt = Annotated[
    datetime,
    BeforeValidator(_rfc3339),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "pattern": ANSWERED_AT_PATTERN,
            "description": ANSWERED_AT_DESCRIPTION,
        }
    ),
]


class AttemptIn(_Strict):
    exercise_id: Annotated[StrictInt, Field(ge=EXERCISE_ID.low, le=EXERCISE_ID.high)]
    correct: StrictBool
    answered_at: AnsweredAt = Field(description=ANSWERED_AT_DESCRIPTION)


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
