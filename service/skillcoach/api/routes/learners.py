"""/v1/learners/{id}/...: weaknesses, recommendations, attempts. Routes only translate HTTP."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from skillcoach.answers.compute import (
    Answer,
    cached,
    recommendations_answer,
    recommendations_variant,
    weaknesses_answer,
    weaknesses_variant,
)
from skillcoach.answers.warming import write_through
from skillcoach.api.auth import Scope
from skillcoach.api.params import int_param, path_id, read_json
from skillcoach.api.problems import BadRequest, NotFound
from skillcoach.api.schemas import AttemptBatch
from skillcoach.api.state import app_state
from skillcoach.data.attempt_writes import (
    IDEMPOTENCY_KEY_MAX,
    batch_fingerprint,
    normalize,
    record_attempts,
)

__all__ = ["routes"]


def json_response(body: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
    )


def _found(body: bytes | None, learner_id: int) -> Response:
    if body is None:
        raise NotFound(f"learner {learner_id} does not exist", learner_id=learner_id)
    # Bytes as computed or as stored in the cache: a hit costs no JSON work.
    return Response(body, media_type="application/json")


async def weaknesses(request: Request) -> Response:
    state = app_state(request)
    await state.authenticate(request, Scope.READ)
    learner_id = path_id(request, "learner_id")
    limit = int_param(request, "limit", default=100, low=1, high=1000)
    served = state.served_model()

    async def compute() -> Answer | None:
        return await weaknesses_answer(state, served, learner_id=learner_id, limit=limit)

    body = await cached(
        state,
        learner_id=learner_id,
        kind="weaknesses",
        variant=weaknesses_variant(served, limit),
        compute=compute,
    )
    return _found(body, learner_id)


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

    async def compute() -> Answer | None:
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
        # Committed: raise the learner's cache version (with fresh answers) before the 201.
        await write_through(state, learner_id, result["data_version"])
    return json_response(result, status=200 if result["replayed"] else 201)


routes = [
    Route("/v1/learners/{learner_id}/weaknesses", weaknesses, methods=["GET"]),
    Route("/v1/learners/{learner_id}/recommendations", recommendations, methods=["GET"]),
    Route("/v1/learners/{learner_id}/attempts", post_attempts, methods=["POST"]),
]
