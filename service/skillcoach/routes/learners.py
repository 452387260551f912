"""/v1/learners/{id}/...: weaknesses, recommendations, attempts. Routes only translate HTTP."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from skillcoach.analysis import (
    ExerciseHistory,
    Recommendation,
    SkillEvidence,
    SkillWeakness,
    focus_skills,
    rank_weaknesses,
    recommend,
)
from skillcoach.attempts import IDEMPOTENCY_KEY_MAX, batch_fingerprint, normalize, record_attempts
from skillcoach.auth import Scope
from skillcoach.catalog import Catalog
from skillcoach.learners import fetch_exercise_history, fetch_skill_evidence
from skillcoach.live_model import ServedModel
from skillcoach.params import int_param, path_id, read_json
from skillcoach.problems import BadRequest, NotFound
from skillcoach.schemas import AttemptBatch
from skillcoach.state import AppState, app_state

__all__ = ["routes"]


def json_response(body: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
    )


def _iso(ts: datetime | None) -> str | None:
    return None if ts is None else ts.isoformat()


def _found(body: bytes | None, learner_id: int) -> Response:
    if body is None:
        raise NotFound(f"learner {learner_id} does not exist", learner_id=learner_id)
    # Bytes as computed or as stored in the cache: a hit costs no JSON work.
    return Response(body, media_type="application/json")


async def cached(
    state: AppState,
    *,
    learner_id: int,
    kind: str,
    variant: str,
    compute: Callable[[], Awaitable[bytes | None]],
) -> bytes | None:
    if state.cache is None:
        return await compute()
    return await state.cache.get_or_compute(
        learner_id=learner_id, kind=kind, variant=variant, compute=compute
    )


async def weaknesses(request: Request) -> Response:
    state = app_state(request)
    await state.authenticate(request, Scope.READ)
    learner_id = path_id(request, "learner_id")
    limit = int_param(request, "limit", default=100, low=1, high=1000)
    served = state.served_model()

    async def compute() -> bytes | None:
        return await weaknesses_answer(state, served, learner_id=learner_id, limit=limit)

    body = await cached(
        state,
        learner_id=learner_id,
        kind="weaknesses",
        variant=weaknesses_variant(served, limit),
        compute=compute,
    )
    return _found(body, learner_id)


async def weaknesses_answer(
    state: AppState, served: ServedModel, *, learner_id: int, limit: int
) -> bytes | None:
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
    return _weaknesses_body(learner_id, served.version, served.catalog.skill_names, ranked)


def weaknesses_variant(served: ServedModel, limit: int) -> str:
    return f"m{served.version}:n{limit}"


def _weaknesses_body(
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


async def recommendations(request: Request) -> Response:
    state = app_state(request)
    await state.authenticate(request, Scope.READ)
    learner_id = path_id(request, "learner_id")
    limit = int_param(request, "limit", default=10, low=1, high=100)
    target = state.settings.recommendation_target
    raw_target = request.query_params.get("target")
    if raw_target is not None:
        try:
            target = float(raw_target)
        except ValueError:
            raise BadRequest(
                f"target must be a number, got {raw_target!r}", param="target"
            ) from None
        if not 0.05 <= target <= 0.95:
            raise BadRequest(f"target must be between 0.05 and 0.95, got {target}", param="target")
    served = state.served_model()

    async def compute() -> bytes | None:
        return await recommendations_answer(
            state, served, learner_id=learner_id, limit=limit, target=target
        )

    body = await cached(
        state,
        learner_id=learner_id,
        kind="recommendations",
        variant=recommendations_variant(served, limit, target),
        compute=compute,
    )
    return _found(body, learner_id)


async def recommendations_answer(
    state: AppState, served: ServedModel, *, learner_id: int, limit: int, target: float
) -> bytes | None:
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
    return _recommendations_body(
        learner_id, served.version, target, served.catalog.skill_names, recs
    )


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


async def post_attempts(request: Request) -> Response:
    state = app_state(request)
    await state.authenticate(request, Scope.WRITE)
    learner_id = path_id(request, "learner_id")
    key = request.headers.get("idempotency-key")
    if key is not None and not (0 < len(key) <= IDEMPOTENCY_KEY_MAX and key.isprintable()):
        raise BadRequest(f"Idempotency-Key must be 1..{IDEMPOTENCY_KEY_MAX} printable characters")
    batch = await read_json(request, AttemptBatch)
    attempts = normalize(batch.attempts, now=datetime.now(UTC))
    result = await state.db.run(
        record_attempts,
        learner_id=learner_id,
        attempts=attempts,
        idempotency_key=key,
        fingerprint=batch_fingerprint(learner_id, attempts),
    )
    if state.cache is not None and not result["replayed"]:
        # Committed: bump the learner's cache version before acknowledging (read-your-writes).
        await state.cache.invalidate(learner_id)
    return json_response(result, status=200 if result["replayed"] else 201)


routes = [
    Route("/v1/learners/{learner_id}/weaknesses", weaknesses, methods=["GET"]),
    Route("/v1/learners/{learner_id}/recommendations", recommendations, methods=["GET"]),
    Route("/v1/learners/{learner_id}/attempts", post_attempts, methods=["POST"]),
]
