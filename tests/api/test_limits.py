"""One source of truth for the public bounds (skillcoach.limits): the routes enforce exactly
what the OpenAPI document publishes, and the cache's fast path uses the same bounds."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from skillcoach.api import hit_path
from skillcoach.api.openapi import openapi_document
from skillcoach.limits import (
    CATALOG_CURSOR,
    CATALOG_PAGE_LIMIT,
    LEARNER_ID,
    RECOMMENDATION_TARGET,
    RECOMMENDATIONS_LIMIT,
    SKILL_ID,
    WEAKNESSES_LIMIT,
    FloatRange,
    IntRange,
)

LEARNER = "/v1/learners/{learner_id}"
QUERY_BOUNDS: list[tuple[str, str, IntRange | FloatRange]] = [
    (f"{LEARNER}/weaknesses", "limit", WEAKNESSES_LIMIT),
    (f"{LEARNER}/recommendations", "limit", RECOMMENDATIONS_LIMIT),
    (f"{LEARNER}/recommendations", "target", RECOMMENDATION_TARGET),
    ("/v1/skills", "limit", CATALOG_PAGE_LIMIT),
    ("/v1/skills", "cursor", CATALOG_CURSOR),
    ("/v1/exercises", "limit", CATALOG_PAGE_LIMIT),
    ("/v1/exercises", "cursor", CATALOG_CURSOR),
    ("/v1/exercises", "skill_id", SKILL_ID),
]


def documented(path: str, name: str) -> dict[str, Any]:
    params = openapi_document()["paths"][path]["get"]["parameters"]
    schema: dict[str, Any] = next(p["schema"] for p in params if p["name"] == name)
    return schema


@pytest.mark.parametrize(("path", "name", "bounds"), QUERY_BOUNDS)
def test_the_document_publishes_the_bounds(
    path: str, name: str, bounds: IntRange | FloatRange
) -> None:
    schema = documented(path, name)
    assert (schema["minimum"], schema["maximum"]) == (bounds.low, bounds.high)
    assert schema.get("default") == getattr(bounds, "default", None)
    id_schema = documented(f"{LEARNER}/weaknesses", "learner_id")
    assert (id_schema["minimum"], id_schema["maximum"]) == (LEARNER_ID.low, LEARNER_ID.high)


@pytest.mark.parametrize(("path", "name", "bounds"), QUERY_BOUNDS)
def test_the_routes_accept_the_bounds_and_refuse_one_step_beyond(
    client: TestClient, path: str, name: str, bounds: IntRange | FloatRange
) -> None:
    url = path.replace("{learner_id}", "1")
    step = 1 if isinstance(bounds, IntRange) else 0.01
    for value in (bounds.low, bounds.high):
        r = client.get(url, params={name: value})
        assert r.status_code != 400, (value, r.text)
    for value in (bounds.low - step, bounds.high + step):
        r = client.get(url, params={name: value})
        assert r.status_code == 400, (value, r.text)
        assert name in r.json()["detail"]


def test_the_fast_path_uses_the_route_bounds() -> None:
    assert hit_path.LIMITS == {
        "weaknesses": WEAKNESSES_LIMIT,
        "recommendations": RECOMMENDATIONS_LIMIT,
    }
