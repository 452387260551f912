"""The two cacheable answers, built as finished JSON bytes: from PostgreSQL on a miss, or
straight from the cache. Shared by the routes and the cache warmer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import numpy as np
import orjson
from sqlalchemy import Connection

from skillcoach.api.state import AppState
from skillcoach.data.catalog_reads import Catalog
from skillcoach.data.learner_reads import fetch_exercise_history, fetch_skill_evidence
from skillcoach.ml.analysis import (
    ExerciseHistory,
    Recommendation,
    SkillEvidence,
    SkillWeakness,
    focus_skills,
    rank_weaknesses,
    recommend,
)
from skillcoach.ml.live_model import ServedModel

__all__ = [
    "Answer",
    "cached",
    "recommendations_answer",
    "recommendations_variant",
    "weaknesses_answer",
    "weaknesses_body",
    "weaknesses_variant",
]


def _iso(ts: datetime | None) -> str | None:
    return None if ts is None else ts.isoformat()


# A finished body and the learner's data_version of the snapshot it was computed from.
Answer = tuple[bytes, int]


async def cached(
    state: AppState,
    *,
    learner_id: int,
    kind: str,
    variant: str,
    compute: Callable[[], Awaitable[Answer | None]],
    background: bool = False,
) -> bytes | None:
    if state.cache is None:
        answer = await compute()
        return None if answer is None else answer[0]
    return await state.cache.get_or_compute(
        learner_id=learner_id, kind=kind, variant=variant, compute=compute, background=background
    )


async def weaknesses_answer(
    state: AppState, served: ServedModel, *, learner_id: int, limit: int
) -> Answer | None:
    """The weaknesses body of a learner, from PostgreSQL (None: no such learner)."""
    evidence = await state.db.run(fetch_skill_evidence, learner_id=learner_id, retry=True)
    if evidence is None:
        return None
    ranked = rank_weaknesses(
        served.model,
        evidence,
        min_attempts=state.settings.insufficient_data_attempts,
        limit=limit,
    )
    body = weaknesses_body(learner_id, served.version, served.catalog.skill_names, ranked)
    return body, evidence.data_version


def weaknesses_variant(served: ServedModel, limit: int) -> str:
    return f"m{served.version}:n{limit}"


def weaknesses_body(
    learner_id: int, model_version: int, names: dict[int, str], ranked: list[SkillWeakness]
) -> bytes:
    return orjson.dumps(
        {
            "learner_id": learner_id,
            "model_version": model_version,
            "skills": [
                {
                    "skill_id": w.skill_id,
                    "skill_name": names.get(w.skill_id),
                    "mastery": round(w.mastery, 4),
                    "interval": [round(w.low, 4), round(w.high, 4)],
                    "attempts": w.attempts,
                    "correct": w.correct,
                    "insufficient_data": w.insufficient_data,
                    "last_practised_at": _iso(w.last_practised_at),
                }
                for w in ranked
            ],
        }
    )


def _recommendation_inputs(
    conn: Connection,
    *,
    learner_id: int,
    served_model: Any,
    catalog: Catalog,
    skill_count: int,
) -> tuple[SkillEvidence, np.ndarray[Any, Any], np.ndarray[Any, Any], ExerciseHistory] | None:
    """Both reads in one transaction (one pooled connection, one consistent snapshot)."""
    evidence = fetch_skill_evidence(conn, learner_id=learner_id)
    if evidence is None:
        return None
    skills, mastery = focus_skills(served_model, evidence, count=skill_count)
    candidates, _ = catalog.exercises_of(skills)
    history = fetch_exercise_history(conn, learner_id=learner_id, exercise_ids=candidates)
    return evidence, skills, mastery, history


async def recommendations_answer(
    state: AppState, served: ServedModel, *, learner_id: int, limit: int, target: float
) -> Answer | None:
    """The recommendations body of a learner, from PostgreSQL (None: no such learner)."""
    loaded = await state.db.run(
        _recommendation_inputs,
        retry=True,
        learner_id=learner_id,
        served_model=served.model,
        catalog=served.catalog,
        skill_count=state.settings.recommendation_skills,
    )
    if loaded is None:
        return None
    evidence, skills, mastery, history = loaded
    ids, skill_ids = served.catalog.exercises_of(skills)
    recs = recommend(
        served.model,
        evidence,
        skills=skills,
        skill_mastery=mastery,
        candidate_ids=ids,
        candidate_skill_ids=skill_ids,
        history=history,
        target=target,
        limit=limit,
    )
    body = _recommendations_body(
        learner_id, served.version, target, served.catalog.skill_names, recs
    )
    return body, evidence.data_version


def recommendations_variant(served: ServedModel, limit: int, target: float) -> str:
    return f"m{served.version}:n{limit}:t{target:g}"


def _recommendations_body(
    learner_id: int,
    model_version: int,
    target: float,
    names: dict[int, str],
    recs: list[Recommendation],
) -> bytes:
    return orjson.dumps(
        {
            "learner_id": learner_id,
            "model_version": model_version,
            "target": target,
            "exercises": [
                {
                    "exercise_id": r.exercise_id,
                    "skill_id": r.skill_id,
                    "skill_name": names.get(r.skill_id),
                    "predicted_success": round(r.predicted_success, 4),
                    "seen_count": r.seen_count,
                    "last_seen_at": _iso(r.last_seen_at),
                    "reason": {
                        "skill_id": r.skill_id,
                        "skill_mastery": round(r.skill_mastery, 4),
                        "why": (
                            "weak skill; predicted success closest to target"
                            if r.seen_count == 0
                            else "weak skill; least recently seen exercise"
                        ),
                    },
                }
                for r in recs
            ],
        }
    )
