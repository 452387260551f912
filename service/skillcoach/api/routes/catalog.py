"""/v1/skills and /v1/exercises: the paginated catalog (keyset pagination by id)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from skillcoach.api.params import int_param, optional_int_param
from skillcoach.api.responses import json_response
from skillcoach.api.state import app_state
from skillcoach.data.api_keys import Scope
from skillcoach.data.catalog_reads import exercises_page, skills_page
from skillcoach.limits import CATALOG_CURSOR, CATALOG_PAGE_LIMIT, SKILL_ID

__all__ = ["routes"]


def _page(items: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    more = len(items) > limit
    items = items[:limit]
    return {"items": items, "next_cursor": items[-1]["id"] if more else None}


async def list_skills(request: Request) -> Response:
    state = app_state(request)
    await state.authenticate(request, Scope.READ)
    limit = int_param(request, "limit", CATALOG_PAGE_LIMIT)
    after = int_param(request, "cursor", CATALOG_CURSOR)
    items = await state.db.run(skills_page, retry=True, after=after, limit=limit)
    return json_response(_page(items, limit))


async def list_exercises(request: Request) -> Response:
    state = app_state(request)
    await state.authenticate(request, Scope.READ)
    limit = int_param(request, "limit", CATALOG_PAGE_LIMIT)
    after = int_param(request, "cursor", CATALOG_CURSOR)
    skill_id = optional_int_param(request, "skill_id", SKILL_ID)
    items = await state.db.run(
        exercises_page, retry=True, after=after, limit=limit, skill_id=skill_id
    )
    return json_response(_page(items, limit))


routes = [
    Route("/v1/skills", list_skills, methods=["GET"]),
    Route("/v1/exercises", list_exercises, methods=["GET"]),
]
