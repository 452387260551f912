"""The OpenAPI 3.1 document, built from the pydantic schemas the routes validate against."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from skillcoach import __version__
from skillcoach.api.schemas import (
    AttemptBatch,
    AttemptsAccepted,
    ExercisePage,
    ModelStatus,
    Problem,
    Recommendations,
    SkillPage,
    Weaknesses,
)
from skillcoach.limits import (
    ATTEMPTS_PER_BATCH,
    CATALOG_CURSOR,
    CATALOG_PAGE_LIMIT,
    IDEMPOTENCY_KEY_MAX_CHARS,
    IDEMPOTENCY_KEY_PATTERN,
    LEARNER_ID,
    RECOMMENDATION_TARGET,
    RECOMMENDATIONS_LIMIT,
    SKILL_ID,
    WEAKNESSES_LIMIT,
    IntParam,
    IntRange,
)

__all__ = ["openapi_document"]

_MODELS: list[type[BaseModel]] = [
    AttemptBatch,
    AttemptsAccepted,
    ExercisePage,
    ModelStatus,
    Problem,
    Recommendations,
    SkillPage,
    Weaknesses,
]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel]) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(model)}}


PROBLEM = {"application/problem+json": {"schema": _ref(Problem)}}


def _int(name: str, where: str, bounds: IntRange) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer", "minimum": bounds.low, "maximum": bounds.high}
    if isinstance(bounds, IntParam):
        schema["default"] = bounds.default
    param = {"name": name, "in": where, "schema": schema}
    return {**param, "required": True} if where == "path" else param


ID = _int("learner_id", "path", LEARNER_ID)


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": "problem", "content": PROBLEM} for c in codes}


def _get(
    summary: str, model: type[BaseModel], params: list[dict[str, Any]], *errs: int
) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "parameters": params,
            "responses": {"200": {"description": "OK", "content": _json(model)}, **_errors(*errs)},
        }
    }


@cache
def openapi_document(*, metrics_on_api_port: bool = False) -> dict[str, Any]:
    """The document of the API port: `/metrics` is on it only with METRICS_PORT=0."""
    _, defs = models_json_schema(
        [(m, "serialization") for m in _MODELS], ref_template="#/components/schemas/{model}"
    )
    batch = ATTEMPTS_PER_BATCH
    cursor = _int("cursor", "query", CATALOG_CURSOR)
    page_limit = _int("limit", "query", CATALOG_PAGE_LIMIT)
    return {
        "openapi": "3.1.0",
        "info": {"title": "skillcoach", "version": __version__},
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/learners/{learner_id}/weaknesses": _get(
                "Every practised skill, weakest first",
                Weaknesses,
                [ID, _int("limit", "query", WEAKNESSES_LIMIT)],
                400,
                401,
                403,
                404,
                503,
            ),
            "/v1/learners/{learner_id}/recommendations": _get(
                "Exercises to practise next",
                Recommendations,
                [
                    ID,
                    _int("limit", "query", RECOMMENDATIONS_LIMIT),
                    {
                        "name": "target",
                        "in": "query",
                        "schema": {
                            "type": "number",
                            "minimum": RECOMMENDATION_TARGET.low,
                            "maximum": RECOMMENDATION_TARGET.high,
                        },
                    },
                ],
                400,
                401,
                403,
                404,
                503,
            ),
            "/v1/learners/{learner_id}/attempts": {
                "post": {
                    "summary": f"Record a batch of {batch.low}..{batch.high} attempts"
                    " (committed before 201)",
                    "parameters": [
                        ID,
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "description": "Retries with the same key and batch are"
                            " answered 200 with the first result, not recorded twice; the"
                            " same key with another batch is 409.",
                            "schema": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": IDEMPOTENCY_KEY_MAX_CHARS,
                                "pattern": IDEMPOTENCY_KEY_PATTERN,
                            },
                        },
                    ],
                    "requestBody": {"required": True, "content": _json(AttemptBatch)},
                    "responses": {
                        "201": {"description": "Created", "content": _json(AttemptsAccepted)},
                        "200": {
                            "description": "Replay of an earlier batch",
                            "content": _json(AttemptsAccepted),
                        },
                        **_errors(400, 401, 403, 409, 413, 415, 422, 503),
                    },
                }
            },
            "/v1/skills": _get("Skills catalog", SkillPage, [page_limit, cursor], 400, 401),
            "/v1/exercises": _get(
                "Exercises catalog",
                ExercisePage,
                [page_limit, cursor, _int("skill_id", "query", SKILL_ID)],
                400,
                401,
            ),
            "/v1/model-status": _get("Live model and DB pool", ModelStatus, [], 401),
            "/model-status": _get("Alias of /v1/model-status", ModelStatus, [], 401),
            "/healthz": {
                "get": {
                    "summary": "Process alive",
                    "security": [],
                    "responses": {"200": {"description": "OK"}},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "DB reachable and model loaded",
                    "security": [],
                    "responses": {"200": {"description": "ready"}, **_errors(503)},
                }
            },
            **(_METRICS if metrics_on_api_port else {}),
        },
    }


_METRICS = {
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics",
            "security": [],
            "responses": {"200": {"description": "OK"}},
        }
    }
}
