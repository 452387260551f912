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

__all__ = ["openapi_document"]

MAX_INT32 = 2**31 - 1

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
ID = {
    "name": "learner_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
}


def _limit(default: int, high: int) -> dict[str, Any]:
    return {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": high, "default": default},
    }


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
def openapi_document() -> dict[str, Any]:
    _, defs = models_json_schema(
        [(m, "serialization") for m in _MODELS], ref_template="#/components/schemas/{model}"
    )
    cursor = {
        "name": "cursor",
        "in": "query",
        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_INT32},
    }
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
                [ID, _limit(100, 1000)],
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
                    _limit(10, 100),
                    {
                        "name": "target",
                        "in": "query",
                        "schema": {"type": "number", "minimum": 0.05, "maximum": 0.95},
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
                    "summary": "Record a batch of 1..500 attempts (committed before 201)",
                    "parameters": [
                        ID,
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "schema": {"type": "string", "maxLength": 200},
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
            "/v1/skills": _get("Skills catalog", SkillPage, [_limit(100, 1000), cursor], 400, 401),
            "/v1/exercises": _get(
                "Exercises catalog",
                ExercisePage,
                [
                    _limit(100, 1000),
                    cursor,
                    {
                        "name": "skill_id",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_INT32},
                    },
                ],
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
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "security": [],
                    "responses": {"200": {"description": "OK"}},
                }
            },
        },
    }
