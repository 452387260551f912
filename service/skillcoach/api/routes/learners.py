"""/v1/learners/{id}/...: weaknesses, recommendations, attempts. Routes only translate HTTP."""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from skillcoach.answers.warming import write_through
from skillcoach.api.params import (
    float_param,
    int_param,
    path_id,
    read_json,
    valid_idempotency_key,
)
from skillcoach.api.problems import BadRequest, NotFound
from skillcoach.api.responses import json_bytes_response, json_response
from skillcoach.api.schemas import AttemptBatch
from skillcoach.api.state import app_state
from skillcoach.data.api_keys import Scope
from skillcoach.data.attempt_writes import (
    batch_fingerprint,
    implicit_idempotency_key,
    learner_data_version,
    normalize,
    record_attempts,
)
from skillcoach.data.records import Attempt
from skillcoach.limits import (
    IDEMPOTENCY_KEY_MAX_CHARS,
    LEARNER_ID,
    RECOMMENDATION_TARGET,
    RECOMMENDATIONS_LIMIT,
    WEAKNESSES_LIMIT,
)

__all__ = ["routes"]


def _found(body: bytes | None, learner_id: int) -> Response:
    if body is None:
        raise NotFound(f"learner {learner_id} does not exist", learner_id=learner_id)
    return json_bytes_response(body)


async def weaknesses(request: Request) -> Response:
    state = app_state(request)
    await state.authenticate(request, Scope.READ)
    learner_id = path_id(request, "learner_id", LEARNER_ID)
    limit = int_param(request, "limit", WEAKNESSES_LIMIT)
    body = await state.answers.weaknesses(state.served_model(), learner_id=learner_id, limit=limit)
    return _found(body, learner_id)


async def recommendations(request: Request) -> Response:
    state = app_state(request)
    await state.authenticate(request, Scope.READ)
    learner_id = path_id(request, "learner_id", LEARNER_ID)
    limit = int_param(request, "limit", RECOMMENDATIONS_LIMIT)
    default = state.answers.config.recommendation_target
    target = float_param(request, "target", RECOMMENDATION_TARGET, default=default)
    body = await state.answers.recommendations(
        state.served_model(), learner_id=learner_id, limit=limit, target=target
    )
    return _found(body, learner_id)


async def post_attempts(request: Request) -> Response:
    state = app_state(request)
    await state.authenticate(request, Scope.WRITE)
    learner_id = path_id(request, "learner_id", LEARNER_ID)
    key = request.headers.get("idempotency-key")
    if key is not None and not valid_idempotency_key(key):
        raise BadRequest(
            f"Idempotency-Key must be 1..{IDEMPOTENCY_KEY_MAX_CHARS} visible ASCII characters"
            " (inner spaces allowed)"
        )
    batch = await read_json(request, AttemptBatch)
    received = [Attempt(a.exercise_id, a.correct, a.answered_at) for a in batch.attempts]
    attempts = normalize(received, now=datetime.now(UTC))
    fingerprint = batch_fingerprint(learner_id, attempts)
    result = await state.db.run(
        record_attempts,
        learner_id=learner_id,
        attempts=attempts,
        # Without a header, an identical batch is a retry (see implicit_idempotency_key).
        idempotency_key=key if key is not None else implicit_idempotency_key(fingerprint),
        fingerprint=fingerprint,
    )
    if not result["replayed"]:
        # Committed: raise the learner's cache version (with fresh answers) before the 201.
        served = state.live_model.current
        await write_through(state.answers, served, learner_id, result["data_version"])
    else:
        # The first attempt's raise may have been lost with its acknowledgement: raise again,
        # to the current version (later writes may have come since), before answering.
        version = await state.db.run(learner_data_version, learner_id=learner_id, retry=True)
        if version is not None:
            await write_through(state.answers, None, learner_id, version)
    return json_response(result, status=200 if result["replayed"] else 201)


routes = [
    Route("/v1/learners/{learner_id}/weaknesses", weaknesses, methods=["GET"]),
    Route("/v1/learners/{learner_id}/recommendations", recommendations, methods=["GET"]),
    Route("/v1/learners/{learner_id}/attempts", post_attempts, methods=["POST"]),
]
